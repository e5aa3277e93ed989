/* tools/cmd_perplexity: `xlkv perplexity`: token-level perplexity of a text file (plain, .xz or .bz2; books split at
 * 0x1E lines, each its own stream) with sliding windows of --ctx tokens advancing by --stride (src/eval/perplexity.h
 * says exactly which tokens each window scores). Result on stdout, progress with ETA on stderr, JSON with --json. */
#include <cjson/cJSON.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cli_args.h"
#include "cli_common.h"
#include "cli_eval_runner.h"
#include "commands.h"
#include "core/json_file.h"
#include "core/timing.h"
#include "eval/perplexity.h"
#include "eval/text_corpus.h"
#include "eval_progress.h"

#define DEFAULT_MAX_CTX 512

static void usage(FILE *out) {
    fprintf(out, "usage: xlkv perplexity -m MODEL -f FILE [--ctx N] [--stride S] [--max-tokens N] [--json OUT] [options]\n\n"
                 "Token-level perplexity of FILE (plain text, .xz or .bz2; a line holding only 0x1E separates books,\n"
                 "each scored as its own stream with BOS first). Windows of N tokens advance by S; each window scores\n"
                 "only the tokens no earlier window scored (the Hugging Face fixed-length-model recipe).\n\n"
                 "  -f, --file FILE           text to score\n"
                 "      --ctx N               window length (default: min(model max context, %d))\n"
                 "      --stride S            window advance (default: N / 2)\n"
                 "      --max-tokens N        score only the first N tokens of the file\n"
                 "      --batch-size N        sequences scored per call on a device (default 32; results do not depend on it)\n"
                 "      --json OUT            also write the result as JSON to OUT\n",
            DEFAULT_MAX_CTX);
    cli_print_model_help(out);
}

static bool write_json(const char *path, const cli_model_options *mo, const char *file, int ctx, int stride,
                       long max_tokens, const xlkv_token_streams *streams, const xlkv_eval_ppl *acc, double seconds) {
    cJSON *root = cJSON_CreateObject();
    cJSON_AddStringToObject(root, "command", "perplexity");
    cJSON_AddStringToObject(root, "model", mo->model);
    cJSON_AddStringToObject(root, "layer_types", cli_layer_map_label(mo));
    cJSON_AddStringToObject(root, "file", file);
    cJSON_AddNumberToObject(root, "ctx", ctx);
    cJSON_AddNumberToObject(root, "stride", stride);
    cJSON_AddNumberToObject(root, "max_tokens", (double)max_tokens);
    cJSON_AddNumberToObject(root, "streams", streams->n_streams);
    cJSON_AddNumberToObject(root, "tokens", (double)streams->n_tokens);
    cJSON_AddNumberToObject(root, "tokens_scored", (double)acc->n_scored);
    cJSON_AddNumberToObject(root, "windows", (double)acc->n_windows);
    cJSON_AddNumberToObject(root, "nll_sum", acc->nll_sum);
    cJSON_AddNumberToObject(root, "nll_per_token", acc->nll_sum / (double)acc->n_scored);
    cJSON_AddNumberToObject(root, "ppl", xlkv_eval_ppl_value(acc));
    cJSON_AddNumberToObject(root, "seconds", seconds);
    bool ok = xlkv_write_json_file(path, root) == XLKV_OK;
    cJSON_Delete(root);
    if (!ok) fprintf(stderr, "xlkv perplexity: cannot write %s\n", path);
    return ok;
}

