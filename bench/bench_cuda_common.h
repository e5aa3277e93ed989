/* bench/bench_cuda_common: what the CUDA benchmarks share: ending the program on a CUDA error (the message names
 * the benchmark, BENCH_NAME, defined before this header is included, and the step that failed), and the xorshift
 * random numbers of their inputs (the same sequence in every run). Not a library header: one benchmark per file. */
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

#endif
