/* Training checkpoints (checkpoint.h) on top of the safetensors writer. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../core/internal.h"

#define OPT_PREFIX "optimizer."
#define NAME_CAP (TB_PARAM_NAME_MAX + 32)

static const char *kind_name(const tb_adam *opt)
{
    if (opt->cfg.decoupled)
        return opt->cfg.amsgrad ? "adamw-amsgrad" : "adamw";
    return opt->cfg.amsgrad ? "adam-amsgrad" : "adam";
}

/* Moment buffers of a slot: 0 m, 1 v, 2 vmax. */
static const char *const moment_names[3] = {"m", "v", "vmax"};

static float *moment(const tb_adam *opt, int which)
{
    return which == 0 ? opt->m : which == 1 ? opt->v : opt->vmax;
}

tb_status tb_checkpoint_save(tb_ctx *ctx, const char *path, const tb_param_list *params,
                             const tb_adam *opt, const tb_rng *rng, const tb_st_meta *extra,
                             size_t n_extra)
{
    const char *fn = __func__;
    if (!ctx || !path || !params || (!extra && n_extra))
        return tb_fail(ctx, TB_ERR_NULL_ARG, fn, "ctx, path, params and extra must not be NULL");
    tb_status s = tb_check_param_list(ctx, fn, params);
    if (s != TB_OK)
        return s;
    for (size_t i = 0; opt && i < opt->n_slots; i++)
        if (!opt->slots[i].param || !opt->slots[i].param->value)
            return tb_fail(ctx, TB_ERR_STATE, fn,
                           "the optimizer's parameter '%s' has no values: its block was freed",
                           opt->slots[i].name);
    for (size_t i = 0; i < params->count; i++)
        if (strncmp(params->items[i].name, OPT_PREFIX, strlen(OPT_PREFIX)) == 0)
            return tb_fail(ctx, TB_ERR_INVALID_ARG, fn,
                           "parameter '%s': names starting with '" OPT_PREFIX
                           "' are reserved for the optimizer's state",
                           params->items[i].name);
    for (size_t i = 0; i < n_extra; i++)
        if (!extra[i].key || !extra[i].value || strncmp(extra[i].key, "tblocks.", 8) == 0 ||
            strcmp(extra[i].key, "format") == 0)
            return tb_fail(ctx, TB_ERR_INVALID_ARG, fn,
                           "metadata key %zu is NULL or reserved ('format', 'tblocks.*')", i);
    const int moments = opt ? (opt->vmax ? 3 : 2) : 0;
    const size_t n_opt = opt ? opt->n_slots * (size_t)moments : 0;
    size_t n_entries, bytes, name_bytes;
    if (!tb_add_size(params->count, n_opt, &n_entries) ||
        !tb_mul_size(n_entries ? n_entries : 1, sizeof(tb_st_entry), &bytes) ||
        !tb_mul_size(n_opt ? n_opt : 1, NAME_CAP, &name_bytes) ||
        !tb_add_size(bytes, name_bytes, &bytes))
        return tb_fail(ctx, TB_ERR_OVERFLOW, fn, "checkpoint index overflows");
    void *mem;
    s = tb_alloc(ctx, fn, bytes, &mem);
    if (s != TB_OK)
        return s;
    tb_st_entry *e = mem;
    char *names = (char *)(e + (n_entries ? n_entries : 1));
    size_t k = 0;
    for (size_t i = 0; i < params->count; i++, k++) {
        const tb_param *p = params->items[i].param;
        e[k].name = params->items[i].name;
        e[k].data = p->value;
        e[k].ndim = p->ndim;
        e[k].shape = p->shape;
    }
    for (int w = 0; w < moments; w++)
        for (size_t i = 0; i < opt->n_slots; i++, k++) {
            const tb_adam_slot *sl = &opt->slots[i];
            char *nm = names + (k - params->count) * NAME_CAP;
            snprintf(nm, NAME_CAP, OPT_PREFIX "%s.%s", moment_names[w], sl->name);
            e[k].name = nm;
            e[k].data = moment(opt, w) + sl->offset;
            e[k].ndim = sl->param->ndim;
            e[k].shape = sl->param->shape;
        }
    /* Metadata: ours, then the caller's. */
    char step[32], skipped[32], key[32], counter[32];
    tb_st_meta meta_fixed[6];
    size_t nm = 0;
    meta_fixed[nm++] = (tb_st_meta){"format", "pt"};
    if (opt) {
        snprintf(step, sizeof step, "%" PRIu64, opt->step);
        snprintf(skipped, sizeof skipped, "%" PRIu64, opt->skipped);
        meta_fixed[nm++] = (tb_st_meta){"tblocks.optim.kind", kind_name(opt)};
        meta_fixed[nm++] = (tb_st_meta){"tblocks.optim.step", step};
        meta_fixed[nm++] = (tb_st_meta){"tblocks.optim.skipped", skipped};
    }
    if (rng) {
        snprintf(key, sizeof key, "%" PRIu64, rng->key);
        snprintf(counter, sizeof counter, "%" PRIu64, rng->counter);
        meta_fixed[nm++] = (tb_st_meta){"tblocks.rng.key", key};
        meta_fixed[nm++] = (tb_st_meta){"tblocks.rng.counter", counter};
    }
    tb_st_meta *meta = NULL;
    void *mmem = NULL;
    if ((s = tb_alloc(ctx, fn, (nm + n_extra) * sizeof(tb_st_meta), &mmem)) == TB_OK) {
        meta = mmem;
        memcpy(meta, meta_fixed, nm * sizeof(tb_st_meta));
        if (n_extra)
            memcpy(meta + nm, extra, n_extra * sizeof(tb_st_meta));
        s = tb_st_save(ctx, path, e, n_entries, meta, nm + n_extra);
        tb_free_with(&ctx->allocator, mmem);
    }
    tb_free_with(&ctx->allocator, mem);
    return s;
}

