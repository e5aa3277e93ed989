/* tools/cmd_search: `xlkv search`: the KVSharer search (SEMANTICS.md section 7, src/search/kvsharer.h) on a model
 * and a calibration text file. Calibration texts are the file's paragraphs (separated by blank lines), tokenized with
 * BOS first; paragraphs shorter than --calib-tokens are skipped and longer ones cut to it, so every text has the same
 * length; the first --calib-texts of them are used. Writes OUT/map.json (for --kv-map), OUT/report.json and
 * OUT/distances.svg; progress on stderr, a summary on stdout. */
#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "cli_args.h"
#include "cli_common.h"
#include "commands.h"
#include "core/json_file.h"
#include "core/status.h"
#include "core/timing.h"
#include "eval/compressed_file.h"
#include "search/kvsharer.h"
#include "search/kvsharer_report.h"
#include "search/kvsharer_svg.h"

#define DEFAULT_TEXTS 30
#define DEFAULT_TOKENS 64

static void usage(FILE *out) {
    fprintf(out,
            "usage: xlkv search -m MODEL --calib FILE (--share N | --rate R) [options]\n\n"
            "KVSharer: find layers that can reuse the KV cache of a dissimilar earlier layer (SEMANTICS.md section 7).\n"
            "Per-layer mean post-RoPE K and V over the calibration texts, pairwise distances, pairs tried in the\n"
            "chosen order, each accepted when the mapped model's score on the calibration texts exceeds the threshold.\n\n"
            "  --calib FILE          calibration text (plain, .xz or .bz2); paragraphs separated by blank lines\n"
            "  --calib-texts N       paragraphs used (default %d, the paper's 30)\n"
            "  --calib-tokens T      tokens per paragraph, BOS included (default %d); shorter paragraphs are skipped\n"
            "  --share N             stop at N shared layers (1 .. layers - 1)\n"
            "  --rate R              compression rate in (0, 1): N = R x layers rounded to the nearest whole layer,\n"
            "                        halves rounded down (5 layers: 0.25 -> 1, 0.5 -> 2)\n"
            "  --threshold T         accept a pair when its score > T (default 0.5, the paper's)\n"
            "  --order O             dissimilar (default, the paper's) | similar | random\n"
            "  --seed S              seed of the random order (default 0)\n"
            "  --score S             cosine (default, the paper's: final hidden states vs the original) |\n"
            "                        ppl (ppl_original / ppl_mapped on the calibration texts; not the paper's)\n"
            "  --out DIR             output directory, created if needed (default kvsharer): map.json, report.json, distances.svg\n\n",
            DEFAULT_TEXTS, DEFAULT_TOKENS);
    cli_print_model_help(out);
}

typedef struct calibration_texts {
    int **ids;
    xlkv_token_span *spans;
    int n;
    int paragraphs_seen;
} calibration_texts;

static void calibration_texts_free(calibration_texts *c) {
    for (int t = 0; t < c->n; t++) free(c->ids[t]);
    free(c->ids);
    free(c->spans);
    memset(c, 0, sizeof *c);
}

/* The next paragraph of text starting at *cursor (NUL-terminated in place); NULL at the end. Blank lines (only
 * spaces, tabs, \r) separate paragraphs. */
static char *next_paragraph(char **cursor) {
    char *p = *cursor;
    for (;;) { /* skip blank lines */
        char *line_end = strchr(p, '\n');
        size_t len = line_end ? (size_t)(line_end - p) : strlen(p);
        if (strspn(p, " \t\r") < len) break;
        if (!line_end) {
            *cursor = p + len;
            return NULL;
        }
        p = line_end + 1;
    }
    char *start = p;
    for (;;) {
        char *line_end = strchr(p, '\n');
        if (!line_end) {
            *cursor = p + strlen(p);
            return start;
        }
        char *next = line_end + 1;
        char *next_end = strchr(next, '\n');
        size_t len = next_end ? (size_t)(next_end - next) : strlen(next);
        if (strspn(next, " \t\r") >= len) { /* the next line is blank: the paragraph ends here */
            *line_end = '\0';
            *cursor = next;
            return start;
        }
        p = next;
    }
}

