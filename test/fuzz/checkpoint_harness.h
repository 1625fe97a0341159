/*
 * tb_checkpoint_load() under test with a small fixed model, shared by the
 * libFuzzer target (fuzz_checkpoint.c), the seed generator
 * (gen_checkpoint_corpus.c) and the unit test that replays the seeds
 * (test_checkpoint.c), so all three agree on the model and the input form.
 *
 * The model: one Linear layer 3 -> 2 with bias ("fc.weight" (2, 3),
 * "fc.bias" (2)), AdamW over it (with or without AMSGrad) after one step,
 * and a stream.
 *
 * An input is one mode byte followed by a safetensors image:
 *   bit 0  pass TB_CKPT_ALLOW_NONFINITE
 *   bit 1  load the parameters only (no optimizer)
 *   bit 2  no stream
 *   bit 3  reseal: if the image parses, rewrite it with its checksums
 *          recomputed (float tensors as F32, tblocks.checksum.* replaced),
 *          so that mutations reach the checks behind the checksums
 *          (metadata values, optimizer state, shapes, non-finite values)
 *   bit 4  the optimizer uses AMSGrad (kind adamw-amsgrad, three moments)
 *   bit 5  pass an unknown flag as well
 *
 * Properties checked on every input (fzc_run() returns which one failed):
 * a failed load changes nothing (parameters, moments, step, skipped count,
 * stream) and leaves a message; a load without bit 0 that succeeds leaves
 * only finite values; an unknown flag never succeeds; the status is one of
 * the table's codes.
 */
#ifndef TB_FUZZ_CHECKPOINT_HARNESS_H
#define TB_FUZZ_CHECKPOINT_HARNESS_H

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "io/checkpoint_internal.h"
#include "tblocks.h"

enum {
    FZC_ALLOW_NONFINITE = 1 << 0,
    FZC_PARAMS_ONLY = 1 << 1,
    FZC_NO_RNG = 1 << 2,
    FZC_RESEAL = 1 << 3,
    FZC_AMSGRAD = 1 << 4,
    FZC_UNKNOWN_FLAG = 1 << 5
};

/* Property violations reported by fzc_run(). */
enum {
    FZC_FINE = 0,
    FZC_SETUP_FAILED,
    FZC_CHANGED_ON_ERROR,
    FZC_NO_MESSAGE,
    FZC_NONFINITE_LOADED,
    FZC_UNKNOWN_FLAG_ACCEPTED,
    FZC_UNKNOWN_STATUS
};

typedef struct fzc_model {
    tb_linear fc;
    tb_param_list list;
    tb_adam opt;
    tb_rng rng;
} fzc_model;

/* Everything a load may change, as bytes (NaN-safe comparison). */
typedef struct fzc_state {
    float w[6], b[2], m[8], v[8], vmax[8];
    uint64_t step, skipped, key, counter;
} fzc_state;

static inline void fzc_model_free(fzc_model *m)
{
    tb_adam_free(&m->opt);
    tb_param_list_free(&m->list);
    tb_linear_free(&m->fc);
}

/* The model after one AdamW step on fixed gradients (seed picks the
 * weights and the stream). */
static inline tb_status fzc_model_init(tb_ctx *ctx, fzc_model *m, int amsgrad, uint64_t seed)
{
    memset(m, 0, sizeof *m);
    tb_rng_init(&m->rng, seed);
    tb_status s;
    if ((s = tb_linear_init(ctx, &m->fc, 3, 2, 1, &m->rng)) != TB_OK ||
        (s = tb_param_list_init(ctx, &m->list)) != TB_OK ||
        (s = tb_linear_params(ctx, &m->fc, "fc", &m->list)) != TB_OK)
        return s;
    tb_adam_config cfg = tb_adamw_default_config();
    cfg.amsgrad = amsgrad;
    if ((s = tb_adam_init(ctx, &m->opt, &m->list, &cfg)) != TB_OK)
        return s;
    for (size_t i = 0; i < 6; i++)
        m->fc.weight.grad[i] = 0.25f * (float)i - 0.5f;
    m->fc.bias.grad[0] = 1.0f;
    m->fc.bias.grad[1] = -2.0f;
    return tb_adam_step(ctx, &m->opt, 1.0f);
}

static inline void fzc_state_take(const fzc_model *m, fzc_state *st)
{
    memset(st, 0, sizeof *st);
    memcpy(st->w, m->fc.weight.value, sizeof st->w);
    memcpy(st->b, m->fc.bias.value, sizeof st->b);
    memcpy(st->m, m->opt.m, m->opt.n_state * sizeof(float));
    memcpy(st->v, m->opt.v, m->opt.n_state * sizeof(float));
    if (m->opt.vmax)
        memcpy(st->vmax, m->opt.vmax, m->opt.n_state * sizeof(float));
    st->step = m->opt.step;
    st->skipped = m->opt.skipped;
    st->key = m->rng.key;
    st->counter = m->rng.counter;
}

static inline int fzc_all_finite(const float *x, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!isfinite(x[i]))
            return 0;
    return 1;
}

