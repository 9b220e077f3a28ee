/*
 * Rings: bounded FIFO of variable-size messages, many producers, many
 * consumers, crash-safe.
 *
 * Byte positions `tail` (producers) and `head` (consumers) only grow; the
 * buffer offset is position & mask.  Between head and tail lie records, each
 * an 8-byte header {len, state} and its payload, never wrapping (a PAD record
 * fills the end of the buffer instead).
 *
 * Producers serialise on plock.  A copy-send writes the whole record, state
 * READY, and then publishes it with one release store of tail: a producer
 * killed before that store published nothing, after it everything.  A
 * zero-copy reserve publishes a RESERVED record tagged with its owner's lease
 * and commit flips it to READY (one CAS).
 *
 * Consumers serialise on clock.  recv takes the first READY record: it
 * copies it out, then either moves head past it (one release store: the
 * instant the message leaves the ring) or, when an older record is still
 * RESERVED or PEEKED, marks it DONE (one store).  head later moves past
 * contiguous DONE/DISCARD/PAD records.  So an open reservation or peek never
 * stops other messages from flowing.
 *
 * Reservations and peeks of dead processes (lease no longer live) are
 * reclaimed by whoever would otherwise sleep: RESERVED -> DISCARD, PEEKED ->
 * READY (at-least-once).  Producer and consumer words live on separate cache
 * lines and the two sides never share a lock; they meet only through the
 * event counts nonempty/nonfull (DESIGN.md decision 2).
 *
 * Every value read from the file (head, tail, record lengths and states) is
 * checked before use; nonsense yields -EBADMSG.
 */
#include "config.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

#define DEFAULT_SPIN_US 50
#define UNTIMED_LOCK_MS 5000         /* calls without a timeout give up on a stopped peer after this */
#define RECLAIM_EVERY_NS 20000000ull /* look for dead owners at most every 20 ms per handle */
#define REC_HDR ((uint64_t)sizeof(struct mmipc__rec))
#define REC_ALIGN 16u

struct mmipc_ring {
    struct mmipc__handle h;
    mmipc_region *r;
    struct mmipc__ring *q;
    uint8_t *data;
    uint64_t cap, mask, max_msg;
    uint64_t ahead;    /* producers' write-prefetch distance, see prefetch_ahead */
    unsigned spin_us;  /* longest spin, set by mmipc_ring_set_spin */
    unsigned spin_cur; /* adaptive budget in [0, spin_us] (atomic) */
    unsigned spin_probe;
    int may_spin;
    uint64_t head_cache; /* producers' view of head (under plock) */
    /* The tail this handle last stored, and the tail-store count it left in
     * plock.aux.word: while that count is unchanged no other producer (live
     * or dead) has stored a tail since, so the shared tail need not be read
     * (under plock). */
    uint64_t my_tail, my_stores;
    int my_tail_valid;
    uint64_t tail_cache;   /* consumers' view of tail (under clock) */
    uint64_t last_reclaim; /* ns, atomic */
};

/* Records start on 16-byte boundaries, so the gap left at the end of the
 * buffer always has room for a PAD record's header. */
static uint64_t rec_size(uint64_t len)
{
    return mmipc__round_up(REC_HDR + len, REC_ALIGN);
}

