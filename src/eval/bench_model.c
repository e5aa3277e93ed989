/* eval/bench_model: random-weight benchmark models and map views (bench_model.h). */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "core/status.h"
#include "eval/bench_model.h"
#include "model/weights.h"

/* The shapes of BENCHMARKS.md (`tinyllama`, `small`), or a tiny one for checks on the cpu. */
bool xlkv_bench_shape_hparams(const char *shape, xlkv_hparams *hp) {
    xlkv_hparams_defaults(hp);
    hp->n_layers = 22;
    hp->max_seq_len = 4096; /* 2048 + 2048 */
    hp->sliding_window = 1024; /* yoco's standalone layers (YOCO's setting); unused by maps without sliding layers */
    if (!strcmp(shape, "tinyllama")) {
        hp->dim = 2048;
        hp->hidden_dim = 5632;
        hp->n_heads = 32;
        hp->n_kv_heads = 4;
        hp->head_dim = 64;
        hp->vocab_size = 32000;
        return true;
    }
    if (!strcmp(shape, "small")) {
        hp->n_layers = 12;
        hp->dim = 768;
        hp->hidden_dim = 2048;
        hp->n_heads = 12;
        hp->n_kv_heads = 6;
        hp->head_dim = 64;
        hp->vocab_size = 32000;
        return true;
    }
    if (!strcmp(shape, "tiny")) {
        hp->dim = 64;
        hp->hidden_dim = 128;
        hp->n_heads = 4;
        hp->n_kv_heads = 2;
        hp->head_dim = 16;
        hp->vocab_size = 256;
        hp->sliding_window = 16;
        return true;
    }
    return false;
}

/* x[i] = center + half_width * U(-1, 1), counter-based (splitmix64 of stream and index), so threads need no shared
 * state: xlkv_weights_randomize draws normals one at a time, which takes ~30 s for 1.1 B parameters. */
static void fill_uniform(float *x, size_t n, uint64_t stream, float center, float half_width) {
    if (!x) return;
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++) {
        uint64_t z = stream * 0x9E3779B97F4A7C15ull + i;
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
        z ^= z >> 31;
        const float u = (float)(z >> 40) * (1.0f / 16777216.0f); /* [0, 1) */
        x[i] = center + half_width * (2.0f * u - 1.0f);
    }
}

/* Random weights for the standard map, std 1/sqrt(dim) as xlkv_model_create_random, drawn in parallel. Speed does
 * not depend on the values; the distribution (uniform of the same variance) keeps activations O(1) the same way. */
xlkv_status xlkv_bench_random_model(const xlkv_hparams *hp, xlkv_model **out) {
    *out = NULL;
    XLKV_TRY(xlkv_hparams_validate(hp, "bench model"));
    xlkv_model *m = calloc(1, sizeof *m);
    if (!m) return xlkv_fail(XLKV_E_NOMEM, "bench model: out of memory");
    m->hp = *hp;
    xlkv_status status = xlkv_layer_map_standard(hp->n_layers, &m->map);
    if (status == XLKV_OK) status = xlkv_weights_alloc_all(&m->weights, hp, m->map);
    if (status != XLKV_OK) {
        xlkv_model_free(m);
        return status;
    }
    const size_t dim = (size_t)hp->dim, hidden = (size_t)hp->hidden_dim, vocab = (size_t)hp->vocab_size;
    const size_t q_dim = (size_t)hp->n_heads * (size_t)hp->head_dim;
    const size_t kv_dim = (size_t)hp->n_kv_heads * (size_t)hp->head_dim;
    const float width = sqrtf(3.0f / (float)hp->dim), norm_width = 0.1f * sqrtf(3.0f);
    xlkv_weights *w = &m->weights;
    uint64_t stream = 1;
    fill_uniform(w->tok_embeddings, vocab * dim, stream++, 0.0f, width);
    for (int l = 0; l < hp->n_layers; l++) {
        xlkv_layer_weights *lw = &w->layers[l];
        fill_uniform(lw->attn_norm, dim, stream++, 1.0f, norm_width);
        fill_uniform(lw->wq, q_dim * dim, stream++, 0.0f, width);
        fill_uniform(lw->wk, kv_dim * dim, stream++, 0.0f, width);
        fill_uniform(lw->wv, kv_dim * dim, stream++, 0.0f, width);
        fill_uniform(lw->wo, dim * q_dim, stream++, 0.0f, width);
        fill_uniform(lw->ffn_norm, dim, stream++, 1.0f, norm_width);
        fill_uniform(lw->w_gate, hidden * dim, stream++, 0.0f, width);
        fill_uniform(lw->w_up, hidden * dim, stream++, 0.0f, width);
        fill_uniform(lw->w_down, dim * hidden, stream++, 0.0f, width);
    }
    fill_uniform(w->output_norm, dim, stream++, 1.0f, norm_width);
    if (w->output != w->tok_embeddings) fill_uniform(w->output, vocab * dim, stream++, 0.0f, width);
    *out = m;
    return XLKV_OK;
}

/* The same weights under another map: a model whose non-KV layers have no K/V projections (as a loader would give),
 * sharing the tensors of `base` (the standard map's). Freed with xlkv_bench_map_view_free. */
xlkv_status xlkv_bench_map_view(const xlkv_model *base, const char *map_text, xlkv_model *view) {
    memset(view, 0, sizeof *view);
    view->hp = base->hp;
    view->weights = base->weights;
    view->weights.buffers = NULL;
    view->weights.n_buffers = view->weights.cap_buffers = 0;
    view->weights.layers = NULL;
    XLKV_TRY(xlkv_layer_map_parse(map_text, base->hp.n_layers, &view->map));
    view->weights.layers = malloc((size_t)base->hp.n_layers * sizeof *view->weights.layers);
    if (!view->weights.layers) {
        xlkv_layer_map_free(view->map);
        return xlkv_fail(XLKV_E_NOMEM, "bench: out of memory");
    }
    for (int l = 0; l < base->hp.n_layers; l++) {
        view->weights.layers[l] = base->weights.layers[l];
        if (!xlkv_is_kv_layer(view->map, l)) view->weights.layers[l].wk = view->weights.layers[l].wv = NULL;
    }
    return XLKV_OK;
}

void xlkv_bench_map_view_free(xlkv_model *view) {
    free(view->weights.layers);
    xlkv_layer_map_free(view->map);
    memset(view, 0, sizeof *view);
}
