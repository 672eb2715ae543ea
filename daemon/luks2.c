/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* LUKS2 header access and repair: opening a header (by path or through a held fd), the cmek
 * tokens and keyslots in it, finishing or undoing an interrupted multi-step header change, and
 * the probe that reads a caller's header before authorization without touching the file. */
#include <endian.h>
#include <fcntl.h>
#include <stdio.h>
#include <sys/stat.h>
#include <sys/mman.h>
#include <sys/ioctl.h>
#include <linux/fs.h>
#include <libcryptsetup.h>

#include "cmek-fault.h"
#include "cmek-log.h"
#include "cmek-util.h"
#include "luks2.h"

/* A registered path is opened once (O_NONBLOCK: a FIFO planted there never blocks the loop; only
 * a block device or a regular file), and libcryptsetup gets /proc/self/fd/N of that fd: the fd
 * lives as long as the crypt_device, in this small table. */
typedef struct HeldFd {
        struct crypt_device *cd;
        int fd;
} HeldFd;
static HeldFd *held;
static size_t n_held;

static int hold_fd(struct crypt_device *cd, int fd) {
        HeldFd *n = realloc(held, (n_held + 1) * sizeof(HeldFd));
        if (!n)
                return -ENOMEM;
        held = n;
        held[n_held++] = (HeldFd) { cd, fd };
        return 0;
}

void cd_free(struct crypt_device *cd) {
        if (!cd)
                return;
        crypt_free(cd);
        for (size_t i = 0; i < n_held; i++)
                if (held[i].cd == cd) {
                        close(held[i].fd);
                        held[i] = held[--n_held];
                        if (n_held == 0) {
                                free(held);
                                held = NULL;
                        }
                        break;
                }
}

void crypt_freep(struct crypt_device **cd) {
        cd_free(*cd);
}
void crypt_log_cb(int level, const char *msg, void *usrptr) {
        size_t n = strlen(msg);
        /* libcryptsetup's messages end in a newline; they go to debug: we log the outcome once */
        log_debug("libcryptsetup: %.*s", (int) (n > 0 && msg[n - 1] == '\n' ? n - 1 : n), msg);
}

/* ---- LUKS2 header access ---- */

int luks2_open(const char *path, struct crypt_device **ret) {
        _cleanup_crypt_ struct crypt_device *cd = NULL;
        const char *type;
        int r;

        if (strncmp(path, "/proc/self/fd/", 14) == 0) {
                /* an fd the caller opened and checked (volume-open.c, or a header copy) */
                r = crypt_init(&cd, path);
        } else {
                _cleanup_close_ int fd = open(path, O_RDONLY | O_NONBLOCK | O_NOCTTY | O_CLOEXEC);
                struct stat st;
                char proc[32];

                if (fd < 0)
                        return errno == ENOENT || errno == ENXIO ? -ENODEV : -errno;
                if (fstat(fd, &st) < 0)
                        return -errno;
                if (!S_ISBLK(st.st_mode) && !S_ISREG(st.st_mode))
                        return -ENODEV; /* not what was registered there */
                snprintf(proc, sizeof(proc), "/proc/self/fd/%d", fd);
                r = crypt_init(&cd, proc);
                if (r >= 0) {
                        r = hold_fd(cd, fd);
                        if (r >= 0)
                                TAKE_FD(fd);
                }
        }
        if (r < 0)
                return r == -ENOENT || r == -ENOTBLK ? -ENODEV : r;
        crypt_set_log_callback(cd, crypt_log_cb, NULL);
        r = crypt_load(cd, CRYPT_LUKS, NULL);
        if (r == -EINVAL)
                return -EMEDIUMTYPE;
        if (r < 0)
                return r;
        type = crypt_get_type(cd);
        if (!type || !streq(type, CRYPT_LUKS2))
                return -EMEDIUMTYPE;
        *ret = TAKE_PTR(cd);
        return 0;
}

void header_tokens_done(HeaderTokens *h) {
        for (size_t i = 0; i < h->n; i++)
                cmek_token_done(&h->t[i]);
        h->n = 0;
}

