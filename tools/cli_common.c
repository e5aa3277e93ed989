/* tools/cli_common: see cli_common.h. */
#include "cli_common.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "infer/engine.h"

const char *cli_value(const char *command, int argc, char **argv, int *i) {
    if (*i + 1 >= argc) {
        fprintf(stderr, "xlkv %s: option %s needs a value\n", command, argv[*i]);
        return NULL;
    }
    return argv[++*i];
}

cli_parse_result cli_take_string(const char *command, int argc, char **argv, int *i, const char **out) {
    const char *value = cli_value(command, argc, argv, i);
    if (!value) return CLI_USAGE_ERROR;
    *out = value;
    return CLI_CONSUMED;
}

cli_parse_result cli_take_int(const char *command, int argc, char **argv, int *i, long min, long max, int *out) {
    const char *flag = argv[*i];
    const char *value = cli_value(command, argc, argv, i);
    return value && cli_parse_int(command, flag, value, min, max, out) ? CLI_CONSUMED : CLI_USAGE_ERROR;
}

bool cli_parse_long(const char *command, const char *flag, const char *text, long min, long max, long *out) {
    char *end = NULL;
    errno = 0;
    long value = strtol(text, &end, 10);
    if (errno || end == text || *end != '\0' || value < min || value > max) {
        fprintf(stderr, "xlkv %s: %s expects an integer in [%ld, %ld], got '%s'\n", command, flag, min, max, text);
        return false;
    }
    *out = value;
    return true;
}

bool cli_parse_int(const char *command, const char *flag, const char *text, long min, long max, int *out) {
    long value = 0;
    if (!cli_parse_long(command, flag, text, min, max, &value)) return false;
    *out = (int)value; /* callers keep [min, max] within int */
    return true;
}

bool cli_parse_seed(const char *command, const char *flag, const char *text, unsigned long long *out) {
    char *end = NULL;
    errno = 0;
    unsigned long long seed = strtoull(text, &end, 10);
    if (errno || end == text || *end != '\0' || text[0] == '-') {
        fprintf(stderr, "xlkv %s: %s expects a non-negative integer, got '%s'\n", command, flag, text);
        return false;
    }
    *out = seed;
    return true;
}

/* A finite number read as a float (strtof: single) or a double (strtod). */
static bool parse_real(const char *command, const char *flag, const char *text, bool single, double *out) {
    char *end = NULL;
    errno = 0;
    double value = single ? (double)strtof(text, &end) : strtod(text, &end);
    if (errno || end == text || *end != '\0' || !isfinite(value)) {
        fprintf(stderr, "xlkv %s: %s expects a number, got '%s'\n", command, flag, text);
        return false;
    }
    *out = value;
    return true;
}

bool cli_parse_float(const char *command, const char *flag, const char *text, float *out) {
    double value;
    if (!parse_real(command, flag, text, true, &value)) return false;
    *out = (float)value; /* exact: it was a float */
    return true;
}

bool cli_parse_double(const char *command, const char *flag, const char *text, double *out) {
    return parse_real(command, flag, text, false, out);
}

void cli_model_options_init(cli_model_options *o) {
    memset(o, 0, sizeof *o);
    o->forward_passes = -1;
    o->backward_passes = -1;
    o->sliding_window = -1;
    o->device = "cpu";
}

static bool is_flag(const char *arg, const char *short_name, const char *long_name) {
    return (short_name && !strcmp(arg, short_name)) || (long_name && !strcmp(arg, long_name));
}

cli_parse_result cli_parse_model_option(cli_model_options *o, const char *command, int argc, char **argv, int *i) {
    const char *arg = argv[*i];
#define CLI_STRING(short_name, long_name, field)                                                                       \
    if (is_flag(arg, short_name, long_name)) return cli_take_string(command, argc, argv, i, &o->field);
#define CLI_INT(short_name, long_name, field, min, max)                                                                \
    if (is_flag(arg, short_name, long_name)) return cli_take_int(command, argc, argv, i, min, max, &o->field);
    CLI_STRING("-m", "--model", model)
    CLI_STRING(NULL, "--tokenizer", tokenizer)
    CLI_STRING(NULL, "--layer-types", layer_types)
    CLI_STRING(NULL, "--kv-map", kv_map)
    CLI_STRING(NULL, "--device", device)
    CLI_STRING(NULL, "--dtype", dtype)
    CLI_INT(NULL, "--forward-passes", forward_passes, 0, 1000)
    CLI_INT(NULL, "--backward-passes", backward_passes, 0, 1000)
    CLI_INT(NULL, "--sliding-window", sliding_window, 0, 1 << 24)
    CLI_INT("-c", "--ctx-size", n_ctx, 0, 1 << 24)
    CLI_INT("-t", "--threads", n_threads, 0, 4096)
#undef CLI_STRING
#undef CLI_INT
    if (!strcmp(arg, "--sequential")) {
        o->sequential = true;
        return CLI_CONSUMED;
    }
    return CLI_NOT_MINE;
}

