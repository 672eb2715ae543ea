/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* cmekctl: the admin CLI of cmekd. Verb dispatch, the daemon connection, service verbs. */
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <time.h>

#include "cmek-audit.h"
#include "cmekctl.h"

bool arg_json = false;
const char *arg_socket = NULL;

static const Verb *const verb_tables[] = { service_verbs, CTL_EXTRA_VERB_TABLES NULL };

void ctl_print_json(json_object *o) {
        printf("%s\n", json_object_to_json_string_ext(o, JSON_C_TO_STRING_PRETTY | JSON_C_TO_STRING_NOSLASHESCAPE));
}

static void print_error(const char *method, const char *error, json_object *p) {
        const char *msg = cmek_json_get_string(p, "message");
        const char *stmt = cmek_json_get_string(p, "statement");

        if (arg_json) {
                json_object *o = json_object_new_object();
                json_object_object_add(o, "error", json_object_new_string(error));
                json_object_object_add(o, "parameters", json_object_get(p));
                fprintf(stderr, "%s\n", json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN));
                json_object_put(o);
                return;
        }
        /* the message may quote a caller's path or a name read from a disk header: escaped */
        fprintf(stderr, "cmekctl: %s: %s\n", ctl_esc(error),
                msg ? ctl_esc(msg) : json_object_to_json_string_ext(p, JSON_C_TO_STRING_PLAIN));
        if (streq(error, CMEK_ERROR_PERMISSION_DENIED) && stmt && (!msg || !strstr(msg, stmt)))
                fprintf(stderr, "cmekctl: a statement that would allow it: %s\n", ctl_esc(stmt));
        if (streq(error, VARLINK_ERROR_METHOD_NOT_FOUND) || streq(error, VARLINK_ERROR_INTERFACE_NOT_FOUND))
                fprintf(stderr, "cmekctl: the running cmekd does not know %s; is it older than this cmekctl?\n", method);
}

static int ctl_connect(CmekClient **ret) {
        const char *path = cmek_client_socket_path(arg_socket);
        int r = cmek_client_connect(path, 120000, ret);
        if (r < 0) {
                if (r == -ENOENT || r == -ECONNREFUSED)
                        fprintf(stderr, "cmekctl: cmekd is not running (no socket at %s): start it with "
                                "'systemctl start cmekd.socket', or pass --socket PATH.\n", path);
                else if (r == -EACCES)
                        fprintf(stderr, "cmekctl: no permission to connect to %s.\n", path);
                else
                        fprintf(stderr, "cmekctl: cannot connect to %s: %s\n", path, strerror(-r));
                return CTL_EXIT_NO_DAEMON;
        }
        return 0;
}

int ctl_call(const char *method, json_object *params, json_object **ret_reply) {
        _cleanup_(cmek_client_freep) CmekClient *c = NULL;
        _cleanup_free_ char *error = NULL;
        json_object *reply = NULL;
        int r;

        r = ctl_connect(&c);
        if (r != 0)
                return r;
        r = cmek_client_call(c, method, params, &reply, &error);
        if (r < 0) {
                fprintf(stderr, "cmekctl: %s failed: %s\n", method,
                        r == -ECONNRESET ? "cmekd closed the connection" : strerror(-r));
                return CTL_EXIT_FAILURE;
        }
        if (error) {
                print_error(method, error, reply);
                json_object_put(reply);
                return cmek_error_from_name(error)->exit_code;
        }
        if (ret_reply)
                *ret_reply = reply;
        else
                json_object_put(reply);
        return 0;
}

int ctl_call_more(const char *method, json_object *params,
                  int (*on_reply)(json_object *reply, void *userdata), void *userdata) {
        _cleanup_(cmek_client_freep) CmekClient *c = NULL;
        int r;

        r = ctl_connect(&c);
        if (r != 0)
                return r;
        /* streams may be silent for long: no read timeout */
        cmek_client_free(c);
        c = NULL;
        r = cmek_client_connect(cmek_client_socket_path(arg_socket), 0, &c);
        if (r < 0)
                return CTL_EXIT_NO_DAEMON;
        r = cmek_client_send(c, method, params, true);
        if (r < 0)
                return CTL_EXIT_FAILURE;
        for (;;) {
                _cleanup_free_ char *error = NULL;
                json_object *reply = NULL;
                bool continues = false;

                r = cmek_client_recv(c, &reply, &error, &continues);
                if (r < 0) {
                        fprintf(stderr, "cmekctl: %s: %s\n", method, strerror(-r));
                        return CTL_EXIT_FAILURE;
                }
                if (error) {
                        print_error(method, error, reply);
                        json_object_put(reply);
                        return cmek_error_from_name(error)->exit_code;
                }
                r = on_reply(reply, userdata);
                json_object_put(reply);
                if (r != 0)
                        return r > 0 ? 0 : CTL_EXIT_FAILURE;
                if (!continues)
                        return 0;
                fflush(stdout);
        }
}

