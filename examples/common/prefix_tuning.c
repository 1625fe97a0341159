/* Prefix tuning / P-tuning v2 as PEFT's PREFIX_TUNING (prefix_tuning.h). */
#include "prefix_tuning.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ex_arena.h"
#include "ex_try.h"

/* Point the stack's per-layer arrays at kv (n, 2LC) and its gradient dkv:
 * layer l's key at column 2lC, its value at (2l + 1)C, rows 2LC apart. */
static void point(prefix_tuning *p, float *kv, float *dkv)
{
    const size_t L = p->n_layer, C = p->d_model;
    float **key = p->ptr, **value = p->ptr + L, **dkey = p->ptr + 2 * L, **dvalue = p->ptr + 3 * L;
    for (size_t l = 0; l < L; l++) {
        key[l] = kv + 2 * l * C;
        value[l] = kv + (2 * l + 1) * C;
        dkey[l] = dkv ? dkv + 2 * l * C : NULL;
        dvalue[l] = dkv ? dkv + (2 * l + 1) * C : NULL;
    }
    p->prefix.n = p->cfg.num_virtual_tokens;
    p->prefix.ld = 2 * L * C;
    p->prefix.first_position = p->cfg.num_virtual_tokens; /* transformers: past tokens */
    p->prefix.key = key, p->prefix.value = value;
    p->prefix.dkey = dkey, p->prefix.dvalue = dvalue;
}

tb_status prefix_tuning_init(tb_ctx *ctx, prefix_tuning *p, const tfm_config *cfg,
                             const prefix_tuning_config *pc, tb_rng *rng)
{
    memset(p, 0, sizeof *p);
    TRY(tfm_config_check(ctx, cfg));
    const size_t n = pc->num_virtual_tokens, L = cfg->n_layer, C = cfg->d_model;
    const size_t E = pc->encoder_hidden_size ? pc->encoder_hidden_size : C;
    size_t W, nw;
    if (!n || n >= cfg->max_positions || E > TFM_MAX_WIDTH || !ex_mul_size(2 * L, C, &W) ||
        !ex_mul_size(n, W, &nw) || nw > ((size_t)1 << 31))
        return tb_ctx_set_error(ctx, TB_ERR_INVALID_ARG,
                                "prefix_tuning: %zu virtual tokens (1..%zu below the %zu "
                                "positions), hidden width %zu, for %zu layers of width %zu",
                                n, cfg->max_positions - 1, cfg->max_positions, E, L, C);
    p->cfg = *pc;
    p->cfg.encoder_hidden_size = E;
    p->n_layer = L, p->d_model = C;
    p->ptr = calloc(4 * L, sizeof *p->ptr);
    p->ids = malloc(n * sizeof *p->ids);
    if (!p->ptr || !p->ids)
        return tb_ctx_set_error(ctx, TB_ERR_NO_MEMORY, "prefix_tuning: no memory");
    for (size_t i = 0; i < n; i++)
        p->ids[i] = (int32_t)i;
    if (!pc->prefix_projection) {
        TRY(tb_embedding_init(ctx, &p->embedding, n, W, rng));
        point(p, p->embedding.weight.value, p->embedding.weight.grad);
        return TB_OK;
    }
    TRY(tb_embedding_init(ctx, &p->embedding, n, C, rng));
    TRY(tb_linear_init(ctx, &p->t0, C, E, 1, rng));
    TRY(tb_linear_init(ctx, &p->t2, E, W, 1, rng));
    p->kv = calloc(2 * nw + 2 * n * (C + E), sizeof(float));
    if (!p->kv)
        return tb_ctx_set_error(ctx, TB_ERR_NO_MEMORY, "prefix_tuning: no memory");
    p->dkv = p->kv + nw;
    p->e = p->dkv + nw;
    p->de = p->e + n * C;
    p->a = p->de + n * C;
    p->da = p->a + n * E;
    point(p, p->kv, p->dkv);
    return prefix_tuning_forward(ctx, p);
}

void prefix_tuning_free(prefix_tuning *p)
{
    if (!p)
        return;
    tb_embedding_free(&p->embedding);
    tb_linear_free(&p->t0);
    tb_linear_free(&p->t2);
    free(p->kv);
    free(p->ids);
    free(p->ptr);
    memset(p, 0, sizeof *p);
}

tb_status prefix_tuning_params(tb_ctx *ctx, prefix_tuning *p, const char *prefix,
                               tb_param_list *list)
{
    char name[TB_PARAM_NAME_MAX];
    if (!prefix)
        prefix = "";
    snprintf(name, sizeof name, "%sembedding", prefix);
    TRY(tb_embedding_params(ctx, &p->embedding, name, list));
    if (!p->cfg.prefix_projection)
        return TB_OK;
    snprintf(name, sizeof name, "%stransform.0", prefix);
    TRY(tb_linear_params(ctx, &p->t0, name, list));
    snprintf(name, sizeof name, "%stransform.2", prefix);
    return tb_linear_params(ctx, &p->t2, name, list);
}

