/*
 * harness/usb test bed: QEMU fork + qtest interposer + platform attach +
 * USB host.  See usb-testbed.h.
 */
#include <errno.h>
#include <inttypes.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include "usb-testbed.h"

#define RAM_MB 512

struct UsbTestbed {
    char *dir;
    char *ram_path;
    GPid qemu;
    int qemu_fd;               /* our connection to QEMU's qtest socket */
    int listen_fd;             /* where the platform connects */
    int plat_fd;
    GThread *thread;
    int stop_pipe[2];

    GMutex lock;               /* writes to qemu_fd, pending queue */
    GCond cond;
    GQueue pending;            /* 1 = ours, 0 = platform's */
    unsigned ours_done;        /* replies to our commands consumed */
    unsigned ours_sent;
    bool dead;

    DextPlatform *plat;
    DextUsbHost *host;
};

static int unix_connect(const char *path)
{
    struct sockaddr_un sa = { .sun_family = AF_UNIX };
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);

    g_strlcpy(sa.sun_path, path, sizeof(sa.sun_path));
    if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
        if (fd >= 0) {
            close(fd);
        }
        return -1;
    }
    return fd;
}

static int unix_listen(const char *path)
{
    struct sockaddr_un sa = { .sun_family = AF_UNIX };
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);

    g_strlcpy(sa.sun_path, path, sizeof(sa.sun_path));
    if (fd < 0 || bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 ||
        listen(fd, 1) < 0) {
        return -1;
    }
    return fd;
}

static bool write_all(int fd, const char *buf, size_t len)
{
    while (len) {
        ssize_t n = write(fd, buf, len);

        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n <= 0) {
            return false;
        }
        buf += n;
        len -= n;
    }
    return true;
}

/* Forwarding loop: complete lines only, so injected commands never split
 * one of the platform's. */
static gpointer interposer(gpointer opaque)
{
    UsbTestbed *tb = opaque;
    GString *from_plat = g_string_new(NULL), *from_qemu = g_string_new(NULL);
    char buf[65536];

    tb->plat_fd = accept4(tb->listen_fd, NULL, NULL, SOCK_CLOEXEC);
    while (tb->plat_fd >= 0) {
        struct pollfd pf[3] = {
            { .fd = tb->plat_fd, .events = POLLIN },
            { .fd = tb->qemu_fd, .events = POLLIN },
            { .fd = tb->stop_pipe[0], .events = POLLIN },
        };
        char *nl;

        if (poll(pf, 3, 1000) < 0 && errno != EINTR) {
            break;
        }
        if (pf[2].revents) {
            break;
        }
        if (pf[0].revents) {
            ssize_t n = read(tb->plat_fd, buf, sizeof(buf));
            size_t done = 0, lines = 0;

            if (n <= 0) {
                break;
            }
            g_string_append_len(from_plat, buf, n);
            for (char *p = from_plat->str;
                 (nl = memchr(p, '\n', from_plat->len - (p - from_plat->str)));
                 p = nl + 1) {
                done = nl + 1 - from_plat->str;
                lines++;
            }
            if (lines) {
                /* whole lines only, in one write: an injected command can
                 * only land between two of the platform's */
                g_mutex_lock(&tb->lock);
                for (size_t k = 0; k < lines; k++) {
                    g_queue_push_tail(&tb->pending, GINT_TO_POINTER(0));
                }
                if (!write_all(tb->qemu_fd, from_plat->str, done)) {
                    tb->dead = true;
                }
                g_mutex_unlock(&tb->lock);
                g_string_erase(from_plat, 0, done);
            }
        }
        if (pf[1].revents) {
            ssize_t n = read(tb->qemu_fd, buf, sizeof(buf));
            GString *fwd = g_string_new(NULL);
            size_t done = 0;

            if (n <= 0) {
                g_string_free(fwd, TRUE);
                break;
            }
            g_string_append_len(from_qemu, buf, n);
            for (char *p = from_qemu->str;
                 (nl = memchr(p, '\n', from_qemu->len - (p - from_qemu->str)));
                 p = nl + 1) {
                size_t l = nl + 1 - p;
                bool ours = false;

                if (strncmp(p, "IRQ", 3) != 0) {
                    g_mutex_lock(&tb->lock);
                    ours = GPOINTER_TO_INT(g_queue_pop_head(&tb->pending));
                    if (ours) {
                        tb->ours_done++;
                        g_cond_broadcast(&tb->cond);
                    }
                    g_mutex_unlock(&tb->lock);
                }
                if (!ours) {
                    g_string_append_len(fwd, p, l);
                }
                done = nl + 1 - from_qemu->str;
            }
            g_string_erase(from_qemu, 0, done);
            if (fwd->len && !write_all(tb->plat_fd, fwd->str, fwd->len)) {
                g_string_free(fwd, TRUE);
                goto out;
            }
            g_string_free(fwd, TRUE);
        }
    }
out:
    g_mutex_lock(&tb->lock);
    tb->dead = true;
    g_cond_broadcast(&tb->cond);
    g_mutex_unlock(&tb->lock);
    if (tb->plat_fd >= 0) {
        shutdown(tb->plat_fd, SHUT_RDWR);
    }
    g_string_free(from_plat, TRUE);
    g_string_free(from_qemu, TRUE);
    return NULL;
}

