/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* Unit tests for the policy engine: grammar, error positions, limits, checks, denial hints. */

#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <cmocka.h>

#include "cmek-util.h"
#include "policy.h"

/* From the base-passwd package, present on every Debian-like system. */
#define UID_NOBODY 65534
#define GID_NOGROUP 65534
/* Ids that no test system has a name for. */
#define UID_NONAME 54321
#define GID_NONAME 54322

#define MAX_GROUPS 4

typedef struct Req {
        uid_t uid;
        gid_t gid;
        gid_t groups[MAX_GROUPS];
        size_t n_groups;
        PolicyVerb verb;
        const char *type;
        const char *compartment;
        const char *key_id;
        const char *volume_id;
} Req;

static PolicyRequest to_request(const Req *r) {
        return (PolicyRequest) {
                .uid = r->uid,
                .gid = r->gid,
                .groups = r->n_groups > 0 ? r->groups : NULL,
                .n_groups = r->n_groups,
                .verb = r->verb,
                .resource_type = r->type ?: "keys",
                .compartment = r->compartment,
                .key_id = r->key_id,
                .volume_id = r->volume_id,
        };
}

static Policy *parse_ok(const char *text) {
        _cleanup_free_ char *error = NULL;
        Policy *p = NULL;
        int r;

        r = policy_parse_string(text, "policy", &p, &error);
        if (r < 0)
                fail_msg("policy_parse_string(\"%s\") failed: %d %s", text, r, strempty(error));
        assert_non_null(p);
        assert_null(error);
        return p;
}

static bool check_text(const char *text, const Req *r) {
        _cleanup_(policy_freep) Policy *p = parse_ok(text);
        PolicyRequest req = to_request(r);
        return policy_check(p, &req);
}

/* Whether a caller appears in any statement at all (server.c gives the others tiny allowances). */
static void test_has_any_grant(void **state) {
        _cleanup_(policy_freep) Policy *p = parse_ok(
                "allow user id 1000 to inspect keys in compartment dev where target.key.id = 'x'\n"
                "allow group nogroup to read audit in tenancy\n"
                "allow group id 54322 to use volumes in compartment prod\n");
        _cleanup_(policy_freep) Policy *any = parse_ok("allow any-user to inspect vaults in tenancy\n");
        _cleanup_(policy_freep) Policy *empty = parse_ok("");
        gid_t g[] = { 1000, GID_NONAME };

        /* root always, with or without a policy */
        assert_true(policy_subject_has_any_grant(NULL, 0, 0, NULL, 0));
        assert_true(policy_subject_has_any_grant(empty, 0, 0, NULL, 0));
        assert_false(policy_subject_has_any_grant(NULL, 1000, 1000, NULL, 0));
        assert_false(policy_subject_has_any_grant(empty, 1000, 1000, NULL, 0));
        /* whatever the verb, resource, compartment or condition */
        assert_true(policy_subject_has_any_grant(p, 1000, 1000, NULL, 0));
        assert_false(policy_subject_has_any_grant(p, 1001, 1001, NULL, 0));
        /* by group name (primary or supplementary) and by group id */
        assert_true(policy_subject_has_any_grant(p, 1001, GID_NOGROUP, NULL, 0));
        assert_true(policy_subject_has_any_grant(p, 1001, 1001, g, 2));
        assert_false(policy_subject_has_any_grant(p, 1001, 1001, g, 1));
        /* any-user names everybody */
        assert_true(policy_subject_has_any_grant(any, 1001, 1001, NULL, 0));
}

static void test_verb_strings(void **state) {
        static const struct {
                const char *s;
                PolicyVerb v;
        } table[] = {
                { "inspect", POLICY_VERB_INSPECT },
                { "read", POLICY_VERB_READ },
                { "use", POLICY_VERB_USE },
                { "manage", POLICY_VERB_MANAGE },
                { "MANAGE", POLICY_VERB_MANAGE },
                { "Use", POLICY_VERB_USE },
                { "delete", _POLICY_VERB_INVALID },
                { "", _POLICY_VERB_INVALID },
                { "used", _POLICY_VERB_INVALID },
                { NULL, _POLICY_VERB_INVALID },
        };

        for (size_t i = 0; i < ARRAY_SIZE(table); i++)
                assert_int_equal(policy_verb_from_string(table[i].s), table[i].v);
        for (PolicyVerb v = 0; v < _POLICY_VERB_MAX; v++)
                assert_int_equal(policy_verb_from_string(policy_verb_to_string(v)), v);
        assert_null(policy_verb_to_string(_POLICY_VERB_MAX));
        assert_null(policy_verb_to_string(_POLICY_VERB_INVALID));
}

static void test_verb_ordering(void **state) {
        /* A statement's verb allows itself and every lower verb: inspect < read < use < manage. */
        for (PolicyVerb granted = 0; granted < _POLICY_VERB_MAX; granted++) {
                _cleanup_free_ char *text = NULL;
                assert_true(asprintf(&text, "allow user id 1000 to %s keys in tenancy",
                                     policy_verb_to_string(granted)) > 0);
                for (PolicyVerb asked = 0; asked < _POLICY_VERB_MAX; asked++) {
                        Req r = { .uid = 1000, .gid = 1000, .verb = asked };
                        if (check_text(text, &r) != (asked <= granted))
                                fail_msg("'%s' for %s: wrong answer", text, policy_verb_to_string(asked));
                }
        }
}

static void test_no_policy(void **state) {
        _cleanup_(policy_freep) Policy *empty = parse_ok("# nothing here\n\n");
        static const Req table[] = {
                { .uid = 0, .verb = POLICY_VERB_MANAGE },
                { .uid = 1000, .gid = 1000, .verb = POLICY_VERB_INSPECT },
                { .uid = UID_NOBODY, .gid = 0, .verb = POLICY_VERB_INSPECT },
        };

        assert_int_equal(policy_n_statements(empty), 0);
        assert_int_equal(policy_n_statements(NULL), 0);
        for (size_t i = 0; i < ARRAY_SIZE(table); i++) {
                PolicyRequest req = to_request(&table[i]);
                assert_int_equal(policy_check(NULL, &req), table[i].uid == 0);
                assert_int_equal(policy_check(empty, &req), table[i].uid == 0);
        }
        assert_false(policy_check(NULL, NULL));
}

