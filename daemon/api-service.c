/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* org.varlink.service, io.cmek.Service, io.cmek.Events, and the manager helpers handlers use. */
#include <grp.h>
#include <pwd.h>
#include <stdio.h>
#include <sys/prctl.h>


#include "cmek-audit.h"
#include "cmek-varlink.h"
#include "daemon.h"
#include "key.h"
#include "policy.h"

/* ---- policy ---- */

int manager_load_policy(Manager *m, bool reload) {
        _cleanup_free_ char *error = NULL;
        Policy *p = NULL;
        int r;

        if (!m->policy_path) {
                if (!reload)
                        log_info("No policy file: only root may use cmekd.");
                return 0;
        }
        r = policy_load(m->policy_path, &p, &error);
        if (r < 0) {
                if (reload) {
                        log_error("Policy reload failed, keeping the old policy: %s", error ?: strerror(-r));
                        if (m->audit)
                                (void) manager_audit(m, NULL, &(AuditRecord) {
                                        .event = "policy.reloaded", .operation = "SIGHUP",
                                        .result = "io.cmek.InvalidPolicy", .detail = error });
                        return r;
                }
                return log_error_errno(r, "Invalid policy: %s", error ?: strerror(-r));
        }
        policy_free(m->policy);
        m->policy = p;
        log_info("Policy %s loaded: %zu statements.", m->policy_path, policy_n_statements(p));
        if (reload && m->audit)
                (void) manager_audit(m, NULL, &(AuditRecord) {
                        .event = "policy.reloaded", .operation = "SIGHUP", .result = "ok",
                        .detail = m->policy_path });
        return 0;
}

static PolicyRequest make_request(const Caller *caller, PolicyVerb verb, const char *rtype,
                                  const char *compartment, const char *key_id, const char *volume_id) {
        return (PolicyRequest) {
                .uid = caller->uid, .gid = caller->gid,
                .groups = caller->groups, .n_groups = caller->n_groups,
                .verb = verb, .resource_type = rtype, .compartment = compartment,
                .key_id = key_id, .volume_id = volume_id,
        };
}

bool manager_allowed(Manager *m, Call *c, const char *verb, const char *resource_type,
                     const char *compartment, const char *key_id, const char *volume_id) {
        PolicyVerb v = policy_verb_from_string(verb);
        PolicyRequest req;

        if (v < 0)
                return false;
        req = make_request(call_caller(c), v, resource_type, compartment, key_id, volume_id);
        return policy_check(m->policy, &req);
}

bool manager_caller_has_any_grant(Manager *m, Call *c) {
        PolicyRequest req = make_request(call_caller(c), POLICY_VERB_INSPECT, "keys", NULL, NULL, NULL);
        return policy_has_any_grant(m->policy, &req);
}

/* The full refusal (what, where, on which ids, the statement that is missing) goes to the audit
 * line and the daemon log; the caller gets it only when some statement already names him in that
 * compartment: to anyone else it would say which keys, volumes and compartments exist. */
