/* bench/bench_gpu: GPU inference speed of the engine under the layer maps of BENCHMARKS.md, with random bf16 weights in
 * the `tinyllama` shape (22 layers, hidden 2048, 32/4 heads of 64, FFN 5632, vocab 32000). Not a test.
 *
 * Measures, per map (standard, cla:2, yoco, sandwich-middle:11, lckv:10, lckv:2, sandwich-middle:3):
 *   - decode_b1: batch-1 greedy decode at context 512 (prompt 512, 256 new tokens; the 255 decode steps are timed,
 *     median of --runs) and its fraction of the bandwidth roofline
 *     = (bf16 weight bytes + KV bytes read per token, averaged over the timed steps) x tokens/s / device bandwidth;
 *     KV bytes are counted per reading layer (a slot read by k layers counts k times: what the kernels request);
 *   - prefill: one 2048-token prompt (the first step of a sequence with 1 new token; median of --runs), tokens/s and
 *     fraction of the bf16 matrix peak; FLOPs = 2 x (matrix parameters) per token per layer pass + causal attention
 *     (4 x heads x head_dim per visible key; sliding windows and masked diagonals honoured) + the classifier once
 *     (the engine computes logits of the last row only); a cyclic group's layers count m + b passes, so its cost is
 *     ~(m + b)x on the iterated layers by construction and the fraction of peak says how well that work runs;
 *   - throughput (the papers' protocol): settings prompt+gen 512+512, 5+2043, 512+1024, 2048+2048, each with the whole
 *     GPU and with a 16 GiB budget; batch = the largest that fits, found by
 *       1. one engine at max_batch = --max-batch (4096) under the budget, adding sequences (prompt + gen reserved)
 *          until XLKV_E_CAPACITY: C sequences (if all 4096 fit: batch 4096);
 *       2. refinement above C by doubling the step (C + C/64, C + C/32, ...) then bisection, at most --search-probes
 *          engines (each "fits" = create at max_batch B + B adds succeed; exact, since the pool reserves up front) —
 *          a max_batch-B engine reserves fewer activation rows than the 4096 one, so it may hold a few more; done only
 *          while the search stays within a quarter of the measurement's time share (else the 4096 engine with its C
 *          sequences runs, and the JSON line gives batch C with batch_upper_bound 4096: a lower bound);
 *       (if even the 4096 engine cannot be created: plain doubling from 1, then the same refinement);
 *     then the fixed prompt replicated over the batch, exactly gen new tokens each (ignore_end_tokens), throughput =
 *     batch x gen / wall time including prefill. "Whole GPU" = a budget of the free device memory at start less
 *     1 GiB (kept for cuBLAS workspaces and graphs), so both regimes size the pool the same way.
 *   - bandwidth: 1 GiB cudaMemcpy device to device, bytes read + written, median of 10; peak: cuBLAS bf16 8192^3
 *     GEMM (fp32 accumulation), median of 20 — both measured here, in the same run.
 * yoco needs a sliding window for its standalone layers: 1024 (YOCO's setting), set for every map (only sliding
 * layers use it).
 *
 * Cost (arithmetic for an H100 at ~2.5 TB/s and ~600 TFLOP/s, not measured): the full protocol at the largest
 * batches does not fit one 10-minute GPU command. E.g. 2048+2048 under the standard map holds ~800 sequences on 75 GB:
 * ~2048 decode steps of ~25 ms (55 GB of KV read per step) + 1.6 M prefill tokens = about a minute; lckv:2 holds the
 * 4096 cap, and its prefill (20 of 22 layers iterated 9 times over 8 M tokens) alone is ~4 minutes. So the run is
 * scheduled against --deadline-s (default 450 s = 7.5 minutes, inside the 10-minute limit): calibration ~5 s, model
 * creation ~10-20 s, decode_b1 + prefill ~3-5 s per map, then every throughput measurement gets an equal share of
 * what is left (56 of them: ~6-7 s each, search included), capped by --limit-s. A measurement whose prefill alone is
 * predicted (from the prefill tokens/s measured above) to exceed its share is not started ("skipped"); one that runs
 * out of time stops between steps and is reported with "complete": false and the throughput of the steps done — a
 * partial figure, never presented as the protocol's. To get complete figures for the large settings, run subsets
 * with a longer limit (one command per setting, e.g. --settings 2048+2048 --maps standard,lckv:2 --limit-s 240).
 * --quick (standard and lckv:2, 512+512, 16 GiB, one run each, no refinement) finishes in about a minute.
 *
 * On a machine without CUDA (or a build without the CUDA engine) it says that it needs a GPU and exits 0.
 * The throughput protocol itself (batch search, timed run) is src/eval/throughput.c, the random models
 * src/eval/bench_model.c; `xlkv bench throughput` runs the same protocol from the CLI.
 * --device cpu runs the same protocol on the cpu engine with a small random shape (--shape tiny) to check the program
 * itself; its figures mean nothing. */
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "core/status.h"
#include "core/timing.h"
#include "eval/bench_model.h"
#include "eval/throughput.h"
#include "infer/engine.h"
#include "model/model.h"
#include "model/weights.h"

#ifdef XLKV_HAVE_CUDA
#include <cublas_v2.h>
#include <cuda_runtime.h>
#endif

