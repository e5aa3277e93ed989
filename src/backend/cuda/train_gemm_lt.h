/* backend/cuda/train_gemm_lt: the GPU trainer's bf16-operand products through cuBLASLt (XLKV_TRAIN_GEMM_LT).
 *
 * Owns the cuBLASLt side of the trainer's products: one plan per distinct product shape (matmul descriptor, the A / B
 * / C layouts and the heuristic's top XLKV_TRAIN_GEMM_LT_CANDIDATES algorithms, all made once, at creation), the
 * choice of algorithm per plan (the heuristic's first, or the fastest of the candidates timed once: "tune"), the
 * tune file that records / replays those choices, and the call itself. Never a descriptor per call.
 *
 * A product, column-major as cuBLAS: C[m, n] = alpha op(A) op(B) + beta C, A and B bf16, C bf16 or fp32, fp32
 * accumulation (CUBLAS_COMPUTE_32F), alpha and beta host floats given per call (beta 0 or 1, part of the shape).
 *
 * Modes (XLKV_TRAIN_GEMM_LT, read at trainer creation):
 *   unset / empty: the trainer keeps cublasGemmEx (this module is not used);
 *   heuristic: cublasLtMatmul with the heuristic's first algorithm (deterministic on one GPU and library);
 *   tune: every plan's candidates, and cublasGemmEx, are timed once at creation (a warm-up burst, median of 5
 *         bursts of 3 calls) and the fastest kept (cublasGemmEx where it wins: the faster of the two libraries per
 *         product); the bits then depend on which algorithm won (another run may pick another: summation
 *         order differs). A plan none of whose candidates runs on the tuning operands keeps the heuristic's first
 *         (counted by xlkv_train_gemm_lt_untimed) rather than failing the trainer;
 *   tune=FILE: as tune, and the choices are written to FILE; when FILE exists the choices are read from it instead
 *         (no timing; a product's line names the algorithm's 64 bytes or cublasGemmEx), so that a run and its --resume, or two runs, use the same algorithms and give the same bytes.
 *         A FILE that is unreadable, malformed, from another cuBLASLt version or GPU, lacks a product of this run or
 *         lists one this run does not have, or names an algorithm the library refuses for its shape, is refused with
 *         the reason (never silently re-tuned: delete it to tune again). */
#ifndef XLKV_BACKEND_CUDA_TRAIN_GEMM_LT_H
#define XLKV_BACKEND_CUDA_TRAIN_GEMM_LT_H

#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <stdbool.h>
#include <stddef.h>

#include "core/status.h"

enum { XLKV_TRAIN_GEMM_LT_CANDIDATES = 16 };

/* one product's shape (everything but the pointers and alpha) */
typedef struct xlkv_train_gemm_shape {
    bool trans_a, trans_b;
    int m, n, k, lda, ldb, ldc;
    bool c_bf16;     /* C (and D) in bf16, else fp32 */
    bool accumulate; /* beta 1, else beta 0 */
} xlkv_train_gemm_shape;

/* The trainer's three kinds of layer product, row-major y[rows, out] = x[rows, in] . w[out, in]^T:
 *   forward y = x W^T (m = out, n = rows, k = in; C row stride ldc);
 *   input gradient dX = dY W (m = in, n = rows, k = out; dY row stride ld_dy), beta 0 or 1;
 *   weight gradient dW += dY^T X (m = in, n = out, k = rows), fp32 C, beta 1. */
xlkv_train_gemm_shape xlkv_train_gemm_forward(int rows, int in, int out, int ldc, bool c_bf16);
xlkv_train_gemm_shape xlkv_train_gemm_input_grad(int rows, int in, int out, int ld_dy, bool c_bf16, bool accumulate);
xlkv_train_gemm_shape xlkv_train_gemm_weight_grad(int rows, int in, int out, int ld_dy);

bool xlkv_train_gemm_shape_equal(const xlkv_train_gemm_shape *a, const xlkv_train_gemm_shape *b);
/* "m x n x k (A^T B, lda .. ldb .. ldc .., C bf16, beta 0)" into buf */
void xlkv_train_gemm_shape_describe(const xlkv_train_gemm_shape *s, char *buf, size_t size);
/* bytes of A, B and C */
size_t xlkv_train_gemm_shape_bytes_a(const xlkv_train_gemm_shape *s);
size_t xlkv_train_gemm_shape_bytes_b(const xlkv_train_gemm_shape *s);
size_t xlkv_train_gemm_shape_bytes_c(const xlkv_train_gemm_shape *s);

