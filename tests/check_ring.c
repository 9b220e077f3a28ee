/*
 * Rings: the semantics of every mmipc_ring_* call and error, wrap-around,
 * zero-copy, several processes, a 4x4 stress run, a SIGKILL storm, abandoned
 * reservations and peeks, and scribbled ring state (white-box: lib/layout.h).
 *
 * Every child process runs with PR_SET_PDEATHSIG and its own deadline, and
 * every wait on a child is bounded (th_wait), so a library bug shows up as a
 * failure, never as a hung run.  Set MMIPC_TEST_SEED to replay a randomised
 * test; the seed is printed in every randomised failure message.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "atomics.h"
#include "helpers.h"
#include "layout.h"

/* ------------------------------------------------------------------ tools */

#define RC_IS(expr, want)                                                                                              \
    do {                                                                                                               \
        long long rc_ = (long long)(expr);                                                                             \
        long long want_ = (long long)(want);                                                                           \
        ck_assert_msg(rc_ == want_, "%s returned %lld (%s), expected %lld (%s)", #expr, rc_, mmipc_strerror((int)rc_), \
                      want_, mmipc_strerror((int)want_));                                                              \
    } while (0)
#define RC_OK(expr) RC_IS(expr, 0)

/* A negative errno value as the library promises to return. */
static int is_errno(long long rc)
{
    return rc < 0 && rc > -4096;
}

static uint64_t now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

