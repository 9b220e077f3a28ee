/*
 * kv tables: fixed slots, string keys, versioned values, crash-safe.
 *
 * Open addressing with linear probing.  Each slot has one word (in a compact
 * array of words) and a body: the key once, and two halves (copies of the
 * value with its length and version), each value in lines of its own so a
 * get reads the key's line and one value's.  Writers serialise on the table
 * lock, fill the INACTIVE half and publish it with one release store of the
 * word, which carries a change count, a tag of the key's hash, the active
 * half and the slot state (EMPTY, LIVE, TOMB).
 * Consequences:
 *   - a writer killed at any instant leaves the active half untouched: the
 *     key holds the old value or the new one, never a torn one, and there is
 *     nothing to repair;
 *   - readers take no lock: load word, copy the active half, load word again;
 *     equal words mean the copy is exact (a writer can only touch that half
 *     after a publish, which changes the word);
 *   - the key is written only while the slot is EMPTY or TOMB (an insert),
 *     which readers skip; one that read the slot LIVE sees its word change;
 *   - the word carries a 16-bit tag of the key's hash, so a probe chain is
 *     walked in the word array and only a slot whose tag matches has its
 *     body read: a get on a large table costs one cache miss into the
 *     bodies, not one per probe.
 * Deleted slots become tombstones so probe chains stay intact; a tombstone
 * whose successor is EMPTY is itself turned back to EMPTY (no live key's
 * chain can run through it), so churn does not fill the table with them.
 * Versions come from one counter per table, so they are unique and never
 * reused (no ABA for cas or wait).
 */
#include "config.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

#define UNTIMED_LOCK_MS 5000 /* calls without a timeout give up on a stopped peer after this */
#define READ_RETRIES 1000    /* lock-free read attempts before reading under the lock */

struct mmipc_kv {
    struct mmipc__handle h;
    mmipc_region *r;
    struct mmipc__kv *t;
    uint64_t *words;
    uint8_t *slots;
    uint32_t nslots;
    uint64_t value_max, val_off, val_stride, slot_size;
    uint64_t prefetch_end; /* a lookup asks for the body's lines up to here (values: at most 6 lines) */
};

struct geometry {
    uint32_t nslots;
    uint64_t value_max, val_off, val_stride, slot_size, slots_off, total;
};

static void geometry_of(uint32_t nslots, uint64_t value_max, struct geometry *g)
{
    g->nslots = nslots;
    g->value_max = value_max;
    g->val_off = MMIPC__KV_VAL_OFF(value_max);
    g->val_stride = MMIPC__KV_VAL_STRIDE(value_max);
    g->slot_size = mmipc__round_up(g->val_off + 2 * g->val_stride, MMIPC__LINE);
    g->slots_off = mmipc__round_up(MMIPC__KV_WORDS_OFF + (uint64_t)nslots * sizeof(uint64_t), MMIPC__LINE);
    g->total = g->slots_off + (uint64_t)nslots * g->slot_size;
}

/* Where a lookup stops asking for a body's value lines: both values, up to
 * 6 lines in all (small values share line 1 with the key's tail, asked for
 * anyway). */
static uint64_t prefetch_end_of(const struct geometry *g)
{
    if (g->val_off < 2 * MMIPC__LINE)
        return 0;
    uint64_t end = g->val_off + 6 * MMIPC__LINE;
    return end < g->slot_size ? end : g->slot_size;
}

static int kv_geometry(const uint8_t *obj, uint64_t size, struct geometry *g)
{
    const struct mmipc__kv *t = (const struct mmipc__kv *)obj;
    if (size < MMIPC__KV_WORDS_OFF)
        return -EBADMSG;
    uint32_t magic = mmipc__load_relaxed(&t->magic);
    uint32_t n = mmipc__load_relaxed(&t->slots);
    uint64_t vmax = mmipc__load_relaxed(&t->value_max);
    if (magic != MMIPC__KV_MAGIC || n == 0 || n > MMIPC__KV_MAX_SLOTS || vmax > MMIPC__KV_MAX_VALUE)
        return -EBADMSG;
    geometry_of(n, vmax, g);
    if (mmipc__load_relaxed(&t->slot_size) != g->slot_size ||
        mmipc__load_relaxed(&t->words_off) != MMIPC__KV_WORDS_OFF ||
        mmipc__load_relaxed(&t->slots_off) != g->slots_off || g->total > size)
        return -EBADMSG;
    return 0;
}

