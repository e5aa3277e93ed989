/* bench/bench_train_kernels: the CUDA trainer's memory-bound kernels alone (backend/cuda/train_kernels.h,
 * train_fused.h), on the `small` training shape by default (16,384 rows = batch 16 x seq 1024, dim 768, ffn 2048,
 * 6 KV heads of 64, vocab 32000), each against the achievable HBM roof measured in the same run.
 *
 * For each kernel: ms per call (CUDA events around a burst of back-to-back calls, median of several bursts), the bytes
 * it must move (every input read once, every output written once: the minimum traffic; counted per case below),
 * GB/s = bytes / time, and the roof: a cudaMemcpy device-to-device of bytes / 2 (it reads bytes / 2 and writes
 * bytes / 2, so it moves the same byte count), timed the same way; "% roof" = memcpy time / kernel time. Calls per
 * step are those of the bf16 trainer's fused `small` step under the standard map (backend/cuda/train_gpu.c), so
 * "ms/step" = calls x ms per call estimates each kernel's share of the step:
 *   add + RMSNorm forward (bf16 branch): 23 (12 FFN norms, 11 attention norms of layers 1..11); RMSNorm forward with
 *   the saved copy: 1 (layer 0); the last add + the final RMSNorm (fp32 out): 1; folded RMSNorm backward (bf16 dy,
 *   bf16 dx out): 24, (dx written, not read: the final norm): 1; SwiGLU forward / backward from bf16: 12 each; AdamW
 *   with the bf16 shadow: the whole store as the step runs it (the shape's parameter layout, runs of adjacent
 *   tensors with equal decay in one launch, xlkv_gpu_trainer_adamw_step), and for comparison one launch per run (the
 *   step before) and one launch with one decay; residual clears of dK / dV: 24 (two per KV layer). Rows with 0 calls
 *   are comparisons: what the step ran before (the final norm's separate add and clear of dx, the clear of the group
 *   input gradient under maps without cyclic groups) or the other variants of a kernel.
 * JSON lines (one per kernel, with the commit from XLKV_COMMIT and the device) are appended to --out (default
 * bench/results/train_kernels.jsonl).
 *
 * Usage: bench_train_kernels [--shape small] [--vocab 32000] [--rows 16384] [--burst 20] [--reps 7] [--out FILE]
 * Target (issue 5): every kernel >= 85% of the roof. Not a test; without CUDA it says so and exits 0. */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "core/status.h"
#include "train/model_setup.h"
#include "train/param_store.h"

typedef struct bench_options {
    const char *shape, *out;
    int vocab, rows, burst, reps;
} bench_options;

static int parse_options(int argc, char **argv, bench_options *o) {
    *o = (bench_options){.shape = "small", .out = "bench/results/train_kernels.jsonl", .vocab = 32000, .rows = 16384,
                         .burst = 20, .reps = 7};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!v) {
            fprintf(stderr, "bench_train_kernels: %s needs a value\n", a);
            return 2;
        }
        i++;
        if (!strcmp(a, "--shape")) o->shape = v;
        else if (!strcmp(a, "--out")) o->out = v;
        else if (!strcmp(a, "--vocab")) o->vocab = atoi(v);
        else if (!strcmp(a, "--rows")) o->rows = atoi(v);
        else if (!strcmp(a, "--burst")) o->burst = atoi(v);
        else if (!strcmp(a, "--reps")) o->reps = atoi(v);
        else {
            fprintf(stderr, "bench_train_kernels: unknown option %s %s\n", a, v);
            return 2;
        }
    }
    if (o->vocab <= 0 || o->rows <= 0 || o->burst <= 0 || o->reps <= 0) {
        fprintf(stderr, "bench_train_kernels: vocab, rows, burst and reps must be positive\n");
        return 2;
    }
    return 0;
}

#ifdef XLKV_HAVE_CUDA
#include <cuda_runtime.h>

#include "backend/cuda/train_fused.h"
#include "backend/cuda/train_kernels.h"

#define BENCH_NAME "bench_train_kernels"
#include "bench_cuda_common.h"
#include "bench_json_line.h"


