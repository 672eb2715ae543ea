/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* Unit tests for the cmekd.conf parser (daemon/config.c): values, ranges, errors, reload rules. */

#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>

#include "cmek-util.h"
#include "../../daemon/config.h"     /* not the build tree's autoconf config.h */

static char dir[] = "/tmp/test-config-XXXXXX";

/* Parses text as a file; returns config_load()'s result, the config (or NULL) and the errors. */
static int parse(const char *text, Config **ret, unsigned *ret_n_errors) {
        char path[256];
        FILE *f;

        snprintf(path, sizeof(path), "%s/cmekd.conf", dir);
        f = fopen(path, "we");
        assert_non_null(f);
        fputs(text, f);
        fclose(f);
        *ret = NULL;
        return config_load(path, false, ret, ret_n_errors);
}

static void assert_errors(const char *text, unsigned n) {
        Config *c = NULL;
        unsigned n_errors = 0;

        assert_int_equal(parse(text, &c, &n_errors), -EINVAL);
        assert_null(c);
        assert_int_equal(n_errors, n);
}

static void test_defaults(void **state) {
        Config *c = NULL;
        (void) state;

        assert_int_equal(config_load(NULL, false, &c, NULL), 0);
        assert_int_equal(c->on_disable, CONFIG_ON_DISABLE_SUSPEND);
        assert_int_equal(c->watch_usec, 5000000);
        assert_int_equal(c->hook_timeout_usec, 10000000);
        assert_int_equal(c->limits.connections_max, 4096);
        assert_int_equal(c->limits.connections_root, 128);
        assert_int_equal(c->limits.connections_per_uid, 128);
        assert_int_equal(c->limits.output_per_uid, 4 * 1024 * 1024);
        assert_int_equal(c->limits.output_without_grant, 64 * 1024);
        assert_int_equal(c->limits.rate, 500);
        assert_int_equal(c->limits.rate_without_grant, 50);
        assert_int_equal(c->limits.idle_usec, 60000000);
        assert_int_equal(c->metrics_gid, 0);
        assert_int_equal(c->n_vaults, 0);
        config_free(c);

        /* a file that does not exist: the defaults only when that is allowed */
        assert_int_equal(config_load("/nonexistent/cmekd.conf", true, &c, NULL), 0);
        assert_null(c->path);
        config_free(c);
        c = NULL;
        assert_int_equal(config_load("/nonexistent/cmekd.conf", false, &c, NULL), -ENOENT);
        assert_null(c);
}

static void test_values(void **state) {
        const ConfigVault *v;
        Config *c = NULL;
        (void) state;

        assert_int_equal(parse("# comment\n; comment\n\n"
                               "[vault default]\ncompartments = Dev, Test\n"
                               "[vault hsm]\nmodule = /usr/lib/x.so\ntoken = pkcs11:token=prod;manufacturer=Acme\n"
                               "pin-file = /etc/cmekd/pin\npin-credential = hsm-pin\ncompartments = Prod\n"
                               "[ enforcement ]\n  on-disable=close  \nwatch-interval = 0.1\n"
                               "[events]\nhook-timeout = 3600\n"
                               "[limits]\nconnections-max = 1K\noutput-per-uid = 8M\noutput-without-grant = 1G\n"
                               "requests-per-second = 0\nidle-timeout = 1\nconnections-per-uid = 5\nconnections-per-uid = 7\n"
                               "[metrics]\ngroup = 0\n", &c, NULL), 0);
        assert_int_equal(c->on_disable, CONFIG_ON_DISABLE_CLOSE);
        assert_int_equal(c->watch_usec, 100000);
        assert_int_equal(c->hook_timeout_usec, 3600ULL * 1000000ULL);
        assert_int_equal(c->limits.connections_max, 1024);
        assert_int_equal(c->limits.output_per_uid, 8 * 1024 * 1024);
        assert_int_equal(c->limits.output_without_grant, 1024 * 1024 * 1024);
        assert_int_equal(c->limits.rate, 0);
        assert_int_equal(c->limits.idle_usec, 1000000);
        assert_int_equal(c->limits.connections_per_uid, 7);    /* the last one */
        assert_int_equal(c->n_vaults, 2);
        v = config_find_vault(c, "default");
        assert_non_null(v);
        assert_null(v->module);
        assert_int_equal(v->n_compartments, 2);
        assert_string_equal(v->compartments[0], "Dev");
        assert_string_equal(v->compartments[1], "Test");
        v = config_find_vault(c, "hsm");
        assert_non_null(v);
        assert_int_equal(v->line, 6);
        assert_string_equal(v->module, "/usr/lib/x.so");
        assert_string_equal(v->token, "pkcs11:token=prod;manufacturer=Acme");
        assert_string_equal(v->pin_file, "/etc/cmekd/pin");
        assert_string_equal(v->pin_credential, "hsm-pin");
        assert_int_equal(v->n_compartments, 1);
        assert_null(config_find_vault(c, "nothere"));
        config_free(c);
}

