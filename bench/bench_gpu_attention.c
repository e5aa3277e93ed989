/* bench/bench_gpu_attention: the batched decode attention alone (xlkv_cuda_attention_decode_with), tinyllama shape
 * (32 query heads, 4 KV heads, head_dim 64, bf16, block size 16), the tensor-core kernel against the previous scalar
 * kernel in the same run.
 *
 * For each batch B and context L (every row sees L positions through a paged pool whose blocks are shuffled, as the
 * engine's free list leaves them), it times each kernel two ways with CUDA events: "back-to-back" = 20 launches
 * between two events, divided by 20 (the device time of one call, launch gaps hidden), median of 7; "single" = one
 * launch between two events, median of 21 (what bench_gpu_step reports, launch latency included). Effective bandwidth
 * = the KV bytes the rows must read (B x L x 2 x kv_dim x 2 bytes) / back-to-back time. Partials and the combine pass
 * are included in both times. It also prints the largest difference between the two kernels' outputs.
 *
 * Usage: bench_gpu_attention [--batch B] [--context L] [--out FILE.jsonl]
 * Default: B in {1, 64, 256, 608} x L in {512, 1024, 2048}; one JSON line per (B, L, kernel) appended to
 * bench/results/gpu_attention.jsonl. Not a test; without CUDA it says so and exits 0. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#ifdef XLKV_HAVE_CUDA
#include <cuda_runtime.h>

#include "backend/cuda/cuda_kernels.h"

enum { HEADS = 32, KV_HEADS = 4, HEAD_DIM = 64, KV_DIM = KV_HEADS * HEAD_DIM, BLOCK = 16 };
enum { BURST = 20, BURST_REPS = 7, SINGLE_REPS = 21 };

#define BENCH_NAME "bench_gpu_attention"
#include "bench_cuda_common.h"

static unsigned long long rng = 0x9e3779b97f4a7c15ull;
static unsigned next_u32(void) {
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (unsigned)(rng >> 16);
}

/* n bf16 values uniform in [-1, 1) (as raw 16-bit patterns, built from floats on the host). */
static void *device_bf16_random(size_t n) {
    const size_t chunk = (size_t)1 << 24;
    unsigned short *host = malloc((n < chunk ? n : chunk) * sizeof *host);
    if (!host) {
        fprintf(stderr, "bench_gpu_attention: out of host memory\n");
        exit(1);
    }
    void *d = NULL;
    check(cudaMalloc(&d, n * 2), "cudaMalloc");
    for (size_t off = 0; off < n; off += chunk) {
        const size_t m = n - off < chunk ? n - off : chunk;
        for (size_t i = 0; i < m; i++) {
            const float f = (float)(next_u32() % 65536u) / 32768.0f - 1.0f;
            unsigned bits;
            memcpy(&bits, &f, sizeof bits);
            host[i] = (unsigned short)(bits >> 16);
        }
        check(cudaMemcpy((char *)d + off * 2, host, m * 2, cudaMemcpyHostToDevice), "upload");
    }
    free(host);
    return d;
}

static int *device_ints(const int *a, size_t n) {
    int *d = NULL;
    check(cudaMalloc((void **)&d, n * sizeof *d), "cudaMalloc");
    check(cudaMemcpy(d, a, n * sizeof *d, cudaMemcpyHostToDevice), "upload");
    return d;
}

static int compare_floats(const void *a, const void *b) {
    const float x = *(const float *)a, y = *(const float *)b;
    return (x > y) - (x < y);
}

typedef struct attention_case {
    int batch, context;
    void *q, *out;
    float *workspace;
    int *row_seq, *row_pos;
    xlkv_paged_kv kv;
    cudaStream_t stream;
} attention_case;

static void launch(const attention_case *c, xlkv_cuda_decode_kernel which) {
    const xlkv_attention_rule rule = {HEADS, KV_HEADS, HEAD_DIM, 0, 0, 0};
    check((cudaError_t)xlkv_cuda_attention_decode_with(c->out, c->q, HEADS * HEAD_DIM, c->batch, c->row_seq,
                                                       c->row_pos, c->context, &c->kv, &rule, c->workspace,
                                                       XLKV_DTYPE_BF16, which, c->stream),
          "attention launch");
}

