/* train/train_graph: see train_graph.h. */
#include "train/train_graph.h"
#include "model/rope_tables.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/status.h"
#include "train/train_ops.h"

typedef struct kv_source {
    const float *k, *v;
    float *dk, *dv;
} kv_source;

/* Carving: with base == NULL only counts floats (packed: align 1). */
static float *take(float *base, size_t *cursor, size_t n) { return xlkv_tape_take(base, cursor, n, 1); }

/* Every buffer of the graph; returns the number of floats. */
static size_t carve_all(xlkv_train_graph *g, float *base) {
    const xlkv_hparams *hp = &g->store->hp;
    const xlkv_layer_map *map = g->store->map;
    const size_t N = (size_t)g->n_rows, dim = (size_t)hp->dim, hid = (size_t)hp->hidden_dim;
    const size_t q_dim = (size_t)hp->n_heads * (size_t)hp->head_dim, kv_dim = (size_t)hp->n_kv_heads * (size_t)hp->head_dim;
    size_t cursor = 0;
    g->rope_cos = take(base, &cursor, (size_t)g->seq * (size_t)(hp->head_dim / 2));
    g->rope_sin = take(base, &cursor, (size_t)g->seq * (size_t)(hp->head_dim / 2));
    for (int r = 0; r < g->n_records; r++)
        xlkv_tape_carve_record(&g->records[r], hp, N, xlkv_is_kv_layer(map, g->records[r].layer), true, base, &cursor,
                               1);
    xlkv_tape_carve_record(g->scratch, hp, N, false, true, base, &cursor, 1);
    if (xlkv_layer_map_has_cyclic(map)) {
        g->const_k = take(base, &cursor, (size_t)map->n_kv_layers * N * kv_dim);
        g->const_v = take(base, &cursor, (size_t)map->n_kv_layers * N * kv_dim);
    }
    g->x = take(base, &cursor, N * dim);
    g->x_group_in = take(base, &cursor, N * dim);
    g->final_inv_rms = take(base, &cursor, N);
    g->x_final = take(base, &cursor, N * dim);
    g->xf = take(base, &cursor, N * dim);
    g->probs = take(base, &cursor, N * (size_t)hp->vocab_size);
    g->dx = take(base, &cursor, N * dim);
    g->dx_group_in = take(base, &cursor, N * dim);
    g->dxb = take(base, &cursor, N * dim);
    g->dq = take(base, &cursor, N * q_dim);
    g->datt = take(base, &cursor, N * q_dim);
    g->dgate = take(base, &cursor, N * hid);
    g->dup = take(base, &cursor, N * hid);
    g->dh = take(base, &cursor, N * hid);
    return cursor;
}

/* First cyclic group of the map as "first..last", for messages. */
static const xlkv_plan_step *first_cyclic_step(const xlkv_layer_map *map) {
    for (int s = 0; s < map->n_plan_steps; s++)
        if (map->plan[s].cyclic) return &map->plan[s];
    return NULL;
}

xlkv_status xlkv_train_graph_check(const xlkv_param_store *store, int batch, int seq, int forward_passes,
                                   int backward_passes) {
    const xlkv_hparams *hp = &store->hp;
    if (batch <= 0 || seq <= 0)
        return xlkv_fail(XLKV_E_INVALID, "trainer: batch (%d) and sequence length (%d) must be positive", batch, seq);
    if (seq > hp->max_seq_len)
        return xlkv_fail(XLKV_E_INVALID, "trainer: sequence length %d exceeds the model's max_position_embeddings %d",
                         seq, hp->max_seq_len);
    if ((long long)batch * seq > (1 << 26))
        return xlkv_fail(XLKV_E_INVALID, "trainer: batch x sequence = %lld tokens is too large for one micro-batch",
                         (long long)batch * seq);
    const xlkv_plan_step *cyclic = first_cyclic_step(store->map);
    if (forward_passes < 0 || backward_passes < 0)
        return xlkv_fail(XLKV_E_INVALID, "trainer: forward_passes (m = %d) and backward_passes (b = %d) must be >= 0",
                         forward_passes, backward_passes);
    if (cyclic && backward_passes < 2)
        return xlkv_fail(XLKV_E_INVALID,
                         "trainer: backward_passes (b) is %d, but the layer map has a cyclic group (layers %d..%d); "
                         "training needs b >= 2, or the W_K / W_V of the group's targets get no gradient "
                         "(SEMANTICS.md section 6)", backward_passes, cyclic->first, cyclic->last);
    return XLKV_OK;
}

