/*
 * Regions: safe creation, validation, mapping, cold start, the directory of
 * objects and attach leases (DESIGN.md decisions 5-10).
 */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#ifdef HAVE_GNU_GET_LIBC_VERSION
#include <gnu/libc-version.h>
#endif

#include "internal.h"

#define DEFAULT_SIZE (UINT64_C(1) << 20)
#define DEFAULT_OBJECTS 64u
#define GATE_WAIT_MS 10000 /* longest wait for another process's open to finish */
#define CREATE_LOCK_MS 10000

/* ---------------------------------------------------------------- process identity */

static pid_t cached_pid;
static pthread_once_t once = PTHREAD_ONCE_INIT;
static char my_boot_id[40];
static char my_libc[32];

static void after_fork_child(void)
{
    cached_pid = 0;
}

static void read_small_file(const char *path, char *buf, size_t cap)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    ssize_t n = -1;
    memset(buf, 0, cap);
    if (fd >= 0) {
        n = read(fd, buf, cap - 1);
        close(fd);
    }
    if (n <= 0) {
        buf[0] = '\0';
        return;
    }
    buf[n] = '\0';
    buf[strcspn(buf, "\n")] = '\0';
}

static void init_once(void)
{
    char boot[64];
    mmipc__sync_init();
    pthread_atfork(NULL, NULL, after_fork_child);
    read_small_file("/proc/sys/kernel/random/boot_id", boot, sizeof boot);
    memset(my_boot_id, 0, sizeof my_boot_id);
    memcpy(my_boot_id, boot, strnlen(boot, sizeof my_boot_id - 1));
    memset(my_libc, 0, sizeof my_libc);
#ifdef HAVE_GNU_GET_LIBC_VERSION
    snprintf(my_libc, sizeof my_libc, "glibc %s", gnu_get_libc_version());
#else
    snprintf(my_libc, sizeof my_libc, "unknown libc");
#endif
}

pid_t mmipc__getpid(void)
{
    pid_t p = __atomic_load_n(&cached_pid, __ATOMIC_RELAXED);
    if (p == 0) {
        p = getpid();
        __atomic_store_n(&cached_pid, p, __ATOMIC_RELAXED);
    }
    return p;
}

#define PROC_ZOMBIE UINT64_MAX

/* Field 22 of /proc/PID/stat: start time in clock ticks since boot; 0 if it
 * cannot be read, PROC_ZOMBIE if the process has exited (state Z or X: a
 * zombie whose parent has not reaped it still has a /proc entry). */
static uint64_t proc_start_time(pid_t pid)
{
    char path[64], buf[1024];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    read_small_file(path, buf, sizeof buf);
    char *p = strrchr(buf, ')');
    if (p == NULL)
        return 0;
    p++;
    if (p[0] == ' ' && (p[1] == 'Z' || p[1] == 'X'))
        return PROC_ZOMBIE;
    /* after ")" come fields 3, 4, ...; we want 22 */
    for (int field = 3; field < 22 && p != NULL; field++) {
        p = strchr(p + 1, ' ');
    }
    if (p == NULL)
        return 0;
    return strtoull(p + 1, NULL, 10);
}

static struct mmipc__hdr *hdr_of(mmipc_region *r)
{
    return (struct mmipc__hdr *)r->base;
}

static struct mmipc__dirent *dirent_of(mmipc_region *r, uint32_t i)
{
    return (struct mmipc__dirent *)(r->base + r->dir_off) + i;
}

static struct mmipc__lease *lease_of(mmipc_region *r, uint32_t i)
{
    return (struct mmipc__lease *)(r->base + r->lease_off) + i;
}

/* ---------------------------------------------------------------- layout checks */

static uint64_t layout_lease_off(uint32_t max_objects)
{
    return MMIPC__HDR_SIZE + (uint64_t)max_objects * sizeof(struct mmipc__dirent);
}

static uint64_t layout_data_off(uint32_t max_objects, uint32_t max_leases)
{
    return mmipc__round_up(layout_lease_off(max_objects) + (uint64_t)max_leases * sizeof(struct mmipc__lease), 4096);
}

/* Validate a header copy against the real file size.  Layout mismatches are
 * refused, never guessed at (DESIGN.md decision 7). */
