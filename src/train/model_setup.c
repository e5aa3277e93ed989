/* train/model_setup: see model_setup.h. */
#define _DEFAULT_SOURCE
#include "train/model_setup.h"

#include <dirent.h>
#include <stdlib.h>
#include <string.h>

#include "core/file.h"
#include "core/status.h"

xlkv_status xlkv_train_shape(const char *name, int vocab_size, xlkv_hparams *hp) {
    xlkv_hparams_defaults(hp);
    hp->vocab_size = vocab_size;
    hp->tied_embeddings = true;
    if (!strcmp(name, "tiny")) {
        hp->dim = 64, hp->hidden_dim = 176, hp->n_layers = 4, hp->n_heads = 4, hp->n_kv_heads = 2;
        hp->max_seq_len = 256;
    } else if (!strcmp(name, "default")) { /* the project's default models (models/), trained on the GPU */
        hp->dim = 512, hp->hidden_dim = 1376, hp->n_layers = 8, hp->n_heads = 8, hp->n_kv_heads = 4;
        hp->max_seq_len = 512;
    } else if (!strcmp(name, "small")) {
        hp->dim = 768, hp->hidden_dim = 2048, hp->n_layers = 12, hp->n_heads = 12, hp->n_kv_heads = 6;
        hp->max_seq_len = 1024;
    } else {
        return xlkv_fail(XLKV_E_INVALID, "unknown model shape '%s' (known: tiny, default, small)", name);
    }
    hp->head_dim = hp->dim / hp->n_heads;
    return xlkv_hparams_validate(hp, name);
}

void xlkv_apply_train_overrides(xlkv_hparams *hp, const xlkv_train_overrides *o) {
    if (!o) return;
    if (o->forward_passes >= 0) hp->forward_passes = o->forward_passes;
    if (o->backward_passes >= 0) hp->backward_passes = o->backward_passes;
    if (o->sliding_window >= 0) hp->sliding_window = o->sliding_window;
    if (o->force_nodiag >= 0) hp->force_nodiag = o->force_nodiag != 0;
}

static xlkv_status parse_map(const char *layer_types, int n_layers, const xlkv_hparams *hp, xlkv_layer_map **out) {
    XLKV_TRY(layer_types ? xlkv_layer_map_parse(layer_types, n_layers, out) : xlkv_layer_map_standard(n_layers, out));
    for (int i = 0; i < n_layers; i++)
        if ((*out)->sliding[i] && hp->sliding_window <= 0) {
            xlkv_layer_map_free(*out);
            *out = NULL;
            return xlkv_fail(XLKV_E_INVALID, "layer map '%s' makes layer %d sliding-window, but no sliding window is "
                                             "set (--sliding-window W)", layer_types, i);
        }
    return XLKV_OK;
}

xlkv_status xlkv_store_from_shape(const xlkv_hparams *hp, const char *layer_types, unsigned long long seed,
                                  xlkv_param_store **out) {
    *out = NULL;
    xlkv_layer_map *map = NULL;
    XLKV_TRY(parse_map(layer_types, hp->n_layers, hp, &map));
    xlkv_status status = xlkv_param_store_create(hp, map, out);
    xlkv_layer_map_free(map);
    if (status == XLKV_OK) xlkv_param_store_init_random(*out, seed);
    return status;
}

xlkv_status xlkv_store_from_checkpoint(const char *path, const char *layer_types, xlkv_kv_init kv_init,
                                       const xlkv_train_overrides *overrides, xlkv_param_store **out) {
    *out = NULL;
    xlkv_model *source = NULL;
    xlkv_model_params params = xlkv_model_default_params();
    XLKV_TRY(xlkv_model_load(path, &params, &source));
    xlkv_hparams hp = source->hp;
    xlkv_apply_train_overrides(&hp, overrides);
    xlkv_layer_map *map = NULL;
    xlkv_status status = layer_types ? parse_map(layer_types, hp.n_layers, &hp, &map)
                                     : ((map = xlkv_layer_map_clone(source->map)) ? XLKV_OK
                                                                                 : xlkv_fail(XLKV_E_NOMEM, "out of memory"));
    if (status == XLKV_OK) status = xlkv_param_store_create(&hp, map, out);
    if (status == XLKV_OK) status = xlkv_param_store_copy_weights(*out, &source->weights, kv_init);
    if (status != XLKV_OK) {
        xlkv_error_prefix("%s", path);
        xlkv_param_store_free(*out);
        *out = NULL;
    }
    xlkv_layer_map_free(map);
    xlkv_model_free(source);
    return status;
}

char *xlkv_find_tokenizer_file(const char *path) {
    char *dir = NULL;
    if (xlkv_is_directory(path)) {
        dir = strdup(path);
    } else {
        const char *slash = strrchr(path, '/');
        dir = slash ? strndup(path, (size_t)(slash - path) + (slash == path)) : strdup(".");
    }
    if (!dir) return NULL;
    const char *fixed[] = {"tokenizer.json", "tokenizer.bin"};
    for (int i = 0; i < 2; i++) {
        char *candidate = xlkv_path_join(dir, fixed[i]);
        if (candidate && xlkv_file_exists(candidate)) {
            free(dir);
            return candidate;
        }
        free(candidate);
    }
    char *found = NULL, *best = NULL;
    DIR *d = opendir(dir);
    if (d) {
        struct dirent *entry;
        while ((entry = readdir(d))) {
            const char *name = entry->d_name;
            size_t n = strlen(name);
            if (strncmp(name, "tok", 3) || n < 8 || strcmp(name + n - 4, ".bin")) continue;
            if (!best || strcmp(name, best) < 0) {
                free(best);
                best = strdup(name);
            }
        }
        closedir(d);
    }
    if (best) found = xlkv_path_join(dir, best);
    free(best);
    free(dir);
    return found;
}
