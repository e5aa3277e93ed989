/* core/timing: a monotonic clock for speed reports. */
#ifndef XLKV_CORE_TIMING_H
#define XLKV_CORE_TIMING_H

#include <time.h>

static inline double xlkv_now_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

#endif
