/* train/param_store: see param_store.h. */
#include "train/param_store.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/status.h"
#include "train/rng.h"

/* Appends a tensor to the table and returns its offset (layout building pass). */
static size_t add_tensor(xlkv_param_store *s, size_t *cursor, const char *name, int rows, int cols,
                         xlkv_param_kind kind, int rope_heads, int layer) {
    xlkv_param_tensor *t = &s->tensors[s->n_tensors++];
    snprintf(t->name, sizeof t->name, "%s", name);
    t->offset = *cursor;
    t->rows = rows;
    t->cols = cols;
    t->kind = kind;
    t->rope_heads = rope_heads;
    t->layer = layer;
    *cursor += (size_t)rows * (size_t)(cols ? cols : 1);
    return t->offset;
}

/* Builds the tensor table; offsets only (pointers are carved afterwards, once the buffers exist). */
static void build_layout(xlkv_param_store *s) {
    const xlkv_hparams *hp = &s->hp;
    const int dim = hp->dim, hid = hp->hidden_dim, vocab = hp->vocab_size;
    const int q_dim = hp->n_heads * hp->head_dim, kv_dim = hp->n_kv_heads * hp->head_dim;
    size_t cursor = 0;
    char name[64];
    s->n_tensors = 0;
    add_tensor(s, &cursor, "model.embed_tokens.weight", vocab, dim, XLKV_PARAM_EMBEDDING, 0, -1);
    for (int l = 0; l < hp->n_layers; l++) {
#define LAYER_TENSOR(suffix, rows, cols, kind, heads)                                                                  \
    snprintf(name, sizeof name, "model.layers.%d.%s.weight", l, suffix);                                               \
    add_tensor(s, &cursor, name, rows, cols, kind, heads, l)
        LAYER_TENSOR("input_layernorm", dim, 0, XLKV_PARAM_NORM, 0);
        LAYER_TENSOR("self_attn.q_proj", q_dim, dim, XLKV_PARAM_MATRIX, hp->n_heads);
        if (xlkv_is_kv_layer(s->map, l)) {
            LAYER_TENSOR("self_attn.k_proj", kv_dim, dim, XLKV_PARAM_MATRIX, hp->n_kv_heads);
            LAYER_TENSOR("self_attn.v_proj", kv_dim, dim, XLKV_PARAM_MATRIX, 0);
        }
        LAYER_TENSOR("self_attn.o_proj", dim, q_dim, XLKV_PARAM_MATRIX, 0);
        LAYER_TENSOR("post_attention_layernorm", dim, 0, XLKV_PARAM_NORM, 0);
        LAYER_TENSOR("mlp.gate_proj", hid, dim, XLKV_PARAM_MATRIX, 0);
        LAYER_TENSOR("mlp.up_proj", hid, dim, XLKV_PARAM_MATRIX, 0);
        LAYER_TENSOR("mlp.down_proj", dim, hid, XLKV_PARAM_MATRIX, 0);
#undef LAYER_TENSOR
    }
    add_tensor(s, &cursor, "model.norm.weight", dim, 0, XLKV_PARAM_NORM, 0, -1);
    if (!hp->tied_embeddings) add_tensor(s, &cursor, "lm_head.weight", vocab, dim, XLKV_PARAM_MATRIX, 0, -1);
    s->n_params = cursor;
}

/* Points the named fields of `w` into `base` following the tensor table (same order as build_layout). */
static void carve(const xlkv_param_store *s, float *base, xlkv_weights *w) {
    int t = 0;
    w->tok_embeddings = base + s->tensors[t++].offset;
    for (int l = 0; l < s->hp.n_layers; l++) {
        xlkv_layer_weights *lw = &w->layers[l];
        lw->attn_norm = base + s->tensors[t++].offset;
        lw->wq = base + s->tensors[t++].offset;
        if (xlkv_is_kv_layer(s->map, l)) {
            lw->wk = base + s->tensors[t++].offset;
            lw->wv = base + s->tensors[t++].offset;
        } else {
            lw->wk = lw->wv = NULL;
        }
        lw->wo = base + s->tensors[t++].offset;
        lw->ffn_norm = base + s->tensors[t++].offset;
        lw->w_gate = base + s->tensors[t++].offset;
        lw->w_up = base + s->tensors[t++].offset;
        lw->w_down = base + s->tensors[t++].offset;
    }
    w->output_norm = base + s->tensors[t++].offset;
    w->output = s->hp.tied_embeddings ? w->tok_embeddings : base + s->tensors[t++].offset;
}

