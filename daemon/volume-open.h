/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* Opening a path a caller named: never blocking, only files and block devices, with the caller's own reach. */
#pragma once

#include <stdbool.h>
#include <sys/stat.h>

#include "manager.h"

typedef enum VolumeOpenFlags {
        VOLUME_OPEN_WRITE  = 1 << 0, /* the caller must be able to write it (format, bind) */
        VOLUME_OPEN_CREATE = 1 << 1, /* absent: create it (O_CREAT|O_EXCL, owned by the caller) */
        VOLUME_OPEN_NO_DM  = 1 << 2, /* refuse a device-mapper device (create, bind) */
        VOLUME_OPEN_UNUSED = 1 << 3, /* refuse a mounted or held block device (create --force) */
        VOLUME_OPEN_QUIET  = 1 << 4, /* one answer (VolumeNotFound) for every failure: no oracle */
} VolumeOpenFlags;

typedef struct VolumeFile {
        int fd;
        struct stat st;
        char *real;             /* what /proc/self/fd/N points at: the path to register */
        char proc[32];          /* "/proc/self/fd/N": what libcryptsetup is given */
        bool created;           /* VOLUME_OPEN_CREATE made it */
} VolumeFile;
#define VOLUME_FILE_NULL { .fd = -1 }

/* Opens path for the caller of c (O_NONBLOCK|O_NOCTTY|O_CLOEXEC, with the caller's fsuid, fsgid
 * and supplementary groups unless it is root), accepts only a block device or a regular file, and
 * never anything under the state, configuration or hooks directories. Replies on failure (the
 * message says what to do) and returns a negative errno; 0 on success. */
int volume_file_open(Manager *m, Call *c, const char *path, VolumeOpenFlags flags, VolumeFile *ret);
/* Like volume_file_open() without a call: the daemon's own reach (root), for registered paths.
 * Does not reply. */
int volume_file_open_root(Manager *m, const char *path, VolumeFile *ret);
/* volume_file_open() without a reply, read-only, for who (Volume.Scan). */
int volume_file_open_as(Manager *m, const Caller *who, const char *path, VolumeFile *ret);
/* Removes the file volume_file_open() created (with the same caller's credentials). */
void volume_file_unlink_created(Call *c, const char *path, VolumeFile *f);
void volume_file_done(VolumeFile *f);
