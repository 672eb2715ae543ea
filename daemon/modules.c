/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* Start and stop the daemon's feature modules in a fixed order. */
#include "daemon.h"
#include "key.h"
#include "volume.h"

typedef struct Module {
        const char *name;
        int (*init)(Manager *m);
        void (*done)(Manager *m);
        /* optional: told about key changes, e.g. the volume module locks or re-wraps */
        void (*key_state_changed)(Manager *m, const char *key_id, int old_state, int new_state);
        void (*key_rotated)(Manager *m, const char *key_id, unsigned new_version);
} Module;

static const Module modules[] = {
        { "keys", keys_init, keys_done, NULL, NULL },   /* vaults and master keys: daemon/key.c */
        /* the audit log's checkpoints need the default vault */
        { "audit-anchor", audit_anchor_init, audit_anchor_done, NULL, NULL },  /* daemon/audit-anchor.c */
        /* after the keys: re-wraps on rotation, locks on disable, shreds on deletion */
        { "volumes", volumes_init, volumes_done, volumes_key_state_changed, volumes_key_rotated },
        { "metrics", metrics_init, metrics_done, NULL, NULL },     /* daemon/metrics.c */
        { NULL, NULL, NULL, NULL, NULL },
};

void modules_key_state_changed(Manager *m, const char *key_id, int old_state, int new_state) {
        for (const Module *mod = modules; mod->name; mod++)
                if (mod->key_state_changed)
                        mod->key_state_changed(m, key_id, old_state, new_state);
}

void modules_key_rotated(Manager *m, const char *key_id, unsigned new_version) {
        for (const Module *mod = modules; mod->name; mod++)
                if (mod->key_rotated)
                        mod->key_rotated(m, key_id, new_version);
}

int modules_init(Manager *m) {
        for (const Module *mod = modules; mod->name; mod++) {
                int r = mod->init(m);
                if (r < 0)
                        return log_error_errno(r, "Failed to start the %s module: %m", mod->name);
        }
        return 0;
}

void modules_done(Manager *m) {
        size_t n = ARRAY_SIZE(modules) - 1;
        while (n-- > 0)
                modules[n].done(m);
}
