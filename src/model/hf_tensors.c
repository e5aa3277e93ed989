/* model/hf_tensors: see hf_tensors.h. */
#include "model/hf_tensors.h"

#include <cjson/cJSON.h>
#include <stdlib.h>
#include <string.h>

#include "core/file.h"
#include "core/status.h"

void xlkv_hf_tensors_close(xlkv_hf_tensors *src) {
    if (!src) return;
    for (size_t i = 0; i < src->n_shards; i++) xlkv_safetensors_close(src->shards[i]);
    free(src->shards);
    for (size_t i = 0; i < src->n_entries; i++) free(src->entries[i].tensor);
    free(src->entries);
    free(src->origin);
    free(src);
}

static int compare_entries(const void *a, const void *b) {
    return strcmp(((const xlkv_hf_tensor_entry *)a)->tensor, ((const xlkv_hf_tensor_entry *)b)->tensor);
}

static int is_plain_file_name(const char *name) {
    return name[0] && name[0] != '.' && !strchr(name, '/') && !strchr(name, '\\');
}

/* Index of the shard called `file_name`, opening it on first use; names[] holds the names opened so far. */
static xlkv_status shard_index(xlkv_hf_tensors *src, const char *dir, char **names, const char *file_name,
                               size_t *out) {
    for (size_t i = 0; i < src->n_shards; i++)
        if (!strcmp(names[i], file_name)) {
            *out = i;
            return XLKV_OK;
        }
    char *path = xlkv_path_join(dir, file_name);
    if (!path) return xlkv_fail(XLKV_E_NOMEM, "%s: out of memory", src->origin);
    names[src->n_shards] = strdup(file_name);
    if (!names[src->n_shards]) {
        free(path);
        return xlkv_fail(XLKV_E_NOMEM, "%s: out of memory", src->origin);
    }
    xlkv_status status = xlkv_safetensors_open(path, &src->shards[src->n_shards]);
    free(path);
    if (status != XLKV_OK) {
        free(names[src->n_shards]);
        xlkv_error_prefix("%s: shard '%s'", src->origin, file_name);
        return status;
    }
    *out = src->n_shards++;
    return XLKV_OK;
}

static xlkv_status open_index(xlkv_hf_tensors *src, const char *dir) {
    char *text = NULL;
    size_t size = 0;
    XLKV_TRY(xlkv_read_file(src->origin, &text, &size));
    cJSON *root = cJSON_ParseWithLength(text, size);
    free(text);
    if (!root) return xlkv_fail(XLKV_E_FORMAT, "%s: not valid JSON", src->origin);
    xlkv_status status = XLKV_OK;
    char **names = NULL;
    const cJSON *weight_map = cJSON_GetObjectItemCaseSensitive(root, "weight_map");
    if (!cJSON_IsObject(weight_map)) {
        status = xlkv_fail(XLKV_E_FORMAT, "%s: \"weight_map\" is missing or not an object", src->origin);
        goto done;
    }
    size_t count = (size_t)cJSON_GetArraySize(weight_map);
    src->entries = calloc(count ? count : 1, sizeof *src->entries);
    src->shards = calloc(count ? count : 1, sizeof *src->shards);
    names = calloc(count ? count : 1, sizeof *names);
    if (!src->entries || !src->shards || !names) {
        status = xlkv_fail(XLKV_E_NOMEM, "%s: out of memory for %zu entries", src->origin, count);
        goto done;
    }
    const cJSON *item;
    cJSON_ArrayForEach(item, weight_map) {
        if (!cJSON_IsString(item) || !is_plain_file_name(item->valuestring)) {
            status = xlkv_fail(XLKV_E_FORMAT, "%s: weight_map entry '%s' must be a file name in the same directory",
                               src->origin, item->string ? item->string : "?");
            goto done;
        }
        xlkv_hf_tensor_entry *entry = &src->entries[src->n_entries];
        entry->tensor = strdup(item->string ? item->string : "");
        if (!entry->tensor) {
            status = xlkv_fail(XLKV_E_NOMEM, "%s: out of memory", src->origin);
            goto done;
        }
        src->n_entries++;
        status = shard_index(src, dir, names, item->valuestring, &entry->shard);
        if (status != XLKV_OK) goto done;
    }
    qsort(src->entries, src->n_entries, sizeof *src->entries, compare_entries);
    for (size_t i = 1; i < src->n_entries; i++)
        if (!strcmp(src->entries[i - 1].tensor, src->entries[i].tensor)) {
            status = xlkv_fail(XLKV_E_FORMAT, "%s: tensor '%s' listed twice in weight_map", src->origin,
                               src->entries[i].tensor);
            goto done;
        }
done:
    if (names)
        for (size_t i = 0; i < src->n_shards; i++) free(names[i]);
    free(names);
    cJSON_Delete(root);
    return status;
}

xlkv_status xlkv_hf_tensors_open(const char *dir, xlkv_hf_tensors **out) {
    *out = NULL;
    xlkv_hf_tensors *src = calloc(1, sizeof *src);
    if (!src) return xlkv_fail(XLKV_E_NOMEM, "%s: out of memory", dir);
    xlkv_status status = XLKV_OK;
    char *single = xlkv_path_join(dir, "model.safetensors");
    char *index = xlkv_path_join(dir, "model.safetensors.index.json");
    if (!single || !index) {
        status = xlkv_fail(XLKV_E_NOMEM, "%s: out of memory", dir);
    } else if (xlkv_file_exists(single)) {
        src->origin = single;
        single = NULL;
        src->shards = calloc(1, sizeof *src->shards);
        if (!src->shards)
            status = xlkv_fail(XLKV_E_NOMEM, "%s: out of memory", dir);
        else if ((status = xlkv_safetensors_open(src->origin, &src->shards[0])) == XLKV_OK)
            src->n_shards = 1;
    } else if (xlkv_file_exists(index)) {
        src->origin = index;
        index = NULL;
        status = open_index(src, dir);
    } else {
        status = xlkv_fail(XLKV_E_IO, "%s: no model.safetensors or model.safetensors.index.json (xlkv reads only "
                                      "safetensors checkpoints)", dir);
    }
    free(single);
    free(index);
    if (status != XLKV_OK) {
        xlkv_hf_tensors_close(src);
        return status;
    }
    *out = src;
    return XLKV_OK;
}

xlkv_status xlkv_hf_tensors_find(const xlkv_hf_tensors *src, const char *name, const xlkv_safetensors **out_file,
                                 const xlkv_st_tensor **out_tensor) {
    *out_file = NULL;
    *out_tensor = NULL;
    const xlkv_safetensors *file = NULL;
    if (src->n_entries == 0 && src->n_shards == 1) {
        file = src->shards[0];
    } else {
        xlkv_hf_tensor_entry key = {.tensor = (char *)name};
        const xlkv_hf_tensor_entry *entry =
            bsearch(&key, src->entries, src->n_entries, sizeof *src->entries, compare_entries);
        if (!entry) return XLKV_OK;
        file = src->shards[entry->shard];
    }
    const xlkv_st_tensor *tensor = xlkv_safetensors_find(file, name);
    if (!tensor && src->n_entries)
        return xlkv_fail(XLKV_E_FORMAT, "%s: weight_map puts tensor '%s' in %s, which does not contain it", src->origin,
                         name, file->path);
    if (tensor) *out_file = file;
    *out_tensor = tensor;
    return XLKV_OK;
}
