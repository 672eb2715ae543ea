/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* cmekctl volume ...: create, bind, unbind, unlock, lock, restore, rewrap, list, show, scan. */
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "cmek-base64.h"
#include "cmek-secmem.h"
#include "cmekctl.h"

enum {
        OPT_KEY = 0x100, OPT_SIZE, OPT_NAME, OPT_STRICT, OPT_FORCE, OPT_RECOVERY_STDIN, OPT_UNLOCK_KEY_FILE,
        OPT_UNLOCK_STDIN, OPT_UNLOCK_KEYSLOT, OPT_REMOVE_SLOT, OPT_TEST, OPT_NEW_SECRET,
};

/* cmekd resolves a relative path in its own working directory (/ under systemd), not ours: send
 * a path the caller can see as an absolute one. A DEVICE that is no file here (a UUID, a mapping
 * name) goes as given; a PATH that does not exist yet (volume create) is made absolute too. */
static json_object *path_arg(const char *arg, bool must_exist) {
        char *abs = NULL, *cwd;
        json_object *o;

        if (arg[0] == '/' || (must_exist && access(arg, F_OK) < 0))
                return json_object_new_string(arg);
        abs = realpath(arg, NULL);
        if (!abs && (cwd = getcwd(NULL, 0))) {
                if (asprintf(&abs, "%s/%s", cwd, arg) < 0)
                        abs = NULL;
                free(cwd);
        }
        o = json_object_new_string(abs ?: arg);
        free(abs);
        return o;
}

static int usage_error(const char *verb, const char *usage) {
        fprintf(stderr, "Usage: cmekctl volume %s %s\n", verb, usage);
        return CTL_EXIT_USAGE;
}

/* "16M", "1G", "4096" -> bytes (binary units). */
static int parse_size(const char *s, int64_t *ret) {
        char *end;
        unsigned long long v;
        uint64_t mult = 1;

        errno = 0;
        v = strtoull(s, &end, 10);
        if (errno || end == s)
                return -EINVAL;
        if (*end) {
                const char *u = "KMGT";
                const char *p = strchr(u, *end == 'k' ? 'K' : *end);
                if (!p || (end[1] && !streq(end + 1, "iB") && !streq(end + 1, "B")))
                        return -EINVAL;
                for (const char *q = u; q <= p; q++)
                        mult *= 1024;
        }
        if (v > INT64_MAX / mult)
                return -ERANGE;
        *ret = (int64_t) (v * mult);
        return 0;
}

/* Reads a secret (stdin without its final newline, or a key file as is) into locked memory and
 * adds it base64-encoded; the encoded copy in the JSON is wiped after the call. */
static int read_secret(FILE *f, bool strip_newline, void **ret, size_t *ret_size) {
        size_t cap = 8192, n;
        char *buf = cmek_secure_alloc(cap);

        if (!buf)
                return -ENOMEM;
        n = fread(buf, 1, cap, f);
        if (ferror(f) || n == cap) {
                cmek_secure_free(buf);
                return n == cap ? -EFBIG : -EIO;
        }
        if (strip_newline && n > 0 && buf[n - 1] == '\n')
                n--;
        if (n == 0) {
                cmek_secure_free(buf);
                return -ENODATA;
        }
        *ret = buf;
        *ret_size = n;
        return 0;
}

static int add_secret(json_object *p, const char *field, const void *secret, size_t n) {
        char *b = cmek_base64_encode_secure(secret, n);
        if (!b)
                return -ENOMEM;
        json_object_object_add(p, field, json_object_new_string(b));
        cmek_secure_free(b);
        return 0;
}

static void wipe_field(json_object *p, const char *field) {
        json_object *v;
        if (json_object_object_get_ex(p, field, &v))
                cmek_json_wipe_string(v);
}

static const char *int_str(json_object *o, const char *field, char buf[static 32]) {
        int64_t v;
        if (!cmek_json_get_int64(o, field, &v))
                return NULL;
        snprintf(buf, 32, "%" PRIi64, v);
        return buf;
}

