/* tests/fuzz/fuzz_tokenizer: libFuzzer harness for the tokenizer loaders (llama2.c bin, GGUF, tokenizer.json) and,
 * when a fuzzed file loads, for encoding and decoding with it. The first input byte picks the format.
 *
 * Build and run (clang only; the harness compiles the tokenizer sources itself so they carry coverage):
 *   clang -g -O1 -fsanitize=fuzzer,address,undefined -D_POSIX_C_SOURCE=200809L -Iinclude -Isrc -I/usr/include/cjson \
 *     tests/fuzz/fuzz_tokenizer.c src/core/status.c src/core/file.c src/model/gguf.c src/model/tokenizer*.c \
 *     -lcjson -lpcre2-8 -o /tmp/fuzz_tokenizer
 *   /tmp/fuzz_tokenizer -max_total_time=120 -max_len=4096 /tmp/fuzz-corpus
 * or configure with clang and add_subdirectory(tests/fuzz) (see tests/fuzz/CMakeLists.txt). */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "model/gguf.h"
#include "model/tokenizer.h"

static void exercise_gguf(const uint8_t *data, size_t size) {
    xlkv_gguf *gguf;
    if (xlkv_gguf_open_memory(data, size, "fuzz.gguf", &gguf) != XLKV_OK) return;
    for (size_t i = 0; i < xlkv_gguf_kv_count(gguf); i++) {
        const xlkv_gguf_value *value = xlkv_gguf_find(gguf, xlkv_gguf_key(gguf, i));
        int64_t integer;
        double real;
        const char *s;
        size_t len, cursor = 0;
        xlkv_gguf_value_int64(value, &integer);
        xlkv_gguf_value_double(value, &real);
        xlkv_gguf_value_string(value, &s, &len);
        for (uint64_t j = 0; j < 4; j++) {
            xlkv_gguf_array_int64(value, j, &integer);
            xlkv_gguf_array_double(value, j, &real);
        }
        while (xlkv_gguf_array_next_string(value, &cursor, &s, &len)) {}
    }
    xlkv_gguf_close(gguf);
}

static void exercise_tokenizer(const xlkv_tokenizer *tok, const uint8_t *data, size_t size) {
    size_t text_len = size < 256 ? size : 256;
    char *text = malloc(text_len + 1);
    if (!text) return;
    memcpy(text, data, text_len);
    text[text_len] = '\0';
    const char *texts[] = {text, "Hello world", " \t\n  x\xc3\xa9\xf0\x9f\xa6\x99", ""};
    for (size_t t = 0; t < sizeof texts / sizeof *texts; t++) {
        int *ids, n;
        if (xlkv_tokenizer_encode(tok, texts[t], true, &ids, &n) != XLKV_OK) continue;
        char *decoded;
        if (xlkv_tokenizer_detokenize(tok, ids, n, &decoded, NULL) == XLKV_OK) free(decoded);
        free(ids);
    }
    free(text);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1) return 0;
    static const char *const names[] = {"fuzz.bin", "fuzz.gguf", "fuzz.json", "fuzz"};
    const char *name = names[data[0] % 4];
    data++;
    size--;
    if (data[-1] % 4 == 1) exercise_gguf(data, size);
    xlkv_tokenizer *tok;
    if (xlkv_tokenizer_load_memory(data, size, name, &tok) == XLKV_OK) {
        exercise_tokenizer(tok, data, size);
        xlkv_tokenizer_free(tok);
    }
    return 0;
}
