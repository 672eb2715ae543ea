/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* Blocking Varlink client used by cmekctl, the token plugin and the udev helper. */
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>

#include "cmek-util.h"
#include "cmek-varlink.h"

struct CmekClient {
        int fd;
        int timeout_ms;
        char *buf;
        size_t len, alloc;
};

const char *cmek_client_socket_path(const char *path) {
        const char *e;
        if (path && *path)
                return path;
        /* secure_getenv: the token plugin runs inside whatever opens a volume; in a setuid or
         * otherwise privileged (AT_SECURE) program the caller's environment is not trusted */
        e = secure_getenv(CMEK_SOCKET_ENV);
        return e && *e ? e : CMEK_DEFAULT_SOCKET;
}

int cmek_client_connect(const char *path, int timeout_ms, CmekClient **ret) {
        struct sockaddr_un sa = { .sun_family = AF_UNIX };
        _cleanup_close_ int fd = -1;
        CmekClient *c;

        path = cmek_client_socket_path(path);
        if (strlen(path) >= sizeof(sa.sun_path))
                return -ENAMETOOLONG;
        strcpy(sa.sun_path, path);
        fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0)
                return -errno;
        if (connect(fd, (struct sockaddr *) &sa, sizeof(sa)) < 0)
                return -errno;
        c = calloc(1, sizeof(*c));
        if (!c)
                return -ENOMEM;
        c->fd = TAKE_FD(fd);
        c->timeout_ms = timeout_ms;
        *ret = c;
        return 0;
}

int cmek_client_peer_uid(CmekClient *c, uid_t *ret) {
        struct ucred cred = {};
        socklen_t len = sizeof(cred);

        if (getsockopt(c->fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) < 0)
                return -errno;
        if (len != sizeof(cred) || cred.pid <= 0)
                return -EIO;
        *ret = cred.uid;
        return 0;
}

CmekClient *cmek_client_free(CmekClient *c) {
        if (!c)
                return NULL;
        if (c->fd >= 0)
                (void) close(c->fd);
        if (c->buf) {
                explicit_bzero(c->buf, c->alloc);
                free(c->buf);
        }
        free(c);
        return NULL;
}

static int wait_fd(CmekClient *c, short events) {
        struct pollfd p = { .fd = c->fd, .events = events };
        int r;

        do
                r = poll(&p, 1, c->timeout_ms > 0 ? c->timeout_ms : -1);
        while (r < 0 && errno == EINTR);
        if (r < 0)
                return -errno;
        if (r == 0)
                return -ETIMEDOUT;
        return 0;
}

int cmek_client_send(CmekClient *c, const char *method, json_object *params, bool more) {
        json_object *msg = json_object_new_object();
        const char *s;
        size_t len, off = 0;
        int r = 0;

        if (!msg)
                return -ENOMEM;
        json_object_object_add(msg, "method", json_object_new_string(method));
        if (params)
                json_object_object_add(msg, "parameters", json_object_get(params));
        if (more)
                json_object_object_add(msg, "more", json_object_new_boolean(1));
        s = json_object_to_json_string_ext(msg, JSON_C_TO_STRING_PLAIN);
        len = strlen(s) + 1; /* the NUL ends the message */
        while (off < len) {
                ssize_t n = send(c->fd, s + off, len - off, MSG_NOSIGNAL | MSG_DONTWAIT);
                if (n < 0) {
                        if (errno == EINTR)
                                continue;
                        if (errno == EAGAIN) {
                                r = wait_fd(c, POLLOUT);
                                if (r < 0)
                                        break;
                                continue;
                        }
                        r = -errno;
                        break;
                }
                off += (size_t) n;
        }
        json_object_put(msg);
        return r;
}

int cmek_varlink_parse(const char *buf, size_t len, json_object **ret) {
        json_tokener *tok;
        json_object *o;

        tok = json_tokener_new_ex(64);
        if (!tok)
                return -ENOMEM;
        o = json_tokener_parse_ex(tok, buf, (int) len);
        if (!o || json_tokener_get_error(tok) != json_tokener_success ||
            json_tokener_get_parse_end(tok) != len || !json_object_is_type(o, json_type_object)) {
                json_object_put(o);
                json_tokener_free(tok);
                return -EBADMSG;
        }
        json_tokener_free(tok);
        *ret = o;
        return 0;
}

