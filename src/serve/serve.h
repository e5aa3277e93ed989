/* serve/serve: `xlkv serve`, an OpenAI-compatible HTTP server over one engine (continuous batching). The entry point
 * that tools/cmd_serve.c calls once the model and the engine exist: it starts the scheduler and the HTTP daemon,
 * serves until SIGINT or SIGTERM, then shuts down gracefully (stops accepting, lets running requests finish for
 * the grace period, cancels the rest, frees everything). Routes: serve/http_server.c. */
#ifndef XLKV_SERVE_SERVE_H
#define XLKV_SERVE_SERVE_H

#include <stdbool.h>
#include <stddef.h>

#include "infer/engine.h"
#include "model/model.h"

typedef struct xlkv_serve_config {
    const char *host;          /* address to bind (default 127.0.0.1: loopback only) */
    int port;                  /* 0 = any free port (the chosen one is printed) */
    const char *api_key;       /* NULL = no key; else required as "Authorization: Bearer KEY" on every route but
                                  /health (the chat page at / also takes ?api_key=KEY) */
    const char *model_name;    /* the id of GET /v1/models and of responses */
    size_t max_body_bytes;     /* larger request bodies get 413 */
    int queue_limit;           /* requests waiting for room beyond the running batch; more get 503 + Retry-After */
    int max_running;           /* the engine's max_batch */
    int max_connections;       /* open HTTP connections */
    int n_ctx;                 /* context per request (prompt + max_tokens) */
    double shutdown_grace_s;   /* how long running requests may finish after SIGINT/SIGTERM */
} xlkv_serve_config;

/* Serves until SIGINT/SIGTERM; returns 0 after a clean shutdown, 1 when the server cannot start (reported on
 * stderr). The engine stays the caller's to free. */
int xlkv_serve_run(const xlkv_serve_config *config, const xlkv_model *model, xlkv_engine *engine);

#endif
