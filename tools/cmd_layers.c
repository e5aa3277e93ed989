/* tools/cmd_layers: `xlkv layers`, a report of a layer map: its layer_types string, a per-layer table, the KV layers,
 * the prefill plan and the KV-cache memory compared with the standard map. The map comes from a model (its config
 * plus the same --layer-types / --kv-map precedence as every command) or from a bare shape, so maps can be explored
 * before any checkpoint exists. */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "commands.h"
#include "core/status.h"
#include "model/hparams.h"
#include "model/layer_map.h"
#include "model/model.h"

enum { EXIT_USAGE = 2, MAX_SEQ_LENGTHS = 8 };

typedef struct named_shape {
    const char *name;
    int n_layers, n_kv_heads, head_dim;
} named_shape;

static const named_shape shapes[] = {
    {"tinyllama", 22, 4, 64},
    {"small", 12, 6, 64},
};

typedef struct named_dtype {
    const char *name;
    int bytes_per_element;
} named_dtype;

static const named_dtype dtypes[] = {{"f32", 4}, {"f16", 2}, {"bf16", 2}};

typedef struct layers_options {
    const char *model_path;
    const char *layer_types;
    const char *kv_map_path;
    const named_shape *shape;
    const named_dtype *dtype; /* NULL: bf16 for shapes, f32 for models (xlkv computes in f32) */
    int n_layers, n_kv_heads, head_dim; /* 0: not given */
    int ctx_size;                       /* 0: not given */
} layers_options;

static void print_usage(FILE *out) {
    char presets[512];
    xlkv_layer_map_preset_names(presets, sizeof presets);
    fprintf(out,
            "usage: xlkv layers -m MODEL [--layer-types X | --kv-map FILE] [options]\n"
            "       xlkv layers (--n-layers N [--n-kv-heads H --head-dim D] | --shape NAME) [--layer-types X | --kv-map "
            "FILE] [options]\n"
            "\n"
            "Prints a layer map: its layer_types string, each layer's source, KV slot, cyclic and sliding flags, the KV\n"
            "layers, the prefill plan and the KV-cache bytes compared with the standard map.\n"
            "\n"
            "  -m, --model PATH       model directory (config.json) or llama2.c checkpoint; only its config is read\n"
            "  --layer-types X        layer_types string (0_20_20s_21) or preset; default: the model's own map, else "
            "standard\n"
            "                         presets: %s\n"
            "  --kv-map FILE          KVSharer JSON map {\"i\": j, ...} (exclusive with --layer-types)\n"
            "  --n-layers N           number of layers (without a model)\n"
            "  --n-kv-heads H         KV heads, with --head-dim: enables the byte counts (without a model)\n"
            "  --head-dim D           head dimension (without a model)\n"
            "  --shape NAME           tinyllama (22 layers, 4 KV heads, head_dim 64) or small (12, 6, 64); the flags\n"
            "                         above override its fields\n"
            "  --dtype T              KV element type: f32, f16 or bf16 (default: bf16 for shapes, f32 for models)\n"
            "  -c, --ctx-size N       also report the KV bytes of an N-token sequence\n"
            "  -h, --help             this text\n",
            presets);
}

static int usage_error(const char *fmt, ...) XLKV_PRINTF(1, 2);
static int usage_error(const char *fmt, ...) {
    va_list args;
    va_start(args, fmt);
    fprintf(stderr, "xlkv layers: ");
    vfprintf(stderr, fmt, args);
    fprintf(stderr, "\n(xlkv layers --help for usage)\n");
    va_end(args);
    return EXIT_USAGE;
}

/* A positive int flag value, written in full decimal. */
static bool parse_positive(const char *text, int *out) {
    char *end = NULL;
    errno = 0;
    long value = strtol(text, &end, 10);
    if (end == text || *end != '\0' || errno == ERANGE || value <= 0 || value > (1L << 30)) return false;
    *out = (int)value;
    return true;
}

static const named_shape *find_shape(const char *name) {
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++)
        if (!strcmp(name, shapes[s].name)) return &shapes[s];
    return NULL;
}

static const named_dtype *find_dtype(const char *name) {
    for (size_t d = 0; d < sizeof dtypes / sizeof dtypes[0]; d++)
        if (!strcmp(name, dtypes[d].name)) return &dtypes[d];
    return NULL;
}