static void test_invalid_requests(void **state) {
        /* Malformed requests are refused even for root: they are bugs in the caller. */
        _cleanup_(policy_freep) Policy *p = parse_ok("allow any-user to manage all-resources in tenancy");
        static const Req table[] = {
                { .uid = 0, .verb = POLICY_VERB_USE, .type = "secrets" },
                { .uid = 0, .verb = POLICY_VERB_USE, .type = "all-resources" },
                { .uid = 0, .verb = _POLICY_VERB_MAX, .type = "keys" },
                { .uid = 0, .verb = _POLICY_VERB_INVALID, .type = "keys" },
                { .uid = 1000, .verb = POLICY_VERB_USE, .type = "" },
        };

        for (size_t i = 0; i < ARRAY_SIZE(table); i++) {
                PolicyRequest req = to_request(&table[i]);
                assert_false(policy_check(p, &req));
                assert_false(policy_check(NULL, &req));
        }
        PolicyRequest req = { .uid = 0, .verb = POLICY_VERB_USE, .resource_type = NULL };
        assert_false(policy_check(p, &req));
}

static void test_subjects(void **state) {
        static const struct {
                const char *text;
                Req req;
                bool allowed;
        } table[] = {
                { "allow user nobody to use keys in tenancy", { .uid = UID_NOBODY, .gid = GID_NOGROUP }, true },
                { "allow user nobody to use keys in tenancy", { .uid = 1000, .gid = 1000 }, false },
                { "allow user 'nobody' to use keys in tenancy", { .uid = UID_NOBODY, .gid = GID_NOGROUP }, true },
                { "allow user \"nobody\" to use keys in tenancy", { .uid = UID_NOBODY, .gid = GID_NOGROUP }, true },
                /* names are case-sensitive, keywords are not */
                { "allow user NOBODY to use keys in tenancy", { .uid = UID_NOBODY, .gid = GID_NOGROUP }, false },
                { "ALLOW User nobody To USE Keys IN Tenancy", { .uid = UID_NOBODY, .gid = GID_NOGROUP }, true },
                /* a name that does not exist (yet) is not an error and matches nobody */
                { "allow user no-such-user-cmekd to use keys in tenancy", { .uid = UID_NOBODY, .gid = GID_NOGROUP }, false },
                { "allow group no-such-group-cmekd to use keys in tenancy", { .uid = UID_NOBODY, .gid = GID_NOGROUP }, false },
                { "allow user nobody to use keys in tenancy", { .uid = UID_NONAME, .gid = GID_NONAME }, false },
                /* groups: primary and supplementary */
                { "allow group nogroup to use keys in tenancy", { .uid = 1000, .gid = GID_NOGROUP }, true },
                { "allow group nogroup to use keys in tenancy", { .uid = 1000, .gid = 1000, .groups = { 27, GID_NOGROUP }, .n_groups = 2 }, true },
                { "allow group nogroup to use keys in tenancy", { .uid = 1000, .gid = 1000, .groups = { 27, 100 }, .n_groups = 2 }, false },
                { "allow group root to use keys in tenancy", { .uid = UID_NOBODY, .gid = 0 }, true },
                { "allow group root to use keys in tenancy", { .uid = UID_NOBODY, .gid = GID_NOGROUP, .groups = { GID_NONAME, 0 }, .n_groups = 2 }, true },
                { "allow group root to use keys in tenancy", { .uid = UID_NOBODY, .gid = GID_NOGROUP }, false },
                /* a group name is not a user name and vice versa */
                { "allow user nogroup to use keys in tenancy", { .uid = 1000, .gid = GID_NOGROUP }, false },
                { "allow group nobody to use keys in tenancy", { .uid = UID_NOBODY, .gid = 1000 }, false },
                /* numeric ids need no name */
                { "allow user id 54321 to use keys in tenancy", { .uid = UID_NONAME, .gid = GID_NONAME }, true },
                { "allow user id 54321 to use keys in tenancy", { .uid = 54320, .gid = GID_NONAME }, false },
                { "allow group id 54322 to use keys in tenancy", { .uid = 1000, .gid = GID_NONAME }, true },
                { "allow group id 54322 to use keys in tenancy", { .uid = 1000, .gid = 1000, .groups = { GID_NONAME }, .n_groups = 1 }, true },
                { "allow group id 54322 to use keys in tenancy", { .uid = UID_NONAME, .gid = 1000 }, false },
                { "allow any-user to use keys in tenancy", { .uid = UID_NONAME, .gid = GID_NONAME }, true },
                /* lists */
                { "allow group no-such-group-cmekd, user nobody to use keys in tenancy", { .uid = UID_NOBODY, .gid = GID_NOGROUP }, true },
                { "allow user id 1, group id 2,group nogroup to use keys in tenancy", { .uid = 1000, .gid = GID_NOGROUP }, true },
                { "allow user id 1, group id 2 to use keys in tenancy", { .uid = 1000, .gid = 1000 }, false },
                /* root is always allowed, whatever the statements say */
                { "allow user nobody to inspect keys in compartment X", { .uid = 0, .gid = 0 }, true },
                { "allow user root to use keys in tenancy", { .uid = 0, .gid = 0 }, true },
        };

        for (size_t i = 0; i < ARRAY_SIZE(table); i++) {
                Req r = table[i].req;
                r.verb = POLICY_VERB_USE;
                if (check_text(table[i].text, &r) != table[i].allowed)
                        fail_msg("case %zu '%s' uid=%u gid=%u: expected %s", i, table[i].text, (unsigned) r.uid,
                                 (unsigned) r.gid, table[i].allowed ? "allowed" : "denied");
        }
}

