/*
 * The on-file format of an mmipc region.  This file IS the format: fixed-width
 * types, explicit padding, static asserts on every size and offset.  Any
 * change here bumps MMIPC_FORMAT_MAJOR (incompatible) or _MINOR (compatible
 * additions in reserved space).
 *
 * File:
 *   [0, 4096)                 struct mmipc__hdr (page 0)
 *   [dir_off, +max_objects*128)   struct mmipc__dirent[max_objects]
 *   [lease_off, +max_leases*64)   struct mmipc__lease[max_leases]
 *   [data_off, file_size)     objects, bump-allocated, 64-byte aligned
 *
 * All offsets are from the start of the file; no pointers are ever stored.
 * Every field a process reads from the file is untrusted: it is loaded once,
 * checked against the mapped size, and only then used.
 */
#ifndef MMIPC_LAYOUT_H
#define MMIPC_LAYOUT_H

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

#define MMIPC__MAGIC "MMIPCv1\n"
#define MMIPC__MAGIC_LEN 8
#define MMIPC__FORMAT_MAJOR 4u /* 4: a kv slot keeps its key once, each half's value in lines of its own */
#define MMIPC__FORMAT_MINOR 0u
#define MMIPC__BOM UINT64_C(0x0102030405060708)
#define MMIPC__HDR_SIZE 4096u
#define MMIPC__LINE 64u
#define MMIPC__MAX_LEASES 256u
#define MMIPC__MAX_OBJECTS_LIMIT 65536u

/* A lock slot: room for any sane pthread_mutex_t (glibc x86-64: 40 bytes),
 * and one word its holders may use, on the same line as the lock word
 * (zero in files that never used it). */
typedef union mmipc__lock_slot {
    pthread_mutex_t m;
    struct {
        unsigned char mutex_room[56];
        uint64_t word; /* 56 */
    } aux;
    unsigned char bytes[64];
} __attribute__((aligned(64))) mmipc__lock_slot;
_Static_assert(sizeof(pthread_mutex_t) <= 56, "pthread_mutex_t does not fit its slot");
_Static_assert(sizeof(mmipc__lock_slot) == 64, "lock slot is one cache line");

/* mmipc condition variable: an event count on a futex (see sync.h). */
struct mmipc__cond {
    uint32_t seq;     /* futex word, bumped by every signal that finds a sleeper */
    uint32_t sleeper; /* 1 while someone may be sleeping on seq */
};
_Static_assert(sizeof(struct mmipc__cond) == 8, "cond size");

/* Page 0. */
struct mmipc__hdr {
    char magic[MMIPC__MAGIC_LEN]; /* 0   MMIPC__MAGIC */
    uint64_t bom;                 /* 8   MMIPC__BOM as written by the creator */
    uint16_t major, minor;        /* 16  format version */
    uint16_t ptr_width;           /* 20  sizeof(void *) */
    uint16_t mutex_size;          /* 22  sizeof(pthread_mutex_t) */
    uint16_t mutex_align;         /* 24  alignof(pthread_mutex_t) */
    uint16_t cond_size;           /* 26  sizeof(struct mmipc__cond) */
    uint32_t page_size;           /* 28  creator's page size */
    uint64_t file_size;           /* 32  exact size of the file */
    uint32_t max_objects;         /* 40  directory entries */
    uint32_t max_leases;          /* 44  lease slots */
    uint64_t dir_off;             /* 48 */
    uint64_t lease_off;           /* 56 */
    uint64_t data_off;            /* 64  first byte of object storage */
    uint64_t alloc_next;          /* 72  bump allocator: next free byte (under lock) */
    uint64_t cold_starts;         /* 80  times the locks were re-initialised */
    char libc[32];                /* 88  libc whose lock words are in the file */
    uint8_t reserved0[256 - 120]; /* 120 */
    mmipc__lock_slot lock;        /* 256 guards directory + allocator */
    uint8_t reserved1[MMIPC__HDR_SIZE - 320];
};
_Static_assert(offsetof(struct mmipc__hdr, bom) == 8, "hdr.bom");
_Static_assert(offsetof(struct mmipc__hdr, major) == 16, "hdr.major");
_Static_assert(offsetof(struct mmipc__hdr, page_size) == 28, "hdr.page_size");
_Static_assert(offsetof(struct mmipc__hdr, file_size) == 32, "hdr.file_size");
_Static_assert(offsetof(struct mmipc__hdr, dir_off) == 48, "hdr.dir_off");
_Static_assert(offsetof(struct mmipc__hdr, alloc_next) == 72, "hdr.alloc_next");
_Static_assert(offsetof(struct mmipc__hdr, libc) == 88, "hdr.libc");
_Static_assert(offsetof(struct mmipc__hdr, lock) == 256, "hdr.lock");
_Static_assert(sizeof(struct mmipc__hdr) == MMIPC__HDR_SIZE, "hdr size");

