/* eval/task_lambada: LAMBADA jsonl {"context": str, "continuation": str}: one choice, the passage's final word after
 * the rest of the passage (scored for greedy accuracy and perplexity). */
#include <cjson/cJSON.h>

#include "eval/task_parsers.h"

static xlkv_status parse_item(task_parse *p, const cJSON *obj, long line_no) {
    const char *why = NULL;
    const char *context = task_json_string(obj, "context", &why);
    if (!context) return task_bad_item(p, line_no, "missing or non-string \"%s\"", why);
    const char *continuation = task_json_string(obj, "continuation", &why);
    if (!continuation) return task_bad_item(p, line_no, "missing or non-string \"%s\"", why);
    if (!continuation[0]) return task_bad_item(p, line_no, "empty \"continuation\"");
    xlkv_task_example *ex = task_new_example(p, 1, line_no);
    if (!ex) return XLKV_E_NOMEM;
    return task_set_choice(p, ex, 0, context, "", continuation) ? XLKV_OK : XLKV_E_NOMEM;
}

xlkv_status task_parse_lambada(task_parse *p, const char *text, size_t size) {
    return task_parse_jsonl(p, text, size, parse_item);
}
