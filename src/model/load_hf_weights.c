/* model/load_hf_weights: the tensors of a Hugging Face Llama checkpoint -> xlkv_weights, under a layer map.
 *
 * Names: model.embed_tokens.weight, model.layers.{i}.{input_layernorm, self_attn.{q,k,v,o}_proj,
 * post_attention_layernorm, mlp.{gate,up,down}_proj}.weight, model.norm.weight, lm_head.weight (absent when tied;
 * ignored when present and tied). Every shape is checked exactly; k_proj / v_proj are looked up only for the KV
 * layers of `map` (so sharing checkpoints that lack them load, and standard checkpoints run under a sharing map never
 * read them). q_proj / k_proj rows are converted from HF's half-split RoPE order to xlkv's interleaved order
 * (rope_layout.h). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/status.h"
#include "model/hf_tensors.h"
#include "model/model.h"
#include "model/rope_layout.h"

enum { TENSOR_NAME_CAPACITY = 128 };

/* Loads tensor `name` of shape [rows, cols] (cols 0 = a vector of `rows`) into dst. `why_needed` completes the
 * "missing" message. */
static xlkv_status load_tensor(const xlkv_hf_tensors *src, const char *name, int64_t rows, int64_t cols, float *dst,
                               const char *why_needed) {
    const xlkv_safetensors *file;
    const xlkv_st_tensor *tensor;
    XLKV_TRY(xlkv_hf_tensors_find(src, name, &file, &tensor));
    if (!tensor)
        return xlkv_fail(XLKV_E_FORMAT, "%s: tensor '%s' is missing%s", src->origin, name, why_needed ? why_needed : "");
    int64_t expected[2] = {rows, cols};
    int expected_dims = cols ? 2 : 1;
    int same = tensor->n_dims == expected_dims;
    for (int d = 0; same && d < expected_dims; d++) same = tensor->shape[d] == expected[d];
    if (!same) {
        char got_text[160], expected_text[64];
        return xlkv_fail(XLKV_E_FORMAT, "%s: tensor '%s' has shape %s, expected %s", file->path, name,
                         xlkv_format_shape(got_text, sizeof got_text, tensor->n_dims, tensor->shape),
                         xlkv_format_shape(expected_text, sizeof expected_text, expected_dims, expected));
    }
    return xlkv_safetensors_read_f32(file, tensor, dst, (size_t)rows * (size_t)(cols ? cols : 1));
}

static xlkv_status load_layer(const xlkv_hf_tensors *src, const xlkv_hparams *hp, const xlkv_layer_map *map, int l,
                              xlkv_layer_weights *lw) {
    char name[TENSOR_NAME_CAPACITY], why[96];
    int64_t dim = hp->dim, hidden = hp->hidden_dim;
    int64_t q_dim = (int64_t)hp->n_heads * hp->head_dim, kv_dim = (int64_t)hp->n_kv_heads * hp->head_dim;
#define XLKV_LAYER_TENSOR(suffix, rows, cols, dst, why_needed)                                                         \
    do {                                                                                                               \
        snprintf(name, sizeof name, "model.layers.%d.%s.weight", l, suffix);                                           \
        XLKV_TRY(load_tensor(src, name, rows, cols, dst, why_needed));                                                 \
    } while (0)
    XLKV_LAYER_TENSOR("input_layernorm", dim, 0, lw->attn_norm, NULL);
    XLKV_LAYER_TENSOR("self_attn.q_proj", q_dim, dim, lw->wq, NULL);
    XLKV_TRY(xlkv_rope_rows_hf_to_interleaved(lw->wq, hp->n_heads, hp->head_dim, hp->dim));
    if (xlkv_is_kv_layer(map, l)) {
        snprintf(why, sizeof why, " (layer %d is a KV layer of the layer map in use)", l);
        XLKV_LAYER_TENSOR("self_attn.k_proj", kv_dim, dim, lw->wk, why);
        XLKV_TRY(xlkv_rope_rows_hf_to_interleaved(lw->wk, hp->n_kv_heads, hp->head_dim, hp->dim));
        XLKV_LAYER_TENSOR("self_attn.v_proj", kv_dim, dim, lw->wv, why);
    }
    XLKV_LAYER_TENSOR("self_attn.o_proj", dim, q_dim, lw->wo, NULL);
    XLKV_LAYER_TENSOR("post_attention_layernorm", dim, 0, lw->ffn_norm, NULL);
    XLKV_LAYER_TENSOR("mlp.gate_proj", hidden, dim, lw->w_gate, NULL);
    XLKV_LAYER_TENSOR("mlp.up_proj", hidden, dim, lw->w_up, NULL);
    XLKV_LAYER_TENSOR("mlp.down_proj", dim, hidden, lw->w_down, NULL);
#undef XLKV_LAYER_TENSOR
    return XLKV_OK;
}

static xlkv_status load_all(const xlkv_hf_tensors *src, const xlkv_hparams *hp, const xlkv_layer_map *map,
                            xlkv_weights *w) {
    XLKV_TRY(load_tensor(src, "model.embed_tokens.weight", hp->vocab_size, hp->dim, w->tok_embeddings, NULL));
    for (int l = 0; l < hp->n_layers; l++) XLKV_TRY(load_layer(src, hp, map, l, &w->layers[l]));
    XLKV_TRY(load_tensor(src, "model.norm.weight", hp->dim, 0, w->output_norm, NULL));
    if (!hp->tied_embeddings)
        XLKV_TRY(load_tensor(src, "lm_head.weight", hp->vocab_size, hp->dim, w->output,
                             " (tie_word_embeddings is false)"));
    return XLKV_OK;
}

xlkv_status xlkv_hf_load_weights(const char *dir, const xlkv_hparams *hp, const xlkv_layer_map *map, xlkv_weights *w) {
    memset(w, 0, sizeof *w);
    if (map->n_layers != hp->n_layers)
        return xlkv_fail(XLKV_E_INVALID, "%s: layer map has %d layers, the model has %d", dir, map->n_layers,
                         hp->n_layers);
    xlkv_hf_tensors *src = NULL;
    XLKV_TRY(xlkv_hf_tensors_open(dir, &src));
    xlkv_status status = xlkv_weights_alloc_all(w, hp, map);
    if (status == XLKV_OK) status = load_all(src, hp, map, w);
    if (status != XLKV_OK) xlkv_weights_free(w);
    xlkv_hf_tensors_close(src);
    return status;
}
