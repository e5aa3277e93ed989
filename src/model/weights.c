/* model/weights: allocation, seeded random initialisation and release of a model's fp32 parameters (weights.h).
 *
 * Random weights come from splitmix64 (a 64-bit counter hashed per draw) turned into normal variates by Box-Muller,
 * so a given (shape, map, seed, std) always produces the same bits on every machine. Tensors are filled in a fixed
 * order (embeddings, then each layer's tensors in struct order, then final norm, then the untied output). */
#include "model/weights.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "core/status.h"

float *xlkv_weights_alloc(xlkv_weights *w, size_t n, const char *what) {
    if (n == 0 || n > SIZE_MAX / sizeof(float)) {
        xlkv_fail(XLKV_E_INVALID, "tensor %s: invalid element count %zu", what, n);
        return NULL;
    }
    if (w->n_buffers == w->cap_buffers) {
        size_t cap = w->cap_buffers ? 2 * w->cap_buffers : 16;
        float **grown = realloc(w->buffers, cap * sizeof *grown);
        if (!grown) {
            xlkv_fail(XLKV_E_NOMEM, "tensor %s: cannot grow the buffer list", what);
            return NULL;
        }
        w->buffers = grown;
        w->cap_buffers = cap;
    }
    float *data = calloc(n, sizeof(float));
    if (!data) {
        xlkv_fail(XLKV_E_NOMEM, "tensor %s: cannot allocate %zu floats", what, n);
        return NULL;
    }
    w->buffers[w->n_buffers++] = data;
    return data;
}

#define XLKV_ALLOC_OR_FAIL(dst, count, what)                                                                           \
    do {                                                                                                               \
        (dst) = xlkv_weights_alloc(w, (count), (what));                                                                \
        if (!(dst)) goto fail;                                                                                         \
    } while (0)

xlkv_status xlkv_weights_alloc_all(xlkv_weights *w, const xlkv_hparams *hp, const xlkv_layer_map *map) {
    memset(w, 0, sizeof *w);
    if (map && map->n_layers != hp->n_layers)
        return xlkv_fail(XLKV_E_INVALID, "layer map has %d layers, model has %d", map->n_layers, hp->n_layers);
    size_t dim = (size_t)hp->dim, hidden = (size_t)hp->hidden_dim, vocab = (size_t)hp->vocab_size;
    size_t q_dim = (size_t)hp->n_heads * (size_t)hp->head_dim, kv_dim = (size_t)hp->n_kv_heads * (size_t)hp->head_dim;
    w->layers = calloc((size_t)hp->n_layers, sizeof *w->layers);
    if (!w->layers) return xlkv_fail(XLKV_E_NOMEM, "cannot allocate %d layer records", hp->n_layers);
    w->n_layers = hp->n_layers;
    XLKV_ALLOC_OR_FAIL(w->tok_embeddings, vocab * dim, "tok_embeddings");
    for (int l = 0; l < hp->n_layers; l++) {
        xlkv_layer_weights *lw = &w->layers[l];
        XLKV_ALLOC_OR_FAIL(lw->attn_norm, dim, "attn_norm");
        XLKV_ALLOC_OR_FAIL(lw->wq, q_dim * dim, "wq");
        if (!map || xlkv_is_kv_layer(map, l)) {
            XLKV_ALLOC_OR_FAIL(lw->wk, kv_dim * dim, "wk");
            XLKV_ALLOC_OR_FAIL(lw->wv, kv_dim * dim, "wv");
        }
        XLKV_ALLOC_OR_FAIL(lw->wo, dim * q_dim, "wo");
        XLKV_ALLOC_OR_FAIL(lw->ffn_norm, dim, "ffn_norm");
        XLKV_ALLOC_OR_FAIL(lw->w_gate, hidden * dim, "w_gate");
        XLKV_ALLOC_OR_FAIL(lw->w_up, hidden * dim, "w_up");
        XLKV_ALLOC_OR_FAIL(lw->w_down, dim * hidden, "w_down");
    }
    XLKV_ALLOC_OR_FAIL(w->output_norm, dim, "output_norm");
    if (hp->tied_embeddings)
        w->output = w->tok_embeddings;
    else
        XLKV_ALLOC_OR_FAIL(w->output, vocab * dim, "output");
    return XLKV_OK;
fail:
    xlkv_weights_free(w);
    return XLKV_E_NOMEM;
}

#undef XLKV_ALLOC_OR_FAIL

/* splitmix64: a tiny, well-mixed, seedable generator (Steele, Lea, Flood 2014). */
typedef struct normal_generator {
    uint64_t state;
    double spare;
    int has_spare;
} normal_generator;

static uint64_t splitmix64_next(normal_generator *g) {
    uint64_t z = (g->state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* Uniform in (0, 1]: 53 random bits, never 0 so that log() is finite. */
static double uniform_open0(normal_generator *g) { return ((double)(splitmix64_next(g) >> 11) + 1.0) * 0x1.0p-53; }

static double standard_normal(normal_generator *g) {
    if (g->has_spare) {
        g->has_spare = 0;
        return g->spare;
    }
    double radius = sqrt(-2.0 * log(uniform_open0(g)));
    double angle = 2.0 * 3.14159265358979323846 * uniform_open0(g);
    g->spare = radius * sin(angle);
    g->has_spare = 1;
    return radius * cos(angle);
}

static void fill_normal(normal_generator *g, float *dst, size_t n, double mean, double std) {
    if (!dst) return;
    for (size_t i = 0; i < n; i++) dst[i] = (float)(mean + std * standard_normal(g));
}

void xlkv_weights_randomize(xlkv_weights *w, const xlkv_hparams *hp, unsigned long long seed, float std) {
    normal_generator g = {.state = seed};
    size_t dim = (size_t)hp->dim, hidden = (size_t)hp->hidden_dim, vocab = (size_t)hp->vocab_size;
    size_t q_dim = (size_t)hp->n_heads * (size_t)hp->head_dim, kv_dim = (size_t)hp->n_kv_heads * (size_t)hp->head_dim;
    fill_normal(&g, w->tok_embeddings, vocab * dim, 0.0, std);
    for (int l = 0; l < w->n_layers; l++) {
        xlkv_layer_weights *lw = &w->layers[l];
        fill_normal(&g, lw->attn_norm, dim, 1.0, 0.1);
        fill_normal(&g, lw->wq, q_dim * dim, 0.0, std);
        fill_normal(&g, lw->wk, kv_dim * dim, 0.0, std);
        fill_normal(&g, lw->wv, kv_dim * dim, 0.0, std);
        fill_normal(&g, lw->wo, dim * q_dim, 0.0, std);
        fill_normal(&g, lw->ffn_norm, dim, 1.0, 0.1);
        fill_normal(&g, lw->w_gate, hidden * dim, 0.0, std);
        fill_normal(&g, lw->w_up, hidden * dim, 0.0, std);
        fill_normal(&g, lw->w_down, dim * hidden, 0.0, std);
    }
    fill_normal(&g, w->output_norm, dim, 1.0, 0.1);
    if (w->output != w->tok_embeddings) fill_normal(&g, w->output, vocab * dim, 0.0, std);
}

void xlkv_weights_free(xlkv_weights *w) {
    if (!w) return;
    for (size_t i = 0; i < w->n_buffers; i++) free(w->buffers[i]);
    free(w->buffers);
    free(w->layers);
    memset(w, 0, sizeof *w);
}
