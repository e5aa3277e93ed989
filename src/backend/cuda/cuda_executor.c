/* backend/cuda/cuda_executor: the plan executor on the GPU (SEMANTICS.md sections 2-4, the same semantics as
 * infer/forward.c). The only place of the CUDA backend that reads the layer map: which layers own KV (kv_slot),
 * which slot a layer reads, its window and mask, and the plan's cyclic groups.
 *
 * One layer over n rows: rmsnorm -> one GEMM for q (+ k, v for a KV layer) -> RoPE on q -> kv_write (RoPE on k, into
 * the layer's slot) -> attention on the read slot (prefill: one sequence's chunk; decode: one row per sequence) ->
 * o-proj GEMM -> residual add + rmsnorm fused -> gate|up GEMM -> SwiGLU -> down GEMM -> residual add.
 * A cyclic group over a prefill chunk of n > 1 tokens is iterated in place as forward.c does: zero the group's KV
 * slots at the chunk's positions, save the group input, run the group `iterations` times restoring the input before
 * every iteration after the first.
 * Decode rows and chunks of one token run every plan step once.
 * A prefill pass may hold several sequences (varlen prefill, xlkv_cuda_prefill_segments): every row carries its own
 * table row and position, so the products, norms, RoPE and KV writes run once over all rows; the attention runs once
 * per sequence (segment) on that sequence's rows, so no row sees another sequence's keys.
 *
 * Few rows in bf16 (n <= params.cuda_few_rows_max: 4 by default, at most XLKV_CUDA_GEMV_MAX_ROWS = 8; unless
 * params.cuda_unfused): the layer runs as six launches with the row-wise steps fused into the products
 * (kernels_gemv.cu): qkv product with the attention RMSNorm of x as its input
 * -> rope_kv_write -> attention -> o-proj with the residual add as its epilogue (x += o) -> gate|up product with the
 * FFN RMSNorm of x as its input -> down product with SwiGLU of gate|up as its input and the residual add as its
 * epilogue; the logits product takes the final RMSNorm as its input. Every fused step rounds where the unfused
 * sequence stores, so both give the same bits (tests/cuda/test_cuda_engine.c checks it). fp32 and larger n keep the
 * separate kernels and cuBLAS. RoPE on the queries and kv_write are one launch on every path.
 * Decode rows of any batch (bf16, the tensor-core attention shapes) go further: RoPE, the K/V write and the split-K
 * attention with its combine are ONE launch (xlkv_cuda_attention_decode_fused, kernels_attention_decode.cu): five
 * launches per layer for few rows; params.cuda_unfused or cuda_unfused_decode_attention (XLKV_DECODE_FUSED=0) keep
 * rope_kv_write + the two-launch attention. Both give the same bits.
 * The products are launched as programmatic dependents (kernels_common.cuh, programmatic_launches; XLKV_GEMV=plain
 * turns it off): each launch and its CTAs' first weight loads overlap the kernel before it, the fused attention's
 * few CTAs included (it lets the next kernel start at once). Optionally (xlkv_cuda_gemv_chain, kernels_gemv_chain.cu) the MLP half of a fused layer (o, gate|up,
 * down) and the next layer's qkv product run as ONE persistent launch with grid barriers between the products.
 * XLKV_GEMV_CHAIN in the environment (read at every layer; a captured graph keeps what it captured): "1" = that chain,
 * "mlp" = o, gate|up and down chained but the next layer's qkv launched on its own, anything else or unset = the
 * separate launches (the default since the products' input loads were fixed: docs/CUDA.md). Same bits. */
#include <stdlib.h>
#include <string.h>

#include "backend/cuda/cuda_check.h"
#include "backend/cuda/cuda_engine.h"

/* The rows of one pass. tokens / row_seq / row_pos are device arrays [n]. */
typedef struct pass_rows {
    int n;
    const int *tokens;
    const int *row_seq; /* block-table row of each row */
    const int *row_pos; /* position of each row */
    bool decode;        /* rows of different sequences, one token each (attention_decode) */
    const xlkv_cuda_segment *segments; /* prefill: the sequences' rows (host), one attention launch each */
    int n_segments;
} pass_rows;

static char *offset_bytes(void *base, size_t bytes) { return (char *)base + bytes; }

static xlkv_status gemv_status(int err, const char *what) {
    if (err) return xlkv_fail(XLKV_E_BACKEND, "%s: %s", what, cudaGetErrorString((cudaError_t)err));
    return XLKV_OK;
}

