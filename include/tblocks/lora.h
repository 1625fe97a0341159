/**
 * @file lora.h
 * @brief LoRA: low-rank adapters on a frozen Linear, as Hugging Face PEFT's
 * `LoraLayer` (several named adapters, merge and unmerge, DoRA, combining
 * adapters).
 *
 * A LoRA layer wraps an existing tb_linear (either weight layout) without
 * copying it and adds, for each active adapter,
 * @code
 *   y = x W^T + b  +  s * B (A (dropout(x)))        s = alpha / r   (rsLoRA: alpha / sqrt(r))
 * @endcode
 * with A `(r, in)` and B `(out, r)`. Only A and B train: tb_lora_init()
 * freezes the base layer with tb_linear_freeze(), which releases its
 * gradient buffers, so neither gradients nor optimizer state exist for W
 * and b (tb_lora_frozen_bytes() reports the bytes that saves). Backward
 * never computes the frozen dW: it costs the base layer's dx plus the
 * rank-r products.
 *
 * **DoRA** (weight-decomposed LoRA, PEFT's `use_dora`) adds a magnitude
 * vector m `(out)`, initialised to the row norms of `W + s B A`, and
 * replaces the adapter's term by
 * @code
 *   y += (g - 1) * base_nobias  +  g * s * B (A (dropout(x))),   g = m / ||W + s B A||  (per output row)
 * @endcode
 * where, as in PEFT, `base_nobias` is the running result minus the bias
 * when the adapter's dropout is inactive (inference, or p = 0), and
 * `W dropout(x)` when it is active; the norm is treated as a constant in
 * backward.
 *
 * Shapes: x `(N..., in)`, y `(N..., out)`; leading dimensions are
 * flattened into R rows.
 *
 * Parameter names (tb_lora_params()), as in PEFT's in-memory state dict:
 * `<prefix>.lora_A.<adapter>.weight`, `<prefix>.lora_B.<adapter>.weight`
 * and, for DoRA, `<prefix>.lora_magnitude_vector.<adapter>.weight`.
 *
 * Decisions where PEFT is silent or surprising (documented, tested):
 * - A new adapter is active when it is the layer's only one; later ones
 *   are added inactive until tb_lora_set_active() (as PEFT).
 * - Forward adds every active adapter that is not merged, in the order of
 *   the active set. PEFT ignores unmerged adapters once any is merged;
 *   here plain LoRA adapters still add correctly, and an unmerged active
 *   DoRA adapter next to a merged one is refused (TB_ERR_STATE), because
 *   its norm would see the merged weight.
 * - Merging into a weight the layer does not own (a tb_linear_view(), such
 *   as a tied embedding) is refused, as is merging an adapter twice. A DoRA
 *   adapter merges only into a weight with nothing merged yet.
 * - With adapters disabled (tb_lora_set_enabled()), forward is the base
 *   layer's; while anything is merged that is refused (PEFT would unmerge
 *   inside forward; here forward never changes the layer).
 * - The cache (tb_lora_cache_size()) holds what backward needs for the
 *   active set at the time of the call: per adapter A dropout(x)^T
 *   `(r, R)`, its dropout mask's stream position (backward regenerates
 *   dropout(x) from x), and for DoRA the magnitude term's input `(R, out)`
 *   and the norms `(out)`.
 */
#ifndef TBLOCKS_LORA_H
#define TBLOCKS_LORA_H

#include <stddef.h>

#include "context.h"
#include "dropout.h"
#include "linear.h"
#include "param.h"
#include "rng.h"
#include "status.h"
#include "tensor.h"

