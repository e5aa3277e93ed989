/* model/model: loading a whole model (model.h): format detection, hyperparameter overrides, the choice of layer map,
 * weights under that map, and the tokenizer found beside the checkpoint.
 *
 * Map precedence: params->layer_types (string or preset) or params->kv_map_path (KVSharer JSON; giving both is an
 * error) over the checkpoint's own layer_types (config.json) over the standard map. A map that marks sliding-window
 * layers needs a window (config sliding_window or params->sliding_window). Tokenizer: params->tokenizer_path, else the
 * first of tokenizer.json, tokenizer.bin, tok<vocab_size>.bin beside the model; none found is not an error (tokenizer
 * NULL), but one that exists and fails to load is, and so is a tokenizer with more tokens than the model's vocab. */
#include "model/model.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/file.h"
#include "core/status.h"

xlkv_model_params xlkv_model_default_params(void) {
    xlkv_model_params params = {
        .layer_types = NULL,
        .kv_map_path = NULL,
        .tokenizer_path = NULL,
        .forward_passes = -1,
        .backward_passes = -1,
        .sliding_window = -1,
        .force_nodiag = -1,
    };
    return params;
}

/* Reads the hyperparameters of `path` (directory -> HF config.json, file -> llama2.c header). */
static xlkv_status read_hparams(const char *path, int is_hf, xlkv_hparams *hp, char **config_layer_types) {
    *config_layer_types = NULL;
    if (!is_hf) return xlkv_llama2c_read_header(path, hp);
    char *config_path = xlkv_path_join(path, "config.json");
    if (!config_path) return xlkv_fail(XLKV_E_NOMEM, "%s: out of memory", path);
    xlkv_status status = xlkv_file_exists(config_path)
                             ? xlkv_hf_read_config(config_path, hp, config_layer_types)
                             : xlkv_fail(XLKV_E_IO, "%s: model directory has no config.json", path);
    free(config_path);
    return status;
}

static void apply_overrides(const xlkv_model_params *params, xlkv_hparams *hp) {
    if (params->forward_passes >= 0) hp->forward_passes = params->forward_passes;
    if (params->backward_passes >= 0) hp->backward_passes = params->backward_passes;
    if (params->sliding_window >= 0) hp->sliding_window = params->sliding_window;
    if (params->force_nodiag >= 0) hp->force_nodiag = params->force_nodiag != 0;
}

static xlkv_status choose_map(const char *path, const xlkv_model_params *params, const xlkv_hparams *hp,
                              const char *config_layer_types, xlkv_layer_map **out) {
    *out = NULL;
    xlkv_status status;
    if (params->layer_types && params->kv_map_path)
        return xlkv_fail(XLKV_E_INVALID, "%s: give either a layer map (layer_types '%s') or a KVSharer map file (%s), "
                                         "not both", path, params->layer_types, params->kv_map_path);
    if (params->layer_types) {
        status = xlkv_layer_map_parse(params->layer_types, hp->n_layers, out);
        if (status != XLKV_OK) xlkv_error_prefix("%s: layer map '%s'", path, params->layer_types);
    } else if (params->kv_map_path) {
        status = xlkv_layer_map_load_kvsharer(params->kv_map_path, hp->n_layers, out);
        if (status != XLKV_OK) xlkv_error_prefix("%s: KVSharer map", path);
    } else if (config_layer_types) {
        status = xlkv_layer_map_parse(config_layer_types, hp->n_layers, out);
        if (status != XLKV_OK) xlkv_error_prefix("%s: config.json layer_types", path);
    } else {
        status = xlkv_layer_map_standard(hp->n_layers, out);
    }
    if (status != XLKV_OK) return status;
    if (hp->sliding_window == 0)
        for (int i = 0; i < (*out)->n_layers; i++)
            if ((*out)->sliding[i]) {
                xlkv_layer_map_free(*out);
                *out = NULL;
                return xlkv_fail(XLKV_E_INVALID, "%s: the layer map makes layer %d sliding-window, but no "
                                                 "sliding_window is configured (config.json or override)", path, i);
            }
    return XLKV_OK;
}

static xlkv_status resolve(const char *path, const xlkv_model_params *params, int *is_hf, xlkv_hparams *hp,
                           xlkv_layer_map **out_map) {
    *out_map = NULL;
    if (!path) return xlkv_fail(XLKV_E_INVALID, "no model path given");
    if (!xlkv_file_exists(path)) return xlkv_fail(XLKV_E_IO, "%s: no such file or directory", path);
    *is_hf = xlkv_is_directory(path);
    char *config_layer_types = NULL;
    XLKV_TRY(read_hparams(path, *is_hf, hp, &config_layer_types));
    apply_overrides(params, hp);
    xlkv_status status = xlkv_hparams_validate(hp, path);
    if (status == XLKV_OK) status = choose_map(path, params, hp, config_layer_types, out_map);
    free(config_layer_types);
    return status;
}

xlkv_status xlkv_model_load_config(const char *path, const xlkv_model_params *params, xlkv_hparams *out_hp,
                                   xlkv_layer_map **out_map) {
    xlkv_model_params defaults = xlkv_model_default_params();
    int is_hf = 0;
    return resolve(path, params ? params : &defaults, &is_hf, out_hp, out_map);
}

