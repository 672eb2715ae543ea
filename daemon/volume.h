/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* Volumes: per-volume DEKs in LUKS2 keyslots, wrapped by a master key in a "cmek" token; the registry. */
#pragma once

#include <stdbool.h>
#include <stdint.h>
#include <json-c/json.h>

#include "cmek-token.h"
#include "manager.h"
#include "volume-open.h"

typedef enum VolumeState {
        VOLUME_BOUND,           /* CMEK keyslot and token present */
        VOLUME_UNRECOVERABLE,   /* key deleted, CMEK keyslot destroyed, no other keyslot: crypto-shredded */
        VOLUME_KEY_DELETED,     /* key deleted, CMEK keyslot destroyed, another keyslot remains: not shredded */
        VOLUME_SHRED_PENDING,   /* key deleted while the volume was unreachable: shredded when it is seen */
        _VOLUME_STATE_MAX,
        _VOLUME_STATE_INVALID = -EINVAL,
} VolumeState;

const char *volume_state_to_string(VolumeState s);
VolumeState volume_state_from_string(const char *s);

/* What enforcement did to the volume's mapping when its key stopped being ENABLED. */
typedef enum VolumeLock {
        VOLUME_LOCK_NONE,       /* not locked by enforcement */
        VOLUME_LOCK_SUSPENDED,  /* crypt_suspend(): I/O held, volume key wiped from the kernel */
        VOLUME_LOCK_CLOSING,    /* suspended and marked for deferred removal: still held open */
        VOLUME_LOCK_CLOSED,     /* mapping removed; restore re-opens it under restore_name */
        _VOLUME_LOCK_MAX,
        _VOLUME_LOCK_INVALID = -EINVAL,
} VolumeLock;
const char *volume_lock_to_string(VolumeLock l);
VolumeLock volume_lock_from_string(const char *s);

/* [enforcement] on-disable= of cmekd.conf, or a key's own on_disable. */
typedef enum OnDisable {
        ON_DISABLE_SUSPEND,
        ON_DISABLE_CLOSE,
        _ON_DISABLE_MAX,
        _ON_DISABLE_INVALID = -EINVAL,
} OnDisable;
const char *on_disable_to_string(OnDisable o);
OnDisable on_disable_from_string(const char *s);

typedef struct Volume {
        char *uuid;             /* LUKS2 UUID: the identity */
        char *path;             /* last known path (image file or block device) */
        char *key_id;
        unsigned key_version;
        char *vault;
        int keyslot;            /* the CMEK keyslot, -1 when gone */
        int token;              /* the cmek token id, -1 when gone */
        VolumeState state;
        char *mapping;          /* dm-crypt name while unlocked by cmekd, else NULL */
        bool provider_managed;  /* bound to the broker's default key (EncryptionKeyType 0) */
        bool pending_rewrap;    /* a rotation could not reach it: re-wrap when it is back */
        bool suspended;         /* lock == VOLUME_LOCK_SUSPENDED (kept for the registry and the IDL) */
        VolumeLock lock;        /* what enforcement did; cleared only by 'volume restore' */
        char *restore_name;     /* the mapping name to resume or re-open on restore */
        char *lock_reason;      /* why it is locked, for volume_to_json and events */
        uint64_t locked_usec;
} Volume;

struct VolumeRegistry {
        char *path;             /* <state-dir>/volumes.json */
        Volume **volumes;
        size_t n;
        /* enforcement ([enforcement] in cmekd.conf) */
        OnDisable on_disable;   /* default for keys without their own on_disable */
        uint64_t watch_usec;    /* how often the keys of bound volumes are re-read from their tokens */
        sd_event_source *watch;
        /* a batch (rotation, rewrap) saves the registry once at its end, not once per volume: each
         * save writes every volume's entry, which made re-wrapping N volumes O(N^2) */
        unsigned save_deferred;
        bool save_pending;
        /* create/bind write a header before the registry knows the volume: the intent (op, uuid,
         * path, keyslot) is saved first and resolved at start (volumes.json "intents") */
        json_object *intents;
};

typedef enum RewrapResult {
        REWRAP_DONE,
        REWRAP_CURRENT,
        REWRAP_UNREACHABLE,
        REWRAP_FAILED,
        _REWRAP_RESULT_MAX,
} RewrapResult;
const char *rewrap_result_to_string(RewrapResult r);

/* module hooks (daemon/modules.c) */
int volumes_init(Manager *m);
void volumes_done(Manager *m);
/* [enforcement] of the configuration: at start and after a reload */
void volumes_apply_config(Manager *m);
void volumes_key_state_changed(Manager *m, const char *key_id, int old_state, int new_state);
void volumes_key_rotated(Manager *m, const char *key_id, unsigned new_version);