xlkv_status xlkv_param_store_create(const xlkv_hparams *hp, const xlkv_layer_map *map, xlkv_param_store **out) {
    *out = NULL;
    XLKV_TRY(xlkv_hparams_validate(hp, "trainer"));
    if (!map || map->n_layers != hp->n_layers)
        return xlkv_fail(XLKV_E_INVALID, "trainer: the layer map has %d layers, the model %d", map ? map->n_layers : 0,
                         hp->n_layers);
    xlkv_param_store *s = calloc(1, sizeof *s);
    if (!s) return xlkv_fail(XLKV_E_NOMEM, "trainer: out of memory");
    s->hp = *hp;
    s->map = xlkv_layer_map_clone(map);
    s->tensors = calloc((size_t)hp->n_layers * 9 + 3, sizeof *s->tensors);
    s->weights.layers = calloc((size_t)hp->n_layers, sizeof *s->weights.layers);
    s->grad_weights.layers = calloc((size_t)hp->n_layers, sizeof *s->grad_weights.layers);
    if (!s->map || !s->tensors || !s->weights.layers || !s->grad_weights.layers) {
        xlkv_param_store_free(s);
        return xlkv_fail(XLKV_E_NOMEM, "trainer: out of memory");
    }
    build_layout(s);
    s->params = calloc(s->n_params, sizeof(float));
    s->grads = calloc(s->n_params, sizeof(float));
    s->adam_m = calloc(s->n_params, sizeof(float));
    s->adam_v = calloc(s->n_params, sizeof(float));
    if (!s->params || !s->grads || !s->adam_m || !s->adam_v) {
        size_t n = s->n_params;
        xlkv_param_store_free(s);
        return xlkv_fail(XLKV_E_NOMEM, "trainer: cannot allocate 4 x %zu floats for parameters, gradients, moments", n);
    }
    s->weights.n_layers = s->grad_weights.n_layers = hp->n_layers;
    carve(s, s->params, &s->weights);
    carve(s, s->grads, &s->grad_weights);
    s->model.hp = s->hp;
    s->model.map = s->map;
    s->model.weights = s->weights;
    *out = s;
    return XLKV_OK;
}

void xlkv_param_store_free(xlkv_param_store *s) {
    if (!s) return;
    xlkv_layer_map_free(s->map);
    free(s->tensors);
    free(s->weights.layers);
    free(s->grad_weights.layers);
    free(s->params);
    free(s->grads);
    free(s->adam_m);
    free(s->adam_v);
    free(s);
}

void xlkv_param_store_init_random(xlkv_param_store *s, unsigned long long seed) {
    xlkv_rng g = {.state = seed};
    const double std = 0.02, residual_std = 0.02 / sqrt(2.0 * (double)s->hp.n_layers);
    for (int t = 0; t < s->n_tensors; t++) {
        const xlkv_param_tensor *tensor = &s->tensors[t];
        float *p = s->params + tensor->offset;
        size_t n = (size_t)tensor->rows * (size_t)(tensor->cols ? tensor->cols : 1);
        if (tensor->kind == XLKV_PARAM_NORM) {
            for (size_t i = 0; i < n; i++) p[i] = 1.0f;
            continue;
        }
        int residual = strstr(tensor->name, "o_proj") || strstr(tensor->name, "down_proj");
        double sd = residual ? residual_std : std;
        for (size_t i = 0; i < n; i++) p[i] = (float)(sd * xlkv_rng_normal(&g));
    }
}