/* Directory holding `path` (the path itself when it is a directory); heap. */
static char *model_folder(const char *path, int is_hf) {
    if (is_hf) return strdup(path);
    const char *slash = strrchr(path, '/');
    if (!slash) return strdup(".");
    size_t n = (size_t)(slash - path);
    char *dir = malloc(n + 2);
    if (!dir) return NULL;
    memcpy(dir, path, n ? n : 1); /* "/model.bin" -> "/" */
    dir[n ? n : 1] = '\0';
    return dir;
}

/* First existing tokenizer file beside the model, or NULL in *out_path. */
static xlkv_status find_tokenizer(const char *path, int is_hf, int vocab_size, char **out_path) {
    *out_path = NULL;
    char *folder = model_folder(path, is_hf);
    if (!folder) return xlkv_fail(XLKV_E_NOMEM, "%s: out of memory", path);
    char numbered[32];
    snprintf(numbered, sizeof numbered, "tok%d.bin", vocab_size);
    const char *candidates[] = {"tokenizer.json", "tokenizer.bin", numbered};
    for (size_t i = 0; i < sizeof candidates / sizeof candidates[0] && !*out_path; i++) {
        char *candidate = xlkv_path_join(folder, candidates[i]);
        if (!candidate) {
            free(folder);
            return xlkv_fail(XLKV_E_NOMEM, "%s: out of memory", path);
        }
        if (xlkv_file_exists(candidate))
            *out_path = candidate;
        else
            free(candidate);
    }
    free(folder);
    return XLKV_OK;
}

static xlkv_status load_tokenizer(xlkv_model *model, const xlkv_model_params *params, int is_hf) {
    char *found = NULL;
    if (!params->tokenizer_path) XLKV_TRY(find_tokenizer(model->path, is_hf, model->hp.vocab_size, &found));
    const char *tokenizer_path = params->tokenizer_path ? params->tokenizer_path : found;
    xlkv_status status = XLKV_OK;
    if (tokenizer_path) {
        status = xlkv_tokenizer_load(tokenizer_path, &model->tokenizer);
        if (status != XLKV_OK) {
            xlkv_error_prefix("tokenizer of %s", model->path);
        } else if (xlkv_tokenizer_n_vocab(model->tokenizer) > model->hp.vocab_size) {
            status = xlkv_fail(XLKV_E_FORMAT, "%s: tokenizer has %d tokens, more than the model's vocab_size %d (%s)",
                               tokenizer_path, xlkv_tokenizer_n_vocab(model->tokenizer), model->hp.vocab_size,
                               model->path);
        }
    }
    free(found);
    return status;
}

xlkv_status xlkv_model_load(const char *path, const xlkv_model_params *params, xlkv_model **out) {
    *out = NULL;
    xlkv_model_params defaults = xlkv_model_default_params();
    if (!params) params = &defaults;
    xlkv_model *model = calloc(1, sizeof *model);
    if (!model) return xlkv_fail(XLKV_E_NOMEM, "%s: out of memory", path ? path : "model");
    int is_hf = 0;
    xlkv_status status = resolve(path, params, &is_hf, &model->hp, &model->map);
    if (status == XLKV_OK) {
        model->path = strdup(path);
        if (!model->path) status = xlkv_fail(XLKV_E_NOMEM, "%s: out of memory", path);
    }
    if (status == XLKV_OK)
        status = is_hf ? xlkv_hf_load_weights(path, &model->hp, model->map, &model->weights)
                       : xlkv_llama2c_load_weights(path, &model->hp, model->map, &model->weights);
    if (status == XLKV_OK) status = load_tokenizer(model, params, is_hf);
    if (status != XLKV_OK) {
        xlkv_model_free(model);
        return status;
    }
    *out = model;
    return XLKV_OK;
}

xlkv_status xlkv_model_create_random(const xlkv_hparams *hp, const xlkv_layer_map *map, unsigned long long seed,
                                     xlkv_model **out) {
    *out = NULL;
    XLKV_TRY(xlkv_hparams_validate(hp, "random model"));
    if (map && map->n_layers != hp->n_layers)
        return xlkv_fail(XLKV_E_INVALID, "random model: layer map has %d layers, hparams %d", map->n_layers,
                         hp->n_layers);
    xlkv_model *model = calloc(1, sizeof *model);
    if (!model) return xlkv_fail(XLKV_E_NOMEM, "random model: out of memory");
    model->hp = *hp;
    xlkv_status status = XLKV_OK;
    if (map) {
        model->map = xlkv_layer_map_clone(map);
        if (!model->map) status = xlkv_fail(XLKV_E_NOMEM, "random model: cannot copy the layer map");
    } else {
        status = xlkv_layer_map_standard(hp->n_layers, &model->map);
    }
    if (status == XLKV_OK) status = xlkv_weights_alloc_all(&model->weights, hp, model->map);
    if (status != XLKV_OK) {
        xlkv_model_free(model);
        return status;
    }
    /* std 1/sqrt(dim): projections of unit-RMS activations stay O(1), so logits are neither flat nor saturated */
    xlkv_weights_randomize(&model->weights, hp, seed, (float)(1.0 / sqrt((double)hp->dim)));
    *out = model;
    return XLKV_OK;
}

void xlkv_model_free(xlkv_model *model) {
    if (!model) return;
    xlkv_weights_free(&model->weights);
    xlkv_layer_map_free(model->map);
    xlkv_tokenizer_free(model->tokenizer);
    free(model->path);
    free(model);
}
