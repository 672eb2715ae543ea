/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* Master keys: metadata objects in the token, lifecycle, versions, rotation, wrap/unwrap. */
#include <inttypes.h>
#include <stdio.h>
#include <time.h>
#include <openssl/evp.h>
#include <openssl/rand.h>

#include "cmek-base64.h"
#include "cmek-fault.h"
#include "cmek-log.h"
#include "cmek-secmem.h"
#include "cmek-varlink.h"
#include "daemon.h"
#include "vault.h"

#define KEY_ID_PREFIX "cmek.key."
#define KEY_ID_RANDOM_CHARS 26
#define KEY_DEFAULT_NAME "provider-default"
#define KEY_DEFAULT_COMPARTMENT "provider"
#define SEAL_KEY_LABEL "cmek:seal-key"
#define USEC_PER_SEC 1000000ULL
#define USEC_PER_DAY (86400ULL * USEC_PER_SEC)
#define SCHEDULE_INTERVAL_USEC (60ULL * USEC_PER_SEC)
#define SCHEDULE_INTERVAL_TEST_USEC (1ULL * USEC_PER_SEC)

/* One key as its metadata object says; the JSON is the token's content, kept as it is. */
struct Key {
        Vault *vault;
        CK_OBJECT_HANDLE handle;
        json_object *meta;
        bool meta_shared;       /* meta is the key cache's object: copy before changing it */
};

typedef struct KnownState {
        char *id;
        KeyState state;
} KnownState;

/* Metadata read from the token, kept briefly: without it every unwrap searches the token and
 * parses the key's JSON twice (C_FindObjects, C_GetAttributeValue, json parse: two thirds of its
 * instructions under callgrind). The token stays the truth: an entry serves for at most
 * KEY_CACHE_USEC, every metadata write or deletion by this broker drops the cache, key_watch()
 * always reads the token, and the version's usage flags are read from the token on every use. */
#define KEY_CACHE_USEC (USEC_PER_SEC / 2)

typedef struct KeyCacheEntry {
        char *id;
        Vault *vault;
        CK_OBJECT_HANDLE handle;
        json_object *meta;
        uint64_t loaded_usec;           /* CLOCK_MONOTONIC */
} KeyCacheEntry;

struct KeyStore {
        VaultSet *vaults;
        sd_event_source *timer;
        bool data_update_refused;       /* the token does not let CKA_VALUE change */
        KnownState *known;              /* last state seen per key: notices other brokers' changes */
        size_t n_known;
        KeyCacheEntry *cache;
        size_t n_cache;
};

static const char *const key_state_table[_KEY_STATE_MAX] = {
        [KEY_STATE_ENABLED] = "ENABLED",
        [KEY_STATE_DISABLED] = "DISABLED",
        [KEY_STATE_PENDING_DELETION] = "PENDING_DELETION",
        [KEY_STATE_DELETED] = "DELETED",
};

const char *key_state_to_string(KeyState s) {
        return s >= 0 && s < _KEY_STATE_MAX ? key_state_table[s] : NULL;
}

KeyState key_state_from_string(const char *s) {
        return (KeyState) cmek_string_table_lookup(key_state_table, _KEY_STATE_MAX, s);
}

void key_info_done(KeyInfo *k) {
        if (!k)
                return;
        free(k->id);
        free(k->name);
        free(k->compartment);
        free(k->vault);
        free(k->on_disable);
        *k = (KeyInfo) {};
}

static const char *const key_op_table[_KEY_OP_MAX] = {
        [KEY_OP_ENABLE] = "enable",
        [KEY_OP_DISABLE] = "disable",
        [KEY_OP_SCHEDULE_DELETION] = "schedule-deletion",
        [KEY_OP_CANCEL_DELETION] = "cancel-deletion",
        [KEY_OP_ROTATE] = "rotate",
};

const char *key_op_to_string(KeyOp op) {
        return op < _KEY_OP_MAX ? key_op_table[op] : NULL;
}

/* The state machine of the seeds: which operation is allowed from which state. */
static bool key_op_allowed(KeyState s, KeyOp op) {
        switch (s) {
        case KEY_STATE_ENABLED:
                return op == KEY_OP_DISABLE || op == KEY_OP_SCHEDULE_DELETION || op == KEY_OP_ROTATE;
        case KEY_STATE_DISABLED:
                return op == KEY_OP_ENABLE || op == KEY_OP_SCHEDULE_DELETION;
        case KEY_STATE_PENDING_DELETION:
                return op == KEY_OP_CANCEL_DELETION;
        default:
                return false;
        }
}

json_object *key_allowed_ops(KeyState s) {
        json_object *a = json_object_new_array();
        for (KeyOp op = 0; op < _KEY_OP_MAX; op++)
                if (key_op_allowed(s, op))
                        json_object_array_add(a, json_object_new_string(key_op_to_string(op)));
        return a;
}

/* --- metadata accessors --- */

static const char *meta_str(const Key *k, const char *f) {
        return cmek_json_get_string(k->meta, f);
}

static uint64_t meta_u64(const Key *k, const char *f) {
        int64_t v = 0;
        return cmek_json_get_int64(k->meta, f, &v) && v > 0 ? (uint64_t) v : 0;
}

static int key_meta_unshare(Key *k) {
        json_object *copy = NULL;

        if (!k->meta_shared)
                return 0;
        if (json_object_deep_copy(k->meta, &copy, NULL) < 0)
                return -ENOMEM;
        json_object_put(k->meta);
        k->meta = copy;
        k->meta_shared = false;
        return 0;
}

static void meta_set_u64(Key *k, const char *f, uint64_t v) {
        json_object_object_add(k->meta, f, json_object_new_int64((int64_t) v));
}

static void meta_set_str(Key *k, const char *f, const char *v) {
        json_object_object_add(k->meta, f, v ? json_object_new_string(v) : NULL);
}

const char *key_get_id(const Key *k) { return meta_str(k, "id"); }
const char *key_get_name(const Key *k) { return meta_str(k, "name"); }
const char *key_get_compartment(const Key *k) { return meta_str(k, "compartment"); }
KeyState key_get_state(const Key *k) { return key_state_from_string(meta_str(k, "state")); }
bool key_is_provider_managed(const Key *k) { return cmek_json_get_bool(k->meta, "provider_managed", false); }
static bool key_is_software(const Key *k) { return streq_ptr(meta_str(k, "protection_mode"), "software"); }

static json_object *meta_versions(const Key *k) {
        json_object *a;
        if (!json_object_object_get_ex(k->meta, "versions", &a) || !json_object_is_type(a, json_type_array))
                return NULL;
        return a;
}

static json_object *meta_version(const Key *k, unsigned version) {
        json_object *a = meta_versions(k);
        for (size_t i = 0; a && i < json_object_array_length(a); i++) {
                json_object *e = json_object_array_get_idx(a, i);
                int64_t n;
                if (cmek_json_get_int64(e, "version", &n) && n == (int64_t) version)
                        return e;
        }
        return NULL;
}

Key *key_free(Key *k) {
        if (!k)
                return NULL;
        json_object_put(k->meta);
        free(k);
        return NULL;
}

void key_array_free(Key **a, size_t n) {
        for (size_t i = 0; a && i < n; i++)
                key_free(a[i]);
        free(a);
}

VaultSet *keys_vaults(Manager *m) {
        return m->keys ? m->keys->vaults : NULL;
}

/* --- reading and writing metadata objects --- */

