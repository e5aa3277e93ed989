/* tests/fuzz/fuzz_safetensors: libFuzzer harness for the safetensors parser (model/safetensors.c).
 * Feeds arbitrary bytes as a whole file image, then reads every tensor it accepted as fp32, so both header validation
 * and the lazy readers run under AddressSanitizer / UBSan. Build and run (from the repository root; see README.md):
 *   clang -g -O1 -fsanitize=fuzzer,address,undefined -Isrc -Iinclude tests/fuzz/fuzz_safetensors.c \
 *       src/model/safetensors.c src/model/float_formats.c src/core/status.c src/core/file.c -lcjson -lm \
 *       -o build-fuzz/fuzz_safetensors
 *   build-fuzz/fuzz_safetensors -max_total_time=120 -max_len=4096 tests/fuzz/corpus_safetensors */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#include "model/safetensors.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    xlkv_safetensors *st = NULL;
    if (xlkv_safetensors_parse(data, size, "fuzz.safetensors", &st) != XLKV_OK) return 0;
    for (size_t i = 0; i < st->n_tensors; i++) {
        const xlkv_st_tensor *t = &st->tensors[i];
        /* numel x element size == the byte range inside the input, so this allocation is bounded by `size` */
        float *out = malloc((size_t)(t->numel ? t->numel : 1) * sizeof *out);
        if (!out) continue;
        (void)xlkv_safetensors_read_f32(st, t, out, (size_t)t->numel);
        free(out);
        (void)xlkv_safetensors_find(st, t->name);
    }
    xlkv_safetensors_close(st);
    return 0;
}
