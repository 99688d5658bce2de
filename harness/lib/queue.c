/*
 * Serial dispatch queues, actions, fd-driven event sources and timers.
 */
#include "dext/queue.h"
#include "fdsource.h"

#include <errno.h>
#include <glib.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#define SYNC_DEFAULT_MS 60000

typedef struct Item {
    DextBlockFn fn;
    void *ctx;
    struct Item *next;
} Item;

struct DextQueue {
    char *name;
    GThread *thread;
    GMutex lock;
    GCond cond;
    Item *head, *tail;
    bool running;     /* a block is executing (on the thread or inline) */
    bool stopping;
};

static __thread DextQueue *tls_current;

uint64_t dext_time_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void run_block(DextQueue *q, DextBlockFn fn, void *ctx)
{
    DextQueue *prev = tls_current;
    tls_current = q;
    fn(ctx);
    tls_current = prev;
}

static gpointer queue_thread(gpointer data)
{
    DextQueue *q = data;
    g_mutex_lock(&q->lock);
    for (;;) {
        /* Wait for work and for any inline runner to finish (also before
         * stopping: an inline runner still uses q). */
        while (q->running || (!q->head && !q->stopping)) {
            g_cond_wait(&q->cond, &q->lock);
        }
        if (!q->head) {
            break; /* stopping and drained */
        }
        Item *it = q->head;
        q->head = it->next;
        if (!q->head) {
            q->tail = NULL;
        }
        q->running = true;
        g_mutex_unlock(&q->lock);
        run_block(q, it->fn, it->ctx);
        g_free(it);
        g_mutex_lock(&q->lock);
        q->running = false;
        /* No broadcast: only this thread waits on q->cond. */
    }
    g_mutex_unlock(&q->lock);
    return NULL;
}

int dext_queue_create(const char *name, DextQueue **out)
{
    if (!name || !out) {
        return -EINVAL;
    }
    DextQueue *q = g_new0(DextQueue, 1);
    q->name = g_strdup(name);
    g_mutex_init(&q->lock);
    g_cond_init(&q->cond);
    GError *err = NULL;
    /* Thread names are limited to 15 chars by the kernel; glib truncates. */
    q->thread = g_thread_try_new(name, queue_thread, q, &err);
    if (!q->thread) {
        g_error_free(err);
        g_mutex_clear(&q->lock);
        g_cond_clear(&q->cond);
        g_free(q->name);
        g_free(q);
        return -EAGAIN;
    }
    *out = q;
    return 0;
}

int dext_queue_destroy(DextQueue *q)
{
    if (!q) {
        return 0;
    }
    if (tls_current == q) {
        return -EDEADLK;
    }
    g_mutex_lock(&q->lock);
    q->stopping = true;
    g_cond_broadcast(&q->cond);
    g_mutex_unlock(&q->lock);
    g_thread_join(q->thread);
    g_mutex_clear(&q->lock);
    g_cond_clear(&q->cond);
    g_free(q->name);
    g_free(q);
    return 0;
}

const char *dext_queue_name(const DextQueue *q)
{
    return q->name;
}

DextQueue *dext_queue_current(void)
{
    return tls_current;
}

int dext_queue_dispatch_async(DextQueue *q, DextBlockFn fn, void *ctx)
{
    if (!q || !fn) {
        return -EINVAL;
    }
    Item *it = g_new0(Item, 1);
    it->fn = fn;
    it->ctx = ctx;
    g_mutex_lock(&q->lock);
    if (q->stopping) {
        g_mutex_unlock(&q->lock);
        g_free(it);
        return -ESHUTDOWN;
    }
    if (q->tail) {
        q->tail->next = it;
    } else {
        q->head = it;
    }
    q->tail = it;
    g_cond_broadcast(&q->cond);
    g_mutex_unlock(&q->lock);
    return 0;
}

int dext__queue_try_run(DextQueue *q, DextBlockFn fn, void *ctx)
{
    g_mutex_lock(&q->lock);
    if (q->head || q->running || q->stopping) {
        g_mutex_unlock(&q->lock);
        return -EBUSY;
    }
    /* Holding the queue: its thread takes nothing until we are done, and
     * blocks queued meanwhile run after us, in order. */
    q->running = true;
    g_mutex_unlock(&q->lock);
    run_block(q, fn, ctx);
    g_mutex_lock(&q->lock);
    q->running = false;
    if (q->head || q->stopping) {
        /* Only then can the queue's thread be waiting on us: an idle
         * queue's thread needs no wake-up (saves a futex call per block). */
        g_cond_broadcast(&q->cond);
    }
    g_mutex_unlock(&q->lock);
    return 0;
}

int dext_queue_run_or_dispatch(DextQueue *q, DextBlockFn fn, void *ctx)
{
    if (dext__queue_try_run(q, fn, ctx) == 0) {
        return 0;
    }
    return dext_queue_dispatch_async(q, fn, ctx);
}

typedef struct {
    DextBlockFn fn;
    void *ctx;
    GMutex lock;
    GCond cond;
    bool done;
    int refs;
} SyncCall;

