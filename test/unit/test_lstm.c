/*
 * tb_lstm_*: errors, initialisation and names, finite differences (also
 * through training dropout), dropout reproduced by hand, padding, thread
 * counts, and the PyTorch oracle (torch.nn.LSTM, test/oracle/gen_lstm.py).
 * Oracle cases: the block runs on the exact inputs, weights, initial states
 * and upstream gradients PyTorch was given; outputs are pre-filled with NaN,
 * gradients zeroed first (backward ADDS into them).
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "suites.h"
#include "testutil.h"

#define ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

/* ---- a configured LSTM with its buffers ----------------------------------- */

typedef struct lrun {
    tb_ctx ctx;
    tb_lstm m;
    size_t B, T, in, H, L, D, S; /* S = L*D*B*H: one state tensor */
    float *x, *h0, *c0, *y, *hn, *cn;
    int32_t *len;
    float *wy, *wh, *wc; /* the loss weights = dy, dh_n, dc_n (wh, wc may be NULL) */
    float *dx, *dh0, *dc0;
    void *cache;
    size_t cache_bytes;
    tb_mode mode;
    tb_rng rng0; /* each forward starts from it (the same dropout mask) */
} lrun;

typedef struct lopts {
    size_t L;
    int bidir;
    size_t B, T, in, H;
    const int32_t *lengths; /* NULL: all T */
    int h0, dh, dc;
    float dropout;
    tb_mode mode;
    int threads;
    uint64_t seed;
} lopts;

static void lrun_init(lrun *r, const lopts *o)
{
    memset(r, 0, sizeof *r);
    tbt_ctx_init(&r->ctx, o->threads);
    tb_rng rng;
    tb_rng_init(&rng, o->seed);
    const tb_lstm_config cfg = {o->in, o->H, o->L, o->bidir, o->dropout};
    CHECK_OK(r->ctx, tb_lstm_init(&r->ctx, &r->m, &cfg, &rng));
    r->B = o->B, r->T = o->T, r->in = o->in, r->H = o->H, r->L = o->L, r->D = o->bidir ? 2 : 1;
    r->S = r->L * r->D * r->B * r->H;
    const size_t BT = r->B * r->T, DH = r->D * r->H;
    r->x = tbt_alloc(BT * r->in * sizeof(float));
    tbt_fill_uniform(r->x, BT * r->in, -1, 1, o->seed + 1);
    if (o->lengths) {
        r->len = tbt_alloc(r->B * sizeof(int32_t));
        memcpy(r->len, o->lengths, r->B * sizeof(int32_t));
    }
    if (o->h0) {
        r->h0 = tbt_alloc(r->S * sizeof(float));
        r->c0 = tbt_alloc(r->S * sizeof(float));
        tbt_fill_uniform(r->h0, r->S, -1, 1, o->seed + 2);
        tbt_fill_uniform(r->c0, r->S, -1, 1, o->seed + 3);
        r->dh0 = tbt_alloc(r->S * sizeof(float));
        r->dc0 = tbt_alloc(r->S * sizeof(float));
    }
    r->y = tbt_alloc(BT * DH * sizeof(float));
    r->hn = tbt_alloc(r->S * sizeof(float));
    r->cn = tbt_alloc(r->S * sizeof(float));
    r->wy = tbt_alloc(BT * DH * sizeof(float));
    tbt_fill_uniform(r->wy, BT * DH, -1, 1, o->seed + 4);
    if (o->dh) {
        r->wh = tbt_alloc(r->S * sizeof(float));
        tbt_fill_uniform(r->wh, r->S, -1, 1, o->seed + 5);
    }
    if (o->dc) {
        r->wc = tbt_alloc(r->S * sizeof(float));
        tbt_fill_uniform(r->wc, r->S, -1, 1, o->seed + 6);
    }
    r->dx = tbt_alloc(BT * r->in * sizeof(float));
    ck_assert_int_eq(tb_lstm_cache_size(&r->m, r->B, r->T, &r->cache_bytes), TB_OK);
    r->cache = aligned_alloc(64, (r->cache_bytes + 63) / 64 * 64);
    ck_assert_ptr_nonnull(r->cache);
    r->mode = o->mode;
    tb_rng_init(&r->rng0, o->seed + 7);
}

static void lrun_free(lrun *r)
{
    tb_lstm_free(&r->m);
    free(r->x), free(r->h0), free(r->c0), free(r->y), free(r->hn), free(r->cn), free(r->len);
    free(r->wy), free(r->wh), free(r->wc), free(r->dx), free(r->dh0), free(r->dc0);
    free(r->cache);
}

static tb_tensor st3(const lrun *r, float *p)
{
    return tb_tensor_3d(p, r->L * r->D, r->B, r->H);
}

static tb_status lrun_forward(lrun *r)
{
    tb_rng rng = r->rng0;
    tb_tensor x = tb_tensor_3d(r->x, r->B, r->T, r->in);
    tb_tensor y = tb_tensor_3d(r->y, r->B, r->T, r->D * r->H);
    tb_tensor h0 = st3(r, r->h0), c0 = st3(r, r->c0), hn = st3(r, r->hn), cn = st3(r, r->cn);
    return tb_lstm_forward(&r->ctx, &r->m, r->mode, &rng, &x, r->len, r->h0 ? &h0 : NULL,
                           r->c0 ? &c0 : NULL, &y, &hn, &cn, r->cache, r->cache_bytes);
}

static tb_status lrun_backward(lrun *r)
{
    tb_tensor x = tb_tensor_3d(r->x, r->B, r->T, r->in);
    tb_tensor dy = tb_tensor_3d(r->wy, r->B, r->T, r->D * r->H);
    tb_tensor h0 = st3(r, r->h0), c0 = st3(r, r->c0), dh = st3(r, r->wh), dc = st3(r, r->wc);
    tb_tensor dx = tb_tensor_3d(r->dx, r->B, r->T, r->in);
    tb_tensor dh0 = st3(r, r->dh0), dc0 = st3(r, r->dc0);
    return tb_lstm_backward(&r->ctx, &r->m, &x, r->len, r->h0 ? &h0 : NULL, r->c0 ? &c0 : NULL,
                            &dy, r->wh ? &dh : NULL, r->wc ? &dc : NULL, &dx,
                            r->dh0 ? &dh0 : NULL, r->dc0 ? &dc0 : NULL, r->cache,
                            r->cache_bytes);
}

static double lrun_loss(void *user)
{
    lrun *r = user;
    CHECK_OK(r->ctx, lrun_forward(r));
    double l = tbt_dot(r->wy, r->y, r->B * r->T * r->D * r->H);
    if (r->wh)
        l += tbt_dot(r->wh, r->hn, r->S);
    if (r->wc)
        l += tbt_dot(r->wc, r->cn, r->S);
    return l;
}

/* Parameter k (l*D+d), tensor i (0 w_ih, 1 w_hh, 2 b_ih, 3 b_hh). */
static tb_param *lparam(tb_lstm *m, size_t k, int i)
{
    return i == 0 ? &m->w_ih[k] : i == 1 ? &m->w_hh[k] : i == 2 ? &m->b_ih[k] : &m->b_hh[k];
}

static void zero_grads(tb_lstm *m)
{
    for (size_t k = 0; k < m->config.num_layers * m->dirs; k++)
        for (int i = 0; i < 4; i++)
            memset(lparam(m, k, i)->grad, 0, lparam(m, k, i)->numel * sizeof(float));
}

static size_t len_at(const lrun *r, size_t b)
{
    return r->len ? (size_t)r->len[b] : r->T;
}

/* ---- errors -------------------------------------------------------------- */

