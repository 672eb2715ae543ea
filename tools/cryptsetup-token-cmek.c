/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* libcryptsetup-token-cmek.so: libcryptsetup's external token plugin for "cmek" tokens. It asks
 * cmekd to unwrap the volume's DEK and hands it to libcryptsetup; it never talks to a vault. */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <libcryptsetup.h>
#include <json-c/json.h>

#include "cmek-base64.h"
#include "cmek-errors.h"
#include "cmek-protocol.h"
#include "cmek-secmem.h"
#include "cmek-token.h"
#include "cmek-util.h"
#include "cmek-varlink.h"

/* per read/write. Not reachable (no socket, refused) fails at once; this bounds a broker that
 * accepted but is slow: its first start (socket activation, token login) took 7-8 s under
 * emulation, so allow 30 s before giving up and letting cryptsetup try the next token. */
#define CMEK_PLUGIN_TIMEOUT_MS 30000

#define _public_ __attribute__((visibility("default")))

/* The exported ABI (tools/libcryptsetup-token.sym, node CRYPTSETUP_TOKEN_1.0). */
_public_ int cryptsetup_token_open(struct crypt_device *cd, int token, char **buffer, size_t *buffer_len, void *usrptr);
_public_ void cryptsetup_token_buffer_free(void *buffer, size_t buffer_len);
_public_ int cryptsetup_token_validate(struct crypt_device *cd, const char *json);
_public_ void cryptsetup_token_dump(struct crypt_device *cd, const char *json);
_public_ const char *cryptsetup_token_version(void);

static int decode_secret(json_object *reply, char **ret, size_t *ret_size) {
        json_object *v = NULL;
        void *buf;
        size_t n;
        int r;

        if (!json_object_object_get_ex(reply, "secret", &v))
                return -EBADMSG;
        r = cmek_base64_decode_secret(v, CMEK_DEK_SIZE, &buf, &n);
        if (r == -ENOMEM)
                return r;
        if (r < 0)
                return -EBADMSG;
        if (n != CMEK_DEK_SIZE) {
                cmek_secure_free(buf);
                return -EBADMSG;
        }
        *ret = buf;
        *ret_size = CMEK_DEK_SIZE;
        return 0;
}

/* cd: the device being unlocked; token: the id of our token in its header; buffer/buffer_len:
 * where the keyslot passphrase goes (freed by cryptsetup_token_buffer_free); usrptr: unused. */
