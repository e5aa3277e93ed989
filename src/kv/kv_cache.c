/* kv/kv_cache: see kv_cache.h. */
#include "kv/kv_cache.h"

#include <stdlib.h>
#include <string.h>

#include "core/status.h"

xlkv_status xlkv_kv_cache_init(xlkv_kv_cache *cache, int n_slots, int n_ctx, int kv_dim) {
    memset(cache, 0, sizeof *cache);
    if (n_slots < 0 || n_ctx <= 0 || kv_dim <= 0)
        return xlkv_fail(XLKV_E_INVALID, "KV cache: invalid shape (%d slots, %d positions, kv_dim %d)", n_slots, n_ctx,
                         kv_dim);
    size_t n = (size_t)n_slots * (size_t)n_ctx * (size_t)kv_dim;
    cache->n_slots = n_slots;
    cache->n_ctx = n_ctx;
    cache->kv_dim = kv_dim;
    if (n == 0) return XLKV_OK;
    cache->k = calloc(n, sizeof(float));
    cache->v = calloc(n, sizeof(float));
    if (!cache->k || !cache->v) {
        xlkv_kv_cache_free(cache);
        return xlkv_fail(XLKV_E_NOMEM, "KV cache: cannot allocate %zu MiB for %d KV layers x %d positions",
                         2 * n * sizeof(float) >> 20, n_slots, n_ctx);
    }
    return XLKV_OK;
}

void xlkv_kv_cache_free(xlkv_kv_cache *cache) {
    free(cache->k);
    free(cache->v);
    cache->k = cache->v = NULL;
}

void xlkv_kv_cache_zero(xlkv_kv_cache *cache, int slot, int pos0, int n) {
    size_t bytes = (size_t)n * (size_t)cache->kv_dim * sizeof(float);
    memset(xlkv_kv_cache_k(cache, slot, pos0), 0, bytes);
    memset(xlkv_kv_cache_v(cache, slot, pos0), 0, bytes);
}

size_t xlkv_kv_cache_bytes(const xlkv_kv_cache *cache) {
    return 2u * (size_t)cache->n_slots * (size_t)cache->n_ctx * (size_t)cache->kv_dim * sizeof(float);
}
