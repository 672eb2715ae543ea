/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* cmek-udev-helper: udev IMPORT{program} for LUKS2 devices; prints CMEK_* properties for a cmek token.
 *
 * Reads the LUKS2 header with libcryptsetup only: no broker contact, no token plugin loaded, no
 * metadata lock (a header being rewritten fails to load here, and the writer's close brings a
 * "change" event that runs us again). Prints nothing and exits 0 for anything that is not a LUKS2
 * device with a valid cmek token, so the rule can import it blindly. See cmekd-crypttab(7).
 *
 * Hotplug attach (CMEK_ATTACH=1) only for the device cmekd registered: its UUID is in cmekd's
 * registry (<state-dir>/volumes.json), bound, under the key the token names, and the device is
 * the registered one (the same block device, or a loop device over the registered image file).
 * Anyone who can attach a block device (a USB stick, a loop device through udisks, a VM disk) can
 * write any cmek token on it: a copy of a registered volume, or an unknown device, is attached
 * only when a local rule opts in with ENV{CMEK_AUTOATTACH}="1". Refusals and opt-ins are logged
 * (syslog, and CMEK_ATTACH_REFUSED=<why> in the udev database). */
#include <ctype.h>
#include <getopt.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <syslog.h>
#include <json-c/json.h>
#include <libcryptsetup.h>

#include "cmek-token.h"
#include "cmek-util.h"

#define CRYPTTAB_DEFAULT "/etc/crypttab"
#define STATE_DIR_DEFAULT "/var/lib/cmekd"      /* StateDirectory=cmekd of cmekd.service */
#define REGISTRY_MAX (64U * 1024U * 1024U)

/* Only a canonical 8-4-4-4-12 hex UUID: it goes into unit names and a device alias path. */
static bool uuid_is_canonical(const char *s) {
        static const int dash[] = { 8, 13, 18, 23 };
        size_t j = 0;

        if (!s || strlen(s) != 36)
                return false;
        for (size_t i = 0; i < 36; i++) {
                if (j < ARRAY_SIZE(dash) && (int) i == dash[j]) {
                        if (s[i] != '-')
                                return false;
                        j++;
                } else if (!isxdigit((unsigned char) s[i]))
                        return false;
        }
        return true;
}

/* Does the crypttab source field "source" name this device? UUID=, PARTUUID=, LABEL=, PARTLABEL=
 * through /dev/disk/by-*, or a path compared by device number. */
static bool crypttab_source_matches(const char *source, const char *uuid, const struct stat *st) {
        static const struct { const char *prefix, *dir; } tags[] = {
                { "PARTUUID=", "/dev/disk/by-partuuid/" },
                { "LABEL=", "/dev/disk/by-label/" },
                { "PARTLABEL=", "/dev/disk/by-partlabel/" },
        };
        _cleanup_free_ char *path = NULL;
        struct stat st2;

        if (strncasecmp(source, "UUID=", 5) == 0)
                return strcasecmp(source + 5, uuid) == 0;
        for (size_t i = 0; i < ARRAY_SIZE(tags); i++)
                if (strncasecmp(source, tags[i].prefix, strlen(tags[i].prefix)) == 0) {
                        if (asprintf(&path, "%s%s", tags[i].dir, source + strlen(tags[i].prefix)) < 0)
                                return false;
                        source = path;
                        break;
                }
        if (!st || !S_ISBLK(st->st_mode) || source[0] != '/')
                return false;
        return stat(source, &st2) == 0 && S_ISBLK(st2.st_mode) && st2.st_rdev == st->st_rdev;
}

/* 1 when /etc/crypttab (or $SYSTEMD_CRYPTTAB, as systemd-cryptsetup-generator) lists the device:
 * such a volume belongs to systemd-cryptsetup@.service and must not be attached twice. */
static int listed_in_crypttab(const char *uuid, const struct stat *st) {
        const char *fn = secure_getenv("SYSTEMD_CRYPTTAB") ?: CRYPTTAB_DEFAULT;
        _cleanup_fclose_ FILE *f = NULL;
        char line[4096];

        f = fopen(fn, "re");
        if (!f)
                return errno == ENOENT ? 0 : -errno;
        while (fgets(line, sizeof(line), f)) {
                char name[256], source[1024];

                if (sscanf(line, " %255s %1023s", name, source) != 2 || name[0] == '#')
                        continue;
                if (crypttab_source_matches(source, uuid, st))
                        return 1;
        }
        return 0;
}

/* Is the device (stat st, path dev) the file or device at path reg? The same block device, the
 * same regular file, or a loop device whose backing file is that file. */
