/* Every test suite, one line each: X(name) declares Suite *suite_<name>(void)
 * defined in test/unit/test_<name>.c. main.c runs them all. */
#ifndef TBT_SUITES_H
#define TBT_SUITES_H

#include <check.h>

#define TBT_SUITES(X) \
    X(core)           \
    X(threads)        \
    X(gemm)           \
    X(scratch)        \
    X(linear)         \
    X(lora)           \
    X(embedding)      \
    X(activation)     \
    X(softmax)        \
    X(dropout)        \
    X(residual)       \
    X(loss)           \
    X(contrastive)    \
    X(layernorm)      \
    X(rmsnorm)        \
    X(batchnorm)      \
    X(attention)      \
    X(mha)            \
    X(lora_combine)   \
    X(lstm)           \
    X(ptuning)        \
    X(optim)          \
    X(schedule)       \
    X(grad)           \
    X(comm)           \
    X(safetensors)    \
    X(checkpoint)     \
    X(sample)         \
    X(wordpiece)      \
    X(aliasing)       \
    X(gpt)            \
    X(lora_file)      \
    X(tfm)            \
    X(ptuning_input)  \
    X(ptuning_bert)   \
    X(bert_heads)     \
    X(bert_pretrain)  \
    X(prefix_tuning)  \
    X(minilm)         \
    X(bert_classify)  \
    X(clip)           \
    X(harness)        \
    X(examples)

#define TBT_DECLARE_(name) Suite *suite_##name(void);
TBT_SUITES(TBT_DECLARE_)
#undef TBT_DECLARE_

#endif
