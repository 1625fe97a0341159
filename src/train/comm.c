/* The communicator interface, the one-process communicator and the
 * deterministic data-parallel gradient reduction (comm.h). */
#include <string.h>

#include "../core/internal.h"

/* ---- the one-process communicator ---------------------------------------- */

static tb_status single_allgatherv(void *user, tb_ctx *ctx, const void *send, size_t send_bytes,
                                   void *recv, const size_t *recv_bytes)
{
    (void)user, (void)ctx, (void)recv_bytes;
    if (send_bytes)
        memcpy(recv, send, send_bytes);
    return TB_OK;
}

static tb_status single_broadcast(void *user, tb_ctx *ctx, void *buf, size_t bytes, size_t root)
{
    (void)user, (void)ctx, (void)buf, (void)bytes, (void)root;
    return TB_OK;
}

static tb_status single_barrier(void *user, tb_ctx *ctx)
{
    (void)user, (void)ctx;
    return TB_OK;
}

void tb_comm_single(tb_comm *comm)
{
    if (!comm)
        return;
    memset(comm, 0, sizeof *comm);
    comm->rank = 0;
    comm->size = 1;
    comm->allgatherv = single_allgatherv;
    comm->broadcast = single_broadcast;
    comm->barrier = single_barrier;
}

/* ---- checked collectives ----------------------------------------------------- */

tb_status tb_comm_check(tb_ctx *ctx, const tb_comm *comm)
{
    if (!comm)
        return tb_fail(ctx, TB_ERR_NULL_ARG, __func__, "comm must not be NULL");
    if (!comm->allgatherv || !comm->broadcast || !comm->barrier)
        return tb_fail(ctx, TB_ERR_INVALID_ARG, __func__,
                       "comm has a NULL collective (allgatherv, broadcast or barrier)");
    if (comm->size == 0 || comm->rank >= comm->size)
        return tb_fail(ctx, TB_ERR_INVALID_ARG, __func__, "comm rank %zu of size %zu",
                       comm->rank, comm->size);
    return TB_OK;
}

tb_status tb_comm_allgatherv(tb_ctx *ctx, const tb_comm *comm, const void *send,
                             size_t send_bytes, void *recv, const size_t *recv_bytes)
{
    tb_status s = tb_comm_check(ctx, comm);
    if (s != TB_OK)
        return s;
    if (!recv_bytes || (send_bytes && !send))
        return tb_fail(ctx, TB_ERR_NULL_ARG, __func__, "send (with bytes) and recv_bytes "
                                                      "must not be NULL");
    if (send_bytes != recv_bytes[comm->rank])
        return tb_fail(ctx, TB_ERR_INVALID_ARG, __func__,
                       "send_bytes %zu but recv_bytes[%zu] = %zu", send_bytes, comm->rank,
                       recv_bytes[comm->rank]);
    size_t total = 0;
    for (size_t i = 0; i < comm->size; i++) {
        if (!tb_add_size(total, recv_bytes[i], &total))
            return tb_fail(ctx, TB_ERR_OVERFLOW, __func__, "the blocks' total overflows size_t");
    }
    if (total && !recv)
        return tb_fail(ctx, TB_ERR_NULL_ARG, __func__, "recv must not be NULL");
    if (send_bytes) {
        const tb_span out = tb_span_bytes("recv", recv, total);
        const tb_span in = tb_span_bytes("send", send, send_bytes);
        if ((s = tb_check_alias(ctx, __func__, &out, 1, &in, 1)) != TB_OK)
            return s;
    }
    return comm->allgatherv(comm->user, ctx, send, send_bytes, recv, recv_bytes);
}

