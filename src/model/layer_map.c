/* model/layer_map: construction, validation and derived data of the cross-layer KV map (see layer_map.h).
 * Presets live in layer_presets.c and KVSharer maps in layer_map_kvsharer.c; this file owns the representation. */
#include "model/layer_map.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/status.h"

void xlkv_layer_map_free(xlkv_layer_map *map) {
    if (!map) return;
    free(map->kv_src);
    free(map->sliding);
    free(map->kv_slot);
    free(map->plan);
    free(map);
}

static xlkv_layer_map *layer_map_alloc(int n_layers) {
    xlkv_layer_map *map = calloc(1, sizeof *map);
    if (!map) return NULL;
    map->n_layers = n_layers;
    map->kv_src = calloc((size_t)n_layers, sizeof *map->kv_src);
    map->sliding = calloc((size_t)n_layers, sizeof *map->sliding);
    map->kv_slot = calloc((size_t)n_layers, sizeof *map->kv_slot);
    map->plan = calloc((size_t)n_layers, sizeof *map->plan); /* at most one step per layer */
    if (!map->kv_src || !map->sliding || !map->kv_slot || !map->plan) {
        xlkv_layer_map_free(map);
        return NULL;
    }
    return map;
}

/* The plan of SEMANTICS.md section 3: maximal acyclic runs, and cyclic groups closed upward over their targets. */
static void derive_plan(xlkv_layer_map *map) {
    const int L = map->n_layers;
    const int *src = map->kv_src;
    map->n_plan_steps = 0;
    int i = 0;
    while (i < L) {
        xlkv_plan_step step;
        if (src[i] > i) {
            int top = src[i];
            for (;;) {
                int highest = top;
                for (int k = i; k <= top; k++)
                    if (src[k] > highest) highest = src[k];
                if (highest == top) break;
                top = highest;
            }
            step = (xlkv_plan_step){.first = i, .last = top, .cyclic = true};
            i = top + 1;
        } else {
            int j = i + 1;
            while (j < L && src[j] <= j) j++;
            step = (xlkv_plan_step){.first = i, .last = j - 1, .cyclic = false};
            i = j;
        }
        map->plan[map->n_plan_steps++] = step;
    }
}

static void derive(xlkv_layer_map *map) {
    const int L = map->n_layers;
    for (int j = 0; j < L; j++) map->kv_slot[j] = -1;
    for (int i = 0; i < L; i++) map->kv_slot[map->kv_src[i]] = 0; /* mark: some layer reads j */
    map->n_kv_layers = 0;
    for (int j = 0; j < L; j++)
        if (map->kv_slot[j] == 0) map->kv_slot[j] = map->n_kv_layers++;
    derive_plan(map);
}

xlkv_status xlkv_layer_map_from_array(const int *kv_src, const bool *sliding, int n_layers, xlkv_layer_map **out) {
    *out = NULL;
    if (n_layers <= 0) return xlkv_fail(XLKV_E_INVALID, "layer map: the model has %d layers", n_layers);
    for (int i = 0; i < n_layers; i++)
        if (kv_src[i] < 0 || kv_src[i] >= n_layers)
            return xlkv_fail(XLKV_E_INVALID, "layer map: layer %d reads layer %d, outside [0, %d)", i, kv_src[i],
                             n_layers);
    xlkv_layer_map *map = layer_map_alloc(n_layers);
    if (!map) return xlkv_fail(XLKV_E_NOMEM, "layer map: out of memory");
    memcpy(map->kv_src, kv_src, (size_t)n_layers * sizeof *kv_src);
    if (sliding) memcpy(map->sliding, sliding, (size_t)n_layers * sizeof *sliding);
    derive(map);
    *out = map;
    return XLKV_OK;
}

xlkv_status xlkv_layer_map_standard(int n_layers, xlkv_layer_map **out) {
    *out = NULL;
    if (n_layers <= 0) return xlkv_fail(XLKV_E_INVALID, "layer map: the model has %d layers", n_layers);
    int *src = malloc((size_t)n_layers * sizeof *src);
    if (!src) return xlkv_fail(XLKV_E_NOMEM, "layer map: out of memory");
    for (int i = 0; i < n_layers; i++) src[i] = i;
    xlkv_status status = xlkv_layer_map_from_array(src, NULL, n_layers, out);
    free(src);
    return status;
}

