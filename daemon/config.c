/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* cmekd.conf: one table-driven parser (after systemd's ConfigTableItem), read into a Config. */
#include <assert.h>
#include <ctype.h>
#include <errno.h>
#include <grp.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <p11-kit/uri.h>

#include "cmek-log.h"
#include "config.h"

#define VAULT_SECTION "vault"
#define VAULT_EMBEDDED_NAME "default"   /* VAULT_DEFAULT_NAME in vault.h */
#define COMPARTMENT_NAME_MAX 48

typedef struct ConfigTableItem ConfigTableItem;

/* Where a value was read, for the error message. */
typedef struct ConfigContext {
        const char *filename;
        unsigned line;
        const char *section;    /* as written between the brackets */
        unsigned n_errors;
} ConfigContext;

/* Parses rvalue into data (the field at item->offset); on a bad value logs the error through
 * config_error() and returns -EINVAL; -ENOMEM stops the whole parse. */
typedef int (*ConfigParserCallback)(ConfigContext *ctx, const ConfigTableItem *item, const char *rvalue, void *data);

struct ConfigTableItem {
        const char *section;    /* VAULT_SECTION: each "[vault NAME]"; offset is into ConfigVault */
        const char *lvalue;
        ConfigParserCallback parse;
        uint64_t min, max;      /* numbers: the allowed range (durations in µs) */
        size_t offset;          /* into Config, or into ConfigVault */
        bool restart;           /* a change takes effect only at the next start */
};

static int config_error(ConfigContext *ctx, const char *fmt, ...) _printf_(2, 3);
static int config_error(ConfigContext *ctx, const char *fmt, ...) {
        _cleanup_free_ char *msg = NULL;
        va_list ap;
        int r;

        va_start(ap, fmt);
        r = vasprintf(&msg, fmt, ap);
        va_end(ap);
        if (r < 0)
                return -ENOMEM;
        ctx->n_errors++;
        log_error("%s:%u: %s", ctx->filename, ctx->line, msg);
        return -EINVAL;
}

/* "N" with an optional K, M or G suffix (powers of 1024) */
static int parse_number_suffix(const char *v, uint64_t *ret) {
        unsigned long long n;
        unsigned shift = 0;
        char *end;

        if (!isdigit((unsigned char) *v))
                return -EINVAL;
        errno = 0;
        n = strtoull(v, &end, 10);
        if (errno)
                return -ERANGE;
        switch (*end) {
        case 'K': shift = 10; end++; break;
        case 'M': shift = 20; end++; break;
        case 'G': shift = 30; end++; break;
        default: break;
        }
        if (*end)
                return -EINVAL;
        if (shift && n > (UINT64_MAX >> shift))
                return -ERANGE;
        *ret = (uint64_t) n << shift;
        return 0;
}

static int config_parse_number(ConfigContext *ctx, const ConfigTableItem *item, const char *rvalue, uint64_t *ret) {
        uint64_t n;

        if (parse_number_suffix(rvalue, &n) < 0 || n < item->min || n > item->max)
                return config_error(ctx, "[%s] %s is a number between %" PRIu64 " and %" PRIu64
                                    " (K, M or G may follow), not '%s'.",
                                    ctx->section, item->lvalue, item->min, item->max, rvalue);
        *ret = n;
        return 0;
}

static int config_parse_unsigned(ConfigContext *ctx, const ConfigTableItem *item, const char *rvalue, void *data) {
        uint64_t n;
        int r = config_parse_number(ctx, item, rvalue, &n);
        if (r < 0)
                return r;
        *(unsigned *) data = (unsigned) n;
        return 0;
}

static int config_parse_size(ConfigContext *ctx, const ConfigTableItem *item, const char *rvalue, void *data) {
        return config_parse_number(ctx, item, rvalue, data);
}

/* "SECONDS", a decimal number, e.g. 0.5; min and max are in µs */
static int config_parse_seconds(ConfigContext *ctx, const ConfigTableItem *item, const char *rvalue, void *data) {
        char *end = (char *) rvalue;
        double sec;

        errno = 0;
        sec = isdigit((unsigned char) *rvalue) ? strtod(rvalue, &end) : -1;
        if (sec < 0 || errno || *end || !(sec * 1e6 >= (double) item->min && sec * 1e6 <= (double) item->max))
                return config_error(ctx, "[%s] %s is seconds between %g and %g, not '%s'.", ctx->section,
                                    item->lvalue, (double) item->min / 1e6, (double) item->max / 1e6, rvalue);
        *(uint64_t *) data = (uint64_t) (sec * 1e6 + 0.5);
        return 0;
}

static int config_parse_on_disable(ConfigContext *ctx, const ConfigTableItem *item, const char *rvalue, void *data) {
        if (streq(rvalue, "suspend"))
                *(int *) data = CONFIG_ON_DISABLE_SUSPEND;
        else if (streq(rvalue, "close"))
                *(int *) data = CONFIG_ON_DISABLE_CLOSE;
        else
                return config_error(ctx, "[%s] %s is 'suspend' or 'close', not '%s'.", ctx->section, item->lvalue, rvalue);
        return 0;
}

static int config_parse_string(ConfigContext *ctx, const ConfigTableItem *item, const char *rvalue, void *data) {
        char **s = data, *copy;

        if (!*rvalue)
                return config_error(ctx, "[%s] %s needs a value.", ctx->section, item->lvalue);
        copy = strdup(rvalue);
        if (!copy)
                return -ENOMEM;
        free(*s);
        *s = copy;
        return 0;
}

/* An RFC 7512 token URI: "pkcs11:" and what p11-kit accepts for a token. No token is asked. */
static int config_parse_token_uri(ConfigContext *ctx, const ConfigTableItem *item, const char *rvalue, void *data) {
        P11KitUri *uri;
        int k;

        if (strncmp(rvalue, "pkcs11:", 7) != 0)
                return config_error(ctx, "[%s] %s is a PKCS#11 URI starting with 'pkcs11:' (e.g. pkcs11:token=LABEL), not '%s'.",
                                    ctx->section, item->lvalue, rvalue);
        uri = p11_kit_uri_new();
        if (!uri)
                return -ENOMEM;
        k = p11_kit_uri_parse(rvalue, P11_KIT_URI_FOR_TOKEN, uri);
        p11_kit_uri_free(uri);
        if (k != P11_KIT_URI_OK)
                return config_error(ctx, "[%s] %s: invalid PKCS#11 URI '%s': %s.", ctx->section, item->lvalue, rvalue,
                                    p11_kit_uri_message(k));
        return config_parse_string(ctx, item, rvalue, data);
}

/* "A B C" or "A, B, C": names of 1 to 48 letters, digits, '-' and '_'; empty: any compartment */
static int config_parse_compartments(ConfigContext *ctx, const ConfigTableItem *item, const char *rvalue, void *data) {
        ConfigVault *v = (ConfigVault *) ((char *) data - offsetof(ConfigVault, compartments));
        _cleanup_free_ char *copy = strdup(rvalue);
        char **list = NULL, *save = NULL;
        size_t n = 0;
        int r = 0;

        if (!copy)
                return -ENOMEM;
        for (char *w = strtok_r(copy, " \t,", &save); w; w = strtok_r(NULL, " \t,", &save)) {
                size_t len = strlen(w);
                bool ok = len >= 1 && len <= COMPARTMENT_NAME_MAX;
                for (size_t i = 0; ok && i < len; i++)
                        ok = isalnum((unsigned char) w[i]) || w[i] == '-' || w[i] == '_';
                if (!ok) {
                        r = config_error(ctx, "[%s] %s: '%s' is not a compartment name (1 to %d letters, digits, '-' "
                                         "or '_'; names separated by spaces or commas).",
                                         ctx->section, item->lvalue, w, COMPARTMENT_NAME_MAX);
                        goto out;
                }
                char **a = reallocarray(list, n + 1, sizeof(char *));
                if (!a) {
                        r = -ENOMEM;
                        goto out;
                }
                list = a;
                if (!(list[n] = strdup(w))) {
                        r = -ENOMEM;
                        goto out;
                }
                n++;
        }
        for (size_t i = 0; i < v->n_compartments; i++)
                free(v->compartments[i]);
        free(v->compartments);
        v->compartments = TAKE_PTR(list);
        v->n_compartments = n;
out:
        for (size_t i = 0; list && i < n; i++)
                free(list[i]);
        free(list);
        return r;
}

/* "NAME" or "GID" of an existing group */
static int config_parse_group(ConfigContext *ctx, const ConfigTableItem *item, const char *rvalue, void *data) {
        Config *c = (Config *) ((char *) data - offsetof(Config, metrics_gid));
        struct group *g = *rvalue ? getgrnam(rvalue) : NULL;
        unsigned long n;
        char *end = (char *) rvalue, *copy;
        gid_t gid;

        errno = 0;
        n = isdigit((unsigned char) *rvalue) ? strtoul(rvalue, &end, 10) : 0;
        if (g)
                gid = g->gr_gid;
        else if (isdigit((unsigned char) *rvalue) && !errno && !*end && n < (gid_t) -1)
                gid = (gid_t) n;
        else
                return config_error(ctx, "[%s] %s: no group '%s' exists: create it or give an existing group's name or GID.",
                                    ctx->section, item->lvalue, rvalue);
        copy = strdup(rvalue);
        if (!copy)
                return -ENOMEM;
        free(c->metrics_group);
        c->metrics_group = copy;
        c->metrics_gid = gid;
        return 0;
}

#define MIN_SEC(x) ((uint64_t) ((x) * 1e6))
static const ConfigTableItem config_table[] = {
        { VAULT_SECTION, "module",         config_parse_string,       0, 0, offsetof(ConfigVault, module), true },
        { VAULT_SECTION, "token",          config_parse_token_uri,    0, 0, offsetof(ConfigVault, token), true },
        { VAULT_SECTION, "pin-file",       config_parse_string,       0, 0, offsetof(ConfigVault, pin_file), true },
        { VAULT_SECTION, "pin-credential", config_parse_string,       0, 0, offsetof(ConfigVault, pin_credential), true },
        { VAULT_SECTION, "compartments",   config_parse_compartments, 0, 0, offsetof(ConfigVault, compartments), true },
        { "enforcement", "on-disable",     config_parse_on_disable,   0, 0, offsetof(Config, on_disable), false },
        { "enforcement", "watch-interval", config_parse_seconds,      MIN_SEC(0.1), MIN_SEC(3600), offsetof(Config, watch_usec), false },
        { "events",      "hook-timeout",   config_parse_seconds,      MIN_SEC(1), MIN_SEC(3600), offsetof(Config, hook_timeout_usec), false },
        { "limits", "connections-max",                   config_parse_unsigned, 16, 65536, offsetof(Config, limits.connections_max), false },
        { "limits", "connections-reserved-for-root",     config_parse_unsigned, 1, 4096, offsetof(Config, limits.connections_root), false },
        { "limits", "connections-per-uid",               config_parse_unsigned, 1, 65536, offsetof(Config, limits.connections_per_uid), false },
        { "limits", "output-per-uid",                    config_parse_size, 4096, 1ULL << 30, offsetof(Config, limits.output_per_uid), false },
        { "limits", "output-without-grant",              config_parse_size, 1024, 1ULL << 30, offsetof(Config, limits.output_without_grant), false },
        { "limits", "requests-per-second",               config_parse_unsigned, 0, 1000000, offsetof(Config, limits.rate), false },
        { "limits", "requests-per-second-without-grant", config_parse_unsigned, 0, 1000000, offsetof(Config, limits.rate_without_grant), false },
        { "limits", "idle-timeout",                      config_parse_seconds, MIN_SEC(1), MIN_SEC(3600), offsetof(Config, limits.idle_usec), false },
        { "metrics", "group",                            config_parse_group, 0, 0, offsetof(Config, metrics_gid), false },
};

static const char *const config_sections[] = { "vault NAME", "enforcement", "events", "limits", "metrics" };

int config_new_default(Config **ret) {
        Config *c = calloc(1, sizeof(Config));

        if (!c)
                return -ENOMEM;
        c->on_disable = CONFIG_ON_DISABLE_SUSPEND;
        c->watch_usec = 5 * USEC_PER_SEC;
        c->hook_timeout_usec = 10 * USEC_PER_SEC;
        c->limits = (ConfigLimits) {
                .connections_max = 4096,
                .connections_root = 128,
                .connections_per_uid = 128,
                .output_per_uid = 4U * 1024U * 1024U,
                .output_without_grant = 64U * 1024U,
                .rate = 500,
                .rate_without_grant = 50,
                .idle_usec = 60 * USEC_PER_SEC,
        };
        c->metrics_gid = 0;
        *ret = c;
        return 0;
}

static ConfigVault *config_vault_free(ConfigVault *v) {
        if (!v)
                return NULL;
        free(v->name);
        free(v->module);
        free(v->token);
        free(v->pin_file);
        free(v->pin_credential);
        for (size_t i = 0; i < v->n_compartments; i++)
                free(v->compartments[i]);
        free(v->compartments);
        free(v);
        return NULL;
}

Config *config_free(Config *c) {
        if (!c)
                return NULL;
        for (size_t i = 0; i < c->n_vaults; i++)
                config_vault_free(c->vaults[i]);
        free(c->vaults);
        free(c->metrics_group);
        free(c->path);
        free(c);
        return NULL;
}

const ConfigVault *config_find_vault(const Config *c, const char *name) {
        for (size_t i = 0; c && i < c->n_vaults; i++)
                if (streq(c->vaults[i]->name, name))
                        return c->vaults[i];
        return NULL;
}

static char *strstrip(char *s) {
        while (isspace((unsigned char) *s))
                s++;
        size_t n = strlen(s);
        while (n > 0 && isspace((unsigned char) s[n - 1]))
                s[--n] = 0;
        return s;
}

/* "a, b or c" of the keys of one section, for "unknown setting" */
static char *config_section_keys(const char *section) {
        char *s = NULL;
        size_t n = 0, k = 0;

        for (size_t i = 0; i < ARRAY_SIZE(config_table); i++)
                n += streq(config_table[i].section, section);
        for (size_t i = 0; i < ARRAY_SIZE(config_table); i++) {
                const char *sep;
                char *t;

                if (!streq(config_table[i].section, section))
                        continue;
                sep = k == 0 ? "" : k + 1 == n ? " or " : ", ";
                if (asprintf(&t, "%s%s%s", strempty(s), sep, config_table[i].lvalue) < 0) {
                        free(s);
                        return NULL;
                }
                free(s);
                s = t;
                k++;
        }
        return s;
}

/* A section header (brackets removed). Sets *ret_vault for [vault NAME]; *ret_section to the
 * table's section name, NULL if the section is wrong (reported: its settings are skipped). */
static int config_section(ConfigContext *ctx, Config *c, char *name, const char **ret_section, ConfigVault **ret_vault) {
        ConfigVault *v;

        *ret_section = NULL;
        *ret_vault = NULL;
        if (strncmp(name, VAULT_SECTION, strlen(VAULT_SECTION)) == 0 &&
            (name[strlen(VAULT_SECTION)] == 0 || isspace((unsigned char) name[strlen(VAULT_SECTION)]))) {
                const char *vname = strstrip(name + strlen(VAULT_SECTION));
                if (!*vname)
                        return config_error(ctx, "a vault section needs a name: [vault NAME].");
                if (config_find_vault(c, vname))
                        return config_error(ctx, "[vault %s] is defined twice; give each vault its own name.", vname);
                v = calloc(1, sizeof(ConfigVault));
                if (!v)
                        return -ENOMEM;
                v->line = ctx->line;
                v->name = strdup(vname);
                ConfigVault **a = v->name ? reallocarray(c->vaults, c->n_vaults + 1, sizeof(ConfigVault *)) : NULL;
                if (!a) {
                        config_vault_free(v);
                        return -ENOMEM;
                }
                c->vaults = a;
                c->vaults[c->n_vaults++] = v;
                *ret_section = VAULT_SECTION;
                *ret_vault = v;
                return 0;
        }
        for (size_t i = 0; i < ARRAY_SIZE(config_sections); i++)
                if (streq(name, config_sections[i])) {
                        *ret_section = config_sections[i];
                        return 0;
                }
        return config_error(ctx, "unknown section [%s]; the sections are [vault NAME], [enforcement], [events], "
                            "[limits] and [metrics] (see cmekd.conf(5)).", name);
}

static int config_assign(ConfigContext *ctx, Config *c, const char *section, ConfigVault *vault, const char *lvalue,
                         const char *rvalue) {
        for (size_t i = 0; i < ARRAY_SIZE(config_table); i++) {
                const ConfigTableItem *item = &config_table[i];

                if (!streq(item->section, section) || !streq(item->lvalue, lvalue))
                        continue;
                if (vault && streq(vault->name, VAULT_EMBEDDED_NAME) && !streq(lvalue, "compartments"))
                        return config_error(ctx, "[vault %s] is the embedded vault: only compartments= can be set, not %s=.",
                                            VAULT_EMBEDDED_NAME, lvalue);
                return item->parse(ctx, item, rvalue, (char *) (vault ? (void *) vault : (void *) c) + item->offset);
        }

        _cleanup_free_ char *keys = config_section_keys(section);
        if (!keys)
                return -ENOMEM;
        return config_error(ctx, "unknown setting '%s' in [%s]; the settings there are %s.", lvalue, ctx->section, keys);
}

static int config_parse_file(FILE *f, Config *c, ConfigContext *ctx) {
        _cleanup_free_ char *line = NULL, *section_text = NULL;
        const char *section = NULL;
        ConfigVault *vault = NULL;
        bool skip = false;      /* inside a wrong section: its settings are not reported one by one */
        size_t alloc = 0;
        int r;

        while (getline(&line, &alloc, f) >= 0) {
                char *l = strstrip(line), *eq;
                ctx->line++;

                if (*l == 0 || *l == '#' || *l == ';')
                        continue;
                if (*l == '[') {
                        char *end = strchr(l, ']');
                        free(section_text);
                        section_text = NULL;
                        section = NULL;
                        vault = NULL;
                        skip = true;
                        if (!end || strstrip(end + 1)[0] != 0) {
                                r = config_error(ctx, "a section header is '[NAME]' alone on its line, not '%s'.", l);
                                if (r == -ENOMEM)
                                        return r;
                                continue;
                        }
                        *end = 0;
                        section_text = strdup(strstrip(l + 1));
                        if (!section_text)
                                return -ENOMEM;
                        ctx->section = section_text;
                        r = config_section(ctx, c, section_text, &section, &vault);
                        if (r == -ENOMEM)
                                return r;
                        skip = r < 0;
                        continue;
                }
                if (skip)
                        continue;
                eq = strchr(l, '=');
                if (!eq) {
                        r = config_error(ctx, "expected 'KEY = VALUE', not '%s'.", l);
                        if (r == -ENOMEM)
                                return r;
                        continue;
                }
                *eq = 0;
                const char *lvalue = strstrip(l), *rvalue = strstrip(eq + 1);
                if (!section)
                        r = config_error(ctx, "'%s' is outside of any section; put it under its section, e.g. [limits].", lvalue);
                else
                        r = config_assign(ctx, c, section, vault, lvalue, rvalue);
                if (r == -ENOMEM)
                        return r;
        }
        if (ferror(f))
                return -EIO;
        return 0;
}

int config_load(const char *path, bool missing_ok, Config **ret, unsigned *ret_n_errors) {
        _cleanup_config_ Config *c = NULL;
        _cleanup_fclose_ FILE *f = NULL;
        ConfigContext ctx = { .filename = path };
        int r;

        if (ret_n_errors)
                *ret_n_errors = 0;
        r = config_new_default(&c);
        if (r < 0)
                return r;
        if (path) {
                f = fopen(path, "re");
                if (!f) {
                        if (errno != ENOENT || !missing_ok)
                                return log_error_errno(errno, "Cannot read the configuration file '%s': %m", path);
                } else {
                        c->path = strdup(path);
                        if (!c->path)
                                return -ENOMEM;
                        r = config_parse_file(f, c, &ctx);
                        if (r < 0)
                                return log_error_errno(r, "Failed to read '%s': %m", path);
                }
        }
        if (ret_n_errors)
                *ret_n_errors = ctx.n_errors;
        if (ctx.n_errors > 0)
                return -EINVAL;
        *ret = TAKE_PTR(c);
        return 0;
}

/* --- reload --- */

static bool config_vault_equal(const ConfigVault *a, const ConfigVault *b) {
        if (!streq_ptr(a->module, b->module) || !streq_ptr(a->token, b->token) || !streq_ptr(a->pin_file, b->pin_file) ||
            !streq_ptr(a->pin_credential, b->pin_credential) || a->n_compartments != b->n_compartments)
                return false;
        for (size_t i = 0; i < a->n_compartments; i++)
                if (!streq(a->compartments[i], b->compartments[i]))
                        return false;
        return true;
}

static bool config_item_equal(const ConfigTableItem *item, const Config *a, const Config *b) {
        const void *x = (const char *) a + item->offset, *y = (const char *) b + item->offset;

        if (item->parse == config_parse_unsigned)
                return *(const unsigned *) x == *(const unsigned *) y;
        if (item->parse == config_parse_size || item->parse == config_parse_seconds)
                return *(const uint64_t *) x == *(const uint64_t *) y;
        if (item->parse == config_parse_on_disable)
                return *(const int *) x == *(const int *) y;
        if (item->parse == config_parse_group)
                return *(const gid_t *) x == *(const gid_t *) y;
        return false;   /* a type this function does not know: treat as changed */
}

unsigned config_log_changes(const Config *old, const Config *new) {
        unsigned n_restart = 0;

        for (size_t i = 0; i < ARRAY_SIZE(config_table); i++) {
                const ConfigTableItem *item = &config_table[i];

                if (streq(item->section, VAULT_SECTION) || config_item_equal(item, old, new))
                        continue;
                if (item->restart) {
                        log_warning("[%s] %s= changed: needs a restart of cmekd, the old value stays in use until then.",
                                    item->section, item->lvalue);
                        n_restart++;
                } else
                        log_info("[%s] %s= changed: applied.", item->section, item->lvalue);
        }
        for (size_t i = 0; i < old->n_vaults; i++) {
                const ConfigVault *o = old->vaults[i], *n = config_find_vault(new, o->name);
                if (!n || !config_vault_equal(o, n)) {
                        log_warning("[vault %s] %s: needs a restart of cmekd, the vault stays as it was until then.",
                                    o->name, n ? "changed" : "removed");
                        n_restart++;
                }
        }
        for (size_t i = 0; i < new->n_vaults; i++)
                if (!config_find_vault(old, new->vaults[i]->name)) {
                        log_warning("[vault %s] added: needs a restart of cmekd.", new->vaults[i]->name);
                        n_restart++;
                }
        return n_restart;
}

void config_keep_restart_settings(Config *new, Config *old) {
        ConfigVault **v = new->vaults;
        size_t n = new->n_vaults;

        /* every [vault NAME] setting needs a restart: the vaults in use stay described as they are */
        new->vaults = old->vaults;
        new->n_vaults = old->n_vaults;
        old->vaults = v;
        old->n_vaults = n;
        for (size_t i = 0; i < ARRAY_SIZE(config_table); i++) {
                const ConfigTableItem *item = &config_table[i];
                size_t size = item->parse == config_parse_unsigned ? sizeof(unsigned) :
                              item->parse == config_parse_on_disable ? sizeof(int) :
                              item->parse == config_parse_size || item->parse == config_parse_seconds ? sizeof(uint64_t) : 0;

                /* a restart-only setting outside the vaults must be a plain number (or be added here) */
                if (!item->restart || streq(item->section, VAULT_SECTION))
                        continue;
                assert(size > 0);
                memcpy((char *) new + item->offset, (const char *) old + item->offset, size);
        }
}
