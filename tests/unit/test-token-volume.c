/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* LUKS2 side of daemon/volume.c on image files, with a stub key store: bind, unwrap, re-wrap,
 * --new-secret, header repair after interruptions, copied tokens, remove-slot, shred. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <fcntl.h>
#include <limits.h>
#include <unistd.h>
#include <sys/stat.h>
#include <cmocka.h>
#include <libcryptsetup.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <openssl/sha.h>

#include "cmek-secmem.h"
#include "cmek-log.h"
#include "key.h"
#include "volume.h"

/* ---- stub key store: AES-256-GCM with key = SHA-256(id ":" version) ---- */

typedef struct StubKey { const char *id; KeyState state; unsigned version; bool provider; } StubKey;
static StubKey stub_keys[] = {
        { "cmek.key.test.a", KEY_STATE_ENABLED, 1, false },
        { "cmek.key.test.b", KEY_STATE_ENABLED, 1, false },
        { "cmek.key.default", KEY_STATE_ENABLED, 1, true },
};
static unsigned n_audit = 0;

static StubKey *stub_find(const char *id) {
        for (size_t i = 0; i < ARRAY_SIZE(stub_keys); i++)
                if (streq(stub_keys[i].id, id))
                        return &stub_keys[i];
        return NULL;
}

static int stub_usable(StubKey *k, unsigned version) {
        if (!k)
                return -ENOENT;
        switch (k->state) {
        case KEY_STATE_DISABLED: return -EKEYREVOKED;
        case KEY_STATE_PENDING_DELETION: return -EKEYEXPIRED;
        case KEY_STATE_DELETED: return -ENOKEY;
        default: return version > k->version ? -ENOENT : 0;
        }
}

static void stub_kek(const char *id, unsigned version, uint8_t out[32]) {
        char buf[300];
        snprintf(buf, sizeof(buf), "%s:%u", id, version);
        SHA256((const unsigned char *) buf, strlen(buf), out);
}

const char *key_state_to_string(KeyState s) {
        static const char *const t[] = { "ENABLED", "DISABLED", "PENDING_DELETION", "DELETED" };
        return s >= 0 && s < _KEY_STATE_MAX ? t[s] : NULL;
}
void key_info_done(KeyInfo *k) {
        free(k->id);
        free(k->name);
        free(k->compartment);
        free(k->vault);
        free(k->on_disable);
        *k = (KeyInfo) {};
}
int key_lookup(Manager *m, const char *id, KeyInfo *ret) {
        StubKey *k = stub_find(id);
        if (!k)
                return -ENOENT;
        *ret = (KeyInfo) { .id = strdup(k->id), .name = strdup("n"), .compartment = strdup("test"),
                           .vault = strdup("default"), .state = k->state, .current_version = k->version,
                           .n_versions = k->version, .provider_managed = k->provider };
        return 0;
}
int key_get_default(Manager *m, KeyInfo *ret) { return key_lookup(m, "cmek.key.default", ret); }
int key_watch(Manager *m, const char *id, KeyState *ret_state) {
        StubKey *k = stub_find(id);
        if (!k)
                return -ENOENT;
        *ret_state = k->state;
        return 0;
}
int key_encrypt(Manager *m, const char *key_id, unsigned version, const void *aad, size_t aad_size,
                const void *pt, size_t pt_size, unsigned *ret_version, uint8_t iv[12], void *ct, uint8_t tag[16]) {
        StubKey *k = stub_find(key_id);
        uint8_t kek[32];
        int r = stub_usable(k, version), len;
        if (r < 0)
                return r;
        version = version ?: k->version;
        stub_kek(key_id, version, kek);
        RAND_bytes(iv, 12);
        EVP_CIPHER_CTX *c = EVP_CIPHER_CTX_new();
        assert_int_equal(EVP_EncryptInit_ex(c, EVP_aes_256_gcm(), NULL, kek, iv), 1);
        assert_int_equal(EVP_EncryptUpdate(c, NULL, &len, aad, (int) aad_size), 1);
        assert_int_equal(EVP_EncryptUpdate(c, ct, &len, pt, (int) pt_size), 1);
        assert_int_equal(EVP_EncryptFinal_ex(c, (uint8_t *) ct + len, &len), 1);
        assert_int_equal(EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_GCM_GET_TAG, 16, tag), 1);
        EVP_CIPHER_CTX_free(c);
        *ret_version = version;
        return 0;
}
int key_decrypt(Manager *m, const char *key_id, unsigned version, const void *aad, size_t aad_size,
                const uint8_t iv[12], const void *ct, size_t ct_size, const uint8_t tag[16], void **ret_pt) {
        StubKey *k = stub_find(key_id);
        uint8_t kek[32];
        int r = stub_usable(k, version), len, ok;
        void *pt;
        if (r < 0)
                return r;
        stub_kek(key_id, version, kek);
        pt = cmek_secure_alloc(ct_size);
        EVP_CIPHER_CTX *c = EVP_CIPHER_CTX_new();
        EVP_DecryptInit_ex(c, EVP_aes_256_gcm(), NULL, kek, iv);
        EVP_DecryptUpdate(c, NULL, &len, aad, (int) aad_size);
        EVP_DecryptUpdate(c, pt, &len, ct, (int) ct_size);
        EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_GCM_SET_TAG, 16, (void *) tag);
        ok = EVP_DecryptFinal_ex(c, (uint8_t *) pt + len, &len);
        EVP_CIPHER_CTX_free(c);
        if (ok != 1) {
                cmek_secure_free(pt);
                return -EBADMSG;
        }
        *ret_pt = pt;
        return 0;
}
int manager_audit(Manager *m, Call *c, const AuditRecord *rec) { n_audit++; return 0; }
void manager_event(Manager *m, const char *type, json_object *data) { json_object_put(data); }

