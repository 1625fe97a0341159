/* Random helpers shared by the examples. */
#include "ex_random.h"

/* A uniformly random index in [0, n) (modulo bias is negligible here). */
size_t ex_rand_below(tb_rng *rng, size_t n)
{
    return (size_t)(tb_rng_next(rng) % (uint64_t)n);
}

/* Fisher-Yates shuffle of idx[0..n). */
void ex_shuffle(tb_rng *rng, size_t *idx, size_t n)
{
    for (size_t i = n; i > 1; i--) {
        size_t j = ex_rand_below(rng, i);
        size_t t = idx[i - 1];
        idx[i - 1] = idx[j];
        idx[j] = t;
    }
}