/* True when the layer's four products run fused for n rows (bf16, few rows, shapes the fused kernel takes). */
static bool layer_runs_fused(const xlkv_cuda_engine *e, int layer, int n) {
    if (e->params.cuda_unfused || e->dt != XLKV_DTYPE_BF16 || n > e->params.cuda_few_rows_max) return false;
    const xlkv_hparams *hp = &e->model->hp;
    const xlkv_cuda_layer_weights *w = &e->weights.layers[layer];
    const xlkv_cuda_buffers *b = &e->buf;
    const xlkv_cuda_gemv_input norm_attn = {.kind = XLKV_GEMV_INPUT_RMSNORM, .gain = w->attn_norm};
    const xlkv_cuda_gemv_input norm_ffn = {.kind = XLKV_GEMV_INPUT_RMSNORM, .gain = w->ffn_norm};
    const xlkv_cuda_gemv_input swiglu = {.kind = XLKV_GEMV_INPUT_SWIGLU};
    const int q_dim = hp->n_heads * hp->head_dim;
    return xlkv_cuda_gemv_input_supported(n, hp->dim, b->x, &norm_attn, w->w_qkv, e->dt) &&
           xlkv_cuda_gemv_input_supported(n, q_dim, b->att, NULL, w->wo, e->dt) &&
           xlkv_cuda_gemv_input_supported(n, hp->dim, b->x, &norm_ffn, w->w_gate_up, e->dt) &&
           xlkv_cuda_gemv_input_supported(n, hp->hidden_dim, b->gate_up, &swiglu, w->w_down, e->dt);
}

/* What XLKV_GEMV_CHAIN asks (see the header comment). */
typedef enum gemv_chain_mode { CHAIN_OFF, CHAIN_MLP, CHAIN_MLP_AND_NEXT_QKV } gemv_chain_mode;
static gemv_chain_mode gemv_chain_selected(void) {
    const char *choice = getenv("XLKV_GEMV_CHAIN");
    if (choice && strcmp(choice, "1") == 0) return CHAIN_MLP_AND_NEXT_QKV;
    if (choice && strcmp(choice, "mlp") == 0) return CHAIN_MLP;
    return CHAIN_OFF;
}

/* CTA slots the qkv product of a decode pass leaves free for the fused decode attention launched after it (a
 * programmatic dependent: its CTAs do their first steps beside the product's last ones instead of after them): one per
 * (row, KV head, 64-key split) of the first ATTENTION_ROOM_SPLITS * 64 positions. Measured on the H100 at batch 1,
 * context 512 (docs/CUDA.md, bench/results/decode-qkv-room-h100-7044095.log), tokens/s for standard / cla:2 / lckv:2:
 * no room 996-1,000 / 990-991 / 994-996; 36 slots (this rule) 1,004-1,005 / 1,003-1,013 / 1,023-1,027; 72 slots
 * 992-998 / 1,003-1,008 / 1,021-1,031; 132 slots 943-946 / 961-964 / 986-990. The product leaves at most a quarter of
 * its slots (xlkv_cuda_gemv_fused_spare), so from 2 rows on (72 wanted with 4 KV heads) the cap decides: larger
 * batches were not measured. XLKV_QKV_SPARE_CTAS overrides it. */
enum { ATTENTION_ROOM_SPLITS = 9 };
static int qkv_spare_ctas(const xlkv_cuda_engine *e, int n) {
    const char *forced = getenv("XLKV_QKV_SPARE_CTAS");
    if (forced) return atoi(forced) > 0 ? atoi(forced) : 0;
    return n * e->model->hp.n_kv_heads * ATTENTION_ROOM_SPLITS;
}

/* The qkv product of `layer` with the attention RMSNorm of x as its input (a fused layer's first product), leaving
 * spare_ctas CTA slots free when run alone. */
static xlkv_cuda_gemv_stage qkv_stage(const xlkv_cuda_engine *e, int layer, int spare_ctas) {
    const xlkv_cuda_layer_weights *w = &e->weights.layers[layer];
    return (xlkv_cuda_gemv_stage){
        .y = e->buf.qkv,
        .x = e->buf.x,
        .input = {.kind = XLKV_GEMV_INPUT_RMSNORM, .gain = w->attn_norm, .eps = e->model->hp.norm_eps},
        .w = w->w_qkv,
        .in = e->model->hp.dim,
        .out = w->qkv_rows,
        .spare_ctas = spare_ctas,
    };
}

