/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* The daemon's side of the audit log: manager_audit() failing closed and recovering by itself,
 * denials aggregated per uid, and AuditShow/AuditVerify off the event loop (docs/audit.md). */
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <time.h>
#include <unistd.h>

#include "cmek-audit.h"
#include "cmek-varlink.h"
#include "daemon.h"

static int audit_path(Manager *m, char **ret) {
        return asprintf(ret, "%s/audit.log", m->state_dir) < 0 ? -ENOMEM : 0;
}

#define AUDIT_RETRY_USEC (5ULL * USEC_PER_SEC)
static int audit_recover(Manager *m);

static int on_audit_retry(sd_event_source *s, uint64_t usec, void *userdata) {
        Manager *m = userdata;
        m->audit_glue.retry_armed = false;
        (void) audit_recover(m);
        return 0;
}

static void audit_arm_retry(Manager *m) {
        if (m->audit_glue.retry_armed || !m->event)
                return;
        /* floating: freed with the loop */
        if (sd_event_add_time_relative(m->event, NULL, CLOCK_MONOTONIC, AUDIT_RETRY_USEC, 100000,
                                       on_audit_retry, m) >= 0)
                m->audit_glue.retry_armed = true;
}

static void audit_set_error(Manager *m, int error) {
        if (!m->audit_error) {
                _cleanup_free_ char *path = NULL;
                (void) audit_path(m, &path);
                m->audit_error_usec = cmek_now_usec();
                log_error("The audit log %s cannot be written (%s): refusing key use, unwrap, unlock and every "
                          "state change until it can. Free space on its file system or repair it; service "
                          "resumes by itself.", strempty(path), strerror(-error));
        }
        m->audit_error = error;
        audit_arm_retry(m);
        metrics_update(m);
}

void manager_audit_failed(Manager *m, int error) {
        audit_set_error(m, error);
}

/* Back from unavailable: reopen a broken handle, check the space, and record the gap (its
 * records are in the journal only) durably before anything else goes into the log. */
static int audit_recover(Manager *m) {
        _cleanup_free_ char *path = NULL, *detail = NULL, *since = NULL;
        int r;

        if (!m->audit_error)
                return 0;
        r = audit_path(m, &path);
        if (r < 0)
                return r;
        if (!m->audit || cmek_audit_is_broken(m->audit)) {
                CmekAudit *a = NULL;

                m->audit = cmek_audit_close(m->audit);
                r = cmek_audit_open_full(path, CMEK_AUDIT_GROUP_COMMIT, &a);
                if (r < 0)
                        goto fail;
                m->audit = a;
        }
        r = cmek_audit_check_space(m->audit);
        if (r < 0)
                goto fail;
        if (asprintf(&detail, "the audit log could not be written for %" PRIu64 " s (%s): %" PRIu64
                     " record(s) went to the journal only (CMEK_AUDIT_FILE_ERROR=); audited operations were refused meanwhile",
                     (cmek_now_usec() - m->audit_error_usec) / 1000000U, strerror(-m->audit_error), m->audit_lost) < 0)
                return -ENOMEM;
        r = cmek_audit_append(m->audit, &(CmekAuditEntry) {
                        .event = "audit.resumed", .operation = "audit", .result = "ok", .detail = detail,
                }, cmek_now_usec());
        if (r >= 0)
                r = cmek_audit_sync(m->audit);
        if (r < 0)
                goto fail;
        log_notice("The audit log %s is writable again after %" PRIu64 " s; %" PRIu64 " record(s) are in the journal only.",
                   path, (cmek_now_usec() - m->audit_error_usec) / 1000000U, m->audit_lost);
        m->audit_error = 0;
        m->audit_lost = 0;
        metrics_update(m);
        return 0;
fail:
        m->audit_error = r;
        audit_arm_retry(m);
        return r;
}

int manager_audit_ready(Manager *m) {
        int r;

        if (m->audit_error)
                return audit_recover(m);
        if (!m->audit) {
                audit_set_error(m, -ENOTCONN);
                return -ENOTCONN;
        }
        r = cmek_audit_check_space(m->audit);
        if (r < 0)
                audit_set_error(m, r);
        return r;
}

int manager_audit_refuse(Manager *m, Call *c) {
        _cleanup_free_ char *path = NULL;
        (void) audit_path(m, &path);
        return call_errorf(c, CMEK_ERROR_AUDIT_UNAVAILABLE,
                           "The audit log %s cannot be written (%s), so cmekd refuses operations it cannot record. "
                           "Free space on (or repair) the file system holding it; service resumes by itself "
                           "once the log is writable. 'cmekctl status' shows the condition.",
                           strempty(path), strerror(-(m->audit_error ?: -EIO)));
}

