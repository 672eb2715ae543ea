/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* Event hooks: every executable in the hooks directory gets each event as JSON on stdin.
 * Hooks run in the background with a time limit; a hook that hangs or fails is logged and
 * killed, and never delays enforcement (the volume module acts before events are emitted). */
#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include "cmek-varlink.h"
#include "daemon.h"

#define HOOK_TIMEOUT_DEFAULT_USEC (10ULL * 1000000ULL)
#define HOOKS_MAX_RUNNING 32U
#define HOOKS_MAX_QUEUED 4096U

/* A run waiting for a free slot: a burst of events (one volume.locked per volume) must reach
 * every hook, in order, without forking hundreds of processes at once. */
typedef struct HookRun {
        char *path, *json;
        char *type;             /* the event's type, for coalescing */
        bool critical;          /* key.* and volume.locked: never dropped */
        struct HookRun *next;
} HookRun;

typedef struct Hook {
        Manager *manager;
        char *path;
        pid_t pid;
        sd_event_source *child, *timeout;
        struct Hook *prev, *next;
} Hook;

static unsigned n_running, n_queued;
static HookRun *queue_head, *queue_tail;
/* Runs of non-critical events dropped (or replaced by a newer run of the same event type) while
 * the queue was full, since the last audit record about it: one record per second at most. */
static uint64_t n_dropped;
static sd_event_source *drop_report;
static Hook *running;
static uint64_t hook_timeout_usec;

/* "[events] hook-timeout = SECONDS" in cmekd.conf (1 to 3600; default 10), read once. */
static uint64_t hook_timeout(Manager *m) {
        _cleanup_fclose_ FILE *f = NULL;
        _cleanup_free_ char *line = NULL;
        size_t alloc = 0;
        bool in = false;

        if (hook_timeout_usec > 0)
                return hook_timeout_usec;
        hook_timeout_usec = HOOK_TIMEOUT_DEFAULT_USEC;
        f = m->config_path ? fopen(m->config_path, "re") : NULL;
        while (f && getline(&line, &alloc, f) >= 0) {
                char key[64], value[64];
                line[strcspn(line, "\n")] = 0;
                if (sscanf(line, " [%63[^]]]", key) == 1) {
                        in = streq(key, "events");
                        continue;
                }
                if (!in || sscanf(line, " %63[^=# \t] = %63s", key, value) != 2)
                        continue;
                if (streq(key, "hook-timeout")) {
                        char *end;
                        double sec = strtod(value, &end);
                        if (*end || !(sec >= 1 && sec <= 3600))
                                log_warning("%s: [events] hook-timeout is seconds between 1 and 3600, not '%s', ignoring.",
                                            m->config_path, value);
                        else
                                hook_timeout_usec = (uint64_t) (sec * 1e6);
                } else
                        log_warning("%s: unknown setting '%s' in [events], ignoring.", m->config_path, key);
        }
        return hook_timeout_usec;
}
static sd_event_source *drain_source;

static void spawn_one(Manager *m, const char *path, const char *json);

static void hook_run_free(HookRun *q) {
        if (!q)
                return;
        free(q->path);
        free(q->json);
        free(q->type);
        free(q);
}

/* The queue's capacity for non-critical runs: HOOKS_MAX_QUEUED, or in a test-hooks build started
 * with --test-hooks, $CMEKD_TEST_HOOK_QUEUE_MAX (so that a test fills it with a few events). */
static unsigned queue_max(Manager *m) {
        const char *e;
        unsigned long v;
        char *end;

        if (!ENABLE_TEST_HOOKS || !m->test_hooks || !(e = getenv("CMEKD_TEST_HOOK_QUEUE_MAX")))
                return HOOKS_MAX_QUEUED;
        v = strtoul(e, &end, 10);
        return *end || v < 1 || v > HOOKS_MAX_QUEUED ? HOOKS_MAX_QUEUED : (unsigned) v;
}

static int on_drop_report(sd_event_source *s, uint64_t usec, void *userdata) {
        Manager *m = userdata;
        char detail[200];

        if (n_dropped == 0)
                return 0;
        snprintf(detail, sizeof(detail),
                 "%llu hook run(s) of non-critical events dropped or coalesced: the hook queue was full "
                 "(%u runs waiting; key.* and volume.locked events are never dropped)",
                 (unsigned long long) n_dropped, n_queued);
        log_warning("%s.", detail);
        n_dropped = 0;
        (void) manager_audit(m, NULL, &(AuditRecord) {
                .event = "hooks.dropped", .operation = "hooks", .result = "dropped", .detail = detail });
        return 0;
}

/* Counts a dropped run; the count is audited in one record a second later (not one per drop:
 * a flood of events must not become a flood of audit lines). */