static int key_from_data(Vault *v, const VaultData *d, Key **ret) {
        json_object *o = json_tokener_parse(d->value);
        Key *k;

        if (!o || !json_object_is_type(o, json_type_object) || !cmek_json_get_string(o, "id") ||
            !streq(cmek_json_get_string(o, "id"), d->label)) {
                json_object_put(o);
                return -EBADMSG;
        }
        k = calloc(1, sizeof(Key));
        if (!k) {
                json_object_put(o);
                return -ENOMEM;
        }
        k->vault = v;
        k->handle = d->handle;
        k->meta = o;
        *ret = k;
        return 0;
}

/* Reads the metadata objects of one label (or all) from one vault. When an update was
 * interrupted two objects may exist for one key: the highest generation wins, the other
 * is destroyed. */
static int vault_load_keys(Vault *v, const char *label, Key ***ret, size_t *ret_n) {
        VaultData *d = NULL;
        Key **a = NULL;
        size_t n = 0, n_keys = 0;
        int r;

        r = vault_data_find(v, label, &d, &n);
        if (r < 0)
                return r;
        a = calloc(n + 1, sizeof(Key *));
        if (!a) {
                vault_data_array_free(d, n);
                return -ENOMEM;
        }
        for (size_t i = 0; i < n; i++) {
                Key *k;
                if (strncmp(d[i].label, KEY_ID_PREFIX, strlen(KEY_ID_PREFIX)) != 0)
                        continue;
                if (key_from_data(v, &d[i], &k) < 0) {
                        log_warning("Vault '%s': key metadata object '%s' does not parse, ignoring.",
                                    vault_name(v), d[i].label);
                        continue;
                }
                size_t j;
                for (j = 0; j < n_keys; j++)
                        if (streq(key_get_id(a[j]), key_get_id(k)))
                                break;
                if (j < n_keys) {
                        Key *older = meta_u64(a[j], "generation") >= meta_u64(k, "generation") ? k : a[j];
                        log_debug("Key '%s': removing a stale metadata object (generation %" PRIu64 ").",
                                  key_get_id(k), meta_u64(older, "generation"));
                        (void) vault_object_destroy(v, older->handle);
                        if (older == a[j])
                                a[j] = k;
                        key_free(older);
                        continue;
                }
                a[n_keys++] = k;
        }
        vault_data_array_free(d, n);
        *ret = a;
        *ret_n = n_keys;
        return 0;
}

static void key_cache_entry_done(KeyCacheEntry *e) {
        free(e->id);
        json_object_put(e->meta);
}

/* id NULL: all entries. */
static void key_cache_drop(Manager *m, const char *id) {
        KeyStore *ks = m->keys;
        size_t j = 0;

        for (size_t i = 0; i < ks->n_cache; i++) {
                if (!id || streq(ks->cache[i].id, id))
                        key_cache_entry_done(&ks->cache[i]);
                else
                        ks->cache[j++] = ks->cache[i];
        }
        ks->n_cache = j;
}

/* A fresh entry (its metadata shared with the cache), or -ENOENT. */
static int key_cache_get(Manager *m, const char *id, Key **ret) {
        KeyStore *ks = m->keys;
        uint64_t now = cmek_monotonic_usec();

        for (size_t i = 0; i < ks->n_cache; i++) {
                KeyCacheEntry *e = &ks->cache[i];
                Key *k;
                if (!streq(e->id, id))
                        continue;
                if (now - e->loaded_usec >= KEY_CACHE_USEC || vault_unavailable_reason(e->vault)) {
                        key_cache_drop(m, id);
                        return -ENOENT;
                }
                k = calloc(1, sizeof(Key));
                if (!k)
                        return -ENOMEM;
                k->vault = e->vault;
                k->handle = e->handle;
                /* shared, not copied: the use paths only read it; key_meta_unshare() before a write */
                k->meta = json_object_get(e->meta);
                k->meta_shared = true;
                *ret = k;
                return 0;
        }
        return -ENOENT;
}

static void key_cache_put(Manager *m, const Key *k) {
        KeyStore *ks = m->keys;
        KeyCacheEntry e = { .vault = k->vault, .handle = k->handle, .loaded_usec = cmek_monotonic_usec() };

        key_cache_drop(m, key_get_id(k));
        e.id = strdup(key_get_id(k));
        if (!e.id || json_object_deep_copy(k->meta, &e.meta, NULL) < 0) {
                free(e.id);
                return;
        }
        KeyCacheEntry *a = reallocarray(ks->cache, ks->n_cache + 1, sizeof(KeyCacheEntry));
        if (!a) {
                key_cache_entry_done(&e);
                return;
        }
        ks->cache = a;
        ks->cache[ks->n_cache++] = e;
}

static int key_store_meta(Manager *m, Key *k) {
        CK_OBJECT_HANDLE h;
        const char *text;
        int r;

        key_cache_drop(m, NULL);

        meta_set_u64(k, "generation", meta_u64(k, "generation") + 1);
        text = json_object_to_json_string_ext(k->meta, JSON_C_TO_STRING_PLAIN);
        if (!m->keys->data_update_refused) {
                r = vault_data_update(k->vault, k->handle, text);
                if (r != -EOPNOTSUPP)
                        return r;
                m->keys->data_update_refused = true;
                log_debug("Vault '%s' does not let CKA_VALUE change: replacing metadata objects instead.",
                          vault_name(k->vault));
        }
        /* new object first, then the old one: there is never a moment without one */
        r = vault_data_create(k->vault, key_get_id(k), text, &h);
        if (r < 0)
                return r;
        r = vault_object_destroy(k->vault, k->handle);
        if (r < 0)
                log_debug_errno(r, "Key '%s': could not destroy the previous metadata object, the next load will: %m",
                                key_get_id(k));
        k->handle = h;
        return 0;
}

/* Remembers the state of each key; a change we did not make (another broker sharing the
 * token) is reported like our own. */
static void key_notice_state(Manager *m, const Key *k) {
        KeyStore *ks = m->keys;
        KeyState s = key_get_state(k);
        const char *id = key_get_id(k);

        for (size_t i = 0; i < ks->n_known; i++)
                if (streq(ks->known[i].id, id)) {
                        KeyState old = ks->known[i].state;
                        if (old != s) {
                                ks->known[i].state = s;
                                log_info("Key '%s' changed from %s to %s in its token.", id,
                                         key_state_to_string(old), key_state_to_string(s));
                                manager_key_state_changed(m, id, old, s);
                        }
                        return;
                }
        KnownState *a = reallocarray(ks->known, ks->n_known + 1, sizeof(KnownState));
        if (!a)
                return;
        ks->known = a;
        a[ks->n_known].id = strdup(id);
        if (!a[ks->n_known].id)
                return;
        a[ks->n_known++].state = s;
}

static void key_set_known_state(Manager *m, const Key *k) {
        KeyStore *ks = m->keys;
        for (size_t i = 0; i < ks->n_known; i++)
                if (streq(ks->known[i].id, key_get_id(k))) {
                        ks->known[i].state = key_get_state(k);
                        return;
                }
        key_notice_state(m, k);
}

