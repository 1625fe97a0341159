/*
 * What the fine-tuning examples (lora_finetune, ptuning) share: a task's
 * corpus split into training and validation bytes, the windows a step or a
 * validation pass reads from it, the per-phase memory measurement and a
 * checksum of the weights.
 */
#ifndef EX_FINETUNE_H
#define EX_FINETUNE_H

#include <stddef.h>
#include <stdint.h>

#include "ex_corpus.h"
#include "tblocks.h"

/* A task's text: the first n_train bytes train, the next n_val validate. */
typedef struct ex_ft_corpus {
    char *text;
    size_t n_train, n_val;
} ex_ft_corpus;

/* `bytes` of g's text from seed, val_percent of it held out for
 * validation. Returns 0 when out of memory or when the validation part is
 * shorter than T + 2 bytes (c->text may be set then: free it). */
int ex_ft_corpus_make(const ex_grammar *g, uint64_t seed, size_t bytes, size_t T,
                      unsigned val_percent, ex_ft_corpus *c);

/* B windows of T+1 bytes into x (inputs) and y (the next bytes), (B, T)
 * each: from random training offsets (val 0, drawn from rng), or (val 1)
 * batch idx of n_batches from fixed offsets spread over the validation
 * part. */
void ex_ft_windows(const ex_ft_corpus *c, tb_rng *rng, int val, size_t idx, size_t n_batches,
                   size_t B, size_t T, int32_t *x, int32_t *y);

/* Adds the bytes of the values and of the gradient buffers that exist
 * (grad not NULL, trainable or not) of a list's parameters. */
void ex_ft_list_bytes(const tb_param_list *l, size_t *values, size_t *grads);

/* Resident memory, Linux only (-1 elsewhere): a field of /proc/self/status
 * in KiB, "VmRSS" (now) or "VmHWM" (the peak since ex_rss_phase_start()). */
long ex_proc_kib(const char *field);

/* Start measuring a phase's peak: hand memory glibc kept back to the
 * system (malloc_trim), then reset VmHWM to the current resident size. */
void ex_rss_phase_start(void);

/* FNV-1a over the values of a list, continuing from h (start with
 * EX_FNV_OFFSET): equal runs have equal weights bit for bit. */
#define EX_FNV_OFFSET 14695981039346656037ull
uint64_t ex_ft_checksum(const tb_param_list *l, uint64_t h);

#endif /* EX_FINETUNE_H */
