/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* The io.cmek.Vault and io.cmek.Key Varlink interfaces: their declarations and handlers. */
#include <stdio.h>

#include "cmek-base64.h"
#include "cmek-errors.h"
#include "cmek-secmem.h"
#include "cmek-varlink.h"
#include "daemon.h"
#include "key.h"
#include "policy.h"

#define IMPORT_BLOB_MAX 2048U

static json_object *error_params(const char *message) {
        json_object *p = json_object_new_object();
        json_object_object_add(p, "message", json_object_new_string(message));
        return p;
}

static int reply_invalid(Call *c, const char *parameter, const char *why) {
        json_object *p = error_params(why);
        json_object_object_add(p, "parameter", json_object_new_string(parameter));
        return call_error(c, VARLINK_ERROR_INVALID_PARAMETER, p);
}

/* The one answer for "no such key" and "a key the caller may not even inspect": same error, same
 * text, same parameters (the caller's own string), so that KeyNotFound is no existence oracle.
 * "Several keys have this name" is said only to a caller who may inspect keys everywhere. */
int reply_key_not_found(Call *c, const char *key, int r) {
        json_object *p = error_params(r == -ENOTUNIQ ?
                                      "Several keys have this name in different compartments: use COMPARTMENT/NAME or the key id." :
                                      "No such key, or not one you may see: give its id (cmek.key....), its NAME or "
                                      "COMPARTMENT/NAME; see 'cmekctl key list'.");
        json_object_object_add(p, "key", json_object_new_string(key));
        return call_error(c, CMEK_ERROR_KEY_NOT_FOUND, p);
}

static int reply_vault_not_found(Call *c, const char *vault) {
        json_object *p = error_params("No such vault; see 'cmekctl vault list' and [vault NAME] sections in cmekd.conf(5).");
        json_object_object_add(p, "vault", json_object_new_string(vault));
        return call_error(c, CMEK_ERROR_VAULT_NOT_FOUND, p);
}

static int reply_vault_unavailable(Call *c, const char *vault, const char *reason) {
        json_object *p = error_params("The vault cannot be used now; fix the cause and retry.");
        json_object_object_add(p, "vault", json_object_new_string(vault));
        json_object_object_add(p, "reason", json_object_new_string(reason ?: "unavailable"));
        return call_error(c, CMEK_ERROR_VAULT_UNAVAILABLE, p);
}

/* Reads an optional non-negative integer parameter; -EINVAL after replying when it is bad. */
static int get_uint(Call *c, json_object *params, const char *name, unsigned def, unsigned max, unsigned *ret) {
        json_object *o;
        int64_t v;

        if (!json_object_object_get_ex(params, name, &o) || json_object_is_type(o, json_type_null)) {
                *ret = def;
                return 0;
        }
        if (!json_object_is_type(o, json_type_int) || (v = json_object_get_int64(o)) < 0 || (uint64_t) v > max) {
                char msg[128];
                snprintf(msg, sizeof(msg), "\"%s\" must be an integer from 0 to %u", name, max);
                (void) reply_invalid(c, name, msg);
                return -EINVAL;
        }
        *ret = (unsigned) v;
        return 0;
}

/* Loads the key named by params.key and checks verb on it; replies on failure. */
static int load_authorized(Manager *m, Call *c, json_object *params, const char *verb, Key **ret) {
        const char *id = cmek_json_get_string(params, "key");
        Key *k;
        int r;

        if (!manager_caller_has_any_grant(m, c)) {
                /* no statement names him: he may inspect nothing, so the unknown-key answer, before
                 * any token access */
                char detail[160];
                snprintf(detail, sizeof(detail), "%s keys on '%.64s': the caller holds no grant, answered as an unknown key",
                         verb, id);
                if (manager_audit_denial_admit(m, call_caller(c), call_method(c)))
                        (void) manager_audit(m, c, &(AuditRecord) {
                                .event = "policy.denied", .operation = call_method(c),
                                .result = CMEK_ERROR_PERMISSION_DENIED, .detail = detail });
                return reply_key_not_found(c, id, -ENOENT), -ENOENT;
        }
        r = key_load(m, id, &k);
        if (r == -ENOTUNIQ && !manager_allowed(m, c, "inspect", "keys", NULL, NULL, NULL))
                r = -ENOENT;
        if (r == -ENOENT || r == -ENOTUNIQ)
                return reply_key_not_found(c, id, r), r;
        if (r == -EHOSTDOWN) {
                const char *reason;
                Vault *v = keys_unavailable_vault(m, &reason);
                return reply_vault_unavailable(c, v ? vault_name(v) : "?", reason), r;
        }
        if (r < 0)
                return r;
        if (!manager_allowed(m, c, verb, "keys", key_get_compartment(k), key_get_id(k), NULL)) {
                if (!manager_allowed(m, c, "inspect", "keys", key_get_compartment(k), key_get_id(k), NULL)) {
                        /* may not know it exists: the unknown-key answer; the audit record has the truth */
                        char detail[160];
                        snprintf(detail, sizeof(detail), "%s keys in %s%s: not even inspect, answered as an unknown key",
                                 verb, key_get_compartment(k) ? "compartment " : "tenancy", strempty(key_get_compartment(k)));
                        if (manager_audit_denial_admit(m, call_caller(c), call_method(c)))
                                (void) manager_audit(m, c, &(AuditRecord) {
                                        .event = "policy.denied", .operation = call_method(c),
                                        .result = CMEK_ERROR_PERMISSION_DENIED, .key_id = key_get_id(k),
                                        .detail = detail });
                        key_free(k);
                        return reply_key_not_found(c, id, -ENOENT), -ENOENT;
                }
                r = manager_deny(m, c, verb, "keys", key_get_compartment(k), key_get_id(k), NULL);
                key_free(k);
                return r;
        }
        *ret = k;
        return 0;
}