static void sleep_us(unsigned us)
{
    struct timespec ts = {us / 1000000u, (long)(us % 1000000u) * 1000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

static int ms_left(uint64_t deadline_ms)
{
    uint64_t now = th_now_ms();
    return now >= deadline_ms ? 1 : (int)(deadline_ms - now);
}

static uint64_t g_seed;

static uint64_t test_seed(void)
{
    const char *s = getenv("MMIPC_TEST_SEED");
    g_seed = s && *s ? strtoull(s, NULL, 0) : (((uint64_t)getpid() << 32) ^ now_us());
    if (g_seed == 0)
        g_seed = 1;
    return g_seed;
}

/* Memory every forked child shares with the test process. */
static void *shared_mem(size_t n)
{
    void *p = mmap(NULL, n, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    ck_assert_msg(p != MAP_FAILED, "mmap(%zu): %s", n, strerror(errno));
    return p;
}

/* First thing in every child: die with the test process. */
static void child_init(void)
{
    prctl(PR_SET_PDEATHSIG, SIGKILL);
}

static int wait_flag(uint32_t *flag, uint32_t want, int timeout_ms)
{
    uint64_t end = th_now_ms() + (uint64_t)timeout_ms;
    while (__atomic_load_n(flag, __ATOMIC_ACQUIRE) != want) {
        if (th_now_ms() >= end)
            return -1;
        th_sleep_ms(1);
    }
    return 0;
}

/* A child that was told to hang until SIGKILLed. */
static int hang_until_killed(void)
{
    uint64_t end = th_now_ms() + 20000;
    while (th_now_ms() < end)
        th_sleep_ms(10);
    return 99;
}

static struct mmipc_ring_stat ring_stat(mmipc_ring *q)
{
    struct mmipc_ring_stat st;
    memset(&st, 0, sizeof st);
    RC_OK(mmipc_ring_stat(q, &st));
    return st;
}

static mmipc_ring *new_ring(mmipc_region *r, const char *name, size_t cap)
{
    mmipc_ring *q = NULL;
    RC_OK(mmipc_ring_create(r, name, cap, &q));
    ck_assert_ptr_nonnull(q);
    return q;
}

/* In a child: its own region handle (its own attach lease) and ring. */
static int child_open(const char *path, const char *ring, mmipc_region **r, mmipc_ring **q)
{
    int rc = mmipc_region_open(path, 0, NULL, r);
    if (rc != 0) {
        fprintf(stderr, "child %d: mmipc_region_open: %s\n", (int)getpid(), mmipc_strerror(rc));
        return rc;
    }
    rc = mmipc_ring_open(*r, ring, q);
    if (rc != 0) {
        fprintf(stderr, "child %d: mmipc_ring_open: %s\n", (int)getpid(), mmipc_strerror(rc));
        mmipc_region_close(*r);
    }
    return rc;
}

struct obj_find {
    const char *name;
    struct mmipc_object_info info;
    int found;
};

static int obj_find_cb(const struct mmipc_object_info *obj, void *arg)
{
    struct obj_find *f = arg;
    if (strcmp(obj->name, f->name) != 0)
        return 0;
    f->info = *obj;
    f->found = 1;
    return 1;
}

static struct mmipc_object_info find_object(mmipc_region *r, const char *name)
{
    struct obj_find f = {.name = name};
    int rc = mmipc_region_objects(r, obj_find_cb, &f);
    ck_assert_msg(rc == 1 && f.found, "object %s not listed (rc %d)", name, rc);
    return f.info;
}

/* Our own MAP_SHARED view of a region file, for white-box scribbling. */
static unsigned char *map_file(const char *path, size_t *len)
{
    int fd = open(path, O_RDWR | O_CLOEXEC);
    if (fd < 0)
        return NULL;
    struct stat sb;
    void *p = MAP_FAILED;
    if (fstat(fd, &sb) == 0 && sb.st_size > 0)
        p = mmap(NULL, (size_t)sb.st_size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    close(fd);
    if (p == MAP_FAILED)
        return NULL;
    *len = (size_t)sb.st_size;
    return p;
}

/* Small messages for the functional tests: id in the first 4 bytes (when
 * there is room), then a pattern derived from the id. */
static void pm_fill(unsigned char *b, uint32_t id, size_t len)
{
    for (size_t i = 0; i < len; i++)
        b[i] = (unsigned char)(id * 131u + i * 7u + (i >> 8) + 1u);
    if (len >= 4)
        memcpy(b, &id, 4);
}

static int pm_ok(const unsigned char *b, uint32_t id, size_t len)
{
    if (len >= 4 && memcmp(b, &id, 4) != 0)
        return 0;
    for (size_t i = len >= 4 ? 4 : 0; i < len; i++)
        if (b[i] != (unsigned char)(id * 131u + i * 7u + (i >> 8) + 1u))
            return 0;
    return 1;
}

static uint32_t pm_id(const unsigned char *b)
{
    uint32_t id;
    memcpy(&id, b, 4);
    return id;
}

/* Stress and kill-storm messages: 8..200 bytes, fully determined by
 * (producer, seq): [0,4) seq, [4] producer, [5,8) checksum, then payload. */
#define SM_MIN 8u
#define SM_MAX 200u

static uint64_t mix64(uint64_t x)
{
    x ^= x >> 30;
    x *= 0xbf58476d1ce4e5b9ull;
    x ^= x >> 27;
    x *= 0x94d049bb133111ebull;
    x ^= x >> 31;
    return x;
}

static size_t sm_len(unsigned p, uint32_t seq)
{
    return SM_MIN + (size_t)(mix64(((uint64_t)p << 32) | seq) % (SM_MAX - SM_MIN + 1));
}

static uint32_t sm_sum(const unsigned char *m, size_t len)
{
    uint32_t h = 2166136261u;
    for (size_t i = 0; i < len; i++) {
        if (i >= 5 && i < 8)
            continue;
        h = (h ^ m[i]) * 16777619u;
    }
    return h & 0xffffffu;
}

static size_t sm_build(unsigned char *m, unsigned p, uint32_t seq)
{
    size_t len = sm_len(p, seq);
    uint64_t x = 0;
    memcpy(m, &seq, 4);
    m[4] = (unsigned char)p;
    for (size_t i = 8; i < len; i++) {
        if ((i & 7) == 0)
            x = mix64(x ^ seq ^ ((uint64_t)p << 40) ^ ((uint64_t)i << 48));
        m[i] = (unsigned char)(x >> ((i & 7) * 8));
    }
    uint32_t s = sm_sum(m, len);
    m[5] = (unsigned char)s;
    m[6] = (unsigned char)(s >> 8);
    m[7] = (unsigned char)(s >> 16);
    return len;
}

/* 0 if m is an intact message; its producer and sequence then. */
static int sm_check(const unsigned char *m, size_t len, unsigned *p, uint32_t *seq)
{
    unsigned char want[SM_MAX];
    if (len < SM_MIN || len > SM_MAX)
        return -1;
    memcpy(seq, m, 4);
    *p = m[4];
    if (*p >= 8 || sm_len(*p, *seq) != len)
        return -1;
    uint32_t s = sm_sum(m, len);
    if (m[5] != (unsigned char)s || m[6] != (unsigned char)(s >> 8) || m[7] != (unsigned char)(s >> 16))
        return -1;
    sm_build(want, *p, *seq);
    return memcmp(want, m, len) == 0 ? 0 : -1;
}

static void teardown(void)
{
    th_cleanup();
}

/* ------------------------------------------------------------- api tests */

START_TEST(test_create_open)
{
    mmipc_region *r = th_region("co", 0);
    mmipc_ring *a = NULL, *b = NULL, *c = NULL;
    unsigned char buf[16];

    RC_OK(mmipc_ring_create(r, "q", 4096, &a));
    RC_IS(mmipc_ring_create(r, "q", 4096, &c), -EEXIST);
    RC_IS(mmipc_ring_create(r, "q", 65536, &c), -EEXIST);
    RC_OK(mmipc_ring_open(r, "q", &b));
    RC_IS(mmipc_ring_open(r, "nope", &c), -ENOENT);
    RC_IS(mmipc_ring_open(r, "Q", &c), -ENOENT);

    /* two handles, one ring */
    RC_OK(mmipc_ring_send(a, "hello", 5, 0));
    RC_IS(mmipc_ring_recv(b, buf, sizeof buf, 0), 5);
    ck_assert(memcmp(buf, "hello", 5) == 0);

    struct mmipc_object_info oi = find_object(r, "q");
    ck_assert_int_eq(oi.kind, MMIPC_KIND_RING);
    ck_assert_uint_ge(oi.size, 4096);
    mmipc_region_close(r);
}
END_TEST

START_TEST(test_names)
{
    mmipc_region *r = th_region("names", 0);
    mmipc_ring *q = NULL, *q2 = NULL;
    char name[MMIPC_NAME_MAX + 2];

    memset(name, 'n', sizeof name);
    name[MMIPC_NAME_MAX + 1] = '\0'; /* MMIPC_NAME_MAX + 1 bytes */
    RC_IS(mmipc_ring_create(r, name, 4096, &q), -ENAMETOOLONG);
    RC_IS(mmipc_ring_open(r, name, &q), -ENAMETOOLONG);

    name[MMIPC_NAME_MAX] = '\0'; /* exactly MMIPC_NAME_MAX bytes */
    RC_OK(mmipc_ring_create(r, name, 4096, &q));
    RC_OK(mmipc_ring_open(r, name, &q2));
    struct mmipc_object_info oi = find_object(r, name);
    ck_assert_str_eq(oi.name, name);
    RC_OK(mmipc_ring_send(q, "x", 1, 0));
    ck_assert_uint_eq(ring_stat(q2).messages, 1);

    name[MMIPC_NAME_MAX - 1] = '\0'; /* a prefix is another name */
    RC_IS(mmipc_ring_open(r, name, &q), -ENOENT);

    RC_IS(mmipc_ring_create(r, "", 4096, &q), -EINVAL);
    RC_IS(mmipc_ring_open(r, "", &q), -EINVAL);
    mmipc_region_close(r);
}
END_TEST

START_TEST(test_wrong_kind)
{
    mmipc_region *r = th_region("kind", 0);
    mmipc_kv *kv = NULL;
    mmipc_ring *q = NULL;

    RC_OK(mmipc_kv_create(r, "table", 8, 32, &kv));
    RC_IS(mmipc_ring_open(r, "table", &q), -EINVAL);
    RC_IS(mmipc_ring_create(r, "table", 4096, &q), -EEXIST);

    new_ring(r, "ring", 4096);
    RC_IS(mmipc_kv_open(r, "ring", &kv), -EINVAL);
    mmipc_region_close(r);
}
END_TEST

START_TEST(test_nospace)
{
    struct mmipc_region_opts o = {.size = 64 * 1024, .max_objects = 2};
    mmipc_region *r = NULL;
    mmipc_ring *q = NULL;
    struct mmipc_region_info info;

    RC_OK(mmipc_region_open(th_path("nospace"), MMIPC_CREATE, &o, &r));
    RC_IS(mmipc_ring_create(r, "big", 1 << 20, &q), -ENOSPC);
    RC_IS(mmipc_ring_create(r, "big", 64 * 1024, &q), -ENOSPC);
    RC_IS(mmipc_ring_open(r, "big", &q), -ENOENT);
    RC_OK(mmipc_region_info(r, &info));
    ck_assert_uint_eq(info.objects, 0);

    new_ring(r, "a", 4096);
    new_ring(r, "b", 4096);
    RC_IS(mmipc_ring_create(r, "c", 4096, &q), -ENOSPC); /* directory full */
    RC_IS(mmipc_ring_open(r, "c", &q), -ENOENT);
    RC_OK(mmipc_region_info(r, &info));
    ck_assert_uint_eq(info.objects, 2);
    mmipc_region_close(r);
}
END_TEST

START_TEST(test_capacity)
{
    static const struct {
        size_t ask, want;
    } cases[] = {{1, 4096}, {4095, 4096}, {4096, 4096}, {4097, 8192}, {5000, 8192}, {65536, 65536}, {100000, 131072}};
    mmipc_region *r = th_region("cap", 1 << 20);
    unsigned char *buf = malloc(131072), *out = malloc(131072);
    ck_assert(buf && out);

    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char name[16];
        snprintf(name, sizeof name, "c%zu", i);
        mmipc_ring *q = new_ring(r, name, cases[i].ask);
        struct mmipc_ring_stat st = ring_stat(q);
        ck_assert_msg(st.capacity == cases[i].want, "capacity %zu gave %llu, expected %zu", cases[i].ask,
                      (unsigned long long)st.capacity, cases[i].want);
        ck_assert((st.capacity & (st.capacity - 1)) == 0);
        ck_assert_msg(st.max_message >= st.capacity / 2 - 64 && st.max_message < st.capacity,
                      "capacity %llu: max_message %llu", (unsigned long long)st.capacity,
                      (unsigned long long)st.max_message);
        /* the largest message fits an empty ring */
        pm_fill(buf, (uint32_t)i, st.max_message);
        RC_OK(mmipc_ring_send(q, buf, st.max_message, 0));
        RC_IS(mmipc_ring_recv(q, out, st.max_message, 0), st.max_message);
        ck_assert(pm_ok(out, (uint32_t)i, st.max_message));
    }

    mmipc_ring *q = NULL;
    RC_IS(mmipc_ring_create(r, "huge", SIZE_MAX, &q), -EINVAL);
    if (sizeof(size_t) >= 8) {
        RC_IS(mmipc_ring_create(r, "huge", (size_t)MMIPC__RING_MAX_CAP + 1, &q), -EINVAL);
        RC_IS(mmipc_ring_create(r, "huge", (size_t)MMIPC__RING_MAX_CAP, &q), -ENOSPC);
    }
    RC_IS(mmipc_ring_open(r, "huge", &q), -ENOENT);
    free(buf);
    free(out);
    mmipc_region_close(r);
}
END_TEST

START_TEST(test_max_message)
{
    mmipc_region *r = th_region("maxmsg", 0);
    mmipc_ring *q = new_ring(r, "q", 4096);
    struct mmipc_ring_stat st = ring_stat(q);
    size_t maxm = st.max_message;
    unsigned char *buf = malloc(maxm + 1), *out = malloc(maxm + 1);
    void *w = NULL;
    const void *p = NULL;
    ck_assert(buf && out);

    pm_fill(buf, 7, maxm + 1);
    RC_IS(mmipc_ring_send(q, buf, maxm + 1, 0), -EMSGSIZE);
    RC_IS(mmipc_ring_send(q, buf, SIZE_MAX, 0), -EMSGSIZE);
    RC_IS(mmipc_ring_reserve(q, maxm + 1, &w, 0), -EMSGSIZE);
    RC_IS(mmipc_ring_reserve(q, SIZE_MAX, &w, 0), -EMSGSIZE);
    st = ring_stat(q);
    ck_assert_uint_eq(st.sent, 0);
    ck_assert_uint_eq(st.messages, 0);

    /* exactly max_message, at many positions of the tail */
    for (uint32_t k = 0; k < 64; k++) {
        size_t small = (k * 40u) % 600u;
        pm_fill(buf, k, small);
        RC_OK(mmipc_ring_send(q, buf, small, 0));
        RC_IS(mmipc_ring_recv(q, out, maxm, 0), small);
        pm_fill(buf, 1000 + k, maxm);
        RC_OK(mmipc_ring_send(q, buf, maxm, 0));
        RC_IS(mmipc_ring_recv(q, out, maxm, 0), maxm);
        ck_assert_msg(pm_ok(out, 1000 + k, maxm), "max_message round %u corrupted", k);
    }

    /* and through the zero-copy calls */
    pm_fill(buf, 77, maxm);
    RC_OK(mmipc_ring_reserve(q, maxm, &w, 0));
    ck_assert_ptr_nonnull(w);
    memcpy(w, buf, maxm);
    RC_OK(mmipc_ring_commit(q, w));
    RC_IS(mmipc_ring_peek(q, &p, 0), maxm);
    ck_assert(pm_ok(p, 77, maxm));
    RC_OK(mmipc_ring_release(q, p));
    st = ring_stat(q);
    ck_assert_uint_eq(st.messages, 0);
    ck_assert_uint_eq(st.used, 0);
    free(buf);
    free(out);
    mmipc_region_close(r);
}
END_TEST

/* mmipc__copy_stream itself, at every alignment of source and destination
 * and lengths around its 64-byte blocks: every byte arrives, and not one
 * byte either side of the destination changes.  (In a ring the payload is
 * always 16-byte aligned, so send never takes the unaligned head.) */
START_TEST(test_copy_stream_edges)
{
    enum { GUARD = 64, MAXN = 300 };
    unsigned char src[MAXN + 32], dst[GUARD + 16 + MAXN + GUARD];
    for (size_t i = 0; i < sizeof src; i++)
        src[i] = (unsigned char)(i * 37u + 11u);
    for (size_t so = 0; so < 16; so++)
        for (size_t dof = 0; dof < 16; dof++)
            for (size_t n = 0; n <= MAXN; n += n < 140 ? 1 : 23) {
                memset(dst, 0xA5, sizeof dst);
                mmipc__copy_stream(dst + GUARD + dof, src + so, n);
                for (size_t i = 0; i < sizeof dst; i++) {
                    int inside = i >= GUARD + dof && i < GUARD + dof + n;
                    unsigned char want = inside ? src[so + i - GUARD - dof] : 0xA5;
                    if (dst[i] != want)
                        ck_abort_msg("copy of %zu B from +%zu to +%zu: byte %zd is %#x, want %#x", n, so, dof,
                                     (ssize_t)i - GUARD - (ssize_t)dof, dst[i], want);
                }
            }
}
END_TEST

/* From MMIPC__STREAM_MIN bytes on, send copies with non-temporal stores:
 * every length around the threshold, from a source at every alignment,
 * arrives whole, and the record sent before it is untouched. */
START_TEST(test_stream_copy)
{
    mmipc_region *r = th_region("stream", (size_t)8 << 20);
    mmipc_ring *q = new_ring(r, "q", (size_t)4 << 20);
    const size_t lens[] = {MMIPC__STREAM_MIN - 1,  MMIPC__STREAM_MIN, MMIPC__STREAM_MIN + 1,
                           MMIPC__STREAM_MIN + 63, (size_t)1 << 20,   ((size_t)1 << 20) + 13};
    size_t nlens = sizeof lens / sizeof lens[0], big = ((size_t)1 << 20) + 64;
    unsigned char *buf = malloc(big), *out = malloc(big);
    ck_assert(buf && out);

    for (uint32_t k = 0; k < 3 * nlens; k++) {
        size_t len = lens[k % nlens], small = 1 + (k * 24u) % 200u;
        /* the record before moves the big one along the ring (in 16-byte
         * steps), which comes from every alignment of the caller's buffer */
        pm_fill(buf, 500 + k, small);
        RC_OK(mmipc_ring_send(q, buf, small, 0));
        pm_fill(buf + k % 16, k, len);
        RC_OK(mmipc_ring_send(q, buf + k % 16, len, 0));
        pm_fill(buf, 900 + k, small);
        RC_OK(mmipc_ring_send(q, buf, small, 0));

        RC_IS(mmipc_ring_recv(q, out, big, 0), small);
        ck_assert_msg(pm_ok(out, 500 + k, small), "record before %zu B corrupted", len);
        memset(out, 0, big);
        RC_IS(mmipc_ring_recv(q, out, big, 0), len);
        ck_assert_msg(pm_ok(out, k, len), "%zu B message %u corrupted", len, k);
        RC_IS(mmipc_ring_recv(q, out, big, 0), small);
        ck_assert_msg(pm_ok(out, 900 + k, small), "record after %zu B corrupted", len);
    }
    ck_assert_uint_eq(ring_stat(q).messages, 0);
    free(buf);
    free(out);
    mmipc_region_close(r);
}
END_TEST

START_TEST(test_zero_len)
{
    mmipc_region *r = th_region("zero", 0);
    mmipc_ring *q = new_ring(r, "q", 4096);
    unsigned char b[8];
    const void *p = NULL;
    void *w = NULL;

    RC_OK(mmipc_ring_send(q, b, 0, 0));
    RC_OK(mmipc_ring_send(q, "abc", 3, 0));
    ck_assert_uint_eq(ring_stat(q).messages, 2);
    RC_IS(mmipc_ring_recv(q, b, 0, 0), 0); /* cap 0 is enough for it */
    RC_IS(mmipc_ring_recv(q, b, sizeof b, 0), 3);
    RC_IS(mmipc_ring_recv(q, b, sizeof b, 0), -EAGAIN);

    RC_OK(mmipc_ring_send(q, b, 0, 0));
    RC_IS(mmipc_ring_peek(q, &p, 0), 0);
    RC_OK(mmipc_ring_release(q, p));

    RC_OK(mmipc_ring_reserve(q, 0, &w, 0));
    RC_OK(mmipc_ring_commit(q, w));
    RC_IS(mmipc_ring_recv(q, b, sizeof b, 0), 0);

    struct mmipc_ring_stat st = ring_stat(q);
    ck_assert_uint_eq(st.sent, 4);
    ck_assert_uint_eq(st.received, 4);
    ck_assert_uint_eq(st.messages, 0);
    ck_assert_uint_eq(st.used, 0);
    mmipc_region_close(r);
}
END_TEST

START_TEST(test_fifo)
{
    mmipc_region *r = th_region("fifo", 0);
    mmipc_ring *q = new_ring(r, "q", 65536);
    unsigned char buf[512], out[512];

    for (uint32_t i = 0; i < 200; i++) {
        size_t len = 4 + (i * 37u) % 300u;
        pm_fill(buf, i, len);
        RC_OK(mmipc_ring_send(q, buf, len, 0));
    }
    for (uint32_t i = 0; i < 200; i++) {
        size_t len = 4 + (i * 37u) % 300u;
        RC_IS(mmipc_ring_recv(q, out, sizeof out, 0), len);
        ck_assert_msg(pm_ok(out, i, len), "message %u out of order or corrupted (got id %u)", i, pm_id(out));
    }
    RC_IS(mmipc_ring_recv(q, out, sizeof out, 0), -EAGAIN);
    mmipc_region_close(r);
}
END_TEST

START_TEST(test_recv_small_buffer)
{
    mmipc_region *r = th_region("small", 0);
    mmipc_ring *q = new_ring(r, "q", 4096);
    unsigned char buf[256], out[256];

    pm_fill(buf, 1, 100);
    RC_OK(mmipc_ring_send(q, buf, 100, 0));
    pm_fill(buf, 2, 10);
    RC_OK(mmipc_ring_send(q, buf, 10, 0));

    RC_IS(mmipc_ring_recv(q, out, 99, 0), -EMSGSIZE);
    RC_IS(mmipc_ring_recv(q, out, 50, 0), -EMSGSIZE); /* still the first one, not the second */
    RC_IS(mmipc_ring_recv(q, out, 0, -1), -EMSGSIZE);
    struct mmipc_ring_stat st = ring_stat(q);
    ck_assert_uint_eq(st.messages, 2);
    ck_assert_uint_eq(st.received, 0);

    RC_IS(mmipc_ring_recv(q, out, 100, 0), 100);
    ck_assert(pm_ok(out, 1, 100));
    RC_IS(mmipc_ring_recv(q, out, 10, 0), 10);
    ck_assert(pm_ok(out, 2, 10));
    mmipc_region_close(r);
}
END_TEST

/* Fill a ring with `len`-byte messages using timeout 0; returns the count. */
static unsigned fill_ring(mmipc_ring *q, size_t len, uint32_t first_id)
{
    unsigned char buf[4096];
    unsigned n = 0;
    int rc;
    for (;;) {
        pm_fill(buf, first_id + n, len);
        rc = mmipc_ring_send(q, buf, len, 0);
        if (rc != 0)
            break;
        n++;
        ck_assert_uint_lt(n, 100000);
    }
    RC_IS(rc, -EAGAIN);
    return n;
}

START_TEST(test_nowait_empty_full)
{
    mmipc_region *r = th_region("nowait", 0);
    mmipc_ring *q = new_ring(r, "q", 4096);
    unsigned char out[256];
    const void *p = NULL;
    void *w = NULL;

    RC_IS(mmipc_ring_recv(q, out, sizeof out, 0), -EAGAIN);
    RC_IS(mmipc_ring_peek(q, &p, 0), -EAGAIN);

    unsigned n = fill_ring(q, 100, 0);
    ck_assert_msg(n >= 4096 / 2 / 112 && n * 108u <= 4096, "a 4 KiB ring took %u 100-byte messages", n);
    RC_IS(mmipc_ring_send(q, out, 100, 0), -EAGAIN);
    RC_IS(mmipc_ring_reserve(q, 100, &w, 0), -EAGAIN);

    struct mmipc_ring_stat st = ring_stat(q);
    ck_assert_uint_eq(st.messages, n);
    ck_assert_uint_eq(st.sent, n);
    ck_assert_uint_ge(st.used, n * 108u);
    ck_assert_uint_le(st.used, st.capacity);
    ck_assert_uint_eq(st.send_waits, 0); /* timeout 0 never sleeps */
    ck_assert_uint_eq(st.recv_waits, 0);

    for (uint32_t i = 0; i < n; i++) {
        RC_IS(mmipc_ring_recv(q, out, sizeof out, 0), 100);
        ck_assert(pm_ok(out, i, 100));
    }
    RC_IS(mmipc_ring_recv(q, out, sizeof out, 0), -EAGAIN);
    mmipc_region_close(r);
}
END_TEST

#define CHECK_TIMED(expr, want)                                                                                        \
    do {                                                                                                               \
        uint64_t t0_ = now_us();                                                                                       \
        RC_IS(expr, want);                                                                                             \
        uint64_t dt_ = now_us() - t0_;                                                                                 \
        ck_assert_msg(dt_ >= 50000 && dt_ < 5000000, "%s took %llu us with timeout 50 ms", #expr,                      \
                      (unsigned long long)dt_);                                                                        \
    } while (0)

START_TEST(test_timeout)
{
    mmipc_region *r = th_region("timeout", 0);
    mmipc_ring *q = new_ring(r, "q", 4096);
    unsigned char out[256];
    const void *p = NULL;
    void *w = NULL;

    CHECK_TIMED(mmipc_ring_recv(q, out, sizeof out, 50), -ETIMEDOUT);
    CHECK_TIMED(mmipc_ring_peek(q, &p, 50), -ETIMEDOUT);
    ck_assert_uint_ge(ring_stat(q).recv_waits, 1);

    unsigned n = fill_ring(q, 100, 0);
    CHECK_TIMED(mmipc_ring_send(q, out, 100, 50), -ETIMEDOUT);
    CHECK_TIMED(mmipc_ring_reserve(q, 100, &w, 50), -ETIMEDOUT);
    struct mmipc_ring_stat st = ring_stat(q);
    ck_assert_uint_ge(st.send_waits, 1);
    ck_assert_uint_eq(st.sent, n);

    /* available data or space is taken at once, whatever the timeout */
    RC_IS(mmipc_ring_recv(q, out, sizeof out, -1), 100);
    RC_IS(mmipc_ring_recv(q, out, sizeof out, 10000), 100);
    RC_OK(mmipc_ring_send(q, out, 10, -1));
    mmipc_region_close(r);
}
END_TEST

START_TEST(test_stat_counts)
{
    mmipc_region *r = th_region("stat", 0);
    mmipc_ring *q = new_ring(r, "q", 4096);
    unsigned char buf[128];
    void *w = NULL;
    const void *p = NULL;

    struct mmipc_ring_stat st = ring_stat(q);
    ck_assert_uint_eq(st.capacity, 4096);
    ck_assert_uint_eq(st.sent, 0);
    ck_assert_uint_eq(st.received, 0);
    ck_assert_uint_eq(st.messages, 0);
    ck_assert_uint_eq(st.used, 0);
    ck_assert_uint_eq(st.send_waits, 0);
    ck_assert_uint_eq(st.recv_waits, 0);
    ck_assert_uint_eq(st.recoveries, 0);

    memset(buf, 1, sizeof buf);
    RC_OK(mmipc_ring_send(q, buf, 0, 0));
    RC_OK(mmipc_ring_send(q, buf, 10, 0));
    RC_OK(mmipc_ring_send(q, buf, 100, 0));
    RC_IS(mmipc_ring_send(q, buf, 100000, 0), -EMSGSIZE); /* failures count nothing */
    st = ring_stat(q);
    ck_assert_uint_eq(st.sent, 3);
    ck_assert_uint_eq(st.messages, 3);
    ck_assert_uint_ge(st.used, 8 + 8 + 10 + 8 + 100);
    ck_assert_uint_le(st.used, st.capacity);
    ck_assert_uint_eq(st.used % 8, 0);
    uint64_t used3 = st.used;

    RC_IS(mmipc_ring_recv(q, buf, sizeof buf, 0), 0);
    st = ring_stat(q);
    ck_assert_uint_eq(st.received, 1);
    ck_assert_uint_eq(st.messages, 2);
    ck_assert_uint_lt(st.used, used3);

    RC_OK(mmipc_ring_reserve(q, 50, &w, 0));
    memset(w, 2, 50);
    RC_OK(mmipc_ring_commit(q, w));
    st = ring_stat(q);
    ck_assert_uint_eq(st.sent, 4);
    ck_assert_uint_eq(st.messages, 3);

    RC_IS(mmipc_ring_peek(q, &p, 0), 10);
    RC_OK(mmipc_ring_release(q, p));
    st = ring_stat(q);
    ck_assert_uint_eq(st.received, 2);
    ck_assert_uint_eq(st.messages, 2);

    RC_IS(mmipc_ring_recv(q, buf, 10, 0), -EMSGSIZE);
    RC_IS(mmipc_ring_recv(q, buf, sizeof buf, 0), 100);
    RC_IS(mmipc_ring_recv(q, buf, sizeof buf, 0), 50);
    RC_IS(mmipc_ring_recv(q, buf, sizeof buf, 0), -EAGAIN);
    st = ring_stat(q);
    ck_assert_uint_eq(st.sent, 4);
    ck_assert_uint_eq(st.received, 4);
    ck_assert_uint_eq(st.messages, 0);
    ck_assert_uint_eq(st.used, 0);
    ck_assert_uint_eq(st.send_waits, 0);
    ck_assert_uint_eq(st.recv_waits, 0);
    ck_assert_uint_eq(st.recoveries, 0);
    mmipc_region_close(r);
}
END_TEST

START_TEST(test_rdonly)
{
    mmipc_region *r = th_region("ro", 0), *ro = NULL;
    mmipc_ring *q = new_ring(r, "q", 4096), *qr = NULL;
    unsigned char buf[16];
    void *w = NULL;
    const void *p = NULL;

    RC_OK(mmipc_ring_send(q, "x", 1, 0));
    RC_OK(mmipc_region_open(th_path("ro"), MMIPC_RDONLY, NULL, &ro));
    RC_OK(mmipc_ring_open(ro, "q", &qr));
    struct mmipc_ring_stat st = ring_stat(qr);
    ck_assert_uint_eq(st.messages, 1);
    ck_assert_uint_eq(st.capacity, 4096);

    RC_IS(mmipc_ring_send(qr, "y", 1, 0), -EPERM);
    RC_IS(mmipc_ring_recv(qr, buf, sizeof buf, 0), -EPERM);
    RC_IS(mmipc_ring_reserve(qr, 1, &w, 0), -EPERM);
    RC_IS(mmipc_ring_peek(qr, &p, 0), -EPERM);
    RC_IS(mmipc_ring_create(ro, "other", 4096, &qr), -EPERM);

    RC_IS(mmipc_ring_recv(q, buf, sizeof buf, 0), 1);
    mmipc_region_close(ro);
    mmipc_region_close(r);
}
END_TEST

START_TEST(test_set_spin)
{
    mmipc_region *r = th_region("spin", 0);
    mmipc_ring *q = new_ring(r, "q", 4096);
    unsigned char buf[16];

    RC_OK(mmipc_ring_set_spin(q, 0));
    CHECK_TIMED(mmipc_ring_recv(q, buf, sizeof buf, 50), -ETIMEDOUT);
    RC_OK(mmipc_ring_set_spin(q, 1000));
    CHECK_TIMED(mmipc_ring_recv(q, buf, sizeof buf, 50), -ETIMEDOUT);
    RC_OK(mmipc_ring_send(q, "a", 1, 0));
    RC_IS(mmipc_ring_recv(q, buf, sizeof buf, 50), 1);
    mmipc_region_close(r);
}
END_TEST

/* ----------------------------------------------------------- wrap-around */

/* Records that start at every 8-byte offset near the end of the buffer and
 * straddle it, each checked through recv and in place through peek. */
START_TEST(test_wrap_sweep)
{
    mmipc_region *r = th_region("sweep", 0);
    mmipc_ring *q = new_ring(r, "q", 4096);
    size_t maxm = ring_stat(q).max_message;
    unsigned char *buf = malloc(maxm), *out = malloc(maxm);
    const void *p = NULL;
    ck_assert(buf && out);

    for (uint32_t i = 0; i < 1200; i++) {
        size_t fill = 8u * (i % 251u);
        size_t big = 1000u + (i * 8u) % (maxm - 1000u + 1u);
        if (fill > maxm)
            fill = maxm;
        pm_fill(buf, i, fill);
        RC_OK(mmipc_ring_send(q, buf, fill, 0));
        RC_IS(mmipc_ring_recv(q, out, maxm, 0), fill);
        ck_assert(pm_ok(out, i, fill));

        pm_fill(buf, i + 50000, big);
        RC_OK(mmipc_ring_send(q, buf, big, 0));
        if (i & 1) {
            RC_IS(mmipc_ring_peek(q, &p, 0), big);
            ck_assert_msg(pm_ok(p, i + 50000, big), "round %u: %zu-byte record read in place is wrong", i, big);
            RC_OK(mmipc_ring_release(q, p));
        } else {
            RC_IS(mmipc_ring_recv(q, out, maxm, 0), big);
            ck_assert_msg(pm_ok(out, i + 50000, big), "round %u: %zu-byte record is wrong", i, big);
        }
        ck_assert_uint_eq(ring_stat(q).used, 0);
    }
    free(buf);
    free(out);
    mmipc_region_close(r);
}
END_TEST

static size_t pick_len(uint64_t *rng, size_t maxm)
{
    uint64_t x = th_rand(rng);
    switch (x % 10) {
    case 0:
    case 1:
    case 2:
    case 3:
        return (size_t)((x >> 8) % 65);
    case 4:
    case 5:
    case 6:
        return 65 + (size_t)((x >> 8) % 448);
    case 7:
    case 8:
        return 513 + (size_t)((x >> 8) % (maxm - 512));
    default:
        return maxm - (size_t)((x >> 8) % 8);
    }
}

/* Random sizes through a small ring against a model FIFO, mixing all four
 * data calls; many rounds of wrap-around. */
START_TEST(test_wrap_model)
{
    uint64_t rng = test_seed();
    mmipc_region *r = th_region("model", 0);
    mmipc_ring *q = new_ring(r, "q", 4096);
    struct mmipc_ring_stat st = ring_stat(q);
    size_t maxm = st.max_message;
    unsigned char *buf = malloc(maxm), *out = malloc(maxm);
    struct {
        uint32_t id, len;
    } model[1024];
    unsigned mh = 0, mt = 0;
    uint32_t next_id = 0;
    uint64_t sent = 0, received = 0, bytes = 0;
    ck_assert(buf && out);

    for (unsigned it = 0; it < 30000; it++) {
        unsigned op = (unsigned)(th_rand(&rng) % 8);
        unsigned queued = mt - mh;
        if (op < 4 || queued == 0) {
            size_t len = (queued == 0 && op == 0) ? maxm : pick_len(&rng, maxm);
            uint32_t id = next_id;
            int rc;
            pm_fill(buf, id, len);
            if (th_rand(&rng) & 1) {
                rc = mmipc_ring_send(q, buf, len, 0);
            } else {
                void *w = NULL;
                rc = mmipc_ring_reserve(q, len, &w, 0);
                if (rc == 0) {
                    memcpy(w, buf, len);
                    RC_OK(mmipc_ring_commit(q, w));
                }
            }
            if (rc == 0) {
                ck_assert_uint_lt(queued, 1024);
                model[mt % 1024].id = id;
                model[mt % 1024].len = (uint32_t)len;
                mt++;
                next_id++;
                sent++;
                bytes += len;
            } else {
                ck_assert_msg(rc == -EAGAIN, "iteration %u (seed %llu): send %zu: %s", it, (unsigned long long)g_seed,
                              len, mmipc_strerror(rc));
                ck_assert_msg(queued > 0, "iteration %u (seed %llu): %zu bytes refused by an empty ring", it,
                              (unsigned long long)g_seed, len);
                st = ring_stat(q);
                uint64_t rec = (sizeof(struct mmipc__rec) + len + 15) & ~(size_t)15;
                ck_assert_msg(st.capacity - st.used < 2 * rec + 64,
                              "iteration %u (seed %llu): %zu bytes refused with %llu of %llu bytes free", it,
                              (unsigned long long)g_seed, len, (unsigned long long)(st.capacity - st.used),
                              (unsigned long long)st.capacity);
            }
        } else {
            uint32_t id = model[mh % 1024].id;
            size_t len = model[mh % 1024].len;
            if (th_rand(&rng) & 1) {
                ssize_t n = mmipc_ring_recv(q, out, maxm, 0);
                ck_assert_msg(n == (ssize_t)len && pm_ok(out, id, len),
                              "iteration %u (seed %llu): recv gave %zd (%s), expected message %u of %zu bytes", it,
                              (unsigned long long)g_seed, n, mmipc_strerror((int)n), id, len);
            } else {
                const void *p = NULL;
                ssize_t n = mmipc_ring_peek(q, &p, 0);
                ck_assert_msg(n == (ssize_t)len && pm_ok(p, id, len),
                              "iteration %u (seed %llu): peek gave %zd (%s), expected message %u of %zu bytes", it,
                              (unsigned long long)g_seed, n, mmipc_strerror((int)n), id, len);
                RC_OK(mmipc_ring_release(q, p));
            }
            mh++;
            received++;
        }
        if ((it & 63) == 0 || mh == mt) {
            st = ring_stat(q);
            ck_assert_uint_eq(st.messages, mt - mh);
            ck_assert_uint_eq(st.sent, sent);
            ck_assert_uint_eq(st.received, received);
            ck_assert_uint_le(st.used, st.capacity);
            ck_assert_uint_eq(st.used % 8, 0);
            if (mh == mt)
                ck_assert_msg(st.used == 0, "empty ring reports %llu bytes used", (unsigned long long)st.used);
        }
    }
    ck_assert_msg(bytes > 20 * 4096, "only %llu bytes went through", (unsigned long long)bytes);
    while (mh != mt) {
        RC_IS(mmipc_ring_recv(q, out, maxm, 0), model[mh % 1024].len);
        ck_assert(pm_ok(out, model[mh % 1024].id, model[mh % 1024].len));
        mh++;
    }
    RC_IS(mmipc_ring_recv(q, out, maxm, 0), -EAGAIN);
    free(buf);
    free(out);
    mmipc_region_close(r);
}
END_TEST

/* -------------------------------------------------------------- zero-copy */

struct thr_arg {
    mmipc_ring *q;
    void *w;
    const void *p;
    int rc;
};

static void *commit_thread(void *arg)
{
    struct thr_arg *t = arg;
    memcpy(t->w, "from another thread", 19);
    t->rc = mmipc_ring_commit(t->q, t->w);
    return NULL;
}

static void *release_thread(void *arg)
{
    struct thr_arg *t = arg;
    t->rc = mmipc_ring_release(t->q, t->p);
    return NULL;
}

START_TEST(test_reserve_commit)
{
    mmipc_region *r = th_region("zc", 0);
    mmipc_ring *q = new_ring(r, "q", 4096);
    unsigned char out[64];
    void *w = NULL;
    const void *p = NULL;

    RC_OK(mmipc_ring_reserve(q, 5, &w, 0));
    ck_assert_ptr_nonnull(w);
    memcpy(w, "hello", 5);
    RC_IS(mmipc_ring_recv(q, out, sizeof out, 0), -EAGAIN); /* not published yet */
    RC_OK(mmipc_ring_commit(q, w));
    RC_IS(mmipc_ring_peek(q, &p, 0), 5);
    ck_assert_ptr_nonnull(p);
    ck_assert(memcmp(p, "hello", 5) == 0);
    RC_OK(mmipc_ring_release(q, p));
    RC_IS(mmipc_ring_recv(q, out, sizeof out, 0), -EAGAIN);
    mmipc_region_close(r);
}
END_TEST

START_TEST(test_commit_other_thread)
{
    mmipc_region *r = th_region("thr", 0);
    mmipc_ring *q = new_ring(r, "q", 4096);
    unsigned char out[64];
    struct thr_arg t = {.q = q, .rc = 1};
    pthread_t th;

    RC_OK(mmipc_ring_reserve(q, 19, &t.w, 0));
    ck_assert_int_eq(pthread_create(&th, NULL, commit_thread, &t), 0);
    ck_assert_int_eq(pthread_join(th, NULL), 0);
    RC_OK(t.rc);
    RC_IS(mmipc_ring_recv(q, out, sizeof out, 0), 19);
    ck_assert(memcmp(out, "from another thread", 19) == 0);

    RC_OK(mmipc_ring_send(q, "peeked", 6, 0));
    RC_IS(mmipc_ring_peek(q, &t.p, 0), 6);
    t.rc = 1;
    ck_assert_int_eq(pthread_create(&th, NULL, release_thread, &t), 0);
    ck_assert_int_eq(pthread_join(th, NULL), 0);
    RC_OK(t.rc);
    struct mmipc_ring_stat st = ring_stat(q);
    ck_assert_uint_eq(st.messages, 0);
    ck_assert_uint_eq(st.used, 0);
    ck_assert_uint_eq(st.received, 2);
    mmipc_region_close(r);
}
END_TEST

struct send_arg {
    mmipc_ring *q;
    uint32_t id;
    size_t len;
};

static int send_child(void *arg)
{
    struct send_arg *a = arg;
    unsigned char buf[4096];
    child_init();
    pm_fill(buf, a->id, a->len);
    int rc = mmipc_ring_send(a->q, buf, a->len, 10000);
    if (rc != 0)
        fprintf(stderr, "send_child: %s\n", mmipc_strerror(rc));
    return rc == 0 ? 0 : 1;
}

START_TEST(test_reservation_does_not_block)
{
    mmipc_region *r = th_region("resv", 0);
    mmipc_ring *q = new_ring(r, "q", 4096);
    unsigned char out[256];
    void *a = NULL, *b = NULL;

    RC_OK(mmipc_ring_reserve(q, 100, &a, 0));
    pm_fill(a, 1, 100);
    RC_OK(mmipc_ring_send(q, "B", 1, 0));
    RC_IS(mmipc_ring_recv(q, out, sizeof out, 1000), 1);
    ck_assert(out[0] == 'B');
    RC_IS(mmipc_ring_recv(q, out, sizeof out, 0), -EAGAIN);

    /* another process's message too */
    struct send_arg sa = {.q = q, .id = 3, .len = 30};
    pid_t pid = th_spawn(send_child, &sa);
    ck_assert_int_eq(th_wait(pid, 10000), 0);
    RC_IS(mmipc_ring_recv(q, out, sizeof out, 1000), 30);
    ck_assert(pm_ok(out, 3, 30));

    RC_OK(mmipc_ring_commit(q, a));
    RC_IS(mmipc_ring_recv(q, out, sizeof out, 0), 100);
    ck_assert(pm_ok(out, 1, 100));

    /* two open reservations committed out of order: both delivered once */
    RC_OK(mmipc_ring_reserve(q, 10, &a, 0));
    RC_OK(mmipc_ring_reserve(q, 20, &b, 0));
    ck_assert_ptr_ne(a, b);
    pm_fill(a, 10, 10);
    pm_fill(b, 20, 20);
    RC_OK(mmipc_ring_commit(q, b));
    RC_IS(mmipc_ring_recv(q, out, sizeof out, 0), 20);
    ck_assert(pm_ok(out, 20, 20));
    RC_OK(mmipc_ring_commit(q, a));
    RC_IS(mmipc_ring_recv(q, out, sizeof out, 0), 10);
    ck_assert(pm_ok(out, 10, 10));

    struct mmipc_ring_stat st = ring_stat(q);
    ck_assert_uint_eq(st.messages, 0);
    ck_assert_uint_eq(st.used, 0);
    ck_assert_uint_eq(st.sent, 5);
    ck_assert_uint_eq(st.received, 5);
    mmipc_region_close(r);
}
END_TEST

struct recv_arg {
    char path[320];
    mmipc_ring *q; /* inherited handle, or NULL: open our own */
    uint32_t *slot;
};

static int recv_child(void *arg)
{
    struct recv_arg *a = arg;
    unsigned char buf[4096];
    mmipc_region *r = NULL;
    mmipc_ring *q = a->q;
    child_init();
    if (q == NULL && child_open(a->path, "q", &r, &q) != 0)
        return 2;
    ssize_t n = mmipc_ring_recv(q, buf, sizeof buf, 10000);
    if (n < 4) {
        fprintf(stderr, "recv_child: %zd (%s)\n", n, mmipc_strerror((int)n));
        return 1;
    }
    if (!pm_ok(buf, pm_id(buf), (size_t)n))
        return 3;
    __atomic_store_n(a->slot, pm_id(buf), __ATOMIC_RELEASE);
    mmipc_region_close(r);
    return 0;
}

START_TEST(test_peek_does_not_block)
{
    mmipc_region *r = th_region("peekb", 0);
    mmipc_ring *q = new_ring(r, "q", 4096);
    unsigned char buf[64], out[64];
    const void *pa = NULL, *pc = NULL, *pd = NULL;

    for (uint32_t i = 1; i <= 3; i++) {
        pm_fill(buf, i, 10 + i);
        RC_OK(mmipc_ring_send(q, buf, 10 + i, 0));
    }
    RC_IS(mmipc_ring_peek(q, &pa, 0), 11);
    ck_assert(pm_ok(pa, 1, 11));
    RC_IS(mmipc_ring_recv(q, out, sizeof out, 0), 12);
    ck_assert(pm_ok(out, 2, 12));
    RC_IS(mmipc_ring_peek(q, &pc, 0), 13);
    ck_assert(pm_ok(pc, 3, 13));
    RC_IS(mmipc_ring_recv(q, out, sizeof out, 0), -EAGAIN);
    RC_OK(mmipc_ring_release(q, pc)); /* out of order */
    RC_OK(mmipc_ring_release(q, pa));
    struct mmipc_ring_stat st = ring_stat(q);
    ck_assert_uint_eq(st.messages, 0);
    ck_assert_uint_eq(st.used, 0);

    /* a consumer in another process carries on past our open peek */
    uint32_t *slot = shared_mem(4096);
    struct recv_arg ra = {.q = NULL, .slot = slot};
    snprintf(ra.path, sizeof ra.path, "%s", th_path("peekb"));
    pm_fill(buf, 4, 20);
    RC_OK(mmipc_ring_send(q, buf, 20, 0));
    pm_fill(buf, 5, 21);
    RC_OK(mmipc_ring_send(q, buf, 21, 0));
    RC_IS(mmipc_ring_peek(q, &pd, 0), 20);
    pid_t pid = th_spawn(recv_child, &ra);
    ck_assert_int_eq(th_wait(pid, 10000), 0);
    ck_assert_uint_eq(*slot, 5);
    ck_assert(pm_ok(pd, 4, 20)); /* our peeked bytes were left alone */
    RC_OK(mmipc_ring_release(q, pd));
    st = ring_stat(q);
    ck_assert_uint_eq(st.messages, 0);
    ck_assert_uint_eq(st.used, 0);
    munmap(slot, 4096);
    mmipc_region_close(r);
}
END_TEST

START_TEST(test_bogus_pointers)
{
    mmipc_region *r = th_region("bogus", 0);
    mmipc_ring *q = new_ring(r, "q", 4096);
    unsigned char local[64];
    void *w = NULL;
    const void *p = NULL;

    RC_IS(mmipc_ring_commit(q, NULL), -EINVAL);
    RC_IS(mmipc_ring_commit(q, local), -EINVAL);
    RC_IS(mmipc_ring_release(q, NULL), -EINVAL);
    RC_IS(mmipc_ring_release(q, local), -EINVAL);

    RC_OK(mmipc_ring_reserve(q, 64, &w, 0));
    memset(w, 'w', 64);
    RC_IS(mmipc_ring_commit(q, (char *)w + 8), -EINVAL);
    RC_IS(mmipc_ring_commit(q, (char *)w - 8), -EINVAL);
    RC_IS(mmipc_ring_commit(q, (char *)w + 1), -EINVAL);
    RC_IS(mmipc_ring_release(q, w), -EINVAL); /* a reservation is not a peek */
    RC_OK(mmipc_ring_commit(q, w));
    RC_IS(mmipc_ring_commit(q, w), -EINVAL); /* twice */

    RC_IS(mmipc_ring_peek(q, &p, 0), 64);
    RC_IS(mmipc_ring_release(q, (const char *)p + 8), -EINVAL);
    RC_IS(mmipc_ring_release(q, (const char *)p + 1), -EINVAL);
    RC_IS(mmipc_ring_commit(q, (void *)(uintptr_t)p), -EINVAL); /* a peek is not a reservation */
    RC_OK(mmipc_ring_release(q, p));
    RC_IS(mmipc_ring_release(q, p), -EINVAL); /* twice */
    RC_IS(mmipc_ring_commit(q, (void *)(uintptr_t)p), -EINVAL);

    /* a pointer of another ring */
    mmipc_ring *q2 = new_ring(r, "q2", 4096);
    RC_OK(mmipc_ring_reserve(q2, 8, &w, 0));
    RC_IS(mmipc_ring_commit(q, w), -EINVAL);
    RC_OK(mmipc_ring_commit(q2, w));
    RC_IS(mmipc_ring_peek(q2, &p, 0), 8);
    RC_IS(mmipc_ring_release(q, p), -EINVAL);
    RC_OK(mmipc_ring_release(q2, p));

    struct mmipc_ring_stat st = ring_stat(q);
    ck_assert_uint_eq(st.sent, 1);
    ck_assert_uint_eq(st.received, 1);
    ck_assert_uint_eq(st.messages, 0);
    ck_assert_uint_eq(st.used, 0);
    mmipc_region_close(r);
}
END_TEST

/* White-box: an interior pointer whose preceding payload bytes copy this
 * process's own record header is still not an open reservation or peek. */
START_TEST(test_forged_pointer)
{
    mmipc_region *r = th_region("forged", 0);
    mmipc_ring *q = new_ring(r, "q", 4096);
    void *w = NULL;
    const void *p = NULL;

    RC_OK(mmipc_ring_reserve(q, 64, &w, 0));
    memcpy(w, (char *)w - sizeof(struct mmipc__rec), sizeof(struct mmipc__rec));
    RC_IS(mmipc_ring_commit(q, (char *)w + sizeof(struct mmipc__rec)), -EINVAL);
    RC_OK(mmipc_ring_commit(q, w));
    ck_assert_uint_eq(ring_stat(q).sent, 1);

    RC_IS(mmipc_ring_peek(q, &p, 0), 64);
    memcpy((char *)(uintptr_t)p, (const char *)p - sizeof(struct mmipc__rec), sizeof(struct mmipc__rec));
    RC_IS(mmipc_ring_release(q, (const char *)p + sizeof(struct mmipc__rec)), -EINVAL);
    RC_OK(mmipc_ring_release(q, p));
    struct mmipc_ring_stat st = ring_stat(q);
    ck_assert_uint_eq(st.sent, 1);
    ck_assert_uint_eq(st.received, 1);
    ck_assert_uint_eq(st.messages, 0);
    ck_assert_uint_eq(st.used, 0);
    mmipc_region_close(r);
}
END_TEST

/*
 * One producer alternates reserve/commit and send; two consumers alternate
 * recv and peek/release: each must see the producer's sequence increase.  Regression: a consumer
 * that reloaded the tail in the middle of a scan took message N+1 while
 * skipping N, which it had seen RESERVED a moment before (found by the
 * benchmark and the torture test).  A small ring makes the scan reach its cached tail often.
 */
#define ZO_MS 2000u
static int zo_producer(void *arg)
{
    const char *path = arg;
    mmipc_region *r = NULL;
    mmipc_ring *q = NULL;
    if (child_open(path, "zo", &r, &q) != 0)
        return 10;
    uint64_t end = th_now_ms() + ZO_MS;
    for (uint64_t seq = 1; th_now_ms() < end; seq++) {
        void *w = NULL;
        if (seq & 1) { /* a copy-send publishes at once, right behind a reservation */
            if (mmipc_ring_send(q, &seq, sizeof seq, 100) != 0)
                seq--;
            continue;
        }
        if (mmipc_ring_reserve(q, sizeof seq, &w, 100) != 0) {
            seq--;
            continue;
        }
        memcpy(w, &seq, sizeof seq);
        if (mmipc_ring_commit(q, w) != 0)
            return 12;
    }
    mmipc_region_close(r);
    return 0;
}

static int zo_consumer(void *arg)
{
    const char *path = arg;
    mmipc_region *r = NULL;
    mmipc_ring *q = NULL;
    uint64_t last = 0, v;
    if (child_open(path, "zo", &r, &q) != 0)
        return 20;
    uint64_t end = th_now_ms() + ZO_MS + 500;
    while (th_now_ms() < end) {
        const void *p = NULL;
        ssize_t n = (last & 1) ? mmipc_ring_recv(q, &v, sizeof v, 100) : mmipc_ring_peek(q, &p, 100);
        if (n == -ETIMEDOUT)
            continue;
        if (n != sizeof v)
            return 21;
        if (p != NULL) {
            memcpy(&v, p, sizeof v);
            if (mmipc_ring_release(q, p) != 0)
                return 22;
        }
        if (v <= last) {
            fprintf(stderr, "zero-copy order: seq %llu after %llu\n", (unsigned long long)v, (unsigned long long)last);
            return 23;
        }
        last = v;
    }
    mmipc_region_close(r);
    return 0;
}

START_TEST(test_zc_stream_order)
{
    mmipc_region *r = th_region("zo", 1 << 20);
    new_ring(r, "zo", 4096);
    const char *path = th_path("zo");
    pid_t c1 = th_spawn(zo_consumer, (void *)path);
    pid_t c2 = th_spawn(zo_consumer, (void *)path);
    pid_t p = th_spawn(zo_producer, (void *)path);
    ck_assert_int_eq(th_wait(p, 30000), 0);
    ck_assert_int_eq(th_wait(c1, 30000), 0);
    ck_assert_int_eq(th_wait(c2, 30000), 0);
    mmipc_region_close(r);
}
END_TEST

/* Two producer and two consumer threads on one handle. */
#define MT_N 20000u

struct mt_shared {
    mmipc_ring *q;
    unsigned id;
    uint8_t *count; /* [2][MT_N] */
    uint64_t bad, order, errors;
};

static void *mt_producer(void *arg)
{
    struct mt_shared *s = arg;
    unsigned char m[SM_MAX];
    for (uint32_t seq = 0; seq < MT_N; seq++) {
        size_t len = sm_build(m, s->id, seq);
        int rc;
        do
            rc = mmipc_ring_send(s->q, m, len, 1000);
        while (rc == -ETIMEDOUT);
        if (rc != 0) {
            __atomic_fetch_add(&s->errors, 1, __ATOMIC_RELAXED);
            break;
        }
    }
    return NULL;
}

static void *mt_consumer(void *arg)
{
    struct mt_shared *s = arg;
    unsigned char m[SM_MAX];
    int64_t last[2] = {-1, -1};
    uint64_t end = th_now_ms() + 60000;
    while (th_now_ms() < end) {
        ssize_t n = mmipc_ring_recv(s->q, m, sizeof m, 1000);
        unsigned p;
        uint32_t seq;
        if (n == -ETIMEDOUT)
            continue;
        if (n == 0)
            return NULL;
        if (n < 0) {
            __atomic_fetch_add(&s->errors, 1, __ATOMIC_RELAXED);
            return NULL;
        }
        if (sm_check(m, (size_t)n, &p, &seq) != 0 || p >= 2 || seq >= MT_N) {
            __atomic_fetch_add(&s->bad, 1, __ATOMIC_RELAXED);
            continue;
        }
        __atomic_fetch_add(&s->count[p * MT_N + seq], 1, __ATOMIC_RELAXED);
        if ((int64_t)seq <= last[p])
            __atomic_fetch_add(&s->order, 1, __ATOMIC_RELAXED);
        last[p] = seq;
    }
    __atomic_fetch_add(&s->errors, 1, __ATOMIC_RELAXED);
    return NULL;
}

START_TEST(test_threads)
{
    mmipc_region *r = th_region("mt", 0);
    mmipc_ring *q = new_ring(r, "q", 8192);
    uint8_t *count = calloc(2 * MT_N, 1);
    struct mt_shared s[4];
    pthread_t th[4];
    ck_assert_ptr_nonnull(count);

    memset(s, 0, sizeof s);
    for (unsigned i = 0; i < 4; i++) {
        s[i].q = q;
        s[i].id = i & 1;
        s[i].count = count;
        ck_assert_int_eq(pthread_create(&th[i], NULL, i < 2 ? mt_consumer : mt_producer, &s[i]), 0);
    }
    ck_assert_int_eq(pthread_join(th[2], NULL), 0);
    ck_assert_int_eq(pthread_join(th[3], NULL), 0);
    RC_OK(mmipc_ring_send(q, "", 0, 10000));
    RC_OK(mmipc_ring_send(q, "", 0, 10000));
    ck_assert_int_eq(pthread_join(th[0], NULL), 0);
    ck_assert_int_eq(pthread_join(th[1], NULL), 0);

    uint64_t errors = 0, bad = 0, order = 0;
    for (unsigned i = 0; i < 4; i++) {
        errors += s[i].errors;
        bad += s[i].bad;
        order += s[i].order;
    }
    ck_assert_msg(errors == 0 && bad == 0 && order == 0, "errors %llu, corrupted %llu, out of order %llu",
                  (unsigned long long)errors, (unsigned long long)bad, (unsigned long long)order);
    for (unsigned i = 0; i < 2 * MT_N; i++)
        ck_assert_msg(count[i] == 1, "producer %u seq %u received %u times", i / MT_N, i % MT_N, count[i]);
    struct mmipc_ring_stat st = ring_stat(q);
    ck_assert_uint_eq(st.sent, 2 * MT_N + 2);
    ck_assert_uint_eq(st.received, 2 * MT_N + 2);
    ck_assert_uint_eq(st.used, 0);
    free(count);
    mmipc_region_close(r);
}
END_TEST

/* ------------------------------------------------------------- processes */

static int pingpong_child(void *arg)
{
    mmipc_ring *q = arg;
    unsigned char buf[16];
    child_init();
    ssize_t n = mmipc_ring_recv(q, buf, sizeof buf, 10000);
    if (n != 4 || memcmp(buf, "ping", 4) != 0)
        return 1;
    return mmipc_ring_send(q, "pong", 4, 10000) == 0 ? 0 : 2;
}

START_TEST(test_fork_handle)
{
    mmipc_region *r = th_region("fork", 0);
    mmipc_ring *q = new_ring(r, "q", 4096);
    unsigned char buf[16];

    RC_OK(mmipc_ring_send(q, "ping", 4, 0));
    pid_t pid = th_spawn(pingpong_child, q);
    ck_assert_int_eq(th_wait(pid, 15000), 0);
    RC_IS(mmipc_ring_recv(q, buf, sizeof buf, 0), 4);
    ck_assert(memcmp(buf, "pong", 4) == 0);

    /* the child may also block on the inherited handle */
    pid = th_spawn(pingpong_child, q);
    th_sleep_ms(50);
    RC_OK(mmipc_ring_send(q, "ping", 4, 0));
    ck_assert_int_eq(th_wait(pid, 15000), 0);
    RC_IS(mmipc_ring_recv(q, buf, sizeof buf, 0), 4);
    ck_assert(memcmp(buf, "pong", 4) == 0);
    struct mmipc_ring_stat st = ring_stat(q);
    ck_assert_uint_eq(st.sent, 4);
    ck_assert_uint_eq(st.received, 4);
    mmipc_region_close(r);
}
END_TEST

static void push_through(mmipc_ring *q);

struct fork_zc_arg {
    mmipc_ring *q; /* inherited */
    void *w;       /* the parent's open reservation */
    const void *p; /* the parent's open peek */
    uint32_t *flag;
    int hang;
};

static int fork_zc_child(void *arg)
{
    struct fork_zc_arg *a = arg;
    void *w = NULL;
    child_init();
    /* the parent's reservation and peek are not ours */
    if (mmipc_ring_commit(a->q, a->w) != -EINVAL)
        return 1;
    if (mmipc_ring_release(a->q, a->p) != -EINVAL)
        return 2;
    /* our own, through the inherited handle */
    if (mmipc_ring_reserve(a->q, 30, &w, 1000) != 0)
        return 3;
    pm_fill(w, 30, 30);
    if (a->hang) {
        __atomic_store_n(a->flag, 1, __ATOMIC_RELEASE);
        return hang_until_killed();
    }
    if (mmipc_ring_commit(a->q, w) != 0)
        return 4;
    return 0;
}

START_TEST(test_fork_zero_copy)
{
    mmipc_region *r = th_region("forkzc", 0);
    mmipc_ring *q = new_ring(r, "q", 4096);
    struct fork_zc_arg a = {.q = q};
    unsigned char buf[64];
    a.flag = shared_mem(4096);

    pm_fill(buf, 1, 10);
    RC_OK(mmipc_ring_send(q, buf, 10, 0));
    RC_IS(mmipc_ring_peek(q, &a.p, 0), 10);
    RC_OK(mmipc_ring_reserve(q, 20, &a.w, 0));
    pm_fill(a.w, 20, 20);

    pid_t pid = th_spawn(fork_zc_child, &a);
    ck_assert_int_eq(th_wait(pid, 10000), 0);
    RC_IS(mmipc_ring_recv(q, buf, sizeof buf, 0), 30); /* the child's */
    ck_assert(pm_ok(buf, 30, 30));
    RC_OK(mmipc_ring_commit(q, a.w));
    RC_OK(mmipc_ring_release(q, a.p));
    RC_IS(mmipc_ring_recv(q, buf, sizeof buf, 0), 20);
    ck_assert(pm_ok(buf, 20, 20));

    /* a child's reservation through the inherited handle, abandoned by
     * SIGKILL, is reclaimed like any other */
    uint64_t rec0 = ring_stat(q).recoveries;
    RC_OK(mmipc_ring_reserve(q, 20, &a.w, 0));
    RC_OK(mmipc_ring_commit(q, a.w));
    RC_IS(mmipc_ring_peek(q, &a.p, 0), 20);
    a.hang = 1;
    pid = th_spawn(fork_zc_child, &a);
    int ok = wait_flag(a.flag, 1, 10000);
    th_kill(pid);
    ck_assert_msg(ok == 0, "child did not reserve");
    RC_OK(mmipc_ring_release(q, a.p));
    push_through(q);
    struct mmipc_ring_stat st = ring_stat(q);
    ck_assert_uint_gt(st.recoveries, rec0);
    ck_assert_uint_eq(st.messages, 0);
    ck_assert_uint_eq(st.used, 0);
    munmap(a.flag, 4096);
    mmipc_region_close(r);
}
END_TEST

START_TEST(test_blocked_recv_wakes)
{
    mmipc_region *r = th_region("wakerecv", 0);
    mmipc_ring *q = new_ring(r, "q", 4096);
    uint32_t *slots = shared_mem(4096);
    struct recv_arg ra[3];
    pid_t pid[3];
    unsigned char buf[64];

    for (int i = 0; i < 3; i++) {
        memset(&ra[i], 0, sizeof ra[i]);
        snprintf(ra[i].path, sizeof ra[i].path, "%s", th_path("wakerecv"));
        ra[i].q = i == 0 ? q : NULL; /* one inherited handle, two own */
        ra[i].slot = &slots[i];
        pid[i] = th_spawn(recv_child, &ra[i]);
    }
    /* give them time to go to sleep (a slow start must not turn into a
     * failure: poll the wait counter for up to 2 s) */
    for (uint64_t end = th_now_ms() + 2000; ring_stat(q).recv_waits < 3 && th_now_ms() < end;)
        th_sleep_ms(5);
    th_sleep_ms(20);
    for (int i = 0; i < 3; i++)
        ck_assert_int_eq(waitpid(pid[i], NULL, WNOHANG), 0); /* all still blocked */
    for (uint32_t i = 0; i < 3; i++) {
        pm_fill(buf, 100 + i, 40);
        RC_OK(mmipc_ring_send(q, buf, 40, 0));
    }
    for (int i = 0; i < 3; i++)
        ck_assert_msg(th_wait(pid[i], 10000) == 0, "blocked consumer %d did not get a message", i);
    ck_assert_uint_eq(slots[0] + slots[1] + slots[2], 303);
    ck_assert(slots[0] != slots[1] && slots[1] != slots[2] && slots[0] != slots[2]);
    struct mmipc_ring_stat st = ring_stat(q);
    ck_assert_uint_ge(st.recv_waits, 3);
    ck_assert_uint_eq(st.messages, 0);
    munmap(slots, 4096);
    mmipc_region_close(r);
}
END_TEST

START_TEST(test_blocked_send_wakes)
{
    mmipc_region *r = th_region("wakesend", 0);
    mmipc_ring *q = new_ring(r, "q", 4096);
    unsigned char out[256];

    unsigned n = fill_ring(q, 100, 0);
    struct send_arg sa = {.q = q, .id = 999, .len = 100};
    pid_t pid = th_spawn(send_child, &sa);
    for (uint64_t end = th_now_ms() + 2000; ring_stat(q).send_waits < 1 && th_now_ms() < end;)
        th_sleep_ms(5);
    th_sleep_ms(20);
    ck_assert_msg(waitpid(pid, NULL, WNOHANG) == 0, "a send into a full ring returned");
    RC_IS(mmipc_ring_recv(q, out, sizeof out, 0), 100);
    ck_assert(pm_ok(out, 0, 100));
    RC_IS(mmipc_ring_recv(q, out, sizeof out, 0), 100);
    ck_assert(pm_ok(out, 1, 100));
    ck_assert_msg(th_wait(pid, 10000) == 0, "blocked producer did not wake when space freed");
    for (uint32_t i = 2; i < n; i++) {
        RC_IS(mmipc_ring_recv(q, out, sizeof out, 0), 100);
        ck_assert(pm_ok(out, i, 100));
    }
    RC_IS(mmipc_ring_recv(q, out, sizeof out, 0), 100);
    ck_assert(pm_ok(out, 999, 100));
    ck_assert_uint_ge(ring_stat(q).send_waits, 1);
    mmipc_region_close(r);
}
END_TEST

/*
 * Sleep/wake handoffs with spinning off on both sides: every wait goes
 * through the event counts (arm, re-check, futex), so the Dekker pairing
 * between a publication and the sleeper flag is exercised thousands of times
 * in both directions (nonempty and nonfull).  A lost wake-up costs a whole
 * sleep slice (MMIPC__SLICE_MS), so a systematic one could not finish in the
 * deadline; every message must also arrive intact and in order.
 */
#define HANDOFFS 20000u

struct handoff_arg {
    char path[320];
};

static int handoff_child(void *arg)
{
    struct handoff_arg *a = arg;
    mmipc_region *r = NULL;
    mmipc_ring *q = NULL;
    unsigned char buf[256];
    child_init();
    if (child_open(a->path, "h", &r, &q) != 0)
        return 2;
    if (mmipc_ring_set_spin(q, 0) != 0)
        return 3;
    for (uint32_t i = 0; i < HANDOFFS; i++) {
        size_t len = 4 + (i * 37u) % 200u;
        pm_fill(buf, i, len);
        int rc = mmipc_ring_send(q, buf, len, th_slow(10000));
        if (rc != 0) {
            fprintf(stderr, "handoff send %u: %s\n", i, mmipc_strerror(rc));
            return 4;
        }
    }
    mmipc_region_close(r);
    return 0;
}

START_TEST(test_sleep_handoffs)
{
    mmipc_region *r = th_region("handoff", 0);
    mmipc_ring *q = new_ring(r, "h", 4096);
    struct handoff_arg ha;
    unsigned char buf[256];
    RC_OK(mmipc_ring_set_spin(q, 0));
    snprintf(ha.path, sizeof ha.path, "%s", th_path("handoff"));
    uint64_t end = th_now_ms() + (uint64_t)th_slow(30000);
    pid_t pid = th_spawn(handoff_child, &ha);
    for (uint32_t i = 0; i < HANDOFFS; i++) {
        size_t len = 4 + (i * 37u) % 200u;
        RC_IS(mmipc_ring_recv(q, buf, sizeof buf, th_slow(10000)), len);
        ck_assert_msg(pm_ok(buf, i, len), "handoff message %u corrupt or out of order", i);
        if ((i & 1023u) == 0) {
            ck_assert_msg(th_now_ms() < end, "%u of %u sleep/wake handoffs took over %d ms: lost wake-ups?", i,
                          HANDOFFS, th_slow(30000));
            th_sleep_ms(1); /* let the ring fill: the producer sleeps too */
        }
    }
    ck_assert_msg(th_wait(pid, 10000) == 0, "handoff producer failed");
    struct mmipc_ring_stat st = ring_stat(q);
    ck_assert_uint_eq(st.messages, 0);
    ck_assert_uint_gt(st.recv_waits, 0);
    ck_assert_uint_gt(st.send_waits, 0); /* the nonfull direction slept too */
    mmipc_region_close(r);
}
END_TEST

struct persist_arg {
    char path[320];
};

static int persist_child(void *arg)
{
    struct persist_arg *a = arg;
    mmipc_region *r = NULL;
    mmipc_ring *q = NULL;
    unsigned char buf[512];
    struct mmipc_ring_stat st;
    child_init();
    if (child_open(a->path, "p", &r, &q) != 0)
        return 2;
    if (mmipc_ring_stat(q, &st) != 0 || st.messages != 5 || st.sent != 5)
        return 3;
    for (uint32_t i = 0; i < 5; i++) {
        ssize_t n = mmipc_ring_recv(q, buf, sizeof buf, 0);
        if (n != (ssize_t)(10 + 50 * i) || !pm_ok(buf, i, (size_t)n))
            return 4;
    }
    pm_fill(buf, 5, 77);
    if (mmipc_ring_send(q, buf, 77, 0) != 0)
        return 5;
    mmipc_region_close(r);
    return 0;
}

START_TEST(test_persistence)
{
    mmipc_region *r = th_region("persist", 0);
    mmipc_ring *q = new_ring(r, "p", 4096);
    unsigned char buf[512];
    struct persist_arg pa;

    for (uint32_t i = 0; i < 5; i++) {
        pm_fill(buf, i, 10 + 50 * i);
        RC_OK(mmipc_ring_send(q, buf, 10 + 50 * i, 0));
    }
    mmipc_region_close(r);

    snprintf(pa.path, sizeof pa.path, "%s", th_path("persist"));
    pid_t pid = th_spawn(persist_child, &pa);
    ck_assert_int_eq(th_wait(pid, 15000), 0);

    r = NULL;
    RC_OK(mmipc_region_open(pa.path, 0, NULL, &r));
    RC_OK(mmipc_ring_open(r, "p", &q));
    RC_IS(mmipc_ring_recv(q, buf, sizeof buf, 0), 77);
    ck_assert(pm_ok(buf, 5, 77));
    struct mmipc_ring_stat st = ring_stat(q);
    ck_assert_uint_eq(st.sent, 6);
    ck_assert_uint_eq(st.received, 6);
    ck_assert_uint_eq(st.used, 0);
    mmipc_region_close(r);
}
END_TEST

/* ------------------------------------------------- abandoned zero-copy ops */

struct abandon_arg {
    char path[320];
    uint32_t *flag;
    int close_instead; /* close the region rather than wait for SIGKILL */
};

static int reserve_child(void *arg)
{
    struct abandon_arg *a = arg;
    mmipc_region *r = NULL;
    mmipc_ring *q = NULL;
    void *w = NULL;
    child_init();
    if (child_open(a->path, "q", &r, &q) != 0)
        return 2;
    if (mmipc_ring_reserve(q, 200, &w, 1000) != 0)
        return 3;
    memset(w, 0xEE, 200);
    if (a->close_instead) {
        mmipc_region_close(r);
        __atomic_store_n(a->flag, 1, __ATOMIC_RELEASE);
        return 0;
    }
    __atomic_store_n(a->flag, 1, __ATOMIC_RELEASE);
    return hang_until_killed();
}

static int peek_child(void *arg)
{
    struct abandon_arg *a = arg;
    mmipc_region *r = NULL;
    mmipc_ring *q = NULL;
    const void *p = NULL;
    child_init();
    if (child_open(a->path, "q", &r, &q) != 0)
        return 2;
    ssize_t n = mmipc_ring_peek(q, &p, 1000);
    if (n != 50 || !pm_ok(p, 1, 50))
        return 3;
    if (a->close_instead) {
        mmipc_region_close(r);
        __atomic_store_n(a->flag, 1, __ATOMIC_RELEASE);
        return 0;
    }
    __atomic_store_n(a->flag, 1, __ATOMIC_RELEASE);
    return hang_until_killed();
}

/* Push 200 messages through the ring one by one: with an abandoned record
 * holding the head, the ring fills up after a few dozen and only a reclaim
 * lets it go on. */
static void push_through(mmipc_ring *q)
{
    unsigned char buf[128], out[256];
    for (uint32_t i = 0; i < 200; i++) {
        pm_fill(buf, 5000 + i, 100);
        int rc = mmipc_ring_send(q, buf, 100, 5000);
        ck_assert_msg(rc == 0, "send %u behind an abandoned record: %s", i, mmipc_strerror(rc));
        ssize_t n = mmipc_ring_recv(q, out, sizeof out, 5000);
        ck_assert_msg(n == 100 && pm_ok(out, 5000 + i, 100), "recv %u behind an abandoned record: %zd (%s)", i, n,
                      mmipc_strerror((int)n));
    }
}

static void abandoned_reservation(int close_instead)
{
    mmipc_region *r = th_region("abres", 0);
    mmipc_ring *q = new_ring(r, "q", 4096);
    struct abandon_arg a = {.close_instead = close_instead};
    unsigned char out[256];
    a.flag = shared_mem(4096);
    snprintf(a.path, sizeof a.path, "%s", th_path("abres"));

    pid_t pid = th_spawn(reserve_child, &a);
    int ok = wait_flag(a.flag, 1, 10000);
    if (close_instead)
        ck_assert_int_eq(th_wait(pid, 10000), 0);
    else
        th_kill(pid);
    ck_assert_msg(ok == 0, "child did not reserve");
    uint64_t rec0 = ring_stat(q).recoveries;

    RC_IS(mmipc_ring_recv(q, out, sizeof out, 0), -EAGAIN); /* the reservation never shows */
    push_through(q);
    struct mmipc_ring_stat st = ring_stat(q);
    if (!close_instead)
        ck_assert_msg(st.recoveries > rec0, "recoveries %llu -> %llu after a reclaimed reservation",
                      (unsigned long long)rec0, (unsigned long long)st.recoveries);
    ck_assert_uint_eq(st.messages, 0);
    ck_assert_uint_eq(st.used, 0);
    ck_assert_uint_eq(st.sent, 200);
    ck_assert_uint_eq(st.received, 200);
    munmap(a.flag, 4096);
    mmipc_region_close(r);
}

START_TEST(test_abandoned_reservation)
{
    abandoned_reservation(0);
}
END_TEST

START_TEST(test_closed_reservation)
{
    abandoned_reservation(1);
}
END_TEST

static void abandoned_peek(int close_instead)
{
    mmipc_region *r = th_region("abpeek", 0);
    mmipc_ring *q = new_ring(r, "q", 4096);
    struct abandon_arg a = {.close_instead = close_instead};
    unsigned char buf[64], out[256];
    a.flag = shared_mem(4096);
    snprintf(a.path, sizeof a.path, "%s", th_path("abpeek"));

    pm_fill(buf, 1, 50);
    RC_OK(mmipc_ring_send(q, buf, 50, 0));
    pm_fill(buf, 2, 60);
    RC_OK(mmipc_ring_send(q, buf, 60, 0));

    pid_t pid = th_spawn(peek_child, &a);
    int ok = wait_flag(a.flag, 1, 10000);
    if (close_instead)
        ck_assert_int_eq(th_wait(pid, 10000), 0);
    else
        th_kill(pid);
    ck_assert_msg(ok == 0, "child did not peek");
    uint64_t rec0 = ring_stat(q).recoveries;

    /* both messages reach us exactly once, in either order: the second
     * because an open peek does not stop others, the first because its
     * peeker is gone */
    int got1 = 0, got2 = 0;
    for (int i = 0; i < 2; i++) {
        ssize_t n = mmipc_ring_recv(q, out, sizeof out, 5000);
        ck_assert_msg(n == 50 || n == 60, "recv %d after an abandoned peek: %zd (%s)", i, n, mmipc_strerror((int)n));
        if (n == 50) {
            ck_assert(pm_ok(out, 1, 50));
            got1++;
        } else {
            ck_assert(pm_ok(out, 2, 60));
            got2++;
        }
    }
    ck_assert_int_eq(got1, 1);
    ck_assert_int_eq(got2, 1);
    RC_IS(mmipc_ring_recv(q, out, sizeof out, 0), -EAGAIN);
    struct mmipc_ring_stat st = ring_stat(q);
    if (!close_instead)
        ck_assert_msg(st.recoveries > rec0, "recoveries %llu -> %llu after a reclaimed peek", (unsigned long long)rec0,
                      (unsigned long long)st.recoveries);
    ck_assert_uint_eq(st.messages, 0);
    ck_assert_uint_eq(st.used, 0);
    push_through(q);
    munmap(a.flag, 4096);
    mmipc_region_close(r);
}

START_TEST(test_abandoned_peek)
{
    abandoned_peek(0);
}
END_TEST

START_TEST(test_closed_peek)
{
    abandoned_peek(1);
}
END_TEST

/* The counters stay exact when processes die inside calls: a child cycles
 * through send, recv, reserve/commit and peek/release and is SIGKILLed at
 * random moments, again and again; at the end, with the ring drained,
 * sent == received and messages == 0. */
#define CHURN_KILLS 300u

struct churn_arg {
    char path[320];
    uint32_t *started;
};

static int churn_child(void *arg)
{
    struct churn_arg *a = arg;
    mmipc_region *r = NULL;
    mmipc_ring *q = NULL;
    unsigned char buf[64];
    uint64_t end = th_now_ms() + 20000;
    child_init();
    if (child_open(a->path, "q", &r, &q) != 0)
        return 2;
    __atomic_store_n(a->started, 1, __ATOMIC_RELEASE);
    for (unsigned i = 0; th_now_ms() < end; i++) {
        void *w = NULL;
        const void *p = NULL;
        switch (i % 4) {
        case 0:
            mmipc_ring_send(q, "churning", 8, 0);
            break;
        case 1:
            mmipc_ring_recv(q, buf, sizeof buf, 0);
            break;
        case 2:
            if (mmipc_ring_reserve(q, 8, &w, 0) == 0) {
                memcpy(w, "churning", 8);
                mmipc_ring_commit(q, w);
            }
            break;
        default:
            if (mmipc_ring_peek(q, &p, 0) >= 0)
                mmipc_ring_release(q, p);
            break;
        }
    }
    return 0;
}

START_TEST(test_counters_after_kills)
{
    uint64_t rng = test_seed();
    mmipc_region *r = th_region("churn", 0);
    mmipc_ring *q = new_ring(r, "q", 4096);
    struct churn_arg a;
    unsigned char buf[128], out[128];
    pid_t zombies[8];
    unsigned nz = 0;
    snprintf(a.path, sizeof a.path, "%s", th_path("churn"));
    a.started = shared_mem(4096);

    for (unsigned k = 0; k < CHURN_KILLS; k++) {
        __atomic_store_n(a.started, 0, __ATOMIC_RELEASE);
        pid_t pid = th_spawn(churn_child, &a);
        ck_assert_msg(wait_flag(a.started, 1, 10000) == 0, "churn child %u did not start", k);
        sleep_us((unsigned)(th_rand(&rng) % 1000));
        kill(pid, SIGKILL);
        zombies[nz++] = pid;
        if (nz == 8) {
            for (unsigned i = 0; i < nz; i++)
                ck_assert_int_eq(th_wait(zombies[i], 10000), 128 + SIGKILL);
            nz = 0;
            while (mmipc_ring_recv(q, out, sizeof out, 0) >= 0) {
            }
        }
    }
    for (unsigned i = 0; i < nz; i++)
        ck_assert_int_eq(th_wait(zombies[i], 10000), 128 + SIGKILL);
    while (mmipc_ring_recv(q, out, sizeof out, 0) >= 0) {
    }
    /* three ring-fulls through it reclaim whatever the dead left open */
    for (uint32_t i = 0; i < 120; i++) {
        pm_fill(buf, 9000 + i, 100);
        RC_OK(mmipc_ring_send(q, buf, 100, 5000));
        for (;;) {
            ssize_t n = mmipc_ring_recv(q, out, sizeof out, 5000);
            ck_assert_msg(n == 8 || n == 100, "recv after the kills: %zd (%s)", n, mmipc_strerror((int)n));
            if (n == 100) {
                ck_assert(pm_ok(out, 9000 + i, 100));
                break;
            }
        }
    }
    while (mmipc_ring_recv(q, out, sizeof out, 0) >= 0) {
    }
    struct mmipc_ring_stat st = ring_stat(q);
    ck_assert_uint_eq(st.used, 0);
    ck_assert_msg(st.sent == st.received && st.messages == 0,
                  "empty ring after %u kills: sent %llu, received %llu, messages %llu (seed %llu)", CHURN_KILLS,
                  (unsigned long long)st.sent, (unsigned long long)st.received, (unsigned long long)st.messages,
                  (unsigned long long)g_seed);
    RC_IS(mmipc_region_check(r, NULL, NULL), 0);
    munmap(a.started, 4096);
    mmipc_region_close(r);
}
END_TEST

/* ---------------------------------------------------------------- stress */

#define ST_PROD 4u
#define ST_CONS 4u
#define ST_N 100000u

struct stress_shared {
    uint64_t bad, order, errors;
    uint8_t count[ST_PROD][ST_N];
};

struct stress_arg {
    char path[320];
    struct stress_shared *sh;
    unsigned id;
    uint64_t seed;
    uint64_t deadline_ms;
};

static int stress_producer(void *arg)
{
    struct stress_arg *a = arg;
    mmipc_region *r = NULL;
    mmipc_ring *q = NULL;
    unsigned char m[SM_MAX];
    uint64_t rng = a->seed;
    child_init();
    if (child_open(a->path, "s", &r, &q) != 0)
        return 10;
    for (uint32_t seq = 0; seq < ST_N; seq++) {
        size_t len = sm_build(m, a->id, seq);
        int rc;
        do {
            if (th_now_ms() > a->deadline_ms) {
                fprintf(stderr, "stress producer %u: deadline at seq %u\n", a->id, seq);
                return 11;
            }
            if (th_rand(&rng) % 4 == 0) {
                void *w = NULL;
                rc = mmipc_ring_reserve(q, len, &w, 1000);
                if (rc == 0) {
                    memcpy(w, m, len);
                    rc = mmipc_ring_commit(q, w);
                    if (rc != 0) {
                        fprintf(stderr, "stress producer %u: commit: %s\n", a->id, mmipc_strerror(rc));
                        return 12;
                    }
                }
            } else {
                rc = mmipc_ring_send(q, m, len, 1000);
            }
        } while (rc == -ETIMEDOUT);
        if (rc != 0) {
            fprintf(stderr, "stress producer %u: seq %u: %s\n", a->id, seq, mmipc_strerror(rc));
            return 13;
        }
    }
    mmipc_region_close(r);
    return 0;
}

static int stress_consumer(void *arg)
{
    struct stress_arg *a = arg;
    struct stress_shared *sh = a->sh;
    mmipc_region *r = NULL;
    mmipc_ring *q = NULL;
    unsigned char buf[SM_MAX + 64];
    int64_t last[ST_PROD];
    uint64_t rng = a->seed;
    child_init();
    for (unsigned i = 0; i < ST_PROD; i++)
        last[i] = -1;
    if (child_open(a->path, "s", &r, &q) != 0)
        return 20;
    for (;;) {
        const void *pp = NULL;
        const unsigned char *m;
        ssize_t n;
        unsigned p;
        uint32_t seq;
        if (th_now_ms() > a->deadline_ms) {
            fprintf(stderr, "stress consumer %u: deadline\n", a->id);
            return 21;
        }
        if (th_rand(&rng) % 4 == 0) {
            n = mmipc_ring_peek(q, &pp, 1000);
            m = pp;
        } else {
            n = mmipc_ring_recv(q, buf, sizeof buf, 1000);
            m = buf;
        }
        if (n == -ETIMEDOUT)
            continue;
        if (n < 0) {
            fprintf(stderr, "stress consumer %u: %s\n", a->id, mmipc_strerror((int)n));
            return 22;
        }
        if (n == 0) { /* the parent's stop message */
            if (pp != NULL && mmipc_ring_release(q, pp) != 0)
                return 23;
            break;
        }
        if (sm_check(m, (size_t)n, &p, &seq) != 0 || p >= ST_PROD || seq >= ST_N) {
            __atomic_fetch_add(&sh->bad, 1, __ATOMIC_RELAXED);
        } else {
            __atomic_fetch_add(&sh->count[p][seq], 1, __ATOMIC_RELAXED);
            if ((int64_t)seq <= last[p])
                __atomic_fetch_add(&sh->order, 1, __ATOMIC_RELAXED);
            last[p] = seq;
        }
        if (pp != NULL) {
            int rc = mmipc_ring_release(q, pp);
            if (rc != 0) {
                fprintf(stderr, "stress consumer %u: release: %s\n", a->id, mmipc_strerror(rc));
                return 24;
            }
        }
    }
    mmipc_region_close(r);
    return 0;
}

START_TEST(test_stress)
{
    uint64_t seed = test_seed();
    struct stress_shared *sh = shared_mem(sizeof *sh);
    mmipc_region *r = th_region("stress", 1 << 20);
    mmipc_ring *q = new_ring(r, "s", 64 * 1024);
    struct stress_arg args[ST_PROD + ST_CONS];
    pid_t pid[ST_PROD + ST_CONS];
    uint64_t deadline = th_now_ms() + 100000;

    for (unsigned i = 0; i < ST_PROD + ST_CONS; i++) {
        memset(&args[i], 0, sizeof args[i]);
        snprintf(args[i].path, sizeof args[i].path, "%s", th_path("stress"));
        args[i].sh = sh;
        args[i].id = i < ST_CONS ? i : i - ST_CONS;
        args[i].seed = mix64(seed + i);
        args[i].deadline_ms = deadline;
    }
    for (unsigned i = 0; i < ST_CONS; i++)
        pid[i] = th_spawn(stress_consumer, &args[i]);
    for (unsigned i = ST_CONS; i < ST_PROD + ST_CONS; i++)
        pid[i] = th_spawn(stress_producer, &args[i]);
    for (unsigned i = ST_CONS; i < ST_PROD + ST_CONS; i++) {
        int st = th_wait(pid[i], ms_left(deadline));
        ck_assert_msg(st == 0, "producer %u ended with %d (seed %llu)", i - ST_CONS, st, (unsigned long long)seed);
    }
    for (unsigned i = 0; i < ST_CONS; i++)
        RC_OK(mmipc_ring_send(q, "", 0, 10000));
    for (unsigned i = 0; i < ST_CONS; i++) {
        int st = th_wait(pid[i], ms_left(deadline + 10000));
        ck_assert_msg(st == 0, "consumer %u ended with %d (seed %llu)", i, st, (unsigned long long)seed);
    }

    ck_assert_msg(sh->bad == 0, "%llu corrupted messages (seed %llu)", (unsigned long long)sh->bad,
                  (unsigned long long)seed);
    ck_assert_msg(sh->order == 0, "%llu messages out of per-producer order (seed %llu)", (unsigned long long)sh->order,
                  (unsigned long long)seed);
    for (unsigned p = 0; p < ST_PROD; p++)
        for (unsigned s = 0; s < ST_N; s++)
            ck_assert_msg(sh->count[p][s] == 1, "producer %u seq %u received %u times (seed %llu)", p, s,
                          sh->count[p][s], (unsigned long long)seed);
    struct mmipc_ring_stat st = ring_stat(q);
    ck_assert_uint_eq(st.sent, ST_PROD * ST_N + ST_CONS);
    ck_assert_uint_eq(st.received, ST_PROD * ST_N + ST_CONS);
    ck_assert_uint_eq(st.messages, 0);
    ck_assert_uint_eq(st.used, 0);
    ck_assert_uint_eq(st.recoveries, 0);
    munmap(sh, sizeof *sh);
    mmipc_region_close(r);
}
END_TEST

/* ------------------------------------------------------------ kill storm */

#define KS_PROD 4u
#define KS_CONS 4u
#define KS_SEQ_MAX (1u << 21)
#define KS_KILLS 220u

struct ks_shared {
    uint64_t acked[KS_PROD]; /* last sequence whose send returned 0; stored after it returned */
    uint32_t stop;
    uint64_t delivered, bad, regress, errors;
    uint8_t count[KS_PROD][KS_SEQ_MAX]; /* receipts per sequence (sequences start at 1) */
};

struct ks_arg {
    char path[320];
    struct ks_shared *sh;
    unsigned id;
    uint64_t seed;
    uint64_t deadline_ms;
};

/* Record one received message; last[] is per consumer incarnation. */
static void ks_take(struct ks_shared *sh, const unsigned char *m, size_t len, uint32_t *last)
{
    unsigned p;
    uint32_t seq;
    if (sm_check(m, len, &p, &seq) != 0 || p >= KS_PROD || seq == 0 || seq >= KS_SEQ_MAX) {
        __atomic_fetch_add(&sh->bad, 1, __ATOMIC_RELAXED);
        return;
    }
    __atomic_fetch_add(&sh->count[p][seq], 1, __ATOMIC_RELAXED);
    __atomic_fetch_add(&sh->delivered, 1, __ATOMIC_RELAXED);
    if (seq <= last[p])
        __atomic_fetch_add(&sh->regress, 1, __ATOMIC_RELAXED);
    else
        last[p] = seq;
}

static int ks_producer(void *arg)
{
    struct ks_arg *a = arg;
    struct ks_shared *sh = a->sh;
    mmipc_region *r = NULL;
    mmipc_ring *q = NULL;
    unsigned char m[SM_MAX];
    uint64_t rng = a->seed;
    child_init();
    int rc = child_open(a->path, "k", &r, &q);
    if (rc != 0) {
        __atomic_fetch_add(&sh->errors, 1, __ATOMIC_RELAXED);
        return 30;
    }
    uint32_t seq = (uint32_t)__atomic_load_n(&sh->acked[a->id], __ATOMIC_ACQUIRE) + 1;
    while (!__atomic_load_n(&sh->stop, __ATOMIC_ACQUIRE) && th_now_ms() < a->deadline_ms) {
        if (seq >= KS_SEQ_MAX) {
            th_sleep_ms(1);
            continue;
        }
        size_t len = sm_build(m, a->id, seq);
        if (th_rand(&rng) & 1) {
            rc = mmipc_ring_send(q, m, len, 100);
        } else {
            void *w = NULL;
            rc = mmipc_ring_reserve(q, len, &w, 100);
            if (rc == 0) {
                memcpy(w, m, len);
                rc = mmipc_ring_commit(q, w);
                if (rc != 0) {
                    fprintf(stderr, "storm producer %u: commit: %s\n", a->id, mmipc_strerror(rc));
                    __atomic_fetch_add(&sh->errors, 1, __ATOMIC_RELAXED);
                    return 31;
                }
            }
        }
        if (rc == 0) {
            __atomic_store_n(&sh->acked[a->id], seq, __ATOMIC_RELEASE);
            seq++;
        } else if (rc != -ETIMEDOUT && rc != -EAGAIN) {
            fprintf(stderr, "storm producer %u: seq %u: %s\n", a->id, seq, mmipc_strerror(rc));
            __atomic_fetch_add(&sh->errors, 1, __ATOMIC_RELAXED);
            return 32;
        }
    }
    mmipc_region_close(r);
    return 0;
}

static int ks_consumer(void *arg)
{
    struct ks_arg *a = arg;
    struct ks_shared *sh = a->sh;
    mmipc_region *r = NULL;
    mmipc_ring *q = NULL;
    uint32_t last[KS_PROD] = {0};
    child_init();
    if (child_open(a->path, "k", &r, &q) != 0) {
        __atomic_fetch_add(&sh->errors, 1, __ATOMIC_RELAXED);
        return 40;
    }
    while (!__atomic_load_n(&sh->stop, __ATOMIC_ACQUIRE) && th_now_ms() < a->deadline_ms) {
        const void *p = NULL;
        ssize_t n = mmipc_ring_peek(q, &p, 100);
        if (n == -ETIMEDOUT || n == -EAGAIN)
            continue;
        if (n < 0) {
            fprintf(stderr, "storm consumer %u: peek: %s\n", a->id, mmipc_strerror((int)n));
            __atomic_fetch_add(&sh->errors, 1, __ATOMIC_RELAXED);
            return 41;
        }
        ks_take(sh, p, (size_t)n, last);
        int rc = mmipc_ring_release(q, p);
        if (rc != 0) {
            fprintf(stderr, "storm consumer %u: release: %s\n", a->id, mmipc_strerror(rc));
            __atomic_fetch_add(&sh->errors, 1, __ATOMIC_RELAXED);
            return 42;
        }
    }
    mmipc_region_close(r);
    return 0;
}

static uint64_t ks_acked_total(struct ks_shared *sh)
{
    uint64_t t = 0;
    for (unsigned p = 0; p < KS_PROD; p++)
        t += __atomic_load_n(&sh->acked[p], __ATOMIC_ACQUIRE);
    return t;
}

/* Producers have made progress since a0 (or all ran out of sequences). */
static int ks_producers_moved(struct ks_shared *sh, uint64_t a0)
{
    return ks_acked_total(sh) >= a0 + 200 || ks_acked_total(sh) >= (uint64_t)KS_PROD * (KS_SEQ_MAX - 1);
}

/* Killed consumers are reaped lazily (nothing depends on their exit), so
 * the storm does not wait for every teardown; producers are reaped at once
 * because their successor reads the acknowledged sequence. */
struct zombies {
    pid_t pid[64];
    unsigned n;
};

static void zombies_reap(struct zombies *z, int block)
{
    for (unsigned i = 0; i < z->n;) {
        int st;
        pid_t w = block ? (th_wait(z->pid[i], 10000), z->pid[i]) : waitpid(z->pid[i], &st, WNOHANG);
        if (w == z->pid[i] || (w < 0 && errno == ECHILD))
            z->pid[i] = z->pid[--z->n];
        else
            i++;
    }
}

START_TEST(test_kill_storm)
{
    uint64_t seed = test_seed(), rng = seed;
    struct ks_shared *sh = shared_mem(sizeof *sh);
    mmipc_region *r = th_region("storm", 1 << 20);
    mmipc_ring *q = new_ring(r, "k", 16 * 1024);
    struct ks_arg args[KS_PROD + KS_CONS];
    pid_t pid[KS_PROD + KS_CONS];
    unsigned kills = 0, pkills = 0, ckills = 0;
    struct zombies z = {.n = 0};
    uint64_t end = th_now_ms() + 60000;
    unsigned char buf[SM_MAX + 64], lm[SM_MAX];

    for (unsigned i = 0; i < KS_PROD + KS_CONS; i++) {
        memset(&args[i], 0, sizeof args[i]);
        snprintf(args[i].path, sizeof args[i].path, "%s", th_path("storm"));
        args[i].sh = sh;
        args[i].id = i < KS_PROD ? i : i - KS_PROD;
        args[i].deadline_ms = th_now_ms() + 100000;
    }
    for (unsigned i = 0; i < KS_PROD + KS_CONS; i++) {
        args[i].seed = th_rand(&rng);
        pid[i] = th_spawn(i < KS_PROD ? ks_producer : ks_consumer, &args[i]);
    }

    while (kills < KS_KILLS) {
        ck_assert_msg(th_now_ms() < end, "kill storm took too long: %u kills (seed %llu)", kills,
                      (unsigned long long)seed);
        sleep_us(100 + (unsigned)(th_rand(&rng) % 3000));
        zombies_reap(&z, z.n == 64);
        for (unsigned i = 0; i < KS_PROD + KS_CONS; i++) {
            int st = 0;
            pid_t w = waitpid(pid[i], &st, WNOHANG);
            ck_assert_msg(w == 0, "%s %u exited by itself (status 0x%x) after %u kills (seed %llu)",
                          i < KS_PROD ? "producer" : "consumer", args[i].id, (unsigned)st, kills,
                          (unsigned long long)seed);
        }
        unsigned v = (unsigned)(th_rand(&rng) % (KS_PROD + KS_CONS));
        kills++;
        if (v < KS_PROD) {
            th_kill(pid[v]);
            pkills++;
        } else {
            kill(pid[v], SIGKILL);
            z.pid[z.n++] = pid[v];
            ckills++;
        }
        args[v].seed = th_rand(&rng);
        pid[v] = th_spawn(v < KS_PROD ? ks_producer : ks_consumer, &args[v]);
    }

    zombies_reap(&z, 1);

    /* still alive: producers and consumers both make progress afterwards */
    uint64_t a0 = ks_acked_total(sh), d0 = __atomic_load_n(&sh->delivered, __ATOMIC_ACQUIRE);
    uint64_t pend = th_now_ms() + 15000;
    while ((!ks_producers_moved(sh, a0) || __atomic_load_n(&sh->delivered, __ATOMIC_ACQUIRE) < d0 + 200) &&
           th_now_ms() < pend)
        th_sleep_ms(5);
    ck_assert_msg(ks_producers_moved(sh, a0) && sh->delivered >= d0 + 200,
                  "no progress after the storm: acked %llu -> %llu, delivered %llu -> %llu (seed %llu)",
                  (unsigned long long)a0, (unsigned long long)ks_acked_total(sh), (unsigned long long)d0,
                  (unsigned long long)sh->delivered, (unsigned long long)seed);

    __atomic_store_n(&sh->stop, 1, __ATOMIC_RELEASE);
    for (unsigned i = 0; i < KS_PROD + KS_CONS; i++) {
        int st = th_wait(pid[i], 10000);
        ck_assert_msg(st == 0, "%s %u did not stop cleanly: %d (seed %llu)", i < KS_PROD ? "producer" : "consumer",
                      args[i].id, st, (unsigned long long)seed);
    }

    /* drain what is left */
    uint32_t last[KS_PROD] = {0};
    for (;;) {
        ssize_t n = mmipc_ring_recv(q, buf, sizeof buf, 300);
        if (n == -ETIMEDOUT)
            break;
        ck_assert_msg(n >= 0, "drain: %s", mmipc_strerror((int)n));
        ks_take(sh, buf, (size_t)n, last);
    }
    /* then push three ring-fulls through it: any abandoned reservation or
     * peek still holding the head must be reclaimed (a reclaimed peek's
     * message shows up here and is counted) */
    uint32_t nlive = 3 * 16 * 1024 / 64;
    for (uint32_t i = 1; i <= nlive; i++) {
        size_t len = sm_build(lm, KS_PROD, i);
        int rc = mmipc_ring_send(q, lm, len, 5000);
        ck_assert_msg(rc == 0, "send %u after the storm: %s (seed %llu)", i, mmipc_strerror(rc),
                      (unsigned long long)seed);
        for (;;) {
            ssize_t n = mmipc_ring_recv(q, buf, sizeof buf, 5000);
            unsigned p;
            uint32_t s;
            ck_assert_msg(n >= 0, "recv %u after the storm: %s (seed %llu)", i, mmipc_strerror((int)n),
                          (unsigned long long)seed);
            if (sm_check(buf, (size_t)n, &p, &s) == 0 && p == KS_PROD) {
                ck_assert_msg(s == i, "after the storm: message %u arrived while expecting %u", s, i);
                break;
            }
            ks_take(sh, buf, (size_t)n, last);
        }
    }
    for (;;) {
        ssize_t n = mmipc_ring_recv(q, buf, sizeof buf, 0);
        if (n == -EAGAIN)
            break;
        ck_assert_msg(n >= 0, "final drain: %s", mmipc_strerror((int)n));
        ks_take(sh, buf, (size_t)n, last);
    }
    struct mmipc_ring_stat st = ring_stat(q);
    ck_assert_msg(st.messages == 0 && st.used == 0,
                  "after the storm: %llu messages, %llu bytes still queued (sent %llu, received %llu)",
                  (unsigned long long)st.messages, (unsigned long long)st.used, (unsigned long long)st.sent,
                  (unsigned long long)st.received);

    uint64_t missing = 0, phantom = 0, dups = 0, acked = 0;
    for (unsigned p = 0; p < KS_PROD; p++) {
        uint64_t A = sh->acked[p];
        acked += A;
        for (uint64_t s = 1; s < KS_SEQ_MAX; s++) {
            unsigned c = sh->count[p][s];
            if (c == 0 && s <= A && missing++ == 0)
                fprintf(stderr, "kill storm: producer %u seq %llu acknowledged but never received\n", p,
                        (unsigned long long)s);
            if (c > 0 && s > A + 1 && phantom++ == 0)
                fprintf(stderr, "kill storm: producer %u seq %llu received but never sent\n", p, (unsigned long long)s);
            if (c > 1)
                dups += c - 1;
        }
    }
    fprintf(stderr,
            "kill storm: %u kills (%u producers, %u consumers), %llu acknowledged, %llu delivered, "
            "%llu duplicates, %llu reordered, %llu recoveries\n",
            kills, pkills, ckills, (unsigned long long)acked, (unsigned long long)sh->delivered,
            (unsigned long long)dups, (unsigned long long)sh->regress, (unsigned long long)st.recoveries);
    ck_assert_msg(sh->errors == 0, "%llu errors in children (seed %llu)", (unsigned long long)sh->errors,
                  (unsigned long long)seed);
    ck_assert_msg(sh->bad == 0, "%llu torn or corrupted messages (seed %llu)", (unsigned long long)sh->bad,
                  (unsigned long long)seed);
    ck_assert_msg(missing == 0, "%llu acknowledged messages lost (seed %llu)", (unsigned long long)missing,
                  (unsigned long long)seed);
    ck_assert_msg(phantom == 0, "%llu messages never sent were received (seed %llu)", (unsigned long long)phantom,
                  (unsigned long long)seed);
    ck_assert_msg(dups <= kills, "%llu duplicate deliveries for %u kills (seed %llu)", (unsigned long long)dups, kills,
                  (unsigned long long)seed);
    ck_assert_msg(sh->regress <= kills, "%llu out-of-order deliveries for %u kills (seed %llu)",
                  (unsigned long long)sh->regress, kills, (unsigned long long)seed);
    munmap(sh, sizeof *sh);
    mmipc_region_close(r);
}
END_TEST

/* ------------------------------------------------------------ corruption */

struct corrupt_env {
    char path[320];
    mmipc_region *r;
    mmipc_ring *q;
    unsigned char *map;
    size_t map_len;
    struct mmipc__ring *R; /* the ring in our own view of the file */
    unsigned char *data;   /* its message storage */
    uint64_t cap, obj_end;
};

static void corrupt_setup(struct corrupt_env *e, const char *name)
{
    memset(e, 0, sizeof *e);
    snprintf(e->path, sizeof e->path, "%s", th_path(name));
    e->r = th_region(name, 64 * 1024);
    e->q = new_ring(e->r, "c", 4096);
    struct mmipc_object_info oi = find_object(e->r, "c");
    e->map = map_file(e->path, &e->map_len);
    ck_assert_ptr_nonnull(e->map);
    ck_assert_uint_le(oi.offset + oi.size, e->map_len);
    e->R = (struct mmipc__ring *)(e->map + oi.offset);
    e->cap = e->R->capacity;
    ck_assert_uint_eq(e->cap, 4096);
    ck_assert_uint_eq(e->R->magic, MMIPC__RING_MAGIC);
    ck_assert_uint_le(e->R->data_off + e->cap, oi.size);
    e->data = (unsigned char *)e->R + e->R->data_off;
    e->obj_end = oi.offset + oi.size;
}

static void corrupt_teardown(struct corrupt_env *e)
{
    munmap(e->map, e->map_len);
    mmipc_region_close(e->r);
}

static uint64_t load64(uint64_t *p)
{
    return __atomic_load_n(p, __ATOMIC_ACQUIRE);
}

static void store64(uint64_t *p, uint64_t v)
{
    __atomic_store_n(p, v, __ATOMIC_RELEASE);
}

static void store32(void *p, uint32_t v)
{
    __atomic_store_n((uint32_t *)p, v, __ATOMIC_RELEASE);
}

static struct mmipc__rec *rec_at_head(struct corrupt_env *e)
{
    return (struct mmipc__rec *)(e->data + (load64(&e->R->head) & (e->cap - 1)));
}

/* 16-byte records through the ring until its head sits `before_end` bytes
 * before the end of the buffer. */
static void head_to(struct corrupt_env *e, uint64_t before_end);

/* Send n messages of len bytes, receive m of them. */
static void traffic(struct corrupt_env *e, unsigned n, unsigned m, size_t len)
{
    unsigned char buf[4096];
    for (unsigned i = 0; i < n; i++) {
        pm_fill(buf, i, len);
        RC_OK(mmipc_ring_send(e->q, buf, len, 0));
    }
    for (unsigned i = 0; i < m; i++)
        RC_IS(mmipc_ring_recv(e->q, buf, sizeof buf, 0), len);
}

static void head_to(struct corrupt_env *e, uint64_t before_end)
{
    for (unsigned i = 0; (load64(&e->R->head) & (e->cap - 1)) != e->cap - before_end; i++) {
        ck_assert_msg(i < 1000, "8-byte messages do not take 16-byte records: head %llu",
                      (unsigned long long)load64(&e->R->head));
        traffic(e, 1, 1, 8);
    }
}

#define OP_RECV 1u
#define OP_PEEK 2u
#define OP_SEND 4u
#define OP_RESERVE 8u
#define OP_STAT 16u

/* Run every data call (timeout 0, then 5 ms) on a corrupted ring.  Each
 * must return -EBADMSG or a valid outcome; returns the set of calls that
 * said -EBADMSG at least once.  A call that delivers data is checked for
 * plausibility against `expect_len` when that is not 0. */
static unsigned battery(struct corrupt_env *e, const char *what, size_t expect_len)
{
    static unsigned char buf[65536];
    unsigned bad = 0;
    for (int round = 0; round < 2; round++) {
        int to = round == 0 ? 0 : 5;
        struct mmipc_ring_stat st;
        int rc = mmipc_ring_stat(e->q, &st);
        ck_assert_msg(rc == 0 || rc == -EBADMSG, "%s: stat: %s", what, mmipc_strerror(rc));
        if (rc == 0)
            ck_assert_msg(st.used <= st.capacity && st.messages <= st.capacity / 8,
                          "%s: stat says %llu bytes / %llu messages in a %llu-byte ring", what,
                          (unsigned long long)st.used, (unsigned long long)st.messages,
                          (unsigned long long)st.capacity);
        else
            bad |= OP_STAT;

        ssize_t n = mmipc_ring_recv(e->q, buf, sizeof buf, to);
        ck_assert_msg((n >= 0 && (size_t)n <= e->cap) || n == -EAGAIN || n == -ETIMEDOUT || n == -EBADMSG,
                      "%s: recv: %zd (%s)", what, n, mmipc_strerror((int)n));
        if (n >= 0 && expect_len != 0)
            ck_assert_msg((size_t)n == expect_len, "%s: recv delivered %zd bytes", what, n);
        if (n == -EBADMSG)
            bad |= OP_RECV;

        const void *p = NULL;
        n = mmipc_ring_peek(e->q, &p, to);
        ck_assert_msg((n >= 0 && (size_t)n <= e->cap) || n == -EAGAIN || n == -ETIMEDOUT || n == -EBADMSG,
                      "%s: peek: %zd (%s)", what, n, mmipc_strerror((int)n));
        if (n >= 0) {
            ck_assert(expect_len == 0 || (size_t)n == expect_len);
            ck_assert_ptr_nonnull(p);
            memcpy(buf, p, (size_t)n); /* must be readable */
            rc = mmipc_ring_release(e->q, p);
            ck_assert_msg(rc == 0 || rc == -EBADMSG, "%s: release: %s", what, mmipc_strerror(rc));
        }
        if (n == -EBADMSG)
            bad |= OP_PEEK;

        memset(buf, 0x5a, 100);
        rc = mmipc_ring_send(e->q, buf, 100, to);
        ck_assert_msg(rc == 0 || rc == -EAGAIN || rc == -ETIMEDOUT || rc == -EBADMSG, "%s: send: %s", what,
                      mmipc_strerror(rc));
        if (rc == -EBADMSG)
            bad |= OP_SEND;

        void *w = NULL;
        rc = mmipc_ring_reserve(e->q, 100, &w, to);
        ck_assert_msg(rc == 0 || rc == -EAGAIN || rc == -ETIMEDOUT || rc == -EBADMSG, "%s: reserve: %s", what,
                      mmipc_strerror(rc));
        if (rc == 0) {
            ck_assert_ptr_nonnull(w);
            memset(w, 0x6b, 100);
            rc = mmipc_ring_commit(e->q, w);
            ck_assert_msg(rc == 0 || rc == -EBADMSG, "%s: commit: %s", what, mmipc_strerror(rc));
        }
        if (rc == -EBADMSG)
            bad |= OP_RESERVE;
    }
    ck_assert_msg(mmipc_region_check(e->r, NULL, NULL) >= 0, "%s: mmipc_region_check failed", what);
    /* nothing was written past the ring: the rest of the file is untouched */
    for (size_t i = e->obj_end; i < e->map_len; i++)
        ck_assert_msg(e->map[i] == 0, "%s: byte %zu past the ring (ends at %llu) was written", what, i,
                      (unsigned long long)e->obj_end);
    return bad;
}

enum {
    CS_TAIL_FAR,  /* tail more than a capacity ahead of head */
    CS_HEAD_PAST, /* head beyond tail */
    CS_TAIL_UNALIGNED,
    CS_HEAD_UNALIGNED,
    CS_TAIL_HUGE, /* tail near 2^64 */
    CS_HEAD_HUGE,
    CS_LEN_HUGE,      /* record at head: len 0xfffffff0 */
    CS_LEN_CAP,       /* record at head: len == capacity */
    CS_LEN_STRADDLE,  /* record near the end: len runs past the end of the buffer */
    CS_STATE_GARBAGE, /* record at head: state of no known kind */
    CS_PAD_LEN,       /* PAD record at head with a wrong length */
    CS_MAGIC,
    CS_CAPACITY_ODD,
    CS_CAPACITY_HUGE,
    CS_MAXMSG_HUGE,
    CS_DATA_OFF,
    CS_COUNT
};

static const char *const cs_names[CS_COUNT] = {
    "tail far ahead",
    "head past tail",
    "tail unaligned",
    "head unaligned",
    "tail near 2^64",
    "head near 2^64",
    "record len 0xfffffff0",
    "record len == capacity",
    "record straddles the end",
    "record state garbage",
    "pad record length",
    "ring magic",
    "capacity not a power of two",
    "capacity huge",
    "max_message huge",
    "data_off",
};

START_TEST(test_corrupt)
{
    struct corrupt_env e;
    const char *what = cs_names[_i];
    unsigned bad = 0;
    unsigned char buf[4096];
    corrupt_setup(&e, "corrupt");

    switch (_i) {
    case CS_TAIL_FAR:
        traffic(&e, 5, 2, 40);
        store64(&e.R->tail, load64(&e.R->head) + 2 * e.cap);
        bad = battery(&e, what, 0);
        break;
    case CS_HEAD_PAST:
        traffic(&e, 5, 2, 40);
        store64(&e.R->head, load64(&e.R->tail) + 64);
        bad = battery(&e, what, 0);
        break;
    case CS_TAIL_UNALIGNED:
        traffic(&e, 5, 2, 40);
        store64(&e.R->tail, load64(&e.R->tail) + 3);
        bad = battery(&e, what, 0);
        break;
    case CS_HEAD_UNALIGNED:
        traffic(&e, 5, 2, 40);
        store64(&e.R->head, load64(&e.R->head) + 4);
        bad = battery(&e, what, 0);
        break;
    case CS_TAIL_HUGE:
        traffic(&e, 5, 2, 40);
        store64(&e.R->tail, UINT64_MAX - 7);
        bad = battery(&e, what, 0);
        break;
    case CS_HEAD_HUGE:
        traffic(&e, 5, 2, 40);
        store64(&e.R->head, UINT64_MAX - 7);
        bad = battery(&e, what, 0);
        break;
    case CS_LEN_HUGE:
        traffic(&e, 5, 2, 40);
        store32(&rec_at_head(&e)->len, 0xfffffff0u);
        bad = battery(&e, what, 0);
        ck_assert_msg((bad & (OP_RECV | OP_PEEK)) == (OP_RECV | OP_PEEK), "%s: recv/peek did not say -EBADMSG", what);
        break;
    case CS_LEN_CAP:
        traffic(&e, 5, 2, 40);
        store32(&rec_at_head(&e)->len, (uint32_t)e.cap);
        bad = battery(&e, what, 0);
        ck_assert_msg((bad & (OP_RECV | OP_PEEK)) == (OP_RECV | OP_PEEK), "%s: recv/peek did not say -EBADMSG", what);
        break;
    case CS_LEN_STRADDLE: {
        head_to(&e, 256);
        traffic(&e, 1, 0, 100);
        struct mmipc__rec *rec = rec_at_head(&e);
        ck_assert_uint_eq(rec->len, 100);
        store32(&rec->len, 1000); /* below max_message, but 3840 + 16 + 1000 > 4096 */
        bad = battery(&e, what, 0);
        ck_assert_msg((bad & (OP_RECV | OP_PEEK)) == (OP_RECV | OP_PEEK), "%s: recv/peek did not say -EBADMSG", what);
        break;
    }
    case CS_STATE_GARBAGE:
        traffic(&e, 5, 2, 40);
        store32(&rec_at_head(&e)->state, 0xf0000000u | 0x1234u);
        battery(&e, what, 0);
        bad = OP_STAT; /* only "no crash, valid results" asked of a bad state */
        break;
    case CS_PAD_LEN: {
        head_to(&e, 256);
        traffic(&e, 1, 0, 100); /* [3840, 3968): 16-byte header + 100, rounded to 16 */
        pm_fill(buf, 7, 200);
        RC_OK(mmipc_ring_send(e.q, buf, 200, 0)); /* PAD [3968, 4096), then [0, 224) */
        struct mmipc__rec *pad =
            (struct mmipc__rec *)(e.data + 3840 + ((sizeof(struct mmipc__rec) + 100 + 15) & ~(size_t)15));
        ck_assert_uint_eq(MMIPC__REC_KIND(pad->state), MMIPC__REC_PAD);
        store32(&pad->len, 0xfffffff0u);
        /* the two messages may still be delivered whole, or -EBADMSG */
        bad = battery(&e, what, 0);
        bad = OP_STAT; /* detection not required: a PAD's length need not be read */
        break;
    }
    case CS_MAGIC:
    case CS_CAPACITY_ODD:
    case CS_CAPACITY_HUGE:
    case CS_MAXMSG_HUGE:
    case CS_DATA_OFF: {
        traffic(&e, 5, 2, 40);
        if (_i == CS_MAGIC)
            store32(&e.R->magic, 0x21474e49u);
        else if (_i == CS_CAPACITY_ODD)
            store64(&e.R->capacity, 5000);
        else if (_i == CS_CAPACITY_HUGE)
            store64(&e.R->capacity, UINT64_C(1) << 40);
        else if (_i == CS_MAXMSG_HUGE)
            store64(&e.R->max_message, UINT64_C(1) << 40);
        else
            store64(&e.R->data_off, 8);
        /* a fresh handle (another region handle, so nothing is cached)
         * refuses the ring */
        mmipc_region *r2 = NULL;
        mmipc_ring *q2 = NULL;
        RC_OK(mmipc_region_open(e.path, 0, NULL, &r2));
        RC_IS(mmipc_ring_open(r2, "c", &q2), -EBADMSG);
        mmipc_region_close(r2);
        /* the old handle may go on with what it checked at open, or refuse */
        battery(&e, what, 0);
        bad = OP_STAT; /* detection asserted above */
        break;
    }
    default:
        ck_abort_msg("no scenario %d", _i);
    }
    ck_assert_msg(bad != 0, "%s: no call reported -EBADMSG", what);
    corrupt_teardown(&e);
}
END_TEST

/* Random scribbles over a ring, a few attempts per process so that a crash
 * is a failure of that process.  Odd attempts scribble while the ring is in
 * use (lock words spared); even ones while nobody has the file open, so the
 * reopen is a cold start that re-initialises the lock words. */
#define SCRIBBLE_ROUNDS 3u

struct scribble_arg {
    char path[320]; /* SCRIBBLE_ROUNDS files: path.0, path.1, ... */
    unsigned attempt;
    uint64_t seed;
};

static uint64_t scribble_value(uint64_t *rng, uint64_t old)
{
    uint64_t x = th_rand(rng);
    switch (x % 8) {
    case 0:
        return th_rand(rng);
    case 1:
        return (x >> 8) % 64;
    case 2:
        return old + 1;
    case 3:
        return old - 8;
    case 4:
        return old + 4096;
    case 5:
        return old ^ (UINT64_C(1) << ((x >> 8) % 64));
    case 6:
        return 0xffffffffu;
    default:
        return 0;
    }
}

static int scribble_once(const char *path, unsigned attempt, uint64_t seed)
{
    uint64_t rng = seed;
    int live = attempt & 1;
    struct mmipc_region_opts o = {.size = 64 * 1024};
    mmipc_region *r = NULL;
    mmipc_ring *q = NULL;
    unsigned char buf[8192];

    if (mmipc_region_open(path, MMIPC_CREATE | MMIPC_EXCL, &o, &r) != 0)
        return 50;
    if (mmipc_ring_create(r, "s", 4096, &q) != 0)
        return 51;
    unsigned nsend = 1 + (unsigned)(th_rand(&rng) % 40), nrecv = (unsigned)(th_rand(&rng) % (nsend + 1));
    for (unsigned i = 0; i < nsend; i++) {
        size_t len = (size_t)(th_rand(&rng) % 300);
        pm_fill(buf, i, len);
        if (mmipc_ring_send(q, buf, len, 0) != 0)
            break;
    }
    for (unsigned i = 0; i < nrecv; i++)
        mmipc_ring_recv(q, buf, sizeof buf, 0);
    struct obj_find f = {.name = "s"};
    if (mmipc_region_objects(r, obj_find_cb, &f) != 1)
        return 52;
    if (!live)
        mmipc_region_close(r);

    size_t len = 0;
    unsigned char *map = map_file(path, &len);
    if (map == NULL || f.info.offset + f.info.size > len)
        return 53;
    unsigned char *obj = map + f.info.offset;
    struct mmipc__ring *R = (struct mmipc__ring *)obj;
    uint64_t cap = R->capacity, doff = R->data_off;
    unsigned nscr = 1 + (unsigned)(th_rand(&rng) % 4);
    for (unsigned k = 0; k < nscr; k++) {
        uint64_t x = th_rand(&rng);
        if (x % 2 == 0) {
            static const uint16_t fields[] = {0, 8, 16, 24, 128, 136, 144, 152, 256, 264, 272, 280, 320, 324, 384, 388};
            size_t off;
            if (!live && x % 5 == 0)
                off = (x % 3 == 0 ? 64 : 192) + (size_t)((x >> 16) % 64); /* lock words: cold start heals */
            else
                off = fields[(x >> 8) % (sizeof fields / sizeof fields[0])];
            if (off % 8 == 0 && (x >> 32) & 1) {
                uint64_t old;
                memcpy(&old, obj + off, 8);
                store64((uint64_t *)(void *)(obj + off), scribble_value(&rng, old));
            } else {
                off &= ~(size_t)3;
                uint32_t old;
                memcpy(&old, obj + off, 4);
                store32(obj + off, (uint32_t)scribble_value(&rng, old));
            }
        } else if (doff + cap <= f.info.size) {
            uint64_t head = R->head, tail = R->tail;
            uint64_t span = tail > head && tail - head <= cap ? (tail - head) / 8 + 1 : cap / 8;
            size_t pos = (size_t)doff + (size_t)(((head & ~UINT64_C(7)) + 8 * (th_rand(&rng) % span)) & (cap - 1));
            if (x % 3 == 0) {
                obj[pos + (x >> 8) % 8] = (unsigned char)(x >> 16); /* any byte of a record */
            } else {
                uint32_t old;
                memcpy(&old, obj + pos + (x % 3 == 1 ? 0 : 4), 4);
                store32(obj + pos + (x % 3 == 1 ? 0 : 4), (uint32_t)scribble_value(&rng, old));
            }
        }
    }

    if (!live) {
        int rc = mmipc_region_open(path, 0, NULL, &r);
        if (rc != 0)
            return is_errno(rc) ? 0 : 60;
        rc = mmipc_ring_open(r, "s", &q);
        if (rc != 0) {
            mmipc_region_close(r);
            return is_errno(rc) ? 0 : 61;
        }
    }

    for (unsigned i = 0; i < 16; i++) {
        int to = th_rand(&rng) % 4 == 0; /* 0 or 1 ms */
        long long rc;
        struct mmipc_ring_stat st;
        switch (th_rand(&rng) % 5) {
        case 0:
            rc = mmipc_ring_stat(q, &st);
            if (rc != 0 && rc != -EBADMSG)
                return 62;
            break;
        case 1:
            rc = mmipc_ring_recv(q, buf, sizeof buf, to);
            if (rc > (long long)sizeof buf || (rc < 0 && !is_errno(rc)))
                return 63;
            break;
        case 2: {
            const void *p = NULL;
            rc = mmipc_ring_peek(q, &p, to);
            if (rc < 0 && !is_errno(rc))
                return 64;
            if (rc >= 0) {
                if (p == NULL && rc > 0)
                    return 65;
                volatile unsigned sum = 0;
                for (long long j = 0; j < rc; j++)
                    sum += ((const unsigned char *)p)[j]; /* must be readable */
                (void)sum;
                rc = mmipc_ring_release(q, p);
                if (rc != 0 && !is_errno(rc))
                    return 66;
            }
            break;
        }
        case 3: {
            size_t n = (size_t)(th_rand(&rng) % 300);
            memset(buf, 0x33, n);
            rc = mmipc_ring_send(q, buf, n, to);
            if (rc != 0 && !is_errno(rc))
                return 67;
            break;
        }
        default: {
            size_t n = (size_t)(th_rand(&rng) % 300);
            void *w = NULL;
            rc = mmipc_ring_reserve(q, n, &w, to);
            if (rc != 0 && !is_errno(rc))
                return 68;
            if (rc == 0) {
                if (w == NULL && n > 0)
                    return 69;
                memset(w, 0x44, n); /* must be writable */
                rc = mmipc_ring_commit(q, w);
                if (rc != 0 && !is_errno(rc))
                    return 70;
            }
            break;
        }
        }
    }
    if (mmipc_region_check(r, NULL, NULL) < 0)
        return 71;
    for (size_t i = f.info.offset + f.info.size; i < len; i++)
        if (map[i] != 0) {
            fprintf(stderr, "scribble: byte %zu past the ring was written\n", i);
            return 72;
        }
    mmipc_region_close(r);
    munmap(map, len);
    return 0;
}

static int scribble_child(void *arg)
{
    struct scribble_arg *a = arg;
    char path[340];
    child_init();
    for (unsigned k = 0; k < SCRIBBLE_ROUNDS; k++) {
        unsigned attempt = a->attempt * SCRIBBLE_ROUNDS + k;
        snprintf(path, sizeof path, "%s.%u", a->path, k);
        int rc = scribble_once(path, attempt, mix64(a->seed + k));
        if (rc != 0) {
            fprintf(stderr, "scribble attempt %u (%s, seed %llu): exit %d\n", attempt, attempt & 1 ? "live" : "cold",
                    (unsigned long long)mix64(a->seed + k), rc);
            return rc;
        }
    }
    return 0;
}

START_TEST(test_scribble)
{
    uint64_t seed = test_seed(), rng = seed;
    char path[340];
    for (unsigned i = 0; i < 100; i++) {
        struct scribble_arg a = {.attempt = i, .seed = th_rand(&rng)};
        snprintf(a.path, sizeof a.path, "%s", th_path("scribble"));
        pid_t pid = th_spawn(scribble_child, &a);
        int st = th_wait(pid, 20000);
        ck_assert_msg(st == 0, "scribble attempts %u..%u (seed %llu): %s %d", i * SCRIBBLE_ROUNDS,
                      i * SCRIBBLE_ROUNDS + SCRIBBLE_ROUNDS - 1, (unsigned long long)seed,
                      st < 0      ? "hung"
                      : st >= 128 ? "killed by signal"
                                  : "exit",
                      st < 128 ? st : st - 128);
        for (unsigned k = 0; k < SCRIBBLE_ROUNDS; k++) {
            snprintf(path, sizeof path, "%s.%u", a.path, k);
            unlink(path);
        }
    }
}
END_TEST

/* ----------------------------------------------------------------- suite */

static TCase *tcase(Suite *s, const char *name, double timeout)
{
    TCase *tc = tcase_create(name);
    tcase_add_checked_fixture(tc, NULL, teardown);
    tcase_set_timeout(tc, timeout);
    suite_add_tcase(s, tc);
    return tc;
}

Suite *make_ring_suite(void)
{
    Suite *s = suite_create("ring");
    TCase *tc;

    tc = tcase(s, "api", 30);
    tcase_add_test(tc, test_create_open);
    tcase_add_test(tc, test_names);
    tcase_add_test(tc, test_wrong_kind);
    tcase_add_test(tc, test_nospace);
    tcase_add_test(tc, test_capacity);
    tcase_add_test(tc, test_max_message);
    tcase_add_test(tc, test_copy_stream_edges);
    tcase_add_test(tc, test_stream_copy);
    tcase_add_test(tc, test_zero_len);
    tcase_add_test(tc, test_fifo);
    tcase_add_test(tc, test_recv_small_buffer);
    tcase_add_test(tc, test_nowait_empty_full);
    tcase_add_test(tc, test_timeout);
    tcase_add_test(tc, test_stat_counts);
    tcase_add_test(tc, test_rdonly);
    tcase_add_test(tc, test_set_spin);

    tc = tcase(s, "wrap", 60);
    tcase_add_test(tc, test_wrap_sweep);
    tcase_add_test(tc, test_wrap_model);

    tc = tcase(s, "zerocopy", 60);
    tcase_add_test(tc, test_reserve_commit);
    tcase_add_test(tc, test_commit_other_thread);
    tcase_add_test(tc, test_reservation_does_not_block);
    tcase_add_test(tc, test_peek_does_not_block);
    tcase_add_test(tc, test_bogus_pointers);
    tcase_add_test(tc, test_forged_pointer);
    tcase_add_test(tc, test_threads);
    tcase_add_test(tc, test_zc_stream_order);

    tc = tcase(s, "process", 60);
    tcase_add_test(tc, test_fork_handle);
    tcase_add_test(tc, test_fork_zero_copy);
    tcase_add_test(tc, test_blocked_recv_wakes);
    tcase_add_test(tc, test_blocked_send_wakes);
    tcase_add_test(tc, test_sleep_handoffs);
    tcase_add_test(tc, test_persistence);

    tc = tcase(s, "abandoned", 60);
    tcase_add_test(tc, test_abandoned_reservation);
    tcase_add_test(tc, test_closed_reservation);
    tcase_add_test(tc, test_abandoned_peek);
    tcase_add_test(tc, test_closed_peek);
    tcase_add_test(tc, test_counters_after_kills);

    tc = tcase(s, "stress", 150);
    tcase_add_test(tc, test_stress);

    tc = tcase(s, "killstorm", 150);
    tcase_add_test(tc, test_kill_storm);

    tc = tcase(s, "corrupt", 90);
    tcase_add_loop_test(tc, test_corrupt, 0, CS_COUNT);
    tcase_add_test(tc, test_scribble);
    return s;
}
