/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* cmekctl verb groups "vault" and "key": vaults, master keys, lifecycle, import (BYOK). */
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <sys/stat.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/rsa.h>

#include "cmek-base64.h"
#include "cmek-secmem.h"
#include "cmekctl.h"

typedef struct KeyArgs {
        const char *compartment, *vault, *protection_mode, *wrapped_file, *algorithm, *key_file,
                *public_key, *out, *on_disable;
        int64_t length, rotation, days, version;
} KeyArgs;

/* Parses the options of every key/vault verb; returns the index of the first positional
 * argument, or -CTL_EXIT_USAGE after a message. */
static int parse_args(int argc, char *argv[], KeyArgs *a, int n_pos) {
        enum { ARG_COMP = 0x100, ARG_VAULT, ARG_LENGTH, ARG_MODE, ARG_ROT, ARG_DAYS, ARG_WRAPPED, ARG_ALG,
               ARG_KEYFILE, ARG_PUB, ARG_OUT, ARG_ON_DISABLE, ARG_VERSION };
        static const struct option options[] = {
                CTL_OPTION_JSON,
                { "compartment", required_argument, NULL, ARG_COMP },
                { "vault", required_argument, NULL, ARG_VAULT },
                { "length", required_argument, NULL, ARG_LENGTH },
                { "protection-mode", required_argument, NULL, ARG_MODE },
                { "rotation-interval", required_argument, NULL, ARG_ROT },
                { "days", required_argument, NULL, ARG_DAYS },
                { "wrapped-file", required_argument, NULL, ARG_WRAPPED },
                { "wrapping-algorithm", required_argument, NULL, ARG_ALG },
                { "key-file", required_argument, NULL, ARG_KEYFILE },
                { "public-key", required_argument, NULL, ARG_PUB },
                { "out", required_argument, NULL, ARG_OUT },
                { "on-disable", required_argument, NULL, ARG_ON_DISABLE },
                { "version", required_argument, NULL, ARG_VERSION },
                {}
        };
        int c;

        *a = (KeyArgs) { .length = -1, .rotation = -1, .days = -1, .version = -1 };
        optind = 0;
        while ((c = getopt_long(argc, argv, "", options, NULL)) >= 0) {
                char *end;
                switch (c) {
                case 'J': arg_json = true; break;
                case ARG_COMP: a->compartment = optarg; break;
                case ARG_VAULT: a->vault = optarg; break;
                case ARG_MODE: a->protection_mode = optarg; break;
                case ARG_WRAPPED: a->wrapped_file = optarg; break;
                case ARG_ALG: a->algorithm = optarg; break;
                case ARG_KEYFILE: a->key_file = optarg; break;
                case ARG_PUB: a->public_key = optarg; break;
                case ARG_OUT: a->out = optarg; break;
                case ARG_ON_DISABLE:
                        if (!streq(optarg, "suspend") && !streq(optarg, "close")) {
                                fprintf(stderr, "cmekctl %s: --on-disable is 'suspend' or 'close'.\n", argv[0]);
                                return -CTL_EXIT_USAGE;
                        }
                        a->on_disable = optarg;
                        break;
                case ARG_LENGTH:
                case ARG_ROT:
                case ARG_VERSION:
                case ARG_DAYS: {
                        long long v = strtoll(optarg, &end, 10);
                        if (*optarg == 0 || *end != 0 || v < 0 || v > 100000) {
                                fprintf(stderr, "cmekctl %s: '%s' is not a number.\n", argv[0], optarg);
                                return -CTL_EXIT_USAGE;
                        }
                        *(c == ARG_LENGTH ? &a->length : c == ARG_ROT ? &a->rotation :
                          c == ARG_VERSION ? &a->version : &a->days) = v;
                        break;
                }
                default:
                        return -CTL_EXIT_USAGE;
                }
        }
        if (n_pos >= 0 && argc - optind != n_pos) {
                fprintf(stderr, "cmekctl %s: expected %d argument%s; see cmekctl --help.\n", argv[0], n_pos, n_pos == 1 ? "" : "s");
                return -CTL_EXIT_USAGE;
        }
        return optind;
}

static const char *jstr(json_object *o, const char *k) {
        return cmek_json_get_string(o, k);
}