int manager_deny(Manager *m, Call *c, const char *verb, const char *resource_type,
                 const char *compartment, const char *key_id, const char *volume_id) {
        const Caller *caller = call_caller(c);
        PolicyVerb v = policy_verb_from_string(verb);
        PolicyRequest req;
        _cleanup_free_ char *needed = NULL, *msg = NULL, *full = NULL;
        bool tell;
        json_object *p;

        if (v < 0)
                return -EINVAL;
        req = make_request(caller, v, resource_type, compartment, key_id, volume_id);
        tell = policy_has_grant_in(m->policy, &req);
        needed = policy_explain_denial(&req);
        if (asprintf(&full, "No policy statement allows uid %u to %s %s in %s%s%s%s",
                     (unsigned) caller->uid, verb, resource_type,
                     compartment ? "compartment " : "tenancy", strempty(compartment),
                     needed ? "; add to the policy file: " : "", strempty(needed)) < 0)
                full = NULL;
        if (!tell) {
                /* debug only: the audit record (journal + file) carries it, and a flood must not
                 * grow the journal by a second line per refusal */
                log_debug("%s refused, key %s, volume %s (the caller has no grant there and is told less): %s",
                         call_method(c), key_id ?: "-", volume_id ?: "-", full ?: "out of memory");
                if (asprintf(&msg, "No policy statement allows uid %u to %s %s for this request. "
                             "Ask the administrator of cmekd for a grant (see cmekd-policy(5)).",
                             (unsigned) caller->uid, verb, resource_type) < 0)
                        msg = NULL;
        }

        p = json_object_new_object();
        json_object_object_add(p, "verb", json_object_new_string(verb));
        json_object_object_add(p, "resource", json_object_new_string(resource_type));
        if (tell) {
                json_object_object_add(p, "compartment", compartment ? json_object_new_string(compartment) : NULL);
                if (key_id)
                        json_object_object_add(p, "key_id", json_object_new_string(key_id));
                if (volume_id)
                        json_object_object_add(p, "volume_id", json_object_new_string(volume_id));
                if (needed)
                        json_object_object_add(p, "statement", json_object_new_string(needed));
        } else
                json_object_object_add(p, "compartment", NULL);
        if (tell ? !!full : !!msg)
                json_object_object_add(p, "message", json_object_new_string(tell ? full : msg));
        if (manager_audit_denial_admit(m, caller, call_method(c)))
                (void) manager_audit(m, c, &(AuditRecord) {
                        .event = "policy.denied", .operation = call_method(c),
                        .result = CMEK_ERROR_PERMISSION_DENIED, .key_id = key_id, .volume = volume_id,
                        .detail = full });
        (void) call_error(c, CMEK_ERROR_PERMISSION_DENIED, p);
        return -EACCES;
}

int manager_authorize(Manager *m, Call *c, const char *verb, const char *resource_type,
                      const char *compartment, const char *key_id, const char *volume_id) {
        if (policy_verb_from_string(verb) < 0)
                return -EINVAL;
        if (manager_allowed(m, c, verb, resource_type, compartment, key_id, volume_id))
                return 0;
        return manager_deny(m, c, verb, resource_type, compartment, key_id, volume_id);
}

uint64_t manager_now_usec(Manager *m) {
        uint64_t now = cmek_now_usec();
        _cleanup_free_ char *path = NULL, *s = NULL;

        /* Tests move the clock of waiting periods by writing "+SECONDS" or "SECONDS" into
         * <state-dir>/test-clock; honoured only in a test-hooks build started with --test-hooks. */
        if (!ENABLE_TEST_HOOKS || !m->test_hooks)
                return now;
        if (asprintf(&path, "%s/test-clock", m->state_dir) < 0 || cmek_read_file(path, 64, &s, NULL) < 0)
                return now;
        if (s[0] == '+')
                return now + strtoull(s + 1, NULL, 10) * 1000000ULL;
        return strtoull(s, NULL, 10) * 1000000ULL;
}

/* ---- events ---- */

typedef struct Subscriber {
        Call *call;
        struct Subscriber *next;
} Subscriber;

static Subscriber *subscribers;

static void subscriber_closed(Call *c, void *userdata) {
        for (Subscriber **s = &subscribers; *s; s = &(*s)->next)
                if ((*s)->call == c) {
                        Subscriber *dead = *s;
                        *s = dead->next;
                        call_unref(dead->call);
                        free(dead);
                        return;
                }
}

/* While held (a key state change in progress), events wait in order and go out on release:
 * the volumes are locked first, yet consumers see "key.disabled" before its "volume.locked". */
static unsigned events_held;
static json_object *held_events;

static void event_dispatch(Manager *m, json_object *ev) {
        for (Subscriber *s = subscribers, *next; s; s = next) {
                next = s->next;
                if (call_is_open(s->call)) {
                        json_object *p = json_object_new_object();
                        json_object_object_add(p, "event", json_object_get(ev));
                        (void) call_reply_more(s->call, p);
                }
        }
        events_run_hooks(m, ev);
}

static json_object *event_new(const char *type, json_object *data) {
        json_object *ev = json_object_new_object();

        json_object_object_add(ev, "type", json_object_new_string(type));
        json_object_object_add(ev, "time_usec", json_object_new_int64((int64_t) cmek_now_usec()));
        json_object_object_add(ev, "data", data ? data : json_object_new_object());
        log_debug("Event %s", type);
        return ev;
}

void manager_events_hold(Manager *m) {
        events_held++;
}