static void note_dropped(Manager *m) {
        n_dropped++;
        if (!drop_report &&
            sd_event_add_time_relative(m->event, &drop_report, CLOCK_MONOTONIC, 1000000ULL, 100000ULL,
                                       on_drop_report, m) < 0) {
                (void) on_drop_report(NULL, 0, m);
                return;
        }
        if (drop_report && sd_event_source_get_enabled(drop_report, NULL) == 0) {
                (void) sd_event_source_set_time_relative(drop_report, 1000000ULL);
                (void) sd_event_source_set_enabled(drop_report, SD_EVENT_ONESHOT);
        }
}

static bool event_is_critical(const char *type) {
        /* what enforcement and key custody are watched through: never dropped */
        return type && (strncmp(type, "key.", 4) == 0 || streq(type, "volume.locked"));
}

/* Starts the oldest waiting runs while there are free slots. */
static void queue_drain(Manager *m) {
        while (queue_head && n_running < HOOKS_MAX_RUNNING) {
                HookRun *q = queue_head;
                queue_head = q->next;
                if (!queue_head)
                        queue_tail = NULL;
                n_queued--;
                spawn_one(m, q->path, q->json);
                hook_run_free(q);
        }
}

static int on_drain(sd_event_source *s, void *userdata) {
        queue_drain(userdata);
        return 0;
}

static void hook_release(Hook *h) {
        if (h->prev)
                h->prev->next = h->next;
        else
                running = h->next;
        if (h->next)
                h->next->prev = h->prev;
        sd_event_source_disable_unref(h->child);
        sd_event_source_disable_unref(h->timeout);
        free(h->path);
        free(h);
        n_running--;
}

static void hook_free(Hook *h) {
        Manager *m = h->manager;

        hook_release(h);
        /* a slot is free: start the oldest waiting run */
        queue_drain(m);
}

/* Unlinks and returns the oldest queued non-critical run (of path and type when given). */
static HookRun *queue_take_noncritical(const char *path, const char *type, bool newest) {
        HookRun *found = NULL, *found_prev = NULL, *prev = NULL;

        for (HookRun *q = queue_head; q; prev = q, q = q->next)
                if (!q->critical && (!path || streq(q->path, path)) && (!type || streq_ptr(q->type, type))) {
                        found = q;
                        found_prev = prev;
                        if (!newest)
                                break;
                }
        if (!found)
                return NULL;
        if (found_prev)
                found_prev->next = found->next;
        else
                queue_head = found->next;
        if (queue_tail == found)
                queue_tail = found_prev;
        found->next = NULL;
        n_queued--;
        return found;
}

static void queue_append(HookRun *q) {
        if (queue_tail)
                queue_tail->next = q;
        else
                queue_head = q;
        queue_tail = q;
        n_queued++;
}

/* A full queue never loses a critical run: one non-critical run makes room (or, when every
 * waiting run is critical, the queue grows past its capacity: those come from authorized state
 * changes, a few per volume). A non-critical run in a full queue replaces the waiting run of the
 * same hook for the same event type (the hook gets the newest), else it is dropped; either way
 * it is counted and audited once a second. */
static void queue_run(Manager *m, const char *path, const char *json, const char *type) {
        bool critical = event_is_critical(type);
        HookRun *q;

        if (n_queued >= queue_max(m)) {
                HookRun *old = queue_take_noncritical(critical ? NULL : path, critical ? NULL : type,
                                                      /* newest= */ !critical);
                if (!critical && !old) {
                        note_dropped(m);
                        return;
                }
                if (old) {
                        note_dropped(m);
                        hook_run_free(old);
                }
        }
        q = calloc(1, sizeof(*q));
        if (!q || !(q->path = strdup(path)) || !(q->json = strdup(json)) || (type && !(q->type = strdup(type)))) {
                hook_run_free(q);
                log_error("Out of memory: hook %s not run for a %s event.", path, type ?: "?");
                return;
        }
        q->critical = critical;
        queue_append(q);
}

static int on_hook_exit(sd_event_source *s, const siginfo_t *si, void *userdata) {
        Hook *h = userdata;
        if (si->si_code == CLD_EXITED && si->si_status == 0)
                log_debug("Hook %s finished.", h->path);
        else if (si->si_code == CLD_EXITED)
                log_warning("Hook %s failed with exit status %d, ignoring.", h->path, si->si_status);
        else
                log_warning("Hook %s was killed by signal %d, ignoring.", h->path, si->si_status);
        hook_free(h);
        return 0;
}

static int on_hook_timeout(sd_event_source *s, uint64_t usec, void *userdata) {
        Hook *h = userdata;
        log_warning("Hook %s did not finish within %llu s, killing it.", h->path,
                    (unsigned long long) (hook_timeout_usec / 1000000ULL));
        (void) kill(h->pid, SIGKILL);
        return 0;
}

/* posix_spawn(), not fork(): glibc starts the child with CLONE_VM|CLONE_VFORK, no copy of the
 * daemon's page tables (under emulation a fork cost ~0.1 s, times hooks times events). */
