/**
 * @file param.h
 * @brief Named parameters and the list through which they are enumerated.
 *
 * A block keeps each learnable tensor as a tb_param (value, gradient, shape,
 * trainable flag). `tb_<block>_params(block, prefix, list)` appends
 * references to them to a tb_param_list under dotted names such as
 * `"h.3.mlp.fc.weight"`. The optimizer, checkpoint I/O, adapters and
 * freezing all work from that list and never need to know a model's layout.
 *
 * Gradient convention: backward passes ADD into parameter gradients, so
 * tied weights and gradient accumulation need nothing special. Zeroing is
 * explicit (tb_param_list_zero_grad()). Backward passes skip the gradient
 * of a parameter whose `trainable` flag is 0 or whose `grad` is NULL.
 *
 * Selecting parameters: one predicate type, tb_param_select_fn, picks
 * entries by full name (and parameter) for everything that works on a
 * subset: freezing (tb_param_list_set_trainable_where()) and optimizer
 * groups (tb_adam_add_group()). Stock predicates: tb_select_prefix()
 * (everything under a name prefix, at a component boundary) and
 * tb_select_direct() (a module's own parameters, not its children's), and
 * in optim.h tb_select_no_decay(). Freezing a LoRA-wrapped layer's base
 * weights is then
 * @code
 * tb_param_list_set_trainable_where(&list, tb_select_direct, (void *)"h.0.attn.c_attn", 0);
 * // freezes h.0.attn.c_attn.weight and .bias, not h.0.attn.c_attn.lora_A.default.weight
 * @endcode
 *
 * A stale list: freeing a block zeroes its tb_param structs (value NULL),
 * but a list still points at them. Every call that reads or writes the
 * values or gradients of a list's parameters (loading and saving them,
 * checkpoints, the optimizer's init, gradient norms and clipping, EWC)
 * refuses a list with an entry whose parameter is NULL or has no values,
 * with TB_ERR_STATE naming that entry, before it reads or changes
 * anything. The list's own walkers (zero_grad, numel, set_trainable) skip
 * an entry without a parameter.
 */
#ifndef TBLOCKS_PARAM_H
#define TBLOCKS_PARAM_H

#include <stddef.h>

#include "context.h"
#include "status.h"
#include "tensor.h"

