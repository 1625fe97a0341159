/*
 * tb_ptuning_*: errors, the cache, names, thread counts, finite differences
 * and the PEFT oracle (peft.tuners.p_tuning.PromptEncoder, run by
 * test/oracle/gen_ptuning.py on a batch of identical index rows, as PEFT
 * runs it). Our forward is one row and must equal every row of PEFT's; our
 * backward takes the batch-summed upstream gradient and must give PEFT's
 * parameter gradients.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "suites.h"
#include "testutil.h"

#define ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

static tb_ptuning_config pcfg(tb_ptuning_encoder type, size_t n, size_t d, size_t H,
                              size_t layers, float dropout)
{
    tb_ptuning_config c;
    memset(&c, 0, sizeof c);
    c.num_virtual_tokens = n, c.token_dim = d, c.encoder_hidden_size = H;
    c.encoder_num_layers = layers, c.type = type, c.encoder_dropout = dropout;
    return c;
}

static void *cache_for(const tb_ptuning *p, size_t *bytes)
{
    ck_assert_int_eq(tb_ptuning_cache_size(p, bytes), TB_OK);
    void *c = aligned_alloc(64, (*bytes + 63) / 64 * 64);
    ck_assert_ptr_nonnull(c);
    return c;
}

/* Every parameter of the encoder, in tb_ptuning_params() order. */
static void list_of(tb_ctx *ctx, tb_ptuning *p, tb_param_list *list)
{
    CHECK_OK(*ctx, tb_param_list_init(ctx, list));
    CHECK_OK(*ctx, tb_ptuning_params(ctx, p, NULL, list));
}

/* ---- errors ----------------------------------------------------------------------- */

START_TEST(ptuning_init_errors)
{
    tb_ctx ctx;
    tbt_ctx_init(&ctx, 1);
    tb_rng rng;
    tb_rng_init(&rng, 1);
    tb_ptuning p;
    tb_ptuning_config c = pcfg(TB_PTUNING_LSTM, 3, 7, 5, 2, 0.0f);
    ck_assert_int_eq(tb_ptuning_init(NULL, &p, &c, &rng), TB_ERR_NULL_ARG);
    ck_assert_int_eq(tb_ptuning_init(&ctx, NULL, &c, &rng), TB_ERR_NULL_ARG);
    ck_assert_int_eq(tb_ptuning_init(&ctx, &p, NULL, &rng), TB_ERR_NULL_ARG);
    ck_assert_int_eq(tb_ptuning_init(&ctx, &p, &c, NULL), TB_ERR_NULL_ARG);
    const tb_ptuning_config bad[] = {
        pcfg(TB_PTUNING_LSTM, 0, 7, 5, 2, 0.0f),  pcfg(TB_PTUNING_LSTM, 3, 0, 5, 2, 0.0f),
        pcfg(TB_PTUNING_LSTM, 3, 7, 0, 2, 0.0f),  pcfg(TB_PTUNING_LSTM, 3, 7, 5, 0, 0.0f),
        pcfg(TB_PTUNING_LSTM, 3, 7, 5, 17, 0.0f), pcfg(TB_PTUNING_LSTM, 3, 7, 5, 2, 1.0f),
        pcfg(TB_PTUNING_LSTM, 3, 7, 5, 2, -0.5f), pcfg((tb_ptuning_encoder)2, 3, 7, 5, 2, 0.0f),
        pcfg(TB_PTUNING_MLP, 0, 7, 5, 2, 0.0f),   pcfg(TB_PTUNING_MLP, 3, 7, 0, 2, 0.0f),
    };
    for (size_t i = 0; i < ARRAY_LEN(bad); i++) {
        memset(&p, 0x5A, sizeof p);
        ck_assert_msg(tb_ptuning_init(&ctx, &p, &bad[i], &rng) == TB_ERR_INVALID_ARG,
                      "bad config %zu accepted", i);
        ck_assert_ptr_null(p.embedding.weight.value);
        ck_assert_ptr_null(p.lstm.storage);
        ck_assert_uint_eq(p.n_mlp, 0);
    }
    /* MLP ignores the layer count (PEFT warns and uses three Linears) */
    tb_ptuning_config m = pcfg(TB_PTUNING_MLP, 3, 7, 5, 0, 0.0f);
    CHECK_OK(ctx, tb_ptuning_init(&ctx, &p, &m, &rng));
    ck_assert_uint_eq(p.n_mlp, 3);
    tb_ptuning_free(&p);
    tb_ptuning_free(&p);
    tb_ptuning_free(NULL);
    tb_param_list list;
    CHECK_OK(ctx, tb_param_list_init(&ctx, &list));
    ck_assert_int_eq(tb_ptuning_params(&ctx, &p, NULL, &list), TB_ERR_STATE);
    float o[21];
    tb_tensor out = tb_tensor_2d(o, 3, 7);
    ck_assert_int_eq(tb_ptuning_forward(&ctx, &p, TB_MODE_INFERENCE, NULL, &out, NULL, 0),
                     TB_ERR_STATE);
    ck_assert_int_eq(tb_ptuning_backward(&ctx, &p, &out, o, sizeof o), TB_ERR_STATE);
    size_t bytes;
    ck_assert_int_eq(tb_ptuning_cache_size(NULL, &bytes), TB_ERR_NULL_ARG);
    ck_assert_int_eq(tb_ptuning_cache_size(&p, NULL), TB_ERR_NULL_ARG);
    tb_param_list_free(&list);
}
END_TEST

