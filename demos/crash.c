/*
 * crash: what mmipc promises when a process is SIGKILLed in the middle of
 * its work, shown by doing it.
 *
 * Each round:
 *   - a consumer process reads the ring (mmipc_ring_peek, check, report,
 *     mmipc_ring_release) and reports every message it got down a pipe;
 *   - a producer process sends numbered messages as fast as it can; after
 *     each mmipc_ring_send that returned 0 it writes the number down its
 *     own pipe: that message is "acknowledged";
 *   - after a random short time the parent SIGKILLs the producer, at
 *     whatever instruction it happens to be: often inside mmipc_ring_send,
 *     now and then while holding the ring's lock (the round's "repairs"
 *     count says when the library had to clean up after it);
 *   - the parent itself then sends an empty message (the "stop" sign), which
 *     needs the lock the dead producer may have held: the library repairs
 *     it.  The consumer drains the ring up to the stop sign and exits.
 * The parent then checks the promise: every acknowledged message was
 * received exactly once; at most one more message was received, the one the
 * producer had sent but not yet acknowledged when it died; no message is
 * torn (each carries its number and a checksum of all its bytes).
 *
 * In the last round there are two consumers and the parent SIGKILLs one of
 * them first; the other carries on with the whole stream.  Consumers read
 * with peek/release, the at-least-once path: a message the killed consumer
 * had peeked but not released goes to the other consumer.  If it had
 * already reported that message before it died, that one message counts
 * twice, which is allowed; losing one is not.
 *
 * Every child attaches to the region file by its path, as an unrelated
 * program would; that gives it a lease of its own, which is how the library
 * tells that it has died.
 *
 * Run it
 *   demos/crash               5 rounds
 *   demos/crash -r 20         20 rounds
 *   demos/crash --seed 42     repeat the kill times of an earlier run
 * The last line is "verify: OK" (exit 0) or "verify: FAILED ..." (exit 1).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <getopt.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "mmipc.h"

#define RING_NAME "crash"
#define RING_CAPACITY (256u << 10)
#define MIN_MSG 24 /* the header alone */
#define MAX_MSG 32768
#define ROUND_MS 20000 /* a round taking longer than this has failed */
#define OP_TIMEOUT_MS 5000

/* ------------------------------------------------------------ messages */

/* A message: this header, then len - 24 payload bytes derived from seq. */
struct msg_header {
    uint32_t round;
    uint32_t len; /* whole message, header included */
    uint64_t seq; /* 1, 2, 3, ... within a round */
    uint64_t check;
};

static uint64_t mix(uint64_t h, uint64_t w)
{
    h ^= w;
    h *= UINT64_C(0x100000001b3);
    return h ^ (h >> 29);
}

