/* Dispatch queues: FIFO order from several producers, serial execution,
 * sync dispatch (also from the queue itself), actions, fd sources with the
 * inline fast path, timers, drain on destroy. */
#include "cunit-main.h"
#include "dext/queue.h"
#include "fdsource.h"

#include <errno.h>
#include <glib.h>
#include <sys/eventfd.h>
#include <unistd.h>

typedef struct {
    GMutex lock;
    GArray *seen;      /* producer<<24 | seq */
    gint active;       /* blocks running at the same time */
    gint max_active;
    DextQueue *q;
} Order;

typedef struct {
    Order *o;
    unsigned tag;
} Block;

static void record(void *data)
{
    Block *b = data;
    int now = g_atomic_int_add(&b->o->active, 1) + 1;
    if (now > b->o->max_active) {
        b->o->max_active = now;
    }
    CU_ASSERT_PTR_EQUAL(dext_queue_current(), b->o->q);
    g_mutex_lock(&b->o->lock);
    g_array_append_val(b->o->seen, b->tag);
    g_mutex_unlock(&b->o->lock);
    g_usleep(g_random_int_range(0, 3) == 0 ? 10 : 0);
    g_atomic_int_add(&b->o->active, -1);
    g_free(b);
}

#define PRODUCERS 4
#define PER 2000

typedef struct {
    Order *o;
    unsigned id;
} Producer;

static gpointer produce(gpointer data)
{
    Producer *p = data;
    for (unsigned i = 0; i < PER; i++) {
        Block *b = g_new(Block, 1);
        b->o = p->o;
        b->tag = p->id << 24 | i;
        g_assert(dext_queue_dispatch_async(p->o->q, record, b) == 0);
    }
    return NULL;
}

static void test_fifo_serial(void)
{
    Order o = { 0 };
    g_mutex_init(&o.lock);
    o.seen = g_array_new(FALSE, FALSE, sizeof(unsigned));
    CU_ASSERT_FATAL(dext_queue_create("test-q", &o.q) == 0);
    CU_ASSERT_STRING_EQUAL(dext_queue_name(o.q), "test-q");
    GThread *t[PRODUCERS];
    Producer p[PRODUCERS];
    for (unsigned i = 0; i < PRODUCERS; i++) {
        p[i].o = &o;
        p[i].id = i;
        t[i] = g_thread_new("producer", produce, &p[i]);
    }
    for (unsigned i = 0; i < PRODUCERS; i++) {
        g_thread_join(t[i]);
    }
    CU_ASSERT_EQUAL(dext_queue_destroy(o.q), 0); /* drains */
    CU_ASSERT_EQUAL(o.seen->len, PRODUCERS * PER);
    CU_ASSERT_EQUAL(o.max_active, 1);
    /* Per producer, blocks ran in submission order. */
    unsigned next[PRODUCERS] = { 0 };
    bool ordered = true;
    for (guint i = 0; i < o.seen->len; i++) {
        unsigned tag = g_array_index(o.seen, unsigned, i);
        unsigned id = tag >> 24, seq = tag & 0xffffff;
        if (seq != next[id]) {
            ordered = false;
        }
        next[id] = seq + 1;
    }
    CU_ASSERT(ordered);
    g_array_free(o.seen, TRUE);
    g_mutex_clear(&o.lock);
}

static void set_flag(void *data)
{
    *(int *)data = 1;
}

static void nested_sync(void *data)
{
    DextQueue *q = dext_queue_current();
    int *flag = data;
    /* sync onto the current queue runs inline instead of deadlocking */
    CU_ASSERT_EQUAL(dext_queue_dispatch_sync(q, set_flag, flag, 1000), 0);
    CU_ASSERT_EQUAL(*flag, 1);
    CU_ASSERT_EQUAL(dext_queue_destroy(q), -EDEADLK);
}

static void sleep_block(void *data)
{
    g_usleep(GPOINTER_TO_UINT(data));
}

static void test_sync(void)
{
    DextQueue *q;
    CU_ASSERT_FATAL(dext_queue_create("sync-q", &q) == 0);
    int flag = 0;
    CU_ASSERT_EQUAL(dext_queue_dispatch_sync(q, set_flag, &flag, 1000), 0);
    CU_ASSERT_EQUAL(flag, 1);
    int flag2 = 0;
    CU_ASSERT_EQUAL(dext_queue_dispatch_sync(q, nested_sync, &flag2, 1000), 0);
    /* bounded wait */
    dext_queue_dispatch_async(q, sleep_block, GUINT_TO_POINTER(300000));
    int flag3 = 0;
    CU_ASSERT_EQUAL(dext_queue_dispatch_sync(q, set_flag, &flag3, 50), -ETIMEDOUT);
    CU_ASSERT_EQUAL(dext_queue_destroy(q), 0);
    CU_ASSERT_EQUAL(flag3, 1); /* it ran during the drain */
    CU_ASSERT_PTR_NULL(dext_queue_current());
}

