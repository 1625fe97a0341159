/* Every test suite, one line each: X(name, weight) declares
 * Suite *suite_<name>(void) defined in test/unit/test_<name>.c. main.c runs
 * them all, or one shard of them (TB_TEST_SHARD); the weight is the
 * suite's run time in whole seconds (at least 1), measured once to balance
 * the shards (AMD EPYC Zen 4, the slower of the portable and avx2 families,
 * two families at once). It changes which shard runs a suite, never what
 * runs: re-measure when a suite grows a lot. */
#ifndef TBT_SUITES_H
#define TBT_SUITES_H

#include <check.h>

#define TBT_SUITES(X) \
    X(core, 1)            \
    X(threads, 1)         \
    X(gemm, 4)            \
    X(scratch, 1)         \
    X(linear, 1)          \
    X(lora, 1)            \
    X(embedding, 1)       \
    X(activation, 1)      \
    X(softmax, 1)         \
    X(dropout, 1)         \
    X(residual, 1)        \
    X(loss, 1)            \
    X(contrastive, 1)     \
    X(layernorm, 1)       \
    X(rmsnorm, 1)         \
    X(batchnorm, 1)       \
    X(attention, 19)      \
    X(mha, 10)            \
    X(lora_combine, 1)    \
    X(lstm, 1)            \
    X(ptuning, 1)         \
    X(optim, 1)           \
    X(schedule, 1)        \
    X(grad, 1)            \
    X(comm, 1)            \
    X(safetensors, 10)    \
    X(checkpoint, 1)      \
    X(sample, 1)          \
    X(wordpiece, 1)       \
    X(aliasing, 1)        \
    X(gpt, 6)             \
    X(lora_file, 21)      \
    X(tfm, 1)             \
    X(ptuning_input, 16)  \
    X(ptuning_bert, 2)    \
    X(bert_heads, 2)      \
    X(bert_pretrain, 2)   \
    X(prefix_tuning, 3)   \
    X(minilm, 55)         \
    X(bert_classify, 19)  \
    X(clip, 1)            \
    X(harness, 1)         \
    X(examples, 101)

#define TBT_DECLARE_(name, weight) Suite *suite_##name(void);
TBT_SUITES(TBT_DECLARE_)
#undef TBT_DECLARE_

#endif
