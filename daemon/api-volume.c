/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* io.cmek.Volume: create, bind, unlock, unwrap (for the token plugin), re-wrap, unbind, list. */
#include <stdio.h>
#include <unistd.h>
#include <libcryptsetup.h>

#include "cmek-base64.h"
#include "cmek-errors.h"
#include "cmek-secmem.h"
#include "cmek-varlink.h"
#include "daemon.h"
#include "key.h"
#include "policy.h"
#include "volume.h"

/* Turns an -errno of volume.c/key.c into the Varlink error that says what to do (lib/cmek-errors.c). */
static int reply_errno(Call *c, int r, const char *device, const char *key_id) {
        json_object *p = json_object_new_object();
        const char *hint;
        const CmekError *e = cmek_error_from_errno(r, key_id, &hint);
        char msg[512];

        if (device)
                json_object_object_add(p, "device", json_object_new_string(device));
        if (key_id)
                json_object_object_add(p, "key_id", json_object_new_string(key_id));
        if (e->key_state)
                json_object_object_add(p, "state", json_object_new_string(e->key_state));
        cmek_error_format_hint(hint, r, device, key_id, msg, sizeof(msg));
        if (streq(e->name, VARLINK_ERROR_INVALID_PARAMETER)) {
                /* the standard error names the parameter; the device is in the message */
                json_object_object_del(p, "device");
                json_object_object_del(p, "key_id");
                json_object_object_add(p, "parameter", json_object_new_string(r == -EPERM ? "unlock_secret" : "unlock_keyslot"));
        }
        json_object_object_add(p, "message", json_object_new_string(msg));
        return call_error(c, e->name, p);
}

static void audit(Manager *m, Call *c, const char *event, const char *result, const Volume *v,
                  const char *key_id, const char *volume, const char *detail) {
        AuditRecord rec = {
                .event = event,
                .operation = call_method(c),
                .result = result,
                .key_id = key_id ?: (v ? v->key_id : NULL),
                .volume = volume ?: (v ? v->uuid : NULL),
                .detail = detail,
        };
        (void) manager_audit(m, c, &rec);
}

/* Looks the key up and checks "use" on it (in its compartment). Replies on failure. */
static int authorize_key(Manager *m, Call *c, const char *key, const char *verb, KeyInfo *ret) {
        int r;

        /* a caller that may not even inspect the key gets the unknown-key answer (no existence
         * oracle); a caller no statement names gets it before any token access */
        if (!manager_caller_has_any_grant(m, c)) {
                if (manager_audit_denial_admit(m, call_caller(c), call_method(c)))
                        (void) manager_audit(m, c, &(AuditRecord) {
                                .event = "policy.denied", .operation = call_method(c),
                                .result = CMEK_ERROR_PERMISSION_DENIED,
                                .detail = "the caller holds no grant, answered as an unknown key" });
                return reply_key_not_found(c, key, -ENOENT), -EACCES;
        }
        r = key_lookup(m, key, ret);
        if (r == -ENOENT)
                return reply_key_not_found(c, key, r), -EACCES;
        if (r < 0)
                return reply_errno(c, r, NULL, key), -EACCES;
        if (!manager_allowed(m, c, verb, "keys", ret->compartment, ret->id, NULL) &&
            !manager_allowed(m, c, "inspect", "keys", ret->compartment, ret->id, NULL)) {
                if (manager_audit_denial_admit(m, call_caller(c), call_method(c)))
                        (void) manager_audit(m, c, &(AuditRecord) {
                                .event = "policy.denied", .operation = call_method(c),
                                .result = CMEK_ERROR_PERMISSION_DENIED, .key_id = ret->id,
                                .detail = "not even inspect keys there, answered as an unknown key" });
                key_info_done(ret);
                return reply_key_not_found(c, key, -ENOENT), -EACCES;
        }
        r = manager_authorize(m, c, verb, "keys", ret->compartment, ret->id, NULL);
        if (r < 0) {
                key_info_done(ret);
                return r;
        }
        return 0;
}

/* A base64 secret parameter (at most 12 KiB), decoded into locked memory; the JSON copy is wiped.
 * 0 if absent or null, 1 if decoded. */
static int get_secret(json_object *params, const char *name, void **ret, size_t *ret_size) {
        json_object *v;
        int r;

        *ret = NULL;
        *ret_size = 0;
        if (!json_object_object_get_ex(params, name, &v) || json_object_is_type(v, json_type_null))
                return 0;
        r = cmek_base64_decode_secret(v, 12288, ret, ret_size);
        return r < 0 ? r : 1;
}

/* InvalidParameter for a value the declaration admits but this method does not (types, presence
 * and unknown fields are checked by dispatch() before the handler runs) */
static int invalid(Call *c, const char *parameter, const char *msg) {
        json_object *p = json_object_new_object();
        json_object_object_add(p, "parameter", json_object_new_string(parameter));
        json_object_object_add(p, "message", json_object_new_string(msg));
        return call_error(c, VARLINK_ERROR_INVALID_PARAMETER, p);
}

/* A policy check that does not reply (to choose what a refused caller is told). */
static bool allowed(Manager *m, Call *c, const char *verb, const char *resource, const char *compartment,
                    const char *key_id, const char *volume_id) {
        const Caller *who = call_caller(c);
        PolicyRequest req = {
                .uid = who->uid, .gid = who->gid, .groups = who->groups, .n_groups = who->n_groups,
                .verb = policy_verb_from_string(verb), .resource_type = resource, .compartment = compartment,
                .key_id = key_id, .volume_id = volume_id,
        };
        return req.verb >= 0 && policy_check(m->policy, &req);
}

/* "use keys" and "manage volumes" on the key that wraps a DEK now (its compartment). Replies. */
static int authorize_wrapping_key(Manager *m, Call *c, const char *key_id, const char *uuid) {
        KeyInfo k = {};
        const char *compartment = NULL;
        int r;

        if (!key_id)
                return 0;
        if (key_lookup(m, key_id, &k) >= 0)
                compartment = k.compartment;
        r = manager_authorize(m, c, "use", "keys", compartment, key_id, NULL);
        if (r >= 0)
                r = manager_authorize(m, c, "manage", "volumes", compartment, key_id, uuid);
        key_info_done(&k);
        return r;
}

static int reply_registered_elsewhere(Call *c, const char *dev, Volume *v) {
        return call_errorf(c, CMEK_ERROR_ALREADY_EXISTS, "the volume on '%s' (UUID %s) is registered at '%s', which still "
                           "holds it: a copy or alias cannot take its place; use '%s' or the UUID (if the volume really "
                           "moved, detach the old device first)", dev, v->uuid, strempty(v->path), strempty(v->path));
}

