/* backend/cuda/cuda_weights: uploading the host fp32 weights into one device arena (see cuda_weights.h). */
#include "backend/cuda/cuda_weights.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "backend/cuda/cuda_check.h"
#include "model/float_formats.h"

enum { ARENA_ALIGNMENT = 256 };

size_t xlkv_cuda_dtype_bytes(xlkv_dtype dt) { return dt == XLKV_DTYPE_BF16 ? 2 : 4; }

/* One host fp32 range to copy into the arena at element offset `offset`. */
typedef struct upload_piece {
    const float *host;
    size_t count;  /* elements */
    size_t offset; /* bytes from the arena start */
} upload_piece;

/* The arena layout, computed once for both sizing and uploading: offsets of every tensor and the pieces to copy. */
typedef struct arena_plan {
    size_t bytes;
    size_t elem;
    upload_piece *pieces;
    size_t n_pieces, cap_pieces;
    int failed;
} arena_plan;

/* Reserves room for `count` elements and returns its byte offset. */
static size_t reserve(arena_plan *plan, size_t count) {
    size_t offset = (plan->bytes + ARENA_ALIGNMENT - 1) / ARENA_ALIGNMENT * ARENA_ALIGNMENT;
    plan->bytes = offset + count * plan->elem;
    return offset;
}

static void add_piece(arena_plan *plan, const float *host, size_t count, size_t offset) {
    if (!plan->pieces && plan->cap_pieces == (size_t)-1) return; /* sizing only */
    if (plan->n_pieces == plan->cap_pieces) {
        size_t cap = plan->cap_pieces ? 2 * plan->cap_pieces : 64;
        upload_piece *grown = realloc(plan->pieces, cap * sizeof *grown);
        if (!grown) {
            plan->failed = 1;
            return;
        }
        plan->pieces = grown;
        plan->cap_pieces = cap;
    }
    plan->pieces[plan->n_pieces++] = (upload_piece){.host = host, .count = count, .offset = offset};
}

/* A tensor made of consecutive host parts (row blocks of a fused matrix); returns its offset. */
static size_t place(arena_plan *plan, const float *const *parts, const size_t *counts, int n_parts) {
    size_t total = 0;
    for (int i = 0; i < n_parts; i++) total += counts[i];
    size_t offset = reserve(plan, total), at = offset;
    for (int i = 0; i < n_parts; i++) {
        add_piece(plan, parts[i], counts[i], at);
        at += counts[i] * plan->elem;
    }
    return offset;
}

static size_t place_one(arena_plan *plan, const float *host, size_t count) {
    return place(plan, &host, &count, 1);
}

/* Byte offsets of one layer's tensors (turned into pointers once the arena exists). */
typedef struct layer_offsets {
    size_t attn_norm, w_qkv, wo, ffn_norm, w_gate_up, w_down;
    int qkv_rows;
} layer_offsets;

typedef struct model_offsets {
    size_t tok_embeddings, output_norm, output;
    layer_offsets *layers;
} model_offsets;

static void plan_model(arena_plan *plan, const xlkv_model *model, model_offsets *off) {
    const xlkv_hparams *hp = &model->hp;
    const xlkv_weights *w = &model->weights;
    const size_t dim = (size_t)hp->dim, hidden = (size_t)hp->hidden_dim, vocab = (size_t)hp->vocab_size;
    const size_t q_dim = (size_t)hp->n_heads * (size_t)hp->head_dim;
    const size_t kv_dim = (size_t)hp->n_kv_heads * (size_t)hp->head_dim;
    off->tok_embeddings = place_one(plan, w->tok_embeddings, vocab * dim);
    off->output_norm = place_one(plan, w->output_norm, dim);
    off->output = w->output == w->tok_embeddings ? off->tok_embeddings : place_one(plan, w->output, vocab * dim);
    for (int l = 0; l < hp->n_layers; l++) {
        const xlkv_layer_weights *lw = &w->layers[l];
        layer_offsets *lo = &off->layers[l];
        lo->attn_norm = place_one(plan, lw->attn_norm, dim);
        if (xlkv_is_kv_layer(model->map, l)) {
            const float *parts[3] = {lw->wq, lw->wk, lw->wv};
            const size_t counts[3] = {q_dim * dim, kv_dim * dim, kv_dim * dim};
            lo->w_qkv = place(plan, parts, counts, 3);
            lo->qkv_rows = (int)(q_dim + 2 * kv_dim);
        } else {
            lo->w_qkv = place_one(plan, lw->wq, q_dim * dim);
            lo->qkv_rows = (int)q_dim;
        }
        lo->wo = place_one(plan, lw->wo, dim * q_dim);
        lo->ffn_norm = place_one(plan, lw->ffn_norm, dim);
        const float *gate_up[2] = {lw->w_gate, lw->w_up};
        const size_t gate_up_counts[2] = {hidden * dim, hidden * dim};
        lo->w_gate_up = place(plan, gate_up, gate_up_counts, 2);
        lo->w_down = place_one(plan, lw->w_down, dim * hidden);
    }
}

