/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* Enforcement: when a key stops being ENABLED, the mappings of its volumes are locked (suspended
 * with the volume key wiped, or closed), found from the registry and from the kernel; a deleted
 * key shreds its volumes; restore undoes a lock; the watch re-reads the keys of bound volumes;
 * re-wrap after a rotation; the volume events and their availability; [enforcement] of the
 * configuration applied (volumes_apply_config). */
#include <stdio.h>
#include <libcryptsetup.h>

#include "cmek-fault.h"
#include "cmek-log.h"
#include "cmek-secmem.h"
#include "cmek-util.h"
#include "config.h"
#include "dm.h"
#include "enforce.h"
#include "key.h"
#include "luks2.h"
#include "volume-registry.h"

#define WATCH_INTERVAL_DEFAULT_USEC (5ULL * USEC_PER_SEC)

static const char *const on_disable_table[_ON_DISABLE_MAX] = {
        [ON_DISABLE_SUSPEND] = "suspend",
        [ON_DISABLE_CLOSE] = "close",
};

const char *on_disable_to_string(OnDisable o) {
        return o >= 0 && o < _ON_DISABLE_MAX ? on_disable_table[o] : NULL;
}

OnDisable on_disable_from_string(const char *s) {
        return (OnDisable) cmek_string_table_lookup(on_disable_table, _ON_DISABLE_MAX, s);
}

static void audit_volume(Manager *m, const char *event, const char *result, const Volume *v, const char *detail) {
        AuditRecord rec = {
                .event = event,
                .operation = "cmekd",
                .result = result,
                .key_id = v->key_id,
                .volume = v->uuid,
                .detail = detail,
        };
        (void) manager_audit(m, NULL, &rec);
}

/* ---- enforcement ---- */

/* A bound volume opened outside cmekd (at boot through crypttab and the token plugin, by udev,
 * by hand) is enforced like one cmekd opened: its mapping is adopted. 1 when adopted. */
int volume_adopt_mapping(Manager *m, Volume *v) {
        const char *name;

        if (v->state != VOLUME_BOUND || v->lock != VOLUME_LOCK_NONE)
                return 0;
        if (v->mapping && crypt_status(NULL, v->mapping) >= CRYPT_ACTIVE)
                return 0;
        name = mapping_find_by_uuid(&m->dm, v->uuid);
        /* the scan may be up to a second old: the mapping must still be there */
        if (!name || streq_ptr(name, v->mapping) || crypt_status(NULL, name) < CRYPT_ACTIVE)
                return 0;
        if (set_str(&v->mapping, name) < 0)
                return -ENOMEM;
        log_info("Volume %s (%s) is open as '%s', opened outside cmekd: enforcing it too.", v->path, v->uuid, name);
        return 1;
}

static bool strv_contains_(char **l, const char *s) {
        for (char **p = l; p && *p; p++)
                if (streq(*p, s))
                        return true;
        return false;
}

typedef struct KernelLocked {
        char *name, *uuid, *backing;
        int error;
} KernelLocked;

/* After the registry's mappings of the key are locked: every other active mapping whose on-disk
 * header names the key is suspended and its key wiped. Registry entries do not matter here, only
 * which mappings the registry pass already locked (skip_mapping() below). Returns the number of
 * mappings handled, each in *ret (locked, or error < 0 when it failed). */
