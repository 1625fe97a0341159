/*
 * Shared test helpers: contexts, deterministic inputs, tolerant comparison
 * that cannot pass on a degenerate reference, a finite-difference gradient
 * checker, and the reader for PyTorch reference files (.tbref).
 *
 * Tolerance rule used everywhere: element i passes when
 *     |got - want| <= atol + rtol * |want|
 * and a comparison FAILS if the reference itself is degenerate
 * (max |want| <= 10 * atol), because then an all-zero result would pass.
 */
#ifndef TBT_TESTUTIL_H
#define TBT_TESTUTIL_H

#include <check.h>
#include <stddef.h>
#include <stdint.h>

#include "tblocks.h"

/* The kernel family this run tests: the one $TB_KERNEL names ("portable",
 * "avx2", "avx512"; unset, empty or "auto": the best this CPU has), never
 * TB_KERNEL_AUTO. main.c refuses an unknown or unsupported name first. */
tb_kernel tbt_test_kernel(void);

/* A context with the given thread count and the kernel family of the run
 * (tb_ctx_init() reads TB_KERNEL; asserted); records errors as usual. */
void tbt_ctx_init(tb_ctx *ctx, int threads);

/* x[0..n) uniform in [lo, hi) from a private stream seeded with seed. */
void tbt_fill_uniform(float *x, size_t n, float lo, float hi, uint64_t seed);

/* Same, but every value has |v| >= gap (keeps inputs away from kinks). */
void tbt_fill_away_from_zero(float *x, size_t n, float lo, float hi, float gap, uint64_t seed);

/* Fail the test, naming the call, its status and the context's detail, if a
 * library call does not return TB_OK. */
#define CHECK_OK(ctx, call)                                                          \
    do {                                                                             \
        tb_status st_ = (call);                                                      \
        ck_assert_msg(st_ == TB_OK, "%s failed: %s (%s)", #call, tb_strerror(st_),   \
                      tb_ctx_error(&(ctx)));                                         \
    } while (0)

/* calloc that fails the test on exhaustion. */
void *tbt_alloc(size_t bytes);

/* Result of a comparison. */
typedef struct tbt_cmp {
    double max_abs_err;  /* max |got - want| */
    double max_rel_err;  /* max |got - want| / max(|want|, tiny) over elements */
    double max_ref;      /* max |want| */
    size_t worst;        /* index of the element with the largest excess */
    size_t n_bad;        /* elements outside the tolerance */
    int degenerate;      /* reference too small to test anything */
    int ok;              /* n_bad == 0 && !degenerate */
} tbt_cmp;

tbt_cmp tbt_compare(const float *got, const float *want, size_t n, double rtol, double atol);

/* Compare, print one summary line "label: max_abs=.. max_rel=.. n=..", and
 * fail the current test (with the worst element) on a mismatch. */
void tbt_assert_close_impl(const char *file, int line, const char *label, const float *got,
                           const float *want, size_t n, double rtol, double atol);
#define tbt_assert_close(label, got, want, n, rtol, atol) \
    tbt_assert_close_impl(__FILE__, __LINE__, (label), (got), (want), (n), (rtol), (atol))

/*
 * Finite-difference gradient check. loss() must run the forward pass on the
 * current contents of x and return a scalar in double (typically
 * sum(w .* y) for a fixed random w, so that dL/dy = w). analytic[i] is the
 * claimed dL/dx[i]. Central differences with step h are taken for every
 * element (or an evenly spread sample of max_checks elements).
 * Fails the test if any checked element violates
 *     |num - ana| <= atol + rtol * |num|
 * or if max |num| <= 10 * atol (nothing was really tested).
 */
typedef double (*tbt_loss_fn)(void *user);
void tbt_gradcheck_impl(const char *file, int line, const char *label, float *x, size_t n,
                        const float *analytic, tbt_loss_fn loss, void *user, float h,
                        double rtol, double atol, size_t max_checks);
