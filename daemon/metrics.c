/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* The seeds' metrics: per volume EncryptionKeyStatus and EncryptionKeyType, per key its state
 * and version count, use counters. Served as io.cmek.Metrics.Get and written atomically as a
 * Prometheus text file for node_exporter's textfile collector. */
#include <stdio.h>

#include "cmek-varlink.h"
#include "config.h"
#include "daemon.h"
#include "key.h"
#include "volume.h"

#define METRICS_INTERVAL_USEC (30ULL * USEC_PER_SEC)

/* state of every key once per snapshot: volumes share keys */
static json_object *keys_snapshot(Manager *m) {
        json_object *keys = json_object_new_object();
        Key **a = NULL;
        size_t n = 0;

        if (key_load_all(m, &a, &n) < 0)
                return keys;
        for (size_t i = 0; i < n; i++)
                json_object_object_add(keys, key_get_id(a[i]), key_to_json(m, a[i]));
        key_array_free(a, n);
        return keys;
}

json_object *metrics_snapshot(Manager *m) {
        json_object *o = json_object_new_object(), *vols = json_object_new_array(), *keys, *karr, *c;
        VolumeRegistry *reg = m->volumes;

        keys = keys_snapshot(m);
        for (size_t i = 0; reg && i < reg->n; i++) {
                Volume *v = reg->volumes[i];
                json_object *e = json_object_new_object(), *k = NULL;
                const char *state = NULL;
                bool provider = v->provider_managed;

                if (v->key_id && json_object_object_get_ex(keys, v->key_id, &k)) {
                        state = cmek_json_get_string(k, "state");
                        provider = provider || cmek_json_get_bool(k, "provider_managed", false);
                }
                json_object_object_add(e, "uuid", json_object_new_string(v->uuid));
                json_object_object_add(e, "path", v->path ? json_object_new_string(v->path) : NULL);
                json_object_object_add(e, "key_id", v->key_id ? json_object_new_string(v->key_id) : NULL);
                json_object_object_add(e, "key_state", state ? json_object_new_string(state) : NULL);
                json_object_object_add(e, "volume_state", json_object_new_string(volume_state_to_string(v->state)));
                /* seeds: provider-managed keys always report 1 */
                json_object_object_add(e, "EncryptionKeyStatus",
                                       json_object_new_int(provider || (state && streq(state, "ENABLED"))));
                json_object_object_add(e, "EncryptionKeyType", json_object_new_int(!provider));
                json_object_array_add(vols, e);
        }
        karr = json_object_new_array();
        json_object_object_foreach(keys, id, k) {
                json_object *e = json_object_new_object(), *versions = NULL;
                (void) id;
                json_object_object_add(e, "id", json_object_new_string(cmek_json_get_string(k, "id") ?: ""));
                json_object_object_add(e, "name", json_object_new_string(cmek_json_get_string(k, "name") ?: ""));
                json_object_object_add(e, "compartment", json_object_new_string(cmek_json_get_string(k, "compartment") ?: ""));
                json_object_object_add(e, "state", json_object_new_string(cmek_json_get_string(k, "state") ?: ""));
                json_object_object_add(e, "provider_managed", json_object_new_boolean(cmek_json_get_bool(k, "provider_managed", false)));
                (void) json_object_object_get_ex(k, "versions", &versions);
                json_object_object_add(e, "versions", json_object_new_int64(
                        versions && json_object_is_type(versions, json_type_array) ? (int64_t) json_object_array_length(versions) : 0));
                json_object_array_add(karr, e);
        }
        json_object_put(keys);
        c = json_object_new_object();
        json_object_object_add(c, "wrap", json_object_new_int64((int64_t) m->counters.wrap));
        json_object_object_add(c, "wrap_errors", json_object_new_int64((int64_t) m->counters.wrap_errors));
        json_object_object_add(c, "unwrap", json_object_new_int64((int64_t) m->counters.unwrap));
        json_object_object_add(c, "unwrap_errors", json_object_new_int64((int64_t) m->counters.unwrap_errors));
        json_object_object_add(o, "volumes", vols);
        json_object_object_add(o, "keys", karr);
        json_object_object_add(o, "counters", c);
        c = json_object_new_object();
        json_object_object_add(c, "writable", json_object_new_boolean(!m->audit_error));
        json_object_object_add(c, "error", m->audit_error ? json_object_new_string(strerror(-m->audit_error)) : NULL);
        json_object_object_add(c, "unwritten", json_object_new_int64((int64_t) m->audit_lost));
        json_object_object_add(o, "audit", c);
        return o;
}

static void put_label(FILE *f, const char *name, const char *value, bool first) {
        fprintf(f, "%s%s=\"", first ? "" : ",", name);
        for (const char *p = value ? value : ""; *p; p++) {
                if (*p == '\\' || *p == '"')
                        fprintf(f, "\\%c", *p);
                else if (*p == '\n')
                        fputs("\\n", f);
                else if ((unsigned char) *p < 0x20 || *p == 0x7f)
                        fputc('?', f); /* the text format has no escape for them: never raw */
                else
                        fputc(*p, f);
        }
        fputc('"', f);
}

