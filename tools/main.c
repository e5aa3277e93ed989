/* tools/main: the `xlkv` entry point; dispatches to one subcommand. */
#include <stdio.h>
#include <string.h>

#include "commands.h"

typedef struct subcommand {
    const char *name;
    int (*run)(int argc, char **argv);
    const char *summary;
} subcommand;

static const subcommand subcommands[] = {
    {"generate", cmd_generate, "generate text from a prompt (stdout: the text; stderr: speed and KV memory)"},
    {"chat", cmd_chat, "interactive chat on the terminal"},
    {"serve", cmd_serve, "OpenAI-compatible HTTP server with continuous batching (completions, chat, streaming)"},
    {"logits", cmd_logits, "write the logits of every position as JSON (for checks against other implementations)"},
    {"perplexity", cmd_perplexity, "perplexity of a text file with sliding windows (progress and ETA on stderr)"},
    {"eval", cmd_eval, "zero-shot tasks (piqa, arc, hellaswag, lambada, ...) scored as lm-eval-harness does"},
    {"bench", cmd_bench, "throughput benchmark (the papers' protocol) over layer maps: table, JSON lines, SVG"},
    {"search", cmd_search, "KVSharer: search a layer-sharing map on calibration text (map JSON, report, heatmap)"},
    {"layers", cmd_layers, "print a model's layer map, KV layers, iteration plan and KV memory"},
    {"tokenize", cmd_tokenize, "turn text files (plain or .xz) into token shards for training"},
    {"tokenizer", cmd_tokenizer, "train a BPE vocabulary with byte fallback on text: xlkv tokenizer train -> tokenizer.json"},
    {"train", cmd_train, "train a model under any layer map (CPU reference trainer, fp32)"},
    {"convert", cmd_convert, "write a checkpoint under a new layer map (W_K/W_V copied or averaged)"},
};

static void usage(FILE *out) {
    fprintf(out, "usage: xlkv <command> [options]   (xlkv <command> --help for each command's options)\n\ncommands:\n");
    for (size_t i = 0; i < sizeof subcommands / sizeof subcommands[0]; i++)
        fprintf(out, "  %-10s %s\n", subcommands[i].name, subcommands[i].summary);
}

int main(int argc, char **argv) {
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) {
        usage(stdout);
        return 0;
    }
    for (size_t i = 0; i < sizeof subcommands / sizeof subcommands[0]; i++)
        if (!strcmp(argv[1], subcommands[i].name)) return subcommands[i].run(argc - 1, argv + 1);
    fprintf(stderr, "xlkv: unknown command '%s'\n", argv[1]);
    usage(stderr);
    return 2;
}
