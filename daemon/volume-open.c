/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* Opening a path a caller named: never blocking, only files and block devices, with the caller's own reach.
 *
 * The daemon runs as root; a caller's path is opened with the caller's fsuid, fsgid and
 * supplementary groups (setfsuid()/setfsgid() and the raw setgroups system call, which are
 * per-thread; the kernel drops CAP_DAC_OVERRIDE and friends from the effective set while the
 * fsuid is not 0), so that the caller reaches only what it could open itself. O_NONBLOCK: a FIFO
 * never blocks the event loop (and is refused after fstat()). libcryptsetup is then handed
 * "/proc/self/fd/N", so the file checked is the file used. */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/fsuid.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>

#include "cmek-log.h"
#include "cmek-util.h"
#include "volume-open.h"

typedef struct Creds {
        bool switched;
        uid_t old_fsuid;
        gid_t old_fsgid;
        gid_t *saved;
        int n_saved;
} Creds;

#define FOREACH_CONFIG_FILE(m, cfg) \
        for (const char *_files_[] = { (m)->config_path, (m)->policy_path }, *cfg = _files_[0], **_p_ = _files_; \
             _p_ < _files_ + 2; cfg = ++_p_ < _files_ + 2 ? *_p_ : NULL)

static void creds_leave(Creds *s) {
        if (!s->switched)
                return;
        (void) setfsuid(s->old_fsuid);
        (void) setfsgid(s->old_fsgid);
        if (syscall(SYS_setgroups, (size_t) s->n_saved, s->saved) < 0)
                log_error_errno(-errno, "Failed to restore the supplementary groups: %m");
        free(s->saved);
        s->saved = NULL;
        s->switched = false;
}

/* Takes the caller's filesystem identity for this thread; root keeps its own. */
static int creds_enter(const Caller *who, Creds *s) {
        int n;

        *s = (Creds) {};
        if (!who || who->uid == (uid_t) -1)
                return -EPERM;
        if (who->uid == 0)
                return 0;
        n = getgroups(0, NULL);
        if (n < 0)
                return -errno;
        s->saved = calloc((size_t) n + 1, sizeof(gid_t));
        if (!s->saved)
                return -ENOMEM;
        s->n_saved = getgroups(n, s->saved);
        if (s->n_saved < 0) {
                free(s->saved);
                return -errno;
        }
        if (syscall(SYS_setgroups, who->n_groups, who->groups) < 0) {
                int r = -errno;
                free(s->saved);
                s->saved = NULL;
                return r;
        }
        s->switched = true;
        s->old_fsgid = (gid_t) setfsgid(who->gid);
        s->old_fsuid = (uid_t) setfsuid(who->uid);
        /* setfsuid() reports no error: read the values back (-1 is invalid: changes nothing) */
        if ((uid_t) setfsuid((uid_t) -1) != who->uid || (gid_t) setfsgid((gid_t) -1) != who->gid) {
                creds_leave(s);
                return -EPERM;
        }
        return 0;
}

static const char *file_type_name(mode_t mode) {
        switch (mode & S_IFMT) {
        case S_IFIFO:
                return "a FIFO";
        case S_IFSOCK:
                return "a socket";
        case S_IFCHR:
                return "a character device";
        case S_IFDIR:
                return "a directory";
        case S_IFLNK:
                return "a symbolic link";
        default:
                return "not a regular file";
        }
}

/* Is real (a resolved path) at or under one of the daemon's own directories (state, configuration,
 * hooks)? By name, and by st_dev/st_ino of every ancestor (a bind mount or another name of the
 * same directory). Returns the directory it is under, or NULL. */
