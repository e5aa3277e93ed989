/* model/rmsnorm_rows: see rmsnorm_rows.h. */
#include "model/rmsnorm_rows.h"

#include <math.h>
#include <stddef.h>

enum { PARALLEL_MIN_WORK = 1 << 14 }; /* elements below which a thread team costs more than it saves */

void xlkv_rmsnorm_rows(float *y, float *inv_rms, const float *x, const float *gain, int n, int dim, float eps) {
#pragma omp parallel for schedule(static) if ((long)n * dim >= PARALLEL_MIN_WORK)
    for (int r = 0; r < n; r++) {
        const float *xr = x + (size_t)r * (size_t)dim;
        float *yr = y + (size_t)r * (size_t)dim;
        float ss = 0.0f;
        for (int i = 0; i < dim; i++) ss += xr[i] * xr[i];
        const float s = 1.0f / sqrtf(ss / (float)dim + eps);
        if (inv_rms) inv_rms[r] = s;
        for (int i = 0; i < dim; i++) yr[i] = gain[i] * (s * xr[i]);
    }
}
