/* Built-in text corpora for the examples (ex_corpus.h). */
#include "ex_corpus.h"

#include <stdio.h>
#include <stdlib.h>

#include "ex_random.h"
#include "tblocks.h"

#define N_OF(a) (sizeof(a) / sizeof((a)[0]))

static const char *const garden_subj[] = {"the cat",     "a small dog",  "the old man",
                                          "my sister",   "the teacher",  "a young bird",
                                          "the farmer",  "our neighbour"};
static const char *const garden_verb[] = {"sees",  "likes", "finds", "follows",
                                          "paints", "feeds", "calls", "watches"};
static const char *const garden_obj[] = {"the red ball",  "a green apple",   "the quiet river",
                                         "a tall tree",   "the bright moon", "a wooden boat",
                                         "the morning sun", "an open door"};
static const char *const garden_tail[] = {"in the garden",  "after dinner", "every morning",
                                          "near the house", "on sunday",    "with great care"};

const ex_grammar ex_grammar_garden = {garden_subj, N_OF(garden_subj), garden_verb,
                                      N_OF(garden_verb), garden_obj, N_OF(garden_obj),
                                      garden_tail, N_OF(garden_tail)};

static const char *const kitchen_subj[] = {"the cook",   "a hungry child", "the baker",
                                           "my uncle",   "the waiter",     "a tired guest",
                                           "the butcher", "our landlady"};
static const char *const kitchen_verb[] = {"bakes", "tastes", "slices", "stirs",
                                           "cooks", "pours",  "boils",  "peels"};
static const char *const kitchen_obj[] = {"a warm loaf",   "the sweet jam",  "a bowl of soup",
                                          "the black pot", "a ripe lemon",   "the cold milk",
                                          "a spoon of salt", "the thin pastry"};
static const char *const kitchen_tail[] = {"before noon",  "for supper",   "at the stove",
                                           "by the window", "on monday",   "without a word"};

const ex_grammar ex_grammar_kitchen = {kitchen_subj, N_OF(kitchen_subj), kitchen_verb,
                                       N_OF(kitchen_verb), kitchen_obj, N_OF(kitchen_obj),
                                       kitchen_tail, N_OF(kitchen_tail)};

char *ex_grammar_text(const ex_grammar *g, uint64_t seed, size_t target, size_t *len)
{
    char *buf = malloc(target + 256);
    if (!buf)
        return NULL;
    tb_rng rng;
    tb_rng_init(&rng, seed);
    size_t at = 0;
    while (at < target) {
        const char *s = g->subj[ex_rand_below(&rng, g->n_subj)];
        const char *v = g->verb[ex_rand_below(&rng, g->n_verb)];
        const char *o = g->obj[ex_rand_below(&rng, g->n_obj)];
        int n;
        /* The draws in a fixed order (function arguments have none). */
        if (ex_rand_below(&rng, 3) == 0) {
            const char *end = ex_rand_below(&rng, 4) ? " " : "\n";
            const char *t = g->tail[ex_rand_below(&rng, g->n_tail)];
            n = snprintf(buf + at, 256, "%c%s %s %s %s.%s", s[0] - 32, s + 1, v, o, t, end);
        } else {
            n = snprintf(buf + at, 256, "%c%s %s %s.%s", s[0] - 32, s + 1, v, o,
                         ex_rand_below(&rng, 4) ? " " : "\n");
        }
        at += (size_t)n;
    }
    *len = at;
    return buf;
}