/* ---- service verbs ---- */

static int parse_json_only(int argc, char *argv[], int min_pos, int max_pos) {
        static const struct option options[] = { CTL_OPTION_JSON, {} };
        int c;
        optind = 0;
        while ((c = getopt_long(argc, argv, "", options, NULL)) >= 0)
                switch (c) {
                case 'J':
                        arg_json = true;
                        break;
                default:
                        return -CTL_EXIT_USAGE;
                }
        if (argc - optind < min_pos || argc - optind > max_pos) {
                fprintf(stderr, "cmekctl %s: wrong number of arguments; see cmekctl --help.\n", argv[0]);
                return -CTL_EXIT_USAGE;
        }
        return optind;
}

static void format_usec(uint64_t usec, char *buf, size_t size) {
        time_t t = (time_t) (usec / 1000000);
        struct tm tm;
        strftime(buf, size, "%Y-%m-%d %H:%M:%S", localtime_r(&t, &tm));
}

static int verb_status(int argc, char *argv[]) {
        json_object *r = NULL;
        int64_t pid = 0, started = 0, stmts = 0, clients = 0;
        char when[64];
        int k = parse_json_only(argc, argv, 0, 0);
        if (k < 0)
                return -k;
        k = ctl_call("io.cmek.Service.Status", NULL, &r);
        if (k != 0)
                return k;
        if (arg_json) {
                ctl_print_json(r);
        } else {
                (void) cmek_json_get_int64(r, "pid", &pid);
                (void) cmek_json_get_int64(r, "started_usec", &started);
                (void) cmek_json_get_int64(r, "policy_statements", &stmts);
                (void) cmek_json_get_int64(r, "clients", &clients);
                format_usec((uint64_t) started, when, sizeof(when));
                char buf[64];
                ctl_print_field("version", cmek_json_get_string(r, "version"));
                snprintf(buf, sizeof(buf), "%" PRIi64, pid);
                ctl_print_field("pid", buf);
                ctl_print_field("started", when);
                ctl_print_field("state directory", cmek_json_get_string(r, "state_dir"));
                ctl_print_field("activation", cmek_json_get_bool(r, "socket_activated", false) ? "socket" : "standalone");
                snprintf(buf, sizeof(buf), "%s (%" PRIi64 " statements)",
                         cmek_json_get_string(r, "policy") ?: "none: root only", stmts);
                ctl_print_field("policy", buf);
                snprintf(buf, sizeof(buf), "%" PRIi64, clients);
                ctl_print_field("clients", buf);
                if (cmek_json_get_string(r, "audit"))
                        ctl_print_field("audit", cmek_json_get_string(r, "audit"));
        }
        json_object_put(r);
        return 0;
}

static int verb_policy_check(int argc, char *argv[]) {
        static const struct option options[] = {
                CTL_OPTION_JSON,
                { "user", required_argument, NULL, 'u' },
                { "group", required_argument, NULL, 'g' },
                { "compartment", required_argument, NULL, 'c' },
                { "key-id", required_argument, NULL, 'k' },
                { "volume-id", required_argument, NULL, 'v' },
                {}
        };
        json_object *p = json_object_new_object(), *r = NULL;
        int c, k;

        optind = 0;
        while ((c = getopt_long(argc, argv, "", options, NULL)) >= 0)
                switch (c) {
                case 'J': arg_json = true; break;
                case 'u': json_object_object_add(p, "user", json_object_new_string(optarg)); break;
                case 'g': json_object_object_add(p, "group", json_object_new_string(optarg)); break;
                case 'c': json_object_object_add(p, "compartment", json_object_new_string(optarg)); break;
                case 'k': json_object_object_add(p, "key_id", json_object_new_string(optarg)); break;
                case 'v': json_object_object_add(p, "volume_id", json_object_new_string(optarg)); break;
                default: json_object_put(p); return CTL_EXIT_USAGE;
                }
        if (argc - optind != 2 || (!json_object_object_get_ex(p, "user", NULL) && !json_object_object_get_ex(p, "group", NULL))) {
                fprintf(stderr, "Usage: cmekctl policy check --user U|--group G [--compartment C] [--key-id ID] [--volume-id ID] VERB RESOURCE\n");
                json_object_put(p);
                return CTL_EXIT_USAGE;
        }
        json_object_object_add(p, "verb", json_object_new_string(argv[optind]));
        json_object_object_add(p, "resource", json_object_new_string(argv[optind + 1]));
        k = ctl_call("io.cmek.Service.PolicyCheck", p, &r);
        json_object_put(p);
        if (k != 0)
                return k;
        bool ok = cmek_json_get_bool(r, "allowed", false);
        if (arg_json)
                ctl_print_json(r);
        else if (ok)
                printf("allowed\n");
        else
                printf("denied%s%s\n", cmek_json_get_string(r, "statement") ? "; this statement would allow it:\n  " : "",
                       strempty(ctl_esc(cmek_json_get_string(r, "statement"))));
        json_object_put(r);
        return ok ? 0 : CTL_EXIT_PERMISSION;
}

