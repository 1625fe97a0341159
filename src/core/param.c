/* Named parameter lists. */
#include <string.h>

#include "internal.h"

/* The shape checks of tb_param_init and tb_param_view: 1..TB_MAX_DIMS sizes,
 * each >= 1, numel * sizeof(float) in size_t. Fills the shape fields. */
static tb_status set_shape(tb_ctx *ctx, const char *fn, tb_param *p, size_t ndim,
                           const size_t *shape)
{
    if (ndim == 0 || ndim > TB_MAX_DIMS)
        return tb_fail(ctx, TB_ERR_SHAPE, fn, "ndim is %zu; a parameter has 1 to %d dimensions",
                       ndim, TB_MAX_DIMS);
    size_t numel = 1, bytes;
    for (size_t i = 0; i < ndim; i++) {
        if (shape[i] == 0)
            return tb_fail(ctx, TB_ERR_SHAPE, fn, "shape[%zu] is 0; every size must be >= 1", i);
        if (!tb_mul_size(numel, shape[i], &numel))
            return tb_fail(ctx, TB_ERR_OVERFLOW, fn, "the element count overflows at shape[%zu]",
                           i);
    }
    if (!tb_mul_size(numel, sizeof(float), &bytes))
        return tb_fail(ctx, TB_ERR_OVERFLOW, fn, "%zu elements do not fit in size_t bytes", numel);
    p->ndim = ndim;
    for (size_t i = 0; i < TB_MAX_DIMS; i++)
        p->shape[i] = i < ndim ? shape[i] : 0;
    p->numel = numel;
    return TB_OK;
}

tb_status tb_param_init(tb_ctx *ctx, tb_param *param, size_t ndim, const size_t *shape,
                        unsigned flags)
{
    const char *fn = __func__;
    if (param)
        memset(param, 0, sizeof *param);
    if (!ctx || !param || !shape)
        return tb_fail(ctx, TB_ERR_NULL_ARG, fn, "ctx, param and shape must not be NULL");
    if (flags & ~TB_PARAM_NO_GRAD)
        return tb_fail(ctx, TB_ERR_INVALID_ARG, fn, "unknown flags 0x%x",
                       flags & ~TB_PARAM_NO_GRAD);
    tb_param p;
    memset(&p, 0, sizeof p);
    tb_status s = set_shape(ctx, fn, &p, ndim, shape);
    if (s != TB_OK)
        return s;
    /* Values, then the gradient from the next 64-byte boundary. */
    const int with_grad = !(flags & TB_PARAM_NO_GRAD);
    size_t vbytes = p.numel * sizeof(float), gofs = vbytes, total = vbytes;
    if (with_grad && (!tb_add_size(vbytes, 63, &gofs) ||
                      !tb_add_size(gofs / 64 * 64, vbytes, &total)))
        return tb_fail(ctx, TB_ERR_OVERFLOW, fn, "%zu values and their gradients overflow",
                       p.numel);
    gofs = gofs / 64 * 64;
    void *mem;
    if ((s = tb_alloc(ctx, fn, total, &mem)) != TB_OK)
        return s;
    memset(mem, 0, total);
    p.value = mem;
    p.grad = with_grad ? (float *)(void *)((unsigned char *)mem + gofs) : NULL;
    p.trainable = with_grad;
    p.storage = mem;
    p.allocator = ctx->allocator;
    *param = p;
    return TB_OK;
}

tb_status tb_param_view(tb_ctx *ctx, tb_param *param, float *value, float *grad, size_t ndim,
                        const size_t *shape)
{
    const char *fn = __func__;
    if (param)
        memset(param, 0, sizeof *param);
    if (!param || !value || !shape)
        return tb_fail(ctx, TB_ERR_NULL_ARG, fn, "param, value and shape must not be NULL");
    tb_param p;
    memset(&p, 0, sizeof p);
    tb_status s = set_shape(ctx, fn, &p, ndim, shape);
    if (s != TB_OK)
        return s;
    p.value = value;
    p.grad = grad;
    p.trainable = grad != NULL;
    *param = p;
    return TB_OK;
}

void tb_param_free(tb_param *param)
{
    if (!param)
        return;
    tb_free_with(&param->allocator, param->storage);
    memset(param, 0, sizeof *param);
}

tb_status tb_check_param_list(tb_ctx *ctx, const char *fn, const tb_param_list *list)
{
    for (size_t i = 0; i < list->count; i++) {
        const tb_param *p = list->items[i].param;
        if (!p || !p->value)
            return tb_fail(ctx, TB_ERR_STATE, fn,
                           "parameter '%s' has no values: its block was freed (or never "
                           "initialised) while the list still refers to it",
                           list->items[i].name);
    }
    return TB_OK;
}

tb_status tb_param_list_init(tb_ctx *ctx, tb_param_list *list)
{
    if (!ctx || !list)
        return tb_fail(ctx, TB_ERR_NULL_ARG, __func__, "ctx and list must not be NULL");
    memset(list, 0, sizeof *list);
    list->allocator = ctx->allocator;
    return TB_OK;
}

void tb_param_list_free(tb_param_list *list)
{
    if (!list)
        return;
    tb_free_with(&list->allocator, list->items);
    list->items = NULL;
    list->count = list->capacity = 0;
}

