/*
 * Training checkpoints (checkpoint.h):
 *   - exact resume: a tiny MLP trained 12 steps (AdamW with groups, a
 *     warm-up + cosine schedule, clipping, batches drawn from a tb_rng) in
 *     one process equals 5 steps, a checkpoint, and 7 more steps in a new
 *     process that starts from other weights and another stream: the final
 *     checkpoints are byte-identical files. A negative control (resuming
 *     without the optimizer state) must differ, so the comparison can fail;
 *   - a checkpoint is a plain safetensors weights file as well;
 *   - refusals: another model configuration (the tensor is named), another
 *     optimizer kind, a truncated file, reserved metadata; nothing changes
 *     on error.
 */
#define _POSIX_C_SOURCE 200809L

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "suites.h"
#include "testutil.h"

enum { IN = 5, OUT = 3, BATCH = 4, TOTAL = 12, SPLIT = 5 };

typedef struct model {
    size_t hidden;
    tb_linear fc1, fc2;
    tb_param_list list;
    tb_adam opt;
    tb_rng data;
} model;

static tb_status model_init(tb_ctx *ctx, model *m, size_t hidden, uint64_t seed, int decoupled)
{
    memset(m, 0, sizeof *m);
    m->hidden = hidden;
    tb_rng init;
    tb_rng_init(&init, seed);
    tb_rng_init(&m->data, seed + 1000);
    tb_status s;
    if ((s = tb_linear_init(ctx, &m->fc1, IN, hidden, 1, &init)) != TB_OK ||
        (s = tb_linear_init(ctx, &m->fc2, hidden, OUT, 1, &init)) != TB_OK ||
        (s = tb_param_list_init(ctx, &m->list)) != TB_OK ||
        (s = tb_linear_params(ctx, &m->fc1, "fc1", &m->list)) != TB_OK ||
        (s = tb_linear_params(ctx, &m->fc2, "fc2", &m->list)) != TB_OK)
        return s;
    tb_param_list_zero_grad(&m->list);
    tb_adam_config cfg = decoupled ? tb_adamw_default_config() : tb_adam_default_config();
    cfg.lr = 0.05f;
    cfg.amsgrad = 1;
    if ((s = tb_adam_init(ctx, &m->opt, &m->list, &cfg)) != TB_OK)
        return s;
    return tb_adam_add_group(ctx, &m->opt, cfg.lr, 0.0f, tb_select_no_decay, NULL, NULL);
}

static void model_free(model *m)
{
    tb_adam_free(&m->opt);
    tb_param_list_free(&m->list);
    tb_linear_free(&m->fc1);
    tb_linear_free(&m->fc2);
}

