/* exp_sub_sum for AVX-512 (compiled with -mavx512f; called only on CPUs
 * that have it). See vexp.h. */
#include "vexp.h"

#include "tblocks/activation.h"

#if defined(__AVX512F__)
#include <immintrin.h>
#include <math.h>

/* exp(x) for 16 lanes: n = round(x log2 e), r = x - n ln2 (ln2 split in a
 * high part exact in float and a low part), exp(r) by a degree-6
 * polynomial, times 2^n by scalef. Lanes below -87.34 (exp underflows;
 * -inf included) give 0, lanes above 88.72 +inf. Multiplies and adds are separate (no FMA), as
 * everywhere in this library's kernels. */
static __m512 exp16(__m512 x)
{
    const __m512 lo = _mm512_set1_ps(-87.33654f), hi = _mm512_set1_ps(88.72283f);
    const __mmask16 under = _mm512_cmp_ps_mask(x, lo, _CMP_LT_OQ);
    const __mmask16 over = _mm512_cmp_ps_mask(x, hi, _CMP_GT_OQ);
    x = _mm512_min_ps(hi, x); /* NaN operands pass through (second operand) */
    const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                          _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_sub_ps(x, _mm512_mul_ps(n, _mm512_set1_ps(0.693359375f)));
    r = _mm512_sub_ps(r, _mm512_mul_ps(n, _mm512_set1_ps(-2.12194440e-4f)));
    /* Cephes expf coefficients. */
    __m512 p = _mm512_set1_ps(1.9875691500e-4f);
    p = _mm512_add_ps(_mm512_mul_ps(p, r), _mm512_set1_ps(1.3981999507e-3f));
    p = _mm512_add_ps(_mm512_mul_ps(p, r), _mm512_set1_ps(8.3334519073e-3f));
    p = _mm512_add_ps(_mm512_mul_ps(p, r), _mm512_set1_ps(4.1665795894e-2f));
    p = _mm512_add_ps(_mm512_mul_ps(p, r), _mm512_set1_ps(1.6666665459e-1f));
    p = _mm512_add_ps(_mm512_mul_ps(p, r), _mm512_set1_ps(5.0000001201e-1f));
    p = _mm512_add_ps(_mm512_add_ps(_mm512_mul_ps(_mm512_mul_ps(p, r), r), r),
                      _mm512_set1_ps(1.0f));
    const __m512 y = _mm512_scalef_ps(p, n);
    return _mm512_mask_mov_ps(_mm512_maskz_mov_ps((__mmask16)~under, y), over,
                              _mm512_set1_ps(INFINITY));
}

static float exp_sub_sum_avx512(const float *x, float *y, size_t n, float sub)
{
    const __m512 s = _mm512_set1_ps(sub);
    __m512 acc = _mm512_setzero_ps();
    size_t j = 0;
    for (; j + 16 <= n; j += 16) {
        const __m512 e = exp16(_mm512_sub_ps(_mm512_loadu_ps(x + j), s));
        if (y)
            _mm512_storeu_ps(y + j, e);
        acc = _mm512_add_ps(acc, e);
    }
    if (j < n) {
        const __mmask16 m = (__mmask16)((1u << (n - j)) - 1u);
        const __m512 e = exp16(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, x + j), s));
        if (y)
            _mm512_mask_storeu_ps(y + j, m, e);
        acc = _mm512_add_ps(acc, _mm512_maskz_mov_ps(m, e));
    }
    float l[16];
    _mm512_storeu_ps(l, acc);
    return tb_lane_tree_sum(l, 16);
}

static float max_avx512(const float *x, size_t n)
{
    __m512 m = _mm512_set1_ps(-INFINITY);
    size_t j = 0;
    for (; j + 16 <= n; j += 16)
        m = _mm512_max_ps(_mm512_loadu_ps(x + j), m); /* a NaN x lane keeps m */
    if (j < n) {
        const __mmask16 k = (__mmask16)((1u << (n - j)) - 1u);
        m = _mm512_mask_max_ps(m, k, _mm512_maskz_loadu_ps(k, x + j), m);
    }
    return _mm512_reduce_max_ps(m);
}

static __m512 sigmoid16(__m512 x)
{
    const __m512 one = _mm512_set1_ps(1.0f);
    return _mm512_div_ps(one, _mm512_add_ps(one, exp16(_mm512_sub_ps(_mm512_setzero_ps(), x))));
}

