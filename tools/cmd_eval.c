/* tools/cmd_eval: `xlkv eval`: zero-shot tasks scored as lm-evaluation-harness scores them (src/eval/task_score.h):
 * acc and acc_norm for multiple choice, LAMBADA greedy accuracy and perplexity. A table on stdout, progress on
 * stderr, JSON with --json. */
#include <cjson/cJSON.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cli_args.h"
#include "cli_common.h"
#include "cli_eval_runner.h"
#include "commands.h"
#include "core/file.h"
#include "core/json_file.h"
#include "core/timing.h"
#include "eval/task_score.h"
#include "eval/tasks.h"
#include "eval_progress.h"

#define DEFAULT_DATA_DIR "../shared/data/eval"

static void print_known_tasks(FILE *out) {
    int n = 0;
    const xlkv_task_info *tasks = xlkv_task_list(&n);
    for (int i = 0; i < n; i++) fprintf(out, "%s%s", i ? ", " : "", tasks[i].name);
}

static void usage(FILE *out) {
    fprintf(out, "usage: xlkv eval -m MODEL --tasks LIST|all [--data-dir DIR] [--limit N] [--json OUT]\n"
                 "                 [--on-error stop|skip] [options]\n\n"
                 "Zero-shot tasks as lm-evaluation-harness scores them: acc (argmax of summed log-likelihood) and\n"
                 "acc_norm (divided by the choice's bytes); LAMBADA: greedy accuracy of the final word and perplexity.\n\n"
                 "      --tasks LIST          comma-separated task names, or all: ");
    print_known_tasks(out);
    fprintf(out, "\n"
                 "      --data-dir DIR        task files (default %s)\n"
                 "      --limit N             score only the first N items of each task\n"
                 "      --on-error MODE       malformed data lines: stop (default) or skip (counted, reported)\n"
                 "      --batch-size N        sequences scored per call on a device (default 32; results do not depend on it)\n"
                 "      --json OUT            also write the results as JSON to OUT\n",
            DEFAULT_DATA_DIR);
    cli_print_model_help(out);
}

/* Splits "a,b,c" (or "all") into task pointers; reports an unknown name with the known ones. */
static bool parse_tasks(const char *command, const char *list, const xlkv_task_info ***out, int *out_n) {
    int n_known = 0;
    const xlkv_task_info *known = xlkv_task_list(&n_known);
    int cap = 1;
    for (const char *p = list; *p; p++) cap += *p == ',';
    if (cap < n_known) cap = n_known;
    const xlkv_task_info **tasks = malloc((size_t)cap * sizeof *tasks);
    if (!tasks) return false;
    int n = 0;
    if (!strcmp(list, "all")) {
        for (int i = 0; i < n_known; i++) tasks[n++] = &known[i];
    } else {
        for (const char *p = list; *p;) {
            size_t len = strcspn(p, ",");
            char name[64];
            snprintf(name, sizeof name, "%.*s", (int)(len < sizeof name - 1 ? len : sizeof name - 1), p);
            const xlkv_task_info *task = len < sizeof name ? xlkv_task_find(name) : NULL;
            if (!task) {
                fprintf(stderr, "xlkv %s: unknown task '%.*s'; known tasks: ", command, (int)len, p);
                print_known_tasks(stderr);
                fprintf(stderr, " (or all)\n");
                free(tasks);
                return false;
            }
            bool seen = false;
            for (int i = 0; i < n; i++) seen |= tasks[i] == task;
            if (!seen) tasks[n++] = task;
            p += len;
            if (*p == ',') p++;
        }
    }
    if (n == 0) {
        fprintf(stderr, "xlkv %s: --tasks names no task\n", command);
        free(tasks);
        return false;
    }
    *out = tasks;
    *out_n = n;
    return true;
}

typedef struct task_row {
    const xlkv_task_info *task;
    int n;
    int skipped;
    int cut; /* continuations longer than the context, only their end scored */
    double acc, acc_norm, perplexity, seconds;
} task_row;

static double binomial_stderr(double p, int n) { return n > 1 ? sqrt(p * (1.0 - p) / (double)(n - 1)) : NAN; }

