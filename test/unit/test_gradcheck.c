/*
 * Finite-difference checks of every block's backward pass on odd shapes.
 *
 * Each check uses the scalar L = sum(w .* y) for a fixed random w (so
 * dL/dy = w), forward in float, L accumulated in double, central differences
 * with step h = 1e-2. Justification of the tolerance (rtol 1e-2, atol 1e-3):
 * float rounding of L is about 1e-7 * sum|w y| <= ~1e-5 here, which divided
 * by 2h gives <= 5e-4; the truncation error h^2/6 * |f'''| is <= ~2e-5 for
 * these smooth functions. A zero or sign-flipped gradient fails, because
 * every check also requires max |numeric| > 10 * atol.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "suites.h"
#include "testutil.h"

#define H 1e-2f
#define RTOL 1e-2
#define ATOL 1e-3
#define MAX_CHECKS 600

/* ---- linear ------------------------------------------------------------ */

typedef struct linear_prob {
    tb_ctx ctx;
    tb_linear lin;
    float *x, *y, *w;
    size_t n, in, out;
} linear_prob;

static double linear_loss(void *user)
{
    linear_prob *p = user;
    tb_tensor x = tb_tensor_2d(p->x, p->n, p->in), y = tb_tensor_2d(p->y, p->n, p->out);
    ck_assert_int_eq(tb_linear_forward(&p->ctx, &p->lin, &x, &y), TB_OK);
    return tbt_dot(p->w, p->y, p->n * p->out);
}

static void check_linear_layout(size_t n, size_t in, size_t out, int bias,
                                tb_linear_layout layout)
{
    linear_prob p;
    tbt_ctx_init(&p.ctx, 1);
    tb_rng rng;
    tb_rng_init(&rng, n * 1000 + in * 10 + out);
    ck_assert_int_eq(tb_linear_init_layout(&p.ctx, &p.lin, in, out, bias, layout, &rng), TB_OK);
    ck_assert_uint_eq(p.lin.weight.shape[0], layout == TB_LINEAR_IN_OUT ? in : out);
    p.n = n, p.in = in, p.out = out;
    p.x = tbt_alloc(n * in * sizeof(float));
    p.y = tbt_alloc(n * out * sizeof(float));
    p.w = tbt_alloc(n * out * sizeof(float));
    float *dx = tbt_alloc(n * in * sizeof(float));
    tbt_fill_uniform(p.x, n * in, -1, 1, 1);
    tbt_fill_uniform(p.w, n * out, -1, 1, 2);
    tb_tensor x = tb_tensor_2d(p.x, n, in), dy = tb_tensor_2d(p.w, n, out),
              dxt = tb_tensor_2d(dx, n, in);
    ck_assert_int_eq(tb_linear_backward(&p.ctx, &p.lin, &x, &dy, &dxt), TB_OK);
    char label[96];
    const char *tag = layout == TB_LINEAR_IN_OUT ? (bias ? ",in_out" : ",nobias,in_out")
                                                 : (bias ? "" : ",nobias");
    snprintf(label, sizeof label, "linear[%zux%zu->%zu%s].dx", n, in, out, tag);
    tbt_gradcheck(label, p.x, n * in, dx, linear_loss, &p, H, RTOL, ATOL, MAX_CHECKS);
    snprintf(label, sizeof label, "linear[%zux%zu->%zu%s].dW", n, in, out, tag);
    tbt_gradcheck(label, p.lin.weight.value, in * out, p.lin.weight.grad, linear_loss, &p, H,
                  RTOL, ATOL, MAX_CHECKS);
    if (bias) {
        snprintf(label, sizeof label, "linear[%zux%zu->%zu].db", n, in, out);
        tbt_gradcheck(label, p.lin.bias.value, out, p.lin.bias.grad, linear_loss, &p, H, RTOL,
                      ATOL, MAX_CHECKS);
    }
    tb_linear_free(&p.lin);
    free(p.x), free(p.y), free(p.w), free(dx);
}

static void check_linear(size_t n, size_t in, size_t out, int bias)
{
    check_linear_layout(n, in, out, bias, TB_LINEAR_OUT_IN);
}

