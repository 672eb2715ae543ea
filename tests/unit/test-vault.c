/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* Vaults against a throw-away SoftHSM2 token: keys, GCM, attributes, data objects, import. */
#include <setjmp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <cmocka.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/rsa.h>

#include "cmek-log.h"
#include "cmek-secmem.h"
#include "vault.h"

static char state_dir[] = "/tmp/test-vault-XXXXXX";
static VaultSet *set;
static Config *config;

static int setup(void **state) {
        char conf[256];
        FILE *f;

        if (getenv("TEST_DEBUG"))
                cmek_log_set_max_level(LOG_DEBUG);
        if (access(SOFTHSM_MODULE, R_OK) < 0) {
                fprintf(stderr, "SoftHSM2 module %s missing, skipping.\n", SOFTHSM_MODULE);
                exit(77);
        }
        assert_non_null(mkdtemp(state_dir));
        snprintf(conf, sizeof(conf), "%s/cmekd.conf", state_dir);
        f = fopen(conf, "we");
        assert_non_null(f);
        fprintf(f, "# test\n[vault broken]\nmodule = /nonexistent/libnothing.so\ntoken = pkcs11:token=x\n");
        fclose(f);
        assert_int_equal(config_load(conf, false, &config, NULL), 0);
        assert_int_equal(vault_set_load(state_dir, config, SOFTHSM_MODULE, &set), 0);
        return 0;
}

static int teardown(void **state) {
        char cmd[512];

        vault_set_free(set);
        config = config_free(config);
        snprintf(cmd, sizeof(cmd), "rm -rf '%s'", state_dir);
        (void) !system(cmd);
        return 0;
}

static Vault *default_vault(void) {
        Vault *v = vault_set_find(set, VAULT_DEFAULT_NAME);
        assert_non_null(v);
        return v;
}

static void test_vaults(void **state) {
        Vault *v = default_vault(), *b;
        json_object *o;

        assert_int_equal(vault_set_size(set), 2);
        assert_null(vault_unavailable_reason(v));
        b = vault_set_find(set, "broken");
        assert_non_null(b);
        assert_non_null(vault_unavailable_reason(b));
        assert_non_null(strstr(vault_unavailable_reason(b), "/nonexistent/libnothing.so"));
        assert_int_equal(vault_data_find(b, NULL, &(VaultData *) { NULL }, &(size_t) { 0 }), -ENOENT);

        assert_int_equal(vault_describe(v, &o), 0);
        assert_string_equal(json_object_get_string(json_object_object_get(json_object_object_get(o, "token"), "label")),
                            VAULT_DEFAULT_TOKEN_LABEL);
        json_object_put(o);
}

static void test_secret(void **state) {
        Vault *v = default_vault();
        CK_OBJECT_HANDLE h, h2;
        VaultKeyFlags f;
        uint8_t iv[12], tag[16], ct[32], pt[32];
        void *out = NULL;

        assert_int_equal(vault_secret_generate(v, "cmek:test:v1", "test:1", 32, &h), 0);
        assert_int_equal(vault_secret_find(v, "cmek:test:v1", &h2), 0);
        assert_true(h == h2);
        assert_int_equal(vault_secret_find(v, "cmek:test:v2", &h2), -ENOENT);
        assert_int_equal(vault_secret_get_flags(v, h, &f), 0);
        assert_true(f.sensitive && !f.extractable && f.encrypt && f.decrypt);
        assert_int_equal(f.value_len, 32);

        RAND_bytes(pt, sizeof(pt));
        assert_int_equal(vault_gcm_encrypt(v, h, "aad", 3, pt, sizeof(pt), iv, ct, tag), 0);
        assert_int_equal(vault_gcm_decrypt(v, h, "aad", 3, iv, ct, sizeof(ct), tag, &out), 0);
        assert_memory_equal(out, pt, sizeof(pt));
        out = cmek_secure_free(out);
        assert_int_equal(vault_gcm_decrypt(v, h, "aaX", 3, iv, ct, sizeof(ct), tag, &out), -EBADMSG);
        tag[0] ^= 1;
        assert_int_equal(vault_gcm_decrypt(v, h, "aad", 3, iv, ct, sizeof(ct), tag, &out), -EBADMSG);
        tag[0] ^= 1;

        /* SoftHSM2 lets CKA_ENCRYPT/CKA_DECRYPT change; the token then refuses the key. */
        assert_int_equal(vault_secret_set_usage(v, h, false), 0);
        assert_int_equal(vault_secret_get_flags(v, h, &f), 0);
        assert_false(f.encrypt || f.decrypt);
        assert_int_equal(vault_gcm_decrypt(v, h, "aad", 3, iv, ct, sizeof(ct), tag, &out), -EKEYREVOKED);
        assert_int_equal(vault_gcm_encrypt(v, h, "aad", 3, pt, sizeof(pt), iv, ct, tag), -EKEYREVOKED);
        assert_int_equal(vault_secret_set_usage(v, h, true), 0);
        assert_int_equal(vault_gcm_decrypt(v, h, "aad", 3, iv, ct, sizeof(ct), tag, &out), 0);
        out = cmek_secure_free(out);

        assert_int_equal(vault_secret_generate(v, "cmek:test:v9", "test:9", 20, &h2), -EINVAL);
        assert_int_equal(vault_object_destroy(v, h), 0);
        assert_int_equal(vault_secret_find(v, "cmek:test:v1", &h2), -ENOENT);
}

