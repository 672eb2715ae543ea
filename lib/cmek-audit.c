/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* The append-only, hash-chained audit log (format and limits: cmek-audit.h, docs/audit.md). */
#include <fcntl.h>
#include <inttypes.h>
#include <libgen.h>
#include <stdio.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/uio.h>
#include <syslog.h>
#include <time.h>

#include <openssl/evp.h>
#include <systemd/sd-journal.h>

#include "cmek-audit.h"
#include "cmek-fault.h"
#include "cmek-log.h"
#include "cmek-util.h"

#define HASH_HEX_LEN 64
#define HASH_MARKER ",\"hash\":\""
/* The fixed end of every line (without the newline): ,"hash":"<64 hex>"} */
#define HASH_SUFFIX_LEN (sizeof(HASH_MARKER) - 1 + HASH_HEX_LEN + 2)
#define ZERO_HASH "0000000000000000000000000000000000000000000000000000000000000000"
/* A torn tail is at most one line, and the line before it at most another. */
#define TAIL_WINDOW (2 * (size_t) CMEK_AUDIT_LINE_MAX)

struct CmekAudit {
        int fd;
        unsigned flags;
        uint64_t seq;                     /* of the last line; 0 for an empty log */
        char hash[HASH_HEX_LEN + 1];      /* of the last line, or ZERO_HASH */
        off_t size;                       /* end of the last complete line */
        uint64_t recovered_bytes;
        bool broken;                      /* fdatasync() failed: the state of the file is unknown */
        bool unsynced;                    /* group commit: appended, not yet fdatasync()ed */
};

enum subject { SUBJECT_NONE, SUBJECT_KEY, SUBJECT_VOLUME };

/* MESSAGE_IDs are a stable interface (journalctl MESSAGE_ID=...): never change or reuse one.
 * Keep this table and docs/audit.md in sync. */
static const struct {
        const char *event;
        const char *message_id;
        int priority;
        enum subject subject;
        const char *text;
} event_table[] = {
        { "key.created",            "a067c3d257d840e284f127ae58a1a430", LOG_NOTICE,  SUBJECT_KEY,    "created" },
        { "key.enabled",            "e0310e83a4a84c98bf34c93f9130f319", LOG_NOTICE,  SUBJECT_KEY,    "enabled" },
        { "key.disabled",           "a158c1d273934e3dbd7b5ab6862aaf48", LOG_NOTICE,  SUBJECT_KEY,    "disabled" },
        { "key.rotated",            "2574aedf8387423ca2426c65b13cd42e", LOG_NOTICE,  SUBJECT_KEY,    "rotated" },
        { "key.imported",           "b4014d6a53ea4fda933923e8ee075f23", LOG_NOTICE,  SUBJECT_KEY,    "imported" },
        { "key.deletion-scheduled", "c71e98394e964a58bd0c258c35ee6446", LOG_WARNING, SUBJECT_KEY,    "scheduled for deletion" },
        { "key.deletion-cancelled", "49e6712673a44085b3bf8ca0492cb516", LOG_NOTICE,  SUBJECT_KEY,    "deletion cancelled" },
        { "key.deleted",            "94780b68a689457988da36fe80b4a01d", LOG_WARNING, SUBJECT_KEY,    "deleted" },
        { "key.used",               "f999a6a852114e3fb768b88bdc492baa", LOG_INFO,    SUBJECT_KEY,    "used" },
        { "volume.bound",           "ddf262fee09e46bfbc5173c16dd7feb3", LOG_NOTICE,  SUBJECT_VOLUME, "bound" },
        { "volume.unbound",         "024b780cce2642fe9b5d2a4736191943", LOG_NOTICE,  SUBJECT_VOLUME, "unbound" },
        { "volume.key-changed",     "f79fbbf729b24b1698f817e0480f354a", LOG_NOTICE,  SUBJECT_VOLUME, "key changed" },
        { "volume.unlocked",        "f933e4c33b9e4160ba2ded77ae2b1e7d", LOG_INFO,    SUBJECT_VOLUME, "unlocked" },
        { "volume.locked",          "aa401c76cd884979ba22dfc2e16e085f", LOG_INFO,    SUBJECT_VOLUME, "locked" },
        { "volume.restored",        "c35ef6b75417404a88fba79409217091", LOG_NOTICE,  SUBJECT_VOLUME, "restored" },
        { "volume.unrecoverable",   "6bfefa736593475abfae564de411cde5", LOG_CRIT,    SUBJECT_VOLUME, "is unrecoverable" },
        { "rewrap.started",         "753e7e5681fd4e7ba1ef370fc2134d11", LOG_INFO,    SUBJECT_NONE,   "Rewrap started" },
        { "rewrap.completed",       "016775e10217438ea91ab1e2ce703982", LOG_INFO,    SUBJECT_NONE,   "Rewrap completed" },
        { "policy.reloaded",        "164c49e6510f4acfbbac6a4235b497c4", LOG_NOTICE,  SUBJECT_NONE,   "Policy reloaded" },
        { "policy.denied",          "413ac0cf2f05416ebb9c2f9e5145fa1e", LOG_WARNING, SUBJECT_NONE,   "Access denied" },
        { "config.reloaded",        "5b640ab24568444a8e68ea0184a1b4c5", LOG_NOTICE,  SUBJECT_NONE,   "Configuration reloaded" },
        { "daemon.started",         "ff2548a2503841e1879b0d608b6a21fa", LOG_INFO,    SUBJECT_NONE,   "cmekd started" },
        { "daemon.stopped",         "c6c6cb75e93a4551bce6e83594ad38e7", LOG_INFO,    SUBJECT_NONE,   "cmekd stopped" },
        { "audit.recovered",        "9f49ca18a28c4218b9d36f03d12c7d1f", LOG_WARNING, SUBJECT_NONE,   "Audit log recovered" },
        { "audit.checkpoint",       "ddaf5b5e144a48f9a7aa1be5161f025d", LOG_DEBUG,   SUBJECT_NONE,   "Audit checkpoint" },
        { "audit.discontinuity",    "6664d72027b348db90223ec16cff0ce3", LOG_CRIT,    SUBJECT_NONE,   "Audit log discontinuity" },
        { "audit.resumed",          "d1210d084d8a4992ab2bdad69b4f8461", LOG_WARNING, SUBJECT_NONE,   "Audit log writable again" },
};
#define GENERIC_MESSAGE_ID "182980df332147e9b14176c7edffcd09"

