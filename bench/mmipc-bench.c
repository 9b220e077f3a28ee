/*
 * mmipc-bench: mmipc side by side with the IPC a Linux programmer would use
 * instead, measured in the same run so that a noisy machine hurts all alike.
 *
 *   mmipc-bench [--quick] [--csv FILE] [--reps N] [--only LIST] [--dir DIR]
 *
 * Every measurement forks its sides into separate processes, times them on
 * CLOCK_MONOTONIC after a warm-up, and runs each workload R times round-robin
 * over the transports (the starting transport rotates each repetition); the
 * tables show the median with [min-max] and mmipc's ratio to every peer.
 *
 * Workloads
 *   W1  ping-pong round trip (64 B, 4 KiB): p50/p99/p99.9/max.  mmipc with its
 *       default waiting (bounded spin, then sleep) and sleep-only
 *       (mmipc_ring_set_spin(q, 0)); then both processes pinned to one CPU.
 *   W2  one-way stream 1 producer -> 1 consumer (64 B .. 1 MiB): msgs/s, MB/s.
 *       The consumer checks a sequence number and a checksum over every byte.
 *       mmipc copy API (send/recv) and zero-copy API (reserve/commit,
 *       peek/release; the producer fills its reservation as send does, with
 *       non-temporal stores from 512 KiB).  Cost: CPU seconds per million
 *       messages, context switches, system calls per message (separate
 *       counting pass).
 *   W3  4 producers x 4 consumers sharing one queue, 64 B: aggregate msgs/s.
 *   W5  kv table: get and put ops/s, and gets while another process puts.
 *       A single-process run is pinned to a CPU, the same for both stores in
 *       a repetition, the CPUs taken in turn.
 *
 * Baselines: pipe, UNIX socketpair (stream), POSIX message queue, single-core
 * memcpy, and "spsc-ring": a bare lock-free single-producer single-consumer
 * ring in a shared anonymous mapping (no locks, no crash safety, spins; what
 * the hardware allows).  Peers when built in: ZeroMQ over ipc:// (PUSH/PULL,
 * REQ/REP) and LMDB (MDB_NOSYNC|MDB_WRITEMAP, one transaction per operation).
 *
 * Exit status: 0, or 1 if any transport delivered a wrong, lost, duplicated or
 * torn message or value, or mmipc hung (a correctness failure).  Never on
 * speed.  A baseline peer that hangs is killed and reported as a warning.
 *
 * System calls are counted exactly, without ptrace: a perf counter on the
 * raw_syscalls:sys_enter tracepoint, opened by each process on itself (threads
 * included), in a separate W2 pass so that counting never slows the timed
 * runs.  It needs tracefs and root (or perf_event_paranoid <= -1); without
 * them the bench says so and leaves the column empty.
 */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <linux/futex.h>
#include <linux/perf_event.h>
#include <math.h>
#include <mqueue.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* lib/: the ring producers' write prefetch, and mmipc__copy_msg, which the
 * bare ring and the zero-copy producer use to fill a message as
 * mmipc_ring_send does (big ones past the cache). */
#include "atomics.h"
#include "mmipc.h"

#ifdef HAVE_ZMQ
#include <zmq.h>
#endif
#ifdef HAVE_LMDB
#include <lmdb.h>
#endif

#define KiB 1024u
#define MiB (1024u * 1024u)
#define MAX_CHILD 8
#define MAX_PROD 4
#define MAX_REPS 32

/* Markers travel in the sequence word of an ordinary message. */
#define SEQ_WARM_END (UINT64_MAX - 1)
#define SEQ_STOP UINT64_MAX

/* Child exit codes. */
#define CX_OK 0
#define CX_FAIL 1 /* wrong data, lost message, API error */
#define CX_SKIP 2 /* a baseline cannot run here (resource limit) */

typedef uint64_t u64u __attribute__((aligned(1), may_alias));

/* ------------------------------------------------------------------ options */

struct opts {
    int quick;
    int reps;
    const char *csv;
    const char *only;
    const char *transports;
    char dir[PATH_MAX];
    double warm_s;   /* warm-up of every run */
    double stream_s; /* W2 timed section */
    double cost_s;   /* W2 syscall-counting pass */
    double w3_s;
    double kv_s;
    double rt_cap_s; /* W1 timed section at most */
    unsigned rt_max; /* W1 round trips per run at most */
    unsigned kv_keys;
    size_t bufbytes; /* queue buffer for every transport */
    double grace_s;  /* a run's deadline: grace + 10 x its timed part */
};

static struct opts g;
static int g_failures;
static long long g_sys_tp = -1; /* tracepoint id of raw_syscalls:sys_enter */
static char g_sys_why[160];
static unsigned g_seq;
static char g_buf_note[4][160];

