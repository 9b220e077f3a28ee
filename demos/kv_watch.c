/*
 * kv_watch: one publisher changes a configuration value; several worker
 * processes follow every change with mmipc_kv_wait.
 *
 * What it shows
 *   - processes attaching to an existing region file by its path
 *     (mmipc_region_open without MMIPC_CREATE, then mmipc_kv_open);
 *   - mmipc_kv_put / mmipc_kv_get / mmipc_kv_del and versions: every change
 *     gives the key a new, larger version; a deleted key has version 0;
 *   - mmipc_kv_wait(key, seen): sleep until the key's version differs from
 *     the one you last saw.  Because the wait compares versions, a change
 *     made between your get and your wait is never missed;
 *   - mmipc_kv_foreach to list a table.
 *
 * The publisher sets "config/rate" to 100, 250, 500 and 1000, then deletes
 * it, which tells the workers to stop.  A kv table holds the latest value,
 * not a history, so to let every worker see every value the publisher waits
 * after each change until each worker has acknowledged it (each worker keeps
 * a count under "ack/<worker>", which the publisher watches with
 * mmipc_kv_wait in turn).  The run ends by itself; its last line is
 * "verify: OK ..." when every worker saw all changes, in order, and the exit
 * status is 0; otherwise "verify: FAILED ..." and 1.
 *
 * Run it
 *   demos/kv_watch              3 workers
 *   demos/kv_watch -w 8         8 workers
 *   demos/kv_watch --file /tmp/kv.mmipc   keep the region file to inspect it
 */
#define _GNU_SOURCE
#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "mmipc.h"

#define TABLE "config"
#define KEY "config/rate"
#define WAIT_MS 10000 /* any single wait longer than this means a peer is gone */
#define RUN_MS 30000  /* the whole demo, at most */
#define MAX_WORKERS 64

/* What the publisher does, in order; NULL means "delete the key". */
static const char *const changes[] = {"100", "250", "500", "1000", NULL};
#define NCHANGES (sizeof changes / sizeof changes[0])

static uint64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* Attach to the region at `path` and open the table: what any unrelated
 * program would do to join in. */
static int attach(const char *path, const char *who, mmipc_region **region, mmipc_kv **kv)
{
    int rc = mmipc_region_open(path, 0, NULL, region);
    if (rc < 0) {
        fprintf(stderr, "%s: opening %s: %s\n", who, path, mmipc_strerror(rc));
        return rc;
    }
    rc = mmipc_kv_open(*region, TABLE, kv);
    if (rc < 0) {
        fprintf(stderr, "%s: opening table %s: %s\n", who, TABLE, mmipc_strerror(rc));
        mmipc_region_close(*region);
    }
    return rc;
}

/* ------------------------------------------------------------ worker */

static int worker(const char *path, unsigned id)
{
    char who[32], ack_key[32];
    snprintf(who, sizeof who, "worker %u", id);
    snprintf(ack_key, sizeof ack_key, "ack/%u", id);

    mmipc_region *region;
    mmipc_kv *kv;
    if (attach(path, who, &region, &kv) < 0)
        return 1;

    int ok = 1;
    uint64_t seen = 0; /* the version we last saw; 0 = absent */
    for (uint64_t count = 1; count <= NCHANGES && ok; count++) {
        /* Sleep until the key's version is no longer `seen`. */
        int rc = mmipc_kv_wait(kv, KEY, seen, WAIT_MS);
        if (rc < 0) {
            fprintf(stderr, "%s: waiting for %s: %s\n", who, KEY, mmipc_strerror(rc));
            ok = 0;
            break;
        }

        char value[64];
        uint64_t version = 0;
        ssize_t n = mmipc_kv_get(kv, KEY, value, sizeof value - 1, &version);
        const char *expected = changes[count - 1];
        if (n == -ENOENT) {
            printf("%s: %s deleted, stopping\n", who, KEY);
            version = 0;
            ok = expected == NULL;
        } else if (n >= 0) {
            value[n] = '\0';
            printf("%s: %s = %s (version %llu)\n", who, KEY, value, (unsigned long long)version);
            ok = expected != NULL && strcmp(value, expected) == 0;
        } else {
            fprintf(stderr, "%s: get %s: %s\n", who, KEY, mmipc_strerror((int)n));
            ok = 0;
            break;
        }
        if (!ok)
            fprintf(stderr, "%s: expected change %llu to be %s\n", who, (unsigned long long)count,
                    expected ? expected : "the deletion");
        seen = version;

        /* Acknowledge: "I have seen `count` changes". */
        rc = mmipc_kv_put(kv, ack_key, &count, sizeof count);
        if (rc < 0) {
            fprintf(stderr, "%s: put %s: %s\n", who, ack_key, mmipc_strerror(rc));
            ok = 0;
        }
    }
    mmipc_region_close(region);
    return ok ? 0 : 1;
}

