/* backend/cuda/train_gemm_lt: the trainer's bf16-operand products through cuBLASLt: plans made once per shape, the
 * algorithm choice (heuristic, tune, tune file) and the call (see train_gemm_lt.h). */
#include "backend/cuda/train_gemm_lt.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "backend/cuda/cuda_check.h"

enum { TUNE_BURST = 3, TUNE_BURSTS = 5 }; /* per candidate: a warm-up burst, then the median of 5 bursts of 3 calls */
#define TUNE_FILE_MAGIC "xlkv-train-gemm-lt 1"
#define GEMM_EX_WORD "cublasGemmEx" /* a product line's algorithm when tune kept cublasGemmEx */

struct xlkv_train_gemm_lt {
    cublasLtHandle_t handle;
    cublasHandle_t blas; /* the caller's, for the products tune hands to cublasGemmEx (NULL: none) */
    cudaStream_t stream;
    void *workspace;
    size_t workspace_bytes;
    int n_plans;
    xlkv_train_gemm_plan *plans;
};

xlkv_train_gemm_shape xlkv_train_gemm_forward(int rows, int in, int out, int ldc, bool c_bf16) {
    return (xlkv_train_gemm_shape){.trans_a = true, .m = out, .n = rows, .k = in, .lda = in, .ldb = in, .ldc = ldc,
                                   .c_bf16 = c_bf16};
}
xlkv_train_gemm_shape xlkv_train_gemm_input_grad(int rows, int in, int out, int ld_dy, bool c_bf16, bool accumulate) {
    return (xlkv_train_gemm_shape){.m = in, .n = rows, .k = out, .lda = in, .ldb = ld_dy, .ldc = in, .c_bf16 = c_bf16,
                                   .accumulate = accumulate};
}
xlkv_train_gemm_shape xlkv_train_gemm_weight_grad(int rows, int in, int out, int ld_dy) {
    return (xlkv_train_gemm_shape){.trans_b = true, .m = in, .n = out, .k = rows, .lda = in, .ldb = ld_dy, .ldc = in,
                                   .accumulate = true};
}

bool xlkv_train_gemm_shape_equal(const xlkv_train_gemm_shape *a, const xlkv_train_gemm_shape *b) {
    return a->trans_a == b->trans_a && a->trans_b == b->trans_b && a->m == b->m && a->n == b->n && a->k == b->k &&
           a->lda == b->lda && a->ldb == b->ldb && a->ldc == b->ldc && a->c_bf16 == b->c_bf16 &&
           a->accumulate == b->accumulate;
}

void xlkv_train_gemm_shape_describe(const xlkv_train_gemm_shape *s, char *buf, size_t size) {
    snprintf(buf, size, "%d x %d x %d (A%s B%s, lda %d ldb %d ldc %d, C %s, beta %d)", s->m, s->n, s->k,
             s->trans_a ? "^T" : "", s->trans_b ? "^T" : "", s->lda, s->ldb, s->ldc, s->c_bf16 ? "bf16" : "fp32",
             s->accumulate ? 1 : 0);
}

/* column-major: a matrix of `cols` columns of stride ld */
size_t xlkv_train_gemm_shape_bytes_a(const xlkv_train_gemm_shape *s) {
    return (size_t)s->lda * (size_t)(s->trans_a ? s->m : s->k) * 2;
}
size_t xlkv_train_gemm_shape_bytes_b(const xlkv_train_gemm_shape *s) {
    return (size_t)s->ldb * (size_t)(s->trans_b ? s->k : s->n) * 2;
}
size_t xlkv_train_gemm_shape_bytes_c(const xlkv_train_gemm_shape *s) {
    return (size_t)s->ldc * (size_t)s->n * (s->c_bf16 ? 2 : 4);
}

static xlkv_status lt_fail(cublasStatus_t status, const char *call, const xlkv_train_gemm_shape *s) {
    char desc[160];
    xlkv_train_gemm_shape_describe(s, desc, sizeof desc);
    return xlkv_fail(status == CUBLAS_STATUS_ALLOC_FAILED ? XLKV_E_NOMEM : XLKV_E_BACKEND,
                     "cuBLASLt: %s for the product %s: %s (%s)", call, desc, cublasGetStatusName(status),
                     cublasGetStatusString(status));
}