static uint64_t checksum(const struct msg_header *m, const unsigned char *payload, size_t len)
{
    uint64_t h = UINT64_C(0xcbf29ce484222325);
    h = mix(h, (uint64_t)m->round << 32 | m->len);
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

static uint64_t next_random(uint64_t *state)
{
    uint64_t x = *state;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *state = x;
    return x * UINT64_C(0x2545f4914f6cdd1d);
}

/* Build message `seq` of round `round` in buf (MAX_MSG bytes); returns its
 * length.  Sizes vary, and the payload is cheap to make, so that the
 * producer spends most of its time inside mmipc_ring_send copying: that is
 * where we want the kill to land. */
static size_t make_message(unsigned char *buf, unsigned round, uint64_t seq)
{
    uint64_t rnd = seq * UINT64_C(0x9e3779b97f4a7c15) + round + 1;
    size_t len = MIN_MSG + next_random(&rnd) % (MAX_MSG - MIN_MSG + 1);
    uint64_t w = next_random(&rnd);
    for (size_t i = sizeof(struct msg_header); i < len; i += 8, w += UINT64_C(0x9e3779b97f4a7c15))
        memcpy(buf + i, &w, len - i < 8 ? len - i : 8);
    struct msg_header h = {.round = round, .len = (uint32_t)len, .seq = seq};
    h.check = checksum(&h, buf + sizeof h, len - sizeof h);
    memcpy(buf, &h, sizeof h);
    return len;
}

/* 0 and the sequence number if the message is whole and from this round. */
static int check_message(const void *msg, size_t len, unsigned round, uint64_t *seq)
{
    struct msg_header h;
    if (len < sizeof h)
        return -1;
    memcpy(&h, msg, sizeof h);
    if (h.round != round || h.len != len || h.seq == 0 ||
        h.check != checksum(&h, (const unsigned char *)msg + sizeof h, len - sizeof h))
        return -1;
    *seq = h.seq;
    return 0;
}

static uint64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* ------------------------------------------------------------ children */

/* What a consumer writes down its pipe for every message. */
struct report {
    uint64_t seq; /* 0 if the message was torn */
};

/* A pipe write of at most PIPE_BUF bytes is atomic: even a SIGKILL cannot
 * leave half a record in the pipe. */
static int write_record(int fd, const void *rec, size_t len)
{
    ssize_t n;
    do
        n = write(fd, rec, len);
    while (n < 0 && errno == EINTR);
    return n == (ssize_t)len ? 0 : -1;
}

/* Attach to the region by its path: a lease of our own (see the top). */
static mmipc_ring *attach(const char *path, const char *who, mmipc_region **region)
{
    mmipc_ring *ring = NULL;
    int rc = mmipc_region_open(path, 0, NULL, region);
    if (rc == 0 && (rc = mmipc_ring_open(*region, RING_NAME, &ring)) < 0)
        mmipc_region_close(*region);
    if (rc < 0) {
        fprintf(stderr, "%s: attaching to %s: %s\n", who, path, mmipc_strerror(rc));
        return NULL;
    }
    return ring;
}

/* Send 1, 2, 3, ... until killed. */
static int producer(const char *path, unsigned round, int ack_fd)
{
    mmipc_region *region;
    mmipc_ring *ring = attach(path, "producer", &region);
    if (ring == NULL)
        return 1;
    unsigned char buf[MAX_MSG];
    for (uint64_t seq = 1;; seq++) {
        size_t len = make_message(buf, round, seq);
        int rc = mmipc_ring_send(ring, buf, len, OP_TIMEOUT_MS);
        if (rc < 0) {
            fprintf(stderr, "producer: send: %s\n", mmipc_strerror(rc));
            return 1;
        }
        /* The send returned 0: the message is in the ring.  Say so. */
        if (write_record(ack_fd, &seq, sizeof seq) < 0)
            return 1;
    }
}

/* Receive and report until the empty "stop" message. */
static int consumer(const char *path, unsigned round, int report_fd)
{
    mmipc_region *region;
    mmipc_ring *ring = attach(path, "consumer", &region);
    if (ring == NULL)
        return 1;
    for (;;) {
        const void *msg;
        ssize_t len = mmipc_ring_peek(ring, &msg, OP_TIMEOUT_MS);
        if (len == -ETIMEDOUT)
            continue; /* the parent decides when it has waited too long */
        if (len < 0) {
            fprintf(stderr, "consumer: peek: %s\n", mmipc_strerror((int)len));
            return 1;
        }
        int stop = len == 0;
        struct report rep = {0};
        if (!stop && check_message(msg, (size_t)len, round, &rep.seq) < 0)
            rep.seq = 0;
        /* Report, THEN release: killed in between, the message is reported
         * and will also be handed to another consumer (at-least-once). */
        if (!stop && write_record(report_fd, &rep, sizeof rep) < 0)
            return 1;
        int rc = mmipc_ring_release(ring, msg);
        if (rc < 0) {
            fprintf(stderr, "consumer: release: %s\n", mmipc_strerror(rc));
            return 1;
        }
        if (stop) {
            mmipc_region_close(region);
            return 0;
        }
    }
}

/* ------------------------------------------------------------ parent */

struct child {
    const char *name;
    pid_t pid;
    int fd;                 /* read end of its pipe; -1 once at end of file */
    size_t rec_size;        /* bytes per record on the pipe */
    unsigned char part[16]; /* a record split across two reads */
    size_t have;
    int killed, reaped, status;
    uint64_t records;
};

/* What one round saw. */
struct tally {
    uint64_t acked; /* highest acknowledged number (they come in order) */
    int ack_gap;    /* an acknowledgement came out of order */
    uint8_t *count; /* count[seq]: times received, saturating at 255 */
    uint64_t count_len;
    uint64_t torn;
    uint64_t received;
};

enum role { PRODUCER, CONSUMER };

static int spawn(struct child *c, const char *name, enum role role, const char *path, unsigned round)
{
    int fds[2];
    if (pipe(fds) < 0) {
        perror("crash: pipe");
        return -1;
    }
    fflush(stdout);
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid < 0) {
        perror("crash: fork");
        close(fds[0]);
        close(fds[1]);
        return -1;
    }
    if (pid == 0) {
        /* Die with the parent, so that no child can outlive the demo. */
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent)
            _exit(1);
        close(fds[0]);
        _exit(role == PRODUCER ? producer(path, round, fds[1]) : consumer(path, round, fds[1]));
    }
    close(fds[1]);
    *c = (struct child){.name = name,
                        .pid = pid,
                        .fd = fds[0],
                        .rec_size = role == PRODUCER ? sizeof(uint64_t) : sizeof(struct report)};
    return 0;
}

