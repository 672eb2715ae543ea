/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* Named fault points for crash-safety tests: the process kills itself (SIGKILL) at the point
 * named by $CMEKD_TEST_FAULT. Only in builds configured with --enable-test-hooks, and only
 * after cmek_fault_enable(true) (the daemon calls it when started with --test-hooks). */
#pragma once

#include <stdbool.h>

#define CMEK_FAULT_ENV "CMEKD_TEST_FAULT"

void cmek_fault_enable(bool b);
/* Dies here when $CMEKD_TEST_FAULT is name (or "name:N": on the N-th time it is reached). */
void cmek_fault(const char *name);
