/*
 * mmipc — fast, crash-safe inter-process communication through one shared file.
 *
 * Every process maps the same regular file MAP_SHARED.  The file holds a
 * header, a directory of named objects and the objects themselves:
 *
 *   rings     bounded FIFO queues of variable-size messages, any number of
 *             producer and consumer processes and threads;
 *   kv tables fixed slots of string key -> versioned value, with
 *             compare-and-swap and change waits.
 *
 * Conventions (every function):
 *   - returns 0 (or a non-negative count/length) on success and a NEGATIVE
 *     errno value on failure; errno itself is never used as a side channel.
 *     mmipc_strerror() describes any returned value.
 *   - timeout_ms < 0 waits as long as needed, 0 never waits for space or data
 *     (-EAGAIN when it would have to), > 0 waits at most that long on
 *     CLOCK_MONOTONIC (-ETIMEDOUT).  Locks inside the file are taken with the
 *     same deadline; with timeout_ms == 0 a call may wait a few milliseconds
 *     for another process's critical section and then returns -EAGAIN.
 *   - -EBADMSG: not an mmipc file, or a corrupted one.  -EPROTONOSUPPORT: an
 *     mmipc file of another format version or ABI.  Neither ever crashes.
 *   - handles are opaque, thread-safe, and stay usable in a child after
 *     fork().  Object handles are freed with their region.
 *
 * Crash guarantees: a process SIGKILLed at any instruction never leaves the
 * others blocked and never makes a half-written message or value visible.
 * See README.md, "Crash guarantees", for the exact delivery semantics.
 */
#ifndef MMIPC_H
#define MMIPC_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(__GNUC__) && !defined(MMIPC_STATIC)
#define MMIPC_EXPORT __attribute__((visibility("default")))
#else
#define MMIPC_EXPORT
#endif

typedef struct mmipc_region mmipc_region;
typedef struct mmipc_ring mmipc_ring;
typedef struct mmipc_kv mmipc_kv;

/** Longest object name in bytes, not counting the NUL. */
#define MMIPC_NAME_MAX 63
/** Longest kv key in bytes, not counting the NUL. */
#define MMIPC_KEY_MAX 63

/**
 * Describe an error value returned by any mmipc function (negative or
 * positive errno).  Gives mmipc's own wording for -EBADMSG ("not an mmipc
 * file or corrupted") and -EPROTONOSUPPORT ("mmipc file of another format
 * version or ABI").  Never returns NULL; the string is static.
 */
MMIPC_EXPORT const char *mmipc_strerror(int err);

/** The library version, "MAJOR.MINOR.PATCH". */
MMIPC_EXPORT const char *mmipc_version(void);

/* ------------------------------------------------------------------------ */
/* Regions: one mapped file                                                  */
/* ------------------------------------------------------------------------ */

#define MMIPC_CREATE 0x1 /**< create the file if it does not exist */
#define MMIPC_EXCL 0x2   /**< with MMIPC_CREATE: -EEXIST if it exists */
/**
 * Inspect only: map the file read-only, register no lease, take no lock and
 * never re-initialise anything.  Only the *_stat, *_info, listing, check,
 * mmipc_ring_open, mmipc_kv_open, mmipc_kv_get, mmipc_kv_foreach and mmipc_kv_wait (which then polls
 * every 5 ms instead of sleeping on the futex) work on such a region; the
 * others return -EPERM.  Used by `mmipc stat` and `mmipc check`; works on a file
 * whose locks are held forever by a stopped process.
 */
#define MMIPC_RDONLY 0x4

struct mmipc_region_opts {
    size_t size;          /**< file size when creating; 0 = 1 MiB; rounded up to pages */
    mode_t mode;          /**< permission bits when creating; 0 = 0600 */
    unsigned max_objects; /**< directory entries when creating; 0 = 64 */
};

