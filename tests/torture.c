/*
 * tests/torture: kill -9 torture of rings and kv tables.
 *
 *   tests/torture [--seconds N] [--rings R] [--kvs K] [--workers W]
 *                 [--kill-ms MIN,MAX] [--seed S] [--dir DIR] [--verbose]
 *
 * One region holds R rings and K kv tables.  W worker processes (a quarter
 * each: producers, consumers, kv writers, kv readers) hammer them while
 * this process, the supervisor, SIGKILLs a random worker every MIN..MAX ms
 * (half of the time one that is inside a library call: blocked in a wait,
 * holding a lock, between reserve and commit, between peek and release,
 * inside a put...) and respawns it.  Every library call has a deadline and
 * a watchdog kills and reports any worker still inside one well past it.
 *
 * Bookkeeping lives in shared anonymous memory, so it survives the kills:
 *   - a producer burns a sequence number before it sends (so no number is
 *     ever sent twice), and sets an "acknowledged" bit once send or commit
 *     returned 0, or a "refused" bit if the call failed;
 *   - even rings are consumed with recv (at-most-once: a consumer killed
 *     between taking a message and recording it loses that message), odd
 *     rings with peek/release (at-least-once: killed after recording and
 *     before release, the message is delivered again);
 *   - consumers record receipts in per-message bitmaps and check each
 *     message's checksum and, per producer, increasing sequence numbers;
 *   - a kv writer owns its keys: it writes its intent (operation and a
 *     counter carried in the value) before each put/del/cas and the
 *     acknowledgement after, and checks the version grew; shared counter
 *     keys are incremented with get + cas by all writers;
 *   - readers check every value's checksum and that versions only grow,
 *     and that kv_wait returns only on a real change.
 * The supervisor notes the phase each killed worker died in, which bounds
 * what that kill may legitimately cost: each consumer killed inside recv
 * may lose one message, each killed holding a recorded peek may duplicate
 * one, each writer killed inside a put leaves the old value or the new one.
 *
 * At the end workers stop, the supervisor drains every ring and checks:
 * every acknowledged message received exactly once (at-most-once losses and
 * at-least-once duplicates within the bounds above), no refused message
 * delivered, per-producer order, every key holding its last acknowledged
 * or in-flight value, complete, with increasing versions, counters equal
 * to their acknowledged increments (plus at most the in-flight ones), rings
 * empty, mmipc_region_check clean, no worker stuck or crashed.  It prints
 * kills, recoveries (from the stats), messages and keys verified, and exits
 * 1 on any violation (77 if it cannot run here).
 *
 * Without arguments it runs the short version `make check` uses (20 s).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <inttypes.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "mmipc.h"

#define MAX_WORKERS 64
#define MAX_RINGS 16
#define MAX_KVS 16
#define KEYS_PER_WRITER 16
#define COUNTERS 4
#define RING_BYTES (16u * 1024u)
#define VALUE_MAX 512u
#define MSG_MAX 6000u
#define MAX_VIOLATIONS 32
#define KV_CALL_MS 5000    /* put/del/cas give up on a stopped lock holder after 5 s */
#define OPEN_CALL_MS 10000 /* open waits at most 10 s for another opener */
#define WATCHDOG_SLACK_MS 5000
#define MSG_MAGIC 0x47534d54u /* "TMSG" */
#define VAL_MAGIC 0x4c41564bu /* "KVAL" */
#define CTR_WRITER 0xffffu

enum role { ROLE_PRODUCER, ROLE_CONSUMER, ROLE_WRITER, ROLE_READER };

/* Where a worker is; written before and after every library call. */
enum phase {
    PH_IDLE,
    PH_OPEN,
    PH_SEND,
    PH_RESERVE,
    PH_RESERVED, /* holding a reservation, writing into it */
    PH_COMMIT,
    PH_RECV,
    PH_PEEK,
    PH_PEEKED,   /* holding a peek, not yet recorded */
    PH_RECORDED, /* recorded, releasing */
    PH_PUT,
    PH_DEL,
    PH_CAS,
    PH_CTR, /* counter cas */
    PH_GET,
    PH_WAIT,
    PH_FOREACH,
    PH_STAT,
    PH_COUNT
};

static const char *const phase_name[PH_COUNT] = {
    "idle",           "open", "send", "reserve", "holding-reservation", "commit", "recv", "peek",    "holding-peek",
    "releasing-peek", "put",  "del",  "cas",     "counter-cas",         "get",    "wait", "foreach", "stat",
};

enum { OP_NONE, OP_PUT, OP_DEL };

struct worker {
    int32_t pid;
    uint32_t role, index, incarnation;
    uint32_t phase, obj; /* obj: ring or kv table the phase concerns */
    uint64_t deadline;   /* monotonic ms by which the current call must return; 0 outside calls */
    uint64_t ops;
};

struct keylog {
    uint64_t intent_counter; /* 0: nothing in flight */
    uint32_t intent_op, acked_op;
    uint64_t acked_counter;
    uint64_t last_version; /* highest version the owner saw after its own op */
};

struct shared {
    int stop;
    uint32_t nviol;
    char viol[MAX_VIOLATIONS][200];
    struct worker w[MAX_WORKERS];
    uint64_t next_seq[MAX_WORKERS]; /* per producer: sequence numbers burned */
    uint64_t order_exceptions[MAX_RINGS], triples[MAX_RINGS];
    struct keylog keys[MAX_WORKERS][KEYS_PER_WRITER];
    uint64_t ctr_acked[MAX_KVS][COUNTERS];
    /* activity */
    uint64_t sends_ok, sends_refused, commits_ok, reserves_refused, recvs, peeks;
    uint64_t puts, dels, cas_ok, ctr_ok, ctr_stale, gets, waits_changed, waits_timeout, foreachs;
    uint64_t intents_resolved;
};

/* Options. */
static struct {
    unsigned seconds, rings, kvs, workers, kill_min, kill_max, verbose;
    uint64_t seed;
    const char *dir;
} opt = {20, 2, 2, 8, 5, 50, 0, 0, NULL};

static struct shared *S;
static uint64_t *bm_acked, *bm_refused, *bm_seen1, *bm_seen2; /* [producer][maxseq/64] */
static uint64_t maxseq, words_per_prod;
static unsigned nprod, ncons, nwriters, nreaders;
static char region_path[600], dir_path[512];

/* This process's identity (worker slot or -1 for the supervisor). */
static int me = -1;
static uint64_t rng;

/* ------------------------------------------------------------------ utils */

