/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* The Varlink interfaces as data: the IDL text made from the declarations, the lookup of methods
 * and errors, and the check of a call's parameters before its handler runs. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cmek-util.h"
#include "varlink-idl.h"

#define ONE_LINE_MAX 100U       /* longer field lists are written one field per line */

typedef struct Text {
        char *buf;
        size_t len, alloc;
        bool oom;
} Text;

static void text_add(Text *t, const char *s) {
        size_t n = strlen(s);

        if (t->oom)
                return;
        if (t->len + n + 1 > t->alloc) {
                size_t na = t->alloc ? t->alloc : 1024;
                char *nb;

                while (t->len + n + 1 > na)
                        na *= 2;
                nb = realloc(t->buf, na);
                if (!nb) {
                        t->oom = true;
                        return;
                }
                t->buf = nb;
                t->alloc = na;
        }
        memcpy(t->buf + t->len, s, n + 1);
        t->len += n;
}

static void text_doc(Text *t, const char *indent, const char *doc) {
        if (!doc)
                return;
        for (const char *p = doc; *p; ) {
                size_t n = strcspn(p, "\n");
                char line[512];

                (void) snprintf(line, sizeof(line), "%s#%s%.*s\n", indent, n > 0 ? " " : "", (int) n, p);
                text_add(t, line);
                p += n;
                if (*p == '\n')
                        p++;
        }
}

static void text_type(Text *t, const VarlinkField *f) {
        if (f->nullable)
                text_add(t, "?");
        if (f->array)
                text_add(t, "[]");
        switch (f->kind) {
        case VARLINK_STRING: text_add(t, "string"); break;
        case VARLINK_INT:    text_add(t, "int"); break;
        case VARLINK_BOOL:   text_add(t, "bool"); break;
        case VARLINK_FLOAT:  text_add(t, "float"); break;
        case VARLINK_OBJECT: text_add(t, "object"); break;
        case VARLINK_NAMED:  text_add(t, f->type); break;
        case VARLINK_ENUM:
                text_add(t, "(");
                for (const char *const *v = f->values; *v; v++) {
                        if (v != f->values)
                                text_add(t, ", ");
                        text_add(t, *v);
                }
                text_add(t, ")");
                break;
        }
}

/* "(a: string, b: ?int)", or one field per line when documented or long */
static void text_fields(Text *t, const VarlinkField *fields) {
        Text one = {};
        bool multi = false;

        text_add(&one, "(");
        for (const VarlinkField *f = fields; f && f->name; f++) {
                if (f->doc)
                        multi = true;
                if (f != fields)
                        text_add(&one, ", ");
                text_add(&one, f->name);
                text_add(&one, ": ");
                text_type(&one, f);
        }
        text_add(&one, ")");
        if (one.oom)
                t->oom = true;
        else if (!multi && one.len <= ONE_LINE_MAX)
                text_add(t, one.buf);
        else {
                text_add(t, "(\n");
                for (const VarlinkField *f = fields; f && f->name; f++) {
                        text_doc(t, "  ", f->doc);
                        text_add(t, "  ");
                        text_add(t, f->name);
                        text_add(t, ": ");
                        text_type(t, f);
                        text_add(t, f[1].name ? ",\n" : "\n");
                }
                text_add(t, ")");
        }
        free(one.buf);
}

char *varlink_idl_format(const Interface *iface, bool test_hooks) {
        Text t = {};

        text_doc(&t, "", iface->doc);
        text_add(&t, "interface ");
        text_add(&t, iface->name);
        text_add(&t, "\n");
        for (const VarlinkSymbol *s = iface->symbols; s && s->name; s++) {
                if (s->test_only && !test_hooks)
                        continue;
                text_add(&t, "\n");
                text_doc(&t, "", s->doc);
                switch (s->kind) {
                case VARLINK_METHOD:
                        text_add(&t, "method ");
                        text_add(&t, s->name);
                        text_fields(&t, s->fields);
                        text_add(&t, " -> ");
                        text_fields(&t, s->out);
                        break;
                case VARLINK_TYPEDEF:
                        text_add(&t, "type ");
                        text_add(&t, s->name);
                        text_add(&t, " ");
                        text_fields(&t, s->fields);
                        break;
                case VARLINK_ERROR:
                        text_add(&t, "error ");
                        text_add(&t, s->name);
                        text_add(&t, " ");
                        text_fields(&t, s->fields);
                        break;
                }
                text_add(&t, "\n");
        }
        if (t.oom) {
                free(t.buf);
                return NULL;
        }
        return t.buf;
}

