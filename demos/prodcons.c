/*
 * prodcons: many producer and many consumer processes sharing one mmipc ring.
 *
 * What it shows
 *   - creating a region file and the objects in it (mmipc_region_open,
 *     mmipc_ring_create, mmipc_kv_create);
 *   - forked children using the handles they inherit: a handle stays usable
 *     after fork(), no need to open the file again;
 *   - mmipc_ring_send / mmipc_ring_recv from several processes at once, each
 *     call with a timeout so that nothing can wait forever;
 *   - a kv table as a shared counter updated with compare-and-swap
 *     (mmipc_kv_get + mmipc_kv_cas): "how many producers have finished",
 *     which tells the consumers when the stream is over;
 *   - mmipc_ring_stat, read without any lock, for a live progress line.
 *
 * Every message carries (producer id, sequence number, checksum).  Consumers
 * note what they got in a scoreboard of their own, and at the end the parent
 * checks that every message arrived exactly once, that each consumer saw any
 * one producer's messages in increasing order, and that no message was
 * damaged.  It prints a summary whose last line starts with "verify: OK", or
 * "verify: FAILED ..." and exits 1.
 *
 * Run it
 *   make demo                            2 producers, 2 consumers, 200000 messages
 *                                        each, 64 bytes, a 1 MiB ring
 *   demos/prodcons -p 4 -c 2 -n 100000   4 producers, 2 consumers
 *   demos/prodcons -s 24-4096            random sizes from 24 to 4096 bytes
 *   demos/prodcons --file /tmp/pc.mmipc  keep the region file, then look at it
 *                                        with `tools/mmipc stat /tmp/pc.mmipc`
 *   demos/prodcons --help
 */
#define _GNU_SOURCE
#include <ctype.h>
#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "mmipc.h"

#define RING_NAME "prodcons"
#define STATE_NAME "prodcons.state" /* kv table: the "producers done" counter */
#define KEY_DONE "producers_done"

#define SEND_TIMEOUT_MS 10000 /* a full ring for this long means the consumers are stuck */
#define RECV_TIMEOUT_MS 25    /* how often an idle consumer checks whether the stream ended */
#define STALL_MS 15000        /* no progress at all for this long: give up */
#define MAX_PROCS 64

struct config {
    unsigned producers, consumers;
    uint64_t per_producer;     /* messages each producer sends */
    size_t min_size, max_size; /* message bytes, header included */
    size_t capacity;           /* ring bytes */
    const char *file;          /* --file, or NULL for a temporary one */
};

/* ------------------------------------------------------------ messages */

/* Every message starts with this header; the payload (any bytes) follows. */
struct msg_header {
    uint32_t producer; /* 0 .. producers-1 */
    uint32_t len;      /* whole message length, header included */
    uint64_t seq;      /* 0 .. per_producer-1, per producer */
    uint64_t check;    /* checksum of the three fields above and the payload */
};
#define HDR_SIZE sizeof(struct msg_header)

/* A simple 64-bit multiply-xor hash, 8 bytes at a time: ample to catch a
 * torn or mixed-up message. */
static uint64_t mix(uint64_t h, uint64_t w)
{
    h ^= w;
    h *= UINT64_C(0x100000001b3);
    return h ^ (h >> 29);
}

static uint64_t checksum(const struct msg_header *m, const unsigned char *payload, size_t len)
{
    uint64_t h = UINT64_C(0xcbf29ce484222325);
    h = mix(h, (uint64_t)m->producer << 32 | m->len);
    h = mix(h, m->seq);
    for (; len >= 8; len -= 8, payload += 8) {
        uint64_t w;
        memcpy(&w, payload, 8);
        h = mix(h, w);
    }
    for (; len > 0; len--, payload++)
        h = mix(h, *payload);
    return h;
}

/* xorshift64*: a small deterministic random generator. */
static uint64_t next_random(uint64_t *state)
{
    uint64_t x = *state;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *state = x;
    return x * UINT64_C(0x2545f4914f6cdd1d);
}

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void sleep_ms(unsigned ms)
{
    struct timespec ts = {ms / 1000u, (long)(ms % 1000u) * 1000000L};
    nanosleep(&ts, NULL);
}

