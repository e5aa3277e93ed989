/* eval/tasks: the zero-shot tasks xlkv knows (names, data files, formats, prompt conventions) and their examples as
 * loaded from the data files of ../shared/data/eval (README there).
 *
 * Every example is a list of (context, continuation) choices and the index of the gold one. A continuation is scored
 * after its context with lm-evaluation-harness' target delimiter, one space: the request is (context, " " +
 * continuation). `query_suffix` completes the stored queries into the prompts lm-eval writes: piqa queries end with
 * "\n" and arc / boolq queries with the question, so "Answer:" / "\nAnswer:" is appended ("Question: ...\nAnswer:
 * choice"); the other files already end where the answer goes ("...Answer:", "... because", "... he").
 * Malformed lines are errors naming file:line; with XLKV_ON_ERROR_SKIP they are counted and skipped instead. */
#ifndef XLKV_EVAL_TASKS_H
#define XLKV_EVAL_TASKS_H

#include <stdbool.h>

#include "xlkv.h"

typedef enum xlkv_task_format {
    XLKV_TASK_MULTIPLE_CHOICE, /* jsonl {"query", "choices", "gold"} */
    XLKV_TASK_WINOGRANDE,      /* jsonl {"context_options", "continuation", "gold"}: partial scoring */
    XLKV_TASK_LAMBADA,         /* jsonl {"context", "continuation"}: the final word */
    XLKV_TASK_HELLASWAG,       /* .txt.bz2, 6 lines per item: "label: context", gold index, 4 endings */
} xlkv_task_format;

typedef struct xlkv_task_info {
    const char *name;
    const char *file;         /* in the data directory */
    xlkv_task_format format;
    const char *query_suffix; /* appended to each query (multiple choice only) */
    int rows;                 /* items of the official split, as the data README lists them */
} xlkv_task_info;

/* Every known task, in the order `--tasks all` runs them. */
const xlkv_task_info *xlkv_task_list(int *out_n);
/* The task called `name`, NULL if none. */
const xlkv_task_info *xlkv_task_find(const char *name);

typedef enum xlkv_on_error { XLKV_ON_ERROR_STOP = 0, XLKV_ON_ERROR_SKIP } xlkv_on_error;

typedef struct xlkv_task_example {
    int n_choices;
    char **contexts;      /* [n_choices] */
    char **continuations; /* [n_choices], without the delimiter */
    int gold;
    long line;            /* first line of the item in its file (1-based) */
} xlkv_task_example;

typedef struct xlkv_task_data {
    xlkv_task_example *examples;
    int n_examples;
    int capacity;         /* examples allocated */
    int n_skipped;        /* malformed items skipped (XLKV_ON_ERROR_SKIP) */
    char *first_skipped;  /* the message of the first one, NULL if none */
} xlkv_task_data;

/* Loads `path` in the task's format. limit > 0 keeps the first `limit` well-formed items. */
xlkv_status xlkv_task_load(const xlkv_task_info *task, const char *path, xlkv_on_error on_error, int limit,
                           xlkv_task_data *out);
void xlkv_task_data_free(xlkv_task_data *data);

#endif