static char *jint(json_object *o, const char *k, char *buf, size_t size) {
        int64_t v = 0;
        if (!cmek_json_get_int64(o, k, &v))
                return NULL;
        snprintf(buf, size, "%" PRIi64, v);
        return buf;
}

/* ---- vault ---- */

static void print_vault(json_object *v) {
        json_object *t = json_object_object_get(v, "token");
        char b[32];

        ctl_print_field("name", jstr(v, "name"));
        ctl_print_field("available", cmek_json_get_bool(v, "available", false) ? "yes" : "no");
        if (jstr(v, "reason"))
                ctl_print_field("reason", jstr(v, "reason"));
        ctl_print_field("uri", jstr(v, "uri"));
        ctl_print_field("module", jstr(v, "module"));
        if (t) {
                ctl_print_field("token label", jstr(t, "label"));
                ctl_print_field("manufacturer", jstr(t, "manufacturer"));
                ctl_print_field("model", jstr(t, "model"));
                ctl_print_field("serial", jstr(t, "serial"));
        }
        ctl_print_field("slots", jint(v, "slots", b, sizeof(b)));
        ctl_print_field("free slots", jint(v, "free_slots", b, sizeof(b)));
        ctl_print_field("keys", jint(v, "keys", b, sizeof(b)));
        json_object *comps = json_object_object_get(v, "compartments");
        if (comps && json_object_is_type(comps, json_type_array)) {
                char list[512] = "";
                for (size_t i = 0; i < json_object_array_length(comps); i++) {
                        const char *cn = json_object_get_string(json_object_array_get_idx(comps, i));
                        if (strlen(list) + strlen(strempty(cn)) + 3 < sizeof(list))
                                strcat(strcat(list, i ? ", " : ""), strempty(cn));
                }
                ctl_print_field("compartments", list);
        } else
                ctl_print_field("compartments", "any");
}

static int verb_vault_list(int argc, char *argv[]) {
        json_object *r = NULL, *a;
        KeyArgs args;
        int k = parse_args(argc, argv, &args, 0);

        if (k < 0)
                return -k;
        k = ctl_call("io.cmek.Vault.List", NULL, &r);
        if (k != 0)
                return k;
        if (arg_json)
                ctl_print_json(r);
        else if (json_object_object_get_ex(r, "vaults", &a)) {
                Table *t = table_new("NAME", "AVAILABLE", "TOKEN", "MODEL", "FREE SLOTS", "KEYS", "URI / REASON", NULL);
                for (size_t i = 0; i < json_object_array_length(a); i++) {
                        json_object *v = json_object_array_get_idx(a, i), *tok = json_object_object_get(v, "token");
                        char fs[32], keys[32];
                        bool ok = cmek_json_get_bool(v, "available", false);
                        table_add(t, jstr(v, "name"), ok ? "yes" : "no", tok ? jstr(tok, "label") : NULL,
                                  tok ? jstr(tok, "model") : NULL, jint(v, "free_slots", fs, sizeof(fs)),
                                  jint(v, "keys", keys, sizeof(keys)), ok ? jstr(v, "uri") : jstr(v, "reason"));
                }
                table_print(t);
        }
        json_object_put(r);
        return 0;
}

static int verb_vault_show(int argc, char *argv[]) {
        json_object *r = NULL, *p = json_object_new_object();
        KeyArgs args;
        int k = parse_args(argc, argv, &args, -1);

        if (k < 0 || argc - k > 1) {
                json_object_put(p);
                return CTL_EXIT_USAGE;
        }
        if (argc - k == 1)
                json_object_object_add(p, "vault", json_object_new_string(argv[k]));
        k = ctl_call("io.cmek.Vault.Show", p, &r);
        json_object_put(p);
        if (k != 0)
                return k;
        if (arg_json)
                ctl_print_json(r);
        else
                print_vault(json_object_object_get(r, "vault"));
        json_object_put(r);
        return 0;
}

/* ---- key ---- */