static bool same_device(const char *dev, const struct stat *st, const char *reg) {
        _cleanup_free_ char *backing = NULL;
        char path[128];
        struct stat sr, sb;
        size_t n = 0;

        if (!reg || reg[0] != '/' || stat(reg, &sr) < 0)
                return false;
        if (S_ISBLK(st->st_mode) && S_ISBLK(sr.st_mode))
                return st->st_rdev == sr.st_rdev;
        if (S_ISREG(st->st_mode) && S_ISREG(sr.st_mode))
                return st->st_dev == sr.st_dev && st->st_ino == sr.st_ino;
        if (!S_ISBLK(st->st_mode) || !S_ISREG(sr.st_mode))
                return false;
        /* a loop device over the registered image */
        (void) snprintf(path, sizeof(path), "/sys/dev/block/%u:%u/loop/backing_file",
                        major(st->st_rdev), minor(st->st_rdev));
        if (cmek_read_file(path, 4096, &backing, &n) < 0)
                return false;
        while (n > 0 && (backing[n - 1] == '\n' || backing[n - 1] == 0))
                backing[--n] = 0;
        return stat(backing, &sb) == 0 && S_ISREG(sb.st_mode) && sb.st_dev == sr.st_dev && sb.st_ino == sr.st_ino;
}

/* NULL when cmekd registered this device as the volume with this UUID under this key, else why not. */
static const char *registered_mismatch(const char *state_dir, const char *dev, const struct stat *st,
                                       const char *uuid, const char *key_id) {
        _cleanup_free_ char *fn = NULL, *text = NULL;
        json_object *root, *a;
        const char *why = "unregistered";

        if (asprintf(&fn, "%s/volumes.json", state_dir) < 0 || cmek_read_file(fn, REGISTRY_MAX, &text, NULL) < 0)
                return "registry-unreadable";
        root = json_tokener_parse(text);
        if (!root || !json_object_object_get_ex(root, "volumes", &a) || !json_object_is_type(a, json_type_array)) {
                json_object_put(root);
                return "registry-unreadable";
        }
        for (size_t i = 0; i < json_object_array_length(a); i++) {
                json_object *e = json_object_array_get_idx(a, i), *o;
                const char *u = NULL, *state = NULL, *k = NULL, *path = NULL;

                if (json_object_object_get_ex(e, "uuid", &o))
                        u = json_object_get_string(o);
                if (!u || strcasecmp(u, uuid) != 0)
                        continue;
                if (json_object_object_get_ex(e, "state", &o))
                        state = json_object_get_string(o);
                if (json_object_object_get_ex(e, "key_id", &o))
                        k = json_object_get_string(o);
                if (json_object_object_get_ex(e, "path", &o))
                        path = json_object_get_string(o);
                if (state && !streq(state, "BOUND"))
                        why = "not-bound";
                else if (!k || !streq(k, key_id))
                        why = "other-key";
                else if (!same_device(dev, st, path))
                        why = "other-device";
                else
                        why = NULL;
                break;
        }
        json_object_put(root);
        return why;
}

static void log_quiet(int level, const char *msg, void *usrptr) {
        /* libcryptsetup explains every non-LUKS device on stderr: udev would log it for each disk */
}

/* Finds the first valid cmek token. 0 and *ret filled, -ENOENT when there is none. */
static int find_cmek_token(struct crypt_device *cd, CmekToken *ret, int *ret_id) {
        for (int id = 0; id < CMEK_LUKS2_KEYSLOTS_MAX; id++) {
                CmekToken t = CMEK_TOKEN_NULL;
                const char *type = NULL, *json = NULL, *why = NULL;
                crypt_token_info ti;
                int r;

                ti = crypt_token_status(cd, id, &type);
                if (ti == CRYPT_TOKEN_INVALID)
                        break;
                if ((ti != CRYPT_TOKEN_EXTERNAL && ti != CRYPT_TOKEN_EXTERNAL_UNKNOWN) || !type || !streq(type, CMEK_TOKEN_TYPE))
                        continue;
                if (crypt_token_json_get(cd, id, &json) < 0)
                        continue;
                r = cmek_token_parse(json, &t, &why);
                if (r < 0) {
                        fprintf(stderr, "cmek-udev-helper: token %d ignored: %s\n", id, strempty(why));
                        continue;
                }
                if (t.keyslot < 0) {    /* being removed: opens nothing */
                        cmek_token_done(&t);
                        continue;
                }
                *ret = t;
                *ret_id = id;
                return 0;
        }
        return -ENOENT;
}

static int usage(int ret) {
        fprintf(ret ? stderr : stdout, "Usage: %s [--state-dir DIR] DEVICE\n"
                "Prints udev properties (CMEK_BOUND=1, ...) when DEVICE is a LUKS2 volume with a cmek token;\n"
                "CMEK_ATTACH=1 only when cmekd registered DEVICE (registry in DIR, default " STATE_DIR_DEFAULT ")\n"
                "or when the environment has CMEK_AUTOATTACH=1 (a udev rule's opt-in).\n",
                program_invocation_short_name);
        return ret;
}

