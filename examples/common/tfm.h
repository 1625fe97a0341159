/*
 * The transformer stack every example is built on: embeddings, N layers and
 * an optional final norm, configured for a GPT-2-style decoder, a BERT-style
 * encoder or anything between. Heads (LM head, pooler, classifier) and losses
 * belong to the caller, which reads the stack's output (B, T, C) and hands
 * back its gradient.
 *
 *   in:  token ids (B, T) -> wte, or caller-given input embeddings (B, T, C)
 *        + wpe[position] (+ wtt[token type]) (-> embedding norm) -> dropout
 *   layer, pre-norm (GPT-2):
 *        x = x + drop(attn_out(attn(qkv(norm_attn(x)))))
 *        x = x + drop(fc_out(gelu(fc_in(norm_mlp(x)))))
 *   layer, post-norm (BERT):
 *        x = norm_attn(x + drop(attn_out(attn(qkv(x)))))
 *        x = norm_mlp(x + drop(fc_out(gelu(fc_in(x)))))
 *   out: (-> final norm) (B, T, C)
 *
 * attn is causal or bidirectional; a key-valid mask (B, T) keeps every
 * query away from padding. A deep prompt (tfm_prefix: prefix tuning,
 * P-tuning v2) puts n trainable keys and values in front of every
 * layer's. qkv is one fused projection C -> 3C (GPT-2's c_attn) or three
 * C -> C ones (BERT's query, key, value). Every projection
 * is a tfm_proj: a Linear the stack owns, through one indirection that an
 * adapter (LoRA) can take over without any call site here changing.
 *
 * Names: a tfm_names table per checkpoint convention (tfm_names_gpt2,
 * tfm_names_bert) gives every parameter its name, so files in that
 * convention load by name.
 *
 * Shapes: B sequences of T tokens, rows R = B*T, C = d_model, F = d_ff,
 * H = n_head. Every function returns a tb_status with a message in ctx.
 * Results are bitwise identical for any thread count (every block is).
 */
#ifndef EX_TFM_H
#define EX_TFM_H

#include <stddef.h>
#include <stdint.h>

#include "tblocks.h"

/* ---- configuration ---------------------------------------------------------- */

/* Where the norms sit in a layer. */
typedef enum tfm_norm_place {
    TFM_PRE_NORM = 0, /* x + f(norm(x)): GPT-2, most decoders */
    TFM_POST_NORM = 1 /* norm(x + f(x)): the original transformer, BERT */
} tfm_norm_place;

/* Which norm: LayerNorm everywhere but the norm_compare example. */
typedef enum tfm_norm_kind {
    TFM_LAYERNORM = 0,
    TFM_BATCHNORM = 1, /* over every real position of the batch (key_valid masks padding) */
    TFM_RMSNORM = 2
} tfm_norm_kind;

typedef enum tfm_qkv_form {
    TFM_QKV_FUSED = 0,   /* one C -> 3C projection, outputs [q | k | v] (GPT-2) */
    TFM_QKV_SEPARATE = 1 /* three C -> C projections (BERT) */
} tfm_qkv_form;

/* Parameter names of one checkpoint convention. Module names; the blocks
 * append ".weight" and ".bias". `layer` is a printf format taking the layer
 * index (%zu); layer modules are named after it and a '.'. A NULL entry is
 * a module the convention does not have. */
typedef struct tfm_names {
    const char *wte, *wpe, *wtt; /* token, position, token-type embeddings */
    const char *embed_norm;      /* norm after the embeddings */
    const char *layer;           /* "h.%zu" */
    const char *norm_attn, *norm_mlp;
    const char *qkv;             /* the fused projection */
    const char *q, *k, *v;       /* the separate ones */
    const char *attn_out, *fc_in, *fc_out;
    const char *final_norm;
} tfm_names;

/* GPT-2's names (transformers' GPT2Model, no "transformer." prefix): wte,
 * wpe, h.{i}.ln_1, h.{i}.attn.c_attn, h.{i}.attn.c_proj, h.{i}.ln_2,
 * h.{i}.mlp.c_fc, h.{i}.mlp.c_proj, ln_f. */
