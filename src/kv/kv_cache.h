/* kv/kv_cache: the contiguous per-sequence KV cache of the CPU backend.
 *
 * Owns storage for KV layers only: one slot per KV layer (model/layer_map's kv_slot), each holding keys and values
 * for n_ctx positions. A layer that reads another layer's KV has no slot of its own, so the memory is
 * n_slots x n_ctx x kv_dim x 2 floats: the saving of a sharing map is real memory, not accounting.
 * Keys are stored RoPE-rotated at their own position. Layout: k[slot][pos][kv_dim], same for v. */
#ifndef XLKV_KV_KV_CACHE_H
#define XLKV_KV_KV_CACHE_H

#include <stddef.h>

#include "xlkv.h"

typedef struct xlkv_kv_cache {
    int n_slots; /* = number of KV layers */
    int n_ctx;   /* positions per slot */
    int kv_dim;  /* n_kv_heads * head_dim */
    float *k;    /* [n_slots, n_ctx, kv_dim] */
    float *v;    /* [n_slots, n_ctx, kv_dim] */
} xlkv_kv_cache;

xlkv_status xlkv_kv_cache_init(xlkv_kv_cache *cache, int n_slots, int n_ctx, int kv_dim);
void xlkv_kv_cache_free(xlkv_kv_cache *cache);

static inline float *xlkv_kv_cache_k(const xlkv_kv_cache *c, int slot, int pos) {
    return c->k + ((size_t)slot * (size_t)c->n_ctx + (size_t)pos) * (size_t)c->kv_dim;
}
static inline float *xlkv_kv_cache_v(const xlkv_kv_cache *c, int slot, int pos) {
    return c->v + ((size_t)slot * (size_t)c->n_ctx + (size_t)pos) * (size_t)c->kv_dim;
}
/* Zeroes positions [pos0, pos0 + n) of one slot (targets before the first iteration of a cyclic group). */
void xlkv_kv_cache_zero(xlkv_kv_cache *cache, int slot, int pos0, int n);
size_t xlkv_kv_cache_bytes(const xlkv_kv_cache *cache);

#endif