static int reply_volume(Manager *m, Call *c, Volume *v, bool with_header) {
        json_object *p = json_object_new_object();
        json_object_object_add(p, "volume", volume_to_json(m, v, with_header));
        return call_reply(c, p);
}

static int method_create(Manager *m, Call *c, json_object *params) {
        const char *path = cmek_json_get_string(params, "path"), *key = cmek_json_get_string(params, "key");
        bool strict = cmek_json_get_bool(params, "strict", false), force = cmek_json_get_bool(params, "force", false);
        _cleanup_secure_ void *recovery = NULL;
        size_t recovery_size = 0;
        int64_t size = 0;
        KeyInfo k = {};
        Volume *v = NULL;
        VolumeFile f = VOLUME_FILE_NULL;
        int r;

        if (json_object_object_get_ex(params, "size", NULL) && cmek_json_get_int64(params, "size", &size) && size < 0)
                return invalid(c, "size", "\"size\" must be a byte count");
        r = get_secret(params, "recovery_passphrase", &recovery, &recovery_size);
        if (r < 0)
                return invalid(c, "recovery_passphrase", "\"recovery_passphrase\" must be base64");
        if (strict && recovery)
                return invalid(c, "recovery_passphrase", "--strict volumes have only the CMEK keyslot: no recovery passphrase");
        if (size > 0 && size < 8 * 1024 * 1024)
                return invalid(c, "size", "\"size\" must be at least 8 MiB (4 MiB of it is the LUKS2 header)");

        r = authorize_key(m, c, key, "use", &k);
        if (r < 0)
                return 0;
        r = manager_authorize(m, c, "manage", "volumes", k.compartment, k.id, NULL);
        if (r < 0)
                goto out;
        /* opened with the caller's own reach: --size creates where the caller may create files
         * (the image is the caller's), formatting needs the caller's write access */
        r = volume_file_open(m, c, path, VOLUME_OPEN_WRITE | VOLUME_OPEN_NO_DM | (size > 0 ? VOLUME_OPEN_CREATE : 0) |
                             (force ? VOLUME_OPEN_UNUSED : 0), &f);
        if (r < 0)
                goto out;
        r = volume_create(m, &f, (uint64_t) size, k.id, force, recovery, recovery_size, &v);
        if (r < 0) {
                volume_file_unlink_created(c, path, &f);
                audit(m, c, "volume.bound", "failed", NULL, k.id, f.real, strerror(-r));
                reply_errno(c, r, path, k.id);
                goto out;
        }
        audit(m, c, "volume.bound", "ok", v, NULL, NULL, recovery ? "created with a recovery passphrase" :
              strict ? "created strict: CMEK keyslot only" : "created: CMEK keyslot only");
        volume_event(m, "volume.key-assigned", v, NULL, NULL);
        reply_volume(m, c, v, false);
out:
        volume_file_done(&f);
        key_info_done(&k);
        return 0;
}

static int method_bind(Manager *m, Call *c, json_object *params) {
        const char *dev = cmek_json_get_string(params, "device"), *key = cmek_json_get_string(params, "key");
        _cleanup_secure_ void *unlock = NULL;
        size_t unlock_size = 0;
        int64_t unlock_keyslot = -1;
        KeyInfo k = {};
        VolumeFile f = VOLUME_FILE_NULL;
        VolumeProbe p = VOLUME_PROBE_NULL;
        Volume *v = NULL, *reg;
        _cleanup_free_ char *old_key = NULL;
        int r;

        if (json_object_object_get_ex(params, "unlock_keyslot", NULL) &&
            cmek_json_get_int64(params, "unlock_keyslot", &unlock_keyslot) && (unlock_keyslot < 0 || unlock_keyslot > 31))
                return invalid(c, "unlock_keyslot", "\"unlock_keyslot\" must be a keyslot number (0-31)");
        r = get_secret(params, "unlock_secret", &unlock, &unlock_size);
        if (r < 0)
                return invalid(c, "unlock_secret", "\"unlock_secret\" must be base64");
        r = authorize_key(m, c, key, "use", &k);
        if (r < 0)
                return 0;
        r = manager_authorize(m, c, "manage", "volumes", k.compartment, k.id, NULL);
        if (r < 0)
                goto out;
        /* the caller's own write access, never a mapping: then what its header says */
        r = volume_file_open(m, c, dev, VOLUME_OPEN_WRITE | VOLUME_OPEN_NO_DM, &f);
        if (r < 0)
                goto out;
        r = volume_probe(&f, &p);
        if (r < 0) {
                reply_errno(c, r, dev, NULL);
                goto out;
        }
        /* moving a volume away from a key needs "use keys" and "manage volumes" on the key that
         * wraps its DEK now (the header's token), and on the one the registry names */
        reg = volume_find_uuid(m, p.uuid);
        if (p.key_id && !streq(p.key_id, k.id) && authorize_wrapping_key(m, c, p.key_id, p.uuid) < 0)
                goto out;
        if (reg && reg->key_id && !streq(reg->key_id, k.id) && !streq_ptr(reg->key_id, p.key_id) &&
            authorize_wrapping_key(m, c, reg->key_id, p.uuid) < 0)
                goto out;
        if (reg && !streq_ptr(reg->path, f.real)) {
                if (!p.key_id) {
                        reply_registered_elsewhere(c, dev, reg);
                        goto out;
                }
                r = volume_adopt_file(m, &f, p.uuid, &v);
                if (r == -EADDRINUSE) {
                        reply_registered_elsewhere(c, dev, reg);
                        goto out;
                }
                if (r < 0) {
                        reply_errno(c, r, dev, NULL);
                        goto out;
                }
                audit(m, c, "volume.moved", "ok", v, NULL, NULL, f.real);
        } else if (!reg && p.key_id) {
                r = volume_adopt_file(m, &f, p.uuid, &v);
                if (r < 0) {
                        reply_errno(c, r, dev, NULL);
                        goto out;
                }
                audit(m, c, "volume.adopted", "ok", v, NULL, NULL, f.real);
        }
        old_key = p.key_id ? strdup(p.key_id) : NULL;
        r = volume_bind(m, &f, &p, k.id, unlock, unlock_size, (int) unlock_keyslot, &v);
        if (r == -ENOKEY && !old_key) {
                invalid(c, "unlock_secret", "the volume is not bound yet: give an existing way in once "
                        "(--unlock-key-file F or --unlock-passphrase-stdin)");
                goto out;
        }
        if (r < 0) {
                audit(m, c, "volume.bound", "failed", NULL, k.id, p.uuid, strerror(-r));
                reply_errno(c, r, dev, r == -EKEYREVOKED || r == -EKEYEXPIRED || r == -ENOKEY || r == -ENOENT ?
                            (old_key && r != -ENOENT ? old_key : k.id) : k.id);
                goto out;
        }
        if (r > 0) {
                json_object *x = json_object_new_object();
                json_object_object_add(x, "old_key_id", old_key ? json_object_new_string(old_key) : NULL);
                audit(m, c, "volume.key_changed", "ok", v, NULL, NULL, old_key ? old_key : "re-bound");
                volume_event(m, "volume.key-changed", v, NULL, x);
        } else {
                audit(m, c, "volume.bound", "ok", v, NULL, NULL, "bound an existing LUKS2 volume");
                volume_event(m, "volume.key-assigned", v, NULL, NULL);
        }
        reply_volume(m, c, v, false);
out:
        volume_probe_done(&p);
        volume_file_done(&f);
        key_info_done(&k);
        return 0;
}

