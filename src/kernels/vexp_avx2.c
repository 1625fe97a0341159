/* The LSTM activations for AVX2 (compiled with -mavx2; called only on CPUs
 * that have it). See vexp.h. */
#include "vexp.h"

#include "tblocks/activation.h"

#if defined(__AVX2__)
#include <immintrin.h>
#include <math.h>

/* exp(x) for 8 lanes, as vexp_avx512.c's exp16: n = round(x log2 e),
 * r = x - n ln2 (two-part ln2), the Cephes degree-6 polynomial, times 2^n
 * built in the exponent bits (n in [-126, 128] after clamping; the lanes
 * below -87.34 give 0, above 88.72 +inf). Separate multiplies and adds. */
static __m256 exp8(__m256 x)
{
    const __m256 lo = _mm256_set1_ps(-87.33654f), hi = _mm256_set1_ps(88.72283f);
    const __m256 under = _mm256_cmp_ps(x, lo, _CMP_LT_OQ);
    const __m256 over = _mm256_cmp_ps(x, hi, _CMP_GT_OQ);
    x = _mm256_min_ps(hi, _mm256_max_ps(lo, x));
    const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                     _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_sub_ps(x, _mm256_mul_ps(n, _mm256_set1_ps(0.693359375f)));
    r = _mm256_sub_ps(r, _mm256_mul_ps(n, _mm256_set1_ps(-2.12194440e-4f)));
    __m256 p = _mm256_set1_ps(1.9875691500e-4f);
    p = _mm256_add_ps(_mm256_mul_ps(p, r), _mm256_set1_ps(1.3981999507e-3f));
    p = _mm256_add_ps(_mm256_mul_ps(p, r), _mm256_set1_ps(8.3334519073e-3f));
    p = _mm256_add_ps(_mm256_mul_ps(p, r), _mm256_set1_ps(4.1665795894e-2f));
    p = _mm256_add_ps(_mm256_mul_ps(p, r), _mm256_set1_ps(1.6666665459e-1f));
    p = _mm256_add_ps(_mm256_mul_ps(p, r), _mm256_set1_ps(5.0000001201e-1f));
    p = _mm256_add_ps(_mm256_add_ps(_mm256_mul_ps(_mm256_mul_ps(p, r), r), r),
                      _mm256_set1_ps(1.0f));
    /* 2^n as 2^n1 2^n2 (n1 = floor(n / 2), n2 = n - n1, both normal
     * powers: n is in [-126, 128] here, and 2^128 is not a float): the
     * first product is exact, so the result is rounded once, as
     * AVX-512's scalef rounds it (below 2^-126 the result is subnormal). */
    const __m256i ni = _mm256_cvtps_epi32(n);
    const __m256i n1 = _mm256_srai_epi32(ni, 1), n2 = _mm256_sub_epi32(ni, n1);
    const __m256i bias = _mm256_set1_epi32(127);
    const __m256 s1 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(n1, bias), 23));
    const __m256 s2 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(n2, bias), 23));
    __m256 y = _mm256_mul_ps(_mm256_mul_ps(p, s1), s2);
    y = _mm256_andnot_ps(under, y);
    return _mm256_blendv_ps(y, _mm256_set1_ps(INFINITY), over);
}

static __m256 sigmoid8(__m256 x)
{
    const __m256 one = _mm256_set1_ps(1.0f);
    return _mm256_div_ps(one, _mm256_add_ps(one, exp8(_mm256_sub_ps(_mm256_setzero_ps(), x))));
}

/* tanh: the odd Taylor polynomial of degree 11 for |x| < 0.25, else
 * sign(x) (1 - 2 / (1 + exp(2|x|))). */