int usb_testbed_clock_step(UsbTestbed *tb, uint64_t ns)
{
    char line[64];
    int len = snprintf(line, sizeof(line), "clock_step %" PRIu64 "\n", ns);
    gint64 deadline = g_get_monotonic_time() + 5 * G_USEC_PER_SEC;
    unsigned want;
    int ret = 0;

    g_mutex_lock(&tb->lock);
    if (tb->dead) {
        g_mutex_unlock(&tb->lock);
        return -ESHUTDOWN;
    }
    g_queue_push_tail(&tb->pending, GINT_TO_POINTER(1));
    want = ++tb->ours_sent;
    if (!write_all(tb->qemu_fd, line, len)) {
        tb->dead = true;
    }
    while (tb->ours_done < want && !tb->dead) {
        if (!g_cond_wait_until(&tb->cond, &tb->lock, deadline)) {
            ret = -ETIMEDOUT;
            break;
        }
    }
    if (tb->dead) {
        ret = -ESHUTDOWN;
    }
    g_mutex_unlock(&tb->lock);
    return ret;
}

int usb_testbed_clock_fn(void *opaque, uint64_t ns)
{
    return usb_testbed_clock_step(opaque, ns);
}

static void child_setup(gpointer data)
{
    prctl(PR_SET_PDEATHSIG, SIGKILL);
}

static UsbTestbed *start_direct(const char *const *devices,
                                const DextUsbHostConfig *hcfg)
{
    UsbTestbed *tb = g_new0(UsbTestbed, 1);
    DextMachineDesc md = { 0 };
    DextPciAddr xaddr;
    int ret;

    g_mutex_init(&tb->lock);
    g_cond_init(&tb->cond);
    tb->qemu_fd = tb->listen_fd = tb->plat_fd = -1;
    tb->stop_pipe[0] = tb->stop_pipe[1] = -1;
    tb->dead = true;           /* no interposer: clock steps fail */
    md.devices = devices;
    md.ram_size = (uint64_t)RAM_MB << 20;
    md.dma_size = (uint64_t)(RAM_MB / 2) << 20;
    ret = dext_platform_qtest_create(&md, &tb->plat);
    if (ret < 0) {
        fprintf(stderr, "testbed: create: %s\n",
                dext_platform_last_error(NULL));
        goto fail;
    }
    if ((ret = dext_usb_find_xhci(tb->plat, 0, &xaddr)) < 0 ||
        (ret = dext_usb_host_create(tb->plat, xaddr, hcfg, &tb->host)) < 0) {
        fprintf(stderr, "testbed: host: %s\n", g_strerror(-ret));
        goto fail;
    }
    return tb;

fail:
    usb_testbed_stop(tb);
    return NULL;
}

