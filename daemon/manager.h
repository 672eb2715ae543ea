/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* The daemon's shared state and the API every method handler uses. */
#pragma once

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>
#include <json-c/json.h>
#include <systemd/sd-event.h>

#include "cmek-protocol.h"
#include "cmek-util.h"
#include "dm.h"

typedef struct Manager Manager;
typedef struct Call Call;
typedef struct Connection Connection;
typedef struct Policy Policy;           /* daemon/policy.h */
typedef struct CmekAudit CmekAudit;     /* lib/cmek-audit.h */
typedef struct VaultSet VaultSet;       /* daemon/vault.h */
typedef struct KeyStore KeyStore;       /* daemon/key.h */
typedef struct VolumeRegistry VolumeRegistry; /* daemon/volume.h */
typedef struct Subscriber Subscriber;   /* daemon/events.c */
typedef struct KeyHooks KeyHooks;       /* daemon/key.h */
typedef struct Hook Hook;               /* daemon/events-hooks.c */
typedef struct UidUsage UidUsage;       /* daemon/server.c */
typedef struct Denials Denials;         /* daemon/audit-glue.c */
typedef struct HookRun HookRun;         /* daemon/events-hooks.c */
typedef struct Config Config;           /* daemon/config.h */

/* Who is calling, from SO_PEERCRED (+ supplementary groups from /proc or getgrouplist). */
typedef struct Caller {
        uid_t uid;
        gid_t gid;
        pid_t pid;
        gid_t *groups;
        size_t n_groups;
} Caller;

struct Manager {
        sd_event *event;
        char *state_dir;
        char *socket_path;      /* NULL when socket-activated */
        char *config_path;      /* NULL: no file, every default */
        Config *config;         /* what it says, read once at start (and on SIGHUP) */
        char *policy_path;      /* NULL: only root may do anything */
        char *hooks_dir;        /* executables run for every event */
        bool test_hooks;        /* test-only env vars honoured (--enable-test-hooks build + flag) */

        Policy *policy;
        CmekAudit *audit;
        int audit_error;                /* 0, or why the audit log cannot be written (-errno) */
        uint64_t audit_error_usec;      /* since when (CLOCK_REALTIME) */
        uint64_t audit_lost;            /* records that reached only the journal meanwhile */
        /* audit glue (daemon/audit-glue.c): the retry of a broken log, the per-uid denial counters */
        struct {
                bool retry_armed;
                Denials *denials;       /* allocated on the first denial */
                bool denial_timer_armed;
        } audit_glue;
        VaultSet *vaults;
        KeyStore *keys;
        const KeyHooks *key_hooks;      /* how the key layer tells events and volumes (events.c) */
        VolumeRegistry *volumes;
        DmCache dm;                     /* the device-mapper scan caches (daemon/dm.h) */

        struct {
                uint64_t wrap, wrap_errors, unwrap, unwrap_errors;
        } counters;
        char *metrics_file;     /* Prometheus text file, rewritten on every event */
        sd_event_source *metrics_timer; /* rewrites it every 30 s when only the counters moved */
        uint64_t metrics_written_uses;  /* wrap + unwrap when it was last written */

        uint64_t start_usec;

        /* the Varlink server (daemon/server.c) */
        struct {
                UidUsage *uid_usages;           /* per uid: connections, queued output, request rate */
                /* paused connections read again: on the next iteration, or when a uid's rate allows */
                sd_event_source *resume_defer, *resume_timer;
                /* refused connections since the last log line about them (one per 10 s) */
                uint64_t refused_since_log, last_refusal_log_usec;
                /* audit group commit: replies wait for one fdatasync() after the loop iteration
                 * (idle source), at most GROUP_COMMIT_MAX_WAIT_USEC after the first held one (post) */
                sd_event_source *audit_post_source, *audit_idle_source;
                uint64_t first_held_usec;
        } server;
        Connection *connections;
        unsigned n_connections;
        unsigned n_listen_fds;

        /* events (daemon/events.c): live io.cmek.Events subscriptions, and the events held
         * while a key state change is in progress (n_holds nested holds) */
        struct {
                Subscriber *subscribers;
                unsigned n_holds;
                json_object *held;      /* array, in order */
        } events;

        /* event hooks (daemon/events-hooks.c): the hooks running now, the runs waiting for a
         * slot, and the runs of non-critical events dropped (or replaced by a newer run of the
         * same event type) since the last audit record about it (one a second at most) */
        struct {
                Hook *running;
                unsigned n_running;
                HookRun *queue_head, *queue_tail;
                unsigned n_queued;
                uint64_t n_dropped;
                sd_event_source *drop_report;   /* the one-a-second audit record of drops */
                sd_event_source *drain_source;  /* starts waiting runs after a burst */
        } hooks;
};