static void sync_unref(SyncCall *s)
{
    g_mutex_lock(&s->lock);
    bool last = --s->refs == 0;
    g_mutex_unlock(&s->lock);
    if (last) {
        g_mutex_clear(&s->lock);
        g_cond_clear(&s->cond);
        g_free(s);
    }
}

static void sync_trampoline(void *data)
{
    SyncCall *s = data;
    s->fn(s->ctx);
    g_mutex_lock(&s->lock);
    s->done = true;
    g_cond_signal(&s->cond);
    g_mutex_unlock(&s->lock);
    sync_unref(s);
}

int dext_queue_dispatch_sync(DextQueue *q, DextBlockFn fn, void *ctx, unsigned timeout_ms)
{
    if (!q || !fn) {
        return -EINVAL;
    }
    if (tls_current == q) {
        fn(ctx);
        return 0;
    }
    SyncCall *s = g_new0(SyncCall, 1);
    s->fn = fn;
    s->ctx = ctx;
    s->refs = 2;
    g_mutex_init(&s->lock);
    g_cond_init(&s->cond);
    int rc = dext_queue_dispatch_async(q, sync_trampoline, s);
    if (rc < 0) {
        s->refs = 1;
        sync_unref(s);
        return rc;
    }
    gint64 end = g_get_monotonic_time() +
                 (gint64)(timeout_ms ? timeout_ms : SYNC_DEFAULT_MS) * 1000;
    g_mutex_lock(&s->lock);
    while (!s->done) {
        if (!g_cond_wait_until(&s->cond, &s->lock, end)) {
            break;
        }
    }
    rc = s->done ? 0 : -ETIMEDOUT;
    g_mutex_unlock(&s->lock);
    sync_unref(s);
    return rc;
}

/* ---- actions --------------------------------------------------------- */

struct DextAction {
    gint refs;
    DextQueue *q;
    DextActionFn fn;
    void *ctx;
};

typedef struct {
    DextAction *a;
    size_t len;
    uint8_t args[];
} ActionCall;

static void action_unref(DextAction *a)
{
    if (g_atomic_int_dec_and_test(&a->refs)) {
        g_free(a);
    }
}

int dext_action_create(DextQueue *q, DextActionFn fn, void *ctx, DextAction **out)
{
    if (!q || !fn || !out) {
        return -EINVAL;
    }
    DextAction *a = g_new0(DextAction, 1);
    a->refs = 1;
    a->q = q;
    a->fn = fn;
    a->ctx = ctx;
    *out = a;
    return 0;
}

static void action_trampoline(void *data)
{
    ActionCall *c = data;
    c->a->fn(c->a, c->a->ctx, c->args, c->len);
    action_unref(c->a);
    g_free(c);
}

int dext_action_invoke(DextAction *a, const void *args, size_t len)
{
    if (!a || len > DEXT_ACTION_MAX_ARGS || (len && !args)) {
        return -EINVAL;
    }
    ActionCall *c = g_malloc(sizeof(*c) + len);
    c->a = a;
    c->len = len;
    if (len) {
        memcpy(c->args, args, len);
    }
    g_atomic_int_inc(&a->refs);
    int rc = dext_queue_dispatch_async(a->q, action_trampoline, c);
    if (rc < 0) {
        action_unref(a);
        g_free(c);
    }
    return rc;
}

DextQueue *dext_action_queue(const DextAction *a)
{
    return a->q;
}

void dext_action_release(DextAction *a)
{
    if (a) {
        action_unref(a);
    }
}

/* ---- fd sources -------------------------------------------------------- */

struct DextFdSource {
    char *name;
    int fd;
    int stop_fd;
    DextQueue *q;
    DextEventHandler h;
    void *ctx;
    GThread *thread;
    gint enabled;
    gint inflight;       /* deliveries queued or running */
    bool draining;       /* destroy waits for inflight to reach 0 */
    GMutex lock;
    GCond cond;
};

typedef struct {
    DextFdSource *s;
    uint64_t count;
    uint64_t time;
} Delivery;

static void deliver(void *data)
{
    Delivery *d = data;
    DextFdSource *s = d->s;
    if (g_atomic_int_get(&s->enabled)) {
        s->h(s->ctx, d->count, d->time);
    }
    g_free(d);
    g_mutex_lock(&s->lock);
    s->inflight--;
    if (s->draining) {
        g_cond_broadcast(&s->cond); /* not per interrupt: a futex call */
    }
    g_mutex_unlock(&s->lock);
}

