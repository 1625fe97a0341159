/*
 * CLIP's dual encoder (Radford et al. 2021, as transformers' CLIPModel) at
 * any size, wired from the shared transformer stack (tfm.h) and the
 * contrastive loss block (tblocks/contrastive.h).
 *
 *   text:   ids (B, T) -> token_embedding + position_embedding
 *           -> L_t pre-LN layers, causal (+ key_valid padding), quick GELU
 *           -> final_layer_norm -> the row of the end-of-text token (below)
 *           -> text_projection (no bias)                   -> txt (B, P)
 *   vision: pixels (B, ch, S, S) -> patches (p x p, stride p: a G x G grid,
 *           N = G^2) -> patch_embedding (a conv without bias, computed as a
 *           Linear on each flattened patch with the conv weight's layout)
 *           -> [class_embedding, patch 0 .. N-1] + position_embedding
 *           -> pre_layrnorm -> L_v pre-LN layers, bidirectional, quick GELU
 *           -> post_layernorm of the class token (row 0)
 *           -> visual_projection (no bias)                  -> img (B, P)
 *   loss:   tb_contrastive (L2-normalised img and txt, logits scaled by
 *           exp(logit_scale), symmetric cross-entropy), = CLIPModel's
 *           return_loss=True loss.
 *
 * Both towers are tfm stacks: the text tower takes token ids; the vision
 * tower takes caller-given input embeddings (the class and patch
 * embeddings) and adds its own wpe (the position embedding) and embedding
 * norm (pre_layrnorm). tfm always builds a token table; the vision stack's
 * is a one-row placeholder ("embeddings.unused_token_embedding") that is
 * never read (its input is embeddings), gets no gradient and is left out of
 * clip_model.params, so the names are exactly CLIPModel's.
 *
 * End-of-text pooling, exactly as CLIPTextTransformer: with eos_token_id
 * == 2 (the value of the original OpenAI configurations, kept by
 * transformers for compatibility) the position of the largest id of each
 * row (its first occurrence: torch.argmax); otherwise the first position
 * holding eos_token_id. A row without eos_token_id is refused (transformers
 * silently pools position 0 then), as is a pooled position that is padding
 * (key_valid 0).
 *
 * Parameter names (clip_model.params) are CLIPModel's state_dict names:
 * text_model.embeddings.{token,position}_embedding.weight,
 * text_model.encoder.layers.{i}.{layer_norm1,layer_norm2}.{weight,bias},
 * text_model.encoder.layers.{i}.self_attn.{q,k,v,out}_proj.{weight,bias},
 * text_model.encoder.layers.{i}.mlp.{fc1,fc2}.{weight,bias},
 * text_model.final_layer_norm.{weight,bias},
 * vision_model.embeddings.class_embedding (Cv),
 * vision_model.embeddings.patch_embedding.weight (Cv, ch, p, p),
 * vision_model.embeddings.position_embedding.weight (N + 1, Cv),
 * vision_model.pre_layrnorm (transformers' spelling), the same layer names
 * under vision_model.encoder.layers.{i}, vision_model.post_layernorm,
 * visual_projection.weight (P, Cv), text_projection.weight (P, Ct),
 * logit_scale (stored here as one float; transformers saves a 0-d tensor).
 *
 * Shapes: B pairs, T tokens, Ct / Cv the towers' widths, P the projection
 * size, ch the image channels, S the image side, p the patch side,
 * G = S / p, N = G^2 patches (the vision tower sees N + 1 rows per image).
 * Pixels are (B, ch, S, S), channel-first, as CLIPModel's pixel_values.
 * Every function returns a tb_status with a message in ctx; results are
 * bitwise identical for any thread count.
 */
#ifndef EX_CLIP_MODEL_H
#define EX_CLIP_MODEL_H

#include <stddef.h>
#include <stdint.h>

#include "tblocks.h"
#include "tfm.h"

/* CLIP's parameter names inside each tower (tfm appends ".weight" /
 * ".bias"; the caller's prefix "text_model." / "vision_model." goes in
 * front). Layer modules: encoder.layers.%zu.{layer_norm1, self_attn.q_proj,
 * self_attn.k_proj, self_attn.v_proj, self_attn.out_proj, layer_norm2,
 * mlp.fc1, mlp.fc2}. The text table has final_layer_norm; the vision table
 * has pre_layrnorm as the embedding norm and the placeholder token table. */
