/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* Volumes: LUKS2 keyslots opened by per-volume DEKs, the DEKs wrapped in "cmek" tokens, the registry.
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
#include <ctype.h>
#include <dirent.h>
#include <endian.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <libcryptsetup.h>
#include <libdevmapper.h>
#include <linux/keyctl.h>
#include <sys/syscall.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <linux/fs.h>
#include <openssl/rand.h>

#include "cmek-fault.h"
#include "cmek-log.h"
#include "cmek-secmem.h"
#include "cmek-varlink.h"
#include "config.h"
#include "key.h"
#include "volume.h"

#define REGISTRY_FILE "volumes.json"
#define WATCH_INTERVAL_DEFAULT_USEC (5ULL * 1000000ULL)
#define REGISTRY_MAX (64U * 1024U * 1024U)

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

static const char *const volume_state_table[_VOLUME_STATE_MAX] = {
        [VOLUME_BOUND] = "BOUND",
        [VOLUME_UNRECOVERABLE] = "UNRECOVERABLE",
        [VOLUME_KEY_DELETED] = "KEY_DELETED",
        [VOLUME_SHRED_PENDING] = "SHRED_PENDING",
};

static const char *const volume_lock_table[_VOLUME_LOCK_MAX] = {
        [VOLUME_LOCK_NONE] = "none",
        [VOLUME_LOCK_SUSPENDED] = "suspended",
        [VOLUME_LOCK_CLOSING] = "closing",
        [VOLUME_LOCK_CLOSED] = "closed",
};

const char *volume_lock_to_string(VolumeLock l) {
        return l >= 0 && l < _VOLUME_LOCK_MAX ? volume_lock_table[l] : NULL;
}

VolumeLock volume_lock_from_string(const char *s) {
        return (VolumeLock) cmek_string_table_lookup(volume_lock_table, _VOLUME_LOCK_MAX, s);
}

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

const char *volume_state_to_string(VolumeState s) {
        return s >= 0 && s < _VOLUME_STATE_MAX ? volume_state_table[s] : NULL;
}

VolumeState volume_state_from_string(const char *s) {
        return (VolumeState) cmek_string_table_lookup(volume_state_table, _VOLUME_STATE_MAX, s);
}

static const char *const rewrap_result_table[_REWRAP_RESULT_MAX] = {
        [REWRAP_DONE] = "rewrapped",
        [REWRAP_CURRENT] = "current",
        [REWRAP_UNREACHABLE] = "unreachable",
        [REWRAP_FAILED] = "failed",
};

const char *rewrap_result_to_string(RewrapResult r) {
        return r < _REWRAP_RESULT_MAX ? rewrap_result_table[r] : NULL;
}

/* A registered path is opened once (O_NONBLOCK: a FIFO planted there never blocks the loop; only
 * a block device or a regular file), and libcryptsetup gets /proc/self/fd/N of that fd: the fd
 * lives as long as the crypt_device, in this small table. */
typedef struct HeldFd {
        struct crypt_device *cd;
        int fd;
} HeldFd;
static HeldFd *held;
static size_t n_held;

static int hold_fd(struct crypt_device *cd, int fd) {
        HeldFd *n = realloc(held, (n_held + 1) * sizeof(HeldFd));
        if (!n)
                return -ENOMEM;
        held = n;
        held[n_held++] = (HeldFd) { cd, fd };
        return 0;
}

static void cd_free(struct crypt_device *cd) {
        if (!cd)
                return;
        crypt_free(cd);
        for (size_t i = 0; i < n_held; i++)
                if (held[i].cd == cd) {
                        close(held[i].fd);
                        held[i] = held[--n_held];
                        if (n_held == 0) {
                                free(held);
                                held = NULL;
                        }
                        break;
                }
}

static void crypt_freep(struct crypt_device **cd) {
        cd_free(*cd);
}
#define _cleanup_crypt_ _cleanup_(crypt_freep)

static void crypt_log_cb(int level, const char *msg, void *usrptr) {
        size_t n = strlen(msg);
        /* libcryptsetup's messages end in a newline; they go to debug: we log the outcome once */
        log_debug("libcryptsetup: %.*s", (int) (n > 0 && msg[n - 1] == '\n' ? n - 1 : n), msg);
}

/* ---- registry ---- */

static Volume *volume_free(Volume *v) {
        if (!v)
                return NULL;
        free(v->uuid);
        free(v->path);
        free(v->key_id);
        free(v->vault);
        free(v->mapping);
        free(v->restore_name);
        free(v->lock_reason);
        free(v);
        return NULL;
}

static int set_str(char **p, const char *s) {
        char *n = NULL;
        if (streq_ptr(*p, s))
                return 0;
        if (s && !(n = strdup(s)))
                return -ENOMEM;
        free(*p);
        *p = n;
        return 0;
}

Volume *volume_find(Manager *m, const char *s) {
        VolumeRegistry *reg = m->volumes;

        if (!reg || !s)
                return NULL;
        /* UUID first, then path, then mapping name: a mapping named like another volume's UUID
         * (or path) never shadows that volume */
        for (size_t i = 0; i < reg->n; i++)
                if (streq(reg->volumes[i]->uuid, s))
                        return reg->volumes[i];
        for (size_t i = 0; i < reg->n; i++)
                if (streq_ptr(reg->volumes[i]->path, s))
                        return reg->volumes[i];
        for (size_t i = 0; i < reg->n; i++)
                if (streq_ptr(reg->volumes[i]->mapping, s))
                        return reg->volumes[i];
        return NULL;
}

Volume *volume_find_uuid(Manager *m, const char *uuid) {
        VolumeRegistry *reg = m->volumes;

        if (!reg || !uuid)
                return NULL;
        for (size_t i = 0; i < reg->n; i++)
                if (streq(reg->volumes[i]->uuid, uuid))
                        return reg->volumes[i];
        return NULL;
}

Volume *volume_find_path(Manager *m, const char *path) {
        VolumeRegistry *reg = m->volumes;

        if (!reg || !path)
                return NULL;
        for (size_t i = 0; i < reg->n; i++)
                if (streq_ptr(reg->volumes[i]->path, path))
                        return reg->volumes[i];
        return NULL;
}

static int registry_add(Manager *m, Volume *v) {
        VolumeRegistry *reg = m->volumes;
        Volume **n = realloc(reg->volumes, (reg->n + 1) * sizeof(Volume *));
        if (!n)
                return -ENOMEM;
        reg->volumes = n;
        reg->volumes[reg->n++] = v;
        return 0;
}

int volume_registry_remove(Manager *m, Volume *v) {
        VolumeRegistry *reg = m->volumes;
        for (size_t i = 0; i < reg->n; i++)
                if (reg->volumes[i] == v) {
                        memmove(reg->volumes + i, reg->volumes + i + 1, (reg->n - i - 1) * sizeof(Volume *));
                        reg->n--;
                        volume_free(v);
                        return volume_registry_save(m);
                }
        return -ENOENT;
}

/* A volume's registry entry goes either into a json-c object (volume_to_json) or, for the
 * registry file, straight into a text buffer: the registry is rewritten whole on every change
 * (twice per bind: the intent, then the entry), and at 10,000 volumes building, printing and
 * freeing a json-c tree of it cost ~300 M instructions per save, ~85 % of a bind. One field list
 * (volume_fields) serves both; the text is what json_object_to_json_string_ext() prints with
 * JSON_C_TO_STRING_PRETTY | JSON_C_TO_STRING_NOSLASHESCAPE, byte for byte. */