UsbTestbed *usb_testbed_start_direct(const char *const *devices,
                                     const DextUsbHostConfig *hcfg)
{
    return start_direct(devices, hcfg);
}

UsbTestbed *usb_testbed_start(const char *const *devices,
                              const DextUsbHostConfig *hcfg)
{
    UsbTestbed *tb = g_new0(UsbTestbed, 1);
    const char *qemu = g_getenv("QTEST_QEMU_BINARY");
    g_autofree char *qsock = NULL, *msock = NULL, *psock = NULL;
    GPtrArray *argv = g_ptr_array_new_with_free_func(g_free);
    GError *err = NULL;
    DextAttachDesc ad = { 0 };
    DextUsbHostConfig hc = { 0 };
    DextPciAddr xaddr;
    int fd, ret;

    g_mutex_init(&tb->lock);
    g_cond_init(&tb->cond);
    tb->qemu_fd = tb->listen_fd = tb->plat_fd = -1;
    tb->stop_pipe[0] = tb->stop_pipe[1] = -1;
    if (!qemu) {
        qemu = g_getenv("DEXTLAB_QEMU");
    }
    if (!qemu) {
        fprintf(stderr, "testbed: QTEST_QEMU_BINARY not set\n");
        goto fail;
    }
    tb->dir = g_dir_make_tmp("dextusb-XXXXXX", NULL);
    tb->ram_path = g_strdup_printf("/dev/shm/dextusb-ram-%d-%p", getpid(),
                                   (void *)tb);
    fd = open(tb->ram_path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (!tb->dir || fd < 0 || ftruncate(fd, (off_t)RAM_MB << 20) < 0) {
        fprintf(stderr, "testbed: cannot create RAM file\n");
        if (fd >= 0) {
            close(fd);
        }
        goto fail;
    }
    close(fd);
    qsock = g_build_filename(tb->dir, "qtest", NULL);
    msock = g_build_filename(tb->dir, "qmp", NULL);
    psock = g_build_filename(tb->dir, "plat", NULL);

#define ARG(...) g_ptr_array_add(argv, g_strdup_printf(__VA_ARGS__))
    ARG("%s", qemu);
    ARG("-accel");
    ARG("qtest");
    ARG("-qtest");
    ARG("unix:%s,server=on,wait=off", qsock);
    ARG("-qtest-log");
    ARG("/dev/null");
    ARG("-qmp");
    ARG("unix:%s,server=on,wait=off", msock);
    ARG("-display");
    ARG("none");
    ARG("-nodefaults");
    ARG("-m");
    ARG("%dM", RAM_MB);
    ARG("-object");
    ARG("memory-backend-file,id=ram0,size=%dM,mem-path=%s,share=on", RAM_MB,
        tb->ram_path);
    ARG("-machine");
    ARG("q35,memory-backend=ram0");
    for (const char *const *d = devices; d && *d; d++) {
        ARG("-device");
        ARG("%s", *d);
    }
#undef ARG
    g_ptr_array_add(argv, NULL);
    if (!g_spawn_async(NULL, (char **)argv->pdata, NULL,
                       G_SPAWN_DO_NOT_REAP_CHILD, child_setup, NULL,
                       &tb->qemu, &err)) {
        fprintf(stderr, "testbed: spawn: %s\n", err->message);
        g_error_free(err);
        goto fail;
    }
    /* QEMU creates its sockets during start-up: bounded wait */
    for (int i = 0; i < 500 && tb->qemu_fd < 0; i++) {
        tb->qemu_fd = unix_connect(qsock);
        if (tb->qemu_fd < 0) {
            g_usleep(10000);
        }
    }
    if (tb->qemu_fd < 0) {
        fprintf(stderr, "testbed: QEMU did not open its qtest socket\n");
        goto fail;
    }
    tb->listen_fd = unix_listen(psock);
    if (tb->listen_fd < 0 || pipe2(tb->stop_pipe, O_CLOEXEC) < 0) {
        goto fail;
    }
    tb->thread = g_thread_new("usb-testbed-qtest", interposer, tb);

    ad.qtest_socket = psock;
    ad.qmp_socket = msock;
    ad.mem_path = tb->ram_path;
    ad.ram_size = (uint64_t)RAM_MB << 20;
    ad.dma_size = (uint64_t)(RAM_MB / 2) << 20;
    ad.machine = "q35";
    ad.timeout_ms = 10000;
    ret = dext_platform_qtest_attach(&ad, &tb->plat);
    if (ret < 0) {
        fprintf(stderr, "testbed: attach: %s\n",
                dext_platform_last_error(NULL));
        goto fail;
    }
    ret = dext_usb_find_xhci(tb->plat, 0, &xaddr);
    if (ret < 0) {
        fprintf(stderr, "testbed: no xHCI: %s\n", g_strerror(-ret));
        goto fail;
    }
    if (hcfg) {
        hc = *hcfg;
    }
    hc.xhci.clock_step = usb_testbed_clock_fn;
    hc.xhci.clock_opaque = tb;
    ret = dext_usb_host_create(tb->plat, xaddr, &hc, &tb->host);
    if (ret < 0) {
        fprintf(stderr, "testbed: host: %s\n", g_strerror(-ret));
        goto fail;
    }
    g_ptr_array_free(argv, TRUE);
    return tb;

fail:
    g_ptr_array_free(argv, TRUE);
    usb_testbed_stop(tb);
    return NULL;
}

void usb_testbed_stop(UsbTestbed *tb)
{
    if (!tb) {
        return;
    }
    dext_usb_host_destroy(tb->host);
    dext_platform_destroy(tb->plat);
    if (tb->thread) {
        shutdown(tb->listen_fd, SHUT_RDWR);     /* unblocks accept() */
        if (write(tb->stop_pipe[1], "x", 1) < 0) {
            /* the loop polls with a timeout */
        }
        g_thread_join(tb->thread);
    }
    if (tb->qemu) {
        int status;

        kill(tb->qemu, SIGTERM);
        for (int i = 0; i < 200; i++) {
            if (waitpid(tb->qemu, &status, WNOHANG) == tb->qemu) {
                tb->qemu = 0;
                break;
            }
            g_usleep(10000);
        }
        if (tb->qemu) {
            kill(tb->qemu, SIGKILL);
            waitpid(tb->qemu, &status, 0);
        }
    }
    for (int i = 0; i < 2; i++) {
        if (tb->stop_pipe[i] >= 0) {
            close(tb->stop_pipe[i]);
        }
    }
    if (tb->qemu_fd >= 0) {
        close(tb->qemu_fd);
    }
    if (tb->listen_fd >= 0) {
        close(tb->listen_fd);
    }
    if (tb->plat_fd >= 0) {
        close(tb->plat_fd);
    }
    if (tb->ram_path) {
        unlink(tb->ram_path);
    }
    if (tb->dir) {
        g_autofree char *q = g_build_filename(tb->dir, "qtest", NULL);
        g_autofree char *m = g_build_filename(tb->dir, "qmp", NULL);
        g_autofree char *p = g_build_filename(tb->dir, "plat", NULL);

        unlink(q);
        unlink(m);
        unlink(p);
        rmdir(tb->dir);
    }
    g_free(tb->dir);
    g_free(tb->ram_path);
    g_mutex_clear(&tb->lock);
    g_cond_clear(&tb->cond);
    g_free(tb);
}

DextPlatform *usb_testbed_platform(UsbTestbed *tb)
{
    return tb->plat;
}

DextUsbHost *usb_testbed_host(UsbTestbed *tb)
{
    return tb->host;
}