START_TEST(linear_gradients)
{
    check_linear(1, 1, 1, 1);
    check_linear(3, 17, 5, 1);
    check_linear(17, 33, 50, 1);
    check_linear(5, 3, 17, 0);
    /* GPT-2's Conv1D layout, W (in, out). */
    check_linear_layout(1, 1, 1, 1, TB_LINEAR_IN_OUT);
    check_linear_layout(3, 17, 5, 1, TB_LINEAR_IN_OUT);
    check_linear_layout(17, 33, 50, 0, TB_LINEAR_IN_OUT);
}
END_TEST

/* The (in, out) layout computes what nn.Linear computes with W transposed,
 * and a view over another layer's parameters (weight tying) shares its
 * values and accumulates into its gradients. */
START_TEST(linear_layout_and_view)
{
    enum { N = 7, IN = 19, OUT = 33 };
    tb_ctx ctx;
    tbt_ctx_init(&ctx, 2);
    tb_rng rng;
    tb_rng_init(&rng, 4);
    tb_linear a, b, v;
    ck_assert_int_eq(tb_linear_init_layout(&ctx, &a, IN, OUT, 1, TB_LINEAR_OUT_IN, &rng), TB_OK);
    ck_assert_int_eq(tb_linear_init_layout(&ctx, &b, IN, OUT, 1, TB_LINEAR_IN_OUT, &rng), TB_OK);
    for (size_t o = 0; o < OUT; o++)
        for (size_t i = 0; i < IN; i++)
            b.weight.value[i * OUT + o] = a.weight.value[o * IN + i];
    memcpy(b.bias.value, a.bias.value, OUT * sizeof(float));
    float x[N * IN], ya[N * OUT], yb[N * OUT], dy[N * OUT], dxa[N * IN], dxb[N * IN];
    tbt_fill_uniform(x, N * IN, -1, 1, 5);
    tbt_fill_uniform(dy, N * OUT, -1, 1, 6);
    tb_tensor xt = tb_tensor_2d(x, N, IN), yat = tb_tensor_2d(ya, N, OUT),
              ybt = tb_tensor_2d(yb, N, OUT), dyt = tb_tensor_2d(dy, N, OUT),
              dxat = tb_tensor_2d(dxa, N, IN), dxbt = tb_tensor_2d(dxb, N, IN);
    ck_assert_int_eq(tb_linear_forward(&ctx, &a, &xt, &yat), TB_OK);
    ck_assert_int_eq(tb_linear_forward(&ctx, &b, &xt, &ybt), TB_OK);
    tbt_assert_close("linear in_out y", yb, ya, N * OUT, 1e-6, 1e-6);
    ck_assert_int_eq(tb_linear_backward(&ctx, &a, &xt, &dyt, &dxat), TB_OK);
    ck_assert_int_eq(tb_linear_backward(&ctx, &b, &xt, &dyt, &dxbt), TB_OK);
    tbt_assert_close("linear in_out dx", dxb, dxa, N * IN, 1e-6, 1e-6);
    float gt[IN * OUT];
    for (size_t o = 0; o < OUT; o++)
        for (size_t i = 0; i < IN; i++)
            gt[i * OUT + o] = a.weight.grad[o * IN + i];
    tbt_assert_close("linear in_out dW", b.weight.grad, gt, IN * OUT, 1e-6, 1e-6);
    /* A view over a's parameters: same outputs, gradients land in a's. */
    ck_assert_int_eq(tb_linear_view(&ctx, &v, &a.weight, &a.bias, TB_LINEAR_OUT_IN), TB_OK);
    ck_assert_uint_eq(v.in_features, IN);
    ck_assert_uint_eq(v.out_features, OUT);
    float gw0 = a.weight.grad[3];
    ck_assert_int_eq(tb_linear_forward(&ctx, &v, &xt, &ybt), TB_OK);
    ck_assert(memcmp(ya, yb, sizeof ya) == 0);
    ck_assert_int_eq(tb_linear_backward(&ctx, &v, &xt, &dyt, NULL), TB_OK);
    ck_assert(a.weight.grad[3] == gw0 + gw0); /* the same sum added again */
    tb_linear_free(&v); /* frees nothing: a is still usable (ASan would see a use after free) */
    ck_assert_int_eq(tb_linear_forward(&ctx, &a, &xt, &yat), TB_OK);
    ck_assert_int_eq(tb_linear_view(&ctx, &v, &a.weight, &b.weight, TB_LINEAR_OUT_IN),
                     TB_ERR_SHAPE);
    ck_assert_int_eq(tb_linear_view(&ctx, &v, &a.bias, NULL, TB_LINEAR_OUT_IN), TB_ERR_SHAPE);
    ck_assert_int_eq(tb_linear_view(&ctx, &v, &a.weight, NULL, (tb_linear_layout)5),
                     TB_ERR_INVALID_ARG);
    ck_assert_int_eq(tb_linear_view(&ctx, &v, NULL, NULL, TB_LINEAR_OUT_IN), TB_ERR_NULL_ARG);
    ck_assert_int_eq(tb_linear_init_layout(&ctx, &v, 2, 2, 1, (tb_linear_layout)5, &rng),
                     TB_ERR_INVALID_ARG);
    tb_linear_free(&a);
    tb_linear_free(&b);
}
END_TEST

