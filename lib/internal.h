/* What lib/ shares internally (never installed).  Internal non-static names
 * are mmipc__*; the shared library exports only mmipc_*. */
#ifndef MMIPC_INTERNAL_H
#define MMIPC_INTERNAL_H

#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <string.h>
#include <sys/types.h>

#include "atomics.h"
#include "layout.h"
#include "mmipc.h"
#include "sync.h"

/* Every object handle starts with this, so the region can free it. */
struct mmipc__handle {
    struct mmipc__handle *next;
};

struct mmipc_region {
    int fd;
    int rdonly;
    uint8_t *base;
    uint64_t size;
    /* Copies of header fields, validated once at open and never re-read. */
    uint32_t max_objects, max_leases;
    uint64_t dir_off, lease_off, data_off;
    /* Process-local state. */
    pthread_mutex_t local; /* guards handles and lease registration */
    struct mmipc__handle *handles;
    pid_t lease_pid; /* process that owns lease_slot (a forked child gets its own) */
    int lease_slot;  /* -1: none */
    uint32_t lease_gen;
};

static inline int mmipc__in_bounds(uint64_t off, uint64_t len, uint64_t size)
{
    return off <= size && len <= size - off;
}

static inline uint64_t mmipc__round_up(uint64_t v, uint64_t a)
{
    return (v + a - 1) & ~(a - 1);
}

/* The calling process's pid, cached (reset in the child after fork). */
pid_t mmipc__getpid(void);

/* Name/key validation: 0, -EINVAL (NULL or empty), -ENAMETOOLONG.  Inline:
 * a kv get runs it on every call (see kv.c, "Reading"). */
static inline int mmipc__check_name(const char *name, size_t max, size_t *len)
{
    if (name == NULL || name[0] == '\0')
        return -EINVAL;
    size_t n = strnlen(name, max + 1);
    if (n > max)
        return -ENAMETOOLONG;
    if (len != NULL)
        *len = n;
    return 0;
}

/*
 * Create an object of `size` bytes under the region lock: reserves a
 * directory entry (BUILDING), allocates, calls init(obj, size, arg), then
 * publishes it (READY).  Returns 0 and its offset, or -EEXIST, -ENOSPC,
 * -EINVAL, -ENAMETOOLONG, -EPERM, lock errors.
 */
int mmipc__obj_create(mmipc_region *r, const char *name, uint32_t kind, uint64_t size,
                      void (*init)(void *obj, uint64_t size, void *arg), void *arg, uint64_t *off);
/* Find a READY object: 0 with offset and size (validated against the
 * mapping), -ENOENT, -EINVAL (other kind), -EBADMSG. */
int mmipc__obj_find(mmipc_region *r, const char *name, uint32_t kind, uint64_t *off, uint64_t *size);
/* Link a new object handle into the region's list (freed with the region). */
void mmipc__track(mmipc_region *r, struct mmipc__handle *h);

/*
 * The record-owner tag (lease slot + generation) of the calling process,
 * registering a lease first if this process has none (a forked child).
 * 0 or -EUSERS.
 */
int mmipc__owner(mmipc_region *r, uint32_t *owner);
/* 1 if the owner tag still belongs to a live process, 0 if it is dead. */
int mmipc__owner_alive(mmipc_region *r, uint32_t owner);
/* 1 if the owner tag is the calling process's. */
int mmipc__owner_is_me(mmipc_region *r, uint32_t owner);

/* Call a check callback with a formatted problem (NULL fn: count only). */
void mmipc__report(mmipc_check_fn fn, void *arg, const char *obj, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* Per-kind hooks called by region.c. */
void mmipc__ring_cold(mmipc_region *r, uint8_t *obj, uint64_t size);
void mmipc__kv_cold(mmipc_region *r, uint8_t *obj, uint64_t size);
int mmipc__ring_check(mmipc_region *r, const char *name, uint8_t *obj, uint64_t size, mmipc_check_fn fn, void *arg);
int mmipc__kv_check(mmipc_region *r, const char *name, uint8_t *obj, uint64_t size, mmipc_check_fn fn, void *arg);

#endif
