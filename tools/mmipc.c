/*
 * mmipc — the command-line tool: create region files, inspect and check them,
 * send and receive ring messages, read, write and watch kv keys.
 *
 * It uses only the public header.  Inspection (stat, check, get, ls) opens the
 * file with MMIPC_RDONLY: no lock, no lease, so it works on files wedged by a
 * stopped process and on files the user may only read.
 *
 * Exit status: 0 success, 1 failure (a message on stderr), 2 usage error.
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "mmipc.h"

#define EXIT_OK 0
#define EXIT_FAIL 1
#define EXIT_USAGE 2

/* Option parsing hands back "keep going" with this value. */
#define CONTINUE (-1)

/* How often a blocked recv/watch checks for a stop signal and for the
 * reader of its output having gone. */
#define SLICE_MS 250

/* First buffer for messages and values; grown on -EMSGSIZE up to the maximum. */
#define FIRST_BUF (64 * 1024)

/* ls shows this many bytes of each value unless --full. */
#define LS_VALUE_PREVIEW 64

struct command {
    const char *name;
    int (*run)(const struct command *cmd, int argc, char **argv);
    const char *synopsis; /* after "mmipc NAME " */
    const char *summary;
    const char *help;  /* option descriptions */
    const char *brief; /* for `mmipc --help` */
};

/* ------------------------------------------------------------------ utils */

static void oom(void)
{
    fputs("mmipc: out of memory\n", stderr);
    exit(EXIT_FAIL);
}

static void *xmalloc(size_t n)
{
    void *p = malloc(n ? n : 1);
    if (!p)
        oom();
    return p;
}

static void *xrealloc(void *p, size_t n)
{
    p = realloc(p, n ? n : 1);
    if (!p)
        oom();
    return p;
}

static char *xstrdup(const char *s)
{
    size_t n = strlen(s) + 1;
    return memcpy(xmalloc(n), s, n);
}

__attribute__((format(printf, 1, 2))) static char *xasprintf(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0)
        oom();
    char *s = xmalloc((size_t)n + 1);
    va_start(ap, fmt);
    vsnprintf(s, (size_t)n + 1, fmt, ap);
    va_end(ap);
    return s;
}

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Growable byte buffer. */
struct buf {
    char *p;
    size_t len, cap;
};

static void buf_add(struct buf *b, const void *data, size_t n)
{
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 64;
        while (cap < b->len + n + 1)
            cap *= 2;
        b->p = xrealloc(b->p, cap);
        b->cap = cap;
    }
    memcpy(b->p + b->len, data, n);
    b->len += n;
    b->p[b->len] = '\0';
}

static void buf_addc(struct buf *b, char c)
{
    buf_add(b, &c, 1);
}

/*
 * A printable, unambiguous rendering of arbitrary bytes for terminals:
 * printable ASCII as is, backslash doubled, \n \t \r, everything else \xHH.
 * At most `limit` input bytes are shown ("..." marks the cut); 0 = no limit.
 */
static char *escape(const void *data, size_t n, size_t limit)
{
    const unsigned char *s = data;
    struct buf b = {0};
    size_t shown = limit && n > limit ? limit : n;
    buf_add(&b, "", 0);
    for (size_t i = 0; i < shown; i++) {
        unsigned char c = s[i];
        char tmp[8];
        if (c == '\\')
            buf_add(&b, "\\\\", 2);
        else if (c == '\n')
            buf_add(&b, "\\n", 2);
        else if (c == '\t')
            buf_add(&b, "\\t", 2);
        else if (c == '\r')
            buf_add(&b, "\\r", 2);
        else if (c >= 0x20 && c < 0x7f)
            buf_addc(&b, (char)c);
        else {
            snprintf(tmp, sizeof tmp, "\\x%02x", c);
            buf_add(&b, tmp, 4);
        }
    }
    if (shown < n)
        buf_add(&b, "...", 3);
    return b.p;
}

static char *escape_str(const char *s)
{
    return escape(s, strlen(s), 0);
}

/* "1.0 MiB"; exact bytes below 1 KiB. */
static const char *human(uint64_t n, char out[32])
{
    static const char *const unit[] = {"KiB", "MiB", "GiB", "TiB", "PiB", "EiB"};
    if (n < 1024) {
        snprintf(out, 32, "%" PRIu64 " B", n);
        return out;
    }
    double v = (double)n / 1024;
    unsigned i = 0;
    while (v >= 1023.95 && i + 1 < sizeof unit / sizeof unit[0]) {
        v /= 1024;
        i++;
    }
    snprintf(out, 32, "%.1f %s", v, unit[i]);
    return out;
}

/* --------------------------------------------------------------- parsing */

/* Decimal count or size with an optional K, M, G or T suffix (powers of
 * 1024, case-insensitive, optionally followed by "iB" or "B"). */
static bool parse_size(const char *s, uint64_t *out)
{
    if (!*s || *s < '0' || *s > '9')
        return false;
    uint64_t v = 0;
    for (; *s >= '0' && *s <= '9'; s++) {
        unsigned d = (unsigned)(*s - '0');
        if (v > (UINT64_MAX - d) / 10)
            return false;
        v = v * 10 + d;
    }
    unsigned shift = 0;
    switch (*s) {
    case 'k':
    case 'K':
        shift = 10;
        break;
    case 'm':
    case 'M':
        shift = 20;
        break;
    case 'g':
    case 'G':
        shift = 30;
        break;
    case 't':
    case 'T':
        shift = 40;
        break;
    case '\0':
        break;
    default:
        return false;
    }
    if (shift) {
        s++;
        if (s[0] == 'i' && s[1] == 'B')
            s += 2;
        else if (s[0] == 'B')
            s++;
    }
    if (*s)
        return false;
    if (shift && v > (UINT64_MAX >> shift))
        return false;
    *out = v << shift;
    return true;
}

static bool parse_timeout(const char *s, int *out)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v > INT_MAX || v < INT_MIN)
        return false;
    *out = v < 0 ? -1 : (int)v;
    return true;
}

static bool parse_count(const char *s, uint64_t *out)
{
    char *end;
    if (*s < '0' || *s > '9')
        return false;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || *end)
        return false;
    *out = v;
    return true;
}

/* ---------------------------------------------------------- diagnostics */

static const char *err_text(int rc)
{
    return mmipc_strerror(rc);
}

__attribute__((format(printf, 2, 3))) static int usage_error(const struct command *cmd, const char *fmt, ...)
{
    va_list ap;
    fprintf(stderr, "mmipc: %s: ", cmd->name);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fprintf(stderr, "\nTry 'mmipc %s --help'.\n", cmd->name);
    return EXIT_USAGE;
}

/* "mmipc: PATH: [CONTEXT: ]message" */
static int fail(const char *path, const char *context, int rc)
{
    if (context)
        fprintf(stderr, "mmipc: %s: %s: %s\n", path, context, err_text(rc));
    else
        fprintf(stderr, "mmipc: %s: %s\n", path, err_text(rc));
    return EXIT_FAIL;
}

__attribute__((format(printf, 2, 3))) static int failf(const char *path, const char *fmt, ...)
{
    va_list ap;
    fprintf(stderr, "mmipc: %s: ", path);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    return EXIT_FAIL;
}

/* -------------------------------------------------------------- output */

/* Whether `check` flushes after each file: yes unless stdout is a regular
 * file.  (recv and watch flush after every message whatever the output: a
 * message taken from a ring must not sit in a buffer a signal can discard.) */
static bool out_line_flush;
/* Whether stdout's reader can vanish (pipe or socket): then long waits are
 * cut into slices so we notice and exit instead of blocking forever. */
static bool out_watch_reader;

static void out_setup(void)
{
    struct stat st;
    if (fstat(STDOUT_FILENO, &st) == 0) {
        out_line_flush = !S_ISREG(st.st_mode);
        out_watch_reader = S_ISFIFO(st.st_mode) || S_ISSOCK(st.st_mode);
    } else {
        out_line_flush = true;
    }
}

/* 1 if stdout's reader has gone away. */
static bool out_reader_gone(void)
{
    struct pollfd p = {.fd = STDOUT_FILENO, .events = 0};
    return poll(&p, 1, 0) == 1 && (p.revents & (POLLERR | POLLHUP));
}

/* Flush stdout.  Returns EXIT_OK, or -1 after a quiet EPIPE (the reader left:
 * not an error), or EXIT_FAIL after reporting another write error. */
#define OUT_GONE (-1)
static int out_flush(void)
{
    if (fflush(stdout) == 0 && !ferror(stdout))
        return EXIT_OK;
    if (errno == EPIPE)
        return OUT_GONE;
    fprintf(stderr, "mmipc: write error: %s\n", strerror(errno));
    return EXIT_FAIL;
}

/* Final flush before a command returns `rc`. */
static int out_finish(int rc)
{
    int f = out_flush();
    if (f == OUT_GONE)
        return rc;
    return rc != EXIT_OK ? rc : f;
}

