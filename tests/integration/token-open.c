/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* test helper: opens DEVICE's LUKS2 volume key through its tokens (libcryptsetup, no mapping
 * created), as "cryptsetup open --test-passphrase --token-only" does. test-sec-hygiene.sh installs
 * a copy setuid root to check that the cmek plugin ignores CMEKD_SOCKET in a setuid program. */
#include <stdio.h>
#include <libcryptsetup.h>

static void log_cb(int level, const char *msg, void *usrptr) {
        (void) level;
        (void) usrptr;
        fputs(msg, stderr);
        fputc('\n', stderr);
}

int main(int argc, char *argv[]) {
        struct crypt_device *cd = NULL;
        int r;

        if (argc != 2) {
                fprintf(stderr, "usage: token-open DEVICE\n");
                return 2;
        }
        crypt_set_log_callback(NULL, log_cb, NULL);
        r = crypt_init(&cd, argv[1]);
        if (r >= 0) {
                crypt_set_log_callback(cd, log_cb, NULL);
                r = crypt_load(cd, CRYPT_LUKS2, NULL);
        }
        if (r >= 0)
                r = crypt_activate_by_token(cd, NULL, CRYPT_ANY_TOKEN, NULL, 0);
        fprintf(stderr, "token-open: %d\n", r);
        crypt_free(cd);
        return r < 0 ? 1 : 0;
}
