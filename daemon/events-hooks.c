/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* Event hooks: every executable in the hooks directory gets each event as JSON on stdin.
 * Hooks run in the background with a time limit; a hook that hangs or fails is logged and
 * killed, and never delays enforcement (the volume module acts before events are emitted).
 * A hook runs as root but with nothing else: the directory and the file must be root-owned, not
 * writable by group or others and not symlinks (anything else is skipped with a warning); the
 * process gets an empty environment plus PATH and CMEK_* variables describing the event, no
 * capabilities, no_new_privs, stdin the event, stdout /dev/null, no other inherited descriptor. */
#include <dirent.h>
#include <fcntl.h>
#include <inttypes.h>
#include <linux/capability.h>
#include <sched.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>

#include "cmek-varlink.h"
#include "config.h"
#include "daemon.h"

#define HOOKS_MAX_RUNNING 32U
#define HOOKS_MAX_QUEUED 4096U

/* A run waiting for a free slot: a burst of events (one volume.locked per volume) must reach
 * every hook, in order, without forking hundreds of processes at once. */
struct HookRun {
        char *path, *json;
        char *type;             /* the event's type, for coalescing */
        bool critical;          /* key.* and volume.locked: never dropped */
        struct HookRun *next;
};

struct Hook {
        Manager *manager;
        char *path;
        pid_t pid;
        sd_event_source *child, *timeout;
        struct Hook *prev, *next;
};

/* The queue, the running hooks and the drop count are m->hooks (daemon/manager.h). */

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

        if (m->hooks.n_dropped == 0)
                return 0;
        snprintf(detail, sizeof(detail),
                 "%llu hook run(s) of non-critical events dropped or coalesced: the hook queue was full "
                 "(%u runs waiting; key.* and volume.locked events are never dropped)",
                 (unsigned long long) m->hooks.n_dropped, m->hooks.n_queued);
        log_warning("%s.", detail);
        m->hooks.n_dropped = 0;
        (void) manager_audit(m, NULL, &(AuditRecord) {
                .event = "hooks.dropped", .operation = "hooks", .result = "dropped", .detail = detail });
        return 0;
}

/* Counts a dropped run; the count is audited in one record a second later (not one per drop:
 * a flood of events must not become a flood of audit lines). */
static void note_dropped(Manager *m) {
        m->hooks.n_dropped++;
        if (!m->hooks.drop_report &&
            sd_event_add_time_relative(m->event, &m->hooks.drop_report, CLOCK_MONOTONIC, USEC_PER_SEC, 100000ULL,
                                       on_drop_report, m) < 0) {
                (void) on_drop_report(NULL, 0, m);
                return;
        }
        if (m->hooks.drop_report && sd_event_source_get_enabled(m->hooks.drop_report, NULL) == 0) {
                (void) sd_event_source_set_time_relative(m->hooks.drop_report, USEC_PER_SEC);
                (void) sd_event_source_set_enabled(m->hooks.drop_report, SD_EVENT_ONESHOT);
        }
}

static bool event_is_critical(const char *type) {
        /* what enforcement and key custody are watched through: never dropped */
        return type && (strncmp(type, "key.", 4) == 0 || streq(type, "volume.locked"));
}

/* Starts the oldest waiting runs while there are free slots. */
static void queue_drain(Manager *m) {
        while (m->hooks.queue_head && m->hooks.n_running < HOOKS_MAX_RUNNING) {
                HookRun *q = m->hooks.queue_head;
                m->hooks.queue_head = q->next;
                if (!m->hooks.queue_head)
                        m->hooks.queue_tail = NULL;
                m->hooks.n_queued--;
                spawn_one(m, q->path, q->json);
                hook_run_free(q);
        }
}

static int on_drain(sd_event_source *s, void *userdata) {
        queue_drain(userdata);
        return 0;
}

static void hook_release(Hook *h) {
        Manager *m = h->manager;

        if (h->prev)
                h->prev->next = h->next;
        else
                m->hooks.running = h->next;
        if (h->next)
                h->next->prev = h->prev;
        sd_event_source_disable_unref(h->child);
        sd_event_source_disable_unref(h->timeout);
        free(h->path);
        free(h);
        m->hooks.n_running--;
}

static void hook_free(Hook *h) {
        Manager *m = h->manager;

        hook_release(h);
        /* a slot is free: start the oldest waiting run */
        queue_drain(m);
}

