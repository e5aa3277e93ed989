/* model/layer_map: the cross-layer KV map, interpreted once, as data (SEMANTICS.md sections 1 and 3).
 *
 * Owns: parsing LCKV `layer_types` strings ("0_20_20s_21"), the named presets (standard, cla:K, lckv:W, yoco,
 * pizza|sandwich|lasagna-bottom|middle|top:l) for any layer count, KVSharer JSON maps ({"i": j}, chains collapsed),
 * validation with messages that name the offending entry, and everything derived from kv_src[]: which layers are KV
 * layers, their cache slots, which layers are cyclic, and the iteration plan. Nothing else in xlkv decodes a map;
 * backends, executor and trainer only ask these fields. */
#ifndef XLKV_MODEL_LAYER_MAP_H
#define XLKV_MODEL_LAYER_MAP_H

#include <stdbool.h>
#include <stddef.h>

#include "xlkv.h"

/* One step of the prefill plan: run layers [first, last] once (acyclic run) or as a cyclic group iterated m + b times. */
typedef struct xlkv_plan_step {
    int first;
    int last;
    bool cyclic;
} xlkv_plan_step;

struct xlkv_layer_map {
    int n_layers;
    int *kv_src;     /* [n_layers] layer i attends to the K/V produced by layer kv_src[i] */
    bool *sliding;   /* [n_layers] layer i uses a sliding window (width: the model's sliding_window) */
    int *kv_slot;    /* [n_layers] cache slot of KV layer j (0..n_kv_layers-1, in layer order); -1 if not a KV layer */
    int n_kv_layers; /* number of layers some layer reads */
    xlkv_plan_step *plan; /* [n_plan_steps] in layer order, covering every layer exactly once */
    int n_plan_steps;
};

/* Parses `text`, which is either a layer_types string ("0_1_2s_3") with exactly n_layers entries, or a preset name
 * (xlkv_layer_map_preset below) expanded for n_layers layers. */
xlkv_status xlkv_layer_map_parse(const char *text, int n_layers, xlkv_layer_map **out);

/* Expands a preset name for n_layers layers (SEMANTICS.md section 1). Every preset is a partition of the layers into
 * consecutive groups whose layers all read the group's target (bottom = first layer, top = last,
 * middle = floor((first + last) / 2)):
 *   standard                          every layer reads itself
 *   pizza|sandwich|lasagna-bottom|middle|top:l   l KV layers, 1 <= l <= L, required; l = L is the standard map
 *   cla[:K]    groups of K adjacent layers reading their bottom layer, 1 <= K <= L, default K = 2 (CLA2); when K does
 *              not divide L the last group is smaller (= lasagna-bottom:L/K when it does)
 *   lckv[:W]   sandwich-top with W warmup layers (l = W + 1), 0 <= W < L, default W = 2 (the LCKV paper's setting)
 *   yoco       pizza-bottom with l = L/2 + 1, its standalone layers sliding-window; needs L >= 2
 * Fails with XLKV_E_INVALID and a message naming the preset and the value (or listing the known presets). */
xlkv_status xlkv_layer_map_preset(const char *text, int n_layers, xlkv_layer_map **out);

/* The known preset names, comma-separated ("standard, cla[:K], ..."), for messages and --help; truncated to fit. */
void xlkv_layer_map_preset_names(char *buffer, size_t capacity);

/* Builds a map from kv_src[] and sliding[] (sliding may be NULL = no sliding layers); validates and derives. */
xlkv_status xlkv_layer_map_from_array(const int *kv_src, const bool *sliding, int n_layers, xlkv_layer_map **out);

/* Standard map: every layer reads itself. */
xlkv_status xlkv_layer_map_standard(int n_layers, xlkv_layer_map **out);

/* KVSharer map: a JSON object {"i": j, ...} with j < i; unlisted layers read themselves; chains collapsed to roots.
 * Keys are canonical decimal layer indexes ("5", not "05" or " 5"), values integers; each key at most once. */
xlkv_status xlkv_layer_map_from_kvsharer_json(const char *json_text, int n_layers, xlkv_layer_map **out);
xlkv_status xlkv_layer_map_load_kvsharer(const char *path, int n_layers, xlkv_layer_map **out); /* names the file */

xlkv_layer_map *xlkv_layer_map_clone(const xlkv_layer_map *map);
void xlkv_layer_map_free(xlkv_layer_map *map);

/* The layer_types string of a map (heap string, caller frees; NULL on allocation failure). */
char *xlkv_layer_map_to_string(const xlkv_layer_map *map);

static inline bool xlkv_is_kv_layer(const xlkv_layer_map *m, int j) { return m->kv_slot[j] >= 0; }
static inline bool xlkv_is_cyclic(const xlkv_layer_map *m, int i) { return m->kv_src[i] > i; }
/* The cache slot that layer i's attention reads. */
static inline int xlkv_read_slot(const xlkv_layer_map *m, int i) { return m->kv_slot[m->kv_src[i]]; }
bool xlkv_layer_map_has_cyclic(const xlkv_layer_map *map);
bool xlkv_layer_map_is_standard(const xlkv_layer_map *map); /* every layer reads itself (sliding ignored) */

/* KV bytes per token = n_kv_layers x 2 x n_kv_heads x head_dim x bytes_per_element. */
size_t xlkv_layer_map_kv_bytes_per_token(const xlkv_layer_map *map, int n_kv_heads, int head_dim,
                                         int bytes_per_element);

#endif
