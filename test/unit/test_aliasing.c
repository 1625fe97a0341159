/*
 * Aliasing (docs/conventions.md, "Aliasing"): every public function that
 * writes caller memory refuses an output placed over an input it still
 * reads, or over another output, with TB_ERR_INVALID_ARG, a detail naming
 * both ("dx overlaps mem") and nothing the caller owns changed; and the
 * in-place uses a header allows give the out-of-place bits.
 *
 * One table per function lists every buffer of the call (name as the
 * messages give it, input or output, size, the bytes the call touches, the
 * inputs an output may replace exactly). Every buffer of a call lives in
 * one arena, each alone in a zone wider than any buffer; the harness then
 * moves each output over every other buffer of the call:
 *   exact  its first touched byte on the other's first touched byte,
 *   shift  one output element later (earlier if the other is one element),
 *   end    its first touched element on the other's last,
 *   start  its last touched element on the other's first,
 * and expects a refusal naming the pair with the arena and the call's
 * structs bitwise unchanged; where the table allows the exact placement it
 * expects success and the bits of the out-of-place call instead. Each
 * table is checked first by a successful call with every buffer apart.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/internal.h"
#include "suites.h"
#include "testutil.h"

#define ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

enum { MAXB = 32 }; /* same_ok is a 32-bit mask */
enum { IN = 0, OUT = 1 };

typedef struct abuf {
    const char *name;   /* as the function's error detail names it */
    int role;           /* IN: read after the call's first write; OUT: written */
    size_t bytes;       /* its allocation */
    size_t elem;        /* element size: alignment and the one-element shift */
    size_t first, last; /* byte offsets of the first and last element touched */
    unsigned same_ok;   /* OUT: bit j = may be buffer j exactly (in place) */
    int share;          /* 1 + the buffer whose allocation this is part of; 0: its own */
} abuf;

/* What a call needs besides its buffers: blocks, configurations, and the
 * state pointers bind() moves into the arena. */
typedef struct fix {
    tb_param w, b;
    tb_linear lin;
    tb_lora lora; /* over lin (its base), one DoRA adapter */
    tb_embedding emb;
    tb_layernorm ln;
    tb_rmsnorm rn;
    tb_batchnorm bn;
    tb_attention_config acfg;
    tb_attention_mask mask;
    tb_mha mha;
    tb_kv_cache kv;
    tb_lstm lstm;
    tb_ptuning pt;
    tb_param pa, pb;
    tb_param_list list;
    tb_adam opt;
    float *opt_m, *opt_v, *opt_vmax; /* the optimizer's own state, restored to free it */
    tb_ewc ewc;
    float *ewc_anchor, *ewc_fisher;
    tb_sampler_config scfg;
    float spare[64]; /* parameters a call has but does not touch */
    float pstore[32]; /* parameters 'a' and 'b' before bind() moves them */
} fix;

typedef unsigned char *const *bufs;

typedef struct acase {
    const char *fn;
    size_t n;
    abuf b[MAXB];
    void (*setup)(fix *f, tb_ctx *ctx);
    void (*bind)(fix *f, bufs p);
    void (*fill)(const struct acase *c, fix *f, tb_ctx *ctx, bufs p);
    tb_status (*call)(fix *f, tb_ctx *ctx, bufs p);
} acase;

/* ---- table building --------------------------------------------------- */

static size_t add(acase *c, const char *name, int role, size_t bytes, size_t elem)
{
    ck_assert(c->n < MAXB);
    abuf *b = &c->b[c->n];
    memset(b, 0, sizeof *b);
    b->name = name;
    b->role = role;
    b->bytes = bytes;
    b->elem = elem;
    b->first = 0;
    b->last = bytes - elem;
    return c->n++;
}

static size_t add_f(acase *c, const char *name, int role, size_t n)
{
    return add(c, name, role, n * sizeof(float), sizeof(float));
}

/* The call touches only [first, last + elem) of buffer i. */
static void touched(acase *c, size_t i, size_t first, size_t last)
{
    c->b[i].first = first;
    c->b[i].last = last;
}

/* A heads operand: rows runs of len floats from column off, W apart. */
static size_t add_heads(acase *c, const char *name, int role, size_t rows, size_t W, size_t off,
                        size_t len)
{
    const size_t i = add_f(c, name, role, rows * W);
    touched(c, i, off * sizeof(float), ((rows - 1) * W + off + len - 1) * sizeof(float));
    return i;
}

/* Another part of buffer `owner`'s allocation, touched in [first, last]. */
static size_t add_view(acase *c, size_t owner, const char *name, int role, size_t first,
                       size_t last)
{
    const size_t i = add(c, name, role, c->b[owner].bytes, c->b[owner].elem);
    touched(c, i, first, last);
    c->b[i].share = (int)owner + 1;
    return i;
}

static void may_be(acase *c, size_t out, size_t in)
{
    c->b[out].same_ok |= 1u << in;
}

#define F(p, i) ((float *)(p)[i])

/* Every buffer uniform in [-1, 1), one stream per buffer. */
static void fill_floats(const acase *c, bufs p)
{
    for (size_t i = 0; i < c->n; i++)
        if (!c->b[i].share)
            tbt_fill_uniform(F(p, i), c->b[i].bytes / sizeof(float), -1.0f, 1.0f, 1000 + i);
}

static void fill_plain(const acase *c, fix *f, tb_ctx *ctx, bufs p)
{
    (void)f, (void)ctx;
    fill_floats(c, p);
}

/* ---- the harness ------------------------------------------------------- */

typedef struct arena {
    unsigned char *mem;
    size_t bytes, zone;
    unsigned char *home[MAXB];
} arena;

static void arena_init(arena *a, const acase *c)
{
    size_t big = 0;
    for (size_t i = 0; i < c->n; i++)
        big = c->b[i].bytes > big ? c->b[i].bytes : big;
    a->zone = (big + 127) / 64 * 64;
    a->bytes = (2 * c->n + 1) * a->zone;
    a->mem = aligned_alloc(64, a->bytes);
    ck_assert(a->mem != NULL);
    for (size_t i = 0; i < c->n; i++)
        a->home[i] = c->b[i].share ? a->home[c->b[i].share - 1] : a->mem + (2 * i + 1) * a->zone;
}

/* Fresh contents at the home positions. */
static void prepare(const acase *c, fix *f, tb_ctx *ctx, arena *a)
{
    memset(a->mem, 0xA5, a->bytes);
    if (c->bind)
        c->bind(f, a->home);
    c->fill(c, f, ctx, a->home);
}

static tb_status run(const acase *c, fix *f, tb_ctx *ctx, unsigned char **p)
{
    if (c->bind)
        c->bind(f, p);
    tb_ctx_clear_error(ctx);
    return c->call(f, ctx, p);
}

/* Positions of output o against buffer x, as byte offsets from x's home. */
enum { EXACT, SHIFT, END, START, N_PLACES };
static const char *const place_names[N_PLACES] = {"exactly", "shifted by one element",
                                                  "at its end", "at its start"};

static long long floor_to(long long v, long long m)
{
    return v >= 0 ? v / m * m : -((-v + m - 1) / m * m);
}

static int place(const abuf *o, const abuf *x, int how, long long *d)
{
    const long long e = (long long)o->elem;
    const long long xf = (long long)x->first, xl = (long long)x->last;
    const long long of = (long long)o->first, ol = (long long)o->last;
    switch (how) {
    case EXACT:
        *d = xf - of;
        return 1;
    case SHIFT:
        if (xl + (long long)x->elem > xf + e)
            *d = xf - of + e;
        else if (ol > of)
            *d = xf - of - e;
        else
            return 0; /* two single elements: a shift does not overlap */
        return 1;
    case END:
        *d = floor_to(xl - of, e);
        return 1;
    default:
        *d = -floor_to(-(xf - ol), e); /* ceiling: the last element stays on x */
        return 1;
    }
}

/* Moving output o moves the parts of its allocation with it. */
static void move(const acase *c, const arena *a, size_t o, unsigned char *at, unsigned char **p)
{
    for (size_t i = 0; i < c->n; i++)
        p[i] = a->home[i];
    for (size_t i = 0; o < c->n && i < c->n; i++)
        if (i == o || c->b[i].share == (int)o + 1)
            p[i] = at;
}

/* "fn: a overlaps b", then the end or a parenthesis: whole names only. */
static int names_pair(const char *err, const char *a, const char *b)
{
    char want[256];
    snprintf(want, sizeof want, ": %s overlaps %s", a, b);
    const char *at = strstr(err, want);
    return at && (at[strlen(want)] == '\0' || at[strlen(want)] == ' ');
}

static size_t owner(const acase *c, size_t i);

/* The detail names output o and buffer x, in either order; where x is one
 * part of an allocation (the stored and the new positions of a KV cache,
 * one parameter's slice of the optimizer state), a part next to it may be
 * the one met first. */
static int names_o_and_x(const acase *c, const char *err, size_t o, size_t x)
{
    for (size_t j = 0; j < c->n; j++)
        if (j == x || (c->b[x].share && owner(c, j) == owner(c, x)))
            if (names_pair(err, c->b[o].name, c->b[j].name) ||
                names_pair(err, c->b[j].name, c->b[o].name))
                return 1;
    return 0;
}

static void expect_refusal(const acase *c, fix *f, tb_ctx *ctx, arena *a, size_t o, size_t x,
                           int how, unsigned char **p, unsigned char *snap, fix *fsnap)
{
    const abuf *bo = &c->b[o], *bx = &c->b[x];
    if (c->bind)
        c->bind(f, p);
    memcpy(snap, a->mem, a->bytes);
    memcpy(fsnap, f, sizeof *f);
    tb_ctx_clear_error(ctx);
    const tb_status st = c->call(f, ctx, p);
    const char *err = tb_ctx_error(ctx);
    ck_assert_msg(st == TB_ERR_INVALID_ARG, "%s: %s over %s %s returned %s (%s)", c->fn, bo->name,
                  bx->name, place_names[how], tb_strerror(st), err);
    ck_assert_msg(strncmp(err, c->fn, strlen(c->fn)) == 0 && names_o_and_x(c, err, o, x),
                  "%s: %s over %s %s: detail \"%s\" does not name the pair", c->fn, bo->name,
                  bx->name, place_names[how], err);
    /* memcmp first: a check per byte is a message to Check's parent process */
    for (size_t i = 0; memcmp(a->mem, snap, a->bytes) != 0 && i < a->bytes; i++)
        ck_assert_msg(a->mem[i] == snap[i],
                      "%s: refused call with %s over %s %s changed byte %zu of the arena", c->fn,
                      bo->name, bx->name, place_names[how], i);
    ck_assert_msg(memcmp(f, fsnap, sizeof *f) == 0,
                  "%s: refused call with %s over %s %s changed the call's structs", c->fn,
                  bo->name, bx->name, place_names[how]);
}

/* Output o exactly over input x where allowed: the bits of the out-of-place
 * call whose o started as a copy of x, every other buffer as there. */
static void expect_in_place(const acase *c, fix *f, tb_ctx *ctx, arena *a, size_t o, size_t x,
                            unsigned char **p, unsigned char *ref, unsigned char *fresh)
{
    const abuf *bo = &c->b[o], *bx = &c->b[x];
    ck_assert_msg(bo->bytes == bx->bytes && bo->first == bx->first && bo->last == bx->last,
                  "%s: the table lets %s be %s but their extents differ", c->fn, bo->name,
                  bx->name);
    prepare(c, f, ctx, a);
    memcpy(a->home[o], a->home[x], bo->bytes);
    move(c, a, SIZE_MAX, NULL, p);
    tb_status st = run(c, f, ctx, p);
    ck_assert_msg(st == TB_OK, "%s: out of place: %s", c->fn, tb_ctx_error(ctx));
    memcpy(ref, a->mem, a->bytes);
    prepare(c, f, ctx, a);
    memcpy(fresh, a->mem, a->bytes);
    move(c, a, o, a->home[x], p);
    st = run(c, f, ctx, p);
    ck_assert_msg(st == TB_OK, "%s: %s in place of %s: %s", c->fn, bo->name, bx->name,
                  tb_ctx_error(ctx));
    const size_t off_o = (size_t)(a->home[o] - a->mem), off_x = (size_t)(a->home[x] - a->mem);
    ck_assert_msg(memcmp(a->mem + off_x, ref + off_o, bo->bytes) == 0,
                  "%s: %s in place of %s differs from the out-of-place result", c->fn, bo->name,
                  bx->name);
    ck_assert_msg(memcmp(a->mem + off_o, fresh + off_o, bo->bytes) == 0,
                  "%s: %s in place of %s wrote %s's usual place", c->fn, bo->name, bx->name,
                  bo->name);
    for (size_t i = 0; i < c->n; i++) {
        if (i == o || i == x || c->b[i].share)
            continue;
        const size_t off = (size_t)(a->home[i] - a->mem);
        ck_assert_msg(memcmp(a->mem + off, ref + off, c->b[i].bytes) == 0,
                      "%s: %s in place of %s: %s differs from the out-of-place call", c->fn,
                      bo->name, bx->name, c->b[i].name);
    }
}

/* Owner of buffer i's allocation. */
static size_t owner(const acase *c, size_t i)
{
    return c->b[i].share ? (size_t)c->b[i].share - 1 : i;
}

/* Every (output, other buffer) pair of one table, every placement.
 * Returns the number of calls checked. */
static size_t run_table(const acase *c)
{
    tb_ctx ctx;
    tbt_ctx_init(&ctx, 2);
    fix f;
    memset(&f, 0, sizeof f);
    if (c->setup)
        c->setup(&f, &ctx);
    arena a;
    arena_init(&a, c);
    unsigned char *snap = tbt_alloc(a.bytes), *ref = tbt_alloc(a.bytes),
                  *fresh = tbt_alloc(a.bytes);
    fix *fsnap = tbt_alloc(sizeof *fsnap);
    unsigned char *p[MAXB];
    size_t checked = 0;

    /* The table is right: everything apart, the call succeeds. */
    prepare(c, &f, &ctx, &a);
    move(c, &a, SIZE_MAX, NULL, p);
    tb_status st = run(c, &f, &ctx, p);
    ck_assert_msg(st == TB_OK, "%s with every buffer apart: %s (%s)", c->fn, tb_strerror(st),
                  tb_ctx_error(&ctx));

    for (size_t o = 0; o < c->n; o++) {
        if (c->b[o].role != OUT || c->b[o].share)
            continue;
        for (size_t x = 0; x < c->n; x++) {
            if (owner(c, x) == o)
                continue;
            for (int how = 0; how < N_PLACES; how++) {
                long long d;
                if (!place(&c->b[o], &c->b[x], how, &d))
                    continue;
                if (how == EXACT && (c->b[o].same_ok >> x & 1u)) {
                    expect_in_place(c, &f, &ctx, &a, o, x, p, ref, fresh);
                } else {
                    prepare(c, &f, &ctx, &a);
                    move(c, &a, o, a.home[x] + d, p);
                    expect_refusal(c, &f, &ctx, &a, o, x, how, p, snap, fsnap);
                }
                checked++;
            }
        }
    }
    /* The optimizer and EWC state go back to their own memory before free. */
    if (f.opt_m)
        f.opt.m = f.opt_m, f.opt.v = f.opt_v, f.opt.vmax = f.opt_vmax;
    if (f.ewc_anchor)
        f.ewc.anchor = f.ewc_anchor, f.ewc.fisher = f.ewc_fisher;
    tb_lora_free(&f.lora); /* its adapter's storage is its own; only pointers were moved */
    tb_linear_free(&f.lin);
    tb_embedding_free(&f.emb);
    tb_layernorm_free(&f.ln);
    tb_rmsnorm_free(&f.rn);
    tb_batchnorm_free(&f.bn);
    tb_mha_free(&f.mha);
    tb_kv_cache_free(&f.kv);
    tb_lstm_free(&f.lstm);
    tb_ptuning_free(&f.pt);
    tb_adam_free(&f.opt);
    tb_ewc_free(&f.ewc);
    tb_param_list_free(&f.list);
    free(a.mem), free(snap), free(ref), free(fresh), free(fsnap);
    return checked;
}

