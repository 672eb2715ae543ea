/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* io.cmek.Service: Status and PolicyCheck here; AuditShow and AuditVerify in daemon/audit-glue.c. */
#include <grp.h>
#include <pwd.h>
#include <stdio.h>
#include <sys/prctl.h>

#include "cmek-varlink.h"
#include "daemon.h"
#include "policy.h"

static int method_status(Manager *m, Call *c, json_object *params) {
        json_object *p = json_object_new_object();
        int r = manager_authorize(m, c, "inspect", "vaults", NULL, NULL, NULL);
        if (r < 0) {
                json_object_put(p);
                return r;
        }
        json_object_object_add(p, "version", json_object_new_string(PACKAGE_VERSION));
        json_object_object_add(p, "state_dir", json_object_new_string(m->state_dir));
        json_object_object_add(p, "pid", json_object_new_int64(getpid()));
        json_object_object_add(p, "started_usec", json_object_new_int64((int64_t) m->start_usec));
        json_object_object_add(p, "socket_activated", json_object_new_boolean(m->n_listen_fds > 0));
        json_object_object_add(p, "policy", m->policy_path ? json_object_new_string(m->policy_path) : NULL);
        json_object_object_add(p, "policy_statements", json_object_new_int64((int64_t) policy_n_statements(m->policy)));
        json_object_object_add(p, "clients", json_object_new_int64(m->n_connections));
        json_object_object_add(p, "test_hooks", json_object_new_boolean(m->test_hooks));
        json_object_object_add(p, "dumpable", json_object_new_boolean(prctl(PR_GET_DUMPABLE) > 0));
        manager_audit_describe(m, p);   /* "audit", "audit_unwritten" (daemon/audit-glue.c) */
        return call_reply(c, p);
}

static int lookup_ids(const char *user, const char *group, Caller *ret, char **ret_err) {
        struct passwd *pw = NULL;
        struct group *gr;

        *ret = (Caller) { .uid = (uid_t) -1, .gid = (gid_t) -1 };
        if (user) {
                char *end;
                unsigned long u = strtoul(user, &end, 10);
                pw = *end || end == user ? getpwnam(user) : getpwuid((uid_t) u);
                if (!pw)
                        return asprintf(ret_err, "unknown user '%s'", user) < 0 ? -ENOMEM : -ESRCH;
                ret->uid = pw->pw_uid;
                ret->gid = pw->pw_gid;
                int ng = 64;
                ret->groups = calloc((size_t) ng, sizeof(gid_t));
                if (!ret->groups)
                        return -ENOMEM;
                if (getgrouplist(pw->pw_name, pw->pw_gid, ret->groups, &ng) < 0)
                        ng = 0;
                ret->n_groups = (size_t) ng;
        }
        if (group) {
                gr = getgrnam(group);
                if (!gr)
                        return asprintf(ret_err, "unknown group '%s'", group) < 0 ? -ENOMEM : -ESRCH;
                gid_t *ng = realloc(ret->groups, (ret->n_groups + 1) * sizeof(gid_t));
                if (!ng)
                        return -ENOMEM;
                ret->groups = ng;
                ret->groups[ret->n_groups++] = gr->gr_gid;
                if (!user)
                        ret->gid = gr->gr_gid;
        }
        return 0;
}

