/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* Volume lifecycle: create, bind, activate/deactivate, re-wrap, remove slot, adopt, finishing
 * interrupted creates/binds; the DEKs and their wrapping in "cmek" tokens; the module's start and
 * stop; a volume's JSON for the API. (Registry: volume-registry.c, LUKS2 header access and repair:
 * luks2.c, device-mapper: dm.c, enforcement: enforce.c.)
 *
 * Crash safety. Every LUKS2 metadata change below is one header commit, and libcryptsetup
 * commits a header atomically: it writes both header copies with a new sequence id and a
 * checksum over the JSON area, and on load takes the valid copy with the higher sequence id
 * (repairing the other one). So a token write or keyslot change either happened or not.
 * Procedures that need several commits are ordered so that after every one of them some
 * cmek token opens some keyslot, and leave markers in the header (never only in the registry)
 * so that volume_header_repair() can finish or undo them:
 *
 *   rewrap (same secret):   write the new token over the old one (same token id)      1 commit
 *   rewrap --new-secret:    a. old token gets "pending_keyslot": P
 *                           b. keyslot P added with a new DEK (opened by the old DEK)
 *                           c. new token for P
 *                           d. old keyslot destroyed (libcryptsetup unassigns it from the old token)
 *                           e. old token removed
 *   remove slot / shred:    keyslot destroyed, then its (now keyslot-less) token removed
 *
 * The registry (volumes.json) is a cache of what the headers say; the header wins. */
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <sys/stat.h>
#include <libcryptsetup.h>
#include <openssl/rand.h>

#include "cmek-fault.h"
#include "cmek-log.h"
#include "cmek-secmem.h"
#include "cmek-varlink.h"
#include "dm.h"
#include "enforce.h"
#include "key.h"
#include "luks2.h"
#include "volume-registry.h"
#include "volume.h"

/* The LUKS2 layout cmekd formats: 16 KiB JSON areas (x2) and a 4 MiB - 32 KiB keyslot area,
 * room for 31 keyslots of a 512-bit volume key; data starts at 4 MiB instead of 16 MiB. */
#define CMEK_METADATA_SIZE (16U * 1024U)
#define CMEK_KEYSLOTS_SIZE (4U * 1024U * 1024U - 2U * CMEK_METADATA_SIZE)

/* The DEK is 256 random bits: stretching it buys nothing, so its keyslot uses PBKDF2 at the
 * minimum libcryptsetup allows (systemd-cryptenroll does the same for its tokens). The same
 * holds for the volume key digest of volumes cmekd formats (the volume key is random too). */
static const struct crypt_pbkdf_type pbkdf_minimal = {
        .type = CRYPT_KDF_PBKDF2,
        .hash = "sha256",
        .iterations = 1000,
        .flags = CRYPT_PBKDF_NO_BENCHMARK,
};

static const char *const rewrap_result_table[_REWRAP_RESULT_MAX] = {
        [REWRAP_DONE] = "rewrapped",
        [REWRAP_CURRENT] = "current",
        [REWRAP_UNREACHABLE] = "unreachable",
        [REWRAP_FAILED] = "failed",
};

const char *rewrap_result_to_string(RewrapResult r) {
        return r < _REWRAP_RESULT_MAX ? rewrap_result_table[r] : NULL;
}

/* ---- wrap / unwrap ---- */

int volume_unwrap_token(Manager *m, const char *uuid, const CmekToken *t, void **ret_dek) {
        _cleanup_free_ uint8_t *aad = NULL;
        size_t aad_size;
        void *pt = NULL;
        int r;

        if (t->keyslot < 0)
                return -ENOENT;
        r = cmek_token_aad(uuid, t->keyslot, t->key_id, t->key_version, &aad, &aad_size);
        if (r < 0)
                return r;
        r = key_decrypt(m, t->key_id, t->key_version, aad, aad_size, t->iv, t->ciphertext,
                        sizeof(t->ciphertext), t->tag, &pt);
        if (r < 0)
                return r;
        *ret_dek = pt;
        return 0;
}

/* Wraps dek for (uuid, keyslot) under the newest version of key; fills t (keyslot, key, iv, ...). */
static int wrap_dek(Manager *m, const char *uuid, int keyslot, const KeyInfo *key, const void *dek, CmekToken *t) {
        _cleanup_free_ uint8_t *aad = NULL;
        size_t aad_size;
        unsigned version = 0;
        int r;

        cmek_token_done(t);
        r = cmek_token_aad(uuid, keyslot, key->id, key->current_version, &aad, &aad_size);
        if (r < 0)
                return r;
        r = key_encrypt(m, key->id, key->current_version, aad, aad_size, dek, CMEK_DEK_SIZE,
                        &version, t->iv, t->ciphertext, t->tag);
        if (r < 0)
                return r;
        if (version != key->current_version)
                return -ESTALE;
        t->keyslot = keyslot;
        t->pending_keyslot = -1;
        t->cmek_version = CMEK_TOKEN_VERSION;
        t->key_version = version;
        t->key_id = strdup(key->id);
        t->vault = strdup(key->vault ?: "default");
        if (!t->key_id || !t->vault)
                return -ENOMEM;
        return 0;
}

