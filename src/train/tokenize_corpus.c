/* train/tokenize_corpus: see tokenize_corpus.h. */
#include "train/tokenize_corpus.h"

#include <errno.h>
#include <lzma.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "core/file.h"
#include "core/status.h"
#include "train/token_shards.h"

enum { CHUNK_TARGET_BYTES = 64 * 1024 };

static int ends_with(const char *s, const char *suffix) {
    size_t n = strlen(s), m = strlen(suffix);
    return n >= m && !strcmp(s + n - m, suffix);
}

static xlkv_status read_xz(const char *path, char **out_text, size_t *out_size) {
    xlkv_mapped_file file;
    XLKV_TRY(xlkv_map_file(path, &file));
    lzma_stream stream = LZMA_STREAM_INIT;
    if (lzma_stream_decoder(&stream, UINT64_MAX, LZMA_CONCATENATED) != LZMA_OK) {
        xlkv_unmap_file(&file);
        return xlkv_fail(XLKV_E_NOMEM, "%s: cannot start the xz decoder", path);
    }
    size_t cap = file.size * 4 + 4096, used = 0;
    char *text = malloc(cap + 1);
    xlkv_status status = text ? XLKV_OK : xlkv_fail(XLKV_E_NOMEM, "%s: out of memory", path);
    stream.next_in = file.data;
    stream.avail_in = file.size;
    while (status == XLKV_OK) {
        if (used == cap) {
            cap *= 2;
            char *grown = realloc(text, cap + 1);
            if (!grown) {
                status = xlkv_fail(XLKV_E_NOMEM, "%s: out of memory decompressing (%zu bytes so far)", path, used);
                break;
            }
            text = grown;
        }
        stream.next_out = (uint8_t *)text + used;
        stream.avail_out = cap - used;
        lzma_ret ret = lzma_code(&stream, LZMA_FINISH);
        used = cap - stream.avail_out;
        if (ret == LZMA_STREAM_END) break;
        if (ret != LZMA_OK)
            status = xlkv_fail(XLKV_E_FORMAT, "%s: not a valid .xz file (liblzma error %d)", path, (int)ret);
    }
    lzma_end(&stream);
    xlkv_unmap_file(&file);
    if (status != XLKV_OK) {
        free(text);
        return status;
    }
    text[used] = '\0';
    *out_text = text;
    *out_size = used;
    return XLKV_OK;
}

xlkv_status xlkv_read_text_file(const char *path, char **out_text, size_t *out_size) {
    *out_text = NULL;
    *out_size = 0;
    return ends_with(path, ".xz") ? read_xz(path, out_text, out_size) : xlkv_read_file(path, out_text, out_size);
}

/* A piece of text to encode; `ends_book` marks the last chunk of a book (EOS follows). */
typedef struct text_chunk {
    const char *start; /* inside the file's text */
    size_t length;
    int ends_book;
    int32_t *ids;
    int n_ids;
} text_chunk;

static xlkv_status push_chunk(text_chunk **chunks, int *n, int *cap, const char *start, size_t length) {
    if (*n == *cap) {
        *cap = *cap ? 2 * *cap : 64;
        text_chunk *grown = realloc(*chunks, (size_t)*cap * sizeof *grown);
        if (!grown) return xlkv_fail(XLKV_E_NOMEM, "tokenize: out of memory");
        *chunks = grown;
    }
    (*chunks)[(*n)++] = (text_chunk){.start = start, .length = length};
    return XLKV_OK;
}

/* Cuts text into books at lines holding only 0x1E, and books into chunks of about CHUNK_TARGET_BYTES that end just
 * after a blank line. */
static xlkv_status cut_chunks(const char *text, size_t size, text_chunk **out, int *out_n, uint64_t *books) {
    text_chunk *chunks = NULL;
    int n = 0, cap = 0;
    const char *p = text, *end = text + size;
    while (p < end) {
        const char *book_end = end, *next = end;
        for (const char *q = p; q < end; q++)
            if (*q == '\x1e' && (q == text || q[-1] == '\n') && (q + 1 == end || q[1] == '\n')) {
                book_end = q;
                next = q + 1 < end ? q + 2 : end;
                break;
            }
        const int first_chunk = n;
        for (const char *c = p; c < book_end;) {
            const char *cut = (size_t)(book_end - c) > CHUNK_TARGET_BYTES ? c + CHUNK_TARGET_BYTES : book_end;
            while (cut < book_end && !(cut[-1] == '\n' && cut[0] == '\n')) cut++;
            if (cut < book_end) cut++; /* keep the blank line's newline in this chunk */
            xlkv_status status = push_chunk(&chunks, &n, &cap, c, (size_t)(cut - c));
            if (status != XLKV_OK) {
                free(chunks);
                return status;
            }
            c = cut;
        }
        if (n > first_chunk) {
            chunks[n - 1].ends_book = 1;
            (*books)++;
        }
        p = next;
    }
    *out = chunks;
    *out_n = n;
    return XLKV_OK;
}

