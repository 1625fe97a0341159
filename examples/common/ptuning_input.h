/*
 * P-tuning on the shared transformer stack: the prompt encoder's n virtual
 * tokens (tblocks/ptuning.h) inserted into a frozen model's input as input
 * embeddings (tfm_input.embeds), as Hugging Face PEFT's
 * PeftModelForCausalLM (a GPT-2 decoder) and
 * PeftModelForSequenceClassification (a BERT encoder with a classifier) do
 * for P_TUNING, plus the original P-tuning's templates, PEFT-format export
 * and the freezing of the model.
 *
 * ---- Where the virtual tokens go ------------------------------------------
 * A template is G >= 2 groups of virtual tokens g_0 .. g_{G-1} (summing to
 * n) around G-1 segments of each row's L real tokens:
 *
 *     g_0 virtual | x[0, c_1) | g_1 virtual | x[c_1, c_2) | ... | x[c_{G-2}, L) | g_{G-1} virtual
 *
 * The cuts 0 <= c_1 <= ... <= c_{G-2} <= L are given per row ((B, G-2);
 * none for G = 2). Virtual tokens are taken from the encoder's output in
 * order: group i holds rows V_i .. V_i + g_i - 1 of it, V_i = g_0 + ... +
 * g_{i-1}. With c_0 = 0, in a row of n + L positions:
 *   - virtual token V_i + k (0 <= k < g_i) sits at position V_i + c_i + k;
 *   - real token t of segment i (c_i <= t < c_{i+1}) at t + V_{i+1}.
 * Positions are the stack's own 0 .. n+L-1 (wpe rows), virtual tokens
 * included, as GPT-2 numbers PEFT's inputs_embeds (transformers builds
 * position ids as arange(n + L) whatever the attention mask says).
 *
 *   prefix mode (PEFT, ptin_prefix(n)): groups (n, 0): the n prompt vectors,
 *     then the L token embeddings at positions n .. n+L-1 (PEFT concatenates
 *     prompts before inputs_embeds);
 *   template mode (the original P-tuning, e.g. (3, 3, 3) for an encoder, or
 *     (3, 3, 0) for a decoder, whose last group would follow the text it is
 *     meant to condition): the layout above with one cut per row.
 *
 * key_valid: 1 at every virtual position (PEFT prepends ones to the
 * attention mask), the row's attention mask at the real ones (NULL: all 1).
 *
 * Labels are Hugging Face's (B, L), unshifted (labels[t] is the token at t,
 * or -100): extended to the n + L positions with -100 at every virtual
 * position (PEFT prepends n of them), then shifted as GPT2LMHeadModel does:
 * the target of position j is the extended label of j + 1 and the last
 * position has none. So the virtual positions' own labels are ignored, but
 * the position just before a real token predicts it: in prefix mode the
 * last virtual token predicts labels[0], as under PEFT.
 *
 * ---- An encoder with a classifier (BERT, SEQ_CLS) ------------------------------
 * PeftModelForSequenceClassification builds the same prefix: the n prompts
 * are concatenated before the embeddings of the whole tokenized input, so
 * before [CLS] (ptin_build_encoder(); templates work the same way, the
 * original P-tuning's encoder layout):
 *   - positions: the stack's 0 .. n+L-1 over virtual and real tokens alike:
 *     BertEmbeddings given inputs_embeds and no position_ids takes
 *     arange(n + L) (PEFT drops any position_ids it is given), so [CLS]
 *     sits at position n and padding keeps its positions;
 *   - token types: 0 at every virtual position (PEFT prepends n zeros to
 *     token_type_ids), the row's own at the real ones; with no token types
 *     (NULL) the stack's default 0 everywhere, as BERT's buffered zeros;
 *   - key_valid: 1 at every virtual position, the attention mask at the
 *     real ones (PEFT prepends ones), as for the decoder;
 *   - no token labels: the labels (B) are the head's (bert_cls.h), whose
 *     pooler reads position 0 of every row, i.e. in prefix mode the FIRST
 *     VIRTUAL TOKEN's output, not [CLS]'s (as under PEFT: BertPooler takes
 *     hidden[:, 0] of the extended sequence; [CLS] at n is attended to
 *     like any other token). A template with g_0 = 0 would give the pooler
 *     [CLS] instead (PEFT has no templates).
 * ptin_bert_cls_forward() / _backward() wire it: encode, build, the
 * bidirectional stack, the head and its cross-entropy; backward runs the
 * head (its classifier's gradients added, as PEFT trains the classifier),
 * the frozen stack down to d_embeds and the gather below.
 *
 * ---- Training ---------------------------------------------------------------
 * The encoder runs once per step (ptin_encode()), its (n, d) output is
 * copied into every row; backward (ptin_backward()) sums the stack's
 * d_embeds over the n virtual positions of every row (batch rows in order)
 * and hands that (n, d) gradient to tb_ptuning_backward(). The rows of the
 * token embeddings' gradient are dropped: the model is frozen.
 *
 * Freezing (tfm_freeze(), tfm.h): every projection's Linear is frozen with
 * tb_linear_freeze() (gradient buffers released), every other parameter
 * (wte, wpe, the LayerNorms) marked not trainable, so backward computes no
 * parameter gradient of the stack (only the activations' gradients down
 * to d_embeds) and an optimizer built on the encoder's list (the only
 * trainable parameters) holds no state for the model. The embedding tables
 * and norms keep their gradient buffers (one allocation with their
 * values): tfm_freeze() reports the bytes.
 *
 * ---- Export (PEFT format) and resume -------------------------------------------
 * ptin_export_peft() writes what PeftModel.save_pretrained() writes for
 * P_TUNING: <dir>/adapter_model.safetensors with the single tensor
 * `prompt_embeddings` (n, d) (the encoder's output: PEFT saves
 * get_prompt_embedding_to_save()) and metadata {"format": "pt"}, and
 * <dir>/adapter_config.json (peft_type "P_TUNING", inference_mode true and
 * the PromptEncoderConfig fields, ptin_peft_info). PEFT's inference loads
 * them as its prompts without an encoder, as ptin_load_prompts() does here.
 * Resumable training, which PEFT's export cannot give, is the library's
 * checkpoint of the encoder's parameters (named under PTIN_PEFT_PREFIX, as
 * in PEFT's model state dict) with its optimizer and stream:
 * tb_checkpoint_save() / tb_checkpoint_load() on tb_ptuning_params().
 *
 * Every function returns a tb_status with a message in ctx.
 */