/* layer_types grammar: entries joined by '_', each ^[0-9]+s?$. */
static xlkv_status parse_layer_types(const char *text, int n_layers, xlkv_layer_map **out) {
    int *src = calloc((size_t)n_layers, sizeof *src);
    bool *sliding = calloc((size_t)n_layers, sizeof *sliding);
    if (!src || !sliding) {
        free(src);
        free(sliding);
        return xlkv_fail(XLKV_E_NOMEM, "layer map: out of memory");
    }
    xlkv_status status = XLKV_OK;
    int count = 0;
    const char *p = text;
    for (;;) {
        const char *start = p;
        long value = 0;
        while (*p >= '0' && *p <= '9') {
            if (value < 1000000) value = value * 10 + (*p - '0');
            p++;
        }
        bool digits = p > start;
        bool is_sliding = false;
        if (*p == 's') {
            is_sliding = true;
            p++;
        }
        if (!digits || (*p != '_' && *p != '\0')) {
            const char *end = start;
            while (*end && *end != '_') end++;
            status = xlkv_fail(XLKV_E_INVALID,
                               "layer map '%s': entry %d ('%.*s') is not a layer number optionally followed by 's'",
                               text, count, (int)(end - start), start);
            break;
        }
        if (count < n_layers) {
            if (value >= n_layers) {
                status = xlkv_fail(XLKV_E_INVALID, "layer map '%s': entry %d reads layer %ld, but the model has %d layers",
                                   text, count, value, n_layers);
                break;
            }
            src[count] = (int)value;
            sliding[count] = is_sliding;
        }
        count++;
        if (*p == '\0') break;
        p++;
    }
    if (status == XLKV_OK && count != n_layers)
        status = xlkv_fail(XLKV_E_INVALID, "layer map '%s' has %d entries, but the model has %d layers", text, count,
                           n_layers);
    if (status == XLKV_OK) status = xlkv_layer_map_from_array(src, sliding, n_layers, out);
    free(src);
    free(sliding);
    return status;
}

xlkv_status xlkv_layer_map_parse(const char *text, int n_layers, xlkv_layer_map **out) {
    *out = NULL;
    if (!text || !*text) return xlkv_fail(XLKV_E_INVALID, "layer map: empty string");
    if (n_layers <= 0) return xlkv_fail(XLKV_E_INVALID, "layer map: the model has %d layers", n_layers);
    if (text[0] >= '0' && text[0] <= '9') return parse_layer_types(text, n_layers, out);
    return xlkv_layer_map_preset(text, n_layers, out);
}

xlkv_layer_map *xlkv_layer_map_clone(const xlkv_layer_map *map) {
    xlkv_layer_map *copy = NULL;
    if (xlkv_layer_map_from_array(map->kv_src, map->sliding, map->n_layers, &copy) != XLKV_OK) return NULL;
    return copy;
}

char *xlkv_layer_map_to_string(const xlkv_layer_map *map) {
    size_t cap = (size_t)map->n_layers * 12 + 1;
    char *text = malloc(cap);
    if (!text) return NULL;
    size_t n = 0;
    for (int i = 0; i < map->n_layers; i++)
        n += (size_t)snprintf(text + n, cap - n, "%s%d%s", i ? "_" : "", map->kv_src[i], map->sliding[i] ? "s" : "");
    return text;
}

bool xlkv_layer_map_has_cyclic(const xlkv_layer_map *map) {
    for (int s = 0; s < map->n_plan_steps; s++)
        if (map->plan[s].cyclic) return true;
    return false;
}

bool xlkv_layer_map_is_standard(const xlkv_layer_map *map) {
    for (int i = 0; i < map->n_layers; i++)
        if (map->kv_src[i] != i) return false;
    return true;
}

size_t xlkv_layer_map_kv_bytes_per_token(const xlkv_layer_map *map, int n_kv_heads, int head_dim,
                                         int bytes_per_element) {
    return (size_t)map->n_kv_layers * 2u * (size_t)n_kv_heads * (size_t)head_dim * (size_t)bytes_per_element;
}