/* ------------------------------------------------- a counter in a kv table */

/* Add one to the counter stored under `key`: read the value and its version,
 * then store value + 1 only if the version is still the same (otherwise
 * another process got there first: read again).  Any number of processes may
 * do this at once.  An absent key counts as 0 and has version 0, which
 * mmipc_kv_cas reads as "store only if still absent". */
static int counter_add(mmipc_kv *kv, const char *key)
{
    for (;;) {
        uint64_t value = 0, version = 0;
        ssize_t n = mmipc_kv_get(kv, key, &value, sizeof value, &version);
        if (n == -ENOENT) {
            value = 0;
            version = 0;
        } else if (n < 0) {
            return (int)n;
        }
        value++;
        int rc = mmipc_kv_cas(kv, key, version, &value, sizeof value);
        if (rc != -ESTALE)
            return rc;
    }
}

static int counter_get(mmipc_kv *kv, const char *key, uint64_t *value)
{
    *value = 0;
    ssize_t n = mmipc_kv_get(kv, key, value, sizeof *value, NULL);
    return n == -ENOENT ? 0 : n < 0 ? (int)n : 0;
}

/* ------------------------------------------------------------ scoreboard */

/* What each consumer got, kept OUTSIDE the mmipc file (an anonymous shared
 * mapping made before fork) so that the check does not rely on the thing it
 * checks.  One bit per message per consumer. */
struct report {
    uint64_t received, bytes;
    uint64_t duplicates;   /* same message twice at this consumer */
    uint64_t out_of_order; /* a producer's sequence went backwards */
    uint64_t corrupt;      /* bad checksum, length or ids */
    uint64_t last_ns;      /* when the last message arrived */
};

struct scoreboard {
    struct report *reports; /* [consumers] */
    uint8_t *bits;          /* [consumers][bitmap_bytes] */
    size_t bitmap_bytes;
    size_t map_size;
};

static int scoreboard_init(struct scoreboard *sb, const struct config *cfg)
{
    uint64_t total = (uint64_t)cfg->producers * cfg->per_producer;
    sb->bitmap_bytes = (size_t)((total + 7) / 8);
    size_t reports = cfg->consumers * sizeof(struct report);
    sb->map_size = reports + cfg->consumers * sb->bitmap_bytes;
    void *p = mmap(NULL, sb->map_size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED)
        return -errno;
    sb->reports = p;
    sb->bits = (uint8_t *)p + reports;
    return 0;
}

static uint8_t *bitmap_of(const struct scoreboard *sb, unsigned consumer)
{
    return sb->bits + (size_t)consumer * sb->bitmap_bytes;
}

/* ------------------------------------------------------------ producer */

static int producer(const struct config *cfg, mmipc_ring *ring, mmipc_kv *state, unsigned id)
{
    /* The payload of message `seq` is a window into this random block,
     * starting at byte seq % 256, so that every message differs. */
    size_t noise_len = cfg->max_size + 256;
    unsigned char *noise = malloc(noise_len);
    unsigned char *buf = malloc(cfg->max_size);
    if (noise == NULL || buf == NULL) {
        fprintf(stderr, "producer %u: out of memory\n", id);
        return 1;
    }
    uint64_t rnd = UINT64_C(0x9e3779b97f4a7c15) * (id + 1);
    for (size_t i = 0; i < noise_len; i++)
        noise[i] = (unsigned char)next_random(&rnd);

    for (uint64_t seq = 0; seq < cfg->per_producer; seq++) {
        size_t len = cfg->min_size;
        if (cfg->max_size > cfg->min_size)
            len += next_random(&rnd) % (cfg->max_size - cfg->min_size + 1);

        struct msg_header h = {.producer = id, .len = (uint32_t)len, .seq = seq};
        memcpy(buf + HDR_SIZE, noise + (seq & 255), len - HDR_SIZE);
        h.check = checksum(&h, buf + HDR_SIZE, len - HDR_SIZE);
        memcpy(buf, &h, HDR_SIZE);

        /* Blocks while the ring is full; 0 means the message is in the ring. */
        int rc = mmipc_ring_send(ring, buf, len, SEND_TIMEOUT_MS);
        if (rc < 0) {
            fprintf(stderr, "producer %u: send: %s\n", id, mmipc_strerror(rc));
            return 1;
        }
    }

    /* Tell the consumers this producer is done. */
    int rc = counter_add(state, KEY_DONE);
    if (rc < 0) {
        fprintf(stderr, "producer %u: counting myself done: %s\n", id, mmipc_strerror(rc));
        return 1;
    }
    free(noise);
    free(buf);
    return 0;
}