/* first: an event that goes out before everything held (the key event of the change) */
static void events_release_with(Manager *m, json_object *first) {
        json_object *q;

        if (events_held == 0 || --events_held > 0) {
                if (first) {
                        /* nested in a hold around the same change (key_apply() locks before
                         * its token writes): the key's event still goes first */
                        json_object *a = json_object_new_array();
                        json_object_array_add(a, first);
                        for (size_t i = 0; held_events && i < json_object_array_length(held_events); i++)
                                json_object_array_add(a, json_object_get(json_object_array_get_idx(held_events, i)));
                        json_object_put(held_events);
                        held_events = a;
                }
                if (events_held > 0)
                        return;
                first = NULL;
        }
        q = TAKE_PTR(held_events);
        if (first) {
                event_dispatch(m, first);
                json_object_put(first);
        }
        for (size_t i = 0; q && i < json_object_array_length(q); i++)
                event_dispatch(m, json_object_array_get_idx(q, i));
        json_object_put(q);
        metrics_update(m);
}

void manager_events_release(Manager *m) {
        events_release_with(m, NULL);
}

void manager_event(Manager *m, const char *type, json_object *data) {
        json_object *ev = event_new(type, data);

        if (events_held > 0) {
                if (!held_events)
                        held_events = json_object_new_array();
                json_object_array_add(held_events, ev);
                return;
        }
        event_dispatch(m, ev);
        json_object_put(ev);
        metrics_update(m);
}

void events_done(Manager *m) {
        json_object_put(TAKE_PTR(held_events));
        events_held = 0;
        events_hooks_done();
        while (subscribers) {
                Subscriber *s = subscribers;
                subscribers = s->next;
                call_unref(s->call);
                free(s);
        }
}

static int method_subscribe(Manager *m, Call *c, json_object *params) {
        Subscriber *s;
        int r;

        r = manager_authorize(m, c, "read", "audit", NULL, NULL, NULL);
        if (r < 0)
                return r;
        if (!call_wants_more(c))
                return call_errorf(c, VARLINK_ERROR_EXPECTED_MORE, "Subscribe streams events: call it with \"more\": true");
        s = calloc(1, sizeof(*s));
        if (!s)
                return -ENOMEM;
        s->call = call_ref(c);
        s->next = subscribers;
        subscribers = s;
        call_set_close_callback(c, subscriber_closed, NULL);
        /* first reply: tells the client the subscription is live */
        json_object *p = json_object_new_object();
        json_object_object_add(p, "subscribed", json_object_new_boolean(1));
        return call_reply_more(c, p);
}

void manager_key_state_changed(Manager *m, const char *key_id, KeyState old_state, KeyState new_state) {
        static const char *const names[_KEY_STATE_MAX] = {
                [KEY_STATE_ENABLED] = "key.enabled",
                [KEY_STATE_DISABLED] = "key.disabled",
                [KEY_STATE_PENDING_DELETION] = "key.pending-deletion",
                [KEY_STATE_DELETED] = "key.deleted",
        };
        json_object *d = json_object_new_object(), *ev = NULL;

        json_object_object_add(d, "key_id", json_object_new_string(key_id));
        json_object_object_add(d, "old_state", json_object_new_string(key_state_to_string(old_state)));
        json_object_object_add(d, "state", json_object_new_string(key_state_to_string(new_state)));
        if (new_state >= 0 && new_state < _KEY_STATE_MAX)
                ev = event_new(old_state == KEY_STATE_DISABLED && new_state == KEY_STATE_ENABLED
                               ? "key.re-enabled" : names[new_state], d);
        else
                json_object_put(d);
        /* tell the volume module first: locking must not wait for event consumers; its events
         * (volume.locked, volume.unrecoverable) follow the key's own */
        manager_events_hold(m);
        modules_key_state_changed(m, key_id, old_state, new_state);
        events_release_with(m, ev);
}

void manager_key_rotated(Manager *m, const char *key_id, unsigned new_version) {
        json_object *d = json_object_new_object();
        json_object_object_add(d, "key_id", json_object_new_string(key_id));
        json_object_object_add(d, "version", json_object_new_int64(new_version));
        manager_event(m, "key.rotated", d);
        modules_key_rotated(m, key_id, new_version);
}

/* ---- org.varlink.service ---- */

