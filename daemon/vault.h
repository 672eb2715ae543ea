/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* Vaults: PKCS#11 tokens reached through p11-kit, one logged-in R/W session each. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <json-c/json.h>
#include <p11-kit/pkcs11.h>

#include "cmek-protocol.h"
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

/* AES-GCM, CMEK_GCM_IV_SIZE-byte IV, CMEK_GCM_TAG_SIZE-byte tag. Encrypt picks a random IV. Decrypt: -EBADMSG when the
 * tag does not verify, -EKEYREVOKED when the token refuses the key for this use;
 * ret_pt is cmek_secure_alloc()ed. */
int vault_gcm_encrypt(Vault *v, CK_OBJECT_HANDLE h, const void *aad, size_t aad_size,
                      const void *pt, size_t pt_size, uint8_t iv[CMEK_GCM_IV_SIZE], void *ret_ct, uint8_t tag[CMEK_GCM_TAG_SIZE]);
int vault_gcm_decrypt(Vault *v, CK_OBJECT_HANDLE h, const void *aad, size_t aad_size,
                      const uint8_t iv[CMEK_GCM_IV_SIZE], const void *ct, size_t ct_size, const uint8_t tag[CMEK_GCM_TAG_SIZE],
                      void **ret_pt);
/* The flags and the decryption of the secret key labelled label, through a label -> handle cache
 * (no C_FindObjects on the hot path). The cache is emptied when the session is lost and when any
 * object is destroyed; an operation that fails through a cached handle looks the label up again. */
int vault_secret_get_flags_by_label(Vault *v, const char *label, VaultKeyFlags *ret);
int vault_gcm_decrypt_by_label(Vault *v, const char *label, const void *aad, size_t aad_size,
                               const uint8_t iv[CMEK_GCM_IV_SIZE], const void *ct, size_t ct_size, const uint8_t tag[CMEK_GCM_TAG_SIZE],
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
/* The import blob's size for alg and a wrapping key of mod_size bytes: the RSA-OAEP block, and for
 * RSA_OAEP_AES_SHA256 an RFC 5649 AES-KWP part of 24, 32 or 40 bytes (*ret_kwp_size; 0 for
 * RSA_OAEP_SHA256). -EMSGSIZE otherwise. Pure: the fuzzer fuzz-import calls it. */
int vault_import_blob_check(VaultWrapAlgorithm alg, size_t blob_size, size_t mod_size, size_t *ret_kwp_size);
/* OAEP(SHA-256, MGF1-SHA-256) decoding of a raw RSA block (raw_size bytes, modulus mod_size bytes)
 * into ret_key (mod_size bytes, locked memory): the AES key's length, -EBADMSG when the block does
 * not decode, -EMSGSIZE when the key is not 16, 24 or 32 bytes. The import fallback for tokens
 * without OAEP-SHA-256; pure: the fuzzer fuzz-import calls it. */
int vault_oaep_decode(const uint8_t *raw, size_t raw_size, size_t mod_size, uint8_t *ret_key);

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
