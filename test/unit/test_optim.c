/*
 * Adam/AdamW (optim.h) (the schedules are tested in test_schedule.c,
 * clipping and EWC in test_grad.c):
 *   - trajectories against torch.optim.Adam / AdamW over 200 steps
 *     (test/oracle/gen_optim.py): parameters after steps 1, 10 and 200, for
 *     Adam, Adam with L2, AdamW, AMSGrad, two parameter groups, beta1 < 0.5
 *     and a warm-up + cosine schedule;
 *   - frozen parameters get no state, groups, the non-finite guard, errors;
 *   - bitwise identical results for 1, 2 and 3 threads;
 *   - gradient accumulation: 4 micro-batches of 6 give the update of one
 *     batch of 24.
 *
 * ---- Tolerances -----------------------------------------------------------
 * The C update performs PyTorch's float operations in PyTorch's order on
 * the same gradients (formed bit for bit), so trajectories agree to a few
 * ulp: the remaining differences are sqrt and division rounding in
 * vectorised vs scalar code. After 200 steps parameters are within
 * rtol 1e-6 + atol 1e-6 (|p| ~ 1; the lr is 1e-2: a wrong bias correction,
 * a decay applied the wrong way, or a missed group changes them by >1e-3,
 * 1000x the tolerance). Measured worst: printed per case.
 */
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "suites.h"
#include "testutil.h"

#define ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

static const char *const optim_cases[] = {
    "optim_adam",          "optim_adam_l2",       "optim_adamw",         "optim_adam_amsgrad",
    "optim_adamw_amsgrad_groups", "optim_adamw_beta0.3", "optim_adamw_cosine",
};

static void load_values(const tbt_ref *ref, tbt_four *f)
{
    for (int i = 0; i < 4; i++) {
        char nm[16];
        snprintf(nm, sizeof nm, "p%d", i);
        tbt_reft r = tbt_ref_get(ref, nm);
        ck_assert_uint_eq(r.n, f->p[i].numel);
        memcpy(f->p[i].value, r.data, r.n * sizeof(float));
    }
}

/* The generator's gradient of step t: p * c[t-1] + noise[t-1]. */
static void set_grads(tbt_four *f, const float *c, const float *noise, size_t n_total, int t)
{
    size_t at = 0;
    for (int i = 0; i < 3; i++) {
        tb_param *p = &f->p[i];
        for (size_t k = 0; k < p->numel; k++)
            p->grad[k] = p->value[k] * c[t - 1] + noise[(size_t)(t - 1) * n_total + at + k];
        at += p->numel;
    }
}

static int select_p1_p2(const char *name, const tb_param *p, void *user)
{
    (void)p;
    (void)user;
    return strcmp(name, "p1") == 0 || strcmp(name, "p2") == 0;
}

START_TEST(test_optim_oracle)
{
    const char *name = optim_cases[_i];
    tbt_ref *ref = tbt_ref_load(name);
    tb_ctx ctx;
    tbt_ctx_init(&ctx, 2);
    tbt_four f;
    tbt_four_init(&ctx, &f);
    load_values(ref, &f);
    float frozen[4];
    memcpy(frozen, f.p[3].value, sizeof frozen);
    tb_adam_config cfg = tb_adam_default_config();
    cfg.decoupled = tbt_ref_i32_scalar(ref, "decoupled");
    cfg.amsgrad = tbt_ref_i32_scalar(ref, "amsgrad");
    cfg.lr = tbt_ref_scalar(ref, "lr");
    cfg.beta1 = tbt_ref_scalar(ref, "beta1");
    cfg.beta2 = tbt_ref_scalar(ref, "beta2");
    cfg.eps = tbt_ref_scalar(ref, "eps");
    cfg.weight_decay = tbt_ref_scalar(ref, "wd");
    tb_adam opt;
    CHECK_OK(ctx, tb_adam_init(&ctx, &opt, &f.list, &cfg));
    ck_assert_uint_eq(opt.n_slots, 3); /* the frozen p3 has no state */
    ck_assert_uint_eq(opt.n_state, 51 + 17 + 17);
    ck_assert_uint_eq(tb_adam_state_bytes(&opt),
                      (51 + 17 + 17) * (cfg.amsgrad ? 3 : 2) * sizeof(float) +
                          3 * sizeof(tb_adam_slot));
    if (tbt_ref_i32_scalar(ref, "two_groups")) {
        size_t moved;
        CHECK_OK(ctx, tb_adam_add_group(&ctx, &opt, tbt_ref_scalar(ref, "lr2"),
                                        tbt_ref_scalar(ref, "wd2"), select_p1_p2, NULL, &moved));
        ck_assert_uint_eq(moved, 2);
    }
    tb_lr_schedule sched = tb_lr_schedule_make(TB_LR_CONSTANT, 0, 0, 0.0f);
    if (tbt_ref_has(ref, "sched_warmup"))
        sched = tb_lr_schedule_make(TB_LR_WARMUP_COSINE,
                                    (uint64_t)tbt_ref_i32_scalar(ref, "sched_warmup"),
                                    (uint64_t)tbt_ref_i32_scalar(ref, "sched_total"),
                                    tbt_ref_scalar(ref, "sched_min"));
    ck_assert_int_eq(tb_lr_schedule_check(&sched), TB_OK);
    tbt_reft c = tbt_ref_get(ref, "c"), noise = tbt_ref_get(ref, "noise");
    const int steps = tbt_ref_i32_scalar(ref, "steps");
    ck_assert_uint_eq(noise.n, (size_t)steps * opt.n_state);
    double worst = 0.0;
    for (int t = 1; t <= steps; t++) {
        set_grads(&f, c.data, noise.data, opt.n_state, t);
        CHECK_OK(ctx, tb_adam_step(&ctx, &opt, tb_lr_factor(&sched, opt.step)));
        ck_assert(opt.step == (uint64_t)t);
        if (t != 1 && t != 10 && t != steps)
            continue;
        for (int i = 0; i < 3; i++) {
            char nm[32], lbl[96];
            snprintf(nm, sizeof nm, "after%d_p%d", t, i);
            tbt_reft w = tbt_ref_get(ref, nm);
            ck_assert_uint_eq(w.n, f.p[i].numel);
            snprintf(lbl, sizeof lbl, "%s.%s", name, nm);
            for (size_t k = 0; k < w.n; k++) {
                const double d = fabs((double)f.p[i].value[k] - (double)w.data[k]);
                worst = d > worst ? d : worst;
            }
            tbt_assert_close(lbl, f.p[i].value, w.data, w.n, 1e-6, 1e-6);
        }
    }
    ck_assert(memcmp(frozen, f.p[3].value, sizeof frozen) == 0);
    printf("  check   %-40s 200 steps: max |ours - torch| = %.3g\n", name, worst);
    tb_adam_free(&opt);
    tbt_four_free(&f);
    tbt_ref_free(ref);
}
END_TEST