static void print_volume(json_object *v) {
        char b1[32], b2[32], b3[32], b4[32];
        int64_t others;

        ctl_print_field("uuid", cmek_json_get_string(v, "uuid"));
        ctl_print_field("path", cmek_json_get_string(v, "path"));
        ctl_print_field("state", cmek_json_get_string(v, "state"));
        ctl_print_field("key id", cmek_json_get_string(v, "key_id"));
        ctl_print_field("key version", int_str(v, "key_version", b1));
        ctl_print_field("key state", cmek_json_get_string(v, "key_state"));
        ctl_print_field("key type", cmek_json_get_bool(v, "provider_managed", false) ? "provider-managed" : "customer-managed (CMEK)");
        ctl_print_field("keyslot", int_str(v, "keyslot", b2));
        ctl_print_field("mapping", cmek_json_get_string(v, "mapping"));
        ctl_print_field("mapped", cmek_json_get_bool(v, "mapped", false) ? "yes" : "no");
        ctl_print_field("availability", cmek_json_get_string(v, "availability"));
        if (cmek_json_get_string(v, "unavailable_reason"))
                ctl_print_field("unavailable", cmek_json_get_string(v, "unavailable_reason"));
        if (cmek_json_get_string(v, "lock") && !streq(cmek_json_get_string(v, "lock"), "none"))
                ctl_print_field("locked", cmek_json_get_string(v, "lock"));
        if (cmek_json_get_string(v, "in_use_by"))
                ctl_print_field("in use by", cmek_json_get_string(v, "in_use_by"));
        if (cmek_json_get_bool(v, "pending_rewrap", false))
                ctl_print_field("pending re-wrap", "yes: the volume was unreachable during a rotation");
        ctl_print_field("EncryptionKeyStatus", int_str(v, "EncryptionKeyStatus", b3));
        ctl_print_field("EncryptionKeyType", int_str(v, "EncryptionKeyType", b4));
        if (cmek_json_get_int64(v, "other_keyslots", &others)) {
                char b[32];
                snprintf(b, sizeof(b), "%" PRIi64, others);
                ctl_print_field("other keyslots", b);
        }
        if (cmek_json_get_string(v, "shred_status"))
                ctl_print_field("crypto-shredding", cmek_json_get_string(v, "shred_status"));
}

static int finish_volume_reply(json_object *r) {
        json_object *v;
        if (arg_json)
                ctl_print_json(r);
        else if (json_object_object_get_ex(r, "volume", &v) && v)
                print_volume(v);
        json_object_put(r);
        return 0;
}

