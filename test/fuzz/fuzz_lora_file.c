/*
 * libFuzzer target for PEFT adapter files: tb_lora_file_parse() (the
 * configuration's JSON and the tensors' keys, shapes, ranks and patterns)
 * and tb_lora_file_apply() onto two small LoRA layers. The input form and
 * the properties checked are test/fuzz/lora_file_harness.h's; the seeds
 * (test/fuzz/corpus_lora_file, from gen_lora_file_corpus.py) are replayed
 * by test_lora_file.c. Build and run with `make fuzz-run-lora_file`.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "lora_file_harness.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    tb_status s;
    const int verdict = flf_run(data, size, &s);
    if (verdict != FLF_FINE) {
        fprintf(stderr, "fuzz_lora_file: property %d violated (status %s)\n", verdict,
                tb_strerror(s));
        abort();
    }
    return 0;
}
