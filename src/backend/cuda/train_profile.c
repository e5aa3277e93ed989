/* backend/cuda/train_profile: see train_profile.h. */
#include "backend/cuda/train_profile.h"

#include <stdlib.h>

#include "backend/cuda/cuda_check.h"

struct xlkv_cuda_step_timer {
    cudaEvent_t *events; /* [capacity]; events[i] opens interval i, events[n - 1] closes the last one */
    int *categories;     /* [capacity]; category of interval i */
    float *elapsed;      /* [capacity]; scratch of end_step */
    int capacity, n, open_category;
    cudaError_t error; /* the first failure since the last end_step */
    const char *error_what;
};

static void remember(xlkv_cuda_step_timer *t, cudaError_t err, const char *what) {
    if (err != cudaSuccess && t->error == cudaSuccess) {
        t->error = err;
        t->error_what = what;
    }
}

/* Room for one more event (the pool doubles; created events are kept for the next steps). */
static bool reserve(xlkv_cuda_step_timer *t) {
    if (t->n < t->capacity) return true;
    const int grown = t->capacity ? 2 * t->capacity : 1024;
    cudaEvent_t *events = realloc(t->events, (size_t)grown * sizeof *events);
    if (events) t->events = events;
    int *categories = realloc(t->categories, (size_t)grown * sizeof *categories);
    if (categories) t->categories = categories;
    float *elapsed = realloc(t->elapsed, (size_t)grown * sizeof *elapsed);
    if (elapsed) t->elapsed = elapsed;
    if (!events || !categories || !elapsed) {
        remember(t, cudaErrorMemoryAllocation, "growing the step timer's event pool (host memory)");
        return false;
    }
    for (int i = t->capacity; i < grown; i++) {
        const cudaError_t err = cudaEventCreate(&t->events[i]);
        if (err != cudaSuccess) {
            remember(t, err, "creating the step timer's events");
            return false;
        }
        t->capacity = i + 1;
    }
    return true;
}

xlkv_status xlkv_cuda_step_timer_create(xlkv_cuda_step_timer **out) {
    *out = NULL;
    xlkv_cuda_step_timer *t = calloc(1, sizeof *t);
    if (!t) return xlkv_fail(XLKV_E_NOMEM, "step timer: out of host memory");
    t->open_category = -1;
    if (!reserve(t)) {
        const cudaError_t err = t->error;
        const char *what = t->error_what;
        xlkv_cuda_step_timer_free(t);
        return xlkv_cuda_fail(err, what);
    }
    *out = t;
    return XLKV_OK;
}

void xlkv_cuda_step_timer_free(xlkv_cuda_step_timer *t) {
    if (!t) return;
    for (int i = 0; i < t->capacity; i++) (void)cudaEventDestroy(t->events[i]);
    free(t->events);
    free(t->categories);
    free(t->elapsed);
    free(t);
}

void xlkv_cuda_step_timer_begin(xlkv_cuda_step_timer *t) {
    t->n = 0;
    t->open_category = -1;
}

void xlkv_cuda_step_timer_mark(xlkv_cuda_step_timer *t, cudaStream_t stream, xlkv_step_category category) {
    if ((int)category == t->open_category || !reserve(t)) return;
    const cudaError_t err = cudaEventRecord(t->events[t->n], stream);
    if (err != cudaSuccess) {
        remember(t, err, "recording a step timer event");
        return;
    }
    t->categories[t->n++] = (int)category;
    t->open_category = (int)category;
}

xlkv_status xlkv_cuda_step_timer_end(xlkv_cuda_step_timer *t, cudaStream_t stream, xlkv_step_profile *into) {
    xlkv_status status = XLKV_OK;
    if (t->error == cudaSuccess && t->n > 0 && reserve(t)) {
        const int intervals = t->n;
        remember(t, cudaEventRecord(t->events[intervals], stream), "recording the step timer's last event");
        if (t->error == cudaSuccess)
            remember(t, cudaEventSynchronize(t->events[intervals]), "waiting for the step timer's last event");
        for (int i = 0; i < intervals && t->error == cudaSuccess; i++)
            remember(t, cudaEventElapsedTime(&t->elapsed[i], t->events[i], t->events[i + 1]),
                     "reading a step timer interval");
        if (t->error == cudaSuccess) status = xlkv_step_profile_add_step(into, t->categories, t->elapsed, intervals);
    }
    if (t->error != cudaSuccess) status = xlkv_cuda_fail(t->error, t->error_what);
    t->error = cudaSuccess;
    t->error_what = NULL;
    xlkv_cuda_step_timer_begin(t);
    return status;
}
