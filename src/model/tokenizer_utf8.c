/* model/tokenizer_utf8: the few UTF-8 helpers the tokenizers need (code point boundaries, decode, encode). Invalid
 * input never fails: a bad lead byte or a cut-short sequence counts as a single byte, so every byte is covered. */
#include "model/tokenizer_internal.h"

static size_t expected_len(unsigned char lead) {
    if (lead < 0x80) return 1;
    if ((lead & 0xe0) == 0xc0) return 2;
    if ((lead & 0xf0) == 0xe0) return 3;
    if ((lead & 0xf8) == 0xf0) return 4;
    return 1;
}

size_t utf8_char_len(const char *s, size_t remaining) {
    if (remaining == 0) return 0;
    size_t len = expected_len((unsigned char)s[0]);
    if (len > remaining) return 1;
    for (size_t i = 1; i < len; i++)
        if (((unsigned char)s[i] & 0xc0) != 0x80) return 1;
    return len;
}

uint32_t utf8_decode(const char *s, size_t remaining, size_t *len) {
    const unsigned char *u = (const unsigned char *)s;
    *len = utf8_char_len(s, remaining);
    switch (*len) {
    case 0: return 0;
    case 1: return u[0] < 0x80 ? u[0] : 0xfffd;
    case 2: return (uint32_t)(u[0] & 0x1f) << 6 | (u[1] & 0x3f);
    case 3: return (uint32_t)(u[0] & 0x0f) << 12 | (uint32_t)(u[1] & 0x3f) << 6 | (u[2] & 0x3f);
    default:
        return (uint32_t)(u[0] & 0x07) << 18 | (uint32_t)(u[1] & 0x3f) << 12 | (uint32_t)(u[2] & 0x3f) << 6 |
               (u[3] & 0x3f);
    }
}

size_t utf8_encode(uint32_t cp, char out[4]) {
    if (cp < 0x80) {
        out[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        out[0] = (char)(0xc0 | (cp >> 6));
        out[1] = (char)(0x80 | (cp & 0x3f));
        return 2;
    }
    if (cp < 0x10000) {
        out[0] = (char)(0xe0 | (cp >> 12));
        out[1] = (char)(0x80 | ((cp >> 6) & 0x3f));
        out[2] = (char)(0x80 | (cp & 0x3f));
        return 3;
    }
    out[0] = (char)(0xf0 | (cp >> 18));
    out[1] = (char)(0x80 | ((cp >> 12) & 0x3f));
    out[2] = (char)(0x80 | ((cp >> 6) & 0x3f));
    out[3] = (char)(0x80 | (cp & 0x3f));
    return 4;
}
