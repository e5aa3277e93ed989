/* serve/serve_error: see serve_error.h. */
#include "serve/serve_error.h"

#include <stdarg.h>
#include <stdio.h>

#include <cjson/cJSON.h>

static void set(serve_error *e, int http_status, const char *type, const char *param, const char *code,
                const char *fmt, va_list ap) {
    e->http_status = http_status;
    e->type = type;
    snprintf(e->param, sizeof e->param, "%s", param ? param : "");
    e->code = code;
    vsnprintf(e->message, sizeof e->message, fmt, ap);
}

bool serve_fail(serve_error *e, int http_status, const char *type, const char *param, const char *code,
                const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    set(e, http_status, type, param, code, fmt, ap);
    va_end(ap);
    return false;
}

bool serve_invalid(serve_error *e, const char *param, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    set(e, 400, "invalid_request_error", param, NULL, fmt, ap);
    va_end(ap);
    return false;
}

char *serve_error_json(const serve_error *e) {
    cJSON *root = cJSON_CreateObject();
    cJSON *error = cJSON_AddObjectToObject(root, "error");
    if (!error) {
        cJSON_Delete(root);
        return NULL;
    }
    cJSON_AddStringToObject(error, "message", e->message);
    cJSON_AddStringToObject(error, "type", e->type ? e->type : "invalid_request_error");
    if (e->param[0]) cJSON_AddStringToObject(error, "param", e->param);
    else cJSON_AddNullToObject(error, "param");
    if (e->code) cJSON_AddStringToObject(error, "code", e->code);
    else cJSON_AddNullToObject(error, "code");
    char *text = cJSON_PrintUnformatted(root);
    cJSON_Delete(root);
    return text;
}
