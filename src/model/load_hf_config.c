/* model/load_hf_config: a Hugging Face config.json -> xlkv_hparams (+ the LCKV layer_types string).
 *
 * Reads the Llama fields and the LCKV ones (layer_types, forward_passes, backward_passes, sliding_window,
 * force_nodiag). Accepts model_type "llama" or any model_type containing "llama" or "lckv" (or, without model_type, an
 * `architectures` entry containing "Llama" / "LCKV"); refuses features xlkv does not implement (biases, activations
 * other than SiLU, RoPE scaling) instead of silently computing something else. rope_theta is read at the top level
 * (transformers 4) or inside `rope_parameters` (transformers 5). `layer_types` may be the LCKV string or the
 * transformers list of "full_attention" / "sliding_attention" (converted to "0_1s_..."). Every message names the file
 * and the field. */
#include <cjson/cJSON.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/file.h"
#include "core/status.h"
#include "model/model.h"

typedef struct config_reader {
    const cJSON *root;
    const char *path;
} config_reader;

static const char *json_type_name(const cJSON *item) {
    if (cJSON_IsNull(item)) return "null";
    if (cJSON_IsBool(item)) return "a boolean";
    if (cJSON_IsNumber(item)) return "a number";
    if (cJSON_IsString(item)) return "a string";
    if (cJSON_IsArray(item)) return "an array";
    if (cJSON_IsObject(item)) return "an object";
    return "invalid";
}

static const cJSON *field(const config_reader *c, const char *name) {
    const cJSON *item = cJSON_GetObjectItemCaseSensitive(c->root, name);
    return cJSON_IsNull(item) ? NULL : item;
}

static int as_int(const cJSON *item, int *out) {
    if (!cJSON_IsNumber(item)) return 0;
    double v = item->valuedouble;
    if (!(v >= (double)INT_MIN && v <= (double)INT_MAX) || v != floor(v)) return 0;
    *out = (int)v;
    return 1;
}

/* Absent or null fields keep *out unless required. */
static xlkv_status read_int(const config_reader *c, const char *name, int required, int *out) {
    const cJSON *item = field(c, name);
    if (!item) return required ? xlkv_fail(XLKV_E_FORMAT, "%s: required field \"%s\" is missing", c->path, name)
                               : XLKV_OK;
    if (!as_int(item, out))
        return xlkv_fail(XLKV_E_FORMAT, "%s: field \"%s\" must be an integer, got %s", c->path, name,
                         json_type_name(item));
    return XLKV_OK;
}

static xlkv_status read_float(const config_reader *c, const cJSON *item, const char *name, float *out) {
    if (!item) return XLKV_OK;
    if (!cJSON_IsNumber(item) || !isfinite(item->valuedouble))
        return xlkv_fail(XLKV_E_FORMAT, "%s: field \"%s\" must be a number, got %s", c->path, name,
                         json_type_name(item));
    *out = (float)item->valuedouble;
    return XLKV_OK;
}

static xlkv_status read_bool(const config_reader *c, const char *name, bool *out) {
    const cJSON *item = field(c, name);
    if (!item) return XLKV_OK;
    if (!cJSON_IsBool(item))
        return xlkv_fail(XLKV_E_FORMAT, "%s: field \"%s\" must be true or false, got %s", c->path, name,
                         json_type_name(item));
    *out = cJSON_IsTrue(item);
    return XLKV_OK;
}

/* bos/eos: an integer, null, or (eos in newer configs) a list whose first element is used. */
static xlkv_status read_token_id(const config_reader *c, const char *name, int *out) {
    const cJSON *item = field(c, name);
    if (!item) return XLKV_OK;
    if (cJSON_IsArray(item)) {
        if (!as_int(item->child, out))
            return xlkv_fail(XLKV_E_FORMAT, "%s: field \"%s\" must be an integer or a non-empty list of integers",
                             c->path, name);
        return XLKV_OK;
    }
    if (!as_int(item, out))
        return xlkv_fail(XLKV_E_FORMAT, "%s: field \"%s\" must be an integer, got %s", c->path, name,
                         json_type_name(item));
    return XLKV_OK;
}

static int mentions_llama(const char *text) {
    char lower[128];
    size_t n = 0;
    for (; text[n] && n + 1 < sizeof lower; n++) lower[n] = (char)((text[n] >= 'A' && text[n] <= 'Z') ? text[n] + 32 : text[n]);
    lower[n] = '\0';
    return strstr(lower, "llama") || strstr(lower, "lckv");
}

