/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* Named fault points for crash-safety tests; inert unless built and started with test hooks. */
#include <signal.h>
#include <stdio.h>

#include "cmek-fault.h"
#include "cmek-log.h"
#include "cmek-util.h"

static bool fault_enabled = false;
static unsigned fault_hits = 0;

/* the shared chokepoint of every atomic file write (the writer in lib/cmek-util.c,
 * which the tools link without this file) */
static void write_file_before_rename(void) {
        cmek_fault("write-file-before-rename");
}

void cmek_fault_enable(bool b) {
        fault_enabled = ENABLE_TEST_HOOKS && b;
        cmek_write_file_set_before_rename_hook(fault_enabled ? write_file_before_rename : NULL);
}

void cmek_fault(const char *name) {
        const char *e, *colon;
        size_t n;
        unsigned want = 1;

        if (!ENABLE_TEST_HOOKS || !fault_enabled)
                return;
        e = getenv(CMEK_FAULT_ENV);
        if (!e || !*e)
                return;
        colon = strchr(e, ':');
        n = colon ? (size_t) (colon - e) : strlen(e);
        if (strlen(name) != n || strncmp(e, name, n) != 0)
                return;
        if (colon)
                want = (unsigned) strtoul(colon + 1, NULL, 10);
        if (++fault_hits < want)
                return;
        log_notice("Test fault point '%s' reached, killing myself.", name);
        /* like kill -9 from outside: no atexit handlers, no buffered writes */
        (void) raise(SIGKILL);
}
