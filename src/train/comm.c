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

/* The list still has the trainable parameters r was made for. */
static tb_status same_list(tb_ctx *ctx, const char *fn, const tb_dp_reducer *r,
                           const tb_param_list *list)
{
    tb_status s = tb_check_param_list(ctx, fn, list);
    if (s != TB_OK)
        return s;
    size_t numel;
    const size_t n = grad_params(list, &numel);
    if (n != r->n_params || numel != r->numel)
        return tb_fail(ctx, TB_ERR_STATE, fn,
                       "the list has %zu trainable parameters (%zu floats); the reducer was "
                       "made for %zu (%zu)",
                       n, numel, r->n_params, r->numel);
    return TB_OK;
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
