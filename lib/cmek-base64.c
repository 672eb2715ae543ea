/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* Base64 (RFC 4648 §4): the encoder and the one strict decoder every component uses. */
#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "cmek-base64.h"
#include "cmek-secmem.h"
#include "cmek-varlink.h"

static const char alphabet[64] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

size_t cmek_base64_encode_to(char *out, const void *p, size_t n) {
        const uint8_t *in = p;
        size_t o = 0, i;

        for (i = 0; i + 3 <= n; i += 3) {
                uint32_t v = (uint32_t) in[i] << 16 | (uint32_t) in[i + 1] << 8 | in[i + 2];
                out[o++] = alphabet[v >> 18 & 63];
                out[o++] = alphabet[v >> 12 & 63];
                out[o++] = alphabet[v >> 6 & 63];
                out[o++] = alphabet[v & 63];
        }
        if (i < n) {
                uint32_t v = (uint32_t) in[i] << 16 | (i + 1 < n ? (uint32_t) in[i + 1] << 8 : 0);
                out[o++] = alphabet[v >> 18 & 63];
                out[o++] = alphabet[v >> 12 & 63];
                out[o++] = i + 1 < n ? alphabet[v >> 6 & 63] : '=';
                out[o++] = '=';
        }
        out[o] = 0;
        return o;
}

char *cmek_base64_encode(const void *p, size_t n) {
        char *s = malloc(cmek_base64_encoded_size(n) + 1);
        if (s)
                cmek_base64_encode_to(s, p, n);
        return s;
}

char *cmek_base64_encode_secure(const void *p, size_t n) {
        char *s = cmek_secure_alloc(cmek_base64_encoded_size(n) + 1);
        if (s)
                cmek_base64_encode_to(s, p, n);
        return s;
}

/* 0-63, or -1 for anything else (the padding included). */
static int value(char c) {
        if (c >= 'A' && c <= 'Z')
                return c - 'A';
        if (c >= 'a' && c <= 'z')
                return c - 'a' + 26;
        if (c >= '0' && c <= '9')
                return c - '0' + 52;
        if (c == '+')
                return 62;
        if (c == '/')
                return 63;
        return -1;
}

ssize_t cmek_base64_decode_to(const char *s, void *buf, size_t max) {
        uint8_t *out = buf;
        size_t len, pad = 0, size, o = 0;

        if (!s)
                return -EINVAL;
        len = strlen(s);
        if (len % 4 != 0)
                return -EINVAL;
        if (len > 0 && s[len - 1] == '=')
                pad = s[len - 2] == '=' ? 2 : 1;
        size = len / 4 * 3 - pad;
        if (size > max)
                return -ENOBUFS;
        for (size_t i = 0; i < len; i += 4) {
                int a = value(s[i]), b = value(s[i + 1]), c, d;
                bool last = i + 4 == len;
                uint32_t v;

                c = last && pad == 2 ? 0 : value(s[i + 2]);
                d = last && pad >= 1 ? 0 : value(s[i + 3]);
                if (a < 0 || b < 0 || c < 0 || d < 0)
                        return -EINVAL;
                v = (uint32_t) a << 18 | (uint32_t) b << 12 | (uint32_t) c << 6 | (uint32_t) d;
                out[o++] = v >> 16 & 0xff;
                if (last && pad == 2) {
                        if (v & 0xffff)         /* the bits after the last byte */
                                return -EINVAL;
                        break;
                }
                out[o++] = v >> 8 & 0xff;
                if (last && pad == 1) {
                        if (v & 0xff)
                                return -EINVAL;
                        break;
                }
                out[o++] = v & 0xff;
        }
        return (ssize_t) size;
}

int cmek_base64_decode_exact(const char *s, void *ret, size_t size) {
        uint8_t buf[256];
        ssize_t n;

        if (!s || size > sizeof(buf) || strlen(s) != cmek_base64_encoded_size(size))
                return -EINVAL;
        n = cmek_base64_decode_to(s, buf, sizeof(buf));
        if (n >= 0 && (size_t) n == size)
                memcpy(ret, buf, size);
        explicit_bzero(buf, sizeof(buf));
        return n < 0 ? (int) n : (size_t) n == size ? 0 : -EINVAL;
}

int cmek_base64_decode_secret(json_object *v, size_t max, void **ret, size_t *ret_size) {
        const char *s;
        size_t len;
        void *buf;
        ssize_t n;

        if (!v || !json_object_is_type(v, json_type_string))
                return -EINVAL;
        s = json_object_get_string(v);
        len = strlen(s);
        if (cmek_base64_decoded_max(len) > max + 2) {   /* before allocating: at most 2 bytes of padding */
                cmek_json_wipe_string(v);
                return -ENOBUFS;
        }
        buf = cmek_secure_alloc(cmek_base64_decoded_max(len) + 1);
        if (!buf) {
                cmek_json_wipe_string(v);
                return -ENOMEM;
        }
        n = cmek_base64_decode_to(s, buf, max);
        cmek_json_wipe_string(v);
        if (n == 0)
                n = -EINVAL;
        if (n < 0) {
                cmek_secure_free(buf);
                return (int) n;
        }
        *ret = buf;
        if (ret_size)
                *ret_size = (size_t) n;
        return 0;
}
