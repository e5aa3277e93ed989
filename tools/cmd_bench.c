/* tools/cmd_bench: `xlkv bench throughput`, the papers' throughput protocol (../shared/docs/BENCHMARKS.md, run by
 * src/eval/throughput.c) for a list of layer maps x settings (prompt+gen) x memory budgets: prints a table, appends
 * JSON lines, draws an SVG (src/eval/throughput_svg.c). The model is a checkpoint loaded once per map (-m, the map
 * applied at load as --layer-types does) or random weights in a benchmark shape (--shape), one set shared by every
 * map. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cli_args.h"
#include "commands.h"
#include "core/status.h"
#include "eval/bench_model.h"
#include "eval/throughput.h"
#include "eval/throughput_svg.h"
#include "infer/engine.h"
#include "model/layer_map.h"
#include "model/model.h"

#ifdef XLKV_HAVE_CUDA
#include <cuda_runtime.h>
#endif

#define GIB (1024.0 * 1024.0 * 1024.0)
enum { EXIT_USAGE = 2, MAX_ITEMS = 16 };

static const char *const COMMAND = "bench throughput";
static const char DEFAULT_MAPS_22[] = "standard,cla:2,yoco,sandwich-middle:11,lckv:10,lckv:2,sandwich-middle:3";
static const char DEFAULT_MAPS_OTHER[] = "standard,lckv:2";
static const char DEFAULT_SETTINGS[] = "512+512,5+2043,512+1024,2048+2048";
static const char DEFAULT_BUDGETS[] = "gpu,16GiB";

typedef struct bench_budget {
    char name[32];
    size_t bytes;   /* resolved for "gpu" before the runs */
    bool whole;
} bench_budget;

typedef struct bench_options {
    const char *model_path;
    const char *shape;
    const char *device;
    const char *json_path;
    const char *svg_path;
    char *maps_text;     /* owned copies: strtok writes into them */
    const char *maps[MAX_ITEMS];
    int n_maps;
    int prompt[MAX_ITEMS], gen[MAX_ITEMS];
    int n_settings;
    bench_budget budgets[MAX_ITEMS];
    int n_budgets;
    int max_batch;
    int search_probes;
    double limit_s;
} bench_options;

static void print_usage(FILE *out) {
    fprintf(out,
            "usage: xlkv bench throughput (-m MODEL | --shape tinyllama|small|tiny) [options]\n"
            "\n"
            "The papers' throughput protocol (../shared/docs/BENCHMARKS.md): for each layer map, setting and memory\n"
            "budget, the largest batch that fits (one engine at --max-batch filled until the KV pool is full, then\n"
            "doubling and bisection), the fixed prompt replicated over the batch, exactly GEN new tokens each;\n"
            "throughput = batch x gen / wall time, prefill included.\n"
            "\n"
            "  -m, --model PATH        checkpoint, loaded once per map (the map applied as --layer-types)\n"
            "  --shape NAME            random weights: tinyllama (22 layers), small (12) or tiny (22, hidden 64)\n"
            "  --layer-types A,B,...   maps (presets or layer_types strings); default: the BENCHMARKS.md list for 22\n"
            "                          layers (%s), else %s\n"
            "  --settings P+G,...      prompt+gen pairs (default %s)\n"
            "  --budget B,...          memory budgets: gpu (the whole device less 1 GiB; on cpu: host memory less\n"
            "                          1 GiB), or a size 16GiB, 512MiB, 16 (GiB) (default %s)\n"
            "  --device cpu|cuda       engine device (default cpu, as for every command)\n"
            "  --max-batch N           batch cap (default 4096)\n"
            "  --search-probes N       refinement engines above the first (default 3)\n"
            "  --limit-s S             time limit of each measurement, search + run (default 120); a run cut short\n"
            "                          is reported as partial (complete false)\n"
            "  --json FILE             append one JSON line per measurement\n"
            "  --svg FILE              write tokens/s and batch per map and (setting, budget) as an SVG chart\n"
            "  -h, --help              this text\n",
            DEFAULT_MAPS_22, DEFAULT_MAPS_OTHER, DEFAULT_SETTINGS, DEFAULT_BUDGETS);
}

