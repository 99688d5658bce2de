/*
 * usb-bench: dextlab-usb figures through the user-space xHCI driver, each
 * beside a baseline measured in the same run (not a test: it prints).
 *
 *   bulk loopback throughput, 64 KiB .. 1 MiB transfers, N OUT+IN pairs in
 *   flight, vs memcpy of the same sizes;
 *   interrupt-endpoint event latency (vendor TRIGGER_EVENTS request sent ->
 *   interrupt IN completion seen by the driver), and the control request
 *   round trip alone, vs an eventfd ping-pong between two processes (the
 *   wake-up floor).
 *
 * usage: usb-bench [seconds-per-point]   (QTEST_QEMU_BINARY must be set)
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "usb-testbed.h"
#include "hw/dextlab/dextlab-usb-regs.h"

static double secs_per_point = 1.0;

static uint64_t now_ns(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + ts.tv_nsec;
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

    return x < y ? -1 : x > y;
}

static uint64_t pct(uint64_t *v, size_t n, double p)
{
    qsort(v, n, sizeof(*v), cmp_u64);
    return v[MIN(n - 1, (size_t)(p * n))];
}

/* ------------------------------------------------------------ baselines */

static double memcpy_gbs(size_t size)
{
    uint8_t *a = g_malloc(size), *b = g_malloc(size);
    uint64_t t0, bytes = 0;

    memset(a, 1, size);
    memset(b, 2, size);
    t0 = now_ns();
    while (now_ns() - t0 < secs_per_point * 0.5e9) {
        for (int i = 0; i < 16; i++) {
            memcpy(b, a, size);
            a[i] = b[size - 1 - i];
        }
        bytes += 16 * size;
    }
    bytes = bytes * 1e9 / (now_ns() - t0);
    g_free(a);
    g_free(b);
    return bytes / 1e9;
}

/* round trip between two processes over two eventfds: p50, p99 in ns */
static void eventfd_pingpong(uint64_t *p50, uint64_t *p99)
{
    enum { N = 20000 };
    int ping = eventfd(0, 0), pong = eventfd(0, 0);
    uint64_t *lat = g_new(uint64_t, N), v = 1;
    pid_t pid = fork();

    if (pid == 0) {
        for (int i = 0; i < N; i++) {
            if (read(ping, &v, 8) != 8 || write(pong, &v, 8) != 8) {
                _exit(1);
            }
        }
        _exit(0);
    }
    for (int i = 0; i < N; i++) {
        uint64_t t0 = now_ns();

        if (write(ping, &v, 8) != 8 || read(pong, &v, 8) != 8) {
            break;
        }
        lat[i] = now_ns() - t0;
    }
    waitpid(pid, NULL, 0);
    *p50 = pct(lat, N, 0.50);
    *p99 = pct(lat, N, 0.99);
    g_free(lat);
    close(ping);
    close(pong);
}

/* ---------------------------------------------------------------- bulk */

typedef struct Bulk {
    DextUsbPipe *out, *in;
    DextUsbBuffer *ob, *ib;
    uint32_t size;
    unsigned depth;
    GMutex lock;
    GCond cond;
    uint64_t in_bytes;
    unsigned outstanding;
    bool stop;
    int errors;
} Bulk;

typedef struct Slot {
    Bulk *b;
    unsigned idx;
    bool is_in;
} Slot;

static void bulk_cb(void *opaque, int status, uint32_t actual, uint64_t ts)
{
    Slot *s = opaque;
    Bulk *b = s->b;
    int ret = 0;

    g_mutex_lock(&b->lock);
    b->outstanding--;
    if (status < 0) {
        b->errors++;
    } else if (s->is_in) {
        b->in_bytes += actual;
    }
    if (!b->stop && status == 0) {
        /* completions run on the event thread: async resubmission only */
        ret = s->is_in
            ? dext_usb_pipe_async_io(b->in, b->ib, (size_t)s->idx * b->size,
                                     b->size, bulk_cb, s)
            : dext_usb_pipe_async_io(b->out, b->ob, (size_t)s->idx * b->size,
                                     b->size, bulk_cb, s);
        if (ret == 0) {
            b->outstanding++;
        } else {
            b->errors++;
        }
    }
    g_cond_broadcast(&b->cond);
    g_mutex_unlock(&b->lock);
}

