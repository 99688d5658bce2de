/* libdext internal: a thread that waits on an fd whose read yields a u64
 * count (eventfd, timerfd) and delivers (count, time) onto a queue. */
#ifndef DEXT_FDSOURCE_H
#define DEXT_FDSOURCE_H

#include "dext/queue.h"

typedef struct DextFdSource DextFdSource;

/* Takes ownership of fd.  name is for the thread. */
int dext_fd_source_create(const char *name, int fd, DextQueue *q,
                          DextEventHandler h, void *ctx, DextFdSource **out);
int dext_fd_source_fd(DextFdSource *s);
void dext_fd_source_set_enabled(DextFdSource *s, bool on);
/* Stop, wait for an in-flight handler, close fd, free. */
void dext_fd_source_destroy(DextFdSource *s);

/* Internal: run fn inline on the calling thread if q is idle (keeps the
 * serial guarantee), else enqueue.  Used by event sources to save a thread
 * wake-up on the interrupt path. */
int dext_queue_run_or_dispatch(DextQueue *q, DextBlockFn fn, void *ctx);
/* Internal: run fn inline on the calling thread if q is idle, holding q
 * (blocks dispatched meanwhile wait, then run in order) and return 0;
 * -EBUSY (nothing run) if q has work or is stopping.  No bound: the caller
 * watches for a hang itself (server.c's watchdog). */
int dext__queue_try_run(DextQueue *q, DextBlockFn fn, void *ctx);

#endif
