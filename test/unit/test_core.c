/* Core API: version, status table, context, tensor views, parameter lists,
 * RNG, arena, allocator hooks. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "suites.h"
#include "testutil.h"

START_TEST(version_matches_macros)
{
    char want[64];
    snprintf(want, sizeof want, "%d.%d.%d", TB_VERSION_MAJOR, TB_VERSION_MINOR,
             TB_VERSION_PATCH);
    ck_assert_str_eq(tb_version_string(), want);
    ck_assert_int_eq(TB_VERSION_NUMBER,
                     TB_VERSION_MAJOR * 10000 + TB_VERSION_MINOR * 100 + TB_VERSION_PATCH);
}
END_TEST

START_TEST(status_values_are_pinned)
{
    /* Values are part of the ABI: they never change once released. */
    ck_assert_int_eq(TB_OK, 0);
    ck_assert_int_eq(TB_ERR_NULL_ARG, -1);
    ck_assert_int_eq(TB_ERR_INVALID_ARG, -2);
    ck_assert_int_eq(TB_ERR_SHAPE, -3);
    ck_assert_int_eq(TB_ERR_OVERFLOW, -4);
    ck_assert_int_eq(TB_ERR_NO_MEMORY, -5);
    ck_assert_int_eq(TB_ERR_BUFFER_TOO_SMALL, -6);
    ck_assert_int_eq(TB_ERR_NOT_FOUND, -7);
    ck_assert_int_eq(TB_ERR_DUPLICATE, -8);
    ck_assert_int_eq(TB_ERR_NON_FINITE, -9);
    ck_assert_int_eq(TB_ERR_IO, -10);
    ck_assert_int_eq(TB_ERR_FORMAT, -11);
    ck_assert_int_eq(TB_ERR_STATE, -12);
    ck_assert_int_eq(TB_ERR_UNSUPPORTED, -13);
}
END_TEST

START_TEST(strerror_covers_every_code)
{
    const char *seen[32] = {0};
    size_t n = 0;
#define CHECK_ENTRY(name, value, message)                     \
    ck_assert_str_eq(tb_strerror(name), message);             \
    ck_assert(strlen(tb_strerror(name)) > 5);                 \
    for (size_t i = 0; i < n; i++)                            \
        ck_assert_str_ne(seen[i], tb_strerror(name));         \
    seen[n++] = tb_strerror(name);
    TB_STATUS_MAP(CHECK_ENTRY)
#undef CHECK_ENTRY
    ck_assert_str_eq(tb_strerror((tb_status)12345), "unknown status code");
    ck_assert_str_eq(tb_strerror((tb_status)-999), "unknown status code");
}
END_TEST

START_TEST(context_defaults_and_error_detail)
{
    tb_ctx ctx;
    tb_ctx_init(&ctx);
    ck_assert_int_ge(ctx.num_threads, 1);
    ck_assert_str_eq(tb_ctx_error(&ctx), "");
    ck_assert_str_eq(tb_ctx_error(NULL), "");
    tb_ctx_init(NULL); /* must not crash */
    tb_ctx_clear_error(NULL);

    /* A failing call records a sentence naming the function and the value. */
    tb_rng rng;
    tb_rng_init(&rng, 1);
    tb_linear lin;
    ck_assert_int_eq(tb_linear_init(&ctx, &lin, 8, 4, 1, &rng), TB_OK);
    float xd[7] = {0}, yd[4] = {0};
    tb_tensor x = tb_tensor_2d(xd, 1, 7), y = tb_tensor_2d(yd, 1, 4);
    ck_assert_int_eq(tb_linear_forward(&ctx, &lin, &x, &y), TB_ERR_SHAPE);
    ck_assert_ptr_nonnull(strstr(tb_ctx_error(&ctx), "tb_linear_forward"));
    ck_assert_ptr_nonnull(strstr(tb_ctx_error(&ctx), "7"));
    ck_assert_ptr_nonnull(strstr(tb_ctx_error(&ctx), "8"));
    tb_ctx_clear_error(&ctx);
    ck_assert_str_eq(tb_ctx_error(&ctx), "");
    tb_linear_free(&lin);
}
END_TEST

START_TEST(tensor_views)
{
    float d[24];
    tb_tensor t = tb_tensor_3d(d, 2, 3, 4);
    ck_assert_uint_eq(tb_tensor_numel(&t), 24);
    ck_assert_uint_eq(tb_tensor_rows(&t), 6);
    ck_assert_uint_eq(tb_tensor_cols(&t), 4);
    tb_tensor u = tb_tensor_4d(d, 1, 2, 3, 4);
    ck_assert_uint_eq(tb_tensor_numel(&u), 24);
    tb_tensor v = tb_tensor_1d(d, 24);
    ck_assert_uint_eq(tb_tensor_rows(&v), 1);
    tb_tensor z = tb_tensor_2d(d, 0, 4);
    ck_assert_uint_eq(tb_tensor_numel(&z), 0);
    ck_assert_uint_eq(tb_tensor_rows(&z), 0);
    tb_tensor big = tb_tensor_2d(d, SIZE_MAX / 2, 3);
    ck_assert_uint_eq(tb_tensor_numel(&big), 0); /* overflow */
    tb_tensor huge = tb_tensor_1d(d, SIZE_MAX / 2); /* elements fit, bytes do not */
    ck_assert_uint_eq(tb_tensor_numel(&huge), 0);
    tb_tensor bad = t;
    bad.ndim = 5;
    ck_assert_uint_eq(tb_tensor_numel(&bad), 0);
    bad.ndim = 0;
    ck_assert_uint_eq(tb_tensor_cols(&bad), 0);
    ck_assert_uint_eq(tb_tensor_numel(NULL), 0);
}
END_TEST

