/* LoRA: low-rank adapters on a frozen Linear (and DoRA), as PEFT's LoraLayer. */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "../core/internal.h"
#include "../core/lowrank_svd.h"
#include "../kernels/gemm.h"

/* ---- configuration and names ------------------------------------------------------ */

tb_lora_config tb_lora_config_default(size_t rank)
{
    tb_lora_config c;
    memset(&c, 0, sizeof c);
    c.rank = rank;
    c.alpha = 8.0f;
    c.init = TB_LORA_INIT_DEFAULT;
    return c;
}

static int valid_name(const char *name)
{
    size_t n = 0;
    for (; name[n]; n++) {
        const char ch = name[n];
        const int ok = (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
                       (ch >= '0' && ch <= '9') || ch == '_' || ch == '-';
        if (!ok || n + 1 >= TB_LORA_NAME_MAX)
            return 0;
    }
    return n > 0;
}

int tb_lora_find(const tb_lora *lora, const char *name)
{
    if (!lora || !name)
        return -1;
    for (size_t i = 0; i < lora->n_adapters; i++)
        if (strcmp(lora->adapter[i].name, name) == 0)
            return (int)i;
    return -1;
}

int tb_lora_target_matches(const char *name, const char *pattern)
{
    if (!name || !pattern || !pattern[0])
        return 0;
    const size_t n = strlen(name), p = strlen(pattern);
    if (n < p || strcmp(name + n - p, pattern) != 0)
        return 0;
    return n == p || name[n - p - 1] == '.';
}

static float scaling_of(const tb_lora_config *c)
{
    const float r = (float)c->rank;
    return c->use_rslora ? c->alpha / sqrtf(r) : c->alpha / r;
}

static tb_status check_config(tb_ctx *ctx, const char *fn, const tb_lora_config *c)
{
    if (c->rank == 0)
        return tb_fail(ctx, TB_ERR_INVALID_ARG, fn, "rank must be >= 1");
    if (!isfinite(c->alpha))
        return tb_fail(ctx, TB_ERR_INVALID_ARG, fn, "alpha must be finite");
    if (!(c->dropout >= 0.0f && c->dropout < 1.0f))
        return tb_fail(ctx, TB_ERR_INVALID_ARG, fn, "dropout must be in [0, 1), got %g",
                       (double)c->dropout);
    if (c->init != TB_LORA_INIT_DEFAULT && c->init != TB_LORA_INIT_GAUSSIAN &&
        c->init != TB_LORA_INIT_RANDOM)
        return tb_fail(ctx, TB_ERR_INVALID_ARG, fn, "unknown init %d", (int)c->init);
    return TB_OK;
}

static tb_status check_lora(tb_ctx *ctx, const char *fn, const tb_lora *lora)
{
    if (!ctx || !lora)
        return tb_fail(ctx, TB_ERR_NULL_ARG, fn, "ctx and lora must not be NULL");
    if (!lora->base || !lora->base->weight.value)
        return tb_fail(ctx, TB_ERR_STATE, fn, "lora is not initialised (no base layer)");
    return TB_OK;
}

/* ---- layer and adapters --------------------------------------------------------------- */

tb_status tb_lora_init(tb_ctx *ctx, tb_lora *lora, tb_linear *base)
{
    if (lora)
        memset(lora, 0, sizeof *lora);
    if (!ctx || !lora || !base)
        return tb_fail(ctx, TB_ERR_NULL_ARG, __func__, "ctx, lora and base must not be NULL");
    if (!base->weight.value || base->in_features == 0 || base->out_features == 0)
        return tb_fail(ctx, TB_ERR_STATE, __func__, "base layer is not initialised");
    tb_linear_freeze(base);
    lora->base = base;
    lora->in_features = base->in_features;
    lora->out_features = base->out_features;
    return TB_OK;
}

static void adapter_free(tb_lora_adapter *ad)
{
    if (ad->storage)
        tb_free_with(&ad->allocator, ad->storage);
    memset(ad, 0, sizeof *ad);
}

void tb_lora_free(tb_lora *lora)
{
    if (!lora)
        return;
    for (size_t i = 0; i < lora->n_adapters; i++)
        adapter_free(&lora->adapter[i]);
    memset(lora, 0, sizeof *lora);
}

/* W (o, i) of the base weight, in either layout. */
static inline float w_at(const tb_linear *b, size_t o, size_t i)
{
    return b->layout == TB_LINEAR_OUT_IN ? b->weight.value[o * b->in_features + i]
                                         : b->weight.value[i * b->out_features + o];
}

/* norm[o] = || W[o, :] + s (B A)[o, :] ||, the base weight as it is (the
 * callers make sure nothing is merged into it). Each row's sum is one
 * thread's, in order, in double. */
static void dora_norms(tb_ctx *ctx, const tb_linear *base, const tb_lora_adapter *ad,
                       float *norm)
{
    const size_t in = base->in_features, out = base->out_features, r = ad->config.rank;
    const float s = ad->scaling, *A = ad->A.value, *B = ad->B.value;
#pragma omp parallel for num_threads(tb_threads_for(ctx, (double)in * out * r)) schedule(static)
    for (size_t o = 0; o < out; o++) {
        double acc = 0.0;
        for (size_t i = 0; i < in; i++) {
            float d = 0.0f;
            for (size_t k = 0; k < r; k++)
                d += B[o * r + k] * A[k * in + i];
            const float w = w_at(base, o, i) + s * d;
            acc += (double)w * (double)w;
        }
        norm[o] = (float)sqrt(acc);
    }
}

/* Storage of one adapter: A, dA, B, dB and, for DoRA, m, dm and the merge's
 * norms. */
static tb_status adapter_alloc(tb_ctx *ctx, const char *fn, const tb_lora *lora,
                               const char *name, const tb_lora_config *c, tb_lora_adapter *ad)
{
    const size_t in = lora->in_features, out = lora->out_features, r = c->rank;
    size_t na, nb, n, bytes;
    if (!tb_mul_size(r, in, &na) || !tb_mul_size(out, r, &nb) || !tb_add_size(na, nb, &n) ||
        !tb_mul_size(n, 2, &n) || !tb_add_size(n, c->use_dora ? 3 * out : 0, &n) ||
        !tb_mul_size(n, sizeof(float), &bytes))
        return tb_fail(ctx, TB_ERR_OVERFLOW, fn, "rank %zu adapter on %zu x %zu overflows", r,
                       out, in);
    memset(ad, 0, sizeof *ad);
    void *mem;
    tb_status s = tb_alloc(ctx, fn, bytes, &mem);
    if (s != TB_OK)
        return s;
    memset(mem, 0, bytes);
    float *f = mem;
    ad->storage = mem;
    ad->allocator = ctx->allocator;
    snprintf(ad->name, sizeof ad->name, "%s", name);
    ad->config = *c;
    ad->scaling = scaling_of(c);
    const size_t sa[2] = {r, in}, sb[2] = {out, r};
    s = tb_param_view(ctx, &ad->A, f, f + na, 2, sa);
    f += 2 * na;
    if (s == TB_OK)
        s = tb_param_view(ctx, &ad->B, f, f + nb, 2, sb);
    f += 2 * nb;
    if (s == TB_OK && c->use_dora) {
        s = tb_param_view(ctx, &ad->magnitude, f, f + out, 1, &out);
        ad->merged_norm = f + 2 * out;
    }
    if (s != TB_OK)
        adapter_free(ad);
    return s;
}

static tb_status adapter_fill(tb_ctx *ctx, const tb_lora *lora, tb_lora_adapter *ad,
                              tb_rng *rng)
{
    const tb_lora_config *c = &ad->config;
    const float bound_a = 1.0f / sqrtf((float)lora->in_features);
    tb_status s;
    if (c->init == TB_LORA_INIT_GAUSSIAN)
        s = tb_rng_fill_normal(ctx, rng, ad->A.value, ad->A.numel, 0.0f, 1.0f / (float)c->rank);
    else
        s = tb_rng_fill_uniform(ctx, rng, ad->A.value, ad->A.numel, -bound_a, bound_a);
    if (s == TB_OK && c->init == TB_LORA_INIT_RANDOM) {
        const float bound_b = 1.0f / sqrtf((float)c->rank);
        s = tb_rng_fill_uniform(ctx, rng, ad->B.value, ad->B.numel, -bound_b, bound_b);
    }
    if (s == TB_OK && c->use_dora)
        dora_norms(ctx, lora->base, ad, ad->magnitude.value);
    return s;
}

/* A free slot for a new adapter called `name` (checked). */
static tb_status check_new_adapter(tb_ctx *ctx, const char *fn, const tb_lora *lora,
                                   const char *name)
{
    if (!valid_name(name))
        return tb_fail(ctx, TB_ERR_INVALID_ARG, fn,
                       "adapter name '%.40s' must be 1 to %d letters, digits, '_' or '-'", name,
                       TB_LORA_NAME_MAX - 1);
    if (tb_lora_find(lora, name) >= 0)
        return tb_fail(ctx, TB_ERR_DUPLICATE, fn, "adapter '%s' already exists", name);
    if (lora->n_adapters >= TB_LORA_MAX_ADAPTERS)
        return tb_fail(ctx, TB_ERR_INVALID_ARG, fn, "a LoRA layer holds at most %d adapters",
                       TB_LORA_MAX_ADAPTERS);
    return TB_OK;
}

tb_status tb_lora_add(tb_ctx *ctx, tb_lora *lora, const char *name,
                      const tb_lora_config *config, tb_rng *rng)
{
    const char *fn = __func__;
    tb_status s = check_lora(ctx, fn, lora);
    if (s != TB_OK)
        return s;
    if (!name || !config || !rng)
        return tb_fail(ctx, TB_ERR_NULL_ARG, fn, "name, config and rng must not be NULL");
    if ((s = check_new_adapter(ctx, fn, lora, name)) != TB_OK ||
        (s = check_config(ctx, fn, config)) != TB_OK)
        return s;
    if (config->use_dora && lora->n_merged > 0)
        return tb_fail(ctx, TB_ERR_STATE, fn,
                       "a DoRA adapter's magnitude needs the unmerged weight: unmerge first");
    tb_lora_adapter *ad = &lora->adapter[lora->n_adapters];
    if ((s = adapter_alloc(ctx, fn, lora, name, config, ad)) != TB_OK)
        return s;
    if ((s = adapter_fill(ctx, lora, ad, rng)) != TB_OK) {
        adapter_free(ad);
        return s;
    }
    if (lora->n_adapters == 0)
        lora->active[lora->n_active++] = 0;
    lora->n_adapters++;
    return TB_OK;
}

tb_status tb_lora_delete(tb_ctx *ctx, tb_lora *lora, const char *name)
{
    const char *fn = __func__;
    tb_status s = check_lora(ctx, fn, lora);
    if (s != TB_OK)
        return s;
    if (!name)
        return tb_fail(ctx, TB_ERR_NULL_ARG, fn, "name must not be NULL");
    const int at = tb_lora_find(lora, name);
    if (at < 0)
        return tb_fail(ctx, TB_ERR_NOT_FOUND, fn, "no adapter '%.40s'", name);
    const size_t k = (size_t)at;
    if (lora->adapter[k].merged)
        return tb_fail(ctx, TB_ERR_STATE, fn, "adapter '%s' is merged: unmerge first", name);
    adapter_free(&lora->adapter[k]);
    memmove(&lora->adapter[k], &lora->adapter[k + 1],
            (lora->n_adapters - k - 1) * sizeof lora->adapter[0]);
    lora->n_adapters--;
    memset(&lora->adapter[lora->n_adapters], 0, sizeof lora->adapter[0]);
    /* Renumber the active and merged sets (k is in neither merged). */
    size_t n = 0;
    for (size_t i = 0; i < lora->n_active; i++)
        if (lora->active[i] != k)
            lora->active[n++] = lora->active[i] > k ? lora->active[i] - 1 : lora->active[i];
    lora->n_active = n;
    for (size_t i = 0; i < lora->n_merged; i++)
        if (lora->merged[i] > k)
            lora->merged[i]--;
    return TB_OK;
}

tb_status tb_lora_set_active(tb_ctx *ctx, tb_lora *lora, const char *const *names, size_t n)
{
    const char *fn = __func__;
    tb_status s = check_lora(ctx, fn, lora);
    if (s != TB_OK)
        return s;
    if (n > 0 && !names)
        return tb_fail(ctx, TB_ERR_NULL_ARG, fn, "names must not be NULL");
    size_t idx[TB_LORA_MAX_ADAPTERS];
    if (n > lora->n_adapters)
        return tb_fail(ctx, TB_ERR_INVALID_ARG, fn, "%zu names for %zu adapters", n,
                       lora->n_adapters);
    for (size_t i = 0; i < n; i++) {
        if (!names[i])
            return tb_fail(ctx, TB_ERR_NULL_ARG, fn, "names[%zu] is NULL", i);
        const int at = tb_lora_find(lora, names[i]);
        if (at < 0)
            return tb_fail(ctx, TB_ERR_NOT_FOUND, fn, "no adapter '%.40s'", names[i]);
        for (size_t j = 0; j < i; j++)
            if (idx[j] == (size_t)at)
                return tb_fail(ctx, TB_ERR_INVALID_ARG, fn, "adapter '%s' named twice", names[i]);
        idx[i] = (size_t)at;
    }
    memcpy(lora->active, idx, n * sizeof idx[0]);
    lora->n_active = n;
    return TB_OK;
}

void tb_lora_set_enabled(tb_lora *lora, int enabled)
{
    if (lora)
        lora->disabled = !enabled;
}

tb_status tb_lora_params(tb_ctx *ctx, tb_lora *lora, const char *prefix, tb_param_list *list)
{
    const char *fn = __func__;
    tb_status s = check_lora(ctx, fn, lora);
    if (s != TB_OK)
        return s;
    char local[TB_PARAM_NAME_MAX];
    for (size_t i = 0; i < lora->n_adapters && s == TB_OK; i++) {
        tb_lora_adapter *ad = &lora->adapter[i];
        snprintf(local, sizeof local, "lora_A.%s.weight", ad->name);
        s = tb_param_list_add(ctx, list, prefix, local, &ad->A);
        if (s == TB_OK) {
            snprintf(local, sizeof local, "lora_B.%s.weight", ad->name);
            s = tb_param_list_add(ctx, list, prefix, local, &ad->B);
        }
        if (s == TB_OK && ad->config.use_dora) {
            snprintf(local, sizeof local, "lora_magnitude_vector.%s.weight", ad->name);
            s = tb_param_list_add(ctx, list, prefix, local, &ad->magnitude);
        }
    }
    return s;
}

size_t tb_lora_frozen_bytes(const tb_lora *lora)
{
    if (!lora || !lora->base)
        return 0;
    const tb_linear *b = lora->base;
    return (b->in_features * b->out_features + (b->has_bias ? b->out_features : 0)) *
           sizeof(float);
}

/* ---- the cache -------------------------------------------------------------------- */

/* Header: magic, the matched fields, then one record per adapter used
 * (slot): its dropout cache. Data after it, per slot in forward order:
 * uT = A dropout(x)^T (r, R) (transposed: every rank-r product then has r
 * as its M, which the micro-kernels tile far better than an N of r), then for DoRA v (R, out) (the magnitude term's
 * input: base_nobias + s B u) and norm (out). */
#define LORA_MAGIC 0x4c6f5241634b3031ull /* "LoRAcK01" */
#define LORA_FIELDS 5
static const char *const lora_field_names[LORA_FIELDS] = {"rows", "in_features", "out_features",
                                                          "adapters used", "active set"};
static const tb_cache_kind LORA_CACHE = {LORA_MAGIC, "tb_lora_forward", "tb_lora_cache_size",
                                         LORA_FIELDS, 1, lora_field_names};

typedef struct lora_slot_rec {
    tb_dropout_cache drop;
} lora_slot_rec;

#define LORA_HEADER_BYTES                                                                    \
    (((1 + LORA_FIELDS) * sizeof(uint64_t) + TB_LORA_MAX_ADAPTERS * sizeof(lora_slot_rec) + \
      63) / 64 * 64)

/* The adapters a forward adds: active, not merged, unless disabled. */
static size_t used_slots(const tb_lora *lora, size_t *idx)
{
    size_t n = 0;
    if (lora->disabled)
        return 0;
    for (size_t i = 0; i < lora->n_active; i++)
        if (!lora->adapter[lora->active[i]].merged)
            idx[n++] = lora->active[i];
    return n;
}

/* Floats of cache data for slots idx[0..n) over R rows. */
static int cache_floats(const tb_lora *lora, const size_t *idx, size_t n, size_t R,
                        size_t *floats)
{
    size_t total = 0, t;
    for (size_t i = 0; i < n; i++) {
        const tb_lora_adapter *ad = &lora->adapter[idx[i]];
        if (!tb_mul_size(R, ad->config.rank, &t) || !tb_add_size(total, t, &total))
            return 0;
        if (ad->config.use_dora &&
            (!tb_mul_size(R + 1, lora->out_features, &t) || !tb_add_size(total, t, &total)))
            return 0;
    }
    *floats = total;
    return 1;
}

static void cache_fields(const tb_lora *lora, const size_t *idx, size_t n, size_t R,
                         uint64_t *f)
{
    uint64_t sig = 0;
    for (size_t i = 0; i < n; i++)
        sig |= (uint64_t)(idx[i] + 1) << (4 * i);
    f[0] = R, f[1] = lora->in_features, f[2] = lora->out_features, f[3] = n, f[4] = sig;
}

tb_status tb_lora_cache_size(const tb_lora *lora, size_t rows, size_t *bytes)
{
    if (!lora || !bytes)
        return TB_ERR_NULL_ARG;
    size_t idx[TB_LORA_MAX_ADAPTERS], floats;
    const size_t n = used_slots(lora, idx);
    if (!cache_floats(lora, idx, n, rows, &floats))
        return TB_ERR_OVERFLOW;
    return tb_cache_bytes(LORA_HEADER_BYTES, floats, bytes);
}

static lora_slot_rec *slot_rec(void *cache, size_t i)
{
    return (lora_slot_rec *)((unsigned char *)cache + (1 + LORA_FIELDS) * sizeof(uint64_t)) + i;
}

/* ---- forward ----------------------------------------------------------------------------- */

/* y = x W^T (W in its layout) with alpha and beta. */
static tb_status base_product(tb_ctx *ctx, const tb_linear *b, size_t R, const float *x,
                              float *y, float beta)
{
    const size_t in = b->in_features, out = b->out_features;
    if (b->layout == TB_LINEAR_IN_OUT)
        return tb_gemm(ctx, 0, 0, R, out, in, 1.0f, x, in, b->weight.value, out, beta, y, out);
    return tb_gemm(ctx, 0, 1, R, out, in, 1.0f, x, in, b->weight.value, in, beta, y, out);
}

/* dx = d W (the input gradient of x W^T) with beta. */
static tb_status base_input_grad(tb_ctx *ctx, const tb_linear *b, size_t R, const float *d,
                                 float *dx, float beta)
{
    const size_t in = b->in_features, out = b->out_features;
    if (b->layout == TB_LINEAR_IN_OUT)
        return tb_gemm(ctx, 0, 1, R, in, out, 1.0f, d, out, b->weight.value, out, beta, dx, in);
    return tb_gemm(ctx, 0, 0, R, in, out, 1.0f, d, out, b->weight.value, in, beta, dx, in);
}

static int drop_active(const tb_lora_adapter *ad, tb_mode mode)
{
    return mode == TB_MODE_TRAINING && ad->config.dropout > 0.0f;
}

/* Whether the forward may run: an unmerged DoRA adapter next to a merged one
 * would take its norm from the merged weight; adapters disabled while
 * something is merged would not give the base layer's output. */
static tb_status check_merge_state(tb_ctx *ctx, const char *fn, const tb_lora *lora,
                                   const size_t *idx, size_t n)
{
    if (lora->disabled && lora->n_merged > 0)
        return tb_fail(ctx, TB_ERR_STATE, fn,
                       "adapters are disabled but merged into the weight: unmerge first");
    if (lora->n_merged == 0)
        return TB_OK;
    for (size_t i = 0; i < n; i++)
        if (lora->adapter[idx[i]].config.use_dora)
            return tb_fail(ctx, TB_ERR_STATE, fn,
                           "DoRA adapter '%s' is active and unmerged while another is merged: "
                           "unmerge first",
                           lora->adapter[idx[i]].name);
    return TB_OK;
}

/* The spans of every adapter's parameters used (inputs of forward). */
static size_t param_spans(const tb_lora *lora, const size_t *idx, size_t n, tb_span *sp,
                          int grads)
{
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        const tb_lora_adapter *ad = &lora->adapter[idx[i]];
        sp[k++] = tb_span_floats(grads ? "lora_A.grad" : "lora_A",
                                 grads ? (tb_param_wants_grad(&ad->A) ? ad->A.grad : NULL)
                                       : ad->A.value,
                                 ad->A.numel);
        sp[k++] = tb_span_floats(grads ? "lora_B.grad" : "lora_B",
                                 grads ? (tb_param_wants_grad(&ad->B) ? ad->B.grad : NULL)
                                       : ad->B.value,
                                 ad->B.numel);
        if (ad->config.use_dora)
            sp[k++] = tb_span_floats(
                grads ? "lora_magnitude_vector.grad" : "lora_magnitude_vector",
                grads ? (tb_param_wants_grad(&ad->magnitude) ? ad->magnitude.grad : NULL)
                      : ad->magnitude.value,
                lora->out_features);
    }
    return k;
}

