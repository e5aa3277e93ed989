/* model/safetensors: see safetensors.h. */
#include "model/safetensors.h"

#include <cjson/cJSON.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/status.h"
#include "model/float_formats.h"

typedef struct dtype_info {
    const char *name;
    xlkv_st_dtype dtype;
    size_t size;
} dtype_info;

static const dtype_info dtype_table[] = {
    {"F32", XLKV_ST_F32, 4},   {"F16", XLKV_ST_F16, 2},         {"BF16", XLKV_ST_BF16, 2},
    {"F64", XLKV_ST_F64, 8},   {"I64", XLKV_ST_I64, 8},         {"I32", XLKV_ST_I32, 4},
    {"I16", XLKV_ST_I16, 2},   {"I8", XLKV_ST_I8, 1},           {"U64", XLKV_ST_U64, 8},
    {"U32", XLKV_ST_U32, 4},   {"U16", XLKV_ST_U16, 2},         {"U8", XLKV_ST_U8, 1},
    {"BOOL", XLKV_ST_BOOL, 1}, {"F8_E4M3", XLKV_ST_F8_E4M3, 1}, {"F8_E5M2", XLKV_ST_F8_E5M2, 1},
};
enum { DTYPE_COUNT = sizeof dtype_table / sizeof dtype_table[0] };

/* Largest integer a JSON number (a double) represents exactly. */
static const double max_exact_integer = 9007199254740992.0;

const char *xlkv_st_dtype_name(xlkv_st_dtype dtype) {
    for (size_t i = 0; i < DTYPE_COUNT; i++)
        if (dtype_table[i].dtype == dtype) return dtype_table[i].name;
    return "?";
}

char *xlkv_format_shape(char *buf, size_t cap, int n_dims, const int64_t *shape) {
    if (!cap) return buf;
    size_t used = 0;
    buf[0] = '\0';
    int n = snprintf(buf, cap, "[");
    used = n > 0 ? (size_t)n : 0;
    for (int i = 0; i < n_dims && used < cap; i++) {
        n = snprintf(buf + used, cap - used, "%s%" PRId64, i ? ", " : "", shape[i]);
        if (n < 0) break;
        used += (size_t)n;
    }
    if (used < cap) snprintf(buf + used, cap - used, "]");
    return buf;
}

void xlkv_safetensors_close(xlkv_safetensors *st) {
    if (!st) return;
    for (size_t i = 0; i < st->n_tensors; i++) free(st->tensors[i].name);
    free(st->tensors);
    xlkv_unmap_file(&st->file);
    free(st->path);
    free(st);
}

static uint64_t load_le64(const unsigned char *p) {
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--) v = (v << 8) | p[i];
    return v;
}

static int is_exact_index(const cJSON *item, uint64_t *out) {
    if (!cJSON_IsNumber(item)) return 0;
    double v = item->valuedouble;
    if (!(v >= 0.0 && v <= max_exact_integer) || v != floor(v)) return 0;
    *out = (uint64_t)v;
    return 1;
}

