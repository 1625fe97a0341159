/* A BERT model folder and the sentence embedder on it (bert_model.h). */
#include "bert_model.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ex_file.h"
#include "ex_json.h"
#include "ex_text.h"
#include "ex_try.h"

#define fail tb_ctx_set_error

/* ---- config.json --------------------------------------------------------------- */

static tb_status opt_size(tb_ctx *ctx, const ex_json *o, const char *key, size_t min, size_t max,
                          size_t *out)
{
    const ex_json *v = ex_json_find(o, key);
    char what[96];
    snprintf(what, sizeof what, "config.json: %s", key);
    return v ? ex_json_size(ctx, v, what, min, max, out) : TB_OK;
}

static tb_status opt_float(tb_ctx *ctx, const ex_json *o, const char *key, float *out)
{
    const ex_json *v = ex_json_find(o, key);
    char what[96];
    snprintf(what, sizeof what, "config.json: %s", key);
    return v ? ex_json_float(ctx, v, what, out) : TB_OK;
}

/* A string field that must have one value when present (and is not null). */
static tb_status expect_string(tb_ctx *ctx, const ex_json *o, const char *file, const char *key,
                               const char *want)
{
    const ex_json *v = ex_json_find(o, key);
    if (!v || v->type == EX_JSON_NULL)
        return TB_OK;
    char what[96];
    const char *s;
    snprintf(what, sizeof what, "%s: %s", file, key);
    TRY(ex_json_string(ctx, v, what, &s));
    if (strcmp(s, want) != 0)
        return fail(ctx, TB_ERR_UNSUPPORTED, "%s is \"%.60s\"; only \"%s\" is supported", what, s,
                    want);
    return TB_OK;
}

static tb_status config_from_doc(tb_ctx *ctx, const ex_json *o, bert_config *c)
{
    if (o->type != EX_JSON_OBJECT)
        return fail(ctx, TB_ERR_FORMAT, "config.json: not a JSON object");
    TRY(expect_string(ctx, o, "config.json", "model_type", "bert"));
    TRY(expect_string(ctx, o, "config.json", "hidden_act", "gelu"));
    TRY(expect_string(ctx, o, "config.json", "position_embedding_type", "absolute"));
    const ex_json *dec = ex_json_find(o, "is_decoder");
    if (dec && dec->type == EX_JSON_TRUE)
        return fail(ctx, TB_ERR_UNSUPPORTED, "config.json: is_decoder is true; only encoders");
    static const struct {
        const char *key;
        size_t off, max;
    } req[] = {
        {"vocab_size", offsetof(bert_config, vocab_size), TFM_MAX_VOCAB},
        {"hidden_size", offsetof(bert_config, hidden_size), TFM_MAX_WIDTH},
        {"num_hidden_layers", offsetof(bert_config, num_hidden_layers), TFM_MAX_LAYER},
        {"num_attention_heads", offsetof(bert_config, num_attention_heads), TFM_MAX_WIDTH},
        {"intermediate_size", offsetof(bert_config, intermediate_size), TFM_MAX_WIDTH},
        {"max_position_embeddings", offsetof(bert_config, max_position_embeddings),
         TFM_MAX_POSITIONS},
    };
    for (size_t i = 0; i < sizeof req / sizeof req[0]; i++) {
        char what[96];
        snprintf(what, sizeof what, "config.json: %s", req[i].key);
        TRY(ex_json_size(ctx, ex_json_find(o, req[i].key), what, 1, req[i].max,
                         (size_t *)((char *)c + req[i].off)));
    }
    c->type_vocab_size = 2;
    TRY(opt_size(ctx, o, "type_vocab_size", 0, TFM_MAX_VOCAB, &c->type_vocab_size));
    TRY(opt_float(ctx, o, "layer_norm_eps", &c->layer_norm_eps));
    TRY(opt_float(ctx, o, "hidden_dropout_prob", &c->hidden_dropout_prob));
    TRY(opt_float(ctx, o, "attention_probs_dropout_prob", &c->attention_probs_dropout_prob));
    TRY(opt_float(ctx, o, "initializer_range", &c->initializer_range));
    size_t pad = 0;
    const ex_json *pv = ex_json_find(o, "pad_token_id");
    if (pv && pv->type != EX_JSON_NULL)
        TRY(ex_json_size(ctx, pv, "config.json: pad_token_id", 0, c->vocab_size - 1, &pad));
    c->pad_token_id = (int32_t)pad;
    if (c->hidden_size % c->num_attention_heads)
        return fail(ctx, TB_ERR_INVALID_ARG,
                    "config.json: hidden_size %zu is not a multiple of num_attention_heads %zu",
                    c->hidden_size, c->num_attention_heads);
    const tfm_config t = bert_tfm_config(c);
    tb_status s = tfm_config_check(ctx, &t);
    if (s != TB_OK)
        return fail(ctx, s, "config.json: %s", tb_ctx_error(ctx));
    return TB_OK;
}