tb_status tb_comm_broadcast(tb_ctx *ctx, const tb_comm *comm, void *buf, size_t bytes,
                            size_t root)
{
    tb_status s = tb_comm_check(ctx, comm);
    if (s != TB_OK)
        return s;
    if (bytes && !buf)
        return tb_fail(ctx, TB_ERR_NULL_ARG, __func__, "buf must not be NULL");
    if (root >= comm->size)
        return tb_fail(ctx, TB_ERR_INVALID_ARG, __func__, "root %zu of size %zu", root,
                       comm->size);
    return comm->broadcast(comm->user, ctx, buf, bytes, root);
}

tb_status tb_comm_barrier(tb_ctx *ctx, const tb_comm *comm)
{
    tb_status s = tb_comm_check(ctx, comm);
    return s != TB_OK ? s : comm->barrier(comm->user, ctx);
}

/* ---- the counting communicator ------------------------------------------------- */

static tb_status counting_allgatherv(void *user, tb_ctx *ctx, const void *send,
                                     size_t send_bytes, void *recv, const size_t *recv_bytes)
{
    tb_comm_counter *c = user;
    const tb_status s =
        c->inner.allgatherv(c->inner.user, ctx, send, send_bytes, recv, recv_bytes);
    if (s == TB_OK) {
        uint64_t others = 0;
        for (size_t i = 0; i < c->inner.size; i++)
            if (i != c->inner.rank)
                others += recv_bytes[i];
        c->counts.calls++;
        c->counts.sent_bytes += (uint64_t)send_bytes * (c->inner.size - 1);
        c->counts.recv_bytes += others;
    }
    return s;
}

static tb_status counting_broadcast(void *user, tb_ctx *ctx, void *buf, size_t bytes, size_t root)
{
    tb_comm_counter *c = user;
    const tb_status s = c->inner.broadcast(c->inner.user, ctx, buf, bytes, root);
    if (s == TB_OK) {
        c->counts.calls++;
        if (root == c->inner.rank)
            c->counts.sent_bytes += (uint64_t)bytes * (c->inner.size - 1);
        else
            c->counts.recv_bytes += bytes;
    }
    return s;
}

static tb_status counting_barrier(void *user, tb_ctx *ctx)
{
    tb_comm_counter *c = user;
    const tb_status s = c->inner.barrier(c->inner.user, ctx);
    if (s == TB_OK)
        c->counts.calls++;
    return s;
}

tb_status tb_comm_counting_init(tb_ctx *ctx, tb_comm *out, tb_comm_counter *counter,
                                const tb_comm *inner)
{
    if (!out || !counter)
        return tb_fail(ctx, TB_ERR_NULL_ARG, __func__, "out and counter must not be NULL");
    const tb_status s = tb_comm_check(ctx, inner);
    if (s != TB_OK)
        return s;
    if (out == inner || (const void *)counter == (const void *)inner)
        return tb_fail(ctx, TB_ERR_INVALID_ARG, __func__,
                       "out and counter must not be the communicator they wrap");
    memset(counter, 0, sizeof *counter);
    counter->inner = *inner;
    memset(out, 0, sizeof *out);
    out->rank = inner->rank;
    out->size = inner->size;
    out->user = counter;
    out->allgatherv = counting_allgatherv;
    out->broadcast = counting_broadcast;
    out->barrier = counting_barrier;
    return TB_OK;
}

/* ---- micro-batches and their random streams ------------------------------------ */

tb_status tb_dp_split(size_t n_micro, size_t size, size_t rank, size_t *first, size_t *count)
{
    if (!first || !count)
        return TB_ERR_NULL_ARG;
    if (n_micro == 0 || size == 0 || rank >= size)
        return TB_ERR_INVALID_ARG;
    size_t a, b;
    if (!tb_mul_size(rank, n_micro, &a) || !tb_mul_size(rank + 1, n_micro, &b))
        return TB_ERR_OVERFLOW;
    *first = a / size;
    *count = b / size - a / size;
    return TB_OK;
}

