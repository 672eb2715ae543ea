/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* Unit tests for lib/cmek-util.c string hygiene: cmek_string_has_cc(), cmek_cescape(), and the
 * API-side cmek_json_find_cc() (lib/cmek-varlink.c). */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <cmocka.h>

#include "cmek-util.h"
#include "cmek-varlink.h"

static void test_has_cc(void **state) {
        assert_false(cmek_string_has_cc(""));
        assert_false(cmek_string_has_cc("/dev/disk/by-uuid/abc-123_x.y"));
        assert_false(cmek_string_has_cc("caf\xc3\xa9 \xe2\x82\xac")); /* é € */
        assert_false(cmek_string_has_cc(NULL));
        assert_true(cmek_string_has_cc("a\x1b[2Jb"));
        assert_true(cmek_string_has_cc("a\nb"));
        assert_true(cmek_string_has_cc("a\tb"));
        assert_true(cmek_string_has_cc("a\x7f"));
        assert_true(cmek_string_has_cc("a\xc2\x9b" "31m")); /* U+009B, the 8-bit CSI */
        assert_true(cmek_string_has_cc("\x01"));
}

static void check_escape(const char *in, const char *want) {
        char *e = cmek_cescape(in);
        assert_non_null(e);
        assert_string_equal(e, want);
        assert_false(cmek_string_has_cc(e));
        free(e);
}

static void test_cescape(void **state) {
        check_escape("plain/path-1.img", "plain/path-1.img");
        check_escape("a\x1b[2Jb", "a\\x1b[2Jb");
        check_escape("l1\nl2\r\t\a\b\f\v", "l1\\nl2\\r\\t\\a\\b\\f\\v");
        check_escape("back\\slash", "back\\\\slash");
        check_escape("del\x7f", "del\\x7f");
        check_escape("csi\xc2\x9b" "1m", "csi\\xc2\\x9b1m");
        check_escape("caf\xc3\xa9", "caf\xc3\xa9");                 /* valid UTF-8 kept */
        check_escape("bad\xff\xc3", "bad\\xff\\xc3");               /* invalid bytes escaped */
        check_escape("\xc0\xaf", "\\xc0\\xaf");                     /* overlong '/' */
        check_escape("\xed\xa0\x80", "\\xed\\xa0\\x80");            /* surrogate */
        assert_null(cmek_cescape(NULL));
}

static void test_cescape_buf_truncates(void **state) {
        char buf[8];
        /* never cuts an escape in half, always NUL-terminated */
        assert_int_equal(cmek_cescape_buf("ab\x1b\x1b", buf, sizeof(buf)), 6);
        assert_string_equal(buf, "ab\\x1b");
        assert_int_equal(cmek_cescape_buf("x", buf, 1), 0);
        assert_string_equal(buf, "");
}

static void test_json_find_cc(void **state) {
        json_object *o = json_tokener_parse("{\"name\":\"ok\",\"length\":256,\"token\":{\"x\":\"\\u001b\"}}");
        assert_null(cmek_json_find_cc(o)); /* nested objects are the handler's business */
        json_object_put(o);
        o = json_tokener_parse("{\"name\":\"ok\",\"path\":\"/tmp/a\\u001b[31m\"}");
        assert_string_equal(cmek_json_find_cc(o), "path");
        json_object_put(o);
        o = json_tokener_parse("{\"paths\":[\"/ok\",\"/bad\\n\"]}");
        assert_string_equal(cmek_json_find_cc(o), "paths");
        json_object_put(o);
        o = json_tokener_parse("{\"name\":\"x\\u0085y\"}"); /* U+0085 NEL, a C1 control */
        assert_string_equal(cmek_json_find_cc(o), "name");
        json_object_put(o);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_has_cc),
                cmocka_unit_test(test_cescape),
                cmocka_unit_test(test_cescape_buf_truncates),
                cmocka_unit_test(test_json_find_cc),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