static int event_index(const char *event) {
        if (!event)
                return -1;
        for (size_t i = 0; i < ARRAY_SIZE(event_table); i++)
                if (streq(event_table[i].event, event))
                        return (int) i;
        return -1;
}

const char *cmek_audit_message_id(const char *event) {
        int i = event_index(event);
        return i >= 0 ? event_table[i].message_id : GENERIC_MESSAGE_ID;
}

static int sha256_hex(const void *data, size_t size, char ret[static HASH_HEX_LEN + 1]) {
        static const char hex[] = "0123456789abcdef";
        unsigned char md[EVP_MAX_MD_SIZE];
        unsigned int n = 0;

        if (EVP_Digest(data, size, md, &n, EVP_sha256(), NULL) != 1 || n * 2 != HASH_HEX_LEN)
                return -EIO;
        for (unsigned i = 0; i < n; i++) {
                ret[2 * i] = hex[md[i] >> 4];
                ret[2 * i + 1] = hex[md[i] & 15];
        }
        ret[HASH_HEX_LEN] = 0;
        return 0;
}

static bool is_hash_hex(const char *s, size_t n) {
        if (n != HASH_HEX_LEN)
                return false;
        for (size_t i = 0; i < n; i++)
                if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
                        return false;
        return true;
}

/* Strict parse of exactly [line, line+len) as one JSON object. */
static json_object *parse_object(const char *line, size_t len) {
        json_tokener *tok;
        json_object *o;

        if (len == 0 || len > INT32_MAX || memchr(line, 0, len))
                return NULL;
        tok = json_tokener_new();
        if (!tok)
                return NULL;
        json_tokener_set_flags(tok, JSON_TOKENER_STRICT);
        o = json_tokener_parse_ex(tok, line, (int) len);
        if (o && (json_tokener_get_error(tok) != json_tokener_success ||
                  json_tokener_get_parse_end(tok) != len || !json_object_is_type(o, json_type_object))) {
                json_object_put(o);
                o = NULL;
        }
        json_tokener_free(tok);
        return o;
}

/* Checks one line on its own (without its newline): JSON object, hash last and recomputing,
 * seq and prev well-formed. Returns NULL and fills the ret_* on success, else a reason. */
static const char *line_check(const char *line, size_t len, uint64_t *ret_seq,
                              char ret_prev[static HASH_HEX_LEN + 1], char ret_hash[static HASH_HEX_LEN + 1]) {
        json_object *o, *v;
        const char *sfx, *s;
        char computed[HASH_HEX_LEN + 1];
        const char *reason = NULL;
        int64_t seq = 0;

        o = parse_object(line, len);
        if (!o)
                return "not JSON";

        sfx = line + len - HASH_SUFFIX_LEN;
        if (len < HASH_SUFFIX_LEN + 1 || memcmp(sfx, HASH_MARKER, sizeof(HASH_MARKER) - 1) != 0 ||
            !is_hash_hex(sfx + sizeof(HASH_MARKER) - 1, HASH_HEX_LEN) || memcmp(line + len - 2, "\"}", 2) != 0) {
                reason = "no well-formed \"hash\" field at the end";
                goto out;
        }
        if (sha256_hex(line, len - HASH_SUFFIX_LEN, computed) < 0) {
                reason = "cannot compute SHA-256";
                goto out;
        }
        if (memcmp(computed, sfx + sizeof(HASH_MARKER) - 1, HASH_HEX_LEN) != 0) {
                reason = "hash mismatch (line edited)";
                goto out;
        }
        if (!json_object_object_get_ex(o, "seq", &v) || !json_object_is_type(v, json_type_int) ||
            (seq = json_object_get_int64(v)) < 1) {
                reason = "\"seq\" missing or not a positive integer";
                goto out;
        }
        if (!json_object_object_get_ex(o, "prev", &v) || !json_object_is_type(v, json_type_string) ||
            !is_hash_hex((s = json_object_get_string(v)), (size_t) json_object_get_string_len(v))) {
                reason = "\"prev\" missing or not a SHA-256 hex string";
                goto out;
        }

        *ret_seq = (uint64_t) seq;
        memcpy(ret_prev, s, HASH_HEX_LEN + 1);
        memcpy(ret_hash, computed, HASH_HEX_LEN + 1);
out:
        json_object_put(o);
        return reason;
}