/* registry */
/* UUID first, then registered path, then mapping name. */
Volume *volume_find(Manager *m, const char *uuid_path_or_name);
Volume *volume_find_uuid(Manager *m, const char *uuid);
Volume *volume_find_path(Manager *m, const char *path);

/* What a caller's header says, read before authorization without touching the file (no repair,
 * no registry): its LUKS2 UUID and the key its bound cmek token names (NULL: not bound).
 * -EMEDIUMTYPE when it is not LUKS2. */
typedef struct VolumeProbe {
        char *uuid;
        char *key_id;
        int keyslot;
        int token;
} VolumeProbe;
#define VOLUME_PROBE_NULL { .keyslot = -1, .token = -1 }
int volume_probe(const VolumeFile *f, VolumeProbe *ret);
void volume_probe_done(VolumeProbe *p);
int volume_registry_save(Manager *m);
void volume_registry_defer_save(Manager *m);
int volume_registry_flush(Manager *m);
int volume_registry_remove(Manager *m, Volume *v);

/* Errors of every operation below: -EMEDIUMTYPE not LUKS2, -ENODEV no such device/image,
 * -EEXIST already formatted/bound, -EPERM the unlock secret opens nothing, -ENOTEMPTY it would
 * leave no keyslot, -ENOSPC no free keyslot/token, and key_encrypt()/key_decrypt()'s errors. */

/* Formats the opened file f (a new image of size bytes when f->created) and binds it.
 * recovery (may be NULL) adds a passphrase keyslot (Argon2id, the default PBKDF). */
int volume_create(Manager *m, const VolumeFile *f, uint64_t size, const char *key_id, bool force,
                  const void *recovery, size_t recovery_size, Volume **ret);
/* Adds a CMEK keyslot to an existing LUKS2 volume, deriving the volume key once from unlock (a
 * passphrase or key file contents) with keyslot unlock_keyslot (-1: the first non-CMEK one); its
 * PBKDF must cost no more than the defaults (-E2BIG). On a bound (and registered) volume moves it
 * to key_id instead (unlock not needed). -ESTALE when the header no longer matches authorized. */
int volume_bind(Manager *m, const VolumeFile *f, const VolumeProbe *authorized, const char *key_id,
                const void *unlock, size_t unlock_size, int unlock_keyslot, Volume **ret);
/* Unwraps the DEK of a token read from the header of the volume with this UUID. */
int volume_unwrap_token(Manager *m, const char *uuid, const CmekToken *t, void **ret_dek);
/* Opens the CMEK keyslot: name NULL only checks (no device-mapper needed). */
int volume_activate(Manager *m, Volume *v, const char *name);
int volume_deactivate(Manager *m, Volume *v);
/* Re-wraps under new_key_id (NULL: the same key) at its newest version; new_secret also
 * replaces the keyslot secret. Crash-safe: see the comment in volume.c. */
int volume_rewrap(Manager *m, Volume *v, const char *new_key_id, bool new_secret, RewrapResult *ret);
/* Destroys the CMEK keyslot and token; refused (-ENOTEMPTY) when no other keyslot remains. */
int volume_remove_slot(Manager *m, Volume *v);
/* At start: finishes the creates/binds a crash interrupted between header and registry. */
int volumes_resolve_intents(Manager *m);
/* Registers a LUKS2 volume that carries a cmek token (registry rebuild). 0 added, 1 known. */
int volume_adopt(Manager *m, const char *path, Volume **ret);
/* The same for an opened caller file whose header must carry expect_uuid. -EADDRINUSE: the UUID is
 * registered at another path that still holds it (or this header does not unwrap under the
 * registered key); 2: registered elsewhere, that device is gone, this one is the same volume
 * (renamed). */
int volume_adopt_file(Manager *m, const VolumeFile *f, const char *expect_uuid, Volume **ret);

/* Enforcement. Re-reads the keys of bound volumes from their tokens (metadata and usage flags)
 * and locks the mappings of every key that is not ENABLED: on the watch timer and at the start
 * of volume requests. */
void volumes_watch_now(Manager *m);
/* Resumes or re-opens the locked mappings of v; -EKEYREVOKED etc. unless its key is ENABLED,
 * -ENXIO when v is not locked. */
int volume_restore(Manager *m, Volume *v);
/* An event about v with the key's state (key_state NULL: looked up) and, when v is
 * unavailable, why. extra (may be NULL) is merged in; takes ownership of it. */
void volume_event(Manager *m, const char *type, Volume *v, const char *key_state, json_object *extra);

/* The JSON object of io.cmek.Volume's VolumeInfo; with_header also reads the header (keyslots). */
json_object *volume_to_json(Manager *m, Volume *v, bool with_header);
