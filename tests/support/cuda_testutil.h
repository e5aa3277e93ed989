/* tests/support/cuda_testutil: the checks and host/device helpers the CUDA tests share (tests/cuda/, label cuda).
 * Include after <cuda_runtime_api.h> and testutil.h (fail_msg).
 *   CK(call)          a CUDA runtime call that must return cudaSuccess
 *   CK_LAUNCH(call)   a kernel launcher (0 or a cudaError_t), then a synchronize that surfaces asynchronous errors
 *   ct_uniform / ct_random_floats   reproducible inputs in [-1, 1) (x scale) from the caller's own 64-bit LCG state
 *   ct_to_device / ct_dev_floats    cudaMalloc + upload (host NULL: uninitialized); ct_download(_floats): malloc + copy
 *   ct_bf16_rne / ct_bf16_value     bf16 round to nearest even of a finite float, from the definition, and back
 *   ct_bf16_untouched(...)          prints "check WHAT: N elements written outside the columns" for a strided bf16
 *                                   [rows, ld] buffer filled with 0xABCD before a kernel wrote columns
 *                                   [first, first + width); returns whether none outside changed
 *   ct_refused(what, rc)            prints "check WHAT: refused ok" when a launcher returned cudaErrorInvalidValue,
 *                                   else "FAIL"; returns whether it was refused */
#ifndef XLKV_TESTS_CUDA_TESTUTIL_H
#define XLKV_TESTS_CUDA_TESTUTIL_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CK(expr)                                                                                                       \
    do {                                                                                                               \
        cudaError_t ck_err_ = (expr);                                                                                  \
        if (ck_err_ != cudaSuccess) fail_msg("%s:%d: %s -> %s", __FILE__, __LINE__, #expr, cudaGetErrorString(ck_err_)); \
    } while (0)
#define CK_LAUNCH(expr)                                                                                                \
    do {                                                                                                               \
        int ck_rc_ = (expr);                                                                                           \
        if (ck_rc_ != 0)                                                                                               \
            fail_msg("%s:%d: %s -> %d (%s)", __FILE__, __LINE__, #expr, ck_rc_, cudaGetErrorString((cudaError_t)ck_rc_)); \
        CK(cudaDeviceSynchronize());                                                                                   \
    } while (0)


static inline float ct_uniform(unsigned long long *state) {
    *state = *state * 6364136223846793005ull + 1442695040888963407ull;
    return (float)((*state >> 40) & 0xFFFFFF) / 8388608.0f - 1.0f;
}
static inline float *ct_random_floats(size_t n, float scale, unsigned long long *state) {
    float *a = malloc((n ? n : 1) * sizeof *a);
    for (size_t i = 0; i < n; i++) a[i] = scale * ct_uniform(state);
    return a;
}
static inline void *ct_to_device(const void *host, size_t bytes) {
    void *d = NULL;
    CK(cudaMalloc(&d, bytes ? bytes : 4));
    if (host && bytes) CK(cudaMemcpy(d, host, bytes, cudaMemcpyHostToDevice));
    return d;
}
static inline float *ct_dev_floats(const float *host, size_t n) { return ct_to_device(host, n * sizeof(float)); }
static inline void *ct_download(const void *dev, size_t bytes) {
    void *h = malloc(bytes ? bytes : 1);
    if (bytes) CK(cudaMemcpy(h, dev, bytes, cudaMemcpyDeviceToHost));
    return h;
}
static inline float *ct_download_floats(const float *dev, size_t n) { return ct_download(dev, n * sizeof(float)); }
static inline uint16_t ct_bf16_rne(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    u += 0x7FFFu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}
static inline float ct_bf16_value(uint16_t b) {
    const uint32_t u = (uint32_t)b << 16;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

static inline bool ct_bf16_untouched(const char *what, const uint16_t *buf, size_t rows, size_t ld, size_t first,
                                     size_t width) {
    size_t touched = 0;
    for (size_t r = 0; r < rows; r++)
        for (size_t c = 0; c < ld; c++)
            if ((c < first || c >= first + width) && buf[r * ld + c] != 0xABCDu) touched++;
    printf("check %-66s: %zu elements written outside the columns, err %zu (tol 0) %s\n", what, touched, touched,
           touched ? "FAIL" : "ok");
    return touched == 0;
}

static inline bool ct_refused(const char *what, int rc) {
    const bool ok = rc == (int)cudaErrorInvalidValue;
    printf("check %-66s: %s\n", what, ok ? "refused ok" : "FAIL");
    return ok;
}

#endif
