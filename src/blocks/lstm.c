/* (Bi)LSTM, as torch.nn.LSTM (batch_first), forward and backward through time. */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "../core/internal.h"
#include "../kernels/gemm.h"
#include "../kernels/vexp.h"

/* ---- set-up ----------------------------------------------------------------------- */

static size_t layer_in(const tb_lstm *m, size_t l)
{
    return l == 0 ? m->config.input_size : m->dirs * m->config.hidden_size;
}

tb_status tb_lstm_init(tb_ctx *ctx, tb_lstm *lstm, const tb_lstm_config *config, tb_rng *rng)
{
    const char *fn = __func__;
    if (lstm)
        memset(lstm, 0, sizeof *lstm);
    if (!ctx || !lstm || !config || !rng)
        return tb_fail(ctx, TB_ERR_NULL_ARG, fn, "ctx, lstm, config and rng must not be NULL");
    const tb_lstm_config *c = config;
    if (c->input_size == 0 || c->hidden_size == 0 || c->num_layers == 0)
        return tb_fail(ctx, TB_ERR_INVALID_ARG, fn,
                       "input_size (%zu), hidden_size (%zu) and num_layers (%zu) must be >= 1",
                       c->input_size, c->hidden_size, c->num_layers);
    if (c->num_layers > TB_LSTM_MAX_LAYERS)
        return tb_fail(ctx, TB_ERR_INVALID_ARG, fn, "num_layers %zu exceeds %d", c->num_layers,
                       TB_LSTM_MAX_LAYERS);
    if (!(c->dropout >= 0.0f && c->dropout < 1.0f))
        return tb_fail(ctx, TB_ERR_INVALID_ARG, fn, "dropout must be in [0, 1), got %g",
                       (double)c->dropout);
    lstm->config = *c;
    lstm->dirs = c->bidirectional ? 2 : 1;
    const size_t H = c->hidden_size, D = lstm->dirs, L = c->num_layers;
    /* Floats per (layer, direction): W_ih, W_hh, b_ih, b_hh. */
    size_t total = 0, g4, t;
    if (!tb_mul_size(4, H, &g4))
        return tb_fail(ctx, TB_ERR_OVERFLOW, fn, "hidden_size %zu overflows", H);
    for (size_t l = 0; l < L; l++) {
        size_t per;
        if (!tb_add_size(layer_in(lstm, l), H, &per) || !tb_add_size(per, 2, &per) ||
            !tb_mul_size(per, g4, &per) || !tb_mul_size(per, D, &t) ||
            !tb_add_size(total, t, &total))
            return tb_fail(ctx, TB_ERR_OVERFLOW, fn, "parameter count overflows");
    }
    size_t bytes;
    if (!tb_mul_size(total, 2 * sizeof(float), &bytes))
        return tb_fail(ctx, TB_ERR_OVERFLOW, fn, "parameter bytes overflow");
    void *mem;
    tb_status s = tb_alloc(ctx, fn, bytes, &mem);
    if (s != TB_OK)
        return s;
    memset(mem, 0, bytes);
    lstm->storage = mem;
    lstm->allocator = ctx->allocator;
    float *v = mem, *g = v + total;
    const float bound = 1.0f / sqrtf((float)H);
    for (size_t l = 0; l < L && s == TB_OK; l++)
        for (size_t d = 0; d < D && s == TB_OK; d++) {
            const size_t k = l * D + d, in = layer_in(lstm, l);
            const size_t sih[2] = {g4, in}, shh[2] = {g4, H};
            tb_param *ps[4] = {&lstm->w_ih[k], &lstm->w_hh[k], &lstm->b_ih[k], &lstm->b_hh[k]};
            const size_t nd[4] = {2, 2, 1, 1};
            const size_t *shapes[4] = {sih, shh, &g4, &g4};
            for (int i = 0; i < 4 && s == TB_OK; i++) {
                s = tb_param_view(ctx, ps[i], v, g, nd[i], shapes[i]);
                if (s == TB_OK)
                    s = tb_rng_fill_uniform(ctx, rng, v, ps[i]->numel, -bound, bound);
                v += ps[i]->numel, g += ps[i]->numel;
            }
        }
    if (s != TB_OK)
        tb_lstm_free(lstm);
    return s;
}

void tb_lstm_free(tb_lstm *lstm)
{
    if (!lstm)
        return;
    if (lstm->storage)
        tb_free_with(&lstm->allocator, lstm->storage);
    memset(lstm, 0, sizeof *lstm);
}

static tb_status check_lstm(tb_ctx *ctx, const char *fn, const tb_lstm *m)
{
    if (!ctx || !m)
        return tb_fail(ctx, TB_ERR_NULL_ARG, fn, "ctx and lstm must not be NULL");
    if (!m->storage)
        return tb_fail(ctx, TB_ERR_STATE, fn, "lstm is not initialised");
    return TB_OK;
}

