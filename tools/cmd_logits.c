/* tools/cmd_logits: `xlkv logits`: the logits of every position as JSON ({"logits": [[...], ...]}), so a model can be
 * checked against another implementation. --prefill N runs the first N ids as one prompt and the rest as decode
 * steps; --sequential runs every id as its own step; default: all ids as one prompt. On --device cuda the same chunks
 * run through the engine (one empty sequence, forward_logits). */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "cli_args.h"
#include "cli_common.h"
#include "cli_engine.h"
#include "commands.h"

static void usage(FILE *out) {
    fprintf(out, "usage: xlkv logits -m MODEL (--ids 1,5,9 | -p TEXT) [--prefill N | --sequential] [-o FILE] [options]\n\n"
                 "Writes {\"ids\": [...], \"logits\": [[...] per position]} as JSON (stdout unless -o).\n\n"
                 "      --ids LIST            comma-separated token ids\n"
                 "  -p, --prompt TEXT         text to tokenize instead (BOS prepended)\n"
                 "      --prefill N           process the first N ids as one prompt, the rest one at a time\n"
                 "  -o, --output FILE         write the JSON to FILE\n");
    cli_print_model_help(out);
}

static bool parse_ids(const char *text, int **out_ids, int *out_n) {
    size_t cap = 1;
    for (const char *p = text; *p; p++) cap += *p == ',';
    int *ids = malloc(cap * sizeof *ids);
    if (!ids) return false;
    int n = 0;
    const char *p = text;
    for (;;) {
        char *end = NULL;
        errno = 0;
        long v = strtol(p, &end, 10);
        if (errno || end == p || v < 0 || v > 1 << 30 || (*end != ',' && *end != '\0')) {
            fprintf(stderr, "xlkv logits: --ids: entry %d ('%.*s') is not a non-negative integer\n", n,
                    (int)strcspn(p, ","), p);
            free(ids);
            return false;
        }
        ids[n++] = (int)v;
        if (*end == '\0') break;
        p = end + 1;
    }
    *out_ids = ids;
    *out_n = n;
    return true;
}

static void write_json(FILE *f, const int *ids, int n, const float *logits, int vocab) {
    fprintf(f, "{\"ids\": [");
    for (int i = 0; i < n; i++) fprintf(f, "%s%d", i ? ", " : "", ids[i]);
    fprintf(f, "],\n \"logits\": [\n");
    for (int r = 0; r < n; r++) {
        fputs("  [", f);
        for (int c = 0; c < vocab; c++) fprintf(f, "%s%.9g", c ? ", " : "", (double)logits[(size_t)r * (size_t)vocab + (size_t)c]);
        fprintf(f, "]%s\n", r + 1 < n ? "," : "");
    }
    fprintf(f, " ]}\n");
}

int cmd_logits(int argc, char **argv) {
    const char *command = "logits";
    cli_model_options mo;
    cli_model_options_init(&mo);
    const char *ids_text = NULL, *prompt = NULL, *output = NULL;
    int prefill = -1;
    const cli_flag flags[] = {
        CLI_STRING_FLAG(NULL, "--ids", &ids_text),
        CLI_STRING_FLAG("-p", "--prompt", &prompt),
        CLI_STRING_FLAG("-o", "--output", &output),
        CLI_INT_FLAG(NULL, "--prefill", &prefill, 1, 1 << 30),
    };
    const int parsed =
        cli_parse_args(&(cli_command_line){.command = command, .usage = usage, .model = &mo, CLI_FLAGS(flags)}, argc, argv);
    if (parsed != CLI_ARGS_PARSED) return parsed;
    if (!ids_text == !prompt) {
        fprintf(stderr, "xlkv %s: give exactly one of --ids LIST and -p TEXT\n", command);
        return 2;
    }
    if (prefill > 0 && mo.sequential) {
        fprintf(stderr, "xlkv %s: --prefill and --sequential exclude each other\n", command);
        return 2;
    }
    int *ids = NULL, n = 0, rc = 1;
    float *all = NULL;
    xlkv_model *model = NULL;
    xlkv_context *ctx = NULL;
    xlkv_engine *engine = NULL;
    FILE *f = NULL;
    if (ids_text && !parse_ids(ids_text, &ids, &n)) return 2;
    if (!cli_load_model(command, &mo, &model)) goto done;
    if (prompt) {
        if (!model->tokenizer) {
            fprintf(stderr, "xlkv %s: -p needs a tokenizer; none found beside %s (pass --tokenizer)\n", command, mo.model);
            goto done;
        }
        if (xlkv_tokenizer_encode(model->tokenizer, prompt, true, &ids, &n) != XLKV_OK) {
            fprintf(stderr, "xlkv %s: cannot tokenize: %s\n", command, xlkv_last_error());
            goto done;
        }
    }
    if (prefill > n) {
        fprintf(stderr, "xlkv %s: --prefill %d exceeds the %d ids given\n", command, prefill, n);
        goto done;
    }
    const int vocab = model->hp.vocab_size;
    all = malloc((size_t)n * (size_t)vocab * sizeof *all);
    if (!all) {
        fprintf(stderr, "xlkv %s: out of memory for %d x %d logits\n", command, n, vocab);
        goto done;
    }
    /* one forward for the prompt part, then one per remaining id */
    const int first = prefill > 0 ? prefill : mo.sequential ? 1 : n;
    if (cli_on_cuda(&mo)) {
        if (!cli_create_engine(command, &mo, model, 1, &engine)) goto done;
        if (!cli_engine_logits(command, engine, ids, n, first, vocab, all)) goto done;
    } else {
        if (!cli_create_context(command, &mo, model, &ctx)) goto done;
        for (int start = 0; start < n;) {
            int count = start == 0 ? first : 1;
            const float *logits = NULL;
            if (xlkv_context_forward(ctx, ids + start, count, true, &logits) != XLKV_OK) {
                fprintf(stderr, "xlkv %s: %s\n", command, xlkv_last_error());
                goto done;
            }
            memcpy(all + (size_t)start * (size_t)vocab, logits, (size_t)count * (size_t)vocab * sizeof *all);
            start += count;
        }
    }
    f = output ? fopen(output, "w") : stdout;
    if (!f) {
        fprintf(stderr, "xlkv %s: cannot write %s\n", command, output);
        goto done;
    }
    write_json(f, ids, n, all, vocab);
    rc = (output && fclose(f) != 0) ? 1 : 0;
    f = NULL;
done:
    if (f && f != stdout) fclose(f);
    free(all);
    free(ids);
    xlkv_context_free(ctx);
    xlkv_engine_free(engine);
    xlkv_model_free(model);
    return rc;
}
