/* train/step_profile: where a training step's time goes, by operation category. Owns the category list (names
 * used in tables and JSON), the per-category accumulation over profiled steps, and the summary (a table sorted by
 * time, and a JSON object). Pure host code: the CUDA trainer's event timer (backend/cuda/train_profile.c) measures
 * the intervals and hands one step at a time to xlkv_step_profile_add_step.
 *
 * An interval is attributed to one category: the time from the mark that opened it to the next mark on the same
 * stream (so GPU idle time waiting for the host falls in the category whose work was queued last). The categories
 * of one step therefore add up to the step's GPU timeline, from its first mark to its last. */
#ifndef XLKV_TRAIN_STEP_PROFILE_H
#define XLKV_TRAIN_STEP_PROFILE_H

#include <stdio.h>

#include "core/status.h"

typedef enum xlkv_step_category {
    XLKV_STEP_EMBEDDING,            /* token embedding forward and backward */
    XLKV_STEP_RMSNORM,              /* every RMSNorm, forward and backward (the final norm included) */
    XLKV_STEP_LINEAR_FORWARD,       /* the layers' products y = x W^T (q, k, v, o, gate, up, down) */
    XLKV_STEP_LINEAR_BACKWARD_DX,   /* their input gradients dx += dy W */
    XLKV_STEP_LINEAR_BACKWARD_DW,   /* their weight gradients dW += dy^T x */
    XLKV_STEP_ROPE,                 /* rotary embedding of q and k, and its backward on dk */
    XLKV_STEP_ATTENTION_FORWARD,    /* scores, softmax, P.V (whichever implementation runs) */
    XLKV_STEP_ATTENTION_BACKWARD,   /* attention backward (dQ, dK, dV, delta) */
    XLKV_STEP_SWIGLU,               /* SwiGLU forward and backward */
    XLKV_STEP_RESIDUAL_COPIES,      /* residual adds, activation copies, buffer clears, zeroing the gradients */
    XLKV_STEP_CLASSIFIER_FORWARD,   /* classifier product and cross-entropy forward */
    XLKV_STEP_CLASSIFIER_BACKWARD,  /* cross-entropy backward and the classifier's two backward products */
    XLKV_STEP_GRAD_CLIP,            /* gradient norm (with its host round trip) and scaling */
    XLKV_STEP_ADAMW,                /* the AdamW updates */
    XLKV_STEP_ALLREDUCE_WAIT,       /* waiting for the data-parallel gradient all-reduce (NCCL runs only) */
    XLKV_STEP_HOST_SYNC,            /* token uploads, loss download and the host synchronizations around them */
    XLKV_STEP_N_CATEGORIES
} xlkv_step_category;

typedef struct xlkv_step_profile {
    double ms[XLKV_STEP_N_CATEGORIES]; /* summed over the profiled steps */
    long intervals[XLKV_STEP_N_CATEGORIES];
    long steps;
} xlkv_step_profile;

/* "linear_forward", ...: a stable identifier (JSON keys, tables); NULL for a value outside the enum. */
const char *xlkv_step_category_name(int category);

void xlkv_step_profile_reset(xlkv_step_profile *p);

/* Adds one step made of n intervals (categories[i] lasted ms[i]). A category outside the enum or a negative or
 * non-finite duration is an error, and then nothing is added. */
xlkv_status xlkv_step_profile_add_step(xlkv_step_profile *p, const int *categories, const float *ms, int n);

/* Mean milliseconds per profiled step: of one category, and of the whole step (0 before any step). */
double xlkv_step_profile_ms_per_step(const xlkv_step_profile *p, xlkv_step_category category);
double xlkv_step_profile_step_ms(const xlkv_step_profile *p);

/* The categories by decreasing time (ties: enum order); returns how many have any interval (the first ones). */
int xlkv_step_profile_sorted(const xlkv_step_profile *p, xlkv_step_category order[XLKV_STEP_N_CATEGORIES]);

/* A table: one line per category that ran, sorted, "  <name> <ms/step> <% of the step>", then the total. */
void xlkv_step_profile_print(const xlkv_step_profile *p, FILE *out);

/* {"steps": n, "step_ms": x, "ms_per_step": {"<name>": ms, ... sorted}, "percent": {"<name>": pct, ...}}
 * (categories that ran only); a malloc'd string (free), NULL when out of memory. */
char *xlkv_step_profile_to_json(const xlkv_step_profile *p);

#endif
