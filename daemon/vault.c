/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* Vaults: PKCS#11 tokens through p11-kit; the embedded SoftHSM2 token; key objects in the token. */
/* RSA_padding_check_PKCS1_OAEP_mgf1(): deprecated in OpenSSL 3 but the only public OAEP decoder
 * that works on a raw RSA block; used only when the token cannot do OAEP with SHA-256 itself. */
#define OPENSSL_SUPPRESS_DEPRECATED 1
#include <ctype.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <sys/stat.h>
#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/evp.h>
#include <openssl/param_build.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/rsa.h>
#include <p11-kit/p11-kit.h>
#include <p11-kit/uri.h>

#include "cmek-fault.h"
#include "cmek-log.h"
#include "cmek-secmem.h"
#include "vault.h"

#define PIN_MAX 256U
#define VAULT_RETRY_USEC (5ULL * 1000000ULL)
#define VAULT_HANDLE_CACHE_MAX 64U

struct Vault {
        char *name;
        char *module_path;
        char *uri_string;
        char *pin_file;         /* a file holding the user PIN (embedded: "user-pin=" line) */
        char *pin_credential;   /* or a systemd credential name */
        bool embedded;

        P11KitUri *uri;
        CK_FUNCTION_LIST *module;
        bool initialized;
        CK_SLOT_ID slot;
        CK_SESSION_HANDLE session;
        bool have_session;
        bool pin_refused;       /* never retry a wrong PIN by ourselves: it would lock the token */
        uint64_t failed_usec;   /* last failed attempt (monotonic): retried at most every few seconds */
        int failed_error;
        char *reason;           /* why unavailable; NULL when usable */
        char **compartments;    /* "compartments = A B": keys of these compartments only; NULL: any */
        size_t n_compartments;
        /* label -> handle of the secret keys used for decryption (secret_find_cached) */
        struct { char *label; CK_OBJECT_HANDLE h; } handles[VAULT_HANDLE_CACHE_MAX];
        size_t n_handles;
};

struct VaultSet {
        Vault **vaults;
        size_t n;
};

static void vault_handles_forget(Vault *v) {
        for (size_t i = 0; i < v->n_handles; i++)
                free(v->handles[i].label);
        v->n_handles = 0;
}

static Vault *vault_free(Vault *v) {
        if (!v)
                return NULL;
        vault_handles_forget(v);
        if (v->have_session)
                (void) v->module->C_CloseSession(v->session);
        if (v->module) {
                if (v->initialized)
                        (void) p11_kit_module_finalize(v->module);
                p11_kit_module_release(v->module);
        }
        if (v->uri)
                p11_kit_uri_free(v->uri);
        for (size_t i = 0; i < v->n_compartments; i++)
                free(v->compartments[i]);
        free(v->compartments);
        free(v->name);
        free(v->module_path);
        free(v->uri_string);
        free(v->pin_file);
        free(v->pin_credential);
        free(v->reason);
        free(v);
        return NULL;
}

VaultSet *vault_set_free(VaultSet *s) {
        if (!s)
                return NULL;
        for (size_t i = s->n; i > 0; i--)
                vault_free(s->vaults[i - 1]);
        free(s->vaults);
        free(s);
        return NULL;
}

size_t vault_set_size(const VaultSet *s) {
        return s ? s->n : 0;
}

Vault *vault_set_get(const VaultSet *s, size_t i) {
        return s && i < s->n ? s->vaults[i] : NULL;
}

Vault *vault_set_find(const VaultSet *s, const char *name) {
        for (size_t i = 0; s && i < s->n; i++)
                if (streq(s->vaults[i]->name, name))
                        return s->vaults[i];
        return NULL;
}

const char *vault_name(const Vault *v) {
        return v->name;
}

int vault_rv_to_errno(CK_RV rv) {
        switch (rv) {
        case CKR_OK:
                return 0;
        case CKR_HOST_MEMORY:
                return -ENOMEM;
        case CKR_KEY_FUNCTION_NOT_PERMITTED:
        case CKR_KEY_TYPE_INCONSISTENT:
                return -EKEYREVOKED;
        case CKR_ENCRYPTED_DATA_INVALID:
        case CKR_ENCRYPTED_DATA_LEN_RANGE:
        case CKR_WRAPPED_KEY_INVALID:
        case CKR_WRAPPED_KEY_LEN_RANGE:
        case CKR_UNWRAPPING_KEY_SIZE_RANGE:
                return -EBADMSG;
        case CKR_PIN_INCORRECT:
        case CKR_PIN_INVALID:
        case CKR_PIN_LEN_RANGE:
                return -ENOANO;
        case CKR_PIN_LOCKED:
                return -ENOLCK;
        case CKR_ATTRIBUTE_READ_ONLY:
        case CKR_ACTION_PROHIBITED:
        case CKR_MECHANISM_INVALID:
        case CKR_MECHANISM_PARAM_INVALID:
        case CKR_FUNCTION_NOT_SUPPORTED:
        case CKR_TEMPLATE_INCONSISTENT:
                return -EOPNOTSUPP;
        case CKR_ATTRIBUTE_SENSITIVE:
                return -EPERM;
        case CKR_OBJECT_HANDLE_INVALID:
        case CKR_KEY_HANDLE_INVALID:
                return -ENOENT;
        case CKR_DEVICE_REMOVED:
        case CKR_TOKEN_NOT_PRESENT:
        case CKR_SLOT_ID_INVALID:
                return -ENXIO;
        case CKR_SESSION_HANDLE_INVALID:
        case CKR_SESSION_CLOSED:
        case CKR_USER_NOT_LOGGED_IN:
        case CKR_CRYPTOKI_NOT_INITIALIZED:
                return -ENOTCONN;
        case CKR_DEVICE_MEMORY:
                return -ENOSPC;
        default:
                return -EIO;
        }
}

static bool rv_session_lost(CK_RV rv) {
        return rv == CKR_SESSION_HANDLE_INVALID || rv == CKR_SESSION_CLOSED || rv == CKR_USER_NOT_LOGGED_IN ||
                rv == CKR_DEVICE_REMOVED || rv == CKR_TOKEN_NOT_PRESENT || rv == CKR_DEVICE_ERROR;
}

static bool valid_aes_len(unsigned long n) {
        return n == 16 || n == 24 || n == 32;
}

static void *mfree(void *p) {
        free(p);
        return NULL;
}

static void vault_set_reason(Vault *v, const char *fmt, ...) _printf_(2, 3);
static void vault_set_reason(Vault *v, const char *fmt, ...) {
        va_list ap;
        char *s = NULL;

        va_start(ap, fmt);
        if (vasprintf(&s, fmt, ap) < 0)
                s = NULL;
        va_end(ap);
        free(v->reason);
        v->reason = s ? s : strdup("unavailable");
        log_debug("Vault '%s' unavailable: %s", v->name, strempty(v->reason));
}

static void vault_drop_session(Vault *v) {
        vault_handles_forget(v);        /* a new session may come from a new C_Initialize */
        if (v->have_session)
                (void) v->module->C_CloseSession(v->session);
        v->have_session = false;
}

static char *token_string(const unsigned char *s, size_t n) {
        while (n > 0 && (s[n - 1] == ' ' || s[n - 1] == 0))
                n--;
        return strndup((const char *) s, n);
}

/* Reads the user PIN into locked memory. The embedded vault's file is "user-pin=...". */
static int vault_read_pin(Vault *v, char **ret) {
        _cleanup_free_ char *path = NULL;
        char *buf = NULL, *pin;
        size_t size;
        int r;

        if (v->pin_credential) {
                const char *d = getenv("CREDENTIALS_DIRECTORY");
                if (!d)
                        return -ENOMEDIUM;
                if (asprintf(&path, "%s/%s", d, v->pin_credential) < 0)
                        return -ENOMEM;
        } else if (v->pin_file) {
                path = strdup(v->pin_file);
                if (!path)
                        return -ENOMEM;
        } else {
                *ret = NULL;    /* no PIN configured: protected authentication path or none */
                return 0;
        }

        /* read straight into locked memory: a PIN never touches the ordinary heap */
        _cleanup_close_ int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
        if (fd < 0)
                return -errno;
        buf = cmek_secure_alloc(PIN_MAX + 1);
        if (!buf)
                return -ENOMEM;
        size = 0;
        for (;;) {
                ssize_t k = read(fd, buf + size, PIN_MAX - size);
                if (k < 0 && errno == EINTR)
                        continue;
                if (k < 0) {
                        r = -errno;
                        cmek_secure_free(buf);
                        return r;
                }
                if (k == 0 || (size += (size_t) k) == PIN_MAX)
                        break;
        }
        buf[size] = 0;
        pin = buf;
        if (v->embedded) {
                char *p = strstr(buf, "user-pin=");
                if (!p) {
                        cmek_secure_free(buf);
                        return -EBADMSG;
                }
                pin = p + strlen("user-pin=");
        }
        pin[strcspn(pin, "\r\n")] = 0;
        if (pin != buf)
                memmove(buf, pin, strlen(pin) + 1);
        *ret = buf;
        return 0;
}