static int validate_hdr(const struct mmipc__hdr *h, uint64_t file_size)
{
    if (memcmp(h->magic, MMIPC__MAGIC, MMIPC__MAGIC_LEN) != 0)
        return -EBADMSG;
    if (h->bom != MMIPC__BOM)
        return __builtin_bswap64(h->bom) == MMIPC__BOM ? -EPROTONOSUPPORT : -EBADMSG;
    if (h->major != MMIPC__FORMAT_MAJOR)
        return -EPROTONOSUPPORT;
    if (h->ptr_width != sizeof(void *) || h->mutex_size != sizeof(pthread_mutex_t) ||
        h->mutex_align != _Alignof(pthread_mutex_t) || h->cond_size != sizeof(struct mmipc__cond))
        return -EPROTONOSUPPORT;
    if (h->file_size != file_size)
        return -EBADMSG;
    if (h->max_objects == 0 || h->max_objects > MMIPC__MAX_OBJECTS_LIMIT || h->max_leases == 0 ||
        h->max_leases > MMIPC__MAX_LEASES)
        return -EBADMSG;
    if (h->dir_off != MMIPC__HDR_SIZE || h->lease_off != layout_lease_off(h->max_objects) ||
        h->data_off != layout_data_off(h->max_objects, h->max_leases) || h->data_off > file_size)
        return -EBADMSG;
    return 0;
}

/* ---------------------------------------------------------------- leases */

static int lease_alive_snapshot(const struct mmipc__lease *l, uint64_t word)
{
    pid_t pid = (pid_t)mmipc__load_relaxed(&l->pid);
    uint32_t st = MMIPC__LEASE_STATE(word);
    if (st == MMIPC__LEASE_FREE)
        return 0;
    if (st == MMIPC__LEASE_CLAIMING || pid <= 0)
        return 1; /* being filled in right now */
    if (st == MMIPC__LEASE_LIVE) {
        char boot[sizeof l->boot_id];
        memcpy(boot, l->boot_id, sizeof boot);
        if (my_boot_id[0] != '\0' && memcmp(boot, my_boot_id, sizeof boot) != 0)
            return 0; /* registered in another boot */
        uint64_t want = mmipc__load_relaxed(&l->start_time);
        uint64_t have = proc_start_time(pid);
        if (have == PROC_ZOMBIE)
            return 0;
        if (have == 0)
            return kill(pid, 0) == 0 || errno == EPERM; /* no /proc: trust kill() */
        return have == want;
    }
    return kill(pid, 0) == 0 || errno == EPERM;
}

/* Free leases whose owner provably died.  CAS on the (state, gen) word, so a
 * slot re-claimed meanwhile is left alone. */
static unsigned reap_leases(mmipc_region *r)
{
    unsigned freed = 0;
    for (uint32_t i = 0; i < r->max_leases; i++) {
        struct mmipc__lease *l = lease_of(r, i);
        uint64_t w = mmipc__load_acquire(&l->state_gen);
        if (MMIPC__LEASE_STATE(w) == MMIPC__LEASE_FREE)
            continue;
        /* A claim in progress still shows the slot's previous pid; judging
         * that would free a slot under its new owner.  A claimer killed in
         * that window of a few instructions leaks the slot until the next
         * cold start. */
        if (MMIPC__LEASE_STATE(w) != MMIPC__LEASE_LIVE)
            continue;
        if (lease_alive_snapshot(l, w))
            continue;
        uint64_t expect = w;
        if (mmipc__cas(&l->state_gen, &expect, MMIPC__LEASE_WORD(MMIPC__LEASE_FREE, MMIPC__LEASE_GEN(w))))
            freed++;
    }
    return freed;
}

static int claim_lease(mmipc_region *r)
{
    pid_t me = mmipc__getpid();
    for (int pass = 0; pass < 2; pass++) {
        for (uint32_t i = 0; i < r->max_leases; i++) {
            struct mmipc__lease *l = lease_of(r, i);
            uint64_t w = mmipc__load_acquire(&l->state_gen);
            if (MMIPC__LEASE_STATE(w) != MMIPC__LEASE_FREE)
                continue;
            uint32_t gen = MMIPC__LEASE_GEN(w) + 1;
            if (!mmipc__cas(&l->state_gen, &w, MMIPC__LEASE_WORD(MMIPC__LEASE_CLAIMING, gen)))
                continue;
            mmipc__store_relaxed(&l->pid, (int32_t)me);
            mmipc__store_relaxed(&l->start_time, proc_start_time(me));
            memcpy(l->boot_id, my_boot_id, sizeof l->boot_id);
            mmipc__store_release(&l->state_gen, MMIPC__LEASE_WORD(MMIPC__LEASE_LIVE, gen));
            r->lease_pid = me;
            r->lease_slot = (int)i;
            r->lease_gen = gen;
            return 0;
        }
        if (reap_leases(r) == 0)
            break;
    }
    return -EUSERS;
}

static void release_lease(mmipc_region *r)
{
    if (r->lease_slot < 0 || r->lease_pid != mmipc__getpid())
        return;
    struct mmipc__lease *l = lease_of(r, (uint32_t)r->lease_slot);
    uint64_t w = MMIPC__LEASE_WORD(MMIPC__LEASE_LIVE, r->lease_gen);
    mmipc__cas(&l->state_gen, &w, MMIPC__LEASE_WORD(MMIPC__LEASE_FREE, r->lease_gen));
    r->lease_slot = -1;
}

