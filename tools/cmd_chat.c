/* tools/cmd_chat: `xlkv chat`: an interactive session on the terminal. Each line typed continues the same sequence
 * on the existing KV cache (no re-processing of earlier turns), and the model answers until an end token, the
 * reverse prompt (-r), or -n tokens. /reset starts over, /quit (or end of input) leaves. */
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli_args.h"
#include "cli_common.h"
#include "commands.h"
#include "infer/generate.h"

static void usage(FILE *out) {
    fprintf(out, "usage: xlkv chat -m MODEL [-n N] [-r STOP] [options]\n\n"
                 "Interactive: type a line, the model continues it; the conversation stays in the KV cache.\n"
                 "Commands: /reset (start over), /quit (or end of input).\n\n"
                 "  -n, --n-predict N         most tokens per answer (default 256)\n"
                 "  -r, --reverse-prompt STR  stop an answer when it produces STR (e.g. \"User:\")\n");
    cli_print_model_help(out);
    cli_print_sampling_help(out);
}

typedef struct answer {
    const xlkv_tokenizer *tokenizer;
    int prev;
    const char *stop;
    char *text; /* everything printed in this answer, to find the reverse prompt */
    size_t len, cap;
} answer;

static bool on_token(int token, void *user) {
    answer *a = user;
    char piece[256];
    int n = xlkv_tokenizer_decode(a->tokenizer, a->prev, token, piece, sizeof piece);
    a->prev = token;
    if (n <= 0) return true;
    fwrite(piece, 1, (size_t)n, stdout);
    fflush(stdout);
    if (!a->stop) return true;
    if (a->len + (size_t)n + 1 > a->cap) {
        size_t cap = (a->cap + (size_t)n + 1) * 2;
        char *grown = realloc(a->text, cap);
        if (!grown) return false;
        a->text = grown;
        a->cap = cap;
    }
    memcpy(a->text + a->len, piece, (size_t)n);
    a->len += (size_t)n;
    a->text[a->len] = '\0';
    return strstr(a->text, a->stop) == NULL;
}

int cmd_chat(int argc, char **argv) {
    const char *command = "chat";
    cli_model_options mo;
    cli_model_options_init(&mo);
    xlkv_sampler_params sp = cli_sampling_defaults();
    int n_predict = 256;
    const char *stop = NULL;
    const cli_flag flags[] = {
        CLI_INT_FLAG("-n", "--n-predict", &n_predict, 1, 1 << 30),
        CLI_STRING_FLAG("-r", "--reverse-prompt", &stop),
    };
    const int parsed = cli_parse_args(
        &(cli_command_line){.command = command, .usage = usage, .model = &mo, .sampling = &sp, CLI_FLAGS(flags)}, argc,
        argv);
    if (parsed != CLI_ARGS_PARSED) return parsed;
    if (xlkv_sampler_params_validate(&sp) != XLKV_OK) {
        fprintf(stderr, "xlkv %s: %s\n", command, xlkv_last_error());
        return 2;
    }
    int rc = 1;
    xlkv_model *model = NULL;
    xlkv_context *ctx = NULL;
    xlkv_sampler *sampler = NULL;
    char *line = NULL;
    size_t line_cap = 0;
    answer a = {0};
    if (!cli_load_model(command, &mo, &model)) goto done;
    if (!cli_model_has_tokenizer(command, &mo, model)) goto done;
    if (!cli_create_context(command, &mo, model, &ctx)) goto done;
    if (xlkv_sampler_create(&sp, model->hp.vocab_size, &sampler) != XLKV_OK) {
        fprintf(stderr, "xlkv %s: %s\n", command, xlkv_last_error());
        goto done;
    }
    const bool interactive = isatty(STDIN_FILENO);
    if (interactive) fprintf(stderr, "xlkv chat: %s loaded; /reset starts over, /quit leaves\n", mo.model);
    int turns = 0, generated = 0;
    int pending = -1; /* the answer's last token: generated but not yet run, so it opens the next turn */
    double decode_seconds = 0.0;
    for (;;) {
        if (interactive) fprintf(stderr, "> ");
        ssize_t got = getline(&line, &line_cap, stdin);
        if (got < 0) break;
        line[strcspn(line, "\r\n")] = '\0';
        if (!strcmp(line, "/quit")) break;
        if (!strcmp(line, "/reset")) {
            xlkv_context_reset(ctx);
            pending = -1;
            fprintf(stderr, "xlkv chat: conversation reset\n");
            continue;
        }
        int *ids = NULL, n_ids = 0;
        if (xlkv_tokenizer_encode(model->tokenizer, line, ctx->n_past == 0, &ids, &n_ids) != XLKV_OK) {
            fprintf(stderr, "xlkv %s: cannot tokenize: %s\n", command, xlkv_last_error());
            continue;
        }
        if (pending >= 0) {
            int *joined = realloc(ids, ((size_t)n_ids + 1) * sizeof *ids);
            if (!joined) {
                free(ids);
                fprintf(stderr, "xlkv %s: out of memory\n", command);
                goto done;
            }
            ids = joined;
            memmove(ids + 1, ids, (size_t)n_ids * sizeof *ids);
            ids[0] = pending;
            n_ids++;
        }
        if (n_ids == 0) {
            free(ids);
            continue;
        }
        if (n_ids + 1 > ctx->params.n_ctx - ctx->n_past) {
            fprintf(stderr, "xlkv %s: the context is full (%d of %d positions); /reset to start over\n", command,
                    ctx->n_past, ctx->params.n_ctx);
            free(ids);
            continue;
        }
        a.tokenizer = model->tokenizer;
        a.prev = ids[n_ids - 1];
        a.stop = stop;
        a.len = 0;
        if (a.text) a.text[0] = '\0';
        int budget = ctx->params.n_ctx - ctx->n_past - n_ids;
        xlkv_generate_stats stats;
        xlkv_status status =
            xlkv_generate(ctx, sampler, ids, n_ids, n_predict < budget ? n_predict : budget, on_token, &a, &stats);
        free(ids);
        fputc('\n', stdout);
        fflush(stdout);
        if (status != XLKV_OK) {
            fprintf(stderr, "xlkv %s: %s\n", command, xlkv_last_error());
            goto done;
        }
        pending = stats.n_generated > 0 ? a.prev : -1;
        turns++;
        generated += stats.n_generated;
        decode_seconds += stats.decode_seconds;
    }
    fprintf(stderr, "xlkv %s: %d turns, %d tokens generated (%.1f tokens/s)\n", command, turns, generated,
            decode_seconds > 0 ? generated / decode_seconds : 0.0);
    cli_report_kv_memory(command, model, ctx);
    rc = 0;
done:
    free(line);
    free(a.text);
    xlkv_sampler_free(sampler);
    xlkv_context_free(ctx);
    xlkv_model_free(model);
    return rc;
}
