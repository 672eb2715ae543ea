/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* cmekd.conf: the one parser of the configuration file and the typed settings it yields. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "cmek-util.h"

/* [enforcement] on-disable=; the values of OnDisable (volume.h), in that order */
#define CONFIG_ON_DISABLE_SUSPEND 0
#define CONFIG_ON_DISABLE_CLOSE 1

/* One "[vault NAME]" section (a repeated section). Missing settings stay NULL: such a vault is
 * listed as unavailable with the reason, it is not a configuration error. */
typedef struct ConfigVault {
        char *name;
        unsigned line;                  /* of the section header */
        char *module;                   /* module= */
        char *token;                    /* token=, a pkcs11: URI */
        char *pin_file;                 /* pin-file= */
        char *pin_credential;           /* pin-credential= */
        char **compartments;            /* compartments=; none: any compartment */
        size_t n_compartments;
} ConfigVault;

typedef struct ConfigLimits {
        unsigned connections_max;
        unsigned connections_root;      /* connections-reserved-for-root */
        unsigned connections_per_uid;
        uint64_t output_per_uid;        /* bytes */
        uint64_t output_without_grant;  /* bytes */
        unsigned rate;                  /* requests-per-second; 0: no limit */
        unsigned rate_without_grant;    /* requests-per-second-without-grant */
        uint64_t idle_usec;             /* idle-timeout */
} ConfigLimits;

typedef struct Config {
        char *path;                     /* NULL: no file, every default */
        ConfigVault **vaults;           /* in file order */
        size_t n_vaults;
        int on_disable;                 /* [enforcement] on-disable=, CONFIG_ON_DISABLE_* */
        uint64_t watch_usec;            /* [enforcement] watch-interval= */
        uint64_t hook_timeout_usec;     /* [events] hook-timeout= */
        ConfigLimits limits;            /* [limits] */
        gid_t metrics_gid;              /* [metrics] group=; 0: root only */
        char *metrics_group;            /* as written; NULL: the default */
} Config;

/* Reads path (NULL or, with missing_ok, a file that does not exist: every default). Each error
 * is logged as "FILE:LINE: ..." saying what is allowed; after the whole file was read, returns
 * -EINVAL if there was any (ret_n_errors: how many), -ENOENT for a missing file without
 * missing_ok, -errno if it cannot be read. Touches no token and no state. */
int config_load(const char *path, bool missing_ok, Config **ret, unsigned *ret_n_errors);
/* Every default, no vault. */
int config_new_default(Config **ret);
Config *config_free(Config *c);
static inline void config_freep(Config **c) { if (*c) config_free(*c); }
#define _cleanup_config_ _cleanup_(config_freep)

const ConfigVault *config_find_vault(const Config *c, const char *name);

/* Logs every setting that differs between old and new, as "applied" or as "needs a restart";
 * returns how many need a restart (they keep their old value until then). */
unsigned config_log_changes(const Config *old, const Config *new);
/* Before new replaces old on a reload: the settings that need a restart (the vaults) go back to
 * the values in use, so that new describes what runs. */
void config_keep_restart_settings(Config *new, Config *old);