static int reply_key(Manager *m, Call *c, Key *k, json_object *extra) {
        json_object *p = extra ?: json_object_new_object();
        json_object_object_add(p, "key", key_to_json(m, k));
        return call_reply(c, p);
}

/* ---- io.cmek.Key ---- */

static int create_or_import(Manager *m, Call *c, json_object *params, bool import) {
        const char *name = cmek_json_get_string(params, "name"), *comp = cmek_json_get_string(params, "compartment");
        const char *mode = cmek_json_get_string(params, "protection_mode"), *vault = cmek_json_get_string(params, "vault");
        KeyCreateParams p = { .name = name, .compartment = comp, .vault = vault };
        _cleanup_(key_freep) Key *k = NULL;
        _cleanup_free_ uint8_t *blob = NULL;
        const char *reason = NULL;
        char msg[256];
        int r;

        r = manager_authorize(m, c, "manage", "keys", comp, NULL, NULL);
        if (r < 0)
                return r;
        /* a vault restricted to some compartments ("[vault NAME] compartments = ...") holds
         * keys of those only: a Dev admin cannot put a key in the Prod HSM */
        Vault *target = vault_set_find(keys_vaults(m), vault ?: VAULT_DEFAULT_NAME);
        if (target && !vault_allows_compartment(target, comp)) {
                _cleanup_free_ char *list = vault_compartments_string(target), *text = NULL;
                json_object *e;

                if (asprintf(&text, "Vault '%s' holds keys of compartment%s %s only (compartments= in cmekd.conf), not of "
                             "'%s': create the key in a vault that serves this compartment (--vault), or ask an admin "
                             "to add it to the vault's list.", vault_name(target), strchr(strempty(list), ',') ? "s" : "",
                             strempty(list), comp) < 0)
                        return -ENOMEM;
                e = error_params(text);
                json_object_object_add(e, "parameter", json_object_new_string("vault"));
                return call_error(c, VARLINK_ERROR_INVALID_PARAMETER, e);
        }
        if (get_uint(c, params, "length", 256, 256, &p.bits) < 0 ||
            get_uint(c, params, "rotation_interval_days", 0, 3650, &p.rotation_interval_days) < 0)
                return 0;
        p.software = mode && streq(mode, "software");
        p.on_disable = cmek_json_get_string(params, "on_disable");

        if (import) {
                const char *alg = cmek_json_get_string(params, "wrapping_algorithm");
                const char *w = cmek_json_get_string(params, "wrapped");
                p.wrap_algorithm = vault_wrap_algorithm_from_string(alg ?: "RSA_OAEP_AES_SHA256");
                if (p.wrap_algorithm < 0)
                        return reply_invalid(c, "wrapping_algorithm", "\"wrapping_algorithm\" is RSA_OAEP_AES_SHA256 or RSA_OAEP_SHA256");
                if (p.software)
                        return reply_invalid(c, "protection_mode", "imported keys live in the token: protection mode \"hsm\" only");
                blob = malloc(IMPORT_BLOB_MAX);
                if (!blob)
                        return -ENOMEM;
                ssize_t n = cmek_base64_decode_to(w, blob, IMPORT_BLOB_MAX);
                if (n == -ENOBUFS)
                        return reply_invalid(c, "wrapped", "\"wrapped\" must be base64 of at most 2048 bytes");
                if (n < 0)
                        return reply_invalid(c, "wrapped", "\"wrapped\" is not valid base64 (RFC 4648, padded, no whitespace)");
                p.wrapped = blob;
                p.wrapped_size = (size_t) n;
                p.bits = 256;   /* the blob decides; only checked against 128/192/256 */
        }

        r = key_create(m, c, &p, &k, &reason);
        switch (r) {
        case 0:
                return reply_key(m, c, k, NULL);
        case -EINVAL:
                return reply_invalid(c, "name", "names and compartments are 1-64 (compartments 1-48) letters, digits, '-', '_' "
                                     "(names also '.'); length is 128, 192 or 256");
        case -EEXIST: {
                json_object *e = error_params("A key with this name exists in this compartment; names are unique per compartment.");
                json_object_object_add(e, "name", json_object_new_string(name));
                json_object_object_add(e, "compartment", json_object_new_string(comp));
                return call_error(c, CMEK_ERROR_ALREADY_EXISTS, e);
        }
        case -ENODEV:
                return reply_vault_not_found(c, vault);
        case -ENXIO:
                return reply_vault_unavailable(c, vault ?: VAULT_DEFAULT_NAME, reason);
        default:
                if (!import)
                        return r;
                snprintf(msg, sizeof(msg), "%s",
                         r == -ENOKEY ? "the vault has no wrapping key yet: run 'cmekctl key wrapping-key' and wrap for it" :
                         r == -EMSGSIZE ? "the blob has the wrong size for the algorithm and the wrapping key, or the key is not 16, 24 or 32 bytes" :
                         r == -EBADMSG ? "the blob does not unwrap: corrupted, truncated, or wrapped for another public key or algorithm" :
                         strerror(-r));
                json_object *e = error_params(msg);
                json_object_object_add(e, "reason", json_object_new_string(msg));
                if (manager_audit_denial_admit(m, call_caller(c), call_method(c)))
                        (void) manager_audit(m, c, &(AuditRecord) {
                                .event = "key.import-failed", .operation = call_method(c), .result = CMEK_ERROR_IMPORT_FAILED,
                                .detail = msg });
                return call_error(c, CMEK_ERROR_IMPORT_FAILED, e);
        }
}

