/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* Test helper: turns CKA_ENCRYPT/CKA_DECRYPT of a secret key on or off directly in a token, as
 * an administrator with another PKCS#11 client would (pkcs11-tool cannot change them).
 * Usage: p11-set-usage MODULE TOKEN-LABEL PIN KEY-LABEL on|off */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <p11-kit/p11-kit.h>
#include <p11-kit/pkcs11.h>

static int fail(const char *what, CK_RV rv) {
        fprintf(stderr, "p11-set-usage: %s failed: 0x%lx\n", what, (unsigned long) rv);
        return 1;
}

int main(int argc, char *argv[]) {
        CK_FUNCTION_LIST *f;
        CK_SLOT_ID slots[64];
        CK_ULONG n_slots = 64, n = 0;
        CK_SESSION_HANDLE s = CK_INVALID_HANDLE;
        CK_OBJECT_HANDLE objs[8];
        CK_OBJECT_CLASS cls = CKO_SECRET_KEY;
        CK_BBOOL on;
        CK_RV rv;

        if (argc != 6 || (strcmp(argv[5], "on") != 0 && strcmp(argv[5], "off") != 0)) {
                fprintf(stderr, "Usage: %s MODULE TOKEN-LABEL PIN KEY-LABEL on|off\n", argv[0]);
                return 2;
        }
        on = strcmp(argv[5], "on") == 0 ? CK_TRUE : CK_FALSE;
        f = p11_kit_module_load(argv[1], 0);
        if (!f) {
                fprintf(stderr, "p11-set-usage: cannot load %s: %s\n", argv[1], p11_kit_message() ?: "?");
                return 1;
        }
        rv = f->C_Initialize(NULL);
        if (rv != CKR_OK)
                return fail("C_Initialize", rv);
        rv = f->C_GetSlotList(CK_TRUE, slots, &n_slots);
        if (rv != CKR_OK)
                return fail("C_GetSlotList", rv);
        for (CK_ULONG i = 0; i < n_slots && s == CK_INVALID_HANDLE; i++) {
                CK_TOKEN_INFO ti;
                char label[33];
                size_t l = strlen(argv[2]);
                if (f->C_GetTokenInfo(slots[i], &ti) != CKR_OK)
                        continue;
                memcpy(label, ti.label, 32);
                label[32] = 0;
                for (int k = 31; k >= 0 && label[k] == ' '; k--)
                        label[k] = 0;
                if (strlen(label) != l || memcmp(label, argv[2], l) != 0)
                        continue;
                rv = f->C_OpenSession(slots[i], CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, &s);
                if (rv != CKR_OK)
                        return fail("C_OpenSession", rv);
        }
        if (s == CK_INVALID_HANDLE) {
                fprintf(stderr, "p11-set-usage: no token labelled '%s'\n", argv[2]);
                return 1;
        }
        rv = f->C_Login(s, CKU_USER, (CK_UTF8CHAR *) argv[3], strlen(argv[3]));
        if (rv != CKR_OK && rv != CKR_USER_ALREADY_LOGGED_IN)
                return fail("C_Login", rv);
        CK_ATTRIBUTE find[] = {
                { CKA_CLASS, &cls, sizeof(cls) },
                { CKA_LABEL, argv[4], strlen(argv[4]) },
        };
        rv = f->C_FindObjectsInit(s, find, 2);
        if (rv == CKR_OK)
                rv = f->C_FindObjects(s, objs, 8, &n);
        (void) f->C_FindObjectsFinal(s);
        if (rv != CKR_OK)
                return fail("C_FindObjects", rv);
        if (n == 0) {
                fprintf(stderr, "p11-set-usage: no secret key labelled '%s'\n", argv[4]);
                return 1;
        }
        for (CK_ULONG i = 0; i < n; i++) {
                CK_ATTRIBUTE set[] = {
                        { CKA_ENCRYPT, &on, sizeof(on) },
                        { CKA_DECRYPT, &on, sizeof(on) },
                };
                rv = f->C_SetAttributeValue(s, objs[i], set, 2);
                if (rv != CKR_OK)
                        return fail("C_SetAttributeValue", rv);
        }
        (void) f->C_Logout(s);
        (void) f->C_CloseSession(s);
        (void) f->C_Finalize(NULL);
        p11_kit_module_release(f);
        printf("%s: CKA_ENCRYPT/CKA_DECRYPT %s on %lu object(s)\n", argv[4], argv[5], (unsigned long) n);
        return 0;
}