/* One training step on a batch drawn from m->data. */
static tb_status train_step(tb_ctx *ctx, model *m)
{
    const size_t H = m->hidden;
    float x[BATCH * IN], h[BATCH * 16], g[BATCH * 16], lo[BATCH * OUT], dlo[BATCH * OUT];
    float dg[BATCH * 16], dh[BATCH * 16], dx[BATCH * IN];
    int32_t y[BATCH];
    for (size_t i = 0; i < BATCH * IN; i++)
        x[i] = tb_rng_normal(&m->data);
    for (size_t i = 0; i < BATCH; i++)
        y[i] = (int32_t)(tb_rng_next(&m->data) % OUT);
    unsigned char cache[256];
    size_t cb;
    tb_status s = tb_cross_entropy_cache_size(BATCH, &cb);
    if (s != TB_OK || cb > sizeof cache || H > 16)
        return TB_ERR_INVALID_ARG;
    tb_tensor xt = tb_tensor_2d(x, BATCH, IN), ht = tb_tensor_2d(h, BATCH, H);
    tb_tensor gt = tb_tensor_2d(g, BATCH, H), lt = tb_tensor_2d(lo, BATCH, OUT);
    tb_tensor dlt = tb_tensor_2d(dlo, BATCH, OUT), dgt = tb_tensor_2d(dg, BATCH, H);
    tb_tensor dht = tb_tensor_2d(dh, BATCH, H), dxt = tb_tensor_2d(dx, BATCH, IN);
    tb_cross_entropy_config ce = tb_cross_entropy_default_config();
    float loss;
    tb_param_list_zero_grad(&m->list);
    tb_lr_schedule sched = tb_lr_schedule_make(TB_LR_WARMUP_COSINE, 3, TOTAL, 0.1f);
    double norm;
    if ((s = tb_linear_forward(ctx, &m->fc1, &xt, &ht)) != TB_OK ||
        (s = tb_gelu_forward(ctx, TB_GELU_TANH, &ht, &gt)) != TB_OK ||
        (s = tb_linear_forward(ctx, &m->fc2, &gt, &lt)) != TB_OK ||
        (s = tb_cross_entropy_forward(ctx, &ce, &lt, y, BATCH, &loss, cache, cb)) != TB_OK ||
        (s = tb_cross_entropy_backward(ctx, &ce, &lt, y, BATCH, 1.0f, cache, cb, &dlt)) != TB_OK ||
        (s = tb_linear_backward(ctx, &m->fc2, &gt, &dlt, &dgt)) != TB_OK ||
        (s = tb_gelu_backward(ctx, TB_GELU_TANH, &ht, &dgt, &dht)) != TB_OK ||
        (s = tb_linear_backward(ctx, &m->fc1, &xt, &dht, &dxt)) != TB_OK ||
        (s = tb_clip_grad_norm(ctx, &m->list, 0.5f, &norm)) != TB_OK)
        return s;
    return tb_adam_step(ctx, &m->opt, tb_lr_factor(&sched, m->opt.step));
}

/* What a child process does; its exit status is 0 on success. */
typedef enum part { STRAIGHT, FIRST, RESUME, RESUME_PARAMS_ONLY } part;

static int run_part(part p, const char *ckpt, const char *out)
{
    tb_ctx ctx;
    tb_ctx_init(&ctx);
    ctx.num_threads = 2;
    model m;
    /* The resuming process starts from other weights and another stream:
     * everything must come from the checkpoint. */
    if (model_init(&ctx, &m, 8, p >= RESUME ? 99 : 1, 1) != TB_OK)
        return 1;
    int steps = p == STRAIGHT ? TOTAL : p == FIRST ? SPLIT : TOTAL - SPLIT;
    if (p == RESUME && tb_checkpoint_load(&ctx, ckpt, &m.list, &m.opt, &m.data) != TB_OK)
        return 2;
    if (p == RESUME_PARAMS_ONLY && tb_checkpoint_load(&ctx, ckpt, &m.list, NULL, &m.data) != TB_OK)
        return 3;
    for (int t = 0; t < steps; t++)
        if (train_step(&ctx, &m) != TB_OK)
            return 4;
    const tb_st_meta extra[1] = {{"run", "checkpoint test"}};
    if (tb_checkpoint_save(&ctx, p == FIRST ? ckpt : out, &m.list, &m.opt, &m.data, extra, 1) !=
        TB_OK)
        return 5;
    model_free(&m);
    return 0;
}

static void in_child(part p, const char *ckpt, const char *out)
{
    fflush(NULL);
    const pid_t pid = fork();
    ck_assert_int_ge(pid, 0);
    if (pid == 0)
        _exit(run_part(p, ckpt, out));
    int status;
    ck_assert_int_eq(waitpid(pid, &status, 0), pid);
    ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 0, "part %d failed: status %d",
                  (int)p, status);
}

static unsigned char *slurp(const char *path, size_t *n)
{
    FILE *f = fopen(path, "rb");
    ck_assert_msg(f != NULL, "cannot open %s", path);
    fseek(f, 0, SEEK_END);
    const long len = ftell(f);
    fseek(f, 0, SEEK_SET);
    unsigned char *b = tbt_alloc((size_t)len + 1);
    ck_assert(fread(b, 1, (size_t)len, f) == (size_t)len);
    fclose(f);
    *n = (size_t)len;
    return b;
}

