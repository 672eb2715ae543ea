/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* Aligned text tables and field lists for cmekctl's human output. */
#include <stdarg.h>
#include <stdio.h>

#include "cmekctl.h"

struct Table {
        size_t n_cols, n_cells, alloc;
        char **cells;
};

Table *table_new(const char *first, ...) {
        Table *t = calloc(1, sizeof(*t));
        va_list ap;

        if (!t)
                return NULL;
        va_start(ap, first);
        for (const char *h = first; h; h = va_arg(ap, const char *)) {
                t->n_cols++;
                table_add_cell(t, h);
        }
        va_end(ap);
        return t;
}

void table_add_cell(Table *t, const char *s) {
        if (!t)
                return;
        if (t->n_cells == t->alloc) {
                size_t na = t->alloc ? t->alloc * 2 : 32;
                char **nc = realloc(t->cells, na * sizeof(char *));
                if (!nc)
                        return;
                t->cells = nc;
                t->alloc = na;
        }
        /* cells come from the daemon, which relays names, paths and audit lines from outside */
        t->cells[t->n_cells++] = cmek_cescape(s && *s ? s : "-");
}

void table_add(Table *t, ...) {
        va_list ap;
        va_start(ap, t);
        for (size_t i = 0; t && i < t->n_cols; i++)
                table_add_cell(t, va_arg(ap, const char *));
        va_end(ap);
}

void table_print(Table *t) {
        size_t *w;

        if (!t)
                return;
        w = calloc(t->n_cols, sizeof(size_t));
        for (size_t i = 0; w && i < t->n_cells; i++) {
                size_t l = strlen(t->cells[i] ?: "");
                if (l > w[i % t->n_cols])
                        w[i % t->n_cols] = l;
        }
        for (size_t i = 0; w && i < t->n_cells; i++) {
                size_t col = i % t->n_cols;
                bool last = col == t->n_cols - 1;
                printf("%-*s%s", last ? 0 : (int) w[col], t->cells[i] ?: "", last ? "\n" : "  ");
        }
        for (size_t i = 0; i < t->n_cells; i++)
                free(t->cells[i]);
        free(t->cells);
        free(w);
        free(t);
}

void ctl_print_field(const char *name, const char *value) {
        printf("%20s: %s\n", name, ctl_esc(value && *value ? value : "-"));
}

const char *ctl_esc(const char *s) {
        static char *ring[8];
        static unsigned next;
        char *e;

        if (!s)
                return NULL;
        e = cmek_cescape(s);
        if (!e)
                return "?";
        free(ring[next]);
        ring[next] = e;
        next = (next + 1) % ARRAY_SIZE(ring);
        return e;
}
