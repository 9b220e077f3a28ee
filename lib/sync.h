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
 * bump seq, FUTEX_WAKE all; right after an unlock on x86, the unlock's
 * LOCKed exchange is that fence: mmipc__unlock_broadcast).  The two fences
 * make a Dekker pair: either the signaler sees the flag or the waiter's
 * re-check sees the change, so it is correct when waiter and signaler hold
 * different locks, or none.  Sleeps are cut into slices of at most
 * MMIPC__SLICE_MS so that a signaler killed between its publication and its
 * wake strands nobody for long.
 */
#ifndef MMIPC_SYNC_H
#define MMIPC_SYNC_H

#include <errno.h>
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
static inline void mmipc__deadline_init(struct mmipc__deadline *d, int timeout_ms)
{
    d->timeout_ms = timeout_ms;
    d->known = 0;
}
/* 1 if the wait deadline has passed (never for timeout < 0). */
int mmipc__deadline_passed(struct mmipc__deadline *d);
/* The error for an expired wait: -EAGAIN for timeout 0, else -ETIMEDOUT. */
int mmipc__deadline_err(const struct mmipc__deadline *d);

typedef void (*mmipc__repair_fn)(void *arg);

/* Once per process, before the first lock (region.c's init does it). */
void mmipc__sync_init(void);

/* Initialise a process-shared robust mutex in place. 0 or -errno. */
int mmipc__mutex_init(pthread_mutex_t *m);
#ifdef __GLIBC__
/* glibc keeps the mutex type in the mutex itself, i.e. in the file.  A
 * scribbled type could turn our robust mutex into a plain one (a dead owner
 * would then block everyone) or a PI one, so it is checked before every lock
 * against the kind of a mutex initialised like ours (-1 until
 * mmipc__sync_init has run). */
extern int mmipc__expected_kind __attribute__((visibility("hidden")));
int mmipc__kind_ok_slow(pthread_mutex_t *m);

static inline int mmipc__kind_ok(pthread_mutex_t *m)
{
    int k = __atomic_load_n(&mmipc__expected_kind, __ATOMIC_ACQUIRE);
    if (__builtin_expect(k == -1, 0))
        return mmipc__kind_ok_slow(m);
    return __atomic_load_n(&m->__data.__kind, __ATOMIC_RELAXED) == k;
}
#else
static inline int mmipc__kind_ok(pthread_mutex_t *m)
{
    (void)m;
    return 1;
}
#endif

/* The rest of mmipc__mutex_lock, given the trylock's result rc != 0. */
int mmipc__mutex_lock_slow(pthread_mutex_t *m, struct mmipc__deadline *d, mmipc__repair_fn repair, void *arg, int rc);

/*
 * Lock m by d->lock (d may be NULL: wait forever).  If the previous owner
 * died holding it, call repair(arg) (may be NULL) and mark it consistent.
 * Returns 0, 1 (locked after a repair), -EAGAIN / -ETIMEDOUT (deadline, per
 * mmipc__deadline_err), -ENOTRECOVERABLE, or -EBADMSG (the lock word is not
 * a robust shared mutex any more: scribbled).  Inline: the uncontended path
 * is the type check and one trylock (no clock read, no extra call).
 */
static inline int mmipc__mutex_lock(pthread_mutex_t *m, struct mmipc__deadline *d, mmipc__repair_fn repair, void *arg)
{
    if (__builtin_expect(!mmipc__kind_ok(m), 0))
        return -EBADMSG;
    int rc = pthread_mutex_trylock(m);
    if (__builtin_expect(rc == 0, 1))
        return 0;
    return mmipc__mutex_lock_slow(m, d, repair, arg, rc);
}

static inline void mmipc__mutex_unlock(pthread_mutex_t *m)
{
    pthread_mutex_unlock(m);
}

void mmipc__cond_init(struct mmipc__cond *c);
/* Announce a sleeper; returns the sequence to pass to sleep().  The caller
 * must re-check its condition between arm() and sleep(). */
uint32_t mmipc__cond_arm(struct mmipc__cond *c);
/* Sleep while the sequence is still seq, at most one slice and never past
 * d->wait.  Returns 0 (woken, changed, or slice over: re-check) or the
 * deadline error once d->wait has passed. */
int mmipc__cond_sleep(struct mmipc__cond *c, uint32_t seq, struct mmipc__deadline *d);
/* The part of a broadcast that finds a sleeper: clear the flag, bump the
 * sequence, FUTEX_WAKE every sleeper. */
void mmipc__cond_wake(struct mmipc__cond *c);

/* Wake every sleeper; no system call when nobody sleeps. */
static inline void mmipc__cond_broadcast(struct mmipc__cond *c)
{
    /* Pairs with the fence in arm: either we see the sleeper's flag, or its
     * re-check (after its fence) sees our change. */
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    if (__atomic_load_n(&c->sleeper, __ATOMIC_RELAXED) != 0)
        mmipc__cond_wake(c);
}

/* ThreadSanitizer does not model fences, and a lost wake-up is no data
 * race, so under it (gcc or clang) the plain fence is kept anyway. */
#if defined(__SANITIZE_THREAD__)
#define MMIPC__TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define MMIPC__TSAN 1
#endif
#endif
#if (defined(__x86_64__) || defined(__i386__)) && defined(__GLIBC__) && !defined(MMIPC__TSAN)
#define MMIPC__UNLOCK_IS_FENCE 1
#endif

/*
 * Unlock m, under which the caller published a change (with no store to
 * shared memory after the publication), then, if `wake`, broadcast c.
 *
 * On x86 with glibc, a successful unlock of a (robust) mutex is an atomic
 * exchange of the lock word, i.e. a LOCKed instruction: a full barrier under
 * x86-TSO.  Every store before it (the publication) is globally visible
 * before any load after it (the sleeper flag), which is all the fence in
 * mmipc__cond_broadcast provides, so here it is only a compiler barrier.
 * (The unlock must be an atomic read-modify-write in any case: it has to
 * learn, in the same step as it frees the word, whether waiters sleep on
 * it.)  A failed unlock (a scribbled owner or type: glibc returns before any
 * atomic), other architectures and TSan builds use the real fence.  Only a
 * liveness test can catch a mistake here: test_sleep_handoffs.
 */
static inline void mmipc__unlock_broadcast(pthread_mutex_t *m, struct mmipc__cond *c, int wake)
{
    int rc = pthread_mutex_unlock(m);
    if (!wake)
        return;
#ifdef MMIPC__UNLOCK_IS_FENCE
    if (rc == 0) {
        __atomic_signal_fence(__ATOMIC_SEQ_CST);
        if (__atomic_load_n(&c->sleeper, __ATOMIC_RELAXED) != 0)
            mmipc__cond_wake(c);
        return;
    }
#endif
    (void)rc;
    mmipc__cond_broadcast(c);
}

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
