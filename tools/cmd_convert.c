/* tools/cmd_convert: `xlkv convert`: a checkpoint under a new layer map, W_K / W_V of the new KV layers copied or
 * averaged over their readers (SEMANTICS.md section 5), written as an atomic Hugging Face checkpoint. */
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "cli_args.h"
#include "cli_common.h"
#include "commands.h"
#include "train/checkpoint.h"
#include "train/model_setup.h"

static void usage(FILE *out) {
    fprintf(out, "usage: xlkv convert --from CKPT --to DIR [--layer-types MAP] [--kv-init copy|average] [--dtype f32|bf16]\n"
                 "                    [--forward-passes M] [--backward-passes B] [--sliding-window W]\n\n"
                 "  --from CKPT             Hugging Face directory or llama2.c .bin (loaded under its own map)\n"
                 "  --to DIR                output checkpoint (written atomically; the tokenizer is copied)\n"
                 "  --layer-types MAP       the new layer map (string or preset; default: the checkpoint's own)\n"
                 "  --kv-init copy|average  each KV layer keeps its W_K/W_V, or takes the mean over the layers that\n"
                 "                          read it, itself included (MLKV-style) (default copy)\n"
                 "  --dtype f32|bf16        tensor type of the written model.safetensors (default f32; bf16 halves a\n"
                 "                          model one ships, rounded to nearest even)\n");
}

int cmd_convert(int argc, char **argv) {
    const char *command = "convert", *from = NULL, *to = NULL, *layer_types = NULL, *kv_init_text = "copy";
    xlkv_train_overrides overrides = {-1, -1, -1, -1};
    int dtype = 0; /* index into the choices of --dtype: f32, bf16 */
    const cli_flag flags[] = {
        CLI_STRING_FLAG(NULL, "--from", &from),
        CLI_STRING_FLAG(NULL, "--to", &to),
        CLI_STRING_FLAG(NULL, "--layer-types", &layer_types),
        CLI_CHOICE_FLAG(NULL, "--dtype", &dtype, "f32", "bf16"),
        CLI_STRING_FLAG(NULL, "--kv-init", &kv_init_text),
        CLI_INT_FLAG(NULL, "--forward-passes", &overrides.forward_passes, 0, 1 << 24),
        CLI_INT_FLAG(NULL, "--backward-passes", &overrides.backward_passes, 0, 1 << 24),
        CLI_INT_FLAG(NULL, "--sliding-window", &overrides.sliding_window, 0, 1 << 24),
    };
    const int parsed =
        cli_parse_args(&(cli_command_line){.command = command, .usage = usage, CLI_FLAGS(flags)}, argc, argv);
    if (parsed != CLI_ARGS_PARSED) return parsed;
    const bool bf16 = dtype == 1;
    if (!from || !to) {
        fprintf(stderr, "xlkv %s: --from and --to are required\n", command);
        return 2;
    }
    xlkv_kv_init kv_init;
    if (!strcmp(kv_init_text, "copy")) kv_init = XLKV_KV_INIT_COPY;
    else if (!strcmp(kv_init_text, "average")) kv_init = XLKV_KV_INIT_AVERAGE;
    else {
        fprintf(stderr, "xlkv %s: --kv-init expects copy or average, got '%s'\n", command, kv_init_text);
        return 2;
    }
    xlkv_param_store *store = NULL;
    if (xlkv_store_from_checkpoint(from, layer_types, kv_init, &overrides, &store) != XLKV_OK) {
        fprintf(stderr, "xlkv %s: %s\n", command, xlkv_last_error());
        return 1;
    }
    char *tokenizer = xlkv_find_tokenizer_file(from);
    xlkv_checkpoint_extras extras = {.tokenizer_path = tokenizer, .weights_bf16 = bf16};
    xlkv_status status = xlkv_checkpoint_write(store, to, &extras);
    if (status == XLKV_OK)
        fprintf(stderr, "xlkv %s: wrote %s (map %s, %d KV layers of %d, kv-init %s, %s)\n", command, to,
                layer_types ? layer_types : "of the checkpoint", store->map->n_kv_layers, store->hp.n_layers,
                kv_init_text, bf16 ? "bf16" : "f32");
    else
        fprintf(stderr, "xlkv %s: %s\n", command, xlkv_last_error());
    free(tokenizer);
    xlkv_param_store_free(store);
    return status == XLKV_OK ? 0 : 1;
}