/* Part of the format (stored in each body, tag in the word): 8 bytes at a
 * time, multiply and fold; each step is a bijection of the state, so keys
 * of one length that differ in one chunk always hash apart before the
 * final mix. */
static uint32_t key_hash(const char *key, size_t len)
{
    const uint64_t m = UINT64_C(0x9e3779b97f4a7c15);
    const unsigned char *p = (const unsigned char *)key;
    uint64_t h = (uint64_t)len * m ^ UINT64_C(0x2545f4914f6cdd1d);
    size_t rest = len;
    for (; rest >= 8; rest -= 8, p += 8) {
        uint64_t w;
        memcpy(&w, p, 8);
        h = (h ^ w) * m;
        h ^= h >> 32;
    }
    if (rest != 0) {
        uint64_t w = 0;
        if (rest & 4) {
            uint32_t x;
            memcpy(&x, p, 4);
            w = x;
            p += 4;
        }
        if (rest & 2) {
            uint16_t x;
            memcpy(&x, p, 2);
            w = w << 16 | x;
            p += 2;
        }
        if (rest & 1)
            w = w << 8 | *p;
        h = (h ^ w) * m;
        h ^= h >> 32;
    }
    h = (h ^ (h >> 29)) * UINT64_C(0xbf58476d1ce4e5b9);
    return (uint32_t)(h ^ (h >> 32));
}

/* The first slot of hash's probe chain: its high bits scaled to the table
 * (no division; the tag uses the low bits). */
static uint32_t home_of(uint32_t hash, uint32_t nslots)
{
    return (uint32_t)(((uint64_t)hash * nslots) >> 32);
}

static uint32_t next_slot(uint32_t i, uint32_t nslots)
{
    return i + 1 == nslots ? 0 : i + 1;
}

static uint64_t *word_of(mmipc_kv *kv, uint32_t i)
{
    return kv->words + i;
}

static struct mmipc__kv_body *body_of(mmipc_kv *kv, uint32_t i)
{
    return (struct mmipc__kv_body *)(kv->slots + (uint64_t)i * kv->slot_size);
}

static uint8_t *value_of(mmipc_kv *kv, struct mmipc__kv_body *b, unsigned which)
{
    return (uint8_t *)b + kv->val_off + which * kv->val_stride;
}

/* ---------------------------------------------------------------- reading */

/* memcpy(dst, src, n) with no call up to 64 bytes: 16-byte moves, the last
 * one overlapping the one before.  A get on a table bigger than the caches
 * waits on memory, and the fewer instructions it takes, the sooner the CPU
 * starts the next get's accesses: with this copy and the inline name check,
 * a get on the bench's 50,000-key table takes 0.90-0.94x the time it took
 * with libc's memcpy (README, kv).  (An inline key compare in place of memcmp was
 * measured too, and made gets slower.) */
static inline void copy_value(void *dst, const void *src, size_t n)
{
    unsigned char *d = dst;
    const unsigned char *s = src;
    if (n > 64) {
        memcpy(d, s, n);
    } else if (n >= 16) {
        for (size_t i = 0; i + 16 < n; i += 16)
            memcpy(d + i, s + i, 16);
        memcpy(d + n - 16, s + n - 16, 16);
    } else if (n >= 8) {
        memcpy(d, s, 8);
        memcpy(d + n - 8, s + n - 8, 8);
    } else if (n >= 4) {
        memcpy(d, s, 4);
        memcpy(d + n - 4, s + n - 4, 4);
    } else if (n != 0) {
        d[0] = s[0];
        d[n / 2] = s[n / 2];
        d[n - 1] = s[n - 1];
    }
}

/* Ask at once for the lines of slot i's body that a lookup of a klen-byte
 * key reads: line 0 (lengths, versions and the key's first 32 bytes), line 1
 * if the key is longer or the values live there (value_max <= 16), and both
 * values' lines (up to 6), since only the word says which value is active.
 * They are otherwise read one after the other, each miss queueing behind
 * the last. */
static void prefetch_body(mmipc_kv *kv, uint32_t i, size_t klen)
{
    const uint8_t *body = (const uint8_t *)body_of(kv, i);
    mmipc__prefetch_read(body);
    if (offsetof(struct mmipc__kv_body, key) + klen > MMIPC__LINE || kv->val_off < 2 * MMIPC__LINE)
        mmipc__prefetch_read(body + MMIPC__LINE);
    for (uint64_t off = kv->val_off; off < kv->prefetch_end; off += MMIPC__LINE)
        mmipc__prefetch_read(body + off);
}

