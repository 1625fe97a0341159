/* Logits processing and token sampling (sample.h). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "../core/internal.h"

tb_sampler_config tb_sampler_default_config(void)
{
    tb_sampler_config c;
    memset(&c, 0, sizeof c);
    c.temperature = 1.0f;
    c.top_p = 1.0f;
    c.repetition_penalty = 1.0f;
    return c;
}

static tb_status check(tb_ctx *ctx, const char *fn, const tb_sampler_config *cfg,
                       const int32_t *history, size_t n_history, const float *logits,
                       size_t vocab)
{
    if (!cfg || !logits || (!history && n_history))
        return tb_fail(ctx, TB_ERR_NULL_ARG, fn, "cfg, logits and history must not be NULL");
    if (vocab == 0 || vocab > INT32_MAX)
        return tb_fail(ctx, TB_ERR_INVALID_ARG, fn, "vocab %zu must be in [1, 2^31)", vocab);
    if (!(cfg->temperature >= 0.0f && isfinite(cfg->temperature)))
        return tb_fail(ctx, TB_ERR_INVALID_ARG, fn, "temperature %g must be finite and >= 0",
                       (double)cfg->temperature);
    if (!(cfg->top_p > 0.0f && cfg->top_p <= 1.0f))
        return tb_fail(ctx, TB_ERR_INVALID_ARG, fn, "top_p %g must be in (0, 1]",
                       (double)cfg->top_p);
    if (!(cfg->repetition_penalty > 0.0f && isfinite(cfg->repetition_penalty)))
        return tb_fail(ctx, TB_ERR_INVALID_ARG, fn, "repetition_penalty %g must be > 0",
                       (double)cfg->repetition_penalty);
    for (size_t i = 0; i < n_history; i++)
        if (history[i] < 0 || (size_t)history[i] >= vocab)
            return tb_fail(ctx, TB_ERR_INVALID_ARG, fn, "history[%zu] = %ld is outside [0, %zu)",
                           i, (long)history[i], vocab);
    return TB_OK;
}

/* Index sort by value, ascending; equal values by index (deterministic). */
typedef struct ranked {
    float v;
    int32_t i;
} ranked;

static int cmp_ranked(const void *a, const void *b)
{
    const ranked *x = a, *y = b;
    if (x->v != y->v)
        return x->v < y->v ? -1 : 1;
    return (x->i > y->i) - (x->i < y->i);
}

/* Processing rewrites logits while the history is read; drawing also
 * advances rng (unless greedy) and writes token (both NULL when only
 * processing). */
static tb_status sample_alias(tb_ctx *ctx, const char *fn, const tb_sampler_config *cfg,
                              const int32_t *history, size_t n_history, const float *logits,
                              size_t vocab, const tb_rng *rng, const int32_t *token)
{
    const tb_span in[] = {tb_span_array("history", history, n_history, sizeof *history)};
    const tb_span out[] = {
        tb_span_floats("logits", logits, vocab),
        tb_span_bytes("rng", cfg->temperature != 0.0f ? rng : NULL, sizeof *rng),
        tb_span_bytes("token", token, sizeof *token)};
    return tb_check_alias(ctx, fn, out, 3, in, 1);
}

