/* backend/cuda/train_gpu: the GPU trainer (see train/gpu_trainer.h). It follows train/train_graph.c step by step:
 * the same tape (one record per layer of an acyclic run, b x group layers per cyclic group), the same "current K/V"
 * per slot, the same constant K/V of the no-grad iterations, the same backward walk (a record's dK/dV complete when
 * the walk reaches it; discarded hidden outputs of grad iterations enter with zero gradient; the group's input
 * gradient summed over its grad iterations). Kernels: backend/cuda/train_kernels.cu; products: cuBLAS.
 *
 * Attention has three implementations with the same semantics; gemm and warp are exact in fp32, flash is bf16:
 *   gemm: cuBLAS strided-batched products for the scores (fp32, [n_heads][batch][seq][seq], recomputed in the
 *         backward, never saved), a masked-softmax kernel that also writes the log-sum-exp, P.V, and for the
 *         backward dP = dO.V^T, dS = P (dP - delta) scale, dQ = dS.K, dK += dS^T.Q, dV += P^T.dO (query heads of
 *         one KV head accumulate in order). The default while the two score buffers fit in 8 GiB.
 *   warp: one warp per (query row, head) / (key row, KV head), online softmax, nothing of size T x T (the fallback
 *         for long sequences).
 *   flash: tensor-core FlashAttention-2 kernels (backend/cuda/train_attention_flash.cu: bf16 mma.sync, fp32
 *         accumulation, nothing of size T x T), the default of the bf16 trainer when head_dim is 64 or 128; the f32
 *         trainer never uses it (it stays exact).
 * XLKV_TRAIN_ATTENTION=warp|gemm|flash forces one (the tests run all three); flash where it is not supported (f32,
 * another head_dim) is refused with the reason. Flash stages bf16 copies of its inputs in a workspace the trainer
 * owns, and by default also applies the forward RoPE there (XLKV_TRAIN_FLASH_ROPE=1, read at creation): q and k leave
 * the products unrotated and stay so in the records and the constant K/V, every flash call rotates its Q / K rows
 * while staging them (the same rope_pair and tables, so the same bf16 bits as the RoPE pass then flash; a K read by
 * several layers is rotated by each reader, never in place), and the separate forward RoPE passes are skipped. Flash
 * returns the gradients of the rotated q / k; in the fused backward its dQ kernel also writes dq inverse-rotated in
 * bf16 straight into the dX operand (no fp32 dq, no dq RoPE pass); dk / dv keep their inverse pass (several readers
 * add into them), as does dq in the unfused backward.
 * XLKV_TRAIN_FLASH_ROPE=0 keeps the separate passes (the A/B in one build); gemm / warp always use them.
 * Flash side passes (each read at creation; 1, the default under flash, or 0, the former path; the same bits):
 *   XLKV_TRAIN_FLASH_PROLOGUE: no dK/dV clears in the forward: the last grad reader of a KV record in tape order (the
 *     first writer in the backward walk) overwrites its dK/dV (kv_source.last_reader, dkdv_overwrite), the others add;
 *     a KV record nobody reads is cleared in the backward (dkdv_unread); delta computed inside the dQ kernel.
 *   XLKV_TRAIN_FLASH_KV16: the bf16 K / V the flash kernels stream are kept per KV record (kv16_arena, 4 N kv_dim
 *     bytes per KV record: 0.3 GB for `small`, standard map): rounded by the record's first forward reader, streamed
 *     as they are by later readers and by the backward (the fp32 K / V of a record do not change in between).
 *
 * Layer and classifier products (y = x.W^T, dX += dY.W, dW += dY^T.X; cublasGemmEx, C in fp32 with beta 0 or 1 as
 * ever, so gradients accumulate in fp32):
 *   f32 trainer: fp32 operands, CUBLAS_COMPUTE_32F, pedantic math (exact; the tests compare it with the CPU).
 *   bf16 trainer (default "bf16ops"): bf16 operands, CUBLAS_COMPUTE_32F, the bf16 tensor-core rate. Weights are read
 *         from a bf16 shadow of the whole parameter array (params_bf16, same offsets as params), refreshed after
 *         every AdamW step and every upload (create, resume). Activations are rounded (backend/cuda/train_bf16.cu,
 *         round to nearest even) by the forward product that first reads them, into the grad record's own copies
 *         (bf16_inputs: xb, att, xb2, h), which the backward's dW products read again; products sharing an input
 *         (q/k/v: xb, gate/up: xb2) round it once. The no-grad iterations and the classifier's input use the
 *         scratch x_bf16. Incoming gradients are rounded once per product pair (dX and dW) into the scratch
 *         dy_bf16, which also holds the classifier's N x vocab logits / gradient (below).
 *         Device memory on top of the fp32-operand path (bytes; N rows, max_in = max(dim, q_dim, hidden),
 *         max_out = max(dim, q_dim, kv_dim, 2 hidden, q_dim + 2 kv_dim, vocab)):
 *           params_bf16 2 n_params; x_bf16 2 N max_in; dy_bf16 2 N max_out;
 *           record copies 2 N (2 dim + q_dim + hidden) per grad record;
 *         less the fp32 probs (4 N vocab) that the fused cross-entropy does without, and less the records' fp32
 *         product inputs xb, xb2, h (4 N (2 dim + hidden) per record: 2.6 GiB for `small`) that the fused layer
 *         passes do without (train_tape.h, with_fp32_products); the fused passes' bf16 activations (below) trade
 *         the records' fp32 gate and up (8 N hidden each, the scratch record's too) for a bf16 [gate | up] (4 N
 *         hidden per grad record) and drop the fp32 dgate, dup, dh (12 N hidden) for one bf16 [N, dim] branch
 *         buffer: 2.1 GiB less for `small` (1.5 GiB records, 0.25 the scratch record, 0.375 dgate / dup / dh, less
 *         24 MiB);
 *         for `small` (12 x 768, hidden 2048, vocab 32,000, tied) at 16,384 rows, standard map (12 records):
 *         0.2 + 0.06 + 1.0 (the classifier's logits / gradient) + 1.7 GiB = ~2.9 GiB, and 2.0 GiB of probs saved.
 *         Every allocation failure names its buffer and suggests XLKV_TRAIN_GEMM=fp32ops.
 *   The classifier and cross-entropy of the bf16-operand trainer (fused_ce, the default; as torch autocast): the
 *         classifier product writes the logits in bf16 (bf16 A, B and C, fp32 accumulation) into dy_bf16; one
 *         kernel (backend/cuda/train_cross_entropy.cu) reads each row once (online max / sum of exp in fp32), writes
 *         the row's loss (double) and overwrites the logits in place with the UNSCALED gradient softmax - onehot in
 *         bf16. The backward has no cross-entropy kernel: dX_final = s G.E (beta 0) and dE += s G^T.X_f read G
 *         straight from dy_bf16, with s = loss_scale / N as the products' alpha (so the buffer does not depend on the
 *         loss scale, and the forward alone, an evaluation, leaves a usable but ignored gradient). No probabilities
 *         are kept and no fp32 N x vocab buffer exists: the N x vocab memory is 2 N vocab bytes (1.0 GiB for
 *         `small` at 16,384 rows) instead of 4 N vocab (fp32 logits / probs) + 2 N vocab (bf16 gradient).
 *         XLKV_TRAIN_CE=fp32 keeps the former path (fp32 logits, probabilities kept in place, a separate backward
 *         kernel writing the scaled bf16 gradient) for an A/B in one build; XLKV_TRAIN_CE=fused (or unset) is the
 *         default; XLKV_TRAIN_GEMM=fp32ops (no bf16 weight shadow) and the f32 trainer always use the fp32 path
 *         (fused with fp32ops is refused, any other value is refused).
 *   XLKV_TRAIN_GEMM_LT (bf16 operands; read at creation): heuristic or tune[=FILE] runs every bf16-operand product
 *         (layers and classifier) through cuBLASLt (backend/cuda/train_gemm_lt.c: a plan per distinct shape, listed
 *         at creation by list_bf16_products, never a descriptor per call; heuristic = its first algorithm, tune = the
 *         fastest of its top 16 and cublasGemmEx timed once, tune=FILE written / replayed); unset = cublasGemmEx. The f32
 *         trainer ignores it; with XLKV_TRAIN_GEMM=fp32ops it is refused.
 *   XLKV_TRAIN_GEMM=fp32ops keeps the bf16 trainer on the former path (fp32 operands, CUBLAS_COMPUTE_32F_FAST_16BF:
 *         cuBLAS rounds them to bf16 on the fly, the same rounding, at a lower rate) for an A/B in one build;
 *         XLKV_TRAIN_GEMM=bf16ops (or unset) is the default. The f32 trainer ignores it (any other value is refused).
 * The attention's matrix products (gemm attention) keep fp32 operands.
 *
 * Fused layer passes (bf16 operands; on by default, XLKV_TRAIN_FUSE=0 turns them off for an A/B in one build, any
 * other value than 0 / 1 is refused; the f32 trainer and fp32ops never fuse). Kernels: backend/cuda/train_fused.cu.
 *   forward: each residual add is joined with the RMSNorm that follows it (add_rmsnorm: reads the two terms, writes
 *         the sum once, inv_rms and the next products' bf16 operand): after wo, x_mid = x + proj and the FFN norm;
 *         after w_down, the sum is left pending (pending_a + pending_b) and the next layer's attention norm forms it
 *         straight into its record's x_in (no copy; into x for the no-grad iterations), or flush_residual forms it
 *         into x where something else reads x (a group's input; a discarded iteration drops it; the last one is
 *         formed straight into x_final by the final norm, fp32 output, in the same pass). The first layer's norm
 *         (and each group iteration's) writes x_in and the bf16 operand in one pass. No fp32 xb / xb2 / h is
 *         written (swiglu writes h in bf16 only). The profiler counts add + norm as rmsnorm.
 *   bf16 activations between products (as torch autocast: a product's output is bf16 where an elementwise kernel or
 *         another product reads it; the residual stream x, its gradient dx, the attention's q / k / v / att and their
 *         gradients, the weight gradients and master weights stay fp32). Products with a bf16 C (gemm_bf16_out:
 *         fp32 accumulation, one rounding to nearest even, beta 0):
 *           forward: gate|up is one product ([w_gate; w_up] adjacent; two into the halves otherwise) writing
 *             [gate | up] per row in bf16, which the grad record keeps (bf16_inputs.gu; the no-grad iterations
 *             write dy_bf16, unused until the classifier) instead of fp32 gate and up; swiglu reads it; the o and
 *             down products write their branch in bf16 (branch_bf16, [N, dim]) and the add + RMSNorm (or
 *             flush_residual / the last add) forms x = x + float(branch) in fp32;
 *           backward: the down product's dX, dh, is written in bf16 (into x_bf16, which the fused backward does not
 *             otherwise read); swiglu's backward reads it and the record's bf16 [gate | up]; the gate|up and q/k/v dX
 *             products, where one product forms dxb (adjacent weights), write it in bf16 (branch_bf16) for the
 *             RMSNorm backward (xlkv_cuda_train_rmsnorm_backward_folded_dy16); where two or three products add into
 *             dxb (beta 1) it stays fp32, as does datt (the attention reads it); the classifier's dX (fused
 *             cross-entropy) is bf16 too, for the final RMSNorm backward.
 *         Bytes moved per layer for `small` (N = 16,384, MB = 1e6): forward 369 MB less (gate|up written and read in
 *         bf16: 268 MB; the o and down branches written and read in bf16: 101 MB), backward 369 MB less (dh written
 *         and read, 134 MB; gate / up read, 134 MB; the two dxb written and read, 101 MB).
 *   backward (layer_backward_fused): the RMSNorm backwards write bf16(dx) beside dx for the next product (the attention
 *         one only where the walk does not change dx before the next record: not at an iteration start); swiglu
 *         writes [dgate | dup] in bf16 side by side, so gate/up is one dX and one dW product with K / rows 2 hidden
 *         (w_gate and w_up are adjacent in the param_store layout; two products if not); the RoPE backward of dq and
 *         dk rounds them into [dq | dk | dv] (dv rounded beside them), one q/k/v product each way (K = q_dim +
 *         2 kv_dim) where wq, wk, wv are adjacent; the first product into dh, datt and dxb has beta 0 (no clearing
 *         pass). dq and dk stay unrotated in fp32 (nothing reads them after).
 *   RMSNorm backward (xlkv_cuda_train_rmsnorm_backward_folded): the gain gradient is accumulated in the rows pass
 *         (a CTA per 64-row chunk, per-warp column sums in shared memory, added in a fixed order) instead of a second
 *         pass over dy and x; dx and bf16(dx) are the same bits, dgain differs only in fp32 summation order
 *         (deterministic). The final norm's backward writes dx (the _set launcher) instead of clearing it and adding.
 *         The RMSNorm rows (forward and backward) are held in registers (train_rmsnorm_rows.cuh: one trip to memory
 *         a row; XLKV_TRAIN_NORM_ROWS=loops takes the former loop kernels, the same bits, for an A/B in one build).
 *   optimizer: clip_grad_norm sums the norm's chunk partials in order on the GPU (xlkv_cuda_train_clip_coefficient:
 *         the same double sum and sqrt as the host loop, so the same norm bits) and leaves the coefficient in device
 *         memory; no host round trip, no scaling pass over the gradients (they stay unscaled). AdamW
 *         (xlkv_cuda_train_adamw_bf16_runs, float4) multiplies each gradient by the coefficient (the same fp32 multiply
 *         as the scaling pass), updates, and writes the bf16 weight shadow in the same pass (no separate shadow pass);
 *         adjacent tensors share a launch, as runs with their own decay (one launch for the store, up to 64 runs).
 *         The parameters, moments and shadow are the same bits as the unfused scale + adamw + to_bf16. The trainer
 *         reads the norm after the step (xlkv_gpu_trainer_grad_norm).
 *   Values: every fused kernel computes the fp32 value of the unfused one from its inputs and rounds it the same way
 *   (a kernel with bf16 inputs widens them exactly: tests/cuda/test_cuda_train_bf16_inputs.c), but the inputs are
 *   the bf16 outputs of the products above where the unfused path keeps fp32: the two paths differ by those bf16
 *   roundings (u = 2^-8 relative each), plus the backward products' fp32 accumulation order (beta 0, merged K) and
 *   the RMSNorm gain gradients' fp32 summation order (tests/cuda/test_cuda_train_fused.c: losses within u relative,
 *   gradients within 3e-2 of each tensor's largest). */
#include "train/gpu_trainer.h"
#include "model/rope_tables.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "backend/cuda/cuda_check.h"
#include "backend/cuda/train_attention_flash.h"
#include "backend/cuda/train_bf16.h"
#include "backend/cuda/train_cross_entropy.h"
#include "backend/cuda/train_fused.h"
#include "backend/cuda/train_gemm_lt.h"
#include "backend/cuda/train_gpu_buffers.h"
#include "backend/cuda/train_kernels.h"
#include "backend/cuda/train_profile.h"
#include "core/status.h"
#include "train/train_graph.h"

typedef xlkv_layer_record gpu_record; /* train/train_tape.h: the CPU trainer's record */

/* a grad record's product inputs in bf16, written by the forward's products and read by the backward's dW products
 * (bf16 operands only) */
typedef struct bf16_inputs {
    uint16_t *xb, *att, *xb2, *h;
    uint16_t *gu; /* fused path: the gate|up product's output [N, 2 hidden] (gate | up per row), in bf16 */
} bf16_inputs;

