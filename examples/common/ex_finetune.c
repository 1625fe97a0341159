/* The fine-tuning examples' shared pieces (ex_finetune.h). */
#define _POSIX_C_SOURCE 200809L
#include "ex_finetune.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#ifdef __GLIBC__
#include <malloc.h> /* malloc_trim */
#endif

#include "ex_random.h"

int ex_ft_corpus_make(const ex_grammar *g, uint64_t seed, size_t bytes, size_t T,
                      unsigned val_percent, ex_ft_corpus *c)
{
    size_t len = 0;
    c->text = ex_grammar_text(g, seed, bytes, &len);
    if (!c->text)
        return 0;
    c->n_val = len * val_percent / 100;
    c->n_train = len - c->n_val;
    return c->n_val >= T + 2;
}

void ex_ft_windows(const ex_ft_corpus *c, tb_rng *rng, int val, size_t idx, size_t n_batches,
                   size_t B, size_t T, int32_t *x, int32_t *y)
{
    const unsigned char *bytes = (const unsigned char *)c->text;
    for (size_t b = 0; b < B; b++) {
        const size_t off = val ? c->n_train + (c->n_val - T - 1) * (idx * B + b) /
                                                  (n_batches * B)
                               : ex_rand_below(rng, c->n_train - T - 1);
        for (size_t t = 0; t < T; t++) {
            x[b * T + t] = bytes[off + t];
            y[b * T + t] = bytes[off + t + 1];
        }
    }
}

void ex_ft_list_bytes(const tb_param_list *l, size_t *values, size_t *grads)
{
    for (size_t i = 0; i < l->count; i++) {
        const tb_param *p = l->items[i].param;
        *values += p->numel * sizeof(float);
        if (p->grad)
            *grads += p->numel * sizeof(float);
    }
}

long ex_proc_kib(const char *field)
{
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    long kib = -1;
    const size_t n = strlen(field);
    while (f && fgets(line, sizeof line, f))
        if (strncmp(line, field, n) == 0 && line[n] == ':')
            kib = strtol(line + n + 1, NULL, 10);
    if (f)
        fclose(f);
    return kib;
}

/* VmHWM is reset to the current resident size by writing "5" to
 * /proc/self/clear_refs. glibc keeps memory an earlier phase freed (its
 * mmap threshold grows with the blocks freed), so malloc_trim() hands that
 * back first; otherwise the next phase would reuse it unseen and the peak
 * would be the earlier phase's. */
void ex_rss_phase_start(void)
{
#ifdef __GLIBC__
    malloc_trim(0);
#endif
    FILE *f = fopen("/proc/self/clear_refs", "w");
    if (f) {
        fputs("5", f);
        fclose(f);
    }
}

uint64_t ex_ft_checksum(const tb_param_list *l, uint64_t h)
{
    for (size_t i = 0; i < l->count; i++) {
        const unsigned char *b = (const unsigned char *)l->items[i].param->value;
        for (size_t k = 0; k < l->items[i].param->numel * sizeof(float); k++)
            h = (h ^ b[k]) * 1099511628211ull;
    }
    return h;
}