static int parse_since(const char *s, uint64_t *ret) {
        struct tm tm = {};
        char *end;
        unsigned long long v = strtoull(s, &end, 10);

        if (*s && (streq(end, "s") || streq(end, "m") || streq(end, "h") || streq(end, "d"))) {
                uint64_t mult = streq(end, "s") ? 1 : streq(end, "m") ? 60 : streq(end, "h") ? 3600 : 86400;
                *ret = cmek_now_usec() - (uint64_t) v * mult * 1000000ULL; /* "10m": ten minutes ago */
                return 0;
        }
        end = strptime(s, "%Y-%m-%d %H:%M:%S", &tm);
        if (!end || *end) {
                tm = (struct tm) {};
                end = strptime(s, "%Y-%m-%d", &tm);
        }
        if (!end || *end)
                return -EINVAL;
        tm.tm_isdst = -1;
        *ret = (uint64_t) mktime(&tm) * 1000000ULL;
        return 0;
}

static int verb_audit_show(int argc, char *argv[]) {
        static const struct option options[] = { CTL_OPTION_JSON, { "since", required_argument, NULL, 's' }, {} };
        json_object *p = json_object_new_object(), *r = NULL, *entries;
        uint64_t since = 0;
        int c, k;

        optind = 0;
        while ((c = getopt_long(argc, argv, "", options, NULL)) >= 0)
                switch (c) {
                case 'J': arg_json = true; break;
                case 's':
                        if (parse_since(optarg, &since) < 0) {
                                fprintf(stderr, "cmekctl: --since '%s': use 'YYYY-MM-DD [HH:MM:SS]' or an age like 10m, 2h, 1d.\n", optarg);
                                json_object_put(p);
                                return CTL_EXIT_USAGE;
                        }
                        break;
                default: json_object_put(p); return CTL_EXIT_USAGE;
                }
        json_object_object_add(p, "since_usec", json_object_new_int64((int64_t) since));
        /* the daemon answers in pages (AuditShow's cursor/next_cursor): collect them all */
        entries = json_object_new_array();
        for (int64_t cursor = 0;;) {
                json_object *page = NULL, *pe;
                int64_t next = 0;

                json_object_object_add(p, "cursor", json_object_new_int64(cursor));
                k = ctl_call("io.cmek.Service.AuditShow", p, &page);
                if (k != 0) {
                        json_object_put(p);
                        json_object_put(entries);
                        return k;
                }
                if (json_object_object_get_ex(page, "entries", &pe) && json_object_is_type(pe, json_type_array))
                        for (size_t i = 0; i < json_object_array_length(pe); i++)
                                json_object_array_add(entries, json_object_get(json_object_array_get_idx(pe, i)));
                if (!cmek_json_get_int64(page, "next_cursor", &next) || next <= cursor) {
                        json_object_put(page);
                        break;
                }
                json_object_put(page);
                cursor = next;
        }
        json_object_put(p);
        r = json_object_new_object();
        json_object_object_add(r, "entries", entries);
        if (arg_json) {
                ctl_print_json(entries);
        } else {
                Table *t = table_new("SEQ", "TIME", "EVENT", "RESULT", "UID", "KEY", "STATE", "VOLUME", NULL);
                size_t n = entries ? json_object_array_length(entries) : 0;
                for (size_t i = 0; i < n; i++) {
                        json_object *e = json_object_array_get_idx(entries, i);
                        int64_t seq = 0, uid = -1;
                        char sseq[32], suid[32], st[128] = "";
                        (void) cmek_json_get_int64(e, "seq", &seq);
                        snprintf(sseq, sizeof(sseq), "%" PRIi64, seq);
                        if (cmek_json_get_int64(e, "uid", &uid))
                                snprintf(suid, sizeof(suid), "%" PRIi64, uid);
                        else
                                strcpy(suid, "-");
                        if (cmek_json_get_string(e, "new_state"))
                                snprintf(st, sizeof(st), "%s->%s", cmek_json_get_string(e, "old_state") ?: "",
                                         cmek_json_get_string(e, "new_state"));
                        table_add(t, sseq, cmek_json_get_string(e, "time"), cmek_json_get_string(e, "event"),
                                  cmek_json_get_string(e, "result"), suid, cmek_json_get_string(e, "key_id"),
                                  st, cmek_json_get_string(e, "volume"));
                }
                table_print(t);
        }
        json_object_put(r);
        return 0;
}