/* ---- elementwise blocks, softmax, residual, dropout -------------------- */

enum { NR = 3, NC = 4, NX = NR * NC };

static tb_tensor t2(bufs p, size_t i, size_t rows, size_t cols)
{
    return tb_tensor_2d(F(p, i), rows, cols);
}

static tb_status c_gelu_fwd(fix *f, tb_ctx *ctx, bufs p)
{
    (void)f;
    tb_tensor x = t2(p, 0, NR, NC), y = t2(p, 1, NR, NC);
    return tb_gelu_forward(ctx, TB_GELU_TANH, &x, &y);
}

static tb_status c_gelu_bwd(fix *f, tb_ctx *ctx, bufs p)
{
    (void)f;
    tb_tensor x = t2(p, 0, NR, NC), dy = t2(p, 1, NR, NC), dx = t2(p, 2, NR, NC);
    return tb_gelu_backward(ctx, TB_GELU_EXACT, &x, &dy, &dx);
}

static tb_status c_relu_fwd(fix *f, tb_ctx *ctx, bufs p)
{
    (void)f;
    tb_tensor x = t2(p, 0, NR, NC), y = t2(p, 1, NR, NC);
    return tb_relu_forward(ctx, &x, &y);
}

static tb_status c_relu_bwd(fix *f, tb_ctx *ctx, bufs p)
{
    (void)f;
    tb_tensor x = t2(p, 0, NR, NC), dy = t2(p, 1, NR, NC), dx = t2(p, 2, NR, NC);
    return tb_relu_backward(ctx, &x, &dy, &dx);
}

static tb_status c_softmax_fwd(fix *f, tb_ctx *ctx, bufs p)
{
    (void)f;
    tb_tensor x = t2(p, 0, NR, NC), y = t2(p, 1, NR, NC);
    return tb_softmax_forward(ctx, &x, &y);
}

static tb_status c_softmax_bwd(fix *f, tb_ctx *ctx, bufs p)
{
    (void)f;
    tb_tensor y = t2(p, 0, NR, NC), dy = t2(p, 1, NR, NC), dx = t2(p, 2, NR, NC);
    return tb_softmax_backward(ctx, &y, &dy, &dx);
}

static tb_status c_residual_fwd(fix *f, tb_ctx *ctx, bufs p)
{
    (void)f;
    tb_tensor x = t2(p, 0, NR, NC), fx = t2(p, 1, NR, NC), y = t2(p, 2, NR, NC);
    return tb_residual_forward(ctx, &x, &fx, &y);
}

static tb_status c_residual_bwd(fix *f, tb_ctx *ctx, bufs p)
{
    (void)f;
    tb_tensor dy = t2(p, 0, NR, NC), dx = t2(p, 1, NR, NC);
    return tb_residual_backward(ctx, &dy, &dx);
}

/* x -> y: one input, one output that may replace it. */
static void unary(acase *c, const char *fn, const char *in, const char *out,
                  tb_status (*call)(fix *, tb_ctx *, bufs))
{
    c->fn = fn;
    const size_t x = add_f(c, in, IN, NX), y = add_f(c, out, OUT, NX);
    may_be(c, y, x);
    c->fill = fill_plain;
    c->call = call;
}

/* (a, b) -> out, out may replace either. */
static void binary(acase *c, const char *fn, const char *a, const char *b, const char *out,
                   tb_status (*call)(fix *, tb_ctx *, bufs))
{
    c->fn = fn;
    const size_t i = add_f(c, a, IN, NX), j = add_f(c, b, IN, NX), o = add_f(c, out, OUT, NX);
    may_be(c, o, i);
    may_be(c, o, j);
    c->fill = fill_plain;
    c->call = call;
}

static void t_gelu_fwd(acase *c)
{
    unary(c, "tb_gelu_forward", "x", "y", c_gelu_fwd);
}
static void t_gelu_bwd(acase *c)
{
    binary(c, "tb_gelu_backward", "x", "dy", "dx", c_gelu_bwd);
}
static void t_relu_fwd(acase *c)
{
    unary(c, "tb_relu_forward", "x", "y", c_relu_fwd);
}
static void t_relu_bwd(acase *c)
{
    binary(c, "tb_relu_backward", "x", "dy", "dx", c_relu_bwd);
}
static void t_softmax_fwd(acase *c)
{
    unary(c, "tb_softmax_forward", "x", "y", c_softmax_fwd);
}
static void t_softmax_bwd(acase *c)
{
    binary(c, "tb_softmax_backward", "y", "dy", "dx", c_softmax_bwd);
}
static void t_residual_fwd(acase *c)
{
    binary(c, "tb_residual_forward", "x", "fx", "y", c_residual_fwd);
}
static void t_residual_bwd(acase *c)
{
    unary(c, "tb_residual_backward", "dy", "dx", c_residual_bwd);
}

/* dropout forward: x | y (may be x), cache, rng */
static void fill_dropout_fwd(const acase *c, fix *f, tb_ctx *ctx, bufs p)
{
    fill_plain(c, f, ctx, p);
    tb_rng_init((tb_rng *)p[3], 77);
}

static tb_status c_dropout_fwd(fix *f, tb_ctx *ctx, bufs p)
{
    (void)f;
    tb_tensor x = t2(p, 0, NR, NC), y = t2(p, 1, NR, NC);
    return tb_dropout_forward(ctx, TB_MODE_TRAINING, 0.5f, (tb_rng *)p[3], &x, &y,
                              (tb_dropout_cache *)p[2]);
}

static void t_dropout_fwd(acase *c)
{
    c->fn = "tb_dropout_forward";
    const size_t x = add_f(c, "x", IN, NX), y = add_f(c, "y", OUT, NX);
    add(c, "cache", OUT, sizeof(tb_dropout_cache), 8);
    add(c, "rng", OUT, sizeof(tb_rng), 8);
    may_be(c, y, x);
    c->fill = fill_dropout_fwd;
    c->call = c_dropout_fwd;
}

/* dropout backward: dy | dx (may be dy). The cache struct is read before dx
 * is written, so it is not a buffer of the table; it is the fixture's. */
static tb_dropout_cache dropout_cache_of(void)
{
    tb_ctx ctx;
    tbt_ctx_init(&ctx, 1);
    float x[NX] = {0}, y[NX];
    tb_tensor xt = tb_tensor_1d(x, NX), yt = tb_tensor_1d(y, NX);
    tb_rng rng;
    tb_rng_init(&rng, 5);
    tb_dropout_cache dc;
    CHECK_OK(ctx, tb_dropout_forward(&ctx, TB_MODE_TRAINING, 0.5f, &rng, &xt, &yt, &dc));
    return dc;
}

static tb_status c_dropout_bwd(fix *f, tb_ctx *ctx, bufs p)
{
    (void)f;
    const tb_dropout_cache dc = dropout_cache_of();
    tb_tensor dy = t2(p, 0, NR, NC), dx = t2(p, 1, NR, NC);
    return tb_dropout_backward(ctx, &dy, &dc, &dx);
}

static void t_dropout_bwd(acase *c)
{
    unary(c, "tb_dropout_backward", "dy", "dx", c_dropout_bwd);
}

/* ---- linear and embedding ---------------------------------------------- */

enum { LIN = 4, LOUT = 5 };

/* A layer over parameters in the arena (weight (out, in), bias). */
static void bind_linear(fix *f, unsigned char *w, unsigned char *gw, unsigned char *b,
                        unsigned char *gb)
{
    const size_t ws[2] = {LOUT, LIN}, bs[1] = {LOUT};
    tb_ctx ctx;
    tb_ctx_init(&ctx);
    CHECK_OK(ctx, tb_param_view(&ctx, &f->w, (float *)w, (float *)gw, 2, ws));
    CHECK_OK(ctx, tb_param_view(&ctx, &f->b, (float *)b, (float *)gb, 1, bs));
    ck_assert_int_eq(tb_linear_view(&ctx, &f->lin, &f->w, &f->b, TB_LINEAR_OUT_IN), TB_OK);
}

/* forward: x, weight, bias | y */
static void b_linear_fwd(fix *f, bufs p)
{
    unsigned char *grads = (unsigned char *)f->spare; /* not touched by forward */
    bind_linear(f, p[1], grads, p[2], grads);
}

static tb_status c_linear_fwd(fix *f, tb_ctx *ctx, bufs p)
{
    tb_tensor x = t2(p, 0, NR, LIN), y = t2(p, 3, NR, LOUT);
    return tb_linear_forward(ctx, &f->lin, &x, &y);
}

static void t_linear_fwd(acase *c)
{
    c->fn = "tb_linear_forward";
    add_f(c, "x", IN, NR * LIN);
    add_f(c, "weight", IN, LOUT * LIN);
    add_f(c, "bias", IN, LOUT);
    add_f(c, "y", OUT, NR * LOUT);
    c->bind = b_linear_fwd;
    c->fill = fill_plain;
    c->call = c_linear_fwd;
}

/* backward: x, dy, weight | dx, weight.grad, bias.grad */
static void b_linear_bwd(fix *f, bufs p)
{
    bind_linear(f, p[2], p[4], (unsigned char *)f->spare, p[5]); /* the bias is not read */
}

static tb_status c_linear_bwd(fix *f, tb_ctx *ctx, bufs p)
{
    tb_tensor x = t2(p, 0, NR, LIN), dy = t2(p, 1, NR, LOUT), dx = t2(p, 3, NR, LIN);
    return tb_linear_backward(ctx, &f->lin, &x, &dy, &dx);
}

static void t_linear_bwd(acase *c)
{
    c->fn = "tb_linear_backward";
    add_f(c, "x", IN, NR * LIN);
    add_f(c, "dy", IN, NR * LOUT);
    add_f(c, "weight", IN, LOUT * LIN);
    add_f(c, "dx", OUT, NR * LIN);
    add_f(c, "weight.grad", OUT, LOUT * LIN);
    add_f(c, "bias.grad", OUT, LOUT);
    c->bind = b_linear_bwd;
    c->fill = fill_plain;
    c->call = c_linear_bwd;
}

enum { EV = 6, ED = 4, EN = 3 };

static void setup_embedding(fix *f, tb_ctx *ctx)
{
    tb_rng rng;
    tb_rng_init(&rng, 3);
    CHECK_OK(*ctx, tb_embedding_init(ctx, &f->emb, EV, ED, &rng));
}

static void fill_ids(const acase *c, fix *f, tb_ctx *ctx, bufs p)
{
    fill_plain(c, f, ctx, p);
    int32_t *ids = (int32_t *)p[0];
    ids[0] = 4, ids[1] = 1, ids[2] = 4;
}

/* forward: ids, weight | out */
static void b_embedding_fwd(fix *f, bufs p)
{
    f->emb.weight.value = F(p, 1);
}

static tb_status c_embedding_fwd(fix *f, tb_ctx *ctx, bufs p)
{
    tb_tensor out = t2(p, 2, EN, ED);
    return tb_embedding_forward(ctx, &f->emb, (const int32_t *)p[0], EN, &out);
}

static void t_embedding_fwd(acase *c)
{
    c->fn = "tb_embedding_forward";
    add(c, "ids", IN, EN * sizeof(int32_t), sizeof(int32_t));
    add_f(c, "weight", IN, EV * ED);
    add_f(c, "out", OUT, EN * ED);
    c->setup = setup_embedding;
    c->bind = b_embedding_fwd;
    c->fill = fill_ids;
    c->call = c_embedding_fwd;
}

/* backward: ids, dy | weight.grad */
static void b_embedding_bwd(fix *f, bufs p)
{
    f->emb.weight.grad = F(p, 2);
}

static tb_status c_embedding_bwd(fix *f, tb_ctx *ctx, bufs p)
{
    tb_tensor dout = t2(p, 1, EN, ED);
    return tb_embedding_backward(ctx, &f->emb, (const int32_t *)p[0], EN, &dout);
}

static void t_embedding_bwd(acase *c)
{
    c->fn = "tb_embedding_backward";
    add(c, "ids", IN, EN * sizeof(int32_t), sizeof(int32_t));
    add_f(c, "dy", IN, EN * ED);
    add_f(c, "weight.grad", OUT, EV * ED);
    c->setup = setup_embedding;
    c->bind = b_embedding_bwd;
    c->fill = fill_ids;
    c->call = c_embedding_bwd;
}

/* ---- LoRA ---------------------------------------------------------------
 * One DoRA adapter (rank LR) on a 4 -> 5 layer: every buffer a forward or
 * backward touches (the magnitude only exists for DoRA). */

enum { LR = 2 };

static void setup_lora(fix *f, tb_ctx *ctx)
{
    tb_rng rng;
    tb_rng_init(&rng, 17);
    CHECK_OK(*ctx, tb_linear_init(ctx, &f->lin, LIN, LOUT, 1, &rng));
    CHECK_OK(*ctx, tb_lora_init(ctx, &f->lora, &f->lin));
    tb_lora_config c = tb_lora_config_default(LR);
    c.use_dora = 1;
    c.init = TB_LORA_INIT_RANDOM;
    CHECK_OK(*ctx, tb_lora_add(ctx, &f->lora, "d", &c, &rng));
}

static size_t lora_cache(void)
{
    tb_ctx ctx;
    tbt_ctx_init(&ctx, 1);
    fix f;
    memset(&f, 0, sizeof f);
    setup_lora(&f, &ctx);
    size_t bytes;
    ck_assert_int_eq(tb_lora_cache_size(&f.lora, NR, &bytes), TB_OK);
    tb_lora_free(&f.lora);
    tb_linear_free(&f.lin);
    return bytes;
}

static void bind_lora_values(fix *f, bufs p, size_t iw, size_t ib, size_t ia)
{
    tb_lora_adapter *ad = &f->lora.adapter[0];
    f->lin.weight.value = F(p, iw);
    f->lin.bias.value = ib ? F(p, ib) : f->spare; /* backward does not read the bias */
    ad->A.value = F(p, ia);
    ad->B.value = F(p, ia + 1);
    ad->magnitude.value = F(p, ia + 2);
}

/* forward: x, weight, bias, lora_A, lora_B, lora_magnitude_vector | y, cache */
enum { LF_X, LF_W, LF_B, LF_A, LF_Y = LF_A + 3, LF_CACHE };

static void b_lora_fwd(fix *f, bufs p)
{
    bind_lora_values(f, p, LF_W, LF_B, LF_A);
}

static tb_status c_lora_fwd(fix *f, tb_ctx *ctx, bufs p)
{
    tb_tensor x = t2(p, LF_X, NR, LIN), y = t2(p, LF_Y, NR, LOUT);
    return tb_lora_forward(ctx, &f->lora, TB_MODE_TRAINING, NULL, &x, &y, p[LF_CACHE],
                           lora_cache());
}

static void add_lora_values(acase *c)
{
    add_f(c, "lora_A", IN, LR * LIN);
    add_f(c, "lora_B", IN, LOUT * LR);
    add_f(c, "lora_magnitude_vector", IN, LOUT);
}

