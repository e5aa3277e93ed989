/* eval/tasks: the task table, xlkv_task_load's dispatch, and the bookkeeping the parsers share (task_parsers.h). */
#include "eval/tasks.h"

#include <cjson/cJSON.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "eval/compressed_file.h"
#include "eval/task_parsers.h"

static const xlkv_task_info known_tasks[] = {
    {"piqa", "piqa.jsonl", XLKV_TASK_MULTIPLE_CHOICE, "Answer:", 1838},
    {"arc_easy", "arc_easy.jsonl", XLKV_TASK_MULTIPLE_CHOICE, "\nAnswer:", 2376},
    {"arc_challenge", "arc_challenge.jsonl", XLKV_TASK_MULTIPLE_CHOICE, "\nAnswer:", 1172},
    {"winogrande", "winogrande.jsonl", XLKV_TASK_WINOGRANDE, "", 1267},
    {"hellaswag", "hellaswag_val_full.txt.bz2", XLKV_TASK_HELLASWAG, "", 10042},
    {"lambada_openai", "lambada_openai.jsonl", XLKV_TASK_LAMBADA, "", 5153},
    {"boolq", "boolq.jsonl", XLKV_TASK_MULTIPLE_CHOICE, "\nAnswer:", 3270},
    {"openbook_qa", "openbook_qa.jsonl", XLKV_TASK_MULTIPLE_CHOICE, "", 500},
    {"copa", "copa.jsonl", XLKV_TASK_MULTIPLE_CHOICE, "", 100},
    {"siqa", "siqa.jsonl", XLKV_TASK_MULTIPLE_CHOICE, "", 1954},
    {"commonsense_qa", "commonsense_qa.jsonl", XLKV_TASK_MULTIPLE_CHOICE, "", 1221},
};

const xlkv_task_info *xlkv_task_list(int *out_n) {
    *out_n = (int)(sizeof known_tasks / sizeof known_tasks[0]);
    return known_tasks;
}

const xlkv_task_info *xlkv_task_find(const char *name) {
    for (size_t i = 0; i < sizeof known_tasks / sizeof known_tasks[0]; i++)
        if (!strcmp(known_tasks[i].name, name)) return &known_tasks[i];
    return NULL;
}

static void example_free(xlkv_task_example *ex) {
    for (int c = 0; c < ex->n_choices; c++) {
        if (ex->contexts) free(ex->contexts[c]);
        if (ex->continuations) free(ex->continuations[c]);
    }
    free(ex->contexts);
    free(ex->continuations);
    memset(ex, 0, sizeof *ex);
}

void xlkv_task_data_free(xlkv_task_data *data) {
    if (!data) return;
    for (int i = 0; i < data->n_examples; i++) example_free(&data->examples[i]);
    free(data->examples);
    free(data->first_skipped);
    memset(data, 0, sizeof *data);
}

xlkv_status task_bad_item(task_parse *p, long line, const char *fmt, ...) {
    char why[512];
    va_list args;
    va_start(args, fmt);
    vsnprintf(why, sizeof why, fmt, args);
    va_end(args);
    if (p->on_error == XLKV_ON_ERROR_STOP) return xlkv_fail(XLKV_E_FORMAT, "%s:%ld: %s", p->path, line, why);
    if (!p->data->first_skipped) {
        size_t n = strlen(p->path) + strlen(why) + 32;
        p->data->first_skipped = malloc(n);
        if (p->data->first_skipped) snprintf(p->data->first_skipped, n, "%s:%ld: %s", p->path, line, why);
    }
    p->data->n_skipped++;
    return XLKV_OK;
}

xlkv_task_example *task_new_example(task_parse *p, int n_choices, long line) {
    xlkv_task_data *d = p->data;
    if (d->n_examples == d->capacity) {
        int cap = d->capacity ? d->capacity * 2 : 64;
        xlkv_task_example *grown = realloc(d->examples, (size_t)cap * sizeof *grown);
        if (!grown) {
            xlkv_fail(XLKV_E_NOMEM, "%s: cannot hold %d examples", p->path, cap);
            return NULL;
        }
        d->examples = grown;
        d->capacity = cap;
    }
    xlkv_task_example *ex = &d->examples[d->n_examples];
    memset(ex, 0, sizeof *ex);
    ex->contexts = calloc((size_t)n_choices, sizeof *ex->contexts);
    ex->continuations = calloc((size_t)n_choices, sizeof *ex->continuations);
    if (!ex->contexts || !ex->continuations) {
        free(ex->contexts);
        free(ex->continuations);
        xlkv_fail(XLKV_E_NOMEM, "%s:%ld: cannot allocate %d choices", p->path, line, n_choices);
        return NULL;
    }
    ex->n_choices = n_choices;
    ex->line = line;
    d->n_examples++;
    return ex;
}

void task_drop_last_example(task_parse *p) {
    if (p->data->n_examples == 0) return;
    example_free(&p->data->examples[--p->data->n_examples]);
}

