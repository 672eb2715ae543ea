/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* The policy engine: parses "allow SUBJECT to VERB TYPE in LOCATION [where COND]" and checks requests. */

#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <inttypes.h>
#include <pwd.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cmek-util.h"
#include "policy.h"

typedef enum ResourceType {
        RESOURCE_KEYS,
        RESOURCE_VOLUMES,
        RESOURCE_VAULTS,
        RESOURCE_AUDIT,
        RESOURCE_KEY_DELEGATE,  /* the raw secret a key protects may leave the daemon (Volume.Unwrap) */
        RESOURCE_ALL,           /* only in statements, never in a request */
        _RESOURCE_INVALID = -EINVAL,
} ResourceType;

typedef enum SubjectType {
        SUBJECT_ANY_USER,
        SUBJECT_USER,
        SUBJECT_GROUP,
        SUBJECT_UID,
        SUBJECT_GID,
} SubjectType;

typedef struct Subject {
        SubjectType type;
        char *name;             /* SUBJECT_USER, SUBJECT_GROUP */
        uint32_t id;            /* SUBJECT_UID, SUBJECT_GID */
} Subject;

typedef enum ConditionType {
        CONDITION_EQUAL,
        CONDITION_NOT_EQUAL,
        CONDITION_ANY,
        CONDITION_ALL,
} ConditionType;

typedef enum ConditionAttr {
        ATTR_KEY_ID,
        ATTR_VOLUME_ID,
        ATTR_COMPARTMENT_NAME,
} ConditionAttr;

typedef struct Condition {
        ConditionType type;
        ConditionAttr attr;             /* CONDITION_EQUAL, CONDITION_NOT_EQUAL */
        char *value;
        struct Condition *children;     /* CONDITION_ANY, CONDITION_ALL; at least one */
        size_t n_children;
} Condition;

typedef struct Statement {
        unsigned line;
        Subject *subjects;
        size_t n_subjects;
        PolicyVerb verb;
        ResourceType resource;
        char *compartment;      /* NULL: tenancy */
        Condition *condition;   /* NULL: none */
} Statement;

struct Policy {
        Statement *statements;
        size_t n_statements;
};

static const char *const verb_table[_POLICY_VERB_MAX] = {
        [POLICY_VERB_INSPECT] = "inspect",
        [POLICY_VERB_READ] = "read",
        [POLICY_VERB_USE] = "use",
        [POLICY_VERB_MANAGE] = "manage",
};

const char *policy_verb_to_string(PolicyVerb v) {
        if (v < 0 || v >= _POLICY_VERB_MAX)
                return NULL;
        return verb_table[v];
}

static PolicyVerb policy_verb_from_string_n(const char *s, size_t n) {
        for (size_t i = 0; i < ARRAY_SIZE(verb_table); i++)
                if (strlen(verb_table[i]) == n && strncasecmp(s, verb_table[i], n) == 0)
                        return (PolicyVerb) i;
        return _POLICY_VERB_INVALID;
}

PolicyVerb policy_verb_from_string(const char *s) {
        if (!s)
                return _POLICY_VERB_INVALID;
        return policy_verb_from_string_n(s, strlen(s));
}

static const struct {
        const char *name;
        ResourceType type;
} resource_table[] = {
        /* The first entry of each type is its canonical name. */
        { "keys",          RESOURCE_KEYS },
        { "key",           RESOURCE_KEYS },
        { "key-family",    RESOURCE_KEYS },   /* OCI spelling, so that examples can be pasted */
        /* Not an alias of keys: "use keys" unlocks through the daemon, where the key never leaves;
         * "use key-delegate" lets the DEK itself leave it (io.cmek.Volume.Unwrap). */
        { "key-delegate",  RESOURCE_KEY_DELEGATE },
        { "volumes",       RESOURCE_VOLUMES },
        { "volume",        RESOURCE_VOLUMES },
        { "vaults",        RESOURCE_VAULTS },
        { "vault",         RESOURCE_VAULTS },
        { "audit",         RESOURCE_AUDIT },
        { "all-resources", RESOURCE_ALL },
};

static ResourceType resource_from_string_n(const char *s, size_t n) {
        for (size_t i = 0; i < ARRAY_SIZE(resource_table); i++)
                if (strlen(resource_table[i].name) == n && strncasecmp(s, resource_table[i].name, n) == 0)
                        return resource_table[i].type;
        return _RESOURCE_INVALID;
}

static const char *resource_to_string(ResourceType t) {
        for (size_t i = 0; i < ARRAY_SIZE(resource_table); i++)
                if (resource_table[i].type == t)
                        return resource_table[i].name;
        return NULL;
}