#ifndef EX_PTUNING_INPUT_H
#define EX_PTUNING_INPUT_H

#include <stddef.h>
#include <stdint.h>

#include "bert_cls.h"
#include "gpt.h"
#include "tblocks.h"
#include "tfm.h"

/* The prefix of the encoder's parameters in PEFT's state dict. */
#define PTIN_PEFT_PREFIX "prompt_encoder.default"

#define PTIN_MAX_GROUPS 16

typedef struct ptin_template {
    size_t n_groups;                /* G, 2 .. PTIN_MAX_GROUPS */
    size_t groups[PTIN_MAX_GROUPS]; /* virtual tokens per group */
} ptin_template;

/* PEFT's layout: groups (n, 0). */
ptin_template ptin_prefix(size_t n);

typedef struct ptin {
    ptin_template tpl;
    size_t n, d;             /* virtual tokens, width */
    size_t max_b, max_l;     /* capacity: rows, real tokens per row */
    float *prompts;          /* (n, d) the encoder's output (ptin_encode()) */
    float *d_prompts;        /* (n, d) its gradient, summed over the batch */
    float *embeds;           /* (max_b, n + max_l, d) the stack's input */
    float *d_embeds;         /* (max_b, n + max_l, d) its gradient */
    uint8_t *key_valid;      /* (max_b, n + max_l) */
    int32_t *targets;        /* (max_b, n + max_l) shifted targets, -100 ignored */
    int32_t *slot;           /* (max_b, n + max_l): t >= 0 real token t, -1 - v virtual v */
    int32_t *type_ids;       /* (max_b, n + max_l) token types (ptin_build_encoder()) */
    void *enc_cache;         /* the encoder's training cache */
    size_t enc_cache_bytes;
    size_t b, l;             /* the last ptin_build() */
    int has_targets;
    tfm_input in;            /* the stack's input of the last ptin_build() */
    void *buffer;
} ptin;

/* Buffers for up to max_b rows of max_l real tokens (n + max_l must fit
 * the stack's positions; the caller's tfm_acts need max_b x (n + max_l)),
 * and the cache of enc's training forward when enc is given (NULL for
 * inference from exported prompts). */
tb_status ptin_init(tb_ctx *ctx, ptin *p, const ptin_template *tpl, size_t d, size_t max_b,
                    size_t max_l, const tb_ptuning *enc);
void ptin_free(ptin *p);

/* p->prompts = enc's output (n, d); TB_MODE_TRAINING fills the cache for
 * ptin_backward(). */
tb_status ptin_encode(tb_ctx *ctx, ptin *p, const tb_ptuning *enc, tb_mode mode, tb_rng *rng);

/* The stack's input (p->in, and p->targets when labels are given) for a
 * batch: ids (B, L) looked up in wte, prompts (n, d) (p->prompts or
 * exported ones) at the template's positions, attention_mask (B, L) (NULL:
 * all real), labels (B, L) in Hugging Face's form (NULL: none), cuts
 * (B, G-2) (NULL when G = 2). TB_ERR_INVALID_ARG for an id outside wte or
 * cuts out of order (naming the row), TB_ERR_SHAPE beyond the capacity or
 * a width other than wte's. */
