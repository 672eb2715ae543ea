/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* cmekd: the CMEK broker daemon. Socket-activated or standalone; one sd-event loop. */
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <systemd/sd-daemon.h>

#include "cmek-audit.h"
#include "config.h"
#include "daemon.h"
#include "policy.h"
#include "volume.h"

#define DEFAULT_STATE_DIR LOCALSTATEDIR "/lib/cmekd"
#define DEFAULT_CONFIG SYSCONFDIR "/cmekd/cmekd.conf"
#define DEFAULT_POLICY SYSCONFDIR "/cmekd/policy"
#define DEFAULT_HOOKS_DIR SYSCONFDIR "/cmekd/hooks.d"

static bool state_dir_given = false;
static bool arg_check_config = false;

static void help(void) {
        printf("Usage: cmekd [OPTIONS]\n\n"
               "The customer-managed encryption key broker.\n\n"
               "  -h --help              Show this help\n"
               "     --version           Show the version\n"
               "     --state-dir DIR     Keep all state under DIR (default " DEFAULT_STATE_DIR ")\n"
               "     --socket PATH       Listen on PATH instead of using socket activation\n"
               "     --config FILE       Configuration file (default " DEFAULT_CONFIG " if it exists)\n"
               "     --policy FILE       Policy file (default " DEFAULT_POLICY " if it exists;\n"
               "                         without one only root may do anything)\n"
               "     --hooks-dir DIR     Run the executables in DIR for every event\n"
               "                         (default " DEFAULT_HOOKS_DIR ")\n"
               "     --metrics-file PATH Write Prometheus metrics to PATH (node_exporter textfile)\n"
               "     --log-level LEVEL   debug, info, notice, warning, err\n"
               "     --test-hooks        Honour CMEKD_TEST_* variables (test builds only)\n"
               "     --check-config      Check the configuration and policy files, print every\n"
               "                         error with its line, and exit (0: both valid)\n\n"
               "See cmekd(8).\n");
}

static int parse_argv(Manager *m, int argc, char *argv[]) {
        enum { ARG_VERSION = 0x100, ARG_STATE_DIR, ARG_SOCKET, ARG_CONFIG, ARG_POLICY, ARG_LOG_LEVEL, ARG_TEST_HOOKS, ARG_HOOKS_DIR, ARG_METRICS_FILE,
               ARG_CHECK_CONFIG };
        static const struct option options[] = {
                { "help", no_argument, NULL, 'h' },
                { "version", no_argument, NULL, ARG_VERSION },
                { "state-dir", required_argument, NULL, ARG_STATE_DIR },
                { "socket", required_argument, NULL, ARG_SOCKET },
                { "config", required_argument, NULL, ARG_CONFIG },
                { "policy", required_argument, NULL, ARG_POLICY },
                { "log-level", required_argument, NULL, ARG_LOG_LEVEL },
                { "test-hooks", no_argument, NULL, ARG_TEST_HOOKS },
                { "hooks-dir", required_argument, NULL, ARG_HOOKS_DIR },
                { "metrics-file", required_argument, NULL, ARG_METRICS_FILE },
                { "check-config", no_argument, NULL, ARG_CHECK_CONFIG },
                {}
        };
        int c;

        while ((c = getopt_long(argc, argv, "h", options, NULL)) >= 0)
                switch (c) {
                case 'h':
                        help();
                        return 0;
                case ARG_VERSION:
                        printf("cmekd " PACKAGE_VERSION "\n");
                        return 0;
                case ARG_STATE_DIR:
                        free(m->state_dir);
                        m->state_dir = strdup(optarg);
                        state_dir_given = true;
                        break;
                case ARG_SOCKET:
                        m->socket_path = strdup(optarg);
                        break;
                case ARG_CONFIG:
                        free(m->config_path);
                        m->config_path = strdup(optarg);
                        break;
                case ARG_POLICY:
                        free(m->policy_path);
                        m->policy_path = strdup(optarg);
                        break;
                case ARG_LOG_LEVEL: {
                        static const char *const levels[] = { "emerg", "alert", "crit", "err", "warning", "notice", "info", "debug" };
                        size_t i;
                        for (i = 0; i < ARRAY_SIZE(levels); i++)
                                if (streq(optarg, levels[i]))
                                        break;
                        if (i == ARRAY_SIZE(levels))
                                return log_error_errno(EINVAL, "Unknown log level '%s': use debug, info, notice, warning or err.", optarg);
                        cmek_log_set_max_level((int) i);
                        break;
                }
                case ARG_HOOKS_DIR:
                        free(m->hooks_dir);
                        m->hooks_dir = strdup(optarg);
                        break;
                case ARG_METRICS_FILE:
                        free(m->metrics_file);
                        m->metrics_file = strdup(optarg);
                        break;
                case ARG_CHECK_CONFIG:
                        arg_check_config = true;
                        break;
                case ARG_TEST_HOOKS:
                        if (!ENABLE_TEST_HOOKS)
                                return log_error_errno(EINVAL, "--test-hooks: this build was configured without --enable-test-hooks.");
                        m->test_hooks = true;
                        break;
                default:
                        return -EINVAL;
                }
        if (optind < argc)
                return log_error_errno(EINVAL, "Unexpected argument '%s'; see cmekd --help.", argv[optind]);
        return 1;
}