size_t xlkv_cuda_weights_bytes(const xlkv_model *model, xlkv_dtype dt) {
    arena_plan plan = {.elem = xlkv_cuda_dtype_bytes(dt), .cap_pieces = (size_t)-1};
    layer_offsets *layers = calloc((size_t)model->hp.n_layers, sizeof *layers);
    if (!layers) return (size_t)-1;
    model_offsets off = {.layers = layers};
    plan_model(&plan, model, &off);
    free(layers);
    return plan.bytes;
}

void xlkv_cuda_weights_free(xlkv_cuda_weights *w) {
    if (!w) return;
    if (w->arena) (void)cudaFree(w->arena);
    free(w->layers);
    memset(w, 0, sizeof *w);
}

/* Copies every piece into the arena, converting to bf16 through a host staging buffer when needed. */
static xlkv_status copy_pieces(const arena_plan *plan, char *arena, xlkv_dtype dt) {
    if (dt == XLKV_DTYPE_F32) {
        for (size_t i = 0; i < plan->n_pieces; i++) {
            const upload_piece *p = &plan->pieces[i];
            XLKV_CUDA_TRY(cudaMemcpy(arena + p->offset, p->host, p->count * sizeof(float), cudaMemcpyHostToDevice),
                          "uploading weights");
        }
        /* a pageable cudaMemcpy may return before its DMA lands, and the engine's stream does not wait for the
         * legacy stream: finish here */
        XLKV_CUDA_TRY(cudaDeviceSynchronize(), "finishing the weight upload");
        return XLKV_OK;
    }
    size_t largest = 0;
    for (size_t i = 0; i < plan->n_pieces; i++)
        if (plan->pieces[i].count > largest) largest = plan->pieces[i].count;
    uint16_t *staging = malloc((largest ? largest : 1) * sizeof *staging);
    if (!staging) return xlkv_fail(XLKV_E_NOMEM, "cuda: cannot allocate %zu bytes of host staging for the weights",
                                   largest * sizeof *staging);
    xlkv_status status = XLKV_OK;
    for (size_t i = 0; i < plan->n_pieces && status == XLKV_OK; i++) {
        const upload_piece *p = &plan->pieces[i];
        for (size_t e = 0; e < p->count; e++) staging[e] = xlkv_f32_to_bf16(p->host[e]);
        cudaError_t err = cudaMemcpy(arena + p->offset, staging, p->count * sizeof *staging, cudaMemcpyHostToDevice);
        if (err != cudaSuccess) status = xlkv_cuda_fail(err, "uploading weights");
    }
    free(staging);
    if (status == XLKV_OK) {
        cudaError_t err = cudaDeviceSynchronize();
        if (err != cudaSuccess) status = xlkv_cuda_fail(err, "finishing the weight upload");
    }
    return status;
}

xlkv_status xlkv_cuda_weights_upload(xlkv_cuda_weights *w, const xlkv_model *model, xlkv_dtype dt) {
    memset(w, 0, sizeof *w);
    const int n_layers = model->hp.n_layers;
    layer_offsets *offsets = calloc((size_t)n_layers, sizeof *offsets);
    w->layers = calloc((size_t)n_layers, sizeof *w->layers);
    arena_plan plan = {.elem = xlkv_cuda_dtype_bytes(dt)};
    if (!offsets || !w->layers) {
        free(offsets);
        xlkv_cuda_weights_free(w);
        return xlkv_fail(XLKV_E_NOMEM, "cuda: out of host memory for the weight table");
    }
    model_offsets off = {.layers = offsets};
    plan_model(&plan, model, &off);
    xlkv_status status = plan.failed ? xlkv_fail(XLKV_E_NOMEM, "cuda: out of host memory planning the weights")
                                     : XLKV_OK;
    if (status == XLKV_OK) status = xlkv_cuda_alloc(&w->arena, plan.bytes, "the weights");
    if (status == XLKV_OK) status = copy_pieces(&plan, w->arena, dt);
    if (status == XLKV_OK) {
        char *base = w->arena;
        w->bytes = plan.bytes;
        w->n_layers = n_layers;
        w->tok_embeddings = base + off.tok_embeddings;
        w->output_norm = base + off.output_norm;
        w->output = base + off.output;
        for (int l = 0; l < n_layers; l++) {
            const layer_offsets *lo = &offsets[l];
            w->layers[l] = (xlkv_cuda_layer_weights){
                .attn_norm = base + lo->attn_norm,
                .w_qkv = base + lo->w_qkv,
                .qkv_rows = lo->qkv_rows,
                .wo = base + lo->wo,
                .ffn_norm = base + lo->ffn_norm,
                .w_gate_up = base + lo->w_gate_up,
                .w_down = base + lo->w_down,
            };
        }
    }
    free(plan.pieces);
    free(offsets);
    if (status != XLKV_OK) xlkv_cuda_weights_free(w);
    return status;
}
