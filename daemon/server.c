/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* Varlink server: connections, framing, limits, dispatch, replies. */
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <systemd/sd-journal.h>
#include <openssl/evp.h>

#include "cmek-audit.h"
#include "cmek-secmem.h"
#include "cmek-varlink.h"
#include "daemon.h"
#include "policy.h"

#define CONNECTION_IDLE_USEC (60ULL * 1000000ULL)   /* a silent client is dropped after this */
#define CONNECTION_MAX_OUTPUT (64U * 1024U * 1024U) /* a client that does not read is dropped */
#define CONNECTION_OUTPUT_PAUSE (1024U * 1024U)     /* no new request is read while this much waits */
#define CONNECTIONS_MAX 4096U
#define LISTEN_PAUSE_USEC (250ULL * 1000ULL)          /* out of descriptors: accept again after this */

struct Connection {
        Manager *manager;
        Connection *next, *prev;
        int fd;
        sd_event_source *io, *idle;
        Caller caller;
        char *in;
        size_t in_len, in_alloc;
        char *out;
        size_t out_len, out_alloc;
        Call *current;          /* the call being answered (streams keep it open) */
        sd_event_source *gc;
        bool held;              /* replies wait for the audit log's group commit */
        bool close_after_flush;
        bool processing;
        bool dead;
};

struct Call {
        unsigned n_ref;
        Connection *conn;       /* NULL once the client is gone */
        char *method;
        bool more, oneway, replied;
        void (*on_close)(Call *c, void *userdata);
        void *userdata;
};

static void connection_free(Connection *c);
static void connection_kill(Connection *c);
static int connection_process(Connection *c);
static int connection_process_loop(Connection *c);

static void connection_update_events(Connection *c) {
        uint32_t ev = 0;
        if (c->dead)
                return;
        if (!c->close_after_flush && !c->current && c->out_len < CONNECTION_OUTPUT_PAUSE)
                ev |= EPOLLIN;
        /* a held reply waits for the group commit, not for the socket: asking for EPOLLOUT
         * then would wake the loop on every iteration and starve the idle-priority commit */
        if (c->out_len > 0 && !c->held)
                ev |= EPOLLOUT;
        (void) sd_event_source_set_io_events(c->io, ev);
}

/* Group commit of the audit log: a reply may only leave once the audit lines of what it
 * answers are on disk. Replies queued while the log has unsynced lines are held. sd-event
 * dispatches one source per iteration, so the sync runs from an idle-priority source: once
 * every pending request has been handled, one fdatasync() covers them all. The post source
 * bounds the wait under a continuous stream of requests. */
#define GROUP_COMMIT_MAX_WAIT_USEC 2000ULL
static sd_event_source *audit_post_source, *audit_idle_source;
static uint64_t first_held_usec;

static int connection_flush(Connection *c) {
        if (c->out_len > 0 && cmek_audit_needs_sync(c->manager->audit)) {
                if (!first_held_usec)
                        first_held_usec = cmek_monotonic_usec();
                c->held = true;
                (void) sd_event_source_set_enabled(audit_idle_source, SD_EVENT_ONESHOT);
                return 0;
        }
        while (c->out_len > 0) {
                ssize_t n = send(c->fd, c->out, c->out_len, MSG_DONTWAIT | MSG_NOSIGNAL);
                if (n < 0) {
                        if (errno == EINTR)
                                continue;
                        if (errno == EAGAIN)
                                break;
                        return -errno;
                }
                /* replies may carry a DEK: wipe what left the buffer */
                explicit_bzero(c->out, (size_t) n);
                memmove(c->out, c->out + n, c->out_len - (size_t) n);
                c->out_len -= (size_t) n;
        }
        return 0;
}