static int vault_find_slot(Vault *v, bool *ret_found) {
        _cleanup_free_ CK_SLOT_ID *slots = NULL;
        CK_ULONG n = 0;
        CK_RV rv;

        rv = v->module->C_GetSlotList(CK_TRUE, NULL, &n);
        if (rv != CKR_OK)
                return vault_rv_to_errno(rv);
        slots = calloc(n + 1, sizeof(CK_SLOT_ID));
        if (!slots)
                return -ENOMEM;
        rv = v->module->C_GetSlotList(CK_TRUE, slots, &n);
        if (rv != CKR_OK)
                return vault_rv_to_errno(rv);

        for (CK_ULONG i = 0; i < n; i++) {
                CK_TOKEN_INFO ti;
                if (v->module->C_GetTokenInfo(slots[i], &ti) != CKR_OK)
                        continue;
                if (!(ti.flags & CKF_TOKEN_INITIALIZED))
                        continue;
                if (p11_kit_uri_match_token_info(v->uri, &ti) == 1) {
                        v->slot = slots[i];
                        *ret_found = true;
                        return 0;
                }
        }
        *ret_found = false;
        return 0;
}

static void random_hex(char *buf, size_t n_bytes) {
        uint8_t b[64];
        static const char hex[] = "0123456789abcdef";

        if (RAND_bytes(b, (int) n_bytes) != 1)
                abort();        /* no randomness for a PIN: nothing safe to do */
        for (size_t i = 0; i < n_bytes; i++) {
                buf[2 * i] = hex[b[i] >> 4];
                buf[2 * i + 1] = hex[b[i] & 15];
        }
        buf[2 * n_bytes] = 0;
        explicit_bzero(b, sizeof(b));
}

/* The embedded token does not exist yet: write the PINs first (so they cannot be lost),
 * then initialise a free slot, then set the user PIN. */
static int vault_init_embedded_token(Vault *v) {
        _cleanup_free_ CK_SLOT_ID *slots = NULL;
        char so_pin[33], user_pin[33], label[32];
        char *pins = NULL;
        CK_SESSION_HANDLE s;
        CK_ULONG n = 0;
        CK_RV rv;
        int r;

        rv = v->module->C_GetSlotList(CK_TRUE, NULL, &n);
        if (rv != CKR_OK)
                return vault_rv_to_errno(rv);
        slots = calloc(n + 1, sizeof(CK_SLOT_ID));
        if (!slots)
                return -ENOMEM;
        rv = v->module->C_GetSlotList(CK_TRUE, slots, &n);
        if (rv != CKR_OK)
                return vault_rv_to_errno(rv);

        CK_ULONG i;
        for (i = 0; i < n; i++) {
                CK_TOKEN_INFO ti;
                if (v->module->C_GetTokenInfo(slots[i], &ti) == CKR_OK && !(ti.flags & CKF_TOKEN_INITIALIZED))
                        break;
        }
        if (i == n)
                return -ENOSPC;

        random_hex(so_pin, 16);
        random_hex(user_pin, 16);
        if (asprintf(&pins, "so-pin=%s\nuser-pin=%s\n", so_pin, user_pin) < 0) {
                r = -ENOMEM;
                goto out;
        }
        r = cmek_write_file_atomic(v->pin_file, pins, strlen(pins), 0600);
        explicit_bzero(pins, strlen(pins));
        free(pins);
        if (r < 0)
                goto out;

        memset(label, ' ', sizeof(label));
        memcpy(label, VAULT_DEFAULT_TOKEN_LABEL, strlen(VAULT_DEFAULT_TOKEN_LABEL));
        rv = v->module->C_InitToken(slots[i], (CK_UTF8CHAR *) so_pin, strlen(so_pin), (CK_UTF8CHAR *) label);
        if (rv != CKR_OK) {
                r = vault_rv_to_errno(rv);
                goto out;
        }
        /* SoftHSM2 moves the token to a new slot id once initialised: look it up again. */
        bool found;
        r = vault_find_slot(v, &found);
        if (r < 0)
                goto out;
        if (!found) {
                r = -ENXIO;
                goto out;
        }
        rv = v->module->C_OpenSession(v->slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, &s);
        if (rv != CKR_OK) {
                r = vault_rv_to_errno(rv);
                goto out;
        }
        rv = v->module->C_Login(s, CKU_SO, (CK_UTF8CHAR *) so_pin, strlen(so_pin));
        if (rv == CKR_OK)
                rv = v->module->C_InitPIN(s, (CK_UTF8CHAR *) user_pin, strlen(user_pin));
        (void) v->module->C_Logout(s);
        (void) v->module->C_CloseSession(s);
        r = vault_rv_to_errno(rv);
        if (r >= 0)
                log_info("Initialised the embedded SoftHSM2 token '%s'.", VAULT_DEFAULT_TOKEN_LABEL);
out:
        explicit_bzero(so_pin, sizeof(so_pin));
        explicit_bzero(user_pin, sizeof(user_pin));
        return r;
}

static int vault_connect_now(Vault *v);

/* Loads the module, finds the token, opens the session and logs in; sets v->reason on failure. */
static int vault_connect(Vault *v) {
        int r;

        if (v->have_session)
                return 0;
        if (v->pin_refused)
                return -ENOANO;
        if (v->reason && v->failed_usec && cmek_monotonic_usec() < v->failed_usec + VAULT_RETRY_USEC)
                return v->failed_error;
        r = vault_connect_now(v);
        if (r < 0) {
                v->failed_usec = cmek_monotonic_usec();
                v->failed_error = r;
        }
        return r;
}

/* again: finalize first (a fresh C_Initialize) */
static int vault_module_initialize(Vault *v, bool again) {
        CK_RV rv;

        if (again) {
                (void) p11_kit_module_finalize(v->module);
                v->initialized = false;
        }
        rv = p11_kit_module_initialize(v->module);
        if (rv != CKR_OK) {
                vault_set_reason(v, "cannot initialise PKCS#11 module '%s'%s: %s", v->module_path,
                                 again ? " again" : "", p11_kit_strerror(rv));
                return vault_rv_to_errno(rv);
        }
        v->initialized = true;
        return 0;
}

