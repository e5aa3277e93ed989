/* backend/cuda/cuda_kv_pool: blocks, free list and block tables of the paged KV cache (see cuda_kv_pool.h). */
#include "backend/cuda/cuda_kv_pool.h"

#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include "backend/cuda/cuda_check.h"

enum { SCRATCH_BLOCK = 0 };

size_t xlkv_cuda_kv_block_bytes(int n_slots, int block_size, int kv_dim, size_t elem_bytes) {
    return (size_t)n_slots * 2 * (size_t)block_size * (size_t)kv_dim * elem_bytes;
}

void xlkv_cuda_kv_pool_free(xlkv_cuda_kv_pool *pool) {
    if (!pool) return;
    if (pool->pool) (void)cudaFree(pool->pool);
    if (pool->device_tables) (void)cudaFree(pool->device_tables);
    free(pool->host_tables);
    free(pool->owned);
    free(pool->free_blocks);
    memset(pool, 0, sizeof *pool);
}

static size_t table_entries(const xlkv_cuda_kv_pool *pool) {
    return (size_t)(pool->max_seqs + 1) * (size_t)pool->max_blocks_per_seq;
}

/* Copies table row `row` to the device and waits, so the host mirror may change right after. */
static xlkv_status upload_row(xlkv_cuda_kv_pool *pool, int row, cudaStream_t stream) {
    const size_t offset = (size_t)row * (size_t)pool->max_blocks_per_seq;
    XLKV_CUDA_TRY(cudaMemcpyAsync(pool->device_tables + offset, pool->host_tables + offset,
                                  (size_t)pool->max_blocks_per_seq * sizeof(int), cudaMemcpyHostToDevice, stream),
                  "uploading a KV block table row");
    XLKV_CUDA_TRY(cudaStreamSynchronize(stream), "uploading a KV block table row");
    return XLKV_OK;
}

xlkv_status xlkv_cuda_kv_pool_init(xlkv_cuda_kv_pool *pool, size_t n_blocks, int n_slots, int block_size, int kv_dim,
                                   size_t elem_bytes, int max_seqs, int n_ctx, cudaStream_t stream) {
    memset(pool, 0, sizeof *pool);
    if (n_blocks < 2)
        return xlkv_fail(XLKV_E_CAPACITY, "cuda: a KV pool of %zu blocks holds nothing (one block is scratch)",
                         n_blocks);
    if (n_blocks > (size_t)INT_MAX)
        return xlkv_fail(XLKV_E_INVALID, "cuda: a KV pool of %zu blocks exceeds the %d block ids", n_blocks, INT_MAX);
    pool->n_blocks = n_blocks;
    pool->n_slots = n_slots;
    pool->block_size = block_size;
    pool->kv_dim = kv_dim;
    pool->max_seqs = max_seqs;
    pool->padding_row = max_seqs;
    pool->max_blocks_per_seq = (n_ctx + block_size - 1) / block_size;
    pool->block_bytes = xlkv_cuda_kv_block_bytes(n_slots, block_size, kv_dim, elem_bytes);

    const size_t entries = table_entries(pool);
    /* the device pool first: when it does not fit, fail before building host lists of its size */
    xlkv_status status = xlkv_cuda_alloc(&pool->pool, n_blocks * pool->block_bytes, "the KV pool");
    if (status != XLKV_OK) {
        xlkv_cuda_kv_pool_free(pool);
        return status;
    }
    pool->host_tables = calloc(entries, sizeof(int)); /* all SCRATCH_BLOCK */
    pool->owned = calloc((size_t)max_seqs, sizeof(int));
    pool->free_blocks = malloc((n_blocks - 1) * sizeof(int));
    if (!pool->host_tables || !pool->owned || !pool->free_blocks) {
        xlkv_cuda_kv_pool_free(pool);
        return xlkv_fail(XLKV_E_NOMEM, "cuda: out of host memory for the KV block tables (%zu blocks)", n_blocks);
    }
    /* the stack pops block 1 first, so a fresh pool hands out blocks in order */
    pool->n_free = n_blocks - 1;
    for (size_t i = 0; i < pool->n_free; i++) pool->free_blocks[i] = (int)(n_blocks - 1 - i);

    status = xlkv_cuda_alloc((void **)&pool->device_tables, entries * sizeof(int), "the KV block tables");
    if (status == XLKV_OK) {
        cudaError_t err = cudaMemsetAsync(pool->pool, 0, n_blocks * pool->block_bytes, stream);
        if (err == cudaSuccess) err = cudaMemsetAsync(pool->device_tables, 0, entries * sizeof(int), stream);
        if (err == cudaSuccess) err = cudaStreamSynchronize(stream);
        if (err != cudaSuccess) status = xlkv_cuda_fail(err, "zeroing the KV pool");
    }
    if (status != XLKV_OK) xlkv_cuda_kv_pool_free(pool);
    return status;
}

int xlkv_cuda_kv_blocks_for(const xlkv_cuda_kv_pool *pool, int positions) {
    return (positions + pool->block_size - 1) / pool->block_size;
}

xlkv_status xlkv_cuda_kv_pool_reserve(xlkv_cuda_kv_pool *pool, int row, int positions, const char *who,
                                      cudaStream_t stream) {
    const int needed = xlkv_cuda_kv_blocks_for(pool, positions);
    if (needed > pool->max_blocks_per_seq)
        return xlkv_fail(XLKV_E_CAPACITY, "cuda: %s needs %d positions, more than the context of %d", who, positions,
                         pool->max_blocks_per_seq * pool->block_size);
    const int have = pool->owned[row];
    if (needed <= have) return XLKV_OK;
    const size_t more = (size_t)(needed - have);
    if (more > pool->n_free)
        return xlkv_fail(XLKV_E_CAPACITY,
                         "cuda: KV pool full: %s needs %zu more blocks of %d positions (%d positions in all), %zu of "
                         "%zu blocks are free",
                         who, more, pool->block_size, positions, pool->n_free, xlkv_cuda_kv_pool_total(pool));
    int *entries = pool->host_tables + (size_t)row * (size_t)pool->max_blocks_per_seq;
    for (int i = have; i < needed; i++) entries[i] = pool->free_blocks[--pool->n_free];
    pool->owned[row] = needed;
    return upload_row(pool, row, stream);
}

xlkv_status xlkv_cuda_kv_pool_release(xlkv_cuda_kv_pool *pool, int row, cudaStream_t stream) {
    int *entries = pool->host_tables + (size_t)row * (size_t)pool->max_blocks_per_seq;
    for (int i = 0; i < pool->owned[row]; i++) {
        pool->free_blocks[pool->n_free++] = entries[i];
        entries[i] = SCRATCH_BLOCK;
    }
    const int had = pool->owned[row];
    pool->owned[row] = 0;
    return had ? upload_row(pool, row, stream) : XLKV_OK;
}

size_t xlkv_cuda_kv_pool_total(const xlkv_cuda_kv_pool *pool) { return pool->n_blocks - 1; }
size_t xlkv_cuda_kv_pool_used(const xlkv_cuda_kv_pool *pool) { return pool->n_blocks - 1 - pool->n_free; }

xlkv_paged_kv xlkv_cuda_kv_pool_view(const xlkv_cuda_kv_pool *pool) {
    return (xlkv_paged_kv){
        .pool = pool->pool,
        .n_slots = pool->n_slots,
        .block_size = pool->block_size,
        .kv_dim = pool->kv_dim,
        .block_tables = pool->device_tables,
        .max_blocks_per_seq = pool->max_blocks_per_seq,
    };
}