tb_status tb_logits_process(tb_ctx *ctx, const tb_sampler_config *cfg, const int32_t *history,
                            size_t n_history, float *logits, size_t vocab)
{
    const char *fn = __func__;
    tb_status s = check(ctx, fn, cfg, history, n_history, logits, vocab);
    if (s == TB_OK)
        s = sample_alias(ctx, fn, cfg, history, n_history, logits, vocab, NULL, NULL);
    if (s != TB_OK)
        return s;
    const tb_sampler_config options = *cfg; /* read to the end: a copy cannot be written over */
    cfg = &options;
    /* 1. Repetition penalty, once per distinct token of the history (a
     * vocabulary-sized "seen" map keeps long histories linear). */
    if (cfg->repetition_penalty != 1.0f && n_history) {
        const float r = cfg->repetition_penalty;
        void *seen_mem;
        if ((s = tb_alloc(ctx, fn, vocab, &seen_mem)) != TB_OK)
            return s;
        unsigned char *seen = seen_mem;
        memset(seen, 0, vocab);
        for (size_t i = 0; i < n_history; i++) {
            const int32_t t = history[i];
            if (!seen[t])
                logits[t] = logits[t] < 0.0f ? logits[t] * r : logits[t] / r;
            seen[t] = 1;
        }
        tb_free_with(&ctx->allocator, seen_mem);
    }
    /* 2. No-repeat n-gram: the n-1 last tokens were seen before, followed
     * by some token: that token would repeat the n-gram. */
    const size_t n = cfg->no_repeat_ngram;
    if (n >= 1 && n_history + 1 >= n) {
        const int32_t *tail = history + n_history - (n - 1);
        for (size_t start = 0; start + n <= n_history; start++)
            if (n == 1 || memcmp(history + start, tail, (n - 1) * sizeof(int32_t)) == 0)
                logits[history[start + n - 1]] = -INFINITY;
    }
    if (cfg->temperature == 0.0f)
        return TB_OK; /* greedy: the warpers do not change the argmax */
    /* 3. Temperature. */
    if (cfg->temperature != 1.0f)
        for (size_t v = 0; v < vocab; v++)
            logits[v] = logits[v] / cfg->temperature;
    const int need_sort = (cfg->top_k > 0 && cfg->top_k < vocab) || cfg->top_p < 1.0f;
    if (!need_sort)
        return TB_OK;
    for (size_t v = 0; v < vocab; v++) /* sorting needs a total order */
        if (isnan(logits[v]))
            return tb_fail(ctx, TB_ERR_NON_FINITE, fn, "logit %zu is NaN", v);
    size_t bytes;
    if (!tb_mul_size(vocab, sizeof(ranked), &bytes))
        return tb_fail(ctx, TB_ERR_OVERFLOW, fn, "vocab too large");
    void *mem;
    if ((s = tb_alloc(ctx, fn, bytes, &mem)) != TB_OK)
        return s;
    ranked *r = mem;
    for (size_t v = 0; v < vocab; v++)
        r[v] = (ranked){logits[v], (int32_t)v};
    qsort(r, vocab, sizeof *r, cmp_ranked);
    /* 4. Top-k: below the k-th largest value goes (ties with it stay). */
    if (cfg->top_k > 0 && cfg->top_k < vocab) {
        const float kth = r[vocab - cfg->top_k].v;
        for (size_t j = 0; j < vocab; j++)
            if (r[j].v < kth) {
                logits[r[j].i] = -INFINITY;
                r[j].v = -INFINITY;
            }
    }
    /* 5. Top-p over the (ascending) softmax: drop while the cumulative
     * probability from the smallest stays <= 1 - p; keep the largest. */
    if (cfg->top_p < 1.0f) {
        const float mx = r[vocab - 1].v;
        double z = 0.0;
        for (size_t j = 0; j < vocab; j++)
            z += r[j].v == -INFINITY ? 0.0 : exp((double)r[j].v - (double)mx);
        double cum = 0.0;
        const double limit = 1.0 - (double)cfg->top_p;
        for (size_t j = 0; j + 1 < vocab; j++) {
            cum += (r[j].v == -INFINITY ? 0.0 : exp((double)r[j].v - (double)mx)) / z;
            if (cum <= limit)
                logits[r[j].i] = -INFINITY;
            else
                break;
        }
    }
    tb_free_with(&ctx->allocator, mem);
    return TB_OK;
}

tb_status tb_sample_token(tb_ctx *ctx, const tb_sampler_config *cfg, const int32_t *history,
                          size_t n_history, float *logits, size_t vocab, tb_rng *rng,
                          int32_t *token)
{
    const char *fn = __func__;
    if (!token || (!rng && cfg && cfg->temperature != 0.0f))
        return tb_fail(ctx, TB_ERR_NULL_ARG, fn, "token and rng must not be NULL");
    tb_status s = check(ctx, fn, cfg, history, n_history, logits, vocab);
    if (s == TB_OK)
        s = sample_alias(ctx, fn, cfg, history, n_history, logits, vocab, rng, token);
    if (s != TB_OK)
        return s;
    const tb_sampler_config options = *cfg; /* read to the end: a copy cannot be written over */
    cfg = &options;
    if ((s = tb_logits_process(ctx, cfg, history, n_history, logits, vocab)) != TB_OK)
        return s;
    size_t best = 0;
    for (size_t v = 0; v < vocab; v++) {
        if (isnan(logits[v]))
            return tb_fail(ctx, TB_ERR_NON_FINITE, fn, "logit %zu is NaN", v);
        if (logits[v] > logits[best])
            best = v;
    }
    if (logits[best] == -INFINITY)
        return tb_fail(ctx, TB_ERR_NON_FINITE, fn, "every token is excluded (all logits -inf)");
    /* An infinite logit (a tiny temperature overflowing) takes all the
     * probability: the first one is the draw. */
    if (cfg->temperature == 0.0f || logits[best] == INFINITY) {
        *token = (int32_t)best;
        return TB_OK;
    }
    const double mx = logits[best];
    double z = 0.0;
    for (size_t v = 0; v < vocab; v++)
        z += exp((double)logits[v] - mx);
    const double u = (double)tb_rng_uniform(rng) * z;
    double cum = 0.0;
    size_t pick = best;
    for (size_t v = 0; v < vocab; v++) {
        const double p = exp((double)logits[v] - mx);
        if (p == 0.0)
            continue;
        cum += p;
        pick = v;
        if (u < cum)
            break;
    }
    *token = (int32_t)pick;
    return TB_OK;
}
