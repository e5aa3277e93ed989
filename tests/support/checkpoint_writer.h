/* tests/support/checkpoint_writer: header-only helpers for the loader tests to build (often malformed) checkpoints:
 * safetensors images from a tensor list, files in a directory, and copies of a fixture's tensors to mutate.
 * Test code only: it asserts (cmocka) instead of returning errors. */
#ifndef XLKV_TESTS_CHECKPOINT_WRITER_H
#define XLKV_TESTS_CHECKPOINT_WRITER_H

#include <cjson/cJSON.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/file.h"
#include "model/safetensors.h"
#include "testutil.h"

typedef struct cw_tensor {
    char name[128];
    char dtype[16];
    int n_dims;
    int64_t shape[4];
    const void *data; /* not owned */
    size_t nbytes;
} cw_tensor;

/* A safetensors image (length + JSON header + data, in list order); heap, caller frees. */
static inline unsigned char *cw_safetensors_image(const cw_tensor *tensors, size_t n, size_t *out_size) {
    cJSON *root = cJSON_CreateObject();
    cJSON *meta = cJSON_AddObjectToObject(root, "__metadata__");
    cJSON_AddStringToObject(meta, "format", "pt");
    size_t offset = 0;
    for (size_t i = 0; i < n; i++) {
        cJSON *entry = cJSON_AddObjectToObject(root, tensors[i].name);
        cJSON_AddStringToObject(entry, "dtype", tensors[i].dtype);
        cJSON *shape = cJSON_AddArrayToObject(entry, "shape");
        for (int d = 0; d < tensors[i].n_dims; d++) cJSON_AddItemToArray(shape, cJSON_CreateNumber((double)tensors[i].shape[d]));
        cJSON *offsets = cJSON_AddArrayToObject(entry, "data_offsets");
        cJSON_AddItemToArray(offsets, cJSON_CreateNumber((double)offset));
        cJSON_AddItemToArray(offsets, cJSON_CreateNumber((double)(offset + tensors[i].nbytes)));
        offset += tensors[i].nbytes;
    }
    char *header = cJSON_PrintUnformatted(root);
    cJSON_Delete(root);
    size_t header_len = strlen(header);
    size_t padded = (header_len + 7) / 8 * 8;
    size_t size = 8 + padded + offset;
    unsigned char *image = calloc(1, size);
    assert_non_null(image);
    for (int b = 0; b < 8; b++) image[b] = (unsigned char)((uint64_t)padded >> (8 * b));
    memcpy(image + 8, header, header_len);
    memset(image + 8 + header_len, ' ', padded - header_len);
    free(header);
    size_t at = 8 + padded;
    for (size_t i = 0; i < n; i++) {
        if (tensors[i].nbytes) memcpy(image + at, tensors[i].data, tensors[i].nbytes);
        at += tensors[i].nbytes;
    }
    *out_size = size;
    return image;
}

/* Writes dir/name (returns the heap path). */
static inline char *cw_write_file(const char *dir, const char *name, const void *data, size_t size) {
    char *path = xlkv_path_join(dir, name);
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    if (size) assert_int_equal(fwrite(data, 1, size, f), size);
    fclose(f);
    return path;
}

static inline void cw_write_text(const char *dir, const char *name, const char *text) {
    free(cw_write_file(dir, name, text, strlen(text)));
}

static inline void cw_write_safetensors(const char *dir, const char *name, const cw_tensor *tensors, size_t n) {
    size_t size = 0;
    unsigned char *image = cw_safetensors_image(tensors, n, &size);
    free(cw_write_file(dir, name, image, size));
    free(image);
}

/* Copies a file's bytes to dir/name. */
static inline void cw_copy_file(const char *from, const char *dir, const char *name) {
    char *data = NULL;
    size_t size = 0;
    assert_int_equal(xlkv_read_file(from, &data, &size), XLKV_OK);
    free(cw_write_file(dir, name, data, size));
    free(data);
}

/* The tensors of an open safetensors file as a mutable list (data points into the mapping); heap. */
static inline cw_tensor *cw_tensors_of(const xlkv_safetensors *st, size_t *out_n) {
    cw_tensor *list = calloc(st->n_tensors, sizeof *list);
    assert_non_null(list);
    for (size_t i = 0; i < st->n_tensors; i++) {
        const xlkv_st_tensor *t = &st->tensors[i];
        snprintf(list[i].name, sizeof list[i].name, "%s", t->name);
        snprintf(list[i].dtype, sizeof list[i].dtype, "%s", xlkv_st_dtype_name(t->dtype));
        list[i].n_dims = t->n_dims;
        for (int d = 0; d < t->n_dims && d < 4; d++) list[i].shape[d] = t->shape[d];
        list[i].data = st->data + t->begin;
        list[i].nbytes = t->end - t->begin;
    }
    *out_n = st->n_tensors;
    return list;
}

/* Removes the tensor called `name` from the list (asserts it was there). */
static inline void cw_drop(cw_tensor *list, size_t *n, const char *name) {
    for (size_t i = 0; i < *n; i++)
        if (!strcmp(list[i].name, name)) {
            memmove(&list[i], &list[i + 1], (*n - i - 1) * sizeof *list);
            (*n)--;
            return;
        }
    fail_msg("no tensor %s to drop", name);
}

static inline cw_tensor *cw_find(cw_tensor *list, size_t n, const char *name) {
    for (size_t i = 0; i < n; i++)
        if (!strcmp(list[i].name, name)) return &list[i];
    fail_msg("no tensor %s", name);
    return NULL;
}

#endif