static int verb_create(int argc, char *argv[]) {
        static const char usage[] = "PATH --key KEY [--size SIZE] [--strict | --recovery-passphrase-stdin] [--force] [--name NAME]";
        static const struct option options[] = {
                CTL_OPTION_JSON,
                { "key", required_argument, NULL, OPT_KEY },
                { "size", required_argument, NULL, OPT_SIZE },
                { "name", required_argument, NULL, OPT_NAME },
                { "strict", no_argument, NULL, OPT_STRICT },
                { "force", no_argument, NULL, OPT_FORCE },
                { "recovery-passphrase-stdin", no_argument, NULL, OPT_RECOVERY_STDIN },
                {}
        };
        json_object *p = json_object_new_object(), *r = NULL;
        const char *name = NULL;
        bool recovery = false;
        int c, k;

        optind = 0;
        while ((c = getopt_long(argc, argv, "", options, NULL)) >= 0)
                switch (c) {
                case 'J': arg_json = true; break;
                case OPT_KEY: json_object_object_add(p, "key", json_object_new_string(optarg)); break;
                case OPT_SIZE: {
                        int64_t s;
                        if (parse_size(optarg, &s) < 0) {
                                fprintf(stderr, "cmekctl: --size '%s': expected bytes or a number with K, M, G or T.\n", optarg);
                                json_object_put(p);
                                return CTL_EXIT_USAGE;
                        }
                        json_object_object_add(p, "size", json_object_new_int64(s));
                        break;
                }
                case OPT_NAME: name = optarg; break;
                case OPT_STRICT: json_object_object_add(p, "strict", json_object_new_boolean(1)); break;
                case OPT_FORCE: json_object_object_add(p, "force", json_object_new_boolean(1)); break;
                case OPT_RECOVERY_STDIN: recovery = true; break;
                default: json_object_put(p); return CTL_EXIT_USAGE;
                }
        if (argc - optind != 1 || !json_object_object_get_ex(p, "key", NULL)) {
                json_object_put(p);
                return usage_error("create", usage);
        }
        json_object_object_add(p, "path", path_arg(argv[optind], false));
        if (recovery) {
                _cleanup_secure_ void *s = NULL;
                size_t n;
                if (read_secret(stdin, true, &s, &n) < 0) {
                        fprintf(stderr, "cmekctl: --recovery-passphrase-stdin: no passphrase on standard input.\n");
                        json_object_put(p);
                        return CTL_EXIT_USAGE;
                }
                (void) add_secret(p, "recovery_passphrase", s, n);
        }
        k = ctl_call("io.cmek.Volume.Create", p, &r);
        wipe_field(p, "recovery_passphrase");
        json_object_put(p);
        if (k != 0)
                return k;
        if (name) {
                json_object *q = json_object_new_object(), *r2 = NULL;
                json_object *v;
                json_object_object_get_ex(r, "volume", &v);
                json_object_object_add(q, "device", json_object_new_string(cmek_json_get_string(v, "uuid")));
                json_object_object_add(q, "name", json_object_new_string(name));
                k = ctl_call("io.cmek.Volume.Unlock", q, &r2);
                json_object_put(q);
                if (k != 0) {
                        json_object_put(r);
                        return k;
                }
                json_object_put(r);
                r = r2;
        }
        return finish_volume_reply(r);
}

static int verb_bind(int argc, char *argv[]) {
        static const char usage[] = "DEVICE --key KEY [--unlock-key-file FILE | --unlock-passphrase-stdin] [--unlock-keyslot N]";
        static const struct option options[] = {
                CTL_OPTION_JSON,
                { "key", required_argument, NULL, OPT_KEY },
                { "unlock-key-file", required_argument, NULL, OPT_UNLOCK_KEY_FILE },
                { "unlock-passphrase-stdin", no_argument, NULL, OPT_UNLOCK_STDIN },
                { "unlock-keyslot", required_argument, NULL, OPT_UNLOCK_KEYSLOT },
                {}
        };
        json_object *p = json_object_new_object(), *r = NULL;
        const char *key_file = NULL;
        _cleanup_secure_ void *s = NULL;
        bool from_stdin = false;
        size_t n = 0;
        int c, k;

        optind = 0;
        while ((c = getopt_long(argc, argv, "", options, NULL)) >= 0)
                switch (c) {
                case 'J': arg_json = true; break;
                case OPT_KEY: json_object_object_add(p, "key", json_object_new_string(optarg)); break;
                case OPT_UNLOCK_KEY_FILE: key_file = optarg; break;
                case OPT_UNLOCK_STDIN: from_stdin = true; break;
                case OPT_UNLOCK_KEYSLOT: {
                        char *end;
                        long slot = strtol(optarg, &end, 10);
                        if (!*optarg || *end || slot < 0 || slot > 31) {
                                fprintf(stderr, "cmekctl: --unlock-keyslot: '%s' is not a keyslot number (0-31).\n", optarg);
                                json_object_put(p);
                                return CTL_EXIT_USAGE;
                        }
                        json_object_object_add(p, "unlock_keyslot", json_object_new_int((int) slot));
                        break;
                }
                default: json_object_put(p); return CTL_EXIT_USAGE;
                }
        if (argc - optind != 1 || !json_object_object_get_ex(p, "key", NULL) || (key_file && from_stdin)) {
                json_object_put(p);
                return usage_error("bind", usage);
        }
        json_object_object_add(p, "device", path_arg(argv[optind], true));
        if (key_file) {
                _cleanup_fclose_ FILE *f = fopen(key_file, "re");
                if (!f || read_secret(f, false, &s, &n) < 0) {
                        fprintf(stderr, "cmekctl: cannot read the key file '%s': %s\n", key_file, f ? "empty or too large" : strerror(errno));
                        json_object_put(p);
                        return CTL_EXIT_USAGE;
                }
        } else if (from_stdin && read_secret(stdin, true, &s, &n) < 0) {
                fprintf(stderr, "cmekctl: --unlock-passphrase-stdin: no passphrase on standard input.\n");
                json_object_put(p);
                return CTL_EXIT_USAGE;
        }
        if (s)
                (void) add_secret(p, "unlock_secret", s, n);
        k = ctl_call("io.cmek.Volume.Bind", p, &r);
        wipe_field(p, "unlock_secret");
        json_object_put(p);
        if (k != 0)
                return k;
        return finish_volume_reply(r);
}