int manager_audit(Manager *m, Call *c, const AuditRecord *rec) {
        const Caller *caller = c ? call_caller(c) : NULL;
        CmekAuditEntry e = {
                .event = rec->event, .operation = rec->operation, .result = rec->result ?: "ok",
                .key_id = rec->key_id, .old_state = rec->old_state, .new_state = rec->new_state,
                .volume = rec->volume, .detail = rec->detail,
        };
        int r;

        if (caller) {
                e.has_caller = true;
                e.uid = caller->uid;
                e.gid = caller->gid;
                e.pid = caller->pid;
        }
        if (m->audit_error)
                (void) audit_recover(m);
        if (m->audit_error || !m->audit) {
                /* still unavailable: the journal gets the record, the file does not (the gap is
                 * recorded by the "audit.resumed" line) */
                r = m->audit_error ?: -ENOTCONN;
                cmek_audit_journal_unwritten(&e, r);
        } else
                r = cmek_audit_append(m->audit, &e, cmek_now_usec());
        if (r < 0) {
                log_error_errno(r, "Failed to append to the audit log: %m");
                m->audit_lost++;
                audit_set_error(m, r);
                if (c)
                        call_set_audit_failed(c);
        }
        return r;
}


void manager_audit_describe(Manager *m, json_object *p) {
        _cleanup_free_ char *a = NULL;

        /* a status request is also a retry of an unavailable audit log */
        if (m->audit_error)
                (void) audit_recover(m);
        if (m->audit_error && asprintf(&a, "unavailable (%s)", strerror(-m->audit_error)) < 0)
                a = NULL;
        json_object_object_add(p, "audit", json_object_new_string(m->audit_error ? strempty(a) : "ok"));
        json_object_object_add(p, "audit_unwritten", json_object_new_int64((int64_t) m->audit_lost));
}

/* ---- denials: aggregated per uid, so that a caller without a grant cannot flood the log ----
 * The first DENIAL_BURST denials of a uid in a second get their own line; the rest of that
 * second are counted and written as one "policy.denied" line with "count" (when the second is
 * over: a timer, or that uid's next denial). Beyond DENIAL_UIDS distinct uids in one second,
 * the others share one bucket (uid -1). So a flood adds at most about DENIAL_BURST + 1 lines per
 * uid per second, whatever its rate. */
#define DENIAL_BURST 5U
#define DENIAL_UIDS 256U
#define DENIAL_WINDOW_USEC USEC_PER_SEC
#define ELEMENTSOF_DENIALS (DENIAL_UIDS + 1U)

struct Denials {
        uid_t uid;
        gid_t gid;
        pid_t pid;
        bool used;
        uint64_t window_start;  /* CLOCK_MONOTONIC */
        uint64_t window_realtime;
        unsigned written;       /* lines written in this window */
        uint64_t suppressed;    /* denials counted, not yet written */
        char operation[128];    /* the last suppressed one */
};

/* m->audit_glue.denials: ELEMENTSOF_DENIALS slots, the last one the shared overflow bucket;
 * allocated on the first denial, freed with the Manager. */

static void denial_flush_one(Manager *m, Denials *d) {
        _cleanup_free_ char *detail = NULL;
        char when[32] = "";
        time_t t = (time_t) (d->window_realtime / 1000000U);
        struct tm tm;

        if (d->suppressed == 0)
                return;
        if (gmtime_r(&t, &tm))
                (void) strftime(when, sizeof(when), "%Y-%m-%dT%H:%M:%SZ", &tm);
        if (d->uid == (uid_t) -1 ?
            asprintf(&detail, "%" PRIu64 " more denial(s) of other uids (more than %u uids denied) in the second from %s, aggregated (last: %s)",
                     d->suppressed, DENIAL_UIDS, when, d->operation) < 0 :
            asprintf(&detail, "%" PRIu64 " more denial(s) of uid %u in the second from %s, aggregated (last: %s)",
                     d->suppressed, (unsigned) d->uid, when, d->operation) < 0)
                detail = NULL;
        CmekAuditEntry e = {
                .event = "policy.denied", .operation = d->operation, .result = CMEK_ERROR_PERMISSION_DENIED,
                .has_caller = d->uid != (uid_t) -1, .uid = d->uid, .gid = d->gid, .pid = d->pid,
                .detail = detail ?: "aggregated denials", .count = d->suppressed,
        };
        d->suppressed = 0;
        if (m->audit && !m->audit_error) {
                if (cmek_audit_append(m->audit, &e, cmek_now_usec()) < 0)
                        m->audit_lost++;
        } else
                cmek_audit_journal_unwritten(&e, m->audit_error ?: -ENOTCONN);
}