/* A consistent copy of one slot. */
struct snap {
    uint64_t word;
    uint32_t state;
    uint64_t version;
    uint32_t val_len, key_len, hash;
    char key[MMIPC_KEY_MAX + 1];
};

enum { SNAP_OK = 0, SNAP_BAD = -EBADMSG, SNAP_BUSY = -EAGAIN };

/*
 * Copy slot i.  If want_key is given, the value is copied only when the key
 * matches (into buf when it fits in cap); with all_values, always.  `stable`:
 * the table lock is held, so one pass is exact.  Returns SNAP_OK, SNAP_BAD or
 * SNAP_BUSY (kept changing).  *match says whether the key matched.  w1 is
 * the slot's word, just loaded with acquire by the caller, who may already
 * have judged the slot by it: the first attempt uses that same value.
 */
static int snap_slot(mmipc_kv *kv, uint32_t i, uint64_t w1, const char *want_key, size_t want_len, uint32_t want_hash,
                     void *buf, size_t cap, int all_values, int stable, struct snap *s, int *match)
{
    uint64_t *wp = word_of(kv, i);
    for (int attempt = 0; attempt < (stable ? 1 : READ_RETRIES); attempt++) {
        if (attempt > 0)
            w1 = mmipc__load_acquire(wp);
        int bad = 0;
        s->word = w1;
        s->state = MMIPC__KV_WORD_STATE(w1);
        *match = 0;
        if (s->state == MMIPC__KV_EMPTY)
            return SNAP_OK;
        if (s->state != MMIPC__KV_LIVE && s->state != MMIPC__KV_TOMB)
            return SNAP_BAD;
        struct mmipc__kv_body *b = body_of(kv, i);
        unsigned half = MMIPC__KV_WORD_HALF(w1);
        const uint8_t *val = value_of(kv, b, half);
        s->version = mmipc__load_relaxed(&b->version[half]);
        s->val_len = mmipc__load_relaxed(&b->val_len[half]);
        s->key_len = mmipc__load_relaxed(&b->key_len);
        s->hash = mmipc__load_relaxed(&b->hash);
        if (s->state == MMIPC__KV_LIVE) {
            /* Version 0 is never handed out: a LIVE word pointing at a
             * half nobody wrote. */
            if (s->key_len == 0 || s->key_len > MMIPC_KEY_MAX || s->val_len > kv->value_max || s->version == 0)
                bad = 1;
            else if (want_key != NULL) {
                /* Compare in place: most slots of a probe chain differ in
                 * length or hash and cost nothing more. */
                int same = s->key_len == want_len && memcmp(b->key, want_key, want_len) == 0;
                *match = same && s->hash == want_hash;
                bad = same && !*match; /* right key, wrong hash: scribbled */
                if (*match && buf != NULL && s->val_len <= cap && s->val_len != 0)
                    memcpy(buf, val, s->val_len);
            } else {
                memcpy(s->key, b->key, s->key_len);
                s->key[s->key_len] = '\0';
                if (memchr(s->key, '\0', s->key_len) != NULL)
                    bad = 1; /* a NUL inside the key: not a key we could have written */
                if (all_values && buf != NULL && s->val_len <= cap && s->val_len != 0)
                    memcpy(buf, val, s->val_len);
            }
        }
        mmipc__fence_acquire();
        if (mmipc__load_relaxed(wp) == w1) {
            if (bad)
                return SNAP_BAD;
            return SNAP_OK;
        }
        mmipc__cpu_relax();
    }
    return SNAP_BUSY;
}

/*
 * Find key.  Returns the slot index (>= 0) with *s filled and the value
 * copied into buf if it fits, -ENOENT (with *free_slot = first usable slot
 * for an insert, or -1), -EBADMSG, or -EAGAIN (a slot kept changing).
 */
