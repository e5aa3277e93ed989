/* tests/test_eval_parsers: every task parser on its real file in ../shared/data/eval (row counts of the README there;
 * skipped with a message when absent), the Gutenberg .xz shard (books split at 0x1E lines), and malformed data in
 * temporary files: errors name file:line and why; --on-error skip counts them and keeps the good items. */
#include <bzlib.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "eval/compressed_file.h"
#include "eval/tasks.h"
#include "eval/text_corpus.h"
#include "testutil.h"

static void test_real_files_have_the_readme_row_counts(void **state) {
    (void)state;
    int n = 0;
    const xlkv_task_info *tasks = xlkv_task_list(&n);
    assert_int_equal(n, 11);
    int checked = 0;
    for (int i = 0; i < n; i++) {
        char relative[128];
        snprintf(relative, sizeof relative, "eval/%s", tasks[i].file);
        char *path = tu_shared_data(relative);
        if (!path) continue;
        xlkv_task_data data = {0};
        TU_ASSERT_OK(xlkv_task_load(&tasks[i], path, XLKV_ON_ERROR_STOP, 0, &data));
        if (data.n_examples != tasks[i].rows)
            fail_msg("%s: %d items, the data README says %d", tasks[i].name, data.n_examples, tasks[i].rows);
        assert_int_equal(data.n_skipped, 0);
        for (int e = 0; e < data.n_examples; e++) {
            const xlkv_task_example *ex = &data.examples[e];
            assert_true(ex->gold >= 0 && ex->gold < ex->n_choices);
            for (int c = 0; c < ex->n_choices; c++) assert_true(ex->continuations[c][0] != '\0');
        }
        printf("  %-15s %5d items (first at line %ld: %d choices)\n", tasks[i].name, data.n_examples,
               data.examples[0].line, data.examples[0].n_choices);
        xlkv_task_data_free(&data);
        free(path);
        checked++;
    }
    if (checked == 0) skip();
}

static void test_query_suffix_and_limit(void **state) {
    (void)state;
    const char *jsonl = "{\"query\": \"Question: Why?\", \"choices\": [\"a\", \"b c\"], \"gold\": 1}\n"
                        "\n"
                        "{\"query\": \"Q2\", \"choices\": [\"x\", \"y\", \"z\"], \"gold\": 0}\n";
    char *path = tu_write_temp(".jsonl", jsonl, strlen(jsonl));
    xlkv_task_data data = {0};
    TU_ASSERT_OK(xlkv_task_load(xlkv_task_find("arc_easy"), path, XLKV_ON_ERROR_STOP, 0, &data));
    assert_int_equal(data.n_examples, 2);
    assert_string_equal(data.examples[0].contexts[1], "Question: Why?\nAnswer:");
    assert_string_equal(data.examples[0].continuations[1], "b c");
    assert_int_equal(data.examples[0].gold, 1);
    assert_int_equal(data.examples[1].line, 3);
    assert_int_equal(data.examples[1].n_choices, 3);
    xlkv_task_data_free(&data);
    TU_ASSERT_OK(xlkv_task_load(xlkv_task_find("arc_easy"), path, XLKV_ON_ERROR_STOP, 1, &data));
    assert_int_equal(data.n_examples, 1);
    xlkv_task_data_free(&data);
    remove(path);
    free(path);
}

typedef struct bad_case {
    const char *task;
    const char *text;
    const char *message; /* after "path:" */
} bad_case;

static char *write_bz2(const char *text) {
    unsigned int cap = (unsigned int)strlen(text) * 2 + 1024;
    char *packed = malloc(cap);
    assert_int_equal(BZ2_bzBuffToBuffCompress(packed, &cap, (char *)text, (unsigned int)strlen(text), 9, 0, 0), BZ_OK);
    char *path = tu_write_temp(".txt.bz2", packed, cap);
    free(packed);
    return path;
}