int mmipc__owner(mmipc_region *r, uint32_t *owner)
{
    int rc = 0;
    if (r->rdonly)
        return -EPERM;
    pid_t me = mmipc__getpid();
    if (r->lease_pid != me || r->lease_slot < 0) {
        pthread_mutex_lock(&r->local);
        if (r->lease_pid != me || r->lease_slot < 0) {
            /* A forked child (or a region whose lease was reaped): the
             * inherited lease belongs to the parent, so take our own. */
            r->lease_slot = -1;
            rc = claim_lease(r);
        }
        pthread_mutex_unlock(&r->local);
        if (rc != 0)
            return rc;
    }
    *owner = MMIPC__REC_OWNER(r->lease_slot, r->lease_gen);
    return 0;
}

int mmipc__owner_is_me(mmipc_region *r, uint32_t owner)
{
    return r->lease_slot >= 0 && r->lease_pid == mmipc__getpid() &&
           owner == MMIPC__REC_OWNER(r->lease_slot, r->lease_gen);
}

int mmipc__owner_alive(mmipc_region *r, uint32_t owner)
{
    uint32_t slot = MMIPC__REC_OWNER_SLOT(owner);
    if (slot >= r->max_leases)
        return 0;
    struct mmipc__lease *l = lease_of(r, slot);
    uint64_t w = mmipc__load_acquire(&l->state_gen);
    if ((MMIPC__LEASE_GEN(w) & 0xffffu) != MMIPC__REC_OWNER_GEN(owner))
        return 0; /* the slot was released and re-claimed since */
    if (MMIPC__LEASE_STATE(w) != MMIPC__LEASE_LIVE)
        return 0;
    if (mmipc__owner_is_me(r, owner))
        return 1;
    return lease_alive_snapshot(l, w);
}

/* ---------------------------------------------------------------- directory */

/* Snapshot a directory entry: 0 and a validated copy, or -EBADMSG. */
static int read_dirent(mmipc_region *r, uint32_t i, struct mmipc__dirent *out)
{
    struct mmipc__dirent *e = dirent_of(r, i);
    out->state = mmipc__load_acquire(&e->state);
    out->kind = mmipc__load_relaxed(&e->kind);
    out->offset = mmipc__load_relaxed(&e->offset);
    out->size = mmipc__load_relaxed(&e->size);
    memcpy(out->name, e->name, sizeof out->name);
    if (out->state != MMIPC__DIR_READY)
        return 0;
    if (memchr(out->name, '\0', sizeof out->name) == NULL || out->name[0] == '\0')
        return -EBADMSG;
    if (out->offset < r->data_off || (out->offset & (MMIPC__LINE - 1)) != 0 ||
        !mmipc__in_bounds(out->offset, out->size, r->size))
        return -EBADMSG;
    return 0;
}

/* Repair after the region-lock owner died: an entry still BUILDING was
 * never published; free it and give its space back if it was the last. */
static void repair_dir(void *arg)
{
    mmipc_region *r = arg;
    struct mmipc__hdr *h = hdr_of(r);
    for (uint32_t i = 0; i < r->max_objects; i++) {
        struct mmipc__dirent *e = dirent_of(r, i);
        if (mmipc__load_relaxed(&e->state) != MMIPC__DIR_BUILDING)
            continue;
        uint64_t off = mmipc__load_relaxed(&e->offset), sz = mmipc__load_relaxed(&e->size);
        if (off >= r->data_off && mmipc__in_bounds(off, sz, r->size) && mmipc__load_relaxed(&h->alloc_next) == off + sz)
            mmipc__store_relaxed(&h->alloc_next, off);
        mmipc__store_release(&e->state, MMIPC__DIR_FREE);
    }
}

int mmipc__obj_create(mmipc_region *r, const char *name, uint32_t kind, uint64_t size,
                      void (*init)(void *obj, uint64_t size, void *arg), void *arg, uint64_t *off)
{
    struct mmipc__hdr *h = hdr_of(r);
    struct mmipc__deadline d;
    size_t nlen;
    int rc = mmipc__check_name(name, MMIPC_NAME_MAX, &nlen);
    if (rc != 0)
        return rc;
    if (r->rdonly)
        return -EPERM;
    mmipc__deadline_init(&d, CREATE_LOCK_MS);
    rc = mmipc__mutex_lock(&h->lock.m, &d, repair_dir, r);
    if (rc < 0)
        return rc;
    int64_t free_idx = -1;
    rc = 0;
    for (uint32_t i = 0; i < r->max_objects; i++) {
        struct mmipc__dirent e;
        int erc = read_dirent(r, i, &e);
        if (e.state == MMIPC__DIR_FREE) {
            if (free_idx < 0)
                free_idx = i;
            continue;
        }
        if (erc != 0)
            continue; /* a corrupt entry is not ours to judge here; check reports it */
        if (strncmp(e.name, name, sizeof e.name) == 0) {
            rc = -EEXIST;
            break;
        }
    }
    if (rc == 0 && free_idx < 0)
        rc = -ENOSPC;
    uint64_t at = 0;
    if (rc == 0) {
        uint64_t next = mmipc__load_relaxed(&h->alloc_next);
        if (next < r->data_off || next > r->size)
            rc = -EBADMSG;
        else {
            at = mmipc__round_up(next, MMIPC__LINE);
            if (at > r->size || size > r->size - at)
                rc = -ENOSPC;
        }
    }
    if (rc == 0) {
        struct mmipc__dirent *e = dirent_of(r, (uint32_t)free_idx);
        mmipc__store_relaxed(&e->kind, kind);
        mmipc__store_relaxed(&e->offset, at);
        mmipc__store_relaxed(&e->size, size);
        memset(e->name, 0, sizeof e->name);
        memcpy(e->name, name, nlen);
        /* BUILDING before the allocation moves, so a repair can undo both. */
        mmipc__store_release(&e->state, MMIPC__DIR_BUILDING);
        mmipc__store_release(&h->alloc_next, at + size);
        init(r->base + at, size, arg);
        mmipc__store_release(&e->state, MMIPC__DIR_READY);
        *off = at;
    }
    mmipc__mutex_unlock(&h->lock.m);
    return rc;
}