tb_status prefix_tuning_attach(tb_ctx *ctx, prefix_tuning *p, tfm *m)
{
    if (m->cfg.n_layer != p->n_layer || m->cfg.d_model != p->d_model)
        return tb_ctx_set_error(ctx, TB_ERR_SHAPE,
                                "prefix_tuning: built for %zu layers of width %zu, the stack has "
                                "%zu of width %zu",
                                p->n_layer, p->d_model, m->cfg.n_layer, m->cfg.d_model);
    return tfm_set_prefix(ctx, m, &p->prefix);
}

tb_status prefix_tuning_forward(tb_ctx *ctx, prefix_tuning *p)
{
    if (!p->cfg.prefix_projection)
        return TB_OK;
    const size_t n = p->cfg.num_virtual_tokens, C = p->d_model, E = p->cfg.encoder_hidden_size;
    const size_t W = 2 * p->n_layer * C;
    tb_tensor e = tb_tensor_2d(p->e, n, C), a = tb_tensor_2d(p->a, n, E);
    tb_tensor kv = tb_tensor_2d(p->kv, n, W);
    TRY(tb_embedding_forward(ctx, &p->embedding, p->ids, n, &e));
    TRY(tb_linear_forward(ctx, &p->t0, &e, &a));
    for (size_t i = 0; i < n * E; i++)
        p->a[i] = tanhf(p->a[i]);
    TRY(tb_linear_forward(ctx, &p->t2, &a, &kv));
    memset(p->dkv, 0, n * W * sizeof(float));
    return TB_OK;
}

tb_status prefix_tuning_backward(tb_ctx *ctx, prefix_tuning *p)
{
    if (!p->cfg.prefix_projection)
        return TB_OK;
    const size_t n = p->cfg.num_virtual_tokens, C = p->d_model, E = p->cfg.encoder_hidden_size;
    const size_t W = 2 * p->n_layer * C;
    tb_tensor e = tb_tensor_2d(p->e, n, C), a = tb_tensor_2d(p->a, n, E);
    tb_tensor da = tb_tensor_2d(p->da, n, E), dkv = tb_tensor_2d(p->dkv, n, W);
    TRY(tb_linear_backward(ctx, &p->t2, &a, &dkv, &da));
    for (size_t i = 0; i < n * E; i++) /* tanh' = 1 - tanh^2 */
        p->da[i] *= 1.0f - p->a[i] * p->a[i];
    tb_tensor de = tb_tensor_2d(p->de, n, C);
    TRY(tb_linear_backward(ctx, &p->t0, &e, &da, &de));
    return tb_embedding_backward(ctx, &p->embedding, p->ids, n, &de);
}

tb_status prefix_tuning_save(tb_ctx *ctx, prefix_tuning *p, const char *path)
{
    const size_t shape[2] = {p->cfg.num_virtual_tokens, 2 * p->n_layer * p->d_model};
    const tb_st_entry e = {"prompt_embeddings",
                           p->cfg.prefix_projection ? p->kv : p->embedding.weight.value, 2, shape};
    return tb_st_save(ctx, path, &e, 1, NULL, 0);
}

tb_status prefix_tuning_load(tb_ctx *ctx, prefix_tuning *p, const char *path)
{
    if (p->cfg.prefix_projection)
        return tb_ctx_set_error(ctx, TB_ERR_UNSUPPORTED,
                                "prefix_tuning: PEFT's prompt_embeddings cannot be loaded into "
                                "a projection (as in PEFT)");
    tb_st_file f;
    TRY(tb_st_open(ctx, path, &f));
    const tb_st_tensor *t = tb_st_find(&f, "prompt_embeddings");
    const size_t n = p->cfg.num_virtual_tokens, W = 2 * p->n_layer * p->d_model;
    tb_status s = TB_OK;
    if (!t)
        s = tb_ctx_set_error(ctx, TB_ERR_NOT_FOUND, "prefix_tuning: '%s' has no prompt_embeddings",
                             path);
    else if (t->ndim != 2 || t->shape[0] != n || t->shape[1] != W)
        s = tb_ctx_set_error(ctx, TB_ERR_SHAPE,
                             "prefix_tuning: prompt_embeddings in '%s' is not (%zu, %zu)", path, n,
                             W);
    else
        s = tb_st_read_f32(ctx, t, p->embedding.weight.value, n * W);
    tb_st_close(&f);
    return s;
}