/* ---- helpers ---- */

static char dir[] = "/tmp/test-token-volume.XXXXXX";
static Manager manager;

static char *img(const char *name) {
        static char p[4][256];
        static int i;
        i = (i + 1) % 4;
        snprintf(p[i], sizeof(p[i]), "%s/%s", dir, name);
        return p[i];
}

/* What api-volume.c does through volume-open.c, without the caller's credentials: the path as
 * an opened VolumeFile, probed before the operation. */
static int file_open(const char *path, bool create, VolumeFile *f) {
        char link[PATH_MAX];
        ssize_t n;

        *f = (VolumeFile) VOLUME_FILE_NULL;
        f->fd = open(path, O_RDWR | O_CLOEXEC);
        if (f->fd < 0 && errno == ENOENT && create) {
                f->fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
                f->created = f->fd >= 0;
        }
        if (f->fd < 0)
                return errno == ENOENT ? -ENODEV : -errno;
        assert_int_equal(fstat(f->fd, &f->st), 0);
        snprintf(f->proc, sizeof(f->proc), "/proc/self/fd/%d", f->fd);
        n = readlink(f->proc, link, sizeof(link) - 1);
        assert_true(n > 0);
        link[n] = 0;
        f->real = strdup(link);
        return 0;
}

static void file_close(VolumeFile *f) {
        close(f->fd);
        free(f->real);
}

static int create_at(Manager *m, const char *path, uint64_t size, const char *key, bool force,
                     const void *recovery, size_t recovery_size, Volume **ret) {
        VolumeFile f;
        int r = file_open(path, size > 0, &f);
        if (r < 0)
                return r;
        r = volume_create(m, &f, size, key, force, recovery, recovery_size, ret);
        if (r < 0 && f.created)
                unlink(path);
        file_close(&f);
        return r;
}

static int bind_at(Manager *m, const char *path, const char *key, const void *unlock, size_t unlock_size, Volume **ret) {
        VolumeFile f;
        VolumeProbe p = VOLUME_PROBE_NULL;
        int r = file_open(path, false, &f);
        if (r < 0)
                return r;
        r = volume_probe(&f, &p);
        if (r >= 0 && p.key_id && !volume_find_uuid(m, p.uuid))
                r = volume_adopt_file(m, &f, p.uuid, NULL);
        if (r >= 0)
                r = volume_bind(m, &f, &p, key, unlock, unlock_size, -1, ret);
        volume_probe_done(&p);
        file_close(&f);
        return r;
}

/* Does the header open with this volume's token (whatever is in it now)? */
static int opens_with_token(Volume *v) {
        return volume_activate(&manager, v, NULL);
}

static int count_tokens(const char *path, const char *type) {
        struct crypt_device *cd;
        int n = 0;
        assert_int_equal(crypt_init(&cd, path), 0);
        assert_int_equal(crypt_load(cd, CRYPT_LUKS2, NULL), 0);
        for (int i = 0; i < 32; i++) {
                const char *t;
                if (crypt_token_status(cd, i, &t) != CRYPT_TOKEN_INACTIVE && t && streq(t, type))
                        n++;
        }
        crypt_free(cd);
        return n;
}

