/* P-tuning's virtual tokens in the shared stack's input (ptuning_input.h). */
#define _POSIX_C_SOURCE 200809L /* mkdir */
#include "ptuning_input.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>

#include "ex_arena.h"
#include "ex_try.h"

#define fail tb_ctx_set_error

ptin_template ptin_prefix(size_t n)
{
    ptin_template t;
    memset(&t, 0, sizeof t);
    t.n_groups = 2;
    t.groups[0] = n;
    return t;
}

/* ---- buffers ---------------------------------------------------------------------- */

static tb_status layout(tb_ctx *ctx, tb_arena *ar, void *obj)
{
    ptin *p = obj;
    const size_t T = p->n + p->max_l;
    size_t R, RC, nd;
    if (!ex_mul_size(p->max_b, T, &R) || !ex_mul_size(R, p->d, &RC) ||
        !ex_mul_size(p->n, p->d, &nd))
        return fail(ctx, TB_ERR_OVERFLOW, "ptin: %zu x %zu positions of width %zu overflow",
                    p->max_b, T, p->d);
    TRY(ex_take_f32(ctx, ar, nd, &p->prompts));
    TRY(ex_take_f32(ctx, ar, nd, &p->d_prompts));
    TRY(ex_take_f32(ctx, ar, RC, &p->embeds));
    TRY(ex_take_f32(ctx, ar, RC, &p->d_embeds));
    TRY(ex_take(ctx, ar, R, sizeof(int32_t), (void **)&p->targets));
    TRY(ex_take(ctx, ar, R, sizeof(int32_t), (void **)&p->slot));
    TRY(ex_take(ctx, ar, R, sizeof(int32_t), (void **)&p->type_ids));
    TRY(ex_take(ctx, ar, R, sizeof(uint8_t), (void **)&p->key_valid));
    if (p->enc_cache_bytes)
        TRY(tb_arena_alloc(ctx, ar, p->enc_cache_bytes, &p->enc_cache));
    return TB_OK;
}

tb_status ptin_init(tb_ctx *ctx, ptin *p, const ptin_template *tpl, size_t d, size_t max_b,
                    size_t max_l, const tb_ptuning *enc)
{
    if (!p)
        return fail(ctx, TB_ERR_NULL_ARG, "ptin: no struct");
    memset(p, 0, sizeof *p);
    if (!ctx || !tpl)
        return fail(ctx, TB_ERR_NULL_ARG, "ptin: ctx and the template must not be NULL");
    if (tpl->n_groups < 2 || tpl->n_groups > PTIN_MAX_GROUPS)
        return fail(ctx, TB_ERR_INVALID_ARG, "ptin: a template of %zu groups (2..%d)",
                    tpl->n_groups, PTIN_MAX_GROUPS);
    size_t n = 0;
    for (size_t i = 0; i < tpl->n_groups; i++)
        if (!ex_add_size(n, tpl->groups[i], &n))
            return fail(ctx, TB_ERR_OVERFLOW, "ptin: the template's groups overflow");
    if (!n || !d || !max_b || !max_l || n > TFM_MAX_POSITIONS || max_l > TFM_MAX_POSITIONS)
        return fail(ctx, TB_ERR_INVALID_ARG,
                    "ptin: %zu virtual tokens, width %zu, %zu rows of %zu tokens (each >= 1)", n,
                    d, max_b, max_l);
    if (enc && (enc->config.num_virtual_tokens != n || enc->config.token_dim != d))
        return fail(ctx, TB_ERR_SHAPE,
                    "ptin: the encoder makes %zu tokens of width %zu; the template has %zu, the "
                    "model width %zu",
                    enc->config.num_virtual_tokens, enc->config.token_dim, n, d);
    p->tpl = *tpl;
    p->n = n, p->d = d, p->max_b = max_b, p->max_l = max_l;
    if (enc)
        TRY(tb_ptuning_cache_size(enc, &p->enc_cache_bytes));
    size_t bytes;
    const tb_status s = ex_layout_alloc(ctx, layout, p, &p->buffer, &bytes);
    if (s != TB_OK)
        memset(p, 0, sizeof *p);
    return s;
}

void ptin_free(ptin *p)
{
    if (!p)
        return;
    free(p->buffer);
    memset(p, 0, sizeof *p);
}