/* One xlkv_cuda_gemv_fused_spare launch of a stage. */
static xlkv_status run_stage(const xlkv_cuda_engine *e, const xlkv_cuda_gemv_stage *s, int n, const char *what) {
    return gemv_status(xlkv_cuda_gemv_fused_spare(s->y, s->y_is_f32, s->accumulate, s->x, &s->input, s->w, n, s->in,
                                                  s->out, s->spare_ctas, e->dt, e->stream),
                       what);
}

/* The attention of the layer after rope_kv_write (prefill: one launch per sequence, its rows see only its own keys). */
static xlkv_status run_attention(xlkv_cuda_engine *e, const xlkv_attention_rule *rule, const xlkv_paged_kv *kv,
                                 int qkv_stride, const pass_rows *rows) {
    xlkv_cuda_buffers *b = &e->buf;
    const int q_dim = e->model->hp.n_heads * e->model->hp.head_dim;
    if (rows->decode) {
        XLKV_CUDA_TRY(xlkv_cuda_attention_decode(b->att, b->qkv, qkv_stride, rows->n, rows->row_seq, rows->row_pos,
                                                 e->n_ctx, kv, rule, b->attn_workspace, e->dt, e->stream),
                      "decode attention");
        return XLKV_OK;
    }
    for (int i = 0; i < rows->n_segments; i++) {
        const xlkv_cuda_segment *seg = &rows->segments[i];
        XLKV_CUDA_TRY(xlkv_cuda_attention_prefill(
                          offset_bytes(b->att, (size_t)seg->row0 * (size_t)q_dim * e->elem_bytes),
                          offset_bytes(b->qkv, (size_t)seg->row0 * (size_t)qkv_stride * e->elem_bytes), qkv_stride,
                          seg->n, seg->pos0, seg->slot, kv, rule, e->dt, e->stream),
                      "prefill attention");
    }
    return XLKV_OK;
}

/* True when decode rows run RoPE, the K/V write and the attention as one launch (xlkv_cuda_attention_decode_fused):
 * bf16, the tensor-core shapes, any n up to the buffers' decode rows, unless params.cuda_unfused or
 * cuda_unfused_decode_attention (XLKV_DECODE_FUSED=0) keep the three launches. */
static bool decode_attention_fused(const xlkv_cuda_engine *e, int n, const xlkv_attention_rule *rule,
                                   const xlkv_paged_kv *kv) {
    return !e->params.cuda_unfused && !e->params.cuda_unfused_decode_attention && n <= e->buf.shape.decode_rows &&
           xlkv_cuda_attention_decode_fused_supported(n, rule, kv, e->dt);
}

/* One layer. `next`: the layer the pass runs after this one on the x it leaves (-1: none, or a cyclic group that
 * restores x first). *qkv_ready: on entry, this layer's qkv product was already computed (by the previous layer's
 * chain); on return, `next`'s was. */
