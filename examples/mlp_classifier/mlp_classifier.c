/*
 * mlp_classifier: train a small MLP on a 2-D three-arm spiral.
 *
 *   x (B, 2) -> fc1 -> GELU -> dropout -> fc2 -> GELU -> fc3 -> logits (B, 3)
 *            -> cross-entropy against the class ids (B)
 *
 * Everything a training loop needs is in this file, in the order it runs:
 * make a data set and split it, build the layers and list their named
 * parameters, carve the activation buffers out of one arena, then repeat
 * { sample a mini-batch, forward (keeping what backward needs), zero the
 * gradients, backward in reverse order, SGD-with-momentum step }. The
 * optimizer is written here over the tb_param_list; the library's optimizer
 * block will replace it later.
 *
 * Every loss and accuracy printed is bitwise identical for any --threads
 * value (only the reported thread count and timing change).
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ex_cli.h"
#include "ex_mlp.h"
#include "ex_random.h"
#include "tblocks.h"
#include "ex_try.h"

#define IN_DIM 2
#define HIDDEN 64
#define N_CLASSES 3
#define POINTS_PER_CLASS 500
#define VAL_PERCENT 20   /* share of the points held out for validation */
#define BATCH 64
#define LEARNING_RATE 0.1f
#define MOMENTUM 0.9f
#define DROPOUT_P 0.1f
#define GELU TB_GELU_EXACT
#define PI 3.14159265358979323846

/* Return the status of `call` from the enclosing function if it failed. */

/* ---- data ---------------------------------------------------------------- */

/* n labelled points: x (n, 2) row-major, y (n) class ids. */
typedef struct dataset {
    size_t n;
    float *x;
    int32_t *y;
} dataset;

static int dataset_alloc(dataset *d, size_t n)
{
    d->n = n;
    d->x = malloc(n * IN_DIM * sizeof(float));
    d->y = malloc(n * sizeof(int32_t));
    return d->x && d->y;
}

static void dataset_free(dataset *d)
{
    free(d->x);
    free(d->y);
    memset(d, 0, sizeof *d);
}

/*
 * Three spiral arms, one per class: point i of arm k sits at radius r and
 * angle 2*pi*k/3 + 3*pi*r plus Gaussian noise (0.3 rad), so the arms wind
 * 1.5 turns around each other and no straight line separates them. The points are shuffled, then
 * the first VAL_PERCENT go to validation and the rest to training.
 */
static int make_spiral(tb_rng *rng, dataset *train, dataset *val)
{
    const size_t n = N_CLASSES * POINTS_PER_CLASS;
    const size_t n_val = n * VAL_PERCENT / 100;
    float *x = malloc(n * IN_DIM * sizeof(float));
    int32_t *y = malloc(n * sizeof(int32_t));
    size_t *idx = malloc(n * sizeof(size_t));
    int ok = x && y && idx && dataset_alloc(train, n - n_val) && dataset_alloc(val, n_val);
    if (ok) {
        for (size_t k = 0; k < N_CLASSES; k++) {
            for (size_t i = 0; i < POINTS_PER_CLASS; i++) {
                size_t p = k * POINTS_PER_CLASS + i;
                double r = 0.05 + 0.95 * ((double)i + 0.5) / POINTS_PER_CLASS;
                double theta = 2.0 * PI * (double)k / N_CLASSES + 3.0 * PI * r +
                               0.3 * (double)tb_rng_normal(rng);
                x[p * IN_DIM + 0] = (float)(r * cos(theta));
                x[p * IN_DIM + 1] = (float)(r * sin(theta));
                y[p] = (int32_t)k;
                idx[p] = p;
            }
        }
        ex_shuffle(rng, idx, n);
        for (size_t i = 0; i < n; i++) {
            dataset *d = i < n_val ? val : train;
            size_t row = i < n_val ? i : i - n_val;
            memcpy(d->x + row * IN_DIM, x + idx[i] * IN_DIM, IN_DIM * sizeof(float));
            d->y[row] = y[idx[i]];
        }
    }
    free(x);
    free(y);
    free(idx);
    return ok;
}

/* ---- model --------------------------------------------------------------- */

/* The examples' classifier MLP (examples/common/ex_mlp.h):
 * Linear-GELU-Dropout-Linear-GELU-Linear, "fc1.weight" ... "fc3.bias". */
static const ex_mlp_config model_config = {IN_DIM, HIDDEN, N_CLASSES, GELU, DROPOUT_P};

/* ---- optimizer ----------------------------------------------------------- */