#define LT_TRY(call, name, shape)                                                                                     \
    do {                                                                                                               \
        cublasStatus_t lt_status_ = (call);                                                                            \
        if (lt_status_ != CUBLAS_STATUS_SUCCESS) return lt_fail(lt_status_, (name), (shape));                          \
    } while (0)

/* The heuristic's answers (at most `want`, those that succeeded, in order) for `workspace_bytes`; element_align > 0:
 * only algorithms that work with pointers aligned to element_align bytes (A and B: 2) */
static cublasStatus_t ask_heuristic(cublasLtHandle_t lt, const xlkv_train_gemm_plan *p, size_t workspace_bytes,
                                    unsigned element_align, int want, cublasLtMatmulHeuristicResult_t *out,
                                    int *kept) {
    *kept = 0;
    cublasLtMatmulPreference_t pref = NULL;
    cublasStatus_t st = cublasLtMatmulPreferenceCreate(&pref);
    if (st != CUBLAS_STATUS_SUCCESS) return st;
    st = cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &workspace_bytes,
                                              sizeof workspace_bytes);
    if (element_align > 0) {
        const uint32_t ab = 2, cd = element_align;
        if (st == CUBLAS_STATUS_SUCCESS)
            st = cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &ab, sizeof ab);
        if (st == CUBLAS_STATUS_SUCCESS)
            st = cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &ab, sizeof ab);
        if (st == CUBLAS_STATUS_SUCCESS)
            st = cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &cd, sizeof cd);
        if (st == CUBLAS_STATUS_SUCCESS)
            st = cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &cd, sizeof cd);
    }
    int found = 0;
    if (st == CUBLAS_STATUS_SUCCESS)
        st = cublasLtMatmulAlgoGetHeuristic(lt, p->op, p->a, p->b, p->c, p->c, pref, want, out, &found);
    cublasLtMatmulPreferenceDestroy(pref);
    if (st != CUBLAS_STATUS_SUCCESS) return st;
    for (int i = 0; i < found; i++)
        if (out[i].state == CUBLAS_STATUS_SUCCESS) out[(*kept)++] = out[i];
    return CUBLAS_STATUS_SUCCESS;
}

xlkv_status xlkv_train_gemm_plan_init(cublasLtHandle_t lt, const xlkv_train_gemm_shape *s, size_t workspace_bytes,
                                      xlkv_train_gemm_plan *p) {
    memset(p, 0, sizeof *p);
    p->shape = *s;
    p->chosen_index = 0;
    if (s->m <= 0 || s->n <= 0 || s->k <= 0 || s->lda < (s->trans_a ? s->k : s->m) ||
        s->ldb < (s->trans_b ? s->n : s->k) || s->ldc < s->m) {
        char desc[160];
        xlkv_train_gemm_shape_describe(s, desc, sizeof desc);
        return xlkv_fail(XLKV_E_INVALID, "cuBLASLt plan: the product %s has a bad size or leading dimension", desc);
    }
    const cudaDataType_t c_type = s->c_bf16 ? CUDA_R_16BF : CUDA_R_32F;
    const cublasOperation_t op_a = s->trans_a ? CUBLAS_OP_T : CUBLAS_OP_N;
    const cublasOperation_t op_b = s->trans_b ? CUBLAS_OP_T : CUBLAS_OP_N;
    LT_TRY(cublasLtMatmulDescCreate(&p->op, CUBLAS_COMPUTE_32F, CUDA_R_32F), "cublasLtMatmulDescCreate", s);
    LT_TRY(cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_TRANSA, &op_a, sizeof op_a),
           "setting TRANSA", s);
    LT_TRY(cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_TRANSB, &op_b, sizeof op_b),
           "setting TRANSB", s);
    LT_TRY(cublasLtMatrixLayoutCreate(&p->a, CUDA_R_16BF, (uint64_t)(s->trans_a ? s->k : s->m),
                                      (uint64_t)(s->trans_a ? s->m : s->k), s->lda), "the A layout", s);
    LT_TRY(cublasLtMatrixLayoutCreate(&p->b, CUDA_R_16BF, (uint64_t)(s->trans_b ? s->n : s->k),
                                      (uint64_t)(s->trans_b ? s->k : s->n), s->ldb), "the B layout", s);
    LT_TRY(cublasLtMatrixLayoutCreate(&p->c, c_type, (uint64_t)s->m, (uint64_t)s->n, s->ldc), "the C layout", s);
    int kept = 0;
    LT_TRY(ask_heuristic(lt, p, workspace_bytes, 0, XLKV_TRAIN_GEMM_LT_CANDIDATES, p->candidates, &kept),
           "cublasLtMatmulAlgoGetHeuristic", s);
    p->n_candidates = kept;
    if (kept == 0) return lt_fail(CUBLAS_STATUS_NOT_SUPPORTED, "cublasLtMatmulAlgoGetHeuristic (no algorithm)", s);
    cublasLtMatmulHeuristicResult_t any;
    int any_found = 0;
    LT_TRY(ask_heuristic(lt, p, workspace_bytes, s->c_bf16 ? 2u : 4u, 1, &any, &any_found),
           "cublasLtMatmulAlgoGetHeuristic (unaligned pointers)", s);
    if (any_found == 0)
        return lt_fail(CUBLAS_STATUS_NOT_SUPPORTED, "cublasLtMatmulAlgoGetHeuristic (no algorithm for unaligned "
                       "pointers)", s);
    p->fallback = any.algo;
    p->chosen = p->candidates[0].algo;
    xlkv_train_gemm_plan_note_alignment(p);
    return XLKV_OK;
}

