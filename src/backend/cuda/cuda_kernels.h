/* backend/cuda/cuda_kernels: the CUDA kernels of xlkv, as C-callable launchers (implemented in *.cu files here).
 *
 * Owns the device-side math of one decoder step; the engine (backend/cuda/cuda_engine.c) owns buffers, weights, the
 * paged KV pool, cuBLAS and the order of launches. Every launcher is asynchronous on `stream` (a cudaStream_t passed
 * as void * so that C callers need no CUDA headers) and returns 0 or the cudaError_t of the launch.
 *
 * Activations, weights and KV are of one element type `dt` (fp32 for exact comparisons, bf16 for speed); arithmetic
 * and accumulation are fp32. Matrices are row-major; "row stride" arguments let a kernel read a column block of a
 * fused product (e.g. q, k, v from one [n, q_dim + 2 kv_dim] GEMM output). All index arrays are device memory.
 *
 * The attention kernels implement SEMANTICS.md section 2 exactly: query at position t sees key positions p with
 * p <= t (p < t when mask_diagonal), t - p < window (window 0 = unlimited), keys and values of cache slot read_slot
 * (RoPE already applied to keys), grouped-query heads (query head h reads KV head h / (n_heads / n_kv_heads)), and
 * a zero output row when nothing is visible. */
#ifndef XLKV_BACKEND_CUDA_KERNELS_H
#define XLKV_BACKEND_CUDA_KERNELS_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum xlkv_dtype { XLKV_DTYPE_F32 = 0, XLKV_DTYPE_BF16 = 1 } xlkv_dtype;

/* The paged KV pool. One block holds `block_size` consecutive positions of one sequence for every KV slot:
 *   pool[block][slot][kv][pos_in_block][kv_dim], kv 0 = keys, 1 = values, elements of the engine's dtype.
 * block_tables[seq * max_blocks_per_seq + i] is the physical block of positions [i*block_size, (i+1)*block_size). */
typedef struct xlkv_paged_kv {
    void *pool;
    int n_slots;
    int block_size;
    int kv_dim;                 /* n_kv_heads * head_dim */
    const int *block_tables;    /* device [max_seqs, max_blocks_per_seq] */
    int max_blocks_per_seq;
} xlkv_paged_kv;

typedef struct xlkv_attention_rule {
    int n_heads;
    int n_kv_heads;
    int head_dim;
    int window;        /* 0 = full attention */
    int mask_diagonal; /* cyclic source (kv_src > layer) or force_nodiag */
    int read_slot;     /* the KV slot this layer reads */
} xlkv_attention_rule;

/* out[r, :] = table[tokens[r], :] for r < n. */
int xlkv_cuda_embedding(void *out, const void *table, const int *tokens, int n, int dim, xlkv_dtype dt, void *stream);

/* out[r] = x[r] / rms(x[r]) * gain, rows of `dim`. */
int xlkv_cuda_rmsnorm(void *out, const void *x, const void *gain, int n, int dim, float eps, xlkv_dtype dt,
                      void *stream);

/* Fused residual + norm: x[r] += y[r]; out[r] = rmsnorm(x[r]) * gain. (y may have row stride y_stride.) */
int xlkv_cuda_add_rmsnorm(void *x, const void *y, int y_stride, void *out, const void *gain, int n, int dim, float eps,
                          xlkv_dtype dt, void *stream);

/* x[r] += y[r] (rows of dim, y with row stride y_stride). */
int xlkv_cuda_add(void *x, const void *y, int y_stride, int n, int dim, xlkv_dtype dt, void *stream);

/* Rotates heads of x in place: rows r < n, row stride x_stride, n_heads heads of head_dim starting at column 0 of the
 * row; position positions[r]; interleaved pairs (2i, 2i+1) by angle pos * theta^(-2i/head_dim), read from fp32
 * tables cos_table/sin_table [max_positions, head_dim/2]. */
int xlkv_cuda_rope(void *x, int x_stride, int n, int n_heads, int head_dim, const int *positions,
                   const float *cos_table, const float *sin_table, xlkv_dtype dt, void *stream);

/* Writes K (RoPE applied here, as xlkv_cuda_rope would) and V rows into the pool: row r goes to sequence
 * row_seq[r] (index into block_tables), position row_pos[r], slot `slot`. k and v have row stride kv_stride. */
int xlkv_cuda_kv_write(const xlkv_paged_kv *kv, int slot, const void *k, const void *v, int kv_stride, int n,
                       const int *row_seq, const int *row_pos, int head_dim, const float *cos_table,
                       const float *sin_table, xlkv_dtype dt, void *stream);