static int authorize_volume(Manager *m, Call *c, Volume *v, const char *verb, bool use_key) {
        KeyInfo k = {};
        const char *compartment = NULL;
        int r;

        if (v->key_id && key_lookup(m, v->key_id, &k) >= 0)
                compartment = k.compartment;
        r = manager_authorize(m, c, verb, "volumes", compartment, v->key_id, v->uuid);
        if (r >= 0 && use_key && v->key_id)
                r = manager_authorize(m, c, "use", "keys", compartment, v->key_id, NULL);
        key_info_done(&k);
        return r;
}

/* One answer for "does not exist", "you cannot read it", "not a volume" and "not allowed to see
 * it", for a caller that is not root: no file-existence oracle. */
static int reply_not_visible(Call *c, const char *dev) {
        return call_errorf(c, CMEK_ERROR_VOLUME_NOT_FOUND, "'%s' is not a cmekd volume you may see: it does not exist, "
                           "you cannot read it, it is not a bound LUKS2 volume, or no policy statement lets you "
                           "inspect it; give a path you can read, or the UUID of a registered volume", dev);
}

static void audit_hidden_denial(Manager *m, Call *c, const char *key_id, const char *uuid) {
        if (manager_audit_denial_admit(m, call_caller(c), call_method(c)))
                (void) manager_audit(m, c, &(AuditRecord) {
                        .event = "policy.denied", .operation = call_method(c), .result = CMEK_ERROR_PERMISSION_DENIED,
                        .key_id = key_id, .volume = uuid, .detail = "not allowed to inspect the volume (told: not found)" });
}

/* authorize_volume() for a registered volume named by a caller: one without "inspect volumes"
 * there is told what it would be told for a volume that does not exist. */
static int authorize_registered(Manager *m, Call *c, Volume *v, const char *dev, const char *verb, bool use_key) {
        KeyInfo k = {};
        bool visible;

        if (call_caller(c)->uid != 0) {
                visible = allowed(m, c, "inspect", "volumes",
                                  v->key_id && key_lookup(m, v->key_id, &k) >= 0 ? k.compartment : NULL, v->key_id, v->uuid);
                key_info_done(&k);
                if (!visible) {
                        audit_hidden_denial(m, c, v->key_id, v->uuid);
                        return reply_not_visible(c, dev), -EACCES;
                }
        }
        return authorize_volume(m, c, v, verb, use_key);
}

/* Resolves a caller's identifier (registered UUID, then registered path, then mapping name, else a
 * path opened with the caller's own reach) and authorizes verb on the volume it turns out to be,
 * before anything happens to it: a path is authorized on its header (UUID, and the key its cmek
 * token names), read without side effects; registering it (volume.adopted) needs "manage volumes"
 * there too. A UUID registered at another path is never repointed at a copy. Replies on failure. */
static Volume *find_volume(Manager *m, Call *c, const char *dev, const char *verb, bool use_key) {
        Volume *v = volume_find(m, dev), *reg;
        VolumeFile f = VOLUME_FILE_NULL;
        VolumeProbe p = VOLUME_PROBE_NULL;
        KeyInfo k = {};
        const char *compartment = NULL;
        bool root = call_caller(c)->uid == 0;
        int r;

        if (v)
                return authorize_registered(m, c, v, dev, verb, use_key) < 0 ? NULL : v;

        r = volume_file_open(m, c, dev, root ? 0 : VOLUME_OPEN_QUIET, &f);
        if (r < 0)
                return NULL;
        v = volume_find_path(m, f.real);
        if (v) {
                /* a registered volume reached by another name */
                volume_file_done(&f);
                return authorize_registered(m, c, v, dev, verb, use_key) < 0 ? NULL : v;
        }
        r = volume_probe(&f, &p);
        if (r >= 0 && !p.key_id)
                r = -ENOENT;
        if (r < 0) {
                if (!root)
                        reply_not_visible(c, dev);
                else if (r == -ENOENT)
                        call_errorf(c, CMEK_ERROR_VOLUME_NOT_FOUND, "'%s' is not a volume bound by cmekd (no cmek token)", dev);
                else
                        reply_errno(c, r, dev, NULL);
                goto fail;
        }
        if (key_lookup(m, p.key_id, &k) >= 0)
                compartment = k.compartment;
        if (!root && !allowed(m, c, "inspect", "volumes", compartment, p.key_id, p.uuid)) {
                audit_hidden_denial(m, c, p.key_id, p.uuid);
                reply_not_visible(c, dev);
                goto fail;
        }
        if (manager_authorize(m, c, verb, "volumes", compartment, p.key_id, p.uuid) < 0 ||
            (use_key && manager_authorize(m, c, "use", "keys", compartment, p.key_id, NULL) < 0))
                goto fail;
        reg = volume_find_uuid(m, p.uuid);
        if (reg && reg->key_id && !streq(reg->key_id, p.key_id) &&
            authorize_volume(m, c, reg, verb, use_key) < 0)
                goto fail;
        /* registering it (or taking it as the registered volume's new path) is a state change */
        if (manager_authorize(m, c, "manage", "volumes", compartment, p.key_id, p.uuid) < 0)
                goto fail;
        r = volume_adopt_file(m, &f, p.uuid, &v);
        if (r == -EADDRINUSE) {
                reply_registered_elsewhere(c, dev, reg);
                goto fail;
        }
        if (r < 0) {
                reply_errno(c, r, dev, NULL);
                goto fail;
        }
        if (r == 0)
                audit(m, c, "volume.adopted", "ok", v, NULL, NULL, f.real);
        else if (r == 2)
                audit(m, c, "volume.moved", "ok", v, NULL, NULL, f.real);
        key_info_done(&k);
        volume_probe_done(&p);
        volume_file_done(&f);
        return v;
fail:
        key_info_done(&k);
        volume_probe_done(&p);
        volume_file_done(&f);
        return NULL;
}