static int verb_audit_verify(int argc, char *argv[]) {
        static const struct option options[] = { CTL_OPTION_JSON, { "file", required_argument, NULL, 'f' }, {} };
        const char *file = NULL;
        json_object *r = NULL;
        int c, k;

        optind = 0;
        while ((c = getopt_long(argc, argv, "", options, NULL)) >= 0)
                switch (c) {
                case 'J': arg_json = true; break;
                case 'f': file = optarg; break;
                default: return CTL_EXIT_USAGE;
                }
        if (file) {
                /* offline: verify a copy of the log without the daemon */
                _cleanup_free_ char *reason = NULL;
                unsigned n = 0, bad = 0;
                k = cmek_audit_verify(file, &n, &bad, &reason);
                r = json_object_new_object();
                json_object_object_add(r, "path", json_object_new_string(file));
                json_object_object_add(r, "lines", json_object_new_int64(n));
                json_object_object_add(r, "ok", json_object_new_boolean(k >= 0));
                if (k < 0) {
                        json_object_object_add(r, "bad_line", json_object_new_int64(bad));
                        json_object_object_add(r, "reason", json_object_new_string(reason ?: strerror(-k)));
                }
        } else {
                k = ctl_call("io.cmek.Service.AuditVerify", NULL, &r);
                if (k != 0)
                        return k;
        }
        bool ok = cmek_json_get_bool(r, "ok", false);
        int64_t lines = 0, bad = 0;
        (void) cmek_json_get_int64(r, "lines", &lines);
        (void) cmek_json_get_int64(r, "bad_line", &bad);
        if (arg_json)
                ctl_print_json(r);
        else if (ok && file)
                printf("%s: %" PRIi64 " entries, chain intact\n"
                       "note: offline, without the token: only the hash chain was checked; a cut tail or a recomputed\n"
                       "chain is found by 'cmekctl audit verify' through the daemon (checkpoint HMACs, token anchor)\n",
                       ctl_esc(cmek_json_get_string(r, "path")), lines);
        else if (ok && cmek_json_get_bool(r, "anchored", false)) {
                int64_t cps = 0, anchor = 0;
                (void) cmek_json_get_int64(r, "checkpoints", &cps);
                (void) cmek_json_get_int64(r, "anchor_seq", &anchor);
                printf("%s: %" PRIi64 " entries, chain intact, %" PRIi64 " checkpoints, anchored in the token at line %" PRIi64 "\n",
                       ctl_esc(cmek_json_get_string(r, "path")), lines, cps, anchor);
        } else if (ok)
                printf("%s: %" PRIi64 " entries, chain intact\nnote: %s\n", ctl_esc(cmek_json_get_string(r, "path")), lines,
                       ctl_esc(cmek_json_get_string(r, "note")) ?: "only the hash chain was checked");
        else
                fprintf(stderr, "%s: chain broken at line %" PRIi64 ": %s\n", ctl_esc(cmek_json_get_string(r, "path")), bad,
                        strempty(ctl_esc(cmek_json_get_string(r, "reason"))));
        json_object_put(r);
        return ok ? 0 : CTL_EXIT_VERIFY_FAILED;
}

