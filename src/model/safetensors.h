/* model/safetensors: one .safetensors file, validated up front, read lazily.
 *
 * Format: u64 little-endian header length N, N bytes of JSON {name: {dtype, shape, data_offsets: [begin, end]}, ...,
 * "__metadata__": {...}} (metadata ignored), then the data region; offsets are relative to the data region.
 * Opening validates everything that can be checked without touching tensor data: the header fits the file, is a JSON
 * object, every entry has a known dtype, a shape of non-negative integers and offsets inside the data region whose
 * length equals numel x element size (overlapping or unsorted ranges are accepted), and no name repeats.
 * The file is memory-mapped; the bytes of a tensor are touched only when that tensor is read, so tensors a model does
 * not need (k_proj / v_proj of non-KV layers) are never read. Every error message starts with the file's path. */
#ifndef XLKV_MODEL_SAFETENSORS_H
#define XLKV_MODEL_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#include "core/file.h"
#include "xlkv.h"

enum { XLKV_ST_MAX_DIMS = 8 };

typedef enum xlkv_st_dtype {
    XLKV_ST_F32,
    XLKV_ST_F16,
    XLKV_ST_BF16,
    /* known to the format, accepted in a file, but not convertible to fp32 by xlkv */
    XLKV_ST_F64,
    XLKV_ST_I64,
    XLKV_ST_I32,
    XLKV_ST_I16,
    XLKV_ST_I8,
    XLKV_ST_U64,
    XLKV_ST_U32,
    XLKV_ST_U16,
    XLKV_ST_U8,
    XLKV_ST_BOOL,
    XLKV_ST_F8_E4M3,
    XLKV_ST_F8_E5M2,
} xlkv_st_dtype;

typedef struct xlkv_st_tensor {
    char *name;
    xlkv_st_dtype dtype;
    int n_dims;
    int64_t shape[XLKV_ST_MAX_DIMS];
    uint64_t numel;
    size_t begin, end; /* byte range inside the data region */
} xlkv_st_tensor;

typedef struct xlkv_safetensors {
    char *path;                /* for messages */
    xlkv_mapped_file file;     /* zeroed when parsed from caller memory */
    const unsigned char *data; /* the data region */
    size_t data_size;
    xlkv_st_tensor *tensors;   /* [n_tensors], sorted by name */
    size_t n_tensors;
} xlkv_safetensors;

/* Maps and validates `path`. */
xlkv_status xlkv_safetensors_open(const char *path, xlkv_safetensors **out);
/* Validates a file image held by the caller (which must outlive the result); `path` only names it in messages. */
xlkv_status xlkv_safetensors_parse(const void *bytes, size_t size, const char *path, xlkv_safetensors **out);
void xlkv_safetensors_close(xlkv_safetensors *st);

/* NULL when absent. */
const xlkv_st_tensor *xlkv_safetensors_find(const xlkv_safetensors *st, const char *name);
const char *xlkv_st_dtype_name(xlkv_st_dtype dtype);
/* Writes "[d0, d1, ...]" into buf (always NUL-terminated, cut to cap). Returns buf. */
char *xlkv_format_shape(char *buf, size_t cap, int n_dims, const int64_t *shape);

/* Converts a F32 / F16 / BF16 tensor of exactly `n` elements to fp32 in `dst` (other dtypes: XLKV_E_UNSUPPORTED
 * naming the dtype). Non-finite values (NaN, inf) are a format error naming the tensor: no trained checkpoint holds
 * them, and they would silently poison every output. */
xlkv_status xlkv_safetensors_read_f32(const xlkv_safetensors *st, const xlkv_st_tensor *t, float *dst, size_t n);

#endif