typedef struct TextBuf {
        char *data;
        size_t size, allocated;
        bool oom;
} TextBuf;

static void text_append(TextBuf *b, const char *s, size_t n) {
        if (b->oom)
                return;
        if (b->size + n + 1 > b->allocated) {
                size_t a = b->allocated > 0 ? b->allocated * 2 : 64 * 1024;
                char *d;

                while (a < b->size + n + 1)
                        a *= 2;
                d = realloc(b->data, a);
                if (!d) {
                        b->oom = true;
                        return;
                }
                b->data = d;
                b->allocated = a;
        }
        memcpy(b->data + b->size, s, n);
        b->size += n;
        b->data[b->size] = 0;
}

static void text_puts(TextBuf *b, const char *s) {
        text_append(b, s, strlen(s));
}

/* a JSON string as json-c escapes it with JSON_C_TO_STRING_NOSLASHESCAPE */
static void text_put_json_string(TextBuf *b, const char *s) {
        static const char hex[] = "0123456789abcdef";
        const char *run = s;

        text_append(b, "\"", 1);
        for (; *s; s++) {
                unsigned char c = (unsigned char) *s;
                char e[7] = "\\";
                size_t n = 2;

                if (c >= ' ' && c != '"' && c != '\\')
                        continue;
                text_append(b, run, (size_t) (s - run));
                run = s + 1;
                switch (c) {
                case '\b': e[1] = 'b'; break;
                case '\n': e[1] = 'n'; break;
                case '\r': e[1] = 'r'; break;
                case '\t': e[1] = 't'; break;
                case '\f': e[1] = 'f'; break;
                case '"': e[1] = '"'; break;
                case '\\': e[1] = '\\'; break;
                default:
                        memcpy(e + 1, "u00", 3);
                        e[4] = hex[c >> 4];
                        e[5] = hex[c & 0xf];
                        n = 6;
                }
                text_append(b, e, n);
        }
        text_append(b, run, (size_t) (s - run));
        text_append(b, "\"", 1);
}

typedef struct FieldSink {
        json_object *object;   /* either this */
        TextBuf *text;         /* or this, one entry of the registry's "volumes" array */
        bool first;
} FieldSink;

static void sink_key(FieldSink *f, const char *key) {
        text_puts(f->text, f->first ? "\n      \"" : ",\n      \"");
        text_puts(f->text, key);
        text_append(f->text, "\":", 2);
        f->first = false;
}

static void put_string(FieldSink *f, const char *key, const char *value) {
        if (f->object) {
                json_object_object_add(f->object, key, json_object_new_string(value));
                return;
        }
        sink_key(f, key);
        text_put_json_string(f->text, value);
}

static void put_int(FieldSink *f, const char *key, int64_t value) {
        char n[32];

        if (f->object) {
                json_object_object_add(f->object, key, json_object_new_int64(value));
                return;
        }
        sink_key(f, key);
        text_append(f->text, n, (size_t) snprintf(n, sizeof(n), "%" PRId64, value));
}

static void put_bool(FieldSink *f, const char *key, bool value) {
        if (f->object) {
                json_object_object_add(f->object, key, json_object_new_boolean(value));
                return;
        }
        sink_key(f, key);
        text_puts(f->text, value ? "true" : "false");
}

static void volume_fields(const Volume *v, FieldSink *f) {
        put_string(f, "uuid", v->uuid);
        if (v->path)
                put_string(f, "path", v->path);
        if (v->key_id)
                put_string(f, "key_id", v->key_id);
        put_int(f, "key_version", v->key_version);
        if (v->vault)
                put_string(f, "vault", v->vault);
        put_int(f, "keyslot", v->keyslot);
        put_int(f, "token", v->token);
        put_string(f, "state", volume_state_to_string(v->state));
        if (v->mapping)
                put_string(f, "mapping", v->mapping);
        put_bool(f, "provider_managed", v->provider_managed);
        put_bool(f, "pending_rewrap", v->pending_rewrap);
        put_bool(f, "suspended", v->suspended);
        put_string(f, "lock", volume_lock_to_string(v->lock));
        if (v->restore_name)
                put_string(f, "restore_name", v->restore_name);
        if (v->lock_reason)
                put_string(f, "lock_reason", v->lock_reason);
        if (v->locked_usec > 0)
                put_int(f, "locked_usec", (int64_t) v->locked_usec);
}

static json_object *volume_to_registry_json(const Volume *v) {
        FieldSink f = { .object = json_object_new_object() };
        volume_fields(v, &f);
        return f.object;
}

void volume_registry_defer_save(Manager *m) {
        m->volumes->save_deferred++;
}

/* Ends a volume_registry_defer_save(); saves when anything changed in between. */
int volume_registry_flush(Manager *m) {
        VolumeRegistry *reg = m->volumes;

        if (reg->save_deferred > 0 && --reg->save_deferred > 0)
                return 0;
        if (!reg->save_pending)
                return 0;
        return volume_registry_save(m);
}

int volume_registry_save(Manager *m) {
        VolumeRegistry *reg = m->volumes;
        TextBuf t = {};
        const char *s;
        int r;

        /* the headers are the truth: an entry left behind by a crash mid-batch is corrected by
         * the next rewrap or scan of that volume */
        if (reg->save_deferred > 0) {
                reg->save_pending = true;
                return 0;
        }
        reg->save_pending = false;
        /* {"version":1,"volumes":[...],"intents":[...]} as json-c prints it pretty (see volume_fields) */
        text_puts(&t, "{\n  \"version\":1,\n  \"volumes\":[\n");
        for (size_t i = 0; i < reg->n; i++) {
                FieldSink f = { .text = &t, .first = true };
                text_puts(&t, i > 0 ? ",\n    {" : "    {");
                volume_fields(reg->volumes[i], &f);
                text_puts(&t, "\n    }");
        }
        text_puts(&t, reg->n > 0 ? "\n  ]" : "  ]");
        if (reg->intents && json_object_array_length(reg->intents) > 0) {
                /* small: json-c prints it; one level deeper, so two more spaces after each newline */
                text_puts(&t, ",\n  \"intents\":");
                for (s = json_object_to_json_string_ext(reg->intents, JSON_C_TO_STRING_PRETTY | JSON_C_TO_STRING_NOSLASHESCAPE);
                     *s; s++) {
                        text_append(&t, s, 1);
                        if (*s == '\n')
                                text_append(&t, "  ", 2);
                }
        }
        text_puts(&t, "\n}");
        r = t.oom ? -ENOMEM : cmek_write_file_atomic(reg->path, t.data, t.size, 0600);
        free(t.data);
        if (r < 0)
                return log_error_errno(r, "Failed to write the volume registry %s: %m", reg->path);
        return 0;
}