static void print_key(json_object *key) {
        json_object *vs = json_object_object_get(key, "versions");
        char b[64];

        ctl_print_field("id", jstr(key, "id"));
        ctl_print_field("name", jstr(key, "name"));
        ctl_print_field("compartment", jstr(key, "compartment"));
        ctl_print_field("vault", jstr(key, "vault"));
        ctl_print_field("state", jstr(key, "state"));
        if (cmek_json_get_bool(key, "token_usage_disabled", false))
                ctl_print_field("warning", "CKA_ENCRYPT/CKA_DECRYPT are off in the token: the key is refused");
        if (jstr(key, "deletion_time"))
                ctl_print_field("deletion time", jstr(key, "deletion_time"));
        ctl_print_field("protection mode", jstr(key, "protection_mode"));
        ctl_print_field("length", jint(key, "length", b, sizeof(b)));
        ctl_print_field("current version", jint(key, "current_version", b, sizeof(b)));
        ctl_print_field("created", jstr(key, "created"));
        ctl_print_field("last rotation", jstr(key, "last_rotation"));
        int64_t days = 0;
        (void) cmek_json_get_int64(key, "rotation_interval_days", &days);
        if (days > 0)
                snprintf(b, sizeof(b), "every %" PRIi64 " days", days);
        ctl_print_field("rotation", days > 0 ? b : "manual");
        ctl_print_field("provider managed", cmek_json_get_bool(key, "provider_managed", false) ? "yes" : "no");
        ctl_print_field("on disable", jstr(key, "on_disable") ?: "the [enforcement] default of cmekd.conf");
        for (size_t i = 0; vs && i < json_object_array_length(vs); i++) {
                json_object *v = json_object_array_get_idx(vs, i);
                char name[64], val[256], n[32];
                snprintf(name, sizeof(name), "version %s", jint(v, "version", n, sizeof(n)) ?: "?");
                snprintf(val, sizeof(val), "%s  %s%s", strempty(jstr(v, "created")), strempty(jstr(v, "label")),
                         cmek_json_get_bool(v, "enabled", true) ? "" : "  (disabled)");
                ctl_print_field(name, val);
        }
}

static int reply_key(json_object *r) {
        if (arg_json)
                ctl_print_json(r);
        else
                print_key(json_object_object_get(r, "key"));
        json_object_put(r);
        return 0;
}

static int verb_key_create(int argc, char *argv[]) {
        json_object *p, *r = NULL;
        KeyArgs a;
        int k = parse_args(argc, argv, &a, 1);

        if (k < 0)
                return -k;
        if (!a.compartment) {
                fprintf(stderr, "cmekctl key create: --compartment is required.\n");
                return CTL_EXIT_USAGE;
        }
        p = json_object_new_object();
        json_object_object_add(p, "name", json_object_new_string(argv[k]));
        json_object_object_add(p, "compartment", json_object_new_string(a.compartment));
        if (a.length >= 0)
                json_object_object_add(p, "length", json_object_new_int64(a.length));
        if (a.rotation >= 0)
                json_object_object_add(p, "rotation_interval_days", json_object_new_int64(a.rotation));
        if (a.protection_mode)
                json_object_object_add(p, "protection_mode", json_object_new_string(a.protection_mode));
        if (a.vault)
                json_object_object_add(p, "vault", json_object_new_string(a.vault));
        if (a.on_disable)
                json_object_object_add(p, "on_disable", json_object_new_string(a.on_disable));
        k = ctl_call("io.cmek.Key.Create", p, &r);
        json_object_put(p);
        return k != 0 ? k : reply_key(r);
}

static int verb_key_list(int argc, char *argv[]) {
        json_object *p = json_object_new_object(), *r = NULL, *a;
        KeyArgs args;
        int k = parse_args(argc, argv, &args, 0);

        if (k < 0) {
                json_object_put(p);
                return -k;
        }
        if (args.compartment)
                json_object_object_add(p, "compartment", json_object_new_string(args.compartment));
        k = ctl_call("io.cmek.Key.List", p, &r);
        json_object_put(p);
        if (k != 0)
                return k;
        if (arg_json)
                ctl_print_json(r);
        else if (json_object_object_get_ex(r, "keys", &a)) {
                Table *t = table_new("ID", "NAME", "COMPARTMENT", "STATE", "VERSION", "MODE", "VAULT", NULL);
                for (size_t i = 0; i < json_object_array_length(a); i++) {
                        json_object *key = json_object_array_get_idx(a, i);
                        char v[32];
                        table_add(t, jstr(key, "id"), jstr(key, "name"), jstr(key, "compartment"), jstr(key, "state"),
                                  jint(key, "current_version", v, sizeof(v)), jstr(key, "protection_mode"), jstr(key, "vault"));
                }
                table_print(t);
        }
        json_object_put(r);
        return 0;
}