typedef struct {
    GArray *vals;
    DextQueue *q;
} ActCtx;

static void on_action(DextAction *a, void *ctx, const void *args, size_t len)
{
    ActCtx *c = ctx;
    CU_ASSERT_PTR_EQUAL(dext_queue_current(), c->q);
    CU_ASSERT_EQUAL(len, sizeof(int));
    g_array_append_val(c->vals, *(const int *)args);
}

static void test_action(void)
{
    ActCtx c = { g_array_new(FALSE, FALSE, sizeof(int)), NULL };
    CU_ASSERT_FATAL(dext_queue_create("act-q", &c.q) == 0);
    DextAction *a;
    CU_ASSERT_FATAL(dext_action_create(c.q, on_action, &c, &a) == 0);
    CU_ASSERT_PTR_EQUAL(dext_action_queue(a), c.q);
    for (int i = 0; i < 100; i++) {
        CU_ASSERT_EQUAL(dext_action_invoke(a, &i, sizeof(i)), 0);
    }
    char big[DEXT_ACTION_MAX_ARGS + 1] = { 0 };
    CU_ASSERT_EQUAL(dext_action_invoke(a, big, sizeof(big)), -EINVAL);
    dext_action_release(a); /* queued invocations keep it alive */
    dext_queue_destroy(c.q);
    CU_ASSERT_EQUAL(c.vals->len, 100);
    for (int i = 0; i < (int)c.vals->len; i++) {
        CU_ASSERT_EQUAL(g_array_index(c.vals, int, i), i);
    }
    g_array_free(c.vals, TRUE);
}

typedef struct {
    DextQueue *q;
    gint calls;
    guint64 total;
    guint64 last_time;
    bool on_queue;
} EvCtx;

static void on_event(void *ctx, uint64_t count, uint64_t time_ns)
{
    EvCtx *e = ctx;
    if (dext_queue_current() != e->q) {
        e->on_queue = false;
    }
    CU_ASSERT(time_ns >= e->last_time);
    CU_ASSERT(time_ns <= dext_time_ns());
    e->last_time = time_ns;
    e->total += count;
    g_atomic_int_inc(&e->calls);
}

static void test_fd_source(void)
{
    EvCtx e = { .on_queue = true };
    CU_ASSERT_FATAL(dext_queue_create("irq-q", &e.q) == 0);
    int fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    DextFdSource *s;
    CU_ASSERT_FATAL(dext_fd_source_create("irq", fd, e.q, on_event, &e, &s) == 0);
    for (int i = 0; i < 50; i++) {
        uint64_t one = 1;
        CU_ASSERT_EQUAL(write(fd, &one, 8), 8);
        if (i % 10 == 0) {
            g_usleep(1000);
        }
    }
    /* a busy queue makes deliveries go through the queue */
    dext_queue_dispatch_async(e.q, sleep_block, GUINT_TO_POINTER(20000));
    uint64_t three = 3;
    CU_ASSERT_EQUAL(write(fd, &three, 8), 8);
    gint64 end = g_get_monotonic_time() + 2000000;
    while (e.total < 53 && g_get_monotonic_time() < end) {
        g_usleep(1000);
    }
    dext_fd_source_destroy(s);
    CU_ASSERT_EQUAL(e.total, 53); /* counts are never lost */
    CU_ASSERT(e.calls >= 1 && e.calls <= 51);
    CU_ASSERT(e.on_queue);
    dext_queue_destroy(e.q);
}

static void test_timer(void)
{
    EvCtx e = { .on_queue = true };
    CU_ASSERT_FATAL(dext_queue_create("timer-q", &e.q) == 0);
    DextTimerSource *t;
    CU_ASSERT_FATAL(dext_timer_source_create(e.q, on_event, &e, &t) == 0);
    uint64_t start = dext_time_ns();
    CU_ASSERT_EQUAL(dext_timer_source_arm(t, 20000000, 5000000), 0);
    gint64 end = g_get_monotonic_time() + 2000000;
    while (e.total < 4 && g_get_monotonic_time() < end) {
        g_usleep(1000);
    }
    CU_ASSERT(e.total >= 4);
    CU_ASSERT(e.last_time - start >= 20000000 + 3 * 5000000 - 1000000);
    CU_ASSERT_EQUAL(dext_timer_source_arm(t, 0, 0), 0); /* disarm */
    g_usleep(20000);
    uint64_t after = e.total;
    g_usleep(30000);
    CU_ASSERT_EQUAL(e.total, after);
    dext_timer_source_destroy(t);
    CU_ASSERT(e.on_queue);
    dext_queue_destroy(e.q);
}

int main(void)
{
    static const DextTest tests[] = {
        { "fifo-serial", test_fifo_serial },
        { "sync", test_sync },
        { "action", test_action },
        { "fd-source", test_fd_source },
        { "timer", test_timer },
        { NULL, NULL },
    };
    return dext_cunit_run("queue", tests);
}
