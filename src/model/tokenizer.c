/* model/tokenizer: the tokenizer object: construction helpers for the loaders, format detection, encode dispatch,
 * and decoding of ids back to bytes (run.c decode() for SentencePiece vocabularies, the inverse byte map for GPT-2). */
#include "model/tokenizer.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/file.h"
#include "core/status.h"
#include "model/tokenizer_internal.h"

/* ---- construction ---------------------------------------------------------------------------------------------- */

xlkv_status tokenizer_create(const char *source, tokenizer_algorithm algorithm, int expected_vocab, xlkv_tokenizer **out) {
    *out = NULL;
    xlkv_tokenizer *tok = calloc(1, sizeof *tok);
    if (!tok || !(tok->source = strdup(source))) {
        free(tok);
        return xlkv_fail(XLKV_E_NOMEM, "%s: cannot allocate a tokenizer", source);
    }
    tok->algorithm = algorithm;
    tok->bos_id = tok->eos_id = tok->unk_id = -1;
    tok->add_space_prefix = true;
    if (expected_vocab > 0) {
        tok->pieces = calloc((size_t)expected_vocab, sizeof *tok->pieces);
        tok->piece_lens = calloc((size_t)expected_vocab, sizeof *tok->piece_lens);
        tok->scores = calloc((size_t)expected_vocab, sizeof *tok->scores);
        tok->types = calloc((size_t)expected_vocab, sizeof *tok->types);
        tok->capacity = expected_vocab;
        if (!tok->pieces || !tok->piece_lens || !tok->scores || !tok->types) {
            xlkv_tokenizer_free(tok);
            return xlkv_fail(XLKV_E_NOMEM, "%s: cannot allocate a vocabulary of %d tokens", source, expected_vocab);
        }
    }
    *out = tok;
    return XLKV_OK;
}

static xlkv_status grow_vocab(xlkv_tokenizer *tok) {
    int capacity = tok->capacity ? tok->capacity * 2 : 1024;
    char **pieces = realloc(tok->pieces, (size_t)capacity * sizeof *pieces);
    if (pieces) tok->pieces = pieces;
    uint32_t *lens = realloc(tok->piece_lens, (size_t)capacity * sizeof *lens);
    if (lens) tok->piece_lens = lens;
    float *scores = realloc(tok->scores, (size_t)capacity * sizeof *scores);
    if (scores) tok->scores = scores;
    uint8_t *types = realloc(tok->types, (size_t)capacity * sizeof *types);
    if (types) tok->types = types;
    if (!pieces || !lens || !scores || !types)
        return xlkv_fail(XLKV_E_NOMEM, "%s: cannot grow the vocabulary to %d tokens", tok->source, capacity);
    tok->capacity = capacity;
    return XLKV_OK;
}

xlkv_status tokenizer_add_piece(xlkv_tokenizer *tok, const char *piece, size_t len, float score, int type) {
    if (len > UINT32_MAX / 2)
        return xlkv_fail(XLKV_E_FORMAT, "%s: token %d is %zu bytes long", tok->source, tok->n_vocab, len);
    if (tok->n_vocab == tok->capacity) XLKV_TRY(grow_vocab(tok));
    char *copy = malloc(len + 1);
    if (!copy) return xlkv_fail(XLKV_E_NOMEM, "%s: cannot allocate token %d", tok->source, tok->n_vocab);
    memcpy(copy, piece, len);
    copy[len] = '\0';
    int id = tok->n_vocab++;
    tok->pieces[id] = copy;
    tok->piece_lens[id] = (uint32_t)len;
    tok->scores[id] = score;
    tok->types[id] = (uint8_t)type;
    return XLKV_OK;
}

xlkv_status tokenizer_index_pieces(xlkv_tokenizer *tok) {
    xlkv_status st = piece_index_build(&tok->index, tok->pieces, tok->piece_lens, tok->n_vocab);
    if (st != XLKV_OK) xlkv_error_prefix("%s", tok->source);
    return st;
}

