/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* Fuzz target: the import (BYOK) blob as the daemon sees it before the token does anything.
 * The PKCS#11 session cannot run here, so this target chains the daemon's own steps that do
 * not need the token, all linked from the real code (libcmek-client.la, libcmekd-core.la):
 *   daemon/api-key.c create_or_import(): cmek_base64_decode_to() (lib/cmek-base64.c) of
 *   "wrapped" into a buffer of IMPORT_BLOB_MAX bytes;
 *   daemon/vault.c vault_import_blob_check(): the blob size against the algorithm and a
 *   4096-bit modulus;
 *   daemon/vault.c vault_oaep_decode(): the OAEP(SHA-256, MGF1-SHA-256) decoding of the raw
 *   RSA block (the unwrap_oaep() fallback) and the AES key length check.
 * Raw RSA decryption is a permutation of the block, so fuzzing the decrypted block directly
 * reaches every input the OAEP decoder can get.
 * Input: byte 0 selects the algorithm, the rest is the "wrapped" base64 string. */
#include <stdbool.h>
#include <sys/types.h>

#include "cmek-base64.h"
#include "cmek-secmem.h"
#include "fuzz.h"
#include "vault.h"

#define IMPORT_BLOB_MAX 2048U   /* daemon/api-key.c */
#define MOD_SIZE (VAULT_WRAPPING_KEY_BITS / 8U)

static void oaep_decode(const uint8_t *block) {
        uint8_t *key = cmek_secure_alloc(MOD_SIZE);
        int key_size;

        if (!key)
                abort();
        key_size = vault_oaep_decode(block, MOD_SIZE, MOD_SIZE, key);
        if (key_size > 0 && key_size != 16 && key_size != 24 && key_size != 32)
                abort(); /* the vault hands only AES key lengths to the token */
        cmek_secure_free(key);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        VaultWrapAlgorithm alg;
        char *w;
        uint8_t *blob;
        size_t kwp;
        ssize_t n;

        if (size < 1)
                return 0;
        alg = data[0] & 1 ? VAULT_WRAP_RSA_OAEP_AES_SHA256 : VAULT_WRAP_RSA_OAEP_SHA256;
        w = fuzz_strndup(data + 1, size - 1);
        blob = malloc(IMPORT_BLOB_MAX);
        if (!blob)
                abort();
        n = cmek_base64_decode_to(w, blob, IMPORT_BLOB_MAX);
        if (n >= 0) {
                if ((size_t) n > IMPORT_BLOB_MAX)
                        abort(); /* the size handed to the vault must lie inside the buffer */
                if (vault_import_blob_check(alg, (size_t) n, MOD_SIZE, &kwp) >= 0) {
                        if ((size_t) n < MOD_SIZE + kwp)
                                abort(); /* the vault reads MOD_SIZE + kwp bytes of the blob */
                        oaep_decode(blob);
                }
        }
        explicit_bzero(blob, IMPORT_BLOB_MAX);
        free(blob);
        free(w);
        return 0;
}
