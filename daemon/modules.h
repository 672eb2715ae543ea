/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* The feature modules of the daemon (vaults/keys, audit anchor, volumes, metrics): their
 * start/stop hooks and what they are told about key changes, in the table in modules.c. */
#pragma once

#include "manager.h"

/* Called in order at start (after policy and audit are up) and in reverse at stop. */
int modules_init(Manager *m);
void modules_done(Manager *m);
void modules_key_state_changed(Manager *m, const char *key_id, int old_state, int new_state);
void modules_key_rotated(Manager *m, const char *key_id, unsigned new_version);