static xlkv_status tokenize_file(const xlkv_tokenizer *tok, const char *path, int file_index, const char *out_dir,
                                 double valid_fraction, xlkv_tokenize_stats *stats) {
    char *text = NULL;
    size_t size = 0;
    XLKV_TRY(xlkv_read_text_file(path, &text, &size));
    stats->bytes += size;
    text_chunk *chunks = NULL;
    int n = 0;
    xlkv_status status = cut_chunks(text, size, &chunks, &n, &stats->books);
    if (status != XLKV_OK) {
        free(text);
        return status;
    }
    int failed = 0;
#pragma omp parallel for schedule(dynamic, 1) reduction(|| : failed)
    for (int i = 0; i < n; i++) {
        int *ids = NULL, count = 0;
        char *piece = malloc(chunks[i].length + 1);
        if (piece) {
            memcpy(piece, chunks[i].start, chunks[i].length);
            piece[chunks[i].length] = '\0';
        }
        if (!piece || xlkv_tokenizer_encode(tok, piece, false, &ids, &count) != XLKV_OK) {
            free(piece);
            failed = 1;
            continue;
        }
        free(piece);
        chunks[i].ids = (int32_t *)ids; /* int and int32_t agree on every platform xlkv builds on */
        chunks[i].n_ids = count;
    }
    const int eos = xlkv_tokenizer_eos(tok);
    size_t total = 0;
    for (int i = 0; i < n; i++) total += (size_t)chunks[i].n_ids + (chunks[i].ends_book ? 1 : 0);
    int32_t *all = failed ? NULL : malloc((total ? total : 1) * sizeof *all);
    if (failed) status = xlkv_fail(XLKV_E_FORMAT, "%s: the tokenizer failed on a chunk", path);
    else if (!all) status = xlkv_fail(XLKV_E_NOMEM, "%s: cannot allocate %zu tokens", path, total);
    size_t at = 0;
    for (int i = 0; i < n; i++) {
        if (all) {
            if (chunks[i].n_ids) memcpy(all + at, chunks[i].ids, (size_t)chunks[i].n_ids * sizeof *all);
            at += (size_t)chunks[i].n_ids;
            if (chunks[i].ends_book) all[at++] = eos;
        }
        free(chunks[i].ids);
    }
    free(chunks);
    free(text);
    if (status == XLKV_OK) {
        const size_t n_valid = (size_t)((double)total * valid_fraction);
        const size_t n_train = total - n_valid;
        const int vocab = xlkv_tokenizer_n_vocab(tok);
        char name[64];
        snprintf(name, sizeof name, "train-%05d.bin", file_index);
        char *out = xlkv_path_join(out_dir, name);
        status = out ? xlkv_token_shard_write(out, all, n_train, vocab, eos) : xlkv_fail(XLKV_E_NOMEM, "out of memory");
        free(out);
        if (status == XLKV_OK && n_valid) {
            snprintf(name, sizeof name, "valid-%05d.bin", file_index);
            out = xlkv_path_join(out_dir, name);
            status = out ? xlkv_token_shard_write(out, all + n_train, n_valid, vocab, eos)
                         : xlkv_fail(XLKV_E_NOMEM, "out of memory");
            free(out);
        }
        stats->train_tokens += n_train;
        stats->valid_tokens += n_valid;
    }
    free(all);
    return status;
}

xlkv_status xlkv_tokenize_corpus(const xlkv_tokenizer *tok, const char *const *files, int n_files, const char *out_dir,
                                 double valid_fraction, xlkv_tokenize_stats *stats) {
    memset(stats, 0, sizeof *stats);
    if (n_files <= 0) return xlkv_fail(XLKV_E_INVALID, "tokenize: no input files");
    if (!(valid_fraction >= 0.0 && valid_fraction < 1.0))
        return xlkv_fail(XLKV_E_INVALID, "tokenize: the validation fraction must be in [0, 1), got %g", valid_fraction);
    if (xlkv_tokenizer_eos(tok) < 0)
        return xlkv_fail(XLKV_E_INVALID, "tokenize: the tokenizer has no end-of-text token to separate books");
    if (mkdir(out_dir, 0755) != 0 && errno != EEXIST)
        return xlkv_fail(XLKV_E_IO, "%s: cannot create: %s", out_dir, strerror(errno));
    for (int i = 0; i < n_files; i++) XLKV_TRY(tokenize_file(tok, files[i], i, out_dir, valid_fraction, stats));
    return XLKV_OK;
}
