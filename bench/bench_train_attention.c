/* bench/bench_train_attention: the trainer's flash attention alone (backend/cuda/train_attention_flash.h), on the
 * `small` training shape by default: B 16, T 1024, 12 query heads / 6 KV heads, head_dim 64, causal, 12 layers.
 *
 * Each call (forward: out + lse; backward: delta, dq, dk and dv added to, the bf16 pre-pass included) is timed with CUDA
 * events over 10 back-to-back launches, median of 5 such bursts. Useful causal FLOPs per call: forward
 * 2 products x 2 x B x H x T(T+1)/2 x hd; backward 2.5x that (5 products, the usual convention; the kernels compute
 * 7, recomputing S and dP for the deterministic dQ). Printed: ms per call, ms per training step (x layers) and
 * TFLOP/s; the backward also as the trainer called it before (two dK/dV clears, the delta and head-major passes:
 * XLKV_TRAIN_FLASH_PROLOGUE=0 XLKV_TRAIN_FLASH_KV16=0) and calls it now (dK/dV overwritten, delta inside the dQ
 * kernel, the bf16 K / V kept from the forward), with the difference;
 * then the largest difference of out, dq, dk between two clean passes (0: the kernels are deterministic).
 *
 * Usage: bench_train_attention [--batch B] [--seq T] [--heads H] [--kv-heads KVH] [--head-dim 64|128]
 *                              [--layers L] [--window W]
 * Targets (issue 5, H100/H200): forward <= 1.5 ms per step, backward <= 5 ms per step (small shape).
 * Not a test; without CUDA it says so and exits 0. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifdef XLKV_HAVE_CUDA
#include <cuda_runtime.h>

#include "backend/cuda/train_attention_flash.h"

enum { BURST = 10, REPS = 5 };

#define BENCH_NAME "bench_train_attention"
#include "bench_cuda_common.h"


static float *device_random(size_t n, float scale) {
    float *host = malloc(n * sizeof *host), *d = NULL;
    if (!host) {
        fprintf(stderr, "bench_train_attention: out of host memory\n");
        exit(1);
    }
    for (size_t i = 0; i < n; i++) host[i] = scale * uniform();
    check(cudaMalloc((void **)&d, n * sizeof *d), "cudaMalloc");
    check(cudaMemcpy(d, host, n * sizeof *d, cudaMemcpyHostToDevice), "upload");
    free(host);
    return d;
}

static float *device_zeros(size_t n) {
    float *d = NULL;
    check(cudaMalloc((void **)&d, n * sizeof *d), "cudaMalloc");
    check(cudaMemset(d, 0, n * sizeof *d), "cudaMemset");
    return d;
}

typedef struct buffers {
    float *q, *k, *v, *dout, *out, *lse, *dq, *dk, *dv, *delta;
    uint16_t *k16, *v16; /* the trainer's kept bf16 K / V (XLKV_TRAIN_FLASH_KV16), rounded before the timings */
} buffers;


/* What one timed call does: the forward; the plain backward (delta in the dQ kernel, dk / dv added to); the former
 * trainer path (dk / dv cleared by two cudaMemsetAsync, then added to; delta pass + head-major pass); the folded one
 * (dk / dv overwritten, delta computed in the dQ kernel and not written out: the trainer's call). */
typedef enum call_kind { CALL_FORWARD, CALL_BACKWARD, CALL_BACKWARD_FORMER, CALL_BACKWARD_FOLDED } call_kind;

static void one_call(call_kind kind, void *ws, const buffers *b, const xlkv_cuda_train_attention_shape *s) {
    const size_t kvn = (size_t)s->batch * s->seq * s->n_kv_heads * s->head_dim;
    const xlkv_cuda_train_flash_kv16 kept = {b->k16, b->v16, true};
    const xlkv_cuda_train_flash_backward_options former = {.separate_delta = true},
                                                 folded = {.overwrite_dkdv = true, .kv16 = &kept};
    switch (kind) {
    case CALL_FORWARD:
        check_rc(xlkv_cuda_train_attention_flash_forward(b->out, b->lse, b->q, b->k, b->v, s, ws, NULL),
                 "flash forward");
        break;
    case CALL_BACKWARD:
        check_rc(xlkv_cuda_train_attention_flash_backward(b->dq, b->dk, b->dv, b->delta, b->dout, b->out, b->lse, b->q,
                                                          b->k, b->v, s, ws, NULL),
                 "flash backward");
        break;
    case CALL_BACKWARD_FORMER:
        check(cudaMemsetAsync(b->dk, 0, kvn * sizeof(float), NULL), "cudaMemsetAsync");
        check(cudaMemsetAsync(b->dv, 0, kvn * sizeof(float), NULL), "cudaMemsetAsync");
        check_rc(xlkv_cuda_train_attention_flash_backward_opts(b->dq, b->dk, b->dv, b->delta, b->dout, b->out, b->lse,
                                                               b->q, b->k, b->v, NULL, &former, s, ws, NULL),
                 "flash backward (former)");
        break;
    case CALL_BACKWARD_FOLDED:
        check_rc(xlkv_cuda_train_attention_flash_backward_opts(b->dq, b->dk, b->dv, NULL, b->dout, b->out, b->lse,
                                                               b->q, b->k, b->v, NULL, &folded, s, ws, NULL),
                 "flash backward (folded)");
        break;
    }
}