static gpointer fd_source_thread(gpointer data)
{
    DextFdSource *s = data;
    /* DEXT_EVENT_PRIORITY=fifo: event threads (interrupts, timers) run
     * SCHED_FIFO when the process may, so a loaded machine delays their
     * wake-up less.  Opt-in: a handler spinning at that priority would
     * starve the CPU it runs on. */
    const char *prio = g_getenv("DEXT_EVENT_PRIORITY");
    if (prio && !strcmp(prio, "fifo")) {
        struct sched_param sp = { .sched_priority = 1 };
        pthread_setschedparam(pthread_self(), SCHED_FIFO, &sp);
    }
    struct pollfd p[2] = {
        { .fd = s->fd, .events = POLLIN },
        { .fd = s->stop_fd, .events = POLLIN },
    };
    for (;;) {
        int r = poll(p, 2, -1); /* woken by stop_fd: destroy is the bound */
        if (r < 0 && errno == EINTR) {
            continue;
        }
        if (r < 0 || (p[1].revents & POLLIN)) {
            break;
        }
        if (p[0].revents & (POLLERR | POLLNVAL)) {
            break;
        }
        if (!(p[0].revents & POLLIN)) {
            continue;
        }
        uint64_t count;
        ssize_t n = read(s->fd, &count, sizeof(count));
        uint64_t now = dext_time_ns();
        if (n != sizeof(count)) {
            continue;
        }
        Delivery *d = g_new(Delivery, 1);
        d->s = s;
        d->count = count;
        d->time = now;
        g_mutex_lock(&s->lock);
        s->inflight++;
        g_mutex_unlock(&s->lock);
        if (dext_queue_run_or_dispatch(s->q, deliver, d) < 0) {
            g_mutex_lock(&s->lock);
            s->inflight--;
            g_mutex_unlock(&s->lock);
            g_free(d);
        }
    }
    return NULL;
}

int dext_fd_source_create(const char *name, int fd, DextQueue *q, DextEventHandler h,
                          void *ctx, DextFdSource **out)
{
    if (fd < 0 || !q || !h || !out) {
        return -EINVAL;
    }
    DextFdSource *s = g_new0(DextFdSource, 1);
    s->stop_fd = eventfd(0, EFD_CLOEXEC);
    if (s->stop_fd < 0) {
        int e = -errno;
        g_free(s);
        return e;
    }
    s->name = g_strdup(name);
    s->fd = fd;
    s->q = q;
    s->h = h;
    s->ctx = ctx;
    s->enabled = 1;
    g_mutex_init(&s->lock);
    g_cond_init(&s->cond);
    s->thread = g_thread_try_new(name, fd_source_thread, s, NULL);
    if (!s->thread) {
        close(s->stop_fd);
        g_mutex_clear(&s->lock);
        g_cond_clear(&s->cond);
        g_free(s->name);
        g_free(s);
        return -EAGAIN;
    }
    *out = s;
    return 0;
}

int dext_fd_source_fd(DextFdSource *s)
{
    return s->fd;
}

void dext_fd_source_set_enabled(DextFdSource *s, bool on)
{
    g_atomic_int_set(&s->enabled, on);
}

void dext_fd_source_destroy(DextFdSource *s)
{
    if (!s) {
        return;
    }
    uint64_t one = 1;
    g_atomic_int_set(&s->enabled, 0);
    if (write(s->stop_fd, &one, sizeof(one)) < 0) {
        /* eventfd write cannot fail short of overflow; the thread will also
         * stop on the fd being closed below. */
    }
    g_thread_join(s->thread);
    /* Deliveries already queued must run (disabled) before we free s; if
     * destroy runs on the source's own queue they cannot, so do not wait. */
    if (dext_queue_current() != s->q) {
        g_mutex_lock(&s->lock);
        s->draining = true;
        gint64 end = g_get_monotonic_time() + SYNC_DEFAULT_MS * 1000;
        while (s->inflight && g_cond_wait_until(&s->cond, &s->lock, end)) {
        }
        g_mutex_unlock(&s->lock);
    }
    if (s->inflight) {
        /* Leak rather than free memory a queued delivery still uses. */
        close(s->stop_fd);
        close(s->fd);
        return;
    }
    close(s->stop_fd);
    close(s->fd);
    g_mutex_clear(&s->lock);
    g_cond_clear(&s->cond);
    g_free(s->name);
    g_free(s);
}

/* ---- timers ------------------------------------------------------------ */

struct DextTimerSource {
    DextFdSource *src;
};

int dext_timer_source_create(DextQueue *q, DextEventHandler h, void *ctx,
                             DextTimerSource **out)
{
    if (!q || !h || !out) {
        return -EINVAL;
    }
    int fd = timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC | TFD_NONBLOCK);
    if (fd < 0) {
        return -errno;
    }
    DextTimerSource *t = g_new0(DextTimerSource, 1);
    int rc = dext_fd_source_create("dext-timer", fd, q, h, ctx, &t->src);
    if (rc < 0) {
        close(fd);
        g_free(t);
        return rc;
    }
    *out = t;
    return 0;
}

int dext_timer_source_arm(DextTimerSource *t, uint64_t delay_ns, uint64_t interval_ns)
{
    struct itimerspec its = {
        .it_value = { delay_ns / 1000000000ull, delay_ns % 1000000000ull },
        .it_interval = { interval_ns / 1000000000ull, interval_ns % 1000000000ull },
    };
    if (timerfd_settime(dext_fd_source_fd(t->src), 0, &its, NULL) < 0) {
        return -errno;
    }
    return 0;
}

void dext_timer_source_destroy(DextTimerSource *t)
{
    if (t) {
        dext_fd_source_destroy(t->src);
        g_free(t);
    }
}