static int vault_connect_now(Vault *v) {
        CK_TOKEN_INFO ti;
        CK_RV rv;
        bool found;
        int r;

        if (!v->module) {
                v->module = p11_kit_module_load(v->module_path, 0);
                if (!v->module) {
                        vault_set_reason(v, "cannot load PKCS#11 module '%s': %s", v->module_path,
                                         p11_kit_message() ?: "unknown error");
                        return -ENOENT;
                }
        }
        if (!v->initialized) {
                r = vault_module_initialize(v, false);
                if (r < 0)
                        return r;
        }

        r = vault_find_slot(v, &found);
        if ((r < 0 || !found) && !v->embedded) {
                /* a module whose token went away (p11-kit-client whose server stopped) reaches
                 * it again only from a new C_Initialize: start the module over once */
                r = vault_module_initialize(v, true);
                if (r < 0)
                        return r;
                r = vault_find_slot(v, &found);
        }
        if (r < 0) {
                vault_set_reason(v, "cannot list slots: %s", strerror(-r));
                return r;
        }
        if (!found && v->embedded) {
                r = vault_init_embedded_token(v);
                if (r < 0) {
                        vault_set_reason(v, "cannot initialise the embedded token: %s", strerror(-r));
                        return r;
                }
                r = vault_find_slot(v, &found);
                if (r < 0)
                        return r;
        }
        if (!found) {
                vault_set_reason(v, "no token matches '%s'", v->uri_string);
                return -ENXIO;
        }

        rv = v->module->C_GetTokenInfo(v->slot, &ti);
        if (rv != CKR_OK) {
                vault_set_reason(v, "cannot read token info: %s", p11_kit_strerror(rv));
                return vault_rv_to_errno(rv);
        }
        rv = v->module->C_OpenSession(v->slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, &v->session);
        if (rv != CKR_OK) {
                vault_set_reason(v, "cannot open a session: %s", p11_kit_strerror(rv));
                return vault_rv_to_errno(rv);
        }
        v->have_session = true;

        if (ti.flags & CKF_PROTECTED_AUTHENTICATION_PATH)
                rv = v->module->C_Login(v->session, CKU_USER, NULL, 0);
        else {
                _cleanup_secure_ char *pin = NULL;
                r = vault_read_pin(v, &pin);
                if (r < 0) {
                        vault_drop_session(v);
                        vault_set_reason(v, "cannot read the PIN: %s", strerror(-r));
                        return r;
                }
                if (!pin && (ti.flags & CKF_LOGIN_REQUIRED)) {
                        vault_drop_session(v);
                        vault_set_reason(v, "the token needs a PIN and none is configured (pin-file= or pin-credential=)");
                        return -ENOANO;
                }
                rv = pin ? v->module->C_Login(v->session, CKU_USER, (CK_UTF8CHAR *) pin, strlen(pin)) : CKR_OK;
        }
        if (rv != CKR_OK && rv != CKR_USER_ALREADY_LOGGED_IN) {
                vault_drop_session(v);
                if (rv == CKR_PIN_INCORRECT || rv == CKR_PIN_LOCKED) {
                        v->pin_refused = true;
                        /* re-read the token info: the PIN counters change after a failed login */
                        if (v->module->C_GetTokenInfo(v->slot, &ti) == CKR_OK && (ti.flags & CKF_USER_PIN_LOCKED))
                                rv = CKR_PIN_LOCKED;
                        vault_set_reason(v, rv == CKR_PIN_LOCKED ? "the user PIN is locked" :
                                         "the user PIN is wrong (not retried until cmekd restarts)");
                } else
                        vault_set_reason(v, "login failed: %s", p11_kit_strerror(rv));
                return vault_rv_to_errno(rv);
        }

        v->reason = mfree(v->reason);
        return 0;
}

const char *vault_unavailable_reason(Vault *v) {
        if (vault_connect(v) < 0)
                return v->reason ?: "unavailable";
        return NULL;
}

/* Runs one token operation in the vault's session; reconnects and retries once when the
 * session or the login was lost (token re-inserted, p11-kit server restarted, ...). */
#define VAULT_RUN(v, s, rv, call)                                               \
        do {                                                                    \
                for (unsigned _attempt = 0;; _attempt++) {                      \
                        int _r = vault_connect(v);                              \
                        if (_r < 0)                                             \
                                return _r;                                      \
                        (s) = (v)->session;                                     \
                        (rv) = (call);                                          \
                        if (_attempt == 0 && rv_session_lost(rv)) {             \
                                log_debug("Vault '%s': session lost (%s), reconnecting.", \
                                          (v)->name, p11_kit_strerror(rv));     \
                                vault_drop_session(v);                          \
                                continue;                                       \
                        }                                                       \
                        break;                                                  \
                }                                                               \
        } while (0)

/* --- config --- */

static Vault *vault_new(const char *name) {
        Vault *v = calloc(1, sizeof(Vault));
        if (!v)
                return NULL;
        v->name = strdup(name);
        if (!v->name)
                return vault_free(v);
        return v;
}

static int vault_set_add(VaultSet *s, Vault *v) {
        Vault **a = reallocarray(s->vaults, s->n + 1, sizeof(Vault *));
        if (!a)
                return -ENOMEM;
        s->vaults = a;
        s->vaults[s->n++] = v;
        return 0;
}

static int vault_parse_uri(Vault *v) {
        int k;

        v->uri = p11_kit_uri_new();
        if (!v->uri)
                return -ENOMEM;
        if (!v->uri_string) {
                vault_set_reason(v, "no token= URI configured");
                return 0;
        }
        k = p11_kit_uri_parse(v->uri_string, P11_KIT_URI_FOR_TOKEN, v->uri);
        if (k != P11_KIT_URI_OK)
                vault_set_reason(v, "invalid token URI '%s': %s", v->uri_string, p11_kit_uri_message(k));
        return 0;
}

/* "compartments = A B C" of the vault's section, as config.c checked them: keys of other
 * compartments are refused in this vault; none leaves the vault unrestricted. */
static int vault_set_compartments(Vault *v, const ConfigVault *cv) {
        if (cv->n_compartments == 0)
                return 0;
        v->compartments = calloc(cv->n_compartments, sizeof(char *));
        if (!v->compartments)
                return -ENOMEM;
        for (size_t i = 0; i < cv->n_compartments; i++) {
                v->compartments[i] = strdup(cv->compartments[i]);
                if (!v->compartments[i])
                        return -ENOMEM;
                v->n_compartments++;
        }
        return 0;
}

bool vault_allows_compartment(const Vault *v, const char *compartment) {
        if (v->n_compartments == 0)
                return true;
        for (size_t i = 0; compartment && i < v->n_compartments; i++)
                if (streq(v->compartments[i], compartment))
                        return true;
        return false;
}

char *vault_compartments_string(const Vault *v) {
        size_t len = 1;
        char *s;

        for (size_t i = 0; i < v->n_compartments; i++)
                len += strlen(v->compartments[i]) + 2;
        s = malloc(len);
        if (!s)
                return NULL;
        *s = 0;
        for (size_t i = 0; i < v->n_compartments; i++) {
                if (i > 0)
                        strcat(s, ", ");
                strcat(s, v->compartments[i]);
        }
        return s;
}

static int strdup_or_null(char **dst, const char *src) {
        if (!src)
                return 0;
        *dst = strdup(src);
        return *dst ? 0 : -ENOMEM;
}

/* The "[vault NAME]" sections, in file order; "[vault default]" only restricts the embedded
 * vault's compartments (config.c refuses anything else there). */
static int vault_set_add_configured(VaultSet *set, const Config *config) {
        int r;

        for (size_t i = 0; config && i < config->n_vaults; i++) {
                const ConfigVault *cv = config->vaults[i];
                Vault *v = vault_set_find(set, cv->name);

                if (v && v->embedded) {
                        r = vault_set_compartments(v, cv);
                        if (r < 0)
                                return r;
                        continue;
                }
                if (v)
                        continue;       /* config.c refuses a name used twice */
                v = vault_new(cv->name);
                if (!v)
                        return -ENOMEM;
                r = vault_set_add(set, v);
                if (r < 0) {
                        vault_free(v);
                        return r;
                }
                if (strdup_or_null(&v->module_path, cv->module) < 0 ||
                    strdup_or_null(&v->uri_string, cv->token) < 0 ||
                    strdup_or_null(&v->pin_file, cv->pin_file) < 0 ||
                    strdup_or_null(&v->pin_credential, cv->pin_credential) < 0 ||
                    vault_set_compartments(v, cv) < 0)
                        return -ENOMEM;
        }
        return 0;
}

static int vault_setup_embedded(Vault *v, const char *state_dir, const char *softhsm_module) {
        _cleanup_free_ char *conf = NULL, *tokendir = NULL, *text = NULL;
        int r;

        v->embedded = true;
        v->module_path = strdup(softhsm_module);
        v->uri_string = strdup("pkcs11:token=" VAULT_DEFAULT_TOKEN_LABEL);
        if (asprintf(&v->pin_file, "%s/pins", state_dir) < 0 || !v->module_path || !v->uri_string ||
            asprintf(&conf, "%s/softhsm2.conf", state_dir) < 0 ||
            asprintf(&tokendir, "%s/softhsm/tokens", state_dir) < 0)
                return -ENOMEM;

        r = cmek_mkdir_p(tokendir, 0700);
        if (r < 0) {
                vault_set_reason(v, "cannot create '%s': %s", tokendir, strerror(-r));
                return 0;
        }
        if (asprintf(&text,
                     "# Written by cmekd for its embedded default vault; do not edit.\n"
                     "directories.tokendir = %s\n"
                     "objectstore.backend = file\n"
                     "log.level = ERROR\n"
                     "slots.removable = false\n", tokendir) < 0)
                return -ENOMEM;
        r = cmek_write_file_atomic(conf, text, strlen(text), 0600);
        if (r < 0) {
                vault_set_reason(v, "cannot write '%s': %s", conf, strerror(-r));
                return 0;
        }
        /* SoftHSM2 reads its configuration when the module is initialised. */
        if (setenv("SOFTHSM2_CONF", conf, 1) < 0)
                return -errno;
        return 0;
}

