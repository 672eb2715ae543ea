/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* Vaults: PKCS#11 tokens reached through p11-kit, one logged-in R/W session each. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <json-c/json.h>
#include <p11-kit/pkcs11.h>

#include "cmek-util.h"
#include "config.h"

typedef struct Vault Vault;
typedef struct VaultSet VaultSet;

#define VAULT_DEFAULT_NAME "default"
#define VAULT_DEFAULT_TOKEN_LABEL "cmekd-default"
#define VAULT_APPLICATION "cmekd"          /* CKA_APPLICATION of every CKO_DATA object we own */
#define VAULT_WRAPPING_KEY_LABEL "cmek:wrapping-key"
#define VAULT_WRAPPING_KEY_BITS 4096

/* Loads the embedded default vault (a SoftHSM2 token under state_dir, initialised on first
 * start) and the vault of every "[vault NAME]" section of config (may be NULL: none). A vault
 * that fails is kept, marked unavailable with the reason; only out-of-memory fails this. */
int vault_set_load(const char *state_dir, const Config *config, const char *softhsm_module, VaultSet **ret);
VaultSet *vault_set_free(VaultSet *s);
static inline void vault_set_freep(VaultSet **s) { vault_set_free(*s); }

size_t vault_set_size(const VaultSet *s);
Vault *vault_set_get(const VaultSet *s, size_t i);
Vault *vault_set_find(const VaultSet *s, const char *name);

const char *vault_name(const Vault *v);
/* NULL when usable, else why not (tries to reconnect first). */
const char *vault_unavailable_reason(Vault *v);
/* { name, uri, module, available, reason, token: {label, manufacturer, model, serial, ...},
 *   slots, free_slots, n_objects } */
int vault_describe(Vault *v, json_object **ret);
/* "[vault NAME] compartments = ...": true when keys of this compartment may live in the vault
 * (always, for a vault without the setting). */
bool vault_allows_compartment(const Vault *v, const char *compartment);
/* "A, B" (free() it), for messages. */
char *vault_compartments_string(const Vault *v);

/* --- CKO_DATA objects with CKA_APPLICATION "cmekd" --- */
typedef struct VaultData {
        CK_OBJECT_HANDLE handle;
        char *label;
        char *value;            /* NUL-terminated */
        size_t size;
} VaultData;
void vault_data_array_free(VaultData *d, size_t n);
/* label NULL: every object of ours. */
int vault_data_find(Vault *v, const char *label, VaultData **ret, size_t *ret_n);
int vault_data_create(Vault *v, const char *label, const char *value, CK_OBJECT_HANDLE *ret);
/* -EOPNOTSUPP when the token does not let CKA_VALUE change. */
int vault_data_update(Vault *v, CK_OBJECT_HANDLE h, const char *value);
int vault_object_destroy(Vault *v, CK_OBJECT_HANDLE h);

/* --- AES master key versions --- */
typedef struct VaultKeyFlags {
        bool encrypt, decrypt, sensitive, extractable;
        unsigned long value_len;
} VaultKeyFlags;

/* -ENOENT when no secret key has this label. */
int vault_secret_find(Vault *v, const char *label, CK_OBJECT_HANDLE *ret);
int vault_secret_generate(Vault *v, const char *label, const char *id, unsigned bytes, CK_OBJECT_HANDLE *ret);
int vault_secret_get_flags(Vault *v, CK_OBJECT_HANDLE h, VaultKeyFlags *ret);
/* Sets CKA_ENCRYPT/CKA_DECRYPT; -EOPNOTSUPP when the token refuses. */
int vault_secret_set_usage(Vault *v, CK_OBJECT_HANDLE h, bool usable);

/* AES-GCM, 12-byte IV, 16-byte tag. Encrypt picks a random IV. Decrypt: -EBADMSG when the
 * tag does not verify, -EKEYREVOKED when the token refuses the key for this use;
 * ret_pt is cmek_secure_alloc()ed. */
int vault_gcm_encrypt(Vault *v, CK_OBJECT_HANDLE h, const void *aad, size_t aad_size,
                      const void *pt, size_t pt_size, uint8_t iv[12], void *ret_ct, uint8_t tag[16]);
int vault_gcm_decrypt(Vault *v, CK_OBJECT_HANDLE h, const void *aad, size_t aad_size,
                      const uint8_t iv[12], const void *ct, size_t ct_size, const uint8_t tag[16],
                      void **ret_pt);
/* The flags and the decryption of the secret key labelled label, through a label -> handle cache
 * (no C_FindObjects on the hot path). The cache is emptied when the session is lost and when any
 * object is destroyed; an operation that fails through a cached handle looks the label up again. */
int vault_secret_get_flags_by_label(Vault *v, const char *label, VaultKeyFlags *ret);
int vault_gcm_decrypt_by_label(Vault *v, const char *label, const void *aad, size_t aad_size,
                               const uint8_t iv[12], const void *ct, size_t ct_size, const uint8_t tag[16],
                               void **ret_pt);
int vault_random(Vault *v, void *buf, size_t n);

/* --- HMAC-SHA256 inside the token (the audit log's checkpoints, daemon/audit-anchor.c) --- */
#define VAULT_AUDIT_HMAC_LABEL "cmek:audit-hmac"
#define VAULT_AUDIT_ANCHOR_LABEL "cmek:audit-anchor"
/* A 256-bit CKK_GENERIC_SECRET key: sensitive, never extractable, CKA_SIGN/CKA_VERIFY only.
 * Find it with vault_secret_find(). */
int vault_hmac_key_generate(Vault *v, const char *label, CK_OBJECT_HANDLE *ret);
/* CKM_SHA256_HMAC through C_Sign (works through p11-kit's RPC too). */
int vault_hmac_sha256(Vault *v, CK_OBJECT_HANDLE h, const void *data, size_t n, uint8_t ret[static 32]);
/* 1 when the key is a sensitive, never-extractable generic secret, 0 when not, or -errno. */
int vault_secret_is_sealed_hmac(Vault *v, CK_OBJECT_HANDLE h);

/* --- import (BYOK) --- */
typedef enum VaultWrapAlgorithm {
        VAULT_WRAP_RSA_OAEP_SHA256,
        VAULT_WRAP_RSA_OAEP_AES_SHA256,
        _VAULT_WRAP_MAX,
        _VAULT_WRAP_INVALID = -EINVAL,
} VaultWrapAlgorithm;
const char *vault_wrap_algorithm_to_string(VaultWrapAlgorithm a);
VaultWrapAlgorithm vault_wrap_algorithm_from_string(const char *s);

/* The RSA wrapping key's public half as PEM; generated on first call when create is set,
 * else -ENOENT. */
int vault_wrapping_key_pem(Vault *v, bool create, char **ret_pem);
/* Unwraps blob into a new token AES key with the master key template. -EBADMSG for a blob
 * that does not unwrap (wrong key, corrupted, truncated), -EMSGSIZE for a wrong size. Leaves
 * nothing behind on failure. */
int vault_secret_import(Vault *v, VaultWrapAlgorithm alg, const void *blob, size_t blob_size,
                        const char *label, const char *id, CK_OBJECT_HANDLE *ret, unsigned *ret_bytes);

/* Maps a PKCS#11 return value to -errno. */
int vault_rv_to_errno(CK_RV rv);

/* --- the key store (daemon/key.c) as daemon/api-key.c uses it --- */
#include "key.h"

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
