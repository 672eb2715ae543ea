/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* The "cmek" LUKS2 token JSON: build, strict parse, AAD. No secrets pass through here. */
#include <stdio.h>
#include <time.h>
#include <json-c/json.h>

#include "cmek-base64.h"
#include "cmek-token.h"
#include "cmek-util.h"
#include "cmek-varlink.h"

void cmek_token_done(CmekToken *t) {
        if (!t)
                return;
        free(t->key_id);
        free(t->vault);
        free(t->created);
        *t = (CmekToken) CMEK_TOKEN_NULL;
}

bool cmek_token_name_is_valid(const char *s) {
        size_t n;

        if (!s)
                return false;
        n = strlen(s);
        if (n == 0 || n > CMEK_TOKEN_ID_MAX)
                return false;
        for (const char *p = s; *p; p++)
                if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
                      strchr("._:@-", *p)))
                        return false;
        return true;
}

static json_object *b64_encode(const uint8_t *p, size_t size) {
        char buf[128];

        if (cmek_base64_encoded_size(size) + 1 > sizeof(buf))
                return NULL;
        cmek_base64_encode_to(buf, p, size);
        return json_object_new_string(buf);
}

/* "0".."31" without leading zeros or signs. */
static int parse_keyslot(json_object *o) {
        const char *s;
        size_t n;

        if (!json_object_is_type(o, json_type_string))
                return -EINVAL;
        s = json_object_get_string(o);
        n = strlen(s);
        if (n == 0 || n > 2 || (n == 2 && s[0] == '0'))
                return -EINVAL;
        for (size_t i = 0; i < n; i++)
                if (s[i] < '0' || s[i] > '9')
                        return -EINVAL;
        int v = atoi(s);
        return v < CMEK_LUKS2_KEYSLOTS_MAX ? v : -EINVAL;
}

static bool iso_time_is_valid(const char *s) {
        struct tm tm = {};
        const char *e;

        if (strlen(s) != 20)
                return false;
        e = strptime(s, "%Y-%m-%dT%H:%M:%SZ", &tm);
        return e && *e == 0;
}

#define FAIL(reason) do { why = (reason); r = -EINVAL; goto out; } while (0)
#define OOM() do { why = "out of memory"; r = -ENOMEM; goto out; } while (0)

int cmek_token_parse(const char *json, CmekToken *ret, const char **ret_reason) {
        json_tokener *tok = NULL;
        json_object *o = NULL;
        const char *why = NULL;
        int r;

        if (!json)
                FAIL("no JSON");
        if (strlen(json) > 64 * 1024)
                FAIL("token JSON too large");
        tok = json_tokener_new_ex(8);
        if (!tok)
                OOM();
        json_tokener_set_flags(tok, JSON_TOKENER_STRICT);
        o = json_tokener_parse_ex(tok, json, (int) strlen(json));
        if (!o || json_tokener_get_error(tok) != json_tokener_success ||
            json_tokener_get_parse_end(tok) != strlen(json))
                FAIL("not valid JSON");
        r = cmek_token_from_json(o, ret, &why);
out:
        json_object_put(o);
        if (tok)
                json_tokener_free(tok);
        if (r < 0 && ret_reason)
                *ret_reason = why;
        return r;
}