tb_status bert_config_from_json(tb_ctx *ctx, const char *text, size_t len, bert_config *cfg)
{
    if (!text || !cfg)
        return fail(ctx, TB_ERR_NULL_ARG, "bert_config_from_json: no text or config");
    ex_json_doc doc;
    tb_status s = ex_json_parse(ctx, text, len, &doc);
    if (s != TB_OK)
        return fail(ctx, s, "config.json: %s", tb_ctx_error(ctx));
    bert_config c = bert_config_base();
    s = config_from_doc(ctx, doc.root, &c);
    ex_json_free(&doc);
    if (s == TB_OK)
        *cfg = c;
    return s;
}

/* ---- the folder ----------------------------------------------------------------- */

static char *join(const char *dir, const char *a, const char *b)
{
    const size_t n = strlen(dir) + strlen(a) + (b ? strlen(b) + 1 : 0) + 2;
    char *p = malloc(n);
    if (p)
        snprintf(p, n, "%s/%s%s%s", dir, a, b ? "/" : "", b ? b : "");
    return p;
}

/* The file dir/a[/b] as a NUL-terminated buffer; optional files that do
 * not exist give *text NULL and TB_OK. */
static tb_status read_file(tb_ctx *ctx, const char *dir, const char *a, const char *b,
                           int optional, char **text, size_t *len)
{
    *text = NULL;
    char *path = join(dir, a, b);
    if (!path)
        return fail(ctx, TB_ERR_NO_MEMORY, "bert_model: out of memory");
    FILE *probe = fopen(path, "rb");
    if (!probe && optional) {
        free(path);
        return TB_OK;
    }
    if (probe)
        fclose(probe);
    *text = ex_read_regular(path, "model file", len);
    tb_status s = TB_OK;
    if (!*text)
        s = fail(ctx, TB_ERR_IO, "cannot read %s", path);
    free(path);
    return s;
}

static tb_status parse_file(tb_ctx *ctx, const char *dir, const char *a, const char *b,
                            int optional, ex_json_doc *doc)
{
    char *text;
    size_t len;
    memset(doc, 0, sizeof *doc);
    TRY(read_file(ctx, dir, a, b, optional, &text, &len));
    if (!text)
        return TB_OK;
    tb_status s = ex_json_parse(ctx, text, len, doc);
    free(text);
    if (s != TB_OK)
        return fail(ctx, s, "%s%s%s: %s", a, b ? "/" : "", b ? b : "", tb_ctx_error(ctx));
    return TB_OK;
}

