/*
 * Process-shared synchronisation in the mapped file (DESIGN.md 1, 2).
 *
 * Mutexes are robust, process-shared pthread mutexes; every lock call
 * repairs the guarded object (a callback given by the object) when the
 * previous owner died holding it.
 *
 * mmipc__cond is NOT pthread_cond_t (which hangs for good when a waiter
 * process dies: glibc BZ 21422).  It is an event count: a futex sequence word
 * and a "sleeper present" flag.  Waiter: seq = arm() (loads seq, sets the
 * flag, full fence), re-check the condition, sleep(seq).  Signaler: publish
 * the change, signal() (full fence, and only if the flag is set: clear it,
 * bump seq, FUTEX_WAKE all).  The two fences make a Dekker pair: either the
 * signaler sees the flag or the waiter's re-check sees the change, so it is
 * correct when waiter and signaler hold different locks, or none.  Sleeps are
 * cut into slices of at most MMIPC__SLICE_MS so that a signaler killed between
 * its publication and its wake strands nobody for long.
 */
#ifndef MMIPC_SYNC_H
#define MMIPC_SYNC_H

#include <pthread.h>
#include <stdint.h>
#include <time.h>

#include "layout.h"

#define MMIPC__SLICE_MS 100    /* longest single futex sleep */
#define MMIPC__LOCK_GRACE_MS 5 /* how long timeout 0 may wait for a peer's critical section */

/* A caller's timeout, made absolute on CLOCK_MONOTONIC once at entry. */
struct mmipc__deadline {
    int timeout_ms;       /* as given: < 0 forever, 0 never wait, > 0 */
    int known;            /* wait/lock computed yet?  (lazily: no clock read on the fast path) */
    struct timespec wait; /* deadline for data/space (== now for timeout 0) */
    struct timespec lock; /* deadline for a lock (now + grace for timeout 0) */
};

void mmipc__now(struct timespec *ts);
void mmipc__deadline_init(struct mmipc__deadline *d, int timeout_ms);
/* 1 if the wait deadline has passed (never for timeout < 0). */
int mmipc__deadline_passed(struct mmipc__deadline *d);
/* The error for an expired wait: -EAGAIN for timeout 0, else -ETIMEDOUT. */
int mmipc__deadline_err(const struct mmipc__deadline *d);

typedef void (*mmipc__repair_fn)(void *arg);

/* Once per process, before the first lock (region.c's init does it). */
void mmipc__sync_init(void);

/* Initialise a process-shared robust mutex in place. 0 or -errno. */
int mmipc__mutex_init(pthread_mutex_t *m);
/*
 * Lock m by d->lock (d may be NULL: wait forever).  If the previous owner
 * died holding it, call repair(arg) (may be NULL) and mark it consistent.
 * Returns 0, 1 (locked after a repair), -EAGAIN / -ETIMEDOUT (deadline, per
 * mmipc__deadline_err), -ENOTRECOVERABLE, or -EBADMSG (the lock word is not
 * a robust shared mutex any more: scribbled).
 */
int mmipc__mutex_lock(pthread_mutex_t *m, struct mmipc__deadline *d, mmipc__repair_fn repair, void *arg);
void mmipc__mutex_unlock(pthread_mutex_t *m);

void mmipc__cond_init(struct mmipc__cond *c);
/* Announce a sleeper; returns the sequence to pass to sleep().  The caller
 * must re-check its condition between arm() and sleep(). */
uint32_t mmipc__cond_arm(struct mmipc__cond *c);
/* Sleep while the sequence is still seq, at most one slice and never past
 * d->wait.  Returns 0 (woken, changed, or slice over: re-check) or the
 * deadline error once d->wait has passed. */
int mmipc__cond_sleep(struct mmipc__cond *c, uint32_t seq, struct mmipc__deadline *d);
/* Wake every sleeper; no system call when nobody sleeps. */
void mmipc__cond_broadcast(struct mmipc__cond *c);
/* Same as broadcast: an event count cannot pick one sleeper without keeping
 * per-waiter state that a dead waiter would leak; spurious wakes are allowed. */
#define mmipc__cond_signal mmipc__cond_broadcast
/*
 * Classic condition wait: with m held (locked by mmipc__mutex_lock), arm,
 * unlock, sleep one slice, relock.  Returns what mmipc__mutex_lock returns on
 * relock (0 or 1), or the deadline error (mutex NOT held then), or a lock
 * error (mutex not held).  Callers loop re-checking their predicate.
 */
int mmipc__cond_wait(struct mmipc__cond *c, pthread_mutex_t *m, struct mmipc__deadline *d, mmipc__repair_fn repair,
                     void *arg);

/* How many CPUs this process may run on (spinning is useless on one). */
int mmipc__cpus_allowed(void);

#endif
