/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* The io.cmek interface: the errors every cmekd interface may return, declared once, and
 * ListErrors, which lists them. */
#include "daemon.h"

/* Every error carries a "message" that says what to do; the other fields name what it is about
 * where the method knows it (device and key_id: the volume methods). */
#define CONTEXT V_STRING("device", V_OPT), V_STRING("key_id", V_OPT)

static const VarlinkSymbol errors_symbols[];

static int method_list_errors(Manager *m, Call *c, json_object *params) {
        json_object *a = json_object_new_array(), *p;

        for (const VarlinkSymbol *s = errors_symbols; s->name; s++) {
                json_object *e;
                _cleanup_free_ char *name = NULL;

                if (s->kind != VARLINK_ERROR)
                        continue;
                if (asprintf(&name, "%s.%s", interface_errors.name, s->name) < 0) {
                        json_object_put(a);
                        return -ENOMEM;
                }
                e = json_object_new_object();
                json_object_object_add(e, "name", json_object_new_string(name));
                json_object_object_add(e, "description", json_object_new_string(strempty(s->doc)));
                json_object_array_add(a, e);
        }
        p = json_object_new_object();
        json_object_object_add(p, "errors", a);
        return call_reply(c, p);
}

static const VarlinkSymbol errors_symbols[] = {
        { VARLINK_TYPEDEF, "ErrorInfo", .fields = VARLINK_FIELDS(V_STRING("name"), V_STRING("description")) },
        { VARLINK_METHOD, "ListErrors", .handler = method_list_errors, .unaudited = true,
          .doc = "The errors below with what they mean (public: needs no grant).",
          .out = VARLINK_FIELDS(V_TYPE("errors", "ErrorInfo", V_ARRAY)) },
        { VARLINK_ERROR, "PermissionDenied",
          .doc = "The policy does not allow it. statement: the policy line that would (told only to callers\n"
                 "with a grant in that compartment).",
          .fields = VARLINK_FIELDS(V_STRING("verb", V_OPT), V_STRING("resource", V_OPT), V_STRING("compartment", V_OPT),
                                   V_STRING("key_id", V_OPT), V_STRING("volume_id", V_OPT), V_STRING("vault", V_OPT),
                                   V_STRING("statement", V_OPT), V_STRING("message")) },
        { VARLINK_ERROR, "KeyNotFound",
          .doc = "No such key (or key version), or not one the caller may see. key: as the caller gave it.",
          .fields = VARLINK_FIELDS(V_STRING("key", V_OPT), CONTEXT, V_STRING("message")) },
        { VARLINK_ERROR, "KeyDisabled", .doc = "The key is DISABLED: enable it to use it again.",
          .fields = VARLINK_FIELDS(V_STRING("key", V_OPT), CONTEXT, V_STRING("state", V_OPT), V_STRING("message")) },
        { VARLINK_ERROR, "KeyPendingDeletion", .doc = "The key is PENDING_DELETION: cancel the deletion to use it again.",
          .fields = VARLINK_FIELDS(V_STRING("key", V_OPT), CONTEXT, V_STRING("state", V_OPT), V_STRING("message")) },
        { VARLINK_ERROR, "KeyDeleted", .doc = "The key is DELETED: nothing it wrapped can be unwrapped again.",
          .fields = VARLINK_FIELDS(V_STRING("key", V_OPT), CONTEXT, V_STRING("state", V_OPT), V_STRING("message")) },
        { VARLINK_ERROR, "InvalidStateTransition",
          .doc = "The key (or volume) is not in a state that allows this; allowed: what is.",
          .fields = VARLINK_FIELDS(V_STRING("key", V_OPT), V_STRING("current_state", V_OPT), V_STRING("requested", V_OPT),
                                   V_STRING("allowed", V_OPT, V_ARRAY), CONTEXT, V_STRING("message")) },
        { VARLINK_ERROR, "VaultUnavailable", .doc = "The vault (its PKCS#11 token) cannot be used now; reason says why.",
          .fields = VARLINK_FIELDS(V_STRING("vault", V_OPT), V_STRING("reason", V_OPT), CONTEXT, V_STRING("message")) },
        { VARLINK_ERROR, "VaultNotFound", .doc = "No vault of this name in cmekd.conf.",
          .fields = VARLINK_FIELDS(V_STRING("vault", V_OPT), V_STRING("message")) },
        { VARLINK_ERROR, "VolumeNotFound",
          .doc = "No such volume, or not one the caller may see, or not bound by cmekd.",
          .fields = VARLINK_FIELDS(CONTEXT, V_STRING("message")) },
        { VARLINK_ERROR, "NotLUKS2", .doc = "The device has no LUKS2 header.",
          .fields = VARLINK_FIELDS(CONTEXT, V_STRING("message")) },
        { VARLINK_ERROR, "UnwrapFailed",
          .doc = "A wrapped secret does not authenticate for this volume, keyslot, key and version.",
          .fields = VARLINK_FIELDS(V_STRING("key", V_OPT), CONTEXT, V_STRING("message")) },
        { VARLINK_ERROR, "ImportFailed", .doc = "The import blob does not unwrap; reason says why.",
          .fields = VARLINK_FIELDS(V_STRING("reason", V_OPT), V_STRING("message")) },
        { VARLINK_ERROR, "AlreadyExists", .doc = "A key of this name, a volume, or a mapping of this name exists.",
          .fields = VARLINK_FIELDS(V_STRING("name", V_OPT), V_STRING("compartment", V_OPT), CONTEXT, V_STRING("message")) },
        { VARLINK_ERROR, "Busy", .doc = "In use, or too many requests waiting: try again later.",
          .fields = VARLINK_FIELDS(CONTEXT, V_STRING("message")) },
        { VARLINK_ERROR, "DeviceError", .doc = "Reading or writing the device failed.",
          .fields = VARLINK_FIELDS(CONTEXT, V_STRING("message")) },
        { VARLINK_ERROR, "AuditUnavailable",
          .doc = "The audit record of the operation could not be made durable, so the operation was\n"
                 "refused (any method that changes state or uses a key; no secret is sent).",
          .fields = VARLINK_FIELDS(V_STRING("message")) },
        { VARLINK_ERROR, "AuditChainBroken", .doc = "The audit log's hash chain does not verify.",
          .fields = VARLINK_FIELDS(V_STRING("message")) },
        { VARLINK_ERROR, "MalformedMessage", .doc = "The request is not a JSON object ended by a NUL byte.",
          .fields = VARLINK_FIELDS(V_STRING("message")) },
        { VARLINK_ERROR, "MessageTooLarge", .doc = "The request is larger than cmekd reads; the connection is closed.",
          .fields = VARLINK_FIELDS(V_STRING("message")) },
        { VARLINK_ERROR, "InternalError", .doc = "A bug or an unexpected failure; the daemon log says more.",
          .fields = VARLINK_FIELDS(V_STRING("message")) },
        {}
};

const Interface interface_errors = {
        .name = "io.cmek",
        .doc = "The errors of every cmekd interface (io.cmek.*), declared once here: a name means the same\n"
               "whichever method returns it. The Varlink service errors (InvalidParameter, MethodNotFound,\n"
               "...) are those of org.varlink.service.",
        .symbols = errors_symbols,
};
