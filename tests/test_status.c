/* tests/test_status: the error channel records messages and prefixes them. */
#include <string.h>

#include "core/status.h"
#include "testutil.h"

static void fail_records_message(void **state) {
    (void)state;
    assert_int_equal(xlkv_fail(XLKV_E_FORMAT, "%s: bad %d", "file.bin", 7), XLKV_E_FORMAT);
    assert_string_equal(xlkv_last_error(), "file.bin: bad 7");
    xlkv_error_prefix("loading %s", "model");
    assert_string_equal(xlkv_last_error(), "loading model: file.bin: bad 7");
    assert_string_equal(xlkv_strerror(XLKV_E_NOMEM), "out of memory");
    xlkv_clear_error();
    assert_string_equal(xlkv_last_error(), "");
}

int main(void) {
    const struct CMUnitTest tests[] = {cmocka_unit_test(fail_records_message)};
    return cmocka_run_group_tests(tests, NULL, NULL);
}