static int method_get_info(Manager *m, Call *c, json_object *params) {
        json_object *p = json_object_new_object(), *ifaces = json_object_new_array();
        const Interface *const *list;
        size_t n;

        list = manager_interfaces(&n);
        for (size_t i = 0; i < n; i++)
                json_object_array_add(ifaces, json_object_new_string(list[i]->name));
        json_object_object_add(p, "vendor", json_object_new_string("cmekd project"));
        json_object_object_add(p, "product", json_object_new_string("cmekd"));
        json_object_object_add(p, "version", json_object_new_string(PACKAGE_VERSION));
        json_object_object_add(p, "url", json_object_new_string("https://cmekd.invalid/"));
        json_object_object_add(p, "interfaces", ifaces);
        return call_reply(c, p);
}

static int method_get_interface_description(Manager *m, Call *c, json_object *params) {
        const char *name = cmek_json_get_string(params, "interface");
        const Interface *const *list;
        size_t n;

        if (!name)
                return call_errorf(c, VARLINK_ERROR_INVALID_PARAMETER, "parameter \"interface\" (string) is required");
        list = manager_interfaces(&n);
        for (size_t i = 0; i < n; i++)
                if (streq(list[i]->name, name)) {
                        _cleanup_free_ char *text = manager_interface_description(m, list[i]);
                        json_object *p;
                        if (!text)
                                return -ENOMEM;
                        p = json_object_new_object();
                        json_object_object_add(p, "description", json_object_new_string(text));
                        return call_reply(c, p);
                }
        json_object *p = json_object_new_object();
        json_object_object_add(p, "interface", json_object_new_string(name));
        return call_error(c, VARLINK_ERROR_INTERFACE_NOT_FOUND, p);
}

static const Method varlink_methods[] = {
        { "org.varlink.service.GetInfo", method_get_info },
        { "org.varlink.service.GetInterfaceDescription", method_get_interface_description },
        {}
};

const Interface interface_varlink_service = {
        .name = "org.varlink.service",
        .description =
                "# The Varlink Service Interface is provided by every varlink service. It\n"
                "# describes the service and the interfaces it implements.\n"
                "interface org.varlink.service\n"
                "\n"
                "# Get a list of all the interfaces a service provides and information\n"
                "# about the implementation.\n"
                "method GetInfo() -> (\n"
                "  vendor: string,\n"
                "  product: string,\n"
                "  version: string,\n"
                "  url: string,\n"
                "  interfaces: []string\n"
                ")\n"
                "\n"
                "# Get the description of an interface that is implemented by this service.\n"
                "method GetInterfaceDescription(interface: string) -> (description: string)\n"
                "\n"
                "# The requested interface was not found.\n"
                "error InterfaceNotFound (interface: string)\n"
                "\n"
                "# The requested method was not found\n"
                "error MethodNotFound (method: string)\n"
                "\n"
                "# The interface defines the requested method, but the service does not\n"
                "# implement it.\n"
                "error MethodNotImplemented (method: string)\n"
                "\n"
                "# One of the passed parameters is invalid. cmekd adds a message saying what it must be.\n"
                "error InvalidParameter (parameter: string, message: ?string)\n"
                "\n"
                "# Client is denied access\n"
                "error PermissionDenied ()\n"
                "\n"
                "# Method is expected to be called with 'more' set to true, but wasn't\n"
                "error ExpectedMore (message: ?string)\n",
        .methods = varlink_methods,
};

/* ---- io.cmek.Service ---- */

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
        PolicyRequest req = make_request(&who, v, resource, compartment, key_id, volume_id);
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

static const Method events_methods[] = {
        { "io.cmek.Events.Subscribe", method_subscribe },
        {}
};

const Interface interface_events = {
        .name = "io.cmek.Events",
        .description =
                "# Key and volume events, streamed. Needs: read audit.\n"
                "interface io.cmek.Events\n"
                "\n"
                "type Event (\n"
                "  type: string,\n"
                "  time_usec: int,\n"
                "  data: object\n"
                ")\n"
                "\n"
                "# Call with more: the first reply has subscribed: true, then one reply per event.\n"
                "method Subscribe() -> (subscribed: ?bool, event: ?Event)\n",
        .methods = events_methods,
};