/* n random values (lo + scale x [-1, 1)) as fp32, or as bf16 bit patterns (truncated: any bf16 value will do) */
static void *device_random(size_t n, float lo, float scale, bool bf16) {
    const size_t size = bf16 ? 2 : 4;
    unsigned char *host = malloc(n * size);
    void *d = NULL;
    if (!host) {
        fprintf(stderr, "bench_train_kernels: out of host memory\n");
        exit(1);
    }
    for (size_t i = 0; i < n; i++) {
        const float v = lo + scale * uniform();
        uint32_t bits;
        memcpy(&bits, &v, 4);
        if (bf16) {
            const uint16_t h = (uint16_t)(bits >> 16);
            memcpy(host + 2 * i, &h, 2);
        } else {
            memcpy(host + 4 * i, &bits, 4);
        }
    }
    check(cudaMalloc(&d, n * size), "cudaMalloc");
    check(cudaMemcpy(d, host, n * size, cudaMemcpyHostToDevice), "upload");
    free(host);
    return d;
}

/* n floats all 0.0115 (the byte 0x3c repeated): AdamW's inputs (its speed does not depend on the values) */
static float *device_constant(size_t n) {
    float *d = NULL;
    check(cudaMalloc((void **)&d, n * sizeof *d), "cudaMalloc");
    check(cudaMemset(d, 0x3c, n * sizeof *d), "cudaMemset");
    return d;
}

/* every buffer the cases touch; [N, dim] unless said */
typedef struct buffers {
    int n, dim, hid, kv_dim, chunks;
    float eps;
    float *a, *sum, *x_copy, *y, *inv, *gain, *dx, *dy, *x, *partials, *dgain, *dk;
    uint16_t *b16, *y16, *dx16, *dy16;
    uint16_t *gu16, *h16, *dh16, *dgu16; /* [N, 2 hid], [N, hid], [N, hid], [N, 2 hid] */
    /* AdamW over the shape's parameters, with the step's launches */
    const xlkv_param_store *store;
    float *w, *g, *m, *v, *coef;
    uint16_t *w16;
    size_t run_ends[XLKV_CUDA_TRAIN_ADAMW_RUNS];
    float run_decays[XLKV_CUDA_TRAIN_ADAMW_RUNS];
    int runs;
    void *copy_src, *copy_dst; /* the roof's memcpy */
    size_t copy_capacity;
} buffers;

typedef void (*launch_fn)(const buffers *b);