START_TEST(ptuning_call_errors)
{
    for (int type = 0; type < 2; type++) {
        enum { N = 4, D = 5, H = 3 };
        tb_ctx ctx;
        tbt_ctx_init(&ctx, 2);
        tb_rng rng;
        tb_rng_init(&rng, 2);
        tb_ptuning p;
        const tb_ptuning_config c = pcfg((tb_ptuning_encoder)type, N, D, H, 2, 0.3f);
        CHECK_OK(ctx, tb_ptuning_init(&ctx, &p, &c, &rng));
        const uint64_t counter0 = rng.counter;
        size_t cb;
        unsigned char *cache = cache_for(&p, &cb);
        memset(cache, 0x33, cb);
        float *o = tbt_alloc((N * D + 1) * sizeof(float));
        tbt_fill_sentinel(o, N * D + 1);
        tb_tensor out = tb_tensor_2d(o, N, D), bad = tb_tensor_2d(o, N, D + 1);
        tb_tensor bad2 = tb_tensor_2d(o, N + 1, D), bad3 = tb_tensor_3d(o, 1, N, D);
        const tb_mode M = TB_MODE_TRAINING;
        ck_assert_int_eq(tb_ptuning_forward(NULL, &p, M, &rng, &out, cache, cb), TB_ERR_NULL_ARG);
        ck_assert_int_eq(tb_ptuning_forward(&ctx, NULL, M, &rng, &out, cache, cb), TB_ERR_NULL_ARG);
        ck_assert_int_eq(tb_ptuning_forward(&ctx, &p, M, &rng, NULL, cache, cb), TB_ERR_NULL_ARG);
        ck_assert_int_eq(tb_ptuning_forward(&ctx, &p, M, &rng, &bad, cache, cb), TB_ERR_SHAPE);
        ck_assert_int_eq(tb_ptuning_forward(&ctx, &p, M, &rng, &bad2, cache, cb), TB_ERR_SHAPE);
        (void)bad3;
        ck_assert_int_eq(tb_ptuning_forward(&ctx, &p, (tb_mode)3, &rng, &out, cache, cb),
                         TB_ERR_INVALID_ARG);
        ck_assert_int_eq(tb_ptuning_forward(&ctx, &p, M, &rng, &out, cache, cb - 1),
                         TB_ERR_BUFFER_TOO_SMALL);
        ck_assert_int_eq(tb_ptuning_forward(&ctx, &p, M, &rng, &out, cache + 2, cb),
                         TB_ERR_INVALID_ARG);
        if (type == TB_PTUNING_LSTM) /* 2 LSTM layers, dropout 0.3, training: a stream */
            ck_assert_int_eq(tb_ptuning_forward(&ctx, &p, M, NULL, &out, cache, cb),
                             TB_ERR_NULL_ARG);
        /* aliasing: out over the cache, over the embedding table, over a weight */
        tb_tensor on_cache = tb_tensor_2d((float *)cache + 32, N, D);
        ck_assert_int_eq(tb_ptuning_forward(&ctx, &p, M, &rng, &on_cache, cache, cb),
                         TB_ERR_INVALID_ARG);
        float *emb_before = tbt_alloc(N * D * sizeof(float));
        memcpy(emb_before, p.embedding.weight.value, N * D * sizeof(float));
        tb_tensor on_emb = tb_tensor_2d(p.embedding.weight.value, N, D);
        ck_assert_int_eq(tb_ptuning_forward(&ctx, &p, M, &rng, &on_emb, cache, cb),
                         TB_ERR_INVALID_ARG);
        ck_assert(memcmp(emb_before, p.embedding.weight.value, N * D * sizeof(float)) == 0);
        tb_linear *last = &p.mlp[p.n_mlp - 1];
        float *w_before = tbt_alloc(last->weight.numel * sizeof(float));
        memcpy(w_before, last->weight.value, last->weight.numel * sizeof(float));
        if (last->weight.numel >= N * D) {
            tb_tensor on_w = tb_tensor_2d(last->weight.value, N, D);
            ck_assert_int_eq(tb_ptuning_forward(&ctx, &p, M, &rng, &on_w, cache, cb),
                             TB_ERR_INVALID_ARG);
        }
        /* the cache over a parameter the encoder reads after its first write */
        tb_param *inner = type == TB_PTUNING_LSTM ? &p.lstm.w_hh[1] : &p.mlp[1].weight;
        float *inner_before = tbt_alloc(inner->numel * sizeof(float));
        memcpy(inner_before, inner->value, inner->numel * sizeof(float));
        ck_assert_int_eq(tb_ptuning_forward(&ctx, &p, M, &rng, &out, inner->value - 4, cb),
                         TB_ERR_INVALID_ARG);
        ck_assert(memcmp(inner_before, inner->value, inner->numel * sizeof(float)) == 0);
        tbt_assert_untouched(o, N * D + 1);
        ck_assert_uint_eq(rng.counter, counter0); /* no mask drawn by a refused call */
        for (size_t i = 0; i < cb; i++)
            ck_assert_msg(cache[i] == 0x33, "byte %zu of the cache written by a refused call", i);

        /* backward */
        float *dd = tbt_alloc(N * D * sizeof(float));
        tbt_fill_uniform(dd, N * D, -1, 1, 3);
        tb_tensor dout = tb_tensor_2d(dd, N, D), dbad = tb_tensor_2d(dd, N, D - 1);
        ck_assert_int_eq(tb_ptuning_backward(&ctx, &p, &dout, cache, cb), TB_ERR_STATE); /* no forward */
        CHECK_OK(ctx, tb_ptuning_forward(&ctx, &p, M, &rng, &out, cache, cb));
        tb_param_list list;
        list_of(&ctx, &p, &list);
        ck_assert_int_eq(tb_ptuning_backward(NULL, &p, &dout, cache, cb), TB_ERR_NULL_ARG);
        ck_assert_int_eq(tb_ptuning_backward(&ctx, NULL, &dout, cache, cb), TB_ERR_NULL_ARG);
        ck_assert_int_eq(tb_ptuning_backward(&ctx, &p, NULL, cache, cb), TB_ERR_NULL_ARG);
        ck_assert_int_eq(tb_ptuning_backward(&ctx, &p, &dout, NULL, cb), TB_ERR_NULL_ARG);
        ck_assert_int_eq(tb_ptuning_backward(&ctx, &p, &dbad, cache, cb), TB_ERR_SHAPE);
        ck_assert_int_eq(tb_ptuning_backward(&ctx, &p, &dout, cache, cb - 1),
                         TB_ERR_BUFFER_TOO_SMALL);
        /* dout over a gradient, and the cache over a gradient: refused */
        tb_param *g0 = list.items[list.count - 1].param; /* the last Linear's bias */
        tb_param *ge = list.items[0].param;              /* the embedding table */
        tb_tensor d_on_grad = tb_tensor_2d(ge->grad, N, D);
        ck_assert_int_eq(tb_ptuning_backward(&ctx, &p, &d_on_grad, cache, cb), TB_ERR_INVALID_ARG);
        (void)g0;
        for (size_t e = 0; e < list.count; e++) {
            const tb_param *q = list.items[e].param;
            for (size_t j = 0; j < q->numel; j++)
                ck_assert_msg(q->grad[j] == 0.0f, "%s's gradient written by a refused call",
                              list.items[e].name);
        }
        /* the cache of another encoder: other sizes, other type */
        tb_ptuning q;
        const tb_ptuning_config c2 = pcfg((tb_ptuning_encoder)type, N, D, H + 1, 2, 0.3f);
        CHECK_OK(ctx, tb_ptuning_init(&ctx, &q, &c2, &rng));
        size_t cb2;
        void *cache2 = cache_for(&q, &cb2);
        tb_rng r2 = rng;
        CHECK_OK(ctx, tb_ptuning_forward(&ctx, &q, M, &r2, &out, cache2, cb2));
        ck_assert_int_eq(tb_ptuning_backward(&ctx, &p, &dout, cache2, cb2),
                         cb2 >= cb ? TB_ERR_STATE : TB_ERR_BUFFER_TOO_SMALL);
        tb_ptuning other;
        const tb_ptuning_config c3 = pcfg((tb_ptuning_encoder)(1 - type), N, D, H, 2, 0.0f);
        CHECK_OK(ctx, tb_ptuning_init(&ctx, &other, &c3, &rng));
        size_t cb3;
        void *cache3 = cache_for(&other, &cb3);
        CHECK_OK(ctx, tb_ptuning_forward(&ctx, &other, M, NULL, &out, cache3, cb3));
        if (cb3 >= cb)
            ck_assert_int_eq(tb_ptuning_backward(&ctx, &p, &dout, cache3, cb3), TB_ERR_STATE);
        else
            ck_assert_int_eq(tb_ptuning_backward(&ctx, &other, &dout, cache, cb), TB_ERR_STATE);
        /* and with the right cache it works */
        CHECK_OK(ctx, tb_ptuning_backward(&ctx, &p, &dout, cache, cb));
        ck_assert(p.embedding.weight.grad[0] != 0.0f);
        free(cache2), free(cache3), free(emb_before), free(w_before), free(inner_before), free(dd);
        tb_ptuning_free(&q);
        tb_ptuning_free(&other);
        tb_param_list_free(&list);
        tb_ptuning_free(&p);
        free(cache), free(o);
    }
}
END_TEST