START_TEST(test_manifests_tested)
{
    const tbt_names o = {optim_cases, ARRAY_LEN(optim_cases)};
    ck_assert_uint_eq(tbt_check_manifest("optim_cases.txt", "test_optim.c", tbt_name_listed, &o),
                      ARRAY_LEN(optim_cases));
}
END_TEST

/* ---- groups, guard, errors ------------------------------------------------ */

START_TEST(test_no_decay_group_is_one_line)
{
    tb_ctx ctx;
    tbt_ctx_init(&ctx, 1);
    tbt_four f;
    tbt_four_init(&ctx, &f);
    tbt_fill_uniform(f.mem, 2 * (51 + 17 + 17 + 4), -1, 1, 5);
    for (int i = 0; i < 4; i++)
        memset(f.p[i].grad, 0, f.p[i].numel * sizeof(float));
    tb_adam_config cfg = tb_adamw_default_config();
    cfg.weight_decay = 0.5f;
    cfg.lr = 0.1f;
    tb_adam opt;
    CHECK_OK(ctx, tb_adam_init(&ctx, &opt, &f.list, &cfg));
    size_t moved;
    CHECK_OK(ctx, tb_adam_add_group(&ctx, &opt, cfg.lr, 0.0f, tb_select_no_decay, NULL, &moved));
    ck_assert_uint_eq(moved, 1); /* p1 is the only 1-D trainable parameter */
    float before[2];
    before[0] = f.p[0].value[0];
    before[1] = f.p[1].value[0];
    /* Zero gradients: only decay moves parameters (m = v = 0, update 0). */
    CHECK_OK(ctx, tb_adam_step(&ctx, &opt, 1.0f));
    ck_assert(f.p[1].value[0] == before[1]);
    ck_assert(f.p[0].value[0] == before[0] * (1.0f - 0.1f * 0.5f));
    tb_adam_free(&opt);
    tbt_four_free(&f);
}
END_TEST

