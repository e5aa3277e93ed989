/* tests/support/testutil: see testutil.h. */
#include "testutil.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/file.h"

static const char *source_dir(void) {
    const char *dir = getenv("XLKV_SOURCE_DIR");
    return dir && *dir ? dir : ".";
}

char *tu_source_path(const char *relative) { return xlkv_path_join(source_dir(), relative); }

char *tu_shared_data(const char *relative) {
    const char *env = getenv("XLKV_SHARED_DATA");
    char *base = env && *env ? strdup(env) : xlkv_path_join(source_dir(), "../shared/data");
    char *path = xlkv_path_join(base, relative);
    free(base);
    if (!xlkv_file_exists(path)) {
        fprintf(stderr, "skipping: shared data %s is absent (set XLKV_SHARED_DATA to its folder)\n", path);
        free(path);
        return NULL;
    }
    return path;
}

char *tu_write_temp(const char *suffix, const void *data, size_t size) {
    char tmpl[] = "/tmp/xlkv-test-XXXXXX";
    int fd = mkstemp(tmpl);
    assert_true(fd >= 0);
    close(fd);
    size_t n = strlen(tmpl) + strlen(suffix) + 1;
    char *path = malloc(n);
    snprintf(path, n, "%s%s", tmpl, suffix);
    if (strcmp(path, tmpl)) rename(tmpl, path);
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    if (size) assert_int_equal(fwrite(data, 1, size, f), size);
    fclose(f);
    return path;
}

char *tu_temp_dir(void) {
    char tmpl[] = "/tmp/xlkv-test-dir-XXXXXX";
    char *dir = mkdtemp(tmpl);
    assert_non_null(dir);
    return strdup(dir);
}

double tu_max_abs_diff(const float *a, const float *b, size_t n) {
    double worst = 0.0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - (double)b[i]);
        if (d != d) return INFINITY;
        if (d > worst) worst = d;
    }
    return worst;
}

xlkv_hparams tu_tiny_hparams(void) {
    xlkv_hparams hp;
    xlkv_hparams_defaults(&hp);
    hp.dim = 32;
    hp.hidden_dim = 48;
    hp.n_layers = 6;
    hp.n_heads = 4;
    hp.n_kv_heads = 2;
    hp.head_dim = 8;
    hp.vocab_size = 50;
    hp.max_seq_len = 32;
    hp.sliding_window = 3;
    return hp;
}

xlkv_model *tu_random_model(const char *map_text, const xlkv_hparams *hp, unsigned long long seed) {
    xlkv_layer_map *map = NULL;
    TU_ASSERT_OK(xlkv_layer_map_parse(map_text, hp->n_layers, &map));
    xlkv_model *model = NULL;
    TU_ASSERT_OK(xlkv_model_create_random(hp, map, seed, &model));
    xlkv_layer_map_free(map);
    return model;
}

const char *const tu_tiny_maps[TU_N_TINY_MAPS] = {
    "standard", "cla:2", "cla:3", "lckv:1", "lckv:2", "lckv:4", "yoco",
    "pizza-bottom:2", "pizza-middle:2", "pizza-top:3", "sandwich-bottom:3", "sandwich-middle:3", "sandwich-top:2",
    "lasagna-bottom:2", "lasagna-middle:3", "lasagna-top:2",
    "0_2_2_3_4_5", "1_1_2_3_4_5", "3_3_1_3_4_5", "0_0_1_3_5_5", "0_1s_1s_3s_3s_0", "5_5_5_5_5_5",
};