/* Length of the valid UTF-8 sequence at s (at most n bytes), or 0. */
static size_t utf8_len(const unsigned char *s, size_t n) {
        size_t len;
        uint32_t cp, min;

        if (s[0] < 0x80)
                return 1;
        if ((s[0] & 0xe0) == 0xc0)
                len = 2, cp = s[0] & 0x1f, min = 0x80;
        else if ((s[0] & 0xf0) == 0xe0)
                len = 3, cp = s[0] & 0x0f, min = 0x800;
        else if ((s[0] & 0xf8) == 0xf0)
                len = 4, cp = s[0] & 0x07, min = 0x10000;
        else
                return 0;
        if (n < len)
                return 0;
        for (size_t i = 1; i < len; i++) {
                if ((s[i] & 0xc0) != 0x80)
                        return 0;
                cp = (cp << 6) | (s[i] & 0x3f);
        }
        if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
                return 0;
        return len;
}

/* A JSON string for s; invalid UTF-8 bytes become U+FFFD so every line stays valid JSON for
 * any reader (json-c escapes quotes, backslashes and control characters itself). */
static int add_string(json_object *o, const char *key, const char *s, size_t max) {
        _cleanup_free_ char *clean = NULL;
        const unsigned char *p = (const unsigned char *) s;
        size_t n, k = 0;
        json_object *v;

        if (!s)
                return 0;
        n = strlen(s);
        for (size_t i = 0; i < n;) {
                size_t l = utf8_len(p + i, n - i);
                if (l == 0) {
                        if (!clean) {
                                clean = malloc(n * 3 + 1);
                                if (!clean)
                                        return -ENOMEM;
                                memcpy(clean, s, i);
                                k = i;
                        }
                        memcpy(clean + k, "\xef\xbf\xbd", 3);
                        k += 3;
                        i++;
                        continue;
                }
                if (clean) {
                        memcpy(clean + k, s + i, l);
                        k += l;
                }
                i += l;
        }
        if (clean)
                clean[k] = 0;
        else
                k = n;
        size_t cut = k, cost = 0;
        for (size_t i = 0; max > 0 && i < k; i++) {
                /* what the byte costs in the line once json-c escaped it */
                unsigned char ch = (unsigned char) (clean ?: s)[i];
                cost += ch < 0x20 ? 6 : (ch == '"' || ch == '\\') ? 2 : 1;
                if (cost > max) {
                        cut = i;
                        break;
                }
        }
        if (cut < k) {
                /* Capped, never dropped: keep a valid UTF-8 prefix and say how much was cut. */
                char *t = malloc(cut + 64);
                const char *src = clean ?: s;

                if (!t)
                        return -ENOMEM;
                while (cut > 0 && (((unsigned char) src[cut]) & 0xc0) == 0x80)
                        cut--;
                memcpy(t, src, cut);
                (void) snprintf(t + cut, 64, "...[truncated %zu bytes]", k - cut);
                free(clean);
                clean = t;
        }
        v = json_object_new_string(clean ?: s);
        if (!v || json_object_object_add(o, key, v) < 0) {
                json_object_put(v);
                return -ENOMEM;
        }
        return 0;
}

static int add_int(json_object *o, const char *key, int64_t i) {
        json_object *v = json_object_new_int64(i);
        if (!v || json_object_object_add(o, key, v) < 0) {
                json_object_put(v);
                return -ENOMEM;
        }
        return 0;
}

static int format_time(uint64_t usec, char ret[static 32]) {
        time_t t = (time_t) (usec / 1000000U);
        struct tm tm;

        if (!gmtime_r(&t, &tm) || strftime(ret, 21, "%Y-%m-%dT%H:%M:%S", &tm) != 19)
                return -ERANGE;
        (void) snprintf(ret + 19, 32 - 19, ".%06uZ", (unsigned) (usec % 1000000U));
        return 0;
}