static void kill_child(struct child *c)
{
    if (!c->reaped) {
        kill(c->pid, SIGKILL);
        c->killed = 1;
        /* Reap it: until then it is a zombie, not yet provably dead. */
        waitpid(c->pid, &c->status, 0);
        c->reaped = 1;
    }
}

static int note_received(struct tally *t, uint64_t seq)
{
    if (seq == 0) {
        t->torn++;
        return 0;
    }
    if (seq >= t->count_len) {
        uint64_t len = t->count_len ? t->count_len : 65536;
        while (len <= seq)
            len *= 2;
        if (len > (UINT64_C(1) << 32))
            return -1;
        uint8_t *p = realloc(t->count, len);
        if (p == NULL)
            return -1;
        memset(p + t->count_len, 0, len - t->count_len);
        t->count = p;
        t->count_len = len;
    }
    if (t->count[seq] < 255)
        t->count[seq]++;
    t->received++;
    return 0;
}

/* Read what is in the child's pipe; close it at end of file. */
static int drain_pipe(struct child *c, struct tally *t, int is_producer)
{
    unsigned char buf[4096];
    ssize_t n = read(c->fd, buf + c->have, sizeof buf - c->have);
    if (n < 0)
        return errno == EINTR || errno == EAGAIN ? 0 : -1;
    if (n == 0) {
        close(c->fd);
        c->fd = -1;
        return 0;
    }
    memcpy(buf, c->part, c->have);
    size_t total = c->have + (size_t)n, off = 0;
    for (; off + c->rec_size <= total; off += c->rec_size) {
        uint64_t seq;
        memcpy(&seq, buf + off, sizeof seq);
        c->records++;
        if (is_producer) {
            if (seq != t->acked + 1)
                t->ack_gap = 1;
            t->acked = seq;
        } else if (note_received(t, seq) < 0) {
            return -1;
        }
    }
    c->have = total - off;
    memcpy(c->part, buf + off, c->have);
    return 0;
}

/* One round: who takes part, when they die, and what was seen. */
struct round {
    unsigned number;
    unsigned producer_kill_ms; /* after the producer started */
    unsigned consumer_kill_ms; /* only if victim != NULL; always before the producer's */
    struct child kids[3];      /* consumers first, the producer last */
    unsigned nkids, nconsumers;
    struct child *producer, *victim;
    struct tally seen;
    uint64_t leftover; /* messages the parent found queued after the consumers left */
    int ok;
};

static void round_failed(struct round *rd, const char *what)
{
    printf("round %u: %s\n", rd->number, what);
    rd->ok = 0;
}