/* RoPE on the queries and kv_write fused, one launch after the qkv product: rows r < n of a fused q | k | v buffer
 * (row stride qkv_stride): the n_heads query heads at column 0 are rotated in place exactly as xlkv_cuda_rope does
 * (rows with row_pos[r] < 0 skipped), and, when kv is not NULL, K (columns k_col.., rotated) and V (columns v_col..)
 * are written to slot `slot` exactly as xlkv_cuda_kv_write does. */
int xlkv_cuda_rope_kv_write(void *qkv, int qkv_stride, int n, int n_heads, int head_dim, const int *row_seq,
                            const int *row_pos, const float *cos_table, const float *sin_table,
                            const xlkv_paged_kv *kv, int slot, int k_col, int v_col, xlkv_dtype dt, void *stream);

/* Zeroes positions [pos0, pos0 + n) of sequence `seq` in slot `slot` (targets before a cyclic group's first
 * iteration). seq, pos0 and n are host values; the block table is read on the device. */
int xlkv_cuda_kv_zero(const xlkv_paged_kv *kv, int slot, int seq, int pos0, int n, xlkv_dtype dt, void *stream);

/* out[h] = silu(gate[h]) * up[h] for rows r < n; gate and up rows of `hidden` with row stride in_stride
 * (e.g. a fused [n, 2*hidden] product: gate = buf, up = buf + hidden, in_stride = 2*hidden). */
int xlkv_cuda_swiglu(void *out, const void *gate, const void *up, int in_stride, int n, int hidden, xlkv_dtype dt,
                     void *stream);

/* Prefill attention of one sequence: n query rows at positions pos0 .. pos0+n-1 (q row stride q_stride, heads
 * contiguous), keys/values of positions 0 .. pos0+n-1 of sequence `seq` in slot rule->read_slot. A tiled kernel
 * (flash-attention style, online softmax, tensor cores for bf16 where possible). out: [n, n_heads*head_dim]. */
int xlkv_cuda_attention_prefill(void *out, const void *q, int q_stride, int n, int pos0, int seq,
                                const xlkv_paged_kv *kv, const xlkv_attention_rule *rule, xlkv_dtype dt, void *stream);

/* Decode attention for a batch: row b is one query of sequence row_seq[b] at position row_pos[b] (it sees keys
 * 0..row_pos[b] under the rule). Split-K over the keys: the grid is fixed by (batch, n_heads, n_splits) with
 * n_splits = ceil(max_positions / split_size), so the launch can be captured in a CUDA graph and reused whatever the
 * sequences' lengths; splits past a sequence's end exit at once. workspace: device floats of
 * xlkv_cuda_attention_decode_workspace(...) elements. */
size_t xlkv_cuda_attention_decode_workspace(int batch, int n_heads, int head_dim, int max_positions);
int xlkv_cuda_attention_decode(void *out, const void *q, int q_stride, int batch, const int *row_seq,
                               const int *row_pos, int max_positions, const xlkv_paged_kv *kv,
                               const xlkv_attention_rule *rule, float *workspace, xlkv_dtype dt, void *stream);
/* The same with the pass-1 kernel chosen: AUTO (what xlkv_cuda_attention_decode does: the tensor-core kernel for
 * bf16, head_dim 64/128, n_heads / n_kv_heads <= 8 and aligned rows, else the scalar kernels) or SCALAR (the CUDA-core
 * grouped/generic kernels only: the previous implementation, kept for fp32, other shapes, and comparisons in tests and
 * benchmarks). Same workspace, same results within rounding. */
typedef enum xlkv_cuda_decode_kernel { XLKV_CUDA_DECODE_AUTO = 0, XLKV_CUDA_DECODE_SCALAR = 1 } xlkv_cuda_decode_kernel;
int xlkv_cuda_attention_decode_with(void *out, const void *q, int q_stride, int batch, const int *row_seq,
                                    const int *row_pos, int max_positions, const xlkv_paged_kv *kv,
                                    const xlkv_attention_rule *rule, float *workspace, xlkv_dtype dt,
                                    xlkv_cuda_decode_kernel which, void *stream);

