/*
 * Writes the seed corpus of the fuzz harnesses (run by fuzz/make-seeds.sh):
 *
 *   OUTDIR/open/NAME.region   complete region files (fuzz_open.c)
 *   OUTDIR/mutate/NAME.prog   programs of scribbles and operations (fuzz_mutate.c,
 *                          format in mutate_ops.h)
 *
 * Region files are built through the public API in a temporary directory
 * and copied; every one is under 64 KiB.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "mmipc.h"
#include "mutate_ops.h"

static char tmpdir[256];
static const char *outdir;

static void die(const char *what, int rc)
{
    fprintf(stderr, "make-seeds: %s: %s\n", what, mmipc_strerror(rc));
    exit(1);
}

#define TRY(call)                                                                                                      \
    do {                                                                                                               \
        int rc_ = (int)(call);                                                                                         \
        if (rc_ < 0)                                                                                                   \
            die(#call, rc_);                                                                                           \
    } while (0)

static void copy_out(const char *src, const char *name)
{
    char dst[512];
    uint8_t b[65536];
    snprintf(dst, sizeof dst, "%s/open/%s", outdir, name);
    int in = open(src, O_RDONLY), out = open(dst, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (in < 0 || out < 0)
        die(dst, -errno);
    ssize_t n;
    while ((n = read(in, b, sizeof b)) > 0)
        if (write(out, b, (size_t)n) != n)
            die(dst, -EIO);
    close(in);
    close(out);
    unlink(src);
    printf("  %s\n", dst);
}

static mmipc_region *fresh(const char *name, size_t size, unsigned max_objects, char *path, size_t cap)
{
    struct mmipc_region_opts o = {.size = size, .max_objects = max_objects};
    mmipc_region *r;
    snprintf(path, cap, "%s/%s", tmpdir, name);
    TRY(mmipc_region_open(path, MMIPC_CREATE | MMIPC_EXCL, &o, &r));
    return r;
}

static void region_seeds(void)
{
    char path[300];
    uint8_t msg[4096];
    mmipc_region *r;
    mmipc_ring *q, *q1;
    mmipc_kv *kv;
    memset(msg, 'x', sizeof msg);

    /* The smallest region: no objects. */
    r = fresh("empty", 1, 4, path, sizeof path); /* rounded up to the minimum */
    mmipc_region_close(r);
    copy_out(path, "empty.region");

    /* A ring with three messages queued and a kv table with keys. */
    r = fresh("ring-kv", 61440, 4, path, sizeof path);
    TRY(mmipc_ring_create(r, "q", 4096, &q));
    TRY(mmipc_kv_create(r, "cfg", 8, 64, &kv));
    for (int i = 0; i < 3; i++)
        TRY(mmipc_ring_send(q, msg, (size_t)(10 + i), 0));
    TRY(mmipc_kv_put(kv, "alpha", "1", 1));
    TRY(mmipc_kv_put(kv, "beta", msg, 64));
    TRY(mmipc_kv_put(kv, "gamma", "", 0));
    mmipc_region_close(r);
    copy_out(path, "ring-kv.region");

    /* Wrapped ring (a PAD record), a dead process's reservation and peek,
     * tombstones. */
    r = fresh("busy", 61440, 4, path, sizeof path);
    TRY(mmipc_ring_create(r, "r0", 4096, &q));
    TRY(mmipc_ring_create(r, "r1", 8192, &q1));
    TRY(mmipc_kv_create(r, "kv", 16, 100, &kv));
    for (int i = 0; i < 10; i++)
        TRY(mmipc_ring_send(q, msg, 300, 0));
    for (int i = 0; i < 10; i++)
        TRY(mmipc_ring_recv(q, msg, sizeof msg, 0));
    for (int i = 0; i < 3; i++)
        TRY(mmipc_ring_send(q, msg, 400, 0));
    for (int i = 0; i < 4; i++)
        TRY(mmipc_ring_send(q1, msg, (size_t)(17 * i), 0));
    pid_t pid = fork();
    if (pid == 0) {
        void *p;
        const void *c;
        mmipc_region *cr;
        mmipc_ring *cq;
        if (mmipc_region_open(path, 0, NULL, &cr) != 0 || mmipc_ring_open(cr, "r1", &cq) != 0 ||
            mmipc_ring_reserve(cq, 40, &p, 0) != 0 || mmipc_ring_peek(cq, &c, 0) < 0)
            _exit(1);
        memset(p, 'd', 40);
        _exit(0); /* dies holding both */
    }
    int st;
    if (pid < 0 || waitpid(pid, &st, 0) != pid || !WIFEXITED(st) || WEXITSTATUS(st) != 0)
        die("dead peer", -ECHILD);
    TRY(mmipc_ring_send(q1, msg, 100, 0));
    for (int i = 0; i < 10; i++) {
        char key[8];
        snprintf(key, sizeof key, "k%d", i);
        TRY(mmipc_kv_put(kv, key, msg, (size_t)(i * 11)));
    }
    TRY(mmipc_kv_del(kv, "k3"));
    TRY(mmipc_kv_del(kv, "k7"));
    TRY(mmipc_kv_cas(kv, "k1", 2, msg, 5));
    mmipc_region_close(r);
    copy_out(path, "busy.region");

    /* Several objects, one ring full. */
    r = fresh("many", 61440, 8, path, sizeof path);
    for (int i = 0; i < 4; i++) {
        char name[8];
        snprintf(name, sizeof name, "ring%d", i);
        TRY(mmipc_ring_create(r, name, 4096, &q));
        for (int k = 0; k < (i == 3 ? 1000 : i); k++)
            if (mmipc_ring_send(q, msg, (size_t)(k * 13 % 200), 0) != 0)
                break;
    }
    TRY(mmipc_kv_create(r, "kv0", 8, 32, &kv));
    TRY(mmipc_kv_put(kv, "only", msg, 32));
    TRY(mmipc_kv_create(r, "kv1", 8, 32, &kv));
    for (int i = 0; i < 8; i++) {
        char key[8];
        snprintf(key, sizeof key, "f%d", i);
        TRY(mmipc_kv_put(kv, key, msg, (size_t)i));
    }
    mmipc_region_close(r);
    copy_out(path, "many.region");
}

