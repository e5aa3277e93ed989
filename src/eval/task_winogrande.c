/* eval/task_winogrande: WinoGrande jsonl {"context_options": [str, str], "continuation": str, "gold": int}.
 * Partial scoring, as lm-evaluation-harness does: the sentence is cut at the blank, each option completes the
 * context, and the shared continuation (the rest of the sentence) is scored after each; the best option wins. */
#include <cjson/cJSON.h>

#include "eval/task_parsers.h"

static xlkv_status parse_item(task_parse *p, const cJSON *obj, long line_no) {
    const char *why = NULL;
    int n_options = task_json_string_array(obj, "context_options", 2, &why);
    if (n_options < 0) return task_bad_item(p, line_no, "\"%s\" must be an array of at least 2 strings", why);
    const char *continuation = task_json_string(obj, "continuation", &why);
    if (!continuation) return task_bad_item(p, line_no, "missing or non-string \"%s\"", why);
    int gold = 0;
    if (!task_json_int(obj, "gold", &gold, &why)) return task_bad_item(p, line_no, "missing or non-integer \"%s\"", why);
    if (gold < 0 || gold >= n_options)
        return task_bad_item(p, line_no, "\"gold\" is %d, outside the %d options", gold, n_options);
    if (!continuation[0]) return task_bad_item(p, line_no, "empty \"continuation\"");
    xlkv_task_example *ex = task_new_example(p, n_options, line_no);
    if (!ex) return XLKV_E_NOMEM;
    ex->gold = gold;
    int c = 0;
    const cJSON *option;
    cJSON_ArrayForEach(option, cJSON_GetObjectItemCaseSensitive(obj, "context_options")) {
        if (!task_set_choice(p, ex, c++, option->valuestring, "", continuation)) return XLKV_E_NOMEM;
    }
    return XLKV_OK;
}

xlkv_status task_parse_winogrande(task_parse *p, const char *text, size_t size) {
    return task_parse_jsonl(p, text, size, parse_item);
}