extern const tfm_names tfm_names_gpt2;
/* BERT's names (transformers' BertModel, no "bert." prefix):
 * embeddings.{word,position,token_type}_embeddings, embeddings.LayerNorm,
 * encoder.layer.{i}.attention.self.{query,key,value},
 * encoder.layer.{i}.attention.output.{dense,LayerNorm},
 * encoder.layer.{i}.intermediate.dense, encoder.layer.{i}.output.{dense,LayerNorm}. */
extern const tfm_names tfm_names_bert;

typedef struct tfm_config {
    size_t n_layer, n_head, d_model, d_ff;
    size_t vocab_size;      /* rows of wte */
    size_t max_positions;   /* rows of wpe: the longest sequence */
    size_t type_vocab_size; /* rows of wtt; 0: no token-type embedding */
    int has_pad_token;      /* nonzero: wte's row pad_token_id gets no gradient (BERT's [PAD],
                               PyTorch's padding_idx) */
    int32_t pad_token_id;
    tfm_norm_place norm_place;
    tfm_norm_kind norm_kind;
    int embed_norm;         /* a norm after the embeddings (BERT) */
    int final_norm;         /* a norm after the last layer (GPT-2's ln_f) */
    float norm_eps;
    float bn_momentum;      /* TFM_BATCHNORM only: running-statistics momentum (PyTorch: 0.1) */
    int causal;             /* causal (decoder) or bidirectional (encoder) attention */
    tfm_qkv_form qkv;
    tb_linear_layout layout; /* every projection's weight layout: TB_LINEAR_IN_OUT as
                                GPT-2's Conv1D, TB_LINEAR_OUT_IN as nn.Linear */
    tb_gelu_approx gelu;    /* TB_GELU_TANH (GPT-2's gelu_new), TB_GELU_EXACT (BERT) or TB_GELU_QUICK (CLIP) */
    float hidden_dropout;   /* after the embeddings and on each branch's output */
    float attn_dropout;     /* on the attention weights */
    /* Initialisation: 0 keeps each block's own default (PyTorch's);
     * otherwise every embedding and projection weight N(0, init_std), biases
     * zero, norms 1 and 0, and with scale_residual_init the two projections
     * that end a branch (attn_out, fc_out) N(0, init_std / sqrt(2 n_layer))
     * (GPT-2's scheme). */
    float init_std;
    int scale_residual_init;
    const tfm_names *names;
} tfm_config;

/* Limits, so that sizes read from a file cannot drive allocation. */
#define TFM_MAX_LAYER 256
#define TFM_MAX_WIDTH 65536 /* d_model and d_ff */
#define TFM_MAX_VOCAB ((size_t)1 << 20)
#define TFM_MAX_POSITIONS ((size_t)1 << 16)

/* Every size in range (1..limit; type_vocab_size may be 0), d_model a
 * multiple of n_head, dropouts in [0, 1), eps finite and > 0, enums known,
 * names given for every module the configuration has. TB_ERR_INVALID_ARG
 * naming the field otherwise. */
tb_status tfm_config_check(tb_ctx *ctx, const tfm_config *cfg);

/* The name and shape of every tensor tfm_params() lists for a
 * configuration, in the same order, without building the model (to check a
 * file against a configuration before allocating it). *specs is malloc()ed
 * (free() it); *count entries. BatchNorm's running statistics are listed
 * too, as tfm_params() lists them. */
typedef struct tfm_param_spec {
    char name[TB_PARAM_NAME_MAX];
    size_t ndim;
    size_t shape[2];
} tfm_param_spec;
tb_status tfm_param_specs(tb_ctx *ctx, const tfm_config *cfg, const char *prefix,
                          tfm_param_spec **specs, size_t *count);

