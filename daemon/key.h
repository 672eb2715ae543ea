/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* Master keys: lifecycle, versions, wrap/unwrap. The token is the source of truth. */
#pragma once

#include <stdint.h>
#include <json-c/json.h>

#include "cmek-errors.h"
#include "manager.h"

typedef enum KeyState {
        KEY_STATE_ENABLED,
        KEY_STATE_DISABLED,
        KEY_STATE_PENDING_DELETION,
        KEY_STATE_DELETED,
        _KEY_STATE_MAX,
        _KEY_STATE_INVALID = -EINVAL,
} KeyState;

const char *key_state_to_string(KeyState s);   /* "ENABLED", ... */
KeyState key_state_from_string(const char *s);

typedef struct KeyInfo {
        char *id;               /* cmek.key.<compartment>.<random> */
        char *name;
        char *compartment;
        char *vault;            /* vault name */
        KeyState state;
        unsigned current_version;
        unsigned n_versions;
        bool provider_managed;  /* the broker's own default key */
        uint64_t deletion_usec; /* PENDING_DELETION only */
        char *on_disable;       /* "suspend", "close", or NULL: the [enforcement] default */
} KeyInfo;
void key_info_done(KeyInfo *k);

#define CMEK_GCM_IV_SIZE 12
#define CMEK_GCM_TAG_SIZE 16

/* Look a key up by id or name (re-reading its state from the token). -ENOENT when unknown. */
int key_lookup(Manager *m, const char *id_or_name, KeyInfo *ret);
/* The -errno that refuses using a key in state s: 0 (ENABLED), -EKEYREVOKED (DISABLED),
 * -EKEYEXPIRED (PENDING_DELETION), -ENOKEY (DELETED); lib/cmek-errors.c keeps the mapping. */
static inline int key_state_to_errno(KeyState s) {
        return cmek_error_from_key_state(key_state_to_string(s));
}
/* The enforcement watch: re-reads one key from its token (its metadata object and the usage
 * flags of its current version). A key ENABLED in its metadata whose CKA_DECRYPT/CKA_ENCRYPT
 * someone turned off in the token is taken as disabled there: cmekd records it DISABLED and
 * reports the change. *ret_state: the state after that. */
int key_watch(Manager *m, const char *id_or_name, KeyState *ret_state);
/* The provider-managed default key ("Oracle-managed" analog), created on first use. */
int key_get_default(Manager *m, KeyInfo *ret);

/* AES-256-GCM inside the token under the given version (0 = newest). Refused unless the key is
 * ENABLED: -EKEYREVOKED (disabled), -EKEYEXPIRED (pending deletion), -ENOKEY (deleted),
 * -ENOENT (no such key/version). *ret_version is the version used. */
int key_encrypt(Manager *m, const char *key_id, unsigned version,
                const void *aad, size_t aad_size, const void *pt, size_t pt_size,
                unsigned *ret_version, uint8_t iv[CMEK_GCM_IV_SIZE],
                void *ret_ct /* pt_size bytes */, uint8_t tag[CMEK_GCM_TAG_SIZE]);
/* Same refusals; -EBADMSG when the tag does not verify (wrong AAD: moved to another volume).
 * ret_pt is a cmek_secure_alloc() buffer of ct_size bytes. */
int key_decrypt(Manager *m, const char *key_id, unsigned version,
                const void *aad, size_t aad_size, const uint8_t iv[CMEK_GCM_IV_SIZE],
                const void *ct, size_t ct_size, const uint8_t tag[CMEK_GCM_TAG_SIZE],
                void **ret_pt);

/* Called by the key code after every state change (from an API call, the deletion timer or
 * a change noticed in the token): emits events and tells the volume code. */
void manager_key_state_changed(Manager *m, const char *key_id, KeyState old_state, KeyState new_state);
/* Called after a new version exists: the volume code re-wraps bound volumes. */
void manager_key_rotated(Manager *m, const char *key_id, unsigned new_version);

/* Events (io.cmek.Events.Subscribe, hooks, journal). Takes ownership of data. */
void manager_event(Manager *m, const char *type, json_object *data);
/* Holds events (nested) until the matching release, which sends them in order. */
void manager_events_hold(Manager *m);
void manager_events_release(Manager *m);
/* The clock for waiting periods; CMEKD_TEST_NOW (seconds since the epoch) moves it in tests. */
uint64_t manager_now_usec(Manager *m);
