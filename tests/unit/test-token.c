/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* Unit tests for lib/cmek-token.c: the cmek LUKS2 token schema, round trip, AAD. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <cmocka.h>

#include "cmek-token.h"
#include "cmek-util.h"

#define IV_B64 "AAECAwQFBgcICQoL"                                 /* 12 bytes */
#define CT_B64 "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="     /* 32 bytes */
#define TAG_B64 "AAECAwQFBgcICQoLDA0ODw=="                        /* 16 bytes */

#define GOOD "{\"type\":\"cmek\",\"keyslots\":[\"1\"],\"cmek_version\":1,\"key_id\":\"cmek.key.prod.abc123\"," \
        "\"key_version\":3,\"vault\":\"default\",\"alg\":\"AES-256-GCM\",\"iv\":\"" IV_B64 "\"," \
        "\"ciphertext\":\"" CT_B64 "\",\"tag\":\"" TAG_B64 "\",\"created\":\"2026-01-31T12:00:00Z\"}"

static void test_parse_good(void **state) {
        CmekToken t = CMEK_TOKEN_NULL;

        assert_int_equal(cmek_token_parse(GOOD, &t, NULL), 0);
        assert_int_equal(t.keyslot, 1);
        assert_int_equal(t.pending_keyslot, -1);
        assert_int_equal(t.key_version, 3);
        assert_string_equal(t.key_id, "cmek.key.prod.abc123");
        assert_string_equal(t.vault, "default");
        for (int i = 0; i < 32; i++)
                assert_int_equal(t.ciphertext[i], i);
        for (int i = 0; i < 12; i++)
                assert_int_equal(t.iv[i], i);
        for (int i = 0; i < 16; i++)
                assert_int_equal(t.tag[i], i);
        cmek_token_done(&t);
}

static void test_round_trip(void **state) {
        CmekToken t = CMEK_TOKEN_NULL, u = CMEK_TOKEN_NULL;
        _cleanup_free_ char *j = NULL, *j2 = NULL;

        assert_int_equal(cmek_token_parse(GOOD, &t, NULL), 0);
        t.pending_keyslot = 5;
        assert_int_equal(cmek_token_to_json(&t, &j), 0);
        assert_int_equal(cmek_token_parse(j, &u, NULL), 0);
        assert_int_equal(u.pending_keyslot, 5);
        assert_memory_equal(t.ciphertext, u.ciphertext, sizeof(t.ciphertext));
        assert_memory_equal(t.tag, u.tag, sizeof(t.tag));
        assert_string_equal(t.created, u.created);
        assert_int_equal(cmek_token_to_json(&u, &j2), 0);
        assert_string_equal(j, j2);
        /* no keyslot: a token whose keyslot was destroyed (being removed) still parses */
        u.keyslot = -1;
        free(j2);
        j2 = NULL;
        assert_int_equal(cmek_token_to_json(&u, &j2), 0);
        assert_non_null(strstr(j2, "\"keyslots\":[]"));
        cmek_token_done(&u);
        assert_int_equal(cmek_token_parse(j2, &u, NULL), 0);
        assert_int_equal(u.keyslot, -1);
        cmek_token_done(&t);
        cmek_token_done(&u);
}