static int registry_load(Manager *m) {
        VolumeRegistry *reg = m->volumes;
        _cleanup_free_ char *text = NULL;
        json_object *o = NULL, *a;
        int r;

        r = cmek_read_file(reg->path, REGISTRY_MAX, &text, NULL);
        if (r == -ENOENT)
                return 0;
        if (r < 0)
                return log_error_errno(r, "Failed to read the volume registry %s: %m", reg->path);
        o = json_tokener_parse(text);
        if (!o || !json_object_object_get_ex(o, "volumes", &a) || !json_object_is_type(a, json_type_array)) {
                json_object_put(o);
                /* keep the broken file for inspection; the headers are the truth: rebuild by scanning */
                log_warning("The volume registry %s does not parse, starting empty; "
                            "run 'cmekctl volume scan' to rebuild it.", reg->path);
                return 0;
        }
        if (json_object_object_get_ex(o, "intents", &reg->intents) && json_object_is_type(reg->intents, json_type_array))
                json_object_get(reg->intents);
        else
                reg->intents = NULL;
        for (size_t i = 0; i < json_object_array_length(a); i++) {
                json_object *e = json_object_array_get_idx(a, i);
                const char *uuid = cmek_json_get_string(e, "uuid");
                int64_t n;
                Volume *v;

                if (!uuid)
                        continue;
                v = calloc(1, sizeof(*v));
                if (!v || !(v->uuid = strdup(uuid))) {
                        volume_free(v);
                        json_object_put(o);
                        return -ENOMEM;
                }
                if (set_str(&v->path, cmek_json_get_string(e, "path")) < 0 ||
                    set_str(&v->key_id, cmek_json_get_string(e, "key_id")) < 0 ||
                    set_str(&v->vault, cmek_json_get_string(e, "vault")) < 0 ||
                    set_str(&v->mapping, cmek_json_get_string(e, "mapping")) < 0 ||
                    set_str(&v->restore_name, cmek_json_get_string(e, "restore_name")) < 0 ||
                    set_str(&v->lock_reason, cmek_json_get_string(e, "lock_reason")) < 0) {
                        volume_free(v);
                        json_object_put(o);
                        return -ENOMEM;
                }
                v->key_version = cmek_json_get_int64(e, "key_version", &n) ? (unsigned) n : 0;
                v->keyslot = cmek_json_get_int64(e, "keyslot", &n) ? (int) n : -1;
                v->token = cmek_json_get_int64(e, "token", &n) ? (int) n : -1;
                v->state = volume_state_from_string(cmek_json_get_string(e, "state"));
                if (v->state < 0)
                        v->state = VOLUME_BOUND;
                v->provider_managed = cmek_json_get_bool(e, "provider_managed", false);
                v->pending_rewrap = cmek_json_get_bool(e, "pending_rewrap", false);
                v->suspended = cmek_json_get_bool(e, "suspended", false);
                v->lock = volume_lock_from_string(cmek_json_get_string(e, "lock"));
                if (v->lock < 0)
                        v->lock = v->suspended ? VOLUME_LOCK_SUSPENDED : VOLUME_LOCK_NONE;
                v->locked_usec = cmek_json_get_int64(e, "locked_usec", &n) && n > 0 ? (uint64_t) n : 0;
                r = registry_add(m, v);
                if (r < 0) {
                        volume_free(v);
                        json_object_put(o);
                        return r;
                }
        }
        json_object_put(o);
        return 0;
}

/* ---- intents ----
 * volume create and bind write a LUKS2 header before the registry knows the volume. So they
 * first save an intent {op, uuid, path, keyslot, recovery} in volumes.json (create chooses the
 * LUKS2 UUID itself for that), and drop it in the registry save that registers the volume. A
 * crash in between leaves the intent; volumes_resolve_intents() (at start) finishes it from the
 * header: see there and docs/RELIABILITY.md. */

static json_object *intent_find(Manager *m, const char *op, const char *uuid, const char *path) {
        json_object *a = m->volumes->intents;

        for (size_t i = 0; a && i < json_object_array_length(a); i++) {
                json_object *e = json_object_array_get_idx(a, i);
                if (streq_ptr(cmek_json_get_string(e, "op"), op) && streq_ptr(cmek_json_get_string(e, "uuid"), uuid) &&
                    (!path || streq_ptr(cmek_json_get_string(e, "path"), path)))
                        return e;
        }
        return NULL;
}

/* Drops the intent(s) for uuid (or path) from memory; the caller's next registry save writes it. */
static void intent_drop_full(Manager *m, const char *uuid, const char *path) {
        json_object *a = m->volumes->intents;

        for (size_t i = 0; a && i < json_object_array_length(a);)
                if (streq_ptr(cmek_json_get_string(json_object_array_get_idx(a, i), "uuid"), uuid) ||
                    (path && streq_ptr(cmek_json_get_string(json_object_array_get_idx(a, i), "path"), path)))
                        json_object_array_del_idx(a, i, 1);
                else
                        i++;
}

static void intent_drop(Manager *m, const char *uuid) {
        intent_drop_full(m, uuid, NULL);
}

/* Records and saves an intent: returns only once it is on disk. */
static int intent_save(Manager *m, const char *op, const char *uuid, const char *path, int keyslot, bool recovery) {
        VolumeRegistry *reg = m->volumes;
        json_object *e;
        unsigned d;
        int r;

        if (!reg->intents && !(reg->intents = json_object_new_array()))
                return -ENOMEM;
        intent_drop_full(m, uuid, path);   /* and the one of an earlier attempt at the same path */
        e = json_object_new_object();
        if (!e)
                return -ENOMEM;
        json_object_object_add(e, "op", json_object_new_string(op));
        json_object_object_add(e, "uuid", json_object_new_string(uuid));
        json_object_object_add(e, "path", json_object_new_string(path));
        json_object_object_add(e, "keyslot", json_object_new_int(keyslot));
        json_object_object_add(e, "recovery", json_object_new_boolean(recovery));
        json_object_array_add(reg->intents, e);
        d = reg->save_deferred;
        reg->save_deferred = 0;   /* an intent must reach the disk now, even inside a batch */
        r = volume_registry_save(m);
        reg->save_deferred = d;
        return r;
}

/* ---- LUKS2 header access ---- */

static int luks2_open(const char *path, struct crypt_device **ret) {
        _cleanup_crypt_ struct crypt_device *cd = NULL;
        const char *type;
        int r;

        if (strncmp(path, "/proc/self/fd/", 14) == 0) {
                /* an fd the caller opened and checked (volume-open.c, or a header copy) */
                r = crypt_init(&cd, path);
        } else {
                _cleanup_close_ int fd = open(path, O_RDONLY | O_NONBLOCK | O_NOCTTY | O_CLOEXEC);
                struct stat st;
                char proc[32];

                if (fd < 0)
                        return errno == ENOENT || errno == ENXIO ? -ENODEV : -errno;
                if (fstat(fd, &st) < 0)
                        return -errno;
                if (!S_ISBLK(st.st_mode) && !S_ISREG(st.st_mode))
                        return -ENODEV; /* not what was registered there */
                snprintf(proc, sizeof(proc), "/proc/self/fd/%d", fd);
                r = crypt_init(&cd, proc);
                if (r >= 0) {
                        r = hold_fd(cd, fd);
                        if (r >= 0)
                                TAKE_FD(fd);
                }
        }
        if (r < 0)
                return r == -ENOENT || r == -ENOTBLK ? -ENODEV : r;
        crypt_set_log_callback(cd, crypt_log_cb, NULL);
        r = crypt_load(cd, CRYPT_LUKS, NULL);
        if (r == -EINVAL)
                return -EMEDIUMTYPE;
        if (r < 0)
                return r;
        type = crypt_get_type(cd);
        if (!type || !streq(type, CRYPT_LUKS2))
                return -EMEDIUMTYPE;
        *ret = TAKE_PTR(cd);
        return 0;
}