/* ------------------------------------------------------------ consumer */

/* Check one received message and note it on the scoreboard. */
static void account(const struct config *cfg, const unsigned char *buf, size_t len, struct report *rep, uint8_t *bitmap,
                    uint64_t *next_seq)
{
    struct msg_header h;
    if (len < HDR_SIZE) {
        rep->corrupt++;
        return;
    }
    memcpy(&h, buf, HDR_SIZE);
    if (h.len != len || h.producer >= cfg->producers || h.seq >= cfg->per_producer ||
        h.check != checksum(&h, buf + HDR_SIZE, len - HDR_SIZE)) {
        rep->corrupt++;
        return;
    }

    /* This consumer sees a subset of each producer's messages, but that
     * subset must come in the order the producer sent it. */
    if (h.seq < next_seq[h.producer])
        rep->out_of_order++;
    next_seq[h.producer] = h.seq + 1;

    uint64_t id = (uint64_t)h.producer * cfg->per_producer + h.seq;
    uint8_t bit = (uint8_t)(1u << (id & 7));
    if (bitmap[id / 8] & bit)
        rep->duplicates++;
    bitmap[id / 8] |= bit;
    rep->received++;
    rep->bytes += len;
}

static int consumer(const struct config *cfg, mmipc_ring *ring, mmipc_kv *state, unsigned id, struct report *rep,
                    uint8_t *bitmap)
{
    unsigned char *buf = malloc(cfg->max_size);
    uint64_t *next_seq = calloc(cfg->producers, sizeof *next_seq);
    if (buf == NULL || next_seq == NULL) {
        fprintf(stderr, "consumer %u: out of memory\n", id);
        return 1;
    }

    /* Receive until every producer has said it is done AND the ring is
     * empty.  The order of the two checks matters: once all producers are
     * done nothing new can arrive, so an empty ring after that stays empty. */
    int all_done = 0;
    for (;;) {
        ssize_t n = mmipc_ring_recv(ring, buf, cfg->max_size, all_done ? 0 : RECV_TIMEOUT_MS);
        if (n >= 0) {
            account(cfg, buf, (size_t)n, rep, bitmap, next_seq);
            rep->last_ns = now_ns();
            continue;
        }
        if (n != -EAGAIN && n != -ETIMEDOUT) {
            fprintf(stderr, "consumer %u: recv: %s\n", id, mmipc_strerror((int)n));
            return 1;
        }
        if (all_done)
            break; /* empty, and nobody will send again */

        uint64_t done;
        int rc = counter_get(state, KEY_DONE, &done);
        if (rc < 0) {
            fprintf(stderr, "consumer %u: reading the done counter: %s\n", id, mmipc_strerror(rc));
            return 1;
        }
        all_done = done == cfg->producers;
    }
    free(buf);
    free(next_seq);
    return 0;
}

/* ------------------------------------------------------------ parent */

static volatile sig_atomic_t interrupted;

static void on_signal(int sig)
{
    interrupted = sig;
}

struct child {
    pid_t pid;
    const char *role; /* "producer" or "consumer" */
    unsigned id;
    int exited;
};

static void kill_all(struct child *kids, unsigned n)
{
    for (unsigned i = 0; i < n; i++) {
        if (!kids[i].exited) {
            kill(kids[i].pid, SIGKILL);
            waitpid(kids[i].pid, NULL, 0);
            kids[i].exited = 1;
        }
    }
}

