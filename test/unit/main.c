/* Runs every suite listed in suites.h (or one shard of them, below);
 * exits nonzero on any failure. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "suites.h"
#include "testutil.h"

/* The suites in suites.h order, with their weights. */
typedef struct suite_entry {
    const char *name;
    Suite *(*make)(void);
    unsigned weight;
} suite_entry;

static const suite_entry all_suites[] = {
#define TBT_ENTRY_(name, weight) {#name, suite_##name, weight},
    TBT_SUITES(TBT_ENTRY_)
#undef TBT_ENTRY_
};
enum { N_SUITES = sizeof all_suites / sizeof all_suites[0] };

/* TB_TEST_SHARD=i/n (1 <= i <= n <= N_SUITES) runs shard i of n, so that
 * test/scripts/per_family.sh can spread one family's suites over the
 * cores. The shards are fixed by suites.h alone: each suite, heaviest
 * first (ties in list order), goes to the shard with the least weight so
 * far (the lowest-numbered among equals). Every suite is in exactly one
 * shard of n (unit_shards_test in test/scripts/run_all.sh checks it
 * through --list).
 * Unset or empty: every suite. Returns 0 (after a message) on a malformed
 * value. */
static int parse_shard(const char *v, unsigned *i, unsigned *n)
{
    *i = *n = 1;
    if (!v || !*v)
        return 1;
    char *end;
    const unsigned long a = strtoul(v, &end, 10);
    if (end == v || *end != '/' || a < 1) {
        fprintf(stderr, "TB_TEST_SHARD must be i/n with 1 <= i <= n, not '%s'\n", v);
        return 0;
    }
    const char *q = end + 1;
    const unsigned long b = strtoul(q, &end, 10);
    if (end == q || *end || b < a || b > N_SUITES) {
        fprintf(stderr, "TB_TEST_SHARD must be i/n with 1 <= i <= n <= %d, not '%s'\n",
                (int)N_SUITES, v);
        return 0;
    }
    *i = (unsigned)a, *n = (unsigned)b;
    return 1;
}

/* shard_of[k]: the shard (0-based) suite k belongs to among n. */
static void assign_shards(unsigned n, unsigned *shard_of)
{
    unsigned long load[N_SUITES] = {0};
    int done[N_SUITES] = {0};
    for (size_t step = 0; step < N_SUITES; step++) {
        size_t pick = N_SUITES;
        for (size_t k = 0; k < N_SUITES; k++)
            if (!done[k] && (pick == N_SUITES || all_suites[k].weight > all_suites[pick].weight))
                pick = k;
        unsigned to = 0;
        for (unsigned s = 1; s < n; s++)
            if (load[s] < load[to])
                to = s;
        shard_of[pick] = to;
        load[to] += all_suites[pick].weight;
        done[pick] = 1;
    }
}

int main(int argc, char **argv)
{
    unsigned shard, shards, shard_of[N_SUITES];
    if (!parse_shard(getenv("TB_TEST_SHARD"), &shard, &shards))
        return EXIT_FAILURE;
    assign_shards(shards, shard_of);
    /* --list: the suites this shard runs, one per line, and nothing else. */
    if (argc == 2 && strcmp(argv[1], "--list") == 0) {
        for (size_t k = 0; k < N_SUITES; k++)
            if (shard_of[k] == shard - 1)
                printf("%s\n", all_suites[k].name);
        return EXIT_SUCCESS;
    }
    if (argc > 1) {
        fprintf(stderr, "usage: %s [--list] (TB_TEST_SHARD=i/n picks a shard)\n", argv[0]);
        return EXIT_FAILURE;
    }
    /* The family under test comes from TB_KERNEL, the library's own switch
     * (tb_ctx_init() reads it for every context the tests create). */
    tb_ctx ctx;
    tb_ctx_init(&ctx);
    tb_kernel k;
    tb_status st = tb_kernel_from_env(&ctx, &k);
    if (st == TB_ERR_UNSUPPORTED) {
        /* Hardware this machine lacks: reported by name, never silently.
         * The Makefile does not start a run for such a family at all. */
        printf("kernel family %s: NOT RUN (this CPU or build cannot run it)\n",
               tb_kernel_name(k));
        return EXIT_SUCCESS;
    }
    if (st != TB_OK) {
        fprintf(stderr, "%s\n", tb_ctx_error(&ctx));
        return EXIT_FAILURE;
    }
    printf("kernel family: %s (TB_KERNEL=%s)\n", tb_kernel_name(tb_ctx_kernel(&ctx)),
           getenv("TB_KERNEL") ? getenv("TB_KERNEL") : "");
    if (shards > 1)
        printf("suites: shard %u of %u (TB_TEST_SHARD)\n", shard, shards);
    SRunner *sr = srunner_create(NULL);
    for (size_t i = 0; i < N_SUITES; i++)
        if (shard_of[i] == shard - 1)
            srunner_add_suite(sr, all_suites[i].make());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
