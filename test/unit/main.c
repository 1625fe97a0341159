/* Runs every suite listed in suites.h; exits nonzero on any failure. */
#include <stdio.h>
#include <stdlib.h>

#include "suites.h"
#include "testutil.h"

int main(void)
{
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
    SRunner *sr = srunner_create(NULL);
#define TBT_ADD_(name) srunner_add_suite(sr, suite_##name());
    TBT_SUITES(TBT_ADD_)
#undef TBT_ADD_
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
