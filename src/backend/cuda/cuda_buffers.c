/* backend/cuda/cuda_buffers: one arena for activations and step inputs (see cuda_buffers.h). */
#include "backend/cuda/cuda_buffers.h"
#include "model/rope_tables.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "backend/cuda/cuda_check.h"
#include "backend/cuda/cuda_weights.h"

enum { ALIGNMENT = 256 };

static size_t align_up(size_t n) { return (n + ALIGNMENT - 1) / ALIGNMENT * ALIGNMENT; }

xlkv_cuda_step_layout xlkv_cuda_step_layout_for(int rows, int sample_rows) {
    xlkv_cuda_step_layout l;
    const size_t r = (size_t)rows, s = (size_t)sample_rows;
    l.sampling = 0;
    l.history_len = l.sampling + s * sizeof(xlkv_cuda_sampling);
    l.history = l.history_len + s * sizeof(int);
    l.tokens = l.history + s * XLKV_CUDA_PENALTY_WINDOW * sizeof(int);
    l.row_seq = l.tokens + r * sizeof(int);
    l.row_pos = l.row_seq + r * sizeof(int);
    l.bytes = l.row_pos + r * sizeof(int);
    return l;
}

/* Offsets of every buffer in the arena; `bytes` is the arena size. */
typedef struct arena_layout {
    size_t x, x_group_in, xb, qkv, att, proj, gate_up, hb, logits, attn_workspace, attn_counters, sample_workspace,
        rope_cos, rope_sin, inputs,
        score_targets, score_log_probs, score_is_argmax, bytes;
    size_t inputs_bytes;
} arena_layout;

static size_t take(size_t *cursor, size_t bytes) {
    size_t at = align_up(*cursor);
    *cursor = at + bytes;
    return at;
}

static arena_layout layout_arena(const xlkv_hparams *hp, xlkv_dtype dt, const xlkv_cuda_buffer_shape *s) {
    const size_t e = xlkv_cuda_dtype_bytes(dt), rows = (size_t)s->rows;
    const size_t dim = (size_t)hp->dim, hidden = (size_t)hp->hidden_dim;
    const size_t q_dim = (size_t)hp->n_heads * (size_t)hp->head_dim;
    const size_t kv_dim = (size_t)hp->n_kv_heads * (size_t)hp->head_dim;
    const size_t rope = (size_t)s->n_ctx * (size_t)(hp->head_dim / 2) * sizeof(float);
    arena_layout a;
    size_t cursor = 0;
    a.x = take(&cursor, rows * dim * e);
    a.x_group_in = take(&cursor, rows * dim * e);
    a.xb = take(&cursor, rows * dim * e);
    a.qkv = take(&cursor, rows * (q_dim + 2 * kv_dim) * e);
    a.att = take(&cursor, rows * q_dim * e);
    a.proj = take(&cursor, rows * dim * e);
    a.gate_up = take(&cursor, rows * 2 * hidden * e);
    a.hb = take(&cursor, rows * hidden * e);
    a.logits = take(&cursor, (size_t)s->logit_rows * (size_t)hp->vocab_size * sizeof(float));
    a.attn_workspace = take(&cursor, xlkv_cuda_attention_decode_workspace(s->decode_rows, hp->n_heads, hp->head_dim,
                                                                          s->n_ctx) * sizeof(float));
    a.attn_counters = take(&cursor, xlkv_cuda_attention_decode_fused_counters(s->decode_rows, hp->n_kv_heads) *
                                        sizeof(unsigned));
    a.sample_workspace = take(&cursor, xlkv_cuda_sample_split_workspace(s->decode_rows, hp->vocab_size));
    a.rope_cos = take(&cursor, rope);
    a.rope_sin = take(&cursor, rope);
    a.inputs_bytes = xlkv_cuda_step_layout_for(s->rows, s->decode_rows).bytes;
    a.inputs = take(&cursor, a.inputs_bytes);
    a.score_targets = take(&cursor, (size_t)s->n_ctx * sizeof(int));
    a.score_log_probs = take(&cursor, (size_t)s->n_ctx * sizeof(double));
    a.score_is_argmax = take(&cursor, (size_t)s->n_ctx);
    a.bytes = align_up(cursor);
    return a;
}

size_t xlkv_cuda_buffers_bytes(const xlkv_hparams *hp, xlkv_dtype dt, const xlkv_cuda_buffer_shape *shape) {
    return layout_arena(hp, dt, shape).bytes;
}

void xlkv_cuda_buffers_free(xlkv_cuda_buffers *b) {
    if (!b) return;
    if (b->arena) (void)cudaFree(b->arena);
    if (b->host_inputs) (void)cudaFreeHost(b->host_inputs);
    memset(b, 0, sizeof *b);
}

/* cos/sin of pos * theta^(-2i/head_dim) in float, exactly as infer/context.c computes them, so that both backends
 * rotate by the same values. */