/* splitmix64's finaliser: a bijective mix of 64 bits. */
static uint64_t mix64(uint64_t z)
{
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

void tb_dp_rng(tb_rng *out, const tb_rng *base, uint64_t step, uint64_t micro)
{
    if (!out)
        return;
    uint64_t h = mix64(base ? base->key : 0);
    h = mix64(h ^ (base ? base->counter : 0));
    h = mix64(h ^ step);
    h = mix64(h ^ (micro + 0x9e3779b97f4a7c15ULL));
    tb_rng_init(out, h);
}

/* ---- the reduction -------------------------------------------------------------- */

/* Trainable parameters with gradients, and their floats. */
static size_t grad_params(const tb_param_list *list, size_t *numel)
{
    size_t n = 0, e = 0;
    for (size_t i = 0; i < list->count; i++) {
        const tb_param *p = list->items[i].param;
        if (tb_param_wants_grad(p)) {
            n++;
            e += p->numel;
        }
    }
    *numel = e;
    return n;
}

/* The list is valid and still has the n_params trainable parameters of
 * numel floats that `what` (the reducer, the optimizer) was made for. */
static tb_status list_as_made(tb_ctx *ctx, const char *fn, const char *what,
                              const tb_param_list *list, size_t n_params, size_t numel)
{
    tb_status s = tb_check_param_list(ctx, fn, list);
    if (s != TB_OK)
        return s;
    size_t got;
    const size_t n = grad_params(list, &got);
    if (n != n_params || got != numel)
        return tb_fail(ctx, TB_ERR_STATE, fn,
                       "the list has %zu trainable parameters (%zu floats); the %s was "
                       "made for %zu (%zu)",
                       n, got, what, n_params, numel);
    return TB_OK;
}

/* The list still has the trainable parameters r was made for. */
static tb_status same_list(tb_ctx *ctx, const char *fn, const tb_dp_reducer *r,
                           const tb_param_list *list)
{
    return list_as_made(ctx, fn, "reducer", list, r->n_params, r->numel);
}

tb_status tb_dp_reducer_init(tb_ctx *ctx, tb_dp_reducer *r, const tb_comm *comm,
                             const tb_param_list *list, size_t n_micro)
{
    if (!ctx || !r || !list)
        return tb_fail(ctx, TB_ERR_NULL_ARG, __func__, "ctx, r and list must not be NULL");
    memset(r, 0, sizeof *r);
    tb_status s = tb_comm_check(ctx, comm);
    if (s != TB_OK)
        return s;
    if ((s = tb_check_param_list(ctx, __func__, list)) != TB_OK)
        return s;
    if (n_micro == 0)
        return tb_fail(ctx, TB_ERR_INVALID_ARG, __func__, "n_micro must be >= 1");
    size_t first, count, numel;
    if ((s = tb_dp_split(n_micro, comm->size, comm->rank, &first, &count)) != TB_OK)
        return tb_fail(ctx, s, __func__, "%zu micro-batches over %zu ranks", n_micro,
                       comm->size);
    const size_t n_params = grad_params(list, &numel);
    size_t stride, local_b, all_b, sizes_b;
    if (!tb_add_size(numel, 2, &stride) || !tb_mul_size(stride, sizeof(float), &stride) ||
        !tb_mul_size(stride, count, &local_b) || !tb_mul_size(stride, n_micro, &all_b) ||
        !tb_mul_size(comm->size, sizeof(size_t), &sizes_b))
        return tb_fail(ctx, TB_ERR_OVERFLOW, __func__, "%zu micro-batches of %zu floats",
                       n_micro, numel);
    tb_dp_reducer t;
    memset(&t, 0, sizeof t);
    t.comm = comm, t.n_micro = n_micro, t.first = first, t.count = count;
    t.numel = numel, t.n_params = n_params, t.allocator = ctx->allocator;
    void *a = NULL, *b = NULL, *c = NULL;
    if ((local_b && (s = tb_alloc(ctx, __func__, local_b, &a)) != TB_OK) ||
        (s = tb_alloc(ctx, __func__, all_b, &b)) != TB_OK ||
        (s = tb_alloc(ctx, __func__, sizes_b, &c)) != TB_OK) {
        tb_free_with(&t.allocator, a);
        tb_free_with(&t.allocator, b);
        return s;
    }
    t.local = a, t.all = b, t.recv_bytes = c;
    for (size_t i = 0; i < comm->size; i++) {
        size_t f, n;
        tb_dp_split(n_micro, comm->size, i, &f, &n);
        t.recv_bytes[i] = n * stride;
    }
    /* Every slot starts "not stored". */
    for (size_t k = 0; k < count; k++)
        t.local[k * (numel + 2) + numel + 1] = 0.0f;
    *r = t;
    return TB_OK;
}

void tb_dp_reducer_free(tb_dp_reducer *r)
{
    if (!r)
        return;
    tb_free_with(&r->allocator, r->local);
    tb_free_with(&r->allocator, r->all);
    tb_free_with(&r->allocator, r->recv_bytes);
    memset(r, 0, sizeof *r);
}

tb_status tb_dp_reducer_store(tb_ctx *ctx, tb_dp_reducer *r, const tb_param_list *list,
                              size_t micro, float loss)
{
    if (!r || !list || !r->all)
        return tb_fail(ctx, TB_ERR_NULL_ARG, __func__, "r (initialised) and list must not be "
                                                      "NULL");
    if (micro < r->first || micro - r->first >= r->count)
        return tb_fail(ctx, TB_ERR_INVALID_ARG, __func__,
                       "micro-batch %zu is not this rank's (it has %zu..%zu of %zu)", micro,
                       r->first, r->first + r->count - 1, r->n_micro);
    tb_status s = same_list(ctx, __func__, r, list);
    if (s != TB_OK)
        return s;
    float *slot = r->local + (micro - r->first) * (r->numel + 2);
    size_t off = 0;
    for (size_t i = 0; i < list->count; i++) {
        const tb_param *p = list->items[i].param;
        if (!tb_param_wants_grad(p))
            continue;
        memcpy(slot + off, p->grad, p->numel * sizeof(float));
        off += p->numel;
    }
    slot[r->numel] = loss;
    slot[r->numel + 1] = 1.0f;
    return TB_OK;
}

tb_status tb_dp_reducer_reduce(tb_ctx *ctx, tb_dp_reducer *r, tb_param_list *list,
                               float *losses)
{
    if (!r || !list || !r->all)
        return tb_fail(ctx, TB_ERR_NULL_ARG, __func__, "r (initialised) and list must not be "
                                                      "NULL");
    /* A changed list on one rank is refused there before the collective;
     * the other ranks then fail in the communicator (or, in-process, wait
     * for a rank that will not come: a caller bug, not a data error). */
    tb_status s = same_list(ctx, __func__, r, list);
    if (s != TB_OK)
        return s;
    const size_t stride = r->numel + 2;
    s = tb_comm_allgatherv(ctx, r->comm, r->count ? r->local : NULL,
                           r->count * stride * sizeof(float), r->all, r->recv_bytes);
    if (s != TB_OK)
        return s;
    for (size_t k = 0; k < r->count; k++)
        r->local[k * stride + r->numel + 1] = 0.0f; /* free for the next step */
    for (size_t k = 0; k < r->n_micro; k++)
        if (r->all[k * stride + r->numel + 1] != 1.0f)
            return tb_fail(ctx, TB_ERR_STATE, __func__,
                           "micro-batch %zu of %zu was not stored (tb_dp_reducer_store) "
                           "before the reduction", k, r->n_micro);
    /* g = g_0 + g_1 + ... in index order, element by element: the order
     * of each element's additions is fixed, so threads split elements. */
    const float *all = r->all;
    const size_t K = r->n_micro;
    size_t off = 0;
    for (size_t i = 0; i < list->count; i++) {
        tb_param *p = list->items[i].param;
        if (!tb_param_wants_grad(p))
            continue;
        float *g = p->grad;
        const size_t n = p->numel, base = off;
#pragma omp parallel for num_threads(tb_threads_for(ctx, (double)n * (double)K)) schedule(static)
        for (size_t j = 0; j < n; j++) {
            float acc = all[base + j];
            for (size_t k = 1; k < K; k++)
                acc += all[k * stride + base + j];
            g[j] = acc;
        }
        off += n;
    }
    if (losses)
        for (size_t k = 0; k < K; k++)
            losses[k] = all[k * stride + r->numel];
    return TB_OK;
}

/* ---- ZeRO-1 ------------------------------------------------------------------------- */

/* The slots of opt have offsets 0, n_0, n_0 + n_1, ...: its moments are the
 * flat vector of its parameters in slot order. */
static int flat_state(const tb_adam *opt)
{
    size_t off = 0;
    for (size_t i = 0; i < opt->n_slots; i++) {
        if (opt->slots[i].offset != off)
            return 0;
        off += opt->slots[i].param->numel;
    }
    return off == opt->n_state;
}

void tb_zero_free(tb_zero *z)
{
    if (!z)
        return;
    tb_adam_free(&z->opt);
    tb_param_list_free(&z->list);
    tb_free_with(&z->allocator, z->views);
    tb_free_with(&z->allocator, z->view_of);
    tb_free_with(&z->allocator, z->view_at);
    tb_free_with(&z->allocator, z->flat);
    tb_free_with(&z->allocator, z->save);
    tb_free_with(&z->allocator, z->recv_bytes);
    memset(z, 0, sizeof *z);
}

/* The shard of rank r of P over N floats. */
static void shard_of(size_t N, size_t P, size_t r, size_t *lo, size_t *hi)
{
    /* r * N may overflow for huge N: split as (r * (N / P)) + r * (N % P) / P. */
    const size_t q = N / P, m = N % P;
    *lo = r * q + (r * m) / P;
    *hi = (r + 1) * q + ((r + 1) * m) / P;
}

tb_status tb_zero_init(tb_ctx *ctx, tb_zero *z, const tb_comm *comm, const tb_param_list *list,
                       const tb_adam_config *cfg)
{
    if (!ctx || !z || !list || !cfg)
        return tb_fail(ctx, TB_ERR_NULL_ARG, __func__, "ctx, z, list and cfg must not be NULL");
    memset(z, 0, sizeof *z);
    tb_status s = tb_comm_check(ctx, comm);
    if (s != TB_OK || (s = tb_check_param_list(ctx, __func__, list)) != TB_OK)
        return s;
    for (size_t i = 0; i < list->count; i++) {
        const tb_param *p = list->items[i].param;
        if (p->trainable && !p->grad)
            return tb_fail(ctx, TB_ERR_INVALID_ARG, __func__,
                           "trainable parameter '%s' has no gradient buffer", list->items[i].name);
    }
    tb_zero t;
    memset(&t, 0, sizeof t);
    t.comm = comm;
    t.allocator = ctx->allocator;
    t.n_params = grad_params(list, &t.numel);
    shard_of(t.numel, comm->size, comm->rank, &t.lo, &t.hi);
    /* The pieces: every parameter that meets [lo, hi). */
    size_t nv = 0, off = 0;
    for (size_t i = 0; i < list->count; i++) {
        const tb_param *p = list->items[i].param;
        if (!tb_param_wants_grad(p))
            continue;
        if (t.lo < t.hi && off < t.hi && off + p->numel > t.lo)
            nv++;
        off += p->numel;
    }
    size_t flat_b, save_b, sizes_b;
    const size_t shard = t.hi - t.lo;
    if (!tb_mul_size(t.numel, sizeof(float), &flat_b) ||
        !tb_mul_size(shard, 4 * sizeof(float), &save_b) ||
        !tb_mul_size(comm->size, sizeof(size_t), &sizes_b))
        return tb_fail(ctx, TB_ERR_OVERFLOW, __func__, "%zu parameters", t.numel);
    void *a = NULL, *b = NULL, *c = NULL, *d = NULL, *e = NULL, *f = NULL;
    if ((s = tb_alloc(ctx, __func__, nv * sizeof(tb_param), &a)) != TB_OK ||
        (s = tb_alloc(ctx, __func__, nv * sizeof(size_t), &b)) != TB_OK ||
        (s = tb_alloc(ctx, __func__, nv * sizeof(size_t), &c)) != TB_OK ||
        (s = tb_alloc(ctx, __func__, flat_b, &d)) != TB_OK ||
        (s = tb_alloc(ctx, __func__, save_b, &e)) != TB_OK ||
        (s = tb_alloc(ctx, __func__, sizes_b, &f)) != TB_OK) {
        void *all[6] = {a, b, c, d, e, f};
        for (int i = 0; i < 6; i++)
            tb_free_with(&t.allocator, all[i]);
        return s;
    }
    t.views = a, t.view_of = b, t.view_at = c, t.flat = d, t.save = e, t.recv_bytes = f;
    memset(t.views, 0, nv * sizeof(tb_param));
    for (size_t r = 0; r < comm->size; r++) {
        size_t l, h;
        shard_of(t.numel, comm->size, r, &l, &h);
        t.recv_bytes[r] = (h - l) * sizeof(float);
    }
    s = tb_param_list_init(ctx, &t.list);
    off = 0;
    for (size_t i = 0; s == TB_OK && i < list->count; i++) {
        tb_param *p = list->items[i].param;
        if (!tb_param_wants_grad(p))
            continue;
        if (t.lo < t.hi && off < t.hi && off + p->numel > t.lo) {
            const size_t from = t.lo > off ? t.lo - off : 0;
            const size_t to = t.hi < off + p->numel ? t.hi - off : p->numel;
            const size_t n = to - from;
            tb_param *v = &t.views[t.n_views];
            s = tb_param_view(ctx, v, p->value + from, p->grad + from, 1, &n);
            if (s == TB_OK)
                s = tb_param_list_add(ctx, &t.list, "", list->items[i].name, v);
            t.view_of[t.n_views] = i;
            t.view_at[t.n_views] = from;
            t.n_views++;
        }
        off += p->numel;
    }
    /* A rank with an empty shard (N < P) has no optimizer slots; tb_adam
     * accepts an empty list. */
    if (s == TB_OK)
        s = tb_adam_init(ctx, &t.opt, &t.list, cfg);
    if (s == TB_OK && !flat_state(&t.opt))
        s = tb_fail(ctx, TB_ERR_STATE, __func__, "the optimizer's state is not laid out in "
                                                 "list order");
    if (s != TB_OK) {
        tb_zero_free(&t);
        return s;
    }
    *z = t;
    return TB_OK;
}

static int select_none(const char *name, const tb_param *param, void *user)
{
    (void)name, (void)param, (void)user;
    return 0;
}

/* The list still has the trainable parameters z was made for. */
static tb_status zero_same_list(tb_ctx *ctx, const char *fn, const tb_zero *z,
                                const tb_param_list *list)
{
    tb_status s = list_as_made(ctx, fn, "optimizer", list, z->n_params, z->numel);
    if (s != TB_OK)
        return s;
    for (size_t i = 0; i < z->n_views; i++) {
        const tb_param *p = z->view_of[i] < list->count ? list->items[z->view_of[i]].param : NULL;
        if (!p || z->views[i].value != p->value + z->view_at[i])
            return tb_fail(ctx, TB_ERR_STATE, fn, "the list's parameters moved since tb_zero_init");
    }
    return TB_OK;
}

tb_status tb_zero_add_group(tb_ctx *ctx, tb_zero *z, const tb_param_list *list, float lr,
                            float weight_decay, tb_param_select_fn select, void *user,
                            size_t *n_selected)
{
    if (!z || !list || !select)
        return tb_fail(ctx, TB_ERR_NULL_ARG, __func__, "z, list and select must not be NULL");
    tb_status s = zero_same_list(ctx, __func__, z, list);
    if (s != TB_OK)
        return s;
    /* A new group that selects nothing, then the pieces of the selected
     * parameters moved into it. */
    if ((s = tb_adam_add_group(ctx, &z->opt, lr, weight_decay, select_none, NULL, NULL)) !=
        TB_OK)
        return s;
    const size_t g = z->opt.n_groups - 1;
    size_t n = 0;
    for (size_t i = 0; i < list->count; i++) {
        const tb_param *p = list->items[i].param;
        if (!tb_param_wants_grad(p) || !select(list->items[i].name, p, user))
            continue;
        n++;
        for (size_t v = 0; v < z->opt.n_slots; v++)
            if (z->view_of[v] == i)
                z->opt.slots[v].group = g;
    }
    if (n_selected)
        *n_selected = n;
    return TB_OK;
}

/* The shard's values and moments, in flat order, to or from z->save. */
static void shard_copy(tb_zero *z, int restore)
{
    const size_t n = z->hi - z->lo;
    float *sv = z->save, *sm = sv + n, *svv = sm + n, *sx = svv + n;
    size_t off = 0;
    for (size_t i = 0; i < z->n_views; i++) {
        tb_param *p = &z->views[i];
        float *parts[2] = {p->value, sv + off};
        if (restore)
            memcpy(parts[0], parts[1], p->numel * sizeof(float));
        else
            memcpy(parts[1], parts[0], p->numel * sizeof(float));
        off += p->numel;
    }
    if (n == 0)
        return;
    float *state[3] = {z->opt.m, z->opt.v, z->opt.vmax};
    float *copy[3] = {sm, svv, sx};
    for (int k = 0; k < 3; k++) {
        if (!state[k])
            continue;
        if (restore)
            memcpy(state[k], copy[k], n * sizeof(float));
        else
            memcpy(copy[k], state[k], n * sizeof(float));
    }
}

tb_status tb_zero_step(tb_ctx *ctx, tb_zero *z, tb_param_list *list, float lr_factor)
{
    if (!z || !list || !z->comm)
        return tb_fail(ctx, TB_ERR_NULL_ARG, __func__, "z (initialised) and list must not be "
                                                      "NULL");
    tb_status s = zero_same_list(ctx, __func__, z, list);
    if (s != TB_OK)
        return s;
    /* Step the shard, then agree: any rank's refusal is every rank's. */
    shard_copy(z, 0);
    const tb_status mine = tb_adam_step(ctx, &z->opt, lr_factor);
    const size_t P = z->comm->size;
    int32_t st[64], *all = st;
    void *heap = NULL;
    if (P > 64) {
        if ((s = tb_alloc(ctx, __func__, P * sizeof(int32_t), &heap)) != TB_OK)
            return s; /* the peers then fail in the communicator */
        all = heap;
    }
    size_t four[64], *sizes = four;
    void *heap2 = NULL;
    if (P > 64) {
        if ((s = tb_alloc(ctx, __func__, P * sizeof(size_t), &heap2)) != TB_OK) {
            tb_free_with(&z->allocator, heap);
            return s;
        }
        sizes = heap2;
    }
    for (size_t r = 0; r < P; r++)
        sizes[r] = sizeof(int32_t);
    const int32_t me = (int32_t)mine;
    s = tb_comm_allgatherv(ctx, z->comm, &me, sizeof me, all, sizes);
    size_t bad = P;
    for (size_t r = 0; s == TB_OK && r < P && bad == P; r++)
        if (all[r] != TB_OK)
            bad = r;
    const tb_status first_bad = bad < P ? (tb_status)all[bad] : TB_OK;
    tb_free_with(&z->allocator, heap);
    tb_free_with(&z->allocator, heap2);
    if (s != TB_OK)
        return s;
    if (bad < P) {
        if (mine == TB_OK) {
            shard_copy(z, 1);
            z->opt.step--;
            z->opt.skipped++;
            return tb_fail(ctx, first_bad, __func__,
                           "rank %zu refused its shard's step (%s): no rank changed anything",
                           bad, tb_strerror(first_bad));
        }
        return mine; /* tb_adam_step's own message, nothing changed */
    }
    /* All-gather the parameters: this rank's shard is contiguous in the
     * flat vector; pack it into save (free now), gather, unpack. */
    size_t off = 0;
    for (size_t i = 0; i < z->n_views; i++) {
        memcpy(z->save + off, z->views[i].value, z->views[i].numel * sizeof(float));
        off += z->views[i].numel;
    }
    const size_t n = z->hi - z->lo;
    if ((s = tb_comm_allgatherv(ctx, z->comm, n ? z->save : NULL, n * sizeof(float), z->flat,
                                z->recv_bytes)) != TB_OK)
        return s;
    off = 0;
    for (size_t i = 0; i < list->count; i++) {
        tb_param *p = list->items[i].param;
        if (!tb_param_wants_grad(p))
            continue;
        memcpy(p->value, z->flat + off, p->numel * sizeof(float));
        off += p->numel;
    }
    return TB_OK;
}

size_t tb_zero_state_bytes(const tb_zero *z)
{
    if (!z)
        return 0;
    return tb_adam_state_bytes(&z->opt) + z->numel * sizeof(float) +
           4 * (z->hi - z->lo) * sizeof(float);
}

/* full is an unsharded optimizer over z's parameters. */
static tb_status check_full(tb_ctx *ctx, const char *fn, const tb_zero *z, const tb_adam *full)
{
    if (full->n_state != z->numel || full->n_slots != z->n_params || !flat_state(full))
        return tb_fail(ctx, TB_ERR_INVALID_ARG, fn,
                       "full has %zu slots (%zu floats); the sharded optimizer covers %zu (%zu)",
                       full->n_slots, full->n_state, z->n_params, z->numel);
    if ((full->vmax != NULL) != (z->opt.vmax != NULL) && z->hi > z->lo)
        return tb_fail(ctx, TB_ERR_INVALID_ARG, fn, "AMSGrad differs");
    return TB_OK;
}

tb_status tb_zero_gather_state(tb_ctx *ctx, tb_zero *z, tb_adam *full)
{
    if (!z || !full || !z->comm)
        return tb_fail(ctx, TB_ERR_NULL_ARG, __func__, "z and full must not be NULL");
    tb_status s = check_full(ctx, __func__, z, full);
    if (s != TB_OK)
        return s;
    const size_t n = z->hi - z->lo;
    float *state[3] = {z->opt.m, z->opt.v, z->opt.vmax};
    float *into[3] = {full->m, full->v, full->vmax};
    for (int k = 0; k < 3 && s == TB_OK; k++) {
        if (!into[k])
            continue;
        s = tb_comm_allgatherv(ctx, z->comm, n ? state[k] : NULL, n * sizeof(float), into[k],
                               z->recv_bytes);
    }
    if (s == TB_OK) {
        full->step = z->opt.step;
        full->skipped = z->opt.skipped;
    }
    return s;
}

tb_status tb_zero_scatter_state(tb_ctx *ctx, tb_zero *z, const tb_adam *full)
{
    if (!z || !full)
        return tb_fail(ctx, TB_ERR_NULL_ARG, __func__, "z and full must not be NULL");
    tb_status s = check_full(ctx, __func__, z, full);
    if (s != TB_OK)
        return s;
    const size_t n = z->hi - z->lo;
    const float *from[3] = {full->m, full->v, full->vmax};
    float *state[3] = {z->opt.m, z->opt.v, z->opt.vmax};
    for (int k = 0; k < 3 && n; k++)
        if (state[k] && from[k])
            memcpy(state[k], from[k] + z->lo, n * sizeof(float));
    z->opt.step = full->step;
    z->opt.skipped = full->skipped;
    return TB_OK;
}