static void test_malformed_lines(void **state) {
    (void)state;
    const char *good_mc = "{\"query\": \"q\", \"choices\": [\"a\", \"b\"], \"gold\": 0}\n";
    const char *good_hs = "Label: ctx\n0\ne0\ne1\ne2\ne3\n";
    const bad_case cases[] = {
        {"piqa", "{\"query\": \"q\", \"choices\": [\"a\", \"b\"], \"gold\": 0\n", ":1: not valid JSON"},
        {"piqa", "[1, 2]\n", ":1: not a JSON object"},
        {"piqa", "{\"choices\": [\"a\", \"b\"], \"gold\": 0}\n", ":1: missing or non-string \"query\""},
        {"piqa", "{\"query\": \"q\", \"choices\": [\"a\"], \"gold\": 0}\n", ":1: \"choices\" must be an array"},
        {"piqa", "{\"query\": \"q\", \"choices\": [\"a\", 3], \"gold\": 0}\n", ":1: \"choices\" must be an array"},
        {"piqa", "{\"query\": \"q\", \"choices\": [\"a\", \"b\"], \"gold\": 2}\n", ":1: \"gold\" is 2, outside"},
        {"piqa", "{\"query\": \"q\", \"choices\": [\"a\", \"b\"], \"gold\": 0.5}\n", ":1: missing or non-integer \"gold\""},
        {"winogrande", "{\"context_options\": [\"a\", \"b\"], \"gold\": 0}\n", ":1: missing or non-string \"continuation\""},
        {"winogrande", "{\"context_options\": [\"a\", \"b\"], \"continuation\": \"\", \"gold\": 0}\n",
         ":1: empty \"continuation\""},
        {"lambada_openai", "{\"context\": \"a b\"}\n", ":1: missing or non-string \"continuation\""},
        {"hellaswag", "Label: ctx\n7\ne0\ne1\ne2\ne3\n", ":2: gold index '7' is not 0-3"},
        {"hellaswag", "Label: ctx\n1\ne0\n\ne2\ne3\n", ":4: empty ending 1"},
        {"hellaswag", "Label: ctx\n1\ne0\ne1\n", ":1: truncated item: 4 of its 6 lines"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const xlkv_task_info *task = xlkv_task_find(cases[i].task);
        bool hellaswag = task->format == XLKV_TASK_HELLASWAG;
        const char *good = hellaswag ? good_hs : good_mc;
        if (task->format == XLKV_TASK_WINOGRANDE)
            good = "{\"context_options\": [\"a\", \"b\"], \"continuation\": \"c\", \"gold\": 1}\n";
        if (task->format == XLKV_TASK_LAMBADA) good = "{\"context\": \"a b\", \"continuation\": \"c\"}\n";
        /* stop: the bad item first, so the line numbers are the case's own */
        char *path = hellaswag ? write_bz2(cases[i].text) : tu_write_temp(".jsonl", cases[i].text, strlen(cases[i].text));
        char expected[256];
        snprintf(expected, sizeof expected, "%s%s", path, cases[i].message);
        xlkv_task_data data = {0};
        TU_ASSERT_FAILS(xlkv_task_load(task, path, XLKV_ON_ERROR_STOP, 0, &data), XLKV_E_FORMAT, expected);
        remove(path);
        free(path);
        /* skip: good, bad, good (the truncated hellaswag item can only come last) */
        bool truncated = strstr(cases[i].message, "truncated") != NULL;
        size_t len = 2 * strlen(good) + strlen(cases[i].text) + 1;
        char *mixed = malloc(len);
        snprintf(mixed, len, "%s%s%s", good, truncated ? good : cases[i].text, truncated ? cases[i].text : good);
        path = hellaswag ? write_bz2(mixed) : tu_write_temp(".jsonl", mixed, strlen(mixed));
        TU_ASSERT_OK(xlkv_task_load(task, path, XLKV_ON_ERROR_SKIP, 0, &data));
        assert_int_equal(data.n_examples, 2);
        assert_int_equal(data.n_skipped, 1);
        assert_non_null(data.first_skipped);
        assert_non_null(strstr(data.first_skipped, path));
        xlkv_task_data_free(&data);
        /* stop on the same file: the error names the bad item's line in the mixed file */
        TU_ASSERT_FAILS(xlkv_task_load(task, path, XLKV_ON_ERROR_STOP, 0, &data), XLKV_E_FORMAT, path);
        remove(path);
        free(path);
        free(mixed);
    }
    /* a file with nothing usable, and one that is absent */
    char *path = tu_write_temp(".jsonl", "not json\n", 9);
    xlkv_task_data data = {0};
    TU_ASSERT_FAILS(xlkv_task_load(xlkv_task_find("copa"), path, XLKV_ON_ERROR_SKIP, 0, &data), XLKV_E_FORMAT,
                    "no well-formed items (1 skipped)");
    remove(path);
    free(path);
    TU_ASSERT_FAILS(xlkv_task_load(xlkv_task_find("copa"), "/nonexistent/copa.jsonl", XLKV_ON_ERROR_STOP, 0, &data),
                    XLKV_E_IO, "/nonexistent/copa.jsonl");
}

static void test_corrupt_compressed_files(void **state) {
    (void)state;
    char *data = NULL;
    size_t size = 0;
    char *path = tu_write_temp(".txt.xz", "not xz at all", 13);
    TU_ASSERT_FAILS(xlkv_read_data_file(path, &data, &size), XLKV_E_FORMAT, "not a valid .xz file");
    remove(path);
    free(path);
    path = tu_write_temp(".txt.bz2", "BZh9 not bz2", 12);
    TU_ASSERT_FAILS(xlkv_read_data_file(path, &data, &size), XLKV_E_FORMAT, "not a valid .bz2 file");
    remove(path);
    free(path);
    /* a truncated bz2 stream */
    unsigned int cap = 4096;
    char packed[4096];
    const char *text = "some text that compresses\n";
    assert_int_equal(BZ2_bzBuffToBuffCompress(packed, &cap, (char *)text, (unsigned int)strlen(text), 9, 0, 0), BZ_OK);
    path = tu_write_temp(".bz2", packed, cap / 2);
    TU_ASSERT_FAILS(xlkv_read_data_file(path, &data, &size), XLKV_E_FORMAT, "not a valid .bz2 file");
    remove(path);
    free(path);
}

static void test_gutenberg_valid_books(void **state) {
    (void)state;
    char *path = tu_shared_data("text/gutenberg/gutenberg-valid.txt.xz");
    if (!path) skip();
    char *text = NULL, **docs = NULL;
    size_t size = 0;
    int n = 0;
    TU_ASSERT_OK(xlkv_read_data_file(path, &text, &size));
    assert_true(size > 10 * 1000 * 1000);
    TU_ASSERT_OK(xlkv_eval_split_documents(text, &docs, &n));
    /* every book ends with a separator line; gutenberg-manifest.tsv lists 44 books in the valid split */
    printf("  gutenberg-valid: %zu bytes, %d books\n", size, n);
    assert_int_equal(n, 44);
    for (int i = 0; i < n; i++) assert_null(strchr(docs[i], '\x1e'));
    free(docs);
    free(text);
    free(path);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_real_files_have_the_readme_row_counts),
        cmocka_unit_test(test_query_suffix_and_limit),
        cmocka_unit_test(test_malformed_lines),
        cmocka_unit_test(test_corrupt_compressed_files),
        cmocka_unit_test(test_gutenberg_valid_books),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
