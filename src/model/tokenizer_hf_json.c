/* model/tokenizer_hf_json: reads a Hugging Face tokenizer.json whose model is BPE, in its two common shapes:
 *  - SentencePiece-style (Llama, TinyLlama): normalizer Prepend("▁") + Replace(" " -> "▁"), or a Metaspace
 *    pre-tokenizer; byte_fallback; merges by rank;
 *  - GPT-2 byte-level: a ByteLevel pre-tokenizer (or decoder).
 * Merges may be "a b" strings or ["a", "b"] pairs. added_tokens mark special tokens and give BOS/EOS by name. */
#include <cjson/cJSON.h>
#include <stdlib.h>
#include <string.h>

#include "core/status.h"
#include "model/tokenizer_internal.h"

static bool string_is(const cJSON *item, const char *value) {
    return cJSON_IsString(item) && strcmp(item->valuestring, value) == 0;
}

static const cJSON *field(const cJSON *object, const char *key) {
    return cJSON_IsObject(object) ? cJSON_GetObjectItemCaseSensitive(object, key) : NULL;
}

/* The component of the given type: `component` itself or, for a "Sequence", one of its parts (listed under
 * list_key: "normalizers", "pretokenizers", "decoders"); NULL if none. */
static const cJSON *find_component(const cJSON *component, const char *list_key, const char *type) {
    if (string_is(field(component, "type"), type)) return component;
    if (!string_is(field(component, "type"), "Sequence")) return NULL;
    const cJSON *part;
    cJSON_ArrayForEach(part, field(component, list_key)) {
        const cJSON *found = find_component(part, list_key, type);
        if (found) return found;
    }
    return NULL;
}

/* ---- vocabulary ------------------------------------------------------------------------------------------------ */

static xlkv_status check_id(const xlkv_tokenizer *tok, const cJSON *id_item, int limit, const char *what, int *out) {
    double id = cJSON_IsNumber(id_item) ? id_item->valuedouble : -1;
    if (id < 0 || id >= limit || id != (int)id)
        return xlkv_fail(XLKV_E_FORMAT, "%s: %s has id %g, not an integer in 0..%d", tok->source, what, id, limit - 1);
    *out = (int)id;
    return XLKV_OK;
}

xlkv_status tokenizer_read_json_vocab(xlkv_tokenizer *tok, const cJSON *vocab, const cJSON *added_tokens) {
    if (!cJSON_IsObject(vocab) || !vocab->child)
        return xlkv_fail(XLKV_E_FORMAT, "%s: the vocabulary is not a non-empty JSON object of piece -> id", tok->source);
    int n_entries = cJSON_GetArraySize(vocab) + (cJSON_IsArray(added_tokens) ? cJSON_GetArraySize(added_tokens) : 0);
    /* Ids are dense in practice; n_entries bounds them so a corrupt id cannot request a huge table. */
    const char **by_id = calloc((size_t)n_entries, sizeof *by_id);
    uint8_t *types = calloc((size_t)n_entries, 1);
    xlkv_status st = XLKV_OK;
    int n_vocab = 0;
    if (!by_id || !types) st = xlkv_fail(XLKV_E_NOMEM, "%s: cannot allocate %d vocabulary entries", tok->source, n_entries);
    const cJSON *entry;
    cJSON_ArrayForEach(entry, vocab) {
        if (st != XLKV_OK) break;
        int id = 0;
        st = check_id(tok, entry, n_entries, "vocabulary entry", &id);
        if (st != XLKV_OK) break;
        by_id[id] = entry->string;
        types[id] = TOKEN_TYPE_NORMAL;
        if (id >= n_vocab) n_vocab = id + 1;
    }
    cJSON_ArrayForEach(entry, added_tokens) {
        if (st != XLKV_OK) break;
        const cJSON *content = field(entry, "content");
        int id = 0;
        if (!cJSON_IsString(content)) {
            st = xlkv_fail(XLKV_E_FORMAT, "%s: an added token lacks a string 'content'", tok->source);
            break;
        }
        st = check_id(tok, field(entry, "id"), n_entries, "added token", &id);
        if (st != XLKV_OK) break;
        by_id[id] = content->valuestring;
        types[id] = cJSON_IsTrue(field(entry, "special")) ? TOKEN_TYPE_CONTROL : TOKEN_TYPE_USER_DEFINED;
        if (id >= n_vocab) n_vocab = id + 1;
    }
    for (int id = 0; id < n_vocab && st == XLKV_OK; id++) {
        const char *piece = by_id[id] ? by_id[id] : ""; /* a gap in the ids: an unreachable, unused token */
        st = tokenizer_add_piece(tok, piece, strlen(piece), 0.0f, by_id[id] ? types[id] : TOKEN_TYPE_UNUSED);
    }
    free(by_id);
    free(types);
    return st == XLKV_OK ? tokenizer_index_pieces(tok) : st;
}

static int find_first(const xlkv_tokenizer *tok, const char *const *names) {
    for (; *names; names++) {
        int id = tokenizer_find(tok, *names, strlen(*names));
        if (id >= 0) return id;
    }
    return -1;
}

/* ---- merges ---------------------------------------------------------------------------------------------------- */

static xlkv_status read_merges(xlkv_tokenizer *tok, const cJSON *merges) {
    if (!cJSON_IsArray(merges)) return xlkv_fail(XLKV_E_FORMAT, "%s: model.merges is missing or not an array", tok->source);
    int32_t rank = 0;
    const cJSON *merge;
    cJSON_ArrayForEach(merge, merges) {
        if (cJSON_IsString(merge)) {
            XLKV_TRY(tokenizer_add_merge_line(tok, merge->valuestring, strlen(merge->valuestring), rank));
        } else if (cJSON_IsArray(merge) && cJSON_GetArraySize(merge) == 2 && cJSON_IsString(merge->child) &&
                   cJSON_IsString(merge->child->next)) {
            const char *left = merge->child->valuestring, *right = merge->child->next->valuestring;
            XLKV_TRY(tokenizer_add_merge(tok, left, strlen(left), right, strlen(right), rank));
        } else {
            return xlkv_fail(XLKV_E_FORMAT, "%s: merge %d is neither \"a b\" nor [\"a\", \"b\"]", tok->source, rank);
        }
        rank++;
    }
    return XLKV_OK;
}