static size_t volumes_lock_key_kernel(Manager *m, const char *key_id, KernelLocked **ret) {
        VolumeRegistry *reg = m->volumes;
        KernelLocked *out = NULL;
        size_t n = 0;

        *ret = NULL;
        dm_scan_refresh(&m->dm);
        for (size_t i = 0; i < m->dm.scan.n; i++) {
                _cleanup_free_ char *backing = NULL, *uuid = NULL;
                const char *name = m->dm.scan.maps[i].name;
                char **keys = NULL;
                bool covered = false, suspended = false;
                KernelLocked *a;
                int r;

                for (size_t j = 0; j < reg->n && !covered; j++) {
                        Volume *v = reg->volumes[j];
                        covered = streq_ptr(v->key_id, key_id) && v->lock != VOLUME_LOCK_NONE &&
                                  (streq_ptr(v->mapping, name) || streq_ptr(v->restore_name, name));
                }
                if (covered)
                        continue;
                if (mapping_open_count(name, &suspended) == -ENODEV)
                        continue;       /* gone since the scan */
                if (suspended && kscan_is_locked(&m->dm, name))
                        continue;
                r = mapping_header_keys(&m->dm, i, &backing, &uuid, &keys);
                if (r < 0) {
                        if (r != -EMEDIUMTYPE)
                                log_warning_errno(r, "Cannot read the LUKS2 header under mapping '%s' (%s), "
                                                  "cannot tell whether key %s opens it: %m", name, m->dm.scan.maps[i].dev, key_id);
                        continue;
                }
                if (!strv_contains_(keys, key_id))
                        continue;
                r = mapping_suspend_wipe(name);
                if (r >= 0)
                        kscan_set_locked(&m->dm, name);
                a = reallocarray(out, n + 1, sizeof(*out));
                if (!a)
                        continue;       /* locked all the same; only the report is lost */
                out = a;
                out[n++] = (KernelLocked) {
                        .name = strdup(name),
                        .uuid = TAKE_PTR(uuid),
                        .backing = TAKE_PTR(backing),
                        .error = r < 0 ? r : 0,
                };
        }
        *ret = out;
        return n;
}

/* Logs and audits what volumes_lock_key_kernel() did, after every lock is in place. */
static void volumes_report_kernel(Manager *m, const char *key_id, const char *key_state, KernelLocked *k, size_t n) {
        for (size_t i = 0; i < n; i++) {
                _cleanup_free_ char *detail = NULL;

                if (k[i].error < 0)
                        log_error_errno(k[i].error, "Failed to lock mapping '%s' on /dev/%s, whose LUKS2 header names key %s: %m",
                                        strempty(k[i].name), strempty(k[i].backing), key_id);
                else
                        log_warning("Key %s is %s: mapping '%s' on /dev/%s is not registered under this key but its LUKS2 "
                                    "header names it: suspended, volume key wiped from the kernel. Check 'cmekctl volume list'; "
                                    "'cryptsetup resume %s' resumes it once the key is enabled again.",
                                    key_id, key_state, strempty(k[i].name), strempty(k[i].backing), strempty(k[i].name));
                (void) asprintf(&detail, "key %s is %s: mapping '%s' on /dev/%s found from the kernel (its header names "
                                "the key, the registry does not): %s", key_id, key_state, strempty(k[i].name),
                                strempty(k[i].backing), k[i].error < 0 ? strerror(-k[i].error) :
                                "mapping suspended, volume key wiped from the kernel, I/O held");
                AuditRecord rec = {
                        .event = "volume.locked",
                        .operation = "cmekd",
                        .result = k[i].error < 0 ? "failed" : "ok",
                        .key_id = key_id,
                        .volume = k[i].uuid,
                        .detail = detail,
                };
                (void) manager_audit(m, NULL, &rec);
                free(k[i].name);
                free(k[i].uuid);
                free(k[i].backing);
        }
        free(k);
}

/* The keys named by the headers under every active mapping, for the watch: a key disabled in the
 * token is seen even when no registry entry names it. */
static void kernel_keys_collect(Manager *m, char ***ids, size_t *n) {
        dm_scan_refresh(&m->dm);
        for (size_t i = 0; i < m->dm.scan.n; i++) {
                _cleanup_free_ char *backing = NULL;
                char **keys = NULL;

                if (mapping_header_keys(&m->dm, i, &backing, NULL, &keys) < 0)
                        continue;
                for (char **k = keys; *k; k++) {
                        bool seen = false;
                        char **a;
                        for (size_t j = 0; j < *n && !seen; j++)
                                seen = streq((*ids)[j], *k);
                        if (seen || !(a = reallocarray(*ids, *n + 1, sizeof(char *))))
                                continue;
                        *ids = a;
                        if (((*ids)[*n] = strdup(*k)))
                                (*n)++;
                }
        }
}

void volume_clear_lock(Volume *v) {
        v->lock = VOLUME_LOCK_NONE;
        v->suspended = false;
        v->locked_usec = 0;
        free(v->restore_name);
        v->restore_name = NULL;
        free(v->lock_reason);
        v->lock_reason = NULL;
}

static void volume_set_locked(Volume *v, VolumeLock lock) {
        v->lock = lock;
        v->suspended = lock == VOLUME_LOCK_SUSPENDED;
        if (lock == VOLUME_LOCK_CLOSED) {
                free(v->mapping);
                v->mapping = NULL;
        }
}