static void t_lora_fwd(acase *c)
{
    c->fn = "tb_lora_forward";
    add_f(c, "x", IN, NR * LIN);
    add_f(c, "weight", IN, LOUT * LIN);
    add_f(c, "bias", IN, LOUT);
    add_lora_values(c);
    add_f(c, "y", OUT, NR * LOUT);
    add(c, "cache", OUT, lora_cache(), sizeof(float));
    c->setup = setup_lora;
    c->bind = b_lora_fwd;
    c->fill = fill_plain;
    c->call = c_lora_fwd;
}

/* forward with the adapter's dropout active: the stream it advances is an
 * output too: x, weight, bias, lora_A, lora_B, lora_magnitude_vector | y,
 * cache, rng */
enum { LF_RNG = LF_CACHE + 1 };

static void setup_lora_drop(fix *f, tb_ctx *ctx)
{
    setup_lora(f, ctx);
    tb_lora_free(&f->lora);
    CHECK_OK(*ctx, tb_lora_init(ctx, &f->lora, &f->lin));
    tb_rng rng;
    tb_rng_init(&rng, 18);
    tb_lora_config c = tb_lora_config_default(LR);
    c.use_dora = 1;
    c.dropout = 0.5f;
    c.init = TB_LORA_INIT_RANDOM;
    CHECK_OK(*ctx, tb_lora_add(ctx, &f->lora, "d", &c, &rng));
}

static void fill_lora_drop(const acase *c, fix *f, tb_ctx *ctx, bufs p)
{
    fill_plain(c, f, ctx, p);
    tb_rng_init((tb_rng *)p[LF_RNG], 77);
}

static tb_status c_lora_fwd_drop(fix *f, tb_ctx *ctx, bufs p)
{
    tb_tensor x = t2(p, LF_X, NR, LIN), y = t2(p, LF_Y, NR, LOUT);
    return tb_lora_forward(ctx, &f->lora, TB_MODE_TRAINING, (tb_rng *)p[LF_RNG], &x, &y,
                           p[LF_CACHE], lora_cache());
}

static void t_lora_fwd_drop(acase *c)
{
    t_lora_fwd(c);
    add(c, "rng", OUT, sizeof(tb_rng), 8);
    c->setup = setup_lora_drop;
    c->fill = fill_lora_drop;
    c->call = c_lora_fwd_drop;
}

/* backward: x, dy, weight, cache, lora_A, lora_B, lora_magnitude_vector |
 * dx, and the three gradients */
enum { LG_X, LG_DY, LG_W, LG_CACHE, LG_A, LG_DX = LG_A + 3, LG_GA };

static void b_lora_bwd(fix *f, bufs p)
{
    tb_lora_adapter *ad = &f->lora.adapter[0];
    bind_lora_values(f, p, LG_W, 0, LG_A);
    ad->A.grad = F(p, LG_GA);
    ad->B.grad = F(p, LG_GA + 1);
    ad->magnitude.grad = F(p, LG_GA + 2);
}

static void fill_lora_bwd(const acase *c, fix *f, tb_ctx *ctx, bufs p)
{
    fill_plain(c, f, ctx, p);
    float y[NR * LOUT];
    tb_tensor x = t2(p, LG_X, NR, LIN), yt = tb_tensor_2d(y, NR, LOUT);
    CHECK_OK(*ctx, tb_lora_forward(ctx, &f->lora, TB_MODE_TRAINING, NULL, &x, &yt, p[LG_CACHE],
                                   lora_cache()));
}

static tb_status c_lora_bwd(fix *f, tb_ctx *ctx, bufs p)
{
    tb_tensor x = t2(p, LG_X, NR, LIN), dy = t2(p, LG_DY, NR, LOUT), dx = t2(p, LG_DX, NR, LIN);
    return tb_lora_backward(ctx, &f->lora, &x, &dy, &dx, p[LG_CACHE], lora_cache());
}

static void t_lora_bwd(acase *c)
{
    c->fn = "tb_lora_backward";
    add_f(c, "x", IN, NR * LIN);
    add_f(c, "dy", IN, NR * LOUT);
    add_f(c, "weight", IN, LOUT * LIN);
    add(c, "cache", IN, lora_cache(), sizeof(float));
    add_lora_values(c);
    add_f(c, "dx", OUT, NR * LIN);
    add_f(c, "lora_A.grad", OUT, LR * LIN);
    add_f(c, "lora_B.grad", OUT, LOUT * LR);
    add_f(c, "lora_magnitude_vector.grad", OUT, LOUT);
    c->setup = setup_lora;
    c->bind = b_lora_bwd;
    c->fill = fill_lora_bwd;
    c->call = c_lora_bwd;
}

/* ---- cross-entropy ------------------------------------------------------ */

enum { CN = 3, CV = 5 };

static size_t ce_cache_bytes(void)
{
    size_t bytes;
    ck_assert_int_eq(tb_cross_entropy_cache_size(CN, &bytes), TB_OK);
    return bytes;
}

static void fill_targets(const acase *c, fix *f, tb_ctx *ctx, bufs p)
{
    fill_plain(c, f, ctx, p);
    int32_t *t = (int32_t *)p[1];
    t[0] = 2, t[1] = TB_IGNORE_INDEX, t[2] = 4;
}

/* forward: logits, targets | cache, loss */
static tb_status c_ce_fwd(fix *f, tb_ctx *ctx, bufs p)
{
    (void)f;
    tb_tensor logits = t2(p, 0, CN, CV);
    return tb_cross_entropy_forward(ctx, NULL, &logits, (const int32_t *)p[1], CN, F(p, 3), p[2],
                                    ce_cache_bytes());
}

static void t_ce_fwd(acase *c)
{
    c->fn = "tb_cross_entropy_forward";
    add_f(c, "logits", IN, CN * CV);
    add(c, "targets", IN, CN * sizeof(int32_t), sizeof(int32_t));
    add(c, "cache", OUT, ce_cache_bytes(), sizeof(float));
    add(c, "loss", OUT, sizeof(float), sizeof(float));
    c->fill = fill_targets;
    c->call = c_ce_fwd;
}

/* backward: logits, targets, cache | dlogits (may be logits) */
static void fill_ce_bwd(const acase *c, fix *f, tb_ctx *ctx, bufs p)
{
    fill_targets(c, f, ctx, p);
    tb_tensor logits = t2(p, 0, CN, CV);
    float loss;
    CHECK_OK(*ctx, tb_cross_entropy_forward(ctx, NULL, &logits, (const int32_t *)p[1], CN, &loss,
                                            p[2], ce_cache_bytes()));
}

static tb_status c_ce_bwd(fix *f, tb_ctx *ctx, bufs p)
{
    (void)f;
    tb_tensor logits = t2(p, 0, CN, CV), dlogits = t2(p, 3, CN, CV);
    return tb_cross_entropy_backward(ctx, NULL, &logits, (const int32_t *)p[1], CN, 0.5f, p[2],
                                     ce_cache_bytes(), &dlogits);
}

static void t_ce_bwd(acase *c)
{
    c->fn = "tb_cross_entropy_backward";
    const size_t logits = add_f(c, "logits", IN, CN * CV);
    add(c, "targets", IN, CN * sizeof(int32_t), sizeof(int32_t));
    const size_t cache = add(c, "cache", IN, ce_cache_bytes(), sizeof(float));
    /* backward reads the header and one log-sum-exp per row */
    touched(c, cache, 0, ce_cache_bytes() - CN * sizeof(float) - sizeof(float));
    const size_t d = add_f(c, "dlogits", OUT, CN * CV);
    may_be(c, d, logits);
    c->fill = fill_ce_bwd;
    c->call = c_ce_bwd;
}

/* ---- contrastive loss --------------------------------------------------- */

enum { CLN = 3, CLD = 4 };

static size_t cl_cache_bytes(void)
{
    size_t bytes;
    ck_assert_int_eq(tb_contrastive_cache_size(CLN, CLD, &bytes), TB_OK);
    return bytes;
}

static tb_param cl_scale(float *value, float *grad)
{
    tb_param p;
    const size_t one = 1;
    ck_assert_int_eq(tb_param_view(NULL, &p, value, grad, 1, &one), TB_OK);
    return p;
}

/* forward: img, txt, logit_scale | cache, loss, logits_per_image */
static tb_status c_cl_fwd(fix *f, tb_ctx *ctx, bufs p)
{
    (void)f;
    tb_tensor img = t2(p, 0, CLN, CLD), txt = t2(p, 1, CLN, CLD), lpi = t2(p, 5, CLN, CLN);
    tb_param s = cl_scale(F(p, 2), NULL);
    return tb_contrastive_forward(ctx, &img, &txt, &s, F(p, 4), &lpi, p[3], cl_cache_bytes());
}

static void t_cl_fwd(acase *c)
{
    c->fn = "tb_contrastive_forward";
    add_f(c, "img", IN, CLN * CLD);
    add_f(c, "txt", IN, CLN * CLD);
    add_f(c, "logit_scale", IN, 1);
    add(c, "cache", OUT, cl_cache_bytes(), sizeof(float));
    add_f(c, "loss", OUT, 1);
    add_f(c, "logits_per_image", OUT, CLN * CLN);
    c->fill = fill_plain;
    c->call = c_cl_fwd;
}

/* backward: img, txt, cache, logit_scale | dimg, dtxt, logit_scale.grad */
static void fill_cl_bwd(const acase *c, fix *f, tb_ctx *ctx, bufs p)
{
    fill_plain(c, f, ctx, p);
    tb_tensor img = t2(p, 0, CLN, CLD), txt = t2(p, 1, CLN, CLD);
    tb_param s = cl_scale(F(p, 3), NULL);
    float loss;
    CHECK_OK(*ctx, tb_contrastive_forward(ctx, &img, &txt, &s, &loss, NULL, p[2],
                                          cl_cache_bytes()));
}

static tb_status c_cl_bwd(fix *f, tb_ctx *ctx, bufs p)
{
    (void)f;
    tb_tensor img = t2(p, 0, CLN, CLD), txt = t2(p, 1, CLN, CLD);
    tb_tensor di = t2(p, 4, CLN, CLD), dt = t2(p, 5, CLN, CLD);
    tb_param s = cl_scale(F(p, 3), F(p, 6));
    return tb_contrastive_backward(ctx, &img, &txt, &s, 0.5f, p[2], cl_cache_bytes(), &di, &dt);
}

static void t_cl_bwd(acase *c)
{
    c->fn = "tb_contrastive_backward";
    add_f(c, "img", IN, CLN * CLD);
    add_f(c, "txt", IN, CLN * CLD);
    add(c, "cache", IN, cl_cache_bytes(), sizeof(float));
    add_f(c, "logit_scale", IN, 1);
    add_f(c, "dimg", OUT, CLN * CLD);
    add_f(c, "dtxt", OUT, CLN * CLD);
    add_f(c, "logit_scale.grad", OUT, 1);
    c->fill = fill_cl_bwd;
    c->call = c_cl_bwd;
}

/* ---- LayerNorm, RMSNorm, BatchNorm -------------------------------------- */

static size_t ln_cache_bytes(void)
{
    size_t bytes;
    ck_assert_int_eq(tb_layernorm_cache_size(NR, &bytes), TB_OK);
    return bytes;
}

static void setup_ln(fix *f, tb_ctx *ctx)
{
    CHECK_OK(*ctx, tb_layernorm_init(ctx, &f->ln, NC, 1e-5f, TB_NORM_SCALE | TB_NORM_SHIFT));
}

static void setup_rn(fix *f, tb_ctx *ctx)
{
    CHECK_OK(*ctx, tb_rmsnorm_init(ctx, &f->rn, NC, 1e-5f, TB_NORM_SCALE));
}

/* LayerNorm forward: x, weight, bias | y (may be x), cache */
static void b_ln_fwd(fix *f, bufs p)
{
    f->ln.weight.value = F(p, 1);
    f->ln.bias.value = F(p, 2);
}

static tb_status c_ln_fwd(fix *f, tb_ctx *ctx, bufs p)
{
    tb_tensor x = t2(p, 0, NR, NC), y = t2(p, 3, NR, NC);
    return tb_layernorm_forward(ctx, &f->ln, &x, &y, p[4], ln_cache_bytes());
}

static void t_ln_fwd(acase *c)
{
    c->fn = "tb_layernorm_forward";
    const size_t x = add_f(c, "x", IN, NX);
    add_f(c, "weight", IN, NC);
    add_f(c, "bias", IN, NC);
    const size_t y = add_f(c, "y", OUT, NX);
    add(c, "cache", OUT, ln_cache_bytes(), sizeof(float));
    may_be(c, y, x);
    c->setup = setup_ln;
    c->bind = b_ln_fwd;
    c->fill = fill_plain;
    c->call = c_ln_fwd;
}

/* LayerNorm backward: x, dy, cache, weight | dx (may be dy), weight.grad,
 * bias.grad */
static void b_ln_bwd(fix *f, bufs p)
{
    f->ln.weight.value = F(p, 3);
    f->ln.weight.grad = F(p, 5);
    f->ln.bias.grad = F(p, 6);
}

static void fill_ln_bwd(const acase *c, fix *f, tb_ctx *ctx, bufs p)
{
    fill_plain(c, f, ctx, p);
    float y[NX];
    tb_tensor x = t2(p, 0, NR, NC), yt = tb_tensor_2d(y, NR, NC);
    CHECK_OK(*ctx, tb_layernorm_forward(ctx, &f->ln, &x, &yt, p[2], ln_cache_bytes()));
}

static tb_status c_ln_bwd(fix *f, tb_ctx *ctx, bufs p)
{
    tb_tensor x = t2(p, 0, NR, NC), dy = t2(p, 1, NR, NC), dx = t2(p, 4, NR, NC);
    return tb_layernorm_backward(ctx, &f->ln, &x, &dy, p[2], ln_cache_bytes(), &dx);
}

static void t_ln_bwd(acase *c)
{
    c->fn = "tb_layernorm_backward";
    add_f(c, "x", IN, NX);
    const size_t dy = add_f(c, "dy", IN, NX);
    add(c, "cache", IN, ln_cache_bytes(), sizeof(float));
    add_f(c, "weight", IN, NC);
    const size_t dx = add_f(c, "dx", OUT, NX);
    add_f(c, "weight.grad", OUT, NC);
    add_f(c, "bias.grad", OUT, NC);
    may_be(c, dx, dy);
    c->setup = setup_ln;
    c->bind = b_ln_bwd;
    c->fill = fill_ln_bwd;
    c->call = c_ln_bwd;
}

/* RMSNorm forward: x, weight | y (may be x), cache */
static void b_rn_fwd(fix *f, bufs p)
{
    f->rn.weight.value = F(p, 1);
}

static tb_status c_rn_fwd(fix *f, tb_ctx *ctx, bufs p)
{
    tb_tensor x = t2(p, 0, NR, NC), y = t2(p, 2, NR, NC);
    return tb_rmsnorm_forward(ctx, &f->rn, &x, &y, p[3], ln_cache_bytes());
}

static void t_rn_fwd(acase *c)
{
    c->fn = "tb_rmsnorm_forward";
    const size_t x = add_f(c, "x", IN, NX);
    add_f(c, "weight", IN, NC);
    const size_t y = add_f(c, "y", OUT, NX);
    add(c, "cache", OUT, ln_cache_bytes(), sizeof(float));
    may_be(c, y, x);
    c->setup = setup_rn;
    c->bind = b_rn_fwd;
    c->fill = fill_plain;
    c->call = c_rn_fwd;
}

/* RMSNorm backward: x, dy, cache, weight | dx (may be dy), weight.grad */
static void b_rn_bwd(fix *f, bufs p)
{
    f->rn.weight.value = F(p, 3);
    f->rn.weight.grad = F(p, 5);
}

