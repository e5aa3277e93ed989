/* eval/task_mc_jsonl: multiple-choice jsonl, one item per line: {"query": str, "choices": [str, ...], "gold": int}
 * (piqa, arc_easy, arc_challenge, boolq, openbook_qa, copa, siqa, commonsense_qa). Each choice's context is the
 * query followed by the task's query_suffix; its continuation is the choice. Blank lines are ignored. */
#include <cjson/cJSON.h>

#include "eval/task_parsers.h"

static xlkv_status parse_item(task_parse *p, const cJSON *obj, long line_no) {
    const char *why = NULL;
    const char *query = task_json_string(obj, "query", &why);
    if (!query) return task_bad_item(p, line_no, "missing or non-string \"%s\"", why);
    int n_choices = task_json_string_array(obj, "choices", 2, &why);
    if (n_choices < 0) return task_bad_item(p, line_no, "\"%s\" must be an array of at least 2 strings", why);
    int gold = 0;
    if (!task_json_int(obj, "gold", &gold, &why)) return task_bad_item(p, line_no, "missing or non-integer \"%s\"", why);
    if (gold < 0 || gold >= n_choices)
        return task_bad_item(p, line_no, "\"gold\" is %d, outside the %d choices", gold, n_choices);
    xlkv_task_example *ex = task_new_example(p, n_choices, line_no);
    if (!ex) return XLKV_E_NOMEM;
    ex->gold = gold;
    int c = 0;
    const cJSON *choice;
    cJSON_ArrayForEach(choice, cJSON_GetObjectItemCaseSensitive(obj, "choices")) {
        if (!task_set_choice(p, ex, c++, query, p->task->query_suffix, choice->valuestring)) return XLKV_E_NOMEM;
    }
    return XLKV_OK;
}

xlkv_status task_parse_mc_jsonl(task_parse *p, const char *text, size_t size) {
    return task_parse_jsonl(p, text, size, parse_item);
}
