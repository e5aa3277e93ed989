/* eval/task_hellaswag: HellaSwag as the text file of hellaswag_val_full.txt(.bz2): 6 lines per item,
 *     "<activity label>: <context>" / gold index (0-3) / ending 0 / ending 1 / ending 2 / ending 3.
 * Context and endings go through lm-evaluation-harness' hellaswag preprocess (strip; " [title]" -> ". "; drop
 * "[...]"; "  " -> " "). Unlike lm-eval the context's second half is not re-capitalized: the file has it joined
 * already. A malformed item is reported at its faulty line; skipping drops its 6 lines. */
#include <stdlib.h>
#include <string.h>

#include "eval/task_parsers.h"

#define HELLASWAG_ENDINGS 4
#define HELLASWAG_LINES (2 + HELLASWAG_ENDINGS)

static bool is_python_space(char c) { return c == ' ' || (c >= '\t' && c <= '\r') || (c >= '\x1c' && c <= '\x1f'); }

/* lm-eval's hellaswag `preprocess` of line[0..len) into a fresh heap string (NULL when out of memory). */
static char *preprocess(const char *line, size_t len) {
    while (len > 0 && is_python_space(line[0])) line++, len--;
    while (len > 0 && is_python_space(line[len - 1])) len--;
    /* " [title]" -> ". " (the output is never longer than the input) */
    char *a = malloc(len + 1), *b = malloc(len + 1);
    if (!a || !b) {
        free(a);
        free(b);
        return NULL;
    }
    size_t n = 0;
    for (size_t i = 0; i < len;) {
        if (len - i >= 8 && !memcmp(line + i, " [title]", 8)) {
            a[n++] = '.', a[n++] = ' ';
            i += 8;
        } else {
            a[n++] = line[i++];
        }
    }
    /* re.sub(r"\[.*?\]", "", text): each '[' up to the next ']' goes; a '[' without one stays */
    size_t m = 0;
    for (size_t i = 0; i < n;) {
        const char *close = a[i] == '[' ? memchr(a + i, ']', n - i) : NULL;
        if (close) i = (size_t)(close - a) + 1;
        else b[m++] = a[i++];
    }
    /* text.replace("  ", " "): one left-to-right pass over non-overlapping pairs */
    n = 0;
    for (size_t i = 0; i < m;) {
        if (i + 1 < m && b[i] == ' ' && b[i + 1] == ' ') {
            a[n++] = ' ';
            i += 2;
        } else {
            a[n++] = b[i++];
        }
    }
    a[n] = '\0';
    free(b);
    return a;
}

static bool parse_gold(const char *line, size_t len, int *gold) {
    if (len != 1 || line[0] < '0' || line[0] >= '0' + HELLASWAG_ENDINGS) return false;
    *gold = line[0] - '0';
    return true;
}

xlkv_status task_parse_hellaswag(task_parse *p, const char *text, size_t size) {
    size_t pos = 0;
    long line_no = 0;
    while (!task_full(p)) {
        const char *lines[HELLASWAG_LINES];
        size_t lens[HELLASWAG_LINES];
        long first = line_no + 1;
        int got = 0;
        while (got < HELLASWAG_LINES && task_next_line(text, size, &pos, &lines[got], &lens[got])) got++, line_no++;
        if (got == 0) break;
        if (got < HELLASWAG_LINES) {
            XLKV_TRY(task_bad_item(p, first, "truncated item: %d of its %d lines", got, HELLASWAG_LINES));
            break;
        }
        int gold = 0;
        if (lens[0] == 0) {
            XLKV_TRY(task_bad_item(p, first, "empty context line"));
            continue;
        }
        if (!parse_gold(lines[1], lens[1], &gold)) {
            XLKV_TRY(task_bad_item(p, first + 1, "gold index '%.*s' is not 0-%d", (int)(lens[1] < 40 ? lens[1] : 40),
                                   lines[1], HELLASWAG_ENDINGS - 1));
            continue;
        }
        int empty = -1;
        for (int e = 0; e < HELLASWAG_ENDINGS && empty < 0; e++)
            if (lens[2 + e] == 0) empty = e;
        if (empty >= 0) {
            XLKV_TRY(task_bad_item(p, first + 2 + empty, "empty ending %d", empty));
            continue;
        }
        xlkv_task_example *ex = task_new_example(p, HELLASWAG_ENDINGS, first);
        if (!ex) return XLKV_E_NOMEM;
        ex->gold = gold;
        char *context = preprocess(lines[0], lens[0]);
        if (!context) return xlkv_fail(XLKV_E_NOMEM, "%s:%ld: cannot copy the item", p->path, first);
        for (int e = 0; e < HELLASWAG_ENDINGS; e++) {
            char *ending = preprocess(lines[2 + e], lens[2 + e]);
            if (!ending) {
                free(context);
                return xlkv_fail(XLKV_E_NOMEM, "%s:%ld: cannot copy the item", p->path, first);
            }
            bool ok = task_set_choice(p, ex, e, context, "", ending);
            free(ending);
            if (!ok) {
                free(context);
                return XLKV_E_NOMEM;
            }
        }
        free(context);
    }
    return XLKV_OK;
}