static void fill_rn_bwd(const acase *c, fix *f, tb_ctx *ctx, bufs p)
{
    fill_plain(c, f, ctx, p);
    float y[NX];
    tb_tensor x = t2(p, 0, NR, NC), yt = tb_tensor_2d(y, NR, NC);
    CHECK_OK(*ctx, tb_rmsnorm_forward(ctx, &f->rn, &x, &yt, p[2], ln_cache_bytes()));
}

static tb_status c_rn_bwd(fix *f, tb_ctx *ctx, bufs p)
{
    tb_tensor x = t2(p, 0, NR, NC), dy = t2(p, 1, NR, NC), dx = t2(p, 4, NR, NC);
    return tb_rmsnorm_backward(ctx, &f->rn, &x, &dy, p[2], ln_cache_bytes(), &dx);
}

static void t_rn_bwd(acase *c)
{
    c->fn = "tb_rmsnorm_backward";
    add_f(c, "x", IN, NX);
    const size_t dy = add_f(c, "dy", IN, NX);
    add(c, "cache", IN, ln_cache_bytes(), sizeof(float));
    add_f(c, "weight", IN, NC);
    const size_t dx = add_f(c, "dx", OUT, NX);
    add_f(c, "weight.grad", OUT, NC);
    may_be(c, dx, dy);
    c->setup = setup_rn;
    c->bind = b_rn_bwd;
    c->fill = fill_rn_bwd;
    c->call = c_rn_bwd;
}

enum { BR = 5 }; /* BatchNorm rows (one padded) */

static size_t bn_cache_bytes(void)
{
    size_t bytes;
    ck_assert_int_eq(tb_batchnorm_cache_size(NC, &bytes), TB_OK);
    return bytes;
}

static void setup_bn(fix *f, tb_ctx *ctx)
{
    CHECK_OK(*ctx,
             tb_batchnorm_init(ctx, &f->bn, NC, 1e-5f, 0.1f, TB_NORM_SCALE | TB_NORM_SHIFT));
}

static void fill_valid(unsigned char *v)
{
    for (size_t r = 0; r < BR; r++)
        v[r] = r != 2;
}

/* forward (training): x, valid, weight, bias | y (may be x), cache,
 * running_mean, running_var */
static void b_bn_fwd(fix *f, bufs p)
{
    f->bn.weight.value = F(p, 2);
    f->bn.bias.value = F(p, 3);
    f->bn.running_mean.value = F(p, 6);
    f->bn.running_var.value = F(p, 7);
}

static void fill_bn_fwd(const acase *c, fix *f, tb_ctx *ctx, bufs p)
{
    fill_plain(c, f, ctx, p);
    fill_valid(p[1]);
    tbt_fill_uniform(F(p, 7), NC, 0.5f, 2.0f, 9); /* variances */
}

static tb_status c_bn_fwd(fix *f, tb_ctx *ctx, bufs p)
{
    tb_tensor x = t2(p, 0, BR, NC), y = t2(p, 4, BR, NC);
    return tb_batchnorm_forward(ctx, &f->bn, TB_MODE_TRAINING, &x, p[1], &y, p[5],
                                bn_cache_bytes());
}

static void t_bn_fwd(acase *c)
{
    c->fn = "tb_batchnorm_forward";
    const size_t x = add_f(c, "x", IN, BR * NC);
    add(c, "valid", IN, BR, 1);
    add_f(c, "weight", IN, NC);
    add_f(c, "bias", IN, NC);
    const size_t y = add_f(c, "y", OUT, BR * NC);
    add(c, "cache", OUT, bn_cache_bytes(), sizeof(float));
    add_f(c, "running_mean", OUT, NC);
    add_f(c, "running_var", OUT, NC);
    may_be(c, y, x);
    c->setup = setup_bn;
    c->bind = b_bn_fwd;
    c->fill = fill_bn_fwd;
    c->call = c_bn_fwd;
}

/* backward: x, valid, dy, cache, weight | dx (may be dy), weight.grad,
 * bias.grad */
static void b_bn_bwd(fix *f, bufs p)
{
    f->bn.weight.value = F(p, 4);
    f->bn.weight.grad = F(p, 6);
    f->bn.bias.grad = F(p, 7);
}

static void fill_bn_bwd(const acase *c, fix *f, tb_ctx *ctx, bufs p)
{
    fill_plain(c, f, ctx, p);
    fill_valid(p[1]);
    float y[BR * NC];
    tb_tensor x = t2(p, 0, BR, NC), yt = tb_tensor_2d(y, BR, NC);
    CHECK_OK(*ctx, tb_batchnorm_forward(ctx, &f->bn, TB_MODE_TRAINING, &x, p[1], &yt, p[3],
                                        bn_cache_bytes()));
}

static tb_status c_bn_bwd(fix *f, tb_ctx *ctx, bufs p)
{
    tb_tensor x = t2(p, 0, BR, NC), dy = t2(p, 2, BR, NC), dx = t2(p, 5, BR, NC);
    return tb_batchnorm_backward(ctx, &f->bn, &x, p[1], &dy, p[3], bn_cache_bytes(), &dx);
}

static void t_bn_bwd(acase *c)
{
    c->fn = "tb_batchnorm_backward";
    add_f(c, "x", IN, BR * NC);
    add(c, "valid", IN, BR, 1);
    const size_t dy = add_f(c, "dy", IN, BR * NC);
    add(c, "cache", IN, bn_cache_bytes(), sizeof(float));
    add_f(c, "weight", IN, NC);
    const size_t dx = add_f(c, "dx", OUT, BR * NC);
    add_f(c, "weight.grad", OUT, NC);
    add_f(c, "bias.grad", OUT, NC);
    may_be(c, dx, dy);
    c->setup = setup_bn;
    c->bind = b_bn_bwd;
    c->fill = fill_bn_bwd;
    c->call = c_bn_bwd;
}

/* ---- attention ---------------------------------------------------------- */

/* B 2, Tq 3, Tk 4, 2 query heads over 1 kv head of D 2. The operands are
 * heads inside wider tensors (q columns 1..5 of 6, k 1..3 of 3, v 2..4 of
 * 4), so their spans are strided. */
enum { AB = 2, ATQ = 3, ATK = 4, AH = 2, AHKV = 1, AD = 2, AWQ = 6, AWK = 3, AWV = 4 };
enum { AOQ = 1, AOK = 1, AOV = 2, AHD = AH * AD };

static size_t attn_cache_bytes(void)
{
    tb_attention_config cfg = tb_attention_default_config(AH, AD);
    size_t bytes;
    ck_assert_int_eq(tb_attention_cache_size(&cfg, AB, ATQ, &bytes), TB_OK);
    return bytes;
}

static void setup_attn(fix *f, tb_ctx *ctx)
{
    (void)ctx;
    f->acfg = tb_attention_default_config(AH, AD);
    f->acfg.n_kv_heads = AHKV;
}

/* The masks' arrays are buffers km, kv, kb of the table. */
static void bind_mask(fix *f, bufs p, size_t km)
{
    memset(&f->mask, 0, sizeof f->mask);
    f->mask.key_lengths = (const int32_t *)p[km];
    f->mask.key_valid = p[km + 1];
    f->mask.bias = F(p, km + 2);
}

static void fill_mask(bufs p, size_t km, size_t B, size_t tk)
{
    int32_t *len = (int32_t *)p[km];
    for (size_t b = 0; b < B; b++)
        len[b] = (int32_t)(tk - b);
    unsigned char *valid = p[km + 1];
    for (size_t i = 0; i < B * tk; i++)
        valid[i] = i != 1;
}

static void add_mask(acase *c, size_t B, size_t tq, size_t tk)
{
    add(c, "key_lengths", IN, B * sizeof(int32_t), sizeof(int32_t));
    add(c, "key_valid", IN, B * tk, 1);
    add_f(c, "bias", IN, tq * tk);
}

typedef struct attn_ops {
    tb_tensor qt, kt, vt;
    tb_heads q, k, v;
} attn_ops;

static void attn_views(bufs p, size_t iq, size_t ik, size_t iv, attn_ops *o)
{
    o->qt = tb_tensor_3d(F(p, iq), AB, ATQ, AWQ);
    o->kt = tb_tensor_3d(F(p, ik), AB, ATK, AWK);
    o->vt = tb_tensor_3d(F(p, iv), AB, ATK, AWV);
    o->q = (tb_heads){&o->qt, AOQ};
    o->k = (tb_heads){&o->kt, AOK};
    o->v = (tb_heads){&o->vt, AOV};
}

static void add_qkv(acase *c, const char *q, const char *k, const char *v, int role)
{
    add_heads(c, q, role, AB * ATQ, AWQ, AOQ, AHD);
    add_heads(c, k, role, AB * ATK, AWK, AOK, AHKV * AD);
    add_heads(c, v, role, AB * ATK, AWV, AOV, AHKV * AD);
}

/* forward: q, k, v, key_lengths, key_valid, bias | out, cache */
static void fill_attn(const acase *c, fix *f, tb_ctx *ctx, bufs p)
{
    fill_plain(c, f, ctx, p);
    fill_mask(p, 3, AB, ATK);
}

static void b_attn_fwd(fix *f, bufs p)
{
    bind_mask(f, p, 3);
}

static tb_status c_attn_fwd(fix *f, tb_ctx *ctx, bufs p)
{
    attn_ops o;
    attn_views(p, 0, 1, 2, &o);
    tb_tensor out = tb_tensor_3d(F(p, 6), AB, ATQ, AHD);
    return tb_attention_forward(ctx, &f->acfg, TB_MODE_TRAINING, &f->mask, &o.q, &o.k, &o.v, &out,
                                p[7], attn_cache_bytes());
}

static void t_attn_fwd(acase *c)
{
    c->fn = "tb_attention_forward";
    add_qkv(c, "q", "k", "v", IN);
    add_mask(c, AB, ATQ, ATK);
    add_f(c, "out", OUT, AB * ATQ * AHD);
    add(c, "cache", OUT, attn_cache_bytes(), sizeof(float));
    c->setup = setup_attn;
    c->bind = b_attn_fwd;
    c->fill = fill_attn;
    c->call = c_attn_fwd;
}

/* backward: q, k, v, key_lengths, key_valid, bias, out, dy, cache | dq,
 * dk, dv */
static void fill_attn_bwd(const acase *c, fix *f, tb_ctx *ctx, bufs p)
{
    fill_attn(c, f, ctx, p);
    bind_mask(f, p, 3);
    attn_ops o;
    attn_views(p, 0, 1, 2, &o);
    tb_tensor out = tb_tensor_3d(F(p, 6), AB, ATQ, AHD);
    CHECK_OK(*ctx, tb_attention_forward(ctx, &f->acfg, TB_MODE_TRAINING, &f->mask, &o.q, &o.k, &o.v,
                                        &out, p[8], attn_cache_bytes()));
}

static tb_status c_attn_bwd(fix *f, tb_ctx *ctx, bufs p)
{
    attn_ops o, d;
    attn_views(p, 0, 1, 2, &o);
    attn_views(p, 9, 10, 11, &d);
    tb_tensor out = tb_tensor_3d(F(p, 6), AB, ATQ, AHD), dout = tb_tensor_3d(F(p, 7), AB, ATQ, AHD);
    return tb_attention_backward(ctx, &f->acfg, &f->mask, &o.q, &o.k, &o.v, &out, &dout, p[8],
                                 attn_cache_bytes(), &d.q, &d.k, &d.v);
}

static void t_attn_bwd(acase *c)
{
    c->fn = "tb_attention_backward";
    add_qkv(c, "q", "k", "v", IN);
    add_mask(c, AB, ATQ, ATK);
    add_f(c, "out", IN, AB * ATQ * AHD);
    add_f(c, "dy", IN, AB * ATQ * AHD);
    add(c, "cache", IN, attn_cache_bytes(), sizeof(float));
    add_qkv(c, "dq", "dk", "dv", OUT);
    c->setup = setup_attn;
    c->bind = b_attn_fwd;
    c->fill = fill_attn_bwd;
    c->call = c_attn_bwd;
}

/* probs: q, k, key_lengths, key_valid, bias | probs (v is a placeholder
 * the call does not take) */
static tb_status c_attn_probs(fix *f, tb_ctx *ctx, bufs p)
{
    attn_ops o;
    attn_views(p, 0, 1, 1, &o);
    tb_tensor probs = tb_tensor_4d(F(p, 5), AB, AH, ATQ, ATK);
    return tb_attention_probs(ctx, &f->acfg, &f->mask, &o.q, &o.k, &probs);
}

static void fill_probs(const acase *c, fix *f, tb_ctx *ctx, bufs p)
{
    fill_plain(c, f, ctx, p);
    fill_mask(p, 2, AB, ATK);
}

static void b_attn_probs(fix *f, bufs p)
{
    bind_mask(f, p, 2);
}

static void t_attn_probs(acase *c)
{
    c->fn = "tb_attention_probs";
    add_heads(c, "q", IN, AB * ATQ, AWQ, AOQ, AHD);
    add_heads(c, "k", IN, AB * ATK, AWK, AOK, AHKV * AD);
    add_mask(c, AB, ATQ, ATK);
    add_f(c, "probs", OUT, AB * AH * ATQ * ATK);
    c->setup = setup_attn;
    c->bind = b_attn_probs;
    c->fill = fill_probs;
    c->call = c_attn_probs;
}

/* ---- KV cache ----------------------------------------------------------- */

/* B 2, capacity 5, 1 kv head of D 2 (W 2), 2 positions stored. */
enum { KB = 2, KMAX = 5, KHKV = 1, KD = 2, KW = KHKV * KD, KLEN = 2, KTN = 2 };
enum { KWK = 3, KOK = 1, KH = 2, KTQ = 2, KWQ = 5, KOQ = 1 };

static void setup_kv(fix *f, tb_ctx *ctx)
{
    CHECK_OK(*ctx, tb_kv_cache_init(ctx, &f->kv, KB, KMAX, KHKV, KD));
    f->acfg = tb_attention_default_config(KH, KD);
    f->acfg.n_kv_heads = KHKV;
    f->acfg.causal = 1;
}

/* Positions [t0, t0 + n) of every row of a (B, max_len, W) buffer. */
static void positions(acase *c, size_t i, size_t B, size_t max_len, size_t W, size_t t0, size_t n)
{
    const size_t last = (B - 1) * max_len * W + (t0 + n) * W - 1;
    touched(c, i, t0 * W * sizeof(float), last * sizeof(float));
}

/* append: k, v | kv->keys, kv->values (the new positions) */
static void b_kv_append(fix *f, bufs p)
{
    f->kv.keys = F(p, 2);
    f->kv.values = F(p, 3);
    f->kv.len = KLEN;
}

static tb_status c_kv_append(fix *f, tb_ctx *ctx, bufs p)
{
    tb_tensor kt = tb_tensor_3d(F(p, 0), KB, KTN, KWK), vt = tb_tensor_3d(F(p, 1), KB, KTN, KWK);
    tb_heads k = {&kt, KOK}, v = {&vt, KOK - 1};
    return tb_kv_cache_append(ctx, &f->kv, &k, &v);
}

static void t_kv_append(acase *c)
{
    c->fn = "tb_kv_cache_append";
    add_heads(c, "k", IN, KB * KTN, KWK, KOK, KW);
    add_heads(c, "v", IN, KB * KTN, KWK, KOK - 1, KW);
    const size_t keys = add_f(c, "kv->keys", OUT, KB * KMAX * KW);
    const size_t values = add_f(c, "kv->values", OUT, KB * KMAX * KW);
    positions(c, keys, KB, KMAX, KW, KLEN, KTN);
    positions(c, values, KB, KMAX, KW, KLEN, KTN);
    c->setup = setup_kv;
    c->bind = b_kv_append;
    c->fill = fill_plain;
    c->call = c_kv_append;
}

