/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* Small helpers shared by every cmekd component: cleanup attributes, errno conventions. */
#pragma once

#include <errno.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))
#define _cleanup_(f) __attribute__((cleanup(f)))
#define _unused_ __attribute__((unused))
#define _printf_(a, b) __attribute__((format(printf, a, b)))

/* Hand ownership on: returns the pointer and clears the variable so the cleanup does nothing. */
#define TAKE_PTR(p) ({ __typeof__(p) _p_ = (p); (p) = NULL; _p_; })
#define TAKE_FD(fd) ({ int _fd_ = (fd); (fd) = -1; _fd_; })

static inline void freep(void *p) { free(*(void **) p); }
static inline void closep(int *fd) {
        if (*fd >= 0) {
                int saved = errno;
                (void) close(*fd);
                errno = saved;
        }
}
static inline void fclosep(void *p);
#include <stdio.h>
static inline void fclosep(void *p) { FILE **f = p; if (*f) (void) fclose(*f); }

#define _cleanup_free_ _cleanup_(freep)
#define _cleanup_close_ _cleanup_(closep)
#define _cleanup_fclose_ _cleanup_(fclosep)

static inline bool streq(const char *a, const char *b) { return strcmp(a, b) == 0; }
static inline bool streq_ptr(const char *a, const char *b) {
        return (!a || !b) ? a == b : streq(a, b);
}
static inline const char *strempty(const char *s) { return s ? s : ""; }
static inline int negative_errno(void) { return errno > 0 ? -errno : -EIO; }

/* Index of s in a string table (enum -> name), or -EINVAL; NULL s or NULL entries never match. */
static inline int cmek_string_table_lookup(const char *const *table, size_t n, const char *s) {
        for (size_t i = 0; s && i < n; i++)
                if (table[i] && streq(table[i], s))
                        return (int) i;
        return -EINVAL;
}

/* Constant-time comparison for secrets and MACs. */
static inline bool memeq_consttime(const void *a, const void *b, size_t n) {
        const volatile unsigned char *x = a, *y = b;
        unsigned char d = 0;
        for (size_t i = 0; i < n; i++)
                d |= x[i] ^ y[i];
        return d == 0;
}

/* Write a file atomically: temp file ".NAME.cmek-tmp" in the same directory (a leftover of a crash is
 * replaced by the next write), fsync, rename, fsync the directory. */
int cmek_write_file_atomic(const char *path, const void *data, size_t size, mode_t mode);
/* The same, and the temporary file gets owner uid and group gid (fchown before the rename; -1
 * keeps that id), so the file never exists under its name with other owners or mode. */
int cmek_write_file_atomic_full(const char *path, const void *data, size_t size, mode_t mode, uid_t uid, gid_t gid);
/* Called by every atomic write between its fsync and its rename (NULL: nothing). Only the daemon's
 * fault points set it (cmek_fault_enable()); lib/ stays free of daemon code for the tools. */
void cmek_write_file_set_before_rename_hook(void (*hook)(void));
/* Read a whole file (at most max bytes); NUL-terminated. */
int cmek_read_file(const char *path, size_t max, char **ret, size_t *ret_size);
int cmek_mkdir_p(const char *path, mode_t mode);

/* True if s holds a control character: C0 (below 0x20), DEL, or a C1 control encoded in UTF-8
 * (U+0080..U+009F). Names and paths from callers are refused when it is. */
bool cmek_string_has_cc(const char *s);
/* A copy of s safe for a terminal or a log line, as systemd's cescape(): \a \b \f \n \r \t \v \\
 * and \xNN for every other control character (C0, DEL, C1) and for bytes that are not valid UTF-8;
 * printable ASCII and valid UTF-8 are kept. NULL on allocation failure (or for a NULL s). */
char *cmek_cescape(const char *s);
/* The same into buf (always NUL-terminated; cut at a character boundary if it does not fit). */
size_t cmek_cescape_buf(const char *s, char *buf, size_t size);
uint64_t cmek_now_usec(void);          /* CLOCK_REALTIME, µs */
uint64_t cmek_monotonic_usec(void);
