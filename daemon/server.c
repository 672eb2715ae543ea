/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* Varlink server: connections, framing, limits, dispatch, replies. */
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <inttypes.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <systemd/sd-journal.h>

#include "cmek-audit.h"
#include "cmek-base64.h"
#include "cmek-secmem.h"
#include "cmek-varlink.h"
#include "config.h"
#include "daemon.h"
#include "policy.h"

#define CONNECTION_MAX_OUTPUT (64U * 1024U * 1024U) /* a client that does not read is dropped */
#define CONNECTION_OUTPUT_PAUSE (1024U * 1024U)     /* no new request is read while this much waits */
#define LISTEN_PAUSE_USEC (250ULL * 1000ULL)          /* out of descriptors: accept again after this */
#define REQUESTS_PER_WAKEUP 32U                     /* then other clients get their turn */
#define REFUSAL_LOG_INTERVAL_USEC (10ULL * USEC_PER_SEC)
/* A refused call costs the caller this many requests of its rate: it is cheap to send and costs
 * us an audit record; a flood of them is slowed down far more than legitimate use. */
#define DENIED_REQUEST_COST 20U

/* "[limits]" in cmekd.conf(5), as server_apply_limits() adjusted them. uid 0 is exempt from the
 * per-uid limits and has slots of its own. */
static struct {
        unsigned connections_max;          /* connections-max */
        unsigned connections_root;         /* connections-reserved-for-root */
        unsigned connections_per_uid;      /* connections-per-uid */
        size_t output_per_uid;             /* output-per-uid: queued replies of one uid (bytes) */
        size_t output_without_grant;       /* output-without-grant: same, callers the policy never names */
        unsigned rate;                     /* requests-per-second (per uid; burst: two seconds' worth) */
        unsigned rate_without_grant;       /* requests-per-second-without-grant */
        uint64_t idle_usec;                /* idle-timeout: no complete request for this long */
} limits;

/* What one uid holds right now; freed with its last connection. */
struct UidUsage {
        struct UidUsage *next;
        uid_t uid;
        unsigned n_ref;         /* connections not freed yet (their output is still counted) */
        unsigned n_connections; /* live ones: a killed connection stops counting at once */
        size_t out_bytes;
        double tokens;
        uint64_t refill_usec;
};
#ifndef MIN
#define MIN(a, b) ((a) < (b) ? (a) : (b))
#endif

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
        UidUsage *usage;        /* NULL for uid 0 */
        bool no_grant;          /* the policy names this caller nowhere: tiny allowances */
        bool out_secure;        /* out is a locked cmek_secure_alloc() buffer (a secret is queued) */
        bool paused;            /* waits for its uid's budget or its turn (resume_paused()) */
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
        bool audit_failed;      /* an audit record of this call was not written: refuse */
        void (*on_close)(Call *c, void *userdata);
        void *userdata;
};

static void connection_free(Connection *c);
static void check_error_declared(Call *call, const char *error, json_object *params);
static void connection_kill(Connection *c);
static int connection_process(Connection *c);
static int connection_process_loop(Connection *c);

/* ---- per-uid limits ---- */

static size_t connection_output_budget(const Connection *c) {
        return c->no_grant ? limits.output_without_grant : limits.output_per_uid;
}

/* no new request is read from this connection while this much of its own output waits */
static size_t connection_output_pause(const Connection *c) {
        if (!c->usage)
                return CONNECTION_OUTPUT_PAUSE;
        return MIN(connection_output_budget(c), (size_t) CONNECTION_OUTPUT_PAUSE);
}

/* whether the replies queued for all connections of this uid leave room for another request */
static bool connection_uid_output_ok(const Connection *c) {
        return !c->usage || c->usage->out_bytes < connection_output_budget(c);
}