tb_status tb_lstm_params(tb_ctx *ctx, tb_lstm *lstm, const char *prefix, tb_param_list *list)
{
    const char *fn = __func__;
    tb_status s = check_lstm(ctx, fn, lstm);
    char name[64];
    for (size_t l = 0; s == TB_OK && l < lstm->config.num_layers; l++)
        for (size_t d = 0; s == TB_OK && d < lstm->dirs; d++) {
            const size_t k = l * lstm->dirs + d;
            const char *suffix = d ? "_reverse" : "";
            static const char *const base[4] = {"weight_ih", "weight_hh", "bias_ih", "bias_hh"};
            tb_param *ps[4] = {&lstm->w_ih[k], &lstm->w_hh[k], &lstm->b_ih[k], &lstm->b_hh[k]};
            for (int i = 0; s == TB_OK && i < 4; i++) {
                snprintf(name, sizeof name, "%s_l%zu%s", base[i], l, suffix);
                s = tb_param_list_add(ctx, list, prefix, name, ps[i]);
            }
        }
    return s;
}

/* The parameters as spans, for the aliasing check: values (inputs: read
 * after the first write) and, when wanted, gradients (outputs), named as
 * tb_lstm_params() names them ("weight_ih_l0", "weight_ih_l0.grad"). */
#define LSTM_SPANS (4 * 2 * TB_LSTM_MAX_LAYERS)
typedef struct lstm_names {
    char value[LSTM_SPANS][32];
    char grad[LSTM_SPANS][40];
} lstm_names;

static size_t param_spans(const tb_lstm *m, lstm_names *nm, tb_span *values, tb_span *grads)
{
    static const char *const base[4] = {"weight_ih", "weight_hh", "bias_ih", "bias_hh"};
    size_t n = 0;
    for (size_t l = 0; l < m->config.num_layers; l++)
        for (size_t d = 0; d < m->dirs; d++) {
            const size_t k = l * m->dirs + d;
            const tb_param *ps[4] = {&m->w_ih[k], &m->w_hh[k], &m->b_ih[k], &m->b_hh[k]};
            for (int i = 0; i < 4; i++, n++) {
                snprintf(nm->value[n], sizeof nm->value[n], "%s_l%zu%s", base[i], l,
                         d ? "_reverse" : "");
                snprintf(nm->grad[n], sizeof nm->grad[n], "%s.grad", nm->value[n]);
                if (values)
                    values[n] = tb_span_floats(nm->value[n], ps[i]->value, ps[i]->numel);
                if (grads)
                    grads[n] = tb_span_floats(nm->grad[n],
                                              tb_param_wants_grad(ps[i]) ? ps[i]->grad : NULL,
                                              ps[i]->numel);
            }
        }
    return n;
}

/* ---- cache ---------------------------------------------------------------------- */

/* Header: magic, the matched fields, the dropout caches of layers 0..L-2,
 * then per layer l: its output Y_l (B, T, D*H), and per direction the gate
 * activations (B, T, 4H) [i f g o] and cell states (B, T, H). */
#define LSTM_MAGIC 0x4c53544d63633031ull /* "LSTMcc01" */
#define LSTM_FIELDS 8
static const char *const lstm_field_names[LSTM_FIELDS] = {
    "B", "T", "input_size", "hidden_size", "num_layers", "directions", "initial states",
    "lengths"};
static const tb_cache_kind LSTM_CACHE = {LSTM_MAGIC, "tb_lstm_forward", "tb_lstm_cache_size",
                                         LSTM_FIELDS, 2, lstm_field_names};
#define LSTM_HEADER_BYTES                                                                  \
    (((1 + LSTM_FIELDS) * sizeof(uint64_t) + TB_LSTM_MAX_LAYERS * sizeof(tb_dropout_cache) + \
      63) / 64 * 64)

static tb_dropout_cache *drop_rec(void *cache, size_t l)
{
    return (tb_dropout_cache *)((unsigned char *)cache + (1 + LSTM_FIELDS) * sizeof(uint64_t)) +
           l;
}

/* Floats per layer in the cache: Y (B T D H) + D (B T 5H). */
static int layer_floats(const tb_lstm *m, size_t B, size_t T, size_t *out)
{
    size_t bt, n;
    const size_t H = m->config.hidden_size, D = m->dirs;
    if (!tb_mul_size(B, T, &bt) || !tb_mul_size(bt, H, &n) || !tb_mul_size(n, 6 * D, &n))
        return 0;
    *out = n; /* D*H (output) + D*5H (gates, cells) = 6 D H per token */
    return 1;
}

tb_status tb_lstm_cache_size(const tb_lstm *lstm, size_t batch, size_t steps, size_t *bytes)
{
    if (!lstm || !bytes)
        return TB_ERR_NULL_ARG;
    size_t per, all;
    if (!layer_floats(lstm, batch, steps, &per) ||
        !tb_mul_size(per, lstm->config.num_layers, &all))
        return TB_ERR_OVERFLOW;
    return tb_cache_bytes(LSTM_HEADER_BYTES, all, bytes);
}

typedef struct layer_views {
    float *y;        /* (B, T, D*H) */
    float *gates[2]; /* (B, T, 4H) per direction */
    float *cells[2]; /* (B, T, H) per direction */
} layer_views;

