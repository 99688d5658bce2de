/*
 * dextlab-xhci-tool: command-line app for the dextlab-xhci driver's user
 * client (an IOUserClient app in DriverKit terms).
 *
 *   dextlab-xhci-tool [--socket PATH] list
 *   dextlab-xhci-tool [--socket PATH] reg PORT REGISTER
 *   dextlab-xhci-tool [--socket PATH] loop PORT LENGTH [COUNT]
 *   dextlab-xhci-tool [--socket PATH] stats
 *
 * The socket defaults to $DEXTD_SOCKET.  dextd checks this executable's
 * entitlements (dextlab-xhci-tool.entitlements next to it).
 */
#include <errno.h>
#include <stdbool.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <glib.h>

#include "dext/client.h"
#include "dextlab-xhci-uc.h"

static const char *const speeds[] = { "?", "full", "low", "high", "super" };

static int usage(void)
{
    fprintf(stderr, "usage: dextlab-xhci-tool [--socket PATH] list | "
            "reg PORT REG | loop PORT LEN [COUNT] | stats\n");
    return 2;
}

static bool num(const char *s, uint64_t *v)
{
    char *end;

    errno = 0;
    *v = strtoull(s, &end, 0);
    return s[0] && !*end && !errno;
}

int main(int argc, char **argv)
{
    const char *sock = NULL;
    DextConnection *c;
    int ret;

    if (argc > 2 && !strcmp(argv[1], "--socket")) {
        sock = argv[2];
        argc -= 2;
        argv += 2;
    }
    if (argc < 2) {
        return usage();
    }
    ret = dext_client_open(sock, "name", DXHCI_SERVER_NAME, &c);
    if (ret < 0) {
        fprintf(stderr, "dextlab-xhci-tool: cannot open %s: %s\n",
                DXHCI_SERVER_NAME, g_strerror(-ret));
        return 1;
    }
    if (!strcmp(argv[1], "list") && argc == 2) {
        DxhciUcDev d[DXHCI_UC_MAX_DEVS];
        uint64_t n = 0;
        uint32_t nout = 1;
        size_t len = sizeof(d);

        ret = dext_client_call(c, DXHCI_UC_LIST, NULL, 0, NULL, 0, &n, &nout,
                               d, &len);
        for (uint64_t i = 0; ret == 0 && i < n && i < DXHCI_UC_MAX_DEVS; i++) {
            printf("port %u: %04x:%04x bcdDevice %04x %s speed\n", d[i].port,
                   d[i].id_vendor, d[i].id_product, d[i].bcd_device,
                   speeds[d[i].speed < 5 ? d[i].speed : 0]);
        }
    } else if (!strcmp(argv[1], "reg") && argc == 4) {
        uint64_t in[2], out[1];
        uint32_t nout = 1;

        if (!num(argv[2], &in[0]) || !num(argv[3], &in[1])) {
            return usage();
        }
        ret = dext_client_call(c, DXHCI_UC_READ_REG, in, 2, NULL, 0, out,
                               &nout, NULL, NULL);
        if (ret == 0) {
            printf("0x%08" PRIx64 "\n", out[0]);
        }
    } else if (!strcmp(argv[1], "loop") && (argc == 4 || argc == 5)) {
        uint64_t in[3], out[1], count = 1, bytes = 0;
        gint64 t0 = g_get_monotonic_time();

        if (!num(argv[2], &in[0]) || !num(argv[3], &in[1]) ||
            (argc == 5 && !num(argv[4], &count))) {
            return usage();
        }
        for (uint64_t k = 0; k < count && ret == 0; k++) {
            uint32_t nout = 1;

            in[2] = k;
            ret = dext_client_call(c, DXHCI_UC_LOOPBACK, in, 3, NULL, 0, out,
                                   &nout, NULL, NULL);
            bytes += ret == 0 ? out[0] : 0;
        }
        if (ret == 0) {
            double s = (g_get_monotonic_time() - t0) / 1e6;

            printf("%" PRIu64 " bytes looped and verified in %.3f s\n", bytes,
                   s);
        }
    } else if (!strcmp(argv[1], "stats") && argc == 2) {
        uint64_t out[4];
        uint32_t nout = 4;

        ret = dext_client_call(c, DXHCI_UC_STATS, NULL, 0, NULL, 0, out,
                               &nout, NULL, NULL);
        if (ret == 0) {
            printf("events %" PRIu64 " interrupts %" PRIu64 " bad-events %"
                   PRIu64 " msix %" PRIu64 "\n", out[0], out[1], out[2],
                   out[3]);
        }
    } else {
        dext_client_close(c);
        return usage();
    }
    if (ret < 0) {
        fprintf(stderr, "dextlab-xhci-tool: %s: %s\n", argv[1],
                g_strerror(-ret));
    }
    dext_client_close(c);
    return ret < 0 ? 1 : 0;
}