/* ---- embedding --------------------------------------------------------- */

typedef struct emb_prob {
    tb_ctx ctx;
    tb_embedding emb;
    int32_t *ids;
    float *y, *w;
    size_t n;
} emb_prob;

static double emb_loss(void *user)
{
    emb_prob *p = user;
    tb_tensor y = tb_tensor_2d(p->y, p->n, p->emb.dim);
    ck_assert_int_eq(tb_embedding_forward(&p->ctx, &p->emb, p->ids, p->n, &y), TB_OK);
    return tbt_dot(p->w, p->y, p->n * p->emb.dim);
}

START_TEST(embedding_gradients)
{
    emb_prob p;
    tbt_ctx_init(&p.ctx, 1);
    tb_rng rng;
    tb_rng_init(&rng, 77);
    ck_assert_int_eq(tb_embedding_init(&p.ctx, &p.emb, 13, 17, &rng), TB_OK);
    p.n = 33;
    p.ids = tbt_alloc(p.n * sizeof(int32_t));
    for (size_t i = 0; i < p.n; i++)
        p.ids[i] = (int32_t)((i * 7) % 11); /* repeats; rows 11, 12 unused */
    p.y = tbt_alloc(p.n * 17 * sizeof(float));
    p.w = tbt_alloc(p.n * 17 * sizeof(float));
    tbt_fill_uniform(p.w, p.n * 17, -1, 1, 5);
    tb_tensor dy = tb_tensor_2d(p.w, p.n, 17);
    ck_assert_int_eq(tb_embedding_backward(&p.ctx, &p.emb, p.ids, p.n, &dy), TB_OK);
    tbt_gradcheck("embedding[33 ids,13x17].dW", p.emb.weight.value, 13 * 17, p.emb.weight.grad,
                  emb_loss, &p, H, RTOL, ATOL, 0);
    tb_embedding_free(&p.emb);
    free(p.ids), free(p.y), free(p.w);
}
END_TEST

/* ---- elementwise and row ops --------------------------------------------- */

enum op_kind { OP_GELU_EXACT, OP_GELU_TANH, OP_RELU, OP_SOFTMAX, OP_DROPOUT, OP_RESIDUAL };

typedef struct ew_prob {
    tb_ctx ctx;
    enum op_kind kind;
    float *x, *f, *y, *w;
    size_t rows, cols;
    tb_rng rng0; /* dropout: every forward starts from the same stream position */
    float p;
} ew_prob;

static tb_status ew_forward(ew_prob *p)
{
    tb_tensor x = tb_tensor_2d(p->x, p->rows, p->cols), y = tb_tensor_2d(p->y, p->rows, p->cols);
    switch (p->kind) {
    case OP_GELU_EXACT: return tb_gelu_forward(&p->ctx, TB_GELU_EXACT, &x, &y);
    case OP_GELU_TANH: return tb_gelu_forward(&p->ctx, TB_GELU_TANH, &x, &y);
    case OP_RELU: return tb_relu_forward(&p->ctx, &x, &y);
    case OP_SOFTMAX: return tb_softmax_forward(&p->ctx, &x, &y);
    case OP_DROPOUT: {
        tb_rng r = p->rng0;
        tb_dropout_cache c;
        return tb_dropout_forward(&p->ctx, TB_MODE_TRAINING, p->p, &r, &x, &y, &c);
    }
    case OP_RESIDUAL: {
        tb_tensor f = tb_tensor_2d(p->f, p->rows, p->cols);
        return tb_residual_forward(&p->ctx, &x, &f, &y);
    }
    }
    return TB_ERR_INVALID_ARG;
}

