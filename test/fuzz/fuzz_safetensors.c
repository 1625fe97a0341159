/*
 * libFuzzer target for the safetensors parser (tb_st_parse) and the value
 * conversions (tb_st_read_f32). Build and run with `make fuzz`
 * (clang -fsanitize=fuzzer,address,undefined); `make check` runs it for
 * FUZZ_SECONDS. Inputs that ever failed are kept in test/fuzz/regressions
 * and replayed by test_safetensors.c on every test run.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#include "tblocks.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    tb_ctx ctx;
    tb_ctx_init(&ctx);
    ctx.num_threads = 1;
    tb_st_file f;
    if (tb_st_parse(&ctx, data, size, &f) != TB_OK)
        return 0;
    for (size_t i = 0; i < f.count; i++) {
        const tb_st_tensor *t = &f.tensors[i];
        if (t->numel > (1u << 20))
            continue;
        float *buf = malloc((t->numel ? t->numel : 1) * sizeof(float));
        if (buf) {
            (void)tb_st_read_f32(&ctx, t, buf, t->numel);
            free(buf);
        }
        (void)tb_st_find(&f, t->name);
    }
    for (size_t i = 0; i < f.n_meta; i++)
        (void)tb_st_meta_get(&f, f.meta[i].key);
    tb_st_close(&f);
    return 0;
}