int cmek_client_recv(CmekClient *c, json_object **ret_params, char **ret_error, bool *ret_continues) {
        json_object *msg = NULL, *p;
        char *nul;
        size_t mlen;
        int r;

        while (!(nul = c->len ? memchr(c->buf, 0, c->len) : NULL)) {
                if (c->alloc - c->len < 4096) {
                        size_t na = c->alloc ? c->alloc * 2 : 16384;
                        char *nb;
                        if (na > CMEK_MAX_REPLY_SIZE)
                                return -EMSGSIZE;
                        nb = malloc(na);
                        if (!nb)
                                return -ENOMEM;
                        if (c->buf) {
                                memcpy(nb, c->buf, c->len);
                                explicit_bzero(c->buf, c->alloc);
                                free(c->buf);
                        }
                        c->buf = nb;
                        c->alloc = na;
                }
                ssize_t n = recv(c->fd, c->buf + c->len, c->alloc - c->len, MSG_DONTWAIT);
                if (n < 0) {
                        if (errno == EINTR)
                                continue;
                        if (errno == EAGAIN) {
                                r = wait_fd(c, POLLIN);
                                if (r < 0)
                                        return r;
                                continue;
                        }
                        return -errno;
                }
                if (n == 0)
                        return -ECONNRESET;
                c->len += (size_t) n;
        }
        mlen = (size_t) (nul - c->buf);
        r = cmek_varlink_parse(c->buf, mlen, &msg);
        /* the raw bytes may carry a secret: wipe them as soon as they are parsed */
        explicit_bzero(c->buf, mlen + 1);
        memmove(c->buf, nul + 1, c->len - mlen - 1);
        c->len -= mlen + 1;
        if (r < 0)
                return r;

        if (ret_error) {
                const char *e = cmek_json_get_string(msg, "error");
                *ret_error = e ? strdup(e) : NULL;
        }
        if (ret_continues)
                *ret_continues = cmek_json_get_bool(msg, "continues", false);
        if (json_object_object_get_ex(msg, "parameters", &p) && json_object_is_type(p, json_type_object))
                p = json_object_get(p);
        else
                p = json_object_new_object();
        json_object_put(msg);
        *ret_params = p;
        return 0;
}

int cmek_client_call(CmekClient *c, const char *method, json_object *params,
                     json_object **ret_params, char **ret_error) {
        int r = cmek_client_send(c, method, params, false);
        if (r < 0)
                return r;
        return cmek_client_recv(c, ret_params, ret_error, NULL);
}

void cmek_json_wipe_string(json_object *o) {
        if (o && json_object_is_type(o, json_type_string)) {
                char *s = (char *) json_object_get_string(o);
                explicit_bzero(s, (size_t) json_object_get_string_len(o));
        }
}

const char *cmek_json_get_string(json_object *o, const char *key) {
        json_object *v;
        if (!o || !json_object_object_get_ex(o, key, &v) || !json_object_is_type(v, json_type_string))
                return NULL;
        return json_object_get_string(v);
}

bool cmek_json_get_int64(json_object *o, const char *key, int64_t *ret) {
        json_object *v;
        if (!o || !json_object_object_get_ex(o, key, &v) || !json_object_is_type(v, json_type_int))
                return false;
        *ret = json_object_get_int64(v);
        return true;
}

bool cmek_json_get_bool(json_object *o, const char *key, bool def) {
        json_object *v;
        if (!o || !json_object_object_get_ex(o, key, &v) || !json_object_is_type(v, json_type_boolean))
                return def;
        return json_object_get_boolean(v);
}

const char *cmek_json_find_cc(json_object *params) {
        if (!params || !json_object_is_type(params, json_type_object))
                return NULL;
        json_object_object_foreach(params, k, v) {
                if (json_object_is_type(v, json_type_string) && cmek_string_has_cc(json_object_get_string(v)))
                        return k;
                if (json_object_is_type(v, json_type_array))
                        for (size_t i = 0; i < json_object_array_length(v); i++) {
                                json_object *e = json_object_array_get_idx(v, i);
                                if (json_object_is_type(e, json_type_string) &&
                                    cmek_string_has_cc(json_object_get_string(e)))
                                        return k;
                        }
        }
        return NULL;
}
