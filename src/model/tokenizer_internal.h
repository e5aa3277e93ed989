/* model/tokenizer_internal: the tokenizer object shared by the loaders (llama2.c bin, GGUF, tokenizer.json, GPT-2
 * files) and the two encoders (SentencePiece-style and GPT-2 byte-level). Private to src/model/tokenizer*.c.
 *
 * A loader fills pieces/scores/types with tokenizer_add_piece(), adds rank-ordered merges with tokenizer_add_merge()
 * (rank-based vocabularies only), sets the options, then calls tokenizer_finish(), which builds the byte-fallback
 * table and checks the special ids. */
#ifndef XLKV_MODEL_TOKENIZER_INTERNAL_H
#define XLKV_MODEL_TOKENIZER_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "model/tokenizer.h"

/* How a text becomes the initial symbols, and how pairs of symbols are chosen to merge. */
typedef enum tokenizer_algorithm {
    /* SentencePiece BPE as llama2.c run.c / llama.cpp: spaces are the space symbol, a dummy prefix space, unknown
     * code points fall back to byte tokens, and the adjacent pair whose concatenation has the highest score merges. */
    TOKENIZER_SPM_SCORES,
    /* The same text handling, but pairs merge by the rank of an explicit merge list (Hugging Face BPE with
     * byte_fallback, as in Llama / TinyLlama tokenizer.json). */
    TOKENIZER_SPM_MERGES,
    /* GPT-2 byte-level BPE: regex pre-tokenization, bytes mapped to printable code points, merges by rank. */
    TOKENIZER_BYTE_LEVEL,
} tokenizer_algorithm;

/* Token kinds (the GGUF tokenizer.ggml.token_type values). */
enum {
    TOKEN_TYPE_NORMAL = 1,
    TOKEN_TYPE_UNKNOWN = 2,
    TOKEN_TYPE_CONTROL = 3,
    TOKEN_TYPE_USER_DEFINED = 4,
    TOKEN_TYPE_UNUSED = 5,
    TOKEN_TYPE_BYTE = 6,
};

/* Open-addressing map from byte strings to token ids. */
typedef struct piece_index {
    int32_t *slots; /* token id or -1 */
    size_t n_slots; /* a power of two */
} piece_index;

/* Open-addressing map from a pair of token ids to the merge's rank and result. */
typedef struct merge_entry {
    uint64_t pair; /* left << 32 | right; UINT64_MAX when empty */
    int32_t rank;
    int32_t result;
} merge_entry;

typedef struct merge_index {
    merge_entry *slots;
    size_t n_slots;
    size_t n_used;
} merge_index;

struct xlkv_tokenizer {
    char *source; /* the path it was loaded from, for messages */
    tokenizer_algorithm algorithm;

    int n_vocab;
    int capacity;
    char **pieces;         /* [n_vocab] NUL-terminated (no piece contains NUL in supported formats) */
    uint32_t *piece_lens;  /* [n_vocab] */
    float *scores;         /* [n_vocab] */
    uint8_t *types;        /* [n_vocab] TOKEN_TYPE_* */
    piece_index index;     /* piece -> id, first id wins on duplicates */
    merge_index merges;    /* rank-based algorithms only */
    int32_t byte_tokens[256]; /* SPM byte fallback: id of <0xXX>, or -1 */

    int bos_id, eos_id, unk_id; /* -1 if none */

    /* SPM text handling. */
    bool space_is_metaspace;  /* pieces spell a space as U+2581 (GGUF, tokenizer.json), not ' ' (llama2.c) */
    bool add_space_prefix;    /* the dummy prefix space of SentencePiece */
    bool split_on_metaspace;  /* Metaspace pre-tokenizer with split: merges never cross a word start */
    bool byte_fallback_plus3; /* llama2.c: byte b is token b + 3 even when the <0xXX> pieces are absent */

    /* Byte-level handling. */
    void *pretokenizer; /* pcre2_code_8 *, the GPT-2 split regex */
};

/* ---- construction (tokenizer.c) -------------------------------------------------------------------------------- */
xlkv_status tokenizer_create(const char *source, tokenizer_algorithm algorithm, int expected_vocab, xlkv_tokenizer **out);
/* Appends a piece (copied) as the next id. */
xlkv_status tokenizer_add_piece(xlkv_tokenizer *tok, const char *piece, size_t len, float score, int type);
/* Builds the piece index; call after all pieces are added and before merges. */
xlkv_status tokenizer_index_pieces(xlkv_tokenizer *tok);
/* Adds the merge "left right" with the given rank. Returns XLKV_E_FORMAT (naming the merge) if a side or the
 * concatenation is not in the vocabulary. */
