/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* Event hooks: every executable in the hooks directory gets each event as JSON on stdin.
 * Hooks run in the background with a time limit; a hook that hangs or fails is logged and
 * killed, and never delays enforcement (the volume module acts before events are emitted). */
#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include "daemon.h"

#define HOOK_TIMEOUT_USEC (10ULL * 1000000ULL)
#define HOOKS_MAX_RUNNING 32U
#define HOOKS_MAX_QUEUED 4096U

/* A run waiting for a free slot: a burst of events (one volume.locked per volume) must reach
 * every hook, in order, without forking hundreds of processes at once. */
typedef struct HookRun {
        char *path, *json;
        struct HookRun *next;
} HookRun;

typedef struct Hook {
        Manager *manager;
        char *path;
        pid_t pid;
        sd_event_source *child, *timeout;
} Hook;

static unsigned n_running, n_queued;
static HookRun *queue_head, *queue_tail;

static void run_one(Manager *m, const char *path, const char *json);

static void hook_free(Hook *h) {
        Manager *m = h->manager;

        sd_event_source_disable_unref(h->child);
        sd_event_source_disable_unref(h->timeout);
        free(h->path);
        free(h);
        n_running--;
        /* a slot is free: start the oldest waiting run */
        while (queue_head && n_running < HOOKS_MAX_RUNNING) {
                HookRun *q = queue_head;
                queue_head = q->next;
                if (!queue_head)
                        queue_tail = NULL;
                n_queued--;
                run_one(m, q->path, q->json);
                free(q->path);
                free(q->json);
                free(q);
        }
}

static void queue_run(const char *path, const char *json) {
        HookRun *q;

        if (n_queued >= HOOKS_MAX_QUEUED) {
                log_warning("%u hook runs waiting already, not running %s for this event.", n_queued, path);
                return;
        }
        q = calloc(1, sizeof(*q));
        if (!q || !(q->path = strdup(path)) || !(q->json = strdup(json))) {
                if (q)
                        free(q->path);
                free(q);
                return;
        }
        if (queue_tail)
                queue_tail->next = q;
        else
                queue_head = q;
        queue_tail = q;
        n_queued++;
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
                    (unsigned long long) (HOOK_TIMEOUT_USEC / 1000000ULL));
        (void) kill(h->pid, SIGKILL);
        return 0;
}

static void run_one(Manager *m, const char *path, const char *json) {
        int pipefd[2];
        Hook *h;
        pid_t pid;

        if (n_running >= HOOKS_MAX_RUNNING || queue_head) {
                log_debug("%u hooks running: %s waits for a free slot.", n_running, path);
                queue_run(path, json);
                return;
        }
        if (pipe2(pipefd, O_CLOEXEC) < 0)
                return;
        pid = fork();
        if (pid < 0) {
                log_warning_errno(errno, "Failed to start hook %s: %m", path);
                (void) close(pipefd[0]);
                (void) close(pipefd[1]);
                return;
        }
        if (pid == 0) {
                sigset_t ss;
                int null = open("/dev/null", O_WRONLY | O_CLOEXEC);
                sigemptyset(&ss);
                (void) sigprocmask(SIG_SETMASK, &ss, NULL);
                (void) dup2(pipefd[0], STDIN_FILENO);
                if (null >= 0)
                        (void) dup2(null, STDOUT_FILENO);
                execl(path, path, (char *) NULL);
                _exit(127);
        }
        (void) close(pipefd[0]);
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
        n_running++;
        if (sd_event_add_child(m->event, &h->child, pid, WEXITED, on_hook_exit, h) < 0 ||
            sd_event_add_time_relative(m->event, &h->timeout, CLOCK_MONOTONIC, HOOK_TIMEOUT_USEC, 0,
                                       on_hook_timeout, h) < 0) {
                (void) kill(pid, SIGKILL);
                (void) waitpid(pid, NULL, 0);
                hook_free(h);
        }
}

void events_run_hooks(Manager *m, json_object *event) {
        struct dirent **names = NULL;
        const char *json;
        int n;

        if (!m->hooks_dir || !m->event)
                return;
        n = scandir(m->hooks_dir, &names, NULL, alphasort);
        if (n < 0)
                return; /* no hooks directory: nothing to run */
        json = json_object_to_json_string_ext(event, JSON_C_TO_STRING_PLAIN);
        for (int i = 0; i < n; i++) {
                _cleanup_free_ char *path = NULL;
                struct stat st;

                if (names[i]->d_name[0] != '.' &&
                    asprintf(&path, "%s/%s", m->hooks_dir, names[i]->d_name) >= 0 &&
                    stat(path, &st) >= 0 && S_ISREG(st.st_mode) && (st.st_mode & 0111))
                        run_one(m, path, json);
                free(names[i]);
        }
        free(names);
}

/* At exit: drop the runs that never got a slot. */
void events_hooks_done(void) {
        while (queue_head) {
                HookRun *q = queue_head;
                queue_head = q->next;
                free(q->path);
                free(q->json);
                free(q);
        }
        queue_tail = NULL;
        n_queued = 0;
}
