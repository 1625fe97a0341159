/* BERT's configuration on the shared stack (bert_config.h). */
#include "bert_config.h"

#include <string.h>

bert_config bert_config_base(void)
{
    bert_config c;
    memset(&c, 0, sizeof c);
    c.vocab_size = 30522, c.hidden_size = 768, c.num_hidden_layers = 12;
    c.num_attention_heads = 12, c.intermediate_size = 3072;
    c.max_position_embeddings = 512, c.type_vocab_size = 2;
    c.layer_norm_eps = 1e-12f, c.hidden_dropout_prob = 0.1f;
    c.attention_probs_dropout_prob = 0.1f, c.initializer_range = 0.02f;
    c.pad_token_id = 0;
    return c;
}

tfm_config bert_tfm_config(const bert_config *b)
{
    tfm_config c;
    memset(&c, 0, sizeof c);
    c.n_layer = b->num_hidden_layers, c.n_head = b->num_attention_heads;
    c.d_model = b->hidden_size, c.d_ff = b->intermediate_size;
    c.vocab_size = b->vocab_size, c.max_positions = b->max_position_embeddings;
    c.type_vocab_size = b->type_vocab_size;
    c.has_pad_token = 1, c.pad_token_id = b->pad_token_id;
    c.norm_place = TFM_POST_NORM, c.norm_kind = TFM_LAYERNORM;
    c.embed_norm = 1, c.final_norm = 0;
    c.norm_eps = b->layer_norm_eps;
    c.causal = 0;
    c.qkv = TFM_QKV_SEPARATE;
    c.layout = TB_LINEAR_OUT_IN;
    c.gelu = TB_GELU_EXACT;
    c.hidden_dropout = b->hidden_dropout_prob;
    c.attn_dropout = b->attention_probs_dropout_prob;
    c.init_std = b->initializer_range;
    c.scale_residual_init = 0;
    c.names = &tfm_names_bert;
    return c;
}
