/* tests/test_step_profile: the GPU trainer's step profile bookkeeping (train/step_profile), which needs no GPU:
 * category names, accumulation over steps, the sorted order, the table and the JSON summary, and bad intervals. */
#define _GNU_SOURCE
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "train/step_profile.h"
#include "testutil.h"

static void every_category_has_a_distinct_name(void **state) {
    (void)state;
    for (int c = 0; c < XLKV_STEP_N_CATEGORIES; c++) {
        const char *name = xlkv_step_category_name(c);
        assert_non_null(name);
        assert_true(strlen(name) > 0);
        for (int d = 0; d < c; d++) assert_string_not_equal(name, xlkv_step_category_name(d));
    }
    assert_null(xlkv_step_category_name(-1));
    assert_null(xlkv_step_category_name(XLKV_STEP_N_CATEGORIES));
    assert_string_equal(xlkv_step_category_name(XLKV_STEP_LINEAR_BACKWARD_DW), "linear_backward_dw");
}

/* two steps: attention 6 + 4 ms, linear dx 1 + 1 + 2 ms, adamw 0.5 + 0.5 ms, rope 0 ms (ran), the rest never ran */
static void fill_two_steps(xlkv_step_profile *p) {
    xlkv_step_profile_reset(p);
    const int c1[] = {XLKV_STEP_ATTENTION_FORWARD, XLKV_STEP_LINEAR_BACKWARD_DX, XLKV_STEP_ROPE,
                      XLKV_STEP_LINEAR_BACKWARD_DX, XLKV_STEP_ADAMW};
    const float m1[] = {6.0f, 1.0f, 0.0f, 1.0f, 0.5f};
    const int c2[] = {XLKV_STEP_ATTENTION_FORWARD, XLKV_STEP_LINEAR_BACKWARD_DX, XLKV_STEP_ADAMW};
    const float m2[] = {4.0f, 2.0f, 0.5f};
    assert_int_equal(xlkv_step_profile_add_step(p, c1, m1, 5), XLKV_OK);
    assert_int_equal(xlkv_step_profile_add_step(p, c2, m2, 3), XLKV_OK);
}

static void steps_accumulate_per_category(void **state) {
    (void)state;
    xlkv_step_profile p;
    fill_two_steps(&p);
    assert_int_equal(p.steps, 2);
    assert_int_equal(p.intervals[XLKV_STEP_LINEAR_BACKWARD_DX], 3);
    assert_int_equal(p.intervals[XLKV_STEP_ROPE], 1);
    assert_int_equal(p.intervals[XLKV_STEP_SWIGLU], 0);
    assert_float_equal(xlkv_step_profile_ms_per_step(&p, XLKV_STEP_ATTENTION_FORWARD), 5.0, 1e-9);
    assert_float_equal(xlkv_step_profile_ms_per_step(&p, XLKV_STEP_LINEAR_BACKWARD_DX), 2.0, 1e-9);
    assert_float_equal(xlkv_step_profile_ms_per_step(&p, XLKV_STEP_ADAMW), 0.5, 1e-9);
    assert_float_equal(xlkv_step_profile_step_ms(&p), 7.5, 1e-9);
    xlkv_step_profile_reset(&p);
    assert_int_equal(p.steps, 0);
    assert_float_equal(xlkv_step_profile_step_ms(&p), 0.0, 0.0);
}

static void sorted_by_time_then_ran_then_enum_order(void **state) {
    (void)state;
    xlkv_step_profile p;
    fill_two_steps(&p);
    xlkv_step_category order[XLKV_STEP_N_CATEGORIES];
    assert_int_equal(xlkv_step_profile_sorted(&p, order), 4);
    assert_int_equal(order[0], XLKV_STEP_ATTENTION_FORWARD);
    assert_int_equal(order[1], XLKV_STEP_LINEAR_BACKWARD_DX);
    assert_int_equal(order[2], XLKV_STEP_ADAMW);
    assert_int_equal(order[3], XLKV_STEP_ROPE); /* ran, 0 ms: before those that never ran */
    int seen[XLKV_STEP_N_CATEGORIES] = {0};
    for (int i = 0; i < XLKV_STEP_N_CATEGORIES; i++) seen[order[i]]++;
    for (int c = 0; c < XLKV_STEP_N_CATEGORIES; c++) assert_int_equal(seen[c], 1); /* a permutation */
    for (int i = 5; i < XLKV_STEP_N_CATEGORIES; i++) assert_true(order[i - 1] < order[i]); /* never ran: enum order */
}

