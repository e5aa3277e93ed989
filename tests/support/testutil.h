/* tests/support/testutil: helpers shared by the cmocka tests: where the shared data and fixtures are, skipping
 * cleanly when data is absent, temporary files, and comparing float arrays with a tolerance. */
#ifndef XLKV_TESTS_TESTUTIL_H
#define XLKV_TESTS_TESTUTIL_H

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "xlkv.h"

/* $XLKV_SHARED_DATA, else <source dir>/../shared/data. Returns a heap path to `relative` inside it, or NULL (and
 * prints why) when the file is absent: the test should then skip(). */
char *tu_shared_data(const char *relative);
/* A path inside the repository (fixtures): <source dir>/<relative>, heap string. */
char *tu_source_path(const char *relative);
/* Writes `size` bytes to a fresh temporary file and returns its path (heap). */
char *tu_write_temp(const char *suffix, const void *data, size_t size);
/* A fresh temporary directory (heap path). */
char *tu_temp_dir(void);
/* The tiny random-model shape (6 layers, GQA 4/2 heads of 8, sliding window 3) and the layer maps that the CPU and
 * CUDA semantics tests both run: every preset family plus hand-written cyclic, nested and sliding maps. */
#include "model/hparams.h"
xlkv_hparams tu_tiny_hparams(void);
extern const char *const tu_tiny_maps[];
enum { TU_N_TINY_MAPS = 22 };
/* A model of shape hp with random weights from seed under the map map_text (a preset or layer_types string); fails
 * the test when either is refused. Free with xlkv_model_free. */
#include "model/model.h"
xlkv_model *tu_random_model(const char *map_text, const xlkv_hparams *hp, unsigned long long seed);

/* Largest |a[i] - b[i]|. */
double tu_max_abs_diff(const float *a, const float *b, size_t n);
/* Asserts that a status is XLKV_OK, printing xlkv_last_error() otherwise. */
#define TU_ASSERT_OK(expr)                                                                                             \
    do {                                                                                                               \
        xlkv_status tu_status_ = (expr);                                                                               \
        if (tu_status_ != XLKV_OK) fail_msg("%s -> %s: %s", #expr, xlkv_strerror(tu_status_), xlkv_last_error());      \
    } while (0)
/* Asserts that a call fails with `status` and that the message contains `needle`. */
#define TU_ASSERT_FAILS(expr, status, needle)                                                                          \
    do {                                                                                                               \
        xlkv_status tu_status_ = (expr);                                                                               \
        if (tu_status_ != (status))                                                                                    \
            fail_msg("%s -> %s (%s), expected %s", #expr, xlkv_strerror(tu_status_), xlkv_last_error(),                \
                     xlkv_strerror(status));                                                                           \
        if (!strstr(xlkv_last_error(), (needle)))                                                                      \
            fail_msg("%s: message '%s' does not mention '%s'", #expr, xlkv_last_error(), (needle));                    \
    } while (0)

#endif
