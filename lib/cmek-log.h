/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* Logging for the daemon and tools: stderr, with syslog priority prefixes under journald. */
#pragma once

#include <syslog.h>
#include "cmek-util.h"

void cmek_log_set_max_level(int level);
int cmek_log_get_max_level(void);
void cmek_log_set_ident(const char *ident);
/* Returns -abs(error) so callers can write: return log_error_errno(r, "Failed to ...: %m"). */
int cmek_log_internal(int level, int error, const char *file, int line, const char *fmt, ...) _printf_(5, 6);

#define log_full_errno(level, error, ...) cmek_log_internal(level, error, __FILE__, __LINE__, __VA_ARGS__)
#define log_debug(...) log_full_errno(LOG_DEBUG, 0, __VA_ARGS__)
#define log_info(...) log_full_errno(LOG_INFO, 0, __VA_ARGS__)
#define log_notice(...) log_full_errno(LOG_NOTICE, 0, __VA_ARGS__)
#define log_warning(...) log_full_errno(LOG_WARNING, 0, __VA_ARGS__)
#define log_error(...) log_full_errno(LOG_ERR, 0, __VA_ARGS__)
#define log_debug_errno(e, ...) log_full_errno(LOG_DEBUG, e, __VA_ARGS__)
#define log_warning_errno(e, ...) log_full_errno(LOG_WARNING, e, __VA_ARGS__)
#define log_error_errno(e, ...) log_full_errno(LOG_ERR, e, __VA_ARGS__)

#define STRINGIFY_(x) #x
#define STRINGIFY(x) STRINGIFY_(x)
