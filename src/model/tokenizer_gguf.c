/* model/tokenizer_gguf: builds a tokenizer from the tokenizer.ggml.* metadata of a GGUF file (llama.cpp's
 * vocabulary-only files or a full model): model "llama" is SentencePiece BPE by scores, "gpt2" is byte-level BPE by
 * merges; tokens, scores, token types, merges and the special ids are read and checked against each other. */
#include <inttypes.h>
#include <string.h>

#include "core/status.h"
#include "model/gguf.h"
#include "model/tokenizer_internal.h"

static xlkv_status require_array(const xlkv_gguf *gguf, const char *key, xlkv_gguf_type elem, bool numeric,
                                 const xlkv_gguf_value **out) {
    const xlkv_gguf_value *v = xlkv_gguf_find(gguf, key);
    *out = v;
    if (!v) return xlkv_fail(XLKV_E_FORMAT, "%s: GGUF metadata lacks '%s'", xlkv_gguf_name(gguf), key);
    bool ok = v->type == XLKV_GGUF_ARRAY &&
              (numeric ? v->elem_type != XLKV_GGUF_STRING && v->elem_type != XLKV_GGUF_ARRAY : v->elem_type == elem);
    if (!ok) return xlkv_fail(XLKV_E_FORMAT, "%s: GGUF '%s' is not an array of %s", xlkv_gguf_name(gguf), key,
                              numeric ? "numbers" : "strings");
    return XLKV_OK;
}

/* An optional integer id; -1 when absent. */
static xlkv_status read_special_id(const xlkv_gguf *gguf, const char *key, int *out) {
    const xlkv_gguf_value *v = xlkv_gguf_find(gguf, key);
    if (!v) return XLKV_OK;
    int64_t id;
    if (!xlkv_gguf_value_int64(v, &id) || id < -1 || id > INT32_MAX)
        return xlkv_fail(XLKV_E_FORMAT, "%s: GGUF '%s' is not a token id", xlkv_gguf_name(gguf), key);
    *out = (int)id;
    return XLKV_OK;
}

static xlkv_status read_model_type(const xlkv_gguf *gguf, tokenizer_algorithm *out) {
    const char *name = xlkv_gguf_name(gguf);
    const char *model;
    size_t len;
    if (!xlkv_gguf_value_string(xlkv_gguf_find(gguf, "tokenizer.ggml.model"), &model, &len))
        return xlkv_fail(XLKV_E_FORMAT, "%s: GGUF metadata lacks the string 'tokenizer.ggml.model'", name);
    if (len == 5 && memcmp(model, "llama", 5) == 0) {
        *out = TOKENIZER_SPM_SCORES;
        return XLKV_OK;
    }
    if (len == 4 && memcmp(model, "gpt2", 4) == 0) {
        /* "gpt2" vocabularies differ in their pre-tokenizer regex; only GPT-2's own is implemented. */
        const char *pre;
        size_t pre_len;
        if (xlkv_gguf_value_string(xlkv_gguf_find(gguf, "tokenizer.ggml.pre"), &pre, &pre_len) &&
            !(pre_len == 7 && memcmp(pre, "default", 7) == 0) && !(pre_len == 5 && memcmp(pre, "gpt-2", 5) == 0))
            return xlkv_fail(XLKV_E_UNSUPPORTED, "%s: GGUF pre-tokenizer '%.*s' is not supported (only gpt-2)", name,
                             (int)(pre_len > 64 ? 64 : pre_len), pre);
        *out = TOKENIZER_BYTE_LEVEL;
        return XLKV_OK;
    }
    return xlkv_fail(XLKV_E_UNSUPPORTED, "%s: tokenizer model '%.*s' is not supported (expected llama or gpt2)", name,
                     (int)(len > 64 ? 64 : len), model);
}

