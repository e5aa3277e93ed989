/* tools/cmd_tokenizer: `xlkv tokenizer train`: trains a SentencePiece-style BPE vocabulary with byte fallback on text
 * files (plain, .xz or .bz2) and writes tokenizer.json (src/model/tokenizer_train.h). */
#include <stdlib.h>
#include <string.h>

#include "cli_args.h"
#include "cli_common.h"
#include "commands.h"
#include "core/timing.h"
#include "model/tokenizer_train.h"

static void usage(FILE *out) {
    fprintf(out,
            "usage: xlkv tokenizer train --vocab-size N -o tokenizer.json "
            "[--min-frequency F] [--max-chars N] FILES...\n\n"
            "Trains a BPE vocabulary with byte fallback (Llama layout: <unk> <s> </s>, <0x00>..<0xFF>, characters,\n"
            "merged pieces) on text files (plain, .xz or .bz2) and writes a Hugging Face tokenizer.json.\n\n"
            "      --vocab-size N        total vocabulary size, at least %d\n"
            "      --min-frequency F     characters seen fewer times fall back to byte tokens (default 2)\n"
            "      --max-chars N         read at most N bytes of text in all (default: everything)\n"
            "  -o, --output FILE         the tokenizer.json to write (atomically)\n",
            XLKV_BPE_MIN_VOCAB);
}

typedef struct progress_state {
    double start;
    int last_reported;
} progress_state;

static void progress(void *user, int n_vocab, int target, int64_t best_count) {
    progress_state *p = user;
    if (n_vocab / 512 == p->last_reported / 512 && n_vocab < target) return;
    p->last_reported = n_vocab;
    fprintf(stderr, "\rxlkv tokenizer: %d / %d pieces (last merge seen %lld times, %.1f s)", n_vocab, target,
            (long long)best_count, xlkv_now_seconds() - p->start);
    fflush(stderr);
}

/* --max-chars N: a positive byte count (long long, so no table entry). */
static cli_parse_result parse_max_chars(void *own, const char *command, int argc, char **argv, int *i) {
    long long *max_chars = own;
    const char *arg = argv[*i], *v = NULL;
    if (strcmp(arg, "--max-chars") != 0) return CLI_NOT_MINE;
    if (!(v = cli_value(command, argc, argv, i))) return CLI_USAGE_ERROR;
    char *end = NULL;
    *max_chars = strtoll(v, &end, 10);
    if (!*v || *end || *max_chars <= 0) {
        fprintf(stderr, "xlkv %s: %s wants a positive byte count, not '%s'\n", command, arg, v);
        return CLI_USAGE_ERROR;
    }
    return CLI_CONSUMED;
}

static int train(int argc, char **argv) {
    const char *command = "tokenizer train", *out_path = NULL;
    int vocab_size = 0, min_frequency = 2;
    long long max_chars = 0;
    int n_files = 0;
    const char **files = calloc((size_t)argc, sizeof *files);
    if (!files) return 1;
    const cli_flag flags[] = {
        CLI_INT_FLAG(NULL, "--vocab-size", &vocab_size, 1, 1 << 24),
        CLI_INT_FLAG(NULL, "--min-frequency", &min_frequency, 1, 1 << 30),
        CLI_STRING_FLAG("-o", "--output", &out_path),
    };
    const int parsed = cli_parse_args(&(cli_command_line){.command = command, .usage = usage, CLI_FLAGS(flags),
                                                          .parse_own = parse_max_chars, .own = &max_chars,
                                                          .files = files, .n_files = &n_files},
                                      argc, argv);
    if (parsed != CLI_ARGS_PARSED) {
        free(files);
        return parsed;
    }
    if (!vocab_size || !out_path || n_files == 0) {
        fprintf(stderr,
                "xlkv %s: give --vocab-size N, -o tokenizer.json and at least one text file\n",
                command);
        goto usage_error;
    }
    if (vocab_size < XLKV_BPE_MIN_VOCAB) {
        fprintf(stderr,
                "xlkv %s: --vocab-size %d is below %d (3 special tokens + 256 byte tokens)\n",
                command, vocab_size, XLKV_BPE_MIN_VOCAB);
        goto usage_error;
    }
    progress_state state = {xlkv_now_seconds(), 0};
    xlkv_bpe_train_options options = {.vocab_size = vocab_size,
                                      .min_frequency = min_frequency,
                                      .max_chars = (size_t)max_chars,
                                      .progress = progress,
                                      .progress_user = &state};
    xlkv_bpe_trainer *trainer = NULL;
    xlkv_bpe_train_stats stats;
    xlkv_status status = xlkv_bpe_trainer_create(&options, &trainer);
    for (int f = 0; f < n_files && status == XLKV_OK && !xlkv_bpe_trainer_full(trainer); f++) {
        fprintf(stderr, "xlkv tokenizer: reading %s\n", files[f]);
        status = xlkv_bpe_trainer_add_file(trainer, files[f]);
    }
    double counted = xlkv_now_seconds();
    if (status == XLKV_OK) status = xlkv_bpe_trainer_train(trainer, &stats);
    if (status == XLKV_OK) fputc('\n', stderr);
    if (status == XLKV_OK) status = xlkv_bpe_trainer_write_json(trainer, out_path);
    xlkv_bpe_trainer_free(trainer);
    free(files);
    if (status != XLKV_OK) {
        fprintf(stderr, "xlkv %s: %s\n", command, xlkv_last_error());
        return 1;
    }
    double done = xlkv_now_seconds();
    fprintf(stderr,
            "xlkv tokenizer: %.1f MB of text, %llu words (%llu distinct), %d characters in the alphabet",
            (double)stats.bytes / 1e6, (unsigned long long)stats.words, (unsigned long long)stats.unique_words,
            stats.alphabet);
    if (stats.alphabet_dropped) fprintf(stderr, " (%d more did not fit)", stats.alphabet_dropped);
    fprintf(stderr, ", %d merges -> %d tokens in %s (%.1f s counting, %.1f s merging)\n", stats.merges,
            stats.vocab_size, out_path, counted - state.start, done - counted);
    if (stats.ran_out)
        fprintf(stderr,
                "xlkv tokenizer: note: the text ran out of pairs to merge: %d tokens, not the %d asked for\n",
                stats.vocab_size, vocab_size);
    return 0;
usage_error:
    free(files);
    return 2;
}

int cmd_tokenizer(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "xlkv tokenizer: give a verb: train (see xlkv tokenizer train --help)\n");
        return 2;
    }
    if (!strcmp(argv[1], "-h") || !strcmp(argv[1], "--help")) {
        usage(stdout);
        return 0;
    }
    if (!strcmp(argv[1], "train")) return train(argc - 1, argv + 1);
    fprintf(stderr, "xlkv tokenizer: unknown verb '%s' (the only verb is train)\n", argv[1]);
    return 2;
}