int key_load_all(Manager *m, Key ***ret, size_t *ret_n) {
        VaultSet *vs = keys_vaults(m);
        Key **all = NULL;
        size_t n_all = 0;

        for (size_t i = 0; i < vault_set_size(vs); i++) {
                Vault *v = vault_set_get(vs, i);
                Key **a;
                size_t n;

                if (vault_unavailable_reason(v))
                        continue;
                if (vault_load_keys(v, NULL, &a, &n) < 0) {
                        log_debug("Vault '%s': cannot list keys, skipping.", vault_name(v));
                        continue;
                }
                Key **na = reallocarray(all, n_all + n + 1, sizeof(Key *));
                if (!na) {
                        key_array_free(a, n);
                        key_array_free(all, n_all);
                        return -ENOMEM;
                }
                all = na;
                memcpy(all + n_all, a, n * sizeof(Key *));
                n_all += n;
                free(a);
        }
        for (size_t i = 0; i < n_all; i++)
                key_notice_state(m, all[i]);
        *ret = all;
        *ret_n = n_all;
        return 0;
}

static int key_delete_now(Manager *m, Key *k);

/* cached: the caller only uses the key (encrypt, decrypt, lookup), it changes nothing in the token. */
static int key_load_raw(Manager *m, const char *id_or_name, bool cached, Key **ret) {
        Key *found = NULL;
        bool unavailable = false;
        int r;

        if (strncmp(id_or_name, KEY_ID_PREFIX, strlen(KEY_ID_PREFIX)) == 0) {
                VaultSet *vs = keys_vaults(m);
                if (!cached)
                        key_cache_drop(m, id_or_name);
                else if (key_cache_get(m, id_or_name, &found) == -ENOMEM)
                        return -ENOMEM;
                for (size_t i = 0; i < vault_set_size(vs) && !found; i++) {
                        Vault *v = vault_set_get(vs, i);
                        Key **a;
                        size_t n;
                        if (vault_unavailable_reason(v) || vault_load_keys(v, id_or_name, &a, &n) < 0) {
                                unavailable = true;
                                continue;
                        }
                        if (n > 0) {
                                found = TAKE_PTR(a[0]);
                                key_cache_put(m, found);
                        }
                        key_array_free(a, n);
                }
        } else {
                /* "NAME" or "COMPARTMENT/NAME" */
                const char *slash = strchr(id_or_name, '/');
                _cleanup_free_ char *comp = slash ? strndup(id_or_name, (size_t) (slash - id_or_name)) : NULL;
                const char *name = slash ? slash + 1 : id_or_name;
                Key **a;
                size_t n;

                r = key_load_all(m, &a, &n);
                if (r < 0)
                        return r;
                for (size_t i = 0; i < n; i++) {
                        if (!streq_ptr(key_get_name(a[i]), name) || (comp && !streq_ptr(key_get_compartment(a[i]), comp)))
                                continue;
                        if (found) {
                                key_free(found);
                                key_array_free(a, n);
                                return -ENOTUNIQ;
                        }
                        found = TAKE_PTR(a[i]);
                }
                key_array_free(a, n);
        }
        if (!found)
                /* not "no such key" when it may be in a vault we cannot reach (token gone) */
                return unavailable ? -EHOSTDOWN : -ENOENT;
        key_notice_state(m, found);
        *ret = found;
        return 0;
}

static int key_load_full(Manager *m, const char *id_or_name, bool cached, Key **ret) {
        Key *k;
        int r;

        r = key_load_raw(m, id_or_name, cached, &k);
        if (r < 0)
                return r;
        /* a deletion that is due happens at the first touch, whatever the timer did */
        if (key_get_state(k) == KEY_STATE_PENDING_DELETION && meta_u64(k, "deletion_time") <= manager_now_usec(m)) {
                r = key_delete_now(m, k);
                if (r < 0)
                        log_warning_errno(r, "Failed to carry out the deletion of key '%s', will retry: %m", key_get_id(k));
        }
        *ret = k;
        return 0;
}

Vault *keys_unavailable_vault(Manager *m, const char **ret_reason) {
        VaultSet *vs = keys_vaults(m);
        for (size_t i = 0; i < vault_set_size(vs); i++) {
                const char *reason = vault_unavailable_reason(vault_set_get(vs, i));
                if (reason) {
                        *ret_reason = reason;
                        return vault_set_get(vs, i);
                }
        }
        *ret_reason = "a token operation failed";
        return NULL;
}

int key_load(Manager *m, const char *id_or_name, Key **ret) {
        return key_load_full(m, id_or_name, /* cached= */ false, ret);
}

size_t key_count_in_vault(Manager *m, const char *vault) {
        Vault *v = vault_set_find(keys_vaults(m), vault);
        Key **a;
        size_t n;

        if (!v || vault_unavailable_reason(v) || vault_load_keys(v, NULL, &a, &n) < 0)
                return 0;
        key_array_free(a, n);
        return n;
}

/* --- JSON out --- */

static json_object *time_json(uint64_t usec) {
        char buf[64];
        time_t t = (time_t) (usec / USEC_PER_SEC);
        struct tm tm;

        if (usec == 0 || !gmtime_r(&t, &tm))
                return NULL;
        strftime(buf, sizeof(buf), "%Y-%m-%dT%H:%M:%SZ", &tm);
        return json_object_new_string(buf);
}

json_object *key_to_json(Manager *m, Key *k) {
        json_object *o = json_object_new_object(), *vs = json_object_new_array(), *a = meta_versions(k);
        bool usage_off = false;

        json_object_object_add(o, "id", json_object_new_string(key_get_id(k)));
        json_object_object_add(o, "name", json_object_new_string(strempty(key_get_name(k))));
        json_object_object_add(o, "compartment", json_object_new_string(strempty(key_get_compartment(k))));
        json_object_object_add(o, "vault", json_object_new_string(vault_name(k->vault)));
        json_object_object_add(o, "state", json_object_new_string(strempty(meta_str(k, "state"))));
        json_object_object_add(o, "protection_mode", json_object_new_string(key_is_software(k) ? "software" : "hsm"));
        json_object_object_add(o, "length", json_object_new_int64((int64_t) meta_u64(k, "length") * 8));
        json_object_object_add(o, "current_version", json_object_new_int64((int64_t) meta_u64(k, "current_version")));
        for (size_t i = 0; a && i < json_object_array_length(a); i++) {
                json_object *e = json_object_array_get_idx(a, i), *x = json_object_new_object();
                int64_t n = 0, c = 0;
                (void) cmek_json_get_int64(e, "version", &n);
                (void) cmek_json_get_int64(e, "created", &c);
                json_object_object_add(x, "version", json_object_new_int64(n));
                json_object_object_add(x, "created", time_json((uint64_t) c));
                json_object_object_add(x, "label", json_object_new_string(strempty(cmek_json_get_string(e, "label"))));
                json_object_object_add(x, "enabled", json_object_new_boolean(!cmek_json_get_bool(e, "disabled", false)));
                json_object_array_add(vs, x);
        }
        json_object_object_add(o, "versions", vs);
        json_object_object_add(o, "created", time_json(meta_u64(k, "created")));
        json_object_object_add(o, "last_rotation", time_json(meta_u64(k, "last_rotation")));
        json_object_object_add(o, "rotation_interval_days",
                               json_object_new_int64((int64_t) meta_u64(k, "rotation_interval_days")));
        if (key_get_state(k) == KEY_STATE_PENDING_DELETION)
                json_object_object_add(o, "deletion_time", time_json(meta_u64(k, "deletion_time")));
        json_object_object_add(o, "provider_managed", json_object_new_boolean(key_is_provider_managed(k)));
        if (meta_str(k, "on_disable"))
                json_object_object_add(o, "on_disable", json_object_new_string(meta_str(k, "on_disable")));
        /* someone turned the key off in the token directly (pkcs11-tool, another application) */
        if (key_get_state(k) == KEY_STATE_ENABLED && !key_is_software(k)) {
                json_object *cur = meta_version(k, (unsigned) meta_u64(k, "current_version"));
                CK_OBJECT_HANDLE h;
                VaultKeyFlags f;
                if (cur && vault_secret_find(k->vault, cmek_json_get_string(cur, "label"), &h) >= 0 &&
                    vault_secret_get_flags(k->vault, h, &f) >= 0 && (!f.encrypt || !f.decrypt))
                        usage_off = true;
                json_object_object_add(o, "token_usage_disabled", json_object_new_boolean(usage_off));
        }
        return o;
}

