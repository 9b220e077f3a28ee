/* White-box tests of lib/sync.h: the robust mutex wrapper and the futex
 * event-count condition variable, shared through a MAP_SHARED anonymous
 * mapping with forked helper processes that really get SIGKILLed and
 * SIGSTOPped.  Helper processes never call ck_assert: they report through
 * the shared page and their exit code, and every wait has a deadline. */
#define _GNU_SOURCE
#include <check.h>
#include <errno.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <linux/filter.h>
#include <linux/seccomp.h>

#include "helpers.h"
#include "sync.h"

#define LOAD(p) __atomic_load_n((p), __ATOMIC_ACQUIRE)
#define STORE(p, v) __atomic_store_n((p), (v), __ATOMIC_RELEASE)
#define INC(p) __atomic_add_fetch((p), 1, __ATOMIC_ACQ_REL)

struct shm {
    mmipc__lock_slot lock;
    struct mmipc__cond cond;  /* "gen changed" / "full" */
    struct mmipc__cond cond2; /* "not full" */
    int repairs;
    int held, release, started, armed;
    int gen;
    int full;
    uint64_t value;
    int rc[8];
};
static struct shm *S;

/* Tracked helper processes and stretched deadlines: tests/helpers.c. */
#define slow th_slow
#define spawn th_spawn_tracked
#define reap th_reap
#define kill_kid th_kill_tracked

static void setup(void)
{
    S = mmap(NULL, sizeof *S, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    ck_assert_msg(S != MAP_FAILED, "mmap: %s", strerror(errno));
    ck_assert_int_eq(mmipc__mutex_init(&S->lock.m), 0);
    mmipc__cond_init(&S->cond);
    mmipc__cond_init(&S->cond2);
}

static void teardown(void)
{
    /* SIGKILL also ends a stopped helper. */
    th_kill_all_tracked();
    if (S != NULL && S != MAP_FAILED)
        munmap(S, sizeof *S);
    S = NULL;
    th_cleanup();
}

static void repair_cb(void *arg)
{
    struct shm *s = arg;
    INC(&s->repairs);
}

static int wait_ge(int *p, int want, int timeout_ms)
{
    uint64_t end = th_now_ms() + (uint64_t)slow(timeout_ms);
    while (LOAD(p) < want) {
        if (th_now_ms() >= end)
            return 0;
        th_sleep_ms(1);
    }
    return 1;
}

/* Wait until pid is asleep in the kernel (state S in /proc/PID/stat). */
static int wait_sleeping(pid_t pid, int timeout_ms)
{
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    uint64_t end = th_now_ms() + (uint64_t)slow(timeout_ms);
    for (;;) {
        FILE *f = fopen(path, "r");
        if (f != NULL) {
            char buf[512];
            size_t n = fread(buf, 1, sizeof buf - 1, f);
            fclose(f);
            buf[n] = '\0';
            const char *rp = strrchr(buf, ')');
            if (rp != NULL && rp[1] == ' ' && rp[2] == 'S')
                return 1;
        }
        if (th_now_ms() >= end)
            return 0;
        th_sleep_ms(2);
    }
}

static double ms_since(const struct timespec *t0)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)(t.tv_sec - t0->tv_sec) * 1e3 + (double)(t.tv_nsec - t0->tv_nsec) / 1e6;
}

static void lock_ok(int timeout_ms, int want)
{
    struct mmipc__deadline d;
    mmipc__deadline_init(&d, timeout_ms);
    int rc = mmipc__mutex_lock(&S->lock.m, &d, repair_cb, S);
    ck_assert_msg(rc == want, "mmipc__mutex_lock = %d (%s), want %d", rc, rc < 0 ? mmipc_strerror(rc) : "", want);
}

/* ------------------------------------------------------------ mutex */

/* Take the lock and keep it until released (or killed / stopped). */
static int holder(void *arg)
{
    (void)arg;
    struct mmipc__deadline d;
    mmipc__deadline_init(&d, slow(5000));
    int rc = mmipc__mutex_lock(&S->lock.m, &d, repair_cb, S);
    S->rc[0] = rc;
    if (rc < 0)
        return 2;
    STORE(&S->held, 1);
    int ok = wait_ge(&S->release, 1, 20000);
    mmipc__mutex_unlock(&S->lock.m);
    return ok ? 0 : 3;
}