static int method_create(Manager *m, Call *c, json_object *params) {
        return create_or_import(m, c, params, false);
}

static int method_import(Manager *m, Call *c, json_object *params) {
        return create_or_import(m, c, params, true);
}

static int method_list(Manager *m, Call *c, json_object *params) {
        const char *comp = cmek_json_get_string(params, "compartment");
        const Caller *caller = call_caller(c);
        json_object *a, *p;
        Key **keys;
        size_t n;
        int r;

        if (comp) {
                r = manager_authorize(m, c, "inspect", "keys", comp, NULL, NULL);
                if (r < 0)
                        return r;
        }
        r = key_load_all(m, &keys, &n);
        if (r < 0)
                return r;
        a = json_object_new_array();
        for (size_t i = 0; i < n; i++) {
                if (comp && !streq_ptr(comp, key_get_compartment(keys[i])))
                        continue;
                /* without a compartment: every key the caller may inspect, silently */
                if (!comp && !policy_check(m->policy, &(PolicyRequest) {
                                .uid = caller->uid, .gid = caller->gid, .groups = caller->groups,
                                .n_groups = caller->n_groups, .verb = POLICY_VERB_INSPECT, .resource_type = "keys",
                                .compartment = key_get_compartment(keys[i]), .key_id = key_get_id(keys[i]) }))
                        continue;
                json_object_array_add(a, key_to_json(m, keys[i]));
        }
        key_array_free(keys, n);
        p = json_object_new_object();
        json_object_object_add(p, "keys", a);
        return call_reply(c, p);
}

static int method_show(Manager *m, Call *c, json_object *params) {
        _cleanup_(key_freep) Key *k = NULL;
        int r = load_authorized(m, c, params, "read", &k);
        if (r < 0)
                return r == -EACCES || r == -EINVAL || r == -ENOENT || r == -ENOTUNIQ ? 0 : r;
        return reply_key(m, c, k, NULL);
}