static __m256 tanh8(__m256 x)
{
    const __m256 sign = _mm256_set1_ps(-0.0f), one = _mm256_set1_ps(1.0f);
    const __m256 ax = _mm256_andnot_ps(sign, x);
    const __m256 e = exp8(_mm256_add_ps(ax, ax));
    const __m256 big = _mm256_sub_ps(
        one, _mm256_div_ps(_mm256_set1_ps(2.0f), _mm256_add_ps(one, e)));
    const __m256 x2 = _mm256_mul_ps(x, x);
    __m256 q = _mm256_set1_ps(-0.0088632355f); /* -1382/155925 */
    q = _mm256_add_ps(_mm256_mul_ps(q, x2), _mm256_set1_ps(0.021869488f));  /* 62/2835 */
    q = _mm256_add_ps(_mm256_mul_ps(q, x2), _mm256_set1_ps(-0.053968254f)); /* -17/315 */
    q = _mm256_add_ps(_mm256_mul_ps(q, x2), _mm256_set1_ps(0.13333334f));   /* 2/15 */
    q = _mm256_add_ps(_mm256_mul_ps(q, x2), _mm256_set1_ps(-0.33333334f));  /* -1/3 */
    const __m256 small = _mm256_add_ps(x, _mm256_mul_ps(_mm256_mul_ps(q, x2), x));
    const __m256 use_small = _mm256_cmp_ps(ax, _mm256_set1_ps(0.25f), _CMP_LT_OQ);
    const __m256 signed_big = _mm256_or_ps(big, _mm256_and_ps(sign, x));
    /* NaN: the comparison is false, big is NaN: NaN out. */
    return _mm256_blendv_ps(signed_big, small, use_small);
}

static void lstm_cell_avx2(float *g, float *c, float *h, size_t H)
{
    size_t j = 0;
    for (; j + 8 <= H; j += 8) {
        const __m256 ig = sigmoid8(_mm256_loadu_ps(g + j));
        const __m256 fg = sigmoid8(_mm256_loadu_ps(g + H + j));
        const __m256 gg = tanh8(_mm256_loadu_ps(g + 2 * H + j));
        const __m256 og = sigmoid8(_mm256_loadu_ps(g + 3 * H + j));
        const __m256 cn = _mm256_add_ps(_mm256_mul_ps(fg, _mm256_loadu_ps(c + j)),
                                        _mm256_mul_ps(ig, gg));
        _mm256_storeu_ps(g + j, ig);
        _mm256_storeu_ps(g + H + j, fg);
        _mm256_storeu_ps(g + 2 * H + j, gg);
        _mm256_storeu_ps(g + 3 * H + j, og);
        _mm256_storeu_ps(c + j, cn);
        _mm256_storeu_ps(h + j, _mm256_mul_ps(og, tanh8(cn)));
    }
    /* The tail through the same vector code, one lane at a time (so that
     * an element's value does not depend on where H ends). */
    for (; j < H; j++) {
        float v[4] = {g[j], g[H + j], g[2 * H + j], g[3 * H + j]};
        float out[8];
        _mm256_storeu_ps(out, sigmoid8(_mm256_set1_ps(v[0])));
        const float ig = out[0];
        _mm256_storeu_ps(out, sigmoid8(_mm256_set1_ps(v[1])));
        const float fg = out[0];
        _mm256_storeu_ps(out, tanh8(_mm256_set1_ps(v[2])));
        const float gg = out[0];
        _mm256_storeu_ps(out, sigmoid8(_mm256_set1_ps(v[3])));
        const float og = out[0];
        const float cn = fg * c[j] + ig * gg;
        _mm256_storeu_ps(out, tanh8(_mm256_set1_ps(cn)));
        g[j] = ig, g[H + j] = fg, g[2 * H + j] = gg, g[3 * H + j] = og;
        c[j] = cn;
        h[j] = og * out[0];
    }
}

static void tanh_avx2(const float *x, float *y, size_t n)
{
    size_t j = 0;
    for (; j + 8 <= n; j += 8)
        _mm256_storeu_ps(y + j, tanh8(_mm256_loadu_ps(x + j)));
    for (; j < n; j++) {
        float out[8];
        _mm256_storeu_ps(out, tanh8(_mm256_set1_ps(x[j])));
        y[j] = out[0];
    }
}

