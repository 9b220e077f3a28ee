/* The one Check runner: every suite, or those named on the command line
 * (`tests/check_mmipc ring kv`).  CK_FORK, CK_RUN_CASE etc. work as usual. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "helpers.h"

struct entry {
    const char *name;
    Suite *(*make)(void);
};

static const struct entry suites[] = {
    {"region", make_region_suite}, {"sync", make_sync_suite},       {"ring", make_ring_suite},
    {"kv", make_kv_suite},         {"hostile", make_hostile_suite},
};

int main(int argc, char **argv)
{
    SRunner *sr = NULL;
    for (size_t i = 0; i < sizeof suites / sizeof suites[0]; i++) {
        int wanted = argc < 2;
        for (int a = 1; a < argc; a++)
            wanted |= strcmp(argv[a], suites[i].name) == 0;
        if (!wanted)
            continue;
        if (sr == NULL)
            sr = srunner_create(suites[i].make());
        else
            srunner_add_suite(sr, suites[i].make());
    }
    if (sr == NULL) {
        fprintf(stderr, "usage: %s [region|sync|ring|kv|hostile]...\n", argv[0]);
        return 2;
    }
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
