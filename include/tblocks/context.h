/**
 * @file context.h
 * @brief The per-caller context: thread count, allocator hook, error detail.
 *
 * libtblocks has no global mutable state. Everything a call needs beyond its
 * arguments comes from a tb_ctx, a plain struct the caller owns:
 *
 * @code
 * tb_ctx ctx;
 * tb_ctx_init(&ctx);          // all cores, malloc-based allocator
 * ctx.num_threads = 1;        // optional: fields may be set directly
 * if (tb_linear_forward(&ctx, &lin, &x, &y) != TB_OK)
 *     fprintf(stderr, "%s\n", tb_ctx_error(&ctx));
 * @endcode
 *
 * A context is used by one host thread at a time (it records the last error);
 * give each host thread its own. The library runs its own work on
 * `num_threads` OpenMP threads through `num_threads()` clauses and never
 * changes the host program's OpenMP settings. Results are bitwise identical
 * for every thread count.
 */
#ifndef TBLOCKS_CONTEXT_H
#define TBLOCKS_CONTEXT_H

#include <stddef.h>

#include "status.h"

#ifdef __cplusplus
extern "C" {
#endif

/** Longest error detail a context keeps, including the terminating NUL. */
#define TB_ERROR_DETAIL_MAX 256

/**
 * @brief Memory hooks through which the library allocates everything it owns
 * (parameters, gradients, parameter lists).
 *
 * Activation caches are never allocated by the library: the caller passes
 * them in (see the `*_cache_size` functions and tb_arena).
 */
typedef struct tb_allocator {
    /** Return `size` bytes aligned to `alignment` (a power of two, at most
     *  4096), or NULL on failure. `size` is never 0. */
    void *(*alloc)(void *user, size_t size, size_t alignment);
    /** Release memory returned by `alloc`; `ptr` is never NULL. */
    void (*free)(void *user, void *ptr);
    /** Passed unchanged to both hooks. */
    void *user;
} tb_allocator;

/** @brief Training or inference: selects how mode-dependent blocks behave
 *  (dropout is active only in training; BatchNorm uses batch statistics). */
typedef enum tb_mode {
    TB_MODE_INFERENCE = 0, /**< Deterministic evaluation behaviour. */
    TB_MODE_TRAINING = 1   /**< Training behaviour (dropout active, ...). */
} tb_mode;

/**
 * @brief Which family of compute kernels to run. Every family passes the
 * same tests; results agree within floating-point tolerance (not bitwise)
 * across families, and are bitwise identical across thread counts within
 * one family.
 */
typedef enum tb_kernel {
    TB_KERNEL_AUTO = 0,     /**< The fastest family this CPU supports. */
    TB_KERNEL_PORTABLE = 1, /**< Plain C, runs everywhere. */
    TB_KERNEL_AVX2 = 2,     /**< x86-64 AVX2 + FMA. */
    TB_KERNEL_AVX512 = 3    /**< x86-64 AVX-512F. */
} tb_kernel;

/** @brief Per-caller settings and the last error's detail. */
typedef struct tb_ctx {
    /** Threads the library may use for one call; values below 1 mean 1. */
    int num_threads;
    /** Kernel family: tb_ctx_init() takes it from the environment variable
     *  TB_KERNEL (see tb_kernel_from_env()), TB_KERNEL_AUTO when that is
     *  unset or unusable; tb_ctx_set_kernel() changes it and refuses
     *  families this CPU lacks. A value the CPU does not support is treated
     *  as TB_KERNEL_AUTO. */
    tb_kernel kernel;
    /** Hooks for every allocation the library makes. */
    tb_allocator allocator;
    /** Detail of the last error returned through this context ("" if none). */
    char error[TB_ERROR_DETAIL_MAX];
} tb_ctx;

/**
 * @brief Initialise a context: as many threads as OpenMP would use by
 * default (read once, not changed), the C library's aligned allocator, no
 * error recorded, and the kernel family named by the environment variable
 * TB_KERNEL (tb_kernel_from_env(); TB_KERNEL_AUTO when it is unset, names
 * no family or names one this CPU cannot run: programs that want such a
 * value reported call tb_kernel_from_env() themselves).
 *
 * TB_KERNEL is the one switch that forces a family for every context a
 * program initialises, whatever the program: `TB_KERNEL=avx2 ./app` runs
 * an AVX-512 machine's products on the AVX2 kernels, exactly as an
 * AVX2-only CPU would. The library reads the environment nowhere else
 * (here, through tb_kernel_from_env(), whose note on setenv() races
 * applies to this function too).
 * @param ctx Context to fill; nothing happens if NULL.
 */
void tb_ctx_init(tb_ctx *ctx);

/**
 * @brief Whether this build and CPU can run a kernel family.
 * @param kernel A family; TB_KERNEL_AUTO and TB_KERNEL_PORTABLE always can.
 * @return 1 if supported, else 0 (also for values outside the enum).
 */
int tb_kernel_supported(tb_kernel kernel);

/**
 * @brief The family TB_KERNEL_AUTO resolves to on this CPU.
 * @return TB_KERNEL_AVX512, TB_KERNEL_AVX2 or TB_KERNEL_PORTABLE.
 */
tb_kernel tb_kernel_best(void);

/**
 * @brief A short name for a kernel family ("auto", "portable", "avx2",
 * "avx512"); "unknown" for other values; never NULL.
 * @param kernel A family.
 * @return A static string.
 */
const char *tb_kernel_name(tb_kernel kernel);

/**
 * @brief The kernel family named by the environment variable TB_KERNEL:
 * "auto", "portable", "avx2" or "avx512" (exactly, lower case); unset or
 * empty means "auto".
 *
 * Reads the environment with getenv(), so it must not race with setenv()
 * in another thread (as for any getenv() caller).
 * @param ctx Context for the error detail, or NULL.
 * @param kernel Receives the family: TB_KERNEL_AUTO when unset or on
 *        TB_ERR_INVALID_ARG, the named family on TB_OK and on
 *        TB_ERR_UNSUPPORTED.
 * @return TB_OK; TB_ERR_NULL_ARG if `kernel` is NULL; TB_ERR_INVALID_ARG if
 *         the value names no family; TB_ERR_UNSUPPORTED if this CPU or
 *         build cannot run the named family.
 */
tb_status tb_kernel_from_env(tb_ctx *ctx, tb_kernel *kernel);

/**
 * @brief The family that calls through `ctx` run: its kernel field when
 * this CPU supports it, otherwise (TB_KERNEL_AUTO included) tb_kernel_best().
 * @param ctx A context, or NULL (then tb_kernel_best()).
 * @return TB_KERNEL_PORTABLE, TB_KERNEL_AVX2 or TB_KERNEL_AVX512; never
 *         TB_KERNEL_AUTO.
 */
tb_kernel tb_ctx_kernel(const tb_ctx *ctx);

/**
 * @brief Select the kernel family for calls made through `ctx`.
 * @param ctx Context.
 * @param kernel The family.
 * @return TB_OK; TB_ERR_NULL_ARG; TB_ERR_UNSUPPORTED if this CPU or build
 *         cannot run it (ctx unchanged); TB_ERR_INVALID_ARG for a value
 *         outside the enum.
 */
tb_status tb_ctx_set_kernel(tb_ctx *ctx, tb_kernel kernel);

/**
 * @brief The allocator installed by tb_ctx_init(), built on aligned_alloc().
 * @return A copy of the default hooks.
 */
tb_allocator tb_default_allocator(void);

/**
 * @brief The detail of the last error recorded in `ctx`. Successful calls
 * do not clear it: read it right after a call returned an error. Functions
 * that take no context (size queries such as tb_arena_size_add()) report
 * through their status code only.
 * @param ctx A context, or NULL.
 * @return A sentence such as "tb_linear_forward: x has last dimension 7,
 *         expected 8"; "" if no error was recorded; never NULL.
 */
const char *tb_ctx_error(const tb_ctx *ctx);

/**
 * @brief Record an error detail in `ctx`, as the library's own calls do,
 * and return `status`: for code built on the library (models, adapters,
 * programs) that reports through the same context. The detail is
 * `fmt` formatted as printf() would, truncated to TB_ERROR_DETAIL_MAX - 1
 * bytes; by convention it starts with the reporting function or component
 * ("gpt: a batch of 9 x 64 tokens; ...").
 * @param ctx A context, or NULL (then only `status` is returned).
 * @param status Status to return (normally an error code).
 * @param fmt printf() format of the detail, not NULL.
 * @return `status`.
 */
tb_status tb_ctx_set_error(tb_ctx *ctx, tb_status status, const char *fmt, ...)
#if defined(__GNUC__) || defined(__clang__)
    __attribute__((format(printf, 3, 4)))
#endif
    ;

/**
 * @brief Forget the recorded error detail.
 * @param ctx A context, or NULL (then nothing happens).
 */
void tb_ctx_clear_error(tb_ctx *ctx);

#ifdef __cplusplus
}
#endif

#endif /* TBLOCKS_CONTEXT_H */