/* ---- text handling --------------------------------------------------------------------------------------------- */

/* SentencePiece options from the normalizer / Metaspace pre-tokenizer. */
static void read_spm_options(xlkv_tokenizer *tok, const cJSON *root) {
    tok->space_is_metaspace = true;
    tok->add_space_prefix = false;
    const cJSON *prepend = find_component(field(root, "normalizer"), "normalizers", "Prepend");
    if (prepend && string_is(field(prepend, "prepend"), "\xe2\x96\x81")) tok->add_space_prefix = true;
    const cJSON *metaspace = find_component(field(root, "pre_tokenizer"), "pretokenizers", "Metaspace");
    if (metaspace) {
        const cJSON *scheme = field(metaspace, "prepend_scheme");
        tok->add_space_prefix = scheme ? !string_is(scheme, "never") : !cJSON_IsFalse(field(metaspace, "add_prefix_space"));
        tok->split_on_metaspace = !cJSON_IsFalse(field(metaspace, "split"));
    }
}

static bool is_byte_level(const cJSON *root) {
    return find_component(field(root, "pre_tokenizer"), "pretokenizers", "ByteLevel") ||
           find_component(field(root, "decoder"), "decoders", "ByteLevel");
}

static const char *const BOS_NAMES[] = {"<s>", "<|begin_of_text|>", "<bos>", "<|startoftext|>", "<|endoftext|>", NULL};
static const char *const EOS_NAMES[] = {"</s>", "<|end_of_text|>", "<eos>", "<|endoftext|>", NULL};

static xlkv_status build(xlkv_tokenizer **out, const cJSON *root, const char *name) {
    const cJSON *model = field(root, "model");
    if (!cJSON_IsObject(model)) return xlkv_fail(XLKV_E_FORMAT, "%s: tokenizer.json lacks the object 'model'", name);
    const cJSON *type = field(model, "type");
    if (type && !string_is(type, "BPE"))
        return xlkv_fail(XLKV_E_UNSUPPORTED, "%s: tokenizer model type '%s' is not supported (only BPE)", name,
                         cJSON_IsString(type) ? type->valuestring : "?");
    const cJSON *vocab = field(model, "vocab");
    if (!vocab) return xlkv_fail(XLKV_E_FORMAT, "%s: tokenizer.json lacks model.vocab", name);
    /* A Split pre-tokenizer carries its own regex (Llama 3, GPT-4 style); applying GPT-2's instead would silently
     * give different ids, so refuse it. */
    if (find_component(field(root, "pre_tokenizer"), "pretokenizers", "Split"))
        return xlkv_fail(XLKV_E_UNSUPPORTED, "%s: the Split pre-tokenizer (a custom regex) is not supported", name);
    bool byte_level = is_byte_level(root);
    XLKV_TRY(tokenizer_create(name, byte_level ? TOKENIZER_BYTE_LEVEL : TOKENIZER_SPM_MERGES, 0, out));
    xlkv_tokenizer *tok = *out;
    XLKV_TRY(tokenizer_read_json_vocab(tok, vocab, field(root, "added_tokens")));
    XLKV_TRY(read_merges(tok, field(model, "merges")));
    if (byte_level) {
        tok->add_space_prefix = false; /* GPT-2's ByteLevel has add_prefix_space false; true is not implemented */
        if (cJSON_IsTrue(field(find_component(field(root, "pre_tokenizer"), "pretokenizers", "ByteLevel"), "add_prefix_space")))
            return xlkv_fail(XLKV_E_UNSUPPORTED, "%s: ByteLevel add_prefix_space=true is not supported", name);
    } else {
        read_spm_options(tok, root);
    }
    tok->bos_id = find_first(tok, BOS_NAMES);
    tok->eos_id = find_first(tok, EOS_NAMES);
    const cJSON *unk = field(model, "unk_token");
    if (cJSON_IsString(unk)) tok->unk_id = tokenizer_find(tok, unk->valuestring, strlen(unk->valuestring));
    XLKV_TRY(tokenizer_finish(tok));
    if (!byte_level && !cJSON_IsTrue(field(model, "byte_fallback")))
        for (int b = 0; b < 256; b++) tok->byte_tokens[b] = -1; /* unknown code points become unk_token */
    return XLKV_OK;
}

xlkv_status tokenizer_load_hf_json(const char *json, size_t size, const char *name, xlkv_tokenizer **out) {
    *out = NULL;
    cJSON *root = cJSON_ParseWithLength(json, size);
    if (!root) {
        const char *where = cJSON_GetErrorPtr();
        size_t offset = where && where >= json && where <= json + size ? (size_t)(where - json) : 0;
        return xlkv_fail(XLKV_E_FORMAT, "%s: not valid JSON (parse error near byte %zu)", name, offset);
    }
    xlkv_tokenizer *tok = NULL;
    xlkv_status st = cJSON_IsObject(root) ? build(&tok, root, name)
                                          : xlkv_fail(XLKV_E_FORMAT, "%s: tokenizer.json is not a JSON object", name);
    cJSON_Delete(root);
    if (st != XLKV_OK) {
        xlkv_tokenizer_free(tok);
        return st;
    }
    *out = tok;
    return XLKV_OK;
}