START_TEST(param_list_basics)
{
    tb_ctx ctx;
    tbt_ctx_init(&ctx, 1);
    tb_param_list list;
    ck_assert_int_eq(tb_param_list_init(&ctx, &list), TB_OK);
    float v[41], g[41];
    tb_param ps[41];
    char name[32];
    for (int i = 0; i < 41; i++) { /* 40 entries force the list to grow twice */
        CHECK_OK(ctx, tb_param_view(&ctx, &ps[i], &v[i], &g[i], 1, (const size_t[]){1}));
        g[i] = 1.0f;
        snprintf(name, sizeof name, "p%d", i);
        if (i < 40)
            ck_assert_int_eq(
                tb_param_list_add(&ctx, &list, i < 20 ? "enc" : "dec", name, &ps[i]), TB_OK);
    }
    ck_assert_uint_eq(list.count, 40);
    ck_assert_str_eq(list.items[0].name, "enc.p0");
    ck_assert_ptr_eq(tb_param_list_find(&list, "dec.p25"), &ps[25]);
    ck_assert_ptr_null(tb_param_list_find(&list, "dec.p2"));
    ck_assert_ptr_null(tb_param_list_find(NULL, "x"));
    ck_assert_int_eq(tb_param_list_add(&ctx, &list, "enc", "p3", &ps[0]), TB_ERR_DUPLICATE);
    ck_assert_ptr_nonnull(strstr(tb_ctx_error(&ctx), "enc.p3"));
    ck_assert_int_eq(tb_param_list_add(&ctx, &list, "", "", &ps[0]), TB_ERR_INVALID_ARG);
    ck_assert_int_eq(tb_param_list_add(&ctx, &list, "a", NULL, &ps[0]), TB_ERR_NULL_ARG);
    char longname[TB_PARAM_NAME_MAX + 10];
    memset(longname, 'x', sizeof longname - 1);
    longname[sizeof longname - 1] = '\0';
    ck_assert_int_eq(tb_param_list_add(&ctx, &list, NULL, longname, &ps[0]), TB_ERR_INVALID_ARG);
    /* Exactly at the limit minus the NUL is fine. */
    longname[TB_PARAM_NAME_MAX - 1] = '\0';
    ck_assert_int_eq(tb_param_list_add(&ctx, &list, NULL, longname, &ps[40]), TB_OK);
    ck_assert_uint_eq(list.count, 41);

    ck_assert_uint_eq(tb_param_list_numel(&list, 0), 41);
    /* Prefixes match whole components: "enc.p1" is p1 only, not p10..p19. */
    ck_assert_uint_eq(tb_param_list_set_trainable(&list, "enc.p1", 0), 1);
    ck_assert_int_eq(ps[1].trainable, 0);
    ck_assert_int_eq(ps[10].trainable, 1);
    ck_assert_uint_eq(tb_param_list_set_trainable(&list, "enc.p1", 1), 1);
    ck_assert_uint_eq(tb_param_list_set_trainable(&list, "dec.p2", 1), 0); /* p20.. differ */
    ck_assert_uint_eq(tb_param_list_set_trainable(&list, "de", 0), 0);
    ck_assert_uint_eq(tb_param_list_set_trainable(&list, "enc.", 0), 20);
    ck_assert_uint_eq(tb_param_list_numel(&list, 1), 21); /* 20 dec + the long one */
    ck_assert_int_eq(ps[5].trainable, 0);
    ck_assert_int_eq(ps[25].trainable, 1);
    tb_param_list_zero_grad(&list);
    for (int i = 0; i < 40; i++)
        ck_assert(g[i] == 0.0f);
    tb_param_list_free(&list);
    tb_param_list_free(&list); /* idempotent */
    tb_param_list_free(NULL);
}
END_TEST

/* Selecting by predicate: freezing a LoRA-wrapped layer's own weight and
 * bias must not freeze the adapter's parameters under the same name. */
START_TEST(param_select_predicates)
{
    tb_ctx ctx;
    tbt_ctx_init(&ctx, 1);
    static const char *const names[] = {
        "h.0.attn.c_attn.weight",        "h.0.attn.c_attn.bias",
        "h.0.attn.c_attn.lora_A.weight", "h.0.attn.c_attn.lora_B.weight",
        "h.0.attn.c_attn_x.weight",      "h.0.attn.c_proj.weight",
        "h.10.attn.c_attn.weight",       "scale",
    };
    enum { N = sizeof names / sizeof names[0] };
    float v[N], g[N];
    tb_param ps[N];
    tb_param_list list;
    CHECK_OK(ctx, tb_param_list_init(&ctx, &list));
    for (size_t i = 0; i < N; i++) {
        CHECK_OK(ctx, tb_param_view(&ctx, &ps[i], &v[i], &g[i], 1, (const size_t[]){1}));
        CHECK_OK(ctx, tb_param_list_add(&ctx, &list, NULL, names[i], &ps[i]));
    }
    /* The stock predicates, name by name. */
    static const struct {
        const char *module;
        const char *name;
        int prefix, direct;
    } cases[] = {
        {"h.0.attn.c_attn", "h.0.attn.c_attn.weight", 1, 1},
        {"h.0.attn.c_attn", "h.0.attn.c_attn.lora_A.weight", 1, 0},
        {"h.0.attn.c_attn", "h.0.attn.c_attn", 1, 0},
        {"h.0.attn.c_attn", "h.0.attn.c_attn_x.weight", 0, 0},
        {"h.0.attn.c_attn", "h.0.attn.c_attn.", 1, 0},
        {"h.0.attn.c_attn.", "h.0.attn.c_attn.bias", 1, 1},  /* trailing dot */
        {"h.0.attn.c_attn.", "h.0.attn.c_attn", 0, 0},
        {"h.0.attn.c_attn.", "h.0.attn.c_attnx.bias", 0, 0},
        {"h.1", "h.10.attn.c_attn.weight", 0, 0},
        {"", "scale", 1, 1},                              /* the root module */
        {"", "h.0.attn.c_attn.weight", 1, 0},
        {NULL, "scale", 1, 1},
        {NULL, "h.0.x", 1, 0},
        {"h", "h.x", 1, 1},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        void *u = (void *)cases[i].module;
        ck_assert_msg(!tb_select_prefix(cases[i].name, &ps[0], u) == !cases[i].prefix,
                      "prefix '%s' on '%s'", cases[i].module ? cases[i].module : "(null)",
                      cases[i].name);
        ck_assert_msg(!tb_select_direct(cases[i].name, &ps[0], u) == !cases[i].direct,
                      "direct '%s' on '%s'", cases[i].module ? cases[i].module : "(null)",
                      cases[i].name);
    }
    ck_assert(!tb_select_prefix(NULL, &ps[0], NULL) && !tb_select_direct(NULL, &ps[0], NULL));

    /* Freeze the wrapped layer's own weight and bias: exactly those two. */
    ck_assert_uint_eq(tb_param_list_set_trainable_where(&list, tb_select_direct,
                                                        (void *)"h.0.attn.c_attn", 0),
                      2);
    for (size_t i = 0; i < N; i++)
        ck_assert_msg(ps[i].trainable == (i >= 2), "%s: trainable %d", names[i],
                      ps[i].trainable);
    /* The prefix predicate would have taken the adapter too (and is what
     * set_trainable does). */
    ck_assert_uint_eq(tb_param_list_set_trainable_where(&list, tb_select_prefix,
                                                        (void *)"h.0.attn.c_attn", 0),
                      4);
    ck_assert_int_eq(ps[2].trainable, 0);
    ck_assert_int_eq(ps[4].trainable, 1); /* c_attn_x is another module */
    ck_assert_uint_eq(tb_param_list_set_trainable(&list, "h.0.attn.c_attn.", 1), 4);
    ck_assert_int_eq(ps[0].trainable, 1);
    ck_assert_int_eq(ps[3].trainable, 1);
    /* Edge cases: empty prefix (everything), root module, NULL predicate
     * (nothing), NULL list. */
    ck_assert_uint_eq(tb_param_list_set_trainable_where(&list, tb_select_prefix, (void *)"", 0),
                      N);
    ck_assert_uint_eq(tb_param_list_numel(&list, 1), 0);
    ck_assert_uint_eq(tb_param_list_set_trainable_where(&list, tb_select_direct, NULL, 1), 1);
    ck_assert_int_eq(ps[N - 1].trainable, 1);
    ck_assert_uint_eq(tb_param_list_set_trainable_where(&list, NULL, NULL, 1), 0);
    ck_assert_uint_eq(tb_param_list_numel(&list, 1), 1);
    ck_assert_uint_eq(tb_param_list_set_trainable_where(NULL, tb_select_prefix, NULL, 1), 0);
    /* The optimizer's groups take the same predicates. */
    ck_assert_uint_eq(tb_param_list_set_trainable(&list, NULL, 1), N);
    tb_adam opt;
    tb_adam_config cfg = tb_adam_default_config();
    CHECK_OK(ctx, tb_adam_init(&ctx, &opt, &list, &cfg));
    size_t moved = 0;
    CHECK_OK(ctx, tb_adam_add_group(&ctx, &opt, 1e-2f, 0.0f, tb_select_direct,
                                    (void *)"h.0.attn.c_attn", &moved));
    ck_assert_uint_eq(moved, 2);
    ck_assert_uint_eq(opt.slots[0].group, 1);
    ck_assert_uint_eq(opt.slots[2].group, 0);
    tb_adam_free(&opt);
    tb_param_list_free(&list);
}
END_TEST

