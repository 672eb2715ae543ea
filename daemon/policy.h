/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* IAM-style policy statements: "allow group G to VERB RESOURCE in compartment C [where ...]". */
#pragma once

#include <errno.h>
#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

/* Bounds for untrusted input: the parser is linear in the input and never recurses deeper than
 * POLICY_CONDITION_DEPTH_MAX. */
#define POLICY_FILE_MAX            (1024U * 1024U) /* bytes */
#define POLICY_LINE_MAX            4096U           /* bytes per line, without the newline */
#define POLICY_STATEMENTS_MAX      4096U
#define POLICY_SUBJECTS_MAX        64U             /* "group A, group B, ..." in one statement */
#define POLICY_CONDITIONS_MAX      64U             /* conditions (any/all included) in one statement */
#define POLICY_CONDITION_DEPTH_MAX 8U              /* nested any { } / all { } */

typedef struct Policy Policy;

typedef enum PolicyVerb {
        POLICY_VERB_INSPECT, /* list */
        POLICY_VERB_READ,    /* show */
        POLICY_VERB_USE,     /* wrap/unwrap, unlock */
        POLICY_VERB_MANAGE,  /* create/rotate/disable/enable/delete/import, bind */
        _POLICY_VERB_MAX,
        _POLICY_VERB_INVALID = -EINVAL,
} PolicyVerb;

typedef struct PolicyRequest {
        uid_t uid;
        gid_t gid;
        const gid_t *groups;    /* supplementary groups */
        size_t n_groups;
        PolicyVerb verb;
        const char *resource_type; /* "keys", "key-delegate", "volumes", "vaults", "audit" */
        const char *compartment;   /* NULL: the tenancy (root compartment) */
        const char *key_id;        /* target.key.id, may be NULL */
        const char *volume_id;     /* target.volume.id, may be NULL */
} PolicyRequest;

/* Parse a policy file. On a syntax error returns -EINVAL and sets *ret_error to
 * "FILE:LINE:COLUMN: expected ..., got '...'" (COLUMN is 1-based, in bytes, pointing at the
 * offending token; free() the string). policy_load() also returns -EPERM (with *ret_error) when
 * the file is writable by others or owned by another non-root user, -EFBIG when it is larger than
 * POLICY_FILE_MAX, and -errno from open()/read() (without *ret_error). An empty file is a valid
 * policy that allows nobody but root. filename NULL: "<string>". */
int policy_load(const char *path, Policy **ret, char **ret_error);
int policy_parse_string(const char *text, const char *filename, Policy **ret, char **ret_error);
Policy *policy_free(Policy *p);
static inline void policy_freep(Policy **p) { if (*p) policy_free(*p); }

/* NULL policy: only uid 0 is allowed. Returns true when some statement allows it
 * (a higher verb implies the lower ones). uid 0 is always allowed, with or without a policy.
 * User and group names are looked up (getpwuid_r/getgrgid_r) at each call, for req->uid, req->gid
 * and req->groups only: pass the peer's supplementary groups (SO_PEERGROUPS), not just
 * SO_PEERCRED. A name that does not resolve (or an NSS failure) simply does not match. */
bool policy_check(const Policy *p, const PolicyRequest *req);
/* Like policy_check(); on success also returns the 1-based line of the first statement that
 * allowed the request, 0 when it was allowed because the caller is root. */
bool policy_check_line(const Policy *p, const PolicyRequest *req, unsigned *ret_line);
size_t policy_n_statements(const Policy *p);

/* Whether any statement names this caller (uid 0: always), whatever its verb, resource or
 * condition: the server gives callers without any grant only a tiny share of its resources. */
bool policy_subject_has_any_grant(const Policy *p, uid_t uid, gid_t gid, const gid_t *groups, size_t n_groups);

/* Whether some statement names this caller (req->uid, gid, groups) in req->compartment (NULL: the
 * tenancy), whatever its verb, resource type or condition; a tenancy statement counts in every
 * compartment; uid 0 always has one. A caller without one is told nothing about what exists there
 * (no ids, no compartment, no statement in io.cmek.PermissionDenied). */
bool policy_has_grant_in(const Policy *p, const PolicyRequest *req);
/* Whether some statement names this caller at all, in any compartment (req->compartment, verb and
 * resource type ignored). A caller without one is refused before any lookup (no token access). */
bool policy_has_any_grant(const Policy *p, const PolicyRequest *req);

/* The statement that would allow req, for io.cmek.PermissionDenied, e.g.
 * "allow user backup to use keys in compartment Prod where target.key.id = 'ocid1...'".
 * Always in the user form (a group grant is the admin's choice); "user id N" when the uid has no
 * name; the where clause names target.key.id for keys, target.volume.id for volumes (else
 * whichever the request carries) and is left out when the request carries no target id.
 * Returns NULL with errno set on ENOMEM, or EINVAL when req is invalid (unknown verb or resource
 * type, or a compartment name that cannot be written in the grammar). free() the result. */
char *policy_explain_denial(const PolicyRequest *req);

const char *policy_verb_to_string(PolicyVerb v);
PolicyVerb policy_verb_from_string(const char *s);