static uint64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static void sleep_us(unsigned us)
{
    struct timespec ts = {us / 1000000u, (long)(us % 1000000u) * 1000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

static uint64_t mix(uint64_t x)
{
    x += 0x9E3779B97F4A7C15ull;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
    return x ^ (x >> 31);
}

static uint64_t rnd(void)
{
    rng = mix(rng);
    return rng;
}

static unsigned rnd_below(unsigned n)
{
    return (unsigned)(rnd() % n);
}

static uint64_t fnv(uint64_t h, const void *p, size_t n)
{
    const uint8_t *b = p;
    for (size_t i = 0; i < n; i++) {
        h ^= b[i];
        h *= 0x100000001b3ull;
    }
    return h;
}

__attribute__((format(printf, 1, 2))) static void violation(const char *fmt, ...)
{
    char msg[200];
    va_list ap;
    int n = me >= 0 ? snprintf(msg, sizeof msg, "worker %d (pid %d): ", me, (int)getpid()) : 0;
    va_start(ap, fmt);
    vsnprintf(msg + n, sizeof msg - (size_t)n, fmt, ap);
    va_end(ap);
    uint32_t i = __atomic_fetch_add(&S->nviol, 1, __ATOMIC_RELAXED);
    if (i < MAX_VIOLATIONS)
        memcpy(S->viol[i], msg, sizeof msg);
    fprintf(stderr, "torture: VIOLATION: %s\n", msg);
}

static int expected_timeout(long rc)
{
    return rc == -EAGAIN || rc == -ETIMEDOUT;
}

/* Enter / leave a library call (the watchdog reads deadline). */
static void enter(enum phase ph, unsigned obj, int timeout_ms)
{
    if (me < 0)
        return; /* the supervisor */
    struct worker *w = &S->w[me];
    __atomic_store_n(&w->obj, obj, __ATOMIC_RELAXED);
    __atomic_store_n(&w->deadline, now_ms() + (uint64_t)(timeout_ms > 0 ? timeout_ms : 0) + 1, __ATOMIC_RELAXED);
    __atomic_store_n(&w->phase, ph, __ATOMIC_SEQ_CST);
}

static void leave(enum phase ph)
{
    if (me < 0)
        return;
    struct worker *w = &S->w[me];
    __atomic_store_n(&w->deadline, 0, __ATOMIC_RELAXED);
    __atomic_store_n(&w->phase, ph, __ATOMIC_SEQ_CST);
    __atomic_fetch_add(&w->ops, 1, __ATOMIC_RELAXED);
}

static int stopping(void)
{
    return __atomic_load_n(&S->stop, __ATOMIC_RELAXED);
}

static int op_timeout(void)
{
    unsigned x = rnd_below(100);
    return x < 25 ? 0 : x < 95 ? 1 + (int)rnd_below(100) : 100 + (int)rnd_below(150);
}

static void bit_set(uint64_t *bm, unsigned p, uint64_t seq)
{
    __atomic_fetch_or(&bm[p * words_per_prod + seq / 64], UINT64_C(1) << (seq % 64), __ATOMIC_SEQ_CST);
}

static int bit_get(const uint64_t *bm, unsigned p, uint64_t seq)
{
    return (int)((__atomic_load_n(&bm[p * words_per_prod + seq / 64], __ATOMIC_RELAXED) >> (seq % 64)) & 1u);
}

/* ------------------------------------------------------------------ messages */

struct msg_hdr {
    uint32_t magic;
    uint16_t producer, ring;
    uint64_t seq;
    uint32_t len, pad;
    uint64_t sum; /* FNV-1a of the message with this field left out */
};

static unsigned ring_of(unsigned p, uint64_t seq)
{
    return (unsigned)(mix(((uint64_t)p << 40) ^ seq ^ 0x5bd1e995u) % opt.rings);
}

static int ring_is_peek(unsigned r)
{
    return r % 2 == 1;
}

static uint64_t msg_sum(const uint8_t *m, size_t len)
{
    uint64_t h = fnv(0xcbf29ce484222325ull, m, offsetof(struct msg_hdr, sum));
    return fnv(h, m + sizeof(struct msg_hdr), len - sizeof(struct msg_hdr));
}

static size_t msg_len(unsigned p, uint64_t seq, uint64_t max_msg)
{
    uint64_t h = mix(seq * 2654435761u + p);
    uint64_t cap = max_msg < MSG_MAX ? max_msg : MSG_MAX;
    size_t len = (h % 100) < 90 ? 32 + (h >> 8) % 224 : 32 + (h >> 8) % (cap - 32 + 1);
    return len;
}

static void msg_build(uint8_t *m, unsigned p, unsigned r, uint64_t seq, size_t len)
{
    struct msg_hdr h = {MSG_MAGIC, (uint16_t)p, (uint16_t)r, seq, (uint32_t)len, 0, 0};
    memcpy(m, &h, sizeof h);
    for (size_t i = sizeof h; i < len; i++)
        m[i] = (uint8_t)(seq * 31u + i);
    h.sum = msg_sum(m, len);
    memcpy(m, &h, sizeof h);
}

/* Check a received message; 0 and its producer/seq, or -1 (reported). */
static int msg_check(const uint8_t *m, size_t len, unsigned r, unsigned *p, uint64_t *seq)
{
    struct msg_hdr h;
    if (len < sizeof h) {
        violation("ring %u: %zu-byte message (shorter than any sent)", r, len);
        return -1;
    }
    memcpy(&h, m, sizeof h);
    if (h.magic != MSG_MAGIC || h.len != len || h.producer >= nprod || h.seq >= maxseq || h.ring != r ||
        h.sum != msg_sum(m, len) || ring_of(h.producer, h.seq) != r) {
        violation("ring %u: torn or foreign message (len %zu, header len %u, producer %u, seq %" PRIu64 ")", r, len,
                  h.len, h.producer, h.seq);
        return -1;
    }
    *p = h.producer;
    *seq = h.seq;
    return 0;
}

/* Record a receipt; per-producer order is checked against `last`. */
static void msg_record(unsigned r, unsigned p, uint64_t seq, int64_t *last)
{
    if ((int64_t)seq <= last[p]) {
        if (ring_is_peek(r))
            __atomic_fetch_add(&S->order_exceptions[r], 1, __ATOMIC_RELAXED);
        else
            violation("ring %u: producer %u's seq %" PRIu64 " received after seq %" PRId64 " (order)", r, p, seq,
                      last[p]);
    } else {
        last[p] = (int64_t)seq;
    }
    uint64_t bit = UINT64_C(1) << (seq % 64);
    uint64_t *w1 = &bm_seen1[p * words_per_prod + seq / 64], *w2 = &bm_seen2[p * words_per_prod + seq / 64];
    if (__atomic_fetch_or(w1, bit, __ATOMIC_SEQ_CST) & bit)
        if (__atomic_fetch_or(w2, bit, __ATOMIC_SEQ_CST) & bit)
            __atomic_fetch_add(&S->triples[r], 1, __ATOMIC_RELAXED);
}

/* ------------------------------------------------------------------ kv values */

struct val_hdr {
    uint32_t magic;
    uint16_t writer, key;
    uint32_t len, table;
    uint64_t counter;
    uint64_t sum;
};

static uint64_t val_sum(const uint8_t *v, size_t len)
{
    uint64_t h = fnv(0xcbf29ce484222325ull, v, offsetof(struct val_hdr, sum));
    return fnv(h, v + sizeof(struct val_hdr), len - sizeof(struct val_hdr));
}

static size_t val_build(uint8_t *v, unsigned writer, unsigned key, unsigned table, uint64_t counter)
{
    size_t len = writer == CTR_WRITER ? sizeof(struct val_hdr)
                                      : sizeof(struct val_hdr) + (size_t)(mix(counter ^ key) % (VALUE_MAX - 31));
    struct val_hdr h = {VAL_MAGIC, (uint16_t)writer, (uint16_t)key, (uint32_t)len, table, counter, 0};
    memcpy(v, &h, sizeof h);
    for (size_t i = sizeof h; i < len; i++)
        v[i] = (uint8_t)(counter * 131u + i * 7u + key);
    h.sum = val_sum(v, len);
    memcpy(v, &h, sizeof h);
    return len;
}

/* Check a value read for (writer, key, table): 0 and its counter, or -1. */
static int val_check(const uint8_t *v, ssize_t len, unsigned writer, unsigned key, unsigned table, uint64_t *counter)
{
    struct val_hdr h;
    if (len < (ssize_t)sizeof h) {
        violation("kv %u: %zd-byte value for writer %u key %u", table, len, writer, key);
        return -1;
    }
    memcpy(&h, v, sizeof h);
    if (h.magic != VAL_MAGIC || h.len != (uint32_t)len || h.writer != writer || h.key != key || h.table != table ||
        h.sum != val_sum(v, (size_t)len)) {
        violation("kv %u: torn or foreign value for writer %u key %u (len %zd)", table, writer, key, len);
        return -1;
    }
    *counter = h.counter;
    return 0;
}

static void key_name(char *buf, size_t cap, unsigned writer, unsigned key)
{
    if (writer == CTR_WRITER)
        snprintf(buf, cap, "ctr%u", key);
    else
        snprintf(buf, cap, "w%02u.k%02u", writer, key);
}

static unsigned table_of(unsigned writer, unsigned key)
{
    return (writer * KEYS_PER_WRITER + key) % opt.kvs;
}

/* ------------------------------------------------------------------ workers */

struct conn {
    mmipc_region *r;
    mmipc_ring *q[MAX_RINGS];
    mmipc_kv *kv[MAX_KVS];
    uint64_t max_msg[MAX_RINGS];
};

static uint8_t mbuf[65536];

static void producer(struct conn *c, unsigned p)
{
    while (!stopping()) {
        uint64_t seq = __atomic_load_n(&S->next_seq[p], __ATOMIC_RELAXED);
        if (seq >= maxseq) {
            sleep_us(10000);
            continue;
        }
        unsigned r = ring_of(p, seq);
        size_t len = msg_len(p, seq, c->max_msg[r]);
        msg_build(mbuf, p, r, seq, len);
        /* Burn the number first: a kill after this never reuses it. */
        __atomic_store_n(&S->next_seq[p], seq + 1, __ATOMIC_SEQ_CST);
        int t = op_timeout();
        if (rnd_below(4) != 0) {
            enter(PH_SEND, r, t);
            int rc = mmipc_ring_send(c->q[r], mbuf, len, t);
            leave(PH_IDLE);
            if (rc == 0) {
                bit_set(bm_acked, p, seq);
                __atomic_fetch_add(&S->sends_ok, 1, __ATOMIC_RELAXED);
            } else {
                bit_set(bm_refused, p, seq);
                __atomic_fetch_add(&S->sends_refused, 1, __ATOMIC_RELAXED);
                if (!expected_timeout(rc))
                    violation("send on ring %u: %s", r, mmipc_strerror(rc));
            }
            continue;
        }
        void *ptr;
        enter(PH_RESERVE, r, t);
        int rc = mmipc_ring_reserve(c->q[r], len, &ptr, t);
        if (rc != 0) {
            leave(PH_IDLE);
            bit_set(bm_refused, p, seq);
            __atomic_fetch_add(&S->reserves_refused, 1, __ATOMIC_RELAXED);
            if (!expected_timeout(rc))
                violation("reserve on ring %u: %s", r, mmipc_strerror(rc));
            continue;
        }
        leave(PH_RESERVED);
        /* Write in two halves, sometimes pausing: kills land mid-write. */
        memcpy(ptr, mbuf, len / 2);
        if (rnd_below(10) == 0)
            sleep_us(rnd_below(2000));
        memcpy((uint8_t *)ptr + len / 2, mbuf + len / 2, len - len / 2);
        enter(PH_COMMIT, r, 0);
        rc = mmipc_ring_commit(c->q[r], ptr);
        leave(PH_IDLE);
        if (rc == 0) {
            bit_set(bm_acked, p, seq);
            __atomic_fetch_add(&S->commits_ok, 1, __ATOMIC_RELAXED);
        } else {
            bit_set(bm_refused, p, seq);
            violation("commit on ring %u refused (%s): a live reservation was reclaimed", r, mmipc_strerror(rc));
        }
    }
}

static void consumer(struct conn *c)
{
    static int64_t last[MAX_RINGS][MAX_WORKERS];
    for (unsigned r = 0; r < MAX_RINGS; r++)
        for (unsigned p = 0; p < MAX_WORKERS; p++)
            last[r][p] = -1;
    while (!stopping()) {
        unsigned r = rnd_below(opt.rings), p;
        uint64_t seq;
        int t = op_timeout();
        if (!ring_is_peek(r)) {
            enter(PH_RECV, r, t);
            ssize_t n = mmipc_ring_recv(c->q[r], mbuf, sizeof mbuf, t);
            if (n >= 0) {
                /* Still "in recv" until recorded: a kill here loses it. */
                if (msg_check(mbuf, (size_t)n, r, &p, &seq) == 0)
                    msg_record(r, p, seq, last[r]);
                __atomic_fetch_add(&S->recvs, 1, __ATOMIC_RELAXED);
            } else if (!expected_timeout(n)) {
                violation("recv on ring %u: %s", r, mmipc_strerror((int)n));
            }
            leave(PH_IDLE);
            continue;
        }
        const void *ptr;
        enter(PH_PEEK, r, t);
        ssize_t n = mmipc_ring_peek(c->q[r], &ptr, t);
        if (n < 0) {
            leave(PH_IDLE);
            if (!expected_timeout(n))
                violation("peek on ring %u: %s", r, mmipc_strerror((int)n));
            continue;
        }
        leave(PH_PEEKED);
        if (msg_check(ptr, (size_t)n, r, &p, &seq) == 0)
            msg_record(r, p, seq, last[r]);
        __atomic_store_n(&S->w[me].phase, PH_RECORDED, __ATOMIC_SEQ_CST);
        if (rnd_below(20) == 0)
            sleep_us(rnd_below(2000));
        enter(PH_RECORDED, r, KV_CALL_MS);
        int rc = mmipc_ring_release(c->q[r], ptr);
        leave(PH_IDLE);
        __atomic_fetch_add(&S->peeks, 1, __ATOMIC_RELAXED);
        if (rc != 0)
            violation("release on ring %u: %s", r, mmipc_strerror(rc));
    }
}

/* Value of one of our keys now: 1 present (counter, version), 0 absent, -1 error. */
static int read_key(struct conn *c, unsigned w, unsigned k, uint64_t *counter, uint64_t *version)
{
    char key[32];
    unsigned t = table_of(w, k);
    key_name(key, sizeof key, w, k);
    enter(PH_GET, t, KV_CALL_MS);
    ssize_t n = mmipc_kv_get(c->kv[t], key, mbuf, sizeof mbuf, version);
    leave(PH_IDLE);
    if (n == -ENOENT)
        return 0;
    if (n < 0) {
        violation("get %s: %s", key, mmipc_strerror((int)n));
        return -1;
    }
    return val_check(mbuf, n, w, k, t, counter) == 0 ? 1 : -1;
}

/* A predecessor was killed with an operation in flight: find out whether
 * it happened, and check the key holds one of the two allowed states. */
static void resolve_intent(struct conn *c, unsigned w, unsigned k)
{
    struct keylog *kl = &S->keys[w][k];
    uint64_t counter = 0, version = 0;
    if (kl->intent_counter == 0)
        return;
    int present = read_key(c, w, k, &counter, &version);
    if (present < 0)
        return;
    int acked_present = kl->acked_op == OP_PUT;
    int intent_present = kl->intent_op == OP_PUT;
    if (present == intent_present && (!present || counter == kl->intent_counter)) {
        kl->acked_op = kl->intent_op;
        kl->acked_counter = kl->intent_counter;
        if (present && version > kl->last_version)
            kl->last_version = version;
    } else if (!(present == acked_present && (!present || counter == kl->acked_counter))) {
        violation("key w%02u.k%02u: %s (counter %" PRIu64 ") is neither the acknowledged state (%s %" PRIu64
                  ") nor the one in flight (%s %" PRIu64 ")",
                  w, k, present ? "present" : "absent", counter, acked_present ? "put" : "absent", kl->acked_counter,
                  intent_present ? "put" : "del", kl->intent_counter);
    }
    kl->intent_counter = 0;
    __atomic_fetch_add(&S->intents_resolved, 1, __ATOMIC_RELAXED);
}

static void writer_key_op(struct conn *c, unsigned w)
{
    unsigned k = rnd_below(KEYS_PER_WRITER), t = table_of(w, k);
    struct keylog *kl = &S->keys[w][k];
    char key[32];
    uint64_t counter = 0, version = 0;
    unsigned action = rnd_below(10); /* 0-6 put, 7 del, 8-9 cas */
    key_name(key, sizeof key, w, k);
    if (action == 7 && kl->acked_op != OP_PUT)
        action = 0;
    if (action >= 8) {
        int present = read_key(c, w, k, &counter, &version);
        if (present < 0)
            return;
        if (present != (kl->acked_op == OP_PUT) || (present && counter != kl->acked_counter)) {
            violation("key %s: lost its acknowledged state (%s %" PRIu64 ", found %s %" PRIu64 ")", key,
                      kl->acked_op == OP_PUT ? "put" : "absent", kl->acked_counter, present ? "counter" : "absent",
                      counter);
            return;
        }
        if (!present)
            version = 0;
    }
    uint64_t c_new = kl->acked_counter + 1;
    size_t len = val_build(mbuf, w, k, t, c_new);
    kl->intent_op = action == 7 ? OP_DEL : OP_PUT;
    __atomic_store_n(&kl->intent_counter, c_new, __ATOMIC_SEQ_CST);
    int rc;
    if (action == 7) {
        enter(PH_DEL, t, KV_CALL_MS);
        rc = mmipc_kv_del(c->kv[t], key);
    } else if (action >= 8) {
        enter(PH_CAS, t, KV_CALL_MS);
        rc = mmipc_kv_cas(c->kv[t], key, version, mbuf, len);
    } else {
        enter(PH_PUT, t, KV_CALL_MS);
        rc = mmipc_kv_put(c->kv[t], key, mbuf, len);
    }
    leave(PH_IDLE);
    if (rc != 0) {
        __atomic_store_n(&kl->intent_counter, 0, __ATOMIC_SEQ_CST);
        if (!expected_timeout(rc))
            violation("%s %s: %s", action == 7 ? "del" : action >= 8 ? "cas" : "put", key, mmipc_strerror(rc));
        return;
    }
    kl->acked_op = kl->intent_op;
    kl->acked_counter = c_new;
    __atomic_store_n(&kl->intent_counter, 0, __ATOMIC_SEQ_CST);
    __atomic_fetch_add(action == 7 ? &S->dels : action >= 8 ? &S->cas_ok : &S->puts, 1, __ATOMIC_RELAXED);
    if (action == 7)
        return;
    /* Our own key: the value is ours and its version is new. */
    int present = read_key(c, w, k, &counter, &version);
    if (present == 1 && counter == c_new) {
        if (version <= kl->last_version)
            violation("key %s: version %" PRIu64 " after a put, not above %" PRIu64, key, version, kl->last_version);
        kl->last_version = version;
    } else if (present >= 0) {
        violation("key %s: put of counter %" PRIu64 " acknowledged but a get finds %s", key, c_new,
                  present ? "another counter" : "no key");
    }
}

static void counter_op(struct conn *c)
{
    unsigned t = rnd_below(opt.kvs), j = rnd_below(COUNTERS);
    char key[32];
    uint64_t version, count;
    key_name(key, sizeof key, CTR_WRITER, j);
    enter(PH_GET, t, KV_CALL_MS);
    ssize_t n = mmipc_kv_get(c->kv[t], key, mbuf, sizeof mbuf, &version);
    leave(PH_IDLE);
    if (n < 0) {
        violation("get %s in kv %u: %s", key, t, mmipc_strerror((int)n));
        return;
    }
    if (val_check(mbuf, n, CTR_WRITER, j, t, &count) != 0)
        return;
    size_t len = val_build(mbuf, CTR_WRITER, j, t, count + 1);
    enter(PH_CTR, t, KV_CALL_MS);
    int rc = mmipc_kv_cas(c->kv[t], key, version, mbuf, len);
    if (rc == 0)
        __atomic_fetch_add(&S->ctr_acked[t][j], 1, __ATOMIC_SEQ_CST);
    leave(PH_IDLE);
    if (rc == 0)
        __atomic_fetch_add(&S->ctr_ok, 1, __ATOMIC_RELAXED);
    else if (rc == -ESTALE)
        __atomic_fetch_add(&S->ctr_stale, 1, __ATOMIC_RELAXED);
    else if (!expected_timeout(rc))
        violation("cas %s in kv %u: %s", key, t, mmipc_strerror(rc));
}

static void writer(struct conn *c, unsigned w)
{
    for (unsigned k = 0; k < KEYS_PER_WRITER; k++)
        resolve_intent(c, w, k);
    while (!stopping()) {
        if (rnd_below(10) == 0)
            counter_op(c);
        else
            writer_key_op(c, w);
    }
}

struct walk {
    unsigned table;
    uint64_t values;
};

static int check_value(const char *key, const void *val, size_t len, uint64_t version, void *arg)
{
    struct walk *wk = arg;
    unsigned w, k;
    uint64_t counter;
    if (sscanf(key, "w%u.k%u", &w, &k) == 2)
        val_check(val, (ssize_t)len, w, k, wk->table, &counter);
    else if (sscanf(key, "ctr%u", &k) == 1)
        val_check(val, (ssize_t)len, CTR_WRITER, k, wk->table, &counter);
    else
        violation("kv %u: unknown key '%s'", wk->table, key);
    if (version == 0)
        violation("kv %u: key '%s' with version 0", wk->table, key);
    wk->values++;
    return 0;
}

static void reader(struct conn *c)
{
    /* Highest version seen per key by this incarnation. */
    static uint64_t seen[MAX_WORKERS + 1][KEYS_PER_WRITER];
    while (!stopping()) {
        unsigned x = rnd_below(100);
        if (x < 3) {
            unsigned t = rnd_below(opt.kvs);
            struct walk wk = {t, 0};
            enter(PH_FOREACH, t, KV_CALL_MS);
            int rc = mmipc_kv_foreach(c->kv[t], check_value, &wk);
            leave(PH_IDLE);
            if (rc != 0)
                violation("foreach kv %u: %s", t, mmipc_strerror(rc));
            __atomic_fetch_add(&S->foreachs, 1, __ATOMIC_RELAXED);
            continue;
        }
        if (x < 6) {
            struct mmipc_ring_stat rs;
            struct mmipc_kv_stat ks;
            struct mmipc_region_info ri;
            unsigned r = rnd_below(opt.rings), t = rnd_below(opt.kvs);
            enter(PH_STAT, r, 0);
            int rc1 = mmipc_ring_stat(c->q[r], &rs), rc2 = mmipc_kv_stat(c->kv[t], &ks),
                rc3 = mmipc_region_info(c->r, &ri);
            leave(PH_IDLE);
            if (rc1 != 0 || rc2 != 0 || rc3 != 0)
                violation("stat: ring %d, kv %d, region %d", rc1, rc2, rc3);
            continue;
        }
        /* A writer's key or a counter. */
        unsigned w = rnd_below(nwriters + 1), k, t, slot;
        if (w == nwriters) {
            w = CTR_WRITER;
            t = rnd_below(opt.kvs);
            k = rnd_below(COUNTERS);
            slot = MAX_WORKERS;
        } else {
            k = rnd_below(KEYS_PER_WRITER);
            t = table_of(w, k);
            slot = w;
        }
        uint64_t *hi = &seen[slot][w == CTR_WRITER ? (t * COUNTERS + k) % KEYS_PER_WRITER : k];
        char key[32];
        uint64_t version = 0, counter;
        key_name(key, sizeof key, w, k);
        enter(PH_GET, t, KV_CALL_MS);
        ssize_t n = mmipc_kv_get(c->kv[t], key, mbuf, sizeof mbuf, &version);
        leave(PH_IDLE);
        __atomic_fetch_add(&S->gets, 1, __ATOMIC_RELAXED);
        if (n >= 0) {
            val_check(mbuf, n, w, k, t, &counter);
            if (w != CTR_WRITER || opt.kvs * COUNTERS <= KEYS_PER_WRITER) {
                if (version < *hi)
                    violation("key %s: version went back from %" PRIu64 " to %" PRIu64, key, *hi, version);
                else
                    *hi = version;
            }
        } else if (n == -ENOENT) {
            version = 0;
        } else {
            violation("get %s: %s", key, mmipc_strerror((int)n));
            continue;
        }
        if (rnd_below(3) == 0) {
            int t_ms = 1 + (int)rnd_below(150);
            enter(PH_WAIT, t, t_ms);
            int rc = mmipc_kv_wait(c->kv[t], key, version, t_ms);
            leave(PH_IDLE);
            if (rc == 0) {
                uint64_t v2 = 0;
                ssize_t n2 = mmipc_kv_get(c->kv[t], key, mbuf, sizeof mbuf, &v2);
                if (n2 == -ENOENT)
                    v2 = 0;
                /* Versions are never reused, so a present version cannot
                 * come back; "absent" (0) can, after a put and a del. */
                if (n2 >= 0 && v2 == version)
                    violation("key %s: kv_wait returned but the version is still %" PRIu64, key, version);
                __atomic_fetch_add(&S->waits_changed, 1, __ATOMIC_RELAXED);
            } else if (expected_timeout(rc)) {
                __atomic_fetch_add(&S->waits_timeout, 1, __ATOMIC_RELAXED);
            } else {
                violation("wait %s: %s", key, mmipc_strerror(rc));
            }
        }
    }
}

static int connect_region(struct conn *c)
{
    char name[32];
    memset(c, 0, sizeof *c);
    enter(PH_OPEN, 0, OPEN_CALL_MS);
    int rc = mmipc_region_open(region_path, 0, NULL, &c->r);
    leave(PH_IDLE);
    if (rc != 0) {
        violation("open: %s", mmipc_strerror(rc));
        return -1;
    }
    for (unsigned r = 0; r < opt.rings; r++) {
        struct mmipc_ring_stat st;
        snprintf(name, sizeof name, "ring%u", r);
        if ((rc = mmipc_ring_open(c->r, name, &c->q[r])) != 0 || (rc = mmipc_ring_stat(c->q[r], &st)) != 0) {
            violation("ring_open %s: %s", name, mmipc_strerror(rc));
            return -1;
        }
        c->max_msg[r] = st.max_message;
        if (rnd_below(2))
            mmipc_ring_set_spin(c->q[r], 0);
    }
    for (unsigned t = 0; t < opt.kvs; t++) {
        snprintf(name, sizeof name, "kv%u", t);
        if ((rc = mmipc_kv_open(c->r, name, &c->kv[t])) != 0) {
            violation("kv_open %s: %s", name, mmipc_strerror(rc));
            return -1;
        }
    }
    return 0;
}

static void worker_main(int slot)
{
    struct worker *w = &S->w[slot];
    struct conn c;
    me = slot;
    rng = mix(opt.seed ^ ((uint64_t)slot << 32) ^ w->incarnation);
    signal(SIGALRM, SIG_DFL);
    if (connect_region(&c) != 0)
        _exit(3);
    switch (w->role) {
    case ROLE_PRODUCER:
        producer(&c, w->index);
        break;
    case ROLE_CONSUMER:
        consumer(&c);
        break;
    case ROLE_WRITER:
        writer(&c, w->index);
        break;
    default:
        reader(&c);
        break;
    }
    mmipc_region_close(c.r);
    _exit(0);
}

/* ------------------------------------------------------------------ supervisor */

static uint64_t kills, kills_by_phase[PH_COUNT], respawns, stuck, crashed;
static uint64_t recv_kills[MAX_RINGS], dup_kills[MAX_RINGS], redeliver_kills[MAX_RINGS];
static uint64_t ctr_kills[MAX_KVS];
static int killed_by_us[MAX_WORKERS];

static void spawn(int slot)
{
    struct worker *w = &S->w[slot];
    w->phase = PH_IDLE;
    w->deadline = 0;
    killed_by_us[slot] = 0;
    fflush(NULL);
    pid_t pid = fork();
    if (pid < 0) {
        perror("torture: fork");
        exit(1);
    }
    if (pid == 0)
        worker_main(slot);
    w->pid = pid;
}

/* A worker is gone: account for what its death may cost. */
static void account(int slot, int status)
{
    struct worker *w = &S->w[slot];
    unsigned ph = w->phase < PH_COUNT ? w->phase : PH_IDLE, obj = w->obj;
    if (WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL && killed_by_us[slot]) {
        kills++;
        kills_by_phase[ph]++;
        if (obj < MAX_RINGS) {
            if (ph == PH_RECV)
                recv_kills[obj]++;
            if (ph == PH_PEEKED || ph == PH_RECORDED)
                dup_kills[obj]++;
            if (ph == PH_PEEK || ph == PH_PEEKED || ph == PH_RECORDED)
                redeliver_kills[obj]++;
        }
        if (ph == PH_CTR && obj < MAX_KVS)
            ctr_kills[obj]++;
    } else if (!(WIFEXITED(status) && WEXITSTATUS(status) == 0 && stopping())) {
        crashed++;
        if (WIFSIGNALED(status))
            violation("worker %d (pid %d) died of signal %d in phase %s", slot, w->pid, WTERMSIG(status),
                      phase_name[ph]);
        else
            violation("worker %d (pid %d) exited with %d in phase %s", slot, w->pid, WEXITSTATUS(status),
                      phase_name[ph]);
    }
    w->pid = 0;
}

static int slot_of(pid_t pid)
{
    for (unsigned i = 0; i < opt.workers; i++)
        if (S->w[i].pid == pid)
            return (int)i;
    return -1;
}

static void reap(int respawn)
{
    int status;
    pid_t pid;
    while ((pid = waitpid(-1, &status, WNOHANG)) > 0) {
        int slot = slot_of(pid);
        if (slot < 0)
            continue;
        account(slot, status);
        if (respawn) {
            S->w[slot].incarnation++;
            respawns++;
            spawn(slot);
        }
    }
}

static void kill_one(void)
{
    int cand[MAX_WORKERS], n = 0;
    int busy = rnd_below(2);
    for (unsigned i = 0; i < opt.workers; i++) {
        uint32_t ph = __atomic_load_n(&S->w[i].phase, __ATOMIC_RELAXED);
        if (S->w[i].pid > 0 && !killed_by_us[i] && (!busy || ph != PH_IDLE))
            cand[n++] = (int)i;
    }
    if (n == 0)
        return;
    int slot = cand[rnd_below((unsigned)n)];
    /* Our own unreaped child: its pid cannot have been reused. */
    if (kill(S->w[slot].pid, SIGKILL) == 0)
        killed_by_us[slot] = 1;
}

static void watchdog(uint64_t now)
{
    for (unsigned i = 0; i < opt.workers; i++) {
        struct worker *w = &S->w[i];
        uint64_t dl = __atomic_load_n(&w->deadline, __ATOMIC_RELAXED);
        if (w->pid > 0 && !killed_by_us[i] && dl != 0 && now > dl + WATCHDOG_SLACK_MS) {
            uint32_t ph = w->phase < PH_COUNT ? w->phase : PH_IDLE;
            violation("worker %u (pid %d) stuck in %s %" PRIu64 " ms past its deadline", i, w->pid, phase_name[ph],
                      now - dl);
            stuck++;
            kill(w->pid, SIGKILL);
            killed_by_us[i] = 1;
        }
    }
}

static void on_alarm(int sig)
{
    (void)sig;
    static const char msg[] = "torture: VIOLATION: the whole run overran its deadline; killing workers\n";
    if (write(2, msg, sizeof msg - 1) < 0) {
    }
    for (unsigned i = 0; i < opt.workers; i++)
        if (S->w[i].pid > 0)
            kill(S->w[i].pid, SIGKILL);
    _exit(1);
}

/* ------------------------------------------------------------------ final checks */

static int64_t drain_last[MAX_RINGS][MAX_WORKERS];

static uint64_t drain(mmipc_ring *q, unsigned r)
{
    uint64_t got = 0;
    int idle = 0;
    /* Keep going until two timed waits in a row find nothing: dead
     * consumers' peeks are handed back and dead producers' reservations
     * discarded by waiting consumers. */
    while (idle < 2) {
        ssize_t n = mmipc_ring_recv(q, mbuf, sizeof mbuf, 200);
        if (n >= 0) {
            unsigned p;
            uint64_t seq;
            if (msg_check(mbuf, (size_t)n, r, &p, &seq) == 0)
                msg_record(r, p, seq, drain_last[r]);
            got++;
            idle = 0;
        } else if (expected_timeout(n)) {
            idle++;
        } else {
            violation("drain ring %u: %s", r, mmipc_strerror((int)n));
            break;
        }
    }
    return got;
}

static void report_problem(const char *object, const char *problem, void *arg)
{
    (void)arg;
    violation("mmipc_region_check: %s: %s", object, problem);
}

struct totals {
    uint64_t attempted, acked, refused, inflight, inflight_delivered, exactly_once;
    uint64_t lost[MAX_RINGS], dups[MAX_RINGS];
};

static void verify_messages(struct totals *tt)
{
    memset(tt, 0, sizeof *tt);
    for (unsigned p = 0; p < nprod; p++) {
        uint64_t n = S->next_seq[p];
        tt->attempted += n;
        for (uint64_t seq = 0; seq < n; seq++) {
            int a = bit_get(bm_acked, p, seq), f = bit_get(bm_refused, p, seq);
            int s1 = bit_get(bm_seen1, p, seq), s2 = bit_get(bm_seen2, p, seq);
            unsigned r = ring_of(p, seq);
            if (a && f)
                violation("producer %u seq %" PRIu64 ": both acknowledged and refused", p, seq);
            if (f) {
                tt->refused++;
                if (s1)
                    violation("producer %u seq %" PRIu64 " (ring %u): refused by send/reserve yet delivered", p, seq,
                              r);
                continue;
            }
            if (!a) {
                tt->inflight++;
                tt->inflight_delivered += (uint64_t)s1;
                if (s2) {
                    if (ring_is_peek(r))
                        tt->dups[r]++;
                    else
                        violation("producer %u seq %" PRIu64 " (ring %u): delivered twice by recv", p, seq, r);
                }
                continue;
            }
            tt->acked++;
            if (!s1) {
                if (ring_is_peek(r))
                    violation("producer %u seq %" PRIu64 " (ring %u, peek/release): acknowledged, never received", p,
                              seq, r);
                else
                    tt->lost[r]++;
            } else if (s2) {
                if (ring_is_peek(r))
                    tt->dups[r]++;
                else
                    violation("producer %u seq %" PRIu64 " (ring %u): delivered twice by recv", p, seq, r);
            } else {
                tt->exactly_once++;
            }
        }
    }
    for (unsigned r = 0; r < opt.rings; r++) {
        uint64_t dups = tt->dups[r] + S->triples[r];
        if (tt->lost[r] > recv_kills[r])
            violation("ring %u: %" PRIu64 " acknowledged messages lost, but only %" PRIu64
                      " consumers were killed inside recv",
                      r, tt->lost[r], recv_kills[r]);
        if (dups > dup_kills[r])
            violation("ring %u: %" PRIu64 " duplicate deliveries, but only %" PRIu64
                      " consumers were killed holding a recorded peek",
                      r, dups, dup_kills[r]);
        if (S->order_exceptions[r] > redeliver_kills[r])
            violation("ring %u: %" PRIu64 " out-of-order deliveries, but only %" PRIu64
                      " consumers were killed holding a peek",
                      r, S->order_exceptions[r], redeliver_kills[r]);
    }
}

static uint64_t verify_keys(struct conn *c, uint64_t *ctr_total, uint64_t *ctr_inflight)
{
    uint64_t verified = 0;
    uint64_t last_version[MAX_KVS];
    for (unsigned t = 0; t < opt.kvs; t++) {
        struct mmipc_kv_stat ks;
        int rc = mmipc_kv_stat(c->kv[t], &ks);
        if (rc != 0)
            violation("kv_stat kv%u: %s", t, mmipc_strerror(rc));
        last_version[t] = ks.last_version;
    }
    for (unsigned w = 0; w < nwriters; w++) {
        for (unsigned k = 0; k < KEYS_PER_WRITER; k++) {
            struct keylog *kl = &S->keys[w][k];
            uint64_t counter = 0, version = 0;
            unsigned t = table_of(w, k);
            char key[32];
            key_name(key, sizeof key, w, k);
            ssize_t n = mmipc_kv_get(c->kv[t], key, mbuf, sizeof mbuf, &version);
            if (n < 0 && n != -ENOENT) {
                violation("final get %s: %s", key, mmipc_strerror((int)n));
                continue;
            }
            if (n >= 0 && val_check(mbuf, n, w, k, t, &counter) != 0)
                continue;
            int present = n >= 0;
            int ok_acked = present == (kl->acked_op == OP_PUT) && (!present || counter == kl->acked_counter);
            int ok_intent = kl->intent_counter != 0 && present == (kl->intent_op == OP_PUT) &&
                            (!present || counter == kl->intent_counter);
            if (!ok_acked && !ok_intent) {
                violation("final %s: %s counter %" PRIu64 ", acknowledged %s %" PRIu64 ", in flight %" PRIu64, key,
                          present ? "present" : "absent", counter, kl->acked_op == OP_PUT ? "put" : "state",
                          kl->acked_counter, kl->intent_counter);
                continue;
            }
            if (present && (version < kl->last_version || version > last_version[t])) {
                violation("final %s: version %" PRIu64 " outside [%" PRIu64 ", %" PRIu64 "]", key, version,
                          kl->last_version, last_version[t]);
                continue;
            }
            verified++;
        }
    }
    *ctr_total = *ctr_inflight = 0;
    for (unsigned t = 0; t < opt.kvs; t++) {
        for (unsigned j = 0; j < COUNTERS; j++) {
            char key[32];
            uint64_t version, count;
            key_name(key, sizeof key, CTR_WRITER, j);
            ssize_t n = mmipc_kv_get(c->kv[t], key, mbuf, sizeof mbuf, &version);
            if (n < 0) {
                violation("final get %s in kv%u: %s", key, t, mmipc_strerror((int)n));
                continue;
            }
            if (val_check(mbuf, n, CTR_WRITER, j, t, &count) != 0)
                continue;
            uint64_t acked = S->ctr_acked[t][j];
            if (count < acked || count > acked + ctr_kills[t])
                violation("counter %s in kv%u: %" PRIu64 " after %" PRIu64 " acknowledged increments (%" PRIu64
                          " writers killed inside cas)",
                          key, t, count, acked, ctr_kills[t]);
            else
                verified++;
            *ctr_total += count;
            *ctr_inflight += count - acked;
        }
    }
    return verified;
}

/* ------------------------------------------------------------------ main */

static void usage(FILE *f)
{
    fprintf(f, "usage: torture [--seconds N] [--rings R] [--kvs K] [--workers W] [--kill-ms MIN,MAX]\n"
               "               [--seed S] [--dir DIR] [--verbose]\n"
               "Kill -9 torture of mmipc rings and kv tables (see the comment in tests/torture.c).\n");
}

static int parse(int argc, char **argv)
{
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (strcmp(a, "--verbose") == 0 || strcmp(a, "-v") == 0) {
            opt.verbose = 1;
            continue;
        }
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            usage(stdout);
            exit(0);
        }
        if (v == NULL) {
            usage(stderr);
            return -1;
        }
        i++;
        if (strcmp(a, "--seconds") == 0)
            opt.seconds = (unsigned)strtoul(v, NULL, 10);
        else if (strcmp(a, "--rings") == 0)
            opt.rings = (unsigned)strtoul(v, NULL, 10);
        else if (strcmp(a, "--kvs") == 0)
            opt.kvs = (unsigned)strtoul(v, NULL, 10);
        else if (strcmp(a, "--workers") == 0)
            opt.workers = (unsigned)strtoul(v, NULL, 10);
        else if (strcmp(a, "--seed") == 0)
            opt.seed = strtoull(v, NULL, 0);
        else if (strcmp(a, "--dir") == 0)
            opt.dir = v;
        else if (strcmp(a, "--kill-ms") == 0) {
            if (sscanf(v, "%u,%u", &opt.kill_min, &opt.kill_max) != 2 || opt.kill_min > opt.kill_max) {
                usage(stderr);
                return -1;
            }
        } else {
            usage(stderr);
            return -1;
        }
    }
    if (opt.seconds == 0 || opt.rings == 0 || opt.rings > MAX_RINGS || opt.kvs == 0 || opt.kvs > MAX_KVS ||
        opt.workers < 4 || opt.workers > MAX_WORKERS) {
        fprintf(stderr, "torture: need seconds >= 1, 1..%d rings, 1..%d kv tables, 4..%d workers\n", MAX_RINGS, MAX_KVS,
                MAX_WORKERS);
        return -1;
    }
    return 0;
}