START_TEST(block_params_enumerate_by_name)
{
    tb_ctx ctx;
    tbt_ctx_init(&ctx, 2);
    tb_rng rng;
    tb_rng_init(&rng, 7);
    tb_linear a, b;
    tb_embedding e;
    ck_assert_int_eq(tb_linear_init(&ctx, &a, 5, 3, 1, &rng), TB_OK);
    ck_assert_int_eq(tb_linear_init(&ctx, &b, 3, 2, 0, &rng), TB_OK);
    ck_assert_int_eq(tb_embedding_init(&ctx, &e, 11, 5, &rng), TB_OK);
    tb_param_list list;
    ck_assert_int_eq(tb_param_list_init(&ctx, &list), TB_OK);
    ck_assert_int_eq(tb_embedding_params(&ctx, &e, "wte", &list), TB_OK);
    ck_assert_int_eq(tb_linear_params(&ctx, &a, "h.0.fc", &list), TB_OK);
    ck_assert_int_eq(tb_linear_params(&ctx, &b, "h.0.proj", &list), TB_OK);
    ck_assert_int_eq(tb_linear_params(&ctx, &b, "h.0.proj", &list), TB_ERR_DUPLICATE);
    ck_assert_uint_eq(list.count, 4);
    ck_assert_str_eq(list.items[0].name, "wte.weight");
    ck_assert_str_eq(list.items[1].name, "h.0.fc.weight");
    ck_assert_str_eq(list.items[2].name, "h.0.fc.bias");
    ck_assert_str_eq(list.items[3].name, "h.0.proj.weight");
    tb_param *w = tb_param_list_find(&list, "h.0.fc.weight");
    ck_assert_ptr_eq(w, &a.weight);
    ck_assert_uint_eq(w->ndim, 2);
    ck_assert_uint_eq(w->shape[0], 3); /* (out, in) */
    ck_assert_uint_eq(w->shape[1], 5);
    ck_assert_uint_eq(tb_param_list_numel(&list, 0), 11 * 5 + 15 + 3 + 6);
    /* PyTorch default init bounds: |w| <= 1/sqrt(in). */
    for (size_t i = 0; i < a.weight.numel; i++)
        ck_assert(fabsf(a.weight.value[i]) <= 1.0f / sqrtf(5.0f));
    tb_param_list_free(&list);
    tb_linear_free(&a);
    tb_linear_free(&b);
    tb_embedding_free(&e);
    tb_linear_free(&a); /* freeing twice is safe: the struct was emptied */
    ck_assert_int_eq(tb_linear_params(&ctx, &a, "x", &list), TB_ERR_STATE);
    ck_assert_int_eq(tb_embedding_params(&ctx, &e, "x", &list), TB_ERR_STATE);
    ck_assert_int_eq(tb_linear_params(&ctx, NULL, "x", &list), TB_ERR_NULL_ARG);
}
END_TEST