static int connection_queue(Connection *c, const char *data, size_t size) {
        if (c->out_len + size > CONNECTION_MAX_OUTPUT)
                return -ENOBUFS;
        if (c->out_alloc - c->out_len < size) {
                size_t na = c->out_alloc ? c->out_alloc : 4096;
                while (na - c->out_len < size)
                        na *= 2;
                char *nb = malloc(na);
                if (!nb)
                        return -ENOMEM;
                if (c->out) {
                        memcpy(nb, c->out, c->out_len);
                        explicit_bzero(c->out, c->out_alloc);
                        free(c->out);
                }
                c->out = nb;
                c->out_alloc = na;
        }
        memcpy(c->out + c->out_len, data, size);
        c->out_len += size;
        return 0;
}

static int on_connection_gc(sd_event_source *s, void *userdata) {
        connection_free(userdata);
        return 0;
}

/* Stops serving at once, but frees only from the event loop: callers up the stack (dispatch,
 * a handler replying) may still hold the pointer and check c->dead. */
static void connection_kill(Connection *c) {
        Call *call;

        if (c->dead)
                return;
        c->dead = true;
        call = c->current;
        c->current = NULL;
        if (call) {
                call->conn = NULL;
                if (call->on_close)
                        call->on_close(call, call->userdata);
                call_unref(call);
        }
        (void) sd_event_source_set_enabled(c->io, SD_EVENT_OFF);
        (void) sd_event_source_set_enabled(c->idle, SD_EVENT_OFF);
        if (sd_event_add_defer(c->manager->event, &c->gc, on_connection_gc, c) < 0)
                c->gc = NULL; /* freed in server_done() */
}

static int connection_send_message(Connection *c, const char *s, size_t len_with_nul) {
        int r = connection_queue(c, s, len_with_nul);
        if (r < 0) {
                log_debug("Client pid %d does not read its replies, dropping it.", (int) c->caller.pid);
                return r;
        }
        r = connection_flush(c);
        if (r < 0)
                return r;
        connection_update_events(c);
        return 0;
}

static int send_json(Connection *c, json_object *msg) {
        const char *s = json_object_to_json_string_ext(msg, JSON_C_TO_STRING_PLAIN);
        return connection_send_message(c, s, strlen(s) + 1);
}

static void call_finish(Call *call) {
        Connection *c = call->conn;
        call->replied = true;
        if (c && c->current == call) {
                c->current = NULL;
                call->conn = NULL;
                call_unref(call);
                if (!c->dead) {
                        connection_update_events(c);
                        /* more requests may already be buffered; inside connection_process()
                         * its own loop picks them up (no recursion) */
                        if (!c->processing && connection_process(c) < 0)
                                connection_kill(c);
                }
        }
}

static int call_send(Call *call, json_object *msg, bool final) {
        Connection *c = call->conn;
        int r = 0;

        if (call->replied) {
                json_object_put(msg);
                return -EALREADY;
        }
        if (c && !c->dead && !call->oneway) {
                r = send_json(c, msg);
                if (r < 0)
                        c->close_after_flush = true;
        }
        json_object_put(msg);
        if (final)
                call_finish(call);
        if (r < 0 && c && c->out_len == 0)
                connection_kill(c);
        return r;
}

int call_reply(Call *call, json_object *params) {
        json_object *msg = json_object_new_object();
        json_object_object_add(msg, "parameters", params ? params : json_object_new_object());
        return call_send(call, msg, true);
}

int call_reply_more(Call *call, json_object *params) {
        json_object *msg;
        if (!call->more)
                return call_reply(call, params);
        msg = json_object_new_object();
        json_object_object_add(msg, "parameters", params ? params : json_object_new_object());
        json_object_object_add(msg, "continues", json_object_new_boolean(1));
        return call_send(call, msg, false);
}

int call_error(Call *call, const char *error, json_object *params) {
        json_object *msg = json_object_new_object();
        json_object_object_add(msg, "error", json_object_new_string(error));
        json_object_object_add(msg, "parameters", params ? params : json_object_new_object());
        return call_send(call, msg, true);
}

int call_errorf(Call *call, const char *error, const char *fmt, ...) {
        _cleanup_free_ char *s = NULL;
        json_object *p;
        va_list ap;

        va_start(ap, fmt);
        if (vasprintf(&s, fmt, ap) < 0)
                s = NULL;
        va_end(ap);
        p = json_object_new_object();
        if (s)
                json_object_object_add(p, "message", json_object_new_string(s));
        return call_error(call, error, p);
}

