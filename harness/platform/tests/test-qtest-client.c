/*
 * Unit tests of the qtest client's demultiplexer against a scripted fake
 * QEMU (two unix sockets served by a thread in this process), attached with
 * dext_platform_qtest_attach().  Covers what real QEMU rarely does on
 * demand: a FAIL reply to a posted write (reported by the next waiting
 * call), asynchronous IRQ lines between replies, a garbage line, QMP errors
 * and events, a reply that never comes (timeout, then the late reply is
 * skipped), and EOF in the middle of a call.
 */
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>
#include <CUnit/Basic.h>
#include <glib.h>

#include "platform.h"

typedef struct Fake {
    char *dir, *qpath, *mpath;
    int lq, lm, q, m;
    GThread *th;
    volatile bool hang_next;      /* do not answer the next "inl 0x70" */
    volatile bool close_on_71;    /* EOF instead of answering inb 0x71 */
} Fake;

static int listen_at(const char *path)
{
    struct sockaddr_un sa = { .sun_family = AF_UNIX };
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);

    g_strlcpy(sa.sun_path, path, sizeof(sa.sun_path));
    g_assert(bind(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0);
    g_assert(listen(fd, 1) == 0);
    return fd;
}

static void say(int fd, const char *s)
{
    if (send(fd, s, strlen(s), MSG_NOSIGNAL) < 0) {
        /* the client may be gone: fine for a fake */
    }
}

static void qt_line(Fake *f, const char *l, bool *deferred)
{
    if (!strcmp(l, "msi_intercept") || !strncmp(l, "irq_intercept_in", 16)) {
        say(f->q, "OK\n");
    } else if (!strncmp(l, "outb 0x99 ", 10)) {
        say(f->q, "FAIL injected failure\n");   /* a posted write fails */
    } else if (!strncmp(l, "out", 3)) {
        say(f->q, "OK\n");
    } else if (!strcmp(l, "inl 0x70")) {
        if (f->hang_next) {
            f->hang_next = false;
            *deferred = true;                   /* answer with the next */
            return;
        }
        /* async lines around the reply must not be taken as replies */
        say(f->q, "IRQ raise 5\nIRQ msi 0x00000000fee00000 0x00000001\n"
                  "OK 0x12345678\nIRQ lower 5\n");
    } else if (!strcmp(l, "inb 0x71")) {
        if (f->close_on_71) {
            shutdown(f->q, SHUT_RDWR);
            return;
        }
        say(f->q, "garbage from a confused server\n");
    } else if (!strcmp(l, "inw 0x72")) {
        if (*deferred) {
            say(f->q, "OK 0x0000dead\n");       /* the late reply */
            *deferred = false;
        }
        say(f->q, "OK 0x0000beef\n");
    } else {
        say(f->q, "FAIL Unknown command\n");
    }
}

static gpointer fake_main(gpointer opaque)
{
    Fake *f = opaque;
    GString *qb = g_string_new(NULL), *mb = g_string_new(NULL);
    bool deferred = false;
    char buf[4096];

    f->q = accept(f->lq, NULL, NULL);
    f->m = accept(f->lm, NULL, NULL);
    say(f->m, "{\"QMP\": {\"version\": {}, \"capabilities\": []}}\r\n");
    for (;;) {
        struct pollfd p[2] = { { f->q, POLLIN }, { f->m, POLLIN } };
        char *nl;
        ssize_t n;

        if (poll(p, 2, 5000) <= 0) {
            break;
        }
        if (p[0].revents) {
            n = recv(f->q, buf, sizeof(buf), 0);
            if (n <= 0) {
                break;
            }
            g_string_append_len(qb, buf, n);
            while ((nl = strchr(qb->str, '\n'))) {
                *nl = 0;
                qt_line(f, qb->str, &deferred);
                g_string_erase(qb, 0, nl - qb->str + 1);
            }
        }
        if (p[1].revents) {
            n = recv(f->m, buf, sizeof(buf), 0);
            if (n <= 0) {
                break;
            }
            g_string_append_len(mb, buf, n);
            while ((nl = strchr(mb->str, '\n'))) {
                *nl = 0;
                if (strstr(mb->str, "qmp_capabilities")) {
                    say(f->m, "{\"return\": {}}\r\n");
                } else if (strstr(mb->str, "\"fail-me\"")) {
                    say(f->m, "{\"event\": \"NOISE\", \"data\": {}}\r\n"
                              "{\"error\": {\"class\": \"GenericError\", "
                              "\"desc\": \"as asked\"}}\r\n");
                } else {
                    say(f->m, "{\"event\": \"DEVICE_DELETED\", \"data\": "
                              "{\"device\": \"d0\"}}\r\n"
                              "{\"return\": {\"answer\": 42}}\r\n");
                }
                g_string_erase(mb, 0, nl - mb->str + 1);
            }
        }
    }
    g_string_free(qb, TRUE);
    g_string_free(mb, TRUE);
    return NULL;
}