typedef struct kv_source {
    const float *k, *v;
    float *dk, *dv;
    /* flash_prologue, dk non-NULL: the grad record that owns dk / dv and the last grad record (so far in the
     * forward) that reads them, the first to write them in the backward (indices into records; -1: none yet) */
    int owner, last_reader;
} kv_source;

struct xlkv_gpu_trainer {
    const xlkv_param_store *store; /* layout, shape and map (host) */
    int batch, seq, n_rows, forward_passes, backward_passes;
    bool bf16;
    bool bf16_operands; /* the products read bf16 copies (bf16 trainer unless XLKV_TRAIN_GEMM=fp32ops) */
    bool fused_ce;      /* bf16 logits + fused cross-entropy in dy_bf16, no probs (bf16 operands unless
                         * XLKV_TRAIN_CE=fp32; see the header) */
    bool fuse;          /* the fused layer passes (bf16 operands unless XLKV_TRAIN_FUSE=0; see the header) */
    bool dx16_ready;    /* backward, fused: dy_bf16 holds bf16(dx), written by the last RMSNorm backward */
    const float *pending_a;             /* forward, fused: x = a + float(pending_b16) not formed yet (the next */
    const uint16_t *pending_b16;        /* RMSNorm adds it; b is the down product's bf16 output) */
    cudaStream_t stream;
    xlkv_cuda_step_timer *timer; /* NULL: profiling off (the default) */
    xlkv_step_profile profile;   /* per-category totals since profiling was turned on */
    cublasHandle_t cublas;
    void *workspace;
    size_t workspace_bytes;
    xlkv_train_gemm_lt_mode gemm_lt_mode; /* XLKV_TRAIN_GEMM_LT (bf16 operands only; see the header) */
    const char *gemm_lt_file;             /* tune=FILE (the environment's string; read at creation only) or NULL */
    xlkv_train_gemm_lt *gemm_lt;          /* the cuBLASLt plans (NULL: cublasGemmEx) */
    float *params, *grads, *adam_m, *adam_v; /* device [n_params] */
    uint16_t *params_bf16;                   /* device [n_params]: bf16 shadow of params (bf16_operands only) */
    uint16_t *x_bf16, *dy_bf16;              /* device product scratch (bf16_operands only; sizes: header) */
    uint16_t *branch_bf16; /* fused: [N, dim] the o / down products' bf16 outputs (forward), the bf16 dX products'
                            * outputs feeding an RMSNorm backward (backward) */
    bf16_inputs *record_inputs;              /* [n_records] into record_inputs_arena (bf16_operands only) */
    uint16_t *record_inputs_arena;
    xlkv_layer_weights *w, *dw;              /* [n_layers] device pointers into params / grads */
    float *tok_embeddings, *output_norm, *output, *d_tok_embeddings, *d_output_norm, *d_output;
    gpu_record *records;
    int n_records;
    gpu_record scratch;
    kv_source *current; /* [n_kv_layers + 1] */
    float *const_k, *const_v, *rope_cos, *rope_sin;
    float *x, *x_group_in, *final_inv_rms, *x_final, *xf, *probs;
    float *dx, *dx_group_in, *dxb, *dq, *datt, *dgate, *dup, *dh, *delta, *partials;
    enum { ATTENTION_WARP, ATTENTION_GEMM, ATTENTION_FLASH } attention;
    float *scores, *dscores; /* [n_heads][batch][seq][seq] (gemm attention only) */
    void *flash_workspace;   /* flash attention's bf16 staging (NULL unless flash runs) */
    bool flash_rope;         /* flash rotates q / k while staging: the forward RoPE passes are skipped (see header) */
    xlkv_cuda_train_flash_rope flash_rope_args; /* the tables as the flash calls take them */
    bool flash_prologue;     /* flash: no dK/dV clears (the first writer overwrites), delta in the dQ kernel (header) */
    bool *dkdv_overwrite;    /* [n_records] flash_prologue: the record's backward writes its read dK/dV, not adds */
    bool *dkdv_unread;       /* [n_records] flash_prologue: a KV record whose dK/dV no grad record reads (cleared in
                              * the backward before its own products read them) */
    bool flash_kv16;         /* flash: the bf16 K / V the kernels stream are kept per KV record (XLKV_TRAIN_FLASH_KV16) */
    uint16_t *kv16_arena;    /* flash_kv16: [KV records][2][N kv_dim] bf16, K then V */
    uint16_t **record_kv16;  /* [n_records] flash_kv16: a KV record's pair in kv16_arena (NULL: not a KV record) */
    bool *kv16_ready;        /* [n_records] flash_kv16: the pair holds this forward's rounding of the record's K / V */
    int *read_owner;         /* [n_records] flash_kv16: the KV record whose K / V the record reads (-1: constant K/V) */
    double *row_loss, *norm_partials;       /* device */
    double *clip_norm;                      /* device: the last gradient norm (fused: clip_grad_norm writes it) */
    float *clip_coef, *clip_one;            /* device: the clip coefficient, and a constant 1 (fused AdamW) */
    bool clip_queued;                       /* fused: clip_coef holds this step's coefficient for AdamW */
    bool norm_on_device;                    /* the last norm is in clip_norm (else host_norm) */
    double host_norm;
    int *tokens, *targets, *order, *starts; /* device [n_rows] (+1 for starts) */
    int n_groups;
    float *arena;
    int *int_arena;
    double *double_arena;
    double *host_row_loss, *host_norm_partials;
    int *host_order, *host_starts, *host_counts;
};

#define KERNEL_TRY(call, what)                                                                                         \
    do {                                                                                                               \
        int kernel_err_ = (call);                                                                                      \
        if (kernel_err_) return xlkv_cuda_fail((cudaError_t)kernel_err_, (what));                                      \
    } while (0)

/* 256-byte alignment for every buffer */
static float *take(float *base, size_t *cursor, size_t n) { return xlkv_tape_take(base, cursor, n, 64); }

static size_t carve_all(xlkv_gpu_trainer *g, float *base) {
    const xlkv_hparams *hp = &g->store->hp;
    const xlkv_layer_map *map = g->store->map;
    const size_t N = (size_t)g->n_rows, dim = (size_t)hp->dim, hid = (size_t)hp->hidden_dim;
    const size_t q_dim = (size_t)hp->n_heads * (size_t)hp->head_dim, kv_dim = (size_t)hp->n_kv_heads * (size_t)hp->head_dim;
    size_t cursor = 0;
    g->rope_cos = take(base, &cursor, (size_t)g->seq * (size_t)(hp->head_dim / 2));
    g->rope_sin = take(base, &cursor, (size_t)g->seq * (size_t)(hp->head_dim / 2));
    const bool fp32_products = !g->fuse; /* the fused path keeps only bf16 copies / outputs (record_inputs) */
    for (int r = 0; r < g->n_records; r++)
        xlkv_tape_carve_record(&g->records[r], hp, N, xlkv_is_kv_layer(map, g->records[r].layer), fp32_products, base,
                               &cursor, 64);
    xlkv_tape_carve_record(&g->scratch, hp, N, false, fp32_products, base, &cursor, 64);
    if (xlkv_layer_map_has_cyclic(map)) {
        g->const_k = take(base, &cursor, (size_t)map->n_kv_layers * N * kv_dim);
        g->const_v = take(base, &cursor, (size_t)map->n_kv_layers * N * kv_dim);
    }
    g->x = take(base, &cursor, N * dim);
    g->x_group_in = take(base, &cursor, N * dim);
    g->final_inv_rms = take(base, &cursor, N);
    g->x_final = take(base, &cursor, N * dim);
    g->xf = take(base, &cursor, N * dim);
    g->probs = g->fused_ce ? NULL : take(base, &cursor, N * (size_t)hp->vocab_size); /* fused: dy_bf16 instead */
    g->dx = take(base, &cursor, N * dim);
    g->dx_group_in = take(base, &cursor, N * dim);
    g->dxb = take(base, &cursor, N * dim);
    g->dq = take(base, &cursor, N * q_dim);
    g->datt = take(base, &cursor, N * q_dim);
    if (!g->fuse) { /* fused: [dgate | dup] in dy_bf16, dh in x_bf16, both bf16 */
        g->dgate = take(base, &cursor, N * hid);
        g->dup = take(base, &cursor, N * hid);
        g->dh = take(base, &cursor, N * hid);
    }
    g->delta = take(base, &cursor, N * (size_t)hp->n_heads);
    g->partials = take(base, &cursor, ((N + XLKV_CUDA_TRAIN_ROW_CHUNK - 1) / XLKV_CUDA_TRAIN_ROW_CHUNK) * dim);
    return cursor;
}

/* Device pointer of a host pointer into the store's params (or grads): same offset. */
static float *device_of(const float *host, const float *host_base, float *device_base) {
    return host ? device_base + (host - host_base) : NULL;
}

static void map_weights(xlkv_gpu_trainer *g) {
    const xlkv_param_store *s = g->store;
    for (int l = 0; l < s->hp.n_layers; l++) {
        const xlkv_layer_weights *hw = &s->weights.layers[l];
        xlkv_layer_weights *w = &g->w[l], *dw = &g->dw[l];
#define MAP(field)                                                                                                     \
    w->field = device_of(hw->field, s->params, g->params);                                                            \
    dw->field = device_of(hw->field, s->params, g->grads);
        MAP(attn_norm) MAP(wq) MAP(wk) MAP(wv) MAP(wo) MAP(ffn_norm) MAP(w_gate) MAP(w_up) MAP(w_down)
#undef MAP
    }
    g->tok_embeddings = device_of(s->weights.tok_embeddings, s->params, g->params);
    g->output_norm = device_of(s->weights.output_norm, s->params, g->params);
    g->output = device_of(s->weights.output, s->params, g->params);
    g->d_tok_embeddings = device_of(s->weights.tok_embeddings, s->params, g->grads);
    g->d_output_norm = device_of(s->weights.output_norm, s->params, g->grads);
    g->d_output = device_of(s->weights.output, s->params, g->grads);
}

static xlkv_status upload_rope_tables(xlkv_gpu_trainer *g) {
    const int hd = g->store->hp.head_dim, half = hd / 2;
    const float theta = g->store->hp.rope_theta;
    const size_t n = (size_t)g->seq * (size_t)half;
    float *cos_table = malloc(n * sizeof *cos_table), *sin_table = malloc(n * sizeof *sin_table);
    if (!cos_table || !sin_table) {
        free(cos_table);
        free(sin_table);
        return xlkv_fail(XLKV_E_NOMEM, "GPU trainer: out of host memory");
    }
    xlkv_rope_tables_fill(cos_table, sin_table, g->seq, hd, theta);
    cudaError_t err = cudaMemcpy(g->rope_cos, cos_table, n * sizeof(float), cudaMemcpyHostToDevice);
    if (err == cudaSuccess) err = cudaMemcpy(g->rope_sin, sin_table, n * sizeof(float), cudaMemcpyHostToDevice);
    free(cos_table);
    free(sin_table);
    if (err != cudaSuccess) return xlkv_cuda_fail(err, "uploading the RoPE tables");
    return XLKV_OK;
}

/* XLKV_TRAIN_GEMM (bf16 or fp32 operands) and XLKV_TRAIN_CE (the classifier's cross-entropy: fused on bf16 logits,
 * or fp32 logits and probabilities as before); read before anything is allocated (see header). */
static xlkv_status choose_product_paths(xlkv_gpu_trainer *g) {
    const char *choice = getenv("XLKV_TRAIN_GEMM");
    if (!choice || !*choice || !strcmp(choice, "bf16ops")) g->bf16_operands = g->bf16;
    else if (!strcmp(choice, "fp32ops")) g->bf16_operands = false;
    else return xlkv_fail(XLKV_E_INVALID, "XLKV_TRAIN_GEMM=%s: expected bf16ops or fp32ops", choice);
    const char *ce = getenv("XLKV_TRAIN_CE");
    if (ce && *ce && strcmp(ce, "fused") && strcmp(ce, "fp32"))
        return xlkv_fail(XLKV_E_INVALID, "XLKV_TRAIN_CE=%s: expected fused or fp32", ce);
    if (ce && !strcmp(ce, "fused") && g->bf16 && !g->bf16_operands)
        return xlkv_fail(XLKV_E_INVALID, "XLKV_TRAIN_CE=fused needs bf16 operands (the classifier writes bf16 logits "
                         "from bf16 operands); XLKV_TRAIN_GEMM=fp32ops keeps the fp32 cross-entropy");
    g->fused_ce = g->bf16_operands && !(ce && !strcmp(ce, "fp32"));
    const char *fuse = getenv("XLKV_TRAIN_FUSE");
    if (fuse && *fuse && strcmp(fuse, "0") && strcmp(fuse, "1"))
        return xlkv_fail(XLKV_E_INVALID, "XLKV_TRAIN_FUSE=%s: expected 1 (fused layer passes, the default) or 0", fuse);
    g->fuse = g->bf16_operands && !(fuse && !strcmp(fuse, "0"));
    XLKV_TRY(xlkv_train_gemm_lt_parse(getenv("XLKV_TRAIN_GEMM_LT"), &g->gemm_lt_mode, &g->gemm_lt_file));
    if (!g->bf16) g->gemm_lt_mode = XLKV_TRAIN_GEMM_LT_OFF; /* the f32 trainer keeps its exact products */
    if (g->gemm_lt_mode != XLKV_TRAIN_GEMM_LT_OFF && !g->bf16_operands)
        return xlkv_fail(XLKV_E_INVALID, "XLKV_TRAIN_GEMM_LT=%s needs bf16 operands (XLKV_TRAIN_GEMM=fp32ops keeps "
                         "cublasGemmEx)", getenv("XLKV_TRAIN_GEMM_LT"));
    return XLKV_OK;
}

/* Every bf16-operand product the step can call (the same shapes as the call sites below: layer_forward,
 * layer_backward(_fused), the classifiers), into s (room for 24 per layer + 3); returns how many (duplicates kept:
 * the plans merge them). A shape missing here fails at its call, naming it. */
