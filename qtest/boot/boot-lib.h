/*
 * boot-lib.h: boot dextlab's guest image in the QEMU fork and collect what
 * its /init prints on the serial console (see images/init for the protocol).
 *
 * A DxlBoot is created by dxl_boot_run(), which returns only once QEMU has
 * exited or been killed: a hang is bounded by the timeout, a kernel panic
 * ends the run at once (panic=-1 with -no-reboot).  The console (and QEMU's
 * own stderr) is written to a log file whose path every failure message
 * names.  Single-threaded: uses the thread-default GMainContext while running.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#ifndef DXL_BOOT_LIB_H
#define DXL_BOOT_LIB_H

#include <glib.h>

typedef enum {
    DXL_BOOT_TEST,      /* dextlab.mode=test: drivers, checks, self-test */
    DXL_BOOT_BENCH,     /* dextlab.mode=bench: ... plus in-guest benchmarks */
    DXL_BOOT_BARE,      /* dextlab.mode=bare: /init prints READY, powers off */
} DxlBootMode;

typedef struct DxlBootOpts {
    DxlBootMode mode;
    const char *name;           /* log file: <logdir>/boot-<name>.log */
    const char *accel;          /* "tcg" or "kvm" */
    const char *extra_append;   /* more kernel command line, or NULL */
    guint timeout_s;            /* whole run, QEMU killed after it */
    gboolean devices;           /* dextlab-dma + qemu-xhci (else none) */
} DxlBootOpts;

typedef struct DxlResult {
    char *name;
    gboolean pass;
    GHashTable *kv;             /* key -> value (strings) */
} DxlResult;

typedef struct DxlBoot {
    char *log_path;
    char *cmdline;              /* QEMU command line, for messages */
    gboolean timed_out;
    gboolean panic;             /* "Kernel panic" on the console */
    gboolean exited;            /* QEMU exited by itself */
    int exit_status;            /* if exited */
    gboolean done;              /* DEXTLAB-DONE seen */
    int done_results, done_failed;
    double t_ready;             /* s from QEMU start to DEXTLAB-READY, or -1 */
    double t_done;              /* s to DEXTLAB-DONE, or -1 */
    double t_exit;              /* s to QEMU exit/kill */
    double guest_uptime_ready;  /* guest's /proc/uptime at READY, or -1 */
    GPtrArray *results;         /* DxlResult *, in order */
    GPtrArray *lspci;           /* char *: DEXTLAB-LSPCI payloads */
    GPtrArray *lsusb;           /* char *: DEXTLAB-LSUSB payloads */
    GPtrArray *dmesg;           /* char *: DEXTLAB-DMESG payloads */
    GPtrArray *bench;           /* DxlResult *: DEXTLAB-BENCH lines */
    GPtrArray *unparsed;        /* char *: malformed DEXTLAB- lines */
} DxlBoot;

/* Paths of the fork and the image, from the environment meson sets. */
const char *dxl_boot_qemu(void);
const char *dxl_boot_kernel(void);
const char *dxl_boot_initrd(void);
const char *dxl_boot_logdir(void);
/* Seconds a boot may take before it counts as a hang (default 120). */
guint dxl_boot_timeout(void);

/*
 * The accelerator to use: $DEXTLAB_BOOT_ACCEL if "tcg" or "kvm"; otherwise
 * "kvm" only if a probe (a bare boot of the image under KVM, bounded) reaches
 * /init, else "tcg".  The probe's verdict is cached in the log directory for
 * this QEMU binary and kernel.
 */
const char *dxl_boot_accel(void);

DxlBoot *dxl_boot_run(const DxlBootOpts *o);
void dxl_boot_free(DxlBoot *b);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(DxlBoot, dxl_boot_free)

/* The first result named @name, or NULL. */
const DxlResult *dxl_boot_result(const DxlBoot *b, const char *name);
const DxlResult *dxl_boot_bench(const DxlBoot *b, const char *name);
const char *dxl_result_get(const DxlResult *r, const char *key);

/* One line describing how the run ended, for failure messages. */
char *dxl_boot_describe(const DxlBoot *b);

#endif /* DXL_BOOT_LIB_H */
