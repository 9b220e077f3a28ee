/* Hostile files and peers: what mmipc does when the file at the path, its
 * owner, its permissions, its size or its format is not what the opener
 * expects, and when a peer holds a lock forever (stopped with SIGSTOP).
 * Each case must give a clear error (or a documented outcome), never a
 * crash or a hang.  White-box where it must forge things: lib/layout.h for
 * header offsets, and a helper that locks a mutex inside the mapped file
 * directly. */
#define _GNU_SOURCE
#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <pthread.h>
#include <pwd.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "helpers.h"
#include "layout.h"

#define LOAD(p) __atomic_load_n((p), __ATOMIC_ACQUIRE)
#define STORE(p, v) __atomic_store_n((p), (v), __ATOMIC_RELEASE)

/* What helper processes share with the test. */
struct shared {
    int ready, go, rc;
    uint64_t off;
};
static struct shared *sh;

#define MAX_KIDS 8
static pid_t kids[MAX_KIDS];
static int nkids;

/* Deadlines stretch under valgrind and with CK_TIMEOUT_MULTIPLIER. */
static int slow(int ms)
{
    static int mult;
    if (mult == 0) {
        const char *e = getenv("CK_TIMEOUT_MULTIPLIER");
        const char *pre = getenv("LD_PRELOAD");
        mult = e != NULL && atoi(e) > 0 ? atoi(e) : 1;
        if (pre != NULL && strstr(pre, "vgpreload") != NULL && mult < 20)
            mult = 20;
    }
    return ms * mult;
}

static pid_t spawn(int (*fn)(void *), void *arg)
{
    ck_assert_int_lt(nkids, MAX_KIDS);
    pid_t pid = th_spawn(fn, arg);
    kids[nkids++] = pid;
    return pid;
}

static void forget(pid_t pid)
{
    for (int i = 0; i < nkids; i++)
        if (kids[i] == pid) {
            kids[i] = kids[--nkids];
            return;
        }
}

static int reap(pid_t pid, int timeout_ms)
{
    int st = th_wait(pid, slow(timeout_ms));
    forget(pid);
    return st;
}