xlkv_status tokenizer_add_merge(xlkv_tokenizer *tok, const char *left, size_t left_len, const char *right,
                                size_t right_len, int32_t rank) {
    int left_id = tokenizer_find(tok, left, left_len);
    int right_id = tokenizer_find(tok, right, right_len);
    char *joined = malloc(left_len + right_len + 1);
    if (!joined) return xlkv_fail(XLKV_E_NOMEM, "%s: out of memory reading merge %d", tok->source, rank);
    memcpy(joined, left, left_len);
    memcpy(joined + left_len, right, right_len);
    int result = tokenizer_find(tok, joined, left_len + right_len);
    free(joined);
    if (left_id < 0 || right_id < 0 || result < 0)
        return xlkv_fail(XLKV_E_FORMAT, "%s: merge %d \"%.*s %.*s\" uses a piece that is not in the vocabulary",
                         tok->source, rank, (int)(left_len > 64 ? 64 : left_len), left,
                         (int)(right_len > 64 ? 64 : right_len), right);
    xlkv_status st = merge_index_put(&tok->merges, left_id, right_id, rank, result);
    if (st != XLKV_OK) xlkv_error_prefix("%s", tok->source);
    return st;
}

xlkv_status tokenizer_add_merge_line(xlkv_tokenizer *tok, const char *line, size_t len, int32_t rank) {
    /* Pieces never contain a plain space (byte-level maps it to U+0120, SPM to U+2581), so the first one splits. */
    const char *space = memchr(line, ' ', len);
    if (!space || space == line || space + 1 == line + len)
        return xlkv_fail(XLKV_E_FORMAT, "%s: merge %d \"%.*s\" is not two pieces separated by a space", tok->source,
                         rank, (int)(len > 64 ? 64 : len), line);
    size_t left_len = (size_t)(space - line);
    return tokenizer_add_merge(tok, line, left_len, space + 1, len - left_len - 1, rank);
}

static xlkv_status check_special(const xlkv_tokenizer *tok, int id, const char *what) {
    if (id < -1 || id >= tok->n_vocab)
        return xlkv_fail(XLKV_E_FORMAT, "%s: %s token id %d is outside the vocabulary of %d tokens", tok->source, what,
                         id, tok->n_vocab);
    return XLKV_OK;
}

xlkv_status tokenizer_finish(xlkv_tokenizer *tok) {
    if (tok->n_vocab == 0) return xlkv_fail(XLKV_E_FORMAT, "%s: the vocabulary is empty", tok->source);
    if (!tok->index.slots) XLKV_TRY(tokenizer_index_pieces(tok));
    XLKV_TRY(check_special(tok, tok->bos_id, "BOS"));
    XLKV_TRY(check_special(tok, tok->eos_id, "EOS"));
    XLKV_TRY(check_special(tok, tok->unk_id, "unknown"));
    for (int b = 0; b < 256; b++) {
        char name[8];
        snprintf(name, sizeof name, "<0x%02X>", b);
        int id = tokenizer_find(tok, name, 6);
        if (id < 0 && tok->byte_fallback_plus3 && b + 3 < tok->n_vocab) id = b + 3;
        tok->byte_tokens[b] = id;
    }
    if (tok->algorithm == TOKENIZER_BYTE_LEVEL) XLKV_TRY(byte_level_compile_regex(tok));
    return XLKV_OK;
}

void xlkv_tokenizer_free(xlkv_tokenizer *tok) {
    if (!tok) return;
    for (int i = 0; i < tok->n_vocab; i++) free(tok->pieces[i]);
    free(tok->pieces);
    free(tok->piece_lens);
    free(tok->scores);
    free(tok->types);
    piece_index_free(&tok->index);
    merge_index_free(&tok->merges);
    byte_level_free_regex(tok);
    free(tok->source);
    free(tok);
}

/* ---- loading --------------------------------------------------------------------------------------------------- */

static bool has_suffix(const char *s, const char *suffix) {
    size_t n = strlen(s), m = strlen(suffix);
    return n >= m && strcmp(s + n - m, suffix) == 0;
}

static bool looks_like_json(const unsigned char *data, size_t size) {
    size_t i = 0;
    while (i < size && (data[i] == ' ' || data[i] == '\t' || data[i] == '\n' || data[i] == '\r')) i++;
    return i < size && data[i] == '{';
}