static int usage_error(const char *fmt, ...) XLKV_PRINTF(1, 2);
static int usage_error(const char *fmt, ...) {
    va_list args;
    va_start(args, fmt);
    fprintf(stderr, "xlkv %s: ", COMMAND);
    vfprintf(stderr, fmt, args);
    fprintf(stderr, "\n(xlkv bench throughput --help for usage)\n");
    va_end(args);
    return EXIT_USAGE;
}

/* Splits a comma list in place; false (with a message) for an empty item or too many. */
static bool split_list(const char *flag, char *text, const char **items, int *n) {
    *n = 0;
    char *p = text;
    for (;;) {
        char *comma = strchr(p, ',');
        if (comma) *comma = '\0';
        if (!*p) {
            usage_error("%s: empty item in the list", flag);
            return false;
        }
        if (*n == MAX_ITEMS) {
            usage_error("%s: more than %d items", flag, MAX_ITEMS);
            return false;
        }
        items[(*n)++] = p;
        if (!comma) return true;
        p = comma + 1;
    }
}

static bool parse_settings(const char *text, bench_options *o) {
    char buf[512];
    const char *items[MAX_ITEMS];
    snprintf(buf, sizeof buf, "%s", text);
    if (!split_list("--settings", buf, items, &o->n_settings)) return false;
    for (int i = 0; i < o->n_settings; i++) {
        int used = 0;
        if (sscanf(items[i], "%d+%d%n", &o->prompt[i], &o->gen[i], &used) != 2 || items[i][used] != '\0' ||
            o->prompt[i] < 1 || o->gen[i] < 1) {
            usage_error("--settings: '%s' is not PROMPT+GEN (two positive integers, e.g. 512+512)", items[i]);
            return false;
        }
    }
    return true;
}

static bool parse_budgets(const char *text, bench_options *o) {
    char buf[512];
    const char *items[MAX_ITEMS];
    snprintf(buf, sizeof buf, "%s", text);
    if (!split_list("--budget", buf, items, &o->n_budgets)) return false;
    for (int i = 0; i < o->n_budgets; i++) {
        bench_budget *b = &o->budgets[i];
        memset(b, 0, sizeof *b);
        if (!strcmp(items[i], "gpu")) {
            b->whole = true;
            snprintf(b->name, sizeof b->name, "gpu");
            continue;
        }
        char *end = NULL;
        double value = strtod(items[i], &end);
        double unit = GIB;
        if (end == items[i]) value = -1.0;
        else if (!strcmp(end, "MiB")) unit = GIB / 1024.0;
        else if (*end && strcmp(end, "GiB") != 0) value = -1.0;
        if (!(value > 0.0) || value * unit > 1e18) {
            usage_error("--budget: '%s' is neither gpu nor a size (16GiB, 512MiB, 16)", items[i]);
            return false;
        }
        b->bytes = (size_t)(value * unit);
        snprintf(b->name, sizeof b->name, unit == GIB ? "%gGiB" : "%gMiB", value);
    }
    return true;
}

/* CLI_ARGS_PARSED, or the exit status to return at once (cli_parse_args, or EXIT_USAGE for a bad value). */
static int parse_options(int argc, char **argv, bench_options *o) {
    const char *maps = NULL, *settings = DEFAULT_SETTINGS, *budgets = DEFAULT_BUDGETS;
    int device = 0; /* cpu, as for every command: --device cuda asks for the GPU */
    float limit_s = 120.0f;
    memset(o, 0, sizeof *o);
    o->max_batch = 4096;
    o->search_probes = 3;
    const cli_flag flags[] = {
        CLI_STRING_FLAG("-m", "--model", &o->model_path),
        CLI_STRING_FLAG(NULL, "--shape", &o->shape),
        CLI_STRING_FLAG(NULL, "--layer-types", &maps),
        CLI_STRING_FLAG(NULL, "--settings", &settings),
        CLI_STRING_FLAG(NULL, "--budget", &budgets),
        CLI_CHOICE_FLAG(NULL, "--device", &device, "cpu", "cuda"),
        CLI_INT_FLAG(NULL, "--max-batch", &o->max_batch, 1, 1 << 20),
        CLI_INT_FLAG(NULL, "--search-probes", &o->search_probes, 0, 64),
        CLI_FLOAT_FLAG(NULL, "--limit-s", &limit_s),
        CLI_STRING_FLAG(NULL, "--json", &o->json_path),
        CLI_STRING_FLAG(NULL, "--svg", &o->svg_path),
    };
    const int parsed =
        cli_parse_args(&(cli_command_line){.command = COMMAND, .usage = print_usage, CLI_FLAGS(flags)}, argc, argv);
    if (parsed != CLI_ARGS_PARSED) return parsed;
    o->device = device ? "cuda" : "cpu";
    o->limit_s = limit_s;
    if (!(limit_s > 0.0f)) return usage_error("--limit-s must be > 0, got '%g'", (double)limit_s);
    if (!o->model_path == !o->shape)
        return usage_error(o->model_path ? "-m and --shape are exclusive" : "give a model (-m) or a shape (--shape)");
    xlkv_hparams hp;
    if (o->shape && !xlkv_bench_shape_hparams(o->shape, &hp))
        return usage_error("unknown shape '%s' (tinyllama, small, tiny)", o->shape);
    if (device && !xlkv_engine_backend_cuda()) return usage_error("--device cuda: this build has no CUDA engine");
    if (maps) {
        o->maps_text = strdup(maps);
        if (!o->maps_text || !split_list("--layer-types", o->maps_text, o->maps, &o->n_maps)) return EXIT_USAGE;
    }
    return parse_settings(settings, o) && parse_budgets(budgets, o) ? CLI_ARGS_PARSED : EXIT_USAGE;
}