static int key_one(int argc, char *argv[], const char *method, bool days) {
        json_object *p, *r = NULL;
        KeyArgs a;
        int k = parse_args(argc, argv, &a, 1);

        if (k < 0)
                return -k;
        if (!days && a.days >= 0) {
                fprintf(stderr, "cmekctl key %s: --days applies to schedule-deletion only.\n", argv[0]);
                return CTL_EXIT_USAGE;
        }
        if (a.version >= 0) {
                /* one version of the key, not the key */
                if (streq(method, "io.cmek.Key.Disable"))
                        method = "io.cmek.Key.DisableVersion";
                else if (streq(method, "io.cmek.Key.Enable"))
                        method = "io.cmek.Key.EnableVersion";
                else {
                        fprintf(stderr, "cmekctl key %s: --version applies to disable and enable only.\n", argv[0]);
                        return CTL_EXIT_USAGE;
                }
        }
        p = json_object_new_object();
        json_object_object_add(p, "key", json_object_new_string(argv[k]));
        if (a.version >= 0)
                json_object_object_add(p, "version", json_object_new_int64(a.version));
        if (days && a.days >= 0)
                json_object_object_add(p, "days", json_object_new_int64(a.days));
        k = ctl_call(method, p, &r);
        json_object_put(p);
        if (k != 0)
                return k;
        if (!arg_json && streq(method, "io.cmek.Key.Rotate")) {
                char b[32];
                printf("Rotated to version %s.\n", jint(r, "version", b, sizeof(b)) ?: "?");
        }
        return reply_key(r);
}

static int verb_key_show(int argc, char *argv[]) { return key_one(argc, argv, "io.cmek.Key.Show", false); }
static int verb_key_disable(int argc, char *argv[]) { return key_one(argc, argv, "io.cmek.Key.Disable", false); }
static int verb_key_enable(int argc, char *argv[]) { return key_one(argc, argv, "io.cmek.Key.Enable", false); }
static int verb_key_schedule(int argc, char *argv[]) { return key_one(argc, argv, "io.cmek.Key.ScheduleDeletion", true); }
static int verb_key_cancel(int argc, char *argv[]) { return key_one(argc, argv, "io.cmek.Key.CancelDeletion", false); }
static int verb_key_rotate(int argc, char *argv[]) { return key_one(argc, argv, "io.cmek.Key.Rotate", false); }

static int write_out(const char *path, const void *data, size_t size, mode_t mode) {
        int r = cmek_write_file_atomic(path, data, size, mode);
        if (r < 0)
                fprintf(stderr, "cmekctl: cannot write '%s': %s\n", path, strerror(-r));
        return r < 0 ? CTL_EXIT_FAILURE : 0;
}

static int verb_key_wrapping_key(int argc, char *argv[]) {
        json_object *p = json_object_new_object(), *r = NULL;
        const char *pem;
        KeyArgs a;
        int k = parse_args(argc, argv, &a, 0);

        if (k < 0) {
                json_object_put(p);
                return -k;
        }
        if (a.vault)
                json_object_object_add(p, "vault", json_object_new_string(a.vault));
        k = ctl_call("io.cmek.Vault.GetWrappingKey", p, &r);
        json_object_put(p);
        if (k != 0)
                return k;
        pem = jstr(r, "public_key");
        if (a.out)
                k = write_out(a.out, pem, strlen(strempty(pem)), 0644);
        if (arg_json)
                ctl_print_json(r);
        else if (!a.out)
                fputs(strempty(pem), stdout);
        json_object_put(r);
        return k;
}

static int read_small_file(const char *path, size_t max, char **ret, size_t *ret_size) {
        int r = cmek_read_file(path, max, ret, ret_size);
        if (r < 0)
                fprintf(stderr, "cmekctl: cannot read '%s': %s\n", path, r == -EFBIG ? "file too large" : strerror(-r));
        return r;
}