/* Methods, their parameters and errors: daemon/varlink-idl.h */
#include "varlink-idl.h"

/* --- replying --- */
int call_reply(Call *c, json_object *params);                 /* takes ownership; NULL = {} */
int call_reply_more(Call *c, json_object *params);            /* continues: true */
int call_error(Call *c, const char *error, json_object *params); /* takes ownership */
int call_errorf(Call *c, const char *error, const char *fmt, ...) _printf_(3, 4);
/* Reply {"parameters": {field: base64(secret), ...extra}} built in locked memory and wiped
 * after it is written; extra (may be NULL) must not hold secrets; takes ownership of extra. */
int call_reply_secret(Call *c, const char *field, const void *secret, size_t n, json_object *extra);
const Caller *call_caller(Call *c);
bool call_wants_more(Call *c);
const char *call_method(Call *c);
/* For streamed replies after the handler returned (events): keep the call open; it stays
 * valid until call_reply/call_error or until the client disconnects (then on_close runs). */
Call *call_ref(Call *c);
Call *call_unref(Call *c);
bool call_is_open(Call *c);
void call_set_close_callback(Call *c, void (*on_close)(Call *c, void *userdata), void *userdata);

/* --- policy and audit, for handlers --- */
/* Checks the caller against the policy. On refusal sends io.cmek.PermissionDenied (see
 * manager_deny()) and returns -EACCES: the handler returns. */
int manager_authorize(Manager *m, Call *c, const char *verb, const char *resource_type,
                      const char *compartment, const char *key_id, const char *volume_id);
/* The same check without replying or auditing (e.g. "may the caller even know this exists?"). */
bool manager_allowed(Manager *m, Call *c, const char *verb, const char *resource_type,
                     const char *compartment, const char *key_id, const char *volume_id);
/* Whether any statement names the caller (root: always). Without one, refuse before looking
 * anything up: a caller without a grant costs no token access. */
bool manager_caller_has_any_grant(Manager *m, Call *c);
/* Audits the refusal and replies io.cmek.PermissionDenied; returns -EACCES. A caller that no
 * statement names in that compartment (policy_has_grant_in()) gets only verb, resource and a
 * fixed message: no compartment, key id, volume id or statement (those go to the audit record). */
int manager_deny(Manager *m, Call *c, const char *verb, const char *resource_type,
                 const char *compartment, const char *key_id, const char *volume_id);

/* The clock for waiting periods (daemon/manager.c); in a test-hooks build started with
 * --test-hooks, <state-dir>/test-clock moves it. */
uint64_t manager_now_usec(Manager *m);

/* An audited event: one journald entry and one hash-chained line. Fields may be NULL. */
typedef struct AuditRecord {
        const char *event;      /* e.g. "key.disabled"; selects the MESSAGE_ID */
        const char *operation;  /* the method, e.g. "io.cmek.Key.Disable" */
        const char *result;     /* "ok" or an error name */
        const char *key_id;
        const char *old_state;
        const char *new_state;
        const char *volume;     /* LUKS UUID or path */
        const char *detail;     /* free text, never a secret */
} AuditRecord;
/* Caller may be NULL (the daemon acting by itself, e.g. scheduled deletion). When the record
 * cannot be written, the call's reply is turned into io.cmek.AuditUnavailable (a secret reply
 * is never sent) and the log is marked unavailable until a retry succeeds. */
int manager_audit(Manager *m, Call *c, const AuditRecord *rec);

/* io.cmek.KeyNotFound, one text for "no such key" and "a key the caller may not even inspect"
 * (api-key.c): no existence oracle. r = -ENOTUNIQ says "several keys have this name". */
int reply_key_not_found(Call *c, const char *key, int r);
/* 0 if audited operations may run now (retries a failed log first), else -errno. */
int manager_audit_ready(Manager *m);
/* Replies io.cmek.AuditUnavailable saying which log cannot be written and what to do. */
int manager_audit_refuse(Manager *m, Call *c);
/* The group commit's fdatasync() failed. */
void manager_audit_failed(Manager *m, int error);
/* Writes the denials still counted (audit-glue.c aggregates them per uid and second). */
void manager_audit_flush_denials(Manager *m);
/* Drops queued AuditShow/AuditVerify jobs (their worker thread runs off the loop). */
void manager_audit_jobs_done(Manager *m);
/* Marks the call: its reply becomes io.cmek.AuditUnavailable (server.c). */
void call_set_audit_failed(Call *c);

/* Every interface the daemon serves; defined in api-*.c files, listed in server.c. */
extern const Interface interface_service;  /* io.cmek.Service: Status, PolicyCheck, Audit* (api-service.c) */
