/* tests/test_tokenizer: the stories260K vocabulary (tok512.bin) encodes as llama2.c run.c does, decoding follows
 * run.c decode(), GPT-2 byte symbols decode to bytes, loading picks the format, and a 100 KB text encodes with the
 * 32000-token Llama vocabulary well under a second. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/file.h"
#include "model/tokenizer.h"
#include "testutil.h"

static xlkv_tokenizer *load_shared(const char *relative) {
    char *path = tu_shared_data(relative);
    if (!path) return NULL;
    xlkv_tokenizer *tok;
    TU_ASSERT_OK(xlkv_tokenizer_load(path, &tok));
    free(path);
    return tok;
}

static void assert_encodes_to(const xlkv_tokenizer *tok, const char *text, bool add_bos, const int *expected, int n) {
    int *ids, got_n;
    TU_ASSERT_OK(xlkv_tokenizer_encode(tok, text, add_bos, &ids, &got_n));
    assert_int_equal(got_n, n);
    for (int i = 0; i < n; i++) assert_int_equal(ids[i], expected[i]);
    free(ids);
}

/* Expected ids from a direct Python transcription of run.c encode() over tok512.bin. */
static void stories260k_encodes_like_run_c(void **state) {
    (void)state;
    xlkv_tokenizer *tok = load_shared("models/stories260K/tok512.bin");
    if (!tok) skip();
    assert_int_equal(xlkv_tokenizer_n_vocab(tok), 512);
    assert_int_equal(xlkv_tokenizer_bos(tok), 1);
    assert_int_equal(xlkv_tokenizer_eos(tok), 2);
    static const int once[] = {1, 403, 407, 261, 378};
    assert_encodes_to(tok, "Once upon a time", true, once, 5);
    static const int lily[] = {1,   317, 269, 274, 287, 263, 377, 267, 265, 282, 295, 433,
                               426, 342, 394, 261, 370, 432, 352, 266, 268, 388, 443};
    assert_encodes_to(tok, "Lily and Tom went to the park. They saw a big, red ball!", true, lily, 23);
    static const int bytes[] = {1, 270, 485, 306, 414, 13}; /* 'é' and '\n' fall back to byte tokens */
    assert_encodes_to(tok, "h\xc3\xa9llo\n", true, bytes, 6);
    assert_encodes_to(tok, "", false, NULL, 0);
    static const int bos_only[] = {1};
    assert_encodes_to(tok, "", true, bos_only, 1);

    int *ids, n;
    TU_ASSERT_OK(xlkv_tokenizer_encode(tok, "Once upon a time", true, &ids, &n));
    char *text;
    TU_ASSERT_OK(xlkv_tokenizer_detokenize(tok, ids + 1, n - 1, &text, NULL));
    assert_string_equal(text, " Once upon a time"); /* no BOS before it: the dummy prefix space stays */
    free(text);
    char piece[64];
    int len = xlkv_tokenizer_decode(tok, 1, ids[1], piece, sizeof piece);
    assert_true(len > 0 && piece[0] != ' '); /* after BOS the leading space is dropped, as run.c does */
    free(ids);
    xlkv_tokenizer_free(tok);
}

static void decode_follows_run_c(void **state) {
    (void)state;
    xlkv_tokenizer *tok = load_shared("tokenizers/ggml-vocab-llama-spm.gguf");
    if (!tok) skip();
    char buf[16];
    assert_int_equal(xlkv_tokenizer_decode(tok, -1, 13, buf, sizeof buf), 1); /* <0x0A> */
    assert_int_equal(buf[0], '\n');
    int hello = xlkv_tokenizer_find(tok, "\xe2\x96\x81Hello");
    assert_int_equal(hello, 15043);
    assert_int_equal(xlkv_tokenizer_decode(tok, -1, hello, buf, sizeof buf), 6);
    assert_memory_equal(buf, " Hello", 6);
    assert_int_equal(xlkv_tokenizer_decode(tok, 1, hello, buf, sizeof buf), 5);
    assert_memory_equal(buf, "Hello", 5);
    assert_int_equal(xlkv_tokenizer_decode(tok, -1, 1, buf, sizeof buf), 0); /* <s> is a control token */
    assert_int_equal(xlkv_tokenizer_decode(tok, -1, hello, buf, 3), 3);      /* truncated to the capacity */
    assert_memory_equal(buf, " He", 3);
    assert_int_equal(xlkv_tokenizer_decode(tok, -1, 32000, buf, sizeof buf), -1);
    assert_int_equal(xlkv_tokenizer_decode(tok, -1, -1, buf, sizeof buf), -1);
    assert_null(xlkv_tokenizer_piece(tok, 32000));
    assert_string_equal(xlkv_tokenizer_piece(tok, 15043), "\xe2\x96\x81Hello");
    int bad[] = {15043, 40000};
    char *text;
    TU_ASSERT_FAILS(xlkv_tokenizer_detokenize(tok, bad, 2, &text, NULL), XLKV_E_INVALID, "40000");
    xlkv_tokenizer_free(tok);
}