/* The spec of the one parameter called name (prefix included) in a valid
 * configuration: 1 and *spec filled, or 0 if the configuration has no such
 * parameter. Allocates nothing and costs one walk of a single layer (a
 * layer's parameters are named by the layer format, e.g. "h.%zu", with the
 * index in canonical decimal below n_layer). */
int tfm_param_spec_of(const tfm_config *cfg, const char *prefix, const char *name,
                      tfm_param_spec *spec);
/* How many tensors tfm_params() lists for a valid configuration, and the one
 * at index (1, or 0 past the end); neither allocates. */
size_t tfm_param_spec_count(const tfm_config *cfg);
int tfm_param_spec_at(const tfm_config *cfg, const char *prefix, size_t index,
                      tfm_param_spec *spec);

/* ---- projections: one indirection for every Linear -------------------------- */

/* An adapter that takes over a projection. It wraps the projection's Linear
 * (self knows where it is) and computes y from x, and in backward dx from dy
 * (and its own parameters' gradients), with the Linear's shapes. mode and
 * rng let it apply its own dropout in training. */
typedef struct tfm_proj_ops {
    tb_status (*forward)(tb_ctx *ctx, void *self, tb_mode mode, tb_rng *rng,
                         const tb_tensor *x, tb_tensor *y);
    tb_status (*backward)(tb_ctx *ctx, void *self, const tb_tensor *x, const tb_tensor *dy,
                          tb_tensor *dx);
} tfm_proj_ops;

typedef struct tfm_proj {
    tb_linear linear;        /* the base layer, owned by the stack */
    const tfm_proj_ops *ops; /* NULL: the Linear itself */
    void *self;              /* the adapter, passed to ops */
} tfm_proj;

/* y = proj(x): x (R, in) -> y (R, out). */
tb_status tfm_proj_forward(tb_ctx *ctx, const tfm_proj *p, tb_mode mode, tb_rng *rng,
                           const tb_tensor *x, tb_tensor *y);
/* dx = d proj / dx (R, in) (or NULL), gradients added to the parameters. */
tb_status tfm_proj_backward(tb_ctx *ctx, tfm_proj *p, const tb_tensor *x, const tb_tensor *dy,
                            tb_tensor *dx);

/* ---- norms: LayerNorm, BatchNorm or RMSNorm behind one interface ------------- */

typedef struct tfm_norm {
    tfm_norm_kind kind;
    tb_layernorm ln;
    tb_batchnorm bn;
    tb_rmsnorm rms;
} tfm_norm;

/* ---- the model ----------------------------------------------------------------- */

typedef struct tfm_layer {
    tfm_norm norm_attn, norm_mlp;
    tfm_proj qkv;       /* TFM_QKV_FUSED: C -> 3C */
    tfm_proj q, k, v;   /* TFM_QKV_SEPARATE: C -> C each */
    tfm_proj attn_out;  /* C -> C */
    tfm_proj fc_in;     /* C -> F */
    tfm_proj fc_out;    /* F -> C */
} tfm_layer;

/* A deep prompt (prefix tuning, P-tuning v2): per layer, n key and n
 * value rows prepended to the layer's keys and values before attention,
 * the same for every batch row. With T tokens a layer's attention sees
 * Tk = n + T keys: keys 0..n-1 are the prefix (always valid, whatever the
 * padding), key n + t is token t, and with causal attention token t sees
 * keys 0..n+t (the core's masks are aligned at the end). The arrays belong
 * to the caller (examples/common/prefix_tuning.h fills them from PEFT's
 * prefix tensor); the stack reads the values at every forward (and the
 * decoder at every reset) and adds into the gradients in backward. */
typedef struct tfm_prefix {
    size_t n;              /* prefix positions per layer, >= 1 */
    size_t ld;             /* floats from one row to the next in every array below, >= C */
    size_t first_position; /* wpe position of token 0 (transformers counts the prefix as past
                              tokens: n) */
    float *const *key;     /* n_layer pointers: layer l's keys (n, C) with row stride ld, heads
                              side by side as the layer's own keys */
    float *const *value;   /* n_layer pointers: layer l's values, the same layout */
    float *const *dkey;    /* n_layer pointers: where backward adds dL/dkey (summed over the
                              batch), same layout; NULL (array or entry): no gradient */
    float *const *dvalue;  /* the same for the values */
} tfm_prefix;

