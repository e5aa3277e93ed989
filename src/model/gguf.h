/* model/gguf: a small read-only reader of GGUF files (versions 2 and 3): the header and the metadata key/values,
 * including arrays of strings and numbers. Tensor infos are not parsed (the tokenizer needs only metadata).
 *
 * Opening walks every metadata entry once and checks it against the file size, so after a successful open every
 * accessor below is bounds-safe and cannot fail on a truncated file. Strings point into the file mapping (they are
 * not NUL-terminated); they live as long as the xlkv_gguf. Numbers are read as little-endian (the GGUF default; the
 * host is assumed little-endian too). */
#ifndef XLKV_MODEL_GGUF_H
#define XLKV_MODEL_GGUF_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "xlkv.h"

typedef enum xlkv_gguf_type {
    XLKV_GGUF_UINT8 = 0,
    XLKV_GGUF_INT8 = 1,
    XLKV_GGUF_UINT16 = 2,
    XLKV_GGUF_INT16 = 3,
    XLKV_GGUF_UINT32 = 4,
    XLKV_GGUF_INT32 = 5,
    XLKV_GGUF_FLOAT32 = 6,
    XLKV_GGUF_BOOL = 7,
    XLKV_GGUF_STRING = 8,
    XLKV_GGUF_ARRAY = 9,
    XLKV_GGUF_UINT64 = 10,
    XLKV_GGUF_INT64 = 11,
    XLKV_GGUF_FLOAT64 = 12,
} xlkv_gguf_type;

/* One metadata value. For arrays, elem_type/count describe the elements and data points at the first one. */
typedef struct xlkv_gguf_value {
    xlkv_gguf_type type;
    xlkv_gguf_type elem_type; /* arrays only */
    uint64_t count;           /* arrays only */
    const unsigned char *data;
    size_t size; /* bytes of the whole value (for arrays, of all elements) */
} xlkv_gguf_value;

typedef struct xlkv_gguf xlkv_gguf;

/* Maps and indexes `path`. */
xlkv_status xlkv_gguf_open(const char *path, xlkv_gguf **out);
/* Indexes a caller-owned buffer (which must outlive the handle); `name` is used in error messages. */
xlkv_status xlkv_gguf_open_memory(const void *data, size_t size, const char *name, xlkv_gguf **out);
void xlkv_gguf_close(xlkv_gguf *gguf);

uint32_t xlkv_gguf_version(const xlkv_gguf *gguf);
uint64_t xlkv_gguf_tensor_count(const xlkv_gguf *gguf);
size_t xlkv_gguf_kv_count(const xlkv_gguf *gguf);
const char *xlkv_gguf_name(const xlkv_gguf *gguf); /* the path or name given at open */

/* Looks a key up; NULL if absent. */
const xlkv_gguf_value *xlkv_gguf_find(const xlkv_gguf *gguf, const char *key);
/* The key of entry i (NUL-terminated copy owned by the handle). */
const char *xlkv_gguf_key(const xlkv_gguf *gguf, size_t i);

/* Scalar reads that convert any integer type (range-checked) or bool; false if the value is not such a scalar or
 * does not fit. */
bool xlkv_gguf_value_int64(const xlkv_gguf_value *value, int64_t *out);
/* A float32 or float64 scalar. */
bool xlkv_gguf_value_double(const xlkv_gguf_value *value, double *out);
/* A string scalar (not NUL-terminated). */
bool xlkv_gguf_value_string(const xlkv_gguf_value *value, const char **out, size_t *out_len);

/* Element access of arrays of fixed-size numbers: element i converted to int64 / double; false if out of range or
 * not numeric. */
bool xlkv_gguf_array_int64(const xlkv_gguf_value *array, uint64_t i, int64_t *out);
bool xlkv_gguf_array_double(const xlkv_gguf_value *array, uint64_t i, double *out);
/* Sequential access of an array of strings: start with *cursor = 0; each call yields the next string and returns
 * false at the end (or if the array does not hold strings). */
bool xlkv_gguf_array_next_string(const xlkv_gguf_value *array, size_t *cursor, const char **out, size_t *out_len);

#endif