typedef struct timed_call {
    call_kind kind;
    void *ws;
    const buffers *b;
    const xlkv_cuda_train_attention_shape *s;
} timed_call;

static void run_timed_call(void *ctx) {
    const timed_call *t = ctx;
    one_call(t->kind, t->ws, t->b, t->s);
}

/* Median over REPS bursts of BURST calls, ms per call. */
static float time_calls(call_kind kind, void *ws, const buffers *b, const xlkv_cuda_train_attention_shape *s) {
    timed_call t = {kind, ws, b, s};
    return bench_median_ms(run_timed_call, &t, BURST, REPS);
}

static float *download(const float *d, size_t n) {
    float *h = malloc(n * sizeof *h);
    if (!h) {
        fprintf(stderr, "bench_train_attention: out of host memory\n");
        exit(1);
    }
    check(cudaMemcpy(h, d, n * sizeof *h, cudaMemcpyDeviceToHost), "download");
    return h;
}

static double max_abs_diff(const float *a, const float *b, size_t n) {
    double m = 0.0;
    for (size_t i = 0; i < n; i++) {
        const double d = a[i] > b[i] ? (double)a[i] - b[i] : (double)b[i] - a[i];
        if (d > m || d != d) m = d;
    }
    return m;
}

/* One clean forward + backward (dk, dv from zero) with the given workspace; downloads out, dq, dk. */
static void one_pass(void *ws, const buffers *b, const xlkv_cuda_train_attention_shape *s, size_t qn, size_t kvn,
                     float **out, float **dq, float **dk) {
    check(cudaMemset(b->dk, 0, kvn * sizeof(float)), "cudaMemset");
    check(cudaMemset(b->dv, 0, kvn * sizeof(float)), "cudaMemset");
    check_rc(xlkv_cuda_train_attention_flash_forward(b->out, b->lse, b->q, b->k, b->v, s, ws, NULL), "forward");
    check_rc(xlkv_cuda_train_attention_flash_backward(b->dq, b->dk, b->dv, b->delta, b->dout, b->out, b->lse, b->q, b->k,
                                                      b->v, s, ws, NULL),
             "backward");
    check(cudaDeviceSynchronize(), "sync");
    *out = download(b->out, qn);
    *dq = download(b->dq, qn);
    *dk = download(b->dk, kvn);
}

static int arg_int(int argc, char **argv, int *i) {
    if (*i + 1 >= argc) {
        fprintf(stderr, "bench_train_attention: %s needs a value\n", argv[*i]);
        exit(2);
    }
    return atoi(argv[++*i]);
}

