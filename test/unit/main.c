/* Runs every suite listed in suites.h; exits nonzero on any failure. */
#include <stdlib.h>

#include "suites.h"

int main(void)
{
    SRunner *sr = srunner_create(NULL);
#define TBT_ADD_(name) srunner_add_suite(sr, suite_##name());
    TBT_SUITES(TBT_ADD_)
#undef TBT_ADD_
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
