/* Robust mutexes, the futex event count, and clocks.  Calls nothing of ours
 * except atomics.h (DESIGN.md: sync.c is the bottom layer). */
#include "config.h"

#include "sync.h"

#include <errno.h>
#include <limits.h>
#include <linux/futex.h>
#include <sched.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "atomics.h"

void mmipc__now(struct timespec *ts)
{
    clock_gettime(CLOCK_MONOTONIC, ts);
}

static void ts_add_ms(struct timespec *ts, long ms)
{
    ts->tv_sec += ms / 1000;
    ts->tv_nsec += (ms % 1000) * 1000000L;
    if (ts->tv_nsec >= 1000000000L) {
        ts->tv_sec++;
        ts->tv_nsec -= 1000000000L;
    }
}

static int ts_before(const struct timespec *a, const struct timespec *b)
{
    return a->tv_sec < b->tv_sec || (a->tv_sec == b->tv_sec && a->tv_nsec < b->tv_nsec);
}

/* Make the deadlines absolute: called only once something has to wait, so
 * the uncontended path never reads the clock. */
static void deadline_fix(struct mmipc__deadline *d)
{
    if (d->known || d->timeout_ms < 0)
        return;
    mmipc__now(&d->wait);
    d->lock = d->wait;
    ts_add_ms(&d->wait, d->timeout_ms);
    ts_add_ms(&d->lock, d->timeout_ms > MMIPC__LOCK_GRACE_MS ? d->timeout_ms : MMIPC__LOCK_GRACE_MS);
    d->known = 1;
}

int mmipc__deadline_passed(struct mmipc__deadline *d)
{
    struct timespec now;
    if (d == NULL || d->timeout_ms < 0)
        return 0;
    if (d->timeout_ms == 0)
        return 1;
    deadline_fix(d);
    mmipc__now(&now);
    return !ts_before(&now, &d->wait);
}

int mmipc__deadline_err(const struct mmipc__deadline *d)
{
    return d != NULL && d->timeout_ms == 0 ? -EAGAIN : -ETIMEDOUT;
}

/* ---------------------------------------------------------------- mutexes */

#ifdef __GLIBC__
/* The expected kind is read from a mutex initialised like ours, once, by
 * mmipc__sync_init (called before any region is opened). */
int mmipc__expected_kind = -1;
static pthread_once_t kind_once = PTHREAD_ONCE_INIT;

static void init_kind(void)
{
    pthread_mutex_t m;
    if (mmipc__mutex_init(&m) == 0) {
        __atomic_store_n(&mmipc__expected_kind, m.__data.__kind, __ATOMIC_RELEASE);
        pthread_mutex_destroy(&m);
    }
}

void mmipc__sync_init(void)
{
    pthread_once(&kind_once, init_kind);
}

int mmipc__kind_ok_slow(pthread_mutex_t *m)
{
    mmipc__sync_init();
    int k = __atomic_load_n(&mmipc__expected_kind, __ATOMIC_ACQUIRE);
    return __atomic_load_n(&m->__data.__kind, __ATOMIC_RELAXED) == k;
}
#else
void mmipc__sync_init(void)
{
}
#endif

int mmipc__mutex_init(pthread_mutex_t *m)
{
    pthread_mutexattr_t a;
    int rc = pthread_mutexattr_init(&a);
    if (rc != 0)
        return -rc;
    rc = pthread_mutexattr_setpshared(&a, PTHREAD_PROCESS_SHARED);
    if (rc == 0)
        rc = pthread_mutexattr_setrobust(&a, PTHREAD_MUTEX_ROBUST);
    if (rc == 0) {
        memset(m, 0, sizeof *m);
        rc = pthread_mutex_init(m, &a);
    }
    pthread_mutexattr_destroy(&a);
    return -rc;
}

#if defined(__SANITIZE_THREAD__)
/* ThreadSanitizer (gcc 12) does not intercept pthread_mutex_clocklock, so it
 * would not see those acquisitions and report every critical section as a
 * race.  Under TSan only, wait with the intercepted CLOCK_REALTIME variant,
 * converting the deadline. */