/* Block in lock until the holder goes away. */
static int blocked_locker(void *arg)
{
    (void)arg;
    struct mmipc__deadline d;
    mmipc__deadline_init(&d, slow(10000));
    STORE(&S->started, 1);
    int rc = mmipc__mutex_lock(&S->lock.m, &d, repair_cb, S);
    S->rc[1] = rc;
    if (rc < 0)
        return 2;
    S->value++;
    mmipc__mutex_unlock(&S->lock.m);
    return 0;
}

START_TEST(test_mutex_owner_killed)
{
    /* Round 1: the owner dies; the next locker finds EOWNERDEAD. */
    pid_t a = spawn(holder, NULL);
    ck_assert_msg(wait_ge(&S->held, 1, 10000), "holder did not lock: %d", S->rc[0]);
    kill_kid(a);
    lock_ok(2000, 1);
    ck_assert_int_eq(LOAD(&S->repairs), 1);
    mmipc__mutex_unlock(&S->lock.m);
    lock_ok(2000, 0);
    mmipc__mutex_unlock(&S->lock.m);
    lock_ok(-1, 0);
    mmipc__mutex_unlock(&S->lock.m);
    ck_assert_int_eq(LOAD(&S->repairs), 1);

    /* Round 2: another process is blocked in lock when the owner dies. */
    STORE(&S->repairs, 0);
    STORE(&S->held, 0);
    a = spawn(holder, NULL);
    ck_assert_msg(wait_ge(&S->held, 1, 10000), "holder did not lock: %d", S->rc[0]);
    pid_t b = spawn(blocked_locker, NULL);
    ck_assert(wait_ge(&S->started, 1, 10000));
    ck_assert_msg(wait_sleeping(b, 5000), "locker never blocked");
    th_sleep_ms(20);
    kill_kid(a);
    int st = reap(b, 10000);
    ck_assert_msg(st == 0, "blocked locker: status %d, lock rc %d", st, S->rc[1]);
    ck_assert_int_eq(S->rc[1], 1);
    ck_assert_int_eq(LOAD(&S->repairs), 1);
    ck_assert_uint_eq(S->value, 1);
    lock_ok(2000, 0);
    mmipc__mutex_unlock(&S->lock.m);

    /* A third process locks normally afterwards. */
    STORE(&S->started, 0);
    b = spawn(blocked_locker, NULL);
    ck_assert_int_eq(reap(b, 10000), 0);
    ck_assert_int_eq(S->rc[1], 0);
    ck_assert_int_eq(LOAD(&S->repairs), 1);
}
END_TEST

START_TEST(test_mutex_stopped_peer)
{
    pid_t a = spawn(holder, NULL);
    ck_assert_msg(wait_ge(&S->held, 1, 10000), "holder did not lock: %d", S->rc[0]);
    ck_assert_int_eq(kill(a, SIGSTOP), 0);

    struct timespec t0;
    struct mmipc__deadline d;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    mmipc__deadline_init(&d, 0);
    int rc = mmipc__mutex_lock(&S->lock.m, &d, repair_cb, S);
    double el = ms_since(&t0);
    ck_assert_msg(rc == -EAGAIN, "timeout 0 on a held lock: %d (%s)", rc, mmipc_strerror(rc));
    /* "a few milliseconds" of grace; generous bound for a loaded machine */
    ck_assert_msg(el < slow(300), "timeout 0 took %.1f ms", el);

    clock_gettime(CLOCK_MONOTONIC, &t0);
    mmipc__deadline_init(&d, 200);
    rc = mmipc__mutex_lock(&S->lock.m, &d, repair_cb, S);
    el = ms_since(&t0);
    ck_assert_msg(rc == -ETIMEDOUT, "timeout 200 on a held lock: %d (%s)", rc, mmipc_strerror(rc));
    ck_assert_msg(el >= 200.0 && el < 200 + slow(2000), "timeout 200 took %.1f ms", el);
    ck_assert_int_eq(LOAD(&S->repairs), 0);

    /* The peer resumes and lets go; the lock works as before. */
    ck_assert_int_eq(kill(a, SIGCONT), 0);
    STORE(&S->release, 1);
    ck_assert_int_eq(reap(a, 10000), 0);
    lock_ok(2000, 0);
    mmipc__mutex_unlock(&S->lock.m);
    lock_ok(0, 0);
    mmipc__mutex_unlock(&S->lock.m);
    ck_assert_int_eq(LOAD(&S->repairs), 0);
}
END_TEST

