/* eval/compressed_file: reading a whole data file that may be compressed: .xz (liblzma) and .bz2 (libbz2) are
 * decompressed in memory, anything else is read as is. */
#ifndef XLKV_EVAL_COMPRESSED_FILE_H
#define XLKV_EVAL_COMPRESSED_FILE_H

#include <stddef.h>

#include "xlkv.h"

/* A NUL-terminated heap buffer with the (decompressed) content; *out_size excludes the NUL. Caller frees. */
xlkv_status xlkv_read_data_file(const char *path, char **out_data, size_t *out_size);

#endif