tb_status tb_param_list_add(tb_ctx *ctx, tb_param_list *list, const char *prefix,
                            const char *name, tb_param *param)
{
    const char *fn = __func__;
    if (!ctx || !list || !name || !param)
        return tb_fail(ctx, TB_ERR_NULL_ARG, fn, "ctx, list, name and param must not be NULL");
    if (!name[0])
        return tb_fail(ctx, TB_ERR_INVALID_ARG, fn, "the parameter name is empty");
    size_t plen = prefix ? strlen(prefix) : 0;
    size_t nlen = strlen(name);
    size_t full = plen + (plen ? 1 : 0) + nlen;
    if (full >= TB_PARAM_NAME_MAX)
        return tb_fail(ctx, TB_ERR_INVALID_ARG, fn,
                       "name '%s%s%s' is %zu characters; the limit is %d", plen ? prefix : "",
                       plen ? "." : "", name, full, TB_PARAM_NAME_MAX - 1);
    char buf[TB_PARAM_NAME_MAX];
    if (plen) {
        memcpy(buf, prefix, plen);
        buf[plen] = '.';
        memcpy(buf + plen + 1, name, nlen + 1);
    } else {
        memcpy(buf, name, nlen + 1);
    }
    if (tb_param_list_find(list, buf))
        return tb_fail(ctx, TB_ERR_DUPLICATE, fn, "parameter '%s' is already in the list", buf);
    if (list->count == list->capacity) {
        if (!list->allocator.alloc || !list->allocator.free)
            return tb_fail(ctx, TB_ERR_STATE, fn, "the list was not initialised");
        size_t cap = list->capacity ? list->capacity * 2 : 16, bytes;
        if (cap < list->capacity || !tb_mul_size(cap, sizeof(tb_named_param), &bytes))
            return tb_fail(ctx, TB_ERR_OVERFLOW, fn, "the list cannot grow further");
        tb_named_param *items = list->allocator.alloc(list->allocator.user, bytes, 64);
        if (!items)
            return tb_fail(ctx, TB_ERR_NO_MEMORY, fn, "could not allocate %zu bytes", bytes);
        if (list->count)
            memcpy(items, list->items, list->count * sizeof(tb_named_param));
        tb_free_with(&list->allocator, list->items);
        list->items = items;
        list->capacity = cap;
    }
    tb_named_param *e = &list->items[list->count++];
    memcpy(e->name, buf, full + 1);
    e->param = param;
    return TB_OK;
}

tb_param *tb_param_list_find(const tb_param_list *list, const char *name)
{
    if (!list || !name)
        return NULL;
    for (size_t i = 0; i < list->count; i++)
        if (strcmp(list->items[i].name, name) == 0)
            return list->items[i].param;
    return NULL;
}

void tb_param_list_zero_grad(tb_param_list *list)
{
    if (!list)
        return;
    for (size_t i = 0; i < list->count; i++) {
        tb_param *p = list->items[i].param;
        if (p && p->grad)
            memset(p->grad, 0, p->numel * sizeof(float));
    }
}

size_t tb_param_list_numel(const tb_param_list *list, int trainable_only)
{
    size_t n = 0;
    if (!list)
        return 0;
    for (size_t i = 0; i < list->count; i++) {
        const tb_param *p = list->items[i].param;
        if (p && (!trainable_only || p->trainable))
            n += p->numel;
    }
    return n;
}

int tb_select_prefix(const char *name, const tb_param *param, void *user)
{
    (void)param;
    const char *prefix = user;
    const size_t plen = prefix ? strlen(prefix) : 0;
    if (!name)
        return 0;
    /* Whole dotted components: "fc1" selects "fc1.weight" but not
     * "fc10.weight"; a prefix ending in '.' matches as written. */
    return plen == 0 || (strncmp(name, prefix, plen) == 0 &&
                         (name[plen] == '\0' || name[plen] == '.' || prefix[plen - 1] == '.'));
}

int tb_select_direct(const char *name, const tb_param *param, void *user)
{
    (void)param;
    const char *module = user;
    size_t mlen = module ? strlen(module) : 0;
    if (!name)
        return 0;
    if (mlen && module[mlen - 1] == '.')
        mlen--; /* "h.0." is the module "h.0" */
    const char *rest = name;
    if (mlen) {
        if (strncmp(name, module, mlen) != 0 || name[mlen] != '.')
            return 0;
        rest = name + mlen + 1;
    }
    /* Exactly one more component: non-empty, no further '.'. */
    return rest[0] != '\0' && strchr(rest, '.') == NULL;
}

size_t tb_param_list_set_trainable_where(tb_param_list *list, tb_param_select_fn pred,
                                         void *user, int trainable)
{
    size_t selected = 0;
    if (!list || !pred)
        return 0;
    for (size_t i = 0; i < list->count; i++) {
        tb_param *p = list->items[i].param;
        if (!p || !pred(list->items[i].name, p, user))
            continue;
        p->trainable = trainable ? 1 : 0;
        selected++;
    }
    return selected;
}

size_t tb_param_list_set_trainable(tb_param_list *list, const char *prefix, int trainable)
{
    /* The predicate only reads the prefix. */
    return tb_param_list_set_trainable_where(list, tb_select_prefix, (void *)prefix, trainable);
}
