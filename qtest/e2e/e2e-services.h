/*
 * e2e-services: dextd's service table for end-to-end tests, parsed once.
 *
 * dext_daemon_services() (dext/client.h) answers text lines
 * "id class server state pid launches starts"; tests select rows by class
 * and compare fields.  Rows are GStrv (E2E_SVC_* index them), owned by
 * the returned array.  Nothing here aborts: a dextd that does not answer
 * gives no rows.
 */
#ifndef DEXTLAB_E2E_SERVICES_H
#define DEXTLAB_E2E_SERVICES_H

#include <glib.h>

enum {
    E2E_SVC_ID, E2E_SVC_CLASS, E2E_SVC_SERVER, E2E_SVC_STATE, E2E_SVC_PID,
    E2E_SVC_LAUNCHES, E2E_SVC_STARTS, E2E_SVC_FIELDS
};

/* The rows of class @cls (NULL: every row), in dextd's order. */
GPtrArray *e2e_services(const char *sock, const char *cls);
/* Field @idx of the first row of @cls (g_free it), or NULL. */
char *e2e_service_field(const char *sock, const char *cls, int idx);

#endif /* DEXTLAB_E2E_SERVICES_H */
