/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* Blocking Varlink client used by cmekctl, the token plugin and the udev helper. */
#pragma once

#include <stdbool.h>
#include <json-c/json.h>

#include "cmek-protocol.h"
#include "cmek-util.h"

typedef struct CmekClient CmekClient;

/* Connects to path (NULL: $CMEKD_SOCKET, else the default). Every later read and write
 * gives up after timeout_ms (<= 0: no limit). Returns -errno (-ENOENT/-ECONNREFUSED when
 * the daemon is not there). */
int cmek_client_connect(const char *path, int timeout_ms, CmekClient **ret);
CmekClient *cmek_client_free(CmekClient *c);
/* The uid of the process that serves the socket (SO_PEERCRED, taken when it listened). */
int cmek_client_peer_uid(CmekClient *c, uid_t *ret);
static inline void cmek_client_freep(CmekClient **c) { cmek_client_free(*c); }
const char *cmek_client_socket_path(const char *path);

int cmek_client_send(CmekClient *c, const char *method, json_object *params, bool more);
/* One reply. ret_params always set on success (an empty object if none); ret_error is the
 * Varlink error name or NULL; ret_continues tells whether more replies follow.
 * The raw bytes are wiped from the receive buffer once parsed. */
int cmek_client_recv(CmekClient *c, json_object **ret_params, char **ret_error, bool *ret_continues);
int cmek_client_call(CmekClient *c, const char *method, json_object *params,
                     json_object **ret_params, char **ret_error);

/* Framing shared with the daemon: parse one NUL-terminated message. */
int cmek_varlink_parse(const char *buf, size_t len, json_object **ret);

/* Wipe the bytes of a JSON string value in place (json-c keeps its own copy). */
void cmek_json_wipe_string(json_object *o);

/* JSON helpers that read optional fields with type checks. */
/* _cleanup_(json_object_putp) json_object *o = NULL; drops the reference at scope exit */
DEFINE_TRIVIAL_CLEANUP_FUNC(json_object *, json_object_put)

const char *cmek_json_get_string(json_object *o, const char *key);
bool cmek_json_get_int64(json_object *o, const char *key, int64_t *ret);
bool cmek_json_get_bool(json_object *o, const char *key, bool def);
/* The name of the first string parameter (top level, or inside a top-level array of strings) that
 * holds a control character (cmek_string_has_cc), or NULL: names and paths with escape sequences
 * are refused at the API before any handler sees them. */
const char *cmek_json_find_cc(json_object *params);