/* Locks one mapping: suspended without flushing (I/O held, nothing lost) and its key wiped from
 * the kernel; no token access, no registry write, no event (the caller does those once for all
 * volumes of the key). Returns 1 when it locked something, 0 when there was nothing. */
static int volume_lock_mapping(Volume *v) {
        int r;

        if (!v->mapping || v->lock != VOLUME_LOCK_NONE)
                return 0;
        if (set_str(&v->restore_name, v->mapping) < 0)
                return -ENOMEM;
        if (mapping_open_count(v->mapping, NULL) == -ENODEV) {
                /* closed behind our back: nothing in the kernel to lock, re-open on restore */
                volume_set_locked(v, VOLUME_LOCK_CLOSED);
                return 1;
        }
        r = mapping_suspend_wipe(v->mapping);
        if (r < 0)
                return r;
        volume_set_locked(v, VOLUME_LOCK_SUSPENDED);
        return 1;
}

/* on-disable=close, after every mapping of the key is locked (removing one costs tens of ms in
 * the kernel, so the keys of all of them leave first): an idle mapping is removed, a busy one
 * marked for deferred removal (the kernel removes it when its last user closes it). */
static int volume_close_locked(Volume *v) {
        _cleanup_crypt_ struct crypt_device *cd = NULL;
        int open_count, r;

        if (v->lock != VOLUME_LOCK_SUSPENDED || !v->mapping)
                return 0;
        open_count = mapping_open_count(v->mapping, NULL);
        if (open_count == -ENODEV) {
                volume_set_locked(v, VOLUME_LOCK_CLOSED);
                return 0;
        }
        r = crypt_init_by_name(&cd, v->mapping);
        if (r < 0)
                return r;
        if (open_count == 0) {
                r = crypt_deactivate_by_name(cd, v->mapping, 0);
                if (r >= 0) {
                        volume_set_locked(v, VOLUME_LOCK_CLOSED);
                        return 0;
                }
                if (r != -EBUSY)
                        return r;
        }
        r = crypt_deactivate_by_name(cd, v->mapping, CRYPT_DEACTIVATE_DEFERRED);
        if (r < 0)
                return r;
        volume_set_locked(v, VOLUME_LOCK_CLOSING);
        return 0;
}

static OnDisable key_on_disable(Manager *m, const char *key_id) {
        KeyInfo k = {};
        OnDisable o = m->volumes->on_disable;

        if (key_lookup(m, key_id, &k) >= 0 && k.on_disable && on_disable_from_string(k.on_disable) >= 0)
                o = on_disable_from_string(k.on_disable);
        key_info_done(&k);
        return o;
}

static void volume_set_lock_reason(Volume *v, const char *key_state) {
        _cleanup_free_ char *users = NULL;
        char *s = NULL;
        const char *what;

        switch (v->lock) {
        case VOLUME_LOCK_SUSPENDED:
                what = "mapping suspended, volume key wiped from the kernel, I/O held";
                break;
        case VOLUME_LOCK_CLOSING:
                users = mapping_users(v->restore_name);
                what = "mapping closing (deferred removal), volume key wiped from the kernel";
                break;
        case VOLUME_LOCK_CLOSED:
                what = "mapping closed";
                break;
        default:
                return;
        }
        if (asprintf(&s, "key %s is %s: %s%s%s", strempty(v->key_id), strempty(key_state), what,
                     users ? "; in use by: " : "", strempty(users)) < 0)
                return;
        free(v->lock_reason);
        v->lock_reason = s;
}