/* "io.cmek.key.Create": the interface is everything before the last dot */
static const Interface *find_interface(const Interface *const *ifaces, size_t n, const char *name, const char **ret_member) {
        const char *dot = strrchr(name, '.');

        if (!dot)
                return NULL;
        for (size_t i = 0; i < n; i++)
                if (strlen(ifaces[i]->name) == (size_t) (dot - name) &&
                    strncmp(ifaces[i]->name, name, (size_t) (dot - name)) == 0) {
                        *ret_member = dot + 1;
                        return ifaces[i];
                }
        return NULL;
}

static const VarlinkSymbol *find_symbol(const Interface *iface, VarlinkSymbolKind kind, const char *name) {
        for (const VarlinkSymbol *s = iface->symbols; s && s->name; s++)
                if (s->kind == kind && streq(s->name, name))
                        return s;
        return NULL;
}

const VarlinkSymbol *varlink_find_method(const Interface *const *ifaces, size_t n, const char *method,
                                         bool test_hooks, const Interface **ret_iface, bool *ret_iface_known) {
        const Interface *iface;
        const VarlinkSymbol *s;
        const char *member;

        *ret_iface_known = false;
        iface = find_interface(ifaces, n, method, &member);
        if (!iface || !iface->symbols || (iface->test_only && !test_hooks))
                return NULL;
        *ret_iface_known = true;
        s = find_symbol(iface, VARLINK_METHOD, member);
        if (!s || (s->test_only && !test_hooks))
                return NULL;
        *ret_iface = iface;
        return s;
}

const VarlinkSymbol *varlink_find_error(const Interface *const *ifaces, size_t n, const char *name) {
        const Interface *iface;
        const char *member;

        iface = find_interface(ifaces, n, name, &member);
        return iface ? find_symbol(iface, VARLINK_ERROR, member) : NULL;
}

static const char *kind_phrase(const VarlinkField *f, bool plural) {
        switch (f->kind) {
        case VARLINK_STRING: return plural ? "strings" : "a string";
        case VARLINK_INT:    return plural ? "integers" : "an integer";
        case VARLINK_BOOL:   return plural ? "booleans (true or false)" : "a boolean (true or false)";
        case VARLINK_FLOAT:  return plural ? "numbers" : "a number";
        case VARLINK_OBJECT: return plural ? "objects" : "an object";
        case VARLINK_NAMED:  return plural ? "objects" : "an object";
        case VARLINK_ENUM:   return plural ? "strings" : "a string";
        }
        return "?";
}

static void must_be(const VarlinkField *f, const char *path, char *msg, size_t size) {
        size_t off;

        if (f->array)
                off = (size_t) snprintf(msg, size, "\"%s\" must be an array of %s", path, kind_phrase(f, true));
        else
                off = (size_t) snprintf(msg, size, "\"%s\" must be %s", path, kind_phrase(f, false));
        if (f->kind == VARLINK_ENUM)
                for (const char *const *v = f->values; *v && off < size; v++)
                        off += (size_t) snprintf(msg + off, size - off, "%s\"%s\"%s", v == f->values ? ": " : ", ", *v,
                                                 v[1] ? "" : f->nullable ? ", or absent" : "");
        else if (f->kind == VARLINK_NAMED && off < size)
                (void) snprintf(msg + off, size - off, " (%s)", f->type);
}

static int check_fields(const Interface *iface, const VarlinkField *fields, json_object *obj, const char *prefix,
                        char *param, size_t param_size, char *msg, size_t msg_size);