int vault_set_load(const char *state_dir, const Config *config, const char *softhsm_module, VaultSet **ret) {
        VaultSet *s;
        Vault *v;
        int r;

        s = calloc(1, sizeof(VaultSet));
        if (!s)
                return -ENOMEM;
        v = vault_new(VAULT_DEFAULT_NAME);
        if (!v || vault_set_add(s, v) < 0) {
                vault_free(v);
                r = -ENOMEM;
                goto fail;
        }
        r = vault_setup_embedded(v, state_dir, softhsm_module);
        if (r < 0)
                goto fail;
        r = vault_set_add_configured(s, config);
        if (r < 0)
                goto fail;

        for (size_t i = 0; i < s->n; i++) {
                v = s->vaults[i];
                r = vault_parse_uri(v);
                if (r < 0)
                        goto fail;
                if (!v->module_path)
                        vault_set_reason(v, "no module= configured");
                if (v->reason)
                        continue;
                r = vault_connect(v);
                if (r < 0)
                        log_warning("Vault '%s' is unavailable: %s", v->name, v->reason);
                else
                        log_debug("Vault '%s' ready.", v->name);
        }
        *ret = s;
        return 0;
fail:
        vault_set_free(s);
        return r;
}

/* --- describing --- */

static json_object *json_string_or_null(const char *s) {
        return s ? json_object_new_string(s) : NULL;
}

int vault_describe(Vault *v, json_object **ret) {
        json_object *o = json_object_new_object();
        const char *reason;

        if (!o)
                return -ENOMEM;
        reason = vault_unavailable_reason(v);
        json_object_object_add(o, "name", json_object_new_string(v->name));
        json_object_object_add(o, "uri", json_string_or_null(v->uri_string));
        json_object_object_add(o, "module", json_string_or_null(v->module_path));
        json_object_object_add(o, "embedded", json_object_new_boolean(v->embedded));
        json_object_object_add(o, "available", json_object_new_boolean(!reason));
        if (v->n_compartments > 0) {
                json_object *a = json_object_new_array();
                for (size_t i = 0; i < v->n_compartments; i++)
                        json_object_array_add(a, json_object_new_string(v->compartments[i]));
                json_object_object_add(o, "compartments", a);
        }
        if (reason)
                json_object_object_add(o, "reason", json_object_new_string(reason));

        if (v->module && v->initialized) {
                CK_ULONG n = 0, n_free = 0;
                _cleanup_free_ CK_SLOT_ID *slots = NULL;
                if (v->module->C_GetSlotList(CK_FALSE, NULL, &n) == CKR_OK && (slots = calloc(n + 1, sizeof(CK_SLOT_ID))) &&
                    v->module->C_GetSlotList(CK_FALSE, slots, &n) == CKR_OK) {
                        for (CK_ULONG i = 0; i < n; i++) {
                                CK_TOKEN_INFO ti;
                                if (v->module->C_GetTokenInfo(slots[i], &ti) == CKR_OK && !(ti.flags & CKF_TOKEN_INITIALIZED))
                                        n_free++;
                        }
                        json_object_object_add(o, "slots", json_object_new_int64((int64_t) n));
                        json_object_object_add(o, "free_slots", json_object_new_int64((int64_t) n_free));
                }
        }
        if (!reason) {
                CK_TOKEN_INFO ti;
                if (v->module->C_GetTokenInfo(v->slot, &ti) == CKR_OK) {
                        json_object *t = json_object_new_object();
                        _cleanup_free_ char *label = token_string(ti.label, sizeof(ti.label)),
                                *man = token_string(ti.manufacturerID, sizeof(ti.manufacturerID)),
                                *model = token_string(ti.model, sizeof(ti.model)),
                                *serial = token_string(ti.serialNumber, sizeof(ti.serialNumber));
                        json_object_object_add(t, "label", json_string_or_null(label));
                        json_object_object_add(t, "manufacturer", json_string_or_null(man));
                        json_object_object_add(t, "model", json_string_or_null(model));
                        json_object_object_add(t, "serial", json_string_or_null(serial));
                        char ver[32];
                        snprintf(ver, sizeof(ver), "%u.%u", ti.hardwareVersion.major, ti.hardwareVersion.minor);
                        json_object_object_add(t, "hardware_version", json_object_new_string(ver));
                        snprintf(ver, sizeof(ver), "%u.%u", ti.firmwareVersion.major, ti.firmwareVersion.minor);
                        json_object_object_add(t, "firmware_version", json_object_new_string(ver));
                        json_object_object_add(o, "token", t);
                }
        }
        *ret = o;
        return 0;
}

/* --- objects --- */

static CK_RV find_all(Vault *v, CK_SESSION_HANDLE s, CK_ATTRIBUTE *tmpl, CK_ULONG n_tmpl,
                      CK_OBJECT_HANDLE **ret, CK_ULONG *ret_n) {
        CK_OBJECT_HANDLE *h = NULL, buf[64];
        CK_ULONG n = 0, got;
        CK_RV rv;

        rv = v->module->C_FindObjectsInit(s, tmpl, n_tmpl);
        if (rv != CKR_OK)
                return rv;
        for (;;) {
                rv = v->module->C_FindObjects(s, buf, ARRAY_SIZE(buf), &got);
                if (rv != CKR_OK || got == 0)
                        break;
                CK_OBJECT_HANDLE *nh = reallocarray(h, n + got, sizeof(CK_OBJECT_HANDLE));
                if (!nh) {
                        rv = CKR_HOST_MEMORY;
                        break;
                }
                h = nh;
                memcpy(h + n, buf, got * sizeof(CK_OBJECT_HANDLE));
                n += got;
        }
        (void) v->module->C_FindObjectsFinal(s);
        if (rv != CKR_OK) {
                free(h);
                return rv;
        }
        *ret = h;
        *ret_n = n;
        return CKR_OK;
}

/* Reads one variable-size attribute into a NUL-terminated malloc'ed buffer. */
static CK_RV get_attr(Vault *v, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE h, CK_ATTRIBUTE_TYPE type,
                      char **ret, size_t *ret_size) {
        CK_ATTRIBUTE a = { type, NULL, 0 };
        CK_RV rv;
        char *b;

        rv = v->module->C_GetAttributeValue(s, h, &a, 1);
        if (rv != CKR_OK)
                return rv;
        if (a.ulValueLen == (CK_ULONG) -1)
                return CKR_ATTRIBUTE_TYPE_INVALID;
        b = malloc(a.ulValueLen + 1);
        if (!b)
                return CKR_HOST_MEMORY;
        a.pValue = b;
        rv = v->module->C_GetAttributeValue(s, h, &a, 1);
        if (rv != CKR_OK) {
                free(b);
                return rv;
        }
        b[a.ulValueLen] = 0;
        *ret = b;
        if (ret_size)
                *ret_size = a.ulValueLen;
        return CKR_OK;
}

void vault_data_array_free(VaultData *d, size_t n) {
        for (size_t i = 0; d && i < n; i++) {
                free(d[i].label);
                free(d[i].value);
        }
        free(d);
}

static CK_RV data_find(Vault *v, CK_SESSION_HANDLE s, const char *label, VaultData **ret, size_t *ret_n) {
        CK_OBJECT_CLASS cls = CKO_DATA;
        CK_ATTRIBUTE tmpl[] = {
                { CKA_CLASS, &cls, sizeof(cls) },
                { CKA_APPLICATION, (void *) VAULT_APPLICATION, strlen(VAULT_APPLICATION) },
                { CKA_LABEL, (void *) label, label ? strlen(label) : 0 },
        };
        _cleanup_free_ CK_OBJECT_HANDLE *h = NULL;
        VaultData *d = NULL;
        CK_ULONG n = 0;
        CK_RV rv;

        rv = find_all(v, s, tmpl, label ? 3 : 2, &h, &n);
        if (rv != CKR_OK)
                return rv;
        d = calloc(n + 1, sizeof(VaultData));
        if (!d)
                return CKR_HOST_MEMORY;
        for (CK_ULONG i = 0; i < n; i++) {
                d[i].handle = h[i];
                rv = get_attr(v, s, h[i], CKA_LABEL, &d[i].label, NULL);
                if (rv == CKR_OK)
                        rv = get_attr(v, s, h[i], CKA_VALUE, &d[i].value, &d[i].size);
                if (rv != CKR_OK) {
                        vault_data_array_free(d, n);
                        return rv;
                }
        }
        *ret = d;
        *ret_n = n;
        return CKR_OK;
}