static int apply(Manager *m, Call *c, json_object *params, KeyOp op) {
        _cleanup_(key_freep) Key *k = NULL;
        unsigned days = 30, version = 0;
        uint64_t t0 = cmek_monotonic_usec(), t1;
        KeyState old;
        int r;

        r = load_authorized(m, c, params, "manage", &k);
        if (r < 0)
                return r == -EACCES || r == -EINVAL || r == -ENOENT || r == -ENOTUNIQ ? 0 : r;
        if (op == KEY_OP_SCHEDULE_DELETION) {
                if (get_uint(c, params, "days", 30, 365, &days) < 0)
                        return 0;
                if (days < 7 || days > 30)
                        return reply_invalid(c, "days", "the waiting period is 7 to 30 days");
        }
        old = key_get_state(k);
        t1 = cmek_monotonic_usec();
        r = key_apply(m, c, k, op, days, &version);
        if (r >= 0 && (op == KEY_OP_DISABLE || op == KEY_OP_SCHEDULE_DELETION))
                /* key_apply() locks the volumes before anything else: request -> locked is the
                 * first figure plus the locking pass (logged by the volume code) */
                log_info("Key %s: %s request: key loaded and authorized in %llu ms, handled in %llu ms.",
                         key_get_id(k), key_op_to_string(op), (unsigned long long) ((t1 - t0) / 1000),
                         (unsigned long long) ((cmek_monotonic_usec() - t0) / 1000));
        if (r == -EBADR) {
                char msg[256], allowed[128] = "";
                json_object *e, *a = key_allowed_ops(old);
                for (size_t i = 0; i < json_object_array_length(a); i++)
                        snprintf(allowed + strlen(allowed), sizeof(allowed) - strlen(allowed), "%s%s", i ? ", " : "",
                                 json_object_get_string(json_object_array_get_idx(a, i)));
                json_object_put(a);
                snprintf(msg, sizeof(msg), "Key is %s: '%s' is not allowed from this state; allowed: %s.",
                         key_state_to_string(old), key_op_to_string(op), allowed[0] ? allowed : "nothing (final state)");
                e = error_params(msg);
                json_object_object_add(e, "key", json_object_new_string(key_get_id(k)));
                json_object_object_add(e, "current_state", json_object_new_string(key_state_to_string(old)));
                json_object_object_add(e, "requested", json_object_new_string(key_op_to_string(op)));
                json_object_object_add(e, "allowed", key_allowed_ops(old));
                (void) manager_audit(m, c, &(AuditRecord) {
                        .event = "key.transition-refused", .operation = call_method(c),
                        .result = CMEK_ERROR_INVALID_TRANSITION, .key_id = key_get_id(k),
                        .old_state = key_state_to_string(old), .detail = key_op_to_string(op) });
                return call_error(c, CMEK_ERROR_INVALID_TRANSITION, e);
        }
        if (r == -EPERM) {
                json_object *e = error_params("The provider-managed default key is managed by cmekd itself: "
                                              "it cannot be disabled or deleted through the API.");
                json_object_object_add(e, "key", json_object_new_string(key_get_id(k)));
                json_object_object_add(e, "current_state", json_object_new_string(key_state_to_string(old)));
                json_object_object_add(e, "requested", json_object_new_string(key_op_to_string(op)));
                json_object_object_add(e, "allowed", json_object_new_array());
                return call_error(c, CMEK_ERROR_INVALID_TRANSITION, e);
        }
        if (r < 0 && r != -ENOMEM) {
                /* the token went away under the operation: say so, not "Input/output error" */
                const char *reason;
                Vault *v = keys_unavailable_vault(m, &reason);
                if (v)
                        return reply_vault_unavailable(c, vault_name(v), reason);
        }
        if (r < 0)
                return r;
        json_object *extra = NULL;
        if (op == KEY_OP_ROTATE) {
                extra = json_object_new_object();
                json_object_object_add(extra, "version", json_object_new_int64(version));
        }
        return reply_key(m, c, k, extra);
}

static int version_enabled(Manager *m, Call *c, json_object *params, bool enabled) {
        _cleanup_(key_freep) Key *k = NULL;
        unsigned version = 0;
        int r;

        r = load_authorized(m, c, params, "manage", &k);
        if (r < 0)
                return r == -EACCES || r == -EINVAL || r == -ENOENT || r == -ENOTUNIQ ? 0 : r;
        if (get_uint(c, params, "version", 0, UINT32_MAX, &version) < 0)
                return 0;
        if (version == 0)
                return reply_invalid(c, "version", "give the version number (see 'cmekctl key show')");
        r = key_set_version_enabled(m, c, k, version, enabled);
        if (r == -ENOENT)
                return call_errorf(c, CMEK_ERROR_KEY_NOT_FOUND, "Key %s has no version %u.", key_get_id(k), version);
        if (r == -EBUSY)
                return call_errorf(c, CMEK_ERROR_INVALID_TRANSITION,
                                   "Version %u is the current version of key %s: rotate the key first "
                                   "('cmekctl key rotate %s'), or disable the whole key.",
                                   version, key_get_id(k), key_get_id(k));
        if (r < 0)
                return r;
        return reply_key(m, c, k, NULL);
}

static int method_disable_version(Manager *m, Call *c, json_object *params) { return version_enabled(m, c, params, false); }
static int method_enable_version(Manager *m, Call *c, json_object *params) { return version_enabled(m, c, params, true); }

static int method_disable(Manager *m, Call *c, json_object *params) { return apply(m, c, params, KEY_OP_DISABLE); }
static int method_enable(Manager *m, Call *c, json_object *params) { return apply(m, c, params, KEY_OP_ENABLE); }
static int method_schedule_deletion(Manager *m, Call *c, json_object *params) { return apply(m, c, params, KEY_OP_SCHEDULE_DELETION); }
static int method_cancel_deletion(Manager *m, Call *c, json_object *params) { return apply(m, c, params, KEY_OP_CANCEL_DELETION); }
static int method_rotate(Manager *m, Call *c, json_object *params) { return apply(m, c, params, KEY_OP_ROTATE); }