/* ---- forward -------------------------------------------------------------------------- */

tb_status ptin_encode(tb_ctx *ctx, ptin *p, const tb_ptuning *enc, tb_mode mode, tb_rng *rng)
{
    if (!p || !enc || !p->buffer)
        return fail(ctx, TB_ERR_NULL_ARG, "ptin: encode needs the buffers and an encoder");
    if (!p->enc_cache)
        return fail(ctx, TB_ERR_STATE, "ptin: made without an encoder (ptin_init)");
    tb_tensor out = tb_tensor_2d(p->prompts, p->n, p->d);
    return tb_ptuning_forward(ctx, enc, mode, rng, &out,
                              mode == TB_MODE_TRAINING ? p->enc_cache : NULL,
                              mode == TB_MODE_TRAINING ? p->enc_cache_bytes : 0);
}

tb_status ptin_build(tb_ctx *ctx, ptin *p, const tb_embedding *wte, const float *prompts,
                     const int32_t *ids, const uint8_t *attention_mask, const int32_t *labels,
                     const size_t *cuts, size_t B, size_t L)
{
    if (!p || !p->buffer || !wte || !prompts || !ids)
        return fail(ctx, TB_ERR_NULL_ARG, "ptin: build needs the buffers, wte, prompts and ids");
    const size_t G = p->tpl.n_groups, n = p->n, C = p->d, T = n + L;
    if (!B || !L || B > p->max_b || L > p->max_l)
        return fail(ctx, TB_ERR_SHAPE, "ptin: a batch of %zu x %zu tokens; the buffers hold %zu x %zu",
                    B, L, p->max_b, p->max_l);
    if (wte->dim != C || !wte->weight.value)
        return fail(ctx, TB_ERR_SHAPE, "ptin: wte of width %zu; the prompts have %zu", wte->dim,
                    C);
    if (G > 2 && !cuts)
        return fail(ctx, TB_ERR_NULL_ARG, "ptin: a template of %zu groups needs %zu cuts per row",
                    G, G - 2);
    /* Check everything before writing anything. */
    for (size_t b = 0; b < B; b++) {
        size_t prev = 0;
        for (size_t i = 0; i + 2 < G; i++) {
            const size_t c = cuts[b * (G - 2) + i];
            if (c < prev || c > L)
                return fail(ctx, TB_ERR_INVALID_ARG,
                            "ptin: row %zu: cut %zu = %zu (after %zu; the row has %zu tokens)", b,
                            i, c, prev, L);
            prev = c;
        }
        for (size_t t = 0; t < L; t++) {
            const int32_t id = ids[b * L + t];
            if (id < 0 || (size_t)id >= wte->num_embeddings)
                return fail(ctx, TB_ERR_INVALID_ARG,
                            "ptin: row %zu, token %zu: id %d outside the vocabulary (0..%zu)", b,
                            t, (int)id, wte->num_embeddings - 1);
        }
    }
    /* Each row: group i at V_i + c_i, then segment i (c_i .. c_{i+1}) shifted by V_{i+1}. */
    for (size_t b = 0; b < B; b++) {
        int32_t *slot = p->slot + b * T;
        size_t pos = 0, v = 0;
        for (size_t i = 0; i < G; i++) {
            for (size_t k = 0; k < p->tpl.groups[i]; k++)
                slot[pos++] = -1 - (int32_t)(v++);
            if (i + 1 < G) {
                const size_t c0 = i == 0 ? 0 : cuts[b * (G - 2) + i - 1];
                const size_t c1 = i + 2 < G ? cuts[b * (G - 2) + i] : L;
                for (size_t t = c0; t < c1; t++)
                    slot[pos++] = (int32_t)t;
            }
        }
        for (size_t j = 0; j < T; j++) {
            float *row = p->embeds + (b * T + j) * C;
            const int32_t s = slot[j];
            if (s < 0) {
                memcpy(row, prompts + (size_t)(-1 - s) * C, C * sizeof(float));
                p->key_valid[b * T + j] = 1;
            } else {
                memcpy(row, wte->weight.value + (size_t)ids[b * L + (size_t)s] * C,
                       C * sizeof(float));
                p->key_valid[b * T + j] =
                    attention_mask ? (attention_mask[b * L + (size_t)s] != 0) : 1;
            }
        }
        /* GPT2LMHeadModel's shift of the extended labels. */
        if (labels) {
            for (size_t j = 0; j + 1 < T; j++) {
                const int32_t s = slot[j + 1];
                p->targets[b * T + j] = s < 0 ? TB_IGNORE_INDEX : labels[b * L + (size_t)s];
            }
            p->targets[b * T + T - 1] = TB_IGNORE_INDEX;
        }
    }
    p->b = B, p->l = L, p->has_targets = labels != NULL;
    memset(&p->in, 0, sizeof p->in);
    p->in.batch = B, p->in.seq = T, p->in.embeds = p->embeds, p->in.key_valid = p->key_valid;
    return TB_OK;
}

