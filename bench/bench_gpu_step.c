/* bench/bench_gpu_step: where a batched decode step's time goes, kernel by kernel, at the tinyllama shape (bf16).
 * Times, with CUDA events (median of 20 after warm-up), each launch a decode step of B rows makes per layer (the cuBLAS
 * products at their fused shapes, the elementwise kernels, kv_write and the split-K decode attention over L visible
 * positions through a paged pool; then rope_kv_write + that attention against the one fused launch the engine runs
 * for decode rows, xlkv_cuda_attention_decode_fused), and reports achieved bandwidth / FLOP rate against the
 * device's. For B >= 64 it then times 22 layers of (fused attention + the four products) three ways: all rows on one
 * stream (the engine), two half-batches one after the other, and the two halves on two streams half a layer apart,
 * so that one half's memory-bound attention can run beside the other's compute-bound products (bench_overlap). For B <=
 * XLKV_CUDA_GEMV_MAX_ROWS it also times the fused few-row path the engine takes (cuda_executor.c): the four products
 * with their fused input / epilogue, rope_kv_write, rope_kv_write + the decode attention (three launches) against the
 * one fused launch that replaces them (xlkv_cuda_attention_decode_fused), the fused logits product and the chunked
 * sampler, each alone, and then a whole decode step (22 layers with their own weights, attention included, logits,
 * sampling) captured in one CUDA graph and replayed: its time is the engine's step without host work, so B x 1e6 / us
 * is the decode tokens/s the kernels allow (bench_gpu's decode_b1 measures the engine itself); the step is timed with
 * the fused attention and again with the three launches (XLKV_DECODE_FUSED=0 in the engine), then with the products
 * of a layer chained (xlkv_cuda_gemv_chain: o, gate|up, down in one launch = XLKV_GEMV_CHAIN=mlp; plus the next
 * layer's qkv = XLKV_GEMV_CHAIN=1; the chains are also timed alone). The fused pieces alone cycle through the 22
 * layers' weights (cold in L2, as in the step). The kernels are timed in one run as programmatic dependent launches
 * (the engine's default) and launched normally (XLKV_GEMV=plain), set by this program for its second table. Each piece is timed twice: one launch between
 * two events (host launch latency included, as before) and per launch inside a graph of 22 launches. Usage:
 * bench_gpu_step [--batch B] [--context L]. Prints a table; not a test. Without CUDA it says so and exits 0. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifdef XLKV_HAVE_CUDA
#include <cuda_runtime.h>

#include "backend/cuda/cuda_gemm.h"
#include "backend/cuda/cuda_kernels.h"

enum { DIM = 2048, HEADS = 32, KV_HEADS = 4, HEAD_DIM = 64, FFN = 5632, VOCAB = 32000, LAYERS = 22, REPS = 20 };

#define BENCH_NAME "bench_gpu_step"
#include "bench_cuda_common.h"

static void *device_random(size_t bytes) {
    void *p = NULL;
    check(cudaMalloc(&p, bytes), "cudaMalloc");
    /* a non-zero, non-constant bf16 pattern: bytes 0x3b/0x3c give values around 0.003..0.01 */
    unsigned char *host = malloc(bytes > (64u << 20) ? (64u << 20) : bytes);
    size_t chunk = bytes > (64u << 20) ? (64u << 20) : bytes;
    for (size_t i = 0; i < chunk; i++) host[i] = (unsigned char)((i & 1) ? 0x3b + (i % 3 == 0) : (i * 37) & 0xff);
    for (size_t off = 0; off < bytes; off += chunk)
        check(cudaMemcpy((char *)p + off, host, bytes - off < chunk ? bytes - off : chunk, cudaMemcpyHostToDevice),
              "fill");
    free(host);
    return p;
}

typedef void (*launch_fn)(void *ctx);

static double time_ms(launch_fn fn, void *ctx, cudaStream_t stream) {
    cudaEvent_t a, b;
    check(cudaEventCreate(&a), "event");
    check(cudaEventCreate(&b), "event");
    for (int i = 0; i < 3; i++) fn(ctx);
    float ms[REPS];
    for (int r = 0; r < REPS; r++) {
        check(cudaEventRecord(a, stream), "record");
        fn(ctx);
        check(cudaEventRecord(b, stream), "record");
        check(cudaEventSynchronize(b), "sync");
        check(cudaEventElapsedTime(&ms[r], a, b), "elapsed");
    }
    for (int i = 1; i < REPS; i++)
        for (int j = i; j > 0 && ms[j] < ms[j - 1]; j--) {
            float t = ms[j];
            ms[j] = ms[j - 1];
            ms[j - 1] = t;
        }
    cudaEventDestroy(a);
    cudaEventDestroy(b);
    return ms[REPS / 2];
}

