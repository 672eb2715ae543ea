/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* The device-mapper layer (daemon/dm.c): the scan of dm-crypt mappings and its cache, open
 * counts and holders, suspend + key wipe, the LUKS2 headers under live mappings. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/* A dm-crypt mapping of a LUKS2 volume. dev: the kernel name, "dm-3". */
typedef struct DmMapping {
        char *uuid, *name, *dev;
} DmMapping;

/* What the LUKS2 header on the block device devno under a live mapping names: the keys of its
 * cmek tokens, valid while the header's sequence id and UUID stay the same. */
typedef struct KernelHeader {
        dev_t devno;
        uint64_t seqid;
        char uuid[40];
        char **key_ids;         /* NULL-terminated */
} KernelHeader;

/* The mutable state of the device-mapper layer; Manager owns one (Manager.dm).
 *
 * scan: every dm-crypt mapping of a LUKS2 volume, whoever opened it: cmekd, the token plugin at
 * boot (crypttab, systemd-cryptsetup), udev, cryptsetup by hand. libcryptsetup gives the mapping
 * the device-mapper UUID "CRYPT-LUKS2-<volume UUID without dashes>-<name>", which sysfs shows
 * next to the name. One scan of /sys/block serves every lookup for a second.
 *
 * kscan: enforcement from the kernel. The registry says which volumes a key wraps, but an entry
 * can be wrong (repointed at another file that carries the same UUID, edited by hand, lost), and
 * lock-on-disable must not depend on it: a locking pass also asks the kernel. Every active
 * dm-crypt mapping of a LUKS2 volume -> the one block device under it (sysfs slaves/) -> that
 * device's LUKS2 header -> the keys its cmek tokens name. What a header names is cached per
 * device number, header sequence id and UUID: a pass reads the 512-byte binary header of each
 * mapping (one pread, no libcryptsetup) and loads the JSON area only when that changed. Never
 * blocks on a suspended device below. */
typedef struct DmCache {
        struct {
                DmMapping *maps;
                size_t n;
                uint64_t usec;
        } scan;
        struct {
                KernelHeader *h;
                size_t n;
                /* the mappings locked from the kernel side only, by name: not locked again while
                 * they stay suspended */
                char **locked;
                size_t n_locked;
        } kscan;
} DmCache;

/* the scan */
void dm_scan_refresh(DmCache *c);
void dm_scan_invalidate(DmCache *c);    /* the next lookup scans again */
void dm_scan_clear(DmCache *c);
/* The name of an active mapping of the volume with this LUKS2 UUID, or NULL. Borrowed from c. */
const char *mapping_find_by_uuid(DmCache *c, const char *uuid);

/* one mapping, by name */
/* Who keeps a mapping open: "open count 1; pid 812 (dd); mounted on /mnt; held by dm-5". NULL
 * when nothing is known. Only for messages. */
char *mapping_users(const char *name);
/* The open count; -ENODEV when the mapping does not exist. */
int mapping_open_count(const char *name, bool *ret_suspended);
/* Suspends without flushing, wipes the key in dm-crypt, revokes the kernel keyring copy. */
int mapping_suspend_wipe(const char *name);

/* the kernel scan */
/* The keys the on-disk header of the active mapping c->scan.maps[i] names (borrowed, valid until
 * the next call), its backing device's name ("loop3") and (ret_uuid may be NULL) its LUKS2 UUID. */
int mapping_header_keys(DmCache *c, size_t i, char **ret_backing, char **ret_uuid, char ***ret_keys);
bool kscan_is_locked(DmCache *c, const char *name);
void kscan_set_locked(DmCache *c, const char *name);
void kscan_clear(DmCache *c);
