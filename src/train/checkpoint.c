/* train/checkpoint: see checkpoint.h. */
#define _DEFAULT_SOURCE /* mkdtemp, fsync, dirent d_type */
#include "train/checkpoint.h"

#include <cjson/cJSON.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/file.h"
#include "core/status.h"
#include "model/float_formats.h"
#include "model/rope_layout.h"

static xlkv_status sync_path(const char *path) {
    int fd = open(path, O_RDONLY);
    if (fd < 0) return xlkv_fail(XLKV_E_IO, "%s: cannot open to sync: %s", path, strerror(errno));
    int rc = fsync(fd);
    close(fd);
    return rc == 0 ? XLKV_OK : xlkv_fail(XLKV_E_IO, "%s: fsync failed: %s", path, strerror(errno));
}

xlkv_status xlkv_write_file_synced(const char *path, const void *data, size_t size) {
    FILE *f = fopen(path, "wb");
    if (!f) return xlkv_fail(XLKV_E_IO, "%s: cannot create: %s", path, strerror(errno));
    int ok = (size == 0 || fwrite(data, 1, size, f) == size) && fflush(f) == 0 && fsync(fileno(f)) == 0;
    int saved_errno = errno;
    if (fclose(f) != 0) ok = 0;
    return ok ? XLKV_OK : xlkv_fail(XLKV_E_IO, "%s: write failed: %s", path, strerror(saved_errno));
}

static char *config_json(const xlkv_param_store *store, bool bf16) {
    const xlkv_hparams *hp = &store->hp;
    char *layer_types = xlkv_layer_map_to_string(store->map);
    cJSON *root = cJSON_CreateObject();
    if (!layer_types || !root) {
        free(layer_types);
        cJSON_Delete(root);
        return NULL;
    }
    cJSON *architectures = cJSON_AddArrayToObject(root, "architectures");
    cJSON_AddItemToArray(architectures, cJSON_CreateString("LlamaForCausalLM"));
    cJSON_AddStringToObject(root, "model_type", "llama");
    cJSON_AddNumberToObject(root, "hidden_size", hp->dim);
    cJSON_AddNumberToObject(root, "intermediate_size", hp->hidden_dim);
    cJSON_AddNumberToObject(root, "num_hidden_layers", hp->n_layers);
    cJSON_AddNumberToObject(root, "num_attention_heads", hp->n_heads);
    cJSON_AddNumberToObject(root, "num_key_value_heads", hp->n_kv_heads);
    cJSON_AddNumberToObject(root, "head_dim", hp->head_dim);
    cJSON_AddNumberToObject(root, "vocab_size", hp->vocab_size);
    cJSON_AddNumberToObject(root, "max_position_embeddings", hp->max_seq_len);
    cJSON_AddNumberToObject(root, "rope_theta", hp->rope_theta);
    cJSON_AddNumberToObject(root, "rms_norm_eps", hp->norm_eps);
    cJSON_AddStringToObject(root, "hidden_act", "silu");
    cJSON_AddBoolToObject(root, "attention_bias", 0);
    cJSON_AddBoolToObject(root, "mlp_bias", 0);
    cJSON_AddBoolToObject(root, "tie_word_embeddings", hp->tied_embeddings);
    if (hp->bos_id >= 0) cJSON_AddNumberToObject(root, "bos_token_id", hp->bos_id);
    else cJSON_AddNullToObject(root, "bos_token_id");
    if (hp->eos_id >= 0) cJSON_AddNumberToObject(root, "eos_token_id", hp->eos_id);
    else cJSON_AddNullToObject(root, "eos_token_id");
    cJSON_AddStringToObject(root, "torch_dtype", bf16 ? "bfloat16" : "float32");
    cJSON_AddStringToObject(root, "layer_types", layer_types);
    cJSON_AddNumberToObject(root, "forward_passes", hp->forward_passes);
    cJSON_AddNumberToObject(root, "backward_passes", hp->backward_passes);
    cJSON_AddNumberToObject(root, "sliding_window", hp->sliding_window);
    cJSON_AddBoolToObject(root, "force_nodiag", hp->force_nodiag);
    free(layer_types);
    char *text = cJSON_Print(root);
    cJSON_Delete(root);
    return text;
}

