/* model/gguf: see gguf.h. Parsing is a bounds-checked cursor over the file bytes; every length read from the file
 * is compared with the bytes that remain before it is used. */
#include "model/gguf.h"

#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "core/file.h"
#include "core/status.h"

#define GGUF_MAGIC "GGUF"
/* Arrays nested inside arrays are legal GGUF but no tokenizer needs them; bounding the depth bounds the recursion. */
#define GGUF_MAX_ARRAY_DEPTH 2

typedef struct gguf_entry {
    char *key;
    xlkv_gguf_value value;
} gguf_entry;

struct xlkv_gguf {
    char *name;
    xlkv_mapped_file mapping; /* empty when opened from memory */
    uint32_t version;
    uint64_t tensor_count;
    gguf_entry *entries;
    size_t n_entries;
};

typedef struct gguf_cursor {
    const unsigned char *data;
    size_t size;
    size_t pos;
    const char *name;
} gguf_cursor;

static size_t remaining(const gguf_cursor *c) { return c->size - c->pos; }

static xlkv_status read_bytes(gguf_cursor *c, void *dst, size_t n, const char *what) {
    if (remaining(c) < n)
        return xlkv_fail(XLKV_E_FORMAT, "%s: truncated GGUF: %s needs %zu bytes at offset %zu, file has %zu", c->name,
                         what, n, c->pos, c->size);
    memcpy(dst, c->data + c->pos, n);
    c->pos += n;
    return XLKV_OK;
}

static xlkv_status read_u32(gguf_cursor *c, uint32_t *out, const char *what) { return read_bytes(c, out, 4, what); }
static xlkv_status read_u64(gguf_cursor *c, uint64_t *out, const char *what) { return read_bytes(c, out, 8, what); }

/* A GGUF string: uint64 length then bytes. Returns a pointer into the data. */
static xlkv_status read_string(gguf_cursor *c, const char **out, size_t *out_len, const char *what) {
    uint64_t len = 0;
    XLKV_TRY(read_u64(c, &len, what));
    if (len > remaining(c))
        return xlkv_fail(XLKV_E_FORMAT, "%s: %s has length %" PRIu64 " at offset %zu, beyond the end of the file (%zu bytes)",
                         c->name, what, len, c->pos, c->size);
    *out = (const char *)c->data + c->pos;
    *out_len = (size_t)len;
    c->pos += (size_t)len;
    return XLKV_OK;
}

static size_t scalar_size(xlkv_gguf_type type) {
    switch (type) {
    case XLKV_GGUF_UINT8:
    case XLKV_GGUF_INT8:
    case XLKV_GGUF_BOOL: return 1;
    case XLKV_GGUF_UINT16:
    case XLKV_GGUF_INT16: return 2;
    case XLKV_GGUF_UINT32:
    case XLKV_GGUF_INT32:
    case XLKV_GGUF_FLOAT32: return 4;
    case XLKV_GGUF_UINT64:
    case XLKV_GGUF_INT64:
    case XLKV_GGUF_FLOAT64: return 8;
    default: return 0; /* strings and arrays have no fixed size */
    }
}

/* Advances the cursor over one value of `type`, checking it; fills *value for the top-level entry. */
static xlkv_status skip_value(gguf_cursor *c, uint32_t type, const char *key, int depth, xlkv_gguf_value *value) {
    memset(value, 0, sizeof *value);
    value->type = (xlkv_gguf_type)type;
    size_t start = c->pos;
    size_t fixed = scalar_size((xlkv_gguf_type)type);
    if (fixed) {
        if (remaining(c) < fixed)
            return xlkv_fail(XLKV_E_FORMAT, "%s: truncated GGUF: value of '%s' at offset %zu", c->name, key, c->pos);
        c->pos += fixed;
    } else if (type == XLKV_GGUF_STRING) {
        const char *s = NULL;
        size_t len = 0;
        XLKV_TRY(read_string(c, &s, &len, "string value"));
        value->data = (const unsigned char *)s;
        value->size = len;
        return XLKV_OK;
    } else if (type == XLKV_GGUF_ARRAY) {
        if (depth >= GGUF_MAX_ARRAY_DEPTH)
            return xlkv_fail(XLKV_E_FORMAT, "%s: array of '%s' nests arrays deeper than %d", c->name, key,
                             GGUF_MAX_ARRAY_DEPTH);
        uint32_t elem_type = 0;
        uint64_t count = 0;
        XLKV_TRY(read_u32(c, &elem_type, "array element type"));
        XLKV_TRY(read_u64(c, &count, "array length"));
        value->elem_type = (xlkv_gguf_type)elem_type;
        value->count = count;
        size_t elem_fixed = scalar_size((xlkv_gguf_type)elem_type);
        if (elem_type > XLKV_GGUF_FLOAT64)
            return xlkv_fail(XLKV_E_FORMAT, "%s: array '%s' has unknown element type %u", c->name, key, elem_type);
        /* Every element takes at least one byte (strings: 8), so a count above the bytes left is certainly bad. */
        if (count > remaining(c))
            return xlkv_fail(XLKV_E_FORMAT, "%s: array '%s' claims %" PRIu64 " elements, more than the %zu bytes left",
                             c->name, key, count, remaining(c));
        value->data = c->data + c->pos;
        if (elem_fixed) {
            if (count * elem_fixed > remaining(c))
                return xlkv_fail(XLKV_E_FORMAT, "%s: array '%s' of %" PRIu64 " elements runs past the end of the file",
                                 c->name, key, count);
            c->pos += (size_t)count * elem_fixed;
        } else {
            for (uint64_t i = 0; i < count; i++) {
                xlkv_gguf_value ignored;
                xlkv_status st = skip_value(c, elem_type, key, depth + 1, &ignored);
                if (st != XLKV_OK) {
                    xlkv_error_prefix("element %" PRIu64 " of '%s'", i, key);
                    return st;
                }
            }
        }
        value->size = c->pos - (size_t)(value->data - c->data);
        return XLKV_OK;
    } else {
        return xlkv_fail(XLKV_E_FORMAT, "%s: metadata '%s' has unknown value type %u", c->name, key, type);
    }
    value->data = c->data + start;
    value->size = fixed;
    return XLKV_OK;
}