#define LORA_MAX_SPANS (6 + 3 * TB_LORA_MAX_ADAPTERS)

/* The layer, x (R rows of in) and the output-shaped tensor t (R, out) of a
 * forward or backward call; *rows receives R. */
static tb_status check_call(tb_ctx *ctx, const char *fn, const tb_lora *lora, const tb_tensor *x,
                            const char *t_name, const tb_tensor *t, size_t *rows)
{
    tb_status s = check_lora(ctx, fn, lora);
    size_t cin;
    if (s != TB_OK || (s = tb_check_tensor(ctx, fn, "x", x, rows, &cin)) != TB_OK)
        return s;
    if (cin != lora->in_features)
        return tb_fail(ctx, TB_ERR_SHAPE, fn, "x has last dimension %zu, expected in_features %zu",
                       cin, lora->in_features);
    return tb_check_matrix(ctx, fn, t_name, t, *rows, lora->out_features);
}

/* The adapters a call on R rows uses (idx, *n), its cache's size and the
 * header fields it must carry. */
static tb_status plan_cache(tb_ctx *ctx, const char *fn, const tb_lora *lora, size_t R,
                            size_t *idx, size_t *n, size_t *need, uint64_t *fields)
{
    size_t floats;
    *n = used_slots(lora, idx);
    if (!cache_floats(lora, idx, *n, R, &floats) ||
        tb_cache_bytes(LORA_HEADER_BYTES, floats, need) != TB_OK)
        return tb_fail(ctx, TB_ERR_OVERFLOW, fn, "cache size for %zu rows overflows", R);
    cache_fields(lora, idx, *n, R, fields);
    return TB_OK;
}