static void test_locations(void **state) {
        static const struct {
                const char *text;
                const char *compartment;
                bool allowed;
        } table[] = {
                { "allow user id 1000 to use keys in tenancy", NULL, true },
                { "allow user id 1000 to use keys in tenancy", "Prod", true },
                { "allow user id 1000 to use keys in compartment Prod", "Prod", true },
                { "allow user id 1000 to use keys in compartment Prod", NULL, false },
                { "allow user id 1000 to use keys in compartment Prod", "prod", false },
                { "allow user id 1000 to use keys in compartment Prod", "Dev", false },
                { "allow user id 1000 to use keys in compartment Prod", "Prod2", false },
                { "allow user id 1000 to use keys in compartment 'My Prod'", "My Prod", true },
                { "allow user id 1000 to use keys in COMPARTMENT \"it's\"", "it's", true },
                { "allow user id 1000 to use keys in compartment tenancy", NULL, false },
                { "allow user id 1000 to use keys in compartment tenancy", "tenancy", true },
        };

        for (size_t i = 0; i < ARRAY_SIZE(table); i++) {
                Req r = { .uid = 1000, .gid = 1000, .verb = POLICY_VERB_USE, .compartment = table[i].compartment };
                if (check_text(table[i].text, &r) != table[i].allowed)
                        fail_msg("case %zu '%s' in '%s': wrong answer", i, table[i].text, strempty(table[i].compartment));
        }
}

static void test_resource_types(void **state) {
        static const struct {
                const char *granted;
                const char *asked;
                bool allowed;
        } table[] = {
                { "keys", "keys", true },
                { "keys", "volumes", false },
                { "keys", "vaults", false },
                { "keys", "audit", false },
                { "key", "keys", true },
                { "KEYS", "keys", true },
                { "key-family", "keys", true },
                /* key-delegate (the DEK may leave the daemon) is its own type, not an alias of keys */
                { "key-delegate", "keys", false },
                { "keys", "key-delegate", false },
                { "key-delegate", "key-delegate", true },
                { "all-resources", "key-delegate", true },
                { "volumes", "volumes", true },
                { "volume", "volumes", true },
                { "volumes", "keys", false },
                { "vaults", "vaults", true },
                { "audit", "audit", true },
                { "audit", "keys", false },
                { "all-resources", "keys", true },
                { "all-resources", "volumes", true },
                { "all-resources", "vaults", true },
                { "all-resources", "audit", true },
                { "keys", "key", true },  /* requests may use the singular too */
        };

        for (size_t i = 0; i < ARRAY_SIZE(table); i++) {
                _cleanup_free_ char *text = NULL;
                Req r = { .uid = 1000, .gid = 1000, .verb = POLICY_VERB_READ, .type = table[i].asked };
                assert_true(asprintf(&text, "allow user id 1000 to read %s in tenancy", table[i].granted) > 0);
                if (check_text(text, &r) != table[i].allowed)
                        fail_msg("'%s' for %s: wrong answer", text, table[i].asked);
        }
}

static void test_conditions(void **state) {
        static const char prefix[] = "allow user id 1000 to use all-resources in tenancy where ";
        static const struct {
                const char *condition;
                const char *compartment, *key_id, *volume_id;
                bool allowed;
        } table[] = {
                { "target.key.id = 'K1'", NULL, "K1", NULL, true },
                { "target.key.id = 'K1'", NULL, "K2", NULL, false },
                { "target.key.id = 'K1'", NULL, "k1", NULL, false },
                { "target.key.id = 'K1'", NULL, NULL, NULL, false },
                { "target.key.id = 'K1'", NULL, "", NULL, false },
                { "target.key.id = 'K1'", NULL, NULL, "K1", false },
                { "target.key.id=K1", NULL, "K1", NULL, true },
                { "TARGET.KEY.ID = \"K1\"", NULL, "K1", NULL, true },
                { "target.key.id = ocid1.key.oc1..aaaa-b_c", NULL, "ocid1.key.oc1..aaaa-b_c", NULL, true },
                { "target.key.id = 'a # b'", NULL, "a # b", NULL, true },
                /* '!=': an attribute the request does not carry never matches */
                { "target.key.id != 'K1'", NULL, "K2", NULL, true },
                { "target.key.id != 'K1'", NULL, "K1", NULL, false },
                { "target.key.id != 'K1'", NULL, NULL, NULL, false },
                { "target.key.id != 'K1'", NULL, "", NULL, false },
                { "target.key.id!='K1'", NULL, "K2", NULL, true },
                { "target.volume.id = 'V1'", NULL, NULL, "V1", true },
                { "target.volume.id = 'V1'", NULL, "V1", NULL, false },
                { "target.volume.id != 'V1'", NULL, NULL, "V2", true },
                { "target.compartment.name = Prod", "Prod", NULL, NULL, true },
                { "target.compartment.name = Prod", "Dev", NULL, NULL, false },
                { "target.compartment.name = Prod", NULL, NULL, NULL, false },
                { "target.compartment.name != Prod", NULL, NULL, NULL, false },
                { "target.compartment.name != Prod", "Dev", NULL, NULL, true },
                { "any { target.key.id = 'A', target.key.id = 'B' }", NULL, "A", NULL, true },
                { "any { target.key.id = 'A', target.key.id = 'B' }", NULL, "B", NULL, true },
                { "any { target.key.id = 'A', target.key.id = 'B' }", NULL, "C", NULL, false },
                { "any{target.key.id='A',target.key.id='B'}", NULL, "B", NULL, true },
                { "all { target.key.id != 'A', target.volume.id = 'V' }", NULL, "B", "V", true },
                { "all { target.key.id != 'A', target.volume.id = 'V' }", NULL, "A", "V", false },
                { "all { target.key.id != 'A', target.volume.id = 'V' }", NULL, "B", NULL, false },
                { "ALL { target.key.id = 'A' }", NULL, "A", NULL, true },
                { "any { all { target.key.id = 'A', target.volume.id = 'V' }, target.key.id = 'Z' }", NULL, "A", "V", true },
                { "any { all { target.key.id = 'A', target.volume.id = 'V' }, target.key.id = 'Z' }", NULL, "A", "W", false },
                { "any { all { target.key.id = 'A', target.volume.id = 'V' }, target.key.id = 'Z' }", NULL, "Z", NULL, true },
                { "all { any { target.key.id = A, target.key.id = B }, any { target.compartment.name = Prod } }", "Prod", "B", NULL, true },
                { "all { any { target.key.id = A, target.key.id = B }, any { target.compartment.name = Prod } }", "Dev", "B", NULL, false },
        };

        for (size_t i = 0; i < ARRAY_SIZE(table); i++) {
                _cleanup_free_ char *text = NULL;
                Req r = {
                        .uid = 1000, .gid = 1000, .verb = POLICY_VERB_USE,
                        .compartment = table[i].compartment,
                        .key_id = table[i].key_id,
                        .volume_id = table[i].volume_id,
                };
                assert_true(asprintf(&text, "%s%s", prefix, table[i].condition) > 0);
                if (check_text(text, &r) != table[i].allowed)
                        fail_msg("case %zu 'where %s' (compartment=%s key=%s volume=%s): expected %s", i,
                                 table[i].condition, strempty(table[i].compartment), strempty(table[i].key_id),
                                 strempty(table[i].volume_id), table[i].allowed ? "allowed" : "denied");
        }
}