/* Locks every live mapping of the key's volumes in one pass, then records and reports. */
static void volumes_lock_key(Manager *m, const char *key_id, KeyState state) {
        VolumeRegistry *reg = m->volumes;
        _cleanup_free_ bool *locked = calloc(reg->n + 1, sizeof(bool));
        const char *key_state = key_state_to_string(state);
        unsigned n_locked = 0, n_failed = 0;
        uint64_t t0, t1, t2;
        OnDisable how = ON_DISABLE_SUSPEND;
        KernelLocked *klocked = NULL;
        size_t n_kernel;
        bool any = false;

        /* the mappings opened by the plugin at boot or by hand count as much as ours: one fresh
         * scan of device-mapper for this pass */
        dm_scan_invalidate(&m->dm);
        for (size_t i = 0; i < reg->n; i++) {
                if (!streq_ptr(reg->volumes[i]->key_id, key_id))
                        continue;
                (void) volume_adopt_mapping(m, reg->volumes[i]);
                if (reg->volumes[i]->mapping && reg->volumes[i]->lock == VOLUME_LOCK_NONE)
                        any = true;
        }
        if (!locked)
                return;
        if (any)
                how = key_on_disable(m, key_id);
        t0 = cmek_monotonic_usec();
        for (size_t i = 0; any && i < reg->n; i++) {
                Volume *v = reg->volumes[i];
                int r;

                if (!streq_ptr(v->key_id, key_id))
                        continue;
                r = volume_lock_mapping(v);
                if (r < 0) {
                        n_failed++;
                        log_error_errno(r, "Failed to lock the mapping '%s' of %s: %m", strempty(v->mapping), v->path);
                        audit_volume(m, "volume.locked", "failed", v, strerror(-r));
                } else if (r > 0) {
                        locked[i] = true;
                        n_locked++;
                }
        }
        /* then the live mappings the registry does not tie to this key, found from the kernel:
         * after the registered ones, since each costs a header read */
        n_kernel = volumes_lock_key_kernel(m, key_id, &klocked);
        if (!any && n_kernel == 0)
                return;
        for (size_t i = 0; i < n_kernel; i++)
                if (klocked[i].error < 0)
                        n_failed++;
                else
                        n_locked++;
        t1 = cmek_monotonic_usec();
        if (how == ON_DISABLE_CLOSE)
                for (size_t i = 0; i < reg->n; i++) {
                        int r;
                        if (!locked[i])
                                continue;
                        r = volume_close_locked(reg->volumes[i]);
                        if (r < 0)
                                log_warning_errno(r, "Mapping '%s' is suspended with its key wiped but could not be closed: %m",
                                                  strempty(reg->volumes[i]->mapping));
                }
        t2 = cmek_monotonic_usec();
        char closed[64] = "";
        if (how == ON_DISABLE_CLOSE)
                (void) snprintf(closed, sizeof(closed), ", closed in %llu ms more", (unsigned long long) ((t2 - t1) / 1000));
        char kernel[96] = "";
        if (n_kernel > 0)
                (void) snprintf(kernel, sizeof(kernel), ", %zu found from the kernel only (suspended)", n_kernel);
        log_notice("Key %s is %s: %u mapping(s) locked (%s) in %llu ms%s%s%s.", key_id, key_state, n_locked,
                   on_disable_to_string(how), (unsigned long long) ((t1 - t0) / 1000), closed, kernel,
                   n_failed ? ", some failed" : "");
        (void) volume_registry_save(m);
        volumes_report_kernel(m, key_id, key_state, klocked, n_kernel);
        for (size_t i = 0; i < reg->n; i++) {
                Volume *v = reg->volumes[i];
                if (!locked[i])
                        continue;
                v->locked_usec = cmek_now_usec();
                volume_set_lock_reason(v, key_state);
                audit_volume(m, "volume.locked", "ok", v, v->lock_reason);
                json_object *x = json_object_new_object();
                json_object_object_add(x, "on_disable", json_object_new_string(on_disable_to_string(how)));
                json_object_object_add(x, "lock_usec", json_object_new_int64((int64_t) (t1 - t0)));
                volume_event(m, "volume.locked", v, key_state, x);
        }
        (void) volume_registry_save(m);
}

/* At deletion nothing can ever be restored: the mapping goes, busy or not (a busy one is
 * replaced by an error target, so held I/O fails and its users can close it). */