static void bad_intervals_are_refused_and_add_nothing(void **state) {
    (void)state;
    xlkv_step_profile p;
    fill_two_steps(&p);
    const int out_of_range[] = {XLKV_STEP_ADAMW, XLKV_STEP_N_CATEGORIES};
    const float ok_ms[] = {1.0f, 1.0f};
    assert_int_equal(xlkv_step_profile_add_step(&p, out_of_range, ok_ms, 2), XLKV_E_INVALID);
    assert_non_null(strstr(xlkv_last_error(), "interval 1 has category 16"));
    const int negative_category[] = {-3};
    assert_int_equal(xlkv_step_profile_add_step(&p, negative_category, ok_ms, 1), XLKV_E_INVALID);
    const int cats[] = {XLKV_STEP_ADAMW, XLKV_STEP_ROPE};
    const float negative_ms[] = {1.0f, -0.5f};
    assert_int_equal(xlkv_step_profile_add_step(&p, cats, negative_ms, 2), XLKV_E_INVALID);
    assert_non_null(strstr(xlkv_last_error(), "interval 1 (rope) lasted -0.5 ms"));
    const float nan_ms[] = {NAN, 1.0f};
    assert_int_equal(xlkv_step_profile_add_step(&p, cats, nan_ms, 2), XLKV_E_INVALID);
    assert_int_equal(xlkv_step_profile_add_step(&p, cats, ok_ms, -1), XLKV_E_INVALID);
    assert_int_equal(p.steps, 2); /* unchanged */
    assert_float_equal(xlkv_step_profile_ms_per_step(&p, XLKV_STEP_ADAMW), 0.5, 1e-9);
}

static void table_lists_categories_that_ran_sorted_with_percentages(void **state) {
    (void)state;
    xlkv_step_profile p;
    fill_two_steps(&p);
    char *text = NULL;
    size_t size = 0;
    FILE *f = open_memstream(&text, &size);
    assert_non_null(f);
    xlkv_step_profile_print(&p, f);
    fclose(f);
    const char *attention = strstr(text, "attention_forward"), *dx = strstr(text, "linear_backward_dx");
    const char *adamw = strstr(text, "adamw"), *rope = strstr(text, "rope"), *total = strstr(text, "total");
    assert_true(attention && dx && adamw && rope && total);
    assert_true(attention < dx && dx < adamw && adamw < rope && rope < total);
    assert_null(strstr(text, "swiglu")); /* never ran */
    assert_non_null(strstr(text, "5.000 ms   66.7%"));
    assert_non_null(strstr(text, "2.000 ms   26.7%"));
    assert_non_null(strstr(text, "7.500 ms"));
    assert_non_null(strstr(text, "2 profiled steps"));
    free(text);
}

static void json_summary_parses_with_sorted_categories(void **state) {
    (void)state;
    xlkv_step_profile p;
    fill_two_steps(&p);
    char *text = xlkv_step_profile_to_json(&p);
    assert_non_null(text);
    cJSON *root = cJSON_Parse(text);
    assert_non_null(root);
    assert_float_equal(cJSON_GetObjectItem(root, "steps")->valuedouble, 2.0, 0.0);
    assert_float_equal(cJSON_GetObjectItem(root, "step_ms")->valuedouble, 7.5, 1e-9);
    const cJSON *ms = cJSON_GetObjectItem(root, "ms_per_step"), *percent = cJSON_GetObjectItem(root, "percent");
    assert_int_equal(cJSON_GetArraySize(ms), 4);
    assert_string_equal(ms->child->string, "attention_forward");
    assert_string_equal(ms->child->next->string, "linear_backward_dx");
    assert_float_equal(cJSON_GetObjectItem(ms, "adamw")->valuedouble, 0.5, 1e-9);
    assert_float_equal(cJSON_GetObjectItem(percent, "attention_forward")->valuedouble, 66.67, 1e-9);
    double sum = 0.0;
    for (const cJSON *c = percent->child; c; c = c->next) sum += c->valuedouble;
    assert_float_equal(sum, 100.0, 0.02);
    cJSON_Delete(root);
    free(text);
    xlkv_step_profile empty;
    xlkv_step_profile_reset(&empty);
    text = xlkv_step_profile_to_json(&empty);
    assert_string_equal(text, "{\"steps\":0,\"step_ms\":0,\"ms_per_step\":{},\"percent\":{}}");
    free(text);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(every_category_has_a_distinct_name),
        cmocka_unit_test(steps_accumulate_per_category),
        cmocka_unit_test(sorted_by_time_then_ran_then_enum_order),
        cmocka_unit_test(bad_intervals_are_refused_and_add_nothing),
        cmocka_unit_test(table_lists_categories_that_ran_sorted_with_percentages),
        cmocka_unit_test(json_summary_parses_with_sorted_categories),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
