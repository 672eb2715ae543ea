/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* Base64 (RFC 4648 §4, standard alphabet): encode, one strict decoder, secrets into locked memory. */
#pragma once

#include <stddef.h>
#include <sys/types.h>
#include <json-c/json.h>

/* The one decoding rule, everywhere: the length is a multiple of 4, only the alphabet, '=' only
 * as the last one or two characters, the bits after the last byte are zero (so each byte string
 * has exactly one accepted spelling). No whitespace, no line breaks, no missing padding, no
 * URL-safe alphabet. The empty string decodes to zero bytes; callers that need data say so. */

/* Characters the encoding of n bytes takes, without the terminating NUL. */
static inline size_t cmek_base64_encoded_size(size_t n) {
        return 4 * ((n + 2) / 3);
}

/* Upper bound of the bytes a len-character string decodes to (3 per 4 characters). */
static inline size_t cmek_base64_decoded_max(size_t len) {
        return len / 4 * 3;
}

/* Writes the encoding and a NUL to out (cmek_base64_encoded_size(n) + 1 bytes); returns its length. */
size_t cmek_base64_encode_to(char *out, const void *p, size_t n);
/* A malloc'ed encoding (NULL when out of memory). Not for secrets. */
char *cmek_base64_encode(const void *p, size_t n);
/* The encoding in a cmek_secure_alloc() buffer, for secrets (NULL when out of memory). */
char *cmek_base64_encode_secure(const void *p, size_t n);

/* Decodes s into buf (max bytes); returns the decoded size, -EINVAL if s breaks the rule,
 * -ENOBUFS if it decodes to more than max bytes. buf may be written to also on failure. */
ssize_t cmek_base64_decode_to(const char *s, void *buf, size_t max);
/* Decodes s to exactly size bytes, else -EINVAL; ret is untouched on failure. */
int cmek_base64_decode_exact(const char *s, void *ret, size_t size);
/* Decodes the JSON string v (at most max bytes decoded) into a cmek_secure_alloc() buffer and
 * wipes v's text in every case; -EINVAL if v is not a string or breaks the rule or decodes to
 * nothing, -ENOBUFS if too long, -ENOMEM. ret_size may be NULL. */
int cmek_base64_decode_secret(json_object *v, size_t max, void **ret, size_t *ret_size);