/* --- creation --- */

static bool valid_name(const char *s, size_t max) {
        size_t n = s ? strlen(s) : 0;
        if (n == 0 || n > max)
                return false;
        for (size_t i = 0; i < n; i++)
                if (!((s[i] >= 'a' && s[i] <= 'z') || (s[i] >= 'A' && s[i] <= 'Z') || (s[i] >= '0' && s[i] <= '9') ||
                      s[i] == '-' || s[i] == '_' || (s[i] == '.' && max == 64)))
                        return false;
        return true;
}

static int key_new_id(const char *compartment, char **ret) {
        static const char b32[] = "abcdefghijklmnopqrstuvwxyz234567";
        uint8_t rnd[KEY_ID_RANDOM_CHARS];
        char s[KEY_ID_RANDOM_CHARS + 1];

        if (RAND_bytes(rnd, sizeof(rnd)) != 1)
                return -EIO;
        for (size_t i = 0; i < KEY_ID_RANDOM_CHARS; i++)
                s[i] = b32[rnd[i] & 31];
        s[KEY_ID_RANDOM_CHARS] = 0;
        return asprintf(ret, KEY_ID_PREFIX "%s.%s", compartment, s) < 0 ? -ENOMEM : 0;
}

/* software mode: the material is sealed with AES-GCM by a non-extractable token key. */
static int seal_key_handle(Vault *v, bool create, CK_OBJECT_HANDLE *ret) {
        int r = vault_secret_find(v, SEAL_KEY_LABEL, ret);
        if (r == -ENOENT && create)
                r = vault_secret_generate(v, SEAL_KEY_LABEL, SEAL_KEY_LABEL, 32, ret);
        return r;
}

static int key_new_version(Key *k, unsigned version, unsigned bytes, const KeyCreateParams *import, json_object **ret) {
        _cleanup_free_ char *label = NULL, *id = NULL;
        json_object *e;
        CK_OBJECT_HANDLE h;
        unsigned got = bytes;
        int r;

        if (asprintf(&label, "cmek:%s:v%u", key_get_id(k), version) < 0 ||
            asprintf(&id, "%s:%u", key_get_id(k), version) < 0)
                return -ENOMEM;
        e = json_object_new_object();
        if (key_is_software(k)) {
                _cleanup_secure_ uint8_t *material = cmek_secure_alloc(bytes);
                uint8_t iv[12], tag[16], ct[32];
                CK_OBJECT_HANDLE seal;
                if (!material)
                        r = -ENOMEM;
                else if (RAND_bytes(material, (int) bytes) != 1)
                        r = -EIO;
                else
                        r = seal_key_handle(k->vault, true, &seal);
                if (r >= 0)
                        r = vault_gcm_encrypt(k->vault, seal, label, strlen(label), material, bytes, iv, ct, tag);
                if (r < 0) {
                        json_object_put(e);
                        return r;
                }
                uint8_t blob[12 + 32 + 16];
                memcpy(blob, iv, 12);
                memcpy(blob + 12, ct, bytes);
                memcpy(blob + 12 + bytes, tag, 16);
                _cleanup_free_ char *s = cmek_base64_encode(blob, 12 + bytes + 16);
                json_object_object_add(e, "sealed", s ? json_object_new_string(s) : NULL);
        } else {
                if (import)
                        r = vault_secret_import(k->vault, import->wrap_algorithm, import->wrapped, import->wrapped_size,
                                                label, id, &h, &got);
                else
                        r = vault_secret_generate(k->vault, label, id, bytes, &h);
                if (r < 0) {
                        json_object_put(e);
                        return r;
                }
        }
        json_object_object_add(e, "version", json_object_new_int64(version));
        json_object_object_add(e, "created", json_object_new_int64((int64_t) cmek_now_usec()));
        json_object_object_add(e, "label", json_object_new_string(label));
        if (version == 1)
                meta_set_u64(k, "length", got);
        *ret = e;
        return 0;
}

/* A key create, import or rotation makes its PKCS#11 secret object before the metadata object
 * that names it: a crash in between would leave the object orphaned. So its label is written to
 * <state-dir>/key-intent.json first (one at a time: the daemon is single-threaded), and removed
 * once the metadata is stored; at start key_intent_resolve() destroys the object(s) of a label
 * left there unless the key's metadata names it (the metadata is the truth, as for volumes). */
#define KEY_INTENT_FILE "key-intent.json"

static int key_intent_save(Manager *m, Key *k, unsigned version) {
        _cleanup_free_ char *path = NULL, *label = NULL;
        json_object *o;
        int r;

        if (key_is_software(k))
                return 0;       /* no object: the sealed material lives in the metadata */
        if (asprintf(&path, "%s/" KEY_INTENT_FILE, m->state_dir) < 0 ||
            asprintf(&label, "cmek:%s:v%u", key_get_id(k), version) < 0)
                return -ENOMEM;
        o = json_object_new_object();
        if (!o)
                return -ENOMEM;
        json_object_object_add(o, "key", json_object_new_string(key_get_id(k)));
        json_object_object_add(o, "vault", json_object_new_string(vault_name(k->vault)));
        json_object_object_add(o, "label", json_object_new_string(label));
        {
                const char *text = json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN);
                r = cmek_write_file_atomic(path, text, strlen(text), 0600);
        }
        json_object_put(o);
        if (r < 0)
                return log_error_errno(r, "Failed to write %s: %m", path);
        cmek_fault("key-after-intent");
        return 0;
}

static void key_intent_clear(Manager *m) {
        _cleanup_free_ char *path = NULL;
        if (asprintf(&path, "%s/" KEY_INTENT_FILE, m->state_dir) >= 0)
                (void) unlink(path);
}