_public_ int cryptsetup_token_open(struct crypt_device *cd, int token, char **buffer, size_t *buffer_len, void *usrptr) {
        _cleanup_(cmek_client_freep) CmekClient *client = NULL;
        _cleanup_free_ char *error = NULL;
        const char *json = NULL, *uuid, *path, *why = NULL, *msg;
        json_object *params = NULL, *tok = NULL, *reply = NULL;
        CmekToken t = CMEK_TOKEN_NULL;
        int r;

        r = crypt_token_json_get(cd, token, &json);
        if (r < 0) {
                crypt_logf(cd, CRYPT_LOG_DEBUG, "cmek: cannot read token %d: %s", token, strerror(-r));
                return -ENOENT;
        }
        r = cmek_token_parse(json, &t, &why);
        if (r < 0) {
                crypt_logf(cd, CRYPT_LOG_ERROR, "cmek: token %d is malformed: %s", token, why);
                return -ENOENT;
        }
        uuid = crypt_get_uuid(cd);
        if (!uuid) {
                cmek_token_done(&t);
                return -ENOENT;
        }

        path = cmek_client_socket_path(NULL);
        r = cmek_client_connect(path, CMEK_PLUGIN_TIMEOUT_MS, &client);
        if (r < 0) {
                crypt_logf(cd, CRYPT_LOG_ERROR, "cmek: cmekd is not reachable at %s: %s (key %s)",
                           path, strerror(-r), t.key_id);
                cmek_token_done(&t);
                return -EAGAIN;
        }
        /* the volume key goes only to the real broker: a socket served by anyone but root (a
         * user's listener named by CMEKD_SOCKET, a squatted path) gets nothing, not even the token */
        uid_t peer = (uid_t) -1;
        r = cmek_client_peer_uid(client, &peer);
        if (r < 0 || peer != 0) {
                if (r < 0)
                        crypt_logf(cd, CRYPT_LOG_ERROR, "cmek: cannot tell who serves %s (%s): not asking it to unwrap "
                                   "the volume key (key %s).", path, strerror(-r), t.key_id);
                else
                        crypt_logf(cd, CRYPT_LOG_ERROR, "cmek: %s is served by uid %u, not root: refusing to ask it to "
                                   "unwrap the volume key (key %s). Point CMEKD_SOCKET at cmekd's socket (default "
                                   CMEK_DEFAULT_SOCKET ") or unset it.", path, (unsigned) peer, t.key_id);
                cmek_token_done(&t);
                return -EPERM;
        }

        tok = json_tokener_parse(json);
        params = json_object_new_object();
        if (!tok || !params) {
                r = -ENOMEM;
                goto out;
        }
        json_object_object_add(params, "uuid", json_object_new_string(uuid));
        json_object_object_add(params, "token", json_object_get(tok));
        r = cmek_client_call(client, "io.cmek.Volume.Unwrap", params, &reply, &error);
        if (r < 0) {
                crypt_logf(cd, CRYPT_LOG_ERROR, "cmek: cmekd at %s did not answer: %s (key %s)",
                           path, strerror(-r), t.key_id);
                r = -EAGAIN;
                goto out;
        }
        if (error) {
                /* the broker's message may quote names read from headers: escaped for the terminal */
                _cleanup_free_ char *emsg = cmek_cescape(cmek_json_get_string(reply, "message"));
                msg = emsg;
                if (streq(error, CMEK_ERROR_KEY_DISABLED) || streq(error, CMEK_ERROR_KEY_PENDING_DELETION) ||
                    streq(error, CMEK_ERROR_KEY_DELETED))
                        crypt_logf(cd, CRYPT_LOG_ERROR, "cmek: key %s is %s: cmekd refuses to unwrap the volume key.",
                                   t.key_id, cmek_json_get_string(reply, "state") ?: error);
                else
                        crypt_logf(cd, CRYPT_LOG_ERROR, "cmek: cmekd refused to unwrap (key %s): %s%s%s",
                                   t.key_id, error, msg ? ": " : "", msg ?: "");
                r = cmek_error_from_name(error)->plugin_errno; /* lib/cmek-errors.c */
                goto out;
        }
        r = decode_secret(reply, buffer, buffer_len);
        if (r < 0) {
                crypt_logf(cd, CRYPT_LOG_ERROR, "cmek: cmekd sent a malformed reply.");
                r = -EPERM;
                goto out;
        }
        crypt_logf(cd, CRYPT_LOG_DEBUG, "cmek: unwrapped by cmekd with key %s version %u.", t.key_id, t.key_version);
        r = 0;
out:
        json_object_put(reply);
        json_object_put(params);
        json_object_put(tok);
        cmek_token_done(&t);
        return r;
}

/* buffer/buffer_len: what cryptsetup_token_open() returned; wiped before it is freed. */
_public_ void cryptsetup_token_buffer_free(void *buffer, size_t buffer_len) {
        (void) buffer_len; /* cmek_secure_free knows the size and wipes it all */
        cmek_secure_free(buffer);
}

/* Called for "cryptsetup token import" and before every open: a side-effect-free schema check.
 * Returns 0 when json is a valid cmek token. */
_public_ int cryptsetup_token_validate(struct crypt_device *cd, const char *json) {
        const char *why = NULL;
        int r = cmek_token_validate(json, &why);
        if (r < 0) {
                crypt_logf(cd, CRYPT_LOG_ERROR, "cmek: invalid cmek token: %s.", why ?: strerror(-r));
                return 1;
        }
        return 0;
}

/* For "cryptsetup luksDump": which key wraps the DEK. Never the wrapped DEK, IV or tag. */
_public_ void cryptsetup_token_dump(struct crypt_device *cd, const char *json) {
        CmekToken t = CMEK_TOKEN_NULL;
        const char *why = NULL;

        if (cmek_token_parse(json, &t, &why) < 0) {
                crypt_logf(cd, CRYPT_LOG_NORMAL, "\tcmek:       malformed token (%s)\n", why);
                return;
        }
        crypt_logf(cd, CRYPT_LOG_NORMAL, "\tKey:        %s (version %u)\n", t.key_id, t.key_version);
        crypt_logf(cd, CRYPT_LOG_NORMAL, "\tVault:      %s\n", t.vault);
        crypt_logf(cd, CRYPT_LOG_NORMAL, "\tWrapping:   %s (cmek token v%u)\n", CMEK_TOKEN_ALG, t.cmek_version);
        crypt_logf(cd, CRYPT_LOG_NORMAL, "\tWrapped:    %s\n", t.created);
        if (t.pending_keyslot >= 0)
                crypt_logf(cd, CRYPT_LOG_NORMAL, "\tPending:    keyslot %d (interrupted re-wrap; cmekd finishes it)\n",
                           t.pending_keyslot);
        cmek_token_done(&t);
}

_public_ const char *cryptsetup_token_version(void) {
        return PACKAGE_VERSION;
}