/* Step 1: start the consumers, then the producer. */
static int start_round(struct round *rd, const char *path)
{
    static const char *const names[] = {"consumer 0", "consumer 1"};
    for (unsigned i = 0; i < rd->nconsumers; i++) {
        if (spawn(&rd->kids[rd->nkids], names[i], CONSUMER, path, rd->number) < 0)
            return -1;
        rd->nkids++;
    }
    rd->producer = &rd->kids[rd->nkids];
    if (spawn(rd->producer, "producer", PRODUCER, path, rd->number) < 0)
        return -1;
    rd->nkids++;
    return 0;
}

/* Step 2: until every pipe is at end of file, read the pipes and kill on
 * schedule; once the producer is dead and all its acknowledgements are in,
 * post one stop sign (an empty message) per live consumer. */
static void watch_round(struct round *rd, mmipc_ring *ring)
{
    struct child *prod = rd->producer, *victim = rd->victim;
    uint64_t start = now_ms(), deadline = start + ROUND_MS;
    int stops_sent = 0;

    while (rd->ok) {
        uint64_t now = now_ms();
        if (victim != NULL && !victim->killed && now >= start + rd->consumer_kill_ms)
            kill_child(victim);
        if (!prod->killed && now >= start + rd->producer_kill_ms)
            kill_child(prod);
        if (!prod->killed && prod->fd < 0) {
            round_failed(rd, "the producer stopped before it was killed");
            break;
        }
        if (prod->killed && prod->fd < 0 && !stops_sent) {
            /* This send may need the lock the producer died holding. */
            for (unsigned i = 0; i < rd->nconsumers; i++) {
                int rc = rd->kids[i].killed ? 0 : mmipc_ring_send(ring, "", 0, OP_TIMEOUT_MS);
                if (rc < 0) {
                    printf("round %u: sending a stop sign: %s\n", rd->number, mmipc_strerror(rc));
                    rd->ok = 0;
                }
            }
            stops_sent = 1;
        }

        struct pollfd pfd[3];
        struct child *who[3];
        nfds_t npfd = 0;
        for (unsigned i = 0; i < rd->nkids; i++) {
            if (rd->kids[i].fd >= 0) {
                pfd[npfd] = (struct pollfd){.fd = rd->kids[i].fd, .events = POLLIN};
                who[npfd++] = &rd->kids[i];
            }
        }
        if (npfd == 0)
            break; /* everybody is gone: done */
        if (now > deadline) {
            round_failed(rd, "still running after 20 s: giving up");
            break;
        }
        if (poll(pfd, npfd, 5) < 0 && errno != EINTR) {
            round_failed(rd, "poll failed");
            break;
        }
        for (nfds_t i = 0; i < npfd; i++)
            if (pfd[i].revents != 0 && drain_pipe(who[i], &rd->seen, who[i] == prod) < 0)
                round_failed(rd, "reading a pipe failed");
    }
}

/* Step 3: reap every child (killing any left if the round went wrong) and
 * check that each one either exited well or died by our SIGKILL. */
static void reap_round(struct round *rd)
{
    for (unsigned i = 0; i < rd->nkids; i++) {
        struct child *c = &rd->kids[i];
        if (!c->reaped && !rd->ok)
            kill_child(c);
        if (!c->reaped) {
            waitpid(c->pid, &c->status, 0);
            c->reaped = 1;
        }
        if (c->fd >= 0)
            close(c->fd);
        int killed_by_us = c->killed && WIFSIGNALED(c->status) && WTERMSIG(c->status) == SIGKILL;
        int exited_well = WIFEXITED(c->status) && WEXITSTATUS(c->status) == 0;
        if (!killed_by_us && !exited_well) {
            printf("round %u: %s failed on its own\n", rd->number, c->name);
            rd->ok = 0;
        }
    }
}

/* Step 4: take whatever is still queued.  That can happen: a message the
 * killed consumer had peeked is handed back to the ring, possibly after the
 * other consumer took its stop sign. */