/*
 * SGD with momentum (PyTorch's form): v = mu v + g; w -= lr v. velocity
 * holds one float per scalar of the list, in list order. Frozen parameters
 * (trainable == 0) are left alone.
 */
static void sgd_momentum_step(tb_param_list *params, float *velocity, float lr, float mu)
{
    size_t off = 0;
    for (size_t i = 0; i < params->count; i++) {
        tb_param *p = params->items[i].param;
        float *v = velocity + off;
        off += p->numel;
        if (!p->trainable || !p->grad)
            continue;
        for (size_t j = 0; j < p->numel; j++) {
            v[j] = mu * v[j] + p->grad[j];
            p->value[j] -= lr * v[j];
        }
    }
}

/* ---- evaluation ---------------------------------------------------------- */

/* ---- training loop ------------------------------------------------------- */

/* Draws mini-batches: the next BATCH points of a shuffled pass over the
 * training set, reshuffled at the start of every pass (epoch). */
typedef struct sampler {
    float *x;      /* (BATCH, IN_DIM) */
    int32_t *y;    /* (BATCH) */
    size_t *order; /* permutation of the training rows */
    size_t next;   /* position in order; == n starts a new pass */
    tb_rng *rng;
} sampler;

static void sampler_next(sampler *s, const dataset *d)
{
    for (size_t b = 0; b < BATCH; b++) {
        if (s->next == d->n) {
            for (size_t i = 0; i < d->n; i++)
                s->order[i] = i;
            ex_shuffle(s->rng, s->order, d->n);
            s->next = 0;
        }
        size_t i = s->order[s->next++];
        memcpy(s->x + b * IN_DIM, d->x + i * IN_DIM, IN_DIM * sizeof(float));
        s->y[b] = d->y[i];
    }
}

/* Train for `steps` steps, printing a progress line every tenth of the run
 * and the final line. Returns 0, or 1 after printing an error. */
static int train(tb_ctx *ctx, ex_mlp *m, ex_mlp_acts *a, const dataset *train_set,
                 const dataset *val_set, sampler *batches, tb_rng *drop_rng, float *velocity,
                 uint64_t steps)
{
    const uint64_t log_every = steps >= 10 ? steps / 10 : 1;
    float train_loss = 0.0f, val_loss = 0.0f, val_acc = 0.0f, train_acc = 0.0f;
    printf("%8s %11s %11s %9s\n", "step", "train_loss", "val_loss", "val_acc");
    double t0 = ex_seconds();
    for (uint64_t step = 0; step <= steps; step++) {
        if (step % log_every == 0 || step == steps) {
            if (ex_failed(ctx,
                          ex_mlp_evaluate(ctx, m, a, train_set->x, train_set->y, train_set->n,
                                          &train_loss, &train_acc),
                          "evaluating on the training set") ||
                ex_failed(ctx,
                          ex_mlp_evaluate(ctx, m, a, val_set->x, val_set->y, val_set->n,
                                          &val_loss, &val_acc),
                          "evaluating on the validation set"))
                return 1;
            printf("%8llu %11.4f %11.4f %9.4f\n", (unsigned long long)step, (double)train_loss,
                   (double)val_loss, (double)val_acc);
            fflush(stdout);
        }
        if (step == steps)
            break;

        sampler_next(batches, train_set);
        float loss;
        if (ex_failed(ctx,
                      ex_mlp_forward(ctx, m, a, TB_MODE_TRAINING, drop_rng, batches->x,
                                     batches->y, BATCH, &loss),
                      "forward pass"))
            return 1;
        if (!isfinite(loss)) {
            fprintf(stderr, "error: the loss became %g at step %llu; training diverged\n",
                    (double)loss, (unsigned long long)step);
            return 1;
        }
        tb_param_list_zero_grad(&m->params); /* backward adds into the gradients */
        if (ex_failed(ctx, ex_mlp_backward(ctx, m, a, batches->x, batches->y, BATCH, 1.0f),
                      "backward pass"))
            return 1;
        /* Cosine schedule: the step size falls smoothly from LEARNING_RATE to
         * LEARNING_RATE/20, which lets the loss settle at the end. */
        double progress = (double)step / (double)steps;
        float lr = LEARNING_RATE * (float)(0.05 + 0.95 * 0.5 * (1.0 + cos(PI * progress)));
        sgd_momentum_step(&m->params, velocity, lr, MOMENTUM);
    }
    double seconds = ex_seconds() - t0;
    printf("done: %llu steps in %.2f s (%.0f steps/s), threads %d, train_acc=%.4f\n",
           (unsigned long long)steps, seconds, (double)steps / (seconds > 0 ? seconds : 1e-9),
           ctx->num_threads, (double)train_acc);
    printf("final: train_loss=%.4f val_loss=%.4f val_acc=%.4f\n", (double)train_loss,
           (double)val_loss, (double)val_acc);
    return 0;
}