static void key_intent_resolve(Manager *m) {
        _cleanup_free_ char *path = NULL, *text = NULL;
        const char *id, *label, *vname;
        json_object *o = NULL;
        Key *k = NULL;
        Vault *v;
        bool named = false;
        unsigned n = 0;
        int r;

        if (asprintf(&path, "%s/" KEY_INTENT_FILE, m->state_dir) < 0)
                return;
        if (cmek_read_file(path, 4096, &text, NULL) < 0)
                return;
        o = json_tokener_parse(text);
        id = cmek_json_get_string(o, "key");
        label = cmek_json_get_string(o, "label");
        vname = cmek_json_get_string(o, "vault");
        v = vname ? vault_set_find(keys_vaults(m), vname) : NULL;
        if (!id || !label || !v) {
                log_warning("%s: unreadable, removing it.", path);
                goto done;
        }
        if (vault_unavailable_reason(v)) {
                log_warning("Vault '%s' is unavailable: the interrupted key operation of %s is resolved at the next start.",
                            vname, label);
                json_object_put(o);
                return;
        }
        r = key_load_raw(m, id, false, &k);
        if (r < 0 && r != -ENOENT) {
                log_warning_errno(r, "Failed to load key '%s' to resolve an interrupted operation, next start: %m", id);
                json_object_put(o);
                return;
        }
        for (size_t i = 0; k && meta_versions(k) && i < json_object_array_length(meta_versions(k)); i++)
                named = named || streq_ptr(cmek_json_get_string(json_object_array_get_idx(meta_versions(k), i), "label"), label);
        key_free(k);
        if (!named) {
                CK_OBJECT_HANDLE h;
                while (vault_secret_find(v, label, &h) >= 0 && vault_object_destroy(v, h) >= 0)
                        n++;
        }
        if (n > 0)
                log_info("Removed %u orphaned key object(s) '%s' of an interrupted key create/import/rotation.", n, label);
done:
        json_object_put(o);
        (void) unlink(path);
}

int key_create(Manager *m, Call *c, const KeyCreateParams *p, Key **ret, const char **ret_reason) {
        _cleanup_free_ char *id = NULL;
        _cleanup_(key_freep) Key *k = NULL;
        Key **all = NULL;
        size_t n_all = 0;
        json_object *version, *versions;
        Vault *v;
        uint64_t now = manager_now_usec(m);
        int r;

        if (!valid_name(p->name, 64) || !valid_name(p->compartment, 48))
                return -EINVAL;
        if (p->bits != 128 && p->bits != 192 && p->bits != 256)
                return -EINVAL;
        if (p->software && p->wrapped)
                return -EINVAL;
        if (p->on_disable && !streq(p->on_disable, "suspend") && !streq(p->on_disable, "close"))
                return -EINVAL;
        v = vault_set_find(keys_vaults(m), p->vault ?: VAULT_DEFAULT_NAME);
        if (!v)
                return -ENODEV;
        if ((*ret_reason = vault_unavailable_reason(v)))
                return -ENXIO;

        r = key_load_all(m, &all, &n_all);
        if (r < 0)
                return r;
        for (size_t i = 0; i < n_all; i++)
                if (streq_ptr(key_get_name(all[i]), p->name) && streq_ptr(key_get_compartment(all[i]), p->compartment)) {
                        key_array_free(all, n_all);
                        return -EEXIST;
                }
        key_array_free(all, n_all);

        r = key_new_id(p->compartment, &id);
        if (r < 0)
                return r;
        k = calloc(1, sizeof(Key));
        if (!k)
                return -ENOMEM;
        k->vault = v;
        k->meta = json_object_new_object();
        meta_set_str(k, "id", id);
        meta_set_str(k, "name", p->name);
        meta_set_str(k, "compartment", p->compartment);
        meta_set_str(k, "state", "ENABLED");
        meta_set_str(k, "protection_mode", p->software ? "software" : "hsm");
        meta_set_u64(k, "created", now);
        meta_set_u64(k, "last_rotation", now);
        meta_set_u64(k, "rotation_interval_days", p->rotation_interval_days);
        json_object_object_add(k->meta, "provider_managed", json_object_new_boolean(p->provider_managed));
        json_object_object_add(k->meta, "imported", json_object_new_boolean(!!p->wrapped));
        if (p->on_disable)
                meta_set_str(k, "on_disable", p->on_disable);

        r = key_intent_save(m, k, 1);
        if (r < 0)
                return r;
        r = key_new_version(k, 1, p->bits / 8, p->wrapped ? p : NULL, &version);
        if (r < 0) {
                key_intent_clear(m);
                return r;
        }
        versions = json_object_new_array();
        json_object_array_add(versions, version);
        json_object_object_add(k->meta, "versions", versions);
        meta_set_u64(k, "current_version", 1);
        meta_set_u64(k, "generation", 1);

        r = vault_data_create(v, id, json_object_to_json_string_ext(k->meta, JSON_C_TO_STRING_PLAIN), &k->handle);
        if (r < 0) {
                CK_OBJECT_HANDLE h;
                if (!key_is_software(k) && vault_secret_find(v, cmek_json_get_string(version, "label"), &h) >= 0)
                        (void) vault_object_destroy(v, h);
                key_intent_clear(m);
                return r;
        }
        key_intent_clear(m);
        key_set_known_state(m, k);
        (void) manager_audit(m, c, &(AuditRecord) {
                .event = p->wrapped ? "key.imported" : "key.created",
                .operation = c ? call_method(c) : "internal",
                .key_id = id, .new_state = "ENABLED",
                .detail = p->software ? "protection_mode=software" : "protection_mode=hsm",
        });
        log_info("Created key '%s' (%s in compartment '%s') in vault '%s'.", id, p->name, p->compartment, vault_name(v));
        *ret = TAKE_PTR(k);
        return 0;
}

/* --- lifecycle --- */

static int key_set_usage(Key *k, bool usable) {
        json_object *a = meta_versions(k);

        if (key_is_software(k))
                return 0;
        for (size_t i = 0; a && i < json_object_array_length(a); i++) {
                CK_OBJECT_HANDLE h;
                json_object *e = json_object_array_get_idx(a, i);
                const char *label = cmek_json_get_string(e, "label");
                /* a version disabled on its own stays off when the key is enabled */
                if (usable && cmek_json_get_bool(e, "disabled", false))
                        continue;
                if (!label || vault_secret_find(k->vault, label, &h) < 0)
                        continue;
                int r = vault_secret_set_usage(k->vault, h, usable);
                if (r < 0)
                        /* the metadata state still refuses every use through cmekd */
                        log_debug_errno(r, "Vault '%s' does not let CKA_ENCRYPT/CKA_DECRYPT of '%s' change: %m",
                                        vault_name(k->vault), label);
        }
        return 0;
}

static void key_audit_change_op(Manager *m, Call *c, const char *operation, Key *k, const char *event, KeyState old,
                                const char *detail) {
        (void) manager_audit(m, c, &(AuditRecord) {
                .event = event, .operation = c ? call_method(c) : operation,
                .key_id = key_get_id(k), .old_state = key_state_to_string(old),
                .new_state = key_state_to_string(key_get_state(k)), .detail = detail,
        });
}

static void key_audit_change(Manager *m, Call *c, Key *k, const char *event, KeyState old, const char *detail) {
        key_audit_change_op(m, c, "scheduler", k, event, old, detail);
}

/* After a rotation and the re-wrap of every volume, the old versions can be switched off one by
 * one (the current version cannot: rotate first). A disabled version unwraps nothing, through
 * cmekd or (where the token lets CKA_DECRYPT change) any other PKCS#11 user. */
int key_set_version_enabled(Manager *m, Call *c, Key *k, unsigned version, bool enabled) {
        json_object *e = meta_version(k, version);
        const char *label = e ? cmek_json_get_string(e, "label") : NULL;
        char detail[64];
        CK_OBJECT_HANDLE h;
        int r;

        if (!label)
                return -ENOENT;
        if (!enabled && version == (unsigned) meta_u64(k, "current_version"))
                return -EBUSY;
        if (cmek_json_get_bool(e, "disabled", false) == !enabled)
                return 0;
        if (!key_is_software(k) && vault_secret_find(k->vault, label, &h) >= 0) {
                r = vault_secret_set_usage(k->vault, h, enabled && key_get_state(k) == KEY_STATE_ENABLED);
                if (r < 0)
                        log_debug_errno(r, "Vault '%s' does not let the usage of '%s' change: %m",
                                        vault_name(k->vault), label);
        }
        json_object_object_add(e, "disabled", json_object_new_boolean(!enabled));
        key_cache_drop(m, NULL);
        r = key_store_meta(m, k);
        if (r < 0)
                return r;
        snprintf(detail, sizeof(detail), "version %u", version);
        key_audit_change_op(m, c, "version", k, enabled ? "key.version-enabled" : "key.version-disabled",
                            key_get_state(k), detail);
        return 0;
}