#define tbt_gradcheck(label, x, n, analytic, loss, user, h, rtol, atol, max_checks)          \
    tbt_gradcheck_impl(__FILE__, __LINE__, (label), (x), (n), (analytic), (loss), (user), (h), \
                       (rtol), (atol), (max_checks))

/* sum_i w[i] * y[i] in double. */
double tbt_dot(const float *w, const float *y, size_t n);

/* ---- PyTorch reference files -------------------------------------------
 * Written by test/oracle/gen_reference.py into $TB_ORACLE_DIR/<case>.tbref:
 *   "TBREF001", u32 count, then per tensor:
 *   u32 name_len, name, u32 dtype (0 = f32, 1 = i32), u32 ndim,
 *   u64 dims[ndim], little-endian data.
 * A missing directory or file FAILS the test: the oracle must really run.
 */
typedef struct tbt_ref tbt_ref;
tbt_ref *tbt_ref_load(const char *case_name);

/* The generators list the cases they wrote in TB_ORACLE_DIR/<manifest>, one
 * name per line. Fails (naming the case and test_file) unless is_tested()
 * accepts every listed name; returns how many names were listed. */
typedef int (*tbt_case_pred)(const char *name, const void *user);
size_t tbt_check_manifest(const char *manifest, const char *test_file, tbt_case_pred is_tested,
                          const void *user);

/* A predicate for tbt_check_manifest: the name is in the tbt_names list. */
typedef struct tbt_names {
    const char *const *names;
    size_t n;
} tbt_names;
int tbt_name_listed(const char *name, const void *names);
void tbt_ref_free(tbt_ref *ref);
/* Pointer to the named tensor's data (fails the test if absent or if the
 * dtype differs). numel and shape (up to 4 dims; may be NULL) are filled. */
const float *tbt_ref_f32(const tbt_ref *ref, const char *name, size_t *numel, size_t *ndim,
                         size_t shape[4]);
const int32_t *tbt_ref_i32(const tbt_ref *ref, const char *name, size_t *numel);
/* Scalar helper: the single f32 value of a 1-element tensor. */
float tbt_ref_scalar(const tbt_ref *ref, const char *name);
/* Whether the file has a tensor of that name. */
int tbt_ref_has(const tbt_ref *ref, const char *name);

/* ---- helpers for tests built on reference files ------------------------- */

/* A float32 tensor of a reference file (1 to TB_MAX_DIMS dims). */
typedef struct tbt_reft {
    const float *data;
    size_t n;
    size_t ndim;
    size_t shape[4];
} tbt_reft;
tbt_reft tbt_ref_get(const tbt_ref *ref, const char *name);
/* The single int32 value of a 1-element tensor. */
int32_t tbt_ref_i32_scalar(const tbt_ref *ref, const char *name);
/* A view of `data` with the shape of reference tensor `like`. */
tb_tensor tbt_view_like(float *data, const tbt_reft *like);
/* A private, writable copy of a reference tensor (free it). */
float *tbt_ref_dup(const tbt_reft *r);
/* n floats pre-filled with NaN, so elements a call fails to write fail. */
float *tbt_nan_buffer(size_t n);
/* "17x33" from a shape. */
void tbt_shape_str(char *buf, size_t size, size_t ndim, const size_t *shape);
/* "<block>.<what>" into buf; returns buf. */
const char *tbt_label(char *buf, size_t size, const char *block, const char *what);

/* ---- attention masks ------------------------------------------------------ */

/* The masks of one attention call as the tests see them (NULL and 0 mean
 * none), for tbt_attn_visible(). */
typedef struct tbt_attn_masks {
    size_t tq, tk;
    int causal;
    size_t window;
    const int32_t *lengths; /* B entries */
    const uint8_t *valid;   /* (B, Tk) */
    const float *bias;      /* (Tq, Tk); -inf masks */
} tbt_attn_masks;

/* Whether query i of batch row r sees key j, by attention.h's rules
 * written out independently of the library (diagonal i + Tk - Tq). */
int tbt_attn_visible(const tbt_attn_masks *m, size_t r, size_t i, size_t j);

#endif /* TBT_TESTUTIL_H */