START_TEST(lstm_init_errors)
{
    tb_ctx ctx;
    tbt_ctx_init(&ctx, 1);
    tb_rng rng;
    tb_rng_init(&rng, 1);
    tb_lstm m;
    tb_lstm_config c = {3, 4, 2, 1, 0.0f};
    ck_assert_int_eq(tb_lstm_init(NULL, &m, &c, &rng), TB_ERR_NULL_ARG);
    ck_assert_int_eq(tb_lstm_init(&ctx, NULL, &c, &rng), TB_ERR_NULL_ARG);
    ck_assert_int_eq(tb_lstm_init(&ctx, &m, NULL, &rng), TB_ERR_NULL_ARG);
    ck_assert_int_eq(tb_lstm_init(&ctx, &m, &c, NULL), TB_ERR_NULL_ARG);
    const tb_lstm_config bad[] = {
        {0, 4, 2, 1, 0.0f}, {3, 0, 2, 1, 0.0f},  {3, 4, 0, 1, 0.0f},
        {3, 4, TB_LSTM_MAX_LAYERS + 1, 0, 0.0f}, {3, 4, 2, 1, 1.0f},
        {3, 4, 2, 1, -0.1f}, {3, 4, 2, 1, NAN},
    };
    for (size_t i = 0; i < ARRAY_LEN(bad); i++) {
        memset(&m, 0x5A, sizeof m);
        ck_assert_int_eq(tb_lstm_init(&ctx, &m, &bad[i], &rng), TB_ERR_INVALID_ARG);
        ck_assert_ptr_null(m.storage); /* left empty */
        ck_assert(strstr(tb_ctx_error(&ctx), "tb_lstm_init") != NULL);
    }
    ck_assert_uint_eq(rng.counter, 0);
    tb_lstm_config over = {SIZE_MAX / 8, 4, 1, 0, 0.0f};
    ck_assert_int_eq(tb_lstm_init(&ctx, &m, &over, &rng), TB_ERR_OVERFLOW);
    tb_lstm_config over2 = {3, SIZE_MAX / 2, 1, 0, 0.0f};
    ck_assert_int_eq(tb_lstm_init(&ctx, &m, &over2, &rng), TB_ERR_OVERFLOW);
    /* Freeing an empty or freed struct is fine; an empty one is refused. */
    tb_lstm_free(NULL);
    tb_lstm_free(&m);
    tb_lstm_free(&m);
    tb_param_list list;
    CHECK_OK(ctx, tb_param_list_init(&ctx, &list));
    ck_assert_int_eq(tb_lstm_params(&ctx, &m, NULL, &list), TB_ERR_STATE);
    float xd[6], yd[8];
    tb_tensor x = tb_tensor_3d(xd, 1, 2, 3), y = tb_tensor_3d(yd, 1, 2, 4);
    ck_assert_int_eq(tb_lstm_forward(&ctx, &m, TB_MODE_INFERENCE, NULL, &x, NULL, NULL, NULL, &y,
                                     NULL, NULL, NULL, 0),
                     TB_ERR_STATE);
    tb_param_list_free(&list);
    size_t bytes;
    ck_assert_int_eq(tb_lstm_cache_size(NULL, 1, 1, &bytes), TB_ERR_NULL_ARG);
}
END_TEST

