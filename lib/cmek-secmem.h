/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* Secret buffers: page-aligned, mlock'ed, excluded from core dumps, wiped on free. */
#pragma once

#include <stddef.h>

/* Each secret gets its own locked mapping, so mlock never has to nest and
 * munlock of one buffer cannot unlock another one's page. */
void *cmek_secure_alloc(size_t size);
/* Wipes then unmaps; accepts NULL; returns NULL. */
void *cmek_secure_free(void *p);
size_t cmek_secure_size(const void *p);
static inline void cmek_secure_freep(void *p) { cmek_secure_free(*(void **) p); }
#define _cleanup_secure_ __attribute__((cleanup(cmek_secure_freep)))

/* Wipe a NUL-terminated string in place (e.g. a PIN read from the environment). */
void cmek_wipe_string(char *s);