xlkv_status xlkv_train_graph_create(const xlkv_param_store *store, int batch, int seq, int forward_passes,
                                    int backward_passes, xlkv_train_graph **out) {
    *out = NULL;
    XLKV_TRY(xlkv_train_graph_check(store, batch, seq, forward_passes, backward_passes));
    xlkv_train_graph *g = calloc(1, sizeof *g);
    if (!g) return xlkv_fail(XLKV_E_NOMEM, "trainer: out of memory");
    g->store = store;
    g->batch = batch;
    g->seq = seq;
    g->n_rows = batch * seq;
    g->forward_passes = forward_passes;
    g->backward_passes = backward_passes;
    g->n_records = xlkv_tape_plan(g->store->map, g->backward_passes, NULL);
    g->records = calloc((size_t)g->n_records, sizeof *g->records);
    g->scratch = calloc(1, sizeof *g->scratch);
    g->tokens = malloc((size_t)g->n_rows * sizeof *g->tokens);
    g->targets = malloc((size_t)g->n_rows * sizeof *g->targets);
    if (!g->records || !g->scratch || !g->tokens || !g->targets) {
        xlkv_train_graph_free(g);
        return xlkv_fail(XLKV_E_NOMEM, "trainer: out of memory");
    }
    xlkv_tape_plan(g->store->map, g->backward_passes, g->records);
    size_t floats = carve_all(g, NULL);
    g->arena = calloc(floats, sizeof(float));
    if (!g->arena) {
        xlkv_train_graph_free(g);
        return xlkv_fail(XLKV_E_NOMEM, "trainer: cannot allocate %.1f MiB of activations for batch %d x %d", (double)floats * 4.0 / 1048576.0, batch, seq);
    }
    carve_all(g, g->arena);
    xlkv_rope_tables_fill(g->rope_cos, g->rope_sin, g->seq, g->store->hp.head_dim, g->store->hp.rope_theta);
    *out = g;
    return XLKV_OK;
}

void xlkv_train_graph_free(xlkv_train_graph *g) {
    if (!g) return;
    free(g->records);
    free(g->scratch);
    free(g->tokens);
    free(g->targets);
    free(g->arena);
    free(g);
}

/* One decoder layer on g->x in place. With grad, `rec` is a tape record (activations saved, K/V written to the
 * record); without, the scratch record and K/V written into the constant buffers of the layer's slot. */
static void layer_forward(xlkv_train_graph *g, xlkv_layer_record *rec, int layer, bool grad, kv_source *current) {
    const xlkv_param_store *s = g->store;
    const xlkv_hparams *hp = &s->hp;
    const xlkv_layer_map *map = s->map;
    const xlkv_layer_weights *w = &s->weights.layers[layer];
    const int N = g->n_rows, dim = hp->dim, hid = hp->hidden_dim;
    const int q_dim = hp->n_heads * hp->head_dim, kv_dim = hp->n_kv_heads * hp->head_dim;
    float *x = g->x, *proj = g->dxb; /* dxb is backward scratch, free during the forward */

    if (grad) memcpy(rec->x_in, x, (size_t)N * (size_t)dim * sizeof(float));
    xlkv_train_rmsnorm_forward(rec->xb, rec->attn_inv_rms, x, w->attn_norm, N, dim, hp->norm_eps);
    xlkv_train_matmul_forward(rec->q, rec->xb, w->wq, N, dim, q_dim);
    xlkv_train_rope_forward(rec->q, N, g->seq, hp->n_heads, hp->head_dim, g->rope_cos, g->rope_sin);
    if (xlkv_is_kv_layer(map, layer)) {
        const int slot = map->kv_slot[layer];
        const size_t slot_offset = (size_t)slot * (size_t)N * (size_t)kv_dim;
        float *k = grad ? rec->k : g->const_k + slot_offset, *v = grad ? rec->v : g->const_v + slot_offset;
        xlkv_train_matmul_forward(k, rec->xb, w->wk, N, dim, kv_dim);
        xlkv_train_matmul_forward(v, rec->xb, w->wv, N, dim, kv_dim);
        xlkv_train_rope_forward(k, N, g->seq, hp->n_kv_heads, hp->head_dim, g->rope_cos, g->rope_sin);
        current[slot] = (kv_source){k, v, grad ? rec->dk : NULL, grad ? rec->dv : NULL};
        if (grad) {
            memset(rec->dk, 0, (size_t)N * (size_t)kv_dim * sizeof(float));
            memset(rec->dv, 0, (size_t)N * (size_t)kv_dim * sizeof(float));
        }
    }
    const kv_source *src = &current[xlkv_read_slot(map, layer)];
    rec->read_k = src->k;
    rec->read_v = src->v;
    rec->read_dk = src->dk;
    rec->read_dv = src->dv;
    const xlkv_train_attention_shape shape = {
        .batch = g->batch, .seq = g->seq, .n_heads = hp->n_heads, .n_kv_heads = hp->n_kv_heads,
        .head_dim = hp->head_dim, .window = map->sliding[layer] ? hp->sliding_window : 0,
        .mask_diagonal = xlkv_is_cyclic(map, layer) || hp->force_nodiag,
    };
    xlkv_train_attention_forward(rec->att, rec->lse, rec->q, src->k, src->v, &shape);
    xlkv_train_matmul_forward(proj, rec->att, w->wo, N, q_dim, dim);
    for (size_t i = 0; i < (size_t)N * (size_t)dim; i++) x[i] += proj[i];

    if (grad) memcpy(rec->x_mid, x, (size_t)N * (size_t)dim * sizeof(float));
    xlkv_train_rmsnorm_forward(rec->xb2, rec->ffn_inv_rms, x, w->ffn_norm, N, dim, hp->norm_eps);
    xlkv_train_matmul_forward(rec->gate, rec->xb2, w->w_gate, N, dim, hid);
    xlkv_train_matmul_forward(rec->up, rec->xb2, w->w_up, N, dim, hid);
    xlkv_train_swiglu_forward(rec->h, rec->gate, rec->up, (size_t)N * (size_t)hid);
    xlkv_train_matmul_forward(proj, rec->h, w->w_down, N, hid, dim);
    for (size_t i = 0; i < (size_t)N * (size_t)dim; i++) x[i] += proj[i];
}

