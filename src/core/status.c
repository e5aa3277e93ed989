/* core/status: see status.h. */
#include "core/status.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

enum { XLKV_ERROR_CAPACITY = 1024 };
static _Thread_local char last_error[XLKV_ERROR_CAPACITY];

const char *xlkv_strerror(xlkv_status status) {
    switch (status) {
    case XLKV_OK: return "success";
    case XLKV_E_INVALID: return "invalid argument";
    case XLKV_E_IO: return "input/output error";
    case XLKV_E_FORMAT: return "malformed file";
    case XLKV_E_NOMEM: return "out of memory";
    case XLKV_E_UNSUPPORTED: return "unsupported";
    case XLKV_E_CAPACITY: return "capacity exhausted";
    case XLKV_E_BACKEND: return "backend failure";
    }
    return "unknown status";
}

const char *xlkv_last_error(void) { return last_error; }

void xlkv_clear_error(void) { last_error[0] = '\0'; }

xlkv_status xlkv_fail(xlkv_status status, const char *fmt, ...) {
    va_list args;
    va_start(args, fmt);
    vsnprintf(last_error, sizeof last_error, fmt, args);
    va_end(args);
    return status;
}

void xlkv_error_prefix(const char *fmt, ...) {
    char prefix[XLKV_ERROR_CAPACITY / 2];
    va_list args;
    va_start(args, fmt);
    vsnprintf(prefix, sizeof prefix, fmt, args);
    va_end(args);
    /* prefix + ": " + old message, cut to capacity */
    char joined[XLKV_ERROR_CAPACITY];
    size_t n = strlen(prefix);
    memcpy(joined, prefix, n);
    size_t rest = sizeof joined - n - 1;
    const char *sep = ": ";
    for (size_t i = 0; sep[i] && rest; i++, rest--) joined[n++] = sep[i];
    size_t old = strnlen(last_error, rest);
    memcpy(joined + n, last_error, old);
    joined[n + old] = '\0';
    memcpy(last_error, joined, sizeof last_error);
}