/* ---- names, init, the cache ---------------------------------------------------- */

START_TEST(ptuning_names_init_and_cache)
{
    tb_ctx ctx;
    tbt_ctx_init(&ctx, 2);
    tb_rng rng;
    tb_rng_init(&rng, 8);
    tb_ptuning p;
    const tb_ptuning_config c = pcfg(TB_PTUNING_LSTM, 6, 9, 4, 2, 0.0f);
    CHECK_OK(ctx, tb_ptuning_init(&ctx, &p, &c, &rng));
    tb_param_list list;
    CHECK_OK(ctx, tb_param_list_init(&ctx, &list));
    CHECK_OK(ctx, tb_ptuning_params(&ctx, &p, "prompt_encoder.default", &list));
    ck_assert_uint_eq(list.count, 1 + 16 + 4);
    ck_assert_str_eq(list.items[0].name, "prompt_encoder.default.embedding.weight");
    ck_assert_str_eq(list.items[1].name, "prompt_encoder.default.lstm_head.weight_ih_l0");
    ck_assert_str_eq(list.items[16].name, "prompt_encoder.default.lstm_head.bias_hh_l1_reverse");
    ck_assert_str_eq(list.items[17].name, "prompt_encoder.default.mlp_head.0.weight");
    ck_assert_str_eq(list.items[20].name, "prompt_encoder.default.mlp_head.2.bias");
    ck_assert_uint_eq(list.items[17].param->shape[0], 8);
    ck_assert_uint_eq(list.items[17].param->shape[1], 8);
    ck_assert_uint_eq(list.items[19].param->shape[0], 9);
    ck_assert_uint_eq(list.items[19].param->shape[1], 8);
    ck_assert_uint_eq(list.items[9].param->shape[1], 8); /* weight_ih_l1: 2H wide */
    /* init: the embedding N(0, 1) (spread well beyond the +-1/sqrt(H) of the
     * LSTM), the LSTM within +-1/2, the Linears within +-1/sqrt(in) */
    double m2 = 0;
    for (size_t i = 0; i < 54; i++)
        m2 += (double)p.embedding.weight.value[i] * p.embedding.weight.value[i];
    ck_assert(m2 / 54 > 0.4 && m2 / 54 < 2.0);
    for (size_t e = 1; e < list.count; e++) {
        const tb_param *q = list.items[e].param;
        const double bound = e < 17 ? 0.5 : 1.0 / sqrt(8.0);
        for (size_t j = 0; j < q->numel; j++)
            ck_assert(fabs(q->value[j]) <= bound && q->grad[j] == 0.0f);
    }
    tb_param_list_free(&list);
    /* a NULL cache (no backward) gives the same bits as a cache */
    size_t cb;
    void *cache = cache_for(&p, &cb);
    float a[54], b[54];
    tb_tensor ta = tb_tensor_2d(a, 6, 9), tb = tb_tensor_2d(b, 6, 9);
    CHECK_OK(ctx, tb_ptuning_forward(&ctx, &p, TB_MODE_TRAINING, NULL, &ta, cache, cb));
    CHECK_OK(ctx, tb_ptuning_forward(&ctx, &p, TB_MODE_INFERENCE, NULL, &tb, NULL, 0));
    ck_assert(memcmp(a, b, sizeof a) == 0);
    /* the cache size does not depend on anything a call could change */
    size_t again;
    CHECK_OK(ctx, tb_ptuning_cache_size(&p, &again));
    ck_assert_uint_eq(again, cb);
    free(cache);
    tb_ptuning_free(&p);
}
END_TEST