cli_parse_result cli_parse_sampling_option(xlkv_sampler_params *p, const char *command, int argc, char **argv,
                                           int *i) {
    const char *arg = argv[*i];
    const char *value;
    if (!strcmp(arg, "--temp") || !strcmp(arg, "--top-p") || !strcmp(arg, "--repeat-penalty")) {
        if (!(value = cli_value(command, argc, argv, i))) return CLI_USAGE_ERROR;
        float *field = !strcmp(arg, "--temp") ? &p->temperature : !strcmp(arg, "--top-p") ? &p->top_p : &p->repeat_penalty;
        return cli_parse_float(command, arg, value, field) ? CLI_CONSUMED : CLI_USAGE_ERROR;
    }
    if (!strcmp(arg, "--top-k") || !strcmp(arg, "--repeat-last-n")) {
        if (!(value = cli_value(command, argc, argv, i))) return CLI_USAGE_ERROR;
        int *field = !strcmp(arg, "--top-k") ? &p->top_k : &p->repeat_last_n;
        return cli_parse_int(command, arg, value, 0, 1 << 24, field) ? CLI_CONSUMED : CLI_USAGE_ERROR;
    }
    if (!strcmp(arg, "-s") || !strcmp(arg, "--seed")) {
        if (!(value = cli_value(command, argc, argv, i))) return CLI_USAGE_ERROR;
        unsigned long long seed = 0;
        if (!cli_parse_seed(command, arg, value, &seed)) return CLI_USAGE_ERROR;
        p->seed = seed;
        return CLI_CONSUMED;
    }
    return CLI_NOT_MINE;
}

xlkv_sampler_params cli_sampling_defaults(void) {
    xlkv_sampler_params p = xlkv_sampler_default_params();
    p.seed = (unsigned long long)time(NULL);
    return p;
}

void cli_print_model_help(FILE *out) {
    fprintf(out,
            "model and layer map:\n"
            "  -m, --model PATH          Hugging Face model directory or llama2.c checkpoint (.bin)\n"
            "      --tokenizer FILE      tokenizer (default: found beside the model)\n"
            "      --layer-types MAP     layer map: layer_types string (0_20_20s_21) or preset\n"
            "                            (standard, cla:K, lckv:W, yoco, pizza|sandwich|lasagna-bottom|middle|top:l)\n"
            "      --kv-map FILE         KVSharer map (JSON {\"layer\": source, ...})\n"
            "      --forward-passes M    cyclic groups: iterations without gradient (default: config, else 7)\n"
            "      --backward-passes B   cyclic groups: iterations with gradient (default: config, else 2)\n"
            "      --sliding-window W    window of the layers marked 's' (default: config)\n"
            "      --sequential          prefill one token at a time (exact mode)\n"
            "  -c, --ctx-size N          context length (default: the model's)\n"
            "  -t, --threads N           CPU threads (default: all cores)\n"
            "      --device cpu|cuda     compute device (default cpu; cuda in builds with CUDA)\n"
            "      --dtype f32|bf16      cuda element type of weights, activations and KV (default bf16)\n");
}

void cli_print_sampling_help(FILE *out) {
    fprintf(out, "sampling:\n"
                 "      --temp T              temperature, 0 = greedy (default 0.8)\n"
                 "      --top-k K             keep the K most likely tokens, 0 = off (default 40)\n"
                 "      --top-p P             nucleus sampling, 1 = off (default 0.95)\n"
                 "      --repeat-penalty R    penalty for recent tokens, 1 = off (default 1.0)\n"
                 "      --repeat-last-n N     tokens the penalty looks back on (default 64)\n"
                 "  -s, --seed N              random seed (default: from the clock)\n");
}