int call_reply_secret(Call *call, const char *field, const void *secret, size_t n, json_object *extra) {
        /* Built by hand in locked memory, so the secret never sits in json-c's heap. */
        Connection *c = call->conn;
        const char *x = "{}";
        size_t b64 = 4 * ((n + 2) / 3), xlen, total;
        char *buf;
        int r = 0;

        if (extra)
                x = json_object_to_json_string_ext(extra, JSON_C_TO_STRING_PLAIN);
        xlen = strlen(x);
        total = strlen(field) + b64 + xlen + 64;
        buf = cmek_secure_alloc(total);
        if (!buf) {
                json_object_put(extra);
                return -ENOMEM;
        }
        /* {"parameters":{"FIELD":"B64",<rest of extra>}} */
        size_t off = (size_t) snprintf(buf, total, "{\"parameters\":{\"%s\":\"", field);
        EVP_EncodeBlock((unsigned char *) buf + off, secret, (int) n);
        off += b64;
        if (xlen > 2)
                off += (size_t) snprintf(buf + off, total - off, "\",%.*s}", (int) (xlen - 1), x + 1);
        else
                off += (size_t) snprintf(buf + off, total - off, "\"}}");
        json_object_put(extra);
        if (call->replied) {
                cmek_secure_free(buf);
                return -EALREADY;
        }
        if (c && !c->dead && !call->oneway)
                r = connection_send_message(c, buf, off + 1);
        cmek_secure_free(buf);
        call_finish(call);
        if (r < 0 && c) {
                c->close_after_flush = true;
                if (c->out_len == 0)
                        connection_kill(c);
        }
        return r;
}

const Caller *call_caller(Call *c) {
        static const Caller nobody = { .uid = (uid_t) -1, .gid = (gid_t) -1 };
        return c && c->conn ? &c->conn->caller : &nobody;
}
bool call_wants_more(Call *c) { return c->more; }
const char *call_method(Call *c) { return c->method; }
bool call_is_open(Call *c) { return c && c->conn && !c->replied; }

Call *call_ref(Call *c) {
        if (c)
                c->n_ref++;
        return c;
}

Call *call_unref(Call *c) {
        if (!c || --c->n_ref > 0)
                return NULL;
        free(c->method);
        free(c);
        return NULL;
}

void call_set_close_callback(Call *c, void (*on_close)(Call *, void *), void *userdata) {
        c->on_close = on_close;
        c->userdata = userdata;
}

/* ---- dispatch ---- */

static const Interface *const interfaces[] = {
        &interface_varlink_service,
        &interface_service,
        &interface_events,
        DAEMON_EXTRA_INTERFACES
};

const Interface *const *manager_interfaces(size_t *ret_n) {
        *ret_n = ARRAY_SIZE(interfaces);
        return interfaces;
}

static const Method *find_method(const char *name, bool *ret_iface_known) {
        const char *dot = strrchr(name, '.');
        *ret_iface_known = false;
        if (!dot)
                return NULL;
        for (size_t i = 0; i < ARRAY_SIZE(interfaces); i++) {
                const Interface *iface = interfaces[i];
                if (strlen(iface->name) != (size_t) (dot - name) || strncmp(iface->name, name, (size_t) (dot - name)))
                        continue;
                *ret_iface_known = true;
                for (const Method *mm = iface->methods; mm->name; mm++)
                        if (streq(mm->name, name))
                                return mm;
        }
        return NULL;
}