static xlkv_status parse(xlkv_gguf *g, const unsigned char *data, size_t size) {
    gguf_cursor c = {data, size, 0, g->name};
    char magic[4];
    if (size < 4 || memcmp(data, GGUF_MAGIC, 4) != 0)
        return xlkv_fail(XLKV_E_FORMAT, "%s: not a GGUF file (bad magic, expected \"GGUF\")", g->name);
    XLKV_TRY(read_bytes(&c, magic, 4, "magic"));
    XLKV_TRY(read_u32(&c, &g->version, "version"));
    if (g->version != 2 && g->version != 3)
        return xlkv_fail(XLKV_E_UNSUPPORTED, "%s: GGUF version %u is not supported (only 2 and 3)", g->name, g->version);
    uint64_t kv_count = 0;
    XLKV_TRY(read_u64(&c, &g->tensor_count, "tensor count"));
    XLKV_TRY(read_u64(&c, &kv_count, "metadata count"));
    /* The smallest entry is a 8-byte key length, a 4-byte type and a 1-byte value. */
    if (kv_count > remaining(&c) / 13)
        return xlkv_fail(XLKV_E_FORMAT, "%s: metadata count %" PRIu64 " exceeds what the file size (%zu bytes) can hold",
                         g->name, kv_count, size);
    g->entries = calloc(kv_count ? (size_t)kv_count : 1, sizeof *g->entries);
    if (!g->entries) return xlkv_fail(XLKV_E_NOMEM, "%s: cannot allocate %" PRIu64 " metadata entries", g->name, kv_count);
    for (uint64_t i = 0; i < kv_count; i++) {
        const char *key = NULL;
        size_t key_len = 0;
        uint32_t type = 0;
        XLKV_TRY(read_string(&c, &key, &key_len, "metadata key"));
        gguf_entry *e = &g->entries[g->n_entries];
        e->key = malloc(key_len + 1);
        if (!e->key) return xlkv_fail(XLKV_E_NOMEM, "%s: cannot allocate a metadata key", g->name);
        memcpy(e->key, key, key_len);
        e->key[key_len] = '\0';
        g->n_entries++;
        XLKV_TRY(read_u32(&c, &type, "metadata value type"));
        XLKV_TRY(skip_value(&c, type, e->key, 0, &e->value));
    }
    return XLKV_OK;
}

static xlkv_status open_common(const unsigned char *data, size_t size, const char *name, xlkv_mapped_file mapping,
                               xlkv_gguf **out) {
    *out = NULL;
    xlkv_gguf *g = calloc(1, sizeof *g);
    char *name_copy = strdup(name);
    if (!g || !name_copy) {
        free(g);
        free(name_copy);
        xlkv_unmap_file(&mapping);
        return xlkv_fail(XLKV_E_NOMEM, "%s: out of memory", name);
    }
    g->name = name_copy;
    g->mapping = mapping;
    xlkv_status st = parse(g, data, size);
    if (st != XLKV_OK) {
        xlkv_gguf_close(g);
        return st;
    }
    *out = g;
    return XLKV_OK;
}

xlkv_status xlkv_gguf_open(const char *path, xlkv_gguf **out) {
    *out = NULL;
    xlkv_mapped_file mapping;
    XLKV_TRY(xlkv_map_file(path, &mapping));
    return open_common(mapping.data, mapping.size, path, mapping, out);
}

xlkv_status xlkv_gguf_open_memory(const void *data, size_t size, const char *name, xlkv_gguf **out) {
    xlkv_mapped_file none = {NULL, 0};
    return open_common(data, size, name, none, out);
}