/* The budget "gpu": the free device memory less 1 GiB (kept for cuBLAS workspaces and graphs), as bench_gpu does; on
 * the cpu, host memory less 1 GiB. */
static bool whole_device_bytes(const char *device, size_t *out) {
    *out = 0;
    if (!strcmp(device, "cuda")) {
#ifdef XLKV_HAVE_CUDA
        size_t free_bytes = 0, total_bytes = 0;
        if (cudaMemGetInfo(&free_bytes, &total_bytes) != cudaSuccess) return false;
        *out = free_bytes > (size_t)GIB ? free_bytes - (size_t)GIB : free_bytes;
        return true;
#else
        return false;
#endif
    }
    const long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGESIZE);
    if (pages <= 0 || page <= 0) return false;
    const size_t bytes = (size_t)pages * (size_t)page;
    *out = bytes > (size_t)(2 * GIB) ? bytes - (size_t)GIB : bytes / 2;
    return true;
}

/* A JSON string body: quotes, backslashes and control characters escaped. */
static void json_string(FILE *out, const char *text) {
    fputc('"', out);
    for (const char *p = text ? text : ""; *p; p++) {
        const unsigned char c = (unsigned char)*p;
        if (c == '"' || c == '\\') fprintf(out, "\\%c", c);
        else if (c < 0x20) fprintf(out, "\\u%04x", c);
        else fputc(c, out);
    }
    fputc('"', out);
}

static void write_json(FILE *out, const bench_options *o, const char *map, const xlkv_model *m, int s,
                       const bench_budget *b, const xlkv_throughput_figures *f, const char *date) {
    fprintf(out, "{\"bench\": \"throughput\", \"model\": ");
    json_string(out, o->model_path ? o->model_path : o->shape);
    fprintf(out, ", \"device\": \"%s\", \"map\": ", o->device);
    json_string(out, map);
    fprintf(out,
            ", \"kv_layers\": %d, \"n_layers\": %d, \"setting\": \"%d+%d\", \"prompt\": %d, \"gen\": %d, "
            "\"budget\": \"%s\", \"budget_bytes\": %zu, \"batch\": %d, \"batch_upper_bound\": %d, "
            "\"search_engines\": %d, \"search_s\": %.3f, \"pool_bytes\": %zu, \"device_bytes\": %zu, \"tokens\": %lld, "
            "\"run_s\": %.3f, \"prefill_step_s\": %.3f, \"tokens_per_s\": %.2f, \"complete\": %s, "
            "\"time_limit_s\": %.1f",
            m ? m->map->n_kv_layers : 0, m ? m->hp.n_layers : 0, o->prompt[s], o->gen[s], o->prompt[s], o->gen[s],
            b->name, b->bytes, f->batch, f->upper_bound, f->probes, f->search_seconds, f->pool_bytes, f->device_bytes,
            f->tokens, f->seconds, f->prefill_seconds, f->tokens_per_s, f->complete ? "true" : "false", o->limit_s);
    if (f->skipped) fprintf(out, ", \"skipped\": \"%s\"", f->skipped);
    if (f->error[0]) {
        fprintf(out, ", \"error\": ");
        json_string(out, f->error);
    }
    fprintf(out, ", \"date\": \"%s\"}\n", date);
    fflush(out);
}