static double ew_loss(void *user)
{
    ew_prob *p = user;
    ck_assert_int_eq(ew_forward(p), TB_OK);
    return tbt_dot(p->w, p->y, p->rows * p->cols);
}

static void check_ew(enum op_kind kind, const char *name, size_t rows, size_t cols)
{
    ew_prob p;
    memset(&p, 0, sizeof p);
    tbt_ctx_init(&p.ctx, 1);
    p.kind = kind, p.rows = rows, p.cols = cols, p.p = 0.3f;
    tb_rng_init(&p.rng0, 99);
    size_t n = rows * cols;
    p.x = tbt_alloc(n * sizeof(float));
    p.f = tbt_alloc(n * sizeof(float));
    p.y = tbt_alloc(n * sizeof(float));
    p.w = tbt_alloc(n * sizeof(float));
    float *dx = tbt_alloc(n * sizeof(float));
    /* Keep ReLU inputs a few steps away from its kink at 0. */
    tbt_fill_away_from_zero(p.x, n, -4, 4, 5 * H, rows * 31 + cols);
    tbt_fill_uniform(p.f, n, -1, 1, 3);
    tbt_fill_uniform(p.w, n, -1, 1, 4);
    if (kind == OP_RELU && n == 1) /* a single negative input has gradient 0 */
        p.x[0] = fabsf(p.x[0]);
    ck_assert_int_eq(ew_forward(&p), TB_OK);
    tb_tensor x = tb_tensor_2d(p.x, rows, cols), y = tb_tensor_2d(p.y, rows, cols),
              dy = tb_tensor_2d(p.w, rows, cols), dxt = tb_tensor_2d(dx, rows, cols);
    switch (kind) {
    case OP_GELU_EXACT:
        ck_assert_int_eq(tb_gelu_backward(&p.ctx, TB_GELU_EXACT, &x, &dy, &dxt), TB_OK);
        break;
    case OP_GELU_TANH:
        ck_assert_int_eq(tb_gelu_backward(&p.ctx, TB_GELU_TANH, &x, &dy, &dxt), TB_OK);
        break;
    case OP_RELU: ck_assert_int_eq(tb_relu_backward(&p.ctx, &x, &dy, &dxt), TB_OK); break;
    case OP_SOFTMAX: ck_assert_int_eq(tb_softmax_backward(&p.ctx, &y, &dy, &dxt), TB_OK); break;
    case OP_DROPOUT: {
        tb_rng r = p.rng0;
        tb_dropout_cache c;
        ck_assert_int_eq(tb_dropout_forward(&p.ctx, TB_MODE_TRAINING, p.p, &r, &x, &y, &c), TB_OK);
        ck_assert_int_eq(tb_dropout_backward(&p.ctx, &dy, &c, &dxt), TB_OK);
        break;
    }
    case OP_RESIDUAL: /* the branch contributed nothing here: dx starts at 0 */
        memset(dx, 0, n * sizeof(float));
        ck_assert_int_eq(tb_residual_backward(&p.ctx, &dy, &dxt), TB_OK);
        break;
    }
    char label[96];
    snprintf(label, sizeof label, "%s[%zux%zu].dx", name, rows, cols);
    tbt_gradcheck(label, p.x, n, dx, ew_loss, &p, H, RTOL, ATOL, MAX_CHECKS);
    free(p.x), free(p.f), free(p.y), free(p.w), free(dx);
}

START_TEST(elementwise_gradients)
{
    static const size_t shapes[][2] = {{1, 1}, {3, 17}, {17, 33}};
    for (size_t s = 0; s < 3; s++) {
        size_t r = shapes[s][0], c = shapes[s][1];
        check_ew(OP_GELU_EXACT, "gelu_exact", r, c);
        check_ew(OP_GELU_TANH, "gelu_tanh", r, c);
        check_ew(OP_RELU, "relu", r, c);
        check_ew(OP_RESIDUAL, "residual", r, c);
        if (r * c > 1) /* a 1x1 softmax is constant; dropout of 1 may drop it */
            check_ew(OP_SOFTMAX, "softmax", r, c);
        if (r * c > 1)
            check_ew(OP_DROPOUT, "dropout", r, c);
    }
}
END_TEST