static int volume_open_header(Volume *v, struct crypt_device **ret);

typedef struct HeaderTokens {
        size_t n;
        int id[CMEK_LUKS2_KEYSLOTS_MAX];
        CmekToken t[CMEK_LUKS2_KEYSLOTS_MAX];
} HeaderTokens;

static void header_tokens_done(HeaderTokens *h) {
        for (size_t i = 0; i < h->n; i++)
                cmek_token_done(&h->t[i]);
        h->n = 0;
}

/* All valid cmek tokens of the header; malformed ones are skipped (and logged). */
static int read_cmek_tokens(struct crypt_device *cd, HeaderTokens *ret) {
        int max = crypt_token_max(CRYPT_LUKS2);

        ret->n = 0;
        for (int id = 0; id < max && ret->n < ARRAY_SIZE(ret->id); id++) {
                const char *type = NULL, *json = NULL, *why = NULL;
                crypt_token_info st = crypt_token_status(cd, id, &type);
                CmekToken t = CMEK_TOKEN_NULL;

                if (st == CRYPT_TOKEN_INACTIVE || st == CRYPT_TOKEN_INVALID || !type || !streq(type, CMEK_TOKEN_TYPE))
                        continue;
                if (crypt_token_json_get(cd, id, &json) < 0)
                        continue;
                if (cmek_token_parse(json, &t, &why) < 0) {
                        log_warning("%s: cmek token %d is malformed (%s), ignoring.", crypt_get_device_name(cd), id, why);
                        continue;
                }
                ret->id[ret->n] = id;
                ret->t[ret->n++] = t;
        }
        return 0;
}

static int count_active_keyslots(struct crypt_device *cd, int except) {
        int max = crypt_keyslot_max(CRYPT_LUKS2), n = 0;
        for (int i = 0; i < max; i++) {
                crypt_keyslot_info st = crypt_keyslot_status(cd, i);
                if (i != except && (st == CRYPT_SLOT_ACTIVE || st == CRYPT_SLOT_ACTIVE_LAST))
                        n++;
        }
        return n;
}

static bool keyslot_active(struct crypt_device *cd, int slot) {
        crypt_keyslot_info st = crypt_keyslot_status(cd, slot);
        return st == CRYPT_SLOT_ACTIVE || st == CRYPT_SLOT_ACTIVE_LAST;
}

static int first_free_keyslot(struct crypt_device *cd) {
        int max = crypt_keyslot_max(CRYPT_LUKS2);
        for (int i = 0; i < max; i++)
                if (crypt_keyslot_status(cd, i) == CRYPT_SLOT_INACTIVE)
                        return i;
        return -ENOSPC;
}

static int write_token(struct crypt_device *cd, int id, const CmekToken *t) {
        _cleanup_free_ char *json = NULL;
        int r = cmek_token_to_json(t, &json);
        if (r < 0)
                return r;
        return crypt_token_json_set(cd, id, json);
}

/* Finishes or undoes an interrupted multi-step procedure (see the top of the file). Afterwards
 * the header has at most one cmek token with a keyslot and no markers. Returns the number of
 * repairs done. */
static int volume_header_repair(struct crypt_device *cd) {
        HeaderTokens h = {};
        int r, repaired = 0;

        r = read_cmek_tokens(cd, &h);
        if (r < 0)
                return r;
        for (size_t i = 0; i < h.n; i++) {
                CmekToken *t = &h.t[i];
                bool successor = false;

                if (t->pending_keyslot >= 0)
                        for (size_t j = 0; j < h.n; j++)
                                if (j != i && h.t[j].keyslot == t->pending_keyslot)
                                        successor = true;
                if (t->keyslot < 0) {
                        /* after d. (or a remove-slot/shred): the keyslot is gone, the token is dead */
                        r = crypt_token_json_set(cd, h.id[i], NULL);
                } else if (t->pending_keyslot >= 0 && successor) {
                        /* after c.: the new token opens the new keyslot; retire the old pair */
                        r = crypt_keyslot_destroy(cd, t->keyslot);
                        cmek_fault("repair-after-keyslot-destroy");
                        if (r >= 0)
                                r = crypt_token_json_set(cd, h.id[i], NULL);
                } else if (t->pending_keyslot >= 0) {
                        /* after a. or b.: undo; the new DEK was never wrapped anywhere */
                        r = 0;
                        if (keyslot_active(cd, t->pending_keyslot))
                                r = crypt_keyslot_destroy(cd, t->pending_keyslot);
                        t->pending_keyslot = -1;
                        if (r >= 0)
                                r = write_token(cd, h.id[i], t);
                } else
                        continue;
                if (r < 0) {
                        header_tokens_done(&h);
                        return log_error_errno(r, "%s: failed to repair an interrupted re-wrap: %m",
                                               crypt_get_device_name(cd));
                }
                log_info("%s: finished an interrupted re-wrap/removal (token %d).", crypt_get_device_name(cd), h.id[i]);
                repaired++;
        }
        header_tokens_done(&h);
        return repaired;
}

/* The one cmek token that opens a keyslot (after repair). -ENOENT when unbound. */
static int find_bound_token(struct crypt_device *cd, int *ret_id, CmekToken *ret) {
        HeaderTokens h = {};
        int r = -ENOENT;

        (void) read_cmek_tokens(cd, &h);
        for (size_t i = 0; i < h.n; i++)
                if (h.t[i].keyslot >= 0 && keyslot_active(cd, h.t[i].keyslot)) {
                        *ret_id = h.id[i];
                        *ret = h.t[i];
                        h.t[i] = (CmekToken) CMEK_TOKEN_NULL;
                        r = 0;
                        break;
                }
        header_tokens_done(&h);
        return r;
}

/* ---- what is on disk, before authorization ---- */

void volume_probe_done(VolumeProbe *p) {
        free(p->uuid);
        free(p->key_id);
        *p = (VolumeProbe) VOLUME_PROBE_NULL;
}

static uint64_t be64(const uint8_t *b) {
        uint64_t v = 0;
        for (int i = 0; i < 8; i++)
                v = v << 8 | b[i];
        return v;
}

/* Copies the LUKS2 header areas (both copies) of fd into a sealed-off memfd the same size as the
 * device (sparse): libcryptsetup reads the caller's header there, and whatever it would "repair"
 * on load is repaired in the copy, never on the caller's file. */