typedef struct step_ctx {
    int batch, context;
    cudaStream_t stream;
    xlkv_cuda_gemm gemm;
    void *x, *y, *big, *w_qkv, *w_o, *w_gu, *w_down, *w_out, *gain;
    float *logits, *workspace, *cos_t, *sin_t;
    int *row_seq, *row_pos, *tokens;
    void *layers;          /* LAYERS x (qkv | o | gate_up | down) weights for the step graph (B <= 8) */
    void *sample_ws;       /* chunked sampler workspace */
    xlkv_cuda_sampling *sampling;
    int *history, *history_len;
    int layer;             /* the layer whose weights the fused launches use */
    int rotate_layers;     /* fused pieces timed alone: each launch moves to the next layer's weights (cold in L2) */
    xlkv_paged_kv kv;
    int gemm_n, gemm_in, gemm_out;
    const void *gemm_w;
    unsigned *attn_counters; /* the fused decode attention's per-(row, KV head) counters, zero between launches */
    int unfused_attention;   /* the step graph runs rope_kv_write + the two-launch attention instead of the fused one */
    int chain;               /* the step graph chains o, gate|up, down (3) and the next layer's qkv (4); 0: separate */
} step_ctx;

static void run_gemm(void *p) {
    step_ctx *c = p;
    if (xlkv_cuda_linear(&c->gemm, c->big, c->x, c->gemm_w, c->gemm_n, c->gemm_in, c->gemm_out) != XLKV_OK) exit(1);
}
static void run_logits(void *p) {
    step_ctx *c = p;
    if (xlkv_cuda_linear_f32_out(&c->gemm, c->logits, c->x, c->w_out, c->batch, DIM, VOCAB) != XLKV_OK) exit(1);
}
static void run_attention(void *p) {
    step_ctx *c = p;
    xlkv_attention_rule rule = {HEADS, KV_HEADS, HEAD_DIM, 0, 0, 0};
    check((cudaError_t)xlkv_cuda_attention_decode(c->y, c->x, HEADS * HEAD_DIM, c->batch, c->row_seq, c->row_pos,
                                                  c->context + 16, &c->kv, &rule, c->workspace, XLKV_DTYPE_BF16,
                                                  c->stream),
          "attention");
}
static void run_rmsnorm(void *p) {
    step_ctx *c = p;
    check((cudaError_t)xlkv_cuda_add_rmsnorm(c->x, c->y, DIM, c->big, c->gain, c->batch, DIM, 1e-5f, XLKV_DTYPE_BF16,
                                             c->stream),
          "add_rmsnorm");
}
static void run_swiglu(void *p) {
    step_ctx *c = p;
    check((cudaError_t)xlkv_cuda_swiglu(c->y, c->big, (char *)c->big + (size_t)FFN * 2, 2 * FFN, c->batch, FFN,
                                        XLKV_DTYPE_BF16, c->stream),
          "swiglu");
}
static void run_kv_write(void *p) {
    step_ctx *c = p;
    check((cudaError_t)xlkv_cuda_kv_write(&c->kv, 0, c->big, (char *)c->big + 256 * 2, 2560, c->batch, c->row_seq,
                                          c->row_pos, HEAD_DIM, c->cos_t, c->sin_t, XLKV_DTYPE_BF16, c->stream),
          "kv_write");
}
static void run_argmax(void *p) {
    step_ctx *c = p;
    check((cudaError_t)xlkv_cuda_argmax(c->tokens, c->logits, c->batch, VOCAB, c->stream), "argmax");
}

/* ---- the fused few-row path (B <= XLKV_CUDA_GEMV_MAX_ROWS) ---- */

static const size_t QKV_W = (size_t)2560 * DIM, O_W = (size_t)DIM * DIM, GU_W = (size_t)2 * FFN * DIM,
                    DOWN_W = (size_t)DIM * FFN;
