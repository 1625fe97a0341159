/*
 * A GPT-2-style decoder-only transformer wired from libtblocks' blocks, for
 * the example programs (the library itself stays blocks).
 *
 *   tokens (B, T) -> wte + wpe -> dropout
 *   n_layer x [ x = x + dropout(c_proj(attn(c_attn(ln_1(x)))))       causal
 *               x = x + dropout(mlp.c_proj(gelu(mlp.c_fc(ln_2(x))))) ]  GELU tanh
 *   ln_f -> logits = x wte^T (tied) -> cross-entropy
 *
 * Parameter names and layouts are GPT-2's ("wte.weight" (V, C),
 * "wpe.weight" (T, C), "h.{i}.ln_1.weight", "h.{i}.attn.c_attn.weight"
 * (C, 3C) in Conv1D's (in, out) layout, ..., "ln_f.bias"), so GPT-2-format
 * safetensors files load directly (with or without Hugging Face's
 * "transformer." prefix). Attention dropout and residual/embedding dropout
 * use the one `dropout` probability, as GPT2Config's pdrop values do when
 * equal.
 *
 * Shapes: B sequences of T tokens; rows R = B*T; C = n_embd; H = n_head.
 * Every function returns a tb_status; errors leave a message in ctx.
 */
#ifndef EX_GPT_H
#define EX_GPT_H

#include <stddef.h>
#include <stdint.h>

#include "tblocks.h"
#include "tfm.h"

typedef struct gpt_config {
    size_t n_layer, n_head, n_embd, block_size, vocab_size;
    float dropout;
} gpt_config;

typedef struct gpt {
    gpt_config cfg;
    tfm t;                /* the shared stack, configured by gpt_stack_config() */
    tb_linear lm_head;    /* a view over t.wte.weight: the tied output layer */
    tb_param_list params; /* GPT-2 names, no prefix */
} gpt;

/* The stack's configuration for a GPT-2 model: pre-LN (eps 1e-5), causal,
 * fused c_attn in Conv1D's (in, out) layout, d_ff = 4 C, tanh GELU, final
 * LayerNorm ln_f, one dropout probability everywhere, GPT-2's
 * initialisation and names (tfm_names_gpt2). */
tfm_config gpt_stack_config(const gpt_config *cfg);

/*
 * Limits of a configuration, so that sizes read from a file cannot drive
 * allocation (gpt_config_check() enforces them, so gpt_init() does too).
 * GPT-2 XL (48 layers, width 1600, 25 heads, vocabulary 50257, context
 * 1024: 1.56e9 parameters, 5.8 GB of activations for one sequence) fits.
 */
#define GPT_MAX_LAYER 256
#define GPT_MAX_EMBD 16384
#define GPT_MAX_VOCAB ((size_t)1 << 20)
#define GPT_MAX_CONTEXT ((size_t)1 << 16)
#define GPT_MAX_PARAMS ((size_t)1 << 31) /* 8 GiB of float32 values */
/* Training activations (gpt_acts_size()) of one sequence of the whole
 * context: 16 GiB. */
#define GPT_MAX_SEQ_ACT_BYTES ((size_t)1 << 34)

/* A valid configuration: every size in 1..its limit above, n_embd a
 * multiple of n_head, dropout in [0, 1), at most GPT_MAX_PARAMS parameters
 * and GPT_MAX_SEQ_ACT_BYTES of activations for one full-context sequence
 * (sizes computed without overflow). TB_ERR_INVALID_ARG with a message
 * naming the value (by its metadata key, e.g. "gpt.n_layer") otherwise. */
tb_status gpt_config_check(tb_ctx *ctx, const gpt_config *cfg);

/* Parameters of a configuration: V C + T C + L (12 C^2 + 13 C) + 2 C.
 * TB_ERR_OVERFLOW if that does not fit in size_t. */
tb_status gpt_param_count(const gpt_config *cfg, size_t *count);

/* ---- configurations in checkpoint files ------------------------------------ */

/* The configuration as metadata pairs "gpt.n_layer", "gpt.n_head",
 * "gpt.n_embd", "gpt.block_size", "gpt.vocab_size" (decimal integers) and
 * "gpt.dropout" (a decimal real with 17 significant digits, so it reads
 * back exactly): the form gpt_config_from_checkpoint() reads. The values
 * live in *text, which must outlive meta. */
#define GPT_CONFIG_N_META 6
typedef struct gpt_config_text {
    char value[GPT_CONFIG_N_META][32];
} gpt_config_text;
void gpt_config_meta(const gpt_config *cfg, gpt_config_text *text,
                     tb_st_meta meta[GPT_CONFIG_N_META]);

/*
 * The configuration of a checkpoint of this model (written with
 * tb_checkpoint_save() and gpt_config_meta()), validated before anything
 * is allocated for it, so that a file cannot make a program build a model
 * it cannot hold:
 *  - every gpt_config_meta() key present and parsed strictly (ex_text.h:
 *    digits only, no sign, hexadecimal or overflow; the dropout a finite
 *    decimal) and within the limits of gpt_config_check(): TB_ERR_FORMAT
 *    naming the key otherwise;
 *  - the tensors exactly those the configuration implies: every parameter
 *    under its GPT-2 name (no prefix) with its shape, and optionally the
 *    Adam state of every parameter ("optimizer.m.<name>" and
 *    "optimizer.v.<name>", plus "optimizer.vmax.<name>" with AMSGrad) with
 *    the parameter's shape, in a float dtype (F32, F16, BF16, F64); nothing
 *    else. TB_ERR_NOT_FOUND (a missing tensor), TB_ERR_SHAPE (a shape, both
 *    in the message), TB_ERR_INVALID_ARG (an unexpected tensor) or
 *    TB_ERR_UNSUPPORTED (a dtype), naming the tensor.
 * It allocates nothing and reads only the file's index (names, dtypes,
 * shapes) and metadata. *cfg is written only on success. Other gpt.* keys
 * (a program's own state) are left to the caller. n_head is the one value
 * no tensor shape shows (the heads split the width): it is checked against
 * the limits and the width only.
 */