static int header_copy(int fd, const struct stat *st, int *ret) {
        _cleanup_close_ int mfd = -1;
        uint8_t hdr[16];
        uint64_t size, hdr_size, copy;
        ssize_t n;

        if (S_ISBLK(st->st_mode)) {
                if (ioctl(fd, BLKGETSIZE64, &size) < 0)
                        return -errno;
        } else
                size = (uint64_t) st->st_size;
        n = pread(fd, hdr, sizeof(hdr), 0);
        if (n < 0)
                return -errno;
        if (n < (ssize_t) sizeof(hdr) || memcmp(hdr, "LUKS\xba\xbe", 6) != 0)
                return -EMEDIUMTYPE;
        if (hdr[6] != 0 || hdr[7] != 2)
                return -EMEDIUMTYPE; /* LUKS1 */
        hdr_size = be64(hdr + 8);
        /* the sizes LUKS2 allows: 16 KiB .. 4 MiB, powers of two */
        if (hdr_size < 16384 || hdr_size > 4U * 1024U * 1024U || (hdr_size & (hdr_size - 1)))
                return -EMEDIUMTYPE;
        copy = (2 * hdr_size < size ? 2 * hdr_size : size);
        mfd = memfd_create("cmek-header", MFD_CLOEXEC);
        if (mfd < 0)
                return -errno;
        if (ftruncate(mfd, (off_t) (size > copy ? size : copy)) < 0)
                return -errno;
        for (uint64_t off = 0; off < copy;) {
                uint8_t buf[65536];
                n = pread(fd, buf, copy - off < sizeof(buf) ? copy - off : sizeof(buf), (off_t) off);
                if (n < 0)
                        return -errno;
                if (n == 0)
                        break;
                if (pwrite(mfd, buf, (size_t) n, (off_t) off) != n)
                        return -EIO;
                off += (uint64_t) n;
        }
        *ret = TAKE_FD(mfd);
        return 0;
}