static const void *layer_weight(const step_ctx *c, int which) {
    const size_t per_layer = QKV_W + O_W + GU_W + DOWN_W;
    const size_t offsets[4] = {0, QKV_W, QKV_W + O_W, QKV_W + O_W + GU_W};
    return (const char *)c->layers + ((size_t)c->layer * per_layer + offsets[which]) * 2;
}
static void next_layer(step_ctx *c) {
    if (c->rotate_layers) c->layer = (c->layer + 1) % LAYERS;
}
static void run_fused_qkv(void *p) {
    step_ctx *c = p;
    const xlkv_cuda_gemv_input norm = {.kind = XLKV_GEMV_INPUT_RMSNORM, .gain = c->gain, .eps = 1e-5f};
    check_rc(xlkv_cuda_gemv_fused(c->big, 0, 0, c->x, &norm, layer_weight(c, 0), c->batch, DIM, 2560, XLKV_DTYPE_BF16,
                                  c->stream),
             "fused qkv");
    next_layer(c);
}
static void run_rope_kv(void *p) {
    step_ctx *c = p;
    check_rc(xlkv_cuda_rope_kv_write(c->big, 2560, c->batch, HEADS, HEAD_DIM, c->row_seq, c->row_pos, c->cos_t,
                                     c->sin_t, &c->kv, 0, HEADS * HEAD_DIM, HEADS * HEAD_DIM + 256, XLKV_DTYPE_BF16,
                                     c->stream),
             "rope_kv_write");
}
/* RoPE, the K/V write and the decode attention in ONE launch (what the engine runs for these rows by default) */
static void run_rope_attention_fused(void *p) {
    step_ctx *c = p;
    const xlkv_attention_rule rule = {HEADS, KV_HEADS, HEAD_DIM, 0, 0, 0};
    const xlkv_cuda_decode_rope_kv rope_kv = {.cos_table = c->cos_t, .sin_table = c->sin_t, .write_slot = 0,
                                              .k_col = HEADS * HEAD_DIM, .v_col = HEADS * HEAD_DIM + 256};
    check_rc(xlkv_cuda_attention_decode_fused(c->y, c->big, 2560, c->batch, c->row_seq, c->row_pos, c->context + 16,
                                              &c->kv, &rule, &rope_kv, c->workspace, c->attn_counters,
                                              XLKV_DTYPE_BF16, c->stream),
             "rope + attention fused");
}
/* the same work as before: rope_kv_write, then the split-K attention and its combine (three launches) */
static void run_rope_attention_unfused(void *p) {
    step_ctx *c = p;
    run_rope_kv(c);
    const xlkv_attention_rule rule = {HEADS, KV_HEADS, HEAD_DIM, 0, 0, 0};
    check_rc(xlkv_cuda_attention_decode(c->y, c->big, 2560, c->batch, c->row_seq, c->row_pos, c->context + 16, &c->kv,
                                        &rule, c->workspace, XLKV_DTYPE_BF16, c->stream),
             "attention");
}
static void run_fused_o(void *p) {
    step_ctx *c = p;
    check_rc(xlkv_cuda_gemv_fused(c->x, 0, 1, c->y, NULL, layer_weight(c, 1), c->batch, DIM, DIM, XLKV_DTYPE_BF16,
                                  c->stream),
             "fused o");
    next_layer(c);
}
static void run_fused_gate_up(void *p) {
    step_ctx *c = p;
    const xlkv_cuda_gemv_input norm = {.kind = XLKV_GEMV_INPUT_RMSNORM, .gain = c->gain, .eps = 1e-5f};
    check_rc(xlkv_cuda_gemv_fused(c->big, 0, 0, c->x, &norm, layer_weight(c, 2), c->batch, DIM, 2 * FFN,
                                  XLKV_DTYPE_BF16, c->stream),
             "fused gate_up");
    next_layer(c);
}
static void run_fused_down(void *p) {
    step_ctx *c = p;
    const xlkv_cuda_gemv_input swiglu = {.kind = XLKV_GEMV_INPUT_SWIGLU};
    check_rc(xlkv_cuda_gemv_fused(c->x, 0, 1, c->big, &swiglu, layer_weight(c, 3), c->batch, FFN, DIM,
                                  XLKV_DTYPE_BF16, c->stream),
             "fused down");
    next_layer(c);
}
static void run_fused_logits(void *p) {
    step_ctx *c = p;
    const xlkv_cuda_gemv_input norm = {.kind = XLKV_GEMV_INPUT_RMSNORM, .gain = c->gain, .eps = 1e-5f};
    check_rc(xlkv_cuda_gemv_fused(c->logits, 1, 0, c->x, &norm, c->w_out, c->batch, DIM, VOCAB, XLKV_DTYPE_BF16,
                                  c->stream),
             "fused logits");
}
static void run_sample_split(void *p) {
    step_ctx *c = p;
    check_rc(xlkv_cuda_sample_split(c->tokens, c->logits, c->batch, VOCAB, c->sampling, c->history, c->history_len,
                                    c->sample_ws, c->stream),
             "sample_split");
}
static void run_sample(void *p) {
    step_ctx *c = p;
    check_rc(xlkv_cuda_sample(c->tokens, c->logits, c->batch, VOCAB, c->sampling, c->history, c->history_len,
                              c->stream),
             "sample");
}
/* o, gate|up and down of c->layer (and with `with_qkv` the qkv product of the next layer) in ONE launch
 * (xlkv_cuda_gemv_chain, what the engine runs unless XLKV_GEMV_CHAIN=0) */
