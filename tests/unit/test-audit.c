/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* Unit tests for the hash-chained audit log: chain, tamper detection, torn-tail recovery, read. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <sys/stat.h>
#include <cmocka.h>

#include "cmek-audit.h"
#include "cmek-util.h"

#define T0 1795438800000000ULL  /* 2026-11-23T13:00:00Z */

typedef struct Fixture {
        char dir[64];
        char path[128];
        char other[128];
} Fixture;

static int setup(void **state) {
        Fixture *f = calloc(1, sizeof(*f));
        assert_non_null(f);
        strcpy(f->dir, "/tmp/test-audit-XXXXXX");
        assert_non_null(mkdtemp(f->dir));
        snprintf(f->path, sizeof(f->path), "%s/audit.log", f->dir);
        snprintf(f->other, sizeof(f->other), "%s/other.log", f->dir);
        *state = f;
        return 0;
}

static int teardown(void **state) {
        Fixture *f = *state;
        (void) unlink(f->path);
        (void) unlink(f->other);
        (void) rmdir(f->dir);
        free(f);
        return 0;
}

static CmekAudit *open_log(const char *path) {
        CmekAudit *a = NULL;
        assert_int_equal(cmek_audit_open_full(path, CMEK_AUDIT_NO_JOURNAL, &a), 0);
        assert_non_null(a);
        return a;
}

/* Appends entries first..last (seq-like numbering), entry i at T0 + i ms. */
static void append_range(const char *path, unsigned first, unsigned last) {
        CmekAudit *a = open_log(path);
        for (unsigned i = first; i <= last; i++) {
                char key[32];
                snprintf(key, sizeof(key), "cmek.key.k%u", i);
                assert_int_equal(cmek_audit_append(a, &(CmekAuditEntry) {
                                .event = "key.disabled",
                                .operation = "io.cmek.Key.Disable",
                                .result = "ok",
                                .has_caller = true, .uid = 1000 + i, .gid = 100, .pid = 4242,
                                .key_id = key,
                                .old_state = "ENABLED",
                                .new_state = "DISABLED",
                        }, T0 + i * 1000ULL), 0);
        }
        cmek_audit_close(a);
}

typedef struct Lines {
        char *buf;
        char *line[256];
        size_t n;
} Lines;

static void lines_read(const char *path, Lines *l) {
        size_t size;
        memset(l, 0, sizeof(*l));
        assert_int_equal(cmek_read_file(path, 16 * 1024 * 1024, &l->buf, &size), 0);
        for (char *p = l->buf, *nl; *p; p = nl + 1) {
                nl = strchr(p, '\n');
                assert_non_null(nl);
                *nl = 0;
                assert_true(l->n < ARRAY_SIZE(l->line));
                l->line[l->n++] = p;
        }
}

static void lines_write(const char *path, const Lines *l) {
        FILE *f = fopen(path, "we");
        assert_non_null(f);
        for (size_t i = 0; i < l->n; i++)
                fprintf(f, "%s\n", l->line[i]);
        assert_int_equal(fclose(f), 0);
}

static void expect_ok(const char *path, unsigned n_lines) {
        unsigned n = 0, bad = 99;
        char *reason = NULL;
        int r = cmek_audit_verify(path, &n, &bad, &reason);
        if (r != 0)
                print_error("unexpected: %s\n", strempty(reason));
        assert_int_equal(r, 0);
        assert_int_equal(n, n_lines);
        assert_int_equal(bad, 0);
        assert_null(reason);
}

static void expect_bad(const char *path, unsigned line, const char *what) {
        unsigned n = 0, bad = 0;
        char *reason = NULL;
        char prefix[32];

        assert_int_equal(cmek_audit_verify(path, &n, &bad, &reason), -EBADMSG);
        assert_non_null(reason);
        snprintf(prefix, sizeof(prefix), "line %u: ", line);
        if (bad != line || strncmp(reason, prefix, strlen(prefix)) != 0 || !strstr(reason, what))
                print_error("got line %u, \"%s\"; want line %u, \"%s\"\n", bad, reason, line, what);
        assert_int_equal(bad, line);
        assert_int_equal(n, line);
        assert_true(strncmp(reason, prefix, strlen(prefix)) == 0);
        assert_non_null(strstr(reason, what));
        free(reason);
}