/* ---- threads -------------------------------------------------------------------- */

START_TEST(ptuning_threads)
{
    for (int type = 0; type < 2; type++) {
        const tb_ptuning_config c = pcfg((tb_ptuning_encoder)type, 40, 65, 48, 2, 0.0f);
        float *ref_out = NULL, *ref_g = NULL;
        size_t total = 0;
        const int threads[] = {1, 2, 3};
        for (size_t ti = 0; ti < ARRAY_LEN(threads); ti++) {
            tb_ctx ctx;
            tbt_ctx_init(&ctx, threads[ti]);
            tb_rng rng;
            tb_rng_init(&rng, 21);
            tb_ptuning p;
            CHECK_OK(ctx, tb_ptuning_init(&ctx, &p, &c, &rng));
            size_t cb;
            void *cache = cache_for(&p, &cb);
            float *o = tbt_alloc(40 * 65 * sizeof(float)), *d = tbt_alloc(40 * 65 * sizeof(float));
            tbt_fill_uniform(d, 40 * 65, -1, 1, 22);
            tb_tensor out = tb_tensor_2d(o, 40, 65), dout = tb_tensor_2d(d, 40, 65);
            CHECK_OK(ctx, tb_ptuning_forward(&ctx, &p, TB_MODE_TRAINING, NULL, &out, cache, cb));
            CHECK_OK(ctx, tb_ptuning_backward(&ctx, &p, &dout, cache, cb));
            tb_param_list list;
            list_of(&ctx, &p, &list);
            const size_t n = tb_param_list_numel(&list, 0);
            float *g = tbt_alloc(n * sizeof(float));
            size_t at = 0;
            for (size_t e = 0; e < list.count; e++) {
                memcpy(g + at, list.items[e].param->grad, list.items[e].param->numel * 4);
                at += list.items[e].param->numel;
            }
            if (ti == 0) {
                ref_out = o, ref_g = g, total = n;
            } else {
                ck_assert_uint_eq(n, total);
                ck_assert_msg(memcmp(o, ref_out, 40 * 65 * 4) == 0, "type %d out, %d threads", type,
                              threads[ti]);
                ck_assert_msg(memcmp(g, ref_g, n * 4) == 0, "type %d gradients, %d threads", type,
                              threads[ti]);
                free(o), free(g);
            }
            free(d), free(cache);
            tb_param_list_free(&list);
            tb_ptuning_free(&p);
        }
        free(ref_out), free(ref_g);
    }
}
END_TEST