static int dispatch(Connection *c, json_object *msg) {
        Manager *m = c->manager;
        const char *method = cmek_json_get_string(msg, "method");
        json_object *params = NULL;
        const Method *mm;
        bool iface_known;
        Call *call;
        int r;

        if (!method) {
                c->close_after_flush = true;
                return send_json_error(c, CMEK_ERROR_MALFORMED_MESSAGE, "message has no \"method\" string");
        }
        if (json_object_object_get_ex(msg, "parameters", &params) && !json_object_is_type(params, json_type_object))
                return send_json_error(c, VARLINK_ERROR_INVALID_PARAMETER, "\"parameters\" must be an object");

        call = calloc(1, sizeof(*call));
        if (!call)
                return -ENOMEM;
        call->n_ref = 1;
        call->conn = c;
        call->method = strdup(method);
        call->more = cmek_json_get_bool(msg, "more", false);
        call->oneway = cmek_json_get_bool(msg, "oneway", false);
        c->current = call;
        connection_update_events(c);

        mm = find_method(method, &iface_known);
        if (!mm) {
                json_object *p = json_object_new_object();
                if (iface_known) {
                        json_object_object_add(p, "method", json_object_new_string(method));
                        (void) call_error(call, VARLINK_ERROR_METHOD_NOT_FOUND, p);
                } else {
                        _cleanup_free_ char *iface = strndup(method, (size_t) (strrchr(method, '.') ?: method + strlen(method)) - (size_t) method);
                        json_object_object_add(p, "interface", json_object_new_string(iface ?: method));
                        (void) call_error(call, VARLINK_ERROR_INTERFACE_NOT_FOUND, p);
                }
                return 0;
        }

        params = params ? json_object_get(params) : json_object_new_object();
        call_ref(call);
        /* output hygiene: no name or path with control characters gets past this point */
        const char *bad = cmek_json_find_cc(params);
        if (bad) {
                json_object *p = json_object_new_object();
                char name[72], text[256];
                (void) cmek_cescape_buf(bad, name, sizeof(name)); /* the key is the caller's too */
                (void) snprintf(text, sizeof(text), "\"%s\" contains control characters (escape sequences, "
                                "newlines, tabs): use a name or path without them.", name);
                json_object_object_add(p, "parameter", json_object_new_string(name));
                json_object_object_add(p, "message", json_object_new_string(text));
                (void) call_error(call, VARLINK_ERROR_INVALID_PARAMETER, p);
                r = 0;
        } else
                r = mm->handler(m, call, params);
        json_object_put(params);
        if (!call->replied && !(call->more && call->n_ref > 2) && r < 0) {
                log_error("%s failed: %s", method, strerror(-r));
                (void) call_errorf(call, CMEK_ERROR_INTERNAL, "%s failed: %s", method, strerror(-r));
        } else if (!call->replied && r >= 0 && call->n_ref <= 2) {
                /* a handler that neither replied nor kept the call: a bug, but never hang the client */
                (void) call_errorf(call, CMEK_ERROR_INTERNAL, "%s sent no reply", method);
        }
        /* the idle countdown starts when the answer is ready: a request that took longer than
         * CONNECTION_IDLE_USEC (memory-hard PBKDF on a slow machine, valgrind) must not have its
         * client dropped as idle before the reply leaves */
        if (call->conn && call->conn->idle)
                (void) sd_event_source_set_time_relative(call->conn->idle, CONNECTION_IDLE_USEC);
        call_unref(call);
        return 0;
}

int send_json_error(Connection *c, const char *error, const char *message) {
        json_object *msg = json_object_new_object(), *p = json_object_new_object();
        int r;
        json_object_object_add(p, "message", json_object_new_string(message));
        json_object_object_add(msg, "error", json_object_new_string(error));
        json_object_object_add(msg, "parameters", p);
        r = send_json(c, msg);
        json_object_put(msg);
        return r;
}

static int connection_process(Connection *c) {
        int r = 0;

        c->processing = true;
        r = connection_process_loop(c);
        c->processing = false;
        return r;
}

