/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* Unit tests for the error table (lib/cmek-errors.c): unique names, -errno round trips, the
 * cmekctl exit codes of cmekctl(8), the token plugin's errnos, hints and the generic row. */
#include <errno.h>
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <cmocka.h>

#include "cmek-errors.h"
#include "cmek-util.h"

static void test_names_unique(void **state) {
        for (size_t i = 0; i < cmek_errors_n; i++) {
                assert_non_null(cmek_errors[i].name);
                assert_non_null(cmek_errors[i].hint);
                assert_non_null(cmek_errors[i].parameters);
                assert_ptr_equal(cmek_error_from_name(cmek_errors[i].name), &cmek_errors[i]);
                for (size_t j = i + 1; j < cmek_errors_n; j++)
                        assert_string_not_equal(cmek_errors[i].name, cmek_errors[j].name);
        }
}

/* every -errno the table maps from (a row's own or a cause) maps to one row only */
static void test_errnos_unique(void **state) {
        int seen[64];
        size_t n = 0;

        for (size_t i = 0; i < cmek_errors_n; i++) {
                const CmekError *e = &cmek_errors[i];
                if (e->errno_value != 0) {
                        assert_true(e->errno_value < 0);
                        for (size_t k = 0; k < n; k++)
                                assert_int_not_equal(seen[k], e->errno_value);
                        seen[n++] = e->errno_value;
                }
        }
        /* causes: unique among causes, and only -ENOKEY (without a key) shares a row's errno */
        for (size_t i = 0; i < cmek_errors_n; i++)
                for (const CmekErrorCause *c = cmek_errors[i].causes; c && c->errno_value != 0; c++) {
                        assert_true(c->errno_value < 0);
                        assert_non_null(c->hint);
                        for (size_t k = 0; k < n; k++)
                                if (seen[k] == c->errno_value)
                                        assert_int_equal(c->errno_value, -ENOKEY);
                        if (c->errno_value != -ENOKEY)
                                seen[n++] = c->errno_value;
                        assert_true(n < ARRAY_SIZE(seen));
                }
}

static void test_round_trip(void **state) {
        const char *hint;

        for (size_t i = 0; i < cmek_errors_n; i++) {
                const CmekError *e = &cmek_errors[i];
                if (e->errno_value == 0)
                        continue;
                /* errno → name → errno, name → errno → name */
                assert_ptr_equal(cmek_error_from_errno(e->errno_value, true, &hint), e);
                assert_ptr_equal(hint, e->hint);
                assert_int_equal(cmek_error_to_errno(e->name), e->errno_value);
                assert_ptr_equal(cmek_error_from_errno(cmek_error_to_errno(e->name), true, NULL), e);
                /* the layers return -errno: a positive value is no errno of theirs */
                assert_string_equal(cmek_error_from_errno(-e->errno_value, true, NULL)->name, CMEK_ERROR_DEVICE_ERROR);
                for (const CmekErrorCause *c = e->causes; c && c->errno_value != 0; c++) {
                        assert_ptr_equal(cmek_error_from_errno(c->errno_value, true, &hint), e);
                        assert_ptr_equal(hint, c->hint);
                }
        }
        for (size_t i = 0; i < cmek_errors_n; i++)
                for (const CmekErrorCause *c = cmek_errors[i].causes; c && c->errno_value != 0; c++) {
                        assert_ptr_equal(cmek_error_from_errno(c->errno_value, false, &hint), &cmek_errors[i]);
                        assert_ptr_equal(hint, c->hint);
                }
}

/* the mapping reply_errno() had before the table, row by row */
static void test_daemon_mapping(void **state) {
        static const struct { int r; bool with_key; const char *name; } want[] = {
                { -EMEDIUMTYPE, false, CMEK_ERROR_NOT_LUKS2 },
                { -ENODEV, false, CMEK_ERROR_VOLUME_NOT_FOUND },
                { -EEXIST, false, CMEK_ERROR_ALREADY_EXISTS },
                { -ENOTEMPTY, false, CMEK_ERROR_ALREADY_EXISTS },
                { -EPERM, false, VARLINK_ERROR_INVALID_PARAMETER },
                { -ENOKEY, false, CMEK_ERROR_INVALID_TRANSITION },
                { -ENOKEY, true, CMEK_ERROR_KEY_DELETED },
                { -EKEYREVOKED, false, CMEK_ERROR_KEY_DISABLED },
                { -EKEYREVOKED, true, CMEK_ERROR_KEY_DISABLED },
                { -EKEYEXPIRED, true, CMEK_ERROR_KEY_PENDING_DELETION },
                { -ENOENT, true, CMEK_ERROR_KEY_NOT_FOUND },
                { -EBADMSG, true, CMEK_ERROR_UNWRAP_FAILED },
                { -ENOSPC, false, CMEK_ERROR_DEVICE_ERROR },
                { -EHOSTDOWN, true, CMEK_ERROR_VAULT_UNAVAILABLE },
                { -ESTALE, false, CMEK_ERROR_BUSY },
                { -E2BIG, false, VARLINK_ERROR_INVALID_PARAMETER },
                { -ENXIO, false, VARLINK_ERROR_INVALID_PARAMETER },
                { -EBUSY, false, CMEK_ERROR_BUSY },
                /* anything else: a device error saying strerror, never a more specific error */
                { -EIO, false, CMEK_ERROR_DEVICE_ERROR },
                { -EINVAL, false, CMEK_ERROR_DEVICE_ERROR },
                { -EACCES, true, CMEK_ERROR_DEVICE_ERROR },
                { -ENOMEM, false, CMEK_ERROR_DEVICE_ERROR },
                { -EMSGSIZE, false, CMEK_ERROR_DEVICE_ERROR },
                { 0, false, CMEK_ERROR_DEVICE_ERROR },
        };
        char buf[512];
        const char *hint;

        for (size_t i = 0; i < ARRAY_SIZE(want); i++)
                assert_string_equal(cmek_error_from_errno(want[i].r, want[i].with_key, NULL)->name, want[i].name);
        (void) cmek_error_from_errno(-EROFS, false, &hint);
        assert_string_equal(cmek_error_format_hint(hint, -EROFS, "/dev/x", NULL, buf, sizeof(buf)),
                            "'/dev/x': Read-only file system");
}