static xlkv_status run_layer(xlkv_cuda_engine *e, int layer, int next, const pass_rows *rows, bool *qkv_ready) {
    const xlkv_hparams *hp = &e->model->hp;
    const xlkv_layer_map *map = e->model->map;
    const xlkv_cuda_layer_weights *w = &e->weights.layers[layer];
    xlkv_cuda_buffers *b = &e->buf;
    const xlkv_dtype dt = e->dt;
    void *stream = e->stream;
    const int n = rows->n, dim = hp->dim, hidden = hp->hidden_dim, head_dim = hp->head_dim;
    const int q_dim = hp->n_heads * head_dim, kv_dim = hp->n_kv_heads * head_dim;
    const int qkv_stride = w->qkv_rows; /* row stride of the fused q | k | v output */
    const xlkv_paged_kv kv = xlkv_cuda_kv_pool_view(&e->kv);

    const bool fused = layer_runs_fused(e, layer, n);
    const bool qkv_done = *qkv_ready;
    *qkv_ready = false;
    if (qkv_done && !fused)
        return xlkv_fail(XLKV_E_BACKEND, "cuda: layer %d's qkv product was chained but the layer does not run fused",
                         layer);

    if (qkv_done) {
        /* computed at the end of the previous layer's chain */
    } else if (fused) {
        const xlkv_cuda_gemv_stage qkv = qkv_stage(e, layer, rows->decode ? qkv_spare_ctas(e, n) : 0);
        XLKV_TRY(run_stage(e, &qkv, n, "qkv product with the attention rmsnorm"));
    } else {
        XLKV_CUDA_TRY(xlkv_cuda_rmsnorm(b->xb, b->x, w->attn_norm, n, dim, hp->norm_eps, dt, stream),
                      "attention rmsnorm");
        XLKV_TRY(xlkv_cuda_linear(&e->gemm, b->qkv, b->xb, w->w_qkv, n, dim, w->qkv_rows));
    }
    const bool kv_layer = xlkv_is_kv_layer(map, layer);
    const xlkv_attention_rule rule = {
        .n_heads = hp->n_heads,
        .n_kv_heads = hp->n_kv_heads,
        .head_dim = head_dim,
        .window = map->sliding[layer] ? hp->sliding_window : 0,
        .mask_diagonal = xlkv_is_cyclic(map, layer) || hp->force_nodiag,
        .read_slot = xlkv_read_slot(map, layer),
    };
    if (rows->decode && decode_attention_fused(e, n, &rule, &kv)) {
        const xlkv_cuda_decode_rope_kv rope_kv = {.cos_table = b->rope_cos,
                                                  .sin_table = b->rope_sin,
                                                  .write_slot = kv_layer ? map->kv_slot[layer] : -1,
                                                  .k_col = q_dim,
                                                  .v_col = q_dim + kv_dim};
        XLKV_CUDA_TRY(xlkv_cuda_attention_decode_fused(b->att, b->qkv, qkv_stride, n, rows->row_seq, rows->row_pos,
                                                       e->n_ctx, &kv, &rule, &rope_kv, b->attn_workspace,
                                                       b->attn_counters, dt, stream),
                      "RoPE, K/V write and decode attention (fused)");
    } else {
        XLKV_CUDA_TRY(xlkv_cuda_rope_kv_write(b->qkv, qkv_stride, n, hp->n_heads, head_dim, rows->row_seq,
                                              rows->row_pos, b->rope_cos, b->rope_sin, kv_layer ? &kv : NULL,
                                              kv_layer ? map->kv_slot[layer] : 0, q_dim, q_dim + kv_dim, dt, stream),
                      "RoPE on the queries and writing K/V to the pool");
        XLKV_TRY(run_attention(e, &rule, &kv, qkv_stride, rows));
    }
    if (fused) {
        /* o (x += att . wo), gate|up (of rmsnorm(x)), down (x += swiglu(gate|up) . w_down), then maybe the next
         * layer's qkv (of rmsnorm(x)): each stage reads what the one before wrote */
        xlkv_cuda_gemv_stage stages[4] = {
            {.y = b->x, .accumulate = 1, .x = b->att, .w = w->wo, .in = q_dim, .out = dim},
            {.y = b->gate_up,
             .x = b->x,
             .input = {.kind = XLKV_GEMV_INPUT_RMSNORM, .gain = w->ffn_norm, .eps = hp->norm_eps},
             .w = w->w_gate_up,
             .in = dim,
             .out = 2 * hidden},
            {.y = b->x,
             .accumulate = 1,
             .x = b->gate_up,
             .input = {.kind = XLKV_GEMV_INPUT_SWIGLU},
             .w = w->w_down,
             .in = hidden,
             .out = dim},
        };
        const gemv_chain_mode mode = gemv_chain_selected();
        int n_stages = 3;
        if (mode == CHAIN_MLP_AND_NEXT_QKV && next >= 0 && layer_runs_fused(e, next, n))
            stages[n_stages++] = qkv_stage(e, next, 0);
        if (mode != CHAIN_OFF && xlkv_cuda_gemv_chain_supported(stages, n_stages, n, dt)) {
            XLKV_TRY(gemv_status(xlkv_cuda_gemv_chain(stages, n_stages, n, dt, stream),
                                 n_stages == 4 ? "o, gate|up, down and the next layer's qkv products (one chain)"
                                               : "o, gate|up and down products (one chain)"));
            *qkv_ready = n_stages == 4;
            return XLKV_OK;
        }
        XLKV_TRY(run_stage(e, &stages[0], n, "o-proj product with the residual add"));
        XLKV_TRY(run_stage(e, &stages[1], n, "gate|up product with the FFN rmsnorm"));
        XLKV_TRY(run_stage(e, &stages[2], n, "down product with SwiGLU and the residual add"));
        return XLKV_OK;
    }
    XLKV_TRY(xlkv_cuda_linear(&e->gemm, b->proj, b->att, w->wo, n, q_dim, dim));
    XLKV_CUDA_TRY(xlkv_cuda_add_rmsnorm(b->x, b->proj, dim, b->xb, w->ffn_norm, n, dim, hp->norm_eps, dt, stream),
                  "residual + FFN rmsnorm");
    XLKV_TRY(xlkv_cuda_linear(&e->gemm, b->gate_up, b->xb, w->w_gate_up, n, dim, 2 * hidden));
    XLKV_CUDA_TRY(xlkv_cuda_swiglu(b->hb, b->gate_up, offset_bytes(b->gate_up, (size_t)hidden * e->elem_bytes),
                                   2 * hidden, n, hidden, dt, stream),
                  "SwiGLU");
    XLKV_TRY(xlkv_cuda_linear(&e->gemm, b->proj, b->hb, w->w_down, n, hidden, dim));
    XLKV_CUDA_TRY(xlkv_cuda_add(b->x, b->proj, dim, n, dim, dt, stream), "FFN residual");
    return XLKV_OK;
}

