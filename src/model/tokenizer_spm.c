/* model/tokenizer_spm: SentencePiece-style encoding (llama2.c run.c encode(), llama.cpp's SPM tokenizer, Hugging Face
 * BPE with byte_fallback): the dummy prefix space, spaces spelled as the vocabulary's space symbol, one symbol per
 * UTF-8 code point, byte-fallback tokens for code points outside the vocabulary, then the shared merge loop. */
#include <stdlib.h>
#include <string.h>

#include "core/status.h"
#include "model/tokenizer_internal.h"

#define METASPACE "\xe2\x96\x81" /* U+2581 LOWER ONE EIGHTH BLOCK */

/* The text with the dummy prefix and with every ' ' written as the vocabulary's space symbol. */
static char *escape_spaces(const xlkv_tokenizer *tok, const char *text, size_t len, size_t *out_len) {
    const char *space = tok->space_is_metaspace ? METASPACE : " ";
    size_t space_len = strlen(space);
    bool prefix = tok->add_space_prefix && len > 0;
    char *escaped = malloc((len + 1) * space_len + 1);
    if (!escaped) return NULL;
    size_t n = 0;
    if (prefix) {
        memcpy(escaped + n, space, space_len);
        n += space_len;
    }
    for (size_t i = 0; i < len; i++) {
        if (text[i] == ' ') {
            memcpy(escaped + n, space, space_len);
            n += space_len;
        } else {
            escaped[n++] = text[i];
        }
    }
    escaped[n] = '\0';
    *out_len = n;
    return escaped;
}

/* Appends the initial symbols of escaped[start, end): known code points as themselves, others as byte tokens. */
static int make_symbols(const xlkv_tokenizer *tok, const char *escaped, size_t start, size_t end,
                        merge_symbol *symbols) {
    int n = 0;
    /* llama2.c never merges byte tokens (their pieces are "<0xXX>"); HF BPE may if its merges say so. */
    bool bytes_merge = tok->algorithm != TOKENIZER_SPM_SCORES;
    for (size_t i = start; i < end;) {
        size_t char_len = utf8_char_len(escaped + i, end - i);
        int id = tokenizer_find(tok, escaped + i, char_len);
        if (id >= 0) {
            symbols[n++] = (merge_symbol){(uint32_t)i, (uint32_t)char_len, id, true};
        } else {
            for (size_t b = 0; b < char_len; b++) {
                int byte_id = tok->byte_tokens[(unsigned char)escaped[i + b]];
                symbols[n++] = (merge_symbol){(uint32_t)(i + b), 1, byte_id, bytes_merge && byte_id >= 0};
            }
        }
        i += char_len;
    }
    return n;
}

/* With a splitting Metaspace pre-tokenizer each word starts at a space symbol and merges stay inside it. */
static size_t word_end(const xlkv_tokenizer *tok, const char *escaped, size_t start, size_t len) {
    if (!tok->split_on_metaspace) return len;
    size_t space_len = tok->space_is_metaspace ? 3 : 1;
    const char *space = tok->space_is_metaspace ? METASPACE : " ";
    for (size_t i = start + 1; i + space_len <= len; i++)
        if (memcmp(escaped + i, space, space_len) == 0) return i;
    return len;
}

xlkv_status tokenizer_encode_spm(const xlkv_tokenizer *tok, const char *text, size_t len, id_buffer *out) {
    size_t escaped_len;
    char *escaped = escape_spaces(tok, text, len, &escaped_len);
    if (!escaped) return xlkv_fail(XLKV_E_NOMEM, "tokenizer: cannot allocate %zu bytes for the text", len);
    if (escaped_len > UINT32_MAX / 2) {
        free(escaped);
        return xlkv_fail(XLKV_E_INVALID, "tokenizer: text of %zu bytes is too long to encode at once", len);
    }
    merge_symbol *symbols = malloc((escaped_len + 1) * sizeof *symbols);
    if (!symbols) {
        free(escaped);
        return xlkv_fail(XLKV_E_NOMEM, "tokenizer: cannot allocate %zu symbols", escaped_len);
    }
    xlkv_status st = XLKV_OK;
    for (size_t start = 0; start < escaped_len && st == XLKV_OK;) {
        size_t end = word_end(tok, escaped, start, escaped_len);
        int n = make_symbols(tok, escaped, start, end, symbols);
        st = tokenizer_merge(tok, escaped, symbols, n, out);
        start = end;
    }
    free(symbols);
    free(escaped);
    return st;
}