typedef struct tfm {
    tfm_config cfg;
    tb_embedding wte;   /* (V, C) */
    tb_embedding wpe;   /* (max_positions, C) */
    tb_embedding wtt;   /* (type_vocab_size, C), if any */
    tfm_norm embed_norm, final_norm;
    tfm_layer *layers;  /* n_layer */
    tb_attention_config attn;
    const tfm_prefix *prefix; /* NULL: none (tfm_set_prefix()); not owned */
} tfm;

/* Build the blocks, initialised as cfg says from rng (in a fixed order:
 * the embeddings, then each layer's modules in computation order). */
tb_status tfm_init(tb_ctx *ctx, tfm *m, const tfm_config *cfg, tb_rng *rng);
void tfm_free(tfm *m);

/* Attach a deep prompt (or detach it with NULL): checked (n >= 1, ld >= C,
 * first_position below max_positions, every key and value pointer given),
 * then kept by pointer; p must outlive its use. Activations and decoders
 * size their buffers for the prefix the model has when they are
 * initialised: initialise them after attaching. Without a prefix every
 * result is bitwise what it was before prefixes existed. */
tb_status tfm_set_prefix(tb_ctx *ctx, tfm *m, const tfm_prefix *p);

/* Append every parameter to list under prefix ("" or e.g. "transformer.",
 * "bert."), named by cfg.names, in computation order. */
tb_status tfm_params(tb_ctx *ctx, tfm *m, const char *prefix, tb_param_list *list);

/* Call fn on every projection, in tfm_params() order, with its module name
 * (prefix + the names table's, e.g. "h.0.attn.c_attn"): how an adapter
 * finds the Linears it wraps (examples/common/tfm_lora.h). Stops at the
 * first status fn returns other than TB_OK and returns it. */
typedef tb_status (*tfm_proj_visit)(tb_ctx *ctx, void *user, const char *name, tfm_proj *p);
tb_status tfm_visit_projs(tb_ctx *ctx, tfm *m, const char *prefix, tfm_proj_visit fn,
                          void *user);

/* Freeze the whole stack (a frozen base model under an adapter that is
 * not a projection's, e.g. P-tuning): every projection's Linear, the
 * embeddings and the LayerNorms or RMSNorms with their *_freeze() (gradient
 * buffers released), so the stack keeps no gradient buffer and needs no
 * optimizer state. Backward then adds no parameter gradient of the stack
 * and still computes the activations' gradients (d_embeds). A BatchNorm
 * (norm_compare's) is only marked not trainable: its gradients share an
 * allocation with its running statistics; *kept_grad_bytes (may be NULL)
 * receives the bytes of gradient buffers still held (0 without BatchNorm). */
tb_status tfm_freeze(tb_ctx *ctx, tfm *m, size_t *kept_grad_bytes);

/* ---- forward and backward --------------------------------------------------------- */

/* One batch's input. ids or embeds, not both; the pointers must stay valid
 * until the matching tfm_backward(). */
typedef struct tfm_input {
    size_t batch, seq;         /* B, T (T <= max_positions) */
    const int32_t *ids;        /* (B, T) token ids, or NULL with embeds */
    const float *embeds;       /* (B, T, C) input embeddings replacing wte's rows, or NULL */
    const int32_t *type_ids;   /* (B, T) token types, or NULL (all 0; with wtt only) */
    const uint8_t *key_valid;  /* (B, T) nonzero: a real token; 0: padding no query
                                  attends to; NULL: all real */
} tfm_input;

