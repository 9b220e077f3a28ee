/*
 * libFuzzer harness 2: a valid region whose header, directory, leases, ring
 * and kv fields are scribbled on between operations (a hostile or buggy
 * peer with write access to the file).
 *
 * Once per process: build a region (64 KiB, rings r0 and r1, kv table
 * "kv") in a temporary directory, fill it (queued messages, a PAD record,
 * reservations and peeks of a live and of a dead process, keys and
 * tombstones), keep it open (the "primary" handles) and save a pristine
 * image of the file.  Per input: copy the pristine image back through our
 * own mapping, open a "secondary" region handle, then run the program the
 * input encodes (fuzz/mutate_ops.h): scribbles and send / recv / peek /
 * release / reserve / commit / stat / put / get / del / cas / wait / foreach
 * / check / reopen / read-only opens / creates, all with timeout 0.
 *
 * Lock words: a scribble that makes a lock look held by some thread would
 * only make the next locked call wait out its lock deadline (5 s for calls
 * without a timeout), which tests nothing but patience.  So after each
 * scribble the futex word of every known lock is reduced to 0 or
 * FUTEX_OWNER_DIED: the latter drives the EOWNERDEAD repair paths over
 * corrupt data.  The other mutex fields (kind, owner, ...) stay scribbled.
 *
 * Nothing may crash, hang, leak or trip a sanitizer; results that break
 * the API contract abort.  Build: `make fuzz`; replayed by
 * tests/fuzz-regress-mutate in `make check`.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/futex.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "layout.h"
#include "mmipc.h"
#include "mutate_ops.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define REGION_SIZE (64u * 1024u)
#define MAX_STEPS 256
#define NKEYS 12
#define VALUE_MAX 100

#define CHECK(cond)                                                                                                    \
    do {                                                                                                               \
        if (!(cond)) {                                                                                                 \
            fprintf(stderr, "fuzz_mutate: %s:%d: contract broken: %s\n", __FILE__, __LINE__, #cond);                   \
            abort();                                                                                                   \
        }                                                                                                              \
    } while (0)

#define DIE(what)                                                                                                      \
    do {                                                                                                               \
        fprintf(stderr, "fuzz_mutate: setup: %s\n", what);                                                             \
        abort();                                                                                                       \
    } while (0)

/* One set of handles: region, rings r0/r1, kv, and what is open on them. */
struct hset {
    mmipc_region *r;
    mmipc_ring *q[2];
    mmipc_kv *kv;
    const void *peeked[2];
    void *reserved[2];
    uint64_t version; /* last version seen by get */
};

static struct {
    int ready;
    char dir[256], path[300];
    uint8_t *img;      /* our own MAP_SHARED view of the file */
    uint8_t *pristine; /* its content after setup */
    uint64_t off_r0, off_r1, off_kv, size_r0, size_r1, size_kv;
    uint64_t dir_off, lease_off;
    struct hset prim, sec;
    const void *saved_peek;
    void *saved_reserve;
} g;

static uint8_t buf[8192];
static volatile uint64_t sink;

/* ---------------------------------------------------------------- setup */

static void remove_temp(void)
{
    if (g.path[0] != '\0')
        unlink(g.path);
    if (g.dir[0] != '\0')
        rmdir(g.dir);
}

static int find_object(const struct mmipc_object_info *o, void *arg)
{
    (void)arg;
    if (strcmp(o->name, "r0") == 0)
        g.off_r0 = o->offset, g.size_r0 = o->size;
    else if (strcmp(o->name, "r1") == 0)
        g.off_r1 = o->offset, g.size_r1 = o->size;
    else if (strcmp(o->name, "kv") == 0)
        g.off_kv = o->offset, g.size_kv = o->size;
    return 0;
}

static void open_handles(struct hset *h, int flags)
{
    memset(h, 0, sizeof *h);
    if (mmipc_region_open(g.path, flags, NULL, &h->r) != 0) {
        h->r = NULL;
        return;
    }
    for (int i = 0; i < 2; i++) {
        if (mmipc_ring_open(h->r, i ? "r1" : "r0", &h->q[i]) != 0)
            h->q[i] = NULL;
        else
            mmipc_ring_set_spin(h->q[i], 0);
    }
    if (mmipc_kv_open(h->r, "kv", &h->kv) != 0)
        h->kv = NULL;
}

static void close_handles(struct hset *h)
{
    mmipc_region_close(h->r);
    memset(h, 0, sizeof *h);
}