static layer_views views_of(const tb_lstm *m, float *data, size_t B, size_t T, size_t l)
{
    const size_t H = m->config.hidden_size, D = m->dirs, bt = B * T;
    float *p = data + l * bt * 6 * D * H;
    layer_views v;
    v.y = p;
    p += bt * D * H;
    for (size_t d = 0; d < 2; d++) {
        v.gates[d] = d < D ? p : NULL;
        v.cells[d] = d < D ? p + bt * 4 * H : NULL;
        if (d < D)
            p += bt * 5 * H;
    }
    return v;
}

/* ---- argument checks ------------------------------------------------------------ */

typedef struct lstm_shape {
    size_t B, T, in, H, L, D;
    uint64_t len_hash;
} lstm_shape;

static tb_status check_state(tb_ctx *ctx, const char *fn, const char *what, const tb_tensor *t,
                             const lstm_shape *sh)
{
    if (!t)
        return TB_OK;
    size_t rows, cols;
    tb_status s = tb_check_tensor(ctx, fn, what, t, &rows, &cols);
    if (s != TB_OK)
        return s;
    if (t->ndim != 3 || t->shape[0] != sh->L * sh->D || t->shape[1] != sh->B ||
        t->shape[2] != sh->H)
        return tb_fail(ctx, TB_ERR_SHAPE, fn, "%s must be (%zu, %zu, %zu)", what, sh->L * sh->D,
                       sh->B, sh->H);
    return TB_OK;
}

static tb_status check_seq(tb_ctx *ctx, const char *fn, const char *what, const tb_tensor *t,
                           size_t B, size_t T, size_t W)
{
    size_t rows, cols;
    tb_status s = tb_check_tensor(ctx, fn, what, t, &rows, &cols);
    if (s != TB_OK)
        return s;
    if (t->ndim != 3 || t->shape[0] != B || t->shape[1] != T || t->shape[2] != W)
        return tb_fail(ctx, TB_ERR_SHAPE, fn, "%s must be (%zu, %zu, %zu)", what, B, T, W);
    return TB_OK;
}

/* x's shape and the lengths (each 1..T); their hash for the cache. */
static tb_status check_input(tb_ctx *ctx, const char *fn, const tb_lstm *m, const tb_tensor *x,
                             const int32_t *lengths, lstm_shape *sh)
{
    size_t rows, cols;
    tb_status s = tb_check_tensor(ctx, fn, "x", x, &rows, &cols);
    if (s != TB_OK)
        return s;
    if (x->ndim != 3 || x->shape[2] != m->config.input_size)
        return tb_fail(ctx, TB_ERR_SHAPE, fn, "x must be (B, T, %zu)", m->config.input_size);
    sh->B = x->shape[0], sh->T = x->shape[1], sh->in = x->shape[2];
    sh->H = m->config.hidden_size, sh->L = m->config.num_layers, sh->D = m->dirs;
    uint64_t h = 1469598103934665603ull; /* FNV-1a over the effective lengths */
    for (size_t b = 0; b < sh->B; b++) {
        const int64_t len = lengths ? lengths[b] : (int64_t)sh->T;
        if (len < 1 || (uint64_t)len > sh->T)
            return tb_fail(ctx, TB_ERR_INVALID_ARG, fn, "lengths[%zu] = %lld is outside 1..%zu", b,
                           (long long)len, sh->T);
        h = (h ^ (uint64_t)len) * 1099511628211ull;
    }
    sh->len_hash = h;
    return TB_OK;
}

static size_t len_of(const int32_t *lengths, size_t b, size_t T)
{
    return lengths ? (size_t)lengths[b] : T;
}

static void fill_fields(const lstm_shape *sh, const tb_tensor *h0, const tb_tensor *c0,
                        uint64_t *f)
{
    f[0] = sh->B, f[1] = sh->T, f[2] = sh->in, f[3] = sh->H, f[4] = sh->L, f[5] = sh->D;
    f[6] = (h0 ? 1u : 0u) | (c0 ? 2u : 0u), f[7] = sh->len_hash;
}

/* ---- the recurrence's units: (direction, block of rows) ------------------------------- */

typedef struct units {
    size_t n, blocks, rows; /* units, row blocks per direction, rows per block */
    int threads;            /* threads that run them: at most the context's, 1 for small work */
    size_t per;             /* floats of scratch per unit */
    size_t work;            /* of which tb_gemm_serial's */
} units;

static units plan_units(const tb_ctx *ctx, const lstm_shape *sh)
{
    units u;
    const size_t threads = (size_t)tb_threads(ctx);
    u.blocks = threads / sh->D;
    if (u.blocks < 1)
        u.blocks = 1;
    if (u.blocks > sh->B)
        u.blocks = sh->B;
    u.rows = (sh->B + u.blocks - 1) / u.blocks;
    u.n = u.blocks * sh->D;
    /* The recurrence's work: 2 (4H x H) multiply-adds per row, step and
     * direction, forward or backward. Units never outnumber the threads the
     * context allows (with one thread a bidirectional layer's two
     * directions run one after the other). */
    const int by_work =
        tb_threads_for(ctx, 8.0 * (double)sh->B * (double)sh->T * (double)sh->H * sh->H * sh->D);
    u.threads = (size_t)by_work < u.n ? by_work : (int)u.n;
    const size_t w1 = tb_gemm_serial_work(ctx, u.rows, 4 * sh->H, sh->H);
    const size_t w2 = tb_gemm_serial_work(ctx, u.rows, sh->H, 4 * sh->H);
    u.work = w1 > w2 ? w1 : w2;
    u.per = (u.work + 3 * u.rows * sh->H + sh->H + 15) / 16 * 16;
    return u;
}