static int new_dek(void **ret) {
        void *d = cmek_secure_alloc(CMEK_DEK_SIZE);
        if (!d)
                return -ENOMEM;
        if (RAND_priv_bytes(d, CMEK_DEK_SIZE) != 1) {
                cmek_secure_free(d);
                return -EIO;
        }
        *ret = d;
        return 0;
}

static int volume_update_from_token(Volume *v, int token_id, const CmekToken *t, const KeyInfo *key) {
        v->token = token_id;
        v->keyslot = t->keyslot;
        v->key_version = t->key_version;
        v->state = VOLUME_BOUND;
        v->pending_rewrap = false;
        if (key)
                v->provider_managed = key->provider_managed;
        if (set_str(&v->key_id, t->key_id) < 0 || set_str(&v->vault, t->vault) < 0)
                return -ENOMEM;
        return 0;
}

static int volume_new(struct crypt_device *cd, const char *path, Volume **ret) {
        Volume *v = calloc(1, sizeof(*v));
        char *real = realpath(path, NULL);

        if (!v || !(v->uuid = strdup(crypt_get_uuid(cd) ?: ""))) {
                free(real);
                volume_free(v);
                return -ENOMEM;
        }
        v->path = real ?: strdup(path);
        v->keyslot = v->token = -1;
        v->state = VOLUME_BOUND;
        if (!v->path) {
                volume_free(v);
                return -ENOMEM;
        }
        *ret = v;
        return 0;
}

/* Adds the CMEK keyslot (opened with dek) and its token: the shared tail of create and bind.
 * vk NULL: cd holds the volume key (right after crypt_format). On any failure after the
 * keyslot exists, the keyslot is destroyed again: bad input never leaves a half binding. */
static int bind_new_keyslot(Manager *m, struct crypt_device *cd, const KeyInfo *key,
                            const void *vk, size_t vk_size, int *ret_slot, int *ret_token, CmekToken *ret_t) {
        _cleanup_secure_ void *dek = NULL;
        CmekToken t = CMEK_TOKEN_NULL;
        int slot, tok, r;

        r = new_dek(&dek);
        if (r < 0)
                return r;
        r = crypt_set_pbkdf_type(cd, &pbkdf_minimal);
        if (r < 0)
                return r;
        /* vk NULL: cd holds the volume key (right after crypt_format) */
        slot = crypt_keyslot_add_by_volume_key(cd, CRYPT_ANY_SLOT, vk, vk_size, dek, CMEK_DEK_SIZE);
        if (slot < 0)
                return slot == -ENOENT ? -EPERM : slot;
        cmek_fault("bind-after-keyslot-add");
        r = wrap_dek(m, crypt_get_uuid(cd), slot, key, dek, &t);
        if (r >= 0) {
                /* the token names its keyslot in the same commit: token activation tries only it */
                tok = write_token(cd, CRYPT_ANY_TOKEN, &t);
                r = tok;
        }
        if (r < 0) {
                int q = crypt_keyslot_destroy(cd, slot);
                if (q < 0)
                        log_warning_errno(q, "Failed to remove keyslot %d again after a failed bind, ignoring: %m", slot);
                cmek_token_done(&t);
                return r;
        }
        *ret_slot = slot;
        *ret_token = tok;
        *ret_t = t;
        return 0;
}

int lookup_key(Manager *m, const char *key_id, KeyInfo *ret) {
        int r = key_lookup(m, key_id, ret);
        if (r < 0)
                return r;
        r = key_state_to_errno(ret->state);
        if (r == 0)
                return 0;
        key_info_done(ret);
        return r;
}

static int zero_or_force(int fd, bool force) {
        uint8_t buf[65536];
        ssize_t n;

        n = pread(fd, buf, sizeof(buf), 0);
        if (n < 0)
                return -errno;
        for (ssize_t i = 0; i < n; i++)
                if (buf[i] != 0)
                        return force ? 0 : -ENOTEMPTY;
        return 0;
}