static void run_chain_stages(step_ctx *c, int with_qkv) {
    const int next = (c->layer + 1) % LAYERS;
    const void *w_o = layer_weight(c, 1), *w_gu = layer_weight(c, 2), *w_down = layer_weight(c, 3);
    c->layer = next;
    const void *w_qkv = layer_weight(c, 0);
    const xlkv_cuda_gemv_input norm = {.kind = XLKV_GEMV_INPUT_RMSNORM, .gain = c->gain, .eps = 1e-5f};
    const xlkv_cuda_gemv_stage stages[4] = {
        {.y = c->x, .accumulate = 1, .x = c->y, .w = w_o, .in = DIM, .out = DIM},
        {.y = c->big, .x = c->x, .input = norm, .w = w_gu, .in = DIM, .out = 2 * FFN},
        {.y = c->x, .accumulate = 1, .x = c->big, .input = {.kind = XLKV_GEMV_INPUT_SWIGLU}, .w = w_down, .in = FFN,
         .out = DIM},
        {.y = c->big, .x = c->x, .input = norm, .w = w_qkv, .in = DIM, .out = 2560},
    };
    check_rc(xlkv_cuda_gemv_chain(stages, with_qkv ? 4 : 3, c->batch, XLKV_DTYPE_BF16, c->stream), "gemv chain");
    if (!c->rotate_layers) c->layer = (c->layer + LAYERS - 1) % LAYERS;
}
static void run_chain_mlp(void *p) { run_chain_stages(p, 0); }
static void run_chain_mlp_qkv(void *p) { run_chain_stages(p, 1); }
/* One decode step the way cuda_executor.c runs it for few rows (embedding left out: one tiny copy). */
static void run_fused_step(void *p) {
    step_ctx *c = p;
    for (int l = 0; l < LAYERS; l++) {
        c->layer = l;
        if (c->chain != 4 || l == 0) run_fused_qkv(c); /* else the previous layer's chain computed it */
        if (c->unfused_attention)
            run_rope_attention_unfused(c);
        else
            run_rope_attention_fused(c);
        if (c->chain) {
            run_chain_stages(c, c->chain == 4 && l + 1 < LAYERS);
            continue;
        }
        run_fused_o(c);
        run_fused_gate_up(c);
        run_fused_down(c);
    }
    c->layer = 0;
    run_fused_logits(c);
    run_sample_split(c);
}
static cudaGraphExec_t step_graph;
static void run_step_graph(void *p) {
    step_ctx *c = p;
    check(cudaGraphLaunch(step_graph, c->stream), "graph launch");
}

/* Median time of one launch of `fn` inside a CUDA graph of LAYERS launches (each on the next layer's weights when
 * the piece rotates): the kernel with the gaps a graph leaves, without the host's launch latency. */
static cudaGraphExec_t piece_graph;
static void run_piece_graph(void *p) {
    step_ctx *c = p;
    check(cudaGraphLaunch(piece_graph, c->stream), "graph launch");
}
static double graph_us_per_launch(launch_fn fn, step_ctx *c) {
    for (int l = 0; l < LAYERS; l++) fn(c); /* direct first: kernel attributes are set outside the capture */
    check(cudaStreamSynchronize(c->stream), "sync");
    cudaGraph_t graph;
    check(cudaStreamBeginCapture(c->stream, cudaStreamCaptureModeThreadLocal), "capture");
    for (int l = 0; l < LAYERS; l++) fn(c);
    check(cudaStreamEndCapture(c->stream, &graph), "capture");
    check(cudaGraphInstantiate(&piece_graph, graph, 0), "instantiate");
    const double ms = time_ms(run_piece_graph, c, c->stream);
    cudaGraphExecDestroy(piece_graph);
    cudaGraphDestroy(graph);
    return ms * 1e3 / LAYERS;
}

/* The fused pieces one by one, then the whole step in one graph, with the few-row kernel the environment selects;
 * with `with_chain` also the chained products (xlkv_cuda_gemv_chain) alone and in the step. */
