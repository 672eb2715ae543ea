/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* The volume registry (volumes.json, a cache of what the headers say): Volume objects, lookup,
 * load and save (deferred for batches), the text writer of the registry file, and the intents
 * that make create and bind crash-safe between a header write and the registry save. */
#include <inttypes.h>
#include <stdio.h>

#include "cmek-log.h"
#include "cmek-util.h"
#include "cmek-varlink.h"
#include "volume-registry.h"

#define REGISTRY_FILE "volumes.json"
#define REGISTRY_MAX (64U * 1024U * 1024U)

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

const char *volume_state_to_string(VolumeState s) {
        return s >= 0 && s < _VOLUME_STATE_MAX ? volume_state_table[s] : NULL;
}

VolumeState volume_state_from_string(const char *s) {
        return (VolumeState) cmek_string_table_lookup(volume_state_table, _VOLUME_STATE_MAX, s);
}

/* ---- registry ---- */

Volume *volume_free(Volume *v) {
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

int set_str(char **p, const char *s) {
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

        Volume *v;

        if (!reg || !s)
                return NULL;
        /* UUID first, then path, then mapping name: a mapping named like another volume's UUID
         * (or path) never shadows that volume */
        v = volume_find_uuid(m, s) ?: volume_find_path(m, s);
        if (v)
                return v;
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

int registry_add(Manager *m, Volume *v) {
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

json_object *volume_to_registry_json(const Volume *v) {
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

int registry_load(Manager *m) {
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

json_object *intent_find(Manager *m, const char *op, const char *uuid, const char *path) {
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

void intent_drop(Manager *m, const char *uuid) {
        intent_drop_full(m, uuid, NULL);
}

/* Records and saves an intent: returns only once it is on disk. */
int intent_save(Manager *m, const char *op, const char *uuid, const char *path, int keyslot, bool recovery) {
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

/* ---- the registry's lifetime (volumes_init()/volumes_done() in volume.c) ---- */

int volume_registry_new(Manager *m) {
        VolumeRegistry *reg;

        reg = calloc(1, sizeof(*reg));
        if (!reg)
                return -ENOMEM;
        if (asprintf(&reg->path, "%s/" REGISTRY_FILE, m->state_dir) < 0) {
                free(reg);
                return -ENOMEM;
        }
        m->volumes = reg;
        return 0;
}

void volume_registry_free(Manager *m) {
        VolumeRegistry *reg = m->volumes;

        if (!reg)
                return;
        for (size_t i = 0; i < reg->n; i++)
                volume_free(reg->volumes[i]);
        free(reg->volumes);
        free(reg->path);
        json_object_put(reg->intents);
        free(reg);
        m->volumes = NULL;
}
