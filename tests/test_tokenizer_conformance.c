/* tests/test_tokenizer_conformance: every expected id list of llama.cpp's vocabulary test vectors
 * (ggml-vocab-llama-spm.gguf.inp/.out, ggml-vocab-gpt-2.gguf.inp/.out) is reproduced by every way of loading the same
 * vocabulary: the GGUF file, llama2.c's tokenizer.bin, GPT-2's encoder.json + vocab.bpe, and Hugging Face
 * tokenizer.json files generated here from those (BPE by merge rank, as HF stores Llama and GPT-2). Decoding the ids
 * gives the input back. Failing strings are printed with the expected and the actual ids. */
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/file.h"
#include "model/tokenizer.h"
#include "model/tokenizer_internal.h"
#include "testutil.h"

/* ---- the test vectors ------------------------------------------------------------------------------------------ */

typedef struct vocab_vectors {
    int n;
    char **inputs;
    int **expected;
    int *expected_n;
} vocab_vectors;

static void free_vectors(vocab_vectors *v) {
    for (int i = 0; i < v->n; i++) {
        free(v->inputs[i]);
        free(v->expected[i]);
    }
    free(v->inputs);
    free(v->expected);
    free(v->expected_n);
}

/* Inputs are separated by "\n__ggml_vocab_test__\n" (the file ends with one); the .out has one line of ids each. */
static bool load_vectors(const char *name, vocab_vectors *v) {
    memset(v, 0, sizeof *v);
    char inp_name[256], out_name[256];
    snprintf(inp_name, sizeof inp_name, "tokenizers/%s.inp", name);
    snprintf(out_name, sizeof out_name, "tokenizers/%s.out", name);
    char *inp_path = tu_shared_data(inp_name), *out_path = tu_shared_data(out_name);
    if (!inp_path || !out_path) {
        free(inp_path);
        free(out_path);
        return false;
    }
    char *inp, *out;
    size_t inp_size, out_size;
    TU_ASSERT_OK(xlkv_read_file(inp_path, &inp, &inp_size));
    TU_ASSERT_OK(xlkv_read_file(out_path, &out, &out_size));
    static const char separator[] = "\n__ggml_vocab_test__\n";
    const size_t sep_len = sizeof separator - 1;
    v->inputs = calloc(inp_size + 1, sizeof *v->inputs);
    v->expected = calloc(inp_size + 1, sizeof *v->expected);
    v->expected_n = calloc(inp_size + 1, sizeof *v->expected_n);
    assert_non_null(v->inputs);
    assert_non_null(v->expected);
    assert_non_null(v->expected_n);
    for (char *start = inp; start < inp + inp_size;) {
        char *end = strstr(start, separator);
        assert_non_null(end);
        size_t len = (size_t)(end - start);
        v->inputs[v->n] = malloc(len + 1);
        assert_non_null(v->inputs[v->n]);
        memcpy(v->inputs[v->n], start, len);
        v->inputs[v->n][len] = '\0';
        v->n++;
        start = end + sep_len;
    }
    char *line = out;
    for (int i = 0; i < v->n; i++) {
        char *newline = strchr(line, '\n');
        assert_non_null(newline);
        *newline = '\0';
        v->expected[i] = malloc((strlen(line) / 2 + 1) * sizeof(int));
        assert_non_null(v->expected[i]);
        for (char *p = line, *next; (v->expected[i][v->expected_n[i]] = (int)strtol(p, &next, 10)), next != p; p = next)
            v->expected_n[i]++;
        line = newline + 1;
    }
    assert_true(line == out + out_size); /* as many lines as inputs */
    free(inp);
    free(out);
    free(inp_path);
    free(out_path);
    return true;
}

static void print_ids(const char *label, const int *ids, int n) {
    fprintf(stderr, "    %s:", label);
    for (int i = 0; i < n; i++) fprintf(stderr, " %d", ids[i]);
    fprintf(stderr, "\n");
}

