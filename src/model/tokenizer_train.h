/* model/tokenizer_train: trains a SentencePiece-style BPE vocabulary with byte fallback on text and writes it as a
 * Hugging Face tokenizer.json that xlkv_tokenizer_load() (and Hugging Face tokenizers) read.
 *
 * The vocabulary follows the Llama convention: <unk>=0, <s>=1, </s>=2, the 256 byte-fallback tokens <0x00>..<0xFF> as
 * ids 3..258, then the base alphabet ("▁" first, then the UTF-8 characters seen at least min_frequency times, most
 * frequent first), then one piece per merge. Spaces are U+2581 ("▁") and every text gets the dummy prefix "▁", as the
 * encoder does.
 *
 * Training: each text is split into words at whitespace boundaries (a run of spaces stays with the word after it as
 * leading "▁"s; runs of other whitespace such as newlines are words of their own), word frequencies are counted in a
 * hash map, then the classic BPE loop merges the most frequent adjacent pair over the word table. Pair counts are kept
 * up to date incrementally (only the words holding the merged pair are touched, found through per-pair word lists) and
 * the best pair comes from a lazy max-heap. Ties go to the pair whose left piece, then right piece, is smaller
 * bytewise, so training is deterministic. Characters outside the alphabet (rarer than min_frequency, invalid UTF-8,
 * NUL) are barriers that never merge; the encoder spells them with byte tokens. Two different pairs may spell the same
 * piece ("th"+"e", "t"+"he"): the piece keeps one id and both merges are listed, as Hugging Face's trainer does. A
 * merge whose piece would spell a special or byte token ("<s>", "<0x41>") is skipped. */
#ifndef XLKV_MODEL_TOKENIZER_TRAIN_H
#define XLKV_MODEL_TOKENIZER_TRAIN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "xlkv.h"

#define XLKV_BPE_MIN_VOCAB 259 /* 3 specials + 256 byte tokens */

typedef struct xlkv_bpe_train_options {
    int vocab_size;    /* total, specials and byte tokens included; >=
                          XLKV_BPE_MIN_VOCAB */
    int min_frequency; /* a character joins the base alphabet when seen this many
                          times (default 2 when <= 0) */
    size_t max_chars;  /* stop reading text after this many bytes (0: no limit) */
    /* Called every few merges and at the end (may be NULL). */
    void (*progress)(void *user, int n_vocab, int target, int64_t best_count);
    void *progress_user;
} xlkv_bpe_train_options;

typedef struct xlkv_bpe_train_stats {
    uint64_t bytes; /* text bytes read */
    uint64_t words; /* word occurrences */
    uint64_t unique_words;
    int alphabet;         /* characters in the base alphabet */
    int alphabet_dropped; /* characters seen >= min_frequency that did not fit the
                             requested size */
    int merges;           /* merges listed in tokenizer.json */
    int vocab_size;       /* final size (< the requested one when merges ran out) */
    bool ran_out;         /* no pair left to merge before reaching the requested size */
} xlkv_bpe_train_stats;

typedef struct xlkv_bpe_trainer xlkv_bpe_trainer;

xlkv_status xlkv_bpe_trainer_create(const xlkv_bpe_train_options *options, xlkv_bpe_trainer **out);
void xlkv_bpe_trainer_free(xlkv_bpe_trainer *trainer);
/* Counts the words of one text (its start gets the dummy prefix). Ignores what lies beyond max_chars. */
xlkv_status xlkv_bpe_trainer_add_text(xlkv_bpe_trainer *trainer, const char *text, size_t len);
/* Reads a file (plain, .xz or .bz2) and adds it as one text, or one per book where lines holding only 0x1E separate
 * books (the separators are dropped). */
xlkv_status xlkv_bpe_trainer_add_file(xlkv_bpe_trainer *trainer, const char *path);
/* True once max_chars bytes have been read. */
bool xlkv_bpe_trainer_full(const xlkv_bpe_trainer *trainer);
/* Builds the vocabulary; call once, after the texts. stats may be NULL. */
xlkv_status xlkv_bpe_trainer_train(xlkv_bpe_trainer *trainer, xlkv_bpe_train_stats *stats);
/* Writes tokenizer.json atomically (a temporary file in the same folder, fsync, rename). */
xlkv_status xlkv_bpe_trainer_write_json(const xlkv_bpe_trainer *trainer, const char *path);

#endif