/* ---------------------------------------------------------------- programs */

struct prog {
    uint8_t b[1024];
    size_t n;
};

static void op(struct prog *p, unsigned code, unsigned a, unsigned b)
{
    p->b[p->n++] = (uint8_t)code;
    p->b[p->n++] = (uint8_t)a;
    p->b[p->n++] = (uint8_t)b;
}

static void scrib(struct prog *p, unsigned area, unsigned off, unsigned how, uint64_t value)
{
    p->b[p->n++] = FM_OP_SCRIBBLE;
    p->b[p->n++] = (uint8_t)area;
    p->b[p->n++] = (uint8_t)(off & 0xff);
    p->b[p->n++] = (uint8_t)(off >> 8);
    p->b[p->n++] = (uint8_t)how;
    for (int i = 0; i < 8; i++)
        p->b[p->n++] = (uint8_t)(value >> (8 * i));
}

/* Every operation once on both handle sets. */
static void all_ops(struct prog *p)
{
    for (unsigned set = 0; set < 4; set += 2) {
        op(p, FM_OP_SEND, set | 0, 10);
        op(p, FM_OP_SEND, set | 1 | 4, 3);
        op(p, FM_OP_RECV, set | 0, 0);
        op(p, FM_OP_RECV, set | 1 | 4, 4);
        op(p, FM_OP_PEEK, set | 1, 0);
        op(p, FM_OP_RELEASE, set | 1, 0);
        op(p, FM_OP_RESERVE, set | 0, 8);
        op(p, FM_OP_COMMIT, set | 0, 0);
        op(p, FM_OP_RING_STAT, set | 1, 0);
        op(p, FM_OP_KV_PUT, set, 1);
        op(p, FM_OP_KV_GET, set, 1);
        op(p, FM_OP_KV_CAS, set, 1);
        op(p, FM_OP_KV_WAIT, set, 1);
        op(p, FM_OP_KV_DEL, set, 2);
        op(p, FM_OP_KV_FOREACH, set, 0);
        op(p, FM_OP_KV_STAT, set, 0);
        op(p, FM_OP_INSPECT, set, 0);
        op(p, FM_OP_CREATE, set, 7);
        op(p, FM_OP_CREATE, set | 4, 9);
    }
    op(p, FM_OP_SAVED, 0, 0);
    op(p, FM_OP_SAVED, 4, 0);
    op(p, FM_OP_RDONLY, 0, 0);
    op(p, FM_OP_REOPEN, 0, 0);
}

static void write_prog(const char *name, const struct prog *p)
{
    char dst[512];
    snprintf(dst, sizeof dst, "%s/mutate/%s", outdir, name);
    FILE *f = fopen(dst, "wb");
    if (f == NULL || fwrite(p->b, 1, p->n, f) != p->n || fclose(f) != 0)
        die(dst, -EIO);
    printf("  %s\n", dst);
}