/* An aligned text table: header row, cells of any width, two spaces apart. */
struct table {
    size_t ncols;
    const char *const *head;
    const char *align; /* 'l' or 'r' per column */
    char **cells;
    size_t ncells, cap;
};

__attribute__((format(printf, 2, 3))) static void cell(struct table *t, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0)
        oom();
    char *s = xmalloc((size_t)n + 1);
    va_start(ap, fmt);
    vsnprintf(s, (size_t)n + 1, fmt, ap);
    va_end(ap);
    if (t->ncells == t->cap) {
        t->cap = t->cap ? 2 * t->cap : 32;
        t->cells = xrealloc(t->cells, t->cap * sizeof *t->cells);
    }
    t->cells[t->ncells++] = s;
}

static void table_print(struct table *t, const char *indent)
{
    size_t *w = xmalloc(t->ncols * sizeof *w);
    for (size_t c = 0; c < t->ncols; c++)
        w[c] = strlen(t->head[c]);
    for (size_t i = 0; i < t->ncells; i++) {
        size_t l = strlen(t->cells[i]);
        if (l > w[i % t->ncols])
            w[i % t->ncols] = l;
    }
    size_t rows = t->ncells / t->ncols;
    for (size_t r = 0; r <= rows; r++) {
        fputs(indent, stdout);
        for (size_t c = 0; c < t->ncols; c++) {
            const char *s = r == 0 ? t->head[c] : t->cells[(r - 1) * t->ncols + c];
            int width = (int)w[c];
            bool last = c + 1 == t->ncols;
            if (t->align[c] == 'r')
                printf("%*s", width, s);
            else if (last)
                fputs(s, stdout);
            else
                printf("%-*s", width, s);
            if (!last)
                fputs("  ", stdout);
        }
        fputc('\n', stdout);
    }
    for (size_t i = 0; i < t->ncells; i++)
        free(t->cells[i]);
    free(t->cells);
    free(w);
    t->cells = NULL;
    t->ncells = t->cap = 0;
}

/* A JSON string: valid UTF-8 is kept, control characters are escaped and
 * every byte that is not part of a valid UTF-8 sequence becomes U+FFFD. */
static void json_str(const char *str)
{
    const unsigned char *s = (const unsigned char *)str;
    size_t n = strlen(str);
    putchar('"');
    for (size_t i = 0; i < n;) {
        unsigned char c = s[i];
        if (c == '"' || c == '\\') {
            putchar('\\');
            putchar(c);
            i++;
        } else if (c < 0x20) {
            switch (c) {
            case '\n':
                fputs("\\n", stdout);
                break;
            case '\t':
                fputs("\\t", stdout);
                break;
            case '\r':
                fputs("\\r", stdout);
                break;
            case '\b':
                fputs("\\b", stdout);
                break;
            case '\f':
                fputs("\\f", stdout);
                break;
            default:
                printf("\\u%04x", c);
                break;
            }
            i++;
        } else if (c < 0x80) {
            putchar(c);
            i++;
        } else {
            /* Length and smallest code point of a sequence led by c. */
            size_t len = 0;
            uint32_t cp = 0, min = 0;
            if (c >= 0xc2 && c <= 0xdf)
                len = 2, cp = c & 0x1f, min = 0x80;
            else if (c >= 0xe0 && c <= 0xef)
                len = 3, cp = c & 0x0f, min = 0x800;
            else if (c >= 0xf0 && c <= 0xf4)
                len = 4, cp = c & 0x07, min = 0x10000;
            bool ok = len && i + len <= n;
            for (size_t k = 1; ok && k < len; k++) {
                if ((s[i + k] & 0xc0) != 0x80)
                    ok = false;
                else
                    cp = (cp << 6) | (s[i + k] & 0x3f);
            }
            if (ok && (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)))
                ok = false;
            if (ok) {
                fwrite(s + i, 1, len, stdout);
                i += len;
            } else {
                fputs("\\ufffd", stdout);
                i++;
            }
        }
    }
    putchar('"');
}

/* ------------------------------------------------------ argument parsing */

struct args {
    char **pos;
    int npos;
};

static const char *const KV_KEY_ARGS[] = {"PATH", "KV", "KEY"};
static const char *const RING_ARGS[] = {"PATH", "RING"};
static const char *const KV_ARGS[] = {"PATH", "KV"};

/* After parse_args: a usage error unless min <= npos <= max, naming the
 * missing positional arguments ("missing KV and KEY"); else rc unchanged. */
static int check_npos(const struct command *cmd, const struct args *a, int rc, int min, int max,
                      const char *const *names)
{
    char missing[64] = "";
    if (rc != CONTINUE || (a->npos >= min && a->npos <= max))
        return rc;
    if (a->npos > max)
        return usage_error(cmd, "too many arguments");
    for (int i = a->npos; i < min; i++)
        snprintf(missing + strlen(missing), sizeof missing - strlen(missing), "%s%s",
                 i == a->npos   ? ""
                 : i == min - 1 ? " and "
                                : ", ",
                 names[i]);
    return usage_error(cmd, "missing %s", missing);
}

static void print_help(const struct command *cmd, FILE *f)
{
    fprintf(f, "Usage: mmipc %s %s\n%s.\n\nOptions:\n%s", cmd->name, cmd->synopsis, cmd->summary, cmd->help);
    fputs("  -h, --help               show this help\n", f);
}

/*
 * getopt_long over a subcommand's argv (argv[0] is the subcommand).  Options
 * may come before, between or after positional arguments ("--" ends them).
 * handle(opt, optarg, ctx) returns CONTINUE or an exit status.
 * Returns CONTINUE with the positionals in *a, or the exit status to use.
 */
static int parse_args(const struct command *cmd, int argc, char **argv, const char *shortopts,
                      const struct option *longopts, int (*handle)(const struct command *, int, const char *, void *),
                      void *ctx, struct args *a)
{
    /* "-" returns positionals in order (immune to POSIXLY_CORRECT); ":" tells
     * a missing argument from an unknown option. */
    char optstring[64];
    snprintf(optstring, sizeof optstring, "-:h%s", shortopts);
    a->pos = xmalloc((size_t)argc * sizeof *a->pos);
    a->npos = 0;
    opterr = 0;
    optind = 0;
    for (;;) {
        int longidx = -1;
        int opt = getopt_long(argc, argv, optstring, longopts, &longidx);
        if (opt == -1)
            break;
        if (opt == 1) {
            a->pos[a->npos++] = optarg;
            continue;
        }
        if (opt == 'h') {
            print_help(cmd, stdout);
            return out_finish(EXIT_OK);
        }
        if (opt == ':') {
            const char *name = argv[optind - 1];
            return usage_error(cmd, "option '%s' needs a value", name);
        }
        if (opt == '?') {
            if (optopt > 0 && optopt < 128 && optopt != 1)
                return usage_error(cmd, "unknown option '-%c'", optopt);
            if (optopt >= 256)
                return usage_error(cmd, "option '%s' takes no value", argv[optind - 1]);
            return usage_error(cmd, "unknown option '%s'", argv[optind - 1]);
        }
        int rc = handle(cmd, opt, optarg, ctx);
        if (rc != CONTINUE)
            return rc;
    }
    while (optind < argc)
        a->pos[a->npos++] = argv[optind++];
    return CONTINUE;
}

#define HELP_OPTION                                                                                                    \
    {                                                                                                                  \
        "help", no_argument, NULL, 'h'                                                                                 \
    }

/* Open a region, reporting failure as "mmipc: PATH: message". */
static int open_region(const char *path, int flags, mmipc_region **r)
{
    int rc = mmipc_region_open(path, flags, NULL, r);
    if (rc < 0)
        return fail(path, NULL, rc);
    return EXIT_OK;
}

static int open_ring(const char *path, mmipc_region *r, const char *name, mmipc_ring **q)
{
    int rc = mmipc_ring_open(r, name, q);
    if (rc == -ENOENT)
        return failf(path, "no ring named '%s'", name);
    if (rc == -EINVAL && *name)
        return failf(path, "'%s' is not a ring", name);
    if (rc < 0) {
        char *ctx = xasprintf("ring '%s'", name);
        fail(path, ctx, rc);
        free(ctx);
        return EXIT_FAIL;
    }
    return EXIT_OK;
}

static int open_kv(const char *path, mmipc_region *r, const char *name, mmipc_kv **kv)
{
    int rc = mmipc_kv_open(r, name, kv);
    if (rc == -ENOENT)
        return failf(path, "no kv table named '%s'", name);
    if (rc == -EINVAL && *name)
        return failf(path, "'%s' is not a kv table", name);
    if (rc < 0) {
        char *ctx = xasprintf("kv '%s'", name);
        fail(path, ctx, rc);
        free(ctx);
        return EXIT_FAIL;
    }
    return EXIT_OK;
}

/*
 * recv and watch catch SIGINT, SIGTERM and SIGHUP: the handler only records
 * the signal, the command stops at its next safe point (never between taking
 * a message from a ring and writing it out), closes the region, and main()
 * then dies of the same signal, as the shell expects.
 */
