/*
 * Prefix tuning (Li & Liang, 2021) and P-tuning v2 ("deep prompts", Liu et
 * al., 2022) on the shared stack, as Hugging Face PEFT's PREFIX_TUNING
 * (PrefixTuningConfig, peft 0.21): every layer's attention gets n extra
 * key/value positions in front of the tokens', and only they train.
 *
 * The parameters are PEFT's PrefixEncoder:
 *   without projection: embedding.weight (n, L*2*C), the keys and values
 *     themselves;
 *   with prefix_projection: embedding.weight (n, C) -> transform.0 (Linear
 *     C -> E) -> tanh -> transform.2 (Linear E -> L*2*C), recomputed by
 *     prefix_tuning_forward() before each stack forward.
 * Row i of the (n, L*2*C) result is virtual token i; its columns are
 *     [layer 0 key | layer 0 value | layer 1 key | layer 1 value | ...],
 * C each, heads side by side (head h at h*D) as in the layer's own keys:
 * PEFT views the tensor as (n, 2L, H, D) and takes index 2l as layer l's
 * key and 2l + 1 as its value. With transformers the prefix counts as past
 * tokens, so the real tokens take positions n, n + 1, ... (first_position
 * = n), and padding masks get n leading valid keys.
 *
 * PEFT saves the (n, L*2*C) result as "prompt_embeddings" in
 * adapter_model.safetensors (prefix_tuning_save()/_load()).
 *
 * A training step: prefix_tuning_forward(), the model's forward and
 * backward (with every model parameter frozen: trainable 0), then
 * prefix_tuning_backward(), and an optimizer over prefix_tuning_params()
 * only. Shapes: n virtual tokens, L layers, C = d_model, E the projection's
 * hidden width.
 */
#ifndef EX_PREFIX_TUNING_H
#define EX_PREFIX_TUNING_H

#include <stddef.h>

#include "tblocks.h"
#include "tfm.h"

typedef struct prefix_tuning_config {
    size_t num_virtual_tokens;  /* n, >= 1 */
    int prefix_projection;      /* PEFT's prefix_projection */
    size_t encoder_hidden_size; /* E with a projection; 0: C (PEFT's default, token_dim) */
} prefix_tuning_config;

typedef struct prefix_tuning {
    prefix_tuning_config cfg;
    size_t n_layer, d_model;
    tb_embedding embedding;   /* (n, 2LC), or (n, C) with a projection */
    tb_linear t0, t2;         /* the projection's C -> E and E -> 2LC (nn.Linear layout) */
    float *kv, *dkv;          /* (n, 2LC) with a projection: its output and gradient */
    float *e, *de;            /* (n, C) each: the projection's input (the embedding's rows) and
                                 its gradient */
    float *a, *da;            /* (n, E) each: tanh's output and its gradient */
    int32_t *ids;             /* (n) 0..n-1 */
    float **ptr;              /* 4L: the tfm_prefix's key, value, dkey, dvalue arrays */
    tfm_prefix prefix;        /* what the stack receives (prefix_tuning_attach()) */
} prefix_tuning;

/* Build the prefix for a stack of configuration cfg, initialised as PEFT
 * does: embedding N(0, 1), the projection's Linears PyTorch's default,
 * drawn from rng in that order. */
tb_status prefix_tuning_init(tb_ctx *ctx, prefix_tuning *p, const tfm_config *cfg,
                             const prefix_tuning_config *pc, tb_rng *rng);
void prefix_tuning_free(prefix_tuning *p);

/* PEFT's names under prefix: "embedding.weight", and with a projection
 * "transform.0.weight" (E, C), "transform.0.bias", "transform.2.weight"
 * (2LC, E), "transform.2.bias". */
tb_status prefix_tuning_params(tb_ctx *ctx, prefix_tuning *p, const char *prefix,
                               tb_param_list *list);

/* Attach to the stack (tfm_set_prefix()); the stack's configuration must
 * be the one p was built for. Initialise activations and decoders after. */
tb_status prefix_tuning_attach(tb_ctx *ctx, prefix_tuning *p, tfm *m);

/* With a projection: compute the keys and values from the current
 * parameters and clear their gradient; call before each stack forward
 * (and before a decoder reset). Without one: nothing to do. */
tb_status prefix_tuning_forward(tb_ctx *ctx, prefix_tuning *p);
/* With a projection: after the stack's backward, add the gradients of the
 * projection and the embedding. Without one the stack added them already. */
tb_status prefix_tuning_backward(tb_ctx *ctx, prefix_tuning *p);

/* The (n, 2LC) keys and values as PEFT's "prompt_embeddings" (save), and
 * loaded from a PEFT adapter_model.safetensors (without a projection only:
 * PEFT keeps no way back through the projection). */
tb_status prefix_tuning_save(tb_ctx *ctx, prefix_tuning *p, const char *path);
tb_status prefix_tuning_load(tb_ctx *ctx, prefix_tuning *p, const char *path);

#endif /* EX_PREFIX_TUNING_H */