static int64_t lookup(mmipc_kv *kv, const char *key, size_t klen, uint32_t hash, void *buf, size_t cap, int stable,
                      struct snap *s, int64_t *free_slot)
{
    int64_t first_free = -1;
    uint32_t tag = MMIPC__KV_TAG_OF(hash);
    uint32_t i = home_of(hash, kv->nslots);
    /* Most keys live in their home slot: start fetching its body (both
     * halves, as only the word says which one is active) while the word
     * loads, so that in a big table the two misses overlap instead of
     * queueing one behind the other. */
    uint32_t home = i;
    prefetch_body(kv, i, klen);
    for (uint32_t n = 0; n < kv->nslots; n++, i = next_slot(i, kv->nslots)) {
        uint64_t w = mmipc__load_acquire(word_of(kv, i));
        uint32_t state = MMIPC__KV_WORD_STATE(w);
        if (state == MMIPC__KV_LIVE && MMIPC__KV_WORD_TAG(w) != tag)
            continue; /* another key: its body stays out of the cache */
        int match = 0;
        if (state == MMIPC__KV_LIVE) {
            if (i != home)
                prefetch_body(kv, i, klen);
            int rc = snap_slot(kv, i, w, key, klen, hash, buf, cap, 0, stable, s, &match);
            if (rc != SNAP_OK)
                return rc;
            state = s->state; /* from the word the copy was checked against */
        } else if (state != MMIPC__KV_EMPTY && state != MMIPC__KV_TOMB) {
            return -EBADMSG;
        }
        if (state == MMIPC__KV_EMPTY) {
            if (first_free < 0)
                first_free = i;
            break;
        }
        if (state == MMIPC__KV_TOMB) {
            if (first_free < 0)
                first_free = i;
            continue;
        }
        if (match)
            return i;
    }
    if (free_slot != NULL)
        *free_slot = first_free;
    return -ENOENT;
}

static void repair_kv(void *arg)
{
    mmipc_kv *kv = arg;
    /* A writer died holding the lock.  It only ever wrote an inactive half
     * (invisible) or published with one store, so there is nothing to undo. */
    mmipc__fetch_add(&kv->t->recoveries, 1);
}

static int lock_table(mmipc_kv *kv, int timeout_ms)
{
    struct mmipc__deadline d;
    mmipc__deadline_init(&d, timeout_ms);
    int rc = mmipc__mutex_lock(&kv->t->lock.m, &d, repair_kv, kv);
    return rc < 0 ? rc : 0;
}

/* Locked fallback for readers starved by a stream of writers. */
static int64_t lookup_any(mmipc_kv *kv, const char *key, size_t klen, uint32_t hash, void *buf, size_t cap,
                          struct snap *s)
{
    int64_t rc = lookup(kv, key, klen, hash, buf, cap, 0, s, NULL);
    if (rc != -EAGAIN || kv->r->rdonly)
        return rc;
    int lrc = lock_table(kv, UNTIMED_LOCK_MS);
    if (lrc != 0)
        return lrc;
    rc = lookup(kv, key, klen, hash, buf, cap, 1, s, NULL);
    mmipc__mutex_unlock(&kv->t->lock.m);
    return rc;
}

/*
 * The common get in one short pass: the key's probe chain up to its LIVE
 * slot or an EMPTY one, a copy checked against the word, nothing else.
 * Returns the value's length (copied when it fits in cap), -ENOENT, or 1
 * << 62 when anything is unusual (a slot changing under us, a state or
 * header that needs judging): the caller then runs the full lookup.  A get
 * this short lets the CPU start the next get's memory access before this
 * one's has arrived, which is what a table bigger than the caches needs.
 */
#define GET_SLOW ((int64_t)1 << 62)

static int64_t get_fast(mmipc_kv *kv, const char *key, size_t klen, uint32_t hash, void *buf, size_t cap,
                        uint64_t *version)
{
    uint32_t tag = MMIPC__KV_TAG_OF(hash), nslots = kv->nslots;
    uint32_t i = home_of(hash, nslots);
    prefetch_body(kv, i, klen);
    for (uint32_t n = 0; n < nslots; n++, i = next_slot(i, nslots)) {
        const uint64_t *wp = word_of(kv, i);
        uint64_t w = mmipc__load_acquire(wp);
        uint32_t state = MMIPC__KV_WORD_STATE(w);
        if (state == MMIPC__KV_EMPTY)
            return -ENOENT;
        if (state == MMIPC__KV_TOMB || (state == MMIPC__KV_LIVE && MMIPC__KV_WORD_TAG(w) != tag))
            continue; /* another key's slot: its body stays out of the cache */
        if (state != MMIPC__KV_LIVE)
            return GET_SLOW; /* not a state we write: the full lookup reports it */
        struct mmipc__kv_body *b = body_of(kv, i);
        unsigned half = MMIPC__KV_WORD_HALF(w);
        uint32_t key_len = mmipc__load_relaxed(&b->key_len), val_len = mmipc__load_relaxed(&b->val_len[half]);
        uint32_t h = mmipc__load_relaxed(&b->hash);
        uint64_t v = mmipc__load_relaxed(&b->version[half]);
        if (key_len != klen || h != hash || memcmp(b->key, key, klen) != 0)
            return GET_SLOW; /* a tag collision, or a torn or scribbled slot */
        if (val_len > kv->value_max || v == 0)
            return GET_SLOW;
        if (val_len <= cap)
            copy_value(buf, value_of(kv, b, half), val_len);
        mmipc__fence_acquire();
        if (mmipc__load_relaxed(wp) != w)
            return GET_SLOW;
        if (version != NULL && val_len <= cap)
            *version = v;
        return val_len;
    }
    return GET_SLOW;
}