tb_status tb_lora_forward(tb_ctx *ctx, const tb_lora *lora, tb_mode mode, tb_rng *rng,
                          const tb_tensor *x, tb_tensor *y, void *cache, size_t cache_bytes)
{
    const char *fn = __func__;
    size_t R, idx[TB_LORA_MAX_ADAPTERS], n, need;
    uint64_t fields[LORA_FIELDS];
    tb_status s = check_call(ctx, fn, lora, x, "y", y, &R);
    if (s != TB_OK || (s = plan_cache(ctx, fn, lora, R, idx, &n, &need, fields)) != TB_OK ||
        (s = check_merge_state(ctx, fn, lora, idx, n)) != TB_OK)
        return s;
    const tb_linear *base = lora->base;
    const size_t in = lora->in_features, out = lora->out_features;
    int any_drop = 0, any_dora = 0;
    size_t r_max = 0;
    for (size_t i = 0; i < n; i++) {
        const tb_lora_adapter *ad = &lora->adapter[idx[i]];
        any_drop |= drop_active(ad, mode);
        any_dora |= ad->config.use_dora;
        r_max = ad->config.rank > r_max ? ad->config.rank : r_max;
    }
    if (any_drop && !rng)
        return tb_fail(ctx, TB_ERR_NULL_ARG, fn, "rng must not be NULL when dropout is active");
    const tb_rng rng_at_call = any_drop ? *rng : (tb_rng){0, 0};
    if ((s = tb_cache_check(ctx, fn, &LORA_CACHE, cache, cache_bytes, need, fields, 0)) != TB_OK)
        return s;
    {
        tb_span ins[LORA_MAX_SPANS];
        size_t k = 0;
        ins[k++] = tb_span_tensor("x", x);
        ins[k++] = tb_span_floats("weight", base->weight.value, in * out);
        ins[k++] = tb_span_floats("bias", base->has_bias ? base->bias.value : NULL, out);
        k += param_spans(lora, idx, n, ins + k, 0);
        /* The stream is a state the call advances (after y is written). */
        const tb_span outs[] = {tb_span_tensor("y", y),
                                tb_span_bytes("cache", cache, cache ? need : 0),
                                tb_span_bytes("rng", any_drop ? rng : NULL, sizeof *rng)};
        if ((s = tb_check_alias(ctx, fn, outs, 3, ins, k)) != TB_OK)
            return s;
    }
    /* Scratch: dropout(x) (R, in); without a cache u (R, r) and v (R, out);
     * for DoRA t = s B u (R, out) and the norms (out). */
    size_t sx = 0, su = 0, sv = 0, st = 0, sn = 0, total = 0, bytes;
    int ok = 1;
    if (any_drop)
        ok &= tb_mul_size(R, in, &sx);
    if (!cache) {
        ok &= tb_mul_size(R, r_max, &su);
        if (any_dora)
            ok &= tb_mul_size(R, out, &sv);
    }
    if (any_dora) {
        ok &= tb_mul_size(R, out, &st);
        sn = out;
    }
    ok &= tb_add_size(sx, su, &total) && tb_add_size(total, sv, &total) &&
          tb_add_size(total, st, &total) && tb_add_size(total, sn, &total) &&
          tb_mul_size(total, sizeof(float), &bytes);
    if (!ok)
        return tb_fail(ctx, TB_ERR_OVERFLOW, fn, "scratch for %zu rows overflows", R);
    void *mem = NULL;
    if (total > 0 && (s = tb_alloc(ctx, fn, bytes, &mem)) != TB_OK)
        return s;
    float *xd = mem, *u_s = xd + sx, *v_s = u_s + su, *t = v_s + sv, *norm_s = t + st;

    if ((s = tb_linear_forward(ctx, base, x, y)) != TB_OK)
        goto done;
    float *data = cache ? (float *)((unsigned char *)cache + LORA_HEADER_BYTES) : NULL;
    for (size_t i = 0; i < n; i++) {
        const tb_lora_adapter *ad = &lora->adapter[idx[i]];
        const size_t r = ad->config.rank;
        const float sc = ad->scaling;
        const int drop = drop_active(ad, mode);
        tb_dropout_cache dc;
        memset(&dc, 0, sizeof dc);
        const float *xin = x->data;
        if (drop) {
            tb_tensor xt = tb_tensor_2d(xd, R, in);
            if ((s = tb_dropout_forward(ctx, mode, ad->config.dropout, rng, x, &xt, &dc)) != TB_OK)
                goto done;
            xin = xd;
        }
        float *u = data ? data : u_s;
        if (data)
            data += R * r;
        /* uT (r, R) = A dropout(x)^T */
        if ((s = tb_gemm(ctx, 0, 1, r, R, in, 1.0f, ad->A.value, in, xin, in, 0.0f, u, R)) !=
            TB_OK)
            goto done;
        if (!ad->config.use_dora) { /* y += s uT^T B^T */
            if ((s = tb_gemm(ctx, 1, 1, R, out, r, sc, u, R, ad->B.value, r, 1.0f, y->data,
                             out)) != TB_OK)
                goto done;
        } else {
            float *v = data ? data : v_s, *norm = data ? data + R * out : norm_s;
            if (data)
                data += (R + 1) * out;
            dora_norms(ctx, base, ad, norm);
            /* v = the base term without bias: W dropout(x), or the running result - b */
            if (drop) {
                if ((s = base_product(ctx, base, R, xd, v, 0.0f)) != TB_OK)
                    goto done;
            } else {
                const float *b = base->has_bias ? base->bias.value : NULL;
                const float *yd = y->data;
#pragma omp parallel for num_threads(tb_threads_for(ctx, (double)R * out)) schedule(static)
                for (size_t row = 0; row < R; row++)
                    for (size_t o = 0; o < out; o++)
                        v[row * out + o] = b ? yd[row * out + o] - b[o] : yd[row * out + o];
            }
            /* t = s uT^T B^T; y += (g - 1) v + g t; v += t (what dm needs) */
            if ((s = tb_gemm(ctx, 1, 1, R, out, r, sc, u, R, ad->B.value, r, 0.0f, t, out)) !=
                TB_OK)
                goto done;
            const float *m = ad->magnitude.value;
            float *yd = y->data;
#pragma omp parallel for num_threads(tb_threads_for(ctx, (double)R * out)) schedule(static)
            for (size_t row = 0; row < R; row++)
                for (size_t o = 0; o < out; o++) {
                    const float g = m[o] / norm[o];
                    const size_t e = row * out + o;
                    yd[e] = yd[e] + (g - 1.0f) * v[e] + g * t[e];
                    v[e] = v[e] + t[e];
                }
        }
        if (cache)
            slot_rec(cache, i)->drop = dc;
    }
    if (cache)
        tb_cache_write(cache, &LORA_CACHE, fields);
done:
    if (s != TB_OK) {
        /* A product's packing scratch failed part way: the stream goes back
         * to where it was, and the cache (partly overwritten) loses its tag
         * so that no backward takes it for the forward it held before. */
        if (any_drop)
            *rng = rng_at_call;
        if (cache)
            memset(cache, 0, sizeof(uint64_t));
    }
    if (mem)
        tb_free_with(&ctx->allocator, mem);
    return s;
}

