/* model/layer_map_kvsharer: layer maps in the KVSharer form (SEMANTICS.md section 1): a JSON object {"i": j, ...}
 * saying that layer i reuses the KV of a lower layer j. Owns the strict reading of that object (every key a layer,
 * once; every value an integer below its key) and the collapsing of chains to their roots. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "core/file.h"
#include "core/status.h"
#include "model/layer_map.h"

static const char *json_kind(const cJSON *item) {
    if (cJSON_IsArray(item)) return "an array";
    if (cJSON_IsString(item)) return "a string";
    if (cJSON_IsNumber(item)) return "a number";
    if (cJSON_IsBool(item)) return "a boolean";
    if (cJSON_IsNull(item)) return "null";
    return "an object";
}

/* A key is a layer index written canonically: decimal digits, no sign, no leading zero, no spaces. */
static bool parse_layer_key(const char *key, int n_layers, int *out) {
    size_t length = strlen(key);
    if (length == 0 || length > 9 || strspn(key, "0123456789") != length || (key[0] == '0' && length > 1)) return false;
    long layer = strtol(key, NULL, 10);
    if (layer >= n_layers) return false;
    *out = (int)layer;
    return true;
}

/* Fails naming the entry "key": value, with the value printed as JSON. */
static xlkv_status fail_entry(const cJSON *entry, const char *why) {
    char *printed = cJSON_PrintUnformatted(entry);
    xlkv_status status = xlkv_fail(XLKV_E_INVALID, "KVSharer map: entry \"%s\": %s %s", entry->string,
                                   printed ? printed : "(value)", why);
    free(printed);
    return status;
}

/* Reads the object into kv_src[] (direct sources, not yet collapsed). */
static xlkv_status read_entries(const cJSON *root, int n_layers, int *kv_src, bool *listed) {
    const cJSON *entry;
    cJSON_ArrayForEach(entry, root) {
        int layer;
        if (!parse_layer_key(entry->string, n_layers, &layer))
            return xlkv_fail(XLKV_E_INVALID,
                             "KVSharer map: key \"%s\" is not a layer index of the model (decimal, 0..%d); the map is a "
                             "flat object {\"i\": j, ...}",
                             entry->string, n_layers - 1);
        if (listed[layer])
            return xlkv_fail(XLKV_E_INVALID, "KVSharer map: layer %d is listed more than once", layer);
        listed[layer] = true;
        double value = cJSON_IsNumber(entry) ? entry->valuedouble : NAN;
        if (!(value == floor(value)) || fabs(value) > 1e9)
            return fail_entry(entry, "is not an integer layer index");
        if (value < 0) return fail_entry(entry, "is not a layer index (negative)");
        if (value >= layer) return fail_entry(entry, "does not point to a lower layer (layer i may only reuse j < i)");
        kv_src[layer] = (int)value;
    }
    return XLKV_OK;
}

xlkv_status xlkv_layer_map_from_kvsharer_json(const char *json_text, int n_layers, xlkv_layer_map **out) {
    *out = NULL;
    if (n_layers <= 0) return xlkv_fail(XLKV_E_INVALID, "KVSharer map: the model has %d layers", n_layers);
    const char *parse_end = NULL;
    cJSON *root = cJSON_ParseWithOpts(json_text, &parse_end, true);
    if (!root) {
        size_t offset = parse_end ? (size_t)(parse_end - json_text) : 0;
        return xlkv_fail(XLKV_E_FORMAT, "KVSharer map: invalid JSON at byte %zu", offset);
    }
    if (!cJSON_IsObject(root)) {
        xlkv_status status =
            xlkv_fail(XLKV_E_FORMAT, "KVSharer map: expected an object {\"i\": j, ...}, got %s", json_kind(root));
        cJSON_Delete(root);
        return status;
    }
    int *kv_src = malloc((size_t)n_layers * sizeof *kv_src);
    bool *listed = calloc((size_t)n_layers, sizeof *listed);
    xlkv_status status;
    if (!kv_src || !listed) {
        status = xlkv_fail(XLKV_E_NOMEM, "KVSharer map: out of memory");
    } else {
        for (int i = 0; i < n_layers; i++) kv_src[i] = i;
        status = read_entries(root, n_layers, kv_src, listed);
        if (status == XLKV_OK) {
            /* Sources are lower layers, so walking upward finds each source already collapsed to its root. */
            for (int i = 0; i < n_layers; i++) kv_src[i] = kv_src[kv_src[i]];
            status = xlkv_layer_map_from_array(kv_src, NULL, n_layers, out);
        }
    }
    free(kv_src);
    free(listed);
    cJSON_Delete(root);
    return status;
}

xlkv_status xlkv_layer_map_load_kvsharer(const char *path, int n_layers, xlkv_layer_map **out) {
    *out = NULL;
    char *text = NULL;
    XLKV_TRY(xlkv_read_file(path, &text, NULL));
    xlkv_status status = xlkv_layer_map_from_kvsharer_json(text, n_layers, out);
    if (status != XLKV_OK) xlkv_error_prefix("%s", path);
    free(text);
    return status;
}
