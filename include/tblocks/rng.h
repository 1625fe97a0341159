/**
 * @file rng.h
 * @brief Seeded, counter-based random numbers.
 *
 * Number i of a stream is a pure function of (seed, i) (SplitMix64 output
 * function applied to a Weyl sequence). That makes every use reproducible
 * from the seed on every machine and lets parallel code draw numbers for
 * element i without depending on how work is split among threads: the same
 * seed gives the same dropout mask and initial weights for any thread count.
 */
#ifndef TBLOCKS_RNG_H
#define TBLOCKS_RNG_H

#include <stddef.h>
#include <stdint.h>

#include "context.h"
#include "status.h"

#ifdef __cplusplus
extern "C" {
#endif

/** @brief A random stream: a key derived from the seed and a position. */
typedef struct tb_rng {
    uint64_t key;     /**< Derived from the seed; fixed for the stream. */
    uint64_t counter; /**< Index of the next number to draw. */
} tb_rng;

/**
 * @brief Start the stream for `seed` at position 0.
 * @param rng Stream to initialise; nothing happens if NULL.
 * @param seed Any value; equal seeds give equal streams.
 */
void tb_rng_init(tb_rng *rng, uint64_t seed);

/**
 * @brief Number `index` of the stream with key `key`, without state.
 * @param key A stream key (tb_rng::key).
 * @param index Position in the stream.
 * @return 64 random bits.
 */
uint64_t tb_rng_bits_at(uint64_t key, uint64_t index);

/**
 * @brief The next 64 random bits; advances the stream by one.
 * @param rng Stream (must not be NULL).
 * @return 64 random bits.
 */
uint64_t tb_rng_next(tb_rng *rng);

/**
 * @brief A uniform float in [0, 1) with 24 random bits; advances by one.
 * @param rng Stream (must not be NULL).
 * @return The number.
 */
float tb_rng_uniform(tb_rng *rng);

/**
 * @brief A standard normal float (Box-Muller); advances by one.
 * @param rng Stream (must not be NULL).
 * @return The number.
 */
float tb_rng_normal(tb_rng *rng);

/**
 * @brief Fill `x[0..n)` with uniform numbers in [lo, hi); element i uses
 * stream position `counter + i`, then the stream advances by n.
 * @param ctx Context (threads, error detail).
 * @param rng Stream.
 * @param x Output, n floats.
 * @param n Count (0 is allowed and does nothing).
 * @param lo Lower bound.
 * @param hi Upper bound, finite and >= lo.
 * @return TB_OK, TB_ERR_NULL_ARG or TB_ERR_INVALID_ARG (bad bounds; an
 *         output overlaps an input it still reads, or another output: x and
 *         rng, advanced after x is written, are both outputs).
 */
tb_status tb_rng_fill_uniform(tb_ctx *ctx, tb_rng *rng, float *x, size_t n, float lo,
                              float hi);

/**
 * @brief Fill `x[0..n)` with normal numbers N(mean, std^2); element i uses
 * stream position `counter + i`, then the stream advances by n.
 * @param ctx Context (threads, error detail).
 * @param rng Stream.
 * @param x Output, n floats.
 * @param n Count (0 is allowed and does nothing).
 * @param mean Mean, finite.
 * @param std Standard deviation, finite and >= 0.
 * @return TB_OK, TB_ERR_NULL_ARG or TB_ERR_INVALID_ARG (bad mean or std;
 *         an output overlaps an input it still reads, or another output: x
 *         and rng, advanced after x is written, are both outputs).
 */
tb_status tb_rng_fill_normal(tb_ctx *ctx, tb_rng *rng, float *x, size_t n, float mean,
                             float std);

#ifdef __cplusplus
}
#endif

#endif /* TBLOCKS_RNG_H */