/* CKA_ENCRYPT or CKA_DECRYPT of the current version is off in the token. */
static bool key_token_usage_off(Key *k) {
        json_object *cur;
        VaultKeyFlags f;

        if (key_is_software(k))
                return false;
        cur = meta_version(k, (unsigned) meta_u64(k, "current_version"));
        /* every watch tick: the cached handle spares a C_FindObjects over the whole token */
        if (!cur || vault_secret_get_flags_by_label(k->vault, cmek_json_get_string(cur, "label"), &f) < 0)
                return false;
        return !f.encrypt || !f.decrypt;
}

/* Someone turned the key off in the token itself (pkcs11-tool, another application): record it
 * as DISABLED, so that every path refuses it, the volumes get locked, and 'key enable' is the
 * one way back (it turns the usage flags on again). */
static int key_token_disabled(Manager *m, Key *k) {
        int r;

        if (key_get_state(k) != KEY_STATE_ENABLED)
                return 0;
        r = key_meta_unshare(k);
        if (r < 0)
                return r;
        log_notice("Key '%s': CKA_ENCRYPT/CKA_DECRYPT turned off in its token: the key is now DISABLED.", key_get_id(k));
        (void) key_set_usage(k, false);
        meta_set_str(k, "state", key_state_to_string(KEY_STATE_DISABLED));
        r = key_store_meta(m, k);
        if (r < 0)
                log_warning_errno(r, "Key '%s': could not record the DISABLED state in the token, ignoring: %m",
                                  key_get_id(k));
        key_set_known_state(m, k);
        key_audit_change_op(m, NULL, "token", k, "key.disabled", KEY_STATE_ENABLED, "usage turned off in the token");
        manager_key_state_changed(m, key_get_id(k), KEY_STATE_ENABLED, KEY_STATE_DISABLED);
        return 1;
}

int key_watch(Manager *m, const char *id_or_name, KeyState *ret_state) {
        _cleanup_(key_freep) Key *k = NULL;
        int r;

        /* notices a metadata change (another broker, or pkcs11-tool) and a deletion that is due:
         * always from the token, which also refreshes the cache */
        key_cache_drop(m, NULL);
        r = key_load(m, id_or_name, &k);
        if (r < 0)
                return r;
        if (key_get_state(k) == KEY_STATE_ENABLED && key_token_usage_off(k))
                (void) key_token_disabled(m, k);
        *ret_state = key_get_state(k);
        return 0;
}

static int key_delete_now(Manager *m, Key *k) {
        json_object *a = meta_versions(k);
        KeyState old = key_get_state(k);
        int r;

        key_cache_drop(m, NULL);

        for (size_t i = 0; a && i < json_object_array_length(a); i++) {
                json_object *e = json_object_array_get_idx(a, i);
                const char *label = cmek_json_get_string(e, "label");
                CK_OBJECT_HANDLE h;
                if (key_is_software(k)) {
                        json_object_object_del(e, "sealed");       /* crypto-shredding of the sealed copy */
                        continue;
                }
                while (label && vault_secret_find(k->vault, label, &h) >= 0) {
                        r = vault_object_destroy(k->vault, h);
                        if (r < 0)
                                return r;
                }
        }
        meta_set_str(k, "state", "DELETED");
        meta_set_u64(k, "deleted", manager_now_usec(m));
        r = key_store_meta(m, k);
        if (r < 0)
                return r;
        key_set_known_state(m, k);
        log_notice("Key '%s' deleted: its waiting period ended.", key_get_id(k));
        key_audit_change(m, NULL, k, "key.deleted", old, "waiting period ended");
        manager_key_state_changed(m, key_get_id(k), old, KEY_STATE_DELETED);
        return 0;
}

static int key_rotate_now(Manager *m, Call *c, Key *k, unsigned *ret_version) {
        unsigned next = (unsigned) meta_u64(k, "current_version") + 1;
        json_object *e;
        int r;

        r = key_intent_save(m, k, next);
        if (r < 0)
                return r;
        r = key_new_version(k, next, (unsigned) meta_u64(k, "length") ?: 32, NULL, &e);
        if (r < 0) {
                key_intent_clear(m);
                return r;
        }
        json_object_array_add(meta_versions(k), e);
        meta_set_u64(k, "current_version", next);
        meta_set_u64(k, "last_rotation", manager_now_usec(m));
        r = key_store_meta(m, k);
        if (r < 0) {
                CK_OBJECT_HANDLE h;
                if (!key_is_software(k) && vault_secret_find(k->vault, cmek_json_get_string(e, "label"), &h) >= 0)
                        (void) vault_object_destroy(k->vault, h);
                key_intent_clear(m);
                return r;
        }
        key_intent_clear(m);
        char detail[64];
        snprintf(detail, sizeof(detail), "version=%u", next);
        key_audit_change(m, c, k, "key.rotated", key_get_state(k), detail);
        manager_key_rotated(m, key_get_id(k), next);
        if (ret_version)
                *ret_version = next;
        return 0;
}

int key_apply(Manager *m, Call *c, Key *k, KeyOp op, unsigned days, unsigned *ret_version) {
        KeyState old = key_get_state(k), new;
        const char *event;
        int r;

        if (!key_op_allowed(old, op))
                return -EBADR;
        if (key_is_provider_managed(k) && op != KEY_OP_ROTATE)
                return -EPERM;
        if (op == KEY_OP_ROTATE)
                return key_rotate_now(m, c, k, ret_version);

        switch (op) {
        case KEY_OP_ENABLE:
                new = KEY_STATE_ENABLED;
                event = "key.enabled";
                break;
        case KEY_OP_DISABLE:
                new = KEY_STATE_DISABLED;
                event = "key.disabled";
                break;
        case KEY_OP_SCHEDULE_DELETION:
                new = KEY_STATE_PENDING_DELETION;
                event = "key.pending-deletion";
                meta_set_u64(k, "deletion_time", manager_now_usec(m) + days * USEC_PER_DAY);
                break;
        case KEY_OP_CANCEL_DELETION:
                new = KEY_STATE_DISABLED;
                event = "key.deletion-cancelled";
                json_object_object_del(k->meta, "deletion_time");
                break;
        default:
                return -EINVAL;
        }
        /* the volumes first when turning off: locking them must not wait for the token writes
         * (the hook is idempotent; it runs again with the events below). Their events wait for
         * the key's own, so that consumers see the key change first. */
        manager_events_hold(m);
        if (new == KEY_STATE_DISABLED || new == KEY_STATE_PENDING_DELETION)
                modules_key_state_changed(m, key_get_id(k), old, new);
        /* then the token: the key stops working before we say so */
        if (new != KEY_STATE_ENABLED)
                (void) key_set_usage(k, false);
        meta_set_str(k, "state", key_state_to_string(new));
        r = key_store_meta(m, k);
        if (r < 0) {
                manager_events_release(m); /* the volumes are locked all the same: say so */
                return r;
        }
        if (new == KEY_STATE_ENABLED)
                (void) key_set_usage(k, true);
        key_set_known_state(m, k);
        char detail[64] = "";
        if (op == KEY_OP_SCHEDULE_DELETION)
                snprintf(detail, sizeof(detail), "waiting_period_days=%u", days);
        key_audit_change(m, c, k, event, old, detail[0] ? detail : NULL);
        manager_key_state_changed(m, key_get_id(k), old, new);
        manager_events_release(m);
        return 0;
}

