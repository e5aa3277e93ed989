/* tools/cmd_generate: `xlkv generate`: text from a prompt, or from many at once (--batch, --batch-file) through the
 * engine, on the cpu or on cuda. stdout carries only the generated text (pipeable; `--- sequence i ---` headers when
 * there are several); speed and KV memory go to stderr. */
#include <stdlib.h>
#include <string.h>

#include "cli_args.h"
#include "cli_common.h"
#include "cli_engine.h"
#include "commands.h"
#include "core/file.h"
#include "infer/generate.h"

static void usage(FILE *out) {
    fprintf(out, "usage: xlkv generate -m MODEL [-p PROMPT | -f FILE | --batch-file FILE] [-n N] [-b N] [options]\n\n"
                 "Generates text; stdout carries only the generated text, stderr the speed and KV memory.\n\n"
                 "  -p, --prompt TEXT         prompt (default: empty, i.e. BOS only)\n"
                 "  -f, --file FILE           read the prompt from a file\n"
                 "  -n, --n-predict N         tokens to generate (default 128; -1 = until the end token or a full context)\n"
                 "      --no-bos              do not prepend BOS to the prompt\n"
                 "  -b, --batch N             generate N sequences of the prompt together, seeds seed, seed+1, ...\n"
                 "      --batch-file FILE     one prompt per line, generated together (sequence i: seed + i)\n"
                 "                            several sequences are printed under '--- sequence i ---' headers\n");
    cli_print_model_help(out);
    cli_print_sampling_help(out);
}

/* Streams one sequence's text to stdout. */
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

/* The text of every sequence of a batch: streamed when there is one, collected when there are several. */
typedef struct batch_text {
    const xlkv_tokenizer *tokenizer;
    int n;
    int *prev;    /* [n] previous token of each sequence (decoding depends on it) */
    char **text;  /* [n] */
    size_t *len, *cap;
    bool out_of_memory;
} batch_text;

static void collect_token(int sequence, int token, void *user) {
    batch_text *b = user;
    if (b->n == 1) {
        printer p = {.tokenizer = b->tokenizer, .prev = b->prev[0]};
        print_token(token, &p);
        b->prev[0] = token;
        return;
    }
    char piece[256];
    int n = xlkv_tokenizer_decode(b->tokenizer, b->prev[sequence], token, piece, sizeof piece);
    b->prev[sequence] = token;
    if (n <= 0) return;
    size_t need = b->len[sequence] + (size_t)n + 1;
    if (need > b->cap[sequence]) {
        size_t cap = need * 2;
        char *grown = realloc(b->text[sequence], cap);
        if (!grown) {
            b->out_of_memory = true;
            return;
        }
        b->text[sequence] = grown;
        b->cap[sequence] = cap;
    }
    memcpy(b->text[sequence] + b->len[sequence], piece, (size_t)n);
    b->len[sequence] += (size_t)n;
    b->text[sequence][b->len[sequence]] = '\0';
}

