/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* Fuzz target: the cmek LUKS2 token JSON parser and validator (lib/cmek-token.c). Anyone who can
 * write a LUKS2 header (a USB stick) controls this input; the plugin and the udev helper parse it
 * as root. A token that parses must serialize and parse back to the same token. */
#include <stdio.h>

#include "cmek-token.h"
#include "fuzz.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        CmekToken t = CMEK_TOKEN_NULL, t2 = CMEK_TOKEN_NULL;
        char *json = fuzz_strndup(data, size), *out = NULL, *out2 = NULL;
        const char *reason = NULL;
        int r, v;

        r = cmek_token_parse(json, &t, &reason);
        v = cmek_token_validate(json, NULL);
        /* validate() is parse() without keeping anything: they must agree */
        if ((r < 0) != (v < 0) || (r < 0 && r != v))
                abort();
        if (r < 0) {
                if (!reason)
                        abort();
                goto out;
        }
        if (cmek_token_to_json(&t, &out) < 0)
                abort();
        if (cmek_token_parse(out, &t2, &reason) < 0)
                abort();
        if (cmek_token_to_json(&t2, &out2) < 0 || strcmp(out, out2) != 0)
                abort();
        if (t.keyslot >= 0) {
                uint8_t *aad = NULL;
                size_t aad_size = 0;
                if (cmek_token_aad("01234567-89ab-cdef-0123-456789abcdef", t.keyslot, t.key_id, t.key_version,
                                   &aad, &aad_size) < 0)
                        abort();
                free(aad);
        }
out:
        cmek_token_done(&t);
        cmek_token_done(&t2);
        free(out);
        free(out2);
        free(json);
        return 0;
}