/* Builds the complete line, newline included. */
static int build_line(const CmekAudit *a, const CmekAuditEntry *e, uint64_t now_usec,
                      char **ret_line, size_t *ret_len, char ret_hash[static HASH_HEX_LEN + 1]) {
        json_object *o;
        const char *s;
        char ts[32], hash[HASH_HEX_LEN + 1];
        _cleanup_free_ char *line = NULL;
        size_t n;
        int r;

        r = format_time(now_usec, ts);
        if (r < 0)
                return r;
        o = json_object_new_object();
        if (!o)
                return -ENOMEM;
        /* The order here is the order in the file; "prev" last so "hash" can follow it. */
        r = add_int(o, "seq", (int64_t) (a->seq + 1));
        if (r >= 0) r = add_string(o, "time", ts, 0);
        if (r >= 0) r = add_int(o, "time_usec", (int64_t) now_usec);
        if (r >= 0) r = add_string(o, "event", e->event, CMEK_AUDIT_FIELD_MAX);
        if (r >= 0) r = add_string(o, "operation", e->operation, CMEK_AUDIT_FIELD_MAX);
        if (r >= 0) r = add_string(o, "result", e->result, CMEK_AUDIT_FIELD_MAX);
        if (r >= 0 && e->has_caller) {
                r = add_int(o, "uid", (int64_t) e->uid);
                if (r >= 0) r = add_int(o, "gid", (int64_t) e->gid);
                if (r >= 0) r = add_int(o, "pid", (int64_t) e->pid);
        }
        if (r >= 0) r = add_string(o, "key_id", e->key_id, CMEK_AUDIT_FIELD_MAX);
        if (r >= 0) r = add_string(o, "old_state", e->old_state, CMEK_AUDIT_FIELD_MAX);
        if (r >= 0) r = add_string(o, "new_state", e->new_state, CMEK_AUDIT_FIELD_MAX);
        if (r >= 0) r = add_string(o, "volume", e->volume, CMEK_AUDIT_FIELD_MAX);
        if (r >= 0) r = add_string(o, "detail", e->detail, CMEK_AUDIT_DETAIL_MAX);
        if (r >= 0 && e->count > 0) r = add_int(o, "count", (int64_t) e->count);
        if (r >= 0) r = add_string(o, "mac", e->mac, CMEK_AUDIT_FIELD_MAX);
        if (r >= 0) r = add_string(o, "prev", a->hash, 0);
        if (r < 0)
                goto out;

        /* PLAIN: no whitespace at all, so a line's bytes depend only on its values. */
        s = json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE);
        if (!s || (n = strlen(s)) < 2 || s[n - 1] != '}' || memchr(s, '\n', n)) {
                r = -EIO;
                goto out;
        }
        n--;    /* drop the closing brace: the hashed bytes end after "prev" */
        if (n + HASH_SUFFIX_LEN + 1 > CMEK_AUDIT_LINE_MAX) {
                r = -E2BIG;
                goto out;
        }
        r = sha256_hex(s, n, hash);
        if (r < 0)
                goto out;
        line = malloc(n + HASH_SUFFIX_LEN + 2);
        if (!line) {
                r = -ENOMEM;
                goto out;
        }
        memcpy(line, s, n);
        (void) snprintf(line + n, HASH_SUFFIX_LEN + 2, HASH_MARKER "%s\"}\n", hash);

        *ret_len = n + HASH_SUFFIX_LEN + 1;
        *ret_line = TAKE_PTR(line);
        memcpy(ret_hash, hash, sizeof(hash));
        r = 0;
out:
        json_object_put(o);
        return r;
}

/* "Key cmek.key.x disabled by uid 0 (ENABLED -> DISABLED)" */
static char *human_message(const CmekAuditEntry *e, int idx) {
        char *buf = NULL;
        size_t size = 0;
        FILE *f = open_memstream(&buf, &size);

        if (!f)
                return NULL;
        if (e->result && !streq(e->result, "ok")) {
                bool denied = streq(e->event, "policy.denied");

                if (denied)
                        fputs("Access denied: ", f);
                fputs(e->operation ?: e->event, f);
                if (e->key_id)
                        fprintf(f, " on key %s", e->key_id);
                if (e->volume)
                        fprintf(f, " on volume %s", e->volume);
                if (e->has_caller)
                        fprintf(f, " by uid %u", (unsigned) e->uid);
                fprintf(f, denied ? " (%s)" : " failed: %s", e->result);
        } else {
                enum subject subj = idx >= 0 ? event_table[idx].subject : SUBJECT_NONE;

                if (subj == SUBJECT_KEY) {
                        fprintf(f, "Key %s %s", e->key_id ?: "(unknown)", event_table[idx].text);
                        /* wrap or unwrap */
                        if (e->operation && streq(e->event, "key.used"))
                                fprintf(f, " (%s)", e->operation);
                        if (e->volume)
                                fprintf(f, " for volume %s", e->volume);
                } else if (subj == SUBJECT_VOLUME) {
                        fprintf(f, "Volume %s %s", e->volume ?: "(unknown)", event_table[idx].text);
                        if (e->key_id)
                                fprintf(f, " (key %s)", e->key_id);
                } else {
                        if (idx >= 0)
                                fputs(event_table[idx].text, f);
                        else
                                fprintf(f, "Audit event %s", e->event);
                        if (e->key_id)
                                fprintf(f, " for key %s", e->key_id);
                        if (e->volume)
                                fprintf(f, " for volume %s", e->volume);
                }
                if (e->has_caller)
                        fprintf(f, " by uid %u", (unsigned) e->uid);
                if (e->old_state && e->new_state)
                        fprintf(f, " (%s -> %s)", e->old_state, e->new_state);
                else if (e->new_state)
                        fprintf(f, " (now %s)", e->new_state);
        }
        if (e->detail)
                fprintf(f, ": %s", e->detail);
        if (fclose(f) != 0) {
                free(buf);
                return NULL;
        }
        return buf;
}

/* hash NULL: the line could not be written to the file (error says why); the journal still
 * gets the record, marked CMEK_AUDIT_FILE_ERROR, so no event is lost from both places. */
