/* bench/bench_train_gemm: the CUDA trainer's products (backend/cuda/train_gpu.c, bf16 operands, fused layer passes
 * and fused cross-entropy: the default path) on the `small` training step by default: 12 layers, dim 768, 12/6 heads
 * of 64, SwiGLU hidden 2048, vocab 32000, batch 16 x seq 1024 = 16,384 rows, standard map (every layer a KV layer,
 * [wq; wk; wv] and [w_gate; w_up] adjacent).
 *
 * Every distinct product of the step (exact shapes, transposes, C type and beta, as train_gpu.c calls them; column-
 * major as cuBLAS, C[m, n] = alpha op(A) op(B) + beta C, A / B bf16, fp32 accumulation) is timed with CUDA events
 * (median of 7 bursts of 10 calls, after a warm-up burst) with
 *   (a) cublasGemmEx, CUBLAS_GEMM_DEFAULT, a 32 MiB workspace: what the trainer calls today;
 *   (b) cublasLtMatmul with the heuristic's first algorithm (XLKV_TRAIN_GEMM_LT=heuristic);
 *   (c) each of the heuristic's top 16 algorithms (the same workspace size; XLKV_TRAIN_GEMM_LT=tune keeps the best).
 * Printed per product: calls per step, TFLOP/s of (a), (b) and the best of (c) with its index and its gain over (a),
 * and the largest difference of (b) and best-(c) from (a), relative to the largest |(a)| (bf16 operands, fp32
 * accumulation: only the order of the sums differs; products of more than 64M outputs are compared on their first
 * and last 32M). Then the per-step totals (calls x ms) of (a), (b), best-of-(c), and the faster of (a) and
 * best-(c) per product (what XLKV_TRAIN_GEMM_LT=tune keeps). With --all, every candidate's
 * time is printed too.
 *
 * One JSON line per product and one for the totals go to --out (default bench/results/train_gemm.jsonl), with the
 * commit (XLKV_COMMIT, as bench_train_gpu) and the device.
 *
 * --unfused lists the products of XLKV_TRAIN_FUSE=0 instead (fp32 C, separate q / k / v and gate / up products,
 * dX with beta 1).
 *
 * Usage: bench_train_gemm [--rows N] [--layers L] [--dim D] [--hidden H] [--heads QH] [--kv-heads KVH]
 *                         [--head-dim HD] [--vocab V] [--all] [--unfused] [--out FILE]
 * Not a test; without CUDA it says so and exits 0. */
#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifdef XLKV_HAVE_CUDA
#include <cjson/cJSON.h>
#include <cublas_v2.h>
#include <cuda_runtime.h>

#define BENCH_NAME "bench_train_gemm"
#include "backend/cuda/train_gemm_lt.h"
#include "bench_cuda_common.h"
#include "bench_json_line.h"
#include "core/status.h"

enum { BURST = 10, BURSTS = 7, MAX_PRODUCTS = 32, COMPARE_HALF = 32 << 20 };
static const size_t WORKSPACE_BYTES = (size_t)32 << 20; /* the trainer's */

typedef struct product {
    const char *name;
    int calls; /* per step */
    float alpha;
    xlkv_train_gemm_shape shape;
} product;

typedef struct options {
    int rows, layers, dim, hidden, heads, kv_heads, head_dim, vocab;
    bool all, unfused;
    const char *out;
} options;

static void die(const char *what, const char *detail) {
    fprintf(stderr, "bench_train_gemm: %s: %s\n", what, detail);
    exit(1);
}
static void check_blas(cublasStatus_t st, const char *what) {
    if (st != CUBLAS_STATUS_SUCCESS) die(what, cublasGetStatusName(st));
}
static void check_status(xlkv_status st) {
    if (st != XLKV_OK) die("cuBLASLt", xlkv_last_error());
}

/* The fused default path of train_gpu.c, standard map (layer_forward's fused branch, layer_backward_fused,
 * classifier_forward_fused / classifier_backward_fused). */