/* tanh as vexp_avx2.c's: the odd Taylor polynomial of degree 11 for
 * |x| < 0.25, else sign(x) (1 - 2 / (1 + exp(2|x|))). */
static __m512 tanh16(__m512 x)
{
    const __m512 one = _mm512_set1_ps(1.0f);
    const __m512 ax = _mm512_abs_ps(x);
    const __m512 e = exp16(_mm512_add_ps(ax, ax));
    const __m512 big =
        _mm512_sub_ps(one, _mm512_div_ps(_mm512_set1_ps(2.0f), _mm512_add_ps(one, e)));
    const __m512 x2 = _mm512_mul_ps(x, x);
    __m512 q = _mm512_set1_ps(-0.0088632355f);
    q = _mm512_add_ps(_mm512_mul_ps(q, x2), _mm512_set1_ps(0.021869488f));
    q = _mm512_add_ps(_mm512_mul_ps(q, x2), _mm512_set1_ps(-0.053968254f));
    q = _mm512_add_ps(_mm512_mul_ps(q, x2), _mm512_set1_ps(0.13333334f));
    q = _mm512_add_ps(_mm512_mul_ps(q, x2), _mm512_set1_ps(-0.33333334f));
    const __m512 small = _mm512_add_ps(x, _mm512_mul_ps(_mm512_mul_ps(q, x2), x));
    const __mmask16 use_small = _mm512_cmp_ps_mask(ax, _mm512_set1_ps(0.25f), _CMP_LT_OQ);
    const __m512i sign = _mm512_and_si512(_mm512_castps_si512(x), _mm512_set1_epi32((int)0x80000000u));
    const __m512 signed_big = _mm512_castsi512_ps(_mm512_or_si512(_mm512_castps_si512(big), sign));
    return _mm512_mask_mov_ps(signed_big, use_small, small);
}

static void lstm_cell_avx512(float *g, float *c, float *h, size_t H)
{
    for (size_t j = 0; j < H; j += 16) {
        const __mmask16 m = H - j >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (H - j)) - 1u);
        const __m512 ig = sigmoid16(_mm512_maskz_loadu_ps(m, g + j));
        const __m512 fg = sigmoid16(_mm512_maskz_loadu_ps(m, g + H + j));
        const __m512 gg = tanh16(_mm512_maskz_loadu_ps(m, g + 2 * H + j));
        const __m512 og = sigmoid16(_mm512_maskz_loadu_ps(m, g + 3 * H + j));
        const __m512 cn = _mm512_add_ps(_mm512_mul_ps(fg, _mm512_maskz_loadu_ps(m, c + j)),
                                        _mm512_mul_ps(ig, gg));
        _mm512_mask_storeu_ps(g + j, m, ig);
        _mm512_mask_storeu_ps(g + H + j, m, fg);
        _mm512_mask_storeu_ps(g + 2 * H + j, m, gg);
        _mm512_mask_storeu_ps(g + 3 * H + j, m, og);
        _mm512_mask_storeu_ps(c + j, m, cn);
        _mm512_mask_storeu_ps(h + j, m, _mm512_mul_ps(og, tanh16(cn)));
    }
}

static void tanh_avx512(const float *x, float *y, size_t n)
{
    for (size_t j = 0; j < n; j += 16) {
        const __mmask16 m = n - j >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (n - j)) - 1u);
        _mm512_mask_storeu_ps(y + j, m, tanh16(_mm512_maskz_loadu_ps(m, x + j)));
    }
}

/* ---- GELU -------------------------------------------------------------- */

/* exp(-(h + l)) for h >= 0 exact in float with few enough bits that
 * h - n ln2_hi is exact (see gelu_parts16), |l| << h: exp16's reduction
 * and polynomial with l taken off the reduced argument. Lanes with
 * h > 87.33654 give 0; NaN stays NaN. */