static tb_status read_tokenizer_config(tb_ctx *ctx, bert_model *m, const char *dir)
{
    ex_json_doc doc;
    m->lowercase = 1, m->strip_accents = BERT_ACCENTS_AUTO, m->split_cjk = 1;
    TRY(parse_file(ctx, dir, "tokenizer_config.json", NULL, 1, &doc));
    if (!doc.root)
        return TB_OK;
    const ex_json *o = doc.root, *v;
    tb_status s = TB_OK;
    if (o->type != EX_JSON_OBJECT)
        s = fail(ctx, TB_ERR_FORMAT, "tokenizer_config.json: not a JSON object");
    if (s == TB_OK && (v = ex_json_find(o, "do_lower_case")))
        s = ex_json_bool(ctx, v, "tokenizer_config.json: do_lower_case", &m->lowercase);
    if (s == TB_OK && (v = ex_json_find(o, "tokenize_chinese_chars")))
        s = ex_json_bool(ctx, v, "tokenizer_config.json: tokenize_chinese_chars", &m->split_cjk);
    if (s == TB_OK && (v = ex_json_find(o, "strip_accents")) && v->type != EX_JSON_NULL) {
        int strip;
        s = ex_json_bool(ctx, v, "tokenizer_config.json: strip_accents (or null)", &strip);
        m->strip_accents = strip ? BERT_ACCENTS_STRIP : BERT_ACCENTS_KEEP;
    }
    ex_json_free(&doc);
    return s;
}

static const char *module_type(const ex_json *mod)
{
    const ex_json *t = ex_json_find(mod, "type");
    return t && t->type == EX_JSON_STRING ? t->str : NULL;
}

static tb_status read_pooling(tb_ctx *ctx, bert_model *m, const char *dir, const char *path)
{
    ex_json_doc doc;
    TRY(parse_file(ctx, dir, path, "config.json", 0, &doc));
    const ex_json *o = doc.root;
    tb_status s = TB_OK;
    if (o->type != EX_JSON_OBJECT)
        s = fail(ctx, TB_ERR_FORMAT, "%s/config.json: not a JSON object", path);
    size_t dim = 0;
    if (s == TB_OK)
        s = ex_json_size(ctx, ex_json_find(o, "word_embedding_dimension"),
                         "Pooling config.json: word_embedding_dimension", 1, TFM_MAX_WIDTH, &dim);
    if (s == TB_OK && dim != m->cfg.hidden_size)
        s = fail(ctx, TB_ERR_SHAPE,
                 "%s/config.json: word_embedding_dimension %zu, but hidden_size is %zu", path, dim,
                 m->cfg.hidden_size);
    static const struct {
        const char *key;
        int mode; /* -1: refused */
    } modes[] = {{"pooling_mode_mean_tokens", BERT_POOL_MEAN},
                 {"pooling_mode_cls_token", BERT_POOL_CLS},
                 {"pooling_mode_max_tokens", BERT_POOL_MAX},
                 {"pooling_mode_mean_sqrt_len_tokens", -1},
                 {"pooling_mode_weightedmean_tokens", -1},
                 {"pooling_mode_lasttoken", -1}};
    int n_on = 0;
    for (size_t i = 0; s == TB_OK && i < sizeof modes / sizeof modes[0]; i++) {
        const ex_json *v = ex_json_find(o, modes[i].key);
        int on = 0;
        if (v) {
            char what[96];
            snprintf(what, sizeof what, "Pooling config.json: %s", modes[i].key);
            s = ex_json_bool(ctx, v, what, &on);
        }
        if (s == TB_OK && on && modes[i].mode < 0)
            s = fail(ctx, TB_ERR_UNSUPPORTED, "%s/config.json: %s is not supported (mean, cls "
                     "or max pooling only)", path, modes[i].key);
        if (s == TB_OK && on)
            m->pooling = (bert_pooling)modes[i].mode, n_on++;
    }
    if (s == TB_OK && n_on != 1)
        s = fail(ctx, TB_ERR_UNSUPPORTED,
                 "%s/config.json: %d pooling modes on; exactly one of mean, cls, max is supported",
                 path, n_on);
    ex_json_free(&doc);
    return s;
}