/* Layers first..last once each; `then` = the layer the pass runs next on the x they leave (-1: none). *qkv_ready as
 * in run_layer (false on entry when the first layer's qkv is still to compute). */
static xlkv_status run_layers(xlkv_cuda_engine *e, int first, int last, int then, const pass_rows *rows,
                              bool *qkv_ready) {
    for (int layer = first; layer <= last; layer++)
        XLKV_TRY(run_layer(e, layer, layer < last ? layer + 1 : then, rows, qkv_ready));
    return XLKV_OK;
}

/* A cyclic group over a prefill chunk (see the header comment; forward.c's run_cyclic_group). */
static xlkv_status run_cyclic_group(xlkv_cuda_engine *e, const xlkv_plan_step *step, const pass_rows *rows) {
    const xlkv_layer_map *map = e->model->map;
    const xlkv_paged_kv kv = xlkv_cuda_kv_pool_view(&e->kv);
    const size_t bytes = (size_t)rows->n * (size_t)e->model->hp.dim * e->elem_bytes;
    for (int j = step->first; j <= step->last; j++)
        if (xlkv_is_kv_layer(map, j))
            for (int i = 0; i < rows->n_segments; i++) {
                const xlkv_cuda_segment *seg = &rows->segments[i];
                XLKV_CUDA_TRY(xlkv_cuda_kv_zero(&kv, map->kv_slot[j], seg->slot, seg->pos0, seg->n, e->dt, e->stream),
                              "zeroing a cyclic group's KV");
            }
    XLKV_CUDA_TRY(cudaMemcpyAsync(e->buf.x_group_in, e->buf.x, bytes, cudaMemcpyDeviceToDevice, e->stream),
                  "saving a cyclic group's input");
    for (int iteration = 0; iteration < e->iterations; iteration++) {
        if (iteration > 0)
            XLKV_CUDA_TRY(cudaMemcpyAsync(e->buf.x, e->buf.x_group_in, bytes, cudaMemcpyDeviceToDevice, e->stream),
                          "restoring a cyclic group's input");
        bool qkv_ready = false; /* the group restores x before each iteration: nothing chains across it */
        XLKV_TRY(run_layers(e, step->first, step->last, -1, rows, &qkv_ready));
    }
    return XLKV_OK;
}

/* True when the pass iterates `step` as a cyclic group (prefill chunks of several tokens). */
static bool step_iterated(const xlkv_plan_step *step, const pass_rows *rows) {
    return step->cyclic && !rows->decode && rows->n > 1;
}

/* Embedding, then every plan step (forward.c's run_chunk). */
static xlkv_status run_pass(xlkv_cuda_engine *e, const pass_rows *rows) {
    const xlkv_layer_map *map = e->model->map;
    XLKV_CUDA_TRY(xlkv_cuda_embedding(e->buf.x, e->weights.tok_embeddings, rows->tokens, rows->n, e->model->hp.dim,
                                      e->dt, e->stream),
                  "embedding");
    bool qkv_ready = false; /* the next layer's qkv product was chained (run_layer) */
    for (int s = 0; s < map->n_plan_steps; s++) {
        const xlkv_plan_step *step = &map->plan[s];
        if (step_iterated(step, rows)) {
            XLKV_TRY(run_cyclic_group(e, step, rows));
            continue;
        }
        const bool next_runs_once = s + 1 < map->n_plan_steps && !step_iterated(&map->plan[s + 1], rows);
        XLKV_TRY(run_layers(e, step->first, step->last, next_runs_once ? map->plan[s + 1].first : -1, rows,
                            &qkv_ready));
    }
    return XLKV_OK;
}