/* ---- cross-entropy ------------------------------------------------------- */

typedef struct ce_prob {
    tb_ctx ctx;
    tb_cross_entropy_config cfg;
    float *logits;
    int32_t *targets;
    size_t n, v, cache_bytes;
    void *cache;
} ce_prob;

static double ce_loss(void *user)
{
    ce_prob *p = user;
    tb_tensor l = tb_tensor_2d(p->logits, p->n, p->v);
    float loss;
    ck_assert_int_eq(tb_cross_entropy_forward(&p->ctx, &p->cfg, &l, p->targets, p->n, &loss,
                                              p->cache, p->cache_bytes),
                     TB_OK);
    return loss;
}

static void check_ce(size_t n, size_t v, tb_reduction red, float dloss)
{
    ce_prob p;
    tbt_ctx_init(&p.ctx, 1);
    p.cfg = tb_cross_entropy_default_config();
    p.cfg.reduction = red;
    p.n = n, p.v = v;
    p.logits = tbt_alloc(n * v * sizeof(float));
    p.targets = tbt_alloc(n * sizeof(int32_t));
    float *d = tbt_alloc(n * v * sizeof(float));
    tbt_fill_uniform(p.logits, n * v, -3, 3, n + v);
    for (size_t i = 0; i < n; i++)
        p.targets[i] = (i % 4 == 3) ? -100 : (int32_t)((i * 5) % v);
    ck_assert_int_eq(tb_cross_entropy_cache_size(n, &p.cache_bytes), TB_OK);
    p.cache = tbt_alloc(p.cache_bytes);
    ce_loss(&p);
    tb_tensor l = tb_tensor_2d(p.logits, n, v), dt = tb_tensor_2d(d, n, v);
    ck_assert_int_eq(tb_cross_entropy_backward(&p.ctx, &p.cfg, &l, p.targets, n, 1.0f, p.cache,
                                               p.cache_bytes, &dt),
                     TB_OK);
    char label[96];
    snprintf(label, sizeof label, "cross_entropy[%zux%zu,%s].dlogits", n, v,
             red == TB_REDUCTION_MEAN ? "mean" : "sum");
    tbt_gradcheck(label, p.logits, n * v, d, ce_loss, &p, H, RTOL, red == TB_REDUCTION_MEAN ? ATOL / 10 : ATOL, MAX_CHECKS);
    /* dloss scales the gradient linearly (used for accumulation). The
     * gradient check left the cache of a perturbed forward: refill it. */
    ce_loss(&p);
    float *d2 = tbt_alloc(n * v * sizeof(float));
    tb_tensor d2t = tb_tensor_2d(d2, n, v);
    ck_assert_int_eq(tb_cross_entropy_backward(&p.ctx, &p.cfg, &l, p.targets, n, dloss, p.cache,
                                               p.cache_bytes, &d2t),
                     TB_OK);
    for (size_t i = 0; i < n * v; i++)
        ck_assert_msg(fabsf(d2[i] - dloss * d[i]) <= 1e-6f + 1e-5f * fabsf(dloss * d[i]),
                      "dloss=%g: element %zu is %.9g, expected %.9g", (double)dloss, i,
                      (double)d2[i], (double)(dloss * d[i]));
    free(p.logits), free(p.targets), free(p.cache), free(d), free(d2);
}

START_TEST(cross_entropy_gradients)
{
    check_ce(1, 3, TB_REDUCTION_MEAN, 0.5f);
    check_ce(3, 17, TB_REDUCTION_MEAN, 2.0f);
    check_ce(17, 33, TB_REDUCTION_SUM, 0.25f);
    check_ce(2, 257, TB_REDUCTION_SUM, 3.0f);
}
END_TEST

Suite *suite_gradcheck(void)
{
    Suite *s = suite_create("gradcheck");
    TCase *tc = tcase_create("finite_differences");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, linear_gradients);
    tcase_add_test(tc, linear_layout_and_view);
    tcase_add_test(tc, embedding_gradients);
    tcase_add_test(tc, elementwise_gradients);
    tcase_add_test(tc, cross_entropy_gradients);
    suite_add_tcase(s, tc);
    return s;
}
