/* core/json_file: see json_file.h. */
#include "core/json_file.h"

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>

#include "core/status.h"

xlkv_status xlkv_write_json_file(const char *path, const cJSON *json) {
    char *text = cJSON_Print(json);
    if (!text) return xlkv_fail(XLKV_E_NOMEM, "%s: out of memory printing JSON", path);
    FILE *f = fopen(path, "w");
    bool ok = f && fputs(text, f) >= 0 && fputc('\n', f) != EOF;
    if (f && fclose(f) != 0) ok = false;
    free(text);
    return ok ? XLKV_OK : xlkv_fail(XLKV_E_IO, "%s: cannot write", path);
}