int volume_create(Manager *m, const VolumeFile *f, uint64_t size, const char *key_id, bool force,
                  const void *recovery, size_t recovery_size, Volume **ret) {
        _cleanup_crypt_ struct crypt_device *cd = NULL;
        struct crypt_params_luks2 params = { .sector_size = 512 };
        KeyInfo key = {};
        CmekToken t = CMEK_TOKEN_NULL;
        Volume *v = NULL;
        int slot = -1, tok = -1, r;
        uint8_t u[16];
        char uuid[37] = "";

        r = lookup_key(m, key_id, &key);
        if (r < 0)
                return r;

        if (f->created) {
                if (size == 0 || ftruncate(f->fd, (off_t) size) < 0) {
                        r = size == 0 ? -ENODEV : -errno;
                        goto out;
                }
        } else {
                /* never format over a LUKS volume (any version), nor over data unless forced;
                 * except the header of a create of this path that was interrupted (its intent
                 * is still there): it was never handed out, the re-run formats it anew */
                r = crypt_init(&cd, f->proc);
                if (r < 0)
                        goto out;
                crypt_set_log_callback(cd, crypt_log_cb, NULL);
                r = crypt_load(cd, CRYPT_LUKS, NULL);
                if (r >= 0 && !intent_find(m, "create", crypt_get_uuid(cd), f->real))
                        r = -EEXIST;
                else if (r >= 0)
                        log_info("%s: re-formatting the header of an interrupted volume create.", f->real);
                else
                        r = zero_or_force(f->fd, force);
                cd_free(TAKE_PTR(cd));
                if (r < 0)
                        goto out;
        }
        /* choose the UUID, so that the intent names the header before it exists */
        if (RAND_bytes(u, sizeof(u)) != 1) {
                r = -EIO;
                goto out;
        }
        u[6] = (u[6] & 0x0f) | 0x40;
        u[8] = (u[8] & 0x3f) | 0x80;
        snprintf(uuid, sizeof(uuid), "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x",
                 u[0], u[1], u[2], u[3], u[4], u[5], u[6], u[7], u[8], u[9], u[10], u[11], u[12], u[13], u[14], u[15]);
        r = intent_save(m, "create", uuid, f->real, -1, recovery != NULL);
        if (r < 0)
                goto out;

        r = crypt_init(&cd, f->proc);
        if (r < 0)
                goto out;
        crypt_set_log_callback(cd, crypt_log_cb, NULL);
        /* no stretching of the volume key digest either: the volume key is random (see above) */
        r = crypt_set_pbkdf_type(cd, &pbkdf_minimal);
        if (r >= 0)
                r = crypt_set_metadata_size(cd, CMEK_METADATA_SIZE, CMEK_KEYSLOTS_SIZE);
        if (r >= 0)
                r = crypt_format(cd, CRYPT_LUKS2, "aes", "xts-plain64", uuid, NULL, 64, &params);
        if (r < 0)
                goto out;
        cmek_fault("create-after-format");

        r = bind_new_keyslot(m, cd, &key, NULL, 0, &slot, &tok, &t);
        if (r < 0)
                goto out;
        if (recovery) {
                /* a passphrase is low-entropy: it gets the default memory-hard PBKDF */
                r = crypt_set_pbkdf_type(cd, NULL);
                if (r >= 0)
                        r = crypt_keyslot_add_by_volume_key(cd, CRYPT_ANY_SLOT, NULL, 0, recovery, recovery_size);
                if (r < 0)
                        goto out;
        }

        r = volume_new(cd, f->real, &v);
        if (r >= 0)
                r = volume_update_from_token(v, tok, &t, &key);
        if (r >= 0)
                r = registry_add(m, v);
        if (r < 0) {
                volume_free(v);
                goto out;
        }
        intent_drop(m, uuid);
        r = volume_registry_save(m);
        if (r < 0)
                goto out;
        *ret = v;
        r = 0;
out:
        if (r < 0 && f->created) {
                /* the caller removes the file (with its own rights); no header is left: the
                 * intent goes too (if this save fails, the start drops it) */
                cd_free(TAKE_PTR(cd));
                if (ftruncate(f->fd, 0) < 0)
                        log_debug_errno(-errno, "Failed to truncate '%s' again: %m", f->real);
                if (intent_find(m, "create", uuid, NULL)) {
                        intent_drop(m, uuid);
                        (void) volume_registry_save(m);
                }
        }
        cmek_token_done(&t);
        key_info_done(&key);
        return r;
}

/* Bind derives a key from the caller's passphrase with the PBKDF the caller's header names: the
 * daemon's only thread runs it, so its cost is bounded before anything is derived. The limits are
 * cryptsetup's own defaults for Argon2 (1 GiB, 4 threads) and a time cost that a 2-second
 * benchmark of the default on a slow machine stays under; PBKDF2 at 10 million iterations is
 * several times what the default 2-second benchmark gives for sha256. */