tb_status ptin_build(tb_ctx *ctx, ptin *p, const tb_embedding *wte, const float *prompts,
                     const int32_t *ids, const uint8_t *attention_mask, const int32_t *labels,
                     const size_t *cuts, size_t B, size_t L);

/* An encoder's input (see above): ptin_build() without token labels, with
 * m's wte, and token types type_ids (B, L) (NULL: none) moved to the real
 * tokens' positions, 0 at the virtual ones (p->in.type_ids). Also
 * TB_ERR_INVALID_ARG for a token type outside m's wtt (naming the row and
 * token) or token types for a model without one. */
tb_status ptin_build_encoder(tb_ctx *ctx, ptin *p, const tfm *m, const float *prompts,
                             const int32_t *ids, const int32_t *type_ids,
                             const uint8_t *attention_mask, const size_t *cuts, size_t B, size_t L);

/* The targets of the last build, or NULL if it had no labels. */
const int32_t *ptin_targets(const ptin *p);

/* p->d_prompts = d_embeds (B, n + L, d) of the last build gathered at the
 * virtual positions and summed over rows (in row order). */
tb_status ptin_gather(tb_ctx *ctx, ptin *p, const float *d_embeds);

/* ptin_gather(p->d_embeds), then tb_ptuning_backward() with the cache of
 * the last training ptin_encode(): adds the encoder's gradients. */
tb_status ptin_backward(tb_ctx *ctx, ptin *p, tb_ptuning *enc);

/* ---- GPT-2 under P-tuning ----------------------------------------------------------- */

/* encode (enc, training or not; NULL: p->prompts as they are, e.g. loaded
 * with ptin_load_prompts()), build, gpt_forward_input(): *loss as
 * GPT2LMHeadModel's under PEFT when labels are given; logits (B, n+L, V)
 * in a->logits. */
tb_status ptin_gpt_forward(tb_ctx *ctx, gpt *m, gpt_acts *a, ptin *p, const tb_ptuning *enc,
                           tb_mode mode, tb_rng *rng, const int32_t *ids,
                           const uint8_t *attention_mask, const int32_t *labels,
                           const size_t *cuts, size_t B, size_t L, float *loss);

/* Backward of the last ptin_gpt_forward() with labels: d_embeds through the
 * frozen model, then into enc's gradients (ADDED, scaled by dloss). */
tb_status ptin_gpt_backward(tb_ctx *ctx, gpt *m, gpt_acts *a, ptin *p, tb_ptuning *enc,
                            float dloss);

/* ---- BERT sequence classification under P-tuning ------------------------------------ */

/* encode (enc, or NULL: p->prompts as they are), ptin_build_encoder(),
 * tfm_forward() on the bidirectional stack m (a->max_t >= n + L), the head
 * h: logits (B, K) in h->logits, and with labels (B) (class ids or -100)
 * *loss as BertForSequenceClassification's under PEFT. */
tb_status ptin_bert_cls_forward(tb_ctx *ctx, tfm *m, tfm_acts *a, bert_cls *h, ptin *p,
                                const tb_ptuning *enc, tb_mode mode, tb_rng *rng,
                                const int32_t *ids, const int32_t *type_ids,
                                const uint8_t *attention_mask, const int32_t *labels,
                                const size_t *cuts, size_t B, size_t L, float *loss);

/* Backward of the last ptin_bert_cls_forward() with labels: the head (its
 * trainable Linears' gradients ADDED), the frozen stack down to d_embeds
 * (a->dt1 holds the head's dout), then enc's gradients (ADDED), all scaled
 * by dloss. */
tb_status ptin_bert_cls_backward(tb_ctx *ctx, tfm *m, tfm_acts *a, bert_cls *h, ptin *p,
                                 tb_ptuning *enc, float dloss);

/* ---- PEFT export ---------------------------------------------------------------------- */

/* adapter_config.json fields that are not the encoder's own. */
typedef struct ptin_peft_info {
    size_t num_attention_heads, num_layers; /* the base model's (PEFT fills them from it) */
    const char *task_type;                  /* "CAUSAL_LM" if NULL */
    const char *base_model_name_or_path;    /* null if NULL */
} ptin_peft_info;

/* Write dir/adapter_model.safetensors and dir/adapter_config.json (dir is
 * created if missing; each file written to a temporary and renamed). */
tb_status ptin_export_peft(tb_ctx *ctx, const char *dir, const float *prompts,
                           const tb_ptuning_config *cfg, const ptin_peft_info *info);

/* prompts (n, d) = `prompt_embeddings` of a PEFT P-tuning adapter file
 * (adapter_model.safetensors), checked to be (n, d). */
tb_status ptin_load_prompts(tb_ctx *ctx, const char *path, float *prompts, size_t n, size_t d);

#endif /* EX_PTUNING_INPUT_H */