xlkv_status tokenizer_add_merge(xlkv_tokenizer *tok, const char *left, size_t left_len, const char *right,
                                size_t right_len, int32_t rank);
/* Splits a merges line "a b" at its single separating space and adds it. */
xlkv_status tokenizer_add_merge_line(xlkv_tokenizer *tok, const char *line, size_t len, int32_t rank);
/* Byte-fallback table, regex, checks of special ids. */
xlkv_status tokenizer_finish(xlkv_tokenizer *tok);

/* ---- lookups (tokenizer_index.c) ------------------------------------------------------------------------------- */
xlkv_status piece_index_build(piece_index *index, char *const *pieces, const uint32_t *lens, int n);
int piece_index_find(const piece_index *index, char *const *pieces, const uint32_t *lens, const char *s, size_t len);
void piece_index_free(piece_index *index);
xlkv_status merge_index_put(merge_index *index, int32_t left, int32_t right, int32_t rank, int32_t result);
const merge_entry *merge_index_find(const merge_index *index, int32_t left, int32_t right);
void merge_index_free(merge_index *index);

static inline int tokenizer_find(const xlkv_tokenizer *tok, const char *s, size_t len) {
    return piece_index_find(&tok->index, tok->pieces, tok->piece_lens, s, len);
}

/* ---- growing id buffers ---------------------------------------------------------------------------------------- */
typedef struct id_buffer {
    int *ids;
    int n;
    int cap;
} id_buffer;
xlkv_status id_buffer_push(id_buffer *buf, int id);

/* ---- the merge engine (tokenizer_merge.c) ---------------------------------------------------------------------- */
/* One initial symbol: bytes [start, start+len) of the text being merged, its token id (-1 if none) and whether it may
 * take part in merges (byte-fallback symbols may not, as in llama2.c). */
typedef struct merge_symbol {
    uint32_t start, len;
    int32_t id;
    bool mergeable;
} merge_symbol;

/* Merges the symbols of `text` (the SPM-escaped or byte-level-mapped word) by score (TOKENIZER_SPM_SCORES) or by
 * rank (the others), always the best pair first and the leftmost on ties, and appends the resulting ids. */
xlkv_status tokenizer_merge(const xlkv_tokenizer *tok, const char *text, merge_symbol *symbols, int n_symbols,
                            id_buffer *out);

/* ---- encoders -------------------------------------------------------------------------------------------------- */
xlkv_status tokenizer_encode_spm(const xlkv_tokenizer *tok, const char *text, size_t len, id_buffer *out);
xlkv_status tokenizer_encode_byte_level(const xlkv_tokenizer *tok, const char *text, size_t len, id_buffer *out);
/* GPT-2 byte <-> code point tables (tokenizer_bpe.c). */
uint32_t byte_level_codepoint(uint8_t byte);
int byte_level_byte(uint32_t codepoint); /* -1 if the code point stands for no byte */
xlkv_status byte_level_compile_regex(xlkv_tokenizer *tok);
void byte_level_free_regex(xlkv_tokenizer *tok);

/* ---- UTF-8 ----------------------------------------------------------------------------------------------------- */
/* Length of the UTF-8 sequence starting at s (1 for an invalid lead byte or a sequence cut short). */
size_t utf8_char_len(const char *s, size_t remaining);
/* Decodes one code point (U+FFFD on invalid input), sets *len to the bytes used. */
uint32_t utf8_decode(const char *s, size_t remaining, size_t *len);
size_t utf8_encode(uint32_t codepoint, char out[4]);

/* ---- loaders --------------------------------------------------------------------------------------------------- */
/* Each parses a whole file image; `name` (the path) is used in messages and kept as the tokenizer's source. */
xlkv_status tokenizer_load_llama2c(const unsigned char *data, size_t size, const char *name, xlkv_tokenizer **out);
xlkv_status tokenizer_load_gguf(const unsigned char *data, size_t size, const char *name, xlkv_tokenizer **out);
xlkv_status tokenizer_load_hf_json(const char *json, size_t size, const char *name, xlkv_tokenizer **out);
/* Fills the pieces from a JSON object {"piece": id, ...} plus an optional Hugging Face added_tokens array
 * ([{"id", "content", "special"}]), then indexes them (tokenizer_hf_json.c; also used for GPT-2 encoder.json). */
struct cJSON;
xlkv_status tokenizer_read_json_vocab(xlkv_tokenizer *tok, const struct cJSON *vocab, const struct cJSON *added_tokens);

#endif