static int list_bf16_products(const xlkv_gpu_trainer *g, xlkv_train_gemm_shape *s) {
    const xlkv_hparams *hp = &g->store->hp;
    const int N = g->n_rows, dim = hp->dim, hid = hp->hidden_dim, vocab = hp->vocab_size;
    const int q = hp->n_heads * hp->head_dim, kv = hp->n_kv_heads * hp->head_dim;
    const size_t qd = (size_t)q * (size_t)dim, kvd = (size_t)kv * (size_t)dim;
    int n = 0;
    for (int l = 0; l < hp->n_layers; l++) {
        const xlkv_layer_weights *w = &g->w[l];
        const bool kv_layer = xlkv_is_kv_layer(g->store->map, l);
        if (!g->fuse) { /* linear / linear_backward: fp32 C; dX beta 1 into cleared buffers */
            const int in[] = {dim, dim, q, dim, hid}, out[] = {q, kv, dim, hid, dim}; /* q, k / v, o, gate / up, down */
            for (int i = 0; i < 5; i++) {
                if (i == 1 && !kv_layer) continue;
                s[n++] = xlkv_train_gemm_forward(N, in[i], out[i], out[i], false);
                s[n++] = xlkv_train_gemm_input_grad(N, in[i], out[i], out[i], false, true);
                s[n++] = xlkv_train_gemm_weight_grad(N, in[i], out[i], out[i]);
            }
            continue;
        }
        /* fused: forward */
        const bool gate_up_one = w->w_up == w->w_gate + (size_t)hid * (size_t)dim;
        s[n++] = xlkv_train_gemm_forward(N, dim, q, q, false);
        if (kv_layer) s[n++] = xlkv_train_gemm_forward(N, dim, kv, kv, false);
        s[n++] = xlkv_train_gemm_forward(N, q, dim, dim, true);
        s[n++] = xlkv_train_gemm_forward(N, dim, gate_up_one ? 2 * hid : hid, 2 * hid, true);
        s[n++] = xlkv_train_gemm_forward(N, hid, dim, dim, true);
        /* fused: backward (layer_backward_fused) */
        s[n++] = xlkv_train_gemm_input_grad(N, hid, dim, dim, true, false);
        s[n++] = xlkv_train_gemm_weight_grad(N, hid, dim, dim);
        if (gate_up_one) {
            s[n++] = xlkv_train_gemm_input_grad(N, dim, 2 * hid, 2 * hid, true, false);
            s[n++] = xlkv_train_gemm_weight_grad(N, dim, 2 * hid, 2 * hid);
        } else {
            s[n++] = xlkv_train_gemm_input_grad(N, dim, hid, 2 * hid, false, false);
            s[n++] = xlkv_train_gemm_input_grad(N, dim, hid, 2 * hid, false, true);
            s[n++] = xlkv_train_gemm_weight_grad(N, dim, hid, 2 * hid);
        }
        s[n++] = xlkv_train_gemm_input_grad(N, q, dim, dim, false, false);
        s[n++] = xlkv_train_gemm_weight_grad(N, q, dim, dim);
        const int ld = kv_layer ? q + 2 * kv : q;
        if (!kv_layer || (w->wk == w->wq + qd && w->wv == w->wk + kvd)) {
            s[n++] = xlkv_train_gemm_input_grad(N, dim, ld, ld, true, false);
            s[n++] = xlkv_train_gemm_weight_grad(N, dim, ld, ld);
        } else {
            s[n++] = xlkv_train_gemm_input_grad(N, dim, q, ld, false, false);
            s[n++] = xlkv_train_gemm_input_grad(N, dim, kv, ld, false, true);
            s[n++] = xlkv_train_gemm_weight_grad(N, dim, q, ld);
            s[n++] = xlkv_train_gemm_weight_grad(N, dim, kv, ld);
        }
    }
    /* the classifier: fused cross-entropy (bf16 logits; dX bf16 on the fused layer path, else fp32, beta 0), or
     * fp32 logits and the generic backward (dX beta 1) */
    s[n++] = xlkv_train_gemm_forward(N, dim, vocab, vocab, g->fused_ce);
    s[n++] = xlkv_train_gemm_input_grad(N, dim, vocab, vocab, g->fused_ce && g->fuse, !g->fused_ce);
    s[n++] = xlkv_train_gemm_weight_grad(N, dim, vocab, vocab);
    return n;
}

/* XLKV_TRAIN_GEMM_LT: the plans of every product, chosen before the activations are allocated (tune times on
 * buffers of its own and frees them) */
static xlkv_status setup_gemm_lt(xlkv_gpu_trainer *g) {
    if (g->gemm_lt_mode == XLKV_TRAIN_GEMM_LT_OFF) return XLKV_OK;
    xlkv_train_gemm_shape *shapes = malloc(((size_t)g->store->hp.n_layers * 24 + 3) * sizeof *shapes);
    if (!shapes) return xlkv_fail(XLKV_E_NOMEM, "GPU trainer: out of host memory");
    const int n = list_bf16_products(g, shapes);
    xlkv_status status = xlkv_train_gemm_lt_create(shapes, n, g->gemm_lt_mode, g->gemm_lt_file, g->workspace,
                                                   g->workspace_bytes, g->stream, g->cublas, &g->gemm_lt);
    free(shapes);
    return status;
}

/* For bf16 operands, the weight shadow and the two conversion scratch buffers (see header). */
static xlkv_status setup_bf16_operands(xlkv_gpu_trainer *g) {
    const xlkv_hparams *hp = &g->store->hp;
    if (!g->bf16_operands) return XLKV_OK;
    const size_t N = (size_t)g->n_rows, dim = (size_t)hp->dim, hid = (size_t)hp->hidden_dim;
    const size_t q_dim = (size_t)hp->n_heads * (size_t)hp->head_dim;
    const size_t kv_dim = (size_t)hp->n_kv_heads * (size_t)hp->head_dim;
    size_t max_in = dim > q_dim ? dim : q_dim;
    if (hid > max_in) max_in = hid;
    size_t max_out = max_in > kv_dim ? max_in : kv_dim;
    if ((size_t)hp->vocab_size > max_out) max_out = (size_t)hp->vocab_size;
    if (2 * hid > max_out) max_out = 2 * hid;                   /* fused: [dgate | dup] */
    if (q_dim + 2 * kv_dim > max_out) max_out = q_dim + 2 * kv_dim; /* fused: [dq | dk | dv] */
    const size_t per_record = N * (2 * dim + q_dim + hid + (g->fuse ? 2 * hid : 0)); /* xb, att, xb2, h (, gu) */
    g->record_inputs = calloc((size_t)g->n_records, sizeof *g->record_inputs);
    if (!g->record_inputs) return xlkv_fail(XLKV_E_NOMEM, "GPU trainer: out of host memory");
    XLKV_TRY(xlkv_cuda_alloc((void **)&g->params_bf16, g->store->n_params * sizeof(uint16_t),
                             "the bf16 copy of the parameters (XLKV_TRAIN_GEMM=fp32ops does without)"));
    XLKV_TRY(xlkv_cuda_alloc((void **)&g->x_bf16, N * max_in * sizeof(uint16_t),
                             "the bf16 product scratch for inputs (XLKV_TRAIN_GEMM=fp32ops does without)"));
    XLKV_TRY(xlkv_cuda_alloc((void **)&g->dy_bf16, N * max_out * sizeof(uint16_t),
                             "the bf16 product scratch for gradients (XLKV_TRAIN_GEMM=fp32ops does without)"));
    XLKV_TRY(xlkv_cuda_alloc((void **)&g->record_inputs_arena, (size_t)g->n_records * per_record * sizeof(uint16_t),
                             "the bf16 copies of the saved product inputs (XLKV_TRAIN_GEMM=fp32ops does without)"));
    for (int r = 0; r < g->n_records; r++) {
        uint16_t *base = g->record_inputs_arena + (size_t)r * per_record;
        g->record_inputs[r] = (bf16_inputs){.xb = base, .att = base + N * dim, .xb2 = base + N * (dim + q_dim),
                                            .h = base + N * (2 * dim + q_dim),
                                            .gu = g->fuse ? base + N * (2 * dim + q_dim + hid) : NULL};
    }
    if (g->fuse)
        XLKV_TRY(xlkv_cuda_alloc((void **)&g->branch_bf16, N * dim * sizeof(uint16_t),
                                 "the bf16 branch outputs of the fused layer passes (XLKV_TRAIN_FUSE=0 does without)"));
    return XLKV_OK;
}

/* params_bf16 = bf16(params), after anything that writes params (upload, AdamW) */
static xlkv_status refresh_weight_shadow(xlkv_gpu_trainer *g) {
    if (!g->bf16_operands) return XLKV_OK;
    KERNEL_TRY(xlkv_cuda_train_to_bf16(g->params_bf16, g->params, 1, g->store->n_params, g->store->n_params, g->stream),
               "bf16 copy of the parameters");
    return XLKV_OK;
}

static xlkv_status setup(xlkv_gpu_trainer *g) {
    const xlkv_param_store *s = g->store;
    const xlkv_hparams *hp = &s->hp;
    const size_t N = (size_t)g->n_rows, n_params = s->n_params;
    /* a blocking stream: it orders with the legacy default stream that cudaMemcpy / cudaMemset use */
    XLKV_CUDA_TRY(cudaStreamCreate(&g->stream), "creating the trainer's stream");
    XLKV_CUBLAS_TRY(cublasCreate(&g->cublas), "creating the cuBLAS handle");
    XLKV_CUBLAS_TRY(cublasSetStream(g->cublas, g->stream), "binding cuBLAS to the trainer's stream");
    const size_t workspace = (size_t)32 << 20;
    g->workspace_bytes = workspace;
    XLKV_TRY(xlkv_cuda_alloc(&g->workspace, workspace, "the cuBLAS workspace"));
    XLKV_CUBLAS_TRY(cublasSetWorkspace(g->cublas, g->workspace, workspace), "giving cuBLAS its workspace");
    XLKV_CUBLAS_TRY(cublasSetMathMode(g->cublas, g->bf16 ? CUBLAS_DEFAULT_MATH : CUBLAS_PEDANTIC_MATH),
                    "setting the cuBLAS math mode");
    XLKV_TRY(xlkv_cuda_alloc((void **)&g->params, 4 * n_params * sizeof(float), "parameters, gradients, AdamW moments"));
    g->grads = g->params + n_params;
    g->adam_m = g->grads + n_params;
    g->adam_v = g->adam_m + n_params;
    XLKV_CUDA_TRY(cudaMemset(g->grads, 0, n_params * sizeof(float)), "zeroing the gradients");
    g->n_records = xlkv_tape_plan(g->store->map, g->backward_passes, NULL);
    g->records = calloc((size_t)g->n_records, sizeof *g->records);
    g->dkdv_overwrite = calloc((size_t)g->n_records, sizeof *g->dkdv_overwrite);
    g->dkdv_unread = calloc((size_t)g->n_records, sizeof *g->dkdv_unread);
    g->record_kv16 = calloc((size_t)g->n_records, sizeof *g->record_kv16);
    g->kv16_ready = calloc((size_t)g->n_records, sizeof *g->kv16_ready);
    g->read_owner = calloc((size_t)g->n_records, sizeof *g->read_owner);
    g->w = calloc((size_t)hp->n_layers, sizeof *g->w);
    g->dw = calloc((size_t)hp->n_layers, sizeof *g->dw);
    g->current = calloc((size_t)s->map->n_kv_layers + 1, sizeof *g->current);
    const size_t norm_chunks = (n_params + XLKV_CUDA_TRAIN_NORM_CHUNK - 1) / XLKV_CUDA_TRAIN_NORM_CHUNK;
    g->host_row_loss = malloc(N * sizeof(double));
    g->host_norm_partials = malloc((norm_chunks + 1) * sizeof(double));
    g->host_order = malloc(N * sizeof(int));
    g->host_starts = malloc((N + 1) * sizeof(int));
    g->host_counts = malloc(((size_t)hp->vocab_size + 1) * sizeof(int));
    if (!g->records || !g->dkdv_overwrite || !g->dkdv_unread || !g->record_kv16 || !g->kv16_ready || !g->read_owner ||
        !g->w || !g->dw || !g->current || !g->host_row_loss || !g->host_norm_partials ||
        !g->host_order || !g->host_starts || !g->host_counts)
        return xlkv_fail(XLKV_E_NOMEM, "GPU trainer: out of host memory");
    xlkv_tape_plan(g->store->map, g->backward_passes, g->records);
    map_weights(g);
    XLKV_TRY(choose_product_paths(g)); /* before carving: the fused cross-entropy needs no probs */
    XLKV_TRY(setup_gemm_lt(g));        /* before the activations: tuning's operands come and go */
    const size_t floats = carve_all(g, NULL);
    XLKV_TRY(xlkv_cuda_alloc((void **)&g->arena, floats * sizeof(float), "the trainer's activations"));
    carve_all(g, g->arena);
    XLKV_TRY(setup_bf16_operands(g));
    XLKV_TRY(xlkv_cuda_alloc((void **)&g->int_arena, (4 * N + 1) * sizeof(int), "token buffers"));
    g->tokens = g->int_arena;
    g->targets = g->tokens + N;
    g->order = g->targets + N;
    g->starts = g->order + N;
    /* the row losses, the norm's chunk partials (+1), the norm, and the clip coefficient and a 1 (two floats) */
    XLKV_TRY(xlkv_cuda_alloc((void **)&g->double_arena, (N + norm_chunks + 3) * sizeof(double), "loss buffers"));
    g->row_loss = g->double_arena;
    g->norm_partials = g->row_loss + N;
    g->clip_norm = g->norm_partials + norm_chunks + 1;
    g->clip_coef = (float *)(g->clip_norm + 1);
    g->clip_one = g->clip_coef + 1;
    const float one = 1.0f;
    XLKV_CUDA_TRY(cudaMemcpy(g->clip_one, &one, sizeof one, cudaMemcpyHostToDevice), "setting the clip constant");
    const size_t score_floats = (size_t)hp->n_heads * N * (size_t)g->seq;
    const char *choice = getenv("XLKV_TRAIN_ATTENTION");
    const xlkv_cuda_train_attention_shape flash_shape = {.batch = g->batch, .seq = g->seq, .n_heads = hp->n_heads,
                                                         .n_kv_heads = hp->n_kv_heads, .head_dim = hp->head_dim};
    const bool flash_ok = g->bf16 && xlkv_cuda_train_attention_flash_supported(&flash_shape);
    if (choice && !strcmp(choice, "warp")) g->attention = ATTENTION_WARP;
    else if (choice && !strcmp(choice, "gemm")) g->attention = ATTENTION_GEMM;
    else if (choice && !strcmp(choice, "flash")) {
        if (!flash_ok)
            return xlkv_fail(XLKV_E_INVALID, "XLKV_TRAIN_ATTENTION=flash needs --dtype bf16 and head_dim 64 or 128 "
                             "(this run: %s, head_dim %d)", g->bf16 ? "bf16" : "f32", hp->head_dim);
        g->attention = ATTENTION_FLASH;
    } else if (choice && *choice)
        return xlkv_fail(XLKV_E_INVALID, "XLKV_TRAIN_ATTENTION=%s: expected warp, gemm or flash", choice);
    else if (flash_ok) g->attention = ATTENTION_FLASH;
    else g->attention = 2 * score_floats * sizeof(float) <= ((size_t)8 << 30) ? ATTENTION_GEMM : ATTENTION_WARP;
    const char *norm_rows = getenv("XLKV_TRAIN_NORM_ROWS"); /* read by the RMSNorm launchers (train_rmsnorm_rows.cuh) */
    if (norm_rows && *norm_rows && strcmp(norm_rows, "registers") && strcmp(norm_rows, "loops"))
        return xlkv_fail(XLKV_E_INVALID, "XLKV_TRAIN_NORM_ROWS=%s: expected registers (RMSNorm rows held in registers, "
                         "the default) or loops (the former loop kernels)", norm_rows);
    const char *flash_rope = getenv("XLKV_TRAIN_FLASH_ROPE");
    if (flash_rope && *flash_rope && strcmp(flash_rope, "0") && strcmp(flash_rope, "1"))
        return xlkv_fail(XLKV_E_INVALID, "XLKV_TRAIN_FLASH_ROPE=%s: expected 1 (RoPE inside the flash kernels' "
                         "staging, the default) or 0 (separate RoPE passes)", flash_rope);
    g->flash_rope = g->attention == ATTENTION_FLASH && !(flash_rope && !strcmp(flash_rope, "0"));
    const char *prologue = getenv("XLKV_TRAIN_FLASH_PROLOGUE");
    if (prologue && *prologue && strcmp(prologue, "0") && strcmp(prologue, "1"))
        return xlkv_fail(XLKV_E_INVALID, "XLKV_TRAIN_FLASH_PROLOGUE=%s: expected 1 (no dK/dV clears, delta inside the "
                         "flash dQ kernel, the default) or 0 (clears and the separate delta passes)", prologue);
    g->flash_prologue = g->attention == ATTENTION_FLASH && !(prologue && !strcmp(prologue, "0"));
    if (g->attention == ATTENTION_FLASH)
        XLKV_TRY(xlkv_cuda_alloc(&g->flash_workspace, xlkv_cuda_train_attention_flash_workspace_bytes(&flash_shape),
                                 "the flash attention workspace"));
    const char *kv16 = getenv("XLKV_TRAIN_FLASH_KV16");
    if (kv16 && *kv16 && strcmp(kv16, "0") && strcmp(kv16, "1"))
        return xlkv_fail(XLKV_E_INVALID, "XLKV_TRAIN_FLASH_KV16=%s: expected 1 (the flash kernels' bf16 K / V kept per KV "
                         "record, the default) or 0 (rounded again by every flash call)", kv16);
    g->flash_kv16 = g->attention == ATTENTION_FLASH && !(kv16 && !strcmp(kv16, "0"));
    if (g->flash_kv16) { /* 4 N kv_dim bytes per KV record (`small`, standard map: 12 x 25 MB = 0.3 GB) */
        const size_t pair = 2 * (size_t)g->n_rows * (size_t)hp->n_kv_heads * (size_t)hp->head_dim;
        size_t n_kv_records = 0;
        for (int r = 0; r < g->n_records; r++) n_kv_records += xlkv_is_kv_layer(s->map, g->records[r].layer);
        if (n_kv_records > 0)
            XLKV_TRY(xlkv_cuda_alloc((void **)&g->kv16_arena, n_kv_records * pair * sizeof(uint16_t),
                                     "the flash bf16 K / V copies (XLKV_TRAIN_FLASH_KV16=0 does without)"));
        size_t used = 0;
        for (int r = 0; r < g->n_records; r++)
            if (xlkv_is_kv_layer(s->map, g->records[r].layer)) {
                g->record_kv16[r] = g->kv16_arena + used;
                used += pair;
            }
    }
    if (g->attention == ATTENTION_GEMM) {
        XLKV_TRY(xlkv_cuda_alloc((void **)&g->scores, score_floats * sizeof(float), "attention scores"));
        XLKV_TRY(xlkv_cuda_alloc((void **)&g->dscores, score_floats * sizeof(float), "attention score gradients"));
    }
    XLKV_TRY(upload_rope_tables(g));
    return XLKV_OK;
}

