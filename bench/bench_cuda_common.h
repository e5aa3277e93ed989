/* bench/bench_cuda_common: what the CUDA benchmarks share: ending the program on a CUDA error (the message names
 * the benchmark, BENCH_NAME, defined before this header is included, and the step that failed), and the xorshift
 * random numbers of their inputs (the same sequence in every run), and the median time of bursts of calls. Not a
 * library header: one benchmark per file. */
#ifndef XLKV_BENCH_CUDA_COMMON_H
#define XLKV_BENCH_CUDA_COMMON_H

#include <cuda_runtime.h>
#include <stdio.h>
#include <stdlib.h>

#ifndef BENCH_NAME
#error "define BENCH_NAME (the benchmark's name, for its error messages) before including bench_cuda_common.h"
#endif

static inline void check(cudaError_t err, const char *what) {
    if (err != cudaSuccess) {
        fprintf(stderr, BENCH_NAME ": %s: %s\n", what, cudaGetErrorString(err));
        exit(1);
    }
}

/* An xlkv_cuda_* launcher's status (a cudaError_t value, 0 on success). */
static inline void check_rc(int rc, const char *what) { check((cudaError_t)rc, what); }

static unsigned long long bench_rng = 0x9e3779b97f4a7c15ull;

/* Uniform in [-1, 1). */
static inline float uniform(void) {
    bench_rng ^= bench_rng << 13;
    bench_rng ^= bench_rng >> 7;
    bench_rng ^= bench_rng << 17;
    return (float)((bench_rng >> 40) & 0xFFFFFF) / 8388608.0f - 1.0f;
}

/* For qsort: ascending floats. */
static inline int bench_compare_floats(const void *a, const void *b) {
    const float x = *(const float *)a, y = *(const float *)b;
    return (x > y) - (x < y);
}

/* The median over `reps` bursts of `burst` calls of call(ctx) on the default stream, in ms per call (CUDA events
 * around each burst; one burst more first, as a warm-up). */
static inline float bench_median_ms(void (*call)(void *ctx), void *ctx, int burst, int reps) {
    cudaEvent_t start, stop;
    check(cudaEventCreate(&start), "event");
    check(cudaEventCreate(&stop), "event");
    float *ms = (float *)calloc((size_t)reps, sizeof *ms);
    if (!ms) {
        fprintf(stderr, BENCH_NAME ": out of host memory\n");
        exit(1);
    }
    for (int r = 0; r <= reps; r++) {
        check(cudaEventRecord(start, NULL), "record");
        for (int i = 0; i < burst; i++) call(ctx);
        check(cudaEventRecord(stop, NULL), "record");
        check(cudaEventSynchronize(stop), "sync");
        float t = 0.0f;
        check(cudaEventElapsedTime(&t, start, stop), "elapsed");
        if (r > 0) ms[r - 1] = t / (float)burst;
    }
    cudaEventDestroy(start);
    cudaEventDestroy(stop);
    qsort(ms, (size_t)reps, sizeof *ms, bench_compare_floats);
    const float median = ms[reps / 2];
    free(ms);
    return median;
}

#endif