/* A request names one concrete resource type; "all-resources" is only for statements. */
static ResourceType request_resource(const PolicyRequest *req) {
        ResourceType t;

        if (!req->resource_type)
                return _RESOURCE_INVALID;
        t = resource_from_string_n(req->resource_type, strlen(req->resource_type));
        return t == RESOURCE_ALL ? _RESOURCE_INVALID : t;
}

/* ---- freeing ---- */

static void condition_done(Condition *c) {
        /* Recursion is bounded by POLICY_CONDITION_DEPTH_MAX, enforced by the parser. */
        for (size_t i = 0; i < c->n_children; i++)
                condition_done(&c->children[i]);
        free(c->children);
        free(c->value);
        *c = (Condition) {};
}

static void statement_done(Statement *s) {
        for (size_t i = 0; i < s->n_subjects; i++)
                free(s->subjects[i].name);
        free(s->subjects);
        free(s->compartment);
        if (s->condition) {
                condition_done(s->condition);
                free(s->condition);
        }
        *s = (Statement) {};
}

Policy *policy_free(Policy *p) {
        if (!p)
                return NULL;
        for (size_t i = 0; i < p->n_statements; i++)
                statement_done(&p->statements[i]);
        free(p->statements);
        free(p);
        return NULL;
}

size_t policy_n_statements(const Policy *p) {
        return p ? p->n_statements : 0;
}

/* Grows *array (of *allocated elements) so that it holds at least need elements; doubles, so
 * appending n elements one by one is O(n). */
static int grow(void **array, size_t *allocated, size_t need, size_t size) {
        size_t n;
        void *a;

        if (need <= *allocated)
                return 0;
        n = *allocated ? *allocated * 2 : 4;
        if (n < need)
                n = need;
        if (n > SIZE_MAX / size)
                return -ENOMEM;
        a = realloc(*array, n * size);
        if (!a)
                return -ENOMEM;
        *array = a;
        *allocated = n;
        return 0;
}

/* ---- lexer ---- */

typedef enum TokenType {
        TOKEN_END,              /* end of line, or a '#' comment */
        TOKEN_WORD,
        TOKEN_STRING,           /* '...' or "..." without escapes; never a keyword */
        TOKEN_COMMA,
        TOKEN_LBRACE,
        TOKEN_RBRACE,
        TOKEN_EQUAL,
        TOKEN_NOT_EQUAL,
} TokenType;

typedef struct Token {
        TokenType type;
        size_t start, length;           /* raw text in the line, quotes included */
        size_t value_start, value_length;
} Token;

typedef struct Parser {
        const char *filename;
        unsigned line;
        const char *text;               /* the current line, not NUL-terminated */
        size_t length;
        size_t pos;
        Token tok;
        char **ret_error;
} Parser;

static bool is_word_char(unsigned char c) {
        /* Bytes >= 0x80 are allowed so that UTF-8 names work; control characters were rejected
         * per line before lexing. */
        return c > ' ' && c != 0x7f && !strchr(",{}=!'\"#", c);
}

static bool is_blank(char c) {
        return c == ' ' || c == '\t' || c == '\r';
}

static int parser_error(Parser *p, size_t column0, const char *fmt, ...) _printf_(3, 4);
static int parser_error(Parser *p, size_t column0, const char *fmt, ...) {
        _cleanup_free_ char *msg = NULL;
        va_list ap;
        int r;

        if (!p->ret_error)
                return -EINVAL;
        va_start(ap, fmt);
        r = vasprintf(&msg, fmt, ap);
        va_end(ap);
        if (r < 0)
                return -ENOMEM;
        free(*p->ret_error);
        *p->ret_error = NULL;
        if (asprintf(p->ret_error, "%s:%u:%zu: %s", p->filename, p->line, column0 + 1, msg) < 0) {
                *p->ret_error = NULL;
                return -ENOMEM;
        }
        return -EINVAL;
}

/* The offending text, quoted, with anything unprintable escaped and long text shortened. */
static char *format_got(const char *s, size_t n) {
        const size_t max = 40;
        char *buf, *q;

        buf = malloc(max * 4 + 8);
        if (!buf)
                return NULL;
        q = buf;
        *q++ = '\'';
        for (size_t i = 0; i < n && i < max; i++) {
                unsigned char c = (unsigned char) s[i];
                if (c >= ' ' && c < 0x7f && c != '\\')
                        *q++ = (char) c;
                else
                        q += sprintf(q, "\\x%02x", c);
        }
        *q++ = '\'';
        if (n > max)
                q = stpcpy(q, "...");
        *q = 0;
        return buf;
}