typedef struct fwd_layer {
    const tb_lstm *m;
    const tb_vexp_ops *vx; /* the family's activations */
    const lstm_shape *sh;
    const int32_t *lengths;
    layer_views v;
    size_t l;
    const tb_tensor *h0, *c0;
    tb_tensor *h_n, *c_n;
} fwd_layer;

/* One unit's rows through every step of its direction. */
static tb_status forward_unit(const tb_ctx *ctx, const fwd_layer *f, size_t d, size_t b0,
                              size_t b1, float *scratch, const units *u)
{
    const lstm_shape *sh = f->sh;
    const size_t H = sh->H, T = sh->T, D = sh->D, H4 = 4 * H, k = f->l * D + d;
    const size_t nr = b1 - b0;
    float *work = scratch, *hs = scratch + u->work, *cs = hs + u->rows * H;
    for (size_t b = b0; b < b1; b++) {
        const size_t off = (k * sh->B + b) * H;
        for (size_t j = 0; j < H; j++) {
            hs[(b - b0) * H + j] = f->h0 ? f->h0->data[off + j] : 0.0f;
            cs[(b - b0) * H + j] = f->c0 ? f->c0->data[off + j] : 0.0f;
        }
    }
    const float *whh = f->m->w_hh[k].value;
    float *G = f->v.gates[d], *Cc = f->v.cells[d], *Y = f->v.y;
    for (size_t s = 0; s < T; s++) {
        const size_t tt = d == 0 ? s : T - 1 - s;
        tb_status st = tb_gemm_serial(ctx, 0, 1, nr, H4, H, 1.0f, hs, H, whh, H, 1.0f,
                                      G + (b0 * T + tt) * H4, T * H4, work, u->work);
        if (st != TB_OK)
            return st;
        for (size_t b = b0; b < b1; b++) {
            float *g = G + (b * T + tt) * H4, *c = Cc + (b * T + tt) * H;
            float *y = Y + (b * T + tt) * D * H + d * H;
            float *h = hs + (b - b0) * H, *cp = cs + (b - b0) * H;
            if (tt >= len_of(f->lengths, b, T)) { /* padding: state unchanged */
                memset(g, 0, H4 * sizeof(float));
                memset(c, 0, H * sizeof(float));
                memset(y, 0, H * sizeof(float));
                continue;
            }
            f->vx->lstm_cell(g, cp, h, H); /* gates activated, cp = c_t, h = h_t */
            memcpy(c, cp, H * sizeof(float));
            memcpy(y, h, H * sizeof(float));
        }
    }
    for (size_t b = b0; b < b1; b++) {
        const size_t off = (k * sh->B + b) * H;
        if (f->h_n)
            memcpy(f->h_n->data + off, hs + (b - b0) * H, H * sizeof(float));
        if (f->c_n)
            memcpy(f->c_n->data + off, cs + (b - b0) * H, H * sizeof(float));
    }
    return TB_OK;
}

/* Run every unit of a layer on its own thread; the first failure wins. */
#define RUN_UNITS(ctx, u, call)                                                          \
    do {                                                                                 \
        tb_status first_ = TB_OK;                                                        \
        _Pragma("omp parallel for num_threads((u).threads) schedule(static)")             \
        for (size_t un_ = 0; un_ < (u).n; un_++) {                                        \
            const size_t d_ = un_ / (u).blocks, blk_ = un_ % (u).blocks;                  \
            const size_t b0_ = blk_ * (u).rows;                                          \
            const size_t b1_ = b0_ + (u).rows < sh.B ? b0_ + (u).rows : sh.B;             \
            if (b0_ < b1_) {                                                             \
                const tb_status st_ = call(ctx, &job, d_, b0_, b1_, scratch + un_ * (u).per, \
                                           &(u));                                        \
                if (st_ != TB_OK) {                                                      \
                    _Pragma("omp critical(tb_lstm_units)") if (first_ == TB_OK) first_ = st_; \
                }                                                                        \
            }                                                                            \
        }                                                                                \
        s = first_;                                                                      \
    } while (0)

