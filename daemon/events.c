/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* Events: emission to subscribers (io.cmek.Events) and hooks, held while a key state change is
 * in progress; the key layer's state changes (events_key_hooks) become events here and are
 * passed on to the modules. Hook processes: daemon/events-hooks.c. */
#include "cmek-varlink.h"
#include "daemon.h"
#include "key.h"

struct Subscriber {
        Call *call;
        struct Subscriber *next;
};

static void subscriber_closed(Call *c, void *userdata) {
        Manager *m = userdata;

        for (Subscriber **s = &m->events.subscribers; *s; s = &(*s)->next)
                if ((*s)->call == c) {
                        Subscriber *dead = *s;
                        *s = dead->next;
                        call_unref(dead->call);
                        free(dead);
                        return;
                }
}

static void event_dispatch(Manager *m, json_object *ev) {
        for (Subscriber *s = m->events.subscribers, *next; s; s = next) {
                next = s->next;
                if (call_is_open(s->call)) {
                        json_object *p = json_object_new_object();
                        json_object_object_add(p, "event", json_object_get(ev));
                        (void) call_reply_more(s->call, p);
                }
        }
        events_run_hooks(m, ev);
}

static json_object *event_new(const char *type, json_object *data) {
        json_object *ev = json_object_new_object();

        json_object_object_add(ev, "type", json_object_new_string(type));
        json_object_object_add(ev, "time_usec", json_object_new_int64((int64_t) cmek_now_usec()));
        json_object_object_add(ev, "data", data ? data : json_object_new_object());
        log_debug("Event %s", type);
        return ev;
}

/* While held (a key state change in progress), events wait in order and go out on release:
 * the volumes are locked first, yet consumers see "key.disabled" before its "volume.locked". */
static void events_hold(Manager *m) {
        m->events.n_holds++;
}

/* first: an event that goes out before everything held (the key event of the change) */
static void events_release_with(Manager *m, json_object *first) {
        json_object *q;

        if (m->events.n_holds == 0 || --m->events.n_holds > 0) {
                if (first) {
                        /* nested in a hold around the same change (key_apply() locks before
                         * its token writes): the key's event still goes first */
                        json_object *a = json_object_new_array();
                        json_object_array_add(a, first);
                        for (size_t i = 0; m->events.held && i < json_object_array_length(m->events.held); i++)
                                json_object_array_add(a, json_object_get(json_object_array_get_idx(m->events.held, i)));
                        json_object_put(m->events.held);
                        m->events.held = a;
                }
                if (m->events.n_holds > 0)
                        return;
                first = NULL;
        }
        q = TAKE_PTR(m->events.held);
        if (first) {
                event_dispatch(m, first);
                json_object_put(first);
        }
        for (size_t i = 0; q && i < json_object_array_length(q); i++)
                event_dispatch(m, json_object_array_get_idx(q, i));
        json_object_put(q);
        metrics_update(m);
}

static void events_release(Manager *m) {
        events_release_with(m, NULL);
}

void manager_event(Manager *m, const char *type, json_object *data) {
        json_object *ev = event_new(type, data);

        if (m->events.n_holds > 0) {
                if (!m->events.held)
                        m->events.held = json_object_new_array();
                json_object_array_add(m->events.held, ev);
                return;
        }
        event_dispatch(m, ev);
        json_object_put(ev);
        metrics_update(m);
}

void events_done(Manager *m) {
        json_object_put(TAKE_PTR(m->events.held));
        m->events.n_holds = 0;
        events_hooks_done(m);
        while (m->events.subscribers) {
                Subscriber *s = m->events.subscribers;
                m->events.subscribers = s->next;
                call_unref(s->call);
                free(s);
        }
}

static void key_state_changed(Manager *m, const char *key_id, KeyState old_state, KeyState new_state) {
        static const char *const names[_KEY_STATE_MAX] = {
                [KEY_STATE_ENABLED] = "key.enabled",
                [KEY_STATE_DISABLED] = "key.disabled",
                [KEY_STATE_PENDING_DELETION] = "key.pending-deletion",
                [KEY_STATE_DELETED] = "key.deleted",
        };
        json_object *d = json_object_new_object(), *ev = NULL;

        json_object_object_add(d, "key_id", json_object_new_string(key_id));
        json_object_object_add(d, "old_state", json_object_new_string(key_state_to_string(old_state)));
        json_object_object_add(d, "state", json_object_new_string(key_state_to_string(new_state)));
        if (new_state >= 0 && new_state < _KEY_STATE_MAX)
                ev = event_new(old_state == KEY_STATE_DISABLED && new_state == KEY_STATE_ENABLED
                               ? "key.re-enabled" : names[new_state], d);
        else
                json_object_put(d);
        /* tell the volume module first: locking must not wait for event consumers; its events
         * (volume.locked, volume.unrecoverable) follow the key's own */
        events_hold(m);
        modules_key_state_changed(m, key_id, old_state, new_state);
        events_release_with(m, ev);
}

static void key_rotated(Manager *m, const char *key_id, unsigned new_version) {
        json_object *d = json_object_new_object();
        json_object_object_add(d, "key_id", json_object_new_string(key_id));
        json_object_object_add(d, "version", json_object_new_int64(new_version));
        manager_event(m, "key.rotated", d);
        modules_key_rotated(m, key_id, new_version);
}

static void key_turning_off(Manager *m, const char *key_id, KeyState old_state, KeyState new_state) {
        modules_key_state_changed(m, key_id, old_state, new_state);
}

const KeyHooks events_key_hooks = {
        .state_changed = key_state_changed,
        .turning_off = key_turning_off,
        .rotated = key_rotated,
        .hold = events_hold,
        .release = events_release,
};

/* ---- io.cmek.Events ---- */

static int method_subscribe(Manager *m, Call *c, json_object *params) {
        Subscriber *s;
        int r;

        r = manager_authorize(m, c, "read", "audit", NULL, NULL, NULL);
        if (r < 0)
                return r;
        if (!call_wants_more(c))
                return call_errorf(c, VARLINK_ERROR_EXPECTED_MORE, "Subscribe streams events: call it with \"more\": true");
        s = calloc(1, sizeof(*s));
        if (!s)
                return -ENOMEM;
        s->call = call_ref(c);
        s->next = m->events.subscribers;
        m->events.subscribers = s;
        call_set_close_callback(c, subscriber_closed, m);
        /* first reply: tells the client the subscription is live */
        json_object *p = json_object_new_object();
        json_object_object_add(p, "subscribed", json_object_new_boolean(1));
        return call_reply_more(c, p);
}

static const Method events_methods[] = {
        { "io.cmek.Events.Subscribe", method_subscribe },
        {}
};

const Interface interface_events = {
        .name = "io.cmek.Events",
        .description =
                "# Key and volume events, streamed. Needs: read audit.\n"
                "interface io.cmek.Events\n"
                "\n"
                "type Event (\n"
                "  type: string,\n"
                "  time_usec: int,\n"
                "  data: object\n"
                ")\n"
                "\n"
                "# Call with more: the first reply has subscribed: true, then one reply per event.\n"
                "method Subscribe() -> (subscribed: ?bool, event: ?Event)\n",
        .methods = events_methods,
};
