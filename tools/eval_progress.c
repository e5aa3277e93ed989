/* tools/eval_progress: see eval_progress.h. */
#include "eval_progress.h"

#include <stdio.h>
#include <unistd.h>

#include "core/timing.h"

void eval_progress_start(eval_progress *p, const char *command, const char *label, long total) {
    *p = (eval_progress){.command = command, .label = label, .total = total, .start = xlkv_now_seconds(),
                         .last_decile = 0, .tty = isatty(STDERR_FILENO) != 0};
}

static void format_duration(double seconds, char *buf, size_t cap) {
    long s = (long)(seconds + 0.5);
    if (s >= 3600) snprintf(buf, cap, "%ldh%02ldm", s / 3600, s / 60 % 60);
    else if (s >= 60) snprintf(buf, cap, "%ldm%02lds", s / 60, s % 60);
    else snprintf(buf, cap, "%lds", s);
}

void eval_progress_report(void *user, long done, long total) {
    eval_progress *p = user;
    done += p->base;
    if (p->total > 0) total = p->total;
    double now = xlkv_now_seconds(), elapsed = now - p->start;
    int decile = total > 0 ? (int)(10 * done / total) : 0;
    bool last = done >= total;
    if (p->tty ? (now - p->last_print < 0.25 && !last) : decile <= p->last_decile && !last) return;
    if (!p->tty && last && p->last_decile >= 10) return;
    p->last_print = now;
    p->last_decile = decile;
    double rate = elapsed > 0 ? (double)done / elapsed : 0.0;
    char eta[32], spent[32];
    format_duration(rate > 0 ? (double)(total - done) / rate : 0.0, eta, sizeof eta);
    format_duration(elapsed, spent, sizeof spent);
    fprintf(stderr, "%sxlkv %s: %ld/%ld %s (%.0f%%), %.1f/s, elapsed %s, ETA %s%s", p->tty ? "\r\033[K" : "",
            p->command, done, total, p->label, total > 0 ? 100.0 * (double)done / (double)total : 100.0, rate, spent,
            eta, p->tty ? "" : "\n");
    p->drew = p->tty;
}

void eval_progress_finish(eval_progress *p) {
    if (p->drew) fputc('\n', stderr);
    p->drew = false;
}