/* What one layer keeps for backward. */
typedef struct tfm_layer_acts {
    float *x;        /* (R, C) layer input */
    float *h1;       /* (R, C) pre-norm: norm_attn(x), the projections' input; post-norm: unused */
    float *qkv;      /* fused: (R, 3C) [q | k | v] per row; separate: q, k, v as three (R, C) */
    float *att;      /* (R, C) attention output, heads side by side */
    float *p;        /* (R, C) attn_out(att) after dropout */
    float *r1;       /* (R, C) x + p */
    float *x1;       /* (R, C) post-norm: norm_attn(r1); pre-norm: r1 itself */
    float *h2;       /* (R, C) pre-norm: norm_mlp(x1), fc_in's input; post-norm: x1 itself */
    float *f;        /* (R, F) fc_in output */
    float *g;        /* (R, F) gelu(f) */
    float *mo;       /* (R, C) fc_out(g) after dropout */
    float *r2;       /* (R, C) post-norm: x1 + mo (the layer output is norm_mlp(r2));
                        pre-norm: the next layer's x */
    void *norm_attn_cache, *norm_mlp_cache, *att_cache;
    tb_dropout_cache drop_attn, drop_mlp;
    tb_attention_mask mask; /* key_valid and this layer's attention dropout */
} tfm_layer_acts;

typedef struct tfm_acts {
    size_t max_b, max_t;     /* capacity */
    size_t b, t;             /* the last forward's batch */
    tfm_input in;            /* the last forward's input */
    size_t norm_cache_bytes, att_cache_bytes;
    int32_t *pos;            /* (R) positions 0..T-1 of every row */
    float *emb;              /* (R, C) sum of the embeddings */
    float *emb_n;            /* (R, C) embed_norm(emb), if there is an embedding norm */
    void *embed_norm_cache;
    tb_dropout_cache drop_emb;
    tfm_layer_acts *layer;   /* n_layer + 1: layer[n_layer].x is the last layer's output */
    float *out;              /* (R, C) the stack's output: final_norm(layer[n_layer].x),
                                or layer[n_layer].x itself */
    void *final_norm_cache;
    /* Backward scratch. */
    float *dx, *dt1, *dt2;       /* (R, C) each */
    float *dt3;                  /* (R, C), separate q, k, v only (else NULL) */
    float *df;                   /* (R, F) */
    float *dqkv;                 /* (R, 3C) */
    /* A deep prompt's buffers (for the model's prefix at tfm_acts_init()): */
    size_t max_prefix;           /* prefix positions they hold; 0: none (no buffers) */
    size_t n_prefix;             /* the last forward's (0: it had no prefix) */
    float *pk, *pv;              /* (B, n + T, C) each: one layer's keys and values with the
                                    prefix in front (rebuilt per layer in forward and backward) */
    float *dpk, *dpv;            /* (B, n + T, C) their gradients */
    uint8_t *pvalid;             /* (B, n + T) key_valid with the prefix keys valid */
    int inference_only;          /* tfm_acts_init_inference()'s: one layer's buffers */
    void *buffer;
    size_t bytes;
} tfm_acts;

/* Bytes tfm_acts_init() allocates for up to max_b x max_t tokens; with
 * _prefix, for a model with a prefix of n_prefix positions (0: none). */
tb_status tfm_acts_size(tb_ctx *ctx, const tfm_config *cfg, size_t max_b, size_t max_t,
                        size_t *bytes);
tb_status tfm_acts_size_prefix(tb_ctx *ctx, const tfm_config *cfg, size_t max_b, size_t max_t,
                               size_t n_prefix, size_t *bytes);
tb_status tfm_acts_init(tb_ctx *ctx, tfm_acts *a, const tfm *m, size_t max_b, size_t max_t);
void tfm_acts_free(tfm_acts *a);

