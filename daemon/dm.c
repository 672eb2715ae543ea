/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* The device-mapper layer: which dm-crypt mappings of LUKS2 volumes exist (the scan of /sys/block
 * and its cache), who holds one open, suspend + key wipe + keyring revoke, and the LUKS2 headers
 * under live mappings (the kernel scan). Plain functions over mapping names and device numbers:
 * nothing here knows the registry, keys or policy (cf. systemd's src/shared/dm-util.c). */
#include <ctype.h>
#include <dirent.h>
#include <endian.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/syscall.h>
#include <libcryptsetup.h>
#include <libdevmapper.h>
#include <linux/keyctl.h>

#include "cmek-log.h"
#include "cmek-util.h"
#include "dm.h"
#include "luks2.h"

/* Who keeps a mapping open: "open count 1; pid 812 (dd); mounted on /mnt; held by dm-5". NULL
 * when nothing is known. Only for messages: it runs after the locking. */
char *mapping_users(const char *name) {
        _cleanup_free_ char *holders = NULL;
        struct dm_task *dmt;
        struct dm_info info = {};
        struct stat st = {};
        char *buf = NULL;
        size_t size = 0;
        unsigned n_pids = 0;
        bool found_info;
        FILE *f;
        DIR *d;

        /* the device number from device-mapper, not from /dev/mapper/NAME: without udev,
         * libdevmapper removes that node at a deferred removal although the device stays */
        dmt = dm_task_create(DM_DEVICE_INFO);
        if (!dmt)
                return NULL;
        found_info = dm_task_set_name(dmt, name) && dm_task_run(dmt) && dm_task_get_info(dmt, &info) && info.exists;
        dm_task_destroy(dmt);
        if (!found_info)
                return NULL;
        st.st_rdev = makedev(info.major, info.minor);
        f = open_memstream(&buf, &size);
        if (!f)
                return NULL;
        fprintf(f, "open count %d", info.open_count);
        /* processes with the device open (a file descriptor on /dev/dm-N or /dev/mapper/NAME) */
        d = opendir("/proc");
        for (struct dirent *de; d && (de = readdir(d)) && n_pids < 8;) {
                _cleanup_free_ char *fddir = NULL;
                DIR *fds;
                bool found = false;

                if (!isdigit((unsigned char) de->d_name[0]) || asprintf(&fddir, "/proc/%s/fd", de->d_name) < 0)
                        continue;
                fds = opendir(fddir);
                for (struct dirent *fe; fds && !found && (fe = readdir(fds));) {
                        struct stat fst;
                        if (fe->d_name[0] != '.' && fstatat(dirfd(fds), fe->d_name, &fst, 0) >= 0 &&
                            S_ISBLK(fst.st_mode) && fst.st_rdev == st.st_rdev)
                                found = true;
                }
                if (fds)
                        closedir(fds);
                if (found) {
                        _cleanup_free_ char *commp = NULL, *comm = NULL;
                        if (asprintf(&commp, "/proc/%s/comm", de->d_name) >= 0)
                                (void) cmek_read_file(commp, 64, &comm, NULL);
                        if (comm)
                                comm[strcspn(comm, "\n")] = 0;
                        fprintf(f, "%spid %s (%s)", ftell(f) > 0 ? "; " : "", de->d_name, comm ?: "?");
                        n_pids++;
                }
        }
        if (d)
                closedir(d);
        /* mounts */
        {
                _cleanup_fclose_ FILE *mi = fopen("/proc/self/mountinfo", "re");
                _cleanup_free_ char *line = NULL;
                size_t alloc = 0;
                char want[32];
                snprintf(want, sizeof(want), "%u:%u", major(st.st_rdev), minor(st.st_rdev));
                while (mi && getline(&line, &alloc, mi) > 0) {
                        char devno[32], root[512], mnt[512];
                        if (sscanf(line, "%*s %*s %31s %511s %511s", devno, root, mnt) == 3 && streq(devno, want))
                                fprintf(f, "%smounted on %s", ftell(f) > 0 ? "; " : "", mnt);
                }
        }
        /* stacked devices (LVM, another dm-crypt, md) */
        if (asprintf(&holders, "/sys/dev/block/%u:%u/holders", major(st.st_rdev), minor(st.st_rdev)) >= 0) {
                DIR *hd = opendir(holders);
                for (struct dirent *he; hd && (he = readdir(hd));)
                        if (he->d_name[0] != '.')
                                fprintf(f, "%sheld by %s", ftell(f) > 0 ? "; " : "", he->d_name);
                if (hd)
                        closedir(hd);
        }
        if (fclose(f) != 0 || size == 0) {
                free(buf);
                return NULL;
        }
        return buf;
}

/* ---- the scan (see DmCache in dm.h) ---- */

void dm_scan_clear(DmCache *c) {
        for (size_t i = 0; i < c->scan.n; i++) {
                free(c->scan.maps[i].uuid);
                free(c->scan.maps[i].name);
                free(c->scan.maps[i].dev);
        }
        free(c->scan.maps);
        c->scan.maps = NULL;
        c->scan.n = 0;
        c->scan.usec = 0;
}

void dm_scan_invalidate(DmCache *c) {
        c->scan.usec = 0;       /* the next lookup scans again */
}

static char *sysfs_line(const char *dev, const char *attr) {
        char path[PATH_MAX], *buf = NULL;
        size_t n = 0;

        (void) snprintf(path, sizeof(path), "/sys/block/%s/dm/%s", dev, attr);
        if (cmek_read_file(path, 4096, &buf, &n) < 0)
                return NULL;
        while (n > 0 && (buf[n - 1] == '\n' || buf[n - 1] == 0))
                buf[--n] = 0;
        return buf;
}

void dm_scan_refresh(DmCache *c) {
        uint64_t now = cmek_monotonic_usec();
        DIR *d;
        struct dirent *de;

        if (c->scan.usec && now - c->scan.usec < USEC_PER_SEC)
                return;
        dm_scan_clear(c);
        c->scan.usec = now;
        d = opendir("/sys/block");
        if (!d)
                return;
        while ((de = readdir(d))) {
                char *uuid, *name, *dev;
                void *a;
                if (strncmp(de->d_name, "dm-", 3) != 0)
                        continue;
                uuid = sysfs_line(de->d_name, "uuid");
                name = uuid && strncmp(uuid, "CRYPT-LUKS2-", 12) == 0 ? sysfs_line(de->d_name, "name") : NULL;
                dev = name ? strdup(de->d_name) : NULL;
                a = dev ? reallocarray(c->scan.maps, c->scan.n + 1, sizeof(*c->scan.maps)) : NULL;
                if (!a) {
                        free(uuid);
                        free(name);
                        free(dev);
                        continue;
                }
                c->scan.maps = a;
                c->scan.maps[c->scan.n].uuid = uuid;
                c->scan.maps[c->scan.n].dev = dev;
                c->scan.maps[c->scan.n++].name = name;
        }
        closedir(d);
}

/* The name of an active mapping of the volume, or NULL. */
const char *mapping_find_by_uuid(DmCache *c, const char *uuid) {
        char prefix[sizeof("CRYPT-LUKS2-") + 40];
        size_t k = strlen("CRYPT-LUKS2-");

        if (!uuid)
                return NULL;
        memcpy(prefix, "CRYPT-LUKS2-", k);
        for (const char *u = uuid; *u && k < sizeof(prefix) - 2; u++)
                if (*u != '-')
                        prefix[k++] = *u;
        prefix[k++] = '-';
        prefix[k] = 0;
        dm_scan_refresh(c);
        for (size_t i = 0; i < c->scan.n; i++)
                if (strncmp(c->scan.maps[i].uuid, prefix, k) == 0)
                        return c->scan.maps[i].name;
        return NULL;
}

/* The open count of a mapping from device-mapper; -ENODEV when it does not exist. Asking first
 * spares libcryptsetup's remove retries (a second each) on a busy device. */
int mapping_open_count(const char *name, bool *ret_suspended) {
        struct dm_task *dmt = dm_task_create(DM_DEVICE_INFO);
        struct dm_info info = {};
        int r = -ENODEV;

        if (!dmt)
                return -ENOMEM;
        if (dm_task_set_name(dmt, name) && dm_task_run(dmt) && dm_task_get_info(dmt, &info) && info.exists) {
                r = info.open_count;
                if (ret_suspended)
                        *ret_suspended = info.suspended;
        }
        dm_task_destroy(dmt);
        return r;
}

/* What crypt_suspend() does, without loading the LUKS2 header first (that costs more than the
 * rest under emulation, times the number of volumes): suspend without flushing (I/O is held,
 * nothing lost), wipe the key in dm-crypt, and revoke the kernel keyring copy libcryptsetup
 * made at activation (a logon key in this thread's keyring, named in the table). */
int mapping_suspend_wipe(const char *name) {
        _cleanup_free_ char *desc = NULL;
        struct dm_task *dmt;
        uint64_t start, length;
        char *type = NULL, *params = NULL;
        int r = -EIO;

        dmt = dm_task_create(DM_DEVICE_TABLE);
        if (!dmt)
                return -ENOMEM;
        if (dm_task_secure_data(dmt) && dm_task_set_name(dmt, name) && dm_task_run(dmt)) {
                (void) dm_get_next_target(dmt, NULL, &start, &length, &type, &params);
                if (!type || !streq(type, "crypt"))
                        r = -EMEDIUMTYPE;
                else {
                        /* "cipher key iv_offset ...": a keyring key is ":SIZE:logon:DESCRIPTION" */
                        const char *k = strchr(params ?: "", ' ');
                        if (k && strncmp(k + 1, ":", 1) == 0) {
                                const char *d = strstr(k + 1, ":logon:");
                                if (d)
                                        desc = strndup(d + 7, strcspn(d + 7, " "));
                        }
                        r = 0;
                }
        }
        dm_task_destroy(dmt); /* secure data: libdevmapper wipes the table buffer */
        if (r < 0)
                return r;

        dmt = dm_task_create(DM_DEVICE_SUSPEND);
        if (!dmt)
                return -ENOMEM;
        r = dm_task_set_name(dmt, name) && dm_task_no_flush(dmt) && dm_task_skip_lockfs(dmt) && dm_task_run(dmt) ? 0 : -EIO;
        dm_task_destroy(dmt);
        if (r < 0)
                return r;
        dmt = dm_task_create(DM_DEVICE_TARGET_MSG);
        if (!dmt)
                return -ENOMEM;
        r = dm_task_set_name(dmt, name) && dm_task_set_sector(dmt, 0) && dm_task_set_message(dmt, "key wipe") &&
            dm_task_run(dmt) ? 0 : -EIO;
        dm_task_destroy(dmt);
        if (r < 0)
                return r;       /* suspended, key not wiped: the caller reports the failure */
        if (desc) {
                long id = syscall(SYS_keyctl, KEYCTL_SEARCH, KEY_SPEC_THREAD_KEYRING, "logon", desc, 0);
                if (id >= 0) {
                        (void) syscall(SYS_keyctl, KEYCTL_REVOKE, id);
                        (void) syscall(SYS_keyctl, KEYCTL_UNLINK, id, KEY_SPEC_THREAD_KEYRING);
                }
        }
        return 0;
}

/* ---- the kernel scan: the LUKS2 headers under live mappings (see dm.h) ---- */

static void strv_free_(char **l) {
        for (char **p = l; p && *p; p++)
                free(*p);
        free(l);
}

void kscan_clear(DmCache *c) {
        for (size_t i = 0; i < c->kscan.n; i++)
                strv_free_(c->kscan.h[i].key_ids);
        free(c->kscan.h);
        for (size_t i = 0; i < c->kscan.n_locked; i++)
                free(c->kscan.locked[i]);
        free(c->kscan.locked);
        c->kscan = (typeof(c->kscan)) {};
}

bool kscan_is_locked(DmCache *c, const char *name) {
        for (size_t i = 0; i < c->kscan.n_locked; i++)
                if (streq(c->kscan.locked[i], name))
                        return true;
        return false;
}

void kscan_set_locked(DmCache *c, const char *name) {
        char **a;

        if (kscan_is_locked(c, name))
                return;
        a = reallocarray(c->kscan.locked, c->kscan.n_locked + 1, sizeof(char *));
        if (!a)
                return;
        c->kscan.locked = a;
        if ((c->kscan.locked[c->kscan.n_locked] = strdup(name)))
                c->kscan.n_locked++;
}

/* Does the device-mapper UUID "CRYPT-LUKS2-<uuid without dashes>-<name>" belong to this LUKS UUID? */
static bool dm_uuid_is_volume(const char *dm_uuid, const char *luks_uuid) {
        const char *p;

        if (!dm_uuid || !luks_uuid || strncmp(dm_uuid, "CRYPT-LUKS2-", 12) != 0)
                return false;
        p = dm_uuid + 12;
        for (const char *c = luks_uuid; *c; c++) {
                if (*c == '-')
                        continue;
                if (tolower((unsigned char) *p) != tolower((unsigned char) *c))
                        return false;
                p++;
        }
        return *p == '-';
}

/* The one block device under a dm-crypt mapping: its kernel name ("loop0", "sda2") and number. */
static int mapping_backing_device(const char *dmdev, char **ret_name, dev_t *ret_devno) {
        _cleanup_free_ char *name = NULL, *s = NULL;
        char path[PATH_MAX];
        unsigned n = 0, ma, mi;
        DIR *d;

        (void) snprintf(path, sizeof(path), "/sys/block/%s/slaves", dmdev);
        d = opendir(path);
        if (!d)
                return -errno;
        for (struct dirent *de; (de = readdir(d));) {
                if (de->d_name[0] == '.')
                        continue;
                n++;
                free(name);
                name = strdup(de->d_name);
        }
        closedir(d);
        if (n != 1)
                return n == 0 ? -ENXIO : -ENOTUNIQ;
        if (!name)
                return -ENOMEM;
        (void) snprintf(path, sizeof(path), "/sys/class/block/%s/dev", name);
        if (cmek_read_file(path, 64, &s, NULL) < 0 || sscanf(s, "%u:%u", &ma, &mi) != 2)
                return -ENXIO;
        *ret_devno = makedev(ma, mi);
        *ret_name = TAKE_PTR(name);
        return 0;
}

/* Opens /dev/NAME without blocking and checks that it is the block device DEVNO. A suspended
 * device-mapper device would hold any read forever: -EAGAIN. */
static int backing_open(const char *name, dev_t devno) {
        char path[PATH_MAX];
        struct stat st;
        int fd;

        if (strncmp(name, "dm-", 3) == 0) {
                _cleanup_free_ char *suspended = sysfs_line(name, "suspended");
                if (!suspended || !streq(suspended, "0"))
                        return -EAGAIN;
        }
        (void) snprintf(path, sizeof(path), "/dev/%s", name);
        for (char *c = path + 5; *c; c++)
                if (*c == '!')
                        *c = '/';       /* sysfs "cciss!c0d0" is /dev/cciss/c0d0 */
        fd = open(path, O_RDONLY | O_NONBLOCK | O_NOCTTY | O_CLOEXEC);
        if (fd < 0)
                return -errno;
        if (fstat(fd, &st) < 0 || !S_ISBLK(st.st_mode) || st.st_rdev != devno) {
                close(fd);
                return -ENXIO;
        }
        return fd;
}

/* The keys named by the cmek tokens of the LUKS2 header on FD (the device DEVNO), from the cache
 * when the binary header did not change. Borrowed, valid until the next call. -EMEDIUMTYPE when
 * there is no LUKS2 header (a detached header, a header wiped under a live mapping). */
static int backing_header_keys(DmCache *c, int fd, dev_t devno, const char **ret_uuid, char ***ret_keys) {
        _cleanup_crypt_ struct crypt_device *cd = NULL;
        HeaderTokens tokens = {};
        uint8_t bin[512];
        char fdpath[64], uuid[40];
        uint64_t seqid;
        uint16_t version;
        KernelHeader *h = NULL;
        char **keys;
        int r;

        if (pread(fd, bin, sizeof(bin), 0) != (ssize_t) sizeof(bin))
                return -EIO;
        memcpy(&version, bin + 6, sizeof(version));
        if (memcmp(bin, "LUKS\xba\xbe", 6) != 0 || be16toh(version) != 2)
                return -EMEDIUMTYPE;
        memcpy(&seqid, bin + 16, sizeof(seqid));
        seqid = be64toh(seqid);
        memcpy(uuid, bin + 168, sizeof(uuid));
        uuid[sizeof(uuid) - 1] = 0;
        for (size_t i = 0; i < c->kscan.n; i++)
                if (c->kscan.h[i].devno == devno) {
                        h = &c->kscan.h[i];
                        if (h->seqid == seqid && streq(h->uuid, uuid)) {
                                *ret_uuid = h->uuid;
                                *ret_keys = h->key_ids;
                                return 0;
                        }
                }

        /* libcryptsetup on the descriptor checked above: the checksums, the newer of the two copies */
        (void) snprintf(fdpath, sizeof(fdpath), "/proc/self/fd/%d", fd);
        r = crypt_init(&cd, fdpath);
        if (r < 0)
                return r;
        crypt_set_log_callback(cd, crypt_log_cb, NULL);
        r = crypt_load(cd, CRYPT_LUKS2, NULL);
        if (r < 0)
                return r == -EINVAL ? -EMEDIUMTYPE : r;
        (void) read_cmek_tokens(cd, &tokens);
        keys = calloc(tokens.n + 1, sizeof(char *));
        for (size_t i = 0; keys && i < tokens.n; i++)
                if (!(keys[i] = strdup(tokens.t[i].key_id))) {
                        strv_free_(keys);
                        keys = NULL;
                }
        header_tokens_done(&tokens);
        if (!keys)
                return -ENOMEM;
        if (!h) {
                KernelHeader *a = reallocarray(c->kscan.h, c->kscan.n + 1, sizeof(*c->kscan.h));
                if (!a) {
                        strv_free_(keys);
                        return -ENOMEM;
                }
                c->kscan.h = a;
                h = &c->kscan.h[c->kscan.n++];
                *h = (KernelHeader) { .devno = devno };
        }
        strv_free_(h->key_ids);
        h->key_ids = keys;
        h->seqid = seqid;
        /* the UUID libcryptsetup validated (it may come from the secondary copy) */
        (void) snprintf(h->uuid, sizeof(h->uuid), "%s", strempty(crypt_get_uuid(cd)));
        *ret_uuid = h->uuid;
        *ret_keys = h->key_ids;
        return 0;
}

/* The keys the on-disk header of the active mapping c->scan.maps[i] names, and its backing
 * device's name ("loop3") for messages. */
int mapping_header_keys(DmCache *c, size_t i, char **ret_backing, char **ret_uuid, char ***ret_keys) {
        _cleanup_free_ char *backing = NULL;
        const char *uuid = NULL;
        dev_t devno;
        int fd, r;

        r = mapping_backing_device(c->scan.maps[i].dev, &backing, &devno);
        if (r < 0)
                return r;
        fd = backing_open(backing, devno);
        if (fd < 0)
                return fd;
        r = backing_header_keys(c, fd, devno, &uuid, ret_keys);
        close(fd);
        if (r < 0)
                return r;
        /* a header that is not the mapping's volume any more says nothing about its key */
        if (!dm_uuid_is_volume(c->scan.maps[i].uuid, uuid))
                return -EXDEV;
        if (ret_uuid && !(*ret_uuid = strdup(uuid)))
                return -ENOMEM;
        *ret_backing = TAKE_PTR(backing);
        return 0;
}