/* ------------------------------------------------------------ cond */

/* Wait under the mutex (classic condition wait) until gen >= *arg.
 * Exit 0 when seen, 2 on deadline. */
static int gen_waiter(void *arg)
{
    int want = *(const int *)arg;
    struct mmipc__deadline d;
    mmipc__deadline_init(&d, slow(8000));
    int rc = mmipc__mutex_lock(&S->lock.m, &d, repair_cb, S);
    if (rc < 0)
        return 3;
    INC(&S->armed);
    while (LOAD(&S->gen) < want) {
        rc = mmipc__cond_wait(&S->cond, &S->lock.m, &d, repair_cb, S);
        if (rc < 0)
            return 2; /* deadline: mutex not held */
    }
    mmipc__mutex_unlock(&S->lock.m);
    return 0;
}

/* Wait without any mutex: arm, re-check, sleep. */
static int gen_waiter_nolock(void *arg)
{
    int want = *(const int *)arg;
    struct mmipc__deadline d;
    mmipc__deadline_init(&d, slow(8000));
    int first = 1;
    for (;;) {
        uint32_t seq = mmipc__cond_arm(&S->cond);
        if (first) {
            INC(&S->armed);
            first = 0;
        }
        if (LOAD(&S->gen) >= want)
            return 0;
        if (mmipc__cond_sleep(&S->cond, seq, &d) < 0)
            return 2;
    }
}

struct bump_arg {
    int gen;
    int broadcast;
};

/* Publish gen under the lock and signal or broadcast. */
static int bumper(void *arg)
{
    const struct bump_arg *b = arg;
    struct mmipc__deadline d;
    mmipc__deadline_init(&d, slow(3000));
    int rc = mmipc__mutex_lock(&S->lock.m, &d, repair_cb, S);
    if (rc < 0)
        return 3;
    STORE(&S->gen, b->gen);
    if (b->broadcast)
        mmipc__cond_broadcast(&S->cond);
    else
        mmipc__cond_signal(&S->cond);
    mmipc__mutex_unlock(&S->lock.m);
    /* And once more without holding anything. */
    if (b->broadcast)
        mmipc__cond_broadcast(&S->cond);
    else
        mmipc__cond_signal(&S->cond);
    return 0;
}

