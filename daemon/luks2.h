/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* LUKS2 header access and repair (daemon/luks2.c), for the volume, device-mapper and
 * enforcement code of the daemon. volume_probe() is in volume.h. */
#pragma once

#include <stdbool.h>
#include <libcryptsetup.h>

#include "cmek-token.h"
#include "volume.h"

/* crypt_free() that also closes the fd luks2_open() held for the device */
void cd_free(struct crypt_device *cd);
void crypt_freep(struct crypt_device **cd);
#define _cleanup_crypt_ _cleanup_(crypt_freep)
/* libcryptsetup's messages, at debug level */
void crypt_log_cb(int level, const char *msg, void *usrptr);

/* Loads the LUKS2 header at path (a "/proc/self/fd/N" the caller opened and checked, or a path
 * opened here without blocking). -ENODEV no such file or not a block device/regular file,
 * -EMEDIUMTYPE not LUKS2. */
int luks2_open(const char *path, struct crypt_device **ret);
/* Opens the volume's header at its known path and checks that it is the same volume. */
int volume_open_header(Volume *v, struct crypt_device **ret);

typedef struct HeaderTokens {
        size_t n;
        int id[CMEK_LUKS2_KEYSLOTS_MAX];
        CmekToken t[CMEK_LUKS2_KEYSLOTS_MAX];
} HeaderTokens;
void header_tokens_done(HeaderTokens *h);
/* All valid cmek tokens of the header; malformed ones are skipped (and logged). */
int read_cmek_tokens(struct crypt_device *cd, HeaderTokens *ret);
int write_token(struct crypt_device *cd, int id, const CmekToken *t);

int count_active_keyslots(struct crypt_device *cd, int except);
bool keyslot_active(struct crypt_device *cd, int slot);
int first_free_keyslot(struct crypt_device *cd);

/* Finishes or undoes an interrupted multi-step procedure (see the top of daemon/volume.c).
 * Returns the number of repairs done. */
int volume_header_repair(struct crypt_device *cd);
/* The one cmek token that opens a keyslot (after repair). -ENOENT when unbound. */
int find_bound_token(struct crypt_device *cd, int *ret_id, CmekToken *ret);
