/* Runs every suite listed in suites.h; exits nonzero on any failure. */
#include <stdio.h>
#include <stdlib.h>

#include "suites.h"
#include "testutil.h"

int main(void)
{
    tb_kernel k = tbt_test_kernel();
    if ((int)k < 0) {
        fprintf(stderr, "unknown TB_TEST_KERNEL '%s'\n", getenv("TB_TEST_KERNEL"));
        return EXIT_FAILURE;
    }
    if (!tb_kernel_supported(k)) {
        /* Hardware this machine lacks: the run for that family is skipped,
         * loudly; the portable family always runs. */
        printf("kernel family %s: not supported by this CPU, SKIPPED\n", tb_kernel_name(k));
        return EXIT_SUCCESS;
    }
    printf("kernel family: %s (resolves to %s)\n", tb_kernel_name(k),
           tb_kernel_name(k == TB_KERNEL_AUTO ? tb_kernel_best() : k));
    SRunner *sr = srunner_create(NULL);
#define TBT_ADD_(name) srunner_add_suite(sr, suite_##name());
    TBT_SUITES(TBT_ADD_)
#undef TBT_ADD_
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