/**
 * Open (and with MMIPC_CREATE, create) the region file at `path`.
 *
 * Creation is atomic: the file is built unnamed (O_TMPFILE, or a random
 * O_EXCL temporary name in the same directory), sized with posix_fallocate,
 * initialised, and only then linked at `path`.  If another process links
 * first, its region is opened instead (or -EEXIST with MMIPC_EXCL).
 * Opening an existing file ignores `opts`.  If no other process has the file
 * open, every lock and condition word in it is re-initialised (a "cold
 * start") and all data is kept.
 *
 * @param path   file path; a symlink is refused (-ELOOP)
 * @param flags  MMIPC_CREATE, MMIPC_EXCL, MMIPC_RDONLY
 * @param opts   creation options, may be NULL
 * @param out    receives the handle
 * @return 0; -ENOENT (no file and no MMIPC_CREATE), -EEXIST, -ELOOP (symlink),
 *         -EISDIR (directory), -EINVAL (other non-regular file, bad flags or
 *         opts), -EBADMSG (not an mmipc file, corrupted, or its size disagrees
 *         with its header), -EPROTONOSUPPORT (other format version, byte
 *         order, pointer width, lock ABI, or another libc's processes are
 *         attached), -EUSERS (every lease slot is held by a live process),
 *         -ENOSPC (no room for the file), -EACCES and other open(2)/mmap(2)
 *         errors, -ENOMEM.
 */
MMIPC_EXPORT int mmipc_region_open(const char *path, int flags, const struct mmipc_region_opts *opts,
                                   mmipc_region **out);

/**
 * Release the lease, unmap the file and free the region and all its object
 * handles.  Open reservations and peeks of this process become abandoned and
 * are reclaimed by others.  NULL is ignored.  Never blocks.
 */
MMIPC_EXPORT void mmipc_region_close(mmipc_region *r);

/** msync(MS_SYNC) of the whole file: survives power loss afterwards.  -errno of msync. */
MMIPC_EXPORT int mmipc_region_sync(mmipc_region *r);

/** Facts about a region, read without taking any lock. */
struct mmipc_region_info {
    uint32_t format_major, format_minor;
    uint64_t size; /**< file size in bytes */
    uint64_t used; /**< bytes taken by the header, directory and objects */
    uint64_t free; /**< bytes left for new objects */
    uint32_t max_objects, objects;
    uint32_t max_leases, leases; /**< lease slots, and those in use */
    uint32_t page_size;          /**< page size of the creator */
    uint64_t cold_starts;        /**< times every lock was re-initialised */
    char libc[32];               /**< libc whose lock words the file holds, e.g. "glibc 2.36" */
};
/** Fill `info`.  0, or -EBADMSG if the header was corrupted since open. */
MMIPC_EXPORT int mmipc_region_info(mmipc_region *r, struct mmipc_region_info *info);

#define MMIPC_KIND_RING 1
#define MMIPC_KIND_KV 2

struct mmipc_object_info {
    char name[MMIPC_NAME_MAX + 1];
    int kind;        /**< MMIPC_KIND_RING, MMIPC_KIND_KV, or another value if corrupt */
    uint64_t offset; /**< byte offset of the object in the file */
    uint64_t size;   /**< bytes it occupies */
};
typedef int (*mmipc_object_fn)(const struct mmipc_object_info *obj, void *arg);
/**
 * Call fn for each object in the directory, in directory order, without
 * taking any lock.  A non-zero return from fn stops the walk and is returned.
 * @return 0, fn's non-zero value, or -EBADMSG (corrupt directory entry).
 */
MMIPC_EXPORT int mmipc_region_objects(mmipc_region *r, mmipc_object_fn fn, void *arg);

struct mmipc_lease_info {
    uint32_t slot;
    int32_t pid;
    int alive;           /**< 1 if that process still runs, 0 if it died without closing */
    uint64_t start_time; /**< process start time, clock ticks since boot */
};
typedef int (*mmipc_lease_fn)(const struct mmipc_lease_info *lease, void *arg);
/**
 * Call fn for each attach lease in use (who has the region open), without
 * taking any lock.  A non-zero return from fn stops the walk and is returned.
 */
MMIPC_EXPORT int mmipc_region_leases(mmipc_region *r, mmipc_lease_fn fn, void *arg);

typedef void (*mmipc_check_fn)(const char *object, const char *problem, void *arg);
/**
 * Validate every structure of the region read-only (like fsck), without
 * taking any lock.  fn (may be NULL) is called once per problem with the
 * object name ("header", "directory" or an object's name) and a sentence.
 * @return the number of problems found (0 = clean).
 */
MMIPC_EXPORT int mmipc_region_check(mmipc_region *r, mmipc_check_fn fn, void *arg);