static void show_progress(uint64_t received, uint64_t total, double seconds)
{
    fprintf(stderr, "\r  %llu / %llu messages (%.0f%%), %.0f msgs/s   ", (unsigned long long)received,
            (unsigned long long)total, 100.0 * (double)received / (double)total, (double)received / seconds);
}

/* Wait for every child, drawing a progress line on a terminal.  Returns the
 * number of children that failed; gives up (and kills them all) if nothing
 * moves for STALL_MS, or on Ctrl-C. */
static unsigned supervise(struct child *kids, unsigned n, mmipc_ring *ring, uint64_t total, uint64_t t0)
{
    int live = isatty(STDERR_FILENO);
    int drew = 0;
    unsigned running = n, failed = 0;
    uint64_t last_received = 0, last_change = now_ns(), last_draw = 0;

    while (running > 0) {
        int status;
        pid_t pid = waitpid(-1, &status, WNOHANG);
        if (pid > 0) {
            for (unsigned i = 0; i < n; i++) {
                if (kids[i].pid != pid)
                    continue;
                kids[i].exited = 1;
                running--;
                if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
                    fprintf(stderr, "%s%s %u failed (%s %d)\n", drew ? "\n" : "", kids[i].role, kids[i].id,
                            WIFEXITED(status) ? "exit status" : "signal",
                            WIFEXITED(status) ? WEXITSTATUS(status) : WTERMSIG(status));
                    failed++;
                    kill_all(kids, n); /* the others could wait for it for ever */
                    return failed + running;
                }
            }
            continue;
        }

        uint64_t t = now_ns();
        struct mmipc_ring_stat st;
        if (mmipc_ring_stat(ring, &st) == 0 && st.received != last_received) {
            last_received = st.received;
            last_change = t;
        }
        if (interrupted || t - last_change > (uint64_t)STALL_MS * 1000000u) {
            fprintf(stderr, "%s%s: stopping every process\n", drew ? "\n" : "",
                    interrupted ? "interrupted" : "no progress for 15 s");
            kill_all(kids, n);
            return running;
        }
        if (live && t - t0 > 1000000000u && t - last_draw >= 200000000u) {
            show_progress(last_received, total, (double)(t - t0) / 1e9);
            last_draw = t;
            drew = 1;
        }
        sleep_ms(10);
    }
    if (drew)
        fprintf(stderr, "\r\033[K");
    return failed;
}

/* Parent's final check: each message received by exactly one consumer. */
static int verify(const struct config *cfg, const struct scoreboard *sb, unsigned failed_children, mmipc_ring *ring)
{
    uint64_t total = (uint64_t)cfg->producers * cfg->per_producer;
    uint64_t missing = 0, twice = 0, dup = 0, order = 0, corrupt = 0;

    for (uint64_t id = 0; id < total; id++) {
        unsigned seen = 0;
        for (unsigned c = 0; c < cfg->consumers; c++)
            seen += (bitmap_of(sb, c)[id / 8] >> (id & 7)) & 1u;
        if (seen == 0)
            missing++;
        else if (seen > 1)
            twice++;
    }
    for (unsigned c = 0; c < cfg->consumers; c++) {
        dup += sb->reports[c].duplicates;
        order += sb->reports[c].out_of_order;
        corrupt += sb->reports[c].corrupt;
    }
    struct mmipc_ring_stat st;
    uint64_t left = mmipc_ring_stat(ring, &st) == 0 ? st.messages : 0;

    if (failed_children == 0 && missing == 0 && twice + dup == 0 && order == 0 && corrupt == 0 && left == 0) {
        printf("verify: OK (%llu messages, each received exactly once, in order per producer, "
               "checksums good)\n",
               (unsigned long long)total);
        return 0;
    }
    printf("verify: FAILED: %u process(es) failed, %llu missing, %llu duplicated, %llu out of order, "
           "%llu corrupt, %llu left in the ring\n",
           failed_children, (unsigned long long)missing, (unsigned long long)(twice + dup), (unsigned long long)order,
           (unsigned long long)corrupt, (unsigned long long)left);
    return 1;
}