/* All valid cmek tokens of the header; malformed ones are skipped (and logged). */
int read_cmek_tokens(struct crypt_device *cd, HeaderTokens *ret) {
        int max = crypt_token_max(CRYPT_LUKS2);

        ret->n = 0;
        for (int id = 0; id < max && ret->n < ARRAY_SIZE(ret->id); id++) {
                const char *type = NULL, *json = NULL, *why = NULL;
                crypt_token_info st = crypt_token_status(cd, id, &type);
                CmekToken t = CMEK_TOKEN_NULL;

                if (st == CRYPT_TOKEN_INACTIVE || st == CRYPT_TOKEN_INVALID || !type || !streq(type, CMEK_TOKEN_TYPE))
                        continue;
                if (crypt_token_json_get(cd, id, &json) < 0)
                        continue;
                if (cmek_token_parse(json, &t, &why) < 0) {
                        log_warning("%s: cmek token %d is malformed (%s), ignoring.", crypt_get_device_name(cd), id, why);
                        continue;
                }
                ret->id[ret->n] = id;
                ret->t[ret->n++] = t;
        }
        return 0;
}

int count_active_keyslots(struct crypt_device *cd, int except) {
        int max = crypt_keyslot_max(CRYPT_LUKS2), n = 0;
        for (int i = 0; i < max; i++) {
                crypt_keyslot_info st = crypt_keyslot_status(cd, i);
                if (i != except && (st == CRYPT_SLOT_ACTIVE || st == CRYPT_SLOT_ACTIVE_LAST))
                        n++;
        }
        return n;
}

bool keyslot_active(struct crypt_device *cd, int slot) {
        crypt_keyslot_info st = crypt_keyslot_status(cd, slot);
        return st == CRYPT_SLOT_ACTIVE || st == CRYPT_SLOT_ACTIVE_LAST;
}

int first_free_keyslot(struct crypt_device *cd) {
        int max = crypt_keyslot_max(CRYPT_LUKS2);
        for (int i = 0; i < max; i++)
                if (crypt_keyslot_status(cd, i) == CRYPT_SLOT_INACTIVE)
                        return i;
        return -ENOSPC;
}

int write_token(struct crypt_device *cd, int id, const CmekToken *t) {
        _cleanup_free_ char *json = NULL;
        int r = cmek_token_to_json(t, &json);
        if (r < 0)
                return r;
        return crypt_token_json_set(cd, id, json);
}

/* Finishes or undoes an interrupted multi-step procedure (see the top of daemon/volume.c). Afterwards
 * the header has at most one cmek token with a keyslot and no markers. Returns the number of
 * repairs done. */
int volume_header_repair(struct crypt_device *cd) {
        HeaderTokens h = {};
        int r, repaired = 0;

        r = read_cmek_tokens(cd, &h);
        if (r < 0)
                return r;
        for (size_t i = 0; i < h.n; i++) {
                CmekToken *t = &h.t[i];
                bool successor = false;

                if (t->pending_keyslot >= 0)
                        for (size_t j = 0; j < h.n; j++)
                                if (j != i && h.t[j].keyslot == t->pending_keyslot)
                                        successor = true;
                if (t->keyslot < 0) {
                        /* after d. (or a remove-slot/shred): the keyslot is gone, the token is dead */
                        r = crypt_token_json_set(cd, h.id[i], NULL);
                } else if (t->pending_keyslot >= 0 && successor) {
                        /* after c.: the new token opens the new keyslot; retire the old pair */
                        r = crypt_keyslot_destroy(cd, t->keyslot);
                        cmek_fault("repair-after-keyslot-destroy");
                        if (r >= 0)
                                r = crypt_token_json_set(cd, h.id[i], NULL);
                } else if (t->pending_keyslot >= 0) {
                        /* after a. or b.: undo; the new DEK was never wrapped anywhere */
                        r = 0;
                        if (keyslot_active(cd, t->pending_keyslot))
                                r = crypt_keyslot_destroy(cd, t->pending_keyslot);
                        t->pending_keyslot = -1;
                        if (r >= 0)
                                r = write_token(cd, h.id[i], t);
                } else
                        continue;
                if (r < 0) {
                        header_tokens_done(&h);
                        return log_error_errno(r, "%s: failed to repair an interrupted re-wrap: %m",
                                               crypt_get_device_name(cd));
                }
                log_info("%s: finished an interrupted re-wrap/removal (token %d).", crypt_get_device_name(cd), h.id[i]);
                repaired++;
        }
        header_tokens_done(&h);
        return repaired;
}

/* The one cmek token that opens a keyslot (after repair). -ENOENT when unbound. */
int find_bound_token(struct crypt_device *cd, int *ret_id, CmekToken *ret) {
        HeaderTokens h = {};
        int r = -ENOENT;

        (void) read_cmek_tokens(cd, &h);
        for (size_t i = 0; i < h.n; i++)
                if (h.t[i].keyslot >= 0 && keyslot_active(cd, h.t[i].keyslot)) {
                        *ret_id = h.id[i];
                        *ret = h.t[i];
                        h.t[i] = (CmekToken) CMEK_TOKEN_NULL;
                        r = 0;
                        break;
                }
        header_tokens_done(&h);
        return r;
}

