/**
 * @file ptuning.h
 * @brief The P-tuning prompt encoder, as Hugging Face PEFT's PromptEncoder:
 * n trainable virtual tokens, reparameterised through a BiLSTM + MLP (or an
 * MLP), whose output (n, d) is inserted into a frozen model's input.
 *
 * @code
 *   LSTM:  e = Embedding(n, d)[0..n)  ->  BiLSTM(d, H, layers)  ->  Linear(2H, 2H) -> ReLU -> Linear(2H, d)
 *   MLP:   e = Embedding(n, d)[0..n)  ->  Linear(d, H) -> ReLU -> Linear(H, H) -> ReLU -> Linear(H, d)
 * @endcode
 * The encoder runs once per step on a single row (PEFT runs it on B
 * identical rows); its output is shared by the batch, so backward takes the
 * gradient summed over the batch. With encoder dropout > 0 the single row
 * draws one mask where PEFT draws one per batch row (PEFT's default dropout
 * is 0).
 *
 * Parameter names as PEFT's (tb_ptuning_params()): `embedding.weight`
 * `(n, d)`; LSTM: `lstm_head.weight_ih_l0` ... (tb_lstm's names),
 * `mlp_head.0.weight` `(2H, 2H)`, `mlp_head.0.bias`, `mlp_head.2.weight`
 * `(d, 2H)`, `mlp_head.2.bias`; MLP: `mlp_head.0` `(H, d)`, `mlp_head.2`
 * `(H, H)`, `mlp_head.4` `(d, H)`. So a PEFT P-tuning encoder's state dict
 * maps one to one (under PEFT's `prompt_encoder.<adapter>.` prefix).
 */
#ifndef TBLOCKS_PTUNING_H
#define TBLOCKS_PTUNING_H

#include <stddef.h>

#include "context.h"
#include "embedding.h"
#include "linear.h"
#include "lstm.h"
#include "param.h"
#include "rng.h"
#include "status.h"
#include "tensor.h"

#ifdef __cplusplus
extern "C" {
#endif

/** @brief The reparameterisation (PEFT's encoder_reparameterization_type). */
typedef enum tb_ptuning_encoder {
    TB_PTUNING_LSTM = 0, /**< BiLSTM then a two-layer MLP head. */
    TB_PTUNING_MLP = 1   /**< A three-layer MLP. */
} tb_ptuning_encoder;

/** @brief Configuration (PEFT's PromptEncoderConfig fields). */
typedef struct tb_ptuning_config {
    size_t num_virtual_tokens;  /**< n >= 1. */
    size_t token_dim;           /**< d: the model's hidden size. */
    size_t encoder_hidden_size; /**< H >= 1. */
    size_t encoder_num_layers;  /**< LSTM layers (PEFT default 2); ignored for MLP. */
    tb_ptuning_encoder type;    /**< LSTM or MLP. */
    float encoder_dropout;      /**< LSTM between-layer dropout, [0, 1) (PEFT default 0). */
} tb_ptuning_config;

/** @brief A prompt encoder; initialise with tb_ptuning_init(). */
typedef struct tb_ptuning {
    tb_ptuning_config config; /**< As given. */
    tb_embedding embedding;   /**< `(n, d)` virtual-token table. */
    tb_lstm lstm;             /**< LSTM type: BiLSTM(d, H, layers). */
    tb_linear mlp[3];         /**< The head's Linears (2 for LSTM, 3 for MLP). */
    size_t n_mlp;             /**< 2 or 3. */
} tb_ptuning;

/**
 * @brief Build the encoder, initialised as PyTorch would (embedding
 * N(0, 1), LSTM uniform +-1/sqrt(H), Linears' default), drawn from rng in
 * that order.
 * @param ctx Context.
 * @param p Encoder; left empty on failure.
 * @param config Configuration.
 * @param rng Stream for the initial values.
 * @return TB_OK, TB_ERR_NULL_ARG, TB_ERR_INVALID_ARG (a size of 0, unknown
 *         type, bad dropout or layer count), TB_ERR_OVERFLOW, TB_ERR_NO_MEMORY.
 */
tb_status tb_ptuning_init(tb_ctx *ctx, tb_ptuning *p, const tb_ptuning_config *config,
                          tb_rng *rng);

/**
 * @brief Release the encoder; the struct is left empty.
 * @param p Encoder (NULL or empty is fine).
 */
void tb_ptuning_free(tb_ptuning *p);

/**
 * @brief Append the parameters with PEFT's names (file comment) under prefix.
 * @param ctx Context.
 * @param p Encoder.
 * @param prefix Name prefix, or NULL.
 * @param list List to extend.
 * @return As tb_param_list_add(); TB_ERR_STATE if not initialised.
 */
tb_status tb_ptuning_params(tb_ctx *ctx, tb_ptuning *p, const char *prefix, tb_param_list *list);

/**
 * @brief Bytes of cache a training forward needs.
 * @param p Encoder.
 * @param bytes Receives the size.
 * @return TB_OK, TB_ERR_NULL_ARG or TB_ERR_OVERFLOW.
 */
tb_status tb_ptuning_cache_size(const tb_ptuning *p, size_t *bytes);

/**
 * @brief Forward: the n prompt vectors.
 * @param ctx Context.
 * @param p Encoder.
 * @param mode TB_MODE_TRAINING applies the LSTM's dropout.
 * @param rng Dropout stream (NULL allowed when no dropout is active).
 * @param out Output `(n, d)`.
 * @param cache tb_ptuning_cache_size() bytes, filled for backward, or NULL.
 * @param cache_bytes Its size.
 * @return TB_OK; TB_ERR_NULL_ARG (also rng NULL when the LSTM's dropout is
 *         active), TB_ERR_SHAPE, TB_ERR_STATE, TB_ERR_BUFFER_TOO_SMALL,
 *         TB_ERR_INVALID_ARG (an unknown mode, a misaligned cache, out or
 *         the cache overlapping a parameter or each other), TB_ERR_NO_MEMORY.
 */
tb_status tb_ptuning_forward(tb_ctx *ctx, const tb_ptuning *p, tb_mode mode, tb_rng *rng,
                             tb_tensor *out, void *cache, size_t cache_bytes);

/**
 * @brief Backward: adds every parameter's gradient from dout.
 * @param ctx Context.
 * @param p Encoder.
 * @param dout Gradient w.r.t. the output `(n, d)` (summed over the batch).
 * @param cache The forward's cache.
 * @param cache_bytes Its size.
 * @return TB_OK; TB_ERR_NULL_ARG, TB_ERR_SHAPE, TB_ERR_STATE,
 *         TB_ERR_BUFFER_TOO_SMALL, TB_ERR_INVALID_ARG (a gradient
 *         overlapping dout, the cache, a parameter or another gradient),
 *         TB_ERR_NO_MEMORY.
 */
tb_status tb_ptuning_backward(tb_ctx *ctx, tb_ptuning *p, const tb_tensor *dout,
                              const void *cache, size_t cache_bytes);

#ifdef __cplusplus
}
#endif

#endif /* TBLOCKS_PTUNING_H */
