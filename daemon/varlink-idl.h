/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* The Varlink interfaces as data: their types, methods and errors, the IDL text made from them, and
 * the check of a call's parameters against them. */
#pragma once

#include <stdbool.h>
#include <json-c/json.h>

typedef struct Manager Manager;
typedef struct Call Call;

/* A method: reply through the call_* functions exactly once (call_reply_more any number
 * of times before). A negative return without a reply becomes io.cmek.InternalError.
 * The parameters are checked against the method's declaration before it runs. */
typedef int (*MethodHandler)(Manager *m, Call *c, json_object *params);

typedef enum VarlinkKind {
        VARLINK_STRING,
        VARLINK_INT,
        VARLINK_BOOL,
        VARLINK_FLOAT,
        VARLINK_OBJECT,         /* any JSON object */
        VARLINK_ENUM,           /* a string, one of .values */
        VARLINK_NAMED,          /* a type of the same interface, .type */
} VarlinkKind;

typedef struct VarlinkField {
        const char *name;
        VarlinkKind kind;
        bool nullable;          /* ?T: may be absent or null */
        bool array;             /* []T */
        const char *type;       /* VARLINK_NAMED: the type's name */
        const char *const *values; /* VARLINK_ENUM: NULL-terminated */
        const char *doc;        /* comment written above the field (lines separated by \n) */
} VarlinkField;

/* Field lists end with an empty entry: VARLINK_FIELDS(a, b, c). */
#define VARLINK_FIELDS(...) ((const VarlinkField[]) { __VA_ARGS__, {} })
#define VARLINK_VALUES(...) ((const char *const[]) { __VA_ARGS__, NULL })
#define V_STRING(n, ...) { .name = (n), .kind = VARLINK_STRING, __VA_ARGS__ }
#define V_INT(n, ...)    { .name = (n), .kind = VARLINK_INT, __VA_ARGS__ }
#define V_BOOL(n, ...)   { .name = (n), .kind = VARLINK_BOOL, __VA_ARGS__ }
#define V_FLOAT(n, ...)  { .name = (n), .kind = VARLINK_FLOAT, __VA_ARGS__ }
#define V_OBJECT(n, ...) { .name = (n), .kind = VARLINK_OBJECT, __VA_ARGS__ }
#define V_TYPE(n, t, ...) { .name = (n), .kind = VARLINK_NAMED, .type = (t), __VA_ARGS__ }
#define V_ENUM(n, ...) { .name = (n), .kind = VARLINK_ENUM, .values = VARLINK_VALUES(__VA_ARGS__) }
/* modifiers, after the name: V_STRING("vault", V_OPT), V_STRING("devices", V_ARRAY) */
#define V_OPT .nullable = true
#define V_ARRAY .array = true

typedef enum VarlinkSymbolKind {
        VARLINK_METHOD,
        VARLINK_TYPEDEF,        /* type NAME (fields) */
        VARLINK_ERROR,
} VarlinkSymbolKind;

typedef struct VarlinkSymbol {
        VarlinkSymbolKind kind;
        const char *name;               /* "Create", "KeyInfo", "KeyNotFound" */
        const char *doc;                /* comment above it (lines separated by \n), or NULL */
        const VarlinkField *fields;     /* method input, type or error fields (NULL: none) */
        const VarlinkField *out;        /* method output (NULL: none) */
        MethodHandler handler;
        bool test_only;                 /* served and advertised only with --test-hooks */
        bool unaudited;                 /* writes no audit line but a denial: served while the
                                         * audit log is unavailable */
} VarlinkSymbol;

/* Interim, until every interface is declared as data: a fully qualified name and its handler,
 * parameters unchecked; the interface's IDL text then is .description. */
typedef struct Method {
        const char *name;
        MethodHandler handler;
} Method;

typedef struct Interface {
        const char *name;               /* "io.cmek.key" */
        const char *description;        /* interim: hand-written IDL text (with .methods) */
        const Method *methods;          /* interim: terminated by { NULL, NULL } */
        const char *doc;                /* comment above "interface NAME" */
        const VarlinkSymbol *symbols;   /* ends with an empty entry */
        bool test_only;                 /* the whole interface: --test-hooks only */
} Interface;

/* Writes the IDL text of the interface, without the test-only methods unless test_hooks.
 * Returns NULL when out of memory. */
char *varlink_idl_format(const Interface *iface, bool test_hooks);

/* The method METHOD (fully qualified) of one of the interfaces; *ret_iface_known tells
 * whether its interface exists. Test-only methods are found only with test_hooks. */
const VarlinkSymbol *varlink_find_method(const Interface *const *ifaces, size_t n, const char *method,
                                         bool test_hooks, const Interface **ret_iface, bool *ret_iface_known);

/* Checks params (an object, or NULL for none) against the method's input. Returns 0 when they
 * fit, else -EINVAL and the offending parameter's name (a static or params-owned string, valid
 * while params lives) and a message saying what it must be, in a caller-provided buffer. */
int varlink_check_params(const Interface *iface, const VarlinkSymbol *method, json_object *params,
                         char *ret_parameter, size_t parameter_size, char *ret_message, size_t message_size);

/* The error NAME (fully qualified) as declared in one of the interfaces, or NULL. */
const VarlinkSymbol *varlink_find_error(const Interface *const *ifaces, size_t n, const char *name);
/* Whether every field of params is declared by the error and every required one is present;
 * on failure the offending field name in *ret_field. */
bool varlink_error_params_declared(const VarlinkSymbol *error, json_object *params, const char **ret_field);