extern const tfm_names tfm_names_clip_text;
extern const tfm_names tfm_names_clip_vision;

/* A CLIPConfig's sizes (transformers' field names in the comments). */
typedef struct clip_config {
    /* text_config */
    size_t text_vocab;         /* vocab_size */
    size_t text_positions;     /* max_position_embeddings: the longest text */
    size_t text_width;         /* hidden_size, Ct */
    size_t text_ff;            /* intermediate_size */
    size_t text_layers;        /* num_hidden_layers */
    size_t text_heads;         /* num_attention_heads */
    int32_t eos_token_id;      /* eos_token_id: the pooling rule above */
    /* vision_config */
    size_t image_size;         /* image_size, S */
    size_t patch_size;         /* patch_size, p (S a multiple of p) */
    size_t channels;           /* num_channels, ch */
    size_t vision_width;       /* hidden_size, Cv */
    size_t vision_ff;          /* intermediate_size */
    size_t vision_layers;      /* num_hidden_layers */
    size_t vision_heads;       /* num_attention_heads */
    /* both */
    size_t projection_dim;     /* projection_dim, P */
    float norm_eps;            /* layer_norm_eps of both towers (CLIP: 1e-5) */
    float logit_scale_init;    /* logit_scale_init_value (CLIP: ln(1/0.07) = 2.6592) */
    float init_std;            /* initializer_range: N(0, init_std) for the embeddings and the
                                  towers' projections (CLIP: 0.02); > 0 */
} clip_config;

/* CLIP ViT-B/32's text tower shape scaled down: a valid small default
 * (vocab 64, 16 positions, widths 32, 2 layers, 2 heads, ff 4x, 24 x 24
 * images in 8 x 8 patches of 3 channels, P 32, eps 1e-5, ln(1/0.07),
 * eos_token_id = vocab - 1, init_std 0.02). */
clip_config clip_default_config(void);

/* Every size in range (tfm's limits for the towers, image_size a multiple
 * of patch_size with N + 1 <= TFM_MAX_POSITIONS, channels * p^2 <=
 * TFM_MAX_WIDTH, P <= TFM_MAX_WIDTH), widths multiples of their heads,
 * eos_token_id in [0, text_vocab), eps and logit_scale_init finite (eps >
 * 0). TB_ERR_INVALID_ARG naming the field otherwise. */
tb_status clip_config_check(tb_ctx *ctx, const clip_config *cfg);

/* The two stacks' configurations (pre-LN LayerNorm, separate q/k/v in
 * nn.Linear's (out, in) layout, quick GELU, no dropout, N(0, init_std)
 * initialisation with zero biases). */
tfm_config clip_text_stack_config(const clip_config *cfg);
tfm_config clip_vision_stack_config(const clip_config *cfg);

typedef struct clip_model {
    clip_config cfg;
    tfm text;                  /* text_model: ids -> (B, T, Ct), final_layer_norm included */
    tfm vision;                /* vision_model: embeddings (B, N + 1, Cv) -> (B, N + 1, Cv) */
    tb_linear patch;           /* (Cv, ch p p), no bias: the conv as a Linear on patches */
    tb_param patch_weight;     /* (Cv, ch, p, p): a view over patch.weight (the conv's shape,
                                  the name the file has) */
    tb_param class_embedding;  /* (Cv) */
    tb_layernorm post_layernorm; /* Cv */
    tb_linear visual_projection; /* (P, Cv), no bias */
    tb_linear text_projection;   /* (P, Ct), no bias */
    tb_param logit_scale;      /* (1): s = log(scale) */
    tb_contrastive_config contrastive; /* init and clamp range of logit_scale */
    tb_param_list params;      /* every parameter, CLIPModel's names (see the top) */
} clip_model;

/* Build the model from rng (the text stack, the vision stack, the patch
 * embedding N(0, init_std), class embedding N(0, Cv^-1/2), post_layernorm 1
 * and 0, the projections N(0, C^-1/2) as transformers initialises them,
 * logit_scale = logit_scale_init). */
tb_status clip_init(tb_ctx *ctx, clip_model *m, const clip_config *cfg, tb_rng *rng);
void clip_free(clip_model *m);

/* Load a CLIPModel safetensors file (save_pretrained's model.safetensors)
 * by name: every parameter must be present with its shape (logit_scale as
 * a 0-d or one-element tensor), nothing else in the file. A missing,
 * mismatched or unexpected tensor is an error naming it (TB_ERR_NOT_FOUND,
 * TB_ERR_SHAPE, TB_ERR_INVALID_ARG); nothing is written then. */