static void test_append_verify(void **state) {
        Fixture *f = *state;
        Lines l;
        struct stat st;
        json_object *o, *v;

        append_range(f->path, 1, 10);
        expect_ok(f->path, 10);

        assert_int_equal(stat(f->path, &st), 0);
        assert_int_equal(st.st_mode & 07777, 0600);

        lines_read(f->path, &l);
        assert_int_equal(l.n, 10);
        assert_non_null(strstr(l.line[0], "{\"seq\":1,\"time\":\"2026-11-23T13:00:00.001000Z\",\"time_usec\":1795438800001000,"
                                          "\"event\":\"key.disabled\",\"operation\":\"io.cmek.Key.Disable\",\"result\":\"ok\","
                                          "\"uid\":1001,\"gid\":100,\"pid\":4242,\"key_id\":\"cmek.key.k1\","
                                          "\"old_state\":\"ENABLED\",\"new_state\":\"DISABLED\",\"prev\":\"0000000000000000"));
        o = json_tokener_parse(l.line[3]);
        assert_non_null(o);
        assert_false(json_object_object_get_ex(o, "volume", &v));   /* NULL fields are omitted */
        assert_false(json_object_object_get_ex(o, "detail", &v));
        assert_true(json_object_object_get_ex(o, "hash", &v));
        assert_int_equal(json_object_get_string_len(v), 64);
        json_object_put(o);
        free(l.buf);
}

static void test_empty_log(void **state) {
        Fixture *f = *state;
        CmekAudit *a = open_log(f->path);
        assert_int_equal(cmek_audit_get_seq(a), 0);
        assert_string_equal(cmek_audit_get_hash(a), "0000000000000000000000000000000000000000000000000000000000000000");
        cmek_audit_close(a);
        expect_ok(f->path, 0);
        assert_int_equal(cmek_audit_verify("/nonexistent/audit.log", NULL, NULL, NULL), -ENOENT);
}

static void test_edit_field(void **state) {
        Fixture *f = *state;
        Lines l;
        char *p;

        append_range(f->path, 1, 10);
        lines_read(f->path, &l);
        p = strstr(l.line[6], "DISABLED");
        assert_non_null(p);
        memcpy(p, "DISABLEX", 8);
        lines_write(f->path, &l);
        free(l.buf);
        expect_bad(f->path, 7, "hash mismatch (line edited)");
}

static void test_edit_hash(void **state) {
        Fixture *f = *state;
        Lines l;
        char *p;

        append_range(f->path, 1, 5);
        lines_read(f->path, &l);
        p = strstr(l.line[2], "\"hash\":\"");
        assert_non_null(p);
        p[8] = p[8] == 'a' ? 'b' : 'a';
        lines_write(f->path, &l);
        free(l.buf);
        expect_bad(f->path, 3, "hash mismatch");
}

/* A forger who rehashes the line they edited still breaks the next line's prev. */
static void test_replace_rehashed(void **state) {
        Fixture *f = *state;
        Lines a, b;
        CmekAudit *log;

        append_range(f->path, 1, 8);
        /* Same first four entries, then a different fifth: a valid line 5 with the right prev. */
        append_range(f->other, 1, 4);
        log = open_log(f->other);
        assert_int_equal(cmek_audit_append(log, &(CmekAuditEntry) {
                                .event = "key.enabled", .result = "ok", .key_id = "cmek.key.k5",
                        }, T0 + 5000), 0);
        cmek_audit_close(log);
        expect_ok(f->other, 5);

        lines_read(f->path, &a);
        lines_read(f->other, &b);
        a.line[4] = b.line[4];
        lines_write(f->path, &a);
        free(a.buf);
        free(b.buf);
        expect_bad(f->path, 6, "prev does not match line 5's hash");
}

static void test_delete_line(void **state) {
        Fixture *f = *state;
        Lines l;

        append_range(f->path, 1, 10);
        lines_read(f->path, &l);
        memmove(&l.line[3], &l.line[4], (l.n - 4) * sizeof(char *));
        l.n--;
        lines_write(f->path, &l);
        free(l.buf);
        expect_bad(f->path, 4, "seq 5 follows 3 (line deleted or reordered)");
}