int volume_probe(const VolumeFile *f, VolumeProbe *ret) {
        _cleanup_crypt_ struct crypt_device *cd = NULL;
        _cleanup_close_ int mfd = -1;
        CmekToken t = CMEK_TOKEN_NULL;
        VolumeProbe p = VOLUME_PROBE_NULL;
        char path[32];
        int tok, r;

        r = header_copy(f->fd, &f->st, &mfd);
        if (r < 0)
                return r;
        snprintf(path, sizeof(path), "/proc/self/fd/%d", mfd);
        r = luks2_open(path, &cd);
        if (r < 0)
                return r;
        p.uuid = strdup(crypt_get_uuid(cd) ?: "");
        if (!p.uuid)
                return -ENOMEM;
        p.token = -1;
        if (find_bound_token(cd, &tok, &t) >= 0) {
                p.key_id = TAKE_PTR(t.key_id);
                p.keyslot = t.keyslot;
                p.token = tok;
                cmek_token_done(&t);
        }
        *ret = p;
        return 0;
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

static int lookup_key(Manager *m, const char *key_id, KeyInfo *ret) {
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

/* Opens the volume's header at its known path and checks that it is the same volume. */
static int volume_open_header(Volume *v, struct crypt_device **ret) {
        _cleanup_crypt_ struct crypt_device *cd = NULL;
        int r;

        if (!v->path)
                return -ENODEV;
        r = luks2_open(v->path, &cd);
        if (r < 0)
                return r;
        if (!streq_ptr(crypt_get_uuid(cd), v->uuid))
                return -ENODEV; /* something else is at that path now */
        *ret = TAKE_PTR(cd);
        return 0;
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
                v->suspended = false;
                v->lock = VOLUME_LOCK_NONE;
                v->locked_usec = 0;
                free(v->restore_name);
                v->restore_name = NULL;
                free(v->lock_reason);
                v->lock_reason = NULL;
                if (r >= 0)
                        r = volume_registry_save(m);
        }
        cmek_token_done(&t);
        return r < 0 ? r : 0;
}

static void dm_scan_invalidate(void);

int volume_deactivate(Manager *m, Volume *v) {
        int r;

        if (!v->mapping)
                return -ENXIO;
        r = crypt_deactivate(NULL, v->mapping);
        if (r < 0 && r != -ENODEV)
                return r;
        dm_scan_invalidate();
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

/* ---- key hooks ---- */

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

/* Who keeps a mapping open: "open count 1; pid 812 (dd); mounted on /mnt; held by dm-5". NULL
 * when nothing is known. Only for messages: it runs after the locking. */
static char *mapping_users(const char *name) {
        _cleanup_free_ char *holders = NULL;
        struct dm_task *dmt;
        struct dm_info info = {};
        struct stat st = {};
        char *buf = NULL;
        size_t size = 0;
        unsigned n_pids = 0;
        bool found_info;
        FILE *f;
        DIR *d;

        /* the device number from device-mapper, not from /dev/mapper/NAME: without udev,
         * libdevmapper removes that node at a deferred removal although the device stays */
        dmt = dm_task_create(DM_DEVICE_INFO);
        if (!dmt)
                return NULL;
        found_info = dm_task_set_name(dmt, name) && dm_task_run(dmt) && dm_task_get_info(dmt, &info) && info.exists;
        dm_task_destroy(dmt);
        if (!found_info)
                return NULL;
        st.st_rdev = makedev(info.major, info.minor);
        f = open_memstream(&buf, &size);
        if (!f)
                return NULL;
        fprintf(f, "open count %d", info.open_count);
        /* processes with the device open (a file descriptor on /dev/dm-N or /dev/mapper/NAME) */
        d = opendir("/proc");
        for (struct dirent *de; d && (de = readdir(d)) && n_pids < 8;) {
                _cleanup_free_ char *fddir = NULL;
                DIR *fds;
                bool found = false;

                if (!isdigit((unsigned char) de->d_name[0]) || asprintf(&fddir, "/proc/%s/fd", de->d_name) < 0)
                        continue;
                fds = opendir(fddir);
                for (struct dirent *fe; fds && !found && (fe = readdir(fds));) {
                        struct stat fst;
                        if (fe->d_name[0] != '.' && fstatat(dirfd(fds), fe->d_name, &fst, 0) >= 0 &&
                            S_ISBLK(fst.st_mode) && fst.st_rdev == st.st_rdev)
                                found = true;
                }
                if (fds)
                        closedir(fds);
                if (found) {
                        _cleanup_free_ char *commp = NULL, *comm = NULL;
                        if (asprintf(&commp, "/proc/%s/comm", de->d_name) >= 0)
                                (void) cmek_read_file(commp, 64, &comm, NULL);
                        if (comm)
                                comm[strcspn(comm, "\n")] = 0;
                        fprintf(f, "%spid %s (%s)", ftell(f) > 0 ? "; " : "", de->d_name, comm ?: "?");
                        n_pids++;
                }
        }
        if (d)
                closedir(d);
        /* mounts */
        {
                _cleanup_fclose_ FILE *mi = fopen("/proc/self/mountinfo", "re");
                _cleanup_free_ char *line = NULL;
                size_t alloc = 0;
                char want[32];
                snprintf(want, sizeof(want), "%u:%u", major(st.st_rdev), minor(st.st_rdev));
                while (mi && getline(&line, &alloc, mi) > 0) {
                        char devno[32], root[512], mnt[512];
                        if (sscanf(line, "%*s %*s %31s %511s %511s", devno, root, mnt) == 3 && streq(devno, want))
                                fprintf(f, "%smounted on %s", ftell(f) > 0 ? "; " : "", mnt);
                }
        }
        /* stacked devices (LVM, another dm-crypt, md) */
        if (asprintf(&holders, "/sys/dev/block/%u:%u/holders", major(st.st_rdev), minor(st.st_rdev)) >= 0) {
                DIR *hd = opendir(holders);
                for (struct dirent *he; hd && (he = readdir(hd));)
                        if (he->d_name[0] != '.')
                                fprintf(f, "%sheld by %s", ftell(f) > 0 ? "; " : "", he->d_name);
                if (hd)
                        closedir(hd);
        }
        if (fclose(f) != 0 || size == 0) {
                free(buf);
                return NULL;
        }
        return buf;
}

/* Every dm-crypt mapping of a LUKS2 volume, whoever opened it: cmekd, the token plugin at boot
 * (crypttab, systemd-cryptsetup), udev, cryptsetup by hand. libcryptsetup gives the mapping the
 * device-mapper UUID "CRYPT-LUKS2-<volume UUID without dashes>-<name>", which sysfs shows next to
 * the name. One scan of /sys/block serves every lookup for a second. */
static struct {
        struct { char *uuid, *name, *dev; } *maps;     /* dev: the kernel name, "dm-3" */
        size_t n;
        uint64_t usec;
} dm_scan;

static void dm_scan_clear(void) {
        for (size_t i = 0; i < dm_scan.n; i++) {
                free(dm_scan.maps[i].uuid);
                free(dm_scan.maps[i].name);
                free(dm_scan.maps[i].dev);
        }
        free(dm_scan.maps);
        dm_scan.maps = NULL;
        dm_scan.n = 0;
        dm_scan.usec = 0;
}

static void dm_scan_invalidate(void) {
        dm_scan.usec = 0;       /* the next lookup scans again */
}

static char *sysfs_line(const char *dev, const char *attr) {
        char path[PATH_MAX], *buf = NULL;
        size_t n = 0;

        (void) snprintf(path, sizeof(path), "/sys/block/%s/dm/%s", dev, attr);
        if (cmek_read_file(path, 4096, &buf, &n) < 0)
                return NULL;
        while (n > 0 && (buf[n - 1] == '\n' || buf[n - 1] == 0))
                buf[--n] = 0;
        return buf;
}

static void dm_scan_refresh(void) {
        uint64_t now = cmek_monotonic_usec();
        DIR *d;
        struct dirent *de;

        if (dm_scan.usec && now - dm_scan.usec < 1000000ULL)
                return;
        dm_scan_clear();
        dm_scan.usec = now;
        d = opendir("/sys/block");
        if (!d)
                return;
        while ((de = readdir(d))) {
                char *uuid, *name, *dev;
                void *a;
                if (strncmp(de->d_name, "dm-", 3) != 0)
                        continue;
                uuid = sysfs_line(de->d_name, "uuid");
                name = uuid && strncmp(uuid, "CRYPT-LUKS2-", 12) == 0 ? sysfs_line(de->d_name, "name") : NULL;
                dev = name ? strdup(de->d_name) : NULL;
                a = dev ? reallocarray(dm_scan.maps, dm_scan.n + 1, sizeof(*dm_scan.maps)) : NULL;
                if (!a) {
                        free(uuid);
                        free(name);
                        free(dev);
                        continue;
                }
                dm_scan.maps = a;
                dm_scan.maps[dm_scan.n].uuid = uuid;
                dm_scan.maps[dm_scan.n].dev = dev;
                dm_scan.maps[dm_scan.n++].name = name;
        }
        closedir(d);
}

/* The name of an active mapping of the volume, or NULL. */
static const char *mapping_find_by_uuid(const char *uuid) {
        char prefix[sizeof("CRYPT-LUKS2-") + 40];
        size_t k = strlen("CRYPT-LUKS2-");

        if (!uuid)
                return NULL;
        memcpy(prefix, "CRYPT-LUKS2-", k);
        for (const char *c = uuid; *c && k < sizeof(prefix) - 2; c++)
                if (*c != '-')
                        prefix[k++] = *c;
        prefix[k++] = '-';
        prefix[k] = 0;
        dm_scan_refresh();
        for (size_t i = 0; i < dm_scan.n; i++)
                if (strncmp(dm_scan.maps[i].uuid, prefix, k) == 0)
                        return dm_scan.maps[i].name;
        return NULL;
}

/* A bound volume opened outside cmekd (at boot through crypttab and the token plugin, by udev,
 * by hand) is enforced like one cmekd opened: its mapping is adopted. 1 when adopted. */
static int volume_adopt_mapping(Volume *v) {
        const char *name;

        if (v->state != VOLUME_BOUND || v->lock != VOLUME_LOCK_NONE)
                return 0;
        if (v->mapping && crypt_status(NULL, v->mapping) >= CRYPT_ACTIVE)
                return 0;
        name = mapping_find_by_uuid(v->uuid);
        /* the scan may be up to a second old: the mapping must still be there */
        if (!name || streq_ptr(name, v->mapping) || crypt_status(NULL, name) < CRYPT_ACTIVE)
                return 0;
        if (set_str(&v->mapping, name) < 0)
                return -ENOMEM;
        log_info("Volume %s (%s) is open as '%s', opened outside cmekd: enforcing it too.", v->path, v->uuid, name);
        return 1;
}

/* The open count of a mapping from device-mapper; -ENODEV when it does not exist. Asking first
 * spares libcryptsetup's remove retries (a second each) on a busy device. */
static int mapping_open_count(const char *name, bool *ret_suspended) {
        struct dm_task *dmt = dm_task_create(DM_DEVICE_INFO);
        struct dm_info info = {};
        int r = -ENODEV;

        if (!dmt)
                return -ENOMEM;
        if (dm_task_set_name(dmt, name) && dm_task_run(dmt) && dm_task_get_info(dmt, &info) && info.exists) {
                r = info.open_count;
                if (ret_suspended)
                        *ret_suspended = info.suspended;
        }
        dm_task_destroy(dmt);
        return r;
}

/* What crypt_suspend() does, without loading the LUKS2 header first (that costs more than the
 * rest under emulation, times the number of volumes): suspend without flushing (I/O is held,
 * nothing lost), wipe the key in dm-crypt, and revoke the kernel keyring copy libcryptsetup
 * made at activation (a logon key in this thread's keyring, named in the table). */
static int mapping_suspend_wipe(const char *name) {
        _cleanup_free_ char *desc = NULL;
        struct dm_task *dmt;
        uint64_t start, length;
        char *type = NULL, *params = NULL;
        int r = -EIO;

        dmt = dm_task_create(DM_DEVICE_TABLE);
        if (!dmt)
                return -ENOMEM;
        if (dm_task_secure_data(dmt) && dm_task_set_name(dmt, name) && dm_task_run(dmt)) {
                (void) dm_get_next_target(dmt, NULL, &start, &length, &type, &params);
                if (!type || !streq(type, "crypt"))
                        r = -EMEDIUMTYPE;
                else {
                        /* "cipher key iv_offset ...": a keyring key is ":SIZE:logon:DESCRIPTION" */
                        const char *k = strchr(params ?: "", ' ');
                        if (k && strncmp(k + 1, ":", 1) == 0) {
                                const char *d = strstr(k + 1, ":logon:");
                                if (d)
                                        desc = strndup(d + 7, strcspn(d + 7, " "));
                        }
                        r = 0;
                }
        }
        dm_task_destroy(dmt); /* secure data: libdevmapper wipes the table buffer */
        if (r < 0)
                return r;

        dmt = dm_task_create(DM_DEVICE_SUSPEND);
        if (!dmt)
                return -ENOMEM;
        r = dm_task_set_name(dmt, name) && dm_task_no_flush(dmt) && dm_task_skip_lockfs(dmt) && dm_task_run(dmt) ? 0 : -EIO;
        dm_task_destroy(dmt);
        if (r < 0)
                return r;
        dmt = dm_task_create(DM_DEVICE_TARGET_MSG);
        if (!dmt)
                return -ENOMEM;
        r = dm_task_set_name(dmt, name) && dm_task_set_sector(dmt, 0) && dm_task_set_message(dmt, "key wipe") &&
            dm_task_run(dmt) ? 0 : -EIO;
        dm_task_destroy(dmt);
        if (r < 0)
                return r;       /* suspended, key not wiped: the caller reports the failure */
        if (desc) {
                long id = syscall(SYS_keyctl, KEYCTL_SEARCH, KEY_SPEC_THREAD_KEYRING, "logon", desc, 0);
                if (id >= 0) {
                        (void) syscall(SYS_keyctl, KEYCTL_REVOKE, id);
                        (void) syscall(SYS_keyctl, KEYCTL_UNLINK, id, KEY_SPEC_THREAD_KEYRING);
                }
        }
        return 0;
}

/* ---- enforcement from the kernel ----
 * The registry says which volumes a key wraps, but an entry can be wrong (repointed at another
 * file that carries the same UUID, edited by hand, lost), and lock-on-disable must not depend on
 * it: a locking pass also asks the kernel. Every active dm-crypt mapping of a LUKS2 volume ->
 * the one block device under it (sysfs slaves/) -> that device's LUKS2 header -> the keys its
 * cmek tokens name. What a header names is cached per device number, header sequence id and
 * UUID: a pass reads the 512-byte binary header of each mapping (one pread, no libcryptsetup)
 * and loads the JSON area only when that changed. Never blocks on a suspended device below. */
typedef struct KernelHeader {
        dev_t devno;
        uint64_t seqid;
        char uuid[40];
        char **key_ids;         /* NULL-terminated */
} KernelHeader;

static struct {
        KernelHeader *h;
        size_t n;
        /* the mappings locked from the kernel side only, by name: not locked again while they
         * stay suspended */
        char **locked;
        size_t n_locked;
} kscan;

static void strv_free_(char **l) {
        for (char **p = l; p && *p; p++)
                free(*p);
        free(l);
}

static void kscan_clear(void) {
        for (size_t i = 0; i < kscan.n; i++)
                strv_free_(kscan.h[i].key_ids);
        free(kscan.h);
        for (size_t i = 0; i < kscan.n_locked; i++)
                free(kscan.locked[i]);
        free(kscan.locked);
        kscan = (typeof(kscan)) {};
}

static bool kscan_is_locked(const char *name) {
        for (size_t i = 0; i < kscan.n_locked; i++)
                if (streq(kscan.locked[i], name))
                        return true;
        return false;
}

static void kscan_set_locked(const char *name) {
        char **a;

        if (kscan_is_locked(name))
                return;
        a = reallocarray(kscan.locked, kscan.n_locked + 1, sizeof(char *));
        if (!a)
                return;
        kscan.locked = a;
        if ((kscan.locked[kscan.n_locked] = strdup(name)))
                kscan.n_locked++;
}

/* Does the device-mapper UUID "CRYPT-LUKS2-<uuid without dashes>-<name>" belong to this LUKS UUID? */
static bool dm_uuid_is_volume(const char *dm_uuid, const char *luks_uuid) {
        const char *p;

        if (!dm_uuid || !luks_uuid || strncmp(dm_uuid, "CRYPT-LUKS2-", 12) != 0)
                return false;
        p = dm_uuid + 12;
        for (const char *c = luks_uuid; *c; c++) {
                if (*c == '-')
                        continue;
                if (tolower((unsigned char) *p) != tolower((unsigned char) *c))
                        return false;
                p++;
        }
        return *p == '-';
}

/* The one block device under a dm-crypt mapping: its kernel name ("loop0", "sda2") and number. */
static int mapping_backing_device(const char *dmdev, char **ret_name, dev_t *ret_devno) {
        _cleanup_free_ char *name = NULL, *s = NULL;
        char path[PATH_MAX];
        unsigned n = 0, ma, mi;
        DIR *d;

        (void) snprintf(path, sizeof(path), "/sys/block/%s/slaves", dmdev);
        d = opendir(path);
        if (!d)
                return -errno;
        for (struct dirent *de; (de = readdir(d));) {
                if (de->d_name[0] == '.')
                        continue;
                n++;
                free(name);
                name = strdup(de->d_name);
        }
        closedir(d);
        if (n != 1)
                return n == 0 ? -ENXIO : -ENOTUNIQ;
        if (!name)
                return -ENOMEM;
        (void) snprintf(path, sizeof(path), "/sys/class/block/%s/dev", name);
        if (cmek_read_file(path, 64, &s, NULL) < 0 || sscanf(s, "%u:%u", &ma, &mi) != 2)
                return -ENXIO;
        *ret_devno = makedev(ma, mi);
        *ret_name = TAKE_PTR(name);
        return 0;
}

/* Opens /dev/NAME without blocking and checks that it is the block device DEVNO. A suspended
 * device-mapper device would hold any read forever: -EAGAIN. */
static int backing_open(const char *name, dev_t devno) {
        char path[PATH_MAX];
        struct stat st;
        int fd;

        if (strncmp(name, "dm-", 3) == 0) {
                _cleanup_free_ char *suspended = sysfs_line(name, "suspended");
                if (!suspended || !streq(suspended, "0"))
                        return -EAGAIN;
        }
        (void) snprintf(path, sizeof(path), "/dev/%s", name);
        for (char *c = path + 5; *c; c++)
                if (*c == '!')
                        *c = '/';       /* sysfs "cciss!c0d0" is /dev/cciss/c0d0 */
        fd = open(path, O_RDONLY | O_NONBLOCK | O_NOCTTY | O_CLOEXEC);
        if (fd < 0)
                return -errno;
        if (fstat(fd, &st) < 0 || !S_ISBLK(st.st_mode) || st.st_rdev != devno) {
                close(fd);
                return -ENXIO;
        }
        return fd;
}

/* The keys named by the cmek tokens of the LUKS2 header on FD (the device DEVNO), from the cache
 * when the binary header did not change. Borrowed, valid until the next call. -EMEDIUMTYPE when
 * there is no LUKS2 header (a detached header, a header wiped under a live mapping). */
static int backing_header_keys(int fd, dev_t devno, const char **ret_uuid, char ***ret_keys) {
        _cleanup_crypt_ struct crypt_device *cd = NULL;
        HeaderTokens tokens = {};
        uint8_t bin[512];
        char fdpath[64], uuid[40];
        uint64_t seqid;
        uint16_t version;
        KernelHeader *h = NULL;
        char **keys;
        int r;

        if (pread(fd, bin, sizeof(bin), 0) != (ssize_t) sizeof(bin))
                return -EIO;
        memcpy(&version, bin + 6, sizeof(version));
        if (memcmp(bin, "LUKS\xba\xbe", 6) != 0 || be16toh(version) != 2)
                return -EMEDIUMTYPE;
        memcpy(&seqid, bin + 16, sizeof(seqid));
        seqid = be64toh(seqid);
        memcpy(uuid, bin + 168, sizeof(uuid));
        uuid[sizeof(uuid) - 1] = 0;
        for (size_t i = 0; i < kscan.n; i++)
                if (kscan.h[i].devno == devno) {
                        h = &kscan.h[i];
                        if (h->seqid == seqid && streq(h->uuid, uuid)) {
                                *ret_uuid = h->uuid;
                                *ret_keys = h->key_ids;
                                return 0;
                        }
                }

        /* libcryptsetup on the descriptor checked above: the checksums, the newer of the two copies */
        (void) snprintf(fdpath, sizeof(fdpath), "/proc/self/fd/%d", fd);
        r = crypt_init(&cd, fdpath);
        if (r < 0)
                return r;
        crypt_set_log_callback(cd, crypt_log_cb, NULL);
        r = crypt_load(cd, CRYPT_LUKS2, NULL);
        if (r < 0)
                return r == -EINVAL ? -EMEDIUMTYPE : r;
        (void) read_cmek_tokens(cd, &tokens);
        keys = calloc(tokens.n + 1, sizeof(char *));
        for (size_t i = 0; keys && i < tokens.n; i++)
                if (!(keys[i] = strdup(tokens.t[i].key_id))) {
                        strv_free_(keys);
                        keys = NULL;
                }
        header_tokens_done(&tokens);
        if (!keys)
                return -ENOMEM;
        if (!h) {
                KernelHeader *a = reallocarray(kscan.h, kscan.n + 1, sizeof(*kscan.h));
                if (!a) {
                        strv_free_(keys);
                        return -ENOMEM;
                }
                kscan.h = a;
                h = &kscan.h[kscan.n++];
                *h = (KernelHeader) { .devno = devno };
        }
        strv_free_(h->key_ids);
        h->key_ids = keys;
        h->seqid = seqid;
        /* the UUID libcryptsetup validated (it may come from the secondary copy) */
        (void) snprintf(h->uuid, sizeof(h->uuid), "%s", strempty(crypt_get_uuid(cd)));
        *ret_uuid = h->uuid;
        *ret_keys = h->key_ids;
        return 0;
}

/* The keys the on-disk header of the active mapping dm_scan.maps[i] names, and its backing
 * device's name ("loop3") for messages. */
static int mapping_header_keys(size_t i, char **ret_backing, char **ret_uuid, char ***ret_keys) {
        _cleanup_free_ char *backing = NULL;
        const char *uuid = NULL;
        dev_t devno;
        int fd, r;

        r = mapping_backing_device(dm_scan.maps[i].dev, &backing, &devno);
        if (r < 0)
                return r;
        fd = backing_open(backing, devno);
        if (fd < 0)
                return fd;
        r = backing_header_keys(fd, devno, &uuid, ret_keys);
        close(fd);
        if (r < 0)
                return r;
        /* a header that is not the mapping's volume any more says nothing about its key */
        if (!dm_uuid_is_volume(dm_scan.maps[i].uuid, uuid))
                return -EXDEV;
        if (ret_uuid && !(*ret_uuid = strdup(uuid)))
                return -ENOMEM;
        *ret_backing = TAKE_PTR(backing);
        return 0;
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
        dm_scan_refresh();
        for (size_t i = 0; i < dm_scan.n; i++) {
                _cleanup_free_ char *backing = NULL, *uuid = NULL;
                const char *name = dm_scan.maps[i].name;
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
                if (suspended && kscan_is_locked(name))
                        continue;
                r = mapping_header_keys(i, &backing, &uuid, &keys);
                if (r < 0) {
                        if (r != -EMEDIUMTYPE)
                                log_warning_errno(r, "Cannot read the LUKS2 header under mapping '%s' (%s), "
                                                  "cannot tell whether key %s opens it: %m", name, dm_scan.maps[i].dev, key_id);
                        continue;
                }
                if (!strv_contains_(keys, key_id))
                        continue;
                r = mapping_suspend_wipe(name);
                if (r >= 0)
                        kscan_set_locked(name);
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
static void kernel_keys_collect(char ***ids, size_t *n) {
        dm_scan_refresh();
        for (size_t i = 0; i < dm_scan.n; i++) {
                _cleanup_free_ char *backing = NULL;
                char **keys = NULL;

                if (mapping_header_keys(i, &backing, NULL, &keys) < 0)
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
        dm_scan_invalidate();
        for (size_t i = 0; i < reg->n; i++) {
                if (!streq_ptr(reg->volumes[i]->key_id, key_id))
                        continue;
                (void) volume_adopt_mapping(reg->volumes[i]);
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
        kernel_keys_collect(&ids, &n);
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
        v->lock = VOLUME_LOCK_NONE;
        v->suspended = false;
        v->locked_usec = 0;
        free(v->restore_name);
        v->restore_name = NULL;
        free(v->lock_reason);
        v->lock_reason = NULL;
        return volume_registry_save(m);
}

/* AVAILABLE, UNAVAILABLE (with why) or UNRECOVERABLE. */
static const char *volume_availability(const Volume *v, const char *key_state, char **ret_reason) {
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
        d = json_object_new_object();
        json_object_object_add(d, "key_id", json_object_new_string(key_id));
        json_object_object_add(d, "key_state", json_object_new_string("ENABLED"));
        json_object_object_add(d, "version", json_object_new_int64(new_version));
        json_object_object_add(d, "trigger", json_object_new_string("rotation"));
        json_object_object_add(d, "total", json_object_new_int64(total));
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
        d = json_object_new_object();
        json_object_object_add(d, "key_id", json_object_new_string(key_id));
        json_object_object_add(d, "key_state", json_object_new_string("ENABLED"));
        json_object_object_add(d, "version", json_object_new_int64(new_version));
        json_object_object_add(d, "trigger", json_object_new_string("rotation"));
        json_object_object_add(d, "total", json_object_new_int64(total));
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

int volumes_init(Manager *m) {
        VolumeRegistry *reg;
        int r;

        /* never dlopen our own token plugin into the daemon: it would call the daemon */
        crypt_token_external_disable();
        crypt_set_log_callback(NULL, crypt_log_cb, NULL);
        cmek_fault_enable(m->test_hooks);
        reg = calloc(1, sizeof(*reg));
        if (!reg)
                return -ENOMEM;
        if (asprintf(&reg->path, "%s/" REGISTRY_FILE, m->state_dir) < 0) {
                free(reg);
                return -ENOMEM;
        }
        m->volumes = reg;
        volumes_apply_config(m);
        r = registry_load(m);
        if (r < 0)
                return r;
        (void) volumes_resolve_intents(m);
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

void volumes_done(Manager *m) {
        VolumeRegistry *reg = m->volumes;
        if (!reg)
                return;
        sd_event_source_disable_unref(reg->watch);
        dm_scan_clear();
        kscan_clear();
        for (size_t i = 0; i < reg->n; i++)
                volume_free(reg->volumes[i]);
        free(reg->volumes);
        free(reg->path);
        json_object_put(reg->intents);
        free(reg);
        m->volumes = NULL;
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
        if (volume_adopt_mapping(v) > 0)
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