#define BIND_ARGON2_MEMORY_MAX_KIB (1024U * 1024U)
#define BIND_ARGON2_PARALLEL_MAX 4U
#define BIND_ARGON2_TIME_MAX 16U
#define BIND_ARGON2_COST_MAX_KIB (8ULL * 1024U * 1024U) /* memory x passes: 8 GiB of hashing */
#define BIND_PBKDF2_ITERATIONS_MAX 10000000U

static int keyslot_pbkdf_bounded(struct crypt_device *cd, int slot) {
        struct crypt_pbkdf_type pb = {};
        int r = crypt_keyslot_get_pbkdf(cd, slot, &pb);

        if (r < 0)
                return r;
        if (!pb.type)
                return -E2BIG;
        if (streq(pb.type, CRYPT_KDF_PBKDF2))
                return pb.iterations <= BIND_PBKDF2_ITERATIONS_MAX ? 0 : -E2BIG;
        if (streq(pb.type, CRYPT_KDF_ARGON2I) || streq(pb.type, CRYPT_KDF_ARGON2ID))
                return pb.max_memory_kb <= BIND_ARGON2_MEMORY_MAX_KIB && pb.parallel_threads <= BIND_ARGON2_PARALLEL_MAX &&
                       pb.iterations <= BIND_ARGON2_TIME_MAX &&
                       (uint64_t) pb.max_memory_kb * pb.iterations <= BIND_ARGON2_COST_MAX_KIB ? 0 : -E2BIG;
        return -E2BIG;
}

/* The keyslot bind derives from: the one the caller named, else the first active one that no
 * cmek token owns. Exactly one PBKDF runs per request. */
static int bind_unlock_keyslot(struct crypt_device *cd, int wanted) {
        int max = crypt_keyslot_max(CRYPT_LUKS2);
        HeaderTokens h = {};

        if (wanted >= 0)
                return wanted < max && keyslot_active(cd, wanted) ? wanted : -ENXIO;
        (void) read_cmek_tokens(cd, &h);
        for (int i = 0; i < max; i++) {
                bool cmek = false;
                if (!keyslot_active(cd, i))
                        continue;
                for (size_t j = 0; j < h.n; j++)
                        cmek = cmek || h.t[j].keyslot == i;
                if (!cmek) {
                        header_tokens_done(&h);
                        return i;
                }
        }
        header_tokens_done(&h);
        return -ENXIO;
}

int volume_bind(Manager *m, const VolumeFile *f, const VolumeProbe *authorized, const char *key_id,
                const void *unlock, size_t unlock_size, int unlock_keyslot, Volume **ret) {
        _cleanup_crypt_ struct crypt_device *cd = NULL;
        _cleanup_secure_ void *vk = NULL;
        size_t vk_size;
        CmekToken t = CMEK_TOKEN_NULL;
        KeyInfo key = {};
        Volume *v;
        int slot, tok, r;

        r = luks2_open(f->proc, &cd);
        if (r < 0)
                return r;
        /* what was authorized is what is acted on: the header did not change since the probe */
        if (!streq_ptr(crypt_get_uuid(cd), authorized->uuid))
                return -ESTALE;
        r = volume_header_repair(cd);
        if (r < 0)
                return r;

        r = find_bound_token(cd, &tok, &t);
        if (r >= 0) {
                /* already bound: "bind --key OTHER" moves it to another key; the caller was
                 * authorized on the key that wraps the DEK now, and the volume was registered */
                bool same = streq_ptr(t.key_id, authorized->key_id);
                cmek_token_done(&t);
                if (!same)
                        return -ESTALE;
                v = volume_find_uuid(m, crypt_get_uuid(cd));
                if (!v || !streq_ptr(v->path, f->real))
                        return -ESTALE;
                cd_free(TAKE_PTR(cd));
                RewrapResult res;
                r = volume_rewrap(m, v, key_id, false, &res);
                if (r < 0)
                        return r;
                *ret = v;
                return 1;
        }
        if (authorized->key_id)
                return -ESTALE;

        if (!unlock)
                return -ENOKEY;
        slot = bind_unlock_keyslot(cd, unlock_keyslot);
        if (slot < 0)
                return slot;
        r = keyslot_pbkdf_bounded(cd, slot);
        if (r < 0)
                return r;
        r = lookup_key(m, key_id, &key);
        if (r < 0)
                return r;
        r = crypt_get_volume_key_size(cd);
        if (r <= 0) {
                r = -EINVAL;
                goto out;
        }
        vk_size = (size_t) r;
        vk = cmek_secure_alloc(vk_size);
        if (!vk) {
                r = -ENOMEM;
                goto out;
        }
        r = crypt_volume_key_get(cd, slot, vk, &vk_size, unlock, unlock_size);
        if (r < 0) {
                r = r == -EPERM || r == -ENOENT ? -EPERM : r;
                goto out;
        }
        /* the keyslot bind_new_keyslot() takes (CRYPT_ANY_SLOT: the first free one) */
        slot = first_free_keyslot(cd);
        r = slot >= 0 ? intent_save(m, "bind", crypt_get_uuid(cd), f->real, slot, false) : slot;
        if (r < 0)
                goto out;
        r = bind_new_keyslot(m, cd, &key, vk, vk_size, &slot, &tok, &t);
        if (r < 0) {
                intent_drop(m, crypt_get_uuid(cd));
                (void) volume_registry_save(m);
                goto out;
        }
        intent_drop(m, crypt_get_uuid(cd));
        v = volume_find_uuid(m, crypt_get_uuid(cd));
        if (!v) {
                r = volume_new(cd, f->real, &v);
                if (r < 0)
                        goto out;
                r = registry_add(m, v);
                if (r < 0) {
                        volume_free(v);
                        goto out;
                }
        }
        r = set_str(&v->path, f->real);
        if (r >= 0)
                r = volume_update_from_token(v, tok, &t, &key);
        if (r >= 0)
                r = volume_registry_save(m);
        if (r >= 0) {
                *ret = v;
                r = 0;
        }
out:
        cmek_token_done(&t);
        key_info_done(&key);
        return r;
}