static void drain_ring(struct round *rd, mmipc_ring *ring)
{
    unsigned char buf[MAX_MSG];
    ssize_t n;
    while ((n = mmipc_ring_recv(ring, buf, sizeof buf, 100)) >= 0) {
        if (n == 0)
            continue; /* a stop sign nobody took */
        uint64_t seq;
        note_received(&rd->seen, check_message(buf, (size_t)n, rd->number, &seq) == 0 ? seq : 0);
        rd->leftover++;
    }
}

/* Step 5: the promise.  Returns 0 if it held. */
static int judge_round(struct round *rd, uint64_t repairs)
{
    const struct tally *t = &rd->seen;
    uint64_t lost = 0, twice = 0, unacked = 0, stray = 0;
    for (uint64_t seq = 1; seq <= t->acked || seq < t->count_len; seq++) {
        unsigned times = seq < t->count_len ? t->count[seq] : 0;
        if (seq <= t->acked && times == 0)
            lost++; /* acknowledged, never received */
        if (times > 1)
            twice += times - 1;
        if (seq == t->acked + 1 && times > 0)
            unacked++; /* sent, but killed before it could say so: fine */
        else if (seq > t->acked + 1 && times > 0)
            stray++; /* never sent?! */
    }
    /* A consumer killed between reporting a message and releasing it: that
     * message is reported again by the next consumer (at-least-once). */
    uint64_t allowed_twice = rd->victim != NULL ? 1 : 0;

    if (rd->victim != NULL)
        printf("round %u: %s killed after %u ms, having reported %llu messages; consumer 1 carried on\n", rd->number,
               rd->victim->name, rd->consumer_kill_ms, (unsigned long long)rd->victim->records);
    printf("round %u: producer killed after %u ms: %llu acknowledged, %llu received%s; "
           "%llu lost, %llu twice, %llu torn; %llu repair%s\n",
           rd->number, rd->producer_kill_ms, (unsigned long long)t->acked, (unsigned long long)t->received,
           unacked ? " (1 sent but not yet acknowledged)" : "", (unsigned long long)lost, (unsigned long long)twice,
           (unsigned long long)t->torn, (unsigned long long)repairs, repairs == 1 ? "" : "s");
    if (rd->leftover > 0)
        printf("round %u: %llu message(s) were still queued after the consumers left\n", rd->number,
               (unsigned long long)rd->leftover);

    if (t->ack_gap)
        round_failed(rd, "FAILED: acknowledgements out of order");
    if (lost || t->torn || stray || twice > allowed_twice) {
        printf("round %u: FAILED: %llu lost, %llu torn, %llu never sent, %llu twice (%llu allowed)\n", rd->number,
               (unsigned long long)lost, (unsigned long long)t->torn, (unsigned long long)stray,
               (unsigned long long)twice, (unsigned long long)allowed_twice);
        rd->ok = 0;
    }
    return rd->ok ? 0 : -1;
}

/* Run one round and print what happened.  Returns 0 if the promise held. */
static int run_round(const char *path, mmipc_ring *ring, struct round *rd, uint64_t *total_acked,
                     uint64_t *total_repairs)
{
    struct mmipc_ring_stat before, after;
    memset(&before, 0, sizeof before);
    memset(&after, 0, sizeof after);
    mmipc_ring_stat(ring, &before);

    rd->ok = 1;
    if (start_round(rd, path) < 0)
        rd->ok = 0;
    else
        watch_round(rd, ring);
    reap_round(rd);
    drain_ring(rd, ring);

    mmipc_ring_stat(ring, &after);
    uint64_t repairs = after.recoveries - before.recoveries;
    int rc = judge_round(rd, repairs);
    *total_acked += rd->seen.acked;
    *total_repairs += repairs;
    free(rd->seen.count);
    return rc;
}

static void usage(FILE *out)
{
    fprintf(out, "usage: crash [-r ROUNDS] [--seed N] [--file PATH]\n"
                 "SIGKILL a producer (and once a consumer) in mid-stream; check nothing acknowledged is lost.\n"
                 "  -r ROUNDS    rounds (default 5); the last one also kills a consumer\n"
                 "  --seed N     seed for the kill times (default: from the clock; printed)\n"
                 "  --file PATH  create the region file at PATH and keep it (default: a temporary one)\n"
                 "  --help       this text\n");
}

