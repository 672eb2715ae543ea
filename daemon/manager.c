/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* The Manager: what the daemon sets up at start and tears down at stop (manager_new(),
 * manager_startup(), manager_free()), reloads on SIGHUP (configuration and policy), and the
 * authorization every handler does first. */
#include <signal.h>
#include <stdio.h>
#include <sys/stat.h>
#include <systemd/sd-daemon.h>

#include "cmek-audit.h"
#include "cmek-varlink.h"
#include "config.h"
#include "daemon.h"
#include "key.h"
#include "policy.h"
#include "volume.h"

int manager_new(Manager **ret) {
        Manager *m;

        m = calloc(1, sizeof(*m));
        if (!m)
                return -ENOMEM;
        m->state_dir = strdup(DEFAULT_STATE_DIR);
        m->hooks_dir = strdup(DEFAULT_HOOKS_DIR);
        m->key_hooks = &events_key_hooks;
        if (!m->state_dir || !m->hooks_dir) {
                manager_free(m);
                return -ENOMEM;
        }
        *ret = m;
        return 0;
}

Manager *manager_free(Manager *m) {
        if (!m)
                return NULL;
        manager_audit_jobs_done(m);
        server_done(m);
        events_done(m);
        modules_done(m);
        cmek_audit_close(m->audit);
        free(m->audit_glue.denials);
        policy_free(m->policy);
        sd_event_unref(m->event);
        free(m->state_dir);
        free(m->socket_path);
        free(m->config_path);
        config_free(m->config);
        free(m->policy_path);
        free(m->hooks_dir);
        free(m->metrics_file);
        free(m);
        return NULL;
}

/* SIGHUP: cmekd.conf again, through the same parser. On any error nothing changes: the errors
 * are logged with their lines, the attempt audited, and the configuration in use kept. Otherwise
 * the run-time settings are applied ([enforcement], [events], [limits], [metrics]); a changed
 * vault is logged as needing a restart and keeps running as it was. */
static int manager_reload_config(Manager *m) {
        _cleanup_config_ Config *c = NULL;
        _cleanup_free_ char *detail = NULL;
        unsigned n_errors = 0, n_restart;
        int r;

        r = config_load(m->config_path, false, &c, &n_errors);
        if (r < 0) {
                if (asprintf(&detail, "%s: %u error%s, see the daemon log", strempty(m->config_path), n_errors,
                             n_errors == 1 ? "" : "s") < 0)
                        detail = NULL;
                log_error("Configuration reload failed, keeping the configuration in use: %s",
                          detail ?: "cannot read the file");
                (void) manager_audit(m, NULL, &(AuditRecord) {
                        .event = "config.reloaded", .operation = "SIGHUP", .result = "io.cmek.InvalidConfig",
                        .detail = detail });
                return r;
        }
        n_restart = config_log_changes(m->config, c);
        config_keep_restart_settings(c, m->config);
        config_free(m->config);
        m->config = TAKE_PTR(c);
        server_apply_limits(m);
        volumes_apply_config(m);
        /* [events] and [metrics] are read where they are used */
        if (asprintf(&detail, "%s%s%u setting%s need%s a restart", strempty(m->config_path), m->config_path ? ": " : "",
                     n_restart, n_restart == 1 ? "" : "s", n_restart == 1 ? "s" : "") < 0)
                detail = NULL;
        log_info("Configuration reloaded (%s).", strempty(detail));
        (void) manager_audit(m, NULL, &(AuditRecord) {
                .event = "config.reloaded", .operation = "SIGHUP", .result = "ok", .detail = detail });
        return 0;
}

static int on_sighup(sd_event_source *s, const struct signalfd_siginfo *si, void *userdata) {
        Manager *m = userdata;
        (void) sd_notify(0, "RELOADING=1");
        (void) manager_reload_config(m);
        (void) manager_load_policy(m, true);
        (void) sd_notify(0, "READY=1");
        return 0;
}

static int manager_open_audit(Manager *m) {
        _cleanup_free_ char *path = NULL;
        CmekAudit *a = NULL;
        int r;

        if (asprintf(&path, "%s/audit.log", m->state_dir) < 0)
                return -ENOMEM;
        /* replies wait for the audit sync at the end of each loop iteration (server.c) */
        r = cmek_audit_open_full(path, CMEK_AUDIT_GROUP_COMMIT, &a);
        if (r < 0)
                return log_error_errno(r, "Failed to open the audit log '%s': %m", path);
        m->audit = a;
        return 0;
}

static int manager_listen(Manager *m) {
        int r, n;

        if (m->socket_path) {
                r = server_bind(m, m->socket_path);
                if (r < 0)
                        return log_error_errno(r, "Failed to listen on '%s': %m", m->socket_path);
                return 0;
        }
        n = sd_listen_fds(true);
        if (n < 0)
                return log_error_errno(n, "Failed to read the sockets passed by systemd: %m");
        if (n == 0)
                return log_error_errno(EINVAL, "No socket passed by systemd and no --socket PATH given; "
                                       "start cmekd through cmekd.socket or with --socket.");
        for (int fd = SD_LISTEN_FDS_START; fd < SD_LISTEN_FDS_START + n; fd++) {
                r = server_listen(m, fd);
                if (r < 0)
                        return r;
        }
        m->n_listen_fds = (unsigned) n;
        return 0;
}

/* In order: the state directory, the policy, the audit log, the event loop and its signals, the
 * modules (vaults and keys, audit anchor, volumes, metrics), then the listening sockets. */
int manager_startup(Manager *m) {
        sigset_t ss;
        int r;

        m->start_usec = cmek_now_usec();
        r = cmek_mkdir_p(m->state_dir, 0700);
        if (r >= 0 && chmod(m->state_dir, 0700) < 0) /* it holds the token PINs */
                r = -errno;
        if (r < 0)
                return log_error_errno(r, "Failed to create the state directory '%s': %m", m->state_dir);
        r = manager_load_policy(m, false);
        if (r < 0)
                return r;
        r = manager_open_audit(m);
        if (r < 0)
                return r;

        r = sd_event_default(&m->event);
        if (r < 0)
                return r;
        sigemptyset(&ss);
        sigaddset(&ss, SIGTERM);
        sigaddset(&ss, SIGINT);
        sigaddset(&ss, SIGHUP);
        sigaddset(&ss, SIGCHLD); /* hooks are reaped through sd-event */
        sigprocmask(SIG_BLOCK, &ss, NULL);
        (void) signal(SIGPIPE, SIG_IGN);
        (void) sd_event_add_signal(m->event, NULL, SIGTERM, NULL, NULL);
        (void) sd_event_add_signal(m->event, NULL, SIGINT, NULL, NULL);
        (void) sd_event_add_signal(m->event, NULL, SIGHUP, on_sighup, m);
        (void) sd_event_set_watchdog(m->event, true);

        r = modules_init(m);
        if (r < 0)
                return r;
        return manager_listen(m);
}

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

PolicyRequest manager_policy_request(const Caller *caller, PolicyVerb verb, const char *rtype,
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
        req = manager_policy_request(call_caller(c), v, resource_type, compartment, key_id, volume_id);
        return policy_check(m->policy, &req);
}

bool manager_caller_has_any_grant(Manager *m, Call *c) {
        PolicyRequest req = manager_policy_request(call_caller(c), POLICY_VERB_INSPECT, "keys", NULL, NULL, NULL);
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
        req = manager_policy_request(caller, v, resource_type, compartment, key_id, volume_id);
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
                return now + strtoull(s + 1, NULL, 10) * USEC_PER_SEC;
        return strtoull(s, NULL, 10) * USEC_PER_SEC;
}

