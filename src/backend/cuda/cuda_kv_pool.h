/* backend/cuda/cuda_kv_pool: the paged KV cache of the CUDA engine.
 *
 * Owns one device allocation of fixed-size blocks, laid out as cuda_kernels.h says:
 *   pool[block][slot][kv][pos_in_block][kv_dim]   (slot < n_slots = the map's KV layers only; kv 0 = K, 1 = V)
 * a free list of blocks (a stack: freed blocks are reused first, so the blocks of a sequence are generally not
 * contiguous), and the block tables: a host mirror and a device copy [max_seqs + 1, max_blocks_per_seq], row r =
 * the physical blocks of table row r's positions [i * block_size, (i + 1) * block_size).
 *
 * Block 0 is a scratch block that no sequence owns: every table entry that is not owned points at it, and the last
 * table row (padding_row) is all scratch, so padded rows of a batched decode (CUDA graph buckets) write and read
 * there harmlessly. A row's blocks are reserved by xlkv_cuda_kv_pool_reserve (the engine reserves a sequence's whole
 * prompt + max_new_tokens at add time) and returned at once by xlkv_cuda_kv_pool_release. */
#ifndef XLKV_BACKEND_CUDA_KV_POOL_H
#define XLKV_BACKEND_CUDA_KV_POOL_H

#include <cuda_runtime.h>
#include <stddef.h>

#include "backend/cuda/cuda_kernels.h"
#include "xlkv.h"

typedef struct xlkv_cuda_kv_pool {
    void *pool;             /* device [n_blocks][n_slots][2][block_size][kv_dim] */
    size_t n_blocks;        /* blocks in the allocation, the scratch block 0 included */
    size_t block_bytes;
    int n_slots;
    int block_size;
    int kv_dim;
    int max_seqs;           /* table rows that sequences use: 0 .. max_seqs - 1 */
    int padding_row;        /* == max_seqs: the all-scratch row */
    int max_blocks_per_seq; /* ceil(n_ctx / block_size) */
    int *host_tables;       /* [max_seqs + 1, max_blocks_per_seq] */
    int *device_tables;     /* device copy of host_tables */
    int *owned;             /* [max_seqs] blocks each row owns (its first owned[r] table entries) */
    int *free_blocks;       /* stack [n_blocks - 1] of free block ids */
    size_t n_free;
} xlkv_cuda_kv_pool;

/* Bytes of one block. */
size_t xlkv_cuda_kv_block_bytes(int n_slots, int block_size, int kv_dim, size_t elem_bytes);

/* Allocates n_blocks blocks (>= 2: scratch + one) and the tables for max_seqs rows of n_ctx positions; zeroes the
 * pool. Synchronous. On failure everything is freed. */
xlkv_status xlkv_cuda_kv_pool_init(xlkv_cuda_kv_pool *pool, size_t n_blocks, int n_slots, int block_size, int kv_dim,
                                   size_t elem_bytes, int max_seqs, int n_ctx, cudaStream_t stream);
void xlkv_cuda_kv_pool_free(xlkv_cuda_kv_pool *pool);

/* Blocks needed for `positions` positions. */
int xlkv_cuda_kv_blocks_for(const xlkv_cuda_kv_pool *pool, int positions);

/* Makes table row `row` own enough blocks for `positions` positions (never shrinks); uploads the row. Fails with
 * XLKV_E_CAPACITY (blocks needed vs free) leaving the row unchanged. `who` names the sequence in messages. */
xlkv_status xlkv_cuda_kv_pool_reserve(xlkv_cuda_kv_pool *pool, int row, int positions, const char *who,
                                      cudaStream_t stream);
/* Returns every block of `row` to the free list and points the row at the scratch block again; uploads the row. */
xlkv_status xlkv_cuda_kv_pool_release(xlkv_cuda_kv_pool *pool, int row, cudaStream_t stream);

/* Usable blocks (scratch excluded) and blocks owned by rows. */
size_t xlkv_cuda_kv_pool_total(const xlkv_cuda_kv_pool *pool);
size_t xlkv_cuda_kv_pool_used(const xlkv_cuda_kv_pool *pool);

/* The view the kernels take. */
xlkv_paged_kv xlkv_cuda_kv_pool_view(const xlkv_cuda_kv_pool *pool);

#endif
