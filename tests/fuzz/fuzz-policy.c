/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* Fuzz target: the policy language parser (daemon/policy.c). A policy that parses is also
 * evaluated against a few requests, so conditions and subjects are walked too. */
#include <stdio.h>

#include "fuzz.h"
#include "policy.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        static const gid_t groups[] = { 0, 100, 1000 };
        static const char *const types[] = { "keys", "volumes", "vaults", "audit" };
        char *text, *err = NULL;
        Policy *p = NULL;
        int r;

        if (size > POLICY_FILE_MAX + 1)
                return 0;
        text = fuzz_strndup(data, size);
        r = policy_parse_string(text, "fuzz", &p, &err);
        if (r < 0) {
                /* a syntax error always says where; other errors (ENOMEM, E2BIG) may not */
                if (r == -EINVAL && !err)
                        abort();
        } else {
                if (!p)
                        abort();
                for (int verb = 0; verb < _POLICY_VERB_MAX; verb++)
                        for (size_t t = 0; t < 4; t++) {
                                PolicyRequest req = {
                                        .uid = 1000, .gid = 1000, .groups = groups, .n_groups = 3,
                                        .verb = verb, .resource_type = types[t],
                                        .compartment = t % 2 ? "Prod" : NULL,
                                        .key_id = "ocid1.key.x", .volume_id = t == 1 ? "vol-1" : NULL,
                                };
                                unsigned line = 0;
                                if (policy_check_line(p, &req, &line) && (line == 0 || line > size + 1))
                                        abort();
                        }
                policy_free(p);
        }
        free(err);
        free(text);
        return 0;
}