START_TEST(test_non_finite_gradient_skips_the_step)
{
    tb_ctx ctx;
    tbt_ctx_init(&ctx, 2);
    tbt_four f;
    tbt_four_init(&ctx, &f);
    tbt_fill_uniform(f.mem, 2 * (51 + 17 + 17 + 4), -1, 1, 6);
    tb_adam_config cfg = tb_adamw_default_config();
    tb_adam opt;
    CHECK_OK(ctx, tb_adam_init(&ctx, &opt, &f.list, &cfg));
    CHECK_OK(ctx, tb_adam_step(&ctx, &opt, 1.0f));
    const size_t nbytes = 2 * (51 + 17 + 17 + 4) * sizeof(float);
    float *snap = tbt_alloc(nbytes), *m = tbt_alloc(opt.n_state * sizeof(float));
    const float bad[] = {NAN, INFINITY, -INFINITY};
    for (int b = 0; b < 3; b++) {
        f.p[2].grad[16] = bad[b];
        memcpy(snap, f.mem, nbytes);
        memcpy(m, opt.m, opt.n_state * sizeof(float));
        ck_assert_int_eq(tb_adam_step(&ctx, &opt, 1.0f), TB_ERR_NON_FINITE);
        ck_assert_msg(strstr(tb_ctx_error(&ctx), "p2") != NULL, "error names the parameter: %s",
                      tb_ctx_error(&ctx));
        ck_assert(memcmp(snap, f.mem, nbytes) == 0);
        ck_assert(memcmp(m, opt.m, opt.n_state * sizeof(float)) == 0);
        ck_assert(opt.step == 1 && opt.skipped == (uint64_t)b + 1);
    }
    /* A frozen parameter's gradient is not looked at. */
    f.p[2].grad[16] = 0.0f;
    f.p[3].grad[0] = NAN;
    CHECK_OK(ctx, tb_adam_step(&ctx, &opt, 1.0f));
    ck_assert(opt.step == 2);
    /* Clipping refuses a non-finite norm and leaves gradients alone. */
    f.p[0].grad[0] = INFINITY;
    memcpy(snap, f.mem, nbytes);
    double norm = 0;
    ck_assert_int_eq(tb_clip_grad_norm(&ctx, &f.list, 1.0f, &norm), TB_ERR_NON_FINITE);
    ck_assert(isinf(norm));
    ck_assert(memcmp(snap, f.mem, nbytes) == 0);
    free(snap);
    free(m);
    tb_adam_free(&opt);
    tbt_four_free(&f);
}
END_TEST

START_TEST(test_optim_errors)
{
    tb_ctx ctx;
    tbt_ctx_init(&ctx, 1);
    tbt_four f;
    tbt_four_init(&ctx, &f);
    tb_adam opt;
    tb_adam_config cfg = tb_adam_default_config();
    ck_assert_int_eq(tb_adam_init(&ctx, NULL, &f.list, &cfg), TB_ERR_NULL_ARG);
    ck_assert_int_eq(tb_adam_init(&ctx, &opt, NULL, &cfg), TB_ERR_NULL_ARG);
    ck_assert_int_eq(tb_adam_init(&ctx, &opt, &f.list, NULL), TB_ERR_NULL_ARG);
    const float bad_lr[] = {-1.0f, NAN, INFINITY};
    for (int i = 0; i < 3; i++) {
        tb_adam_config c = cfg;
        c.lr = bad_lr[i];
        ck_assert_int_eq(tb_adam_init(&ctx, &opt, &f.list, &c), TB_ERR_INVALID_ARG);
        c = cfg;
        c.beta1 = i == 0 ? 1.0f : bad_lr[i];
        ck_assert_int_eq(tb_adam_init(&ctx, &opt, &f.list, &c), TB_ERR_INVALID_ARG);
        c = cfg;
        c.beta2 = i == 0 ? 1.5f : bad_lr[i];
        ck_assert_int_eq(tb_adam_init(&ctx, &opt, &f.list, &c), TB_ERR_INVALID_ARG);
        c = cfg;
        c.eps = bad_lr[i];
        ck_assert_int_eq(tb_adam_init(&ctx, &opt, &f.list, &c), TB_ERR_INVALID_ARG);
        c = cfg;
        c.weight_decay = bad_lr[i];
        ck_assert_int_eq(tb_adam_init(&ctx, &opt, &f.list, &c), TB_ERR_INVALID_ARG);
    }
    ck_assert_ptr_null(opt.slots); /* left empty */
    ck_assert_int_eq(tb_adam_step(&ctx, &opt, 1.0f), TB_ERR_STATE);
    /* A trainable parameter without a gradient buffer. */
    float *g = f.p[1].grad;
    f.p[1].grad = NULL;
    ck_assert_int_eq(tb_adam_init(&ctx, &opt, &f.list, &cfg), TB_ERR_INVALID_ARG);
    ck_assert_msg(strstr(tb_ctx_error(&ctx), "p1") != NULL, "%s", tb_ctx_error(&ctx));
    f.p[1].grad = g;
    CHECK_OK(ctx, tb_adam_init(&ctx, &opt, &f.list, &cfg));
    ck_assert_int_eq(tb_adam_step(&ctx, &opt, -1.0f), TB_ERR_INVALID_ARG);
    ck_assert_int_eq(tb_adam_step(&ctx, &opt, NAN), TB_ERR_INVALID_ARG);
    ck_assert_int_eq(tb_adam_add_group(&ctx, &opt, 1.0f, 0.0f, NULL, NULL, NULL),
                     TB_ERR_NULL_ARG);
    ck_assert_int_eq(tb_adam_add_group(&ctx, &opt, -1.0f, 0.0f, tb_select_no_decay, NULL, NULL),
                     TB_ERR_INVALID_ARG);
    for (int i = 1; i < TB_ADAM_MAX_GROUPS; i++)
        CHECK_OK(ctx, tb_adam_add_group(&ctx, &opt, 1.0f, 0.0f, tb_select_no_decay, NULL, NULL));
    ck_assert_int_eq(tb_adam_add_group(&ctx, &opt, 1.0f, 0.0f, tb_select_no_decay, NULL, NULL),
                     TB_ERR_INVALID_ARG);
    ck_assert(opt.step == 0);
    tb_adam_free(&opt);
    tb_adam_free(&opt); /* twice is fine */
    tb_adam_free(NULL);
    ck_assert_uint_eq(tb_adam_state_bytes(NULL), 0);
    /* Schedules. */
    tb_lr_schedule s = tb_lr_schedule_make(TB_LR_WARMUP_COSINE, 10, 5, 0.0f);
    ck_assert_int_eq(tb_lr_schedule_check(&s), TB_ERR_INVALID_ARG);
    ck_assert(tb_lr_factor(&s, 3) == 0.0f);
    s = tb_lr_schedule_make(TB_LR_WARMUP_LINEAR, 0, 5, 1.5f);
    ck_assert_int_eq(tb_lr_schedule_check(&s), TB_ERR_INVALID_ARG);
    s = tb_lr_schedule_make(TB_LR_CALLBACK, 0, 0, 0.0f);
    ck_assert_int_eq(tb_lr_schedule_check(&s), TB_ERR_NULL_ARG);
    s = tb_lr_schedule_make((tb_lr_kind)42, 0, 0, 0.0f);
    ck_assert_int_eq(tb_lr_schedule_check(&s), TB_ERR_INVALID_ARG);
    ck_assert_int_eq(tb_lr_schedule_check(NULL), TB_ERR_NULL_ARG);
    /* Clipping. */
    ck_assert_int_eq(tb_clip_grad_norm(&ctx, &f.list, 0.0f, NULL), TB_ERR_INVALID_ARG);
    ck_assert_int_eq(tb_clip_grad_norm(&ctx, &f.list, NAN, NULL), TB_ERR_INVALID_ARG);
    ck_assert_int_eq(tb_clip_grad_norm(&ctx, NULL, 1.0f, NULL), TB_ERR_NULL_ARG);
    tbt_four_free(&f);
}
END_TEST