int cmd_perplexity(int argc, char **argv) {
    const char *command = "perplexity";
    cli_model_options mo;
    cli_model_options_init(&mo);
    const char *file = NULL, *json = NULL;
    int ctx = 0, stride = 0, max_tokens = 0, batch_size = 0;
    const cli_flag flags[] = {
        CLI_STRING_FLAG("-f", "--file", &file),
        CLI_STRING_FLAG(NULL, "--json", &json),
        CLI_INT_FLAG(NULL, "--ctx", &ctx, 2, 1 << 24),
        CLI_INT_FLAG(NULL, "--stride", &stride, 1, 1 << 24),
        CLI_INT_FLAG(NULL, "--batch-size", &batch_size, 1, 4096),
        CLI_INT_FLAG(NULL, "--max-tokens", &max_tokens, 2, 1 << 30),
    };
    const int parsed =
        cli_parse_args(&(cli_command_line){.command = command, .usage = usage, .model = &mo, CLI_FLAGS(flags)}, argc, argv);
    if (parsed != CLI_ARGS_PARSED) return parsed;
    if (!file) {
        fprintf(stderr, "xlkv %s: no text given (-f FILE); see xlkv %s --help\n", command, command);
        return 2;
    }
    int rc = 1;
    xlkv_model *model = NULL;
    cli_eval_runner runner = {0};
    xlkv_token_streams streams = {0};
    if (!cli_load_model(command, &mo, &model)) goto done;
    if (!cli_model_has_tokenizer(command, &mo, model)) goto done;
    const int max_ctx = model->hp.max_seq_len;
    if (ctx == 0) ctx = max_ctx < DEFAULT_MAX_CTX ? max_ctx : DEFAULT_MAX_CTX;
    if (ctx > max_ctx) {
        fprintf(stderr, "xlkv %s: --ctx %d exceeds the model's context of %d positions\n", command, ctx, max_ctx);
        goto done;
    }
    if (stride == 0) stride = ctx / 2;
    if (stride > ctx) {
        fprintf(stderr, "xlkv %s: --stride %d exceeds --ctx %d\n", command, stride, ctx);
        goto done;
    }
    if (!cli_eval_runner_open(command, &mo, model, ctx /* the cache holds one window */, batch_size, &runner)) goto done;
    if (xlkv_eval_tokenize_text_file(file, model->tokenizer, model->hp.vocab_size, max_tokens, &streams) != XLKV_OK) {
        fprintf(stderr, "xlkv %s: %s\n", command, xlkv_last_error());
        goto done;
    }
    fprintf(stderr, "xlkv %s: %s: %ld tokens in %d stream%s; ctx %d, stride %d\n", command, file, streams.n_tokens,
            streams.n_streams, streams.n_streams == 1 ? "" : "s", ctx, stride);
    xlkv_eval_model eval_model = runner.model;
    xlkv_eval_ppl acc = {0};
    eval_progress progress;
    eval_progress_start(&progress, command, "tokens", streams.n_tokens);
    double start = xlkv_now_seconds();
    for (int s = 0; s < streams.n_streams; s++) {
        if (xlkv_eval_perplexity(&eval_model, streams.tokens[s], streams.lengths[s], ctx, stride, eval_progress_report,
                                 &progress, &acc) != XLKV_OK) {
            eval_progress_finish(&progress);
            fprintf(stderr, "xlkv %s: stream %d: %s\n", command, s + 1, xlkv_last_error());
            goto done;
        }
        progress.base += streams.lengths[s];
    }
    eval_progress_finish(&progress);
    double seconds = xlkv_now_seconds() - start;
    if (acc.n_scored == 0) {
        fprintf(stderr, "xlkv %s: nothing to score (every stream is shorter than 2 tokens)\n", command);
        goto done;
    }
    printf("perplexity %.4f  (nll/token %.6f over %ld tokens scored, %ld windows of %d, stride %d; %.1f s)\n",
           xlkv_eval_ppl_value(&acc), acc.nll_sum / (double)acc.n_scored, acc.n_scored, acc.n_windows, ctx, stride,
           seconds);
    rc = json && !write_json(json, &mo, file, ctx, stride, max_tokens, &streams, &acc, seconds) ? 1 : 0;
done:
    xlkv_token_streams_free(&streams);
    cli_eval_runner_close(&runner);
    xlkv_model_free(model);
    return rc;
}