/* cmekctl(8) EXIT STATUS and what the token plugin told libcryptsetup before the table */
static void test_exit_codes_and_plugin(void **state) {
        static const struct { const char *name; int exit_code, plugin; } want[] = {
                { CMEK_ERROR_PERMISSION_DENIED, 4, -EPERM },
                { CMEK_ERROR_KEY_NOT_FOUND, 5, -EPERM },
                { CMEK_ERROR_VAULT_NOT_FOUND, 5, -EPERM },
                { CMEK_ERROR_VOLUME_NOT_FOUND, 5, -EPERM },
                { CMEK_ERROR_KEY_DISABLED, 6, -EPERM },
                { CMEK_ERROR_KEY_PENDING_DELETION, 6, -EPERM },
                { CMEK_ERROR_KEY_DELETED, 6, -EPERM },
                { CMEK_ERROR_INVALID_TRANSITION, 7, -EPERM },
                { CMEK_ERROR_UNWRAP_FAILED, 8, -EPERM },
                { VARLINK_ERROR_INVALID_PARAMETER, 2, -EPERM },
                { CMEK_ERROR_VAULT_UNAVAILABLE, 1, -EAGAIN },
                { CMEK_ERROR_BUSY, 1, -EAGAIN },
                { CMEK_ERROR_AUDIT_UNAVAILABLE, 1, -EPERM },
                { CMEK_ERROR_AUDIT_BROKEN, 8, -EPERM },
                { CMEK_ERROR_DEVICE_ERROR, 1, -EPERM },
                { CMEK_ERROR_INTERNAL, 1, -EPERM },
                { VARLINK_ERROR_METHOD_NOT_FOUND, 1, -EPERM },
        };

        for (size_t i = 0; i < ARRAY_SIZE(want); i++) {
                const CmekError *e = cmek_error_from_name(want[i].name);
                assert_non_null(e->name);
                assert_int_equal(e->exit_code, want[i].exit_code);
                assert_int_equal(e->plugin_errno, want[i].plugin);
        }
}

static void test_unknown(void **state) {
        const CmekError *e = cmek_error_from_name("io.cmek.NoSuchError");

        assert_null(e->name);
        assert_int_equal(e->exit_code, CTL_EXIT_FAILURE);
        assert_int_equal(e->plugin_errno, -EPERM);
        assert_int_equal(e->errno_value, 0);
        assert_non_null(e->hint);
        assert_ptr_equal(cmek_error_from_name(NULL), e);
        assert_ptr_equal(cmek_error_from_name("io.cmek.keynotfound"), e); /* names are exact */
        assert_int_equal(cmek_error_to_errno("io.cmek.NoSuchError"), 0);
}

static void test_key_states(void **state) {
        assert_int_equal(cmek_error_from_key_state("ENABLED"), 0);
        assert_int_equal(cmek_error_from_key_state("DISABLED"), -EKEYREVOKED);
        assert_int_equal(cmek_error_from_key_state("PENDING_DELETION"), -EKEYEXPIRED);
        assert_int_equal(cmek_error_from_key_state("DELETED"), -ENOKEY);
        assert_int_equal(cmek_error_from_key_state("SOMETHING"), -ENOKEY);
        assert_int_equal(cmek_error_from_key_state(NULL), -ENOKEY);
        /* and back: the error names the state it refused */
        assert_string_equal(cmek_error_from_errno(cmek_error_from_key_state("DISABLED"), true, NULL)->key_state, "DISABLED");
        assert_string_equal(cmek_error_from_errno(cmek_error_from_key_state("PENDING_DELETION"), true, NULL)->key_state,
                            "PENDING_DELETION");
        assert_string_equal(cmek_error_from_errno(cmek_error_from_key_state("DELETED"), true, NULL)->key_state, "DELETED");
}

static void test_format_hint(void **state) {
        char buf[512], small[8];

        assert_string_equal(cmek_error_format_hint(cmek_error_from_name(CMEK_ERROR_KEY_DISABLED)->hint, -EKEYREVOKED,
                                                   NULL, "cmek.key.a.b", buf, sizeof(buf)),
                            "key cmek.key.a.b is DISABLED: enable it with 'cmekctl key enable cmek.key.a.b'");
        assert_string_equal(cmek_error_format_hint("'{device}' {key_id}{nothing}", 0, NULL, NULL, buf, sizeof(buf)),
                            "'' {nothing}");
        /* truncates, always terminated */
        assert_string_equal(cmek_error_format_hint("{device}", 0, "/dev/mapper/long", NULL, small, sizeof(small)), "/dev/ma");
        assert_string_equal(cmek_error_format_hint("abcdefghij", 0, NULL, NULL, small, sizeof(small)), "abcdefg");
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_names_unique),
                cmocka_unit_test(test_errnos_unique),
                cmocka_unit_test(test_round_trip),
                cmocka_unit_test(test_daemon_mapping),
                cmocka_unit_test(test_exit_codes_and_plugin),
                cmocka_unit_test(test_unknown),
                cmocka_unit_test(test_key_states),
                cmocka_unit_test(test_format_hint),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