tb_status ptin_build_encoder(tb_ctx *ctx, ptin *p, const tfm *m, const float *prompts,
                             const int32_t *ids, const int32_t *type_ids,
                             const uint8_t *attention_mask, const size_t *cuts, size_t B, size_t L)
{
    if (!m)
        return fail(ctx, TB_ERR_NULL_ARG, "ptin: build needs the model");
    if (type_ids && !m->cfg.type_vocab_size)
        return fail(ctx, TB_ERR_INVALID_ARG,
                    "ptin: token types given to a model without a token-type embedding");
    if (type_ids && p && B <= p->max_b && L <= p->max_l) /* the shape is ptin_build()'s to refuse */
        for (size_t i = 0; i < B * L; i++)
            if (type_ids[i] < 0 || (size_t)type_ids[i] >= m->cfg.type_vocab_size)
                return fail(ctx, TB_ERR_INVALID_ARG,
                            "ptin: row %zu, token %zu: token type %d outside 0..%zu", i / L,
                            i % L, (int)type_ids[i], m->cfg.type_vocab_size - 1);
    TRY(ptin_build(ctx, p, &m->wte, prompts, ids, attention_mask, NULL, cuts, B, L));
    if (!type_ids)
        return TB_OK; /* the stack's default: type 0 everywhere, as BERT's buffered zeros */
    const size_t T = p->n + L;
    for (size_t j = 0; j < B * T; j++) {
        const int32_t s = p->slot[j];
        p->type_ids[j] = s < 0 ? 0 : type_ids[(j / T) * L + (size_t)s];
    }
    p->in.type_ids = p->type_ids;
    return TB_OK;
}

const int32_t *ptin_targets(const ptin *p)
{
    return p && p->has_targets ? p->targets : NULL;
}

/* ---- backward ------------------------------------------------------------------------- */

tb_status ptin_gather(tb_ctx *ctx, ptin *p, const float *d_embeds)
{
    if (!p || !p->buffer || !d_embeds)
        return fail(ctx, TB_ERR_NULL_ARG, "ptin: gather needs the buffers and d_embeds");
    if (!p->b)
        return fail(ctx, TB_ERR_STATE, "ptin: gather before a build");
    const size_t n = p->n, C = p->d, T = n + p->l;
    memset(p->d_prompts, 0, n * C * sizeof(float));
    for (size_t b = 0; b < p->b; b++)
        for (size_t j = 0; j < T; j++) {
            const int32_t s = p->slot[b * T + j];
            if (s >= 0)
                continue;
            float *g = p->d_prompts + (size_t)(-1 - s) * C;
            const float *src = d_embeds + (b * T + j) * C;
            for (size_t c = 0; c < C; c++)
                g[c] += src[c];
        }
    return TB_OK;
}

tb_status ptin_backward(tb_ctx *ctx, ptin *p, tb_ptuning *enc)
{
    if (!enc)
        return fail(ctx, TB_ERR_NULL_ARG, "ptin: backward needs the encoder");
    TRY(ptin_gather(ctx, p, p->d_embeds));
    tb_tensor dp = tb_tensor_2d(p->d_prompts, p->n, p->d);
    return tb_ptuning_backward(ctx, enc, &dp, p->enc_cache, p->enc_cache_bytes);
}

/* ---- GPT-2 ---------------------------------------------------------------------------- */