static void bench_fused_kernel(step_ctx *c, const char *kernel, int with_chain) {
    const size_t per_layer = QKV_W + O_W + GU_W + DOWN_W;
    printf("\nfused few-row path (what the engine runs at batch %d), %s, one launch each (launch gaps included)\n",
           c->batch, kernel);
    printf("%-28s %10s %12s %14s %12s\n", "piece", "us", "GB/s", "us in graph", "GB/s");
    struct { const char *name; launch_fn fn; double weight_bytes; } pieces[] = {
        {"qkv product + rmsnorm in", run_fused_qkv, 2.0 * (double)QKV_W},
        {"rope_kv_write", run_rope_kv, 0},
        {"rope_kv_write + attention", run_rope_attention_unfused, 0},
        {"rope + attention fused", run_rope_attention_fused, 0},
        {"o product + residual", run_fused_o, 2.0 * (double)O_W},
        {"gate_up product + rmsnorm in", run_fused_gate_up, 2.0 * (double)GU_W},
        {"down product + swiglu, resid", run_fused_down, 2.0 * (double)DOWN_W},
        {"logits product + rmsnorm in", run_fused_logits, 2.0 * (double)VOCAB * DIM},
        {"sample_split (greedy)", run_sample_split, 0},
        {"sample one CTA (greedy)", run_sample, 0},
        {"chain o,gate_up,down (1 launch)", run_chain_mlp, 2.0 * (double)(O_W + GU_W + DOWN_W)},
        {"chain o,gate_up,down,next qkv", run_chain_mlp_qkv, 2.0 * (double)(O_W + GU_W + DOWN_W + QKV_W)},
    };
    double products_us = 0, products_graph_us = 0;
    c->rotate_layers = 1;
    for (size_t i = 0; i < sizeof pieces / sizeof pieces[0]; i++) {
        if (!with_chain && (pieces[i].fn == run_chain_mlp || pieces[i].fn == run_chain_mlp_qkv)) continue;
        const double ms = time_ms(pieces[i].fn, c, c->stream);
        const double graph_us = graph_us_per_launch(pieces[i].fn, c);
        if (pieces[i].weight_bytes > 0)
            printf("%-28s %10.1f %12.0f %14.1f %12.0f\n", pieces[i].name, ms * 1e3, pieces[i].weight_bytes / ms / 1e6,
                   graph_us, pieces[i].weight_bytes / graph_us / 1e3);
        else
            printf("%-28s %10.1f %12s %14.1f\n", pieces[i].name, ms * 1e3, "", graph_us);
        if (pieces[i].fn == run_fused_qkv || pieces[i].fn == run_fused_o || pieces[i].fn == run_fused_gate_up ||
            pieces[i].fn == run_fused_down) {
            products_us += ms * 1e3;
            products_graph_us += graph_us;
        }
    }
    c->rotate_layers = 0;
    c->layer = 0;
    printf("four products: %.1f us per layer (%.0f GB/s over %.1f MB of weights); in graphs %.1f us (%.0f GB/s)\n",
           products_us, 2.0 * (double)per_layer / products_us / 1e3, 2.0 * (double)per_layer / 1e6, products_graph_us,
           2.0 * (double)per_layer / products_graph_us / 1e3);

    /* the whole step in one graph: rope + attention fused (the default), then the three launches it replaces; with
     * `with_chain` then the chained products (MLP half; MLP half + next qkv: what the engine runs by default) */
    for (int variant = 0; variant < (with_chain ? 4 : 2); variant++) {
        const int unfused = variant == 1;
        c->unfused_attention = unfused;
        c->chain = variant == 2 ? 3 : variant == 3 ? 4 : 0;
        run_fused_step(c); /* direct run first: sets kernel attributes outside the capture */
        check(cudaStreamSynchronize(c->stream), "sync");
        cudaGraph_t graph;
        check(cudaStreamBeginCapture(c->stream, cudaStreamCaptureModeThreadLocal), "capture");
        run_fused_step(c);
        check(cudaStreamEndCapture(c->stream, &graph), "capture");
        check(cudaGraphInstantiate(&step_graph, graph, 0), "instantiate");
        const double ms = time_ms(run_step_graph, c, c->stream);
        const double weights = (double)LAYERS * 2.0 * (double)per_layer + 2.0 * (double)VOCAB * DIM;
        const double kv = (double)LAYERS * c->batch * c->context * 2 * 256 * 2;
        printf("decode step in one CUDA graph (%s): %.1f us -> %.0f tokens/s at batch %d; %.0f GB/s of weights + "
               "KV (%.2f GB per step)\n",
               variant == 1   ? "rope_kv_write + 2-launch attention, XLKV_DECODE_FUSED=0"
               : variant == 2 ? "rope + attention fused, o,gate_up,down chained, XLKV_GEMV_CHAIN=mlp"
               : variant == 3 ? "rope + attention fused, o,gate_up,down,next qkv chained, XLKV_GEMV_CHAIN=1"
                              : "rope + attention fused, products separate, XLKV_GEMV_CHAIN=0",
               ms * 1e3, c->batch * 1e3 / ms, c->batch, (weights + kv) / ms / 1e6, (weights + kv) / 1e9);
        cudaGraphExecDestroy(step_graph);
        cudaGraphDestroy(graph);
    }
    c->unfused_attention = 0;
    c->chain = 0;
}

static void bench_fused(step_ctx *c) {
    const size_t per_layer = QKV_W + O_W + GU_W + DOWN_W;
    c->layers = device_random((size_t)LAYERS * per_layer * 2);
    c->sample_ws = NULL;
    check(cudaMalloc(&c->sample_ws, xlkv_cuda_sample_split_workspace(c->batch, VOCAB)), "sample workspace");
    xlkv_cuda_sampling greedy[XLKV_CUDA_GEMV_MAX_ROWS];
    memset(greedy, 0, sizeof greedy);
    for (int b = 0; b < XLKV_CUDA_GEMV_MAX_ROWS; b++) {
        greedy[b].top_p = 1.0f;
        greedy[b].repeat_penalty = 1.0f;
    }
    check(cudaMalloc((void **)&c->sampling, sizeof greedy), "sampling");
    check(cudaMemcpy(c->sampling, greedy, sizeof greedy, cudaMemcpyHostToDevice), "sampling");
    check(cudaMalloc((void **)&c->history, sizeof(int) * XLKV_CUDA_GEMV_MAX_ROWS * XLKV_CUDA_PENALTY_WINDOW), "history");
    check(cudaMalloc((void **)&c->history_len, sizeof(int) * XLKV_CUDA_GEMV_MAX_ROWS), "history");
    check(cudaMemset(c->history_len, 0, sizeof(int) * XLKV_CUDA_GEMV_MAX_ROWS), "history");
    c->layer = 0;
    /* the kernels as programmatic dependent launches (the default) and launched normally (XLKV_GEMV=plain), in the
     * same run */
    bench_fused_kernel(c, "programmatic dependent launches (default)", 1);
    if (setenv("XLKV_GEMV", "plain", 1) != 0) exit(1);
    bench_fused_kernel(c, "normal launches, XLKV_GEMV=plain", 0);
    if (unsetenv("XLKV_GEMV") != 0) exit(1);
}