/* One shape's descriptors and candidates (the bench uses plans directly). */
typedef struct xlkv_train_gemm_plan {
    xlkv_train_gemm_shape shape;
    cublasLtMatmulDesc_t op;
    cublasLtMatrixLayout_t a, b, c;
    int n_candidates; /* the heuristic's answers, best first (at most XLKV_TRAIN_GEMM_LT_CANDIDATES, at least 1) */
    cublasLtMatmulHeuristicResult_t candidates[XLKV_TRAIN_GEMM_LT_CANDIDATES];
    cublasLtMatmulAlgo_t chosen; /* what xlkv_train_gemm_lt_run uses */
    int chosen_index;            /* its candidate index; -1: read from a tune file */
    bool untimed;                /* tune: no candidate ran on the tuning operands; the heuristic's first is kept */
    bool use_gemm_ex;            /* tune: cublasGemmEx beat every candidate (it may take a kernel outside the top 16:
                                  * on an H200 the classifier's dX ran 0.98 ms through it, 1.15 through the best of 16) */
    unsigned chosen_align[3];    /* the pointer alignment (bytes) `chosen` needs for A, B and C / D */
    /* The heuristic's first algorithm for pointers aligned only to their element size: xlkv_train_gemm_lt_run takes
     * it for a call whose pointers are less aligned than `chosen` needs (never for `small`, whose tensors all sit on
     * 256-byte boundaries; tiny test models have odd offsets). Fixed per call site, so still deterministic. */
    cublasLtMatmulAlgo_t fallback;
} xlkv_train_gemm_plan;

/* after changing plan->chosen: its alignment needs (cuBLASLt's capability attributes; 256 where not reported) */
void xlkv_train_gemm_plan_note_alignment(xlkv_train_gemm_plan *plan);

/* The same product through cublasGemmEx (CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT) on `blas` (its stream and
 * workspace): the trainer's default path, and the tuner's 17th candidate. */
cublasStatus_t xlkv_train_gemm_shape_gemm_ex(cublasHandle_t blas, const xlkv_train_gemm_shape *s, float alpha,
                                             const void *a, const void *b, void *c);

/* Descriptors and the heuristic's candidates for `workspace_bytes` of workspace; chosen = candidate 0. */
xlkv_status xlkv_train_gemm_plan_init(cublasLtHandle_t lt, const xlkv_train_gemm_shape *shape, size_t workspace_bytes,
                                      xlkv_train_gemm_plan *plan);
void xlkv_train_gemm_plan_destroy(xlkv_train_gemm_plan *plan);
/* One cublasLtMatmul with `algo` (D = C in place). The status is cuBLAS's; the caller names the failure. */
cublasStatus_t xlkv_train_gemm_plan_matmul(cublasLtHandle_t lt, const xlkv_train_gemm_plan *plan,
                                           const cublasLtMatmulAlgo_t *algo, float alpha, const void *a, const void *b,
                                           void *c, void *workspace, size_t workspace_bytes, cudaStream_t stream);
/* Median ms per call of `algo` over `bursts` bursts of `burst` calls (after one warm-up burst), or an error naming
 * the shape and cuBLAS's status (the tuner skips such candidates). */
xlkv_status xlkv_train_gemm_plan_time(cublasLtHandle_t lt, const xlkv_train_gemm_plan *plan,
                                      const cublasLtMatmulAlgo_t *algo, float alpha, const void *a, const void *b,
                                      void *c, void *workspace, size_t workspace_bytes, cudaStream_t stream, int burst,
                                      int bursts, float *ms);

typedef enum { XLKV_TRAIN_GEMM_LT_OFF, XLKV_TRAIN_GEMM_LT_HEURISTIC, XLKV_TRAIN_GEMM_LT_TUNE } xlkv_train_gemm_lt_mode;

/* Parses XLKV_TRAIN_GEMM_LT's value (NULL or "" = off); *file points into `value` (tune=FILE) or is NULL. */
xlkv_status xlkv_train_gemm_lt_parse(const char *value, xlkv_train_gemm_lt_mode *mode, const char **file);

typedef struct xlkv_train_gemm_lt xlkv_train_gemm_lt;

/* Plans for the n shapes (duplicates merged) and their choice by `mode` (not OFF); tune times on buffers of its own,
 * freed before it returns. The workspace is the caller's (it outlives the object) and is used on `stream`; `blas`
 * (the caller's, bound to the same stream and workspace; NULL: cublasGemmEx is never a candidate) runs the products
 * that tune hands to cublasGemmEx. */
xlkv_status xlkv_train_gemm_lt_create(const xlkv_train_gemm_shape *shapes, int n, xlkv_train_gemm_lt_mode mode,
                                      const char *tune_file, void *workspace, size_t workspace_bytes,
                                      cudaStream_t stream, cublasHandle_t blas, xlkv_train_gemm_lt **out);
/* plans that tune handed to cublasGemmEx */
int xlkv_train_gemm_lt_gemm_ex_count(const xlkv_train_gemm_lt *lt);
void xlkv_train_gemm_lt_free(xlkv_train_gemm_lt *lt);
/* C = alpha op(A) op(B) + beta C with the plan of `shape` (beta is shape->accumulate); `what` names the product in
 * errors. A shape that was not planned at creation is an error naming it. */
xlkv_status xlkv_train_gemm_lt_run(xlkv_train_gemm_lt *lt, const xlkv_train_gemm_shape *shape, float alpha,
                                   const void *a, const void *b, void *c, const char *what);
/* number of plans, and plan i (for reports) */
int xlkv_train_gemm_lt_count(const xlkv_train_gemm_lt *lt);
/* plans whose tuning ran no candidate and kept the heuristic's first (0 outside tune, and for a tune file) */
int xlkv_train_gemm_lt_untimed(const xlkv_train_gemm_lt *lt);
const xlkv_train_gemm_plan *xlkv_train_gemm_lt_plan(const xlkv_train_gemm_lt *lt, int i);

#endif
