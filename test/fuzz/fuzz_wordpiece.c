/*
 * libFuzzer target for the WordPiece tokenizer: texts (valid and invalid
 * UTF-8, every configuration) tokenized with a small built-in vocabulary,
 * and vocabularies loaded and used. The input form and the properties
 * checked are test/fuzz/wordpiece_harness.h's; the seeds
 * (test/fuzz/corpus_wordpiece) are replayed by test_wordpiece.c. Build
 * and run with `make fuzz-run-wordpiece`.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "wordpiece_harness.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    tb_status s;
    const int verdict = fwp_run(data, size, &s);
    if (verdict != FWP_FINE) {
        fprintf(stderr, "fuzz_wordpiece: property %d violated (status %s)\n", verdict, tb_strerror(s));
        abort();
    }
    return 0;
}