static int on_denial_timer(sd_event_source *s, uint64_t usec, void *userdata) {
        Manager *m = userdata;
        uint64_t now = cmek_monotonic_usec();
        Denials *denials = m->audit_glue.denials;
        bool pending = false;

        m->audit_glue.denial_timer_armed = false;
        for (size_t i = 0; denials && i < ELEMENTSOF_DENIALS; i++) {
                Denials *d = &denials[i];
                if (!d->used)
                        continue;
                if (now - d->window_start >= DENIAL_WINDOW_USEC) {
                        denial_flush_one(m, d);
                        d->used = false;
                } else if (d->suppressed > 0)
                        pending = true;
        }
        if (pending && sd_event_add_time_relative(m->event, NULL, CLOCK_MONOTONIC, DENIAL_WINDOW_USEC / 4, 50000,
                                                  on_denial_timer, m) >= 0)
                m->audit_glue.denial_timer_armed = true;
        return 0;
}

/* true: write this denial's own line; false: it was counted. */
bool manager_audit_denial_admit(Manager *m, const Caller *caller, const char *operation) {
        uint64_t now = cmek_monotonic_usec();
        Denials *denials, *d = NULL, *free_slot = NULL;

        if (!m->audit_glue.denials)
                m->audit_glue.denials = calloc(ELEMENTSOF_DENIALS, sizeof(Denials));
        denials = m->audit_glue.denials;
        if (!denials)
                return true;    /* out of memory: the denial gets its own line */
        for (size_t i = 0; i < DENIAL_UIDS; i++) {
                if (denials[i].used && denials[i].uid == caller->uid) {
                        d = &denials[i];
                        break;
                }
                if (!free_slot && (!denials[i].used ||
                                   (denials[i].suppressed == 0 && now - denials[i].window_start >= DENIAL_WINDOW_USEC)))
                        free_slot = &denials[i];
        }
        if (!d) {
                d = free_slot ?: &denials[DENIAL_UIDS];
                if (d != &denials[DENIAL_UIDS] || !d->used) {
                        *d = (Denials) { .uid = free_slot ? caller->uid : (uid_t) -1, .used = true,
                                         .window_start = now, .window_realtime = cmek_now_usec() };
                }
        }
        if (now - d->window_start >= DENIAL_WINDOW_USEC) {
                denial_flush_one(m, d);
                d->window_start = now;
                d->window_realtime = cmek_now_usec();
                d->written = 0;
        }
        if (d->written < DENIAL_BURST && d != &denials[DENIAL_UIDS]) {
                d->written++;
                return true;
        }
        d->suppressed++;
        d->gid = caller->gid;
        d->pid = caller->pid;
        if (d == &denials[DENIAL_UIDS])
                d->uid = (uid_t) -1;
        (void) snprintf(d->operation, sizeof(d->operation), "%s", strempty(operation));
        if (!m->audit_glue.denial_timer_armed &&
            sd_event_add_time_relative(m->event, NULL, CLOCK_MONOTONIC, DENIAL_WINDOW_USEC, 50000,
                                       on_denial_timer, m) >= 0)
                m->audit_glue.denial_timer_armed = true;
        return false;
}

/* At exit: write what is still counted. */
void manager_audit_flush_denials(Manager *m) {
        Denials *denials = m->audit_glue.denials;

        for (size_t i = 0; denials && i < ELEMENTSOF_DENIALS; i++)
                if (denials[i].used)
                        denial_flush_one(m, &denials[i]);
}

/* ---- AuditShow/AuditVerify: off the event loop ----
 * Reading or verifying the whole log takes time proportional to its size; a worker thread does
 * it (one job at a time, AUDIT_JOBS_MAX waiting) on its own file descriptor, and posts the
 * finished job back through a pipe. The call stays open meanwhile; the loop keeps serving. */
#define AUDIT_JOBS_MAX 16U
#define AUDIT_SHOW_PAGE_DEFAULT 1000U
#define AUDIT_SHOW_PAGE_MAX 10000U

