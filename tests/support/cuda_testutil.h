/* tests/support/cuda_testutil: the checks the CUDA tests share (tests/cuda/, label cuda). Include after
 * <cuda_runtime_api.h> and testutil.h (fail_msg).
 *   CK(call)          a CUDA runtime call that must return cudaSuccess
 *   CK_LAUNCH(call)   a kernel launcher (0 or a cudaError_t), then a synchronize that surfaces asynchronous errors */
#ifndef XLKV_TESTS_CUDA_TESTUTIL_H
#define XLKV_TESTS_CUDA_TESTUTIL_H

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

#endif