static void gpt2_decodes_byte_symbols(void **state) {
    (void)state;
    xlkv_tokenizer *tok = load_shared("tokenizers/ggml-vocab-gpt-2.gguf");
    if (!tok) skip();
    assert_int_equal(xlkv_tokenizer_n_vocab(tok), 50257);
    int world = xlkv_tokenizer_find(tok, "\xc4\xa0world"); /* "Ġworld" */
    assert_true(world >= 0);
    char buf[16];
    assert_int_equal(xlkv_tokenizer_decode(tok, 1, world, buf, sizeof buf), 6);
    assert_memory_equal(buf, " world", 6);
    int newline = xlkv_tokenizer_find(tok, "\xc4\x8a"); /* "Ċ" */
    assert_int_equal(xlkv_tokenizer_decode(tok, -1, newline, buf, sizeof buf), 1);
    assert_int_equal(buf[0], '\n');
    /* Invalid UTF-8 still encodes (byte by byte) and decodes back exactly. */
    const char invalid[] = "ab\xff\xfe cd\xc3";
    int *ids, n;
    TU_ASSERT_OK(xlkv_tokenizer_encode(tok, invalid, false, &ids, &n));
    char *text;
    TU_ASSERT_OK(xlkv_tokenizer_detokenize(tok, ids, n, &text, NULL));
    assert_string_equal(text, invalid);
    free(text);
    free(ids);
    xlkv_tokenizer_free(tok);
}

static void load_detects_format_from_content(void **state) {
    (void)state;
    char *path = tu_shared_data("models/stories260K/tok512.bin");
    if (!path) skip();
    char *data;
    size_t size;
    TU_ASSERT_OK(xlkv_read_file(path, &data, &size));
    xlkv_tokenizer *tok;
    TU_ASSERT_OK(xlkv_tokenizer_load_memory(data, size, "tokenizer-without-extension", &tok));
    assert_int_equal(xlkv_tokenizer_n_vocab(tok), 512);
    xlkv_tokenizer_free(tok);
    free(data);
    free(path);
}

/* A Metaspace pre-tokenizer with split keeps merges inside words; without byte_fallback unknown text is <unk>. */
static void tokenizer_json_metaspace_split(void **state) {
    (void)state;
    const char json[] =
        "{\"model\": {\"type\": \"BPE\", \"unk_token\": \"<unk>\", \"byte_fallback\": false,"
        " \"vocab\": {\"<unk>\": 0, \"<s>\": 1, \"</s>\": 2, \"\u2581\": 3, \"a\": 4, \"b\": 5, \"ab\": 6,"
        " \"b\u2581\": 7},"
        " \"merges\": [\"b \u2581\", [\"a\", \"b\"]]},"
        " \"pre_tokenizer\": {\"type\": \"Metaspace\", \"replacement\": \"\u2581\", \"prepend_scheme\": \"first\","
        " \"split\": true},"
        " \"added_tokens\": [{\"id\": 1, \"content\": \"<s>\", \"special\": true}]}";
    char *path = tu_write_temp(".json", json, strlen(json));
    xlkv_tokenizer *tok;
    TU_ASSERT_OK(xlkv_tokenizer_load(path, &tok));
    assert_int_equal(xlkv_tokenizer_bos(tok), 1);
    assert_int_equal(xlkv_tokenizer_eos(tok), 2);
    static const int split_words[] = {1, 3, 6, 3, 6}; /* "b\u2581" would win across the word boundary */
    assert_encodes_to(tok, "ab ab", true, split_words, 5);
    static const int unknown[] = {3, 6, 0};
    assert_encodes_to(tok, "ab?", false, unknown, 3);
    xlkv_tokenizer_free(tok);
    remove(path);
    free(path);
}

static double seconds_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void encodes_100kb_quickly(void **state) {
    (void)state;
    char *text_path = tu_shared_data("text/tinyshakespeare.txt");
    xlkv_tokenizer *tok = text_path ? load_shared("tokenizers/llama2c-tokenizer.bin") : NULL;
    if (!tok) {
        free(text_path);
        skip();
    }
    char *text;
    size_t size;
    TU_ASSERT_OK(xlkv_read_file(text_path, &text, &size));
    assert_true(size > 100000);
    text[100000] = '\0';
    double start = seconds_now();
    int *ids, n;
    TU_ASSERT_OK(xlkv_tokenizer_encode(tok, text, true, &ids, &n));
    double elapsed = seconds_now() - start;
    fprintf(stderr, "100 KB -> %d tokens in %.3f s (32000-token vocabulary)\n", n, elapsed);
#ifdef NDEBUG
    assert_true(elapsed < 0.5);
#else
    assert_true(elapsed < 10.0); /* sanitizer builds are slower */
#endif
    int prev = ids[0];
    size_t len = 0;
    char *decoded = malloc(100001 + 16);
    assert_non_null(decoded);
    for (int i = 1; i < n; i++) {
        len += (size_t)xlkv_tokenizer_decode(tok, prev, ids[i], decoded + len, 100001 + 16 - len);
        prev = ids[i];
    }
    assert_int_equal(len, 100000);
    assert_memory_equal(decoded, text, 100000);
    free(decoded);
    free(ids);
    free(text);
    free(text_path);
    xlkv_tokenizer_free(tok);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(stories260k_encodes_like_run_c), cmocka_unit_test(decode_follows_run_c),
        cmocka_unit_test(gpt2_decodes_byte_symbols),      cmocka_unit_test(load_detects_format_from_content),
        cmocka_unit_test(tokenizer_json_metaspace_split), cmocka_unit_test(encodes_100kb_quickly),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