static int parser_expected(Parser *p, const char *expected);

/* "expected at most N WHAT, got 'Y'" at the current token. */
static int parser_expected_at_most(Parser *p, unsigned n, const char *what) {
        char buf[128];

        (void) snprintf(buf, sizeof(buf), "at most %u %s", n, what);
        return parser_expected(p, buf);
}

/* "expected X, got 'Y'" at the current token. */
static int parser_expected(Parser *p, const char *expected) {
        _cleanup_free_ char *got = NULL;

        if (p->tok.type == TOKEN_END)
                return parser_error(p, p->tok.start, "expected %s, got end of line", expected);
        if (p->tok.type == TOKEN_STRING && p->tok.value_length == 0)
                return parser_error(p, p->tok.start, "expected %s, got an empty string", expected);
        got = format_got(p->text + p->tok.start, p->tok.length);
        if (!got)
                return -ENOMEM;
        return parser_error(p, p->tok.start, "expected %s, got %s", expected, got);
}

static int parser_next(Parser *p) {
        const char *t = p->text;
        size_t i = p->pos;

        while (i < p->length && is_blank(t[i]))
                i++;
        p->tok = (Token) { .start = i };
        if (i >= p->length || t[i] == '#') {
                p->tok.type = TOKEN_END;
                p->pos = p->length;
                return 0;
        }

        switch (t[i]) {
        case ',':
                p->tok.type = TOKEN_COMMA;
                p->tok.length = 1;
                break;
        case '{':
                p->tok.type = TOKEN_LBRACE;
                p->tok.length = 1;
                break;
        case '}':
                p->tok.type = TOKEN_RBRACE;
                p->tok.length = 1;
                break;
        case '=':
                p->tok.type = TOKEN_EQUAL;
                p->tok.length = 1;
                break;
        case '!':
                if (i + 1 >= p->length || t[i + 1] != '=') {
                        p->tok.type = TOKEN_WORD; /* for the message only */
                        p->tok.length = 1;
                        return parser_expected(p, "'!='");
                }
                p->tok.type = TOKEN_NOT_EQUAL;
                p->tok.length = 2;
                break;
        case '\'':
        case '"': {
                const char *end = memchr(t + i + 1, t[i], p->length - i - 1);
                if (!end) {
                        p->tok.type = TOKEN_END;
                        return parser_error(p, i, "expected a closing %s, got end of line",
                                            t[i] == '"' ? "'\"'" : "\"'\"");
                }
                p->tok.type = TOKEN_STRING;
                p->tok.value_start = i + 1;
                p->tok.value_length = (size_t) (end - (t + i + 1));
                p->tok.length = p->tok.value_length + 2;
                break;
        }
        default: {
                size_t j = i;
                while (j < p->length && is_word_char((unsigned char) t[j]))
                        j++;
                /* Every byte that is neither blank nor punctuation is a word byte. */
                p->tok.type = TOKEN_WORD;
                p->tok.length = j - i;
                break;
        }
        }
        if (p->tok.type == TOKEN_WORD) {
                p->tok.value_start = i;
                p->tok.value_length = p->tok.length;
        }
        p->pos = i + p->tok.length;
        return 0;
}

static bool token_is(const Parser *p, const char *keyword) {
        return p->tok.type == TOKEN_WORD && strlen(keyword) == p->tok.length &&
                strncasecmp(p->text + p->tok.start, keyword, p->tok.length) == 0;
}

/* Words that structure a statement; as names they must be quoted. */
static const char *const reserved_words[] = { "allow", "to", "in", "where", "id" };

static bool word_is_reserved(const char *s, size_t n) {
        for (size_t i = 0; i < ARRAY_SIZE(reserved_words); i++)
                if (strlen(reserved_words[i]) == n && strncasecmp(s, reserved_words[i], n) == 0)
                        return true;
        return false;
}

/* A name or value: a word or a non-empty quoted string. */
static int parser_take_value(Parser *p, const char *expected, char **ret) {
        char *v;
        int r;

        if ((p->tok.type != TOKEN_WORD && p->tok.type != TOKEN_STRING) || p->tok.value_length == 0 ||
            (p->tok.type == TOKEN_WORD && word_is_reserved(p->text + p->tok.start, p->tok.length)))
                return parser_expected(p, expected);
        v = strndup(p->text + p->tok.value_start, p->tok.value_length);
        if (!v)
                return -ENOMEM;
        r = parser_next(p);
        if (r < 0) {
                free(v);
                return r;
        }
        *ret = v;
        return 0;
}

