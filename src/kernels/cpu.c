/* CPU feature detection and kernel-family selection. */
#include <stdlib.h>
#include <string.h>

#include "../core/internal.h"
#include "gemm_ukernel.h"

int tb_kernel_supported(tb_kernel kernel)
{
    switch (kernel) {
    case TB_KERNEL_AUTO:
    case TB_KERNEL_PORTABLE:
        return 1;
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
    case TB_KERNEL_AVX2:
        return tb_ukernel_avx2.fn != NULL && __builtin_cpu_supports("avx2") &&
               __builtin_cpu_supports("fma");
    case TB_KERNEL_AVX512:
        return tb_ukernel_avx512.fn != NULL && __builtin_cpu_supports("avx512f") &&
               __builtin_cpu_supports("fma");
#else
    case TB_KERNEL_AVX2:
    case TB_KERNEL_AVX512:
        return 0;
#endif
    }
    return 0;
}

tb_kernel tb_kernel_best(void)
{
    if (tb_kernel_supported(TB_KERNEL_AVX512))
        return TB_KERNEL_AVX512;
    if (tb_kernel_supported(TB_KERNEL_AVX2))
        return TB_KERNEL_AVX2;
    return TB_KERNEL_PORTABLE;
}

const char *tb_kernel_name(tb_kernel kernel)
{
    switch (kernel) {
    case TB_KERNEL_AUTO: return "auto";
    case TB_KERNEL_PORTABLE: return "portable";
    case TB_KERNEL_AVX2: return "avx2";
    case TB_KERNEL_AVX512: return "avx512";
    }
    return "unknown";
}

tb_status tb_kernel_from_env(tb_ctx *ctx, tb_kernel *kernel)
{
    if (!kernel)
        return tb_fail(ctx, TB_ERR_NULL_ARG, __func__, "kernel is NULL");
    *kernel = TB_KERNEL_AUTO;
    const char *name = getenv("TB_KERNEL");
    if (!name || !name[0])
        return TB_OK;
    for (int k = TB_KERNEL_AUTO; k <= TB_KERNEL_AVX512; k++) {
        if (strcmp(name, tb_kernel_name((tb_kernel)k)) != 0)
            continue;
        *kernel = (tb_kernel)k;
        if (!tb_kernel_supported(*kernel))
            return tb_fail(ctx, TB_ERR_UNSUPPORTED, __func__,
                           "TB_KERNEL=%s: this CPU or build cannot run the %s kernels", name,
                           name);
        return TB_OK;
    }
    return tb_fail(ctx, TB_ERR_INVALID_ARG, __func__,
                   "TB_KERNEL=%.40s names no kernel family (auto, portable, avx2, avx512)",
                   name);
}

tb_status tb_ctx_set_kernel(tb_ctx *ctx, tb_kernel kernel)
{
    if (!ctx)
        return TB_ERR_NULL_ARG;
    if (kernel < TB_KERNEL_AUTO || kernel > TB_KERNEL_AVX512)
        return tb_fail(ctx, TB_ERR_INVALID_ARG, __func__, "unknown kernel family %d", (int)kernel);
    if (!tb_kernel_supported(kernel))
        return tb_fail(ctx, TB_ERR_UNSUPPORTED, __func__,
                       "this CPU or build cannot run the %s kernels", tb_kernel_name(kernel));
    ctx->kernel = kernel;
    return TB_OK;
}

tb_kernel tb_ctx_kernel(const tb_ctx *ctx)
{
    tb_kernel k = ctx ? ctx->kernel : TB_KERNEL_AUTO;
    if (k == TB_KERNEL_AUTO || !tb_kernel_supported(k))
        return tb_kernel_best();
    return k;
}