/* ---- backward ------------------------------------------------------------------------- */

/* The gradients backward adds into for one adapter, copied to `to` (restore
 * 0) or back from it (restore 1); `to` NULL only counts. Returns floats. */
static size_t backup_grads(tb_lora_adapter *ad, float *to, int restore)
{
    tb_param *p[3] = {&ad->A, &ad->B, &ad->magnitude};
    size_t k = 0;
    for (int j = 0; j < (ad->config.use_dora ? 3 : 2); j++) {
        if (!tb_param_wants_grad(p[j]))
            continue;
        if (to && restore)
            memcpy(p[j]->grad, to + k, p[j]->numel * sizeof(float));
        else if (to)
            memcpy(to + k, p[j]->grad, p[j]->numel * sizeof(float));
        k += p[j]->numel;
    }
    return k;
}

tb_status tb_lora_backward(tb_ctx *ctx, tb_lora *lora, const tb_tensor *x, const tb_tensor *dy,
                           tb_tensor *dx, const void *cache, size_t cache_bytes)
{
    const char *fn = __func__;
    size_t R, idx[TB_LORA_MAX_ADAPTERS], n, need;
    uint64_t fields[LORA_FIELDS];
    tb_status s = check_call(ctx, fn, lora, x, "dy", dy, &R);
    if (s != TB_OK ||
        (dx && (s = tb_check_matrix(ctx, fn, "dx", dx, R, lora->in_features)) != TB_OK) ||
        (s = plan_cache(ctx, fn, lora, R, idx, &n, &need, fields)) != TB_OK)
        return s;
    const tb_linear *base = lora->base;
    const size_t in = lora->in_features, out = lora->out_features;
    if ((s = tb_cache_check(ctx, fn, &LORA_CACHE, cache, cache_bytes, need, fields, 1)) != TB_OK ||
        (s = tb_cache_match(ctx, fn, &LORA_CACHE, cache, fields)) != TB_OK)
        return s;
    {
        tb_span ins[LORA_MAX_SPANS + 1], outs[LORA_MAX_SPANS];
        size_t ki = 0, ko = 0;
        ins[ki++] = tb_span_tensor("x", x);
        ins[ki++] = tb_span_tensor("dy", dy);
        ins[ki++] = tb_span_floats("weight", base->weight.value, in * out);
        ins[ki++] = tb_span_bytes("cache", cache, need);
        ki += param_spans(lora, idx, n, ins + ki, 0);
        outs[ko++] = dx ? tb_span_tensor("dx", dx) : tb_span_floats("dx", NULL, 0);
        ko += param_spans(lora, idx, n, outs + ko, 1);
        if ((s = tb_check_alias(ctx, fn, outs, ko, ins, ki)) != TB_OK)
            return s;
    }
    int any_drop = 0, any_dora = 0;
    size_t r_max = 0;
    for (size_t i = 0; i < n; i++) {
        const tb_lora_adapter *ad = &lora->adapter[idx[i]];
        any_drop |= slot_rec((void *)(uintptr_t)cache, i)->drop.active;
        any_dora |= ad->config.use_dora;
        r_max = ad->config.rank > r_max ? ad->config.rank : r_max;
    }
    /* Scratch: d_run and e (R, out) for DoRA, dhT (r, R), dB^T (r, out),
     * dropout(x) then its gradient (R, in); and a copy of dx and of the
     * gradients it adds into, put back if a product's packing scratch fails
     * part way (so that a TB_ERR_NO_MEMORY writes nothing, as documented). */
    size_t sd = 0, sh = 0, st = 0, sx = 0, sb = dx ? R * in : 0, total = 0, bytes;
    int ok = 1;
    for (size_t i = 0; i < n; i++)
        ok &= tb_add_size(sb, backup_grads(&lora->adapter[idx[i]], NULL, 0), &sb);
    if (any_dora)
        ok &= tb_mul_size(R, out, &sd);
    ok &= tb_mul_size(R, r_max, &sh) && tb_mul_size(out, r_max, &st);
    if (any_drop)
        ok &= tb_mul_size(R, in, &sx);
    ok &= tb_mul_size(sd, 2, &total) && tb_add_size(total, sh, &total) &&
          tb_add_size(total, st, &total) && tb_add_size(total, sx, &total) &&
          tb_add_size(total, sb, &total) &&
          tb_mul_size(total, sizeof(float), &bytes);
    if (!ok)
        return tb_fail(ctx, TB_ERR_OVERFLOW, fn, "scratch for %zu rows overflows", R);
    void *mem = NULL;
    if (total > 0 && (s = tb_alloc(ctx, fn, bytes, &mem)) != TB_OK)
        return s;
    float *d_run_s = mem, *e = d_run_s + sd, *dh = e + sd, *dbt = dh + sh, *xd = dbt + st;
    float *bk = xd + sx;
    {
        float *b = bk;
        if (dx)
            memcpy(b, dx->data, R * in * sizeof(float)), b += R * in;
        for (size_t i = 0; i < n; i++)
            b += backup_grads(&lora->adapter[idx[i]], b, 0);
    }
    const float *d_run = dy->data;
    if (any_dora) {
        memcpy(d_run_s, dy->data, R * out * sizeof(float));
        d_run = d_run_s;
    }
    /* Where each slot's cache data starts (forward order). */
    const float *slot_data[TB_LORA_MAX_ADAPTERS];
    {
        const float *p = (const float *)((const unsigned char *)cache + LORA_HEADER_BYTES);
        for (size_t i = 0; i < n; i++) {
            const tb_lora_adapter *ad = &lora->adapter[idx[i]];
            slot_data[i] = p;
            p += R * ad->config.rank + (ad->config.use_dora ? (R + 1) * out : 0);
        }
    }
    float dx_beta = 0.0f; /* the first contribution to dx stores */
    for (size_t j = n; j-- > 0;) {
        tb_lora_adapter *ad = &lora->adapter[idx[j]];
        const size_t r = ad->config.rank;
        const float sc = ad->scaling;
        const tb_dropout_cache *dc = &slot_rec((void *)(uintptr_t)cache, j)->drop;
        const float *u = slot_data[j];
        const float *xin = x->data;
        if (dc->active) { /* dropout(x) again: the same mask times the same x */
            tb_tensor xt = tb_tensor_2d(xd, R, in);
            if ((s = tb_dropout_backward(ctx, x, dc, &xt)) != TB_OK)
                goto done;
            xin = xd;
        }
        /* The gradient reaching the adapter's output t = s B u: d_run, or
         * g * d_run for DoRA. */
        const float *dt = d_run;
        if (ad->config.use_dora) {
            const float *v = u + R * r, *norm = v + R * out, *m = ad->magnitude.value;
            if (tb_param_wants_grad(&ad->magnitude)) {
                float *gm = ad->magnitude.grad;
#pragma omp parallel for num_threads(tb_threads_for(ctx, (double)R * out)) schedule(static)
                for (size_t o = 0; o < out; o++) {
                    float acc = 0.0f;
                    for (size_t row = 0; row < R; row++)
                        acc += d_run[row * out + o] * v[row * out + o];
                    gm[o] += acc / norm[o];
                }
            }
#pragma omp parallel for num_threads(tb_threads_for(ctx, (double)R * out)) schedule(static)
            for (size_t row = 0; row < R; row++)
                for (size_t o = 0; o < out; o++)
                    e[row * out + o] = m[o] / norm[o] * d_run[row * out + o];
            dt = e;
        }
        /* dhT = s B^T dt^T (r, R); dB += (s uT dt)^T; dA += dhT dropout(x) */
        if ((s = tb_gemm(ctx, 1, 1, r, R, out, sc, ad->B.value, r, dt, out, 0.0f, dh, R)) != TB_OK)
            goto done;
        if (tb_param_wants_grad(&ad->B)) {
            if ((s = tb_gemm(ctx, 0, 0, r, out, R, sc, u, R, dt, out, 0.0f, dbt, out)) != TB_OK)
                goto done;
            float *gb = ad->B.grad;
            for (size_t o = 0; o < out; o++)
                for (size_t k = 0; k < r; k++)
                    gb[o * r + k] += dbt[k * out + o];
        }
        if (tb_param_wants_grad(&ad->A) &&
            (s = tb_gemm(ctx, 0, 0, r, in, R, 1.0f, dh, R, xin, in, 1.0f, ad->A.grad, in)) != TB_OK)
            goto done;
        if (dc->active) {
            /* d dropout(x) = dh A (+ ((g - 1) d_run) W for DoRA), then the mask */
            if (dx || ad->config.use_dora) {
                if ((s = tb_gemm(ctx, 1, 0, R, in, r, 1.0f, dh, R, ad->A.value, in, 0.0f, xd,
                                 in)) != TB_OK)
                    goto done;
            }
            if (ad->config.use_dora && dx) {
                const float *norm = u + R * r + R * out, *m = ad->magnitude.value;
#pragma omp parallel for num_threads(tb_threads_for(ctx, (double)R * out)) schedule(static)
                for (size_t row = 0; row < R; row++)
                    for (size_t o = 0; o < out; o++)
                        e[row * out + o] = (m[o] / norm[o] - 1.0f) * d_run[row * out + o];
                if ((s = base_input_grad(ctx, base, R, e, xd, 1.0f)) != TB_OK)
                    goto done;
            }
            if (dx) {
                tb_tensor gt = tb_tensor_2d(xd, R, in);
                if ((s = tb_dropout_backward(ctx, &gt, dc, &gt)) != TB_OK)
                    goto done;
                float *dxd = dx->data;
                const float beta = dx_beta;
#pragma omp parallel for num_threads(tb_threads_for(ctx, (double)R * in)) schedule(static)
                for (size_t row = 0; row < R; row++)
                    for (size_t i = 0; i < in; i++)
                        dxd[row * in + i] = beta != 0.0f ? dxd[row * in + i] + xd[row * in + i]
                                                         : xd[row * in + i];
                dx_beta = 1.0f;
            }
        } else {
            if (dx) {
                if ((s = tb_gemm(ctx, 1, 0, R, in, r, 1.0f, dh, R, ad->A.value, in, dx_beta,
                                 dx->data, in)) != TB_OK)
                    goto done;
                dx_beta = 1.0f;
            }
            if (ad->config.use_dora) { /* the running result entered as g * result */
                const float *norm = u + R * r + R * out, *m = ad->magnitude.value;
#pragma omp parallel for num_threads(tb_threads_for(ctx, (double)R * out)) schedule(static)
                for (size_t row = 0; row < R; row++)
                    for (size_t o = 0; o < out; o++)
                        d_run_s[row * out + o] *= m[o] / norm[o];
            }
        }
    }
    if (dx)
        s = base_input_grad(ctx, base, R, d_run, dx->data, dx_beta);
done:
    if (s != TB_OK) {
        float *b = bk;
        if (dx)
            memcpy(dx->data, b, R * in * sizeof(float)), b += R * in;
        for (size_t i = 0; i < n; i++)
            b += backup_grads(&lora->adapter[idx[i]], b, 1);
    }
    if (mem)
        tb_free_with(&ctx->allocator, mem);
    return s;
}