int mmipc__obj_find(mmipc_region *r, const char *name, uint32_t kind, uint64_t *off, uint64_t *size)
{
    int rc = mmipc__check_name(name, MMIPC_NAME_MAX, NULL);
    if (rc != 0)
        return rc;
    for (uint32_t i = 0; i < r->max_objects; i++) {
        struct mmipc__dirent e;
        int erc = read_dirent(r, i, &e);
        if (e.state != MMIPC__DIR_READY)
            continue;
        if (strncmp(e.name, name, sizeof e.name) != 0)
            continue;
        if (erc != 0)
            return erc;
        if (e.kind != kind)
            return e.kind == MMIPC_KIND_RING || e.kind == MMIPC_KIND_KV ? -EINVAL : -EBADMSG;
        *off = e.offset;
        *size = e.size;
        return 0;
    }
    return -ENOENT;
}

void mmipc__track(mmipc_region *r, struct mmipc__handle *h)
{
    pthread_mutex_lock(&r->local);
    h->next = r->handles;
    r->handles = h;
    pthread_mutex_unlock(&r->local);
}

/* ---------------------------------------------------------------- open / create */

static int set_errno_rc(void)
{
    return errno != 0 ? -errno : -EIO;
}

/* Serialise the "is anybody attached?" test of concurrent openers with an
 * OFD lock on byte 0: flock cannot be converted atomically, so without this
 * a second opener could see nobody attached in the instant between our
 * exclusive and shared flock and re-initialise the locks we just set up. */
static int gate(int fd, int lock)
{
    struct flock fl = {.l_type = lock ? F_WRLCK : F_UNLCK, .l_whence = SEEK_SET, .l_start = 0, .l_len = 1};
    if (!lock)
        return fcntl(fd, F_OFD_SETLK, &fl) == 0 ? 0 : set_errno_rc();
    for (int waited = 0;; waited++) {
        if (fcntl(fd, F_OFD_SETLK, &fl) == 0)
            return 0;
        if (errno != EAGAIN && errno != EACCES && errno != EINTR)
            return set_errno_rc();
        if (waited >= GATE_WAIT_MS)
            return -ETIMEDOUT;
        struct timespec ms = {0, 1000000L};
        nanosleep(&ms, NULL);
    }
}

/* Nobody else has the file open: every lock word in it is meaningless (a
 * crashed boot, another libc).  Re-initialise them all and keep the data. */
static void cold_start(mmipc_region *r)
{
    struct mmipc__hdr *h = hdr_of(r);
    mmipc__mutex_init(&h->lock.m);
    repair_dir(r);
    for (uint32_t i = 0; i < r->max_leases; i++) {
        struct mmipc__lease *l = lease_of(r, i);
        uint64_t w = mmipc__load_relaxed(&l->state_gen);
        mmipc__store_relaxed(&l->state_gen, MMIPC__LEASE_WORD(MMIPC__LEASE_FREE, MMIPC__LEASE_GEN(w)));
    }
    for (uint32_t i = 0; i < r->max_objects; i++) {
        struct mmipc__dirent e;
        if (read_dirent(r, i, &e) != 0 || e.state != MMIPC__DIR_READY)
            continue;
        if (e.kind == MMIPC_KIND_RING)
            mmipc__ring_cold(r, r->base + e.offset, e.size);
        else if (e.kind == MMIPC_KIND_KV)
            mmipc__kv_cold(r, r->base + e.offset, e.size);
    }
    memcpy(h->libc, my_libc, sizeof h->libc);
    mmipc__store_relaxed(&h->cold_starts, mmipc__load_relaxed(&h->cold_starts) + 1);
}