static void add_number_or_null(cJSON *obj, const char *key, double v) {
    if (isnan(v)) cJSON_AddNullToObject(obj, key);
    else cJSON_AddNumberToObject(obj, key, v);
}

static bool write_json(const char *path, const cli_model_options *mo, const char *data_dir, int limit,
                       const task_row *rows, int n_rows) {
    cJSON *root = cJSON_CreateObject();
    cJSON_AddStringToObject(root, "command", "eval");
    cJSON_AddStringToObject(root, "model", mo->model);
    cJSON_AddStringToObject(root, "layer_types", cli_layer_map_label(mo));
    cJSON_AddStringToObject(root, "data_dir", data_dir);
    cJSON_AddNumberToObject(root, "limit", limit);
    cJSON *results = cJSON_AddObjectToObject(root, "results");
    for (int i = 0; i < n_rows; i++) {
        cJSON *r = cJSON_AddObjectToObject(results, rows[i].task->name);
        cJSON_AddNumberToObject(r, "n", rows[i].n);
        cJSON_AddNumberToObject(r, "acc", rows[i].acc);
        cJSON_AddNumberToObject(r, "acc_stderr", binomial_stderr(rows[i].acc, rows[i].n));
        add_number_or_null(r, "acc_norm", rows[i].acc_norm);
        add_number_or_null(r, "acc_norm_stderr", isnan(rows[i].acc_norm) ? NAN : binomial_stderr(rows[i].acc_norm, rows[i].n));
        add_number_or_null(r, "perplexity", rows[i].perplexity);
        cJSON_AddNumberToObject(r, "skipped", rows[i].skipped);
        cJSON_AddNumberToObject(r, "continuations_cut", rows[i].cut);
        cJSON_AddNumberToObject(r, "seconds", rows[i].seconds);
    }
    bool ok = xlkv_write_json_file(path, root) == XLKV_OK;
    cJSON_Delete(root);
    if (!ok) fprintf(stderr, "xlkv eval: cannot write %s\n", path);
    return ok;
}

static void print_table(const task_row *rows, int n_rows) {
    printf("%-16s %6s %8s %8s %10s\n", "task", "n", "acc", "acc_norm", "ppl");
    for (int i = 0; i < n_rows; i++) {
        char norm[16] = "-", ppl[24] = "-";
        if (!isnan(rows[i].acc_norm)) snprintf(norm, sizeof norm, "%.4f", rows[i].acc_norm);
        if (!isnan(rows[i].perplexity)) snprintf(ppl, sizeof ppl, "%.3f", rows[i].perplexity);
        printf("%-16s %6d %8.4f %8s %10s\n", rows[i].task->name, rows[i].n, rows[i].acc, norm, ppl);
    }
}

/* Loads and scores one task into *row; false after reporting a failure. */
static bool run_task(const char *command, const xlkv_eval_model *eval_model, const xlkv_tokenizer *tok,
                     const xlkv_task_info *task, const char *data_dir, int limit, xlkv_on_error on_error,
                     task_row *row) {
    char *path = xlkv_path_join(data_dir, task->file);
    xlkv_task_data data = {0};
    xlkv_task_result result = {0};
    bool ok = false;
    double start = xlkv_now_seconds();
    if (!path) goto done;
    if (xlkv_task_load(task, path, on_error, limit, &data) != XLKV_OK) {
        fprintf(stderr, "xlkv %s: %s: %s\n", command, task->name, xlkv_last_error());
        goto done;
    }
    if (data.n_skipped)
        fprintf(stderr, "xlkv %s: %s: skipped %d malformed item%s (first: %s)\n", command, task->name, data.n_skipped,
                data.n_skipped == 1 ? "" : "s", data.first_skipped ? data.first_skipped : "?");
    char label[64];
    snprintf(label, sizeof label, "%s requests", task->name);
    eval_progress progress;
    eval_progress_start(&progress, command, label, 0);
    xlkv_status status = xlkv_task_evaluate(eval_model, tok, task, &data, eval_progress_report, &progress, &result);
    eval_progress_finish(&progress);
    if (status != XLKV_OK) {
        fprintf(stderr, "xlkv %s: %s\n", command, xlkv_last_error());
        goto done;
    }
    if (result.n_cut_continuations)
        fprintf(stderr, "xlkv %s: %s: %d continuation%s longer than the model's %d positions: only their last %d tokens "
                        "scored\n",
                command, task->name, result.n_cut_continuations, result.n_cut_continuations == 1 ? "" : "s",
                eval_model->max_len, eval_model->max_len);
    *row = (task_row){.task = task, .n = result.n_examples, .skipped = data.n_skipped, .cut = result.n_cut_continuations,
                      .acc = result.acc,
                      .acc_norm = result.acc_norm, .perplexity = result.perplexity,
                      .seconds = xlkv_now_seconds() - start};
    ok = true;
done:
    xlkv_task_result_free(&result);
    xlkv_task_data_free(&data);
    free(path);
    return ok;
}