tb_status tb_lstm_forward(tb_ctx *ctx, const tb_lstm *lstm, tb_mode mode, tb_rng *rng,
                          const tb_tensor *x, const int32_t *lengths, const tb_tensor *h0,
                          const tb_tensor *c0, tb_tensor *y, tb_tensor *h_n, tb_tensor *c_n,
                          void *cache, size_t cache_bytes)
{
    const char *fn = __func__;
    tb_status s = check_lstm(ctx, fn, lstm);
    lstm_shape sh;
    if (s != TB_OK || (s = check_input(ctx, fn, lstm, x, lengths, &sh)) != TB_OK ||
        (s = check_state(ctx, fn, "h0", h0, &sh)) != TB_OK ||
        (s = check_state(ctx, fn, "c0", c0, &sh)) != TB_OK ||
        (s = check_seq(ctx, fn, "y", y, sh.B, sh.T, sh.D * sh.H)) != TB_OK ||
        (s = check_state(ctx, fn, "h_n", h_n, &sh)) != TB_OK ||
        (s = check_state(ctx, fn, "c_n", c_n, &sh)) != TB_OK)
        return s;
    if (mode != TB_MODE_TRAINING && mode != TB_MODE_INFERENCE)
        return tb_fail(ctx, TB_ERR_INVALID_ARG, fn, "unknown mode %d", (int)mode);
    const float p = lstm->config.dropout;
    const int drop = mode == TB_MODE_TRAINING && p > 0.0f && sh.L > 1;
    if (drop && !rng)
        return tb_fail(ctx, TB_ERR_NULL_ARG, fn, "rng must not be NULL when dropout is active");
    size_t need;
    if (tb_lstm_cache_size(lstm, sh.B, sh.T, &need) != TB_OK)
        return tb_fail(ctx, TB_ERR_OVERFLOW, fn, "cache size overflows");
    uint64_t fields[LSTM_FIELDS];
    fill_fields(&sh, h0, c0, fields);
    if ((s = tb_cache_check(ctx, fn, &LSTM_CACHE, cache, cache_bytes, need, fields, 0)) != TB_OK)
        return s;
    {
        /* The weights are read layer after layer, after the first writes. */
        lstm_names nm;
        tb_span ins[4 + LSTM_SPANS];
        ins[0] = tb_span_tensor("x", x), ins[1] = tb_span_tensor("h0", h0);
        ins[2] = tb_span_tensor("c0", c0);
        ins[3] = tb_span_array("lengths", lengths, lengths ? sh.B : 0, 4);
        const size_t np = param_spans(lstm, &nm, ins + 4, NULL);
        const tb_span outs[] = {tb_span_tensor("y", y), tb_span_tensor("h_n", h_n),
                                tb_span_tensor("c_n", c_n),
                                tb_span_bytes("cache", cache, cache ? need : 0),
                                tb_span_bytes("rng", drop ? rng : NULL, sizeof *rng)};
        if ((s = tb_check_alias(ctx, fn, outs, 5, ins, 4 + np)) != TB_OK)
            return s;
    }
    /* Scratch: the cache's layout when no cache is given, the dropped-out
     * layer input, and the units' state and product space. */
    const units u = plan_units(ctx, &sh);
    const size_t bt = sh.B * sh.T, DH = sh.D * sh.H;
    size_t floats = (cache ? 0 : (need - LSTM_HEADER_BYTES) / sizeof(float)) +
                    (drop ? bt * DH : 0) + u.n * u.per;
    void *mem;
    if ((s = tb_alloc(ctx, fn, floats * sizeof(float) + LSTM_HEADER_BYTES, &mem)) != TB_OK)
        return s;
    unsigned char *base = cache ? (unsigned char *)cache : (unsigned char *)mem;
    float *data = (float *)(base + LSTM_HEADER_BYTES);
    float *extra = cache ? (float *)((unsigned char *)mem + LSTM_HEADER_BYTES)
                         : data + (need - LSTM_HEADER_BYTES) / sizeof(float);
    float *xdrop = extra, *scratch = extra + (drop ? bt * DH : 0);
    const size_t H4 = 4 * sh.H;
    for (size_t l = 0; l < sh.L && s == TB_OK; l++) {
        const layer_views v = views_of(lstm, data, sh.B, sh.T, l);
        const size_t in = layer_in(lstm, l);
        const float *xin = x->data;
        tb_dropout_cache dc;
        memset(&dc, 0, sizeof dc);
        if (l > 0) {
            const layer_views prev = views_of(lstm, data, sh.B, sh.T, l - 1);
            xin = prev.y;
            if (drop) {
                tb_tensor yt = tb_tensor_3d(prev.y, sh.B, sh.T, DH);
                tb_tensor xt = tb_tensor_3d(xdrop, sh.B, sh.T, DH);
                if ((s = tb_dropout_forward(ctx, mode, p, rng, &yt, &xt, &dc)) != TB_OK)
                    break;
                xin = xdrop;
            }
            *drop_rec(base, l - 1) = dc;
        }
        /* Every step's input projection at once, then the two biases. */
        for (size_t d = 0; d < sh.D && s == TB_OK; d++) {
            const size_t k = l * sh.D + d;
            s = tb_gemm(ctx, 0, 1, bt, H4, in, 1.0f, xin, in, lstm->w_ih[k].value, in, 0.0f,
                        v.gates[d], H4);
            if (s != TB_OK)
                break;
            const float *bi = lstm->b_ih[k].value, *bh = lstm->b_hh[k].value;
            float *G = v.gates[d];
#pragma omp parallel for num_threads(tb_threads_for(ctx, (double)bt * H4)) schedule(static)
            for (size_t r = 0; r < bt; r++)
                for (size_t j = 0; j < H4; j++)
                    G[r * H4 + j] = G[r * H4 + j] + bi[j] + bh[j];
        }
        if (s != TB_OK)
            break;
        fwd_layer job = {lstm, tb_vexp_select(ctx), &sh, lengths, v, l, h0, c0, h_n, c_n};
        RUN_UNITS(ctx, u, forward_unit);
    }
    if (s == TB_OK) {
        memcpy(y->data, views_of(lstm, data, sh.B, sh.T, sh.L - 1).y, bt * DH * sizeof(float));
        if (cache)
            tb_cache_write(cache, &LSTM_CACHE, fields);
    }
    tb_free_with(&ctx->allocator, mem);
    return s;
}