int volume_activate(Manager *m, Volume *v, const char *name) {
        _cleanup_crypt_ struct crypt_device *cd = NULL;
        _cleanup_secure_ void *dek = NULL;
        CmekToken t = CMEK_TOKEN_NULL;
        int tok, r;

        if (v->state != VOLUME_BOUND)
                return -ENOKEY;
        r = volume_open_header(v, &cd);
        if (r < 0)
                return r;
        r = volume_header_repair(cd);
        if (r < 0)
                return r;
        r = find_bound_token(cd, &tok, &t);
        if (r < 0)
                return r;
        r = volume_unwrap_token(m, v->uuid, &t, &dek);
        if (r >= 0)
                r = crypt_activate_by_passphrase(cd, name, t.keyslot, dek, CMEK_DEK_SIZE, 0);
        if (r >= 0 && name) {
                r = set_str(&v->mapping, name);
                /* an explicit unlock is asking for it, like restore */
                volume_clear_lock(v);
                if (r >= 0)
                        r = volume_registry_save(m);
        }
        cmek_token_done(&t);
        return r < 0 ? r : 0;
}


int volume_deactivate(Manager *m, Volume *v) {
        int r;

        if (!v->mapping)
                return -ENXIO;
        r = crypt_deactivate(NULL, v->mapping);
        if (r < 0 && r != -ENODEV)
                return r;
        dm_scan_invalidate(&m->dm);
        free(v->mapping);
        v->mapping = NULL;
        v->suspended = false;
        v->lock = VOLUME_LOCK_NONE;
        free(v->restore_name);
        v->restore_name = NULL;
        return volume_registry_save(m);
}

/* Re-wrap, keeping the keyslot secret: one token commit. */
static int rewrap_same_secret(Manager *m, struct crypt_device *cd, Volume *v, int tok,
                              const CmekToken *old, const KeyInfo *key) {
        _cleanup_secure_ void *dek = NULL;
        CmekToken t = CMEK_TOKEN_NULL;
        int r;

        r = volume_unwrap_token(m, v->uuid, old, &dek);
        if (r < 0)
                return r;
        cmek_fault("rewrap-after-unwrap");
        r = wrap_dek(m, v->uuid, old->keyslot, key, dek, &t);
        if (r >= 0)
                r = write_token(cd, tok, &t);
        cmek_fault("rewrap-after-token-write");
        if (r >= 0)
                r = volume_update_from_token(v, tok, &t, key);
        cmek_token_done(&t);
        return r;
}

/* Re-wrap with a new keyslot secret: steps a.-e. at the top of the file. */
static int rewrap_new_secret(Manager *m, struct crypt_device *cd, Volume *v, int tok,
                             CmekToken *old, const KeyInfo *key) {
        _cleanup_secure_ void *dek = NULL, *dek2 = NULL;
        CmekToken t = CMEK_TOKEN_NULL;
        int slot, tok2, r;

        r = volume_unwrap_token(m, v->uuid, old, &dek);
        if (r < 0)
                return r;
        slot = first_free_keyslot(cd);
        if (slot < 0)
                return slot;
        /* a. */
        old->pending_keyslot = slot;
        r = write_token(cd, tok, old);
        if (r < 0)
                return r;
        cmek_fault("newsecret-after-pending-mark");
        /* b. */
        r = new_dek(&dek2);
        if (r >= 0)
                r = crypt_set_pbkdf_type(cd, &pbkdf_minimal);
        if (r >= 0)
                r = crypt_keyslot_add_by_passphrase(cd, slot, dek, CMEK_DEK_SIZE, dek2, CMEK_DEK_SIZE);
        if (r < 0)
                goto undo;
        cmek_fault("newsecret-after-keyslot-add");
        /* c. */
        r = wrap_dek(m, v->uuid, slot, key, dek2, &t);
        if (r < 0)
                goto undo;
        tok2 = write_token(cd, CRYPT_ANY_TOKEN, &t);
        if (tok2 < 0) {
                r = tok2;
                goto undo;
        }
        cmek_fault("newsecret-after-token-add");
        /* d. e. are exactly what repair does for a token whose successor exists */
        r = volume_header_repair(cd);
        cmek_fault("newsecret-after-old-removed");
        if (r >= 0)
                r = volume_update_from_token(v, tok2, &t, key);
        cmek_token_done(&t);
        return r;
undo:
        cmek_token_done(&t);
        (void) volume_header_repair(cd);
        return r;
}

