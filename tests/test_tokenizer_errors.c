/* tests/test_tokenizer_errors: every way a tokenizer file can be bad gets an error that names the file and the
 * problem, never a crash: truncated or inconsistent llama2.c tokenizer.bin, GGUF with bad magic / version / counts /
 * missing or mistyped keys, tokenizer.json that is not JSON or lacks parts, and bad GPT-2 files. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model/gguf.h"
#include "model/tokenizer.h"
#include "testutil.h"

/* ---- building bad files ---------------------------------------------------------------------------------------- */

typedef struct byte_writer {
    unsigned char data[4096];
    size_t size;
} byte_writer;

static void put(byte_writer *w, const void *bytes, size_t n) {
    assert_true(w->size + n <= sizeof w->data);
    memcpy(w->data + w->size, bytes, n);
    w->size += n;
}
static void put_u32(byte_writer *w, uint32_t v) { put(w, &v, 4); }
static void put_i32(byte_writer *w, int32_t v) { put(w, &v, 4); }
static void put_u64(byte_writer *w, uint64_t v) { put(w, &v, 8); }
static void put_f32(byte_writer *w, float v) { put(w, &v, 4); }
static void put_str(byte_writer *w, const char *s) {
    put_u64(w, strlen(s));
    put(w, s, strlen(s));
}

/* Loads bytes written to a temporary file with the given suffix and expects the failure. */
static void expect_load_failure(const byte_writer *w, const char *suffix, xlkv_status status, const char *needle) {
    char *path = tu_write_temp(suffix, w->data, w->size);
    xlkv_tokenizer *tok = (xlkv_tokenizer *)1;
    TU_ASSERT_FAILS(xlkv_tokenizer_load(path, &tok), status, needle);
    assert_null(tok);
    if (!strstr(xlkv_last_error(), path)) fail_msg("message '%s' does not name the file %s", xlkv_last_error(), path);
    remove(path);
    free(path);
}

static void expect_text_failure(const char *text, const char *suffix, xlkv_status status, const char *needle) {
    byte_writer w = {.size = 0};
    put(&w, text, strlen(text));
    expect_load_failure(&w, suffix, status, needle);
}

/* A valid llama2.c tokenizer.bin header + <unk>, <s>, </s>. */
static void llama2c_start(byte_writer *w) {
    w->size = 0;
    put_i32(w, 8);
    static const char *const names[] = {"<unk>", "\n<s>\n", "\n</s>\n"};
    for (int i = 0; i < 3; i++) {
        put_f32(w, 0.0f);
        put_i32(w, (int32_t)strlen(names[i]));
        put(w, names[i], strlen(names[i]));
    }
}

/* ---- llama2.c tokenizer.bin ------------------------------------------------------------------------------------ */

static void llama2c_truncated_header(void **state) {
    (void)state;
    byte_writer w = {.size = 0};
    put(&w, "\x08\x00", 2);
    expect_load_failure(&w, ".bin", XLKV_E_FORMAT, "no header");
}

static void llama2c_bad_max_token_length(void **state) {
    (void)state;
    byte_writer w = {.size = 0};
    put_i32(&w, -5);
    expect_load_failure(&w, ".bin", XLKV_E_FORMAT, "max_token_length -5");
}

static void llama2c_negative_length(void **state) {
    (void)state;
    byte_writer w;
    llama2c_start(&w);
    put_f32(&w, -1.0f);
    put_i32(&w, -7);
    expect_load_failure(&w, ".bin", XLKV_E_FORMAT, "token 3 has length -7");
}

static void llama2c_huge_length(void **state) {
    (void)state;
    byte_writer w;
    llama2c_start(&w);
    put_f32(&w, -1.0f);
    put_i32(&w, 0x7fffffff);
    expect_load_failure(&w, ".bin", XLKV_E_FORMAT, "token 3 has length 2147483647");
}

static void llama2c_truncated_token(void **state) {
    (void)state;
    byte_writer w;
    llama2c_start(&w);
    put_f32(&w, -1.0f);
    put_i32(&w, 6);
    put(&w, "abc", 3);
    expect_load_failure(&w, ".bin", XLKV_E_FORMAT, "token 3 needs 6 bytes");
}

static void llama2c_truncated_record(void **state) {
    (void)state;
    byte_writer w;
    llama2c_start(&w);
    put(&w, "\x00\x00", 2);
    expect_load_failure(&w, ".bin", XLKV_E_FORMAT, "token 3 header cut");
}

static void llama2c_too_few_tokens(void **state) {
    (void)state;
    byte_writer w = {.size = 0};
    put_i32(&w, 8);
    put_f32(&w, 0.0f);
    put_i32(&w, 1);
    put(&w, "a", 1);
    expect_load_failure(&w, ".bin", XLKV_E_FORMAT, "only 1 tokens");
}