/* ---- numerics: eps, hyper-parameter ranges, moment overflow ----------------- */

/* eps must be a normal float: eps = 0 made a zero gradient's update 0/0 =
 * NaN (and TB_OK); a subnormal eps is 0 where denormals are flushed. Every
 * other hyper-parameter outside its range or non-finite is refused too, at
 * init, in tb_adam_add_group and (the factor) in tb_adam_step; the smallest
 * accepted values work. */
START_TEST(test_optim_hyperparameter_ranges)
{
    tb_ctx ctx;
    tbt_ctx_init(&ctx, 1);
    tbt_four f;
    tbt_four_init(&ctx, &f);
    tb_adam opt;
    const tb_adam_config base = tb_adam_default_config();
    typedef struct bad {
        const char *field;
        float value;
    } bad;
    const bad refused[] = {
        {"eps", 0.0f},          {"eps", -0.0f},       {"eps", -1e-8f},        {"eps", 1e-40f},
        {"eps", FLT_TRUE_MIN},  {"eps", NAN},         {"eps", INFINITY},      {"lr", -1e-3f},
        {"lr", NAN},            {"lr", INFINITY},     {"lr", -INFINITY},      {"beta1", 1.0f},
        {"beta1", -0.1f},       {"beta1", NAN},       {"beta1", INFINITY},    {"beta2", 1.0f},
        {"beta2", 1.5f},        {"beta2", -1e-3f},    {"beta2", NAN},         {"beta2", -INFINITY},
        {"weight_decay", -1.0f}, {"weight_decay", NAN}, {"weight_decay", INFINITY},
    };
    for (size_t i = 0; i < ARRAY_LEN(refused); i++) {
        tb_adam_config c = base;
        const char *fd = refused[i].field;
        float *slot = strcmp(fd, "eps") == 0     ? &c.eps
                      : strcmp(fd, "lr") == 0    ? &c.lr
                      : strcmp(fd, "beta1") == 0 ? &c.beta1
                      : strcmp(fd, "beta2") == 0 ? &c.beta2
                                                 : &c.weight_decay;
        *slot = refused[i].value;
        ck_assert_msg(tb_adam_init(&ctx, &opt, &f.list, &c) == TB_ERR_INVALID_ARG,
                      "%s = %g was accepted", fd, (double)refused[i].value);
        ck_assert_msg(strstr(tb_ctx_error(&ctx), fd) != NULL, "the error names %s: %s", fd,
                      tb_ctx_error(&ctx));
        ck_assert_ptr_null(opt.slots);
    }
    /* Accepted edges: eps = FLT_MIN, lr 0, betas 0 and just below 1. With
     * eps = FLT_MIN and zero gradients the parameters stay put, finite. */
    tb_adam_config c = base;
    c.eps = FLT_MIN;
    c.beta1 = 0.0f;
    c.beta2 = nextafterf(1.0f, 0.0f);
    tbt_fill_uniform(f.mem, 2 * (51 + 17 + 17 + 4), -1, 1, 7);
    for (int i = 0; i < 4; i++)
        memset(f.p[i].grad, 0, f.p[i].numel * sizeof(float));
    const size_t nbytes = 2 * (51 + 17 + 17 + 4) * sizeof(float);
    float *snap = tbt_alloc(nbytes);
    memcpy(snap, f.mem, nbytes);
    CHECK_OK(ctx, tb_adam_init(&ctx, &opt, &f.list, &c));
    for (int t = 0; t < 3; t++)
        CHECK_OK(ctx, tb_adam_step(&ctx, &opt, 1.0f));
    ck_assert_msg(memcmp(snap, f.mem, nbytes) == 0, "zero gradients moved a parameter");
    /* Groups and the step's factor. */
    const float bad_lr[] = {-1.0f, NAN, INFINITY};
    for (size_t i = 0; i < ARRAY_LEN(bad_lr); i++) {
        ck_assert_int_eq(tb_adam_add_group(&ctx, &opt, bad_lr[i], 0.0f, tb_select_no_decay, NULL,
                                           NULL),
                         TB_ERR_INVALID_ARG);
        ck_assert_int_eq(tb_adam_add_group(&ctx, &opt, 1e-3f, bad_lr[i], tb_select_no_decay, NULL,
                                           NULL),
                         TB_ERR_INVALID_ARG);
        ck_assert_int_eq(tb_adam_step(&ctx, &opt, bad_lr[i]), TB_ERR_INVALID_ARG);
    }
    ck_assert_uint_eq(opt.n_groups, 1);
    ck_assert(opt.step == 3 && opt.skipped == 0);
    tb_adam_free(&opt);
    c = base;
    c.lr = 0.0f;
    c.beta2 = 0.0f;
    CHECK_OK(ctx, tb_adam_init(&ctx, &opt, &f.list, &c));
    tb_adam_free(&opt);
    free(snap);
    tbt_four_free(&f);
}
END_TEST