int metrics_format_prometheus(json_object *snap, char **ret, size_t *ret_size) {
        json_object *vols = NULL, *keys = NULL, *c = NULL;
        char *buf = NULL;
        size_t size = 0;
        FILE *f = open_memstream(&buf, &size);

        if (!f)
                return -ENOMEM;
        (void) json_object_object_get_ex(snap, "volumes", &vols);
        (void) json_object_object_get_ex(snap, "keys", &keys);
        (void) json_object_object_get_ex(snap, "counters", &c);

        static const struct { const char *field, *metric, *help; } vm[] = {
                { "EncryptionKeyStatus", "cmek_encryption_key_status",
                  "EncryptionKeyStatus: 1 when the volume's key is enabled and can encrypt/decrypt, 0 when not; provider-managed keys always 1." },
                { "EncryptionKeyType", "cmek_encryption_key_type",
                  "EncryptionKeyType: 1 when a customer-managed key protects the volume, 0 when the provider-managed default key does." },
        };
        for (size_t j = 0; j < ARRAY_SIZE(vm); j++) {
                fprintf(f, "# HELP %s %s\n# TYPE %s gauge\n", vm[j].metric, vm[j].help, vm[j].metric);
                for (size_t i = 0; vols && i < json_object_array_length(vols); i++) {
                        json_object *v = json_object_array_get_idx(vols, i);
                        int64_t val = 0;
                        (void) cmek_json_get_int64(v, vm[j].field, &val);
                        fprintf(f, "%s{", vm[j].metric);
                        put_label(f, "volume", cmek_json_get_string(v, "uuid"), true);
                        put_label(f, "path", cmek_json_get_string(v, "path"), false);
                        put_label(f, "key_id", cmek_json_get_string(v, "key_id"), false);
                        fprintf(f, "} %" PRIi64 "\n", val);
                }
        }
        fprintf(f, "# HELP cmek_key_enabled 1 when the master key is ENABLED.\n# TYPE cmek_key_enabled gauge\n");
        for (size_t i = 0; keys && i < json_object_array_length(keys); i++) {
                json_object *k = json_object_array_get_idx(keys, i);
                fprintf(f, "cmek_key_enabled{");
                put_label(f, "key_id", cmek_json_get_string(k, "id"), true);
                put_label(f, "name", cmek_json_get_string(k, "name"), false);
                put_label(f, "compartment", cmek_json_get_string(k, "compartment"), false);
                put_label(f, "state", cmek_json_get_string(k, "state"), false);
                fprintf(f, "} %d\n", streq_ptr(cmek_json_get_string(k, "state"), "ENABLED"));
        }
        fprintf(f, "# HELP cmek_key_versions Number of versions of the master key.\n# TYPE cmek_key_versions gauge\n");
        for (size_t i = 0; keys && i < json_object_array_length(keys); i++) {
                json_object *k = json_object_array_get_idx(keys, i);
                int64_t n = 0;
                (void) cmek_json_get_int64(k, "versions", &n);
                fprintf(f, "cmek_key_versions{");
                put_label(f, "key_id", cmek_json_get_string(k, "id"), true);
                fprintf(f, "} %" PRIi64 "\n", n);
        }
        static const struct { const char *field, *metric, *help; } cm[] = {
                { "wrap", "cmek_wrap_total", "DEK wrap operations." },
                { "wrap_errors", "cmek_wrap_errors_total", "DEK wrap operations that failed." },
                { "unwrap", "cmek_unwrap_total", "DEK unwrap operations." },
                { "unwrap_errors", "cmek_unwrap_errors_total", "DEK unwrap operations that failed or were refused." },
        };
        for (size_t j = 0; j < ARRAY_SIZE(cm); j++) {
                int64_t val = 0;
                (void) cmek_json_get_int64(c, cm[j].field, &val);
                fprintf(f, "# HELP %s %s\n# TYPE %s counter\n%s %" PRIi64 "\n", cm[j].metric, cm[j].help,
                        cm[j].metric, cm[j].metric, val);
        }
        {
                json_object *a = NULL;
                int64_t lost = 0;
                (void) json_object_object_get_ex(snap, "audit", &a);
                (void) cmek_json_get_int64(a, "unwritten", &lost);
                fprintf(f, "# HELP cmek_audit_writable 1 when the audit log can be written; 0: audited operations are refused.\n"
                        "# TYPE cmek_audit_writable gauge\ncmek_audit_writable %d\n", cmek_json_get_bool(a, "writable", true));
                fprintf(f, "# HELP cmek_audit_unwritten Records that went to the journal only while the audit log was unavailable.\n"
                        "# TYPE cmek_audit_unwritten gauge\ncmek_audit_unwritten %" PRIi64 "\n", lost);
        }
        if (fclose(f) != 0) {
                free(buf);
                return -ENOMEM;
        }
        *ret = buf;
        *ret_size = size;
        return 0;
}

