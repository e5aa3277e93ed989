/* model/tokenizer_llama2c: reads llama2.c's tokenizer.bin: int32 max_token_length, then per token float32 score,
 * int32 length, bytes, up to the end of the file (the token count is not stored; it is the model's vocab_size).
 * Pieces spell spaces as ' ' (export.py replaced U+2581); BOS = 1, EOS = 2, and byte b falls back to id b + 3. */
#include <inttypes.h>
#include <string.h>

#include "core/status.h"
#include "model/tokenizer_internal.h"

/* Longer pieces than this are certainly corruption (SentencePiece caps pieces at 16 bytes by default). */
#define LLAMA2C_MAX_PIECE_BYTES (1 << 16)

static int32_t read_i32(const unsigned char *p) {
    int32_t v;
    memcpy(&v, p, 4);
    return v;
}

static xlkv_status read_tokens(xlkv_tokenizer *tok, const unsigned char *data, size_t size, const char *name) {
    if (size < 4) return xlkv_fail(XLKV_E_FORMAT, "%s: truncated tokenizer.bin: %zu bytes, no header", name, size);
    int32_t max_token_length = read_i32(data);
    if (max_token_length <= 0 || max_token_length > LLAMA2C_MAX_PIECE_BYTES)
        return xlkv_fail(XLKV_E_FORMAT, "%s: max_token_length %" PRId32 " is not in 1..%d", name, max_token_length,
                         LLAMA2C_MAX_PIECE_BYTES);
    size_t pos = 4;
    while (pos < size) {
        int id = tok->n_vocab;
        if (size - pos < 8)
            return xlkv_fail(XLKV_E_FORMAT, "%s: truncated tokenizer.bin: token %d header cut at offset %zu", name, id,
                             pos);
        float score;
        memcpy(&score, data + pos, 4);
        int32_t len = read_i32(data + pos + 4);
        pos += 8;
        if (len < 0 || len > max_token_length)
            return xlkv_fail(XLKV_E_FORMAT, "%s: token %d has length %" PRId32 ", outside 0..max_token_length (%" PRId32 ")",
                             name, id, len, max_token_length);
        if ((size_t)len > size - pos)
            return xlkv_fail(XLKV_E_FORMAT, "%s: truncated tokenizer.bin: token %d needs %" PRId32 " bytes at offset %zu, %zu left",
                             name, id, len, pos, size - pos);
        if (memchr(data + pos, '\0', (size_t)len))
            return xlkv_fail(XLKV_E_FORMAT, "%s: token %d contains a NUL byte", name, id);
        XLKV_TRY(tokenizer_add_piece(tok, (const char *)data + pos, (size_t)len, score, TOKEN_TYPE_NORMAL));
        pos += (size_t)len;
    }
    return XLKV_OK;
}

xlkv_status tokenizer_load_llama2c(const unsigned char *data, size_t size, const char *name, xlkv_tokenizer **out) {
    *out = NULL;
    xlkv_tokenizer *tok;
    XLKV_TRY(tokenizer_create(name, TOKENIZER_SPM_SCORES, 0, &tok));
    xlkv_status st = read_tokens(tok, data, size, name);
    if (st == XLKV_OK && tok->n_vocab < 3)
        st = xlkv_fail(XLKV_E_FORMAT, "%s: only %d tokens; a llama2.c vocabulary has at least <unk>, <s>, </s>", name,
                       tok->n_vocab);
    if (st == XLKV_OK) {
        tok->unk_id = 0;
        tok->bos_id = 1;
        tok->eos_id = 2;
        tok->space_is_metaspace = false;
        tok->add_space_prefix = true;
        tok->byte_fallback_plus3 = true;
        st = tokenizer_finish(tok);
    }
    if (st != XLKV_OK) {
        xlkv_tokenizer_free(tok);
        return st;
    }
    *out = tok;
    return XLKV_OK;
}
