/* core/file: reading whole files and memory-mapping them, with errors that name the path. */
#ifndef XLKV_CORE_FILE_H
#define XLKV_CORE_FILE_H

#include <stddef.h>

#include "xlkv.h"

/* Reads a whole file into a NUL-terminated heap buffer (*out_size excludes the NUL). Caller frees *out_data. */
xlkv_status xlkv_read_file(const char *path, char **out_data, size_t *out_size);

/* A read-only memory mapping of a whole file. */
typedef struct xlkv_mapped_file {
    const unsigned char *data;
    size_t size;
} xlkv_mapped_file;

xlkv_status xlkv_map_file(const char *path, xlkv_mapped_file *out);
void xlkv_unmap_file(xlkv_mapped_file *file); /* safe on a zeroed struct */

/* Joins a directory and a file name into a fresh heap string (NULL on allocation failure). */
char *xlkv_path_join(const char *dir, const char *name);
int xlkv_is_directory(const char *path);
int xlkv_file_exists(const char *path);

#endif