/* ---- merge and unmerge ----------------------------------------------------------------- */

/* W += sign * s (B A) in W's layout (W given separately: a copy). */
static tb_status add_delta(tb_ctx *ctx, const tb_lora *lora, const tb_lora_adapter *ad,
                           float sign, float *W)
{
    const size_t in = lora->in_features, out = lora->out_features, r = ad->config.rank;
    const float a = sign * ad->scaling;
    if (lora->base->layout == TB_LINEAR_IN_OUT) /* W (in, out) += a A^T B^T */
        return tb_gemm(ctx, 1, 1, in, out, r, a, ad->A.value, in, ad->B.value, r, 1.0f, W, out);
    return tb_gemm(ctx, 0, 0, out, in, r, a, ad->B.value, r, ad->A.value, in, 1.0f, W, in);
}

/* W[o, :] *= f[o] (or /=) in W's layout. */
static void scale_rows(tb_ctx *ctx, const tb_lora *lora, float *W, const float *m,
                       const float *norm, int divide)
{
    const size_t in = lora->in_features, out = lora->out_features;
    const int in_out = lora->base->layout == TB_LINEAR_IN_OUT;
#pragma omp parallel for num_threads(tb_threads_for(ctx, (double)in * out)) schedule(static)
    for (size_t a = 0; a < (in_out ? in : out); a++)
        for (size_t b = 0; b < (in_out ? out : in); b++) {
            const size_t o = in_out ? b : a;
            const float g = m[o] / norm[o];
            float *w = &W[a * (in_out ? out : in) + b];
            *w = divide ? *w / g : *w * g;
        }
}

