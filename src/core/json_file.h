/* core/json_file: writing a cJSON document to a file (pretty-printed, with a final newline), with errors that name
 * the path. The result files of the CLI and the KVSharer search go through it. */
#ifndef XLKV_CORE_JSON_FILE_H
#define XLKV_CORE_JSON_FILE_H

#include <cjson/cJSON.h>

#include "xlkv.h"

/* Writes `json` to path (created or truncated): XLKV_E_NOMEM when it cannot be printed, XLKV_E_IO naming the file
 * when it cannot be written. */
xlkv_status xlkv_write_json_file(const char *path, const cJSON *json);

#endif
