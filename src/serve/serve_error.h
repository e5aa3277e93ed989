/* serve/serve_error: the OpenAI-style error every failed request gets: an HTTP status and
 * {"error":{"message","type","param","code"}}. Owns the error value and its JSON text; handlers fill one and
 * send it (serve/http_server.c). */
#ifndef XLKV_SERVE_ERROR_H
#define XLKV_SERVE_ERROR_H

#include "core/status.h"

typedef struct serve_error {
    int http_status;     /* 400, 401, 404, 405, 413, 503, 500 */
    const char *type;    /* "invalid_request_error", "authentication_error", "server_error", ... */
    char param[64];      /* the request field at fault ("" = none: null in JSON) */
    const char *code;    /* a short machine code ("context_length_exceeded", ...), or NULL */
    char message[512];
} serve_error;

/* Fills *e and returns false (so validators can `return serve_fail(e, ...)`). */
bool serve_fail(serve_error *e, int http_status, const char *type, const char *param, const char *code,
                const char *fmt, ...) XLKV_PRINTF(6, 7);
/* An invalid_request_error (400) about `param`. */
bool serve_invalid(serve_error *e, const char *param, const char *fmt, ...) XLKV_PRINTF(3, 4);
/* The JSON body of the error (heap string, NULL when out of memory). */
char *serve_error_json(const serve_error *e);

#endif