int key_run_scheduled(Manager *m, uint64_t now, json_object *ret_deleted, json_object *ret_rotated) {
        Key **a;
        size_t n;
        int r;

        r = key_load_all(m, &a, &n);
        if (r < 0)
                return r;
        for (size_t i = 0; i < n; i++) {
                Key *k = a[i];
                KeyState s = key_get_state(k);
                uint64_t interval = meta_u64(k, "rotation_interval_days") * USEC_PER_DAY;

                if (s == KEY_STATE_PENDING_DELETION && meta_u64(k, "deletion_time") <= now) {
                        r = key_delete_now(m, k);
                        if (r < 0)
                                log_warning_errno(r, "Failed to delete key '%s', will retry: %m", key_get_id(k));
                        else if (ret_deleted)
                                json_object_array_add(ret_deleted, json_object_new_string(key_get_id(k)));
                } else if (s == KEY_STATE_ENABLED && interval > 0 && meta_u64(k, "last_rotation") + interval <= now) {
                        unsigned v;
                        r = key_rotate_now(m, NULL, k, &v);
                        if (r < 0)
                                log_warning_errno(r, "Failed to rotate key '%s', will retry: %m", key_get_id(k));
                        else {
                                log_info("Key '%s' rotated to version %u (every %" PRIu64 " days).",
                                         key_get_id(k), v, meta_u64(k, "rotation_interval_days"));
                                if (ret_rotated)
                                        json_object_array_add(ret_rotated, json_object_new_string(key_get_id(k)));
                        }
                }
        }
        key_array_free(a, n);
        return 0;
}

static int on_schedule_timer(sd_event_source *s, uint64_t usec, void *userdata) {
        Manager *m = userdata;

        (void) key_run_scheduled(m, manager_now_usec(m), NULL, NULL);
        /* polling also notices changes made by other brokers sharing a token; in tests the
         * clock (<state-dir>/test-clock) may jump, so look every second */
        (void) sd_event_source_set_time(s, usec + (m->test_hooks ? SCHEDULE_INTERVAL_TEST_USEC : SCHEDULE_INTERVAL_USEC));
        (void) sd_event_source_set_enabled(s, SD_EVENT_ON);
        return 0;
}

/* --- use --- */

/* Checks that the version may be used; its unsealed material (software), or for encryption its
 * token object, CKA_ENCRYPT checked (ret_h: for encryption only; decryption goes by label). */
static int key_version_prepare(Key *k, unsigned version, bool for_encrypt, CK_OBJECT_HANDLE *ret_h, uint8_t **ret_material,
                               size_t *ret_size) {
        json_object *e = meta_version(k, version);
        const char *label = e ? cmek_json_get_string(e, "label") : NULL;
        int r;

        if (!label)
                return -ENOENT;
        if (cmek_json_get_bool(e, "disabled", false))
                return -EKEYREVOKED;
        if (key_is_software(k)) {
                const char *sealed = cmek_json_get_string(e, "sealed");
                uint8_t blob[128];
                CK_OBJECT_HANDLE seal;
                ssize_t n;
                void *pt = NULL;
                if (!sealed)
                        return -ENOKEY;
                n = cmek_base64_decode_to(sealed, blob, sizeof(blob));
                if (n < 12 + 16 + 16)
                        return -EBADMSG;
                r = seal_key_handle(k->vault, false, &seal);
                if (r < 0)
                        return r;
                r = vault_gcm_decrypt(k->vault, seal, label, strlen(label), blob, blob + 12, (size_t) n - 28,
                                      blob + n - 16, &pt);
                if (r < 0)
                        return r;
                *ret_material = pt;
                *ret_size = (size_t) n - 28;
                return 0;
        }
        *ret_material = NULL;
        if (!for_encrypt)
                /* the hot path (every unlock): vault_gcm_decrypt_by_label() finds the key through
                 * the vault's handle cache, and the token itself refuses C_DecryptInit with
                 * CKR_KEY_FUNCTION_NOT_PERMITTED when CKA_DECRYPT was turned off there, so the
                 * flags need not be read first */
                return 0;
        VaultKeyFlags f;
        r = vault_secret_find(k->vault, label, ret_h);
        if (r < 0)
                return r;
        r = vault_secret_get_flags(k->vault, *ret_h, &f);
        if (r < 0)
                return r;
        /* turned off in the token by someone else: refuse like a disabled key */
        if (!f.encrypt)
                return -EKEYREVOKED;
        return 0;
}

static const EVP_CIPHER *aes_gcm(size_t key_size) {
        return key_size == 16 ? EVP_aes_128_gcm() : key_size == 24 ? EVP_aes_192_gcm() : key_size == 32 ? EVP_aes_256_gcm() : NULL;
}

static int sw_gcm(bool enc, const uint8_t *key, size_t key_size, const uint8_t iv[12], const void *aad, size_t aad_size,
                  const void *in, size_t n, uint8_t *out, uint8_t tag[16]) {
        EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new();
        int l, r = -EIO;

        if (!ctx || !aes_gcm(key_size))
                goto out;
        if (EVP_CipherInit_ex(ctx, aes_gcm(key_size), NULL, key, iv, enc) != 1)
                goto out;
        if (aad_size > 0 && EVP_CipherUpdate(ctx, NULL, &l, aad, (int) aad_size) != 1)
                goto out;
        if (EVP_CipherUpdate(ctx, out, &l, in, (int) n) != 1)
                goto out;
        if (!enc && EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_TAG, 16, tag) != 1)
                goto out;
        if (EVP_CipherFinal_ex(ctx, out + l, &l) != 1) {
                r = enc ? -EIO : -EBADMSG;
                goto out;
        }
        if (enc && EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_GET_TAG, 16, tag) != 1)
                goto out;
        r = 0;
out:
        EVP_CIPHER_CTX_free(ctx);   /* wipes the expanded key */
        return r;
}

static int key_encrypt_internal(Manager *m, const char *key_id, unsigned version,
                const void *aad, size_t aad_size, const void *pt, size_t pt_size,
                unsigned *ret_version, uint8_t iv[CMEK_GCM_IV_SIZE],
                void *ret_ct, uint8_t tag[CMEK_GCM_TAG_SIZE]) {
        _cleanup_(key_freep) Key *k = NULL;
        _cleanup_secure_ uint8_t *material = NULL;
        size_t material_size = 0;
        CK_OBJECT_HANDLE h = CK_INVALID_HANDLE;
        unsigned current;
        int r;

        r = key_load_full(m, key_id, /* cached= */ true, &k);
        if (r < 0)
                return r;
        r = key_state_to_errno(key_get_state(k));
        if (r < 0)
                return r;
        current = (unsigned) meta_u64(k, "current_version");
        /* the newest version wraps; older ones only unwrap */
        if (version != 0 && version != current)
                return -ESTALE;
        r = key_version_prepare(k, current, true, &h, &material, &material_size);
        if (r == -EKEYREVOKED)
                (void) key_token_disabled(m, k);
        if (r < 0)
                return r;
        if (material) {
                if (RAND_bytes(iv, CMEK_GCM_IV_SIZE) != 1)
                        return -EIO;
                r = sw_gcm(true, material, material_size, iv, aad, aad_size, pt, pt_size, ret_ct, tag);
        } else
                r = vault_gcm_encrypt(k->vault, h, aad, aad_size, pt, pt_size, iv, ret_ct, tag);
        if (r < 0)
                return r;
        if (ret_version)
                *ret_version = current;
        return 0;
}