static void test_comments_and_lines(void **state) {
        static const char text[] =
                "# cmekd policy\n"
                "\n"
                "   # indented comment\n"
                "allow group SecurityAdmins to manage keys in compartment Prod # trailing comment\n"
                "\t\n"
                "allow user id 1000 to use keys in compartment 'a#b'\r\n"
                "allow user id 1001 to inspect vaults in tenancy#no space\n"
                "allow user id 1002 to read audit in tenancy";     /* no final newline */
        _cleanup_(policy_freep) Policy *p = parse_ok(text);
        static const struct {
                Req req;
                unsigned line;  /* 0: denied */
        } table[] = {
                { { .uid = 1000, .gid = 1000, .verb = POLICY_VERB_USE, .compartment = "a#b" }, 6 },
                { { .uid = 1000, .gid = 1000, .verb = POLICY_VERB_USE, .compartment = "a" }, 0 },
                { { .uid = 1001, .gid = 1001, .verb = POLICY_VERB_INSPECT, .type = "vaults" }, 7 },
                { { .uid = 1002, .gid = 1002, .verb = POLICY_VERB_READ, .type = "audit" }, 8 },
                { { .uid = 1002, .gid = 1002, .verb = POLICY_VERB_USE, .type = "audit" }, 0 },
        };

        assert_int_equal(policy_n_statements(p), 4);
        for (size_t i = 0; i < ARRAY_SIZE(table); i++) {
                PolicyRequest req = to_request(&table[i].req);
                unsigned line = 4242;
                bool allowed = policy_check_line(p, &req, &line);
                assert_int_equal(allowed, table[i].line > 0);
                if (allowed)
                        assert_int_equal(line, table[i].line);
                else
                        assert_int_equal(line, 4242); /* untouched */
        }

        /* The first matching statement is reported; root is line 0. */
        _cleanup_(policy_freep) Policy *q = parse_ok("allow user id 7 to read keys in tenancy\n"
                                                     "allow user id 7 to manage keys in tenancy\n");
        Req r = { .uid = 7, .gid = 7, .verb = POLICY_VERB_READ };
        PolicyRequest req = to_request(&r);
        unsigned line = 4242;
        assert_true(policy_check_line(q, &req, &line));
        assert_int_equal(line, 1);
        req.verb = POLICY_VERB_MANAGE;
        assert_true(policy_check_line(q, &req, &line));
        assert_int_equal(line, 2);
        req.uid = 0;
        assert_true(policy_check_line(q, &req, &line));
        assert_int_equal(line, 0);
}

#define W "allow user nobody to use keys in tenancy where "     /* 47 bytes */