/* ---- backward ----------------------------------------------------------------------- */

typedef struct bwd_layer {
    const tb_lstm *m;
    const tb_vexp_ops *vx;
    const lstm_shape *sh;
    const int32_t *lengths;
    layer_views v;
    size_t l;
    const tb_tensor *c0, *dh_n, *dc_n;
    tb_tensor *dh0, *dc0;
    const float *dY; /* (B, T, D*H) gradient w.r.t. the layer's output */
    float *dG[2];    /* (B, T, 4H) per direction: the pre-activation gate gradients */
} bwd_layer;

static tb_status backward_unit(const tb_ctx *ctx, const bwd_layer *f, size_t d, size_t b0,
                               size_t b1, float *scratch, const units *u)
{
    const lstm_shape *sh = f->sh;
    const size_t H = sh->H, T = sh->T, D = sh->D, H4 = 4 * H, k = f->l * D + d;
    const size_t nr = b1 - b0;
    float *work = scratch, *dh = scratch + u->work, *dc = dh + u->rows * H, *tmp = dc + u->rows * H;
    float *tc = tmp + u->rows * H; /* tanh(c_t) of one row */
    for (size_t b = b0; b < b1; b++) {
        const size_t off = (k * sh->B + b) * H;
        for (size_t j = 0; j < H; j++) {
            dh[(b - b0) * H + j] = f->dh_n ? f->dh_n->data[off + j] : 0.0f;
            dc[(b - b0) * H + j] = f->dc_n ? f->dc_n->data[off + j] : 0.0f;
        }
    }
    const float *whh = f->m->w_hh[k].value;
    const float *G = f->v.gates[d], *Cc = f->v.cells[d];
    float *dG = f->dG[d];
    for (size_t s = T; s-- > 0;) {
        const size_t tt = d == 0 ? s : T - 1 - s;
        for (size_t b = b0; b < b1; b++) {
            const size_t len = len_of(f->lengths, b, T);
            float *dg = dG + (b * T + tt) * H4;
            if (tt >= len) {
                memset(dg, 0, H4 * sizeof(float));
                continue;
            }
            const float *g = G + (b * T + tt) * H4, *c = Cc + (b * T + tt) * H;
            /* the cell state before this step, in this direction's order */
            const int first = d == 0 ? tt == 0 : tt + 1 == len;
            const float *cprev =
                first ? (f->c0 ? f->c0->data + (k * sh->B + b) * H : NULL)
                      : Cc + (b * T + (d == 0 ? tt - 1 : tt + 1)) * H;
            const float *dy = f->dY + (b * T + tt) * D * H + d * H;
            float *dhb = dh + (b - b0) * H, *dcb = dc + (b - b0) * H;
            f->vx->tanh(c, tc, H); /* as forward computed it */
            for (size_t j = 0; j < H; j++) {
                const float ig = g[j], fg = g[H + j], gg = g[2 * H + j], og = g[3 * H + j];
                const float dhj = dy[j] + dhb[j];
                const float dcj = dcb[j] + dhj * og * (1.0f - tc[j] * tc[j]);
                const float cp = cprev ? cprev[j] : 0.0f;
                dg[j] = dcj * gg * ig * (1.0f - ig);
                dg[H + j] = dcj * cp * fg * (1.0f - fg);
                dg[2 * H + j] = dcj * ig * (1.0f - gg * gg);
                dg[3 * H + j] = dhj * tc[j] * og * (1.0f - og);
                dcb[j] = dcj * fg;
            }
        }
        /* dh_{prev} = dG W_hh for the rows that stepped; the others keep theirs */
        tb_status st = tb_gemm_serial(ctx, 0, 0, nr, H, H4, 1.0f, dG + (b0 * T + tt) * H4,
                                      T * H4, whh, H, 0.0f, tmp, H, work, u->work);
        if (st != TB_OK)
            return st;
        for (size_t b = b0; b < b1; b++)
            if (tt < len_of(f->lengths, b, T))
                memcpy(dh + (b - b0) * H, tmp + (b - b0) * H, H * sizeof(float));
    }
    for (size_t b = b0; b < b1; b++) {
        const size_t off = (k * sh->B + b) * H;
        if (f->dh0)
            memcpy(f->dh0->data + off, dh + (b - b0) * H, H * sizeof(float));
        if (f->dc0)
            memcpy(f->dc0->data + off, dc + (b - b0) * H, H * sizeof(float));
    }
    return TB_OK;
}