static bool read_calibration(const char *command, const char *path, const xlkv_model *model, int n_texts,
                             int n_tokens, calibration_texts *out) {
    memset(out, 0, sizeof *out);
    char *text = NULL;
    size_t size = 0;
    if (xlkv_read_data_file(path, &text, &size) != XLKV_OK) {
        fprintf(stderr, "xlkv %s: %s\n", command, xlkv_last_error());
        return false;
    }
    out->ids = calloc((size_t)n_texts, sizeof *out->ids);
    out->spans = calloc((size_t)n_texts, sizeof *out->spans);
    bool ok = out->ids && out->spans;
    char *cursor = text, *paragraph;
    while (ok && out->n < n_texts && (paragraph = next_paragraph(&cursor))) {
        out->paragraphs_seen++;
        int *ids = NULL, n = 0;
        if (xlkv_tokenizer_encode(model->tokenizer, paragraph, true, &ids, &n) != XLKV_OK) {
            fprintf(stderr, "xlkv %s: %s: paragraph %d: %s\n", command, path, out->paragraphs_seen, xlkv_last_error());
            ok = false;
            break;
        }
        if (n < n_tokens) {
            free(ids);
            continue;
        }
        out->ids[out->n] = ids;
        out->spans[out->n] = (xlkv_token_span){ids, n_tokens};
        out->n++;
    }
    free(text);
    if (ok && out->n == 0) {
        fprintf(stderr, "xlkv %s: %s: no paragraph has %d tokens (%d paragraphs read); lower --calib-tokens\n", command,
                path, n_tokens, out->paragraphs_seen);
        ok = false;
    }
    if (!ok) calibration_texts_free(out);
    return ok;
}

static void print_progress(void *user, const xlkv_kvsharer_trial *t, int index, int n_pairs) {
    const xlkv_kvsharer_params *p = user;
    if (t->decision == XLKV_KVSHARER_ALREADY_SHARES) {
        fprintf(stderr, "xlkv search: pair %d/%d: layer %d -> %d: skipped, layer %d already shares\n", index + 1,
                n_pairs, t->layer, t->source, t->layer);
        return;
    }
    fprintf(stderr, "xlkv search: pair %d/%d: layer %d -> %d (root %d), distance %.5g, %s %.6f: %s (%d/%d shared)\n",
            index + 1, n_pairs, t->layer, t->source, t->root, t->distance, xlkv_kvsharer_score_name(p->score),
            t->score, t->decision == XLKV_KVSHARER_ACCEPTED ? "accepted" : "rejected", t->shared_after, p->n_share);
}

/* mkdir -p: creates dir and any missing parents. */
static int make_directories(const char *dir) {
    char *path = strdup(dir);
    if (!path) return -1;
    int rc = 0;
    for (char *p = path + 1; rc == 0 && *p; p++) {
        if (*p != '/') continue;
        *p = '\0';
        if (mkdir(path, 0777) != 0 && errno != EEXIST) rc = -1;
        *p = '/';
    }
    if (rc == 0 && mkdir(path, 0777) != 0 && errno != EEXIST) rc = -1;
    free(path);
    return rc;
}

static bool write_outputs(const char *command, const char *out_dir, const cli_model_options *mo, const char *calib,
                          const calibration_texts *texts, double rate, const xlkv_kvsharer_params *params,
                          const xlkv_kvsharer_result *result, double seconds) {
    if (make_directories(out_dir) != 0) {
        fprintf(stderr, "xlkv %s: cannot create %s: %s\n", command, out_dir, strerror(errno));
        return false;
    }
    size_t cap = strlen(out_dir) + 32;
    char *path = malloc(cap);
    cJSON *map = xlkv_kvsharer_map_json(result->kv_src, result->n_layers);
    cJSON *report = xlkv_kvsharer_report_json(result, params);
    bool ok = path && map && report;
    if (ok) {
        cJSON_AddStringToObject(report, "command", "search");
        cJSON_AddStringToObject(report, "model", mo->model);
        cJSON *cal = cJSON_GetObjectItem(report, "calibration");
        cJSON_AddStringToObject(cal, "file", calib);
        cJSON_AddStringToObject(cal, "split", "paragraphs separated by blank lines, BOS first, paragraphs shorter "
                                              "than tokens_per_text skipped, longer ones cut");
        cJSON_AddNumberToObject(cal, "paragraphs_read", texts->paragraphs_seen);
        cJSON *params_json = cJSON_GetObjectItem(report, "params");
        if (rate > 0) cJSON_AddNumberToObject(params_json, "rate", rate);
        cJSON_AddNumberToObject(report, "seconds", seconds);
        snprintf(path, cap, "%s/map.json", out_dir);
        ok = xlkv_write_json_file(path, map) == XLKV_OK;
        snprintf(path, cap, "%s/report.json", out_dir);
        ok = ok && xlkv_write_json_file(path, report) == XLKV_OK;
        snprintf(path, cap, "%s/distances.svg", out_dir);
        FILE *svg = ok ? fopen(path, "w") : NULL;
        if (ok && !svg) ok = xlkv_fail(XLKV_E_IO, "%s: cannot write", path) == XLKV_OK;
        if (svg) {
            char title[160];
            snprintf(title, sizeof title, "KVSharer layer distances (%d texts x %d tokens), %s order", texts->n,
                     result->calibration.n_tokens, xlkv_kvsharer_order_name(params->order));
            ok = xlkv_kvsharer_svg(svg, title, result->calibration.distance, result->n_layers, result->kv_src) == XLKV_OK;
            if (fclose(svg) != 0 && ok) ok = xlkv_fail(XLKV_E_IO, "%s: cannot write", path) == XLKV_OK;
        }
        if (!ok) fprintf(stderr, "xlkv %s: %s\n", command, xlkv_last_error());
    } else {
        fprintf(stderr, "xlkv %s: out of memory\n", command);
    }
    free(path);
    cJSON_Delete(map);
    cJSON_Delete(report);
    return ok;
}