static void test_errors(void **state) {
        static const struct {
                const char *text;
                const char *error;
        } table[] = {
                { "bogus", "policy:1:1: expected 'allow', got 'bogus'" },
                { "'allow' user nobody to use keys in tenancy", "policy:1:1: expected 'allow', got ''allow''" },
                { "allow", "policy:1:6: expected a subject (user NAME, group NAME, user id N, group id N, any-user), got end of line" },
                { "allow someone to use keys in tenancy",
                  "policy:1:7: expected a subject (user NAME, group NAME, user id N, group id N, any-user), got 'someone'" },
                { "allow user", "policy:1:11: expected a user name or 'id', got end of line" },
                { "allow user # comment", "policy:1:12: expected a user name or 'id', got end of line" },
                { "allow group to use keys in tenancy", "policy:1:13: expected a group name or 'id', got 'to'" },
                { "allow user '' to use keys in tenancy", "policy:1:12: expected a user name or 'id', got an empty string" },
                { "allow user id abc to use keys in tenancy", "policy:1:15: expected a numeric user id, got 'abc'" },
                { "allow user id -1 to use keys in tenancy", "policy:1:15: expected a numeric user id, got '-1'" },
                { "allow group id 4294967295 to use keys in tenancy", "policy:1:16: expected a numeric group id, got '4294967295'" },
                { "allow group id 99999999999 to use keys in tenancy", "policy:1:16: expected a numeric group id, got '99999999999'" },
                { "allow user nobody use keys in tenancy", "policy:1:19: expected ',' or 'to', got 'use'" },
                { "allow user nobody, to use keys in tenancy",
                  "policy:1:20: expected a subject (user NAME, group NAME, user id N, group id N, any-user), got 'to'" },
                { "allow user nobody to destroy keys in tenancy",
                  "policy:1:22: expected a verb (inspect, read, use, manage), got 'destroy'" },
                { "allow user nobody to 'use' keys in tenancy",
                  "policy:1:22: expected a verb (inspect, read, use, manage), got ''use''" },
                { "allow user nobody to use secrets in tenancy",
                  "policy:1:26: expected a resource type (keys, key-delegate, volumes, vaults, audit, all-resources), got 'secrets'" },
                { "allow user nobody to use keys on tenancy", "policy:1:31: expected 'in', got 'on'" },
                { "allow user nobody to use keys in region",
                  "policy:1:34: expected a location (tenancy, compartment NAME), got 'region'" },
                { "allow user nobody to use keys in compartment", "policy:1:45: expected a compartment name, got end of line" },
                { "allow user nobody to use keys in compartment ''", "policy:1:46: expected a compartment name, got an empty string" },
                { "allow user nobody to use keys in compartment where", "policy:1:46: expected a compartment name, got 'where'" },
                { "allow user nobody to use keys in compartment 'Prod\"", "policy:1:46: expected a closing \"'\", got end of line" },
                { "allow user nobody to use keys in compartment \"Prod", "policy:1:46: expected a closing '\"', got end of line" },
                { "allow user nobody to use keys in tenancy extra", "policy:1:42: expected 'where' or end of line, got 'extra'" },
                { W, "policy:1:48: expected a condition (target.key.id, target.volume.id, target.compartment.name, any {...}, all {...}), got end of line" },
                { W "target.key = 'x'",
                  "policy:1:48: expected a condition (target.key.id, target.volume.id, target.compartment.name, any {...}, all {...}), got 'target.key'" },
                { W "target.key.id == 'x'", "policy:1:63: expected a value (a quoted string or a word), got '='" },
                { W "target.key.id 'x'", "policy:1:62: expected '=' or '!=', got ''x''" },
                { W "target.key.id = 'x", "policy:1:64: expected a closing \"'\", got end of line" },
                { W "target.key.id ! 'x'", "policy:1:62: expected '!=', got '!'" },
                { W "target.key.id = ", "policy:1:64: expected a value (a quoted string or a word), got end of line" },
                { W "any target.key.id = 'x'", "policy:1:52: expected '{', got 'target.key.id'" },
                { W "any { target.key.id = 'x' target.key.id = 'y' }", "policy:1:74: expected ',' or '}', got 'target.key.id'" },
                { W "any { }",
                  "policy:1:54: expected a condition (target.key.id, target.volume.id, target.compartment.name, any {...}, all {...}), got '}'" },
                { W "all { target.key.id = x, }",
                  "policy:1:73: expected a condition (target.key.id, target.volume.id, target.compartment.name, any {...}, all {...}), got '}'" },
                { W "any { target.key.id = 'x'", "policy:1:73: expected ',' or '}', got end of line" },
                { W "target.key.id = 'x' and target.volume.id = 'y'", "policy:1:68: expected end of line, got 'and'" },
                { W "target.key.id = 'x' }", "policy:1:68: expected end of line, got '}'" },
                { "# header\n\nallow user nobody to use keys in tenancy\n  allow user nobody to use keyz in tenancy\n",
                  "policy:4:28: expected a resource type (keys, key-delegate, volumes, vaults, audit, all-resources), got 'keyz'" },
                { "allow user nobody to use keys in tenancy\r\nallow user nobody to use keys in tenancy\rallow\r\n",
                  "policy:2:42: expected 'where' or end of line, got 'allow'" },
                { "allow user no\001body to use keys in tenancy", "policy:1:14: expected printable text, got '\\x01'" },
                { "allow user nobody to use keys in tenancy\n\033[31m", "policy:2:1: expected printable text, got '\\x1b'" },
                { "allow \303\274ser nobody to use keys in tenancy",
                  "policy:1:7: expected a subject (user NAME, group NAME, user id N, group id N, any-user), got '\\xc3\\xbcser'" },
                { "allow aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa to use keys in tenancy",
                  "policy:1:7: expected a subject (user NAME, group NAME, user id N, group id N, any-user), got "
                  "'aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa'..." },
                { "allow user a\\b to use keyz in tenancy",
                  "policy:1:23: expected a resource type (keys, key-delegate, volumes, vaults, audit, all-resources), got 'keyz'" },
                { "allow user nobody to use keys in tenancy\n{", "policy:2:1: expected 'allow', got '{'" },
        };

        for (size_t i = 0; i < ARRAY_SIZE(table); i++) {
                _cleanup_free_ char *error = NULL;
                Policy *p = NULL;
                int r;

                r = policy_parse_string(table[i].text, "policy", &p, &error);
                if (r != -EINVAL)
                        fail_msg("case %zu: '%s' parsed (%d)", i, table[i].text, r);
                assert_null(p);
                assert_non_null(error);
                if (!streq(error, table[i].error))
                        fail_msg("case %zu:\n   got: %s\nwanted: %s", i, error, table[i].error);
        }

        /* Without a file name, and without an error pointer. */
        _cleanup_free_ char *error = NULL;
        Policy *p = NULL;
        assert_int_equal(policy_parse_string("deny", NULL, &p, &error), -EINVAL);
        assert_string_equal(error, "<string>:1:1: expected 'allow', got 'deny'");
        assert_int_equal(policy_parse_string("deny", NULL, &p, NULL), -EINVAL);
        assert_null(p);
        assert_int_equal(policy_parse_string(NULL, NULL, &p, NULL), -EINVAL);
}

/* A statement padded with a trailing comment to exactly n bytes. */
static char *padded_statement(size_t n) {
        static const char s[] = "allow user id 1000 to use keys in tenancy #";
        char *t = malloc(n + 1);

        assert_non_null(t);
        assert_true(n >= sizeof(s) - 1);
        memcpy(t, s, sizeof(s) - 1);
        memset(t + sizeof(s) - 1, 'x', n - (sizeof(s) - 1));
        t[n] = 0;
        return t;
}

static void test_limit_line_length(void **state) {
        _cleanup_free_ char *ok = padded_statement(POLICY_LINE_MAX), *bad = padded_statement(POLICY_LINE_MAX + 1);
        _cleanup_free_ char *error = NULL, *expected = NULL;
        _cleanup_(policy_freep) Policy *p = parse_ok(ok);
        Policy *q = NULL;

        assert_int_equal(policy_n_statements(p), 1);
        assert_int_equal(policy_parse_string(bad, "policy", &q, &error), -EINVAL);
        assert_true(asprintf(&expected, "policy:1:%u: expected at most %u bytes in a line, got %u",
                             POLICY_LINE_MAX + 1, POLICY_LINE_MAX, POLICY_LINE_MAX + 1) > 0);
        assert_string_equal(error, expected);
}

static void test_limit_statements(void **state) {
        static const char line[] = "allow user id 1000 to use keys in tenancy\n";
        _cleanup_free_ char *text = NULL, *error = NULL, *expected = NULL;
        size_t n = POLICY_STATEMENTS_MAX;
        Policy *p = NULL;

        text = malloc((n + 1) * (sizeof(line) - 1) + 16);
        assert_non_null(text);
        for (size_t i = 0; i < n; i++)
                memcpy(text + i * (sizeof(line) - 1), line, sizeof(line) - 1);
        strcpy(text + n * (sizeof(line) - 1), "# end\n");
        assert_int_equal(policy_parse_string(text, "policy", &p, &error), 0);
        assert_int_equal(policy_n_statements(p), n);
        p = policy_free(p);

        strcpy(text + n * (sizeof(line) - 1), "  allow\n");
        assert_int_equal(policy_parse_string(text, "policy", &p, &error), -EINVAL);
        assert_true(asprintf(&expected, "policy:%zu:3: expected at most %u statements, got 'allow'", n + 1,
                             POLICY_STATEMENTS_MAX) > 0);
        assert_string_equal(error, expected);
}