static int method_policy_check(Manager *m, Call *c, json_object *params) {
        const char *user = cmek_json_get_string(params, "user"), *group = cmek_json_get_string(params, "group");
        const char *verb = cmek_json_get_string(params, "verb"), *resource = cmek_json_get_string(params, "resource");
        const char *compartment = cmek_json_get_string(params, "compartment");
        const char *key_id = cmek_json_get_string(params, "key_id"), *volume_id = cmek_json_get_string(params, "volume_id");
        _cleanup_free_ char *err = NULL, *needed = NULL;
        Caller who;
        PolicyVerb v;
        bool ok;
        int r;

        if (!verb || !resource || (!user && !group))
                return call_errorf(c, VARLINK_ERROR_INVALID_PARAMETER,
                                   "PolicyCheck needs \"user\" or \"group\", \"verb\" and \"resource\"");
        v = policy_verb_from_string(verb);
        if (v < 0)
                return call_errorf(c, VARLINK_ERROR_INVALID_PARAMETER,
                                   "unknown verb '%s': use inspect, read, use or manage", verb);
        /* Asking about exactly oneself (no group) is always allowed. A group, even one the caller
         * is in, or another user is a question about others' grants: it needs read audit in the
         * tenancy, the permission that shows everyone's refusals and grants at work. */
        r = lookup_ids(user, group, &who, &err);
        if (r < 0 && r != -ESRCH) {
                free(who.groups);
                return r;
        }
        /* an unknown name is not oneself either: authorize before saying it does not exist */
        if (r == -ESRCH || !(user && !group && who.uid == call_caller(c)->uid)) {
                int k = manager_authorize(m, c, "read", "audit", NULL, NULL, NULL);
                if (k < 0) {
                        free(who.groups);
                        return k;
                }
        }
        if (r == -ESRCH) {
                free(who.groups);
                return call_errorf(c, VARLINK_ERROR_INVALID_PARAMETER, "%s", err);
        }
        PolicyRequest req = manager_policy_request(&who, v, resource, compartment, key_id, volume_id);
        ok = policy_check(m->policy, &req);
        if (!ok)
                needed = policy_explain_denial(&req);
        free(who.groups);
        json_object *p = json_object_new_object();
        json_object_object_add(p, "allowed", json_object_new_boolean(ok));
        if (needed)
                json_object_object_add(p, "statement", json_object_new_string(needed));
        return call_reply(c, p);
}

static const Method service_methods[] = {
        { "io.cmek.Service.Status", method_status },
        { "io.cmek.Service.PolicyCheck", method_policy_check },
        { "io.cmek.Service.AuditShow", manager_method_audit_show },     /* daemon/audit-glue.c */
        { "io.cmek.Service.AuditVerify", manager_method_audit_verify },
        {}
};

const Interface interface_service = {
        .name = "io.cmek.Service",
        .description =
                "# The broker itself: status, policy questions, the audit log.\n"
                "interface io.cmek.Service\n"
                "\n"
                "# Needs: inspect vaults.\n"
                "method Status() -> (\n"
                "  version: string,\n"
                "  state_dir: string,\n"
                "  pid: int,\n"
                "  started_usec: int,\n"
                "  socket_activated: bool,\n"
                "  policy: ?string,\n"
                "  policy_statements: int,\n"
                "  clients: int,\n"
                "  test_hooks: bool,\n"
                "  dumpable: bool,\n"
                "  # \"ok\", or \"unavailable (REASON)\": audited operations are refused meanwhile\n"
                "  audit: string,\n"
                "  # records since the log became unavailable that went to the journal only\n"
                "  audit_unwritten: int\n"
                ")\n"
                "\n"
                "# Would this user (or group) be allowed to VERB RESOURCE? Asking about yourself alone\n"
                "# (user, no group) is always allowed; about another user or any group needs read audit.\n"
                "method PolicyCheck(\n"
                "  user: ?string,\n"
                "  group: ?string,\n"
                "  verb: string,\n"
                "  resource: string,\n"
                "  compartment: ?string,\n"
                "  key_id: ?string,\n"
                "  volume_id: ?string\n"
                ") -> (allowed: bool, statement: ?string)\n"
                "\n"
                "# Needs: read audit. One page of at most limit entries (default 1000, at most 10000),\n"
                "# oldest first, from cursor (0 or an earlier next_cursor); next_cursor is absent at the end.\n"
                "method AuditShow(since_usec: ?int, cursor: ?int, limit: ?int) -> (entries: []object, next_cursor: ?int)\n"
                "\n"
                "# Needs: read audit.\n"
                "# Checks the hash chain, then with the token: the latest checkpoint's HMAC and the anchor\n"
                "# (reason \"tail cut after checkpoint N\", \"chain recomputed (checkpoint HMAC mismatch ...)\",\n"
                "# or a recorded discontinuity). anchored false: only the chain was checked (note says why).\n"
                "method AuditVerify() -> (path: string, lines: int, ok: bool, bad_line: ?int, reason: ?string,\n"
                "                         checkpoints: int, anchored: bool, anchor_seq: ?int, note: ?string)\n"
                "\n"
                "error PermissionDenied (verb: string, resource: string, compartment: ?string, statement: ?string, message: string)\n"
                "error MalformedMessage (message: string)\n"
                "error MessageTooLarge (message: string)\n"
                "error InternalError (message: string)\n",
        .methods = service_methods,
};