static int send_journal(uint64_t seq, const CmekAuditEntry *e, const char *hash, int error) {
        char *fields[22] = {};
        struct iovec iov[ARRAY_SIZE(fields)];
        size_t n = 0;
        int idx = event_index(e->event), prio, r = 0;
        _cleanup_free_ char *raw = human_message(e, idx);
        /* MESSAGE= is what journalctl prints to a terminal: names and paths in it come from
         * callers and disk headers, so every control character is escaped */
        _cleanup_free_ char *msg = cmek_cescape(raw);

        if (!msg)
                return -ENOMEM;
        prio = idx >= 0 ? event_table[idx].priority : LOG_INFO;
        if (e->result && !streq(e->result, "ok") && prio > LOG_WARNING)
                prio = LOG_WARNING;

#define ADD(...)                                                        \
        do {                                                            \
                if (asprintf(&fields[n], __VA_ARGS__) < 0) {            \
                        fields[n] = NULL;                               \
                        r = -ENOMEM;                                    \
                        goto out;                                       \
                }                                                       \
                n++;                                                    \
        } while (0)
#define ADD_OPT(name, v) do { if (v) ADD(name "=%s", v); } while (0)

        ADD("MESSAGE=%s", msg);
        ADD("MESSAGE_ID=%s", cmek_audit_message_id(e->event));
        ADD("PRIORITY=%i", prio);
        ADD("CMEK_EVENT=%s", e->event);
        ADD_OPT("CMEK_OPERATION", e->operation);
        ADD_OPT("CMEK_RESULT", e->result);
        ADD_OPT("CMEK_KEY_ID", e->key_id);
        ADD_OPT("CMEK_OLD_STATE", e->old_state);
        ADD_OPT("CMEK_NEW_STATE", e->new_state);
        ADD_OPT("CMEK_VOLUME", e->volume);
        if (e->has_caller) {
                ADD("CMEK_CALLER_UID=%u", (unsigned) e->uid);
                ADD("CMEK_CALLER_GID=%u", (unsigned) e->gid);
                ADD("CMEK_CALLER_PID=%i", (int) e->pid);
        }
        if (e->count > 0)
                ADD("CMEK_COUNT=%" PRIu64, e->count);
        if (hash) {
                ADD("CMEK_AUDIT_SEQ=%" PRIu64, seq);
                ADD("CMEK_AUDIT_HASH=%s", hash);
        } else
                ADD("CMEK_AUDIT_FILE_ERROR=%s", strerror(-error));
#undef ADD_OPT
#undef ADD

        for (size_t i = 0; i < n; i++)
                iov[i] = (struct iovec) { .iov_base = fields[i], .iov_len = strlen(fields[i]) };
        r = sd_journal_sendv(iov, (int) n);
out:
        for (size_t i = 0; i < n; i++)
                free(fields[i]);
        return r;
}

bool cmek_audit_needs_sync(const CmekAudit *a) {
        return a && a->unsynced;
}

int cmek_audit_sync(CmekAudit *a) {
        if (!a)
                return 0;
        /* a failed fdatasync() (e.g. of a checkpoint, outside the group commit) may have lost
         * lines appended before it: never report them durable */
        if (a->broken)
                return -EIO;
        if (!a->unsynced)
                return 0;
        a->unsynced = false;
        if (fdatasync(a->fd) < 0) {
                a->broken = true;
                return -errno;
        }
        return 0;
}

static void journal_failed(const CmekAudit *a, const CmekAuditEntry *e, int error) {
        if (a->flags & CMEK_AUDIT_NO_JOURNAL)
                return;
        (void) send_journal(0, e, NULL, error);
}

void cmek_audit_journal_unwritten(const CmekAuditEntry *e, int error) {
        if (e && e->event)
                (void) send_journal(0, e, NULL, error);
}

int cmek_audit_check_space(CmekAudit *a) {
        struct statvfs sv;
        uint64_t avail;

        if (!a)
                return -EINVAL;
        if (a->broken)
                return -EIO;
        if (fstatvfs(a->fd, &sv) < 0)
                return -errno;
        if (sv.f_flag & ST_RDONLY)
                return -EROFS;
        /* root may use the blocks reserved for root, as the write() will */
        avail = (uint64_t) (geteuid() == 0 ? sv.f_bfree : sv.f_bavail) * (uint64_t) sv.f_bsize;
        if (avail < CMEK_AUDIT_SPACE_MIN)
                return -ENOSPC;
        return 0;
}

bool cmek_audit_is_broken(const CmekAudit *a) {
        return a && a->broken;
}