int vault_data_find(Vault *v, const char *label, VaultData **ret, size_t *ret_n) {
        CK_SESSION_HANDLE s;
        CK_RV rv;

        VAULT_RUN(v, s, rv, data_find(v, s, label, ret, ret_n));
        return vault_rv_to_errno(rv);
}

int vault_data_create(Vault *v, const char *label, const char *value, CK_OBJECT_HANDLE *ret) {
        CK_OBJECT_CLASS cls = CKO_DATA;
        CK_BBOOL yes = CK_TRUE;
        CK_ATTRIBUTE tmpl[] = {
                { CKA_CLASS, &cls, sizeof(cls) },
                { CKA_TOKEN, &yes, sizeof(yes) },
                { CKA_PRIVATE, &yes, sizeof(yes) },
                { CKA_MODIFIABLE, &yes, sizeof(yes) },
                { CKA_APPLICATION, (void *) VAULT_APPLICATION, strlen(VAULT_APPLICATION) },
                { CKA_LABEL, (void *) label, strlen(label) },
                { CKA_VALUE, (void *) value, strlen(value) },
        };
        CK_OBJECT_HANDLE h = CK_INVALID_HANDLE;
        CK_SESSION_HANDLE s;
        CK_RV rv;

        VAULT_RUN(v, s, rv, v->module->C_CreateObject(s, tmpl, ARRAY_SIZE(tmpl), &h));
        cmek_fault("vault-after-create-object");
        if (rv != CKR_OK)
                return vault_rv_to_errno(rv);
        if (ret)
                *ret = h;
        return 0;
}

int vault_data_update(Vault *v, CK_OBJECT_HANDLE h, const char *value) {
        CK_ATTRIBUTE a = { CKA_VALUE, (void *) value, strlen(value) };
        CK_SESSION_HANDLE s;
        CK_RV rv;

        VAULT_RUN(v, s, rv, v->module->C_SetAttributeValue(s, h, &a, 1));
        if (rv == CKR_ATTRIBUTE_READ_ONLY || rv == CKR_ACTION_PROHIBITED || rv == CKR_ATTRIBUTE_TYPE_INVALID)
                return -EOPNOTSUPP;
        return vault_rv_to_errno(rv);
}

int vault_object_destroy(Vault *v, CK_OBJECT_HANDLE h) {
        CK_SESSION_HANDLE s;
        CK_RV rv;

        cmek_fault("vault-before-destroy-object");
        vault_handles_forget(v);        /* a token may hand the handle out again */
        VAULT_RUN(v, s, rv, v->module->C_DestroyObject(s, h));
        return vault_rv_to_errno(rv);
}

/* --- AES keys --- */

static CK_RV find_one(Vault *v, CK_SESSION_HANDLE s, CK_OBJECT_CLASS cls, const char *label, CK_OBJECT_HANDLE *ret) {
        CK_ATTRIBUTE tmpl[] = {
                { CKA_CLASS, &cls, sizeof(cls) },
                { CKA_LABEL, (void *) label, strlen(label) },
        };
        _cleanup_free_ CK_OBJECT_HANDLE *h = NULL;
        CK_ULONG n = 0;
        CK_RV rv;

        rv = find_all(v, s, tmpl, ARRAY_SIZE(tmpl), &h, &n);
        if (rv != CKR_OK)
                return rv;
        if (n == 0)
                return CKR_OBJECT_HANDLE_INVALID;
        *ret = h[0];
        return CKR_OK;
}

int vault_secret_find(Vault *v, const char *label, CK_OBJECT_HANDLE *ret) {
        CK_SESSION_HANDLE s;
        CK_RV rv;

        VAULT_RUN(v, s, rv, find_one(v, s, CKO_SECRET_KEY, label, ret));
        return vault_rv_to_errno(rv);
}

static int secret_find_cached(Vault *v, const char *label, CK_OBJECT_HANDLE *ret) {
        char *copy;
        int r;

        for (size_t i = 0; i < v->n_handles; i++)
                if (streq(v->handles[i].label, label)) {
                        *ret = v->handles[i].h;
                        return 0;
                }
        r = vault_secret_find(v, label, ret);
        if (r < 0)
                return r;
        if (v->n_handles == VAULT_HANDLE_CACHE_MAX)
                vault_handles_forget(v);
        copy = strdup(label);
        if (copy) {
                v->handles[v->n_handles].label = copy;
                v->handles[v->n_handles++].h = *ret;
        }
        return 0;
}

#define MASTER_KEY_TEMPLATE(cls, type, yes, no, label, id)                       \
        { CKA_CLASS, &(cls), sizeof(cls) },                                     \
        { CKA_KEY_TYPE, &(type), sizeof(type) },                                \
        { CKA_TOKEN, &(yes), sizeof(yes) },                                     \
        { CKA_PRIVATE, &(yes), sizeof(yes) },                                   \
        { CKA_SENSITIVE, &(yes), sizeof(yes) },                                 \
        { CKA_EXTRACTABLE, &(no), sizeof(no) },                                 \
        { CKA_ENCRYPT, &(yes), sizeof(yes) },                                   \
        { CKA_DECRYPT, &(yes), sizeof(yes) },                                   \
        { CKA_WRAP, &(no), sizeof(no) },                                        \
        { CKA_UNWRAP, &(no), sizeof(no) },                                      \
        { CKA_SIGN, &(no), sizeof(no) },                                        \
        { CKA_VERIFY, &(no), sizeof(no) },                                      \
        { CKA_LABEL, (void *) (label), strlen(label) },                         \
        { CKA_ID, (void *) (id), strlen(id) }

int vault_secret_generate(Vault *v, const char *label, const char *id, unsigned bytes, CK_OBJECT_HANDLE *ret) {
        CK_OBJECT_CLASS cls = CKO_SECRET_KEY;
        CK_KEY_TYPE type = CKK_AES;
        CK_BBOOL yes = CK_TRUE, no = CK_FALSE;
        CK_ULONG len = bytes;
        CK_ATTRIBUTE tmpl[] = {
                MASTER_KEY_TEMPLATE(cls, type, yes, no, label, id),
                { CKA_VALUE_LEN, &len, sizeof(len) },
        };
        CK_MECHANISM mech = { CKM_AES_KEY_GEN, NULL, 0 };
        CK_SESSION_HANDLE s;
        CK_RV rv;

        if (!valid_aes_len(bytes))
                return -EINVAL;
        VAULT_RUN(v, s, rv, v->module->C_GenerateKey(s, &mech, tmpl, ARRAY_SIZE(tmpl), ret));
        cmek_fault("vault-after-generate-key");
        return vault_rv_to_errno(rv);
}

int vault_secret_get_flags(Vault *v, CK_OBJECT_HANDLE h, VaultKeyFlags *ret) {
        CK_BBOOL enc = 0, dec = 0, sens = 0, ext = 0;
        CK_ULONG len = 0;
        CK_ATTRIBUTE a[] = {
                { CKA_ENCRYPT, &enc, sizeof(enc) },
                { CKA_DECRYPT, &dec, sizeof(dec) },
                { CKA_SENSITIVE, &sens, sizeof(sens) },
                { CKA_EXTRACTABLE, &ext, sizeof(ext) },
                { CKA_VALUE_LEN, &len, sizeof(len) },
        };
        CK_SESSION_HANDLE s;
        CK_RV rv;

        VAULT_RUN(v, s, rv, v->module->C_GetAttributeValue(s, h, a, ARRAY_SIZE(a)));
        if (rv != CKR_OK)
                return vault_rv_to_errno(rv);
        *ret = (VaultKeyFlags) { .encrypt = enc, .decrypt = dec, .sensitive = sens, .extractable = ext, .value_len = len };
        return 0;
}

int vault_secret_set_usage(Vault *v, CK_OBJECT_HANDLE h, bool usable) {
        CK_BBOOL b = usable ? CK_TRUE : CK_FALSE;
        CK_ATTRIBUTE a[] = {
                { CKA_ENCRYPT, &b, sizeof(b) },
                { CKA_DECRYPT, &b, sizeof(b) },
        };
        CK_SESSION_HANDLE s;
        CK_RV rv;

        VAULT_RUN(v, s, rv, v->module->C_SetAttributeValue(s, h, a, ARRAY_SIZE(a)));
        if (rv == CKR_ATTRIBUTE_READ_ONLY || rv == CKR_ACTION_PROHIBITED)
                return -EOPNOTSUPP;
        return vault_rv_to_errno(rv);
}