int cmek_token_from_json(json_object *o, CmekToken *ret, const char **ret_reason) {
        CmekToken t = CMEK_TOKEN_NULL;
        json_object *v;
        const char *why = NULL, *s;
        int64_t i64;
        int r = 0;
        unsigned seen = 0;
        enum {
                F_TYPE = 1 << 0, F_KEYSLOTS = 1 << 1, F_VERSION = 1 << 2, F_KEY_ID = 1 << 3,
                F_KEY_VERSION = 1 << 4, F_VAULT = 1 << 5, F_ALG = 1 << 6, F_IV = 1 << 7,
                F_CT = 1 << 8, F_TAG = 1 << 9, F_CREATED = 1 << 10,
                F_REQUIRED = (1 << 11) - 1,
        };

        if (!o || !json_object_is_type(o, json_type_object))
                FAIL("not a JSON object");

        /* the type first, so a foreign token says so rather than "unknown field" */
        s = cmek_json_get_string(o, "type");
        if (!s)
                FAIL("\"type\" missing or not a string");
        if (!streq(s, CMEK_TOKEN_TYPE)) {
                why = "not a cmek token";
                r = -EMEDIUMTYPE;
                goto out;
        }
        if (!json_object_object_get_ex(o, "cmek_version", &v) || !json_object_is_type(v, json_type_int))
                FAIL("\"cmek_version\" missing or not an integer");
        i64 = json_object_get_int64(v);
        if (i64 > CMEK_TOKEN_VERSION) {
                why = "cmek_version is newer than this software understands";
                r = -EPROTONOSUPPORT;
                goto out;
        }
        if (i64 < 1)
                FAIL("\"cmek_version\" must be 1");
        t.cmek_version = (unsigned) i64;

        json_object_object_foreach(o, key, val) {
                if (streq(key, "type"))
                        seen |= F_TYPE;
                else if (streq(key, "cmek_version"))
                        seen |= F_VERSION;
                else if (streq(key, "keyslots")) {
                        size_t n;
                        if (!json_object_is_type(val, json_type_array))
                                FAIL("\"keyslots\" is not an array");
                        n = json_object_array_length(val);
                        if (n > 1)
                                FAIL("\"keyslots\" must name at most one keyslot");
                        if (n == 1) {
                                t.keyslot = parse_keyslot(json_object_array_get_idx(val, 0));
                                if (t.keyslot < 0)
                                        FAIL("\"keyslots\" entry is not a keyslot number 0..31");
                        }
                        seen |= F_KEYSLOTS;
                } else if (streq(key, "pending_keyslot")) {
                        t.pending_keyslot = parse_keyslot(val);
                        if (t.pending_keyslot < 0)
                                FAIL("\"pending_keyslot\" is not a keyslot number 0..31");
                } else if (streq(key, "key_id")) {
                        if (!json_object_is_type(val, json_type_string) ||
                            !cmek_token_name_is_valid(json_object_get_string(val)))
                                FAIL("\"key_id\" is not a valid key id");
                        t.key_id = strdup(json_object_get_string(val));
                        if (!t.key_id)
                                OOM();
                        seen |= F_KEY_ID;
                } else if (streq(key, "key_version")) {
                        if (!json_object_is_type(val, json_type_int))
                                FAIL("\"key_version\" is not an integer");
                        i64 = json_object_get_int64(val);
                        if (i64 < 1 || i64 > UINT32_MAX)
                                FAIL("\"key_version\" out of range");
                        t.key_version = (unsigned) i64;
                        seen |= F_KEY_VERSION;
                } else if (streq(key, "vault")) {
                        if (!json_object_is_type(val, json_type_string) ||
                            !cmek_token_name_is_valid(json_object_get_string(val)))
                                FAIL("\"vault\" is not a valid vault name");
                        t.vault = strdup(json_object_get_string(val));
                        if (!t.vault)
                                OOM();
                        seen |= F_VAULT;
                } else if (streq(key, "alg")) {
                        if (!json_object_is_type(val, json_type_string) ||
                            !streq(json_object_get_string(val), CMEK_TOKEN_ALG))
                                FAIL("\"alg\" must be \"" CMEK_TOKEN_ALG "\"");
                        seen |= F_ALG;
                } else if (streq(key, "iv")) {
                        if (!json_object_is_type(val, json_type_string) ||
                            cmek_base64_decode_exact(json_object_get_string(val), t.iv, sizeof(t.iv)) < 0)
                                FAIL("\"iv\" is not base64 of 12 bytes");
                        seen |= F_IV;
                } else if (streq(key, "ciphertext")) {
                        if (!json_object_is_type(val, json_type_string) ||
                            cmek_base64_decode_exact(json_object_get_string(val), t.ciphertext, sizeof(t.ciphertext)) < 0)
                                FAIL("\"ciphertext\" is not base64 of 32 bytes");
                        seen |= F_CT;
                } else if (streq(key, "tag")) {
                        if (!json_object_is_type(val, json_type_string) ||
                            cmek_base64_decode_exact(json_object_get_string(val), t.tag, sizeof(t.tag)) < 0)
                                FAIL("\"tag\" is not base64 of 16 bytes");
                        seen |= F_TAG;
                } else if (streq(key, "created")) {
                        if (!json_object_is_type(val, json_type_string) ||
                            !iso_time_is_valid(json_object_get_string(val)))
                                FAIL("\"created\" is not a time like 2026-01-31T12:00:00Z");
                        t.created = strdup(json_object_get_string(val));
                        if (!t.created)
                                OOM();
                        seen |= F_CREATED;
                } else
                        FAIL("unknown field (cmek_version 1 defines no such field)");
        }
        if ((seen & F_REQUIRED) != F_REQUIRED) {
                static const char *const missing[] = {
                        "\"type\" is missing", "\"keyslots\" is missing", "\"cmek_version\" is missing",
                        "\"key_id\" is missing", "\"key_version\" is missing", "\"vault\" is missing",
                        "\"alg\" is missing", "\"iv\" is missing", "\"ciphertext\" is missing",
                        "\"tag\" is missing", "\"created\" is missing",
                };
                for (size_t i = 0; i < ARRAY_SIZE(missing); i++)
                        if (!(seen & (1U << i)))
                                FAIL(missing[i]);
        }
        if (t.pending_keyslot >= 0 && t.pending_keyslot == t.keyslot)
                FAIL("\"pending_keyslot\" equals the token's keyslot");

out:
        if (r < 0) {
                cmek_token_done(&t);
                if (ret_reason)
                        *ret_reason = why;
                return r;
        }
        if (ret)
                *ret = t;
        else
                cmek_token_done(&t);
        return 0;
}