ssize_t mmipc_kv_get(mmipc_kv *kv, const char *key, void *buf, size_t cap, uint64_t *version)
{
    size_t klen;
    struct snap s;
    if (kv == NULL || (buf == NULL && cap != 0))
        return -EINVAL;
    int rc = mmipc__check_name(key, MMIPC_KEY_MAX, &klen);
    if (rc != 0)
        return rc;
    uint32_t hash = key_hash(key, klen);
    int64_t fast = get_fast(kv, key, klen, hash, buf, cap, version);
    if (fast != GET_SLOW)
        return fast >= 0 && (size_t)fast > cap ? -EMSGSIZE : (ssize_t)fast;
    int64_t at = lookup_any(kv, key, klen, hash, buf, cap, &s);
    if (at < 0)
        return at;
    if (s.val_len > cap)
        return -EMSGSIZE;
    if (version != NULL)
        *version = s.version;
    return (ssize_t)s.val_len;
}

/* Current version of key: 0 if absent, or -errno. */
static int64_t current_version(mmipc_kv *kv, const char *key, size_t klen, uint32_t hash, uint64_t *v)
{
    struct snap s;
    int64_t at = lookup_any(kv, key, klen, hash, NULL, 0, &s);
    if (at == -ENOENT) {
        *v = 0;
        return 0;
    }
    if (at < 0)
        return at;
    *v = s.version;
    return 0;
}

/* ---------------------------------------------------------------- writing (table lock held) */

/* The next version, or 0 if the counter is exhausted (only a scribbled file
 * gets there: 2^64 writes would take centuries). */
static uint64_t next_version(mmipc_kv *kv)
{
    uint64_t v = mmipc__load_relaxed(&kv->t->next_version) + 1;
    if (v == 0 || v == UINT64_MAX)
        return 0;
    mmipc__store_relaxed(&kv->t->next_version, v);
    return v;
}

/*
 * Write the inactive half of slot i and publish it with one store.  The key
 * is kept once per slot, for both halves: it is written only while the slot
 * is not LIVE (an insert into an EMPTY or TOMB slot), which readers skip, so
 * a reader can never take a half-written key for a key; one that read the
 * slot while it was LIVE with the key before sees the word change.  When
 * the slot is LIVE it already holds this key (the caller found it there).
 */
static void publish(mmipc_kv *kv, uint32_t i, uint32_t state, uint64_t version, const char *key, size_t klen,
                    uint32_t hash, const void *val, size_t len)
{
    uint64_t *wp = word_of(kv, i);
    uint64_t w = mmipc__load_relaxed(wp);
    unsigned next = MMIPC__KV_WORD_HALF(w) ^ 1u;
    struct mmipc__kv_body *b = body_of(kv, i);
    if (MMIPC__KV_WORD_STATE(w) != MMIPC__KV_LIVE) {
        mmipc__store_relaxed(&b->hash, hash);
        mmipc__store_relaxed(&b->key_len, (uint32_t)klen);
        memset(b->key, 0, sizeof b->key);
        memcpy(b->key, key, klen);
    }
    mmipc__store_relaxed(&b->version[next], version);
    mmipc__store_relaxed(&b->val_len[next], (uint32_t)len);
    if (len != 0)
        memcpy(value_of(kv, b, next), val, len);
    mmipc__store_release(wp, MMIPC__KV_WORD(MMIPC__KV_WORD_COUNT(w) + 1, MMIPC__KV_TAG_OF(hash), next, state));
}

/* After slot i became a tombstone: if the next slot is EMPTY, no live key's
 * probe chain runs through i, so i and the tombstones just before it can
 * become EMPTY again. */