static void print_summary(const struct config *cfg, const struct scoreboard *sb, mmipc_ring *ring, double seconds)
{
    uint64_t msgs = 0, bytes = 0;
    for (unsigned c = 0; c < cfg->consumers; c++) {
        msgs += sb->reports[c].received;
        bytes += sb->reports[c].bytes;
    }
    struct mmipc_ring_stat st;
    memset(&st, 0, sizeof st);
    mmipc_ring_stat(ring, &st);

    printf("processes:  %u producer%s, %u consumer%s, ring of %llu bytes\n", cfg->producers,
           cfg->producers == 1 ? "" : "s", cfg->consumers, cfg->consumers == 1 ? "" : "s",
           (unsigned long long)st.capacity);
    printf("messages:   %llu received (%llu per producer)\n", (unsigned long long)msgs,
           (unsigned long long)cfg->per_producer);
    if (cfg->min_size == cfg->max_size)
        printf("bytes:      %llu (%zu per message)\n", (unsigned long long)bytes, cfg->min_size);
    else
        printf("bytes:      %llu (%zu to %zu per message, %.0f on average)\n", (unsigned long long)bytes, cfg->min_size,
               cfg->max_size, msgs ? (double)bytes / (double)msgs : 0.0);
    printf("elapsed:    %.3f s\n", seconds);
    printf("throughput: %.0f msgs/s, %.1f MB/s\n", (double)msgs / seconds, (double)bytes / seconds / 1e6);
    for (unsigned c = 0; c < cfg->consumers; c++)
        printf("consumer %u: %llu messages\n", c, (unsigned long long)sb->reports[c].received);
    printf("waits:      producers slept %llu times on a full ring, consumers %llu times on an empty one\n",
           (unsigned long long)st.send_waits, (unsigned long long)st.recv_waits);
}

/* ------------------------------------------------------------ options */

static void usage(FILE *out)
{
    fprintf(out,
            "usage: prodcons [-p N] [-c M] [-n COUNT] [-s SIZE | -s MIN-MAX] [--capacity BYTES] [--file PATH]\n"
            "Fork N producers and M consumers over one mmipc ring, then verify the delivery.\n"
            "  -p N              producer processes (default 2)\n"
            "  -c M              consumer processes (default 2)\n"
            "  -n COUNT          messages per producer (default 200000)\n"
            "  -s SIZE, MIN-MAX  message bytes, or a range for random sizes (default 64, at least %zu)\n"
            "  --capacity BYTES  ring capacity, suffixes k, M, G allowed (default 1M)\n"
            "  --file PATH       create the region file at PATH and keep it (default: a temporary one)\n"
            "  --help            this text\n",
            HDR_SIZE);
}

/* Parse a byte count with an optional k/M/G suffix (powers of 1024). */
static int parse_bytes(const char *s, uint64_t *out)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno != 0 || end == s || *s == '-')
        return -1;
    static const char suffixes[] = "kmg";
    const char *sfx = *end != '\0' ? strchr(suffixes, tolower((unsigned char)*end)) : NULL;
    unsigned shift = 0;
    if (sfx != NULL) {
        shift = 10 * (unsigned)(sfx - suffixes + 1);
        end++;
    }
    if (*end != '\0' || v > (UINT64_MAX >> shift))
        return -1;
    *out = (uint64_t)v << shift;
    return 0;
}

static int parse_range(const char *s, size_t *lo, size_t *hi)
{
    char first[32];
    const char *dash = strchr(s, '-');
    uint64_t a, b;
    if (dash == NULL) {
        if (parse_bytes(s, &a) < 0)
            return -1;
        b = a;
    } else {
        size_t n = (size_t)(dash - s);
        if (n == 0 || n >= sizeof first)
            return -1;
        memcpy(first, s, n);
        first[n] = '\0';
        if (parse_bytes(first, &a) < 0 || parse_bytes(dash + 1, &b) < 0)
            return -1;
    }
    if (a > b || b > UINT32_MAX)
        return -1;
    *lo = (size_t)a;
    *hi = (size_t)b;
    return 0;
}

