/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* The audit log's anchor in the token: checkpoint lines carrying an HMAC made inside the default
 * vault, and the latest checkpoint's seq and hash kept in a token data object (docs/audit.md). */
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>

#include "cmek-audit.h"
#include "daemon.h"
#include "cmek-varlink.h"
#include "key.h"

/* A checkpoint at most this often, only when lines were appended since the last one; never on
 * the request path: a key use costs no token operation more than before. A checkpoint costs an
 * HMAC in the token (~0.2 ms with SoftHSM2) and an fdatasync() of the log. */
#define CHECKPOINT_INTERVAL_USEC (1000ULL * 1000ULL)
/* The token's anchor object is rewritten at most this often (and at a clean stop): with
 * SoftHSM2 an object update costs 20-50 ms of file writes on the loop, too much every second.
 * Test-hooks daemons anchor every checkpoint. */
#define ANCHOR_INTERVAL_USEC (10ULL * 1000ULL * 1000ULL)

static struct {
        Vault *vault;
        CK_OBJECT_HANDLE key;
        bool have_key;
        CK_OBJECT_HANDLE anchor;
        bool have_anchor;
        uint64_t anchor_seq;            /* what the token says: the latest durable checkpoint */
        char anchor_hash[65];
        uint64_t cp_seq;                /* the last checkpoint line written */
        char cp_hash[65];
        bool anchor_pending;            /* cp_seq is newer than the anchor */
        uint64_t anchor_usec;           /* last anchor update (monotonic) */
        uint64_t anchor_interval;
        char *unavailable;              /* why there is no anchoring (NULL: anchored) */
        sd_event_source *timer;
} A;

static void set_unavailable(const char *fmt, ...) _printf_(1, 2);
static void set_unavailable(const char *fmt, ...) {
        va_list ap;
        free(A.unavailable);
        va_start(ap, fmt);
        if (vasprintf(&A.unavailable, fmt, ap) < 0)
                A.unavailable = NULL;
        va_end(ap);
        log_warning("Audit log checkpoints: %s", strempty(A.unavailable));
}

/* HMAC-SHA256 over "cmekd-audit-checkpoint\n<seq>\n<prev>": the checkpoint line's own seq and
 * the hash of the line before it, which commits to every line before. */
static int checkpoint_mac(uint64_t seq, const char *prev, char ret[static 65]) {
        static const char hex[] = "0123456789abcdef";
        char msg[128];
        uint8_t mac[32];
        int n, r;

        n = snprintf(msg, sizeof(msg), "cmekd-audit-checkpoint\n%" PRIu64 "\n%s", seq, prev);
        if (n < 0 || (size_t) n >= sizeof(msg))
                return -EINVAL;
        r = vault_hmac_sha256(A.vault, A.key, msg, (size_t) n, mac);
        if (r < 0)
                return r;
        for (size_t i = 0; i < 32; i++) {
                ret[2 * i] = hex[mac[i] >> 4];
                ret[2 * i + 1] = hex[mac[i] & 15];
        }
        ret[64] = 0;
        return 0;
}

static int anchor_load(void) {
        VaultData *d = NULL;
        size_t n = 0;
        int r;

        r = vault_data_find(A.vault, VAULT_AUDIT_ANCHOR_LABEL, &d, &n);
        if (r < 0)
                return r;
        A.have_anchor = false;
        for (size_t i = 0; i < n; i++) {
                json_object *o = json_tokener_parse(d[i].value);
                int64_t seq = 0;
                const char *h = o ? cmek_json_get_string(o, "hash") : NULL;

                /* seq 0: created before the key, nothing anchored yet */
                if (o && cmek_json_get_int64(o, "seq", &seq) && seq >= 0 && h && strlen(h) == 64 &&
                    (!A.have_anchor || (uint64_t) seq > A.anchor_seq)) {
                        A.have_anchor = true;
                        A.anchor = d[i].handle;
                        A.anchor_seq = (uint64_t) seq;
                        memcpy(A.anchor_hash, h, 65);
                }
                json_object_put(o);
        }
        vault_data_array_free(d, n);
        return 0;
}