#define GIB (1024.0 * 1024.0 * 1024.0)
enum { MAX_ITEMS = 16, MAX_RUNS = 16 };

typedef struct setting {
    int prompt;
    int gen;
} setting;

typedef struct budget {
    char name[32];  /* "gpu" or "16GiB" */
    size_t bytes;   /* 0 until resolved for "gpu" */
    bool whole_gpu;
} budget;

typedef struct bench_options {
    const char *device;
    const char *shape;
    const char *out;
    const char *maps[MAX_ITEMS];
    int n_maps;
    setting settings[MAX_ITEMS];
    int n_settings;
    budget budgets[MAX_ITEMS];
    int n_budgets;
    bool do_decode, do_prefill, do_throughput;
    int runs;
    int max_batch;
    int search_probes;
    double limit_s;
    double deadline_s;
    bool quick;
    bool unfused; /* engine param cuda_unfused: the separate kernels instead of the fused few-row products */
    bool no_varlen; /* engine param cuda_no_varlen (or XLKV_CUDA_VARLEN=0): one prompt per prefill pass */
} bench_options;

/* What the JSON lines share. */
typedef struct run_info {
    FILE *out;
    char commit[64];
    char machine[256];
    char date[32];
    const char *shape;
    const char *device;
    bool unfused;
    bool no_varlen;
    const char *gemv_chain;  /* XLKV_GEMV_CHAIN as the engine reads it ("0" when unset: separate launches) */
    const char *gemv_launch; /* XLKV_GEMV as the engine reads it ("pdl" when unset: programmatic dependents) */
    const char *decode_attention; /* "fused" unless XLKV_DECODE_FUSED=0 ("unfused": rope_kv_write + two launches) */
    int decode_max_split;         /* XLKV_DECODE_MAX_SPLIT as the kernels read it (0: unset, the default 1024) */
    double bandwidth;  /* bytes/s, 0 if not measured */
    double peak_flops; /* FLOP/s, 0 if not measured */
} run_info;

/* ---- small helpers ---------------------------------------------------------------------------------------------- */