int volume_rewrap(Manager *m, Volume *v, const char *new_key_id, bool new_secret, RewrapResult *ret) {
        _cleanup_crypt_ struct crypt_device *cd = NULL;
        CmekToken old = CMEK_TOKEN_NULL;
        KeyInfo key = {};
        int tok, r;

        *ret = REWRAP_FAILED;
        if (v->state != VOLUME_BOUND)
                return -ENOKEY;
        r = volume_open_header(v, &cd);
        if (r == -ENODEV) {
                *ret = REWRAP_UNREACHABLE;
                v->pending_rewrap = true;
                (void) volume_registry_save(m);
                return r;
        }
        if (r < 0)
                return r;
        r = volume_header_repair(cd);
        if (r < 0)
                return r;
        r = find_bound_token(cd, &tok, &old);
        if (r < 0)
                return r;
        r = lookup_key(m, new_key_id ?: old.key_id, &key);
        if (r < 0)
                goto out;
        if (!new_secret && streq(old.key_id, key.id) && old.key_version == key.current_version) {
                r = volume_update_from_token(v, tok, &old, &key);
                if (r >= 0)
                        r = volume_registry_save(m);
                *ret = REWRAP_CURRENT;
                goto out;
        }
        if (new_secret)
                r = rewrap_new_secret(m, cd, v, tok, &old, &key);
        else
                r = rewrap_same_secret(m, cd, v, tok, &old, &key);
        if (r >= 0) {
                r = volume_registry_save(m);
                *ret = REWRAP_DONE;
        }
out:
        cmek_token_done(&old);
        key_info_done(&key);
        return r;
}

int volume_remove_slot(Manager *m, Volume *v) {
        _cleanup_crypt_ struct crypt_device *cd = NULL;
        CmekToken t = CMEK_TOKEN_NULL;
        int tok, r;

        r = volume_open_header(v, &cd);
        if (r < 0)
                return r;
        r = volume_header_repair(cd);
        if (r < 0)
                return r;
        r = find_bound_token(cd, &tok, &t);
        if (r == -ENOENT)
                /* an unbind --remove-slot killed after its header commits: only the registry is left */
                return volume_registry_remove(m, v);
        if (r < 0)
                return r;
        if (count_active_keyslots(cd, t.keyslot) == 0) {
                cmek_token_done(&t);
                return -ENOTEMPTY;
        }
        r = crypt_keyslot_destroy(cd, t.keyslot);
        cmek_fault("remove-after-keyslot-destroy");
        if (r >= 0)
                r = crypt_token_json_set(cd, tok, NULL);
        cmek_token_done(&t);
        if (r < 0)
                return r;
        return volume_registry_remove(m, v);
}

/* Registers the volume whose header is at dev (registered under real). A UUID registered at
 * another path is never silently repointed: -EADDRINUSE, unless the registered device is gone
 * and this header's token unwraps under the registered key (a rename: returns 2). */
