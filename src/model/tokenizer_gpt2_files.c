/* model/tokenizer_gpt2_files: reads OpenAI's GPT-2 tokenizer files: encoder.json (= vocab.json, piece -> id) and
 * vocab.bpe (= merges.txt: a "#version" line, then one "a b" merge per line, best first). <|endoftext|> is both BOS
 * and EOS, as in GPT-2. */
#include <cjson/cJSON.h>
#include <stdlib.h>
#include <string.h>

#include "core/file.h"
#include "core/status.h"
#include "model/tokenizer_internal.h"

static xlkv_status read_encoder(xlkv_tokenizer *tok, const char *path) {
    char *json;
    size_t size;
    XLKV_TRY(xlkv_read_file(path, &json, &size));
    cJSON *root = cJSON_ParseWithLength(json, size);
    free(json);
    if (!root) return xlkv_fail(XLKV_E_FORMAT, "%s: not valid JSON", path);
    char *saved_source = tok->source;
    tok->source = (char *)path; /* messages about the vocabulary name encoder.json */
    xlkv_status st = tokenizer_read_json_vocab(tok, root, NULL);
    tok->source = saved_source;
    cJSON_Delete(root);
    return st;
}

static xlkv_status read_merges(xlkv_tokenizer *tok, const char *path) {
    char *text;
    size_t size;
    XLKV_TRY(xlkv_read_file(path, &text, &size));
    char *saved_source = tok->source;
    tok->source = (char *)path;
    xlkv_status st = XLKV_OK;
    int32_t rank = 0;
    for (size_t pos = 0; pos < size && st == XLKV_OK;) {
        char *line = text + pos;
        char *newline = memchr(line, '\n', size - pos);
        size_t len = newline ? (size_t)(newline - line) : size - pos;
        pos += len + 1;
        if (len && line[len - 1] == '\r') len--;
        if (len == 0 || (rank == 0 && line[0] == '#')) continue; /* blank lines and the "#version" header */
        st = tokenizer_add_merge_line(tok, line, len, rank++);
    }
    tok->source = saved_source;
    free(text);
    return st;
}

static xlkv_status build(xlkv_tokenizer **out, const char *encoder_json_path, const char *merges_path) {
    XLKV_TRY(tokenizer_create(encoder_json_path, TOKENIZER_BYTE_LEVEL, 0, out));
    xlkv_tokenizer *tok = *out;
    XLKV_TRY(read_encoder(tok, encoder_json_path));
    XLKV_TRY(read_merges(tok, merges_path));
    int end_of_text = tokenizer_find(tok, "<|endoftext|>", 13);
    if (end_of_text >= 0) tok->types[end_of_text] = TOKEN_TYPE_CONTROL;
    tok->bos_id = tok->eos_id = end_of_text;
    return tokenizer_finish(tok);
}

xlkv_status xlkv_tokenizer_load_gpt2(const char *encoder_json_path, const char *merges_path, xlkv_tokenizer **out) {
    *out = NULL;
    xlkv_tokenizer *tok = NULL;
    xlkv_status st = build(&tok, encoder_json_path, merges_path);
    if (st != XLKV_OK) {
        xlkv_tokenizer_free(tok);
        return st;
    }
    *out = tok;
    return XLKV_OK;
}