/* ---- main ---------------------------------------------------------------- */

int main(int argc, char **argv)
{
    tb_ctx ctx; /* default: as many threads as OpenMP would use */
    int rc = ex_ctx_init(&ctx);
    if (rc >= 0)
        return rc;

    uint64_t steps = 3000, seed = 1, threads = 0;
    const ex_opt opts[] = {
        {"steps", "N", "training steps", 1, 1000000, &steps},
        {"seed", "S", "seed for data, initial weights, batches and dropout", 0, UINT64_MAX,
         &seed},
        EX_OPT_THREADS(threads),
    };
    rc = ex_parse_args(argc, argv,
                           "Train an MLP classifier (Linear-GELU-Dropout-Linear-GELU-Linear)\n"
                           "on a generated three-arm spiral with libtblocks. It prints its\n"
                           "progress and results and writes no files.",
                           opts, sizeof opts / sizeof opts[0]);
    if (rc >= 0)
        return rc;
    ex_apply_threads(&ctx, threads);

    /* Independent streams for each use, all derived from --seed. */
    tb_rng master, data_rng, init_rng, batch_rng, drop_rng;
    tb_rng_init(&master, seed);
    tb_rng_init(&data_rng, tb_rng_next(&master));
    tb_rng_init(&init_rng, tb_rng_next(&master));
    tb_rng_init(&batch_rng, tb_rng_next(&master));
    tb_rng_init(&drop_rng, tb_rng_next(&master));

    /* Everything below is freed at `done`, whatever fails. */
    dataset train_set, val_set;
    ex_mlp model;
    ex_mlp_acts act;
    sampler batches;
    float *velocity = NULL;
    size_t n_params = 0, max_rows = 0;
    memset(&train_set, 0, sizeof train_set);
    memset(&val_set, 0, sizeof val_set);
    memset(&model, 0, sizeof model);
    memset(&act, 0, sizeof act);
    memset(&batches, 0, sizeof batches);
    rc = EX_EXIT_FAILURE;

    if (!make_spiral(&data_rng, &train_set, &val_set)) {
        fprintf(stderr, "error: out of memory for the data set\n");
        goto done;
    }
    if (ex_failed(&ctx, ex_mlp_init(&ctx, &model, &model_config, &init_rng), "building the model"))
        goto done;
    max_rows = train_set.n > val_set.n ? train_set.n : val_set.n; /* evaluation batches */
    if (ex_failed(&ctx, ex_mlp_acts_init(&ctx, &act, &model, max_rows > BATCH ? max_rows : BATCH),
                  "allocating activations"))
        goto done;
    n_params = tb_param_list_numel(&model.params, 0);
    velocity = calloc(n_params, sizeof(float)); /* momentum starts at zero */
    batches.x = malloc(BATCH * IN_DIM * sizeof(float));
    batches.y = malloc(BATCH * sizeof(int32_t));
    batches.order = malloc(train_set.n * sizeof(size_t));
    batches.next = train_set.n;
    batches.rng = &batch_rng;
    if (!velocity || !batches.x || !batches.y || !batches.order) {
        fprintf(stderr, "error: out of memory\n");
        goto done;
    }

    printf("mlp_classifier: libtblocks %s\n", tb_version_string());
    printf("data:  3-arm spiral, %zu train / %zu validation points\n", train_set.n,
           val_set.n);
    printf("model: Linear(%d,%d) GELU Dropout(%.2f) Linear(%d,%d) GELU Linear(%d,%d), "
           "%zu parameters\n",
           IN_DIM, HIDDEN, (double)DROPOUT_P, HIDDEN, HIDDEN, HIDDEN, N_CLASSES, n_params);
    printf("train: %llu steps, batch %d, SGD lr %.3f (cosine) momentum %.2f, seed %llu, "
           "threads %d, kernels %s\n",
           (unsigned long long)steps, BATCH, (double)LEARNING_RATE, (double)MOMENTUM,
           (unsigned long long)seed, ctx.num_threads, ex_kernel_name(&ctx));
    if (train(&ctx, &model, &act, &train_set, &val_set, &batches, &drop_rng, velocity, steps) ==
        0)
        rc = EX_EXIT_OK;

done:
    free(batches.order);
    free(batches.y);
    free(batches.x);
    free(velocity);
    ex_mlp_acts_free(&act);
    ex_mlp_free(&model);
    dataset_free(&val_set);
    dataset_free(&train_set);
    return rc;
}