xlkv_status xlkv_train_graph_forward(xlkv_train_graph *g, const int *tokens, const int *targets, double *out_loss) {
    const xlkv_param_store *s = g->store;
    const xlkv_hparams *hp = &s->hp;
    const xlkv_layer_map *map = s->map;
    const int N = g->n_rows, dim = hp->dim, kv_dim = hp->n_kv_heads * hp->head_dim;
    const size_t row_bytes = (size_t)N * (size_t)dim * sizeof(float);
    for (int r = 0; r < N; r++)
        if (tokens[r] < 0 || tokens[r] >= hp->vocab_size || targets[r] < 0 || targets[r] >= hp->vocab_size)
            return xlkv_fail(XLKV_E_INVALID, "trainer: token %d / target %d at row %d is outside the vocabulary [0, %d)",
                             tokens[r], targets[r], r, hp->vocab_size);
    kv_source *current = calloc((size_t)map->n_kv_layers + 1, sizeof *current);
    if (!current) return xlkv_fail(XLKV_E_NOMEM, "trainer: out of memory");
    memcpy(g->tokens, tokens, (size_t)N * sizeof *tokens);
    memcpy(g->targets, targets, (size_t)N * sizeof *targets);
    xlkv_train_embedding_forward(g->x, tokens, s->weights.tok_embeddings, N, dim);
    int r = 0;
    for (int st = 0; st < map->n_plan_steps; st++) {
        const xlkv_plan_step *step = &map->plan[st];
        if (!step->cyclic) {
            for (int layer = step->first; layer <= step->last; layer++, r++)
                layer_forward(g, &g->records[r], layer, true, current);
            continue;
        }
        memcpy(g->x_group_in, g->x, row_bytes);
        for (int j = step->first; j <= step->last; j++) { /* targets hold zeros before the first iteration */
            if (!xlkv_is_kv_layer(map, j)) continue;
            const int slot = map->kv_slot[j];
            const size_t offset = (size_t)slot * (size_t)N * (size_t)kv_dim;
            current[slot] = (kv_source){g->const_k + offset, g->const_v + offset, NULL, NULL};
            if (g->freeze_constant_kv) continue;
            memset(g->const_k + offset, 0, (size_t)N * (size_t)kv_dim * sizeof(float));
            memset(g->const_v + offset, 0, (size_t)N * (size_t)kv_dim * sizeof(float));
        }
        for (int it = g->freeze_constant_kv ? g->forward_passes : 0; it < g->forward_passes + g->backward_passes; it++) {
            const bool grad = it >= g->forward_passes;
            memcpy(g->x, g->x_group_in, row_bytes);
            for (int layer = step->first; layer <= step->last; layer++)
                layer_forward(g, grad ? &g->records[r++] : g->scratch, layer, grad, current);
        }
    }
    free(current);
    memcpy(g->x_final, g->x, row_bytes);
    xlkv_train_rmsnorm_forward(g->xf, g->final_inv_rms, g->x_final, s->weights.output_norm, N, dim, hp->norm_eps);
    xlkv_train_matmul_forward(g->probs, g->xf, s->weights.output, N, dim, hp->vocab_size);
    double total = xlkv_train_cross_entropy_forward(g->probs, targets, N, hp->vocab_size);
    *out_loss = total / (double)N;
    return XLKV_OK;
}