static const char *protected_dir(Manager *m, const char *real, char **ret_dir) {
        const char *dirs[3] = {};
        size_t n = 0;

        dirs[n++] = m->state_dir;
        dirs[n++] = SYSCONFDIR "/cmekd";
        if (m->hooks_dir)
                dirs[n++] = m->hooks_dir;

        for (size_t i = 0; i < n; i++) {
                _cleanup_free_ char *d = realpath(dirs[i], NULL);
                _cleanup_free_ char *walk = NULL;
                struct stat ds;
                size_t l;

                if (!d || stat(d, &ds) < 0)
                        continue;
                l = strlen(d);
                if (strncmp(real, d, l) == 0 && (real[l] == '/' || real[l] == 0 || streq(d, "/")))
                        goto found;
                walk = strdup(real);
                if (!walk)
                        continue;
                for (char *s; (s = strrchr(walk, '/'));) {
                        struct stat as;
                        if (s == walk)
                                s[1] = 0;
                        else
                                *s = 0;
                        if (stat(walk, &as) >= 0 && as.st_dev == ds.st_dev && as.st_ino == ds.st_ino)
                                goto found;
                        if (s == walk)
                                break;
                }
                continue;
        found:
                *ret_dir = TAKE_PTR(d);
                return *ret_dir;
        }
        *ret_dir = NULL;
        return NULL;
}

void volume_file_done(VolumeFile *f) {
        if (f->fd >= 0)
                close(f->fd);
        f->fd = -1;
        free(f->real);
        f->real = NULL;
}

/* call_errorf(), and InvalidParameter names the call's path parameter ("path" of Volume.Create,
 * "device" elsewhere; Volume.Scan's paths never get here) */
_printf_(3, 4)
static int reply_errorf(Call *c, const char *error, const char *fmt, ...) {
        const char *method = strempty(call_method(c));
        size_t n = strlen(method);
        _cleanup_free_ char *s = NULL;
        json_object *p;
        va_list ap;
        int k;

        va_start(ap, fmt);
        k = vasprintf(&s, fmt, ap);
        va_end(ap);
        if (k < 0)
                return -ENOMEM;
        p = json_object_new_object();
        if (streq(error, VARLINK_ERROR_INVALID_PARAMETER))
                json_object_object_add(p, "parameter", json_object_new_string(
                                n >= 7 && streq(method + n - 7, ".Create") ? "path" : "device"));
        json_object_object_add(p, "message", json_object_new_string(s));
        return call_error(c, error, p);
}

static int open_error(Call *c, const char *path, int err, VolumeOpenFlags flags) {
        switch (err) {
        case ENOENT:
                return call_errorf(c, CMEK_ERROR_VOLUME_NOT_FOUND, "'%s' does not exist%s", path,
                                   flags & VOLUME_OPEN_CREATE ? "" : ": give an existing block device or image "
                                   "file (volume create --size makes a new image)");
        case EACCES:
        case EPERM:
        case EROFS:
                return call_errorf(c, CMEK_ERROR_PERMISSION_DENIED, "you cannot %s '%s': %s", flags & VOLUME_OPEN_CREATE ?
                                   "create" : flags & VOLUME_OPEN_WRITE ? "write" : "read", path,
                                   flags & VOLUME_OPEN_CREATE ? "cmekd creates an image only where you may create files" :
                                   "cmekd opens a path only with your own access to it");
        case EEXIST:
                return call_errorf(c, CMEK_ERROR_ALREADY_EXISTS, "'%s' appeared while it was being created: try again", path);
        case EISDIR:
                return reply_errorf(c, VARLINK_ERROR_INVALID_PARAMETER, "'%s' is a directory: give a block device or an image file", path);
        case ELOOP:
                return reply_errorf(c, VARLINK_ERROR_INVALID_PARAMETER, "'%s': too many symbolic links", path);
        case ENXIO:
        case ENODEV:
                return call_errorf(c, CMEK_ERROR_VOLUME_NOT_FOUND, "'%s' is a device that is not present", path);
        default:
                return call_errorf(c, CMEK_ERROR_DEVICE_ERROR, "cannot open '%s': %s", path, strerror(err));
        }
}

static int reply_quiet(Call *c, const char *path) {
        return call_errorf(c, CMEK_ERROR_VOLUME_NOT_FOUND, "'%s' is not a cmekd volume you may see: it does not exist, "
                           "you cannot read it, it is not a bound LUKS2 volume, or no policy statement lets you "
                           "inspect it; give a path you can read, or the UUID of a registered volume", path);
}

