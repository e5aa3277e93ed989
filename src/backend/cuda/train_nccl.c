/* backend/cuda/train_nccl: data-parallel gradient all-reduce over NCCL (see train/gpu_trainer.h, "data parallel").
 * Built with NCCL when CMake finds nccl.h and libnccl (the CUDA toolkit ships them here); without it every entry
 * point fails with a message saying so. */
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "backend/cuda/cuda_check.h"
#include "backend/cuda/train_gpu_buffers.h"
#include "core/status.h"
#include "core/timing.h"

xlkv_status xlkv_gpu_select_device(int local_rank, int *out_device) {
    int count = 0;
    XLKV_CUDA_TRY(cudaGetDeviceCount(&count), "counting the GPUs");
    if (count <= 0) return xlkv_fail(XLKV_E_INVALID, "--device cuda: no GPU is visible to this rank");
    *out_device = local_rank % count;
    XLKV_CUDA_TRY(cudaSetDevice(*out_device), "selecting the rank's GPU");
    return XLKV_OK;
}

#if defined(XLKV_HAVE_NCCL)
#include <nccl.h>

_Static_assert(sizeof(ncclUniqueId) == XLKV_GPU_COMM_ID_BYTES, "NCCL unique id size");

struct xlkv_gpu_comm {
    ncclComm_t nccl;
    int rank, world;
    cudaStream_t stream;      /* the all-reduces (high priority, non-blocking) */
    cudaEvent_t ready, done;  /* trainer stream -> comm stream at each bucket; comm stream -> trainer stream */
    cudaStream_t train_stream; /* of the backward in progress */
    int buckets;
};

static xlkv_status nccl_fail(ncclResult_t result, const char *what) {
    return xlkv_fail(XLKV_E_IO, "NCCL: %s failed: %s (%s)", what, ncclGetErrorString(result),
                     ncclGetLastError(NULL) ? ncclGetLastError(NULL) : "no detail");
}

xlkv_status xlkv_gpu_comm_unique_id(unsigned char id[XLKV_GPU_COMM_ID_BYTES]) {
    ncclUniqueId unique;
    ncclResult_t r = ncclGetUniqueId(&unique);
    if (r != ncclSuccess) return nccl_fail(r, "ncclGetUniqueId");
    memcpy(id, &unique, sizeof unique);
    return XLKV_OK;
}

xlkv_status xlkv_gpu_comm_create(int rank, int world, const unsigned char id[XLKV_GPU_COMM_ID_BYTES],
                                 xlkv_gpu_comm **out) {
    *out = NULL;
    xlkv_gpu_comm *comm = calloc(1, sizeof *comm);
    if (!comm) return xlkv_fail(XLKV_E_NOMEM, "NCCL: out of memory");
    comm->rank = rank;
    comm->world = world;
    int lowest = 0, highest = 0;
    cudaError_t e = cudaDeviceGetStreamPriorityRange(&lowest, &highest);
    if (e == cudaSuccess) e = cudaStreamCreateWithPriority(&comm->stream, cudaStreamNonBlocking, highest);
    if (e == cudaSuccess) e = cudaEventCreateWithFlags(&comm->ready, cudaEventDisableTiming);
    if (e == cudaSuccess) e = cudaEventCreateWithFlags(&comm->done, cudaEventDisableTiming);
    if (e != cudaSuccess) {
        xlkv_gpu_comm_free(comm);
        return xlkv_cuda_fail(e, "creating the all-reduce stream and events");
    }
    ncclUniqueId unique;
    memcpy(&unique, id, sizeof unique);
    ncclResult_t r = ncclCommInitRank(&comm->nccl, world, unique, rank);
    if (r != ncclSuccess) {
        comm->nccl = NULL;
        xlkv_gpu_comm_free(comm);
        return nccl_fail(r, "ncclCommInitRank (joining the ranks' communicator)");
    }
    *out = comm;
    return XLKV_OK;
}

void xlkv_gpu_comm_free(xlkv_gpu_comm *comm) {
    if (!comm) return;
    if (comm->stream) (void)cudaStreamSynchronize(comm->stream);
    if (comm->nccl) ncclCommDestroy(comm->nccl);
    if (comm->ready) (void)cudaEventDestroy(comm->ready);
    if (comm->done) (void)cudaEventDestroy(comm->done);
    if (comm->stream) (void)cudaStreamDestroy(comm->stream);
    free(comm);
}

static xlkv_status abort_comm(xlkv_gpu_comm *comm, xlkv_status status) {
    if (comm->nccl) ncclCommAbort(comm->nccl);
    comm->nccl = NULL;
    return status;
}

