/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* cmekctl internals: verb tables, the daemon connection, output helpers. */
#pragma once

#include <stdbool.h>
#include <json-c/json.h>

#include "cmek-errors.h"
#include "cmek-log.h"
#include "cmek-varlink.h"

/* Exit codes (CTL_EXIT_*): lib/cmek-errors.h, with the error table that maps errors to them. */

typedef struct Verb {
        const char *group;      /* "key", "volume", ...; NULL for top-level verbs like "status" */
        const char *name;       /* "create" */
        const char *usage;      /* "NAME --compartment C [--length 256]" */
        const char *help;       /* one line */
        int (*run)(int argc, char *argv[]); /* argv[0] is the verb name; returns an exit code */
} Verb;

extern bool arg_json;           /* --json */
extern const char *arg_socket;  /* --socket PATH */

/* Calls a method and waits for the reply. On a Varlink error prints a readable message
 * (with the parameters that say what to do) and returns the matching exit code (> 0);
 * on success stores the reply parameters and returns 0. */
int ctl_call(const char *method, json_object *params, json_object **ret_reply);
/* Same, for "more" calls: on_reply runs for every reply until it returns non-zero or the
 * stream ends. */
int ctl_call_more(const char *method, json_object *params,
                  int (*on_reply)(json_object *reply, void *userdata), void *userdata);
/* Prints JSON (pretty) on stdout. */
void ctl_print_json(json_object *o);

/* Aligned text tables. */
typedef struct Table Table;
Table *table_new(const char *first_column, ...); /* column headers, NULL-terminated */
void table_add(Table *t, ...);                    /* one row: one string per column (NULL prints "-") */
void table_add_cell(Table *t, const char *s);     /* one cell, rows wrap at the column count */
void table_print(Table *t);                       /* prints, then frees */
/* s escaped for the terminal (cmek_cescape: control characters as \xNN, \n ...): for every string
 * that came from the daemon in human output. Valid until 8 more calls; NULL stays NULL. */
const char *ctl_esc(const char *s);
/* "key value" list for show commands. */
void ctl_print_field(const char *name, const char *value);

/* getopt helper: parse "--json" everywhere. Each verb parses its own options with getopt_long
 * (reset optind = 0 before), and must accept --json too. */
#define CTL_OPTION_JSON { "json", no_argument, NULL, 'J' }

/* Verb tables defined by each tools/cmekctl-*.c, NULL-terminated (name == NULL). */
extern const Verb service_verbs[];   /* status, policy check, audit show/verify */
#include "cmekctl-verbs.h"           /* CTL_EXTRA_VERB_TABLES: the other modules' tables */
