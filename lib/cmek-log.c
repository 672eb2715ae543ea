/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* Logging for the daemon and tools: stderr, with syslog priority prefixes under journald. */
#include <stdarg.h>
#include <stdio.h>

#include "cmek-log.h"

static int max_level = LOG_INFO;
static const char *ident;

void cmek_log_set_max_level(int level) { max_level = level; }
int cmek_log_get_max_level(void) { return max_level; }
void cmek_log_set_ident(const char *s) { ident = s; }

int cmek_log_internal(int level, int error, const char *file, int line, const char *fmt, ...) {
        int saved = errno;
        char raw[2048], buf[2048];
        va_list ap;

        if (error < 0)
                error = -error;
        if (level > max_level)
                return -error;
        errno = error; /* so that %m prints it */
        va_start(ap, fmt);
        (void) vsnprintf(raw, sizeof(raw), fmt, ap);
        va_end(ap);
        /* messages carry paths and names from callers and disk headers: one line, nothing a
         * terminal or the journal would interpret (an embedded newline would forge a log line) */
        (void) cmek_cescape_buf(raw, buf, sizeof(buf));
        if (getenv("JOURNAL_STREAM"))
                fprintf(stderr, "<%d>%s\n", level, buf);
        else if (ident)
                fprintf(stderr, "%s: %s\n", ident, buf);
        else
                fprintf(stderr, "%s\n", buf);
        (void) file;
        (void) line;
        errno = saved;
        return -error;
}
