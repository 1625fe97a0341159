/*
 * LoRA on the shared transformer stack: PEFT's get_peft_model() for a tfm.
 *
 * tfm_lora_add() wraps every projection whose module name matches one of
 * the spec's target names (PEFT's target_modules rule,
 * tb_lora_target_matches(): "c_attn" matches "h.0.attn.c_attn") in a
 * tb_lora and takes the projection over through its tfm_proj_ops, so the
 * stack's forward, backward and decoding run the adapters without any
 * call site changing. The wrapped Linears are frozen (their gradient
 * buffers released). Several named adapters can be added, one call each.
 *
 *   tfm_lora tl;
 *   tfm_lora_init(&tl);
 *   tfm_lora_spec spec = {targets, 1, tb_lora_config_default(8)};
 *   tfm_lora_add(ctx, &tl, &model, "default", &spec, rng);
 *   tfm_lora_params(ctx, &tl, "", &trainable);   // only the adapters
 *   ... train: tfm_forward / tfm_backward as before ...
 *   tfm_lora_merge(ctx, &tl, NULL, 1);           // inference at the base speed
 *   tfm_lora_free(&tl);                          // projections are plain again
 *
 * Per-module overrides are PEFT's rank_pattern and alpha_pattern, matched
 * by the same rule (plain names, not regular expressions; the first key
 * that matches wins).
 *
 * Every site keeps the cache its adapter's backward needs, grown on demand
 * by a training forward (so a forward in inference followed by backward is
 * refused by the block, as it should be).
 */
#ifndef EX_TFM_LORA_H
#define EX_TFM_LORA_H

#include <stddef.h>

#include "tblocks.h"
#include "tfm.h"

typedef struct tfm_lora_spec {
    const char *const *targets; /* target_modules */
    size_t n_targets;
    tb_lora_config config;      /* r, alpha, dropout, ... for every target */
    const char *const *rank_keys; /* rank_pattern: module name -> rank */
    const size_t *ranks;
    size_t n_ranks;
    const char *const *alpha_keys; /* alpha_pattern: module name -> alpha */
    const float *alphas;
    size_t n_alphas;
} tfm_lora_spec;

/* One wrapped projection. */
typedef struct tfm_lora_site {
    char module[TB_PARAM_NAME_MAX]; /* its name in the stack, e.g. "h.0.attn.c_attn" */
    tfm_proj *proj;                 /* the stack's projection (its ops point here) */
    tb_lora lora;
    void *cache;                    /* the adapter cache of the last training forward */
    size_t cache_bytes;
} tfm_lora_site;

typedef struct tfm_lora {
    tfm *model;
    size_t n_sites, cap_sites;
    tfm_lora_site *sites; /* in tfm_params() order; never moved once made */
} tfm_lora;

void tfm_lora_init(tfm_lora *tl);

/* Add adapter `name` to every projection matching spec's targets (new sites
 * are made as needed; A and B are drawn from rng site by site, in tfm_params()
 * order). TB_ERR_NOT_FOUND when no projection matches (as PEFT); every
 * error of tb_lora_add(). On error the adapter is removed again from the
 * sites it was added to. */
tb_status tfm_lora_add(tb_ctx *ctx, tfm_lora *tl, tfm *m, const char *name,
                       const tfm_lora_spec *spec, tb_rng *rng);

/* The adapters' parameters under prefix + module (tb_lora_params() names,
 * e.g. "h.0.attn.c_attn.lora_A.default.weight"). */
tb_status tfm_lora_params(tb_ctx *ctx, tfm_lora *tl, const char *prefix, tb_param_list *list);

/* The site of a module name (without prefix), or NULL. */
tfm_lora_site *tfm_lora_find(tfm_lora *tl, const char *module);

/* The same call on every site (a site without the named adapter is skipped
 * by set_active and merge when `name` is given). When a merge fails at one
 * site, the sites before it are unmerged again (everything merged into
 * them, so merge into a stack with nothing merged to get all or nothing). */
tb_status tfm_lora_set_active(tb_ctx *ctx, tfm_lora *tl, const char *const *names, size_t n);
void tfm_lora_set_enabled(tfm_lora *tl, int enabled);
tb_status tfm_lora_merge(tb_ctx *ctx, tfm_lora *tl, const char *name, int safe);
tb_status tfm_lora_unmerge(tb_ctx *ctx, tfm_lora *tl);

/* ---- PEFT adapter files (tblocks/lora_file.h) ----------------------------------
 *
 * tfm_lora_save() writes adapter `adapter` of every site holding it as a
 * PEFT adapter directory (adapter_model.safetensors, adapter_config.json)
 * that PeftModel.from_pretrained() loads onto the Hugging Face model: module
 * names are prefix + the site's (prefix "transformer." gives
 * GPT2LMHeadModel's names), task_type "CAUSAL_LM", and target_modules the
 * distinct final name parts of the holders (["c_attn"]); where a final part
 * also ends a projection without the adapter (c_proj of attn and mlp, only
 * one adapted), the holders are listed by full name instead, so that PEFT
 * wraps nothing else. base_model_name_or_path may be NULL (null).
 *
 * tfm_lora_load() reads such a directory (PEFT's or ours): every module of
 * the file, prefix + a projection's name, gets a site as needed and the
 * adapter with the file's values and configuration (rank_pattern and
 * alpha_pattern applied), added as tb_lora_add() adds (active only at a
 * site's first). A module the model lacks (or not under prefix) is
 * TB_ERR_NOT_FOUND; every error of tb_lora_file_open() and
 * tb_lora_file_apply(). On error nothing changes: the sites made for the
 * call are dropped again and no adapter is left added. */
tb_status tfm_lora_save(tb_ctx *ctx, const tfm_lora *tl, const char *dir, const char *adapter,
                        const char *prefix, const char *base_model_name_or_path);
tb_status tfm_lora_load(tb_ctx *ctx, tfm_lora *tl, tfm *m, const char *dir, const char *adapter,
                        const char *prefix);

/* Bytes of frozen gradients the sites' base layers no longer keep. */
size_t tfm_lora_frozen_bytes(const tfm_lora *tl);

/* Give every projection back to its Linear and free the adapters (merged
 * ones stay in the weights; the Linears stay frozen). */
void tfm_lora_free(tfm_lora *tl);

#endif /* EX_TFM_LORA_H */