static void test_swap_lines(void **state) {
        Fixture *f = *state;
        Lines l;
        char *t;

        append_range(f->path, 1, 10);
        lines_read(f->path, &l);
        t = l.line[5], l.line[5] = l.line[6], l.line[6] = t;
        lines_write(f->path, &l);
        free(l.buf);
        expect_bad(f->path, 6, "seq 7 follows 5");
}

static void test_truncate_head(void **state) {
        Fixture *f = *state;
        Lines l;

        append_range(f->path, 1, 10);
        lines_read(f->path, &l);
        memmove(&l.line[0], &l.line[3], (l.n - 3) * sizeof(char *));
        l.n -= 3;
        lines_write(f->path, &l);
        free(l.buf);
        expect_bad(f->path, 1, "seq 4, expected 1 (head truncated)");
}

static void test_not_json(void **state) {
        Fixture *f = *state;
        Lines l;

        append_range(f->path, 1, 4);
        lines_read(f->path, &l);
        l.line[1] = (char *) "this is not { json";
        lines_write(f->path, &l);
        free(l.buf);
        expect_bad(f->path, 2, "not JSON");

        lines_read(f->path, &l);
        l.line[1] = (char *) "";
        lines_write(f->path, &l);
        free(l.buf);
        expect_bad(f->path, 2, "not JSON");
}

static void test_torn_tail_recovery(void **state) {
        Fixture *f = *state;
        CmekAudit *a;
        Lines l;
        FILE *fp;
        json_object *arr, *o, *v;
        const char *torn = "{\"seq\":6,\"time\":\"2026-11-23T13:00:00.00";
        char want[64];

        append_range(f->path, 1, 5);
        fp = fopen(f->path, "ae");
        assert_non_null(fp);
        fputs(torn, fp);
        assert_int_equal(fclose(fp), 0);
        expect_bad(f->path, 6, "torn");

        /* read() skips the torn tail rather than failing */
        assert_int_equal(cmek_audit_read(f->path, 0, &arr), 0);
        assert_int_equal(json_object_array_length(arr), 5);
        json_object_put(arr);

        a = open_log(f->path);
        assert_int_equal(cmek_audit_get_recovered_bytes(a), strlen(torn));
        assert_int_equal(cmek_audit_get_seq(a), 6);
        cmek_audit_close(a);
        expect_ok(f->path, 6);

        lines_read(f->path, &l);
        o = json_tokener_parse(l.line[5]);
        assert_non_null(o);
        assert_true(json_object_object_get_ex(o, "event", &v));
        assert_string_equal(json_object_get_string(v), "audit.recovered");
        assert_true(json_object_object_get_ex(o, "detail", &v));
        snprintf(want, sizeof(want), "(%zu bytes without newline, seq 6,", strlen(torn));
        assert_non_null(strstr(json_object_get_string(v), want));
        assert_non_null(strstr(json_object_get_string(v), "after seq 5"));
        json_object_put(o);
        free(l.buf);

        /* and the chain goes on */
        append_range(f->path, 7, 8);
        expect_ok(f->path, 8);
}

static void test_torn_only_line(void **state) {
        Fixture *f = *state;
        CmekAudit *a;
        FILE *fp = fopen(f->path, "we");

        assert_non_null(fp);
        fputs("{\"se", fp);
        assert_int_equal(fclose(fp), 0);
        a = open_log(f->path);
        assert_int_equal(cmek_audit_get_recovered_bytes(a), 4);
        assert_int_equal(cmek_audit_get_seq(a), 1);
        cmek_audit_close(a);
        expect_ok(f->path, 1);
}

