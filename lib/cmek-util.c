/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* File and time helpers shared by every cmekd component. */
#include <fcntl.h>
#include <libgen.h>
#include <sys/stat.h>
#include <time.h>

#include "cmek-util.h"

static int write_all(int fd, const void *data, size_t size) {
        const char *p = data;
        while (size > 0) {
                ssize_t n = write(fd, p, size);
                if (n < 0) {
                        if (errno == EINTR)
                                continue;
                        return -errno;
                }
                p += n;
                size -= (size_t) n;
        }
        return 0;
}

/* NULL in the tools; the daemon's fault points (lib/cmek-fault.c) set it when test hooks are on, so
 * the crash-safety walk can stop the daemon between the fsync and the rename of every atomic write. */
static void (*before_rename_hook)(void) = NULL;

void cmek_write_file_set_before_rename_hook(void (*hook)(void)) {
        before_rename_hook = hook;
}

int cmek_write_file_atomic(const char *path, const void *data, size_t size, mode_t mode) {
        return cmek_write_file_atomic_full(path, data, size, mode, (uid_t) -1, (gid_t) -1);
}

int cmek_write_file_atomic_full(const char *path, const void *data, size_t size, mode_t mode, uid_t uid, gid_t gid) {
        _cleanup_free_ char *tmp = NULL, *dircopy = NULL;
        _cleanup_close_ int fd = -1, dfd = -1;
        int r;

        /* one temporary name per target: what a crash left behind is removed by the next write
         * (never followed or truncated in place: unlinked, then created exclusively) */
        dircopy = strdup(path);
        if (!dircopy)
                return -ENOMEM;
        {
                const char *slash = strrchr(path, '/');
                if (asprintf(&tmp, "%.*s.%s.cmek-tmp", slash ? (int) (slash - path + 1) : 0, path,
                             slash ? slash + 1 : path) < 0)
                        return -ENOMEM;
        }
        if (unlink(tmp) < 0 && errno != ENOENT)
                return -errno;
        fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, mode);
        if (fd < 0)
                return -errno;
        r = write_all(fd, data, size);
        if (r >= 0 && (uid != (uid_t) -1 || gid != (gid_t) -1) && fchown(fd, uid, gid) < 0)
                r = -errno;
        /* after fchown, which may clear set-id bits */
        if (r >= 0 && fchmod(fd, mode) < 0)
                r = -errno;
        if (r >= 0 && fsync(fd) < 0)
                r = -errno;
        if (before_rename_hook)
                before_rename_hook();
        if (r >= 0 && rename(tmp, path) < 0)
                r = -errno;
        if (r < 0) {
                (void) unlink(tmp);
                return r;
        }
        dfd = open(dirname(dircopy), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (dfd >= 0)
                (void) fsync(dfd);
        return 0;
}

int cmek_read_file(const char *path, size_t max, char **ret, size_t *ret_size) {
        _cleanup_close_ int fd = -1;
        _cleanup_free_ char *buf = NULL;
        size_t size = 0, alloc = 0;

        fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0)
                return -errno;
        for (;;) {
                if (alloc - size < 4096 && alloc < max + 1) {
                        size_t na = alloc ? alloc * 2 : 8192;
                        if (na > max + 1)
                                na = max + 1;
                        char *nb = realloc(buf, na + 1);
                        if (!nb)
                                return -ENOMEM;
                        buf = nb;
                        alloc = na;
                }
                ssize_t n = read(fd, buf + size, alloc - size);
                if (n < 0) {
                        if (errno == EINTR)
                                continue;
                        return -errno;
                }
                if (n == 0)
                        break;
                size += (size_t) n;
                if (size > max)
                        return -EFBIG;
        }
        if (!buf && !(buf = malloc(1)))
                return -ENOMEM;
        buf[size] = 0;
        *ret = TAKE_PTR(buf);
        if (ret_size)
                *ret_size = size;
        return 0;
}

int cmek_mkdir_p(const char *path, mode_t mode) {
        _cleanup_free_ char *p = strdup(path);
        if (!p)
                return -ENOMEM;
        for (char *s = p + 1; *s; s++) {
                if (*s != '/')
                        continue;
                *s = 0;
                if (mkdir(p, mode) < 0 && errno != EEXIST)
                        return -errno;
                *s = '/';
        }
        if (mkdir(p, mode) < 0 && errno != EEXIST)
                return -errno;
        return 0;
}

