/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* The token's own cost per operation, measured alone (bench/run, item 2): what one unwrap asks of
 * the PKCS#11 module, without cmekd around it. Logs in to the token, finds the AES key by label,
 * encrypts one 32-byte DEK with AES-GCM, then times N rounds of each operation and prints one JSON
 * line with microseconds per operation (wall clock, one thread):
 *   find      C_FindObjectsInit/C_FindObjects/C_FindObjectsFinal for the key's label
 *   flags     C_GetAttributeValue(CKA_DECRYPT) on the key
 *   decrypt   C_DecryptInit + C_Decrypt, AES-256-GCM, 32 bytes + tag (what every unwrap does)
 *
 *   token-cost MODULE TOKEN_LABEL PIN KEY_LABEL [ROUNDS]
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <p11-kit/pkcs11.h>

static double now_us(void) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (double) ts.tv_sec * 1e6 + (double) ts.tv_nsec / 1e3;
}

static int fail(const char *what, CK_RV rv) {
        fprintf(stderr, "token-cost: %s failed: 0x%lx\n", what, (unsigned long) rv);
        return 1;
}

int main(int argc, char *argv[]) {
        CK_FUNCTION_LIST *f;
        CK_C_GetFunctionList get;
        CK_SLOT_ID slots[64];
        CK_ULONG n_slots = 64, n;
        CK_SESSION_HANDLE s;
        CK_OBJECT_HANDLE key = CK_INVALID_HANDLE, h;
        CK_OBJECT_CLASS cls = CKO_SECRET_KEY;
        CK_BBOOL dec;
        CK_BYTE iv[12] = { 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12 }, aad[64] = "cmek-v1", pt[32] = { 0 };
        CK_BYTE ct[48], out[48];
        CK_GCM_PARAMS gcm = { .pIv = iv, .ulIvLen = 12, .ulIvBits = 96, .pAAD = aad, .ulAADLen = sizeof(aad),
                              .ulTagBits = 128 };
        CK_MECHANISM mech = { CKM_AES_GCM, &gcm, sizeof(gcm) };
        CK_ULONG ct_len = sizeof(ct), out_len;
        CK_RV rv;
        void *dl;
        int rounds;

        if (argc < 5) {
                fprintf(stderr, "usage: %s MODULE TOKEN_LABEL PIN KEY_LABEL [ROUNDS]\n", argv[0]);
                return 2;
        }
        rounds = argc > 5 ? atoi(argv[5]) : 2000;
        CK_ATTRIBUTE tmpl[] = { { CKA_CLASS, &cls, sizeof(cls) }, { CKA_LABEL, argv[4], strlen(argv[4]) } };
        CK_ATTRIBUTE flag = { CKA_DECRYPT, &dec, sizeof(dec) };

        dl = dlopen(argv[1], RTLD_NOW);
        if (!dl || !(get = (CK_C_GetFunctionList) dlsym(dl, "C_GetFunctionList")) || get(&f) != CKR_OK) {
                fprintf(stderr, "token-cost: cannot load %s\n", argv[1]);
                return 1;
        }
        if ((rv = f->C_Initialize(NULL)) != CKR_OK)
                return fail("C_Initialize", rv);
        if ((rv = f->C_GetSlotList(CK_TRUE, slots, &n_slots)) != CKR_OK)
                return fail("C_GetSlotList", rv);
        CK_SLOT_ID slot = (CK_SLOT_ID) -1;
        for (CK_ULONG i = 0; i < n_slots; i++) {
                CK_TOKEN_INFO ti;
                size_t l = strlen(argv[2]);
                if (f->C_GetTokenInfo(slots[i], &ti) == CKR_OK && l <= sizeof(ti.label) &&
                    memcmp(ti.label, argv[2], l) == 0 && (l == sizeof(ti.label) || ti.label[l] == ' '))
                        slot = slots[i];
        }
        if (slot == (CK_SLOT_ID) -1) {
                fprintf(stderr, "token-cost: no token labelled %s\n", argv[2]);
                return 1;
        }
        if ((rv = f->C_OpenSession(slot, CKF_SERIAL_SESSION, NULL, NULL, &s)) != CKR_OK)
                return fail("C_OpenSession", rv);
        if ((rv = f->C_Login(s, CKU_USER, (CK_BYTE *) argv[3], strlen(argv[3]))) != CKR_OK)
                return fail("C_Login", rv);
        if ((rv = f->C_FindObjectsInit(s, tmpl, 2)) != CKR_OK || (rv = f->C_FindObjects(s, &key, 1, &n)) != CKR_OK ||
            (rv = f->C_FindObjectsFinal(s)) != CKR_OK)
                return fail("C_FindObjects", rv);
        if (n != 1) {
                fprintf(stderr, "token-cost: no secret key labelled %s\n", argv[4]);
                return 1;
        }
        if ((rv = f->C_EncryptInit(s, &mech, key)) != CKR_OK || (rv = f->C_Encrypt(s, pt, sizeof(pt), ct, &ct_len)) != CKR_OK)
                return fail("C_Encrypt", rv);

        double t0 = now_us();
        for (int i = 0; i < rounds; i++)
                if ((rv = f->C_FindObjectsInit(s, tmpl, 2)) != CKR_OK || (rv = f->C_FindObjects(s, &h, 1, &n)) != CKR_OK ||
                    (rv = f->C_FindObjectsFinal(s)) != CKR_OK)
                        return fail("C_FindObjects", rv);
        double t1 = now_us();
        for (int i = 0; i < rounds; i++)
                if ((rv = f->C_GetAttributeValue(s, key, &flag, 1)) != CKR_OK)
                        return fail("C_GetAttributeValue", rv);
        double t2 = now_us();
        for (int i = 0; i < rounds; i++) {
                out_len = sizeof(out);
                if ((rv = f->C_DecryptInit(s, &mech, key)) != CKR_OK || (rv = f->C_Decrypt(s, ct, ct_len, out, &out_len)) != CKR_OK)
                        return fail("C_Decrypt", rv);
        }
        double t3 = now_us();
        printf("{\"rounds\":%d,\"find_us\":%.1f,\"flags_us\":%.1f,\"decrypt_us\":%.1f}\n", rounds,
               (t1 - t0) / rounds, (t2 - t1) / rounds, (t3 - t2) / rounds);
        (void) f->C_Logout(s);
        (void) f->C_CloseSession(s);
        (void) f->C_Finalize(NULL);
        return 0;
}