/* Everything a step may change, to check that a refused one changed
 * nothing. */
typedef struct optim_snapshot {
    float *mem, *state;
    size_t mem_bytes, state_bytes;
    uint64_t step;
} optim_snapshot;

static optim_snapshot take_snapshot(const tbt_four *f, const tb_adam *opt)
{
    optim_snapshot s;
    s.mem_bytes = 2 * (51 + 17 + 17 + 4) * sizeof(float);
    s.state_bytes = opt->n_state * (opt->vmax ? 3 : 2) * sizeof(float);
    s.mem = tbt_alloc(s.mem_bytes);
    s.state = tbt_alloc(s.state_bytes);
    memcpy(s.mem, f->mem, s.mem_bytes);
    memcpy(s.state, opt->m, s.state_bytes); /* m, v, vmax are one block */
    s.step = opt->step;
    return s;
}

static void assert_unchanged(const optim_snapshot *s, const tbt_four *f, const tb_adam *opt,
                             const char *what)
{
    ck_assert_msg(memcmp(s->mem, f->mem, s->mem_bytes) == 0, "%s: a parameter changed", what);
    ck_assert_msg(memcmp(s->state, opt->m, s->state_bytes) == 0, "%s: m, v or vmax changed",
                  what);
    ck_assert_msg(opt->step == s->step, "%s: the step count changed", what);
}

static void free_snapshot(optim_snapshot *s)
{
    free(s->mem);
    free(s->state);
}

/* A finite gradient of 3e38 made v = beta2 v + (1 - beta2) g^2 infinite
 * for good (the parameter then never moves again: m / sqrt(inf) = 0), with
 * TB_OK. Now the step is refused like a non-finite gradient: all or
 * nothing (the overflow is in the last parameter, after two that would
 * have been updated), TB_ERR_NON_FINITE naming the parameter and the
 * second moment, `skipped` counts it; the next normal step proceeds. For
 * Adam, AdamW, Adam + L2 and AMSGrad, 1 and 2 threads. Also the other
 * overflow a step can meet: the update m / (sqrt(v) + eps) itself (v
 * underflowed to 0 while m did not, eps tiny), and a large gradient that
 * does not overflow anything (the exact check, not the quick bound,
 * decides: the step goes ahead). */