/* attend: q, kv->keys, kv->values (the stored positions), key_lengths | out */
static void b_kv_attend(fix *f, bufs p)
{
    f->kv.keys = F(p, 1);
    f->kv.values = F(p, 2);
    f->kv.len = KLEN;
}

static void fill_kv_attend(const acase *c, fix *f, tb_ctx *ctx, bufs p)
{
    fill_plain(c, f, ctx, p);
    int32_t *len = (int32_t *)p[3];
    len[0] = KLEN, len[1] = 1;
}

static tb_status c_kv_attend(fix *f, tb_ctx *ctx, bufs p)
{
    tb_tensor qt = tb_tensor_3d(F(p, 0), KB, KTQ, KWQ);
    tb_tensor out = tb_tensor_3d(F(p, 4), KB, KTQ, KH * KD);
    tb_heads q = {&qt, KOQ};
    return tb_kv_cache_attend(ctx, &f->kv, &f->acfg, (const int32_t *)p[3], &q, &out);
}

static void t_kv_attend(acase *c)
{
    c->fn = "tb_kv_cache_attend";
    add_heads(c, "q", IN, KB * KTQ, KWQ, KOQ, KH * KD);
    const size_t keys = add_f(c, "kv->keys", IN, KB * KMAX * KW);
    const size_t values = add_f(c, "kv->values", IN, KB * KMAX * KW);
    positions(c, keys, KB, KMAX, KW, 0, KLEN);
    positions(c, values, KB, KMAX, KW, 0, KLEN);
    add(c, "key_lengths", IN, KB * sizeof(int32_t), sizeof(int32_t));
    add_f(c, "out", OUT, KB * KTQ * KH * KD);
    c->setup = setup_kv;
    c->bind = b_kv_attend;
    c->fill = fill_kv_attend;
    c->call = c_kv_attend;
}

/* ---- multi-head attention ------------------------------------------------ */

enum { MB = 2, MTQ = 2, MTK = 3, MC = 4, MH = 2 };

static void setup_mha(fix *f, tb_ctx *ctx)
{
    tb_rng rng;
    tb_rng_init(&rng, 11);
    CHECK_OK(*ctx, tb_mha_init(ctx, &f->mha, MC, MH, 1, &rng));
}

static size_t mha_cache(int cross)
{
    tb_ctx ctx;
    tbt_ctx_init(&ctx, 1);
    tb_mha m;
    tb_rng rng;
    tb_rng_init(&rng, 11);
    CHECK_OK(ctx, tb_mha_init(&ctx, &m, MC, MH, 1, &rng));
    size_t bytes;
    ck_assert_int_eq(tb_mha_cache_size(&m, MB, MTQ, cross ? MTK : MTQ, &bytes), TB_OK);
    tb_mha_free(&m);
    return bytes;
}

/* forward: x, mem, in_proj_weight, in_proj_bias, out_proj.weight,
 * out_proj.bias, key_lengths, key_valid, bias | y, cache */
enum { MF_X, MF_MEM, MF_W, MF_B, MF_OW, MF_OB, MF_MASK, MF_Y = MF_MASK + 3, MF_CACHE };

static void bind_mha_params(fix *f, bufs p, size_t iw)
{
    f->mha.in_proj_weight.value = F(p, iw);
    f->mha.in_proj_bias.value = F(p, iw + 1);
    f->mha.out_proj.weight.value = F(p, iw + 2);
    f->mha.out_proj.bias.value = F(p, iw + 3);
}

static void b_mha_fwd(fix *f, bufs p)
{
    bind_mha_params(f, p, MF_W);
    bind_mask(f, p, MF_MASK);
}

static void fill_mha_fwd(const acase *c, fix *f, tb_ctx *ctx, bufs p)
{
    fill_plain(c, f, ctx, p);
    fill_mask(p, MF_MASK, MB, MTK);
}

static tb_status c_mha_fwd(fix *f, tb_ctx *ctx, bufs p)
{
    tb_tensor x = tb_tensor_3d(F(p, MF_X), MB, MTQ, MC);
    tb_tensor mem = tb_tensor_3d(F(p, MF_MEM), MB, MTK, MC);
    tb_tensor y = tb_tensor_3d(F(p, MF_Y), MB, MTQ, MC);
    return tb_mha_forward(ctx, &f->mha, TB_MODE_TRAINING, &f->mask, &x, &mem, &y, p[MF_CACHE],
                          mha_cache(1));
}

static void add_mha_params(acase *c)
{
    add_f(c, "in_proj_weight", IN, 3 * MC * MC);
    add_f(c, "in_proj_bias", IN, 3 * MC);
    add_f(c, "out_proj.weight", IN, MC * MC);
    add_f(c, "out_proj.bias", IN, MC);
}

static void t_mha_fwd(acase *c)
{
    c->fn = "tb_mha_forward";
    add_f(c, "x", IN, MB * MTQ * MC);
    add_f(c, "mem", IN, MB * MTK * MC);
    add_mha_params(c);
    add_mask(c, MB, MTQ, MTK);
    add_f(c, "y", OUT, MB * MTQ * MC);
    add(c, "cache", OUT, mha_cache(1), sizeof(float));
    c->setup = setup_mha;
    c->bind = b_mha_fwd;
    c->fill = fill_mha_fwd;
    c->call = c_mha_fwd;
}

/* backward (cross-attention): x, mem, dy, cache, in_proj_weight,
 * out_proj.weight, key_lengths, key_valid, bias | dx, dmem,
 * in_proj_weight.grad, in_proj_bias.grad, out_proj.weight.grad,
 * out_proj.bias.grad */
enum { MG_X, MG_MEM, MG_DY, MG_CACHE, MG_W, MG_OW, MG_MASK, MG_DX = MG_MASK + 3, MG_DMEM, MG_GW };

static void b_mha_bwd(fix *f, bufs p)
{
    f->mha.in_proj_weight.value = F(p, MG_W);
    f->mha.out_proj.weight.value = F(p, MG_OW);
    f->mha.in_proj_weight.grad = F(p, MG_GW);
    f->mha.in_proj_bias.grad = F(p, MG_GW + 1);
    f->mha.out_proj.weight.grad = F(p, MG_GW + 2);
    f->mha.out_proj.bias.grad = F(p, MG_GW + 3);
    bind_mask(f, p, MG_MASK);
}

static void fill_mha_bwd(const acase *c, fix *f, tb_ctx *ctx, bufs p)
{
    fill_plain(c, f, ctx, p);
    fill_mask(p, MG_MASK, MB, MTK);
    float y[MB * MTQ * MC];
    tb_tensor x = tb_tensor_3d(F(p, MG_X), MB, MTQ, MC);
    tb_tensor mem = tb_tensor_3d(F(p, MG_MEM), MB, MTK, MC);
    tb_tensor yt = tb_tensor_3d(y, MB, MTQ, MC);
    CHECK_OK(*ctx,
             tb_mha_forward(ctx, &f->mha, TB_MODE_TRAINING, &f->mask, &x, &mem, &yt, p[MG_CACHE],
                            mha_cache(1)));
}

static tb_status c_mha_bwd(fix *f, tb_ctx *ctx, bufs p)
{
    tb_tensor x = tb_tensor_3d(F(p, MG_X), MB, MTQ, MC);
    tb_tensor mem = tb_tensor_3d(F(p, MG_MEM), MB, MTK, MC);
    tb_tensor dy = tb_tensor_3d(F(p, MG_DY), MB, MTQ, MC);
    tb_tensor dx = tb_tensor_3d(F(p, MG_DX), MB, MTQ, MC);
    tb_tensor dmem = tb_tensor_3d(F(p, MG_DMEM), MB, MTK, MC);
    return tb_mha_backward(ctx, &f->mha, &f->mask, &x, &mem, &dy, p[MG_CACHE], mha_cache(1), &dx,
                           &dmem);
}

static void add_mha_grads(acase *c)
{
    add_f(c, "in_proj_weight.grad", OUT, 3 * MC * MC);
    add_f(c, "in_proj_bias.grad", OUT, 3 * MC);
    add_f(c, "out_proj.weight.grad", OUT, MC * MC);
    add_f(c, "out_proj.bias.grad", OUT, MC);
}

static void t_mha_bwd(acase *c)
{
    c->fn = "tb_mha_backward";
    add_f(c, "x", IN, MB * MTQ * MC);
    add_f(c, "mem", IN, MB * MTK * MC);
    add_f(c, "dy", IN, MB * MTQ * MC);
    add(c, "cache", IN, mha_cache(1), sizeof(float));
    add_f(c, "in_proj_weight", IN, 3 * MC * MC);
    add_f(c, "out_proj.weight", IN, MC * MC);
    add_mask(c, MB, MTQ, MTK);
    add_f(c, "dx", OUT, MB * MTQ * MC);
    add_f(c, "dmem", OUT, MB * MTK * MC);
    add_mha_grads(c);
    c->setup = setup_mha;
    c->bind = b_mha_bwd;
    c->fill = fill_mha_bwd;
    c->call = c_mha_bwd;
}

/* backward (self-attention, causal, no masks): x, dy, cache,
 * in_proj_weight, out_proj.weight | dx, the four gradients */
enum { MS_X, MS_DY, MS_CACHE, MS_W, MS_OW, MS_DX, MS_GW };

static void setup_mha_self(fix *f, tb_ctx *ctx)
{
    setup_mha(f, ctx);
    f->mha.attn.causal = 1;
}

static void b_mha_self(fix *f, bufs p)
{
    f->mha.in_proj_weight.value = F(p, MS_W);
    f->mha.out_proj.weight.value = F(p, MS_OW);
    f->mha.in_proj_weight.grad = F(p, MS_GW);
    f->mha.in_proj_bias.grad = F(p, MS_GW + 1);
    f->mha.out_proj.weight.grad = F(p, MS_GW + 2);
    f->mha.out_proj.bias.grad = F(p, MS_GW + 3);
}

static void fill_mha_self(const acase *c, fix *f, tb_ctx *ctx, bufs p)
{
    fill_plain(c, f, ctx, p);
    float y[MB * MTQ * MC];
    tb_tensor x = tb_tensor_3d(F(p, MS_X), MB, MTQ, MC), yt = tb_tensor_3d(y, MB, MTQ, MC);
    CHECK_OK(*ctx, tb_mha_forward(ctx, &f->mha, TB_MODE_TRAINING, NULL, &x, NULL, &yt, p[MS_CACHE],
                                  mha_cache(0)));
}

static tb_status c_mha_self(fix *f, tb_ctx *ctx, bufs p)
{
    tb_tensor x = tb_tensor_3d(F(p, MS_X), MB, MTQ, MC);
    tb_tensor dy = tb_tensor_3d(F(p, MS_DY), MB, MTQ, MC);
    tb_tensor dx = tb_tensor_3d(F(p, MS_DX), MB, MTQ, MC);
    return tb_mha_backward(ctx, &f->mha, NULL, &x, NULL, &dy, p[MS_CACHE], mha_cache(0), &dx,
                           NULL);
}

static void t_mha_self_bwd(acase *c)
{
    c->fn = "tb_mha_backward";
    add_f(c, "x", IN, MB * MTQ * MC);
    add_f(c, "dy", IN, MB * MTQ * MC);
    add(c, "cache", IN, mha_cache(0), sizeof(float));
    add_f(c, "in_proj_weight", IN, 3 * MC * MC);
    add_f(c, "out_proj.weight", IN, MC * MC);
    add_f(c, "dx", OUT, MB * MTQ * MC);
    add_mha_grads(c);
    c->setup = setup_mha_self;
    c->bind = b_mha_self;
    c->fill = fill_mha_self;
    c->call = c_mha_self;
}

/* decode: x, the four parameters, kv->keys and kv->values (stored
 * positions, parts of the outputs' allocations) | y, kv->keys, kv->values
 * (the new positions) */
enum { MDW = MC, MDLEN = 2, MDTN = 2, MDMAX = 5 };
enum { MD_X, MD_W, MD_Y = MD_W + 4, MD_KEYS, MD_VALUES, MD_SKEYS, MD_SVALUES };

static void setup_mha_decode(fix *f, tb_ctx *ctx)
{
    setup_mha_self(f, ctx);
    CHECK_OK(*ctx, tb_kv_cache_init(ctx, &f->kv, MB, MDMAX, MH, MC / MH));
}

static void b_mha_decode(fix *f, bufs p)
{
    bind_mha_params(f, p, MD_W);
    f->kv.keys = F(p, MD_KEYS);
    f->kv.values = F(p, MD_VALUES);
    f->kv.len = MDLEN;
}

static tb_status c_mha_decode(fix *f, tb_ctx *ctx, bufs p)
{
    tb_tensor x = tb_tensor_3d(F(p, MD_X), MB, MDTN, MC);
    tb_tensor y = tb_tensor_3d(F(p, MD_Y), MB, MDTN, MC);
    return tb_mha_decode(ctx, &f->mha, &f->kv, &x, &y);
}

static void t_mha_decode(acase *c)
{
    c->fn = "tb_mha_decode";
    add_f(c, "x", IN, MB * MDTN * MC);
    add_mha_params(c);
    add_f(c, "y", OUT, MB * MDTN * MC);
    const size_t keys = add_f(c, "kv->keys", OUT, MB * MDMAX * MDW);
    const size_t values = add_f(c, "kv->values", OUT, MB * MDMAX * MDW);
    positions(c, keys, MB, MDMAX, MDW, MDLEN, MDTN);
    positions(c, values, MB, MDMAX, MDW, MDLEN, MDTN);
    const size_t sk = add_view(c, keys, "kv->keys", IN, 0, 0);
    const size_t sv = add_view(c, values, "kv->values", IN, 0, 0);
    positions(c, sk, MB, MDMAX, MDW, 0, MDLEN);
    positions(c, sv, MB, MDMAX, MDW, 0, MDLEN);
    c->setup = setup_mha_decode;
    c->bind = b_mha_decode;
    c->fill = fill_plain;
    c->call = c_mha_decode;
}

/* ---- optimizer and gradient utilities ------------------------------------ */

enum { PA = 6, PB = 4 };

/* Two parameters 'a' (2, 3) and 'b' (4) in a list. */
static void setup_params(fix *f, tb_ctx *ctx)
{
    float *storage = f->pstore;
    const size_t sa[2] = {2, 3}, sb[1] = {PB};
    CHECK_OK(*ctx, tb_param_view(ctx, &f->pa, storage, storage + PA, 2, sa));
    CHECK_OK(*ctx, tb_param_view(ctx, &f->pb, storage + 2 * PA, storage + 2 * PA + PB, 1, sb));
    CHECK_OK(*ctx, tb_param_list_init(ctx, &f->list));
    CHECK_OK(*ctx, tb_param_list_add(ctx, &f->list, NULL, "a", &f->pa));
    CHECK_OK(*ctx, tb_param_list_add(ctx, &f->list, NULL, "b", &f->pb));
}

/* Adam step (AMSGrad): gradient of 'a', gradient of 'b' | value, m, v, vmax
 * of 'a' then of 'b' (m, v, vmax of 'b' are parts of 'a''s buffers). */
enum { AS_GA, AS_GB, AS_VA, AS_MA, AS_VVA, AS_XA, AS_VB, AS_MB, AS_VVB, AS_XB };

static void setup_adam(fix *f, tb_ctx *ctx)
{
    setup_params(f, ctx);
    tb_adam_config cfg = tb_adamw_default_config();
    cfg.amsgrad = 1;
    CHECK_OK(*ctx, tb_adam_init(ctx, &f->opt, &f->list, &cfg));
    f->opt_m = f->opt.m, f->opt_v = f->opt.v, f->opt_vmax = f->opt.vmax;
}