static tb_status read_modules(tb_ctx *ctx, bert_model *m, const char *dir)
{
    ex_json_doc doc;
    TRY(parse_file(ctx, dir, "modules.json", NULL, 0, &doc));
    const ex_json *a = doc.root;
    tb_status s = TB_OK;
    if (a->type != EX_JSON_ARRAY || a->count < 2)
        s = fail(ctx, TB_ERR_FORMAT, "modules.json: expected an array of at least 2 modules");
    size_t i = 0;
    const char *pool_path = NULL;
    for (const ex_json *mod = a->child; s == TB_OK && mod; mod = mod->next, i++) {
        const char *t = module_type(mod);
        const ex_json *pv = ex_json_find(mod, "path");
        const char *path = pv && pv->type == EX_JSON_STRING ? pv->str : NULL;
        if (!t || !path)
            s = fail(ctx, TB_ERR_FORMAT, "modules.json: module %zu has no string type and path", i);
        else if (i == 0) {
            if (strcmp(t, "sentence_transformers.models.Transformer") != 0 || path[0])
                s = fail(ctx, TB_ERR_UNSUPPORTED, "modules.json: module 0 is \"%.80s\" at \"%.80s\";"
                         " expected sentence_transformers.models.Transformer at \"\"", t, path);
        } else if (i == 1) {
            if (strcmp(t, "sentence_transformers.models.Pooling") != 0)
                s = fail(ctx, TB_ERR_UNSUPPORTED, "modules.json: module 1 is \"%.80s\"; expected "
                         "sentence_transformers.models.Pooling", t);
            else if (!path[0] || strstr(path, "..") || path[0] == '/')
                s = fail(ctx, TB_ERR_FORMAT, "modules.json: Pooling path \"%.80s\" is not a "
                         "subfolder", path);
            pool_path = path;
        } else if (i == 2 && strcmp(t, "sentence_transformers.models.Normalize") == 0)
            m->normalize = 1;
        else
            s = fail(ctx, TB_ERR_UNSUPPORTED, "modules.json: module %zu \"%.80s\" is not supported "
                     "(Transformer, Pooling, Normalize only)", i, t);
    }
    if (s == TB_OK)
        s = read_pooling(ctx, m, dir, pool_path);
    ex_json_free(&doc);
    return s;
}

static tb_status read_st_config(tb_ctx *ctx, bert_model *m, const char *dir)
{
    ex_json_doc doc;
    TRY(parse_file(ctx, dir, "sentence_bert_config.json", NULL, 0, &doc));
    tb_status s = ex_json_size(ctx, ex_json_find(doc.root, "max_seq_length"),
                               "sentence_bert_config.json: max_seq_length", 2,
                               m->cfg.max_position_embeddings, &m->max_seq_length);
    ex_json_free(&doc);
    return s;
}

static tb_status load_weights(tb_ctx *ctx, bert_model *m, const char *dir)
{
    char *path = join(dir, "model.safetensors", NULL);
    if (!path)
        return fail(ctx, TB_ERR_NO_MEMORY, "bert_model: out of memory");
    tb_st_file f;
    tb_status s = tb_st_open(ctx, path, &f);
    if (s != TB_OK) {
        s = fail(ctx, s, "%s: %s", path, tb_ctx_error(ctx));
        free(path);
        return s;
    }
    free(path);
    const char *emb = "embeddings.word_embeddings.weight";
    if (tb_st_find(&f, emb))
        m->prefix[0] = '\0';
    else if (tb_st_find(&f, "bert.embeddings.word_embeddings.weight"))
        strcpy(m->prefix, "bert.");
    else {
        tb_st_close(&f);
        return fail(ctx, TB_ERR_NOT_FOUND, "model.safetensors: no %s (nor bert.%s): not a "
                    "BertModel checkpoint", emb, emb);
    }
    tb_param_list list;
    s = tb_param_list_init(ctx, &list);
    if (s == TB_OK)
        s = tfm_params(ctx, &m->m, m->prefix, &list);
    if (s == TB_OK)
        s = tb_st_load_params(ctx, &f, &list, TB_ST_ALLOW_UNEXPECTED, NULL, NULL);
    if (s != TB_OK)
        s = fail(ctx, s, "model.safetensors: %s", tb_ctx_error(ctx));
    tb_param_list_free(&list);
    tb_st_close(&f);
    return s;
}