/* snprintf that truncates silently: every message here is best effort. */
static void sfmt(char *b, size_t n, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void sfmt(char *b, size_t n, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(b, n, fmt, ap);
    va_end(ap);
}

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static int want(const char *what)
{
    if (!g.only)
        return 1;
    size_t n = strlen(what);
    for (const char *p = g.only; (p = strstr(p, what)) != NULL; p += n) {
        int start = p == g.only || p[-1] == ',';
        int end = p[n] == '\0' || p[n] == ',';
        if (start && end)
            return 1;
    }
    return 0;
}

static long proc_long(const char *path)
{
    long v = -1;
    FILE *f = fopen(path, "r");
    if (f) {
        if (fscanf(f, "%ld", &v) != 1)
            v = -1;
        fclose(f);
    }
    return v;
}

static void loadavg(char *b, size_t n)
{
    FILE *f = fopen("/proc/loadavg", "r");
    double a = -1, c = -1, d = -1;
    if (f) {
        if (fscanf(f, "%lf %lf %lf", &a, &c, &d) != 3)
            a = -1;
        fclose(f);
    }
    if (a < 0)
        sfmt(b, n, "unknown");
    else
        sfmt(b, n, "%.2f %.2f %.2f", a, c, d);
}

/* --transports: "mmipc" also selects "mmipc-pinned", "pipe" "pipe-pinned". */
static int want_name(const char *name)
{
    if (!g.transports)
        return 1;
    const char *p = g.transports;
    while (*p) {
        size_t n = strcspn(p, ",");
        if (n && !strncmp(name, p, n) && (name[n] == '\0' || !strcmp(name + n, "-pinned")))
            return 1;
        p += n + (p[n] == ',');
    }
    return 0;
}

static size_t pow2_at_least(size_t v)
{
    size_t p = 4096;
    while (p < v)
        p <<= 1;
    return p;
}

/* ------------------------------------------------------------- transports */

enum kind { K_MMIPC, K_PIPE, K_SOCK, K_MQ, K_ZMQ, K_SPSC, K_MEMCPY, K_LMDB };

struct transport {
    const char *name;
    enum kind kind;
    int zc;   /* mmipc zero-copy API */
    int spin; /* mmipc: -1 library default, else mmipc_ring_set_spin value */
    int pin;  /* every process of the run on one CPU */
};

static const struct transport T_MMIPC = {"mmipc", K_MMIPC, 0, -1, 0};
static const struct transport T_MMIPC_ZC = {"mmipc-zc", K_MMIPC, 1, -1, 0};
static const struct transport T_MMIPC_SLEEP = {"mmipc-sleep", K_MMIPC, 0, 0, 0};
static const struct transport T_MMIPC_PIN = {"mmipc-pinned", K_MMIPC, 0, -1, 1};
static const struct transport T_PIPE = {"pipe", K_PIPE, 0, -1, 0};
static const struct transport T_PIPE_PIN = {"pipe-pinned", K_PIPE, 0, -1, 1};
static const struct transport T_SOCK = {"socketpair", K_SOCK, 0, -1, 0};
static const struct transport T_MQ = {"posix-mq", K_MQ, 0, -1, 0};
static const struct transport T_SPSC = {"spsc-ring", K_SPSC, 0, -1, 0};
static const struct transport T_MEMCPY = {"memcpy", K_MEMCPY, 0, -1, 0};
#ifdef HAVE_ZMQ
static const struct transport T_ZMQ_RR = {"zmq-reqrep", K_ZMQ, 0, -1, 0};
static const struct transport T_ZMQ_PP = {"zmq-pushpull", K_ZMQ, 0, -1, 0};
#endif

/* ------------------------------------------------------------- messages */

/*
 * A message of len bytes (a multiple of 8, at least 32) is 64-bit words:
 * w[0] sequence number, w[1] producer id, w[2..n-2] a fixed pattern, w[n-1]
 * the complement of the sequence number (so a torn message shows).  The
 * receiver checks the sequence and sums every pattern word: it reads every
 * byte of every message, whatever the transport.
 */
struct tmpl {
    size_t len, nw;
    unsigned char *buf;
    uint64_t sum;
};

/* Four independent sums, so that checking a big message is bound by reading
 * it rather than by one chain of dependent adds (a single chain read 1 MiB
 * at 27 GB/s here, slower than the copy it checks). */
static uint64_t sum_words(const unsigned char *p, size_t from, size_t to)
{
    const u64u *w = (const u64u *)p;
    uint64_t s0 = 0, s1 = 0, s2 = 0, s3 = 0;
    size_t i = from;
    for (; i + 4 <= to; i += 4) {
        s0 += w[i];
        s1 += w[i + 1];
        s2 += w[i + 2];
        s3 += w[i + 3];
    }
    for (; i < to; i++)
        s0 += w[i];
    return s0 + s1 + s2 + s3;
}

static void tmpl_init(struct tmpl *t, size_t len)
{
    t->len = len;
    t->nw = len / 8;
    t->buf = aligned_alloc(64, (len + 63) & ~(size_t)63);
    if (!t->buf) {
        perror("aligned_alloc");
        _exit(CX_FAIL);
    }
    u64u *w = (u64u *)t->buf;
    for (size_t i = 0; i < t->nw; i++)
        w[i] = (i + 1) * 0x9E3779B97F4A7C15ull ^ len;
    t->sum = sum_words(t->buf, 2, t->nw - 1);
}

static void msg_stamp(void *p, size_t len, uint64_t seq, uint64_t src)
{
    u64u *w = (u64u *)p;
    w[0] = seq;
    w[1] = src;
    w[len / 8 - 1] = ~seq;
}

/* 0 if p holds an intact message of the template's length. */
static int msg_check(const void *p, size_t len, const struct tmpl *t, uint64_t *seq, uint64_t *src)
{
    const u64u *w = (const u64u *)p;
    if (len != t->len)
        return -1;
    *seq = w[0];
    *src = w[1];
    if (w[t->nw - 1] != ~w[0])
        return -1;
    return sum_words(p, 2, t->nw - 1) == t->sum ? 0 : -1;
}

/* ------------------------------------------------------- bare SPSC ring */

/*
 * The physical reference: one producer, one consumer, byte ring of records
 * (8-byte length + payload rounded to 8).  head and tail on their own cache
 * lines, each side caches the other's position and re-reads it only when the
 * cached value says full/empty; the producer prefetches free lines for
 * writing 2 KiB ahead and writes messages of 512 KiB and up with
 * non-temporal stores, as mmipc does.  Waiting spins (sched_yield after 4096
 * polls so that a descheduled peer can run).  No locks, no crash safety.
 */
#define SPSC_PAD UINT64_MAX

struct spsc {
    uint64_t head __attribute__((aligned(64)));
    uint64_t tail __attribute__((aligned(64)));
    uint64_t cap __attribute__((aligned(64)));
    unsigned char data[] __attribute__((aligned(64)));
};

struct spsc_tx {
    uint64_t head, tail_cache, rec;
};
struct spsc_rx {
    uint64_t tail, head_cache, rec;
};

static void cpu_relax(unsigned *spins)
{
    if (++*spins < 4096) {
#if defined(__x86_64__) || defined(__i386__)
        __builtin_ia32_pause();
#elif defined(__aarch64__)
        __asm__ __volatile__("yield" ::: "memory");
#endif
    } else {
        *spins = 0;
        sched_yield();
    }
}

#define SPSC_AHEAD 2048u

static void *spsc_reserve(struct spsc *q, struct spsc_tx *tx, size_t len)
{
    uint64_t cap = q->cap, rec = 8 + ((len + 7) & ~(uint64_t)7);
    uint64_t pos = tx->head & (cap - 1), room = cap - pos;
    uint64_t need = rec <= room ? rec : room + rec;
    unsigned spins = 0;
    while (tx->head + need - tx->tail_cache > cap) {
        tx->tail_cache = __atomic_load_n(&q->tail, __ATOMIC_ACQUIRE);
        if (tx->head + need - tx->tail_cache <= cap)
            break;
        cpu_relax(&spins);
    }
    if (rec > room) {
        *(u64u *)(q->data + pos) = SPSC_PAD;
        tx->head += room;
        pos = 0;
    }
    *(u64u *)(q->data + pos) = len;
    tx->rec = rec;
    /* Take the free lines SPSC_AHEAD bytes on for writing (at most 8 per
     * message), as mmipc's producers do, so that the stores never wait for
     * the consumer's CPU to give a line back. */
    uint64_t end = tx->head + rec + SPSC_AHEAD;
    if (end - tx->tail_cache <= cap)
        for (uint64_t l = (tx->head + SPSC_AHEAD) & ~(uint64_t)63, n = 0; l < end && n < 8; l += 64, n++)
            mmipc__prefetch_write(q->data + (l & (cap - 1)));
    return q->data + pos + 8;
}

static void spsc_publish(struct spsc *q, struct spsc_tx *tx)
{
    tx->head += tx->rec;
    __atomic_store_n(&q->head, tx->head, __ATOMIC_RELEASE);
}

static size_t spsc_peek(struct spsc *q, struct spsc_rx *rx, const void **p)
{
    uint64_t cap = q->cap;
    unsigned spins = 0;
    for (;;) {
        while (rx->head_cache == rx->tail) {
            rx->head_cache = __atomic_load_n(&q->head, __ATOMIC_ACQUIRE);
            if (rx->head_cache != rx->tail)
                break;
            cpu_relax(&spins);
        }
        uint64_t pos = rx->tail & (cap - 1);
        uint64_t len = *(const u64u *)(q->data + pos);
        if (len == SPSC_PAD) {
            rx->tail += cap - pos;
            continue;
        }
        rx->rec = 8 + ((len + 7) & ~(uint64_t)7);
        *p = q->data + pos + 8;
        return (size_t)len;
    }
}

static void spsc_release(struct spsc *q, struct spsc_rx *rx)
{
    rx->tail += rx->rec;
    __atomic_store_n(&q->tail, rx->tail, __ATOMIC_RELEASE);
}

/* ------------------------------------------------------------- links */

/*
 * A link is what the parent prepares before forking: one direction (d0: side
 * 0 -> side 1) or two (d1: side 1 -> side 0).  Children inherit it and open
 * their end of it.
 */
struct link {
    const struct transport *t;
    size_t msgmax;
    int ndir;
    size_t cap; /* queue buffer in bytes */
    int fds[2][2];
    mqd_t mq[2];
    struct spsc *spsc[2];
    size_t spsc_len;
    char path[PATH_MAX];
    mmipc_region *reg;
    mmipc_ring *ring[2];
    long hwm;
};

static const char *ring_name(int d)
{
    return d ? "d1" : "d0";
}

static int mm_region_make(struct link *l, size_t want_size, char *why, size_t whylen)
{
    struct mmipc_region_opts o = {.size = want_size, .mode = 0600, .max_objects = 8};
    for (int attempt = 0; attempt < 5; attempt++, o.size *= 2) {
        sfmt(l->path, sizeof l->path, "%s/bench-%d-%u.mmipc", g.dir, (int)getpid(), g_seq++);
        int rc = mmipc_region_open(l->path, MMIPC_CREATE | MMIPC_EXCL, &o, &l->reg);
        if (rc < 0) {
            sfmt(why, whylen, "mmipc_region_open(%s, %zu bytes): %s", l->path, o.size, mmipc_strerror(rc));
            return -1;
        }
        rc = 0;
        for (int d = 0; d < l->ndir && rc == 0; d++)
            rc = mmipc_ring_create(l->reg, ring_name(d), l->cap, &l->ring[d]);
        if (rc == 0)
            return 0;
        mmipc_region_close(l->reg);
        l->reg = NULL;
        unlink(l->path);
        if (rc != -ENOSPC) {
            sfmt(why, whylen, "mmipc_ring_create(%zu bytes): %s", l->cap, mmipc_strerror(rc));
            return -1;
        }
    }
    sfmt(why, whylen, "mmipc_ring_create: region still too small at %zu bytes", o.size);
    return -1;
}

/* 0 ready, 1 skip (why says so), -1 failure. */
static int link_prepare(struct link *l, const struct transport *t, size_t msgmax, int ndir, char *why, size_t whylen)
{
    memset(l, 0, sizeof *l);
    l->t = t;
    l->msgmax = msgmax;
    l->ndir = ndir;
    l->cap = pow2_at_least(msgmax * 4 > g.bufbytes ? msgmax * 4 : g.bufbytes);
    for (int d = 0; d < 2; d++) {
        l->fds[d][0] = l->fds[d][1] = -1;
        l->mq[d] = (mqd_t)-1;
    }
    switch (t->kind) {
    case K_MMIPC:
        return mm_region_make(l, (size_t)ndir * (l->cap + 64 * KiB) + MiB, why, whylen);
    case K_PIPE:
        for (int d = 0; d < ndir; d++) {
            if (pipe(l->fds[d]) < 0) {
                sfmt(why, whylen, "pipe: %s", strerror(errno));
                return -1;
            }
            if (fcntl(l->fds[d][1], F_SETPIPE_SZ, (int)l->cap) < 0) {
                int err = errno;
                long mx = proc_long("/proc/sys/fs/pipe-max-size");
                if (mx > 0)
                    (void)fcntl(l->fds[d][1], F_SETPIPE_SZ, (int)mx);
                sfmt(g_buf_note[0], sizeof g_buf_note[0],
                     "pipe: F_SETPIPE_SZ(%zu): %s; used %d bytes (fs.pipe-max-size)", l->cap, strerror(err),
                     fcntl(l->fds[d][1], F_GETPIPE_SZ));
            }
        }
        return 0;
    case K_SOCK: {
        if (socketpair(AF_UNIX, SOCK_STREAM, 0, l->fds[0]) < 0) {
            sfmt(why, whylen, "socketpair: %s", strerror(errno));
            return -1;
        }
        int sz = (int)l->cap, got = 0;
        socklen_t gl = sizeof got;
        for (int i = 0; i < 2; i++) {
            (void)setsockopt(l->fds[0][i], SOL_SOCKET, SO_SNDBUF, &sz, sizeof sz);
            (void)setsockopt(l->fds[0][i], SOL_SOCKET, SO_RCVBUF, &sz, sizeof sz);
        }
        getsockopt(l->fds[0][0], SOL_SOCKET, SO_SNDBUF, &got, &gl);
        if (got < sz) /* Linux reports twice what it was asked */
            sfmt(g_buf_note[1], sizeof g_buf_note[1],
                 "socketpair: SO_SNDBUF %d asked, kernel capped it at %d (net.core.wmem_max)", sz, got);
        return 0;
    }
    case K_MQ:
        for (int d = 0; d < ndir; d++) {
            char name[64];
            sfmt(name, sizeof name, "/mmipc-bench-%d-%u", (int)getpid(), g_seq++);
            long want_n = (long)(l->cap / msgmax);
            if (want_n > 1024)
                want_n = 1024;
            if (want_n < 4)
                want_n = 4;
            long sysmax = proc_long("/proc/sys/fs/mqueue/msg_max");
            long tries[] = {want_n, sysmax > 0 && sysmax < want_n ? sysmax : 10, 4};
            int err = 0;
            for (size_t i = 0; i < sizeof tries / sizeof tries[0]; i++) {
                struct mq_attr a = {.mq_maxmsg = tries[i], .mq_msgsize = (long)msgmax};
                l->mq[d] = mq_open(name, O_RDWR | O_CREAT | O_EXCL, 0600, &a);
                if (l->mq[d] != (mqd_t)-1) {
                    if (i > 0)
                        sfmt(g_buf_note[2], sizeof g_buf_note[2],
                             "posix-mq: maxmsg %ld refused at %zu B (%s), used %ld", tries[0], msgmax, strerror(err),
                             tries[i]);
                    break;
                }
                err = errno;
            }
            if (l->mq[d] == (mqd_t)-1) {
                sfmt(why, whylen, "mq_open(msgsize %zu): %s (fs.mqueue.msgsize_max is %ld)", msgmax, strerror(err),
                     proc_long("/proc/sys/fs/mqueue/msgsize_max"));
                return 1;
            }
            mq_unlink(name);
        }
        return 0;
    case K_ZMQ:
        sfmt(l->path, sizeof l->path, "%s/zmq-%u.ipc", g.dir, g_seq++);
        l->hwm = (long)(l->cap / msgmax);
        if (l->hwm > 1000)
            l->hwm = 1000;
        if (l->hwm < 4)
            l->hwm = 4;
        return 0;
    case K_SPSC:
        l->spsc_len = sizeof(struct spsc) + l->cap;
        for (int d = 0; d < ndir; d++) {
            void *m = mmap(NULL, l->spsc_len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
            if (m == MAP_FAILED) {
                sfmt(why, whylen, "mmap: %s", strerror(errno));
                return -1;
            }
            l->spsc[d] = m;
            l->spsc[d]->cap = l->cap;
        }
        return 0;
    case K_MEMCPY:
    case K_LMDB:
        return 0;
    }
    return 0;
}

static void link_destroy(struct link *l)
{
    for (int d = 0; d < 2; d++) {
        for (int i = 0; i < 2; i++)
            if (l->fds[d][i] >= 0)
                close(l->fds[d][i]);
        if (l->mq[d] != (mqd_t)-1)
            mq_close(l->mq[d]);
        if (l->spsc[d])
            munmap(l->spsc[d], l->spsc_len);
    }
    if (l->reg) {
        mmipc_region_close(l->reg);
        unlink(l->path);
    }
    if (l->t && l->t->kind == K_ZMQ)
        unlink(l->path);
    memset(l, 0, sizeof *l);
}

/* ------------------------------------------------------------- ends */

struct end {
    struct link *l;
    int side, tx, rx; /* direction sent on / received from, -1 none */
    size_t fixlen;    /* byte streams: length of every message */
    unsigned char *buf;
    size_t bufcap;
    mmipc_region *reg;
    mmipc_ring *ring[2];
    const void *held;
    struct spsc_tx stx;
    struct spsc_rx srx;
    void *zctx, *zsock;
    char err[200];
};

static int write_all(int fd, const void *p, size_t n)
{
    const unsigned char *c = p;
    while (n) {
        ssize_t w = write(fd, c, n);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        c += w;
        n -= (size_t)w;
    }
    return 0;
}

static int read_all(int fd, void *p, size_t n)
{
    unsigned char *c = p;
    while (n) {
        ssize_t r = read(fd, c, n);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        if (r == 0)
            return -EPIPE;
        c += r;
        n -= (size_t)r;
    }
    return 0;
}

static int end_open(struct end *e, struct link *l, int side, size_t fixlen)
{
    memset(e, 0, sizeof *e);
    e->l = l;
    e->side = side;
    e->tx = side == 0 ? 0 : (l->ndir == 2 ? 1 : -1);
    e->rx = side == 1 ? 0 : (l->ndir == 2 ? 1 : -1);
    e->fixlen = fixlen;
    e->bufcap = l->msgmax;
    e->buf = aligned_alloc(64, (l->msgmax + 63) & ~(size_t)63);
    if (!e->buf) {
        sfmt(e->err, sizeof e->err, "out of memory");
        return -ENOMEM;
    }
    memset(e->buf, 0, l->msgmax);
    switch (l->t->kind) {
    case K_MMIPC: {
        int rc = mmipc_region_open(l->path, 0, NULL, &e->reg);
        if (rc < 0) {
            sfmt(e->err, sizeof e->err, "mmipc_region_open: %s", mmipc_strerror(rc));
            return rc;
        }
        for (int d = 0; d < l->ndir; d++) {
            rc = mmipc_ring_open(e->reg, ring_name(d), &e->ring[d]);
            if (rc < 0) {
                sfmt(e->err, sizeof e->err, "mmipc_ring_open: %s", mmipc_strerror(rc));
                return rc;
            }
            if (l->t->spin >= 0 && (rc = mmipc_ring_set_spin(e->ring[d], (unsigned)l->t->spin)) < 0) {
                sfmt(e->err, sizeof e->err, "mmipc_ring_set_spin: %s", mmipc_strerror(rc));
                return rc;
            }
        }
        return 0;
    }
    case K_ZMQ: {
#ifdef HAVE_ZMQ
        char ep[PATH_MAX + 8];
        int type = l->ndir == 2 ? (side ? ZMQ_REP : ZMQ_REQ) : (side ? ZMQ_PULL : ZMQ_PUSH);
        int hwm = (int)l->hwm, ivl = 10;
        e->zctx = zmq_ctx_new();
        e->zsock = e->zctx ? zmq_socket(e->zctx, type) : NULL;
        if (!e->zsock) {
            sfmt(e->err, sizeof e->err, "zmq_socket: %s", zmq_strerror(zmq_errno()));
            return -EIO;
        }
        zmq_setsockopt(e->zsock, ZMQ_SNDHWM, &hwm, sizeof hwm);
        zmq_setsockopt(e->zsock, ZMQ_RCVHWM, &hwm, sizeof hwm);
        zmq_setsockopt(e->zsock, ZMQ_RECONNECT_IVL, &ivl, sizeof ivl);
        sfmt(ep, sizeof ep, "ipc://%s", l->path);
        if ((side ? zmq_bind(e->zsock, ep) : zmq_connect(e->zsock, ep)) != 0) {
            sfmt(e->err, sizeof e->err, "zmq %s %s: %s", side ? "bind" : "connect", ep, zmq_strerror(zmq_errno()));
            return -EIO;
        }
        return 0;
#else
        return -ENOSYS;
#endif
    }
    default:
        return 0;
    }
}

static void end_close(struct end *e)
{
#ifdef HAVE_ZMQ
    if (e->zsock)
        zmq_close(e->zsock);
    if (e->zctx)
        zmq_ctx_term(e->zctx);
#endif
    if (e->reg)
        mmipc_region_close(e->reg);
    free(e->buf);
    e->reg = NULL;
    e->buf = NULL;
}

/* Send the bytes at p as one message.  0 or negative errno (e->err set). */
static int end_send_raw(struct end *e, const void *p, size_t len)
{
    struct link *l = e->l;
    int rc = 0;
    switch (l->t->kind) {
    case K_MMIPC:
        rc = mmipc_ring_send(e->ring[e->tx], p, len, -1);
        if (rc < 0)
            sfmt(e->err, sizeof e->err, "mmipc_ring_send: %s", mmipc_strerror(rc));
        return rc;
    case K_PIPE:
        rc = write_all(l->fds[e->tx][1], p, len);
        break;
    case K_SOCK:
        rc = write_all(l->fds[0][e->side], p, len);
        break;
    case K_MQ:
        while ((rc = mq_send(l->mq[e->tx], p, len, 0)) < 0 && errno == EINTR)
            ;
        rc = rc < 0 ? -errno : 0;
        break;
    case K_ZMQ:
#ifdef HAVE_ZMQ
        if (zmq_send(e->zsock, p, len, 0) != (int)len) {
            sfmt(e->err, sizeof e->err, "zmq_send: %s", zmq_strerror(zmq_errno()));
            return -EIO;
        }
#endif
        return 0;
    case K_SPSC: {
        void *d = spsc_reserve(l->spsc[e->tx], &e->stx, len);
        mmipc__copy_msg(d, p, len);
        spsc_publish(l->spsc[e->tx], &e->stx);
        return 0;
    }
    case K_MEMCPY:
    case K_LMDB:
        return -ENOSYS;
    }
    if (rc < 0)
        sfmt(e->err, sizeof e->err, "send: %s", strerror(-rc));
    return rc;
}

/* Send the template stamped with seq/src; zero-copy transports build it in place. */
static int end_send(struct end *e, struct tmpl *tm, uint64_t seq, uint64_t src)
{
    struct link *l = e->l;
    if (l->t->kind == K_MMIPC && l->t->zc) {
        void *p;
        int rc = mmipc_ring_reserve(e->ring[e->tx], tm->len, &p, -1);
        if (rc < 0) {
            sfmt(e->err, sizeof e->err, "mmipc_ring_reserve: %s", mmipc_strerror(rc));
            return rc;
        }
        mmipc__copy_msg(p, tm->buf, tm->len);
        msg_stamp(p, tm->len, seq, src);
        rc = mmipc_ring_commit(e->ring[e->tx], p);
        if (rc < 0)
            sfmt(e->err, sizeof e->err, "mmipc_ring_commit: %s", mmipc_strerror(rc));
        return rc;
    }
    if (l->t->kind == K_SPSC) {
        void *p = spsc_reserve(l->spsc[e->tx], &e->stx, tm->len);
        mmipc__copy_msg(p, tm->buf, tm->len);
        msg_stamp(p, tm->len, seq, src);
        spsc_publish(l->spsc[e->tx], &e->stx);
        return 0;
    }
    msg_stamp(tm->buf, tm->len, seq, src);
    return end_send_raw(e, tm->buf, tm->len);
}

/* Receive one message; *p points at it until end_done().  Length or -errno. */
static ssize_t end_recv(struct end *e, const void **p)
{
    struct link *l = e->l;
    ssize_t n;
    int rc;
    switch (l->t->kind) {
    case K_MMIPC:
        if (l->t->zc) {
            n = mmipc_ring_peek(e->ring[e->rx], p, -1);
            e->held = n >= 0 ? *p : NULL;
        } else {
            n = mmipc_ring_recv(e->ring[e->rx], e->buf, e->bufcap, -1);
            *p = e->buf;
        }
        if (n < 0)
            sfmt(e->err, sizeof e->err, "mmipc_ring_%s: %s", l->t->zc ? "peek" : "recv", mmipc_strerror((int)n));
        return n;
    case K_PIPE:
    case K_SOCK:
        rc = read_all(l->t->kind == K_PIPE ? l->fds[e->rx][0] : l->fds[0][e->side], e->buf, e->fixlen);
        if (rc < 0) {
            sfmt(e->err, sizeof e->err, "read: %s", strerror(-rc));
            return rc;
        }
        *p = e->buf;
        return (ssize_t)e->fixlen;
    case K_MQ:
        while ((n = mq_receive(l->mq[e->rx], (char *)e->buf, e->bufcap, NULL)) < 0 && errno == EINTR)
            ;
        if (n < 0) {
            sfmt(e->err, sizeof e->err, "mq_receive: %s", strerror(errno));
            return -errno;
        }
        *p = e->buf;
        return n;
    case K_ZMQ:
#ifdef HAVE_ZMQ
        n = zmq_recv(e->zsock, e->buf, e->bufcap, 0);
        if (n < 0 || (size_t)n > e->bufcap) {
            sfmt(e->err, sizeof e->err, "zmq_recv: %s", n < 0 ? zmq_strerror(zmq_errno()) : "truncated");
            return -EIO;
        }
        *p = e->buf;
        return n;
#else
        return -ENOSYS;
#endif
    case K_SPSC:
        return (ssize_t)spsc_peek(l->spsc[e->rx], &e->srx, p);
    case K_MEMCPY:
    case K_LMDB:
        break;
    }
    return -ENOSYS;
}

static int end_done(struct end *e)
{
    struct link *l = e->l;
    if (l->t->kind == K_MMIPC && l->t->zc) {
        int rc = mmipc_ring_release(e->ring[e->rx], e->held);
        e->held = NULL;
        if (rc < 0)
            sfmt(e->err, sizeof e->err, "mmipc_ring_release: %s", mmipc_strerror(rc));
        return rc;
    }
    if (l->t->kind == K_SPSC)
        spsc_release(l->spsc[e->rx], &e->srx);
    return 0;
}

/* ------------------------------------------------------ process harness */

struct child_res {
    uint64_t t_start, t_end;
    uint64_t count;      /* timed messages or operations */
    uint64_t sent_total; /* producer: data messages sent, warm-up included */
    uint64_t got[MAX_PROD], seqsum[MAX_PROD];
    double cpu_s;
    int64_t vcsw, ivcsw, syscalls;
    int failed;
    int cpu_end; /* CPU this process ran on at the end of the timed part */
    char msg[240];
};

struct ctl {
    uint32_t arrived, go, stop, abort_;
    struct child_res res[MAX_CHILD];
    uint64_t nsamples;
    uint64_t samples[];
};

enum kvmode { KV_GET, KV_PUT, KV_GETPUT };

struct kvset {
    const char *wl; /* series name: "W5" (the big table) or "W5-small" */
    unsigned nkeys;
    char (*keys)[32];
    size_t *klen;
    uint32_t *order;
    char lmdb_dir[PATH_MAX];
};

struct run {
    const struct transport *t;
    struct link link;
    size_t size;
    int nchild, nsync, nprod;
    int count_syscalls;
    double target_s;
    uint64_t max_rt;
    enum kvmode kvmode;
    int pin_cpu; /* 0, or n > 0: every process of the run on the nth CPU it may use (counting round) */
    struct kvset *kv;
    struct ctl *ctl;
    size_t ctl_len;
    pid_t pid[MAX_CHILD];
};

struct meter {
    uint64_t t;
    struct rusage ru;
    int64_t sys;
};

struct child {
    struct run *r;
    int idx;
    struct child_res *res;
    int sysfd;
    struct meter m0;
};

static void futex_wait_u32(uint32_t *w, uint32_t val, long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    syscall(SYS_futex, w, FUTEX_WAIT, val, &ts, NULL, 0);
}

static void futex_wake_all(uint32_t *w)
{
    syscall(SYS_futex, w, FUTEX_WAKE, INT_MAX, NULL, NULL, 0);
}

static void cfail(struct child *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void cfail(struct child *c, const char *fmt, ...)
{
    if (!c->res->failed) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(c->res->msg, sizeof c->res->msg, fmt, ap);
        va_end(ap);
    }
    c->res->failed++;
}

static _Noreturn void cexit(struct child *c, int code, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static _Noreturn void cexit(struct child *c, int code, const char *fmt, ...)
{
    if (fmt) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(c->res->msg, sizeof c->res->msg, fmt, ap);
        va_end(ap);
    }
    _exit(code);
}

static _Noreturn void cfinish(struct child *c)
{
    _exit(c->res->failed ? CX_FAIL : CX_OK);
}

static int sysc_open(void)
{
    struct perf_event_attr a;
    if (g_sys_tp < 0)
        return -1;
    memset(&a, 0, sizeof a);
    a.type = PERF_TYPE_TRACEPOINT;
    a.size = sizeof a;
    a.config = (uint64_t)g_sys_tp;
    a.inherit = 1; /* threads created later (ZeroMQ's I/O thread) count too */
    return (int)syscall(SYS_perf_event_open, &a, 0, -1, -1, PERF_FLAG_FD_CLOEXEC);
}

static int64_t sysc_read(int fd)
{
    uint64_t v;
    if (fd < 0 || read(fd, &v, sizeof v) != (ssize_t)sizeof v)
        return -1;
    return (int64_t)v;
}

/* Pin the calling process to the nth (from 1, counting round) of the CPUs
 * it may run on. */
static int pin_one_cpu(int nth)
{
    cpu_set_t cur, one;
    if (sched_getaffinity(0, sizeof cur, &cur) < 0)
        return -errno;
    int left = (nth - 1) % CPU_COUNT(&cur);
    CPU_ZERO(&one);
    for (int i = 0; i < CPU_SETSIZE; i++)
        if (CPU_ISSET(i, &cur) && left-- == 0) {
            CPU_SET(i, &one);
            break;
        }
    return sched_setaffinity(0, sizeof one, &one) < 0 ? -errno : 0;
}

static void child_enter(struct child *c)
{
    c->sysfd = -1;
    int nth = c->r->pin_cpu > 0 ? c->r->pin_cpu : c->r->t->pin ? 1 : 0; /* t->pin: the first CPU */
    if (nth > 0 && pin_one_cpu(nth) < 0)
        cexit(c, CX_SKIP, "sched_setaffinity: %s", strerror(errno));
    if (c->r->count_syscalls)
        c->sysfd = sysc_open();
}

/* Arrive at the start line after warm-up; return when the parent says go. */
static void child_sync(struct child *c)
{
    struct ctl *ctl = c->r->ctl;
    __atomic_add_fetch(&ctl->arrived, 1, __ATOMIC_SEQ_CST);
    futex_wake_all(&ctl->arrived);
    while (!__atomic_load_n(&ctl->go, __ATOMIC_ACQUIRE)) {
        if (__atomic_load_n(&ctl->abort_, __ATOMIC_ACQUIRE))
            _exit(3);
        futex_wait_u32(&ctl->go, 0, 100);
    }
}

static void meter_begin(struct child *c)
{
    getrusage(RUSAGE_SELF, &c->m0.ru);
    c->m0.sys = sysc_read(c->sysfd);
    c->m0.t = now_ns();
    c->res->t_start = c->m0.t;
}

static double tv_s(struct timeval tv)
{
    return (double)tv.tv_sec + (double)tv.tv_usec / 1e6;
}

static void meter_end(struct child *c, uint64_t count)
{
    struct meter m;
    m.t = now_ns();
    m.sys = sysc_read(c->sysfd);
    getrusage(RUSAGE_SELF, &m.ru);
    c->res->t_end = m.t;
    c->res->count = count;
    c->res->cpu_s = tv_s(m.ru.ru_utime) - tv_s(c->m0.ru.ru_utime) + tv_s(m.ru.ru_stime) - tv_s(c->m0.ru.ru_stime);
    c->res->vcsw = m.ru.ru_nvcsw - c->m0.ru.ru_nvcsw;
    c->res->ivcsw = m.ru.ru_nivcsw - c->m0.ru.ru_nivcsw;
    /* minus the read() that took the first sample */
    c->res->syscalls = (m.sys >= 0 && c->m0.sys >= 0) ? m.sys - c->m0.sys - 1 : -1;
}

enum outcome { RUN_OK, RUN_SKIP, RUN_FAIL };

static void kill_all(struct run *r, int *alive)
{
    for (int i = 0; i < r->nchild; i++)
        if (alive[i]) {
            kill(r->pid[i], SIGKILL);
            waitpid(r->pid[i], NULL, 0);
            alive[i] = 0;
        }
}

/* What a hung child is doing: "pid S futex_wait_queue" (state and wchan). */
static void describe_child(pid_t pid, char *b, size_t n)
{
    char path[64], wchan[64] = "?", stat[512] = "", state = '?';
    FILE *f;
    sfmt(path, sizeof path, "/proc/%d/wchan", (int)pid);
    if ((f = fopen(path, "r")) != NULL) {
        if (!fgets(wchan, sizeof wchan, f))
            sfmt(wchan, sizeof wchan, "?");
        fclose(f);
    }
    sfmt(path, sizeof path, "/proc/%d/stat", (int)pid);
    if ((f = fopen(path, "r")) != NULL) {
        if (fgets(stat, sizeof stat, f)) {
            char *p = strrchr(stat, ')');
            if (p && p[1] == ' ')
                state = p[2];
        }
        fclose(f);
    }
    sfmt(b, n, "%c %s", state, wchan[0] ? wchan : "-");
}

static void sigchld_noop(int sig)
{
    (void)sig;
}

/*
 * Fork r->nchild children running fn, release them together once the r->nsync
 * of them that take part have warmed up, and wait for all with a deadline.
 */
static enum outcome run_children(struct run *r, void (*fn)(struct child *), char *why, size_t whylen)
{
    size_t samples = r->max_rt ? r->max_rt : 0;
    r->ctl_len = sizeof(struct ctl) + samples * sizeof(uint64_t);
    r->ctl = mmap(NULL, r->ctl_len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (r->ctl == MAP_FAILED) {
        sfmt(why, whylen, "mmap: %s", strerror(errno));
        r->ctl = NULL;
        return RUN_FAIL;
    }
    int alive[MAX_CHILD] = {0}, code[MAX_CHILD];
    fflush(stdout);
    fflush(stderr);
    for (int i = 0; i < r->nchild; i++) {
        pid_t p = fork();
        if (p < 0) {
            sfmt(why, whylen, "fork: %s", strerror(errno));
            kill_all(r, alive);
            return RUN_FAIL;
        }
        if (p == 0) {
            struct child c = {.r = r, .idx = i, .res = &r->ctl->res[i], .sysfd = -1};
            c.res->cpu_end = -1;
            fn(&c);
            _exit(CX_OK);
        }
        r->pid[i] = p;
        alive[i] = 1;
        code[i] = -1;
    }

    sigset_t chld;
    sigemptyset(&chld);
    sigaddset(&chld, SIGCHLD);
    uint64_t t0 = now_ns(), deadline = t0 + (uint64_t)(2 * g.grace_s * 1e9);
    int released = 0, nalive = r->nchild, early = 0, timed_out = 0;
    while (nalive > 0) {
        for (int i = 0; i < r->nchild; i++) {
            int st;
            if (alive[i] && waitpid(r->pid[i], &st, WNOHANG) == r->pid[i]) {
                alive[i] = 0;
                nalive--;
                code[i] = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
                if (code[i] != CX_OK)
                    early = 1;
            }
        }
        if (early || nalive == 0)
            break;
        uint64_t t = now_ns();
        if (t > deadline) {
            timed_out = 1;
            break;
        }
        if (!released) {
            uint32_t a = __atomic_load_n(&r->ctl->arrived, __ATOMIC_ACQUIRE);
            if ((int)a >= r->nsync) {
                released = 1;
                __atomic_store_n(&r->ctl->go, 1, __ATOMIC_RELEASE);
                futex_wake_all(&r->ctl->go);
                double limit = g.grace_s + 10.0 * (r->target_s > g.rt_cap_s ? r->target_s : g.rt_cap_s);
                deadline = now_ns() + (uint64_t)(limit * 1e9);
            } else {
                futex_wait_u32(&r->ctl->arrived, a, 10);
            }
            continue;
        }
        uint64_t left = deadline - t;
        struct timespec ts = {(time_t)(left / 1000000000u), (long)(left % 1000000000u)};
        if (ts.tv_sec > 1) {
            ts.tv_sec = 1;
            ts.tv_nsec = 0;
        }
        sigtimedwait(&chld, NULL, &ts);
    }
    char hung[200] = "";
    if (timed_out) {
        size_t at = 0;
        for (int i = 0; i < r->nchild && at + 1 < sizeof hung; i++) {
            char d[96];
            if (!alive[i])
                continue;
            describe_child(r->pid[i], d, sizeof d);
            sfmt(hung + at, sizeof hung - at, "%s#%d %s, %" PRIu64 " done", at ? "; " : "", i, d, r->ctl->res[i].count);
            at = strlen(hung);
        }
    }
    if (nalive > 0) {
        __atomic_store_n(&r->ctl->abort_, 1, __ATOMIC_RELEASE);
        kill_all(r, alive);
    }
    if (timed_out) {
        sfmt(why, whylen, "hung %s: no progress within the deadline, killed (%s)",
             released ? "after the start" : "during warm-up", hung);
        return RUN_FAIL;
    }
    enum outcome oc = RUN_OK;
    for (int i = 0; i < r->nchild; i++) {
        if (code[i] == CX_OK || code[i] == -1 || code[i] == 3)
            continue;
        const char *m = r->ctl->res[i].msg[0] ? r->ctl->res[i].msg : "(no message)";
        if (code[i] == CX_SKIP && oc != RUN_FAIL) {
            sfmt(why, whylen, "%s", m);
            oc = RUN_SKIP;
        } else if (code[i] == CX_FAIL) {
            sfmt(why, whylen, "process %d: %s", i, m);
            oc = RUN_FAIL;
        } else if (code[i] >= 128) {
            sfmt(why, whylen, "process %d killed by signal %d (%s)", i, code[i] - 128, m);
            oc = RUN_FAIL;
        } else if (oc != RUN_FAIL) {
            sfmt(why, whylen, "process %d exited %d: %s", i, code[i], m);
            oc = RUN_FAIL;
        }
    }
    return oc;
}

static void run_free(struct run *r)
{
    if (r->ctl)
        munmap(r->ctl, r->ctl_len);
    r->ctl = NULL;
}

/* ------------------------------------------------------------ results */

struct series {
    char wl[16], tr[24], metric[24], unit[12];
    size_t size;
    double q; /* latency quantile (1 = max), -1 otherwise */
    int n;
    double v[MAX_REPS];
    char skip[200];
};

static struct series *g_ser;
static size_t g_nser, g_capser;

static struct series *ser(const char *wl, const char *tr, size_t size, const char *metric, const char *unit, double q)
{
    for (size_t i = 0; i < g_nser; i++) {
        struct series *s = &g_ser[i];
        if (!strcmp(s->wl, wl) && !strcmp(s->tr, tr) && s->size == size && !strcmp(s->metric, metric))
            return s;
    }
    if (g_nser == g_capser) {
        g_capser = g_capser ? 2 * g_capser : 256;
        g_ser = realloc(g_ser, g_capser * sizeof *g_ser);
        if (!g_ser) {
            perror("realloc");
            exit(2);
        }
    }
    struct series *s = &g_ser[g_nser++];
    memset(s, 0, sizeof *s);
    sfmt(s->wl, sizeof s->wl, "%s", wl);
    sfmt(s->tr, sizeof s->tr, "%s", tr);
    sfmt(s->metric, sizeof s->metric, "%s", metric);
    sfmt(s->unit, sizeof s->unit, "%s", unit);
    s->size = size;
    s->q = q;
    return s;
}

static void ser_add(const char *wl, const char *tr, size_t size, const char *metric, const char *unit, double q,
                    double v)
{
    struct series *s = ser(wl, tr, size, metric, unit, q);
    if (s->n < MAX_REPS && isfinite(v))
        s->v[s->n++] = v;
}

static void ser_skip(const char *wl, const char *tr, size_t size, const char *metric, const char *why)
{
    struct series *s = ser(wl, tr, size, metric, "", -1);
    if (!s->skip[0])
        sfmt(s->skip, sizeof s->skip, "%s", why);
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static int ser_stat(const struct series *s, double *med, double *mn, double *mx)
{
    double v[MAX_REPS];
    if (!s || s->n == 0)
        return -1;
    memcpy(v, s->v, (size_t)s->n * sizeof v[0]);
    qsort(v, (size_t)s->n, sizeof v[0], cmp_double);
    *med = s->n % 2 ? v[s->n / 2] : (v[s->n / 2 - 1] + v[s->n / 2]) / 2;
    *mn = v[0];
    *mx = v[s->n - 1];
    return 0;
}

static const struct series *ser_find(const char *wl, const char *tr, size_t size, const char *metric)
{
    for (size_t i = 0; i < g_nser; i++) {
        const struct series *s = &g_ser[i];
        if (!strcmp(s->wl, wl) && !strcmp(s->tr, tr) && s->size == size && !strcmp(s->metric, metric))
            return s;
    }
    return NULL;
}

static double med(const char *wl, const char *tr, size_t size, const char *metric)
{
    double m, lo, hi;
    return ser_stat(ser_find(wl, tr, size, metric), &m, &lo, &hi) == 0 ? m : NAN;
}

static const char *skip_why(const char *wl, const char *tr, size_t size, const char *metric)
{
    const struct series *s = ser_find(wl, tr, size, metric);
    return s && s->n == 0 && s->skip[0] ? s->skip : NULL;
}

/* 3 significant digits with k/M/G. */
static char *fmt_si(char *b, size_t n, double v)
{
    const char *suf = "";
    if (!isfinite(v)) {
        sfmt(b, n, "-");
        return b;
    }
    if (v >= 1e9) {
        v /= 1e9;
        suf = "G";
    } else if (v >= 1e6) {
        v /= 1e6;
        suf = "M";
    } else if (v >= 1e4) {
        v /= 1e3;
        suf = "k";
    }
    sfmt(b, n, v >= 100 ? "%.0f%s" : v >= 10 ? "%.1f%s" : "%.2f%s", v, suf);
    return b;
}

static char *fmt_fix(char *b, size_t n, double v)
{
    if (!isfinite(v))
        sfmt(b, n, "-");
    else
        sfmt(b, n, v >= 1000 ? "%.0f" : v >= 100 ? "%.1f" : v >= 1 ? "%.2f" : v >= 0.01 ? "%.3f" : "%.2g", v);
    return b;
}

static char *fmt_ratio(char *b, size_t n, double v)
{
    if (!isfinite(v))
        sfmt(b, n, "-");
    else
        sfmt(b, n, v >= 100 ? "%.0fx" : v >= 10 ? "%.1fx" : v >= 0.1 ? "%.2fx" : "%.3fx", v);
    return b;
}

/* "median [min-max]" of a series; "n/a" when absent. */
static char *cell(char *b, size_t n, const char *wl, const char *tr, size_t size, const char *metric,
                  char *(*f)(char *, size_t, double))
{
    double m, lo, hi;
    char x[24], y[24], z[24];
    if (ser_stat(ser_find(wl, tr, size, metric), &m, &lo, &hi) < 0)
        sfmt(b, n, "n/a");
    else
        sfmt(b, n, "%s [%s-%s]", f(x, sizeof x, m), f(y, sizeof y, lo), f(z, sizeof z, hi));
    return b;
}

static const char *size_name(size_t s)
{
    static char b[4][16];
    static int k;
    char *o = b[k++ & 3];
    if (s >= MiB && s % MiB == 0)
        sfmt(o, 16, "%zu MiB", s / MiB);
    else if (s >= KiB && s % KiB == 0)
        sfmt(o, 16, "%zu KiB", s / KiB);
    else
        sfmt(o, 16, "%zu B", s);
    return o;
}

/* --------------------------------------------------------- targets list */

struct target {
    char what[96];
    double value, bound;
    int at_most; /* 1: value <= bound is met, 0: value >= bound */
};
static struct target g_tg[32];
static int g_ntg;

static void target(const char *what, double value, int at_most, double bound)
{
    if (g_ntg < (int)(sizeof g_tg / sizeof g_tg[0])) {
        struct target *t = &g_tg[g_ntg++];
        sfmt(t->what, sizeof t->what, "%s", what);
        t->value = value;
        t->at_most = at_most;
        t->bound = bound;
    }
}

static int g_warnings;

/* Wrong data from any transport fails the run (for a baseline it would be a
 * bench bug); a baseline peer that hangs is its own problem: warn only. */
static void note_failure(const char *wl, const struct transport *t, size_t size, const char *why)
{
    if (t->kind != K_MMIPC && !strncmp(why, "hung", 4)) {
        g_warnings++;
        fprintf(stderr, "\nWARNING: %s %s %s: %s\n", wl, t->name, size_name(size), why);
        printf("  WARNING: %s %s %s: %s (a peer, not mmipc: run not counted, not a failure)\n", wl, t->name,
               size_name(size), why);
        return;
    }
    g_failures++;
    fprintf(stderr, "\nFAILURE: %s %s %s: %s\n", wl, t->name, size_name(size), why);
    printf("  FAILURE: %s %s %s: %s\n", wl, t->name, size_name(size), why);
}

static void progress(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void progress(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fflush(stderr);
}

/* ===================================================== W1: ping-pong */

static void w1_server(struct child *c)
{
    struct end e;
    child_enter(c);
    if (end_open(&e, &c->r->link, 1, c->r->size) < 0)
        cexit(c, CX_FAIL, "server: %s", e.err);
    for (;;) {
        const void *p;
        ssize_t n = end_recv(&e, &p);
        if (n < 0)
            cexit(c, CX_FAIL, "server: %s", e.err);
        int stop = n >= 8 && *(const u64u *)p == SEQ_STOP;
        if (stop)
            c->res->cpu_end = sched_getcpu();
        if (!stop && end_send_raw(&e, p, (size_t)n) < 0)
            cexit(c, CX_FAIL, "server: %s", e.err);
        if (end_done(&e) < 0)
            cexit(c, CX_FAIL, "server: %s", e.err);
        if (stop)
            break;
    }
    end_close(&e);
    cfinish(c);
}

static int w1_rt(struct child *c, struct end *e, struct tmpl *tm, uint64_t seq, uint64_t *ns)
{
    const void *p;
    uint64_t got_seq, src, t0 = now_ns();
    if (end_send(e, tm, seq, 0) < 0)
        cexit(c, CX_FAIL, "client: %s", e->err);
    ssize_t n = end_recv(e, &p);
    uint64_t t1 = now_ns();
    if (n < 0)
        cexit(c, CX_FAIL, "client: %s", e->err);
    if (msg_check(p, (size_t)n, tm, &got_seq, &src) < 0)
        cfail(c, "reply %" PRIu64 ": corrupt or wrong length (%zd bytes)", seq, n);
    else if (got_seq != seq)
        cfail(c, "reply carries sequence %" PRIu64 ", expected %" PRIu64, got_seq, seq);
    if (end_done(e) < 0)
        cexit(c, CX_FAIL, "client: %s", e->err);
    *ns = t1 - t0;
    return 0;
}

static void w1_client(struct child *c)
{
    struct run *r = c->r;
    struct end e;
    struct tmpl tm;
    uint64_t seq = 0, ns, i;
    child_enter(c);
    if (end_open(&e, &r->link, 0, r->size) < 0)
        cexit(c, CX_FAIL, "client: %s", e.err);
    tmpl_init(&tm, r->size);
    uint64_t wend = now_ns() + (uint64_t)(g.warm_s * 1e9);
    do
        w1_rt(c, &e, &tm, seq++, &ns);
    while (seq < 20 || now_ns() < wend);
    child_sync(c);
    meter_begin(c);
    uint64_t stop = c->m0.t + (uint64_t)(g.rt_cap_s * 1e9);
    for (i = 0; i < r->max_rt;) {
        w1_rt(c, &e, &tm, seq++, &ns);
        r->ctl->samples[i++] = ns;
        if ((i & 15) == 0 && now_ns() >= stop)
            break;
    }
    meter_end(c, i);
    c->res->cpu_end = sched_getcpu();
    r->ctl->nsamples = i;
    if (end_send(&e, &tm, SEQ_STOP, 0) < 0)
        cexit(c, CX_FAIL, "client: %s", e.err);
    end_close(&e);
    cfinish(c);
}

static void w1_child(struct child *c)
{
    if (c->idx == 0)
        w1_client(c);
    else
        w1_server(c);
}

static const double g_quant[] = {0.0, 0.5, 0.9, 0.99, 0.999, 0.9999, 1.0};
static const char *const g_qname[] = {"min", "p50", "p90", "p99", "p99.9", "p99.99", "max"};
#define NQUANT (sizeof g_quant / sizeof g_quant[0])

static double quantile(const uint64_t *sorted, uint64_t n, double q)
{
    if (q <= 0)
        return (double)sorted[0];
    uint64_t k = (uint64_t)ceil(q * (double)n);
    if (k < 1)
        k = 1;
    if (k > n)
        k = n;
    return (double)sorted[k - 1];
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static void w1_once(const struct transport *t, size_t size)
{
    struct run r;
    char why[300];
    memset(&r, 0, sizeof r);
    r.t = t;
    r.size = size;
    r.nchild = 2;
    r.nsync = 1;
    r.max_rt = g.rt_max;
    r.target_s = g.rt_cap_s;
    int rc = link_prepare(&r.link, t, size, 2, why, sizeof why);
    if (rc != 0) {
        if (rc > 0)
            ser_skip("W1", t->name, size, "p50", why);
        else
            note_failure("W1", t, size, why);
        link_destroy(&r.link);
        return;
    }
    enum outcome oc = run_children(&r, w1_child, why, sizeof why);
    if (oc == RUN_OK) {
        uint64_t n = r.ctl->nsamples;
        qsort(r.ctl->samples, n, sizeof(uint64_t), cmp_u64);
        for (size_t k = 0; k < NQUANT && n > 0; k++)
            ser_add("W1", t->name, size, g_qname[k], "us", g_quant[k], quantile(r.ctl->samples, n, g_quant[k]) / 1e3);
        const struct child_res *a = &r.ctl->res[0];
        ser_add("W1", t->name, size, "rt_per_s", "1/s", -1, (double)n / ((double)(a->t_end - a->t_start) / 1e9));
        if (r.ctl->res[0].cpu_end >= 0 && r.ctl->res[1].cpu_end >= 0)
            ser_add("W1", t->name, size, "same_cpu", "0/1", -1, r.ctl->res[0].cpu_end == r.ctl->res[1].cpu_end);
        struct mmipc_ring_stat s0, s1;
        if (t->kind == K_MMIPC && n > 0 && mmipc_ring_stat(r.link.ring[0], &s0) == 0 &&
            mmipc_ring_stat(r.link.ring[1], &s1) == 0) /* warm-up included: an upper bound */
            ser_add("W1", t->name, size, "sleeps_per_rt", "1/rt", -1,
                    (double)(s0.recv_waits + s1.recv_waits) / (double)(s0.received));
    } else if (oc == RUN_SKIP) {
        ser_skip("W1", t->name, size, "p50", why);
    } else {
        note_failure("W1", t, size, why);
    }
    run_free(&r);
    link_destroy(&r.link);
}

static int filter_ts(const struct transport **ts, int nt)
{
    int k = 0;
    for (int i = 0; i < nt; i++)
        if (want_name(ts[i]->name))
            ts[k++] = ts[i];
    return k;
}

static void w1_print(size_t size, const struct transport *const *ts, int nt, const char *title, const char *spin,
                     const char *sleep)
{
    char a[48], b[48], c[24], d[24], r1[16], r2[16], r3[16];
    printf("\n%s, %s messages\n    (microseconds per round trip; median of runs, [min-max] over runs)\n", title,
           size_name(size));
    printf("  %-14s %-22s %-22s %8s %8s %10s %10s %10s\n", "transport", "p50", "p99", "p99.9", "max", "mmipc/x50",
           "mmipc/x99", "sleep/x50");
    for (int i = 0; i < nt; i++) {
        const char *n = ts[i]->name, *w = skip_why("W1", n, size, "p50");
        if (w) {
            printf("  %-14s n/a: %s\n", n, w);
            continue;
        }
        double p50 = med("W1", n, size, "p50"), p99 = med("W1", n, size, "p99");
        printf("  %-14s %-22s %-22s %8s %8s %10s %10s %10s\n", n, cell(a, sizeof a, "W1", n, size, "p50", fmt_fix),
               cell(b, sizeof b, "W1", n, size, "p99", fmt_fix), fmt_fix(c, sizeof c, med("W1", n, size, "p99.9")),
               fmt_fix(d, sizeof d, med("W1", n, size, "max")),
               fmt_ratio(r1, sizeof r1, med("W1", spin, size, "p50") / p50),
               fmt_ratio(r2, sizeof r2, med("W1", spin, size, "p99") / p99),
               sleep ? fmt_ratio(r3, sizeof r3, med("W1", sleep, size, "p50") / p50) : "");
    }
    printf("  (mmipc/x50 = %s p50 / this p50, x99 the same for p99: below 1 means mmipc is faster%s)\n", spin,
           sleep ? ";\n   sleep/x50 = mmipc-sleep p50 / this p50" : "");
    if (!strstr(spin, "pinned")) {
        /* Spinning only pays when the peer runs on another CPU: say where the
         * scheduler put the two sides (other load makes it stack them). */
        printf("  runs that ended with both sides on one CPU:");
        for (int i = 0; i < nt; i++) {
            const struct series *sc = ser_find("W1", ts[i]->name, size, "same_cpu");
            int same = 0;
            for (int k = 0; sc && k < sc->n; k++)
                same += sc->v[k] > 0.5;
            if (sc)
                printf(" %s %d/%d%s", ts[i]->name, same, sc->n, i + 1 < nt ? "," : "");
        }
        printf("\n");
    }
    double sl = med("W1", spin, size, "sleeps_per_rt"), ss = sleep ? med("W1", sleep, size, "sleeps_per_rt") : NAN;
    if (isfinite(sl))
        printf("  mmipc futex sleeps per round trip (warm-up included): %s %.2f%s", spin, sl,
               isfinite(ss) ? "," : "\n");
    if (isfinite(ss))
        printf(" %s %.2f\n", sleep, ss);
    fflush(stdout);
}

static void run_w1(void)
{
    const struct transport *ts[8];
    int nt = 0;
    ts[nt++] = &T_MMIPC;
    ts[nt++] = &T_MMIPC_SLEEP;
    ts[nt++] = &T_PIPE;
    ts[nt++] = &T_SOCK;
    ts[nt++] = &T_MQ;
#ifdef HAVE_ZMQ
    ts[nt++] = &T_ZMQ_RR;
#endif
    ts[nt++] = &T_SPSC;
    nt = filter_ts(ts, nt);
    static const size_t sizes[] = {64, 4096};
    for (size_t si = 0; si < 2 && nt > 0; si++) {
        progress("W1 ping-pong %s: %d runs x %d transports ", size_name(sizes[si]), g.reps, nt);
        for (int rep = 0; rep < g.reps; rep++) {
            for (int k = 0; k < nt; k++)
                w1_once(ts[(k + rep) % nt], sizes[si]);
            progress(".");
        }
        progress("\n");
        w1_print(sizes[si], ts, nt, "W1  ping-pong round trip, two processes on two CPUs", "mmipc", "mmipc-sleep");
    }
    const struct transport *pin[2] = {&T_MMIPC_PIN, &T_PIPE_PIN};
    int np = filter_ts(pin, 2);
    if (np == 0)
        return;
    progress("W1 pinned to one CPU: %d runs x %d transports ", g.reps, np);
    for (int rep = 0; rep < g.reps; rep++) {
        for (int k = 0; k < np; k++)
            w1_once(pin[(k + rep) % np], 64);
        progress(".");
    }
    progress("\n");
    w1_print(64, pin, np, "W1p ping-pong round trip, both processes pinned to one CPU", "mmipc-pinned", NULL);
}

/* ===================================================== W2/W3: streams */

static void stream_producer(struct child *c, uint64_t src)
{
    struct run *r = c->r;
    struct end e;
    struct tmpl tm;
    uint64_t seq = 0, n = 0, mask = r->size >= 4096 ? 0 : 63;
    child_enter(c);
    if (end_open(&e, &r->link, 0, r->size) < 0)
        cexit(c, CX_FAIL, "producer: %s", e.err);
    tmpl_init(&tm, r->size);
    uint64_t wend = now_ns() + (uint64_t)(g.warm_s * 1e9);
    for (;;) {
        if (end_send(&e, &tm, seq++, src) < 0)
            cexit(c, CX_FAIL, "producer: %s", e.err);
        if ((seq & mask) == 0 && seq >= 16 && now_ns() >= wend)
            break;
    }
    if (end_send(&e, &tm, SEQ_WARM_END, src) < 0)
        cexit(c, CX_FAIL, "producer: %s", e.err);
    child_sync(c);
    meter_begin(c);
    uint64_t stop = c->m0.t + (uint64_t)(r->target_s * 1e9);
    for (;;) {
        if (end_send(&e, &tm, seq++, src) < 0)
            cexit(c, CX_FAIL, "producer: %s", e.err);
        if ((++n & mask) == 0 && now_ns() >= stop)
            break;
    }
    meter_end(c, n);
    c->res->sent_total = seq;
    if (end_send(&e, &tm, SEQ_STOP, src) < 0)
        cexit(c, CX_FAIL, "producer: %s", e.err);
    end_close(&e);
    cfinish(c);
}

/* Receive one message, check it, account it.  Returns its sequence word. */
static uint64_t consume_one(struct child *c, struct end *e, struct tmpl *tm, uint64_t *next)
{
    const void *p;
    uint64_t seq, src;
    ssize_t n = end_recv(e, &p);
    if (n < 0)
        cexit(c, CX_FAIL, "consumer: %s", e->err);
    if (msg_check(p, (size_t)n, tm, &seq, &src) < 0) {
        cfail(c, "corrupt or torn message (%zd bytes, sequence word %" PRIu64 ")", n, n >= 8 ? *(const u64u *)p : 0);
        seq = 0;
    } else if (src >= (uint64_t)c->r->nprod) {
        cfail(c, "message from unknown producer %" PRIu64, src);
    } else if (seq < SEQ_WARM_END) {
        if (c->r->nprod == 1 ? seq != next[src] : seq < next[src])
            cfail(c, "producer %" PRIu64 ": got sequence %" PRIu64 ", expected %s%" PRIu64, src, seq,
                  c->r->nprod == 1 ? "" : "at least ", next[src]);
        next[src] = seq + 1;
        c->res->got[src]++;
        c->res->seqsum[src] += seq;
    }
    if (end_done(e) < 0)
        cexit(c, CX_FAIL, "consumer: %s", e->err);
    return seq;
}

static void stream_consumer(struct child *c)
{
    struct run *r = c->r;
    struct end e;
    struct tmpl tm;
    uint64_t next[MAX_PROD] = {0}, n = 0;
    child_enter(c);
    if (end_open(&e, &r->link, 1, r->size) < 0)
        cexit(c, CX_FAIL, "consumer: %s", e.err);
    tmpl_init(&tm, r->size);
    /* With several consumers each takes exactly one marker: when the last
     * one is taken, every message sent before any marker has been taken. */
    while (consume_one(c, &e, &tm, next) != SEQ_WARM_END)
        ;
    child_sync(c);
    meter_begin(c);
    for (;;) {
        uint64_t s = consume_one(c, &e, &tm, next);
        if (s == SEQ_STOP)
            break;
        if (s != SEQ_WARM_END)
            n++;
    }
    meter_end(c, n);
    end_close(&e);
    cfinish(c);
}

static void stream_child(struct child *c)
{
    if (c->idx < c->r->nprod)
        stream_producer(c, (uint64_t)c->idx);
    else
        stream_consumer(c);
}

static void memcpy_child(struct child *c)
{
    struct run *r = c->r;
    struct tmpl tm;
    uint64_t n = 0, mask = r->size >= 4096 ? 0 : 255;
    child_enter(c);
    tmpl_init(&tm, r->size);
    unsigned char *dst = aligned_alloc(64, (r->size + 63) & ~(size_t)63);
    if (!dst)
        cexit(c, CX_FAIL, "out of memory");
    uint64_t wend = now_ns() + (uint64_t)(g.warm_s * 1e9);
    while (now_ns() < wend)
        for (int i = 0; i < 16; i++) {
            memcpy(dst, tm.buf, r->size);
            __asm__ __volatile__("" : : "r"(dst) : "memory");
        }
    child_sync(c);
    meter_begin(c);
    uint64_t stop = c->m0.t + (uint64_t)(r->target_s * 1e9);
    for (;;) {
        memcpy(dst, tm.buf, r->size);
        __asm__ __volatile__("" : : "r"(dst) : "memory");
        if ((++n & mask) == 0 && now_ns() >= stop)
            break;
    }
    meter_end(c, n);
    if (memcmp(dst, tm.buf, r->size) != 0)
        cfail(c, "memcpy result differs");
    cfinish(c);
}

struct stream_out {
    double msgs_s, mb_s, cpu_per_m, vcsw_per_k, ivcsw_per_k, sys_tx, sys_rx, waits_per_k;
};

/* One stream run: nprod producers, ncons consumers over one queue. */
static enum outcome stream_once(const struct transport *t, size_t size, int nprod, int ncons, double target_s,
                                int count_sys, struct stream_out *o, char *why, size_t whylen)
{
    struct run r;
    memset(&r, 0, sizeof r);
    memset(o, 0, sizeof *o);
    r.t = t;
    r.size = size;
    r.nprod = t->kind == K_MEMCPY ? 0 : nprod;
    r.nchild = t->kind == K_MEMCPY ? 1 : nprod + ncons;
    r.nsync = r.nchild;
    r.target_s = target_s;
    r.count_syscalls = count_sys;
    int rc = link_prepare(&r.link, t, size, 1, why, whylen);
    if (rc != 0) {
        link_destroy(&r.link);
        return rc > 0 ? RUN_SKIP : RUN_FAIL;
    }
    enum outcome oc = run_children(&r, t->kind == K_MEMCPY ? memcpy_child : stream_child, why, whylen);
    if (oc == RUN_OK) {
        uint64_t t0 = UINT64_MAX, t1 = 0, msgs = 0;
        double cpu = 0;
        int64_t vcs = 0, ivcs = 0, stx = 0, srx = 0;
        int sys_ok = 1;
        for (int i = 0; i < r.nchild; i++) {
            const struct child_res *x = &r.ctl->res[i];
            int cons = i >= r.nprod;
            if (x->t_start < t0)
                t0 = x->t_start;
            if (cons && x->t_end > t1)
                t1 = x->t_end;
            if (cons)
                msgs += x->count;
            cpu += x->cpu_s;
            vcs += x->vcsw;
            ivcs += x->ivcsw;
            if (x->syscalls < 0)
                sys_ok = 0;
            else if (cons)
                srx += x->syscalls;
            else
                stx += x->syscalls;
        }
        /* every data message exactly once, in order per producer */
        for (int p = 0; p < r.nprod && oc == RUN_OK; p++) {
            uint64_t sent = r.ctl->res[p].sent_total, got = 0, sum = 0;
            for (int i = r.nprod; i < r.nchild; i++) {
                got += r.ctl->res[i].got[p];
                sum += r.ctl->res[i].seqsum[p];
            }
            uint64_t want_sum = sent % 2 ? sent * ((sent - 1) / 2) : (sent / 2) * (sent - 1);
            if (got != sent || sum != want_sum) {
                sfmt(why, whylen, "producer %d sent %" PRIu64 " messages, consumers got %" PRIu64 " (sequence sum %s)",
                     p, sent, got, sum == want_sum ? "ok" : "wrong: lost or duplicated messages");
                oc = RUN_FAIL;
            }
        }
        double secs = (double)(t1 - t0) / 1e9;
        if (secs > 0 && msgs > 0) {
            o->msgs_s = (double)msgs / secs;
            o->mb_s = o->msgs_s * (double)size / 1e6;
            o->cpu_per_m = cpu / (double)msgs * 1e6;
            o->vcsw_per_k = (double)vcs / (double)msgs * 1e3;
            o->ivcsw_per_k = (double)ivcs / (double)msgs * 1e3;
            o->sys_tx = sys_ok && count_sys ? (double)stx / (double)msgs : NAN;
            o->sys_rx = sys_ok && count_sys ? (double)srx / (double)msgs : NAN;
        }
        o->waits_per_k = NAN;
        if (t->kind == K_MMIPC && r.link.ring[0]) {
            struct mmipc_ring_stat st;
            if (mmipc_ring_stat(r.link.ring[0], &st) == 0 && st.received > 0)
                o->waits_per_k = (double)(st.send_waits + st.recv_waits) / (double)st.received * 1e3;
        }
    }
    run_free(&r);
    link_destroy(&r.link);
    return oc;
}

static void w2_once(const struct transport *t, size_t size)
{
    struct stream_out o;
    char why[300];
    enum outcome oc = stream_once(t, size, 1, 1, g.stream_s, 0, &o, why, sizeof why);
    if (oc == RUN_OK) {
        ser_add("W2", t->name, size, "msgs_per_s", "msgs/s", -1, o.msgs_s);
        ser_add("W2", t->name, size, "MB_per_s", "MB/s", -1, o.mb_s);
        ser_add("W2", t->name, size, "cpu_s_per_Mmsg", "s", -1, o.cpu_per_m);
        ser_add("W2", t->name, size, "vcsw_per_kmsg", "1/kmsg", -1, o.vcsw_per_k);
        ser_add("W2", t->name, size, "ivcsw_per_kmsg", "1/kmsg", -1, o.ivcsw_per_k);
        if (isfinite(o.waits_per_k))
            ser_add("W2", t->name, size, "sleeps_per_kmsg", "1/kmsg", -1, o.waits_per_k);
    } else if (oc == RUN_SKIP) {
        ser_skip("W2", t->name, size, "msgs_per_s", why);
    } else {
        note_failure("W2", t, size, why);
    }
}

static void cost_once(const struct transport *t, size_t size)
{
    struct stream_out o;
    char why[300];
    enum outcome oc = stream_once(t, size, 1, 1, g.cost_s, 1, &o, why, sizeof why);
    if (oc == RUN_OK && isfinite(o.sys_tx)) {
        ser_add("W2", t->name, size, "syscalls_per_msg", "1/msg", -1, o.sys_tx + o.sys_rx);
        ser_add("W2", t->name, size, "syscalls_tx_per_msg", "1/msg", -1, o.sys_tx);
        ser_add("W2", t->name, size, "syscalls_rx_per_msg", "1/msg", -1, o.sys_rx);
    } else if (oc == RUN_FAIL) {
        note_failure("W2 cost", t, size, why);
    }
}

static void w2_print(size_t size, const struct transport *const *ts, int nt)
{
    char a[48], m[24], r1[16], r2[16];
    printf("\nW2  one-way stream, 1 producer -> 1 consumer, %s messages (median of runs [min-max])\n", size_name(size));
    printf("  %-13s %-26s %-9s %9s %9s\n", "transport", "msgs/s", "MB/s", "mmipc/x", "zc/x");
    for (int i = 0; i < nt; i++) {
        const char *n = ts[i]->name, *w = skip_why("W2", n, size, "msgs_per_s");
        if (w) {
            printf("  %-13s n/a: %s\n", n, w);
            continue;
        }
        double v = med("W2", n, size, "msgs_per_s");
        printf("  %-13s %-26s %-9s %9s %9s\n", n, cell(a, sizeof a, "W2", n, size, "msgs_per_s", fmt_si),
               fmt_si(m, sizeof m, med("W2", n, size, "MB_per_s")),
               fmt_ratio(r1, sizeof r1, med("W2", "mmipc", size, "msgs_per_s") / v),
               fmt_ratio(r2, sizeof r2, med("W2", "mmipc-zc", size, "msgs_per_s") / v));
    }
    printf("  (mmipc/x = mmipc copy API msgs/s / this msgs/s; zc/x the same for the zero-copy API)\n");
    fflush(stdout);
}

static void w2_cost_print(const size_t *sizes, int ns, const struct transport *const *ts, int nt)
{
    char a[24], b[24], c[24], d[24], e[24], f[24];
    printf("\nW2  cost of streaming, both processes together (median of runs)\n");
    printf("  CPU = user+system seconds per million messages (getrusage in each process, timed part only);\n"
           "  csw = voluntary / involuntary context switches per 1000 messages;\n");
    if (g_sys_tp >= 0)
        printf("  syscalls/msg = system calls entered by both processes (and their threads) per message, counted\n"
               "  exactly with a perf counter on the raw_syscalls:sys_enter tracepoint in a separate pass of %.2f s\n"
               "  (tx+rx); sleeps = mmipc_ring_stat send_waits+recv_waits per 1000 messages.\n",
               g.cost_s);
    else
        printf("  syscalls/msg: not measured: %s\n", g_sys_why);
    for (int s = 0; s < ns; s++) {
        size_t size = sizes[s];
        printf("  %s\n  %-13s %9s %15s %24s %8s\n", size_name(size), "transport", "CPU s/M", "csw/1k v / inv",
               "syscalls/msg (tx + rx)", "sleeps/k");
        for (int i = 0; i < nt; i++) {
            const char *n = ts[i]->name;
            if (skip_why("W2", n, size, "msgs_per_s"))
                continue;
            char vv[48], sy[64];
            sfmt(vv, sizeof vv, "%s / %s", fmt_fix(b, sizeof b, med("W2", n, size, "vcsw_per_kmsg")),
                 fmt_fix(c, sizeof c, med("W2", n, size, "ivcsw_per_kmsg")));
            double st = med("W2", n, size, "syscalls_per_msg");
            if (isfinite(st))
                sfmt(sy, sizeof sy, "%s (%s + %s)", fmt_fix(d, sizeof d, st),
                     fmt_fix(e, sizeof e, med("W2", n, size, "syscalls_tx_per_msg")),
                     fmt_fix(f, sizeof f, med("W2", n, size, "syscalls_rx_per_msg")));
            else
                sfmt(sy, sizeof sy, "-");
            printf("  %-13s %9s %15s %24s %8s\n", n, fmt_fix(a, sizeof a, med("W2", n, size, "cpu_s_per_Mmsg")), vv, sy,
                   fmt_fix(f, sizeof f, med("W2", n, size, "sleeps_per_kmsg")));
        }
    }
    fflush(stdout);
}

static const size_t g_w2_sizes[] = {64, 1024, 64 * 1024, 1024 * 1024};

static int w2_transports(const struct transport **ts)
{
    int nt = 0;
    ts[nt++] = &T_MMIPC;
    ts[nt++] = &T_MMIPC_ZC;
    ts[nt++] = &T_PIPE;
    ts[nt++] = &T_SOCK;
    ts[nt++] = &T_MQ;
#ifdef HAVE_ZMQ
    ts[nt++] = &T_ZMQ_PP;
#endif
    ts[nt++] = &T_SPSC;
    ts[nt++] = &T_MEMCPY;
    return filter_ts(ts, nt);
}

static void run_w2(void)
{
    const struct transport *ts[10];
    int nt = w2_transports(ts);
    for (size_t si = 0; si < 4; si++) {
        size_t size = g_w2_sizes[si];
        progress("W2 stream %s: %d runs x %d transports ", size_name(size), g.reps, nt);
        for (int rep = 0; rep < g.reps; rep++) {
            for (int k = 0; k < nt; k++)
                w2_once(ts[(k + rep) % nt], size);
            progress(".");
        }
        progress("\n");
        w2_print(size, ts, nt);
    }
}

static void run_cost(void)
{
    const struct transport *ts[10];
    int nt = w2_transports(ts);
    if (nt > 0 && ts[nt - 1]->kind == K_MEMCPY)
        nt--; /* memcpy has no messages to count */
    if (g_sys_tp >= 0) {
        progress("W2 cost: counting system calls, 1 run x %d transports x 4 sizes ", nt);
        for (size_t si = 0; si < 4; si++) {
            for (int k = 0; k < nt; k++)
                cost_once(ts[k], g_w2_sizes[si]);
            progress(".");
        }
        progress("\n");
    }
    w2_cost_print(g_w2_sizes, 4, ts, nt);
}

static void run_w3(void)
{
    const struct transport *ts[3] = {&T_MMIPC, &T_PIPE, &T_MQ};
    char a[48], r1[16], r2[16], c[24];
    int nt = filter_ts(ts, 3);
    if (nt == 0)
        return;
    progress("W3 4x4 contention: %d runs x %d transports ", g.reps, nt);
    for (int rep = 0; rep < g.reps; rep++) {
        for (int k = 0; k < nt; k++) {
            const struct transport *t = ts[(k + rep) % nt];
            struct stream_out o;
            char why[300];
            enum outcome oc = stream_once(t, 64, 4, 4, g.w3_s, 0, &o, why, sizeof why);
            if (oc == RUN_OK) {
                ser_add("W3", t->name, 64, "msgs_per_s", "msgs/s", -1, o.msgs_s);
                ser_add("W3", t->name, 64, "cpu_s_per_Mmsg", "s", -1, o.cpu_per_m);
                ser_add("W3", t->name, 64, "vcsw_per_kmsg", "1/kmsg", -1, o.vcsw_per_k);
            } else if (oc == RUN_SKIP) {
                ser_skip("W3", t->name, 64, "msgs_per_s", why);
            } else {
                note_failure("W3", t, 64, why);
            }
        }
        progress(".");
    }
    progress("\n");
    printf("\nW3  4 producers x 4 consumers on one queue, 64 B messages, 8 processes (aggregate; median [min-max])\n");
    printf("  %-13s %-26s %9s %12s %9s\n", "transport", "msgs/s", "CPU s/M", "vcsw/1k msg", "mmipc/x");
    for (int i = 0; i < nt; i++) {
        const char *n = ts[i]->name, *w = skip_why("W3", n, 64, "msgs_per_s");
        if (w) {
            printf("  %-13s n/a: %s\n", n, w);
            continue;
        }
        printf("  %-13s %-26s %9s %12s %9s\n", n, cell(a, sizeof a, "W3", n, 64, "msgs_per_s", fmt_si),
               fmt_fix(c, sizeof c, med("W3", n, 64, "cpu_s_per_Mmsg")),
               fmt_fix(r2, sizeof r2, med("W3", n, 64, "vcsw_per_kmsg")),
               fmt_ratio(r1, sizeof r1, med("W3", "mmipc", 64, "msgs_per_s") / med("W3", n, 64, "msgs_per_s")));
    }
    double one = med("W2", "mmipc", 64, "msgs_per_s");
    if (isfinite(one))
        printf("  mmipc 4x4 aggregate / mmipc 1->1 (W2 64 B): %s\n",
               fmt_ratio(r1, sizeof r1, med("W3", "mmipc", 64, "msgs_per_s") / one));
    fflush(stdout);
}

/* ===================================================== W5: kv */

#define KV_VAL 64
#define W5_SMALL_KEYS 1000u

static void kv_fill(unsigned char *v, uint32_t k, uint64_t stamp)
{
    u64u *w = (u64u *)v;
    w[0] = k;
    for (int i = 1; i < KV_VAL / 8; i++)
        w[i] = stamp;
}

static int kv_valid(const unsigned char *v, ssize_t n, uint32_t k)
{
    const u64u *w = (const u64u *)v;
    if (n != KV_VAL || w[0] != k)
        return 0;
    for (int i = 2; i < KV_VAL / 8; i++)
        if (w[i] != w[1])
            return 0;
    return 1;
}

struct kvh {
    mmipc_region *reg;
    mmipc_kv *kv;
#ifdef HAVE_LMDB
    MDB_env *env;
    MDB_dbi dbi;
    MDB_txn *rtxn;
#endif
};

static const struct transport T_KV_MMIPC = {"mmipc", K_MMIPC, 0, -1, 0};
#ifdef HAVE_LMDB
static const struct transport T_KV_LMDB = {"lmdb", K_LMDB, 0, -1, 0};
#define LMDB_FLAGS (MDB_NOSYNC | MDB_WRITEMAP)
#define LMDB_MAP (512u * MiB)
#endif

static int kvh_open(struct kvh *h, const struct run *r, char *err, size_t errlen)
{
    memset(h, 0, sizeof *h);
    if (r->t->kind == K_MMIPC) {
        int rc = mmipc_region_open(r->link.path, 0, NULL, &h->reg);
        if (rc == 0)
            rc = mmipc_kv_open(h->reg, "kv", &h->kv);
        if (rc < 0)
            sfmt(err, errlen, "mmipc open: %s", mmipc_strerror(rc));
        return rc;
    }
#ifdef HAVE_LMDB
    int rc = mdb_env_create(&h->env);
    if (rc == 0)
        rc = mdb_env_set_mapsize(h->env, LMDB_MAP);
    if (rc == 0)
        rc = mdb_env_open(h->env, r->kv->lmdb_dir, LMDB_FLAGS, 0600);
    if (rc == 0) {
        int dead;
        mdb_reader_check(h->env, &dead);
        rc = mdb_txn_begin(h->env, NULL, MDB_RDONLY, &h->rtxn);
    }
    if (rc == 0)
        rc = mdb_dbi_open(h->rtxn, NULL, 0, &h->dbi);
    if (rc == 0)
        mdb_txn_reset(h->rtxn);
    if (rc != 0)
        sfmt(err, errlen, "lmdb open: %s", mdb_strerror(rc));
    return rc ? -EIO : 0;
#else
    return -ENOSYS;
#endif
}

static void kvh_close(struct kvh *h)
{
    if (h->reg)
        mmipc_region_close(h->reg);
#ifdef HAVE_LMDB
    if (h->rtxn)
        mdb_txn_abort(h->rtxn);
    if (h->env)
        mdb_env_close(h->env);
#endif
}

/* One get: 1 ok, 0 wrong value, negative error. */
static int kvh_get(struct kvh *h, const struct kvset *ks, uint32_t k, unsigned char *buf)
{
    if (h->kv) {
        ssize_t n = mmipc_kv_get(h->kv, ks->keys[k], buf, KV_VAL, NULL);
        if (n < 0)
            return (int)n;
        return kv_valid(buf, n, k);
    }
#ifdef HAVE_LMDB
    MDB_val key = {ks->klen[k], ks->keys[k]}, val;
    int rc = mdb_txn_renew(h->rtxn);
    if (rc == 0)
        rc = mdb_get(h->rtxn, h->dbi, &key, &val);
    if (rc == 0 && val.mv_size <= KV_VAL)
        memcpy(buf, val.mv_data, val.mv_size);
    mdb_txn_reset(h->rtxn);
    if (rc != 0)
        return -EIO;
    return kv_valid(buf, (ssize_t)val.mv_size, k);
#else
    return -ENOSYS;
#endif
}

static int kvh_put(struct kvh *h, const struct kvset *ks, uint32_t k, unsigned char *buf, uint64_t stamp)
{
    kv_fill(buf, k, stamp);
    if (h->kv)
        return mmipc_kv_put(h->kv, ks->keys[k], buf, KV_VAL);
#ifdef HAVE_LMDB
    MDB_val key = {ks->klen[k], ks->keys[k]}, val = {KV_VAL, buf};
    MDB_txn *t;
    int rc = mdb_txn_begin(h->env, NULL, 0, &t);
    if (rc == 0) {
        rc = mdb_put(t, h->dbi, &key, &val, 0);
        if (rc == 0)
            rc = mdb_txn_commit(t);
        else
            mdb_txn_abort(t);
    }
    return rc ? -EIO : 0;
#else
    return -ENOSYS;
#endif
}

static const char *kvh_err(const struct kvh *h, int rc)
{
#ifdef HAVE_LMDB
    if (!h->kv)
        return "lmdb error";
#endif
    (void)h;
    return mmipc_strerror(rc);
}

static void kv_child(struct child *c)
{
    struct run *r = c->r;
    const struct kvset *ks = r->kv;
    struct kvh h;
    char err[200];
    unsigned char buf[KV_VAL];
    int getter = r->kvmode == KV_GET || (r->kvmode == KV_GETPUT && c->idx == 0);
    uint32_t nk = ks->nkeys;
    uint64_t i = getter ? 0 : nk / 2, n = 0, stamp = ((uint64_t)getpid() << 32);
    child_enter(c);
    if (kvh_open(&h, r, err, sizeof err) < 0)
        cexit(c, CX_FAIL, "%s", err);
    uint64_t wend = now_ns() + (uint64_t)(g.warm_s * 1e9);
    for (;;) {
        uint32_t k = ks->order[i++ % nk];
        int rc = getter ? kvh_get(&h, ks, k, buf) : kvh_put(&h, ks, k, buf, ++stamp);
        if (rc < 0)
            cexit(c, CX_FAIL, "%s %s: %s", getter ? "get" : "put", ks->keys[k], kvh_err(&h, rc));
        if (getter && rc == 0)
            cfail(c, "get %s: wrong or torn value", ks->keys[k]);
        if ((i & 63) == 0 && now_ns() >= wend)
            break;
    }
    child_sync(c);
    meter_begin(c);
    uint64_t stop = c->m0.t + (uint64_t)(r->target_s * 1e9);
    if (!getter && r->kvmode == KV_GETPUT)
        stop = c->m0.t + (uint64_t)(10 * r->target_s * 1e9);
    for (;;) {
        uint32_t k = ks->order[i++ % nk];
        int rc = getter ? kvh_get(&h, ks, k, buf) : kvh_put(&h, ks, k, buf, ++stamp);
        if (rc < 0)
            cexit(c, CX_FAIL, "%s %s: %s", getter ? "get" : "put", ks->keys[k], kvh_err(&h, rc));
        if (getter && rc == 0)
            cfail(c, "get %s: wrong or torn value", ks->keys[k]);
        if ((++n & 255) == 0 && (now_ns() >= stop || (!getter && __atomic_load_n(&r->ctl->stop, __ATOMIC_ACQUIRE))))
            break;
    }
    meter_end(c, n);
    if (getter)
        __atomic_store_n(&r->ctl->stop, 1, __ATOMIC_RELEASE);
    kvh_close(&h);
    cfinish(c);
}

static const char *const g_kvop[] = {"get", "put", "get_while_put", "put_while_get"};

/* A single-process run goes on the repetition's CPU, the same for both
 * stores: left to the scheduler, each new process went to the CPU the last
 * one had not used, so the two stores of a repetition ran on different
 * CPUs, and when one vCPU was slowed by its neighbours (2-3x here, for
 * minutes) the ratio measured that instead of the stores. */
static void w5_once(struct run *proto, enum kvmode mode, int rep)
{
    struct run r = *proto;
    char why[300];
    r.kvmode = mode;
    if (mode != KV_GETPUT)
        r.pin_cpu = 1 + rep;
    r.nchild = r.nsync = mode == KV_GETPUT ? 2 : 1;
    r.target_s = g.kv_s;
    enum outcome oc = run_children(&r, kv_child, why, sizeof why);
    if (oc == RUN_OK) {
        for (int i = 0; i < r.nchild; i++) {
            const struct child_res *x = &r.ctl->res[i];
            const char *op = mode == KV_GET ? "get" : mode == KV_PUT ? "put" : g_kvop[2 + i];
            ser_add(r.kv->wl, r.t->name, KV_VAL, op, "ops/s", -1,
                    (double)x->count / ((double)(x->t_end - x->t_start) / 1e9));
        }
    } else if (oc == RUN_SKIP) {
        ser_skip(r.kv->wl, r.t->name, KV_VAL, "get", why);
    } else {
        note_failure(r.kv->wl, r.t, KV_VAL, why);
    }
    run_free(&r);
}

static int kv_prepare_mmipc(struct run *r, char *why, size_t whylen)
{
    const struct kvset *ks = r->kv;
    unsigned slots = ks->nkeys * 2;
    struct mmipc_region_opts o = {.size = (size_t)slots * 512 + MiB, .mode = 0600, .max_objects = 4};
    unsigned char buf[KV_VAL];
    for (int attempt = 0; attempt < 5; attempt++, o.size *= 2) {
        sfmt(r->link.path, sizeof r->link.path, "%s/kv-%u.mmipc", g.dir, g_seq++);
        int rc = mmipc_region_open(r->link.path, MMIPC_CREATE | MMIPC_EXCL, &o, &r->link.reg);
        if (rc < 0) {
            sfmt(why, whylen, "mmipc_region_open: %s", mmipc_strerror(rc));
            return -1;
        }
        mmipc_kv *kv;
        rc = mmipc_kv_create(r->link.reg, "kv", slots, KV_VAL, &kv);
        if (rc == 0) {
            for (uint32_t k = 0; k < ks->nkeys && rc == 0; k++) {
                kv_fill(buf, k, 0);
                rc = mmipc_kv_put(kv, ks->keys[k], buf, KV_VAL);
            }
            if (rc == 0)
                return 0;
            sfmt(why, whylen, "mmipc_kv_put while preparing: %s", mmipc_strerror(rc));
            return -1;
        }
        mmipc_region_close(r->link.reg);
        r->link.reg = NULL;
        unlink(r->link.path);
        if (rc != -ENOSPC) {
            sfmt(why, whylen, "mmipc_kv_create(%u slots): %s", slots, mmipc_strerror(rc));
            return -1;
        }
    }
    sfmt(why, whylen, "mmipc_kv_create: region too small");
    return -1;
}

#ifdef HAVE_LMDB
static int kv_prepare_lmdb(struct kvset *ks, char *why, size_t whylen)
{
    MDB_env *env;
    MDB_txn *t;
    MDB_dbi dbi;
    unsigned char buf[KV_VAL];
    sfmt(ks->lmdb_dir, sizeof ks->lmdb_dir, "%s/lmdb-%u", g.dir, g_seq++);
    if (mkdir(ks->lmdb_dir, 0700) < 0) {
        sfmt(why, whylen, "mkdir %s: %s", ks->lmdb_dir, strerror(errno));
        return -1;
    }
    int rc = mdb_env_create(&env);
    if (rc == 0)
        rc = mdb_env_set_mapsize(env, LMDB_MAP);
    if (rc == 0)
        rc = mdb_env_open(env, ks->lmdb_dir, LMDB_FLAGS, 0600);
    if (rc == 0)
        rc = mdb_txn_begin(env, NULL, 0, &t);
    if (rc == 0) {
        rc = mdb_dbi_open(t, NULL, 0, &dbi);
        for (uint32_t k = 0; k < ks->nkeys && rc == 0; k++) {
            MDB_val key = {ks->klen[k], ks->keys[k]}, val = {KV_VAL, buf};
            kv_fill(buf, k, 0);
            rc = mdb_put(t, dbi, &key, &val, 0);
        }
        if (rc == 0)
            rc = mdb_txn_commit(t);
        else
            mdb_txn_abort(t);
    }
    mdb_env_close(env);
    if (rc != 0) {
        sfmt(why, whylen, "lmdb prepare: %s", mdb_strerror(rc));
        return -1;
    }
    return 0;
}

static void lmdb_remove(const struct kvset *ks)
{
    char p[PATH_MAX + 16];
    sfmt(p, sizeof p, "%s/data.mdb", ks->lmdb_dir);
    unlink(p);
    sfmt(p, sizeof p, "%s/lock.mdb", ks->lmdb_dir);
    unlink(p);
    rmdir(ks->lmdb_dir);
}
#endif

static void run_w5_table(const char *wl, unsigned nkeys)
{
    struct kvset ks;
    struct run rm, rl;
    char why[300], a[48], b[48], x[16];
    int have_m = 0, have_l = 0;
    if (!want_name("mmipc") && !want_name("lmdb"))
        return;
    memset(&ks, 0, sizeof ks);
    ks.wl = wl;
    ks.nkeys = nkeys;
    ks.keys = calloc(ks.nkeys, sizeof *ks.keys);
    ks.klen = calloc(ks.nkeys, sizeof *ks.klen);
    ks.order = calloc(ks.nkeys, sizeof *ks.order);
    if (!ks.keys || !ks.klen || !ks.order) {
        perror("calloc");
        exit(2);
    }
    uint64_t rs = 0x2545F4914F6CDD1Dull;
    for (uint32_t k = 0; k < ks.nkeys; k++) {
        sfmt(ks.keys[k], sizeof ks.keys[k], "bench/key/%08" PRIu32, k);
        ks.klen[k] = strlen(ks.keys[k]);
        ks.order[k] = k;
    }
    for (uint32_t k = ks.nkeys - 1; k > 0; k--) { /* the same random order for both */
        rs ^= rs << 13;
        rs ^= rs >> 7;
        rs ^= rs << 17;
        uint32_t j = (uint32_t)(rs % (k + 1)), tmp = ks.order[k];
        ks.order[k] = ks.order[j];
        ks.order[j] = tmp;
    }
    memset(&rm, 0, sizeof rm);
    rm.t = &T_KV_MMIPC;
    rm.kv = &ks;
    memset(&rl, 0, sizeof rl);
    progress("W5 kv: preparing %u keys ", ks.nkeys);
    if (want_name("mmipc")) {
        if (kv_prepare_mmipc(&rm, why, sizeof why) == 0)
            have_m = 1;
        else
            note_failure(wl, &T_KV_MMIPC, KV_VAL, why);
    }
#ifdef HAVE_LMDB
    rl.t = &T_KV_LMDB;
    rl.kv = &ks;
    if (want_name("lmdb")) {
        if (kv_prepare_lmdb(&ks, why, sizeof why) == 0)
            have_l = 1;
        else
            ser_skip(wl, "lmdb", KV_VAL, "get", why);
    }
#endif
    /* Runs are short and single-process gets swing 2x with the vCPU's
     * neighbours here: twice the repetitions keep the medians steady. */
    int reps = 2 * g.reps < MAX_REPS ? 2 * g.reps : MAX_REPS;
    progress("%d runs x 3 modes x %d stores ", reps, have_m + have_l);
    for (int rep = 0; rep < reps; rep++) {
        for (int mode = 0; mode < 3; mode++) {
            if (have_m && rep % 2 == 0)
                w5_once(&rm, (enum kvmode)mode, rep);
            if (have_l)
                w5_once(&rl, (enum kvmode)mode, rep);
            if (have_m && rep % 2 == 1)
                w5_once(&rm, (enum kvmode)mode, rep);
        }
        progress(".");
    }
    progress("\n");
    printf("\nW5  kv table, %u keys prepared before timing, %d B values, keys in one random order for both\n"
           "    (ops/s of one process; median of %d runs [min-max]; a single-process run is pinned to a CPU,\n"
           "    the same for both stores in a repetition, the CPUs taken in turn)\n",
           ks.nkeys, KV_VAL, reps);
    printf("  %-16s %-26s %-26s %10s\n", "operation", "mmipc", "lmdb", "mmipc/lmdb");
    for (int op = 0; op < 4; op++) {
        printf("  %-16s %-26s %-26s %10s\n", g_kvop[op], cell(a, sizeof a, wl, "mmipc", KV_VAL, g_kvop[op], fmt_si),
               cell(b, sizeof b, wl, "lmdb", KV_VAL, g_kvop[op], fmt_si),
               fmt_ratio(x, sizeof x, med(wl, "mmipc", KV_VAL, g_kvop[op]) / med(wl, "lmdb", KV_VAL, g_kvop[op])));
    }
#ifdef HAVE_LMDB
    printf(
        "  lmdb: MDB_NOSYNC|MDB_WRITEMAP, one write transaction per put; gets renew/reset one read-only txn each.\n");
    if (!have_l && skip_why(wl, "lmdb", KV_VAL, "get"))
        printf("  lmdb: n/a: %s\n", skip_why(wl, "lmdb", KV_VAL, "get"));
#else
    printf("  LMDB: not built in (apt-get install liblmdb-dev), skipped\n");
#endif
    printf("  get_while_put / put_while_get: one process gets while another puts, at the same time.\n");
    fflush(stdout);
    if (have_m) {
        mmipc_region_close(rm.link.reg);
        unlink(rm.link.path);
    }
#ifdef HAVE_LMDB
    if (have_l)
        lmdb_remove(&ks);
#endif
    free(ks.keys);
    free(ks.klen);
    free(ks.order);
}

/* Two tables: a small one (a typical status/config table, in cache) and a
 * big one whose slots span more pages than the TLB maps, so every get pays
 * a page walk and a cache miss (see the README's Performance section). */
static void run_w5(void)
{
    run_w5_table("W5-small", W5_SMALL_KEYS);
    run_w5_table("W5", g.kv_keys);
}

/* ===================================================== targets, CSV */

static void targets(void)
{
    double m;
    /* W2 64 B */
    m = med("W2", "mmipc", 64, "msgs_per_s");
    target("W2 64 B mmipc / pipe >= 5x", m / med("W2", "pipe", 64, "msgs_per_s"), 0, 5);
    target("W2 64 B mmipc / socketpair >= 10x", m / med("W2", "socketpair", 64, "msgs_per_s"), 0, 10);
    target("W2 64 B mmipc / posix-mq >= 10x", m / med("W2", "posix-mq", 64, "msgs_per_s"), 0, 10);
#ifdef HAVE_ZMQ
    target("W2 64 B mmipc / zmq-pushpull >= 3x", m / med("W2", "zmq-pushpull", 64, "msgs_per_s"), 0, 3);
#endif
    target("W2 64 B mmipc / spsc-ring >= 0.6x", m / med("W2", "spsc-ring", 64, "msgs_per_s"), 0, 0.6);
    double mc = med("W2", "memcpy", MiB, "MB_per_s");
    target("W2 1 MiB mmipc copy / memcpy >= 0.5x", med("W2", "mmipc", MiB, "MB_per_s") / mc, 0, 0.5);
    target("W2 1 MiB mmipc-zc / memcpy >= 0.8x", med("W2", "mmipc-zc", MiB, "MB_per_s") / mc, 0, 0.8);
    target("W2 64 B syscalls/msg (both sides) < 0.01", med("W2", "mmipc", 64, "syscalls_per_msg"), 1, 0.01);
    /* W1 64 B */
    target("W1 64 B p50 mmipc / pipe <= 0.02x", med("W1", "mmipc", 64, "p50") / med("W1", "pipe", 64, "p50"), 1, 0.02);
    target("W1 64 B p99 mmipc / pipe <= 0.1x", med("W1", "mmipc", 64, "p99") / med("W1", "pipe", 64, "p99"), 1, 0.1);
    target("W1 64 B p50 mmipc-sleep / pipe <= 1.2x", med("W1", "mmipc-sleep", 64, "p50") / med("W1", "pipe", 64, "p50"),
           1, 1.2);
    target("W1 64 B pinned p50 mmipc / pipe <= 1.0x",
           med("W1", "mmipc-pinned", 64, "p50") / med("W1", "pipe-pinned", 64, "p50"), 1, 1.0);
    /* W3 */
    m = med("W3", "mmipc", 64, "msgs_per_s");
    target("W3 mmipc / pipe >= 5x", m / med("W3", "pipe", 64, "msgs_per_s"), 0, 5);
    target("W3 mmipc 4x4 / mmipc 1->1 >= 0.3x", m / med("W2", "mmipc", 64, "msgs_per_s"), 0, 0.3);
#ifdef HAVE_LMDB
    target("W5 get mmipc / lmdb >= 3x, 1 000 keys",
           med("W5-small", "mmipc", KV_VAL, "get") / med("W5-small", "lmdb", KV_VAL, "get"), 0, 3);
    target("W5 put mmipc / lmdb >= 3x, 1 000 keys",
           med("W5-small", "mmipc", KV_VAL, "put") / med("W5-small", "lmdb", KV_VAL, "put"), 0, 3);
    target("W5 get mmipc / lmdb >= 3x, big table", med("W5", "mmipc", KV_VAL, "get") / med("W5", "lmdb", KV_VAL, "get"),
           0, 3);
    target("W5 put mmipc / lmdb >= 3x, big table", med("W5", "mmipc", KV_VAL, "put") / med("W5", "lmdb", KV_VAL, "put"),
           0, 3);
#endif
    printf("\nTargets of issue 6 (ratios of medians in this run; informative only, never a failure)\n");
    int met = 0, known = 0;
    for (int i = 0; i < g_ntg; i++) {
        struct target *t = &g_tg[i];
        char v[24];
        const char *st = "n/a";
        if (isfinite(t->value)) {
            int ok = t->at_most ? t->value <= t->bound : t->value >= t->bound;
            st = ok ? "met" : "MISSED";
            met += ok;
            known++;
        }
        if (strstr(t->what, "syscalls"))
            fmt_fix(v, sizeof v, t->value);
        else
            fmt_ratio(v, sizeof v, t->value);
        printf("  %-44s %10s  %s\n", t->what, v, st);
    }
    printf("  %d of %d measured targets met\n", met, known);
}

/* Rows grouped by workload, metric, transport, then by size: a series is consecutive. */
static int cmp_ser(const void *a, const void *b)
{
    const struct series *x = *(const struct series *const *)a, *y = *(const struct series *const *)b;
    int c = strcmp(x->wl, y->wl);
    if (!c && x->q >= 0 && y->q >= 0) /* latency rows: by transport, size, quantile */
        c = strcmp(x->tr, y->tr) ? strcmp(x->tr, y->tr)
            : x->size != y->size ? (x->size < y->size ? -1 : 1)
                                 : cmp_double(&x->q, &y->q);
    if (!c)
        c = strcmp(x->metric, y->metric);
    if (!c)
        c = strcmp(x->tr, y->tr);
    if (!c && x->size != y->size)
        c = x->size < y->size ? -1 : 1;
    return c;
}

static void write_csv(const char *path)
{
    const struct series **order = calloc(g_nser ? g_nser : 1, sizeof *order);
    if (!order) {
        perror("calloc");
        return;
    }
    for (size_t i = 0; i < g_nser; i++)
        order[i] = &g_ser[i];
    qsort(order, g_nser, sizeof *order, cmp_ser);
    FILE *f = fopen(path, "w");
    if (!f) {
        fprintf(stderr, "mmipc-bench: %s: %s\n", path, strerror(errno));
        free(order);
        return;
    }
    fprintf(f, "workload,transport,size,metric,unit,median,min,max,runs,quantile\n");
    for (size_t i = 0; i < g_nser; i++) {
        const struct series *s = order[i];
        double m, lo, hi;
        if (ser_stat(s, &m, &lo, &hi) < 0)
            continue;
        fprintf(f, "%s,%s,%zu,%s,%s,%.6g,%.6g,%.6g,%d,", s->wl, s->tr, s->size, s->metric, s->unit, m, lo, hi, s->n);
        if (s->q >= 0)
            fprintf(f, "%.6g", s->q);
        fprintf(f, "\n");
    }
    free(order);
    if (fclose(f) != 0)
        fprintf(stderr, "mmipc-bench: %s: %s\n", path, strerror(errno));
    else
        printf("\nCSV written to %s\n", path);
}

/* ===================================================== setup, main */

static void probe_syscall_counter(void)
{
    static const char *const paths[] = {"/sys/kernel/tracing/events/raw_syscalls/sys_enter/id",
                                        "/sys/kernel/debug/tracing/events/raw_syscalls/sys_enter/id"};
    for (size_t i = 0; i < 2 && g_sys_tp < 0; i++) {
        FILE *f = fopen(paths[i], "r");
        if (!f)
            continue;
        if (fscanf(f, "%lld", &g_sys_tp) != 1)
            g_sys_tp = -1;
        fclose(f);
    }
    if (g_sys_tp < 0) {
        sfmt(g_sys_why, sizeof g_sys_why,
             "tracefs is not mounted (mount -t tracefs nodev /sys/kernel/tracing, as root)");
        return;
    }
    int fd = sysc_open();
    if (fd < 0) {
        sfmt(g_sys_why, sizeof g_sys_why,
             "perf_event_open(raw_syscalls:sys_enter): %s (needs root or "
             "kernel.perf_event_paranoid <= -1)",
             strerror(errno));
        g_sys_tp = -1;
        return;
    }
    close(fd);
}

static void print_header(void)
{
    char date[64], cpu[128] = "unknown", line[256];
    time_t t = time(NULL);
    struct utsname u;
    strftime(date, sizeof date, "%Y-%m-%d %H:%M:%S %z", localtime(&t));
    FILE *f = fopen("/proc/cpuinfo", "r");
    if (f) {
        while (fgets(line, sizeof line, f))
            if (!strncmp(line, "model name", 10)) {
                char *p = strchr(line, ':');
                if (p) {
                    p += 1 + strspn(p + 1, " \t");
                    p[strcspn(p, "\n")] = '\0';
                    sfmt(cpu, sizeof cpu, "%s", p);
                }
                break;
            }
        fclose(f);
    }
    uname(&u);
    printf("mmipc-bench, mmipc %s, %s run\n", mmipc_version(), g.quick ? "quick (--quick)" : "full");
    printf("date:   %s\n", date);
    printf("cpu:    %s, %ld CPUs online\n", cpu, sysconf(_SC_NPROCESSORS_ONLN));
    printf("kernel: %s %s %s %s\n", u.sysname, u.release, u.version, u.machine);
    loadavg(line, sizeof line);
    printf("load:   %s (1/5/15 min before the run: other processes on this machine add noise)\n", line);
    printf("method: each figure is the median of %d runs, transports interleaved round-robin; every run forks\n"
           "        its sides, warms up %.0f ms, then times on CLOCK_MONOTONIC; files in %s\n",
           g.reps, g.warm_s * 1e3, g.dir);
    printf("buffers: every queue gets %zu KiB (4 MiB for 1 MiB messages): mmipc ring and spsc-ring capacity,\n"
           "        pipe size, socket buffers, POSIX mq maxmsg x msgsize (maxmsg 4..1024), ZeroMQ HWM (4..1000)\n",
           g.bufbytes / KiB);
    printf("spsc-ring: bare lock-free single-producer single-consumer ring in a shared anonymous mapping,\n"
           "        spinning (sched_yield after 4096 polls), prefetching 2 KiB ahead, non-temporal stores from\n"
           "        512 KiB (as mmipc send and the bench's zero-copy producer); no locks, no crash safety:\n"
           "        the physical reference\n");
#ifdef HAVE_ZMQ
    {
        int maj, min, pat;
        zmq_version(&maj, &min, &pat);
        printf("ZeroMQ: %d.%d.%d over ipc:// (PUSH/PULL for streams, REQ/REP for round trips)\n", maj, min, pat);
    }
#else
    printf("ZeroMQ: not built in (apt-get install libzmq3-dev), skipped\n");
#endif
#ifdef HAVE_LMDB
    printf("LMDB:   %s\n", mdb_version(NULL, NULL, NULL));
#else
    printf("LMDB:   not built in (apt-get install liblmdb-dev), skipped\n");
#endif
    if (g_sys_tp < 0)
        printf("syscall counting: unavailable: %s\n", g_sys_why);
}

static void usage(FILE *f)
{
    fprintf(f, "usage: mmipc-bench [--quick] [--csv FILE] [--reps N] [--only LIST] [--transports LIST] [--dir DIR]\n"
               "  --quick      short runs (under a minute; a smoke test, noisier figures)\n"
               "  --csv FILE   also write every series as CSV (bench/plot.gp draws it)\n"
               "  --reps N     interleaved repetitions per workload (default 3 quick, 5 full)\n"
               "  --only LIST  comma-separated subset of W1,W2,cost,W3,W5\n"
               "  --transports LIST  comma-separated subset of mmipc,mmipc-zc,mmipc-sleep,pipe,socketpair,\n"
               "               posix-mq,zmq-reqrep,zmq-pushpull,spsc-ring,memcpy,lmdb (ratios need mmipc)\n"
               "  --dir DIR    where region files live (default /dev/shm, else $TMPDIR or /tmp)\n");
}

static char g_made_dir[PATH_MAX];

static void remove_dir(void)
{
    if (g_made_dir[0])
        rmdir(g_made_dir);
}

int main(int argc, char **argv)
{
    const char *base = NULL;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--quick")) {
            g.quick = 1;
        } else if (!strcmp(argv[i], "--csv") && i + 1 < argc) {
            g.csv = argv[++i];
        } else if (!strcmp(argv[i], "--reps") && i + 1 < argc) {
            g.reps = atoi(argv[++i]);
            if (g.reps < 1 || g.reps > MAX_REPS) {
                fprintf(stderr, "mmipc-bench: --reps between 1 and %d\n", MAX_REPS);
                return 2;
            }
        } else if (!strcmp(argv[i], "--only") && i + 1 < argc) {
            g.only = argv[++i];
        } else if (!strcmp(argv[i], "--transports") && i + 1 < argc) {
            g.transports = argv[++i];
        } else if (!strcmp(argv[i], "--dir") && i + 1 < argc) {
            base = argv[++i];
        } else if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            usage(stdout);
            return 0;
        } else {
            usage(stderr);
            return 2;
        }
    }
    if (g.quick) {
        if (!g.reps)
            g.reps = 3;
        g.warm_s = 0.01;
        g.stream_s = 0.06;
        g.cost_s = 0.04;
        g.w3_s = 0.08;
        g.kv_s = 0.05;
        g.rt_cap_s = 0.1;
        g.rt_max = 5000;
        g.kv_keys = 10000;
    } else {
        if (!g.reps)
            g.reps = 5;
        g.warm_s = 0.05;
        g.stream_s = 0.3;
        g.cost_s = 0.15;
        g.w3_s = 0.3;
        g.kv_s = 0.25;
        g.rt_cap_s = 0.8;
        g.rt_max = 50000;
        g.kv_keys = 50000;
    }
    g.bufbytes = MiB;
    g.grace_s = g.quick ? 8 : 30;

    if (!base) {
        struct stat st;
        if (stat("/dev/shm", &st) == 0 && S_ISDIR(st.st_mode) && access("/dev/shm", W_OK) == 0)
            base = "/dev/shm";
        else if (!(base = getenv("TMPDIR")))
            base = "/tmp";
    }
    sfmt(g.dir, sizeof g.dir, "%s/mmipc-bench-XXXXXX", base);
    if (!mkdtemp(g.dir)) {
        fprintf(stderr, "mmipc-bench: mkdtemp %s: %s\n", g.dir, strerror(errno));
        return 2;
    }
    sfmt(g_made_dir, sizeof g_made_dir, "%s", g.dir);
    atexit(remove_dir);

    /* Children report through SIGCHLD, which stays blocked and is taken with sigtimedwait. */
    sigset_t chld;
    sigemptyset(&chld);
    sigaddset(&chld, SIGCHLD);
    signal(SIGCHLD, sigchld_noop);
    sigprocmask(SIG_BLOCK, &chld, NULL);
    signal(SIGPIPE, SIG_IGN);
    struct rlimit rl = {RLIM_INFINITY, RLIM_INFINITY};
    (void)setrlimit(RLIMIT_MSGQUEUE, &rl);

    probe_syscall_counter();
    print_header();
    uint64_t t0 = now_ns();
    if (want("W1"))
        run_w1();
    if (want("W2"))
        run_w2();
    if (want("cost"))
        run_cost();
    if (want("W3"))
        run_w3();
    if (want("W5"))
        run_w5();
    targets();
    if (g.csv)
        write_csv(g.csv);
    char la[64];
    loadavg(la, sizeof la);
    printf("\n%s in %.1f s (load average now %s); %d correctness failure%s, %d peer warning%s\n",
           g_failures ? "FAILED" : "done", (double)(now_ns() - t0) / 1e9, la, g_failures, g_failures == 1 ? "" : "s",
           g_warnings, g_warnings == 1 ? "" : "s");
    for (int i = 0; i < 4; i++)
        if (g_buf_note[i][0])
            printf("note: %s\n", g_buf_note[i]);
    return g_failures ? 1 : 0;
}