static void paths(char *ck, char *a, char *b, char *c, size_t cap)
{
    const char *dir = getenv("TB_ORACLE_DIR");
    ck_assert_msg(dir && dir[0], "TB_ORACLE_DIR is not set");
    const long pid = (long)getpid();
    snprintf(ck, cap, "%s/tmp-ckpt-%ld.safetensors", dir, pid);
    snprintf(a, cap, "%s/tmp-straight-%ld.safetensors", dir, pid);
    snprintf(b, cap, "%s/tmp-resumed-%ld.safetensors", dir, pid);
    snprintf(c, cap, "%s/tmp-noopt-%ld.safetensors", dir, pid);
}

START_TEST(test_exact_resume_in_a_new_process)
{
    char ck[600], a[600], b[600], c[600];
    paths(ck, a, b, c, sizeof ck);
    in_child(STRAIGHT, NULL, a);
    in_child(FIRST, ck, NULL);
    in_child(RESUME, ck, b);
    in_child(RESUME_PARAMS_ONLY, ck, c);
    size_t na, nb, nc;
    unsigned char *fa = slurp(a, &na), *fb = slurp(b, &nb), *fc = slurp(c, &nc);
    ck_assert_msg(na == nb && memcmp(fa, fb, na) == 0,
                  "12 steps straight and 5 + checkpoint + 7 in a new process differ");
    ck_assert_msg(nc != na || memcmp(fa, fc, na) != 0,
                  "resuming without the optimizer state gave the same result: the comparison "
                  "cannot tell");
    /* The checkpoint is a weights file like any other, and holds what it says. */
    tb_ctx ctx;
    tbt_ctx_init(&ctx, 1);
    tb_st_file f;
    CHECK_OK(ctx, tb_st_open(&ctx, a, &f));
    ck_assert_str_eq(tb_st_meta_get(&f, "format"), "pt");
    ck_assert_str_eq(tb_st_meta_get(&f, "tblocks.optim.step"), "12");
    ck_assert_str_eq(tb_st_meta_get(&f, "tblocks.optim.kind"), "adamw-amsgrad");
    ck_assert_str_eq(tb_st_meta_get(&f, "run"), "checkpoint test");
    ck_assert_ptr_nonnull(tb_st_find(&f, "fc1.weight"));
    ck_assert_ptr_nonnull(tb_st_find(&f, "optimizer.vmax.fc2.bias"));
    ck_assert_uint_eq(f.count, 4 * 4);
    tb_st_close(&f);
    printf("  check   checkpoint: %d steps straight == %d + save + load in a new process + %d "
           "(files byte-identical, %zu bytes); without optimizer state they differ\n",
           TOTAL, SPLIT, TOTAL - SPLIT, na);
    free(fa), free(fb), free(fc);
    remove(ck), remove(a), remove(b), remove(c);
}
END_TEST

