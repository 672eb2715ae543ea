/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* The one error table: every Varlink error name with its -errno, cmekctl exit code, token-plugin
 * errno, hint and wire parameters; the daemon, cmekctl and the token plugin all read it. */
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "cmek-errors.h"
#include "cmek-util.h"

#define KEY_PARAMS "message: string, key: ?string, key_id: ?string, device: ?string"
#define DEVICE_PARAMS "message: string, device: ?string, key_id: ?string"

const CmekError cmek_errors[] = {
        {
                .name = CMEK_ERROR_PERMISSION_DENIED,
                .exit_code = CTL_EXIT_PERMISSION, .plugin_errno = -EPERM,
                .hint = "the policy does not allow this call: the \"statement\" parameter, when given, is the "
                        "policy statement that would allow it; ask an administrator to add it",
                .parameters = "message: ?string, verb: string, resource: string, compartment: ?string, "
                              "key_id: ?string, volume_id: ?string, vault: ?string, statement: ?string",
        },
        {
                .name = CMEK_ERROR_KEY_NOT_FOUND, .errno_value = -ENOENT,
                .exit_code = CTL_EXIT_NOT_FOUND, .plugin_errno = -EPERM,
                .hint = "no key or key version '{key_id}' (or the volume is not bound)",
                .parameters = KEY_PARAMS,
        },
        {
                .name = CMEK_ERROR_KEY_DISABLED, .errno_value = -EKEYREVOKED, .key_state = "DISABLED",
                .exit_code = CTL_EXIT_KEY_UNUSABLE, .plugin_errno = -EPERM,
                .hint = "key {key_id} is DISABLED: enable it with 'cmekctl key enable {key_id}'",
                .parameters = KEY_PARAMS ", state: ?string",
        },
        {
                .name = CMEK_ERROR_KEY_PENDING_DELETION, .errno_value = -EKEYEXPIRED, .key_state = "PENDING_DELETION",
                .exit_code = CTL_EXIT_KEY_UNUSABLE, .plugin_errno = -EPERM,
                .hint = "key {key_id} is PENDING_DELETION: cancel it with 'cmekctl key cancel-deletion {key_id}'",
                .parameters = KEY_PARAMS ", state: ?string",
        },
        {
                .name = CMEK_ERROR_KEY_DELETED, .errno_value = -ENOKEY, .with_key = true, .key_state = "DELETED",
                .exit_code = CTL_EXIT_KEY_UNUSABLE, .plugin_errno = -EPERM,
                .hint = "key {key_id} is DELETED: nothing it wrapped can be unwrapped again",
                .parameters = KEY_PARAMS ", state: ?string",
        },
        {
                .name = CMEK_ERROR_INVALID_TRANSITION,
                .exit_code = CTL_EXIT_INVALID_STATE, .plugin_errno = -EPERM,
                .hint = "the key's state machine does not allow this now: \"allowed\" lists the operations it allows",
                .parameters = "message: string, key: ?string, current_state: ?string, requested: ?string, "
                              "allowed: ?[]string, device: ?string, key_id: ?string",
                .causes = (const CmekErrorCause[]) {
                        { -ENOKEY, "'{device}' has no usable CMEK keyslot (key deleted or volume shredded)" },
                        {},
                },
        },
        {
                .name = CMEK_ERROR_VAULT_UNAVAILABLE, .errno_value = -EHOSTDOWN,
                .exit_code = CTL_EXIT_FAILURE, .plugin_errno = -EAGAIN,
                .hint = "key {key_id} is not in any available vault, and a vault is unavailable "
                        "(its token gone?): see 'cmekctl vault list'",
                .parameters = "message: string, vault: ?string, reason: ?string, device: ?string, key_id: ?string",
        },
        {
                .name = CMEK_ERROR_VAULT_NOT_FOUND,
                .exit_code = CTL_EXIT_NOT_FOUND, .plugin_errno = -EPERM,
                .hint = "no such vault: see 'cmekctl vault list' and the [vault NAME] sections of cmekd.conf(5)",
                .parameters = "message: string, vault: string",
        },
        {
                .name = CMEK_ERROR_VOLUME_NOT_FOUND, .errno_value = -ENODEV,
                .exit_code = CTL_EXIT_NOT_FOUND, .plugin_errno = -EPERM,
                .hint = "'{device}' does not exist or is no longer the volume cmekd knows; "
                        "create an image with --size, or run 'cmekctl volume scan PATH'",
                .parameters = DEVICE_PARAMS,
        },
        {
                .name = CMEK_ERROR_NOT_LUKS2, .errno_value = -EMEDIUMTYPE,
                .exit_code = CTL_EXIT_FAILURE, .plugin_errno = -EPERM,
                .hint = "'{device}' is not a LUKS2 volume (LUKS1 or no LUKS header): convert it with "
                        "'cryptsetup convert --type luks2' or format it with 'cmekctl volume create'",
                .parameters = DEVICE_PARAMS,
        },
        {
                .name = CMEK_ERROR_UNWRAP_FAILED, .errno_value = -EBADMSG,
                .exit_code = CTL_EXIT_VERIFY_FAILED, .plugin_errno = -EPERM,
                .hint = "the wrapped DEK does not authenticate for this volume, keyslot, key and version: "
                        "the token was copied from another volume or altered",
                .parameters = KEY_PARAMS,
        },
        {
                .name = CMEK_ERROR_IMPORT_FAILED,
                .exit_code = CTL_EXIT_FAILURE, .plugin_errno = -EPERM,
                .hint = "the wrapped key material was refused (\"reason\" says why): wrap it again for the "
                        "vault's wrapping key ('cmekctl key wrapping-key') with the algorithm given",
                .parameters = "message: string, reason: string",
        },
        {
                .name = CMEK_ERROR_MALFORMED_MESSAGE,
                .exit_code = CTL_EXIT_FAILURE, .plugin_errno = -EPERM,
                .hint = "the request is not a Varlink call (a JSON object with a \"method\" string, NUL-terminated)",
                .parameters = "message: string",
        },
        {
                .name = CMEK_ERROR_MESSAGE_TOO_LARGE,
                .exit_code = CTL_EXIT_FAILURE, .plugin_errno = -EPERM,
                .hint = "the request is larger than cmekd reads (128 KiB): send less in one call",
                .parameters = "message: string",
        },
        {
                .name = CMEK_ERROR_INTERNAL,
                .exit_code = CTL_EXIT_FAILURE, .plugin_errno = -EPERM,
                .hint = "cmekd failed in a way the request did not cause: see its journal ('journalctl -u cmekd')",
                .parameters = "message: string",
        },
        {
                .name = CMEK_ERROR_AUDIT_BROKEN,
                .exit_code = CTL_EXIT_VERIFY_FAILED, .plugin_errno = -EPERM,
                .hint = "the audit log does not verify: see 'cmekctl audit verify' and docs/SECURITY.md",
                .parameters = "message: string",
        },
        {
                .name = CMEK_ERROR_AUDIT_UNAVAILABLE,
                .exit_code = CTL_EXIT_FAILURE, .plugin_errno = -EPERM,
                .hint = "the audit record could not be made durable, so the operation was refused: "
                        "free space on the audit log's file system, then retry",
                .parameters = "message: string",
        },
        {
                .name = CMEK_ERROR_ALREADY_EXISTS, .errno_value = -EEXIST,
                .exit_code = CTL_EXIT_FAILURE, .plugin_errno = -EPERM,
                .hint = "'{device}' already has a LUKS header: bind it with 'cmekctl volume bind'",
                .parameters = "message: string, name: ?string, compartment: ?string, device: ?string, key_id: ?string",
                .causes = (const CmekErrorCause[]) {
                        { -ENOTEMPTY, "'{device}' holds data (its first 64 KiB are not zero): pass --force to format it anyway" },
                        {},
                },
        },
        {
                .name = CMEK_ERROR_BUSY, .errno_value = -EBUSY,
                .exit_code = CTL_EXIT_FAILURE, .plugin_errno = -EAGAIN,
                .hint = "'{device}' is in use",
                .parameters = DEVICE_PARAMS,
                .causes = (const CmekErrorCause[]) {
                        { -ESTALE, "the header of '{device}' changed while the request was being checked: try again" },
                        {},
                },
        },
        {
                .name = CMEK_ERROR_DEVICE_ERROR, .errno_value = -EIO,
                .exit_code = CTL_EXIT_FAILURE, .plugin_errno = -EPERM,
                .hint = "'{device}': {errno}",
                .parameters = DEVICE_PARAMS,
                .causes = (const CmekErrorCause[]) {
                        { -ENOSPC, "no free keyslot or token (or no room in the LUKS2 metadata) on '{device}'" },
                        {},
                },
        },
        {
                .name = VARLINK_ERROR_INVALID_PARAMETER,
                .exit_code = CTL_EXIT_USAGE, .plugin_errno = -EPERM,
                .hint = "the parameter named in \"parameter\" is missing or wrong: \"message\" says what it takes",
                .parameters = "parameter: ?string, message: ?string, vault: ?string, compartment: ?string, "
                              "device: ?string, key_id: ?string",
                .causes = (const CmekErrorCause[]) {
                        { -EPERM, "the unlock passphrase or key file does not open the keyslot tried on '{device}' "
                                  "(one per request: the one given with --unlock-keyslot N, else the first non-CMEK keyslot; "
                                  "'cryptsetup luksDump' lists them)" },
                        { -E2BIG, "the keyslot of '{device}' to derive from uses a PBKDF costlier than cmekd runs "
                                  "(Argon2 above 1 GiB, 4 threads or 16 passes, PBKDF2 above 10 million iterations): add a "
                                  "passphrase with the default PBKDF (cryptsetup luksAddKey) and pass --unlock-keyslot" },
                        { -ENXIO, "'{device}' has no such active keyslot to derive from (only the CMEK one?): "
                                  "pass --unlock-keyslot N of a passphrase keyslot" },
                        {},
                },
        },
        {
                .name = VARLINK_ERROR_METHOD_NOT_FOUND,
                .exit_code = CTL_EXIT_FAILURE, .plugin_errno = -EPERM,
                .hint = "the running cmekd does not know this method: is it older than its client?",
                .parameters = "method: string",
        },
        {
                .name = VARLINK_ERROR_INTERFACE_NOT_FOUND,
                .exit_code = CTL_EXIT_FAILURE, .plugin_errno = -EPERM,
                .hint = "the running cmekd does not know this interface: is it older than its client?",
                .parameters = "interface: string",
        },
        {
                .name = VARLINK_ERROR_METHOD_NOT_IMPLEMENTED,
                .exit_code = CTL_EXIT_FAILURE, .plugin_errno = -EPERM,
                .hint = "cmekd declares this method but does not implement it in this form (\"more\" or \"oneway\")",
                .parameters = "method: string",
        },
        {
                .name = VARLINK_ERROR_EXPECTED_MORE,
                .exit_code = CTL_EXIT_FAILURE, .plugin_errno = -EPERM,
                .hint = "this method streams its replies: call it with \"more\": true",
                .parameters = "message: ?string",
        },
};
const size_t cmek_errors_n = ARRAY_SIZE(cmek_errors);