static xlkv_status read_vocab(xlkv_tokenizer *tok, const xlkv_gguf *gguf) {
    const char *name = xlkv_gguf_name(gguf);
    const xlkv_gguf_value *tokens, *scores = NULL, *types = NULL;
    XLKV_TRY(require_array(gguf, "tokenizer.ggml.tokens", XLKV_GGUF_STRING, false, &tokens));
    if (tokens->count == 0 || tokens->count > INT32_MAX / 2)
        return xlkv_fail(XLKV_E_FORMAT, "%s: GGUF vocabulary has %" PRIu64 " tokens", name, tokens->count);
    if (xlkv_gguf_find(gguf, "tokenizer.ggml.scores"))
        XLKV_TRY(require_array(gguf, "tokenizer.ggml.scores", XLKV_GGUF_FLOAT32, true, &scores));
    else if (tok->algorithm == TOKENIZER_SPM_SCORES)
        return xlkv_fail(XLKV_E_FORMAT, "%s: GGUF llama vocabulary lacks 'tokenizer.ggml.scores'", name);
    if (xlkv_gguf_find(gguf, "tokenizer.ggml.token_type"))
        XLKV_TRY(require_array(gguf, "tokenizer.ggml.token_type", XLKV_GGUF_INT32, true, &types));
    if (scores && scores->count != tokens->count)
        return xlkv_fail(XLKV_E_FORMAT, "%s: %" PRIu64 " scores for %" PRIu64 " tokens", name, scores->count,
                         tokens->count);
    if (types && types->count != tokens->count)
        return xlkv_fail(XLKV_E_FORMAT, "%s: %" PRIu64 " token types for %" PRIu64 " tokens", name, types->count,
                         tokens->count);
    size_t cursor = 0;
    for (uint64_t i = 0; i < tokens->count; i++) {
        const char *piece;
        size_t len;
        double score = 0.0;
        int64_t type = TOKEN_TYPE_NORMAL;
        if (!xlkv_gguf_array_next_string(tokens, &cursor, &piece, &len))
            return xlkv_fail(XLKV_E_FORMAT, "%s: GGUF token %" PRIu64 " is missing", name, i);
        if (memchr(piece, '\0', len)) return xlkv_fail(XLKV_E_FORMAT, "%s: token %" PRIu64 " contains a NUL byte", name, i);
        if (scores) xlkv_gguf_array_double(scores, i, &score);
        if (types && (!xlkv_gguf_array_int64(types, i, &type) || type < 0 || type > 255)) type = TOKEN_TYPE_NORMAL;
        XLKV_TRY(tokenizer_add_piece(tok, piece, len, (float)score, (int)type));
    }
    return tokenizer_index_pieces(tok);
}

static xlkv_status read_merges(xlkv_tokenizer *tok, const xlkv_gguf *gguf) {
    const xlkv_gguf_value *merges;
    XLKV_TRY(require_array(gguf, "tokenizer.ggml.merges", XLKV_GGUF_STRING, false, &merges));
    if (merges->count > INT32_MAX)
        return xlkv_fail(XLKV_E_FORMAT, "%s: %" PRIu64 " merges", xlkv_gguf_name(gguf), merges->count);
    size_t cursor = 0;
    const char *line;
    size_t len;
    for (int32_t rank = 0; xlkv_gguf_array_next_string(merges, &cursor, &line, &len); rank++)
        XLKV_TRY(tokenizer_add_merge_line(tok, line, len, rank));
    return XLKV_OK;
}

static xlkv_status build(xlkv_tokenizer **out, const xlkv_gguf *gguf) {
    tokenizer_algorithm algorithm;
    XLKV_TRY(read_model_type(gguf, &algorithm));
    XLKV_TRY(tokenizer_create(xlkv_gguf_name(gguf), algorithm, 0, out));
    xlkv_tokenizer *tok = *out;
    XLKV_TRY(read_vocab(tok, gguf));
    if (algorithm == TOKENIZER_BYTE_LEVEL) XLKV_TRY(read_merges(tok, gguf));
    XLKV_TRY(read_special_id(gguf, "tokenizer.ggml.bos_token_id", &tok->bos_id));
    XLKV_TRY(read_special_id(gguf, "tokenizer.ggml.eos_token_id", &tok->eos_id));
    XLKV_TRY(read_special_id(gguf, "tokenizer.ggml.unknown_token_id", &tok->unk_id));
    tok->space_is_metaspace = true;
    tok->add_space_prefix = algorithm == TOKENIZER_SPM_SCORES;
    const xlkv_gguf_value *prefix = xlkv_gguf_find(gguf, "tokenizer.ggml.add_space_prefix");
    int64_t flag;
    if (prefix && xlkv_gguf_value_int64(prefix, &flag)) tok->add_space_prefix = flag != 0;
    return tokenizer_finish(tok);
}

xlkv_status tokenizer_load_gguf(const unsigned char *data, size_t size, const char *name, xlkv_tokenizer **out) {
    *out = NULL;
    xlkv_gguf *gguf;
    XLKV_TRY(xlkv_gguf_open_memory(data, size, name, &gguf));
    xlkv_tokenizer *tok = NULL;
    xlkv_status st = build(&tok, gguf);
    xlkv_gguf_close(gguf);
    if (st != XLKV_OK) {
        xlkv_tokenizer_free(tok);
        return st;
    }
    *out = tok;
    return XLKV_OK;
}