xlkv_status xlkv_gpu_trainer_create(const xlkv_param_store *store, int batch, int seq, int forward_passes,
                                    int backward_passes, bool bf16, xlkv_gpu_trainer **out) {
    *out = NULL;
    XLKV_TRY(xlkv_train_graph_check(store, batch, seq, forward_passes, backward_passes));
    if (store->hp.head_dim > 256 || store->hp.head_dim % 2)
        return xlkv_fail(XLKV_E_INVALID, "GPU trainer: head_dim %d is not supported (even, at most 256)",
                         store->hp.head_dim);
    int devices = 0;
    cudaError_t err = cudaGetDeviceCount(&devices);
    if (err != cudaSuccess || devices == 0)
        return xlkv_fail(XLKV_E_BACKEND, "--device cuda: no CUDA device is usable (%s)",
                         err != cudaSuccess ? cudaGetErrorString(err) : "no device");
    xlkv_gpu_trainer *g = calloc(1, sizeof *g);
    if (!g) return xlkv_fail(XLKV_E_NOMEM, "GPU trainer: out of memory");
    g->store = store;
    g->batch = batch;
    g->seq = seq;
    g->n_rows = batch * seq;
    g->forward_passes = forward_passes;
    g->backward_passes = backward_passes;
    g->bf16 = bf16;
    xlkv_status status = setup(g);
    if (status == XLKV_OK) status = xlkv_gpu_trainer_upload(g, store);
    const char *profile = getenv("XLKV_TRAIN_PROFILE");
    if (status == XLKV_OK && profile && *profile && strcmp(profile, "0")) status = xlkv_gpu_trainer_set_profile(g, true);
    if (status != XLKV_OK) {
        xlkv_gpu_trainer_free(g);
        return status;
    }
    *out = g;
    return XLKV_OK;
}

void xlkv_gpu_trainer_free(xlkv_gpu_trainer *g) {
    if (!g) return;
    if (g->stream) (void)cudaStreamSynchronize(g->stream);
    if (g->cublas) (void)cublasDestroy(g->cublas);
    xlkv_train_gemm_lt_free(g->gemm_lt);
    xlkv_cuda_step_timer_free(g->timer);
    cudaFree(g->workspace);
    cudaFree(g->params);
    cudaFree(g->params_bf16);
    cudaFree(g->x_bf16);
    cudaFree(g->dy_bf16);
    cudaFree(g->branch_bf16);
    cudaFree(g->record_inputs_arena);
    free(g->record_inputs);
    cudaFree(g->arena);
    cudaFree(g->int_arena);
    cudaFree(g->double_arena);
    cudaFree(g->scores);
    cudaFree(g->dscores);
    cudaFree(g->flash_workspace);
    if (g->stream) (void)cudaStreamDestroy(g->stream);
    free(g->records);
    free(g->dkdv_overwrite);
    free(g->dkdv_unread);
    free(g->record_kv16);
    free(g->kv16_ready);
    free(g->read_owner);
    cudaFree(g->kv16_arena);
    free(g->w);
    free(g->dw);
    free(g->current);
    free(g->host_row_loss);
    free(g->host_norm_partials);
    free(g->host_order);
    free(g->host_starts);
    free(g->host_counts);
    free(g);
}

xlkv_status xlkv_gpu_trainer_upload(xlkv_gpu_trainer *g, const xlkv_param_store *store) {
    const size_t bytes = store->n_params * sizeof(float);
    XLKV_CUDA_TRY(cudaMemcpy(g->params, store->params, bytes, cudaMemcpyHostToDevice), "uploading the parameters");
    XLKV_CUDA_TRY(cudaMemcpy(g->adam_m, store->adam_m, bytes, cudaMemcpyHostToDevice), "uploading AdamW moments");
    XLKV_CUDA_TRY(cudaMemcpy(g->adam_v, store->adam_v, bytes, cudaMemcpyHostToDevice), "uploading AdamW moments");
    XLKV_TRY(refresh_weight_shadow(g)); /* g->stream is blocking: it runs after the copies */
    XLKV_CUDA_TRY(cudaDeviceSynchronize(), "uploading the parameters");
    return XLKV_OK;
}

xlkv_status xlkv_gpu_trainer_download(xlkv_gpu_trainer *g, xlkv_param_store *store, bool with_grads) {
    const size_t bytes = store->n_params * sizeof(float);
    XLKV_CUDA_TRY(cudaStreamSynchronize(g->stream), "finishing the queued training work");
    XLKV_CUDA_TRY(cudaMemcpy(store->params, g->params, bytes, cudaMemcpyDeviceToHost), "downloading the parameters");
    XLKV_CUDA_TRY(cudaMemcpy(store->adam_m, g->adam_m, bytes, cudaMemcpyDeviceToHost), "downloading AdamW moments");
    XLKV_CUDA_TRY(cudaMemcpy(store->adam_v, g->adam_v, bytes, cudaMemcpyDeviceToHost), "downloading AdamW moments");
    if (with_grads)
        XLKV_CUDA_TRY(cudaMemcpy(store->grads, g->grads, bytes, cudaMemcpyDeviceToHost), "downloading the gradients");
    return XLKV_OK;
}

/* ---- profiling: thin marks on the stream (train_profile.h); one pointer test when off ---------------------------- */
static void mark(xlkv_gpu_trainer *g, xlkv_step_category category) {
    if (g->timer) xlkv_cuda_step_timer_mark(g->timer, g->stream, category);
}

void xlkv_gpu_trainer_mark(xlkv_gpu_trainer *g, xlkv_step_category category) { mark(g, category); }

xlkv_status xlkv_gpu_trainer_set_profile(xlkv_gpu_trainer *g, bool on) {
    xlkv_step_profile_reset(&g->profile);
    if (!on) {
        xlkv_cuda_step_timer_free(g->timer);
        g->timer = NULL;
        return XLKV_OK;
    }
    return g->timer ? XLKV_OK : xlkv_cuda_step_timer_create(&g->timer);
}

const xlkv_step_profile *xlkv_gpu_trainer_profile(const xlkv_gpu_trainer *g) { return g->timer ? &g->profile : NULL; }

xlkv_status xlkv_gpu_trainer_zero_grads(xlkv_gpu_trainer *g) {
    if (g->timer) xlkv_cuda_step_timer_begin(g->timer);
    mark(g, XLKV_STEP_RESIDUAL_COPIES);
    XLKV_CUDA_TRY(cudaMemsetAsync(g->grads, 0, g->store->n_params * sizeof(float), g->stream), "zeroing gradients");
    mark(g, XLKV_STEP_HOST_SYNC); /* the host samples the batch and uploads it */
    return XLKV_OK;
}

void xlkv_gpu_trainer_gradient_buffer(xlkv_gpu_trainer *g, float **grads, size_t *n, cudaStream_t *stream) {
    *grads = g->grads;
    *n = g->store->n_params;
    *stream = g->stream;
}

xlkv_status xlkv_gpu_trainer_synchronize(xlkv_gpu_trainer *g) {
    if (g->timer) XLKV_TRY(xlkv_cuda_step_timer_end(g->timer, g->stream, &g->profile));
    XLKV_CUDA_TRY(cudaStreamSynchronize(g->stream), "running the training step on the GPU");
    return XLKV_OK;
}

/* ---- products: row-major y[n, out] = x[n, in] . w[out, in]^T and its two backward products --------------------- */
/* C = op(A) op(B) + beta C (column-major, as cuBLAS), fp32 operands (f32 trainer, or XLKV_TRAIN_GEMM=fp32ops) */
static xlkv_status gemm(xlkv_gpu_trainer *g, cublasOperation_t op_a, cublasOperation_t op_b, int m, int n, int k,
                        const float *a, int lda, const float *b, int ldb, float beta, float *c, int ldc) {
    const float alpha = 1.0f;
    const cublasComputeType_t compute = g->bf16 ? CUBLAS_COMPUTE_32F_FAST_16BF : CUBLAS_COMPUTE_32F;
    XLKV_CUBLAS_TRY(cublasGemmEx(g->cublas, op_a, op_b, m, n, k, &alpha, a, CUDA_R_32F, lda, b, CUDA_R_32F, ldb, &beta,
                                 c, CUDA_R_32F, ldc, compute, CUBLAS_GEMM_DEFAULT),
                    "training matrix product (cublasGemmEx)");
    return XLKV_OK;
}

/* C = alpha op(A) op(B) + beta C, bf16 A and B, fp32 accumulation, C bf16 or fp32 (the shape's; beta is 1 where it
 * accumulates, else 0): cuBLASLt's plan of the shape (XLKV_TRAIN_GEMM_LT) or cublasGemmEx; `what` names it */
static xlkv_status bf16_product(xlkv_gpu_trainer *g, const xlkv_train_gemm_shape *s, float alpha, const void *a,
                                const void *b, void *c, const char *what) {
    if (g->gemm_lt) return xlkv_train_gemm_lt_run(g->gemm_lt, s, alpha, a, b, c, what);
    const cublasStatus_t st = xlkv_train_gemm_shape_gemm_ex(g->cublas, s, alpha, a, b, c);
    if (st != CUBLAS_STATUS_SUCCESS) return xlkv_cublas_fail(st, what);
    return XLKV_OK;
}

static xlkv_train_gemm_shape shape_of(cublasOperation_t op_a, cublasOperation_t op_b, int m, int n, int k, int lda,
                                      int ldb, int ldc, bool c_bf16, float beta) {
    return (xlkv_train_gemm_shape){.trans_a = op_a == CUBLAS_OP_T, .trans_b = op_b == CUBLAS_OP_T, .m = m, .n = n,
                                   .k = k, .lda = lda, .ldb = ldb, .ldc = ldc, .c_bf16 = c_bf16,
                                   .accumulate = beta != 0.0f};
}

/* the same with bf16 operands (fp32 C and accumulation; beta 0 or 1) */
static xlkv_status gemm_bf16(xlkv_gpu_trainer *g, cublasOperation_t op_a, cublasOperation_t op_b, int m, int n, int k,
                             const uint16_t *a, int lda, const uint16_t *b, int ldb, float beta, float *c, int ldc) {
    const xlkv_train_gemm_shape s = shape_of(op_a, op_b, m, n, k, lda, ldb, ldc, false, beta);
    return bf16_product(g, &s, 1.0f, a, b, c, "training matrix product, bf16 operands");
}

/* the same with a bf16 C (fused path; fp32 accumulation, rounded to nearest even once; beta 0: nothing accumulates in
 * bf16) */
static xlkv_status gemm_bf16_out(xlkv_gpu_trainer *g, cublasOperation_t op_a, cublasOperation_t op_b, int m, int n,
                                 int k, const uint16_t *a, int lda, const uint16_t *b, int ldb, uint16_t *c, int ldc) {
    const xlkv_train_gemm_shape s = shape_of(op_a, op_b, m, n, k, lda, ldb, ldc, true, 0.0f);
    return bf16_product(g, &s, 1.0f, a, b, c, "training matrix product, bf16 operands and output");
}

/* a weight's bf16 copy: the same offset in the shadow */
static const uint16_t *weight_bf16(const xlkv_gpu_trainer *g, const float *w) {
    return g->params_bf16 + (w - g->params);
}

/* dst = bf16 of rows x cols fp32 (row stride ld), packed (row stride cols) */
static xlkv_status to_bf16(xlkv_gpu_trainer *g, uint16_t *dst, const float *src, int rows, int cols, int ld) {
    KERNEL_TRY(xlkv_cuda_train_to_bf16(dst, src, (size_t)rows, (size_t)cols, (size_t)ld, g->stream),
               "bf16 copy of a product operand");
    return XLKV_OK;
}

/* Where a product's bf16 input copy lives and whether it is already there (bf16 operands only; fp32 operands ignore
 * both). x16 is the copy of x: a grad record's own (bf16_inputs: the forward writes it, the backward's dW product
 * reads it) or NULL for the shared scratch x_bf16 (the no-grad iterations, the classifier). Flags:
 *   X_READY: x16 (or the scratch) holds x already: the previous product's x, nothing having written x since (k/v
 *            after q read xb, up after gate reads xb2), or a record's copy in the backward;
 *   DY_READY: dy_bf16 holds dy (the classifier gradient, written in bf16 by the cross-entropy backward).
 * Anything not ready is rounded first. */
enum { X_READY = 1, DY_READY = 2 };

static xlkv_status product_from(xlkv_gpu_trainer *g, unsigned ready, float *y, const float *x, uint16_t *x16,
                                const float *w, int n, int in, int out) {
    if (!g->bf16_operands) return gemm(g, CUBLAS_OP_T, CUBLAS_OP_N, out, n, in, w, in, x, in, 0.0f, y, out);
    if (!x16) x16 = g->x_bf16;
    if (!(ready & X_READY)) XLKV_TRY(to_bf16(g, x16, x, n, in, in));
    return gemm_bf16(g, CUBLAS_OP_T, CUBLAS_OP_N, out, n, in, weight_bf16(g, w), in, x16, in, 0.0f, y, out);
}

static xlkv_status product(xlkv_gpu_trainer *g, float *y, const float *x, const float *w, int n, int in, int out) {
    return product_from(g, 0, y, x, NULL, w, n, in, out);
}

