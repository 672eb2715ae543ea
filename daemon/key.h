/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* Master keys: lifecycle, versions, wrap/unwrap. The token is the source of truth. */
#pragma once

#include <stdint.h>
#include <json-c/json.h>

#include "cmek-errors.h"
#include "manager.h"
#include "vault.h"

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

/* What the key layer tells the layers above it, through m->key_hooks (set by the manager:
 * daemon/events.c); the key layer calls nothing above it directly. */
struct KeyHooks {
        /* after every state change (an API call, the deletion timer, or a change noticed in the
         * token): events, then the volumes */
        void (*state_changed)(Manager *m, const char *key_id, KeyState old_state, KeyState new_state);
        /* before the token write that turns a key off: the volumes lock at once (idempotent,
         * state_changed follows) */
        void (*turning_off)(Manager *m, const char *key_id, KeyState old_state, KeyState new_state);
        /* after a new version exists: the volume code re-wraps bound volumes */
        void (*rotated)(Manager *m, const char *key_id, unsigned new_version);
        /* events wait (nested) from hold until the matching release, which sends them in order */
        void (*hold)(Manager *m);
        void (*release)(Manager *m);
};

/* Events (io.cmek.Events.Subscribe, hooks, journal). Takes ownership of data.
 * (daemon/events.c; declared here until the volume code reports through hooks too) */
void manager_event(Manager *m, const char *type, json_object *data);

/* --- the key store (daemon/key.c) as daemon/api-key.c uses it --- */
typedef struct Key Key;         /* one key's metadata object, as read from its token */

int keys_init(Manager *m);      /* the module hook: vaults, then the scheduler */
void keys_done(Manager *m);
VaultSet *keys_vaults(Manager *m);

/* By id, or by name ("NAME" or "COMPARTMENT/NAME"); -ENOENT, -ENOTUNIQ (name in several
 * compartments). Carries out a deletion that is due. */
/* The first vault that cannot be used now (and why): for -EHOSTDOWN from key_load()/key_lookup(),
 * the key was not found and a vault that may hold it is unavailable (its token gone). */
Vault *keys_unavailable_vault(Manager *m, const char **ret_reason);
int key_load(Manager *m, const char *id_or_name, Key **ret);
Key *key_free(Key *k);
static inline void key_freep(Key **k) { key_free(*k); }
int key_load_all(Manager *m, Key ***ret, size_t *ret_n);
void key_array_free(Key **a, size_t n);
json_object *key_to_json(Manager *m, Key *k);   /* KeyInfo of the IDL */
const char *key_get_id(const Key *k);
const char *key_get_name(const Key *k);
const char *key_get_compartment(const Key *k);
KeyState key_get_state(const Key *k);
bool key_is_provider_managed(const Key *k);

typedef struct KeyCreateParams {
        const char *name, *compartment, *vault; /* vault NULL: default */
        unsigned bits;                          /* 128, 192, 256 */
        bool software;                          /* protection mode */
        unsigned rotation_interval_days;        /* 0: manual only */
        bool provider_managed;
        const char *on_disable;                 /* "suspend", "close" or NULL (the global default) */
        /* import: */
        VaultWrapAlgorithm wrap_algorithm;
        const void *wrapped;
        size_t wrapped_size;
} KeyCreateParams;
/* -EEXIST (name taken in compartment), -ENODEV (no such vault), -ENXIO (vault unavailable,
 * *ret_reason says why), -EINVAL, import: -EBADMSG, -EMSGSIZE, -ENOKEY (no wrapping key). */
int key_create(Manager *m, Call *c, const KeyCreateParams *p, Key **ret, const char **ret_reason);

typedef enum KeyOp {
        KEY_OP_ENABLE,
        KEY_OP_DISABLE,
        KEY_OP_SCHEDULE_DELETION,
        KEY_OP_CANCEL_DELETION,
        KEY_OP_ROTATE,
        _KEY_OP_MAX,
} KeyOp;
const char *key_op_to_string(KeyOp op);
/* Allowed operations from a state, as a JSON array of strings. */
json_object *key_allowed_ops(KeyState s);
/* -EBADR when the state machine forbids op from the key's state (caller replies
 * InvalidStateTransition), -EPERM for the provider-managed key. Audits. days: for
 * schedule-deletion. ret_version: for rotate (may be NULL). */
int key_apply(Manager *m, Call *c, Key *k, KeyOp op, unsigned days, unsigned *ret_version);
/* -ENOENT no such version, -EBUSY it is the current version */
int key_set_version_enabled(Manager *m, Call *c, Key *k, unsigned version, bool enabled);
/* Deletions and rotations due at now; fills arrays of key ids (may be NULL). */
int key_run_scheduled(Manager *m, uint64_t now_usec, json_object *ret_deleted, json_object *ret_rotated);
size_t key_count_in_vault(Manager *m, const char *vault);