static int parser_take_id(Parser *p, const char *expected, uint32_t *ret) {
        uint64_t v = 0;
        int r;

        if (p->tok.type != TOKEN_WORD || p->tok.length > 10)
                return parser_expected(p, expected);
        for (size_t i = 0; i < p->tok.length; i++) {
                char c = p->text[p->tok.start + i];
                if (c < '0' || c > '9')
                        return parser_expected(p, expected);
                v = v * 10 + (uint64_t) (c - '0');
        }
        /* (uid_t) -1 means "no id" to the kernel and is never a caller. */
        if (v >= UINT32_MAX)
                return parser_expected(p, expected);
        r = parser_next(p);
        if (r < 0)
                return r;
        *ret = (uint32_t) v;
        return 0;
}

/* ---- parser ---- */

static int parse_subject(Parser *p, Subject *ret) {
        Subject s = {};
        bool user;
        int r;

        if (token_is(p, "any-user")) {
                *ret = (Subject) { .type = SUBJECT_ANY_USER };
                return parser_next(p);
        }
        if (token_is(p, "user"))
                user = true;
        else if (token_is(p, "group"))
                user = false;
        else
                return parser_expected(p, "a subject (user NAME, group NAME, user id N, group id N, any-user)");
        r = parser_next(p);
        if (r < 0)
                return r;

        if (token_is(p, "id")) {
                r = parser_next(p);
                if (r < 0)
                        return r;
                s.type = user ? SUBJECT_UID : SUBJECT_GID;
                r = parser_take_id(p, user ? "a numeric user id" : "a numeric group id", &s.id);
        } else {
                s.type = user ? SUBJECT_USER : SUBJECT_GROUP;
                r = parser_take_value(p, user ? "a user name or 'id'" : "a group name or 'id'", &s.name);
        }
        if (r < 0)
                return r;
        *ret = s;
        return 0;
}

static const char *const condition_expected =
        "a condition (target.key.id, target.volume.id, target.compartment.name, any {...}, all {...})";

static int parse_condition(Parser *p, unsigned depth, size_t *n_conditions, Condition *ret) {
        Condition c = {};
        size_t allocated = 0;
        int r;

        if (*n_conditions >= POLICY_CONDITIONS_MAX)
                return parser_expected_at_most(p, POLICY_CONDITIONS_MAX, "conditions in a statement");
        (*n_conditions)++;

        if (token_is(p, "any") || token_is(p, "all")) {
                if (depth >= POLICY_CONDITION_DEPTH_MAX)
                        return parser_expected_at_most(p, POLICY_CONDITION_DEPTH_MAX, "nested any/all");
                c.type = token_is(p, "any") ? CONDITION_ANY : CONDITION_ALL;
                r = parser_next(p);
                if (r < 0)
                        return r;
                if (p->tok.type != TOKEN_LBRACE)
                        return parser_expected(p, "'{'");
                r = parser_next(p);
                if (r < 0)
                        return r;
                for (;;) {
                        r = grow((void **) &c.children, &allocated, c.n_children + 1, sizeof(Condition));
                        if (r < 0)
                                goto fail;
                        /* Bounded: depth < POLICY_CONDITION_DEPTH_MAX. */
                        r = parse_condition(p, depth + 1, n_conditions, &c.children[c.n_children]);
                        if (r < 0)
                                goto fail;
                        c.n_children++;
                        if (p->tok.type == TOKEN_RBRACE)
                                break;
                        if (p->tok.type != TOKEN_COMMA) {
                                r = parser_expected(p, "',' or '}'");
                                goto fail;
                        }
                        r = parser_next(p);
                        if (r < 0)
                                goto fail;
                }
                r = parser_next(p);
                if (r < 0)
                        goto fail;
                *ret = c;
                return 0;
        }

        if (token_is(p, "target.key.id"))
                c.attr = ATTR_KEY_ID;
        else if (token_is(p, "target.volume.id"))
                c.attr = ATTR_VOLUME_ID;
        else if (token_is(p, "target.compartment.name"))
                c.attr = ATTR_COMPARTMENT_NAME;
        else
                return parser_expected(p, condition_expected);
        r = parser_next(p);
        if (r < 0)
                return r;
        if (p->tok.type == TOKEN_EQUAL)
                c.type = CONDITION_EQUAL;
        else if (p->tok.type == TOKEN_NOT_EQUAL)
                c.type = CONDITION_NOT_EQUAL;
        else
                return parser_expected(p, "'=' or '!='");
        r = parser_next(p);
        if (r < 0)
                return r;
        r = parser_take_value(p, "a value (a quoted string or a word)", &c.value);
        if (r < 0)
                return r;
        *ret = c;
        return 0;

fail:
        condition_done(&c);
        return r;
}

