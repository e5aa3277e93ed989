/* backend/cpu/cpu_attention: the attention rule for one query row, shared by the inference op (cpu_ops.c) and the
 * trainer's forward (train/train_ops.c), so training and inference compute the same numbers by the same code. */
#ifndef XLKV_BACKEND_CPU_ATTENTION_H
#define XLKV_BACKEND_CPU_ATTENTION_H

#include <stdbool.h>
#include <stddef.h>

/* Key positions query position t sees (SEMANTICS.md section 2): [*first, *last], empty when *first > *last. */
static inline void xlkv_cpu_visible_range(int t, int window, bool mask_diagonal, int *first, int *last) {
    *last = mask_diagonal ? t - 1 : t;
    *first = window > 0 ? t - window + 1 : 0;
    if (*first < 0) *first = 0;
}

/* Softmax attention of q[head_dim] over key/value rows first..last of k0 / v0 (row p at k0 + p * stride), scaled by
 * 1/sqrt(head_dim): writes out[head_dim] (zeros when nothing is visible) and returns the log-sum-exp of the scaled
 * scores (-INFINITY when nothing is visible). scores: scratch of last - first + 1 floats. */
float xlkv_cpu_attend_row(float *out, const float *q, const float *k0, const float *v0, size_t stride, int first,
                          int last, int head_dim, float *scores);

#endif
