/* serve/metrics: GET /metrics, the Prometheus text exposition of the server's state: requests (by HTTP status class
 * and by how they ended), tokens and tokens/s, queue length and running requests, KV blocks used / free / total, and
 * the KV bytes per token of the loaded layer map (with the standard map's figure beside it). Owns the HTTP status
 * counters; the rest comes from the scheduler's snapshot. */
#ifndef XLKV_SERVE_METRICS_H
#define XLKV_SERVE_METRICS_H

#include <stdatomic.h>

#include "model/model.h"
#include "serve/scheduler.h"

typedef struct serve_http_counters {
    atomic_ullong by_class[6]; /* [1..5]: 1xx .. 5xx responses */
} serve_http_counters;

void serve_metrics_count_status(serve_http_counters *c, int http_status);
/* The exposition text (heap string; NULL when out of memory). */
char *serve_metrics_render(const serve_metrics_snapshot *snap, const serve_http_counters *http,
                           const xlkv_model *model, const char *model_name);

#endif
