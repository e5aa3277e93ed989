/* train/rng: the trainer's seeded random generator: splitmix64 (Steele, Lea, Flood 2014), one 64-bit word of state,
 * so a run's generators are saved in trainer_state.bin and restored exactly (bit-exact resume). */
#ifndef XLKV_TRAIN_RNG_H
#define XLKV_TRAIN_RNG_H

#include <math.h>
#include <stdint.h>

typedef struct xlkv_rng {
    uint64_t state;
} xlkv_rng;

static inline uint64_t xlkv_rng_next(xlkv_rng *g) {
    uint64_t z = (g->state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* Uniform integer in [0, n), n > 0 (rejection sampling: no modulo bias). */
static inline uint64_t xlkv_rng_below(xlkv_rng *g, uint64_t n) {
    uint64_t limit = UINT64_MAX - UINT64_MAX % n;
    uint64_t x;
    do x = xlkv_rng_next(g);
    while (x >= limit);
    return x % n;
}

/* Uniform in (0, 1]. */
static inline double xlkv_rng_uniform(xlkv_rng *g) { return ((double)(xlkv_rng_next(g) >> 11) + 1.0) * 0x1.0p-53; }

/* Standard normal by Box-Muller (one value per two uniforms: no hidden state to save). */
static inline double xlkv_rng_normal(xlkv_rng *g) {
    double radius = sqrt(-2.0 * log(xlkv_rng_uniform(g)));
    return radius * cos(2.0 * 3.14159265358979323846 * xlkv_rng_uniform(g));
}

#endif