tb_status bert_model_open(tb_ctx *ctx, bert_model *m, const char *dir)
{
    if (!m)
        return fail(ctx, TB_ERR_NULL_ARG, "bert_model_open: no model");
    memset(m, 0, sizeof *m);
    if (!ctx || !dir)
        return fail(ctx, TB_ERR_NULL_ARG, "bert_model_open: no context or folder");
    char *text;
    size_t len;
    TRY(read_file(ctx, dir, "config.json", NULL, 0, &text, &len));
    tb_status s = bert_config_from_json(ctx, text, len, &m->cfg);
    free(text);
    if (s != TB_OK)
        return s;
    m->vocab_path = join(dir, "vocab.txt", NULL);
    if (!m->vocab_path)
        return fail(ctx, TB_ERR_NO_MEMORY, "bert_model: out of memory");
    if (!ex_check_regular(m->vocab_path, "vocabulary"))
        s = fail(ctx, TB_ERR_IO, "no vocabulary file %s", m->vocab_path);
    if (s == TB_OK)
        s = read_tokenizer_config(ctx, m, dir);
    if (s == TB_OK)
        s = read_st_config(ctx, m, dir);
    if (s == TB_OK)
        s = read_modules(ctx, m, dir);
    const tfm_config tc = bert_tfm_config(&m->cfg);
    tb_rng rng;
    tb_rng_init(&rng, 1); /* every value is overwritten by the file's */
    int built = 0;
    if (s == TB_OK && (s = tfm_init(ctx, &m->m, &tc, &rng)) == TB_OK)
        built = 1;
    if (s == TB_OK)
        s = load_weights(ctx, m, dir);
    if (s == TB_OK)
        s = tfm_freeze(ctx, &m->m, NULL);
    if (s != TB_OK) {
        if (built)
            tfm_free(&m->m);
        free(m->vocab_path);
        memset(m, 0, sizeof *m);
    }
    return s;
}

void bert_model_close(bert_model *m)
{
    if (!m)
        return;
    if (m->vocab_path)
        tfm_free(&m->m);
    free(m->vocab_path);
    memset(m, 0, sizeof *m);
}

/* ---- embedding -------------------------------------------------------------------- */

bert_embed_opts bert_embed_default_opts(void)
{
    bert_embed_opts o = {32, 2048};
    return o;
}

typedef struct order_item {
    size_t len, index;
} order_item;

static int longest_first(const void *a, const void *b)
{
    const order_item *x = a, *y = b;
    if (x->len != y->len)
        return x->len < y->len ? 1 : -1;
    return x->index < y->index ? -1 : x->index > y->index;
}

/* Pool rows [0, len) of h (T, C) into out (C), then normalise. */
static void pool_one(const bert_model *m, const float *h, size_t len, size_t C, float *out)
{
    if (m->pooling == BERT_POOL_CLS)
        memcpy(out, h, C * sizeof(float));
    else if (m->pooling == BERT_POOL_MAX) {
        for (size_t c = 0; c < C; c++) {
            float v = h[c];
            for (size_t t = 1; t < len; t++)
                v = h[t * C + c] > v ? h[t * C + c] : v;
            out[c] = v;
        }
    } else {
        for (size_t c = 0; c < C; c++) {
            double sum = 0;
            for (size_t t = 0; t < len; t++)
                sum += h[t * C + c];
            out[c] = (float)(sum / (double)len);
        }
    }
    if (m->normalize) {
        double ss = 0;
        for (size_t c = 0; c < C; c++)
            ss += (double)out[c] * out[c];
        const double nrm = sqrt(ss) > 1e-12 ? sqrt(ss) : 1e-12;
        for (size_t c = 0; c < C; c++)
            out[c] = (float)(out[c] / nrm);
    }
}