static int clocklock(pthread_mutex_t *m, const struct timespec *mono)
{
    struct timespec now_m, now_r, abs;
    mmipc__now(&now_m);
    clock_gettime(CLOCK_REALTIME, &now_r);
    long long ns = (long long)(mono->tv_sec - now_m.tv_sec) * 1000000000LL + (mono->tv_nsec - now_m.tv_nsec);
    if (ns < 0)
        ns = 0;
    abs = now_r;
    abs.tv_sec += ns / 1000000000LL;
    abs.tv_nsec += ns % 1000000000LL;
    if (abs.tv_nsec >= 1000000000L) {
        abs.tv_sec++;
        abs.tv_nsec -= 1000000000L;
    }
    return pthread_mutex_timedlock(m, &abs);
}
#else
static int clocklock(pthread_mutex_t *m, const struct timespec *mono)
{
    return pthread_mutex_clocklock(m, CLOCK_MONOTONIC, mono);
}
#endif

int mmipc__mutex_lock_slow(pthread_mutex_t *m, struct mmipc__deadline *d, mmipc__repair_fn repair, void *arg, int rc)
{
    if (rc == EBUSY) {
        if (d == NULL || d->timeout_ms < 0) {
            rc = pthread_mutex_lock(m);
        } else {
            deadline_fix(d);
            rc = clocklock(m, &d->lock);
        }
    }
    switch (rc) {
    case 0:
        return 0;
    case EOWNERDEAD:
        /* The owner died inside its critical section: bring the object back
         * to its last published state before anyone else sees it. */
        if (repair != NULL)
            repair(arg);
        pthread_mutex_consistent(m);
        return 1;
    case ETIMEDOUT:
        return mmipc__deadline_err(d);
    case ENOTRECOVERABLE:
        return -ENOTRECOVERABLE;
    case EDEADLK:
        return -EDEADLK;
    default:
        return -EBADMSG;
    }
}

/* ---------------------------------------------------------------- event count */

void mmipc__cond_init(struct mmipc__cond *c)
{
    mmipc__store_relaxed(&c->seq, 0);
    mmipc__store_relaxed(&c->sleeper, 0);
}

uint32_t mmipc__cond_arm(struct mmipc__cond *c)
{
    uint32_t seq = mmipc__load_acquire(&c->seq);
    mmipc__store_relaxed(&c->sleeper, 1);
    /* Pairs with the fence in broadcast: either the signaler sees our flag,
     * or our re-check (after this fence) sees its change. */
    mmipc__fence();
    return seq;
}

int mmipc__cond_sleep(struct mmipc__cond *c, uint32_t seq, struct mmipc__deadline *d)
{
    struct timespec until;
    if (mmipc__deadline_passed(d))
        return mmipc__deadline_err(d);
    mmipc__now(&until);
    ts_add_ms(&until, MMIPC__SLICE_MS);
    if (d != NULL && d->timeout_ms >= 0 && ts_before(&d->wait, &until))
        until = d->wait;
    /* Shared (not PRIVATE) futex: the word is in a MAP_SHARED file.
     * FUTEX_WAIT_BITSET takes an absolute CLOCK_MONOTONIC time.  Any return
     * (woken, EAGAIN because seq moved, EINTR, timeout) means "re-check". */
    syscall(SYS_futex, &c->seq, FUTEX_WAIT_BITSET, seq, &until, NULL, FUTEX_BITSET_MATCH_ANY);
    return 0;
}

void mmipc__cond_wake(struct mmipc__cond *c)
{
    /* Clear first: a waiter that arms after this reads the old sequence
     * before its own fence, so the bump below still wakes it. */
    mmipc__store_relaxed(&c->sleeper, 0);
    __atomic_fetch_add(&c->seq, 1, __ATOMIC_RELEASE);
    syscall(SYS_futex, &c->seq, FUTEX_WAKE, INT_MAX, NULL, NULL, 0);
}

int mmipc__cond_wait(struct mmipc__cond *c, pthread_mutex_t *m, struct mmipc__deadline *d, mmipc__repair_fn repair,
                     void *arg)
{
    uint32_t seq = mmipc__cond_arm(c);
    int rc;
    mmipc__mutex_unlock(m);
    rc = mmipc__cond_sleep(c, seq, d);
    if (rc != 0)
        return rc;
    return mmipc__mutex_lock(m, d, repair, arg);
}

int mmipc__cpus_allowed(void)
{
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof set, &set) != 0)
        return 2;
    return CPU_COUNT(&set);
}
