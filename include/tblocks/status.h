/**
 * @file status.h
 * @brief Status codes returned by every fallible libtblocks function.
 *
 * One table, TB_STATUS_MAP, generates both the enum and the messages that
 * tb_strerror() returns, so they cannot drift apart. Values are pinned: a
 * code keeps its number forever and new codes are only appended.
 */
#ifndef TBLOCKS_STATUS_H
#define TBLOCKS_STATUS_H

#ifdef __cplusplus
extern "C" {
#endif

/**
 * @brief The status table: X(name, value, message) for every code.
 *
 * TB_OK is zero; every error is negative.
 */
#define TB_STATUS_MAP(X)                                                          \
    X(TB_OK, 0, "success")                                                        \
    X(TB_ERR_NULL_ARG, -1, "a required pointer argument is NULL")                 \
    X(TB_ERR_INVALID_ARG, -2, "an argument has an invalid value")                 \
    X(TB_ERR_SHAPE, -3, "tensor shapes do not match what the operation expects")  \
    X(TB_ERR_OVERFLOW, -4, "a size computation would overflow")                   \
    X(TB_ERR_NO_MEMORY, -5, "memory allocation failed")                           \
    X(TB_ERR_BUFFER_TOO_SMALL, -6, "a caller-provided buffer is too small")       \
    X(TB_ERR_NOT_FOUND, -7, "no item with that name exists")                      \
    X(TB_ERR_DUPLICATE, -8, "an item with that name already exists")              \
    X(TB_ERR_NON_FINITE, -9, "a value is NaN or infinite where it must be finite") \
    X(TB_ERR_IO, -10, "an input/output operation failed")                         \
    X(TB_ERR_FORMAT, -11, "input data is malformed or corrupt")                   \
    X(TB_ERR_STATE, -12, "the object is not in a state that allows this call")    \
    X(TB_ERR_UNSUPPORTED, -13, "the feature is not supported by this build or CPU")

/** @cond TB_INTERNAL */
#define TB_STATUS_ENUM_ENTRY_(name, value, message) name = value,
/** @endcond */

/**
 * @brief Result of a libtblocks call: TB_OK (0) or a negative error code.
 *
 * The codes and their meanings are listed in TB_STATUS_MAP. On error, the
 * context passed to the call (see tb_ctx) holds a sentence naming the
 * argument or value at fault; tb_ctx_error() returns it.
 */
typedef enum tb_status { TB_STATUS_MAP(TB_STATUS_ENUM_ENTRY_) } tb_status;

/**
 * @brief The fixed message for a status code.
 * @param status Any value; unknown values give "unknown status code".
 * @return A static string; never NULL.
 */
const char *tb_strerror(tb_status status);

#ifdef __cplusplus
}
#endif

#endif /* TBLOCKS_STATUS_H */