/* One bucket: the comm stream waits for the trainer's stream as it is now, then sums the run in place. */
static xlkv_status reduce_bucket(void *ctx, float *grads, size_t n) {
    xlkv_gpu_comm *comm = ctx;
    XLKV_CUDA_TRY(cudaEventRecord(comm->ready, comm->train_stream), "marking a gradient bucket ready");
    XLKV_CUDA_TRY(cudaStreamWaitEvent(comm->stream, comm->ready, 0), "ordering the all-reduce after the backward");
    ncclResult_t r = ncclAllReduce(grads, grads, n, ncclFloat, ncclSum, comm->nccl, comm->stream);
    if (r != ncclSuccess && r != ncclInProgress) return nccl_fail(r, "ncclAllReduce of a gradient bucket");
    comm->buckets++;
    return XLKV_OK;
}

xlkv_status xlkv_gpu_trainer_backward_allreduce(xlkv_gpu_trainer *gt, float loss_scale, xlkv_gpu_comm *comm,
                                                double timeout_seconds) {
    if (!comm->nccl)
        return xlkv_fail(XLKV_E_INVALID, "NCCL: the communicator was aborted after an earlier failure");
    float *grads = NULL;
    size_t n = 0;
    cudaStream_t stream = NULL;
    xlkv_gpu_trainer_gradient_buffer(gt, &grads, &n, &stream);
    comm->train_stream = stream;
    comm->buckets = 0;
    xlkv_status status = xlkv_gpu_trainer_backward_buckets(gt, loss_scale, reduce_bucket, comm);
    if (status != XLKV_OK) return abort_comm(comm, status);
    /* the trainer's stream (clipping, AdamW, the next zeroing) waits for every bucket */
    xlkv_gpu_trainer_mark(gt, XLKV_STEP_ALLREDUCE_WAIT);
    cudaError_t e = cudaEventRecord(comm->done, comm->stream);
    if (e == cudaSuccess) e = cudaStreamWaitEvent(stream, comm->done, 0);
    if (e != cudaSuccess) return abort_comm(comm, xlkv_cuda_fail(e, "ordering the optimizer after the all-reduce"));
    const double start = xlkv_now_seconds();
    const struct timespec pause = {0, 50 * 1000}; /* 50 us between polls */
    for (;;) {
        const cudaError_t done = cudaStreamQuery(stream);
        if (done == cudaSuccess) return XLKV_OK;
        if (done != cudaErrorNotReady)
            return abort_comm(comm, xlkv_cuda_fail(done, "the backward pass and gradient all-reduce"));
        ncclResult_t async = ncclSuccess;
        ncclResult_t r = ncclCommGetAsyncError(comm->nccl, &async);
        if (r != ncclSuccess) return abort_comm(comm, nccl_fail(r, "ncclCommGetAsyncError"));
        if (async != ncclSuccess && async != ncclInProgress)
            return abort_comm(comm, xlkv_fail(XLKV_E_IO, "NCCL: the gradient all-reduce failed on rank %d of %d: "
                                                         "%s (a lost peer or a network error)", comm->rank,
                                              comm->world, ncclGetErrorString(async)));
        if (xlkv_now_seconds() - start > timeout_seconds)
            return abort_comm(comm, xlkv_fail(XLKV_E_IO, "NCCL: the gradient all-reduce did not finish within %.0f s "
                                                         "on rank %d of %d (a rank stopped or hangs; "
                                                         "XLKV_NCCL_TIMEOUT_S sets the limit)", timeout_seconds,
                                              comm->rank, comm->world));
        nanosleep(&pause, NULL);
    }
}

#else /* no NCCL */

static xlkv_status no_nccl(void) {
    return xlkv_fail(XLKV_E_INVALID, "--device cuda with several ranks needs NCCL, and this xlkv was built without "
                                     "it (nccl.h / libnccl were not found when it was configured)");
}
xlkv_status xlkv_gpu_comm_unique_id(unsigned char id[XLKV_GPU_COMM_ID_BYTES]) { return no_nccl(); }
xlkv_status xlkv_gpu_comm_create(int rank, int world, const unsigned char id[XLKV_GPU_COMM_ID_BYTES],
                                 xlkv_gpu_comm **out) {
    *out = NULL;
    return no_nccl();
}
void xlkv_gpu_comm_free(xlkv_gpu_comm *comm) {}
xlkv_status xlkv_gpu_trainer_backward_allreduce(xlkv_gpu_trainer *gt, float loss_scale, xlkv_gpu_comm *comm,
                                                double timeout_seconds) {
    return no_nccl();
}
#endif