static int method_run_scheduled(Manager *m, Call *c, json_object *params) {
        json_object *p, *deleted, *rotated;
        int64_t now;
        int r;

        r = manager_authorize(m, c, "manage", "keys", NULL, NULL, NULL);
        if (r < 0)
                return r;
        if (!cmek_json_get_int64(params, "now", &now) || now <= 0)
                now = (int64_t) (manager_now_usec(m) / USEC_PER_SEC);
        deleted = json_object_new_array();
        rotated = json_object_new_array();
        r = key_run_scheduled(m, (uint64_t) now * USEC_PER_SEC, deleted, rotated);
        if (r < 0) {
                json_object_put(deleted);
                json_object_put(rotated);
                return r;
        }
        p = json_object_new_object();
        json_object_object_add(p, "deleted", deleted);
        json_object_object_add(p, "rotated", rotated);
        return call_reply(c, p);
}

static ssize_t param_b64(json_object *params, const char *name, uint8_t *buf, size_t max) {
        return cmek_base64_decode_to(cmek_json_get_string(params, name), buf, max);
}

/* The refusals of key_encrypt()/key_decrypt() (key.h), named by the error table. */
static int reply_use_error(Call *c, const char *key, int r) {
        if (r != -EKEYREVOKED && r != -EKEYEXPIRED && r != -ENOKEY && r != -ENOENT && r != -EBADMSG)
                return r;
        json_object *p = error_params(strerror(-r));
        json_object_object_add(p, "key", json_object_new_string(key));
        return call_error(c, cmek_error_from_errno(r, /* with_key= */ true, NULL)->name, p);
}

/* Test-only: key_encrypt/key_decrypt as the volume code calls them. */
static int method_test_encrypt(Manager *m, Call *c, json_object *params) {
        uint8_t pt[256], iv[12], ct[256], tag[16];
        const char *key = cmek_json_get_string(params, "key");
        uint8_t aad[256];
        ssize_t n, na = 0;
        unsigned version;
        int r;

        if ((n = param_b64(params, "plaintext", pt, sizeof(pt))) < 0 ||
            (cmek_json_get_string(params, "aad") && (na = param_b64(params, "aad", aad, sizeof(aad))) < 0))
                return reply_invalid(c, "plaintext", "key, plaintext (base64, <= 256 bytes), aad (base64) expected");
        r = manager_authorize(m, c, "use", "keys", NULL, key, NULL);
        if (r < 0)
                return r;
        if (get_uint(c, params, "version", 0, 1000000, &version) < 0)
                return 0;
        r = key_encrypt(m, key, version, aad, (size_t) na, pt, (size_t) n, &version, iv, ct, tag);
        explicit_bzero(pt, sizeof(pt));
        if (r < 0)
                return reply_use_error(c, key, r);
        json_object *p = json_object_new_object();
        char b[512];
        json_object_object_add(p, "version", json_object_new_int64(version));
        cmek_base64_encode_to(b, iv, 12);
        json_object_object_add(p, "iv", json_object_new_string(b));
        cmek_base64_encode_to(b, ct, (size_t) n);
        json_object_object_add(p, "ciphertext", json_object_new_string(b));
        cmek_base64_encode_to(b, tag, 16);
        json_object_object_add(p, "tag", json_object_new_string(b));
        return call_reply(c, p);
}

static int method_test_decrypt(Manager *m, Call *c, json_object *params) {
        uint8_t iv[16], ct[256], tag[32], aad[256];
        const char *key = cmek_json_get_string(params, "key");
        _cleanup_secure_ void *pt = NULL;
        ssize_t n, na = 0;
        unsigned version;
        int r;

        if (param_b64(params, "iv", iv, sizeof(iv)) != 12 || param_b64(params, "tag", tag, sizeof(tag)) != 16 ||
            (n = param_b64(params, "ciphertext", ct, sizeof(ct))) < 0 ||
            (cmek_json_get_string(params, "aad") && (na = param_b64(params, "aad", aad, sizeof(aad))) < 0))
                return reply_invalid(c, "ciphertext", "key, iv (12), ciphertext, tag (16), aad: base64 expected");
        /* the plaintext (it may be a wrapped DEK taken from a header) leaves the daemon */
        r = manager_authorize(m, c, "use", "keys", NULL, key, NULL);
        if (r >= 0)
                r = manager_authorize(m, c, "use", "key-delegate", NULL, key, NULL);
        if (r < 0)
                return r;
        if (get_uint(c, params, "version", 0, 1000000, &version) < 0)
                return 0;
        r = key_decrypt(m, key, version, aad, (size_t) na, iv, ct, (size_t) n, tag, &pt);
        if (r < 0)
                return reply_use_error(c, key, r);
        return call_reply_secret(c, "plaintext", pt, (size_t) n, NULL);
}

