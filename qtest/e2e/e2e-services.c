/* dextd's service table for end-to-end tests; see e2e-services.h. */
#include "e2e-services.h"
#include "dext/client.h"

#include <string.h>

GPtrArray *e2e_services(const char *sock, const char *cls)
{
    GPtrArray *a = g_ptr_array_new_with_free_func((GDestroyNotify)g_strfreev);
    char *out = NULL;
    if (dext_daemon_services(sock, &out) < 0) {
        return a;
    }
    char **lines = g_strsplit(out, "\n", -1);
    for (char **l = lines; *l; l++) {
        char **f = g_strsplit(*l, " ", -1);
        if (g_strv_length(f) == E2E_SVC_FIELDS && (!cls || !strcmp(f[E2E_SVC_CLASS], cls))) {
            g_ptr_array_add(a, f);
        } else {
            g_strfreev(f);
        }
    }
    g_strfreev(lines);
    g_free(out);
    return a;
}

char *e2e_service_field(const char *sock, const char *cls, int idx)
{
    GPtrArray *a = e2e_services(sock, cls);
    char *v = a->len && idx >= 0 && idx < E2E_SVC_FIELDS
                  ? g_strdup(((char **)a->pdata[0])[idx]) : NULL;
    g_ptr_array_unref(a);
    return v;
}
