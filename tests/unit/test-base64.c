/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* Unit tests for lib/cmek-base64.c: the RFC 4648 §10 vectors both ways, the one strict decoding
 * rule (padding, alphabet, whitespace, trailing bits), size limits and the secret decoder. */
#include <errno.h>
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <cmocka.h>

#include "cmek-base64.h"
#include "cmek-secmem.h"

static const struct { const char *plain, *encoded; } rfc4648[] = {
        { "", "" },
        { "f", "Zg==" },
        { "fo", "Zm8=" },
        { "foo", "Zm9v" },
        { "foob", "Zm9vYg==" },
        { "fooba", "Zm9vYmE=" },
        { "foobar", "Zm9vYmFy" },
};

static void test_rfc4648_vectors(void **state) {
        char out[16], buf[16];

        for (size_t i = 0; i < sizeof(rfc4648) / sizeof(rfc4648[0]); i++) {
                size_t n = strlen(rfc4648[i].plain);
                char *s;

                assert_int_equal(cmek_base64_encoded_size(n), strlen(rfc4648[i].encoded));
                assert_int_equal(cmek_base64_encode_to(out, rfc4648[i].plain, n), strlen(rfc4648[i].encoded));
                assert_string_equal(out, rfc4648[i].encoded);
                s = cmek_base64_encode(rfc4648[i].plain, n);
                assert_string_equal(s, rfc4648[i].encoded);
                free(s);
                s = cmek_base64_encode_secure(rfc4648[i].plain, n);
                assert_string_equal(s, rfc4648[i].encoded);
                cmek_secure_free(s);

                memset(buf, 0x55, sizeof(buf));
                assert_int_equal(cmek_base64_decode_to(rfc4648[i].encoded, buf, sizeof(buf)), (ssize_t) n);
                assert_memory_equal(buf, rfc4648[i].plain, n);
                /* exactly the size it decodes to is enough */
                assert_int_equal(cmek_base64_decode_to(rfc4648[i].encoded, buf, n), (ssize_t) n);
                if (n > 0) {
                        assert_int_equal(cmek_base64_decode_to(rfc4648[i].encoded, buf, n - 1), -ENOBUFS);
                        assert_int_equal(cmek_base64_decode_exact(rfc4648[i].encoded, buf, n - 1), -EINVAL);
                }
                memset(buf, 0, sizeof(buf));
                assert_int_equal(cmek_base64_decode_exact(rfc4648[i].encoded, buf, n), 0);
                assert_memory_equal(buf, rfc4648[i].plain, n);
                assert_int_equal(cmek_base64_decode_exact(rfc4648[i].encoded, buf, n + 1), -EINVAL);
        }
}

static void test_round_trip_all_bytes(void **state) {
        uint8_t in[256], back[256];
        char enc[4 * 86 + 1];

        for (size_t i = 0; i < sizeof(in); i++)
                in[i] = (uint8_t) (255 - i);
        for (size_t n = 0; n <= sizeof(in); n++) {
                cmek_base64_encode_to(enc, in, n);
                assert_int_equal(cmek_base64_decode_to(enc, back, sizeof(back)), (ssize_t) n);
                assert_memory_equal(back, in, n);
        }
        /* the whole alphabet, '+' and '/' included */
        cmek_base64_encode_to(enc, (const uint8_t[]) { 0xfb, 0xff, 0xbf }, 3);
        assert_string_equal(enc, "+/+/");
}

static void test_rejected(void **state) {
        static const char *const bad[] = {
                "Zg", "Zg=", "Zm8", "Zm9vY",            /* missing padding, length not a multiple of 4 */
                "Zg===", "====", "Z===", "=Zg=", "Zg=a", "Z=g=", "Zm==Zm8=", /* padding elsewhere than at the end */
                "Zh==", "Zm9=",                          /* bits after the last byte: one spelling per value */
                " Zm9v", "Zm9v ", "Zm9v\n", "Zm 9v", "Zm9v\r\n", "\tZm9v", /* whitespace */
                "Zm9-", "Zm9_", "Zm9*", "Zm9\x80", "Zm9\xff", /* not the standard alphabet */
        };
        uint8_t buf[16];

        for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
                assert_int_equal(cmek_base64_decode_to(bad[i], buf, sizeof(buf)), -EINVAL);
                assert_int_equal(cmek_base64_decode_exact(bad[i], buf, 1), -EINVAL);
        }
        assert_int_equal(cmek_base64_decode_to(NULL, buf, sizeof(buf)), -EINVAL);
}

static void test_secret(void **state) {
        json_object *v;
        void *p = NULL;
        size_t n = 0;

        v = json_object_new_string("Zm9vYmE=");
        assert_int_equal(cmek_base64_decode_secret(v, 16, &p, &n), 0);
        assert_int_equal(n, 5);
        assert_memory_equal(p, "fooba", 5);
        assert_true(cmek_secure_size(p) >= 5);
        /* the JSON copy is wiped (same length, all zero) */
        assert_int_equal(json_object_get_string_len(v), 8);
        for (size_t i = 0; i < 8; i++)
                assert_int_equal(json_object_get_string(v)[i], 0);
        cmek_secure_free(p);
        json_object_put(v);

        /* refused inputs are wiped too */
        v = json_object_new_string("Zm9 vYmE");
        assert_int_equal(cmek_base64_decode_secret(v, 16, &p, &n), -EINVAL);
        assert_int_equal(json_object_get_string(v)[0], 0);
        json_object_put(v);
        v = json_object_new_string("Zm9vYmFy");
        assert_int_equal(cmek_base64_decode_secret(v, 5, &p, &n), -ENOBUFS);
        assert_int_equal(json_object_get_string(v)[0], 0);
        json_object_put(v);
        /* a secret is never empty, never another type */
        v = json_object_new_string("");
        assert_int_equal(cmek_base64_decode_secret(v, 16, &p, &n), -EINVAL);
        json_object_put(v);
        v = json_object_new_int(5);
        assert_int_equal(cmek_base64_decode_secret(v, 16, &p, &n), -EINVAL);
        json_object_put(v);
        assert_int_equal(cmek_base64_decode_secret(NULL, 16, &p, &n), -EINVAL);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_rfc4648_vectors),
                cmocka_unit_test(test_round_trip_all_bytes),
                cmocka_unit_test(test_rejected),
                cmocka_unit_test(test_secret),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