/* The model of map i: a view of the random base, or the checkpoint loaded under the map. */
static bool model_for_map(const bench_options *o, const xlkv_model *base, const char *map, xlkv_model *view,
                          xlkv_model **loaded) {
    *loaded = NULL;
    if (base) {
        if (xlkv_bench_map_view(base, map, view) == XLKV_OK) return true;
    } else {
        xlkv_model_params mp = xlkv_model_default_params();
        mp.layer_types = map;
        if (xlkv_model_load(o->model_path, &mp, loaded) == XLKV_OK) return true;
    }
    fprintf(stderr, "xlkv %s: map '%s': %s\n", COMMAND, map, xlkv_last_error());
    return false;
}

static int run(bench_options *o) {
    /* the layer count (default maps and map checks) */
    xlkv_hparams hp;
    xlkv_model *base = NULL;
    if (o->shape) {
        xlkv_bench_shape_hparams(o->shape, &hp);
    } else {
        xlkv_model_params mp = xlkv_model_default_params();
        xlkv_layer_map *own = NULL;
        if (xlkv_model_load_config(o->model_path, &mp, &hp, &own) != XLKV_OK) {
            fprintf(stderr, "xlkv %s: %s\n", COMMAND, xlkv_last_error());
            return 1;
        }
        xlkv_layer_map_free(own);
    }
    if (!o->maps_text) {
        o->maps_text = strdup(hp.n_layers == 22 ? DEFAULT_MAPS_22 : DEFAULT_MAPS_OTHER);
        if (!o->maps_text || !split_list("--layer-types", o->maps_text, o->maps, &o->n_maps)) return 1;
    }
    /* every map checked before anything runs */
    for (int i = 0; i < o->n_maps; i++) {
        xlkv_layer_map *map = NULL;
        if (xlkv_layer_map_parse(o->maps[i], hp.n_layers, &map) != XLKV_OK)
            return usage_error("--layer-types: map '%s' (%d layers): %s", o->maps[i], hp.n_layers, xlkv_last_error());
        xlkv_layer_map_free(map);
    }
    for (int b = 0; b < o->n_budgets; b++)
        if (o->budgets[b].whole && !whole_device_bytes(o->device, &o->budgets[b].bytes)) {
            fprintf(stderr, "xlkv %s: budget gpu: cannot read the %s's free memory\n", COMMAND, o->device);
            return 1;
        }
    FILE *json = NULL;
    if (o->json_path && !(json = fopen(o->json_path, "a"))) {
        fprintf(stderr, "xlkv %s: cannot append to %s\n", COMMAND, o->json_path);
        return 1;
    }
    if (o->shape && xlkv_bench_random_model(&hp, &base) != XLKV_OK) {
        fprintf(stderr, "xlkv %s: random %s model: %s\n", COMMAND, o->shape, xlkv_last_error());
        if (json) fclose(json);
        return 1;
    }
    char date[32];
    time_t now = time(NULL);
    strftime(date, sizeof date, "%Y-%m-%dT%H:%M:%SZ", gmtime(&now));

    const int n_groups = o->n_settings * o->n_budgets;
    static xlkv_throughput_figures results[MAX_ITEMS * MAX_ITEMS][MAX_ITEMS]; /* [group][map] */
    int kv_layers[MAX_ITEMS] = {0};
    int status = 0;
    fprintf(stderr, "xlkv %s: %s on %s, %d maps x %d settings x %d budgets, limit %.0f s each\n", COMMAND,
            o->model_path ? o->model_path : o->shape, o->device, o->n_maps, o->n_settings, o->n_budgets, o->limit_s);
    for (int i = 0; i < o->n_maps; i++) {
        xlkv_model view, *loaded = NULL;
        if (!model_for_map(o, base, o->maps[i], &view, &loaded)) {
            status = 1;
            break;
        }
        const xlkv_model *m = loaded ? loaded : &view;
        kv_layers[i] = m->map->n_kv_layers;
        for (int s = 0; s < o->n_settings; s++)
            for (int b = 0; b < o->n_budgets; b++) {
                xlkv_throughput_figures *f = &results[s * o->n_budgets + b][i];
                xlkv_throughput_params tp = xlkv_throughput_default_params();
                tp.device = o->device;
                tp.max_batch = o->max_batch;
                tp.search_probes = o->search_probes;
                tp.limit_s = o->limit_s;
                tp.budget_bytes = o->budgets[b].bytes;
                if (xlkv_throughput_measure(m, &tp, o->prompt[s], o->gen[s], f) != XLKV_OK) status = 1;
                fprintf(stderr, "  %-20s %d+%d %-8s batch %5d %10.1f tokens/s (search %d engines %.1f s, run %.1f s)%s%s\n",
                        o->maps[i], o->prompt[s], o->gen[s], o->budgets[b].name, f->batch, f->tokens_per_s, f->probes,
                        f->search_seconds, f->seconds, f->error[0] ? ": " : f->complete ? "" : ": PARTIAL",
                        f->error[0] ? f->error : "");
                if (json) write_json(json, o, o->maps[i], m, s, &o->budgets[b], f, date);
            }
        if (loaded) xlkv_model_free(loaded);
        else xlkv_bench_map_view_free(&view);
    }

    /* the table: a row per map, a column per (setting, budget) */
    char groups_text[MAX_ITEMS * MAX_ITEMS][48];
    const char *groups[MAX_ITEMS * MAX_ITEMS];
    for (int s = 0; s < o->n_settings; s++)
        for (int b = 0; b < o->n_budgets; b++) {
            const int g = s * o->n_budgets + b;
            snprintf(groups_text[g], sizeof groups_text[g], "%d+%d %s", o->prompt[s], o->gen[s], o->budgets[b].name);
            groups[g] = groups_text[g];
        }
    printf("throughput, tokens/s (batch); * = partial (time limit), - = not run\n%-24s %3s", "map", "KV");
    for (int g = 0; g < n_groups; g++) printf(" %22s", groups[g]);
    printf("\n");
    for (int i = 0; i < o->n_maps; i++) {
        printf("%-24s %3d", o->maps[i], kv_layers[i]);
        for (int g = 0; g < n_groups; g++) {
            const xlkv_throughput_figures *f = &results[g][i];
            char cell[48];
            if (f->tokens > 0) snprintf(cell, sizeof cell, "%.1f%s (%d)", f->tokens_per_s, f->complete ? "" : "*", f->batch);
            else snprintf(cell, sizeof cell, "- (%d)", f->batch);
            printf(" %22s", cell);
        }
        printf("\n");
    }

    if (o->svg_path) {
        double tps[MAX_ITEMS * MAX_ITEMS * MAX_ITEMS];
        int batch[MAX_ITEMS * MAX_ITEMS * MAX_ITEMS];
        for (int g = 0; g < n_groups; g++)
            for (int i = 0; i < o->n_maps; i++) {
                tps[g * o->n_maps + i] = results[g][i].tokens_per_s;
                batch[g * o->n_maps + i] = results[g][i].batch;
            }
        char title[256];
        snprintf(title, sizeof title, "xlkv throughput: %s on %s", o->model_path ? o->model_path : o->shape,
                 o->device);
        FILE *svg = fopen(o->svg_path, "w");
        if (!svg || xlkv_throughput_svg(svg, title, o->maps, o->n_maps, groups, n_groups, tps, batch) != XLKV_OK) {
            fprintf(stderr, "xlkv %s: cannot write %s%s%s\n", COMMAND, o->svg_path, svg ? ": " : "",
                    svg ? xlkv_last_error() : "");
            status = 1;
        }
        if (svg && fclose(svg) != 0) status = 1;
    }
    if (json) fclose(json);
    xlkv_model_free(base);
    return status;
}

int cmd_bench(int argc, char **argv) {
    if (argc < 2 || strcmp(argv[1], "throughput") != 0) {
        if (argc >= 2 && (!strcmp(argv[1], "-h") || !strcmp(argv[1], "--help"))) {
            print_usage(stdout);
            return 0;
        }
        fprintf(stderr, "xlkv bench: %s (the one benchmark is: throughput)\n",
                argc < 2 ? "which benchmark?" : "unknown benchmark");
        print_usage(stderr);
        return EXIT_USAGE;
    }
    bench_options o;
    const int parsed = parse_options(argc - 1, argv + 1, &o);
    const int status = parsed == CLI_ARGS_PARSED ? run(&o) : parsed;
    free(o.maps_text);
    return status;
}