/* Fused path: a layer's product with a bf16 output y16 [n, out] (row stride ldy) from the bf16 operand x16 (rounded
 * from x first unless X_READY; NULL: the scratch), timed as one */
static xlkv_status linear_to_bf16(xlkv_gpu_trainer *g, unsigned ready, uint16_t *y16, int ldy, const float *x,
                                  uint16_t *x16, const float *w, int n, int in, int out) {
    mark(g, XLKV_STEP_LINEAR_FORWARD);
    if (!x16) x16 = g->x_bf16;
    if (!(ready & X_READY)) XLKV_TRY(to_bf16(g, x16, x, n, in, in));
    return gemm_bf16_out(g, CUBLAS_OP_T, CUBLAS_OP_N, out, n, in, weight_bf16(g, w), in, x16, in, y16, ldy);
}

/* a layer's product, timed as one */
static xlkv_status linear(xlkv_gpu_trainer *g, unsigned ready, float *y, const float *x, uint16_t *x16,
                          const float *w, int n, int in, int out) {
    mark(g, XLKV_STEP_LINEAR_FORWARD);
    return product_from(g, ready, y, x, x16, w, n, in, out);
}

/* dx[n, in] += dy . w (dx may be NULL); dw[out, in] += dy^T . x; timed as dx_category and dw_category (the step
 * profiler's marks) */
static xlkv_status product_backward_from(xlkv_gpu_trainer *g, unsigned ready, xlkv_step_category dx_category,
                                         xlkv_step_category dw_category, float *dx, float *dw, const float *dy,
                                         const float *x, uint16_t *x16, const float *w, int n, int in, int out) {
    mark(g, dx_category);
    if (!g->bf16_operands) {
        if (dx) XLKV_TRY(gemm(g, CUBLAS_OP_N, CUBLAS_OP_N, in, n, out, w, in, dy, out, 1.0f, dx, in));
        mark(g, dw_category);
        return gemm(g, CUBLAS_OP_N, CUBLAS_OP_T, in, out, n, x, in, dy, out, 1.0f, dw, in);
    }
    if (!(ready & DY_READY)) XLKV_TRY(to_bf16(g, g->dy_bf16, dy, n, out, out)); /* once, for both products */
    if (dx)
        XLKV_TRY(gemm_bf16(g, CUBLAS_OP_N, CUBLAS_OP_N, in, n, out, weight_bf16(g, w), in, g->dy_bf16, out, 1.0f, dx,
                           in));
    mark(g, dw_category);
    if (!x16) x16 = g->x_bf16;
    if (!(ready & X_READY)) XLKV_TRY(to_bf16(g, x16, x, n, in, in));
    return gemm_bf16(g, CUBLAS_OP_N, CUBLAS_OP_T, in, out, n, x16, in, g->dy_bf16, out, 1.0f, dw, in);
}

/* a grad record's layer product backward; x16 is the record's bf16 copy of x, written by its forward (NULL: none,
 * x is rounded into the scratch) */
static xlkv_status linear_backward(xlkv_gpu_trainer *g, float *dx, float *dw, const float *dy, const float *x,
                                   uint16_t *x16, const float *w, int n, int in, int out) {
    return product_backward_from(g, x16 ? X_READY : 0, XLKV_STEP_LINEAR_BACKWARD_DX, XLKV_STEP_LINEAR_BACKWARD_DW, dx,
                                 dw, dy, x, x16, w, n, in, out);
}

/* Fused path: a layer product's backward from bf16 operands already in place: dy16 [n, out] (row stride ld_dy, the
 * gradient written in bf16 by its producer), x16 [n, in] (the record's copy). dx[n, in] = dy . w + dx_beta dx (beta 0:
 * the first product into dx, no clearing pass before it), or, with dx16 not NULL, dx16 = bf16(dy . w) (packed, the
 * only product into it; dx and dx_beta unused); dw[out, in] += dy^T . x. */
static xlkv_status linear_backward_bf16(xlkv_gpu_trainer *g, float *dx, uint16_t *dx16, float dx_beta, float *dw,
                                        const uint16_t *dy16, int ld_dy, const uint16_t *x16, const float *w, int n,
                                        int in, int out) {
    mark(g, XLKV_STEP_LINEAR_BACKWARD_DX);
    if (dx16)
        XLKV_TRY(gemm_bf16_out(g, CUBLAS_OP_N, CUBLAS_OP_N, in, n, out, weight_bf16(g, w), in, dy16, ld_dy, dx16, in));
    else
        XLKV_TRY(gemm_bf16(g, CUBLAS_OP_N, CUBLAS_OP_N, in, n, out, weight_bf16(g, w), in, dy16, ld_dy, dx_beta, dx,
                           in));
    mark(g, XLKV_STEP_LINEAR_BACKWARD_DW);
    return gemm_bf16(g, CUBLAS_OP_N, CUBLAS_OP_T, in, out, n, x16, in, dy16, ld_dy, 1.0f, dw, in);
}

/* the record's bf16 input copies; all NULL (the shared scratch) for the no-grad iterations or fp32 operands */
static bf16_inputs inputs_bf16(const xlkv_gpu_trainer *g, const gpu_record *rec, bool grad) {
    if (!g->bf16_operands || !grad) return (bf16_inputs){NULL, NULL, NULL, NULL, NULL};
    return g->record_inputs[rec - g->records];
}

/* batch_count products C_i = op(A_i) op(B_i) (column-major, as cuBLAS), A_i = A + i * stride_a, ... */
static xlkv_status gemm_batched(xlkv_gpu_trainer *g, cublasOperation_t op_a, cublasOperation_t op_b, int m, int n,
                                int k, float alpha, const float *a, int lda, long long stride_a, const float *b,
                                int ldb, long long stride_b, float beta, float *c, int ldc, long long stride_c,
                                int batch_count) {
    const cublasComputeType_t compute = g->bf16 ? CUBLAS_COMPUTE_32F_FAST_16BF : CUBLAS_COMPUTE_32F;
    XLKV_CUBLAS_TRY(cublasGemmStridedBatchedEx(g->cublas, op_a, op_b, m, n, k, &alpha, a, CUDA_R_32F, lda, stride_a, b,
                                               CUDA_R_32F, ldb, stride_b, &beta, c, CUDA_R_32F, ldc, stride_c,
                                               batch_count, compute, CUBLAS_GEMM_DEFAULT),
                    "attention product (cublasGemmStridedBatchedEx)");
    return XLKV_OK;
}

/* Geometry of the products of one query head h: row-major Q_bh [T, hd] (row stride qs), K_bh / V_bh [T, hd] (row
 * stride kvs), scores S_hb [T, T]; batched over the B sequences. In cuBLAS' column-major view Q_bh is (hd x T),
 * ld qs, and S_hb is (T_key x T_query), ld T. */
typedef struct head_view {
    int T, hd;
    int qs, kvs;
    long long q_step, kv_step, s_step; /* between sequences */
} head_view;

static head_view head_view_of(const xlkv_gpu_trainer *g) {
    const xlkv_hparams *hp = &g->store->hp;
    const int T = g->seq, hd = hp->head_dim, qs = hp->n_heads * hd, kvs = hp->n_kv_heads * hd;
    return (head_view){T, hd, qs, kvs, (long long)T * qs, (long long)T * kvs, (long long)T * T};
}

/* scores of every head: S_hb[t][p] = scale q_t . k_p */
static xlkv_status attention_scores(xlkv_gpu_trainer *g, const float *q, const float *k) {
    const xlkv_hparams *hp = &g->store->hp;
    const head_view v = head_view_of(g);
    const int group = hp->n_heads / hp->n_kv_heads;
    const float scale = 1.0f / sqrtf((float)hp->head_dim);
    for (int h = 0; h < hp->n_heads; h++)
        XLKV_TRY(gemm_batched(g, CUBLAS_OP_T, CUBLAS_OP_N, v.T, v.T, v.hd, scale, k + (size_t)(h / group) * v.hd, v.kvs,
                              v.kv_step, q + (size_t)h * v.hd, v.qs, v.q_step, 0.0f,
                              g->scores + (size_t)h * g->batch * v.s_step, v.T, v.s_step, g->batch));
    return XLKV_OK;
}

static xlkv_status attention_forward_gemm(xlkv_gpu_trainer *g, float *out, float *lse, const float *q, const float *k,
                                          const float *vv, const xlkv_cuda_train_attention_shape *shape) {
    const xlkv_hparams *hp = &g->store->hp;
    const head_view v = head_view_of(g);
    const int group = hp->n_heads / hp->n_kv_heads;
    XLKV_TRY(attention_scores(g, q, k));
    KERNEL_TRY(xlkv_cuda_train_softmax_rows(g->scores, lse, shape, true, g->stream), "attention softmax");
    for (int h = 0; h < hp->n_heads; h++) /* O_bh = P_hb . V_bh */
        XLKV_TRY(gemm_batched(g, CUBLAS_OP_N, CUBLAS_OP_N, v.hd, v.T, v.T, 1.0f, vv + (size_t)(h / group) * v.hd, v.kvs,
                              v.kv_step, g->scores + (size_t)h * g->batch * v.s_step, v.T, v.s_step, 0.0f,
                              out + (size_t)h * v.hd, v.qs, v.q_step, g->batch));
    return XLKV_OK;
}

static xlkv_status attention_backward_gemm(xlkv_gpu_trainer *g, float *dq, float *dk, float *dv, const float *dout,
                                           const float *out, const float *lse, const float *q, const float *k,
                                           const float *vv, const xlkv_cuda_train_attention_shape *shape) {
    const xlkv_hparams *hp = &g->store->hp;
    const head_view v = head_view_of(g);
    const int group = hp->n_heads / hp->n_kv_heads;
    KERNEL_TRY(xlkv_cuda_train_attention_delta(g->delta, dout, out, shape, g->stream), "attention delta");
    XLKV_TRY(attention_scores(g, q, k));
    KERNEL_TRY(xlkv_cuda_train_softmax_rows(g->scores, (float *)lse, shape, false, g->stream), "attention softmax");
    for (int h = 0; h < hp->n_heads; h++) /* dP_hb[t][p] = do_t . v_p */
        XLKV_TRY(gemm_batched(g, CUBLAS_OP_T, CUBLAS_OP_N, v.T, v.T, v.hd, 1.0f, vv + (size_t)(h / group) * v.hd, v.kvs,
                              v.kv_step, dout + (size_t)h * v.hd, v.qs, v.q_step, 0.0f,
                              g->dscores + (size_t)h * g->batch * v.s_step, v.T, v.s_step, g->batch));
    KERNEL_TRY(xlkv_cuda_train_softmax_backward_rows(g->dscores, g->scores, g->delta, shape, g->stream),
               "attention softmax backward");
    for (int h = 0; h < hp->n_heads; h++) {
        const float *ds = g->dscores + (size_t)h * g->batch * v.s_step, *p = g->scores + (size_t)h * g->batch * v.s_step;
        const size_t kv_off = (size_t)(h / group) * v.hd, q_off = (size_t)h * v.hd;
        XLKV_TRY(gemm_batched(g, CUBLAS_OP_N, CUBLAS_OP_N, v.hd, v.T, v.T, 1.0f, k + kv_off, v.kvs, v.kv_step, ds, v.T,
                              v.s_step, 0.0f, dq + q_off, v.qs, v.q_step, g->batch)); /* dQ = dS . K */
        if (dk) /* dK += dS^T . Q */
            XLKV_TRY(gemm_batched(g, CUBLAS_OP_N, CUBLAS_OP_T, v.hd, v.T, v.T, 1.0f, q + q_off, v.qs, v.q_step, ds, v.T,
                                  v.s_step, 1.0f, dk + kv_off, v.kvs, v.kv_step, g->batch));
        if (dv) /* dV += P^T . dO */
            XLKV_TRY(gemm_batched(g, CUBLAS_OP_N, CUBLAS_OP_T, v.hd, v.T, v.T, 1.0f, dout + q_off, v.qs, v.q_step, p,
                                  v.T, v.s_step, 1.0f, dv + kv_off, v.kvs, v.kv_step, g->batch));
    }
    return XLKV_OK;
}

static xlkv_status zero(xlkv_gpu_trainer *g, float *p, size_t n) {
    mark(g, XLKV_STEP_RESIDUAL_COPIES);
    XLKV_CUDA_TRY(cudaMemsetAsync(p, 0, n * sizeof(float), g->stream), "clearing a buffer");
    return XLKV_OK;
}

static xlkv_status copy(xlkv_gpu_trainer *g, float *dst, const float *src, size_t n) {
    mark(g, XLKV_STEP_RESIDUAL_COPIES);
    XLKV_CUDA_TRY(cudaMemcpyAsync(dst, src, n * sizeof(float), cudaMemcpyDeviceToDevice, g->stream),
                  "copying activations");
    return XLKV_OK;
}

static xlkv_cuda_train_attention_shape attention_shape(const xlkv_gpu_trainer *g, int layer) {
    const xlkv_hparams *hp = &g->store->hp;
    const xlkv_layer_map *map = g->store->map;
    return (xlkv_cuda_train_attention_shape){
        .batch = g->batch, .seq = g->seq, .n_heads = hp->n_heads, .n_kv_heads = hp->n_kv_heads,
        .head_dim = hp->head_dim, .window = map->sliding[layer] ? hp->sliding_window : 0,
        .mask_diagonal = xlkv_is_cyclic(map, layer) || hp->force_nodiag,
    };
}

/* ---- forward ---------------------------------------------------------------------------------------------------- */
/* fused: form the stream x = pending_a + float(pending_b16) where something other than the next layer reads x */
static xlkv_status flush_residual(xlkv_gpu_trainer *g) {
    if (!g->pending_a) return XLKV_OK;
    mark(g, XLKV_STEP_RESIDUAL_COPIES);
    KERNEL_TRY(xlkv_cuda_train_add_out_bf16b(g->x, g->pending_a, g->pending_b16,
                                             (size_t)g->n_rows * (size_t)g->store->hp.dim, g->stream), "residual add");
    g->pending_a = NULL;
    g->pending_b16 = NULL;
    return XLKV_OK;
}

/* The RoPE tables the flash kernels rotate with, or NULL when q and k were rotated by the RoPE passes; dq16 (the
 * backward, NULL: fp32 g->dq): where the dQ kernel writes the inverse-rotated bf16 dq, rows ld apart. */
static const xlkv_cuda_train_flash_rope *flash_rope_tables(xlkv_gpu_trainer *g, uint16_t *dq16, size_t ld) {
    if (!g->flash_rope) return NULL;
    g->flash_rope_args = (xlkv_cuda_train_flash_rope){g->rope_cos, g->rope_sin, dq16, ld};
    return &g->flash_rope_args;
}