static __m512 exp_neg_hl16(__m512 h, __m512 l)
{
    const __mmask16 under = _mm512_cmp_ps_mask(h, _mm512_set1_ps(87.33654f), _CMP_GT_OQ);
    const __m512 x = _mm512_sub_ps(_mm512_setzero_ps(), h);
    const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                          _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_sub_ps(x, _mm512_mul_ps(n, _mm512_set1_ps(0.693359375f)));
    r = _mm512_sub_ps(r, _mm512_mul_ps(n, _mm512_set1_ps(-2.12194440e-4f)));
    r = _mm512_sub_ps(r, l);
    __m512 p = _mm512_set1_ps(1.9875691500e-4f);
    p = _mm512_add_ps(_mm512_mul_ps(p, r), _mm512_set1_ps(1.3981999507e-3f));
    p = _mm512_add_ps(_mm512_mul_ps(p, r), _mm512_set1_ps(8.3334519073e-3f));
    p = _mm512_add_ps(_mm512_mul_ps(p, r), _mm512_set1_ps(4.1665795894e-2f));
    p = _mm512_add_ps(_mm512_mul_ps(p, r), _mm512_set1_ps(1.6666665459e-1f));
    p = _mm512_add_ps(_mm512_mul_ps(p, r), _mm512_set1_ps(5.0000001201e-1f));
    p = _mm512_add_ps(_mm512_add_ps(_mm512_mul_ps(_mm512_mul_ps(p, r), r), r),
                      _mm512_set1_ps(1.0f));
    return _mm512_maskz_mov_ps((__mmask16)~under, _mm512_scalef_ps(p, n));
}

/* For a = |x|: *e = exp(-a^2 / 2) and *ts = t S(t - 1/2), t = 1 / (1 +
 * 0.35 a), so that Phi(-a) = e ts (vexp.h). a^2 / 2 = h + l with h =
 * ah^2 / 2, ah = a with its 12 low mantissa bits cleared (ah^2 is exact,
 * and so is h - n ln2_hi), and l = (a - ah) (a + ah) / 2. */
static void gelu_parts16(__m512 a, __m512 *e, __m512 *ts)
{
    const __m512 half = _mm512_set1_ps(0.5f);
    const __m512 ah = _mm512_castsi512_ps(
        _mm512_and_si512(_mm512_castps_si512(a), _mm512_set1_epi32((int)0xfffff000u)));
    const __m512 h = _mm512_mul_ps(_mm512_mul_ps(ah, ah), half);
    const __m512 l = _mm512_mul_ps(_mm512_mul_ps(_mm512_sub_ps(a, ah), _mm512_add_ps(a, ah)), half);
    *e = exp_neg_hl16(h, l);
    const __m512 one = _mm512_set1_ps(1.0f);
    const __m512 t = _mm512_div_ps(one, _mm512_add_ps(one, _mm512_mul_ps(a, _mm512_set1_ps(0.35f))));
    const __m512 u = _mm512_sub_ps(t, half);
    __m512 p = _mm512_set1_ps(-0.0295609962195158f);
    p = _mm512_add_ps(_mm512_mul_ps(p, u), _mm512_set1_ps(0.027688782662153244f));
    p = _mm512_add_ps(_mm512_mul_ps(p, u), _mm512_set1_ps(0.04420861601829529f));
    p = _mm512_add_ps(_mm512_mul_ps(p, u), _mm512_set1_ps(-0.05619722604751587f));
    p = _mm512_add_ps(_mm512_mul_ps(p, u), _mm512_set1_ps(-0.08173924684524536f));
    p = _mm512_add_ps(_mm512_mul_ps(p, u), _mm512_set1_ps(0.08187411725521088f));
    p = _mm512_add_ps(_mm512_mul_ps(p, u), _mm512_set1_ps(0.28439566493034363f));
    p = _mm512_add_ps(_mm512_mul_ps(p, u), _mm512_set1_ps(0.34299156069755554f));
    p = _mm512_add_ps(_mm512_mul_ps(p, u), _mm512_set1_ps(0.2532442808151245f));
    *ts = _mm512_mul_ps(t, p);
}

/* Phi(x) = Phi(-a) for x < 0, 1 - Phi(-a) otherwise: x Phi(x). */
static __m512 gelu_exact16(__m512 x)
{
    __m512 e, ts;
    gelu_parts16(_mm512_abs_ps(x), &e, &ts);
    const __m512 q = _mm512_mul_ps(e, ts);
    const __mmask16 neg = _mm512_cmp_ps_mask(x, _mm512_setzero_ps(), _CMP_LT_OQ);
    const __m512 cdf = _mm512_mask_mov_ps(_mm512_sub_ps(_mm512_set1_ps(1.0f), q), neg, q);
    return _mm512_mul_ps(x, cdf);
}

/* gelu'(x) = Phi(x) + x phi(x): with d = Phi(-a) - a phi(a) = e (ts - a /
 * sqrt(2 pi)), d for x < 0 and 1 - d otherwise. */
