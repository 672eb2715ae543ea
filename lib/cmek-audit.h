/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* The append-only, hash-chained audit log: one JSON object per line. */
#pragma once

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>
#include <json-c/json.h>

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
        const char *detail;
} CmekAuditEntry;

/* Opens (creating if needed, mode 0600) and reads the last line to continue the chain;
 * refuses to open a log whose last line does not parse. */
int cmek_audit_open(const char *path, CmekAudit **ret);
CmekAudit *cmek_audit_close(CmekAudit *a);
/* Appends one line (seq, time, fields, prev hash, hash), fsyncs, and writes the structured
 * journald entry with the event's MESSAGE_ID. */
int cmek_audit_append(CmekAudit *a, const CmekAuditEntry *e, uint64_t now_usec);

/* Verifies the whole chain. Returns 0 when intact, -EBADMSG when broken: *ret_bad_line is the
 * first bad line (1-based) and *ret_reason says why. */
int cmek_audit_verify(const char *path, unsigned *ret_n_lines, unsigned *ret_bad_line, char **ret_reason);
/* Reads entries with time >= since_usec into a JSON array (newest last). */
int cmek_audit_read(const char *path, uint64_t since_usec, json_object **ret_array);
/* The sd_id128 MESSAGE_ID string for an event type (stable, documented in cmekd(8)). */
const char *cmek_audit_message_id(const char *event);