tb_status tb_lora_merge(tb_ctx *ctx, tb_lora *lora, const char *name, int safe)
{
    const char *fn = __func__;
    tb_status s = check_lora(ctx, fn, lora);
    if (s != TB_OK)
        return s;
    size_t idx[TB_LORA_MAX_ADAPTERS], n = 0;
    if (name) {
        const int at = tb_lora_find(lora, name);
        if (at < 0)
            return tb_fail(ctx, TB_ERR_NOT_FOUND, fn, "no adapter '%.40s'", name);
        idx[n++] = (size_t)at;
    } else {
        for (size_t i = 0; i < lora->n_active; i++)
            idx[n++] = lora->active[i];
    }
    if (!lora->base->storage)
        return tb_fail(ctx, TB_ERR_STATE, fn,
                       "the base weight is a view (tied to a parameter it does not own): "
                       "merging would change that parameter too");
    for (size_t i = 0; i < n; i++) {
        const tb_lora_adapter *ad = &lora->adapter[idx[i]];
        if (ad->merged)
            return tb_fail(ctx, TB_ERR_STATE, fn, "adapter '%s' is already merged", ad->name);
        if (ad->config.use_dora && (lora->n_merged > 0 || i > 0))
            return tb_fail(ctx, TB_ERR_STATE, fn,
                           "DoRA adapter '%s' merges only into a weight with nothing merged",
                           ad->name);
    }
    if (n == 0)
        return TB_OK;
    /* Into a copy, committed when every adapter merged (and, if safe, the
     * result is finite): on error W is untouched. */
    const size_t wn = lora->in_features * lora->out_features, out = lora->out_features;
    void *mem;
    if ((s = tb_alloc(ctx, fn, (wn + out) * sizeof(float), &mem)) != TB_OK)
        return s;
    float *W = mem, *norm = W + wn;
    memcpy(W, lora->base->weight.value, wn * sizeof(float));
    for (size_t i = 0; i < n && s == TB_OK; i++) {
        tb_lora_adapter *ad = &lora->adapter[idx[i]];
        if (ad->config.use_dora)
            dora_norms(ctx, lora->base, ad, norm);
        s = add_delta(ctx, lora, ad, 1.0f, W);
        if (s == TB_OK && ad->config.use_dora)
            scale_rows(ctx, lora, W, ad->magnitude.value, norm, 0);
    }
    if (s == TB_OK && safe && !tb_all_finite(W, wn))
        s = tb_fail(ctx, TB_ERR_NON_FINITE, fn,
                    "merging adapter%s '%s' gives NaN or infinite weights; nothing merged",
                    n > 1 ? "s starting with" : "", lora->adapter[idx[0]].name);
    if (s == TB_OK) {
        memcpy(lora->base->weight.value, W, wn * sizeof(float));
        for (size_t i = 0; i < n; i++) {
            tb_lora_adapter *ad = &lora->adapter[idx[i]];
            if (ad->config.use_dora)
                memcpy(ad->merged_norm, norm, out * sizeof(float));
            ad->merged = 1;
            lora->merged[lora->n_merged++] = idx[i];
        }
    }
    tb_free_with(&ctx->allocator, mem);
    return s;
}