static int verb_key_import(int argc, char *argv[]) {
        _cleanup_free_ char *blob = NULL, *b64 = NULL;
        json_object *p, *r = NULL;
        size_t size;
        KeyArgs a;
        int k = parse_args(argc, argv, &a, 1);

        if (k < 0)
                return -k;
        if (!a.compartment || !a.wrapped_file) {
                fprintf(stderr, "cmekctl key import: --compartment and --wrapped-file are required.\n");
                return CTL_EXIT_USAGE;
        }
        if (read_small_file(a.wrapped_file, 8192, &blob, &size) < 0)
                return CTL_EXIT_FAILURE;
        b64 = cmek_base64_encode(blob, size);
        if (!b64)
                return CTL_EXIT_FAILURE;
        p = json_object_new_object();
        json_object_object_add(p, "name", json_object_new_string(argv[k]));
        json_object_object_add(p, "compartment", json_object_new_string(a.compartment));
        json_object_object_add(p, "wrapped", json_object_new_string(b64));
        json_object_object_add(p, "wrapping_algorithm", json_object_new_string(a.algorithm ?: "RSA_OAEP_AES_SHA256"));
        if (a.vault)
                json_object_object_add(p, "vault", json_object_new_string(a.vault));
        if (a.rotation >= 0)
                json_object_object_add(p, "rotation_interval_days", json_object_new_int64(a.rotation));
        k = ctl_call("io.cmek.Key.Import", p, &r);
        json_object_put(p);
        return k != 0 ? k : reply_key(r);
}

/* The customer's side of an import, done here with OpenSSL and no daemon: RSA-OAEP (SHA-256,
 * MGF1-SHA-256) of the key itself, or of an ephemeral AES-256 key followed by the key
 * wrapped with it by AES-KWP (RFC 5649). */
static int verb_key_wrap_for_import(int argc, char *argv[]) {
        _cleanup_free_ char *pem = NULL;
        _cleanup_secure_ uint8_t *key = NULL, *eph = NULL;
        EVP_PKEY *pk = NULL;
        EVP_PKEY_CTX *ctx = NULL;
        EVP_CIPHER_CTX *cc = NULL;
        BIO *bio = NULL;
        uint8_t out[2048];
        size_t n = sizeof(out), key_size = 0;
        int l1 = 0, l2 = 0, k, ret = CTL_EXIT_FAILURE;
        bool aes;
        KeyArgs a;

        k = parse_args(argc, argv, &a, 0);
        if (k < 0)
                return -k;
        if (!a.key_file || !a.public_key || !a.out) {
                fprintf(stderr, "cmekctl key wrap-for-import: --key-file, --public-key and --out are required.\n");
                return CTL_EXIT_USAGE;
        }
        aes = !a.algorithm || streq(a.algorithm, "RSA_OAEP_AES_SHA256");
        if (!aes && !streq(a.algorithm, "RSA_OAEP_SHA256")) {
                fprintf(stderr, "cmekctl: --wrapping-algorithm is RSA_OAEP_AES_SHA256 or RSA_OAEP_SHA256.\n");
                return CTL_EXIT_USAGE;
        }

        /* the raw key: read straight into locked memory */
        {
                _cleanup_close_ int fd = open(a.key_file, O_RDONLY | O_CLOEXEC);
                ssize_t got;
                key = cmek_secure_alloc(64);
                if (fd < 0 || !key) {
                        fprintf(stderr, "cmekctl: cannot read '%s': %m\n", a.key_file);
                        return CTL_EXIT_FAILURE;
                }
                got = read(fd, key, 64);
                if (got < 0) {
                        fprintf(stderr, "cmekctl: cannot read '%s': %m\n", a.key_file);
                        return CTL_EXIT_FAILURE;
                }
                key_size = (size_t) got;
        }
        if (key_size != 16 && key_size != 24 && key_size != 32) {
                fprintf(stderr, "cmekctl: '%s' holds %zu bytes: a raw AES key is 16, 24 or 32 bytes.\n", a.key_file, key_size);
                return CTL_EXIT_USAGE;
        }
        if (read_small_file(a.public_key, 65536, &pem, NULL) < 0)
                return CTL_EXIT_FAILURE;
        bio = BIO_new_mem_buf(pem, -1);
        pk = bio ? PEM_read_bio_PUBKEY(bio, NULL, NULL, NULL) : NULL;
        if (!pk || EVP_PKEY_get_base_id(pk) != EVP_PKEY_RSA) {
                fprintf(stderr, "cmekctl: '%s' is not an RSA public key in PEM.\n", a.public_key);
                goto out;
        }
        ctx = EVP_PKEY_CTX_new(pk, NULL);
        if (!ctx || EVP_PKEY_encrypt_init(ctx) <= 0 ||
            EVP_PKEY_CTX_set_rsa_padding(ctx, RSA_PKCS1_OAEP_PADDING) <= 0 ||
            EVP_PKEY_CTX_set_rsa_oaep_md(ctx, EVP_sha256()) <= 0 ||
            EVP_PKEY_CTX_set_rsa_mgf1_md(ctx, EVP_sha256()) <= 0)
                goto crypto_fail;
        if (aes) {
                eph = cmek_secure_alloc(32);
                if (!eph || RAND_bytes(eph, 32) != 1 || EVP_PKEY_encrypt(ctx, out, &n, eph, 32) <= 0)
                        goto crypto_fail;
                cc = EVP_CIPHER_CTX_new();
                if (!cc)
                        goto crypto_fail;
                EVP_CIPHER_CTX_set_flags(cc, EVP_CIPHER_CTX_FLAG_WRAP_ALLOW);
                if (n + key_size + 16 > sizeof(out) ||
                    EVP_EncryptInit_ex(cc, EVP_aes_256_wrap_pad(), NULL, eph, NULL) != 1 ||
                    EVP_EncryptUpdate(cc, out + n, &l1, key, (int) key_size) != 1 ||
                    EVP_EncryptFinal_ex(cc, out + n + l1, &l2) != 1)
                        goto crypto_fail;
                n += (size_t) (l1 + l2);
        } else if (EVP_PKEY_encrypt(ctx, out, &n, key, key_size) <= 0)
                goto crypto_fail;

        ret = write_out(a.out, out, n, 0644);
        if (ret == 0 && !arg_json)
                printf("Wrote %zu bytes (%s) to %s.\n", n, aes ? "RSA_OAEP_AES_SHA256" : "RSA_OAEP_SHA256", a.out);
        goto out;
crypto_fail:
        fprintf(stderr, "cmekctl: wrapping with OpenSSL failed.\n");
out:
        EVP_CIPHER_CTX_free(cc);
        EVP_PKEY_CTX_free(ctx);
        EVP_PKEY_free(pk);
        BIO_free(bio);
        return ret;
}

