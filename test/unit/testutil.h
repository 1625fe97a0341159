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
    double max_tol_frac; /* max |got - want| / (atol + rtol |want|): above 1 fails */
    size_t worst;        /* index of the element with the largest excess */
    size_t n_bad;        /* elements outside the tolerance */
    int degenerate;      /* reference too small to test anything */
    int ok;              /* n_bad == 0 && !degenerate */
} tbt_cmp;

tbt_cmp tbt_compare(const float *got, const float *want, size_t n, double rtol, double atol);

/* Compare, print one summary line "compare label n=.. max_abs=.. max_rel=..
 * (rtol=.. atol=..) of_tol=.." (of_tol: max_tol_frac, the share of the
 * tolerance the worst element used; test/scripts/correctness.py reads these
 * lines), and fail the current test (with the worst element) on a mismatch. */
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
 * Written by test/oracle/tbref.py (for every gen_*.py) into $TB_ORACLE_DIR/<case>.tbref:
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

/* ---- finite differences and untouched outputs -------------------------
 *
 * The step and tolerance of the finite-difference checks of the element-wise
 * blocks, linear, embedding and cross-entropy (tbt_gradcheck). Each check
 * uses the scalar L = sum(w .* y) for a fixed random w (so dL/dy = w),
 * forward in float, L accumulated in double, central differences with step
 * h = 1e-2. Justification of the tolerance (rtol 1e-2, atol 1e-3): float
 * rounding of L is about 1e-7 * sum|w y| <= ~1e-5 here, which divided by 2h
 * gives <= 5e-4; the truncation error h^2/6 * |f'''| is <= ~2e-5 for these
 * smooth functions. A zero or sign-flipped gradient fails, because every
 * check also requires max |numeric| > 10 * atol.
 */
#define TBT_FD_H 1e-2f
#define TBT_FD_RTOL 1e-2
#define TBT_FD_ATOL 1e-3
#define TBT_FD_MAX_CHECKS 600

/* A value no block writes: outputs filled with it before a call that must
 * fail are checked to hold it still. */
#define TBT_SENTINEL 12345.0f
void tbt_fill_sentinel(float *x, size_t n);
/* Fails the test unless every element still holds TBT_SENTINEL. */
void tbt_assert_untouched(const float *x, size_t n);

/* Oracle tolerances of one block that another block's oracle test reuses
 * (test_residual.c: a residual add on top of a linear or GELU branch);
 * defined and justified in test_linear.c and test_activation.c. */
extern const double LIN_RTOL, LIN_ATOL;
extern const double GELU_RTOL, GELU_ATOL;

