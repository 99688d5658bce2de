/*
 * libdext execution model: serial dispatch queues, actions, and event
 * sources (interrupts, timers) that deliver onto a queue.
 *
 * A DextQueue runs the blocks given to it one at a time in FIFO order on
 * its own thread (like an IODispatchQueue).  Everything a driver does for a
 * service runs on that service's default queue unless the driver says
 * otherwise, so driver code needs no locks as long as it stays on one queue.
 *
 * Ownership: the creator owns the queue/source/action and destroys it.
 * Threading: every function here may be called from any thread.
 * Errors: negative errno.
 */
#ifndef DEXT_QUEUE_H
#define DEXT_QUEUE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct DextQueue DextQueue;
typedef void (*DextBlockFn)(void *ctx);

/* Create a serial queue with its own thread.  name is copied. */
int dext_queue_create(const char *name, DextQueue **out);
/* Run every block already queued, then stop the thread and free the queue.
 * Must not be called from the queue itself (-EDEADLK, nothing freed). */
int dext_queue_destroy(DextQueue *q);
const char *dext_queue_name(const DextQueue *q);

/* Enqueue fn(ctx); returns at once.  -ESHUTDOWN once destroy has begun. */
int dext_queue_dispatch_async(DextQueue *q, DextBlockFn fn, void *ctx);
/* Run fn(ctx) on q and wait for it (bounded by timeout_ms; 0 = no bound is
 * NOT allowed and means the library default of 60 s, the limit for a
 * critical callback).  Called on q itself, runs fn inline.  -ETIMEDOUT if
 * the bound expires (fn still runs later; ctx must outlive it). */
int dext_queue_dispatch_sync(DextQueue *q, DextBlockFn fn, void *ctx,
                             unsigned timeout_ms);
/* The queue running the calling thread's current block, or NULL. */
DextQueue *dext_queue_current(void);

/* An action: a callback bound to a queue, invoked with a small argument
 * blob that is copied (at most DEXT_ACTION_MAX_ARGS bytes). */
#define DEXT_ACTION_MAX_ARGS 256
typedef struct DextAction DextAction;
typedef void (*DextActionFn)(DextAction *a, void *ctx, const void *args,
                             size_t len);
int dext_action_create(DextQueue *q, DextActionFn fn, void *ctx,
                       DextAction **out);
/* Asynchronously run the action on its queue with a copy of args. */
int dext_action_invoke(DextAction *a, const void *args, size_t len);
DextQueue *dext_action_queue(const DextAction *a);
/* Frees the action; invocations already queued still run (they hold a
 * reference). */
void dext_action_release(DextAction *a);

/* Timer sources: handler(ctx, count, time_ns) runs on the queue when the
 * timer fires (count = expirations since the last call; time = CLOCK_MONOTONIC
 * ns when the source thread saw it). */
typedef void (*DextEventHandler)(void *ctx, uint64_t count, uint64_t time_ns);
typedef struct DextTimerSource DextTimerSource;
int dext_timer_source_create(DextQueue *q, DextEventHandler h, void *ctx,
                             DextTimerSource **out);
/* Fire once after delay_ns, then every interval_ns if non-zero.
 * delay_ns == 0 disarms. */
int dext_timer_source_arm(DextTimerSource *t, uint64_t delay_ns,
                          uint64_t interval_ns);
/* Stops the thread; after return the handler is not called again (a call
 * already running on another queue thread is waited for). */
void dext_timer_source_destroy(DextTimerSource *t);

/* Current CLOCK_MONOTONIC time in ns (the clock of every timestamp). */
uint64_t dext_time_ns(void);

#ifdef __cplusplus
}
#endif
#endif
