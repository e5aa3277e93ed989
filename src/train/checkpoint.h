/* train/checkpoint: writing Hugging Face checkpoints of a param_store, atomically.
 *
 * A checkpoint is a directory: config.json (Llama fields + the LCKV fields layer_types, forward_passes,
 * backward_passes, sliding_window, force_nodiag, and tie_word_embeddings), model.safetensors (F32, or BF16 for a
 * release: `weights_bf16`, rounded to nearest even; training checkpoints stay F32; non-KV layers have
 * no k_proj / v_proj; q_proj / k_proj rows permuted back to the Hugging Face "rotate_half" order), optionally a copy
 * of the tokenizer and the trainer's trainer_state.bin. It loads in xlkv_model_load (xlkv generate / logits).
 *
 * Atomicity: everything is written into a fresh sibling directory DIR.tmp-XXXXXX, each file fsync'ed, the directory
 * fsync'ed, then renamed to DIR (an existing DIR is first renamed aside and removed after the swap), and the parent
 * fsync'ed. An interruption at any point leaves either the previous DIR or the new one, never a half-written one;
 * a crash may leave a DIR.tmp-* directory behind, which nothing reads. */
#ifndef XLKV_TRAIN_CHECKPOINT_H
#define XLKV_TRAIN_CHECKPOINT_H

#include <stdbool.h>
#include <stddef.h>

#include "train/param_store.h"

typedef struct xlkv_checkpoint_extras {
    const char *tokenizer_path;     /* copied into the checkpoint under its own file name; NULL = none */
    const void *trainer_state;      /* bytes of trainer_state.bin; NULL = none */
    size_t trainer_state_size;
    bool weights_bf16;              /* tensors as BF16 (half the bytes; for models one ships, not for resuming) */
    bool simulate_crash_before_rename; /* tests: stop after writing the temporary directory, as a kill would */
} xlkv_checkpoint_extras;

xlkv_status xlkv_checkpoint_write(const xlkv_param_store *store, const char *dir, const xlkv_checkpoint_extras *extras);

/* Loads the parameters of checkpoint `dir` into `store` (same shape and layer map, else a clear error). */
xlkv_status xlkv_checkpoint_load_params(xlkv_param_store *store, const char *dir);

/* Writes `size` bytes to `path` and fsyncs it (not atomic by itself). */
xlkv_status xlkv_write_file_synced(const char *path, const void *data, size_t size);

#endif
