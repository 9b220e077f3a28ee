/*
 * Replays fuzzer inputs through a harness's LLVMFuzzerTestOneInput in a
 * normal (gcc, no libFuzzer) build, so every input in fuzz/corpus and every
 * past finding in fuzz/regress stays a regression test of `make check`.
 *
 *   tests/fuzz-regress-open FILE|DIR...
 *
 * Directories are read one level deep, in name order; names starting with
 * '.' and README files are skipped; a missing directory is skipped with a
 * note.  Exit 0 once every input has run (a bug shows as a crash or abort).
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static unsigned replayed;

static int run_file(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL) {
        fprintf(stderr, "fuzz-regress: %s: %s\n", path, strerror(errno));
        return -1;
    }
    size_t cap = 4096, len = 0;
    uint8_t *data = malloc(cap);
    for (;;) {
        if (data == NULL) {
            fclose(f);
            return -1;
        }
        len += fread(data + len, 1, cap - len, f);
        if (len < cap)
            break;
        cap *= 2;
        data = realloc(data, cap);
    }
    fclose(f);
    /* Name the input first: if it crashes, this is the last line. */
    printf("fuzz-regress: %s (%zu bytes)\n", path, len);
    fflush(stdout);
    LLVMFuzzerTestOneInput(data, len);
    free(data);
    replayed++;
    return 0;
}

static int skip_name(const char *name)
{
    return name[0] == '.' || strncmp(name, "README", 6) == 0;
}

static int run_dir(const char *path)
{
    struct dirent **names;
    int n = scandir(path, &names, NULL, alphasort);
    int rc = 0;
    if (n < 0) {
        fprintf(stderr, "fuzz-regress: %s: %s\n", path, strerror(errno));
        return -1;
    }
    for (int i = 0; i < n; i++) {
        if (rc == 0 && !skip_name(names[i]->d_name)) {
            char file[4096];
            struct stat st;
            snprintf(file, sizeof file, "%s/%s", path, names[i]->d_name);
            if (stat(file, &st) == 0 && S_ISREG(st.st_mode))
                rc = run_file(file);
        }
        free(names[i]);
    }
    free(names);
    return rc;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: %s FILE|DIR...\n", argv[0]);
        return 2;
    }
    for (int i = 1; i < argc; i++) {
        struct stat st;
        int rc;
        if (stat(argv[i], &st) != 0) {
            printf("fuzz-regress: %s: none (skipped)\n", argv[i]);
            continue;
        }
        unsigned before = replayed;
        rc = S_ISDIR(st.st_mode) ? run_dir(argv[i]) : run_file(argv[i]);
        if (rc != 0)
            return 1;
        printf("fuzz-regress: %s: %u inputs replayed\n", argv[i], replayed - before);
    }
    return 0;
}