static void test_errors(void **state) {
        (void) state;

        assert_errors("[enforcment]\non-disable = close\n", 1);          /* its settings are not reported */
        assert_errors("[vault]\nmodule = /x.so\n", 1);
        assert_errors("[limits\n", 1);
        assert_errors("[limits] x\n", 1);
        assert_errors("on-disable = close\n", 1);                         /* outside of any section */
        assert_errors("[limits]\nno equals sign\n", 1);
        assert_errors("[limits]\nrequest-per-second = 1\n", 1);
        assert_errors("[enforcement]\non-disable = shut\n", 1);
        assert_errors("[enforcement]\non-disable =\n", 1);
        assert_errors("[enforcement]\nwatch-interval = 0.09\n", 1);
        assert_errors("[enforcement]\nwatch-interval = 3601\n", 1);
        assert_errors("[enforcement]\nwatch-interval = 5s\n", 1);
        assert_errors("[enforcement]\nwatch-interval = -1\n", 1);
        assert_errors("[events]\nhook-timeout = 0.5\n", 1);
        assert_errors("[limits]\nconnections-max = 15\n", 1);
        assert_errors("[limits]\nconnections-max = 65537\n", 1);
        assert_errors("[limits]\nconnections-max = 12x\n", 1);
        assert_errors("[limits]\nconnections-max = -1\n", 1);
        assert_errors("[limits]\nconnections-max = 99999999999999999999999\n", 1);
        assert_errors("[limits]\noutput-per-uid = 2G\n", 1);
        assert_errors("[limits]\noutput-per-uid = 17179869184G\n", 1);
        assert_errors("[limits]\nidle-timeout = 0\n", 1);
        assert_errors("[vault hsm]\ntoken = token=x\n", 1);
        assert_errors("[vault hsm]\ntoken = pkcs11:token=%zz\n", 1);
        assert_errors("[vault hsm]\nmodule =\n", 1);
        assert_errors("[vault hsm]\ncompartments = Prod bad/name\n", 1);
        assert_errors("[vault hsm]\nslot = 1\n", 1);
        assert_errors("[vault hsm]\n[vault hsm]\n", 1);
        assert_errors("[vault default]\nmodule = /x.so\n", 1);
        assert_errors("[metrics]\ngroup = no-such-group-cmek-test\n", 1);
        /* every error of a file is counted */
        assert_errors("[enforcment]\n[limits]\nbogus = 1\nidle-timeout = x\n[vault a]\ntoken = a\n", 4);
}

static void test_reload(void **state) {
        Config *a = NULL, *b = NULL;
        (void) state;

        assert_int_equal(parse("[vault hsm]\nmodule = /x.so\n[limits]\nidle-timeout = 5\n", &a, NULL), 0);
        /* the same: nothing to say */
        assert_int_equal(parse("[vault hsm]\nmodule = /x.so\n[limits]\nidle-timeout = 5\n", &b, NULL), 0);
        assert_int_equal(config_log_changes(a, b), 0);
        config_free(b);
        /* run-time settings only */
        assert_int_equal(parse("[vault hsm]\nmodule = /x.so\n[limits]\nidle-timeout = 6\n[enforcement]\non-disable = close\n",
                               &b, NULL), 0);
        assert_int_equal(config_log_changes(a, b), 0);
        config_free(b);
        /* a changed vault and an added one need a restart; the vaults in use stay */
        assert_int_equal(parse("[vault hsm]\nmodule = /y.so\n[vault new]\nmodule = /z.so\n[limits]\nidle-timeout = 7\n",
                               &b, NULL), 0);
        assert_int_equal(config_log_changes(a, b), 2);
        config_keep_restart_settings(b, a);
        assert_int_equal(b->n_vaults, 1);
        assert_string_equal(b->vaults[0]->module, "/x.so");
        assert_int_equal(b->limits.idle_usec, 7000000);
        assert_int_equal(a->n_vaults, 2);
        config_free(a);
        config_free(b);
}

static int setup(void **state) {
        (void) state;
        assert_non_null(mkdtemp(dir));
        return 0;
}

static int teardown(void **state) {
        char path[256];
        (void) state;
        snprintf(path, sizeof(path), "%s/cmekd.conf", dir);
        (void) unlink(path);
        (void) rmdir(dir);
        return 0;
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_defaults),
                cmocka_unit_test(test_values),
                cmocka_unit_test(test_errors),
                cmocka_unit_test(test_reload),
        };

        cmocka_set_message_output(CM_OUTPUT_TAP);
        return cmocka_run_group_tests_name("config", tests, setup, teardown);
}