static xlkv_status copy_kv(xlkv_param_store *s, const xlkv_weights *src, xlkv_kv_init kv_init, int j) {
    const size_t kv_floats = (size_t)s->hp.n_kv_heads * (size_t)s->hp.head_dim * (size_t)s->hp.dim;
    xlkv_layer_weights *dst = &s->weights.layers[j];
    if (kv_init == XLKV_KV_INIT_COPY) {
        if (!src->layers[j].wk || !src->layers[j].wv)
            return xlkv_fail(XLKV_E_INVALID, "kv init copy: the source has no k_proj / v_proj for KV layer %d", j);
        memcpy(dst->wk, src->layers[j].wk, kv_floats * sizeof(float));
        memcpy(dst->wv, src->layers[j].wv, kv_floats * sizeof(float));
        return XLKV_OK;
    }
    /* average in double over the readers of j, in layer order (deterministic) */
    double *sum_k = calloc(2 * kv_floats, sizeof *sum_k);
    if (!sum_k) return xlkv_fail(XLKV_E_NOMEM, "kv init average: out of memory");
    double *sum_v = sum_k + kv_floats;
    int readers = 0;
    for (int i = 0; i < s->hp.n_layers; i++) {
        if (s->map->kv_src[i] != j) continue;
        if (!src->layers[i].wk || !src->layers[i].wv) {
            free(sum_k);
            return xlkv_fail(XLKV_E_INVALID, "kv init average: the source has no k_proj / v_proj for layer %d, which "
                                             "reads KV layer %d (load the source under the standard map)", i, j);
        }
        for (size_t e = 0; e < kv_floats; e++) {
            sum_k[e] += src->layers[i].wk[e];
            sum_v[e] += src->layers[i].wv[e];
        }
        readers++;
    }
    for (size_t e = 0; e < kv_floats; e++) {
        dst->wk[e] = (float)(sum_k[e] / readers);
        dst->wv[e] = (float)(sum_v[e] / readers);
    }
    free(sum_k);
    return XLKV_OK;
}

xlkv_status xlkv_param_store_copy_weights(xlkv_param_store *s, const xlkv_weights *src, xlkv_kv_init kv_init) {
    const xlkv_hparams *hp = &s->hp;
    const size_t dim = (size_t)hp->dim, hid = (size_t)hp->hidden_dim, vocab = (size_t)hp->vocab_size;
    const size_t q_dim = (size_t)hp->n_heads * (size_t)hp->head_dim;
    if (src->n_layers != hp->n_layers)
        return xlkv_fail(XLKV_E_INVALID, "init: the source has %d layers, the model %d", src->n_layers, hp->n_layers);
    xlkv_weights *w = &s->weights;
#define COPY(dst, from, count) memcpy((dst), (from), (count) * sizeof(float))
    COPY(w->tok_embeddings, src->tok_embeddings, vocab * dim);
    for (int l = 0; l < hp->n_layers; l++) {
        const xlkv_layer_weights *a = &src->layers[l];
        xlkv_layer_weights *b = &w->layers[l];
        COPY(b->attn_norm, a->attn_norm, dim);
        COPY(b->wq, a->wq, q_dim * dim);
        COPY(b->wo, a->wo, dim * q_dim);
        COPY(b->ffn_norm, a->ffn_norm, dim);
        COPY(b->w_gate, a->w_gate, hid * dim);
        COPY(b->w_up, a->w_up, hid * dim);
        COPY(b->w_down, a->w_down, dim * hid);
        if (xlkv_is_kv_layer(s->map, l)) XLKV_TRY(copy_kv(s, src, kv_init, l));
    }
    COPY(w->output_norm, src->output_norm, dim);
    if (!hp->tied_embeddings) COPY(w->output, src->output, vocab * dim);
#undef COPY
    return XLKV_OK;
}

const xlkv_param_tensor *xlkv_param_store_tensor_of(const xlkv_param_store *s, size_t index) {
    for (int t = 0; t < s->n_tensors; t++) {
        const xlkv_param_tensor *tensor = &s->tensors[t];
        size_t n = (size_t)tensor->rows * (size_t)(tensor->cols ? tensor->cols : 1);
        if (index >= tensor->offset && index < tensor->offset + n) return tensor;
    }
    return NULL;
}