/* ------------------------------------------------------------ publisher */

/* Wait until worker `id` has acknowledged at least `count` changes. */
static int wait_for_ack(mmipc_kv *kv, unsigned id, uint64_t count)
{
    char key[32];
    snprintf(key, sizeof key, "ack/%u", id);
    uint64_t deadline = now_ms() + WAIT_MS;
    for (;;) {
        uint64_t acked = 0, version = 0;
        ssize_t n = mmipc_kv_get(kv, key, &acked, sizeof acked, &version);
        if (n == -ENOENT)
            version = 0; /* not acknowledged anything yet */
        else if (n < 0)
            return (int)n;
        else if (acked >= count)
            return 0;

        /* If the worker acknowledges between our get and this wait, the
         * version already differs and the wait returns at once. */
        uint64_t now = now_ms();
        int rc = now < deadline ? mmipc_kv_wait(kv, key, version, (int)(deadline - now)) : -ETIMEDOUT;
        if (rc < 0)
            return rc;
    }
}

static int publisher(const char *path, unsigned workers)
{
    mmipc_region *region;
    mmipc_kv *kv;
    if (attach(path, "publisher", &region, &kv) < 0)
        return 1;

    int rc = 0;
    for (unsigned i = 0; i < NCHANGES && rc == 0; i++) {
        if (changes[i] != NULL) {
            printf("publisher: put %s = %s\n", KEY, changes[i]);
            rc = mmipc_kv_put(kv, KEY, changes[i], strlen(changes[i]));
        } else {
            printf("publisher: delete %s\n", KEY);
            rc = mmipc_kv_del(kv, KEY);
        }
        if (rc < 0) {
            fprintf(stderr, "publisher: changing %s: %s\n", KEY, mmipc_strerror(rc));
            break;
        }
        for (unsigned w = 0; w < workers && rc == 0; w++) {
            rc = wait_for_ack(kv, w, i + 1);
            if (rc < 0)
                fprintf(stderr, "publisher: waiting for worker %u: %s\n", w, mmipc_strerror(rc));
        }
    }
    mmipc_region_close(region);
    return rc == 0 ? 0 : 1;
}

/* ------------------------------------------------------------ parent */

static int print_entry(const char *key, const void *val, size_t len, uint64_t version, void *arg)
{
    (void)arg;
    uint64_t count = 0;
    if (len == sizeof count)
        memcpy(&count, val, sizeof count);
    printf("  %-12s %llu changes seen (version %llu)\n", key, (unsigned long long)count, (unsigned long long)version);
    return 0;
}

/* Wait for every child, for RUN_MS at most; kill the rest after that.
 * Returns how many did not exit with status 0. */
static unsigned wait_all(pid_t *pids, unsigned n)
{
    unsigned failed = 0, left = n;
    uint64_t deadline = now_ms() + RUN_MS;
    while (left > 0) {
        int status;
        pid_t pid = waitpid(-1, &status, WNOHANG);
        if (pid > 0) {
            for (unsigned i = 0; i < n; i++) {
                if (pids[i] == pid) {
                    pids[i] = 0;
                    left--;
                    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
                        failed++;
                }
            }
            continue;
        }
        if (now_ms() > deadline) {
            fprintf(stderr, "kv_watch: still running after %d s, killing the rest\n", RUN_MS / 1000);
            for (unsigned i = 0; i < n; i++) {
                if (pids[i] > 0) {
                    kill(pids[i], SIGKILL);
                    waitpid(pids[i], NULL, 0);
                    failed++;
                }
            }
            break;
        }
        struct timespec ts = {0, 10 * 1000000L};
        nanosleep(&ts, NULL);
    }
    return failed;
}

