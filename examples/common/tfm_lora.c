/* LoRA on the shared transformer stack (tfm_lora.h). */
#include "tfm_lora.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define TRY(call)                    \
    do {                             \
        const tb_status s_ = (call); \
        if (s_ != TB_OK)             \
            return s_;               \
    } while (0)

/* ---- the projection ops: a site's tb_lora in place of the Linear ----------------- */

static tb_status site_forward(tb_ctx *ctx, void *self, tb_mode mode, tb_rng *rng,
                              const tb_tensor *x, tb_tensor *y)
{
    tfm_lora_site *st = self;
    if (mode != TB_MODE_TRAINING) /* no backward follows an inference forward */
        return tb_lora_forward(ctx, &st->lora, mode, rng, x, y, NULL, 0);
    size_t rows = 1, need;
    for (size_t d = 0; d + 1 < x->ndim; d++)
        rows *= x->shape[d];
    TRY(tb_lora_cache_size(&st->lora, rows, &need));
    if (need > st->cache_bytes) {
        void *p = malloc(need);
        if (!p)
            return tb_ctx_set_error(ctx, TB_ERR_NO_MEMORY,
                                    "tfm_lora: no memory for the %zu-byte cache of %s", need,
                                    st->module);
        free(st->cache);
        st->cache = p, st->cache_bytes = need;
    }
    return tb_lora_forward(ctx, &st->lora, mode, rng, x, y, st->cache, st->cache_bytes);
}

static tb_status site_backward(tb_ctx *ctx, void *self, const tb_tensor *x, const tb_tensor *dy,
                               tb_tensor *dx)
{
    tfm_lora_site *st = self;
    return tb_lora_backward(ctx, &st->lora, x, dy, dx, st->cache, st->cache_bytes);
}

static const tfm_proj_ops site_ops = {site_forward, site_backward};

/* ---- sites ------------------------------------------------------------------------ */

void tfm_lora_init(tfm_lora *tl)
{
    memset(tl, 0, sizeof *tl);
}

tfm_lora_site *tfm_lora_find(tfm_lora *tl, const char *module)
{
    for (size_t i = 0; tl && module && i < tl->n_sites; i++)
        if (strcmp(tl->sites[i].module, module) == 0)
            return &tl->sites[i];
    return NULL;
}

static int matches_any(const char *name, const char *const *keys, size_t n, size_t *at)
{
    for (size_t i = 0; i < n; i++)
        if (tb_lora_target_matches(name, keys[i])) {
            if (at)
                *at = i;
            return 1;
        }
    return 0;
}

typedef struct add_job {
    tfm_lora *tl;
    const char *name;
    const tfm_lora_spec *spec;
    tb_rng *rng;
    size_t added; /* sites the adapter went to */
    size_t sites_before;
} add_job;

static tb_status add_at(tb_ctx *ctx, void *user, const char *module, tfm_proj *p)
{
    add_job *job = user;
    const tfm_lora_spec *sp = job->spec;
    if (!matches_any(module, sp->targets, sp->n_targets, NULL))
        return TB_OK;
    tfm_lora *tl = job->tl;
    tfm_lora_site *st = tfm_lora_find(tl, module);
    if (!st) {
        if (tl->n_sites == tl->cap_sites)
            return tb_ctx_set_error(ctx, TB_ERR_STATE, "tfm_lora: more projections than counted");
        st = &tl->sites[tl->n_sites];
        memset(st, 0, sizeof *st);
        snprintf(st->module, sizeof st->module, "%s", module);
        st->proj = p;
        TRY(tb_lora_init(ctx, &st->lora, &p->linear));
        tl->n_sites++;
        p->ops = &site_ops, p->self = st;
    }
    tb_lora_config c = sp->config;
    size_t k;
    if (matches_any(module, sp->rank_keys, sp->n_ranks, &k))
        c.rank = sp->ranks[k];
    if (matches_any(module, sp->alpha_keys, sp->n_alphas, &k))
        c.alpha = sp->alphas[k];
    TRY(tb_lora_add(ctx, &st->lora, job->name, &c, job->rng));
    job->added++;
    return TB_OK;
}

static tb_status count_proj(tb_ctx *ctx, void *user, const char *module, tfm_proj *p)
{
    (void)ctx, (void)module, (void)p;
    (*(size_t *)user)++;
    return TB_OK;
}

/* Take adapter `name` out of every site again (after a failed add), and the
 * sites made for it. */
static void undo_add(tb_ctx *ctx, tfm_lora *tl, const char *name, size_t sites_before)
{
    for (size_t i = 0; i < tl->n_sites; i++)
        if (tb_lora_find(&tl->sites[i].lora, name) >= 0)
            (void)tb_lora_delete(ctx, &tl->sites[i].lora, name);
    while (tl->n_sites > sites_before) {
        tfm_lora_site *st = &tl->sites[--tl->n_sites];
        st->proj->ops = NULL, st->proj->self = NULL;
        tb_lora_free(&st->lora);
        free(st->cache);
        memset(st, 0, sizeof *st);
    }
}