static mmipc_region *region_alloc(int fd, int rdonly)
{
    mmipc_region *r = calloc(1, sizeof *r);
    if (r == NULL)
        return NULL;
    r->fd = fd;
    r->rdonly = rdonly;
    r->lease_slot = -1;
    pthread_mutex_init(&r->local, NULL);
    return r;
}

static void region_free(mmipc_region *r)
{
    struct mmipc__handle *h = r->handles;
    while (h != NULL) {
        struct mmipc__handle *next = h->next;
        free(h);
        h = next;
    }
    if (r->base != NULL && r->base != MAP_FAILED)
        munmap(r->base, r->size);
    if (r->fd >= 0)
        close(r->fd);
    pthread_mutex_destroy(&r->local);
    free(r);
}

static void adopt_layout(mmipc_region *r, const struct mmipc__hdr *h)
{
    r->size = h->file_size;
    r->max_objects = h->max_objects;
    r->max_leases = h->max_leases;
    r->dir_off = h->dir_off;
    r->lease_off = h->lease_off;
    r->data_off = h->data_off;
}

static int attach_existing(int fd, int rdonly, mmipc_region **out)
{
    struct stat st;
    struct mmipc__hdr h;
    int rc, gated = 0;
    if (fstat(fd, &st) != 0)
        return set_errno_rc();
    if (S_ISDIR(st.st_mode))
        return -EISDIR;
    if (!S_ISREG(st.st_mode))
        return -EINVAL;
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK);
    if ((uint64_t)st.st_size < MMIPC__HDR_SIZE)
        return -EBADMSG;
    if (pread(fd, &h, sizeof h, 0) != (ssize_t)sizeof h)
        return -EBADMSG;
    rc = validate_hdr(&h, (uint64_t)st.st_size);
    if (rc != 0)
        return rc;
    if ((uint64_t)st.st_size > SIZE_MAX)
        return -ENOMEM;

    mmipc_region *r = region_alloc(fd, rdonly);
    if (r == NULL)
        return -ENOMEM;
    adopt_layout(r, &h);
    int cold = 0;
    if (!rdonly) {
        rc = gate(fd, 1);
        if (rc != 0)
            goto fail;
        gated = 1;
        if (flock(fd, LOCK_EX | LOCK_NB) == 0)
            cold = 1;
        else if (flock(fd, LOCK_SH) != 0) {
            rc = set_errno_rc();
            goto fail;
        }
    }
    r->base = mmap(NULL, r->size, PROT_READ | (rdonly ? 0 : PROT_WRITE), MAP_SHARED, fd, 0);
    if (r->base == MAP_FAILED) {
        r->base = NULL;
        rc = set_errno_rc();
        goto fail;
    }
    /* The file may have changed between pread and mmap: judge the mapped
     * header (it is the one we use) and the size we mapped. */
    memcpy(&h, r->base, sizeof h);
    if (fstat(fd, &st) != 0 || (rc = validate_hdr(&h, (uint64_t)st.st_size)) != 0 || h.file_size != r->size ||
        h.max_objects != r->max_objects || h.max_leases != r->max_leases) {
        rc = rc != 0 ? rc : -EBADMSG;
        goto fail;
    }
    if (!rdonly) {
        if (cold) {
            cold_start(r);
            /* Not atomic (flock(2)), which is why we hold the gate. */
            if (flock(fd, LOCK_SH) != 0) {
                rc = set_errno_rc();
                goto fail;
            }
        } else if (memcmp(h.libc, my_libc, sizeof h.libc) != 0) {
            /* Lock words written by another libc, whose processes are
             * attached right now: we cannot share locks with them. */
            rc = -EPROTONOSUPPORT;
            goto fail;
        }
        reap_leases(r);
        rc = claim_lease(r);
        if (rc != 0)
            goto fail;
        gate(fd, 0);
        gated = 0;
    }
    *out = r;
    return 0;
fail:
    if (gated)
        gate(fd, 0);
    r->fd = -1; /* the caller closes fd */
    region_free(r);
    return rc;
}

static void init_header(uint8_t *base, uint64_t size, uint32_t max_objects)
{
    struct mmipc__hdr *h = (struct mmipc__hdr *)base;
    long ps = sysconf(_SC_PAGESIZE);
    memcpy(h->magic, MMIPC__MAGIC, MMIPC__MAGIC_LEN);
    h->bom = MMIPC__BOM;
    h->major = MMIPC__FORMAT_MAJOR;
    h->minor = MMIPC__FORMAT_MINOR;
    h->ptr_width = sizeof(void *);
    h->mutex_size = sizeof(pthread_mutex_t);
    h->mutex_align = _Alignof(pthread_mutex_t);
    h->cond_size = sizeof(struct mmipc__cond);
    h->page_size = (uint32_t)(ps > 0 ? ps : 4096);
    h->file_size = size;
    h->max_objects = max_objects;
    h->max_leases = MMIPC__MAX_LEASES;
    h->dir_off = MMIPC__HDR_SIZE;
    h->lease_off = layout_lease_off(max_objects);
    h->data_off = layout_data_off(max_objects, MMIPC__MAX_LEASES);
    h->alloc_next = h->data_off;
    h->cold_starts = 0;
    memcpy(h->libc, my_libc, sizeof h->libc);
    mmipc__mutex_init(&h->lock.m);
}