void xlkv_gguf_close(xlkv_gguf *gguf) {
    if (!gguf) return;
    for (size_t i = 0; i < gguf->n_entries; i++) free(gguf->entries[i].key);
    free(gguf->entries);
    xlkv_unmap_file(&gguf->mapping);
    free(gguf->name);
    free(gguf);
}

uint32_t xlkv_gguf_version(const xlkv_gguf *gguf) { return gguf->version; }
uint64_t xlkv_gguf_tensor_count(const xlkv_gguf *gguf) { return gguf->tensor_count; }
size_t xlkv_gguf_kv_count(const xlkv_gguf *gguf) { return gguf->n_entries; }
const char *xlkv_gguf_name(const xlkv_gguf *gguf) { return gguf->name; }

const xlkv_gguf_value *xlkv_gguf_find(const xlkv_gguf *gguf, const char *key) {
    for (size_t i = 0; i < gguf->n_entries; i++)
        if (strcmp(gguf->entries[i].key, key) == 0) return &gguf->entries[i].value;
    return NULL;
}

const char *xlkv_gguf_key(const xlkv_gguf *gguf, size_t i) { return i < gguf->n_entries ? gguf->entries[i].key : NULL; }

/* Reads one fixed-size element at `p` as int64 (integers and bool). */
static bool element_int64(xlkv_gguf_type type, const unsigned char *p, int64_t *out) {
    switch (type) {
    case XLKV_GGUF_UINT8:
    case XLKV_GGUF_BOOL: *out = p[0]; return true;
    case XLKV_GGUF_INT8: *out = (int8_t)p[0]; return true;
    case XLKV_GGUF_UINT16: { uint16_t v; memcpy(&v, p, 2); *out = v; return true; }
    case XLKV_GGUF_INT16: { int16_t v; memcpy(&v, p, 2); *out = v; return true; }
    case XLKV_GGUF_UINT32: { uint32_t v; memcpy(&v, p, 4); *out = v; return true; }
    case XLKV_GGUF_INT32: { int32_t v; memcpy(&v, p, 4); *out = v; return true; }
    case XLKV_GGUF_INT64: { int64_t v; memcpy(&v, p, 8); *out = v; return true; }
    case XLKV_GGUF_UINT64: {
        uint64_t v;
        memcpy(&v, p, 8);
        if (v > (uint64_t)INT64_MAX) return false;
        *out = (int64_t)v;
        return true;
    }
    default: return false;
    }
}

static bool element_double(xlkv_gguf_type type, const unsigned char *p, double *out) {
    if (type == XLKV_GGUF_FLOAT32) {
        float v;
        memcpy(&v, p, 4);
        *out = v;
        return true;
    }
    if (type == XLKV_GGUF_FLOAT64) {
        memcpy(out, p, 8);
        return true;
    }
    int64_t i;
    if (!element_int64(type, p, &i)) return false;
    *out = (double)i;
    return true;
}

bool xlkv_gguf_value_int64(const xlkv_gguf_value *value, int64_t *out) {
    return value && value->type != XLKV_GGUF_ARRAY && element_int64(value->type, value->data, out);
}

bool xlkv_gguf_value_double(const xlkv_gguf_value *value, double *out) {
    return value && scalar_size(value->type) && element_double(value->type, value->data, out);
}

bool xlkv_gguf_value_string(const xlkv_gguf_value *value, const char **out, size_t *out_len) {
    if (!value || value->type != XLKV_GGUF_STRING) return false;
    *out = (const char *)value->data;
    *out_len = value->size;
    return true;
}

bool xlkv_gguf_array_int64(const xlkv_gguf_value *array, uint64_t i, int64_t *out) {
    if (!array || array->type != XLKV_GGUF_ARRAY || i >= array->count) return false;
    size_t elem = scalar_size(array->elem_type);
    return elem && element_int64(array->elem_type, array->data + i * elem, out);
}

bool xlkv_gguf_array_double(const xlkv_gguf_value *array, uint64_t i, double *out) {
    if (!array || array->type != XLKV_GGUF_ARRAY || i >= array->count) return false;
    size_t elem = scalar_size(array->elem_type);
    return elem && element_double(array->elem_type, array->data + i * elem, out);
}

bool xlkv_gguf_array_next_string(const xlkv_gguf_value *array, size_t *cursor, const char **out, size_t *out_len) {
    if (!array || array->type != XLKV_GGUF_ARRAY || array->elem_type != XLKV_GGUF_STRING) return false;
    if (*cursor + 8 > array->size) return false; /* validated at open: the strings exactly fill array->size */
    uint64_t len = 0;
    memcpy(&len, array->data + *cursor, 8);
    *out = (const char *)array->data + *cursor + 8;
    *out_len = (size_t)len;
    *cursor += 8 + (size_t)len;
    return true;
}