/* Parses one statement; the current token is its first one. */
static int parse_statement(Parser *p, Statement *s) {
        size_t allocated = 0, n_conditions = 0;
        int r;

        if (!token_is(p, "allow"))
                return parser_expected(p, "'allow'");
        r = parser_next(p);
        if (r < 0)
                return r;

        for (;;) {
                if (s->n_subjects >= POLICY_SUBJECTS_MAX)
                        return parser_expected_at_most(p, POLICY_SUBJECTS_MAX, "subjects in a statement");
                r = grow((void **) &s->subjects, &allocated, s->n_subjects + 1, sizeof(Subject));
                if (r < 0)
                        return r;
                r = parse_subject(p, &s->subjects[s->n_subjects]);
                if (r < 0)
                        return r;
                s->n_subjects++;
                if (p->tok.type != TOKEN_COMMA)
                        break;
                r = parser_next(p);
                if (r < 0)
                        return r;
        }

        if (!token_is(p, "to"))
                return parser_expected(p, "',' or 'to'");
        r = parser_next(p);
        if (r < 0)
                return r;

        s->verb = p->tok.type == TOKEN_WORD ? policy_verb_from_string_n(p->text + p->tok.start, p->tok.length)
                                            : _POLICY_VERB_INVALID;
        if (s->verb < 0)
                return parser_expected(p, "a verb (inspect, read, use, manage)");
        r = parser_next(p);
        if (r < 0)
                return r;

        s->resource = p->tok.type == TOKEN_WORD ? resource_from_string_n(p->text + p->tok.start, p->tok.length)
                                                : _RESOURCE_INVALID;
        if (s->resource < 0)
                return parser_expected(p, "a resource type (keys, key-delegate, volumes, vaults, audit, all-resources)");
        r = parser_next(p);
        if (r < 0)
                return r;

        if (!token_is(p, "in"))
                return parser_expected(p, "'in'");
        r = parser_next(p);
        if (r < 0)
                return r;

        if (token_is(p, "tenancy")) {
                r = parser_next(p);
                if (r < 0)
                        return r;
        } else if (token_is(p, "compartment")) {
                r = parser_next(p);
                if (r < 0)
                        return r;
                r = parser_take_value(p, "a compartment name", &s->compartment);
                if (r < 0)
                        return r;
        } else
                return parser_expected(p, "a location (tenancy, compartment NAME)");

        if (p->tok.type == TOKEN_END)
                return 0;
        if (!token_is(p, "where"))
                return parser_expected(p, "'where' or end of line");
        r = parser_next(p);
        if (r < 0)
                return r;
        s->condition = calloc(1, sizeof(Condition));
        if (!s->condition)
                return -ENOMEM;
        r = parse_condition(p, 0, &n_conditions, s->condition);
        if (r < 0) {
                free(s->condition);
                s->condition = NULL;
                return r;
        }
        if (p->tok.type != TOKEN_END)
                return parser_expected(p, "end of line");
        return 0;
}

static int policy_parse_buffer(const char *text, size_t size, const char *filename, Policy **ret, char **ret_error) {
        Policy *policy = NULL;
        size_t allocated = 0;
        Parser p = {
                .filename = filename ?: "<string>",
                .ret_error = ret_error,
        };
        int r;

        policy = calloc(1, sizeof(Policy));
        if (!policy)
                return -ENOMEM;

        for (size_t offset = 0; offset < size; ) {
                const char *nl = memchr(text + offset, '\n', size - offset);
                size_t length = nl ? (size_t) (nl - (text + offset)) : size - offset;
                Statement s = {};

                p.line++;
                p.text = text + offset;
                p.length = length;
                p.pos = 0;
                offset += length + (nl ? 1 : 0);

                if (length > POLICY_LINE_MAX) {
                        r = parser_error(&p, POLICY_LINE_MAX, "expected at most %u bytes in a line, got %zu",
                                         POLICY_LINE_MAX, length);
                        goto fail;
                }
                /* Reject control characters (and NUL bytes in a file) up front, so that nothing
                 * downstream, log lines and Varlink errors included, ever sees them. */
                for (size_t i = 0; i < length; i++) {
                        unsigned char c = (unsigned char) p.text[i];
                        if ((c < ' ' && c != '\t' && c != '\r') || c == 0x7f) {
                                r = parser_error(&p, i, "expected printable text, got '\\x%02x'", c);
                                goto fail;
                        }
                }

                r = parser_next(&p);
                if (r < 0)
                        goto fail;
                if (p.tok.type == TOKEN_END)
                        continue;       /* blank or comment */
                if (policy->n_statements >= POLICY_STATEMENTS_MAX) {
                        r = parser_expected_at_most(&p, POLICY_STATEMENTS_MAX, "statements");
                        goto fail;
                }
                s.line = p.line;
                r = parse_statement(&p, &s);
                if (r < 0) {
                        statement_done(&s);
                        goto fail;
                }
                r = grow((void **) &policy->statements, &allocated, policy->n_statements + 1, sizeof(Statement));
                if (r < 0) {
                        statement_done(&s);
                        goto fail;
                }
                policy->statements[policy->n_statements++] = s;
        }

        *ret = policy;
        return 0;

fail:
        policy_free(policy);
        return r;
}