/* The SPM decoders drop the leading space only after BOS, so SPM round trips decode BOS + ids. */
static char *decode_after_bos(const xlkv_tokenizer *tok, const int *ids, int n) {
    size_t cap = 16, len = 0;
    for (int i = 0; i < n; i++) cap += strlen(xlkv_tokenizer_piece(tok, ids[i])) + 1;
    char *text = malloc(cap);
    assert_non_null(text);
    int prev = xlkv_tokenizer_bos(tok);
    for (int i = 0; i < n; i++) {
        int got = xlkv_tokenizer_decode(tok, prev, ids[i], text + len, cap - len);
        assert_true(got >= 0);
        len += (size_t)got;
        prev = ids[i];
    }
    text[len] = '\0';
    return text;
}

/* Encodes every input, compares with the expected ids and checks the round trip; returns the failures. */
static int check_vectors(const xlkv_tokenizer *tok, const vocab_vectors *v, const char *label, bool spm) {
    int failures = 0, roundtrip_failures = 0;
    for (int i = 0; i < v->n; i++) {
        int *ids, n;
        TU_ASSERT_OK(xlkv_tokenizer_encode(tok, v->inputs[i], false, &ids, &n));
        bool same = n == v->expected_n[i] && memcmp(ids, v->expected[i], (size_t)n * sizeof *ids) == 0;
        if (!same) {
            failures++;
            fprintf(stderr, "  [%s] vector %d \"%s\" differs\n", label, i, v->inputs[i]);
            print_ids("expected", v->expected[i], v->expected_n[i]);
            print_ids("got     ", ids, n);
        }
        char *text;
        if (spm) {
            text = decode_after_bos(tok, ids, n);
        } else {
            TU_ASSERT_OK(xlkv_tokenizer_detokenize(tok, ids, n, &text, NULL));
        }
        if (strcmp(text, v->inputs[i]) != 0) {
            roundtrip_failures++;
            fprintf(stderr, "  [%s] vector %d round trip: \"%s\" decodes to \"%s\"\n", label, i, v->inputs[i], text);
        }
        free(text);
        free(ids);
    }
    fprintf(stderr, "[%s] %d/%d vectors match, %d/%d round trips exact\n", label, v->n - failures, v->n,
            v->n - roundtrip_failures, v->n);
    return failures + roundtrip_failures;
}

static void check_file(const char *vectors_name, const char *vocab_relative, const char *label, bool spm) {
    vocab_vectors v;
    char *path = tu_shared_data(vocab_relative);
    if (!path || !load_vectors(vectors_name, &v)) {
        free(path);
        skip();
        return;
    }
    assert_int_equal(v.n, 46);
    xlkv_tokenizer *tok;
    TU_ASSERT_OK(xlkv_tokenizer_load(path, &tok));
    int failures = check_vectors(tok, &v, label, spm);
    xlkv_tokenizer_free(tok);
    free_vectors(&v);
    free(path);
    assert_int_equal(failures, 0);
}

static void llama_spm_from_gguf(void **state) {
    (void)state;
    check_file("ggml-vocab-llama-spm.gguf", "tokenizers/ggml-vocab-llama-spm.gguf", "llama gguf", true);
}

static void llama_spm_from_llama2c_bin(void **state) {
    (void)state;
    check_file("ggml-vocab-llama-spm.gguf", "tokenizers/llama2c-tokenizer.bin", "llama llama2c.bin", true);
}

static void gpt2_from_gguf(void **state) {
    (void)state;
    check_file("ggml-vocab-gpt-2.gguf", "tokenizers/ggml-vocab-gpt-2.gguf", "gpt2 gguf", false);
}

static void gpt2_from_encoder_and_merges(void **state) {
    (void)state;
    vocab_vectors v;
    char *encoder = tu_shared_data("tokenizers/gpt2-encoder.json");
    char *merges = tu_shared_data("tokenizers/gpt2-vocab.bpe");
    if (!encoder || !merges || !load_vectors("ggml-vocab-gpt-2.gguf", &v)) {
        free(encoder);
        free(merges);
        skip();
        return;
    }
    xlkv_tokenizer *tok;
    TU_ASSERT_OK(xlkv_tokenizer_load_gpt2(encoder, merges, &tok));
    assert_int_equal(xlkv_tokenizer_n_vocab(tok), 50257);
    assert_int_equal(xlkv_tokenizer_eos(tok), 50256);
    int failures = check_vectors(tok, &v, "gpt2 encoder.json+vocab.bpe", false);
    xlkv_tokenizer_free(tok);
    free_vectors(&v);
    free(encoder);
    free(merges);
    assert_int_equal(failures, 0);
}