/* For changes of the wrapping (rewrap, unbind, remove-slot) of a registered volume: the key its
 * header's token names now, when it is not the registry's, must be authorized too. Replies. */
static int authorize_header_key(Manager *m, Call *c, Volume *v) {
        VolumeFile f = VOLUME_FILE_NULL;
        VolumeProbe p = VOLUME_PROBE_NULL;
        int r = 0;

        if (!v->path || volume_file_open_root(m, v->path, &f) < 0)
                return 0; /* unreachable: nothing will be unwrapped from it */
        if (volume_probe(&f, &p) >= 0 && streq_ptr(p.uuid, v->uuid) && p.key_id && !streq_ptr(p.key_id, v->key_id))
                r = authorize_wrapping_key(m, c, p.key_id, v->uuid);
        volume_probe_done(&p);
        volume_file_done(&f);
        return r;
}

/* Restores one volume and replies. */
static int restore_one(Manager *m, Call *c, Volume *v) {
        int r = volume_restore(m, v);

        if (r == -ENXIO)
                return call_errorf(c, CMEK_ERROR_INVALID_TRANSITION, "'%s' is not locked by enforcement: nothing to restore",
                                   strempty(v->path));
        audit(m, c, "volume.restored", r < 0 ? "failed" : "ok", v, NULL, NULL, r < 0 ? strerror(-r) : v->mapping);
        if (r < 0)
                return reply_errno(c, r, v->path, r == -ENOKEY && v->state != VOLUME_BOUND ? NULL : v->key_id);
        volume_event(m, "volume.restored", v, NULL, NULL);
        return reply_volume(m, c, v, false);
}

/* Is name the first field of a line of crypttab? */
static bool crypttab_has(Manager *m, const char *name) {
        const char *path = "/etc/crypttab";
        _cleanup_fclose_ FILE *f = NULL;
        char line[4096];

        if (ENABLE_TEST_HOOKS && m->test_hooks && getenv("CMEKD_TEST_CRYPTTAB"))
                path = getenv("CMEKD_TEST_CRYPTTAB");
        f = fopen(path, "re");
        if (!f)
                return false;
        while (fgets(line, sizeof(line), f)) {
                char *s = line + strspn(line, " \t");
                size_t l = strcspn(s, " \t\n");
                if (*s == '#' || l == 0)
                        continue;
                if (l == strlen(name) && strncmp(s, name, l) == 0)
                        return true;
        }
        return false;
}

/* A custom mapping name: only for root and callers granted "manage volumes" in the tenancy, and
 * never one that exists already or that /etc/crypttab gives to a volume. Replies. */
static int check_mapping_name(Manager *m, Call *c, Volume *v, const char *name) {
        char path[256];

        if (strncmp(name, "cmek-", 5) == 0 && streq(name + 5, v->uuid))
                return 0;
        if (call_caller(c)->uid != 0 && !allowed(m, c, "manage", "volumes", NULL, NULL, NULL))
                return call_errorf(c, CMEK_ERROR_PERMISSION_DENIED, "a custom mapping name needs 'manage volumes in "
                                   "tenancy': leave out --name (the mapping is cmek-%s)", v->uuid), -EACCES;
        snprintf(path, sizeof(path), "/dev/mapper/%s", name);
        if (access(path, F_OK) >= 0 || crypt_status(NULL, name) >= CRYPT_ACTIVE)
                return call_errorf(c, CMEK_ERROR_ALREADY_EXISTS, "a mapping named '%s' already exists: choose another "
                                   "--name, or leave it out", name), -EEXIST;
        if (crypttab_has(m, name))
                return call_errorf(c, CMEK_ERROR_ALREADY_EXISTS, "'%s' is a name /etc/crypttab gives to a volume "
                                   "(systemd-cryptsetup expects it): choose another --name, or leave it out", name), -EEXIST;
        return 0;
}

static int method_unlock(Manager *m, Call *c, json_object *params) {
        const char *dev = cmek_json_get_string(params, "device"), *name = cmek_json_get_string(params, "name");
        bool test = cmek_json_get_bool(params, "test", false);
        _cleanup_free_ char *defname = NULL;
        Volume *v;
        int r;

        if (name && (!*name || strchr(name, '/') || strlen(name) > 127))
                return invalid(c, "name", "\"name\" must be a device-mapper name (no '/', at most 127 bytes)");
        v = find_volume(m, c, dev, "use", true);
        if (!v)
                return 0;
        if (name && check_mapping_name(m, c, v, name) < 0)
                return 0;
        /* every permitted request looks at the token too, not only the watch timer (after the
         * permission check: a refused client must not make us touch the token) */
        volumes_watch_now(m);
        if (!test && !name && (v->lock == VOLUME_LOCK_SUSPENDED || v->lock == VOLUME_LOCK_CLOSING))
                return restore_one(m, c, v);
        if (!test && !name) {
                if (asprintf(&defname, "cmek-%s", v->uuid) < 0)
                        return -ENOMEM;
                name = defname;
        }
        r = volume_activate(m, v, test ? NULL : name);
        audit(m, c, "key.used", r < 0 ? "failed" : "ok", v, NULL, NULL,
              test ? "unwrap checked against the keyslot (--test)" : name);
        if (r < 0)
                return reply_errno(c, r, v->path, r == -ENOKEY && v->state != VOLUME_BOUND ? NULL : v->key_id);
        if (!test)
                audit(m, c, "volume.unlocked", "ok", v, NULL, NULL, name);
        return reply_volume(m, c, v, false);
}

/* Resumes or re-opens what enforcement locked: one device, or every volume of a key. Refused
 * with the key's state unless the key is ENABLED. */