void metrics_update(Manager *m) {
        _cleanup_free_ char *text = NULL;
        json_object *snap;
        size_t size = 0;
        int r;

        if (!m->metrics_file)
                return;
        snap = metrics_snapshot(m);
        r = metrics_format_prometheus(snap, &text, &size);
        json_object_put(snap);
        /* The file names paths, key ids, names and compartments, which the API reserves to read
         * audit: it is 0640, owned by root and by [metrics] group= (e.g. node_exporter's). */
        if (r >= 0)
                r = cmek_write_file_atomic_full(m->metrics_file, text, size, 0640, (uid_t) -1,
                                                m->config->metrics_gid != 0 ? m->config->metrics_gid : (gid_t) -1);
        if (r < 0)
                log_warning_errno(r, "Failed to write the metrics file %s, ignoring: %m", m->metrics_file);
        m->metrics_written_uses = m->counters.wrap + m->counters.unwrap;
}

static int on_metrics_timer(sd_event_source *s, uint64_t usec, void *userdata) {
        Manager *m = userdata;
        /* counters move without events: refresh the file when they did */
        if (m->counters.wrap + m->counters.unwrap != m->metrics_written_uses)
                metrics_update(m);
        (void) sd_event_source_set_time(s, usec + METRICS_INTERVAL_USEC);
        (void) sd_event_source_set_enabled(s, SD_EVENT_ON);
        return 0;
}

int metrics_init(Manager *m) {
        if (!m->metrics_file)
                return 0;
        metrics_update(m);
        return sd_event_add_time_relative(m->event, &m->metrics_timer, CLOCK_MONOTONIC, METRICS_INTERVAL_USEC,
                                          1000000, on_metrics_timer, m);
}

void metrics_done(Manager *m) {
        m->metrics_timer = sd_event_source_disable_unref(m->metrics_timer);
}

static int method_get(Manager *m, Call *c, json_object *params) {
        int r = manager_authorize(m, c, "read", "audit", NULL, NULL, NULL);
        if (r < 0)
                return r;
        return call_reply(c, metrics_snapshot(m));
}

static int method_prometheus(Manager *m, Call *c, json_object *params) {
        _cleanup_free_ char *text = NULL;
        json_object *snap, *p;
        size_t size = 0;
        int r = manager_authorize(m, c, "read", "audit", NULL, NULL, NULL);
        if (r < 0)
                return r;
        snap = metrics_snapshot(m);
        r = metrics_format_prometheus(snap, &text, &size);
        json_object_put(snap);
        if (r < 0)
                return r;
        p = json_object_new_object();
        json_object_object_add(p, "text", json_object_new_string_len(text, (int) size));
        return call_reply(c, p);
}

static const VarlinkSymbol metrics_symbols[] = {
        { VARLINK_TYPEDEF, "VolumeMetrics", .fields = VARLINK_FIELDS(
                V_STRING("uuid"), V_STRING("path", V_OPT), V_STRING("key_id", V_OPT), V_STRING("key_state", V_OPT),
                V_STRING("volume_state"), V_INT("EncryptionKeyStatus"), V_INT("EncryptionKeyType")) },
        { VARLINK_TYPEDEF, "KeyMetrics", .fields = VARLINK_FIELDS(
                V_STRING("id"), V_STRING("name"), V_STRING("compartment"), V_STRING("state"),
                V_BOOL("provider_managed"), V_INT("versions")) },
        { VARLINK_TYPEDEF, "Counters", .fields = VARLINK_FIELDS(
                V_INT("wrap"), V_INT("wrap_errors"), V_INT("unwrap"), V_INT("unwrap_errors")) },
        { VARLINK_TYPEDEF, "AuditState",
          .doc = "writable false: the audit log cannot be written and audited operations are refused",
          .fields = VARLINK_FIELDS(V_BOOL("writable"), V_STRING("error", V_OPT), V_INT("unwritten")) },
        { VARLINK_METHOD, "Get", .handler = method_get, .unaudited = true,
          .out = VARLINK_FIELDS(V_TYPE("volumes", "VolumeMetrics", V_ARRAY), V_TYPE("keys", "KeyMetrics", V_ARRAY),
                                V_TYPE("counters", "Counters"), V_TYPE("audit", "AuditState")) },
        { VARLINK_METHOD, "Prometheus", .handler = method_prometheus, .unaudited = true,
          .doc = "The same in Prometheus text format, under the seeds' metric names.",
          .out = VARLINK_FIELDS(V_STRING("text")) },
        {}
};

const Interface interface_metrics = {
        .name = "io.cmek.Metrics",
        .doc = "The seeds' metrics. Needs: read audit. Errors: io.cmek.PermissionDenied.",
        .symbols = metrics_symbols,
};
