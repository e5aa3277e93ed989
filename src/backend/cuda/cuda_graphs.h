/* backend/cuda/cuda_graphs: CUDA graphs of the batched decode step, one per batch-size bucket.
 *
 * Owns the bucket rule and the cache of instantiated graphs. A decode batch of B sequences runs as a pass of
 * bucket(B) rows (B itself up to 8, then rounded up to a multiple of an eighth of the power of two below it: at most
 * 12.5% padding and about eight graphs per doubling); the padding rows read and write the KV pool's scratch block.
 * The same bucketing is used with graphs off, so that both run exactly the same launches.
 *
 * The first time a bucket runs, its pass is launched directly (this warms up cuBLAS and the kernels outside any
 * capture) and then captured; later steps replay the graph. The pass must read every per-step value from device
 * buffers at fixed addresses (the engine's input region), never from its own launch arguments. */
#ifndef XLKV_BACKEND_CUDA_GRAPHS_H
#define XLKV_BACKEND_CUDA_GRAPHS_H

#include <cuda_runtime.h>
#include <stdbool.h>

#include "xlkv.h"

/* The pass of one bucket: enqueues work on the stream, synchronizes nothing. */
typedef xlkv_status (*xlkv_cuda_pass)(void *user, int bucket);

typedef struct xlkv_cuda_graph_cache {
    bool enabled;
    int max_bucket;
    cudaGraphExec_t *graphs; /* [max_bucket + 1], NULL until captured */
    int n_captured;
} xlkv_cuda_graph_cache;

/* Rows the decode pass of `batch` sequences runs (>= batch). */
int xlkv_cuda_batch_bucket(int batch);

xlkv_status xlkv_cuda_graphs_init(xlkv_cuda_graph_cache *cache, int max_bucket, bool enabled);
void xlkv_cuda_graphs_free(xlkv_cuda_graph_cache *cache);

/* Runs pass(user, bucket) on `stream`: the cached graph when there is one, else directly (and, graphs enabled,
 * captures it for next time). */
xlkv_status xlkv_cuda_graphs_run(xlkv_cuda_graph_cache *cache, int bucket, xlkv_cuda_pass pass, void *user,
                                 cudaStream_t stream);

#endif