/* Final norm and classifier of the n_rows contiguous rows at x (device) into out[n_rows, vocab] (device fp32). */
static xlkv_status logits_of(xlkv_cuda_engine *e, const void *x, int n_rows, float *out) {
    const xlkv_hparams *hp = &e->model->hp;
    const xlkv_cuda_gemv_input norm = {.kind = XLKV_GEMV_INPUT_RMSNORM, .gain = e->weights.output_norm,
                                       .eps = hp->norm_eps};
    if (!e->params.cuda_unfused && n_rows <= e->params.cuda_few_rows_max &&
        xlkv_cuda_gemv_input_supported(n_rows, hp->dim, x, &norm, e->weights.output, e->dt))
        return gemv_status(xlkv_cuda_gemv_fused(out, 1, 0, x, &norm, e->weights.output, n_rows, hp->dim,
                                                hp->vocab_size, e->dt, e->stream),
                           "logits product with the final rmsnorm");
    XLKV_CUDA_TRY(xlkv_cuda_rmsnorm(e->buf.xb, x, e->weights.output_norm, n_rows, hp->dim, hp->norm_eps, e->dt,
                                    e->stream),
                  "final rmsnorm");
    return xlkv_cuda_linear_f32_out(&e->gemm, out, e->buf.xb, e->weights.output, n_rows, hp->dim, hp->vocab_size);
}

/* The same for rows [first_row, first_row + n_rows) of x. */
static xlkv_status compute_logits(xlkv_cuda_engine *e, int first_row, int n_rows, float *out) {
    return logits_of(e, offset_bytes(e->buf.x, (size_t)first_row * (size_t)e->model->hp.dim * e->elem_bytes), n_rows,
                     out);
}

/* Logits of `n_rows` rows starting at first_row, to host[n_rows, vocab], through buf.logits in pieces. */
static xlkv_status logits_to_host(xlkv_cuda_engine *e, int first_row, int n_rows, float *host) {
    const size_t vocab = (size_t)e->model->hp.vocab_size;
    for (int done = 0; done < n_rows;) {
        int count = n_rows - done;
        if (count > e->buf.shape.logit_rows) count = e->buf.shape.logit_rows;
        XLKV_TRY(compute_logits(e, first_row + done, count, e->buf.logits));
        XLKV_CUDA_TRY(cudaMemcpyAsync(host + (size_t)done * vocab, e->buf.logits, (size_t)count * vocab * sizeof(float),
                                      cudaMemcpyDeviceToHost, e->stream),
                      "copying logits to the host");
        done += count;
    }
    return XLKV_OK;
}

/* Scores `n_rows` rows of x starting at first_row through buf.logits in pieces: entry k of the sink's arrays (from
 * sink_offset) belongs to row first_row + k. */
static xlkv_status score_rows(xlkv_cuda_engine *e, int first_row, int n_rows, const xlkv_cuda_logits_sink *sink,
                              int sink_offset) {
    const int vocab = e->model->hp.vocab_size;
    for (int done = 0; done < n_rows;) {
        int count = n_rows - done;
        if (count > e->buf.shape.logit_rows) count = e->buf.shape.logit_rows;
        XLKV_TRY(compute_logits(e, first_row + done, count, e->buf.logits));
        const int at = sink_offset + done;
        XLKV_CUDA_TRY(xlkv_cuda_score_rows(e->buf.logits, count, vocab, sink->targets + at, sink->log_probs + at,
                                           sink->is_argmax + at, e->stream),
                      "scoring rows");
        done += count;
    }
    return XLKV_OK;
}

/* Delivers the logits of rows [0, count) of x, which are rows piece_start .. piece_start + count - 1 of a prefill of
 * n rows, to the sink. */
static xlkv_status deliver_logits(xlkv_cuda_engine *e, const xlkv_cuda_logits_sink *sink, int piece_start, int count,
                                  int n) {
    switch (sink->kind) {
    case XLKV_CUDA_LOGITS_HOST:
        return logits_to_host(e, 0, count, sink->host + (size_t)piece_start * (size_t)e->model->hp.vocab_size);
    case XLKV_CUDA_LOGITS_SCORE: {
        const int skip = sink->first_row > piece_start ? sink->first_row - piece_start : 0;
        if (skip >= count) return XLKV_OK;
        return score_rows(e, skip, count - skip, sink, piece_start + skip - sink->first_row);
    }
    case XLKV_CUDA_LOGITS_LAST:
        if (piece_start + count == n) return compute_logits(e, count - 1, 1, e->buf.logits);
        return XLKV_OK;
    }
    return xlkv_fail(XLKV_E_INVALID, "cuda engine: unknown logits sink %d", (int)sink->kind);
}

