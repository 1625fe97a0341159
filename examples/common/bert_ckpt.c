/* A bert_config in checkpoint metadata (bert_ckpt.h). */
#include "bert_ckpt.h"

#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>

#include "ex_text.h"

typedef struct field {
    const char *key;
    size_t offset;
    int real;   /* float field, else size_t (or int32 for pad_token_id) */
    int is_i32;
} field;

static const field fields[BERT_CONFIG_N_META] = {
    {"bert.vocab_size", offsetof(bert_config, vocab_size), 0, 0},
    {"bert.hidden_size", offsetof(bert_config, hidden_size), 0, 0},
    {"bert.num_hidden_layers", offsetof(bert_config, num_hidden_layers), 0, 0},
    {"bert.num_attention_heads", offsetof(bert_config, num_attention_heads), 0, 0},
    {"bert.intermediate_size", offsetof(bert_config, intermediate_size), 0, 0},
    {"bert.max_position_embeddings", offsetof(bert_config, max_position_embeddings), 0, 0},
    {"bert.type_vocab_size", offsetof(bert_config, type_vocab_size), 0, 0},
    {"bert.pad_token_id", offsetof(bert_config, pad_token_id), 0, 1},
    {"bert.layer_norm_eps", offsetof(bert_config, layer_norm_eps), 1, 0},
    {"bert.hidden_dropout_prob", offsetof(bert_config, hidden_dropout_prob), 1, 0},
    {"bert.attention_probs_dropout_prob", offsetof(bert_config, attention_probs_dropout_prob), 1,
     0},
    {"bert.initializer_range", offsetof(bert_config, initializer_range), 1, 0},
};

void bert_config_to_meta(const bert_config *cfg, bert_config_text *text,
                         tb_st_meta meta[BERT_CONFIG_N_META])
{
    const char *base = (const char *)cfg;
    for (size_t i = 0; i < BERT_CONFIG_N_META; i++) {
        const field *f = &fields[i];
        if (f->real) {
            float v;
            memcpy(&v, base + f->offset, sizeof v);
            snprintf(text->value[i], sizeof text->value[i], "%.9g", (double)v);
        } else if (f->is_i32) {
            int32_t v;
            memcpy(&v, base + f->offset, sizeof v);
            snprintf(text->value[i], sizeof text->value[i], "%ld", (long)v);
        } else {
            size_t v;
            memcpy(&v, base + f->offset, sizeof v);
            snprintf(text->value[i], sizeof text->value[i], "%zu", v);
        }
        meta[i].key = f->key;
        meta[i].value = text->value[i];
    }
}

tb_status bert_config_from_meta(tb_ctx *ctx, const tb_st_file *file, bert_config *cfg)
{
    if (!file || !cfg)
        return tb_ctx_set_error(ctx, TB_ERR_NULL_ARG, "bert_ckpt: no file or config");
    bert_config c;
    memset(&c, 0, sizeof c);
    char *base = (char *)&c;
    for (size_t i = 0; i < BERT_CONFIG_N_META; i++) {
        const field *f = &fields[i];
        const char *v = tb_st_meta_get(file, f->key);
        if (!v)
            return tb_ctx_set_error(ctx, TB_ERR_FORMAT,
                                    "bert_ckpt: no '%s' metadata: not a BERT checkpoint", f->key);
        if (f->real) {
            double d;
            if (!ex_parse_real(v, &d) || !isfinite(d) || d < 0.0 || d > 1.0)
                return tb_ctx_set_error(ctx, TB_ERR_FORMAT,
                                        "bert_ckpt: %s = '%.40s' is not a number in [0, 1]",
                                        f->key, v);
            const float x = (float)d;
            memcpy(base + f->offset, &x, sizeof x);
        } else {
            uint64_t u;
            if (!ex_parse_u64(v, &u) || u > (f->is_i32 ? (uint64_t)INT32_MAX : (uint64_t)1 << 32))
                return tb_ctx_set_error(ctx, TB_ERR_FORMAT,
                                        "bert_ckpt: %s = '%.40s' is not a decimal integer in range",
                                        f->key, v);
            if (f->is_i32) {
                const int32_t x = (int32_t)u;
                memcpy(base + f->offset, &x, sizeof x);
            } else {
                const size_t x = (size_t)u;
                memcpy(base + f->offset, &x, sizeof x);
            }
        }
    }
    if ((size_t)c.pad_token_id >= c.vocab_size)
        return tb_ctx_set_error(ctx, TB_ERR_FORMAT,
                                "bert_ckpt: pad_token_id %ld outside the vocabulary of %zu",
                                (long)c.pad_token_id, c.vocab_size);
    const tfm_config t = bert_tfm_config(&c);
    const tb_status s = tfm_config_check(ctx, &t);
    if (s != TB_OK)
        return s == TB_ERR_INVALID_ARG ? TB_ERR_FORMAT : s;
    *cfg = c;
    return TB_OK;
}

tb_status bert_encoder_load(tb_ctx *ctx, const char *path, bert_config *cfg, tfm *m,
                            tb_rng *rng)
{
    if (!path || !cfg || !m || !rng)
        return tb_ctx_set_error(ctx, TB_ERR_NULL_ARG, "bert_ckpt: NULL argument");
    tb_st_file f;
    tb_status s = tb_st_open(ctx, path, &f);
    if (s != TB_OK)
        return s;
    bert_config c;
    tb_param_list list;
    memset(m, 0, sizeof *m);
    memset(&list, 0, sizeof list);
    s = bert_config_from_meta(ctx, &f, &c);
    if (s == TB_OK) {
        const tfm_config t = bert_tfm_config(&c);
        s = tfm_init(ctx, m, &t, rng);
    }
    if (s == TB_OK)
        s = tb_param_list_init(ctx, &list);
    if (s == TB_OK)
        s = tfm_params(ctx, m, "bert.", &list);
    if (s == TB_OK)
        s = tb_st_load_params(ctx, &f, &list, TB_ST_ALLOW_UNEXPECTED, NULL, NULL);
    tb_param_list_free(&list);
    tb_st_close(&f);
    if (s != TB_OK) {
        tfm_free(m);
        return s;
    }
    *cfg = c;
    return TB_OK;
}