tb_status bert_embed_ids(tb_ctx *ctx, bert_model *m, const int32_t *const *ids,
                         const size_t *lens, size_t n, const bert_embed_opts *opts, float *out)
{
    if (!ctx || !m || !m->vocab_path || !opts || (n && (!ids || !lens || !out)))
        return fail(ctx, TB_ERR_NULL_ARG, "bert_embed: a required argument is NULL");
    if (!opts->batch)
        return fail(ctx, TB_ERR_INVALID_ARG, "bert_embed: batch size 0");
    const size_t C = m->cfg.hidden_size, P = m->cfg.max_position_embeddings;
    for (size_t i = 0; i < n; i++) {
        if (!ids[i] || lens[i] < 1 || lens[i] > P)
            return fail(ctx, TB_ERR_SHAPE, "bert_embed: sentence %zu has %zu tokens (1..%zu, the "
                        "model's positions)", i, lens[i], P);
        for (size_t t = 0; t < lens[i]; t++)
            if (ids[i][t] < 0 || (size_t)ids[i][t] >= m->cfg.vocab_size)
                return fail(ctx, TB_ERR_INVALID_ARG, "bert_embed: sentence %zu token %zu: id %d "
                            "outside the vocabulary of %zu", i, t, (int)ids[i][t],
                            m->cfg.vocab_size);
    }
    if (!n)
        return TB_OK;
    order_item *ord = malloc(n * sizeof *ord);
    if (!ord)
        return fail(ctx, TB_ERR_NO_MEMORY, "bert_embed: out of memory");
    for (size_t i = 0; i < n; i++)
        ord[i].len = lens[i], ord[i].index = i;
    qsort(ord, n, sizeof *ord, longest_first);
    tfm_acts acts;
    memset(&acts, 0, sizeof acts);
    size_t cap_b = 0, cap_t = 0;
    int32_t *bids = NULL;
    uint8_t *valid = NULL;
    tb_status s = TB_OK;
    for (size_t start = 0; start < n && s == TB_OK;) {
        const size_t T = ord[start].len; /* the longest of this batch */
        size_t B = opts->batch;
        if (opts->max_tokens && B > opts->max_tokens / T) /* B * T > max_tokens, no overflow */
            B = opts->max_tokens / T ? opts->max_tokens / T : 1;
        if (B > n - start)
            B = n - start;
        if (B > cap_b || T > cap_t) {
            tfm_acts_free(&acts);
            free(bids), free(valid);
            cap_b = B, cap_t = T;
            bids = malloc(B * T * sizeof *bids);
            valid = malloc(B * T);
            if (!bids || !valid) {
                s = fail(ctx, TB_ERR_NO_MEMORY, "bert_embed: out of memory");
                break;
            }
            if ((s = tfm_acts_init_inference(ctx, &acts, &m->m, B, T)) != TB_OK)
                break;
        }
        for (size_t b = 0; b < B; b++) {
            const size_t i = ord[start + b].index, L = lens[i];
            memcpy(bids + b * T, ids[i], L * sizeof *bids);
            memset(valid + b * T, 1, L);
            for (size_t t = L; t < T; t++)
                bids[b * T + t] = m->cfg.pad_token_id, valid[b * T + t] = 0;
        }
        tfm_input in;
        memset(&in, 0, sizeof in);
        in.batch = B, in.seq = T, in.ids = bids, in.key_valid = valid;
        s = tfm_forward(ctx, &m->m, &acts, TB_MODE_INFERENCE, NULL, &in);
        for (size_t b = 0; s == TB_OK && b < B; b++) {
            const size_t i = ord[start + b].index;
            pool_one(m, acts.out + b * T * C, lens[i], C, out + i * C);
        }
        start += B;
    }
    tfm_acts_free(&acts);
    free(bids), free(valid), free(ord);
    return s;
}

/* ---- text ------------------------------------------------------------------------ */