tb_status tb_lora_unmerge(tb_ctx *ctx, tb_lora *lora)
{
    const char *fn = __func__;
    tb_status s = check_lora(ctx, fn, lora);
    if (s != TB_OK || lora->n_merged == 0)
        return s;
    const size_t wn = lora->in_features * lora->out_features;
    void *mem;
    if ((s = tb_alloc(ctx, fn, wn * sizeof(float), &mem)) != TB_OK)
        return s;
    float *W = mem;
    memcpy(W, lora->base->weight.value, wn * sizeof(float));
    for (size_t i = lora->n_merged; i-- > 0 && s == TB_OK;) {
        const tb_lora_adapter *ad = &lora->adapter[lora->merged[i]];
        if (ad->config.use_dora)
            scale_rows(ctx, lora, W, ad->magnitude.value, ad->merged_norm, 1);
        s = add_delta(ctx, lora, ad, -1.0f, W);
    }
    if (s == TB_OK) {
        memcpy(lora->base->weight.value, W, wn * sizeof(float));
        for (size_t i = 0; i < lora->n_merged; i++)
            lora->adapter[lora->merged[i]].merged = 0;
        lora->n_merged = 0;
    }
    tb_free_with(&ctx->allocator, mem);
    return s;
}

/* ---- combining adapters (PEFT's add_weighted_adapter) ----------------------------------- */

/* A source's scaling in double, as PEFT's Python float: alpha / r or alpha / sqrt(r). */
static double scaling_double(const tb_lora_config *c)
{
    const double r = (double)c->rank;
    return c->use_rslora ? (double)c->alpha / sqrt(r) : (double)c->alpha / r;
}

/* LINEAR: A = sum_i sign_i sqrt|w_i s_i| A_i, B = sum_i sqrt|w_i s_i| B_i
 * (sign_i the sign of w_i s_i, on A only), summed in double. */
static void combine_linear(const tb_lora_adapter *const *src, const double *ws, size_t n,
                           tb_lora_adapter *ad)
{
    const size_t na = ad->A.numel, nb = ad->B.numel;
    for (size_t e = 0; e < na; e++) {
        double acc = 0.0;
        for (size_t i = 0; i < n; i++)
            acc += (ws[i] >= 0.0 ? 1.0 : -1.0) * sqrt(fabs(ws[i])) * src[i]->A.value[e];
        ad->A.value[e] = (float)acc;
    }
    for (size_t e = 0; e < nb; e++) {
        double acc = 0.0;
        for (size_t i = 0; i < n; i++)
            acc += sqrt(fabs(ws[i])) * src[i]->B.value[e];
        ad->B.value[e] = (float)acc;
    }
}

/* CAT: A's rows are w_i s_i A_i stacked in source order, B's columns the
 * B_i side by side (rank sum r_i). */
static void combine_cat(const tb_lora *lora, const tb_lora_adapter *const *src,
                        const double *ws, size_t n, tb_lora_adapter *ad)
{
    const size_t in = lora->in_features, out = lora->out_features, k = ad->config.rank;
    size_t off = 0;
    for (size_t i = 0; i < n; i++) {
        const size_t r = src[i]->config.rank;
        const float *A = src[i]->A.value, *B = src[i]->B.value;
        for (size_t e = 0; e < r * in; e++)
            ad->A.value[off * in + e] = (float)(ws[i] * (double)A[e]);
        for (size_t o = 0; o < out; o++)
            memcpy(&ad->B.value[o * k + off], &B[o * r], r * sizeof(float));
        off += r;
    }
}

/* SVD: the best rank-k approximation of sum_i w_i s_i B_i A_i from the
 * thin factors [w_i s_i B_i] (out x R) and [A_i] (R x in), R = sum r_i:
 * B = U_k diag(sigma_k), A = V_k^T; ranks past R stay zero. */