/* Backward of one record: g->dx holds d(output hidden states) on entry and d(input hidden states) on exit. */
static void layer_backward(xlkv_train_graph *g, xlkv_layer_record *rec) {
    const xlkv_param_store *s = g->store;
    const xlkv_hparams *hp = &s->hp;
    const xlkv_layer_map *map = s->map;
    const int layer = rec->layer;
    const xlkv_layer_weights *w = &s->weights.layers[layer];
    const xlkv_layer_weights *dw = &s->grad_weights.layers[layer];
    const int N = g->n_rows, dim = hp->dim, hid = hp->hidden_dim;
    const int q_dim = hp->n_heads * hp->head_dim, kv_dim = hp->n_kv_heads * hp->head_dim;
    const size_t n_dim = (size_t)N * (size_t)dim;

    /* MLP: x_out = x_mid + w_down . (silu(w_gate . xb2) * (w_up . xb2)), xb2 = rmsnorm(x_mid) */
    memset(g->dh, 0, (size_t)N * (size_t)hid * sizeof(float));
    xlkv_train_matmul_backward(g->dh, dw->w_down, g->dx, rec->h, w->w_down, N, hid, dim);
    xlkv_train_swiglu_backward(g->dgate, g->dup, g->dh, rec->gate, rec->up, (size_t)N * (size_t)hid);
    memset(g->dxb, 0, n_dim * sizeof(float));
    xlkv_train_matmul_backward(g->dxb, dw->w_gate, g->dgate, rec->xb2, w->w_gate, N, dim, hid);
    xlkv_train_matmul_backward(g->dxb, dw->w_up, g->dup, rec->xb2, w->w_up, N, dim, hid);
    xlkv_train_rmsnorm_backward(g->dx, dw->ffn_norm, g->dxb, rec->x_mid, rec->ffn_inv_rms, w->ffn_norm, N, dim);

    /* attention: x_mid = x_in + wo . attention(rope(wq . xb), K/V read), xb = rmsnorm(x_in) */
    memset(g->datt, 0, (size_t)N * (size_t)q_dim * sizeof(float));
    xlkv_train_matmul_backward(g->datt, dw->wo, g->dx, rec->att, w->wo, N, q_dim, dim);
    const xlkv_train_attention_shape shape = {
        .batch = g->batch, .seq = g->seq, .n_heads = hp->n_heads, .n_kv_heads = hp->n_kv_heads,
        .head_dim = hp->head_dim, .window = map->sliding[layer] ? hp->sliding_window : 0,
        .mask_diagonal = xlkv_is_cyclic(map, layer) || hp->force_nodiag,
    };
    xlkv_train_attention_backward(g->dq, rec->read_dk, rec->read_dv, g->datt, rec->att, rec->lse, rec->q, rec->read_k,
                                  rec->read_v, &shape);
    xlkv_train_rope_backward(g->dq, N, g->seq, hp->n_heads, hp->head_dim, g->rope_cos, g->rope_sin);
    memset(g->dxb, 0, n_dim * sizeof(float));
    xlkv_train_matmul_backward(g->dxb, dw->wq, g->dq, rec->xb, w->wq, N, dim, q_dim);
    if (xlkv_is_kv_layer(map, layer)) { /* every reader of this record's K/V has added its share by now */
        xlkv_train_rope_backward(rec->dk, N, g->seq, hp->n_kv_heads, hp->head_dim, g->rope_cos, g->rope_sin);
        xlkv_train_matmul_backward(g->dxb, dw->wk, rec->dk, rec->xb, w->wk, N, dim, kv_dim);
        xlkv_train_matmul_backward(g->dxb, dw->wv, rec->dv, rec->xb, w->wv, N, dim, kv_dim);
    }
    xlkv_train_rmsnorm_backward(g->dx, dw->attn_norm, g->dxb, rec->x_in, rec->attn_inv_rms, w->attn_norm, N, dim);
}