tb_status ptin_gpt_forward(tb_ctx *ctx, gpt *m, gpt_acts *a, ptin *p, const tb_ptuning *enc,
                           tb_mode mode, tb_rng *rng, const int32_t *ids,
                           const uint8_t *attention_mask, const int32_t *labels,
                           const size_t *cuts, size_t B, size_t L, float *loss)
{
    if (!m || !p)
        return fail(ctx, TB_ERR_NULL_ARG, "ptin: no model or buffers");
    if (enc)
        TRY(ptin_encode(ctx, p, enc, mode, rng));
    TRY(ptin_build(ctx, p, &m->t.wte, p->prompts, ids, attention_mask, labels, cuts, B, L));
    return gpt_forward_input(ctx, m, a, mode, rng, &p->in, ptin_targets(p), loss);
}

tb_status ptin_gpt_backward(tb_ctx *ctx, gpt *m, gpt_acts *a, ptin *p, tb_ptuning *enc,
                            float dloss)
{
    if (!m || !p || !enc)
        return fail(ctx, TB_ERR_NULL_ARG, "ptin: no model, buffers or encoder");
    if (!p->has_targets)
        return fail(ctx, TB_ERR_STATE, "ptin: backward after a forward without labels");
    TRY(gpt_backward_embeds(ctx, m, a, p->targets, dloss, p->d_embeds));
    return ptin_backward(ctx, p, enc);
}

/* ---- BERT sequence classification ---------------------------------------------------- */

tb_status ptin_bert_cls_forward(tb_ctx *ctx, tfm *m, tfm_acts *a, bert_cls *h, ptin *p,
                                const tb_ptuning *enc, tb_mode mode, tb_rng *rng,
                                const int32_t *ids, const int32_t *type_ids,
                                const uint8_t *attention_mask, const int32_t *labels,
                                const size_t *cuts, size_t B, size_t L, float *loss)
{
    if (!m || !a || !h || !p)
        return fail(ctx, TB_ERR_NULL_ARG, "ptin: no model, activations, head or buffers");
    if (m->cfg.causal)
        return fail(ctx, TB_ERR_INVALID_ARG, "ptin: a classifier on a causal stack");
    if (enc)
        TRY(ptin_encode(ctx, p, enc, mode, rng));
    TRY(ptin_build_encoder(ctx, p, m, p->prompts, ids, type_ids, attention_mask, cuts, B, L));
    TRY(tfm_forward(ctx, m, a, mode, rng, &p->in));
    return bert_cls_forward(ctx, h, a->out, B, p->in.seq, labels, loss);
}

tb_status ptin_bert_cls_backward(tb_ctx *ctx, tfm *m, tfm_acts *a, bert_cls *h, ptin *p,
                                 tb_ptuning *enc, float dloss)
{
    if (!m || !a || !h || !p || !enc)
        return fail(ctx, TB_ERR_NULL_ARG, "ptin: no model, activations, head, buffers or encoder");
    /* dout in a->dt1: tfm_backward() reads it before using it as scratch. */
    TRY(bert_cls_backward(ctx, h, dloss, a->dt1));
    TRY(tfm_backward(ctx, m, a, a->dt1, p->d_embeds));
    return ptin_backward(ctx, p, enc);
}

/* ---- PEFT export ------------------------------------------------------------------------ */

/* s as a JSON string (quotes included) into f. */
static void json_string(FILE *f, const char *s)
{
    fputc('"', f);
    for (const unsigned char *c = (const unsigned char *)s; *c; c++) {
        if (*c == '"' || *c == '\\')
            fprintf(f, "\\%c", *c);
        else if (*c < 0x20)
            fprintf(f, "\\u%04x", *c);
        else
            fputc(*c, f);
    }
    fputc('"', f);
}

