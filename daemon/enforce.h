/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* Enforcement's helpers for the other volume files (daemon/enforce.c); the enforcement API that
 * handlers and the key hooks use is in volume.h. */
#pragma once

#include "volume.h"

/* volumes_init(): after the registry is loaded and its intents resolved */
int enforce_start(Manager *m);
/* volumes_done(): disarms the watch */
void enforce_stop(Manager *m);

/* A bound volume opened outside cmekd (at boot through crypttab and the token plugin, by udev,
 * by hand) is enforced like one cmekd opened: its mapping is adopted. 1 when adopted. */
int volume_adopt_mapping(Manager *m, Volume *v);
/* Forgets what enforcement did to v (an explicit unlock, a restore): no lock, no reason. */
void volume_clear_lock(Volume *v);
/* AVAILABLE, UNAVAILABLE (with why) or UNRECOVERABLE. */
const char *volume_availability(const Volume *v, const char *key_state, char **ret_reason);

/* (daemon/volume.c) key_lookup() of a key that must be ENABLED: -EKEYREVOKED disabled,
 * -EKEYEXPIRED pending deletion, -ENOKEY deleted; ret is filled only on success. */
typedef struct KeyInfo KeyInfo;
int lookup_key(Manager *m, const char *key_id, KeyInfo *ret);
