/* Named parameter lists. */
#include <string.h>

#include "internal.h"

void tb_param_set_shape(tb_param *p, size_t ndim, const size_t *shape)
{
    p->ndim = ndim;
    p->numel = 1;
    for (size_t i = 0; i < TB_MAX_DIMS; i++)
        p->shape[i] = i < ndim ? shape[i] : 0;
    for (size_t i = 0; i < ndim; i++)
        p->numel *= shape[i];
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

size_t tb_param_list_set_trainable(tb_param_list *list, const char *prefix, int trainable)
{
    size_t changed = 0, plen = prefix ? strlen(prefix) : 0;
    if (!list)
        return 0;
    for (size_t i = 0; i < list->count; i++) {
        const char *name = list->items[i].name;
        if (!list->items[i].param)
            continue;
        /* Match whole dotted components: "fc1" selects "fc1.weight" but not
         * "fc10.weight"; a prefix ending in '.' matches as written. */
        if (plen && (strncmp(name, prefix, plen) != 0 ||
                     (name[plen] != '\0' && name[plen] != '.' && prefix[plen - 1] != '.')))
            continue;
        list->items[i].param->trainable = trainable ? 1 : 0;
        changed++;
    }
    return changed;
}
