/**
 * @file lstm.h
 * @brief (Bi)LSTM, as torch.nn.LSTM with batch_first = True: several layers,
 * one or two directions, variable lengths as a packed sequence, optional
 * initial states, dropout between layers; forward and backward through time.
 *
 * Per layer and direction, with the gates stacked i, f, g, o:
 * @code
 *   [i f g o] = x_t W_ih^T + b_ih + h_{t-1} W_hh^T + b_hh      W_ih (4H, in), W_hh (4H, H)
 *   i, f, o = sigmoid(.), g = tanh(.)
 *   c_t = f * c_{t-1} + i * g,   h_t = o * tanh(c_t)
 * @endcode
 * Layer 0 reads x; layer k > 0 reads layer k-1's output, after dropout
 * (training only, p = dropout). Bidirectional: the output at t is
 * [h_fwd_t ; h_bwd_t] (2H wide) and the reverse direction runs from each
 * row's own last valid step back to 0.
 *
 * Shapes (B rows, T steps, D = 1 or 2 directions, L layers):
 * x `(B, T, in)`; y `(B, T, D*H)`; initial and final states h0, c0, h_n,
 * c_n `(L*D, B, H)`, entry `l*D + d` for layer l, direction d (d = 1 the
 * reverse one), as PyTorch orders them. `lengths` (B int32, each in 1..T,
 * or NULL for all T): the steps of row b are 0 .. lengths[b]-1, as
 * pack_padded_sequence; outputs past a row's length are 0 and padding
 * reaches no output, final state or gradient.
 *
 * Parameters, as PyTorch names them (tb_lstm_params()): `weight_ih_l{k}`
 * `(4H, in_k)`, `weight_hh_l{k}` `(4H, H)`, `bias_ih_l{k}`, `bias_hh_l{k}`
 * `(4H)`, and the same with the suffix `_reverse` for direction 1; in_0 =
 * in, in_k = D*H. Initial values uniform in +-1/sqrt(H), drawn in that
 * order (per layer: forward weight_ih, weight_hh, bias_ih, bias_hh, then
 * the reverse ones).
 *
 * Computation: each layer's input projection for every step is one GEMM
 * per direction (biases added once); the recurrence then runs directions
 * and blocks of batch rows in parallel, each on its own thread. A row's
 * arithmetic does not depend on how rows are split, so results are
 * bitwise identical for any thread count. Backward through time
 * accumulates the weight gradients as one GEMM per weight after the
 * time loop.
 */
#ifndef TBLOCKS_LSTM_H
#define TBLOCKS_LSTM_H

#include <stddef.h>
#include <stdint.h>

#include "context.h"
#include "param.h"
#include "rng.h"
#include "status.h"
#include "tensor.h"