int main(int argc, char *argv[]) {
        static const struct option options[] = {
                { "help", no_argument, NULL, 'h' },
                { "state-dir", required_argument, NULL, 's' },
                {}
        };
        struct crypt_device *cd = NULL;
        CmekToken t = CMEK_TOKEN_NULL;
        const char *state_dir = STATE_DIR_DEFAULT, *dev, *optin;
        struct stat st;
        const char *uuid;
        int id = -1, in_crypttab, ret = 0, c;

        while ((c = getopt_long(argc, argv, "h", options, NULL)) >= 0)
                switch (c) {
                case 'h':
                        return usage(0);
                case 's':
                        state_dir = optarg;
                        break;
                default:
                        return usage(2);
                }
        if (optind != argc - 1)
                return usage(2);
        dev = argv[optind];
        /* a property set by a local udev rule before 90-cmek.rules: "0" never attach, "1" attach
         * a device cmekd did not register too */
        optin = getenv("CMEK_AUTOATTACH");

        crypt_set_log_callback(NULL, log_quiet, NULL);
        (void) crypt_token_external_disable();  /* list tokens, never dlopen() plugins in udev */
        (void) crypt_metadata_locking(NULL, 0);

        if (stat(dev, &st) < 0)
                return 0;
        if (crypt_init(&cd, dev) < 0)
                return 0;
        /* not LUKS2, unreadable, or a header being written: not ours (for now) */
        if (crypt_load(cd, CRYPT_LUKS2, NULL) < 0)
                goto out;
        uuid = crypt_get_uuid(cd);
        if (!uuid_is_canonical(uuid))
                goto out;
        if (find_cmek_token(cd, &t, &id) < 0)
                goto out;

        in_crypttab = listed_in_crypttab(uuid, &st);
        if (in_crypttab < 0)
                fprintf(stderr, "cmek-udev-helper: cannot read crypttab, ignoring: %s\n", strerror(-in_crypttab));

        printf("CMEK_BOUND=1\n"
               "CMEK_UUID=%s\n"
               "CMEK_NAME=cmek-%s\n"
               "CMEK_KEY_ID=%s\n"
               "CMEK_KEY_VERSION=%u\n"
               "CMEK_VAULT=%s\n"
               "CMEK_TOKEN_ID=%d\n"
               "CMEK_KEYSLOT=%d\n",
               uuid, uuid, t.key_id, t.key_version, t.vault, id, t.keyslot);
        if (in_crypttab > 0)
                printf("CMEK_CRYPTTAB=1\n");
        else if (streq_ptr(optin, "0"))
                printf("CMEK_ATTACH_REFUSED=opted-out\n");
        else {
                const char *why = registered_mismatch(state_dir, dev, &st, uuid, t.key_id);

                if (why && !streq_ptr(optin, "1")) {
                        /* not ours to open: whoever attached it chose its header and its token */
                        openlog("cmek-udev-helper", LOG_PID, LOG_DAEMON);
                        syslog(LOG_NOTICE, "%s: LUKS2 volume %s with a cmek token (key %s) is not attached: %s. "
                               "cmekd attaches on hotplug only the device it registered ('cmekctl volume list'); "
                               "set ENV{CMEK_AUTOATTACH}=\"1\" in a udev rule to attach it anyway.",
                               dev, uuid, t.key_id, why);
                        fprintf(stderr, "cmek-udev-helper: %s: not attached: %s\n", dev, why);
                        printf("CMEK_ATTACH_REFUSED=%s\n", why);
                        goto flush;
                }
                if (why) {
                        openlog("cmek-udev-helper", LOG_PID, LOG_DAEMON);
                        syslog(LOG_NOTICE, "%s: LUKS2 volume %s (key %s) is not the device cmekd registered (%s); "
                               "attaching it because a udev rule set CMEK_AUTOATTACH=1.", dev, uuid, t.key_id, why);
                        fprintf(stderr, "cmek-udev-helper: %s: %s, attached by opt-in (CMEK_AUTOATTACH=1)\n", dev, why);
                        printf("CMEK_ATTACH_OPTIN=%s\n", why);
                }
                /* A device unit alias whose unit name is "dev-cmek-<UUID>.device": the dashes of the
                 * UUID become path separators, so cmek-attach@<UUID>.service can say
                 * BindsTo=dev-cmek-%i.device without "\x2d" escapes, which SYSTEMD_WANTS would lose
                 * on systemd < 258. */
                printf("CMEK_SYSTEMD_ALIAS=/dev/cmek/");
                for (const char *p = uuid; *p; p++)
                        putchar(*p == '-' ? '/' : *p);
                printf("\nCMEK_ATTACH=1\n");
        }
flush:
        if (fflush(stdout) != 0)
                ret = 1;
out:
        cmek_token_done(&t);
        crypt_free(cd);
        return ret;
}