static int verb_unbind(int argc, char *argv[]) {
        static const struct option options[] = {
                CTL_OPTION_JSON,
                { "remove-slot", no_argument, NULL, OPT_REMOVE_SLOT },
                {}
        };
        json_object *p = json_object_new_object(), *r = NULL;
        bool remove = false;
        int c, k;

        optind = 0;
        while ((c = getopt_long(argc, argv, "", options, NULL)) >= 0)
                switch (c) {
                case 'J': arg_json = true; break;
                case OPT_REMOVE_SLOT: remove = true; break;
                default: json_object_put(p); return CTL_EXIT_USAGE;
                }
        if (argc - optind != 1) {
                json_object_put(p);
                return usage_error("unbind", "DEVICE [--remove-slot]");
        }
        json_object_object_add(p, "device", path_arg(argv[optind], true));
        json_object_object_add(p, "remove_slot", json_object_new_boolean(remove));
        k = ctl_call("io.cmek.Volume.Unbind", p, &r);
        json_object_put(p);
        if (k != 0)
                return k;
        if (remove && !arg_json) {
                printf("CMEK keyslot and token removed from %s.\n", ctl_esc(argv[optind]));
                json_object_put(r);
                return 0;
        }
        return finish_volume_reply(r);
}

static int verb_unlock(int argc, char *argv[]) {
        static const struct option options[] = {
                CTL_OPTION_JSON,
                { "name", required_argument, NULL, OPT_NAME },
                { "test", no_argument, NULL, OPT_TEST },
                {}
        };
        json_object *p = json_object_new_object(), *r = NULL;
        bool test = false;
        int c, k;

        optind = 0;
        while ((c = getopt_long(argc, argv, "", options, NULL)) >= 0)
                switch (c) {
                case 'J': arg_json = true; break;
                case OPT_NAME: json_object_object_add(p, "name", json_object_new_string(optarg)); break;
                case OPT_TEST: test = true; break;
                default: json_object_put(p); return CTL_EXIT_USAGE;
                }
        if (argc - optind != 1) {
                json_object_put(p);
                return usage_error("unlock", "DEVICE [--name NAME] [--test]");
        }
        json_object_object_add(p, "device", path_arg(argv[optind], true));
        json_object_object_add(p, "test", json_object_new_boolean(test));
        k = ctl_call("io.cmek.Volume.Unlock", p, &r);
        json_object_put(p);
        if (k != 0)
                return k;
        if (arg_json)
                ctl_print_json(r);
        else {
                json_object *v = NULL;
                json_object_object_get_ex(r, "volume", &v);
                if (test)
                        printf("%s: the CMEK keyslot opens (key %s version %s).\n", ctl_esc(argv[optind]),
                               strempty(ctl_esc(cmek_json_get_string(v, "key_id"))),
                               json_object_get_string(json_object_object_get(v, "key_version")));
                else
                        printf("%s unlocked as /dev/mapper/%s.\n", ctl_esc(argv[optind]), strempty(ctl_esc(cmek_json_get_string(v, "mapping"))));
        }
        json_object_put(r);
        return 0;
}