/* Every status forward and backward list, with nothing written. */
START_TEST(lstm_call_errors)
{
    const int32_t lens[3] = {4, 1, 3};
    const lopts o = {2, 1, 3, 4, 3, 5, lens, 1, 1, 1, 0.25f, TB_MODE_TRAINING, 2, 41};
    lrun r;
    lrun_init(&r, &o);
    const size_t B = r.B, T = r.T, DH = r.D * r.H, S = r.S;
    tb_ctx *ctx = &r.ctx;
    tb_rng rng = r.rng0;
    tb_tensor x = tb_tensor_3d(r.x, B, T, r.in), y = tb_tensor_3d(r.y, B, T, DH);
    tb_tensor h0 = st3(&r, r.h0), c0 = st3(&r, r.c0), hn = st3(&r, r.hn), cn = st3(&r, r.cn);
    const size_t cb = r.cache_bytes;
    tbt_fill_sentinel(r.y, B * T * DH);
    tbt_fill_sentinel(r.hn, S);
    tbt_fill_sentinel(r.cn, S);
    memset(r.cache, 0x77, cb);
#define FWD(xx, ll, hh, cc, yy, hnn, cnn, ca, cab)                                               \
    tb_lstm_forward(ctx, &r.m, TB_MODE_TRAINING, &rng, (xx), (ll), (hh), (cc), (yy), (hnn), (cnn), \
                    (ca), (cab))
    ck_assert_int_eq(tb_lstm_forward(NULL, &r.m, TB_MODE_TRAINING, &rng, &x, lens, &h0, &c0, &y,
                                     &hn, &cn, r.cache, cb),
                     TB_ERR_NULL_ARG);
    ck_assert_int_eq(tb_lstm_forward(ctx, NULL, TB_MODE_TRAINING, &rng, &x, lens, &h0, &c0, &y,
                                     &hn, &cn, r.cache, cb),
                     TB_ERR_NULL_ARG);
    ck_assert_int_eq(FWD(NULL, lens, &h0, &c0, &y, &hn, &cn, r.cache, cb), TB_ERR_NULL_ARG);
    ck_assert_int_eq(FWD(&x, lens, &h0, &c0, NULL, &hn, &cn, r.cache, cb), TB_ERR_NULL_ARG);
    /* dropout active (training, p > 0, 2 layers) needs a stream */
    ck_assert_int_eq(tb_lstm_forward(ctx, &r.m, TB_MODE_TRAINING, NULL, &x, lens, &h0, &c0, &y,
                                     &hn, &cn, r.cache, cb),
                     TB_ERR_NULL_ARG);
    tb_tensor nod = tb_tensor_3d(NULL, B, T, r.in);
    ck_assert_int_eq(FWD(&nod, lens, &h0, &c0, &y, &hn, &cn, r.cache, cb), TB_ERR_NULL_ARG);
    /* shapes */
    tb_tensor x2 = tb_tensor_2d(r.x, B * T, r.in), xw = tb_tensor_3d(r.x, B, T, r.in - 1);
    ck_assert_int_eq(FWD(&x2, lens, &h0, &c0, &y, &hn, &cn, r.cache, cb), TB_ERR_SHAPE);
    ck_assert_int_eq(FWD(&xw, lens, &h0, &c0, &y, &hn, &cn, r.cache, cb), TB_ERR_SHAPE);
    tb_tensor yb = tb_tensor_3d(r.y, B, T, r.H); /* D*H expected */
    ck_assert_int_eq(FWD(&x, lens, &h0, &c0, &yb, &hn, &cn, r.cache, cb), TB_ERR_SHAPE);
    tb_tensor yt = tb_tensor_3d(r.y, B, T - 1, DH);
    ck_assert_int_eq(FWD(&x, lens, &h0, &c0, &yt, &hn, &cn, r.cache, cb), TB_ERR_SHAPE);
    tb_tensor sb1 = tb_tensor_3d(r.h0, r.L, B * r.D, r.H), sb2 = tb_tensor_3d(r.h0, r.L * r.D, B, r.H + 1);
    tb_tensor sb3 = tb_tensor_2d(r.h0, r.L * r.D * B, r.H);
    tb_tensor *bads[] = {&sb1, &sb2, &sb3};
    for (size_t i = 0; i < ARRAY_LEN(bads); i++) {
        ck_assert_int_eq(FWD(&x, lens, bads[i], &c0, &y, &hn, &cn, r.cache, cb), TB_ERR_SHAPE);
        ck_assert_int_eq(FWD(&x, lens, &h0, bads[i], &y, &hn, &cn, r.cache, cb), TB_ERR_SHAPE);
        ck_assert_int_eq(FWD(&x, lens, &h0, &c0, &y, bads[i], &cn, r.cache, cb), TB_ERR_SHAPE);
        ck_assert_int_eq(FWD(&x, lens, &h0, &c0, &y, &hn, bads[i], r.cache, cb), TB_ERR_SHAPE);
    }
    ck_assert_int_eq(tb_lstm_forward(ctx, &r.m, (tb_mode)3, &rng, &x, lens, &h0, &c0, &y, &hn,
                                     &cn, r.cache, cb),
                     TB_ERR_INVALID_ARG);
    ck_assert(strstr(tb_ctx_error(ctx), "unknown mode") != NULL);
    /* lengths outside 1..T */
    const int32_t l0[3] = {4, 0, 3}, lbig[3] = {5, 1, 3}, lneg[3] = {4, -1, 3};
    const int32_t *lbad[] = {l0, lbig, lneg};
    for (size_t i = 0; i < ARRAY_LEN(lbad); i++) {
        ck_assert_int_eq(FWD(&x, lbad[i], &h0, &c0, &y, &hn, &cn, r.cache, cb), TB_ERR_INVALID_ARG);
        ck_assert(strstr(tb_ctx_error(ctx), "lengths[") != NULL);
    }
    /* cache: too small, misaligned */
    ck_assert_int_eq(FWD(&x, lens, &h0, &c0, &y, &hn, &cn, r.cache, cb - 1), TB_ERR_BUFFER_TOO_SMALL);
    ck_assert_int_eq(FWD(&x, lens, &h0, &c0, &y, &hn, &cn, (char *)r.cache + 2, cb),
                     TB_ERR_INVALID_ARG);
    /* aliasing: y over x, h_n over h0, c_n over y, the cache over x */
    tb_tensor y_on_x = tb_tensor_3d(r.x, B, T, DH);
    float *big = tbt_alloc(B * T * (r.in + DH) * sizeof(float));
    memcpy(big, r.x, B * T * r.in * sizeof(float));
    tb_tensor xb = tb_tensor_3d(big, B, T, r.in), yover = tb_tensor_3d(big + 1, B, T, DH);
    ck_assert_int_eq(FWD(&xb, lens, &h0, &c0, &yover, &hn, &cn, r.cache, cb), TB_ERR_INVALID_ARG);
    ck_assert(strstr(tb_ctx_error(ctx), "y overlaps x") != NULL);
    (void)y_on_x;
    ck_assert_int_eq(FWD(&x, lens, &h0, &c0, &y, &h0, &cn, r.cache, cb), TB_ERR_INVALID_ARG);
    ck_assert_int_eq(FWD(&x, lens, &h0, &c0, &y, &hn, &hn, r.cache, cb), TB_ERR_INVALID_ARG);
    ck_assert_int_eq(FWD(&x, lens, &h0, &c0, &y, &hn, &cn, (void *)r.x, cb), TB_ERR_INVALID_ARG);
    tbt_assert_untouched(r.y, B * T * DH);
    tbt_assert_untouched(r.hn, S);
    tbt_assert_untouched(r.cn, S);
    ck_assert(rng.counter == r.rng0.counter); /* no stream consumed */
    for (size_t i = 0; i < cb; i++)
        ck_assert_msg(((unsigned char *)r.cache)[i] == 0x77,
                      "byte %zu of the cache written by a refused call", i);

    /* backward: no forward yet (the cache holds no header) */
    tb_tensor dy = tb_tensor_3d(r.wy, B, T, DH), dhn = st3(&r, r.wh), dcn = st3(&r, r.wc);
    tb_tensor dx = tb_tensor_3d(r.dx, B, T, r.in), dh0 = st3(&r, r.dh0), dc0 = st3(&r, r.dc0);
#define BWD(xx, ll, hh, cc, dyy, dhh, dcc, dxx, dh00, dc00, ca, cab)                            \
    tb_lstm_backward(ctx, &r.m, (xx), (ll), (hh), (cc), (dyy), (dhh), (dcc), (dxx), (dh00), (dc00), \
                     (ca), (cab))
    ck_assert_int_eq(BWD(&x, lens, &h0, &c0, &dy, &dhn, &dcn, &dx, &dh0, &dc0, r.cache, cb),
                     TB_ERR_STATE);
    CHECK_OK(r.ctx, lrun_forward(&r));
    tbt_fill_sentinel(r.dx, B * T * r.in);
    tbt_fill_sentinel(r.dh0, S);
    tbt_fill_sentinel(r.dc0, S);
    const float g0 = r.m.w_ih[0].grad[0], g1 = r.m.b_hh[3].grad[2];
    ck_assert_int_eq(tb_lstm_backward(NULL, &r.m, &x, lens, &h0, &c0, &dy, &dhn, &dcn, &dx, &dh0,
                                      &dc0, r.cache, cb),
                     TB_ERR_NULL_ARG);
    ck_assert_int_eq(BWD(&x, lens, &h0, &c0, NULL, &dhn, &dcn, &dx, &dh0, &dc0, r.cache, cb),
                     TB_ERR_NULL_ARG);
    ck_assert_int_eq(BWD(&x, lens, &h0, &c0, &dy, &dhn, &dcn, &dx, &dh0, &dc0, NULL, cb),
                     TB_ERR_NULL_ARG);
    ck_assert_int_eq(BWD(NULL, lens, &h0, &c0, &dy, &dhn, &dcn, &dx, &dh0, &dc0, r.cache, cb),
                     TB_ERR_NULL_ARG);
    ck_assert_int_eq(BWD(&x, lens, &h0, &c0, &yt, &dhn, &dcn, &dx, &dh0, &dc0, r.cache, cb),
                     TB_ERR_SHAPE);
    ck_assert_int_eq(BWD(&x, lens, &h0, &c0, &dy, &sb2, &dcn, &dx, &dh0, &dc0, r.cache, cb),
                     TB_ERR_SHAPE);
    ck_assert_int_eq(BWD(&x, lens, &h0, &c0, &dy, &dhn, &dcn, &xw, &dh0, &dc0, r.cache, cb),
                     TB_ERR_SHAPE);
    ck_assert_int_eq(BWD(&x, lens, &h0, &c0, &dy, &dhn, &dcn, &dx, &sb1, &dc0, r.cache, cb),
                     TB_ERR_SHAPE);
    ck_assert_int_eq(BWD(&x, l0, &h0, &c0, &dy, &dhn, &dcn, &dx, &dh0, &dc0, r.cache, cb),
                     TB_ERR_INVALID_ARG);
    ck_assert_int_eq(BWD(&x, lens, &h0, &c0, &dy, &dhn, &dcn, &dx, &dh0, &dc0, r.cache, cb - 1),
                     TB_ERR_BUFFER_TOO_SMALL);
    /* the cache of another call: other lengths, no lengths, no initial
     * states, another B (with a big enough buffer) */
    const int32_t lother[3] = {4, 2, 3};
    ck_assert_int_eq(BWD(&x, lother, &h0, &c0, &dy, &dhn, &dcn, &dx, &dh0, &dc0, r.cache, cb),
                     TB_ERR_STATE);
    ck_assert(strstr(tb_ctx_error(ctx), "lengths") != NULL);
    ck_assert_int_eq(BWD(&x, NULL, &h0, &c0, &dy, &dhn, &dcn, &dx, &dh0, &dc0, r.cache, cb),
                     TB_ERR_STATE);
    ck_assert_int_eq(BWD(&x, lens, NULL, NULL, &dy, &dhn, &dcn, &dx, &dh0, &dc0, r.cache, cb),
                     TB_ERR_STATE);
    ck_assert_int_eq(BWD(&x, lens, &h0, NULL, &dy, &dhn, &dcn, &dx, &dh0, &dc0, r.cache, cb),
                     TB_ERR_STATE);
    tb_tensor x1 = tb_tensor_3d(r.x, 1, T, r.in), dy1 = tb_tensor_3d(r.wy, 1, T, DH);
    tb_tensor dx1 = tb_tensor_3d(r.dx, 1, T, r.in);
    ck_assert_int_eq(BWD(&x1, lens, NULL, NULL, &dy1, NULL, NULL, &dx1, NULL, NULL, r.cache, cb),
                     TB_ERR_STATE);
    /* aliasing: dx over dy, dh0 over dh_n, dx over the cache, dc0 over dh0 */
    float *big2 = tbt_alloc(B * T * (r.in + DH) * sizeof(float));
    memcpy(big2, r.wy, B * T * DH * sizeof(float));
    tb_tensor dyb = tb_tensor_3d(big2, B, T, DH), dx_on_dy = tb_tensor_3d(big2 + 3, B, T, r.in);
    ck_assert_int_eq(BWD(&x, lens, &h0, &c0, &dyb, &dhn, &dcn, &dx_on_dy, &dh0, &dc0, r.cache, cb),
                     TB_ERR_INVALID_ARG);
    ck_assert(strstr(tb_ctx_error(ctx), "dx overlaps dy") != NULL);
    ck_assert_int_eq(BWD(&x, lens, &h0, &c0, &dy, &dhn, &dcn, &dx, &dhn, &dc0, r.cache, cb),
                     TB_ERR_INVALID_ARG);
    ck_assert_int_eq(BWD(&x, lens, &h0, &c0, &dy, &dhn, &dcn, &dx, &dh0, &dh0, r.cache, cb),
                     TB_ERR_INVALID_ARG);
    tb_tensor dx_on_cache = tb_tensor_3d((float *)r.cache + 64, B, T, r.in);
    ck_assert_int_eq(BWD(&x, lens, &h0, &c0, &dy, &dhn, &dcn, &dx_on_cache, &dh0, &dc0, r.cache, cb),
                     TB_ERR_INVALID_ARG);
    tb_tensor dx_on_x = tb_tensor_3d(r.x, B, T, r.in);
    ck_assert_int_eq(BWD(&x, lens, &h0, &c0, &dy, &dhn, &dcn, &dx_on_x, &dh0, &dc0, r.cache, cb),
                     TB_ERR_INVALID_ARG);
    tbt_assert_untouched(r.dx, B * T * r.in);
    tbt_assert_untouched(r.dh0, S);
    tbt_assert_untouched(r.dc0, S);
    ck_assert(r.m.w_ih[0].grad[0] == g0 && r.m.b_hh[3].grad[2] == g1);
    for (size_t k = 0; k < 4; k++)
        for (int i = 0; i < 4; i++)
            for (size_t j = 0; j < lparam(&r.m, k, i)->numel; j++)
                ck_assert(lparam(&r.m, k, i)->grad[j] == 0.0f);
    /* and then it works; dx, dh0, dc0 are optional */
    CHECK_OK(r.ctx, BWD(&x, lens, &h0, &c0, &dy, NULL, NULL, NULL, NULL, NULL, r.cache, cb));
    ck_assert(r.m.w_ih[0].grad[0] != 0.0f);
    free(big), free(big2);
#undef FWD
#undef BWD
    lrun_free(&r);
}
END_TEST

