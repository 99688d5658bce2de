/* uc-probe: try to open a user client, or with "ctl ID OP" to stop/start a
 * service; exit status = -rc (0 on success).
 * Built twice by meson (uc-probe-noent without an entitlements file,
 * uc-probe-intruder with one naming an app id the driver does not list). */
#include "dext/client.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int main(int argc, char **argv)
{
    DextConnection *c = NULL;
    if (argc == 5 && !strcmp(argv[2], "ctl")) {
        return -dext_daemon_service_ctl(argv[1], strtoull(argv[3], NULL, 10), argv[4]);
    }
    if (argc != 4) {
        fprintf(stderr, "usage: %s SOCKET class|name|id VALUE\n", argv[0]);
        return 255;
    }
    int rc = dext_client_open(argv[1], argv[2], argv[3], &c);
    if (rc == 0) {
        dext_client_close(c);
    }
    return -rc;
}