START_TEST(test_cond_waiter_killed)
{
    static const int forever = 1000000, one = 1, two = 2;

    /* A waiter blocked in mmipc__cond_wait is SIGKILLed. */
    pid_t victim = spawn(gen_waiter, (void *)&forever);
    ck_assert(wait_ge(&S->armed, 1, 10000));
    ck_assert_msg(wait_sleeping(victim, 5000), "victim never slept");
    ck_assert_uint_eq(LOAD(&S->cond.sleeper), 1);
    kill_kid(victim);

    /* A second victim, killed in the lock-free arm/sleep path. */
    pid_t victim2 = spawn(gen_waiter_nolock, (void *)&forever);
    ck_assert(wait_ge(&S->armed, 2, 10000));
    ck_assert_msg(wait_sleeping(victim2, 5000), "victim never slept");
    kill_kid(victim2);

    /* A live waiter in another process. */
    pid_t w = spawn(gen_waiter, (void *)&one);
    ck_assert(wait_ge(&S->armed, 3, 10000));
    ck_assert_msg(wait_sleeping(w, 5000), "waiter never slept");

    /* The next signal returns (in a process of its own, with a deadline)... */
    struct bump_arg b1 = {1, 0};
    int st = reap(spawn(bumper, &b1), 5000);
    ck_assert_msg(st == 0, "signal after a dead waiter: status %d (-1 = hung)", st);
    /* ...and the live waiter wakes. */
    st = reap(w, 5000);
    ck_assert_msg(st == 0, "live waiter: status %d", st);

    /* Same with broadcast, and a fresh live waiter without the mutex. */
    pid_t w2 = spawn(gen_waiter_nolock, (void *)&two);
    ck_assert(wait_ge(&S->armed, 4, 10000));
    ck_assert_msg(wait_sleeping(w2, 5000), "waiter never slept");
    pid_t victim3 = spawn(gen_waiter, (void *)&forever);
    ck_assert(wait_ge(&S->armed, 5, 10000));
    ck_assert_msg(wait_sleeping(victim3, 5000), "victim never slept");
    kill_kid(victim3);
    struct bump_arg b2 = {2, 1};
    st = reap(spawn(bumper, &b2), 5000);
    ck_assert_msg(st == 0, "broadcast after a dead waiter: status %d (-1 = hung)", st);
    st = reap(w2, 5000);
    ck_assert_msg(st == 0, "live waiter: status %d", st);

    /* Nobody waits any more: the mutex is free and nothing needed repair
     * (the victims died asleep, not holding it). */
    lock_ok(1000, 0);
    mmipc__mutex_unlock(&S->lock.m);
}
END_TEST

START_TEST(test_cond_timed)
{
    static const int timeouts[] = {0, 1, 30, 150, 500};
    for (size_t i = 0; i < sizeof timeouts / sizeof timeouts[0]; i++) {
        int ms = timeouts[i];
        struct timespec t0;
        struct mmipc__deadline d;
        clock_gettime(CLOCK_MONOTONIC, &t0);
        mmipc__deadline_init(&d, ms);
        int rc, slices = 0;
        do {
            uint32_t seq = mmipc__cond_arm(&S->cond);
            rc = mmipc__cond_sleep(&S->cond, seq, &d);
            slices++;
        } while (rc == 0 && slices < 10000);
        double el = ms_since(&t0);
        int want = ms == 0 ? -EAGAIN : -ETIMEDOUT;
        ck_assert_msg(rc == want, "sleep timeout %d: %d (%s)", ms, rc, mmipc_strerror(rc));
        ck_assert_msg(el >= ms && el < ms + slow(2000), "sleep timeout %d ms took %.1f ms", ms, el);
        ck_assert_int_eq(mmipc__deadline_passed(&d), 1);
        ck_assert_int_eq(mmipc__deadline_err(&d), want);
    }

    /* Classic wait with the mutex: times out, mutex not held then. */
    static const int cw[] = {0, 250};
    for (size_t i = 0; i < sizeof cw / sizeof cw[0]; i++) {
        struct timespec t0;
        struct mmipc__deadline d;
        clock_gettime(CLOCK_MONOTONIC, &t0);
        mmipc__deadline_init(&d, cw[i]);
        int rc = mmipc__mutex_lock(&S->lock.m, &d, repair_cb, S);
        ck_assert_int_eq(rc, 0);
        int loops = 0;
        while (LOAD(&S->gen) == 0 && loops++ < 10000) {
            rc = mmipc__cond_wait(&S->cond, &S->lock.m, &d, repair_cb, S);
            if (rc < 0)
                break;
        }
        double el = ms_since(&t0);
        int want = cw[i] == 0 ? -EAGAIN : -ETIMEDOUT;
        ck_assert_msg(rc == want, "cond_wait timeout %d: %d (%s)", cw[i], rc, mmipc_strerror(rc));
        ck_assert_msg(el >= cw[i] && el < cw[i] + slow(2000), "cond_wait timeout %d ms took %.1f ms", cw[i], el);
        /* Not held: a trylock from this thread succeeds. */
        ck_assert_int_eq(pthread_mutex_trylock(&S->lock.m), 0);
        pthread_mutex_unlock(&S->lock.m);
    }

    /* An infinite deadline never passes. */
    struct mmipc__deadline d;
    mmipc__deadline_init(&d, -1);
    ck_assert_int_eq(mmipc__deadline_passed(&d), 0);
}
END_TEST

