/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* Fuzz target: Varlink framing and message parsing (lib/cmek-varlink.c). The input is a byte
 * stream as a peer would send it: cut at NUL bytes like the daemon's reader, each message parsed
 * with cmek_varlink_parse() and checked the way dispatch() does; the same stream is also fed to
 * the client's reader (cmek_client_recv(), which the token plugin runs as root) over a socket. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "cmek-varlink.h"
#include "fuzz.h"

static void check_message(json_object *msg) {
        json_object *params = NULL;
        const char *method = cmek_json_get_string(msg, "method");
        int64_t i;

        /* what dispatch() and the clients read from a message */
        if (method)
                (void) strrchr(method, '.');
        if (json_object_object_get_ex(msg, "parameters", &params) && json_object_is_type(params, json_type_object)) {
                json_object_object_foreach(params, k, v) {
                        (void) k;
                        cmek_json_wipe_string(v);
                }
                (void) cmek_json_get_string(params, "name");
                (void) cmek_json_get_int64(params, "length", &i);
        }
        (void) cmek_json_get_bool(msg, "more", false);
        (void) cmek_json_get_bool(msg, "oneway", false);
        (void) cmek_json_get_string(msg, "error");
        (void) json_object_to_json_string_ext(msg, JSON_C_TO_STRING_PLAIN);
}

static void server_framing(const uint8_t *data, size_t size) {
        const char *p = (const char *) data, *end = p + size;

        while (p < end) {
                const char *nul = memchr(p, 0, (size_t) (end - p));
                json_object *msg = NULL;

                if (!nul)
                        break; /* incomplete: the daemon waits for more (or refuses > 128 KiB) */
                if ((size_t) (nul - p) <= CMEK_MAX_REQUEST_SIZE &&
                    cmek_varlink_parse(p, (size_t) (nul - p), &msg) >= 0) {
                        if (!json_object_is_type(msg, json_type_object))
                                abort();
                        check_message(msg);
                        json_object_put(msg);
                }
                p = nul + 1;
        }
}

static char sock_path[108];
static int listen_fd = -1;

static int setup_socket(void) {
        struct sockaddr_un sa = { .sun_family = AF_UNIX };
        const char *tmp = getenv("TMPDIR");

        if (listen_fd >= 0)
                return 0;
        snprintf(sock_path, sizeof(sock_path), "%s/fuzz-varlink.%d", tmp ?: "/tmp", (int) getpid());
        strcpy(sa.sun_path, sock_path);
        listen_fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (listen_fd < 0)
                return -errno;
        (void) unlink(sock_path);
        if (bind(listen_fd, (struct sockaddr *) &sa, sizeof(sa)) < 0 || listen(listen_fd, 4) < 0)
                return -errno;
        return 0;
}

static void client_framing(const uint8_t *data, size_t size) {
        CmekClient *c = NULL;
        int fd, r;

        /* the socket buffer must hold the whole stream: the reader runs after the writer */
        if (size > 100 * 1024 || setup_socket() < 0)
                return;
        if (cmek_client_connect(sock_path, 1000, &c) < 0)
                return;
        fd = accept4(listen_fd, NULL, NULL, SOCK_CLOEXEC);
        if (fd < 0) {
                cmek_client_free(c);
                return;
        }
        if (size > 0 && send(fd, data, size, MSG_NOSIGNAL) != (ssize_t) size)
                goto out;
        (void) shutdown(fd, SHUT_WR);
        for (;;) {
                json_object *params = NULL;
                char *error = NULL;
                bool continues = false;

                r = cmek_client_recv(c, &params, &error, &continues);
                if (r == -EBADMSG)
                        continue; /* the message was consumed; the plugin would give up here */
                if (r < 0)
                        break;
                if (!params || !json_object_is_type(params, json_type_object))
                        abort();
                check_message(params);
                json_object_put(params);
                free(error);
        }
out:
        (void) close(fd);
        cmek_client_free(c);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        server_framing(data, size);
        client_framing(data, size);
        return 0;
}