static void trim_tombstones(mmipc_kv *kv, uint32_t i)
{
    uint32_t n = kv->nslots;
    if (MMIPC__KV_WORD_STATE(mmipc__load_relaxed(word_of(kv, next_slot(i, n)))) != MMIPC__KV_EMPTY)
        return;
    for (uint32_t k = 0; k < n; k++) {
        uint64_t *wp = word_of(kv, i);
        uint64_t w = mmipc__load_relaxed(wp);
        if (MMIPC__KV_WORD_STATE(w) != MMIPC__KV_TOMB)
            return;
        mmipc__store_release(wp, MMIPC__KV_WORD(MMIPC__KV_WORD_COUNT(w) + 1, MMIPC__KV_WORD_TAG(w),
                                                MMIPC__KV_WORD_HALF(w), MMIPC__KV_EMPTY));
        i = i == 0 ? n - 1 : i - 1;
    }
}

/* put/cas core.  expected: UINT64_MAX for an unconditional put. */
static int store(mmipc_kv *kv, const char *key, uint64_t expected, const void *val, size_t len)
{
    size_t klen;
    struct snap s;
    int64_t free_slot = -1;
    if (kv == NULL || (val == NULL && len != 0))
        return -EINVAL;
    int rc = mmipc__check_name(key, MMIPC_KEY_MAX, &klen);
    if (rc != 0)
        return rc;
    if (kv->r->rdonly)
        return -EPERM;
    if (len > kv->value_max)
        return -EMSGSIZE;
    uint32_t hash = key_hash(key, klen);
    rc = lock_table(kv, UNTIMED_LOCK_MS);
    if (rc != 0)
        return rc;
    int64_t at = lookup(kv, key, klen, hash, NULL, 0, 1, &s, &free_slot);
    if (at < 0 && at != -ENOENT) {
        rc = (int)at;
    } else if (expected != UINT64_MAX && (at >= 0 ? s.version : 0) != expected) {
        rc = -ESTALE;
    } else {
        if (at < 0)
            at = free_slot;
        uint64_t v = at < 0 ? 0 : next_version(kv);
        if (at < 0) {
            rc = -ENOSPC;
        } else if (v == 0) {
            rc = -EBADMSG;
        } else {
            publish(kv, (uint32_t)at, MMIPC__KV_LIVE, v, key, klen, hash, val, len);
            mmipc__fetch_add(&kv->t->puts, 1);
        }
    }
    mmipc__mutex_unlock(&kv->t->lock.m);
    if (rc == 0)
        mmipc__cond_broadcast(&kv->t->changed);
    return rc;
}

int mmipc_kv_put(mmipc_kv *kv, const char *key, const void *val, size_t len)
{
    return store(kv, key, UINT64_MAX, val, len);
}

int mmipc_kv_cas(mmipc_kv *kv, const char *key, uint64_t expected, const void *val, size_t len)
{
    if (expected == UINT64_MAX)
        return -ESTALE; /* no key can have that version */
    return store(kv, key, expected, val, len);
}

int mmipc_kv_del(mmipc_kv *kv, const char *key)
{
    size_t klen;
    struct snap s;
    if (kv == NULL)
        return -EINVAL;
    int rc = mmipc__check_name(key, MMIPC_KEY_MAX, &klen);
    if (rc != 0)
        return rc;
    if (kv->r->rdonly)
        return -EPERM;
    uint32_t hash = key_hash(key, klen);
    rc = lock_table(kv, UNTIMED_LOCK_MS);
    if (rc != 0)
        return rc;
    int64_t at = lookup(kv, key, klen, hash, NULL, 0, 1, &s, NULL);
    uint64_t v = at < 0 ? 0 : next_version(kv);
    if (at < 0) {
        rc = (int)at;
    } else if (v == 0) {
        rc = -EBADMSG;
    } else {
        publish(kv, (uint32_t)at, MMIPC__KV_TOMB, v, key, klen, hash, NULL, 0);
        trim_tombstones(kv, (uint32_t)at);
        mmipc__fetch_add(&kv->t->dels, 1);
    }
    mmipc__mutex_unlock(&kv->t->lock.m);
    if (rc == 0)
        mmipc__cond_broadcast(&kv->t->changed);
    return rc;
}