const Verb key_verbs[] = {
        { "vault", "list", "", "List vaults: token, model, free slots, key count, or why unavailable", verb_vault_list },
        { "vault", "show", "[VAULT]", "Show one vault (default: \"default\")", verb_vault_show },
        { "key", "create", "NAME --compartment C [--length 256] [--protection-mode hsm|software] [--vault V] [--rotation-interval DAYS] [--on-disable suspend|close]",
          "Create a master key in a vault", verb_key_create },
        { "key", "list", "[--compartment C]", "List master keys", verb_key_list },
        { "key", "show", "KEY", "Show a key (id, name or COMPARTMENT/NAME)", verb_key_show },
        { "key", "disable", "KEY [--version N]", "Disable a key (or only its old version N): nothing unwraps with it", verb_key_disable },
        { "key", "enable", "KEY [--version N]", "Enable a disabled key (or its version N)", verb_key_enable },
        { "key", "schedule-deletion", "KEY [--days 7..30]", "Delete a key after a waiting period (default 30 days)", verb_key_schedule },
        { "key", "cancel-deletion", "KEY", "Cancel a scheduled deletion (the key becomes DISABLED)", verb_key_cancel },
        { "key", "rotate", "KEY", "Create a new key version; it wraps from now on", verb_key_rotate },
        { "key", "wrapping-key", "[--vault V] [--out FILE]", "Export the vault's RSA-4096 import public key (PEM)", verb_key_wrapping_key },
        { "key", "import", "NAME --compartment C --wrapped-file F [--wrapping-algorithm RSA_OAEP_AES_SHA256|RSA_OAEP_SHA256] [--vault V]",
          "Import a wrapped key (bring your own key)", verb_key_import },
        { "key", "wrap-for-import", "--key-file RAW --public-key PEM --out F [--wrapping-algorithm A]",
          "Wrap a raw key for import, locally with OpenSSL", verb_key_wrap_for_import },
        {}
};