static int connection_process_loop(Connection *c) {
        /* One call at a time per connection, in order, as Varlink requires. */
        /* A client that pipelines requests without reading the replies is not served further
         * until it reads: its replies cannot pile up to more than about CONNECTION_OUTPUT_PAUSE. */
        while (!c->current && !c->close_after_flush && !c->dead && c->out_len < CONNECTION_OUTPUT_PAUSE) {
                char *nul = c->in_len ? memchr(c->in, 0, c->in_len) : NULL;
                json_object *msg = NULL;
                size_t mlen;
                int r;

                /* the limit holds whether or not the NUL already is in the buffer (which reads
                 * up to 8 KiB beyond it) */
                mlen = nul ? (size_t) (nul - c->in) : c->in_len;
                if (mlen > CMEK_MAX_REQUEST_SIZE) {
                        char m[64];
                        explicit_bzero(c->in, c->in_len);
                        c->in_len = 0;
                        c->close_after_flush = true;
                        (void) snprintf(m, sizeof(m), "request larger than %u bytes", CMEK_MAX_REQUEST_SIZE);
                        (void) send_json_error(c, CMEK_ERROR_MESSAGE_TOO_LARGE, m);
                        break;
                }
                if (!nul)
                        break;
                r = cmek_varlink_parse(c->in, mlen, &msg);
                explicit_bzero(c->in, mlen + 1);
                memmove(c->in, nul + 1, c->in_len - mlen - 1);
                c->in_len -= mlen + 1;
                if (r < 0) {
                        c->close_after_flush = true;
                        (void) send_json_error(c, CMEK_ERROR_MALFORMED_MESSAGE,
                                               "request is not a JSON object ended by a NUL byte");
                        break;
                }
                r = dispatch(c, msg);
                json_object_put(msg);
                if (r < 0)
                        return r;
                if (c->dead)
                        return 0;
        }
        if (c->dead)
                return 0;
        if (c->close_after_flush && c->out_len == 0)
                return -ECONNRESET;
        connection_update_events(c);
        return 0;
}

static int connection_read(Connection *c) {
        for (;;) {
                if (c->in_alloc - c->in_len < 4096) {
                        size_t na = c->in_alloc ? c->in_alloc * 2 : 8192;
                        char *nb;
                        if (na > CMEK_MAX_REQUEST_SIZE + 8192)
                                na = CMEK_MAX_REQUEST_SIZE + 8192;
                        if (na <= c->in_alloc)
                                break; /* full: connection_process reports the size error */
                        nb = malloc(na);
                        if (!nb)
                                return -ENOMEM;
                        if (c->in) {
                                memcpy(nb, c->in, c->in_len);
                                explicit_bzero(c->in, c->in_alloc);
                                free(c->in);
                        }
                        c->in = nb;
                        c->in_alloc = na;
                }
                ssize_t n = recv(c->fd, c->in + c->in_len, c->in_alloc - c->in_len, MSG_DONTWAIT);
                if (n < 0) {
                        if (errno == EINTR)
                                continue;
                        if (errno == EAGAIN)
                                break;
                        return -errno;
                }
                if (n == 0)
                        return -ECONNRESET;
                c->in_len += (size_t) n;
                if (memchr(c->in + c->in_len - n, 0, (size_t) n))
                        break;
        }
        return 0;
}

static int on_connection_io(sd_event_source *s, int fd, uint32_t revents, void *userdata) {
        Connection *c = userdata;
        int r = 0;

        (void) sd_event_source_set_time_relative(c->idle, CONNECTION_IDLE_USEC);
        if (revents & EPOLLOUT) {
                r = connection_flush(c);
                if (r >= 0 && c->close_after_flush && c->out_len == 0)
                        r = -ECONNRESET;
                /* requests held back while the replies waited */
                if (r >= 0 && !(revents & EPOLLIN) && c->in_len > 0)
                        r = connection_process(c);
        }
        if (r >= 0 && (revents & EPOLLIN)) {
                r = connection_read(c);
                if (r >= 0)
                        r = connection_process(c);
                else if (r == -ECONNRESET && c->out_len > 0 && !c->dead) {
                        /* the client shut down its sending side after its last request: the
                         * replies still queued (e.g. waiting for the audit sync) go out first */
                        c->close_after_flush = true;
                        r = 0;
                }
        } else if (r >= 0 && (revents & (EPOLLHUP | EPOLLERR)) && !(revents & EPOLLOUT))
                r = -ECONNRESET;
        if (r < 0)
                connection_kill(c);
        else if (!c->dead)
                connection_update_events(c);
        return 0;
}

