/* model/rope_tables: see rope_tables.h. */
#include "model/rope_tables.h"

#include <math.h>
#include <stddef.h>

void xlkv_rope_tables_fill(float *cos_table, float *sin_table, int n_positions, int head_dim, float theta) {
    const int half = head_dim / 2;
    for (int i = 0; i < half; i++) {
        const float freq = 1.0f / powf(theta, (float)(2 * i) / (float)head_dim);
        for (int pos = 0; pos < n_positions; pos++) {
            const float angle = (float)pos * freq;
            cos_table[(size_t)pos * (size_t)half + (size_t)i] = cosf(angle);
            sin_table[(size_t)pos * (size_t)half + (size_t)i] = sinf(angle);
        }
    }
}