#ifdef __cplusplus
extern "C" {
#endif

/** Longest full parameter name, including the terminating NUL. */
#define TB_PARAM_NAME_MAX 128

/**
 * @brief One learnable tensor of a block.
 *
 * Make one with tb_param_init() (the library allocates value and gradient)
 * or tb_param_view() (over memory you own) rather than filling the fields:
 * both check the shape and compute `numel` with overflow checked. A block's
 * own parameters are made by its init function and released by its free
 * function.
 */
typedef struct tb_param {
    float *value;              /**< `numel` values, row-major in `shape`. */
    float *grad;               /**< `numel` gradients, or NULL if none kept. */
    size_t ndim;               /**< Number of dimensions, 1..TB_MAX_DIMS. */
    size_t shape[TB_MAX_DIMS]; /**< Sizes; entries past ndim are ignored. */
    size_t numel;              /**< Product of the sizes. */
    int trainable;             /**< Nonzero: backward accumulates `grad`. */
    void *storage;             /**< Memory tb_param_init() allocated for value and
                                    grad, released by tb_param_free(); NULL for a
                                    view and for a block's parameters (the block
                                    owns those). */
    tb_allocator allocator;    /**< Hooks `storage` came from. */
} tb_param;

/** tb_param_init() flag: allocate no gradient (`grad` NULL, not trainable),
 *  for buffers such as running statistics or a frozen table. */
#define TB_PARAM_NO_GRAD 1u

/**
 * @brief Make a parameter of the given shape that owns its memory: zeroed
 * values and (unless TB_PARAM_NO_GRAD) zeroed gradients, in one allocation
 * through `ctx`'s allocator (64-byte aligned; the gradient starts on a
 * 64-byte boundary too). Trainable exactly when it has a gradient.
 * Release it with tb_param_free().
 * @param ctx Context (allocator, error detail).
 * @param param Parameter to fill; left empty (all zero) on failure.
 * @param ndim Number of dimensions, 1..TB_MAX_DIMS.
 * @param shape `ndim` sizes, each >= 1.
 * @param flags 0 or TB_PARAM_NO_GRAD.
 * @return TB_OK; TB_ERR_NULL_ARG (ctx, param or shape NULL); TB_ERR_SHAPE
 *         (ndim 0 or above TB_MAX_DIMS, or a size of 0); TB_ERR_OVERFLOW
 *         (the element or byte count does not fit in size_t);
 *         TB_ERR_INVALID_ARG (unknown flags, or an allocator with a NULL
 *         hook); TB_ERR_NO_MEMORY.
 */
tb_status tb_param_init(tb_ctx *ctx, tb_param *param, size_t ndim, const size_t *shape,
                        unsigned flags);

/**
 * @brief A parameter over memory the caller owns (not copied, never freed
 * by the library): tb_param_free() on it only clears the struct. Trainable
 * exactly when `grad` is not NULL.
 * @param ctx Context (error detail).
 * @param param Parameter to fill; left empty (all zero) on failure.
 * @param value `numel` floats (the product of the sizes).
 * @param grad `numel` floats, or NULL for a parameter without a gradient.
 * @param ndim Number of dimensions, 1..TB_MAX_DIMS.
 * @param shape `ndim` sizes, each >= 1.
 * @return TB_OK; TB_ERR_NULL_ARG (param, value or shape NULL);
 *         TB_ERR_SHAPE (ndim 0 or above TB_MAX_DIMS, or a size of 0);
 *         TB_ERR_OVERFLOW (the element or byte count does not fit in
 *         size_t).
 */
tb_status tb_param_view(tb_ctx *ctx, tb_param *param, float *value, float *grad, size_t ndim,
                        const size_t *shape);

/**
 * @brief Release what tb_param_init() allocated (nothing for a view or a
 * block's parameter) and leave the struct empty. A list that still refers
 * to the parameter is then stale (see above).
 * @param param Parameter; NULL or an already freed parameter is fine.
 */
void tb_param_free(tb_param *param);

/** @brief An entry of a tb_param_list: a full name and the parameter. */
typedef struct tb_named_param {
    char name[TB_PARAM_NAME_MAX]; /**< Full dotted name, unique in its list. */
    tb_param *param;              /**< The block's parameter (not a copy). */
} tb_named_param;

/** @brief A growable list of named parameter references. */
typedef struct tb_param_list {
    tb_named_param *items;  /**< `count` entries, in insertion order. */
    size_t count;           /**< Number of entries. */
    size_t capacity;        /**< Allocated entries. */
    tb_allocator allocator; /**< Hooks the entries were allocated with. */
} tb_param_list;

/**
 * @brief Start an empty list that allocates through `ctx`'s allocator.
 * @param ctx Context (allocator and error detail).
 * @param list List to initialise.
 * @return TB_OK, or TB_ERR_NULL_ARG.
 */
tb_status tb_param_list_init(tb_ctx *ctx, tb_param_list *list);

/**
 * @brief Release the list's entries (not the parameters they refer to).
 * @param list List to release; NULL or an already freed list is fine.
 */
void tb_param_list_free(tb_param_list *list);

/**
 * @brief Append `param` under the name `prefix + "." + name` (or just
 * `name` when `prefix` is NULL or empty).
 * @param ctx Context.
 * @param list List to extend.
 * @param prefix Dotted prefix, or NULL.
 * @param name Local name, non-empty.
 * @param param The parameter; the list keeps a pointer to it.
 * @return TB_OK; TB_ERR_NULL_ARG; TB_ERR_INVALID_ARG for an empty name or a
 *         full name of TB_PARAM_NAME_MAX characters or more; TB_ERR_DUPLICATE
 *         if the full name is already in the list; TB_ERR_NO_MEMORY.
 */
tb_status tb_param_list_add(tb_ctx *ctx, tb_param_list *list, const char *prefix,
                            const char *name, tb_param *param);

/**
 * @brief Look up a parameter by full name.
 * @param list List to search.
 * @param name Full dotted name.
 * @return The parameter, or NULL if absent (or if an argument is NULL).
 */
tb_param *tb_param_list_find(const tb_param_list *list, const char *name);

/**
 * @brief Set every gradient in the list to zero (parameters without a
 * gradient buffer are skipped).
 * @param list List; NULL does nothing.
 */
void tb_param_list_zero_grad(tb_param_list *list);

/**
 * @brief Count the scalars in the list.
 * @param list List (NULL gives 0).
 * @param trainable_only Nonzero: count only trainable parameters.
 * @return Sum of `numel` over the selected entries.
 */
size_t tb_param_list_numel(const tb_param_list *list, int trainable_only);

/**
 * @brief A predicate over a list's entries: the one type every selection
 * of parameters uses (freezing, optimizer groups).
 * @param name Full dotted name of the entry.
 * @param param The entry's parameter (never NULL: entries without one are
 *        skipped before the predicate is asked).
 * @param user The pointer given together with the predicate.
 * @return Nonzero to select the entry.
 */
typedef int (*tb_param_select_fn)(const char *name, const tb_param *param, void *user);

/**
 * @brief Stock predicate: the entries under a name prefix, at a component
 * boundary. `user` is the prefix (`const char *`, cast to `void *`).
 * "h.1" selects "h.1" and "h.1.attn.weight" but not "h.10.bias"; a prefix
 * ending in '.' is matched as written ("h.1." selects "h.1.attn.weight",
 * not "h.1"); NULL or "" selects every entry.
 * @param name Full name.
 * @param param Unused.
 * @param user The prefix, or NULL.
 * @return Nonzero if `name` is `prefix` or starts with `prefix + "."`.
 */
int tb_select_prefix(const char *name, const tb_param *param, void *user);

/**
 * @brief Stock predicate: the direct parameters of a module, not those of
 * its children. `user` is the module's name (`const char *`, cast to
 * `void *`): `name` must be that name, a '.', and exactly one more
 * component (no further '.'). "h.0.attn.c_attn" selects
 * "h.0.attn.c_attn.weight" and "h.0.attn.c_attn.bias" but not
 * "h.0.attn.c_attn.lora_A.default.weight" nor "h.0.attn.c_attn" itself. One
 * trailing '.' of the module name is ignored ("h.0." is "h.0"); NULL or ""
 * is the root module, whose direct parameters are the names without a '.'.
 * @param name Full name.
 * @param param Unused.
 * @param user The module name, or NULL.
 * @return Nonzero for a direct parameter of the module.
 */
int tb_select_direct(const char *name, const tb_param *param, void *user);

/**
 * @brief Set the trainable flag of every entry `pred` selects.
 * @param list List; NULL does nothing.
 * @param pred Predicate; NULL selects nothing (returns 0, changes nothing).
 * @param user Passed to `pred`.
 * @param trainable New flag value (nonzero is stored as 1).
 * @return Number of entries selected, each of which now has the flag
 *         (whether or not it had it before); entries without a parameter
 *         are skipped and not counted.
 */
size_t tb_param_list_set_trainable_where(tb_param_list *list, tb_param_select_fn pred,
                                         void *user, int trainable);

/**
 * @brief Shorthand for tb_param_list_set_trainable_where() with
 * tb_select_prefix(): every entry under `prefix` at a component boundary
 * (all entries when `prefix` is NULL or "").
 * @param list List.
 * @param prefix Name prefix to match, or NULL.
 * @param trainable New flag value.
 * @return Number of entries selected (see tb_param_list_set_trainable_where()).
 */
size_t tb_param_list_set_trainable(tb_param_list *list, const char *prefix, int trainable);

#ifdef __cplusplus
}
#endif

#endif /* TBLOCKS_PARAM_H */