int vault_random(Vault *v, void *buf, size_t n) {
        return RAND_bytes(buf, (int) n) == 1 ? 0 : -EIO;
}

static CK_RV gcm_encrypt(Vault *v, CK_SESSION_HANDLE s, CK_MECHANISM *mech, CK_OBJECT_HANDLE h,
                         const void *pt, size_t pt_size, uint8_t *out, CK_ULONG *out_size) {
        CK_RV rv = v->module->C_EncryptInit(s, mech, h);
        if (rv != CKR_OK)
                return rv;
        return v->module->C_Encrypt(s, (CK_BYTE *) pt, pt_size, out, out_size);
}

int vault_gcm_encrypt(Vault *v, CK_OBJECT_HANDLE h, const void *aad, size_t aad_size,
                      const void *pt, size_t pt_size, uint8_t iv[12], void *ret_ct, uint8_t tag[16]) {
        uint8_t nonce[12];
        CK_GCM_PARAMS p = {
                .pIv = nonce, .ulIvLen = sizeof(nonce), .ulIvBits = sizeof(nonce) * 8,
                .pAAD = (CK_BYTE *) aad, .ulAADLen = aad_size, .ulTagBits = 128,
        };
        CK_MECHANISM mech = { CKM_AES_GCM, &p, sizeof(p) };
        _cleanup_free_ uint8_t *out = NULL;
        CK_ULONG out_size;
        CK_SESSION_HANDLE s;
        CK_RV rv;

        if (RAND_bytes(nonce, sizeof(nonce)) != 1)
                return -EIO;
        out = malloc(pt_size + 16);
        if (!out)
                return -ENOMEM;
        out_size = pt_size + 16;
        VAULT_RUN(v, s, rv, gcm_encrypt(v, s, &mech, h, pt, pt_size, out, &out_size));
        if (rv != CKR_OK)
                return vault_rv_to_errno(rv);
        if (out_size != pt_size + 16)
                return -EIO;
        memcpy(iv, nonce, sizeof(nonce));
        memcpy(ret_ct, out, pt_size);
        memcpy(tag, out + pt_size, 16);
        return 0;
}

static CK_RV gcm_decrypt(Vault *v, CK_SESSION_HANDLE s, CK_MECHANISM *mech, CK_OBJECT_HANDLE h,
                         const uint8_t *in, size_t in_size, uint8_t *out, CK_ULONG *out_size) {
        CK_RV rv = v->module->C_DecryptInit(s, mech, h);
        if (rv != CKR_OK)
                return rv;
        return v->module->C_Decrypt(s, (CK_BYTE *) in, in_size, out, out_size);
}

int vault_gcm_decrypt(Vault *v, CK_OBJECT_HANDLE h, const void *aad, size_t aad_size,
                      const uint8_t iv[12], const void *ct, size_t ct_size, const uint8_t tag[16],
                      void **ret_pt) {
        CK_GCM_PARAMS p = {
                .pIv = (CK_BYTE *) iv, .ulIvLen = 12, .ulIvBits = 96,
                .pAAD = (CK_BYTE *) aad, .ulAADLen = aad_size, .ulTagBits = 128,
        };
        CK_MECHANISM mech = { CKM_AES_GCM, &p, sizeof(p) };
        _cleanup_free_ uint8_t *in = NULL;
        _cleanup_secure_ uint8_t *out = NULL;
        CK_ULONG out_size;
        CK_SESSION_HANDLE s;
        CK_RV rv;

        in = malloc(ct_size + 16);
        out = cmek_secure_alloc(ct_size + 16);
        if (!in || !out)
                return -ENOMEM;
        memcpy(in, ct, ct_size);
        memcpy(in + ct_size, tag, 16);
        out_size = ct_size + 16;
        VAULT_RUN(v, s, rv, gcm_decrypt(v, s, &mech, h, in, ct_size + 16, out, &out_size));
        if (rv == CKR_GENERAL_ERROR || rv == CKR_DATA_INVALID || rv == CKR_DATA_LEN_RANGE)
                return -EBADMSG;        /* SoftHSM2 reports a tag mismatch in several ways */
        if (rv != CKR_OK)
                return vault_rv_to_errno(rv);
        if (out_size != ct_size)
                return -EBADMSG;
        *ret_pt = TAKE_PTR(out);
        return 0;
}

/* The handle comes from the cache and may be stale (the object gone, or its handle given to
 * another object by the token: GCM's tag catches that). When the operation fails for another
 * reason than a refusal of the key, the cache is forgotten and the label looked up once more. */
static bool stale_handle_possible(int r, unsigned attempt) {
        return r < 0 && r != -EKEYREVOKED && r != -ENOMEM && attempt == 0;
}

int vault_secret_get_flags_by_label(Vault *v, const char *label, VaultKeyFlags *ret) {
        CK_OBJECT_HANDLE h;
        int r;

        for (unsigned attempt = 0;; attempt++) {
                r = secret_find_cached(v, label, &h);
                if (r < 0)
                        return r;
                r = vault_secret_get_flags(v, h, ret);
                if (!stale_handle_possible(r, attempt))
                        return r;
                vault_handles_forget(v);
        }
}

int vault_gcm_decrypt_by_label(Vault *v, const char *label, const void *aad, size_t aad_size,
                               const uint8_t iv[12], const void *ct, size_t ct_size, const uint8_t tag[16],
                               void **ret_pt) {
        CK_OBJECT_HANDLE h;
        int r;

        for (unsigned attempt = 0;; attempt++) {
                r = secret_find_cached(v, label, &h);
                if (r < 0)
                        return r;
                r = vault_gcm_decrypt(v, h, aad, aad_size, iv, ct, ct_size, tag, ret_pt);
                if (!stale_handle_possible(r, attempt))
                        return r;
                vault_handles_forget(v);
        }
}

/* --- HMAC keys (the audit log's checkpoints) --- */

int vault_hmac_key_generate(Vault *v, const char *label, CK_OBJECT_HANDLE *ret) {
        CK_OBJECT_CLASS cls = CKO_SECRET_KEY;
        CK_KEY_TYPE type = CKK_GENERIC_SECRET;
        CK_BBOOL yes = CK_TRUE, no = CK_FALSE;
        CK_ULONG len = 32;
        /* non-extractable, sensitive, sign/verify only: the key never leaves the token */
        CK_ATTRIBUTE tmpl[] = {
                { CKA_CLASS, &cls, sizeof(cls) },
                { CKA_KEY_TYPE, &type, sizeof(type) },
                { CKA_TOKEN, &yes, sizeof(yes) },
                { CKA_PRIVATE, &yes, sizeof(yes) },
                { CKA_SENSITIVE, &yes, sizeof(yes) },
                { CKA_EXTRACTABLE, &no, sizeof(no) },
                { CKA_SIGN, &yes, sizeof(yes) },
                { CKA_VERIFY, &yes, sizeof(yes) },
                { CKA_ENCRYPT, &no, sizeof(no) },
                { CKA_DECRYPT, &no, sizeof(no) },
                { CKA_WRAP, &no, sizeof(no) },
                { CKA_UNWRAP, &no, sizeof(no) },
                { CKA_DERIVE, &no, sizeof(no) },
                { CKA_LABEL, (void *) label, strlen(label) },
                { CKA_VALUE_LEN, &len, sizeof(len) },
        };
        CK_MECHANISM mech = { CKM_GENERIC_SECRET_KEY_GEN, NULL, 0 };
        CK_SESSION_HANDLE s;
        CK_RV rv;

        VAULT_RUN(v, s, rv, v->module->C_GenerateKey(s, &mech, tmpl, ARRAY_SIZE(tmpl), ret));
        cmek_fault("vault-after-generate-hmac-key");
        return vault_rv_to_errno(rv);
}

static CK_RV hmac_sign(Vault *v, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE h, const void *data, size_t n,
                       uint8_t *out, CK_ULONG *out_size) {
        CK_MECHANISM mech = { CKM_SHA256_HMAC, NULL, 0 };
        CK_RV rv = v->module->C_SignInit(s, &mech, h);
        if (rv != CKR_OK)
                return rv;
        return v->module->C_Sign(s, (CK_BYTE *) data, n, out, out_size);
}

