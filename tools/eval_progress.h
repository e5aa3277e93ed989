/* tools/eval_progress: the progress line of the evaluation commands (perplexity, eval) on stderr: done / total, rate
 * and ETA, redrawn in place on a terminal at most a few times a second, one line per 10% otherwise (logs). */
#ifndef XLKV_TOOLS_EVAL_PROGRESS_H
#define XLKV_TOOLS_EVAL_PROGRESS_H

#include <stdbool.h>

typedef struct eval_progress {
    const char *command; /* "perplexity" */
    const char *label;   /* what is counted: "tokens", "piqa items" */
    long base;           /* added to the `done` of each report (several streams) */
    long total;          /* the overall total; 0 = the report's own */
    double start;        /* seconds (xlkv_now_seconds) */
    double last_print;
    int last_decile;
    bool tty;
    bool drew;           /* a line is on screen without its newline */
} eval_progress;

void eval_progress_start(eval_progress *p, const char *command, const char *label, long total);
/* xlkv_eval_progress_fn: user is an eval_progress. */
void eval_progress_report(void *user, long done, long total);
/* Ends the line (if one is drawn). */
void eval_progress_finish(eval_progress *p);

#endif