static volatile sig_atomic_t stop_signal;

static void on_stop(int sig)
{
    stop_signal = sig;
}

static void catch_stop_signals(void)
{
    static const int sigs[] = {SIGINT, SIGTERM, SIGHUP};
    for (size_t i = 0; i < sizeof sigs / sizeof sigs[0]; i++) {
        struct sigaction old, sa;
        memset(&sa, 0, sizeof sa);
        sa.sa_handler = on_stop;
        /* SA_RESTART: a write blocked on a full pipe completes rather than
         * failing half-done; waits are sliced, so the flag is seen anyway. */
        sa.sa_flags = SA_RESTART;
        sigemptyset(&sa.sa_mask);
        /* A signal ignored by our parent (SIGINT of `cmd &`) stays ignored. */
        if (sigaction(sigs[i], NULL, &old) == 0 && old.sa_handler != SIG_IGN)
            sigaction(sigs[i], &sa, NULL);
    }
}

/*
 * Run a wait operation with the user's timeout, cut into SLICE_MS pieces:
 * between pieces it stops with -EINTR after a stop signal, and with -EPIPE
 * once the reader of stdout (a pipe or socket) has gone, so that
 * `mmipc recv f q | head -1` ends when head does.
 */
typedef long (*wait_op)(void *ctx, int timeout_ms);

static long wait_sliced(wait_op op, void *ctx, int timeout_ms)
{
    if (stop_signal)
        return -EINTR;
    if (timeout_ms == 0)
        return op(ctx, timeout_ms);
    int64_t deadline = timeout_ms < 0 ? -1 : now_ms() + timeout_ms;
    for (;;) {
        int slice = SLICE_MS;
        if (deadline >= 0) {
            int64_t left = deadline - now_ms();
            if (left < slice)
                slice = left < 1 ? 1 : (int)left;
        }
        long rc = op(ctx, slice);
        if (rc != -ETIMEDOUT && rc != -EAGAIN)
            return rc;
        if (stop_signal)
            return -EINTR;
        if (out_watch_reader && out_reader_gone())
            return -EPIPE;
        if (deadline >= 0 && now_ms() >= deadline)
            return -ETIMEDOUT;
    }
}

/* ------------------------------------------------------------- create */

struct obj_spec {
    int kind;
    char *name;
    uint64_t a, b; /* ring: capacity; kv: slots, value_max */
};

struct create_opts {
    struct mmipc_region_opts ro;
    struct obj_spec *specs;
    size_t nspecs;
};

#define DEFAULT_RING_CAP (64 * 1024)
#define DEFAULT_KV_SLOTS 64
#define DEFAULT_KV_VALUE 256

/* Splits "NAME:X[:Y]" from the right, so names may contain ':'. */
static int parse_spec(const struct command *cmd, int kind, const char *arg, struct obj_spec *sp)
{
    char *s = xstrdup(arg);
    const char *what = kind == MMIPC_KIND_RING ? "--ring" : "--kv";
    uint64_t vals[2] = {kind == MMIPC_KIND_RING ? DEFAULT_RING_CAP : DEFAULT_KV_SLOTS, DEFAULT_KV_VALUE};
    int want = kind == MMIPC_KIND_RING ? 1 : 2;
    /* Numbers at the right end; how many depends on how many ':' there are. */
    char *parts[3] = {s, NULL, NULL};
    int nparts = 1;
    for (int k = 0; k < want; k++) {
        char *c = strrchr(s, ':');
        if (!c)
            break;
        *c = '\0';
        for (int j = nparts; j > 1; j--)
            parts[j] = parts[j - 1];
        parts[1] = c + 1;
        nparts++;
    }
    for (int k = 1; k < nparts; k++) {
        if (!parse_size(parts[k], &vals[k - 1]) || vals[k - 1] == 0) {
            int rc = usage_error(cmd, "%s '%s': bad number '%s'", what, arg, parts[k]);
            free(s);
            return rc;
        }
    }
    if (!*s) {
        free(s);
        return usage_error(cmd, "%s '%s': empty name", what, arg);
    }
    if (kind == MMIPC_KIND_KV && vals[0] > UINT_MAX) {
        free(s);
        return usage_error(cmd, "--kv '%s': too many slots", arg);
    }
    sp->kind = kind;
    sp->name = s;
    sp->a = vals[0];
    sp->b = vals[1];
    return CONTINUE;
}

enum {
    OPT_SIZE = 256,
    OPT_MODE,
    OPT_MAX_OBJECTS,
    OPT_RING,
    OPT_KV,
    OPT_TIMEOUT,
    OPT_RAW,
    OPT_JSON,
    OPT_VERSION,
    OPT_FULL,
    OPT_CHANGES
};

static int create_opt(const struct command *cmd, int opt, const char *arg, void *ctx)
{
    struct create_opts *o = ctx;
    uint64_t v;
    switch (opt) {
    case OPT_SIZE:
    case 's':
        if (!parse_size(arg, &v) || v == 0 || v > SIZE_MAX)
            return usage_error(cmd, "bad size '%s' (use a number with an optional K, M or G suffix)", arg);
        o->ro.size = (size_t)v;
        return CONTINUE;
    case OPT_MODE:
    case 'm': {
        char *end;
        errno = 0;
        unsigned long m = strtoul(arg, &end, 8);
        if (errno || end == arg || *end || m == 0 || m > 07777)
            return usage_error(cmd, "bad mode '%s' (use octal permission bits such as 0600)", arg);
        o->ro.mode = (mode_t)m;
        return CONTINUE;
    }
    case OPT_MAX_OBJECTS:
        if (!parse_size(arg, &v) || v == 0 || v > 65536)
            return usage_error(cmd, "bad object count '%s' (1 to 65536)", arg);
        o->ro.max_objects = (unsigned)v;
        return CONTINUE;
    case OPT_RING:
    case OPT_KV: {
        o->specs = xrealloc(o->specs, (o->nspecs + 1) * sizeof *o->specs);
        int rc = parse_spec(cmd, opt == OPT_RING ? MMIPC_KIND_RING : MMIPC_KIND_KV, arg, &o->specs[o->nspecs]);
        if (rc == CONTINUE)
            o->nspecs++;
        return rc;
    }
    }
    return usage_error(cmd, "unexpected option");
}

static int cmd_create(const struct command *cmd, int argc, char **argv)
{
    static const struct option longopts[] = {
        {"size", required_argument, NULL, OPT_SIZE},
        {"mode", required_argument, NULL, OPT_MODE},
        {"max-objects", required_argument, NULL, OPT_MAX_OBJECTS},
        {"ring", required_argument, NULL, OPT_RING},
        {"kv", required_argument, NULL, OPT_KV},
        HELP_OPTION,
        {NULL, 0, NULL, 0},
    };
    struct create_opts o = {{0}, NULL, 0};
    struct args a;
    int rc = parse_args(cmd, argc, argv, "s:m:", longopts, create_opt, &o, &a);
    if (rc == CONTINUE && a.npos != 1)
        rc = usage_error(cmd, a.npos ? "too many arguments" : "missing PATH");
    if (rc == CONTINUE) {
        const char *path = a.pos[0];
        mmipc_region *r;
        int orc = mmipc_region_open(path, MMIPC_CREATE | MMIPC_EXCL, &o.ro, &r);
        if (orc < 0) {
            rc = fail(path, NULL, orc);
        } else {
            rc = EXIT_OK;
            for (size_t i = 0; i < o.nspecs && rc == EXIT_OK; i++) {
                struct obj_spec *sp = &o.specs[i];
                int crc;
                if (sp->kind == MMIPC_KIND_RING) {
                    mmipc_ring *q;
                    crc = sp->a > SIZE_MAX ? -EINVAL : mmipc_ring_create(r, sp->name, (size_t)sp->a, &q);
                } else {
                    mmipc_kv *kv;
                    crc =
                        sp->b > SIZE_MAX ? -EINVAL : mmipc_kv_create(r, sp->name, (unsigned)sp->a, (size_t)sp->b, &kv);
                }
                if (crc < 0) {
                    const char *kind = sp->kind == MMIPC_KIND_RING ? "ring" : "kv";
                    rc = failf(path, "%s '%s': %s%s", kind, sp->name, err_text(crc),
                               crc == -ENOSPC ? " (try a larger --size or --max-objects)" : "");
                }
            }
            mmipc_region_close(r);
            /* We made the file (EXCL): do not leave a half-configured one. */
            if (rc != EXIT_OK)
                unlink(path);
        }
    }
    for (size_t i = 0; i < o.nspecs; i++)
        free(o.specs[i].name);
    free(o.specs);
    free(a.pos);
    return rc;
}

/* --------------------------------------------------------------- stat */

struct obj_row {
    struct mmipc_object_info info;
    int err; /* open or stat failure, 0 if fine */
    struct mmipc_ring_stat rs;
    struct mmipc_kv_stat ks;
};