void xlkv_train_graph_backward(xlkv_train_graph *g, float loss_scale) {
    const xlkv_param_store *s = g->store;
    const xlkv_hparams *hp = &s->hp;
    const int N = g->n_rows, dim = hp->dim, vocab = hp->vocab_size;
    const size_t n_dim = (size_t)N * (size_t)dim;
    float *dlogits = g->probs; /* in place */
    xlkv_train_cross_entropy_backward(dlogits, g->probs, g->targets, N, vocab, loss_scale / (float)N);
    memset(g->dxb, 0, n_dim * sizeof(float));
    xlkv_train_matmul_backward(g->dxb, s->grad_weights.output, dlogits, g->xf, s->weights.output, N, dim, vocab);
    memset(g->dx, 0, n_dim * sizeof(float));
    xlkv_train_rmsnorm_backward(g->dx, s->grad_weights.output_norm, g->dxb, g->x_final, g->final_inv_rms,
                                s->weights.output_norm, N, dim);
    memset(g->dx_group_in, 0, n_dim * sizeof(float));
    for (int r = g->n_records - 1; r >= 0; r--) {
        xlkv_layer_record *rec = &g->records[r];
        layer_backward(g, rec);
        if (!rec->iteration_start) continue;
        /* the group's input fed every grad iteration */
        for (size_t i = 0; i < n_dim; i++) g->dx_group_in[i] += g->dx[i];
        if (rec->group_iteration == 0) {
            memcpy(g->dx, g->dx_group_in, n_dim * sizeof(float));
            memset(g->dx_group_in, 0, n_dim * sizeof(float));
        } else { /* the previous iteration's hidden output was discarded */
            memset(g->dx, 0, n_dim * sizeof(float));
        }
    }
    xlkv_train_embedding_backward(s->grad_weights.tok_embeddings, g->dx, g->tokens, N, dim);
}

void xlkv_train_graph_logits(const xlkv_train_graph *g, float *logits) {
    const xlkv_hparams *hp = &g->store->hp;
    xlkv_train_matmul_forward(logits, g->xf, g->store->weights.output, g->n_rows, hp->dim, hp->vocab_size);
}

/* Forward flops of one execution of `layer` over the batch. */
static double layer_flops(const xlkv_train_graph *g, int layer) {
    const xlkv_hparams *hp = &g->store->hp;
    const xlkv_layer_map *map = g->store->map;
    const double N = (double)g->batch * g->seq, dim = hp->dim, hid = hp->hidden_dim;
    const double q_dim = (double)hp->n_heads * hp->head_dim, kv_dim = (double)hp->n_kv_heads * hp->head_dim;
    double matmul = dim * q_dim * 2 + 3 * dim * hid + (xlkv_is_kv_layer(map, layer) ? 2 * dim * kv_dim : 0);
    double visible = map->sliding[layer] && hp->sliding_window > 0 && hp->sliding_window < g->seq
                         ? hp->sliding_window : (g->seq + 1) / 2.0;
    return 2 * N * matmul + 4 * N * visible * q_dim;
}

double xlkv_train_flops(const xlkv_param_store *store, int batch, int seq, int forward_passes, int backward_passes) {
    const xlkv_hparams *hp = &store->hp;
    const xlkv_layer_map *map = store->map;
    const xlkv_train_graph g = {.store = store, .batch = batch, .seq = seq};
    double grad_forward = 2.0 * batch * seq * (double)hp->dim * hp->vocab_size, no_grad = 0.0;
    for (int st = 0; st < map->n_plan_steps; st++) {
        const xlkv_plan_step *step = &map->plan[st];
        for (int layer = step->first; layer <= step->last; layer++) {
            grad_forward += (step->cyclic ? backward_passes : 1) * layer_flops(&g, layer);
            if (step->cyclic) no_grad += forward_passes * layer_flops(&g, layer);
        }
    }
    return 3.0 * grad_forward + no_grad;
}

double xlkv_train_flops_6n(const xlkv_param_store *store, int batch, int seq, int forward_passes, int backward_passes) {
    const xlkv_hparams *hp = &store->hp;
    const double lookup_table = hp->tied_embeddings ? 0.0 : (double)hp->vocab_size * hp->dim;
    return xlkv_train_flops(store, batch, seq, forward_passes, backward_passes) +
           6.0 * batch * seq * lookup_table;
}

double xlkv_train_graph_flops(const xlkv_train_graph *g) {
    return xlkv_train_flops(g->store, g->batch, g->seq, g->forward_passes, g->backward_passes);
}
