/*
 * Built-in text corpora for the examples: sentences from a small grammar
 * (subject, verb, object, and now and then a tail), so that nothing has to
 * be downloaded and a model's progress is easy to read. One grammar is the
 * gpt example's corpus; the kitchen one has the same form and spelling
 * conventions but other words, a second task for a model trained on the
 * first (examples/lora_finetune).
 */
#ifndef EX_CORPUS_H
#define EX_CORPUS_H

#include <stddef.h>
#include <stdint.h>

typedef struct ex_grammar {
    const char *const *subj; /* lower case: the sentence capitalises the first letter */
    size_t n_subj;
    const char *const *verb;
    size_t n_verb;
    const char *const *obj;
    size_t n_obj;
    const char *const *tail;
    size_t n_tail;
} ex_grammar;

/* "The cat sees the red ball in the garden." (the gpt example's corpus). */
extern const ex_grammar ex_grammar_garden;
/* A kitchen: "The cook bakes a warm loaf before noon." */
extern const ex_grammar ex_grammar_kitchen;

/* At least `target` bytes of sentences (one in three with a tail; a space
 * or, one time in four, a newline after each), drawn from a tb_rng seeded
 * with `seed`. *len receives the length; the text is NUL-terminated.
 * NULL when out of memory; free() the result. Every word must be shorter
 * than 60 bytes. */
char *ex_grammar_text(const ex_grammar *g, uint64_t seed, size_t target, size_t *len);

#endif /* EX_CORPUS_H */