static int adopt(Manager *m, const char *dev, const char *real, const char *expect_uuid, Volume **ret) {
        _cleanup_crypt_ struct crypt_device *cd = NULL;
        CmekToken t = CMEK_TOKEN_NULL;
        KeyInfo key = {};
        Volume *v;
        int tok, r, known = 1;

        r = luks2_open(dev, &cd);
        if (r < 0)
                return r;
        if (expect_uuid && !streq_ptr(crypt_get_uuid(cd), expect_uuid))
                return -ESTALE;
        v = volume_find_uuid(m, crypt_get_uuid(cd));
        if (v && !streq_ptr(v->path, real)) {
                _cleanup_crypt_ struct crypt_device *there = NULL;
                _cleanup_secure_ void *dek = NULL;
                CmekToken rt = CMEK_TOKEN_NULL;
                int rtok;

                if (volume_open_header(v, &there) >= 0)
                        return -EADDRINUSE; /* the registered one is still there: a copy */
                /* read-only until it is known to be the same volume: no repair yet */
                r = find_bound_token(cd, &rtok, &rt);
                if (r >= 0 && !streq_ptr(rt.key_id, v->key_id))
                        r = -EADDRINUSE;
                if (r >= 0 && volume_unwrap_token(m, v->uuid, &rt, &dek) < 0)
                        r = -EADDRINUSE;
                cmek_token_done(&rt);
                if (r < 0)
                        return r == -ENOENT ? -EADDRINUSE : r;
                known = 2;
        }
        r = volume_header_repair(cd);
        if (r < 0)
                return r;
        r = find_bound_token(cd, &tok, &t);
        if (r < 0)
                return r;
        if (!v) {
                r = volume_new(cd, real, &v);
                if (r >= 0 && (r = registry_add(m, v)) < 0)
                        volume_free(v);
                if (r < 0)
                        goto out;
                known = 0;
        }
        if (key_lookup(m, t.key_id, &key) >= 0) {
                r = volume_update_from_token(v, tok, &t, &key);
                key_info_done(&key);
        } else
                r = volume_update_from_token(v, tok, &t, NULL);
        if (r >= 0)
                r = set_str(&v->path, real);
        if (r >= 0)
                r = volume_registry_save(m);
        if (r >= 0) {
                if (ret)
                        *ret = v;
                r = known;
        }
out:
        cmek_token_done(&t);
        return r;
}

int volume_adopt(Manager *m, const char *path, Volume **ret) {
        _cleanup_free_ char *real = realpath(path, NULL);
        return adopt(m, path, real ?: path, NULL, ret);
}

int volume_adopt_file(Manager *m, const VolumeFile *f, const char *expect_uuid, Volume **ret) {
        return adopt(m, f->proc, f->real, expect_uuid, ret);
}

/* Finishes what a crash between a header write and the registry save left (see "intents"):
 * - the header at the path does not carry the intent's UUID: the operation never wrote it; dropped.
 * - it has a cmek token opening its keyslot (and, for a create with a recovery passphrase, that
 *   keyslot too): the operation is complete in the header; the volume is registered (adopted).
 * - a create without it: kept; the volume has no cmek way in and was never handed out, and the
 *   re-run of 'volume create' on the path formats it anew.
 * - a bind without it: the keyslot the bind added (whose DEK died with the daemon) is destroyed
 *   when no token names it; the volume is as before the bind, its old passphrase opens it. */
int volumes_resolve_intents(Manager *m) {
        VolumeRegistry *reg = m->volumes;
        bool changed = false;
        int r;

        for (size_t i = 0; reg->intents && i < json_object_array_length(reg->intents);) {
                json_object *e = json_object_array_get_idx(reg->intents, i);
                const char *op = cmek_json_get_string(e, "op"), *uuid = cmek_json_get_string(e, "uuid");
                const char *path = cmek_json_get_string(e, "path");
                _cleanup_crypt_ struct crypt_device *cd = NULL;
                CmekToken t = CMEK_TOKEN_NULL;
                int64_t slot = -1;
                int tok;

                (void) cmek_json_get_int64(e, "keyslot", &slot);
                if (!op || !uuid || !path || luks2_open(path, &cd) < 0 || !streq_ptr(crypt_get_uuid(cd), uuid)) {
                        log_info("%s: an interrupted volume %s never reached the header, forgotten.", path ?: "?", op ?: "?");
                        json_object_array_del_idx(reg->intents, i, 1);
                        changed = true;
                        continue;
                }
                (void) volume_header_repair(cd);
                if (find_bound_token(cd, &tok, &t) >= 0 &&
                    (!streq(op, "create") || !cmek_json_get_bool(e, "recovery", false) ||
                     count_active_keyslots(cd, t.keyslot) > 0)) {
                        cmek_token_done(&t);
                        cd_free(TAKE_PTR(cd));
                        r = volume_adopt(m, path, NULL);
                        if (r < 0)
                                log_warning_errno(r, "%s: failed to register the volume of an interrupted %s: %m", path, op);
                        else
                                log_info("%s: registered the volume of an interrupted volume %s (its header was complete).", path, op);
                } else if (streq(op, "create")) {
                        cmek_token_done(&t);
                        log_warning("%s: a volume create was interrupted before the volume had its cmek token; "
                                    "'cmekctl volume create' of this path formats it anew.", path);
                        i++;
                        continue;
                } else if (streq(op, "bind") && slot >= 0 && keyslot_active(cd, (int) slot)) {
                        HeaderTokens h = {};
                        bool named = false;

                        (void) read_cmek_tokens(cd, &h);
                        for (size_t j = 0; j < h.n; j++)
                                named = named || h.t[j].keyslot == slot || h.t[j].pending_keyslot == slot;
                        header_tokens_done(&h);
                        if (!named) {
                                r = crypt_keyslot_destroy(cd, (int) slot);
                                cmek_fault("intent-after-keyslot-destroy");
                                if (r < 0)
                                        log_warning_errno(r, "%s: failed to remove keyslot %d of an interrupted bind: %m", path, (int) slot);
                                else
                                        log_info("%s: removed keyslot %d of an interrupted bind.", path, (int) slot);
                        }
                }
                json_object_array_del_idx(reg->intents, i, 1);
                changed = true;
        }
        return changed ? volume_registry_save(m) : 0;
}