/* ---- GELU: vexp_avx512.c's, 8 lanes ------------------------------------------ */

/* exp(-(h + l)), as vexp_avx512.c's exp_neg_hl16; 2^n built in the
 * exponent bits as exp8 does (h > 87.33654 gives 0, NaN stays NaN). */
static __m256 exp_neg_hl8(__m256 h, __m256 l)
{
    const __m256 lim = _mm256_set1_ps(87.33654f);
    const __m256 under = _mm256_cmp_ps(h, lim, _CMP_GT_OQ);
    const __m256 x = _mm256_sub_ps(_mm256_setzero_ps(), _mm256_min_ps(lim, h)); /* NaN kept */
    const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                     _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_sub_ps(x, _mm256_mul_ps(n, _mm256_set1_ps(0.693359375f)));
    r = _mm256_sub_ps(r, _mm256_mul_ps(n, _mm256_set1_ps(-2.12194440e-4f)));
    r = _mm256_sub_ps(r, l);
    __m256 p = _mm256_set1_ps(1.9875691500e-4f);
    p = _mm256_add_ps(_mm256_mul_ps(p, r), _mm256_set1_ps(1.3981999507e-3f));
    p = _mm256_add_ps(_mm256_mul_ps(p, r), _mm256_set1_ps(8.3334519073e-3f));
    p = _mm256_add_ps(_mm256_mul_ps(p, r), _mm256_set1_ps(4.1665795894e-2f));
    p = _mm256_add_ps(_mm256_mul_ps(p, r), _mm256_set1_ps(1.6666665459e-1f));
    p = _mm256_add_ps(_mm256_mul_ps(p, r), _mm256_set1_ps(5.0000001201e-1f));
    p = _mm256_add_ps(_mm256_add_ps(_mm256_mul_ps(_mm256_mul_ps(p, r), r), r),
                      _mm256_set1_ps(1.0f));
    __m256i e = _mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127));
    e = _mm256_max_epi32(e, _mm256_set1_epi32(1));
    const __m256 y = _mm256_mul_ps(p, _mm256_castsi256_ps(_mm256_slli_epi32(e, 23)));
    return _mm256_andnot_ps(under, y);
}

static void gelu_parts8(__m256 a, __m256 *e, __m256 *ts)
{
    const __m256 half = _mm256_set1_ps(0.5f);
    const __m256 ah = _mm256_and_ps(a, _mm256_castsi256_ps(_mm256_set1_epi32((int)0xfffff000u)));
    const __m256 h = _mm256_mul_ps(_mm256_mul_ps(ah, ah), half);
    const __m256 l = _mm256_mul_ps(_mm256_mul_ps(_mm256_sub_ps(a, ah), _mm256_add_ps(a, ah)), half);
    *e = exp_neg_hl8(h, l);
    const __m256 one = _mm256_set1_ps(1.0f);
    const __m256 t = _mm256_div_ps(one, _mm256_add_ps(one, _mm256_mul_ps(a, _mm256_set1_ps(0.35f))));
    const __m256 u = _mm256_sub_ps(t, half);
    __m256 p = _mm256_set1_ps(-0.0295609962195158f);
    p = _mm256_add_ps(_mm256_mul_ps(p, u), _mm256_set1_ps(0.027688782662153244f));
    p = _mm256_add_ps(_mm256_mul_ps(p, u), _mm256_set1_ps(0.04420861601829529f));
    p = _mm256_add_ps(_mm256_mul_ps(p, u), _mm256_set1_ps(-0.05619722604751587f));
    p = _mm256_add_ps(_mm256_mul_ps(p, u), _mm256_set1_ps(-0.08173924684524536f));
    p = _mm256_add_ps(_mm256_mul_ps(p, u), _mm256_set1_ps(0.08187411725521088f));
    p = _mm256_add_ps(_mm256_mul_ps(p, u), _mm256_set1_ps(0.28439566493034363f));
    p = _mm256_add_ps(_mm256_mul_ps(p, u), _mm256_set1_ps(0.34299156069755554f));
    p = _mm256_add_ps(_mm256_mul_ps(p, u), _mm256_set1_ps(0.2532442808151245f));
    *ts = _mm256_mul_ps(t, p);
}