/* Directory entry states. */
#define MMIPC__DIR_FREE 0u
#define MMIPC__DIR_BUILDING 1u /* being created; freed by lock repair if its creator died */
#define MMIPC__DIR_READY 2u

struct mmipc__dirent {
    uint32_t state;  /* 0  MMIPC__DIR_*, published last with a release store */
    uint32_t kind;   /* 4  MMIPC_KIND_RING / MMIPC_KIND_KV */
    uint64_t offset; /* 8  object start, 64-aligned, within [data_off, file_size) */
    uint64_t size;   /* 16 bytes */
    char name[64];   /* 24 NUL-terminated, 1..MMIPC_NAME_MAX bytes */
    uint8_t reserved[40];
};
_Static_assert(offsetof(struct mmipc__dirent, name) == 24, "dirent.name");
_Static_assert(sizeof(struct mmipc__dirent) == 128, "dirent size");

/* Attach lease: who has the region open (DESIGN.md decision 6). */
#define MMIPC__LEASE_FREE 0u
#define MMIPC__LEASE_CLAIMING 1u /* pid written, identity being filled */
#define MMIPC__LEASE_LIVE 2u
#define MMIPC__LEASE_STATE(w) ((uint32_t)((w)&0xffffffffu))
#define MMIPC__LEASE_GEN(w) ((uint32_t)((w) >> 32))
#define MMIPC__LEASE_WORD(state, gen) (((uint64_t)(gen) << 32) | (state))

struct mmipc__lease {
    /* 0: MMIPC__LEASE_* in the low 32 bits, a generation bumped at every
     * claim in the high 32 bits; changed only by 64-bit CAS, so a reaper can
     * never free a slot that was re-claimed under it (no ABA). */
    uint64_t state_gen;
    int32_t pid;         /* 8 */
    uint32_t reserved0;  /* 12 */
    uint64_t start_time; /* 16 /proc/PID/stat field 22 */
    char boot_id[40];    /* 24 /proc/sys/kernel/random/boot_id, NUL-padded */
};
_Static_assert(sizeof(struct mmipc__lease) == 64, "lease size");

/* ---------------------------------------------------------------- rings */
#define MMIPC__RING_MAGIC UINT32_C(0x474e4952) /* "RING" */
#define MMIPC__RING_MIN_CAP 4096u
#define MMIPC__RING_MAX_CAP (UINT64_C(1) << 32) /* record lengths are 32-bit */

/* Every message is a record: a 16-byte header then the payload, padded to
 * 8 bytes.  A record never wraps; the tail end of the buffer is filled with a
 * PAD record instead.  `pos` repeats the record's own absolute position, so a
 * stale header from an earlier lap, a misplaced one, or a pointer handed to
 * commit/release that is not a record's is recognised. */
struct mmipc__rec {
    uint32_t len;   /* payload bytes (PAD: bytes after the header) */
    uint32_t state; /* MMIPC__REC_* in the top 4 bits, owner in the rest */
    uint64_t pos;   /* absolute position of this header */
};
_Static_assert(sizeof(struct mmipc__rec) == 16, "rec size");