static void add_rmsnorm_bf16b(const buffers *b) {
    check_rc(xlkv_cuda_train_add_rmsnorm_forward_bf16b(b->sum, b->y16, b->inv, b->a, b->b16, b->gain, b->n, b->dim,
                                                       b->eps, NULL), "add + rmsnorm forward");
}
static void rmsnorm_bf16_copy(const buffers *b) {
    check_rc(xlkv_cuda_train_rmsnorm_forward_bf16(b->y16, b->inv, b->x_copy, b->a, b->gain, b->n, b->dim, b->eps, NULL),
             "rmsnorm forward bf16");
}
static void rmsnorm_fp32(const buffers *b) {
    check_rc(xlkv_cuda_train_rmsnorm_forward(b->y, b->inv, b->a, b->gain, b->n, b->dim, b->eps, NULL),
             "rmsnorm forward");
}
static void add_rmsnorm_f32(const buffers *b) {
    check_rc(xlkv_cuda_train_add_rmsnorm_forward_bf16b_f32(b->sum, b->y, b->inv, b->a, b->b16, b->gain, b->n, b->dim,
                                                           b->eps, NULL), "add + final rmsnorm forward");
}
static void backward_dy16_set(const buffers *b) {
    check_rc(xlkv_cuda_train_rmsnorm_backward_folded_dy16_set(b->dx, b->dx16, b->dgain, b->dy16, b->x, b->inv, b->gain,
                                                              b->n, b->dim, b->partials, NULL), "rmsnorm backward set");
}
static void backward_dy16(const buffers *b) {
    check_rc(xlkv_cuda_train_rmsnorm_backward_folded_dy16(b->dx, b->dx16, b->dgain, b->dy16, b->x, b->inv, b->gain,
                                                          b->n, b->dim, b->partials, NULL), "rmsnorm backward dy16");
}
static void backward_dy16_no_dx16(const buffers *b) {
    check_rc(xlkv_cuda_train_rmsnorm_backward_folded_dy16(b->dx, NULL, b->dgain, b->dy16, b->x, b->inv, b->gain, b->n,
                                                          b->dim, b->partials, NULL), "rmsnorm backward dy16");
}
static void backward_folded(const buffers *b) {
    check_rc(xlkv_cuda_train_rmsnorm_backward_folded(b->dx, b->dx16, b->dgain, b->dy, b->x, b->inv, b->gain, b->n,
                                                     b->dim, b->partials, NULL), "rmsnorm backward folded");
}
static void backward_two_pass(const buffers *b) {
    check_rc(xlkv_cuda_train_rmsnorm_backward_bf16(b->dx, b->dx16, b->dgain, b->dy, b->x, b->inv, b->gain, b->n,
                                                   b->dim, b->partials, NULL), "rmsnorm backward two-pass");
}
static void swiglu_forward(const buffers *b) {
    check_rc(xlkv_cuda_train_swiglu_forward_from_bf16(b->h16, b->gu16, 2 * (size_t)b->hid, b->n, b->hid, NULL),
             "swiglu forward");
}
static void swiglu_backward(const buffers *b) {
    check_rc(xlkv_cuda_train_swiglu_backward_from_bf16(b->dgu16, 2 * (size_t)b->hid, b->dh16, b->gu16,
                                                       2 * (size_t)b->hid, b->n, b->hid, NULL), "swiglu backward");
}
/* the step's AdamW before: one xlkv_cuda_train_adamw_bf16 launch per run of adjacent tensors with equal decay */
static void adamw_per_run(const buffers *b) {
    for (int r = 0; r < b->runs; r++) {
        const size_t o = r ? b->run_ends[r - 1] : 0;
        check_rc(xlkv_cuda_train_adamw_bf16(b->w + o, b->w16 + o, b->g + o, b->m + o, b->v + o, b->run_ends[r] - o,
                                            b->coef, 1e-4f, 0.9f, 0.95f, 1e-8f, b->run_decays[r], 0.1f, 0.05f, NULL),
                 "adamw bf16");
    }
}
/* the step's AdamW now (xlkv_gpu_trainer_adamw_step, fused): the same runs in one launch */
static void adamw_runs(const buffers *b) {
    check_rc(xlkv_cuda_train_adamw_bf16_runs(b->w, b->w16, b->g, b->m, b->v, b->run_ends, b->run_decays, b->runs,
                                             b->coef, 1e-4f, 0.9f, 0.95f, 1e-8f, 0.1f, 0.05f, NULL), "adamw bf16 runs");
}
static void adamw_one_launch(const buffers *b) {
    check_rc(xlkv_cuda_train_adamw_bf16(b->w, b->w16, b->g, b->m, b->v, b->store->n_params, b->coef, 1e-4f, 0.9f, 0.95f,
                                        1e-8f, 0.1f, 0.1f, 0.05f, NULL), "adamw bf16");
}
static void clear_kv(const buffers *b) {
    check(cudaMemsetAsync(b->dk, 0, (size_t)b->n * (size_t)b->kv_dim * sizeof(float), NULL), "cudaMemsetAsync");
}
static void clear_rows(const buffers *b) {
    check(cudaMemsetAsync(b->dx, 0, (size_t)b->n * (size_t)b->dim * sizeof(float), NULL), "cudaMemsetAsync");
}
static void add_out_bf16b(const buffers *b) {
    check_rc(xlkv_cuda_train_add_out_bf16b(b->sum, b->a, b->b16, (size_t)b->n * (size_t)b->dim, NULL), "add_out");
}

typedef struct bench_case {
    const char *name;
    launch_fn launch;
    double calls_per_step; /* the fused `small` standard step; 0: not in the step (a comparison) */
    double bytes;          /* the minimum traffic of one call */
} bench_case;