START_TEST(rng_reproducible_and_distributed)
{
    tb_rng a, b, c;
    tb_rng_init(&a, 42);
    tb_rng_init(&b, 42);
    tb_rng_init(&c, 43);
    int differs = 0;
    for (int i = 0; i < 100; i++) {
        uint64_t x = tb_rng_next(&a);
        ck_assert_uint_eq(x, tb_rng_next(&b));
        differs |= x != tb_rng_next(&c);
    }
    ck_assert(differs);

    /* Golden values: the stream is part of the reproducibility promise (same
     * seed, same numbers on every machine); a change here breaks saved runs. */
    tb_rng g;
    tb_rng_init(&g, 0);
    uint64_t first = tb_rng_next(&g);
    tb_rng_init(&g, 0);
    ck_assert_uint_eq(tb_rng_bits_at(g.key, 0), first);
    ck_assert_uint_eq(first, UINT64_C(0x93118a61ed9e9e14));
    ck_assert_uint_eq(tb_rng_next(&g), UINT64_C(0x93118a61ed9e9e14));
    ck_assert_uint_eq(tb_rng_next(&g), UINT64_C(0xd94259df0d440a18));
    tb_rng_init(&g, 42);
    ck_assert(tb_rng_uniform(&g) == 0.549332321f);

    /* Fill == sequential draws, and the stream advances by n. */
    tb_ctx ctx;
    tbt_ctx_init(&ctx, 2);
    enum { N = 200000 };
    float *u = tbt_alloc(N * sizeof(float)), *z = tbt_alloc(N * sizeof(float));
    tb_rng f, s;
    tb_rng_init(&f, 9);
    tb_rng_init(&s, 9);
    ck_assert_int_eq(tb_rng_fill_uniform(&ctx, &f, u, N, -2.0f, 3.0f), TB_OK);
    ck_assert_uint_eq(f.counter, N);
    double mean = 0;
    for (size_t i = 0; i < N; i++) {
        ck_assert(u[i] >= -2.0f && u[i] < 3.0f);
        if (i < 1000)
            ck_assert(u[i] == -2.0f + 5.0f * tb_rng_uniform(&s));
        mean += u[i];
    }
    mean /= N;
    ck_assert_msg(fabs(mean - 0.5) < 5 * 5.0 / sqrt(12.0 * N), "uniform mean %g", mean);
    ck_assert_int_eq(tb_rng_fill_normal(&ctx, &f, z, N, 1.0f, 2.0f), TB_OK);
    double m = 0, v = 0;
    for (size_t i = 0; i < N; i++)
        m += z[i];
    m /= N;
    for (size_t i = 0; i < N; i++)
        v += (z[i] - m) * (z[i] - m);
    v /= N - 1;
    ck_assert_msg(fabs(m - 1.0) < 5 * 2.0 / sqrt(N), "normal mean %g", m);
    ck_assert_msg(fabs(sqrt(v) - 2.0) < 0.02, "normal std %g", sqrt(v));
    ck_assert_int_eq(tb_rng_fill_uniform(&ctx, &f, u, 4, 1.0f, 0.0f), TB_ERR_INVALID_ARG);
    ck_assert_int_eq(tb_rng_fill_uniform(&ctx, &f, u, 4, 0.0f, INFINITY), TB_ERR_INVALID_ARG);
    ck_assert_int_eq(tb_rng_fill_normal(&ctx, &f, z, 4, 0.0f, -1.0f), TB_ERR_INVALID_ARG);
    ck_assert_int_eq(tb_rng_fill_normal(&ctx, &f, z, 4, NAN, 1.0f), TB_ERR_INVALID_ARG);
    ck_assert_int_eq(tb_rng_fill_normal(&ctx, NULL, z, 4, 0.0f, 1.0f), TB_ERR_NULL_ARG);
    ck_assert_int_eq(tb_rng_fill_normal(&ctx, &f, NULL, 4, 0.0f, 1.0f), TB_ERR_NULL_ARG);
    ck_assert_int_eq(tb_rng_fill_normal(&ctx, &f, NULL, 0, 0.0f, 1.0f), TB_OK);
    free(u);
    free(z);
}
END_TEST

START_TEST(arena_alignment_and_limits)
{
    tb_ctx ctx;
    tbt_ctx_init(&ctx, 1);
    size_t total = 0;
    ck_assert_int_eq(tb_arena_size_add(&total, 10), TB_OK);
    ck_assert_int_eq(tb_arena_size_add(&total, 64), TB_OK);
    ck_assert_int_eq(tb_arena_size_add(&total, 65), TB_OK);
    ck_assert_uint_eq(total, 64 + 64 + 128);
    size_t t2 = SIZE_MAX - 10;
    ck_assert_int_eq(tb_arena_size_add(&t2, 100), TB_ERR_OVERFLOW);
    ck_assert_uint_eq(t2, SIZE_MAX - 10);
    ck_assert_int_eq(tb_arena_size_add(NULL, 1), TB_ERR_NULL_ARG);

    unsigned char *buf = tbt_alloc(total + TB_ARENA_ALIGN + 1);
    tb_arena arena;
    ck_assert_int_eq(tb_arena_init(&arena, buf + 1, total + TB_ARENA_ALIGN), TB_OK);
    void *p1, *p2, *p3, *p4;
    ck_assert_int_eq(tb_arena_alloc(&ctx, &arena, 10, &p1), TB_OK);
    ck_assert_int_eq(tb_arena_alloc(&ctx, &arena, 64, &p2), TB_OK);
    ck_assert_int_eq(tb_arena_alloc(&ctx, &arena, 65, &p3), TB_OK);
    ck_assert_uint_eq((uintptr_t)p1 % TB_ARENA_ALIGN, 0);
    ck_assert_uint_eq((uintptr_t)p2 % TB_ARENA_ALIGN, 0);
    ck_assert_uint_eq((uintptr_t)p3 % TB_ARENA_ALIGN, 0);
    ck_assert((unsigned char *)p2 >= (unsigned char *)p1 + 10);
    ck_assert((unsigned char *)p3 + 65 <= buf + 1 + total + TB_ARENA_ALIGN);
    memset(p3, 0xAB, 65); /* in bounds (ASan would tell) */
    ck_assert_int_eq(tb_arena_alloc(&ctx, &arena, 64, &p4), TB_ERR_BUFFER_TOO_SMALL);
    ck_assert_ptr_null(p4);
    ck_assert_ptr_nonnull(strstr(tb_ctx_error(&ctx), "arena"));
    ck_assert_int_eq(tb_arena_alloc(&ctx, &arena, SIZE_MAX, &p4), TB_ERR_BUFFER_TOO_SMALL);
    ck_assert_uint_eq(arena.peak, total);
    tb_arena_reset(&arena);
    ck_assert_uint_eq(arena.used, 0);
    ck_assert_int_eq(tb_arena_alloc(&ctx, &arena, 10, &p4), TB_OK);
    ck_assert_ptr_eq(p4, p1);
    ck_assert_uint_eq(arena.peak, total);
    ck_assert_int_eq(tb_arena_init(NULL, buf, 1), TB_ERR_NULL_ARG);
    free(buf);
}
END_TEST

/* A layout run on a counting arena, then on a buffer of the size it
 * reported, fits exactly whatever the buffer's alignment; the counter
 * refuses an overflowing total. */
static tb_status carve3(tb_ctx *ctx, tb_arena *ar, void **p)
{
    const size_t sizes[3] = {10, 64, 65};
    for (int i = 0; i < 3; i++) {
        tb_status s = tb_arena_alloc(ctx, ar, sizes[i], &p[i]);
        if (s != TB_OK)
            return s;
    }
    return TB_OK;
}