static int anchor_store(uint64_t seq, const char *hash) {
        char value[160];
        CK_OBJECT_HANDLE old = A.anchor, h;
        int r;

        (void) snprintf(value, sizeof(value), "{\"seq\":%" PRIu64 ",\"hash\":\"%s\"}", seq, hash);
        if (A.have_anchor) {
                r = vault_data_update(A.vault, A.anchor, value);
                if (r != -EOPNOTSUPP)
                        goto done;
        }
        /* first anchor, or a token that does not let CKA_VALUE change: a new object, then the
         * old one goes (anchor_load() takes the highest seq if both survive a crash) */
        r = vault_data_create(A.vault, VAULT_AUDIT_ANCHOR_LABEL, value, &h);
        if (r >= 0) {
                if (A.have_anchor)
                        (void) vault_object_destroy(A.vault, old);
                A.anchor = h;
                A.have_anchor = true;
        }
done:
        if (r < 0)
                return log_warning_errno(r, "Failed to store the audit anchor (checkpoint seq %" PRIu64 ") in the token: %m", seq);
        A.anchor_seq = seq;
        memcpy(A.anchor_hash, hash, 65);
        return 0;
}

static int anchor_update(bool force) {
        int r;

        if (!A.anchor_pending || (!force && cmek_monotonic_usec() - A.anchor_usec < A.anchor_interval))
                return 0;
        r = anchor_store(A.cp_seq, A.cp_hash);
        if (r < 0)
                return r;
        A.anchor_pending = false;
        A.anchor_usec = cmek_monotonic_usec();
        return 0;
}

static int checkpoint(Manager *m, bool force_anchor) {
        char mac[65], prev[65], detail[96];
        uint64_t cur, seq, t0 = cmek_monotonic_usec();
        int r;

        if (!A.have_key || !m->audit || m->audit_error)
                return 0;
        cur = cmek_audit_get_seq(m->audit);
        if (cur == A.cp_seq)
                return anchor_update(force_anchor);     /* nothing new since the last checkpoint */
        seq = cur + 1;
        memcpy(prev, cmek_audit_get_hash(m->audit), 65);
        r = checkpoint_mac(seq, prev, mac);
        if (r < 0)
                return log_warning_errno(r, "Failed to compute the audit checkpoint HMAC in vault '%s', will retry: %m",
                                         vault_name(A.vault));
        uint64_t t1 = cmek_monotonic_usec();
        (void) snprintf(detail, sizeof(detail), "lines 1-%" PRIu64 " anchored in the token", cur);
        r = cmek_audit_append(m->audit, &(CmekAuditEntry) {
                        .event = "audit.checkpoint", .operation = "checkpoint", .result = "ok",
                        .detail = detail, .mac = mac,
                }, cmek_now_usec());
        if (r >= 0)
                r = cmek_audit_sync(m->audit);
        if (r < 0) {
                manager_audit_failed(m, r);
                return r;
        }
        A.cp_seq = seq;
        memcpy(A.cp_hash, cmek_audit_get_hash(m->audit), 65);
        A.anchor_pending = true;
        uint64_t t2 = cmek_monotonic_usec();
        /* only once the checkpoint is on disk: a crash must never leave the token ahead */
        r = anchor_update(force_anchor);
        log_debug("Audit checkpoint at seq %" PRIu64 ": HMAC %" PRIu64 " us, append+fdatasync %" PRIu64
                  " us, anchor update %" PRIu64 " us%s.", seq, t1 - t0, t2 - t1, cmek_monotonic_usec() - t2,
                  A.anchor_pending ? " (deferred)" : "");
        return r;
}

int audit_anchor_checkpoint(Manager *m) {
        return checkpoint(m, false);
}

static int on_checkpoint_timer(sd_event_source *s, uint64_t usec, void *userdata) {
        (void) checkpoint(userdata, false);
        (void) sd_event_source_set_time(s, usec + CHECKPOINT_INTERVAL_USEC);
        (void) sd_event_source_set_enabled(s, SD_EVENT_ON);
        return 0;
}

static void discontinuity(Manager *m, const char *detail) {
        log_error("Audit log: %s", detail);
        (void) cmek_audit_append(m->audit, &(CmekAuditEntry) {
                        .event = "audit.discontinuity", .operation = "start", .result = CMEK_ERROR_AUDIT_BROKEN,
                        .detail = detail,
                }, cmek_now_usec());
}