/* ---- normalization blocks ------------------------------------------------
 * Gradient checks: TBT_FD_* above. L = sum(w .* y) for a fixed random
 * w (dL/dy = w), forward in float, L accumulated in double, central
 * differences with h = 1e-2, rtol 1e-2, atol 1e-3: the float rounding of
 * the y elements a perturbation changes (one row for LN/RMS, one column for
 * BN, <= 33 elements of |y| <~ 3) is <= ~33 * 6e-8 * 3 ~ 6e-6 in L, divided
 * by 2h gives <= 3e-4; the truncation error h^2/6 * |f'''| stays below
 * ~1e-4 because every row / column used here has a spread of order 1 (the
 * inputs are laid out over [-2, 2] plus noise, so 1/std is O(1)). A zero or
 * sign-flipped gradient fails, since every check requires max |numeric| >
 * 10 * atol. Where the exact gradient is (nearly) flat with the default eps
 * (RMSNorm with C = 1: eps / (x^2 + eps)^1.5; BatchNorm with 2 positions:
 * proportional to eps / var) a larger eps is used, so that the formula,
 * which is the same for every eps, is actually exercised.
 *
 * Double-precision references (robustness): the same tolerances as the
 * float64 comparison of the PyTorch oracle (below), rtol 2e-6 and atol
 * 1e-6 of the natural unit of each quantity (see there): with double statistics the
 * remaining float work is a few roundings per element.
 *
 * Element i passes when |got - want| <= atol + rtol * |want|, with atol
 * proportional to the natural unit of the compared quantity, computed in
 * double from the inputs (norm outputs are cancellations of O(unit) terms,
 * so their absolute error is a few ulp of the unit, not of themselves):
 *   y:               max |y_f64|  (|x_hat * w| + |b|, x_hat = O(1));
 *   dx (LN, RMS):    max over rows of rstd * max |dy * w|: dx is
 *                    rstd * (g - mean(g) - x_hat * mean(g x_hat)), g = dy w,
 *                    whose terms are of that size and cancel;
 *   dx (BN):         max_c |w_c| rstd_c * max |dy| (the same for channels);
 *   dweight:         max_c sum over positions |dy * x_hat| (a sum of those
 *                    terms; float summation errors scale with it);
 *   dbias:           max_c sum over positions |dy|;
 *   running stats:   max |reference| (momentum blends of O(1) values).
 * ulp below means 2^-24 = 6e-8 relative.
 *
 * vs float32 PyTorch: rtol 1e-5, atol 2e-6 * unit.
 *   Measured: PyTorch's own float32 results differ from float64 by up to
 *   6.3e-7 * unit beyond rtol 1e-5 (BatchNorm y: PyTorch sums the channel
 *   mean in float32, and mean/std reaches ~5 here) and by < 2e-7 * unit
 *   everywhere else. The library's own error (next paragraph) adds at most
 *   1e-6 * unit, so 2e-6 * unit (~34 ulp of the unit) covers both with
 *   margin; rtol 1e-5 (~170 ulp) lets significant elements differ by
 *   PyTorch's summation order. A 1e-3 relative error on any element above
 *   2e-3 * unit fails by 5x or more.
 * vs float64 PyTorch: rtol 2e-6, atol 1e-6 * unit.
 *   With double statistics the float32 work is a handful of roundings per
 *   element (centre, scale, weight, bias: <= ~4 ulp of the unit) plus, for
 *   dweight/dbias, a sum over at most 96 positions that the library may
 *   accumulate in float (typical error ~0.3 ulp * sqrt(96) ~ 3 ulp of the
 *   sum of magnitudes). An emulation of such an implementation (double
 *   statistics, float32 elementwise work) stays below 7e-8 * unit beyond
 *   rtol 2e-6 on every LayerNorm case; 1e-6 * unit (16 ulp) leaves >= 4x
 *   margin. The same emulation with the mean rounded to float32 before
 *   centring misses the mean-1e4 case by 1.4e-3 * unit: large offsets are
 *   what this comparison is for, and it detects that mistake by 1000x.
 * Results that are exactly 0 in exact arithmetic (LayerNorm with C = 1:
 * dx and dweight, since x - mean = 0) cannot be compared relatively; they
 * must be 0 to 1e-6 of their unit, and y must equal the bias exactly
 * (x - mean is computed exactly, so y = 0 * w + b).
 */

#define TBT_NORM_RTOL32 1e-5
#define TBT_NORM_ATOL32_REL 2e-6
#define TBT_NORM_RTOL64 2e-6
#define TBT_NORM_ATOL64_REL 1e-6

/* The normalization block a shared check runs. */
enum tbt_norm_kind { TBT_K_LN, TBT_K_RMS, TBT_K_BN };
/* The shapes of the finite-difference checks (rows x columns). */
extern const size_t TBT_GRAD_ROWS[3], TBT_GRAD_COLS[4];
/* Natural units of a row-wise norm's dx, dweight and dbias. */
typedef struct tbt_norm_units {
    double dx, dw, db;
} tbt_norm_units;
/* As tbt_assert_untouched(), naming the buffer. */
void tbt_assert_untouched_what(const float *x, size_t n, const char *what);

