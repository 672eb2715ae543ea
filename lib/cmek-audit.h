/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* The append-only, hash-chained audit log: one JSON object per line. */
#pragma once

/*
 * Format (docs/audit.md has the full description and the MESSAGE_ID table):
 *
 *   {"seq":N,"time":"2026-11-23T13:00:00.123456Z","time_usec":...,"event":"key.disabled",...,
 *    "prev":"<hash of line N-1, or 64 zeros for line 1>","hash":"<hex>"}\n
 *
 * Fields that are NULL in the CmekAuditEntry are omitted. "hash" is always the last field, and is
 * the lowercase hex SHA-256 of the exact bytes of the line before `,"hash":"` (the line minus
 * its last 75 bytes and the newline). Since "prev" is inside the hashed bytes, the lines form a
 * chain: editing, deleting, reordering any line or cutting the head is found by
 * cmek_audit_verify(), which names the first bad line.
 *
 * What the file alone cannot show: a cut tail (the log just looks shorter), and an attacker
 * with write access who recomputes every hash from the edit on (the hash is not keyed). The
 * daemon anchors the chain in its token (daemon/audit-anchor.c): "audit.checkpoint" lines carry
 * an HMAC ("mac") made in the token, and the token keeps the latest checkpoint's seq and hash.
 * The journal is a second cross-check: every append also sends CMEK_AUDIT_SEQ and
 * CMEK_AUDIT_HASH to journald, so the last seq/hash there must exist in the file.
 *
 * Never put a secret in any field, in particular not in "detail": the log and the journal are
 * readable by administrators and kept for a long time. The API has no field for key material.
 *
 * Crash safety: one write() per line with O_APPEND, then fdatasync(). A crash in the middle of a
 * write can leave a last line without its newline ("torn"). cmek_audit_open() cuts such a torn
 * tail (it never was a completed append) and records an "audit.recovered" entry whose detail
 * says what was cut; a complete last line that does not parse or whose hash does not recompute
 * is not touched: open fails with -EBADMSG.
 */

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>
#include <json-c/json.h>

/* Longest line (including its newline) that cmek_audit_append() writes. */
#define CMEK_AUDIT_LINE_MAX (64U * 1024U)
/* Longest value of a string field, in bytes as written (a control character counts 6, a quote
 * or backslash 2: their JSON escapes); longer values are cut at a character boundary and end in
 * "...[truncated N bytes]": the line is never dropped, and always fits in CMEK_AUDIT_LINE_MAX. */
#define CMEK_AUDIT_FIELD_MAX 512U
#define CMEK_AUDIT_DETAIL_MAX 1024U
/* cmek_audit_check_space() wants at least this much free space on the log's file system. */
#define CMEK_AUDIT_SPACE_MIN (64U * 1024U)

typedef struct CmekAudit CmekAudit;

typedef struct CmekAuditEntry {
        const char *event;       /* "key.disabled", "volume.bound", ... */
        const char *operation;   /* "io.cmek.Key.Disable" */
        const char *result;      /* "ok" or an error name */
        bool has_caller;
        uid_t uid;
        gid_t gid;
        pid_t pid;
        const char *key_id;
        const char *old_state;
        const char *new_state;
        const char *volume;
        const char *detail;      /* free text for humans; never a secret */
        uint64_t count;          /* > 0: this line stands for COUNT events (aggregated denials) */
        const char *mac;         /* audit.checkpoint: hex HMAC-SHA256 made in the token */
} CmekAuditEntry;

enum {
        CMEK_AUDIT_NO_JOURNAL = 1 << 0,   /* do not send appends to journald (tests, tools) */
        /* Group commit: appends only write(); the caller makes them durable with
         * cmek_audit_sync() before it lets anything depend on them (the daemon holds every
         * reply until the sync at the end of its event-loop iteration). */
        CMEK_AUDIT_GROUP_COMMIT = 1 << 1,
};

/* Opens (creating if needed, mode 0600) and reads the last line to continue the chain;
 * refuses (-EBADMSG) to open a log whose last complete line does not parse or verify. A torn
 * last line (no newline, from a crash) is cut and an "audit.recovered" entry appended.
 * Takes an exclusive flock(): a second writer gets -EBUSY. */