static int count_keyslots(const char *path) {
        struct crypt_device *cd;
        int n = 0;
        assert_int_equal(crypt_init(&cd, path), 0);
        assert_int_equal(crypt_load(cd, CRYPT_LUKS2, NULL), 0);
        for (int i = 0; i < 32; i++) {
                crypt_keyslot_info s = crypt_keyslot_status(cd, i);
                if (s == CRYPT_SLOT_ACTIVE || s == CRYPT_SLOT_ACTIVE_LAST)
                        n++;
        }
        crypt_free(cd);
        return n;
}

static int setup(void **state) {
        assert_non_null(mkdtemp(dir));
        manager.state_dir = dir;
        manager.test_hooks = false;
        assert_int_equal(volumes_init(&manager), 0);
        return 0;
}

static int teardown(void **state) {
        char cmd[300];
        volumes_done(&manager);
        if (getenv("TEST_KEEP"))
                return 0;
        snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
        assert_int_equal(system(cmd), 0);
        return 0;
}

/* ---- tests ---- */

static void test_create_unlock(void **state) {
        Volume *v;
        struct crypt_device *cd;
        const char *json;

        assert_int_equal(create_at(&manager, img("a.img"), 16 << 20, "cmek.key.test.a", false, NULL, 0, &v), 0);
        assert_int_equal(v->state, VOLUME_BOUND);
        assert_int_equal(v->key_version, 1);
        assert_int_equal(opens_with_token(v), 0);
        assert_int_equal(count_keyslots(img("a.img")), 1);
        /* the token names its keyslot */
        assert_int_equal(crypt_init(&cd, img("a.img")), 0);
        assert_int_equal(crypt_load(cd, CRYPT_LUKS2, NULL), 0);
        assert_int_equal(crypt_token_json_get(cd, v->token, &json), v->token);
        char want[32];
        snprintf(want, sizeof(want), "\"keyslots\":[\"%d\"]", v->keyslot);
        assert_non_null(strstr(json, want));
        crypt_free(cd);
        /* creating over it again is refused */
        Volume *w;
        assert_int_equal(create_at(&manager, img("a.img"), 0, "cmek.key.test.a", true, NULL, 0, &w), -EEXIST);
        /* registry persisted and reloads */
        volumes_done(&manager);
        assert_int_equal(volumes_init(&manager), 0);
        v = volume_find(&manager, img("a.img"));
        assert_non_null(v);
        assert_int_equal(opens_with_token(v), 0);
        /* disabled key: refused, enabled again: opens */
        stub_keys[0].state = KEY_STATE_DISABLED;
        assert_int_equal(opens_with_token(v), -EKEYREVOKED);
        stub_keys[0].state = KEY_STATE_ENABLED;
        assert_int_equal(opens_with_token(v), 0);
}

static void test_bind_existing(void **state) {
        char cmd[512];
        Volume *v;

        snprintf(cmd, sizeof(cmd), "truncate -s 20M %s && printf pw | cryptsetup luksFormat -q --type luks2 "
                 "--pbkdf pbkdf2 --pbkdf-force-iterations 1000 --key-file - %s", img("b.img"), img("b.img"));
        assert_int_equal(system(cmd), 0);
        /* wrong secret: nothing written */
        assert_int_equal(bind_at(&manager, img("b.img"), "cmek.key.test.a", "nope", 4, &v), -EPERM);
        assert_int_equal(count_keyslots(img("b.img")), 1);
        assert_int_equal(count_tokens(img("b.img"), "cmek"), 0);
        /* disabled key: nothing written */
        stub_keys[0].state = KEY_STATE_DISABLED;
        assert_int_equal(bind_at(&manager, img("b.img"), "cmek.key.test.a", "pw", 2, &v), -EKEYREVOKED);
        stub_keys[0].state = KEY_STATE_ENABLED;
        assert_int_equal(count_keyslots(img("b.img")), 1);
        assert_int_equal(bind_at(&manager, img("b.img"), "cmek.key.test.a", "pw", 2, &v), 0);
        assert_int_equal(count_keyslots(img("b.img")), 2);
        assert_int_equal(opens_with_token(v), 0);
        /* bind --key OTHER moves it */
        assert_int_equal(bind_at(&manager, img("b.img"), "cmek.key.test.b", NULL, 0, &v), 1);
        assert_string_equal(v->key_id, "cmek.key.test.b");
        assert_int_equal(opens_with_token(v), 0);
        assert_int_equal(count_keyslots(img("b.img")), 2);
        /* LUKS1 and non-LUKS refused */
        snprintf(cmd, sizeof(cmd), "truncate -s 8M %s && printf pw | cryptsetup luksFormat -q --type luks1 "
                 "--pbkdf-force-iterations 1000 --key-file - %s && truncate -s 8M %s",
                 img("l1.img"), img("l1.img"), img("plain.img"));
        assert_int_equal(system(cmd), 0);
        assert_int_equal(bind_at(&manager, img("l1.img"), "cmek.key.test.a", "pw", 2, &v), -EMEDIUMTYPE);
        assert_int_equal(bind_at(&manager, img("plain.img"), "cmek.key.test.a", "pw", 2, &v), -EMEDIUMTYPE);
        assert_int_equal(bind_at(&manager, img("none.img"), "cmek.key.test.a", "pw", 2, &v), -ENODEV);
}