int main(int argc, char **argv) {
    xlkv_cuda_train_attention_shape s = {.batch = 16, .seq = 1024, .n_heads = 12, .n_kv_heads = 6, .head_dim = 64};
    int layers = 12;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--batch")) s.batch = arg_int(argc, argv, &i);
        else if (!strcmp(argv[i], "--seq")) s.seq = arg_int(argc, argv, &i);
        else if (!strcmp(argv[i], "--heads")) s.n_heads = arg_int(argc, argv, &i);
        else if (!strcmp(argv[i], "--kv-heads")) s.n_kv_heads = arg_int(argc, argv, &i);
        else if (!strcmp(argv[i], "--head-dim")) s.head_dim = arg_int(argc, argv, &i);
        else if (!strcmp(argv[i], "--layers")) layers = arg_int(argc, argv, &i);
        else if (!strcmp(argv[i], "--window")) s.window = arg_int(argc, argv, &i);
        else {
            fprintf(stderr, "usage: bench_train_attention [--batch B] [--seq T] [--heads H] [--kv-heads KVH] "
                            "[--head-dim 64|128] [--layers L] [--window W]\n");
            return 2;
        }
    }
    if (!xlkv_cuda_train_attention_flash_supported(&s) || layers <= 0) {
        fprintf(stderr, "bench_train_attention: flash does not take this shape (head_dim 64 or 128, heads a multiple "
                        "of the KV heads)\n");
        return 2;
    }
    int devices = 0;
    if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) {
        printf("bench_train_attention: no CUDA device; nothing to measure\n");
        return 0;
    }
    struct cudaDeviceProp prop;
    check(cudaGetDeviceProperties(&prop, 0), "device properties");
    const size_t rows = (size_t)s.batch * s.seq, qn = rows * s.n_heads * s.head_dim;
    const size_t kvn = rows * s.n_kv_heads * s.head_dim, ln = rows * s.n_heads;
    buffers b = {device_random(qn, 1.5f), device_random(kvn, 1.5f), device_random(kvn, 1.0f), device_random(qn, 1.0f),
                 device_zeros(qn), device_zeros(ln), device_zeros(qn), device_zeros(kvn), device_zeros(kvn),
                 device_zeros(ln), NULL, NULL};
    void *ws = NULL;
    const size_t ws_bytes = xlkv_cuda_train_attention_flash_workspace_bytes(&s);
    check(cudaMalloc(&ws, ws_bytes), "cudaMalloc workspace");

    /* useful FLOPs: visible (query, key) pairs x 4 x hd per head (window: min(t + 1, W) keys per query) */
    double pairs = 0.0;
    for (int t = 0; t < s.seq; t++) pairs += s.window > 0 && t + 1 > s.window ? s.window : t + 1;
    const double fwd_flop = 4.0 * s.batch * s.n_heads * pairs * s.head_dim, bwd_flop = 2.5 * fwd_flop;
    printf("bench_train_attention on %s: B %d, T %d, heads %d / %d, head_dim %d, window %d, %d layers; workspace "
           "%.1f MB\n",
           prop.name, s.batch, s.seq, s.n_heads, s.n_kv_heads, s.head_dim, s.window, layers, ws_bytes / 1e6);
    printf("useful GFLOP per layer: forward %.2f, backward %.2f\n", fwd_flop / 1e9, bwd_flop / 1e9);

    /* a forward first so lse / out are real for the backward timings (and the kept bf16 K / V are rounded) */
    check(cudaMalloc((void **)&b.k16, kvn * sizeof(uint16_t)), "cudaMalloc");
    check(cudaMalloc((void **)&b.v16, kvn * sizeof(uint16_t)), "cudaMalloc");
    const xlkv_cuda_train_flash_kv16 fresh = {b.k16, b.v16, false};
    check_rc(xlkv_cuda_train_attention_flash_forward_opts(b.out, b.lse, b.q, b.k, b.v, NULL, &fresh, &s, ws, NULL),
             "forward (kept K / V)");
    check_rc(xlkv_cuda_train_attention_flash_forward(b.out, b.lse, b.q, b.k, b.v, &s, ws, NULL), "forward");
    const float f = time_calls(CALL_FORWARD, ws, &b, &s), bw = time_calls(CALL_BACKWARD, ws, &b, &s);
    const float bw_former = time_calls(CALL_BACKWARD_FORMER, ws, &b, &s);
    const float bw_folded = time_calls(CALL_BACKWARD_FOLDED, ws, &b, &s);
    printf("flash forward : %7.3f ms/layer %7.2f ms/step (x%d) %6.1f TFLOP/s\n", f, f * layers, layers,
           fwd_flop / (f * 1e-3) / 1e12);
    printf("flash backward: %7.3f ms/layer %7.2f ms/step (x%d) %6.1f TFLOP/s (incl. delta, bf16 pre-pass)\n", bw,
           bw * layers, layers, bwd_flop / (bw * 1e-3) / 1e12);
    printf("flash backward, trainer's former call: %7.3f ms/layer (2 dK/dV clears + delta pass + head-major pass)\n",
           bw_former);
    printf("flash backward, trainer's folded call: %7.3f ms/layer (dK/dV overwritten, delta in the dQ kernel, kept "
           "bf16 K/V): "
           "%.3f ms/layer, %.2f ms/step less\n", bw_folded, bw_former - bw_folded, (bw_former - bw_folded) * layers);

    float *out1, *dq1, *dk1, *out2, *dq2, *dk2;
    one_pass(ws, &b, &s, qn, kvn, &out1, &dq1, &dk1);
    one_pass(ws, &b, &s, qn, kvn, &out2, &dq2, &dk2);
    printf("max |run 2 - run 1|: out %.3e, dq %.3e, dk %.3e (expected 0)\n", max_abs_diff(out2, out1, qn),
           max_abs_diff(dq2, dq1, qn), max_abs_diff(dk2, dk1, kvn));
    free(out1), free(dq1), free(dk1), free(out2), free(dq2), free(dk2);
    cudaFree(ws);
    float *all[] = {b.q, b.k, b.v, b.dout, b.out, b.lse, b.dq, b.dk, b.dv, b.delta};
    for (size_t i = 0; i < sizeof all / sizeof *all; i++) cudaFree(all[i]);
    cudaFree(b.k16), cudaFree(b.v16);
    return 0;
}

#else
int main(void) {
    printf("bench_train_attention: built without CUDA; nothing to measure\n");
    return 0;
}
#endif