static xlkv_status layer_forward(xlkv_gpu_trainer *g, gpu_record *rec, int layer, bool grad) {
    const xlkv_hparams *hp = &g->store->hp;
    const xlkv_layer_map *map = g->store->map;
    const xlkv_layer_weights *w = &g->w[layer];
    const int N = g->n_rows, dim = hp->dim, hid = hp->hidden_dim;
    const int q_dim = hp->n_heads * hp->head_dim, kv_dim = hp->n_kv_heads * hp->head_dim;
    const size_t n_dim = (size_t)N * (size_t)dim;
    float *x = g->x, *proj = g->dxb;
    void *st = g->stream;

    const bf16_inputs in16 = inputs_bf16(g, rec, grad);
    if (g->fuse && g->pending_a) {
        /* the previous layer's last residual add and this norm in one pass: the stream is formed straight into the
         * record's x_in (grad) or x; the norm writes the bf16 operand of q/k/v (no fp32 xb) */
        if (grad) x = rec->x_in;
        mark(g, XLKV_STEP_RMSNORM);
        KERNEL_TRY(xlkv_cuda_train_add_rmsnorm_forward_bf16b(x, in16.xb ? in16.xb : g->x_bf16, rec->attn_inv_rms,
                                                             g->pending_a, g->pending_b16, w->attn_norm, N, dim,
                                                             hp->norm_eps, st), "residual add + rmsnorm forward");
        g->pending_a = NULL;
        g->pending_b16 = NULL;
    } else if (g->fuse) { /* the norm writes the saved input and the products' bf16 operand; no fp32 xb */
        mark(g, XLKV_STEP_RMSNORM);
        KERNEL_TRY(xlkv_cuda_train_rmsnorm_forward_bf16(in16.xb ? in16.xb : g->x_bf16, rec->attn_inv_rms,
                                                        grad ? rec->x_in : NULL, x, w->attn_norm, N, dim,
                                                        hp->norm_eps, st), "rmsnorm forward (bf16 out)");
    } else {
        if (grad) XLKV_TRY(copy(g, rec->x_in, x, n_dim));
        mark(g, XLKV_STEP_RMSNORM);
        KERNEL_TRY(xlkv_cuda_train_rmsnorm_forward(rec->xb, rec->attn_inv_rms, x, w->attn_norm, N, dim, hp->norm_eps,
                                                   st), "rmsnorm forward");
    }
    XLKV_TRY(linear(g, g->fuse ? X_READY : 0, rec->q, rec->xb, in16.xb, w->wq, N, dim, q_dim));
    if (!g->flash_rope) { /* flash_rope: q and k stay unrotated; the flash kernels rotate them while staging */
        mark(g, XLKV_STEP_ROPE);
        KERNEL_TRY(xlkv_cuda_train_rope(rec->q, N, g->seq, hp->n_heads, hp->head_dim, g->rope_cos, g->rope_sin, 1.0f,
                                        st), "rope forward");
    }
    if (xlkv_is_kv_layer(map, layer)) {
        const int slot = map->kv_slot[layer];
        const size_t slot_offset = (size_t)slot * (size_t)N * (size_t)kv_dim;
        float *k = grad ? rec->k : g->const_k + slot_offset, *v = grad ? rec->v : g->const_v + slot_offset;
        XLKV_TRY(linear(g, X_READY, k, rec->xb, in16.xb, w->wk, N, dim, kv_dim)); /* xb rounded for q */
        XLKV_TRY(linear(g, X_READY, v, rec->xb, in16.xb, w->wv, N, dim, kv_dim));
        if (!g->flash_rope) {
            mark(g, XLKV_STEP_ROPE);
            KERNEL_TRY(xlkv_cuda_train_rope(k, N, g->seq, hp->n_kv_heads, hp->head_dim, g->rope_cos, g->rope_sin, 1.0f,
                                            st), "rope forward");
        }
        const int owner = grad ? (int)(rec - g->records) : -1;
        g->current[slot] = (kv_source){k, v, grad ? rec->dk : NULL, grad ? rec->dv : NULL, owner, -1};
        if (grad && g->flash_prologue) { /* no clear: the first reader in the backward overwrites (below) */
            g->dkdv_unread[owner] = true;
        } else if (grad) {
            XLKV_TRY(zero(g, rec->dk, (size_t)N * (size_t)kv_dim));
            XLKV_TRY(zero(g, rec->dv, (size_t)N * (size_t)kv_dim));
        }
    }
    mark(g, XLKV_STEP_ATTENTION_FORWARD); /* until linear(wo) below, whichever implementation runs */
    kv_source *src = &g->current[xlkv_read_slot(map, layer)];
    if (grad && src->dk && g->flash_prologue) {
        /* the walk visits records in reverse tape order: the last reader so far is the first writer of dK/dV */
        const int r = (int)(rec - g->records);
        if (src->last_reader >= 0) g->dkdv_overwrite[src->last_reader] = false;
        g->dkdv_overwrite[r] = true;
        src->last_reader = r;
        g->dkdv_unread[src->owner] = false;
    }
    rec->read_k = src->k;
    rec->read_v = src->v;
    rec->read_dk = src->dk;
    rec->read_dv = src->dv;
    const xlkv_cuda_train_attention_shape shape = attention_shape(g, layer);
    if (g->attention == ATTENTION_GEMM)
        XLKV_TRY(attention_forward_gemm(g, rec->att, rec->lse, rec->q, src->k, src->v, &shape));
    else if (g->attention == ATTENTION_FLASH) {
        /* flash_kv16, K / V of a KV record: its first reader rounds them into the record's pair, later ones (and the
         * backward) stream the pair as it is */
        const int owner = g->flash_kv16 ? src->owner : -1;
        if (grad) g->read_owner[rec - g->records] = owner;
        const xlkv_cuda_train_flash_kv16 kv16 = {
            owner >= 0 ? g->record_kv16[owner] : NULL,
            owner >= 0 ? g->record_kv16[owner] + (size_t)N * (size_t)kv_dim : NULL, owner >= 0 && g->kv16_ready[owner]};
        KERNEL_TRY(xlkv_cuda_train_attention_flash_forward_opts(rec->att, rec->lse, rec->q, src->k, src->v,
                                                                flash_rope_tables(g, NULL, 0), owner >= 0 ? &kv16 : NULL,
                                                                &shape, g->flash_workspace, st),
                   "flash attention forward");
        if (owner >= 0) g->kv16_ready[owner] = true;
    }
    else KERNEL_TRY(xlkv_cuda_train_attention_forward(rec->att, rec->lse, rec->q, src->k, src->v, &shape, st),
                    "attention forward");
    if (g->fuse) {
        /* as torch autocast: the products write bf16 where an elementwise kernel or another product reads them (the
         * o / down branches, gate|up); the stream x stays fp32. x_mid = x + float(o branch) and its RMSNorm in one
         * pass (the record's x_mid is the stream until the last add; the scratch record has one too); gate|up read
         * the bf16 operand it wrote and write [gate | up] in bf16 (the record's gu; the no-grad iterations use
         * dy_bf16, free until the classifier); swiglu reads it and writes h only in bf16 */
        uint16_t *branch16 = g->branch_bf16, *gu16 = in16.gu ? in16.gu : g->dy_bf16, *xb2_16 = in16.xb2;
        XLKV_TRY(linear_to_bf16(g, 0, branch16, dim, rec->att, in16.att, w->wo, N, q_dim, dim));
        mark(g, XLKV_STEP_RMSNORM);
        KERNEL_TRY(xlkv_cuda_train_add_rmsnorm_forward_bf16b(rec->x_mid, xb2_16 ? xb2_16 : g->x_bf16,
                                                             rec->ffn_inv_rms, x, branch16, w->ffn_norm, N, dim,
                                                             hp->norm_eps, st), "residual add + rmsnorm forward");
        if (w->w_up == w->w_gate + (size_t)hid * (size_t)dim) { /* [w_gate; w_up] is one [2 hidden, dim] matrix */
            XLKV_TRY(linear_to_bf16(g, X_READY, gu16, 2 * hid, NULL, xb2_16, w->w_gate, N, dim, 2 * hid));
        } else {
            XLKV_TRY(linear_to_bf16(g, X_READY, gu16, 2 * hid, NULL, xb2_16, w->w_gate, N, dim, hid));
            XLKV_TRY(linear_to_bf16(g, X_READY, gu16 + hid, 2 * hid, NULL, xb2_16, w->w_up, N, dim, hid));
        }
        mark(g, XLKV_STEP_SWIGLU); /* gate|up have read the scratch: h may take it */
        KERNEL_TRY(xlkv_cuda_train_swiglu_forward_from_bf16(in16.h ? in16.h : g->x_bf16, gu16, 2 * (size_t)hid, N, hid,
                                                            st), "swiglu forward (bf16 in and out)");
        XLKV_TRY(linear_to_bf16(g, X_READY, branch16, dim, NULL, in16.h, w->w_down, N, hid, dim));
        g->pending_a = rec->x_mid; /* x = x_mid + float(branch16): added by the next norm, or by flush_residual */
        g->pending_b16 = branch16;
        return XLKV_OK;
    }
    XLKV_TRY(linear(g, 0, proj, rec->att, in16.att, w->wo, N, q_dim, dim));
    mark(g, XLKV_STEP_RESIDUAL_COPIES);
    KERNEL_TRY(xlkv_cuda_train_add(x, proj, n_dim, st), "residual add");

    if (grad) XLKV_TRY(copy(g, rec->x_mid, x, n_dim));
    mark(g, XLKV_STEP_RMSNORM);
    KERNEL_TRY(xlkv_cuda_train_rmsnorm_forward(rec->xb2, rec->ffn_inv_rms, x, w->ffn_norm, N, dim, hp->norm_eps, st),
               "rmsnorm forward");
    XLKV_TRY(linear(g, 0, rec->gate, rec->xb2, in16.xb2, w->w_gate, N, dim, hid));
    XLKV_TRY(linear(g, X_READY, rec->up, rec->xb2, in16.xb2, w->w_up, N, dim, hid));
    mark(g, XLKV_STEP_SWIGLU);
    KERNEL_TRY(xlkv_cuda_train_swiglu_forward(rec->h, rec->gate, rec->up, (size_t)N * (size_t)hid, st),
               "swiglu forward");
    XLKV_TRY(linear(g, 0, proj, rec->h, in16.h, w->w_down, N, hid, dim));
    mark(g, XLKV_STEP_RESIDUAL_COPIES);
    KERNEL_TRY(xlkv_cuda_train_add(x, proj, n_dim, st), "residual add");
    return XLKV_OK;
}

/* ---- the classifier with the fused cross-entropy (fused_ce; see the header) ------------------------------------- */
/* dy_bf16[N, vocab] = bf16(xf . output^T) (bf16 operands, fp32 accumulation, bf16 C), then the fused kernel: row_loss
 * and, over the logits, the unscaled gradient softmax - onehot in bf16 */
static xlkv_status classifier_forward_fused(xlkv_gpu_trainer *g) {
    const xlkv_hparams *hp = &g->store->hp;
    const int N = g->n_rows, dim = hp->dim, vocab = hp->vocab_size;
    XLKV_TRY(to_bf16(g, g->x_bf16, g->xf, N, dim, dim));
    const xlkv_train_gemm_shape logits = xlkv_train_gemm_forward(N, dim, vocab, vocab, true);
    XLKV_TRY(bf16_product(g, &logits, 1.0f, weight_bf16(g, g->output), g->x_bf16, g->dy_bf16,
                          "classifier product, bf16 logits"));
    KERNEL_TRY(xlkv_cuda_train_cross_entropy_fused_bf16(g->dy_bf16, g->row_loss, g->targets, N, vocab, g->stream),
               "fused cross-entropy");
    return XLKV_OK;
}

/* dxb = scale G . output (beta 0: no clearing; in bf16 into branch_bf16 on the fused layer path, where only the final
 * RMSNorm backward reads it) and d_output += scale G^T . xf, G = dy_bf16 (softmax - onehot) and scale = loss_scale /
 * N; xf is rounded again into x_bf16 (an evaluation's forward may have used it since) */
static xlkv_status classifier_backward_fused(xlkv_gpu_trainer *g, float scale) {
    const xlkv_hparams *hp = &g->store->hp;
    const int N = g->n_rows, dim = hp->dim, vocab = hp->vocab_size;
    void *dxb = g->fuse ? (void *)g->branch_bf16 : (void *)g->dxb;
    const xlkv_train_gemm_shape dx = xlkv_train_gemm_input_grad(N, dim, vocab, vocab, g->fuse, false);
    XLKV_TRY(bf16_product(g, &dx, scale, weight_bf16(g, g->output), g->dy_bf16, dxb,
                          "classifier input gradient, bf16 operands"));
    XLKV_TRY(to_bf16(g, g->x_bf16, g->xf, N, dim, dim));
    const xlkv_train_gemm_shape dw = xlkv_train_gemm_weight_grad(N, dim, vocab, vocab);
    XLKV_TRY(bf16_product(g, &dw, scale, g->x_bf16, g->dy_bf16, g->d_output,
                          "classifier weight gradient, bf16 operands"));
    return XLKV_OK;
}

/* Rows grouped by token, rows ascending inside a group (a counting sort, stable): the embedding backward's order. */
static void group_rows_by_token(xlkv_gpu_trainer *g, const int *tokens) {
    const int N = g->n_rows, vocab = g->store->hp.vocab_size;
    int *count = g->host_counts;
    memset(count, 0, ((size_t)vocab + 1) * sizeof *count);
    for (int r = 0; r < N; r++) count[tokens[r] + 1]++;
    for (int i = 0; i < vocab; i++) count[i + 1] += count[i];
    for (int r = 0; r < N; r++) g->host_order[count[tokens[r]]++] = r;
    int groups = 0;
    for (int j = 0; j < N; j++)
        if (j == 0 || tokens[g->host_order[j]] != tokens[g->host_order[j - 1]]) g->host_starts[groups++] = j;
    g->host_starts[groups] = N;
    g->n_groups = groups;
}