tb_status gpt_config_from_checkpoint(tb_ctx *ctx, const tb_st_file *f, gpt_config *cfg);

/* Build the model with GPT-2's initialisation (normal(0, 0.02) weights,
 * residual projections scaled by 1/sqrt(2 n_layer), zero biases, LayerNorm
 * 1 and 0), drawn from rng. */
tb_status gpt_init(tb_ctx *ctx, gpt *m, const gpt_config *cfg, tb_rng *rng);
void gpt_free(gpt *m);

/* Append the parameters to list under prefix ("" or "transformer."). */
tb_status gpt_param_list(tb_ctx *ctx, gpt *m, const char *prefix, tb_param_list *list);

/* Load a GPT-2-format safetensors file (names with or without the
 * "transformer." prefix; "lm_head.weight" and the attn.bias buffers of
 * older files are ignored). A missing, mismatched or unexpected tensor is
 * an error naming it; nothing is written then. */
tb_status gpt_load_weights(tb_ctx *ctx, gpt *m, const char *path);

/* Activations of one training step on up to B x T tokens: the stack's and
 * the LM head's. */
typedef struct gpt_acts {
    tfm_acts t;            /* the stack (its input, every layer, its output t.out) */
    float *logits;         /* (R, V) */
    float *dlogits;        /* (R, V) */
    void *ce_cache;        /* cross-entropy cache for R rows */
    size_t ce_cache_bytes;
    void *buffer;          /* the head's buffers */
    size_t bytes;          /* of both buffers, the stack's and the head's */
} gpt_acts;

/* Bytes gpt_acts_init() allocates for up to max_b x max_t tokens of a
 * configuration (computed without overflow: TB_ERR_OVERFLOW otherwise). */
tb_status gpt_acts_size(tb_ctx *ctx, const gpt_config *cfg, size_t max_b, size_t max_t,
                        size_t *bytes);
tb_status gpt_acts_init(tb_ctx *ctx, gpt_acts *a, const gpt *m, size_t max_b, size_t max_t);
void gpt_acts_free(gpt_acts *a);

/* Forward on tokens (B, T) (T <= block_size). In TB_MODE_TRAINING dropout
 * draws from rng. With targets (B, T) (-100 ignored) *loss receives the
 * mean cross-entropy; logits (R, V) are left in a->logits either way. */
tb_status gpt_forward(tb_ctx *ctx, gpt *m, gpt_acts *a, tb_mode mode, tb_rng *rng,
                      const int32_t *tokens, const int32_t *targets, size_t B, size_t T,
                      float *loss);

/* Backward of the last forward (which had targets): ADDS dloss * the
 * gradient of the mean loss to every parameter gradient. tokens are the
 * forward's (the stack kept a pointer to them). */
tb_status gpt_backward(tb_ctx *ctx, gpt *m, gpt_acts *a, const int32_t *tokens,
                       const int32_t *targets, float dloss);

/* The same on any input of the stack (tfm_input: token ids or input
 * embeddings (B, T, C), key_valid): what P-tuning feeds (ptuning_input.h).
 * gpt_forward() is this with in = {B, T, tokens}. */
tb_status gpt_forward_input(tb_ctx *ctx, gpt *m, gpt_acts *a, tb_mode mode, tb_rng *rng,
                            const tfm_input *in, const int32_t *targets, float *loss);

/* gpt_backward(), and when d_embeds is non-NULL the gradient w.r.t. the
 * stack's input embeddings (B, T, C) written there (tfm_backward()). */
tb_status gpt_backward_embeds(tb_ctx *ctx, gpt *m, gpt_acts *a, const int32_t *targets,
                              float dloss, float *d_embeds);

/* ---- incremental decoding -------------------------------------------------- */

typedef struct gpt_decoder {
    tfm_decoder t;  /* the stack's KV caches and buffers */
    float *logits;  /* (batch, V) the last position's logits of each sequence */
} gpt_decoder;

/* Caches for `batch` sequences of up to max_len tokens, feeding at most
 * max_new tokens per call. */
tb_status gpt_decoder_init(tb_ctx *ctx, gpt_decoder *d, const gpt *m, size_t batch,
                           size_t max_len, size_t max_new);
void gpt_decoder_free(gpt_decoder *d);
void gpt_decoder_reset(gpt_decoder *d);

/* Feed n new tokens per sequence (tokens (batch, n)); the logits of the last
 * one of each sequence land in d->logits (batch, V). After an error the
 * caches may disagree between layers: reset the decoder. With all_logits
 * non-NULL, the logits of every new position are copied there (batch, n, V). */
tb_status gpt_decoder_step(tb_ctx *ctx, const gpt *m, gpt_decoder *d, const int32_t *tokens,
                           size_t n, float *all_logits);

/* Make sequence b a copy of sequence src[b] (beam search), for every b. */
tb_status gpt_decoder_reorder(gpt_decoder *d, const size_t *src);

#endif /* EX_GPT_H */