/* ---- large batches: one half-batch's attention beside the other half's products (two streams) ----
 * A lane = rows [row0, row0 + n) with its own stream, cuBLAS handle, qkv / output buffer and attention workspace: a
 * layer is the fused decode attention of its rows, then the four products (qkv, o, gate|up, down) of its rows. */
typedef struct half_lane {
    cudaStream_t stream;
    xlkv_cuda_gemm gemm;
    int row0, n;
    void *big;        /* the lane's qkv rows (stride 2560) and products' outputs */
    float *workspace; /* the lane's decode attention partials */
} half_lane;

static void lane_attention(step_ctx *c, half_lane *l) {
    const xlkv_attention_rule rule = {HEADS, KV_HEADS, HEAD_DIM, 0, 0, 0};
    const xlkv_cuda_decode_rope_kv rope_kv = {.cos_table = c->cos_t, .sin_table = c->sin_t, .write_slot = 0,
                                              .k_col = HEADS * HEAD_DIM, .v_col = HEADS * HEAD_DIM + 256};
    check_rc(xlkv_cuda_attention_decode_fused((char *)c->y + (size_t)l->row0 * HEADS * HEAD_DIM * 2, l->big, 2560, l->n,
                                              c->row_seq + l->row0, c->row_pos + l->row0, c->context + 16, &c->kv,
                                              &rule, &rope_kv, l->workspace,
                                              c->attn_counters + (size_t)l->row0 * KV_HEADS, XLKV_DTYPE_BF16,
                                              l->stream),
             "lane attention");
}
static void lane_products(step_ctx *c, half_lane *l) {
    const struct { const void *w; int in, out; } p[4] = {
        {c->w_qkv, DIM, 2560}, {c->w_o, DIM, DIM}, {c->w_gu, DIM, 2 * FFN}, {c->w_down, FFN, DIM}};
    for (int g = 0; g < 4; g++)
        if (xlkv_cuda_linear(&l->gemm, l->big, (const char *)c->x + (size_t)l->row0 * p[g].in * 2, p[g].w, l->n,
                             p[g].in, p[g].out) != XLKV_OK)
            exit(1);
}

typedef struct overlap_ctx {
    step_ctx *c;
    half_lane all, a, b; /* all rows on the main stream; the halves: a on the main stream, b on the second */
    cudaEvent_t fork, a_first, b_done;
} overlap_ctx;

/* 22 layers of all rows on one stream: what the engine runs */
static void run_layers_one_stream(void *p) {
    overlap_ctx *o = p;
    for (int layer = 0; layer < LAYERS; layer++) {
        lane_attention(o->c, &o->all);
        lane_products(o->c, &o->all);
    }
}
/* 22 layers of each half, both on the main stream, one half after the other (the cost of halving the products) */
static void run_halves_one_stream(void *p) {
    overlap_ctx *o = p;
    half_lane a = o->a, b = o->b;
    b.stream = a.stream;
    b.gemm = a.gemm;
    for (int layer = 0; layer < LAYERS; layer++) {
        lane_attention(o->c, &a);
        lane_products(o->c, &a);
        lane_attention(o->c, &b);
        lane_products(o->c, &b);
    }
}
/* 22 layers of each half on its own stream, b half a layer behind a (it starts once a's first attention is done),
 * launched interleaved: a's attention can run beside b's products and the other way round */
static void run_halves_two_streams(void *p) {
    overlap_ctx *o = p;
    check(cudaEventRecord(o->fork, o->a.stream), "fork");
    check(cudaStreamWaitEvent(o->b.stream, o->fork, 0), "fork");
    for (int layer = 0; layer < LAYERS; layer++) {
        lane_attention(o->c, &o->a);
        if (layer == 0) {
            check(cudaEventRecord(o->a_first, o->a.stream), "a first");
            check(cudaStreamWaitEvent(o->b.stream, o->a_first, 0), "a first");
        }
        lane_attention(o->c, &o->b);
        lane_products(o->c, &o->a);
        lane_products(o->c, &o->b);
    }
    check(cudaEventRecord(o->b_done, o->b.stream), "join");
    check(cudaStreamWaitEvent(o->a.stream, o->b_done, 0), "join");
}

/* Prints the three timings (per layer) for this batch: whether running the memory-bound attention of one half beside
 * the compute-bound products of the other could shorten a large-batch step. */