static __m512 gelu_exact_grad16(__m512 x)
{
    const __m512 a = _mm512_abs_ps(x);
    __m512 e, ts;
    gelu_parts16(a, &e, &ts);
    const __m512 d =
        _mm512_mul_ps(e, _mm512_sub_ps(ts, _mm512_mul_ps(a, _mm512_set1_ps(0.39894228040143267794f))));
    const __mmask16 neg = _mm512_cmp_ps_mask(x, _mm512_setzero_ps(), _CMP_LT_OQ);
    return _mm512_mask_mov_ps(_mm512_sub_ps(_mm512_set1_ps(1.0f), d), neg, d);
}

/* The tanh form as vexp.c's: u = sqrt(2/pi) (x + 0.044715 x^3), s =
 * sigmoid(2u); x s and s + 2 x s (1 - s) du/dx. */
static __m512 gelu_tanh_u16(__m512 x)
{
    const __m512 cx3 =
        _mm512_mul_ps(_mm512_mul_ps(_mm512_mul_ps(_mm512_set1_ps(0.044715f), x), x), x);
    return _mm512_mul_ps(_mm512_set1_ps(0.79788456080286535588f), _mm512_add_ps(x, cx3));
}

static __m512 gelu_tanh_grad16(__m512 x)
{
    const __m512 one = _mm512_set1_ps(1.0f);
    const __m512 u = gelu_tanh_u16(x);
    const __m512 s = sigmoid16(_mm512_add_ps(u, u));
    const __m512 du = _mm512_mul_ps(
        _mm512_set1_ps(0.79788456080286535588f),
        _mm512_add_ps(one, _mm512_mul_ps(_mm512_mul_ps(_mm512_set1_ps(3.0f * 0.044715f), x), x)));
    const __m512 xs = _mm512_mul_ps(_mm512_mul_ps(_mm512_set1_ps(2.0f), x), s);
    return _mm512_add_ps(s, _mm512_mul_ps(_mm512_mul_ps(xs, _mm512_sub_ps(one, s)), du));
}

/* The quick form: x s(1.702 x) and s + 1.702 x s (1 - s). */
static __m512 gelu_quick_grad16(__m512 x)
{
    const __m512 one = _mm512_set1_ps(1.0f), k = _mm512_set1_ps(1.702f);
    const __m512 s = sigmoid16(_mm512_mul_ps(k, x));
    const __m512 kxs = _mm512_mul_ps(_mm512_mul_ps(k, x), s);
    return _mm512_add_ps(s, _mm512_mul_ps(kxs, _mm512_sub_ps(one, s)));
}

static __m512 gelu16(int approx, __m512 x)
{
    if (approx == TB_GELU_EXACT)
        return gelu_exact16(x);
    if (approx == TB_GELU_TANH) {
        const __m512 u = gelu_tanh_u16(x);
        return _mm512_mul_ps(x, sigmoid16(_mm512_add_ps(u, u)));
    }
    return _mm512_mul_ps(x, sigmoid16(_mm512_mul_ps(_mm512_set1_ps(1.702f), x)));
}

static __m512 gelu_grad16(int approx, __m512 x)
{
    if (approx == TB_GELU_EXACT)
        return gelu_exact_grad16(x);
    if (approx == TB_GELU_TANH)
        return gelu_tanh_grad16(x);
    return gelu_quick_grad16(x);
}

static void gelu_avx512(int approx, const float *x, float *y, size_t n)
{
    for (size_t j = 0; j < n; j += 16) {
        const __mmask16 m = n - j >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (n - j)) - 1u);
        _mm512_mask_storeu_ps(y + j, m, gelu16(approx, _mm512_maskz_loadu_ps(m, x + j)));
    }
}

static void gelu_backward_avx512(int approx, const float *x, const float *dy, float *dx,
                                 size_t n)
{
    for (size_t j = 0; j < n; j += 16) {
        const __mmask16 m = n - j >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (n - j)) - 1u);
        const __m512 g = gelu_grad16(approx, _mm512_maskz_loadu_ps(m, x + j));
        _mm512_mask_storeu_ps(dx + j, m, _mm512_mul_ps(_mm512_maskz_loadu_ps(m, dy + j), g));
    }
}

const tb_vexp_ops tb_vexp_avx512 = {exp_sub_sum_avx512, max_avx512,  lstm_cell_avx512,
                                    tanh_avx512,        gelu_avx512, gelu_backward_avx512};
#else
const tb_vexp_ops tb_vexp_avx512 = {0, 0, 0, 0, 0, 0};
#endif