/* Touches and locks the top STACK_LOCK_SIZE bytes of the stack below this frame: the
 * handlers' stack buffers (e.g. a TestDecrypt plaintext) never reach swap, at a fixed cost. */
#define STACK_LOCK_SIZE (256U * 1024U)
static __attribute__((noinline)) void lock_stack(void) {
        volatile unsigned char area[STACK_LOCK_SIZE];
        size_t page = (size_t) sysconf(_SC_PAGESIZE);
        uintptr_t start = ((uintptr_t) area + page - 1) / page * page;
        uintptr_t end = ((uintptr_t) area + sizeof(area)) / page * page;

        explicit_bzero((void *) area, sizeof(area));
        if (end > start && mlock((void *) start, end - start) < 0)
                log_debug_errno(errno, "Failed to lock the stack, secrets on it may be swapped: %m");
}

static void harden_process(void) {
        struct rlimit rl = { 0, 0 };

        /* No core dump may carry a DEK or a PIN. */
        (void) setrlimit(RLIMIT_CORE, &rl);
        if (!getenv("CMEKD_ALLOW_DUMP") || !ENABLE_TEST_HOOKS)
                (void) prctl(PR_SET_DUMPABLE, 0);
        /* No mlockall(MCL_FUTURE): it locked every page the daemon ever touched, so clients
         * that queue replies without reading them drove locked memory up (issue 13). Secrets
         * live in cmek_secure_alloc() buffers, each locked and excluded from core dumps, and
         * so do the output buffers of replies that carry one (server.c); the stack, where a
         * few handlers keep short secrets, is locked below. */
        lock_stack();
        /* Many clients at once: raise the descriptor limit to the hard limit. */
        if (getrlimit(RLIMIT_NOFILE, &rl) >= 0 && rl.rlim_cur < rl.rlim_max) {
                rl.rlim_cur = rl.rlim_max > 65536 ? 65536 : rl.rlim_max;
                (void) setrlimit(RLIMIT_NOFILE, &rl);
        }
}

/* cmekd --check-config: both files through the daemon's own parsers; no token, no socket, no
 * state directory, so any user who can read the files can run it (as sshd -t). */
static int check_config(Manager *m) {
        _cleanup_config_ Config *c = NULL;
        _cleanup_(policy_freep) Policy *p = NULL;
        _cleanup_free_ char *error = NULL;
        unsigned n_errors = 0;
        int r, ret = 0;

        r = config_load(m->config_path, false, &c, &n_errors);
        if (r < 0) {
                if (n_errors > 0)
                        log_error("%s: %u error%s.", m->config_path, n_errors, n_errors == 1 ? "" : "s");
                ret = r;
        }
        if (m->policy_path) {
                r = policy_load(m->policy_path, &p, &error);
                if (r < 0) {
                        if (error)
                                log_error("%s", error);
                        else
                                log_error_errno(r, "Cannot read the policy file '%s': %m", m->policy_path);
                        ret = r;
                }
        }
        if (ret < 0)
                return ret;
        if (m->config_path)
                printf("%s: valid.\n", m->config_path);
        else
                printf("No configuration file (%s does not exist): every setting has its default.\n", DEFAULT_CONFIG);
        if (m->policy_path)
                printf("%s: valid, %zu statements.\n", m->policy_path, policy_n_statements(p));
        else
                printf("No policy file (%s does not exist): only root may use cmekd.\n", DEFAULT_POLICY);
        return 0;
}

