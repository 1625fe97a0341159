/**
 * @file tensor.h
 * @brief Tensor views: a float pointer plus its shape.
 *
 * Conventions used by every block:
 * - Data is contiguous and row-major; the last dimension varies fastest.
 * - Activations are channel-last: `(B, T, C)` for sequences, `(N, C)` for
 *   rows. Blocks that act on rows flatten every leading dimension into N,
 *   so a `(B, T, C)` view and an `(B*T, C)` view of the same data are
 *   interchangeable.
 * - A linear weight is `(out, in)`, as in PyTorch.
 * - A view does not own its data. Blocks read inputs and write outputs
 *   through views and check every shape before touching memory; a mismatch
 *   returns TB_ERR_SHAPE and leaves the outputs untouched.
 * - Every dimension is at least 1, and the element count times
 *   `sizeof(float)` must fit in `size_t` (else TB_ERR_OVERFLOW).
 */
#ifndef TBLOCKS_TENSOR_H
#define TBLOCKS_TENSOR_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

/** Largest number of dimensions a view can have. */
#define TB_MAX_DIMS 4

/** @brief A non-owning view of a contiguous row-major float array. */
typedef struct tb_tensor {
    float *data;                /**< First element; inputs are not modified. */
    size_t ndim;                /**< Number of dimensions, 1..TB_MAX_DIMS. */
    size_t shape[TB_MAX_DIMS];  /**< Sizes; entries past ndim are ignored. */
} tb_tensor;

/** @brief A 1-D view `(d0)`. @param data Elements. @param d0 Size.
 *  @return The view. */
tb_tensor tb_tensor_1d(float *data, size_t d0);
/** @brief A 2-D view `(d0, d1)`. @param data Elements. @param d0 Rows.
 *  @param d1 Columns. @return The view. */
tb_tensor tb_tensor_2d(float *data, size_t d0, size_t d1);
/** @brief A 3-D view `(d0, d1, d2)`, e.g. `(B, T, C)`. @param data Elements.
 *  @param d0 First size. @param d1 Second size. @param d2 Last size.
 *  @return The view. */
tb_tensor tb_tensor_3d(float *data, size_t d0, size_t d1, size_t d2);
/** @brief A 4-D view `(d0, d1, d2, d3)`, e.g. `(B, H, T, D)`.
 *  @param data Elements. @param d0 First size. @param d1 Second size.
 *  @param d2 Third size. @param d3 Last size. @return The view. */
tb_tensor tb_tensor_4d(float *data, size_t d0, size_t d1, size_t d2, size_t d3);

/**
 * @brief Number of elements of a view.
 * @param t A view (NULL gives 0).
 * @return The product of its sizes, or 0 if the view is invalid (ndim out of
 *         range, a zero size) or the product overflows.
 */
size_t tb_tensor_numel(const tb_tensor *t);

/**
 * @brief Size of the last dimension (the row length).
 * @param t A view (NULL gives 0).
 * @return shape[ndim-1], or 0 for an invalid view.
 */
size_t tb_tensor_cols(const tb_tensor *t);

/**
 * @brief Number of rows: the product of every dimension except the last.
 * @param t A view (NULL gives 0).
 * @return numel / cols, or 0 for an invalid view.
 */
size_t tb_tensor_rows(const tb_tensor *t);

#ifdef __cplusplus
}
#endif

#endif /* TBLOCKS_TENSOR_H */