struct vec {
    void *p;
    size_t n, cap, size;
};

static void *vec_push(struct vec *v)
{
    if (v->n == v->cap) {
        v->cap = v->cap ? 2 * v->cap : 16;
        v->p = xrealloc(v->p, v->cap * v->size);
    }
    void *e = (char *)v->p + v->n++ * v->size;
    memset(e, 0, v->size);
    return e;
}

static int collect_object(const struct mmipc_object_info *obj, void *arg)
{
    struct obj_row *row = vec_push(arg);
    row->info = *obj;
    row->info.name[sizeof row->info.name - 1] = '\0';
    return 0;
}

static int collect_lease(const struct mmipc_lease_info *lease, void *arg)
{
    struct mmipc_lease_info *l = vec_push(arg);
    *l = *lease;
    return 0;
}

static const char *kind_name(int kind)
{
    return kind == MMIPC_KIND_RING ? "ring" : kind == MMIPC_KIND_KV ? "kv" : "unknown";
}

static void stat_object(mmipc_region *r, struct obj_row *o)
{
    if (o->info.kind == MMIPC_KIND_RING) {
        mmipc_ring *q;
        o->err = mmipc_ring_open(r, o->info.name, &q);
        if (!o->err)
            o->err = mmipc_ring_stat(q, &o->rs);
    } else if (o->info.kind == MMIPC_KIND_KV) {
        mmipc_kv *kv;
        o->err = mmipc_kv_open(r, o->info.name, &kv);
        if (!o->err)
            o->err = mmipc_kv_stat(kv, &o->ks);
    } else {
        o->err = -EBADMSG;
    }
}

static uint64_t kv_free(const struct mmipc_kv_stat *ks)
{
    uint64_t taken = ks->used + ks->tombstones;
    return taken < ks->used || taken > ks->slots ? 0 : ks->slots - taken;
}

static void stat_text(const char *path, const struct mmipc_region_info *in, struct obj_row *objs, size_t nobjs,
                      const struct mmipc_lease_info *leases, size_t nleases, int dir_err, int lease_err)
{
    char h1[32], h2[32];
    char *epath = escape_str(path);
    char libc[sizeof in->libc + 1];
    memcpy(libc, in->libc, sizeof in->libc);
    libc[sizeof in->libc] = '\0';
    char *elibc = escape_str(libc);
    printf("%s\n", epath);
    printf("  format       %" PRIu32 ".%" PRIu32 "\n", in->format_major, in->format_minor);
    printf("  size         %s (%" PRIu64 " bytes)\n", human(in->size, h1), in->size);
    printf("  used         %s (%.1f%%)\n", human(in->used, h1),
           in->size ? 100.0 * (double)in->used / (double)in->size : 0.0);
    printf("  free         %s\n", human(in->free, h2));
    printf("  objects      %" PRIu32 " of %" PRIu32 "\n", in->objects, in->max_objects);
    printf("  attached     %" PRIu32 " of %" PRIu32 " lease slots\n", in->leases, in->max_leases);
    printf("  page size    %" PRIu32 "\n", in->page_size);
    printf("  cold starts  %" PRIu64 "\n", in->cold_starts);
    printf("  libc         %s\n", *elibc ? elibc : "-");
    free(epath);
    free(elibc);

    size_t nrings = 0, nkvs = 0, nbad = 0;
    for (size_t i = 0; i < nobjs; i++) {
        if (objs[i].err)
            nbad++;
        else if (objs[i].info.kind == MMIPC_KIND_RING)
            nrings++;
        else
            nkvs++;
    }

    if (nrings) {
        static const char *const head[] = {"RING", "CAPACITY", "MAX MESSAGE", "USED",       "MESSAGES",
                                           "SENT", "RECEIVED", "SEND WAITS",  "RECV WAITS", "RECOVERIES"};
        struct table t = {10, head, "lrrrrrrrrr", NULL, 0, 0};
        for (size_t i = 0; i < nobjs; i++) {
            const struct obj_row *o = &objs[i];
            if (o->err || o->info.kind != MMIPC_KIND_RING)
                continue;
            char *name = escape_str(o->info.name);
            cell(&t, "%s", name);
            free(name);
            cell(&t, "%s", human(o->rs.capacity, h1));
            cell(&t, "%" PRIu64, o->rs.max_message); /* a hard limit: exact bytes */
            cell(&t, "%s", human(o->rs.used, h1));
            cell(&t, "%" PRIu64, o->rs.messages);
            cell(&t, "%" PRIu64, o->rs.sent);
            cell(&t, "%" PRIu64, o->rs.received);
            cell(&t, "%" PRIu64, o->rs.send_waits);
            cell(&t, "%" PRIu64, o->rs.recv_waits);
            cell(&t, "%" PRIu64, o->rs.recoveries);
        }
        putchar('\n');
        table_print(&t, "  ");
    }
    if (nkvs) {
        static const char *const head[] = {"KV",        "SLOTS", "USED", "FREE",         "TOMBSTONES",
                                           "VALUE MAX", "PUTS",  "DELS", "LAST VERSION", "RECOVERIES"};
        struct table t = {10, head, "lrrrrrrrrr", NULL, 0, 0};
        for (size_t i = 0; i < nobjs; i++) {
            const struct obj_row *o = &objs[i];
            if (o->err || o->info.kind != MMIPC_KIND_KV)
                continue;
            char *name = escape_str(o->info.name);
            cell(&t, "%s", name);
            free(name);
            cell(&t, "%" PRIu64, o->ks.slots);
            cell(&t, "%" PRIu64, o->ks.used);
            cell(&t, "%" PRIu64, kv_free(&o->ks));
            cell(&t, "%" PRIu64, o->ks.tombstones);
            cell(&t, "%" PRIu64, o->ks.value_max); /* a hard limit: exact bytes */
            cell(&t, "%" PRIu64, o->ks.puts);
            cell(&t, "%" PRIu64, o->ks.dels);
            cell(&t, "%" PRIu64, o->ks.last_version);
            cell(&t, "%" PRIu64, o->ks.recoveries);
        }
        putchar('\n');
        table_print(&t, "  ");
    }
    if (nbad || dir_err) {
        static const char *const head[] = {"BROKEN", "KIND", "OFFSET", "ERROR"};
        struct table t = {4, head, "llrl", NULL, 0, 0};
        for (size_t i = 0; i < nobjs; i++) {
            const struct obj_row *o = &objs[i];
            if (!o->err)
                continue;
            char *name = escape_str(o->info.name);
            cell(&t, "%s", name);
            free(name);
            if (o->info.kind == MMIPC_KIND_RING || o->info.kind == MMIPC_KIND_KV)
                cell(&t, "%s", kind_name(o->info.kind));
            else
                cell(&t, "%d?", o->info.kind);
            cell(&t, "%" PRIu64, o->info.offset);
            cell(&t, "%s", err_text(o->err));
        }
        if (dir_err) {
            cell(&t, "(directory)");
            cell(&t, "-");
            cell(&t, "-");
            cell(&t, "%s", err_text(dir_err));
        }
        putchar('\n');
        table_print(&t, "  ");
    }
    if (nleases || lease_err) {
        static const char *const head[] = {"PID", "SLOT", "STATE"};
        struct table t = {3, head, "rrl", NULL, 0, 0};
        for (size_t i = 0; i < nleases; i++) {
            cell(&t, "%" PRId32, leases[i].pid);
            cell(&t, "%" PRIu32, leases[i].slot);
            cell(&t, "%s", leases[i].alive ? "alive" : "dead (exited without closing)");
        }
        putchar('\n');
        table_print(&t, "  ");
        if (lease_err)
            printf("  (lease table unreadable: %s)\n", err_text(lease_err));
    } else {
        printf("\n  no processes attached\n");
    }
}