/* SIGHUP: cmekd.conf again, through the same parser. On any error nothing changes: the errors
 * are logged with their lines, the attempt audited, and the configuration in use kept. Otherwise
 * the run-time settings are applied ([enforcement], [events], [limits], [metrics]); a changed
 * vault is logged as needing a restart and keeps running as it was. */
static int manager_reload_config(Manager *m) {
        _cleanup_config_ Config *c = NULL;
        _cleanup_free_ char *detail = NULL;
        unsigned n_errors = 0, n_restart;
        int r;

        r = config_load(m->config_path, false, &c, &n_errors);
        if (r < 0) {
                if (asprintf(&detail, "%s: %u error%s, see the daemon log", strempty(m->config_path), n_errors,
                             n_errors == 1 ? "" : "s") < 0)
                        detail = NULL;
                log_error("Configuration reload failed, keeping the configuration in use: %s",
                          detail ?: "cannot read the file");
                (void) manager_audit(m, NULL, &(AuditRecord) {
                        .event = "config.reloaded", .operation = "SIGHUP", .result = "io.cmek.InvalidConfig",
                        .detail = detail });
                return r;
        }
        n_restart = config_log_changes(m->config, c);
        config_keep_restart_settings(c, m->config);
        config_free(m->config);
        m->config = TAKE_PTR(c);
        server_apply_limits(m);
        volumes_apply_config(m);
        /* [events] and [metrics] are read where they are used */
        if (asprintf(&detail, "%s%s%u setting%s need%s a restart", strempty(m->config_path), m->config_path ? ": " : "",
                     n_restart, n_restart == 1 ? "" : "s", n_restart == 1 ? "s" : "") < 0)
                detail = NULL;
        log_info("Configuration reloaded (%s).", strempty(detail));
        (void) manager_audit(m, NULL, &(AuditRecord) {
                .event = "config.reloaded", .operation = "SIGHUP", .result = "ok", .detail = detail });
        return 0;
}

static int on_sighup(sd_event_source *s, const struct signalfd_siginfo *si, void *userdata) {
        Manager *m = userdata;
        (void) sd_notify(0, "RELOADING=1");
        (void) manager_reload_config(m);
        (void) manager_load_policy(m, true);
        (void) sd_notify(0, "READY=1");
        return 0;
}

static int manager_open_audit(Manager *m) {
        _cleanup_free_ char *path = NULL;
        CmekAudit *a = NULL;
        int r;

        if (asprintf(&path, "%s/audit.log", m->state_dir) < 0)
                return -ENOMEM;
        /* replies wait for the audit sync at the end of each loop iteration (server.c) */
        r = cmek_audit_open_full(path, CMEK_AUDIT_GROUP_COMMIT, &a);
        if (r < 0)
                return log_error_errno(r, "Failed to open the audit log '%s': %m", path);
        m->audit = a;
        return 0;
}