static int list_products(const options *o, product *p) {
    const int N = o->rows, L = o->layers, dim = o->dim, hid = o->hidden;
    const int q = o->heads * o->head_dim, kv = o->kv_heads * o->head_dim, qkv = q + 2 * kv;
    const float s = 1.0f / (float)N; /* the classifier's alpha: loss_scale / N */
    int n = 0;
#define P(name, calls, alpha, shape) p[n++] = (product){(name), (calls), (alpha), (shape)}
    P("fwd q (fp32 out)", L, 1.0f, xlkv_train_gemm_forward(N, dim, q, q, false));
    P("fwd k, v (fp32 out)", 2 * L, 1.0f, xlkv_train_gemm_forward(N, dim, kv, kv, false));
    P("fwd o (bf16 out)", L, 1.0f, xlkv_train_gemm_forward(N, q, dim, dim, true));
    P("fwd gate|up (bf16 out)", L, 1.0f, xlkv_train_gemm_forward(N, dim, 2 * hid, 2 * hid, true));
    P("fwd down (bf16 out)", L, 1.0f, xlkv_train_gemm_forward(N, hid, dim, dim, true));
    P("dX down (bf16 out)", L, 1.0f, xlkv_train_gemm_input_grad(N, hid, dim, dim, true, false));
    P("dW down", L, 1.0f, xlkv_train_gemm_weight_grad(N, hid, dim, dim));
    P("dX gate|up (bf16 out)", L, 1.0f, xlkv_train_gemm_input_grad(N, dim, 2 * hid, 2 * hid, true, false));
    P("dW gate|up", L, 1.0f, xlkv_train_gemm_weight_grad(N, dim, 2 * hid, 2 * hid));
    P("dX o (fp32 out, beta 0)", L, 1.0f, xlkv_train_gemm_input_grad(N, q, dim, dim, false, false));
    P("dW o", L, 1.0f, xlkv_train_gemm_weight_grad(N, q, dim, dim));
    P("dX q|k|v (bf16 out)", L, 1.0f, xlkv_train_gemm_input_grad(N, dim, qkv, qkv, true, false));
    P("dW q|k|v", L, 1.0f, xlkv_train_gemm_weight_grad(N, dim, qkv, qkv));
    P("classifier fwd (bf16 logits)", 1, 1.0f, xlkv_train_gemm_forward(N, dim, o->vocab, o->vocab, true));
    P("classifier dX (bf16 out)", 1, s, xlkv_train_gemm_input_grad(N, dim, o->vocab, o->vocab, true, false));
    P("classifier dW", 1, s, xlkv_train_gemm_weight_grad(N, dim, o->vocab, o->vocab));
#undef P
    return n;
}

/* XLKV_TRAIN_FUSE=0 (layer_forward / layer_backward): fp32 C everywhere, separate q, k, v and gate, up products, dX
 * with beta 1 into cleared buffers; the classifier as the default (fused cross-entropy), its dX in fp32 */
static int list_unfused_products(const options *o, product *p) {
    const int N = o->rows, L = o->layers, dim = o->dim, hid = o->hidden;
    const int q = o->heads * o->head_dim, kv = o->kv_heads * o->head_dim;
    const float s = 1.0f / (float)N;
    static const char *names[4][3] = {{"fwd q", "dX q (beta 1)", "dW q"},
                                      {"fwd k, v", "dX k, v (beta 1)", "dW k, v"},
                                      {"fwd gate, up", "dX gate, up (beta 1)", "dW gate, up"},
                                      {"fwd down", "dX down (beta 1)", "dW down"}};
    const int in[4] = {dim, dim, dim, hid}, out[4] = {q, kv, hid, dim}, calls[4] = {L, 2 * L, 2 * L, L};
    int n = 0;
    for (int i = 0; i < 4; i++) {
        p[n++] = (product){names[i][0], calls[i], 1.0f, xlkv_train_gemm_forward(N, in[i], out[i], out[i], false)};
        p[n++] = (product){names[i][1], calls[i], 1.0f,
                           xlkv_train_gemm_input_grad(N, in[i], out[i], out[i], false, true)};
        p[n++] = (product){names[i][2], calls[i], 1.0f, xlkv_train_gemm_weight_grad(N, in[i], out[i], out[i])};
    }
    /* o: q_dim -> dim */
    p[n++] = (product){"fwd o", L, 1.0f, xlkv_train_gemm_forward(N, q, dim, dim, false)};
    p[n++] = (product){"dX o (beta 1)", L, 1.0f, xlkv_train_gemm_input_grad(N, q, dim, dim, false, true)};
    p[n++] = (product){"dW o", L, 1.0f, xlkv_train_gemm_weight_grad(N, q, dim, dim)};
    p[n++] = (product){"classifier fwd (bf16 logits)", 1, 1.0f, xlkv_train_gemm_forward(N, dim, o->vocab, o->vocab,
                                                                                           true)};
    p[n++] = (product){"classifier dX (fp32 out)", 1, s,
                       xlkv_train_gemm_input_grad(N, dim, o->vocab, o->vocab, false, false)};
    p[n++] = (product){"classifier dW", 1, s, xlkv_train_gemm_weight_grad(N, dim, o->vocab, o->vocab)};
    return n;
}