/* Each bad token replaces one substring of GOOD. */
static const struct { const char *from, *to; int err; } bad[] = {
        { "\"type\":\"cmek\"", "\"type\":\"systemd-tpm2\"", -EMEDIUMTYPE },
        { "\"type\":\"cmek\",", "", -EINVAL },
        { "\"cmek_version\":1", "\"cmek_version\":2", -EPROTONOSUPPORT },
        { "\"cmek_version\":1", "\"cmek_version\":0", -EINVAL },
        { "\"cmek_version\":1", "\"cmek_version\":\"1\"", -EINVAL },
        { "[\"1\"]", "[\"1\",\"2\"]", -EINVAL },
        { "[\"1\"]", "[\"01\"]", -EINVAL },
        { "[\"1\"]", "[\"32\"]", -EINVAL },
        { "[\"1\"]", "[1]", -EINVAL },
        { "[\"1\"]", "\"1\"", -EINVAL },
        { "\"key_id\":\"cmek.key.prod.abc123\"", "\"key_id\":\"\"", -EINVAL },
        { "\"key_id\":\"cmek.key.prod.abc123\"", "\"key_id\":\"a b\"", -EINVAL },
        { "\"key_id\":\"cmek.key.prod.abc123\",", "", -EINVAL },
        { "\"key_version\":3", "\"key_version\":0", -EINVAL },
        { "\"key_version\":3", "\"key_version\":-1", -EINVAL },
        { "\"key_version\":3", "\"key_version\":4294967296", -EINVAL },
        { "\"vault\":\"default\"", "\"vault\":\"../x/\"", -EINVAL },
        { "\"alg\":\"AES-256-GCM\"", "\"alg\":\"AES-128-GCM\"", -EINVAL },
        { IV_B64, "AAECAwQFBgcICQ==", -EINVAL },                    /* 10 bytes */
        { IV_B64, "AAECAwQFBgcICQo*", -EINVAL },
        { CT_B64, "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8", -EINVAL }, /* no padding */
        { CT_B64, "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8A", -EINVAL }, /* 33 bytes */
        { CT_B64, "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh9=", -EINVAL }, /* non-canonical bits */
        { TAG_B64, "AAECAwQFBgcICQoLDA0O", -EINVAL },
        { "2026-01-31T12:00:00Z", "yesterday", -EINVAL },
        { "\"created\":\"2026-01-31T12:00:00Z\"", "\"created\":\"2026-01-31T12:00:00Z\",\"extra\":1", -EINVAL },
        { "\"created\":\"2026-01-31T12:00:00Z\"", "\"created\":\"2026-01-31T12:00:00Z\",\"pending_keyslot\":\"1\"", -EINVAL },
        { "}", "}x", -EINVAL },
        { "{", "[{", -EINVAL },
};

static char *replace(const char *s, const char *from, const char *to) {
        const char *p = strstr(s, from);
        char *r;
        assert_non_null(p);
        assert_true(asprintf(&r, "%.*s%s%s", (int) (p - s), s, to, p + strlen(from)) > 0);
        return r;
}

static void test_parse_bad(void **state) {
        for (size_t i = 0; i < ARRAY_SIZE(bad); i++) {
                _cleanup_free_ char *j = replace(GOOD, bad[i].from, bad[i].to);
                const char *why = NULL;
                int r = cmek_token_validate(j, &why);
                if (r != bad[i].err)
                        fail_msg("case %zu (%s): got %d, want %d", i, j, r, bad[i].err);
                assert_non_null(why);
        }
        assert_int_equal(cmek_token_validate(NULL, NULL), -EINVAL);
        assert_int_equal(cmek_token_validate("", NULL), -EINVAL);
        assert_int_equal(cmek_token_validate("null", NULL), -EINVAL);
}

static void test_aad(void **state) {
        _cleanup_free_ uint8_t *a = NULL, *b = NULL;
        size_t na, nb;
        static const char want[] = "cmek-v1\0" "0b5e-uuid\0" "7\0" "cmek.key.x\0" "12";

        assert_int_equal(cmek_token_aad("0b5e-uuid", 7, "cmek.key.x", 12, &a, &na), 0);
        assert_int_equal(na, sizeof(want) - 1);
        assert_memory_equal(a, want, na);
        /* every bound field changes the AAD */
        assert_int_equal(cmek_token_aad("0b5e-uuid", 7, "cmek.key.x", 1, &b, &nb), 0);
        assert_false(na == nb && memcmp(a, b, na) == 0);
        assert_int_equal(cmek_token_aad("0b5e-uuid", -1, "cmek.key.x", 1, &b, &nb), -EINVAL);
        assert_int_equal(cmek_token_aad("", 1, "cmek.key.x", 1, &b, &nb), -EINVAL);
        assert_int_equal(cmek_token_aad("u", 1, "a\nb", 1, &b, &nb), -EINVAL);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_parse_good),
                cmocka_unit_test(test_round_trip),
                cmocka_unit_test(test_parse_bad),
                cmocka_unit_test(test_aad),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