/* ------------------------------------------------------------------------ */
/* Rings: bounded FIFO of variable-size messages                             */
/* ------------------------------------------------------------------------ */

/**
 * Create a ring named `name` with `capacity` bytes of message storage
 * (rounded up to a power of two, at least 4 KiB).
 * @return 0; -EEXIST (name taken), -ENOSPC (no room in the region or
 *         directory full), -ENAMETOOLONG (name longer than MMIPC_NAME_MAX),
 *         -EINVAL (empty name, capacity too large), -EPERM (MMIPC_RDONLY),
 *         -EAGAIN/-ETIMEDOUT (region lock held by a stopped process for
 *         seconds), -EBADMSG.
 */
MMIPC_EXPORT int mmipc_ring_create(mmipc_region *r, const char *name, size_t capacity, mmipc_ring **out);
/** Open an existing ring.  -ENOENT, -EINVAL (not a ring, empty name), -ENAMETOOLONG, -EBADMSG. */
MMIPC_EXPORT int mmipc_ring_open(mmipc_region *r, const char *name, mmipc_ring **out);

/**
 * Copy `len` bytes into the ring as one message (len 0 is a valid message).
 * When it returns 0 the message is in the ring and will be received exactly
 * once (unless the file is deleted).  A sender killed inside leaves the whole
 * message or nothing.
 * @return 0; -EMSGSIZE (len > max_message), -EAGAIN (full and timeout_ms == 0,
 *         or lock busy), -ETIMEDOUT, -EBADMSG (corrupt ring), -EPERM.
 */
MMIPC_EXPORT int mmipc_ring_send(mmipc_ring *q, const void *msg, size_t len, int timeout_ms);

/**
 * Take the oldest available message, copying it into buf.
 * The message leaves the ring at one instant inside recv: a consumer killed
 * before it leaves the message for others; one killed after it has taken it
 * (at-most-once).  Use peek/release for at-least-once.
 * @return the message length; -EMSGSIZE (cap too small: the message stays
 *         queued), -EAGAIN (empty and timeout_ms == 0), -ETIMEDOUT, -EBADMSG.
 */
MMIPC_EXPORT ssize_t mmipc_ring_recv(mmipc_ring *q, void *buf, size_t cap, int timeout_ms);

/**
 * Zero-copy send, step 1: reserve `len` bytes in the ring and return a
 * pointer into the mapping in *ptr.  Write the message there, then call
 * mmipc_ring_commit.  Other producers and consumers carry on meanwhile.  If
 * the reserving process dies (or closes the region) first, the reservation is
 * discarded.  Errors as mmipc_ring_send.
 */
MMIPC_EXPORT int mmipc_ring_reserve(mmipc_ring *q, size_t len, void **ptr, int timeout_ms);
/** Publish a reservation.  Any thread of the reserving process may call it.
 *  -EINVAL if ptr is not an open reservation of this process (or was reclaimed). */
MMIPC_EXPORT int mmipc_ring_commit(mmipc_ring *q, void *ptr);

/**
 * Zero-copy receive, step 1: claim the oldest available message and point
 * *ptr at it in place.  Read it, then call mmipc_ring_release.  If the peeking
 * process dies (or closes the region) first, the message is handed to another
 * consumer (at-least-once).  Returns the length; errors as mmipc_ring_recv.
 */
MMIPC_EXPORT ssize_t mmipc_ring_peek(mmipc_ring *q, const void **ptr, int timeout_ms);
/** Free a peeked message.  -EINVAL if ptr is not an open peek of this process. */
MMIPC_EXPORT int mmipc_ring_release(mmipc_ring *q, const void *ptr);

struct mmipc_ring_stat {
    uint64_t capacity;    /**< bytes */
    uint64_t max_message; /**< largest message send/reserve accept */
    uint64_t used;        /**< bytes queued now (records, headers and padding) */
    uint64_t messages;    /**< messages queued now */
    uint64_t sent, received;
    uint64_t send_waits, recv_waits; /**< times a caller had to sleep */
    uint64_t recoveries;             /**< EOWNERDEAD repairs and reclaimed reservations/peeks */
};
/** Fill `st` without taking any lock (works on a wedged ring).  0 or -EBADMSG. */
MMIPC_EXPORT int mmipc_ring_stat(mmipc_ring *q, struct mmipc_ring_stat *st);