int audit_anchor_init(Manager *m) {
        _cleanup_free_ char *detail = NULL;
        const char *why;
        bool key_found;
        uint64_t cur;
        int r;

        if (!m->audit)
                return 0;
        A.anchor_interval = ENABLE_TEST_HOOKS && m->test_hooks ? 0 : ANCHOR_INTERVAL_USEC;
        A.vault = vault_set_find(keys_vaults(m), VAULT_DEFAULT_NAME);
        if (!A.vault || (why = vault_unavailable_reason(A.vault))) {
                set_unavailable("the default vault is unavailable (%s): the log is only hash-chained",
                                A.vault ? why : "not configured");
                return 0;
        }
        r = vault_secret_find(A.vault, VAULT_AUDIT_HMAC_LABEL, &A.key);
        if (r < 0 && r != -ENOENT) {
                set_unavailable("cannot look up the HMAC key in the default vault: %s", strerror(-r));
                return 0;
        }
        key_found = r >= 0;
        if (key_found && vault_secret_is_sealed_hmac(A.vault, A.key) <= 0) {
                set_unavailable("the token object '%s' is not a sensitive, never-extractable HMAC key: not used",
                                VAULT_AUDIT_HMAC_LABEL);
                return 0;
        }
        r = anchor_load();
        if (r < 0) {
                set_unavailable("cannot read the anchor object from the default vault: %s", strerror(-r));
                return 0;
        }

        /* after a cut or a replaced log, the chain must not continue as if nothing happened */
        cur = cmek_audit_get_seq(m->audit);
        if (A.have_anchor && cur < A.anchor_seq)
                r = asprintf(&detail, "tail cut: the log ends at seq %" PRIu64 " but the token's anchor is checkpoint seq %"
                             PRIu64 " (lines %" PRIu64 "-%" PRIu64 " or more are gone); continuing from seq %" PRIu64,
                             cur, A.anchor_seq, cur + 1, A.anchor_seq, cur + 1);
        else if (A.have_anchor && cur == A.anchor_seq && !streq(cmek_audit_get_hash(m->audit), A.anchor_hash))
                r = asprintf(&detail, "the last line (seq %" PRIu64 ") is not the checkpoint the token anchors (hash %s): "
                             "the log was replaced or recomputed", cur, A.anchor_hash);
        else if (key_found && !A.have_anchor)
                r = asprintf(&detail, "the token holds the audit HMAC key but no anchor object '%s': it was removed, "
                             "a cut tail before now cannot be detected", VAULT_AUDIT_ANCHOR_LABEL);
        else if (!key_found && A.have_anchor && A.anchor_seq > 0)
                r = asprintf(&detail, "the token holds an anchor (checkpoint seq %" PRIu64 ") but no HMAC key '%s': "
                             "checkpoints before now cannot be checked", A.anchor_seq, VAULT_AUDIT_HMAC_LABEL);
        if (r < 0)
                return -ENOMEM;
        if (detail)
                discontinuity(m, detail);

        if (!key_found) {
                /* the anchor object first: a key without an anchor then always means the anchor
                 * was removed, never a crash between the two */
                if (!A.have_anchor && anchor_store(cur, cmek_audit_get_hash(m->audit)) < 0) {
                        set_unavailable("cannot create the anchor object in the default vault");
                        return 0;
                }
                r = vault_hmac_key_generate(A.vault, VAULT_AUDIT_HMAC_LABEL, &A.key);
                if (r < 0) {
                        set_unavailable("cannot create the HMAC key in the default vault: %s", strerror(-r));
                        return 0;
                }
                log_info("Created the audit log's HMAC key '%s' in vault '%s'.", VAULT_AUDIT_HMAC_LABEL, vault_name(A.vault));
        }
        A.have_key = true;
        /* a log that ends with the anchored checkpoint (a clean stop) needs no new one */
        if (A.have_anchor && cur == A.anchor_seq && streq(cmek_audit_get_hash(m->audit), A.anchor_hash)) {
                A.cp_seq = cur;
                memcpy(A.cp_hash, A.anchor_hash, 65);
        }
        (void) checkpoint(m, true);
        return sd_event_add_time_relative(m->event, &A.timer, CLOCK_MONOTONIC, CHECKPOINT_INTERVAL_USEC, 100000,
                                          on_checkpoint_timer, m);
}