static int method_restore(Manager *m, Call *c, json_object *params) {
        const char *dev = cmek_json_get_string(params, "device"), *key = cmek_json_get_string(params, "key");
        VolumeRegistry *reg = m->volumes;
        json_object *results, *p;
        unsigned restored = 0, failed = 0;
        KeyInfo k = {};
        int r;

        if (!!dev == !!key)
                return invalid(c, "device", "give either \"device\" or \"key\"");
        if (dev) {
                Volume *v = find_volume(m, c, dev, "use", true);
                if (!v)
                        return 0;
                volumes_watch_now(m);
                return restore_one(m, c, v);
        }
        r = authorize_key(m, c, key, "use", &k);
        if (r < 0)
                return 0;
        if (manager_authorize(m, c, "use", "volumes", k.compartment, k.id, NULL) < 0) {
                key_info_done(&k);
                return 0;
        }
        /* the token's view, now that the caller may ask: a key turned off there is not restored */
        volumes_watch_now(m);
        {
                KeyInfo now = {};
                if (key_lookup(m, k.id, &now) >= 0) {
                        k.state = now.state;
                        key_info_done(&now);
                }
        }
        if (k.state != KEY_STATE_ENABLED) {
                r = key_state_to_errno(k.state);
                reply_errno(c, r, NULL, k.id);
                key_info_done(&k);
                return 0;
        }
        results = json_object_new_array();
        for (size_t i = 0; i < reg->n; i++) {
                Volume *v = reg->volumes[i];
                json_object *e;

                if (!streq_ptr(v->key_id, k.id) || v->lock == VOLUME_LOCK_NONE)
                        continue;
                r = volume_restore(m, v);
                e = json_object_new_object();
                json_object_object_add(e, "uuid", json_object_new_string(v->uuid));
                json_object_object_add(e, "path", v->path ? json_object_new_string(v->path) : NULL);
                json_object_object_add(e, "mapping", v->mapping ? json_object_new_string(v->mapping) : NULL);
                json_object_object_add(e, "result", json_object_new_string(r < 0 ? "failed" : "restored"));
                if (r < 0)
                        json_object_object_add(e, "error", json_object_new_string(strerror(-r)));
                json_object_array_add(results, e);
                audit(m, c, "volume.restored", r < 0 ? "failed" : "ok", v, NULL, NULL, r < 0 ? strerror(-r) : v->mapping);
                if (r < 0) {
                        failed++;
                        continue;
                }
                restored++;
                volume_event(m, "volume.restored", v, "ENABLED", NULL);
        }
        key_info_done(&k);
        p = json_object_new_object();
        json_object_object_add(p, "restored", json_object_new_int(restored));
        json_object_object_add(p, "failed", json_object_new_int(failed));
        json_object_object_add(p, "results", results);
        return call_reply(c, p);
}

static int method_lock(Manager *m, Call *c, json_object *params) {
        const char *dev = cmek_json_get_string(params, "device");
        Volume *v;
        int r;

        v = find_volume(m, c, dev, "use", false);
        if (!v)
                return 0;
        r = volume_deactivate(m, v);
        if (r == -ENXIO)
                return call_errorf(c, CMEK_ERROR_INVALID_TRANSITION, "'%s' is not unlocked by cmekd", dev);
        if (r < 0)
                return reply_errno(c, r, v->path, NULL);
        audit(m, c, "volume.locked", "ok", v, NULL, NULL, NULL);
        return reply_volume(m, c, v, false);
}

/* The token plugin's call: the header it read (or the device, read here) -> the DEK. */
static int method_unwrap(Manager *m, Call *c, json_object *params) {
        const char *uuid = cmek_json_get_string(params, "uuid"), *why = NULL;
        json_object *tok;
        CmekToken t = CMEK_TOKEN_NULL;
        _cleanup_secure_ void *dek = NULL;
        KeyInfo k = {};
        int r;

        if (!json_object_object_get_ex(params, "token", &tok))
                return -EINVAL; /* declared required: dispatch() checked it */
        r = cmek_token_from_json(tok, &t, &why);
        if (r < 0) {
                _cleanup_free_ char *msg = NULL;
                if (asprintf(&msg, "malformed cmek token: %s", why) < 0)
                        return -ENOMEM;
                return invalid(c, "token", msg);
        }

        /* a caller that no statement names is refused before any token access */
        if (!manager_caller_has_any_grant(m, c)) {
                (void) manager_deny(m, c, "use", "keys", NULL, t.key_id, uuid);
                goto out;
        }
        r = key_lookup(m, t.key_id, &k);
        if (r < 0) {
                /* A caller who may not list keys learns nothing from an unknown (or deleted) key id:
                 * the refusal a key in a compartment he has no grant in gets. */
                if (!manager_allowed(m, c, "inspect", "keys", NULL, NULL, NULL))
                        (void) manager_deny(m, c, "use", "keys", NULL, t.key_id, uuid);
                else
                        reply_errno(c, r, NULL, t.key_id);
                goto out;
        }
        /* use keys + use volumes: what unlocking through the daemon needs; the DEK itself leaving
         * the daemon needs use key-delegate too (root, i.e. the token plugin and udev, always may). */
        if (manager_authorize(m, c, "use", "keys", k.compartment, k.id, NULL) < 0 ||
            manager_authorize(m, c, "use", "volumes", k.compartment, k.id, uuid) < 0 ||
            manager_authorize(m, c, "use", "key-delegate", k.compartment, k.id, uuid) < 0)
                goto out;
        r = volume_unwrap_token(m, uuid, &t, &dek);
        {
                AuditRecord rec = {
                        .event = "key.used", .operation = call_method(c), .result = r < 0 ? "failed" : "ok",
                        .key_id = t.key_id, .volume = uuid, .detail = "unwrap for the token plugin",
                };
                (void) manager_audit(m, c, &rec);
        }
        if (r < 0) {
                reply_errno(c, r, uuid, t.key_id);
                goto out;
        }
        {
                json_object *extra = json_object_new_object();
                json_object_object_add(extra, "keyslot", json_object_new_int(t.keyslot));
                json_object_object_add(extra, "key_version", json_object_new_int64(t.key_version));
                call_reply_secret(c, "secret", dek, CMEK_DEK_SIZE, extra);
        }
out:
        key_info_done(&k);
        cmek_token_done(&t);
        return 0;
}