/* Opens the volume's header at its known path and checks that it is the same volume. */
int volume_open_header(Volume *v, struct crypt_device **ret) {
        _cleanup_crypt_ struct crypt_device *cd = NULL;
        int r;

        if (!v->path)
                return -ENODEV;
        r = luks2_open(v->path, &cd);
        if (r < 0)
                return r;
        if (!streq_ptr(crypt_get_uuid(cd), v->uuid))
                return -ENODEV; /* something else is at that path now */
        *ret = TAKE_PTR(cd);
        return 0;
}

/* ---- what is on disk, before authorization ---- */

void volume_probe_done(VolumeProbe *p) {
        free(p->uuid);
        free(p->key_id);
        *p = (VolumeProbe) VOLUME_PROBE_NULL;
}

static uint64_t be64(const uint8_t *b) {
        uint64_t v = 0;
        for (int i = 0; i < 8; i++)
                v = v << 8 | b[i];
        return v;
}

/* Copies the LUKS2 header areas (both copies) of fd into a sealed-off memfd the same size as the
 * device (sparse): libcryptsetup reads the caller's header there, and whatever it would "repair"
 * on load is repaired in the copy, never on the caller's file. */
static int header_copy(int fd, const struct stat *st, int *ret) {
        _cleanup_close_ int mfd = -1;
        uint8_t hdr[16];
        uint64_t size, hdr_size, copy;
        ssize_t n;

        if (S_ISBLK(st->st_mode)) {
                if (ioctl(fd, BLKGETSIZE64, &size) < 0)
                        return -errno;
        } else
                size = (uint64_t) st->st_size;
        n = pread(fd, hdr, sizeof(hdr), 0);
        if (n < 0)
                return -errno;
        if (n < (ssize_t) sizeof(hdr) || memcmp(hdr, "LUKS\xba\xbe", 6) != 0)
                return -EMEDIUMTYPE;
        if (hdr[6] != 0 || hdr[7] != 2)
                return -EMEDIUMTYPE; /* LUKS1 */
        hdr_size = be64(hdr + 8);
        /* the sizes LUKS2 allows: 16 KiB .. 4 MiB, powers of two */
        if (hdr_size < 16384 || hdr_size > 4U * 1024U * 1024U || (hdr_size & (hdr_size - 1)))
                return -EMEDIUMTYPE;
        copy = (2 * hdr_size < size ? 2 * hdr_size : size);
        mfd = memfd_create("cmek-header", MFD_CLOEXEC);
        if (mfd < 0)
                return -errno;
        if (ftruncate(mfd, (off_t) (size > copy ? size : copy)) < 0)
                return -errno;
        for (uint64_t off = 0; off < copy;) {
                uint8_t buf[65536];
                n = pread(fd, buf, copy - off < sizeof(buf) ? copy - off : sizeof(buf), (off_t) off);
                if (n < 0)
                        return -errno;
                if (n == 0)
                        break;
                if (pwrite(mfd, buf, (size_t) n, (off_t) off) != n)
                        return -EIO;
                off += (uint64_t) n;
        }
        *ret = TAKE_FD(mfd);
        return 0;
}

int volume_probe(const VolumeFile *f, VolumeProbe *ret) {
        _cleanup_crypt_ struct crypt_device *cd = NULL;
        _cleanup_close_ int mfd = -1;
        CmekToken t = CMEK_TOKEN_NULL;
        VolumeProbe p = VOLUME_PROBE_NULL;
        char path[32];
        int tok, r;

        r = header_copy(f->fd, &f->st, &mfd);
        if (r < 0)
                return r;
        snprintf(path, sizeof(path), "/proc/self/fd/%d", mfd);
        r = luks2_open(path, &cd);
        if (r < 0)
                return r;
        p.uuid = strdup(crypt_get_uuid(cd) ?: "");
        if (!p.uuid)
                return -ENOMEM;
        p.token = -1;
        if (find_bound_token(cd, &tok, &t) >= 0) {
                p.key_id = TAKE_PTR(t.key_id);
                p.keyslot = t.keyslot;
                p.token = tok;
                cmek_token_done(&t);
        }
        *ret = p;
        return 0;
}