int mmipc_kv_wait(mmipc_kv *kv, const char *key, uint64_t seen, int timeout_ms)
{
    size_t klen;
    uint64_t v;
    struct mmipc__deadline d;
    if (kv == NULL)
        return -EINVAL;
    int rc = mmipc__check_name(key, MMIPC_KEY_MAX, &klen);
    if (rc != 0)
        return rc;
    uint32_t hash = key_hash(key, klen);
    mmipc__deadline_init(&d, timeout_ms);
    for (;;) {
        int64_t vr = current_version(kv, key, klen, hash, &v);
        if (vr < 0)
            return (int)vr;
        if (v != seen)
            return 0;
        if (mmipc__deadline_passed(&d))
            return mmipc__deadline_err(&d);
        if (kv->r->rdonly) {
            /* Cannot announce a sleeper in a read-only mapping: poll. */
            struct timespec ms = {0, 5000000L};
            nanosleep(&ms, NULL);
            continue;
        }
        uint32_t seq = mmipc__cond_arm(&kv->t->changed);
        vr = current_version(kv, key, klen, hash, &v);
        if (vr < 0)
            return (int)vr;
        if (v != seen)
            return 0;
        rc = mmipc__cond_sleep(&kv->t->changed, seq, &d);
        if (rc < 0)
            return rc;
    }
}

int mmipc_kv_foreach(mmipc_kv *kv, mmipc_kv_fn fn, void *arg)
{
    struct snap s;
    if (kv == NULL || fn == NULL)
        return -EINVAL;
    uint8_t *buf = malloc(kv->value_max ? kv->value_max : 1);
    if (buf == NULL)
        return -ENOMEM;
    int rc = 0;
    for (uint32_t i = 0; i < kv->nslots && rc == 0; i++) {
        int match;
        int src =
            snap_slot(kv, i, mmipc__load_acquire(word_of(kv, i)), NULL, 0, 0, buf, kv->value_max, 1, 0, &s, &match);
        if (src == SNAP_BUSY && !kv->r->rdonly && lock_table(kv, UNTIMED_LOCK_MS) == 0) {
            /* Rewritten all along by a stream of writers: read it under the lock. */
            src =
                snap_slot(kv, i, mmipc__load_acquire(word_of(kv, i)), NULL, 0, 0, buf, kv->value_max, 1, 1, &s, &match);
            mmipc__mutex_unlock(&kv->t->lock.m);
        }
        if (src == SNAP_BUSY)
            continue; /* read-only inspection of a slot that never held still */
        if (src != SNAP_OK) {
            rc = src;
            break;
        }
        if (s.state != MMIPC__KV_LIVE)
            continue;
        rc = fn(s.key, buf, s.val_len, s.version, arg);
    }
    free(buf);
    return rc;
}

int mmipc_kv_stat(mmipc_kv *kv, struct mmipc_kv_stat *st)
{
    if (kv == NULL || st == NULL)
        return -EINVAL;
    memset(st, 0, sizeof *st);
    st->slots = kv->nslots;
    st->value_max = kv->value_max;
    st->puts = mmipc__load_relaxed(&kv->t->puts);
    st->dels = mmipc__load_relaxed(&kv->t->dels);
    st->recoveries = mmipc__load_relaxed(&kv->t->recoveries);
    st->last_version = mmipc__load_relaxed(&kv->t->next_version);
    for (uint32_t i = 0; i < kv->nslots; i++) {
        uint32_t state = MMIPC__KV_WORD_STATE(mmipc__load_relaxed(word_of(kv, i)));
        if (state == MMIPC__KV_LIVE)
            st->used++;
        else if (state == MMIPC__KV_TOMB)
            st->tombstones++;
        else if (state != MMIPC__KV_EMPTY)
            return -EBADMSG;
    }
    return 0;
}

/* ---------------------------------------------------------------- create / open */

static void kv_init(void *obj, uint64_t size, void *arg)
{
    const struct geometry *g = arg;
    struct mmipc__kv *t = obj;
    memset(obj, 0, size); /* words: EMPTY */
    t->slots = g->nslots;
    t->value_max = g->value_max;
    t->slot_size = g->slot_size;
    t->words_off = MMIPC__KV_WORDS_OFF;
    t->slots_off = g->slots_off;
    mmipc__mutex_init(&t->lock.m);
    mmipc__cond_init(&t->changed);
    mmipc__store_release(&t->magic, MMIPC__KV_MAGIC);
}

/* Point a handle at the table at obj, whose geometry kv_geometry checked. */
static void attach_table(mmipc_kv *kv, mmipc_region *r, uint8_t *obj, const struct geometry *g)
{
    kv->r = r;
    kv->t = (struct mmipc__kv *)obj;
    kv->words = (uint64_t *)(obj + MMIPC__KV_WORDS_OFF);
    kv->slots = obj + g->slots_off;
    kv->nslots = g->nslots;
    kv->value_max = g->value_max;
    kv->val_off = g->val_off;
    kv->val_stride = g->val_stride;
    kv->slot_size = g->slot_size;
    kv->prefetch_end = prefetch_end_of(g);
}