static void test_data(void **state) {
        Vault *v = default_vault();
        CK_OBJECT_HANDLE h;
        VaultData *d = NULL;
        size_t n = 0;

        assert_int_equal(vault_data_create(v, "obj1", "{\"a\":1}", &h), 0);
        assert_int_equal(vault_data_find(v, "obj1", &d, &n), 0);
        assert_int_equal(n, 1);
        assert_string_equal(d[0].value, "{\"a\":1}");
        vault_data_array_free(d, n);
        /* whether the token lets CKA_VALUE change decides how key.c updates metadata */
        int r = vault_data_update(v, h, "{\"a\":2}");
        assert_true(r == 0 || r == -EOPNOTSUPP);
        fprintf(stderr, "CKA_VALUE of a data object is %s.\n", r == 0 ? "modifiable" : "read-only");
        assert_int_equal(vault_data_find(v, NULL, &d, &n), 0);
        assert_int_equal(n, 1);
        assert_string_equal(d[0].value, r == 0 ? "{\"a\":2}" : "{\"a\":1}");
        vault_data_array_free(d, n);
        assert_int_equal(vault_object_destroy(v, h), 0);
        assert_int_equal(vault_data_find(v, "obj1", &d, &n), 0);
        assert_int_equal(n, 0);
        vault_data_array_free(d, n);
}

/* The customer's side of an import, as cmekctl key wrap-for-import does it. */
static size_t wrap(const char *pem, VaultWrapAlgorithm alg, const uint8_t *key, size_t key_size, uint8_t *out) {
        BIO *bio = BIO_new_mem_buf(pem, -1);
        EVP_PKEY *pk = PEM_read_bio_PUBKEY(bio, NULL, NULL, NULL);
        EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new(pk, NULL);
        uint8_t eph[32];
        size_t n = 4096;
        int l1 = 0, l2 = 0;

        assert_non_null(pk);
        RAND_bytes(eph, sizeof(eph));
        assert_int_equal(EVP_PKEY_encrypt_init(ctx), 1);
        assert_true(EVP_PKEY_CTX_set_rsa_padding(ctx, RSA_PKCS1_OAEP_PADDING) > 0);
        assert_true(EVP_PKEY_CTX_set_rsa_oaep_md(ctx, EVP_sha256()) > 0);
        assert_true(EVP_PKEY_CTX_set_rsa_mgf1_md(ctx, EVP_sha256()) > 0);
        if (alg == VAULT_WRAP_RSA_OAEP_SHA256) {
                assert_int_equal(EVP_PKEY_encrypt(ctx, out, &n, key, key_size), 1);
        } else {
                assert_int_equal(EVP_PKEY_encrypt(ctx, out, &n, eph, sizeof(eph)), 1);
                EVP_CIPHER_CTX *c = EVP_CIPHER_CTX_new();
                EVP_CIPHER_CTX_set_flags(c, EVP_CIPHER_CTX_FLAG_WRAP_ALLOW);
                assert_int_equal(EVP_EncryptInit_ex(c, EVP_aes_256_wrap_pad(), NULL, eph, NULL), 1);
                assert_int_equal(EVP_EncryptUpdate(c, out + n, &l1, key, (int) key_size), 1);
                assert_int_equal(EVP_EncryptFinal_ex(c, out + n + l1, &l2), 1);
                EVP_CIPHER_CTX_free(c);
                n += (size_t) (l1 + l2);
        }
        EVP_PKEY_CTX_free(ctx);
        EVP_PKEY_free(pk);
        BIO_free(bio);
        return n;
}

static size_t count_objects(Vault *v) {
        json_object *o;
        VaultData *d = NULL;
        size_t n = 0, total = 0;
        CK_OBJECT_HANDLE h;
        char label[64];

        /* our data objects plus the imported key labels we use below */
        assert_int_equal(vault_data_find(v, NULL, &d, &n), 0);
        vault_data_array_free(d, n);
        total = n;
        for (int i = 0; i < 8; i++) {
                snprintf(label, sizeof(label), "cmek:imp:v%d", i);
                if (vault_secret_find(v, label, &h) == 0)
                        total++;
        }
        assert_int_equal(vault_describe(v, &o), 0);
        json_object_put(o);
        return total;
}