static void volume_close_for_deletion(Volume *v) {
        _cleanup_crypt_ struct crypt_device *cd = NULL;
        const char *name = v->mapping;
        int open_count, r;

        if (!name)
                return;
        open_count = mapping_open_count(name, NULL);
        if (open_count != -ENODEV && crypt_init_by_name(&cd, name) >= 0) {
                r = crypt_deactivate_by_name(cd, name, open_count > 0 ? CRYPT_DEACTIVATE_FORCE : 0);
                if (r < 0 && mapping_open_count(name, NULL) >= 0) {
                        r = crypt_deactivate_by_name(cd, name, CRYPT_DEACTIVATE_DEFERRED);
                        log_warning("%s: key deleted; mapping '%s' is still in use, removed when it is closed%s.", v->path,
                                    name, r < 0 ? " (deferred removal failed)" : "");
                        (void) set_str(&v->restore_name, name);
                        volume_set_locked(v, VOLUME_LOCK_CLOSING);
                        return;
                }
        }
        (void) set_str(&v->restore_name, name);
        volume_set_locked(v, VOLUME_LOCK_CLOSED);
}

/* The key is gone: close the mapping, destroy the CMEK keyslot (its DEK can never be unwrapped
 * again) and the token. Without another keyslot the volume is crypto-shredded. */
static int volume_shred(Manager *m, Volume *v) {
        _cleanup_crypt_ struct crypt_device *cd = NULL;
        CmekToken t = CMEK_TOKEN_NULL;
        int tok, others, r;

        volume_close_for_deletion(v);
        r = volume_open_header(v, &cd);
        if (r == -ENODEV) {
                v->state = VOLUME_SHRED_PENDING;
                audit_volume(m, "volume.shred_pending", "unreachable", v,
                             "key deleted while the volume is unreachable; shredded when it is seen again");
                return volume_registry_save(m);
        }
        if (r < 0)
                return r;
        (void) volume_header_repair(cd);
        r = find_bound_token(cd, &tok, &t);
        if (r >= 0) {
                r = crypt_keyslot_destroy(cd, t.keyslot);
                cmek_fault("shred-after-keyslot-destroy");
                if (r >= 0)
                        r = crypt_token_json_set(cd, tok, NULL);
                cmek_token_done(&t);
                if (r < 0)
                        return log_error_errno(r, "Failed to destroy the CMEK keyslot of %s: %m", v->path);
        }
        others = count_active_keyslots(cd, -1);
        v->keyslot = v->token = -1;
        v->pending_rewrap = false;
        free(v->lock_reason);
        v->lock_reason = NULL;
        if (others > 0) {
                v->state = VOLUME_KEY_DELETED;
                audit_volume(m, "volume.shredded", "not-shredded", v, "not shredded: has other keyslots");
                log_notice("%s: key %s deleted, CMEK keyslot destroyed; not shredded: has %d other keyslot(s).",
                           v->path, v->key_id, others);
        } else {
                v->state = VOLUME_UNRECOVERABLE;
                audit_volume(m, "volume.shredded", "ok", v, "crypto-shredded: no keyslot left");
                log_notice("%s: key %s deleted, volume crypto-shredded (UNRECOVERABLE).", v->path, v->key_id);
        }
        r = volume_registry_save(m);
        {
                json_object *x = json_object_new_object();
                json_object_object_add(x, "other_keyslots", json_object_new_int(others));
                json_object_object_add(x, "shredded", json_object_new_boolean(others == 0));
                volume_event(m, "volume.unrecoverable", v, "DELETED", x);
        }
        return r;
}

void volumes_key_state_changed(Manager *m, const char *key_id, int old_state, int new_state) {
        VolumeRegistry *reg = m->volumes;

        if (!reg)
                return;
        /* locking first: nothing else (audit, events, hooks) may delay it */
        if (new_state == KEY_STATE_DISABLED || new_state == KEY_STATE_PENDING_DELETION)
                volumes_lock_key(m, key_id, new_state);
        if (new_state == KEY_STATE_DELETED) {
                /* a live mapping the registry does not tie to the key loses its volume key too */
                KernelLocked *k = NULL;
                size_t n = volumes_lock_key_kernel(m, key_id, &k);
                volumes_report_kernel(m, key_id, key_state_to_string(new_state), k, n);
        }
        if (new_state == KEY_STATE_DELETED)
                for (size_t i = 0; i < reg->n; i++) {
                        Volume *v = reg->volumes[i];
                        if (streq_ptr(v->key_id, key_id) && (v->state == VOLUME_BOUND || v->state == VOLUME_SHRED_PENDING))
                                (void) volume_shred(m, v);
                }
        (void) volume_registry_save(m);
}

/* Every key with a bound volume, once, re-read from its token. Cheap: one metadata lookup and
 * one usage-flag read per key, nothing per volume. */