static void test_open_refuses_bad_last_line(void **state) {
        Fixture *f = *state;
        CmekAudit *a = NULL;
        Lines l;
        char *p;

        append_range(f->path, 1, 3);
        lines_read(f->path, &l);
        p = strstr(l.line[2], "k3");
        assert_non_null(p);
        p[1] = '9';
        lines_write(f->path, &l);
        free(l.buf);
        assert_int_equal(cmek_audit_open_full(f->path, CMEK_AUDIT_NO_JOURNAL, &a), -EBADMSG);
        assert_null(a);

        /* a complete but unparsable last line */
        {
                FILE *fp = fopen(f->path, "we");
                assert_non_null(fp);
                fputs("garbage\n", fp);
                assert_int_equal(fclose(fp), 0);
                assert_int_equal(cmek_audit_open_full(f->path, CMEK_AUDIT_NO_JOURNAL, &a), -EBADMSG);
        }
}

static void test_reopen_continues(void **state) {
        Fixture *f = *state;
        CmekAudit *a;
        char hash[65];

        append_range(f->path, 1, 3);
        a = open_log(f->path);
        assert_int_equal(cmek_audit_get_seq(a), 3);
        assert_int_equal(cmek_audit_get_recovered_bytes(a), 0);
        strcpy(hash, cmek_audit_get_hash(a));
        cmek_audit_close(a);
        append_range(f->path, 4, 5);
        expect_ok(f->path, 5);

        a = open_log(f->path);
        assert_int_equal(cmek_audit_get_seq(a), 5);
        assert_string_not_equal(cmek_audit_get_hash(a), hash);
        cmek_audit_close(a);
}

/* Lines much longer in total than the tail window open() reads. */
static void test_reopen_large(void **state) {
        Fixture *f = *state;
        CmekAudit *a = open_log(f->path);
        char *detail = malloc(4000);
        struct stat st;

        assert_non_null(detail);
        memset(detail, 'x', 3999);
        detail[3999] = 0;
        /* details are capped at CMEK_AUDIT_DETAIL_MAX: enough lines to exceed the tail window */
        for (unsigned i = 1; i <= 250; i++)
                assert_int_equal(cmek_audit_append(a, &(CmekAuditEntry) {
                                        .event = "policy.reloaded", .result = "ok", .detail = detail,
                                }, T0 + i), 0);
        cmek_audit_close(a);
        assert_int_equal(stat(f->path, &st), 0);
        assert_true(st.st_size > 3 * (off_t) CMEK_AUDIT_LINE_MAX);

        a = open_log(f->path);
        assert_int_equal(cmek_audit_get_seq(a), 250);
        assert_int_equal(cmek_audit_append(a, &(CmekAuditEntry) { .event = "daemon.started" }, T0 + 1000), 0);

        /* too long for one line: capped with a marker, never dropped (a flood of long
         * caller-chosen strings must neither lose the record nor grow the log unboundedly);
         * control characters (6x when escaped) in every field still fit in one line */
        char *huge = malloc(CMEK_AUDIT_LINE_MAX + 1);
        assert_non_null(huge);
        memset(huge, 'y', CMEK_AUDIT_LINE_MAX);
        huge[CMEK_AUDIT_LINE_MAX] = 0;
        assert_int_equal(cmek_audit_append(a, &(CmekAuditEntry) { .event = "daemon.started", .detail = huge }, 0), 0);
        memset(huge, '\x01', CMEK_AUDIT_LINE_MAX);
        assert_int_equal(cmek_audit_append(a, &(CmekAuditEntry) {
                                .event = huge, .operation = huge, .result = huge, .key_id = huge, .old_state = huge,
                                .new_state = huge, .volume = huge, .detail = huge }, 0), 0);
        free(huge);
        cmek_audit_close(a);
        free(detail);
        expect_ok(f->path, 253);
        {
                _cleanup_free_ char *text = NULL;
                size_t size = 0;
                assert_int_equal(cmek_read_file(f->path, 64U * 1024U * 1024U, &text, &size), 0);
                assert_non_null(strstr(text, "yyy...[truncated "));
        }
}

static void test_lock(void **state) {
        Fixture *f = *state;
        CmekAudit *a = open_log(f->path), *b = NULL;
        assert_int_equal(cmek_audit_open_full(f->path, CMEK_AUDIT_NO_JOURNAL, &b), -EBUSY);
        assert_null(b);
        cmek_audit_close(a);
}