/* ---- names and initialisation -------------------------------------------------- */

START_TEST(lstm_names_and_init)
{
    tb_ctx ctx;
    tbt_ctx_init(&ctx, 2);
    tb_rng rng;
    tb_rng_init(&rng, 99);
    tb_lstm m;
    const tb_lstm_config c = {7, 33, 3, 1, 0.0f};
    CHECK_OK(ctx, tb_lstm_init(&ctx, &m, &c, &rng));
    tb_param_list list;
    CHECK_OK(ctx, tb_param_list_init(&ctx, &list));
    CHECK_OK(ctx, tb_lstm_params(&ctx, &m, "enc.lstm", &list));
    ck_assert_uint_eq(list.count, 24);
    size_t e = 0, total = 0;
    for (size_t l = 0; l < 3; l++)
        for (size_t d = 0; d < 2; d++) {
            static const char *const base[4] = {"weight_ih", "weight_hh", "bias_ih", "bias_hh"};
            for (int i = 0; i < 4; i++, e++) {
                char want[64];
                snprintf(want, sizeof want, "enc.lstm.%s_l%zu%s", base[i], l, d ? "_reverse" : "");
                ck_assert_str_eq(list.items[e].name, want);
                tb_param *p = list.items[e].param;
                ck_assert_ptr_eq(p, lparam(&m, l * 2 + d, i));
                const size_t in = l == 0 ? 7 : 66;
                ck_assert_uint_eq(p->ndim, i < 2 ? 2 : 1);
                ck_assert_uint_eq(p->shape[0], 4 * 33);
                if (i < 2)
                    ck_assert_uint_eq(p->shape[1], i == 0 ? in : 33);
                ck_assert(p->trainable);
                total += p->numel;
            }
        }
    /* PyTorch's count: per layer and direction 4H (in + H + 2) */
    ck_assert_uint_eq(total, 2 * 132 * (7 + 33 + 2) + 4 * 132 * (66 + 33 + 2));
    ck_assert_uint_eq(tb_param_list_numel(&list, 0), total);
    /* uniform(-1/sqrt(H), 1/sqrt(H)) drawn in the list's order from the stream */
    tb_rng again;
    tb_rng_init(&again, 99);
    const float bound = 1.0f / sqrtf(33.0f);
    double lo = 1, hi = -1, sum = 0;
    for (e = 0; e < list.count; e++) {
        tb_param *p = list.items[e].param;
        float *want = tbt_alloc(p->numel * sizeof(float));
        CHECK_OK(ctx, tb_rng_fill_uniform(&ctx, &again, want, p->numel, -bound, bound));
        ck_assert_msg(memcmp(want, p->value, p->numel * sizeof(float)) == 0,
                      "%s is not the stream's next %zu uniforms", list.items[e].name, p->numel);
        for (size_t j = 0; j < p->numel; j++) {
            ck_assert(p->value[j] >= -bound && p->value[j] <= bound);
            ck_assert(p->grad[j] == 0.0f);
            lo = fmin(lo, p->value[j]), hi = fmax(hi, p->value[j]), sum += p->value[j];
        }
        free(want);
    }
    ck_assert_uint_eq(rng.counter, again.counter);
    ck_assert(lo < -0.99 * bound && hi > 0.99 * bound);
    ck_assert(fabs(sum / (double)total) < 0.01 * bound);
    /* without a prefix, the unidirectional names */
    tb_param_list l2;
    tb_lstm u;
    const tb_lstm_config cu = {2, 3, 2, 0, 0.5f};
    CHECK_OK(ctx, tb_lstm_init(&ctx, &u, &cu, &rng));
    CHECK_OK(ctx, tb_param_list_init(&ctx, &l2));
    CHECK_OK(ctx, tb_lstm_params(&ctx, &u, NULL, &l2));
    static const char *const uw[8] = {"weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0",
                                      "weight_ih_l1", "weight_hh_l1", "bias_ih_l1", "bias_hh_l1"};
    ck_assert_uint_eq(l2.count, 8);
    for (size_t i = 0; i < 8; i++)
        ck_assert_str_eq(l2.items[i].name, uw[i]);
    ck_assert_uint_eq(u.w_ih[1].shape[1], 3);
    /* listing twice under the same prefix is a duplicate */
    ck_assert_int_eq(tb_lstm_params(&ctx, &u, NULL, &l2), TB_ERR_DUPLICATE);
    tb_param_list_free(&l2);
    tb_param_list_free(&list);
    tb_lstm_free(&u);
    tb_lstm_free(&m);
}
END_TEST

/* ---- finite differences ------------------------------------------------------------
 * L = sum(wy .* y) + sum(wh .* h_n) + sum(wc .* c_n), forward in float, L
 * in double, central differences with the shared step and tolerance
 * (TBT_FD_*: h = 1e-2, rtol 1e-2, atol 1e-3). The LSTM is smooth (sigmoid,
 * tanh and products of them, |f'''| = O(1) for inputs and weights of O(1)),
 * so the truncation error h^2/6 |f'''| is ~2e-5; the float rounding of L
 * (at most ~100 outputs of |y| < 1, 6e-8 each) divided by 2h is ~3e-4.
 * Every quantity's analytic gradient must also have a norm of at least
 * 50 * atol, so a zero or lost gradient cannot pass on a flat direction.
 */
static void assert_norm(const char *label, const float *g, size_t n)
{
    double s = 0;
    for (size_t i = 0; i < n; i++)
        s += (double)g[i] * g[i];
    ck_assert_msg(sqrt(s) > 50 * TBT_FD_ATOL, "%s: gradient norm %.3g is too small to test",
                  label, sqrt(s));
}