tb_status tb_lstm_backward(tb_ctx *ctx, tb_lstm *lstm, const tb_tensor *x,
                           const int32_t *lengths, const tb_tensor *h0, const tb_tensor *c0,
                           const tb_tensor *dy, const tb_tensor *dh_n, const tb_tensor *dc_n,
                           tb_tensor *dx, tb_tensor *dh0, tb_tensor *dc0, const void *cache,
                           size_t cache_bytes)
{
    const char *fn = __func__;
    tb_status s = check_lstm(ctx, fn, lstm);
    lstm_shape sh;
    if (s != TB_OK || (s = check_input(ctx, fn, lstm, x, lengths, &sh)) != TB_OK ||
        (s = check_state(ctx, fn, "h0", h0, &sh)) != TB_OK ||
        (s = check_state(ctx, fn, "c0", c0, &sh)) != TB_OK ||
        (s = check_seq(ctx, fn, "dy", dy, sh.B, sh.T, sh.D * sh.H)) != TB_OK ||
        (s = check_state(ctx, fn, "dh_n", dh_n, &sh)) != TB_OK ||
        (s = check_state(ctx, fn, "dc_n", dc_n, &sh)) != TB_OK ||
        (dx && (s = check_seq(ctx, fn, "dx", dx, sh.B, sh.T, sh.in)) != TB_OK) ||
        (s = check_state(ctx, fn, "dh0", dh0, &sh)) != TB_OK ||
        (s = check_state(ctx, fn, "dc0", dc0, &sh)) != TB_OK)
        return s;
    size_t need;
    if (tb_lstm_cache_size(lstm, sh.B, sh.T, &need) != TB_OK)
        return tb_fail(ctx, TB_ERR_OVERFLOW, fn, "cache size overflows");
    uint64_t fields[LSTM_FIELDS];
    fill_fields(&sh, h0, c0, fields);
    if ((s = tb_cache_check(ctx, fn, &LSTM_CACHE, cache, cache_bytes, need, fields, 1)) != TB_OK ||
        (s = tb_cache_match(ctx, fn, &LSTM_CACHE, cache, fields)) != TB_OK)
        return s;
    {
        /* W_ih and W_hh are read by every layer's products, after the
         * first writes (the biases are not read). */
        lstm_names nm;
        tb_span ins[8 + LSTM_SPANS], outs[3 + LSTM_SPANS], vals[LSTM_SPANS];
        size_t ni = 0, no = 0;
        ins[ni++] = tb_span_tensor("x", x);
        ins[ni++] = tb_span_tensor("dy", dy);
        ins[ni++] = tb_span_tensor("dh_n", dh_n);
        ins[ni++] = tb_span_tensor("dc_n", dc_n);
        ins[ni++] = tb_span_tensor("h0", h0);
        ins[ni++] = tb_span_tensor("c0", c0);
        ins[ni++] = tb_span_bytes("cache", cache, need);
        ins[ni++] = tb_span_array("lengths", lengths, lengths ? sh.B : 0, 4);
        outs[no++] = tb_span_tensor("dx", dx);
        outs[no++] = tb_span_tensor("dh0", dh0);
        outs[no++] = tb_span_tensor("dc0", dc0);
        const size_t np = param_spans(lstm, &nm, vals, outs + no);
        no += np;
        for (size_t i = 0; i < np; i++)
            if (i % 4 < 2)
                ins[ni++] = vals[i];
        if ((s = tb_check_alias(ctx, fn, outs, no, ins, ni)) != TB_OK)
            return s;
    }
    const units u = plan_units(ctx, &sh);
    const size_t bt = sh.B * sh.T, DH = sh.D * sh.H, H = sh.H, H4 = 4 * H;
    const size_t in_max = sh.in > DH ? sh.in : DH;
    /* Scratch: dG per direction, dY of the current layer, dX of its input,
     * h_prev (B*T, H), the dropped-out layer input, the units'. */
    const size_t floats = sh.D * bt * H4 + bt * DH + bt * in_max + bt * H + bt * DH + u.n * u.per;
    void *mem;
    if ((s = tb_alloc(ctx, fn, floats * sizeof(float), &mem)) != TB_OK)
        return s;
    float *dGs = mem, *dYcur = dGs + sh.D * bt * H4, *dX = dYcur + bt * DH;
    float *hprev = dX + bt * in_max, *xdrop = hprev + bt * H, *scratch = xdrop + bt * DH;
    float *data = (float *)((unsigned char *)(uintptr_t)cache + LSTM_HEADER_BYTES);
    memcpy(dYcur, dy->data, bt * DH * sizeof(float));
    for (size_t l = sh.L; l-- > 0 && s == TB_OK;) {
        const layer_views v = views_of(lstm, data, sh.B, sh.T, l);
        bwd_layer job = {lstm, tb_vexp_select(ctx), &sh, lengths, v, l, c0, dh_n, dc_n,
                         dh0, dc0, dYcur, {dGs, dGs + bt * H4}};
        RUN_UNITS(ctx, u, backward_unit);
        if (s != TB_OK)
            break;
        /* The layer's input, as forward saw it. */
        const size_t in = layer_in(lstm, l);
        const float *xin = x->data;
        if (l == 0 && lengths) {
            /* The caller's padding may hold anything, NaN included, and
             * 0 * NaN is NaN: W_ih's gradient reads x with its padded steps
             * zeroed (dX is free at layer 0: dx goes straight to the caller). */
            int padded = 0;
            for (size_t b = 0; b < sh.B && !padded; b++)
                padded = (size_t)lengths[b] < sh.T;
            if (padded) {
                for (size_t b = 0; b < sh.B; b++) {
                    const size_t len = (size_t)lengths[b], row = b * sh.T * in;
                    memcpy(dX + row, x->data + row, len * in * sizeof(float));
                    memset(dX + row + len * in, 0, (sh.T - len) * in * sizeof(float));
                }
                xin = dX;
            }
        }
        const tb_dropout_cache *dc = l > 0 ? drop_rec((void *)(uintptr_t)cache, l - 1) : NULL;
        if (l > 0) {
            const layer_views prev = views_of(lstm, data, sh.B, sh.T, l - 1);
            xin = prev.y;
            if (dc->active) {
                tb_tensor yt = tb_tensor_3d(prev.y, sh.B, sh.T, DH);
                tb_tensor xt = tb_tensor_3d(xdrop, sh.B, sh.T, DH);
                if ((s = tb_dropout_backward(ctx, &yt, dc, &xt)) != TB_OK)
                    break;
                xin = xdrop;
            }
        }
        for (size_t d = 0; d < sh.D && s == TB_OK; d++) {
            const size_t k = l * sh.D + d;
            const float *dG = dGs + d * bt * H4;
            /* h before each step, in this direction's order (0 for padding) */
            const float *h0k = h0 ? h0->data + k * sh.B * H : NULL;
#pragma omp parallel for num_threads(tb_threads_for(ctx, (double)bt * H)) schedule(static)
            for (size_t b = 0; b < sh.B; b++) {
                const size_t len = len_of(lengths, b, sh.T);
                for (size_t t = 0; t < sh.T; t++) {
                    float *hp = hprev + (b * sh.T + t) * H;
                    const int first = d == 0 ? t == 0 : t + 1 == len;
                    if (t >= len || (first && !h0k))
                        memset(hp, 0, H * sizeof(float));
                    else if (first)
                        memcpy(hp, h0k + b * H, H * sizeof(float));
                    else
                        memcpy(hp, v.y + (b * sh.T + (d == 0 ? t - 1 : t + 1)) * DH + d * H,
                               H * sizeof(float));
                }
            }
            if (tb_param_wants_grad(&lstm->w_hh[k]) &&
                (s = tb_gemm(ctx, 1, 0, H4, H, bt, 1.0f, dG, H4, hprev, H, 1.0f,
                             lstm->w_hh[k].grad, H)) != TB_OK)
                break;
            if (tb_param_wants_grad(&lstm->w_ih[k]) &&
                (s = tb_gemm(ctx, 1, 0, H4, in, bt, 1.0f, dG, H4, xin, in, 1.0f,
                             lstm->w_ih[k].grad, in)) != TB_OK)
                break;
            /* Both biases get the column sums of dG, each column summed over
             * rows in order (threads take column chunks; rows stream through). */
            const int gi = tb_param_wants_grad(&lstm->b_ih[k]);
            const int gh = tb_param_wants_grad(&lstm->b_hh[k]);
            if (gi || gh) {
                float *gbi = lstm->b_ih[k].grad, *gbh = lstm->b_hh[k].grad;
                const size_t chunk = 64, n_chunks = (H4 + chunk - 1) / chunk;
#pragma omp parallel for num_threads(tb_threads_for(ctx, (double)bt * H4)) schedule(static)
                for (size_t c = 0; c < n_chunks; c++) {
                    float acc[64] = {0};
                    const size_t j0 = c * chunk, nj = H4 - j0 < chunk ? H4 - j0 : chunk;
                    for (size_t r = 0; r < bt; r++)
                        for (size_t j = 0; j < nj; j++)
                            acc[j] += dG[r * H4 + j0 + j];
                    for (size_t j = 0; j < nj; j++) {
                        if (gi)
                            gbi[j0 + j] += acc[j];
                        if (gh)
                            gbh[j0 + j] += acc[j];
                    }
                }
            }
            /* d(layer input) = sum over directions of dG W_ih */
            if (l > 0 || dx)
                s = tb_gemm(ctx, 0, 0, bt, in, H4, 1.0f, dG, H4, lstm->w_ih[k].value, in,
                            d ? 1.0f : 0.0f, l > 0 ? dX : dx->data, in);
        }
        if (s != TB_OK || l == 0)
            break;
        /* The previous layer's output gradient: through the dropout. */
        if (dc->active) {
            tb_tensor gt = tb_tensor_3d(dX, sh.B, sh.T, DH), ot = tb_tensor_3d(dYcur, sh.B, sh.T, DH);
            s = tb_dropout_backward(ctx, &gt, dc, &ot);
        } else {
            memcpy(dYcur, dX, bt * DH * sizeof(float));
        }
    }
    tb_free_with(&ctx->allocator, mem);
    return s;
}