bool task_set_choice(task_parse *p, xlkv_task_example *ex, int c, const char *context_head, const char *context_tail,
                     const char *continuation) {
    size_t head = strlen(context_head), tail = strlen(context_tail);
    ex->contexts[c] = malloc(head + tail + 1);
    ex->continuations[c] = task_strndup(continuation, strlen(continuation));
    if (!ex->contexts[c] || !ex->continuations[c]) {
        xlkv_fail(XLKV_E_NOMEM, "%s:%ld: cannot copy the item's text", p->path, ex->line);
        return false;
    }
    memcpy(ex->contexts[c], context_head, head);
    memcpy(ex->contexts[c] + head, context_tail, tail + 1);
    return true;
}

char *task_strndup(const char *s, size_t n) {
    char *copy = malloc(n + 1);
    if (!copy) return NULL;
    memcpy(copy, s, n);
    copy[n] = '\0';
    return copy;
}

bool task_full(const task_parse *p) { return p->limit > 0 && p->data->n_examples >= p->limit; }

bool task_next_line(const char *text, size_t size, size_t *pos, const char **line, size_t *len) {
    if (*pos >= size) return false;
    const char *start = text + *pos;
    const char *eol = memchr(start, '\n', size - *pos);
    size_t n = eol ? (size_t)(eol - start) : size - *pos;
    *pos += n + (eol ? 1 : 0);
    if (n > 0 && start[n - 1] == '\r') n--;
    *line = start;
    *len = n;
    return true;
}

struct cJSON *task_parse_json_object(const char *line, size_t len, const char **why) {
    cJSON *obj = cJSON_ParseWithLength(line, len);
    if (!obj) {
        *why = "not valid JSON";
        return NULL;
    }
    if (!cJSON_IsObject(obj)) {
        cJSON_Delete(obj);
        *why = "not a JSON object";
        return NULL;
    }
    return obj;
}

const char *task_json_string(const struct cJSON *obj, const char *key, const char **why) {
    const cJSON *item = cJSON_GetObjectItemCaseSensitive(obj, key);
    if (!cJSON_IsString(item) || !item->valuestring) {
        *why = key;
        return NULL;
    }
    return item->valuestring;
}

bool task_json_int(const struct cJSON *obj, const char *key, int *out, const char **why) {
    const cJSON *item = cJSON_GetObjectItemCaseSensitive(obj, key);
    if (!cJSON_IsNumber(item) || item->valuedouble != (double)(int)item->valuedouble) {
        *why = key;
        return false;
    }
    *out = (int)item->valuedouble;
    return true;
}

int task_json_string_array(const struct cJSON *obj, const char *key, int min_n, const char **why) {
    const cJSON *array = cJSON_GetObjectItemCaseSensitive(obj, key);
    if (!cJSON_IsArray(array)) {
        *why = key;
        return -1;
    }
    int n = 0;
    const cJSON *item;
    cJSON_ArrayForEach(item, array) {
        if (!cJSON_IsString(item)) {
            *why = key;
            return -1;
        }
        n++;
    }
    if (n < min_n) {
        *why = key;
        return -1;
    }
    return n;
}

xlkv_status task_parse_jsonl(task_parse *p, const char *text, size_t size, task_jsonl_item_fn item) {
    size_t pos = 0, len = 0;
    const char *line = NULL;
    for (long line_no = 1; !task_full(p) && task_next_line(text, size, &pos, &line, &len); line_no++) {
        if (len == 0) continue;
        const char *why = NULL;
        cJSON *obj = task_parse_json_object(line, len, &why);
        xlkv_status status = obj ? item(p, obj, line_no) : task_bad_item(p, line_no, "%s", why);
        cJSON_Delete(obj);
        if (status != XLKV_OK) return status;
    }
    return XLKV_OK;
}

xlkv_status xlkv_task_load(const xlkv_task_info *task, const char *path, xlkv_on_error on_error, int limit,
                           xlkv_task_data *out) {
    memset(out, 0, sizeof *out);
    char *text = NULL;
    size_t size = 0;
    XLKV_TRY(xlkv_read_data_file(path, &text, &size));
    task_parse p = {.task = task, .path = path, .on_error = on_error, .limit = limit, .data = out};
    xlkv_status status;
    switch (task->format) {
    case XLKV_TASK_MULTIPLE_CHOICE: status = task_parse_mc_jsonl(&p, text, size); break;
    case XLKV_TASK_WINOGRANDE: status = task_parse_winogrande(&p, text, size); break;
    case XLKV_TASK_LAMBADA: status = task_parse_lambada(&p, text, size); break;
    case XLKV_TASK_HELLASWAG: status = task_parse_hellaswag(&p, text, size); break;
    default: status = xlkv_fail(XLKV_E_INVALID, "task %s: unknown format %d", task->name, (int)task->format);
    }
    free(text);
    if (status == XLKV_OK && out->n_examples == 0)
        status = xlkv_fail(XLKV_E_FORMAT, "%s: no well-formed items (%d skipped)", path, out->n_skipped);
    if (status != XLKV_OK) xlkv_task_data_free(out);
    return status;
}
