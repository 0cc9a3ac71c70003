/* picker: chooses a node from the registry's rotation: least-loaded (power
 * of two choices on sessions/capacity), round-robin, or by key (rendezvous
 * hashing, so a key keeps its node while that node stays in rotation). */
#ifndef BERTH_PICKER_H
#define BERTH_PICKER_H

#include <stddef.h>
#include <stdint.h>

#include "registry.h"

enum picker_policy { PICKER_LEAST_LOADED, PICKER_ROUND_ROBIN, PICKER_POLICY_COUNT };

/* "least-loaded", "round-robin"; parse returns 0 or -1. */
const char *picker_policy_name(enum picker_policy p);
int picker_policy_parse(const char *text, enum picker_policy *out);

struct picker;

/* seed 0: seeded from getrandom. NULL on out of memory. */
struct picker *picker_new(enum picker_policy policy, uint64_t seed);
void picker_free(struct picker *p);

/* Picks a node in rotation whose id is not in exclude[0..nexclude). With a
 * non-NULL key, rendezvous hashing on (key, node id) decides and the policy
 * is not used. Returns a borrowed node, or NULL when none qualifies. */
const struct registry_node *picker_pick(struct picker *p, const struct registry *r, const char *key,
                                        const char *const *exclude, size_t nexclude);

#endif
