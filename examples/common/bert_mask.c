/* BERT's masking (bert_mask.h). */
#include "bert_mask.h"

#include <string.h>

bert_mask_config bert_mask_default_config(void)
{
    bert_mask_config c;
    memset(&c, 0, sizeof c);
    c.select_p = 0.15f, c.mask_p = 0.8f, c.random_p = 0.1f;
    return c;
}

/* A uniform double in [0, 1) from 53 bits. */
static double unit(uint64_t bits)
{
    return (double)(bits >> 11) * (1.0 / 9007199254740992.0);
}

tb_status bert_mask_tokens(tb_ctx *ctx, const bert_mask_config *c, tb_rng *rng, int32_t *ids,
                           int32_t *labels, size_t n, size_t *n_selected)
{
    if (!c || !rng || (n && (!ids || !labels)))
        return tb_ctx_set_error(ctx, TB_ERR_NULL_ARG, "bert_mask: NULL argument");
    if (!c->special || !c->vocab || c->mask_id < 0 || (size_t)c->mask_id >= c->vocab ||
        c->rand_lo < 0 || c->rand_hi <= c->rand_lo || (size_t)c->rand_hi > c->vocab ||
        !(c->select_p >= 0.0f && c->select_p <= 1.0f) || !(c->mask_p >= 0.0f) ||
        !(c->random_p >= 0.0f) || !(c->mask_p + c->random_p <= 1.0f))
        return tb_ctx_set_error(ctx, TB_ERR_INVALID_ARG, "bert_mask: bad configuration");
    if (n > (UINT64_MAX - rng->counter) / 3)
        return tb_ctx_set_error(ctx, TB_ERR_OVERFLOW, "bert_mask: stream exhausted");
    for (size_t i = 0; i < n; i++)
        if (ids[i] < 0 || (size_t)ids[i] >= c->vocab)
            return tb_ctx_set_error(ctx, TB_ERR_INVALID_ARG,
                                    "bert_mask: id %ld at %zu outside the vocabulary of %zu",
                                    (long)ids[i], i, c->vocab);
    const uint64_t key = rng->key, base = rng->counter;
    const uint64_t span = (uint64_t)(c->rand_hi - c->rand_lo);
    size_t sel = 0;
    for (size_t i = 0; i < n; i++) {
        const uint64_t at = base + 3 * (uint64_t)i;
        labels[i] = TB_IGNORE_INDEX;
        if (c->special[ids[i]] || unit(tb_rng_bits_at(key, at)) >= (double)c->select_p)
            continue;
        labels[i] = ids[i];
        sel++;
        const double k = unit(tb_rng_bits_at(key, at + 1));
        if (k < (double)c->mask_p)
            ids[i] = c->mask_id;
        else if (k < (double)c->mask_p + (double)c->random_p)
            ids[i] = c->rand_lo + (int32_t)(tb_rng_bits_at(key, at + 2) % span);
    }
    rng->counter = base + 3 * (uint64_t)n;
    if (n_selected)
        *n_selected = sel;
    return TB_OK;
}
