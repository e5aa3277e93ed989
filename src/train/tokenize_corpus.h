/* train/tokenize_corpus: text files -> token shards for the trainer (train/token_shards.h).
 *
 * Input: plain text, or .xz files (liblzma), such as the Gutenberg shards. A line holding only the byte 0x1E
 * separates books; each book's tokens are followed by the end-of-text id (the tokenizer's EOS), so the model learns
 * where books end. No BOS is added. Books are cut into chunks at blank lines (about 64 KiB each) and the chunks are
 * encoded in parallel (OpenMP), then concatenated in order: the output does not depend on the thread count. (Each
 * chunk is encoded on its own, so a SentencePiece tokenizer adds its dummy-prefix space at each chunk start.)
 * Held-out split: for input file i, its last `valid_fraction` of tokens go to valid-<i>.bin, the rest to
 * train-<i>.bin (for a single file such as tinyshakespeare this is the usual "last 10%" split). */
#ifndef XLKV_TRAIN_TOKENIZE_CORPUS_H
#define XLKV_TRAIN_TOKENIZE_CORPUS_H

#include <stdint.h>

#include "model/tokenizer.h"

typedef struct xlkv_tokenize_stats {
    uint64_t bytes;         /* decompressed text bytes read */
    uint64_t books;
    uint64_t train_tokens, valid_tokens;
} xlkv_tokenize_stats;

/* Reads a whole text file, decompressing .xz; heap, NUL-terminated. */
xlkv_status xlkv_read_text_file(const char *path, char **out_text, size_t *out_size);

/* Tokenizes `files` into shards in out_dir (created if absent). valid_fraction in [0, 1). */
xlkv_status xlkv_tokenize_corpus(const xlkv_tokenizer *tok, const char *const *files, int n_files, const char *out_dir,
                                 double valid_fraction, xlkv_tokenize_stats *stats);

#endif
