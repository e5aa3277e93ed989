/* train/optimizer: see optimizer.h. */
#include "train/optimizer.h"

#include <math.h>
#include <omp.h>

xlkv_adamw_params xlkv_adamw_default_params(void) {
    return (xlkv_adamw_params){.beta1 = 0.9f, .beta2 = 0.95f, .eps = 1e-8f, .weight_decay = 0.1f};
}

void xlkv_adamw_step(xlkv_param_store *store, const xlkv_adamw_params *p, float lr, long step) {
    const float c1 = (float)(1.0 - pow((double)p->beta1, (double)step));
    const float c2 = (float)(1.0 - pow((double)p->beta2, (double)step));
    for (int t = 0; t < store->n_tensors; t++) {
        const xlkv_param_tensor *tensor = &store->tensors[t];
        const size_t n = (size_t)tensor->rows * (size_t)(tensor->cols ? tensor->cols : 1);
        const float decay = tensor->kind == XLKV_PARAM_MATRIX ? p->weight_decay : 0.0f;
        float *w = store->params + tensor->offset, *g = store->grads + tensor->offset;
        float *m = store->adam_m + tensor->offset, *v = store->adam_v + tensor->offset;
#pragma omp parallel for schedule(static) if (n >= (1 << 16))
        for (size_t i = 0; i < n; i++) {
            m[i] = p->beta1 * m[i] + (1.0f - p->beta1) * g[i];
            v[i] = p->beta2 * v[i] + (1.0f - p->beta2) * g[i] * g[i];
            const float mhat = m[i] / c1, vhat = v[i] / c2;
            w[i] -= lr * (mhat / (sqrtf(vhat) + p->eps) + decay * w[i]);
        }
    }
}

float xlkv_lr_schedule(long step, long warmup, long total_steps, float lr_max, float lr_min) {
    if (warmup > 0 && step < warmup) return lr_max * (float)(step + 1) / (float)warmup;
    if (step >= total_steps) return lr_min;
    const double span = (double)(total_steps - warmup);
    const double progress = span > 0 ? (double)(step - warmup) / span : 1.0;
    const double cosine = 0.5 * (1.0 + cos(3.14159265358979323846 * progress));
    return (float)(lr_min + (lr_max - lr_min) * cosine);
}

double xlkv_grad_norm(const xlkv_param_store *store) {
    /* fixed-size chunks summed in order: the same bits whatever the thread count */
    enum { CHUNK = 1 << 16 };
    const size_t n = store->n_params, chunks = (n + CHUNK - 1) / CHUNK;
    double total = 0.0;
    for (size_t c0 = 0; c0 < chunks; c0 += 64) {
        double partial[64] = {0};
        const size_t count = chunks - c0 < 64 ? chunks - c0 : 64;
#pragma omp parallel for schedule(static)
        for (size_t c = 0; c < count; c++) {
            const size_t begin = (c0 + c) * CHUNK, end = begin + CHUNK < n ? begin + CHUNK : n;
            double s = 0.0;
            for (size_t i = begin; i < end; i++) s += (double)store->grads[i] * (double)store->grads[i];
            partial[c] = s;
        }
        for (size_t c = 0; c < count; c++) total += partial[c];
    }
    return sqrt(total);
}

double xlkv_clip_grad_norm(xlkv_param_store *store, double max_norm) {
    const double norm = xlkv_grad_norm(store);
    if (max_norm > 0.0 && norm > max_norm) {
        const float scale = (float)(max_norm / (norm + 1e-6));
        for (size_t i = 0; i < store->n_params; i++) store->grads[i] *= scale;
    }
    return norm;
}