/* ---- finite differences -----------------------------------------------------------
 * L = sum(w .* out) with w uniform in +-20 (so the gradients stand well
 * above atol), shared step and tolerance (TBT_FD_*). The head's ReLUs have
 * kinks: a central difference across one is off by up to the slope jump
 * times h/2. The head's hidden biases are pushed 0.1 further from 0 to keep
 * the pre-activations off the kinks for these seeds; a difference taken
 * across a kink makes the check fail (never pass), so this can only cost a
 * false alarm, which these fixed seeds do not raise. */
typedef struct pprob {
    tb_ctx ctx;
    tb_ptuning p;
    float *out, *w;
    size_t n, d;
} pprob;

static double ptuning_loss(void *user)
{
    pprob *q = user;
    tb_tensor out = tb_tensor_2d(q->out, q->n, q->d);
    CHECK_OK(q->ctx, tb_ptuning_forward(&q->ctx, &q->p, TB_MODE_INFERENCE, NULL, &out, NULL, 0));
    return tbt_dot(q->w, q->out, q->n * q->d);
}

START_TEST(ptuning_gradients)
{
    for (int type = 0; type < 2; type++) {
        pprob q;
        tbt_ctx_init(&q.ctx, 2);
        tb_rng rng;
        tb_rng_init(&rng, 31 + (uint64_t)type);
        q.n = 3, q.d = 4;
        const tb_ptuning_config c = pcfg((tb_ptuning_encoder)type, q.n, q.d, 3, 2, 0.0f);
        CHECK_OK(q.ctx, tb_ptuning_init(&q.ctx, &q.p, &c, &rng));
        size_t cb;
        unsigned char *cache = cache_for(&q.p, &cb);
        q.out = tbt_alloc(q.n * q.d * sizeof(float));
        q.w = tbt_alloc(q.n * q.d * sizeof(float));
        tbt_fill_uniform(q.w, q.n * q.d, -1, 1, 5);
        for (size_t i = 0; i < q.n * q.d; i++) /* a larger loss: gradients well above atol */
            q.w[i] *= 20.0f;
        tb_tensor out = tb_tensor_2d(q.out, q.n, q.d), dout = tb_tensor_2d(q.w, q.n, q.d);
        /* move the head's pre-activations away from the kinks: shift the biases */
        for (size_t i = 0; i + 1 < q.p.n_mlp; i++)
            for (size_t j = 0; j < q.p.mlp[i].bias.numel; j++)
                q.p.mlp[i].bias.value[j] += q.p.mlp[i].bias.value[j] < 0 ? -0.1f : 0.1f;
        CHECK_OK(q.ctx, tb_ptuning_forward(&q.ctx, &q.p, TB_MODE_TRAINING, NULL, &out, cache, cb));
        CHECK_OK(q.ctx, tb_ptuning_backward(&q.ctx, &q.p, &dout, cache, cb));
        tb_param_list list;
        list_of(&q.ctx, &q.p, &list);
        for (size_t e = 0; e < list.count; e++) {
            tb_param *pp = list.items[e].param;
            char lbl[192];
            snprintf(lbl, sizeof lbl, "ptuning[%s].d%s", type ? "mlp" : "lstm", list.items[e].name);
            tbt_gradcheck(lbl, pp->value, pp->numel, pp->grad, ptuning_loss, &q, TBT_FD_H,
                          TBT_FD_RTOL, TBT_FD_ATOL, TBT_FD_MAX_CHECKS);
        }
        tb_param_list_free(&list);
        tb_ptuning_free(&q.p);
        free(cache), free(q.out), free(q.w);
    }
}
END_TEST

