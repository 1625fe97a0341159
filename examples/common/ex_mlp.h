/*
 * A small classifier MLP for the example programs, wired from the library's
 * blocks: x (rows, in) -> Linear -> GELU -> Linear -> GELU -> Linear ->
 * logits (rows, out) -> cross-entropy. Parameters are named "fc1.weight",
 * "fc1.bias", ..., "fc3.bias". The activation buffers for up to max_rows
 * rows are carved from one arena (ex_mlp_acts_bytes() says how much: the
 * memory gradient accumulation saves grows with max_rows).
 * Not part of the library; the examples use only its public API.
 */
#ifndef EX_MLP_H
#define EX_MLP_H

#include <stddef.h>
#include <stdint.h>

#include "tblocks.h"

typedef struct ex_mlp {
    size_t in, hidden, out;
    tb_linear fc1, fc2, fc3;
    tb_param_list params;
} ex_mlp;

/* PyTorch's default initialisation, drawn from rng. */
tb_status ex_mlp_init(tb_ctx *ctx, ex_mlp *m, size_t in, size_t hidden, size_t out, tb_rng *rng);
void ex_mlp_free(ex_mlp *m);

/* Activations of one forward + backward on up to max_rows rows. */
typedef struct ex_mlp_acts {
    size_t max_rows;
    float *h1, *a1, *h2, *a2, *logits, *dlogits, *ga, *gb;
    void *ce_cache;
    size_t ce_cache_bytes;
    void *buffer;
    size_t bytes;
} ex_mlp_acts;

tb_status ex_mlp_acts_init(tb_ctx *ctx, ex_mlp_acts *a, const ex_mlp *m, size_t max_rows);
void ex_mlp_acts_free(ex_mlp_acts *a);

/* Forward on rows <= max_rows; *loss is the mean cross-entropy. */
tb_status ex_mlp_forward(tb_ctx *ctx, ex_mlp *m, ex_mlp_acts *a, const float *x,
                         const int32_t *y, size_t rows, float *loss);

/* Backward of the last forward: ADDS dloss * d(mean loss)/d(param) to the
 * gradients (dloss = 1/k for one of k accumulated micro-batches). */
tb_status ex_mlp_backward(tb_ctx *ctx, ex_mlp *m, ex_mlp_acts *a, const float *x,
                          const int32_t *y, size_t rows, float dloss);

/* Mean loss and accuracy over n rows, in chunks of max_rows. */
tb_status ex_mlp_evaluate(tb_ctx *ctx, ex_mlp *m, ex_mlp_acts *a, const float *x,
                          const int32_t *y, size_t n, float *loss, float *accuracy);

#endif /* EX_MLP_H */