static uint64_t clock_usec(clockid_t c) {
        struct timespec ts;
        (void) clock_gettime(c, &ts);
        return (uint64_t) ts.tv_sec * 1000000ULL + (uint64_t) ts.tv_nsec / 1000ULL;
}

uint64_t cmek_now_usec(void) { return clock_usec(CLOCK_REALTIME); }
uint64_t cmek_monotonic_usec(void) { return clock_usec(CLOCK_MONOTONIC); }

/* Length of the valid UTF-8 sequence at p (1..4), or 0 if it is not one. */
static size_t utf8_len(const unsigned char *p) {
        size_t n;
        uint32_t c;

        if (p[0] < 0x80)
                return 1;
        if (p[0] >= 0xc2 && p[0] <= 0xdf)
                n = 2, c = p[0] & 0x1f;
        else if (p[0] >= 0xe0 && p[0] <= 0xef)
                n = 3, c = p[0] & 0x0f;
        else if (p[0] >= 0xf0 && p[0] <= 0xf4)
                n = 4, c = p[0] & 0x07;
        else
                return 0;
        for (size_t i = 1; i < n; i++) {
                if ((p[i] & 0xc0) != 0x80)
                        return 0;
                c = (c << 6) | (p[i] & 0x3f);
        }
        /* overlong forms, surrogates and beyond U+10FFFF are not valid */
        if ((n == 3 && c < 0x800) || (n == 4 && (c < 0x10000 || c > 0x10ffff)) || (c >= 0xd800 && c <= 0xdfff))
                return 0;
        return n;
}

static bool is_c1(const unsigned char *p) {
        return p[0] == 0xc2 && p[1] >= 0x80 && p[1] <= 0x9f;
}

bool cmek_string_has_cc(const char *s) {
        for (const unsigned char *p = (const unsigned char *) s; p && *p; p++)
                if (*p < 0x20 || *p == 0x7f || is_c1(p))
                        return true;
        return false;
}

size_t cmek_cescape_buf(const char *s, char *buf, size_t size) {
        const unsigned char *p = (const unsigned char *) strempty(s);
        size_t o = 0;

        if (size == 0)
                return 0;
        while (*p) {
                char tmp[16];
                size_t n = 0, adv = 1, ul = utf8_len(p);

                switch (*p) {
                case '\a': n = (size_t) snprintf(tmp, sizeof(tmp), "\\a"); break;
                case '\b': n = (size_t) snprintf(tmp, sizeof(tmp), "\\b"); break;
                case '\f': n = (size_t) snprintf(tmp, sizeof(tmp), "\\f"); break;
                case '\n': n = (size_t) snprintf(tmp, sizeof(tmp), "\\n"); break;
                case '\r': n = (size_t) snprintf(tmp, sizeof(tmp), "\\r"); break;
                case '\t': n = (size_t) snprintf(tmp, sizeof(tmp), "\\t"); break;
                case '\v': n = (size_t) snprintf(tmp, sizeof(tmp), "\\v"); break;
                case '\\': n = (size_t) snprintf(tmp, sizeof(tmp), "\\\\"); break;
                default:
                        if (*p < 0x20 || *p == 0x7f || ul == 0)
                                n = (size_t) snprintf(tmp, sizeof(tmp), "\\x%02x", *p);
                        else if (is_c1(p)) {
                                n = (size_t) snprintf(tmp, sizeof(tmp), "\\x%02x\\x%02x", p[0], p[1]);
                                adv = 2;
                        } else {
                                memcpy(tmp, p, ul);
                                n = adv = ul;
                        }
                }
                if (o + n >= size)
                        break;
                memcpy(buf + o, tmp, n);
                o += n;
                p += adv;
        }
        buf[o] = 0;
        return o;
}

char *cmek_cescape(const char *s) {
        size_t size;
        char *buf;

        if (!s)
                return NULL;
        size = strlen(s) * 8 + 1; /* at most \xc2\x9b for two bytes, \xNN for one */
        buf = malloc(size);
        if (buf)
                (void) cmek_cescape_buf(s, buf, size);
        return buf;
}