static int print_event(json_object *reply, void *userdata) {
        json_object *ev;
        bool *follow = userdata;
        if (!json_object_object_get_ex(reply, "event", &ev))
                return 0; /* the "subscribed" acknowledgement */
        if (arg_json)
                printf("%s\n", json_object_to_json_string_ext(ev, JSON_C_TO_STRING_PLAIN));
        else {
                int64_t t = 0;
                char when[64];
                json_object *d = NULL;
                (void) cmek_json_get_int64(ev, "time_usec", &t);
                format_usec((uint64_t) t, when, sizeof(when));
                (void) json_object_object_get_ex(ev, "data", &d);
                printf("%s %-24s %s\n", when, ctl_esc(cmek_json_get_string(ev, "type")),
                       d ? json_object_to_json_string_ext(d, JSON_C_TO_STRING_PLAIN) : "");
        }
        return *follow ? 0 : 1;
}

static int verb_events(int argc, char *argv[]) {
        static const struct option options[] = { CTL_OPTION_JSON, { "follow", no_argument, NULL, 'f' }, {} };
        bool follow = false;
        int c;

        optind = 0;
        while ((c = getopt_long(argc, argv, "f", options, NULL)) >= 0)
                switch (c) {
                case 'J': arg_json = true; break;
                case 'f': follow = true; break;
                default: return CTL_EXIT_USAGE;
                }
        if (!follow) {
                /* past events are in the audit log */
                char *args[] = { (char *) "show", NULL };
                return verb_audit_show(1, args);
        }
        if (!arg_json)
                printf("Waiting for events (Ctrl-C to stop)...\n");
        fflush(stdout);
        return ctl_call_more("io.cmek.Events.Subscribe", NULL, print_event, &follow);
}

static int verb_metrics(int argc, char *argv[]) {
        static const struct option options[] = { CTL_OPTION_JSON, { "prometheus", no_argument, NULL, 'p' }, {} };
        json_object *r = NULL, *vols = NULL, *keys = NULL, *c = NULL;
        bool prom = false;
        int o, k;

        optind = 0;
        while ((o = getopt_long(argc, argv, "", options, NULL)) >= 0)
                switch (o) {
                case 'J': arg_json = true; break;
                case 'p': prom = true; break;
                default: return CTL_EXIT_USAGE;
                }
        if (prom) {
                k = ctl_call("io.cmek.Metrics.Prometheus", NULL, &r);
                if (k == 0)
                        fputs(strempty(cmek_json_get_string(r, "text")), stdout);
                json_object_put(r);
                return k;
        }
        k = ctl_call("io.cmek.Metrics.Get", NULL, &r);
        if (k != 0)
                return k;
        if (arg_json) {
                ctl_print_json(r);
                json_object_put(r);
                return 0;
        }
        (void) json_object_object_get_ex(r, "volumes", &vols);
        (void) json_object_object_get_ex(r, "keys", &keys);
        (void) json_object_object_get_ex(r, "counters", &c);
        Table *t = table_new("VOLUME", "PATH", "KEY", "KEY STATE", "EncryptionKeyStatus", "EncryptionKeyType", NULL);
        for (size_t i = 0; vols && i < json_object_array_length(vols); i++) {
                json_object *v = json_object_array_get_idx(vols, i);
                int64_t st = 0, ty = 0;
                char a[8], b[8];
                (void) cmek_json_get_int64(v, "EncryptionKeyStatus", &st);
                (void) cmek_json_get_int64(v, "EncryptionKeyType", &ty);
                snprintf(a, sizeof(a), "%" PRIi64, st);
                snprintf(b, sizeof(b), "%" PRIi64, ty);
                table_add(t, cmek_json_get_string(v, "uuid"), cmek_json_get_string(v, "path"),
                          cmek_json_get_string(v, "key_id"), cmek_json_get_string(v, "key_state"), a, b);
        }
        table_print(t);
        printf("\n");
        t = table_new("KEY", "NAME", "COMPARTMENT", "STATE", "VERSIONS", NULL);
        for (size_t i = 0; keys && i < json_object_array_length(keys); i++) {
                json_object *e = json_object_array_get_idx(keys, i);
                int64_t n = 0;
                char a[16];
                (void) cmek_json_get_int64(e, "versions", &n);
                snprintf(a, sizeof(a), "%" PRIi64, n);
                table_add(t, cmek_json_get_string(e, "id"), cmek_json_get_string(e, "name"),
                          cmek_json_get_string(e, "compartment"), cmek_json_get_string(e, "state"), a);
        }
        table_print(t);
        int64_t w = 0, we = 0, u = 0, ue = 0;
        (void) cmek_json_get_int64(c, "wrap", &w);
        (void) cmek_json_get_int64(c, "wrap_errors", &we);
        (void) cmek_json_get_int64(c, "unwrap", &u);
        (void) cmek_json_get_int64(c, "unwrap_errors", &ue);
        printf("\nwraps %" PRIi64 " (%" PRIi64 " errors), unwraps %" PRIi64 " (%" PRIi64 " errors)\n", w, we, u, ue);
        json_object_put(r);
        return 0;
}

