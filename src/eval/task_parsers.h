/* eval/task_parsers: the format parsers behind xlkv_task_load (one file each: task_mc_jsonl.c, task_winogrande.c,
 * task_lambada.c, task_hellaswag.c) and the bookkeeping they share (tasks.c): malformed items reported as
 * "file:line: why" or skipped and counted, examples appended, the limit. Internal to src/eval. */
#ifndef XLKV_EVAL_TASK_PARSERS_H
#define XLKV_EVAL_TASK_PARSERS_H

#include <stddef.h>

#include "core/status.h"
#include "eval/tasks.h"

struct cJSON;

typedef struct task_parse {
    const xlkv_task_info *task;
    const char *path;
    xlkv_on_error on_error;
    int limit;
    xlkv_task_data *data;
} task_parse;

/* A malformed item at `line`: XLKV_E_FORMAT "path:line: why" when stopping; counted (the first message kept) and
 * XLKV_OK when skipping. */
xlkv_status task_bad_item(task_parse *p, long line, const char *fmt, ...) XLKV_PRINTF(3, 4);
/* Appends an example of n_choices empty choices and returns it (NULL: out of memory, reported). */
xlkv_task_example *task_new_example(task_parse *p, int n_choices, long line);
/* Drops the last example appended (when it turned out malformed). */
void task_drop_last_example(task_parse *p);
/* Sets choice c to (context_head + context_tail, continuation), heap copies; false when out of memory (reported). */
bool task_set_choice(task_parse *p, xlkv_task_example *ex, int c, const char *context_head, const char *context_tail,
                     const char *continuation);
/* A heap copy of s[0..n), NUL-terminated (NULL on allocation failure). */
char *task_strndup(const char *s, size_t n);
/* Whether the limit is reached. */
bool task_full(const task_parse *p);

/* The next line of text[*pos..size): its start and length (without "\n" / "\r\n"); false at the end. */
bool task_next_line(const char *text, size_t size, size_t *pos, const char **line, size_t *len);

/* A jsonl line parsed into an object (NULL and *why set when it is not one). The caller frees with cJSON_Delete. */
struct cJSON *task_parse_json_object(const char *line, size_t len, const char **why);
/* Field accessors for messages: NULL and *why set when missing or of the wrong type. */
const char *task_json_string(const struct cJSON *obj, const char *key, const char **why);
bool task_json_int(const struct cJSON *obj, const char *key, int *out, const char **why);
/* A JSON array of at least min_n strings: returns the count, or -1 with *why set. */
int task_json_string_array(const struct cJSON *obj, const char *key, int min_n, const char **why);

/* Calls item() on every non-blank line of a jsonl text parsed into an object (lines that are not are bad items),
 * until the limit. */
typedef xlkv_status (*task_jsonl_item_fn)(task_parse *p, const struct cJSON *obj, long line_no);
xlkv_status task_parse_jsonl(task_parse *p, const char *text, size_t size, task_jsonl_item_fn item);

xlkv_status task_parse_mc_jsonl(task_parse *p, const char *text, size_t size);
xlkv_status task_parse_winogrande(task_parse *p, const char *text, size_t size);
xlkv_status task_parse_lambada(task_parse *p, const char *text, size_t size);
xlkv_status task_parse_hellaswag(task_parse *p, const char *text, size_t size);

#endif