static void fd_check(const lopts *o, const char *tag)
{
    lrun r;
    lrun_init(&r, o);
    CHECK_OK(r.ctx, lrun_forward(&r));
    CHECK_OK(r.ctx, lrun_backward(&r));
    char lbl[256];
    const size_t nx = r.B * r.T * r.in;
    snprintf(lbl, sizeof lbl, "lstm[%s].dx", tag);
    /* padding: no gradient (checked to be exact 0 and numerically 0) */
    for (size_t b = 0; b < r.B; b++)
        for (size_t t = len_at(&r, b); t < r.T; t++)
            for (size_t j = 0; j < r.in; j++)
                ck_assert(r.dx[(b * r.T + t) * r.in + j] == 0.0f);
    assert_norm(lbl, r.dx, nx);
    tbt_gradcheck(lbl, r.x, nx, r.dx, lrun_loss, &r, TBT_FD_H, TBT_FD_RTOL, TBT_FD_ATOL,
                  TBT_FD_MAX_CHECKS);
    if (r.h0) {
        snprintf(lbl, sizeof lbl, "lstm[%s].dh0", tag);
        assert_norm(lbl, r.dh0, r.S);
        tbt_gradcheck(lbl, r.h0, r.S, r.dh0, lrun_loss, &r, TBT_FD_H, TBT_FD_RTOL, TBT_FD_ATOL,
                      TBT_FD_MAX_CHECKS);
        snprintf(lbl, sizeof lbl, "lstm[%s].dc0", tag);
        assert_norm(lbl, r.dc0, r.S);
        tbt_gradcheck(lbl, r.c0, r.S, r.dc0, lrun_loss, &r, TBT_FD_H, TBT_FD_RTOL, TBT_FD_ATOL,
                      TBT_FD_MAX_CHECKS);
    }
    tb_param_list list;
    CHECK_OK(r.ctx, tb_param_list_init(&r.ctx, &list));
    CHECK_OK(r.ctx, tb_lstm_params(&r.ctx, &r.m, NULL, &list));
    for (size_t e = 0; e < list.count; e++) {
        tb_param *p = list.items[e].param;
        snprintf(lbl, sizeof lbl, "lstm[%s].d%s", tag, list.items[e].name);
        assert_norm(lbl, p->grad, p->numel);
        tbt_gradcheck(lbl, p->value, p->numel, p->grad, lrun_loss, &r, TBT_FD_H, TBT_FD_RTOL,
                      TBT_FD_ATOL, TBT_FD_MAX_CHECKS);
    }
    /* a second backward adds the same gradients again */
    float *g1 = tbt_alloc(r.m.w_hh[0].numel * sizeof(float));
    memcpy(g1, r.m.w_hh[0].grad, r.m.w_hh[0].numel * sizeof(float));
    CHECK_OK(r.ctx, lrun_forward(&r));
    CHECK_OK(r.ctx, lrun_backward(&r));
    for (size_t j = 0; j < r.m.w_hh[0].numel; j++)
        ck_assert_float_eq_tol(r.m.w_hh[0].grad[j], 2.0f * g1[j], 1e-6f + 1e-6f * fabsf(g1[j]));
    free(g1);
    tb_param_list_free(&list);
    lrun_free(&r);
}

START_TEST(lstm_gradients)
{
    const int32_t l3[3] = {3, 1, 2}, l2[2] = {1, 4};
    const lopts cases[] = {
        /* L bi B T in H lengths h0 dh dc p mode threads seed */
        {1, 0, 1, 2, 1, 1, NULL, 1, 1, 1, 0.0f, TB_MODE_TRAINING, 1, 501},
        {1, 1, 3, 3, 3, 2, l3, 1, 1, 0, 0.0f, TB_MODE_TRAINING, 2, 502},
        {2, 1, 3, 3, 2, 3, l3, 1, 0, 1, 0.0f, TB_MODE_TRAINING, 2, 503},
        {3, 0, 2, 4, 3, 4, l2, 0, 1, 1, 0.0f, TB_MODE_TRAINING, 3, 504},
        /* training dropout between layers: the same mask on every evaluation */
        {2, 1, 2, 4, 3, 3, l2, 1, 1, 1, 0.4f, TB_MODE_TRAINING, 2, 505},
        {3, 0, 3, 3, 3, 4, l3, 1, 1, 1, 0.3f, TB_MODE_TRAINING, 1, 506},
    };
    for (size_t i = 0; i < ARRAY_LEN(cases); i++) {
        char tag[64];
        snprintf(tag, sizeof tag, "L%zu%s,B%zu,T%zu,in%zu,H%zu%s%s", cases[i].L,
                 cases[i].bidir ? "bi" : "", cases[i].B, cases[i].T, cases[i].in, cases[i].H,
                 cases[i].lengths ? ",lens" : "", cases[i].dropout > 0 ? ",dropout" : "");
        fd_check(&cases[i], tag);
    }
}
END_TEST

/* A frozen parameter: its gradient untouched, the others and dx unchanged. */
START_TEST(lstm_frozen_parameter)
{
    const int32_t lens[3] = {2, 5, 3};
    const lopts o = {2, 1, 3, 5, 4, 3, lens, 1, 1, 1, 0.0f, TB_MODE_TRAINING, 2, 77};
    lrun a, b;
    lrun_init(&a, &o);
    lrun_init(&b, &o);
    b.m.w_ih[1].trainable = 0;
    float *saved = b.m.b_hh[2].grad; /* no gradient buffer: skipped as well */
    b.m.b_hh[2].grad = NULL;
    tbt_fill_sentinel(b.m.w_ih[1].grad, b.m.w_ih[1].numel);
    tbt_fill_sentinel(saved, b.m.b_hh[2].numel);
    CHECK_OK(a.ctx, lrun_forward(&a));
    CHECK_OK(a.ctx, lrun_backward(&a));
    CHECK_OK(b.ctx, lrun_forward(&b));
    CHECK_OK(b.ctx, lrun_backward(&b));
    tbt_assert_untouched(b.m.w_ih[1].grad, b.m.w_ih[1].numel);
    tbt_assert_untouched(saved, b.m.b_hh[2].numel);
    ck_assert(memcmp(a.dx, b.dx, a.B * a.T * a.in * sizeof(float)) == 0);
    ck_assert(memcmp(a.dh0, b.dh0, a.S * sizeof(float)) == 0);
    ck_assert(memcmp(a.m.w_hh[1].grad, b.m.w_hh[1].grad, a.m.w_hh[1].numel * sizeof(float)) == 0);
    ck_assert(memcmp(a.m.b_ih[2].grad, b.m.b_ih[2].grad, a.m.b_ih[2].numel * sizeof(float)) == 0);
    ck_assert(memcmp(a.m.w_ih[0].grad, b.m.w_ih[0].grad, a.m.w_ih[0].numel * sizeof(float)) == 0);
    b.m.b_hh[2].grad = saved;
    lrun_free(&a);
    lrun_free(&b);
}
END_TEST

/* ---- dropout ------------------------------------------------------------------- */

static void copy_weights(tb_lstm *dst, size_t kd, const tb_lstm *src, size_t ks)
{
    for (int i = 0; i < 4; i++) {
        tb_param *a = lparam(dst, kd, i);
        const tb_param *b = lparam((tb_lstm *)src, ks, i);
        ck_assert_uint_eq(a->numel, b->numel);
        memcpy(a->value, b->value, a->numel * sizeof(float));
    }
}