int cmek_token_validate(const char *json, const char **ret_reason) {
        return cmek_token_parse(json, NULL, ret_reason);
}

static json_object *keyslot_string(int slot) {
        char buf[16];
        (void) snprintf(buf, sizeof(buf), "%d", slot);
        return json_object_new_string(buf);
}

int cmek_token_to_json(const CmekToken *t, char **ret) {
        json_object *o, *slots;
        char *s;

        if (!t || !cmek_token_name_is_valid(t->key_id) || !cmek_token_name_is_valid(t->vault) ||
            t->key_version < 1 || t->keyslot >= CMEK_LUKS2_KEYSLOTS_MAX ||
            t->pending_keyslot >= CMEK_LUKS2_KEYSLOTS_MAX)
                return -EINVAL;
        o = json_object_new_object();
        slots = json_object_new_array();
        if (!o || !slots) {
                json_object_put(o);
                json_object_put(slots);
                return -ENOMEM;
        }
        /* the order of cmek-token(7); LUKS2 itself needs only "type" and "keyslots" */
        json_object_object_add(o, "type", json_object_new_string(CMEK_TOKEN_TYPE));
        if (t->keyslot >= 0)
                json_object_array_add(slots, keyslot_string(t->keyslot));
        json_object_object_add(o, "keyslots", slots);
        json_object_object_add(o, "cmek_version", json_object_new_int(CMEK_TOKEN_VERSION));
        json_object_object_add(o, "key_id", json_object_new_string(t->key_id));
        json_object_object_add(o, "key_version", json_object_new_int64(t->key_version));
        json_object_object_add(o, "vault", json_object_new_string(t->vault));
        json_object_object_add(o, "alg", json_object_new_string(CMEK_TOKEN_ALG));
        json_object_object_add(o, "iv", b64_encode(t->iv, sizeof(t->iv)));
        json_object_object_add(o, "ciphertext", b64_encode(t->ciphertext, sizeof(t->ciphertext)));
        json_object_object_add(o, "tag", b64_encode(t->tag, sizeof(t->tag)));
        if (t->created)
                json_object_object_add(o, "created", json_object_new_string(t->created));
        else {
                char now[32];
                if (cmek_token_now_iso(now) < 0) {
                        json_object_put(o);
                        return -EINVAL;
                }
                json_object_object_add(o, "created", json_object_new_string(now));
        }
        if (t->pending_keyslot >= 0)
                json_object_object_add(o, "pending_keyslot", keyslot_string(t->pending_keyslot));
        s = strdup(json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE));
        json_object_put(o);
        if (!s)
                return -ENOMEM;
        *ret = s;
        return 0;
}

int cmek_token_aad(const char *luks_uuid, int keyslot, const char *key_id, unsigned key_version,
                   uint8_t **ret, size_t *ret_size) {
        char slot[16], ver[16];
        size_t n, lu, lk, ls, lv;
        uint8_t *p, *b;

        if (!luks_uuid || !*luks_uuid || keyslot < 0 || keyslot >= CMEK_LUKS2_KEYSLOTS_MAX ||
            !cmek_token_name_is_valid(key_id) || key_version < 1)
                return -EINVAL;
        (void) snprintf(slot, sizeof(slot), "%d", keyslot);
        (void) snprintf(ver, sizeof(ver), "%u", key_version);
        lu = strlen(luks_uuid), lk = strlen(key_id), ls = strlen(slot), lv = strlen(ver);
        n = sizeof("cmek-v1") + lu + 1 + ls + 1 + lk + 1 + lv;
        b = p = malloc(n);
        if (!b)
                return -ENOMEM;
        memcpy(p, "cmek-v1", sizeof("cmek-v1")), p += sizeof("cmek-v1");
        memcpy(p, luks_uuid, lu + 1), p += lu + 1;
        memcpy(p, slot, ls + 1), p += ls + 1;
        memcpy(p, key_id, lk + 1), p += lk + 1;
        memcpy(p, ver, lv);
        *ret = b;
        *ret_size = n;
        return 0;
}

int cmek_token_now_iso(char ret[static 32]) {
        struct tm tm;
        time_t t = (time_t) (cmek_now_usec() / 1000000ULL);

        if (!gmtime_r(&t, &tm) || strftime(ret, 32, "%Y-%m-%dT%H:%M:%SZ", &tm) == 0)
                return -EINVAL;
        return 0;
}