tb_status bert_tokenizer_load(tb_ctx *ctx, const bert_model *m, tb_wordpiece *wp)
{
    if (!m || !m->vocab_path || !wp)
        return fail(ctx, TB_ERR_NULL_ARG, "bert_tokenizer_load: no model or tokenizer");
    tb_wordpiece_config c = tb_wordpiece_default_config();
    c.lowercase = m->lowercase, c.split_cjk = m->split_cjk;
    c.strip_accents = m->strip_accents == BERT_ACCENTS_STRIP  ? TB_WP_ACCENTS_STRIP
                      : m->strip_accents == BERT_ACCENTS_KEEP ? TB_WP_ACCENTS_KEEP
                                                              : TB_WP_ACCENTS_AUTO;
    tb_status s = tb_wordpiece_load(ctx, wp, m->vocab_path, &c);
    if (s != TB_OK)
        return fail(ctx, s, "%s: %s", m->vocab_path, tb_ctx_error(ctx));
    if (wp->vocab_size > m->cfg.vocab_size || wp->cls_id < 0 || wp->sep_id < 0 ||
        wp->unk_id < 0) {
        s = fail(ctx, wp->vocab_size > m->cfg.vocab_size ? TB_ERR_SHAPE : TB_ERR_NOT_FOUND,
                 "%s: %zu entries (config.json: vocab_size %zu)%s", m->vocab_path, wp->vocab_size,
                 m->cfg.vocab_size,
                 wp->cls_id < 0 || wp->sep_id < 0 || wp->unk_id < 0
                     ? "; [CLS], [SEP] or [UNK] missing" : "");
        tb_wordpiece_free(wp);
    }
    return s;
}

/* Sentences are tokenized and embedded this many at a time (bounded id
 * buffers whatever n is; sorting by length works within a chunk). */
#define BERT_TEXT_CHUNK 1024

tb_status bert_embed(tb_ctx *ctx, bert_model *m, const tb_wordpiece *wp,
                     const char *const *texts, const size_t *lens, size_t n, size_t max_len,
                     const bert_embed_opts *opts, float *out)
{
    if (!ctx || !m || !m->vocab_path || !wp || !opts || (n && (!texts || !lens || !out)))
        return fail(ctx, TB_ERR_NULL_ARG, "bert_embed: a required argument is NULL");
    if (!max_len)
        max_len = m->max_seq_length;
    if (max_len < 2 || max_len > m->cfg.max_position_embeddings)
        return fail(ctx, TB_ERR_INVALID_ARG, "bert_embed: max_len %zu outside 2..%zu (the "
                    "model's positions)", max_len, m->cfg.max_position_embeddings);
    for (size_t i = 0; i < n; i++) {
        if (!texts[i] && lens[i])
            return fail(ctx, TB_ERR_NULL_ARG, "bert_embed: sentence %zu is NULL", i);
        const size_t bad = lens[i] ? ex_utf8_valid_prefix(texts[i], lens[i]) : 0;
        if (lens[i] && bad < lens[i])
            return fail(ctx, TB_ERR_FORMAT, "bert_embed: sentence %zu is not valid UTF-8 "
                        "(byte %zu: 0x%02x)", i, bad, (unsigned char)texts[i][bad]);
    }
    const size_t chunk = n < BERT_TEXT_CHUNK ? n : BERT_TEXT_CHUNK;
    int32_t *ids = chunk ? malloc(chunk * max_len * sizeof *ids) : NULL;
    const int32_t **rows = chunk ? malloc(chunk * sizeof *rows) : NULL;
    size_t *nt = chunk ? malloc(chunk * sizeof *nt) : NULL;
    tb_status s = TB_OK;
    if (chunk && (!ids || !rows || !nt))
        s = fail(ctx, TB_ERR_NO_MEMORY, "bert_embed: out of memory");
    for (size_t start = 0; s == TB_OK && start < n; start += chunk) {
        const size_t k = n - start < chunk ? n - start : chunk;
        for (size_t j = 0; s == TB_OK && j < k; j++) {
            rows[j] = ids + j * max_len;
            s = tb_wordpiece_encode(ctx, wp, texts[start + j], lens[start + j], NULL, 0, max_len,
                                    ids + j * max_len, NULL, &nt[j]);
            if (s != TB_OK)
                s = fail(ctx, s, "bert_embed: sentence %zu: %s", start + j, tb_ctx_error(ctx));
        }
        if (s == TB_OK)
            s = bert_embed_ids(ctx, m, rows, nt, k, opts, out + start * m->cfg.hidden_size);
    }
    free(ids), free(rows), free(nt);
    return s;
}