/* "allow ... where " + n nested "any { " + "target.key.id = k" + n " }". */
static char *nested(size_t n) {
        char *t = NULL;
        size_t size = 0;
        FILE *f = open_memstream(&t, &size);

        assert_non_null(f);
        fputs("allow user id 1000 to use keys in tenancy where ", f);
        for (size_t i = 0; i < n; i++)
                fputs("any { ", f);
        fputs("target.key.id = k", f);
        for (size_t i = 0; i < n; i++)
                fputs(" }", f);
        assert_int_equal(fclose(f), 0);
        return t;
}

static void test_limit_nesting(void **state) {
        _cleanup_free_ char *ok = nested(POLICY_CONDITION_DEPTH_MAX), *bad = nested(POLICY_CONDITION_DEPTH_MAX + 1);
        _cleanup_free_ char *deep = nested(600), *error = NULL, *expected = NULL;
        _cleanup_(policy_freep) Policy *p = parse_ok(ok);
        Req r = { .uid = 1000, .gid = 1000, .verb = POLICY_VERB_USE, .key_id = "k" };
        PolicyRequest req = to_request(&r);
        Policy *q = NULL;

        assert_true(policy_check(p, &req));
        assert_int_equal(policy_parse_string(bad, "policy", &q, &error), -EINVAL);
        /* 49: the first "any"; each level adds 6 bytes */
        assert_true(asprintf(&expected, "policy:1:%u: expected at most %u nested any/all, got 'any'",
                             49 + 6 * POLICY_CONDITION_DEPTH_MAX, POLICY_CONDITION_DEPTH_MAX) > 0);
        assert_string_equal(error, expected);
        /* Far deeper than the limit: still an error, not a stack overflow. */
        assert_int_equal(policy_parse_string(deep, "policy", &q, NULL), -EINVAL);
        assert_null(q);
}

static void test_limit_conditions_and_subjects(void **state) {
        _cleanup_free_ char *error = NULL;
        char *t = NULL;
        size_t size = 0;
        FILE *f;
        Policy *p = NULL;

        /* any { } plus POLICY_CONDITIONS_MAX - 1 leaves is the maximum */
        for (unsigned extra = 0; extra <= 1; extra++) {
                f = open_memstream(&t, &size);
                assert_non_null(f);
                fputs("allow user id 1000 to use keys in tenancy where any { ", f);
                for (unsigned i = 0; i < POLICY_CONDITIONS_MAX - 1 + extra; i++)
                        fprintf(f, "%starget.key.id=k%u", i ? "," : "", i);
                fputs("}", f);
                assert_int_equal(fclose(f), 0);
                assert_int_equal(policy_parse_string(t, "policy", &p, &error), extra ? -EINVAL : 0);
                if (extra)
                        assert_non_null(strstr(error, "expected at most 64 conditions in a statement, got 'target.key.id'"));
                p = policy_free(p);
                free(t);
                t = NULL;
        }

        for (unsigned extra = 0; extra <= 1; extra++) {
                f = open_memstream(&t, &size);
                assert_non_null(f);
                fputs("allow ", f);
                for (unsigned i = 0; i < POLICY_SUBJECTS_MAX + extra; i++)
                        fprintf(f, "%suser id %u", i ? ", " : "", i + 1);
                fputs(" to use keys in tenancy", f);
                assert_int_equal(fclose(f), 0);
                free(error);
                error = NULL;
                assert_int_equal(policy_parse_string(t, "policy", &p, &error), extra ? -EINVAL : 0);
                if (extra)
                        assert_non_null(strstr(error, "expected at most 64 subjects in a statement, got 'user'"));
                else {
                        Req r = { .uid = POLICY_SUBJECTS_MAX, .gid = 1, .verb = POLICY_VERB_USE };
                        PolicyRequest req = to_request(&r);
                        assert_true(policy_check(p, &req));
                }
                p = policy_free(p);
                free(t);
                t = NULL;
        }
}

static void test_explain(void **state) {
        static const struct {
                Req req;
                const char *explanation;
        } table[] = {
                { { .uid = UID_NOBODY, .gid = GID_NOGROUP, .verb = POLICY_VERB_USE, .compartment = "Prod", .key_id = "ocid1.key.x" },
                  "allow user nobody to use keys in compartment Prod where target.key.id = 'ocid1.key.x'" },
                { { .uid = UID_NONAME, .gid = GID_NONAME, .verb = POLICY_VERB_INSPECT, .type = "volumes" },
                  "allow user id 54321 to inspect volumes in tenancy" },
                { { .uid = UID_NOBODY, .gid = GID_NOGROUP, .verb = POLICY_VERB_USE, .type = "key-delegate", .compartment = "Dev",
                    .key_id = "K", .volume_id = "3f1c-uuid" },
                  "allow user nobody to use key-delegate in compartment Dev where target.key.id = 'K'" },
                { { .uid = UID_NOBODY, .gid = GID_NOGROUP, .verb = POLICY_VERB_MANAGE, .type = "volumes", .compartment = "",
                    .key_id = "K", .volume_id = "3f1c-uuid" },
                  "allow user nobody to manage volumes in tenancy where target.volume.id = '3f1c-uuid'" },
                { { .uid = UID_NOBODY, .gid = GID_NOGROUP, .verb = POLICY_VERB_READ, .type = "vaults", .key_id = "K" },
                  "allow user nobody to read vaults in tenancy where target.key.id = 'K'" },
                { { .uid = UID_NOBODY, .gid = GID_NOGROUP, .verb = POLICY_VERB_READ, .type = "audit" },
                  "allow user nobody to read audit in tenancy" },
                { { .uid = UID_NOBODY, .gid = GID_NOGROUP, .verb = POLICY_VERB_USE, .type = "key", .compartment = "My Prod",
                    .key_id = "it's" },
                  "allow user nobody to use keys in compartment 'My Prod' where target.key.id = \"it's\"" },
                { { .uid = UID_NOBODY, .gid = GID_NOGROUP, .verb = POLICY_VERB_USE, .compartment = "where", .key_id = "'\"" },
                  "allow user nobody to use keys in compartment 'where'" },
                { { .uid = UID_NOBODY, .gid = GID_NOGROUP, .verb = POLICY_VERB_USE, .key_id = "bad\nid" },
                  "allow user nobody to use keys in tenancy" },
        };

        for (size_t i = 0; i < ARRAY_SIZE(table); i++) {
                _cleanup_free_ char *s = NULL;
                PolicyRequest req = to_request(&table[i].req);

                s = policy_explain_denial(&req);
                assert_non_null(s);
                if (!streq(s, table[i].explanation))
                        fail_msg("case %zu:\n   got: %s\nwanted: %s", i, s, table[i].explanation);

                /* What the admin is told to add must parse and must allow exactly this request. */
                _cleanup_(policy_freep) Policy *p = parse_ok(s);
                assert_true(policy_check(p, &req));
        }

        /* Unwritable or invalid requests */
        static const Req bad[] = {
                { .uid = 1000, .verb = POLICY_VERB_USE, .compartment = "new\nline" },
                { .uid = 1000, .verb = POLICY_VERB_USE, .compartment = "'both\"" },
                { .uid = 1000, .verb = _POLICY_VERB_MAX },
                { .uid = 1000, .verb = POLICY_VERB_USE, .type = "secrets" },
        };
        for (size_t i = 0; i < ARRAY_SIZE(bad); i++) {
                PolicyRequest req = to_request(&bad[i]);
                errno = 0;
                assert_null(policy_explain_denial(&req));
                assert_int_equal(errno, EINVAL);
        }
        assert_null(policy_explain_denial(NULL));
}

