/* serve/metrics: see metrics.h. */
#include "serve/metrics.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

#include "core/status.h"

void serve_metrics_count_status(serve_http_counters *c, int http_status) {
    const int class = http_status / 100;
    if (class >= 1 && class <= 5) atomic_fetch_add(&c->by_class[class], 1);
}

typedef struct text_buffer {
    char *data;
    size_t len, cap;
    bool failed;
} text_buffer;

static void emit_v(text_buffer *b, const char *fmt, va_list args) {
    if (b->failed) return;
    for (;;) {
        va_list ap;
        va_copy(ap, args);
        const int n = vsnprintf(b->data + b->len, b->cap - b->len, fmt, ap);
        va_end(ap);
        if (n < 0) {
            b->failed = true;
            return;
        }
        if ((size_t)n < b->cap - b->len) {
            b->len += (size_t)n;
            return;
        }
        const size_t cap = (b->cap + (size_t)n + 1) * 2;
        char *grown = realloc(b->data, cap);
        if (!grown) {
            b->failed = true;
            return;
        }
        b->data = grown;
        b->cap = cap;
    }
}

static void emit(text_buffer *b, const char *fmt, ...) XLKV_PRINTF(2, 3);
static void emit(text_buffer *b, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    emit_v(b, fmt, ap);
    va_end(ap);
}

/* The HELP and TYPE lines of a metric; its samples follow. */
static void metric(text_buffer *b, const char *name, const char *type, const char *help) {
    emit(b, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

/* A metric with one unlabelled sample: the HELP and TYPE lines, then "name value". */
static void single_sample_metric(text_buffer *b, const char *name, const char *type, const char *help,
                                 const char *value_fmt, ...) XLKV_PRINTF(5, 6);
static void single_sample_metric(text_buffer *b, const char *name, const char *type, const char *help,
                                 const char *value_fmt, ...) {
    metric(b, name, type, help);
    emit(b, "%s ", name);
    va_list ap;
    va_start(ap, value_fmt);
    emit_v(b, value_fmt, ap);
    va_end(ap);
    emit(b, "\n");
}

char *serve_metrics_render(const serve_metrics_snapshot *snap, const serve_http_counters *http,
                           const xlkv_model *model, const char *model_name) {
    text_buffer b = {.data = malloc(4096), .cap = 4096};
    if (!b.data) return NULL;
    b.data[0] = '\0';
    metric(&b, "xlkv_http_responses_total", "counter", "HTTP responses sent, by status class");
    for (int c = 2; c <= 5; c++)
        emit(&b, "xlkv_http_responses_total{code=\"%dxx\"} %llu\n", c, (unsigned long long)atomic_load(&http->by_class[c]));
    metric(&b, "xlkv_requests_total", "counter", "generation requests that ended, by how they ended");
    emit(&b, "xlkv_requests_total{finish_reason=\"stop\"} %llu\n", snap->finished_stop);
    emit(&b, "xlkv_requests_total{finish_reason=\"length\"} %llu\n", snap->finished_length);
    emit(&b, "xlkv_requests_total{finish_reason=\"cancelled\"} %llu\n", snap->finished_cancelled);
    emit(&b, "xlkv_requests_total{finish_reason=\"error\"} %llu\n", snap->finished_error);
    single_sample_metric(&b, "xlkv_requests_admitted_total", "counter", "requests that joined the running batch",
                         "%llu", snap->admitted);
    single_sample_metric(&b, "xlkv_requests_rejected_total", "counter",
                         "requests refused with 503 because the queue was full", "%llu",
                         snap->rejected_busy);
    single_sample_metric(&b, "xlkv_requests_running", "gauge", "requests in the running batch", "%d", snap->running);
    single_sample_metric(&b, "xlkv_queue_length", "gauge", "requests waiting for room in the KV pool or the batch",
                         "%d", snap->queued);
    single_sample_metric(&b, "xlkv_prompt_tokens_total", "counter", "prompt tokens of admitted requests",
                         "%llu", snap->prompt_tokens);
    single_sample_metric(&b, "xlkv_generated_tokens_total", "counter", "tokens generated",
                         "%llu", snap->generated_tokens);
    single_sample_metric(&b, "xlkv_generated_tokens_per_second", "gauge",
                         "tokens generated per second over the last 10 seconds", "%.3f",
                         snap->tokens_per_second);
    single_sample_metric(&b, "xlkv_engine_steps_total", "counter",
                         "engine steps (each decodes one token of every running request)", "%llu",
                         snap->steps);
    single_sample_metric(&b, "xlkv_kv_blocks_total", "gauge", "blocks of the KV pool",
                         "%zu", snap->engine.kv_blocks_total);
    single_sample_metric(&b, "xlkv_kv_blocks_used", "gauge", "KV blocks held by requests",
                         "%zu", snap->engine.kv_blocks_used);
    single_sample_metric(&b, "xlkv_kv_blocks_free", "gauge", "KV blocks free",
                         "%zu", snap->engine.kv_blocks_total - snap->engine.kv_blocks_used);
    single_sample_metric(&b, "xlkv_kv_pool_bytes", "gauge", "bytes of the KV pool", "%zu", snap->engine.kv_pool_bytes);
    const size_t kv_layers = (size_t)model->map->n_kv_layers;
    const size_t per_layer = snap->engine.kv_bytes_per_token / (kv_layers ? kv_layers : 1);
    metric(&b, "xlkv_kv_bytes_per_token", "gauge", "KV bytes per token of the loaded layer map");
    emit(&b, "xlkv_kv_bytes_per_token{model=\"%s\"} %zu\n", model_name, snap->engine.kv_bytes_per_token);
    metric(&b, "xlkv_kv_bytes_per_token_standard_map", "gauge", "KV bytes per token the standard map would take");
    emit(&b, "xlkv_kv_bytes_per_token_standard_map{model=\"%s\"} %zu\n", model_name,
         per_layer * (size_t)model->hp.n_layers);
    single_sample_metric(&b, "xlkv_kv_layers", "gauge", "layers that own KV in the loaded map, of xlkv_layers",
                         "%zu", kv_layers);
    single_sample_metric(&b, "xlkv_layers", "gauge", "layers of the model", "%d", model->hp.n_layers);
    if (b.failed) {
        free(b.data);
        return NULL;
    }
    return b.data;
}