static uint16_t bf16_of(float x) { /* round to nearest even (no NaN here) */
    uint32_t u;
    memcpy(&u, &x, sizeof u);
    return (uint16_t)((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);
}
static float float_of_bf16(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float x;
    memcpy(&x, &u, sizeof x);
    return x;
}

/* n bf16 values in [-1, 1) (or fp32 in [-0.5, 0.5)), uploaded */
static void *device_random(size_t bytes, bool bf16) {
    void *host = malloc(bytes), *d = NULL;
    if (!host) die("host memory", "out of memory");
    if (bf16)
        for (size_t i = 0; i < bytes / 2; i++) ((uint16_t *)host)[i] = bf16_of(uniform());
    else
        for (size_t i = 0; i < bytes / 4; i++) ((float *)host)[i] = 0.5f * uniform();
    check(cudaMalloc(&d, bytes), "cudaMalloc");
    check(cudaMemcpy(d, host, bytes, cudaMemcpyHostToDevice), "upload");
    free(host);
    return d;
}


typedef struct operands {
    const void *a, *b;
    void *c, *c_init; /* C, and its starting values (restored before a checked run) */
    size_t c_bytes;
} operands;

typedef struct timed_gemm_ex {
    cublasHandle_t h;
    const product *p;
    const operands *x;
} timed_gemm_ex;

static void run_gemm_ex(void *ctx) {
    const timed_gemm_ex *t = ctx;
    const xlkv_train_gemm_shape *s = &t->p->shape;
    const float beta = s->accumulate ? 1.0f : 0.0f;
    check_blas(cublasGemmEx(t->h, s->trans_a ? CUBLAS_OP_T : CUBLAS_OP_N, s->trans_b ? CUBLAS_OP_T : CUBLAS_OP_N, s->m,
                            s->n, s->k, &t->p->alpha, t->x->a, CUDA_R_16BF, s->lda, t->x->b, CUDA_R_16BF, s->ldb, &beta,
                            t->x->c, s->c_bf16 ? CUDA_R_16BF : CUDA_R_32F, s->ldc, CUBLAS_COMPUTE_32F,
                            CUBLAS_GEMM_DEFAULT),
               "cublasGemmEx");
}

static float time_gemm_ex(cublasHandle_t h, const product *p, const operands *x) {
    timed_gemm_ex t = {h, p, x};
    return bench_median_ms(run_gemm_ex, &t, BURST, BURSTS);
}

/* C from its start, one product, and the compared part of C as floats (the first and last COMPARE_HALF outputs) */
static float *checked_output(const product *p, const operands *x, size_t *count, cublasHandle_t h,
                             cublasLtHandle_t lt, const xlkv_train_gemm_plan *plan, const cublasLtMatmulAlgo_t *algo,
                             void *ws) {
    const xlkv_train_gemm_shape *s = &p->shape;
    check(cudaMemcpy(x->c, x->c_init, x->c_bytes, cudaMemcpyDeviceToDevice), "restoring C");
    if (plan) {
        cublasStatus_t st = xlkv_train_gemm_plan_matmul(lt, plan, algo, p->alpha, x->a, x->b, x->c, ws,
                                                        WORKSPACE_BYTES, NULL);
        if (st != CUBLAS_STATUS_SUCCESS) return NULL;
    } else {
        const float beta = s->accumulate ? 1.0f : 0.0f;
        check_blas(cublasGemmEx(h, s->trans_a ? CUBLAS_OP_T : CUBLAS_OP_N, s->trans_b ? CUBLAS_OP_T : CUBLAS_OP_N,
                                s->m, s->n, s->k, &p->alpha, x->a, CUDA_R_16BF, s->lda, x->b, CUDA_R_16BF, s->ldb,
                                &beta, x->c, s->c_bf16 ? CUDA_R_16BF : CUDA_R_32F, s->ldc, CUBLAS_COMPUTE_32F,
                                CUBLAS_GEMM_DEFAULT),
                   "cublasGemmEx");
    }
    check(cudaDeviceSynchronize(), "running a checked product");
    const size_t elem = s->c_bf16 ? 2 : 4, total = x->c_bytes / elem;
    const size_t half = total > 2 * (size_t)COMPARE_HALF ? (size_t)COMPARE_HALF : total;
    const size_t n = total > 2 * (size_t)COMPARE_HALF ? 2 * half : total;
    unsigned char *raw = malloc(n * elem);
    float *out = malloc(n * sizeof *out);
    if (!raw || !out) die("host memory", "out of memory");
    if (n == total) check(cudaMemcpy(raw, x->c, n * elem, cudaMemcpyDeviceToHost), "download");
    else {
        check(cudaMemcpy(raw, x->c, half * elem, cudaMemcpyDeviceToHost), "download");
        check(cudaMemcpy(raw + half * elem, (char *)x->c + (total - half) * elem, half * elem, cudaMemcpyDeviceToHost),
              "download");
    }
    for (size_t i = 0; i < n; i++)
        out[i] = s->c_bf16 ? float_of_bf16(((uint16_t *)raw)[i]) : ((float *)raw)[i];
    free(raw);
    *count = n;
    return out;
}

/* max |x - ref| / max |ref| (NAN when x is missing) */
static double relative_difference(const float *x, const float *ref, size_t n) {
    if (!x) return NAN;
    double diff = 0.0, scale = 0.0;
    for (size_t i = 0; i < n; i++) {
        const double d = fabs((double)x[i] - (double)ref[i]), r = fabs((double)ref[i]);
        if (d > diff || d != d) diff = d;
        if (r > scale) scale = r;
    }
    return scale > 0.0 ? diff / scale : diff;
}

static double tflops(const xlkv_train_gemm_shape *s, float ms) {
    return 2.0 * (double)s->m * (double)s->n * (double)s->k / ((double)ms * 1e-3) / 1e12;
}

static cJSON *line_of(const char *device) {
    cJSON *line = bench_json_line("train_gemm");
    cJSON_AddStringToObject(line, "device", device);
    char version[32];
    snprintf(version, sizeof version, "%zu", cublasLtGetVersion());
    cJSON_AddStringToObject(line, "cublaslt", version);
    return line;
}

static int parse(int argc, char **argv, options *o) {
    *o = (options){.rows = 16384, .layers = 12, .dim = 768, .hidden = 2048, .heads = 12, .kv_heads = 6,
                   .head_dim = 64, .vocab = 32000, .out = "bench/results/train_gemm.jsonl"};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--all") || !strcmp(a, "--unfused")) {
            *(!strcmp(a, "--all") ? &o->all : &o->unfused) = true;
            continue;
        }
        if (i + 1 >= argc) {
            fprintf(stderr, "bench_train_gemm: %s needs a value (or is unknown)\n", a);
            return 1;
        }
        const char *v = argv[++i];
        int *target = !strcmp(a, "--rows")       ? &o->rows
                      : !strcmp(a, "--layers")   ? &o->layers
                      : !strcmp(a, "--dim")      ? &o->dim
                      : !strcmp(a, "--hidden")   ? &o->hidden
                      : !strcmp(a, "--heads")    ? &o->heads
                      : !strcmp(a, "--kv-heads") ? &o->kv_heads
                      : !strcmp(a, "--head-dim") ? &o->head_dim
                      : !strcmp(a, "--vocab")    ? &o->vocab
                                                 : NULL;
        if (!strcmp(a, "--out")) o->out = v;
        else if (target) {
            char *end = NULL;
            long x = strtol(v, &end, 10);
            if (!end || *end || x < 1 || x > (1 << 24)) {
                fprintf(stderr, "bench_train_gemm: %s %s: expected a positive integer\n", a, v);
                return 1;
            }
            *target = (int)x;
        } else {
            fprintf(stderr, "bench_train_gemm: unknown option %s\n", a);
            return 1;
        }
    }
    return 0;
}