/* One sequence on a cpu context (the llama2.c golden path: prints as it goes). */
static int generate_on_context(const char *command, const cli_model_options *mo, const xlkv_model *model,
                               const xlkv_sampler_params *sp, const int *ids, int n_ids, int n_predict) {
    int rc = 1;
    xlkv_context *ctx = NULL;
    xlkv_sampler *sampler = NULL;
    if (!cli_create_context(command, mo, model, &ctx)) goto done;
    if (n_predict < 0 || n_predict > ctx->params.n_ctx) n_predict = ctx->params.n_ctx;
    if (xlkv_sampler_create(sp, model->hp.vocab_size, &sampler) != XLKV_OK) {
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
    xlkv_sampler_free(sampler);
    xlkv_context_free(ctx);
    return rc;
}

/* n sequences through the engine (any device); prompts[i] may repeat one array. */
static int generate_batch(const char *command, const cli_model_options *mo, const xlkv_model *model,
                          const xlkv_sampler_params *sp, int *const *prompts, const int *n_prompt, int n,
                          int n_predict) {
    int rc = 1;
    xlkv_engine *engine = NULL;
    batch_text out = {.tokenizer = model->tokenizer, .n = n};
    out.prev = malloc((size_t)n * sizeof *out.prev);
    out.text = calloc((size_t)n, sizeof *out.text);
    out.len = calloc((size_t)n, sizeof *out.len);
    out.cap = calloc((size_t)n, sizeof *out.cap);
    if (!out.prev || !out.text || !out.len || !out.cap) {
        fprintf(stderr, "xlkv %s: out of memory for %d sequences\n", command, n);
        goto done;
    }
    for (int i = 0; i < n; i++) out.prev[i] = prompts[i][n_prompt[i] - 1];
    if (!cli_create_engine(command, mo, model, n, &engine)) goto done;
    const int n_ctx = mo->n_ctx > 0 ? mo->n_ctx : model->hp.max_seq_len;
    if (n_predict < 0 || n_predict > n_ctx) n_predict = n_ctx;
    cli_batch_stats stats = {.n_sequences = n};
    if (n_predict > 0 &&
        !cli_engine_generate(command, engine, prompts, n_prompt, n, n_predict, sp, collect_token, &out, &stats)) {
        if (n == 1) fputc('\n', stdout);
        goto done;
    }
    if (out.out_of_memory) {
        fprintf(stderr, "xlkv %s: out of memory for the generated text\n", command);
        goto done;
    }
    if (n == 1) fputc('\n', stdout);
    for (int i = 0; n > 1 && i < n; i++) printf("--- sequence %d ---\n%s\n", i, out.text[i] ? out.text[i] : "");
    fflush(stdout);
    cli_report_batch(command, mo, model, engine, &stats);
    rc = 0;
done:
    for (int i = 0; out.text && i < n; i++) free(out.text[i]);
    free(out.text);
    free(out.prev);
    free(out.len);
    free(out.cap);
    xlkv_engine_free(engine);
    return rc;
}

/* Splits text into lines in place (a final newline ends the last line; "\r\n" counts as a newline). */
static char **split_lines(char *text, int *out_n) {
    int n = 0;
    size_t cap = 16;
    char **lines = malloc(cap * sizeof *lines);
    for (char *p = text; lines && *p;) {
        char *end = strchr(p, '\n');
        if (end) *end = '\0';
        size_t len = strlen(p);
        if (len && p[len - 1] == '\r') p[len - 1] = '\0';
        if ((size_t)n == cap) {
            char **grown = realloc(lines, (cap *= 2) * sizeof *lines);
            if (!grown) {
                free(lines);
                return NULL;
            }
            lines = grown;
        }
        lines[n++] = p;
        if (!end) break;
        p = end + 1;
    }
    *out_n = n;
    return lines;
}

int cmd_generate(int argc, char **argv) {
    const char *command = "generate";
    cli_model_options mo;
    cli_model_options_init(&mo);
    xlkv_sampler_params sp = cli_sampling_defaults();
    const char *prompt = NULL, *prompt_file = NULL, *batch_file = NULL;
    int n_predict = 128, n_batch = 0;
    bool add_bos = true;
    const cli_flag flags[] = {
        CLI_STRING_FLAG("-p", "--prompt", &prompt),
        CLI_STRING_FLAG("-f", "--file", &prompt_file),
        CLI_STRING_FLAG(NULL, "--batch-file", &batch_file),
        CLI_INT_FLAG("-n", "--n-predict", &n_predict, -1, 1 << 30),
        CLI_INT_FLAG("-b", "--batch", &n_batch, 1, 1 << 16),
        CLI_OFF_FLAG(NULL, "--no-bos", &add_bos),
    };
    const int parsed = cli_parse_args(
        &(cli_command_line){.command = command, .usage = usage, .model = &mo, .sampling = &sp, CLI_FLAGS(flags)}, argc,
        argv);
    if (parsed != CLI_ARGS_PARSED) return parsed;
    if (batch_file && (prompt || prompt_file || n_batch)) {
        fprintf(stderr, "xlkv %s: --batch-file gives the prompts (one per line): it excludes -p, -f and --batch\n",
                command);
        return 2;
    }
    if (xlkv_sampler_params_validate(&sp) != XLKV_OK) {
        fprintf(stderr, "xlkv %s: %s\n", command, xlkv_last_error());
        return 2;
    }
    char *file_text = NULL;
    const char *file = prompt_file ? prompt_file : batch_file;
    if (file && xlkv_read_file(file, &file_text, NULL) != XLKV_OK) {
        fprintf(stderr, "xlkv %s: cannot read the prompt%s: %s\n", command, batch_file ? "s" : "", xlkv_last_error());
        return 1;
    }
    if (prompt_file) prompt = file_text;
    if (!prompt) prompt = "";

    int rc = 1, n_texts = 1, n_sequences = n_batch > 0 ? n_batch : 1;
    char **texts = NULL;
    int **ids = NULL, *n_ids = NULL;
    xlkv_model *model = NULL;
    if (batch_file) {
        texts = split_lines(file_text, &n_texts);
        if (texts && n_texts == 0) {
            fprintf(stderr, "xlkv %s: %s holds no prompt (one per line)\n", command, batch_file);
            goto done;
        }
        n_sequences = n_texts;
    } else if ((texts = malloc(sizeof *texts))) {
        texts[0] = (char *)prompt;
    }
    ids = calloc((size_t)n_sequences, sizeof *ids);
    n_ids = calloc((size_t)n_sequences, sizeof *n_ids);
    if (!texts || !ids || !n_ids) {
        fprintf(stderr, "xlkv %s: out of memory\n", command);
        goto done;
    }
    if (!cli_load_model(command, &mo, &model)) goto done;
    if (!cli_model_has_tokenizer(command, &mo, model)) goto done;
    for (int t = 0; t < n_texts; t++) {
        if (xlkv_tokenizer_encode(model->tokenizer, texts[t], add_bos, &ids[t], &n_ids[t]) != XLKV_OK) {
            fprintf(stderr, "xlkv %s: cannot tokenize prompt %d: %s\n", command, t, xlkv_last_error());
            goto done;
        }
        if (n_ids[t] == 0) {
            fprintf(stderr, "xlkv %s: prompt %d is empty and --no-bos was given: nothing to start from\n", command, t);
            goto done;
        }
    }
    /* --batch N: the one prompt for every sequence (the first entry owns it) */
    int **prompts = malloc((size_t)n_sequences * sizeof *prompts);
    int *lengths = malloc((size_t)n_sequences * sizeof *lengths);
    if (prompts && lengths) {
        for (int i = 0; i < n_sequences; i++) {
            prompts[i] = ids[i < n_texts ? i : 0];
            lengths[i] = n_ids[i < n_texts ? i : 0];
        }
        if (!cli_on_cuda(&mo) && n_sequences == 1 && !batch_file)
            rc = generate_on_context(command, &mo, model, &sp, ids[0], n_ids[0], n_predict);
        else
            rc = generate_batch(command, &mo, model, &sp, prompts, lengths, n_sequences, n_predict);
    } else {
        fprintf(stderr, "xlkv %s: out of memory\n", command);
    }
    free(prompts);
    free(lengths);
done:
    for (int t = 0; ids && t < n_texts; t++) free(ids[t]);
    free(ids);
    free(n_ids);
    free(texts);
    free(file_text);
    xlkv_model_free(model);
    return rc;
}