/* The flags a table cannot say: --rate (a fraction in (0, 1)) and --threshold, real numbers. */
typedef struct search_numbers {
    double *rate;
    xlkv_kvsharer_params *params;
} search_numbers;

static cli_parse_result parse_search_number(void *own, const char *command, int argc, char **argv, int *i) {
    search_numbers *n = own;
    const char *arg = argv[*i], *v = NULL;
    if (!strcmp(arg, "--rate")) {
        if (!(v = cli_value(command, argc, argv, i)) || !cli_parse_double(command, arg, v, n->rate)) return CLI_USAGE_ERROR;
        if (!(*n->rate > 0.0 && *n->rate < 1.0)) {
            fprintf(stderr, "xlkv %s: --rate expects a fraction in (0, 1), got '%s'\n", command, v);
            return CLI_USAGE_ERROR;
        }
        return CLI_CONSUMED;
    }
    if (!strcmp(arg, "--threshold")) {
        if (!(v = cli_value(command, argc, argv, i)) || !cli_parse_double(command, arg, v, &n->params->threshold))
            return CLI_USAGE_ERROR;
        return CLI_CONSUMED;
    }
    return CLI_NOT_MINE;
}

int cmd_search(int argc, char **argv) {
    const char *command = "search";
    cli_model_options mo;
    cli_model_options_init(&mo);
    xlkv_kvsharer_params params = xlkv_kvsharer_default_params();
    const char *calib = NULL, *out_dir = "kvsharer";
    int n_texts = DEFAULT_TEXTS, n_tokens = DEFAULT_TOKENS, share = 0;
    double rate = 0.0;
    /* --order and --score: indices into these, in the order of their choices below */
    static const xlkv_kvsharer_order orders[] = {XLKV_KVSHARER_DISSIMILAR, XLKV_KVSHARER_SIMILAR, XLKV_KVSHARER_RANDOM};
    static const xlkv_kvsharer_score scores[] = {XLKV_KVSHARER_SCORE_COSINE, XLKV_KVSHARER_SCORE_PPL};
    int order = -1, score = -1, seed = -1;
    const cli_flag flags[] = {
        CLI_STRING_FLAG(NULL, "--calib", &calib),
        CLI_STRING_FLAG(NULL, "--out", &out_dir),
        CLI_INT_FLAG(NULL, "--calib-texts", &n_texts, 1, 1 << 20),
        CLI_INT_FLAG(NULL, "--calib-tokens", &n_tokens, 2, 1 << 24),
        CLI_INT_FLAG(NULL, "--share", &share, 1, 1 << 20),
        CLI_INT_FLAG(NULL, "--seed", &seed, 0, 2147483647),
        CLI_CHOICE_FLAG(NULL, "--order", &order, "dissimilar", "similar", "random"),
        CLI_CHOICE_FLAG(NULL, "--score", &score, "cosine", "ppl"),
    };
    const int parsed = cli_parse_args(&(cli_command_line){.command = command, .usage = usage, .model = &mo,
                                                          CLI_FLAGS(flags), .parse_own = parse_search_number,
                                                          .own = &(search_numbers){&rate, &params}},
                                      argc, argv);
    if (parsed != CLI_ARGS_PARSED) return parsed;
    if (order >= 0) params.order = orders[order];
    if (score >= 0) params.score = scores[score];
    if (seed >= 0) params.seed = (unsigned long long)seed;
    if (!calib) {
        fprintf(stderr, "xlkv %s: no calibration text given (--calib FILE); see xlkv %s --help\n", command, command);
        return 2;
    }
    if ((share > 0) == (rate > 0.0)) {
        fprintf(stderr, "xlkv %s: give exactly one of --share N and --rate R\n", command);
        return 2;
    }
    if (mo.layer_types || mo.kv_map) {
        fprintf(stderr, "xlkv %s: the search starts from the standard map; --layer-types and --kv-map do not apply\n",
                command);
        return 2;
    }
    if (strcmp(mo.device, "cpu") != 0) {
        fprintf(stderr, "xlkv %s: runs on the cpu only\n", command);
        return 2;
    }
    mo.layer_types = "standard"; /* every layer with its own K/V, whatever the checkpoint says */
    int rc = 1;
    xlkv_model *model = NULL;
    calibration_texts texts = {0};
    xlkv_kvsharer_result result = {0};
    if (!cli_load_model(command, &mo, &model)) goto done;
    mo.layer_types = NULL;
    const int L = model->hp.n_layers;
    if (rate > 0.0) share = (int)ceil(rate * L - 0.5); /* nearest whole layer, halves rounded down */
    if (share < 1 || share > L - 1) {
        fprintf(stderr, "xlkv %s: %d shared layers%s; a %d-layer model can share 1 to %d\n", command, share,
                rate > 0.0 ? " (from --rate)" : "", L, L - 1);
        goto done;
    }
    params.n_share = share;
    params.n_threads = mo.n_threads;
    params.progress = print_progress;
    params.progress_user = &params;
    if (!cli_model_has_tokenizer(command, &mo, model)) goto done;
    if (n_tokens > model->hp.max_seq_len) {
        fprintf(stderr, "xlkv %s: --calib-tokens %d exceeds the model's context of %d\n", command, n_tokens,
                model->hp.max_seq_len);
        goto done;
    }
    if (!read_calibration(command, calib, model, n_texts, n_tokens, &texts)) goto done;
    if (texts.n < n_texts)
        fprintf(stderr, "xlkv %s: warning: only %d paragraphs of %d tokens in %s (asked for %d)\n", command, texts.n,
                n_tokens, calib, n_texts);
    fprintf(stderr, "xlkv %s: %d layers, target %d shared (%.1f%%), %s order, %s score, threshold %g; calibration %d "
                    "texts x %d tokens from %s\n",
            command, L, share, 100.0 * share / L, xlkv_kvsharer_order_name(params.order),
            xlkv_kvsharer_score_name(params.score), params.threshold, texts.n, n_tokens, calib);
    double start = xlkv_now_seconds();
    if (xlkv_kvsharer_search(model, texts.spans, texts.n, &params, &result) != XLKV_OK) {
        fprintf(stderr, "xlkv %s: %s\n", command, xlkv_last_error());
        goto done;
    }
    double seconds = xlkv_now_seconds() - start;
    if (!write_outputs(command, out_dir, &mo, calib, &texts, rate, &params, &result, seconds)) goto done;
    cJSON *map = xlkv_kvsharer_map_json(result.kv_src, L);
    char *map_text = map ? cJSON_PrintUnformatted(map) : NULL;
    char before[32], after[32];
    printf("map %s  (%d of %d layers shared%s; %s %.6f)\n", map_text ? map_text : "?", result.n_shared, L,
           result.target_reached ? "" : ", target not reached", xlkv_kvsharer_score_name(params.score),
           result.final_score);
    printf("KV per token (f32): %s -> %s (%.1f%% less); %d pairs tried in %.1f s; files in %s/\n",
           cli_format_bytes((double)result.kv_bytes_per_token_before, before, sizeof before),
           cli_format_bytes((double)result.kv_bytes_per_token_after, after, sizeof after),
           100.0 * (1.0 - (double)result.kv_bytes_per_token_after / (double)result.kv_bytes_per_token_before),
           result.n_trials, seconds, out_dir);
    free(map_text);
    cJSON_Delete(map);
    rc = 0;
done:
    xlkv_kvsharer_result_free(&result);
    calibration_texts_free(&texts);
    xlkv_model_free(model);
    return rc;
}
