/* serve/http_internal: what the HTTP files of the server share: the server's state, one connection's request state
 * (the body being received), and the helpers that send a JSON body or an OpenAI error and count the status. */
#ifndef XLKV_SERVE_HTTP_INTERNAL_H
#define XLKV_SERVE_HTTP_INTERNAL_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

#include <microhttpd.h>

#include "serve/metrics.h"
#include "serve/scheduler.h"
#include "serve/serve.h"
#include "serve/serve_error.h"

typedef struct serve_server {
    xlkv_serve_config config;
    const xlkv_model *model;
    serve_scheduler *scheduler;
    serve_http_counters http;
    atomic_ullong request_counter; /* ids and default seeds */
    atomic_int active_generations; /* generation requests not yet fully sent (shutdown waits for them) */
    unsigned long long id_salt;    /* makes ids unique across restarts */
} serve_server;

typedef struct serve_connection_request {
    char *body;
    size_t len, cap;
    bool too_large;
} serve_connection_request;

/* Queues a response with `body` (copied) and counts its status. */
enum MHD_Result serve_send(serve_server *s, struct MHD_Connection *c, int status, const char *content_type,
                           const char *body, size_t len);
enum MHD_Result serve_send_json(serve_server *s, struct MHD_Connection *c, int status, char *json_owned);
enum MHD_Result serve_send_error(serve_server *s, struct MHD_Connection *c, const serve_error *e);
/* Whether the client closed its side of the connection (polls the socket without blocking). */
bool serve_client_gone(struct MHD_Connection *c);

/* POST /v1/completions and /v1/chat/completions (serve/http_generate.c). */
enum MHD_Result serve_handle_generate(serve_server *s, struct MHD_Connection *c, bool chat,
                                      const serve_connection_request *request);

#endif
