/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* The registry's helpers for the other volume files (daemon/volume-registry.c); the registry API
 * that handlers use is in volume.h. */
#pragma once

#include <stdbool.h>
#include <json-c/json.h>

#include "volume.h"

/* allocates m->volumes (empty, not loaded) / frees it with every Volume */
int volume_registry_new(Manager *m);
void volume_registry_free(Manager *m);
int registry_load(Manager *m);
int registry_add(Manager *m, Volume *v);
Volume *volume_free(Volume *v);
/* *p = strdup(s) unless equal; -ENOMEM */
int set_str(char **p, const char *s);
/* a volume's registry entry as a json-c object */
json_object *volume_to_registry_json(const Volume *v);

/* intents: see volume-registry.c */
json_object *intent_find(Manager *m, const char *op, const char *uuid, const char *path);
void intent_drop(Manager *m, const char *uuid);
/* Records and saves an intent: returns only once it is on disk. */
int intent_save(Manager *m, const char *op, const char *uuid, const char *path, int keyslot, bool recovery);
