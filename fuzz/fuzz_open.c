/*
 * libFuzzer harness 1: arbitrary bytes as a region file.
 *
 * Each input is written to a temporary file (removed after the input) and
 * opened with MMIPC_RDONLY and with no flags (a cold start: the harness is
 * the only process attached).  Every inspection call runs, then every
 * object the directory lists is opened and every read-only and read-write
 * operation runs on it with timeout 0.  Nothing may crash, hang, leak or
 * trip a sanitizer; results that break the API contract (a length larger
 * than the buffer, a pointer outside the message) abort.
 *
 * A region's size must match its header, so most byte strings are refused
 * at once with -EBADMSG; to reach deeper code the harness also retries with
 * the file cut or zero-padded to the size the header claims (up to 1 MiB).
 *
 * Build: `make fuzz` (clang -fsanitize=fuzzer,address,undefined); the same
 * file is linked into tests/fuzz-regress-open for `make check`.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "mmipc.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define MAX_OBJECTS 16
#define MAX_KEYS 8
#define MAX_FIXUP_SIZE (UINT64_C(1) << 20)
#define BUF_SIZE (256u * 1024u)

/* Break the contract: a crash libFuzzer records with its input. */
#define CHECK(cond)                                                                                                    \
    do {                                                                                                               \
        if (!(cond)) {                                                                                                 \
            fprintf(stderr, "fuzz_open: %s:%d: contract broken: %s\n", __FILE__, __LINE__, #cond);                     \
            abort();                                                                                                   \
        }                                                                                                              \
    } while (0)

static char dir_path[256];
static char file_path[300];
static uint8_t buf[BUF_SIZE];
static volatile uint64_t sink; /* keeps reads of peeked bytes alive */

/* Called after every input: libFuzzer ends with _Exit, so nothing would
 * clean up at exit; only a crashing input leaves its file behind. */
static void remove_temp(void)
{
    if (file_path[0] != '\0')
        unlink(file_path);
    if (dir_path[0] != '\0')
        rmdir(dir_path);
    file_path[0] = dir_path[0] = '\0';
}

static const char *temp_file(void)
{
    if (file_path[0] == '\0') {
        const char *base = getenv("TMPDIR");
        if (base == NULL || base[0] == '\0')
            base = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp";
        snprintf(dir_path, sizeof dir_path, "%s/mmipc-fuzz-open-XXXXXX", base);
        if (mkdtemp(dir_path) == NULL) {
            perror("fuzz_open: mkdtemp");
            abort();
        }
        snprintf(file_path, sizeof file_path, "%s/region", dir_path);
    }
    return file_path;
}

/* Write the input as the whole file, then cut or pad it to `want` bytes
 * (0: leave the input's size). */
static int write_file(const uint8_t *data, size_t size, uint64_t want)
{
    int fd = open(temp_file(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0)
        return -1;
    size_t done = 0;
    while (done < size) {
        ssize_t n = write(fd, data + done, size - done);
        if (n <= 0) {
            close(fd);
            return -1;
        }
        done += (size_t)n;
    }
    if (want != 0 && ftruncate(fd, (off_t)want) != 0) {
        close(fd);
        return -1;
    }
    close(fd);
    return 0;
}

/* ---------------------------------------------------------------- listing */

struct listing {
    int n;
    char name[MAX_OBJECTS][MMIPC_NAME_MAX + 1];
    int kind[MAX_OBJECTS];
};

static int collect_object(const struct mmipc_object_info *o, void *arg)
{
    struct listing *l = arg;
    CHECK(memchr(o->name, '\0', sizeof o->name) != NULL);
    if (l->n < MAX_OBJECTS) {
        memcpy(l->name[l->n], o->name, sizeof l->name[0]);
        l->kind[l->n] = o->kind;
        l->n++;
    }
    return 0;
}

static int count_lease(const struct mmipc_lease_info *li, void *arg)
{
    (*(unsigned *)arg)++;
    CHECK(li->alive == 0 || li->alive == 1);
    return 0;
}

static void count_problem(const char *object, const char *problem, void *arg)
{
    CHECK(object != NULL && problem != NULL);
    sink += strlen(object) + strlen(problem);
    (*(unsigned *)arg)++;
}

static void inspect_region(mmipc_region *r, struct listing *l)
{
    struct mmipc_region_info info;
    unsigned leases = 0, problems = 0;
    if (mmipc_region_info(r, &info) == 0) {
        CHECK(info.used <= info.size && info.free == info.size - info.used);
        CHECK(memchr(info.libc, '\0', sizeof info.libc) != NULL);
    }
    l->n = 0;
    mmipc_region_objects(r, collect_object, l);
    mmipc_region_leases(r, count_lease, &leases);
    int rc = mmipc_region_check(r, count_problem, &problems);
    CHECK(rc >= 0 && (unsigned)rc == problems);
    CHECK(mmipc_region_check(r, NULL, NULL) >= 0);
}

/* ---------------------------------------------------------------- rings */

static void ring_ops(mmipc_ring *q, int rdonly)
{
    struct mmipc_ring_stat st;
    const void *peeked;
    void *reserved;
    /* stat fills the geometry (from the handle) even when it then finds
     * head and tail corrupt. */
    if (mmipc_ring_stat(q, &st) == 0)
        CHECK(st.used <= st.capacity);
    uint64_t max_msg = st.max_message;
    CHECK(max_msg < st.capacity);
    mmipc_ring_set_spin(q, 0);

    /* Sizes that matter: empty, tiny, odd, the largest, one too many. */
    size_t sizes[] = {0, 1, 13, 200, (size_t)max_msg, (size_t)max_msg + 1};
    memset(buf, 0x5a, sizeof buf);
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        if (sizes[i] > sizeof buf)
            continue;
        int rc = mmipc_ring_send(q, buf, sizes[i], 0);
        if (rdonly)
            CHECK(rc == -EPERM);
        if (sizes[i] > max_msg)
            CHECK(rc != 0);
    }

    for (int i = 0; i < 64; i++) {
        ssize_t n = mmipc_ring_recv(q, buf, sizeof buf, 0);
        if (n < 0)
            break;
        CHECK((size_t)n <= sizeof buf);
    }
    /* A buffer too small: the message must stay queued. */
    mmipc_ring_send(q, buf, 32, 0);
    mmipc_ring_recv(q, buf, 8, 0);
    mmipc_ring_recv(q, NULL, 0, 0);

    /* Zero-copy: read every byte of a peek, write every byte of a reserve. */
    ssize_t n = mmipc_ring_peek(q, &peeked, 0);
    if (n >= 0) {
        CHECK(rdonly == 0);
        const uint8_t *p = peeked;
        uint64_t sum = 0;
        for (ssize_t i = 0; i < n; i++)
            sum += p[i];
        sink += sum;
        CHECK(mmipc_ring_release(q, peeked) == 0);
        CHECK(mmipc_ring_release(q, peeked) == -EINVAL);
    }
    mmipc_ring_release(q, buf);
    for (int i = 0; i < 3; i++) {
        size_t len = i == 0 ? 24 : i == 1 ? 0 : (size_t)max_msg;
        if (mmipc_ring_reserve(q, len, &reserved, 0) == 0) {
            CHECK(rdonly == 0);
            memset(reserved, 0xc3, len);
            if (i != 1)
                CHECK(mmipc_ring_commit(q, reserved) == 0);
            /* i == 1: left open, abandoned at close */
        }
    }
    mmipc_ring_commit(q, buf);
    /* A peek left open too: reclaimed when the region closes. */
    n = mmipc_ring_peek(q, &peeked, 0);
    if (n > 0)
        sink += ((const uint8_t *)peeked)[n - 1];
    for (int i = 0; i < 64; i++)
        if (mmipc_ring_recv(q, buf, sizeof buf, 0) < 0)
            break;
    mmipc_ring_stat(q, &st);
}

/* ---------------------------------------------------------------- kv tables */

struct keys {
    int n;
    char key[MAX_KEYS][MMIPC_KEY_MAX + 1];
};

static int collect_key(const char *key, const void *val, size_t len, uint64_t version, void *arg)
{
    struct keys *k = arg;
    size_t klen = strlen(key);
    CHECK(klen >= 1 && klen <= MMIPC_KEY_MAX);
    const uint8_t *v = val;
    uint64_t sum = version;
    for (size_t i = 0; i < len; i++)
        sum += v[i];
    sink += sum;
    if (k->n < MAX_KEYS)
        memcpy(k->key[k->n++], key, klen + 1);
    return 0;
}

static int stop_walk(const char *key, const void *val, size_t len, uint64_t version, void *arg)
{
    (void)key, (void)val, (void)len, (void)version, (void)arg;
    return 7;
}

static void key_ops(mmipc_kv *kv, const char *key, int del, int rdonly, uint64_t vmax)
{
    uint64_t ver = 0;
    ssize_t n = mmipc_kv_get(kv, key, buf, sizeof buf, &ver);
    if (n >= 0)
        CHECK((size_t)n <= sizeof buf && (uint64_t)n <= vmax);
    mmipc_kv_get(kv, key, NULL, 0, NULL);
    mmipc_kv_wait(kv, key, ver, 0);
    mmipc_kv_wait(kv, key, ver + 1, 0);
    size_t lens[] = {0, 5, (size_t)vmax, (size_t)vmax + 1};
    memset(buf, 0x3c, sizeof buf);
    for (size_t j = 0; j < sizeof lens / sizeof lens[0]; j++) {
        if (lens[j] > sizeof buf)
            continue;
        int rc = mmipc_kv_put(kv, key, buf, lens[j]);
        if (rdonly && rc != -EINVAL && rc != -ENAMETOOLONG)
            CHECK(rc == -EPERM);
        if (lens[j] > vmax)
            CHECK(rc != 0);
    }
    mmipc_kv_get(kv, key, buf, sizeof buf, &ver);
    mmipc_kv_cas(kv, key, ver, buf, 3);
    mmipc_kv_cas(kv, key, 0, buf, 3);
    mmipc_kv_cas(kv, key, UINT64_MAX, buf, 3);
    if (del) {
        mmipc_kv_del(kv, key);
        mmipc_kv_del(kv, key);
        mmipc_kv_wait(kv, key, 0, 0);
    }
}

static void kv_ops(mmipc_kv *kv, int rdonly)
{
    static const char long_key[] = "0123456789012345678901234567890123456789012345678901234567890123";
    struct mmipc_kv_stat st;
    struct keys k = {0};
    if (mmipc_kv_stat(kv, &st) == 0)
        CHECK(st.used + st.tombstones <= st.slots);
    uint64_t vmax = st.value_max; /* filled even when a slot word is corrupt */
    mmipc_kv_foreach(kv, collect_key, &k);
    int rc = mmipc_kv_foreach(kv, stop_walk, NULL);
    CHECK(rc == 0 || rc == 7 || rc < 0);
    for (int i = 0; i < k.n; i++)
        key_ops(kv, k.key[i], i % 2 == 0, rdonly, vmax);
    /* New keys, the longest key, one byte too long, empty. */
    key_ops(kv, "a", 0, rdonly, vmax);
    key_ops(kv, "key", 1, rdonly, vmax);
    key_ops(kv, long_key + 1, 0, rdonly, vmax);
    key_ops(kv, long_key, 1, rdonly, vmax);
    key_ops(kv, "", 1, rdonly, vmax);
    k.n = 0;
    mmipc_kv_foreach(kv, collect_key, &k);
    mmipc_kv_stat(kv, &st);
}

/* ---------------------------------------------------------------- driver */

static void exercise(mmipc_region *r, int rdonly)
{
    struct listing l;
    mmipc_ring *q;
    mmipc_kv *kv;
    inspect_region(r, &l);
    for (int i = 0; i < l.n; i++) {
        if (mmipc_ring_open(r, l.name[i], &q) == 0)
            ring_ops(q, rdonly);
        if (mmipc_kv_open(r, l.name[i], &kv) == 0)
            kv_ops(kv, rdonly);
    }
    mmipc_ring_open(r, "no such object", &q);
    mmipc_region_sync(r);
    /* Creation walks the directory and the allocator as found in the file. */
    if (mmipc_ring_create(r, "fuzz-ring", 4096, &q) == 0)
        ring_ops(q, rdonly);
    if (mmipc_kv_create(r, "fuzz-kv", 4, 32, &kv) == 0)
        kv_ops(kv, rdonly);
    inspect_region(r, &l);
}

static void open_all_ways(void)
{
    mmipc_region *r = NULL, *r2 = NULL;
    if (mmipc_region_open(temp_file(), MMIPC_RDONLY, NULL, &r) == 0) {
        exercise(r, 1);
        mmipc_region_close(r);
    }
    if (mmipc_region_open(temp_file(), 0, NULL, &r) == 0) {
        /* A second attach is not a cold start: it checks the lock ABI. */
        if (mmipc_region_open(temp_file(), 0, NULL, &r2) == 0)
            mmipc_region_close(r2);
        exercise(r, 0);
        mmipc_region_close(r);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (write_file(data, size, 0) != 0) {
        remove_temp();
        return 0;
    }
    open_all_ways();
    /* Header field file_size (offset 32, host order): retry at that size. */
    if (size >= 40) {
        uint64_t claimed;
        memcpy(&claimed, data + 32, sizeof claimed);
        if (claimed != size && claimed >= 4096 && claimed <= MAX_FIXUP_SIZE && write_file(data, size, claimed) == 0)
            open_all_ways();
    }
    remove_temp();
    return 0;
}