int cmek_audit_open(const char *path, CmekAudit **ret);
/* With CMEK_AUDIT_GROUP_COMMIT: fdatasync() what was appended since the last sync. */
int cmek_audit_sync(CmekAudit *a);
bool cmek_audit_needs_sync(const CmekAudit *a);
int cmek_audit_open_full(const char *path, unsigned flags, CmekAudit **ret);
CmekAudit *cmek_audit_close(CmekAudit *a);
static inline void cmek_audit_closep(CmekAudit **a) {
        if (*a)
                *a = cmek_audit_close(*a);
}
/* Appends one line (seq, time, fields, prev hash, hash), fsyncs, and writes the structured
 * journald entry with the event's MESSAGE_ID (a journald failure does not fail the append).
 * now_usec 0 means now. Long fields are capped (never -E2BIG in practice). After a failed
 * fdatasync() the handle refuses further appends (-EIO): close and reopen it. */
int cmek_audit_append(CmekAudit *a, const CmekAuditEntry *e, uint64_t now_usec);
/* A failed append still sends the entry to journald, with CMEK_AUDIT_FILE_ERROR=<strerror>
 * instead of CMEK_AUDIT_SEQ/CMEK_AUDIT_HASH. */
/* Before an operation that must be audited: 0 if the next append can be expected to be
 * durable; -EIO if the handle is broken (reopen it), -EROFS, -ENOSPC (less than
 * CMEK_AUDIT_SPACE_MIN free), or an fstatvfs() error. */
int cmek_audit_check_space(CmekAudit *a);
/* Sends only the journald entry, marked CMEK_AUDIT_FILE_ERROR=strerror(-error): for a record
 * the caller knows it cannot write to the file. */
void cmek_audit_journal_unwritten(const CmekAuditEntry *e, int error);
bool cmek_audit_is_broken(const CmekAudit *a);
/* seq and hash of the last line written (0 and 64 zeros for an empty log). */
uint64_t cmek_audit_get_seq(const CmekAudit *a);
const char *cmek_audit_get_hash(const CmekAudit *a);
/* Bytes of a torn last line cut by open (0 if none): the daemon should log a warning. */
uint64_t cmek_audit_get_recovered_bytes(const CmekAudit *a);
/* Bytes of complete lines written (the end of the last one). */
uint64_t cmek_audit_get_size(const CmekAudit *a);

/* Verifies the whole chain. Returns 0 when intact, -EBADMSG when broken: *ret_bad_line is the
 * first bad line (1-based) and *ret_reason says why ("line 7: hash mismatch (line edited)").
 * *ret_n_lines is the number of lines read (up to and including the bad one). Any ret_ may be
 * NULL; other errors (-ENOENT, -EIO, ...) leave them untouched. */
int cmek_audit_verify(const char *path, unsigned *ret_n_lines, unsigned *ret_bad_line, char **ret_reason);
/* What verify learns besides the chain, for the daemon's anchor checks (daemon/audit-anchor.c). */
typedef struct CmekAuditLineInfo {
        uint64_t seq;                   /* 0: no such line */
        bool checkpoint;                /* an audit.checkpoint line with a well-formed "mac" */
        char prev[65], hash[65], mac[65];
} CmekAuditLineInfo;
typedef struct CmekAuditVerifyInfo {
        uint64_t want_seq;              /* in: describe this line in .wanted (0: none) */
        uint64_t max_bytes;             /* in: stop there (0: read all); the daemon passes the size
                                         * of the complete lines, so a line being appended meanwhile
                                         * is not seen half-written */
        uint64_t last_seq;              /* out: seq of the last good line */
        unsigned n_checkpoints;
        CmekAuditLineInfo last_checkpoint, wanted;
        uint64_t discontinuity_seq;     /* first audit.discontinuity line (0: none) and its detail */
        char *discontinuity;            /* free() it */
} CmekAuditVerifyInfo;
/* cmek_audit_verify() that also fills info (may be NULL). */
int cmek_audit_verify_info(const char *path, CmekAuditVerifyInfo *info, unsigned *ret_n_lines,
                           unsigned *ret_bad_line, char **ret_reason);

/* Reads entries with time_usec >= since_usec into a JSON array (newest last). A torn last line
 * is skipped; a complete line that is not a JSON object gives -EBADMSG. */
int cmek_audit_read(const char *path, uint64_t since_usec, json_object **ret_array);
/* The same, one page: starts at byte offset (0, or a *ret_next from an earlier page: the start
 * of a line, else -EINVAL) and returns at most limit entries (0: no limit). *ret_next is the
 * offset to resume at, 0 at the end of the file. */
int cmek_audit_read_page(const char *path, uint64_t since_usec, uint64_t offset, unsigned limit,
                         json_object **ret_array, uint64_t *ret_next);
/* The sd_id128 MESSAGE_ID string for an event type (stable, documented in docs/audit.md);
 * unknown or NULL events get the generic id. */
const char *cmek_audit_message_id(const char *event);
