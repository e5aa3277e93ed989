/* train/token_shards: see token_shards.h. */
#define _DEFAULT_SOURCE
#include "train/token_shards.h"

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/status.h"
#include "train/checkpoint.h"

static const char shard_magic[8] = {'X', 'L', 'K', 'V', 'T', 'O', 'K', '\0'};

static void put_u32(unsigned char *p, uint32_t v) {
    for (int b = 0; b < 4; b++) p[b] = (unsigned char)(v >> (8 * b));
}
static uint32_t get_u32(const unsigned char *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}
static uint64_t get_u64(const unsigned char *p) { return (uint64_t)get_u32(p) | (uint64_t)get_u32(p + 4) << 32; }

xlkv_status xlkv_token_shard_write(const char *path, const int32_t *tokens, size_t count, int vocab_size, int eos_id) {
    const int width = vocab_size <= 65536 ? 2 : 4;
    const size_t size = XLKV_SHARD_HEADER_BYTES + count * (size_t)width;
    unsigned char *image = malloc(size);
    if (!image) return xlkv_fail(XLKV_E_NOMEM, "%s: cannot allocate %zu bytes", path, size);
    memcpy(image, shard_magic, 8);
    put_u32(image + 8, 1);
    put_u32(image + 12, (uint32_t)width);
    put_u32(image + 16, (uint32_t)count);
    put_u32(image + 20, (uint32_t)((uint64_t)count >> 32));
    put_u32(image + 24, (uint32_t)vocab_size);
    put_u32(image + 28, eos_id < 0 ? 0xFFFFFFFFu : (uint32_t)eos_id);
    unsigned char *p = image + XLKV_SHARD_HEADER_BYTES;
    for (size_t i = 0; i < count; i++, p += width) {
        const uint32_t id = (uint32_t)tokens[i];
        p[0] = (unsigned char)id;
        p[1] = (unsigned char)(id >> 8);
        if (width == 4) {
            p[2] = (unsigned char)(id >> 16);
            p[3] = (unsigned char)(id >> 24);
        }
    }
    xlkv_status status = xlkv_write_file_synced(path, image, size);
    free(image);
    return status;
}

static xlkv_status open_shard(const char *path, xlkv_token_shard *shard, int *vocab_size, int *eos_id) {
    XLKV_TRY(xlkv_map_file(path, &shard->file));
    const unsigned char *h = shard->file.data;
    if (shard->file.size < XLKV_SHARD_HEADER_BYTES || memcmp(h, shard_magic, 8) != 0)
        return xlkv_fail(XLKV_E_FORMAT, "%s: not a token shard (no XLKVTOK header; made by xlkv tokenize?)", path);
    if (get_u32(h + 8) != 1)
        return xlkv_fail(XLKV_E_FORMAT, "%s: token shard version %u, expected 1", path, get_u32(h + 8));
    shard->bytes_per_token = (int)get_u32(h + 12);
    if (shard->bytes_per_token != 2 && shard->bytes_per_token != 4)
        return xlkv_fail(XLKV_E_FORMAT, "%s: %d bytes per token, expected 2 or 4", path, shard->bytes_per_token);
    shard->count = get_u64(h + 16);
    if (shard->count > (shard->file.size - XLKV_SHARD_HEADER_BYTES) / (uint64_t)shard->bytes_per_token ||
        XLKV_SHARD_HEADER_BYTES + shard->count * (uint64_t)shard->bytes_per_token != shard->file.size)
        return xlkv_fail(XLKV_E_FORMAT, "%s: the header says %llu tokens, the file holds %zu bytes (truncated?)", path,
                         (unsigned long long)shard->count, shard->file.size);
    *vocab_size = (int)get_u32(h + 24);
    *eos_id = get_u32(h + 28) == 0xFFFFFFFFu ? -1 : (int)get_u32(h + 28);
    shard->tokens = h + XLKV_SHARD_HEADER_BYTES;
    return XLKV_OK;
}