const Verb service_verbs[] = {
        { NULL, "status", "", "Show the daemon's status", verb_status },
        { "policy", "check", "--user U|--group G [--compartment C] [--key-id ID] VERB RESOURCE",
          "Would U be allowed to VERB RESOURCE?", verb_policy_check },
        { "audit", "show", "[--since TIME]", "Show the audit log", verb_audit_show },
        { "audit", "verify", "[--file PATH]", "Verify the audit log's hash chain", verb_audit_verify },
        { NULL, "events", "[--follow]", "Show events; --follow streams new ones", verb_events },
        { NULL, "metrics", "[--prometheus]", "EncryptionKeyStatus/Type per volume, key states, counters", verb_metrics },
        {}
};

/* ---- main ---- */

static void help(void) {
        printf("Usage: cmekctl [--socket PATH] [--json] COMMAND ...\n\n"
               "Manage customer-managed encryption keys and the volumes they protect.\n\n"
               "Global options:\n"
               "  -h --help          Show this help\n"
               "     --version       Show the version\n"
               "     --socket PATH   cmekd's socket (default $" CMEK_SOCKET_ENV " or " CMEK_DEFAULT_SOCKET ")\n"
               "     --json          Machine-readable output\n\n"
               "Commands:\n");
        for (size_t i = 0; verb_tables[i]; i++)
                for (const Verb *v = verb_tables[i]; v->name; v++) {
                        char left[256];
                        snprintf(left, sizeof(left), "%s%s%s %s", strempty(v->group), v->group ? " " : "", v->name, v->usage);
                        if (strlen(left) <= 40)
                                printf("  %-40s %s\n", left, v->help);
                        else
                                printf("  %s\n  %-40s %s\n", left, "", v->help);
                }
        printf("\nExit codes: 0 ok, 1 failure, 2 usage, 3 cmekd not reachable, 4 permission denied,\n"
               "5 not found, 6 key unusable, 7 state transition refused, 8 verification failed.\n"
               "See cmekctl(8).\n");
}

static const Verb *find_verb(const char *group, const char *name, bool *ret_group_known) {
        *ret_group_known = false;
        for (size_t i = 0; verb_tables[i]; i++)
                for (const Verb *v = verb_tables[i]; v->name; v++) {
                        if (!v->group) {
                                if (streq(v->name, group))
                                        return v;
                                continue;
                        }
                        if (!streq(v->group, group))
                                continue;
                        *ret_group_known = true;
                        if (name && streq(v->name, name))
                                return v;
                }
        return NULL;
}

int main(int argc, char *argv[]) {
        const Verb *v;
        bool group_known;
        int i;

        cmek_log_set_ident("cmekctl");
        /* global options come before the command */
        for (i = 1; i < argc && argv[i][0] == '-'; i++) {
                if (streq(argv[i], "-h") || streq(argv[i], "--help")) {
                        help();
                        return 0;
                } else if (streq(argv[i], "--version")) {
                        printf("cmekctl " PACKAGE_VERSION "\n");
                        return 0;
                } else if (streq(argv[i], "--json"))
                        arg_json = true;
                else if (streq(argv[i], "--socket") && i + 1 < argc)
                        arg_socket = argv[++i];
                else if (!strncmp(argv[i], "--socket=", 9))
                        arg_socket = argv[i] + 9;
                else {
                        fprintf(stderr, "cmekctl: unknown option '%s'; see cmekctl --help.\n", argv[i]);
                        return CTL_EXIT_USAGE;
                }
        }
        if (i >= argc) {
                help();
                return CTL_EXIT_USAGE;
        }
        v = find_verb(argv[i], i + 1 < argc ? argv[i + 1] : NULL, &group_known);
        if (!v) {
                if (group_known)
                        fprintf(stderr, "cmekctl: '%s' needs a subcommand%s%s; see cmekctl --help.\n", argv[i],
                                i + 1 < argc ? ", not " : "", i + 1 < argc ? argv[i + 1] : "");
                else
                        fprintf(stderr, "cmekctl: unknown command '%s'; see cmekctl --help.\n", argv[i]);
                return CTL_EXIT_USAGE;
        }
        if (v->group)
                i++;
        return v->run(argc - i, argv + i);
}