void volumes_watch_now(Manager *m) {
        VolumeRegistry *reg = m->volumes;
        _cleanup_free_ char **ids = NULL;
        size_t n = 0;
        bool changed = false;

        if (!reg)
                return;
        ids = calloc(reg->n + 1, sizeof(char *));
        if (!ids)
                return;
        for (size_t i = 0; i < reg->n; i++) {
                Volume *v = reg->volumes[i];
                bool seen = false;

                /* a deferred removal that the kernel carried out */
                if (v->lock == VOLUME_LOCK_CLOSING && v->restore_name && mapping_open_count(v->restore_name, NULL) == -ENODEV) {
                        volume_set_locked(v, VOLUME_LOCK_CLOSED);
                        free(v->lock_reason);
                        v->lock_reason = NULL;
                        (void) asprintf(&v->lock_reason, "key %s is not enabled: mapping closed", strempty(v->key_id));
                        changed = true;
                }
                if (v->state != VOLUME_BOUND || !v->key_id || v->provider_managed)
                        continue;
                for (size_t j = 0; j < n && !seen; j++)
                        seen = streq(ids[j], v->key_id);
                if (!seen && !(ids[n++] = strdup(v->key_id)))
                        n--;
        }
        if (changed)
                (void) volume_registry_save(m);
        /* and the keys the headers of live mappings name, whatever the registry says */
        kernel_keys_collect(m, &ids, &n);
        for (size_t j = 0; j < n; j++) {
                KeyState st;
                /* a change seen here reaches volumes_key_state_changed() through the key code;
                 * locking again is for what it cannot see (a key found disabled at start) */
                if (key_watch(m, ids[j], &st) >= 0 && (st == KEY_STATE_DISABLED || st == KEY_STATE_PENDING_DELETION))
                        volumes_lock_key(m, ids[j], st);
                free(ids[j]);
        }
}

static int on_watch_timer(sd_event_source *s, uint64_t usec, void *userdata) {
        Manager *m = userdata;

        volumes_watch_now(m);
        (void) sd_event_source_set_time(s, usec + m->volumes->watch_usec);
        (void) sd_event_source_set_enabled(s, SD_EVENT_ON);
        return 0;
}

int volume_restore(Manager *m, Volume *v) {
        _cleanup_crypt_ struct crypt_device *cd = NULL;
        _cleanup_secure_ void *dek = NULL;
        CmekToken t = CMEK_TOKEN_NULL;
        KeyInfo key = {};
        const char *name;
        bool suspended = false;
        int tok, r;

        if (v->lock == VOLUME_LOCK_NONE)
                return -ENXIO;
        if (v->state != VOLUME_BOUND)
                return -ENOKEY;
        name = v->restore_name ?: v->mapping;
        if (!name)
                return -ENXIO;
        /* "no automatic restore", and no restore at all unless the key is ENABLED */
        r = lookup_key(m, v->key_id, &key);
        if (r < 0)
                return r;
        key_info_done(&key);

        if (mapping_open_count(name, &suspended) >= 0) {
                r = crypt_init_by_name(&cd, name);
                if (r < 0)
                        return r;
                if (!streq_ptr(crypt_get_uuid(cd), v->uuid))
                        return -ENODEV; /* another volume holds that name now */
                if (v->lock == VOLUME_LOCK_CLOSING) {
                        r = crypt_deactivate_by_name(cd, name, CRYPT_DEACTIVATE_DEFERRED_CANCEL);
                        if (r < 0)
                                log_debug_errno(r, "Could not cancel the deferred removal of '%s': %m", name);
                }
                if (suspended) {
                        /* the DEK again, through the token: the same refusals as an unlock */
                        r = find_bound_token(cd, &tok, &t);
                        if (r >= 0)
                                r = volume_unwrap_token(m, v->uuid, &t, &dek);
                        if (r >= 0)
                                r = crypt_resume_by_passphrase(cd, name, t.keyslot, dek, CMEK_DEK_SIZE);
                        cmek_token_done(&t);
                        if (r < 0)
                                return r;
                }
                r = set_str(&v->mapping, name);
                if (r < 0)
                        return r;
        } else {
                /* closed: open it again under the name it had */
                _cleanup_free_ char *n = strdup(name);
                if (!n)
                        return -ENOMEM;
                r = volume_activate(m, v, n);
                if (r < 0)
                        return r;
        }
        volume_clear_lock(v);
        return volume_registry_save(m);
}