/* Parses argv into *opt; returns 0, EXIT_USAGE after printing why, or -1 when --help was printed. */
static int parse_options(int argc, char **argv, layers_options *opt) {
    memset(opt, 0, sizeof *opt);
    struct {
        const char *name, *alias;
        int *field;
    } const int_flags[] = {
        {"--n-layers", NULL, &opt->n_layers},
        {"--n-kv-heads", NULL, &opt->n_kv_heads},
        {"--head-dim", NULL, &opt->head_dim},
        {"--ctx-size", "-c", &opt->ctx_size},
    };
    for (int a = 1; a < argc; a++) {
        const char *flag = argv[a];
        if (!strcmp(flag, "-h") || !strcmp(flag, "--help")) {
            print_usage(stdout);
            return -1;
        }
        int *int_field = NULL;
        for (size_t f = 0; f < sizeof int_flags / sizeof int_flags[0]; f++)
            if (!strcmp(flag, int_flags[f].name) || (int_flags[f].alias && !strcmp(flag, int_flags[f].alias)))
                int_field = int_flags[f].field;
        bool known = int_field || !strcmp(flag, "-m") || !strcmp(flag, "--model") || !strcmp(flag, "--layer-types") ||
                     !strcmp(flag, "--kv-map") || !strcmp(flag, "--shape") || !strcmp(flag, "--dtype");
        if (!known) return usage_error("unknown flag '%s'", flag);
        if (a + 1 >= argc) return usage_error("%s needs a value", flag);
        const char *value = argv[++a];
        if (int_field) {
            if (!parse_positive(value, int_field))
                return usage_error("%s: '%s' is not a positive integer", flag, value);
        } else if (!strcmp(flag, "-m") || !strcmp(flag, "--model")) {
            opt->model_path = value;
        } else if (!strcmp(flag, "--layer-types")) {
            opt->layer_types = value;
        } else if (!strcmp(flag, "--kv-map")) {
            opt->kv_map_path = value;
        } else if (!strcmp(flag, "--shape")) {
            if (!(opt->shape = find_shape(value)))
                return usage_error("--shape: unknown shape '%s' (known: tinyllama, small)", value);
        } else if (!(opt->dtype = find_dtype(value))) {
            return usage_error("--dtype: unknown type '%s' (known: f32, f16, bf16)", value);
        }
    }
    if (opt->layer_types && opt->kv_map_path) return usage_error("--layer-types and --kv-map are exclusive");
    bool shape_given = opt->shape || opt->n_layers || opt->n_kv_heads || opt->head_dim;
    if (opt->model_path && shape_given)
        return usage_error("--model takes the shape from the model; drop --shape/--n-layers/--n-kv-heads/--head-dim");
    if (!opt->model_path && !opt->shape && !opt->n_layers)
        return usage_error("give a model (-m MODEL) or a shape (--n-layers N or --shape NAME)");
    if (!opt->shape && !opt->model_path && (!opt->n_kv_heads != !opt->head_dim))
        return usage_error("--n-kv-heads and --head-dim go together");
    return 0;
}

/* The hyperparameters and map of the command line: from the model's config, or from the shape flags. */
static xlkv_status resolve(const layers_options *opt, xlkv_hparams *hp, xlkv_layer_map **map) {
    if (opt->model_path) {
        xlkv_model_params params = xlkv_model_default_params();
        params.layer_types = opt->layer_types;
        params.kv_map_path = opt->kv_map_path;
        return xlkv_model_load_config(opt->model_path, &params, hp, map);
    }
    xlkv_hparams_defaults(hp); /* m and b of the plan */
    if (opt->shape) {
        hp->n_layers = opt->shape->n_layers;
        hp->n_kv_heads = opt->shape->n_kv_heads;
        hp->head_dim = opt->shape->head_dim;
    }
    if (opt->n_layers) hp->n_layers = opt->n_layers;
    if (opt->n_kv_heads) hp->n_kv_heads = opt->n_kv_heads;
    if (opt->head_dim) hp->head_dim = opt->head_dim;
    if (opt->kv_map_path) return xlkv_layer_map_load_kvsharer(opt->kv_map_path, hp->n_layers, map);
    if (opt->layer_types) return xlkv_layer_map_parse(opt->layer_types, hp->n_layers, map);
    return xlkv_layer_map_standard(hp->n_layers, map);
}

static const char *yes_no(bool value) { return value ? "yes" : "no"; }

static void print_layers(const xlkv_layer_map *map) {
    printf("\nlayer  reads  KV layer  slot  cyclic  sliding\n");
    for (int i = 0; i < map->n_layers; i++) {
        char slot[16] = "-";
        if (xlkv_is_kv_layer(map, i)) snprintf(slot, sizeof slot, "%d", map->kv_slot[i]);
        printf("%5d  %5d  %8s  %4s  %6s  %7s\n", i, map->kv_src[i], yes_no(xlkv_is_kv_layer(map, i)), slot,
               yes_no(xlkv_is_cyclic(map, i)), yes_no(map->sliding[i]));
    }
    printf("\nKV layers (%d of %d):", map->n_kv_layers, map->n_layers);
    for (int j = 0; j < map->n_layers; j++)
        if (xlkv_is_kv_layer(map, j)) printf(" %d", j);
    printf("\n");
}