void xlkv_train_gemm_plan_note_alignment(xlkv_train_gemm_plan *p) {
    static const cublasLtMatmulAlgoCapAttributes_t caps[4] = {
        CUBLASLT_ALGO_CAP_MIN_ALIGNMENT_A_BYTES, CUBLASLT_ALGO_CAP_MIN_ALIGNMENT_B_BYTES,
        CUBLASLT_ALGO_CAP_MIN_ALIGNMENT_C_BYTES, CUBLASLT_ALGO_CAP_MIN_ALIGNMENT_D_BYTES};
    unsigned need[4];
    for (int i = 0; i < 4; i++) {
        uint32_t value = 0;
        size_t written = 0;
        need[i] = cublasLtMatmulAlgoCapGetAttribute(&p->chosen, caps[i], &value, sizeof value, &written) ==
                              CUBLAS_STATUS_SUCCESS && written == sizeof value && value > 0
                      ? value
                      : 256u;
    }
    p->chosen_align[0] = need[0];
    p->chosen_align[1] = need[1];
    p->chosen_align[2] = need[2] > need[3] ? need[2] : need[3];
}

void xlkv_train_gemm_plan_destroy(xlkv_train_gemm_plan *p) {
    if (p->c) cublasLtMatrixLayoutDestroy(p->c);
    if (p->b) cublasLtMatrixLayoutDestroy(p->b);
    if (p->a) cublasLtMatrixLayoutDestroy(p->a);
    if (p->op) cublasLtMatmulDescDestroy(p->op);
    memset(p, 0, sizeof *p);
}

cublasStatus_t xlkv_train_gemm_plan_matmul(cublasLtHandle_t lt, const xlkv_train_gemm_plan *p,
                                           const cublasLtMatmulAlgo_t *algo, float alpha, const void *a, const void *b,
                                           void *c, void *workspace, size_t workspace_bytes, cudaStream_t stream) {
    const float beta = p->shape.accumulate ? 1.0f : 0.0f;
    return cublasLtMatmul(lt, p->op, &alpha, a, p->a, b, p->b, &beta, c, p->c, c, p->c, algo, workspace,
                          workspace_bytes, stream);
}

static int compare_floats(const void *x, const void *y) {
    const float a = *(const float *)x, b = *(const float *)y;
    return (a > b) - (a < b);
}