/* Decode attention of a batch of rows fused with what precedes it, ONE launch (bf16, tensor cores): per row, RoPE on the
 * query heads (read from qkv, rotated on the fly; qkv is not modified), K (rotated) and V of the row written to slot
 * rope_kv->write_slot exactly as xlkv_cuda_rope_kv_write writes them (write_slot -1: not a KV layer, nothing written),
 * then split-K attention over slot rule->read_slot and the combine of the partials by the last CTA of each
 * (row, KV head). out is what xlkv_cuda_attention_decode gives for the rotated queries, within rounding. Rows with
 * row_seq < 0 or row_pos < 0 write nothing and get zeros. Supported (else cudaErrorNotSupported) where
 * xlkv_cuda_attention_decode_fused_supported: bf16, any batch >= 1, head_dim 64 or 128,
 * n_heads / n_kv_heads <= 8, 16-byte aligned pool. workspace: as xlkv_cuda_attention_decode's. counters: device
 * unsigned [xlkv_cuda_attention_decode_fused_counters(batch, n_kv_heads)], zero before the first launch; every launch
 * leaves them zero (CUDA-graph replayable), so one array serves every layer, launched one after another. */
typedef struct xlkv_cuda_decode_rope_kv {
    const float *cos_table, *sin_table; /* as xlkv_cuda_rope */
    int write_slot;                     /* -1: write nothing */
    int k_col, v_col;                   /* columns of K and V in the qkv rows */
} xlkv_cuda_decode_rope_kv;
int xlkv_cuda_attention_decode_fused_supported(int batch, const xlkv_attention_rule *rule, const xlkv_paged_kv *kv,
                                               xlkv_dtype dt);
size_t xlkv_cuda_attention_decode_fused_counters(int batch, int n_kv_heads);
int xlkv_cuda_attention_decode_fused(void *out, const void *qkv, int qkv_stride, int batch, const int *row_seq,
                                     const int *row_pos, int max_positions, const xlkv_paged_kv *kv,
                                     const xlkv_attention_rule *rule, const xlkv_cuda_decode_rope_kv *rope_kv,
                                     float *workspace, unsigned *counters, xlkv_dtype dt, void *stream);

/* Products of a few rows (decode of small batches), bf16 only: y[n, out] = x[n, in] . w[out, in]^T with rows
 * contiguous, fp32 accumulation, y bf16 or (y_is_f32) fp32. Returns cudaErrorNotSupported where
 * xlkv_cuda_gemv_supported() is false (f32, n > XLKV_CUDA_GEMV_MAX_ROWS, in not a multiple of 8, unaligned): the
 * caller then uses cuBLAS. */
enum { XLKV_CUDA_GEMV_MAX_ROWS = 8 };
int xlkv_cuda_gemv_supported(int n, int in, const void *x, const void *w, xlkv_dtype dt);
int xlkv_cuda_gemv(void *y, int y_is_f32, const void *x, const void *w, int n, int in, int out, xlkv_dtype dt,
                   void *stream);

/* The few-row product with the row-wise step before it fused in (bf16 only, same limits as xlkv_cuda_gemv):
 *   PLAIN:   input = x;
 *   RMSNORM: input[r] = x[r] / rms(x[r]) * gain, rounded to bf16 (bit-identical to xlkv_cuda_rmsnorm's output);
 *   SWIGLU:  input[r][i] = silu(x[r][i]) * x[r][in + i], rounded to bf16 (x = a fused gate | up product; as
 *            xlkv_cuda_swiglu).
 * x rows have stride x_stride elements (0: in for PLAIN/RMSNORM, 2 in for SWIGLU). With `accumulate`,
 * y[r, o] += round(product) (the residual add, as xlkv_cuda_add after an unfused product), else y = product. */
enum { XLKV_GEMV_INPUT_PLAIN = 0, XLKV_GEMV_INPUT_RMSNORM = 1, XLKV_GEMV_INPUT_SWIGLU = 2 };
typedef struct xlkv_cuda_gemv_input {
    int kind;         /* XLKV_GEMV_INPUT_* */
    int x_stride;     /* 0 = the default above */
    const void *gain; /* RMSNORM: [in], 16-byte aligned */
    float eps;        /* RMSNORM */
} xlkv_cuda_gemv_input;
int xlkv_cuda_gemv_input_supported(int n, int in, const void *x, const xlkv_cuda_gemv_input *input, const void *w,
                                   xlkv_dtype dt);
int xlkv_cuda_gemv_fused(void *y, int y_is_f32, int accumulate, const void *x, const xlkv_cuda_gemv_input *input,
                         const void *w, int n, int in, int out, xlkv_dtype dt, void *stream);
/* xlkv_cuda_gemv_fused leaving `spare_ctas` (>= 0) CTA slots of the device free: its grid is that many CTAs smaller
 * than the most that are resident at once (at most a quarter of them), so that the kernel launched after it as a programmatic
 * dependent can place CTAs beside it at once (the engine leaves room for the fused decode attention after the qkv
 * product). Same bits for every spare_ctas. */