static int key_decrypt_internal(Manager *m, const char *key_id, unsigned version,
                const void *aad, size_t aad_size, const uint8_t iv[CMEK_GCM_IV_SIZE],
                const void *ct, size_t ct_size, const uint8_t tag[CMEK_GCM_TAG_SIZE],
                void **ret_pt) {
        _cleanup_(key_freep) Key *k = NULL;
        _cleanup_secure_ uint8_t *material = NULL;
        size_t material_size = 0;
        int r;

        r = key_load_full(m, key_id, /* cached= */ true, &k);
        if (r < 0)
                return r;
        r = key_state_to_errno(key_get_state(k));
        if (r < 0)
                return r;
        if (version == 0)
                version = (unsigned) meta_u64(k, "current_version");
        r = key_version_prepare(k, version, false, NULL, &material, &material_size);
        if (r >= 0 && !material)
                r = vault_gcm_decrypt_by_label(k->vault, cmek_json_get_string(meta_version(k, version), "label"),
                                               aad, aad_size, iv, ct, ct_size, tag, ret_pt);
        /* turned off in the token by someone else: refuse like a disabled key */
        if (r == -EKEYREVOKED && version == (unsigned) meta_u64(k, "current_version"))
                (void) key_token_disabled(m, k);
        if (r < 0 || !material)
                return r;
        /* software protection: the material is ours, in locked memory */
        uint8_t *pt = cmek_secure_alloc(ct_size ?: 1);
        if (!pt)
                return -ENOMEM;
        r = sw_gcm(false, material, material_size, iv, aad, aad_size, ct, ct_size, pt, (uint8_t *) tag);
        if (r < 0) {
                cmek_secure_free(pt);
                return r;
        }
        *ret_pt = pt;
        return 0;
}

static int key_fill_info(Key *k, KeyInfo *ret) {
        KeyInfo i = {
                .id = strdup(key_get_id(k)),
                .name = strdup(strempty(key_get_name(k))),
                .compartment = strdup(strempty(key_get_compartment(k))),
                .vault = strdup(vault_name(k->vault)),
                .state = key_get_state(k),
                .current_version = (unsigned) meta_u64(k, "current_version"),
                .n_versions = meta_versions(k) ? (unsigned) json_object_array_length(meta_versions(k)) : 0,
                .provider_managed = key_is_provider_managed(k),
                .deletion_usec = meta_u64(k, "deletion_time"),
                .on_disable = meta_str(k, "on_disable") ? strdup(meta_str(k, "on_disable")) : NULL,
        };
        if (!i.id || !i.name || !i.compartment || !i.vault) {
                key_info_done(&i);
                return -ENOMEM;
        }
        *ret = i;
        return 0;
}

int key_lookup(Manager *m, const char *id_or_name, KeyInfo *ret) {
        _cleanup_(key_freep) Key *k = NULL;
        int r = key_load_full(m, id_or_name, /* cached= */ true, &k);
        if (r < 0)
                return r;
        return key_fill_info(k, ret);
}

int key_get_default(Manager *m, KeyInfo *ret) {
        _cleanup_(key_freep) Key *k = NULL;
        const char *reason = NULL;
        int r;

        r = key_load(m, KEY_DEFAULT_COMPARTMENT "/" KEY_DEFAULT_NAME, &k);
        if (r == -ENOENT) {
                r = key_create(m, NULL, &(KeyCreateParams) {
                        .name = KEY_DEFAULT_NAME, .compartment = KEY_DEFAULT_COMPARTMENT,
                        .bits = 256, .provider_managed = true,
                }, &k, &reason);
                if (r < 0)
                        return log_error_errno(r, "Failed to create the provider-managed default key: %s%m",
                                               reason ? reason : "");
        }
        if (r < 0)
                return r;
        return key_fill_info(k, ret);
}

/* --- module hooks --- */

int keys_init(Manager *m) {
        KeyStore *ks;
        int r;

        ks = calloc(1, sizeof(KeyStore));
        if (!ks)
                return -ENOMEM;
        m->keys = ks;
        r = vault_set_load(m->state_dir, m->config, SOFTHSM_MODULE, &ks->vaults);
        if (r < 0)
                return log_error_errno(r, "Failed to load the vaults: %m");
        m->vaults = ks->vaults;
        for (size_t i = 0; i < vault_set_size(ks->vaults); i++) {
                Vault *v = vault_set_get(ks->vaults, i);
                const char *reason = vault_unavailable_reason(v);
                if (reason)
                        log_warning("Vault '%s' is unavailable, continuing without it: %s", vault_name(v), reason);
        }
        key_intent_resolve(m);
        /* deletions whose date passed while we were not running happen now */
        (void) key_run_scheduled(m, manager_now_usec(m), NULL, NULL);
        if (m->event) {
                r = sd_event_add_time_relative(m->event, &ks->timer, CLOCK_MONOTONIC,
                                               m->test_hooks ? SCHEDULE_INTERVAL_TEST_USEC : SCHEDULE_INTERVAL_USEC,
                                               USEC_PER_SEC / 10, on_schedule_timer, m);
                if (r < 0)
                        return log_error_errno(r, "Failed to arm the key scheduler: %m");
        }
        return 0;
}

void keys_done(Manager *m) {
        KeyStore *ks = m->keys;
        if (!ks)
                return;
        sd_event_source_disable_unref(ks->timer);
        vault_set_free(ks->vaults);
        for (size_t i = 0; i < ks->n_known; i++)
                free(ks->known[i].id);
        free(ks->known);
        key_cache_drop(m, NULL);
        free(ks->cache);
        free(ks);
        m->keys = NULL;
        m->vaults = NULL;
}

/* The public entry points count every use for the metrics (io.cmek.Metrics). */
int key_encrypt(Manager *m, const char *key_id, unsigned version,
                const void *aad, size_t aad_size, const void *pt, size_t pt_size,
                unsigned *ret_version, uint8_t iv[CMEK_GCM_IV_SIZE],
                void *ret_ct, uint8_t tag[CMEK_GCM_TAG_SIZE]) {
        int r = key_encrypt_internal(m, key_id, version, aad, aad_size, pt, pt_size, ret_version, iv, ret_ct, tag);
        m->counters.wrap++;
        if (r < 0)
                m->counters.wrap_errors++;
        return r;
}

int key_decrypt(Manager *m, const char *key_id, unsigned version,
                const void *aad, size_t aad_size, const uint8_t iv[CMEK_GCM_IV_SIZE],
                const void *ct, size_t ct_size, const uint8_t tag[CMEK_GCM_TAG_SIZE],
                void **ret_pt) {
        int r = key_decrypt_internal(m, key_id, version, aad, aad_size, iv, ct, ct_size, tag, ret_pt);
        m->counters.unwrap++;
        if (r < 0)
                m->counters.unwrap_errors++;
        return r;
}