START_TEST(arena_counts_then_carves)
{
    tb_ctx ctx;
    tbt_ctx_init(&ctx, 1);
    tb_arena ar;
    void *p[3] = {&ar, &ar, &ar};
    ck_assert_int_eq(tb_arena_init_counting(&ar), TB_OK);
    ck_assert_int_eq(carve3(&ctx, &ar, p), TB_OK);
    for (int i = 0; i < 3; i++)
        ck_assert_ptr_null(p[i]);
    ck_assert_uint_eq(ar.used, 64 + 64 + 128);
    size_t need = 0;
    ck_assert_int_eq(tb_arena_required(&ar, &need), TB_OK);
    ck_assert_uint_eq(need, 64 + 64 + 128 + TB_ARENA_ALIGN);
    for (size_t misalign = 0; misalign < TB_ARENA_ALIGN; misalign += 7) {
        unsigned char *buf = tbt_alloc(need + TB_ARENA_ALIGN);
        tb_arena real;
        ck_assert_int_eq(tb_arena_init(&real, buf + misalign, need), TB_OK);
        ck_assert_int_eq(carve3(&ctx, &real, p), TB_OK);
        memset(p[2], 0xCD, 65); /* in bounds (ASan would tell) */
        void *extra;            /* and nothing more fits than what was counted */
        const int aligned = (uintptr_t)(buf + misalign) % TB_ARENA_ALIGN == 0;
        ck_assert_int_eq(tb_arena_alloc(&ctx, &real, 64, &extra),
                         (aligned ? TB_OK : TB_ERR_BUFFER_TOO_SMALL));
        free(buf);
    }
    ck_assert_int_eq(tb_arena_alloc(&ctx, &ar, SIZE_MAX - 100, &p[0]), TB_ERR_OVERFLOW);
    ck_assert_uint_eq(ar.used, 64 + 64 + 128); /* unchanged by the refusal */
    ar.used = SIZE_MAX - 10;
    ck_assert_int_eq(tb_arena_required(&ar, &need), TB_ERR_OVERFLOW);
    ck_assert_int_eq(tb_arena_init_counting(NULL), TB_ERR_NULL_ARG);
    ck_assert_int_eq(tb_arena_required(NULL, &need), TB_ERR_NULL_ARG);
    tb_arena_reset(&ar);
    ck_assert_uint_eq(ar.used, 0);
}
END_TEST

START_TEST(ctx_set_error_records_and_returns)
{
    tb_ctx ctx;
    tbt_ctx_init(&ctx, 1);
    ck_assert_int_eq(tb_ctx_set_error(&ctx, TB_ERR_SHAPE, "model: %d x %s", 3, "four"),
                     TB_ERR_SHAPE);
    ck_assert_str_eq(tb_ctx_error(&ctx), "model: 3 x four");
    char longer[2 * TB_ERROR_DETAIL_MAX];
    memset(longer, 'x', sizeof longer - 1);
    longer[sizeof longer - 1] = '\0';
    ck_assert_int_eq(tb_ctx_set_error(&ctx, TB_ERR_FORMAT, "%s", longer), TB_ERR_FORMAT);
    ck_assert_uint_eq(strlen(tb_ctx_error(&ctx)), TB_ERROR_DETAIL_MAX - 1);
    ck_assert_int_eq(tb_ctx_set_error(NULL, TB_ERR_STATE, "nothing"), TB_ERR_STATE);
}
END_TEST

/* Counting allocator, optionally failing after `budget` allocations. */
typedef struct counting {
    int allocs, frees, budget;
} counting;

static void *counting_alloc(void *user, size_t size, size_t alignment)
{
    counting *c = user;
    if (c->budget >= 0 && c->allocs >= c->budget)
        return NULL;
    c->allocs++;
    size_t r = (size + alignment - 1) / alignment * alignment;
    return aligned_alloc(alignment, r);
}

static void counting_free(void *user, void *ptr)
{
    ((counting *)user)->frees++;
    free(ptr);
}