int vault_hmac_sha256(Vault *v, CK_OBJECT_HANDLE h, const void *data, size_t n, uint8_t ret[static 32]) {
        uint8_t out[64];
        CK_ULONG out_size = sizeof(out);
        CK_SESSION_HANDLE s;
        CK_RV rv;

        VAULT_RUN(v, s, rv, hmac_sign(v, s, h, data, n, out, &out_size));
        if (rv != CKR_OK)
                return vault_rv_to_errno(rv);
        if (out_size != 32)
                return -EIO;
        memcpy(ret, out, 32);
        return 0;
}

int vault_secret_is_sealed_hmac(Vault *v, CK_OBJECT_HANDLE h) {
        CK_BBOOL sens = 0, ext = 1, never = 0;
        CK_KEY_TYPE type = 0;
        CK_ATTRIBUTE a[] = {
                { CKA_SENSITIVE, &sens, sizeof(sens) },
                { CKA_EXTRACTABLE, &ext, sizeof(ext) },
                { CKA_NEVER_EXTRACTABLE, &never, sizeof(never) },
                { CKA_KEY_TYPE, &type, sizeof(type) },
        };
        CK_SESSION_HANDLE s;
        CK_RV rv;

        VAULT_RUN(v, s, rv, v->module->C_GetAttributeValue(s, h, a, ARRAY_SIZE(a)));
        if (rv != CKR_OK)
                return vault_rv_to_errno(rv);
        return sens && !ext && never && type == CKK_GENERIC_SECRET;
}

/* --- wrapping key and import --- */

static const char *const wrap_algorithms[_VAULT_WRAP_MAX] = {
        [VAULT_WRAP_RSA_OAEP_SHA256] = "RSA_OAEP_SHA256",
        [VAULT_WRAP_RSA_OAEP_AES_SHA256] = "RSA_OAEP_AES_SHA256",
};

const char *vault_wrap_algorithm_to_string(VaultWrapAlgorithm a) {
        return a >= 0 && a < _VAULT_WRAP_MAX ? wrap_algorithms[a] : NULL;
}

VaultWrapAlgorithm vault_wrap_algorithm_from_string(const char *s) {
        return (VaultWrapAlgorithm) cmek_string_table_lookup(wrap_algorithms, _VAULT_WRAP_MAX, s);
}

static CK_RV generate_wrapping_key(Vault *v, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE *ret_pub) {
        CK_BBOOL yes = CK_TRUE, no = CK_FALSE;
        CK_ULONG bits = VAULT_WRAPPING_KEY_BITS;
        CK_BYTE e[] = { 0x01, 0x00, 0x01 };
        const char *label = VAULT_WRAPPING_KEY_LABEL;
        CK_ATTRIBUTE pub[] = {
                { CKA_TOKEN, &yes, sizeof(yes) },
                { CKA_PRIVATE, &no, sizeof(no) },
                { CKA_MODULUS_BITS, &bits, sizeof(bits) },
                { CKA_PUBLIC_EXPONENT, e, sizeof(e) },
                { CKA_ENCRYPT, &yes, sizeof(yes) },
                { CKA_WRAP, &yes, sizeof(yes) },
                { CKA_VERIFY, &no, sizeof(no) },
                { CKA_LABEL, (void *) label, strlen(label) },
        };
        CK_ATTRIBUTE priv[] = {
                { CKA_TOKEN, &yes, sizeof(yes) },
                { CKA_PRIVATE, &yes, sizeof(yes) },
                { CKA_SENSITIVE, &yes, sizeof(yes) },
                { CKA_EXTRACTABLE, &no, sizeof(no) },
                { CKA_UNWRAP, &yes, sizeof(yes) },
                /* needed for the raw RSA fallback of unwrap_oaep() (SoftHSM2 2.6 does OAEP
                 * only with SHA-1); this key exists only to receive imports */
                { CKA_DECRYPT, &yes, sizeof(yes) },
                { CKA_SIGN, &no, sizeof(no) },
                { CKA_LABEL, (void *) label, strlen(label) },
        };
        CK_MECHANISM mech = { CKM_RSA_PKCS_KEY_PAIR_GEN, NULL, 0 };
        CK_OBJECT_HANDLE hpriv;

        return v->module->C_GenerateKeyPair(s, &mech, pub, ARRAY_SIZE(pub), priv, ARRAY_SIZE(priv), ret_pub, &hpriv);
}

static int rsa_pem(const uint8_t *n, size_t n_size, const uint8_t *e, size_t e_size, char **ret) {
        OSSL_PARAM_BLD *bld = NULL;
        OSSL_PARAM *params = NULL;
        EVP_PKEY_CTX *ctx = NULL;
        EVP_PKEY *pkey = NULL;
        BIGNUM *bn = NULL, *be = NULL;
        BIO *bio = NULL;
        char *data;
        long len;
        int r = -EIO;

        bn = BN_bin2bn(n, (int) n_size, NULL);
        be = BN_bin2bn(e, (int) e_size, NULL);
        bld = OSSL_PARAM_BLD_new();
        if (!bn || !be || !bld ||
            !OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_N, bn) ||
            !OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_E, be) ||
            !(params = OSSL_PARAM_BLD_to_param(bld)))
                goto out;
        ctx = EVP_PKEY_CTX_new_from_name(NULL, "RSA", NULL);
        if (!ctx || EVP_PKEY_fromdata_init(ctx) <= 0 ||
            EVP_PKEY_fromdata(ctx, &pkey, EVP_PKEY_PUBLIC_KEY, params) <= 0)
                goto out;
        bio = BIO_new(BIO_s_mem());
        if (!bio || PEM_write_bio_PUBKEY(bio, pkey) != 1)
                goto out;
        len = BIO_get_mem_data(bio, &data);
        *ret = strndup(data, (size_t) len);
        r = *ret ? 0 : -ENOMEM;
out:
        BIO_free(bio);
        EVP_PKEY_free(pkey);
        EVP_PKEY_CTX_free(ctx);
        OSSL_PARAM_free(params);
        OSSL_PARAM_BLD_free(bld);
        BN_free(bn);
        BN_free(be);
        return r;
}

int vault_wrapping_key_pem(Vault *v, bool create, char **ret_pem) {
        _cleanup_free_ char *n = NULL, *e = NULL;
        size_t n_size, e_size;
        CK_OBJECT_HANDLE pub;
        CK_SESSION_HANDLE s;
        CK_RV rv;

        VAULT_RUN(v, s, rv, find_one(v, s, CKO_PUBLIC_KEY, VAULT_WRAPPING_KEY_LABEL, &pub));
        if (rv == CKR_OBJECT_HANDLE_INVALID) {
                if (!create)
                        return -ENOENT;
                log_info("Generating the RSA-%u wrapping key of vault '%s'.", VAULT_WRAPPING_KEY_BITS, v->name);
                VAULT_RUN(v, s, rv, generate_wrapping_key(v, s, &pub));
        }
        if (rv != CKR_OK)
                return vault_rv_to_errno(rv);
        VAULT_RUN(v, s, rv, get_attr(v, s, pub, CKA_MODULUS, &n, &n_size));
        if (rv == CKR_OK)
                VAULT_RUN(v, s, rv, get_attr(v, s, pub, CKA_PUBLIC_EXPONENT, &e, &e_size));
        if (rv != CKR_OK)
                return vault_rv_to_errno(rv);
        return rsa_pem((uint8_t *) n, n_size, (uint8_t *) e, e_size, ret_pem);
}

typedef struct ImportArgs {
        VaultWrapAlgorithm alg;
        const uint8_t *blob;
        size_t blob_size;
        const char *label, *id;
        CK_OBJECT_HANDLE result;
        CK_ULONG value_len;
} ImportArgs;

/* RSA-OAEP(SHA-256, MGF1-SHA-256) unwrap of block (mod_size bytes) into a new key object.
 * Tokens that cannot do OAEP with SHA-256 (SoftHSM2 2.6 knows only SHA-1) get a raw RSA
 * decryption in the token and the OAEP decoding here, in locked memory; the key then enters
 * the token with C_CreateObject and is wiped at once. */