/* The statements of cmekd-policy(5) and the seeds it is based on. */
static void test_examples(void **state) {
        static const char text[] =
                "# Security administrators create, rotate and retire keys in Prod.\n"
                "allow group SecurityAdmins to manage keys in compartment Prod\n"
                "allow user backup to use keys in compartment Prod where target.key.id = 'ocid1.key.oc1..backup'\n"
                "allow group operators to read all-resources in tenancy\n"
                "allow user id 990 to use volumes in tenancy where any { target.volume.id = vol-a, target.volume.id = vol-b }\n"
                "Allow group nogroup to use key-delegate in compartment Prod where target.key.id = <key-ocid>\n"
                "Allow group nogroup to read keys in compartment Prod where target.key.id = <keyocid>\n";
        _cleanup_(policy_freep) Policy *p = parse_ok(text);
        static const struct {
                Req req;
                unsigned line;
        } table[] = {
                { { .uid = 990, .gid = 990, .verb = POLICY_VERB_USE, .type = "volumes", .volume_id = "vol-b" }, 5 },
                { { .uid = 990, .gid = 990, .verb = POLICY_VERB_USE, .type = "volumes", .volume_id = "vol-c" }, 0 },
                { { .uid = 1000, .gid = GID_NOGROUP, .verb = POLICY_VERB_USE, .type = "key-delegate", .compartment = "Prod", .key_id = "<key-ocid>" }, 6 },
                /* a delegate grant is not a grant to use the key through the daemon */
                { { .uid = 1000, .gid = GID_NOGROUP, .verb = POLICY_VERB_USE, .compartment = "Prod", .key_id = "<key-ocid>" }, 0 },
                { { .uid = 1000, .gid = GID_NOGROUP, .verb = POLICY_VERB_READ, .compartment = "Prod", .key_id = "<keyocid>" }, 7 },
                { { .uid = 1000, .gid = GID_NOGROUP, .verb = POLICY_VERB_USE, .compartment = "Prod", .key_id = "<keyocid>" }, 0 },
        };

        assert_int_equal(policy_n_statements(p), 6);
        for (size_t i = 0; i < ARRAY_SIZE(table); i++) {
                PolicyRequest req = to_request(&table[i].req);
                unsigned line = 0;
                assert_int_equal(policy_check_line(p, &req, &line), table[i].line > 0);
                assert_int_equal(line, table[i].line);
        }
}

static void test_has_grant_in(void **state) {
        static const char text[] =
                "allow user id 1000 to inspect vaults in tenancy\n"
                "allow user id 1001 to use keys in compartment Dev where target.key.id = 'K1'\n"
                "allow group id 1002 to read audit in compartment Dev\n";
        _cleanup_(policy_freep) Policy *p = parse_ok(text);
        static const struct {
                Req req;
                bool has;
        } table[] = {
                { { .uid = 0, .gid = 0, .compartment = "Prod" }, true },      /* root */
                { { .uid = 1000, .gid = 1000, .compartment = "Prod" }, true }, /* tenancy counts everywhere */
                { { .uid = 1000, .gid = 1000 }, true },
                { { .uid = 1001, .gid = 1001, .compartment = "Dev" }, true },  /* condition ignored */
                { { .uid = 1001, .gid = 1001, .compartment = "Prod" }, false },
                { { .uid = 1001, .gid = 1001 }, false },                       /* a compartment grant is not a tenancy one */
                { { .uid = 1003, .gid = 1003, .groups = { 1002 }, .n_groups = 1, .compartment = "Dev" }, true },
                { { .uid = 1003, .gid = 1003, .compartment = "Dev" }, false },
        };

        for (size_t i = 0; i < ARRAY_SIZE(table); i++) {
                PolicyRequest req = to_request(&table[i].req);
                if (policy_has_grant_in(p, &req) != table[i].has)
                        fail_msg("case %zu: expected %s", i, table[i].has ? "a grant" : "no grant");
        }
        {
                PolicyRequest req = to_request(&table[1].req);
                assert_false(policy_has_grant_in(NULL, &req));
                assert_false(policy_has_any_grant(NULL, &req));
        }
        assert_false(policy_has_grant_in(p, NULL));
        assert_false(policy_has_any_grant(p, NULL));

        /* anywhere: a grant in Dev counts for a request about Prod or the tenancy */
        static const struct {
                Req req;
                bool has;
        } any[] = {
                { { .uid = 0, .gid = 0 }, true },
                { { .uid = 1001, .gid = 1001, .compartment = "Prod" }, true },
                { { .uid = 1001, .gid = 1001 }, true },
                { { .uid = 1003, .gid = 1003, .groups = { 1002 }, .n_groups = 1 }, true },
                { { .uid = 1003, .gid = 1003, .compartment = "Dev" }, false },
                { { .uid = 1004, .gid = 1004 }, false },
        };
        for (size_t i = 0; i < ARRAY_SIZE(any); i++) {
                PolicyRequest req = to_request(&any[i].req);
                if (policy_has_any_grant(p, &req) != any[i].has)
                        fail_msg("anywhere case %zu: expected %s", i, any[i].has ? "a grant" : "no grant");
        }
}