xlkv_status xlkv_tokenizer_load_memory(const void *data, size_t size, const char *name, xlkv_tokenizer **out) {
    *out = NULL;
    const unsigned char *bytes = data;
    if (has_suffix(name, ".gguf") || (size >= 4 && memcmp(bytes, "GGUF", 4) == 0))
        return tokenizer_load_gguf(bytes, size, name, out);
    if (has_suffix(name, ".json") || (!has_suffix(name, ".bin") && looks_like_json(bytes, size)))
        return tokenizer_load_hf_json((const char *)bytes, size, name, out);
    if (has_suffix(name, ".bin") || size >= 4) return tokenizer_load_llama2c(bytes, size, name, out);
    return xlkv_fail(XLKV_E_FORMAT, "%s: unrecognised tokenizer file (expected .bin, .json or .gguf)", name);
}

xlkv_status xlkv_tokenizer_load(const char *path, xlkv_tokenizer **out) {
    *out = NULL;
    xlkv_mapped_file file;
    XLKV_TRY(xlkv_map_file(path, &file));
    xlkv_status st = xlkv_tokenizer_load_memory(file.data, file.size, path, out);
    xlkv_unmap_file(&file);
    return st;
}

/* ---- queries --------------------------------------------------------------------------------------------------- */

int xlkv_tokenizer_n_vocab(const xlkv_tokenizer *tok) { return tok->n_vocab; }
int xlkv_tokenizer_bos(const xlkv_tokenizer *tok) { return tok->bos_id; }
int xlkv_tokenizer_eos(const xlkv_tokenizer *tok) { return tok->eos_id; }

const char *xlkv_tokenizer_piece(const xlkv_tokenizer *tok, int id) {
    return id >= 0 && id < tok->n_vocab ? tok->pieces[id] : NULL;
}

int xlkv_tokenizer_find(const xlkv_tokenizer *tok, const char *piece) { return tokenizer_find(tok, piece, strlen(piece)); }

/* ---- encoding -------------------------------------------------------------------------------------------------- */

xlkv_status id_buffer_push(id_buffer *buf, int id) {
    if (buf->n == buf->cap) {
        if (buf->cap > (1 << 29)) return xlkv_fail(XLKV_E_CAPACITY, "tokenizer: more than 2^30 tokens");
        int cap = buf->cap ? buf->cap * 2 : 64;
        int *ids = realloc(buf->ids, (size_t)cap * sizeof *ids);
        if (!ids) return xlkv_fail(XLKV_E_NOMEM, "tokenizer: cannot grow the output to %d ids", cap);
        buf->ids = ids;
        buf->cap = cap;
    }
    buf->ids[buf->n++] = id;
    return XLKV_OK;
}

xlkv_status xlkv_tokenizer_encode(const xlkv_tokenizer *tok, const char *text, bool add_bos, int **out_ids, int *out_n) {
    *out_ids = NULL;
    *out_n = 0;
    if (!tok || !text) return xlkv_fail(XLKV_E_INVALID, "tokenizer: encode needs a tokenizer and a text");
    id_buffer buf = {0};
    xlkv_status st = XLKV_OK;
    if (add_bos && tok->bos_id >= 0) st = id_buffer_push(&buf, tok->bos_id);
    if (st == XLKV_OK) {
        size_t len = strlen(text);
        st = tok->algorithm == TOKENIZER_BYTE_LEVEL ? tokenizer_encode_byte_level(tok, text, len, &buf)
                                                    : tokenizer_encode_spm(tok, text, len, &buf);
    }
    /* Always hand back an array, even for an empty text, so callers can free it unconditionally. */
    if (st == XLKV_OK && !buf.ids && !(buf.ids = malloc(sizeof *buf.ids)))
        st = xlkv_fail(XLKV_E_NOMEM, "tokenizer: cannot allocate the output");
    if (st != XLKV_OK) {
        free(buf.ids);
        return st;
    }
    *out_ids = buf.ids;
    *out_n = buf.n;
    return XLKV_OK;
}

/* ---- decoding -------------------------------------------------------------------------------------------------- */

static size_t put_bytes(char *buf, size_t cap, size_t at, const char *bytes, size_t n) {
    if (at < cap) memcpy(buf + at, bytes, n <= cap - at ? n : cap - at);
    return at + n;
}