/* Unlinks and returns the oldest queued non-critical run (of path and type when given). */
static HookRun *queue_take_noncritical(Manager *m, const char *path, const char *type, bool newest) {
        HookRun *found = NULL, *found_prev = NULL, *prev = NULL;

        for (HookRun *q = m->hooks.queue_head; q; prev = q, q = q->next)
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
                m->hooks.queue_head = found->next;
        if (m->hooks.queue_tail == found)
                m->hooks.queue_tail = found_prev;
        found->next = NULL;
        m->hooks.n_queued--;
        return found;
}

static void queue_append(Manager *m, HookRun *q) {
        if (m->hooks.queue_tail)
                m->hooks.queue_tail->next = q;
        else
                m->hooks.queue_head = q;
        m->hooks.queue_tail = q;
        m->hooks.n_queued++;
}

/* A full queue never loses a critical run: one non-critical run makes room (or, when every
 * waiting run is critical, the queue grows past its capacity: those come from authorized state
 * changes, a few per volume). A non-critical run in a full queue replaces the waiting run of the
 * same hook for the same event type (the hook gets the newest), else it is dropped; either way
 * it is counted and audited once a second. */
static void queue_run(Manager *m, const char *path, const char *json, const char *type) {
        bool critical = event_is_critical(type);
        HookRun *q;

        if (m->hooks.n_queued >= queue_max(m)) {
                HookRun *old = queue_take_noncritical(m, critical ? NULL : path, critical ? NULL : type,
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
        queue_append(m, q);
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
        log_warning("Hook %s did not finish within %.1f s ([events] hook-timeout=), killing it.", h->path,
                    h->manager->config->hook_timeout_usec / 1e6);
        (void) kill(h->pid, SIGKILL);
        return 0;
}

/* Why a hook (fd: the hooks directory, name: the entry, or name NULL for the directory itself)
 * may not run, or NULL. lstat semantics: a symlink is refused, never followed. */
static const char *hook_refusal(int dfd, const char *name, bool *ret_silent) {
        struct stat st;

        *ret_silent = false;
        if (fstatat(dfd, name ?: "", &st, AT_SYMLINK_NOFOLLOW | (name ? 0 : AT_EMPTY_PATH)) < 0)
                return "cannot be examined";
        if (S_ISLNK(st.st_mode))
                return "is a symbolic link (hooks must be regular files in the hooks directory)";
        if (!name ? !S_ISDIR(st.st_mode) : !S_ISREG(st.st_mode) || !(st.st_mode & 0111)) {
                *ret_silent = !!name; /* a README or a subdirectory: not a hook, no warning */
                return "is not a directory";
        }
        if (st.st_uid != 0)
                return "is not owned by root";
        if (st.st_mode & 0022)
                return "is writable by group or others";
        return NULL;
}

/* The hooks directory, opened without following a symlink and checked; -errno after a warning. */
static int hooks_dir_open(Manager *m) {
        _cleanup_close_ int dfd = -1;
        const char *why;
        bool silent;

        dfd = open(m->hooks_dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC | O_NOFOLLOW);
        if (dfd < 0) {
                if (errno == ELOOP || errno == ENOTDIR)
                        log_warning("Hooks directory %s is a symbolic link or not a directory, running no hooks.",
                                    m->hooks_dir);
                return -errno; /* ENOENT: no hooks directory, nothing to run */
        }
        why = hook_refusal(dfd, NULL, &silent);
        if (why) {
                log_warning("Hooks directory %s %s, running no hooks: make it root-owned and mode 0755 or stricter.",
                            m->hooks_dir, why);
                return -EPERM;
        }
        return TAKE_FD(dfd);
}

/* Everything the child needs, prepared before the clone: the child only makes system calls. */
typedef struct HookExec {
        const char *path;
        char *const *argv, *const *envp;
        int stdin_fd, null_fd;
        int err;                /* set by the child when it could not exec; seen by the parent */
        const char *failed;     /* what failed */
} HookExec;

/* Runs in the clone()d child on its own stack, sharing the daemon's memory until the exec: system
 * calls only (no malloc, no locks, no stdio); not instrumented by ASan (a foreign stack). */
__attribute__((no_sanitize_address))
static int hook_child(void *userdata) {
        HookExec *x = userdata;
        struct __user_cap_header_struct hdr = { .version = _LINUX_CAPABILITY_VERSION_3, .pid = 0 };
        struct __user_cap_data_struct data[_LINUX_CAPABILITY_U32S_3] = {};
        struct sigaction dfl = { .sa_handler = SIG_DFL };
        sigset_t none;

        (void) sigaction(SIGPIPE, &dfl, NULL);
        (void) sigaction(SIGCHLD, &dfl, NULL);
        sigemptyset(&none);
        (void) sigprocmask(SIG_SETMASK, &none, NULL);
        if (dup2(x->stdin_fd, STDIN_FILENO) < 0 || dup2(x->null_fd, STDOUT_FILENO) < 0) {
                x->failed = "set up stdin/stdout";
                goto fail;
        }
        /* nothing of the daemon's beyond stdin, stdout and stderr (the journal) */
        if (syscall(SYS_close_range, 3U, ~0U, 0U) < 0)
                for (int fd = 3; fd < 65536; fd++)
                        (void) close(fd);
        /* no capabilities: the bounding set dropped where we may (CAP_SETPCAP), the ambient set
         * cleared, then no_new_privs and an empty permitted set, so that the exec of a root-owned
         * file cannot give any back (the kernel caps a no_new_privs exec to the old permitted set) */
        (void) prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0);
        for (unsigned long cap = 0; cap < 64; cap++) {
                int r = prctl(PR_CAPBSET_READ, cap, 0, 0, 0);
                if (r < 0)
                        break;
                if (r > 0)
                        (void) prctl(PR_CAPBSET_DROP, cap, 0, 0, 0);
        }
        if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0) {
                x->failed = "set no_new_privs";
                goto fail;
        }
        if (syscall(SYS_capset, &hdr, data) < 0) {
                x->failed = "drop capabilities";
                goto fail;
        }
        execve(x->path, x->argv, x->envp);
        x->failed = "execute it";
fail:
        x->err = errno ?: EPERM;
        _exit(127);
}