static xlkv_status parse_entry(const xlkv_safetensors *st, const cJSON *entry, xlkv_st_tensor *t) {
    const char *path = st->path, *name = t->name;
    if (!cJSON_IsObject(entry)) return xlkv_fail(XLKV_E_FORMAT, "%s: tensor '%s': entry is not a JSON object", path, name);

    const cJSON *dtype = cJSON_GetObjectItemCaseSensitive(entry, "dtype");
    if (!cJSON_IsString(dtype))
        return xlkv_fail(XLKV_E_FORMAT, "%s: tensor '%s': \"dtype\" is missing or not a string", path, name);
    size_t elem_size = 0;
    for (size_t i = 0; i < DTYPE_COUNT; i++)
        if (!strcmp(dtype->valuestring, dtype_table[i].name)) {
            t->dtype = dtype_table[i].dtype;
            elem_size = dtype_table[i].size;
        }
    if (!elem_size)
        return xlkv_fail(XLKV_E_UNSUPPORTED, "%s: tensor '%s' has unsupported dtype '%.32s'", path, name,
                         dtype->valuestring);

    const cJSON *shape = cJSON_GetObjectItemCaseSensitive(entry, "shape");
    if (!cJSON_IsArray(shape))
        return xlkv_fail(XLKV_E_FORMAT, "%s: tensor '%s': \"shape\" is missing or not an array", path, name);
    int n_dims = cJSON_GetArraySize(shape);
    if (n_dims > XLKV_ST_MAX_DIMS)
        return xlkv_fail(XLKV_E_UNSUPPORTED, "%s: tensor '%s' has %d dimensions (at most %d supported)", path, name,
                         n_dims, XLKV_ST_MAX_DIMS);
    t->n_dims = n_dims;
    uint64_t numel = 1;
    int d = 0;
    const cJSON *dim_item;
    cJSON_ArrayForEach(dim_item, shape) {
        uint64_t extent;
        if (!is_exact_index(dim_item, &extent))
            return xlkv_fail(XLKV_E_FORMAT, "%s: tensor '%s': shape entry %d is not a non-negative integer", path, name,
                             d);
        t->shape[d++] = (int64_t)extent;
        if (extent && numel > UINT64_MAX / extent)
            return xlkv_fail(XLKV_E_FORMAT, "%s: tensor '%s': shape overflows 64 bits", path, name);
        numel *= extent;
    }
    t->numel = numel;

    const cJSON *offsets = cJSON_GetObjectItemCaseSensitive(entry, "data_offsets");
    uint64_t begin, end;
    if (!cJSON_IsArray(offsets) || cJSON_GetArraySize(offsets) != 2 || !is_exact_index(offsets->child, &begin) ||
        !is_exact_index(offsets->child->next, &end))
        return xlkv_fail(XLKV_E_FORMAT, "%s: tensor '%s': \"data_offsets\" must be two non-negative integers", path,
                         name);
    if (begin > end || end > st->data_size)
        return xlkv_fail(XLKV_E_FORMAT,
                         "%s: tensor '%s': data_offsets [%" PRIu64 ", %" PRIu64 "] out of the data region (%zu bytes)",
                         path, name, begin, end, st->data_size);
    char shape_text[160];
    if (numel > UINT64_MAX / elem_size || end - begin != numel * elem_size)
        return xlkv_fail(XLKV_E_FORMAT,
                         "%s: tensor '%s': data_offsets span %" PRIu64 " bytes but shape %s of %s needs %" PRIu64, path,
                         name, end - begin, xlkv_format_shape(shape_text, sizeof shape_text, n_dims, t->shape),
                         dtype->valuestring, numel * elem_size);
    t->begin = (size_t)begin;
    t->end = (size_t)end;
    return XLKV_OK;
}

static int compare_tensor_names(const void *a, const void *b) {
    return strcmp(((const xlkv_st_tensor *)a)->name, ((const xlkv_st_tensor *)b)->name);
}

static int only_padding(const char *p, const char *end) {
    for (; p < end; p++)
        if (*p != ' ' && *p != '\t' && *p != '\n' && *p != '\r' && *p != '\0') return 0;
    return 1;
}

static xlkv_status parse_header(xlkv_safetensors *st, const char *header, size_t header_len) {
    const char *parse_end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(header, header_len, &parse_end, 0);
    if (!root) {
        const char *at = cJSON_GetErrorPtr();
        size_t where = (at && at >= header && at <= header + header_len) ? (size_t)(at - header) : 0;
        return xlkv_fail(XLKV_E_FORMAT, "%s: header is not valid JSON (error near byte %zu of %zu)", st->path,
                         where + 8, header_len);
    }
    xlkv_status status = XLKV_OK;
    if (!cJSON_IsObject(root)) {
        status = xlkv_fail(XLKV_E_FORMAT, "%s: header is not a JSON object", st->path);
        goto done;
    }
    if (parse_end && !only_padding(parse_end, header + header_len)) {
        status = xlkv_fail(XLKV_E_FORMAT, "%s: header has trailing bytes after the JSON object", st->path);
        goto done;
    }
    size_t count = 0;
    const cJSON *entry;
    cJSON_ArrayForEach(entry, root) count++;
    st->tensors = calloc(count ? count : 1, sizeof *st->tensors);
    if (!st->tensors) {
        status = xlkv_fail(XLKV_E_NOMEM, "%s: cannot allocate %zu tensor records", st->path, count);
        goto done;
    }
    cJSON_ArrayForEach(entry, root) {
        if (!entry->string) continue;
        if (!strcmp(entry->string, "__metadata__")) continue;
        xlkv_st_tensor *t = &st->tensors[st->n_tensors];
        t->name = strdup(entry->string);
        if (!t->name) {
            status = xlkv_fail(XLKV_E_NOMEM, "%s: out of memory reading tensor names", st->path);
            goto done;
        }
        st->n_tensors++;
        status = parse_entry(st, entry, t);
        if (status != XLKV_OK) goto done;
    }
    qsort(st->tensors, st->n_tensors, sizeof *st->tensors, compare_tensor_names);
    for (size_t i = 1; i < st->n_tensors; i++)
        if (!strcmp(st->tensors[i - 1].name, st->tensors[i].name)) {
            status = xlkv_fail(XLKV_E_FORMAT, "%s: tensor '%s' appears twice in the header", st->path,
                               st->tensors[i].name);
            goto done;
        }
done:
    cJSON_Delete(root);
    return status;
}