static int verb_simple(int argc, char *argv[], const char *method, const char *usage) {
        json_object *p = json_object_new_object(), *r = NULL;
        int k = 0;

        static const struct option options[] = { CTL_OPTION_JSON, {} };
        int c;
        optind = 0;
        while ((c = getopt_long(argc, argv, "", options, NULL)) >= 0)
                if (c == 'J')
                        arg_json = true;
                else {
                        json_object_put(p);
                        return CTL_EXIT_USAGE;
                }
        if (argc - optind != 1) {
                json_object_put(p);
                return usage_error(argv[0], usage);
        }
        json_object_object_add(p, "device", path_arg(argv[optind], true));
        k = ctl_call(method, p, &r);
        json_object_put(p);
        if (k != 0)
                return k;
        return finish_volume_reply(r);
}

static int verb_lock(int argc, char *argv[]) {
        int k = verb_simple(argc, argv, "io.cmek.Volume.Lock", "DEVICE");
        return k;
}

static int verb_restore(int argc, char *argv[]) {
        static const char usage[] = "DEVICE | --key KEY";
        static const struct option options[] = {
                CTL_OPTION_JSON,
                { "key", required_argument, NULL, OPT_KEY },
                {}
        };
        json_object *p = json_object_new_object(), *r = NULL, *res;
        const char *key = NULL;
        int64_t restored = 0, failed = 0;
        int c, k;

        optind = 0;
        while ((c = getopt_long(argc, argv, "", options, NULL)) >= 0)
                switch (c) {
                case 'J': arg_json = true; break;
                case OPT_KEY: key = optarg; break;
                default: json_object_put(p); return CTL_EXIT_USAGE;
                }
        if ((key && optind != argc) || (!key && argc - optind != 1)) {
                json_object_put(p);
                return usage_error("restore", usage);
        }
        if (key)
                json_object_object_add(p, "key", json_object_new_string(key));
        else
                json_object_object_add(p, "device", path_arg(argv[optind], true));
        k = ctl_call("io.cmek.Volume.Restore", p, &r);
        json_object_put(p);
        if (k != 0)
                return k;
        if (!key) {
                if (!arg_json) {
                        json_object *v = NULL;
                        json_object_object_get_ex(r, "volume", &v);
                        printf("%s restored as /dev/mapper/%s.\n", ctl_esc(argv[optind]), strempty(ctl_esc(cmek_json_get_string(v, "mapping"))));
                        json_object_put(r);
                        return 0;
                }
                return finish_volume_reply(r);
        }
        (void) cmek_json_get_int64(r, "restored", &restored);
        (void) cmek_json_get_int64(r, "failed", &failed);
        if (arg_json)
                ctl_print_json(r);
        else {
                if (json_object_object_get_ex(r, "results", &res))
                        for (size_t i = 0; i < json_object_array_length(res); i++) {
                                json_object *e = json_object_array_get_idx(res, i);
                                printf("%s: %s%s%s\n", strempty(ctl_esc(cmek_json_get_string(e, "path"))),
                                       strempty(ctl_esc(cmek_json_get_string(e, "result"))),
                                       cmek_json_get_string(e, "error") ? ": " : "", strempty(ctl_esc(cmek_json_get_string(e, "error"))));
                        }
                printf("%" PRIi64 " restored, %" PRIi64 " failed.\n", restored, failed);
        }
        json_object_put(r);
        return failed > 0 ? CTL_EXIT_FAILURE : 0;
}

static int verb_show(int argc, char *argv[]) {
        return verb_simple(argc, argv, "io.cmek.Volume.Show", "DEVICE");
}