int main(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"seed", required_argument, NULL, 's'},
        {"file", required_argument, NULL, 'f'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    unsigned rounds = 5;
    uint64_t seed = (uint64_t)time(NULL) ^ ((uint64_t)getpid() << 16);
    const char *file = NULL;
    int opt;
    while ((opt = getopt_long(argc, argv, "r:h", longopts, NULL)) != -1) {
        char *end;
        switch (opt) {
        case 'r': {
            long v = strtol(optarg, &end, 10);
            if (*optarg == '\0' || *end != '\0' || v < 1 || v > 10000) {
                fprintf(stderr, "crash: -r wants a number from 1 to 10000\n");
                return 2;
            }
            rounds = (unsigned)v;
            break;
        }
        case 's':
            seed = strtoull(optarg, &end, 10);
            if (*optarg == '\0' || *end != '\0') {
                fprintf(stderr, "crash: --seed wants a number\n");
                return 2;
            }
            break;
        case 'f':
            file = optarg;
            break;
        case 'h':
            usage(stdout);
            return 0;
        default:
            usage(stderr);
            return 2;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "crash: unexpected argument '%s'\n", argv[optind]);
        return 2;
    }

    char dir[256] = "", path[320];
    if (file != NULL) {
        snprintf(path, sizeof path, "%s", file);
    } else {
        const char *tmp = getenv("TMPDIR");
        snprintf(dir, sizeof dir, "%s/crash-XXXXXX", tmp && *tmp ? tmp : "/tmp");
        if (mkdtemp(dir) == NULL) {
            perror("crash: mkdtemp");
            return 2;
        }
        snprintf(path, sizeof path, "%s/region.mmipc", dir);
    }

    mmipc_region *region = NULL;
    mmipc_ring *ring = NULL;
    struct mmipc_region_opts opts = {.size = RING_CAPACITY + (256u << 10)};
    int rc = mmipc_region_open(path, MMIPC_CREATE | MMIPC_EXCL, &opts, &region);
    if (rc < 0)
        fprintf(stderr, "crash: creating %s: %s\n", path, mmipc_strerror(rc));
    else if ((rc = mmipc_ring_create(region, RING_NAME, RING_CAPACITY, &ring)) < 0)
        fprintf(stderr, "crash: creating the ring: %s\n", mmipc_strerror(rc));

    int result = 2;
    if (rc == 0) {
        printf("crash: mmipc %s, %u rounds, seed %llu, region %s\n", mmipc_version(), rounds, (unsigned long long)seed,
               path);
        uint64_t rnd = seed ? seed : 1, acked = 0, repairs = 0;
        unsigned failed = 0;
        for (unsigned r = 1; r <= rounds; r++) {
            /* The last round has two consumers and kills the first. */
            struct round rd = {.number = r, .nconsumers = r == rounds ? 2 : 1};
            rd.producer_kill_ms = 30 + (unsigned)(next_random(&rnd) % 200);
            rd.consumer_kill_ms = 10 + (unsigned)(next_random(&rnd) % (rd.producer_kill_ms - 20));
            rd.victim = rd.nconsumers == 2 ? &rd.kids[0] : NULL;
            if (run_round(path, ring, &rd, &acked, &repairs) < 0)
                failed++;
        }
        printf("total: %llu acknowledged messages over %u rounds; the library made %llu repair(s) "
               "(a lock a killed process held, a message a killed consumer held)\n",
               (unsigned long long)acked, rounds, (unsigned long long)repairs);
        if (failed == 0) {
            printf("verify: OK (every acknowledged message received, none torn, "
                   "none twice except as allowed)\n");
            result = 0;
        } else {
            printf("verify: FAILED: %u of %u rounds broke the promise\n", failed, rounds);
            result = 1;
        }
    }

    mmipc_region_close(region);
    if (dir[0] != '\0') {
        unlink(path);
        rmdir(dir);
    } else if (region != NULL) {
        printf("region file kept: %s\n", path);
    }
    return result;
}