static int setup_region(void)
{
    const char *base = opt.dir ? opt.dir : getenv("TMPDIR");
    if (base == NULL || base[0] == '\0')
        base = "/tmp";
    snprintf(dir_path, sizeof dir_path, "%s/mmipc-torture-XXXXXX", base);
    if (mkdtemp(dir_path) == NULL) {
        perror("torture: mkdtemp");
        return -1;
    }
    snprintf(region_path, sizeof region_path, "%s/region", dir_path);
    unsigned keys_per_table = (nwriters * KEYS_PER_WRITER + opt.kvs - 1) / opt.kvs + COUNTERS;
    unsigned slots = 2 * keys_per_table + 8;
    uint64_t kv_bytes = 256 + (uint64_t)slots * (((16 + 2 * (88 + VALUE_MAX)) + 63) / 64 * 64);
    struct mmipc_region_opts o = {
        .size = (size_t)(1u << 20) + opt.rings * (RING_BYTES + 4096) + opt.kvs * (kv_bytes + 4096),
        .max_objects = opt.rings + opt.kvs + 4,
    };
    mmipc_region *r;
    int rc = mmipc_region_open(region_path, MMIPC_CREATE | MMIPC_EXCL, &o, &r);
    if (rc != 0) {
        fprintf(stderr, "torture: create %s: %s\n", region_path, mmipc_strerror(rc));
        return -1;
    }
    char name[32];
    for (unsigned i = 0; i < opt.rings && rc == 0; i++) {
        mmipc_ring *q;
        snprintf(name, sizeof name, "ring%u", i);
        rc = mmipc_ring_create(r, name, RING_BYTES, &q);
    }
    for (unsigned t = 0; t < opt.kvs && rc == 0; t++) {
        mmipc_kv *kv;
        snprintf(name, sizeof name, "kv%u", t);
        rc = mmipc_kv_create(r, name, slots, VALUE_MAX, &kv);
        for (unsigned j = 0; j < COUNTERS && rc == 0; j++) {
            char key[32];
            key_name(key, sizeof key, CTR_WRITER, j);
            size_t len = val_build(mbuf, CTR_WRITER, j, t, 0);
            rc = mmipc_kv_put(kv, key, mbuf, len);
        }
    }
    if (rc != 0) {
        fprintf(stderr, "torture: create objects: %s\n", mmipc_strerror(rc));
        mmipc_region_close(r);
        return -1;
    }
    mmipc_region_close(r);
    return 0;
}

