#define _GNU_SOURCE
#include "helpers.h"

#include <errno.h>
#include <ftw.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static char dir_buf[256];

const char *th_dir(void)
{
    if (dir_buf[0] == '\0') {
        const char *base = getenv("TMPDIR");
        snprintf(dir_buf, sizeof dir_buf, "%s/mmipc-test-XXXXXX", base && *base ? base : "/tmp");
        ck_assert_msg(mkdtemp(dir_buf) != NULL, "mkdtemp: %s", strerror(errno));
    }
    return dir_buf;
}

const char *th_path(const char *name)
{
    static char bufs[8][320];
    static unsigned next;
    char *b = bufs[next++ % 8];
    snprintf(b, sizeof bufs[0], "%s/%s", th_dir(), name);
    return b;
}

static int rm_one(const char *p, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb, (void)flag, (void)ftw;
    return remove(p);
}

void th_cleanup(void)
{
    if (dir_buf[0] != '\0') {
        nftw(dir_buf, rm_one, 16, FTW_DEPTH | FTW_PHYS);
        dir_buf[0] = '\0';
    }
}

uint64_t th_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

void th_sleep_ms(unsigned ms)
{
    struct timespec ts = {ms / 1000u, (long)(ms % 1000u) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

pid_t th_spawn(int (*fn)(void *arg), void *arg)
{
    pid_t pid = fork();
    ck_assert_msg(pid >= 0, "fork: %s", strerror(errno));
    if (pid == 0)
        _exit(fn(arg));
    return pid;
}

int th_wait(pid_t pid, int timeout_ms)
{
    uint64_t end = th_now_ms() + (uint64_t)timeout_ms;
    for (;;) {
        int st;
        pid_t w = waitpid(pid, &st, WNOHANG);
        if (w == pid) {
            if (WIFEXITED(st))
                return WEXITSTATUS(st);
            return 128 + WTERMSIG(st);
        }
        if (w < 0 && errno != EINTR)
            return -1;
        if (th_now_ms() >= end) {
            kill(pid, SIGKILL);
            waitpid(pid, &st, 0);
            return -1;
        }
        th_sleep_ms(2);
    }
}

void th_kill(pid_t pid)
{
    int st;
    kill(pid, SIGKILL);
    while (waitpid(pid, &st, 0) < 0 && errno == EINTR) {
    }
}

int th_slow(int ms)
{
    static int mult;
    if (mult == 0) {
        const char *e = getenv("CK_TIMEOUT_MULTIPLIER");
        const char *pre = getenv("LD_PRELOAD");
        mult = e != NULL && atoi(e) > 0 ? atoi(e) : 1;
        if (pre != NULL && strstr(pre, "vgpreload") != NULL && mult < 20)
            mult = 20;
    }
    return ms * mult;
}

#define MAX_KIDS 32
static pid_t kids[MAX_KIDS];
static int nkids;

static void forget_kid(pid_t pid)
{
    for (int i = 0; i < nkids; i++) {
        if (kids[i] == pid) {
            kids[i] = kids[--nkids];
            return;
        }
    }
}

pid_t th_spawn_tracked(int (*fn)(void *), void *arg)
{
    ck_assert_int_lt(nkids, MAX_KIDS);
    pid_t pid = th_spawn(fn, arg);
    kids[nkids++] = pid;
    return pid;
}

int th_reap(pid_t pid, int timeout_ms)
{
    int st = th_wait(pid, th_slow(timeout_ms));
    forget_kid(pid);
    return st;
}

void th_kill_tracked(pid_t pid)
{
    th_kill(pid);
    forget_kid(pid);
}

void th_kill_all_tracked(void)
{
    /* SIGKILL also ends a stopped helper. */
    while (nkids > 0)
        th_kill_tracked(kids[0]);
}

uint64_t th_rand(uint64_t *s)
{
    uint64_t x = *s ? *s : 0x9E3779B97F4A7C15ull;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *s = x;
    return x * 0x2545F4914F6CDD1Dull;
}

mmipc_region *th_region(const char *name, size_t size)
{
    struct mmipc_region_opts o = {.size = size};
    mmipc_region *r = NULL;
    int rc = mmipc_region_open(th_path(name), MMIPC_CREATE, &o, &r);
    ck_assert_msg(rc == 0, "mmipc_region_open(%s): %s", name, mmipc_strerror(rc));
    return r;
}