bool cli_load_model(const char *command, const cli_model_options *o, xlkv_model **out) {
    *out = NULL;
    if (!o->model) {
        fprintf(stderr, "xlkv %s: no model given (-m PATH); see xlkv %s --help\n", command, command);
        return false;
    }
    if (o->dtype && strcmp(o->dtype, "f32") != 0 && strcmp(o->dtype, "bf16") != 0) {
        fprintf(stderr, "xlkv %s: --dtype expects f32 or bf16, got '%s'\n", command, o->dtype);
        return false;
    }
    const bool have_cuda = xlkv_engine_backend_cuda() != NULL;
    if (strcmp(o->device, "cpu") != 0 && !(have_cuda && !strcmp(o->device, "cuda"))) {
        fprintf(stderr, "xlkv %s: device '%s' is not available in this build (devices: cpu%s)\n", command, o->device,
                have_cuda ? ", cuda" : "");
        return false;
    }
    if (o->dtype && !strcmp(o->dtype, "bf16") && !cli_on_cuda(o)) {
        fprintf(stderr, "xlkv %s: --dtype bf16 needs --device cuda (the cpu runs f32)\n", command);
        return false;
    }
    xlkv_model_params params = xlkv_model_default_params();
    params.layer_types = o->layer_types;
    params.kv_map_path = o->kv_map;
    params.tokenizer_path = o->tokenizer;
    params.forward_passes = o->forward_passes;
    params.backward_passes = o->backward_passes;
    params.sliding_window = o->sliding_window;
    xlkv_status status = xlkv_model_load(o->model, &params, out);
    if (status != XLKV_OK) {
        fprintf(stderr, "xlkv %s: cannot load model: %s\n", command, xlkv_last_error());
        return false;
    }
    return true;
}

bool cli_on_cuda(const cli_model_options *o) { return !strcmp(o->device, "cuda"); }

bool cli_model_has_tokenizer(const char *command, const cli_model_options *o, const xlkv_model *model) {
    if (model->tokenizer) return true;
    fprintf(stderr, "xlkv %s: the model has no tokenizer (none found beside %s; pass --tokenizer FILE)\n", command,
            o->model ? o->model : "the model");
    return false;
}

const char *cli_layer_map_label(const cli_model_options *o) {
    return o->layer_types ? o->layer_types : o->kv_map ? o->kv_map : "checkpoint";
}

bool cli_create_context(const char *command, const cli_model_options *o, const xlkv_model *model,
                        xlkv_context **out) {
    *out = NULL;
    if (strcmp(o->device, "cpu") != 0) {
        fprintf(stderr, "xlkv %s: runs on the cpu only (--device %s is for generate and logits)\n", command, o->device);
        return false;
    }
    xlkv_context_params params = xlkv_context_default_params();
    params.n_ctx = o->n_ctx;
    params.n_threads = o->n_threads;
    params.prefill_mode = o->sequential ? XLKV_PREFILL_SEQUENTIAL : XLKV_PREFILL_AUTO;
    xlkv_status status = xlkv_context_create(model, &params, out);
    if (status != XLKV_OK) {
        fprintf(stderr, "xlkv %s: cannot create a context: %s\n", command, xlkv_last_error());
        return false;
    }
    return true;
}

const char *cli_format_bytes(double bytes, char *buf, size_t cap) {
    const char *units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
    int u = 0;
    while (bytes >= 1024.0 && u < 4) {
        bytes /= 1024.0;
        u++;
    }
    snprintf(buf, cap, u ? "%.2f %s" : "%.0f %s", bytes, units[u]);
    return buf;
}

void cli_report_kv_memory(const char *command, const xlkv_model *model, const xlkv_context *ctx) {
    const xlkv_hparams *hp = &model->hp;
    size_t per_token = xlkv_layer_map_kv_bytes_per_token(model->map, hp->n_kv_heads, hp->head_dim, 4);
    size_t standard = (size_t)hp->n_layers * 2u * (size_t)hp->n_kv_heads * (size_t)hp->head_dim * 4u;
    char a[32], b[32], c[32];
    fprintf(stderr, "xlkv %s: KV layers %d of %d; KV %s/token (standard map: %s/token, %.2fx less); cache %s for %d "
                    "positions\n",
            command, model->map->n_kv_layers, hp->n_layers, cli_format_bytes((double)per_token, a, sizeof a),
            cli_format_bytes((double)standard, b, sizeof b), per_token ? (double)standard / (double)per_token : 0.0,
            cli_format_bytes((double)xlkv_context_kv_bytes(ctx), c, sizeof c), ctx->params.n_ctx);
}