static void connection_account_output(Connection *c, size_t added, size_t removed) {
        Manager *m = c->manager;
        UidUsage *u = c->usage;
        size_t before;

        if (!u)
                return;
        before = u->out_bytes;
        u->out_bytes = u->out_bytes + added - removed;
        /* connections of this uid paused for its budget may read again */
        if (removed > 0 && m->server.resume_defer &&
            ((before >= limits.output_per_uid && u->out_bytes < limits.output_per_uid) ||
             (before >= limits.output_without_grant && u->out_bytes < limits.output_without_grant)))
                (void) sd_event_source_set_enabled(m->server.resume_defer, SD_EVENT_ONESHOT);
}

static UidUsage *uid_usage_find(Manager *m, uid_t uid) {
        for (UidUsage *u = m->server.uid_usages; u; u = u->next)
                if (u->uid == uid)
                        return u;
        return NULL;
}

static UidUsage *uid_usage_ref(Manager *m, uid_t uid) {
        UidUsage *u = uid_usage_find(m, uid);

        if (!u) {
                u = calloc(1, sizeof(*u));
                if (!u)
                        return NULL;
                u->uid = uid;
                u->tokens = 2.0 * limits.rate;
                u->refill_usec = cmek_monotonic_usec();
                u->next = m->server.uid_usages;
                m->server.uid_usages = u;
        }
        u->n_ref++;
        u->n_connections++;
        return u;
}

static void uid_usage_unref(Manager *m, UidUsage *u) {
        if (!u || --u->n_ref > 0)
                return;
        for (UidUsage **p = &m->server.uid_usages; *p; p = &(*p)->next)
                if (*p == u) {
                        *p = u->next;
                        break;
                }
        free(u);
}

/* Token bucket per uid: a burst of two seconds' worth, then the configured rate. Returns true
 * when the request may be served now, else how long to wait. */
static bool connection_take_token(Connection *c, uint64_t *ret_wait_usec) {
        UidUsage *u = c->usage;
        double rate = c->no_grant ? limits.rate_without_grant : limits.rate;
        uint64_t now;

        if (!u || rate <= 0)
                return true;
        now = cmek_monotonic_usec();
        u->tokens = MIN(2.0 * rate, u->tokens + (double) (now - u->refill_usec) * rate / 1e6);
        u->refill_usec = now;
        if (u->tokens >= 1.0) {
                u->tokens -= 1.0;
                return true;
        }
        *ret_wait_usec = (uint64_t) ((1.0 - u->tokens) * 1e6 / rate) + 1;
        return false;
}

/* Stop reading this connection until resume_paused() runs: on the next loop iteration
 * (wait_usec 0: its turn is over) or after wait_usec (its uid is over its rate). */
static void connection_pause(Connection *c, uint64_t wait_usec) {
        Manager *m = c->manager;
        uint64_t now, when, cur;
        int enabled = SD_EVENT_OFF;

        c->paused = true;
        if (wait_usec == 0) {
                if (m->server.resume_defer)
                        (void) sd_event_source_set_enabled(m->server.resume_defer, SD_EVENT_ONESHOT);
                return;
        }
        if (!m->server.resume_timer || sd_event_now(c->manager->event, CLOCK_MONOTONIC, &now) < 0)
                return;
        when = now + wait_usec;
        (void) sd_event_source_get_enabled(m->server.resume_timer, &enabled);
        if (enabled != SD_EVENT_OFF && sd_event_source_get_time(m->server.resume_timer, &cur) >= 0 && cur <= when)
                return;
        (void) sd_event_source_set_time(m->server.resume_timer, when);
        (void) sd_event_source_set_enabled(m->server.resume_timer, SD_EVENT_ONESHOT);
}

static void resume_paused(Manager *m) {
        for (Connection *c = m->connections; c; c = c->next) {
                if (!c->paused || c->dead)
                        continue;
                c->paused = false;
                if (connection_process(c) < 0)
                        connection_kill(c);
        }
}

static int on_resume_defer(sd_event_source *s, void *userdata) {
        resume_paused(userdata);
        return 0;
}