static int compare_doubles(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median(double *v, int n) {
    if (n <= 0) return 0.0;
    qsort(v, (size_t)n, sizeof *v, compare_doubles);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

static void git_commit(char *buf, size_t cap) {
    const char *given = getenv("XLKV_COMMIT"); /* the GPU machine gets a copy of the tree without .git */
    if (given && *given) {
        snprintf(buf, cap, "%s", given);
        return;
    }
    snprintf(buf, cap, "unknown");
    FILE *p = popen("git rev-parse --short HEAD 2>/dev/null", "r");
    if (!p) return;
    if (fgets(buf, (int)cap, p)) buf[strcspn(buf, "\n")] = '\0';
    pclose(p);
}

/* A JSON string body: quotes, backslashes and control characters escaped. */
static const char *json_escape(const char *text, char *buf, size_t cap) {
    size_t n = 0;
    for (const char *p = text; *p && n + 7 < cap; p++) {
        unsigned char c = (unsigned char)*p;
        if (c == '"' || c == '\\') {
            buf[n++] = '\\';
            buf[n++] = (char)c;
        } else if (c < 0x20) {
            n += (size_t)snprintf(buf + n, cap - n, "\\u%04x", c);
        } else {
            buf[n++] = (char)c;
        }
    }
    buf[n] = '\0';
    return buf;
}

/* ---- model arithmetic: bytes and FLOPs ---------------------------------------------------------------------------- */

static int bytes_per_element(const char *device) { return strcmp(device, "cpu") ? 2 : 4; }

/* Matrix parameters of layer l under the map (K/V projections only for KV layers). */
static double layer_matrix_params(const xlkv_model *m, int l) {
    const xlkv_hparams *hp = &m->hp;
    const double dim = hp->dim, q_dim = (double)hp->n_heads * hp->head_dim;
    const double kv_dim = (double)hp->n_kv_heads * hp->head_dim;
    double params = 2.0 * dim * q_dim + 3.0 * dim * hp->hidden_dim;
    if (xlkv_is_kv_layer(m->map, l)) params += 2.0 * dim * kv_dim;
    return params;
}

/* Bytes of weights read by one decode step at batch 1 (every matrix and norm, the classifier, one embedding row). */
static double decode_weight_bytes(const xlkv_model *m, int element) {
    const xlkv_hparams *hp = &m->hp;
    double params = (double)hp->vocab_size * hp->dim + 2.0 * hp->dim; /* classifier, embedding row, final norm */
    for (int l = 0; l < hp->n_layers; l++) params += layer_matrix_params(m, l) + 2.0 * hp->dim;
    return params * element;
}

static bool masks_diagonal(const xlkv_model *m, int l) { return xlkv_is_cyclic(m->map, l) || m->hp.force_nodiag; }

/* Keys that a query at position t (0-based) of layer l sees. */
static double visible_keys(const xlkv_model *m, int l, int t) {
    double keys = t + 1;
    if (m->map->sliding[l] && m->hp.sliding_window > 0 && keys > m->hp.sliding_window) keys = m->hp.sliding_window;
    if (masks_diagonal(m, l)) keys -= 1;
    return keys < 0 ? 0 : keys;
}

/* KV bytes read by one decode step whose new token sits at position t (every layer reads its source slot). */
static double decode_kv_bytes(const xlkv_model *m, int t, int element) {
    const double kv_dim = (double)m->hp.n_kv_heads * m->hp.head_dim;
    double bytes = 0.0;
    for (int l = 0; l < m->hp.n_layers; l++) bytes += visible_keys(m, l, t) * 2.0 * kv_dim * element;
    return bytes;
}

/* FLOPs of prefilling a T-token prompt with the iteration plan (see the header comment). */
static double prefill_flops(const xlkv_model *m, int T, int iterations, int *out_iterated_layers) {
    const xlkv_hparams *hp = &m->hp;
    const bool plan = T > iterations; /* AUTO mode: shorter chunks of cyclic maps run token by token, once */
    double flops = 2.0 * hp->dim * hp->vocab_size;
    int iterated = 0;
    for (int s = 0; s < m->map->n_plan_steps; s++) {
        const xlkv_plan_step *step = &m->map->plan[s];
        const int passes = step->cyclic && plan ? iterations : 1;
        for (int l = step->first; l <= step->last; l++) {
            double attention = 0.0;
            for (int t = 0; t < T; t++) attention += visible_keys(m, l, t);
            attention *= 4.0 * hp->n_heads * hp->head_dim;
            flops += passes * (2.0 * layer_matrix_params(m, l) * T + attention);
            if (passes > 1) iterated++;
        }
    }
    *out_iterated_layers = iterated;
    return flops;
}

/* ---- device calibration ---------------------------------------------------------------------------------------- */

#ifdef XLKV_HAVE_CUDA
static bool cuda_device_present(char *name, size_t cap, size_t *free_bytes, size_t *total_bytes) {
    int count = 0;
    if (cudaGetDeviceCount(&count) != cudaSuccess || count == 0) return false;
    struct cudaDeviceProp prop;
    if (cudaGetDeviceProperties(&prop, 0) != cudaSuccess) return false;
    snprintf(name, cap, "%s", prop.name);
    return cudaMemGetInfo(free_bytes, total_bytes) == cudaSuccess;
}

/* Device-to-device copy bandwidth, bytes read + written per second, median of 10 copies of 1 GiB. */
static double measure_bandwidth(void) {
    const size_t bytes = (size_t)1 << 30;
    void *a = NULL, *b = NULL;
    double times[10];
    int n = 0;
    cudaEvent_t start, stop;
    if (cudaMalloc(&a, bytes) != cudaSuccess || cudaMalloc(&b, bytes) != cudaSuccess) goto done;
    cudaMemset(a, 1, bytes);
    cudaEventCreate(&start);
    cudaEventCreate(&stop);
    cudaMemcpy(b, a, bytes, cudaMemcpyDeviceToDevice); /* warm-up */
    for (n = 0; n < 10; n++) {
        float ms = 0.0f;
        cudaEventRecord(start, 0);
        cudaMemcpy(b, a, bytes, cudaMemcpyDeviceToDevice);
        cudaEventRecord(stop, 0);
        cudaEventSynchronize(stop);
        cudaEventElapsedTime(&ms, start, stop);
        times[n] = ms * 1e-3;
    }
    cudaEventDestroy(start);
    cudaEventDestroy(stop);
done:
    cudaFree(a);
    cudaFree(b);
    return n ? 2.0 * (double)bytes / median(times, n) : 0.0;
}

/* bf16 GEMM 8192^3 with fp32 accumulation through cuBLAS: FLOP/s, median of 20 (random operands). */
static double measure_gemm_peak(void) {
    const int n = 8192;
    const size_t elements = (size_t)n * (size_t)n;
    uint16_t *host = malloc(elements * sizeof *host);
    void *a = NULL, *b = NULL, *c = NULL;
    cublasHandle_t handle = NULL;
    double times[20];
    int runs = 0;
    if (!host) return 0.0;
    uint64_t state = 88172645463325252ull;
    for (size_t i = 0; i < elements; i++) { /* bf16 in [-1, 1): sign, exponent 0x3f0..0x3f7, random mantissa */
        state ^= state << 13, state ^= state >> 7, state ^= state << 17;
        host[i] = (uint16_t)(((state >> 20) & 0x8000u) | 0x3c00u | ((state >> 32) & 0x03ffu));
    }
    if (cudaMalloc(&a, elements * 2) != cudaSuccess || cudaMalloc(&b, elements * 2) != cudaSuccess ||
        cudaMalloc(&c, elements * 2) != cudaSuccess || cublasCreate(&handle) != CUBLAS_STATUS_SUCCESS)
        goto done;
    cudaMemcpy(a, host, elements * 2, cudaMemcpyHostToDevice);
    cudaMemcpy(b, host, elements * 2, cudaMemcpyHostToDevice);
    const float one = 1.0f, zero = 0.0f;
    cudaEvent_t start, stop;
    cudaEventCreate(&start);
    cudaEventCreate(&stop);
    for (int r = -3; r < 20; r++) {
        float ms = 0.0f;
        cudaEventRecord(start, 0);
        cublasStatus_t s = cublasGemmEx(handle, CUBLAS_OP_N, CUBLAS_OP_N, n, n, n, &one, a, CUDA_R_16BF, n, b,
                                        CUDA_R_16BF, n, &zero, c, CUDA_R_16BF, n, CUBLAS_COMPUTE_32F,
                                        CUBLAS_GEMM_DEFAULT);
        cudaEventRecord(stop, 0);
        cudaEventSynchronize(stop);
        if (s != CUBLAS_STATUS_SUCCESS) break;
        cudaEventElapsedTime(&ms, start, stop);
        if (r >= 0) times[runs++] = ms * 1e-3;
    }
    cudaEventDestroy(start);
    cudaEventDestroy(stop);
done:
    if (handle) cublasDestroy(handle);
    cudaFree(a);
    cudaFree(b);
    cudaFree(c);
    free(host);
    return runs ? 2.0 * (double)n * n * n / median(times, runs) : 0.0;
}
#endif

/* ---- engine runs ------------------------------------------------------------------------------------------------ */

static xlkv_engine_params engine_params(const bench_options *o, int max_batch, int n_ctx, size_t budget_bytes) {
    xlkv_engine_params p = xlkv_engine_default_params();
    p.device = o->device;
    p.max_batch = max_batch;
    p.n_ctx = (n_ctx + 15) / 16 * 16;
    p.memory_budget_bytes = budget_bytes;
    p.ignore_end_tokens = true;
    p.cuda_unfused = o->unfused;
    p.cuda_no_varlen = o->no_varlen;
    return p;
}

typedef struct single_figures {
    double decode_tps, decode_bytes_per_token;
    double prefill_tps, prefill_flops;
    int iterated_layers;
    bool decode_ok, prefill_ok;
    char error[256];
} single_figures;

/* Batch-1 decode at context 512 and prefill of 2048 tokens on one engine. */
static void measure_single(const bench_options *o, const xlkv_model *m, single_figures *f) {
    memset(f, 0, sizeof *f);
    enum { DECODE_PROMPT = 512, DECODE_NEW = 256, PREFILL_PROMPT = 2048 };
    const int element = bytes_per_element(o->device);
    xlkv_engine_params p = engine_params(o, 1, PREFILL_PROMPT + DECODE_NEW, 0);
    xlkv_engine *engine = NULL;
    int *prompt = malloc(PREFILL_PROMPT * sizeof *prompt);
    xlkv_engine_event event;
    int runs = o->runs < MAX_RUNS ? o->runs : MAX_RUNS, seq = -1, n_events = 0;
    double decode[MAX_RUNS], prefill[MAX_RUNS];
    bool complete;
    if (!prompt || xlkv_engine_create(m, &p, &engine) != XLKV_OK) goto fail;
    xlkv_throughput_fill_prompt(prompt, PREFILL_PROMPT, m->hp.vocab_size);
    if (o->do_decode) {
        for (int r = -1; r < runs; r++) { /* run -1: warm-up (CUDA graphs, caches) */
            const int new_tokens = r < 0 ? 32 : DECODE_NEW;
            if (xlkv_engine_add(engine, prompt, DECODE_PROMPT, new_tokens, NULL, &seq) != XLKV_OK ||
                xlkv_engine_step(engine, &event, 1, &n_events) != XLKV_OK)
                goto fail;
            const double start = xlkv_now_seconds();
            long long tokens = xlkv_throughput_run_steps(engine, &event, 1, 1e9, &complete, NULL);
            const double seconds = xlkv_now_seconds() - start;
            if (tokens < 0 || xlkv_engine_remove(engine, seq) != XLKV_OK) goto fail;
            if (r >= 0) decode[r] = (double)tokens / seconds;
        }
        f->decode_tps = median(decode, runs);
        /* the timed steps run the tokens at positions 512 .. 512 + 254 */
        double kv = 0.0;
        for (int t = DECODE_PROMPT; t < DECODE_PROMPT + DECODE_NEW - 1; t++) kv += decode_kv_bytes(m, t, element);
        f->decode_bytes_per_token = decode_weight_bytes(m, element) + kv / (DECODE_NEW - 1);
        f->decode_ok = true;
    }
    if (o->do_prefill) {
        for (int r = -1; r < runs; r++) {
            if (xlkv_engine_add(engine, prompt, PREFILL_PROMPT, 1, NULL, &seq) != XLKV_OK) goto fail;
            const double start = xlkv_now_seconds();
            if (xlkv_engine_step(engine, &event, 1, &n_events) != XLKV_OK) goto fail;
            const double seconds = xlkv_now_seconds() - start;
            if (xlkv_engine_remove(engine, seq) != XLKV_OK) goto fail;
            if (r >= 0) prefill[r] = PREFILL_PROMPT / seconds;
        }
        f->prefill_tps = median(prefill, runs);
        f->prefill_flops = prefill_flops(m, PREFILL_PROMPT, p.iterations ? p.iterations
                                                                         : m->hp.forward_passes + m->hp.backward_passes,
                                         &f->iterated_layers);
        f->prefill_ok = true;
    }
    xlkv_engine_free(engine);
    free(prompt);
    return;
fail:
    snprintf(f->error, sizeof f->error, "%s", xlkv_last_error());
    xlkv_engine_free(engine);
    free(prompt);
}

/* ---- output ----------------------------------------------------------------------------------------------------- */

static void json_begin(const run_info *ri, const char *what, const char *map, const xlkv_model *m) {
    fprintf(ri->out, "{\"bench\": \"gpu\", \"what\": \"%s\", \"shape\": \"%s\", \"device\": \"%s\"", what, ri->shape,
            ri->device);
    if (ri->unfused) fprintf(ri->out, ", \"kernels\": \"unfused\"");
    if (ri->no_varlen) fprintf(ri->out, ", \"prefill\": \"one_by_one\"");
    char buf[64];
    fprintf(ri->out, ", \"gemv_chain\": \"%s\"", json_escape(ri->gemv_chain, buf, sizeof buf));
    fprintf(ri->out, ", \"gemv_launch\": \"%s\"", json_escape(ri->gemv_launch, buf, sizeof buf));
    fprintf(ri->out, ", \"decode_attention\": \"%s\"", ri->decode_attention);
    if (ri->decode_max_split) fprintf(ri->out, ", \"decode_max_split\": %d", ri->decode_max_split);
    if (map) fprintf(ri->out, ", \"map\": \"%s\", \"kv_layers\": %d", map, m->map->n_kv_layers);
}

static void json_end(const run_info *ri, const char *error) {
    char buf[600];
    if (error && *error) fprintf(ri->out, ", \"error\": \"%s\"", json_escape(error, buf, sizeof buf));
    fprintf(ri->out, ", \"commit\": \"%s\", \"machine\": \"%s\", \"date\": \"%s\"}\n", ri->commit,
            json_escape(ri->machine, buf, sizeof buf), ri->date);
    fflush(ri->out);
}

/* ---- options ---------------------------------------------------------------------------------------------------- */

static void usage(FILE *out) {
    fprintf(out,
            "usage: bench_gpu [--maps a,b,...] [--settings 512+512,...] [--budgets gpu,16] [--what decode,prefill,"
            "throughput]\n"
            "                 [--quick] [--runs N] [--max-batch N] [--search-probes N] [--limit-s S] [--deadline-s S]\n"
            "                 [--out FILE.jsonl] [--device cuda|cpu] [--shape tinyllama|tiny]\n"
            "                 [--unfused] (few-row bf16 passes with the separate kernels: the A/B baseline)\n"
            "                 [--no-varlen] (one prompt per prefill pass, as XLKV_CUDA_VARLEN=0: the A/B baseline)\n"
            "  budgets: gpu (the whole device) or a size in GiB (16, 16GiB) or MiB (512MiB)\n");
}

/* Splits a comma list in place into items. */
static int split_list(char *text, const char **items) {
    int n = 0;
    for (char *tok = strtok(text, ","); tok && n < MAX_ITEMS; tok = strtok(NULL, ",")) items[n++] = tok;
    return n;
}

static bool parse_settings(char *text, bench_options *o) {
    const char *items[MAX_ITEMS];
    o->n_settings = split_list(text, items);
    for (int i = 0; i < o->n_settings; i++)
        if (sscanf(items[i], "%d+%d", &o->settings[i].prompt, &o->settings[i].gen) != 2 || o->settings[i].prompt < 1 ||
            o->settings[i].gen < 1) {
            fprintf(stderr, "bench_gpu: --settings: '%s' is not PROMPT+GEN\n", items[i]);
            return false;
        }
    return o->n_settings > 0;
}

static bool parse_budgets(char *text, bench_options *o) {
    const char *items[MAX_ITEMS];
    o->n_budgets = split_list(text, items);
    for (int i = 0; i < o->n_budgets; i++) {
        budget *b = &o->budgets[i];
        memset(b, 0, sizeof *b);
        if (!strcmp(items[i], "gpu")) {
            b->whole_gpu = true;
            snprintf(b->name, sizeof b->name, "gpu");
            continue;
        }
        char *end = NULL;
        double value = strtod(items[i], &end);
        double unit = GIB;
        if (!strcmp(end, "MiB")) unit = GIB / 1024.0;
        else if (*end && strcmp(end, "GiB") != 0) value = -1.0;
        if (!(value > 0.0)) {
            fprintf(stderr, "bench_gpu: --budgets: '%s' is neither gpu nor a size (16, 16GiB, 512MiB)\n", items[i]);
            return false;
        }
        b->bytes = (size_t)(value * unit);
        snprintf(b->name, sizeof b->name, unit == GIB ? "%gGiB" : "%gMiB", value);
    }
    return o->n_budgets > 0;
}

static bool parse_options(int argc, char **argv, bench_options *o) {
    static char default_maps[] = "standard,cla:2,yoco,sandwich-middle:11,lckv:10,lckv:2,sandwich-middle:3";
    static char default_settings[] = "512+512,5+2043,512+1024,2048+2048";
    static char default_budgets[] = "gpu,16";
    static char quick_maps[] = "standard,lckv:2", quick_settings[] = "512+512", quick_budgets[] = "16";
    char *maps = NULL, *settings = NULL, *budgets = NULL, *what = NULL;
    memset(o, 0, sizeof *o);
    o->device = "cuda";
    o->shape = "tinyllama";
    o->out = "bench/results/gpu.jsonl";
    o->runs = 3;
    o->max_batch = 4096;
    o->search_probes = 3;
    o->limit_s = 120.0;
    o->deadline_s = 450.0;
    bool runs_given = false, probes_given = false, deadline_given = false;
    for (int i = 1; i < argc; i++) {
        const char *arg = argv[i];
        const bool has_value = i + 1 < argc;
        if (!strcmp(arg, "--quick")) o->quick = true;
        else if (!strcmp(arg, "--unfused")) o->unfused = true;
        else if (!strcmp(arg, "--no-varlen")) o->no_varlen = true;
        else if (!strcmp(arg, "--maps") && has_value) maps = argv[++i];
        else if (!strcmp(arg, "--settings") && has_value) settings = argv[++i];
        else if (!strcmp(arg, "--budgets") && has_value) budgets = argv[++i];
        else if (!strcmp(arg, "--what") && has_value) what = argv[++i];
        else if (!strcmp(arg, "--out") && has_value) o->out = argv[++i];
        else if (!strcmp(arg, "--device") && has_value) o->device = argv[++i];
        else if (!strcmp(arg, "--shape") && has_value) o->shape = argv[++i];
        else if (!strcmp(arg, "--runs") && has_value) o->runs = atoi(argv[++i]), runs_given = true;
        else if (!strcmp(arg, "--max-batch") && has_value) o->max_batch = atoi(argv[++i]);
        else if (!strcmp(arg, "--search-probes") && has_value) o->search_probes = atoi(argv[++i]), probes_given = true;
        else if (!strcmp(arg, "--limit-s") && has_value) o->limit_s = atof(argv[++i]);
        else if (!strcmp(arg, "--deadline-s") && has_value) o->deadline_s = atof(argv[++i]), deadline_given = true;
        else {
            if (strcmp(arg, "-h") && strcmp(arg, "--help")) fprintf(stderr, "bench_gpu: unknown option '%s'\n", arg);
            usage(stderr);
            return false;
        }
    }
    if (o->quick) {
        if (!maps) maps = quick_maps;
        if (!settings) settings = quick_settings;
        if (!budgets) budgets = quick_budgets;
        if (!runs_given) o->runs = 1;
        if (!probes_given) o->search_probes = 0;
        if (!deadline_given) o->deadline_s = 100.0;
    }
    o->n_maps = split_list(maps ? maps : default_maps, o->maps);
    if (!parse_settings(settings ? settings : default_settings, o)) return false;
    if (!parse_budgets(budgets ? budgets : default_budgets, o)) return false;
    if (what) {
        o->do_decode = strstr(what, "decode") != NULL;
        o->do_prefill = strstr(what, "prefill") != NULL;
        o->do_throughput = strstr(what, "throughput") != NULL;
    } else {
        o->do_decode = o->do_prefill = o->do_throughput = true;
    }
    if (o->runs < 1) o->runs = 1;
    if (o->max_batch < 1) o->max_batch = 1;
    if (o->search_probes < 0) o->search_probes = 0;
    if (strcmp(o->device, "cuda") && strcmp(o->device, "cpu")) {
        fprintf(stderr, "bench_gpu: --device is cuda or cpu\n");
        return false;
    }
    return o->n_maps > 0;
}

/* ---- main ------------------------------------------------------------------------------------------------------- */

int main(int argc, char **argv) {
    bench_options o;
    if (!parse_options(argc, argv, &o)) return 2;
    const double start = xlkv_now_seconds(), deadline = start + o.deadline_s;
    const char *varlen = getenv("XLKV_CUDA_VARLEN");
    if (varlen && !strcmp(varlen, "0")) o.no_varlen = true; /* the engine reads it too: the JSON says so */
    run_info ri = {.shape = o.shape, .device = o.device, .unfused = o.unfused, .no_varlen = o.no_varlen};
    const char *gemv_chain = getenv("XLKV_GEMV_CHAIN"); /* the products of a batch-1 layer in one launch (A/B) */
    ri.gemv_chain = gemv_chain && *gemv_chain ? gemv_chain : "0";
    const char *gemv_launch = getenv("XLKV_GEMV"); /* the products as programmatic dependents or not (A/B) */
    ri.gemv_launch = gemv_launch && *gemv_launch ? gemv_launch : "pdl";
    const char *decode_fused = getenv("XLKV_DECODE_FUSED"); /* the decode attention in one launch or three (A/B) */
    ri.decode_attention = decode_fused && !strcmp(decode_fused, "0") ? "unfused" : "fused";
    const char *max_split = getenv("XLKV_DECODE_MAX_SPLIT"); /* the decode attention's longest split (A/B) */
    ri.decode_max_split = max_split ? atoi(max_split) : 0;
    size_t device_free = 0, device_total = 0;
    const bool on_cuda = !strcmp(o.device, "cuda");
    if (on_cuda) {
        if (!xlkv_engine_backend_cuda()) {
            printf("bench_gpu: needs a GPU: this build has no CUDA engine (nothing measured)\n");
            return 0;
        }
#ifdef XLKV_HAVE_CUDA
        if (!cuda_device_present(ri.machine, sizeof ri.machine, &device_free, &device_total)) {
            printf("bench_gpu: needs a GPU: no CUDA device is visible (nothing measured)\n");
            return 0;
        }
#endif
    } else {
        char host[128] = "unknown";
        gethostname(host, sizeof host - 1);
        snprintf(ri.machine, sizeof ri.machine, "cpu (%s)", host);
        device_total = device_free = (size_t)(64 * GIB); /* "gpu" budget stand-in for the cpu check */
    }
    xlkv_hparams hp;
    if (!xlkv_bench_shape_hparams(o.shape, &hp)) {
        fprintf(stderr, "bench_gpu: unknown shape '%s' (tinyllama, small, tiny)\n", o.shape);
        return 2;
    }
    ri.out = fopen(o.out, "a");
    if (!ri.out) {
        fprintf(stderr, "bench_gpu: cannot append to %s\n", o.out);
        return 1;
    }
    git_commit(ri.commit, sizeof ri.commit);
    time_t now = time(NULL);
    strftime(ri.date, sizeof ri.date, "%Y-%m-%dT%H:%M:%SZ", gmtime(&now));
    printf("bench_gpu: %s, %.1f GiB (%.1f free), commit %s, deadline %.0f s\n", ri.machine, device_total / GIB,
           device_free / GIB, ri.commit, o.deadline_s);
    for (int b = 0; b < o.n_budgets; b++)
        if (o.budgets[b].whole_gpu)
            o.budgets[b].bytes = device_free > (size_t)GIB ? device_free - (size_t)GIB : device_free;

#ifdef XLKV_HAVE_CUDA
    if (on_cuda) {
        ri.bandwidth = measure_bandwidth();
        ri.peak_flops = measure_gemm_peak();
        printf("device copy bandwidth %.2f TB/s (read + write), bf16 GEMM 8192^3 %.1f TFLOP/s\n", ri.bandwidth / 1e12,
               ri.peak_flops / 1e12);
        json_begin(&ri, "bandwidth", NULL, NULL);
        fprintf(ri.out, ", \"bytes_per_s\": %.4g, \"buffer_bytes\": %zu", ri.bandwidth, (size_t)1 << 30);
        json_end(&ri, NULL);
        json_begin(&ri, "gemm_peak", NULL, NULL);
        fprintf(ri.out, ", \"flops_per_s\": %.4g, \"m\": 8192, \"n\": 8192, \"k\": 8192, \"dtype\": \"bf16\"",
                ri.peak_flops);
        json_end(&ri, NULL);
    }
#endif

    /* one random model (standard map); every map is a view of its weights */
    double t0 = xlkv_now_seconds();
    xlkv_model *base = NULL;
    if (xlkv_bench_random_model(&hp, &base) != XLKV_OK) {
        fprintf(stderr, "bench_gpu: %s\n", xlkv_last_error());
        fclose(ri.out);
        return 1;
    }
    printf("random %s model in %.1f s\n", o.shape, xlkv_now_seconds() - t0);
    xlkv_model views[MAX_ITEMS];
    single_figures singles[MAX_ITEMS];
    memset(singles, 0, sizeof singles);
    int n_views = 0;
    for (int i = 0; i < o.n_maps; i++) {
        if (xlkv_bench_map_view(base, o.maps[i], &views[n_views]) != XLKV_OK) {
            fprintf(stderr, "bench_gpu: map '%s': %s\n", o.maps[i], xlkv_last_error());
            continue;
        }
        o.maps[n_views++] = o.maps[i];
    }

    if (o.do_decode || o.do_prefill) {
        for (int i = 0; i < n_views; i++) {
            if (xlkv_now_seconds() > deadline) {
                snprintf(singles[i].error, sizeof singles[i].error, "skipped: deadline");
            } else {
                t0 = xlkv_now_seconds();
                measure_single(&o, &views[i], &singles[i]);
                printf("%-18s decode b1 %8.1f tokens/s, prefill 2048 %9.1f tokens/s (%.1f s, XLKV_GEMV_CHAIN=%s, "
                       "XLKV_GEMV=%s)%s%s\n",
                       o.maps[i], singles[i].decode_tps, singles[i].prefill_tps, xlkv_now_seconds() - t0, ri.gemv_chain,
                       ri.gemv_launch, singles[i].error[0] ? ": " : "", singles[i].error);
            }
            const single_figures *f = &singles[i];
            if (o.do_decode) {
                json_begin(&ri, "decode_b1", o.maps[i], &views[i]);
                fprintf(ri.out, ", \"prompt\": 512, \"gen\": 256, \"runs\": %d, \"tokens_per_s\": %.2f, "
                                "\"bytes_per_token\": %.6g, \"roofline_fraction\": %.4f",
                        o.runs, f->decode_tps, f->decode_bytes_per_token,
                        ri.bandwidth > 0 ? f->decode_bytes_per_token * f->decode_tps / ri.bandwidth : 0.0);
                json_end(&ri, f->decode_ok ? NULL : f->error);
            }
            if (o.do_prefill) {
                json_begin(&ri, "prefill", o.maps[i], &views[i]);
                fprintf(ri.out, ", \"prompt\": 2048, \"runs\": %d, \"tokens_per_s\": %.2f, \"flops\": %.6g, "
                                "\"iterated_layers\": %d, \"flops_per_s\": %.4g, \"peak_fraction\": %.4f",
                        o.runs, f->prefill_tps, f->prefill_flops, f->iterated_layers,
                        f->prefill_tps * f->prefill_flops / 2048.0,
                        ri.peak_flops > 0 ? f->prefill_tps * f->prefill_flops / 2048.0 / ri.peak_flops : 0.0);
                json_end(&ri, f->prefill_ok ? NULL : f->error);
            }
        }
    }

    /* throughput: setting x budget x map, each with an equal share of the time left */
    static xlkv_throughput_figures results[MAX_ITEMS][MAX_ITEMS][MAX_ITEMS];
    if (o.do_throughput) {
        const int total = o.n_settings * o.n_budgets * n_views;
        int done = 0;
        for (int s = 0; s < o.n_settings; s++)
            for (int b = 0; b < o.n_budgets; b++)
                for (int i = 0; i < n_views; i++, done++) {
                    xlkv_throughput_figures *f = &results[s][b][i];
                    const double share = (deadline - xlkv_now_seconds()) / (total - done);
                    const double limit = share < o.limit_s ? share : o.limit_s;
                    const setting st = o.settings[s];
                    if (limit < 2.0) {
                        memset(f, 0, sizeof *f);
                        f->skipped = "the run's deadline leaves no time";
                    } else {
                        xlkv_throughput_params tp = xlkv_throughput_default_params();
                        tp.device = o.device;
                        tp.max_batch = o.max_batch;
                        tp.search_probes = o.search_probes;
                        tp.limit_s = limit;
                        tp.prefill_tps = singles[i].prefill_tps;
                        tp.budget_bytes = o.budgets[b].bytes;
                        xlkv_throughput_measure(&views[i], &tp, st.prompt, st.gen, f); /* failures: f->error */
                    }
                    const char *note = f->error[0] ? f->error : f->skipped ? f->skipped : f->complete ? "" : "PARTIAL";
                    printf("%4d+%-4d %-6s %-18s batch %5d%s %10.1f tokens/s (search %d engines, %.1f s; run %.1f s) "
                           "%s\n",
                           st.prompt, st.gen, o.budgets[b].name, o.maps[i], f->batch,
                           f->upper_bound == f->batch + 1 || f->upper_bound > o.max_batch ? " " : "+", f->tokens_per_s,
                           f->probes, f->search_seconds, f->seconds, note);
                    fflush(stdout);
                    json_begin(&ri, "throughput", o.maps[i], &views[i]);
                    fprintf(ri.out,
                            ", \"setting\": \"%d+%d\", \"prompt\": %d, \"gen\": %d, \"budget\": \"%s\", "
                            "\"budget_bytes\": %zu, \"batch\": %d, \"batch_upper_bound\": %d, \"search_engines\": %d, "
                            "\"search_s\": %.2f, \"pool_bytes\": %zu, \"device_bytes\": %zu, \"tokens\": %lld, "
                            "\"run_s\": %.3f, \"prefill_step_s\": %.3f, \"tokens_per_s\": %.2f, \"complete\": %s, "
                            "\"time_limit_s\": %.1f",
                            st.prompt, st.gen, st.prompt, st.gen, o.budgets[b].name, o.budgets[b].bytes, f->batch,
                            f->upper_bound, f->probes, f->search_seconds, f->pool_bytes, f->device_bytes, f->tokens,
                            f->seconds, f->prefill_seconds, f->tokens_per_s, f->complete ? "true" : "false", limit);
                    if (f->skipped) fprintf(ri.out, ", \"skipped\": \"%s\"", f->skipped);
                    json_end(&ri, f->error);
                }
    }

    /* the table */
    printf("\n%-18s %3s %12s %9s %12s %9s\n", "map", "KV", "decode b1/s", "roofline", "prefill/s", "of peak");
    for (int i = 0; i < n_views && (o.do_decode || o.do_prefill); i++) {
        const single_figures *f = &singles[i];
        printf("%-18s %3d %12.1f %8.1f%% %12.1f %8.1f%%\n", o.maps[i], views[i].map->n_kv_layers, f->decode_tps,
               ri.bandwidth > 0 ? 100.0 * f->decode_bytes_per_token * f->decode_tps / ri.bandwidth : 0.0,
               f->prefill_tps,
               ri.peak_flops > 0 ? 100.0 * f->prefill_tps * f->prefill_flops / 2048.0 / ri.peak_flops : 0.0);
    }
    if (o.do_throughput) {
        printf("\nthroughput, tokens/s (batch); * = partial (time limit), - = not run\n%-18s", "map");
        for (int s = 0; s < o.n_settings; s++)
            for (int b = 0; b < o.n_budgets; b++) {
                char head[48];
                snprintf(head, sizeof head, "%d+%d %s", o.settings[s].prompt, o.settings[s].gen, o.budgets[b].name);
                printf(" %20s", head);
            }
        printf("\n");
        for (int i = 0; i < n_views; i++) {
            printf("%-18s", o.maps[i]);
            for (int s = 0; s < o.n_settings; s++)
                for (int b = 0; b < o.n_budgets; b++) {
                    const xlkv_throughput_figures *f = &results[s][b][i];
                    char cell[48];
                    if (f->tokens > 0)
                        snprintf(cell, sizeof cell, "%.0f%s (%d)", f->tokens_per_s, f->complete ? "" : "*", f->batch);
                    else
                        snprintf(cell, sizeof cell, "- (%d)", f->batch);
                    printf(" %20s", cell);
                }
            printf("\n");
        }
    }
    printf("\n%s: %.0f s in all; JSON lines appended to %s\n", "bench_gpu", xlkv_now_seconds() - start, o.out);
    for (int i = 0; i < n_views; i++) xlkv_bench_map_view_free(&views[i]);
    xlkv_model_free(base);
    fclose(ri.out);
    return 0;
}