START_TEST(allocator_hooks_are_used_and_failures_reported)
{
    tb_ctx ctx;
    tbt_ctx_init(&ctx, 1);
    counting c = {0, 0, -1};
    ctx.allocator.alloc = counting_alloc;
    ctx.allocator.free = counting_free;
    ctx.allocator.user = &c;
    tb_rng rng;
    tb_rng_init(&rng, 1);
    tb_linear lin;
    tb_embedding emb;
    tb_param_list list;
    ck_assert_int_eq(tb_linear_init(&ctx, &lin, 4, 4, 1, &rng), TB_OK);
    ck_assert_int_eq(tb_embedding_init(&ctx, &emb, 4, 4, &rng), TB_OK);
    ck_assert_int_eq(tb_param_list_init(&ctx, &list), TB_OK);
    ck_assert_int_eq(tb_linear_params(&ctx, &lin, "l", &list), TB_OK);
    /* The Linear's and the table's values and gradients are two allocations
     * each (so that tb_linear_freeze() and tb_embedding_freeze() can release
     * the gradients alone). */
    ck_assert_int_eq(c.allocs, 5);
    tb_linear_freeze(&lin);
    ck_assert_int_eq(c.frees, 1);
    ck_assert_ptr_null(lin.weight.grad);
    ck_assert_ptr_null(lin.bias.grad);
    ck_assert_ptr_nonnull(lin.weight.value);
    ck_assert_int_eq(lin.weight.trainable, 0);
    tb_linear_freeze(&lin); /* idempotent */
    ck_assert_int_eq(c.frees, 1);
    tb_embedding_freeze(&emb);
    ck_assert_int_eq(c.frees, 2);
    ck_assert_ptr_null(emb.weight.grad);
    ck_assert_ptr_nonnull(emb.weight.value);
    tb_embedding_freeze(&emb); /* idempotent */
    ck_assert_int_eq(c.frees, 2);
    tb_param_list_free(&list);
    tb_linear_free(&lin);
    tb_embedding_free(&emb);
    ck_assert_int_eq(c.frees, 5);

    /* The gradients' allocation fails after the values': nothing leaks. */
    c.budget = c.allocs + 1;
    ck_assert_int_eq(tb_linear_init(&ctx, &lin, 4, 4, 1, &rng), TB_ERR_NO_MEMORY);
    ck_assert_int_eq(c.allocs, c.frees);
    ck_assert_ptr_null(lin.storage);

    c.budget = c.allocs; /* every further allocation fails */
    ck_assert_int_eq(tb_linear_init(&ctx, &lin, 4, 4, 1, &rng), TB_ERR_NO_MEMORY);
    ck_assert_ptr_null(lin.storage);
    ck_assert_ptr_null(lin.weight.value);
    tb_linear_free(&lin); /* safe on a failed init */
    ck_assert_int_eq(tb_embedding_init(&ctx, &emb, 4, 4, &rng), TB_ERR_NO_MEMORY);
    ck_assert_int_eq(tb_param_list_init(&ctx, &list), TB_OK);
    tb_param dummy;
    memset(&dummy, 0, sizeof dummy);
    ck_assert_int_eq(tb_param_list_add(&ctx, &list, NULL, "w", &dummy), TB_ERR_NO_MEMORY);
    ck_assert_uint_eq(list.count, 0);
    tb_param_list_free(&list);

    ctx.allocator.alloc = NULL;
    ck_assert_int_eq(tb_linear_init(&ctx, &lin, 4, 4, 1, &rng), TB_ERR_INVALID_ARG);
    /* Sizes whose byte count overflows are refused before allocating. */
    ctx.allocator = tb_default_allocator();
    ck_assert_int_eq(tb_linear_init(&ctx, &lin, SIZE_MAX / 4, 8, 1, &rng), TB_ERR_OVERFLOW);
    ck_assert_int_eq(tb_embedding_init(&ctx, &emb, 1u << 30, SIZE_MAX / 8, &rng),
                     TB_ERR_OVERFLOW);
    ck_assert_int_eq(tb_embedding_init(&ctx, &emb, (size_t)INT32_MAX + 1, 1, &rng),
                     TB_ERR_INVALID_ARG);
    /* LayerNorm and RMSNorm: values and gradients apart, freeze releases
     * the gradients alone. */
    ctx.allocator.alloc = counting_alloc;
    ctx.allocator.free = counting_free;
    ctx.allocator.user = &c;
    c.allocs = c.frees = 0, c.budget = -1;
    tb_layernorm ln;
    tb_rmsnorm rn;
    ck_assert_int_eq(tb_layernorm_init(&ctx, &ln, 5, 1e-5f, TB_NORM_SCALE | TB_NORM_SHIFT), TB_OK);
    ck_assert_int_eq(tb_rmsnorm_init(&ctx, &rn, 5, 1e-5f, TB_NORM_SCALE), TB_OK);
    ck_assert_int_eq(c.allocs, 4);
    tb_layernorm_freeze(&ln);
    tb_rmsnorm_freeze(&rn);
    ck_assert_int_eq(c.frees, 2);
    ck_assert_ptr_null(ln.weight.grad);
    ck_assert_ptr_null(ln.bias.grad);
    ck_assert_ptr_null(rn.weight.grad);
    ck_assert(ln.weight.value[0] == 1.0f && rn.weight.value[4] == 1.0f);
    ck_assert_int_eq(ln.weight.trainable + ln.bias.trainable + rn.weight.trainable, 0);
    tb_layernorm_free(&ln);
    tb_rmsnorm_free(&rn);
    ck_assert_int_eq(c.frees, 4);
    c.allocs = c.frees = 0, c.budget = 1; /* the gradients' allocation fails */
    ck_assert_int_eq(tb_layernorm_init(&ctx, &ln, 5, 1e-5f, TB_NORM_SCALE), TB_ERR_NO_MEMORY);
    ck_assert_int_eq(c.allocs, 1);
    ck_assert_int_eq(c.frees, 1); /* nothing leaks */
    ctx.allocator = tb_default_allocator();
}
END_TEST

