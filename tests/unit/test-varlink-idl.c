/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* Unit tests for daemon/varlink-idl.c: the IDL text made from a declaration, the parameter check
 * (missing, mistyped, unknown, enum, arrays, nested types, null), method and error lookup. */
#include <errno.h>
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "cmek-util.h"
#include "varlink-idl.h"

static int handler(Manager *m, Call *c, json_object *params) { return 0; }

static const VarlinkSymbol symbols[] = {
        { VARLINK_TYPEDEF, "Pair", .fields = VARLINK_FIELDS(V_STRING("a"), V_INT("b", V_OPT)) },
        { VARLINK_METHOD, "Do", .handler = handler, .doc = "Does it.",
          .fields = VARLINK_FIELDS(V_STRING("name"), V_INT("n", V_OPT), V_BOOL("flag", V_OPT),
                                   V_FLOAT("ratio", V_OPT), V_OBJECT("blob", V_OPT),
                                   V_STRING("list", V_OPT, V_ARRAY), V_TYPE("pair", "Pair", V_OPT),
                                   V_ENUM("mode", "fast", "slow")),
          .out = VARLINK_FIELDS(V_TYPE("pairs", "Pair", V_ARRAY)) },
        { VARLINK_METHOD, "Secret", .handler = handler, .test_only = true },
        { VARLINK_ERROR, "Oops", .fields = VARLINK_FIELDS(V_STRING("what", V_OPT), V_STRING("message")) },
        {}
};

static const Interface iface = { .name = "io.example.test", .doc = "A test.\n\nTwo paragraphs.", .symbols = symbols };
static const Interface *const ifaces[] = { &iface };

static void test_format(void **state) {
        char *t = varlink_idl_format(&iface, false);
        assert_non_null(t);
        assert_string_equal(t,
                "# A test.\n#\n# Two paragraphs.\n"
                "interface io.example.test\n"
                "\n"
                "type Pair (a: string, b: ?int)\n"
                "\n"
                "# Does it.\n"
                "method Do(\n"
                "  name: string,\n"
                "  n: ?int,\n"
                "  flag: ?bool,\n"
                "  ratio: ?float,\n"
                "  blob: ?object,\n"
                "  list: ?[]string,\n"
                "  pair: ?Pair,\n"
                "  mode: (fast, slow)\n"
                ") -> (pairs: []Pair)\n"
                "\n"
                "error Oops (what: ?string, message: string)\n");
        free(t);
        t = varlink_idl_format(&iface, true);
        assert_non_null(strstr(t, "\nmethod Secret() -> ()\n"));
        free(t);
}

static int check(const char *json, const char *want_param, const char *want_text) {
        json_object *o = json ? json_tokener_parse(json) : NULL;
        const VarlinkSymbol *m = &symbols[1];
        char param[256] = "", text[512] = "";
        int r;

        r = varlink_check_params(&iface, m, o, param, sizeof(param), text, sizeof(text));
        if (want_param) {
                assert_int_equal(r, -EINVAL);
                assert_string_equal(param, want_param);
                if (want_text && !strstr(text, want_text))
                        fail_msg("message '%s' lacks '%s'", text, want_text);
        } else if (r < 0)
                fail_msg("%s refused: %s: %s", json, param, text);
        json_object_put(o);
        return r;
}

static void test_check(void **state) {
        check("{\"name\":\"x\",\"mode\":\"fast\"}", NULL, NULL);
        check("{\"name\":\"x\",\"mode\":\"slow\",\"n\":null,\"flag\":true,\"ratio\":1,\"blob\":{\"z\":1},"
              "\"list\":[\"a\",\"b\"],\"pair\":{\"a\":\"q\",\"b\":2}}", NULL, NULL);
        check("{\"name\":\"x\",\"mode\":\"fast\",\"ratio\":0.5}", NULL, NULL);
        check(NULL, "name", "\"name\" must be a string");
        check("{}", "name", "must be a string");
        check("{\"name\":null,\"mode\":\"fast\"}", "name", "must be a string");
        check("{\"name\":5,\"mode\":\"fast\"}", "name", "must be a string");
        check("{\"name\":\"x\",\"mode\":\"fast\",\"n\":\"5\"}", "n", "must be an integer");
        check("{\"name\":\"x\",\"mode\":\"fast\",\"n\":1.5}", "n", "must be an integer");
        check("{\"name\":\"x\",\"mode\":\"fast\",\"flag\":1}", "flag", "true or false");
        check("{\"name\":\"x\",\"mode\":\"fast\",\"blob\":[]}", "blob", "must be an object");
        check("{\"name\":\"x\",\"mode\":\"medium\"}", "mode", "\"fast\", \"slow\"");
        check("{\"name\":\"x\",\"mode\":\"fast\",\"list\":\"a\"}", "list", "array of strings");
        check("{\"name\":\"x\",\"mode\":\"fast\",\"list\":[\"a\",2]}", "list", "array of strings");
        check("{\"name\":\"x\",\"mode\":\"fast\",\"extra\":1}", "extra", "not a parameter");
        check("{\"name\":\"x\",\"mode\":\"fast\",\"pair\":{\"b\":1}}", "pair.a", "must be a string");
        check("{\"name\":\"x\",\"mode\":\"fast\",\"pair\":{\"a\":\"q\",\"c\":1}}", "pair.c", "not a parameter");
}

static void test_lookup(void **state) {
        const Interface *found = NULL;
        bool known;

        assert_ptr_equal(varlink_find_method(ifaces, 1, "io.example.test.Do", false, &found, &known), &symbols[1]);
        assert_true(known);
        assert_ptr_equal(found, &iface);
        assert_null(varlink_find_method(ifaces, 1, "io.example.test.Secret", false, &found, &known));
        assert_true(known);
        assert_non_null(varlink_find_method(ifaces, 1, "io.example.test.Secret", true, &found, &known));
        assert_null(varlink_find_method(ifaces, 1, "io.example.test.Pair", true, &found, &known));
        assert_null(varlink_find_method(ifaces, 1, "io.example.other.Do", true, &found, &known));
        assert_false(known);
        assert_null(varlink_find_method(ifaces, 1, "nodot", true, &found, &known));

        const VarlinkSymbol *e = varlink_find_error(ifaces, 1, "io.example.test.Oops");
        const char *field = NULL;
        assert_ptr_equal(e, &symbols[3]);
        assert_null(varlink_find_error(ifaces, 1, "io.example.test.Do"));
        json_object *p = json_tokener_parse("{\"message\":\"m\",\"what\":\"w\"}");
        assert_true(varlink_error_params_declared(e, p, &field));
        json_object_put(p);
        p = json_tokener_parse("{\"message\":\"m\",\"who\":\"w\"}");
        assert_false(varlink_error_params_declared(e, p, &field));
        assert_string_equal(field, "who");
        json_object_put(p);
        p = json_tokener_parse("{\"what\":\"w\"}");
        assert_false(varlink_error_params_declared(e, p, &field));
        assert_string_equal(field, "message");
        json_object_put(p);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_format),
                cmocka_unit_test(test_check),
                cmocka_unit_test(test_lookup),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