xlkv_status xlkv_safetensors_parse(const void *bytes, size_t size, const char *path, xlkv_safetensors **out) {
    *out = NULL;
    if (size < 8)
        return xlkv_fail(XLKV_E_FORMAT, "%s: file is %zu bytes, too short for a safetensors header", path, size);
    const unsigned char *base = bytes;
    uint64_t header_len = load_le64(base);
    if (header_len > size - 8)
        return xlkv_fail(XLKV_E_FORMAT, "%s: header length %" PRIu64 " exceeds the file (%zu bytes after the length)",
                         path, header_len, size - 8);
    xlkv_safetensors *st = calloc(1, sizeof *st);
    if (!st) return xlkv_fail(XLKV_E_NOMEM, "%s: out of memory", path);
    st->path = strdup(path);
    if (!st->path) {
        free(st);
        return xlkv_fail(XLKV_E_NOMEM, "%s: out of memory", path);
    }
    st->data = base + 8 + header_len;
    st->data_size = size - 8 - (size_t)header_len;
    xlkv_status status = parse_header(st, (const char *)base + 8, (size_t)header_len);
    if (status != XLKV_OK) {
        xlkv_safetensors_close(st);
        return status;
    }
    *out = st;
    return XLKV_OK;
}

xlkv_status xlkv_safetensors_open(const char *path, xlkv_safetensors **out) {
    *out = NULL;
    xlkv_mapped_file file;
    XLKV_TRY(xlkv_map_file(path, &file));
    xlkv_status status = xlkv_safetensors_parse(file.data, file.size, path, out);
    if (status != XLKV_OK) {
        xlkv_unmap_file(&file);
        return status;
    }
    (*out)->file = file;
    return XLKV_OK;
}

const xlkv_st_tensor *xlkv_safetensors_find(const xlkv_safetensors *st, const char *name) {
    xlkv_st_tensor key = {.name = (char *)name};
    return bsearch(&key, st->tensors, st->n_tensors, sizeof *st->tensors, compare_tensor_names);
}

static uint32_t load_le32(const unsigned char *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static uint16_t load_le16(const unsigned char *p) { return (uint16_t)(p[0] | p[1] << 8); }

xlkv_status xlkv_safetensors_read_f32(const xlkv_safetensors *st, const xlkv_st_tensor *t, float *dst, size_t n) {
    if (t->numel != (uint64_t)n)
        return xlkv_fail(XLKV_E_INVALID, "%s: tensor '%s' has %" PRIu64 " elements, expected %zu", st->path, t->name,
                         t->numel, n);
    const unsigned char *src = st->data + t->begin;
    size_t first_bad = SIZE_MAX;
    switch (t->dtype) {
    case XLKV_ST_F32:
        for (size_t i = 0; i < n; i++) {
            uint32_t bits = load_le32(src + 4 * i);
            if ((bits & 0x7f800000u) == 0x7f800000u && first_bad == SIZE_MAX) first_bad = i;
            memcpy(&dst[i], &bits, sizeof bits);
        }
        break;
    case XLKV_ST_F16:
        for (size_t i = 0; i < n; i++) {
            uint16_t bits = load_le16(src + 2 * i);
            if ((bits & 0x7c00u) == 0x7c00u && first_bad == SIZE_MAX) first_bad = i;
            dst[i] = xlkv_f16_to_f32(bits);
        }
        break;
    case XLKV_ST_BF16:
        for (size_t i = 0; i < n; i++) {
            uint16_t bits = load_le16(src + 2 * i);
            if ((bits & 0x7f80u) == 0x7f80u && first_bad == SIZE_MAX) first_bad = i;
            dst[i] = xlkv_bf16_to_f32(bits);
        }
        break;
    default:
        return xlkv_fail(XLKV_E_UNSUPPORTED, "%s: tensor '%s' has dtype %s; xlkv reads F32, F16 and BF16", st->path,
                         t->name, xlkv_st_dtype_name(t->dtype));
    }
    if (first_bad != SIZE_MAX)
        return xlkv_fail(XLKV_E_FORMAT, "%s: tensor '%s' holds a non-finite value (NaN or inf) at element %zu",
                         st->path, t->name, first_bad);
    return XLKV_OK;
}