/* Milliseconds per call: back-to-back bursts (*burst_ms) and single launches (*single_ms), medians. */
static void time_kernel(const attention_case *c, xlkv_cuda_decode_kernel which, double *burst_ms, double *single_ms) {
    cudaEvent_t a, b;
    check(cudaEventCreate(&a), "event");
    check(cudaEventCreate(&b), "event");
    for (int i = 0; i < 3; i++) launch(c, which);
    check(cudaStreamSynchronize(c->stream), "warm-up");
    float bursts[BURST_REPS], singles[SINGLE_REPS];
    for (int r = 0; r < BURST_REPS; r++) {
        check(cudaEventRecord(a, c->stream), "record");
        for (int i = 0; i < BURST; i++) launch(c, which);
        check(cudaEventRecord(b, c->stream), "record");
        check(cudaEventSynchronize(b), "sync");
        check(cudaEventElapsedTime(&bursts[r], a, b), "elapsed");
        bursts[r] /= BURST;
    }
    for (int r = 0; r < SINGLE_REPS; r++) {
        check(cudaEventRecord(a, c->stream), "record");
        launch(c, which);
        check(cudaEventRecord(b, c->stream), "record");
        check(cudaEventSynchronize(b), "sync");
        check(cudaEventElapsedTime(&singles[r], a, b), "elapsed");
    }
    qsort(bursts, BURST_REPS, sizeof bursts[0], compare_floats);
    qsort(singles, SINGLE_REPS, sizeof singles[0], compare_floats);
    *burst_ms = bursts[BURST_REPS / 2];
    *single_ms = singles[SINGLE_REPS / 2];
    cudaEventDestroy(a);
    cudaEventDestroy(b);
}