static size_t copy_bytes; /* the roof's memcpy size (a launch_fn takes only the buffers) */
static void roof_copy(const buffers *b) {
    check(cudaMemcpyAsync(b->copy_dst, b->copy_src, copy_bytes, cudaMemcpyDeviceToDevice, NULL), "cudaMemcpyAsync");
}

typedef struct timed_launch {
    launch_fn launch;
    const buffers *b;
} timed_launch;

static void run_timed_launch(void *ctx) {
    const timed_launch *t = ctx;
    t->launch(t->b);
}

/* Median over reps bursts of burst calls, ms per call (the first burst is a warm-up). */
static float time_calls(launch_fn launch, const buffers *b, int burst, int reps) {
    timed_launch t = {launch, b};
    return bench_median_ms(run_timed_launch, &t, burst, reps);
}

static void setup(buffers *b, const xlkv_param_store *store, int rows) {
    const xlkv_hparams *hp = &store->hp;
    *b = (buffers){.n = rows, .dim = hp->dim, .hid = hp->hidden_dim, .kv_dim = hp->n_kv_heads * hp->head_dim,
                   .eps = hp->norm_eps, .store = store};
    const size_t nd = (size_t)rows * (size_t)b->dim, nh = (size_t)rows * (size_t)b->hid;
    b->chunks = (rows + XLKV_CUDA_TRAIN_ROW_CHUNK - 1) / XLKV_CUDA_TRAIN_ROW_CHUNK;
    b->a = device_random(nd, 0.0f, 2.0f, false), b->sum = device_random(nd, 0.0f, 1.0f, false);
    b->x_copy = device_random(nd, 0.0f, 1.0f, false), b->y = device_random(nd, 0.0f, 1.0f, false);
    b->inv = device_random((size_t)rows, 1.0f, 0.5f, false), b->gain = device_random((size_t)b->dim, 1.0f, 0.5f, false);
    b->dx = device_random(nd, 0.0f, 0.5f, false), b->dy = device_random(nd, 0.0f, 1.0f, false);
    b->x = device_random(nd, 0.0f, 2.0f, false);
    b->partials = device_random((size_t)b->chunks * (size_t)b->dim, 0.0f, 1.0f, false);
    b->dgain = device_random((size_t)b->dim, 0.0f, 1.0f, false);
    b->dk = device_random((size_t)rows * (size_t)b->kv_dim, 0.0f, 1.0f, false);
    b->b16 = device_random(nd, 0.0f, 1.0f, true), b->y16 = device_random(nd, 0.0f, 1.0f, true);
    b->dx16 = device_random(nd, 0.0f, 1.0f, true), b->dy16 = device_random(nd, 0.0f, 1.0f, true);
    b->gu16 = device_random(2 * nh, 0.0f, 3.0f, true), b->h16 = device_random(nh, 0.0f, 1.0f, true);
    b->dh16 = device_random(nh, 0.0f, 1.0f, true), b->dgu16 = device_random(2 * nh, 0.0f, 1.0f, true);
    const size_t p = store->n_params;
    b->w = device_constant(p), b->g = device_constant(p), b->m = device_constant(p), b->v = device_constant(p);
    b->coef = device_random(1, 1.0f, 0.0f, false);
    check(cudaMalloc((void **)&b->w16, p * 2), "cudaMalloc");
    /* the step's runs: adjacent tensors with equal decay (matrices 0.1, the rest 0) merged */
    size_t end = 0;
    for (int t = 0; t < store->n_tensors; t++) {
        const xlkv_param_tensor *x = &store->tensors[t];
        const float decay = x->kind == XLKV_PARAM_MATRIX ? 0.1f : 0.0f;
        if (x->offset != end) {
            fprintf(stderr, "bench_train_kernels: the parameter layout has a gap at tensor %d\n", t);
            exit(1);
        }
        end += (size_t)x->rows * (size_t)(x->cols ? x->cols : 1);
        if (b->runs && b->run_decays[b->runs - 1] == decay) {
            b->run_ends[b->runs - 1] = end;
        } else if (b->runs == XLKV_CUDA_TRAIN_ADAMW_RUNS) {
            fprintf(stderr, "bench_train_kernels: more than %d AdamW runs\n", XLKV_CUDA_TRAIN_ADAMW_RUNS);
            exit(1);
        } else {
            b->run_ends[b->runs] = end, b->run_decays[b->runs] = decay, b->runs++;
        }
    }
    /* the roof's memcpy: half the largest case's bytes (AdamW: 30 bytes a parameter) */
    b->copy_capacity = p * 15 > nh * 10 ? p * 15 : nh * 10;
    check(cudaMalloc(&b->copy_src, b->copy_capacity), "cudaMalloc");
    check(cudaMalloc(&b->copy_dst, b->copy_capacity), "cudaMalloc");
    check(cudaMemset(b->copy_src, 0, b->copy_capacity), "cudaMemset");
}