static int method_rewrap(Manager *m, Call *c, json_object *params) {
        const char *key = cmek_json_get_string(params, "key");
        bool new_secret = cmek_json_get_bool(params, "new_secret", false), more = call_wants_more(c);
        json_object *devs = NULL, *results = json_object_new_array(), *p;
        VolumeRegistry *reg = m->volumes;
        _cleanup_free_ Volume **list = NULL;
        unsigned count[_REWRAP_RESULT_MAX] = {};
        size_t n = 0;
        KeyInfo k = {};
        char detail[160];
        int r;

        if (json_object_object_get_ex(params, "devices", &devs) && !json_object_is_type(devs, json_type_array))
                devs = NULL;    /* null: all */
        /* A caller that no statement names is refused before any lookup: no token access, no
         * device opened. */
        if (!manager_caller_has_any_grant(m, c)) {
                json_object_put(results);
                (void) manager_deny(m, c, "manage", "volumes", NULL, key, NULL);
                return 0;
        }
        /* Authorize before anything else, whatever the selection turns out to hold: manage volumes
         * in the key's compartment, or in the tenancy for "every volume" (no key, no device). A
         * caller who may not list keys learns nothing from an unknown key. */
        if (key) {
                r = key_lookup(m, key, &k);
                if (r < 0) {
                        json_object_put(results);
                        if (!manager_allowed(m, c, "inspect", "keys", NULL, NULL, NULL)) {
                                (void) manager_deny(m, c, "manage", "volumes", NULL, key, NULL);
                                return 0;
                        }
                        return reply_errno(c, r, NULL, key);
                }
                if (manager_authorize(m, c, "manage", "volumes", k.compartment, k.id, NULL) < 0) {
                        json_object_put(results);
                        key_info_done(&k);
                        return 0;
                }
        } else if (!devs || json_object_array_length(devs) == 0) {
                if (manager_authorize(m, c, "manage", "volumes", NULL, NULL, NULL) < 0) {
                        json_object_put(results);
                        return 0;
                }
        }
        list = calloc(reg->n + (devs ? json_object_array_length(devs) : 0) + 1, sizeof(Volume *));
        if (!list) {
                json_object_put(results);
                key_info_done(&k);
                return -ENOMEM;
        }
        if (devs && json_object_array_length(devs) > 0) {
                for (size_t i = 0; i < json_object_array_length(devs); i++) {
                        const char *d = json_object_get_string(json_object_array_get_idx(devs, i));
                        Volume *v = d ? find_volume(m, c, d, "manage", true) : NULL;
                        if (v && authorize_header_key(m, c, v) < 0)
                                v = NULL, d = "";
                        if (!v) {
                                json_object_put(results);
                                key_info_done(&k);
                                return 0;
                        }
                        list[n++] = v;
                }
        } else
                for (size_t i = 0; i < reg->n; i++)
                        if (reg->volumes[i]->state == VOLUME_BOUND && (!key || streq_ptr(reg->volumes[i]->key_id, k.id)))
                                list[n++] = reg->volumes[i];
        for (size_t i = 0; i < n; i++)
                if (authorize_volume(m, c, list[i], "manage", true) < 0) {
                        json_object_put(results);
                        key_info_done(&k);
                        return 0;
                }

        if (n == 0) {
                /* nothing to do: nothing happened, so no audit record, no event, no hook */
                key_info_done(&k);
                p = json_object_new_object();
                json_object_object_add(p, "rewrapped", json_object_new_int(0));
                json_object_object_add(p, "current", json_object_new_int(0));
                json_object_object_add(p, "unreachable", json_object_new_int(0));
                json_object_object_add(p, "failed", json_object_new_int(0));
                json_object_object_add(p, "results", results);
                return call_reply(c, p);
        }

        snprintf(detail, sizeof(detail), "%zu volume(s)%s", n, new_secret ? ", new keyslot secrets" : "");
        audit(m, c, "volume.rewrap_started", "ok", NULL, key ? k.id : NULL, NULL, detail);
        {
                json_object *d = json_object_new_object();
                json_object_object_add(d, "key_id", key ? json_object_new_string(k.id) : NULL);
                json_object_object_add(d, "key_state", key ? json_object_new_string(key_state_to_string(k.state)) : NULL);
                json_object_object_add(d, "trigger", json_object_new_string("request"));
                json_object_object_add(d, "new_secret", json_object_new_boolean(new_secret));
                json_object_object_add(d, "total", json_object_new_int64((int64_t) n));
                manager_event(m, "rewrap.started", d);
        }
        volume_registry_defer_save(m);
        for (size_t i = 0; i < n; i++) {
                Volume *v = list[i];
                RewrapResult res;
                json_object *e = json_object_new_object();

                r = volume_rewrap(m, v, NULL, new_secret, &res);
                count[res]++;
                json_object_object_add(e, "uuid", json_object_new_string(v->uuid));
                json_object_object_add(e, "path", v->path ? json_object_new_string(v->path) : NULL);
                json_object_object_add(e, "result", json_object_new_string(rewrap_result_to_string(res)));
                json_object_object_add(e, "key_version", json_object_new_int64(v->key_version));
                if (r < 0)
                        json_object_object_add(e, "error", json_object_new_string(strerror(-r)));
                if (res == REWRAP_DONE)
                        audit(m, c, "volume.rewrapped", "ok", v, NULL, NULL, new_secret ? "new keyslot secret" : NULL);
                else if (res == REWRAP_FAILED)
                        audit(m, c, "volume.rewrapped", "failed", v, NULL, NULL, strerror(-r));
                if (more) {
                        json_object *pp = json_object_new_object();
                        json_object_object_add(pp, "progress", json_object_new_int64((int64_t) (i + 1)));
                        json_object_object_add(pp, "total", json_object_new_int64((int64_t) n));
                        json_object_object_add(pp, "volume", json_object_get(e));
                        call_reply_more(c, pp);
                }
                json_object_array_add(results, e);
        }
        int saved = volume_registry_flush(m);
        snprintf(detail, sizeof(detail), "%u rewrapped, %u current, %u unreachable, %u failed%s",
                 count[REWRAP_DONE], count[REWRAP_CURRENT], count[REWRAP_UNREACHABLE], count[REWRAP_FAILED],
                 saved < 0 ? ", registry not saved" : "");
        audit(m, c, "volume.rewrap_completed", count[REWRAP_FAILED] || saved < 0 ? "partial" : "ok", NULL, key ? k.id : NULL, NULL, detail);
        {
                json_object *d = json_object_new_object();
                json_object_object_add(d, "key_id", key ? json_object_new_string(k.id) : NULL);
                json_object_object_add(d, "key_state", key ? json_object_new_string(key_state_to_string(k.state)) : NULL);
                json_object_object_add(d, "trigger", json_object_new_string("request"));
                json_object_object_add(d, "new_secret", json_object_new_boolean(new_secret));
                json_object_object_add(d, "total", json_object_new_int64((int64_t) n));
                for (RewrapResult x = 0; x < _REWRAP_RESULT_MAX; x++)
                        json_object_object_add(d, rewrap_result_to_string(x), json_object_new_int64(count[x]));
                manager_event(m, "rewrap.completed", d);
        }
        key_info_done(&k);
        p = json_object_new_object();
        json_object_object_add(p, "rewrapped", json_object_new_int(count[REWRAP_DONE]));
        json_object_object_add(p, "current", json_object_new_int(count[REWRAP_CURRENT]));
        json_object_object_add(p, "unreachable", json_object_new_int(count[REWRAP_UNREACHABLE]));
        json_object_object_add(p, "failed", json_object_new_int(count[REWRAP_FAILED]));
        json_object_object_add(p, "results", results);
        if (saved < 0) {
                /* the headers are done (they are the truth), the registry is stale: not a success */
                json_object_put(p);
                return call_errorf(c, CMEK_ERROR_DEVICE_ERROR, "%u volume(s) re-wrapped in their headers, but the volume "
                                   "registry could not be written: %s; free the space and re-run", count[REWRAP_DONE],
                                   strerror(-saved));
        }
        return call_reply(c, p);
}