/* AVAILABLE, UNAVAILABLE (with why) or UNRECOVERABLE. */
const char *volume_availability(const Volume *v, const char *key_state, char **ret_reason) {
        char *why = NULL;
        const char *a = "UNAVAILABLE";

        switch (v->state) {
        case VOLUME_UNRECOVERABLE:
                a = "UNRECOVERABLE";
                why = strdup("key deleted: CMEK keyslot destroyed and no other keyslot (crypto-shredded)");
                break;
        case VOLUME_KEY_DELETED:
                why = strdup("key deleted: CMEK keyslot destroyed; only the other keyslots open it");
                break;
        case VOLUME_SHRED_PENDING:
                a = "UNRECOVERABLE";
                why = strdup("key deleted while the volume was unreachable: its CMEK keyslot is destroyed when it is seen");
                break;
        default:
                if (v->lock != VOLUME_LOCK_NONE) {
                        if (streq_ptr(key_state, "ENABLED"))
                                (void) asprintf(&why, "%s; the key is ENABLED again: run 'cmekctl volume restore'",
                                                v->lock_reason ?: "locked");
                        else
                                why = strdup(v->lock_reason ?: "locked");
                } else if (!v->provider_managed && !streq_ptr(key_state, "ENABLED"))
                        (void) asprintf(&why, "key %s is %s", strempty(v->key_id), key_state ?: "UNKNOWN");
                else
                        a = "AVAILABLE";
        }
        *ret_reason = why;
        return a;
}

void volume_event(Manager *m, const char *type, Volume *v, const char *key_state, json_object *extra) {
        json_object *d = json_object_new_object();
        _cleanup_free_ char *why = NULL;
        KeyInfo k = {};
        const char *a;

        if (!key_state) {
                if (v->key_id && key_lookup(m, v->key_id, &k) >= 0)
                        key_state = key_state_to_string(k.state);
                else
                        key_state = v->state == VOLUME_BOUND ? "UNKNOWN" : "DELETED";
        }
        json_object_object_add(d, "uuid", json_object_new_string(v->uuid));
        json_object_object_add(d, "path", v->path ? json_object_new_string(v->path) : NULL);
        json_object_object_add(d, "key_id", v->key_id ? json_object_new_string(v->key_id) : NULL);
        json_object_object_add(d, "key_version", json_object_new_int64(v->key_version));
        json_object_object_add(d, "key_state", json_object_new_string(key_state));
        json_object_object_add(d, "state", json_object_new_string(volume_state_to_string(v->state)));
        json_object_object_add(d, "mapping", v->mapping ? json_object_new_string(v->mapping) : NULL);
        json_object_object_add(d, "lock", json_object_new_string(volume_lock_to_string(v->lock)));
        a = volume_availability(v, key_state, &why);
        json_object_object_add(d, "availability", json_object_new_string(a));
        if (why)
                json_object_object_add(d, "unavailable_reason", json_object_new_string(why));
        if (extra) {
                json_object_object_foreach(extra, name, val)
                        json_object_object_add(d, name, json_object_get(val));
                json_object_put(extra);
        }
        key_info_done(&k);
        manager_event(m, type, d);
}

/* The fields rewrap.started and rewrap.completed share. */
static json_object *rewrap_event_new(const char *key_id, unsigned new_version, unsigned total) {
        json_object *d = json_object_new_object();

        json_object_object_add(d, "key_id", json_object_new_string(key_id));
        json_object_object_add(d, "key_state", json_object_new_string("ENABLED"));
        json_object_object_add(d, "version", json_object_new_int64(new_version));
        json_object_object_add(d, "trigger", json_object_new_string("rotation"));
        json_object_object_add(d, "total", json_object_new_int64(total));
        return d;
}