START_TEST(lstm_dropout)
{
    enum { B = 3, T = 6, IN = 4, H = 5 };
    const int32_t lens[B] = {6, 2, 4};
    for (int bidir = 0; bidir < 2; bidir++) {
        const size_t D = bidir ? 2 : 1, DH = D * H, S2 = 2 * D * B * H, S1 = D * B * H;
        const lopts o = {2, bidir, B, T, IN, H, lens, 1, 1, 1, 0.35f, TB_MODE_TRAINING, 2,
                         600 + (uint64_t)bidir};
        lrun r;
        lrun_init(&r, &o);
        /* inference with p > 0 is p = 0 exactly, and draws nothing */
        lrun q;
        lopts o0 = o;
        o0.dropout = 0.0f;
        lrun_init(&q, &o0);
        r.mode = TB_MODE_INFERENCE;
        CHECK_OK(r.ctx, lrun_forward(&r));
        CHECK_OK(q.ctx, lrun_forward(&q));
        ck_assert(memcmp(r.y, q.y, B * T * DH * sizeof(float)) == 0);
        ck_assert(memcmp(r.hn, q.hn, S2 * sizeof(float)) == 0);
        ck_assert(memcmp(r.cn, q.cn, S2 * sizeof(float)) == 0);
        CHECK_OK(r.ctx, lrun_backward(&r));
        CHECK_OK(q.ctx, lrun_backward(&q));
        ck_assert(memcmp(r.dx, q.dx, B * T * IN * sizeof(float)) == 0);
        ck_assert(memcmp(r.m.w_ih[0].grad, q.m.w_ih[0].grad, r.m.w_ih[0].numel * sizeof(float)) == 0);
        tb_rng none = r.rng0;
        tb_tensor x = tb_tensor_3d(r.x, B, T, IN), y = tb_tensor_3d(r.y, B, T, DH);
        CHECK_OK(r.ctx, tb_lstm_forward(&r.ctx, &r.m, TB_MODE_INFERENCE, NULL, &x, lens, NULL,
                                        NULL, &y, NULL, NULL, NULL, 0));
        CHECK_OK(r.ctx, tb_lstm_forward(&r.ctx, &r.m, TB_MODE_INFERENCE, &none, &x, lens, NULL,
                                        NULL, &y, NULL, NULL, NULL, 0));
        ck_assert(none.counter == r.rng0.counter);
        /* training: the stream advances by B*T*D*H for the one dropout */
        r.mode = TB_MODE_TRAINING;
        zero_grads(&r.m);
        tb_rng rng = r.rng0;
        tb_tensor h0 = st3(&r, r.h0), c0 = st3(&r, r.c0), hn = st3(&r, r.hn), cn = st3(&r, r.cn);
        CHECK_OK(r.ctx, tb_lstm_forward(&r.ctx, &r.m, TB_MODE_TRAINING, &rng, &x, lens, &h0, &c0,
                                        &y, &hn, &cn, r.cache, r.cache_bytes));
        ck_assert(rng.counter == r.rng0.counter + B * T * DH);
        ck_assert(memcmp(r.y, q.y, B * T * DH * sizeof(float)) != 0);
        CHECK_OK(r.ctx, lrun_backward(&r));

        /* by hand: layer 0 alone, our dropout on its output, layer 1 alone */
        lrun a, b;
        lopts oa = o0, ob = o0;
        oa.L = 1, ob.L = 1, ob.in = DH;
        lrun_init(&a, &oa);
        lrun_init(&b, &ob);
        for (size_t d = 0; d < D; d++) {
            copy_weights(&a.m, d, &r.m, d);
            copy_weights(&b.m, d, &r.m, D + d);
        }
        memcpy(a.x, r.x, B * T * IN * sizeof(float));
        memcpy(a.h0, r.h0, S1 * sizeof(float)), memcpy(a.c0, r.c0, S1 * sizeof(float));
        memcpy(b.h0, r.h0 + S1, S1 * sizeof(float)), memcpy(b.c0, r.c0 + S1, S1 * sizeof(float));
        CHECK_OK(a.ctx, lrun_forward(&a));
        tb_rng drng = r.rng0;
        tb_dropout_cache dcache;
        tb_tensor ay = tb_tensor_3d(a.y, B, T, DH), bx = tb_tensor_3d(b.x, B, T, DH);
        CHECK_OK(a.ctx, tb_dropout_forward(&a.ctx, TB_MODE_TRAINING, 0.35f, &drng, &ay, &bx, &dcache));
        CHECK_OK(b.ctx, lrun_forward(&b));
        ck_assert_msg(memcmp(b.y, r.y, B * T * DH * sizeof(float)) == 0,
                      "2-layer dropout output differs from layer 0 -> dropout -> layer 1");
        ck_assert(memcmp(a.hn, r.hn, S1 * sizeof(float)) == 0);
        ck_assert(memcmp(b.hn, r.hn + S1, S1 * sizeof(float)) == 0);
        ck_assert(memcmp(b.cn, r.cn + S1, S1 * sizeof(float)) == 0);
        /* backward by hand: layer 1 with dy and its dh_n, dc_n; through the
         * mask; layer 0 with the result */
        memcpy(b.wy, r.wy, B * T * DH * sizeof(float));
        memcpy(b.wh, r.wh + S1, S1 * sizeof(float)), memcpy(b.wc, r.wc + S1, S1 * sizeof(float));
        memcpy(a.wh, r.wh, S1 * sizeof(float)), memcpy(a.wc, r.wc, S1 * sizeof(float));
        CHECK_OK(b.ctx, lrun_backward(&b));
        tb_tensor bdx = tb_tensor_3d(b.dx, B, T, DH), awy = tb_tensor_3d(a.wy, B, T, DH);
        CHECK_OK(a.ctx, tb_dropout_backward(&a.ctx, &bdx, &dcache, &awy));
        CHECK_OK(a.ctx, lrun_backward(&a));
        ck_assert(memcmp(a.dx, r.dx, B * T * IN * sizeof(float)) == 0);
        ck_assert(memcmp(a.dh0, r.dh0, S1 * sizeof(float)) == 0);
        ck_assert(memcmp(a.dc0, r.dc0, S1 * sizeof(float)) == 0);
        ck_assert(memcmp(b.dh0, r.dh0 + S1, S1 * sizeof(float)) == 0);
        ck_assert(memcmp(b.dc0, r.dc0 + S1, S1 * sizeof(float)) == 0);
        for (size_t d = 0; d < D; d++)
            for (int i = 0; i < 4; i++) {
                const tb_param *pa = lparam(&a.m, d, i), *pb = lparam(&b.m, d, i);
                ck_assert_msg(memcmp(pa->grad, lparam(&r.m, d, i)->grad, pa->numel * 4) == 0,
                              "layer 0 gradient %d/%zu differs", i, d);
                ck_assert_msg(memcmp(pb->grad, lparam(&r.m, D + d, i)->grad, pb->numel * 4) == 0,
                              "layer 1 gradient %d/%zu differs", i, d);
            }
        lrun_free(&a), lrun_free(&b), lrun_free(&q), lrun_free(&r);
    }
}
END_TEST

/* ---- padding ------------------------------------------------------------------
 * Steps past a row's length are never read: any value there (also NaN and
 * infinity) leaves every output and gradient bitwise the same; y and dx are
 * exactly 0 there, and dy there is ignored. */
START_TEST(lstm_padding)
{
    enum { B = 4, T = 7, IN = 3, H = 5 };
    const int32_t lens[B] = {1, 7, 3, 5};
    for (int bidir = 0; bidir < 2; bidir++) {
        const lopts o = {2, bidir, B, T, IN, H, lens, 1, 1, 1, 0.2f, TB_MODE_TRAINING, 3,
                         700 + (uint64_t)bidir};
        const size_t D = bidir ? 2 : 1, DH = D * H;
        lrun a, b;
        lrun_init(&a, &o);
        lrun_init(&b, &o);
        const float junk[3] = {NAN, INFINITY, 1e30f};
        for (size_t bb = 0; bb < B; bb++)
            for (size_t t = (size_t)lens[bb]; t < T; t++) {
                for (size_t j = 0; j < IN; j++)
                    b.x[(bb * T + t) * IN + j] = junk[(t + j) % 3];
                for (size_t j = 0; j < DH; j++)
                    b.wy[(bb * T + t) * DH + j] = junk[(t + j + 1) % 3];
            }
        tbt_fill_sentinel(b.y, B * T * DH);
        tbt_fill_sentinel(b.dx, B * T * IN);
        CHECK_OK(a.ctx, lrun_forward(&a));
        CHECK_OK(b.ctx, lrun_forward(&b));
        CHECK_OK(a.ctx, lrun_backward(&a));
        CHECK_OK(b.ctx, lrun_backward(&b));
        for (size_t bb = 0; bb < B; bb++)
            for (size_t t = (size_t)lens[bb]; t < T; t++) {
                for (size_t j = 0; j < DH; j++)
                    ck_assert(b.y[(bb * T + t) * DH + j] == 0.0f);
                for (size_t j = 0; j < IN; j++)
                    ck_assert(b.dx[(bb * T + t) * IN + j] == 0.0f);
            }
        ck_assert(memcmp(a.y, b.y, B * T * DH * sizeof(float)) == 0);
        ck_assert(memcmp(a.hn, b.hn, a.S * sizeof(float)) == 0);
        ck_assert(memcmp(a.cn, b.cn, a.S * sizeof(float)) == 0);
        ck_assert(memcmp(a.dx, b.dx, B * T * IN * sizeof(float)) == 0);
        ck_assert(memcmp(a.dh0, b.dh0, a.S * sizeof(float)) == 0);
        ck_assert(memcmp(a.dc0, b.dc0, a.S * sizeof(float)) == 0);
        for (size_t k = 0; k < 2 * D; k++)
            for (int i = 0; i < 4; i++)
                ck_assert_msg(memcmp(lparam(&a.m, k, i)->grad, lparam(&b.m, k, i)->grad,
                                     lparam(&a.m, k, i)->numel * sizeof(float)) == 0,
                              "padding reached gradient %d of entry %zu (bidir %d)", i, k, bidir);
        /* lengths all T equals lengths NULL, bitwise */
        lrun c, d;
        lopts of = o;
        const int32_t full[B] = {T, T, T, T};
        of.lengths = full;
        lrun_init(&c, &of);
        of.lengths = NULL;
        lrun_init(&d, &of);
        CHECK_OK(c.ctx, lrun_forward(&c));
        CHECK_OK(d.ctx, lrun_forward(&d));
        CHECK_OK(c.ctx, lrun_backward(&c));
        CHECK_OK(d.ctx, lrun_backward(&d));
        ck_assert(memcmp(c.y, d.y, B * T * DH * sizeof(float)) == 0);
        ck_assert(memcmp(c.dx, d.dx, B * T * IN * sizeof(float)) == 0);
        ck_assert(memcmp(c.m.w_hh[1].grad, d.m.w_hh[1].grad, c.m.w_hh[1].numel * 4) == 0);
        lrun_free(&a), lrun_free(&b), lrun_free(&c), lrun_free(&d);
    }
}
END_TEST