xlkv_status xlkv_cuda_inputs_begin(xlkv_cuda_engine *e) {
    XLKV_CUDA_TRY(cudaStreamSynchronize(e->stream), "waiting for the previous step");
    return XLKV_OK;
}

xlkv_status xlkv_cuda_inputs_send(xlkv_cuda_engine *e, size_t bytes) {
    XLKV_CUDA_TRY(cudaMemcpyAsync(e->buf.inputs, e->buf.host_inputs, bytes, cudaMemcpyHostToDevice, e->stream),
                  "sending the step inputs");
    return XLKV_OK;
}

bool xlkv_cuda_prefills_sequentially(const xlkv_cuda_engine *e, int n) {
    const xlkv_prefill_mode mode = e->params.prefill_mode;
    return mode == XLKV_PREFILL_SEQUENTIAL ||
           (mode == XLKV_PREFILL_AUTO && xlkv_layer_map_has_cyclic(e->model->map) && n <= e->iterations);
}

xlkv_status xlkv_cuda_prefill(xlkv_cuda_engine *e, int slot, const int *tokens, int n, int pos0,
                              const xlkv_cuda_logits_sink *sink) {
    const xlkv_cuda_logits_sink last_row = {.kind = XLKV_CUDA_LOGITS_LAST};
    if (!sink) sink = &last_row;
    if (sink->kind == XLKV_CUDA_LOGITS_SCORE && (sink->first_row < 0 || sink->first_row >= n))
        return xlkv_fail(XLKV_E_INVALID, "cuda engine: scoring rows [%d, %d) of a prefill (need 0 <= first < n)",
                         sink->first_row, n);
    const bool sequential = xlkv_cuda_prefills_sequentially(e, n);
    /* pieces that fit the input region; in plan mode each piece is one chunk of the plan */
    const int piece_rows = sequential ? e->buf.shape.rows : e->prefill_rows;
    for (int start = 0; start < n; start += piece_rows) {
        const int count = n - start < piece_rows ? n - start : piece_rows;
        const xlkv_cuda_step_layout layout = xlkv_cuda_step_layout_for(count, 0);
        XLKV_TRY(xlkv_cuda_inputs_begin(e));
        int *host_tokens = (int *)(e->buf.host_inputs + layout.tokens);
        int *host_seq = (int *)(e->buf.host_inputs + layout.row_seq);
        int *host_pos = (int *)(e->buf.host_inputs + layout.row_pos);
        for (int r = 0; r < count; r++) {
            host_tokens[r] = tokens[start + r];
            host_seq[r] = slot;
            host_pos[r] = pos0 + start + r;
        }
        XLKV_TRY(xlkv_cuda_inputs_send(e, layout.bytes));
        const int *dev_tokens = (const int *)(e->buf.inputs + layout.tokens);
        const int *dev_seq = (const int *)(e->buf.inputs + layout.row_seq);
        const int *dev_pos = (const int *)(e->buf.inputs + layout.row_pos);
        if (sequential) {
            for (int r = 0; r < count; r++) {
                const pass_rows rows = {.n = 1, .tokens = dev_tokens + r, .row_seq = dev_seq + r,
                                        .row_pos = dev_pos + r, .decode = true};
                XLKV_TRY(run_pass(e, &rows));
                XLKV_TRY(deliver_logits(e, sink, start + r, 1, n));
            }
        } else {
            const xlkv_cuda_segment segment = {.slot = slot, .row0 = 0, .n = count, .pos0 = pos0 + start};
            const pass_rows rows = {.n = count, .tokens = dev_tokens, .row_seq = dev_seq, .row_pos = dev_pos,
                                    .decode = false, .segments = &segment, .n_segments = 1};
            XLKV_TRY(run_pass(e, &rows));
            XLKV_TRY(deliver_logits(e, sink, start, count, n));
        }
    }
    return XLKV_OK;
}

/* Few rows: the chunked sampler (many CTAs per row; the buffers hold its workspace for decode_rows rows); else one
 * CTA per row. Both select the same tokens. */