int cmek_audit_append(CmekAudit *a, const CmekAuditEntry *e, uint64_t now_usec) {
        _cleanup_free_ char *line = NULL;
        char hash[HASH_HEX_LEN + 1];
        size_t len;
        ssize_t n;
        int r;

        if (!a || !e || !e->event || !*e->event)
                return -EINVAL;
        if (a->broken) {
                journal_failed(a, e, -EIO);
                return -EIO;
        }
        if (now_usec == 0)
                now_usec = cmek_now_usec();

        r = build_line(a, e, now_usec, &line, &len, hash);
        if (r < 0)
                return r;

        /* One write() per line: with O_APPEND and the flock() no other writer can interleave,
         * and a crash leaves at most one torn line at the end, which open() cuts. */
        /* checkpoints (daemon/audit-anchor.c, on a timer) have their own point, so that
         * "audit-before-append:N" counts the same records as before they existed */
        if (e->mac)
                cmek_fault("audit-before-checkpoint");
        else
                cmek_fault("audit-before-append");
        do
                n = write(a->fd, line, len);
        while (n < 0 && errno == EINTR);
        if (n < 0 || (size_t) n != len) {
                r = n < 0 ? -errno : -ENOSPC;   /* a short write on a regular file: out of space */
                if (n > 0 && ftruncate(a->fd, a->size) < 0)
                        a->broken = true;
                journal_failed(a, e, r);
                return r;
        }
        if (a->flags & CMEK_AUDIT_GROUP_COMMIT)
                a->unsynced = true;
        else if (fdatasync(a->fd) < 0) {
                /* After a failed fdatasync() the page cache may have dropped the error with the
                 * data: nothing written through this fd can be trusted to be on disk any more. */
                r = -errno;
                a->broken = true;
                journal_failed(a, e, r);
                return r;
        }
        a->size += (off_t) len;
        a->seq++;
        memcpy(a->hash, hash, sizeof(hash));

        if (!(a->flags & CMEK_AUDIT_NO_JOURNAL)) {
                r = send_journal(a->seq, e, hash, 0);
                if (r < 0)
                        log_debug_errno(r, "Failed to send audit entry %" PRIu64 " to the journal, ignoring: %m", a->seq);
        }
        return 0;
}

static int pread_all(int fd, void *buf, size_t size, off_t off) {
        char *p = buf;
        while (size > 0) {
                ssize_t n = pread(fd, p, size, off);
                if (n < 0) {
                        if (errno == EINTR)
                                continue;
                        return -errno;
                }
                if (n == 0)
                        return -EIO;    /* the file shrank under us */
                p += n;
                off += n;
                size -= (size_t) n;
        }
        return 0;
}

/* Reads only the end of the file: the last complete line gives seq and hash; a torn tail is cut
 * (and described in *ret_recovered) only once the line before it has been checked. */
static int load_tail(CmekAudit *a, off_t file_size, char **ret_recovered) {
        _cleanup_free_ char *buf = NULL, *detail = NULL;
        size_t w, end, start, torn_len = 0;
        off_t base;
        char *nl;

        *ret_recovered = NULL;
        if (file_size == 0) {
                a->seq = 0;
                memcpy(a->hash, ZERO_HASH, sizeof(a->hash));
                a->size = 0;
                return 0;
        }

        w = (size_t) file_size < TAIL_WINDOW ? (size_t) file_size : TAIL_WINDOW;
        base = file_size - (off_t) w;
        buf = malloc(w);
        if (!buf)
                return -ENOMEM;
        int r = pread_all(a->fd, buf, w, base);
        if (r < 0)
                return r;

        end = w;
        if (buf[w - 1] != '\n') {
                nl = memrchr(buf, '\n', w);
                end = nl ? (size_t) (nl - buf) + 1 : 0;
                torn_len = w - end;
                /* Longer than any line append() writes: not a torn append, something else. */
                if (torn_len >= CMEK_AUDIT_LINE_MAX || (!nl && base > 0))
                        return -EBADMSG;
        }

        a->seq = 0;
        memcpy(a->hash, ZERO_HASH, sizeof(a->hash));
        if (end > 0) {
                char prev[HASH_HEX_LEN + 1];

                nl = end > 1 ? memrchr(buf, '\n', end - 1) : NULL;
                if (!nl && base > 0)
                        return -EBADMSG;        /* last line too long */
                start = nl ? (size_t) (nl - buf) + 1 : 0;
                if (line_check(buf + start, end - 1 - start, &a->seq, prev, a->hash))
                        return -EBADMSG;
        }

        if (torn_len > 0) {
                char h[HASH_HEX_LEN + 1];
                unsigned long long torn_seq;
                char seqtxt[48] = "no seq";

                r = sha256_hex(buf + end, torn_len, h);
                if (r < 0)
                        return r;
                /* sscanf() needs a NUL inside the buffer; the torn bytes end the buffer. */
                if (torn_len > 8 && memcmp(buf + end, "{\"seq\":", 7) == 0) {
                        char num[21] = {};
                        memcpy(num, buf + end + 7, torn_len - 7 < sizeof(num) - 1 ? torn_len - 7 : sizeof(num) - 1);
                        if (sscanf(num, "%llu", &torn_seq) == 1)
                                (void) snprintf(seqtxt, sizeof(seqtxt), "seq %llu", torn_seq);
                }
                if (asprintf(&detail, "cut a torn last line (%zu bytes without newline, %s, sha256 %s) at offset %lld, after seq %" PRIu64,
                             torn_len, seqtxt, h, (long long) (base + (off_t) end), a->seq) < 0)
                        return -ENOMEM;
                if (ftruncate(a->fd, base + (off_t) end) < 0 || fsync(a->fd) < 0)
                        return -errno;
                a->recovered_bytes = torn_len;
        }
        a->size = base + (off_t) end;
        *ret_recovered = TAKE_PTR(detail);
        return 0;
}