/* The hook's environment: PATH, CMEK_EVENT, CMEK_EVENT_TIME_USEC and CMEK_<FIELD> for the
 * event's scalar data fields (names [a-z0-9_], values without control characters). */
#define HOOK_ENV_MAX 24
static void hook_env(const char *json, char **env, size_t *n) {
        json_object *ev = json_tokener_parse(json), *data = NULL;
        const char *type = cmek_json_get_string(ev, "type");
        int64_t t;

        *n = 0;
        if (asprintf(&env[*n], "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin") >= 0)
                (*n)++;
        if (type && !cmek_string_has_cc(type) && asprintf(&env[*n], "CMEK_EVENT=%s", type) >= 0)
                (*n)++;
        if (cmek_json_get_int64(ev, "time_usec", &t) && asprintf(&env[*n], "CMEK_EVENT_TIME_USEC=%" PRIi64, t) >= 0)
                (*n)++;
        if (ev && json_object_object_get_ex(ev, "data", &data) && json_object_is_type(data, json_type_object)) {
                json_object_object_foreach(data, k, v) {
                        char name[64];
                        const char *val;
                        size_t i;

                        if (*n >= HOOK_ENV_MAX - 1)
                                break;
                        if (!json_object_is_type(v, json_type_string) && !json_object_is_type(v, json_type_int) &&
                            !json_object_is_type(v, json_type_boolean))
                                continue;
                        for (i = 0; k[i] && i < sizeof(name) - 1; i++) {
                                if (!((k[i] >= 'a' && k[i] <= 'z') || (k[i] >= '0' && k[i] <= '9') || k[i] == '_'))
                                        break;
                                name[i] = (char) (k[i] >= 'a' && k[i] <= 'z' ? k[i] - 'a' + 'A' : k[i]);
                        }
                        if (i == 0 || k[i])
                                continue;
                        name[i] = 0;
                        val = json_object_get_string(v);
                        if (!val || cmek_string_has_cc(val) || streq(name, "EVENT") || streq(name, "EVENT_TIME_USEC"))
                                continue;
                        if (asprintf(&env[*n], "CMEK_%s=%s", name, val) >= 0)
                                (*n)++;
                }
        }
        env[*n] = NULL;
        json_object_put(ev);
}

/* clone(CLONE_VM|CLONE_VFORK), as posix_spawn() does, not fork(): no copy of the daemon's page
 * tables (under emulation a fork cost ~0.1 s, times hooks times events); unlike posix_spawn the
 * child can drop capabilities and set no_new_privs before the exec. */
