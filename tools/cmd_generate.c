/* tools/cmd_generate: `xlkv generate`: text from a prompt. stdout carries only the generated text (pipeable);
 * speed and KV memory go to stderr. */
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cli_common.h"
#include "commands.h"
#include "core/file.h"
#include "infer/generate.h"

static void usage(FILE *out) {
    fprintf(out, "usage: xlkv generate -m MODEL [-p PROMPT | -f FILE] [-n N] [options]\n\n"
                 "Generates text; stdout carries only the generated text, stderr the speed and KV memory.\n\n"
                 "  -p, --prompt TEXT         prompt (default: empty, i.e. BOS only)\n"
                 "  -f, --file FILE           read the prompt from a file\n"
                 "  -n, --n-predict N         tokens to generate (default 128; -1 = until the end token or a full context)\n"
                 "      --no-bos              do not prepend BOS to the prompt\n");
    cli_print_model_help(out);
    cli_print_sampling_help(out);
}

typedef struct printer {
    const xlkv_tokenizer *tokenizer;
    int prev;
} printer;

static bool print_token(int token, void *user) {
    printer *p = user;
    char piece[256];
    int n = xlkv_tokenizer_decode(p->tokenizer, p->prev, token, piece, sizeof piece);
    if (n > 0) fwrite(piece, 1, (size_t)n, stdout);
    fflush(stdout);
    p->prev = token;
    return true;
}

int cmd_generate(int argc, char **argv) {
    const char *command = "generate";
    cli_model_options mo;
    cli_model_options_init(&mo);
    xlkv_sampler_params sp = xlkv_sampler_default_params();
    sp.seed = (unsigned long long)time(NULL);
    const char *prompt = "", *prompt_file = NULL;
    int n_predict = 128;
    bool add_bos = true;
    for (int i = 1; i < argc; i++) {
        const char *arg = argv[i];
        cli_parse_result r = cli_parse_model_option(&mo, command, argc, argv, &i);
        if (r == CLI_NOT_MINE) r = cli_parse_sampling_option(&sp, command, argc, argv, &i);
        if (r == CLI_CONSUMED) continue;
        if (r == CLI_USAGE_ERROR) return 2;
        if (!strcmp(arg, "-h") || !strcmp(arg, "--help")) {
            usage(stdout);
            return 0;
        } else if (!strcmp(arg, "-p") || !strcmp(arg, "--prompt")) {
            if (!(prompt = cli_value(command, argc, argv, &i))) return 2;
        } else if (!strcmp(arg, "-f") || !strcmp(arg, "--file")) {
            if (!(prompt_file = cli_value(command, argc, argv, &i))) return 2;
        } else if (!strcmp(arg, "-n") || !strcmp(arg, "--n-predict")) {
            const char *v = cli_value(command, argc, argv, &i);
            if (!v || !cli_parse_int(command, arg, v, -1, 1 << 30, &n_predict)) return 2;
        } else if (!strcmp(arg, "--no-bos")) {
            add_bos = false;
        } else {
            fprintf(stderr, "xlkv %s: unknown option '%s'; see xlkv %s --help\n", command, arg, command);
            return 2;
        }
    }
    if (xlkv_sampler_params_validate(&sp) != XLKV_OK) {
        fprintf(stderr, "xlkv %s: %s\n", command, xlkv_last_error());
        return 2;
    }
    char *file_text = NULL;
    if (prompt_file) {
        if (xlkv_read_file(prompt_file, &file_text, NULL) != XLKV_OK) {
            fprintf(stderr, "xlkv %s: cannot read the prompt: %s\n", command, xlkv_last_error());
            return 1;
        }
        prompt = file_text;
    }

    int rc = 1;
    xlkv_model *model = NULL;
    xlkv_context *ctx = NULL;
    xlkv_sampler *sampler = NULL;
    int *ids = NULL, n_ids = 0;
    if (!cli_load_model(command, &mo, &model)) goto done;
    if (!model->tokenizer) {
        fprintf(stderr, "xlkv %s: no tokenizer found beside %s; pass --tokenizer FILE\n", command, mo.model);
        goto done;
    }
    if (xlkv_tokenizer_encode(model->tokenizer, prompt, add_bos, &ids, &n_ids) != XLKV_OK) {
        fprintf(stderr, "xlkv %s: cannot tokenize the prompt: %s\n", command, xlkv_last_error());
        goto done;
    }
    if (n_ids == 0) {
        fprintf(stderr, "xlkv %s: the prompt is empty and --no-bos was given: nothing to start from\n", command);
        goto done;
    }
    if (!cli_create_context(command, &mo, model, &ctx)) goto done;
    if (n_predict < 0 || n_predict > ctx->params.n_ctx) n_predict = ctx->params.n_ctx;
    if (xlkv_sampler_create(&sp, model->hp.vocab_size, &sampler) != XLKV_OK) {
        fprintf(stderr, "xlkv %s: %s\n", command, xlkv_last_error());
        goto done;
    }
    printer out = {.tokenizer = model->tokenizer, .prev = ids[n_ids - 1]};
    xlkv_generate_stats stats;
    if (xlkv_generate(ctx, sampler, ids, n_ids, n_predict, print_token, &out, &stats) != XLKV_OK) {
        fprintf(stdout, "\n");
        fprintf(stderr, "xlkv %s: generation failed: %s\n", command, xlkv_last_error());
        goto done;
    }
    fprintf(stdout, "\n");
    fflush(stdout);
    fprintf(stderr, "xlkv %s: prompt %d tokens in %.3f s (%.1f tokens/s); generated %d tokens in %.3f s (%.1f tokens/s)%s\n",
            command, stats.n_prompt, stats.prefill_seconds,
            stats.prefill_seconds > 0 ? stats.n_prompt / stats.prefill_seconds : 0.0, stats.n_generated,
            stats.decode_seconds, stats.decode_seconds > 0 ? stats.n_generated / stats.decode_seconds : 0.0,
            stats.context_full ? "; stopped: context full" : stats.stopped_at_end_token ? "; stopped at end token" : "");
    cli_report_kv_memory(command, model, ctx);
    rc = 0;
done:
    free(ids);
    free(file_text);
    xlkv_sampler_free(sampler);
    xlkv_context_free(ctx);
    xlkv_model_free(model);
    return rc;
}