/* ---- GGUF ------------------------------------------------------------------------------------------------------ */

static void gguf_header(byte_writer *w, uint32_t version, uint64_t kv_count) {
    w->size = 0;
    put(w, "GGUF", 4);
    put_u32(w, version);
    put_u64(w, 0);
    put_u64(w, kv_count);
}

static void kv_string(byte_writer *w, const char *key, const char *value) {
    put_str(w, key);
    put_u32(w, XLKV_GGUF_STRING);
    put_str(w, value);
}

static void kv_strings(byte_writer *w, const char *key, const char *const *values, int n) {
    put_str(w, key);
    put_u32(w, XLKV_GGUF_ARRAY);
    put_u32(w, XLKV_GGUF_STRING);
    put_u64(w, (uint64_t)n);
    for (int i = 0; i < n; i++) put_str(w, values[i]);
}

static void kv_floats(byte_writer *w, const char *key, int n) {
    put_str(w, key);
    put_u32(w, XLKV_GGUF_ARRAY);
    put_u32(w, XLKV_GGUF_FLOAT32);
    put_u64(w, (uint64_t)n);
    for (int i = 0; i < n; i++) put_f32(w, (float)-i);
}

static void kv_u32(byte_writer *w, const char *key, uint32_t value) {
    put_str(w, key);
    put_u32(w, XLKV_GGUF_UINT32);
    put_u32(w, value);
}

static const char *const TINY_VOCAB[] = {"<unk>", "<s>", "</s>", "\xe2\x96\x81", "a", "b", "ab"};

static void gguf_bad_magic(void **state) {
    (void)state;
    byte_writer w = {.size = 0};
    put(&w, "GGML", 4);
    put_u32(&w, 3);
    expect_load_failure(&w, ".gguf", XLKV_E_FORMAT, "bad magic");
}

static void gguf_bad_version(void **state) {
    (void)state;
    byte_writer w;
    gguf_header(&w, 1, 0);
    expect_load_failure(&w, ".gguf", XLKV_E_UNSUPPORTED, "GGUF version 1");
}

static void gguf_truncated_header(void **state) {
    (void)state;
    byte_writer w = {.size = 0};
    put(&w, "GGUF", 4);
    put_u32(&w, 3);
    put_u32(&w, 0);
    expect_load_failure(&w, ".gguf", XLKV_E_FORMAT, "tensor count");
}

static void gguf_count_beyond_file(void **state) {
    (void)state;
    byte_writer w;
    gguf_header(&w, 3, 1000000);
    kv_string(&w, "tokenizer.ggml.model", "llama");
    expect_load_failure(&w, ".gguf", XLKV_E_FORMAT, "metadata count 1000000");
}

static void gguf_string_beyond_file(void **state) {
    (void)state;
    byte_writer w;
    gguf_header(&w, 3, 1);
    put_str(&w, "tokenizer.ggml.model");
    put_u32(&w, XLKV_GGUF_STRING);
    put_u64(&w, 1u << 30);
    put(&w, "llama", 5);
    expect_load_failure(&w, ".gguf", XLKV_E_FORMAT, "beyond the end of the file");
}

static void gguf_array_beyond_file(void **state) {
    (void)state;
    byte_writer w;
    gguf_header(&w, 3, 1);
    put_str(&w, "tokenizer.ggml.tokens");
    put_u32(&w, XLKV_GGUF_ARRAY);
    put_u32(&w, XLKV_GGUF_STRING);
    put_u64(&w, UINT64_MAX / 2);
    expect_load_failure(&w, ".gguf", XLKV_E_FORMAT, "claims 9223372036854775807 elements");
}

static void gguf_unknown_value_type(void **state) {
    (void)state;
    byte_writer w;
    gguf_header(&w, 3, 1);
    put_str(&w, "general.weird");
    put_u32(&w, 99);
    put_u32(&w, 0);
    expect_load_failure(&w, ".gguf", XLKV_E_FORMAT, "unknown value type 99");
}

static void gguf_missing_model(void **state) {
    (void)state;
    byte_writer w;
    gguf_header(&w, 3, 1);
    kv_strings(&w, "tokenizer.ggml.tokens", TINY_VOCAB, 7);
    expect_load_failure(&w, ".gguf", XLKV_E_FORMAT, "lacks the string 'tokenizer.ggml.model'");
}

static void gguf_unknown_model(void **state) {
    (void)state;
    byte_writer w;
    gguf_header(&w, 3, 1);
    kv_string(&w, "tokenizer.ggml.model", "bert");
    expect_load_failure(&w, ".gguf", XLKV_E_UNSUPPORTED, "tokenizer model 'bert'");
}