static int kv_handle(mmipc_region *r, uint64_t off, uint64_t size, mmipc_kv **out)
{
    struct geometry g;
    int rc = kv_geometry(r->base + off, size, &g);
    if (rc != 0)
        return rc;
    mmipc_kv *kv = calloc(1, sizeof *kv);
    if (kv == NULL)
        return -ENOMEM;
    attach_table(kv, r, r->base + off, &g);
    mmipc__track(r, &kv->h);
    *out = kv;
    return 0;
}

int mmipc_kv_create(mmipc_region *r, const char *name, unsigned slots, size_t value_max, mmipc_kv **out)
{
    struct geometry g;
    uint64_t off;
    if (r == NULL || out == NULL || slots == 0 || slots > MMIPC__KV_MAX_SLOTS || value_max > MMIPC__KV_MAX_VALUE)
        return -EINVAL;
    geometry_of(slots, value_max, &g);
    int rc = mmipc__obj_create(r, name, MMIPC_KIND_KV, g.total, kv_init, &g, &off);
    if (rc != 0)
        return rc;
    return kv_handle(r, off, g.total, out);
}

int mmipc_kv_open(mmipc_region *r, const char *name, mmipc_kv **out)
{
    uint64_t off, size;
    if (r == NULL || out == NULL)
        return -EINVAL;
    int rc = mmipc__obj_find(r, name, MMIPC_KIND_KV, &off, &size);
    if (rc != 0)
        return rc;
    return kv_handle(r, off, size, out);
}

/* ---------------------------------------------------------------- region hooks */

void mmipc__kv_cold(mmipc_region *r, uint8_t *obj, uint64_t size)
{
    struct geometry g;
    (void)r;
    if (kv_geometry(obj, size, &g) != 0)
        return;
    struct mmipc__kv *t = (struct mmipc__kv *)obj;
    mmipc__mutex_init(&t->lock.m);
    mmipc__cond_init(&t->changed);
}

int mmipc__kv_check(mmipc_region *r, const char *name, uint8_t *obj, uint64_t size, mmipc_check_fn fn, void *arg)
{
    struct geometry g;
    struct mmipc_kv kv;
    int problems = 0;
    if (kv_geometry(obj, size, &g) != 0) {
        mmipc__report(fn, arg, name, "kv header is corrupt (magic, slots, value_max or slot size)");
        return 1;
    }
    memset(&kv, 0, sizeof kv);
    attach_table(&kv, r, obj, &g);
    uint64_t last = mmipc__load_relaxed(&kv.t->next_version);
    for (uint32_t i = 0; i < g.nslots && problems < 20; i++) {
        struct snap s;
        int match;
        int rc = snap_slot(&kv, i, mmipc__load_acquire(word_of(&kv, i)), NULL, 0, 0, NULL, 0, 0, 0, &s, &match);
        if (rc == SNAP_BUSY)
            continue;
        if (rc != SNAP_OK) {
            mmipc__report(fn, arg, name, "slot %u is corrupt (state, key length, value length or version)", i);
            problems++;
            continue;
        }
        if (s.state != MMIPC__KV_LIVE)
            continue;
        if (s.hash != key_hash(s.key, s.key_len) || strlen(s.key) != s.key_len) {
            mmipc__report(fn, arg, name, "slot %u: key hash does not match its key", i);
            problems++;
            continue;
        }
        if (MMIPC__KV_WORD_TAG(s.word) != MMIPC__KV_TAG_OF(s.hash)) {
            mmipc__report(fn, arg, name, "slot %u: key unreachable (the tag in its word does not match its key)", i);
            problems++; /* the other checks still apply */
        }
        if (s.version == 0 || s.version > last) {
            mmipc__report(fn, arg, name, "slot %u: version %llu outside 1..%llu", i, (unsigned long long)s.version,
                          (unsigned long long)last);
            problems++;
        }
        /* Probe-chain integrity: no EMPTY slot between the key's home and
         * its slot, or lookups cannot find it. */
        for (uint32_t j = home_of(s.hash, g.nslots); j != i; j = next_slot(j, g.nslots)) {
            if (MMIPC__KV_WORD_STATE(mmipc__load_relaxed(word_of(&kv, j))) == MMIPC__KV_EMPTY) {
                mmipc__report(fn, arg, name, "slot %u: key unreachable (empty slot %u in its probe chain)", i, j);
                problems++;
                break;
            }
        }
    }
    return problems;
}