START_TEST(test_cond_broadcast_all)
{
    enum { N = 4 };
    static const int one = 1;
    pid_t w[N];
    for (int i = 0; i < N; i++)
        w[i] = spawn(i % 2 ? gen_waiter : gen_waiter_nolock, (void *)&one);
    ck_assert(wait_ge(&S->armed, N, 10000));
    for (int i = 0; i < N; i++)
        ck_assert_msg(wait_sleeping(w[i], 5000), "waiter %d never slept", i);
    th_sleep_ms(20);

    ck_assert_int_eq(mmipc__mutex_lock(&S->lock.m, NULL, repair_cb, S), 0);
    uint32_t seq0 = LOAD(&S->cond.seq);
    STORE(&S->gen, 1);
    mmipc__cond_broadcast(&S->cond);
    mmipc__mutex_unlock(&S->lock.m);
    /* Someone was asleep, so the broadcast bumped the sequence. */
    ck_assert_uint_ne(LOAD(&S->cond.seq), seq0);

    for (int i = 0; i < N; i++) {
        int st = reap(w[i], 5000);
        ck_assert_msg(st == 0, "waiter %d: status %d", i, st);
    }
}
END_TEST

/* ------------------------------------------------------------ no syscall */

/* Kill this process if it ever calls futex(2). */
static int forbid_futex(void)
{
#ifndef SECCOMP_RET_KILL_PROCESS
#define SECCOMP_RET_KILL_PROCESS SECCOMP_RET_KILL
#endif
    struct sock_filter f[] = {
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_futex, 0, 1),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_KILL_PROCESS),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
    };
    struct sock_fprog prog = {.len = (unsigned short)(sizeof f / sizeof f[0]), .filter = f};
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0)
        return -1;
    if (prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog) != 0)
        return -1;
    return 0;
}

static int signal_under_seccomp(void *arg)
{
    (void)arg;
    if (forbid_futex() != 0)
        return 77;
    for (int i = 0; i < 1000; i++) {
        mmipc__cond_broadcast(&S->cond);
        mmipc__cond_signal(&S->cond);
    }
    return 0;
}

static int under_valgrind(void)
{
    const char *p = getenv("LD_PRELOAD");
    return p != NULL && strstr(p, "vgpreload") != NULL;
}

START_TEST(test_cond_no_waiter_no_syscall)
{
    mmipc__cond_init(&S->cond);
    uint32_t seq0 = LOAD(&S->cond.seq);
    ck_assert_uint_eq(LOAD(&S->cond.sleeper), 0);
    for (int i = 0; i < 100; i++) {
        mmipc__cond_broadcast(&S->cond);
        mmipc__cond_signal(&S->cond);
    }
    /* No sleeper: the sequence is untouched, so no FUTEX_WAKE was due. */
    ck_assert_uint_eq(LOAD(&S->cond.seq), seq0);
    ck_assert_uint_eq(LOAD(&S->cond.sleeper), 0);

    /* arm() announces a sleeper; the next broadcast consumes it once. */
    uint32_t s = mmipc__cond_arm(&S->cond);
    ck_assert_uint_eq(s, seq0);
    ck_assert_uint_eq(LOAD(&S->cond.sleeper), 1);
    mmipc__cond_broadcast(&S->cond);
    ck_assert_uint_ne(LOAD(&S->cond.seq), seq0);
    ck_assert_uint_eq(LOAD(&S->cond.sleeper), 0);
    uint32_t seq1 = LOAD(&S->cond.seq);
    mmipc__cond_signal(&S->cond);
    mmipc__cond_broadcast(&S->cond);
    ck_assert_uint_eq(LOAD(&S->cond.seq), seq1);
    /* A sleep on a stale sequence returns at once. */
    struct mmipc__deadline d;
    mmipc__deadline_init(&d, slow(5000));
    struct timespec t0;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    ck_assert_int_eq(mmipc__cond_sleep(&S->cond, s, &d), 0);
    ck_assert_msg(ms_since(&t0) < slow(1000), "sleep on a stale sequence blocked");

    if (under_valgrind())
        return;
    /* The real proof: futex(2) is fatal in this helper, yet signal and
     * broadcast with nobody waiting run fine. */
    ck_assert_uint_eq(LOAD(&S->cond.sleeper), 0);
    int st = reap(spawn(signal_under_seccomp, NULL), 5000);
    if (st == 77) {
        fprintf(stderr, "note: seccomp unavailable; futex-free signalling checked by state only\n");
        return;
    }
    ck_assert_msg(st == 0, "signal/broadcast with no waiter made a futex call (status %d)", st);
    if (getenv("MMIPC_TEST_VERBOSE") != NULL)
        fprintf(stderr, "seccomp: signal/broadcast without waiters made no futex call\n");
    /* And the filter does catch the wake when someone is asleep. */
    mmipc__cond_arm(&S->cond);
    st = reap(spawn(signal_under_seccomp, NULL), 5000);
    ck_assert_msg(st == 128 + SIGSYS, "broadcast to a sleeper under seccomp: status %d, want SIGSYS", st);
}
END_TEST