int policy_parse_string(const char *text, const char *filename, Policy **ret, char **ret_error) {
        if (!text || !ret)
                return -EINVAL;
        return policy_parse_buffer(text, strlen(text), filename, ret, ret_error);
}

int policy_load(const char *path, Policy **ret, char **ret_error) {
        _cleanup_close_ int fd = -1;
        _cleanup_free_ char *buf = NULL;
        size_t size = 0;
        struct stat st;

        if (!path || !ret)
                return -EINVAL;
        fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK); /* no hang on a FIFO */
        if (fd < 0)
                return -errno;
        if (fstat(fd, &st) < 0)
                return -errno;
        if (!S_ISREG(st.st_mode))
                return -EBADFD;
        /* Whoever can write the policy can grant themselves every key. */
        if ((st.st_mode & S_IWOTH) || (st.st_uid != 0 && st.st_uid != geteuid())) {
                if (ret_error) {
                        free(*ret_error);
                        if (asprintf(ret_error, "%s: expected a file owned by root and not writable by others, "
                                     "got owner %u and mode %04o", path, (unsigned) st.st_uid,
                                     (unsigned) (st.st_mode & 07777)) < 0)
                                *ret_error = NULL;
                }
                return -EPERM;
        }
        if (st.st_size > (off_t) POLICY_FILE_MAX)
                return -EFBIG;

        buf = malloc(POLICY_FILE_MAX + 1);
        if (!buf)
                return -ENOMEM;
        for (;;) {
                ssize_t n = read(fd, buf + size, POLICY_FILE_MAX + 1 - size);
                if (n < 0) {
                        if (errno == EINTR)
                                continue;
                        return -errno;
                }
                if (n == 0)
                        break;
                size += (size_t) n;
                if (size > POLICY_FILE_MAX)
                        return -EFBIG;  /* grew since fstat() */
        }
        return policy_parse_buffer(buf, size, path, ret, ret_error);
}

/* ---- checking ---- */

/* The caller's names, looked up once per check and only when a statement needs them. */
typedef struct Caller {
        const PolicyRequest *req;
        bool user_resolved, groups_resolved;
        char *user;             /* NULL: no name */
        char **groups;          /* NULL entries: no name */
        size_t n_groups;
} Caller;

static void caller_done(Caller *c) {
        free(c->user);
        for (size_t i = 0; i < c->n_groups; i++)
                free(c->groups[i]);
        free(c->groups);
}

static size_t nss_buffer_size(int name) {
        long l = sysconf(name);
        return l > 0 && l < 1024 * 1024 ? (size_t) l : 4096;
}

static int lookup_user_name(uid_t uid, char **ret) {
        for (size_t size = nss_buffer_size(_SC_GETPW_R_SIZE_MAX); size <= 1024 * 1024; size *= 2) {
                _cleanup_free_ char *buf = malloc(size);
                struct passwd pw, *result = NULL;
                int r;

                if (!buf)
                        return -ENOMEM;
                r = getpwuid_r(uid, &pw, buf, size, &result);
                if (r == ERANGE)
                        continue;
                if (r != 0)
                        return -r;
                if (!result || !pw.pw_name)
                        return -ESRCH;
                *ret = strdup(pw.pw_name);
                return *ret ? 0 : -ENOMEM;
        }
        return -ERANGE;
}

static int lookup_group_name(gid_t gid, char **ret) {
        for (size_t size = nss_buffer_size(_SC_GETGR_R_SIZE_MAX); size <= 16 * 1024 * 1024; size *= 2) {
                _cleanup_free_ char *buf = malloc(size);
                struct group gr, *result = NULL;
                int r;

                if (!buf)
                        return -ENOMEM;
                r = getgrgid_r(gid, &gr, buf, size, &result);
                if (r == ERANGE)
                        continue;       /* groups with many members need a large buffer */
                if (r != 0)
                        return -r;
                if (!result || !gr.gr_name)
                        return -ESRCH;
                *ret = strdup(gr.gr_name);
                return *ret ? 0 : -ENOMEM;
        }
        return -ERANGE;
}