/* One initial state given, the other NULL: NULL means zeros, bitwise, and
 * the gradients of both states are still written when asked for. */
START_TEST(lstm_partial_initial_state)
{
    const int32_t lens[3] = {5, 2, 4};
    const lopts o = {2, 1, 3, 5, 3, 4, lens, 1, 1, 1, 0.0f, TB_MODE_TRAINING, 2, 901};
    for (int which = 0; which < 2; which++) {
        lrun a, b;
        lrun_init(&a, &o);
        lrun_init(&b, &o);
        float *keep = which ? b.h0 : b.c0; /* b: this one NULL; a: the same as zeros */
        memset(which ? a.h0 : a.c0, 0, a.S * sizeof(float));
        if (which)
            b.h0 = NULL;
        else
            b.c0 = NULL;
        CHECK_OK(a.ctx, lrun_forward(&a));
        CHECK_OK(b.ctx, lrun_forward(&b));
        CHECK_OK(a.ctx, lrun_backward(&a));
        CHECK_OK(b.ctx, lrun_backward(&b));
        const size_t DH = a.D * a.H;
        ck_assert(memcmp(a.y, b.y, a.B * a.T * DH * 4) == 0);
        ck_assert(memcmp(a.hn, b.hn, a.S * 4) == 0 && memcmp(a.cn, b.cn, a.S * 4) == 0);
        ck_assert(memcmp(a.dx, b.dx, a.B * a.T * a.in * 4) == 0);
        ck_assert(memcmp(a.dh0, b.dh0, a.S * 4) == 0 && memcmp(a.dc0, b.dc0, a.S * 4) == 0);
        for (size_t k = 0; k < 4; k++)
            for (int i = 0; i < 4; i++)
                ck_assert(memcmp(lparam(&a.m, k, i)->grad, lparam(&b.m, k, i)->grad,
                                 lparam(&a.m, k, i)->numel * 4) == 0);
        /* and the cache remembers which one was given */
        tb_tensor x = tb_tensor_3d(b.x, b.B, b.T, b.in), dy = tb_tensor_3d(b.wy, b.B, b.T, DH);
        tb_tensor st = st3(&b, keep);
        ck_assert_int_eq(tb_lstm_backward(&b.ctx, &b.m, &x, lens, which ? &st : NULL,
                                          which ? NULL : &st, &dy, NULL, NULL, NULL, NULL, NULL,
                                          b.cache, b.cache_bytes),
                         TB_ERR_STATE);
        if (which)
            b.h0 = keep;
        else
            b.c0 = keep;
        lrun_free(&a), lrun_free(&b);
    }
}
END_TEST

/* ---- threads --------------------------------------------------------------------
 * The recurrence splits rows into threads/D blocks, so 1, 2, 3 and 5
 * threads give different blocks (and, for B = 7, blocks of unequal size);
 * every output and gradient must be bitwise the same. */
START_TEST(lstm_threads)
{
    const int32_t l7[7] = {9, 1, 4, 9, 7, 2, 8}, l13[13] = {40, 3, 17, 40, 1, 22, 39, 40, 8, 31, 12, 40, 5};
    const lopts shapes[] = {
        {2, 1, 7, 9, 5, 6, l7, 1, 1, 1, 0.3f, TB_MODE_TRAINING, 1, 801},
        {3, 0, 7, 9, 5, 6, l7, 1, 1, 0, 0.3f, TB_MODE_TRAINING, 1, 802},
        {2, 1, 13, 40, 33, 40, l13, 1, 1, 1, 0.1f, TB_MODE_TRAINING, 1, 803},
        {1, 0, 13, 40, 17, 33, NULL, 0, 0, 0, 0.0f, TB_MODE_TRAINING, 1, 804},
    };
    const int threads[] = {1, 2, 3, 5};
    for (size_t s = 0; s < ARRAY_LEN(shapes); s++) {
        lrun ref;
        lrun_init(&ref, &shapes[s]);
        CHECK_OK(ref.ctx, lrun_forward(&ref));
        CHECK_OK(ref.ctx, lrun_backward(&ref));
        const size_t DH = ref.D * ref.H, BT = ref.B * ref.T;
        for (size_t ti = 1; ti < ARRAY_LEN(threads); ti++) {
            lopts o = shapes[s];
            o.threads = threads[ti];
            lrun r;
            lrun_init(&r, &o);
            CHECK_OK(r.ctx, lrun_forward(&r));
            CHECK_OK(r.ctx, lrun_backward(&r));
            ck_assert_msg(memcmp(r.y, ref.y, BT * DH * 4) == 0, "shape %zu: y with %d threads", s,
                          threads[ti]);
            ck_assert(memcmp(r.hn, ref.hn, r.S * 4) == 0 && memcmp(r.cn, ref.cn, r.S * 4) == 0);
            ck_assert_msg(memcmp(r.dx, ref.dx, BT * r.in * 4) == 0, "shape %zu: dx with %d threads",
                          s, threads[ti]);
            if (r.h0)
                ck_assert(memcmp(r.dh0, ref.dh0, r.S * 4) == 0 &&
                          memcmp(r.dc0, ref.dc0, r.S * 4) == 0);
            for (size_t k = 0; k < r.L * r.D; k++)
                for (int i = 0; i < 4; i++)
                    ck_assert_msg(memcmp(lparam(&r.m, k, i)->grad, lparam(&ref.m, k, i)->grad,
                                         lparam(&r.m, k, i)->numel * 4) == 0,
                                  "shape %zu: gradient %d of entry %zu with %d threads", s, i, k,
                                  threads[ti]);
            lrun_free(&r);
        }
        lrun_free(&ref);
    }
}
END_TEST

/* ---- PyTorch oracle ---------------------------------------------------------------
 * Each result is compared with float32 PyTorch and with the same module in
 * float64 (rounded to float32): |got - want| <= atol + rtol |want|, with
 * atol = LSTM_ATOL_REL times the quantity's unit (its largest float64
 * magnitude in the case). Measured over the 13 cases on all three kernel
 * families (the "units" lines): the largest |got - want| is 1.9e-6 units
 * for dx (which cancels most), 6.8e-7 for the weight and bias gradients,
 * 5.3e-7 for dh0 and 2.9e-7 for y, h_n, c_n, dc0, against float32 and
 * float64 alike (PyTorch float32 is as far from float64). The
 * recurrence carries one step's rounding through the later ones (~T ulp at
 * T = 17) and the weight gradients sum B*T such terms, so:
 *   LSTM_RTOL 2e-5 (~340 ulp) for the significant elements,
 *   LSTM_ATOL_REL 5e-6 (2.6x the worst measured) for those that cancel.
 * A 1e-3 relative error on any element above 5e-3 units fails.
 */
static const double LSTM_RTOL = 2e-5, LSTM_ATOL_REL = 5e-6;

static const char *const lstm_cases[] = {
    "lstm_l1uni_b1t1i1h1",
    "lstm_l1uni_b3t7i3h5_lens_h0_dhn_dcn",
    "lstm_l1bi_b3t7i17h5_lens_dhn_dcn",
    "lstm_l1bi_b1t17i3h33_h0_dhn_dcn",
    "lstm_l1uni_b3t17i17h17_lens_h0_dhn",
    "lstm_l2bi_b3t17i3h17_lens_h0_dhn_dcn",
    "lstm_l2uni_b1t2i17h33_h0",
    "lstm_l2bi_b3t2i1h5_lens",
    "lstm_l2uni_b3t17i17h33_lens_h0_dcn",
    "lstm_l3bi_b3t17i17h33_lens_h0_dhn_dcn",
    "lstm_l3uni_b3t7i1h1_lens",
    "lstm_l3bi_b1t1i3h17_h0_dhn_dcn",
    "lstm_l3bi_b3t7i3h5_dhn",
};