static void stat_json(const char *path, const struct mmipc_region_info *in, const struct obj_row *objs, size_t nobjs,
                      const struct mmipc_lease_info *leases, size_t nleases, int dir_err, int lease_err)
{
    char libc[sizeof in->libc + 1];
    memcpy(libc, in->libc, sizeof in->libc);
    libc[sizeof in->libc] = '\0';
    fputs("{\n  \"path\": ", stdout);
    json_str(path);
    printf(",\n  \"format_major\": %" PRIu32 ",\n  \"format_minor\": %" PRIu32 ",\n", in->format_major,
           in->format_minor);
    printf("  \"size\": %" PRIu64 ",\n  \"used\": %" PRIu64 ",\n  \"free\": %" PRIu64 ",\n", in->size, in->used,
           in->free);
    printf("  \"max_objects\": %" PRIu32 ",\n  \"max_leases\": %" PRIu32 ",\n  \"leases_used\": %" PRIu32 ",\n",
           in->max_objects, in->max_leases, in->leases);
    printf("  \"page_size\": %" PRIu32 ",\n  \"cold_starts\": %" PRIu64 ",\n  \"libc\": ", in->page_size,
           in->cold_starts);
    json_str(libc);
    if (dir_err) {
        fputs(",\n  \"directory_error\": ", stdout);
        json_str(err_text(dir_err));
    }
    if (lease_err) {
        fputs(",\n  \"leases_error\": ", stdout);
        json_str(err_text(lease_err));
    }
    fputs(",\n  \"objects\": [", stdout);
    for (size_t i = 0; i < nobjs; i++) {
        const struct obj_row *o = &objs[i];
        fputs(i ? ",\n    {" : "\n    {", stdout);
        fputs("\"name\": ", stdout);
        json_str(o->info.name);
        fputs(", \"kind\": ", stdout);
        json_str(kind_name(o->info.kind));
        printf(", \"kind_code\": %d, \"offset\": %" PRIu64 ", \"size\": %" PRIu64, o->info.kind, o->info.offset,
               o->info.size);
        if (o->err) {
            fputs(", \"error\": ", stdout);
            json_str(err_text(o->err));
        } else if (o->info.kind == MMIPC_KIND_RING) {
            const struct mmipc_ring_stat *s = &o->rs;
            printf(",\n     \"capacity\": %" PRIu64 ", \"max_message\": %" PRIu64 ", \"used\": %" PRIu64
                   ", \"messages\": %" PRIu64 ",\n     \"sent\": %" PRIu64 ", \"received\": %" PRIu64
                   ", \"send_waits\": %" PRIu64 ", \"recv_waits\": %" PRIu64 ", \"recoveries\": %" PRIu64,
                   s->capacity, s->max_message, s->used, s->messages, s->sent, s->received, s->send_waits,
                   s->recv_waits, s->recoveries);
        } else {
            const struct mmipc_kv_stat *s = &o->ks;
            printf(",\n     \"slots\": %" PRIu64 ", \"used\": %" PRIu64 ", \"free\": %" PRIu64
                   ", \"tombstones\": %" PRIu64 ", \"value_max\": %" PRIu64 ",\n     \"puts\": %" PRIu64
                   ", \"dels\": %" PRIu64 ", \"last_version\": %" PRIu64 ", \"recoveries\": %" PRIu64,
                   s->slots, s->used, kv_free(s), s->tombstones, s->value_max, s->puts, s->dels, s->last_version,
                   s->recoveries);
        }
        putchar('}');
    }
    fputs(nobjs ? "\n  ],\n  \"leases\": [" : "],\n  \"leases\": [", stdout);
    for (size_t i = 0; i < nleases; i++)
        printf("%s{\"slot\": %" PRIu32 ", \"pid\": %" PRId32 ", \"alive\": %s, \"start_time\": %" PRIu64 "}",
               i ? ",\n    " : "\n    ", leases[i].slot, leases[i].pid, leases[i].alive ? "true" : "false",
               leases[i].start_time);
    fputs(nleases ? "\n  ]\n}\n" : "]\n}\n", stdout);
}

struct stat_opts {
    bool json;
};

static int stat_opt(const struct command *cmd, int opt, const char *arg, void *ctx)
{
    (void)arg;
    if (opt == OPT_JSON) {
        ((struct stat_opts *)ctx)->json = true;
        return CONTINUE;
    }
    return usage_error(cmd, "unexpected option");
}

static int cmd_stat(const struct command *cmd, int argc, char **argv)
{
    static const struct option longopts[] = {
        {"json", no_argument, NULL, OPT_JSON},
        HELP_OPTION,
        {NULL, 0, NULL, 0},
    };
    struct stat_opts o = {false};
    struct args a;
    int rc = parse_args(cmd, argc, argv, "", longopts, stat_opt, &o, &a);
    if (rc == CONTINUE && a.npos != 1)
        rc = usage_error(cmd, a.npos ? "too many arguments" : "missing PATH");
    if (rc != CONTINUE) {
        free(a.pos);
        return rc;
    }
    const char *path = a.pos[0];
    mmipc_region *r;
    rc = open_region(path, MMIPC_RDONLY, &r);
    if (rc != EXIT_OK) {
        free(a.pos);
        return rc;
    }
    struct mmipc_region_info info;
    int irc = mmipc_region_info(r, &info);
    if (irc < 0) {
        mmipc_region_close(r);
        free(a.pos);
        return fail(path, NULL, irc);
    }
    struct vec objs = {NULL, 0, 0, sizeof(struct obj_row)};
    struct vec leases = {NULL, 0, 0, sizeof(struct mmipc_lease_info)};
    int dir_err = mmipc_region_objects(r, collect_object, &objs);
    int lease_err = mmipc_region_leases(r, collect_lease, &leases);
    dir_err = dir_err < 0 ? dir_err : 0;
    lease_err = lease_err < 0 ? lease_err : 0;
    struct obj_row *rows = objs.p;
    rc = EXIT_OK;
    for (size_t i = 0; i < objs.n; i++)
        stat_object(r, &rows[i]);

    if (o.json)
        stat_json(path, &info, rows, objs.n, leases.p, leases.n, dir_err, lease_err);
    else
        stat_text(path, &info, rows, objs.n, leases.p, leases.n, dir_err, lease_err);
    rc = out_finish(EXIT_OK);

    /* Problems also go to stderr, and make the status 1. */
    for (size_t i = 0; i < objs.n; i++) {
        if (rows[i].err) {
            char *name = escape_str(rows[i].info.name);
            failf(path, "%s '%s': %s", kind_name(rows[i].info.kind), name, err_text(rows[i].err));
            free(name);
            rc = EXIT_FAIL;
        }
    }
    if (dir_err)
        rc = fail(path, "directory", dir_err);
    if (lease_err)
        rc = fail(path, "leases", lease_err);
    mmipc_region_close(r);
    free(objs.p);
    free(leases.p);
    free(a.pos);
    return rc;
}

/* -------------------------------------------------------------- check */

struct check_ctx {
    const char *path;
};

static void check_problem(const char *object, const char *problem, void *arg)
{
    const struct check_ctx *c = arg;
    char *o = escape_str(object ? object : "?");
    printf("%s: %s: %s\n", c->path, o, problem ? problem : "problem");
    free(o);
}

static int check_opt(const struct command *cmd, int opt, const char *arg, void *ctx)
{
    (void)arg, (void)ctx;
    (void)opt;
    return usage_error(cmd, "unexpected option");
}

static int check_one(const char *path)
{
    mmipc_region *r;
    int rc = mmipc_region_open(path, MMIPC_RDONLY, NULL, &r);
    if (rc == -EBADMSG || rc == -EPROTONOSUPPORT) {
        printf("%s: header: %s\n", path, err_text(rc));
        return EXIT_FAIL;
    }
    if (rc < 0) {
        out_flush();
        return fail(path, NULL, rc);
    }
    struct check_ctx c = {path};
    int problems = mmipc_region_check(r, check_problem, &c);
    struct mmipc_region_info info;
    int irc = mmipc_region_info(r, &info);
    mmipc_region_close(r);
    if (problems < 0) {
        printf("%s: region: %s\n", path, err_text(problems));
        return EXIT_FAIL;
    }
    if (problems > 0)
        return EXIT_FAIL;
    if (irc < 0) {
        printf("%s: header: %s\n", path, err_text(irc));
        return EXIT_FAIL;
    }
    printf("%s: ok (%" PRIu32 " object%s)\n", path, info.objects, info.objects == 1 ? "" : "s");
    return EXIT_OK;
}

static int cmd_check(const struct command *cmd, int argc, char **argv)
{
    static const struct option longopts[] = {HELP_OPTION, {NULL, 0, NULL, 0}};
    struct args a;
    int rc = parse_args(cmd, argc, argv, "", longopts, check_opt, NULL, &a);
    if (rc == CONTINUE && a.npos < 1)
        rc = usage_error(cmd, "missing PATH");
    if (rc == CONTINUE) {
        rc = EXIT_OK;
        for (int i = 0; i < a.npos; i++) {
            if (check_one(a.pos[i]) != EXIT_OK)
                rc = EXIT_FAIL;
            if (out_line_flush && out_flush() != EXIT_OK)
                break;
        }
        rc = out_finish(rc);
    }
    free(a.pos);
    return rc;
}

/* --------------------------------------------------------- send / recv */

struct io_opts {
    int timeout;
    bool timeout_set;
    bool raw;
    bool count_set;
    uint64_t count;
    bool version;
    bool full;
    bool changes;
};

static int io_opt(const struct command *cmd, int opt, const char *arg, void *ctx)
{
    struct io_opts *o = ctx;
    switch (opt) {
    case OPT_TIMEOUT:
    case 't':
        if (!parse_timeout(arg, &o->timeout))
            return usage_error(cmd, "bad timeout '%s' (milliseconds, -1 = forever)", arg);
        o->timeout_set = true;
        return CONTINUE;
    case 'n':
        if (!parse_count(arg, &o->count))
            return usage_error(cmd, "bad count '%s'", arg);
        o->count_set = true;
        return CONTINUE;
    case OPT_RAW:
    case 'r':
        o->raw = true;
        return CONTINUE;
    case OPT_VERSION:
    case 'v':
        o->version = true;
        return CONTINUE;
    case OPT_FULL:
    case 'l':
        o->full = true;
        return CONTINUE;
    case OPT_CHANGES:
    case 'c':
        o->changes = true;
        return CONTINUE;
    }
    return usage_error(cmd, "unexpected option");
}