/* The methods run only with --test-hooks (dispatch() does not find them otherwise). */
static const VarlinkSymbol key_symbols[] = {
        { VARLINK_TYPEDEF, "KeyVersion", .fields = VARLINK_FIELDS(
                V_INT("version"), V_STRING("created"), V_STRING("label")) },
        { VARLINK_TYPEDEF, "KeyInfo",
          .doc = "state: ENABLED, DISABLED, PENDING_DELETION, DELETED; length in bits;\n"
                 "token_usage_disabled: ENABLED here but CKA_ENCRYPT/CKA_DECRYPT turned off in the token.",
          .fields = VARLINK_FIELDS(
                V_STRING("id"), V_STRING("name"), V_STRING("compartment"), V_STRING("vault"), V_STRING("state"),
                V_STRING("protection_mode"), V_INT("length"), V_INT("current_version"),
                V_TYPE("versions", "KeyVersion", V_ARRAY), V_STRING("created", V_OPT),
                V_STRING("last_rotation", V_OPT), V_INT("rotation_interval_days"), V_STRING("deletion_time", V_OPT),
                V_BOOL("provider_managed"), V_STRING("on_disable", V_OPT), V_BOOL("token_usage_disabled", V_OPT)) },
        { VARLINK_METHOD, "Create", .handler = method_create,
          .doc = "protection_mode: \"hsm\" (default) or \"software\"; length: 128, 192, 256 (default).\n"
                 "on_disable: \"suspend\" or \"close\" the volumes' mappings when the key is disabled\n"
                 "(default: [enforcement] on-disable= of cmekd.conf). Needs: manage keys.",
          .fields = VARLINK_FIELDS(
                V_STRING("name"), V_STRING("compartment"), V_INT("length", V_OPT),
                { .name = "protection_mode", .kind = VARLINK_ENUM, .nullable = true,
                  .values = VARLINK_VALUES("hsm", "software") },
                V_STRING("vault", V_OPT), V_INT("rotation_interval_days", V_OPT),
                { .name = "on_disable", .kind = VARLINK_ENUM, .nullable = true,
                  .values = VARLINK_VALUES("suspend", "close") }),
          .out = VARLINK_FIELDS(V_TYPE("key", "KeyInfo")) },
        { VARLINK_METHOD, "Import", .handler = method_import,
          .doc = "wrapped: base64 of the blob (at most 2048 bytes); wrapping_algorithm: RSA_OAEP_AES_SHA256\n"
                 "(default) or RSA_OAEP_SHA256. Imported keys live in the token: protection_mode \"hsm\" only.",
          .fields = VARLINK_FIELDS(
                V_STRING("name"), V_STRING("compartment"), V_STRING("wrapped"),
                /* a string, not an enum: Varlink enum values start with a lowercase letter */
                V_STRING("wrapping_algorithm", V_OPT),
                V_STRING("vault", V_OPT), V_INT("rotation_interval_days", V_OPT),
                { .name = "protection_mode", .kind = VARLINK_ENUM, .nullable = true,
                  .values = VARLINK_VALUES("hsm", "software") },
                { .name = "on_disable", .kind = VARLINK_ENUM, .nullable = true,
                  .values = VARLINK_VALUES("suspend", "close") }),
          .out = VARLINK_FIELDS(V_TYPE("key", "KeyInfo")) },
        { VARLINK_METHOD, "List", .handler = method_list, .unaudited = true,
          .doc = "Without a compartment: every key the caller may inspect.",
          .fields = VARLINK_FIELDS(V_STRING("compartment", V_OPT)),
          .out = VARLINK_FIELDS(V_TYPE("keys", "KeyInfo", V_ARRAY)) },
        { VARLINK_METHOD, "Show", .handler = method_show, .unaudited = true,
          .doc = "key: an id, a name, or COMPARTMENT/NAME.",
          .fields = VARLINK_FIELDS(V_STRING("key")),
          .out = VARLINK_FIELDS(V_TYPE("key", "KeyInfo")) },
        { VARLINK_METHOD, "Disable", .handler = method_disable,
          .fields = VARLINK_FIELDS(V_STRING("key")), .out = VARLINK_FIELDS(V_TYPE("key", "KeyInfo")) },
        { VARLINK_METHOD, "Enable", .handler = method_enable,
          .fields = VARLINK_FIELDS(V_STRING("key")), .out = VARLINK_FIELDS(V_TYPE("key", "KeyInfo")) },
        { VARLINK_METHOD, "DisableVersion", .handler = method_disable_version,
          .doc = "One old version only (not the current one): it unwraps nothing any more.",
          .fields = VARLINK_FIELDS(V_STRING("key"), V_INT("version")),
          .out = VARLINK_FIELDS(V_TYPE("key", "KeyInfo")) },
        { VARLINK_METHOD, "EnableVersion", .handler = method_enable_version,
          .fields = VARLINK_FIELDS(V_STRING("key"), V_INT("version")),
          .out = VARLINK_FIELDS(V_TYPE("key", "KeyInfo")) },
        { VARLINK_METHOD, "ScheduleDeletion", .handler = method_schedule_deletion,
          .doc = "days: the waiting period, 7 to 30 (default 30).",
          .fields = VARLINK_FIELDS(V_STRING("key"), V_INT("days", V_OPT)),
          .out = VARLINK_FIELDS(V_TYPE("key", "KeyInfo")) },
        { VARLINK_METHOD, "CancelDeletion", .handler = method_cancel_deletion,
          .fields = VARLINK_FIELDS(V_STRING("key")), .out = VARLINK_FIELDS(V_TYPE("key", "KeyInfo")) },
        { VARLINK_METHOD, "Rotate", .handler = method_rotate,
          .fields = VARLINK_FIELDS(V_STRING("key")),
          .out = VARLINK_FIELDS(V_TYPE("key", "KeyInfo"), V_INT("version")) },
        { VARLINK_METHOD, "RunScheduled", .handler = method_run_scheduled, .test_only = true,
          .doc = "Test builds started with --test-hooks only: runs scheduled deletions and rotations as of now\n"
                 "(seconds since the epoch).",
          .fields = VARLINK_FIELDS(V_INT("now", V_OPT)),
          .out = VARLINK_FIELDS(V_STRING("deleted", V_ARRAY), V_STRING("rotated", V_ARRAY)) },
        { VARLINK_METHOD, "TestEncrypt", .handler = method_test_encrypt, .test_only = true,
          .doc = "Test builds started with --test-hooks only. Secrets are base64.",
          .fields = VARLINK_FIELDS(V_STRING("key"), V_STRING("plaintext"), V_STRING("aad", V_OPT), V_INT("version", V_OPT)),
          .out = VARLINK_FIELDS(V_INT("version"), V_STRING("iv"), V_STRING("ciphertext"), V_STRING("tag")) },
        { VARLINK_METHOD, "TestDecrypt", .handler = method_test_decrypt, .test_only = true,
          .doc = "Test builds started with --test-hooks only. Secrets are base64.",
          .fields = VARLINK_FIELDS(V_STRING("key"), V_STRING("iv"), V_STRING("ciphertext"), V_STRING("tag"),
                                   V_STRING("aad", V_OPT), V_INT("version", V_OPT)),
          .out = VARLINK_FIELDS(V_STRING("plaintext")) },
        {}
};

