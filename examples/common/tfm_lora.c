/* LoRA on the shared transformer stack (tfm_lora.h). */
#include "tfm_lora.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "ex_try.h"

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

/* The site of a projection, made (and the projection taken over) if new. */
static tb_status site_of(tb_ctx *ctx, tfm_lora *tl, const char *module, tfm_proj *p,
                         tfm_lora_site **out)
{
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
    *out = st;
    return TB_OK;
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
    tfm_lora_site *st;
    TRY(site_of(ctx, job->tl, module, p, &st));
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

/* Room for a site at every projection of m (once per tfm_lora). */
static tb_status sites_for(tb_ctx *ctx, tfm_lora *tl, tfm *m)
{
    if (tl->sites)
        return TB_OK;
    size_t n = 0;
    TRY(tfm_visit_projs(ctx, m, "", count_proj, &n));
    tl->sites = calloc(n ? n : 1, sizeof *tl->sites);
    if (!tl->sites)
        return tb_ctx_set_error(ctx, TB_ERR_NO_MEMORY, "tfm_lora: no memory for %zu sites", n);
    tl->cap_sites = n;
    tl->model = m;
    return TB_OK;
}

/* Drop the sites made after the first `sites_before` (their adapters too):
 * their projections are plain again. */
static void drop_sites(tfm_lora *tl, size_t sites_before)
{
    while (tl->n_sites > sites_before) {
        tfm_lora_site *st = &tl->sites[--tl->n_sites];
        st->proj->ops = NULL, st->proj->self = NULL;
        tb_lora_free(&st->lora);
        free(st->cache);
        memset(st, 0, sizeof *st);
    }
}

/* Take adapter `name` out of every site again (after a failed add), and the
 * sites made for it. */
static void undo_add(tb_ctx *ctx, tfm_lora *tl, const char *name, size_t sites_before)
{
    for (size_t i = 0; i < tl->n_sites; i++)
        if (tb_lora_find(&tl->sites[i].lora, name) >= 0)
            (void)tb_lora_delete(ctx, &tl->sites[i].lora, name);
    drop_sites(tl, sites_before);
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
    TRY(sites_for(ctx, tl, m));
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

/* ---- PEFT adapter files ---------------------------------------------------------- */

/* Whether some projection of the model ends in `last` but is not one of
 * the holders (then the bare final part would make PEFT wrap it too). */
typedef struct target_job {
    tfm_lora *tl;
    const char *adapter;
    const char *last;
    int stray;
} target_job;

static const char *last_part(const char *name)
{
    const char *d = strrchr(name, '.');
    return d ? d + 1 : name;
}

static tb_status find_stray(tb_ctx *ctx, void *user, const char *module, tfm_proj *p)
{
    (void)ctx, (void)p;
    target_job *job = user;
    if (strcmp(last_part(module), job->last) != 0)
        return TB_OK;
    const tfm_lora_site *st = tfm_lora_find(job->tl, module);
    if (!st || tb_lora_find(&st->lora, job->adapter) < 0)
        job->stray = 1;
    return TB_OK;
}

tb_status tfm_lora_save(tb_ctx *ctx, const tfm_lora *tl, const char *dir, const char *adapter,
                        const char *prefix, const char *base_model_name_or_path)
{
    if (!tl || !dir || !adapter)
        return tb_ctx_set_error(ctx, TB_ERR_NULL_ARG, "tfm_lora_save: a required argument is NULL");
    if (!prefix)
        prefix = "";
    const size_t n = tl->n_sites;
    tb_lora_module *mods = calloc(n ? n : 1, sizeof *mods);
    char (*names)[TB_PARAM_NAME_MAX] = calloc(n ? n : 1, sizeof *names);
    const char **targets = calloc(n ? n : 1, sizeof *targets);
    tb_status s = TB_OK;
    size_t nm = 0, nt = 0;
    if (!mods || !names || !targets) {
        s = tb_ctx_set_error(ctx, TB_ERR_NO_MEMORY, "tfm_lora_save: no memory for %zu sites", n);
        goto done;
    }
    for (size_t i = 0; i < n; i++) {
        tfm_lora_site *st = &tl->sites[i];
        if (tb_lora_find(&st->lora, adapter) < 0)
            continue;
        const int k = snprintf(names[nm], sizeof names[nm], "%s%s", prefix, st->module);
        if (k < 0 || (size_t)k >= sizeof names[nm]) {
            s = tb_ctx_set_error(ctx, TB_ERR_INVALID_ARG, "tfm_lora_save: name '%s%s' too long",
                                 prefix, st->module);
            goto done;
        }
        mods[nm].name = names[nm];
        mods[nm].lora = &st->lora;
        nm++;
    }
    /* target_modules: each distinct final part, or the full names of its
     * holders when the part also ends a projection without the adapter. */
    for (size_t i = 0; i < n; i++) {
        const tfm_lora_site *st = &tl->sites[i];
        if (tb_lora_find(&st->lora, adapter) < 0)
            continue;
        const char *last = last_part(st->module);
        target_job job = {(tfm_lora *)(uintptr_t)tl, adapter, last, 0};
        if (tl->model &&
            (s = tfm_visit_projs(ctx, tl->model, "", find_stray, &job)) != TB_OK)
            goto done;
        if (job.stray) { /* this holder by its full name */
            for (size_t j = 0; j < nm; j++)
                if (mods[j].lora == &st->lora)
                    targets[nt++] = mods[j].name;
        } else {
            int seen = 0;
            for (size_t j = 0; j < nt && !seen; j++)
                seen = strcmp(targets[j], last) == 0;
            if (!seen)
                targets[nt++] = last;
        }
    }
    const tb_lora_save_info info = {"CAUSAL_LM", base_model_name_or_path, targets, nt};
    s = tb_lora_file_save(ctx, dir, adapter, mods, nm, &info);
done:
    free(mods);
    free(names);
    free(targets);
    return s;
}

/* The projections the file names: sites made for them, pairs collected. */
typedef struct load_job {
    tfm_lora *tl;
    const tb_lora_file *f;
    const char *prefix;
    tb_lora_module *mods;
    char (*names)[TB_PARAM_NAME_MAX];
    size_t n;
} load_job;

static tb_status load_at(tb_ctx *ctx, void *user, const char *module, tfm_proj *p)
{
    load_job *job = user;
    char full[TB_PARAM_NAME_MAX];
    const int k = snprintf(full, sizeof full, "%s%s", job->prefix, module);
    if (k < 0 || (size_t)k >= sizeof full || !tb_lora_file_find(job->f, full))
        return TB_OK;
    tfm_lora_site *st;
    TRY(site_of(ctx, job->tl, module, p, &st));
    memcpy(job->names[job->n], full, sizeof full);
    job->mods[job->n].name = job->names[job->n];
    job->mods[job->n].lora = &st->lora;
    job->n++;
    return TB_OK;
}

tb_status tfm_lora_load(tb_ctx *ctx, tfm_lora *tl, tfm *m, const char *dir, const char *adapter,
                        const char *prefix)
{
    if (!tl || !m || !dir || !adapter)
        return tb_ctx_set_error(ctx, TB_ERR_NULL_ARG, "tfm_lora_load: a required argument is NULL");
    if (tl->model && tl->model != m)
        return tb_ctx_set_error(ctx, TB_ERR_INVALID_ARG,
                                "tfm_lora_load: these adapters belong to another model");
    tb_lora_file f;
    TRY(tb_lora_file_open(ctx, dir, &f));
    const int fresh = tl->sites == NULL;
    tb_status s = sites_for(ctx, tl, m);
    const size_t n = f.n_modules, sites_before = tl->n_sites;
    load_job job = {tl, &f, prefix ? prefix : "", calloc(n, sizeof *job.mods),
                    calloc(n, sizeof *job.names), 0};
    if (s == TB_OK && (!job.mods || !job.names))
        s = tb_ctx_set_error(ctx, TB_ERR_NO_MEMORY, "tfm_lora_load: no memory for %zu modules", n);
    if (s == TB_OK)
        s = tfm_visit_projs(ctx, m, "", load_at, &job);
    /* A module of the file the model lacks is named by tb_lora_file_apply
     * (it matches none of the pairs). */
    if (s == TB_OK)
        s = tb_lora_file_apply(ctx, &f, adapter, job.mods, job.n, NULL);
    if (s != TB_OK) {
        drop_sites(tl, sites_before);
        if (fresh && tl->n_sites == 0) {
            free(tl->sites);
            tfm_lora_init(tl);
        }
    }
    free(job.mods);
    free(job.names);
    tb_lora_file_close(&f);
    return s;
}