/* ---- tokenizer.json generated from the same vocabularies ------------------------------------------------------- */

static char *write_json(cJSON *root) {
    char *text = cJSON_PrintUnformatted(root);
    assert_non_null(text);
    char *path = tu_write_temp(".json", text, strlen(text));
    cJSON_free(text);
    cJSON_Delete(root);
    return path;
}

static void check_json(const char *json_path, const char *vectors_name, const char *label, bool spm) {
    vocab_vectors v;
    assert_true(load_vectors(vectors_name, &v));
    xlkv_tokenizer *tok;
    TU_ASSERT_OK(xlkv_tokenizer_load(json_path, &tok));
    int failures = check_vectors(tok, &v, label, spm);
    xlkv_tokenizer_free(tok);
    free_vectors(&v);
    assert_int_equal(failures, 0);
}

/* GPT-2 as Hugging Face stores it: ByteLevel pre-tokenizer, merges as ["a", "b"] pairs (the newer form). */
static void gpt2_from_tokenizer_json(void **state) {
    (void)state;
    char *encoder = tu_shared_data("tokenizers/gpt2-encoder.json");
    char *merges = tu_shared_data("tokenizers/gpt2-vocab.bpe");
    char *vectors = tu_shared_data("tokenizers/ggml-vocab-gpt-2.gguf.out");
    if (!encoder || !merges || !vectors) {
        free(encoder);
        free(merges);
        free(vectors);
        skip();
        return;
    }
    char *encoder_text, *merges_text;
    TU_ASSERT_OK(xlkv_read_file(encoder, &encoder_text, NULL));
    TU_ASSERT_OK(xlkv_read_file(merges, &merges_text, NULL));
    cJSON *root = cJSON_CreateObject(), *model = cJSON_AddObjectToObject(root, "model");
    cJSON_AddStringToObject(model, "type", "BPE");
    cJSON_AddItemToObject(model, "vocab", cJSON_Parse(encoder_text));
    cJSON *merge_list = cJSON_AddArrayToObject(model, "merges");
    for (char *line = strtok(merges_text, "\n"); line; line = strtok(NULL, "\n")) {
        if (line[0] == '#') continue;
        char *space = strchr(line, ' ');
        assert_non_null(space);
        *space = '\0';
        const char *pair[2] = {line, space + 1};
        cJSON_AddItemToArray(merge_list, cJSON_CreateStringArray(pair, 2));
    }
    cJSON *pre = cJSON_AddObjectToObject(root, "pre_tokenizer");
    cJSON_AddStringToObject(pre, "type", "ByteLevel");
    cJSON_AddFalseToObject(pre, "add_prefix_space");
    cJSON *added = cJSON_AddArrayToObject(root, "added_tokens"), *eot = cJSON_CreateObject();
    cJSON_AddNumberToObject(eot, "id", 50256);
    cJSON_AddStringToObject(eot, "content", "<|endoftext|>");
    cJSON_AddTrueToObject(eot, "special");
    cJSON_AddItemToArray(added, eot);
    char *json_path = write_json(root);
    check_json(json_path, "ggml-vocab-gpt-2.gguf", "gpt2 tokenizer.json", false);
    remove(json_path);
    free(json_path);
    free(encoder_text);
    free(merges_text);
    free(encoder);
    free(merges);
    free(vectors);
}

typedef struct ranked_merge {
    float score;
    int left, right;
} ranked_merge;

static int by_score_then_ids(const void *a, const void *b) {
    const ranked_merge *x = a, *y = b;
    if (x->score != y->score) return x->score > y->score ? -1 : 1;
    if (x->left != y->left) return x->left - y->left;
    return x->right - y->right;
}

/* Llama as Hugging Face stores it (convert_slow_tokenizer's SentencePieceExtractor): every split of a piece into two
 * pieces is a merge, ranked by the piece's score; normalizer Prepend("▁") + Replace(" ", "▁"); byte_fallback. */