static CK_RV unwrap_oaep(Vault *v, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE rsa, const uint8_t *block, size_t mod_size,
                         const CK_ATTRIBUTE *tmpl, size_t n_tmpl, CK_OBJECT_HANDLE *ret) {
        CK_RSA_PKCS_OAEP_PARAMS oaep = {
                .hashAlg = CKM_SHA256, .mgf = CKG_MGF1_SHA256, .source = CKZ_DATA_SPECIFIED,
        };
        CK_MECHANISM m_oaep = { CKM_RSA_PKCS_OAEP, &oaep, sizeof(oaep) };
        CK_MECHANISM m_raw = { CKM_RSA_X_509, NULL, 0 };
        CK_ATTRIBUTE t[24];
        CK_ULONG raw_size = mod_size;
        uint8_t *raw = NULL, *key = NULL;
        int key_size;
        CK_RV rv;

        rv = v->module->C_UnwrapKey(s, &m_oaep, rsa, (CK_BYTE *) block, mod_size, (CK_ATTRIBUTE *) tmpl, n_tmpl, ret);
        if (rv != CKR_ARGUMENTS_BAD && rv != CKR_MECHANISM_PARAM_INVALID && rv != CKR_MECHANISM_INVALID)
                return rv;

        if (n_tmpl + 1 > ARRAY_SIZE(t))
                return CKR_GENERAL_ERROR;
        raw = cmek_secure_alloc(mod_size);
        key = cmek_secure_alloc(mod_size);
        if (!raw || !key) {
                rv = CKR_HOST_MEMORY;
                goto out;
        }
        rv = v->module->C_DecryptInit(s, &m_raw, rsa);
        if (rv == CKR_OK)
                rv = v->module->C_Decrypt(s, (CK_BYTE *) block, mod_size, raw, &raw_size);
        if (rv != CKR_OK)
                goto out;
        key_size = RSA_padding_check_PKCS1_OAEP_mgf1(key, (int) mod_size, raw, (int) raw_size, (int) mod_size,
                                                     NULL, 0, EVP_sha256(), EVP_sha256());
        if (key_size <= 0) {
                rv = CKR_WRAPPED_KEY_INVALID;
                goto out;
        }
        if (!valid_aes_len((unsigned long) key_size)) {
                rv = CKR_WRAPPED_KEY_LEN_RANGE;
                goto out;
        }
        memcpy(t, tmpl, n_tmpl * sizeof(CK_ATTRIBUTE));
        t[n_tmpl] = (CK_ATTRIBUTE) { CKA_VALUE, key, (CK_ULONG) key_size };
        rv = v->module->C_CreateObject(s, t, n_tmpl + 1, ret);
        cmek_fault("vault-after-import-object");
out:
        cmek_secure_free(raw);
        cmek_secure_free(key);
        return rv;
}

static CK_RV import_key(Vault *v, CK_SESSION_HANDLE s, ImportArgs *a) {
        CK_OBJECT_CLASS cls = CKO_SECRET_KEY, priv_cls = CKO_PRIVATE_KEY;
        CK_KEY_TYPE type = CKK_AES;
        CK_BBOOL yes = CK_TRUE, no = CK_FALSE;
        CK_ULONG kwp_len = 0;
        CK_ATTRIBUTE final[] = { MASTER_KEY_TEMPLATE(cls, type, yes, no, a->label, a->id) };
        CK_ATTRIBUTE tmp[] = {
                { CKA_CLASS, &cls, sizeof(cls) },
                { CKA_KEY_TYPE, &type, sizeof(type) },
                { CKA_TOKEN, &no, sizeof(no) },
                { CKA_PRIVATE, &yes, sizeof(yes) },
                { CKA_SENSITIVE, &yes, sizeof(yes) },
                { CKA_EXTRACTABLE, &no, sizeof(no) },
                { CKA_UNWRAP, &yes, sizeof(yes) },
                { CKA_ENCRYPT, &no, sizeof(no) },
                { CKA_DECRYPT, &no, sizeof(no) },
        };
        CK_MECHANISM m_kwp = { CKM_AES_KEY_WRAP_PAD, NULL, 0 };
        CK_OBJECT_HANDLE rsa, ephemeral = CK_INVALID_HANDLE, key = CK_INVALID_HANDLE;
        _cleanup_free_ char *mod = NULL;
        size_t mod_size;
        CK_ULONG len = 0;
        CK_ATTRIBUTE la = { CKA_VALUE_LEN, &len, sizeof(len) };
        CK_RV rv;

        rv = find_one(v, s, priv_cls, VAULT_WRAPPING_KEY_LABEL, &rsa);
        if (rv != CKR_OK)
                return rv;
        {
                CK_OBJECT_HANDLE pub;
                rv = find_one(v, s, CKO_PUBLIC_KEY, VAULT_WRAPPING_KEY_LABEL, &pub);
                if (rv == CKR_OK)
                        rv = get_attr(v, s, pub, CKA_MODULUS, &mod, &mod_size);
                if (rv != CKR_OK)
                        return rv;
        }

        if (a->alg == VAULT_WRAP_RSA_OAEP_SHA256) {
                if (a->blob_size != mod_size)
                        return CKR_WRAPPED_KEY_LEN_RANGE;
                rv = unwrap_oaep(v, s, rsa, a->blob, mod_size, final, ARRAY_SIZE(final), &key);
        } else {
                /* RFC 5649 output for a 16/24/32-byte key is 24/32/40 bytes */
                size_t kwp = a->blob_size > mod_size ? a->blob_size - mod_size : 0;
                if (kwp != 24 && kwp != 32 && kwp != 40)
                        return CKR_WRAPPED_KEY_LEN_RANGE;
                kwp_len = kwp - 8;
                rv = unwrap_oaep(v, s, rsa, a->blob, mod_size, tmp, ARRAY_SIZE(tmp), &ephemeral);
                if (rv != CKR_OK)
                        return rv;
                rv = v->module->C_UnwrapKey(s, &m_kwp, ephemeral, (CK_BYTE *) a->blob + mod_size, kwp,
                                            final, ARRAY_SIZE(final), &key);
                CK_RV rv2 = v->module->C_DestroyObject(s, ephemeral);
                if (rv2 != CKR_OK)
                        log_debug("Failed to destroy the ephemeral import key: %s", p11_kit_strerror(rv2));
        }
        if (rv != CKR_OK)
                return rv;

        rv = v->module->C_GetAttributeValue(s, key, &la, 1);
        /* SoftHSM2 leaves CKA_VALUE_LEN 0 on keys unwrapped with CKM_AES_KEY_WRAP_PAD (and refuses
         * it in the unwrap template): the KWP length gives it, the trial encryption checks it */
        if (rv == CKR_OK && len == 0)
                len = kwp_len;
        if (rv == CKR_OK && valid_aes_len(len)) {
                /* the declared length must be the real one: an AES key of another size fails here */
                uint8_t iv[12] = {}, buf[16] = {}, out[32];
                CK_GCM_PARAMS p = { .pIv = iv, .ulIvLen = 12, .ulIvBits = 96, .ulTagBits = 128 };
                CK_MECHANISM m = { CKM_AES_GCM, &p, sizeof(p) };
                CK_ULONG out_len = sizeof(out);
                rv = v->module->C_EncryptInit(s, &m, key);
                if (rv == CKR_OK)
                        rv = v->module->C_Encrypt(s, buf, sizeof(buf), out, &out_len);
                if (rv != CKR_OK)
                        rv = CKR_WRAPPED_KEY_LEN_RANGE;
        }
        if (rv != CKR_OK || !valid_aes_len(len)) {
                (void) v->module->C_DestroyObject(s, key);
                return rv != CKR_OK ? rv : CKR_WRAPPED_KEY_LEN_RANGE;
        }
        a->result = key;
        a->value_len = len;
        return CKR_OK;
}

int vault_secret_import(Vault *v, VaultWrapAlgorithm alg, const void *blob, size_t blob_size,
                        const char *label, const char *id, CK_OBJECT_HANDLE *ret, unsigned *ret_bytes) {
        ImportArgs a = { .alg = alg, .blob = blob, .blob_size = blob_size, .label = label, .id = id };
        CK_SESSION_HANDLE s;
        CK_RV rv;

        if (alg < 0 || alg >= _VAULT_WRAP_MAX)
                return -EINVAL;
        VAULT_RUN(v, s, rv, import_key(v, s, &a));
        if (rv == CKR_OBJECT_HANDLE_INVALID)
                return -ENOKEY;         /* no wrapping key yet */
        if (rv == CKR_WRAPPED_KEY_LEN_RANGE)
                return -EMSGSIZE;
        if (rv != CKR_OK) {
                log_debug("Import into vault '%s' failed: %s", v->name, p11_kit_strerror(rv));
                int r = vault_rv_to_errno(rv);
                /* any refusal of the blob's content is a bad blob */
                return r == -EIO || r == -EOPNOTSUPP ? -EBADMSG : r;
        }
        *ret = a.result;
        *ret_bytes = (unsigned) a.value_len;
        return 0;
}