static xlkv_status check_architecture(const config_reader *c) {
    const cJSON *model_type = field(c, "model_type");
    if (model_type) {
        if (!cJSON_IsString(model_type))
            return xlkv_fail(XLKV_E_FORMAT, "%s: field \"model_type\" must be a string, got %s", c->path,
                             json_type_name(model_type));
        if (!mentions_llama(model_type->valuestring))
            return xlkv_fail(XLKV_E_UNSUPPORTED, "%s: model_type '%.64s' is not a Llama-architecture model", c->path,
                             model_type->valuestring);
        return XLKV_OK;
    }
    const cJSON *architectures = field(c, "architectures");
    const cJSON *first = cJSON_IsArray(architectures) ? architectures->child : NULL;
    if (cJSON_IsString(first) && mentions_llama(first->valuestring)) return XLKV_OK;
    return xlkv_fail(XLKV_E_UNSUPPORTED, "%s: neither \"model_type\" nor \"architectures\" names a Llama model",
                     c->path);
}

static xlkv_status check_unsupported_features(const config_reader *c) {
    const cJSON *act = field(c, "hidden_act");
    if (act && (!cJSON_IsString(act) || (strcmp(act->valuestring, "silu") && strcmp(act->valuestring, "swish"))))
        return xlkv_fail(XLKV_E_UNSUPPORTED, "%s: field \"hidden_act\" must be \"silu\"", c->path);
    static const char *const bias_fields[] = {"attention_bias", "mlp_bias"};
    for (size_t i = 0; i < 2; i++) {
        bool has_bias = false;
        XLKV_TRY(read_bool(c, bias_fields[i], &has_bias));
        if (has_bias) return xlkv_fail(XLKV_E_UNSUPPORTED, "%s: \"%s\" is true; xlkv has no biases", c->path, bias_fields[i]);
    }
    const cJSON *scaling = field(c, "rope_scaling");
    const cJSON *parameters = field(c, "rope_parameters");
    const cJSON *rope_type = NULL;
    if (scaling) rope_type = cJSON_GetObjectItemCaseSensitive(scaling, "rope_type");
    if (!rope_type && scaling) rope_type = cJSON_GetObjectItemCaseSensitive(scaling, "type");
    if (!rope_type && parameters) rope_type = cJSON_GetObjectItemCaseSensitive(parameters, "rope_type");
    if (rope_type && !(cJSON_IsString(rope_type) && !strcmp(rope_type->valuestring, "default")))
        return xlkv_fail(XLKV_E_UNSUPPORTED, "%s: RoPE scaling (rope_type %s) is not supported", c->path,
                         cJSON_IsString(rope_type) ? rope_type->valuestring : "?");
    if (scaling && !rope_type)
        return xlkv_fail(XLKV_E_UNSUPPORTED, "%s: \"rope_scaling\" is set; RoPE scaling is not supported", c->path);
    return XLKV_OK;
}

static xlkv_status read_rope_theta(const config_reader *c, float *theta) {
    const cJSON *top = field(c, "rope_theta");
    if (top) return read_float(c, top, "rope_theta", theta);
    const cJSON *parameters = field(c, "rope_parameters");
    if (!parameters) return XLKV_OK;
    if (!cJSON_IsObject(parameters))
        return xlkv_fail(XLKV_E_FORMAT, "%s: field \"rope_parameters\" must be an object, got %s", c->path,
                         json_type_name(parameters));
    const cJSON *nested = cJSON_GetObjectItemCaseSensitive(parameters, "rope_theta");
    return read_float(c, cJSON_IsNull(nested) ? NULL : nested, "rope_parameters.rope_theta", theta);
}

/* ["full_attention", "sliding_attention", ...] -> "0_1s_..." (a standard map with sliding layers). */
static xlkv_status layer_types_from_list(const config_reader *c, const cJSON *list, char **out) {
    int n = cJSON_GetArraySize(list);
    size_t cap = (size_t)n * 14 + 1; /* "_" + up to 11 digits + "s" per entry */
    char *text = malloc(cap);
    if (!text) return xlkv_fail(XLKV_E_NOMEM, "%s: out of memory", c->path);
    size_t used = 0;
    text[0] = '\0';
    int i = 0;
    const cJSON *item;
    cJSON_ArrayForEach(item, list) {
        int sliding;
        if (cJSON_IsString(item) && !strcmp(item->valuestring, "full_attention"))
            sliding = 0;
        else if (cJSON_IsString(item) && !strcmp(item->valuestring, "sliding_attention"))
            sliding = 1;
        else {
            free(text);
            return xlkv_fail(XLKV_E_UNSUPPORTED,
                             "%s: field \"layer_types\" entry %d must be \"full_attention\" or \"sliding_attention\"",
                             c->path, i);
        }
        used += (size_t)snprintf(text + used, cap - used, "%s%d%s", i ? "_" : "", i, sliding ? "s" : "");
        i++;
    }
    *out = text;
    return XLKV_OK;
}