/* A process that dies holding a reservation on r1 and a peek on r0. */
static void dead_peer(void)
{
    pid_t pid = fork();
    if (pid < 0)
        DIE("fork");
    if (pid == 0) {
        struct hset h;
        void *p;
        const void *c;
        open_handles(&h, 0);
        if (h.q[0] == NULL || h.q[1] == NULL)
            _exit(1);
        if (mmipc_ring_reserve(h.q[1], 40, &p, 0) != 0)
            _exit(1);
        memset(p, 'd', 40);
        if (mmipc_ring_peek(h.q[0], &c, 0) < 0)
            _exit(1);
        _exit(0); /* no close: the lease stays, its owner is dead */
    }
    int st;
    if (waitpid(pid, &st, 0) != pid || !WIFEXITED(st) || WEXITSTATUS(st) != 0)
        DIE("dead peer");
}

static void setup(void)
{
    const char *base = getenv("TMPDIR");
    struct mmipc_region_opts o = {.size = REGION_SIZE, .max_objects = 4};
    mmipc_ring *q;
    mmipc_kv *kv;
    if (base == NULL || base[0] == '\0')
        base = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp";
    snprintf(g.dir, sizeof g.dir, "%s/mmipc-fuzz-mutate-XXXXXX", base);
    if (mkdtemp(g.dir) == NULL)
        DIE("mkdtemp");
    snprintf(g.path, sizeof g.path, "%s/region", g.dir);
    atexit(remove_temp);

    mmipc_region *r;
    if (mmipc_region_open(g.path, MMIPC_CREATE | MMIPC_EXCL, &o, &r) != 0)
        DIE("create region");
    if (mmipc_ring_create(r, "r0", 4096, &q) != 0 || mmipc_ring_create(r, "r1", 8192, &q) != 0 ||
        mmipc_kv_create(r, "kv", 16, VALUE_MAX, &kv) != 0)
        DIE("create objects");
    mmipc_region_close(r);
    open_handles(&g.prim, 0);
    if (g.prim.q[0] == NULL || g.prim.q[1] == NULL || g.prim.kv == NULL)
        DIE("open objects");
    mmipc_region_objects(g.prim.r, find_object, NULL);

    /* r0: ten 300-byte messages taken, then three of 400 so that the third
     * wraps behind a PAD record. */
    memset(buf, 'm', sizeof buf);
    for (int i = 0; i < 10; i++)
        if (mmipc_ring_send(g.prim.q[0], buf, 300, 0) != 0)
            DIE("send r0");
    for (int i = 0; i < 10; i++)
        if (mmipc_ring_recv(g.prim.q[0], buf, sizeof buf, 0) != 300)
            DIE("recv r0");
    for (int i = 0; i < 3; i++)
        if (mmipc_ring_send(g.prim.q[0], buf, 400, 0) != 0)
            DIE("send r0 wrap");
    /* r1: messages, then open reservations and peeks of a dead process and
     * of ours, then more messages behind them. */
    for (int i = 0; i < 4; i++)
        if (mmipc_ring_send(g.prim.q[1], buf, (size_t)(17 * i), 0) != 0)
            DIE("send r1");
    dead_peer();
    if (mmipc_ring_peek(g.prim.q[1], &g.saved_peek, 0) < 0 ||
        mmipc_ring_reserve(g.prim.q[1], 64, &g.saved_reserve, 0) != 0)
        DIE("peek/reserve r1");
    memset(g.saved_reserve, 'p', 64);
    for (int i = 0; i < 2; i++)
        if (mmipc_ring_send(g.prim.q[1], buf, 100, 0) != 0)
            DIE("send r1 behind");
    /* kv: ten keys of various lengths, two deleted, one cas. */
    for (int i = 0; i < 10; i++) {
        char key[8];
        snprintf(key, sizeof key, "k%d", i);
        if (mmipc_kv_put(g.prim.kv, key, buf, (size_t)(i * 11)) != 0)
            DIE("put");
    }
    if (mmipc_kv_del(g.prim.kv, "k3") != 0 || mmipc_kv_del(g.prim.kv, "k7") != 0 ||
        mmipc_kv_cas(g.prim.kv, "k1", 2, buf, 5) != 0)
        DIE("del/cas");

    int fd = open(g.path, O_RDWR | O_CLOEXEC);
    if (fd < 0)
        DIE("open");
    g.img = mmap(NULL, REGION_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    close(fd);
    if (g.img == MAP_FAILED)
        DIE("mmap");
    const struct mmipc__hdr *hd = (const struct mmipc__hdr *)g.img;
    g.dir_off = hd->dir_off;
    g.lease_off = hd->lease_off;
    g.pristine = malloc(REGION_SIZE);
    if (g.pristine == NULL)
        DIE("malloc");
    memcpy(g.pristine, g.img, REGION_SIZE);
    g.ready = 1;
}

/* ---------------------------------------------------------------- scribbles */

static void normalise_lock(uint64_t off)
{
#ifdef __GLIBC__
    pthread_mutex_t *m = (pthread_mutex_t *)(g.img + off);
    int v = __atomic_load_n(&m->__data.__lock, __ATOMIC_RELAXED);
    __atomic_store_n(&m->__data.__lock, v & FUTEX_OWNER_DIED, __ATOMIC_RELAXED);
#else
    (void)off;
#endif
}

static void normalise_locks(void)
{
    normalise_lock(offsetof(struct mmipc__hdr, lock));
    normalise_lock(g.off_r0 + offsetof(struct mmipc__ring, plock));
    normalise_lock(g.off_r0 + offsetof(struct mmipc__ring, clock));
    normalise_lock(g.off_r1 + offsetof(struct mmipc__ring, plock));
    normalise_lock(g.off_r1 + offsetof(struct mmipc__ring, clock));
    normalise_lock(g.off_kv + offsetof(struct mmipc__kv, lock));
}

static uint64_t le64(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = (v << 8) | p[i];
    return v;
}

static void scribble(const uint8_t *arg)
{
    uint64_t start, len;
    switch (arg[0] % FM_AREA_COUNT) {
    case FM_AREA_HEADER:
        start = 0, len = MMIPC__HDR_SIZE;
        break;
    case FM_AREA_DIR:
        start = g.dir_off, len = 4 * sizeof(struct mmipc__dirent);
        break;
    case FM_AREA_LEASES:
        start = g.lease_off, len = 4 * sizeof(struct mmipc__lease);
        break;
    case FM_AREA_RING0:
        start = g.off_r0, len = MMIPC__RING_DATA_OFF;
        break;
    case FM_AREA_RING0_DATA:
        start = g.off_r0 + MMIPC__RING_DATA_OFF, len = g.size_r0 - MMIPC__RING_DATA_OFF;
        break;
    case FM_AREA_RING1:
        start = g.off_r1, len = MMIPC__RING_DATA_OFF;
        break;
    case FM_AREA_RING1_DATA:
        start = g.off_r1 + MMIPC__RING_DATA_OFF, len = g.size_r1 - MMIPC__RING_DATA_OFF;
        break;
    case FM_AREA_KV:
        start = g.off_kv, len = MMIPC__KV_WORDS_OFF;
        break;
    case FM_AREA_KV_SLOTS:
        start = g.off_kv + MMIPC__KV_WORDS_OFF, len = g.size_kv - MMIPC__KV_WORDS_OFF;
        break;
    default:
        start = 0, len = REGION_SIZE;
        break;
    }
    unsigned how = arg[3];
    unsigned width = 1u << (how & 3u);
    unsigned mode = ((how >> 2) & 7u) % FM_MODE_COUNT;
    uint64_t value = le64(arg + 4);
    uint64_t off = start + (uint64_t)(arg[1] | (arg[2] << 8)) % len;
    if (!(how & 0x20u))
        off &= ~(uint64_t)(width - 1);
    if (off + width > REGION_SIZE)
        off = REGION_SIZE - width;
    uint64_t old = 0;
    memcpy(&old, g.img + off, width);
    switch (mode) {
    case FM_SET:
        break;
    case FM_ADD:
        value = old + (uint64_t)(int64_t)(int8_t)value;
        break;
    case FM_XOR:
        value ^= old;
        break;
    case FM_ZERO:
        value = 0;
        break;
    case FM_ONES:
        value = UINT64_MAX;
        break;
    case FM_SIZE:
        value = REGION_SIZE;
        break;
    default:
        value %= 4096;
        break;
    }
    memcpy(g.img + off, &value, width); /* little-endian host */
    normalise_locks();
}

/* ---------------------------------------------------------------- operations */

static int count_object(const struct mmipc_object_info *o, void *arg)
{
    CHECK(memchr(o->name, '\0', sizeof o->name) != NULL);
    (*(unsigned *)arg)++;
    return 0;
}

static int count_lease(const struct mmipc_lease_info *li, void *arg)
{
    (void)li;
    (*(unsigned *)arg)++;
    return 0;
}

static void count_problem(const char *object, const char *problem, void *arg)
{
    sink += strlen(object) + strlen(problem);
    (*(unsigned *)arg)++;
}

static int sum_value(const char *key, const void *val, size_t len, uint64_t version, void *arg)
{
    const uint8_t *v = val;
    uint64_t sum = version + strlen(key);
    CHECK(len <= VALUE_MAX * 64u);
    for (size_t i = 0; i < len; i++)
        sum += v[i];
    sink += sum;
    return arg != NULL && sum % 5 == 0; /* sometimes stop the walk */
}

static void inspect(mmipc_region *r)
{
    struct mmipc_region_info info;
    unsigned n = 0, problems = 0;
    if (mmipc_region_info(r, &info) == 0)
        CHECK(info.used <= info.size);
    mmipc_region_objects(r, count_object, &n);
    mmipc_region_leases(r, count_lease, &n);
    int rc = mmipc_region_check(r, count_problem, &problems);
    CHECK(rc >= 0 && (unsigned)rc == problems);
}

static void rdonly_pass(void)
{
    struct hset h;
    struct mmipc_ring_stat rs;
    struct mmipc_kv_stat ks;
    open_handles(&h, MMIPC_RDONLY);
    if (h.r == NULL)
        return;
    inspect(h.r);
    for (int i = 0; i < 2; i++)
        if (h.q[i] != NULL) {
            mmipc_ring_stat(h.q[i], &rs);
            CHECK(mmipc_ring_send(h.q[i], buf, 1, 0) == -EPERM);
            CHECK(mmipc_ring_recv(h.q[i], buf, sizeof buf, 0) == -EPERM);
        }
    if (h.kv != NULL) {
        mmipc_kv_stat(h.kv, &ks);
        mmipc_kv_foreach(h.kv, sum_value, NULL);
        mmipc_kv_get(h.kv, "k2", buf, sizeof buf, NULL);
        mmipc_kv_wait(h.kv, "k2", 0, 0);
        CHECK(mmipc_kv_put(h.kv, "k2", buf, 1) == -EPERM);
    }
    close_handles(&h);
}

static void key_name(char *key, size_t cap, unsigned b)
{
    static const char long_key[] = "LLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLL"; /* 63 */
    if (b % 16 < NKEYS)
        snprintf(key, cap, "k%u", b % 16);
    else if (b % 16 == NKEYS)
        snprintf(key, cap, "%s", long_key);
    else
        snprintf(key, cap, "new%u", b);
}

static void run_step(unsigned op, unsigned a, unsigned b)
{
    struct hset *h = (a & 2u) ? &g.sec : &g.prim;
    unsigned ri = a & 1u, variant = (a >> 2) & 1u;
    mmipc_ring *q = h->q[ri];
    struct mmipc_ring_stat rs;
    struct mmipc_kv_stat ks;
    char key[MMIPC_KEY_MAX + 1];
    ssize_t n;
    int rc;
    if (h->r == NULL && op != FM_OP_REOPEN && op != FM_OP_RDONLY)
        return;
    switch (op) {
    case FM_OP_SEND: {
        size_t len = b * 8u;
        if (variant && q != NULL && mmipc_ring_stat(q, &rs) == 0 && rs.max_message >= b)
            len = (size_t)rs.max_message - b + 1; /* around the largest */
        if (q != NULL && len <= sizeof buf) {
            memset(buf, (int)b, len);
            mmipc_ring_send(q, buf, len, 0);
        }
        break;
    }
    case FM_OP_RECV:
        if (q != NULL) {
            size_t cap = variant ? b : sizeof buf;
            n = mmipc_ring_recv(q, cap ? buf : NULL, cap, 0);
            CHECK(n < 0 || (size_t)n <= cap);
        }
        break;
    case FM_OP_PEEK:
        if (q != NULL) {
            const void *p;
            n = mmipc_ring_peek(q, &p, 0);
            if (n >= 0) {
                const uint8_t *c = p;
                uint64_t sum = 0;
                for (ssize_t i = 0; i < n; i++)
                    sum += c[i];
                sink += sum;
                h->peeked[ri] = p;
            }
        }
        break;
    case FM_OP_RELEASE:
        if (q != NULL)
            mmipc_ring_release(q, variant ? (const void *)(buf + b) : h->peeked[ri]);
        break;
    case FM_OP_RESERVE:
        if (q != NULL) {
            void *p;
            size_t len = variant ? 0 : b * 4u;
            if (mmipc_ring_reserve(q, len, &p, 0) == 0) {
                memset(p, 'r', len);
                h->reserved[ri] = p;
            }
        }
        break;
    case FM_OP_COMMIT:
        if (q != NULL)
            mmipc_ring_commit(q, variant ? (void *)(buf + b) : h->reserved[ri]);
        break;
    case FM_OP_RING_STAT:
        if (q != NULL && mmipc_ring_stat(q, &rs) == 0)
            CHECK(rs.used <= rs.capacity);
        break;
    case FM_OP_KV_PUT:
        if (h->kv != NULL) {
            key_name(key, sizeof key, b);
            memset(buf, (int)a, VALUE_MAX + 8);
            mmipc_kv_put(h->kv, key, buf, (b * 7u) % (VALUE_MAX + 2));
        }
        break;
    case FM_OP_KV_GET:
        if (h->kv != NULL) {
            key_name(key, sizeof key, b);
            size_t cap = variant ? b % 16 : sizeof buf;
            n = mmipc_kv_get(h->kv, key, buf, cap, &h->version);
            CHECK(n < 0 || (size_t)n <= cap);
        }
        break;
    case FM_OP_KV_DEL:
        if (h->kv != NULL) {
            key_name(key, sizeof key, b);
            mmipc_kv_del(h->kv, key);
        }
        break;
    case FM_OP_KV_CAS:
        if (h->kv != NULL) {
            key_name(key, sizeof key, b);
            mmipc_kv_cas(h->kv, key, variant ? b : h->version, buf, b % 32);
        }
        break;
    case FM_OP_KV_WAIT:
        if (h->kv != NULL) {
            key_name(key, sizeof key, b);
            rc = mmipc_kv_wait(h->kv, key, variant ? b : h->version, 0);
            CHECK(rc != -ETIMEDOUT);
        }
        break;
    case FM_OP_KV_FOREACH:
        if (h->kv != NULL)
            mmipc_kv_foreach(h->kv, sum_value, variant ? h : NULL);
        break;
    case FM_OP_KV_STAT:
        if (h->kv != NULL && mmipc_kv_stat(h->kv, &ks) == 0)
            CHECK(ks.used + ks.tombstones <= ks.slots);
        break;
    case FM_OP_INSPECT:
        inspect(h->r);
        break;
    case FM_OP_REOPEN:
        /* Closing abandons the secondary's reservations and peeks. */
        close_handles(&g.sec);
        open_handles(&g.sec, 0);
        break;
    case FM_OP_RDONLY:
        rdonly_pass();
        break;
    case FM_OP_CREATE: {
        char name[16];
        snprintf(name, sizeof name, "c%u", b);
        if (variant) {
            mmipc_kv *kv;
            if (mmipc_kv_create(h->r, name, 1 + b % 4, b, &kv) == 0)
                mmipc_kv_put(kv, "x", buf, b % 8);
        } else {
            mmipc_ring *nq;
            if (mmipc_ring_create(h->r, name, (size_t)b * 64, &nq) == 0)
                mmipc_ring_send(nq, buf, b, 0);
        }
        break;
    }
    case FM_OP_SAVED:
        /* The primary's own reservation and peek made during setup. */
        if (variant)
            mmipc_ring_commit(g.prim.q[1], g.saved_reserve);
        else
            mmipc_ring_release(g.prim.q[1], g.saved_peek);
        break;
    default:
        break;
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!g.ready)
        setup();
    memcpy(g.img, g.pristine, REGION_SIZE);
    open_handles(&g.sec, 0);
    memset(g.prim.peeked, 0, sizeof g.prim.peeked);
    memset(g.prim.reserved, 0, sizeof g.prim.reserved);
    g.prim.version = 0;

    size_t i = 0;
    for (int steps = 0; i < size && steps < MAX_STEPS; steps++) {
        uint8_t arg[12] = {0};
        unsigned op = data[i++] % FM_OP_COUNT;
        size_t need = op == FM_OP_SCRIBBLE ? 12 : 2;
        for (size_t k = 0; k < need && i < size; k++)
            arg[k] = data[i++];
        if (op == FM_OP_SCRIBBLE)
            scribble(arg);
        else
            run_step(op, arg[0], arg[1]);
    }
    close_handles(&g.sec);
    return 0;
}
