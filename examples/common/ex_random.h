/*
 * Random helpers shared by the examples, on top of the library's seeded
 * tb_rng (so every run is reproducible from --seed).
 */
#ifndef EX_RANDOM_H
#define EX_RANDOM_H

#include <stddef.h>

#include "tblocks.h"

/* A uniform integer in [0, n) (n >= 1; the modulo bias is negligible for the
 * small n the examples use). */
size_t ex_rand_below(tb_rng *rng, size_t n);

/* Fisher-Yates shuffle of idx[0..n). */
void ex_shuffle(tb_rng *rng, size_t *idx, size_t n);

#endif /* EX_RANDOM_H */
