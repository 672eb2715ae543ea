/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* IAM-style policy statements: "allow group G to VERB RESOURCE in compartment C [where ...]". */
#pragma once

#include <stdbool.h>
#include <sys/types.h>

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
        const char *resource_type; /* "keys", "volumes", "vaults", "audit" */
        const char *compartment;   /* NULL: the tenancy (root compartment) */
        const char *key_id;        /* target.key.id, may be NULL */
        const char *volume_id;     /* target.volume.id, may be NULL */
} PolicyRequest;

/* Parse a policy file. On a syntax error returns -EINVAL and sets *ret_error to
 * "FILE:LINE:COLUMN: expected ..., got '...'". */
int policy_load(const char *path, Policy **ret, char **ret_error);
int policy_parse_string(const char *text, const char *filename, Policy **ret, char **ret_error);
Policy *policy_free(Policy *p);

/* NULL policy: only uid 0 is allowed. Returns true when some statement allows it
 * (a higher verb implies the lower ones). */
bool policy_check(const Policy *p, const PolicyRequest *req);
size_t policy_n_statements(const Policy *p);

const char *policy_verb_to_string(PolicyVerb v);
PolicyVerb policy_verb_from_string(const char *s);
