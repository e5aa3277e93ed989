/* core/status: the error channel of the library.
 * Owns the thread-local "last error" message. Internal code reports a failure with
 *     return xlkv_fail(XLKV_E_FORMAT, "%s: tensor '%s' has %d dims, expected 2", path, name, nd);
 * which records the message and returns the status, so errors propagate as plain return values. */
#ifndef XLKV_CORE_STATUS_H
#define XLKV_CORE_STATUS_H

#include "xlkv.h"

#if defined(__GNUC__)
#define XLKV_PRINTF(a, b) __attribute__((format(printf, a, b)))
#else
#define XLKV_PRINTF(a, b)
#endif

/* Records a formatted message for xlkv_last_error() and returns `status`. */
xlkv_status xlkv_fail(xlkv_status status, const char *fmt, ...) XLKV_PRINTF(2, 3);

/* Prepends "context: " to the current message (for callers that add where a failure happened). */
void xlkv_error_prefix(const char *fmt, ...) XLKV_PRINTF(1, 2);

void xlkv_clear_error(void);

/* Propagate a failure: XLKV_TRY(expr) returns expr's status from the enclosing function if it is not XLKV_OK. */
#define XLKV_TRY(expr)                                                                                                 \
    do {                                                                                                               \
        xlkv_status xlkv_try_status_ = (expr);                                                                         \
        if (xlkv_try_status_ != XLKV_OK) return xlkv_try_status_;                                                      \
    } while (0)

#endif