/* ---- the PEFT oracle ----------------------------------------------------------------
 * Compared with float32 PEFT and its float64 copy, |got - want| <= atol +
 * rtol |want|, atol = PT_ATOL_REL times the quantity's largest float64
 * magnitude. PEFT sums each parameter gradient over the B rows of its batch
 * inside autograd; we run one row with the summed gradient, so the two
 * round differently (a few ulp of the batch sum), on top of the LSTM's
 * (test_lstm.c) and the head's rounding:
 *   PT_RTOL 2e-5, PT_ATOL_REL 5e-6 (the LSTM block's). Measured over the 8
 *   cases on all three kernel families: at most 5.6e-7 units (a BiLSTM
 *   bias gradient), 3.8e-7 for the head's, 5.0e-7 for the embedding's,
 *   1.6e-7 for out: 9x inside the tolerance.
 */
static const double PT_RTOL = 2e-5, PT_ATOL_REL = 5e-6;

static const char *const pt_cases[] = {
    "ptuning_lstm_b3n1d7h5l1",  "ptuning_lstm_b3n3d17h16l2", "ptuning_lstm_b2n20d7h5l2",
    "ptuning_lstm_b3n20d17h16l1", "ptuning_mlp_b3n1d7h5l2",  "ptuning_mlp_b3n3d17h16l2",
    "ptuning_mlp_b2n20d17h5l2", "ptuning_mlp_b3n20d7h16l1",
};