static xlkv_status sample_rows(xlkv_cuda_engine *e, const xlkv_cuda_step_layout *layout, int n_rows) {
    const xlkv_cuda_sampling *params = (const xlkv_cuda_sampling *)(e->buf.inputs + layout->sampling);
    const int *history = (const int *)(e->buf.inputs + layout->history);
    const int *history_len = (const int *)(e->buf.inputs + layout->history_len);
    const int vocab = e->model->hp.vocab_size;
    if (!e->params.cuda_unfused && n_rows <= XLKV_CUDA_GEMV_MAX_ROWS && n_rows <= e->buf.shape.decode_rows) {
        XLKV_CUDA_TRY(xlkv_cuda_sample_split(e->buf.sampled, e->buf.logits, n_rows, vocab, params, history,
                                             history_len, e->buf.sample_workspace, e->stream),
                      "sampling (chunked)");
        return XLKV_OK;
    }
    XLKV_CUDA_TRY(xlkv_cuda_sample(e->buf.sampled, e->buf.logits, n_rows, vocab, params, history, history_len,
                                   e->stream),
                  "sampling");
    return XLKV_OK;
}

xlkv_status xlkv_cuda_sample_first(xlkv_cuda_engine *e) {
    const xlkv_cuda_step_layout layout = xlkv_cuda_step_layout_for(0, 1);
    return sample_rows(e, &layout, 1);
}

xlkv_status xlkv_cuda_prefill_segments(xlkv_cuda_engine *e, const xlkv_cuda_segment *segments, int count,
                                       int n_rows) {
    if (xlkv_layer_map_has_cyclic(e->model->map))
        return xlkv_fail(XLKV_E_UNSUPPORTED, "cuda engine: prefilling several sequences in one pass: cyclic maps "
                                             "iterate each sequence's chunk alone");
    if (count < 1 || count > e->buf.shape.decode_rows || n_rows < 1 || n_rows + count > e->buf.shape.rows)
        return xlkv_fail(XLKV_E_INVALID,
                         "cuda engine: prefilling %d sequences of %d rows in one pass (at most %d sequences, rows + "
                         "sequences <= %d)",
                         count, n_rows, e->buf.shape.decode_rows, e->buf.shape.rows);
    for (int i = 0, row = 0; i < count; row += segments[i].n, i++)
        if (segments[i].row0 != row || segments[i].n < 1 || segments[i].n > e->prefill_rows ||
            row + segments[i].n > n_rows)
            return xlkv_fail(XLKV_E_INVALID,
                             "cuda engine: segment %d (rows %d + %d) does not follow the previous one inside %d rows "
                             "(each at most %d)",
                             i, segments[i].row0, segments[i].n, n_rows, e->prefill_rows);
    const xlkv_cuda_step_layout layout = xlkv_cuda_step_layout_for(n_rows + count, count);
    const int *dev_tokens = (const int *)(e->buf.inputs + layout.tokens);
    const pass_rows rows = {.n = n_rows,
                            .tokens = dev_tokens,
                            .row_seq = (const int *)(e->buf.inputs + layout.row_seq),
                            .row_pos = (const int *)(e->buf.inputs + layout.row_pos),
                            .decode = false,
                            .segments = segments,
                            .n_segments = count};
    XLKV_TRY(run_pass(e, &rows));
    /* the last row of every segment, gathered (the embedding kernel copies rows by index) into proj, free after the
     * pass; then their logits at once and one sampled token each */
    XLKV_CUDA_TRY(xlkv_cuda_embedding(e->buf.proj, e->buf.x, dev_tokens + n_rows, count, e->model->hp.dim, e->dt,
                                      e->stream),
                  "gathering the last row of each prompt");
    XLKV_TRY(logits_of(e, e->buf.proj, count, e->buf.logits));
    return sample_rows(e, &layout, count);
}

xlkv_status xlkv_cuda_decode_pass(void *engine, int bucket) {
    xlkv_cuda_engine *e = engine;
    const xlkv_cuda_step_layout layout = xlkv_cuda_step_layout_for(bucket, bucket);
    const pass_rows rows = {.n = bucket,
                            .tokens = (const int *)(e->buf.inputs + layout.tokens),
                            .row_seq = (const int *)(e->buf.inputs + layout.row_seq),
                            .row_pos = (const int *)(e->buf.inputs + layout.row_pos),
                            .decode = true};
    XLKV_TRY(run_pass(e, &rows));
    XLKV_TRY(compute_logits(e, 0, bucket, e->buf.logits));
    return sample_rows(e, &layout, bucket);
}