static xlkv_status upload_rope_tables(xlkv_cuda_buffers *b, const xlkv_hparams *hp, cudaStream_t stream) {
    const int half = hp->head_dim / 2, n_ctx = b->shape.n_ctx;
    const size_t count = (size_t)n_ctx * (size_t)half;
    float *cos_table = malloc(count * sizeof(float)), *sin_table = malloc(count * sizeof(float));
    if (!cos_table || !sin_table) {
        free(cos_table);
        free(sin_table);
        return xlkv_fail(XLKV_E_NOMEM, "cuda: out of host memory for the RoPE tables (%d positions)", n_ctx);
    }
    xlkv_rope_tables_fill(cos_table, sin_table, n_ctx, hp->head_dim, hp->rope_theta);
    cudaError_t err = cudaMemcpyAsync(b->rope_cos, cos_table, count * sizeof(float), cudaMemcpyHostToDevice, stream);
    if (err == cudaSuccess)
        err = cudaMemcpyAsync(b->rope_sin, sin_table, count * sizeof(float), cudaMemcpyHostToDevice, stream);
    if (err == cudaSuccess) err = cudaStreamSynchronize(stream);
    free(cos_table);
    free(sin_table);
    return err == cudaSuccess ? XLKV_OK : xlkv_cuda_fail(err, "uploading the RoPE tables");
}

static xlkv_status allocate(xlkv_cuda_buffers *b, const xlkv_hparams *hp, xlkv_dtype dt, cudaStream_t stream) {
    const arena_layout a = layout_arena(hp, dt, &b->shape);
    XLKV_TRY(xlkv_cuda_alloc(&b->arena, a.bytes, "the activations"));
    b->bytes = a.bytes;
    char *base = b->arena;
    b->x = base + a.x;
    b->x_group_in = base + a.x_group_in;
    b->xb = base + a.xb;
    b->qkv = base + a.qkv;
    b->att = base + a.att;
    b->proj = base + a.proj;
    b->gate_up = base + a.gate_up;
    b->hb = base + a.hb;
    b->logits = (float *)(base + a.logits);
    b->attn_workspace = (float *)(base + a.attn_workspace);
    b->attn_counters = (unsigned *)(base + a.attn_counters); /* zeroed with the arena below */
    b->sample_workspace = base + a.sample_workspace;
    b->rope_cos = (float *)(base + a.rope_cos);
    b->rope_sin = (float *)(base + a.rope_sin);
    b->inputs = base + a.inputs;
    b->inputs_bytes = a.inputs_bytes;
    b->score_targets = (int *)(base + a.score_targets);
    b->score_log_probs = (double *)(base + a.score_log_probs);
    b->score_is_argmax = (unsigned char *)(base + a.score_is_argmax);
    /* pinned host: the input mirror, the sampled ids, then the scoring targets, log-probabilities and flags */
    const size_t ctx = (size_t)b->shape.n_ctx;
    size_t host_cursor = 0;
    (void)take(&host_cursor, a.inputs_bytes);
    const size_t at_sampled = take(&host_cursor, (size_t)b->shape.decode_rows * sizeof(int));
    const size_t at_targets = take(&host_cursor, ctx * sizeof(int));
    const size_t at_log_probs = take(&host_cursor, ctx * sizeof(double));
    const size_t at_flags = take(&host_cursor, ctx);
    const size_t host_bytes = align_up(host_cursor);
    void *host = NULL;
    XLKV_TRY(xlkv_cuda_alloc_host(&host, host_bytes, "the step inputs"));
    memset(host, 0, host_bytes);
    b->host_inputs = host;
    b->host_sampled = (int *)(b->host_inputs + at_sampled);
    b->host_score_targets = (int *)(b->host_inputs + at_targets);
    b->host_score_log_probs = (double *)(b->host_inputs + at_log_probs);
    b->host_score_is_argmax = (unsigned char *)(b->host_inputs + at_flags);
    /* the sampler writes the ids straight into pinned host memory: no copy after each step */
    XLKV_CUDA_TRY(cudaHostGetDevicePointer((void **)&b->sampled, b->host_sampled, 0),
                  "mapping the sampled ids into the device's address space");
    XLKV_CUDA_TRY(cudaMemsetAsync(b->arena, 0, a.bytes, stream), "zeroing the activations");
    return upload_rope_tables(b, hp, stream);
}

xlkv_status xlkv_cuda_buffers_init(xlkv_cuda_buffers *b, const xlkv_hparams *hp, xlkv_dtype dt,
                                   const xlkv_cuda_buffer_shape *shape, cudaStream_t stream) {
    memset(b, 0, sizeof *b);
    b->shape = *shape;
    xlkv_status status = allocate(b, hp, dt, stream);
    if (status != XLKV_OK) xlkv_cuda_buffers_free(b);
    return status;
}