static void bench_overlap(step_ctx *c) {
    overlap_ctx o = {.c = c};
    const int h = c->batch / 2;
    const size_t ws = xlkv_cuda_attention_decode_workspace(c->batch, HEADS, HEAD_DIM, c->context + 16);
    o.all = (half_lane){.stream = c->stream, .gemm = c->gemm, .row0 = 0, .n = c->batch, .big = c->big,
                        .workspace = c->workspace};
    o.a = (half_lane){.stream = c->stream, .gemm = c->gemm, .row0 = 0, .n = h, .big = c->big,
                      .workspace = c->workspace};
    o.b = (half_lane){.row0 = h, .n = c->batch - h};
    check(cudaStreamCreateWithFlags(&o.b.stream, cudaStreamNonBlocking), "stream");
    if (xlkv_cuda_gemm_init(&o.b.gemm, XLKV_DTYPE_BF16, o.b.stream) != XLKV_OK) exit(1);
    o.b.big = device_random((size_t)c->batch * 2 * FFN * 2);
    check(cudaMalloc((void **)&o.b.workspace, ws * sizeof(float)), "workspace");
    check(cudaEventCreateWithFlags(&o.fork, cudaEventDisableTiming), "event");
    check(cudaEventCreateWithFlags(&o.a_first, cudaEventDisableTiming), "event");
    check(cudaEventCreateWithFlags(&o.b_done, cudaEventDisableTiming), "event");
    const double one = time_ms(run_layers_one_stream, &o, c->stream) * 1e3 / LAYERS;
    const double halves = time_ms(run_halves_one_stream, &o, c->stream) * 1e3 / LAYERS;
    const double two = time_ms(run_halves_two_streams, &o, c->stream) * 1e3 / LAYERS;
    printf("overlap, 22 layers of fused attention + 4 products, per layer: all %d rows on one stream %.1f us; two "
           "halves of %d / %d rows one after the other %.1f us; the halves on two streams, half a layer apart, %.1f us "
           "(x%.2f against one stream)\n",
           c->batch, one, h, c->batch - h, halves, two, one / two);
    xlkv_cuda_gemm_free(&o.b.gemm);
    cudaFree(o.b.big);
    cudaFree(o.b.workspace);
    cudaEventDestroy(o.fork);
    cudaEventDestroy(o.a_first);
    cudaEventDestroy(o.b_done);
    cudaStreamDestroy(o.b.stream);
}