static __m256 gelu_exact8(__m256 x)
{
    __m256 e, ts;
    gelu_parts8(_mm256_andnot_ps(_mm256_set1_ps(-0.0f), x), &e, &ts);
    const __m256 q = _mm256_mul_ps(e, ts);
    const __m256 neg = _mm256_cmp_ps(x, _mm256_setzero_ps(), _CMP_LT_OQ);
    return _mm256_mul_ps(x, _mm256_blendv_ps(_mm256_sub_ps(_mm256_set1_ps(1.0f), q), q, neg));
}

static __m256 gelu_exact_grad8(__m256 x)
{
    const __m256 a = _mm256_andnot_ps(_mm256_set1_ps(-0.0f), x);
    __m256 e, ts;
    gelu_parts8(a, &e, &ts);
    const __m256 d =
        _mm256_mul_ps(e, _mm256_sub_ps(ts, _mm256_mul_ps(a, _mm256_set1_ps(0.39894228040143267794f))));
    const __m256 neg = _mm256_cmp_ps(x, _mm256_setzero_ps(), _CMP_LT_OQ);
    return _mm256_blendv_ps(_mm256_sub_ps(_mm256_set1_ps(1.0f), d), d, neg);
}

static __m256 gelu_tanh_u8(__m256 x)
{
    const __m256 cx3 =
        _mm256_mul_ps(_mm256_mul_ps(_mm256_mul_ps(_mm256_set1_ps(0.044715f), x), x), x);
    return _mm256_mul_ps(_mm256_set1_ps(0.79788456080286535588f), _mm256_add_ps(x, cx3));
}

static __m256 gelu_tanh_grad8(__m256 x)
{
    const __m256 one = _mm256_set1_ps(1.0f);
    const __m256 u = gelu_tanh_u8(x);
    const __m256 s = sigmoid8(_mm256_add_ps(u, u));
    const __m256 du = _mm256_mul_ps(
        _mm256_set1_ps(0.79788456080286535588f),
        _mm256_add_ps(one, _mm256_mul_ps(_mm256_mul_ps(_mm256_set1_ps(3.0f * 0.044715f), x), x)));
    const __m256 xs = _mm256_mul_ps(_mm256_mul_ps(_mm256_set1_ps(2.0f), x), s);
    return _mm256_add_ps(s, _mm256_mul_ps(_mm256_mul_ps(xs, _mm256_sub_ps(one, s)), du));
}

static __m256 gelu_quick_grad8(__m256 x)
{
    const __m256 one = _mm256_set1_ps(1.0f), k = _mm256_set1_ps(1.702f);
    const __m256 s = sigmoid8(_mm256_mul_ps(k, x));
    const __m256 kxs = _mm256_mul_ps(_mm256_mul_ps(k, x), s);
    return _mm256_add_ps(s, _mm256_mul_ps(kxs, _mm256_sub_ps(one, s)));
}

static __m256 gelu8(int approx, __m256 x)
{
    if (approx == TB_GELU_EXACT)
        return gelu_exact8(x);
    if (approx == TB_GELU_TANH) {
        const __m256 u = gelu_tanh_u8(x);
        return _mm256_mul_ps(x, sigmoid8(_mm256_add_ps(u, u)));
    }
    return _mm256_mul_ps(x, sigmoid8(_mm256_mul_ps(_mm256_set1_ps(1.702f), x)));
}

static __m256 gelu_grad8(int approx, __m256 x)
{
    if (approx == TB_GELU_EXACT)
        return gelu_exact_grad8(x);
    if (approx == TB_GELU_TANH)
        return gelu_tanh_grad8(x);
    return gelu_quick_grad8(x);
}

