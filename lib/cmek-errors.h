/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* The error table: Varlink error name, daemon -errno, cmekctl exit code, token-plugin errno, hint. */
#pragma once

#include <stdbool.h>
#include <stddef.h>

#include "cmek-protocol.h"

/* cmekctl's exit codes: a stable interface, documented in cmekctl(8) EXIT STATUS. */
enum {
        CTL_EXIT_OK = 0,
        CTL_EXIT_FAILURE = 1,          /* anything else */
        CTL_EXIT_USAGE = 2,            /* bad command line */
        CTL_EXIT_NO_DAEMON = 3,        /* cmekd not reachable */
        CTL_EXIT_PERMISSION = 4,       /* io.cmek.PermissionDenied */
        CTL_EXIT_NOT_FOUND = 5,        /* key, vault or volume unknown */
        CTL_EXIT_KEY_UNUSABLE = 6,     /* key disabled, pending deletion or deleted */
        CTL_EXIT_INVALID_STATE = 7,    /* transition refused by the key state machine */
        CTL_EXIT_VERIFY_FAILED = 8,    /* audit chain broken, unwrap check failed */
};

/* Another -errno of the daemon's key and volume layers that is answered with the same error. */
typedef struct CmekErrorCause {
        int errno_value;
        const char *hint;
} CmekErrorCause;

/* One row per Varlink error name. */
typedef struct CmekError {
        /* the Varlink error name (the CMEK_ERROR_ and VARLINK_ERROR_ constants) */
        const char *name;
        /* the -errno this error stands for, both ways (0: none; no -errno is answered with it) */
        int errno_value;
        /* errno_value is answered with this error only when the request names a key (-ENOKEY:
         * the key is deleted; without a key: the volume has no usable CMEK keyslot) */
        bool with_key;
        /* for the key-state errors: the state they put in their "state" parameter */
        const char *key_state;
        int exit_code;          /* cmekctl's exit code */
        /* what the token plugin returns to libcryptsetup for it: -EAGAIN, the key source is absent
         * for now; -EPERM, this token cannot open the volume (key disabled, deleted, access denied,
         * wrong volume). Both let libcryptsetup try the next token and the cryptsetup CLI fall back
         * to a passphrase prompt (unless --token-only). */
        int plugin_errno;
        /* what to do; "{device}", "{key_id}" and "{errno}" (strerror) are filled in */
        const char *hint;
        /* the parameters the error carries on the wire, as Varlink IDL fields */
        const char *parameters;
        /* other -errno values answered with this error, each with its hint; ends with { 0 } */
        const CmekErrorCause *causes;
} CmekError;

extern const CmekError cmek_errors[];
extern const size_t cmek_errors_n;

/* The row of a Varlink error name; an unknown or NULL name gets the generic row (name NULL,
 * exit code CTL_EXIT_FAILURE, plugin errno -EPERM). Never NULL. */
const CmekError *cmek_error_from_name(const char *name);
/* The row that answers the -errno r of the key and volume layers (with_key: the request names a
 * key), and in *ret_hint (may be NULL) the hint for this r; any other r gets io.cmek.DeviceError
 * with "{device}: {errno}". Never NULL. */
const CmekError *cmek_error_from_errno(int r, bool with_key, const char **ret_hint);
/* The -errno a name stands for (0 if none, or unknown). */
int cmek_error_to_errno(const char *name);
/* The -errno that refuses using a key in this state ("ENABLED" → 0, "DISABLED" → -EKEYREVOKED,
 * "PENDING_DELETION" → -EKEYEXPIRED, anything else → -ENOKEY). */
int cmek_error_from_key_state(const char *state);
/* Writes hint to buf with the placeholders filled in (NULL ones as ""); returns buf. */
char *cmek_error_format_hint(const char *hint, int r, const char *device, const char *key_id, char *buf, size_t size);