/* tb_param_init / tb_param_view / tb_param_free: shapes, ownership, errors. */
START_TEST(param_init_view_free)
{
    tb_ctx ctx;
    tbt_ctx_init(&ctx, 1);
    counting c = {0, 0, -1};
    ctx.allocator.alloc = counting_alloc;
    ctx.allocator.free = counting_free;
    ctx.allocator.user = &c;
    tb_param p;
    const size_t s3[3] = {2, 3, 5};
    CHECK_OK(ctx, tb_param_init(&ctx, &p, 3, s3, 0));
    ck_assert_int_eq(c.allocs, 1); /* value and gradient in one allocation */
    ck_assert_uint_eq(p.ndim, 3);
    ck_assert_uint_eq(p.shape[0], 2);
    ck_assert_uint_eq(p.shape[2], 5);
    ck_assert_uint_eq(p.shape[3], 0);
    ck_assert_uint_eq(p.numel, 30);
    ck_assert_int_eq(p.trainable, 1);
    ck_assert_ptr_nonnull(p.value);
    ck_assert_ptr_nonnull(p.grad);
    ck_assert_ptr_eq(p.storage, p.value);
    ck_assert_uint_eq((uintptr_t)p.value % 64, 0);
    ck_assert_uint_eq((uintptr_t)p.grad % 64, 0);
    ck_assert((unsigned char *)p.grad >= (unsigned char *)(p.value + p.numel));
    for (size_t i = 0; i < p.numel; i++)
        ck_assert(p.value[i] == 0.0f && p.grad[i] == 0.0f);
    /* It works with the rest of the library: listed, counted, zeroed. */
    tb_param_list list;
    CHECK_OK(ctx, tb_param_list_init(&ctx, &list));
    CHECK_OK(ctx, tb_param_list_add(&ctx, &list, "m", "w", &p));
    ck_assert_uint_eq(tb_param_list_numel(&list, 1), 30);
    tb_param_list_free(&list);
    tb_param_free(&p);
    ck_assert_int_eq(c.frees, 2); /* the list's entries, then the parameter */
    ck_assert_ptr_null(p.value);
    ck_assert_ptr_null(p.storage);
    ck_assert_uint_eq(p.numel, 0);
    tb_param_free(&p); /* idempotent */
    tb_param_free(NULL);
    ck_assert_int_eq(c.frees, 2);

    /* No gradient: one vector, not trainable. */
    const size_t s1[1] = {7};
    CHECK_OK(ctx, tb_param_init(&ctx, &p, 1, s1, TB_PARAM_NO_GRAD));
    ck_assert_ptr_null(p.grad);
    ck_assert_int_eq(p.trainable, 0);
    ck_assert_uint_eq(p.numel, 7);
    tb_param_free(&p);
    ck_assert_int_eq(c.allocs, 3);
    ck_assert_int_eq(c.frees, 3);

    /* Errors: each leaves the struct empty and allocates nothing. */
    const size_t s5[5] = {1, 1, 1, 1, 1}, zero[2] = {3, 0};
    const size_t over[2] = {SIZE_MAX / 2, 3}, over_bytes[1] = {SIZE_MAX / 2};
    const size_t over_grad[1] = {SIZE_MAX / 4}; /* values fit, values + gradients do not */
    const struct {
        tb_ctx *ctx;
        tb_param *p;
        size_t ndim;
        const size_t *shape;
        unsigned flags;
        tb_status want;
        const char *detail;
    } bad[] = {
        {NULL, &p, 1, s1, 0, TB_ERR_NULL_ARG, NULL},
        {&ctx, NULL, 1, s1, 0, TB_ERR_NULL_ARG, "param"},
        {&ctx, &p, 1, NULL, 0, TB_ERR_NULL_ARG, "shape"},
        {&ctx, &p, 0, s1, 0, TB_ERR_SHAPE, "ndim is 0"},
        {&ctx, &p, 5, s5, 0, TB_ERR_SHAPE, "ndim is 5"},
        {&ctx, &p, 2, zero, 0, TB_ERR_SHAPE, "shape[1] is 0"},
        {&ctx, &p, 2, over, 0, TB_ERR_OVERFLOW, "overflows"},
        {&ctx, &p, 1, over_bytes, TB_PARAM_NO_GRAD, TB_ERR_OVERFLOW, "size_t"},
        {&ctx, &p, 1, over_grad, 0, TB_ERR_OVERFLOW, "gradients"},
        {&ctx, &p, 1, s1, 0x10u, TB_ERR_INVALID_ARG, "flags"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        memset(&p, 0xAB, sizeof p);
        tb_ctx_clear_error(&ctx);
        ck_assert_int_eq(tb_param_init(bad[i].ctx, bad[i].p, bad[i].ndim, bad[i].shape,
                                       bad[i].flags),
                         bad[i].want);
        if (bad[i].p)
            ck_assert(p.value == NULL && p.grad == NULL && p.storage == NULL && p.numel == 0);
        if (bad[i].detail)
            ck_assert_msg(strstr(tb_ctx_error(&ctx), bad[i].detail) &&
                              strstr(tb_ctx_error(&ctx), "tb_param_init: "),
                          "case %zu: '%s'", i, tb_ctx_error(&ctx));
    }
    ck_assert_int_eq(c.allocs, 3);
    /* Allocator failure: TB_ERR_NO_MEMORY, the struct empty. */
    c.budget = c.allocs;
    ck_assert_int_eq(tb_param_init(&ctx, &p, 3, s3, 0), TB_ERR_NO_MEMORY);
    ck_assert_ptr_null(p.value);
    ck_assert_ptr_null(p.storage);
    tb_param_free(&p);
    ck_assert_int_eq(c.frees, 3);
    c.budget = -1;

    /* A view: the caller's memory, never freed by the library. */
    float v[6] = {1, 2, 3, 4, 5, 6}, g[6] = {0};
    const size_t s2[2] = {2, 3};
    CHECK_OK(ctx, tb_param_view(&ctx, &p, v, g, 2, s2));
    ck_assert_ptr_eq(p.value, v);
    ck_assert_ptr_eq(p.grad, g);
    ck_assert_ptr_null(p.storage);
    ck_assert_uint_eq(p.numel, 6);
    ck_assert_int_eq(p.trainable, 1);
    tb_param_free(&p); /* clears the struct only */
    ck_assert_int_eq(c.frees, 3);
    ck_assert_ptr_null(p.value);
    ck_assert(v[5] == 6.0f);
    CHECK_OK(ctx, tb_param_view(&ctx, &p, v, NULL, 2, s2));
    ck_assert_int_eq(p.trainable, 0);
    ck_assert_int_eq(tb_param_view(&ctx, &p, NULL, g, 2, s2), TB_ERR_NULL_ARG);
    ck_assert_ptr_null(p.grad);
    ck_assert_int_eq(tb_param_view(&ctx, NULL, v, g, 2, s2), TB_ERR_NULL_ARG);
    ck_assert_int_eq(tb_param_view(&ctx, &p, v, g, 2, NULL), TB_ERR_NULL_ARG);
    ck_assert_int_eq(tb_param_view(&ctx, &p, v, g, 0, s2), TB_ERR_SHAPE);
    ck_assert_int_eq(tb_param_view(&ctx, &p, v, g, 5, s5), TB_ERR_SHAPE);
    ck_assert_int_eq(tb_param_view(&ctx, &p, v, g, 2, zero), TB_ERR_SHAPE);
    ck_assert_int_eq(tb_param_view(&ctx, &p, v, g, 2, over), TB_ERR_OVERFLOW);
    ck_assert_int_eq(tb_param_view(&ctx, &p, v, g, 1, over_bytes), TB_ERR_OVERFLOW);
    ck_assert_ptr_null(p.value);
    ck_assert_int_eq(tb_param_view(NULL, &p, v, g, 0, s2), TB_ERR_SHAPE); /* no ctx: status only */
    ck_assert_int_eq(c.allocs, 3);

    /* A layer viewing a parameter does not take ownership of it. */
    CHECK_OK(ctx, tb_param_init(&ctx, &p, 2, s2, 0));
    tb_linear lin;
    CHECK_OK(ctx, tb_linear_view(&ctx, &lin, &p, NULL, TB_LINEAR_OUT_IN));
    ck_assert_ptr_null(lin.weight.storage);
    tb_linear_free(&lin);
    tb_param_free(&lin.weight);
    ck_assert_int_eq(c.frees, 3);
    tb_param_free(&p);
    ck_assert_int_eq(c.frees, 4);
    ck_assert_int_eq(c.allocs, 4);
}
END_TEST

/* Every block's cache goes through one header check (src/core/cache_header.c):
 * the same statuses, and details that name the forward call, the size
 * query and the field that differs. */
static void expect_detail(const tb_ctx *ctx, tb_status got, tb_status want, const char *a,
                          const char *b)
{
    ck_assert_msg(got == want, "got %s, expected %s (%s)", tb_strerror(got), tb_strerror(want),
                  tb_ctx_error(ctx));
    ck_assert_msg(strstr(tb_ctx_error(ctx), a) && (!b || strstr(tb_ctx_error(ctx), b)),
                  "detail '%s' lacks '%s' or '%s'", tb_ctx_error(ctx), a, b ? b : "");
}

START_TEST(cache_headers_are_checked_alike)
{
    tb_ctx ctx;
    tbt_ctx_init(&ctx, 1);
    enum { R = 6, C = 4 };
    float x[R * C], y[R * C], dx[R * C];
    tbt_fill_uniform(x, R * C, -1, 1, 3);
    tb_tensor xt = tb_tensor_2d(x, R, C), yt = tb_tensor_2d(y, R, C), dxt = tb_tensor_2d(dx, R, C);
    tb_tensor x5 = tb_tensor_2d(x, R - 1, C), y5 = tb_tensor_2d(y, R - 1, C);
    tb_tensor dx5 = tb_tensor_2d(dx, R - 1, C);
    size_t ln_bytes, ce_bytes;
    CHECK_OK(ctx, tb_layernorm_cache_size(R, &ln_bytes));
    CHECK_OK(ctx, tb_cross_entropy_cache_size(R, &ce_bytes));
    const size_t big = ln_bytes > ce_bytes ? ln_bytes : ce_bytes;
    unsigned char *cache = tbt_alloc(big + 16);
    memset(cache, 0, big + 16);
    tb_layernorm ln;
    CHECK_OK(ctx, tb_layernorm_init(&ctx, &ln, C, 1e-5f, TB_NORM_SCALE | TB_NORM_SHIFT));
    /* LayerNorm: missing, too small, misaligned, never filled, other rows. */
    expect_detail(&ctx, tb_layernorm_backward(&ctx, &ln, &xt, &yt, NULL, ln_bytes, &dxt),
                  TB_ERR_NULL_ARG, "cache must not be NULL", "tb_layernorm_forward");
    expect_detail(&ctx, tb_layernorm_backward(&ctx, &ln, &xt, &yt, cache, ln_bytes - 1, &dxt),
                  TB_ERR_BUFFER_TOO_SMALL, "rows = 6", "tb_layernorm_cache_size()");
    expect_detail(&ctx, tb_layernorm_forward(&ctx, &ln, &xt, &yt, cache, ln_bytes - 1),
                  TB_ERR_BUFFER_TOO_SMALL, "rows = 6", "tb_layernorm_cache_size()");
    expect_detail(&ctx, tb_layernorm_backward(&ctx, &ln, &xt, &yt, cache + 2, ln_bytes, &dxt),
                  TB_ERR_INVALID_ARG, "not aligned for float", NULL);
    expect_detail(&ctx, tb_layernorm_backward(&ctx, &ln, &xt, &yt, cache, ln_bytes, &dxt),
                  TB_ERR_STATE, "not filled by tb_layernorm_forward", "another block's");
    CHECK_OK(ctx, tb_layernorm_forward(&ctx, &ln, &xt, &yt, cache, ln_bytes));
    expect_detail(&ctx, tb_layernorm_backward(&ctx, &ln, &x5, &y5, cache, ln_bytes, &dx5),
                  TB_ERR_STATE, "filled with rows = 6", "this call has 5");
    /* A LayerNorm cache is not an RMSNorm one (the same layout, another magic). */
    tb_rmsnorm rn;
    CHECK_OK(ctx, tb_rmsnorm_init(&ctx, &rn, C, 1e-5f, TB_NORM_SCALE));
    expect_detail(&ctx, tb_rmsnorm_backward(&ctx, &rn, &xt, &yt, cache, ln_bytes, &dxt),
                  TB_ERR_STATE, "not filled by tb_rmsnorm_forward", NULL);
    CHECK_OK(ctx, tb_layernorm_backward(&ctx, &ln, &xt, &yt, cache, ln_bytes, &dxt));
    /* Cross-entropy: the same checks and words. */
    const int32_t tg[R] = {0, 1, 2, 3, 0, 1};
    float loss;
    expect_detail(&ctx, tb_cross_entropy_backward(&ctx, NULL, &xt, tg, R, 1.0f, NULL, ce_bytes,
                                                  &dxt),
                  TB_ERR_NULL_ARG, "cache must not be NULL", "tb_cross_entropy_forward");
    expect_detail(&ctx, tb_cross_entropy_forward(&ctx, NULL, &xt, tg, R, &loss, cache,
                                                 ce_bytes - 1),
                  TB_ERR_BUFFER_TOO_SMALL, "rows = 6", "tb_cross_entropy_cache_size()");
    expect_detail(&ctx, tb_cross_entropy_backward(&ctx, NULL, &xt, tg, R, 1.0f, cache, ce_bytes,
                                                  &dxt),
                  TB_ERR_STATE, "not filled by tb_cross_entropy_forward", "another block's");
    CHECK_OK(ctx, tb_cross_entropy_forward(&ctx, NULL, &xt, tg, R, &loss, cache, ce_bytes));
    expect_detail(&ctx, tb_cross_entropy_backward(&ctx, NULL, &x5, tg, R - 1, 1.0f, cache,
                                                  ce_bytes, &dx5),
                  TB_ERR_STATE, "filled with rows = 6", "this call has 5");
    expect_detail(&ctx, tb_layernorm_backward(&ctx, &ln, &xt, &yt, cache, ln_bytes, &dxt),
                  TB_ERR_STATE, "not filled by tb_layernorm_forward", NULL);
    tb_rmsnorm_free(&rn);
    tb_layernorm_free(&ln);
    free(cache);
}
END_TEST

Suite *suite_core(void)
{
    Suite *s = suite_create("core");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, version_matches_macros);
    tcase_add_test(tc, status_values_are_pinned);
    tcase_add_test(tc, strerror_covers_every_code);
    tcase_add_test(tc, context_defaults_and_error_detail);
    tcase_add_test(tc, tensor_views);
    tcase_add_test(tc, param_list_basics);
    tcase_add_test(tc, block_params_enumerate_by_name);
    tcase_add_test(tc, rng_reproducible_and_distributed);
    tcase_add_test(tc, arena_alignment_and_limits);
    tcase_add_test(tc, arena_counts_then_carves);
    tcase_add_test(tc, ctx_set_error_records_and_returns);
    tcase_add_test(tc, allocator_hooks_are_used_and_failures_reported);
    tcase_add_test(tc, param_init_view_free);
    tcase_add_test(tc, param_select_predicates);
    tcase_add_test(tc, cache_headers_are_checked_alike);
    suite_add_tcase(s, tc);
    return s;
}