START_TEST(test_checkpoint_refusals_change_nothing)
{
    char ck[600], a[600], b[600], c[600];
    paths(ck, a, b, c, sizeof ck);
    tb_ctx ctx;
    tbt_ctx_init(&ctx, 1);
    model m;
    CHECK_OK(ctx, model_init(&ctx, &m, 8, 1, 1));
    CHECK_OK(ctx, train_step(&ctx, &m));
    CHECK_OK(ctx, tb_checkpoint_save(&ctx, ck, &m.list, &m.opt, &m.data, NULL, 0));
    const tb_st_meta reserved[2] = {{"format", "x"}, {"tblocks.mine", "y"}};
    ck_assert_int_eq(tb_checkpoint_save(&ctx, a, &m.list, &m.opt, NULL, reserved, 1),
                     TB_ERR_INVALID_ARG);
    ck_assert_int_eq(tb_checkpoint_save(&ctx, a, &m.list, &m.opt, NULL, reserved + 1, 1),
                     TB_ERR_INVALID_ARG);
    /* A parameter may not take the optimizer's names. */
    tb_param_list odd;
    CHECK_OK(ctx, tb_param_list_init(&ctx, &odd));
    CHECK_OK(ctx, tb_param_list_add(&ctx, &odd, "optimizer", "m", &m.fc1.bias));
    ck_assert_int_eq(tb_checkpoint_save(&ctx, a, &odd, NULL, NULL, NULL, 0), TB_ERR_INVALID_ARG);
    tb_param_list_free(&odd);

    /* Another model configuration: hidden 9 instead of 8. */
    model other;
    CHECK_OK(ctx, model_init(&ctx, &other, 9, 5, 1));
    const float w0 = other.fc1.weight.value[0], m0 = other.opt.m[0];
    const uint64_t c0 = other.data.counter;
    ck_assert_int_eq(tb_checkpoint_load(&ctx, ck, &other.list, &other.opt, &other.data),
                     TB_ERR_STATE);
    ck_assert_int_eq(tb_checkpoint_load(&ctx, ck, &other.list, NULL, &other.data), TB_ERR_SHAPE);
    ck_assert_msg(strstr(tb_ctx_error(&ctx), "fc1.weight") != NULL, "%s", tb_ctx_error(&ctx));
    ck_assert(other.fc1.weight.value[0] == w0 && other.opt.m[0] == m0 &&
              other.data.counter == c0);
    model_free(&other);

    /* Another optimizer kind (Adam, not AdamW). */
    CHECK_OK(ctx, model_init(&ctx, &other, 8, 5, 0));
    ck_assert_int_eq(tb_checkpoint_load(&ctx, ck, &other.list, &other.opt, &other.data),
                     TB_ERR_STATE);
    ck_assert_msg(strstr(tb_ctx_error(&ctx), "adamw-amsgrad") != NULL, "%s", tb_ctx_error(&ctx));
    /* Parameters only: fine. */
    CHECK_OK(ctx, tb_checkpoint_load(&ctx, ck, &other.list, NULL, NULL));
    ck_assert(other.fc1.weight.value[0] == m.fc1.weight.value[0]);
    model_free(&other);

    /* A truncated file. */
    size_t n;
    unsigned char *bytes = slurp(ck, &n);
    FILE *f = fopen(b, "wb");
    ck_assert(f && fwrite(bytes, 1, n - 3, f) == n - 3);
    fclose(f);
    CHECK_OK(ctx, model_init(&ctx, &other, 8, 5, 1));
    ck_assert_int_eq(tb_checkpoint_load(&ctx, b, &other.list, &other.opt, &other.data),
                     TB_ERR_FORMAT);
    ck_assert_int_eq(tb_checkpoint_load(&ctx, "/nonexistent.safetensors", &other.list, NULL, NULL),
                     TB_ERR_IO);
    /* A weights-only file has no optimizer state to restore. */
    CHECK_OK(ctx, tb_st_save_params(&ctx, c, &m.list, NULL, 0));
    ck_assert_int_eq(tb_checkpoint_load(&ctx, c, &other.list, &other.opt, NULL), TB_ERR_FORMAT);
    CHECK_OK(ctx, tb_checkpoint_load(&ctx, c, &other.list, NULL, NULL));
    model_free(&other);
    model_free(&m);
    free(bytes);
    remove(ck), remove(b), remove(c);
}
END_TEST

Suite *suite_checkpoint(void)
{
    Suite *s = suite_create("checkpoint");
    TCase *tc = tcase_create("resume");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_exact_resume_in_a_new_process);
    tcase_add_test(tc, test_checkpoint_refusals_change_nothing);
    suite_add_tcase(s, tc);
    return s;
}