static int on_connection_idle(sd_event_source *s, uint64_t usec, void *userdata) {
        Connection *c = userdata;
        if (c->current && c->current->more) {
                /* subscribers may stay silent forever */
                (void) sd_event_source_set_time_relative(s, CONNECTION_IDLE_USEC);
                (void) sd_event_source_set_enabled(s, SD_EVENT_ONESHOT);
                return 0;
        }
        log_debug("Dropping idle client pid %d.", (int) c->caller.pid);
        connection_kill(c);
        return 0;
}

static void connection_free(Connection *c) {
        Manager *m;

        if (!c)
                return;
        connection_kill(c);
        m = c->manager;
        if (c->prev)
                c->prev->next = c->next;
        else
                m->connections = c->next;
        if (c->next)
                c->next->prev = c->prev;
        m->n_connections--;
        sd_event_source_disable_unref(c->io);
        sd_event_source_disable_unref(c->idle);
        sd_event_source_disable_unref(c->gc);
        if (c->fd >= 0)
                (void) close(c->fd);
        if (c->in) {
                explicit_bzero(c->in, c->in_alloc);
                free(c->in);
        }
        if (c->out) {
                explicit_bzero(c->out, c->out_alloc);
                free(c->out);
        }
        free(c->caller.groups);
        free(c);
}

static int read_peer(int fd, Caller *ret) {
        struct ucred uc;
        socklen_t l = sizeof(uc);
        gid_t *g = NULL;

        if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &uc, &l) < 0)
                return -errno;
        ret->uid = uc.uid;
        ret->gid = uc.gid;
        ret->pid = uc.pid;
        for (size_t n = 16;; n *= 2) {
                socklen_t gl = (socklen_t) (n * sizeof(gid_t));
                gid_t *ng = realloc(g, gl);
                if (!ng) {
                        free(g);
                        return -ENOMEM;
                }
                g = ng;
                if (getsockopt(fd, SOL_SOCKET, SO_PEERGROUPS, g, &gl) >= 0) {
                        ret->groups = g;
                        ret->n_groups = gl / sizeof(gid_t);
                        return 0;
                }
                if (errno != ERANGE || n > 65536) {
                        free(g);
                        return -errno;
                }
        }
}

static int on_listen_resume(sd_event_source *t, uint64_t usec, void *userdata) {
        (void) sd_event_source_set_enabled(userdata, SD_EVENT_ON);
        return 0;
}