static int method_unbind(Manager *m, Call *c, json_object *params) {
        const char *dev = cmek_json_get_string(params, "device");
        bool remove_slot = cmek_json_get_bool(params, "remove_slot", false);
        _cleanup_free_ char *uuid = NULL, *old_key = NULL;
        KeyInfo def = {};
        Volume *v;
        int r;

        v = find_volume(m, c, dev, "manage", true);
        if (!v)
                return 0;
        if (authorize_header_key(m, c, v) < 0)
                return 0;
        uuid = strdup(v->uuid);
        old_key = v->key_id ? strdup(v->key_id) : NULL;
        if (!uuid)
                return -ENOMEM;
        if (remove_slot) {
                r = volume_remove_slot(m, v);
                if (r == -ENOTEMPTY)
                        return call_errorf(c, CMEK_ERROR_INVALID_TRANSITION,
                                           "removing the CMEK keyslot of '%s' would leave no keyslot: add a passphrase first "
                                           "(cryptsetup luksAddKey --token-only %s) or unbind without --remove-slot", dev, dev);
                if (r < 0)
                        return reply_errno(c, r, dev, old_key);
                audit(m, c, "volume.unbound", "ok", NULL, old_key, uuid, "CMEK keyslot and token removed");
                {
                        json_object *d = json_object_new_object();
                        json_object_object_add(d, "uuid", json_object_new_string(uuid));
                        json_object_object_add(d, "old_key_id", old_key ? json_object_new_string(old_key) : NULL);
                        json_object_object_add(d, "key_id", NULL);
                        json_object_object_add(d, "keyslot_removed", json_object_new_boolean(true));
                        manager_event(m, "volume.key-removed", d);
                }
                return call_reply(c, NULL);
        }
        r = key_get_default(m, &def);
        if (r < 0)
                return call_errorf(c, CMEK_ERROR_VAULT_UNAVAILABLE, "the provider-managed default key is not available: %s", strerror(-r));
        RewrapResult res;
        r = volume_rewrap(m, v, def.id, false, &res);
        if (r < 0) {
                reply_errno(c, r, dev, r == -EKEYREVOKED || r == -EKEYEXPIRED || r == -ENOKEY ? old_key : def.id);
                key_info_done(&def);
                return 0;
        }
        key_info_done(&def);
        audit(m, c, "volume.unbound", "ok", v, old_key, NULL, "re-wrapped under the provider-managed default key");
        {
                json_object *x = json_object_new_object();
                json_object_object_add(x, "old_key_id", old_key ? json_object_new_string(old_key) : NULL);
                volume_event(m, "volume.key-removed", v, NULL, x);
        }
        return reply_volume(m, c, v, false);
}

static int method_list(Manager *m, Call *c, json_object *params) {
        VolumeRegistry *reg = m->volumes;
        json_object *a = json_object_new_array(), *p;

        if (manager_authorize(m, c, "inspect", "volumes", NULL, NULL, NULL) < 0) {
                json_object_put(a);
                return 0;
        }
        /* every permitted request looks at the token too, not only the watch timer */
        volumes_watch_now(m);
        for (size_t i = 0; i < reg->n; i++)
                json_object_array_add(a, volume_to_json(m, reg->volumes[i], false));
        p = json_object_new_object();
        json_object_object_add(p, "volumes", a);
        return call_reply(c, p);
}

static int method_show(Manager *m, Call *c, json_object *params) {
        const char *dev = cmek_json_get_string(params, "device");
        Volume *v;

        v = find_volume(m, c, dev, "read", false);
        if (!v)
                return 0;
        /* every permitted request looks at the token too, not only the watch timer */
        volumes_watch_now(m);
        return reply_volume(m, c, v, true);
}

static int method_scan(Manager *m, Call *c, json_object *params) {
        json_object *paths, *a = json_object_new_array(), *p;
        int added = 0;

        if (!json_object_object_get_ex(params, "paths", &paths)) {
                json_object_put(a);
                return -EINVAL; /* declared required: dispatch() checked it */
        }
        if (manager_authorize(m, c, "manage", "volumes", NULL, NULL, NULL) < 0) {
                json_object_put(a);
                return 0;
        }
        for (size_t i = 0; i < json_object_array_length(paths); i++) {
                const char *path = json_object_get_string(json_object_array_get_idx(paths, i));
                Volume *v = NULL;
                VolumeFile f = VOLUME_FILE_NULL;
                /* with the caller's own reach, like every caller path */
                int r = path ? volume_file_open_as(m, call_caller(c), path, &f) : -EINVAL;
                if (r >= 0)
                        r = volume_adopt_file(m, &f, NULL, &v);
                json_object *e = json_object_new_object();
                json_object_object_add(e, "path", json_object_new_string(strempty(path)));
                json_object_object_add(e, "result", json_object_new_string(
                                       r == 0 ? "added" : r == 2 ? "moved" : r > 0 ? "known" : r == -ENOENT ? "not bound" :
                                       r == -EMEDIUMTYPE ? "not LUKS2" :
                                       r == -EADDRINUSE ? "registered at another path that still holds it" : strerror(-r)));
                if (v)
                        json_object_object_add(e, "uuid", json_object_new_string(v->uuid));
                if (r == 0) {
                        added++;
                        audit(m, c, "volume.adopted", "ok", v, NULL, NULL, f.real);
                } else if (r == 2)
                        audit(m, c, "volume.moved", "ok", v, NULL, NULL, f.real);
                volume_file_done(&f);
                json_object_array_add(a, e);
        }
        p = json_object_new_object();
        json_object_object_add(p, "added", json_object_new_int(added));
        json_object_object_add(p, "results", a);
        return call_reply(c, p);
}