static void b_adam(fix *f, bufs p)
{
    f->pa.grad = F(p, AS_GA), f->pb.grad = F(p, AS_GB);
    f->pa.value = F(p, AS_VA), f->pb.value = F(p, AS_VB);
    f->opt.m = F(p, AS_MA), f->opt.v = F(p, AS_VVA), f->opt.vmax = F(p, AS_XA);
    f->opt.step = 0, f->opt.skipped = 0;
}

static void fill_adam(const acase *c, fix *f, tb_ctx *ctx, bufs p)
{
    fill_plain(c, f, ctx, p);
    tbt_fill_uniform(F(p, AS_VVA), PA + PB, 0.0f, 1.0f, 21); /* second moments >= 0 */
    tbt_fill_uniform(F(p, AS_XA), PA + PB, 0.0f, 1.0f, 22);
}

static tb_status c_adam(fix *f, tb_ctx *ctx, bufs p)
{
    (void)p;
    return tb_adam_step(ctx, &f->opt, 1.0f);
}

static void t_adam(acase *c)
{
    c->fn = "tb_adam_step";
    add_f(c, "gradient of 'a'", IN, PA);
    add_f(c, "gradient of 'b'", IN, PB);
    add_f(c, "value of 'a'", OUT, PA);
    const char *const names[3][2] = {{"m of 'a'", "m of 'b'"}, {"v of 'a'", "v of 'b'"},
                                     {"vmax of 'a'", "vmax of 'b'"}};
    size_t state[3];
    for (int k = 0; k < 3; k++) {
        state[k] = add_f(c, names[k][0], OUT, PA + PB);
        touched(c, state[k], 0, (PA - 1) * sizeof(float));
    }
    add_f(c, "value of 'b'", OUT, PB);
    for (int k = 0; k < 3; k++)
        add_view(c, state[k], names[k][1], OUT, PA * sizeof(float), (PA + PB - 1) * sizeof(float));
    c->setup = setup_adam;
    c->bind = b_adam;
    c->fill = fill_adam;
    c->call = c_adam;
}

/* clip: gradient of 'a', gradient of 'b', total_norm (all written) */
static void b_grads(fix *f, bufs p)
{
    f->pa.grad = F(p, 0), f->pb.grad = F(p, 1);
}

static tb_status c_clip(fix *f, tb_ctx *ctx, bufs p)
{
    return tb_clip_grad_norm(ctx, &f->list, 0.1f, (double *)p[2]);
}

static void t_clip(acase *c)
{
    c->fn = "tb_clip_grad_norm";
    add_f(c, "gradient of 'a'", OUT, PA);
    add_f(c, "gradient of 'b'", OUT, PB);
    add(c, "total_norm", OUT, sizeof(double), sizeof(double));
    c->setup = setup_params;
    c->bind = b_grads;
    c->fill = fill_plain;
    c->call = c_clip;
}

static void setup_ewc(fix *f, tb_ctx *ctx)
{
    setup_params(f, ctx);
    CHECK_OK(*ctx, tb_ewc_init(ctx, &f->ewc, &f->list));
    f->ewc_anchor = f->ewc.anchor, f->ewc_fisher = f->ewc.fisher;
}

/* accumulate: gradient of 'a', gradient of 'b' | ewc->fisher */
static void b_fisher(fix *f, bufs p)
{
    b_grads(f, p);
    f->ewc.fisher = F(p, 2);
}

static tb_status c_fisher(fix *f, tb_ctx *ctx, bufs p)
{
    (void)p;
    return tb_ewc_accumulate_fisher(ctx, &f->ewc, &f->list, 0.5f);
}

static void t_fisher(acase *c)
{
    c->fn = "tb_ewc_accumulate_fisher";
    add_f(c, "gradient of 'a'", IN, PA);
    add_f(c, "gradient of 'b'", IN, PB);
    add_f(c, "ewc->fisher", OUT, PA + PB);
    c->setup = setup_ewc;
    c->bind = b_fisher;
    c->fill = fill_plain;
    c->call = c_fisher;
}

/* penalty: value of 'a', value of 'b', ewc->anchor, ewc->fisher |
 * gradient of 'a', gradient of 'b', penalty */
static void b_penalty(fix *f, bufs p)
{
    f->pa.value = F(p, 0), f->pb.value = F(p, 1);
    f->ewc.anchor = F(p, 2), f->ewc.fisher = F(p, 3);
    f->pa.grad = F(p, 4), f->pb.grad = F(p, 5);
}

static tb_status c_penalty(fix *f, tb_ctx *ctx, bufs p)
{
    return tb_ewc_penalty(ctx, &f->ewc, &f->list, 2.0f, (double *)p[6]);
}

static void t_penalty(acase *c)
{
    c->fn = "tb_ewc_penalty";
    add_f(c, "value of 'a'", IN, PA);
    add_f(c, "value of 'b'", IN, PB);
    add_f(c, "ewc->anchor", IN, PA + PB);
    add_f(c, "ewc->fisher", IN, PA + PB);
    add_f(c, "gradient of 'a'", OUT, PA);
    add_f(c, "gradient of 'b'", OUT, PB);
    add(c, "penalty", OUT, sizeof(double), sizeof(double));
    c->setup = setup_ewc;
    c->bind = b_penalty;
    c->fill = fill_plain;
    c->call = c_penalty;
}

/* ---- sampling and random fills ------------------------------------------ */

enum { SV = 8, SHN = 5 };

static void setup_sampler(fix *f, tb_ctx *ctx)
{
    (void)ctx;
    f->scfg = tb_sampler_default_config();
    f->scfg.temperature = 0.8f;
    f->scfg.top_k = 5;
    f->scfg.top_p = 0.9f;
    f->scfg.repetition_penalty = 1.3f;
    f->scfg.no_repeat_ngram = 2;
}

static void fill_history(const acase *c, fix *f, tb_ctx *ctx, bufs p)
{
    fill_plain(c, f, ctx, p);
    int32_t *h = (int32_t *)p[0];
    const int32_t hist[SHN] = {1, 3, 1, 6, 1};
    memcpy(h, hist, sizeof hist);
    if (c->n > 2)
        tb_rng_init((tb_rng *)p[2], 8);
}

/* process: history | logits */
static tb_status c_process(fix *f, tb_ctx *ctx, bufs p)
{
    return tb_logits_process(ctx, &f->scfg, (const int32_t *)p[0], SHN, F(p, 1), SV);
}

static void t_process(acase *c)
{
    c->fn = "tb_logits_process";
    add(c, "history", IN, SHN * sizeof(int32_t), sizeof(int32_t));
    add_f(c, "logits", OUT, SV);
    c->setup = setup_sampler;
    c->fill = fill_history;
    c->call = c_process;
}

/* draw: history | logits, rng, token */
static tb_status c_sample(fix *f, tb_ctx *ctx, bufs p)
{
    return tb_sample_token(ctx, &f->scfg, (const int32_t *)p[0], SHN, F(p, 1), SV, (tb_rng *)p[2],
                           (int32_t *)p[3]);
}

static void t_sample(acase *c)
{
    c->fn = "tb_sample_token";
    add(c, "history", IN, SHN * sizeof(int32_t), sizeof(int32_t));
    add_f(c, "logits", OUT, SV);
    add(c, "rng", OUT, sizeof(tb_rng), 8);
    add(c, "token", OUT, sizeof(int32_t), sizeof(int32_t));
    c->setup = setup_sampler;
    c->fill = fill_history;
    c->call = c_sample;
}

enum { RN = 10 };

/* fills: x, rng (both written) */
static void fill_rng(const acase *c, fix *f, tb_ctx *ctx, bufs p)
{
    fill_plain(c, f, ctx, p);
    tb_rng_init((tb_rng *)p[1], 4);
}

static tb_status c_uniform(fix *f, tb_ctx *ctx, bufs p)
{
    (void)f;
    return tb_rng_fill_uniform(ctx, (tb_rng *)p[1], F(p, 0), RN, -1.0f, 1.0f);
}

static tb_status c_normal(fix *f, tb_ctx *ctx, bufs p)
{
    (void)f;
    return tb_rng_fill_normal(ctx, (tb_rng *)p[1], F(p, 0), RN, 0.0f, 1.0f);
}

static void rng_fill(acase *c, const char *fn, tb_status (*call)(fix *, tb_ctx *, bufs))
{
    c->fn = fn;
    add_f(c, "x", OUT, RN);
    add(c, "rng", OUT, sizeof(tb_rng), 8);
    c->fill = fill_rng;
    c->call = call;
}

static void t_uniform(acase *c)
{
    rng_fill(c, "tb_rng_fill_uniform", c_uniform);
}
static void t_normal(acase *c)
{
    rng_fill(c, "tb_rng_fill_normal", c_normal);
}

/* ---- LSTM and the P-tuning prompt encoder ----------------------------------
 * A 2-layer LSTM (training, dropout 0.5: the rng is an output) on 2 rows of
 * lengths 3 and 1; the encoder's forward with its BiLSTM head, its backward
 * with the same head. Parameters live in the arena (bind()). */
enum { QB = 2, QT = 3, QI = 2, QH = 2, QL = 2, QG = 4 * QH, QS = QL * QB * QH };

static void setup_lstm(fix *f, tb_ctx *ctx)
{
    tb_rng rng;
    tb_rng_init(&rng, 13);
    const tb_lstm_config c = {QI, QH, QL, 0, 0.5f};
    CHECK_OK(*ctx, tb_lstm_init(ctx, &f->lstm, &c, &rng));
}

static size_t lstm_cache(void)
{
    static size_t known; /* computed once: the harness calls this per placement */
    if (known)
        return known;
    tb_ctx ctx;
    tbt_ctx_init(&ctx, 1);
    tb_lstm m;
    tb_rng rng;
    tb_rng_init(&rng, 13);
    const tb_lstm_config c = {QI, QH, QL, 0, 0.5f};
    CHECK_OK(ctx, tb_lstm_init(&ctx, &m, &c, &rng));
    size_t bytes;
    ck_assert_int_eq(tb_lstm_cache_size(&m, QB, QT, &bytes), TB_OK);
    tb_lstm_free(&m);
    return known = bytes;
}

static const char *const lstm_pnames[QL][4] = {
    {"weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0"},
    {"weight_ih_l1", "weight_hh_l1", "bias_ih_l1", "bias_hh_l1"}};
static const char *const lstm_gnames[QL][4] = {
    {"weight_ih_l0.grad", "weight_hh_l0.grad", "bias_ih_l0.grad", "bias_hh_l0.grad"},
    {"weight_ih_l1.grad", "weight_hh_l1.grad", "bias_ih_l1.grad", "bias_hh_l1.grad"}};

static size_t lstm_pnumel(size_t l, int i)
{
    return i == 0 ? QG * (l == 0 ? QI : QH) : i == 1 ? QG * QH : QG;
}

static tb_param *lstm_p(tb_lstm *m, size_t k, int i)
{
    return i == 0 ? &m->w_ih[k] : i == 1 ? &m->w_hh[k] : i == 2 ? &m->b_ih[k] : &m->b_hh[k];
}

static void fill_lengths(int32_t *len)
{
    len[0] = 3, len[1] = 1;
}

/* forward: x, h0, c0, lengths, the 8 parameters | y, h_n, c_n, cache, rng */
enum { QF_X, QF_H0, QF_C0, QF_LEN, QF_P, QF_Y = QF_P + 8, QF_HN, QF_CN, QF_CACHE, QF_RNG };

static void b_lstm_fwd(fix *f, bufs p)
{
    for (size_t l = 0; l < QL; l++)
        for (int i = 0; i < 4; i++)
            lstm_p(&f->lstm, l, i)->value = F(p, QF_P + 4 * l + (size_t)i);
}

static void fill_lstm_fwd(const acase *c, fix *f, tb_ctx *ctx, bufs p)
{
    fill_plain(c, f, ctx, p);
    fill_lengths((int32_t *)p[QF_LEN]);
    tb_rng_init((tb_rng *)p[QF_RNG], 17);
}

static tb_status c_lstm_fwd(fix *f, tb_ctx *ctx, bufs p)
{
    tb_tensor x = tb_tensor_3d(F(p, QF_X), QB, QT, QI), y = tb_tensor_3d(F(p, QF_Y), QB, QT, QH);
    tb_tensor h0 = tb_tensor_3d(F(p, QF_H0), QL, QB, QH), c0 = tb_tensor_3d(F(p, QF_C0), QL, QB, QH);
    tb_tensor hn = tb_tensor_3d(F(p, QF_HN), QL, QB, QH), cn = tb_tensor_3d(F(p, QF_CN), QL, QB, QH);
    return tb_lstm_forward(ctx, &f->lstm, TB_MODE_TRAINING, (tb_rng *)p[QF_RNG], &x,
                           (const int32_t *)p[QF_LEN], &h0, &c0, &y, &hn, &cn, p[QF_CACHE],
                           lstm_cache());
}

static void t_lstm_fwd(acase *c)
{
    c->fn = "tb_lstm_forward";
    add_f(c, "x", IN, QB * QT * QI);
    add_f(c, "h0", IN, QS);
    add_f(c, "c0", IN, QS);
    add(c, "lengths", IN, QB * sizeof(int32_t), sizeof(int32_t));
    for (size_t l = 0; l < QL; l++)
        for (int i = 0; i < 4; i++)
            add_f(c, lstm_pnames[l][i], IN, lstm_pnumel(l, i));
    add_f(c, "y", OUT, QB * QT * QH);
    add_f(c, "h_n", OUT, QS);
    add_f(c, "c_n", OUT, QS);
    add(c, "cache", OUT, lstm_cache(), sizeof(float));
    add(c, "rng", OUT, sizeof(tb_rng), 8);
    c->setup = setup_lstm;
    c->bind = b_lstm_fwd;
    c->fill = fill_lstm_fwd;
    c->call = c_lstm_fwd;
}

/* backward: x, dy, dh_n, dc_n, h0, c0, cache, lengths, the weights
 * (weight_ih, weight_hh per layer; the biases are not read) | dx, dh0,
 * dc0, the 8 gradients */
enum { QG_X, QG_DY, QG_DHN, QG_DCN, QG_H0, QG_C0, QG_CACHE, QG_LEN, QG_W,
       QG_DX = QG_W + 4, QG_DH0, QG_DC0, QG_GRAD };

static void b_lstm_bwd(fix *f, bufs p)
{
    for (size_t l = 0; l < QL; l++) {
        f->lstm.w_ih[l].value = F(p, QG_W + 2 * l);
        f->lstm.w_hh[l].value = F(p, QG_W + 2 * l + 1);
        for (int i = 0; i < 4; i++)
            lstm_p(&f->lstm, l, i)->grad = F(p, QG_GRAD + 4 * l + (size_t)i);
    }
}

static void fill_lstm_bwd(const acase *c, fix *f, tb_ctx *ctx, bufs p)
{
    fill_plain(c, f, ctx, p);
    fill_lengths((int32_t *)p[QG_LEN]);
    float y[QB * QT * QH];
    tb_rng rng;
    tb_rng_init(&rng, 17);
    tb_tensor x = tb_tensor_3d(F(p, QG_X), QB, QT, QI), yt = tb_tensor_3d(y, QB, QT, QH);
    tb_tensor h0 = tb_tensor_3d(F(p, QG_H0), QL, QB, QH), c0 = tb_tensor_3d(F(p, QG_C0), QL, QB, QH);
    CHECK_OK(*ctx, tb_lstm_forward(ctx, &f->lstm, TB_MODE_TRAINING, &rng, &x,
                                   (const int32_t *)p[QG_LEN], &h0, &c0, &yt, NULL, NULL,
                                   p[QG_CACHE], lstm_cache()));
}