int main(int argc, char **argv) {
    int batch = 608, context = 768;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--batch")) batch = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--context")) context = atoi(argv[i + 1]);
    }
    int count = 0;
    if (cudaGetDeviceCount(&count) != cudaSuccess || count == 0) {
        printf("bench_gpu_step: needs a CUDA device; none found\n");
        return 0;
    }
    step_ctx c = {.batch = batch, .context = context};
    check(cudaStreamCreate(&c.stream), "stream");
    if (xlkv_cuda_gemm_init(&c.gemm, XLKV_DTYPE_BF16, c.stream) != XLKV_OK) return 1;
    const size_t rows = (size_t)batch;
    c.x = device_random(rows * FFN * 2); /* the input of every product, the down product's included */
    c.y = device_random(rows * 2 * FFN * 2);
    c.big = device_random(rows * 2 * FFN * 2);
    c.w_qkv = device_random((size_t)2560 * DIM * 2);
    c.w_o = device_random((size_t)DIM * DIM * 2);
    c.w_gu = device_random((size_t)2 * FFN * DIM * 2);
    c.w_down = device_random((size_t)DIM * FFN * 2);
    c.w_out = device_random((size_t)VOCAB * DIM * 2);
    c.gain = device_random(DIM * 2);
    check(cudaMalloc((void **)&c.logits, rows * VOCAB * sizeof(float)), "logits");
    check(cudaMemset(c.logits, 0x3c, rows * VOCAB * sizeof(float)), "logits");
    const int block = 16, blocks_per_seq = (context + 16 + block - 1) / block;
    c.kv = (xlkv_paged_kv){.n_slots = 1, .block_size = block, .kv_dim = KV_HEADS * HEAD_DIM,
                           .max_blocks_per_seq = blocks_per_seq};
    c.kv.pool = device_random(rows * blocks_per_seq * 2 * block * 256 * 2);
    int *tables = malloc(rows * blocks_per_seq * sizeof(int)), *seqs = malloc(rows * sizeof(int)),
        *pos = malloc(rows * sizeof(int));
    for (size_t i = 0; i < rows * (size_t)blocks_per_seq; i++) tables[i] = (int)i;
    for (size_t b = 0; b < rows; b++) {
        seqs[b] = (int)b;
        pos[b] = context - 1;
    }
    int *d_tables;
    check(cudaMalloc((void **)&d_tables, rows * blocks_per_seq * sizeof(int)), "tables");
    check(cudaMemcpy(d_tables, tables, rows * blocks_per_seq * sizeof(int), cudaMemcpyHostToDevice), "tables");
    c.kv.block_tables = d_tables;
    check(cudaMalloc((void **)&c.row_seq, rows * sizeof(int)), "seq");
    check(cudaMalloc((void **)&c.row_pos, rows * sizeof(int)), "pos");
    check(cudaMalloc((void **)&c.tokens, rows * sizeof(int)), "tokens");
    check(cudaMemcpy(c.row_seq, seqs, rows * sizeof(int), cudaMemcpyHostToDevice), "seq");
    check(cudaMemcpy(c.row_pos, pos, rows * sizeof(int), cudaMemcpyHostToDevice), "pos");
    check(cudaMalloc((void **)&c.attn_counters,
                     xlkv_cuda_attention_decode_fused_counters(batch, KV_HEADS) * sizeof(unsigned)),
          "counters");
    check(cudaMemset(c.attn_counters, 0, xlkv_cuda_attention_decode_fused_counters(batch, KV_HEADS) * sizeof(unsigned)),
          "counters");
    size_t ws = xlkv_cuda_attention_decode_workspace(batch, HEADS, HEAD_DIM, context + 16);
    check(cudaMalloc((void **)&c.workspace, ws * sizeof(float)), "workspace");
    c.cos_t = device_random((size_t)(context + 16) * 32 * 4);
    c.sin_t = device_random((size_t)(context + 16) * 32 * 4);

    printf("decode step pieces, tinyllama bf16, batch %d, context %d (per layer unless noted)\n", batch, context);
    printf("%-28s %10s %12s %12s\n", "piece", "us", "GB/s", "TFLOP/s");
    struct { const char *name; const void *w; int in, out; } gemms[] = {
        {"qkv product", c.w_qkv, DIM, 2560}, {"o product", c.w_o, DIM, DIM},
        {"gate_up product", c.w_gu, DIM, 2 * FFN}, {"down product", c.w_down, FFN, DIM}};
    double layer_us = 0;
    for (int g = 0; g < 4; g++) {
        c.gemm_n = batch;
        c.gemm_in = gemms[g].in;
        c.gemm_out = gemms[g].out;
        c.gemm_w = gemms[g].w;
        double ms = time_ms(run_gemm, &c, c.stream);
        double bytes = 2.0 * ((double)gemms[g].in * gemms[g].out + (double)batch * (gemms[g].in + gemms[g].out));
        double flops = 2.0 * batch * (double)gemms[g].in * gemms[g].out;
        printf("%-28s %10.1f %12.0f %12.1f\n", gemms[g].name, ms * 1e3, bytes / ms / 1e6, flops / ms / 1e9);
        layer_us += ms * 1e3;
    }
    double ms = time_ms(run_attention, &c, c.stream);
    double kv_bytes = (double)batch * context * 2 * 256 * 2;
    printf("%-28s %10.1f %12.0f %12s\n", "decode attention", ms * 1e3, kv_bytes / ms / 1e6, "-");
    layer_us += ms * 1e3;
    /* what the engine runs for decode rows: RoPE, the K/V write and the attention in one launch, against the three
     * launches it replaces (rope_kv_write, pass 1, combine); the sum below counts the attention + kv_write lines */
    const double unfused_ms = time_ms(run_rope_attention_unfused, &c, c.stream);
    printf("%-28s %10.1f %12.0f %12s\n", "rope_kv_write + attention", unfused_ms * 1e3, kv_bytes / unfused_ms / 1e6,
           "-");
    const double fused_ms = time_ms(run_rope_attention_fused, &c, c.stream);
    printf("%-28s %10.1f %12.0f %12s   (x%.2f)\n", "rope + attention fused", fused_ms * 1e3, kv_bytes / fused_ms / 1e6,
           "-", unfused_ms / fused_ms);
    launch_fn small[] = {run_rmsnorm, run_swiglu, run_kv_write};
    const char *small_names[] = {"add_rmsnorm", "swiglu", "kv_write"};
    for (int k = 0; k < 3; k++) {
        ms = time_ms(small[k], &c, c.stream);
        printf("%-28s %10.1f\n", small_names[k], ms * 1e3);
        layer_us += ms * 1e3 * (k == 0 ? 2 : 1);
    }
    ms = time_ms(run_logits, &c, c.stream);
    printf("%-28s %10.1f   (once per step)\n", "logits product", ms * 1e3);
    double step_us = layer_us * LAYERS + ms * 1e3;
    ms = time_ms(run_argmax, &c, c.stream);
    printf("%-28s %10.1f   (once per step)\n", "argmax", ms * 1e3);
    step_us += ms * 1e3;
    printf("sum of pieces: %.1f us per layer, %.2f ms per step (rope and launch gaps not counted)\n", layer_us,
           step_us / 1e3);
    if (batch <= XLKV_CUDA_GEMV_MAX_ROWS) bench_fused(&c);
    if (batch >= 64) bench_overlap(&c);
    return 0;
}
#else
int main(void) {
    printf("bench_gpu_step: built without CUDA; needs a GPU build\n");
    return 0;
}
#endif