static const CmekError generic = {
        .exit_code = CTL_EXIT_FAILURE, .plugin_errno = -EPERM,
        .hint = "an error this program does not know: see the \"message\" parameter",
};

const CmekError *cmek_error_from_name(const char *name) {
        if (name)
                for (size_t i = 0; i < cmek_errors_n; i++)
                        if (streq(cmek_errors[i].name, name))
                                return &cmek_errors[i];
        return &generic;
}

const CmekError *cmek_error_from_errno(int r, bool with_key, const char **ret_hint) {
        const CmekError *e = NULL;
        const char *hint = NULL;

        for (size_t i = 0; !e && i < cmek_errors_n; i++)
                if (r != 0 && cmek_errors[i].errno_value == r && (with_key || !cmek_errors[i].with_key)) {
                        e = &cmek_errors[i];
                        hint = e->hint;
                }
        for (size_t i = 0; !e && i < cmek_errors_n; i++)
                for (const CmekErrorCause *c = cmek_errors[i].causes; c && c->errno_value != 0; c++)
                        if (c->errno_value == r) {
                                e = &cmek_errors[i];
                                hint = c->hint;
                                break;
                        }
        if (!e) {
                e = cmek_error_from_name(CMEK_ERROR_DEVICE_ERROR);
                hint = e->hint;
        }
        if (ret_hint)
                *ret_hint = hint;
        return e;
}