static int send_one(const char *path, const char *ring, mmipc_ring *q, const void *msg, size_t len, int timeout)
{
    int rc = mmipc_ring_send(q, msg, len, timeout);
    if (rc == 0)
        return EXIT_OK;
    if (rc == -EMSGSIZE) {
        struct mmipc_ring_stat st;
        if (mmipc_ring_stat(q, &st) == 0)
            return failf(path, "ring '%s': %s (%zu bytes; at most %" PRIu64 ")", ring, err_text(rc), len,
                         st.max_message);
    }
    if (rc == -ETIMEDOUT || rc == -EAGAIN)
        return failf(path, "ring '%s': timed out: the ring stayed full", ring);
    char *ctx = xasprintf("ring '%s'", ring);
    fail(path, ctx, rc);
    free(ctx);
    return EXIT_FAIL;
}

/* Read exactly n bytes; 1 on success, 0 on EOF before any byte, -1 on a
 * short read or error. */
static int read_full(FILE *f, void *p, size_t n)
{
    size_t got = fread(p, 1, n, f);
    if (got == n)
        return 1;
    return got == 0 && !ferror(f) ? 0 : -1;
}

static int cmd_send(const struct command *cmd, int argc, char **argv)
{
    static const struct option longopts[] = {
        {"timeout", required_argument, NULL, OPT_TIMEOUT},
        {"raw", no_argument, NULL, OPT_RAW},
        HELP_OPTION,
        {NULL, 0, NULL, 0},
    };
    struct io_opts o = {.timeout = -1};
    struct args a;
    int rc = parse_args(cmd, argc, argv, "t:r", longopts, io_opt, &o, &a);
    if (rc == CONTINUE && a.npos < 2)
        rc = usage_error(cmd, a.npos ? "missing RING" : "missing PATH and RING");
    if (rc == CONTINUE && o.raw && a.npos > 2)
        rc = usage_error(cmd, "--raw reads messages from standard input only");
    if (rc != CONTINUE) {
        free(a.pos);
        return rc;
    }
    const char *path = a.pos[0], *ring = a.pos[1];
    mmipc_region *r;
    mmipc_ring *q;
    rc = open_region(path, 0, &r);
    if (rc != EXIT_OK) {
        free(a.pos);
        return rc;
    }
    rc = open_ring(path, r, ring, &q);
    if (rc == EXIT_OK && a.npos > 2) {
        for (int i = 2; i < a.npos && rc == EXIT_OK; i++)
            rc = send_one(path, ring, q, a.pos[i], strlen(a.pos[i]), o.timeout);
    } else if (rc == EXIT_OK && o.raw) {
        char *msg = NULL;
        for (;;) {
            unsigned char hdr[4];
            int got = read_full(stdin, hdr, 4);
            if (got == 0)
                break;
            uint32_t len = (uint32_t)hdr[0] | (uint32_t)hdr[1] << 8 | (uint32_t)hdr[2] << 16 | (uint32_t)hdr[3] << 24;
            if (got > 0) {
                msg = xrealloc(msg, len);
                got = len ? read_full(stdin, msg, len) : 1;
            }
            if (got <= 0) {
                rc = failf(path, "standard input: %s", ferror(stdin) ? strerror(errno) : "truncated message");
                break;
            }
            rc = send_one(path, ring, q, msg, len, o.timeout);
            if (rc != EXIT_OK)
                break;
        }
        free(msg);
    } else if (rc == EXIT_OK) {
        char *line = NULL;
        size_t cap = 0;
        ssize_t n;
        while ((n = getline(&line, &cap, stdin)) >= 0) {
            if (n > 0 && line[n - 1] == '\n')
                n--;
            rc = send_one(path, ring, q, line, (size_t)n, o.timeout);
            if (rc != EXIT_OK)
                break;
        }
        if (rc == EXIT_OK && ferror(stdin))
            rc = failf(path, "standard input: %s", strerror(errno));
        free(line);
    }
    mmipc_region_close(r);
    free(a.pos);
    return rc;
}

struct recv_ctx {
    mmipc_ring *q;
    char *buf;
    size_t cap;
};

static long recv_op(void *arg, int timeout_ms)
{
    struct recv_ctx *c = arg;
    return (long)mmipc_ring_recv(c->q, c->buf, c->cap, timeout_ms);
}

static int cmd_recv(const struct command *cmd, int argc, char **argv)
{
    static const struct option longopts[] = {
        {"timeout", required_argument, NULL, OPT_TIMEOUT},
        {"count", required_argument, NULL, 'n'},
        {"raw", no_argument, NULL, OPT_RAW},
        HELP_OPTION,
        {NULL, 0, NULL, 0},
    };
    struct io_opts o = {.timeout = -1};
    struct args a;
    int rc = parse_args(cmd, argc, argv, "t:n:r", longopts, io_opt, &o, &a);
    rc = check_npos(cmd, &a, rc, 2, 2, RING_ARGS);
    if (rc != CONTINUE) {
        free(a.pos);
        return rc;
    }
    const char *path = a.pos[0], *ring = a.pos[1];
    mmipc_region *r;
    struct recv_ctx c = {NULL, NULL, 0};
    rc = open_region(path, 0, &r);
    if (rc != EXIT_OK) {
        free(a.pos);
        return rc;
    }
    rc = open_ring(path, r, ring, &c.q);
    struct mmipc_ring_stat st;
    if (rc == EXIT_OK) {
        int src = mmipc_ring_stat(c.q, &st);
        if (src < 0)
            rc = fail(path, ring, src);
    }
    if (rc == EXIT_OK) {
        c.cap = st.max_message < FIRST_BUF ? (size_t)st.max_message : FIRST_BUF;
        c.buf = xmalloc(c.cap);
    }
    uint64_t got = 0;
    catch_stop_signals();
    while (rc == EXIT_OK && !(o.count_set && got >= o.count) && !stop_signal) {
        long n = wait_sliced(recv_op, &c, o.timeout);
        if (n == -EMSGSIZE && c.cap < st.max_message && c.cap < SIZE_MAX / 2) {
            c.cap = 2 * c.cap > st.max_message ? (size_t)st.max_message : 2 * c.cap;
            c.buf = xrealloc(c.buf, c.cap);
            continue;
        }
        if (n == -EPIPE || n == -EINTR)
            break; /* the reader left, or a stop signal: stop quietly */
        if (n == -ETIMEDOUT || n == -EAGAIN) {
            if (o.count_set)
                rc = failf(path, "ring '%s': timed out after receiving %" PRIu64 " of %" PRIu64 " messages", ring, got,
                           o.count);
            break;
        }
        if (n < 0) {
            char *ctx = xasprintf("ring '%s'", ring);
            rc = fail(path, ctx, (int)n);
            free(ctx);
            break;
        }
        got++;
        if (o.raw) {
            unsigned char hdr[4] = {(unsigned char)n, (unsigned char)(n >> 8), (unsigned char)(n >> 16),
                                    (unsigned char)(n >> 24)};
            fwrite(hdr, 1, 4, stdout);
            fwrite(c.buf, 1, (size_t)n, stdout);
        } else {
            fwrite(c.buf, 1, (size_t)n, stdout);
            putchar('\n');
        }
        int f = out_flush();
        if (f == OUT_GONE)
            break;
        rc = f;
    }
    rc = out_finish(rc);
    free(c.buf);
    mmipc_region_close(r);
    free(a.pos);
    return rc;
}

/* ------------------------------------------------------------ kv tables */

/* Get a value into a buffer grown as needed.  Returns the length or -errno. */
static ssize_t kv_get_grow(mmipc_kv *kv, const char *key, char **buf, size_t *cap, uint64_t value_max,
                           uint64_t *version)
{
    for (;;) {
        if (!*buf) {
            *cap = value_max < FIRST_BUF ? (size_t)value_max : FIRST_BUF;
            *buf = xmalloc(*cap);
        }
        ssize_t n = mmipc_kv_get(kv, key, *buf, *cap, version);
        if (n != -EMSGSIZE || *cap >= value_max || *cap >= SIZE_MAX / 2)
            return n;
        *cap = 2 * *cap > value_max ? (size_t)value_max : 2 * *cap;
        *buf = xrealloc(*buf, *cap);
    }
}

static int key_fail(const char *path, const char *table, const char *key, int rc)
{
    if (rc == -ENOENT)
        return failf(path, "kv '%s': no key '%s'", table, key);
    return failf(path, "kv '%s': key '%s': %s", table, key, err_text(rc));
}