static tb_status c_lstm_bwd(fix *f, tb_ctx *ctx, bufs p)
{
    tb_tensor x = tb_tensor_3d(F(p, QG_X), QB, QT, QI), dy = tb_tensor_3d(F(p, QG_DY), QB, QT, QH);
    tb_tensor dhn = tb_tensor_3d(F(p, QG_DHN), QL, QB, QH), dcn = tb_tensor_3d(F(p, QG_DCN), QL, QB, QH);
    tb_tensor h0 = tb_tensor_3d(F(p, QG_H0), QL, QB, QH), c0 = tb_tensor_3d(F(p, QG_C0), QL, QB, QH);
    tb_tensor dx = tb_tensor_3d(F(p, QG_DX), QB, QT, QI);
    tb_tensor dh0 = tb_tensor_3d(F(p, QG_DH0), QL, QB, QH), dc0 = tb_tensor_3d(F(p, QG_DC0), QL, QB, QH);
    return tb_lstm_backward(ctx, &f->lstm, &x, (const int32_t *)p[QG_LEN], &h0, &c0, &dy, &dhn,
                            &dcn, &dx, &dh0, &dc0, p[QG_CACHE], lstm_cache());
}

static void t_lstm_bwd(acase *c)
{
    c->fn = "tb_lstm_backward";
    add_f(c, "x", IN, QB * QT * QI);
    add_f(c, "dy", IN, QB * QT * QH);
    add_f(c, "dh_n", IN, QS);
    add_f(c, "dc_n", IN, QS);
    add_f(c, "h0", IN, QS);
    add_f(c, "c0", IN, QS);
    add(c, "cache", IN, lstm_cache(), sizeof(float));
    add(c, "lengths", IN, QB * sizeof(int32_t), sizeof(int32_t));
    for (size_t l = 0; l < QL; l++) {
        add_f(c, lstm_pnames[l][0], IN, lstm_pnumel(l, 0));
        add_f(c, lstm_pnames[l][1], IN, lstm_pnumel(l, 1));
    }
    add_f(c, "dx", OUT, QB * QT * QI);
    add_f(c, "dh0", OUT, QS);
    add_f(c, "dc0", OUT, QS);
    for (size_t l = 0; l < QL; l++)
        for (int i = 0; i < 4; i++)
            add_f(c, lstm_gnames[l][i], OUT, lstm_pnumel(l, i));
    c->setup = setup_lstm;
    c->bind = b_lstm_bwd;
    c->fill = fill_lstm_bwd;
    c->call = c_lstm_bwd;
}

/* P-tuning, LSTM type: n 3, d 4, H 2, one BiLSTM layer. Its 13 parameters
 * in tb_ptuning_params() order: embedding.weight, the LSTM's 8, the head's 4. */
enum { PN = 3, PD = 4, PH = 2, PNP = 13 };

static const char *const pt_pnames[PNP] = {
    "embedding.weight", "lstm_head.weight_ih_l0", "lstm_head.weight_hh_l0",
    "lstm_head.bias_ih_l0", "lstm_head.bias_hh_l0", "lstm_head.weight_ih_l0_reverse",
    "lstm_head.weight_hh_l0_reverse", "lstm_head.bias_ih_l0_reverse",
    "lstm_head.bias_hh_l0_reverse", "mlp_head.0.weight", "mlp_head.0.bias",
    "mlp_head.2.weight", "mlp_head.2.bias"};
static const char *const pt_gnames[PNP] = {
    "embedding.weight.grad", "lstm_head.weight_ih_l0.grad", "lstm_head.weight_hh_l0.grad",
    "lstm_head.bias_ih_l0.grad", "lstm_head.bias_hh_l0.grad",
    "lstm_head.weight_ih_l0_reverse.grad", "lstm_head.weight_hh_l0_reverse.grad",
    "lstm_head.bias_ih_l0_reverse.grad", "lstm_head.bias_hh_l0_reverse.grad",
    "mlp_head.0.weight.grad", "mlp_head.0.bias.grad", "mlp_head.2.weight.grad",
    "mlp_head.2.bias.grad"};

static tb_ptuning_config pt_config(void)
{
    tb_ptuning_config c;
    memset(&c, 0, sizeof c);
    c.num_virtual_tokens = PN, c.token_dim = PD, c.encoder_hidden_size = PH;
    c.encoder_num_layers = 1, c.type = TB_PTUNING_LSTM;
    return c;
}

static void setup_pt(fix *f, tb_ctx *ctx)
{
    tb_rng rng;
    tb_rng_init(&rng, 19);
    const tb_ptuning_config c = pt_config();
    CHECK_OK(*ctx, tb_ptuning_init(ctx, &f->pt, &c, &rng));
}

static size_t pt_cache(void)
{
    static size_t known;
    if (known)
        return known;
    tb_ctx ctx;
    tbt_ctx_init(&ctx, 1);
    tb_ptuning q;
    tb_rng rng;
    tb_rng_init(&rng, 19);
    const tb_ptuning_config c = pt_config();
    CHECK_OK(ctx, tb_ptuning_init(&ctx, &q, &c, &rng));
    size_t bytes;
    ck_assert_int_eq(tb_ptuning_cache_size(&q, &bytes), TB_OK);
    tb_ptuning_free(&q);
    return known = bytes;
}

static tb_param *pt_param(tb_ptuning *q, size_t i)
{
    if (i == 0)
        return &q->embedding.weight;
    if (i < 9)
        return lstm_p(&q->lstm, (i - 1) / 4, (int)((i - 1) % 4));
    return (i - 9) % 2 ? &q->mlp[(i - 9) / 2].bias : &q->mlp[(i - 9) / 2].weight;
}

static size_t pt_numel(size_t i)
{
    static const size_t n[PNP] = {PN * PD, 4 * PH * PD, 4 * PH * PH, 4 * PH, 4 * PH,
                                  4 * PH * PD, 4 * PH * PH, 4 * PH, 4 * PH, 4 * PH * PH, 2 * PH,
                                  PD * 2 * PH, PD};
    return n[i];
}

/* forward: the 13 parameters | out, cache */
static void b_pt_fwd(fix *f, bufs p)
{
    for (size_t i = 0; i < PNP; i++)
        pt_param(&f->pt, i)->value = F(p, i);
}

static tb_status c_pt_fwd(fix *f, tb_ctx *ctx, bufs p)
{
    tb_tensor out = tb_tensor_2d(F(p, PNP), PN, PD);
    return tb_ptuning_forward(ctx, &f->pt, TB_MODE_TRAINING, NULL, &out, p[PNP + 1], pt_cache());
}

static void t_pt_fwd(acase *c)
{
    c->fn = "tb_ptuning_forward";
    for (size_t i = 0; i < PNP; i++)
        add_f(c, pt_pnames[i], IN, pt_numel(i));
    add_f(c, "out", OUT, PN * PD);
    add(c, "cache", OUT, pt_cache(), sizeof(float));
    c->setup = setup_pt;
    c->bind = b_pt_fwd;
    c->fill = fill_plain;
    c->call = c_pt_fwd;
}

/* backward: dout, cache, the 13 values | the 13 gradients */
static void b_pt_bwd(fix *f, bufs p)
{
    for (size_t i = 0; i < PNP; i++) {
        pt_param(&f->pt, i)->value = F(p, 2 + i);
        pt_param(&f->pt, i)->grad = F(p, 2 + PNP + i);
    }
}

static void fill_pt_bwd(const acase *c, fix *f, tb_ctx *ctx, bufs p)
{
    fill_plain(c, f, ctx, p);
    float o[PN * PD];
    tb_tensor out = tb_tensor_2d(o, PN, PD);
    CHECK_OK(*ctx, tb_ptuning_forward(ctx, &f->pt, TB_MODE_TRAINING, NULL, &out, p[1], pt_cache()));
}

static tb_status c_pt_bwd(fix *f, tb_ctx *ctx, bufs p)
{
    tb_tensor dout = tb_tensor_2d(F(p, 0), PN, PD);
    return tb_ptuning_backward(ctx, &f->pt, &dout, p[1], pt_cache());
}

static void t_pt_bwd(acase *c)
{
    c->fn = "tb_ptuning_backward";
    add_f(c, "dout", IN, PN * PD);
    add(c, "cache", IN, pt_cache(), sizeof(float));
    for (size_t i = 0; i < PNP; i++)
        add_f(c, pt_pnames[i], IN, pt_numel(i));
    for (size_t i = 0; i < PNP; i++)
        add_f(c, pt_gnames[i], OUT, pt_numel(i));
    c->setup = setup_pt;
    c->bind = b_pt_bwd;
    c->fill = fill_pt_bwd;
    c->call = c_pt_bwd;
}

/* Every public function that writes caller memory, one table each. */
static void (*const tables[])(acase *) = {
    t_gelu_fwd,   t_gelu_bwd,   t_relu_fwd,    t_relu_bwd,     t_softmax_fwd, t_softmax_bwd,
    t_residual_fwd, t_residual_bwd, t_dropout_fwd, t_dropout_bwd, t_linear_fwd, t_linear_bwd,
    t_lora_fwd,   t_lora_fwd_drop, t_lora_bwd,
    t_embedding_fwd, t_embedding_bwd, t_ce_fwd,   t_ce_bwd,       t_cl_fwd,      t_cl_bwd,      t_ln_fwd,      t_ln_bwd,
    t_rn_fwd,     t_rn_bwd,     t_bn_fwd,      t_bn_bwd,       t_attn_fwd,    t_attn_bwd,
    t_attn_probs, t_kv_append,  t_kv_attend,   t_mha_fwd,      t_mha_bwd,     t_mha_self_bwd,
    t_mha_decode, t_lstm_fwd,   t_lstm_bwd,    t_pt_fwd,       t_pt_bwd,      t_adam,
    t_clip,       t_fisher,     t_penalty,     t_process,      t_sample,      t_uniform,
    t_normal};

START_TEST(every_pair_refused)
{
    acase c;
    memset(&c, 0, sizeof c);
    tables[_i](&c);
    const size_t checked = run_table(&c);
    size_t outs = 0;
    for (size_t i = 0; i < c.n; i++)
        outs += c.b[i].role == OUT && !c.b[i].share;
    ck_assert_msg(outs > 0 && checked >= outs * (c.n - 1),
                  "%s: only %zu placements checked for %zu outputs of %zu buffers", c.fn, checked,
                  outs, c.n);
    printf("aliasing %s: %zu buffers, %zu placements checked\n", c.fn, c.n, checked);
}
END_TEST

/* ---- the reported case ---------------------------------------------------
 * Cross-attention backward with dx written over the memory input returned
 * TB_OK while in_proj_weight.grad's key and value rows (128 of its 192
 * entries, C = 8) were computed from the overwritten mem. */
START_TEST(mha_cross_backward_dx_over_mem)
{
    enum { B = 1, TQ = 3, TK = 3, C = 8, H = 2 };
    tb_ctx ctx;
    tbt_ctx_init(&ctx, 2);
    tb_rng rng;
    tb_rng_init(&rng, 12);
    tb_mha m;
    CHECK_OK(ctx, tb_mha_init(&ctx, &m, C, H, 1, &rng));
    ck_assert_uint_eq(m.in_proj_weight.numel, 192);
    float x[B * TQ * C], mem[B * TK * C], dy[B * TQ * C], y[B * TQ * C], dmem[B * TK * C];
    float dx[B * TQ * C];
    tbt_fill_uniform(x, B * TQ * C, -1, 1, 1);
    tbt_fill_uniform(mem, B * TK * C, -1, 1, 2);
    tbt_fill_uniform(dy, B * TQ * C, -1, 1, 3);
    size_t bytes;
    CHECK_OK(ctx, tb_mha_cache_size(&m, B, TQ, TK, &bytes));
    void *cache = tbt_alloc(bytes);
    tb_tensor xt = tb_tensor_3d(x, B, TQ, C), mt = tb_tensor_3d(mem, B, TK, C);
    tb_tensor dyt = tb_tensor_3d(dy, B, TQ, C), yt = tb_tensor_3d(y, B, TQ, C);
    tb_tensor dmt = tb_tensor_3d(dmem, B, TK, C), dxt = tb_tensor_3d(dx, B, TQ, C);
    CHECK_OK(ctx, tb_mha_forward(&ctx, &m, TB_MODE_TRAINING, NULL, &xt, &mt, &yt, cache, bytes));

    /* The right gradients, out of place. */
    float want[192], mem_before[B * TK * C];
    memcpy(mem_before, mem, sizeof mem);
    CHECK_OK(ctx, tb_mha_backward(&ctx, &m, NULL, &xt, &mt, &dyt, cache, bytes, &dxt, &dmt));
    memcpy(want, m.in_proj_weight.grad, sizeof want);
    memset(m.in_proj_weight.grad, 0, sizeof want);
    memset(m.in_proj_bias.grad, 0, 3 * C * sizeof(float));
    memset(m.out_proj.weight.grad, 0, C * C * sizeof(float));
    memset(m.out_proj.bias.grad, 0, C * sizeof(float));

    /* dx over mem (TQ = TK: exactly the same memory): refused, nothing
     * changed. */
    tb_tensor dx_on_mem = tb_tensor_3d(mem, B, TQ, C);
    tb_ctx_clear_error(&ctx);
    ck_assert_int_eq(tb_mha_backward(&ctx, &m, NULL, &xt, &mt, &dyt, cache, bytes, &dx_on_mem,
                                     &dmt),
                     TB_ERR_INVALID_ARG);
    ck_assert_str_eq(tb_ctx_error(&ctx), "tb_mha_backward: dx overlaps mem");
    ck_assert(memcmp(mem, mem_before, sizeof mem) == 0);
    size_t wrong = 0;
    for (size_t i = 0; i < 192; i++)
        wrong += m.in_proj_weight.grad[i] != 0.0f;
    ck_assert_msg(wrong == 0, "%zu of 192 entries of in_proj_weight.grad written", wrong);

    /* After the refusal the call works and gives the right gradients. */
    CHECK_OK(ctx, tb_mha_backward(&ctx, &m, NULL, &xt, &mt, &dyt, cache, bytes, &dxt, &dmt));
    ck_assert(memcmp(m.in_proj_weight.grad, want, sizeof want) == 0);
    free(cache);
    tb_mha_free(&m);
}
END_TEST

/* ---- what exact extents accept ------------------------------------------
 * A heads operand touches only its columns: dq, dk and dv may share one
 * packed (B, T, 3C) buffer, and an output may sit in columns of an input's
 * tensor that the input does not read. Both give the bits of the call with
 * separate buffers; one element more and they are refused. */