void volumes_key_rotated(Manager *m, const char *key_id, unsigned new_version) {
        VolumeRegistry *reg = m->volumes;
        unsigned n[_REWRAP_RESULT_MAX] = {};
        char detail[160];
        AuditRecord rec = { .event = "volume.rewrap_started", .operation = "cmekd", .result = "ok", .key_id = key_id };

        unsigned total = 0;
        json_object *d;

        if (!reg)
                return;
        (void) manager_audit(m, NULL, &rec);
        for (size_t i = 0; i < reg->n; i++)
                total += streq_ptr(reg->volumes[i]->key_id, key_id) && reg->volumes[i]->state == VOLUME_BOUND;
        d = rewrap_event_new(key_id, new_version, total);
        manager_event(m, "rewrap.started", d);
        volume_registry_defer_save(m);
        for (size_t i = 0; i < reg->n; i++) {
                Volume *v = reg->volumes[i];
                RewrapResult res;
                int r;

                if (!streq_ptr(v->key_id, key_id) || v->state != VOLUME_BOUND)
                        continue;
                r = volume_rewrap(m, v, NULL, false, &res);
                if (r < 0 && res != REWRAP_UNREACHABLE)
                        log_warning_errno(r, "Failed to re-wrap %s under %s version %u, ignoring: %m",
                                          v->path, key_id, new_version);
                n[res]++;
        }
        (void) volume_registry_flush(m);
        (void) snprintf(detail, sizeof(detail), "version %u: %u rewrapped, %u current, %u unreachable, %u failed",
                        new_version, n[REWRAP_DONE], n[REWRAP_CURRENT], n[REWRAP_UNREACHABLE], n[REWRAP_FAILED]);
        rec.event = "volume.rewrap_completed";
        rec.result = n[REWRAP_FAILED] ? "partial" : "ok";
        rec.detail = detail;
        (void) manager_audit(m, NULL, &rec);
        log_info("Key %s rotated: %s.", key_id, detail);
        d = rewrap_event_new(key_id, new_version, total);
        for (RewrapResult k = 0; k < _REWRAP_RESULT_MAX; k++)
                json_object_object_add(d, rewrap_result_to_string(k), json_object_new_int64(n[k]));
        manager_event(m, "rewrap.completed", d);
}

/* [enforcement] of m->config (NULL: the defaults), at start and after a reload: a new interval
 * starts with the next tick, a new on-disable with the next key turned off. */
void volumes_apply_config(Manager *m) {
        VolumeRegistry *reg = m->volumes;
        uint64_t usec = m->config ? m->config->watch_usec : WATCH_INTERVAL_DEFAULT_USEC;

        if (!reg)
                return;
        reg->on_disable = m->config && m->config->on_disable == CONFIG_ON_DISABLE_CLOSE ? ON_DISABLE_CLOSE : ON_DISABLE_SUSPEND;
        if (usec == reg->watch_usec)
                return;
        reg->watch_usec = usec;
        if (reg->watch) {
                (void) sd_event_source_set_time_relative(reg->watch, usec);
                (void) sd_event_source_set_time_accuracy(reg->watch, usec / 20);
        }
}

/* After the registry is loaded and its intents resolved: the shreds a start owes, the locks a key
 * disabled meanwhile owes, then the watch timer. */
int enforce_start(Manager *m) {
        VolumeRegistry *reg = m->volumes;
        int r;

        /* keys deleted before the volumes were loaded (a deletion that came due while cmekd was
         * down is carried out by keys_init()), or a shred a crash interrupted: shred them now */
        for (size_t i = 0; i < reg->n; i++) {
                Volume *v = reg->volumes[i];
                KeyInfo k = {};

                if ((v->state != VOLUME_BOUND && v->state != VOLUME_SHRED_PENDING) || !v->key_id ||
                    key_lookup(m, v->key_id, &k) < 0)
                        continue;
                if (k.state == KEY_STATE_DELETED)
                        (void) volume_shred(m, v);
                key_info_done(&k);
        }
        log_info("Enforcement: on-disable=%s, watching the keys of bound volumes every %.1f s.",
                 on_disable_to_string(reg->on_disable), reg->watch_usec / 1e6);
        /* a key disabled while we were not running: its mappings are locked now */
        volumes_watch_now(m);
        if (m->event) {
                r = sd_event_add_time_relative(m->event, &reg->watch, CLOCK_MONOTONIC, reg->watch_usec,
                                               reg->watch_usec / 20, on_watch_timer, m);
                if (r < 0)
                        return log_error_errno(r, "Failed to arm the enforcement watch: %m");
        }
        return 0;
}

void enforce_stop(Manager *m) {
        m->volumes->watch = sd_event_source_disable_unref(m->volumes->watch);
}