/* Open region + kv table; returns EXIT_OK or a reported failure. */
static int open_table(const char *path, const char *name, int flags, mmipc_region **r, mmipc_kv **kv,
                      struct mmipc_kv_stat *st)
{
    int rc = open_region(path, flags, r);
    if (rc != EXIT_OK)
        return rc;
    rc = open_kv(path, *r, name, kv);
    if (rc == EXIT_OK && st) {
        int src = mmipc_kv_stat(*kv, st);
        if (src < 0) {
            char *ctx = xasprintf("kv '%s'", name);
            rc = fail(path, ctx, src);
            free(ctx);
        }
    }
    if (rc != EXIT_OK)
        mmipc_region_close(*r);
    return rc;
}

static int cmd_put(const struct command *cmd, int argc, char **argv)
{
    static const struct option longopts[] = {HELP_OPTION, {NULL, 0, NULL, 0}};
    struct io_opts o = {.timeout = -1};
    struct args a;
    int rc = parse_args(cmd, argc, argv, "", longopts, io_opt, &o, &a);
    rc = check_npos(cmd, &a, rc, 3, 4, KV_KEY_ARGS);
    if (rc != CONTINUE) {
        free(a.pos);
        return rc;
    }
    const char *path = a.pos[0], *table = a.pos[1], *key = a.pos[2];
    mmipc_region *r;
    mmipc_kv *kv;
    struct mmipc_kv_stat st;
    rc = open_table(path, table, 0, &r, &kv, &st);
    if (rc != EXIT_OK) {
        free(a.pos);
        return rc;
    }
    const char *val;
    size_t len;
    struct buf in = {0};
    if (a.npos == 4) {
        val = a.pos[3];
        len = strlen(val);
    } else {
        /* Read at most value_max + 1 bytes: enough to tell "too large". */
        char chunk[8192];
        size_t n;
        uint64_t limit = st.value_max + 1;
        buf_add(&in, "", 0);
        while (in.len < limit && (n = fread(chunk, 1, sizeof chunk, stdin)) > 0)
            buf_add(&in, chunk, n);
        if (ferror(stdin)) {
            rc = failf(path, "standard input: %s", strerror(errno));
            free(in.p);
            mmipc_region_close(r);
            free(a.pos);
            return rc;
        }
        val = in.p;
        len = in.len;
    }
    int prc = mmipc_kv_put(kv, key, val, len);
    if (prc == -EMSGSIZE)
        rc = failf(path, "kv '%s': key '%s': %s (value of %s%zu bytes; at most %" PRIu64 ")", table, key, err_text(prc),
                   a.npos == 4 ? "" : "at least ", len, st.value_max);
    else if (prc < 0)
        rc = key_fail(path, table, key, prc);
    free(in.p);
    mmipc_region_close(r);
    free(a.pos);
    return rc;
}

static int print_value(const struct io_opts *o, const char *val, size_t len, uint64_t version)
{
    if (o->version)
        printf(o->raw ? "%" PRIu64 "\n" : "%" PRIu64 " ", version);
    fwrite(val, 1, len, stdout);
    if (!o->raw)
        putchar('\n');
    return ferror(stdout) ? out_flush() : EXIT_OK;
}

static int cmd_get(const struct command *cmd, int argc, char **argv)
{
    static const struct option longopts[] = {
        {"version", no_argument, NULL, OPT_VERSION},
        {"raw", no_argument, NULL, OPT_RAW},
        HELP_OPTION,
        {NULL, 0, NULL, 0},
    };
    struct io_opts o = {.timeout = -1};
    struct args a;
    int rc = parse_args(cmd, argc, argv, "vr", longopts, io_opt, &o, &a);
    rc = check_npos(cmd, &a, rc, 3, 3, KV_KEY_ARGS);
    if (rc != CONTINUE) {
        free(a.pos);
        return rc;
    }
    const char *path = a.pos[0], *table = a.pos[1], *key = a.pos[2];
    mmipc_region *r;
    mmipc_kv *kv;
    struct mmipc_kv_stat st;
    rc = open_table(path, table, MMIPC_RDONLY, &r, &kv, &st);
    if (rc != EXIT_OK) {
        free(a.pos);
        return rc;
    }
    char *buf = NULL;
    size_t cap = 0;
    uint64_t version = 0;
    ssize_t n = kv_get_grow(kv, key, &buf, &cap, st.value_max, &version);
    if (n < 0)
        rc = key_fail(path, table, key, (int)n);
    else
        rc = out_finish(print_value(&o, buf, (size_t)n, version));
    if (rc == OUT_GONE)
        rc = EXIT_OK;
    free(buf);
    mmipc_region_close(r);
    free(a.pos);
    return rc;
}

static int cmd_del(const struct command *cmd, int argc, char **argv)
{
    static const struct option longopts[] = {HELP_OPTION, {NULL, 0, NULL, 0}};
    struct io_opts o = {.timeout = -1};
    struct args a;
    int rc = parse_args(cmd, argc, argv, "", longopts, io_opt, &o, &a);
    rc = check_npos(cmd, &a, rc, 3, 3, KV_KEY_ARGS);
    if (rc != CONTINUE) {
        free(a.pos);
        return rc;
    }
    const char *path = a.pos[0], *table = a.pos[1], *key = a.pos[2];
    mmipc_region *r;
    mmipc_kv *kv;
    rc = open_table(path, table, 0, &r, &kv, NULL);
    if (rc == EXIT_OK) {
        int drc = mmipc_kv_del(kv, key);
        if (drc < 0)
            rc = key_fail(path, table, key, drc);
        mmipc_region_close(r);
    }
    free(a.pos);
    return rc;
}

struct ls_entry {
    char *key;
    uint64_t version;
    size_t len;
    char *shown;
};

struct ls_ctx {
    struct vec v;
    size_t limit;
};

static int ls_collect(const char *key, const void *val, size_t len, uint64_t version, void *arg)
{
    struct ls_ctx *c = arg;
    struct ls_entry *e = vec_push(&c->v);
    e->key = xstrdup(key);
    e->version = version;
    e->len = len;
    e->shown = escape(val, len, c->limit);
    return 0;
}

static int ls_cmp(const void *x, const void *y)
{
    const struct ls_entry *a = x, *b = y;
    return strcmp(a->key, b->key);
}

static int cmd_ls(const struct command *cmd, int argc, char **argv)
{
    static const struct option longopts[] = {
        {"full", no_argument, NULL, OPT_FULL},
        HELP_OPTION,
        {NULL, 0, NULL, 0},
    };
    struct io_opts o = {.timeout = -1};
    struct args a;
    int rc = parse_args(cmd, argc, argv, "l", longopts, io_opt, &o, &a);
    rc = check_npos(cmd, &a, rc, 2, 2, KV_ARGS);
    if (rc != CONTINUE) {
        free(a.pos);
        return rc;
    }
    const char *path = a.pos[0], *table = a.pos[1];
    mmipc_region *r;
    mmipc_kv *kv;
    rc = open_table(path, table, MMIPC_RDONLY, &r, &kv, NULL);
    if (rc != EXIT_OK) {
        free(a.pos);
        return rc;
    }
    struct ls_ctx c = {{NULL, 0, 0, sizeof(struct ls_entry)}, o.full ? 0 : LS_VALUE_PREVIEW};
    int frc = mmipc_kv_foreach(kv, ls_collect, &c);
    struct ls_entry *e = c.v.p;
    if (c.v.n)
        qsort(e, c.v.n, sizeof *e, ls_cmp);
    static const char *const head[] = {"KEY", "VERSION", "LENGTH", "VALUE"};
    struct table t = {4, head, "lrrl", NULL, 0, 0};
    for (size_t i = 0; i < c.v.n; i++) {
        char *k = escape_str(e[i].key);
        cell(&t, "%s", k);
        cell(&t, "%" PRIu64, e[i].version);
        cell(&t, "%zu", e[i].len);
        cell(&t, "%s", e[i].shown);
        free(k);
        free(e[i].key);
        free(e[i].shown);
    }
    table_print(&t, "");
    rc = out_finish(EXIT_OK);
    if (rc == OUT_GONE)
        rc = EXIT_OK;
    if (frc < 0) {
        char *ctx = xasprintf("kv '%s'", table);
        rc = fail(path, ctx, frc);
        free(ctx);
    }
    free(c.v.p);
    mmipc_region_close(r);
    free(a.pos);
    return rc;
}

struct watch_ctx {
    mmipc_kv *kv;
    const char *key;
    uint64_t seen;
};

static long watch_op(void *arg, int timeout_ms)
{
    struct watch_ctx *w = arg;
    return mmipc_kv_wait(w->kv, w->key, w->seen, timeout_ms);
}