static void llama_from_tokenizer_json(void **state) {
    (void)state;
    char *gguf = tu_shared_data("tokenizers/ggml-vocab-llama-spm.gguf");
    char *vectors = tu_shared_data("tokenizers/ggml-vocab-llama-spm.gguf.out");
    if (!gguf || !vectors) {
        free(gguf);
        free(vectors);
        skip();
        return;
    }
    xlkv_tokenizer *spm;
    TU_ASSERT_OK(xlkv_tokenizer_load(gguf, &spm));
    cJSON *root = cJSON_CreateObject(), *model = cJSON_AddObjectToObject(root, "model");
    cJSON_AddStringToObject(model, "type", "BPE");
    cJSON_AddTrueToObject(model, "byte_fallback");
    cJSON_AddStringToObject(model, "unk_token", "<unk>");
    cJSON *vocab = cJSON_AddObjectToObject(model, "vocab");
    size_t n_merges = 0, cap = 1024;
    ranked_merge *ranked = malloc(cap * sizeof *ranked);
    assert_non_null(ranked);
    for (int id = 0; id < spm->n_vocab; id++) {
        cJSON_AddNumberToObject(vocab, spm->pieces[id], id);
        if (spm->types[id] != TOKEN_TYPE_NORMAL) continue;
        const char *piece = spm->pieces[id];
        size_t len = spm->piece_lens[id];
        for (size_t cut = 1; cut < len; cut++) {
            int left = tokenizer_find(spm, piece, cut), right = tokenizer_find(spm, piece + cut, len - cut);
            if (left < 0 || right < 0) continue;
            if (n_merges == cap) {
                cap *= 2;
                ranked = realloc(ranked, cap * sizeof *ranked);
                assert_non_null(ranked);
            }
            ranked[n_merges++] = (ranked_merge){spm->scores[id], left, right};
        }
    }
    qsort(ranked, n_merges, sizeof *ranked, by_score_then_ids);
    cJSON *merge_list = cJSON_AddArrayToObject(model, "merges");
    for (size_t i = 0; i < n_merges; i++) {
        char *line = malloc(strlen(spm->pieces[ranked[i].left]) + strlen(spm->pieces[ranked[i].right]) + 2);
        assert_non_null(line);
        sprintf(line, "%s %s", spm->pieces[ranked[i].left], spm->pieces[ranked[i].right]);
        cJSON_AddItemToArray(merge_list, cJSON_CreateString(line));
        free(line);
    }
    free(ranked);
    cJSON *normalizer = cJSON_AddObjectToObject(root, "normalizer"), *steps;
    cJSON_AddStringToObject(normalizer, "type", "Sequence");
    steps = cJSON_AddArrayToObject(normalizer, "normalizers");
    cJSON *prepend = cJSON_CreateObject(), *replace = cJSON_CreateObject();
    cJSON_AddStringToObject(prepend, "type", "Prepend");
    cJSON_AddStringToObject(prepend, "prepend", "\xe2\x96\x81");
    cJSON_AddStringToObject(replace, "type", "Replace");
    cJSON_AddItemToArray(steps, prepend);
    cJSON_AddItemToArray(steps, replace);
    cJSON *added = cJSON_AddArrayToObject(root, "added_tokens");
    for (int id = 0; id < 3; id++) {
        cJSON *token = cJSON_CreateObject();
        cJSON_AddNumberToObject(token, "id", id);
        cJSON_AddStringToObject(token, "content", spm->pieces[id]);
        cJSON_AddTrueToObject(token, "special");
        cJSON_AddItemToArray(added, token);
    }
    xlkv_tokenizer_free(spm);
    char *json_path = write_json(root);
    check_json(json_path, "ggml-vocab-llama-spm.gguf", "llama tokenizer.json", true);
    xlkv_tokenizer *tok;
    TU_ASSERT_OK(xlkv_tokenizer_load(json_path, &tok));
    assert_int_equal(xlkv_tokenizer_bos(tok), 1);
    assert_int_equal(xlkv_tokenizer_eos(tok), 2);
    xlkv_tokenizer_free(tok);
    remove(json_path);
    free(json_path);
    free(gguf);
    free(vectors);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(llama_spm_from_gguf),
        cmocka_unit_test(llama_spm_from_llama2c_bin),
        cmocka_unit_test(gpt2_from_gguf),
        cmocka_unit_test(gpt2_from_encoder_and_merges),
        cmocka_unit_test(gpt2_from_tokenizer_json),
        cmocka_unit_test(llama_from_tokenizer_json),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