static const VarlinkSymbol volume_symbols[] = {
        { VARLINK_TYPEDEF, "VolumeInfo", .fields = VARLINK_FIELDS(
                V_STRING("uuid"), V_STRING("path", V_OPT), V_STRING("key_id", V_OPT), V_STRING("key_name", V_OPT),
                V_INT("key_version"), V_STRING("key_state", V_OPT), V_STRING("vault", V_OPT), V_INT("keyslot"),
                V_INT("token"), V_STRING("state"), V_STRING("mapping", V_OPT), V_BOOL("mapped", V_OPT),
                V_BOOL("provider_managed"), V_BOOL("pending_rewrap"), V_BOOL("suspended"), V_STRING("lock", V_OPT),
                V_STRING("restore_name", V_OPT), V_STRING("lock_reason", V_OPT), V_INT("locked_usec", V_OPT),
                V_STRING("availability", V_OPT), V_STRING("unavailable_reason", V_OPT), V_STRING("in_use_by", V_OPT),
                V_INT("EncryptionKeyStatus", V_OPT), V_INT("EncryptionKeyType", V_OPT), V_BOOL("reachable", V_OPT),
                V_INT("other_keyslots", V_OPT), V_STRING("shred_status", V_OPT)) },
        { VARLINK_TYPEDEF, "RewrapResult", .fields = VARLINK_FIELDS(
                V_STRING("uuid"), V_STRING("path", V_OPT), V_STRING("result"), V_INT("key_version"),
                V_STRING("error", V_OPT)) },
        { VARLINK_METHOD, "Create", .handler = method_create,
          .doc = "Formats PATH as LUKS2 (a sparse image of size bytes when PATH does not exist) and binds it.\n"
                 "Secrets are base64. Needs: use keys, manage volumes.",
          .fields = VARLINK_FIELDS(V_STRING("path"), V_STRING("key"), V_INT("size", V_OPT), V_BOOL("strict", V_OPT),
                                   V_BOOL("force", V_OPT), V_STRING("recovery_passphrase", V_OPT)),
          .out = VARLINK_FIELDS(V_TYPE("volume", "VolumeInfo")) },
        { VARLINK_METHOD, "Bind", .handler = method_bind,
          .doc = "Binds an existing LUKS2 volume (unlock_secret: an existing passphrase or key file, base64,\n"
                 "tried on keyslot unlock_keyslot only, default the first non-CMEK one), or moves a bound one\n"
                 "to another key. The path is opened with the caller's own access. Needs: use keys, manage\n"
                 "volumes (and both on the key that wraps the volume now, to move it).",
          .fields = VARLINK_FIELDS(V_STRING("device"), V_STRING("key"), V_STRING("unlock_secret", V_OPT),
                                   V_INT("unlock_keyslot", V_OPT)),
          .out = VARLINK_FIELDS(V_TYPE("volume", "VolumeInfo")) },
        { VARLINK_METHOD, "Unbind", .handler = method_unbind,
          .doc = "Re-wraps under the provider-managed default key, or removes the CMEK keyslot and token.",
          .fields = VARLINK_FIELDS(V_STRING("device"), V_BOOL("remove_slot", V_OPT)),
          .out = VARLINK_FIELDS(V_TYPE("volume", "VolumeInfo", V_OPT)) },
        { VARLINK_METHOD, "Unlock", .handler = method_unlock,
          .doc = "Unwraps the DEK and opens the CMEK keyslot; test: check only, no device-mapper.\n"
                 "Needs: use volumes, use keys.",
          .fields = VARLINK_FIELDS(V_STRING("device"), V_STRING("name", V_OPT), V_BOOL("test", V_OPT)),
          .out = VARLINK_FIELDS(V_TYPE("volume", "VolumeInfo")) },
        { VARLINK_METHOD, "Lock", .handler = method_lock,
          .fields = VARLINK_FIELDS(V_STRING("device")),
          .out = VARLINK_FIELDS(V_TYPE("volume", "VolumeInfo")) },
        { VARLINK_METHOD, "Restore", .handler = method_restore,
          .doc = "After a key is enabled again: resumes the mappings enforcement suspended and re-opens the\n"
                 "ones it closed, under their names (one device, or every volume of a key). Refused with the\n"
                 "key's state unless it is ENABLED. Needs: use volumes, use keys.",
          .fields = VARLINK_FIELDS(V_STRING("device", V_OPT), V_STRING("key", V_OPT)),
          .out = VARLINK_FIELDS(V_TYPE("volume", "VolumeInfo", V_OPT), V_INT("restored", V_OPT), V_INT("failed", V_OPT),
                                V_OBJECT("results", V_OPT, V_ARRAY)) },
        { VARLINK_METHOD, "Unwrap", .handler = method_unwrap,
          .doc = "For the cryptsetup token plugin: the DEK of a cmek token read from the header of the\n"
                 "volume with this LUKS UUID. Needs: use keys, use volumes, use key-delegate (the DEK leaves).",
          .fields = VARLINK_FIELDS(V_STRING("uuid"), V_OBJECT("token")),
          .out = VARLINK_FIELDS(V_STRING("secret"), V_INT("keyslot"), V_INT("key_version")) },
        { VARLINK_METHOD, "Rewrap", .handler = method_rewrap,
          .doc = "Re-wraps the volumes of a key (or the given devices, or all) under the newest key version;\n"
                 "new_secret also replaces the keyslot secret. With more: one reply per volume.",
          .fields = VARLINK_FIELDS(V_STRING("key", V_OPT), V_STRING("devices", V_OPT, V_ARRAY), V_BOOL("new_secret", V_OPT)),
          .out = VARLINK_FIELDS(V_INT("progress", V_OPT), V_INT("total", V_OPT), V_TYPE("volume", "RewrapResult", V_OPT),
                                V_INT("rewrapped", V_OPT), V_INT("current", V_OPT), V_INT("unreachable", V_OPT),
                                V_INT("failed", V_OPT), V_TYPE("results", "RewrapResult", V_OPT, V_ARRAY)) },
        { VARLINK_METHOD, "List", .handler = method_list, .unaudited = true,
          .out = VARLINK_FIELDS(V_TYPE("volumes", "VolumeInfo", V_ARRAY)) },
        { VARLINK_METHOD, "Show", .handler = method_show,
          .fields = VARLINK_FIELDS(V_STRING("device")),
          .out = VARLINK_FIELDS(V_TYPE("volume", "VolumeInfo")) },
        { VARLINK_METHOD, "Scan", .handler = method_scan,
          .doc = "Registers bound volumes found at these paths (rebuilds a lost registry).",
          .fields = VARLINK_FIELDS(V_STRING("paths", V_ARRAY)),
          .out = VARLINK_FIELDS(V_INT("added"), V_OBJECT("results", V_ARRAY)) },
        {}
};

const Interface interface_volume = {
        .name = "io.cmek.Volume",
        .doc = "LUKS2 volumes whose per-volume secret (DEK) is wrapped by a master key; see cmek-token(7).\n"
               "Errors are those of interface io.cmek: NotLUKS2, VolumeNotFound, UnwrapFailed, DeviceError,\n"
               "AlreadyExists, Busy, KeyNotFound, KeyDisabled, KeyPendingDeletion, KeyDeleted,\n"
               "InvalidStateTransition, VaultUnavailable, PermissionDenied, AuditUnavailable (any method but\n"
               "List: the audit log cannot record the operation, so it was refused; Unwrap: no secret is sent).",
        .symbols = volume_symbols,
};