static int parse_args(int argc, char **argv, struct config *cfg)
{
    static const struct option longopts[] = {
        {"capacity", required_argument, NULL, 'C'},
        {"file", required_argument, NULL, 'f'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    *cfg = (struct config){
        .producers = 2, .consumers = 2, .per_producer = 200000, .min_size = 64, .max_size = 64, .capacity = 1u << 20};
    int opt;
    uint64_t v;
    while ((opt = getopt_long(argc, argv, "p:c:n:s:h", longopts, NULL)) != -1) {
        switch (opt) {
        case 'p':
        case 'c':
            if (parse_bytes(optarg, &v) < 0 || v < 1 || v > MAX_PROCS) {
                fprintf(stderr, "prodcons: -%c wants a number from 1 to %d\n", opt, MAX_PROCS);
                return -1;
            }
            *(opt == 'p' ? &cfg->producers : &cfg->consumers) = (unsigned)v;
            break;
        case 'n':
            if (parse_bytes(optarg, &v) < 0 || v < 1 || v > (UINT64_C(1) << 34)) {
                fprintf(stderr, "prodcons: -n wants a positive number\n");
                return -1;
            }
            cfg->per_producer = v;
            break;
        case 's':
            if (parse_range(optarg, &cfg->min_size, &cfg->max_size) < 0 || cfg->min_size < HDR_SIZE) {
                fprintf(stderr, "prodcons: -s wants SIZE or MIN-MAX, at least %zu bytes\n", HDR_SIZE);
                return -1;
            }
            break;
        case 'C':
            if (parse_bytes(optarg, &v) < 0 || v < 4096 || v > (UINT64_C(1) << 32)) {
                fprintf(stderr, "prodcons: --capacity wants 4k to 4G bytes\n");
                return -1;
            }
            cfg->capacity = (size_t)v;
            break;
        case 'f':
            cfg->file = optarg;
            break;
        case 'h':
            usage(stdout);
            exit(0);
        default:
            usage(stderr);
            return -1;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "prodcons: unexpected argument '%s'\n", argv[optind]);
        return -1;
    }
    return 0;
}

/* ------------------------------------------------------------ main */

/* Fork the consumers, then the producers, wait for all of them, and check
 * the outcome.  Returns the exit status for main. */
static int run(const struct config *cfg, mmipc_ring *ring, mmipc_kv *state)
{
    struct scoreboard sb = {0};
    int rc = scoreboard_init(&sb, cfg);
    if (rc < 0) {
        fprintf(stderr, "prodcons: scoreboard: %s\n", strerror(-rc));
        return 2;
    }
    fflush(stdout); /* or every child would print our buffered output again */

    struct child kids[2 * MAX_PROCS];
    unsigned n = 0;
    uint64_t t0 = now_ns();
    for (unsigned i = 0; i < cfg->consumers + cfg->producers; i++) {
        int is_consumer = i < cfg->consumers;
        unsigned id = is_consumer ? i : i - cfg->consumers;
        pid_t pid = fork();
        if (pid == 0) {
            /* The child: it uses the handles it inherited, then leaves with
             * _exit() so as not to run the parent's exit-time cleanup. */
            _exit(is_consumer ? consumer(cfg, ring, state, id, &sb.reports[id], bitmap_of(&sb, id))
                              : producer(cfg, ring, state, id));
        }
        if (pid < 0) {
            perror("prodcons: fork");
            kill_all(kids, n);
            munmap(sb.reports, sb.map_size);
            return 2;
        }
        kids[n++] = (struct child){.pid = pid, .role = is_consumer ? "consumer" : "producer", .id = id};
    }
    signal(SIGINT, on_signal);
    signal(SIGTERM, on_signal);

    unsigned failed = supervise(kids, n, ring, (uint64_t)cfg->producers * cfg->per_producer, t0);

    /* Elapsed: from the first fork to the last message received. */
    uint64_t t1 = t0;
    for (unsigned c = 0; c < cfg->consumers; c++)
        if (sb.reports[c].last_ns > t1)
            t1 = sb.reports[c].last_ns;
    double seconds = t1 > t0 ? (double)(t1 - t0) / 1e9 : 1e-9;

    print_summary(cfg, &sb, ring, seconds);
    int result = verify(cfg, &sb, failed, ring);
    munmap(sb.reports, sb.map_size);
    return result;
}

/* Create the region file and the two objects in it.  Returns 0 or a
 * negative errno after saying what went wrong. */
static int create_objects(const struct config *cfg, const char *path, mmipc_region **region, mmipc_ring **ring,
                          mmipc_kv **state)
{
    /* The file must hold the ring (its capacity is rounded up to a power of
     * two), a tiny kv table, and the region's header, directory and lease
     * slots: 256 KiB is plenty for those. */
    size_t ring_bytes = 4096;
    while (ring_bytes < cfg->capacity)
        ring_bytes *= 2;
    struct mmipc_region_opts opts = {.size = ring_bytes + (256u << 10)};

    /* MMIPC_EXCL: start from an empty file, never from a previous run's. */
    int rc = mmipc_region_open(path, MMIPC_CREATE | MMIPC_EXCL, &opts, region);
    if (rc == -EEXIST) {
        fprintf(stderr, "prodcons: %s already exists; remove it or choose another --file\n", path);
        return rc;
    }
    if (rc < 0) {
        fprintf(stderr, "prodcons: creating %s: %s\n", path, mmipc_strerror(rc));
        return rc;
    }
    rc = mmipc_ring_create(*region, RING_NAME, cfg->capacity, ring);
    if (rc < 0) {
        fprintf(stderr, "prodcons: creating the ring: %s\n", mmipc_strerror(rc));
        return rc;
    }
    rc = mmipc_kv_create(*region, STATE_NAME, 8, sizeof(uint64_t), state);
    if (rc < 0) {
        fprintf(stderr, "prodcons: creating the kv table: %s\n", mmipc_strerror(rc));
        return rc;
    }

    /* The largest message a ring takes is a little under half its capacity. */
    struct mmipc_ring_stat st;
    rc = mmipc_ring_stat(*ring, &st);
    if (rc < 0) {
        fprintf(stderr, "prodcons: ring stat: %s\n", mmipc_strerror(rc));
        return rc;
    }
    if (cfg->max_size > st.max_message) {
        fprintf(stderr, "prodcons: messages of %zu bytes do not fit this ring (largest: %llu); raise --capacity\n",
                cfg->max_size, (unsigned long long)st.max_message);
        return -EMSGSIZE;
    }
    return 0;
}

int main(int argc, char **argv)
{
    struct config cfg;
    if (parse_args(argc, argv, &cfg) < 0)
        return 2;

    /* Where the region lives: --file, or a fresh private directory. */
    char dir[256] = "", path[320];
    if (cfg.file != NULL) {
        snprintf(path, sizeof path, "%s", cfg.file);
    } else {
        const char *tmp = getenv("TMPDIR");
        snprintf(dir, sizeof dir, "%s/prodcons-XXXXXX", tmp && *tmp ? tmp : "/tmp");
        if (mkdtemp(dir) == NULL) {
            perror("prodcons: mkdtemp");
            return 2;
        }
        snprintf(path, sizeof path, "%s/region.mmipc", dir);
    }

    mmipc_region *region = NULL;
    mmipc_ring *ring = NULL;
    mmipc_kv *state = NULL;
    int result = 2;
    if (create_objects(&cfg, path, &region, &ring, &state) == 0) {
        printf("prodcons: mmipc %s, region %s\n", mmipc_version(), path);
        result = run(&cfg, ring, state);
    }

    mmipc_region_close(region); /* frees the ring and kv handles too */
    if (dir[0] != '\0') {
        unlink(path);
        rmdir(dir);
    } else if (region != NULL) {
        printf("region file kept: %s\n", path);
    }
    return result;
}
