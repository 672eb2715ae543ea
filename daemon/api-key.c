/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* The io.cmek.Vault and io.cmek.Key Varlink interfaces. */
#include <stdio.h>

#include "cmek-base64.h"
#include "cmek-errors.h"
#include "cmek-secmem.h"
#include "cmek-varlink.h"
#include "daemon.h"
#include "policy.h"
#include "vault.h"

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

        if (!id)
                return reply_invalid(c, "key", "\"key\" (string: key id or name) is required"), -EINVAL;
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

        if (!name)
                return reply_invalid(c, "name", "\"name\" (string) is required");
        if (!comp)
                return reply_invalid(c, "compartment", "\"compartment\" (string) is required");
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
                json_object_object_add(e, "vault", json_object_new_string(vault_name(target)));
                json_object_object_add(e, "compartment", json_object_new_string(comp));
                return call_error(c, VARLINK_ERROR_INVALID_PARAMETER, e);
        }
        if (get_uint(c, params, "length", 256, 256, &p.bits) < 0 ||
            get_uint(c, params, "rotation_interval_days", 0, 3650, &p.rotation_interval_days) < 0)
                return 0;
        if (mode && !streq(mode, "hsm") && !streq(mode, "software"))
                return reply_invalid(c, "protection_mode", "\"protection_mode\" is \"hsm\" or \"software\"");
        p.software = mode && streq(mode, "software");
        p.on_disable = cmek_json_get_string(params, "on_disable");
        if (p.on_disable && !streq(p.on_disable, "suspend") && !streq(p.on_disable, "close"))
                return reply_invalid(c, "on_disable", "\"on_disable\" is \"suspend\" or \"close\"");

        if (import) {
                const char *alg = cmek_json_get_string(params, "wrapping_algorithm");
                const char *w = cmek_json_get_string(params, "wrapped");
                p.wrap_algorithm = vault_wrap_algorithm_from_string(alg ?: "RSA_OAEP_AES_SHA256");
                if (p.wrap_algorithm < 0)
                        return reply_invalid(c, "wrapping_algorithm", "\"wrapping_algorithm\" is RSA_OAEP_AES_SHA256 or RSA_OAEP_SHA256");
                if (p.software)
                        return reply_invalid(c, "protection_mode", "imported keys live in the token: protection mode \"hsm\" only");
                if (!w)
                        return reply_invalid(c, "wrapped", "\"wrapped\" (base64 string, at most 2048 bytes decoded) is required");
                blob = malloc(IMPORT_BLOB_MAX);
                if (!blob)
                        return -ENOMEM;
                ssize_t n = cmek_base64_decode_to(w, blob, IMPORT_BLOB_MAX);
                if (n == -ENOBUFS)
                        return reply_invalid(c, "wrapped", "\"wrapped\" (base64 string, at most 2048 bytes decoded) is required");
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

static bool test_only(Manager *m, Call *c) {
        if (m->test_hooks)
                return true;
        json_object *p = json_object_new_object();
        json_object_object_add(p, "method", json_object_new_string(call_method(c)));
        (void) call_error(c, VARLINK_ERROR_METHOD_NOT_FOUND, p);
        return false;
}

static int method_run_scheduled(Manager *m, Call *c, json_object *params) {
        json_object *p, *deleted, *rotated;
        int64_t now;
        int r;

        if (!test_only(m, c))
                return 0;
        r = manager_authorize(m, c, "manage", "keys", NULL, NULL, NULL);
        if (r < 0)
                return r;
        if (!cmek_json_get_int64(params, "now", &now) || now <= 0)
                now = (int64_t) (manager_now_usec(m) / 1000000ULL);
        deleted = json_object_new_array();
        rotated = json_object_new_array();
        r = key_run_scheduled(m, (uint64_t) now * 1000000ULL, deleted, rotated);
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

        if (!test_only(m, c))
                return 0;
        if (!key || (n = param_b64(params, "plaintext", pt, sizeof(pt))) < 0 ||
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

        if (!test_only(m, c))
                return 0;
        if (!key || param_b64(params, "iv", iv, sizeof(iv)) != 12 || param_b64(params, "tag", tag, sizeof(tag)) != 16 ||
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

static const Method key_methods[] = {
        { "io.cmek.Key.Create", method_create },
        { "io.cmek.Key.Import", method_import },
        { "io.cmek.Key.List", method_list },
        { "io.cmek.Key.Show", method_show },
        { "io.cmek.Key.Disable", method_disable },
        { "io.cmek.Key.DisableVersion", method_disable_version },
        { "io.cmek.Key.EnableVersion", method_enable_version },
        { "io.cmek.Key.Enable", method_enable },
        { "io.cmek.Key.ScheduleDeletion", method_schedule_deletion },
        { "io.cmek.Key.CancelDeletion", method_cancel_deletion },
        { "io.cmek.Key.Rotate", method_rotate },
        { "io.cmek.Key.RunScheduled", method_run_scheduled },
        { "io.cmek.Key.TestEncrypt", method_test_encrypt },
        { "io.cmek.Key.TestDecrypt", method_test_decrypt },
        { NULL, NULL },
};

const Interface interface_key = {
        .name = "io.cmek.Key",
        .description =
                "# Master encryption keys: AES keys generated (or imported) inside a vault's PKCS#11 token.\n"
                "# Their metadata (name, state, versions) lives in the token too, so brokers sharing a\n"
                "# token agree. Errors (named io.cmek.*, see cmek-protocol.h) carry a \"message\":\n"
                "#   io.cmek.KeyNotFound (key), io.cmek.AlreadyExists (name, compartment),\n"
                "#   io.cmek.InvalidStateTransition (key, current_state, requested, allowed: []string),\n"
                "#   io.cmek.VaultNotFound (vault), io.cmek.VaultUnavailable (vault, reason),\n"
                "#   io.cmek.ImportFailed (reason), io.cmek.KeyDisabled, io.cmek.KeyPendingDeletion,\n"
                "#   io.cmek.KeyDeleted, io.cmek.UnwrapFailed (key), io.cmek.PermissionDenied.\n"
                "interface io.cmek.Key\n"
                "\n"
                "type KeyVersion (version: int, created: string, label: string)\n"
                "\n"
                "# state: ENABLED, DISABLED, PENDING_DELETION, DELETED; length in bits;\n"
                "# token_usage_disabled: ENABLED here but CKA_ENCRYPT/CKA_DECRYPT turned off in the token.\n"
                "type KeyInfo (\n"
                "  id: string,\n"
                "  name: string,\n"
                "  compartment: string,\n"
                "  vault: string,\n"
                "  state: string,\n"
                "  protection_mode: string,\n"
                "  length: int,\n"
                "  current_version: int,\n"
                "  versions: []KeyVersion,\n"
                "  created: ?string,\n"
                "  last_rotation: ?string,\n"
                "  rotation_interval_days: int,\n"
                "  deletion_time: ?string,\n"
                "  provider_managed: bool,\n"
                "  on_disable: ?string,\n"
                "  token_usage_disabled: ?bool\n"
                ")\n"
                "\n"
                "# protection_mode: \"hsm\" (default) or \"software\"; length: 128, 192, 256 (default).\n"
                "# on_disable: \"suspend\" or \"close\" the volumes' mappings when the key is disabled\n"
                "# (default: [enforcement] on-disable= of cmekd.conf).\n"
                "method Create(name: string, compartment: string, length: ?int, protection_mode: ?string, vault: ?string,\n"
                "              rotation_interval_days: ?int, on_disable: ?string) -> (key: KeyInfo)\n"
                "\n"
                "# wrapped: base64 of the blob; wrapping_algorithm: RSA_OAEP_AES_SHA256 (default) or RSA_OAEP_SHA256.\n"
                "method Import(name: string, compartment: string, wrapped: string, wrapping_algorithm: ?string,\n"
                "              vault: ?string, rotation_interval_days: ?int) -> (key: KeyInfo)\n"
                "\n"
                "# Without a compartment: every key the caller may inspect.\n"
                "method List(compartment: ?string) -> (keys: []KeyInfo)\n"
                "\n"
                "# key: an id, a name, or COMPARTMENT/NAME.\n"
                "method Show(key: string) -> (key: KeyInfo)\n"
                "\n"
                "method Disable(key: string) -> (key: KeyInfo)\n"
                "\n"
                "method Enable(key: string) -> (key: KeyInfo)\n"
                "\n"
                "# One old version only (not the current one): it unwraps nothing any more.\n"
                "method DisableVersion(key: string, version: int) -> (key: KeyInfo)\n"
                "\n"
                "method EnableVersion(key: string, version: int) -> (key: KeyInfo)\n"
                "\n"
                "# days: the waiting period, 7 to 30 (default 30).\n"
                "method ScheduleDeletion(key: string, days: ?int) -> (key: KeyInfo)\n"
                "\n"
                "method CancelDeletion(key: string) -> (key: KeyInfo)\n"
                "\n"
                "method Rotate(key: string) -> (key: KeyInfo, version: int)\n"
                "\n"
                "# Test builds started with --test-hooks only.\n"
                "method RunScheduled(now: ?int) -> (deleted: []string, rotated: []string)\n"
                "\n"
                "method TestEncrypt(key: string, plaintext: string, aad: ?string, version: ?int)\n"
                "  -> (version: int, iv: string, ciphertext: string, tag: string)\n"
                "\n"
                "method TestDecrypt(key: string, iv: string, ciphertext: string, tag: string, aad: ?string,\n"
                "                   version: ?int) -> (plaintext: string)\n"
                "\n"
                "# Any method but List and Show: the audit log cannot record the operation, so it was refused.\n"
                "error AuditUnavailable (message: string)\n",
        .methods = key_methods,
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

static const Method vault_methods[] = {
        { "io.cmek.Vault.List", method_vault_list },
        { "io.cmek.Vault.Show", method_vault_show },
        { "io.cmek.Vault.GetWrappingKey", method_get_wrapping_key },
        { NULL, NULL },
};

const Interface interface_vault = {
        .name = "io.cmek.Vault",
        .description =
                "# Vaults: PKCS#11 tokens reached through p11-kit. \"default\" is cmekd's embedded SoftHSM2\n"
                "# token; others come from [vault NAME] sections of cmekd.conf(5). An unavailable vault\n"
                "# is listed with available=false and the reason.\n"
                "# Errors: io.cmek.VaultNotFound (vault), io.cmek.VaultUnavailable (vault, reason).\n"
                "interface io.cmek.Vault\n"
                "\n"
                "type TokenInfo (label: ?string, manufacturer: ?string, model: ?string, serial: ?string,\n"
                "                hardware_version: string, firmware_version: string)\n"
                "\n"
                "type VaultInfo (\n"
                "  name: string,\n"
                "  uri: ?string,\n"
                "  module: ?string,\n"
                "  embedded: bool,\n"
                "  available: bool,\n"
                "  reason: ?string,\n"
                "  slots: ?int,\n"
                "  free_slots: ?int,\n"
                "  token: ?TokenInfo,\n"
                "  keys: ?int,\n"
                "  compartments: ?[]string\n"
                ")\n"
                "\n"
                "method List() -> (vaults: []VaultInfo)\n"
                "\n"
                "# vault: default \"default\".\n"
                "method Show(vault: ?string) -> (vault: VaultInfo)\n"
                "\n"
                "# The RSA-4096 public key (PEM) that import blobs are wrapped for; generated in the token\n"
                "# on the first call, which needs manage vaults; reading an existing one needs read vaults.\n"
                "method GetWrappingKey(vault: ?string) -> (vault: string, algorithm: string, public_key: string)\n"
                "\n"
                "# GetWrappingKey: the audit log cannot record the operation, so it was refused.\n"
                "error AuditUnavailable (message: string)\n",
        .methods = vault_methods,
};