static int on_resume_timer(sd_event_source *s, uint64_t usec, void *userdata) {
        resume_paused(userdata);
        return 0;
}

static void connection_free_out(Connection *c) {
        if (!c->out)
                return;
        if (c->out_secure)
                cmek_secure_free(c->out);
        else {
                explicit_bzero(c->out, c->out_alloc);
                free(c->out);
        }
        c->out = NULL;
        c->out_alloc = 0;
        c->out_secure = false;
}

static void connection_update_events(Connection *c) {
        uint32_t ev = 0;
        if (c->dead)
                return;
        /* over its uid's output budget: resumed when the uid's replies drain */
        if (!connection_uid_output_ok(c))
                c->paused = true;
        if (!c->close_after_flush && !c->current && !c->paused && c->out_len < connection_output_pause(c))
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

static int connection_flush(Connection *c) {
        Manager *m = c->manager;

        if (c->out_len > 0 && cmek_audit_needs_sync(m->audit)) {
                if (!m->server.first_held_usec)
                        m->server.first_held_usec = cmek_monotonic_usec();
                c->held = true;
                (void) sd_event_source_set_enabled(m->server.audit_idle_source, SD_EVENT_ONESHOT);
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
                connection_account_output(c, 0, (size_t) n);
        }
        /* a secret went out: give the locked pages back */
        if (c->out_len == 0 && c->out_secure)
                connection_free_out(c);
        return 0;
}

/* Output normally sits in the ordinary heap; once a reply carrying a secret is queued, the
 * buffer moves to locked memory (cmek_secure_alloc) until it has drained. Only the buffers
 * that hold a secret are locked, so clients that do not read cannot drive locked memory up. */
static int connection_queue(Connection *c, const char *data, size_t size, bool secret) {
        size_t max = c->no_grant ? CONNECTION_OUTPUT_PAUSE : CONNECTION_MAX_OUTPUT;

        /* the same bound for one connection and for all of its uid's together: replies pushed
         * without a request (event streams) to clients that do not read cannot add up */
        if (c->out_len + size > max || (c->usage && c->usage->out_bytes + size > max))
                return -ENOBUFS;
        if (c->out_alloc - c->out_len < size || (secret && !c->out_secure)) {
                bool sec = secret || c->out_secure;
                size_t na = c->out_alloc ? c->out_alloc : 4096;
                char *nb;

                while (na - c->out_len < size)
                        na *= 2;
                nb = sec ? cmek_secure_alloc(na) : malloc(na);
                if (!nb)
                        return -ENOMEM;
                if (c->out) {
                        memcpy(nb, c->out, c->out_len);
                        connection_free_out(c);
                }
                c->out = nb;
                c->out_alloc = na;
                c->out_secure = sec;
        }
        memcpy(c->out + c->out_len, data, size);
        c->out_len += size;
        connection_account_output(c, size, 0);
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
        /* it stops counting against the limits now, not when the loop gets to free it: after a
         * mass disconnect new clients must not be refused for slots that are already gone */
        c->manager->n_connections--;
        if (c->usage)
                c->usage->n_connections--;
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

static int connection_send_message(Connection *c, const char *s, size_t len_with_nul, bool secret) {
        int r = connection_queue(c, s, len_with_nul, secret);
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
        return connection_send_message(c, s, strlen(s) + 1, false);
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

static json_object *audit_unavailable_message(Call *call) {
        json_object *msg = json_object_new_object(), *p = json_object_new_object();
        _cleanup_free_ char *s = NULL;

        if (asprintf(&s, "The audit record of %s could not be written, so it was refused (see 'cmekctl status' "
                     "and the daemon log): free space on (or repair) the file system holding the audit log in "
                     "the state directory; service resumes by itself once the log is writable.",
                     strempty(call->method)) < 0)
                s = NULL;
        json_object_object_add(p, "message", json_object_new_string(s ?: "audit log unavailable"));
        json_object_object_add(msg, "error", json_object_new_string(CMEK_ERROR_AUDIT_UNAVAILABLE));
        json_object_object_add(msg, "parameters", p);
        return msg;
}

void call_set_audit_failed(Call *c) {
        if (c)
                c->audit_failed = true;
}

static int call_send(Call *call, json_object *msg, bool final) {
        Connection *c = call->conn;
        int r = 0;

        if (call->replied) {
                json_object_put(msg);
                return -EALREADY;
        }
        /* fail closed: what the audit log could not record gets no success reply */
        if (call->audit_failed && !json_object_object_get_ex(msg, "error", NULL)) {
                json_object_put(msg);
                msg = audit_unavailable_message(call);
                final = true;
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
        check_error_declared(call, error, params);
        if (call->conn && call->conn->usage && !call->replied && streq(error, CMEK_ERROR_PERMISSION_DENIED))
                call->conn->usage->tokens -= DENIED_REQUEST_COST - 1;
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
        size_t b64 = cmek_base64_encoded_size(n), xlen, total;
        char *buf;
        int r = 0;

        if (call->audit_failed) {
                /* the secret never leaves without its audit record */
                json_object_put(extra);
                return call_send(call, audit_unavailable_message(call), true);
        }
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
        off += cmek_base64_encode_to(buf + off, secret, n);
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
                r = connection_send_message(c, buf, off + 1, true);
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
        &interface_errors,
        &interface_service,
        &interface_events,
        &interface_vault,
        &interface_key,
        &interface_volume,
        &interface_metrics,
};

const Interface *const *manager_interfaces(size_t *ret_n) {
        *ret_n = ARRAY_SIZE(interfaces);
        return interfaces;
}

/* Interim: the interfaces not declared as data yet (their methods are fully qualified). */
static const Method *find_legacy_method(const char *name, bool *ret_iface_known) {
        const char *dot = strrchr(name, '.');

        for (size_t i = 0; dot && i < ARRAY_SIZE(interfaces); i++) {
                if (!interfaces[i]->methods || strlen(interfaces[i]->name) != (size_t) (dot - name) ||
                    strncmp(interfaces[i]->name, name, (size_t) (dot - name)) != 0)
                        continue;
                *ret_iface_known = true;
                for (const Method *mm = interfaces[i]->methods; mm->name; mm++)
                        if (streq(mm->name, name))
                                return mm;
        }
        return NULL;
}

char *manager_interface_description(Manager *m, const Interface *iface) {
        if (iface->description)
                return strdup(iface->description);
        return varlink_idl_format(iface, m->test_hooks);
}

/* An error reply whose name or parameters its interface does not declare is a bug: said loudly in
 * test builds (the tests grep the log for it), silently sent anyway. */
static void check_error_declared(Call *call, const char *error, json_object *params) {
        const VarlinkSymbol *e;
        const char *field = NULL;

        if (!call->conn || !call->conn->manager->test_hooks)
                return;
        e = varlink_find_error(interfaces, ARRAY_SIZE(interfaces), error);
        if (!e) {
                const char *dot = strrchr(error, '.');
                for (size_t i = 0; dot && i < ARRAY_SIZE(interfaces); i++)
                        if (interfaces[i]->description && strlen(interfaces[i]->name) == (size_t) (dot - error) &&
                            strncmp(interfaces[i]->name, error, (size_t) (dot - error)) == 0)
                                return; /* interim: an interface still described by hand */
                log_error("BUG: %s replied with error %s, which no interface declares.", strempty(call->method), error);
        } else if (!varlink_error_params_declared(e, params, &field))
                log_error("BUG: %s replied with error %s, whose declaration does not match field \"%s\".",
                          strempty(call->method), error, field);
}

/* Interim, for the interfaces not declared as data yet (the others say .unaudited): methods that
 * never write an audit line except a denial keep working while the audit log is unavailable
 * (status shows the condition; show/verify help repair it). Every other method may use a key or
 * change state, and is refused up front then. */
static bool legacy_method_is_audited(const char *method) {
        static const char *const unaudited[] = {
                "org.varlink.service.GetInfo", "org.varlink.service.GetInterfaceDescription",
                "io.cmek.Service.Status", "io.cmek.Service.PolicyCheck", "io.cmek.Service.AuditShow",
                "io.cmek.Service.AuditVerify", "io.cmek.Events.Subscribe",
        };
        for (size_t i = 0; i < ARRAY_SIZE(unaudited); i++)
                if (streq(unaudited[i], method))
                        return false;
        return true;
}

/* InvalidParameter with the parameter's name and what it must be */
static int reply_invalid_parameter(Call *call, const char *parameter, const char *message) {
        json_object *p = json_object_new_object();
        json_object_object_add(p, "parameter", json_object_new_string(parameter));
        json_object_object_add(p, "message", json_object_new_string(message));
        return call_error(call, VARLINK_ERROR_INVALID_PARAMETER, p);
}

static int dispatch(Connection *c, json_object *msg) {
        Manager *m = c->manager;
        const char *method = cmek_json_get_string(msg, "method");
        json_object *params = NULL;
        const Interface *iface = NULL;
        const VarlinkSymbol *sym;
        const Method *mm = NULL;
        MethodHandler handler;
        bool iface_known, audited;
        char pname[256], ptext[512];
        Call *call;
        int r;

        if (!method) {
                c->close_after_flush = true;
                return send_json_error(c, CMEK_ERROR_MALFORMED_MESSAGE, "message has no \"method\" string");
        }
        /* "parameters": null, {} and none at all are the same (Go's client sends null) */
        if (json_object_object_get_ex(msg, "parameters", &params) && json_object_is_type(params, json_type_null))
                params = NULL;
        if (params && !json_object_is_type(params, json_type_object))
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

        sym = varlink_find_method(interfaces, ARRAY_SIZE(interfaces), method, m->test_hooks, &iface, &iface_known);
        if (!sym && !iface_known)
                mm = find_legacy_method(method, &iface_known);
        if (!sym && !mm) {
                json_object *p = json_object_new_object();
                if (iface_known) {
                        json_object_object_add(p, "method", json_object_new_string(method));
                        (void) call_error(call, VARLINK_ERROR_METHOD_NOT_FOUND, p);
                } else {
                        _cleanup_free_ char *name = strndup(method, (size_t) (strrchr(method, '.') ?: method + strlen(method)) - (size_t) method);
                        json_object_object_add(p, "interface", json_object_new_string(name ?: method));
                        (void) call_error(call, VARLINK_ERROR_INTERFACE_NOT_FOUND, p);
                }
                return 0;
        }
        handler = sym ? sym->handler : mm->handler;
        audited = sym ? !sym->unaudited : legacy_method_is_audited(method);

        if (audited && manager_audit_ready(m) < 0) {
                (void) manager_audit_refuse(m, call);
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
        } else if (sym && varlink_check_params(iface, sym, params, pname, sizeof(pname), ptext, sizeof(ptext)) < 0) {
                (void) reply_invalid_parameter(call, pname, ptext);
                r = 0;
        } else
                r = handler(m, call, params);
        json_object_put(params);
        if (!call->replied && !(call->more && call->n_ref > 2) && r < 0) {
                log_error("%s failed: %s", method, strerror(-r));
                (void) call_errorf(call, CMEK_ERROR_INTERNAL, "%s failed: %s", method, strerror(-r));
        } else if (!call->replied && r >= 0 && call->n_ref <= 2) {
                /* a handler that neither replied nor kept the call: a bug, but never hang the client */
                (void) call_errorf(call, CMEK_ERROR_INTERNAL, "%s sent no reply", method);
        }
        /* the idle countdown starts when the answer is ready: a request that took longer than
         * the idle timeout (memory-hard PBKDF on a slow machine, valgrind) must not have its
         * client dropped as idle before the reply leaves. Only complete requests count: bytes
         * trickled in do not keep a connection alive. */
        if (call->conn && call->conn->idle)
                (void) sd_event_source_set_time_relative(call->conn->idle, limits.idle_usec);
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
        unsigned n_served = 0;

        c->paused = false; /* every reason to wait is checked again below */
        /* One call at a time per connection, in order, as Varlink requires. */
        /* A client that pipelines requests without reading the replies is not served further
         * until it reads: its replies cannot pile up to more than about CONNECTION_OUTPUT_PAUSE,
         * nor those of all connections of its uid to more than its output budget. */
        while (!c->current && !c->close_after_flush && !c->dead && c->out_len < connection_output_pause(c)) {
                char *nul = c->in_len ? memchr(c->in, 0, c->in_len) : NULL;
                json_object *msg = NULL;
                uint64_t wait_usec;
                size_t mlen;
                int r;

                if (!connection_uid_output_ok(c)) {
                        c->paused = true; /* resumed when its uid's replies drain */
                        break;
                }
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
                /* other clients get their turn; root's connections are dispatched first anyway */
                if (n_served >= REQUESTS_PER_WAKEUP) {
                        connection_pause(c, 0);
                        break;
                }
                if (!connection_take_token(c, &wait_usec)) {
                        connection_pause(c, wait_usec);
                        break;
                }
                n_served++;
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
        if (c->current) {
                /* subscribers may stay silent forever; a call in progress is ours to answer */
                (void) sd_event_source_set_time_relative(s, limits.idle_usec);
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
        sd_event_source_disable_unref(c->io);
        sd_event_source_disable_unref(c->idle);
        sd_event_source_disable_unref(c->gc);
        if (c->fd >= 0)
                (void) close(c->fd);
        if (c->in) {
                explicit_bzero(c->in, c->in_alloc);
                free(c->in);
        }
        connection_account_output(c, 0, c->out_len);
        connection_free_out(c);
        uid_usage_unref(c->manager, c->usage);
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

/* Closed at once, without an audit line: a flood of refused connections costs one accept(),
 * one getsockopt() and one send() each, and one log line per REFUSAL_LOG_INTERVAL_USEC. */
static void connection_refuse(Manager *m, int fd, uid_t uid, const char *why) {
        char msg[384];
        uint64_t now = cmek_monotonic_usec();
        int n;

        n = snprintf(msg, sizeof(msg),
                     "{\"error\":\"" CMEK_ERROR_BUSY "\",\"parameters\":{\"message\":"
                     "\"cmekd refuses this connection: %s. Close other connections or raise the limit in "
                     "the [limits] section of cmekd.conf(5).\"}}", why);
        if (n > 0 && (size_t) n < sizeof(msg))
                (void) send(fd, msg, (size_t) n + 1, MSG_DONTWAIT | MSG_NOSIGNAL);
        m->server.refused_since_log++;
        if (m->server.last_refusal_log_usec == 0 || now - m->server.last_refusal_log_usec >= REFUSAL_LOG_INTERVAL_USEC) {
                log_warning("Refused %" PRIu64 " connection(s) since the last report (last from uid %u: %s; "
                            "%u clients connected).", m->server.refused_since_log, (unsigned) uid, why, m->n_connections);
                m->server.refused_since_log = 0;
                m->server.last_refusal_log_usec = now;
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
                struct ucred uc;
                socklen_t ul = sizeof(uc);
                UidUsage *u;

                /* the limits first, from SO_PEERCRED alone: a refusal must stay cheap */
                if (getsockopt(cfd, SOL_SOCKET, SO_PEERCRED, &uc, &ul) < 0)
                        continue;
                if (m->n_connections >= limits.connections_max) {
                        connection_refuse(m, cfd, uc.uid, "too many clients");
                        continue;
                }
                if (uc.uid != 0) {
                        /* the last connections_root slots are for root only */
                        if (m->n_connections >= limits.connections_max - limits.connections_root) {
                                connection_refuse(m, cfd, uc.uid, "too many clients, the remaining slots are reserved for root");
                                continue;
                        }
                        u = uid_usage_find(m, uc.uid);
                        if (u && u->n_connections >= limits.connections_per_uid) {
                                connection_refuse(m, cfd, uc.uid, "too many connections from this user");
                                continue;
                        }
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
                if (c->caller.uid != 0) {
                        c->usage = uid_usage_ref(m, c->caller.uid);
                        if (!c->usage) {
                                free(c->caller.groups);
                                free(c);
                                continue;
                        }
                        c->no_grant = !policy_subject_has_any_grant(m->policy, c->caller.uid, c->caller.gid,
                                                                    c->caller.groups, c->caller.n_groups);
                }
                c->fd = TAKE_FD(cfd);
                c->next = m->connections;
                if (c->next)
                        c->next->prev = c;
                m->connections = c;
                m->n_connections++;
                r = sd_event_add_io(m->event, &c->io, c->fd, EPOLLIN, on_connection_io, c);
                /* root's requests are served before anybody else's that wait at the same time */
                if (r >= 0 && c->caller.uid == 0)
                        r = sd_event_source_set_priority(c->io, SD_EVENT_PRIORITY_IMPORTANT);
                if (r >= 0)
                        r = sd_event_add_time_relative(m->event, &c->idle, CLOCK_MONOTONIC,
                                                       limits.idle_usec, 1000000, on_connection_idle, c);
                if (r < 0) {
                        connection_free(c);
                        continue;
                }
        }
}

/* The sync failed: the held replies answer calls whose audit lines may not be on disk. Each one
 * (NUL-terminated message) is replaced by an AuditUnavailable error, and the connection closes
 * after them (a stream cannot go on). The wiped buffer may have held a DEK. */
static int connection_refuse_held(Connection *c) {
        static const char err[] = "{\"error\":\"" CMEK_ERROR_AUDIT_UNAVAILABLE "\",\"parameters\":{\"message\":"
                "\"The audit log could not be synced to disk, so this reply was withheld (see 'cmekctl status' and "
                "the daemon log); service resumes by itself once the log is writable.\"}}";
        size_t n = 0;
        int r;

        for (size_t i = 0; i < c->out_len; i++)
                if (c->out[i] == 0)
                        n++;
        explicit_bzero(c->out, c->out_alloc);
        connection_account_output(c, 0, c->out_len);
        c->out_len = 0;
        c->close_after_flush = true;
        for (size_t i = 0; i < n; i++) {
                r = connection_queue(c, err, sizeof(err), false);
                if (r < 0)
                        return r;
        }
        return 0;
}

static int audit_commit(Manager *m) {
        int r, sync_r;

        m->server.first_held_usec = 0;
        sync_r = cmek_audit_sync(m->audit);
        if (sync_r < 0) {
                log_error_errno(sync_r, "Failed to sync the audit log: %m");
                manager_audit_failed(m, sync_r);
        }
        for (Connection *c = m->connections, *next; c; c = next) {
                next = c->next;
                if (!c->held || c->dead)
                        continue;
                c->held = false;
                if (sync_r < 0 && connection_refuse_held(c) < 0) {
                        connection_kill(c);
                        continue;
                }
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
        if (m->server.first_held_usec && cmek_monotonic_usec() - m->server.first_held_usec >= GROUP_COMMIT_MAX_WAIT_USEC)
                return audit_commit(m);
        /* lines appended with no reply waiting (the daemon acting by itself) */
        if (!m->server.first_held_usec && cmek_audit_needs_sync(m->audit))
                (void) sd_event_source_set_enabled(m->server.audit_idle_source, SD_EVENT_ONESHOT);
        return 0;
}

/* [limits] of the configuration, at start and on reload (a lowered limit takes no connection
 * away: it holds for the next ones). */
void server_apply_limits(Manager *m) {
        const ConfigLimits *l = &m->config->limits;
        struct rlimit rl;

        limits.connections_max = l->connections_max;
        limits.connections_root = l->connections_root;
        limits.connections_per_uid = l->connections_per_uid;
        limits.output_per_uid = (size_t) l->output_per_uid;
        limits.output_without_grant = (size_t) l->output_without_grant;
        limits.rate = l->rate;
        limits.rate_without_grant = l->rate_without_grant;
        limits.idle_usec = l->idle_usec;
        /* never run out of descriptors before the limit: that would lock root out too */
        if (getrlimit(RLIMIT_NOFILE, &rl) >= 0 && rl.rlim_cur != RLIM_INFINITY &&
            (uint64_t) limits.connections_max + 64 > rl.rlim_cur) {
                unsigned n = rl.rlim_cur > 128 ? (unsigned) rl.rlim_cur - 64 : (unsigned) rl.rlim_cur / 2;
                log_info("Descriptor limit %llu: serving at most %u clients at once.", (unsigned long long) rl.rlim_cur, n);
                limits.connections_max = n;
        }
        if (limits.connections_root > limits.connections_max / 4)
                limits.connections_root = limits.connections_max / 4 ?: 1;
        if (limits.output_without_grant > limits.output_per_uid)
                limits.output_without_grant = limits.output_per_uid;
        log_debug("Limits: %u clients (%u reserved for root), %u per uid, %zu bytes of queued replies per uid "
                  "(%zu without any grant), %u requests/s per uid (%u without any grant), idle after %" PRIu64 " s.",
                  limits.connections_max, limits.connections_root, limits.connections_per_uid, limits.output_per_uid,
                  limits.output_without_grant, limits.rate, limits.rate_without_grant, (uint64_t) (limits.idle_usec / 1000000U));
}

int server_listen(Manager *m, int fd) {
        sd_event_source *s;
        int r;

        if (!m->server.audit_post_source) {
                server_apply_limits(m);
                r = sd_event_add_defer(m->event, &m->server.resume_defer, on_resume_defer, m);
                if (r < 0)
                        return r;
                (void) sd_event_source_set_enabled(m->server.resume_defer, SD_EVENT_OFF);
                r = sd_event_add_time(m->event, &m->server.resume_timer, CLOCK_MONOTONIC, 0, 1000, on_resume_timer, m);
                if (r < 0)
                        return r;
                (void) sd_event_source_set_enabled(m->server.resume_timer, SD_EVENT_OFF);
                r = sd_event_add_post(m->event, &m->server.audit_post_source, on_audit_post, m);
                if (r < 0)
                        return r;
                r = sd_event_add_defer(m->event, &m->server.audit_idle_source, on_audit_idle, m);
                if (r < 0)
                        return r;
                (void) sd_event_source_set_priority(m->server.audit_idle_source, SD_EVENT_PRIORITY_IDLE);
                (void) sd_event_source_set_enabled(m->server.audit_idle_source, SD_EVENT_OFF);
        }
        r = fcntl(fd, F_GETFL);
        if (r >= 0)
                (void) fcntl(fd, F_SETFL, r | O_NONBLOCK);
        r = sd_event_add_io(m->event, &s, fd, EPOLLIN, on_listen_io, m);
        if (r < 0)
                return r;
        /* a new client (root's among them) is accepted before queued requests are served;
         * accepting, and refusing, is cheap */
        (void) sd_event_source_set_priority(s, SD_EVENT_PRIORITY_IMPORTANT);
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
        m->server.resume_defer = sd_event_source_disable_unref(m->server.resume_defer);
        m->server.resume_timer = sd_event_source_disable_unref(m->server.resume_timer);
        m->server.audit_post_source = sd_event_source_disable_unref(m->server.audit_post_source);
        m->server.audit_idle_source = sd_event_source_disable_unref(m->server.audit_idle_source);
        while (m->connections) {
                Connection *c = m->connections;
                connection_kill(c);
                c->gc = sd_event_source_disable_unref(c->gc);
                connection_free(c);
        }
}