static const char *caller_user(Caller *c) {
        if (!c->user_resolved) {
                c->user_resolved = true;
                (void) lookup_user_name(c->req->uid, &c->user);
        }
        return c->user;
}

static void caller_resolve_groups(Caller *c) {
        const PolicyRequest *req = c->req;
        size_t n = 1 + (req->groups ? req->n_groups : 0);

        if (c->groups_resolved)
                return;
        c->groups_resolved = true;
        c->groups = calloc(n, sizeof(char *));
        if (!c->groups)
                return;         /* no names: name subjects do not match */
        c->n_groups = n;
        for (size_t i = 0; i < n; i++)
                (void) lookup_group_name(i == 0 ? req->gid : req->groups[i - 1], &c->groups[i]);
}

static bool caller_has_gid(const Caller *c, uint32_t gid) {
        const PolicyRequest *req = c->req;

        if (req->gid == gid)
                return true;
        for (size_t i = 0; req->groups && i < req->n_groups; i++)
                if (req->groups[i] == gid)
                        return true;
        return false;
}

static bool subject_matches(const Subject *s, Caller *c) {
        const char *name;

        switch (s->type) {
        case SUBJECT_ANY_USER:
                return true;
        case SUBJECT_UID:
                return c->req->uid == s->id;
        case SUBJECT_GID:
                return caller_has_gid(c, s->id);
        case SUBJECT_USER:
                name = caller_user(c);
                return name && streq(name, s->name);
        case SUBJECT_GROUP:
                caller_resolve_groups(c);
                for (size_t i = 0; i < c->n_groups; i++)
                        if (c->groups[i] && streq(c->groups[i], s->name))
                                return true;
                return false;
        }
        return false;
}

/* Empty strings count as absent: a caller that fills in "" must not satisfy a '!=' condition. */
static const char *request_attr(const PolicyRequest *req, ConditionAttr attr) {
        const char *v = NULL;

        switch (attr) {
        case ATTR_KEY_ID:
                v = req->key_id;
                break;
        case ATTR_VOLUME_ID:
                v = req->volume_id;
                break;
        case ATTR_COMPARTMENT_NAME:
                v = req->compartment;
                break;
        }
        return v && *v ? v : NULL;
}

static bool condition_matches(const Condition *c, const PolicyRequest *req) {
        const char *v;

        switch (c->type) {
        case CONDITION_EQUAL:
        case CONDITION_NOT_EQUAL:
                /* An attribute the request does not carry fails both '=' and '!=' (fail closed). */
                v = request_attr(req, c->attr);
                if (!v)
                        return false;
                return streq(v, c->value) == (c->type == CONDITION_EQUAL);
        case CONDITION_ANY:
                /* Recursion bounded by POLICY_CONDITION_DEPTH_MAX. */
                for (size_t i = 0; i < c->n_children; i++)
                        if (condition_matches(&c->children[i], req))
                                return true;
                return false;
        case CONDITION_ALL:
                for (size_t i = 0; i < c->n_children; i++)
                        if (!condition_matches(&c->children[i], req))
                                return false;
                return true;
        }
        return false;
}

static bool statement_matches(const Statement *s, ResourceType resource, Caller *c) {
        const PolicyRequest *req = c->req;

        /* Cheap tests first; subjects may need NSS lookups. */
        if (req->verb > s->verb)
                return false;
        if (s->resource != RESOURCE_ALL && s->resource != resource)
                return false;
        if (s->compartment && !(req->compartment && streq(req->compartment, s->compartment)))
                return false;
        if (s->condition && !condition_matches(s->condition, req))
                return false;
        for (size_t i = 0; i < s->n_subjects; i++)
                if (subject_matches(&s->subjects[i], c))
                        return true;
        return false;
}

bool policy_check_line(const Policy *p, const PolicyRequest *req, unsigned *ret_line) {
        Caller caller = { .req = req };
        ResourceType resource;
        bool found = false;

        if (!req || req->verb < 0 || req->verb >= _POLICY_VERB_MAX)
                return false;
        resource = request_resource(req);
        if (resource < 0)
                return false;
        /* root owns the machine, the state directory and the token files anyway. */
        if (req->uid == 0) {
                if (ret_line)
                        *ret_line = 0;
                return true;
        }
        if (!p)
                return false;

        for (size_t i = 0; i < p->n_statements && !found; i++)
                if (statement_matches(&p->statements[i], resource, &caller)) {
                        found = true;
                        if (ret_line)
                                *ret_line = p->statements[i].line;
                }
        caller_done(&caller);
        return found;
}

