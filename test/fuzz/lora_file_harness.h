/*
 * tb_lora_file_parse() + tb_lora_file_apply() under test with two small
 * fixed LoRA layers, shared by the libFuzzer target (fuzz_lora_file.c) and
 * the unit test that replays its seeds (test_lora_file.c).
 *
 * The layers: "m.a" on a Linear 6 -> 5 in the (out, in) layout and "m.b"
 * on a Linear 5 -> 6 in the (in, out) layout (Conv1D's), each holding an
 * adapter "keep" (r 2) already, so that an error must leave something
 * intact.
 *
 * An input: a 4-byte little-endian length n, n bytes of adapter_config.json,
 * then the rest: adapter_model.safetensors (module names "m.a", "m.b").
 *
 * Properties checked (flf_run() returns which one failed): a failed open or
 * apply leaves a message and changes nothing (every adapter's values, the
 * adapter and active counts); an apply that succeeds added the adapter
 * "new" to exactly the file's modules with the file's shapes and finite
 * values; the status is one of the table's codes.
 */
#ifndef TB_FUZZ_LORA_FILE_HARNESS_H
#define TB_FUZZ_LORA_FILE_HARNESS_H

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tblocks.h"

enum { FLF_FINE = 0, FLF_SETUP_FAILED, FLF_CHANGED_ON_ERROR, FLF_NO_MESSAGE, FLF_BAD_RESULT,
       FLF_UNKNOWN_STATUS };

typedef struct flf_model {
    tb_linear lin[2];
    tb_lora lora[2];
    tb_lora_module mods[2];
} flf_model;

static int flf_setup(tb_ctx *ctx, flf_model *fm)
{
    tb_rng rng;
    tb_rng_init(&rng, 7);
    memset(fm, 0, sizeof *fm);
    const size_t in[2] = {6, 5}, out[2] = {5, 6};
    const char *names[2] = {"m.a", "m.b"};
    for (int i = 0; i < 2; i++) {
        tb_lora_config c = tb_lora_config_default(2);
        c.init = TB_LORA_INIT_RANDOM;
        if (tb_linear_init_layout(ctx, &fm->lin[i], in[i], out[i], 1,
                                  i ? TB_LINEAR_IN_OUT : TB_LINEAR_OUT_IN, &rng) != TB_OK ||
            tb_lora_init(ctx, &fm->lora[i], &fm->lin[i]) != TB_OK ||
            tb_lora_add(ctx, &fm->lora[i], "keep", &c, &rng) != TB_OK)
            return 0;
        fm->mods[i].name = names[i];
        fm->mods[i].lora = &fm->lora[i];
    }
    return 1;
}

static void flf_free(flf_model *fm)
{
    for (int i = 0; i < 2; i++) {
        tb_lora_free(&fm->lora[i]);
        tb_linear_free(&fm->lin[i]);
    }
}

static int flf_known_status(tb_status s)
{
    return s == TB_OK || s == TB_ERR_NULL_ARG || s == TB_ERR_INVALID_ARG || s == TB_ERR_SHAPE ||
           s == TB_ERR_OVERFLOW || s == TB_ERR_NO_MEMORY || s == TB_ERR_NOT_FOUND ||
           s == TB_ERR_DUPLICATE || s == TB_ERR_FORMAT || s == TB_ERR_NON_FINITE ||
           s == TB_ERR_STATE || s == TB_ERR_UNSUPPORTED;
}

/* Whether layer i still holds exactly "keep" with the values of a fresh setup. */
static int flf_intact(const flf_model *fm, const flf_model *ref)
{
    for (int i = 0; i < 2; i++) {
        const tb_lora *a = &fm->lora[i], *b = &ref->lora[i];
        if (a->n_adapters != 1 || a->n_active != 1 || strcmp(a->adapter[0].name, "keep") != 0)
            return 0;
        if (memcmp(a->adapter[0].A.value, b->adapter[0].A.value, a->adapter[0].A.numel * 4) ||
            memcmp(a->adapter[0].B.value, b->adapter[0].B.value, a->adapter[0].B.numel * 4) ||
            memcmp(a->base->weight.value, b->base->weight.value,
                   a->in_features * a->out_features * 4))
            return 0;
    }
    return 1;
}

/* Run one input; *status receives the final status. */
static int flf_run(const uint8_t *data, size_t size, tb_status *status)
{
    tb_ctx ctx;
    tb_ctx_init(&ctx);
    ctx.num_threads = 1;
    *status = TB_OK;
    if (size < 4)
        return FLF_FINE;
    const size_t n = (size_t)data[0] | (size_t)data[1] << 8 | (size_t)data[2] << 16 |
                     (size_t)data[3] << 24;
    if (n > size - 4)
        return FLF_FINE;
    flf_model fm, ref;
    if (!flf_setup(&ctx, &fm) || !flf_setup(&ctx, &ref))
        return FLF_SETUP_FAILED;
    int verdict = FLF_FINE;
    ctx.error[0] = '\0';
    tb_lora_file f;
    tb_status s = tb_lora_file_parse(&ctx, data + 4, n, data + 4 + n, size - 4 - n, &f);
    size_t added = 0;
    if (s == TB_OK) {
        s = tb_lora_file_apply(&ctx, &f, "new", fm.mods, 2, &added);
        if (s == TB_OK) {
            if (added != f.n_modules)
                verdict = FLF_BAD_RESULT;
            for (size_t k = 0; k < f.n_modules && verdict == FLF_FINE; k++) {
                const tb_lora_file_module *m = &f.modules[k];
                const int i = strcmp(m->name, "m.a") == 0 ? 0 : 1;
                const int at = tb_lora_find(&fm.lora[i], "new");
                if (at < 0) {
                    verdict = FLF_BAD_RESULT;
                    break;
                }
                const tb_lora_adapter *ad = &fm.lora[i].adapter[at];
                if (ad->A.numel != m->A->numel || ad->B.numel != m->B->numel ||
                    ad->config.rank != m->config.rank)
                    verdict = FLF_BAD_RESULT;
                for (size_t e = 0; e < ad->A.numel; e++)
                    if (!isfinite(ad->A.value[e]))
                        verdict = FLF_BAD_RESULT;
            }
        }
        tb_lora_file_close(&f);
    }
    if (s != TB_OK) {
        if (!ctx.error[0])
            verdict = FLF_NO_MESSAGE;
        else if (!flf_intact(&fm, &ref))
            verdict = FLF_CHANGED_ON_ERROR;
    }
    if (!flf_known_status(s))
        verdict = FLF_UNKNOWN_STATUS;
    *status = s;
    flf_free(&fm);
    flf_free(&ref);
    return verdict;
}

#endif /* TB_FUZZ_LORA_FILE_HARNESS_H */