int cmek_error_to_errno(const char *name) {
        return cmek_error_from_name(name)->errno_value;
}

int cmek_error_from_key_state(const char *state) {
        if (streq_ptr(state, "ENABLED"))
                return 0;
        for (size_t i = 0; state && i < cmek_errors_n; i++)
                if (streq_ptr(cmek_errors[i].key_state, state))
                        return cmek_errors[i].errno_value;
        return -ENOKEY;
}

char *cmek_error_format_hint(const char *hint, int r, const char *device, const char *key_id, char *buf, size_t size) {
        size_t o = 0;

        if (size == 0)
                return buf;
        for (const char *p = strempty(hint); *p && o + 1 < size; ) {
                const char *v = NULL;
                size_t skip = 0;

                if (strncmp(p, "{device}", 8) == 0)
                        v = strempty(device), skip = 8;
                else if (strncmp(p, "{key_id}", 8) == 0)
                        v = strempty(key_id), skip = 8;
                else if (strncmp(p, "{errno}", 7) == 0)
                        v = strerror(r < 0 ? -r : r), skip = 7;
                if (!v) {
                        buf[o++] = *p++;
                        continue;
                }
                for (; *v && o + 1 < size; v++)
                        buf[o++] = *v;
                p += skip;
        }
        buf[o] = 0;
        return buf;
}