START_TEST(test_optim_moment_overflow_skips_the_step)
{
    for (int variant = 0; variant < 4; variant++)
        for (int threads = 1; threads <= 2; threads++) {
            tb_ctx ctx;
            tbt_ctx_init(&ctx, threads);
            tbt_four f;
            tbt_four_init(&ctx, &f);
            tbt_fill_uniform(f.mem, 2 * (51 + 17 + 17 + 4), -1, 1, 8);
            tb_adam_config cfg =
                variant == 1 ? tb_adamw_default_config() : tb_adam_default_config();
            if (variant == 2)
                cfg.weight_decay = 0.1f;
            if (variant == 3)
                cfg.amsgrad = 1;
            char what[96];
            snprintf(what, sizeof what, "variant %d, %d threads", variant, threads);
            tb_adam opt;
            CHECK_OK(ctx, tb_adam_init(&ctx, &opt, &f.list, &cfg));
            CHECK_OK(ctx, tb_adam_step(&ctx, &opt, 1.0f));
            const float g_keep = f.p[2].grad[5];
            const float big[] = {3e38f, -3e38f, 1e21f};
            for (size_t b = 0; b < ARRAY_LEN(big); b++) {
                f.p[2].grad[5] = big[b];
                optim_snapshot s = take_snapshot(&f, &opt);
                ck_assert_int_eq(tb_adam_step(&ctx, &opt, 1.0f), TB_ERR_NON_FINITE);
                const char *msg = tb_ctx_error(&ctx);
                ck_assert_msg(strstr(msg, "'p2'") && strstr(msg, "second moment") &&
                                  strstr(msg, "element 5") && strstr(msg, "nothing changed"),
                              "%s: the message names the parameter, the moment and the element: "
                              "%s",
                              what, msg);
                assert_unchanged(&s, &f, &opt, what);
                ck_assert(opt.skipped == (uint64_t)b + 1);
                free_snapshot(&s);
            }
            /* Large but harmless: (1 - beta2) g^2 = 2.25e35 is finite. */
            f.p[2].grad[5] = 1.5e19f;
            CHECK_OK(ctx, tb_adam_step(&ctx, &opt, 1.0f));
            ck_assert(opt.step == 2 && isfinite(opt.v[opt.slots[2].offset + 5]));
            f.p[2].grad[5] = g_keep;
            CHECK_OK(ctx, tb_adam_step(&ctx, &opt, 1.0f));
            ck_assert(opt.step == 3);
            tb_adam_free(&opt);

            /* The update overflows: v = 0, m = 1e10, eps = FLT_MIN (the
             * value 0, so that Adam's L2 term adds no gradient). */
            cfg.eps = FLT_MIN;
            CHECK_OK(ctx, tb_adam_init(&ctx, &opt, &f.list, &cfg));
            for (int i = 0; i < 3; i++)
                memset(f.p[i].grad, 0, f.p[i].numel * sizeof(float));
            f.p[1].value[3] = 0.0f;
            opt.m[opt.slots[1].offset + 3] = 1e10f;
            optim_snapshot s = take_snapshot(&f, &opt);
            const tb_status st = tb_adam_step(&ctx, &opt, 1.0f);
            ck_assert_msg(st == TB_ERR_NON_FINITE,
                          "%s: the overflowing update gave %s (p1[3] = %g)", what,
                          tb_strerror(st), (double)f.p[1].value[3]);
            ck_assert_msg(strstr(tb_ctx_error(&ctx), "value of 'p1'") &&
                              strstr(tb_ctx_error(&ctx), "element 3"),
                          "%s: %s", what, tb_ctx_error(&ctx));
            assert_unchanged(&s, &f, &opt, what);
            ck_assert(opt.skipped == 1);
            free_snapshot(&s);
            opt.m[opt.slots[1].offset + 3] = 0.0f;
            CHECK_OK(ctx, tb_adam_step(&ctx, &opt, 1.0f));
            tb_adam_free(&opt);
            /* The product step * m overflows before the division: lr 1e30,
             * m 1e10, eps 1e30 (the quotient alone would be 1e10). */
            cfg.lr = 1e30f;
            cfg.eps = 1e30f;
            CHECK_OK(ctx, tb_adam_init(&ctx, &opt, &f.list, &cfg));
            opt.m[opt.slots[1].offset + 3] = 1e10f;
            s = take_snapshot(&f, &opt);
            ck_assert_int_eq(tb_adam_step(&ctx, &opt, 1.0f), TB_ERR_NON_FINITE);
            assert_unchanged(&s, &f, &opt, what);
            free_snapshot(&s);
            tb_adam_free(&opt);
            tbt_four_free(&f);
        }
}
END_TEST

/* ---- determinism ------------------------------------------------------------ */