static void gguf_missing_tokens(void **state) {
    (void)state;
    byte_writer w;
    gguf_header(&w, 3, 1);
    kv_string(&w, "tokenizer.ggml.model", "llama");
    expect_load_failure(&w, ".gguf", XLKV_E_FORMAT, "lacks 'tokenizer.ggml.tokens'");
}

static void gguf_score_count_mismatch(void **state) {
    (void)state;
    byte_writer w;
    gguf_header(&w, 3, 3);
    kv_string(&w, "tokenizer.ggml.model", "llama");
    kv_strings(&w, "tokenizer.ggml.tokens", TINY_VOCAB, 7);
    kv_floats(&w, "tokenizer.ggml.scores", 5);
    expect_load_failure(&w, ".gguf", XLKV_E_FORMAT, "5 scores for 7 tokens");
}

static void gguf_bos_out_of_range(void **state) {
    (void)state;
    byte_writer w;
    gguf_header(&w, 3, 4);
    kv_string(&w, "tokenizer.ggml.model", "llama");
    kv_strings(&w, "tokenizer.ggml.tokens", TINY_VOCAB, 7);
    kv_floats(&w, "tokenizer.ggml.scores", 7);
    kv_u32(&w, "tokenizer.ggml.bos_token_id", 70);
    expect_load_failure(&w, ".gguf", XLKV_E_FORMAT, "BOS token id 70");
}

static void gguf_merge_with_unknown_piece(void **state) {
    (void)state;
    static const char *const merges[] = {"a b", "a zz"};
    byte_writer w;
    gguf_header(&w, 3, 3);
    kv_string(&w, "tokenizer.ggml.model", "gpt2");
    kv_strings(&w, "tokenizer.ggml.tokens", TINY_VOCAB, 7);
    kv_strings(&w, "tokenizer.ggml.merges", merges, 2);
    expect_load_failure(&w, ".gguf", XLKV_E_FORMAT, "merge 1 \"a zz\"");
}

static void gguf_tiny_vocab_works(void **state) {
    (void)state;
    byte_writer w;
    gguf_header(&w, 3, 4);
    kv_string(&w, "tokenizer.ggml.model", "llama");
    kv_strings(&w, "tokenizer.ggml.tokens", TINY_VOCAB, 7);
    kv_floats(&w, "tokenizer.ggml.scores", 7);
    kv_u32(&w, "tokenizer.ggml.bos_token_id", 1);
    char *path = tu_write_temp(".gguf", w.data, w.size);
    xlkv_tokenizer *tok;
    TU_ASSERT_OK(xlkv_tokenizer_load(path, &tok));
    int *ids, n;
    TU_ASSERT_OK(xlkv_tokenizer_encode(tok, "ab?", true, &ids, &n));
    /* No byte tokens and no unknown id in this vocabulary: '?' is dropped. */
    assert_int_equal(n, 3);
    assert_int_equal(ids[0], 1);
    assert_int_equal(ids[1], 3);
    assert_int_equal(ids[2], 6);
    free(ids);
    xlkv_tokenizer_free(tok);
    remove(path);
    free(path);
}

/* ---- tokenizer.json -------------------------------------------------------------------------------------------- */

static void json_not_json(void **state) {
    (void)state;
    expect_text_failure("{\"model\": {\"vocab\": ", ".json", XLKV_E_FORMAT, "not valid JSON");
}

static void json_not_object(void **state) {
    (void)state;
    expect_text_failure("[1, 2]", ".json", XLKV_E_FORMAT, "not a JSON object");
}

static void json_lacks_model(void **state) {
    (void)state;
    expect_text_failure("{\"version\": \"1.0\"}", ".json", XLKV_E_FORMAT, "lacks the object 'model'");
}

static void json_lacks_vocab(void **state) {
    (void)state;
    expect_text_failure("{\"model\": {\"type\": \"BPE\", \"merges\": []}}", ".json", XLKV_E_FORMAT, "lacks model.vocab");
}

static void json_unknown_model_type(void **state) {
    (void)state;
    expect_text_failure("{\"model\": {\"type\": \"Unigram\", \"vocab\": [[\"a\", 0.0]]}}", ".json", XLKV_E_UNSUPPORTED,
                        "model type 'Unigram'");
}

static void json_bad_vocab_id(void **state) {
    (void)state;
    expect_text_failure("{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0, \"b\": 123456789}, \"merges\": []}}",
                        ".json", XLKV_E_FORMAT, "id 1.23457e+08");
}

static void json_merges_missing(void **state) {
    (void)state;
    expect_text_failure("{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}}}", ".json", XLKV_E_FORMAT,
                        "model.merges is missing");
}