static void cmp_both(const tbt_ref *ref, const char *blk, const char *what, const float *got)
{
    char name[192], lbl[320];
    tbt_reft w = tbt_ref_get(ref, what);
    snprintf(name, sizeof name, "%s_f64", what);
    tbt_reft w64 = tbt_ref_get(ref, name);
    ck_assert_uint_eq(w.n, w64.n);
    const double unit = tbt_max_abs_f(w64.data, w64.n);
    snprintf(lbl, sizeof lbl, "%s.%s", blk, what);
    if (unit == 0.0 && tbt_max_abs_f(w.data, w.n) == 0.0) {
        /* exactly 0 in PyTorch too (W_hh's gradient with one step from a
         * zero state): ours must be exactly 0 */
        ck_assert_msg(tbt_max_abs_f(got, w.n) == 0.0, "%s: PyTorch's is exactly 0, ours is not",
                      lbl);
        return;
    }
    tbt_assert_close(lbl, got, w.data, w.n, LSTM_RTOL, LSTM_ATOL_REL * unit);
    snprintf(lbl, sizeof lbl, "%s.%s(f64)", blk, what);
    tbt_assert_close(lbl, got, w64.data, w.n, LSTM_RTOL, LSTM_ATOL_REL * unit);
    const tbt_cmp c32 = tbt_compare(got, w.data, w.n, LSTM_RTOL, LSTM_ATOL_REL * unit);
    const tbt_cmp c64 = tbt_compare(got, w64.data, w.n, LSTM_RTOL, LSTM_ATOL_REL * unit);
    printf("  units %s.%s: max |err| / unit = %.2e (f32), %.2e (f64)\n", blk, what,
           c32.max_abs_err / unit, c64.max_abs_err / unit);
}

START_TEST(test_oracle_lstm)
{
    const char *name = lstm_cases[_i];
    tbt_ref *ref = tbt_ref_load(name);
    tbt_reft x = tbt_ref_get(ref, "x");
    ck_assert_uint_eq(x.ndim, 3);
    const size_t L = (size_t)tbt_ref_i32_scalar(ref, "layers");
    const int bidir = tbt_ref_i32_scalar(ref, "bidirectional");
    const size_t H = (size_t)tbt_ref_i32_scalar(ref, "hidden");
    const int has_len = tbt_ref_has(ref, "lengths"), has_h0 = tbt_ref_has(ref, "h0");
    const int has_dh = tbt_ref_has(ref, "dh_n"), has_dc = tbt_ref_has(ref, "dc_n");
    const int32_t *lens = NULL;
    if (has_len) {
        size_t n;
        lens = tbt_ref_i32(ref, "lengths", &n);
        ck_assert_uint_eq(n, x.shape[0]);
    }
    const lopts o = {L, bidir, x.shape[0], x.shape[1], x.shape[2], H, lens, has_h0, has_dh,
                     has_dc, 0.0f, TB_MODE_TRAINING, 2, 1};
    lrun r;
    lrun_init(&r, &o);
    const size_t B = r.B, T = r.T, DH = r.D * H;
    /* names: PyTorch's _flat_weights_names, in order */
    size_t nn;
    const int32_t *codes = tbt_ref_i32(ref, "names", &nn);
    char *names = tbt_alloc(nn + 1);
    for (size_t i = 0; i < nn; i++)
        names[i] = (char)codes[i];
    tb_param_list list;
    CHECK_OK(r.ctx, tb_param_list_init(&r.ctx, &list));
    CHECK_OK(r.ctx, tb_lstm_params(&r.ctx, &r.m, NULL, &list));
    char *save = NULL, *tok = strtok_r(names, "\n", &save);
    for (size_t e = 0; e < list.count; e++, tok = strtok_r(NULL, "\n", &save)) {
        ck_assert_msg(tok != NULL, "PyTorch has fewer parameters than tb_lstm_params");
        ck_assert_str_eq(list.items[e].name, tok);
        tbt_reft w = tbt_ref_get(ref, tok);
        tb_param *p = list.items[e].param;
        ck_assert_uint_eq(w.n, p->numel);
        ck_assert_uint_eq(w.ndim, p->ndim);
        for (size_t d = 0; d < w.ndim; d++)
            ck_assert_uint_eq(w.shape[d], p->shape[d]);
        memcpy(p->value, w.data, w.n * sizeof(float));
    }
    ck_assert_msg(tok == NULL, "PyTorch has more parameters than tb_lstm_params");
    zero_grads(&r.m);
    memcpy(r.x, x.data, x.n * sizeof(float));
    if (has_h0) {
        tbt_reft h0 = tbt_ref_get(ref, "h0"), c0 = tbt_ref_get(ref, "c0");
        ck_assert_uint_eq(h0.n, r.S);
        memcpy(r.h0, h0.data, r.S * sizeof(float));
        memcpy(r.c0, c0.data, r.S * sizeof(float));
    }
    tbt_reft dy = tbt_ref_get(ref, "dy");
    ck_assert_uint_eq(dy.n, B * T * DH);
    memcpy(r.wy, dy.data, dy.n * sizeof(float));
    if (has_dh)
        memcpy(r.wh, tbt_ref_get(ref, "dh_n").data, r.S * sizeof(float));
    if (has_dc)
        memcpy(r.wc, tbt_ref_get(ref, "dc_n").data, r.S * sizeof(float));
    free(r.y), free(r.hn), free(r.cn), free(r.dx);
    r.y = tbt_nan_buffer(B * T * DH), r.hn = tbt_nan_buffer(r.S), r.cn = tbt_nan_buffer(r.S);
    r.dx = tbt_nan_buffer(B * T * r.in);
    if (has_h0) {
        free(r.dh0), free(r.dc0);
        r.dh0 = tbt_nan_buffer(r.S), r.dc0 = tbt_nan_buffer(r.S);
    }
    CHECK_OK(r.ctx, lrun_forward(&r));
    CHECK_OK(r.ctx, lrun_backward(&r));

    char blk[96];
    snprintf(blk, sizeof blk, "lstm[%s]", name + 5);
    cmp_both(ref, blk, "y", r.y);
    cmp_both(ref, blk, "h_n", r.hn);
    cmp_both(ref, blk, "c_n", r.cn);
    cmp_both(ref, blk, "dx", r.dx);
    if (has_h0) {
        cmp_both(ref, blk, "dh0", r.dh0);
        cmp_both(ref, blk, "dc0", r.dc0);
    }
    for (size_t e = 0; e < list.count; e++) {
        char gname[160];
        snprintf(gname, sizeof gname, "d%s", list.items[e].name);
        cmp_both(ref, blk, gname, list.items[e].param->grad);
    }
    /* exact zeros past the lengths */
    for (size_t b = 0; b < B; b++)
        for (size_t t = len_at(&r, b); t < T; t++) {
            for (size_t j = 0; j < DH; j++)
                ck_assert(r.y[(b * T + t) * DH + j] == 0.0f);
            for (size_t j = 0; j < r.in; j++)
                ck_assert(r.dx[(b * T + t) * r.in + j] == 0.0f);
        }
    free(names);
    tb_param_list_free(&list);
    lrun_free(&r);
    tbt_ref_free(ref);
}
END_TEST

START_TEST(test_lstm_all_cases_tested)
{
    const tbt_names names = {lstm_cases, ARRAY_LEN(lstm_cases)};
    ck_assert_uint_eq(tbt_check_manifest("lstm_cases.txt", "test_lstm.c", tbt_name_listed, &names),
                      ARRAY_LEN(lstm_cases));
}
END_TEST

Suite *suite_lstm(void)
{
    Suite *s = suite_create("lstm");
    TCase *t0 = tcase_create("errors");
    tcase_add_test(t0, lstm_init_errors);
    tcase_add_test(t0, lstm_call_errors);
    tcase_add_test(t0, lstm_names_and_init);
    suite_add_tcase(s, t0);
    TCase *t1 = tcase_create("finite_differences");
    tcase_set_timeout(t1, 300);
    tcase_add_test(t1, lstm_gradients);
    tcase_add_test(t1, lstm_frozen_parameter);
    suite_add_tcase(s, t1);
    TCase *t2 = tcase_create("semantics");
    tcase_set_timeout(t2, 120);
    tcase_add_test(t2, lstm_dropout);
    tcase_add_test(t2, lstm_padding);
    tcase_add_test(t2, lstm_partial_initial_state);
    tcase_add_test(t2, lstm_threads);
    suite_add_tcase(s, t2);
    TCase *t3 = tcase_create("pytorch");
    tcase_set_timeout(t3, 120);
    tcase_add_loop_test(t3, test_oracle_lstm, 0, (int)ARRAY_LEN(lstm_cases));
    tcase_add_test(t3, test_lstm_all_cases_tested);
    suite_add_tcase(s, t3);
    return s;
}