static uint64_t now_ns(void)
{
    struct timespec ts;
    mmipc__now(&ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static struct mmipc__rec *rec_at(mmipc_ring *q, uint64_t pos)
{
    return (struct mmipc__rec *)(q->data + (pos & q->mask));
}

/* ---------------------------------------------------------------- geometry */

/* Validate the constant part of a ring header: 0 and the geometry, or
 * -EBADMSG.  Used by open, cold start and check. */
static int ring_geometry(const uint8_t *obj, uint64_t size, uint64_t *cap, uint64_t *max_msg)
{
    const struct mmipc__ring *h = (const struct mmipc__ring *)obj;
    if (size < MMIPC__RING_DATA_OFF)
        return -EBADMSG;
    uint32_t magic = mmipc__load_relaxed(&h->magic);
    uint64_t c = mmipc__load_relaxed(&h->capacity);
    uint64_t m = mmipc__load_relaxed(&h->max_message);
    uint64_t d = mmipc__load_relaxed(&h->data_off);
    if (magic != MMIPC__RING_MAGIC || c < MMIPC__RING_MIN_CAP || c > MMIPC__RING_MAX_CAP || (c & (c - 1)) != 0 ||
        d != MMIPC__RING_DATA_OFF || c > size - d || m != c / 2 - REC_HDR)
        return -EBADMSG;
    *cap = c;
    *max_msg = m;
    return 0;
}

/* Size of the record at pos (checked against the buffer end and the limit
 * `end`), or 0 if it is corrupt.  *st receives its state. */
static inline __attribute__((always_inline)) uint64_t rec_check(mmipc_ring *q, uint64_t pos, uint64_t end, uint32_t *st,
                                                                uint64_t *lenp)
{
    uint64_t off = pos & q->mask;
    struct mmipc__rec *rec = (struct mmipc__rec *)(q->data + off);
    uint64_t size;
    if (q->cap - off < REC_HDR)
        return 0;
    uint32_t state = mmipc__load_acquire(&rec->state);
    uint64_t len = mmipc__load_relaxed(&rec->len);
    if (mmipc__load_relaxed(&rec->pos) != pos)
        return 0; /* stale (earlier lap) or misplaced header */
    switch (MMIPC__REC_KIND(state)) {
    case MMIPC__REC_PAD:
        size = REC_HDR + len;
        if (size != q->cap - off)
            return 0;
        break;
    case MMIPC__REC_READY:
    case MMIPC__REC_RESERVED:
    case MMIPC__REC_PEEKED:
    case MMIPC__REC_DONE:
    case MMIPC__REC_DISCARD:
        if (len > q->max_msg)
            return 0;
        size = rec_size(len);
        if (size > q->cap - off)
            return 0;
        break;
    default:
        return 0;
    }
    if (end < pos || size > end - pos)
        return 0;
    *st = state;
    if (lenp != NULL)
        *lenp = len;
    return size;
}

/* Check head/tail against each other: 0 or -EBADMSG. */
static inline int check_positions(mmipc_ring *q, uint64_t h, uint64_t t)
{
    if ((h | t) & (REC_ALIGN - 1) || t < h || t - h > q->cap)
        return -EBADMSG;
    return 0;
}

/* ---------------------------------------------------------------- consumer side */

/* Move head past contiguous finished records (consumer lock held).  Returns
 * 1 if head moved, 0 if not, -EBADMSG. */
static int advance_head(mmipc_ring *q, uint64_t h, uint64_t t)
{
    uint64_t p = h;
    while (p < t) {
        uint32_t st;
        uint64_t size = rec_check(q, p, t, &st, NULL);
        if (size == 0)
            return -EBADMSG;
        uint32_t k = MMIPC__REC_KIND(st);
        if (k != MMIPC__REC_DONE && k != MMIPC__REC_DISCARD && k != MMIPC__REC_PAD)
            break;
        p += size;
    }
    if (p == h)
        return 0;
    mmipc__store_release(&q->q->head, p);
    return 1;
}

/* Give back what dead owners left between head and tail (consumer lock
 * held).  Returns bit 0: something became READY, bit 1: head moved; or
 * -EBADMSG. */
static int reclaim_locked(mmipc_ring *q)
{
    uint64_t h = mmipc__load_relaxed(&q->q->head);
    uint64_t t = mmipc__load_acquire(&q->q->tail);
    int out = 0;
    if (check_positions(q, h, t) != 0)
        return -EBADMSG;
    for (uint64_t p = h; p < t;) {
        uint32_t st;
        uint64_t size = rec_check(q, p, t, &st, NULL);
        if (size == 0)
            return -EBADMSG;
        uint32_t k = MMIPC__REC_KIND(st);
        if ((k == MMIPC__REC_RESERVED || k == MMIPC__REC_PEEKED) && !mmipc__owner_alive(q->r, st & 0x0fffffffu)) {
            uint32_t want = st;
            uint32_t to = k == MMIPC__REC_RESERVED ? MMIPC__REC_DISCARD : MMIPC__REC_READY;
            if (__atomic_compare_exchange_n(&rec_at(q, p)->state, &want, to, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)) {
                mmipc__fetch_add(&q->q->recoveries, 1);
                if (to == MMIPC__REC_READY)
                    out |= 1;
            }
        }
        p += size;
    }
    int moved = advance_head(q, h, t);
    if (moved < 0)
        return moved;
    return out | (moved ? 2 : 0);
}

/* Announce a take (consumer lock held): after this, a repair can tell from
 * the ring itself whether the take happened and count it exactly once. */
static void take_begin(mmipc_ring *q, uint64_t pos)
{
    mmipc__store_relaxed(&q->q->pend_pos, pos);
    mmipc__store_relaxed(&q->q->pend_recv, mmipc__load_relaxed(&q->q->received) + 1);
}

static void take_end(mmipc_ring *q)
{
    mmipc__store_relaxed(&q->q->received, mmipc__load_relaxed(&q->q->pend_recv));
}

static void repair_consumer(void *arg)
{
    mmipc_ring *q = arg;
    /* A consumer died holding clock.  Everything it did was a single store
     * (head, or a record state), so the ring is consistent; head may still
     * sit on records it already finished, and if its take happened but was
     * not counted yet, count it now. */
    uint64_t h = mmipc__load_relaxed(&q->q->head);
    uint64_t t = mmipc__load_acquire(&q->q->tail);
    uint64_t pos = mmipc__load_relaxed(&q->q->pend_pos);
    uint64_t want = mmipc__load_relaxed(&q->q->pend_recv);
    if (check_positions(q, h, t) == 0) {
        uint32_t st;
        int taken = pos < h;
        if (!taken && pos < t && rec_check(q, pos, t, &st, NULL) != 0)
            taken = MMIPC__REC_KIND(st) == MMIPC__REC_DONE;
        if (taken && want == mmipc__load_relaxed(&q->q->received) + 1)
            mmipc__store_relaxed(&q->q->received, want);
        advance_head(q, h, t);
    }
    mmipc__fetch_add(&q->q->recoveries, 1);
}

static void repair_producer(void *arg)
{
    mmipc_ring *q = arg;
    /* A producer died holding plock.  Records are published by the tail
     * store, so anything it wrote past tail is simply not there; a RESERVED
     * record it published is reclaimed like any abandoned reservation.
     * Bump the tail-store count all the same, so that no handle trusts its
     * copy of the tail across a death. */
    mmipc__bump(&q->q->plock.aux.word);
    mmipc__fetch_add(&q->q->recoveries, 1);
}

/* Reclaim when we would otherwise sleep, rate-limited per handle.  Takes the
 * consumer lock with d's lock deadline; returns reclaim_locked's value, 0 if
 * skipped, or a lock error. */
static int maybe_reclaim(mmipc_ring *q, struct mmipc__deadline *d, int consumer_locked)
{
    uint64_t now = now_ns(), last = __atomic_load_n(&q->last_reclaim, __ATOMIC_RELAXED);
    if (now - last < RECLAIM_EVERY_NS && last != 0)
        return 0;
    __atomic_store_n(&q->last_reclaim, now, __ATOMIC_RELAXED);
    if (consumer_locked)
        return reclaim_locked(q);
    int rc = mmipc__mutex_lock(&q->q->clock.m, d, repair_consumer, q);
    if (rc < 0)
        return rc;
    rc = reclaim_locked(q);
    mmipc__mutex_unlock(&q->q->clock.m);
    if (rc > 0) {
        if (rc & 1)
            mmipc__cond_broadcast(&q->q->nonempty);
        if (rc & 2)
            mmipc__cond_broadcast(&q->q->nonfull);
    }
    return rc;
}

/* The general search for find_ready: from head h with tail t (checked),
 * through pads, taken records and open ones. */
static __attribute__((noinline)) int find_ready_scan(mmipc_ring *q, uint64_t h, uint64_t t, uint64_t *pos,
                                                     uint64_t *len, uint64_t *size, int *blocked, uint64_t *tail)
{
    *blocked = 0;
    int rescanned = 0;
    for (uint64_t p = h;;) {
        if (p >= t) {
            uint64_t t2 = mmipc__load_acquire(&q->q->tail);
            if (t2 == t)
                break;
            if (check_positions(q, h, t2) != 0)
                return -EBADMSG;
            t = t2;
            q->tail_cache = t;
            /* Start over: a record seen RESERVED before this tail was read
             * may be READY now, and one producer's later message (below the
             * new tail) must not be taken before it.  States read after
             * loading a tail are at least as new as that tail. */
            p = h;
            *blocked = 0;
            continue;
        }
        uint32_t st;
        uint64_t rlen;
        uint64_t sz = rec_check(q, p, t, &st, &rlen);
        if (sz == 0)
            return -EBADMSG;
        uint32_t k = MMIPC__REC_KIND(st);
        if (k == MMIPC__REC_READY && *blocked && !rescanned) {
            /* An older record was open when we looked.  If its producer
             * committed it and then this one (two open reservations), this
             * acquire load of READY makes the older commit visible: look
             * again from head once, so one producer's order is kept. */
            rescanned = 1;
            p = h;
            *blocked = 0;
            continue;
        }
        if (k == MMIPC__REC_READY) {
            *pos = p;
            *len = rlen; /* the length checked above, not a second read */
            *size = sz;
            *tail = t;
            return 1;
        }
        if (k == MMIPC__REC_RESERVED || k == MMIPC__REC_PEEKED)
            *blocked = 1;
        p += sz;
    }
    return 0;
}

/* Find the first READY record (consumer lock held).  Returns 1 with its
 * position and length, 0 if none (*blocked set if a RESERVED/PEEKED record
 * stands in the way), or -EBADMSG.  Inline for the common case, a READY
 * record at head (the oldest, so taking it keeps every order); anything
 * else goes to find_ready_scan. */
static inline int find_ready(mmipc_ring *q, uint64_t *pos, uint64_t *len, uint64_t *size, int *blocked, uint64_t *tail)
{
    uint64_t h = mmipc__load_relaxed(&q->q->head);
    /* Records below a tail seen before are published for good, so the
     * producers' line is read again only when everything below the cached
     * tail is taken. */
    uint64_t t = q->tail_cache;
    if (t <= h || t - h > q->cap) {
        t = mmipc__load_acquire(&q->q->tail);
        q->tail_cache = t;
    }
    if (check_positions(q, h, t) != 0)
        return -EBADMSG;
    if (t == h) {
        *blocked = 0;
        return 0; /* empty when tail was read */
    }
    uint32_t st;
    uint64_t rlen;
    uint64_t sz = rec_check(q, h, t, &st, &rlen);
    if (sz == 0)
        return -EBADMSG;
    if (MMIPC__REC_KIND(st) != MMIPC__REC_READY)
        return find_ready_scan(q, h, t, pos, len, size, blocked, tail);
    *pos = h;
    *len = rlen; /* the length checked above, not a second read */
    *size = sz;
    *tail = t;
    return 1;
}

/*
 * Spin (without any lock) until `*word` or `*word2` differs from what was
 * seen, for at most the handle's current budget.  The budget adapts: a spin
 * that ends in success doubles it (up to spin_us), one that runs out halves
 * it, so a peer that is not running right now (both processes on one CPU, or
 * an idle stream) soon costs no spinning at all, while a hot ping-pong keeps
 * spinning.  At zero budget every 16th wait still probes with a short spin.
 * Returns 1 if a word changed.
 */
static int spin_until_changed(mmipc_ring *q, const uint64_t *word, uint64_t seen, const uint64_t *word2, uint64_t seen2)
{
    if (!q->may_spin || q->spin_us == 0)
        return 0;
    unsigned budget = __atomic_load_n(&q->spin_cur, __ATOMIC_RELAXED);
    if (budget == 0) {
        unsigned probe = __atomic_add_fetch(&q->spin_probe, 1, __ATOMIC_RELAXED);
        if ((probe & 15u) != 0)
            return 0;
        budget = 1;
    }
    uint64_t end = now_ns() + (uint64_t)budget * 1000u;
    for (unsigned i = 1;; i++) {
        if (mmipc__load_relaxed(word) != seen || mmipc__load_relaxed(word2) != seen2) {
            unsigned up = budget * 2 + 1;
            __atomic_store_n(&q->spin_cur, up < q->spin_us ? up : q->spin_us, __ATOMIC_RELAXED);
            return 1;
        }
        mmipc__cpu_relax();
        if ((i & 63u) == 0 && now_ns() >= end) {
            __atomic_store_n(&q->spin_cur, budget / 2, __ATOMIC_RELAXED);
            return 0;
        }
    }
}

enum take_mode { TAKE_COPY, TAKE_PEEK };

/* The consumer half of recv and peek. */
static ssize_t consume(mmipc_ring *q, void *buf, size_t cap, const void **ptr, enum take_mode mode, int timeout_ms)
{
    struct mmipc__deadline d;
    uint32_t owner = 0;
    int counted_wait = 0, rc;
    if (q->r->rdonly)
        return -EPERM;
    if (mode == TAKE_PEEK && (rc = mmipc__owner(q->r, &owner)) != 0)
        return rc;
    mmipc__deadline_init(&d, timeout_ms);
    for (;;) {
        rc = mmipc__mutex_lock(&q->q->clock.m, &d, repair_consumer, q);
        if (rc < 0)
            return rc;
        uint64_t pos, len, size, tail;
        int blocked;
        int found = find_ready(q, &pos, &len, &size, &blocked, &tail);
        if (found == 0 && blocked) {
            int reclaimed;
            reclaimed = maybe_reclaim(q, &d, 1);
            if (reclaimed > 0) {
                /* Rare path: wake whoever waits on what the reclaim freed
                 * (no need to drop the lock for that). */
                if (reclaimed & 2)
                    mmipc__cond_broadcast(&q->q->nonfull);
                if (reclaimed & 1)
                    mmipc__cond_broadcast(&q->q->nonempty);
                found = find_ready(q, &pos, &len, &size, &blocked, &tail);
            }
        }
        if (found < 0) {
            mmipc__mutex_unlock(&q->q->clock.m);
            return found;
        }
        if (found == 1) {
            struct mmipc__rec *rec = rec_at(q, pos);
            uint8_t *payload = (uint8_t *)rec + REC_HDR;
            int moved = 0;
            if (mode == TAKE_COPY) {
                if (len > cap) {
                    mmipc__mutex_unlock(&q->q->clock.m);
                    return -EMSGSIZE;
                }
                if (len != 0)
                    memcpy(buf, payload, len);
                take_begin(q, pos);
                uint64_t h = mmipc__load_relaxed(&q->q->head);
                if (pos == h) {
                    /* The instant the message leaves the ring. */
                    mmipc__store_release(&q->q->head, pos + size);
                    if (advance_head(q, pos + size, tail) < 0) {
                        /* a later record is corrupt; ours is taken all the same */
                    }
                    moved = 1;
                } else {
                    /* Older records are still open, or a PAD stands first. */
                    mmipc__store_release(&rec->state, MMIPC__REC_DONE);
                    moved = advance_head(q, h, tail) > 0;
                }
                take_end(q);
            } else {
                mmipc__store_release(&rec->state, MMIPC__REC_PEEKED | owner);
                *ptr = payload;
            }
            mmipc__unlock_broadcast(&q->q->clock.m, &q->q->nonfull, moved);
            return (ssize_t)len;
        }
        /* Nothing to take. */
        uint64_t t_seen = mmipc__load_relaxed(&q->q->tail);
        uint64_t s_seen = mmipc__load_relaxed(&q->q->committed);
        if (mmipc__deadline_passed(&d)) {
            mmipc__mutex_unlock(&q->q->clock.m);
            return mmipc__deadline_err(&d);
        }
        mmipc__mutex_unlock(&q->q->clock.m);
        if (spin_until_changed(q, &q->q->tail, t_seen, &q->q->committed, s_seen))
            continue;
        /* Sleep: arm, then re-check under the lock (Dekker with the
         * producer's publish + broadcast), then sleep one slice. */
        rc = mmipc__mutex_lock(&q->q->clock.m, &d, repair_consumer, q);
        if (rc < 0)
            return rc;
        uint32_t seq = mmipc__cond_arm(&q->q->nonempty);
        found = find_ready(q, &pos, &len, &size, &blocked, &tail);
        mmipc__mutex_unlock(&q->q->clock.m);
        if (found != 0)
            continue; /* data arrived (or corruption: reported on the next pass) */
        if (!counted_wait) {
            counted_wait = 1;
            mmipc__fetch_add(&q->q->recv_waits, 1);
        }
        rc = mmipc__cond_sleep(&q->q->nonempty, seq, &d);
        if (rc < 0)
            return rc;
        if (blocked)
            maybe_reclaim(q, &d, 0);
    }
}

ssize_t mmipc_ring_recv(mmipc_ring *q, void *buf, size_t cap, int timeout_ms)
{
    if (q == NULL || (buf == NULL && cap != 0))
        return -EINVAL;
    return consume(q, buf, cap, NULL, TAKE_COPY, timeout_ms);
}

ssize_t mmipc_ring_peek(mmipc_ring *q, const void **ptr, int timeout_ms)
{
    if (q == NULL || ptr == NULL)
        return -EINVAL;
    return consume(q, NULL, 0, ptr, TAKE_PEEK, timeout_ms);
}

/* Position of the record whose payload is ptr, or -EINVAL. */
static int rec_of_ptr(mmipc_ring *q, const void *ptr, struct mmipc__rec **rec)
{
    const uint8_t *p = ptr;
    if (p < q->data + REC_HDR || p > q->data + q->cap || ((uintptr_t)p & (REC_ALIGN - 1)) != 0)
        return -EINVAL;
    *rec = (struct mmipc__rec *)(uintptr_t)(p - REC_HDR);
    return 0;
}

/* Is rec really the header of the record at absolute position pos, inside
 * [h, t)?  Rejects pointers that merely look like a record (e.g. a copy of a
 * header inside a payload). */
static int rec_is_at(mmipc_ring *q, const struct mmipc__rec *rec, uint64_t pos, uint64_t h, uint64_t t)
{
    return pos >= h && pos < t && (const uint8_t *)rec == q->data + (pos & q->mask);
}

int mmipc_ring_release(mmipc_ring *q, const void *ptr)
{
    struct mmipc__rec *rec;
    struct mmipc__deadline d;
    if (q == NULL || rec_of_ptr(q, ptr, &rec) != 0)
        return -EINVAL;
    if (q->r->rdonly)
        return -EPERM;
    mmipc__deadline_init(&d, UNTIMED_LOCK_MS);
    int rc = mmipc__mutex_lock(&q->q->clock.m, &d, repair_consumer, q);
    if (rc < 0)
        return rc;
    uint64_t h = mmipc__load_relaxed(&q->q->head);
    uint64_t t = mmipc__load_acquire(&q->q->tail);
    uint64_t pos = mmipc__load_relaxed(&rec->pos);
    uint32_t st = mmipc__load_acquire(&rec->state);
    if (check_positions(q, h, t) != 0) {
        mmipc__mutex_unlock(&q->q->clock.m);
        return -EBADMSG;
    }
    if (!rec_is_at(q, rec, pos, h, t) || MMIPC__REC_KIND(st) != MMIPC__REC_PEEKED ||
        !mmipc__owner_is_me(q->r, st & 0x0fffffffu)) {
        mmipc__mutex_unlock(&q->q->clock.m);
        return -EINVAL;
    }
    take_begin(q, pos);
    mmipc__store_release(&rec->state, MMIPC__REC_DONE);
    take_end(q);
    int moved = 0;
    if (check_positions(q, h, t) == 0)
        moved = advance_head(q, h, t) > 0;
    mmipc__unlock_broadcast(&q->q->clock.m, &q->q->nonfull, moved);
    return 0;
}

/* ---------------------------------------------------------------- producer side */

/* Take, for writing, the lines the stream will reach q->ahead bytes after
 * the record [from, to) just written.  The consumer read those lines a lap
 * ago; without this, the stores to them each wait for that CPU to give the
 * line up, all at once at the unlock's barrier, which halved a 64-byte
 * stream.  Only whole lines of free space are touched (below the cached
 * head plus the capacity; the cache is never ahead of the real head), never
 * a line a consumer may still be reading.  A hint: nothing is stored.  The
 * distance covers a cross-CPU line transfer (~200 ns here) at full stream
 * speed. */
#define PREFETCH_AHEAD 2048u
#define PREFETCH_MAX_LINES 8u
static inline void prefetch_ahead(mmipc_ring *q, uint64_t from, uint64_t to)
{
    uint64_t h = __atomic_load_n(&q->head_cache, __ATOMIC_RELAXED);
    uint64_t end = to + q->ahead;
    if (((end + 63) & ~(uint64_t)63) - h > q->cap)
        return; /* the last line would reach the head record's */
    uint64_t p = (from + q->ahead) & ~(uint64_t)63;
    for (unsigned n = 0; p < end && n < PREFETCH_MAX_LINES; p += 64, n++)
        mmipc__prefetch_write(q->data + (p & q->mask));
}

/* The tail, read by a producer holding plock.  The shared word is on the
 * line every consumer polls, so it is usually not in this CPU's cache; the
 * count of tail stores on plock's own line (just taken by the lock) says
 * whether this handle's copy is still right. */
static inline uint64_t producer_tail(mmipc_ring *q)
{
    if (q->my_tail_valid && mmipc__load_relaxed(&q->q->plock.aux.word) == q->my_stores)
        return q->my_tail;
    return mmipc__load_relaxed(&q->q->tail);
}

/* Publish records up to t (plock held).  The count goes first: a producer
 * that dies between the two stores has changed the count, so no handle
 * trusts its copy of a tail that may have moved. */
static inline void publish_tail(mmipc_ring *q, uint64_t t)
{
    uint64_t n = mmipc__load_relaxed(&q->q->plock.aux.word) + 1;
    mmipc__store_relaxed(&q->q->plock.aux.word, n);
    /* The instant the records exist: one release store. */
    mmipc__store_release(&q->q->tail, t);
    q->my_tail = t;
    q->my_stores = n; /* the count as stored, not read back */
    q->my_tail_valid = 1;
}

/* Reserve room for a record of `need` bytes: on success returns 0 with plock
 * HELD and *pos where the record goes (a PAD record is already written if
 * the record had to skip the end of the buffer; tail not yet moved). */
static int produce_begin(mmipc_ring *q, uint64_t need, struct mmipc__deadline *d, uint64_t *pos, uint64_t *new_tail)
{
    int counted_wait = 0, rc;
    for (;;) {
        rc = mmipc__mutex_lock(&q->q->plock.m, d, repair_producer, q);
        if (rc < 0)
            return rc;
        uint64_t t = producer_tail(q);
        uint64_t off = t & q->mask, to_end = q->cap - off;
        uint64_t total = need <= to_end ? need : to_end + need;
        uint64_t h = __atomic_load_n(&q->head_cache, __ATOMIC_RELAXED);
        if (t < h || t - h > q->cap || q->cap - (t - h) < total) {
            h = mmipc__load_acquire(&q->q->head);
            __atomic_store_n(&q->head_cache, h, __ATOMIC_RELAXED);
        }
        if (check_positions(q, h, t) != 0) {
            mmipc__mutex_unlock(&q->q->plock.m);
            return -EBADMSG;
        }
        if (q->cap - (t - h) >= total) {
            if (need > to_end) {
                struct mmipc__rec *pad = rec_at(q, t);
                mmipc__store_relaxed(&pad->len, (uint32_t)(to_end - REC_HDR));
                mmipc__store_relaxed(&pad->state, MMIPC__REC_PAD);
                mmipc__store_relaxed(&pad->pos, t);
                t += to_end;
            }
            *pos = t;
            *new_tail = t + need;
            return 0;
        }
        /* Full. */
        if (mmipc__deadline_passed(d)) {
            mmipc__mutex_unlock(&q->q->plock.m);
            return mmipc__deadline_err(d);
        }
        mmipc__mutex_unlock(&q->q->plock.m);
        uint64_t recv_seen = mmipc__load_relaxed(&q->q->received);
        if (spin_until_changed(q, &q->q->head, h, &q->q->received, recv_seen))
            continue;
        uint32_t seq = mmipc__cond_arm(&q->q->nonfull);
        uint64_t h2 = mmipc__load_acquire(&q->q->head);
        if (h2 != h)
            continue;
        if (!counted_wait) {
            counted_wait = 1;
            mmipc__fetch_add(&q->q->send_waits, 1);
        }
        rc = mmipc__cond_sleep(&q->q->nonfull, seq, d);
        if (rc < 0)
            return rc;
        /* Space may be held by a dead process's reservation or peek. */
        rc = maybe_reclaim(q, d, 0);
        if (rc < 0 && rc != -EBADMSG && mmipc__deadline_passed(d))
            return rc;
    }
}

int mmipc_ring_send(mmipc_ring *q, const void *msg, size_t len, int timeout_ms)
{
    struct mmipc__deadline d;
    uint64_t pos, new_tail;
    if (q == NULL || (msg == NULL && len != 0))
        return -EINVAL;
    if (q->r->rdonly)
        return -EPERM;
    if (len > q->max_msg)
        return -EMSGSIZE;
    mmipc__deadline_init(&d, timeout_ms);
    int rc = produce_begin(q, rec_size(len), &d, &pos, &new_tail);
    if (rc != 0)
        return rc;
    struct mmipc__rec *rec = rec_at(q, pos);
    mmipc__store_relaxed(&rec->len, (uint32_t)len);
    mmipc__store_relaxed(&rec->state, MMIPC__REC_READY);
    mmipc__store_relaxed(&rec->pos, pos);
    mmipc__copy_msg((uint8_t *)rec + REC_HDR, msg, len);
    prefetch_ahead(q, pos, new_tail);
    publish_tail(q, new_tail);
    mmipc__unlock_broadcast(&q->q->plock.m, &q->q->nonempty, 1);
    return 0;
}

int mmipc_ring_reserve(mmipc_ring *q, size_t len, void **ptr, int timeout_ms)
{
    struct mmipc__deadline d;
    uint64_t pos, new_tail;
    uint32_t owner;
    if (q == NULL || ptr == NULL)
        return -EINVAL;
    if (q->r->rdonly)
        return -EPERM;
    if (len > q->max_msg)
        return -EMSGSIZE;
    int rc = mmipc__owner(q->r, &owner);
    if (rc != 0)
        return rc;
    mmipc__deadline_init(&d, timeout_ms);
    rc = produce_begin(q, rec_size(len), &d, &pos, &new_tail);
    if (rc != 0)
        return rc;
    struct mmipc__rec *rec = rec_at(q, pos);
    mmipc__store_relaxed(&rec->len, (uint32_t)len);
    mmipc__store_relaxed(&rec->state, MMIPC__REC_RESERVED | owner);
    mmipc__store_relaxed(&rec->pos, pos);
    prefetch_ahead(q, pos, new_tail);
    publish_tail(q, new_tail);
    mmipc__mutex_unlock(&q->q->plock.m);
    *ptr = (uint8_t *)rec + REC_HDR;
    return 0;
}

int mmipc_ring_commit(mmipc_ring *q, void *ptr)
{
    struct mmipc__rec *rec;
    if (q == NULL || rec_of_ptr(q, ptr, &rec) != 0)
        return -EINVAL;
    if (q->r->rdonly)
        return -EPERM;
    /* head cannot pass an open reservation, so a true one stays in [h, t).
     * Our producers' cached head is never ahead of the real one and keeps
     * commit off the consumers' cache line. */
    uint64_t h = __atomic_load_n(&q->head_cache, __ATOMIC_RELAXED);
    uint64_t t = mmipc__load_acquire(&q->q->tail);
    uint64_t pos = mmipc__load_relaxed(&rec->pos);
    uint32_t st = mmipc__load_acquire(&rec->state);
    /* No lock: h and t were read at different instants, so only each one's
     * own relation to pos is meaningful (t - h may exceed the capacity). */
    if (((h | t) & (REC_ALIGN - 1)) != 0 || t < h)
        return -EBADMSG;
    if (pos - h >= q->cap) /* reserved through another handle, whose cache we lack */
        h = mmipc__load_acquire(&q->q->head);
    if (t - pos > q->cap || pos - h >= q->cap || !rec_is_at(q, rec, pos, h, t) ||
        MMIPC__REC_KIND(st) != MMIPC__REC_RESERVED || !mmipc__owner_is_me(q->r, st & 0x0fffffffu))
        return -EINVAL;
    /* CAS: a reclaimer that wrongly judged us dead must not be overwritten
     * (and we must not publish a record it already discarded). */
    if (!__atomic_compare_exchange_n(&rec->state, &st, MMIPC__REC_READY, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE))
        return -EINVAL;
    mmipc__fetch_add(&q->q->committed, 1);
    mmipc__cond_broadcast(&q->q->nonempty);
    return 0;
}

/* ---------------------------------------------------------------- create / open */

struct ring_init {
    uint64_t cap;
};

static void ring_init(void *obj, uint64_t size, void *arg)
{
    struct ring_init *ri = arg;
    struct mmipc__ring *h = obj;
    (void)size;
    memset(h, 0, sizeof *h);
    h->capacity = ri->cap;
    h->max_message = ri->cap / 2 - REC_HDR;
    h->data_off = MMIPC__RING_DATA_OFF;
    mmipc__mutex_init(&h->plock.m);
    mmipc__mutex_init(&h->clock.m);
    mmipc__cond_init(&h->nonempty);
    mmipc__cond_init(&h->nonfull);
    mmipc__store_release(&h->magic, MMIPC__RING_MAGIC);
}

static int ring_handle(mmipc_region *r, uint64_t off, uint64_t size, mmipc_ring **out)
{
    uint64_t cap, max_msg;
    int rc = ring_geometry(r->base + off, size, &cap, &max_msg);
    if (rc != 0)
        return rc;
    mmipc_ring *q = calloc(1, sizeof *q);
    if (q == NULL)
        return -ENOMEM;
    q->r = r;
    q->q = (struct mmipc__ring *)(r->base + off);
    q->data = r->base + off + MMIPC__RING_DATA_OFF;
    q->cap = cap;
    q->mask = cap - 1;
    q->ahead = cap / 4 < PREFETCH_AHEAD ? cap / 4 : PREFETCH_AHEAD;
    q->max_msg = max_msg;
    q->spin_us = DEFAULT_SPIN_US;
    q->spin_cur = DEFAULT_SPIN_US;
    q->may_spin = mmipc__cpus_allowed() > 1;
    q->head_cache = mmipc__load_acquire(&q->q->head);
    mmipc__track(r, &q->h);
    *out = q;
    return 0;
}

int mmipc_ring_create(mmipc_region *r, const char *name, size_t capacity, mmipc_ring **out)
{
    uint64_t off;
    if (r == NULL || out == NULL)
        return -EINVAL;
    if (capacity > MMIPC__RING_MAX_CAP)
        return -EINVAL;
    uint64_t cap = MMIPC__RING_MIN_CAP;
    while (cap < capacity)
        cap <<= 1;
    struct ring_init ri = {cap};
    int rc = mmipc__obj_create(r, name, MMIPC_KIND_RING, MMIPC__RING_DATA_OFF + cap, ring_init, &ri, &off);
    if (rc != 0)
        return rc;
    return ring_handle(r, off, MMIPC__RING_DATA_OFF + cap, out);
}

int mmipc_ring_open(mmipc_region *r, const char *name, mmipc_ring **out)
{
    uint64_t off, size;
    if (r == NULL || out == NULL)
        return -EINVAL;
    int rc = mmipc__obj_find(r, name, MMIPC_KIND_RING, &off, &size);
    if (rc != 0)
        return rc;
    return ring_handle(r, off, size, out);
}

int mmipc_ring_set_spin(mmipc_ring *q, unsigned spin_us)
{
    if (q == NULL)
        return -EINVAL;
    q->spin_us = spin_us;
    __atomic_store_n(&q->spin_cur, spin_us, __ATOMIC_RELAXED);
    return 0;
}

/* Count the READY and PEEKED records between head and tail without any
 * lock.  The walk is only trusted if head did not move meanwhile (freed
 * records may be overwritten); it retries a few times, then gives up with
 * -EAGAIN.  Returns 0 or -EBADMSG. */
static int count_queued(mmipc_ring *q, uint64_t *h_out, uint64_t *t_out, uint64_t *queued)
{
    for (int attempt = 0; attempt < 64; attempt++) {
        uint64_t h = mmipc__load_acquire(&q->q->head);
        uint64_t t = mmipc__load_acquire(&q->q->tail);
        uint64_t n = 0;
        int bad = check_positions(q, h, t) != 0;
        for (uint64_t p = h; !bad && p < t;) {
            uint32_t st;
            uint64_t sz = rec_check(q, p, t, &st, NULL);
            if (sz == 0) {
                bad = 1;
                break;
            }
            uint32_t k = MMIPC__REC_KIND(st);
            n += k == MMIPC__REC_READY || k == MMIPC__REC_PEEKED;
            p += sz;
        }
        mmipc__fence_acquire();
        if (mmipc__load_relaxed(&q->q->head) != h)
            continue;
        if (bad)
            return -EBADMSG;
        *h_out = h;
        *t_out = t;
        *queued = n;
        return 0;
    }
    return -EAGAIN;
}

int mmipc_ring_stat(mmipc_ring *q, struct mmipc_ring_stat *st)
{
    uint64_t h = 0, t = 0, queued = 0;
    if (q == NULL || st == NULL)
        return -EINVAL;
    memset(st, 0, sizeof *st);
    st->capacity = q->cap;
    st->max_message = q->max_msg;
    st->received = mmipc__load_relaxed(&q->q->received);
    st->send_waits = mmipc__load_relaxed(&q->q->send_waits);
    st->recv_waits = mmipc__load_relaxed(&q->q->recv_waits);
    st->recoveries = mmipc__load_relaxed(&q->q->recoveries);
    int rc = count_queued(q, &h, &t, &queued);
    if (rc != 0)
        return rc;
    /* Counted from the ring itself, so a process killed at any instant can
     * never leave the figures off by one: every message ever sent was either
     * received (an exact count, repaired after a consumer's death) or is
     * still queued. */
    st->used = t - h;
    st->messages = queued;
    st->sent = st->received + queued;
    return 0;
}

/* ---------------------------------------------------------------- region hooks */

void mmipc__ring_cold(mmipc_region *r, uint8_t *obj, uint64_t size)
{
    struct mmipc_ring q;
    struct mmipc__ring *h = (struct mmipc__ring *)obj;
    uint64_t cap, max_msg;
    if (ring_geometry(obj, size, &cap, &max_msg) != 0)
        return; /* corrupt: left alone; open and check report it */
    memset(&q, 0, sizeof q);
    q.r = r;
    q.q = h;
    q.data = obj + MMIPC__RING_DATA_OFF;
    q.cap = cap;
    q.mask = cap - 1;
    q.max_msg = max_msg;
    mmipc__mutex_init(&h->plock.m);
    mmipc__mutex_init(&h->clock.m);
    mmipc__cond_init(&h->nonempty);
    mmipc__cond_init(&h->nonfull);
    /* Nobody is attached, so every reservation and peek is abandoned; leases
     * were all freed, so reclaim sees every owner as dead. */
    reclaim_locked(&q);
}

int mmipc__ring_check(mmipc_region *r, const char *name, uint8_t *obj, uint64_t size, mmipc_check_fn fn, void *arg)
{
    struct mmipc_ring q;
    uint64_t cap, max_msg;
    int problems = 0;
    if (ring_geometry(obj, size, &cap, &max_msg) != 0) {
        mmipc__report(fn, arg, name, "ring header is corrupt (magic, capacity, data offset or max_message)");
        return 1;
    }
    memset(&q, 0, sizeof q);
    q.r = r;
    q.q = (struct mmipc__ring *)obj;
    q.data = obj + MMIPC__RING_DATA_OFF;
    q.cap = cap;
    q.mask = cap - 1;
    q.max_msg = max_msg;
    /* Lock-free walk of a ring that may be live: records behind a moving
     * head can be overwritten under us, so a bad record only counts if head
     * held still during the walk. */
    for (int attempt = 0; attempt < 16; attempt++) {
        uint64_t h = mmipc__load_acquire(&q.q->head), t = mmipc__load_acquire(&q.q->tail);
        uint64_t bad_at = UINT64_MAX;
        int bad_pos = check_positions(&q, h, t) != 0;
        for (uint64_t p = h; !bad_pos && p < t;) {
            uint32_t st;
            uint64_t sz = rec_check(&q, p, t, &st, NULL);
            if (sz == 0) {
                bad_at = p;
                break;
            }
            p += sz;
        }
        mmipc__fence_acquire();
        if (mmipc__load_relaxed(&q.q->head) != h)
            continue;
        if (bad_pos) {
            mmipc__report(fn, arg, name, "head %llu / tail %llu inconsistent (capacity %llu)", (unsigned long long)h,
                          (unsigned long long)t, (unsigned long long)cap);
            problems++;
        } else if (bad_at != UINT64_MAX) {
            mmipc__report(fn, arg, name, "corrupt record at position %llu (offset %llu)", (unsigned long long)bad_at,
                          (unsigned long long)(bad_at & q.mask));
            problems++;
        }
        break;
    }
    return problems;
}