const Interface interface_key = {
        .name = "io.cmek.Key",
        .doc = "Master encryption keys: AES keys generated (or imported) inside a vault's PKCS#11 token.\n"
               "Their metadata (name, state, versions) lives in the token too, so brokers sharing a\n"
               "token agree. Errors are those of interface io.cmek: KeyNotFound, AlreadyExists,\n"
               "InvalidStateTransition, VaultNotFound, VaultUnavailable, ImportFailed, KeyDisabled,\n"
               "KeyPendingDeletion, KeyDeleted, UnwrapFailed, PermissionDenied, AuditUnavailable (any\n"
               "method but List and Show: the audit log cannot record the operation, so it was refused).",
        .symbols = key_symbols,
};

/* ---- io.cmek.Vault ---- */

static int describe_with_keys(Manager *m, Vault *v, json_object **ret) {
        json_object *o;
        int r = vault_describe(v, &o);
        if (r < 0)
                return r;
        if (cmek_json_get_bool(o, "available", false))
                json_object_object_add(o, "keys", json_object_new_int64((int64_t) key_count_in_vault(m, vault_name(v))));
        *ret = o;
        return 0;
}

static int method_vault_list(Manager *m, Call *c, json_object *params) {
        VaultSet *vs = keys_vaults(m);
        json_object *a, *p;
        int r;

        r = manager_authorize(m, c, "inspect", "vaults", NULL, NULL, NULL);
        if (r < 0)
                return r;
        a = json_object_new_array();
        for (size_t i = 0; i < vault_set_size(vs); i++) {
                json_object *o;
                if (describe_with_keys(m, vault_set_get(vs, i), &o) >= 0)
                        json_object_array_add(a, o);
        }
        p = json_object_new_object();
        json_object_object_add(p, "vaults", a);
        return call_reply(c, p);
}

static int method_vault_show(Manager *m, Call *c, json_object *params) {
        const char *name = cmek_json_get_string(params, "vault") ?: VAULT_DEFAULT_NAME;
        json_object *o, *p;
        Vault *v;
        int r;

        r = manager_authorize(m, c, "read", "vaults", NULL, NULL, NULL);
        if (r < 0)
                return r;
        v = vault_set_find(keys_vaults(m), name);
        if (!v)
                return reply_vault_not_found(c, name);
        r = describe_with_keys(m, v, &o);
        if (r < 0)
                return r;
        p = json_object_new_object();
        json_object_object_add(p, "vault", o);
        return call_reply(c, p);
}