/* The safetensors header (JSON, padded with spaces to a multiple of 8); heap. */
static char *safetensors_header(const xlkv_param_store *store, bool bf16, size_t *out_len) {
    cJSON *root = cJSON_CreateObject();
    if (!root) return NULL;
    cJSON *meta = cJSON_AddObjectToObject(root, "__metadata__");
    cJSON_AddStringToObject(meta, "format", "pt");
    size_t offset = 0;
    for (int t = 0; t < store->n_tensors; t++) {
        const xlkv_param_tensor *tensor = &store->tensors[t];
        const size_t bytes =
            (size_t)tensor->rows * (size_t)(tensor->cols ? tensor->cols : 1) * (bf16 ? sizeof(uint16_t) : sizeof(float));
        cJSON *entry = cJSON_AddObjectToObject(root, tensor->name);
        cJSON_AddStringToObject(entry, "dtype", bf16 ? "BF16" : "F32");
        cJSON *shape = cJSON_AddArrayToObject(entry, "shape");
        cJSON_AddItemToArray(shape, cJSON_CreateNumber(tensor->rows));
        if (tensor->cols) cJSON_AddItemToArray(shape, cJSON_CreateNumber(tensor->cols));
        cJSON *offsets = cJSON_AddArrayToObject(entry, "data_offsets");
        cJSON_AddItemToArray(offsets, cJSON_CreateNumber((double)offset));
        cJSON_AddItemToArray(offsets, cJSON_CreateNumber((double)(offset + bytes)));
        offset += bytes;
    }
    char *json = cJSON_PrintUnformatted(root);
    cJSON_Delete(root);
    if (!json) return NULL;
    size_t len = strlen(json), padded = (len + 7) / 8 * 8;
    char *header = realloc(json, padded + 1);
    if (!header) {
        free(json);
        return NULL;
    }
    memset(header + len, ' ', padded - len);
    header[padded] = '\0';
    *out_len = padded;
    return header;
}

/* Writes the tensors of data[] (fp32) to f, as fp32 or rounded to bf16 (nearest even); 1 on success. */
static int write_values(FILE *f, const float *data, size_t n, bool bf16) {
    if (!bf16) return fwrite(data, sizeof(float), n, f) == n; /* little-endian hosts only, as the loader */
    uint16_t chunk[4096];
    for (size_t done = 0; done < n;) {
        const size_t count = n - done < 4096 ? n - done : 4096;
        for (size_t i = 0; i < count; i++) chunk[i] = xlkv_f32_to_bf16(data[done + i]);
        if (fwrite(chunk, sizeof(uint16_t), count, f) != count) return 0;
        done += count;
    }
    return 1;
}