/**
 * The longest this handle busy-waits (in microseconds) for data or space
 * before sleeping on the futex.  Default 50; 0 = sleep at once.  The actual
 * spin adapts below this bound: it halves each time a spin runs out without
 * the peer acting (e.g. both processes share one CPU) and doubles when one
 * succeeds.  Never spins when the process may run on one CPU only.
 * Process-local, per handle.
 */
MMIPC_EXPORT int mmipc_ring_set_spin(mmipc_ring *q, unsigned spin_us); /* 0, -EINVAL (NULL) */

/* ------------------------------------------------------------------------ */
/* kv tables: fixed slots, string keys, versioned values                     */
/* ------------------------------------------------------------------------ */

/**
 * Create a kv table of `slots` slots holding values of up to `value_max`
 * bytes.  Errors as mmipc_ring_create; -EINVAL for slots == 0 or sizes that
 * overflow.
 */
MMIPC_EXPORT int mmipc_kv_create(mmipc_region *r, const char *name, unsigned slots, size_t value_max, mmipc_kv **out);
/** Open an existing kv table.  -ENOENT, -EINVAL (not a kv table), -EBADMSG. */
MMIPC_EXPORT int mmipc_kv_open(mmipc_region *r, const char *name, mmipc_kv **out);

/**
 * Store a value.  Every successful put/cas/del gives the key a new version,
 * unique within the table and never reused.  A writer killed inside leaves the
 * old value or the new one, complete.
 * @return 0; -EINVAL (empty key), -ENAMETOOLONG (key longer than
 *         MMIPC_KEY_MAX), -EMSGSIZE (len > value_max), -ENOSPC (table full),
 *         -EBADMSG, -EPERM (MMIPC_RDONLY), -ETIMEDOUT (table lock held for
 *         seconds by a stopped process).
 */
MMIPC_EXPORT int mmipc_kv_put(mmipc_kv *kv, const char *key, const void *val, size_t len);
/**
 * Read a value without taking the lock; never torn.  version may be NULL.
 * @return the value length; -ENOENT, -EMSGSIZE (cap too small), -EINVAL,
 *         -ENAMETOOLONG, -EBADMSG.
 */
MMIPC_EXPORT ssize_t mmipc_kv_get(mmipc_kv *kv, const char *key, void *buf, size_t cap, uint64_t *version);
/** Delete a key (its version becomes "absent", 0).  -ENOENT. */
MMIPC_EXPORT int mmipc_kv_del(mmipc_kv *kv, const char *key);
/** Store only if the key's current version is `expected` (0: only if absent).  -ESTALE otherwise. */
MMIPC_EXPORT int mmipc_kv_cas(mmipc_kv *kv, const char *key, uint64_t expected, const void *val, size_t len);
/**
 * Return 0 as soon as the key's version differs from `seen` (0 stands for
 * "absent": seen 0 waits for the key to appear; deleting a key changes its
 * version to absent).  -EAGAIN (timeout_ms == 0 and unchanged), -ETIMEDOUT.
 * A waiter killed while waiting never blocks writers.
 */
MMIPC_EXPORT int mmipc_kv_wait(mmipc_kv *kv, const char *key, uint64_t seen, int timeout_ms);

/** Calls fn for each key; a non-zero return from fn stops the walk and is returned. */
typedef int (*mmipc_kv_fn)(const char *key, const void *val, size_t len, uint64_t version, void *arg);
MMIPC_EXPORT int mmipc_kv_foreach(mmipc_kv *kv, mmipc_kv_fn fn, void *arg);

struct mmipc_kv_stat {
    uint64_t slots;        /**< slot count */
    uint64_t value_max;    /**< largest value */
    uint64_t used;         /**< live keys */
    uint64_t tombstones;   /**< deleted slots not yet reusable by lookups */
    uint64_t puts, dels;   /**< successful put/cas, del */
    uint64_t recoveries;   /**< EOWNERDEAD repairs */
    uint64_t last_version; /**< highest version handed out */
};
/** Fill `st` without taking any lock.  0 or -EBADMSG. */
MMIPC_EXPORT int mmipc_kv_stat(mmipc_kv *kv, struct mmipc_kv_stat *st);

#ifdef __cplusplus
}
#endif

#endif /* MMIPC_H */
