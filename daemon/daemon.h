/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* Internal declarations shared by the daemon's own files. */
#pragma once

#include "cmek-log.h"
#include "manager.h"
#include "policy.h"

#define DEFAULT_STATE_DIR LOCALSTATEDIR "/lib/cmekd"
#define DEFAULT_CONFIG SYSCONFDIR "/cmekd/cmekd.conf"
#define DEFAULT_POLICY SYSCONFDIR "/cmekd/policy"
#define DEFAULT_HOOKS_DIR SYSCONFDIR "/cmekd/hooks.d"

/* The interfaces the daemon serves, listed in interfaces[] in server.c (interface_service: manager.h) */
extern const Interface interface_varlink_service; /* org.varlink.service: daemon/api-varlink.c */
extern const Interface interface_events;          /* io.cmek.Events: daemon/events.c */
extern const Interface interface_errors;          /* io.cmek: the shared errors, daemon/api-errors.c */
extern const Interface interface_vault;           /* io.cmek.Vault: daemon/api-key.c */
extern const Interface interface_key;             /* io.cmek.Key: daemon/api-key.c */
extern const Interface interface_volume;          /* io.cmek.Volume: daemon/api-volume.c */
extern const Interface interface_metrics;         /* io.cmek.Metrics: daemon/metrics.c */

#include "modules.h"                               /* module start/stop and key-change hooks */

int server_listen(Manager *m, int fd);
int server_bind(Manager *m, const char *path);
void server_done(Manager *m);
/* [limits] of m->config: at start and after a configuration reload */
void server_apply_limits(Manager *m);
int send_json_error(Connection *c, const char *error, const char *message);
const Interface *const *manager_interfaces(size_t *ret_n);
/* The IDL text GetInterfaceDescription returns (test-only methods with --test-hooks only); free() it. */
char *manager_interface_description(Manager *m, const Interface *iface);

/* daemon/manager.c */
int manager_new(Manager **ret);                 /* defaults only; the command line fills in the rest */
int manager_startup(Manager *m);                /* state dir, policy, audit, loop, modules, sockets */
Manager *manager_free(Manager *m);              /* tears down all of it, also after a failed startup */
int manager_load_policy(Manager *m, bool reload);
PolicyRequest manager_policy_request(const Caller *caller, PolicyVerb verb, const char *resource_type,
                                     const char *compartment, const char *key_id, const char *volume_id);

/* daemon/events.c (manager_event() is in key.h) */
extern const KeyHooks events_key_hooks;         /* m->key_hooks: key changes become events */
void events_done(Manager *m);
/* daemon/events-hooks.c */
/* Runs the executables in the hooks directory for one event (never blocks the caller). */
void events_run_hooks(Manager *m, json_object *event);
void events_hooks_done(Manager *m);

/* daemon/metrics.c */
int metrics_init(Manager *m);
void metrics_done(Manager *m);
void metrics_update(Manager *m);
json_object *metrics_snapshot(Manager *m);
int metrics_format_prometheus(json_object *snapshot, char **ret, size_t *ret_size);

/* daemon/audit-anchor.c: checkpoints with an HMAC made in the default vault, the latest one's
 * seq/hash kept in the token */
typedef struct CmekAuditVerifyInfo CmekAuditVerifyInfo;
int audit_anchor_init(Manager *m);
void audit_anchor_done(Manager *m);
int audit_anchor_checkpoint(Manager *m);
uint64_t audit_anchor_seq(void);          /* 0: none */
bool audit_anchor_get(uint64_t *ret_seq, char ret_hash[static 65]);
char *audit_anchor_judge(Manager *m, const CmekAuditVerifyInfo *info, bool have_anchor, uint64_t anchor_seq,
                         const char *anchor_hash, bool *ret_checked);
const char *audit_anchor_unavailable(void); /* NULL: anchored */

/* daemon/audit-glue.c (manager_audit and friends are in manager.h) */
bool manager_audit_denial_admit(Manager *m, const Caller *caller, const char *operation); /* false: counted */
void manager_audit_describe(Manager *m, json_object *status);   /* Status fields "audit", "audit_unwritten" */
int manager_method_audit_show(Manager *m, Call *c, json_object *params);
int manager_method_audit_verify(Manager *m, Call *c, json_object *params);
