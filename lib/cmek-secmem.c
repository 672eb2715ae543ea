/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* Secret buffers: page-aligned, mlock'ed, excluded from core dumps, wiped on free. */
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "cmek-secmem.h"

struct secure_hdr {
        size_t map_size;
        size_t size;
};

#define HDR_SIZE 64 /* keeps the payload 16-byte aligned */

void *cmek_secure_alloc(size_t size) {
        size_t page = (size_t) sysconf(_SC_PAGESIZE);
        size_t map_size = (size + HDR_SIZE + page - 1) / page * page;
        unsigned char *m;
        struct secure_hdr *h;

        if (size > (1U << 24))
                return NULL;
        m = mmap(NULL, map_size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (m == MAP_FAILED)
                return NULL;
        /* Best effort: an unprivileged caller may have a tiny RLIMIT_MEMLOCK;
         * the daemon additionally runs with mlockall(). */
        (void) mlock(m, map_size);
        (void) madvise(m, map_size, MADV_DONTDUMP);
        (void) madvise(m, map_size, MADV_WIPEONFORK);
        h = (struct secure_hdr *) m;
        h->map_size = map_size;
        h->size = size;
        return m + HDR_SIZE;
}

size_t cmek_secure_size(const void *p) {
        if (!p)
                return 0;
        return ((const struct secure_hdr *) ((const unsigned char *) p - HDR_SIZE))->size;
}

void *cmek_secure_free(void *p) {
        unsigned char *m;
        size_t map_size;

        if (!p)
                return NULL;
        m = (unsigned char *) p - HDR_SIZE;
        map_size = ((struct secure_hdr *) m)->map_size;
        explicit_bzero(m, map_size);
        (void) munlock(m, map_size);
        (void) munmap(m, map_size);
        return NULL;
}

void cmek_wipe_string(char *s) {
        if (s)
                explicit_bzero(s, strlen(s));
}