/* Decrypts with the raw key in OpenSSL what the token encrypted. */
static void check_with_raw_key(Vault *v, CK_OBJECT_HANDLE h, const uint8_t *key, size_t key_size) {
        uint8_t iv[12], tag[16], ct[32], pt[32], out[32];
        const EVP_CIPHER *c = key_size == 32 ? EVP_aes_256_gcm() : key_size == 24 ? EVP_aes_192_gcm() : EVP_aes_128_gcm();
        EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new();
        int l;

        RAND_bytes(pt, sizeof(pt));
        assert_int_equal(vault_gcm_encrypt(v, h, "x", 1, pt, sizeof(pt), iv, ct, tag), 0);
        assert_int_equal(EVP_DecryptInit_ex(ctx, c, NULL, key, iv), 1);
        assert_int_equal(EVP_DecryptUpdate(ctx, NULL, &l, (const uint8_t *) "x", 1), 1);
        assert_int_equal(EVP_DecryptUpdate(ctx, out, &l, ct, sizeof(ct)), 1);
        assert_int_equal(EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_TAG, 16, tag), 1);
        assert_int_equal(EVP_DecryptFinal_ex(ctx, out + l, &l), 1);
        assert_memory_equal(out, pt, sizeof(pt));
        EVP_CIPHER_CTX_free(ctx);
}

static void test_import(void **state) {
        Vault *v = default_vault();
        _cleanup_free_ char *pem = NULL, *pem2 = NULL;
        uint8_t key[32], blob[1024];
        CK_OBJECT_HANDLE h;
        unsigned bytes;
        size_t n, before;

        assert_int_equal(vault_wrapping_key_pem(v, false, &pem), -ENOENT);
        assert_int_equal(vault_secret_import(v, VAULT_WRAP_RSA_OAEP_SHA256, "x", 1, "cmek:imp:v0", "imp:0", &h, &bytes), -ENOKEY);
        assert_int_equal(vault_wrapping_key_pem(v, true, &pem), 0);
        assert_non_null(strstr(pem, "BEGIN PUBLIC KEY"));
        assert_int_equal(vault_wrapping_key_pem(v, false, &pem2), 0);
        assert_string_equal(pem, pem2);

        for (VaultWrapAlgorithm alg = 0; alg < _VAULT_WRAP_MAX; alg++)
                for (size_t ks = 16; ks <= 32; ks += 8) {
                        char label[32], id[32];
                        snprintf(label, sizeof(label), "cmek:imp:v%d", (int) (alg * 3 + ks / 8 - 2));
                        snprintf(id, sizeof(id), "imp:%d", (int) (alg * 3 + ks / 8 - 2));
                        RAND_bytes(key, sizeof(key));
                        n = wrap(pem, alg, key, ks, blob);

                        before = count_objects(v);
                        /* corrupted, truncated, too long: refused, nothing left behind */
                        blob[n - 5] ^= 0x40;
                        assert_int_equal(vault_secret_import(v, alg, blob, n, label, id, &h, &bytes), -EBADMSG);
                        blob[n - 5] ^= 0x40;
                        blob[10] ^= 0x40;
                        assert_int_equal(vault_secret_import(v, alg, blob, n, label, id, &h, &bytes), -EBADMSG);
                        blob[10] ^= 0x40;
                        assert_int_equal(vault_secret_import(v, alg, blob, n - 1, label, id, &h, &bytes), -EMSGSIZE);
                        /* may still be a valid KWP length: then the unwrap itself fails */
                        int r = vault_secret_import(v, alg, blob, n - 8, label, id, &h, &bytes);
                        assert_true(r == -EMSGSIZE || r == -EBADMSG);
                        assert_int_equal(vault_secret_import(v, alg, blob, 100, label, id, &h, &bytes), -EMSGSIZE);
                        assert_int_equal(count_objects(v), before);

                        assert_int_equal(vault_secret_import(v, alg, blob, n, label, id, &h, &bytes), 0);
                        assert_int_equal(bytes, ks);
                        VaultKeyFlags f;
                        assert_int_equal(vault_secret_get_flags(v, h, &f), 0);
                        assert_true(f.sensitive && !f.extractable && f.encrypt && f.decrypt);
                        check_with_raw_key(v, h, key, ks);
                }
}

static void test_reload(void **state) {
        VaultSet *s2 = NULL;
        CK_OBJECT_HANDLE h;

        /* a second load (restart) finds the initialised token and its objects */
        assert_int_equal(vault_set_load(state_dir, NULL, SOFTHSM_MODULE, &s2), 0);
        assert_int_equal(vault_set_size(s2), 1);
        assert_null(vault_unavailable_reason(vault_set_get(s2, 0)));
        assert_int_equal(vault_secret_find(vault_set_get(s2, 0), "cmek:imp:v1", &h), 0);
        vault_set_free(s2);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_vaults),
                cmocka_unit_test(test_secret),
                cmocka_unit_test(test_data),
                cmocka_unit_test(test_import),
                cmocka_unit_test(test_reload),
        };
        /* the automake harness reads TAP (TEST_LOG_DRIVER is tap-driver.sh) */
        cmocka_set_message_output(CM_OUTPUT_TAP);
        return cmocka_run_group_tests(tests, setup, teardown);
}
