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

const tb_vexp_ops tb_vexp_avx512 = {exp_sub_sum_avx512, max_avx512};
#else
const tb_vexp_ops tb_vexp_avx512 = {0, 0};
#endif