/* Lanes j..j+7 with j + 8 > n: the first n - j loaded (the rest 0) and
 * stored, through the same vector code (a lane's value does not depend
 * on the others). */
static __m256i tail_mask8(size_t left)
{
    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    return _mm256_cmpgt_epi32(_mm256_set1_epi32((int)left), lane);
}

static void gelu_avx2(int approx, const float *x, float *y, size_t n)
{
    size_t j = 0;
    for (; j + 8 <= n; j += 8)
        _mm256_storeu_ps(y + j, gelu8(approx, _mm256_loadu_ps(x + j)));
    if (j < n) {
        const __m256i m = tail_mask8(n - j);
        _mm256_maskstore_ps(y + j, m, gelu8(approx, _mm256_maskload_ps(x + j, m)));
    }
}

static void gelu_backward_avx2(int approx, const float *x, const float *dy, float *dx, size_t n)
{
    size_t j = 0;
    for (; j + 8 <= n; j += 8)
        _mm256_storeu_ps(dx + j, _mm256_mul_ps(_mm256_loadu_ps(dy + j),
                                               gelu_grad8(approx, _mm256_loadu_ps(x + j))));
    if (j < n) {
        const __m256i m = tail_mask8(n - j);
        const __m256 g = gelu_grad8(approx, _mm256_maskload_ps(x + j, m));
        _mm256_maskstore_ps(dx + j, m, _mm256_mul_ps(_mm256_maskload_ps(dy + j, m), g));
    }
}

/* y[j] = exp(x[j] - sub) and their sum: 8 lanes (lane = j % 8, the tail's
 * lanes masked), then the fixed tree, as vexp_avx512.c's with 16: the
 * order depends on n only. */
static float exp_sub_sum_avx2(const float *x, float *y, size_t n, float sub)
{
    const __m256 s = _mm256_set1_ps(sub);
    __m256 acc = _mm256_setzero_ps();
    size_t j = 0;
    for (; j + 8 <= n; j += 8) {
        const __m256 e = exp8(_mm256_sub_ps(_mm256_loadu_ps(x + j), s));
        if (y)
            _mm256_storeu_ps(y + j, e);
        acc = _mm256_add_ps(acc, e);
    }
    if (j < n) {
        const __m256i m = tail_mask8(n - j);
        const __m256 e = exp8(_mm256_sub_ps(_mm256_maskload_ps(x + j, m), s));
        if (y)
            _mm256_maskstore_ps(y + j, m, e);
        acc = _mm256_add_ps(acc, _mm256_and_ps(_mm256_castsi256_ps(m), e));
    }
    float l[8];
    _mm256_storeu_ps(l, acc);
    return tb_lane_tree_sum(l, 8);
}

/* The largest of x[0..n): a NaN lane of x keeps the running maximum
 * (maxps returns its second operand when either is NaN), the tail's
 * masked lanes are -inf; -inf for n = 0. */
static float max_avx2(const float *x, size_t n)
{
    const __m256 ninf = _mm256_set1_ps(-INFINITY);
    __m256 m = ninf;
    size_t j = 0;
    for (; j + 8 <= n; j += 8)
        m = _mm256_max_ps(_mm256_loadu_ps(x + j), m);
    if (j < n) {
        const __m256i k = tail_mask8(n - j);
        const __m256 v = _mm256_blendv_ps(ninf, _mm256_maskload_ps(x + j, k),
                                          _mm256_castsi256_ps(k));
        m = _mm256_max_ps(v, m);
    }
    float l[8];
    _mm256_storeu_ps(l, m);
    float r = l[0];
    for (int i = 1; i < 8; i++)
        r = l[i] > r ? l[i] : r;
    return r;
}

const tb_vexp_ops tb_vexp_avx2 = {exp_sub_sum_avx2, max_avx2,  lstm_cell_avx2,
                                  tanh_avx2,        gelu_avx2, gelu_backward_avx2};
#else
const tb_vexp_ops tb_vexp_avx2 = {0, 0, 0, 0, 0, 0};
#endif