/* The checks on an opened fd; NULL when acceptable, else the message (static text in buf). */
static const char *check_fd(Manager *m, const char *path, VolumeFile *f, VolumeOpenFlags flags,
                            char *buf, size_t size, const char **ret_error) {
        char link[PATH_MAX];
        _cleanup_free_ char *dir = NULL;
        ssize_t n;

        *ret_error = VARLINK_ERROR_INVALID_PARAMETER;
        if (fstat(f->fd, &f->st) < 0) {
                *ret_error = CMEK_ERROR_DEVICE_ERROR;
                snprintf(buf, size, "cannot stat '%s': %s", path, strerror(errno));
                return buf;
        }
        if (!S_ISBLK(f->st.st_mode) && !S_ISREG(f->st.st_mode)) {
                snprintf(buf, size, "'%s' is %s: give a block device or an image file", path, file_type_name(f->st.st_mode));
                return buf;
        }
        snprintf(f->proc, sizeof(f->proc), "/proc/self/fd/%d", f->fd);
        n = readlink(f->proc, link, sizeof(link) - 1);
        if (n < 0 || n == (ssize_t) sizeof(link) - 1) {
                *ret_error = CMEK_ERROR_DEVICE_ERROR;
                snprintf(buf, size, "cannot resolve '%s'", path);
                return buf;
        }
        link[n] = 0;
        if (link[0] != '/') {
                snprintf(buf, size, "'%s' is not a file with a path", path);
                return buf;
        }
        f->real = strdup(link);
        if (!f->real) {
                *ret_error = CMEK_ERROR_INTERNAL;
                snprintf(buf, size, "out of memory");
                return buf;
        }
        /* the configuration and policy files themselves, wherever they are */
        FOREACH_CONFIG_FILE(m, cfg) {
                struct stat cs;
                if (cfg && stat(cfg, &cs) >= 0 && cs.st_dev == f->st.st_dev && cs.st_ino == f->st.st_ino) {
                        snprintf(buf, size, "'%s' is cmekd's configuration file %s", path, cfg);
                        return buf;
                }
        }
        if (protected_dir(m, f->real, &dir)) {
                snprintf(buf, size, "'%s' is inside cmekd's own directory %s: a volume can never live there", path, dir);
                return buf;
        }
        if ((flags & VOLUME_OPEN_NO_DM) && S_ISBLK(f->st.st_mode)) {
                char sys[64];
                snprintf(sys, sizeof(sys), "/sys/dev/block/%u:%u/dm", major(f->st.st_rdev), minor(f->st.st_rdev));
                if (access(sys, F_OK) >= 0) {
                        snprintf(buf, size, "'%s' is a device-mapper device (an opened volume?): give the underlying "
                                 "block device", path);
                        return buf;
                }
        }
        if ((flags & VOLUME_OPEN_UNUSED) && S_ISBLK(f->st.st_mode)) {
                /* an O_EXCL open of a block device fails with EBUSY while it is mounted or held */
                int fd = open(f->proc, O_RDONLY | O_EXCL | O_NONBLOCK | O_NOCTTY | O_CLOEXEC);
                if (fd < 0 && errno == EBUSY) {
                        *ret_error = CMEK_ERROR_BUSY;
                        snprintf(buf, size, "'%s' is mounted or in use (a mapping, RAID or LVM holds it): "
                                 "unmount or release it first", path);
                        return buf;
                }
                if (fd >= 0)
                        close(fd);
        }
        return NULL;
}