tb_status tfm_lora_add(tb_ctx *ctx, tfm_lora *tl, tfm *m, const char *name,
                       const tfm_lora_spec *spec, tb_rng *rng)
{
    if (!tl || !m || !name || !spec || (spec->n_targets && !spec->targets) ||
        (spec->n_ranks && (!spec->rank_keys || !spec->ranks)) ||
        (spec->n_alphas && (!spec->alpha_keys || !spec->alphas)))
        return tb_ctx_set_error(ctx, TB_ERR_NULL_ARG, "tfm_lora_add: a required argument is NULL");
    if (tl->model && tl->model != m)
        return tb_ctx_set_error(ctx, TB_ERR_INVALID_ARG,
                                "tfm_lora_add: these adapters belong to another model");
    if (!tl->sites) {
        size_t n = 0;
        TRY(tfm_visit_projs(ctx, m, "", count_proj, &n));
        tl->sites = calloc(n ? n : 1, sizeof *tl->sites);
        if (!tl->sites)
            return tb_ctx_set_error(ctx, TB_ERR_NO_MEMORY, "tfm_lora_add: no memory for %zu sites",
                                    n);
        tl->cap_sites = n;
        tl->model = m;
    }
    add_job job = {tl, name, spec, rng, 0, tl->n_sites};
    tb_status s = tfm_visit_projs(ctx, m, "", add_at, &job);
    if (s == TB_OK && job.added == 0)
        s = tb_ctx_set_error(ctx, TB_ERR_NOT_FOUND,
                             "tfm_lora_add: no projection matches the %zu target name%s "
                             "(first '%s')",
                             spec->n_targets, spec->n_targets == 1 ? "" : "s",
                             spec->n_targets ? spec->targets[0] : "");
    if (s != TB_OK)
        undo_add(ctx, tl, name, job.sites_before);
    return s;
}

tb_status tfm_lora_params(tb_ctx *ctx, tfm_lora *tl, const char *prefix, tb_param_list *list)
{
    char full[TB_PARAM_NAME_MAX];
    for (size_t i = 0; i < tl->n_sites; i++) {
        const int n = snprintf(full, sizeof full, "%s%s", prefix ? prefix : "",
                               tl->sites[i].module);
        if (n < 0 || (size_t)n >= sizeof full)
            return tb_ctx_set_error(ctx, TB_ERR_INVALID_ARG, "tfm_lora: name '%s%s' too long",
                                    prefix, tl->sites[i].module);
        TRY(tb_lora_params(ctx, &tl->sites[i].lora, full, list));
    }
    return TB_OK;
}

tb_status tfm_lora_set_active(tb_ctx *ctx, tfm_lora *tl, const char *const *names, size_t n)
{
    const char *here[TB_LORA_MAX_ADAPTERS];
    if (n > TB_LORA_MAX_ADAPTERS)
        return tb_ctx_set_error(ctx, TB_ERR_INVALID_ARG, "tfm_lora_set_active: %zu names", n);
    /* Check every name exists somewhere before changing anything. */
    for (size_t j = 0; j < n; j++) {
        int found = 0;
        for (size_t i = 0; i < tl->n_sites && !found; i++)
            found = tb_lora_find(&tl->sites[i].lora, names[j]) >= 0;
        if (!found)
            return tb_ctx_set_error(ctx, TB_ERR_NOT_FOUND, "tfm_lora_set_active: no adapter '%s'",
                                    names[j]);
    }
    for (size_t i = 0; i < tl->n_sites; i++) {
        size_t k = 0;
        for (size_t j = 0; j < n; j++)
            if (tb_lora_find(&tl->sites[i].lora, names[j]) >= 0)
                here[k++] = names[j];
        TRY(tb_lora_set_active(ctx, &tl->sites[i].lora, here, k));
    }
    return TB_OK;
}

void tfm_lora_set_enabled(tfm_lora *tl, int enabled)
{
    for (size_t i = 0; i < tl->n_sites; i++)
        tb_lora_set_enabled(&tl->sites[i].lora, enabled);
}

tb_status tfm_lora_merge(tb_ctx *ctx, tfm_lora *tl, const char *name, int safe)
{
    for (size_t i = 0; i < tl->n_sites; i++) {
        if (name && tb_lora_find(&tl->sites[i].lora, name) < 0)
            continue;
        const tb_status s = tb_lora_merge(ctx, &tl->sites[i].lora, name, safe);
        if (s != TB_OK) { /* all or nothing: the sites merged so far are unmerged */
            for (size_t j = 0; j < i; j++)
                (void)tb_lora_unmerge(ctx, &tl->sites[j].lora);
            return s;
        }
    }
    return TB_OK;
}

tb_status tfm_lora_unmerge(tb_ctx *ctx, tfm_lora *tl)
{
    for (size_t i = 0; i < tl->n_sites; i++)
        TRY(tb_lora_unmerge(ctx, &tl->sites[i].lora));
    return TB_OK;
}

size_t tfm_lora_frozen_bytes(const tfm_lora *tl)
{
    size_t n = 0;
    for (size_t i = 0; i < tl->n_sites; i++)
        n += tb_lora_frozen_bytes(&tl->sites[i].lora);
    return n;
}

void tfm_lora_free(tfm_lora *tl)
{
    if (!tl)
        return;
    for (size_t i = 0; i < tl->n_sites; i++) {
        tfm_lora_site *st = &tl->sites[i];
        st->proj->ops = NULL, st->proj->self = NULL;
        tb_lora_free(&st->lora);
        free(st->cache);
    }
    free(tl->sites);
    memset(tl, 0, sizeof *tl);
}