void tbt_fill_spread(float *x, size_t n, size_t c, int along_rows, uint64_t seed);
double tbt_max_abs_f(const float *x, size_t n);
double tbt_max_abs_d(const double *x, size_t n);
/* got against a float32 reference want and a float64 one want64 (stored
 * as float), both with rtol and atol = atol_rel * max|want64| (an all-zero
 * reference fails: tbt_assert_close() refuses a degenerate one); the second
 * is labelled "<label>_vs_f64". Returns max |got - want64| / max|want64|,
 * the error the tests report. */
double tbt_assert_close_f32_f64(const char *label, const float *got, const float *want,
                                const float *want64, size_t n, double rtol, double atol_rel);
void tbt_assert_close_d(const char *label, const float *got, const double *want, size_t n,
                           double rtol, double atol);
void tbt_assert_all_finite(const char *what, const float *x, size_t n);
void tbt_rownorm_ref(const float *x, const float *dy, const float *w, const float *b,
                        size_t rows, size_t c, float eps, int centred, double *y, double *dx,
                        double *dw, double *db, double *unit_dx);
void tbt_bn_ref(const float *x, const float *dy, const uint8_t *valid, const float *w,
                   const float *b, const float *rm, const float *rv, size_t n, size_t c,
                   float eps, int batch, double *y, double *dx, double *dw, double *db,
                   double *mean_out, double *var_unb_out, double *unit_dx);
void tbt_col_units(const float *dy, const double *y_unaffine, size_t n, size_t c,
                      const uint8_t *valid, double *u_dw, double *u_db);
void tbt_check_norm_grad(enum tbt_norm_kind kind, size_t rows, size_t c, unsigned flags,
                            float eps, tb_mode mode, const uint8_t *valid, const char *tag);
void tbt_check_rownorm_vs_double(int centred, size_t rows, size_t c, const float *x,
                                    float eps, const char *tag);
float *tbt_offset_rows(size_t rows, size_t c, uint64_t seed);
uint8_t *tbt_ref_mask(const tbt_ref *ref, const char *name, size_t n);
void tbt_norm_check_vs(const tbt_ref *ref, const char *blk, const char *name, const float *got,
                     size_t n, double unit, int f32_ok);
void tbt_norm_check_zero_at_scale(const tbt_ref *ref, const char *blk, const char *name,
                                const float *got, size_t n, double unit);
tbt_norm_units tbt_norm_row_units(const float *x, const float *dy, const float *w, size_t rows, size_t c,
                       float eps, int centred);


/* Four parameters as test/oracle/gen_optim.py's and gen_grad.py's: p0
 * (17, 3), p1 (17), p2 (1, 17) trainable, p3 (4) frozen, in one list
 * ("p0".."p3"); values and gradients zero. */
typedef struct tbt_four {
    tb_param p[4];
    float *mem; /* every value and gradient, (value, grad) per parameter */
    tb_param_list list;
} tbt_four;
void tbt_four_init(tb_ctx *ctx, tbt_four *f);
void tbt_four_free(tbt_four *f);

/* TBT_ASAN: defined in the AddressSanitizer build (`make sanitize`), where
 * tests that run whole models or programs use smaller sizes (each says
 * which) because the instrumented code runs several times slower. */
#if defined(__SANITIZE_ADDRESS__)
#define TBT_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define TBT_ASAN 1
#endif
#endif

/* TBT_OUTCOMES: 1 in the uninstrumented build, 0 under the sanitizers.
 * Where a program's test asserts what long training achieves (an accuracy,
 * a loss ratio after hundreds of steps), that run and those assertions are
 * made in the uninstrumented pass, which make check runs for every kernel
 * family; the sanitizer pass runs the same program through the same code
 * (every part of it, both thread counts, bitwise equality between them,
 * every structural check) for fewer steps. The instrumentation finds
 * memory and undefined-behaviour errors, it does not change the arithmetic,
 * and a long run repeats the short run's code paths at several times the
 * cost (the pass took over 45 minutes on 2 cores with them). Each test
 * says which of its checks these are. */
#ifdef TBT_ASAN
#define TBT_OUTCOMES 0
#else
#define TBT_OUTCOMES 1
#endif

#endif /* TBT_TESTUTIL_H */