int cmek_audit_open_full(const char *path, unsigned flags, CmekAudit **ret) {
        _cleanup_(cmek_audit_closep) CmekAudit *a = NULL;
        _cleanup_free_ char *recovered = NULL;
        struct stat st;
        int r;

        if (!path || !ret)
                return -EINVAL;
        a = calloc(1, sizeof(*a));
        if (!a)
                return -ENOMEM;
        a->flags = flags;
        a->fd = open(path, O_RDWR | O_APPEND | O_CREAT | O_CLOEXEC | O_NOFOLLOW | O_NOCTTY, 0600);
        if (a->fd < 0)
                return -errno;
        /* Two writers would fork the chain. */
        if (flock(a->fd, LOCK_EX | LOCK_NB) < 0)
                return errno == EWOULDBLOCK ? -EBUSY : -errno;
        if (fstat(a->fd, &st) < 0)
                return -errno;
        if (!S_ISREG(st.st_mode))
                return -EBADFD;
        if ((st.st_mode & 07777) != 0600 && fchmod(a->fd, 0600) < 0)
                return -errno;
        if (st.st_size == 0) {
                /* Possibly just created: make the directory entry durable too. */
                _cleanup_free_ char *d = strdup(path);
                _cleanup_close_ int dfd = -1;
                if (!d)
                        return -ENOMEM;
                dfd = open(dirname(d), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
                if (dfd >= 0)
                        (void) fsync(dfd);
        }

        r = load_tail(a, st.st_size, &recovered);
        if (r < 0)
                return r;
        if (recovered) {
                r = cmek_audit_append(a, &(CmekAuditEntry) {
                                .event = "audit.recovered",
                                .result = "ok",
                                .detail = recovered,
                        }, 0);
                if (r < 0)
                        return r;
        }

        *ret = TAKE_PTR(a);
        return 0;
}

int cmek_audit_open(const char *path, CmekAudit **ret) {
        return cmek_audit_open_full(path, 0, ret);
}

CmekAudit *cmek_audit_close(CmekAudit *a) {
        if (!a)
                return NULL;
        (void) cmek_audit_sync(a);
        if (a->fd >= 0)
                (void) close(a->fd);
        free(a);
        return NULL;
}

uint64_t cmek_audit_get_seq(const CmekAudit *a) {
        return a ? a->seq : 0;
}

const char *cmek_audit_get_hash(const CmekAudit *a) {
        return a ? a->hash : NULL;
}

uint64_t cmek_audit_get_size(const CmekAudit *a) {
        return a ? (uint64_t) a->size : 0;
}

uint64_t cmek_audit_get_recovered_bytes(const CmekAudit *a) {
        return a ? a->recovered_bytes : 0;
}

#define CHECKPOINT_EVENT "\"event\":\"audit.checkpoint\""
#define DISCONTINUITY_EVENT "\"event\":\"audit.discontinuity\""

/* A good line's extra facts: is it a checkpoint (and its mac), a discontinuity (its detail). */
static void line_info(const char *line, size_t len, uint64_t seq, const char *prev, const char *hash,
                      CmekAuditVerifyInfo *info) {
        bool cp = memmem(line, len, CHECKPOINT_EVENT, strlen(CHECKPOINT_EVENT)) != NULL;
        bool disc = !info->discontinuity_seq && memmem(line, len, DISCONTINUITY_EVENT, strlen(DISCONTINUITY_EVENT));
        CmekAuditLineInfo li = { .seq = seq };
        json_object *o = NULL, *v;

        memcpy(li.prev, prev, HASH_HEX_LEN + 1);
        memcpy(li.hash, hash, HASH_HEX_LEN + 1);
        if (cp || disc)
                o = parse_object(line, len);
        if (cp && o && json_object_object_get_ex(o, "event", &v) && streq_ptr(json_object_get_string(v), "audit.checkpoint") &&
            json_object_object_get_ex(o, "mac", &v) && json_object_is_type(v, json_type_string) &&
            is_hash_hex(json_object_get_string(v), (size_t) json_object_get_string_len(v))) {
                li.checkpoint = true;
                memcpy(li.mac, json_object_get_string(v), HASH_HEX_LEN + 1);
                info->last_checkpoint = li;
                info->n_checkpoints++;
        }
        if (disc && o && json_object_object_get_ex(o, "event", &v) && streq_ptr(json_object_get_string(v), "audit.discontinuity")) {
                info->discontinuity_seq = seq;
                free(info->discontinuity);
                info->discontinuity = json_object_object_get_ex(o, "detail", &v) ? strdup(strempty(json_object_get_string(v))) : NULL;
        }
        if (seq == info->want_seq)
                info->wanted = li;
        info->last_seq = seq;
        json_object_put(o);
}

int cmek_audit_verify(const char *path, unsigned *ret_n_lines, unsigned *ret_bad_line, char **ret_reason) {
        return cmek_audit_verify_info(path, NULL, ret_n_lines, ret_bad_line, ret_reason);
}

int cmek_audit_verify_info(const char *path, CmekAuditVerifyInfo *info, unsigned *ret_n_lines,
                           unsigned *ret_bad_line, char **ret_reason) {
        _cleanup_fclose_ FILE *f = NULL;
        _cleanup_free_ char *line = NULL, *reason = NULL;
        char last_hash[HASH_HEX_LEN + 1] = ZERO_HASH;
        uint64_t last_seq = 0;
        unsigned lineno = 0;
        uint64_t offset = 0;
        size_t cap = 0;
        ssize_t n;

        f = fopen(path, "re");
        if (!f)
                return -errno;

        while ((!info || !info->max_bytes || offset < info->max_bytes) && (n = getline(&line, &cap, f)) >= 0) {
                char prev[HASH_HEX_LEN + 1], hash[HASH_HEX_LEN + 1];
                const char *why;
                uint64_t seq;
                int k = 0;

                lineno++;
                offset += (uint64_t) n;
                if (line[n - 1] != '\n') {
                        k = asprintf(&reason, "line %u: torn, no trailing newline (interrupted write)", lineno);
                        goto bad;
                }
                if ((size_t) n > CMEK_AUDIT_LINE_MAX) {
                        k = asprintf(&reason, "line %u: longer than %u bytes", lineno, CMEK_AUDIT_LINE_MAX);
                        goto bad;
                }
                why = line_check(line, (size_t) n - 1, &seq, prev, hash);
                if (why) {
                        k = asprintf(&reason, "line %u: %s", lineno, why);
                        goto bad;
                }
                if (seq != last_seq + 1) {
                        if (lineno == 1)
                                k = asprintf(&reason, "line 1: seq %" PRIu64 ", expected 1 (head truncated)", seq);
                        else
                                k = asprintf(&reason, "line %u: seq %" PRIu64 " follows %" PRIu64 " (line deleted or reordered)",
                                             lineno, seq, last_seq);
                        goto bad;
                }
                if (!streq(prev, last_hash)) {
                        if (lineno == 1)
                                k = asprintf(&reason, "line 1: prev is not the zero hash (head replaced)");
                        else
                                k = asprintf(&reason, "line %u: prev does not match line %u's hash (line %u replaced)",
                                             lineno, lineno - 1, lineno - 1);
                        goto bad;
                }
                last_seq = seq;
                memcpy(last_hash, hash, sizeof(hash));
                if (info)
                        line_info(line, (size_t) n - 1, seq, prev, hash, info);
                continue;
        bad:
                if (k < 0)
                        return -ENOMEM;
                if (ret_n_lines)
                        *ret_n_lines = lineno;
                if (ret_bad_line)
                        *ret_bad_line = lineno;
                if (ret_reason)
                        *ret_reason = TAKE_PTR(reason);
                return -EBADMSG;
        }
        if (ferror(f))
                return -EIO;

        if (ret_n_lines)
                *ret_n_lines = lineno;
        if (ret_bad_line)
                *ret_bad_line = 0;
        if (ret_reason)
                *ret_reason = NULL;
        return 0;
}

int cmek_audit_read_page(const char *path, uint64_t since_usec, uint64_t offset, unsigned limit,
                         json_object **ret_array, uint64_t *ret_next) {
        _cleanup_fclose_ FILE *f = NULL;
        _cleanup_free_ char *line = NULL;
        json_object *arr;
        size_t cap = 0;
        uint64_t pos = offset, next = 0;
        ssize_t n;

        if (!path || !ret_array)
                return -EINVAL;
        f = fopen(path, "re");
        if (!f)
                return -errno;
        if (offset > 0) {
                /* a cursor is the start of a line: the byte before it is a newline */
                if (fseeko(f, (off_t) offset - 1, SEEK_SET) < 0)
                        return -errno;
                if (fgetc(f) != '\n')
                        return -EINVAL;
        }
        arr = json_object_new_array();
        if (!arr)
                return -ENOMEM;

        while ((n = getline(&line, &cap, f)) >= 0) {
                json_object *o, *t;

                /* A torn tail: being written right now, or left by a crash until the next open. */
                if (line[n - 1] != '\n')
                        break;
                if (limit > 0 && json_object_array_length(arr) >= limit) {
                        next = pos;     /* more to come: resume at this line */
                        break;
                }
                pos += (uint64_t) n;
                o = parse_object(line, (size_t) n - 1);
                if (!o) {
                        json_object_put(arr);
                        return -EBADMSG;
                }
                if (!json_object_object_get_ex(o, "time_usec", &t) || !json_object_is_type(t, json_type_int) ||
                    json_object_get_int64(t) < 0 || (uint64_t) json_object_get_int64(t) < since_usec) {
                        json_object_put(o);
                        continue;
                }
                if (json_object_array_add(arr, o) < 0) {
                        json_object_put(o);
                        json_object_put(arr);
                        return -ENOMEM;
                }
        }
        if (ferror(f)) {
                json_object_put(arr);
                return -EIO;
        }
        *ret_array = arr;
        if (ret_next)
                *ret_next = next;
        return 0;
}

int cmek_audit_read(const char *path, uint64_t since_usec, json_object **ret_array) {
        return cmek_audit_read_page(path, since_usec, 0, 0, ret_array, NULL);
}