static void usage(FILE *out)
{
    fprintf(out,
            "usage: kv_watch [-w N] [--file PATH]\n"
            "A publisher changes a kv value; N worker processes follow it with mmipc_kv_wait.\n"
            "  -w N         worker processes (default 3, at most %d)\n"
            "  --file PATH  create the region file at PATH and keep it (default: a temporary one)\n"
            "  --help       this text\n",
            MAX_WORKERS);
}

int main(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"file", required_argument, NULL, 'f'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    unsigned workers = 3;
    const char *file = NULL;
    int opt;
    while ((opt = getopt_long(argc, argv, "w:h", longopts, NULL)) != -1) {
        switch (opt) {
        case 'w': {
            char *end;
            long v = strtol(optarg, &end, 10);
            if (*optarg == '\0' || *end != '\0' || v < 1 || v > MAX_WORKERS) {
                fprintf(stderr, "kv_watch: -w wants a number from 1 to %d\n", MAX_WORKERS);
                return 2;
            }
            workers = (unsigned)v;
            break;
        }
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
        fprintf(stderr, "kv_watch: unexpected argument '%s'\n", argv[optind]);
        return 2;
    }

    /* One line at a time even into a pipe, so that the processes' lines do
     * not get mixed up. */
    setvbuf(stdout, NULL, _IOLBF, 0);

    char dir[256] = "", path[320];
    if (file != NULL) {
        snprintf(path, sizeof path, "%s", file);
    } else {
        const char *tmp = getenv("TMPDIR");
        snprintf(dir, sizeof dir, "%s/kv_watch-XXXXXX", tmp && *tmp ? tmp : "/tmp");
        if (mkdtemp(dir) == NULL) {
            perror("kv_watch: mkdtemp");
            return 2;
        }
        snprintf(path, sizeof path, "%s/region.mmipc", dir);
    }

    /* The parent only creates the file and the table: the workers and the
     * publisher attach to it by path, as separate programs would. */
    mmipc_region *region = NULL;
    mmipc_kv *kv = NULL;
    int rc = mmipc_region_open(path, MMIPC_CREATE | MMIPC_EXCL, NULL, &region);
    if (rc < 0)
        fprintf(stderr, "kv_watch: creating %s: %s\n", path, mmipc_strerror(rc));
    else if ((rc = mmipc_kv_create(region, TABLE, 2 * workers + 8, 64, &kv)) < 0)
        fprintf(stderr, "kv_watch: creating table %s: %s\n", TABLE, mmipc_strerror(rc));

    int result = 2;
    if (rc == 0) {
        printf("kv_watch: mmipc %s, %u workers, region %s\n", mmipc_version(), workers, path);
        pid_t pids[MAX_WORKERS + 1];
        unsigned n = 0;
        for (unsigned i = 0; i <= workers; i++) { /* the workers, then the publisher */
            pid_t pid = fork();
            if (pid == 0)
                _exit(i < workers ? worker(path, i) : publisher(path, workers));
            if (pid < 0) {
                perror("kv_watch: fork");
                break;
            }
            pids[n++] = pid;
        }
        unsigned failed = wait_all(pids, n) + (workers + 1 - n);

        printf("table %s now:\n", TABLE);
        mmipc_kv_foreach(kv, print_entry, NULL);
        if (failed == 0) {
            printf("verify: OK (%u workers saw all %zu changes, the last one the deletion)\n", workers, NCHANGES);
            result = 0;
        } else {
            printf("verify: FAILED: %u of %u processes did not finish well\n", failed, workers + 1);
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
