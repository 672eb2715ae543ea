/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* The verb tables of cmekctl's modules; each module adds its extern and its table here. */
#pragma once
/* extern const Verb key_verbs[];  then: #define CTL_EXTRA_VERB_TABLES key_verbs, */
extern const Verb key_verbs[];    /* tools/cmekctl-key.c: vault, key */
extern const Verb volume_verbs[]; /* tools/cmekctl-volume.c: volume */
#define CTL_EXTRA_VERB_TABLES key_verbs, volume_verbs,