static void spawn_one(Manager *m, const char *path, const char *json) {
        static char stack[64 * 1024] __attribute__((aligned(16)));
        char *argv[] = { (char *) path, NULL }, *env[HOOK_ENV_MAX] = {};
        _cleanup_close_ int dfd = -1, null_fd = -1;
        const char *slash = strrchr(path, '/'), *why;
        HookExec x = {};
        size_t n_env = 0;
        int pipefd[2];
        bool silent;
        Hook *h;
        pid_t pid;

        /* checked again now: the run may have waited in the queue */
        dfd = hooks_dir_open(m);
        if (dfd < 0)
                return;
        why = hook_refusal(dfd, slash ? slash + 1 : path, &silent);
        if (why) {
                if (!silent)
                        log_warning("Hook %s %s, not running it.", path, why);
                return;
        }
        null_fd = open("/dev/null", O_WRONLY | O_CLOEXEC);
        if (null_fd < 0 || pipe2(pipefd, O_CLOEXEC) < 0) {
                log_warning_errno(errno, "Failed to start hook %s: %m", path);
                return;
        }
        hook_env(json, env, &n_env);
        x = (HookExec) { .path = path, .argv = argv, .envp = env, .stdin_fd = pipefd[0], .null_fd = null_fd };
        pid = clone(hook_child, stack + sizeof(stack), CLONE_VM | CLONE_VFORK | SIGCHLD, &x);
        for (size_t i = 0; i < n_env; i++)
                free(env[i]);
        (void) close(pipefd[0]);
        if (pid < 0 || x.err) {
                if (pid < 0)
                        log_warning_errno(errno, "Failed to start hook %s: %m", path);
                else {
                        log_warning_errno(x.err, "Failed to start hook %s: could not %s: %m", path, x.failed);
                        (void) waitpid(pid, NULL, 0);
                }
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
        h->next = m->hooks.running;
        if (m->hooks.running)
                m->hooks.running->prev = h;
        m->hooks.running = h;
        m->hooks.n_running++;
        if (sd_event_add_child(m->event, &h->child, pid, WEXITED, on_hook_exit, h) < 0 ||
            sd_event_add_time_relative(m->event, &h->timeout, CLOCK_MONOTONIC, m->config->hook_timeout_usec, 0,
                                       on_hook_timeout, h) < 0) {
                (void) kill(pid, SIGKILL);
                (void) waitpid(pid, NULL, 0);
                hook_free(h);
        }
}

void events_run_hooks(Manager *m, json_object *event) {
        struct dirent **names = NULL;
        _cleanup_close_ int dfd = -1;
        const char *json, *type;
        int n;

        if (!m->hooks_dir || !m->event)
                return;
        dfd = hooks_dir_open(m);
        if (dfd < 0)
                return; /* no hooks directory (or a refused one, logged): nothing to run */
        n = scandirat(dfd, ".", &names, NULL, alphasort);
        if (n < 0)
                return;
        json = json_object_to_json_string_ext(event, JSON_C_TO_STRING_PLAIN);
        type = cmek_json_get_string(event, "type");
        for (int i = 0; i < n; i++) {
                _cleanup_free_ char *path = NULL;
                const char *why;
                bool silent;

                if (names[i]->d_name[0] != '.') {
                        why = hook_refusal(dfd, names[i]->d_name, &silent);
                        if (why && !silent)
                                log_warning("Hook %s/%s %s, not running it: hooks must be root-owned executables, "
                                            "not writable by group or others.", m->hooks_dir, names[i]->d_name, why);
                        if (!why && asprintf(&path, "%s/%s", m->hooks_dir, names[i]->d_name) >= 0)
                                queue_run(m, path, json, type);
                }
                free(names[i]);
        }
        free(names);
        /* started from the event loop, once the current request is answered: enforcement and
         * the reply never wait for hooks to be spawned */
        if (m->hooks.queue_head) {
                if (!m->hooks.drain_source) {
                        if (sd_event_add_defer(m->event, &m->hooks.drain_source, on_drain, m) < 0) {
                                queue_drain(m);
                                return;
                        }
                }
                (void) sd_event_source_set_enabled(m->hooks.drain_source, SD_EVENT_ONESHOT);
        }
}

/* At exit: drop the runs that never got a slot and forget the running ones. */
void events_hooks_done(Manager *m) {
        m->hooks.drain_source = sd_event_source_disable_unref(m->hooks.drain_source);
        m->hooks.drop_report = sd_event_source_disable_unref(m->hooks.drop_report);
        if (m->hooks.n_dropped > 0)
                log_warning("%llu hook run(s) dropped while the queue was full since the last report.",
                            (unsigned long long) m->hooks.n_dropped);
        m->hooks.n_dropped = 0;
        /* hooks still running finish on their own; only our bookkeeping goes */
        while (m->hooks.running)
                hook_release(m->hooks.running);
        while (m->hooks.queue_head) {
                HookRun *q = m->hooks.queue_head;
                m->hooks.queue_head = q->next;
                hook_run_free(q);
        }
        m->hooks.queue_tail = NULL;
        m->hooks.n_queued = 0;
}