static void pt_cmp(const tbt_ref *ref, const char *blk, const char *what, const float *got,
                   size_t n, size_t row0_of)
{
    char name[192], lbl[320];
    tbt_reft w = tbt_ref_get(ref, what);
    snprintf(name, sizeof name, "%s_f64", what);
    tbt_reft w64 = tbt_ref_get(ref, name);
    ck_assert_uint_eq(w.n, w64.n);
    ck_assert_uint_eq(w.n, n * (row0_of ? row0_of : 1));
    const double unit = tbt_max_abs_f(w64.data, w64.n);
    if (unit == 0.0 && tbt_max_abs_f(w.data, w.n) == 0.0) {
        /* exactly 0 in PEFT (W_hh's gradient with one token from a zero
         * state): ours must be exactly 0 */
        ck_assert_msg(tbt_max_abs_f(got, n) == 0.0, "%s.%s: PEFT's is exactly 0, ours is not",
                      blk, what);
        return;
    }
    /* out: every batch row of PEFT's equals our one row */
    for (size_t r = 0; r < (row0_of ? row0_of : 1); r++) {
        snprintf(lbl, sizeof lbl, "%s.%s[row %zu]", blk, what, r);
        tbt_assert_close(lbl, got, w.data + r * n, n, PT_RTOL, PT_ATOL_REL * unit);
        snprintf(lbl, sizeof lbl, "%s.%s(f64)[row %zu]", blk, what, r);
        tbt_assert_close(lbl, got, w64.data + r * n, n, PT_RTOL, PT_ATOL_REL * unit);
        const tbt_cmp c32 = tbt_compare(got, w.data + r * n, n, PT_RTOL, PT_ATOL_REL * unit);
        const tbt_cmp c64 = tbt_compare(got, w64.data + r * n, n, PT_RTOL, PT_ATOL_REL * unit);
        printf("  units %s.%s: max |err| / unit = %.2e (f32), %.2e (f64)\n", blk, what,
               c32.max_abs_err / unit, c64.max_abs_err / unit);
    }
}