/* 5 AdamW (AMSGrad) steps on a 300k-element parameter plus clipping. */
static float *run_big(int threads)
{
    enum { N = 300007 };
    tb_ctx ctx;
    tbt_ctx_init(&ctx, threads);
    float *v = tbt_alloc(2 * N * sizeof(float));
    tbt_fill_uniform(v, N, -1, 1, 9);
    tb_param p;
    const size_t shape[1] = {N};
    CHECK_OK(ctx, tb_param_view(&ctx, &p, v, v + N, 1, shape));
    tb_param_list list;
    CHECK_OK(ctx, tb_param_list_init(&ctx, &list));
    CHECK_OK(ctx, tb_param_list_add(&ctx, &list, NULL, "w", &p));
    tb_adam_config cfg = tb_adamw_default_config();
    cfg.amsgrad = 1;
    tb_adam opt;
    CHECK_OK(ctx, tb_adam_init(&ctx, &opt, &list, &cfg));
    float *out = tbt_alloc((N + 5) * sizeof(float));
    for (int t = 0; t < 5; t++) {
        tbt_fill_uniform(p.grad, N, -3, 3, 100 + (uint64_t)t);
        double norm;
        CHECK_OK(ctx, tb_clip_grad_norm(&ctx, &list, 50.0f, &norm));
        out[N + t] = (float)norm;
        CHECK_OK(ctx, tb_adam_step(&ctx, &opt, 1.0f));
    }
    memcpy(out, v, N * sizeof(float));
    tb_adam_free(&opt);
    tb_param_list_free(&list);
    free(v);
    return out;
}

START_TEST(test_optim_bitwise_for_1_2_3_threads)
{
    float *ref = run_big(1);
    for (int t = 2; t <= 3; t++) {
        float *r = run_big(t);
        ck_assert_msg(memcmp(r, ref, (300007 + 5) * sizeof(float)) == 0,
                      "%d threads differ from 1", t);
        free(r);
    }
    free(ref);
}
END_TEST

/* ---- gradient accumulation ---------------------------------------------------- */

enum { GA_IN = 7, GA_HID = 16, GA_OUT = 3, GA_B = 6, GA_K = 4 };

typedef struct mlp {
    tb_linear fc1, fc2;
    tb_param_list list;
} mlp;

static void mlp_init(tb_ctx *ctx, mlp *m)
{
    tb_rng rng;
    tb_rng_init(&rng, 77);
    CHECK_OK(*ctx, tb_linear_init(ctx, &m->fc1, GA_IN, GA_HID, 1, &rng));
    CHECK_OK(*ctx, tb_linear_init(ctx, &m->fc2, GA_HID, GA_OUT, 1, &rng));
    CHECK_OK(*ctx, tb_param_list_init(ctx, &m->list));
    CHECK_OK(*ctx, tb_linear_params(ctx, &m->fc1, "fc1", &m->list));
    CHECK_OK(*ctx, tb_linear_params(ctx, &m->fc2, "fc2", &m->list));
    tb_param_list_zero_grad(&m->list);
}

static void mlp_free(mlp *m)
{
    tb_param_list_free(&m->list);
    tb_linear_free(&m->fc1);
    tb_linear_free(&m->fc2);
}

/* Activation bytes one forward + backward on n rows keeps (h, g, logits,
 * their gradients, dx, the loss cache). */
static size_t mlp_act_bytes(size_t n)
{
    size_t ce;
    ck_assert_int_eq(tb_cross_entropy_cache_size(n, &ce), TB_OK);
    return n * (2 * GA_HID + GA_OUT) * 2 * sizeof(float) + n * GA_IN * sizeof(float) + ce;
}

/* Forward + backward of rows [0, n) of x, loss scaled by `scale` (added to
 * the gradients). Buffers are sized for n rows only. */
static float mlp_fwd_bwd(tb_ctx *ctx, mlp *m, const float *x, const int32_t *y, size_t n,
                         float scale)
{
    float *h = tbt_alloc(n * GA_HID * sizeof(float)), *g = tbt_alloc(n * GA_HID * sizeof(float));
    float *lo = tbt_alloc(n * GA_OUT * sizeof(float)), *dlo = tbt_alloc(n * GA_OUT * sizeof(float));
    float *dg = tbt_alloc(n * GA_HID * sizeof(float)), *dh = tbt_alloc(n * GA_HID * sizeof(float));
    float *dx = tbt_alloc(n * GA_IN * sizeof(float));
    size_t cb;
    CHECK_OK(*ctx, tb_cross_entropy_cache_size(n, &cb));
    void *cache = tbt_alloc(cb);
    tb_tensor xt = tb_tensor_2d((float *)x, n, GA_IN), ht = tb_tensor_2d(h, n, GA_HID);
    tb_tensor gt = tb_tensor_2d(g, n, GA_HID), lt = tb_tensor_2d(lo, n, GA_OUT);
    tb_tensor dlt = tb_tensor_2d(dlo, n, GA_OUT), dgt = tb_tensor_2d(dg, n, GA_HID);
    tb_tensor dht = tb_tensor_2d(dh, n, GA_HID), dxt = tb_tensor_2d(dx, n, GA_IN);
    tb_cross_entropy_config ce = tb_cross_entropy_default_config();
    float loss;
    CHECK_OK(*ctx, tb_linear_forward(ctx, &m->fc1, &xt, &ht));
    CHECK_OK(*ctx, tb_gelu_forward(ctx, TB_GELU_EXACT, &ht, &gt));
    CHECK_OK(*ctx, tb_linear_forward(ctx, &m->fc2, &gt, &lt));
    CHECK_OK(*ctx, tb_cross_entropy_forward(ctx, &ce, &lt, y, n, &loss, cache, cb));
    CHECK_OK(*ctx, tb_cross_entropy_backward(ctx, &ce, &lt, y, n, scale, cache, cb, &dlt));
    CHECK_OK(*ctx, tb_linear_backward(ctx, &m->fc2, &gt, &dlt, &dgt));
    CHECK_OK(*ctx, tb_gelu_backward(ctx, TB_GELU_EXACT, &ht, &dgt, &dht));
    CHECK_OK(*ctx, tb_linear_backward(ctx, &m->fc1, &xt, &dht, &dxt));
    free(h), free(g), free(lo), free(dlo), free(dg), free(dh), free(dx), free(cache);
    return loss;
}