static double bulk_mbs(DextUsbHost *h, DextUsbPipe *out, DextUsbPipe *in,
                       uint32_t size, unsigned depth, int *errors)
{
    Bulk b = { .out = out, .in = in, .size = size, .depth = depth };
    Slot *slots = g_new0(Slot, 2 * depth);
    uint64_t t0, t1, bytes0;
    gint64 deadline;

    g_mutex_init(&b.lock);
    g_cond_init(&b.cond);
    if (dext_usb_buffer_alloc(h, (size_t)size * depth, &b.ob) < 0 ||
        dext_usb_buffer_alloc(h, (size_t)size * depth, &b.ib) < 0) {
        *errors = 1;
        return 0;
    }
    memset(dext_usb_buffer_data(b.ob), 0x5a, (size_t)size * depth);
    g_mutex_lock(&b.lock);
    for (unsigned i = 0; i < depth; i++) {
        slots[2 * i] = (Slot){ &b, i, true };
        slots[2 * i + 1] = (Slot){ &b, i, false };
        if (dext_usb_pipe_async_io(in, b.ib, (size_t)i * size, size, bulk_cb,
                                   &slots[2 * i]) == 0) {
            b.outstanding++;
        }
        if (dext_usb_pipe_async_io(out, b.ob, (size_t)i * size, size, bulk_cb,
                                   &slots[2 * i + 1]) == 0) {
            b.outstanding++;
        }
    }
    /* warm-up, then measure */
    g_mutex_unlock(&b.lock);
    g_usleep(100000);
    g_mutex_lock(&b.lock);
    bytes0 = b.in_bytes;
    t0 = now_ns();
    g_mutex_unlock(&b.lock);
    g_usleep(secs_per_point * 1e6);
    g_mutex_lock(&b.lock);
    t1 = now_ns();
    bytes0 = b.in_bytes - bytes0;
    b.stop = true;
    deadline = g_get_monotonic_time() + 10 * G_USEC_PER_SEC;
    g_mutex_unlock(&b.lock);
    /* the last INs wait for OUTs that were not resubmitted: abort them */
    dext_usb_pipe_abort(out);
    dext_usb_pipe_abort(in);
    g_mutex_lock(&b.lock);
    while (b.outstanding && g_cond_wait_until(&b.cond, &b.lock, deadline)) {
    }
    *errors = b.errors;
    g_mutex_unlock(&b.lock);
    dext_usb_buffer_free(b.ob);
    dext_usb_buffer_free(b.ib);
    g_free(slots);
    return bytes0 * 1e3 / (double)(t1 - t0);       /* MB/s (1e6) */
}

/* ----------------------------------------------------------- interrupt */

typedef struct Ev {
    GMutex lock;
    GCond cond;
    bool done;
    uint64_t ts;
    int status;
} Ev;

static void ev_cb(void *opaque, int status, uint32_t actual, uint64_t ts)
{
    Ev *e = opaque;

    g_mutex_lock(&e->lock);
    e->done = true;
    e->ts = ts;
    e->status = status;
    g_cond_signal(&e->cond);
    g_mutex_unlock(&e->lock);
}

/* open the single dextlab-usb of @tb: pipes out */
static DextUsbDevice *open_dev(UsbTestbed *tb, DextUsbInterface **ifc,
                               DextUsbPipe **out, DextUsbPipe **in,
                               DextUsbPipe **intr)
{
    DextUsbHost *h = usb_testbed_host(tb);
    DextUsbDevice **v, *d;
    size_t n;

    if (dext_usb_host_wait_devices(h, 1, 20000) < 0) {
        return NULL;
    }
    n = dext_usb_host_devices(h, &v);
    d = n == 1 ? v[0] : NULL;
    g_free(v);
    if (!d || dext_usb_device_open(d) < 0 ||
        dext_usb_device_set_configuration(d, DEXTLAB_USB_CONFIG_VALUE) < 0 ||
        !(*ifc = dext_usb_device_interface(d, 0)) ||
        dext_usb_interface_open(*ifc) < 0 ||
        dext_usb_interface_copy_pipe(*ifc, DEXTLAB_USB_EP_BULK_OUT, out) < 0 ||
        dext_usb_interface_copy_pipe(*ifc, DEXTLAB_USB_EP_BULK_IN, in) < 0 ||
        dext_usb_interface_copy_pipe(*ifc, DEXTLAB_USB_EP_INTR_IN, intr) < 0) {
        return NULL;
    }
    return d;
}

static void close_dev(DextUsbDevice *d, DextUsbInterface *ifc)
{
    dext_usb_interface_close(ifc);
    dext_usb_device_close(d);
    dext_usb_device_unref(d);
}