START_TEST(packed_gradients_are_not_an_overlap)
{
    enum { B = 2, T = 5, H = 2, D = 3, C = H * D, N = B * T * C };
    tb_ctx ctx;
    tbt_ctx_init(&ctx, 2);
    tb_attention_config cfg = tb_attention_default_config(H, D);
    cfg.causal = 1;
    float *qkv = tbt_alloc(3 * N * sizeof(float)), *out = tbt_alloc(N * sizeof(float));
    float *dout = tbt_alloc(N * sizeof(float));
    tbt_fill_uniform(qkv, 3 * N, -1, 1, 4);
    tbt_fill_uniform(dout, N, -1, 1, 7);
    tb_tensor xt = tb_tensor_3d(qkv, B, T, 3 * C), ot = tb_tensor_3d(out, B, T, C);
    tb_tensor dt = tb_tensor_3d(dout, B, T, C);
    tb_heads q = {&xt, 0}, k = {&xt, C}, v = {&xt, 2 * C};
    size_t bytes;
    CHECK_OK(ctx, tb_attention_cache_size(&cfg, B, T, &bytes));
    void *cache = tbt_alloc(bytes);
    CHECK_OK(ctx, tb_attention_forward(&ctx, &cfg, TB_MODE_TRAINING, NULL, &q, &k, &v, &ot, cache,
                                       bytes));

    float *sep = tbt_alloc(3 * N * sizeof(float)), *packed = tbt_alloc(3 * N * sizeof(float));
    tb_tensor sq = tb_tensor_3d(sep, B, T, C), sk = tb_tensor_3d(sep + N, B, T, C);
    tb_tensor sv = tb_tensor_3d(sep + 2 * N, B, T, C), pt = tb_tensor_3d(packed, B, T, 3 * C);
    tb_heads dq = {&sq, 0}, dk = {&sk, 0}, dv = {&sv, 0};
    tb_heads pq = {&pt, 0}, pk = {&pt, C}, pv = {&pt, 2 * C};
    CHECK_OK(ctx, tb_attention_backward(&ctx, &cfg, NULL, &q, &k, &v, &ot, &dt, cache, bytes,
                                        &dq, &dk, &dv));
    CHECK_OK(ctx, tb_attention_backward(&ctx, &cfg, NULL, &q, &k, &v, &ot, &dt, cache, bytes,
                                        &pq, &pk, &pv));
    for (size_t r = 0; r < B * T; r++)
        for (size_t g = 0; g < 3; g++)
            ck_assert_msg(memcmp(packed + r * 3 * C + g * C, sep + g * N + r * C,
                                 C * sizeof(float)) == 0,
                          "packed gradient %zu of row %zu differs", g, r);
    /* dk one column to the left: its first column is dq's last. */
    tb_heads pk1 = {&pt, C - 1};
    tb_ctx_clear_error(&ctx);
    ck_assert_int_eq(tb_attention_backward(&ctx, &cfg, NULL, &q, &k, &v, &ot, &dt, cache,
                                           bytes, &pq, &pk1, &pv),
                     TB_ERR_INVALID_ARG);
    ck_assert_str_eq(tb_ctx_error(&ctx), "tb_attention_backward: dq overlaps dk");
    free(qkv), free(out), free(dout), free(cache), free(sep), free(packed);
}
END_TEST

START_TEST(unread_columns_are_not_an_overlap)
{
    /* One query over 4 keys; v's heads in columns [0, C) of rows 2C wide. */
    enum { TK = 4, H = 2, D = 3, C = H * D, WV = 2 * C };
    tb_ctx ctx;
    tbt_ctx_init(&ctx, 1);
    tb_attention_config cfg = tb_attention_default_config(H, D);
    float q[C], kk[TK * C], wide[TK * WV], copy[TK * WV], want[C];
    tbt_fill_uniform(q, C, -1, 1, 8);
    tbt_fill_uniform(kk, TK * C, -1, 1, 9);
    tbt_fill_uniform(wide, TK * WV, -1, 1, 10);
    tb_tensor qt = tb_tensor_3d(q, 1, 1, C), kt = tb_tensor_3d(kk, 1, TK, C);
    tb_tensor vt = tb_tensor_3d(wide, 1, TK, WV), wt = tb_tensor_3d(want, 1, 1, C);
    tb_heads qh = {&qt, 0}, kh = {&kt, 0}, vh = {&vt, 0};
    CHECK_OK(ctx, tb_attention_forward(&ctx, &cfg, TB_MODE_TRAINING, NULL, &qh, &kh, &vh, &wt, NULL,
                                       0));
    memcpy(copy, wide, sizeof wide);
    /* out in row 0's columns [C, 2C), which v does not read: accepted. */
    tb_tensor o = tb_tensor_3d(wide + C, 1, 1, C);
    CHECK_OK(ctx, tb_attention_forward(&ctx, &cfg, TB_MODE_TRAINING, NULL, &qh, &kh, &vh, &o, NULL,
                                       0));
    ck_assert(memcmp(wide + C, want, sizeof want) == 0);
    for (size_t r = 0; r < TK; r++)
        ck_assert(memcmp(wide + r * WV, copy + r * WV, C * sizeof(float)) == 0);
    /* One column later, out's last element is v's row 1, column 0. */
    memcpy(wide, copy, sizeof wide);
    tb_tensor o1 = tb_tensor_3d(wide + C + 1, 1, 1, C);
    tb_ctx_clear_error(&ctx);
    ck_assert_int_eq(tb_attention_forward(&ctx, &cfg, TB_MODE_TRAINING, NULL, &qh, &kh, &vh, &o1,
                                          NULL, 0),
                     TB_ERR_INVALID_ARG);
    ck_assert_str_eq(tb_ctx_error(&ctx), "tb_attention_forward: out overlaps v");
    ck_assert(memcmp(wide, copy, sizeof wide) == 0);
}
END_TEST

/* ---- the shared check itself ---------------------------------------------
 * Strided spans against a byte map: random runs, lengths and strides in a
 * small window, every placement of one against the other. */
static void mark(unsigned char *map, size_t base, size_t rows, size_t len, size_t stride)
{
    for (size_t r = 0; r < rows; r++)
        memset(map + base + r * stride, 1, len);
}

START_TEST(spans_match_a_byte_map)
{
    enum { WIN = 512 };
    static unsigned char window[WIN];
    tb_ctx ctx;
    tbt_ctx_init(&ctx, 1);
    uint64_t st = 12345;
    size_t tried = 0, met = 0;
    for (int t = 0; t < 20000; t++) {
        size_t g[2][4]; /* base, rows, len, stride */
        for (int k = 0; k < 2; k++) {
            st = st * 6364136223846793005ULL + 1442695040888963407ULL;
            const uint64_t r = st >> 16;
            g[k][1] = 1 + r % 6;
            g[k][2] = 1 + (r >> 8) % 12;
            g[k][3] = g[k][2] + (r >> 16) % 11 - ((r >> 24) % 4 == 0 ? (r >> 16) % 11 : 0);
            const size_t ext = (g[k][1] - 1) * g[k][3] + g[k][2];
            g[k][0] = (r >> 32) % (WIN - ext);
        }
        unsigned char ma[WIN] = {0}, mb[WIN] = {0};
        mark(ma, g[0][0], g[0][1], g[0][2], g[0][3]);
        mark(mb, g[1][0], g[1][1], g[1][2], g[1][3]);
        int want = 0;
        for (size_t i = 0; i < WIN; i++)
            want |= ma[i] & mb[i];
        tb_span a = tb_span_bytes("a", window + g[0][0], g[0][2]), b;
        a.rows = g[0][1], a.stride = g[0][3];
        b = tb_span_bytes("b", window + g[1][0], g[1][2]);
        b.rows = g[1][1], b.stride = g[1][3];
        /* as output and input, then as two outputs */
        const tb_status io = tb_check_alias(&ctx, "t", &a, 1, &b, 1);
        ck_assert_msg(io == (want ? TB_ERR_INVALID_ARG : TB_OK),
                      "a (%zu, %zu x %zu / %zu) b (%zu, %zu x %zu / %zu): %s, map says %d",
                      g[0][0], g[0][1], g[0][2], g[0][3], g[1][0], g[1][1], g[1][2], g[1][3],
                      tb_strerror(io), want);
        if (want)
            ck_assert_str_eq(tb_ctx_error(&ctx), "t: a overlaps b");
        const tb_span two[2] = {b, a};
        ck_assert_int_eq(tb_check_alias(&ctx, "t", two, 2, NULL, 0),
                         want ? TB_ERR_INVALID_ARG : TB_OK);
        if (want)
            ck_assert_str_eq(tb_ctx_error(&ctx), "t: b overlaps a");
        tried++;
        met += want;
    }
    ck_assert_msg(met > tried / 10 && met < tried - tried / 10, "%zu of %zu pairs met", met,
                  tried);
    printf("aliasing check: %zu random span pairs agree with the byte map (%zu overlap)\n",
           tried, met);
}
END_TEST

START_TEST(exact_in_place_only_where_allowed)
{
    static float buf[64];
    tb_ctx ctx;
    tbt_ctx_init(&ctx, 1);
    const tb_span x = tb_span_floats("x", buf, 12);
    /* The same memory, described as rows or as one run, is the same span. */
    const tb_span rows = tb_span_in_place(tb_span_rows("y", buf, 3, 4, 4), TB_INPUT(0));
    ck_assert_int_eq(tb_check_alias(&ctx, "t", &rows, 1, &x, 1), TB_OK);
    const tb_span y = tb_span_floats("y", buf, 12), y_ok = tb_span_in_place(y, TB_INPUT(0));
    ck_assert_int_eq(tb_check_alias(&ctx, "t", &y, 1, &x, 1), TB_ERR_INVALID_ARG);
    ck_assert_str_eq(tb_ctx_error(&ctx), "t: y overlaps x");
    const tb_span shifted = tb_span_in_place(tb_span_floats("y", buf + 1, 12), TB_INPUT(0));
    const tb_span shorter = tb_span_in_place(tb_span_floats("y", buf, 11), TB_INPUT(0));
    ck_assert_int_eq(tb_check_alias(&ctx, "t", &shifted, 1, &x, 1), TB_ERR_INVALID_ARG);
    ck_assert_str_eq(tb_ctx_error(&ctx),
                     "t: y overlaps x (only exactly the same memory is allowed)");
    ck_assert_int_eq(tb_check_alias(&ctx, "t", &shorter, 1, &x, 1), TB_ERR_INVALID_ARG);
    /* Allowed for input 1 only: input 0 is still refused. */
    const tb_span two[2] = {tb_span_floats("w", buf + 20, 4), x};
    const tb_span y1 = tb_span_in_place(y, TB_INPUT(1));
    ck_assert_int_eq(tb_check_alias(&ctx, "t", &y1, 1, two, 2), TB_OK);
    const tb_span w_on = tb_span_in_place(tb_span_floats("y", buf + 20, 4), TB_INPUT(1));
    ck_assert_int_eq(tb_check_alias(&ctx, "t", &w_on, 1, two, 2), TB_ERR_INVALID_ARG);
    ck_assert_str_eq(tb_ctx_error(&ctx), "t: y overlaps w");
    /* Two outputs are never allowed to coincide. */
    const tb_span outs[2] = {y_ok, tb_span_floats("z", buf, 12)};
    ck_assert_int_eq(tb_check_alias(&ctx, "t", outs, 1, &x, 1), TB_OK);
    ck_assert_int_eq(tb_check_alias(&ctx, "t", outs, 2, NULL, 0), TB_ERR_INVALID_ARG);
    ck_assert_str_eq(tb_ctx_error(&ctx), "t: y overlaps z");
    /* Absent arguments touch nothing; owners are named. */
    tb_span none = tb_span_floats("none", NULL, 12), g = tb_span_floats("gradient", buf, 2);
    g.owner = "h.0.weight";
    ck_assert_int_eq(tb_check_alias(&ctx, "t", &none, 1, &x, 1), TB_OK);
    ck_assert_int_eq(tb_check_alias(&ctx, "t", &g, 1, &x, 1), TB_ERR_INVALID_ARG);
    ck_assert_str_eq(tb_ctx_error(&ctx), "t: gradient of 'h.0.weight' overlaps x");
}
END_TEST

/* A view that would run past the end of the address space is refused as
 * TB_ERR_OVERFLOW before anything is read or written (the old check's end
 * pointer wrapped, and the call went on to write). */
START_TEST(extent_past_the_address_space)
{
    tb_ctx ctx;
    tbt_ctx_init(&ctx, 1);
    float *top = (float *)(uintptr_t)(UINTPTR_MAX - 63); /* 64-byte aligned, never touched */
    float y[32];
    for (size_t i = 0; i < 32; i++)
        y[i] = (float)i;
    tb_tensor xt = tb_tensor_1d(top, 32), yt = tb_tensor_1d(y, 32);
    tb_ctx_clear_error(&ctx);
    ck_assert_int_eq(tb_relu_forward(&ctx, &xt, &yt), TB_ERR_OVERFLOW);
    ck_assert_str_eq(tb_ctx_error(&ctx),
                     "tb_relu_forward: x extends past the end of the address space");
    for (size_t i = 0; i < 32; i++)
        ck_assert(y[i] == (float)i);
    const tb_span s = tb_span_bytes("s", (void *)(uintptr_t)(UINTPTR_MAX - 7), 8);
    ck_assert_int_eq(tb_check_alias(&ctx, "t", &s, 1, NULL, 0), TB_OK); /* ends at the top */
    const tb_span s9 = tb_span_bytes("s", (void *)(uintptr_t)(UINTPTR_MAX - 7), 9);
    ck_assert_int_eq(tb_check_alias(&ctx, "t", &s9, 1, NULL, 0), TB_ERR_OVERFLOW);
    const tb_span big = tb_span_array("big", y, SIZE_MAX / 2, 4);
    ck_assert_int_eq(tb_check_alias(&ctx, "t", &big, 1, NULL, 0), TB_ERR_OVERFLOW);
}
END_TEST

START_TEST(partial_overlap_is_rejected)
{
    /* In place (same pointer) is allowed; an output shifted into its input
     * would be read after being overwritten, so it is refused. */
    tb_ctx ctx;
    tbt_ctx_init(&ctx, 2);
    float buf[40];
    tbt_fill_uniform(buf, 40, -1, 1, 9);
    tb_tensor a = tb_tensor_2d(buf, 4, 8), shifted = tb_tensor_2d(buf + 3, 4, 8);
    ck_assert_int_eq(tb_gelu_forward(&ctx, TB_GELU_TANH, &a, &shifted), TB_ERR_INVALID_ARG);
    ck_assert_int_eq(tb_relu_forward(&ctx, &a, &shifted), TB_ERR_INVALID_ARG);
    ck_assert_int_eq(tb_softmax_forward(&ctx, &a, &shifted), TB_ERR_INVALID_ARG);
    ck_assert_int_eq(tb_residual_forward(&ctx, &a, &a, &shifted), TB_ERR_INVALID_ARG);
    tb_layernorm ln;
    ck_assert_int_eq(tb_layernorm_init(&ctx, &ln, 8, 1e-5f, TB_NORM_SCALE | TB_NORM_SHIFT), TB_OK);
    ck_assert_int_eq(tb_layernorm_forward(&ctx, &ln, &a, &shifted, NULL, 0), TB_ERR_INVALID_ARG);
    ck_assert_int_eq(tb_layernorm_forward(&ctx, &ln, &a, &a, NULL, 0), TB_OK); /* in place */
    tb_layernorm_free(&ln);
    ck_assert_int_eq(tb_gelu_forward(&ctx, TB_GELU_TANH, &a, &a), TB_OK);
}
END_TEST

Suite *suite_aliasing(void)
{
    Suite *s = suite_create("aliasing");
    TCase *tp = tcase_create("pairs");
    tcase_set_timeout(tp, 120);
    tcase_add_loop_test(tp, every_pair_refused, 0, (int)ARRAY_LEN(tables));
    suite_add_tcase(s, tp);
    TCase *tr = tcase_create("cases");
    tcase_add_test(tr, mha_cross_backward_dx_over_mem);
    tcase_add_test(tr, packed_gradients_are_not_an_overlap);
    tcase_add_test(tr, unread_columns_are_not_an_overlap);
    suite_add_tcase(s, tr);
    TCase *tc = tcase_create("check");
    tcase_add_test(tc, spans_match_a_byte_map);
    tcase_add_test(tc, exact_in_place_only_where_allowed);
    tcase_add_test(tc, extent_past_the_address_space);
    tcase_add_test(tc, partial_overlap_is_rejected);
    suite_add_tcase(s, tc);
    return s;
}