static void test_rewrap(void **state) {
        Volume *v = volume_find(&manager, img("a.img"));
        RewrapResult res;
        int slot;

        assert_non_null(v);
        assert_int_equal(volume_rewrap(&manager, v, NULL, false, &res), 0);
        assert_int_equal(res, REWRAP_CURRENT);
        stub_keys[0].version = 2;
        assert_int_equal(volume_rewrap(&manager, v, NULL, false, &res), 0);
        assert_int_equal(res, REWRAP_DONE);
        assert_int_equal(v->key_version, 2);
        assert_int_equal(opens_with_token(v), 0);
        /* new secret: new keyslot, old one gone, one token */
        slot = v->keyslot;
        assert_int_equal(volume_rewrap(&manager, v, NULL, true, &res), 0);
        assert_int_equal(res, REWRAP_DONE);
        assert_int_not_equal(v->keyslot, slot);
        assert_int_equal(count_keyslots(img("a.img")), 1);
        assert_int_equal(count_tokens(img("a.img"), "cmek"), 1);
        assert_int_equal(opens_with_token(v), 0);
        /* rotation hook */
        stub_keys[0].version = 3;
        volumes_key_rotated(&manager, "cmek.key.test.a", 3);
        assert_int_equal(v->key_version, 3);
        assert_int_equal(opens_with_token(v), 0);
}

/* A token copied into another volume's header does not open it. */
static void test_copied_token(void **state) {
        Volume *a = volume_find(&manager, img("a.img")), *c;
        struct crypt_device *cda, *cdc;
        const char *json;
        CmekToken t = CMEK_TOKEN_NULL;
        void *dek = NULL;

        assert_int_equal(create_at(&manager, img("c.img"), 16 << 20, "cmek.key.test.a", false, NULL, 0, &c), 0);
        assert_int_equal(crypt_init(&cda, img("a.img")), 0);
        assert_int_equal(crypt_load(cda, CRYPT_LUKS2, NULL), 0);
        assert_int_equal(crypt_token_json_get(cda, a->token, &json), a->token);
        assert_int_equal(cmek_token_parse(json, &t, NULL), 0);
        /* unwrapping a's token under c's UUID fails authentication */
        assert_int_equal(volume_unwrap_token(&manager, c->uuid, &t, &dek), -EBADMSG);
        assert_int_equal(volume_unwrap_token(&manager, a->uuid, &t, &dek), 0);
        cmek_secure_free(dek);
        /* and planted in c's header at c's keyslot it does not open c */
        assert_int_equal(crypt_init(&cdc, img("c.img")), 0);
        assert_int_equal(crypt_load(cdc, CRYPT_LUKS2, NULL), 0);
        assert_int_equal(crypt_token_json_set(cdc, c->token, NULL), 0);
        t.keyslot = c->keyslot;
        char *j;
        assert_int_equal(cmek_token_to_json(&t, &j), 0);
        assert_true(crypt_token_json_set(cdc, CRYPT_ANY_TOKEN, j) >= 0);
        free(j);
        crypt_free(cdc);
        crypt_free(cda);
        cmek_token_done(&t);
        assert_int_equal(opens_with_token(c), -EBADMSG);
}

/* Simulate each interruption of --new-secret by doing steps by hand, then check the header
 * still opens and repair (any operation) finishes or undoes it. */