int main(int argc, char **argv)
{
    static const char *const devices[] = {
        "qemu-xhci,id=xhci",
        "dextlab-usb,id=u0,bus=xhci.0,fifo-size=4194304",
        NULL,
    };
    static const uint32_t sizes[] = { 64 << 10, 256 << 10, 1 << 20 };
    static const unsigned depths[] = { 1, 4 };
    enum { NLAT = 2000 };
    UsbTestbed *tb;
    DextUsbHost *h;
    DextUsbDevice *d;
    DextUsbInterface *ifc;
    DextUsbPipe *out, *in, *intr;
    DextUsbBuffer *eb;
    DextXhciStats st;
    uint64_t pp50, pp99, *lat, *ctl;

    if (argc > 1) {
        secs_per_point = atof(argv[1]);
    }
    eventfd_pingpong(&pp50, &pp99);

    /* bulk: the production path (the platform owns the qtest socket) */
    tb = usb_testbed_start_direct(devices, NULL);
    if (!tb || !(d = open_dev(tb, &ifc, &out, &in, &intr))) {
        fprintf(stderr, "bulk set-up failed\n");
        return 1;
    }
    h = usb_testbed_host(tb);
    dext_xhci_stats(dext_usb_host_xhci(h), &st);
    printf("dextlab-usb benchmark (SuperSpeed device on qemu-xhci, "
           "interrupts: %s)\n\n", st.msix ? "MSI-X -> eventfd" : "polling");
    printf("bulk loopback throughput (bytes looped OUT->FIFO->IN per second)\n");
    printf("%10s %6s %12s %12s %8s\n", "transfer", "depth", "loop MB/s",
           "memcpy MB/s", "ratio");
    for (unsigned i = 0; i < G_N_ELEMENTS(sizes); i++) {
        double mc = memcpy_gbs(sizes[i]) * 1e3;

        for (unsigned j = 0; j < G_N_ELEMENTS(depths); j++) {
            int errors = 0;
            double mbs = bulk_mbs(h, out, in, sizes[i], depths[j], &errors);

            printf("%9uK %6u %12.0f %12.0f %8.3f%s\n", sizes[i] >> 10,
                   depths[j], mbs, mc, mbs / mc,
                   errors ? "  (errors!)" : "");
        }
    }
    close_dev(d, ifc);
    usb_testbed_stop(tb);

    /* interrupt endpoints need QEMU's virtual clock stepped: through the
     * test bed's qtest interposer (one more hop on every qtest line) */
    tb = usb_testbed_start(devices, NULL);
    if (!tb || !(d = open_dev(tb, &ifc, &out, &in, &intr))) {
        fprintf(stderr, "interrupt set-up failed\n");
        return 1;
    }
    h = usb_testbed_host(tb);
    lat = g_new(uint64_t, NLAT);
    ctl = g_new(uint64_t, NLAT);
    if (dext_usb_buffer_alloc(h, 4096, &eb) < 0) {
        return 1;
    }
    for (unsigned i = 0; i < NLAT; i++) {
        Ev e = { 0 };
        uint64_t t0, t1;

        g_mutex_init(&e.lock);
        g_cond_init(&e.cond);
        if (dext_usb_pipe_async_io(intr, eb, 0, 64, ev_cb, &e) < 0) {
            fprintf(stderr, "interrupt IO failed\n");
            return 1;
        }
        t0 = now_ns();
        if (dext_usb_device_control(d, 0x40, DEXTLAB_USB_REQ_TRIGGER_EVENTS,
                                    1, 0, NULL, 0, NULL, 0) < 0) {
            fprintf(stderr, "trigger failed\n");
            return 1;
        }
        t1 = now_ns();
        g_mutex_lock(&e.lock);
        while (!e.done) {
            g_cond_wait(&e.cond, &e.lock);
        }
        g_mutex_unlock(&e.lock);
        lat[i] = e.ts > t0 ? e.ts - t0 : 0;
        ctl[i] = t1 - t0;
        g_mutex_clear(&e.lock);
        g_cond_clear(&e.cond);
    }
    {
        uint64_t l50 = pct(lat, NLAT, 0.5), l99 = pct(lat, NLAT, 0.99);
        uint64_t c50 = pct(ctl, NLAT, 0.5), c99 = pct(ctl, NLAT, 0.99);

        printf("\ninterrupt event latency (request sent -> interrupt IN "
               "completion), %d samples,\nthrough the clock-stepping qtest "
               "interposer\n", NLAT);
        printf("%-34s %10s %10s\n", "", "p50 us", "p99 us");
        printf("%-34s %10.1f %10.1f\n", "event latency", l50 / 1e3, l99 / 1e3);
        printf("%-34s %10.1f %10.1f\n", "  of which control request RTT",
               c50 / 1e3, c99 / 1e3);
        printf("%-34s %10.1f %10.1f\n", "eventfd ping-pong (2 processes)",
               pp50 / 1e3, pp99 / 1e3);
        printf("%-34s %10.1f %10.1f\n", "ratio event / ping-pong",
               (double)l50 / pp50, (double)l99 / pp99);
    }
    dext_xhci_stats(dext_usb_host_xhci(h), &st);
    printf("\nxhci: %" G_GUINT64_FORMAT " events, %" G_GUINT64_FORMAT
           " interrupts, %" G_GUINT64_FORMAT " doorbells, %" G_GUINT64_FORMAT
           " clock steps, %" G_GUINT64_FORMAT " bad events\n", st.events,
           st.irqs, st.doorbells, st.clock_steps, st.bad_events);
    dext_usb_buffer_free(eb);
    g_free(lat);
    g_free(ctl);
    close_dev(d, ifc);
    usb_testbed_stop(tb);
    return 0;
}