static char *write_temp(const char *data, size_t size, mode_t mode) {
        char *path = strdup("/tmp/test-policy.XXXXXX");
        int fd;

        assert_non_null(path);
        fd = mkstemp(path);
        assert_true(fd >= 0);
        assert_int_equal(write(fd, data, size), (ssize_t) size);
        assert_int_equal(fchmod(fd, mode), 0);
        assert_int_equal(close(fd), 0);
        return path;
}

static void test_load(void **state) {
        static const char good[] = "# seed\nallow group SecurityAdmins to manage keys in compartment Prod\n";
        static const char with_nul[] = "allow user nobody to use keys in tenancy\nallo\0w";
        _cleanup_free_ char *path = NULL, *nul_path = NULL, *error = NULL, *expected = NULL, *big = NULL;
        Policy *p = NULL;

        path = write_temp(good, sizeof(good) - 1, 0644);
        assert_int_equal(policy_load(path, &p, &error), 0);
        assert_null(error);
        assert_int_equal(policy_n_statements(p), 1);
        p = policy_free(p);

        /* Whoever can write the policy can grant themselves everything. */
        assert_int_equal(chmod(path, 0666), 0);
        assert_int_equal(policy_load(path, &p, &error), -EPERM);
        assert_null(p);
        assert_true(asprintf(&expected, "%s: expected a file owned by root and not writable by others, "
                             "got owner %u and mode 0666", path, (unsigned) geteuid()) > 0);
        assert_string_equal(error, expected);
        (void) unlink(path);

        assert_int_equal(policy_load(path, &p, NULL), -ENOENT);
        assert_int_equal(policy_load("/", &p, NULL), -EBADFD);

        /* A NUL byte is reported where it is, not silently ends the file. */
        nul_path = write_temp(with_nul, sizeof(with_nul) - 1, 0600);
        free(error);
        error = NULL;
        assert_int_equal(policy_load(nul_path, &p, &error), -EINVAL);
        free(expected);
        expected = NULL;
        assert_true(asprintf(&expected, "%s:2:5: expected printable text, got '\\x00'", nul_path) > 0);
        assert_string_equal(error, expected);
        (void) unlink(nul_path);
        free(nul_path);

        big = calloc(1, POLICY_FILE_MAX + 1);
        assert_non_null(big);
        memset(big, '\n', POLICY_FILE_MAX + 1);
        nul_path = write_temp(big, POLICY_FILE_MAX + 1, 0600);
        assert_int_equal(policy_load(nul_path, &p, NULL), -EFBIG);
        (void) unlink(nul_path);
}

/* Every prefix and many random mutations of a policy that uses every construct must either parse
 * or fail with -EINVAL and a message: the parser is exposed to whatever an admin writes. */
static void test_robustness(void **state) {
        static const char text[] =
                "# all constructs\n"
                "allow group 'Security Admins', user id 1000, any-user to manage all-resources in compartment \"Prod\" "
                "where any { all { target.key.id = 'a', target.volume.id != b }, target.compartment.name = Prod }\n"
                "allow user nobody to inspect volumes in tenancy\n";
        char buf[sizeof(text)];
        unsigned seed = 12345;

        for (size_t n = 0; n <= sizeof(text) - 1; n++) {
                _cleanup_free_ char *prefix = strndup(text, n), *error = NULL;
                Policy *p = NULL;
                int r = policy_parse_string(prefix, "policy", &p, &error);

                assert_true(r == 0 || r == -EINVAL);
                assert_true(r == 0 ? p && !error : !p && error && strncmp(error, "policy:", 7) == 0);
                policy_free(p);
        }

        for (unsigned i = 0; i < 20000; i++) {
                _cleanup_free_ char *error = NULL;
                Policy *p = NULL;
                int r;

                memcpy(buf, text, sizeof(text));
                for (unsigned k = 0; k < 1 + i % 4; k++) {
                        size_t pos = (size_t) rand_r(&seed) % (sizeof(text) - 1);
                        static const char alphabet[] = "{},=!'\"# \n\tx\001\377";
                        buf[pos] = alphabet[(size_t) rand_r(&seed) % (sizeof(alphabet) - 1)];
                }
                r = policy_parse_string(buf, "policy", &p, &error);
                assert_true(r == 0 || r == -EINVAL);
                assert_true(r == 0 ? p && !error : !p && error != NULL);
                if (p) {
                        PolicyRequest req = { .uid = 1000, .gid = 1000, .verb = POLICY_VERB_USE, .resource_type = "keys",
                                              .compartment = "Prod", .key_id = "a" };
                        (void) policy_check(p, &req);
                }
                policy_free(p);
        }
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_verb_strings),
                cmocka_unit_test(test_verb_ordering),
                cmocka_unit_test(test_no_policy),
                cmocka_unit_test(test_invalid_requests),
                cmocka_unit_test(test_subjects),
                cmocka_unit_test(test_locations),
                cmocka_unit_test(test_resource_types),
                cmocka_unit_test(test_conditions),
                cmocka_unit_test(test_comments_and_lines),
                cmocka_unit_test(test_errors),
                cmocka_unit_test(test_limit_line_length),
                cmocka_unit_test(test_limit_statements),
                cmocka_unit_test(test_limit_nesting),
                cmocka_unit_test(test_limit_conditions_and_subjects),
                cmocka_unit_test(test_explain),
                cmocka_unit_test(test_examples),
                cmocka_unit_test(test_has_grant_in),
                cmocka_unit_test(test_load),
                cmocka_unit_test(test_robustness),
                cmocka_unit_test(test_has_any_grant),
        };

        /* The automake harness reads TAP (TEST_LOG_DRIVER is tap-driver.sh). */
        cmocka_set_message_output(CM_OUTPUT_TAP);
        return cmocka_run_group_tests_name("policy", tests, NULL, NULL);
}