/* "<0xXX>" -> XX, else -1. */
static int byte_token_value(const char *piece, size_t len) {
    if (len != 6 || memcmp(piece, "<0x", 3) != 0 || piece[5] != '>') return -1;
    int value = 0;
    for (int i = 3; i < 5; i++) {
        char c = piece[i];
        int digit = c >= '0' && c <= '9' ? c - '0' : c >= 'A' && c <= 'F' ? c - 'A' + 10 : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
        if (digit < 0) return -1;
        value = value * 16 + digit;
    }
    return value;
}

static size_t decode_spm(const xlkv_tokenizer *tok, int prev_id, int id, char *buf, size_t cap) {
    const char *piece = tok->pieces[id];
    size_t len = tok->piece_lens[id];
    int byte = byte_token_value(piece, len);
    if (byte >= 0) {
        char c = (char)byte;
        return put_bytes(buf, cap, 0, &c, 1);
    }
    bool strip_space = prev_id >= 0 && prev_id == tok->bos_id;
    size_t n = 0;
    for (size_t i = 0; i < len;) {
        bool is_space = piece[i] == ' ';
        size_t step = 1;
        if (len - i >= 3 && memcmp(piece + i, "\xe2\x96\x81", 3) == 0) is_space = true, step = 3;
        if (is_space && i == 0 && strip_space) {
            i += step;
            continue;
        }
        n = is_space ? put_bytes(buf, cap, n, " ", 1) : put_bytes(buf, cap, n, piece + i, 1);
        i += step;
    }
    return n;
}

static size_t decode_byte_level(const xlkv_tokenizer *tok, int id, char *buf, size_t cap) {
    const char *piece = tok->pieces[id];
    size_t len = tok->piece_lens[id];
    if (tok->types[id] == TOKEN_TYPE_USER_DEFINED) return put_bytes(buf, cap, 0, piece, len);
    size_t n = 0;
    for (size_t i = 0; i < len;) {
        size_t char_len;
        uint32_t cp = utf8_decode(piece + i, len - i, &char_len);
        int byte = byte_level_byte(cp);
        if (byte >= 0) {
            char c = (char)byte;
            n = put_bytes(buf, cap, n, &c, 1);
        } else {
            n = put_bytes(buf, cap, n, piece + i, char_len); /* not a byte symbol: keep it as written */
        }
        i += char_len;
    }
    return n;
}

int xlkv_tokenizer_decode(const xlkv_tokenizer *tok, int prev_id, int id, char *buf, size_t cap) {
    if (!tok || id < 0 || id >= tok->n_vocab) return -1;
    if (tok->types[id] == TOKEN_TYPE_CONTROL) return 0; /* <s>, </s>, <|endoftext|> contribute no text */
    size_t n = tok->algorithm == TOKENIZER_BYTE_LEVEL ? decode_byte_level(tok, id, buf, cap)
                                                      : decode_spm(tok, prev_id, id, buf, cap);
    return (int)(n < cap ? n : cap);
}

xlkv_status xlkv_tokenizer_detokenize(const xlkv_tokenizer *tok, const int *ids, int n, char **out_text, size_t *out_len) {
    *out_text = NULL;
    if (out_len) *out_len = 0;
    size_t cap = 64, len = 0;
    char *text = malloc(cap);
    if (!text) return xlkv_fail(XLKV_E_NOMEM, "tokenizer: cannot allocate the decoded text");
    for (int i = 0; i < n; i++) {
        if (ids[i] < 0 || ids[i] >= tok->n_vocab) {
            free(text);
            return xlkv_fail(XLKV_E_INVALID, "tokenizer: id %d at position %d is outside the vocabulary of %d", ids[i],
                             i, tok->n_vocab);
        }
        /* A piece decodes to at most its own length (byte symbols and U+2581 only shrink). */
        size_t need = len + tok->piece_lens[ids[i]] + 1;
        if (need > cap) {
            while (cap < need) cap *= 2;
            char *grown = realloc(text, cap);
            if (!grown) {
                free(text);
                return xlkv_fail(XLKV_E_NOMEM, "tokenizer: cannot grow the decoded text to %zu bytes", cap);
            }
            text = grown;
        }
        len += (size_t)xlkv_tokenizer_decode(tok, i > 0 ? ids[i - 1] : -1, ids[i], text + len, cap - len);
    }
    text[len] = '\0';
    *out_text = text;
    if (out_len) *out_len = len;
    return XLKV_OK;
}