START_TEST(test_oracle_ptuning)
{
    const char *name = pt_cases[_i];
    tbt_ref *ref = tbt_ref_load(name);
    const int type = tbt_ref_i32_scalar(ref, "type");
    const size_t n = (size_t)tbt_ref_i32_scalar(ref, "n"), d = (size_t)tbt_ref_i32_scalar(ref, "d");
    const size_t H = (size_t)tbt_ref_i32_scalar(ref, "H");
    const size_t layers = (size_t)tbt_ref_i32_scalar(ref, "layers");
    tb_ctx ctx;
    tbt_ctx_init(&ctx, 2);
    tb_rng rng;
    tb_rng_init(&rng, 1);
    tb_ptuning p;
    const tb_ptuning_config c = pcfg((tb_ptuning_encoder)type, n, d, H, layers, 0.0f);
    CHECK_OK(ctx, tb_ptuning_init(&ctx, &p, &c, &rng));
    tb_param_list list;
    list_of(&ctx, &p, &list);
    /* names: PEFT's state_dict keys, in order */
    size_t nn;
    const int32_t *codes = tbt_ref_i32(ref, "names", &nn);
    char *names = tbt_alloc(nn + 1);
    for (size_t i = 0; i < nn; i++)
        names[i] = (char)codes[i];
    char *save = NULL, *tok = strtok_r(names, "\n", &save);
    for (size_t e = 0; e < list.count; e++, tok = strtok_r(NULL, "\n", &save)) {
        ck_assert_msg(tok != NULL, "PEFT has fewer parameters than tb_ptuning_params");
        ck_assert_str_eq(list.items[e].name, tok);
        tbt_reft w = tbt_ref_get(ref, tok);
        tb_param *q = list.items[e].param;
        ck_assert_uint_eq(w.ndim, q->ndim);
        for (size_t k = 0; k < w.ndim; k++)
            ck_assert_uint_eq(w.shape[k], q->shape[k]);
        memcpy(q->value, w.data, w.n * sizeof(float));
        memset(q->grad, 0, w.n * sizeof(float));
    }
    ck_assert_msg(tok == NULL, "PEFT has more parameters than tb_ptuning_params");
    size_t cb;
    void *cache = cache_for(&p, &cb);
    float *o = tbt_nan_buffer(n * d);
    tbt_reft ds = tbt_ref_get(ref, "dout_sum"), dfull = tbt_ref_get(ref, "dout");
    ck_assert_uint_eq(ds.n, n * d);
    const size_t B = dfull.shape[0];
    tb_tensor out = tb_tensor_2d(o, n, d), dout = tb_tensor_2d((float *)ds.data, n, d);
    CHECK_OK(ctx, tb_ptuning_forward(&ctx, &p, TB_MODE_TRAINING, NULL, &out, cache, cb));
    CHECK_OK(ctx, tb_ptuning_backward(&ctx, &p, &dout, cache, cb));
    char blk[96];
    snprintf(blk, sizeof blk, "ptuning[%s]", name + 8);
    pt_cmp(ref, blk, "out", o, n * d, B);
    for (size_t e = 0; e < list.count; e++) {
        char g[160];
        snprintf(g, sizeof g, "d%s", list.items[e].name);
        pt_cmp(ref, blk, g, list.items[e].param->grad, list.items[e].param->numel, 0);
    }
    free(names), free(cache), free(o);
    tb_param_list_free(&list);
    tb_ptuning_free(&p);
    tbt_ref_free(ref);
}
END_TEST

START_TEST(test_ptuning_all_cases_tested)
{
    const tbt_names names = {pt_cases, ARRAY_LEN(pt_cases)};
    ck_assert_uint_eq(tbt_check_manifest("ptuning_cases.txt", "test_ptuning.c", tbt_name_listed,
                                         &names),
                      ARRAY_LEN(pt_cases));
}
END_TEST

Suite *suite_ptuning(void)
{
    Suite *s = suite_create("ptuning");
    TCase *t0 = tcase_create("errors");
    tcase_add_test(t0, ptuning_init_errors);
    tcase_add_test(t0, ptuning_call_errors);
    tcase_add_test(t0, ptuning_names_init_and_cache);
    suite_add_tcase(s, t0);
    TCase *t1 = tcase_create("finite_differences");
    tcase_set_timeout(t1, 120);
    tcase_add_test(t1, ptuning_gradients);
    tcase_add_test(t1, ptuning_threads);
    suite_add_tcase(s, t1);
    TCase *t2 = tcase_create("peft");
    tcase_set_timeout(t2, 60);
    tcase_add_loop_test(t2, test_oracle_ptuning, 0, (int)ARRAY_LEN(pt_cases));
    tcase_add_test(t2, test_ptuning_all_cases_tested);
    suite_add_tcase(s, t2);
    return s;
}