static int run(int argc, char *argv[]) {
        Manager manager = {}, *m = &manager;
        int r, n;

        cmek_log_set_ident("cmekd");
        m->state_dir = strdup(DEFAULT_STATE_DIR);
        m->hooks_dir = strdup(DEFAULT_HOOKS_DIR);
        r = parse_argv(m, argc, argv);
        if (r <= 0)
                goto out;
        if (!m->config_path && access(DEFAULT_CONFIG, F_OK) >= 0)
                m->config_path = strdup(DEFAULT_CONFIG);
        if (!m->policy_path && access(DEFAULT_POLICY, F_OK) >= 0)
                m->policy_path = strdup(DEFAULT_POLICY);
        if (arg_check_config) {
                r = check_config(m);
                goto out;
        }
        /* a configuration error stops the start before anything else happens */
        r = config_load(m->config_path, false, &m->config, NULL);
        if (r < 0) {
                log_error("Invalid configuration, not starting: fix the errors above (cmekd --check-config shows them all).");
                goto out;
        }

        harden_process();
        umask(0077);
        m->start_usec = cmek_now_usec();

        /* under systemd, StateDirectory= tells where the state lives (any prefix) */
        if (!state_dir_given && getenv("STATE_DIRECTORY")) {
                const char *sd = getenv("STATE_DIRECTORY");
                free(m->state_dir);
                m->state_dir = strndup(sd, strcspn(sd, ":"));
        }
        r = cmek_mkdir_p(m->state_dir, 0700);
        if (r >= 0 && chmod(m->state_dir, 0700) < 0) /* it holds the token PINs */
                r = -errno;
        if (r < 0) {
                log_error_errno(r, "Failed to create the state directory '%s': %m", m->state_dir);
                goto out;
        }
        r = manager_load_policy(m, false);
        if (r < 0)
                goto out;
        r = manager_open_audit(m);
        if (r < 0)
                goto out;

        r = sd_event_default(&m->event);
        if (r < 0)
                goto out;
        sigset_t ss;
        sigemptyset(&ss);
        sigaddset(&ss, SIGTERM);
        sigaddset(&ss, SIGINT);
        sigaddset(&ss, SIGHUP);
        sigaddset(&ss, SIGCHLD); /* hooks are reaped through sd-event */
        sigprocmask(SIG_BLOCK, &ss, NULL);
        (void) signal(SIGPIPE, SIG_IGN);
        (void) sd_event_add_signal(m->event, NULL, SIGTERM, NULL, NULL);
        (void) sd_event_add_signal(m->event, NULL, SIGINT, NULL, NULL);
        (void) sd_event_add_signal(m->event, NULL, SIGHUP, on_sighup, m);
        (void) sd_event_set_watchdog(m->event, true);

        r = modules_init(m);
        if (r < 0)
                goto out;

        if (m->socket_path) {
                r = server_bind(m, m->socket_path);
                if (r < 0) {
                        log_error_errno(r, "Failed to listen on '%s': %m", m->socket_path);
                        goto out;
                }
        } else {
                n = sd_listen_fds(true);
                if (n < 0) {
                        r = log_error_errno(n, "Failed to read the sockets passed by systemd: %m");
                        goto out;
                }
                if (n == 0) {
                        r = log_error_errno(EINVAL, "No socket passed by systemd and no --socket PATH given; "
                                            "start cmekd through cmekd.socket or with --socket.");
                        goto out;
                }
                for (int fd = SD_LISTEN_FDS_START; fd < SD_LISTEN_FDS_START + n; fd++) {
                        r = server_listen(m, fd);
                        if (r < 0)
                                goto out;
                }
                m->n_listen_fds = (unsigned) n;
        }

        (void) manager_audit(m, NULL, &(AuditRecord) {
                .event = "daemon.started", .operation = "start", .detail = PACKAGE_VERSION });
        log_info("cmekd " PACKAGE_VERSION " ready, state in %s.", m->state_dir);
        (void) sd_notifyf(0, "READY=1\nSTATUS=Serving keys from %s", m->state_dir);
        r = sd_event_loop(m->event);
        (void) sd_notify(0, "STOPPING=1\nSTATUS=Shutting down");
        manager_audit_flush_denials(m);
        (void) manager_audit(m, NULL, &(AuditRecord) { .event = "daemon.stopped", .operation = "stop" });
out:
        manager_audit_jobs_done(m);
        server_done(m);
        events_done(m);
        modules_done(m);
        cmek_audit_close(m->audit);
        policy_free(m->policy);
        sd_event_unref(m->event);
        free(m->state_dir);
        free(m->socket_path);
        free(m->config_path);
        config_free(m->config);
        free(m->policy_path);
        free(m->hooks_dir);
        free(m->metrics_file);
        return r;
}

int main(int argc, char *argv[]) {
        int r = run(argc, argv);
        return r < 0 ? EXIT_FAILURE : EXIT_SUCCESS;
}