static void spawn_one(Manager *m, const char *path, const char *json) {
        posix_spawn_file_actions_t fa;
        posix_spawnattr_t attr;
        sigset_t none, def;
        char *argv[] = { (char *) path, NULL };
        int pipefd[2], r;
        Hook *h;
        pid_t pid;

        if (pipe2(pipefd, O_CLOEXEC) < 0)
                return;
        sigemptyset(&none);
        sigemptyset(&def);
        sigaddset(&def, SIGPIPE);
        sigaddset(&def, SIGCHLD);
        r = posix_spawn_file_actions_init(&fa);
        if (r == 0) {
                r = posix_spawnattr_init(&attr);
                if (r != 0)
                        (void) posix_spawn_file_actions_destroy(&fa);
        }
        if (r == 0) {
                if ((r = posix_spawn_file_actions_adddup2(&fa, pipefd[0], STDIN_FILENO)) == 0 &&
                    (r = posix_spawn_file_actions_addopen(&fa, STDOUT_FILENO, "/dev/null", O_WRONLY, 0)) == 0 &&
                    (r = posix_spawnattr_setsigmask(&attr, &none)) == 0 &&
                    (r = posix_spawnattr_setsigdefault(&attr, &def)) == 0 &&
                    (r = posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF)) == 0)
                        r = posix_spawn(&pid, path, &fa, &attr, argv, environ);
                (void) posix_spawn_file_actions_destroy(&fa);
                (void) posix_spawnattr_destroy(&attr);
        }
        (void) close(pipefd[0]);
        if (r != 0) {
                log_warning_errno(-r, "Failed to start hook %s: %m", path);
                (void) close(pipefd[1]);
                return;
        }
        /* events are far smaller than a pipe buffer: this never blocks */
        (void) fcntl(pipefd[1], F_SETFL, O_NONBLOCK);
        if (write(pipefd[1], json, strlen(json)) < 0)
                log_debug_errno(errno, "Failed to give the event to hook %s: %m", path);
        (void) close(pipefd[1]);

        h = calloc(1, sizeof(*h));
        if (!h) {
                (void) kill(pid, SIGKILL);
                return;
        }
        h->manager = m;
        h->pid = pid;
        h->path = strdup(path);
        h->next = running;
        if (running)
                running->prev = h;
        running = h;
        n_running++;
        if (sd_event_add_child(m->event, &h->child, pid, WEXITED, on_hook_exit, h) < 0 ||
            sd_event_add_time_relative(m->event, &h->timeout, CLOCK_MONOTONIC, hook_timeout(m), 0,
                                       on_hook_timeout, h) < 0) {
                (void) kill(pid, SIGKILL);
                (void) waitpid(pid, NULL, 0);
                hook_free(h);
        }
}

void events_run_hooks(Manager *m, json_object *event) {
        struct dirent **names = NULL;
        const char *json, *type;
        int n;

        if (!m->hooks_dir || !m->event)
                return;
        n = scandir(m->hooks_dir, &names, NULL, alphasort);
        if (n < 0)
                return; /* no hooks directory: nothing to run */
        json = json_object_to_json_string_ext(event, JSON_C_TO_STRING_PLAIN);
        type = cmek_json_get_string(event, "type");
        for (int i = 0; i < n; i++) {
                _cleanup_free_ char *path = NULL;
                struct stat st;

                if (names[i]->d_name[0] != '.' &&
                    asprintf(&path, "%s/%s", m->hooks_dir, names[i]->d_name) >= 0 &&
                    stat(path, &st) >= 0 && S_ISREG(st.st_mode) && (st.st_mode & 0111))
                        queue_run(m, path, json, type);
                free(names[i]);
        }
        free(names);
        /* started from the event loop, once the current request is answered: enforcement and
         * the reply never wait for hooks to be spawned */
        if (queue_head) {
                if (!drain_source) {
                        if (sd_event_add_defer(m->event, &drain_source, on_drain, m) < 0) {
                                queue_drain(m);
                                return;
                        }
                }
                (void) sd_event_source_set_enabled(drain_source, SD_EVENT_ONESHOT);
        }
}

/* At exit: drop the runs that never got a slot and forget the running ones. */
void events_hooks_done(void) {
        drain_source = sd_event_source_disable_unref(drain_source);
        drop_report = sd_event_source_disable_unref(drop_report);
        if (n_dropped > 0)
                log_warning("%llu hook run(s) dropped while the queue was full since the last report.",
                            (unsigned long long) n_dropped);
        n_dropped = 0;
        /* hooks still running finish on their own; only our bookkeeping goes */
        while (running)
                hook_release(running);
        while (queue_head) {
                HookRun *q = queue_head;
                queue_head = q->next;
                hook_run_free(q);
        }
        queue_tail = NULL;
        n_queued = 0;
}