static int verb_list(int argc, char *argv[]) {
        static const struct option options[] = { CTL_OPTION_JSON, {} };
        json_object *r = NULL, *a;
        Table *t;
        int c, k;

        optind = 0;
        while ((c = getopt_long(argc, argv, "", options, NULL)) >= 0)
                if (c == 'J')
                        arg_json = true;
                else
                        return CTL_EXIT_USAGE;
        k = ctl_call("io.cmek.Volume.List", NULL, &r);
        if (k != 0)
                return k;
        if (arg_json) {
                ctl_print_json(r);
                json_object_put(r);
                return 0;
        }
        t = table_new("UUID", "PATH", "KEY", "VER", "KEY STATE", "STATE", "MAPPED", "AVAILABILITY", "STATUS", "TYPE", NULL);
        if (json_object_object_get_ex(r, "volumes", &a))
                for (size_t i = 0; i < json_object_array_length(a); i++) {
                        json_object *v = json_object_array_get_idx(a, i);
                        char b1[32], b2[32], b3[32];
                        table_add(t, cmek_json_get_string(v, "uuid"), cmek_json_get_string(v, "path"),
                                  cmek_json_get_string(v, "key_id"), int_str(v, "key_version", b1),
                                  cmek_json_get_string(v, "key_state"), cmek_json_get_string(v, "state"),
                                  cmek_json_get_bool(v, "mapped", false) ? "yes" : "no",
                                  cmek_json_get_string(v, "availability"),
                                  int_str(v, "EncryptionKeyStatus", b2), int_str(v, "EncryptionKeyType", b3));
                }
        table_print(t);
        json_object_put(r);
        return 0;
}

typedef struct RewrapState {
        bool tty;
        json_object *summary;
} RewrapState;

static int on_rewrap_reply(json_object *reply, void *userdata) {
        RewrapState *s = userdata;
        int64_t i, n;
        json_object *v;

        if (cmek_json_get_int64(reply, "progress", &i) && cmek_json_get_int64(reply, "total", &n)) {
                json_object_object_get_ex(reply, "volume", &v);
                if (s->tty)
                        fprintf(stderr, "\r\033[K[%" PRIi64 "/%" PRIi64 "] %s: %s", i, n,
                                strempty(ctl_esc(cmek_json_get_string(v, "path"))), strempty(ctl_esc(cmek_json_get_string(v, "result"))));
                return 0;
        }
        s->summary = json_object_get(reply);
        return 0;
}

static int verb_rewrap(int argc, char *argv[]) {
        static const struct option options[] = {
                CTL_OPTION_JSON,
                { "key", required_argument, NULL, OPT_KEY },
                { "new-secret", no_argument, NULL, OPT_NEW_SECRET },
                {}
        };
        json_object *p = json_object_new_object(), *devs = NULL, *results;
        RewrapState s = { .tty = isatty(STDERR_FILENO) };
        int64_t failed = 0, unreachable = 0, done = 0, current = 0;
        int c, k;

        optind = 0;
        while ((c = getopt_long(argc, argv, "", options, NULL)) >= 0)
                switch (c) {
                case 'J': arg_json = true; break;
                case OPT_KEY: json_object_object_add(p, "key", json_object_new_string(optarg)); break;
                case OPT_NEW_SECRET: json_object_object_add(p, "new_secret", json_object_new_boolean(1)); break;
                default: json_object_put(p); return CTL_EXIT_USAGE;
                }
        if (optind < argc) {
                if (json_object_object_get_ex(p, "key", NULL)) {
                        json_object_put(p);
                        return usage_error("rewrap", "[--key KEY | DEVICE...] [--new-secret]");
                }
                devs = json_object_new_array();
                for (int i = optind; i < argc; i++)
                        json_object_array_add(devs, path_arg(argv[i], true));
                json_object_object_add(p, "devices", devs);
        }
        k = ctl_call_more("io.cmek.Volume.Rewrap", p, on_rewrap_reply, &s);
        json_object_put(p);
        if (s.tty)
                fprintf(stderr, "\r\033[K");
        if (k != 0 || !s.summary) {
                json_object_put(s.summary);
                return k ?: CTL_EXIT_FAILURE;
        }
        (void) cmek_json_get_int64(s.summary, "rewrapped", &done);
        (void) cmek_json_get_int64(s.summary, "current", &current);
        (void) cmek_json_get_int64(s.summary, "unreachable", &unreachable);
        (void) cmek_json_get_int64(s.summary, "failed", &failed);
        if (arg_json)
                ctl_print_json(s.summary);
        else {
                if (json_object_object_get_ex(s.summary, "results", &results))
                        for (size_t i = 0; i < json_object_array_length(results); i++) {
                                json_object *e = json_object_array_get_idx(results, i);
                                const char *res = cmek_json_get_string(e, "result");
                                if (res && (streq(res, "failed") || streq(res, "unreachable")))
                                        printf("%s: %s%s%s\n", strempty(ctl_esc(cmek_json_get_string(e, "path"))), res,
                                               cmek_json_get_string(e, "error") ? ": " : "",
                                               strempty(ctl_esc(cmek_json_get_string(e, "error"))));
                        }
                printf("%" PRIi64 " re-wrapped, %" PRIi64 " already current, %" PRIi64 " unreachable, %" PRIi64 " failed.\n",
                       done, current, unreachable, failed);
        }
        json_object_put(s.summary);
        return failed > 0 ? CTL_EXIT_FAILURE : 0;
}