xlkv_status xlkv_gpu_trainer_forward(xlkv_gpu_trainer *g, const int *tokens, const int *targets, double *out_loss) {
    const xlkv_param_store *s = g->store;
    const xlkv_hparams *hp = &s->hp;
    const xlkv_layer_map *map = s->map;
    const int N = g->n_rows, dim = hp->dim, kv_dim = hp->n_kv_heads * hp->head_dim;
    const size_t n_dim = (size_t)N * (size_t)dim;
    void *st = g->stream;
    for (int r = 0; r < N; r++)
        if (tokens[r] < 0 || tokens[r] >= hp->vocab_size || targets[r] < 0 || targets[r] >= hp->vocab_size)
            return xlkv_fail(XLKV_E_INVALID, "trainer: token %d / target %d at row %d is outside the vocabulary [0, %d)",
                             tokens[r], targets[r], r, hp->vocab_size);
    mark(g, XLKV_STEP_HOST_SYNC);
    XLKV_CUDA_TRY(cudaStreamSynchronize(g->stream), "finishing the previous step"); /* host buffers are reused */
    group_rows_by_token(g, tokens);
    XLKV_CUDA_TRY(cudaMemcpyAsync(g->tokens, tokens, (size_t)N * sizeof(int), cudaMemcpyHostToDevice, g->stream),
                  "uploading tokens");
    XLKV_CUDA_TRY(cudaMemcpyAsync(g->targets, targets, (size_t)N * sizeof(int), cudaMemcpyHostToDevice, g->stream),
                  "uploading targets");
    XLKV_CUDA_TRY(cudaMemcpyAsync(g->order, g->host_order, (size_t)N * sizeof(int), cudaMemcpyHostToDevice, g->stream),
                  "uploading the embedding order");
    XLKV_CUDA_TRY(cudaMemcpyAsync(g->starts, g->host_starts, (size_t)(g->n_groups + 1) * sizeof(int),
                                  cudaMemcpyHostToDevice, g->stream), "uploading the embedding groups");
    memset(g->current, 0, ((size_t)map->n_kv_layers + 1) * sizeof *g->current);
    memset(g->dkdv_overwrite, 0, (size_t)g->n_records * sizeof *g->dkdv_overwrite);
    memset(g->dkdv_unread, 0, (size_t)g->n_records * sizeof *g->dkdv_unread);
    memset(g->kv16_ready, 0, (size_t)g->n_records * sizeof *g->kv16_ready);
    mark(g, XLKV_STEP_EMBEDDING);
    KERNEL_TRY(xlkv_cuda_train_embedding_forward(g->x, g->tokens, g->tok_embeddings, N, dim, st), "embedding forward");
    g->pending_a = NULL;
    g->pending_b16 = NULL;
    int r = 0;
    for (int stp = 0; stp < map->n_plan_steps; stp++) {
        const xlkv_plan_step *step = &map->plan[stp];
        if (!step->cyclic) {
            for (int layer = step->first; layer <= step->last; layer++, r++)
                XLKV_TRY(layer_forward(g, &g->records[r], layer, true));
            continue;
        }
        XLKV_TRY(flush_residual(g));
        XLKV_TRY(copy(g, g->x_group_in, g->x, n_dim));
        for (int j = step->first; j <= step->last; j++) { /* targets hold zeros before the first iteration */
            if (!xlkv_is_kv_layer(map, j)) continue;
            const int slot = map->kv_slot[j];
            const size_t offset = (size_t)slot * (size_t)N * (size_t)kv_dim;
            g->current[slot] = (kv_source){g->const_k + offset, g->const_v + offset, NULL, NULL, -1, -1};
            XLKV_TRY(zero(g, g->const_k + offset, (size_t)N * (size_t)kv_dim));
            XLKV_TRY(zero(g, g->const_v + offset, (size_t)N * (size_t)kv_dim));
        }
        for (int it = 0; it < g->forward_passes + g->backward_passes; it++) {
            const bool grad = it >= g->forward_passes;
            g->pending_a = NULL; /* the previous iteration's output is discarded */
            g->pending_b16 = NULL;
            XLKV_TRY(copy(g, g->x, g->x_group_in, n_dim));
            for (int layer = step->first; layer <= step->last; layer++)
                XLKV_TRY(layer_forward(g, grad ? &g->records[r++] : &g->scratch, layer, grad));
        }
    }
    if (g->pending_a) { /* fused: the last residual add and the final norm in one pass, the sum straight into x_final
                         * (x is not read again; counted as rmsnorm, as the layers' add + norms) */
        mark(g, XLKV_STEP_RMSNORM);
        KERNEL_TRY(xlkv_cuda_train_add_rmsnorm_forward_bf16b_f32(g->x_final, g->xf, g->final_inv_rms, g->pending_a,
                                                                 g->pending_b16, g->output_norm, N, dim, hp->norm_eps,
                                                                 st), "residual add + final rmsnorm");
        g->pending_a = NULL;
        g->pending_b16 = NULL;
    } else {
        XLKV_TRY(copy(g, g->x_final, g->x, n_dim));
        mark(g, XLKV_STEP_RMSNORM);
        KERNEL_TRY(xlkv_cuda_train_rmsnorm_forward(g->xf, g->final_inv_rms, g->x_final, g->output_norm, N, dim,
                                                   hp->norm_eps, st), "final rmsnorm");
    }
    mark(g, XLKV_STEP_CLASSIFIER_FORWARD);
    if (g->fused_ce) {
        XLKV_TRY(classifier_forward_fused(g));
    } else {
        XLKV_TRY(product(g, g->probs, g->xf, g->output, N, dim, hp->vocab_size));
        KERNEL_TRY(xlkv_cuda_train_cross_entropy_forward(g->probs, g->row_loss, g->targets, N, hp->vocab_size, st),
                   "cross-entropy forward");
    }
    mark(g, XLKV_STEP_HOST_SYNC);
    XLKV_CUDA_TRY(cudaMemcpyAsync(g->host_row_loss, g->row_loss, (size_t)N * sizeof(double), cudaMemcpyDeviceToHost,
                                  g->stream), "downloading the loss");
    XLKV_CUDA_TRY(cudaStreamSynchronize(g->stream), "running the forward pass on the GPU");
    double total = 0.0;
    for (int i = 0; i < N; i++) total += g->host_row_loss[i];
    *out_loss = total / (double)N;
    return XLKV_OK;
}

/* ---- backward --------------------------------------------------------------------------------------------------- */
/* dq = ..., dK / dV of the record's read slot += ..., from datt (whichever attention implementation runs). dq16
 * (flash_rope only, else NULL): the inverse-rotated bf16 dq goes there (rows ld apart) instead of g->dq. */
static xlkv_status attention_backward(xlkv_gpu_trainer *g, gpu_record *rec, uint16_t *dq16, size_t ld) {
    const int layer = rec->layer;
    void *st = g->stream;
    mark(g, XLKV_STEP_ATTENTION_BACKWARD);
    const xlkv_cuda_train_attention_shape shape = attention_shape(g, layer);
    if (g->attention == ATTENTION_GEMM)
        XLKV_TRY(attention_backward_gemm(g, g->dq, rec->read_dk, rec->read_dv, g->datt, rec->att, rec->lse, rec->q,
                                         rec->read_k, rec->read_v, &shape));
    else if (g->attention == ATTENTION_FLASH) {
        /* flash_prologue: the first writer of the read dK/dV overwrites them (no clear); delta from the dQ kernel */
        const int owner = g->flash_kv16 ? g->read_owner[rec - g->records] : -1;
        const size_t kv_n = (size_t)g->n_rows * (size_t)g->store->hp.n_kv_heads * (size_t)g->store->hp.head_dim;
        const xlkv_cuda_train_flash_kv16 kv16 = {owner >= 0 ? g->record_kv16[owner] : NULL,
                                                 owner >= 0 ? g->record_kv16[owner] + kv_n : NULL, true};
        const xlkv_cuda_train_flash_backward_options options = {
            .overwrite_dkdv = g->flash_prologue && g->dkdv_overwrite[rec - g->records],
            .separate_delta = !g->flash_prologue, .kv16 = owner >= 0 ? &kv16 : NULL};
        KERNEL_TRY(xlkv_cuda_train_attention_flash_backward_opts(
                       g->dq, rec->read_dk, rec->read_dv, g->flash_prologue ? NULL : g->delta, g->datt, rec->att,
                       rec->lse, rec->q, rec->read_k, rec->read_v, flash_rope_tables(g, dq16, ld), &options, &shape,
                       g->flash_workspace, st),
                   "flash attention backward");
    }
    else
        KERNEL_TRY(xlkv_cuda_train_attention_backward(g->dq, rec->read_dk, rec->read_dv, g->delta, g->datt, rec->att,
                                                      rec->lse, rec->q, rec->read_k, rec->read_v, &shape, st),
                   "attention backward");
    return XLKV_OK;
}

/* The fused backward of one record (bf16 operands, XLKV_TRAIN_FUSE on): every product reads bf16 gradients written by
 * their producer (the RMSNorm backward writes bf16(dx) beside dx, the swiglu backward writes [dgate | dup] in bf16,
 * the RoPE backward of dq / dk rounds them as it rotates into [dq | dk | dv]); the dX products write bf16 where an
 * elementwise kernel alone reads them (dh for the swiglu backward; dxb for an RMSNorm backward where one product forms
 * it: gate|up and q/k/v with adjacent weights) and fp32 where several accumulate (beta 1) or the attention reads them
 * (datt); the first fp32 product into a buffer has beta 0 (no clearing pass); gate / up (and q / k / v) are one
 * product each way where their weights are adjacent in the parameter layout (K = 2 hidden, K = q_dim + 2 kv_dim). */
static xlkv_status layer_backward_fused(xlkv_gpu_trainer *g, gpu_record *rec) {
    const xlkv_hparams *hp = &g->store->hp;
    const xlkv_layer_map *map = g->store->map;
    const int layer = rec->layer;
    const xlkv_layer_weights *w = &g->w[layer], *dw = &g->dw[layer];
    const int N = g->n_rows, dim = hp->dim, hid = hp->hidden_dim;
    const int q_dim = hp->n_heads * hp->head_dim, kv_dim = hp->n_kv_heads * hp->head_dim;
    const size_t qd = (size_t)q_dim * (size_t)dim, kvd = (size_t)kv_dim * (size_t)dim;
    const bf16_inputs in16 = inputs_bf16(g, rec, true);
    uint16_t *dy16 = g->dy_bf16, *dh16 = g->x_bf16, *dxb16 = g->branch_bf16;
    void *st = g->stream;

    if (!g->dx16_ready) {
        mark(g, XLKV_STEP_LINEAR_BACKWARD_DX);
        XLKV_TRY(to_bf16(g, dy16, g->dx, N, dim, dim));
    }
    /* dh in bf16 into the input scratch (the fused backward reads no other x_bf16) */
    XLKV_TRY(linear_backward_bf16(g, NULL, dh16, 0.0f, dw->w_down, dy16, dim, in16.h, w->w_down, N, hid, dim));
    mark(g, XLKV_STEP_SWIGLU);
    KERNEL_TRY(xlkv_cuda_train_swiglu_backward_from_bf16(dy16, 2 * (size_t)hid, dh16, in16.gu, 2 * (size_t)hid, N, hid,
                                                         st), "swiglu backward (bf16 in and out)");
    const bool gate_up_one = w->w_up == w->w_gate + (size_t)hid * (size_t)dim; /* [w_gate; w_up]: [2 hidden, dim] */
    if (gate_up_one) {
        XLKV_TRY(linear_backward_bf16(g, NULL, dxb16, 0.0f, dw->w_gate, dy16, 2 * hid, in16.xb2, w->w_gate, N, dim,
                                      2 * hid));
    } else {
        XLKV_TRY(linear_backward_bf16(g, g->dxb, NULL, 0.0f, dw->w_gate, dy16, 2 * hid, in16.xb2, w->w_gate, N, dim,
                                      hid));
        XLKV_TRY(linear_backward_bf16(g, g->dxb, NULL, 1.0f, dw->w_up, dy16 + hid, 2 * hid, in16.xb2, w->w_up, N, dim,
                                      hid));
    }
    mark(g, XLKV_STEP_RMSNORM);
    if (gate_up_one)
        KERNEL_TRY(xlkv_cuda_train_rmsnorm_backward_folded_dy16(g->dx, dy16, dw->ffn_norm, dxb16, rec->x_mid,
                                                                rec->ffn_inv_rms, w->ffn_norm, N, dim, g->partials, st),
                   "rmsnorm backward (bf16 dy)");
    else
        KERNEL_TRY(xlkv_cuda_train_rmsnorm_backward_folded(g->dx, dy16, dw->ffn_norm, g->dxb, rec->x_mid,
                                                           rec->ffn_inv_rms, w->ffn_norm, N, dim, g->partials, st),
                   "rmsnorm backward");

    XLKV_TRY(linear_backward_bf16(g, g->datt, NULL, 0.0f, dw->wo, dy16, dim, in16.att, w->wo, N, q_dim, dim));
    const bool kv = xlkv_is_kv_layer(map, layer);
    const int ld = kv ? q_dim + 2 * kv_dim : q_dim; /* [dq | dk | dv] or [dq] */
    /* flash_rope: the dQ kernel writes the inverse-rotated bf16 dq into the operand itself */
    XLKV_TRY(attention_backward(g, rec, g->flash_rope ? dy16 : NULL, (size_t)ld));
    mark(g, XLKV_STEP_ROPE);
    if (!g->flash_rope)
        KERNEL_TRY(xlkv_cuda_train_rope_to_bf16(dy16, (size_t)ld, g->dq, N, g->seq, hp->n_heads, hp->head_dim,
                                                g->rope_cos, g->rope_sin, -1.0f, 1, st), "rope backward (bf16 out)");
    if (kv) {
        KERNEL_TRY(xlkv_cuda_train_rope_to_bf16(dy16 + q_dim, (size_t)ld, rec->dk, N, g->seq, hp->n_kv_heads,
                                                hp->head_dim, g->rope_cos, g->rope_sin, -1.0f, 1, st),
                   "rope backward (bf16 out)");
        mark(g, XLKV_STEP_LINEAR_BACKWARD_DX);
        KERNEL_TRY(xlkv_cuda_train_rope_to_bf16(dy16 + q_dim + kv_dim, (size_t)ld, rec->dv, N, g->seq,
                                                hp->n_kv_heads, hp->head_dim, NULL, NULL, 0.0f, 0, st),
                   "bf16 copy of dv");
    }
    /* one product ([wq; wk; wv] is one [q_dim + 2 kv_dim, dim] matrix where adjacent) writes dxb in bf16 */
    const bool qkv_one = !kv || (w->wk == w->wq + qd && w->wv == w->wk + kvd);
    if (qkv_one) {
        XLKV_TRY(linear_backward_bf16(g, NULL, dxb16, 0.0f, dw->wq, dy16, ld, in16.xb, w->wq, N, dim, ld));
    } else {
        XLKV_TRY(linear_backward_bf16(g, g->dxb, NULL, 0.0f, dw->wq, dy16, ld, in16.xb, w->wq, N, dim, q_dim));
        XLKV_TRY(linear_backward_bf16(g, g->dxb, NULL, 1.0f, dw->wk, dy16 + q_dim, ld, in16.xb, w->wk, N, dim,
                                      kv_dim));
        XLKV_TRY(linear_backward_bf16(g, g->dxb, NULL, 1.0f, dw->wv, dy16 + q_dim + kv_dim, ld, in16.xb, w->wv, N, dim,
                                      kv_dim));
    }
    /* bf16(dx) for the next record's first product, unless the walk changes dx between records (group inputs) */
    uint16_t *next16 = rec->iteration_start ? NULL : dy16;
    mark(g, XLKV_STEP_RMSNORM);
    if (qkv_one)
        KERNEL_TRY(xlkv_cuda_train_rmsnorm_backward_folded_dy16(g->dx, next16, dw->attn_norm, dxb16, rec->x_in,
                                                                rec->attn_inv_rms, w->attn_norm, N, dim, g->partials,
                                                                st), "rmsnorm backward (bf16 dy)");
    else
        KERNEL_TRY(xlkv_cuda_train_rmsnorm_backward_folded(g->dx, next16, dw->attn_norm, g->dxb, rec->x_in,
                                                           rec->attn_inv_rms, w->attn_norm, N, dim, g->partials, st),
                   "rmsnorm backward");
    g->dx16_ready = next16 != NULL;
    return XLKV_OK;
}