static tb_status write_config(tb_ctx *ctx, const char *path, const tb_ptuning_config *cfg,
                              const ptin_peft_info *info)
{
    char tmp[4200];
    if (snprintf(tmp, sizeof tmp, "%s.tmp", path) >= (int)sizeof tmp)
        return fail(ctx, TB_ERR_INVALID_ARG, "ptin: path too long");
    FILE *f = fopen(tmp, "w");
    if (!f)
        return fail(ctx, TB_ERR_IO, "ptin: cannot write %s: %s", tmp, strerror(errno));
    /* PEFT's PromptEncoderConfig fields, in the order its save_pretrained() writes them
     * (sorted); peft_version is left out: PEFT did not write this file. */
    fprintf(f, "{\n  \"auto_mapping\": null,\n  \"base_model_name_or_path\": ");
    if (info->base_model_name_or_path)
        json_string(f, info->base_model_name_or_path);
    else
        fprintf(f, "null");
    fprintf(f, ",\n  \"encoder_dropout\": %.9g%s,\n", (double)cfg->encoder_dropout,
            cfg->encoder_dropout == 0.0f ? ".0" : "");
    fprintf(f, "  \"encoder_hidden_size\": %zu,\n", cfg->encoder_hidden_size);
    /* PEFT's MLP encoder ignores encoder_num_layers (and warns unless it is its default 2). */
    fprintf(f, "  \"encoder_num_layers\": %zu,\n",
            cfg->type == TB_PTUNING_LSTM ? cfg->encoder_num_layers : (size_t)2);
    fprintf(f, "  \"encoder_reparameterization_type\": \"%s\",\n",
            cfg->type == TB_PTUNING_LSTM ? "LSTM" : "MLP");
    fprintf(f, "  \"inference_mode\": true,\n  \"modules_to_save\": null,\n");
    fprintf(f, "  \"num_attention_heads\": %zu,\n  \"num_layers\": %zu,\n",
            info->num_attention_heads, info->num_layers);
    fprintf(f, "  \"num_transformer_submodules\": 1,\n  \"num_virtual_tokens\": %zu,\n",
            cfg->num_virtual_tokens);
    fprintf(f, "  \"peft_type\": \"P_TUNING\",\n  \"revision\": null,\n  \"task_type\": ");
    json_string(f, info->task_type ? info->task_type : "CAUSAL_LM");
    fprintf(f, ",\n  \"token_dim\": %zu\n}\n", cfg->token_dim);
    const int bad = ferror(f);
    if (fclose(f) != 0 || bad) {
        remove(tmp);
        return fail(ctx, TB_ERR_IO, "ptin: writing %s failed", tmp);
    }
    if (rename(tmp, path) != 0) {
        remove(tmp);
        return fail(ctx, TB_ERR_IO, "ptin: cannot rename %s to %s: %s", tmp, path,
                    strerror(errno));
    }
    return TB_OK;
}

tb_status ptin_export_peft(tb_ctx *ctx, const char *dir, const float *prompts,
                           const tb_ptuning_config *cfg, const ptin_peft_info *info)
{
    if (!ctx || !dir || !prompts || !cfg || !info)
        return fail(ctx, TB_ERR_NULL_ARG, "ptin: export needs dir, prompts, config and info");
    if (strlen(dir) > 4000)
        return fail(ctx, TB_ERR_INVALID_ARG, "ptin: directory name too long");
    if (mkdir(dir, 0777) != 0 && errno != EEXIST)
        return fail(ctx, TB_ERR_IO, "ptin: cannot create %s: %s", dir, strerror(errno));
    char path[4100];
    snprintf(path, sizeof path, "%s/adapter_model.safetensors", dir);
    const size_t shape[2] = {cfg->num_virtual_tokens, cfg->token_dim};
    const tb_st_entry e = {"prompt_embeddings", prompts, 2, shape};
    const tb_st_meta meta = {"format", "pt"};
    TRY(tb_st_save(ctx, path, &e, 1, &meta, 1));
    snprintf(path, sizeof path, "%s/adapter_config.json", dir);
    return write_config(ctx, path, cfg, info);
}

tb_status ptin_load_prompts(tb_ctx *ctx, const char *path, float *prompts, size_t n, size_t d)
{
    if (!ctx || !path || !prompts)
        return fail(ctx, TB_ERR_NULL_ARG, "ptin: load needs a path and a buffer");
    tb_st_file f;
    TRY(tb_st_open(ctx, path, &f));
    const tb_st_tensor *t = tb_st_find(&f, "prompt_embeddings");
    tb_status s = TB_OK;
    if (!t)
        s = fail(ctx, TB_ERR_NOT_FOUND, "ptin: %s has no 'prompt_embeddings'", path);
    else if (t->ndim != 2 || t->shape[0] != n || t->shape[1] != d)
        s = fail(ctx, TB_ERR_SHAPE, "ptin: %s: prompt_embeddings is not (%zu, %zu)", path, n, d);
    else
        s = tb_st_read_f32(ctx, t, prompts, n * d);
    tb_st_close(&f);
    return s;
}
