/* tests/fuzz/fuzz_config: libFuzzer harness for config.json parsing (model/load_hf_config.c) and, when a config is
 * accepted with a layer_types string, the layer-map parser on it. Build and run (from the repository root; see
 * README.md):
 *   clang -g -O1 -fsanitize=fuzzer,address,undefined -Isrc -Iinclude tests/fuzz/fuzz_config.c \
 *       src/model/load_hf_config.c src/model/hparams.c src/model/layer_map.c src/model/layer_presets.c \
 *       src/core/status.c src/core/file.c -lcjson -lm -o build-fuzz/fuzz_config
 *   build-fuzz/fuzz_config -max_total_time=120 -max_len=4096 tests/fuzz/corpus_config */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#include "model/layer_map.h"
#include "model/model.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    xlkv_hparams hp;
    char *layer_types = NULL;
    if (xlkv_hf_parse_config((const char *)data, size, "fuzz/config.json", &hp, &layer_types) != XLKV_OK) return 0;
    if (layer_types) {
        xlkv_layer_map *map = NULL;
        if (xlkv_layer_map_parse(layer_types, hp.n_layers, &map) == XLKV_OK) xlkv_layer_map_free(map);
        free(layer_types);
    }
    return 0;
}