static bool value_fits(const Interface *iface, const VarlinkField *f, json_object *v, const char *path,
                       char *param, size_t param_size, char *msg, size_t msg_size, int *ret_nested) {
        *ret_nested = 0;
        switch (f->kind) {
        case VARLINK_STRING:
                return json_object_is_type(v, json_type_string);
        case VARLINK_INT:
                return json_object_is_type(v, json_type_int);
        case VARLINK_BOOL:
                return json_object_is_type(v, json_type_boolean);
        case VARLINK_FLOAT:
                return json_object_is_type(v, json_type_double) || json_object_is_type(v, json_type_int);
        case VARLINK_OBJECT:
                return json_object_is_type(v, json_type_object);
        case VARLINK_ENUM:
                if (!json_object_is_type(v, json_type_string))
                        return false;
                for (const char *const *e = f->values; *e; e++)
                        if (streq(*e, json_object_get_string(v)))
                                return true;
                return false;
        case VARLINK_NAMED: {
                const VarlinkSymbol *t = find_symbol(iface, VARLINK_TYPEDEF, f->type);
                if (!json_object_is_type(v, json_type_object))
                        return false;
                if (t)
                        *ret_nested = check_fields(iface, t->fields, v, path, param, param_size, msg, msg_size);
                return true;
        }
        }
        return false;
}

static int check_field(const Interface *iface, const VarlinkField *f, json_object *v, const char *path,
                       char *param, size_t param_size, char *msg, size_t msg_size) {
        int nested;

        if (!v || json_object_is_type(v, json_type_null)) {
                if (f->nullable)
                        return 0;
                goto bad;
        }
        if (f->array) {
                if (!json_object_is_type(v, json_type_array))
                        goto bad;
                for (size_t i = 0; i < json_object_array_length(v); i++) {
                        json_object *e = json_object_array_get_idx(v, i);
                        if (!e || !value_fits(iface, f, e, path, param, param_size, msg, msg_size, &nested))
                                goto bad;
                        if (nested < 0)
                                return nested;
                }
                return 0;
        }
        if (!value_fits(iface, f, v, path, param, param_size, msg, msg_size, &nested))
                goto bad;
        return nested;
bad:
        (void) snprintf(param, param_size, "%s", path);
        must_be(f, path, msg, msg_size);
        return -EINVAL;
}

static int check_fields(const Interface *iface, const VarlinkField *fields, json_object *obj, const char *prefix,
                        char *param, size_t param_size, char *msg, size_t msg_size) {
        char path[256];
        int r;

        /* unknown fields first: a misspelled optional parameter would be ignored silently */
        if (obj) {
                json_object_object_foreach(obj, k, val) {
                        bool known = false;
                        (void) val;
                        for (const VarlinkField *f = fields; f && f->name && !known; f++)
                                known = streq(f->name, k);
                        if (known)
                                continue;
                        (void) snprintf(path, sizeof(path), "%s%s%s", strempty(prefix), prefix ? "." : "", k);
                        (void) snprintf(param, param_size, "%s", path);
                        (void) snprintf(msg, msg_size, "\"%s\" is not a parameter of this method (see "
                                        "org.varlink.service.GetInterfaceDescription of %s)", path, iface->name);
                        return -EINVAL;
                }
        }
        for (const VarlinkField *f = fields; f && f->name; f++) {
                json_object *v = NULL;

                if (obj)
                        (void) json_object_object_get_ex(obj, f->name, &v);
                (void) snprintf(path, sizeof(path), "%s%s%s", strempty(prefix), prefix ? "." : "", f->name);
                r = check_field(iface, f, v, path, param, param_size, msg, msg_size);
                if (r < 0)
                        return r;
        }
        return 0;
}

int varlink_check_params(const Interface *iface, const VarlinkSymbol *method, json_object *params,
                         char *ret_parameter, size_t parameter_size, char *ret_message, size_t message_size) {
        return check_fields(iface, method->fields, params, NULL, ret_parameter, parameter_size, ret_message, message_size);
}

bool varlink_error_params_declared(const VarlinkSymbol *error, json_object *params, const char **ret_field) {
        if (params) {
                json_object_object_foreach(params, k, v) {
                        const VarlinkField *f = error->fields;
                        (void) v;
                        while (f && f->name && !streq(f->name, k))
                                f++;
                        if (!f || !f->name) {
                                *ret_field = k;
                                return false;
                        }
                }
        }
        for (const VarlinkField *f = error->fields; f && f->name; f++)
                if (!f->nullable && !(params && json_object_object_get_ex(params, f->name, NULL))) {
                        *ret_field = f->name;
                        return false;
                }
        return true;
}
