/* bench/bench_json_line: the JSON lines the trainer benchmarks append to bench/results/ (bench_train_gpu,
 * bench_train_gemm, bench_train_kernels): a line starts with the bench's name and the commit (XLKV_COMMIT, since the
 * GPU machine gets a copy of the tree without .git; "unknown" when unset), and is written as one unformatted line,
 * flushed at once so that a run cut short keeps what it measured. Not a library header: one benchmark per file. */
#ifndef XLKV_BENCH_JSON_LINE_H
#define XLKV_BENCH_JSON_LINE_H

#include <stdio.h>
#include <stdlib.h>

#include <cjson/cJSON.h>

/* A new line {"bench": bench, "commit": ...}; the caller adds its fields. */
static inline cJSON *bench_json_line(const char *bench) {
    cJSON *line = cJSON_CreateObject();
    cJSON_AddStringToObject(line, "bench", bench);
    const char *commit = getenv("XLKV_COMMIT");
    cJSON_AddStringToObject(line, "commit", commit && *commit ? commit : "unknown");
    return line;
}

/* Writes the line to out (NULL: nowhere, e.g. when the results file could not be opened) and frees it. */
static inline void bench_json_write(cJSON *line, FILE *out) {
    char *text = cJSON_PrintUnformatted(line);
    if (text && out) {
        fprintf(out, "%s\n", text);
        fflush(out);
    }
    free(text);
    cJSON_Delete(line);
}

#endif