bool policy_check(const Policy *p, const PolicyRequest *req) {
        return policy_check_line(p, req, NULL);
}

static bool has_grant(const Policy *p, const PolicyRequest *req, bool anywhere) {
        Caller caller = { .req = req };
        bool found = false;

        if (!req)
                return false;
        if (req->uid == 0)
                return true;
        if (!p)
                return false;
        /* Any verb, any resource type, conditions ignored: the caller already knows that the
         * compartment exists and what it may do there. A tenancy statement counts everywhere. */
        for (size_t i = 0; i < p->n_statements && !found; i++) {
                const Statement *s = &p->statements[i];

                if (!anywhere && s->compartment && !(req->compartment && streq(req->compartment, s->compartment)))
                        continue;
                for (size_t j = 0; j < s->n_subjects && !found; j++)
                        found = subject_matches(&s->subjects[j], &caller);
        }
        caller_done(&caller);
        return found;
}

bool policy_has_grant_in(const Policy *p, const PolicyRequest *req) {
        return has_grant(p, req, /* anywhere= */ false);
}

bool policy_has_any_grant(const Policy *p, const PolicyRequest *req) {
        return has_grant(p, req, /* anywhere= */ true);
}

bool policy_subject_has_any_grant(const Policy *p, uid_t uid, gid_t gid, const gid_t *groups, size_t n_groups) {
        PolicyRequest req = { .uid = uid, .gid = gid, .groups = groups, .n_groups = n_groups };
        return policy_has_any_grant(p, &req);
}

/* ---- explaining ---- */

/* A name or value as the parser reads it back: a bare word when possible (quote = false),
 * else quoted. NULL (EINVAL) when it cannot be written: empty, control characters, or both
 * kinds of quote. */
static char *format_value(const char *v, bool quote) {
        bool bare = true;
        char *s;

        if (!v || !*v || strlen(v) > POLICY_LINE_MAX / 2) {
                errno = EINVAL;
                return NULL;
        }
        for (const char *c = v; *c; c++) {
                unsigned char u = (unsigned char) *c;
                if (u < ' ' || u == 0x7f) {
                        errno = EINVAL;
                        return NULL;
                }
                if (!is_word_char(u))
                        bare = false;
        }
        if (bare && !quote && !word_is_reserved(v, strlen(v)))
                return strdup(v);
        if (!strchr(v, '\'')) {
                if (asprintf(&s, "'%s'", v) < 0)
                        return NULL;
                return s;
        }
        if (!strchr(v, '"')) {
                if (asprintf(&s, "\"%s\"", v) < 0)
                        return NULL;
                return s;
        }
        errno = EINVAL;
        return NULL;
}

char *policy_explain_denial(const PolicyRequest *req) {
        _cleanup_free_ char *user = NULL, *subject = NULL, *location = NULL, *where = NULL, *value = NULL;
        const char *verb, *resource_name, *attr_name = NULL, *id = NULL;
        ResourceType resource;
        char *s;

        if (!req || !(verb = policy_verb_to_string(req->verb))) {
                errno = EINVAL;
                return NULL;
        }
        resource = request_resource(req);
        if (resource < 0) {
                errno = EINVAL;
                return NULL;
        }
        resource_name = resource_to_string(resource);

        if (lookup_user_name(req->uid, &user) >= 0)
                subject = format_value(user, /* quote= */ false);
        if (!subject && asprintf(&subject, "id %u", (unsigned) req->uid) < 0)
                return NULL;

        if (req->compartment && *req->compartment) {
                value = format_value(req->compartment, /* quote= */ false);
                if (!value)
                        return NULL;
                if (asprintf(&location, "compartment %s", value) < 0)
                        return NULL;
        } else if (!(location = strdup("tenancy")))
                return NULL;

        if (resource == RESOURCE_KEYS || resource == RESOURCE_KEY_DELEGATE ||
            (resource != RESOURCE_VOLUMES && request_attr(req, ATTR_KEY_ID)))
                attr_name = "target.key.id", id = request_attr(req, ATTR_KEY_ID);
        else
                attr_name = "target.volume.id", id = request_attr(req, ATTR_VOLUME_ID);
        if (id) {
                free(value);
                /* An id that cannot be written leaves the suggestion broader, never wrong. */
                value = format_value(id, /* quote= */ true);
                if (value && asprintf(&where, " where %s = %s", attr_name, value) < 0)
                        return NULL;
        }

        if (asprintf(&s, "allow user %s to %s %s in %s%s", subject, verb, resource_name, location,
                     strempty(where)) < 0)
                return NULL;
        return s;
}