static Fake *fake_start(void)
{
    Fake *f = g_new0(Fake, 1);

    f->dir = g_dir_make_tmp("dextfake-XXXXXX", NULL);
    f->qpath = g_build_filename(f->dir, "q", NULL);
    f->mpath = g_build_filename(f->dir, "m", NULL);
    f->lq = listen_at(f->qpath);
    f->lm = listen_at(f->mpath);
    f->th = g_thread_new("fake-qemu", fake_main, f);
    return f;
}

static void fake_stop(Fake *f)
{
    g_thread_join(f->th);
    close(f->q);
    close(f->m);
    close(f->lq);
    close(f->lm);
    unlink(f->qpath);
    unlink(f->mpath);
    rmdir(f->dir);
    g_free(f->qpath);
    g_free(f->mpath);
    g_free(f->dir);
    g_free(f);
}

static DextPlatform *attach(Fake *f, unsigned timeout_ms)
{
    DextAttachDesc d = {
        .qtest_socket = f->qpath, .qmp_socket = f->mpath,
        .machine = "pc", .timeout_ms = timeout_ms,
    };
    DextPlatform *p = NULL;

    CU_ASSERT_EQUAL(dext_platform_qtest_attach(&d, &p), 0);
    return p;
}

static void test_demux(void)
{
    Fake *f = fake_start();
    DextPlatform *p = attach(f, 2000);
    uint32_t v = 0;
    DextIrqStats st;
    char *ret = NULL, *ev = NULL;

    CU_ASSERT_PTR_NOT_NULL_FATAL(p);
    CU_ASSERT_TRUE(dext_platform_has_msi(p));
    /* reply between async lines */
    CU_ASSERT_EQUAL(dext_platform_port_read(p, 0x70, 4, &v), 0);
    CU_ASSERT_EQUAL(v, 0x12345678);
    dext_platform_irq_stats(p, &st);
    CU_ASSERT_EQUAL(st.msi_received, 1);
    CU_ASSERT_EQUAL(st.msi_unclaimed, 1);       /* nobody bound it */
    CU_ASSERT_EQUAL(st.intx_edges, 1);
    /* a posted write fails: the next waiting call reports it, once */
    CU_ASSERT_EQUAL(dext_platform_port_write(p, 0x99, 1, 1), 0);
    CU_ASSERT_EQUAL(dext_platform_port_write(p, 0x80, 1, 1), 0);
    CU_ASSERT_EQUAL(dext_platform_flush(p), -EIO);
    CU_ASSERT_PTR_NOT_NULL(strstr(dext_platform_last_error(p), "injected"));
    CU_ASSERT_EQUAL(dext_platform_flush(p), 0);
    CU_ASSERT_EQUAL(dext_platform_port_write(p, 0x99, 1, 1), 0);
    CU_ASSERT_EQUAL(dext_platform_port_read(p, 0x70, 4, &v), -EIO);
    CU_ASSERT_EQUAL(dext_platform_port_read(p, 0x70, 4, &v), 0);
    /* a line that is no reply fails that call only */
    CU_ASSERT_EQUAL(dext_platform_port_read(p, 0x71, 1, &v), -EIO);
    CU_ASSERT_EQUAL(dext_platform_port_read(p, 0x72, 2, &v), 0);
    CU_ASSERT_EQUAL(v, 0xbeef);
    /* argument checks never reach the wire */
    CU_ASSERT_EQUAL(dext_platform_port_read(p, 0x70, 8, &v), -EINVAL);
    CU_ASSERT_EQUAL(dext_platform_port_read(p, 0xffff, 2, &v), -ERANGE);
    /* no reply: bounded wait; the late reply is skipped, not misrouted */
    f->hang_next = true;
    CU_ASSERT_EQUAL(dext_platform_port_read(p, 0x70, 4, &v), -ETIMEDOUT);
    CU_ASSERT_EQUAL(dext_platform_port_read(p, 0x72, 2, &v), 0);
    CU_ASSERT_EQUAL(v, 0xbeef);
    /* QMP: return value, error text, events kept for a waiter */
    CU_ASSERT_EQUAL(dext_platform_qmp(p, "device_del", "{\"id\":\"d0\"}",
                                      &ret), 0);
    CU_ASSERT_STRING_EQUAL(ret ? ret : "", "{\"answer\":42}");
    g_free(ret);
    CU_ASSERT_EQUAL(dext_platform_qmp_wait_event(p, "DEVICE_DELETED", 1000,
                                                 &ev), 0);
    CU_ASSERT_PTR_NOT_NULL(ev && strstr(ev, "d0"));
    g_free(ev);
    CU_ASSERT_EQUAL(dext_platform_qmp_wait_event(p, "DEVICE_DELETED", 50,
                                                 NULL), -ETIMEDOUT);
    CU_ASSERT_EQUAL(dext_platform_qmp(p, "fail-me", NULL, NULL), -EIO);
    CU_ASSERT_STRING_EQUAL(dext_platform_last_error(p),
                           "GenericError: as asked");
    CU_ASSERT_EQUAL(dext_platform_qmp_wait_event(p, "NOISE", 0, NULL), 0);
    /* no memory when attached without a RAM file */
    {
        int fd;
        uint64_t sz;
        DextDmaRange r;

        CU_ASSERT_EQUAL(dext_platform_memory_fd(p, &fd, &sz), -ENOTSUP);
        CU_ASSERT_EQUAL(dext_platform_dma_alloc(p, 4096, 0, &r), -ENOTSUP);
    }
    /* EOF in the middle of a call */
    f->close_on_71 = true;
    CU_ASSERT_EQUAL(dext_platform_port_read(p, 0x71, 1, &v), -EPIPE);
    CU_ASSERT_FALSE(dext_platform_alive(p));
    CU_ASSERT_EQUAL(dext_platform_port_read(p, 0x70, 4, &v), -ESHUTDOWN);
    CU_ASSERT_EQUAL(dext_platform_qmp(p, "x", NULL, NULL), -ESHUTDOWN);
    dext_platform_destroy(p);
    fake_stop(f);
}

static void test_attach_refused(void)
{
    DextAttachDesc d = { .qtest_socket = "/nonexistent/q",
                         .qmp_socket = "/nonexistent/m" };
    DextPlatform *p = (DextPlatform *)0x1;

    CU_ASSERT_EQUAL(dext_platform_qtest_attach(&d, &p), -ENOENT);
    CU_ASSERT_PTR_NULL(p);
    CU_ASSERT_EQUAL(dext_platform_qtest_attach(NULL, &p), -EINVAL);
}

int main(void)
{
    CU_pSuite s;
    unsigned fails;

    if (CU_initialize_registry() != CUE_SUCCESS) {
        return 2;
    }
    s = CU_add_suite("qtest-client", NULL, NULL);
    CU_add_test(s, "demux-fake-qemu", test_demux);
    CU_add_test(s, "attach-refused", test_attach_refused);
    CU_basic_set_mode(CU_BRM_VERBOSE);
    CU_basic_run_tests();
    fails = CU_get_number_of_failures() + CU_get_number_of_tests_failed();
    CU_cleanup_registry();
    return fails ? 1 : 0;
}