#ifdef __cplusplus
extern "C" {
#endif

/** Most layers of one tb_lstm. */
#define TB_LSTM_MAX_LAYERS 16

/** @brief Hyper-parameters (torch.nn.LSTM's). */
typedef struct tb_lstm_config {
    size_t input_size;  /**< in >= 1. */
    size_t hidden_size; /**< H >= 1. */
    size_t num_layers;  /**< L, 1..TB_LSTM_MAX_LAYERS. */
    int bidirectional;  /**< Nonzero: D = 2. */
    float dropout;      /**< Between layers, training only; in [0, 1). */
} tb_lstm_config;

/** @brief An LSTM; initialise with tb_lstm_init(), release with
 *  tb_lstm_free(). Read the fields; change them only through the API. */
typedef struct tb_lstm {
    tb_lstm_config config;                          /**< As given. */
    size_t dirs;                                    /**< D, 1 or 2. */
    tb_param w_ih[2 * TB_LSTM_MAX_LAYERS];          /**< Entry l*D+d: `(4H, in_l)`. */
    tb_param w_hh[2 * TB_LSTM_MAX_LAYERS];          /**< Entry l*D+d: `(4H, H)`. */
    tb_param b_ih[2 * TB_LSTM_MAX_LAYERS];          /**< Entry l*D+d: `(4H)`. */
    tb_param b_hh[2 * TB_LSTM_MAX_LAYERS];          /**< Entry l*D+d: `(4H)`. */
    void *storage;                                  /**< Owned values and gradients. */
    tb_allocator allocator;                         /**< Hooks `storage` came from. */
} tb_lstm;

/**
 * @brief Allocate and initialise (PyTorch's uniform +-1/sqrt(H), in the
 * order of the file comment). Gradients start at zero.
 * @param ctx Context.
 * @param lstm LSTM to set up; left empty on failure.
 * @param config Hyper-parameters.
 * @param rng Stream for the initial values.
 * @return TB_OK, TB_ERR_NULL_ARG, TB_ERR_INVALID_ARG (a size of 0, too many
 *         layers, dropout outside [0, 1)), TB_ERR_OVERFLOW, TB_ERR_NO_MEMORY.
 */
tb_status tb_lstm_init(tb_ctx *ctx, tb_lstm *lstm, const tb_lstm_config *config, tb_rng *rng);

/**
 * @brief Release the LSTM's memory; the struct is left empty.
 * @param lstm LSTM (NULL or empty is fine).
 */
void tb_lstm_free(tb_lstm *lstm);

/**
 * @brief Append the parameters under `prefix` with PyTorch's names, in
 * PyTorch's order (per layer: weight_ih, weight_hh, bias_ih, bias_hh, then
 * the reverse ones).
 * @param ctx Context.
 * @param lstm LSTM.
 * @param prefix Name prefix (e.g. "lstm_head"), or NULL.
 * @param list List to extend.
 * @return As tb_param_list_add(); TB_ERR_STATE if not initialised.
 */
tb_status tb_lstm_params(tb_ctx *ctx, tb_lstm *lstm, const char *prefix, tb_param_list *list);

/**
 * @brief Bytes of cache a training forward on B x T needs (every layer's
 * gate activations, cell states and output).
 * @param lstm LSTM.
 * @param batch B.
 * @param steps T.
 * @param bytes Receives the size.
 * @return TB_OK, TB_ERR_NULL_ARG or TB_ERR_OVERFLOW.
 */
tb_status tb_lstm_cache_size(const tb_lstm *lstm, size_t batch, size_t steps, size_t *bytes);

/**
 * @brief Forward over a batch of sequences.
 * @param ctx Context.
 * @param lstm LSTM.
 * @param mode TB_MODE_TRAINING applies the between-layer dropout.
 * @param rng Stream for dropout masks (advanced by B*T*D*H per layer but
 *        the last when dropout is active); may be NULL otherwise.
 * @param x Input `(B, T, in)`.
 * @param lengths B lengths in 1..T, or NULL (all T).
 * @param h0 Initial hidden states `(L*D, B, H)`, or NULL (zeros).
 * @param c0 Initial cell states `(L*D, B, H)`, or NULL (zeros).
 * @param y Output `(B, T, D*H)` (zero past each row's length).
 * @param h_n Final hidden states `(L*D, B, H)`, or NULL.
 * @param c_n Final cell states `(L*D, B, H)`, or NULL.
 * @param cache tb_lstm_cache_size() bytes, filled for backward, or NULL.
 * @param cache_bytes Its size.
 * @return TB_OK; TB_ERR_NULL_ARG (also rng NULL when dropout is active);
 *         TB_ERR_SHAPE; TB_ERR_INVALID_ARG (an unknown mode; a length outside
 *         1..T; outputs overlapping inputs, the weights or each other;
 *         misaligned cache); TB_ERR_BUFFER_TOO_SMALL; TB_ERR_STATE; TB_ERR_OVERFLOW;
 *         TB_ERR_NO_MEMORY (scratch; nothing written).
 */
tb_status tb_lstm_forward(tb_ctx *ctx, const tb_lstm *lstm, tb_mode mode, tb_rng *rng,
                          const tb_tensor *x, const int32_t *lengths, const tb_tensor *h0,
                          const tb_tensor *c0, tb_tensor *y, tb_tensor *h_n, tb_tensor *c_n,
                          void *cache, size_t cache_bytes);

/**
 * @brief Backward through time: adds every weight's and bias's gradient
 * and writes the gradients of the input and the initial states.
 * @param ctx Context.
 * @param lstm LSTM.
 * @param x The forward input.
 * @param lengths The forward lengths (or NULL, as given to forward).
 * @param h0 The forward h0 (or NULL).
 * @param c0 The forward c0 (or NULL).
 * @param dy Gradient w.r.t. y `(B, T, D*H)` (entries past a row's length
 *        are ignored).
 * @param dh_n Gradient w.r.t. h_n `(L*D, B, H)`, or NULL (zero).
 * @param dc_n Gradient w.r.t. c_n `(L*D, B, H)`, or NULL (zero).
 * @param dx Output `(B, T, in)` (zero past each row's length), or NULL.
 * @param dh0 Output `(L*D, B, H)`, or NULL.
 * @param dc0 Output `(L*D, B, H)`, or NULL.
 * @param cache The forward's cache.
 * @param cache_bytes Its size.
 * @return TB_OK; TB_ERR_NULL_ARG; TB_ERR_SHAPE; TB_ERR_STATE (cache not from
 *         a forward of this shape, lengths and initial states);
 *         TB_ERR_INVALID_ARG; TB_ERR_BUFFER_TOO_SMALL; TB_ERR_NO_MEMORY
 *         (scratch; nothing written).
 */
tb_status tb_lstm_backward(tb_ctx *ctx, tb_lstm *lstm, const tb_tensor *x,
                           const int32_t *lengths, const tb_tensor *h0, const tb_tensor *c0,
                           const tb_tensor *dy, const tb_tensor *dh_n, const tb_tensor *dc_n,
                           tb_tensor *dx, tb_tensor *dh0, tb_tensor *dc0, const void *cache,
                           size_t cache_bytes);

#ifdef __cplusplus
}
#endif

#endif /* TBLOCKS_LSTM_H */