/* Open an unnamed file in the directory of `path`: O_TMPFILE, or a random
 * O_EXCL name (returned in tmp) when the filesystem lacks O_TMPFILE. */
static int open_unnamed(const char *path, char *tmp, size_t tmpcap)
{
    char dir[PATH_MAX];
    const char *slash = strrchr(path, '/');
    const char *base = slash ? slash + 1 : path;
    if (slash == NULL)
        snprintf(dir, sizeof dir, ".");
    else if (slash == path)
        snprintf(dir, sizeof dir, "/");
    else if ((size_t)(slash - path) >= sizeof dir)
        return -ENAMETOOLONG;
    else
        snprintf(dir, sizeof dir, "%.*s", (int)(slash - path), path);
    tmp[0] = '\0';
#ifdef HAVE_O_TMPFILE
    int fd = open(dir, O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
    if (fd >= 0)
        return fd;
    if (errno != EOPNOTSUPP && errno != EISDIR && errno != EINVAL)
        return set_errno_rc();
#endif
    for (int tries = 0; tries < 100; tries++) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        unsigned long rnd = (unsigned long)ts.tv_nsec ^ ((unsigned long)getpid() << 16) ^ (unsigned long)tries * 7919u;
        if ((size_t)snprintf(tmp, tmpcap, "%s/.%s.%06lx.tmp", dir, base, rnd & 0xffffffu) >= tmpcap)
            return -ENAMETOOLONG;
        fd = open(tmp, O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
        if (fd >= 0)
            return fd;
        if (errno != EEXIST)
            return set_errno_rc();
    }
    return -EEXIST;
}

static int link_into_place(int fd, const char *tmp, const char *path)
{
    if (tmp[0] != '\0') {
        int rc = linkat(AT_FDCWD, tmp, AT_FDCWD, path, 0) == 0 ? 0 : set_errno_rc();
        unlink(tmp);
        return rc;
    }
    char proc[64];
    snprintf(proc, sizeof proc, "/proc/self/fd/%d", fd);
    if (linkat(AT_FDCWD, proc, AT_FDCWD, path, AT_SYMLINK_FOLLOW) == 0)
        return 0;
    if (errno != ENOENT)
        return set_errno_rc();
    return linkat(fd, "", AT_FDCWD, path, AT_EMPTY_PATH) == 0 ? 0 : set_errno_rc();
}

static int create_new(const char *path, const struct mmipc_region_opts *opts, mmipc_region **out)
{
    uint64_t size = opts && opts->size ? opts->size : DEFAULT_SIZE;
    mode_t mode = opts && opts->mode ? opts->mode : 0600;
    uint32_t max_objects = opts && opts->max_objects ? opts->max_objects : DEFAULT_OBJECTS;
    long ps = sysconf(_SC_PAGESIZE);
    char tmp[PATH_MAX];
    int rc;
    if (ps <= 0)
        ps = 4096;
    if ((mode & ~(mode_t)07777) != 0 || max_objects > MMIPC__MAX_OBJECTS_LIMIT || size > (UINT64_C(1) << 46))
        return -EINVAL;
    size = mmipc__round_up(size, (uint64_t)ps);
    if (size < layout_data_off(max_objects, MMIPC__MAX_LEASES) + 4096)
        size = mmipc__round_up(layout_data_off(max_objects, MMIPC__MAX_LEASES) + 4096, (uint64_t)ps);

    int fd = open_unnamed(path, tmp, sizeof tmp);
    if (fd < 0)
        return fd;
    mmipc_region *r = region_alloc(fd, 0);
    if (r == NULL) {
        rc = -ENOMEM;
        goto fail;
    }
    if (fchmod(fd, mode) != 0) {
        rc = set_errno_rc();
        goto fail;
    }
    rc = posix_fallocate(fd, 0, (off_t)size);
    if (rc == EOPNOTSUPP || rc == EINVAL)
        rc = ftruncate(fd, (off_t)size) == 0 ? 0 : errno;
    if (rc != 0) {
        rc = -rc;
        goto fail;
    }
    r->base = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (r->base == MAP_FAILED) {
        r->base = NULL;
        rc = set_errno_rc();
        goto fail;
    }
    init_header(r->base, size, max_objects);
    adopt_layout(r, hdr_of(r));
    /* Attach (shared flock + lease) before the file has a name, so no
     * opener can ever take it for an unattached file. */
    if (flock(fd, LOCK_SH) != 0) {
        rc = set_errno_rc();
        goto fail;
    }
    rc = claim_lease(r);
    if (rc != 0)
        goto fail;
    rc = link_into_place(fd, tmp, path);
    tmp[0] = '\0';
    if (rc != 0)
        goto fail;
    *out = r;
    return 0;
fail:
    if (tmp[0] != '\0')
        unlink(tmp);
    if (r != NULL)
        region_free(r);
    else
        close(fd);
    return rc;
}

int mmipc_region_open(const char *path, int flags, const struct mmipc_region_opts *opts, mmipc_region **out)
{
    pthread_once(&once, init_once);
    if (path == NULL || path[0] == '\0' || out == NULL)
        return -EINVAL;
    if ((flags & ~(MMIPC_CREATE | MMIPC_EXCL | MMIPC_RDONLY)) != 0 ||
        ((flags & MMIPC_EXCL) && !(flags & MMIPC_CREATE)) || ((flags & MMIPC_RDONLY) && (flags & MMIPC_CREATE)))
        return -EINVAL;
    int rdonly = (flags & MMIPC_RDONLY) != 0;
    *out = NULL;
    for (int attempt = 0; attempt < 64; attempt++) {
        int fd = open(path, (rdonly ? O_RDONLY : O_RDWR) | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK | O_NOCTTY);
        if (fd >= 0) {
            if ((flags & MMIPC_CREATE) && (flags & MMIPC_EXCL)) {
                close(fd);
                return -EEXIST;
            }
            int rc = attach_existing(fd, rdonly, out);
            if (rc != 0)
                close(fd);
            return rc;
        }
        if (errno == ENXIO || errno == ENODEV || errno == EOPNOTSUPP)
            return -EINVAL; /* a socket or device node */
        if (errno != ENOENT || !(flags & MMIPC_CREATE))
            return -errno;
        int rc = create_new(path, opts, out);
        if (rc != -EEXIST || (flags & MMIPC_EXCL))
            return rc;
        /* Another creator linked first: open theirs. */
    }
    return -EAGAIN;
}

void mmipc_region_close(mmipc_region *r)
{
    if (r == NULL)
        return;
    if (!r->rdonly)
        release_lease(r);
    /* We never hold a lock here (DESIGN.md decision 10): every lock in lib/
     * is released before its function returns. */
    region_free(r);
}

int mmipc_region_sync(mmipc_region *r)
{
    if (r == NULL)
        return -EINVAL;
    return msync(r->base, r->size, MS_SYNC) == 0 ? 0 : set_errno_rc();
}

/* ---------------------------------------------------------------- inspection */

int mmipc_region_info(mmipc_region *r, struct mmipc_region_info *info)
{
    struct mmipc__hdr *h = hdr_of(r);
    struct mmipc__hdr copy;
    memset(info, 0, sizeof *info);
    memcpy(&copy, h, sizeof copy);
    if (validate_hdr(&copy, r->size) != 0)
        return -EBADMSG; /* scribbled since open */
    /* Everything from the one validated copy, nothing read again. */
    info->format_major = copy.major;
    info->format_minor = copy.minor;
    info->size = r->size;
    info->page_size = copy.page_size;
    info->max_objects = r->max_objects;
    info->max_leases = r->max_leases;
    info->cold_starts = copy.cold_starts;
    memcpy(info->libc, copy.libc, sizeof info->libc);
    info->libc[sizeof info->libc - 1] = '\0';
    uint64_t next = copy.alloc_next;
    if (next < r->data_off || next > r->size)
        return -EBADMSG;
    info->used = next;
    info->free = r->size - next;
    for (uint32_t i = 0; i < r->max_objects; i++)
        if (mmipc__load_relaxed(&dirent_of(r, i)->state) == MMIPC__DIR_READY)
            info->objects++;
    for (uint32_t i = 0; i < r->max_leases; i++)
        if (MMIPC__LEASE_STATE(mmipc__load_relaxed(&lease_of(r, i)->state_gen)) != MMIPC__LEASE_FREE)
            info->leases++;
    return 0;
}

int mmipc_region_objects(mmipc_region *r, mmipc_object_fn fn, void *arg)
{
    for (uint32_t i = 0; i < r->max_objects; i++) {
        struct mmipc__dirent e;
        int rc = read_dirent(r, i, &e);
        if (e.state != MMIPC__DIR_READY)
            continue;
        if (rc != 0)
            return rc;
        struct mmipc_object_info o;
        memset(&o, 0, sizeof o);
        memcpy(o.name, e.name, sizeof o.name);
        o.kind = (int)e.kind;
        o.offset = e.offset;
        o.size = e.size;
        rc = fn(&o, arg);
        if (rc != 0)
            return rc;
    }
    return 0;
}

int mmipc_region_leases(mmipc_region *r, mmipc_lease_fn fn, void *arg)
{
    pthread_once(&once, init_once);
    for (uint32_t i = 0; i < r->max_leases; i++) {
        struct mmipc__lease *l = lease_of(r, i);
        uint64_t w = mmipc__load_acquire(&l->state_gen);
        if (MMIPC__LEASE_STATE(w) == MMIPC__LEASE_FREE)
            continue;
        struct mmipc_lease_info li = {
            .slot = i,
            .pid = mmipc__load_relaxed(&l->pid),
            .alive = lease_alive_snapshot(l, w),
            .start_time = mmipc__load_relaxed(&l->start_time),
        };
        int rc = fn(&li, arg);
        if (rc != 0)
            return rc;
    }
    return 0;
}

void mmipc__report(mmipc_check_fn fn, void *arg, const char *obj, const char *fmt, ...)
{
    char msg[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (fn != NULL)
        fn(obj, msg, arg);
}

int mmipc_region_check(mmipc_region *r, mmipc_check_fn fn, void *arg)
{
    struct mmipc__hdr h;
    int problems = 0;
    struct stat st;
    if (fstat(r->fd, &st) == 0 && (st.st_mode & S_IWOTH) != 0) {
        /* Opening such a file is safe (the file is untrusted input either
         * way), but any local user can corrupt or wedge it. */
        mmipc__report(fn, arg, "file",
                      "writable by every user (mode %04o): any local user can corrupt it; use 0600 or 0660",
                      (unsigned)(st.st_mode & 07777));
        problems++;
    }
    if (fstat(r->fd, &st) == 0 && (uint64_t)st.st_size != r->size) {
        mmipc__report(fn, arg, "header",
                      "file is %lld bytes but was mapped at %llu (truncated or grown by another process)",
                      (long long)st.st_size, (unsigned long long)r->size);
        /* Pages past a truncated end raise SIGBUS: look no further. */
        return problems + 1;
    }
    memcpy(&h, r->base, sizeof h);
    int hrc = validate_hdr(&h, r->size);
    if (hrc != 0) {
        mmipc__report(fn, arg, "header", "invalid header: %s", mmipc_strerror(hrc));
        return problems + 1;
    }
    if (h.alloc_next < r->data_off || h.alloc_next > r->size) {
        mmipc__report(fn, arg, "header", "allocation pointer %llu outside [%llu, %llu]",
                      (unsigned long long)h.alloc_next, (unsigned long long)r->data_off, (unsigned long long)r->size);
        problems++;
    }
    for (uint32_t i = 0; i < r->max_leases; i++) {
        uint32_t s = MMIPC__LEASE_STATE(mmipc__load_relaxed(&lease_of(r, i)->state_gen));
        if (s > MMIPC__LEASE_LIVE) {
            mmipc__report(fn, arg, "leases", "lease slot %u has invalid state %u", i, s);
            problems++;
        }
    }
    for (uint32_t i = 0; i < r->max_objects; i++) {
        struct mmipc__dirent e;
        int rc = read_dirent(r, i, &e);
        char where[96];
        snprintf(where, sizeof where, "directory[%u]", i);
        if (e.state == MMIPC__DIR_FREE)
            continue;
        if (e.state == MMIPC__DIR_BUILDING) {
            mmipc__report(fn, arg, where, "entry left half-created (its creator died; repaired at the next create)");
            problems++;
            continue;
        }
        if (e.state != MMIPC__DIR_READY) {
            mmipc__report(fn, arg, where, "invalid state %u", e.state);
            problems++;
            continue;
        }
        if (rc != 0) {
            mmipc__report(fn, arg, where,
                          "invalid entry (name not terminated, or offset %llu size %llu outside the file)",
                          (unsigned long long)e.offset, (unsigned long long)e.size);
            problems++;
            continue;
        }
        if (e.offset + e.size > h.alloc_next) {
            mmipc__report(fn, arg, e.name, "object extends past the allocation pointer");
            problems++;
        }
        for (uint32_t j = 0; j < i; j++) {
            struct mmipc__dirent o;
            if (read_dirent(r, j, &o) != 0 || o.state != MMIPC__DIR_READY)
                continue;
            if (strncmp(o.name, e.name, sizeof e.name) == 0) {
                mmipc__report(fn, arg, e.name, "name appears twice in the directory");
                problems++;
            }
            if (e.offset < o.offset + o.size && o.offset < e.offset + e.size) {
                mmipc__report(fn, arg, e.name, "object overlaps object '%s'", o.name);
                problems++;
            }
        }
        if (e.kind == MMIPC_KIND_RING)
            problems += mmipc__ring_check(r, e.name, r->base + e.offset, e.size, fn, arg);
        else if (e.kind == MMIPC_KIND_KV)
            problems += mmipc__kv_check(r, e.name, r->base + e.offset, e.size, fn, arg);
        else {
            mmipc__report(fn, arg, e.name, "unknown object kind %u", e.kind);
            problems++;
        }
    }
    return problems;
}