static void cleanup(void)
{
    unlink(region_path);
    rmdir(dir_path);
}

int main(int argc, char **argv)
{
    if (parse(argc, argv) != 0)
        return 2;
    if (opt.seed == 0)
        opt.seed = mix((uint64_t)time(NULL) ^ ((uint64_t)getpid() << 20));
    rng = opt.seed;
    setvbuf(stdout, NULL, _IOLBF, 0);
    nprod = (opt.workers + 3) / 4;
    ncons = (opt.workers + 2) / 4;
    nwriters = (opt.workers + 1) / 4;
    nreaders = opt.workers / 4;
    /* Room for 2000 messages/s per producer over the run, at least 2^20. */
    maxseq = (uint64_t)opt.seconds * 200000u;
    if (maxseq < (UINT64_C(1) << 20))
        maxseq = UINT64_C(1) << 20;
    maxseq = (maxseq + 63) / 64 * 64;
    words_per_prod = maxseq / 64;

    S = mmap(NULL, sizeof *S, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    size_t bm_bytes = (size_t)nprod * words_per_prod * 8u;
    uint8_t *bm = mmap(NULL, 4 * bm_bytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (S == MAP_FAILED || bm == MAP_FAILED) {
        perror("torture: mmap");
        return 77;
    }
    bm_acked = (uint64_t *)bm;
    bm_refused = (uint64_t *)(bm + bm_bytes);
    bm_seen1 = (uint64_t *)(bm + 2 * bm_bytes);
    bm_seen2 = (uint64_t *)(bm + 3 * bm_bytes);
    if (setup_region() != 0)
        return 77;
    atexit(cleanup);

    printf("torture: %u s, %u rings (%u recv, %u peek/release), %u kv tables, %u workers (%u producers, %u "
           "consumers, %u kv writers, %u kv readers), a kill every %u-%u ms, seed %#" PRIx64 "\n",
           opt.seconds, opt.rings, (opt.rings + 1) / 2, opt.rings / 2, opt.kvs, opt.workers, nprod, ncons, nwriters,
           nreaders, opt.kill_min, opt.kill_max, opt.seed);

    /* The supervisor stays attached for the stats and the final drain. */
    struct conn sup;
    if (connect_region(&sup) != 0)
        return 1;
    unsigned counts[4] = {0, 0, 0, 0};
    for (unsigned i = 0; i < opt.workers; i++) {
        S->w[i].role = i % 4;
        S->w[i].index = counts[i % 4]++;
    }
    signal(SIGALRM, on_alarm);
    alarm(opt.seconds + 120);
    for (unsigned i = 0; i < opt.workers; i++)
        spawn((int)i);

    uint64_t start = now_ms(), end = start + opt.seconds * 1000ull;
    uint64_t next_kill = start + opt.kill_min + rnd_below(opt.kill_max - opt.kill_min + 1), next_report = start + 1000;
    for (uint64_t now = start; now < end; now = now_ms()) {
        reap(1);
        if (now >= next_kill) {
            kill_one();
            next_kill = now + opt.kill_min + rnd_below(opt.kill_max - opt.kill_min + 1);
        }
        watchdog(now);
        if (opt.verbose && now >= next_report) {
            printf("  %3" PRIu64 " s: kills %" PRIu64 ", sent %" PRIu64 ", received %" PRIu64 ", puts %" PRIu64
                   ", violations %u\n",
                   (now - start) / 1000, kills, S->sends_ok + S->commits_ok, S->recvs + S->peeks, S->puts, S->nviol);
            next_report += 1000;
        }
        sleep_us(1000);
    }

    /* Stop: workers finish their current call (each has a deadline). */
    __atomic_store_n(&S->stop, 1, __ATOMIC_SEQ_CST);
    uint64_t stop_deadline = now_ms() + OPEN_CALL_MS + WATCHDOG_SLACK_MS;
    for (;;) {
        reap(0);
        unsigned alive = 0;
        for (unsigned i = 0; i < opt.workers; i++)
            alive += S->w[i].pid > 0;
        if (alive == 0)
            break;
        if (now_ms() > stop_deadline) {
            for (unsigned i = 0; i < opt.workers; i++)
                if (S->w[i].pid > 0) {
                    violation("worker %u (pid %d) did not stop (phase %s)", i, S->w[i].pid,
                              phase_name[S->w[i].phase < PH_COUNT ? S->w[i].phase : 0]);
                    stuck++;
                    killed_by_us[i] = 1;
                    kill(S->w[i].pid, SIGKILL);
                }
            stop_deadline = UINT64_MAX;
        }
        sleep_us(2000);
    }

    /* Drain, then look at everything. */
    uint64_t drained = 0;
    for (unsigned r = 0; r < opt.rings; r++)
        for (unsigned p = 0; p < MAX_WORKERS; p++)
            drain_last[r][p] = -1;
    for (unsigned r = 0; r < opt.rings; r++)
        drained += drain(sup.q[r], r);
    alarm(0);

    uint64_t ring_recov = 0, kv_recov = 0;
    printf("rings:\n");
    for (unsigned r = 0; r < opt.rings; r++) {
        struct mmipc_ring_stat st;
        int rc = mmipc_ring_stat(sup.q[r], &st);
        if (rc != 0) {
            violation("ring_stat ring%u: %s", r, mmipc_strerror(rc));
            continue;
        }
        ring_recov += st.recoveries;
        printf("  ring%u (%s): sent %" PRIu64 ", received %" PRIu64 ", send waits %" PRIu64 ", recv waits %" PRIu64
               ", recoveries %" PRIu64 "\n",
               r, ring_is_peek(r) ? "peek/release" : "recv", st.sent, st.received, st.send_waits, st.recv_waits,
               st.recoveries);
        /* Bytes, not the message count: sent/received are bumped just after
         * the publishing store, so a kill in between leaves them off by one
         * for good (a statistic, not a message). */
        if (st.used != 0)
            violation("ring%u not empty after the drain: %" PRIu64 " bytes queued", r, st.used);
    }
    printf("kv tables:\n");
    for (unsigned t = 0; t < opt.kvs; t++) {
        struct mmipc_kv_stat st;
        if (mmipc_kv_stat(sup.kv[t], &st) != 0)
            continue;
        kv_recov += st.recoveries;
        printf("  kv%u: keys %" PRIu64 ", tombstones %" PRIu64 ", puts %" PRIu64 ", dels %" PRIu64
               ", last version %" PRIu64 ", recoveries %" PRIu64 "\n",
               t, st.used, st.tombstones, st.puts, st.dels, st.last_version, st.recoveries);
    }
    int problems = mmipc_region_check(sup.r, report_problem, NULL);

    struct totals tt;
    uint64_t ctr_total, ctr_inflight;
    verify_messages(&tt);
    uint64_t keys_ok = verify_keys(&sup, &ctr_total, &ctr_inflight);
    mmipc_region_close(sup.r);

    uint64_t lost = 0, dups = 0, order = 0, rk = 0, dk = 0, ok = 0;
    for (unsigned r = 0; r < opt.rings; r++) {
        lost += tt.lost[r];
        dups += tt.dups[r] + S->triples[r];
        order += S->order_exceptions[r];
        rk += recv_kills[r];
        dk += dup_kills[r];
        ok += redeliver_kills[r];
    }
    printf("kills: %" PRIu64 " (", kills);
    for (int ph = 0, first = 1; ph < PH_COUNT; ph++)
        if (kills_by_phase[ph]) {
            printf("%s%s %" PRIu64, first ? "" : ", ", phase_name[ph], kills_by_phase[ph]);
            first = 0;
        }
    printf("), respawns %" PRIu64 ", crashed %" PRIu64 ", stuck %" PRIu64 "\n", respawns, crashed, stuck);
    printf("recoveries (from stats): rings %" PRIu64 ", kv %" PRIu64 "; in-flight kv operations resolved by "
           "respawned writers: %" PRIu64 "\n",
           ring_recov, kv_recov, S->intents_resolved);
    printf("messages: %" PRIu64 " attempted, %" PRIu64 " acknowledged (%" PRIu64 " by commit), %" PRIu64
           " refused (timeouts), %" PRIu64 " in flight at a kill (%" PRIu64 " of them delivered); %" PRIu64
           " drained at the end\n",
           tt.attempted, tt.acked, S->commits_ok, tt.refused, tt.inflight, tt.inflight_delivered, drained);
    printf("messages verified: %" PRIu64 " acknowledged received exactly once with intact checksums "
           "(order checked per consumer); %" PRIu64 " lost at-most-once (bound %" PRIu64 "), %" PRIu64
           " duplicated at-least-once (bound %" PRIu64 "), %" PRIu64 " redelivered out of order (bound %" PRIu64 ")\n",
           tt.exactly_once, lost, rk, dups, dk, order, ok);
    printf("keys verified: %" PRIu64 " (%u owned keys + %u counters; puts %" PRIu64 ", cas %" PRIu64 ", dels %" PRIu64
           ", counter increments %" PRIu64 " acknowledged + %" PRIu64 " in flight, gets %" PRIu64 ", waits %" PRIu64
           " woken / %" PRIu64 " timed out, foreach %" PRIu64 ")\n",
           keys_ok, nwriters * KEYS_PER_WRITER, opt.kvs * COUNTERS, S->puts, S->cas_ok, S->dels,
           ctr_total - ctr_inflight, ctr_inflight, S->gets, S->waits_changed, S->waits_timeout, S->foreachs);
    printf("region check: %d problems\n", problems);
    printf("violations: %u\n", S->nviol);
    if (S->nviol != 0) {
        for (uint32_t i = 0; i < S->nviol && i < MAX_VIOLATIONS; i++)
            printf("  %s\n", S->viol[i]);
        printf("FAIL (reproduce with --seed %#" PRIx64 "; kills are timed, so not exactly)\n", opt.seed);
        return 1;
    }
    printf("PASS\n");
    return 0;
}