static void test_read_since(void **state) {
        Fixture *f = *state;
        json_object *arr, *v;

        append_range(f->path, 1, 10);
        assert_int_equal(cmek_audit_read(f->path, 0, &arr), 0);
        assert_int_equal(json_object_array_length(arr), 10);
        json_object_put(arr);

        assert_int_equal(cmek_audit_read(f->path, T0 + 7000, &arr), 0);
        assert_int_equal(json_object_array_length(arr), 4);
        assert_true(json_object_object_get_ex(json_object_array_get_idx(arr, 0), "seq", &v));
        assert_int_equal(json_object_get_int64(v), 7);
        assert_true(json_object_object_get_ex(json_object_array_get_idx(arr, 3), "seq", &v));
        assert_int_equal(json_object_get_int64(v), 10);
        json_object_put(arr);

        assert_int_equal(cmek_audit_read(f->path, T0 + 10001, &arr), 0);
        assert_int_equal(json_object_array_length(arr), 0);
        json_object_put(arr);
        assert_int_equal(cmek_audit_read("/nonexistent/audit.log", 0, &arr), -ENOENT);
}

/* No value can break the one-line format or forge a field. */
static void test_escaping(void **state) {
        static const char *nasty[] = {
                "two\nlines",
                "quote \" and backslash \\ and tab \t and CR \r",
                "fake end\"},\"hash\":\"0000000000000000000000000000000000000000000000000000000000000000\"}",
                "\n{\"seq\":1}\n",
                "slash / and unicode \xc3\xa9 \xe2\x82\xac",
                "\x01\x1f\x7f",
        };
        Fixture *f = *state;
        CmekAudit *a = open_log(f->path);
        json_object *arr, *v;
        Lines l;

        for (size_t i = 0; i < ARRAY_SIZE(nasty); i++)
                assert_int_equal(cmek_audit_append(a, &(CmekAuditEntry) {
                                        .event = "volume.bound", .result = "ok",
                                        .volume = nasty[i], .key_id = nasty[i], .detail = nasty[i],
                                        .operation = nasty[i], .old_state = nasty[i], .new_state = nasty[i],
                                }, T0 + i), 0);
        /* invalid UTF-8 is replaced, not written raw */
        assert_int_equal(cmek_audit_append(a, &(CmekAuditEntry) {
                                .event = "volume.bound", .volume = "bad \xff\xc3 utf8 \xed\xa0\x80",
                        }, T0 + 100), 0);
        cmek_audit_close(a);

        expect_ok(f->path, ARRAY_SIZE(nasty) + 1);
        lines_read(f->path, &l);
        assert_int_equal(l.n, ARRAY_SIZE(nasty) + 1);
        free(l.buf);

        assert_int_equal(cmek_audit_read(f->path, 0, &arr), 0);
        for (size_t i = 0; i < ARRAY_SIZE(nasty); i++) {
                json_object *o = json_object_array_get_idx(arr, i);
                assert_true(json_object_object_get_ex(o, "detail", &v));
                assert_string_equal(json_object_get_string(v), nasty[i]);
                assert_true(json_object_object_get_ex(o, "volume", &v));
                assert_string_equal(json_object_get_string(v), nasty[i]);
        }
        assert_true(json_object_object_get_ex(json_object_array_get_idx(arr, ARRAY_SIZE(nasty)), "volume", &v));
        assert_string_equal(json_object_get_string(v),
                            "bad \xef\xbf\xbd\xef\xbf\xbd utf8 \xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd");
        json_object_put(arr);
}

static void test_invalid_args(void **state) {
        Fixture *f = *state;
        CmekAudit *a = open_log(f->path);
        assert_int_equal(cmek_audit_append(a, &(CmekAuditEntry) { .event = NULL }, 0), -EINVAL);
        assert_int_equal(cmek_audit_append(a, &(CmekAuditEntry) { .event = "" }, 0), -EINVAL);
        assert_int_equal(cmek_audit_append(NULL, &(CmekAuditEntry) { .event = "key.used" }, 0), -EINVAL);
        cmek_audit_close(a);
        expect_ok(f->path, 0);
}