/* ------------------------------------------------------------ handoff */

#define HANDOFFS 10000

static int producer(void *arg)
{
    (void)arg;
    struct mmipc__deadline d;
    mmipc__deadline_init(&d, slow(25000));
    for (uint64_t i = 1; i <= HANDOFFS; i++) {
        if (mmipc__mutex_lock(&S->lock.m, &d, repair_cb, S) < 0)
            return 2;
        while (S->full) {
            if (mmipc__cond_wait(&S->cond2, &S->lock.m, &d, repair_cb, S) < 0)
                return 3;
        }
        S->value = i;
        S->full = 1;
        mmipc__cond_signal(&S->cond);
        mmipc__mutex_unlock(&S->lock.m);
    }
    return 0;
}

static int consumer(void *arg)
{
    (void)arg;
    struct mmipc__deadline d;
    mmipc__deadline_init(&d, slow(25000));
    for (uint64_t i = 1; i <= HANDOFFS; i++) {
        if (mmipc__mutex_lock(&S->lock.m, &d, repair_cb, S) < 0)
            return 2;
        while (!S->full) {
            if (mmipc__cond_wait(&S->cond, &S->lock.m, &d, repair_cb, S) < 0)
                return 3;
        }
        if (S->value != i) {
            mmipc__mutex_unlock(&S->lock.m);
            return 4;
        }
        S->full = 0;
        S->rc[0]++;
        mmipc__cond_signal(&S->cond2);
        mmipc__mutex_unlock(&S->lock.m);
    }
    return 0;
}

START_TEST(test_cond_handoff)
{
    pid_t c = spawn(consumer, NULL);
    pid_t p = spawn(producer, NULL);
    int sp = reap(p, 30000);
    int sc = reap(c, 30000);
    ck_assert_msg(sp == 0 && sc == 0, "producer status %d, consumer status %d, %d handed off", sp, sc, S->rc[0]);
    ck_assert_int_eq(S->rc[0], HANDOFFS);
    ck_assert_uint_eq(S->value, HANDOFFS);
    ck_assert_int_eq(LOAD(&S->repairs), 0);
}
END_TEST

Suite *make_sync_suite(void)
{
    Suite *s = suite_create("sync");

    TCase *tc = tcase_create("mutex");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 20);
    tcase_add_test(tc, test_mutex_owner_killed);
    tcase_add_test(tc, test_mutex_stopped_peer);
    suite_add_tcase(s, tc);

    tc = tcase_create("cond");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 20);
    tcase_add_test(tc, test_cond_waiter_killed);
    tcase_add_test(tc, test_cond_timed);
    tcase_add_test(tc, test_cond_broadcast_all);
    tcase_add_test(tc, test_cond_no_waiter_no_syscall);
    suite_add_tcase(s, tc);

    tc = tcase_create("handoff");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 40);
    tcase_add_test(tc, test_cond_handoff);
    suite_add_tcase(s, tc);
    return s;
}