int main(int argc, char **argv) {
    options o;
    if (parse(argc, argv, &o)) return 2;
    product products[MAX_PRODUCTS];
    const int n = o.unfused ? list_unfused_products(&o, products) : list_products(&o, products);
    int device = 0;
    struct cudaDeviceProp prop;
    if (cudaGetDevice(&device) != cudaSuccess || cudaGetDeviceProperties(&prop, device) != cudaSuccess) {
        printf("bench_train_gemm: no CUDA device; nothing to measure\n");
        return 0;
    }
    cublasHandle_t blas;
    cublasLtHandle_t lt;
    void *ws = NULL;
    check_blas(cublasCreate(&blas), "cublasCreate");
    check_blas(cublasLtCreate(&lt), "cublasLtCreate");
    check(cudaMalloc(&ws, WORKSPACE_BYTES), "cudaMalloc workspace");
    check_blas(cublasSetWorkspace(blas, ws, WORKSPACE_BYTES), "cublasSetWorkspace");
    check_blas(cublasSetMathMode(blas, CUBLAS_DEFAULT_MATH), "cublasSetMathMode");
    FILE *json = fopen(o.out, "a");
    if (!json) fprintf(stderr, "bench_train_gemm: cannot write %s (run from the repository root, or --out FILE)\n",
                       o.out);
    printf("bench_train_gemm: %s, cuBLASLt %zu; %s path; %d rows, %d layers, dim %d, hidden %d, %d/%d heads of %d, "
           "vocab %d\n"
           "  ms: median of %d bursts of %d calls; diff: max |x - (a)| / max |(a)|\n",
           prop.name, cublasLtGetVersion(), o.unfused ? "XLKV_TRAIN_FUSE=0" : "fused (default)", o.rows, o.layers,
           o.dim, o.hidden, o.heads, o.kv_heads, o.head_dim, o.vocab, BURSTS, BURST);
    printf("%-30s %5s %18s | %8s %7s | %8s %7s %9s | %4s %8s %7s %6s %9s\n", "product", "calls", "m x n x k",
           "(a) ms", "TF/s", "(b) ms", "TF/s", "diff", "best", "(c) ms", "TF/s", "gain", "diff");
    double step_a = 0.0, step_b = 0.0, step_c = 0.0, step_d = 0.0, flops_step = 0.0;
    for (int i = 0; i < n; i++) {
        const product *p = &products[i];
        const xlkv_train_gemm_shape *s = &p->shape;
        operands x = {.c_bytes = xlkv_train_gemm_shape_bytes_c(s)};
        x.a = device_random(xlkv_train_gemm_shape_bytes_a(s), true);
        x.b = device_random(xlkv_train_gemm_shape_bytes_b(s), true);
        x.c_init = device_random(x.c_bytes, s->c_bf16);
        check(cudaMalloc(&x.c, x.c_bytes), "cudaMalloc C");
        check(cudaMemcpy(x.c, x.c_init, x.c_bytes, cudaMemcpyDeviceToDevice), "C");
        xlkv_train_gemm_plan plan;
        check_status(xlkv_train_gemm_plan_init(lt, s, WORKSPACE_BYTES, &plan));

        const float ms_a = time_gemm_ex(blas, p, &x);
        float ms_c[XLKV_TRAIN_GEMM_LT_CANDIDATES];
        int best = -1;
        for (int j = 0; j < plan.n_candidates; j++) {
            if (xlkv_train_gemm_plan_time(lt, &plan, &plan.candidates[j].algo, p->alpha, x.a, x.b, x.c, ws,
                                          WORKSPACE_BYTES, NULL, BURST, BURSTS, &ms_c[j]) != XLKV_OK) {
                ms_c[j] = -1.0f; /* the library refused this candidate at run time */
                continue;
            }
            if (best < 0 || ms_c[j] < ms_c[best]) best = j;
        }
        if (best < 0) die("cuBLASLt", "no candidate ran");
        const float ms_b = ms_c[0] > 0.0f ? ms_c[0] : NAN;
        size_t count = 0, count_x = 0;
        float *ref = checked_output(p, &x, &count, blas, lt, NULL, NULL, ws);
        float *out_b = checked_output(p, &x, &count_x, blas, lt, &plan, &plan.candidates[0].algo, ws);
        const double diff_b = relative_difference(out_b, ref, count);
        free(out_b);
        float *out_c = checked_output(p, &x, &count_x, blas, lt, &plan, &plan.candidates[best].algo, ws);
        const double diff_c = relative_difference(out_c, ref, count);
        free(out_c);
        free(ref);

        char dims[40];
        snprintf(dims, sizeof dims, "%dx%dx%d", s->m, s->n, s->k);
        printf("%-30s %5d %18s | %8.4f %7.1f | %8.4f %7.1f %9.2e | %4d %8.4f %7.1f %5.3fx %9.2e\n", p->name, p->calls,
               dims, ms_a, tflops(s, ms_a), ms_b, tflops(s, ms_b), diff_b, best, ms_c[best], tflops(s, ms_c[best]),
               ms_a / ms_c[best], diff_c);
        if (o.all)
            for (int j = 0; j < plan.n_candidates; j++)
                printf("    candidate %2d: %8.4f ms %7.1f TF/s (workspace %zu B, waves %.2f)\n", j, ms_c[j],
                       ms_c[j] > 0.0f ? tflops(s, ms_c[j]) : 0.0, plan.candidates[j].workspaceSize,
                       plan.candidates[j].wavesCount);
        step_a += p->calls * (double)ms_a;
        step_b += p->calls * (double)ms_b;
        step_c += p->calls * (double)ms_c[best];
        step_d += p->calls * (double)(ms_a < ms_c[best] ? ms_a : ms_c[best]); /* what tune keeps */
        flops_step += p->calls * 2.0 * (double)s->m * (double)s->n * (double)s->k;

        cJSON *line = line_of(prop.name);
        cJSON_AddStringToObject(line, "product", p->name);
        cJSON_AddStringToObject(line, "path", o.unfused ? "unfused" : "fused");
        char desc[160];
        xlkv_train_gemm_shape_describe(s, desc, sizeof desc);
        cJSON_AddStringToObject(line, "shape", desc);
        cJSON_AddNumberToObject(line, "calls_per_step", p->calls);
        cJSON_AddNumberToObject(line, "gemm_ex_ms", ms_a);
        cJSON_AddNumberToObject(line, "lt_heuristic_ms", ms_b);
        cJSON_AddNumberToObject(line, "lt_best_ms", ms_c[best]);
        cJSON_AddNumberToObject(line, "lt_best_index", best);
        cJSON_AddNumberToObject(line, "lt_candidates", plan.n_candidates);
        cJSON_AddNumberToObject(line, "gemm_ex_tflops", tflops(s, ms_a));
        cJSON_AddNumberToObject(line, "lt_best_tflops", tflops(s, ms_c[best]));
        cJSON_AddNumberToObject(line, "lt_heuristic_rel_diff", diff_b);
        cJSON_AddNumberToObject(line, "lt_best_rel_diff", diff_c);
        bench_json_write(line, json);

        xlkv_train_gemm_plan_destroy(&plan);
        cudaFree((void *)x.a);
        cudaFree((void *)x.b);
        cudaFree(x.c);
        cudaFree(x.c_init);
    }
    printf("per step (calls x ms, %.1f TFLOP): (a) cublasGemmEx %.3f ms (%.0f TF/s), (b) cuBLASLt heuristic %.3f ms, "
           "(c) best of the top %d %.3f ms (%.0f TF/s): %.3f ms saved; the faster of (a) and (c) per product "
           "(XLKV_TRAIN_GEMM_LT=tune) %.3f ms (%.0f TF/s): %.3f ms saved\n",
           flops_step / 1e12, step_a, flops_step / (step_a * 1e-3) / 1e12, step_b, XLKV_TRAIN_GEMM_LT_CANDIDATES,
           step_c, flops_step / (step_c * 1e-3) / 1e12, step_a - step_c, step_d,
           flops_step / (step_d * 1e-3) / 1e12, step_a - step_d);
    cJSON *line = line_of(prop.name);
    cJSON_AddStringToObject(line, "product", "step total");
    cJSON_AddStringToObject(line, "path", o.unfused ? "unfused" : "fused");
    cJSON_AddNumberToObject(line, "rows", o.rows);
    cJSON_AddNumberToObject(line, "layers", o.layers);
    cJSON_AddNumberToObject(line, "gemm_ex_ms", step_a);
    cJSON_AddNumberToObject(line, "lt_heuristic_ms", step_b);
    cJSON_AddNumberToObject(line, "lt_best_ms", step_c);
    cJSON_AddNumberToObject(line, "best_of_both_ms", step_d);
    bench_json_write(line, json);
    if (json) fclose(json);
    cudaFree(ws);
    cublasLtDestroy(lt);
    cublasDestroy(blas);
    return 0;
}

#else
int main(void) {
    printf("bench_train_gemm: built without CUDA; nothing to measure\n");
    return 0;
}
#endif