cublasStatus_t xlkv_train_gemm_shape_gemm_ex(cublasHandle_t blas, const xlkv_train_gemm_shape *s, float alpha,
                                             const void *a, const void *b, void *c) {
    const float beta = s->accumulate ? 1.0f : 0.0f;
    return cublasGemmEx(blas, s->trans_a ? CUBLAS_OP_T : CUBLAS_OP_N, s->trans_b ? CUBLAS_OP_T : CUBLAS_OP_N, s->m, s->n,
                        s->k, &alpha, a, CUDA_R_16BF, s->lda, b, CUDA_R_16BF, s->ldb, &beta, c,
                        s->c_bf16 ? CUDA_R_16BF : CUDA_R_32F, s->ldc, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
}

static xlkv_status time_bursts(cublasLtHandle_t lt, cublasHandle_t blas, const xlkv_train_gemm_plan *p,
                               const cublasLtMatmulAlgo_t *algo, float alpha, const void *a, const void *b, void *c,
                               void *workspace, size_t workspace_bytes, cudaStream_t stream, int burst, int bursts,
                               float *ms);

xlkv_status xlkv_train_gemm_plan_time(cublasLtHandle_t lt, const xlkv_train_gemm_plan *p,
                                      const cublasLtMatmulAlgo_t *algo, float alpha, const void *a, const void *b,
                                      void *c, void *workspace, size_t workspace_bytes, cudaStream_t stream, int burst,
                                      int bursts, float *ms) {
    return time_bursts(lt, NULL, p, algo, alpha, a, b, c, workspace, workspace_bytes, stream, burst, bursts, ms);
}

/* algo NULL: cublasGemmEx on blas (bound to `stream` by its owner) */
static xlkv_status time_bursts(cublasLtHandle_t lt, cublasHandle_t blas, const xlkv_train_gemm_plan *p,
                               const cublasLtMatmulAlgo_t *algo, float alpha, const void *a, const void *b, void *c,
                               void *workspace, size_t workspace_bytes, cudaStream_t stream, int burst, int bursts,
                               float *ms) {
    if (burst < 1 || bursts < 1 || bursts > 64)
        return xlkv_fail(XLKV_E_INVALID, "cuBLASLt timing: burst %d, bursts %d (1..64)", burst, bursts);
    cudaEvent_t start = NULL, stop = NULL;
    XLKV_CUDA_TRY(cudaEventCreate(&start), "creating a timing event");
    cudaError_t err = cudaEventCreate(&stop);
    if (err != cudaSuccess) {
        cudaEventDestroy(start);
        return xlkv_cuda_fail(err, "creating a timing event");
    }
    float samples[64];
    xlkv_status status = XLKV_OK;
    for (int r = 0; r <= bursts && status == XLKV_OK; r++) { /* r = 0: warm-up */
        err = cudaEventRecord(start, stream);
        for (int i = 0; i < burst && err == cudaSuccess && status == XLKV_OK; i++) {
            cublasStatus_t st = algo ? xlkv_train_gemm_plan_matmul(lt, p, algo, alpha, a, b, c, workspace,
                                                                   workspace_bytes, stream)
                                     : xlkv_train_gemm_shape_gemm_ex(blas, &p->shape, alpha, a, b, c);
            if (st != CUBLAS_STATUS_SUCCESS)
                status = lt_fail(st, algo ? "cublasLtMatmul (timing)" : "cublasGemmEx (timing)", &p->shape);
        }
        if (status != XLKV_OK) break;
        if (err == cudaSuccess) err = cudaEventRecord(stop, stream);
        if (err == cudaSuccess) err = cudaEventSynchronize(stop);
        float elapsed = 0.0f;
        if (err == cudaSuccess) err = cudaEventElapsedTime(&elapsed, start, stop);
        if (err != cudaSuccess) status = xlkv_cuda_fail(err, "timing a cuBLASLt product");
        else if (r > 0) samples[r - 1] = elapsed / (float)burst;
    }
    cudaEventDestroy(start);
    cudaEventDestroy(stop);
    if (status != XLKV_OK) return status;
    qsort(samples, (size_t)bursts, sizeof samples[0], compare_floats);
    *ms = samples[bursts / 2];
    return XLKV_OK;
}

xlkv_status xlkv_train_gemm_lt_parse(const char *value, xlkv_train_gemm_lt_mode *mode, const char **file) {
    *mode = XLKV_TRAIN_GEMM_LT_OFF;
    *file = NULL;
    if (!value || !*value) return XLKV_OK;
    if (!strcmp(value, "heuristic")) *mode = XLKV_TRAIN_GEMM_LT_HEURISTIC;
    else if (!strcmp(value, "tune")) *mode = XLKV_TRAIN_GEMM_LT_TUNE;
    else if (!strncmp(value, "tune=", 5) && value[5]) {
        *mode = XLKV_TRAIN_GEMM_LT_TUNE;
        *file = value + 5;
    } else
        return xlkv_fail(XLKV_E_INVALID, "XLKV_TRAIN_GEMM_LT=%s: expected heuristic, tune or tune=FILE (unset: "
                         "cublasGemmEx)", value);
    return XLKV_OK;
}

/* ---- tune: time every candidate once, keep the fastest --------------------------------------------------------- */
static xlkv_status tune_plans(xlkv_train_gemm_lt *lt) {
    size_t bytes_a = 0, bytes_b = 0, bytes_c = 0;
    for (int i = 0; i < lt->n_plans; i++) {
        const xlkv_train_gemm_shape *s = &lt->plans[i].shape;
        if (xlkv_train_gemm_shape_bytes_a(s) > bytes_a) bytes_a = xlkv_train_gemm_shape_bytes_a(s);
        if (xlkv_train_gemm_shape_bytes_b(s) > bytes_b) bytes_b = xlkv_train_gemm_shape_bytes_b(s);
        if (xlkv_train_gemm_shape_bytes_c(s) > bytes_c) bytes_c = xlkv_train_gemm_shape_bytes_c(s);
    }
    /* B and C start on 256-byte boundaries, as the candidates assume (an H200 run without this padding, on a tiny
     * model's odd sizes, had every candidate refuse its misaligned operands) */
    bytes_a = (bytes_a + 255) / 256 * 256;
    bytes_b = (bytes_b + 255) / 256 * 256;
    void *buffer = NULL;
    XLKV_TRY(xlkv_cuda_alloc(&buffer, bytes_a + bytes_b + bytes_c,
                             "the operands for timing cuBLASLt's algorithms (XLKV_TRAIN_GEMM_LT=tune)"));
    char *a = buffer, *b = a + bytes_a, *c = b + bytes_b;
    /* 0x3C3C: about 0.0115 in bf16 and in fp32; values matter little to the speed, but not zeros */
    cudaError_t err = cudaMemsetAsync(buffer, 0x3C, bytes_a + bytes_b + bytes_c, lt->stream);
    xlkv_status status = err == cudaSuccess ? XLKV_OK : xlkv_cuda_fail(err, "filling the tuning operands");
    for (int i = 0; i < lt->n_plans && status == XLKV_OK; i++) {
        xlkv_train_gemm_plan *p = &lt->plans[i];
        float best = -1.0f;
        for (int j = 0; j < p->n_candidates && status == XLKV_OK; j++) {
            float ms = 0.0f;
            xlkv_status timed = xlkv_train_gemm_plan_time(lt->handle, p, &p->candidates[j].algo, 1.0f, a, b, c,
                                                          lt->workspace, lt->workspace_bytes, lt->stream, TUNE_BURST,
                                                          TUNE_BURSTS, &ms);
            if (timed != XLKV_OK) { /* a candidate the library then refuses is skipped; a CUDA failure is not */
                if (timed != XLKV_E_BACKEND) status = timed;
                continue;
            }
            if (best < 0.0f || ms < best) {
                best = ms;
                p->chosen = p->candidates[j].algo;
                p->chosen_index = j;
            }
        }
        xlkv_train_gemm_plan_note_alignment(p);
        p->untimed = best < 0.0f;
        if (p->untimed) { /* none ran on the tuning operands: keep the heuristic's first, as `heuristic` does */
            p->chosen = p->candidates[0].algo;
            p->chosen_index = 0;
        } else if (lt->blas && status == XLKV_OK) { /* cublasGemmEx, the 17th candidate: kept where it is faster */
            float ms = 0.0f;
            if (time_bursts(lt->handle, lt->blas, p, NULL, 1.0f, a, b, c, lt->workspace, lt->workspace_bytes,
                            lt->stream, TUNE_BURST, TUNE_BURSTS, &ms) == XLKV_OK &&
                ms < best)
                p->use_gemm_ex = true;
        }
    }
    cudaError_t sync = cudaStreamSynchronize(lt->stream);
    cudaFree(buffer);
    if (status == XLKV_OK && sync != cudaSuccess) status = xlkv_cuda_fail(sync, "tuning the cuBLASLt products");
    return status;
}

/* ---- the tune file: a header (format, cuBLASLt version, device) and one line per product ------------------------ */
static xlkv_status device_name(char *name, size_t size) {
    int device = 0;
    struct cudaDeviceProp prop;
    XLKV_CUDA_TRY(cudaGetDevice(&device), "asking for the current device");
    XLKV_CUDA_TRY(cudaGetDeviceProperties(&prop, device), "asking for the device's properties");
    snprintf(name, size, "%s sm_%d%d %d SMs", prop.name, prop.major, prop.minor, prop.multiProcessorCount);
    return XLKV_OK;
}

static xlkv_status write_tune_file(const xlkv_train_gemm_lt *lt, const char *path) {
    char device[320], tmp[4096];
    XLKV_TRY(device_name(device, sizeof device));
    snprintf(tmp, sizeof tmp, "%s.tmp.%ld", path, (long)getpid());
    FILE *f = fopen(tmp, "w");
    if (!f) return xlkv_fail(XLKV_E_IO, "XLKV_TRAIN_GEMM_LT=tune=%s: cannot write %s", path, tmp);
    fprintf(f, "%s\ncublaslt %zu\ndevice %s\n", TUNE_FILE_MAGIC, cublasLtGetVersion(), device);
    for (int i = 0; i < lt->n_plans; i++) {
        const xlkv_train_gemm_plan *p = &lt->plans[i];
        const xlkv_train_gemm_shape *s = &p->shape;
        fprintf(f, "product %d %d %d %d %d %d %d %d %d %d algo", s->trans_a, s->trans_b, s->m, s->n, s->k, s->lda,
                s->ldb, s->ldc, s->c_bf16, s->accumulate);
        if (p->use_gemm_ex) fprintf(f, " " GEMM_EX_WORD);
        else
            for (int w = 0; w < 8; w++) fprintf(f, " %016llx", (unsigned long long)p->chosen.data[w]);
        fprintf(f, "\n");
    }
    const bool ok = !ferror(f);
    if (fclose(f) != 0 || !ok || rename(tmp, path) != 0) {
        remove(tmp);
        return xlkv_fail(XLKV_E_IO, "XLKV_TRAIN_GEMM_LT=tune=%s: cannot write the file", path);
    }
    return XLKV_OK;
}

static xlkv_status bad_file(const char *path, int line, const char *why) {
    return xlkv_fail(XLKV_E_FORMAT, "XLKV_TRAIN_GEMM_LT=tune=%s, line %d: %s (delete the file to tune again)", path,
                     line, why);
}

static xlkv_status read_tune_file(xlkv_train_gemm_lt *lt, const char *path, FILE *f) {
    char line[1024], device[320], want[400];
    XLKV_TRY(device_name(device, sizeof device));
    bool *seen = calloc((size_t)lt->n_plans, sizeof *seen);
    if (!seen) return xlkv_fail(XLKV_E_NOMEM, "reading %s: out of host memory", path);
    xlkv_status status = XLKV_OK;
    int number = 0;
    while (status == XLKV_OK && fgets(line, sizeof line, f)) {
        number++;
        line[strcspn(line, "\r\n")] = 0;
        if (number == 1) {
            if (strcmp(line, TUNE_FILE_MAGIC)) status = bad_file(path, number, "not a tune file of this format");
            continue;
        }
        if (number == 2) {
            snprintf(want, sizeof want, "cublaslt %zu", cublasLtGetVersion());
            if (strcmp(line, want)) status = bad_file(path, number, "written with another cuBLASLt version");
            continue;
        }
        if (number == 3) {
            snprintf(want, sizeof want, "device %s", device);
            if (strcmp(line, want)) status = bad_file(path, number, "written on another GPU");
            continue;
        }
        int v[10], used = 0, used_ex = 0;
        unsigned long long data[8] = {0};
        const bool gemm_ex =
            sscanf(line, "product %d %d %d %d %d %d %d %d %d %d algo " GEMM_EX_WORD "%n", &v[0], &v[1], &v[2], &v[3],
                   &v[4], &v[5], &v[6], &v[7], &v[8], &v[9], &used_ex) == 10 &&
            used_ex > 0 && line[used_ex] == 0;
        if (!gemm_ex &&
            (sscanf(line, "product %d %d %d %d %d %d %d %d %d %d algo %llx %llx %llx %llx %llx %llx %llx %llx%n",
                    &v[0], &v[1], &v[2], &v[3], &v[4], &v[5], &v[6], &v[7], &v[8], &v[9], &data[0], &data[1],
                    &data[2], &data[3], &data[4], &data[5], &data[6], &data[7], &used) != 18 ||
             line[used] != 0)) {
            status = bad_file(path, number, "malformed product line");
            break;
        }
        if (gemm_ex && !lt->blas) {
            status = bad_file(path, number, "cublasGemmEx named, and no cuBLAS handle given");
            break;
        }
        const xlkv_train_gemm_shape s = {.trans_a = v[0] != 0, .trans_b = v[1] != 0, .m = v[2], .n = v[3], .k = v[4],
                                         .lda = v[5], .ldb = v[6], .ldc = v[7], .c_bf16 = v[8] != 0,
                                         .accumulate = v[9] != 0};
        int found = -1;
        for (int i = 0; i < lt->n_plans; i++)
            if (xlkv_train_gemm_shape_equal(&lt->plans[i].shape, &s)) found = i;
        if (found < 0) {
            status = bad_file(path, number, "a product this run does not have (another model, batch or path)");
            break;
        }
        if (seen[found]) {
            status = bad_file(path, number, "a product listed twice");
            break;
        }
        seen[found] = true;
        xlkv_train_gemm_plan *p = &lt->plans[found];
        p->use_gemm_ex = gemm_ex;
        p->chosen_index = -1;
        if (gemm_ex) continue; /* chosen stays the heuristic's first, unused */
        for (int w = 0; w < 8; w++) p->chosen.data[w] = (uint64_t)data[w];
        cublasLtMatmulHeuristicResult_t check;
        cublasStatus_t st = cublasLtMatmulAlgoCheck(lt->handle, p->op, p->a, p->b, p->c, p->c, &p->chosen, &check);
        if (st != CUBLAS_STATUS_SUCCESS || check.workspaceSize > lt->workspace_bytes)
            status = bad_file(path, number, "the library refuses this algorithm for its product");
        for (int i = 0; i < p->n_candidates; i++)
            if (!memcmp(&p->candidates[i].algo, &p->chosen, sizeof p->chosen)) p->chosen_index = i;
        xlkv_train_gemm_plan_note_alignment(p);
    }
    if (status == XLKV_OK && ferror(f)) status = bad_file(path, number, "read error");
    if (status == XLKV_OK && number < 3) status = bad_file(path, number, "truncated header");
    for (int i = 0; i < lt->n_plans && status == XLKV_OK; i++)
        if (!seen[i]) {
            char desc[160];
            xlkv_train_gemm_shape_describe(&lt->plans[i].shape, desc, sizeof desc);
            snprintf(want, sizeof want, "no line for this run's product %s", desc);
            status = bad_file(path, number, want);
        }
    free(seen);
    return status;
}

/* ---- the object -------------------------------------------------------------------------------------------------- */
xlkv_status xlkv_train_gemm_lt_create(const xlkv_train_gemm_shape *shapes, int n, xlkv_train_gemm_lt_mode mode,
                                      const char *tune_file, void *workspace, size_t workspace_bytes,
                                      cudaStream_t stream, cublasHandle_t blas, xlkv_train_gemm_lt **out) {
    *out = NULL;
    if (mode == XLKV_TRAIN_GEMM_LT_OFF || n < 1)
        return xlkv_fail(XLKV_E_INVALID, "cuBLASLt products: nothing to plan (mode off or no product)");
    xlkv_train_gemm_lt *lt = calloc(1, sizeof *lt);
    if (lt) lt->plans = calloc((size_t)n, sizeof *lt->plans);
    if (!lt || !lt->plans) {
        free(lt);
        return xlkv_fail(XLKV_E_NOMEM, "cuBLASLt products: out of host memory");
    }
    lt->stream = stream;
    lt->blas = blas;
    lt->workspace = workspace;
    lt->workspace_bytes = workspace_bytes;
    xlkv_status status = XLKV_OK;
    cublasStatus_t st = cublasLtCreate(&lt->handle);
    if (st != CUBLAS_STATUS_SUCCESS) {
        lt->handle = NULL;
        status = xlkv_cublas_fail(st, "creating the cuBLASLt handle");
    }
    for (int i = 0; i < n && status == XLKV_OK; i++) {
        bool duplicate = false;
        for (int j = 0; j < lt->n_plans; j++) duplicate |= xlkv_train_gemm_shape_equal(&lt->plans[j].shape, &shapes[i]);
        if (duplicate) continue;
        status = xlkv_train_gemm_plan_init(lt->handle, &shapes[i], workspace_bytes, &lt->plans[lt->n_plans]);
        lt->n_plans++; /* destroyed by free even when init failed half-way */
    }
    if (status == XLKV_OK && mode == XLKV_TRAIN_GEMM_LT_TUNE) {
        FILE *f = tune_file ? fopen(tune_file, "r") : NULL;
        if (f) {
            status = read_tune_file(lt, tune_file, f);
            fclose(f);
        } else {
            status = tune_plans(lt);
            if (status == XLKV_OK && tune_file) status = write_tune_file(lt, tune_file);
        }
    }
    if (status != XLKV_OK) {
        xlkv_train_gemm_lt_free(lt);
        return status;
    }
    *out = lt;
    return XLKV_OK;
}

void xlkv_train_gemm_lt_free(xlkv_train_gemm_lt *lt) {
    if (!lt) return;
    for (int i = 0; i < lt->n_plans; i++) xlkv_train_gemm_plan_destroy(&lt->plans[i]);
    free(lt->plans);
    if (lt->handle) cublasLtDestroy(lt->handle);
    free(lt);
}

/* the largest power of two (at most 256) that divides the address */
static unsigned alignment_of(const void *ptr) {
    const uintptr_t address = (uintptr_t)ptr;
    unsigned align = 1;
    while (align < 256 && !(address & align)) align <<= 1;
    return align;
}

xlkv_status xlkv_train_gemm_lt_run(xlkv_train_gemm_lt *lt, const xlkv_train_gemm_shape *shape, float alpha,
                                   const void *a, const void *b, void *c, const char *what) {
    for (int i = 0; i < lt->n_plans; i++) {
        const xlkv_train_gemm_plan *p = &lt->plans[i];
        if (!xlkv_train_gemm_shape_equal(&p->shape, shape)) continue;
        if (p->use_gemm_ex) {
            const cublasStatus_t st = xlkv_train_gemm_shape_gemm_ex(lt->blas, shape, alpha, a, b, c);
            if (st == CUBLAS_STATUS_SUCCESS) return XLKV_OK;
            return xlkv_cublas_fail(st, what);
        }
        const bool aligned = alignment_of(a) >= p->chosen_align[0] && alignment_of(b) >= p->chosen_align[1] &&
                             alignment_of(c) >= p->chosen_align[2];
        cublasStatus_t st = xlkv_train_gemm_plan_matmul(lt->handle, p, aligned ? &p->chosen : &p->fallback, alpha, a,
                                                        b, c, lt->workspace, lt->workspace_bytes, lt->stream);
        if (st == CUBLAS_STATUS_SUCCESS) return XLKV_OK;
        char desc[160];
        xlkv_train_gemm_shape_describe(shape, desc, sizeof desc);
        return xlkv_fail(XLKV_E_BACKEND, "cuBLASLt: %s, product %s: cublasLtMatmul failed: %s (%s)", what, desc,
                         cublasGetStatusName(st), cublasGetStatusString(st));
    }
    char desc[160];
    xlkv_train_gemm_shape_describe(shape, desc, sizeof desc);
    return xlkv_fail(XLKV_E_BACKEND, "cuBLASLt: %s: the product %s was not planned at trainer creation", what, desc);
}

int xlkv_train_gemm_lt_count(const xlkv_train_gemm_lt *lt) { return lt->n_plans; }

int xlkv_train_gemm_lt_gemm_ex_count(const xlkv_train_gemm_lt *lt) {
    int n = 0;
    for (int i = 0; i < lt->n_plans; i++) n += lt->plans[i].use_gemm_ex;
    return n;
}

int xlkv_train_gemm_lt_untimed(const xlkv_train_gemm_lt *lt) {
    int n = 0;
    for (int i = 0; i < lt->n_plans; i++) n += lt->plans[i].untimed;
    return n;
}
const xlkv_train_gemm_plan *xlkv_train_gemm_lt_plan(const xlkv_train_gemm_lt *lt, int i) { return &lt->plans[i]; }