static int verb_scan(int argc, char *argv[]) {
        static const struct option options[] = { CTL_OPTION_JSON, {} };
        json_object *p, *a, *r = NULL, *res;
        int c, k;

        optind = 0;
        while ((c = getopt_long(argc, argv, "", options, NULL)) >= 0)
                if (c == 'J')
                        arg_json = true;
                else
                        return CTL_EXIT_USAGE;
        if (optind >= argc)
                return usage_error("scan", "PATH...");
        p = json_object_new_object();
        a = json_object_new_array();
        for (int i = optind; i < argc; i++)
                json_object_array_add(a, path_arg(argv[i], true));
        json_object_object_add(p, "paths", a);
        k = ctl_call("io.cmek.Volume.Scan", p, &r);
        json_object_put(p);
        if (k != 0)
                return k;
        if (arg_json)
                ctl_print_json(r);
        else if (json_object_object_get_ex(r, "results", &res))
                for (size_t i = 0; i < json_object_array_length(res); i++) {
                        json_object *e = json_object_array_get_idx(res, i);
                        printf("%s: %s\n", strempty(ctl_esc(cmek_json_get_string(e, "path"))), strempty(ctl_esc(cmek_json_get_string(e, "result"))));
                }
        json_object_put(r);
        return 0;
}

const Verb volume_verbs[] = {
        { "volume", "create", "PATH --key KEY [--size SIZE] [--strict | --recovery-passphrase-stdin] [--force] [--name NAME]",
          "Format a LUKS2 volume (sparse image if PATH is new) and bind it to a key", verb_create },
        { "volume", "bind", "DEVICE --key KEY [--unlock-key-file F | --unlock-passphrase-stdin] [--unlock-keyslot N]",
          "Bind an existing LUKS2 volume, or move a bound one to another key", verb_bind },
        { "volume", "unbind", "DEVICE [--remove-slot]",
          "Revert to the provider-managed key, or remove the CMEK keyslot", verb_unbind },
        { "volume", "unlock", "DEVICE [--name NAME] [--test]", "Unwrap and open the volume (--test: check only)", verb_unlock },
        { "volume", "lock", "DEVICE", "Close the volume's mapping", verb_lock },
        { "volume", "restore", "DEVICE | --key KEY",
          "Resume or re-open what a key disable locked (the key must be ENABLED again)", verb_restore },
        { "volume", "rewrap", "[--key KEY | DEVICE...] [--new-secret]",
          "Re-wrap DEKs under the newest key version (--new-secret: new keyslot secrets)", verb_rewrap },
        { "volume", "list", "", "List bound volumes with their key state and metrics", verb_list },
        { "volume", "show", "DEVICE", "Show a volume, its keyslots and crypto-shredding status", verb_show },
        { "volume", "scan", "PATH...", "Register bound volumes found at these paths", verb_scan },
        {}
};
