/* tools/cmd_tokenize: `xlkv tokenize`: text files (plain or .xz; books separated by lines holding only 0x1E) ->
 * token shards for `xlkv train` (src/train/tokenize_corpus.h), plus a copy of the tokenizer in the output folder. */
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "cli_args.h"
#include "cli_common.h"
#include "commands.h"
#include "core/file.h"
#include "core/timing.h"
#include "train/checkpoint.h"
#include "train/tokenize_corpus.h"

static void usage(FILE *out) {
    fprintf(out, "usage: xlkv tokenize --tokenizer FILE -o DIR [--valid-fraction F] [-t N] FILES...\n\n"
                 "Writes DIR/train-NNNNN.bin and DIR/valid-NNNNN.bin (one pair per input file: its last F of tokens\n"
                 "are held out) and copies the tokenizer into DIR. Books end with the tokenizer's end-of-text token.\n\n"
                 "      --tokenizer FILE      tokenizer.json, llama2.c tokenizer .bin or GGUF\n"
                 "  -o, --output DIR          output folder (created)\n"
                 "      --valid-fraction F    held-out share of each file's tokens (default 0.1)\n"
                 "  -t, --threads N           threads (default: all cores)\n");
}

int cmd_tokenize(int argc, char **argv) {
    const char *command = "tokenize", *tokenizer_path = NULL, *out_dir = NULL;
    float valid_fraction = 0.1f;
    int threads = 0, n_files = 0;
    const char **files = calloc((size_t)argc, sizeof *files);
    if (!files) return 1;
    const cli_flag flags[] = {
        CLI_STRING_FLAG(NULL, "--tokenizer", &tokenizer_path),
        CLI_STRING_FLAG("-o", "--output", &out_dir),
        CLI_FLOAT_FLAG(NULL, "--valid-fraction", &valid_fraction),
        CLI_INT_FLAG("-t", "--threads", &threads, 0, 4096),
    };
    const int parsed = cli_parse_args(
        &(cli_command_line){.command = command, .usage = usage, CLI_FLAGS(flags), .files = files, .n_files = &n_files},
        argc, argv);
    if (parsed != CLI_ARGS_PARSED) {
        free(files);
        return parsed;
    }
    if (!tokenizer_path || !out_dir || n_files == 0) {
        fprintf(stderr, "xlkv %s: give --tokenizer FILE, -o DIR and at least one text file\n", command);
        goto usage_error;
    }
    if (threads > 0) omp_set_num_threads(threads);
    xlkv_tokenizer *tok = NULL;
    if (xlkv_tokenizer_load(tokenizer_path, &tok) != XLKV_OK) {
        fprintf(stderr, "xlkv %s: %s\n", command, xlkv_last_error());
        free(files);
        return 1;
    }
    const double start = xlkv_now_seconds();
    xlkv_tokenize_stats stats;
    xlkv_status status = xlkv_tokenize_corpus(tok, files, n_files, out_dir, valid_fraction, &stats);
    xlkv_tokenizer_free(tok);
    if (status == XLKV_OK) { /* the tokenizer travels with the shards */
        char *data = NULL;
        size_t size = 0;
        const char *slash = strrchr(tokenizer_path, '/');
        char *copy = xlkv_path_join(out_dir, slash ? slash + 1 : tokenizer_path);
        status = copy ? xlkv_read_file(tokenizer_path, &data, &size) : XLKV_E_NOMEM;
        if (status == XLKV_OK) status = xlkv_write_file_synced(copy, data, size);
        free(data);
        free(copy);
    }
    free(files);
    if (status != XLKV_OK) {
        fprintf(stderr, "xlkv %s: %s\n", command, xlkv_last_error());
        return 1;
    }
    const double seconds = xlkv_now_seconds() - start;
    fprintf(stderr, "xlkv %s: %llu books, %.1f MB of text -> %llu train + %llu held-out tokens in %s (%.1f s, %.1f MB/s)\n",
            command, (unsigned long long)stats.books, (double)stats.bytes / 1e6,
            (unsigned long long)stats.train_tokens, (unsigned long long)stats.valid_tokens, out_dir, seconds,
            (double)stats.bytes / 1e6 / (seconds > 0 ? seconds : 1e-9));
    return 0;
usage_error:
    free(files);
    return 2;
}