static void json_bad_merge(void **state) {
    (void)state;
    expect_text_failure("{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0, \"b\": 1, \"ab\": 2}, \"merges\": [\"ab\"]}}",
                        ".json", XLKV_E_FORMAT, "merge 0 \"ab\" is not two pieces");
    expect_text_failure("{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0, \"b\": 1, \"ab\": 2}, \"merges\": [7]}}",
                        ".json", XLKV_E_FORMAT, "merge 0 is neither");
}

static void json_split_pretokenizer(void **state) {
    (void)state;
    expect_text_failure("{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, \"merges\": []}, \"pre_tokenizer\": "
                        "{\"type\": \"Sequence\", \"pretokenizers\": [{\"type\": \"Split\"}, {\"type\": \"ByteLevel\"}]}}",
                        ".json", XLKV_E_UNSUPPORTED, "Split pre-tokenizer");
}

/* ---- GPT-2 files and plain I/O --------------------------------------------------------------------------------- */

static void gpt2_files_bad(void **state) {
    (void)state;
    const char encoder[] = "{\"a\": 0, \"b\": 1, \"ab\": 2, \"<|endoftext|>\": 3}";
    const char merges[] = "#version: 0.2\na b\nab c\n";
    char *encoder_path = tu_write_temp(".json", encoder, strlen(encoder));
    char *merges_path = tu_write_temp(".bpe", merges, strlen(merges));
    xlkv_tokenizer *tok;
    TU_ASSERT_FAILS(xlkv_tokenizer_load_gpt2(encoder_path, merges_path, &tok), XLKV_E_FORMAT, "merge 1 \"ab c\"");
    assert_non_null(strstr(xlkv_last_error(), merges_path));
    TU_ASSERT_FAILS(xlkv_tokenizer_load_gpt2(merges_path, encoder_path, &tok), XLKV_E_FORMAT, "not valid JSON");
    TU_ASSERT_FAILS(xlkv_tokenizer_load_gpt2("/nonexistent/encoder.json", merges_path, &tok), XLKV_E_IO,
                    "/nonexistent/encoder.json");
    remove(encoder_path);
    remove(merges_path);
    free(encoder_path);
    free(merges_path);
}

static void missing_file(void **state) {
    (void)state;
    xlkv_tokenizer *tok;
    TU_ASSERT_FAILS(xlkv_tokenizer_load("/nonexistent/tokenizer.bin", &tok), XLKV_E_IO, "/nonexistent/tokenizer.bin");
}

static void empty_file(void **state) {
    (void)state;
    byte_writer w = {.size = 0};
    expect_load_failure(&w, ".bin", XLKV_E_FORMAT, "no header");
    expect_load_failure(&w, ".gguf", XLKV_E_FORMAT, "bad magic");
    expect_load_failure(&w, ".json", XLKV_E_FORMAT, "not valid JSON");
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(llama2c_truncated_header), cmocka_unit_test(llama2c_bad_max_token_length),
        cmocka_unit_test(llama2c_negative_length),  cmocka_unit_test(llama2c_huge_length),
        cmocka_unit_test(llama2c_truncated_token),  cmocka_unit_test(llama2c_truncated_record),
        cmocka_unit_test(llama2c_too_few_tokens),   cmocka_unit_test(gguf_bad_magic),
        cmocka_unit_test(gguf_bad_version),         cmocka_unit_test(gguf_truncated_header),
        cmocka_unit_test(gguf_count_beyond_file),   cmocka_unit_test(gguf_string_beyond_file),
        cmocka_unit_test(gguf_array_beyond_file),   cmocka_unit_test(gguf_unknown_value_type),
        cmocka_unit_test(gguf_missing_model),       cmocka_unit_test(gguf_unknown_model),
        cmocka_unit_test(gguf_missing_tokens),      cmocka_unit_test(gguf_score_count_mismatch),
        cmocka_unit_test(gguf_bos_out_of_range),    cmocka_unit_test(gguf_merge_with_unknown_piece),
        cmocka_unit_test(gguf_tiny_vocab_works),    cmocka_unit_test(json_not_json),
        cmocka_unit_test(json_not_object),          cmocka_unit_test(json_lacks_model),
        cmocka_unit_test(json_lacks_vocab),         cmocka_unit_test(json_unknown_model_type),
        cmocka_unit_test(json_bad_vocab_id),        cmocka_unit_test(json_merges_missing),
        cmocka_unit_test(json_bad_merge), cmocka_unit_test(json_split_pretokenizer),           cmocka_unit_test(gpt2_files_bad),
        cmocka_unit_test(missing_file),             cmocka_unit_test(empty_file),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
