/* model/model: a loaded model = hyperparameters + the layer map it runs under + weights (+ its tokenizer).
 *
 * Owns format detection and the choice of layer map: an explicit map from the caller (layer_types string / preset or
 * KVSharer file) wins over the checkpoint's own `layer_types`, which wins over the standard map. Weights are loaded
 * under that map, so k_proj / v_proj of layers that are not KV layers are never read (SEMANTICS.md section 5). */
#ifndef XLKV_MODEL_MODEL_H
#define XLKV_MODEL_MODEL_H

#include "model/hparams.h"
#include "model/layer_map.h"
#include "model/tokenizer.h"
#include "model/weights.h"
#include "xlkv.h"

typedef struct xlkv_model_params {
    const char *layer_types;    /* layer_types string or preset name; NULL = the checkpoint's own map */
    const char *kv_map_path;    /* KVSharer JSON map; exclusive with layer_types */
    const char *tokenizer_path; /* tokenizer file; NULL = look beside the model (tokenizer.json, tokenizer.bin,
                                   tok<vocab>.bin); a model without one still loads (tokenizer NULL) */
    int forward_passes;         /* m override; -1 = from config (default 7) */
    int backward_passes;        /* b override; -1 = from config (default 2) */
    int sliding_window;         /* W override; -1 = from config */
    int force_nodiag;           /* -1 = from config, 0/1 override */
} xlkv_model_params;

struct xlkv_model {
    xlkv_hparams hp;
    xlkv_layer_map *map;
    xlkv_weights weights;
    xlkv_tokenizer *tokenizer; /* may be NULL */
    char *path;
};

xlkv_model_params xlkv_model_default_params(void);

/* `path` is a Hugging Face model directory (config.json + model.safetensors or model.safetensors.index.json) or a
 * llama2.c checkpoint file (.bin). */
xlkv_status xlkv_model_load(const char *path, const xlkv_model_params *params, xlkv_model **out);

/* Reads only the hyperparameters and resolves the layer map (no weights): for `xlkv layers`. */
xlkv_status xlkv_model_load_config(const char *path, const xlkv_model_params *params, xlkv_hparams *out_hp,
                                   xlkv_layer_map **out_map);

/* A model with random weights for a given shape and map (benchmarks, tests). Takes ownership of nothing. */
xlkv_status xlkv_model_create_random(const xlkv_hparams *hp, const xlkv_layer_map *map, unsigned long long seed,
                                     xlkv_model **out);

void xlkv_model_free(xlkv_model *model);

/* ---- format-specific loaders (model/load_*.c) ---- */
/* config.json -> hparams (+ its layer_types string, heap, NULL if absent). */
xlkv_status xlkv_hf_read_config(const char *config_path, xlkv_hparams *hp, char **out_layer_types);
/* The same from config.json text held in memory (`config_path` only names it in messages; the fuzzer's entry). */
xlkv_status xlkv_hf_parse_config(const char *text, size_t size, const char *config_path, xlkv_hparams *hp,
                                 char **out_layer_types);
/* model.safetensors or the sharded index in `dir` -> weights for hp under map (fp32/fp16/bf16 converted to fp32). */
xlkv_status xlkv_hf_load_weights(const char *dir, const xlkv_hparams *hp, const xlkv_layer_map *map, xlkv_weights *w);
/* llama2.c legacy checkpoint: header -> hparams; weights for hp under map (may be NULL for header only). */
xlkv_status xlkv_llama2c_read_header(const char *path, xlkv_hparams *hp);
xlkv_status xlkv_llama2c_load_weights(const char *path, const xlkv_hparams *hp, const xlkv_layer_map *map,
                                      xlkv_weights *w);

#endif