static int compare_names(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

/* Sorted file names of `split`-*.bin in dir. */
static xlkv_status list_shards(const char *dir, const char *split, char ***out_names, int *out_n) {
    *out_names = NULL;
    *out_n = 0;
    DIR *d = opendir(dir);
    if (!d) return xlkv_fail(XLKV_E_IO, "%s: no such data directory (make one with xlkv tokenize)", dir);
    char **names = NULL;
    int n = 0, cap = 0;
    const size_t prefix = strlen(split);
    struct dirent *entry;
    xlkv_status status = XLKV_OK;
    while ((entry = readdir(d))) {
        const char *name = entry->d_name;
        size_t len = strlen(name);
        if (strncmp(name, split, prefix) || name[prefix] != '-' || len < prefix + 5 || strcmp(name + len - 4, ".bin"))
            continue;
        if (n == cap) {
            cap = cap ? 2 * cap : 8;
            char **grown = realloc(names, (size_t)cap * sizeof *grown);
            if (!grown) {
                status = xlkv_fail(XLKV_E_NOMEM, "%s: out of memory", dir);
                break;
            }
            names = grown;
        }
        if (!(names[n] = strdup(name))) {
            status = xlkv_fail(XLKV_E_NOMEM, "%s: out of memory", dir);
            break;
        }
        n++;
    }
    closedir(d);
    if (status != XLKV_OK) {
        for (int i = 0; i < n; i++) free(names[i]);
        free(names);
        return status;
    }
    if (n) qsort(names, (size_t)n, sizeof *names, compare_names);
    *out_names = names;
    *out_n = n;
    return XLKV_OK;
}

xlkv_status xlkv_token_dataset_open(const char *dir, const char *split, xlkv_token_dataset **out) {
    *out = NULL;
    char **names = NULL;
    int n = 0;
    XLKV_TRY(list_shards(dir, split, &names, &n));
    xlkv_status status = XLKV_OK;
    xlkv_token_dataset *ds = NULL;
    if (n == 0) {
        status = xlkv_fail(XLKV_E_IO, "%s: no %s-*.bin token shards (make them with xlkv tokenize)", dir, split);
        goto done;
    }
    ds = calloc(1, sizeof *ds);
    if (ds) ds->shards = calloc((size_t)n, sizeof *ds->shards);
    if (!ds || !ds->shards) {
        status = xlkv_fail(XLKV_E_NOMEM, "%s: out of memory", dir);
        goto done;
    }
    for (int i = 0; i < n && status == XLKV_OK; i++) {
        char *path = xlkv_path_join(dir, names[i]);
        int vocab = 0, eos = -1;
        status = path ? open_shard(path, &ds->shards[i], &vocab, &eos) : xlkv_fail(XLKV_E_NOMEM, "out of memory");
        ds->n_shards = i + 1;
        if (status == XLKV_OK && i > 0 && vocab != ds->vocab_size)
            status = xlkv_fail(XLKV_E_FORMAT, "%s: vocabulary of %d tokens, the other shards have %d", path, vocab,
                               ds->vocab_size);
        ds->vocab_size = vocab;
        ds->eos_id = eos;
        ds->n_tokens += ds->shards[i].count;
        free(path);
    }
done:
    for (int i = 0; i < n; i++) free(names[i]);
    free(names);
    if (status != XLKV_OK) {
        xlkv_token_dataset_free(ds);
        return status;
    }
    *out = ds;
    return XLKV_OK;
}

void xlkv_token_dataset_free(xlkv_token_dataset *ds) {
    if (!ds) return;
    for (int i = 0; i < ds->n_shards; i++) xlkv_unmap_file(&ds->shards[i].file);
    free(ds->shards);
    free(ds);
}

int xlkv_token_dataset_fits(const xlkv_token_dataset *ds, int seq) {
    for (int i = 0; i < ds->n_shards; i++)
        if (ds->shards[i].count >= (uint64_t)seq + 1) return 1;
    return 0;
}

static int token_at(const xlkv_token_shard *s, uint64_t i) {
    const unsigned char *p = s->tokens + i * (uint64_t)s->bytes_per_token;
    uint32_t id = (uint32_t)p[0] | (uint32_t)p[1] << 8;
    if (s->bytes_per_token == 4) id |= (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
    return (int)id;
}

void xlkv_token_dataset_sample(const xlkv_token_dataset *ds, xlkv_rng *rng, int batch, int seq, int *tokens,
                               int *targets) {
    xlkv_token_dataset_sample_slice(ds, rng, batch, 0, batch, seq, tokens, targets);
}

void xlkv_token_dataset_sample_slice(const xlkv_token_dataset *ds, xlkv_rng *rng, int global_batch, int first,
                                     int count, int seq, int *tokens, int *targets) {
    uint64_t total_windows = 0;
    for (int i = 0; i < ds->n_shards; i++)
        if (ds->shards[i].count > (uint64_t)seq) total_windows += ds->shards[i].count - (uint64_t)seq;
    for (int window = 0; window < global_batch; window++) {
        uint64_t pick = xlkv_rng_below(rng, total_windows);
        if (window < first || window >= first + count) continue; /* another rank's window */
        const int b = window - first;
        int shard = 0;
        for (;; shard++) {
            const uint64_t shard_tokens = ds->shards[shard].count;
            const uint64_t windows = shard_tokens > (uint64_t)seq ? shard_tokens - (uint64_t)seq : 0;
            if (pick < windows) break;
            pick -= windows;
        }
        for (int t = 0; t < seq; t++) {
            tokens[b * seq + t] = token_at(&ds->shards[shard], pick + (uint64_t)t);
            targets[b * seq + t] = token_at(&ds->shards[shard], pick + (uint64_t)t + 1);
        }
    }
}
