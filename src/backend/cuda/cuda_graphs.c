/* backend/cuda/cuda_graphs: bucketed capture and replay of the decode step (see cuda_graphs.h). */
#include "backend/cuda/cuda_graphs.h"

#include <stdlib.h>
#include <string.h>

#include "backend/cuda/cuda_check.h"

int xlkv_cuda_batch_bucket(int batch) {
    if (batch <= 8) return batch;
    int power = 8;
    while (power <= batch / 2) power *= 2; /* largest power of two <= batch */
    const int granule = power / 8;
    return (batch + granule - 1) / granule * granule;
}

xlkv_status xlkv_cuda_graphs_init(xlkv_cuda_graph_cache *cache, int max_bucket, bool enabled) {
    memset(cache, 0, sizeof *cache);
    cache->enabled = enabled;
    cache->max_bucket = max_bucket;
    cache->graphs = calloc((size_t)max_bucket + 1, sizeof *cache->graphs);
    if (!cache->graphs) return xlkv_fail(XLKV_E_NOMEM, "cuda: out of host memory for the graph cache");
    return XLKV_OK;
}

void xlkv_cuda_graphs_free(xlkv_cuda_graph_cache *cache) {
    if (!cache) return;
    if (cache->graphs)
        for (int b = 0; b <= cache->max_bucket; b++)
            if (cache->graphs[b]) (void)cudaGraphExecDestroy(cache->graphs[b]);
    free(cache->graphs);
    memset(cache, 0, sizeof *cache);
}

/* Records pass(user, bucket) into an executable graph without running it. */
static xlkv_status capture(xlkv_cuda_pass pass, void *user, int bucket, cudaStream_t stream, cudaGraphExec_t *out) {
    *out = NULL;
    XLKV_CUDA_TRY(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal), "starting a graph capture");
    xlkv_status status = pass(user, bucket);
    cudaGraph_t graph = NULL;
    cudaError_t err = cudaStreamEndCapture(stream, &graph); /* always ends it, so the stream is usable again */
    if (status == XLKV_OK && err != cudaSuccess) status = xlkv_cuda_fail(err, "ending a graph capture");
    if (status == XLKV_OK) {
        err = cudaGraphInstantiate(out, graph, 0);
        if (err != cudaSuccess) {
            *out = NULL;
            status = xlkv_cuda_fail(err, "instantiating the decode graph");
        }
    } else {
        (void)cudaGetLastError();
    }
    if (graph) (void)cudaGraphDestroy(graph);
    return status;
}

xlkv_status xlkv_cuda_graphs_run(xlkv_cuda_graph_cache *cache, int bucket, xlkv_cuda_pass pass, void *user,
                                 cudaStream_t stream) {
    if (bucket < 1 || bucket > cache->max_bucket)
        return xlkv_fail(XLKV_E_INVALID, "cuda: decode bucket %d outside [1, %d]", bucket, cache->max_bucket);
    if (cache->enabled && cache->graphs[bucket]) {
        XLKV_CUDA_TRY(cudaGraphLaunch(cache->graphs[bucket], stream), "replaying the decode graph");
        return XLKV_OK;
    }
    XLKV_TRY(pass(user, bucket));
    if (!cache->enabled) return XLKV_OK;
    /* capture after the direct run has finished, so that nothing of it is pending while the stream records */
    XLKV_CUDA_TRY(cudaStreamSynchronize(stream), "finishing the decode step before capturing it");
    XLKV_TRY(capture(pass, user, bucket, stream, &cache->graphs[bucket]));
    cache->n_captured++;
    return XLKV_OK;
}