#ifdef __cplusplus
extern "C" {
#endif

/** Most adapters one LoRA layer holds. */
#define TB_LORA_MAX_ADAPTERS 8
/** Longest adapter name, including the terminating NUL. Names are made of
 *  letters, digits, '_' and '-' (no '.', which separates name parts). */
#define TB_LORA_NAME_MAX 32

/** @brief Initial values of a new adapter (PEFT's `init_lora_weights`). */
typedef enum tb_lora_init_kind {
    /** PEFT's default (True): A kaiming-uniform with a = sqrt(5), i.e.
     *  uniform in +-1/sqrt(in); B = 0, so a new adapter changes nothing. */
    TB_LORA_INIT_DEFAULT = 0,
    /** PEFT's "gaussian": A ~ N(0, (1/r)^2) (standard deviation 1/r); B = 0. */
    TB_LORA_INIT_GAUSSIAN = 1,
    /** PEFT's False: A and B both as nn.Linear's default (uniform in
     *  +-1/sqrt(fan_in), fan_in = in for A and r for B): the adapter changes
     *  the output from the start (for tests and experiments). */
    TB_LORA_INIT_RANDOM = 2
} tb_lora_init_kind;

/** @brief One adapter's hyper-parameters (PEFT's LoraConfig fields). */
typedef struct tb_lora_config {
    size_t rank;     /**< r >= 1 (PEFT default 8). */
    float alpha;     /**< lora_alpha, finite (PEFT default 8). */
    int use_rslora;  /**< Nonzero: s = alpha / sqrt(r), else alpha / r. */
    float dropout;   /**< lora_dropout in [0, 1), on the adapter's input only. */
    tb_lora_init_kind init; /**< Initial values. */
    int use_dora;    /**< Nonzero: DoRA, with a magnitude vector. */
} tb_lora_config;

/**
 * @brief PEFT's defaults for a given rank: alpha 8, no rsLoRA, no dropout,
 * TB_LORA_INIT_DEFAULT, no DoRA.
 * @param rank r.
 * @return The configuration.
 */
tb_lora_config tb_lora_config_default(size_t rank);

/** @brief One named adapter of a LoRA layer. Read the fields; change them
 *  only through the API. */
typedef struct tb_lora_adapter {
    char name[TB_LORA_NAME_MAX]; /**< Adapter name, e.g. "default". */
    tb_lora_config config;       /**< Its hyper-parameters. */
    float scaling;               /**< s = alpha / r, or alpha / sqrt(r). */
    tb_param A;                  /**< lora_A `(r, in)`, trainable. */
    tb_param B;                  /**< lora_B `(out, r)`, trainable. */
    tb_param magnitude;          /**< DoRA's m `(out)`, trainable; empty otherwise. */
    int merged;                  /**< Nonzero while merged into the base weight. */
    float *merged_norm;          /**< DoRA: `(out)` norms used by the merge (for unmerge). */
    void *storage;               /**< Owned memory of the above. */
    tb_allocator allocator;      /**< Hooks `storage` came from. */
} tb_lora_adapter;

/** @brief A LoRA layer: a frozen base Linear and up to TB_LORA_MAX_ADAPTERS
 *  adapters. Initialise with tb_lora_init(), release with tb_lora_free().
 *  The caller keeps the base layer alive and in place while the LoRA layer
 *  exists. */
typedef struct tb_lora {
    tb_linear *base;                            /**< The wrapped layer (not owned). */
    size_t in_features;                         /**< base->in_features. */
    size_t out_features;                        /**< base->out_features. */
    size_t n_adapters;                          /**< Adapters in `adapter`. */
    tb_lora_adapter adapter[TB_LORA_MAX_ADAPTERS]; /**< In order of addition. */
    size_t n_active;                            /**< Adapters in `active`. */
    size_t active[TB_LORA_MAX_ADAPTERS];        /**< Indices into `adapter`, in forward order. */
    size_t n_merged;                            /**< Adapters in `merged`. */
    size_t merged[TB_LORA_MAX_ADAPTERS];        /**< Indices, in merge order (unmerged in reverse). */
    int disabled;                               /**< Nonzero: forward is the base layer's. */
} tb_lora;

/**
 * @brief Wrap `base` (not copied) and freeze it: tb_linear_freeze()
 * releases its weight and bias gradients and marks them not trainable.
 * No adapter yet: forward equals the base layer's.
 * @param ctx Context.
 * @param lora Layer to set up; left empty on failure.
 * @param base An initialised Linear, either layout; must outlive `lora`.
 * @return TB_OK, TB_ERR_NULL_ARG or TB_ERR_STATE (base not initialised).
 */
tb_status tb_lora_init(tb_ctx *ctx, tb_lora *lora, tb_linear *base);

/**
 * @brief Release every adapter (the base layer is left as it is: merged
 * adapters stay in its weight). The struct is left empty.
 * @param lora Layer; NULL or empty is fine.
 */
void tb_lora_free(tb_lora *lora);

/**
 * @brief Add a named adapter with fresh values from `rng` (A first, then
 * B, in row-major order; DoRA's m is computed from them). The first
 * adapter becomes active; later ones are added inactive.
 * @param ctx Context.
 * @param lora Layer.
 * @param name New adapter's name (letters, digits, '_', '-'; shorter than
 *        TB_LORA_NAME_MAX); not already used.
 * @param config Hyper-parameters.
 * @param rng Stream for the initial values.
 * @return TB_OK; TB_ERR_NULL_ARG; TB_ERR_DUPLICATE (name in use);
 *         TB_ERR_INVALID_ARG (bad name, rank 0, alpha not finite, dropout outside [0, 1), unknown init;
 *         TB_LORA_MAX_ADAPTERS reached); TB_ERR_STATE (a DoRA adapter while
 *         something is merged); TB_ERR_OVERFLOW; TB_ERR_NO_MEMORY. On error
 *         the layer is unchanged.
 */
tb_status tb_lora_add(tb_ctx *ctx, tb_lora *lora, const char *name,
                      const tb_lora_config *config, tb_rng *rng);

/**
 * @brief Remove an adapter (refused while it is merged). It also leaves
 * the active set.
 * @param ctx Context.
 * @param lora Layer.
 * @param name Adapter name.
 * @return TB_OK, TB_ERR_NULL_ARG, TB_ERR_NOT_FOUND or TB_ERR_STATE (merged).
 */
tb_status tb_lora_delete(tb_ctx *ctx, tb_lora *lora, const char *name);

/**
 * @brief Index of the adapter called `name`.
 * @param lora Layer.
 * @param name Adapter name.
 * @return Its index in `lora->adapter`, or -1 (also for NULL arguments).
 */
int tb_lora_find(const tb_lora *lora, const char *name);

/**
 * @brief Make `names` the active set, in that order (PEFT's set_adapter).
 * n = 0 activates none (forward is then the base layer's).
 * @param ctx Context.
 * @param lora Layer.
 * @param names Adapter names (NULL allowed when n is 0).
 * @param n Number of names.
 * @return TB_OK, TB_ERR_NULL_ARG, TB_ERR_NOT_FOUND or TB_ERR_INVALID_ARG (a
 *         name twice); on error the active set is unchanged.
 */
tb_status tb_lora_set_active(tb_ctx *ctx, tb_lora *lora, const char *const *names, size_t n);

/**
 * @brief Enable or disable all adapters at once (PEFT's disable_adapter
 * context): disabled, forward is the base layer's.
 * @param lora Layer (NULL is ignored).
 * @param enabled Nonzero to enable.
 */
void tb_lora_set_enabled(tb_lora *lora, int enabled);

/**
 * @brief Append every adapter's parameters under `prefix` (names in the
 * file comment), in adapter order: A, B, then m for DoRA.
 * @param ctx Context.
 * @param lora Layer.
 * @param prefix The wrapped module's name, e.g. "h.0.attn.c_attn", or NULL.
 * @param list List to extend.
 * @return As tb_param_list_add().
 */
tb_status tb_lora_params(tb_ctx *ctx, tb_lora *lora, const char *prefix, tb_param_list *list);

/**
 * @brief Bytes the base layer's frozen gradients would take: what
 * freezing saves (gradient buffers; Adam's two moments would be twice as
 * much again).
 * @param lora Layer.
 * @return 4 * (in * out + out if biased), or 0 for NULL.
 */
size_t tb_lora_frozen_bytes(const tb_lora *lora);

/**
 * @brief Bytes of cache a training forward of `rows` rows needs with the
 * current active set (see the file comment).
 * @param lora Layer.
 * @param rows Rows R.
 * @param bytes Receives the size.
 * @return TB_OK, TB_ERR_NULL_ARG or TB_ERR_OVERFLOW.
 */
tb_status tb_lora_cache_size(const tb_lora *lora, size_t rows, size_t *bytes);

/**
 * @brief Forward: the base layer plus every active, unmerged adapter.
 * @param ctx Context.
 * @param lora Layer.
 * @param mode TB_MODE_TRAINING applies the adapters' dropout.
 * @param rng Stream for dropout masks (advanced once per adapter with
 *        active dropout, by R * in); may be NULL when no dropout is active;
 *        must not overlap y or the cache.
 * @param x Input `(N..., in)`.
 * @param y Output `(N..., out)`; must not overlap x, the parameters or the
 *        cache.
 * @param cache tb_lora_cache_size() bytes, filled for backward; NULL when
 *        no backward follows.
 * @param cache_bytes Size of cache.
 * @return TB_OK; TB_ERR_NULL_ARG, TB_ERR_SHAPE, TB_ERR_STATE (see the file
 *         comment), TB_ERR_BUFFER_TOO_SMALL, TB_ERR_INVALID_ARG (overlap,
 *         misaligned cache), TB_ERR_NO_MEMORY (scratch). On error y may be
 *         partly written but the layer is unchanged.
 */
tb_status tb_lora_forward(tb_ctx *ctx, const tb_lora *lora, tb_mode mode, tb_rng *rng,
                          const tb_tensor *x, tb_tensor *y, void *cache, size_t cache_bytes);

/**
 * @brief Backward: writes dx (base path plus every adapter's path) and
 * adds the gradients of A, B (and m) of the adapters the forward used.
 * Never computes the frozen weight's gradient.
 * @param ctx Context.
 * @param lora Layer, with the same active set and merge state as at the
 *        forward call.
 * @param x The forward input.
 * @param dy Gradient w.r.t. y.
 * @param dx Output `(N..., in)`, or NULL; must not overlap x, dy, the
 *        parameters, their gradients or the cache.
 * @param cache The cache the forward filled.
 * @param cache_bytes Its size.
 * @return TB_OK; TB_ERR_NULL_ARG, TB_ERR_SHAPE, TB_ERR_STATE (cache not from
 *         a forward on this layer, shape and active set),
 *         TB_ERR_BUFFER_TOO_SMALL, TB_ERR_INVALID_ARG, TB_ERR_NO_MEMORY
 *         (then nothing is written).
 */
tb_status tb_lora_backward(tb_ctx *ctx, tb_lora *lora, const tb_tensor *x, const tb_tensor *dy,
                           tb_tensor *dx, const void *cache, size_t cache_bytes);

/**
 * @brief Merge adapters into the base weight: `W += s B A` (transposed for
 * the (in, out) layout); DoRA: `W <- g (W + s B A)`. Merged adapters are
 * skipped by forward until tb_lora_unmerge().
 * @param ctx Context.
 * @param lora Layer.
 * @param name The adapter to merge, or NULL for every active one (in the
 *        active order).
 * @param safe Nonzero: compute the merged weight in a copy and refuse
 *        (TB_ERR_NON_FINITE, W untouched) if any value is NaN or infinite.
 * @return TB_OK; TB_ERR_NULL_ARG; TB_ERR_NOT_FOUND; TB_ERR_STATE (already
 *         merged; the base weight is a view it does not own; DoRA onto a
 *         merged weight); TB_ERR_NON_FINITE (safe only); TB_ERR_NO_MEMORY.
 *         On error nothing is merged (with NULL, no adapter of the set).
 */
tb_status tb_lora_merge(tb_ctx *ctx, tb_lora *lora, const char *name, int safe);

/**
 * @brief Unmerge every merged adapter, last merged first, restoring W (to
 * within rounding: a few ulp of |W| + |s B A|).
 * @param ctx Context.
 * @param lora Layer.
 * @return TB_OK (also when nothing is merged), TB_ERR_NULL_ARG or
 *         TB_ERR_NO_MEMORY (then W is unchanged).
 */
tb_status tb_lora_unmerge(tb_ctx *ctx, tb_lora *lora);

/** @brief How tb_lora_combine() builds the new adapter (PEFT's
 *  add_weighted_adapter combination_type). s_i is source i's scaling. */
typedef enum tb_lora_combine_type {
    /** A = sum sign_i sqrt(|w_i s_i|) A_i, B = sum sqrt(|w_i s_i|) B_i, sign_i
     *  the sign of w_i s_i (on A only); equal ranks; rank = that rank. Not
     *  B A = sum w_i s_i B_i A_i in general (cross terms): PEFT's rough one. */
    TB_LORA_COMBINE_LINEAR = 0,
    /** A = [w_i s_i A_i] stacked by rows, B = [B_i] side by side; rank = sum
     *  of ranks; B A = sum w_i s_i B_i A_i exactly. */
    TB_LORA_COMBINE_CAT = 1,
    /** The best rank-k approximation of sum w_i s_i B_i A_i (B = U_k S_k,
     *  A = V_k^T); k = svd_rank, or the largest rank when 0. */
    TB_LORA_COMBINE_SVD = 2
} tb_lora_combine_type;

/**
 * @brief Add adapter `new_name` combining existing ones (PEFT's
 * add_weighted_adapter): its configuration is the first source's with
 * r = the new rank and alpha = r (so s = 1, or sqrt(r) with rsLoRA, as
 * PEFT), added inactive. With one source the type is LINEAR (as PEFT).
 * SVD's factors are unique only up to the signs of singular vectors: their
 * product B A is what to compare.
 *
 * Decisions (documented, tested):
 * - As PEFT, the factors carry the whole weighted sum and the new scaling
 *   multiplies it: when the first source uses rsLoRA, forward adds
 *   sqrt(r) times the sum (PEFT's behaviour, kept for equal results).
 * - SVD never forms the `(out, in)` sum: with the thin factors
 *   `[w_i s_i B_i]` `(out, R)` and `[A_i]` `(R, in)`, R = sum of ranks, both
 *   are QR-factorised and the small R x R core is split by one-sided
 *   Jacobi, all in double on one thread (about 6 (in + out) R^2 flops).
 *   Dependent or zero columns (B = 0 from the default initialisation, a
 *   source named twice) are handled. If k exceeds R, the ranks past R are
 *   zero (B's columns and A's rows), so B A is still the exact sum; PEFT
 *   fills them with singular vectors of zero singular values (equal
 *   product) and fails for k > min(in, out), which is allowed here.
 * - Sources may repeat, be inactive or be merged (their A and B are used);
 *   svd_rank is ignored unless the type is SVD with two or more sources.
 * - DoRA sources are refused: the combination takes only A and B, and
 *   PEFT gives the new adapter DoRA's magnitude vector from its own
 *   initial values (overwritten afterwards), not from the sources, so the
 *   result would not describe them.
 * - The result is the same bitwise for every thread count and kernel
 *   family (no matrix kernel is used); a duplicate new name is an error
 *   (PEFT returns silently).
 * @param ctx Context.
 * @param lora Layer.
 * @param new_name Name of the new adapter (not already used).
 * @param names Source adapters (n >= 1, none DoRA).
 * @param weights Their weights w_i (finite; may be negative).
 * @param n Number of sources.
 * @param type Combination.
 * @param svd_rank SVD only: the rank k >= 1, or 0 for the largest source rank.
 * @return TB_OK; TB_ERR_NULL_ARG; TB_ERR_NOT_FOUND; TB_ERR_DUPLICATE
 *         (new_name in use); TB_ERR_INVALID_ARG (unequal ranks for LINEAR, a DoRA source, bad name or weight,
 *         unknown type, n = 0, too many adapters); TB_ERR_STATE (lora not
 *         initialised); TB_ERR_NON_FINITE (a factor of the result is NaN or
 *         infinite: a source holds one, or w_i s_i overflows float);
 *         TB_ERR_OVERFLOW; TB_ERR_NO_MEMORY. On error the layer is unchanged.
 */
tb_status tb_lora_combine(tb_ctx *ctx, tb_lora *lora, const char *new_name,
                          const char *const *names, const float *weights, size_t n,
                          tb_lora_combine_type type, size_t svd_rank);

/**
 * @brief PEFT's target_modules matching for a list of names: `name`
 * matches `pattern` when it equals it or ends with "." followed by it
 * (a whole final part: "c_attn" matches "h.0.attn.c_attn", not
 * "h.0.attn.xc_attn"). Patterns are plain names, not regular expressions.
 * The same rule picks rank_pattern and alpha_pattern overrides.
 * @param name A module's full name.
 * @param pattern A target name.
 * @return 1 on a match, else 0 (also for NULL).
 */
int tb_lora_target_matches(const char *name, const char *pattern);

#ifdef __cplusplus
}
#endif

#endif /* TBLOCKS_LORA_H */