static void teardown(buffers *b) {
    void *all[] = {b->a, b->sum, b->x_copy, b->y, b->inv, b->gain, b->dx, b->dy, b->x, b->partials, b->dgain, b->dk,
                   b->b16, b->y16, b->dx16, b->dy16, b->gu16, b->h16, b->dh16, b->dgu16, b->w, b->g, b->m, b->v,
                   b->coef, b->w16, b->copy_src, b->copy_dst};
    for (size_t i = 0; i < sizeof all / sizeof *all; i++) cudaFree(all[i]);
}

static int run(const bench_options *o) {
    xlkv_hparams hp;
    xlkv_param_store *store = NULL;
    if (xlkv_train_shape(o->shape, o->vocab, &hp) != XLKV_OK ||
        xlkv_store_from_shape(&hp, "standard", 1, &store) != XLKV_OK) {
        fprintf(stderr, "bench_train_kernels: %s\n", xlkv_last_error());
        return 1;
    }
    buffers b;
    setup(&b, store, o->rows);
    const double nd = (double)o->rows * b.dim, nh = (double)o->rows * b.hid, n = o->rows, dim = b.dim;
    const double partials = 2.0 * b.chunks * dim * 4; /* written, then read by the chunk sum */
    const double p = (double)store->n_params;
    const int layers = hp.n_layers;
    const bench_case cases[] = {
        {"add + rmsnorm forward, bf16 branch", add_rmsnorm_bf16b, 2.0 * layers - 1, nd * (4 + 2 + 4 + 2) + n * 4},
        {"rmsnorm forward bf16 out + saved copy", rmsnorm_bf16_copy, 1, nd * (4 + 4 + 2) + n * 4},
        {"add + rmsnorm forward fp32 out (final norm)", add_rmsnorm_f32, 1, nd * (4 + 2 + 4 + 4) + n * 4},
        {"rmsnorm forward fp32 out (before: + add)", rmsnorm_fp32, 0, nd * (4 + 4) + n * 4},
        {"rmsnorm backward folded, bf16 dy, dx16", backward_dy16, 2.0 * layers,
         nd * (2 + 4 + 4 + 4 + 2) + n * 4 + partials},
        {"rmsnorm backward, bf16 dy, dx set (final)", backward_dy16_set, 1, nd * (2 + 4 + 4 + 2) + n * 4 + partials},
        {"rmsnorm backward, bf16 dy, no dx16 (before)", backward_dy16_no_dx16, 0,
         nd * (2 + 4 + 4 + 4) + n * 4 + partials},
        {"rmsnorm backward folded, fp32 dy, dx16", backward_folded, 0, nd * (4 + 4 + 4 + 4 + 2) + n * 4 + partials},
        {"rmsnorm backward two-pass, fp32 dy, dx16", backward_two_pass, 0,
         nd * (4 + 4 + 4 + 4 + 2) + n * 4 + partials},
        {"swiglu forward from bf16", swiglu_forward, layers, nh * (2 + 2 + 2)},
        {"swiglu backward from bf16", swiglu_backward, layers, nh * (2 + 2 + 2 + 2 + 2)},
        {"adamw bf16, runs in one launch (the step)", adamw_runs, 1, p * 30},
        {"adamw bf16, a launch per run (before)", adamw_per_run, 0, p * 30},
        {"adamw bf16, one launch, one decay", adamw_one_launch, 0, p * 30},
        {"clear dK or dV (memset)", clear_kv, 2.0 * layers, (double)o->rows * b.kv_dim * 4},
        {"clear an [N, dim] gradient (before: 2)", clear_rows, 0, nd * 4},
        {"last residual add, bf16 branch (before: 1)", add_out_bf16b, 0, nd * (4 + 2 + 4)},
    };
    FILE *json = fopen(o->out, "a");
    if (!json) fprintf(stderr, "bench_train_kernels: cannot write %s (run from the repository root, or --out FILE); "
                               "table only\n", o->out);
    struct cudaDeviceProp prop;
    int device = 0;
    const char *device_name = cudaGetDevice(&device) == cudaSuccess &&
                                      cudaGetDeviceProperties(&prop, device) == cudaSuccess ? prop.name : "unknown";
    printf("bench_train_kernels: shape %s, %d rows, dim %d, ffn %d, %zu parameters, %s; median of %d bursts of %d\n",
           o->shape, o->rows, b.dim, b.hid, store->n_params, device_name, o->reps, o->burst);
    printf("%-44s %6s %9s %9s %8s %9s %7s %8s\n", "kernel", "calls", "MB/call", "ms/call", "GB/s", "roof GB/s",
           "% roof", "ms/step");
    double step_ms = 0.0, step_roof_ms = 0.0;
    for (size_t c = 0; c < sizeof cases / sizeof *cases; c++) {
        const bench_case *k = &cases[c];
        const float ms = time_calls(k->launch, &b, o->burst, o->reps);
        copy_bytes = (size_t)(k->bytes / 2) / 16 * 16;
        if (copy_bytes > b.copy_capacity) copy_bytes = b.copy_capacity;
        const float roof_ms = time_calls(roof_copy, &b, o->burst, o->reps);
        const double gbs = k->bytes / (ms * 1e-3) / 1e9, roof = 2.0 * (double)copy_bytes / (roof_ms * 1e-3) / 1e9;
        const double share = roof_ms / ms;
        step_ms += k->calls_per_step * ms, step_roof_ms += k->calls_per_step * roof_ms;
        printf("%-44s %6.0f %9.1f %9.4f %8.0f %9.0f %6.1f%% %8.3f\n", k->name, k->calls_per_step, k->bytes / 1e6, ms,
               gbs, roof, 100.0 * share, k->calls_per_step * ms);
        fflush(stdout);
        cJSON *line = bench_json_line("train_kernels");
        cJSON_AddStringToObject(line, "device", device_name);
        cJSON_AddStringToObject(line, "shape", o->shape);
        cJSON_AddNumberToObject(line, "rows", o->rows);
        cJSON_AddStringToObject(line, "kernel", k->name);
        cJSON_AddNumberToObject(line, "calls_per_step", k->calls_per_step);
        cJSON_AddNumberToObject(line, "bytes_per_call", k->bytes);
        cJSON_AddNumberToObject(line, "ms_per_call", ms);
        cJSON_AddNumberToObject(line, "gb_per_s", gbs);
        cJSON_AddNumberToObject(line, "memcpy_ms", roof_ms);
        cJSON_AddNumberToObject(line, "memcpy_gb_per_s", roof);
        cJSON_AddNumberToObject(line, "fraction_of_roof", share);
        bench_json_write(line, json);
    }
    printf("%-44s %6s %9s %9s %8s %9s %6.1f%% %8.3f\n", "all of the step's calls above", "", "", "", "", "",
           100.0 * step_roof_ms / step_ms, step_ms);
    if (json) fclose(json);
    teardown(&b);
    xlkv_param_store_free(store);
    return 0;
}
#endif

int main(int argc, char **argv) {
    bench_options o;
    const int bad = parse_options(argc, argv, &o);
    if (bad) return bad;
#ifndef XLKV_HAVE_CUDA
    printf("bench_train_kernels: xlkv was built without CUDA; nothing to measure\n");
    return 0;
#else
    return run(&o);
#endif
}