static int cmd_watch(const struct command *cmd, int argc, char **argv)
{
    static const struct option longopts[] = {
        {"timeout", required_argument, NULL, OPT_TIMEOUT},
        {"count", required_argument, NULL, 'n'},
        {"version", no_argument, NULL, OPT_VERSION},
        {"changes", no_argument, NULL, OPT_CHANGES},
        HELP_OPTION,
        {NULL, 0, NULL, 0},
    };
    struct io_opts o = {.timeout = -1};
    struct args a;
    int rc = parse_args(cmd, argc, argv, "t:n:vc", longopts, io_opt, &o, &a);
    rc = check_npos(cmd, &a, rc, 3, 3, KV_KEY_ARGS);
    if (rc != CONTINUE) {
        free(a.pos);
        return rc;
    }
    const char *path = a.pos[0], *table = a.pos[1], *key = a.pos[2];
    mmipc_region *r;
    struct watch_ctx w = {NULL, key, 0};
    struct mmipc_kv_stat st;
    rc = open_table(path, table, 0, &r, &w.kv, &st);
    if (rc != EXIT_OK) {
        free(a.pos);
        return rc;
    }
    char *buf = NULL;
    size_t cap = 0;
    uint64_t printed = 0;
    bool first = true;
    catch_stop_signals();
    for (;;) {
        if ((o.count_set && printed >= o.count) || stop_signal)
            break;
        if (!first) {
            long wrc = wait_sliced(watch_op, &w, o.timeout);
            if (wrc == -EPIPE || wrc == -EINTR)
                break;
            if (wrc == -ETIMEDOUT || wrc == -EAGAIN) {
                if (o.count_set)
                    rc = failf(path, "kv '%s': key '%s': timed out after %" PRIu64 " of %" PRIu64 " values", table, key,
                               printed, o.count);
                break;
            }
            if (wrc < 0) {
                rc = key_fail(path, table, key, (int)wrc);
                break;
            }
        }
        uint64_t version = 0;
        ssize_t n = kv_get_grow(w.kv, key, &buf, &cap, st.value_max, &version);
        if (n == -ENOENT) {
            version = 0;
        } else if (n < 0) {
            rc = key_fail(path, table, key, (int)n);
            break;
        }
        /* Several changes between two looks show as the latest value. */
        bool show = first ? version != 0 && !o.changes : version != w.seen;
        first = false;
        w.seen = version;
        if (!show)
            continue;
        printed++;
        if (version == 0)
            puts("(deleted)");
        else
            print_value(&o, buf, (size_t)n, version);
        int f = out_flush();
        if (f == OUT_GONE)
            break;
        if (f != EXIT_OK) {
            rc = f;
            break;
        }
    }
    rc = out_finish(rc);
    free(buf);
    mmipc_region_close(r);
    free(a.pos);
    return rc;
}

/* --------------------------------------------------------------- main */

static int cmd_help(const struct command *cmd, int argc, char **argv);

static const struct command commands[] = {
    {"create", cmd_create, "PATH [OPTIONS]", "Create a new region file, with rings and kv tables in it",
     "  -s, --size N[K|M|G]      file size (default 1M); rounded up to whole pages\n"
     "  -m, --mode MODE          octal permission bits (default 0600)\n"
     "      --max-objects N      directory entries (default 64)\n"
     "      --ring NAME[:CAP]    create a ring of CAP bytes (default 64K); repeatable\n"
     "      --kv NAME[:SLOTS[:VALUE_MAX]]\n"
     "                           create a kv table (default 64 slots of 256 bytes); repeatable\n",
     "create a region file with rings and kv tables"},
    {"stat", cmd_stat, "PATH [--json]", "Show a region's header, objects and attached processes (read-only)",
     "      --json               print JSON instead of text\n", "show a region's objects, statistics and processes"},
    {"check", cmd_check, "PATH...", "Validate every structure of a region read-only, like fsck", "",
     "validate a region read-only, like fsck"},
    {"send", cmd_send, "PATH RING [MESSAGE]...",
     "Send each MESSAGE to RING; without MESSAGE, send each line of standard input",
     "  -t, --timeout MS         wait at most MS ms for space per message (default -1: forever)\n"
     "  -r, --raw                read messages from standard input framed as a 4-byte\n"
     "                           little-endian length then the bytes\n",
     "send arguments or lines of standard input to a ring"},
    {"recv", cmd_recv, "PATH RING [-n COUNT] [--timeout MS] [--raw]",
     "Receive messages from RING and print one per line",
     "  -n, --count COUNT        stop after COUNT messages (exit 1 if a timeout comes first)\n"
     "  -t, --timeout MS         wait at most MS ms for each message (default -1: forever);\n"
     "                           without -n, a timeout ends the command successfully\n"
     "  -r, --raw                print each message as a 4-byte little-endian length then\n"
     "                           its bytes\n",
     "receive messages from a ring, one per line"},
    {"put", cmd_put, "PATH KV KEY [VALUE]", "Store VALUE (or all of standard input) under KEY", "",
     "store a value under a key"},
    {"get", cmd_get, "PATH KV KEY [--version] [--raw]", "Print the value stored under KEY",
     "  -v, --version            print the key's version before the value\n"
     "  -r, --raw                print the value's bytes only, without a newline\n",
     "print a key's value"},
    {"del", cmd_del, "PATH KV KEY", "Delete KEY", "", "delete a key"},
    {"ls", cmd_ls, "PATH KV [--full]", "List the keys of a kv table with version, length and value",
     "  -l, --full               show whole values (default: the first 64 bytes)\n",
     "list a kv table's keys and values"},
    {"watch", cmd_watch, "PATH KV KEY [-n COUNT] [--timeout MS]",
     "Print KEY's value now and each time it changes (\"(deleted)\" when deleted)",
     "  -n, --count COUNT        stop after COUNT values (exit 1 if a timeout comes first)\n"
     "  -t, --timeout MS         wait at most MS ms for each change (default -1: forever);\n"
     "                           without -n, a timeout ends the command successfully\n"
     "  -c, --changes            do not print the current value, only changes\n"
     "  -v, --version            print each value's version before it\n",
     "print a key's value each time it changes"},
    {"help", cmd_help, "[COMMAND]", "Show help for mmipc or for COMMAND", "", "show help for mmipc or for a command"},
};
#define NCOMMANDS (sizeof commands / sizeof commands[0])

static void main_usage(FILE *f)
{
    fputs("Usage: mmipc COMMAND [ARGUMENTS]...\n"
          "Create, inspect and use mmipc region files: crash-safe IPC through one shared file.\n"
          "\nCommands:\n",
          f);
    for (size_t i = 0; i < NCOMMANDS; i++)
        fprintf(f, "  %-7s %s\n", commands[i].name, commands[i].brief);
    fputs("\nOptions:\n"
          "  -h, --help     show this help\n"
          "  -V, --version  show the version\n"
          "\nRun 'mmipc COMMAND --help' for what a command does and its options.\n"
          "Exit status: 0 success, 1 failure, 2 usage error.  See mmipc(1).\n",
          f);
}

static const struct command *find_command(const char *name)
{
    for (size_t i = 0; i < NCOMMANDS; i++)
        if (strcmp(commands[i].name, name) == 0)
            return &commands[i];
    return NULL;
}

static int cmd_help(const struct command *cmd, int argc, char **argv)
{
    static const struct option longopts[] = {HELP_OPTION, {NULL, 0, NULL, 0}};
    struct args a;
    int rc = parse_args(cmd, argc, argv, "", longopts, check_opt, NULL, &a);
    if (rc == CONTINUE) {
        if (a.npos == 0) {
            main_usage(stdout);
            rc = out_finish(EXIT_OK);
        } else if (a.npos == 1 && find_command(a.pos[0])) {
            print_help(find_command(a.pos[0]), stdout);
            rc = out_finish(EXIT_OK);
        } else {
            rc = usage_error(cmd, a.npos > 1 ? "too many arguments" : "unknown command '%s'", a.pos[0]);
        }
    }
    free(a.pos);
    return rc;
}

int main(int argc, char **argv)
{
    /* A reader that goes away shows as EPIPE on write, handled quietly. */
    signal(SIGPIPE, SIG_IGN);
    out_setup();
    if (argc < 2) {
        main_usage(stderr);
        return EXIT_USAGE;
    }
    const char *name = argv[1];
    if (strcmp(name, "--help") == 0 || strcmp(name, "-h") == 0) {
        main_usage(stdout);
        return out_finish(EXIT_OK);
    }
    if (strcmp(name, "--version") == 0 || strcmp(name, "-V") == 0) {
        printf("mmipc %s\n", mmipc_version());
        return out_finish(EXIT_OK);
    }
    const struct command *cmd = find_command(name);
    if (!cmd) {
        fprintf(stderr, "mmipc: unknown command '%s'\nTry 'mmipc --help'.\n", name);
        return EXIT_USAGE;
    }
    int rc = cmd->run(cmd, argc - 1, argv + 1);
    if (stop_signal) {
        /* Everything is flushed and closed: die of the signal we caught. */
        int sig = stop_signal;
        signal(sig, SIG_DFL);
        raise(sig);
    }
    return rc == OUT_GONE ? EXIT_OK : rc;
}