/* Without journald (or with it) the append itself must succeed. */
static void test_journal_failure_ignored(void **state) {
        Fixture *f = *state;
        CmekAudit *a = NULL;

        assert_int_equal(cmek_audit_open(f->path, &a), 0);
        assert_int_equal(cmek_audit_append(a, &(CmekAuditEntry) {
                                .event = "key.used", .operation = "io.cmek.Key.Unwrap", .result = "ok",
                                .has_caller = true, .key_id = "cmek.key.test-audit",
                        }, 0), 0);
        assert_int_equal(cmek_audit_append(a, &(CmekAuditEntry) {
                                .event = "policy.denied", .operation = "io.cmek.Key.Delete",
                                .result = "io.cmek.PermissionDenied", .has_caller = true, .uid = 1000,
                                .key_id = "cmek.key.test-audit", .detail = "unit test",
                        }, 0), 0);
        cmek_audit_close(a);
        expect_ok(f->path, 2);
}

static void test_message_ids(void **state) {
        static const char *events[] = {
                "key.created", "key.enabled", "key.disabled", "key.rotated", "key.imported",
                "key.deletion-scheduled", "key.deletion-cancelled", "key.deleted", "key.used",
                "volume.bound", "volume.unbound", "volume.key-changed", "volume.unlocked", "volume.locked",
                "volume.restored", "volume.unrecoverable", "rewrap.started", "rewrap.completed",
                "policy.reloaded", "policy.denied", "config.reloaded", "daemon.started", "daemon.stopped", "audit.recovered",
        };
        const char *generic = cmek_audit_message_id("no.such-event");
        (void) state;

        assert_non_null(generic);
        assert_string_equal(cmek_audit_message_id(NULL), generic);
        assert_string_equal(cmek_audit_message_id("key.disabled"), "a158c1d273934e3dbd7b5ab6862aaf48");
        for (size_t i = 0; i < ARRAY_SIZE(events); i++) {
                const char *id = cmek_audit_message_id(events[i]);
                assert_int_equal(strlen(id), 32);
                assert_int_equal(strspn(id, "0123456789abcdef"), 32);
                assert_string_not_equal(id, generic);
                for (size_t j = 0; j < i; j++)
                        assert_string_not_equal(id, cmek_audit_message_id(events[j]));
        }
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test_setup_teardown(test_append_verify, setup, teardown),
                cmocka_unit_test_setup_teardown(test_empty_log, setup, teardown),
                cmocka_unit_test_setup_teardown(test_edit_field, setup, teardown),
                cmocka_unit_test_setup_teardown(test_edit_hash, setup, teardown),
                cmocka_unit_test_setup_teardown(test_replace_rehashed, setup, teardown),
                cmocka_unit_test_setup_teardown(test_delete_line, setup, teardown),
                cmocka_unit_test_setup_teardown(test_swap_lines, setup, teardown),
                cmocka_unit_test_setup_teardown(test_truncate_head, setup, teardown),
                cmocka_unit_test_setup_teardown(test_not_json, setup, teardown),
                cmocka_unit_test_setup_teardown(test_torn_tail_recovery, setup, teardown),
                cmocka_unit_test_setup_teardown(test_torn_only_line, setup, teardown),
                cmocka_unit_test_setup_teardown(test_open_refuses_bad_last_line, setup, teardown),
                cmocka_unit_test_setup_teardown(test_reopen_continues, setup, teardown),
                cmocka_unit_test_setup_teardown(test_reopen_large, setup, teardown),
                cmocka_unit_test_setup_teardown(test_lock, setup, teardown),
                cmocka_unit_test_setup_teardown(test_read_since, setup, teardown),
                cmocka_unit_test_setup_teardown(test_escaping, setup, teardown),
                cmocka_unit_test_setup_teardown(test_invalid_args, setup, teardown),
                cmocka_unit_test_setup_teardown(test_journal_failure_ignored, setup, teardown),
                cmocka_unit_test(test_message_ids),
        };

        /* The automake TEST_LOG_DRIVER is the TAP driver. */
        cmocka_set_message_output(CM_OUTPUT_TAP);
        return cmocka_run_group_tests(tests, NULL, NULL);
}