/* ---- the module: start and stop (daemon/modules.c) ---- */

int volumes_init(Manager *m) {
        int r;

        /* never dlopen our own token plugin into the daemon: it would call the daemon */
        crypt_token_external_disable();
        crypt_set_log_callback(NULL, crypt_log_cb, NULL);
        cmek_fault_enable(m->test_hooks);
        r = volume_registry_new(m);
        if (r < 0)
                return r;
        volumes_apply_config(m);
        r = registry_load(m);
        if (r < 0)
                return r;
        (void) volumes_resolve_intents(m);
        return enforce_start(m);
}

void volumes_done(Manager *m) {
        if (!m->volumes)
                return;
        enforce_stop(m);
        dm_scan_clear(&m->dm);
        kscan_clear(&m->dm);
        volume_registry_free(m);
}

/* ---- presentation ---- */

static bool mapping_active(const char *name) {
        return name && crypt_status(NULL, name) >= CRYPT_ACTIVE;
}

json_object *volume_to_json(Manager *m, Volume *v, bool with_header) {
        json_object *o = volume_to_registry_json(v);
        KeyInfo key = {};
        bool enabled = false;

        if (v->key_id && key_lookup(m, v->key_id, &key) >= 0) {
                json_object_object_add(o, "key_state", json_object_new_string(key_state_to_string(key.state)));
                json_object_object_add(o, "key_name", key.name ? json_object_new_string(key.name) : NULL);
                enabled = key.state == KEY_STATE_ENABLED;
                v->provider_managed = key.provider_managed;
                key_info_done(&key);
        } else
                json_object_object_add(o, "key_state", json_object_new_string(
                                       v->state == VOLUME_BOUND ? "UNKNOWN" : "DELETED"));
        json_object_object_add(o, "provider_managed", json_object_new_boolean(v->provider_managed));
        if (volume_adopt_mapping(m, v) > 0)
                (void) volume_registry_save(m);
        json_object_object_add(o, "mapped", json_object_new_boolean(mapping_active(v->mapping)));
        {
                _cleanup_free_ char *why = NULL, *users = NULL;
                const char *ks = cmek_json_get_string(o, "key_state");
                json_object_object_add(o, "availability", json_object_new_string(volume_availability(v, ks, &why)));
                if (why)
                        json_object_object_add(o, "unavailable_reason", json_object_new_string(why));
                if (v->lock == VOLUME_LOCK_CLOSING && v->restore_name && (users = mapping_users(v->restore_name)))
                        json_object_object_add(o, "in_use_by", json_object_new_string(users));
        }
        /* the seeds' two metrics */
        json_object_object_add(o, "EncryptionKeyStatus", json_object_new_int(enabled && v->state == VOLUME_BOUND));
        json_object_object_add(o, "EncryptionKeyType", json_object_new_int(!v->provider_managed));

        if (with_header) {
                _cleanup_crypt_ struct crypt_device *cd = NULL;
                const char *shred;
                int others = -1;

                if (volume_open_header(v, &cd) >= 0) {
                        others = count_active_keyslots(cd, v->state == VOLUME_BOUND ? v->keyslot : -1);
                        json_object_object_add(o, "other_keyslots", json_object_new_int(others));
                        json_object_object_add(o, "reachable", json_object_new_boolean(true));
                } else
                        json_object_object_add(o, "reachable", json_object_new_boolean(false));
                switch (v->state) {
                case VOLUME_UNRECOVERABLE:
                        shred = "shredded: no keyslot left, the data is unrecoverable";
                        break;
                case VOLUME_KEY_DELETED:
                        shred = "not shredded: has other keyslots";
                        break;
                case VOLUME_SHRED_PENDING:
                        shred = "shred pending: the key is deleted, the volume was unreachable";
                        break;
                default:
                        shred = others < 0 ? "unknown: volume unreachable" :
                                others == 0 ? "CMEK only: deleting the key shreds this volume" :
                                "recoverable: other keyslots would survive a key deletion";
                }
                json_object_object_add(o, "shred_status", json_object_new_string(shred));
        }
        return o;
}