static int method_get_wrapping_key(Manager *m, Call *c, json_object *params) {
        const char *name = cmek_json_get_string(params, "vault") ?: VAULT_DEFAULT_NAME;
        _cleanup_free_ char *pem = NULL;
        const char *reason;
        json_object *p;
        Vault *v;
        int r;

        r = manager_authorize(m, c, "read", "vaults", NULL, NULL, NULL);
        if (r < 0)
                return r;
        v = vault_set_find(keys_vaults(m), name);
        if (!v)
                return reply_vault_not_found(c, name);
        if ((reason = vault_unavailable_reason(v)))
                return reply_vault_unavailable(c, name, reason);
        r = vault_wrapping_key_pem(v, /* create= */ false, &pem);
        if (r == -ENOENT) {
                /* generated once, on first request: a state change (an RSA-4096 pair in the
                 * token, seconds of token time), so it needs manage vaults; read vaults only
                 * reads a pair that exists */
                const Caller *caller = call_caller(c);
                PolicyRequest req = {
                        .uid = caller->uid, .gid = caller->gid, .groups = caller->groups,
                        .n_groups = caller->n_groups, .verb = POLICY_VERB_MANAGE, .resource_type = "vaults",
                };
                if (!policy_check(m->policy, &req)) {
                        _cleanup_free_ char *msg = NULL, *needed = policy_explain_denial(&req);
                        json_object *e;

                        if (asprintf(&msg, "Vault '%s' has no wrapping key yet: an admin with manage vaults must "
                                     "create it first ('cmekctl key wrapping-key --vault %s')%s%s.", name, name,
                                     needed ? "; the statement that allows it: " : "", strempty(needed)) < 0)
                                return -ENOMEM;
                        (void) manager_audit(m, c, &(AuditRecord) {
                                .event = "policy.denied", .operation = call_method(c),
                                .result = CMEK_ERROR_PERMISSION_DENIED, .detail = msg });
                        e = error_params(msg);
                        json_object_object_add(e, "verb", json_object_new_string("manage"));
                        json_object_object_add(e, "resource", json_object_new_string("vaults"));
                        json_object_object_add(e, "vault", json_object_new_string(name));
                        if (needed)
                                json_object_object_add(e, "statement", json_object_new_string(needed));
                        return call_error(c, CMEK_ERROR_PERMISSION_DENIED, e);
                }
                r = vault_wrapping_key_pem(v, /* create= */ true, &pem);
                if (r >= 0)
                        (void) manager_audit(m, c, &(AuditRecord) {
                                .event = "vault.wrapping-key-created", .operation = call_method(c),
                                .detail = name });
        }
        if (r < 0)
                return r;
        p = json_object_new_object();
        json_object_object_add(p, "vault", json_object_new_string(name));
        json_object_object_add(p, "algorithm", json_object_new_string("RSA-4096"));
        json_object_object_add(p, "public_key", json_object_new_string(pem));
        return call_reply(c, p);
}

static const VarlinkSymbol vault_symbols[] = {
        { VARLINK_TYPEDEF, "TokenInfo", .fields = VARLINK_FIELDS(
                V_STRING("label", V_OPT), V_STRING("manufacturer", V_OPT), V_STRING("model", V_OPT),
                V_STRING("serial", V_OPT), V_STRING("hardware_version"), V_STRING("firmware_version")) },
        { VARLINK_TYPEDEF, "VaultInfo", .fields = VARLINK_FIELDS(
                V_STRING("name"), V_STRING("uri", V_OPT), V_STRING("module", V_OPT), V_BOOL("embedded"),
                V_BOOL("available"), V_STRING("reason", V_OPT), V_INT("slots", V_OPT), V_INT("free_slots", V_OPT),
                V_TYPE("token", "TokenInfo", V_OPT), V_INT("keys", V_OPT), V_STRING("compartments", V_OPT, V_ARRAY)) },
        { VARLINK_METHOD, "List", .handler = method_vault_list, .unaudited = true,
          .out = VARLINK_FIELDS(V_TYPE("vaults", "VaultInfo", V_ARRAY)) },
        { VARLINK_METHOD, "Show", .handler = method_vault_show, .unaudited = true,
          .doc = "vault: default \"default\".",
          .fields = VARLINK_FIELDS(V_STRING("vault", V_OPT)),
          .out = VARLINK_FIELDS(V_TYPE("vault", "VaultInfo")) },
        { VARLINK_METHOD, "GetWrappingKey", .handler = method_get_wrapping_key,
          .doc = "The RSA-4096 public key (PEM) that import blobs are wrapped for; generated in the token\n"
                 "on the first call, which needs manage vaults; reading an existing one needs read vaults.",
          .fields = VARLINK_FIELDS(V_STRING("vault", V_OPT)),
          .out = VARLINK_FIELDS(V_STRING("vault"), V_STRING("algorithm"), V_STRING("public_key")) },
        {}
};

const Interface interface_vault = {
        .name = "io.cmek.Vault",
        .doc = "Vaults: PKCS#11 tokens reached through p11-kit. \"default\" is cmekd's embedded SoftHSM2\n"
               "token; others come from [vault NAME] sections of cmekd.conf(5). An unavailable vault\n"
               "is listed with available=false and the reason.\n"
               "Errors are those of interface io.cmek: VaultNotFound, VaultUnavailable, PermissionDenied,\n"
               "AuditUnavailable (GetWrappingKey: the audit log cannot record the operation, so it was refused).",
        .symbols = vault_symbols,
};
