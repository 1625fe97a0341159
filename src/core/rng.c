/*
 * Counter-based random numbers: number i of a stream is
 * mix64(key + (i + 1) * golden), the SplitMix64 generator written as a pure
 * function of the position, so parallel fills are thread-count independent.
 */
#include <math.h>

#include "internal.h"

#define TB_GOLDEN 0x9E3779B97F4A7C15ULL

static uint64_t mix64(uint64_t z)
{
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

void tb_rng_init(tb_rng *rng, uint64_t seed)
{
    if (!rng)
        return;
    /* Hash the seed so nearby seeds give unrelated streams. */
    rng->key = mix64(seed ^ 0x6A09E667F3BCC909ULL);
    rng->counter = 0;
}

uint64_t tb_rng_bits_at(uint64_t key, uint64_t index)
{
    return mix64(key + (index + 1) * TB_GOLDEN);
}

uint64_t tb_rng_next(tb_rng *rng)
{
    return tb_rng_bits_at(rng->key, rng->counter++);
}


/* Box-Muller on the two 32-bit halves; u1 in (0, 1] so log is finite. */
static float normal_from_bits(uint64_t bits)
{
    double u1 = ((double)(bits >> 32) + 1.0) * (1.0 / 4294967296.0);
    double u2 = (double)(bits & 0xFFFFFFFFULL) * (1.0 / 4294967296.0);
    return (float)(sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2));
}

float tb_rng_uniform(tb_rng *rng)
{
    float u = tb_rng_uniform_at(rng->key, rng->counter);
    rng->counter++;
    return u;
}

float tb_rng_normal(tb_rng *rng)
{
    return normal_from_bits(tb_rng_next(rng));
}

/* x is written before the stream is advanced: they must not share memory. */
static tb_status fill_alias(tb_ctx *ctx, const char *fn, const tb_rng *rng, const float *x,
                            size_t n)
{
    const tb_span out[] = {tb_span_floats("x", x, n), tb_span_bytes("rng", rng, sizeof *rng)};
    return tb_check_alias(ctx, fn, out, 2, NULL, 0);
}

tb_status tb_rng_fill_uniform(tb_ctx *ctx, tb_rng *rng, float *x, size_t n, float lo, float hi)
{
    if (!rng || (!x && n))
        return tb_fail(ctx, TB_ERR_NULL_ARG, __func__, "rng and x must not be NULL");
    if (!isfinite(lo) || !isfinite(hi) || hi < lo)
        return tb_fail(ctx, TB_ERR_INVALID_ARG, __func__,
                       "bounds [%g, %g) must be finite with lo <= hi", (double)lo, (double)hi);
    tb_status s = fill_alias(ctx, __func__, rng, x, n);
    if (s != TB_OK)
        return s;
    const uint64_t key = rng->key, base = rng->counter;
    const float span = hi - lo;
#pragma omp parallel for num_threads(tb_threads_for(ctx, (double)n)) schedule(static)
    for (size_t i = 0; i < n; i++) {
        float v = lo + span * tb_rng_uniform_at(key, base + i);
        x[i] = v < hi ? v : lo; /* rounding could reach hi; keep [lo, hi) */
    }
    rng->counter += n;
    return TB_OK;
}

tb_status tb_rng_fill_normal(tb_ctx *ctx, tb_rng *rng, float *x, size_t n, float mean,
                             float std)
{
    if (!rng || (!x && n))
        return tb_fail(ctx, TB_ERR_NULL_ARG, __func__, "rng and x must not be NULL");
    if (!isfinite(mean) || !isfinite(std) || std < 0)
        return tb_fail(ctx, TB_ERR_INVALID_ARG, __func__,
                       "mean %g and std %g must be finite, std >= 0", (double)mean, (double)std);
    tb_status s = fill_alias(ctx, __func__, rng, x, n);
    if (s != TB_OK)
        return s;
    const uint64_t key = rng->key, base = rng->counter;
#pragma omp parallel for num_threads(tb_threads_for(ctx, (double)n)) schedule(static)
    for (size_t i = 0; i < n; i++)
        x[i] = mean + std * normal_from_bits(tb_rng_bits_at(key, base + i));
    rng->counter += n;
    return TB_OK;
}