static xlkv_status read_layer_types(const config_reader *c, char **out) {
    const cJSON *item = field(c, "layer_types");
    if (!item) return XLKV_OK;
    if (cJSON_IsArray(item)) return layer_types_from_list(c, item, out);
    if (!cJSON_IsString(item))
        return xlkv_fail(XLKV_E_FORMAT, "%s: field \"layer_types\" must be a string like \"0_1_2\", got %s", c->path,
                         json_type_name(item));
    *out = strdup(item->valuestring);
    return *out ? XLKV_OK : xlkv_fail(XLKV_E_NOMEM, "%s: out of memory", c->path);
}

static xlkv_status read_config_fields(const config_reader *c, xlkv_hparams *hp, char **out_layer_types) {
    XLKV_TRY(check_architecture(c));
    XLKV_TRY(check_unsupported_features(c));
    XLKV_TRY(read_int(c, "hidden_size", 1, &hp->dim));
    XLKV_TRY(read_int(c, "intermediate_size", 1, &hp->hidden_dim));
    XLKV_TRY(read_int(c, "num_hidden_layers", 1, &hp->n_layers));
    XLKV_TRY(read_int(c, "num_attention_heads", 1, &hp->n_heads));
    XLKV_TRY(read_int(c, "vocab_size", 1, &hp->vocab_size));
    XLKV_TRY(read_int(c, "max_position_embeddings", 1, &hp->max_seq_len));
    hp->n_kv_heads = hp->n_heads;
    XLKV_TRY(read_int(c, "num_key_value_heads", 0, &hp->n_kv_heads));
    if (field(c, "head_dim")) {
        XLKV_TRY(read_int(c, "head_dim", 0, &hp->head_dim));
    } else {
        if (hp->n_heads <= 0 || hp->dim % hp->n_heads != 0)
            return xlkv_fail(XLKV_E_FORMAT, "%s: hidden_size %d is not a multiple of num_attention_heads %d (and no "
                                            "head_dim is given)", c->path, hp->dim, hp->n_heads);
        hp->head_dim = hp->dim / hp->n_heads;
    }
    XLKV_TRY(read_rope_theta(c, &hp->rope_theta));
    XLKV_TRY(read_float(c, field(c, "rms_norm_eps"), "rms_norm_eps", &hp->norm_eps));
    hp->tied_embeddings = false; /* transformers' LlamaConfig default */
    XLKV_TRY(read_bool(c, "tie_word_embeddings", &hp->tied_embeddings));
    hp->bos_id = -1;
    hp->eos_id = -1;
    XLKV_TRY(read_token_id(c, "bos_token_id", &hp->bos_id));
    XLKV_TRY(read_token_id(c, "eos_token_id", &hp->eos_id));
    XLKV_TRY(read_int(c, "forward_passes", 0, &hp->forward_passes));
    XLKV_TRY(read_int(c, "backward_passes", 0, &hp->backward_passes));
    XLKV_TRY(read_int(c, "sliding_window", 0, &hp->sliding_window));
    XLKV_TRY(read_bool(c, "force_nodiag", &hp->force_nodiag));
    XLKV_TRY(xlkv_hparams_validate(hp, c->path));
    return read_layer_types(c, out_layer_types);
}

xlkv_status xlkv_hf_parse_config(const char *text, size_t size, const char *config_path, xlkv_hparams *hp,
                                 char **out_layer_types) {
    if (out_layer_types) *out_layer_types = NULL;
    xlkv_hparams_defaults(hp);
    cJSON *root = cJSON_ParseWithLength(text, size);
    if (!root) return xlkv_fail(XLKV_E_FORMAT, "%s: not valid JSON", config_path);
    if (!cJSON_IsObject(root)) {
        cJSON_Delete(root);
        return xlkv_fail(XLKV_E_FORMAT, "%s: not a JSON object", config_path);
    }
    config_reader reader = {root, config_path};
    char *layer_types = NULL;
    xlkv_status status = read_config_fields(&reader, hp, &layer_types);
    cJSON_Delete(root);
    if (status != XLKV_OK) return status;
    if (out_layer_types)
        *out_layer_types = layer_types;
    else
        free(layer_types);
    return XLKV_OK;
}

xlkv_status xlkv_hf_read_config(const char *config_path, xlkv_hparams *hp, char **out_layer_types) {
    if (out_layer_types) *out_layer_types = NULL;
    xlkv_hparams_defaults(hp);
    char *text = NULL;
    size_t size = 0;
    XLKV_TRY(xlkv_read_file(config_path, &text, &size));
    xlkv_status status = xlkv_hf_parse_config(text, size, config_path, hp, out_layer_types);
    free(text);
    return status;
}