/* A decimal uint64 metadata value. */
static tb_status meta_u64(tb_ctx *ctx, const tb_st_file *f, const char *key, uint64_t *out)
{
    const char *v = tb_st_meta_get(f, key);
    if (!v || !v[0])
        return tb_fail(ctx, TB_ERR_FORMAT, "tb_checkpoint_load", "metadata '%s' is missing", key);
    uint64_t x = 0;
    for (const char *c = v; *c; c++) {
        if (*c < '0' || *c > '9' || x > (UINT64_MAX - (uint64_t)(*c - '0')) / 10)
            return tb_fail(ctx, TB_ERR_FORMAT, "tb_checkpoint_load",
                           "metadata '%s' = '%.40s' is not a 64-bit decimal", key, v);
        x = x * 10 + (uint64_t)(*c - '0');
    }
    *out = x;
    return TB_OK;
}

tb_status tb_checkpoint_load(tb_ctx *ctx, const char *path, tb_param_list *params, tb_adam *opt,
                             tb_rng *rng)
{
    const char *fn = __func__;
    if (!ctx || !path || !params)
        return tb_fail(ctx, TB_ERR_NULL_ARG, fn, "ctx, path and params must not be NULL");
    if (opt && !opt->slots)
        return tb_fail(ctx, TB_ERR_STATE, fn, "the optimizer is not initialised");
    tb_status s = tb_check_param_list(ctx, fn, params);
    if (s != TB_OK)
        return s;
    tb_st_file f;
    if ((s = tb_st_open(ctx, path, &f)) != TB_OK)
        return s;
    uint64_t step = 0, skipped = 0, key = 0, counter = 0;
    const int moments = opt ? (opt->vmax ? 3 : 2) : 0;
    const tb_st_tensor **found = NULL;
    void *mem = NULL;
    /* 1. Check the optimizer's part and the stream (nothing written yet). */
    if (opt) {
        const char *kind = tb_st_meta_get(&f, "tblocks.optim.kind");
        if (!kind) {
            s = tb_fail(ctx, TB_ERR_FORMAT, fn, "'%s' has no optimizer state", path);
            goto done;
        }
        if (strcmp(kind, kind_name(opt)) != 0) {
            s = tb_fail(ctx, TB_ERR_STATE, fn, "'%s' holds %.20s state; this optimizer is %s",
                        path, kind, kind_name(opt));
            goto done;
        }
        if ((s = meta_u64(ctx, &f, "tblocks.optim.step", &step)) != TB_OK ||
            (s = meta_u64(ctx, &f, "tblocks.optim.skipped", &skipped)) != TB_OK)
            goto done;
        size_t n_opt_file = 0;
        for (size_t i = 0; i < f.count; i++)
            n_opt_file += strncmp(f.tensors[i].name, OPT_PREFIX, strlen(OPT_PREFIX)) == 0;
        if (n_opt_file != opt->n_slots * (size_t)moments) {
            s = tb_fail(ctx, TB_ERR_STATE, fn,
                        "'%s' holds optimizer state for %zu tensors; this optimizer has %zu "
                        "trainable parameters x %d moments",
                        path, n_opt_file, opt->n_slots, moments);
            goto done;
        }
        if ((s = tb_alloc(ctx, fn, (opt->n_slots * (size_t)moments + 1) * sizeof(*found),
                          &mem)) != TB_OK)
            goto done;
        found = mem;
        for (int w = 0; w < moments; w++)
            for (size_t i = 0; i < opt->n_slots; i++) {
                char nm[NAME_CAP];
                const tb_adam_slot *sl = &opt->slots[i];
                snprintf(nm, sizeof nm, OPT_PREFIX "%s.%s", moment_names[w], sl->name);
                const tb_st_tensor *t = tb_st_find(&f, nm);
                if (!t || t->dtype != TB_ST_F32 || t->numel != sl->param->numel) {
                    s = tb_fail(ctx, TB_ERR_STATE, fn,
                                "'%s': optimizer tensor '%s' is missing or does not match the "
                                "parameter",
                                path, nm);
                    goto done;
                }
                found[(size_t)w * opt->n_slots + i] = t;
            }
    }
    if (rng && ((s = meta_u64(ctx, &f, "tblocks.rng.key", &key)) != TB_OK ||
                (s = meta_u64(ctx, &f, "tblocks.rng.counter", &counter)) != TB_OK))
        goto done;
    /* 2. The parameters: checked, then written, by tb_st_load_params. */
    if ((s = tb_st_load_params(ctx, &f, params, TB_ST_STRICT, OPT_PREFIX, NULL)) != TB_OK)
        goto done;
    /* 3. Nothing below can fail. */
    if (opt) {
        for (int w = 0; w < moments; w++)
            for (size_t i = 0; i < opt->n_slots; i++) {
                const tb_adam_slot *sl = &opt->slots[i];
                const tb_st_tensor *t = found[(size_t)w * opt->n_slots + i];
                tb_st_read_f32(ctx, t, moment(opt, w) + sl->offset, t->numel);
            }
        opt->step = step;
        opt->skipped = skipped;
    }
    if (rng) {
        rng->key = key;
        rng->counter = counter;
    }
done:
    if (mem)
        tb_free_with(&ctx->allocator, mem);
    tb_st_close(&f);
    return s;
}