static tb_status combine_svd(tb_ctx *ctx, const char *fn, const tb_lora *lora,
                             const tb_lora_adapter *const *src, const double *ws, size_t n,
                             size_t R, tb_lora_adapter *ad)
{
    const size_t in = lora->in_features, out = lora->out_features, k = ad->config.rank;
    size_t nx, ny, total, bytes;
    if (!tb_mul_size(out, R, &nx) || !tb_mul_size(in, R, &ny) || !tb_add_size(nx, ny, &total) ||
        !tb_add_size(total, R, &total) || !tb_mul_size(total, sizeof(double), &bytes))
        return tb_fail(ctx, TB_ERR_OVERFLOW, fn, "SVD of rank %zu on %zu x %zu overflows", R, out,
                       in);
    void *mem;
    tb_status s = tb_alloc(ctx, fn, bytes, &mem);
    if (s != TB_OK)
        return s;
    double *x = mem, *y = x + nx, *sigma = y + ny;
    size_t off = 0;
    for (size_t i = 0; i < n; i++) {
        const size_t r = src[i]->config.rank;
        const float *A = src[i]->A.value, *B = src[i]->B.value;
        for (size_t j = 0; j < r; j++) {
            double *xc = x + (off + j) * out, *yc = y + (off + j) * in;
            for (size_t o = 0; o < out; o++)
                xc[o] = ws[i] * (double)B[o * r + j];
            for (size_t c = 0; c < in; c++)
                yc[c] = (double)A[j * in + c];
        }
        off += r;
    }
    if ((s = tb_lowrank_svd(ctx, fn, out, in, R, x, y, sigma)) == TB_OK) {
        const size_t kk = k < R ? k : R;
        for (size_t j = 0; j < kk; j++) {
            for (size_t o = 0; o < out; o++)
                ad->B.value[o * k + j] = (float)(sigma[j] * x[j * out + o]);
            for (size_t c = 0; c < in; c++)
                ad->A.value[j * in + c] = (float)y[j * in + c];
        }
    }
    tb_free_with(&ctx->allocator, mem);
    return s;
}

tb_status tb_lora_combine(tb_ctx *ctx, tb_lora *lora, const char *new_name,
                          const char *const *names, const float *weights, size_t n,
                          tb_lora_combine_type type, size_t svd_rank)
{
    const char *fn = __func__;
    tb_status s = check_lora(ctx, fn, lora);
    if (s != TB_OK)
        return s;
    if (!new_name || !names || !weights)
        return tb_fail(ctx, TB_ERR_NULL_ARG, fn, "new_name, names and weights must not be NULL");
    if (n == 0)
        return tb_fail(ctx, TB_ERR_INVALID_ARG, fn, "no source adapters (n = 0)");
    if (type != TB_LORA_COMBINE_LINEAR && type != TB_LORA_COMBINE_CAT &&
        type != TB_LORA_COMBINE_SVD)
        return tb_fail(ctx, TB_ERR_INVALID_ARG, fn, "unknown combination type %d", (int)type);
    for (size_t i = 0; i < n; i++)
        if (!names[i])
            return tb_fail(ctx, TB_ERR_NULL_ARG, fn, "names[%zu] is NULL", i);
    if ((s = check_new_adapter(ctx, fn, lora, new_name)) != TB_OK)
        return s;
    /* Sources: known, plain LoRA, finite weights; w_i s_i in double. The
     * ranks are summed with an overflow check (names may repeat). */
    const tb_lora_adapter **src;
    double *ws;
    {
        void *mem;
        size_t bytes;
        if (!tb_mul_size(n, sizeof *src + sizeof *ws, &bytes))
            return tb_fail(ctx, TB_ERR_OVERFLOW, fn, "%zu source adapters overflow", n);
        if ((s = tb_alloc(ctx, fn, bytes, &mem)) != TB_OK)
            return s;
        ws = mem;
        src = (const tb_lora_adapter **)(ws + n);
    }
    size_t r_sum = 0, r_max = 0;
    for (size_t i = 0; i < n && s == TB_OK; i++) {
        const int at = tb_lora_find(lora, names[i]);
        if (at < 0) {
            s = tb_fail(ctx, TB_ERR_NOT_FOUND, fn, "no adapter '%.40s'", names[i]);
            break;
        }
        src[i] = &lora->adapter[at];
        const tb_lora_config *c = &src[i]->config;
        if (c->use_dora)
            s = tb_fail(ctx, TB_ERR_INVALID_ARG, fn,
                        "adapter '%s' is DoRA: combining takes only A and B, and the new "
                        "adapter's magnitude would not describe the sources",
                        src[i]->name);
        else if (!isfinite(weights[i]))
            s = tb_fail(ctx, TB_ERR_INVALID_ARG, fn, "weights[%zu] is not finite", i);
        else if (!tb_add_size(r_sum, c->rank, &r_sum))
            s = tb_fail(ctx, TB_ERR_OVERFLOW, fn, "the sum of the source ranks overflows");
        ws[i] = (double)weights[i] * scaling_double(c);
        r_max = c->rank > r_max ? c->rank : r_max;
    }
    const tb_lora_combine_type how = n == 1 ? TB_LORA_COMBINE_LINEAR : type;
    size_t rank = 0;
    if (s == TB_OK) {
        if (how == TB_LORA_COMBINE_LINEAR) {
            rank = src[0]->config.rank;
            for (size_t i = 1; i < n && s == TB_OK; i++)
                if (src[i]->config.rank != rank)
                    s = tb_fail(ctx, TB_ERR_INVALID_ARG, fn,
                                "LINEAR needs equal ranks: '%s' has %zu, '%s' has %zu",
                                src[0]->name, rank, src[i]->name, src[i]->config.rank);
        } else if (how == TB_LORA_COMBINE_CAT) {
            rank = r_sum;
        } else {
            rank = svd_rank ? svd_rank : r_max;
        }
    }
    tb_lora_adapter ad;
    memset(&ad, 0, sizeof ad);
    if (s == TB_OK) {
        /* PEFT: the first source's configuration with r = alpha = the new rank. */
        tb_lora_config c = src[0]->config;
        c.rank = rank;
        c.alpha = (float)rank;
        s = adapter_alloc(ctx, fn, lora, new_name, &c, &ad);
    }
    if (s == TB_OK) {
        if (how == TB_LORA_COMBINE_LINEAR)
            combine_linear(src, ws, n, &ad);
        else if (how == TB_LORA_COMBINE_CAT)
            combine_cat(lora, src, ws, n, &ad);
        else
            s = combine_svd(ctx, fn, lora, src, ws, n, r_sum, &ad);
        if (s == TB_OK && (!tb_all_finite(ad.A.value, ad.A.numel) ||
                           !tb_all_finite(ad.B.value, ad.B.numel)))
            s = tb_fail(ctx, TB_ERR_NON_FINITE, fn,
                        "combining into '%s' gives NaN or infinite values", new_name);
        if (s != TB_OK)
            adapter_free(&ad);
    }
    if (s == TB_OK)
        lora->adapter[lora->n_adapters++] = ad; /* inactive: there are other adapters */
    tb_free_with(&ctx->allocator, ws);
    return s;
}