void audit_anchor_done(Manager *m) {
        /* a clean stop anchors everything up to daemon.stopped */
        (void) checkpoint(m, true);
        A.timer = sd_event_source_disable_unref(A.timer);
        free(A.unavailable);
        A.unavailable = NULL;
        A.have_key = A.have_anchor = false;
        A.cp_seq = 0;
        A.anchor_pending = false;
}

uint64_t audit_anchor_seq(void) {
        return A.have_key && A.have_anchor ? A.anchor_seq : 0;
}

bool audit_anchor_get(uint64_t *ret_seq, char ret_hash[static 65]) {
        if (!A.have_key || !A.have_anchor)
                return false;
        *ret_seq = A.anchor_seq;
        memcpy(ret_hash, A.anchor_hash, 65);
        return true;
}

/* The token's verdict on a chain that verified: NULL when the anchor (as it was when the verify
 * started: the file only grows meanwhile) and the checkpoints agree, else why not.
 * *ret_checked: whether the token was consulted at all. */
char *audit_anchor_judge(Manager *m, const CmekAuditVerifyInfo *info, bool have_anchor, uint64_t anchor_seq,
                         const char *anchor_hash, bool *ret_checked) {
        char mac[65];
        char *reason = NULL;
        int r;

        *ret_checked = false;
        if (!A.have_key)
                return NULL;
        *ret_checked = true;
        if (have_anchor && info->last_seq < anchor_seq) {
                if (info->last_checkpoint.seq > 0)
                        r = asprintf(&reason, "tail cut after checkpoint %" PRIu64 ": the log ends at line %" PRIu64
                                     ", the token's anchor is checkpoint %" PRIu64, info->last_checkpoint.seq,
                                     info->last_seq, anchor_seq);
                else
                        r = asprintf(&reason, "tail cut before any checkpoint: the log ends at line %" PRIu64
                                     ", the token's anchor is checkpoint %" PRIu64, info->last_seq, anchor_seq);
                return r < 0 ? NULL : reason;
        }
        /* the anchored line's hash is what the token holds (a checkpoint, or at first start the
         * last line before the key existed): with the chain intact, a match proves every line
         * up to it */
        /* anchor seq 0: the key was made on an empty log and no checkpoint reached the token yet
         * (e.g. the token could not sign while its disk was full): there is no line to compare */
        if (have_anchor && anchor_seq > 0 &&
            (info->wanted.seq != anchor_seq || !streq(info->wanted.hash, anchor_hash))) {
                if (info->wanted.checkpoint && checkpoint_mac(info->wanted.seq, info->wanted.prev, mac) >= 0 &&
                    !streq(mac, info->wanted.mac))
                        r = asprintf(&reason, "chain recomputed (checkpoint HMAC mismatch at line %" PRIu64 ", the token's anchor)",
                                     anchor_seq);
                else
                        r = asprintf(&reason, "line %" PRIu64 " is not the line the token anchors (replaced or recomputed)",
                                     anchor_seq);
                return r < 0 ? NULL : reason;
        }
        if (info->last_checkpoint.seq > 0) {
                r = checkpoint_mac(info->last_checkpoint.seq, info->last_checkpoint.prev, mac);
                if (r < 0) {
                        r = asprintf(&reason, "cannot check the checkpoint HMAC in the token: %s", strerror(-r));
                        return r < 0 ? NULL : reason;
                }
                if (!streq(mac, info->last_checkpoint.mac)) {
                        r = asprintf(&reason, "chain recomputed (checkpoint HMAC mismatch at line %" PRIu64 ")",
                                     info->last_checkpoint.seq);
                        return r < 0 ? NULL : reason;
                }
        }
        if (info->discontinuity_seq > 0) {
                r = asprintf(&reason, "line %" PRIu64 " records a discontinuity: %s", info->discontinuity_seq,
                             strempty(info->discontinuity));
                return r < 0 ? NULL : reason;
        }
        (void) m;
        return NULL;
}

const char *audit_anchor_unavailable(void) {
        return A.unavailable;
}
