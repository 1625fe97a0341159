/*
 * Writes the seed corpus of the checkpoint fuzz target into a directory
 * (test/fuzz/corpus_checkpoint; `make fuzz-seeds` runs it): small valid
 * checkpoints of the harness's model (checkpoint_harness.h), each behind
 * the mode byte it is meant to be loaded with. A name starting with "ok-"
 * must load with TB_OK, any other must be refused; test_checkpoint.c
 * replays every seed and checks both.
 */
#define _POSIX_C_SOURCE 200809L

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "checkpoint_harness.h"

static const char *out_dir;

static void fail(tb_ctx *ctx, const char *what)
{
    fprintf(stderr, "gen_checkpoint_corpus: %s: %s\n", what, tb_ctx_error(ctx));
    exit(1);
}

/* The file at tmp as a seed named name with mode byte mode. */
static void emit(tb_ctx *ctx, const char *tmp, const char *name, unsigned mode)
{
    FILE *f = fopen(tmp, "rb");
    if (!f)
        fail(ctx, "reopening the checkpoint");
    static unsigned char buf[1 << 16];
    buf[0] = (unsigned char)mode;
    const size_t n = fread(buf + 1, 1, sizeof buf - 1, f);
    fclose(f);
    char path[1024];
    snprintf(path, sizeof path, "%s/%s", out_dir, name);
    if (!fzc_write(path, buf, n + 1))
        fail(ctx, path);
    printf("  %s (%zu bytes, mode 0x%02x)\n", path, n + 1, mode);
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: gen_checkpoint_corpus DIR\n");
        return 2;
    }
    out_dir = argv[1];
    char tmp[1024];
    snprintf(tmp, sizeof tmp, "%s/.gen.tmp", out_dir);
    tb_ctx ctx;
    tb_ctx_init(&ctx);
    const tb_st_meta extra[1] = {{"note", "fuzz seed"}};
    for (int ams = 0; ams < 2; ams++) {
        fzc_model m;
        if (fzc_model_init(&ctx, &m, ams, 11) != TB_OK)
            fail(&ctx, "model");
        const unsigned a = ams ? FZC_AMSGRAD : 0;
        if (tb_checkpoint_save(&ctx, tmp, &m.list, &m.opt, &m.rng, extra, 1, TB_CKPT_DEFAULT) !=
            TB_OK)
            fail(&ctx, "save");
        emit(&ctx, tmp, ams ? "ok-full-amsgrad" : "ok-full-adamw", a);
        emit(&ctx, tmp, ams ? "ok-resealed-amsgrad" : "ok-resealed-adamw", a | FZC_RESEAL);
        emit(&ctx, tmp, ams ? "refused-kind-adamw-amsgrad" : "refused-kind-adamw", a ^ FZC_AMSGRAD);
        emit(&ctx, tmp, ams ? "refused-unknown-flag-amsgrad" : "refused-unknown-flag",
             a | FZC_UNKNOWN_FLAG);
        if (!ams) { /* parameters and stream only */
            if (tb_checkpoint_save(&ctx, tmp, &m.list, NULL, &m.rng, NULL, 0, TB_CKPT_DEFAULT) !=
                TB_OK)
                fail(&ctx, "save");
            emit(&ctx, tmp, "ok-params-rng", FZC_PARAMS_ONLY);
            emit(&ctx, tmp, "refused-params-rng-with-optimizer", 0);
        }
        /* a NaN parameter, saved on purpose */
        m.fc.weight.value[4] = NAN;
        if (tb_checkpoint_save(&ctx, tmp, &m.list, &m.opt, &m.rng, NULL, 0,
                               TB_CKPT_ALLOW_NONFINITE) != TB_OK)
            fail(&ctx, "save");
        emit(&ctx, tmp, ams ? "ok-nan-allowed-amsgrad" : "ok-nan-allowed", a | FZC_ALLOW_NONFINITE);
        emit(&ctx, tmp, ams ? "refused-nan-amsgrad" : "refused-nan", a);
        /* no checksums, as libtblocks 0.1.0 wrote it */
        m.fc.weight.value[4] = 0.5f;
        if (tb_st_save_params(&ctx, tmp, &m.list, NULL, 0) != TB_OK)
            fail(&ctx, "save");
        if (!ams)
            emit(&ctx, tmp, "ok-unsealed-params", FZC_PARAMS_ONLY | FZC_NO_RNG);
        fzc_model_free(&m);
    }
    remove(tmp);
    return 0;
}
