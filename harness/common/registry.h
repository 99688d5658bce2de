/*
 * The device registry: a tree of entries (like the I/O Registry) with
 * provider -> client links and typed properties (GVariant values).
 *
 * Ownership: the registry owns every entry; pointers stay valid until the
 * entry (or an ancestor) is removed or the registry freed.  Property values
 * are stored as sunk references; getters return borrowed pointers.
 * Threading: not thread-safe; dextd uses it from its main loop only.
 * Errors: negative errno.
 */
#ifndef DEXT_REGISTRY_H
#define DEXT_REGISTRY_H

#include <glib.h>
#include <stdint.h>

typedef struct DextRegistry DextRegistry;
typedef struct DextRegEntry DextRegEntry;

DextRegistry *dext_registry_new(void);
void dext_registry_free(DextRegistry *r);

DextRegEntry *dext_registry_root(DextRegistry *r);
/* Add a client of @provider (NULL = root).  Ids are unique, never reused. */
DextRegEntry *dext_registry_add(DextRegistry *r, DextRegEntry *provider,
                                const char *name, const char *class_name);
/* Remove @e and its whole subtree.  -EINVAL for the root. */
int dext_registry_remove(DextRegistry *r, DextRegEntry *e);
DextRegEntry *dext_registry_lookup(DextRegistry *r, uint64_t id);

uint64_t dext_reg_entry_id(const DextRegEntry *e);
const char *dext_reg_entry_name(const DextRegEntry *e);
const char *dext_reg_entry_class(const DextRegEntry *e);
DextRegEntry *dext_reg_entry_provider(const DextRegEntry *e);
/* Borrowed array of DextRegEntry* in insertion order. */
GPtrArray *dext_reg_entry_clients(const DextRegEntry *e);
/* "Root/pci0000:00/0000:00:02.0" (g_free). */
char *dext_reg_entry_path(const DextRegEntry *e);

/* Set (value may be floating; NULL removes) and get (borrowed or NULL). */
void dext_reg_entry_set(DextRegEntry *e, const char *key, GVariant *value);
GVariant *dext_reg_entry_get(const DextRegEntry *e, const char *key);
/* All properties as a new a{sv} with sorted keys. */
GVariant *dext_reg_entry_properties(const DextRegEntry *e);

/* Pre-order walk; stop when fn returns FALSE. */
typedef gboolean (*DextRegVisitFn)(DextRegEntry *e, unsigned depth, void *opaque);
void dext_registry_walk(DextRegistry *r, DextRegEntry *from, DextRegVisitFn fn,
                        void *opaque);

/* Dumps of the subtree at @from (NULL = root); g_free the result. */
char *dext_registry_dump_text(DextRegistry *r, DextRegEntry *from);
char *dext_registry_dump_json(DextRegistry *r, DextRegEntry *from, gboolean pretty);

#endif