static float bf16_to_float(unsigned short h) {
    const unsigned bits = (unsigned)h << 16;
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

/* Runs both kernels once and returns the largest |difference| of their outputs. */
static double kernels_difference(const attention_case *c) {
    const size_t n = (size_t)c->batch * HEADS * HEAD_DIM;
    unsigned short *x = malloc(n * 2), *y = malloc(n * 2);
    if (!x || !y) exit(1);
    launch(c, XLKV_CUDA_DECODE_AUTO);
    check(cudaMemcpyAsync(x, c->out, n * 2, cudaMemcpyDeviceToHost, c->stream), "download");
    launch(c, XLKV_CUDA_DECODE_SCALAR);
    check(cudaMemcpyAsync(y, c->out, n * 2, cudaMemcpyDeviceToHost, c->stream), "download");
    check(cudaStreamSynchronize(c->stream), "sync");
    double worst = 0.0;
    for (size_t i = 0; i < n; i++) {
        const double d = (double)bf16_to_float(x[i]) - (double)bf16_to_float(y[i]);
        if (d != d) { /* NaN in either output */
            worst = 1e30;
            break;
        }
        if ((d < 0 ? -d : d) > worst) worst = d < 0 ? -d : d;
    }
    free(x);
    free(y);
    return worst;
}

/* XLKV_DECODE_MAX_SPLIT as the tensor-core kernels read it (0: unset, their default of 1024 keys) */
static int max_split_env(void) {
    const char *v = getenv("XLKV_DECODE_MAX_SPLIT");
    return v ? atoi(v) : 0;
}

static void run_case(int batch, int context, FILE *out, const char *commit, const char *machine, const char *date,
                     cudaStream_t stream) {
    attention_case c = {.batch = batch, .context = context, .stream = stream};
    const int blocks_per_seq = (context + BLOCK - 1) / BLOCK;
    const size_t n_blocks = (size_t)batch * blocks_per_seq;
    c.kv = (xlkv_paged_kv){.n_slots = 1, .block_size = BLOCK, .kv_dim = KV_DIM, .max_blocks_per_seq = blocks_per_seq};
    c.kv.pool = device_bf16_random(n_blocks * 2 * BLOCK * KV_DIM);
    int *tables = malloc(n_blocks * sizeof *tables), *seqs = malloc((size_t)batch * sizeof *seqs),
        *pos = malloc((size_t)batch * sizeof *pos);
    if (!tables || !seqs || !pos) exit(1);
    for (size_t i = 0; i < n_blocks; i++) tables[i] = (int)i;
    for (size_t i = n_blocks - 1; i > 0; i--) { /* shuffled: blocks of a sequence are scattered over the pool */
        const size_t j = next_u32() % (i + 1);
        const int t = tables[i];
        tables[i] = tables[j];
        tables[j] = t;
    }
    for (int b = 0; b < batch; b++) {
        seqs[b] = b;
        pos[b] = context - 1;
    }
    c.kv.block_tables = device_ints(tables, n_blocks);
    c.row_seq = device_ints(seqs, (size_t)batch);
    c.row_pos = device_ints(pos, (size_t)batch);
    c.q = device_bf16_random((size_t)batch * HEADS * HEAD_DIM);
    check(cudaMalloc(&c.out, (size_t)batch * HEADS * HEAD_DIM * 2), "cudaMalloc");
    const size_t ws = xlkv_cuda_attention_decode_workspace(batch, HEADS, HEAD_DIM, context);
    check(cudaMalloc((void **)&c.workspace, ws * sizeof(float)), "cudaMalloc");

    const double kv_bytes = (double)batch * context * 2.0 * KV_DIM * 2.0;
    const double diff = kernels_difference(&c);
    const struct { const char *name; xlkv_cuda_decode_kernel which; } kernels[] = {
        {"scalar", XLKV_CUDA_DECODE_SCALAR}, {"mma", XLKV_CUDA_DECODE_AUTO}};
    double burst_ms[2], single_ms[2];
    for (int k = 0; k < 2; k++) {
        time_kernel(&c, kernels[k].which, &burst_ms[k], &single_ms[k]);
        const double gbs = kv_bytes / (burst_ms[k] * 1e-3) / 1e9;
        printf("%6d %7d  %-6s %10.1f %10.1f %10.0f", batch, context, kernels[k].name, burst_ms[k] * 1e3,
               single_ms[k] * 1e3, gbs);
        if (k == 1) printf("   x%.2f vs scalar, max |mma - scalar| %.2e", burst_ms[0] / burst_ms[1], diff);
        printf("\n");
        if (out)
            fprintf(out,
                    "{\"bench\": \"gpu_attention\", \"what\": \"decode_attention\", \"shape\": \"tinyllama\", "
                    "\"kernel\": \"%s\", \"batch\": %d, \"context\": %d, \"block_size\": %d, \"us\": %.2f, "
                    "\"us_single_launch\": %.2f, \"kv_bytes\": %.0f, \"bytes_per_s\": %.4e, "
                    "\"max_abs_diff_vs_scalar\": %.3e, \"decode_max_split\": %d, \"commit\": \"%s\", "
                    "\"machine\": \"%s\", \"date\": \"%s\"}\n",
                    kernels[k].name, batch, context, BLOCK, burst_ms[k] * 1e3, single_ms[k] * 1e3, kv_bytes,
                    kv_bytes / (burst_ms[k] * 1e-3), diff, max_split_env(), commit, machine, date);
    }
    fflush(stdout);
    if (out) fflush(out);
    free(tables);
    free(seqs);
    free(pos);
    check(cudaFree(c.kv.pool), "free");
    check(cudaFree((void *)c.kv.block_tables), "free");
    check(cudaFree(c.row_seq), "free");
    check(cudaFree(c.row_pos), "free");
    check(cudaFree(c.q), "free");
    check(cudaFree(c.out), "free");
    check(cudaFree(c.workspace), "free");
}

static void git_commit(char *buf, size_t cap) {
    const char *given = getenv("XLKV_COMMIT"); /* the GPU machine may get a copy of the tree without .git */
    snprintf(buf, cap, "%s", given && *given ? given : "unknown");
    if (given && *given) return;
    FILE *p = popen("git rev-parse --short HEAD 2>/dev/null", "r");
    if (!p) return;
    if (fgets(buf, (int)cap, p)) buf[strcspn(buf, "\n")] = '\0';
    pclose(p);
}

int main(int argc, char **argv) {
    int one_batch = 0, one_context = 0;
    const char *out_path = "bench/results/gpu_attention.jsonl";
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--batch") && i + 1 < argc) one_batch = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--context") && i + 1 < argc) one_context = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--out") && i + 1 < argc) out_path = argv[++i];
        else {
            fprintf(stderr, "usage: bench_gpu_attention [--batch B] [--context L] [--out FILE.jsonl]\n");
            return 2;
        }
    }
    if (one_batch < 0 || one_context < 0) {
        fprintf(stderr, "bench_gpu_attention: --batch and --context must be positive\n");
        return 2;
    }
    int count = 0;
    if (cudaGetDeviceCount(&count) != cudaSuccess || count == 0) {
        printf("bench_gpu_attention: needs a CUDA device; none found\n");
        return 0;
    }
    struct cudaDeviceProp prop;
    check(cudaGetDeviceProperties(&prop, 0), "device properties");
    char commit[64], date[32];
    git_commit(commit, sizeof commit);
    const time_t now = time(NULL);
    strftime(date, sizeof date, "%Y-%m-%dT%H:%M:%SZ", gmtime(&now));
    FILE *out = fopen(out_path, "a");
    if (!out) fprintf(stderr, "bench_gpu_attention: cannot append to %s; printing only\n", out_path);
    cudaStream_t stream;
    check(cudaStreamCreate(&stream), "stream");

    const int batches[] = {1, 64, 256, 608}, contexts[] = {512, 1024, 2048};
    printf("decode attention alone, tinyllama bf16 (32 heads, 4 KV heads, head_dim 64), block %d, %s, commit %s\n",
           BLOCK, prop.name, commit);
    printf("%6s %7s  %-6s %10s %10s %10s\n", "batch", "context", "kernel", "us", "us single", "KV GB/s");
    for (int bi = 0; bi < 4; bi++)
        for (int ci = 0; ci < 3; ci++) {
            const int batch = one_batch ? one_batch : batches[bi], context = one_context ? one_context : contexts[ci];
            if ((one_batch && bi > 0) || (one_context && ci > 0)) continue;
            run_case(batch, context, out, commit, prop.name, date, stream);
        }
    if (out) fclose(out);
    check(cudaStreamDestroy(stream), "stream");
    return 0;
}
#else
int main(void) {
    printf("bench_gpu_attention: built without CUDA; needs a GPU build\n");
    return 0;
}
#endif