int volume_file_open(Manager *m, Call *c, const char *path, VolumeOpenFlags flags, VolumeFile *ret) {
        VolumeFile f = VOLUME_FILE_NULL;
        int oflags = O_NONBLOCK | O_NOCTTY | O_CLOEXEC | (flags & (VOLUME_OPEN_WRITE | VOLUME_OPEN_CREATE) ? O_RDWR : O_RDONLY);
        const char *msg, *error;
        char buf[PATH_MAX + 256];
        Creds s;
        bool tried_create = false;
        int r, err = 0;

        r = creds_enter(call_caller(c), &s);
        if (r < 0)
                return call_errorf(c, CMEK_ERROR_INTERNAL, "cannot take the caller's credentials to open '%s': %s",
                                   path, strerror(-r)), r;
        f.fd = open(path, oflags);
        if (f.fd < 0 && errno == ENOENT && (flags & VOLUME_OPEN_CREATE)) {
                /* the directory first (with the caller's reach), checked (as the daemon), then the
                 * file created in that very directory */
                _cleanup_free_ char *dir = strdup(path), *protected = NULL;
                _cleanup_close_ int dfd = -1;
                char *slash = dir ? strrchr(dir, '/') : NULL;
                const char *base = slash ? slash + 1 : path;
                char link[PATH_MAX], proc[32];
                ssize_t n = -1;

                tried_create = true;
                if (slash)
                        slash[slash == dir ? 1 : 0] = 0;
                dfd = !dir ? -1 : open(slash ? dir : ".", O_PATH | O_DIRECTORY | O_CLOEXEC);
                if (dfd < 0)
                        err = dir ? errno : ENOMEM;
                creds_leave(&s);
                if (dfd >= 0) {
                        snprintf(proc, sizeof(proc), "/proc/self/fd/%d", dfd);
                        n = readlink(proc, link, sizeof(link) - 1);
                }
                if (dfd >= 0 && n > 0) {
                        link[n] = 0;
                        if (protected_dir(m, link, &protected))
                                return reply_errorf(c, VARLINK_ERROR_INVALID_PARAMETER, "'%s' is inside cmekd's own "
                                                   "directory %s: a volume can never live there", path, protected), -EPERM;
                }
                if (dfd >= 0 && (n <= 0 || !*base))
                        err = EINVAL;
                if (!err) {
                        r = creds_enter(call_caller(c), &s);
                        if (r < 0)
                                return call_errorf(c, CMEK_ERROR_INTERNAL, "cannot take the caller's credentials: %s",
                                                   strerror(-r)), r;
                        f.fd = openat(dfd, base, oflags | O_CREAT | O_EXCL | O_NOFOLLOW, 0600);
                        f.created = f.fd >= 0;
                        if (f.fd < 0)
                                err = errno;
                }
        } else if (f.fd < 0)
                err = errno;
        creds_leave(&s);
        if (f.fd < 0 && (flags & VOLUME_OPEN_QUIET))
                return reply_quiet(c, path), -err;
        if (f.fd < 0)
                return open_error(c, path, err, tried_create ? flags : flags & ~VOLUME_OPEN_CREATE), -err;

        msg = check_fd(m, path, &f, flags, buf, sizeof(buf), &error);
        if (msg) {
                if (flags & VOLUME_OPEN_QUIET)
                        reply_quiet(c, path);
                else
                        reply_errorf(c, error, "%s", msg);
                if (f.created)
                        volume_file_unlink_created(c, path, &f);
                volume_file_done(&f);
                return -EINVAL;
        }
        *ret = f;
        return 0;
}

int volume_file_open_root(Manager *m, const char *path, VolumeFile *ret) {
        VolumeFile f = VOLUME_FILE_NULL;
        const char *error;
        char buf[PATH_MAX + 256];

        f.fd = open(path, O_RDONLY | O_NONBLOCK | O_NOCTTY | O_CLOEXEC);
        if (f.fd < 0)
                return errno == ENOENT ? -ENODEV : -errno;
        if (check_fd(m, path, &f, 0, buf, sizeof(buf), &error)) {
                volume_file_done(&f);
                return -ENODEV;
        }
        *ret = f;
        return 0;
}

void volume_file_unlink_created(Call *c, const char *path, VolumeFile *f) {
        struct stat st;
        Creds s;

        if (!f->created || creds_enter(call_caller(c), &s) < 0)
                return;
        /* only the file this request created, and only with the caller's own rights */
        if (lstat(path, &st) >= 0 && st.st_dev == f->st.st_dev && st.st_ino == f->st.st_ino)
                (void) unlink(path);
        creds_leave(&s);
        f->created = false;
}

int volume_file_open_as(Manager *m, const Caller *who, const char *path, VolumeFile *ret) {
        VolumeFile f = VOLUME_FILE_NULL;
        const char *error;
        char buf[PATH_MAX + 256];
        Creds s;
        int r, err = 0;

        r = creds_enter(who, &s);
        if (r < 0)
                return r;
        f.fd = open(path, O_RDONLY | O_NONBLOCK | O_NOCTTY | O_CLOEXEC);
        if (f.fd < 0)
                err = errno;
        creds_leave(&s);
        if (f.fd < 0)
                return err == ENOENT ? -ENODEV : -err;
        if (check_fd(m, path, &f, 0, buf, sizeof(buf), &error)) {
                volume_file_done(&f);
                return -EMEDIUMTYPE;
        }
        *ret = f;
        return 0;
}