typedef struct AuditJob {
        Manager *manager;
        Call *call;
        bool verify;
        char *path;
        uint64_t since, cursor;
        unsigned limit;
        /* results */
        int r;
        unsigned n, bad;
        char *reason;
        CmekAuditVerifyInfo info;
        bool have_anchor;               /* the token's anchor when the verify was asked for */
        uint64_t anchor_seq;
        char anchor_hash[65];
        json_object *entries;
        uint64_t next;
        struct AuditJob *next_job;
} AuditJob;

static AuditJob *audit_jobs_head, *audit_jobs_tail;
static unsigned audit_jobs_n;
static bool audit_job_running;
static int audit_job_pipe[2] = { -1, -1 };
static sd_event_source *audit_job_source;

static AuditJob *audit_job_free(AuditJob *j) {
        if (!j)
                return NULL;
        call_unref(j->call);
        free(j->path);
        free(j->reason);
        free(j->info.discontinuity);
        json_object_put(j->entries);
        free(j);
        return NULL;
}

static void *audit_job_thread(void *userdata) {
        AuditJob *j = userdata;
        ssize_t n;

        if (j->verify)
                j->r = cmek_audit_verify_info(j->path, &j->info, &j->n, &j->bad, &j->reason);
        else
                j->r = cmek_audit_read_page(j->path, j->since, j->cursor, j->limit, &j->entries, &j->next);
        do
                n = write(audit_job_pipe[1], &j, sizeof(j));
        while (n < 0 && errno == EINTR);
        return NULL;
}

static void audit_job_start_next(Manager *m);

static void audit_job_reply(AuditJob *j) {
        Call *c = j->call;
        json_object *p = json_object_new_object();

        if (!call_is_open(c)) {
                /* the client went away: nothing to say */
        } else if (j->verify) {
                bool checked = false;

                /* the chain is intact: does the token agree (anchor, checkpoint HMACs)? */
                if (j->r >= 0) {
                        j->reason = audit_anchor_judge(j->manager, &j->info, j->have_anchor, j->anchor_seq,
                                                       j->anchor_hash, &checked);
                        if (j->reason) {
                                j->r = -EBADMSG;
                                j->bad = (unsigned) (j->info.last_seq + 1 < (uint64_t) j->n ? j->info.last_seq + 1 : j->n);
                        }
                }
                json_object_object_add(p, "checkpoints", json_object_new_int64(j->info.n_checkpoints));
                json_object_object_add(p, "anchored", json_object_new_boolean(checked));
                if (j->have_anchor)
                        json_object_object_add(p, "anchor_seq", json_object_new_int64((int64_t) j->anchor_seq));
                if (!checked)
                        json_object_object_add(p, "note", json_object_new_string(
                                audit_anchor_unavailable() ?: "no checkpoint key in the token: only the hash chain was checked"));
                json_object_object_add(p, "path", json_object_new_string(j->path));
                json_object_object_add(p, "lines", json_object_new_int64(j->n));
                json_object_object_add(p, "ok", json_object_new_boolean(j->r >= 0));
                if (j->r < 0) {
                        json_object_object_add(p, "bad_line", json_object_new_int64(j->bad));
                        json_object_object_add(p, "reason", json_object_new_string(j->reason ?: strerror(-j->r)));
                }
                (void) call_reply(c, TAKE_PTR(p));
        } else if (j->r == -EINVAL) {
                (void) call_errorf(c, VARLINK_ERROR_INVALID_PARAMETER, "\"cursor\" is not the start of a line of %s: "
                                   "use 0 or a next_cursor from an earlier reply", j->path);
        } else if (j->r < 0) {
                (void) call_errorf(c, CMEK_ERROR_INTERNAL, "Failed to read the audit log %s: %s", j->path, strerror(-j->r));
        } else {
                json_object_object_add(p, "entries", TAKE_PTR(j->entries));
                if (j->next > 0)
                        json_object_object_add(p, "next_cursor", json_object_new_int64((int64_t) j->next));
                (void) call_reply(c, TAKE_PTR(p));
        }
        json_object_put(p);
}

static int on_audit_job_done(sd_event_source *s, int fd, uint32_t revents, void *userdata) {
        Manager *m = userdata;
        AuditJob *j;
        ssize_t n;

        n = read(fd, &j, sizeof(j));
        if (n != (ssize_t) sizeof(j))
                return 0;
        audit_job_running = false;
        audit_job_reply(j);
        audit_job_free(j);
        audit_job_start_next(m);
        return 0;
}