static void setup(void)
{
    sh = mmap(NULL, sizeof *sh, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    ck_assert_msg(sh != MAP_FAILED, "mmap: %s", strerror(errno));
    nkids = 0;
}

static void teardown(void)
{
    while (nkids > 0) {
        th_kill(kids[0]);
        forget(kids[0]);
    }
    if (sh != NULL && sh != MAP_FAILED)
        munmap(sh, sizeof *sh);
    sh = NULL;
    th_cleanup();
}

/* Poll *p until it is non-zero; 1 on success, 0 after timeout_ms. */
static int wait_flag(int *p, int timeout_ms)
{
    uint64_t end = th_now_ms() + (uint64_t)slow(timeout_ms);
    while (LOAD(p) == 0) {
        if (th_now_ms() >= end)
            return 0;
        th_sleep_ms(1);
    }
    return 1;
}

static int try_open(const char *path, int flags)
{
    mmipc_region *r = NULL;
    struct mmipc_region_opts o = {.size = 1 << 16};
    int rc = mmipc_region_open(path, flags, &o, &r);
    if (rc == 0)
        mmipc_region_close(r);
    return rc;
}

#define EXPECT_OPEN(path, flags, want)                                                                                 \
    do {                                                                                                               \
        int rc_ = try_open((path), (flags));                                                                           \
        ck_assert_msg(rc_ == (want), "open %s (flags %#x): %d (%s), want %s", (path), (unsigned)(flags), rc_,          \
                      mmipc_strerror(rc_), #want);                                                                     \
    } while (0)

static int under_asan(void)
{
#if defined(__SANITIZE_ADDRESS__)
    return 1;
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
    return 1;
#else
    return 0;
#endif
#else
    return 0;
#endif
}

/* Problems mmipc_region_check finds in a file opened read-only. */
static int check_problems(const char *path)
{
    mmipc_region *r = NULL;
    int rc = mmipc_region_open(path, MMIPC_RDONLY, NULL, &r);
    ck_assert_msg(rc == 0, "open %s: %s", path, mmipc_strerror(rc));
    int n = mmipc_region_check(r, NULL, NULL);
    mmipc_region_close(r);
    return n;
}

/* A region with one ring "q" and one kv table "kv", closed again. */
static const char *make_region(const char *name, mode_t mode)
{
    struct mmipc_region_opts o = {.size = 1 << 16, .mode = mode, .max_objects = 4};
    mmipc_region *r;
    mmipc_ring *q;
    mmipc_kv *kv;
    const char *path = th_path(name);
    int rc = mmipc_region_open(path, MMIPC_CREATE | MMIPC_EXCL, &o, &r);
    ck_assert_msg(rc == 0, "create %s: %s", path, mmipc_strerror(rc));
    ck_assert_int_eq(mmipc_ring_create(r, "q", 4096, &q), 0);
    ck_assert_int_eq(mmipc_kv_create(r, "kv", 8, 32, &kv), 0);
    mmipc_region_close(r);
    return path;
}

static void read_file(const char *path, char *buf, size_t cap)
{
    int fd = open(path, O_RDONLY);
    ck_assert_int_ge(fd, 0);
    ssize_t n = read(fd, buf, cap - 1);
    ck_assert_int_ge(n, 0);
    buf[n] = '\0';
    close(fd);
}

static void patch(const char *path, off_t off, const void *bytes, size_t len)
{
    int fd = open(path, O_WRONLY);
    ck_assert_int_ge(fd, 0);
    ck_assert_int_eq(pwrite(fd, bytes, len, off), (ssize_t)len);
    close(fd);
}

#define PATCH_FIELD(path, field, value)                                                                                \
    do {                                                                                                               \
        __typeof__(((struct mmipc__hdr *)0)->field) v_ = (value);                                                      \
        patch((path), offsetof(struct mmipc__hdr, field), &v_, sizeof v_);                                             \
    } while (0)

/* ---------------------------------------------------------------- symlinks */

/* A symlink planted at the path (say, pointing at a file of the victim's):
 * never followed, not even to create; the target is left untouched. */
START_TEST(test_symlink)
{
    static const char precious[] = "precious data, not an mmipc file\n";
    const char *target = th_path("precious");
    const char *link = th_path("planted");
    char buf[128];
    int fd = open(target, O_WRONLY | O_CREAT | O_EXCL, 0600);
    ck_assert_int_ge(fd, 0);
    ck_assert_int_eq(write(fd, precious, sizeof precious - 1), (ssize_t)sizeof precious - 1);
    close(fd);
    ck_assert_int_eq(symlink(target, link), 0);

    EXPECT_OPEN(link, 0, -ELOOP);
    EXPECT_OPEN(link, MMIPC_RDONLY, -ELOOP);
    EXPECT_OPEN(link, MMIPC_CREATE, -ELOOP);
    EXPECT_OPEN(link, MMIPC_CREATE | MMIPC_EXCL, -ELOOP);
    read_file(target, buf, sizeof buf);
    ck_assert_str_eq(buf, precious);

    /* Pointing at a valid region does not help either. */
    const char *region = make_region("region", 0);
    const char *link2 = th_path("to-region");
    ck_assert_int_eq(symlink(region, link2), 0);
    EXPECT_OPEN(link2, 0, -ELOOP);
    EXPECT_OPEN(link2, MMIPC_RDONLY, -ELOOP);

    /* Dangling: MMIPC_CREATE must not create the target through it. */
    const char *nowhere = th_path("nowhere");
    const char *link3 = th_path("dangling");
    ck_assert_int_eq(symlink(nowhere, link3), 0);
    EXPECT_OPEN(link3, MMIPC_CREATE, -ELOOP);
    ck_assert_int_eq(access(nowhere, F_OK), -1);
}
END_TEST

/* ---------------------------------------------------------------- owners and modes */

static uid_t nobody_uid;
static gid_t nobody_gid;

struct as_nobody {
    const char *path;
    int flags;
};

/* In a child: drop to nobody and open; the exit code is 100 + (-rc), or 77
 * if the path is not even reachable by nobody. */
static int open_as_nobody(void *arg)
{
    struct as_nobody *a = arg;
    struct stat st;
    if (setgroups(0, NULL) != 0 || setgid(nobody_gid) != 0 || setuid(nobody_uid) != 0)
        return 2;
    if (stat(a->path, &st) != 0)
        return 77;
    mmipc_region *r;
    int rc = mmipc_region_open(a->path, a->flags, NULL, &r);
    if (rc == 0)
        mmipc_region_close(r);
    return 100 + (-rc);
}

#define UNREACHABLE 1000

static int nobody_open(const char *path, int flags)
{
    struct as_nobody a = {path, flags};
    int st = reap(spawn(open_as_nobody, &a), 10000);
    if (st == 77)
        return UNREACHABLE;
    ck_assert_msg(st >= 100, "open as nobody: helper failed (%d)", st);
    return -(st - 100);
}

/*
 * A region owned by another user.  Documented behaviour: mmipc does no
 * ownership check of its own; access is what open(2) allows.  So root opens
 * anybody's region (and a cold start by root rewrites its lock words, the
 * file staying the owner's), and another user gets -EACCES on a 0600 file,
 * or read-only access (MMIPC_RDONLY) to a 0644 one.
 */
START_TEST(test_other_owner)
{
    if (geteuid() != 0) {
        printf("hostile: other_owner skipped: needs root to chown a file to nobody\n");
        return;
    }
    struct passwd *pw = getpwnam("nobody");
    nobody_uid = pw ? pw->pw_uid : 65534;
    nobody_gid = pw ? pw->pw_gid : 65534;
    /* Let nobody reach the test directory (it is created 0700). */
    ck_assert_int_eq(chmod(th_dir(), 0711), 0);

    const char *theirs = make_region("theirs", 0600);
    ck_assert_int_eq(chown(theirs, nobody_uid, nobody_gid), 0);
    EXPECT_OPEN(theirs, 0, 0); /* root: no ownership check */
    EXPECT_OPEN(theirs, MMIPC_RDONLY, 0);
    struct stat st;
    ck_assert_int_eq(stat(theirs, &st), 0);
    ck_assert_uint_eq(st.st_uid, nobody_uid); /* still theirs after root's cold start */
    int rc = nobody_open(theirs, 0);
    if (rc == UNREACHABLE) {
        printf("hostile: other_owner partly skipped: nobody cannot reach %s\n", th_dir());
        return;
    }
    ck_assert_int_eq(rc, 0);

    const char *mine = make_region("mine", 0600);
    ck_assert_int_eq(nobody_open(mine, 0), -EACCES);
    ck_assert_int_eq(nobody_open(mine, MMIPC_RDONLY), -EACCES);
    ck_assert_int_eq(nobody_open(mine, MMIPC_CREATE), -EACCES);

    const char *readable = make_region("readable", 0644);
    ck_assert_int_eq(nobody_open(readable, MMIPC_RDONLY), 0);
    ck_assert_int_eq(nobody_open(readable, 0), -EACCES);
}
END_TEST

/*
 * A group- or world-writable region.  The rule, asserted here: it
 * opens, like any file open(2) lets us write (anyone who can write it can
 * corrupt it, which every call survives with -EBADMSG, but can also forge
 * messages).  The mode asked for at creation is applied exactly (umask
 * aside), so such a file is always somebody's explicit choice.
 */
START_TEST(test_writable_by_others)
{
    struct stat st;
    mode_t old = umask(022);
    const char *world = make_region("world", 0666);
    umask(old);
    ck_assert_int_eq(stat(world, &st), 0);
    ck_assert_uint_eq(st.st_mode & 07777, 0666);
    EXPECT_OPEN(world, 0, 0);
    EXPECT_OPEN(world, MMIPC_RDONLY, 0);

    const char *group = make_region("group", 0660);
    ck_assert_int_eq(stat(group, &st), 0);
    ck_assert_uint_eq(st.st_mode & 07777, 0660);
    EXPECT_OPEN(group, 0, 0);

    /* Made writable by someone else after creation: same. */
    const char *later = make_region("later", 0600);
    ck_assert_int_eq(chmod(later, 0622), 0);
    EXPECT_OPEN(later, 0, 0);

    /* The documented rule: such files open, and `mmipc check` (region_check)
     * reports the world-writable ones; a shared group is fine. */
    ck_assert_int_eq(check_problems(world), 1);
    ck_assert_int_eq(check_problems(later), 1);
    ck_assert_int_eq(check_problems(group), 0);
}
END_TEST

START_TEST(test_directory)
{
    const char *dir = th_path("adir");
    ck_assert_int_eq(mkdir(dir, 0700), 0);
    EXPECT_OPEN(dir, 0, -EISDIR);
    EXPECT_OPEN(dir, MMIPC_RDONLY, -EISDIR);
    EXPECT_OPEN(dir, MMIPC_CREATE, -EISDIR);
    struct stat st;
    ck_assert_int_eq(stat(dir, &st), 0);
    ck_assert(S_ISDIR(st.st_mode));
}
END_TEST

/* ---------------------------------------------------------------- truncation */

struct trunc_arg {
    const char *path;
    int check; /* 1: run mmipc_region_check after the cut, 0: a ring send */
};

/* Static: a helper cannot close a region cut under it (close writes its
 * lease), and valgrind must not count the handle as lost. */
static mmipc_region *cut_region;

static int truncated_user(void *arg)
{
    struct trunc_arg *a = arg;
    mmipc_region *r;
    mmipc_ring *q;
    int rc = mmipc_region_open(a->path, a->check ? MMIPC_RDONLY : 0, NULL, &cut_region);
    r = cut_region;
    if (rc != 0 || mmipc_ring_open(r, "q", &q) != 0)
        return 1;
    STORE(&sh->ready, 1);
    if (!wait_flag(&sh->go, 10000))
        return 2;
    if (a->check) {
        sh->rc = mmipc_region_check(r, NULL, NULL);
        return 0;
    }
    sh->rc = mmipc_ring_send(q, "x", 1, 0); /* touches pages past the cut */
    return 0;
}

/*
 * Another process truncates the file while it is open.  Documented
 * behaviour: the next open refuses it (-EBADMSG: size disagrees with the
 * header); a process that still has it mapped gets SIGBUS when it touches a
 * page past the new end, which is what mmap(2) does and no library can
 * prevent without a signal handler.  The test process never maps it.
 */
START_TEST(test_truncated_after_open)
{
    const char *path = make_region("cut", 0);
    struct trunc_arg a = {path, 0};
    pid_t pid = spawn(truncated_user, &a);
    ck_assert_msg(wait_flag(&sh->ready, 10000), "helper did not open the region");
    ck_assert_int_eq(truncate(path, 4096), 0);

    EXPECT_OPEN(path, 0, -EBADMSG);
    EXPECT_OPEN(path, MMIPC_RDONLY, -EBADMSG);
    EXPECT_OPEN(path, MMIPC_CREATE, -EBADMSG);

    STORE(&sh->go, 1);
    int st = reap(pid, 10000);
    /* Under AddressSanitizer its own SIGBUS handler reports, then aborts
     * (abort_on_error=1, as CI runs it) or exits 1 (its default). */
    ck_assert_msg(st == 128 + SIGBUS || (under_asan() && (st == 128 + SIGABRT || st == 1)),
                  "a send into the cut mapping: exit %d, want SIGBUS (%d)", st, 128 + SIGBUS);
    printf("hostile: truncated file: next open -EBADMSG; send through the old mapping: SIGBUS\n");

    /* mmipc_region_check on such a mapping (it reads the lease table and
     * directory past the cut): report what it does. */
    const char *path2 = make_region("cut2", 0);
    struct trunc_arg b = {path2, 1};
    sh->ready = sh->go = 0;
    sh->rc = -1;
    pid = spawn(truncated_user, &b);
    ck_assert_msg(wait_flag(&sh->ready, 10000), "helper did not open the region");
    ck_assert_int_eq(truncate(path2, 4096), 0);
    STORE(&sh->go, 1);
    st = reap(pid, 10000);
    ck_assert_msg(st == 0 || st == 128 + SIGBUS || (under_asan() && st == 128 + SIGABRT),
                  "check on a cut mapping: exit %d", st);
    printf("hostile: mmipc_region_check on a mapping cut under it: %s\n", st == 0 ? "reports problems" : "SIGBUS");
    if (st == 0)
        ck_assert_int_ge(sh->rc, 1);
}
END_TEST

/* ---------------------------------------------------------------- format and ABI */

START_TEST(test_other_version)
{
    const char *path = make_region("v2", 0);
    PATCH_FIELD(path, major, (uint16_t)(MMIPC__FORMAT_MAJOR + 1));
    EXPECT_OPEN(path, 0, -EPROTONOSUPPORT);
    EXPECT_OPEN(path, MMIPC_RDONLY, -EPROTONOSUPPORT);
    EXPECT_OPEN(path, MMIPC_CREATE, -EPROTONOSUPPORT);
    ck_assert_ptr_nonnull(strstr(mmipc_strerror(-EPROTONOSUPPORT), "version"));

    /* A newer minor version is a compatible addition: it opens. */
    path = make_region("v1.9", 0);
    PATCH_FIELD(path, minor, (uint16_t)9);
    EXPECT_OPEN(path, 0, 0);

    /* Another byte order. */
    path = make_region("swapped", 0);
    PATCH_FIELD(path, bom, __builtin_bswap64(MMIPC__BOM));
    EXPECT_OPEN(path, 0, -EPROTONOSUPPORT);
    EXPECT_OPEN(path, MMIPC_RDONLY, -EPROTONOSUPPORT);
}
END_TEST

/* A region "created" by a libc or architecture with other lock or pointer
 * sizes: refused, never guessed at. */
START_TEST(test_fake_abi)
{
    const char *path = make_region("bigmutex", 0);
    PATCH_FIELD(path, mutex_size, (uint16_t)(sizeof(pthread_mutex_t) + 8));
    EXPECT_OPEN(path, 0, -EPROTONOSUPPORT);
    EXPECT_OPEN(path, MMIPC_RDONLY, -EPROTONOSUPPORT);

    path = make_region("align", 0);
    PATCH_FIELD(path, mutex_align, (uint16_t)(_Alignof(pthread_mutex_t) * 2));
    EXPECT_OPEN(path, 0, -EPROTONOSUPPORT);

    path = make_region("cond", 0);
    PATCH_FIELD(path, cond_size, (uint16_t)(sizeof(struct mmipc__cond) * 2));
    EXPECT_OPEN(path, 0, -EPROTONOSUPPORT);

    path = make_region("ptr32", 0);
    PATCH_FIELD(path, ptr_width, (uint16_t)(sizeof(void *) == 8 ? 4 : 8));
    EXPECT_OPEN(path, 0, -EPROTONOSUPPORT);

    /* Lock words of another libc while one of its processes is attached
     * (we stand in for it): refused.  Once nobody is attached, a cold start
     * takes the file over for our libc. */
    path = make_region("musl", 0);
    mmipc_region *r;
    struct mmipc_region_info info;
    ck_assert_int_eq(mmipc_region_open(path, 0, NULL, &r), 0);
    ck_assert_int_eq(mmipc_region_info(r, &info), 0);
    uint64_t cold = info.cold_starts;
    char theirs[32] = "musl 1.2.4";
    patch(path, offsetof(struct mmipc__hdr, libc), theirs, sizeof theirs);
    EXPECT_OPEN(path, 0, -EPROTONOSUPPORT);
    EXPECT_OPEN(path, MMIPC_RDONLY, 0); /* inspection takes no lock: fine */
    mmipc_region_close(r);
    ck_assert_int_eq(mmipc_region_open(path, 0, NULL, &r), 0);
    ck_assert_int_eq(mmipc_region_info(r, &info), 0);
    ck_assert_str_ne(info.libc, theirs);
    ck_assert_uint_eq(info.cold_starts, cold + 1);
    mmipc_region_close(r);
}
END_TEST

/* ---------------------------------------------------------------- a stopped lock holder */

enum { HOLD_PLOCK, HOLD_CLOCK, HOLD_KV };

struct hold_arg {
    const char *path;
    uint64_t lock_off; /* offset of the pthread_mutex_t in the file */
};

/* Lock a mutex in the file directly, as a peer inside a critical section
 * would, and stop there. */
static int hold_and_stop(void *arg)
{
    struct hold_arg *a = arg;
    int fd = open(a->path, O_RDWR);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) != 0)
        return 1;
    uint8_t *base = mmap(NULL, (size_t)st.st_size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (base == MAP_FAILED)
        return 1;
    int rc = pthread_mutex_lock((pthread_mutex_t *)(base + a->lock_off));
    if (rc != 0 && rc != EOWNERDEAD)
        return 2;
    STORE(&sh->ready, 1);
    raise(SIGSTOP);
    return 0; /* never: SIGKILLed while stopped */
}

static int object_offset(const struct mmipc_object_info *o, void *arg)
{
    if (strcmp(o->name, arg) == 0) {
        sh->off = o->offset;
        return 1;
    }
    return 0;
}

/* Wait until pid is stopped (it raised SIGSTOP). */
static int wait_stopped(pid_t pid, int timeout_ms)
{
    uint64_t end = th_now_ms() + (uint64_t)slow(timeout_ms);
    for (;;) {
        int st;
        pid_t w = waitpid(pid, &st, WNOHANG | WUNTRACED);
        if (w == pid && WIFSTOPPED(st))
            return 1;
        if (w == pid || th_now_ms() >= end)
            return 0;
        th_sleep_ms(1);
    }
}

#define TIMED(ms_out, call)                                                                                            \
    ({                                                                                                                 \
        uint64_t t0_ = th_now_ms();                                                                                    \
        __typeof__(call) rc_ = (call);                                                                                 \
        (ms_out) = th_now_ms() - t0_;                                                                                  \
        rc_;                                                                                                           \
    })

/*
 * A peer stopped (SIGSTOP) while holding a ring's producer lock, its
 * consumer lock, or a kv table's lock.  Calls that need that lock give up
 * on schedule: a timeout > 0 returns -ETIMEDOUT after that long (never
 * early), timeout 0 returns -EAGAIN within a few milliseconds, calls
 * without a timeout parameter (kv put/del/cas, release) return -ETIMEDOUT
 * after 5 s.  Everything not behind that lock carries on: the other side of
 * the ring, lock-free reads, stats, read-only inspection and check.  Once
 * the peer is killed, the next call repairs the lock (EOWNERDEAD) and works.
 */
START_TEST(test_stopped_holder)
{
    const char *path = make_region("wedged", 0);
    mmipc_region *r, *ro;
    mmipc_ring *q, *roq;
    mmipc_kv *kv, *rokv;
    struct mmipc_ring_stat rs;
    struct mmipc_kv_stat ks;
    char buf[64];
    uint64_t ms, v1 = 0;
    ck_assert_int_eq(mmipc_region_open(path, 0, NULL, &r), 0);
    ck_assert_int_eq(mmipc_ring_open(r, "q", &q), 0);
    ck_assert_int_eq(mmipc_kv_open(r, "kv", &kv), 0);
    ck_assert_int_eq(mmipc_ring_send(q, "before", 6, 0), 0);
    ck_assert_int_eq(mmipc_ring_send(q, "before2", 7, 0), 0);
    ck_assert_int_eq(mmipc_kv_put(kv, "k", "v1", 2), 0);
    ck_assert_int_eq(mmipc_kv_get(kv, "k", buf, sizeof buf, &v1), 2);

    int which = _i;
    ck_assert_int_eq(mmipc_region_objects(r, object_offset, which == HOLD_KV ? "kv" : "q"), 1);
    struct hold_arg a = {path, sh->off};
    a.lock_off += which == HOLD_PLOCK   ? offsetof(struct mmipc__ring, plock)
                  : which == HOLD_CLOCK ? offsetof(struct mmipc__ring, clock)
                                        : offsetof(struct mmipc__kv, lock);
    pid_t pid = spawn(hold_and_stop, &a);
    ck_assert_msg(wait_flag(&sh->ready, 10000), "helper did not take the lock");
    ck_assert_msg(wait_stopped(pid, 10000), "helper did not stop");

    if (which == HOLD_PLOCK) {
        int rc = TIMED(ms, mmipc_ring_send(q, "x", 1, 200));
        ck_assert_msg(rc == -ETIMEDOUT, "send(200 ms): %s", mmipc_strerror(rc));
        ck_assert_msg(ms >= 199 && ms < (uint64_t)slow(3000), "send(200 ms) gave up after %llu ms",
                      (unsigned long long)ms);
        printf("hostile: producer lock held by a stopped peer: send(200) -ETIMEDOUT after %llu ms",
               (unsigned long long)ms);
        rc = TIMED(ms, mmipc_ring_send(q, "x", 1, 0));
        ck_assert_msg(rc == -EAGAIN, "send(0): %s", mmipc_strerror(rc));
        ck_assert_msg(ms < (uint64_t)slow(1000), "send(0) took %llu ms", (unsigned long long)ms);
        printf(", send(0) -EAGAIN after %llu ms\n", (unsigned long long)ms);
        void *p;
        rc = mmipc_ring_reserve(q, 8, &p, 50);
        ck_assert_msg(rc == -ETIMEDOUT, "reserve(50 ms): %s", mmipc_strerror(rc));
        /* Consumers do not need the producer lock. */
        ck_assert_int_eq(mmipc_ring_recv(q, buf, sizeof buf, 0), 6);
        ck_assert_mem_eq(buf, "before", 6);
    } else if (which == HOLD_CLOCK) {
        ssize_t n = TIMED(ms, mmipc_ring_recv(q, buf, sizeof buf, 200));
        ck_assert_msg(n == -ETIMEDOUT, "recv(200 ms): %s", mmipc_strerror((int)n));
        ck_assert_msg(ms >= 199 && ms < (uint64_t)slow(3000), "recv(200 ms) gave up after %llu ms",
                      (unsigned long long)ms);
        printf("hostile: consumer lock held by a stopped peer: recv(200) -ETIMEDOUT after %llu ms",
               (unsigned long long)ms);
        n = TIMED(ms, mmipc_ring_recv(q, buf, sizeof buf, 0));
        ck_assert_msg(n == -EAGAIN, "recv(0): %s", mmipc_strerror((int)n));
        ck_assert_msg(ms < (uint64_t)slow(1000), "recv(0) took %llu ms", (unsigned long long)ms);
        printf(", recv(0) -EAGAIN after %llu ms\n", (unsigned long long)ms);
        const void *p;
        n = mmipc_ring_peek(q, &p, 50);
        ck_assert_msg(n == -ETIMEDOUT, "peek(50 ms): %s", mmipc_strerror((int)n));
        /* Producers do not need the consumer lock. */
        ck_assert_int_eq(mmipc_ring_send(q, "during", 6, 0), 0);
    } else {
        int rc = TIMED(ms, mmipc_kv_put(kv, "k", "v2", 2));
        ck_assert_msg(rc == -ETIMEDOUT, "put: %s", mmipc_strerror(rc));
        ck_assert_msg(ms >= 4990 && ms < (uint64_t)slow(10000), "put gave up after %llu ms", (unsigned long long)ms);
        printf("hostile: kv lock held by a stopped peer: put -ETIMEDOUT after %llu ms\n", (unsigned long long)ms);
        /* Readers take no lock. */
        uint64_t v = 0;
        ck_assert_int_eq(mmipc_kv_get(kv, "k", buf, sizeof buf, &v), 2);
        ck_assert_uint_eq(v, v1);
        rc = TIMED(ms, mmipc_kv_wait(kv, "k", v1, 100));
        ck_assert_msg(rc == -ETIMEDOUT, "wait(100 ms): %s", mmipc_strerror(rc));
        ck_assert_int_eq(mmipc_kv_wait(kv, "k", v1 + 1000, 0), 0);
    }

    /* Stats and read-only inspection (what `mmipc stat` and `mmipc check`
     * do) still work. */
    ck_assert_int_eq(mmipc_ring_stat(q, &rs), 0);
    ck_assert_int_eq(mmipc_kv_stat(kv, &ks), 0);
    ck_assert_int_eq(mmipc_region_open(path, MMIPC_RDONLY, NULL, &ro), 0);
    ck_assert_int_eq(mmipc_region_check(ro, NULL, NULL), 0);
    ck_assert_int_eq(mmipc_ring_open(ro, "q", &roq), 0);
    ck_assert_int_eq(mmipc_ring_stat(roq, &rs), 0);
    ck_assert_int_eq(mmipc_kv_open(ro, "kv", &rokv), 0);
    ck_assert_int_eq(mmipc_kv_stat(rokv, &ks), 0);
    ck_assert_int_eq(mmipc_kv_get(rokv, "k", buf, sizeof buf, NULL), 2);
    mmipc_region_close(ro);
    /* A new attach does not need these locks either. */
    EXPECT_OPEN(path, 0, 0);

    /* Kill the holder: the next call repairs the lock and succeeds. */
    th_kill(pid);
    forget(pid);
    uint64_t recov;
    if (which == HOLD_KV) {
        ck_assert_int_eq(mmipc_kv_put(kv, "k", "v3", 2), 0);
        ck_assert_int_eq(mmipc_kv_get(kv, "k", buf, sizeof buf, NULL), 2);
        ck_assert_mem_eq(buf, "v3", 2);
        ck_assert_int_eq(mmipc_kv_stat(kv, &ks), 0);
        recov = ks.recoveries;
    } else {
        ck_assert_int_eq(mmipc_ring_send(q, "after", 5, 1000), 0);
        ssize_t n;
        int got_after = 0;
        while ((n = mmipc_ring_recv(q, buf, sizeof buf, 1000)) >= 0)
            if (n == 5 && memcmp(buf, "after", 5) == 0) {
                got_after = 1;
                break;
            }
        ck_assert_msg(got_after, "message sent after the repair not received (%s)", mmipc_strerror((int)n));
        ck_assert_int_eq(mmipc_ring_stat(q, &rs), 0);
        recov = rs.recoveries;
    }
    ck_assert_uint_ge(recov, 1);
    mmipc_region_close(r);
}
END_TEST

Suite *make_hostile_suite(void)
{
    Suite *s = suite_create("hostile");

    TCase *tc = tcase_create("files");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 30);
    tcase_add_test(tc, test_symlink);
    tcase_add_test(tc, test_other_owner);
    tcase_add_test(tc, test_writable_by_others);
    tcase_add_test(tc, test_directory);
    tcase_add_test(tc, test_truncated_after_open);
    tcase_add_test(tc, test_other_version);
    tcase_add_test(tc, test_fake_abi);
    suite_add_tcase(s, tc);

    tc = tcase_create("peers");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 60);
    tcase_add_loop_test(tc, test_stopped_holder, HOLD_PLOCK, HOLD_KV + 1);
    suite_add_tcase(s, tc);
    return s;
}
