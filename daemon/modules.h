/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* The feature modules of the daemon (vaults/keys, volumes, ...): their interfaces and hooks.
 * Each module adds its interface to DAEMON_EXTRA_INTERFACES and its hooks to modules.c. */
#pragma once

#include "manager.h"

/* Example: extern const Interface interface_key; then add &interface_key below. */
/* vaults and master keys: daemon/api-key.c */
extern const Interface interface_vault;
extern const Interface interface_key;
/* volumes: daemon/api-volume.c */
extern const Interface interface_volume;
extern const Interface interface_metrics;
#define DAEMON_EXTRA_INTERFACES \
        &interface_vault, &interface_key, \
        &interface_volume, \
        &interface_metrics,

/* Called in order at start (after policy and audit are up) and in reverse at stop. */
int modules_init(Manager *m);
void modules_done(Manager *m);
void modules_key_state_changed(Manager *m, const char *key_id, int old_state, int new_state);
void modules_key_rotated(Manager *m, const char *key_id, unsigned new_version);