static xlkv_status write_safetensors(const xlkv_param_store *store, const char *path, bool bf16) {
    size_t header_len = 0;
    char *header = safetensors_header(store, bf16, &header_len);
    if (!header) return xlkv_fail(XLKV_E_NOMEM, "%s: out of memory for the header", path);
    FILE *f = fopen(path, "wb");
    if (!f) {
        free(header);
        return xlkv_fail(XLKV_E_IO, "%s: cannot create: %s", path, strerror(errno));
    }
    unsigned char length[8];
    for (int b = 0; b < 8; b++) length[b] = (unsigned char)((uint64_t)header_len >> (8 * b));
    int ok = fwrite(length, 1, 8, f) == 8 && fwrite(header, 1, header_len, f) == header_len;
    free(header);
    float *permuted = NULL;
    for (int t = 0; ok && t < store->n_tensors; t++) {
        const xlkv_param_tensor *tensor = &store->tensors[t];
        const size_t n = (size_t)tensor->rows * (size_t)(tensor->cols ? tensor->cols : 1);
        const float *data = store->params + tensor->offset;
        if (tensor->rope_heads > 0) { /* interleaved RoPE rows -> Hugging Face rows */
            float *grown = realloc(permuted, n * sizeof(float));
            if (!grown) {
                free(permuted);
                fclose(f);
                return xlkv_fail(XLKV_E_NOMEM, "%s: out of memory", path);
            }
            permuted = grown;
            memcpy(permuted, data, n * sizeof(float));
            xlkv_status status =
                xlkv_rope_rows_interleaved_to_hf(permuted, tensor->rope_heads, store->hp.head_dim, tensor->cols);
            if (status != XLKV_OK) {
                free(permuted);
                fclose(f);
                return status;
            }
            data = permuted;
        }
        ok = write_values(f, data, n, bf16);
    }
    free(permuted);
    ok = ok && fflush(f) == 0 && fsync(fileno(f)) == 0;
    int saved_errno = errno;
    if (fclose(f) != 0) ok = 0;
    return ok ? XLKV_OK : xlkv_fail(XLKV_E_IO, "%s: write failed: %s", path, strerror(saved_errno));
}

static xlkv_status copy_file_synced(const char *from, const char *to) {
    char *data = NULL;
    size_t size = 0;
    XLKV_TRY(xlkv_read_file(from, &data, &size));
    xlkv_status status = xlkv_write_file_synced(to, data, size);
    free(data);
    return status;
}

/* Removes a directory of plain files (what a checkpoint holds). */
static void remove_tree(const char *dir) {
    DIR *d = opendir(dir);
    if (d) {
        struct dirent *entry;
        while ((entry = readdir(d))) {
            if (!strcmp(entry->d_name, ".") || !strcmp(entry->d_name, "..")) continue;
            char *path = xlkv_path_join(dir, entry->d_name);
            if (path) unlink(path);
            free(path);
        }
        closedir(d);
    }
    rmdir(dir);
}

static char *parent_of(const char *path) {
    const char *slash = strrchr(path, '/');
    if (!slash) return strdup(".");
    if (slash == path) return strdup("/");
    size_t n = (size_t)(slash - path);
    char *parent = malloc(n + 1);
    if (parent) {
        memcpy(parent, path, n);
        parent[n] = '\0';
    }
    return parent;
}

static xlkv_status write_files(const xlkv_param_store *store, const char *tmp, const xlkv_checkpoint_extras *extras) {
    char *path = xlkv_path_join(tmp, "config.json");
    char *config = config_json(store, extras && extras->weights_bf16);
    xlkv_status status = path && config ? xlkv_write_file_synced(path, config, strlen(config))
                                        : xlkv_fail(XLKV_E_NOMEM, "checkpoint: out of memory");
    free(path);
    free(config);
    if (status != XLKV_OK) return status;
    path = xlkv_path_join(tmp, "model.safetensors");
    status = path ? write_safetensors(store, path, extras && extras->weights_bf16) : xlkv_fail(XLKV_E_NOMEM, "checkpoint: out of memory");
    free(path);
    if (status != XLKV_OK || !extras) return status;
    if (extras->tokenizer_path) {
        const char *slash = strrchr(extras->tokenizer_path, '/');
        path = xlkv_path_join(tmp, slash ? slash + 1 : extras->tokenizer_path);
        status = path ? copy_file_synced(extras->tokenizer_path, path) : xlkv_fail(XLKV_E_NOMEM, "out of memory");
        free(path);
        if (status != XLKV_OK) return status;
    }
    if (extras->trainer_state) {
        path = xlkv_path_join(tmp, "trainer_state.bin");
        status = path ? xlkv_write_file_synced(path, extras->trainer_state, extras->trainer_state_size)
                      : xlkv_fail(XLKV_E_NOMEM, "out of memory");
        free(path);
    }
    return status;
}