static void audit_job_start_next(Manager *m) {
        pthread_attr_t attr;
        pthread_t t;
        AuditJob *j;
        int r;

        while (!audit_job_running && audit_jobs_head) {
                j = audit_jobs_head;
                audit_jobs_head = j->next_job;
                if (!audit_jobs_head)
                        audit_jobs_tail = NULL;
                audit_jobs_n--;
                if (!call_is_open(j->call)) {
                        audit_job_free(j);
                        continue;
                }
                r = pthread_attr_init(&attr);
                if (r == 0) {
                        (void) pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
                        r = pthread_create(&t, &attr, audit_job_thread, j);
                        (void) pthread_attr_destroy(&attr);
                }
                if (r != 0) {
                        (void) call_errorf(j->call, CMEK_ERROR_INTERNAL, "Failed to start reading the audit log: %s", strerror(r));
                        audit_job_free(j);
                        continue;
                }
                audit_job_running = true;
        }
}

/* Takes ownership of j. */
static int audit_job_submit(Manager *m, Call *c, AuditJob *j) {
        int r;

        if (audit_job_pipe[0] < 0) {
                if (pipe2(audit_job_pipe, O_CLOEXEC) < 0) {
                        audit_job_free(j);
                        return -errno;
                }
                r = sd_event_add_io(m->event, &audit_job_source, audit_job_pipe[0], EPOLLIN, on_audit_job_done, m);
                if (r < 0) {
                        audit_job_free(j);
                        return r;
                }
        }
        if (audit_jobs_n >= AUDIT_JOBS_MAX) {
                audit_job_free(j);
                return call_errorf(c, CMEK_ERROR_BUSY, "%u audit log reads are already waiting: try again later", audit_jobs_n);
        }
        j->manager = m;
        j->call = call_ref(c);
        if (audit_jobs_tail)
                audit_jobs_tail->next_job = j;
        else
                audit_jobs_head = j;
        audit_jobs_tail = j;
        audit_jobs_n++;
        audit_job_start_next(m);
        return 0;
}

void manager_audit_jobs_done(Manager *m) {
        /* a running thread may still post: leave its pipe open (the process is exiting) */
        audit_job_source = sd_event_source_disable_unref(audit_job_source);
        while (audit_jobs_head) {
                AuditJob *j = audit_jobs_head;
                audit_jobs_head = j->next_job;
                audit_job_free(j);
        }
        audit_jobs_tail = NULL;
        audit_jobs_n = 0;
}

int manager_method_audit_show(Manager *m, Call *c, json_object *params) {
        AuditJob *j;
        int64_t since = 0, cursor = 0, limit = AUDIT_SHOW_PAGE_DEFAULT;
        int r;

        r = manager_authorize(m, c, "read", "audit", NULL, NULL, NULL);
        if (r < 0)
                return r;
        (void) cmek_json_get_int64(params, "since_usec", &since);
        (void) cmek_json_get_int64(params, "cursor", &cursor);
        (void) cmek_json_get_int64(params, "limit", &limit);
        if (cursor < 0 || limit < 1 || limit > AUDIT_SHOW_PAGE_MAX)
                return call_errorf(c, VARLINK_ERROR_INVALID_PARAMETER,
                                   "\"cursor\" must be >= 0 and \"limit\" 1-%u", AUDIT_SHOW_PAGE_MAX);
        j = calloc(1, sizeof(*j));
        if (!j)
                return -ENOMEM;
        r = audit_path(m, &j->path);
        if (r < 0) {
                free(j);
                return r;
        }
        j->since = (uint64_t) (since > 0 ? since : 0);
        j->cursor = (uint64_t) cursor;
        j->limit = (unsigned) limit;
        return audit_job_submit(m, c, j);
}

int manager_method_audit_verify(Manager *m, Call *c, json_object *params) {
        AuditJob *j;
        int r;

        r = manager_authorize(m, c, "read", "audit", NULL, NULL, NULL);
        if (r < 0)
                return r;
        j = calloc(1, sizeof(*j));
        if (!j)
                return -ENOMEM;
        j->verify = true;
        j->have_anchor = audit_anchor_get(&j->anchor_seq, j->anchor_hash);
        j->info.want_seq = j->have_anchor ? j->anchor_seq : 0;
        /* what is complete now (written, maybe not yet synced): lines appended during the verify
         * are for the next one, and are never seen half-written */
        j->info.max_bytes = cmek_audit_get_size(m->audit);
        r = audit_path(m, &j->path);
        if (r < 0) {
                free(j);
                return r;
        }
        return audit_job_submit(m, c, j);
}

