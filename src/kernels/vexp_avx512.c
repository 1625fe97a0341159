/* exp_sub_sum for AVX-512 (compiled with -mavx512f; called only on CPUs
 * that have it). See vexp.h. */
#include "vexp.h"

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

static float exp_sub_sum_avx512(float *x, size_t n, float sub)
{
    const __m512 s = _mm512_set1_ps(sub);
    __m512 acc = _mm512_setzero_ps();
    size_t j = 0;
    for (; j + 16 <= n; j += 16) {
        const __m512 y = exp16(_mm512_sub_ps(_mm512_loadu_ps(x + j), s));
        _mm512_storeu_ps(x + j, y);
        acc = _mm512_add_ps(acc, y);
    }
    if (j < n) {
        const __mmask16 m = (__mmask16)((1u << (n - j)) - 1u);
        const __m512 y = exp16(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, x + j), s));
        _mm512_mask_storeu_ps(x + j, m, y);
        acc = _mm512_add_ps(acc, _mm512_maskz_mov_ps(m, y));
    }
    /* Fixed tree: halves, then quarters, ... */
    float l[16];
    _mm512_storeu_ps(l, acc);
    for (int w = 8; w >= 1; w /= 2)
        for (int i = 0; i < w; i++)
            l[i] += l[i + w];
    return l[0];
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

const tb_vexp_ops tb_vexp_avx512 = {exp_sub_sum_avx512, max_avx512, lstm_cell_avx512,
                                    tanh_avx512};
#else
const tb_vexp_ops tb_vexp_avx512 = {0, 0, 0, 0};
#endif