static int on_listen_io(sd_event_source *s, int fd, uint32_t revents, void *userdata) {
        Manager *m = userdata;

        for (;;) {
                _cleanup_close_ int cfd = accept4(fd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
                Connection *c;
                int r;

                if (cfd < 0) {
                        if (errno == EAGAIN || errno == EINTR)
                                return 0;
                        if (errno == EMFILE || errno == ENFILE) {
                                /* the pending connection keeps the socket readable: stop listening
                                 * for a moment rather than spin (and log) in a loop */
                                log_warning("Out of file descriptors with %u clients, refusing new ones for now.", m->n_connections);
                                if (sd_event_source_set_enabled(s, SD_EVENT_OFF) >= 0 &&
                                    sd_event_add_time_relative(m->event, NULL, CLOCK_MONOTONIC, LISTEN_PAUSE_USEC, 0,
                                                               on_listen_resume, s) < 0)
                                        (void) sd_event_source_set_enabled(s, SD_EVENT_ON);
                                return 0;
                        }
                        log_warning("accept() failed: %s, ignoring.", strerror(errno));
                        return 0;
                }
                if (m->n_connections >= CONNECTIONS_MAX) {
                        log_warning("%u clients connected, refusing another one.", m->n_connections);
                        continue;
                }
                c = calloc(1, sizeof(*c));
                if (!c)
                        return 0;
                c->manager = m;
                c->fd = -1;
                r = read_peer(cfd, &c->caller);
                if (r < 0) {
                        free(c);
                        continue;
                }
                c->fd = TAKE_FD(cfd);
                c->next = m->connections;
                if (c->next)
                        c->next->prev = c;
                m->connections = c;
                m->n_connections++;
                r = sd_event_add_io(m->event, &c->io, c->fd, EPOLLIN, on_connection_io, c);
                if (r >= 0)
                        r = sd_event_add_time_relative(m->event, &c->idle, CLOCK_MONOTONIC,
                                                       CONNECTION_IDLE_USEC, 1000000, on_connection_idle, c);
                if (r < 0) {
                        connection_free(c);
                        continue;
                }
        }
}

static int audit_commit(Manager *m) {
        int r;

        first_held_usec = 0;
        r = cmek_audit_sync(m->audit);
        if (r < 0)
                log_error_errno(r, "Failed to sync the audit log: %m");
        for (Connection *c = m->connections, *next; c; c = next) {
                next = c->next;
                if (!c->held || c->dead)
                        continue;
                c->held = false;
                r = connection_flush(c);
                if (r < 0 || (c->close_after_flush && c->out_len == 0))
                        connection_kill(c);
                else
                        connection_update_events(c);
        }
        return 0;
}

static int on_audit_idle(sd_event_source *s, void *userdata) {
        return audit_commit(userdata);
}

static int on_audit_post(sd_event_source *s, void *userdata) {
        Manager *m = userdata;
        if (first_held_usec && cmek_monotonic_usec() - first_held_usec >= GROUP_COMMIT_MAX_WAIT_USEC)
                return audit_commit(m);
        /* lines appended with no reply waiting (the daemon acting by itself) */
        if (!first_held_usec && cmek_audit_needs_sync(m->audit))
                (void) sd_event_source_set_enabled(audit_idle_source, SD_EVENT_ONESHOT);
        return 0;
}

int server_listen(Manager *m, int fd) {
        sd_event_source *s;
        int r;

        if (!audit_post_source) {
                r = sd_event_add_post(m->event, &audit_post_source, on_audit_post, m);
                if (r < 0)
                        return r;
                r = sd_event_add_defer(m->event, &audit_idle_source, on_audit_idle, m);
                if (r < 0)
                        return r;
                (void) sd_event_source_set_priority(audit_idle_source, SD_EVENT_PRIORITY_IDLE);
                (void) sd_event_source_set_enabled(audit_idle_source, SD_EVENT_OFF);
        }
        r = fcntl(fd, F_GETFL);
        if (r >= 0)
                (void) fcntl(fd, F_SETFL, r | O_NONBLOCK);
        r = sd_event_add_io(m->event, &s, fd, EPOLLIN, on_listen_io, m);
        if (r < 0)
                return r;
        (void) sd_event_source_set_io_fd_own(s, true);
        /* the loop takes its own reference; drop ours so it is freed with the loop */
        (void) sd_event_source_set_floating(s, true);
        sd_event_source_unref(s);
        return 0;
}

int server_bind(Manager *m, const char *path) {
        struct sockaddr_un sa = { .sun_family = AF_UNIX };
        _cleanup_close_ int fd = -1;

        if (strlen(path) >= sizeof(sa.sun_path))
                return -ENAMETOOLONG;
        strcpy(sa.sun_path, path);
        fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
        if (fd < 0)
                return -errno;
        (void) unlink(path);
        if (bind(fd, (struct sockaddr *) &sa, sizeof(sa)) < 0)
                return -errno;
        /* The policy engine decides per call what a local user may do. */
        (void) chmod(path, 0666);
        if (listen(fd, SOMAXCONN) < 0)
                return -errno;
        return server_listen(m, TAKE_FD(fd));
}

void server_done(Manager *m) {
        audit_post_source = sd_event_source_disable_unref(audit_post_source);
        audit_idle_source = sd_event_source_disable_unref(audit_idle_source);
        while (m->connections) {
                Connection *c = m->connections;
                connection_kill(c);
                c->gc = sd_event_source_disable_unref(c->gc);
                connection_free(c);
        }
}
