/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* Fuzz target: the import (BYOK) blob as the daemon sees it before the token does anything.
 * The decoding is not separable from its handler and from the PKCS#11 session, so this target
 * repeats, step for step, what io.cmek.Key.Import does with the "wrapped" string:
 *   daemon/api-key.c create_or_import(): cmek_base64_decode_to() (lib/cmek-base64.c, the real decoder)
 *   into a buffer of IMPORT_BLOB_MAX bytes;
 *   daemon/vault.c import_key(): blob size against the algorithm and a 4096-bit modulus;
 *   daemon/vault.c unwrap_oaep() fallback: OAEP(SHA-256, MGF1-SHA-256) decoding of the raw RSA
 *   block in locked memory and the AES key length check.
 * Raw RSA decryption is a permutation of the block, so fuzzing the decrypted block directly
 * reaches every input the OAEP decoder can get. Keep this file in step with those functions.
 * Input: byte 0 selects the algorithm, the rest is the "wrapped" base64 string. */
#define OPENSSL_SUPPRESS_DEPRECATED /* as daemon/vault.c */
#include <stdbool.h>
#include <openssl/evp.h>
#include <openssl/rsa.h>

#include "cmek-base64.h"
#include "cmek-secmem.h"
#include "fuzz.h"

#define IMPORT_BLOB_MAX 2048U   /* daemon/api-key.c */
#define MOD_SIZE 512U           /* RSA-4096 wrapping key */

static int oaep_decode(const uint8_t *block, size_t mod_size) {
        uint8_t *raw = cmek_secure_alloc(mod_size), *key = cmek_secure_alloc(mod_size);
        int key_size = -1;

        if (!raw || !key)
                abort();
        memcpy(raw, block, mod_size);
        key_size = RSA_padding_check_PKCS1_OAEP_mgf1(key, (int) mod_size, raw, (int) mod_size, (int) mod_size,
                                                     NULL, 0, EVP_sha256(), EVP_sha256());
        if (key_size > (int) mod_size)
                abort();
        cmek_secure_free(raw);
        cmek_secure_free(key);
        if (key_size <= 0)
                return -1;
        return key_size == 16 || key_size == 24 || key_size == 32 ? 0 : -1;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        bool aes;
        char *w;
        uint8_t *blob;
        size_t alloc;
        ssize_t n;

        if (size < 1)
                return 0;
        aes = data[0] & 1;
        w = fuzz_strndup(data + 1, size - 1);
        alloc = IMPORT_BLOB_MAX;
        blob = malloc(alloc);
        if (!blob)
                abort();
        n = cmek_base64_decode_to(w, blob, alloc);
        if (n >= 0) {
                if ((size_t) n > alloc)
                        abort(); /* the size handed to the vault must lie inside the buffer */
                if (!aes) {
                        if ((size_t) n == MOD_SIZE)
                                (void) oaep_decode(blob, MOD_SIZE);
                } else {
                        size_t kwp = (size_t) n > MOD_SIZE ? (size_t) n - MOD_SIZE : 0;
                        if (kwp == 24 || kwp == 32 || kwp == 40)
                                (void) oaep_decode(blob, MOD_SIZE);
                }
        }
        explicit_bzero(blob, alloc);
        free(blob);
        free(w);
        return 0;
}