START_TEST(test_gradient_accumulation_equals_the_big_batch)
{
    tb_ctx ctx;
    tbt_ctx_init(&ctx, 2);
    const size_t N = GA_B * GA_K;
    float *x = tbt_alloc(N * GA_IN * sizeof(float));
    int32_t y[GA_B * GA_K];
    tbt_fill_uniform(x, N * GA_IN, -2, 2, 31);
    for (size_t i = 0; i < N; i++)
        y[i] = (int32_t)((i * 7 + 3) % GA_OUT);
    mlp big, acc;
    mlp_init(&ctx, &big);
    mlp_init(&ctx, &acc);
    const float loss_big = mlp_fwd_bwd(&ctx, &big, x, y, N, 1.0f);
    /* k micro-batches of b, each loss (a mean over b) scaled by 1/k. */
    float loss_acc = 0.0f;
    for (int k = 0; k < GA_K; k++)
        loss_acc += mlp_fwd_bwd(&ctx, &acc, x + (size_t)k * GA_B * GA_IN, y + k * GA_B, GA_B,
                                1.0f / GA_K) /
                    GA_K;
    ck_assert_msg(fabsf(loss_acc - loss_big) <= 1e-6f * fabsf(loss_big), "loss %g vs %g",
                  (double)loss_acc, (double)loss_big);
    for (size_t i = 0; i < big.list.count; i++) {
        const tb_param *pb = big.list.items[i].param, *pa = acc.list.items[i].param;
        char lbl[160];
        snprintf(lbl, sizeof lbl, "accumulated grad %s", big.list.items[i].name);
        tbt_assert_close(lbl, pa->grad, pb->grad, pb->numel, 1e-5, 1e-7);
    }
    /* The same AdamW update, within float tolerance. */
    tb_adam_config cfg = tb_adamw_default_config();
    tb_adam ob, oa;
    CHECK_OK(ctx, tb_adam_init(&ctx, &ob, &big.list, &cfg));
    CHECK_OK(ctx, tb_adam_init(&ctx, &oa, &acc.list, &cfg));
    CHECK_OK(ctx, tb_adam_step(&ctx, &ob, 1.0f));
    CHECK_OK(ctx, tb_adam_step(&ctx, &oa, 1.0f));
    for (size_t i = 0; i < big.list.count; i++) {
        const tb_param *pb = big.list.items[i].param, *pa = acc.list.items[i].param;
        char lbl[160];
        snprintf(lbl, sizeof lbl, "after AdamW %s", big.list.items[i].name);
        tbt_assert_close(lbl, pa->value, pb->value, pb->numel, 1e-6, 1e-6);
    }
    printf("  check   gradient accumulation: %d micro-batches of %d = one batch of %zu; "
           "activation memory %zu bytes instead of %zu (x%.1f less)\n",
           GA_K, GA_B, N, mlp_act_bytes(GA_B), mlp_act_bytes(N),
           (double)mlp_act_bytes(N) / (double)mlp_act_bytes(GA_B));
    tb_adam_free(&ob);
    tb_adam_free(&oa);
    mlp_free(&big);
    mlp_free(&acc);
    free(x);
}
END_TEST

Suite *suite_optim(void)
{
    Suite *s = suite_create("optim");
    TCase *to = tcase_create("pytorch");
    tcase_set_timeout(to, 60);
    tcase_add_loop_test(to, test_optim_oracle, 0, (int)ARRAY_LEN(optim_cases));
    tcase_add_test(to, test_manifests_tested);
    suite_add_tcase(s, to);
    TCase *tu = tcase_create("behaviour");
    tcase_set_timeout(tu, 60);
    tcase_add_test(tu, test_no_decay_group_is_one_line);
    tcase_add_test(tu, test_non_finite_gradient_skips_the_step);
    tcase_add_test(tu, test_optim_errors);
    tcase_add_test(tu, test_optim_hyperparameter_ranges);
    tcase_add_test(tu, test_optim_moment_overflow_skips_the_step);
    tcase_add_test(tu, test_optim_bitwise_for_1_2_3_threads);
    tcase_add_test(tu, test_gradient_accumulation_equals_the_big_batch);
    suite_add_tcase(s, tu);
    return s;
}
