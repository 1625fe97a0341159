/*
 * Whether this CPU and build can run the kernel family named by TB_KERNEL,
 * asked through the library's own switch (tb_kernel_from_env()), so that
 * make check decides which families to run exactly as the library would.
 *
 *   TB_KERNEL=avx2 kernel_family    prints "avx2" and exits 0 if it runs here,
 *                                   exits 77 if this CPU or build lacks it,
 *                                   exits 2 if TB_KERNEL names no family.
 * (77, not 1: 1 is what a crash or a sanitizer report exits with, and must
 * never read as "not supported".)
 */
#include <stdio.h>

#include "tblocks.h"

int main(void)
{
    tb_ctx ctx;
    tb_ctx_init(&ctx);
    tb_kernel k;
    tb_status s = tb_kernel_from_env(&ctx, &k);
    if (s == TB_OK) {
        printf("%s\n", tb_kernel_name(tb_ctx_kernel(&ctx)));
        return 0;
    }
    fprintf(stderr, "%s\n", tb_ctx_error(&ctx));
    return s == TB_ERR_UNSUPPORTED ? 77 : 2;
}