int cmd_eval(int argc, char **argv) {
    const char *command = "eval";
    cli_model_options mo;
    cli_model_options_init(&mo);
    const char *task_list = NULL, *data_dir = DEFAULT_DATA_DIR, *json = NULL;
    int limit = 0, batch_size = 0;
    int on_error_choice = 0;
    const cli_flag flags[] = {
        CLI_STRING_FLAG(NULL, "--tasks", &task_list),
        CLI_STRING_FLAG(NULL, "--data-dir", &data_dir),
        CLI_STRING_FLAG(NULL, "--json", &json),
        CLI_INT_FLAG(NULL, "--batch-size", &batch_size, 1, 4096),
        CLI_INT_FLAG(NULL, "--limit", &limit, 1, 1 << 30),
        CLI_CHOICE_FLAG(NULL, "--on-error", &on_error_choice, "stop", "skip"),
    };
    const int parsed =
        cli_parse_args(&(cli_command_line){.command = command, .usage = usage, .model = &mo, CLI_FLAGS(flags)}, argc, argv);
    if (parsed != CLI_ARGS_PARSED) return parsed;
    const xlkv_on_error on_error = on_error_choice == 0 ? XLKV_ON_ERROR_STOP : XLKV_ON_ERROR_SKIP;
    if (!task_list) {
        fprintf(stderr, "xlkv %s: no tasks given (--tasks LIST or --tasks all); see xlkv %s --help\n", command, command);
        return 2;
    }
    const xlkv_task_info **tasks = NULL;
    int n_tasks = 0;
    if (!parse_tasks(command, task_list, &tasks, &n_tasks)) return 2;
    if (!xlkv_is_directory(data_dir)) {
        fprintf(stderr, "xlkv %s: data directory %s not found (--data-dir DIR)\n", command, data_dir);
        free(tasks);
        return 1;
    }
    int rc = 1, n_rows = 0;
    xlkv_model *model = NULL;
    cli_eval_runner runner = {0};
    task_row *rows = calloc((size_t)n_tasks, sizeof *rows);
    if (!rows) goto done;
    if (!cli_load_model(command, &mo, &model)) goto done;
    if (!cli_model_has_tokenizer(command, &mo, model)) goto done;
    if (!cli_eval_runner_open(command, &mo, model, mo.n_ctx > 0 ? mo.n_ctx : model->hp.max_seq_len, batch_size, &runner))
        goto done;
    xlkv_eval_model eval_model = runner.model;
    for (int t = 0; t < n_tasks; t++) {
        if (!run_task(command, &eval_model, model->tokenizer, tasks[t], data_dir, limit, on_error, &rows[n_rows]))
            goto done;
        n_rows++;
    }
    print_table(rows, n_rows);
    rc = json && !write_json(json, &mo, data_dir, limit, rows, n_rows) ? 1 : 0;
done:
    if (rc != 0 && n_rows > 0) print_table(rows, n_rows); /* what finished before the failure */
    free(rows);
    free(tasks);
    cli_eval_runner_close(&runner);
    xlkv_model_free(model);
    return rc;
}
