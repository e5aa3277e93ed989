/* train/token_shards: binary token shards (what `xlkv tokenize` writes, what the trainer streams).
 *
 * A shard file: a 32-byte header, then `count` token ids, little-endian, of `bytes_per_token` bytes each.
 *   bytes 0-7   magic "XLKVTOK\0"       bytes 8-11  version (1)       bytes 12-15 bytes per token (2 or 4)
 *   bytes 16-23 count                   bytes 24-27 vocab size        bytes 28-31 end-of-text id (0xFFFFFFFF: none)
 * uint16 ids when the vocabulary has at most 65536 tokens, else uint32. A data directory holds train-NNNNN.bin and
 * valid-NNNNN.bin shards and the tokenizer they were made with.
 * A dataset is the shards of one split, memory-mapped; windows of T + 1 consecutive tokens are drawn from a seeded
 * generator (a shard chosen with probability proportional to its usable windows, then a uniform start). */
#ifndef XLKV_TRAIN_TOKEN_SHARDS_H
#define XLKV_TRAIN_TOKEN_SHARDS_H

#include <stddef.h>
#include <stdint.h>

#include "core/file.h"
#include "train/rng.h"
#include "xlkv.h"

enum { XLKV_SHARD_HEADER_BYTES = 32 };

xlkv_status xlkv_token_shard_write(const char *path, const int32_t *tokens, size_t count, int vocab_size, int eos_id);

typedef struct xlkv_token_shard {
    xlkv_mapped_file file;
    const unsigned char *tokens; /* count ids of bytes_per_token bytes */
    uint64_t count;
    int bytes_per_token;
} xlkv_token_shard;

typedef struct xlkv_token_dataset {
    xlkv_token_shard *shards;
    int n_shards;
    uint64_t n_tokens;
    int vocab_size;
    int eos_id;
} xlkv_token_dataset;

/* Opens every `split`-*.bin shard of `dir` ("train" or "valid"), in name order. Errors name the directory or file:
 * missing directory, no shard, bad magic / version / width, a size that disagrees with the header, shards with
 * different vocabularies, an id outside the vocabulary is not checked here (the trainer checks every window). */
xlkv_status xlkv_token_dataset_open(const char *dir, const char *split, xlkv_token_dataset **out);
void xlkv_token_dataset_free(xlkv_token_dataset *ds);

/* Whether a window of seq + 1 tokens fits in some shard. */
int xlkv_token_dataset_fits(const xlkv_token_dataset *ds, int seq);

/* Draws `batch` windows: tokens[b*seq + t] = w[t], targets[b*seq + t] = w[t + 1]. */
void xlkv_token_dataset_sample(const xlkv_token_dataset *ds, xlkv_rng *rng, int batch, int seq, int *tokens,
                               int *targets);
/* Data parallel: draws the `global_batch` windows of xlkv_token_dataset_sample (the generator advances exactly as
 * it would) and keeps windows first .. first + count - 1 in tokens / targets ([count * seq]). The ranks' slices
 * of one draw are, together, the single process's batch: same windows, same order, same generator state after. */
void xlkv_token_dataset_sample_slice(const xlkv_token_dataset *ds, xlkv_rng *rng, int global_batch, int first,
                                     int count, int seq, int *tokens, int *targets);

#endif