static void program_seeds(void)
{
    struct prog p;
    const unsigned u64 = 3, u32 = 2;

    memset(&p, 0, sizeof p);
    all_ops(&p);
    write_prog("all-ops.prog", &p);

    /* r0 tail one record too far, then every ring call. */
    memset(&p, 0, sizeof p);
    scrib(&p, FM_AREA_RING0, 128, FM_HOW(u64, FM_ADD, 0), 8);
    all_ops(&p);
    write_prog("ring-tail.prog", &p);

    /* r1 head moved back. */
    memset(&p, 0, sizeof p);
    scrib(&p, FM_AREA_RING1, 256, FM_HOW(u64, FM_ADD, 0), (uint64_t)-8);
    all_ops(&p);
    write_prog("ring-head.prog", &p);

    /* r0's first queued record (position 3200: ten 300-byte records, each
     * rounded up to 320 bytes) gets a huge length. */
    memset(&p, 0, sizeof p);
    scrib(&p, FM_AREA_RING0_DATA, 3200, FM_HOW(u32, FM_SET, 0), 5000);
    all_ops(&p);
    write_prog("ring-reclen.prog", &p);

    /* A kv slot word with an invalid state. */
    memset(&p, 0, sizeof p);
    scrib(&p, FM_AREA_KV_SLOTS, 0, FM_HOW(u64, FM_SET, 0), 3);
    all_ops(&p);
    write_prog("kv-word.prog", &p);

    /* kv slot count changed: the table no longer fits its geometry. */
    memset(&p, 0, sizeof p);
    scrib(&p, FM_AREA_KV, 4, FM_HOW(u32, FM_SET, 0), 17);
    op(&p, FM_OP_REOPEN, 0, 0);
    all_ops(&p);
    write_prog("kv-slots.prog", &p);

    /* Allocation pointer at the end of the file, then creates. */
    memset(&p, 0, sizeof p);
    scrib(&p, FM_AREA_HEADER, 72, FM_HOW(u64, FM_SIZE, 0), 0);
    all_ops(&p);
    write_prog("hdr-alloc.prog", &p);

    /* First directory entry's offset moved by a cache line; reopen. */
    memset(&p, 0, sizeof p);
    scrib(&p, FM_AREA_DIR, 8, FM_HOW(u64, FM_ADD, 0), 64);
    op(&p, FM_OP_REOPEN, 0, 0);
    all_ops(&p);
    write_prog("dir-offset.prog", &p);

    /* Locks whose owner died: the repair paths. */
    memset(&p, 0, sizeof p);
    scrib(&p, FM_AREA_RING0, 64, FM_HOW(u32, FM_SET, 0), 0x40000000u);
    scrib(&p, FM_AREA_RING1, 192, FM_HOW(u32, FM_SET, 0), 0x40000000u);
    scrib(&p, FM_AREA_KV, 64, FM_HOW(u32, FM_SET, 0), 0x40000000u);
    scrib(&p, FM_AREA_HEADER, 256, FM_HOW(u32, FM_SET, 0), 0x40000000u);
    all_ops(&p);
    write_prog("owner-died.prog", &p);

    /* A lease's pid changed (its owner looks dead or alive). */
    memset(&p, 0, sizeof p);
    scrib(&p, FM_AREA_LEASES, 64 + 8, FM_HOW(u32, FM_SET, 0), 1);
    op(&p, FM_OP_REOPEN, 0, 0);
    all_ops(&p);
    write_prog("lease-pid.prog", &p);

    /* A mutex's kind changed: no longer robust. */
    memset(&p, 0, sizeof p);
    scrib(&p, FM_AREA_RING1, 64 + 16, FM_HOW(u32, FM_ZERO, 0), 0);
    all_ops(&p);
    write_prog("mutex-kind.prog", &p);
}

int main(int argc, char **argv)
{
    char sub[512];
    if (argc != 2) {
        fprintf(stderr, "usage: %s OUTDIR\n", argv[0]);
        return 2;
    }
    outdir = argv[1];
    snprintf(sub, sizeof sub, "%s/open", outdir);
    mkdir(sub, 0755);
    snprintf(sub, sizeof sub, "%s/mutate", outdir);
    mkdir(sub, 0755);
    snprintf(tmpdir, sizeof tmpdir, "%s/mmipc-seeds-XXXXXX", getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
    if (mkdtemp(tmpdir) == NULL)
        die("mkdtemp", -errno);
    region_seeds();
    program_seeds();
    rmdir(tmpdir);
    return 0;
}