xlkv_status xlkv_checkpoint_write(const xlkv_param_store *store, const char *dir, const xlkv_checkpoint_extras *extras) {
    const size_t n = strlen(dir);
    char *tmp = malloc(n + 16), *aside = malloc(n + 16), *parent = parent_of(dir);
    if (!tmp || !aside || !parent) {
        free(tmp), free(aside), free(parent);
        return xlkv_fail(XLKV_E_NOMEM, "checkpoint: out of memory");
    }
    snprintf(tmp, n + 16, "%s.tmp-XXXXXX", dir);
    xlkv_status status = XLKV_OK;
    if (!mkdtemp(tmp)) {
        status = xlkv_fail(XLKV_E_IO, "%s: cannot create a temporary directory beside it: %s", dir, strerror(errno));
        goto done;
    }
    status = write_files(store, tmp, extras);
    if (status == XLKV_OK) status = sync_path(tmp);
    if (status != XLKV_OK) {
        xlkv_error_prefix("checkpoint %s", dir);
        remove_tree(tmp);
        goto done;
    }
    if (extras && extras->simulate_crash_before_rename) {
        status = xlkv_fail(XLKV_E_IO, "checkpoint %s: simulated crash before the rename (left %s)", dir, tmp);
        goto done;
    }
    aside[0] = '\0';
    if (xlkv_file_exists(dir)) {
        snprintf(aside, n + 16, "%s.old-XXXXXX", dir);
        if (!mkdtemp(aside) || rename(dir, aside) != 0) {
            status = xlkv_fail(XLKV_E_IO, "checkpoint %s: cannot move the previous checkpoint aside: %s", dir,
                               strerror(errno));
            if (aside[0]) rmdir(aside);
            remove_tree(tmp);
            goto done;
        }
    }
    if (rename(tmp, dir) != 0) {
        status = xlkv_fail(XLKV_E_IO, "checkpoint %s: cannot rename %s into place: %s", dir, tmp, strerror(errno));
        if (aside[0]) rename(aside, dir);
        remove_tree(tmp);
        goto done;
    }
    status = sync_path(parent);
    if (aside[0]) remove_tree(aside);
done:
    free(tmp);
    free(aside);
    free(parent);
    return status;
}

xlkv_status xlkv_checkpoint_load_params(xlkv_param_store *store, const char *dir) {
    xlkv_model_params params = xlkv_model_default_params();
    xlkv_hparams hp;
    xlkv_layer_map *map = NULL;
    XLKV_TRY(xlkv_model_load_config(dir, &params, &hp, &map));
    const xlkv_hparams *want = &store->hp;
    int same_shape = hp.dim == want->dim && hp.hidden_dim == want->hidden_dim && hp.n_layers == want->n_layers &&
                     hp.n_heads == want->n_heads && hp.n_kv_heads == want->n_kv_heads &&
                     hp.head_dim == want->head_dim && hp.vocab_size == want->vocab_size &&
                     hp.tied_embeddings == want->tied_embeddings;
    int same_map = map->n_layers == store->map->n_layers;
    for (int i = 0; same_map && i < map->n_layers; i++)
        same_map = map->kv_src[i] == store->map->kv_src[i] && map->sliding[i] == store->map->sliding[i];
    xlkv_layer_map_free(map);
    if (!same_shape)
        return xlkv_fail(XLKV_E_INVALID, "%s: the checkpoint's shape (%d layers, dim %d, vocab %d) differs from the "
                                         "model being trained (%d layers, dim %d, vocab %d)", dir, hp.n_layers, hp.dim,
                         hp.vocab_size, want->n_layers, want->dim, want->vocab_size);
    if (!same_map) return xlkv_fail(XLKV_E_INVALID, "%s: the checkpoint's layer map differs from the one trained", dir);
    xlkv_weights w;
    XLKV_TRY(xlkv_hf_load_weights(dir, &hp, store->map, &w));
    xlkv_status status = xlkv_param_store_copy_weights(store, &w, XLKV_KV_INIT_COPY);
    xlkv_weights_free(&w);
    return status;
}