#define MMIPC__REC_READY 0x10000000u    /* committed, waiting for a consumer */
#define MMIPC__REC_RESERVED 0x20000000u /* | owner: being written in place */
#define MMIPC__REC_PEEKED 0x30000000u   /* | owner: being read in place */
#define MMIPC__REC_DONE 0x40000000u     /* consumed; head moves past it */
#define MMIPC__REC_PAD 0x50000000u      /* filler up to the end of the buffer */
#define MMIPC__REC_DISCARD 0x60000000u  /* abandoned reservation */
#define MMIPC__REC_KIND(s) ((s)&0xf0000000u)
/* owner: lease slot (8 bits) and the low 16 bits of that slot's generation */
#define MMIPC__REC_OWNER(slot, gen) ((((uint32_t)(slot)&0xffu) << 16) | ((uint32_t)(gen)&0xffffu))
#define MMIPC__REC_OWNER_SLOT(s) (((s) >> 16) & 0xffu)
#define MMIPC__REC_OWNER_GEN(s) ((s)&0xffffu)
_Static_assert(MMIPC__MAX_LEASES <= 256, "lease slot must fit in 8 bits of a record owner");

struct mmipc__ring {
    /* line 0: constant after creation */
    uint32_t magic;       /* 0 */
    uint32_t reserved0;   /* 4 */
    uint64_t capacity;    /* 8  power of two */
    uint64_t max_message; /* 16 */
    uint64_t data_off;    /* 24 from the start of this struct, 64-aligned */
    uint8_t pad0[32];
    /* line 1..: producer side */
    /* producers serialise on plock; plock.aux.word counts tail stores and
     * producer repairs (see producer_tail in ring.c) */
    mmipc__lock_slot plock; /* 64 */
    uint64_t tail;          /* 128 next byte to reserve; published with release */
    uint64_t reserved1;     /* 136 */
    uint64_t send_waits;    /* 144 */
    uint64_t committed;     /* 152 zero-copy commits: a change signal for spinning consumers only */
    uint8_t pad1[32];
    /* consumer side */
    mmipc__lock_slot clock; /* 192 consumers serialise on this */
    uint64_t head;          /* 256 first byte not yet freed; published with release */
    uint64_t received;      /* 264 */
    uint64_t recv_waits;    /* 272 */
    uint64_t recoveries;    /* 280 */
    /* The take in progress: recorded before the take's store so that the
     * repair after a consumer died can tell whether to count it. */
    uint64_t pend_pos;  /* 288 position of the record being taken */
    uint64_t pend_recv; /* 296 value of `received` once it is taken */
    uint8_t pad2[16];
    /* wake-ups, one line each: consumers sleep on nonempty, producers on nonfull */
    struct mmipc__cond nonempty; /* 320 */
    uint8_t pad3[56];
    struct mmipc__cond nonfull; /* 384 */
    uint8_t pad4[56];
    /* 448: message storage at data_off */
};
_Static_assert(offsetof(struct mmipc__ring, plock) == 64, "ring.plock");
_Static_assert(offsetof(struct mmipc__ring, tail) == 128, "ring.tail");
_Static_assert(offsetof(struct mmipc__ring, clock) == 192, "ring.clock");
_Static_assert(offsetof(struct mmipc__ring, head) == 256, "ring.head");
_Static_assert(offsetof(struct mmipc__ring, nonempty) == 320, "ring.nonempty");
_Static_assert(offsetof(struct mmipc__ring, nonfull) == 384, "ring.nonfull");
_Static_assert(sizeof(struct mmipc__ring) == 448, "ring size");
#define MMIPC__RING_DATA_OFF 512u

/* ---------------------------------------------------------------- kv tables */
#define MMIPC__KV_MAGIC UINT32_C(0x5f5f564b) /* "KV__" */
#define MMIPC__KV_MAX_SLOTS (1u << 24)
#define MMIPC__KV_MAX_VALUE (UINT64_C(1) << 30)

/* A kv object is: the header below, then one 64-bit word per slot (the word
 * array), then the slot bodies.  A body (struct mmipc__kv_body) holds the
 * key once and two copies ("halves") of the value, each with its length and
 * version.  A writer fills the inactive half and then publishes it with one
 * release store of the slot's word, so a writer killed at any instant
 * leaves the active half intact and readers never need a repair.  The key
 * is written only while the slot is not LIVE.  Readers check the word
 * before and after copying.
 *
 * Format 4 keeps each value in 64-byte lines of its own from byte 128 of
 * the body (both values from byte 96 when value_max <= 16), so a get on a
 * short key reads two of the body's lines: 256 bytes a slot for 64-byte
 * values, where format 3's two copies of key + value took 320.
 *
 * The words sit apart from the bodies so that a probe chain is walked in one
 * or two cache lines: the word carries a 16-bit tag of the key's hash, and a
 * lookup only touches the body of a slot whose tag matches. */