/* The image rewritten at path with its checksums recomputed; 0 when it
 * does not parse, holds a non-float tensor or is too large. */
static inline int fzc_reseal(tb_ctx *ctx, const uint8_t *img, size_t n, const char *path)
{
    tb_st_file f;
    if (tb_st_parse(ctx, img, n, &f) != TB_OK)
        return 0;
    size_t total = 0;
    int ok = 1;
    for (size_t i = 0; i < f.count && ok; i++) {
        const tb_st_dtype d = f.tensors[i].dtype;
        ok = (d == TB_ST_F32 || d == TB_ST_F16 || d == TB_ST_BF16 || d == TB_ST_F64) &&
             f.tensors[i].numel <= (1u << 16);
        total += f.tensors[i].numel;
    }
    float *vals = ok ? malloc((total ? total : 1) * sizeof(float)) : NULL;
    tb_st_entry *e = ok ? malloc((f.count ? f.count : 1) * sizeof *e) : NULL;
    tb_st_meta *meta = ok ? malloc((f.n_meta ? f.n_meta : 1) * sizeof *meta) : NULL;
    ok = vals && e && meta;
    size_t at = 0, k = 0;
    for (size_t i = 0; i < f.count && ok; i++) {
        const tb_st_tensor *t = &f.tensors[i];
        ok = tb_st_read_f32(ctx, t, vals + at, t->numel) == TB_OK;
        e[i] = (tb_st_entry){t->name, vals + at, t->ndim, t->shape};
        at += t->numel;
    }
    for (size_t i = 0; i < f.n_meta && ok; i++)
        if (strncmp(f.meta[i].key, "tblocks.checksum.", 17) != 0)
            meta[k++] = f.meta[i];
    ok = ok && tb_ckpt_write_sealed(ctx, path, e, f.count, meta, k) == TB_OK;
    free(vals);
    free(e);
    free(meta);
    tb_st_close(&f);
    return ok;
}

static inline int fzc_write(const char *path, const uint8_t *bytes, size_t n)
{
    FILE *f = fopen(path, "wb");
    if (!f)
        return 0;
    const int ok = fwrite(bytes, 1, n, f) == n;
    return fclose(f) == 0 && ok;
}

/* One input (mode byte + image) through tb_checkpoint_load(), using path as
 * the file; the status into *status (may be NULL). Returns FZC_FINE or the
 * property that failed. */
static inline int fzc_run(const uint8_t *data, size_t size, const char *path, tb_status *status)
{
    if (size < 1)
        return FZC_FINE;
    const unsigned mode = data[0];
    tb_ctx ctx;
    tb_ctx_init(&ctx);
    ctx.num_threads = 1;
    if (!((mode & FZC_RESEAL) && fzc_reseal(&ctx, data + 1, size - 1, path)) &&
        !fzc_write(path, data + 1, size - 1))
        return FZC_SETUP_FAILED;
    fzc_model m;
    if (fzc_model_init(&ctx, &m, (mode & FZC_AMSGRAD) != 0, 7) != TB_OK) {
        fzc_model_free(&m);
        return FZC_SETUP_FAILED;
    }
    fzc_state before, after;
    fzc_state_take(&m, &before);
    unsigned flags = (mode & FZC_ALLOW_NONFINITE) ? TB_CKPT_ALLOW_NONFINITE : TB_CKPT_DEFAULT;
    if (mode & FZC_UNKNOWN_FLAG)
        flags |= 1u << 7;
    tb_ctx_clear_error(&ctx);
    const tb_status s = tb_checkpoint_load(&ctx, path, &m.list,
                                           (mode & FZC_PARAMS_ONLY) ? NULL : &m.opt,
                                           (mode & FZC_NO_RNG) ? NULL : &m.rng, flags);
    fzc_state_take(&m, &after);
    int verdict = FZC_FINE;
    if (strcmp(tb_strerror(s), "unknown status code") == 0)
        verdict = FZC_UNKNOWN_STATUS;
    else if (s != TB_OK && memcmp(&before, &after, sizeof before) != 0)
        verdict = FZC_CHANGED_ON_ERROR;
    else if (s != TB_OK && tb_ctx_error(&ctx)[0] == '\0')
        verdict = FZC_NO_MESSAGE;
    else if (s == TB_OK && (mode & FZC_UNKNOWN_FLAG))
        verdict = FZC_UNKNOWN_FLAG_ACCEPTED;
    else if (s == TB_OK && !(mode & FZC_ALLOW_NONFINITE) &&
             !(fzc_all_finite(after.w, 6) && fzc_all_finite(after.b, 2) &&
               fzc_all_finite(after.m, 8) && fzc_all_finite(after.v, 8) &&
               fzc_all_finite(after.vmax, 8)))
        verdict = FZC_NONFINITE_LOADED;
    fzc_model_free(&m);
    if (status)
        *status = s;
    return verdict;
}

#endif /* TB_FUZZ_CHECKPOINT_HARNESS_H */