int xlkv_cuda_gemv_fused_spare(void *y, int y_is_f32, int accumulate, const void *x, const xlkv_cuda_gemv_input *input,
                               const void *w, int n, int in, int out, int spare_ctas, xlkv_dtype dt, void *stream);

/* Several xlkv_cuda_gemv_fused calls over the same n rows in ONE persistent cooperative launch (kernels_gemv_chain.cu):
 * stage after stage with a grid-wide barrier between them, each stage's first W burst issued before the barrier that
 * precedes it. Stage k may read (x, or y with `accumulate`) what earlier stages wrote and may overwrite what they read;
 * within a stage the rules of xlkv_cuda_gemv_fused hold. Same bits as the separate calls, in order. Safe under stream
 * capture (the barrier re-arms itself). _supported: every stage passes xlkv_cuda_gemv_input_supported (`input` zeroed
 * = PLAIN with the default stride), out >= 1, 1 <= n_stages <= XLKV_CUDA_GEMV_CHAIN_MAX_STAGES, and the device runs
 * cooperative launches; otherwise xlkv_cuda_gemv_chain returns cudaErrorNotSupported and launches nothing. */
enum { XLKV_CUDA_GEMV_CHAIN_MAX_STAGES = 4 };
typedef struct xlkv_cuda_gemv_stage {
    void *y; /* [n, out] */
    int y_is_f32;
    int accumulate;
    const void *x; /* [n, x_stride] */
    xlkv_cuda_gemv_input input;
    const void *w; /* [out, in] */
    int in, out;
    int spare_ctas; /* run alone (not chained): as xlkv_cuda_gemv_fused_spare; a chain ignores it */
} xlkv_cuda_gemv_stage;
int xlkv_cuda_gemv_chain_supported(const xlkv_cuda_gemv_stage *stages, int n_stages, int n, xlkv_dtype dt);
int xlkv_cuda_gemv_chain(const xlkv_cuda_gemv_stage *stages, int n_stages, int n, xlkv_dtype dt, void *stream);

/* Greedy: out[b] = argmax over logits[b, 0..vocab) (lowest index on ties), logits fp32 [batch, vocab]. */
int xlkv_cuda_argmax(int *out, const float *logits, int batch, int vocab, void *stream);

/* Per-row sampling parameters, device array [batch]. */
typedef struct xlkv_cuda_sampling {
    float temperature;    /* 0 = greedy */
    int top_k;            /* 0 = off (then at most XLKV_CUDA_MAX_CANDIDATES candidates are kept for top-p) */
    float top_p;          /* 1 = off */
    float repeat_penalty; /* 1 = off */
    uint64_t seed;
    uint64_t step;        /* counter-based RNG (Philox): draw = f(seed, step), so a sequence samples the same
                             tokens whatever batch it runs in */
} xlkv_cuda_sampling;
enum { XLKV_CUDA_MAX_CANDIDATES = 256, XLKV_CUDA_PENALTY_WINDOW = 64 };

/* Samples out[b] from logits[b] (fp32, modified in place): repetition penalty over the row's recent tokens
 * history[b * XLKV_CUDA_PENALTY_WINDOW ..] (history_len[b] of them valid, -1 padding), then greedy when
 * temperature is 0, else temperature -> top-k -> top-p -> draw. */
int xlkv_cuda_sample(int *out, float *logits, int batch, int vocab, const xlkv_cuda_sampling *params,
                     const int *history, const int *history_len, void *stream);

/* The same selection for small batches, split over many CTAs: one launch of (vocab / XLKV_CUDA_SAMPLE_CHUNK) x batch
 * CTAs applies the repetition penalty and finds each chunk's argmax into `workspace`, then one CTA per row reduces
 * the chunks (greedy rows) or runs the sampling path above on the penalized row. Same results as xlkv_cuda_sample.
 * workspace: device memory of xlkv_cuda_sample_split_workspace(batch, vocab) bytes (16-byte aligned). */
enum { XLKV_CUDA_SAMPLE_CHUNK = 512 };
size_t xlkv_cuda_sample_split_workspace(int batch, int vocab);
int xlkv_cuda_sample_split(int *out, float *logits, int batch, int vocab, const xlkv_cuda_sampling *params,
                           const int *history, const int *history_len, void *workspace, void *stream);

/* Scores rows of fp32 logits[n_rows, vocab] (infer/token_scores.h): log_probs[r] = log softmax(row r)[targets[r]]
 * (log-sum-exp accumulated in double), is_argmax[r] = targets[r] is the row's first maximum. */
int xlkv_cuda_score_rows(const float *logits, int n_rows, int vocab, const int *targets, double *log_probs,
                         unsigned char *is_argmax, void *stream);

#ifdef __cplusplus
}
#endif
#endif