#define MMIPC__KV_EMPTY 0u /* never used: ends a probe chain */
#define MMIPC__KV_LIVE 1u
#define MMIPC__KV_TOMB 2u /* deleted: probe chains continue past it */
#define MMIPC__KV_WORD_STATE(w) ((uint32_t)((w)&3u))
#define MMIPC__KV_WORD_HALF(w) ((unsigned)(((w) >> 2) & 1u))
#define MMIPC__KV_WORD_TAG(w) ((uint32_t)(((w) >> 3) & 0xffffu))
#define MMIPC__KV_WORD_COUNT(w) ((w) >> 19) /* 45 bits of change count */
#define MMIPC__KV_WORD(count, tag, half, state)                                                                        \
    (((uint64_t)(count) << 19) | ((uint64_t)((tag)&0xffffu) << 3) | ((uint64_t)(half) << 2) | (state))
/* The home slot comes from the hash's high bits (scaled to the table), the
 * tag from its low 16: independent up to 65 536 slots; a bigger table's
 * neighbours share some tag bits (at 2^24 slots, 8 of 16), which only makes
 * a tag match without a key match (an extra body read) more likely. */
#define MMIPC__KV_TAG_OF(hash) ((uint32_t)(hash)&0xffffu)

struct mmipc__kv_body {
    uint64_t version[2]; /* 0  each half's version */
    uint32_t val_len[2]; /* 16 each half's value length */
    uint32_t hash;       /* 24 hash of the key (a filter; the key is compared too) */
    uint32_t key_len;    /* 28 */
    char key[64];        /* 32 key_len bytes, NUL-padded */
    /* 96: MMIPC__KV_VAL_OFF: the values of half 0 and half 1, MMIPC__KV_VAL_STRIDE apart */
};
_Static_assert(sizeof(struct mmipc__kv_body) == 96, "kv body");
#define MMIPC__KV_SMALL_VALUE 16u
#define MMIPC__KV_VAL_OFF(vmax) ((vmax) <= MMIPC__KV_SMALL_VALUE ? 96u : 128u)
#define MMIPC__KV_VAL_STRIDE(vmax)                                                                                     \
    ((vmax) <= MMIPC__KV_SMALL_VALUE ? (((vmax) + 7u) & ~(uint64_t)7u) : (((vmax) + 63u) & ~(uint64_t)63u))

struct mmipc__kv {
    /* line 0: constant after creation */
    uint32_t magic;     /* 0 */
    uint32_t slots;     /* 4 */
    uint64_t value_max; /* 8 */
    uint64_t slot_size; /* 16 bytes per slot body: key, then both values (MMIPC__KV_VAL_OFF), 64-aligned */
    uint64_t slots_off; /* 24 bodies, from the start of this struct: words_off + slots*8, 64-aligned */
    uint64_t words_off; /* 32 the word array, from the start of this struct: always 256 */
    uint8_t pad0[24];
    mmipc__lock_slot lock; /* 64 writers serialise on this */
    uint64_t next_version; /* 128 last version handed out (under lock) */
    uint64_t puts, dels;   /* 136, 144 */
    uint64_t recoveries;   /* 152 */
    uint8_t pad1[32];
    struct mmipc__cond changed; /* 192 broadcast on every put/del that finds a sleeper */
    uint8_t pad2[56];
    /* 256: uint64_t word[slots] (MMIPC__KV_WORD), then the slot bodies */
};
_Static_assert(offsetof(struct mmipc__kv, words_off) == 32, "kv.words_off");
_Static_assert(offsetof(struct mmipc__kv, lock) == 64, "kv.lock");
_Static_assert(offsetof(struct mmipc__kv, next_version) == 128, "kv.next_version");
_Static_assert(offsetof(struct mmipc__kv, changed) == 192, "kv.changed");
_Static_assert(sizeof(struct mmipc__kv) == 256, "kv size");
#define MMIPC__KV_WORDS_OFF 256u

#endif /* MMIPC_LAYOUT_H */
