/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* cmek-udev-helper: udev IMPORT{program} for LUKS2 devices; prints CMEK_* properties for a cmek token.
 *
 * Reads the LUKS2 header with libcryptsetup only: no broker contact, no token plugin loaded, no
 * metadata lock (a header being rewritten fails to load here, and the writer's close brings a
 * "change" event that runs us again). Prints nothing and exits 0 for anything that is not a LUKS2
 * device with a valid cmek token, so the rule can import it blindly. See cmekd-crypttab(7). */
#include <ctype.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <libcryptsetup.h>

#include "cmek-token.h"
#include "cmek-util.h"

#define CRYPTTAB_DEFAULT "/etc/crypttab"

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

int main(int argc, char *argv[]) {
        struct crypt_device *cd = NULL;
        CmekToken t = CMEK_TOKEN_NULL;
        struct stat st;
        const char *uuid;
        int id = -1, in_crypttab, ret = 0;

        if (argc != 2 || argv[1][0] == '-') {
                fprintf(stderr, "Usage: %s DEVICE\n"
                        "Prints udev properties (CMEK_BOUND=1, ...) when DEVICE is a LUKS2 volume with a cmek token.\n",
                        program_invocation_short_name);
                return argc == 2 && streq(argv[1], "--help") ? 0 : 2;
        }

        crypt_set_log_callback(NULL, log_quiet, NULL);
        (void) crypt_token_external_disable();  /* list tokens, never dlopen() plugins in udev */
        (void) crypt_metadata_locking(NULL, 0);

        if (stat(argv[1], &st) < 0)
                return 0;
        if (crypt_init(&cd, argv[1]) < 0)
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
        else {
                /* A device unit alias whose unit name is "dev-cmek-<UUID>.device": the dashes of the
                 * UUID become path separators, so cmek-attach@<UUID>.service can say
                 * BindsTo=dev-cmek-%i.device without "\x2d" escapes, which SYSTEMD_WANTS would lose
                 * on systemd < 258. */
                printf("CMEK_SYSTEMD_ALIAS=/dev/cmek/");
                for (const char *p = uuid; *p; p++)
                        putchar(*p == '-' ? '/' : *p);
                printf("\nCMEK_ATTACH=1\n");
        }
        if (fflush(stdout) != 0)
                ret = 1;
out:
        cmek_token_done(&t);
        crypt_free(cd);
        return ret;
}