static xlkv_status layer_backward(xlkv_gpu_trainer *g, gpu_record *rec) {
    if (g->fuse) return layer_backward_fused(g, rec);
    const xlkv_hparams *hp = &g->store->hp;
    const xlkv_layer_map *map = g->store->map;
    const int layer = rec->layer;
    const xlkv_layer_weights *w = &g->w[layer], *dw = &g->dw[layer];
    const int N = g->n_rows, dim = hp->dim, hid = hp->hidden_dim;
    const int q_dim = hp->n_heads * hp->head_dim, kv_dim = hp->n_kv_heads * hp->head_dim;
    const size_t n_dim = (size_t)N * (size_t)dim;
    void *st = g->stream;

    XLKV_TRY(zero(g, g->dh, (size_t)N * (size_t)hid));
    const bf16_inputs in16 = inputs_bf16(g, rec, true);
    XLKV_TRY(linear_backward(g, g->dh, dw->w_down, g->dx, rec->h, in16.h, w->w_down, N, hid, dim));
    mark(g, XLKV_STEP_SWIGLU);
    KERNEL_TRY(xlkv_cuda_train_swiglu_backward(g->dgate, g->dup, g->dh, rec->gate, rec->up, (size_t)N * (size_t)hid,
                                               st), "swiglu backward");
    XLKV_TRY(zero(g, g->dxb, n_dim));
    XLKV_TRY(linear_backward(g, g->dxb, dw->w_gate, g->dgate, rec->xb2, in16.xb2, w->w_gate, N, dim, hid));
    XLKV_TRY(linear_backward(g, g->dxb, dw->w_up, g->dup, rec->xb2, in16.xb2, w->w_up, N, dim, hid));
    mark(g, XLKV_STEP_RMSNORM);
    KERNEL_TRY(xlkv_cuda_train_rmsnorm_backward(g->dx, dw->ffn_norm, g->dxb, rec->x_mid, rec->ffn_inv_rms, w->ffn_norm,
                                                N, dim, g->partials, st), "rmsnorm backward");

    XLKV_TRY(zero(g, g->datt, (size_t)N * (size_t)q_dim));
    XLKV_TRY(linear_backward(g, g->datt, dw->wo, g->dx, rec->att, in16.att, w->wo, N, q_dim, dim));
    XLKV_TRY(attention_backward(g, rec, NULL, 0));
    mark(g, XLKV_STEP_ROPE);
    KERNEL_TRY(xlkv_cuda_train_rope(g->dq, N, g->seq, hp->n_heads, hp->head_dim, g->rope_cos, g->rope_sin, -1.0f, st),
               "rope backward");
    XLKV_TRY(zero(g, g->dxb, n_dim));
    XLKV_TRY(linear_backward(g, g->dxb, dw->wq, g->dq, rec->xb, in16.xb, w->wq, N, dim, q_dim));
    if (xlkv_is_kv_layer(map, layer)) {
        mark(g, XLKV_STEP_ROPE);
        KERNEL_TRY(xlkv_cuda_train_rope(rec->dk, N, g->seq, hp->n_kv_heads, hp->head_dim, g->rope_cos, g->rope_sin,
                                        -1.0f, st), "rope backward");
        XLKV_TRY(linear_backward(g, g->dxb, dw->wk, rec->dk, rec->xb, in16.xb, w->wk, N, dim, kv_dim));
        XLKV_TRY(linear_backward(g, g->dxb, dw->wv, rec->dv, rec->xb, in16.xb, w->wv, N, dim, kv_dim));
    }
    mark(g, XLKV_STEP_RMSNORM);
    KERNEL_TRY(xlkv_cuda_train_rmsnorm_backward(g->dx, dw->attn_norm, g->dxb, rec->x_in, rec->attn_inv_rms,
                                                w->attn_norm, N, dim, g->partials, st), "rmsnorm backward");
    return XLKV_OK;
}

/* The gradient floats [*first, *end) of the tensors of `layer` (-1: those outside layers; with_embedding false
 * leaves the token embedding out). Each such group is one contiguous run in the param_store layout. */
static xlkv_status tensor_range(const xlkv_param_store *s, int layer, bool with_embedding, size_t *first,
                                size_t *end) {
    size_t lo = SIZE_MAX, hi = 0, total = 0;
    for (int t = 0; t < s->n_tensors; t++) {
        const xlkv_param_tensor *x = &s->tensors[t];
        if (x->layer != layer || (!with_embedding && x->kind == XLKV_PARAM_EMBEDDING)) continue;
        const size_t size = (size_t)x->rows * (size_t)(x->cols ? x->cols : 1);
        if (x->offset < lo) lo = x->offset;
        if (x->offset + size > hi) hi = x->offset + size;
        total += size;
    }
    if (total == 0 || hi - lo != total)
        return xlkv_fail(XLKV_E_INVALID, "GPU trainer: the gradients of layer %d are not one contiguous run", layer);
    *first = lo;
    *end = hi;
    return XLKV_OK;
}

static xlkv_status bucket_ready(const xlkv_gpu_trainer *g, xlkv_grad_ready_fn ready, void *ctx, int layer,
                                bool with_embedding, size_t *issued) {
    if (!ready) return XLKV_OK;
    size_t first = 0, end = 0;
    XLKV_TRY(tensor_range(g->store, layer, with_embedding, &first, &end));
    *issued += end - first;
    return ready(ctx, g->grads + first, end - first);
}

xlkv_status xlkv_gpu_trainer_backward(xlkv_gpu_trainer *g, float loss_scale) {
    return xlkv_gpu_trainer_backward_buckets(g, loss_scale, NULL, NULL);
}

xlkv_status xlkv_gpu_trainer_backward_buckets(xlkv_gpu_trainer *g, float loss_scale, xlkv_grad_ready_fn ready,
                                              void *ctx) {
    size_t issued = 0;
    const xlkv_hparams *hp = &g->store->hp;
    const int N = g->n_rows, dim = hp->dim, vocab = hp->vocab_size;
    const size_t n_dim = (size_t)N * (size_t)dim;
    void *st = g->stream;
    mark(g, XLKV_STEP_CLASSIFIER_BACKWARD);
    if (g->fused_ce) { /* dy_bf16 holds softmax - onehot since the forward; the scale is the products' alpha */
        XLKV_TRY(classifier_backward_fused(g, loss_scale / (float)N));
    } else {
        if (g->bf16_operands) /* dlogits straight into the products' bf16 scratch; probs keep the probabilities */
            KERNEL_TRY(xlkv_cuda_train_cross_entropy_backward_bf16(g->dy_bf16, g->probs, g->targets, N, vocab,
                                                                   loss_scale / (float)N, st),
                       "cross-entropy backward");
        else
            KERNEL_TRY(xlkv_cuda_train_cross_entropy_backward(g->probs, g->targets, N, vocab, loss_scale / (float)N,
                                                              st), "cross-entropy backward");
        XLKV_TRY(zero(g, g->dxb, n_dim));
        XLKV_TRY(product_backward_from(g, DY_READY, XLKV_STEP_CLASSIFIER_BACKWARD, XLKV_STEP_CLASSIFIER_BACKWARD,
                                       g->dxb, g->d_output, g->probs, g->xf, NULL, g->output, N, dim, vocab));
    }
    if (!(g->fuse && g->fused_ce)) XLKV_TRY(zero(g, g->dx, n_dim));
    mark(g, XLKV_STEP_RMSNORM);
    /* fused_ce: the classifier's dX in bf16 (classifier_backward_fused); dx written, not added to, and bf16(dx) into
     * dy_bf16 for the last layer's first product (the classifier's products that read dy_bf16 are queued before) */
    if (g->fuse && g->fused_ce)
        KERNEL_TRY(xlkv_cuda_train_rmsnorm_backward_folded_dy16_set(g->dx, g->dy_bf16, g->d_output_norm, g->branch_bf16,
                                                                    g->x_final, g->final_inv_rms, g->output_norm, N,
                                                                    dim, g->partials, st),
                   "final rmsnorm backward (bf16 dy)");
    else if (g->fuse)
        KERNEL_TRY(xlkv_cuda_train_rmsnorm_backward_folded(g->dx, NULL, g->d_output_norm, g->dxb, g->x_final,
                                                           g->final_inv_rms, g->output_norm, N, dim, g->partials, st),
                   "final rmsnorm backward");
    else
        KERNEL_TRY(xlkv_cuda_train_rmsnorm_backward(g->dx, g->d_output_norm, g->dxb, g->x_final, g->final_inv_rms,
                                                    g->output_norm, N, dim, g->partials, st), "final rmsnorm backward");
    /* final norm (and an untied classifier) are complete; a tied classifier is the embedding, sent last */
    if (ready) XLKV_TRY(bucket_ready(g, ready, ctx, -1, false, &issued));
    bool groups = false; /* dx_group_in is read only at the iteration starts of cyclic groups */
    for (int r = 0; r < g->n_records; r++) groups = groups || g->records[r].iteration_start;
    if (groups) XLKV_TRY(zero(g, g->dx_group_in, n_dim));
    g->dx16_ready = g->fuse && g->fused_ce; /* else dy_bf16 holds the classifier's gradient */
    for (int r = g->n_records - 1; r >= 0; r--) {
        gpu_record *rec = &g->records[r];
        if (g->dkdv_unread[r]) { /* flash_prologue: no reader wrote this KV record's dK/dV (the forward's clear) */
            const size_t kv_n = (size_t)g->n_rows * (size_t)hp->n_kv_heads * (size_t)hp->head_dim;
            XLKV_TRY(zero(g, rec->dk, kv_n));
            XLKV_TRY(zero(g, rec->dv, kv_n));
        }
        XLKV_TRY(layer_backward(g, rec));
        /* a layer's weights receive gradient only in its own records (readers add into its dK/dV activations, not
         * its W_K/W_V), so they are complete after its first record in tape order, the last one the walk visits */
        bool layer_done = ready != NULL;
        for (int earlier = 0; earlier < r && layer_done; earlier++)
            if (g->records[earlier].layer == rec->layer) layer_done = false;
        if (layer_done) XLKV_TRY(bucket_ready(g, ready, ctx, rec->layer, false, &issued));
        if (!rec->iteration_start) continue;
        mark(g, XLKV_STEP_RESIDUAL_COPIES);
        KERNEL_TRY(xlkv_cuda_train_add(g->dx_group_in, g->dx, n_dim, st), "group input gradient");
        if (rec->group_iteration == 0) {
            XLKV_TRY(copy(g, g->dx, g->dx_group_in, n_dim));
            XLKV_TRY(zero(g, g->dx_group_in, n_dim));
        } else {
            XLKV_TRY(zero(g, g->dx, n_dim));
        }
    }
    mark(g, XLKV_STEP_EMBEDDING);
    KERNEL_TRY(xlkv_cuda_train_embedding_backward(g->d_tok_embeddings, g->dx, g->tokens, g->order, g->starts,
                                                  g->n_groups, dim, st), "embedding backward");
    if (ready) {
        size_t embedding = (size_t)hp->vocab_size * (size_t)dim;
        issued += embedding;
        XLKV_TRY(ready(ctx, g->d_tok_embeddings, embedding));
        if (issued != g->store->n_params)
            return xlkv_fail(XLKV_E_INVALID, "GPU trainer: the gradient buckets cover %zu of %zu parameters", issued,
                             g->store->n_params);
    }
    return XLKV_OK;
}

/* ---- optimizer -------------------------------------------------------------------------------------------------- */
xlkv_status xlkv_gpu_trainer_clip_grad_norm(xlkv_gpu_trainer *g, double max_norm, double *out_norm) {
    const size_t n = g->store->n_params, chunks = (n + XLKV_CUDA_TRAIN_NORM_CHUNK - 1) / XLKV_CUDA_TRAIN_NORM_CHUNK;
    mark(g, XLKV_STEP_GRAD_CLIP);
    KERNEL_TRY(xlkv_cuda_train_sum_squares(g->norm_partials, g->grads, n, g->stream), "gradient norm");
    if (g->fuse) { /* norm and coefficient on the device; the fused AdamW applies it (no scaling pass) */
        KERNEL_TRY(xlkv_cuda_train_clip_coefficient(g->clip_coef, g->clip_norm, g->norm_partials, chunks, max_norm,
                                                    g->stream), "gradient clip coefficient");
        g->clip_queued = true;
        g->norm_on_device = true;
        return out_norm ? xlkv_gpu_trainer_grad_norm(g, out_norm) : XLKV_OK;
    }
    XLKV_CUDA_TRY(cudaMemcpyAsync(g->host_norm_partials, g->norm_partials, chunks * sizeof(double),
                                  cudaMemcpyDeviceToHost, g->stream), "downloading the gradient norm");
    XLKV_CUDA_TRY(cudaStreamSynchronize(g->stream), "running the backward pass on the GPU");
    double total = 0.0;
    for (size_t c = 0; c < chunks; c++) total += g->host_norm_partials[c];
    const double norm = sqrt(total);
    if (max_norm > 0.0 && norm > max_norm)
        KERNEL_TRY(xlkv_cuda_train_scale(g->grads, (float)(max_norm / (norm + 1e-6)), n, g->stream), "gradient clip");
    g->host_norm = norm;
    g->norm_on_device = false;
    if (out_norm) *out_norm = norm;
    return XLKV_OK;
}

xlkv_status xlkv_gpu_trainer_grad_norm(xlkv_gpu_trainer *g, double *out_norm) {
    if (!g->norm_on_device) {
        *out_norm = g->host_norm;
        return XLKV_OK;
    }
    /* cudaMemcpy on the legacy stream waits for the trainer's (blocking) stream: after the queued AdamW */
    XLKV_CUDA_TRY(cudaMemcpy(out_norm, g->clip_norm, sizeof *out_norm, cudaMemcpyDeviceToHost),
                  "downloading the gradient norm");
    return XLKV_OK;
}

xlkv_status xlkv_gpu_trainer_adamw_step(xlkv_gpu_trainer *g, const xlkv_adamw_params *p, float lr, long step) {
    const xlkv_param_store *s = g->store;
    const float c1 = (float)(1.0 - pow((double)p->beta1, (double)step));
    const float c2 = (float)(1.0 - pow((double)p->beta2, (double)step));
    mark(g, XLKV_STEP_ADAMW);
    const float *coef = g->clip_queued ? g->clip_coef : g->clip_one;
    for (int t = 0; t < s->n_tensors;) {
        const xlkv_param_tensor *tensor = &s->tensors[t];
        const size_t n = (size_t)tensor->rows * (size_t)(tensor->cols ? tensor->cols : 1);
        const size_t o = tensor->offset;
        const float decay = tensor->kind == XLKV_PARAM_MATRIX ? p->weight_decay : 0.0f;
        t++;
        if (!g->fuse) {
            KERNEL_TRY(xlkv_cuda_train_adamw(g->params + o, g->grads + o, g->adam_m + o, g->adam_v + o, n, lr,
                                             p->beta1, p->beta2, p->eps, decay, c1, c2, g->stream), "AdamW update");
            continue;
        }
        /* fused: the tensors that follow this one without a gap join its launch, as runs with their own decay (the
         * same per-element update, one launch for the whole store instead of one per run of equal decay: the norm
         * gains between the layers' matrices were launches of 768 floats) */
        size_t ends[XLKV_CUDA_TRAIN_ADAMW_RUNS];
        float decays[XLKV_CUDA_TRAIN_ADAMW_RUNS];
        int runs = 1;
        ends[0] = n, decays[0] = decay;
        for (; t < s->n_tensors && s->tensors[t].offset == o + ends[runs - 1]; t++) {
            const size_t size = (size_t)s->tensors[t].rows * (size_t)(s->tensors[t].cols ? s->tensors[t].cols : 1);
            const float d = s->tensors[t].kind == XLKV_PARAM_MATRIX ? p->weight_decay : 0.0f;
            if (d == decays[runs - 1]) { /* the same decay: the run grows */
                ends[runs - 1] += size;
                continue;
            }
            if (runs == XLKV_CUDA_TRAIN_ADAMW_RUNS) break; /* the table is full: the next launch starts here */
            ends[runs] = ends[runs - 1] + size, decays[runs] = d, runs++;
        }
        /* clip coefficient, update and the bf16 shadow in one pass */
        KERNEL_TRY(xlkv_cuda_train_adamw_bf16_runs(g->params + o, g->params_bf16 + o, g->grads + o, g->adam_m + o,
                                                   g->adam_v + o, ends, decays, runs, coef, lr, p->beta1, p->beta2,
                                                   p->eps, c1, c2, g->stream), "AdamW update (bf16 shadow)");
    }
    g->clip_queued = false;
    if (g->fuse) return XLKV_OK;
    return refresh_weight_shadow(g); /* timed with AdamW */
}
