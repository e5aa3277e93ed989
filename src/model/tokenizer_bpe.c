/* model/tokenizer_bpe: GPT-2 byte-level BPE encoding: the GPT-2 pre-tokenizer regex splits the text into words (PCRE2
 * in UTF + UCP mode for \p{L} / \p{N}), each byte of a word becomes the printable code point of GPT-2's
 * bytes_to_unicode() table, and the word's symbols merge by rank. Also owns that byte <-> code point table. */
#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include <stdlib.h>
#include <string.h>

#include "core/status.h"
#include "model/tokenizer_internal.h"

/* The split pattern of GPT-2's encoder.py (and llama.cpp's "gpt2" pre-tokenizer). */
static const char GPT2_PATTERN[] =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";

/* bytes_to_unicode(): printable Latin-1 bytes stand for themselves, the other 68 bytes take 256, 257, ... in order. */
static bool byte_is_printable(unsigned b) { return (b >= 0x21 && b <= 0x7e) || (b >= 0xa1 && b <= 0xac) || b >= 0xae; }

uint32_t byte_level_codepoint(uint8_t byte) {
    if (byte_is_printable(byte)) return byte;
    uint32_t n = 0;
    for (unsigned b = 0; b < byte; b++)
        if (!byte_is_printable(b)) n++;
    return 256 + n;
}

int byte_level_byte(uint32_t codepoint) {
    if (codepoint < 256) return byte_is_printable(codepoint) ? (int)codepoint : -1;
    uint32_t n = 0;
    for (unsigned b = 0; b < 256; b++) {
        if (byte_is_printable(b)) continue;
        if (256 + n == codepoint) return (int)b;
        n++;
    }
    return -1;
}

xlkv_status byte_level_compile_regex(xlkv_tokenizer *tok) {
    int error_code;
    PCRE2_SIZE error_offset;
    pcre2_code *code = pcre2_compile((PCRE2_SPTR)GPT2_PATTERN, PCRE2_ZERO_TERMINATED,
                                     PCRE2_UTF | PCRE2_UCP | PCRE2_MATCH_INVALID_UTF, &error_code, &error_offset, NULL);
    if (!code) {
        PCRE2_UCHAR message[256];
        pcre2_get_error_message(error_code, message, sizeof message);
        return xlkv_fail(XLKV_E_UNSUPPORTED, "%s: cannot compile the GPT-2 pre-tokenizer regex: %s", tok->source,
                         (const char *)message);
    }
    pcre2_jit_compile(code, PCRE2_JIT_COMPLETE); /* optional speed-up; matching works without it */
    tok->pretokenizer = code;
    return XLKV_OK;
}

void byte_level_free_regex(xlkv_tokenizer *tok) {
    pcre2_code_free((pcre2_code *)tok->pretokenizer);
    tok->pretokenizer = NULL;
}

/* Maps a word's bytes to code points and merges them. `mapped` and `symbols` have room for 2 bytes / 1 symbol per
 * input byte. */
static xlkv_status encode_word(const xlkv_tokenizer *tok, const char *word, size_t len, char *mapped,
                               merge_symbol *symbols, id_buffer *out) {
    size_t n_mapped = 0;
    int n_symbols = 0;
    for (size_t i = 0; i < len; i++) {
        char utf8[4];
        size_t char_len = utf8_encode(byte_level_codepoint((uint8_t)word[i]), utf8);
        memcpy(mapped + n_mapped, utf8, char_len);
        int id = tokenizer_find(tok, utf8, char_len);
        symbols[n_symbols++] = (merge_symbol){(uint32_t)n_mapped, (uint32_t)char_len, id, true};
        n_mapped += char_len;
    }
    return tokenizer_merge(tok, mapped, symbols, n_symbols, out);
}

xlkv_status tokenizer_encode_byte_level(const xlkv_tokenizer *tok, const char *text, size_t len, id_buffer *out) {
    if (len == 0) return XLKV_OK;
    if (len > UINT32_MAX / 4)
        return xlkv_fail(XLKV_E_INVALID, "tokenizer: text of %zu bytes is too long to encode at once", len);
    const pcre2_code *code = tok->pretokenizer;
    pcre2_match_data *match = pcre2_match_data_create_from_pattern(code, NULL);
    char *mapped = malloc(2 * len);
    merge_symbol *symbols = malloc(len * sizeof *symbols);
    xlkv_status st = XLKV_OK;
    if (!match || !mapped || !symbols) {
        st = xlkv_fail(XLKV_E_NOMEM, "tokenizer: cannot allocate buffers for %zu bytes of text", len);
        goto done;
    }
    size_t pos = 0;
    while (pos < len && st == XLKV_OK) {
        int rc = pcre2_match(code, (PCRE2_SPTR)text, len, pos, 0, match, NULL);
        size_t match_start = len, match_end = len;
        if (rc > 0) {
            PCRE2_SIZE *ovector = pcre2_get_ovector_pointer(match);
            match_start = ovector[0];
            match_end = ovector[1];
        } else if (rc != PCRE2_ERROR_NOMATCH) {
            st = xlkv_fail(XLKV_E_INVALID, "tokenizer: pre-tokenizer regex failed (PCRE2 error %d) at byte %zu", rc, pos);
            break;
        }
        /* Bytes the regex skips (invalid UTF-8) still have to be encoded: they form a word of their own. */
        if (match_start > pos) st = encode_word(tok, text + pos, match_start - pos, mapped, symbols, out);
        if (st == XLKV_OK && match_end > match_start)
            st = encode_word(tok, text + match_start, match_end - match_start, mapped, symbols, out);
        pos = match_end > pos ? match_end : pos + 1;
    }
done:
    pcre2_match_data_free(match);
    free(mapped);
    free(symbols);
    return st;
}
