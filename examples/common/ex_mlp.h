/*
 * A small classifier MLP for the example programs, wired from the library's
 * blocks:
 *
 *   x (rows, in) -> fc1 -> GELU -> dropout -> fc2 -> GELU -> fc3
 *     -> logits (rows, out) -> cross-entropy
 *
 * Parameters are named "fc1.weight", "fc1.bias", ..., "fc3.bias". The
 * activation buffers for up to max_rows rows are laid out once and carved
 * from one buffer (ex_arena.h; `bytes` says how much: the memory gradient
 * accumulation saves grows with max_rows). Dropout 0 is the identity.
 * Not part of the library; the examples use only its public API.
 */
#ifndef EX_MLP_H
#define EX_MLP_H

#include <stddef.h>
#include <stdint.h>

#include "tblocks.h"

typedef struct ex_mlp_config {
    size_t in, hidden, out;
    tb_gelu_approx gelu;
    float dropout; /* after the first GELU, in training mode; in [0, 1) */
} ex_mlp_config;

typedef struct ex_mlp {
    ex_mlp_config cfg;
    tb_linear fc1, fc2, fc3;
    tb_param_list params;
} ex_mlp;

/* PyTorch's default initialisation, drawn from rng (fc1, fc2, fc3). */
tb_status ex_mlp_init(tb_ctx *ctx, ex_mlp *m, const ex_mlp_config *cfg, tb_rng *rng);
void ex_mlp_free(ex_mlp *m);

/* Activations of one forward + backward on up to max_rows rows. */
typedef struct ex_mlp_acts {
    size_t max_rows;
    float *h1;      /* (rows, hidden) fc1 output, GELU input */
    float *a1;      /* (rows, hidden) GELU output, dropout input */
    float *d1;      /* (rows, hidden) dropout output, fc2 input (a1 itself with dropout 0) */
    float *h2;      /* (rows, hidden) fc2 output, GELU input */
    float *a2;      /* (rows, hidden) GELU output, fc3 input */
    float *logits;  /* (rows, out) */
    float *dlogits; /* (rows, out) */
    float *ga, *gb; /* (rows, hidden) backward scratch */
    void *ce_cache; /* cross-entropy cache for max_rows rows */
    size_t ce_cache_bytes;
    tb_dropout_cache drop;
    void *buffer;
    size_t bytes;
} ex_mlp_acts;

tb_status ex_mlp_acts_init(tb_ctx *ctx, ex_mlp_acts *a, const ex_mlp *m, size_t max_rows);
void ex_mlp_acts_free(ex_mlp_acts *a);

/* Forward on rows <= max_rows; *loss is the mean cross-entropy. In
 * TB_MODE_TRAINING dropout draws from rng (NULL is fine in inference or
 * with dropout 0). */
tb_status ex_mlp_forward(tb_ctx *ctx, ex_mlp *m, ex_mlp_acts *a, tb_mode mode, tb_rng *rng,
                         const float *x, const int32_t *y, size_t rows, float *loss);

/* Backward of the last forward: ADDS dloss * d(mean loss)/d(param) to the
 * gradients (dloss = 1/k for one of k accumulated micro-batches). */
tb_status ex_mlp_backward(tb_ctx *ctx, ex_mlp *m, ex_mlp_acts *a, const float *x,
                          const int32_t *y, size_t rows, float dloss);

/* Mean loss and accuracy over n rows in inference mode, in chunks of
 * max_rows. */
tb_status ex_mlp_evaluate(tb_ctx *ctx, ex_mlp *m, ex_mlp_acts *a, const float *x,
                          const int32_t *y, size_t n, float *loss, float *accuracy);

#endif /* EX_MLP_H */