/* Activations for inference only (embedding, classifying, evaluating):
 * one layer's buffers, which every layer reuses (the stream alternates
 * between two), fc_in's output activated in place, no backward scratch:
 * for MiniLM (6 layers) about 15% of tfm_acts_init()'s bytes. tfm_forward() runs
 * the same layer code on them and its output a->out is bitwise what
 * tfm_acts_init()'s give in TB_MODE_INFERENCE; a->layer[l] then holds no
 * particular layer's values. A TB_MODE_TRAINING forward and tfm_backward()
 * are refused (TB_ERR_INVALID_ARG). The size call takes the prefix
 * positions of the model it will serve (0: none). Freed by
 * tfm_acts_free(). */
tb_status tfm_acts_size_inference(tb_ctx *ctx, const tfm_config *cfg, size_t max_b, size_t max_t,
                                  size_t n_prefix, size_t *bytes);
tb_status tfm_acts_init_inference(tb_ctx *ctx, tfm_acts *a, const tfm *m, size_t max_b,
                                  size_t max_t);

/* Forward: a->out (B, T, C) receives the output. In TB_MODE_TRAINING
 * dropout draws from rng (in a fixed order: embeddings, then per layer the
 * attention weights, the attention branch, the MLP branch). */
tb_status tfm_forward(tb_ctx *ctx, tfm *m, tfm_acts *a, tb_mode mode, tb_rng *rng,
                      const tfm_input *in);

/* Backward of the last forward: dout (B, T, C) is the gradient w.r.t.
 * a->out (it is read, not changed; it may be a->dt1, which backward uses
 * as scratch only after reading it). Adds every parameter's gradient and,
 * when d_embeds is non-NULL, writes the gradient w.r.t. the input
 * embeddings (B, T, C) (with ids: w.r.t. the rows wte gave, which backward
 * also adds into wte's gradient). */
tb_status tfm_backward(tb_ctx *ctx, tfm *m, tfm_acts *a, const float *dout, float *d_embeds);

/* ---- incremental decoding (causal stacks) -------------------------------------------- */

typedef struct tfm_decoder {
    size_t batch, max_len, max_new, n_layer;
    tb_kv_cache *kv;   /* one per layer */
    int32_t *pos;      /* (batch * max_new) */
    float *x;          /* (batch * max_new, C) the running stream */
    float *h;          /* (batch * max_new, C) norm outputs, and the output */
    float *att, *p;    /* (batch * max_new, C) */
    float *qkv;        /* (batch * max_new, 3C) */
    float *f;          /* (batch * max_new, F) */
    const tfm_prefix *prefix; /* the model's at init, or NULL */
    size_t n_prefix;   /* its positions, held at the front of every cache (0: none) */
    float *pk, *pv;    /* (batch, n_prefix, C) the prefix of one layer for every sequence */
    void *buffer;
} tfm_decoder;

/* KV caches for `batch` sequences of up to max_len tokens, fed at most
 * max_new per call. Only for causal stacks. With a prefix on the model
 * (tfm_set_prefix() before this call) every layer's cache holds its n
 * prefix positions in front of the tokens (max_len + n positions): they
 * are entered at init and at every reset (reading the prefix's values
 * then), and the tokens take positions first_position, first_position + 1,
 * ... as in tfm_forward(). */
tb_status tfm_decoder_init(tb_ctx *ctx, tfm_decoder *d, const tfm *m, size_t batch,
                           size_t max_len, size_t max_new);
void tfm_decoder_free(tfm_decoder *d);
void tfm_decoder_reset(tfm_decoder *d);
/* Tokens per sequence the caches hold (the prefix not counted). */
size_t tfm_decoder_len(const tfm_decoder *d);

/* Feed n new tokens per sequence (ids (batch, n)); the outputs of the new
 * positions land in d->h (batch, n, C), computed as tfm_forward() in
 * inference would compute them. After an error the caches may disagree
 * between layers: reset the decoder. */
tb_status tfm_decoder_step(tb_ctx *ctx, const tfm *m, tfm_decoder *d, const int32_t *ids,
                           size_t n);

/* Make sequence b a copy of sequence src[b] (beam search), for every b. */
tb_status tfm_decoder_reorder(tfm_decoder *d, const size_t *src);

#endif /* EX_TFM_H */