tb_status clip_load(tb_ctx *ctx, clip_model *m, const char *path);

/* Clamp logit_scale into m->contrastive's range: call after every
 * optimizer step (tb_contrastive_clamp_scale()). */
tb_status clip_clamp_scale(tb_ctx *ctx, clip_model *m);

/* What a step keeps, for up to max_b pairs of up to max_t tokens. */
typedef struct clip_acts {
    size_t max_b, max_t;
    size_t b, t;               /* the last forward's (t: text length) */
    int have_image, have_text; /* which towers the last forward ran */
    int have_loss;             /* a clip_forward() awaits its backward */
    tfm_acts text, vision;
    const int32_t *ids;        /* the last forward's (B, T) ids */
    size_t *eos;               /* (B) the pooled position of each text */
    float *patches;            /* (B N, ch p p) flattened patches, (c, ky, kx) order */
    float *pe;                 /* (B N, Cv) patch embeddings; backward: their gradient */
    float *vemb;               /* (B, N + 1, Cv) class and patch embeddings, the vision
                                  stack's input */
    float *dvemb;              /* (B, N + 1, Cv) its gradient */
    float *dpatches;           /* (B N, ch p p) */
    float *vpool;              /* (B, Cv) the class token's output */
    float *vpool_n;            /* (B, Cv) post_layernorm(vpool) */
    void *ln_cache;
    size_t ln_cache_bytes;
    float *tpool;              /* (B, Ct) the pooled text rows */
    float *img;                /* (B, P) image embeddings (not normalised) */
    float *txt;                /* (B, P) text embeddings (not normalised) */
    float *img_n, *txt_n;      /* (B, P) the same, L2-normalised (CLIPModel's image_embeds,
                                  text_embeds) */
    float *logits;             /* (B, B) logits_per_image (row i: image i against every text) */
    float *dimg, *dtxt;        /* (B, P) */
    float *dv, *dt;            /* (B, max(Cv, Ct)) scratch */
    float *dvis_out;           /* (B, N + 1, Cv) gradient w.r.t. the vision stack's output */
    float *dtext_out;          /* (B, T, Ct) gradient w.r.t. the text stack's output */
    void *con_cache;
    size_t con_cache_bytes;
    void *buffer;
    size_t bytes;              /* this struct's buffer plus both stacks' */
} clip_acts;

tb_status clip_acts_init(tb_ctx *ctx, clip_acts *a, const clip_model *m, size_t max_b,
                         size_t max_t);
void clip_acts_free(clip_acts *a);

/* Image tower: pixels (B, ch, height, width) -> a->img (B, P) and a->img_n.
 * height and width must be cfg.image_size (CLIPModel without position
 * interpolation), B in 1..max_b; non-finite pixels are refused. */
tb_status clip_encode_image(tb_ctx *ctx, clip_model *m, clip_acts *a, const float *pixels,
                            size_t B, size_t height, size_t width);

/* Text tower: ids (B, T) (each in [0, text_vocab)), key_valid (B, T) or
 * NULL (all real; 0 marks padding, which no token attends to, as
 * CLIPModel's attention_mask) -> a->txt (B, P) and a->txt_n. T in
 * 1..min(max_t, text_positions). ids and key_valid must stay valid until
 * the backward. */
tb_status clip_encode_text(tb_ctx *ctx, clip_model *m, clip_acts *a, const int32_t *ids,
                           const uint8_t *key_valid, size_t B, size_t T);

/* Both towers on B pairs and the contrastive loss: *loss (may be NULL) and
 * a->logits (B, B) logits_per_image. */
tb_status clip_forward(tb_ctx *ctx, clip_model *m, clip_acts *a, const float *pixels,
                       size_t height, size_t width, const int32_t *ids,
                       const uint8_t *key_valid, size_t B, size_t T, float *loss);

/* Backward of the last clip_forward() (once; TB_ERR_STATE without one,
 * after a second backward, or after an encode_* call since) for an
 * upstream gradient dloss (1 for the plain loss): ADDS every parameter's gradient, and writes the
 * gradient w.r.t. the pixels (B, ch, S, S) into dpixels if it is not NULL. */
tb_status clip_backward(tb_ctx *ctx, clip_model *m, clip_acts *a, float dloss, float *dpixels);

#endif /* EX_CLIP_MODEL_H */
