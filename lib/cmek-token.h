/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* The "cmek" LUKS2 token: build, parse and strictly validate its JSON; the AAD of the wrapped DEK.
 * Shared by the daemon (writes tokens), the cryptsetup plugin and the udev helper (read them).
 * The format is documented field by field in cmek-token(7). */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <json-c/json.h>

#include "cmek-protocol.h"

#define CMEK_TOKEN_TYPE "cmek"
#define CMEK_TOKEN_VERSION 1            /* "cmek_version": bump on incompatible changes */
#define CMEK_TOKEN_ALG "AES-256-GCM"
#define CMEK_DEK_SIZE 32                /* the per-volume secret that opens the keyslot */
#define CMEK_TOKEN_ID_MAX 255           /* key id and vault name length limit */
#define CMEK_LUKS2_KEYSLOTS_MAX 32

typedef struct CmekToken {
        int keyslot;            /* the keyslot the DEK opens; -1: none (a token being removed) */
        int pending_keyslot;    /* -1, or a keyslot a --new-secret re-wrap is adding (crash recovery) */
        unsigned cmek_version;
        char *key_id;
        unsigned key_version;
        char *vault;
        char *created;          /* ISO 8601 UTC, informational */
        uint8_t iv[CMEK_GCM_IV_SIZE];
        uint8_t ciphertext[CMEK_DEK_SIZE]; /* the wrapped DEK: not secret without the master key */
        uint8_t tag[CMEK_GCM_TAG_SIZE];
} CmekToken;

#define CMEK_TOKEN_NULL { .keyslot = -1, .pending_keyslot = -1 }

void cmek_token_done(CmekToken *t);

/* Strict parse: the exact schema of cmek-token(7), no unknown fields, canonical base64, sizes
 * checked. -EINVAL when the JSON is malformed, -EPROTONOSUPPORT for a newer cmek_version,
 * -EMEDIUMTYPE when it is another token type. On failure *ret_reason (if given) is a static
 * string saying what is wrong. */
int cmek_token_parse(const char *json, CmekToken *ret, const char **ret_reason);
/* The same checks on an already parsed object (the daemon gets the token inside a Varlink call). */
int cmek_token_from_json(json_object *o, CmekToken *ret, const char **ret_reason);
/* Same checks, nothing kept: for cryptsetup_token_validate(). */
int cmek_token_validate(const char *json, const char **ret_reason);
/* The on-disk JSON (plain, compact). */
int cmek_token_to_json(const CmekToken *t, char **ret);

/* AAD = "cmek-v1" NUL uuid NUL keyslot NUL key_id NUL key_version (decimal), no final NUL:
 * binds a wrapped DEK to one volume, keyslot, key and key version. */
int cmek_token_aad(const char *luks_uuid, int keyslot, const char *key_id, unsigned key_version,
                   uint8_t **ret, size_t *ret_size);

/* Names allowed for key ids and vaults inside a token: [A-Za-z0-9._:@-], 1..255 bytes. */
bool cmek_token_name_is_valid(const char *s);

/* The current time as "YYYY-MM-DDTHH:MM:SSZ". */
int cmek_token_now_iso(char ret[static 32]);