static void test_repair(void **state) {
        Volume *v = volume_find(&manager, img("a.img"));
        struct crypt_device *cd;
        const char *json;
        CmekToken t = CMEK_TOKEN_NULL;
        char *j;
        RewrapResult res;

        /* after a.: pending mark only */
        assert_int_equal(crypt_init(&cd, img("a.img")), 0);
        assert_int_equal(crypt_load(cd, CRYPT_LUKS2, NULL), 0);
        assert_int_equal(crypt_token_json_get(cd, v->token, &json), v->token);
        assert_int_equal(cmek_token_parse(json, &t, NULL), 0);
        t.pending_keyslot = 7;
        assert_int_equal(cmek_token_to_json(&t, &j), 0);
        assert_int_equal(crypt_token_json_set(cd, v->token, j), v->token);
        free(j);
        /* after b.: a keyslot 7 whose secret was never wrapped */
        void *dek = NULL;
        assert_int_equal(volume_unwrap_token(&manager, v->uuid, &t, &dek), 0);
        assert_int_equal(crypt_keyslot_add_by_passphrase(cd, 7, dek, 32, "orphan-secret-of-32-bytes.......", 32), 7);
        cmek_secure_free(dek);
        crypt_free(cd);
        assert_int_equal(count_keyslots(img("a.img")), 2);
        assert_int_equal(opens_with_token(v), 0); /* repairs */
        assert_int_equal(count_tokens(img("a.img"), "cmek"), 1);
        assert_int_equal(count_keyslots(img("a.img")), 1);
        assert_int_equal(volume_rewrap(&manager, v, NULL, false, &res), 0);
        assert_int_equal(res, REWRAP_CURRENT);
        cmek_token_done(&t);
}

static void test_remove_and_shred(void **state) {
        Volume *v;
        char cmd[512];

        /* strict: only the CMEK slot: remove-slot refused */
        assert_int_equal(create_at(&manager, img("s.img"), 16 << 20, "cmek.key.test.b", false, NULL, 0, &v), 0);
        assert_int_equal(volume_remove_slot(&manager, v), -ENOTEMPTY);
        assert_int_equal(opens_with_token(v), 0);
        /* with a recovery passphrase (added by cryptsetup, cheap PBKDF for the test) */
        snprintf(cmd, sizeof(cmd), "truncate -s 20M %s && printf pw | cryptsetup luksFormat -q --type luks2 "
                 "--pbkdf pbkdf2 --pbkdf-force-iterations 1000 --key-file - %s", img("r.img"), img("r.img"));
        assert_int_equal(system(cmd), 0);
        assert_int_equal(bind_at(&manager, img("r.img"), "cmek.key.test.b", "pw", 2, &v), 0);
        /* delete key b: s is shredded, r (and b.img) keep the passphrase */
        stub_keys[1].state = KEY_STATE_DELETED;
        volumes_key_state_changed(&manager, "cmek.key.test.b", KEY_STATE_PENDING_DELETION, KEY_STATE_DELETED);
        v = volume_find(&manager, img("s.img"));
        assert_int_equal(v->state, VOLUME_UNRECOVERABLE);
        assert_int_equal(count_keyslots(img("s.img")), 0);
        assert_int_equal(count_tokens(img("s.img"), "cmek"), 0);
        v = volume_find(&manager, img("r.img"));
        assert_int_equal(v->state, VOLUME_KEY_DELETED);
        assert_int_equal(count_keyslots(img("r.img")), 1);
        snprintf(cmd, sizeof(cmd), "printf pw | cryptsetup open --test-passphrase --key-file - %s", img("r.img"));
        assert_int_equal(system(cmd), 0);
        stub_keys[1].state = KEY_STATE_ENABLED;
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_create_unlock),
                cmocka_unit_test(test_bind_existing),
                cmocka_unit_test(test_rewrap),
                cmocka_unit_test(test_copied_token),
                cmocka_unit_test(test_repair),
                cmocka_unit_test(test_remove_and_shred),
        };
        if (getuid() != 0 || system("cryptsetup --version >/dev/null 2>&1") != 0) {
                printf("SKIP: needs root and cryptsetup\n");
                return 77;
        }
        cmek_log_set_max_level(getenv("TEST_DEBUG") ? LOG_DEBUG : LOG_WARNING);
        return cmocka_run_group_tests(tests, setup, teardown);
}
