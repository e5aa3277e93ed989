/* tests/support/gradcheck: central finite differences in fp32 against an analytic gradient (header-only).
 * The error reported for a tensor is max_i |fd_i - analytic_i| / max_i |analytic_i|: relative to the tensor's scale,
 * so entries that are nearly zero do not turn rounding noise into huge relative errors. */
#ifndef XLKV_TESTS_GRADCHECK_H
#define XLKV_TESTS_GRADCHECK_H

#include <math.h>
#include <stddef.h>

/* Evaluates the scalar objective at the current inputs (in double where it sums). */
typedef double (*gc_objective)(void *ctx);

/* Checks d objective / d input[i] for the `count` indices in `indices` (NULL = every index of n). */
static inline double gc_check(gc_objective objective, void *ctx, float *input, size_t n, const float *analytic,
                              float h, const size_t *indices, size_t count) {
    double worst = 0.0, scale = 0.0;
    for (size_t i = 0; i < n; i++) scale = fmax(scale, fabs((double)analytic[i]));
    if (scale == 0.0) scale = 1e-12;
    size_t total = indices ? count : n;
    for (size_t c = 0; c < total; c++) {
        size_t i = indices ? indices[c] : c;
        const float saved = input[i];
        input[i] = saved + h;
        const double plus = objective(ctx);
        input[i] = saved - h;
        const double minus = objective(ctx);
        input[i] = saved;
        /* the step actually taken in fp32 */
        const double step = (double)(saved + h) - (double)(saved - h);
        const double fd = (plus - minus) / step;
        const double err = fabs(fd - (double)analytic[i]) / scale;
        if (!(err <= worst)) worst = err; /* NaN propagates */
    }
    return worst;
}

/* Deterministic pseudo-random floats in [-amplitude, amplitude]. */
static inline void gc_fill(float *x, size_t n, unsigned seed, float amplitude) {
    unsigned long long s = 0x9E3779B97F4A7C15ull * (seed + 1);
    for (size_t i = 0; i < n; i++) {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        x[i] = amplitude * (float)((double)(s >> 11) * 0x1.0p-53 * 2.0 - 1.0);
    }
}

#endif