static void print_plan(const xlkv_layer_map *map, const xlkv_hparams *hp) {
    int iterations = hp->forward_passes + hp->backward_passes;
    printf("\nprefill plan (%d step%s):\n", map->n_plan_steps, map->n_plan_steps == 1 ? "" : "s");
    for (int s = 0; s < map->n_plan_steps; s++) {
        const xlkv_plan_step *step = &map->plan[s];
        if (step->cyclic)
            printf("  layers %d..%d: cyclic group, m + b = %d + %d = %d iterations\n", step->first, step->last,
                   hp->forward_passes, hp->backward_passes, iterations);
        else
            printf("  layers %d..%d: once\n", step->first, step->last);
    }
}

static void format_bytes(double bytes, char *text, size_t capacity) {
    static const char *const units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
    int unit = 0;
    while (bytes >= 1024.0 && unit < 4) {
        bytes /= 1024.0;
        unit++;
    }
    if (unit == 0)
        snprintf(text, capacity, "%.0f B", bytes);
    else
        snprintf(text, capacity, "%.2f %s", bytes, units[unit]);
}

/* The sequence lengths of the memory table: 512, 2048, 4096 and the model's / the user's lengths, ascending. */
static int table_lengths(const xlkv_hparams *hp, int ctx_size, int *lengths) {
    int candidates[] = {512, 2048, 4096, hp->max_seq_len, ctx_size};
    int n = 0;
    for (size_t c = 0; c < sizeof candidates / sizeof candidates[0]; c++) {
        int length = candidates[c];
        bool seen = length <= 0;
        for (int k = 0; k < n && !seen; k++) seen = lengths[k] == length;
        if (seen) continue;
        int k = n++;
        for (; k > 0 && lengths[k - 1] > length; k--) lengths[k] = lengths[k - 1];
        lengths[k] = length;
    }
    return n;
}

static void print_memory(const xlkv_layer_map *map, const xlkv_hparams *hp, const named_dtype *dtype, int ctx_size) {
    double saving = (double)map->n_layers / (double)map->n_kv_layers;
    if (hp->n_kv_heads <= 0 || hp->head_dim <= 0) {
        printf("\nKV cache: %d of %d layers own KV, %.2fx less than the standard map (give --n-kv-heads and "
               "--head-dim, or --shape, for bytes)\n",
               map->n_kv_layers, map->n_layers, saving);
        return;
    }
    size_t per_token = xlkv_layer_map_kv_bytes_per_token(map, hp->n_kv_heads, hp->head_dim, dtype->bytes_per_element);
    size_t standard_per_token = per_token / (size_t)map->n_kv_layers * (size_t)map->n_layers;
    printf("\nKV cache (%s, %d KV heads x head_dim %d):\n", dtype->name, hp->n_kv_heads, hp->head_dim);
    printf("KV bytes per token: %zu (standard map: %zu, saving %.2fx)\n", per_token, standard_per_token, saving);
    int lengths[MAX_SEQ_LENGTHS];
    int n_lengths = table_lengths(hp, ctx_size, lengths);
    printf("%8s  %14s  %14s\n", "tokens", "this map", "standard map");
    for (int k = 0; k < n_lengths; k++) {
        char mine[32], standard[32];
        format_bytes((double)per_token * lengths[k], mine, sizeof mine);
        format_bytes((double)standard_per_token * lengths[k], standard, sizeof standard);
        const char *note = lengths[k] == hp->max_seq_len ? "  (the model's max_seq_len)"
                           : lengths[k] == ctx_size      ? "  (--ctx-size)"
                                                         : "";
        printf("%8d  %14s  %14s%s\n", lengths[k], mine, standard, note);
    }
}

int cmd_layers(int argc, char **argv) {
    layers_options opt;
    int parsed = parse_options(argc, argv, &opt);
    if (parsed != 0) return parsed < 0 ? 0 : parsed;

    xlkv_hparams hp;
    xlkv_layer_map *map = NULL;
    if (resolve(&opt, &hp, &map) != XLKV_OK) {
        fprintf(stderr, "xlkv layers: %s\n", xlkv_last_error());
        return 1;
    }
    char *layer_types = xlkv_layer_map_to_string(map);
    if (!layer_types) {
        fprintf(stderr, "xlkv layers: out of memory\n");
        xlkv_layer_map_free(map);
        return 1;
    }
    const named_dtype *dtype = opt.dtype ? opt.dtype : find_dtype(opt.model_path ? "f32" : "bf16");
    printf("layer_types: %s\n", layer_types);
    printf("layers: %d, KV layers: %d, cyclic groups: %s\n", map->n_layers, map->n_kv_layers,
           xlkv_layer_map_has_cyclic(map) ? "yes" : "no");
    print_layers(map);
    print_plan(map, &hp);
    print_memory(map, &hp, dtype, opt.ctx_size);
    free(layer_types);
    xlkv_layer_map_free(map);
    return 0;
}
