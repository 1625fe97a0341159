/*
 * PEFT LoRA adapter files (tblocks/lora_file.h, tfm_lora_save/load) against
 * the real PEFT 0.21.2 and transformers (test/oracle/gen_peft_gpt2.py):
 *
 *  - PEFT's adapters (r 4 on c_attn; c_attn + c_proj with rank_pattern and
 *    alpha_pattern, trained; rsLoRA on c_attn + c_fc; DoRA on c_attn +
 *    c_proj, trained) load with tfm_lora_load onto the GPT example's model
 *    (the base checkpoint loaded by name) and give PEFT's logits, unmerged,
 *    merged (vs merge_and_unload()) and unmerged again;
 *  - adapters WE make and save (tfm_lora_save) load with
 *    PeftModel.from_pretrained and give our logits (test/oracle/
 *    peft_verify.py, run from here, which also checks PEFT wrapped exactly
 *    the file's modules and parsed r, alpha, patterns and targets as
 *    meant), and load back here bitwise;
 *  - broken files (rank and shape mismatches, an unknown module, a missing
 *    tensor, a wrong peft_type, malformed JSON, a truncated safetensors
 *    file, unsupported features, a NaN, a duplicate adapter met half-way)
 *    fail with their status and a message naming the problem, and leave
 *    the model bitwise unchanged (logits compared bit for bit, sites and
 *    adapters counted);
 *  - the fuzz target's seeds replay with their named outcomes.
 *
 * ---- Tolerances -----------------------------------------------------------
 * Logits: |got - want| <= atol + rtol |want|, rtol 1e-4, atol 1e-4 * max
 * |want| of the tensor, against float32 PEFT and (unmerged) float64 PEFT,
 * as test_gpt.c's GPT-2 comparison: the two float32 stacks differ by
 * rounding only (~1e-6 of the scale measured), and the adapter's effect on
 * the logits is checked to exceed 1e-2 of the scale, 100x the tolerance,
 * so a lost or mis-scaled adapter fails. Merged: the same tolerance against
 * merge_and_unload()'s logits (merging rounds W + s B A once in float32 on
 * both sides).
 */
#define _POSIX_C_SOURCE 200809L /* getpid, mkdtemp, truncate */
#include <dirent.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../fuzz/lora_file_harness.h"
#include "gpt.h"
#include "suites.h"
#include "testutil.h"
#include "tfm_lora.h"

#define ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

static const char *const peft_cases[] = {"peft_r4_c_attn", "peft_patterns", "peft_rslora",
                                         "peft_dora"};

static const char *oracle_dir(void)
{
    const char *d = getenv("TB_ORACLE_DIR");
    ck_assert_msg(d != NULL, "TB_ORACLE_DIR is not set (make build/oracle/.stamp)");
    return d;
}

/* The base model of a case, loaded from its save_pretrained checkpoint. */
static void base_model(tb_ctx *ctx, const tbt_ref *ref, const char *name, gpt *m)
{
    gpt_config c;
    memset(&c, 0, sizeof c);
    c.n_layer = (size_t)tbt_ref_i32_scalar(ref, "n_layer");
    c.n_head = (size_t)tbt_ref_i32_scalar(ref, "n_head");
    c.n_embd = (size_t)tbt_ref_i32_scalar(ref, "n_embd");
    c.block_size = (size_t)tbt_ref_i32_scalar(ref, "block_size");
    c.vocab_size = (size_t)tbt_ref_i32_scalar(ref, "vocab");
    tb_rng rng;
    tb_rng_init(&rng, 1);
    CHECK_OK(*ctx, gpt_init(ctx, m, &c, &rng));
    char path[700];
    snprintf(path, sizeof path, "%s/%s/base/model.safetensors", oracle_dir(), name);
    CHECK_OK(*ctx, gpt_load_weights(ctx, m, path));
}

/* Inference logits of the case's tokens into out (B*T*V floats). */
static void logits_of(tb_ctx *ctx, gpt *m, const tbt_ref *ref, float *out)
{
    tbt_reft want = tbt_ref_get(ref, "logits");
    const size_t B = want.shape[0], T = want.shape[1];
    size_t nt;
    const int32_t *tokens = tbt_ref_i32(ref, "tokens", &nt);
    ck_assert_uint_eq(nt, B * T);
    gpt_acts a;
    CHECK_OK(*ctx, gpt_acts_init(ctx, &a, m, B, T));
    CHECK_OK(*ctx, gpt_forward(ctx, m, &a, TB_MODE_INFERENCE, NULL, tokens, NULL, B, T, NULL));
    memcpy(out, a.logits, want.n * sizeof(float));
    gpt_acts_free(&a);
}

/* Compare with tolerance (file comment); returns max |got - want| / max |want|. */
static double check_logits(const char *label, const float *got, const float *want, size_t n)
{
    const double scale = tbt_max_abs_f(want, n);
    tbt_assert_close(label, got, want, n, 1e-4, 1e-4 * scale);
    double worst = 0;
    for (size_t i = 0; i < n; i++)
        worst = fmax(worst, fabs((double)got[i] - (double)want[i]));
    return worst / scale;
}

static char *make_tmpdir(void);
static void rm_rf(const char *dir);

/* Saving what was loaded writes PEFT's file again: the same keys, shapes
 * and bytes, and configurations that read back the same per module. */
static void resave_equals(tb_ctx *ctx, const tfm_lora *tl, const char *peft_dir)
{
    char *dir = make_tmpdir();
    char ours[900];
    snprintf(ours, sizeof ours, "%s/again", dir);
    CHECK_OK(*ctx, tfm_lora_save(ctx, tl, ours, "default", "transformer.", NULL));
    tb_lora_file a, b;
    CHECK_OK(*ctx, tb_lora_file_open(ctx, peft_dir, &a));
    CHECK_OK(*ctx, tb_lora_file_open(ctx, ours, &b));
    ck_assert_uint_eq(a.st.count, b.st.count);
    for (size_t i = 0; i < a.st.count; i++) {
        const tb_st_tensor *ta = &a.st.tensors[i], *tb = tb_st_find(&b.st, ta->name);
        ck_assert_msg(tb != NULL, "our file lacks PEFT's key %s", ta->name);
        ck_assert(ta->dtype == TB_ST_F32 && tb->dtype == TB_ST_F32 && ta->ndim == tb->ndim);
        ck_assert_msg(ta->nbytes == tb->nbytes && memcmp(ta->data, tb->data, ta->nbytes) == 0,
                      "%s differs", ta->name);
    }
    ck_assert_str_eq(tb_st_meta_get(&b.st, "format"), "pt");
    ck_assert_uint_eq(a.n_modules, b.n_modules);
    for (size_t i = 0; i < a.n_modules; i++) {
        const tb_lora_file_module *ma = &a.modules[i], *mb = tb_lora_file_find(&b, ma->name);
        ck_assert(mb != NULL);
        ck_assert_uint_eq(ma->config.rank, mb->config.rank);
        ck_assert(ma->config.alpha == mb->config.alpha && ma->config.dropout == mb->config.dropout);
        ck_assert(!ma->config.use_rslora == !mb->config.use_rslora);
        ck_assert(!ma->config.use_dora == !mb->config.use_dora);
        ck_assert_int_eq(ma->config.init, mb->config.init);
    }
    ck_assert_int_eq(a.fan_in_fan_out, b.fan_in_fan_out);
    ck_assert_str_eq(a.task_type, b.task_type);
    tb_lora_file_close(&a);
    tb_lora_file_close(&b);
    rm_rf(dir);
    free(dir);
}

START_TEST(test_peft_adapter_gives_peft_logits)
{
    const char *name = peft_cases[_i];
    tbt_ref *ref = tbt_ref_load(name);
    tb_ctx ctx;
    tbt_ctx_init(&ctx, 2);
    gpt m;
    base_model(&ctx, ref, name, &m);
    tbt_reft want = tbt_ref_get(ref, "logits");
    const size_t n = want.n;
    float *got = tbt_alloc(n * sizeof(float));
    char lbl[200];
    /* The base model is GPT-2's (PEFT with the adapter disabled). */
    logits_of(&ctx, &m, ref, got);
    snprintf(lbl, sizeof lbl, "%s.base", name);
    check_logits(lbl, got, tbt_ref_get(ref, "logits_base").data, n);
    tfm_lora tl;
    tfm_lora_init(&tl);
    char dir[700];
    snprintf(dir, sizeof dir, "%s/%s/adapter", oracle_dir(), name);
    CHECK_OK(ctx, tfm_lora_load(&ctx, &tl, &m.t, dir, "default", "transformer."));
    ck_assert_uint_gt(tl.n_sites, 0);
    resave_equals(&ctx, &tl, dir);
    /* rank_pattern / alpha_pattern as PEFT applies them */
    if (strcmp(name, "peft_patterns") == 0) {
        static const struct {
            const char *module;
            size_t rank;
            float alpha;
        } want_cfg[] = {{"h.0.attn.c_attn", 4, 16.0f}, {"h.0.attn.c_proj", 4, 16.0f},
                        {"h.0.mlp.c_proj", 6, 3.5f},   {"h.1.attn.c_proj", 2, 16.0f},
                        {"h.1.mlp.c_proj", 4, 3.5f}};
        ck_assert_uint_eq(tl.n_sites, 6);
        for (size_t k = 0; k < ARRAY_LEN(want_cfg); k++) {
            tfm_lora_site *st = tfm_lora_find(&tl, want_cfg[k].module);
            ck_assert_msg(st != NULL, "no site %s", want_cfg[k].module);
            ck_assert_uint_eq(st->lora.adapter[0].config.rank, want_cfg[k].rank);
            ck_assert(st->lora.adapter[0].config.alpha == want_cfg[k].alpha);
        }
    }
    logits_of(&ctx, &m, ref, got);
    snprintf(lbl, sizeof lbl, "%s.unmerged", name);
    const double e_un = check_logits(lbl, got, want.data, n);
    snprintf(lbl, sizeof lbl, "%s.unmerged_vs_f64", name);
    check_logits(lbl, got, tbt_ref_get(ref, "logits_f64").data, n);
    CHECK_OK(ctx, tfm_lora_merge(&ctx, &tl, NULL, 0));
    logits_of(&ctx, &m, ref, got);
    snprintf(lbl, sizeof lbl, "%s.merged", name);
    const double e_me = check_logits(lbl, got, tbt_ref_get(ref, "logits_merged").data, n);
    CHECK_OK(ctx, tfm_lora_unmerge(&ctx, &tl));
    logits_of(&ctx, &m, ref, got);
    snprintf(lbl, sizeof lbl, "%s.unmerged_again", name);
    check_logits(lbl, got, want.data, n);
    printf("  check   %s vs PEFT: unmerged %.2e, merged %.2e of max |logit| (tolerance 1e-4 + "
           "1e-4 rel)\n",
           name, e_un, e_me);
    tfm_lora_free(&tl);
    gpt_free(&m);
    free(got);
    tbt_ref_free(ref);
}
END_TEST

START_TEST(test_peft_manifest)
{
    const tbt_names l = {peft_cases, ARRAY_LEN(peft_cases)};
    ck_assert_uint_eq(tbt_check_manifest("peft_cases.txt", "test_lora_file.c", tbt_name_listed, &l),
                      ARRAY_LEN(peft_cases));
}
END_TEST

/* ---- files we write, read by PEFT ------------------------------------------------ */

static char *make_tmpdir(void)
{
    char *d = tbt_alloc(800);
    snprintf(d, 800, "%s/tmp-lora-XXXXXX", oracle_dir());
    ck_assert_msg(mkdtemp(d) != NULL, "mkdtemp %s", d);
    return d;
}

static void rm_rf(const char *dir)
{
    DIR *d = opendir(dir);
    if (!d)
        return;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
            continue;
        char p[1200];
        snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
        struct stat sb;
        if (lstat(p, &sb) == 0 && S_ISDIR(sb.st_mode))
            rm_rf(p);
        else
            remove(p);
    }
    closedir(d);
    rmdir(dir);
}

typedef struct save_case {
    const char *label;
    const char *const *targets;
    size_t n_targets;
    size_t rank;
    float alpha;
    int rslora, dora;
    const char *const *rank_keys;
    const size_t *ranks;
    size_t n_ranks;
    const char *const *alpha_keys;
    const float *alphas;
    size_t n_alphas;
    /* what PEFT must read (peft_verify.py's expect.* keys) */
    const char *want_r, *want_alpha, *want_rank_pattern, *want_alpha_pattern, *want_targets;
} save_case;

static const char *const t_c_attn[] = {"c_attn"};
static const char *const t_attn_only[] = {"c_attn", "attn.c_proj"};
static const char *const t_dora[] = {"c_attn", "c_fc"};
static const char *const rk[] = {"h.1.attn.c_attn"};
static const size_t rv[] = {2};
static const char *const ak[] = {"h.0.attn.c_proj"};
static const float av[] = {5.0f};

static const save_case save_cases[] = {
    {"plain r4 c_attn", t_c_attn, 1, 4, 8.0f, 0, 0, NULL, NULL, 0, NULL, NULL, 0, "4", "8.0",
     "{}", "{}", "c_attn"},
    /* attn.c_proj only: mlp.c_proj must not be targeted, so the c_proj
     * holders are listed by full name */
    {"patterns + rsLoRA, attn only", t_attn_only, 2, 4, 8.0f, 1, 0, rk, rv, 1, ak, av, 1, "4",
     "8.0", "{\"transformer.h.1.attn.c_attn\": 2}", "{\"transformer.h.0.attn.c_proj\": 5.0}",
     "c_attn,transformer.h.0.attn.c_proj,transformer.h.1.attn.c_proj"},
    {"DoRA r3 c_attn + c_fc", t_dora, 2, 3, 6.5f, 0, 1, NULL, NULL, 0, NULL, NULL, 0, "3", "6.5",
     "{}", "{}", "c_attn,c_fc"},
};

START_TEST(test_our_adapter_loads_in_peft)
{
    const save_case *sc = &save_cases[_i];
    const char *name = "peft_rslora"; /* its base model (n_embd 48, 4 heads, vocabulary 97) */
    tbt_ref *ref = tbt_ref_load(name);
    tb_ctx ctx;
    tbt_ctx_init(&ctx, 2);
    gpt m;
    base_model(&ctx, ref, name, &m);
    tfm_lora tl;
    tfm_lora_init(&tl);
    tfm_lora_spec spec;
    memset(&spec, 0, sizeof spec);
    spec.targets = sc->targets, spec.n_targets = sc->n_targets;
    spec.config = tb_lora_config_default(sc->rank);
    spec.config.alpha = sc->alpha;
    spec.config.use_rslora = sc->rslora;
    spec.config.use_dora = sc->dora;
    spec.config.init = TB_LORA_INIT_RANDOM;
    spec.rank_keys = sc->rank_keys, spec.ranks = sc->ranks, spec.n_ranks = sc->n_ranks;
    spec.alpha_keys = sc->alpha_keys, spec.alphas = sc->alphas, spec.n_alphas = sc->n_alphas;
    tb_rng rng;
    tb_rng_init(&rng, 900 + (uint64_t)_i);
    CHECK_OK(ctx, tfm_lora_add(&ctx, &tl, &m.t, "mine", &spec, &rng));
    if (sc->dora) /* magnitudes away from the norms, so that m itself is tested */
        for (size_t i = 0; i < tl.n_sites; i++) {
            tb_param *mag = &tl.sites[i].lora.adapter[0].magnitude;
            for (size_t e = 0; e < mag->numel; e++)
                mag->value[e] *= 1.0f + 0.2f * (float)((e * 7 + i) % 5) / 4.0f - 0.1f;
        }
    tbt_reft want = tbt_ref_get(ref, "logits");
    const size_t n = want.n, B = want.shape[0], T = want.shape[1];
    float *ours = tbt_alloc(n * sizeof(float)), *again = tbt_alloc(n * sizeof(float));
    logits_of(&ctx, &m, ref, ours);
    char *dir = make_tmpdir();
    char adir[900], result[900], base[900], cmd[3200];
    snprintf(adir, sizeof adir, "%s/adapter", dir); /* made by the save */
    CHECK_OK(ctx, tfm_lora_save(&ctx, &tl, adir, "mine", "transformer.", "tblocks-test/gpt2"));
    /* Our logits and tokens for the checker. */
    size_t nt;
    const int32_t *tok = tbt_ref_i32(ref, "tokens", &nt);
    float *ftok = tbt_alloc(nt * sizeof(float));
    for (size_t i = 0; i < nt; i++)
        ftok[i] = (float)tok[i];
    const size_t tshape[2] = {B, T}, lshape[3] = {B, T, want.shape[2]};
    const tb_st_entry ent[2] = {{"tokens", ftok, 2, tshape}, {"logits", ours, 3, lshape}};
    const tb_st_meta meta[5] = {{"expect.r", sc->want_r},
                                {"expect.lora_alpha", sc->want_alpha},
                                {"expect.rank_pattern", sc->want_rank_pattern},
                                {"expect.alpha_pattern", sc->want_alpha_pattern},
                                {"expect.target_modules", sc->want_targets}};
    snprintf(result, sizeof result, "%s/result.safetensors", dir);
    CHECK_OK(ctx, tb_st_save(&ctx, result, ent, 2, meta, 5));
    snprintf(base, sizeof base, "%s/%s/base", oracle_dir(), name);
    ck_assert_msg(access("test/oracle/peft_verify.py", R_OK) == 0,
                  "run the tests from the source tree (make check)");
    snprintf(cmd, sizeof cmd, "python3 test/oracle/peft_verify.py '%s' '%s' '%s'", base, adir,
             result);
    fflush(stdout);
    const int rc = system(cmd);
    ck_assert_msg(rc == 0,
                  "%s: PeftModel.from_pretrained rejected or disagrees with %s (status %d)",
                  sc->label, adir, rc);
    /* And it loads back here, bitwise, into a fresh model. */
    gpt m2;
    base_model(&ctx, ref, name, &m2);
    tfm_lora tl2;
    tfm_lora_init(&tl2);
    CHECK_OK(ctx, tfm_lora_load(&ctx, &tl2, &m2.t, adir, "default", "transformer."));
    ck_assert_uint_eq(tl2.n_sites, tl.n_sites);
    logits_of(&ctx, &m2, ref, again);
    ck_assert_msg(memcmp(ours, again, n * sizeof(float)) == 0,
                  "%s: logits after save and load differ", sc->label);
    for (size_t i = 0; i < tl.n_sites; i++) {
        const tfm_lora_site *st2 = tfm_lora_find(&tl2, tl.sites[i].module);
        ck_assert(st2 != NULL);
        const tb_lora_adapter *a = &tl.sites[i].lora.adapter[0], *b = &st2->lora.adapter[0];
        ck_assert_uint_eq(a->config.rank, b->config.rank);
        ck_assert(a->config.alpha == b->config.alpha && a->scaling == b->scaling);
        ck_assert(!a->config.use_rslora == !b->config.use_rslora);
        ck_assert(!a->config.use_dora == !b->config.use_dora && b->config.init == a->config.init);
    }
    tfm_lora_free(&tl2);
    gpt_free(&m2);
    tfm_lora_free(&tl);
    gpt_free(&m);
    rm_rf(dir);
    free(dir);
    free(ftok);
    free(ours);
    free(again);
    tbt_ref_free(ref);
}
END_TEST

/* ---- broken files ---------------------------------------------------------------- */

static char *slurp(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    ck_assert_msg(f != NULL, "cannot open %s", path);
    fseek(f, 0, SEEK_END);
    const long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *b = tbt_alloc((size_t)n + 1);
    ck_assert(fread(b, 1, (size_t)n, f) == (size_t)n);
    fclose(f);
    *len = (size_t)n;
    return b;
}

static void spit(const char *path, const char *b, size_t n)
{
    FILE *f = fopen(path, "wb");
    ck_assert_msg(f != NULL, "cannot write %s", path);
    ck_assert(fwrite(b, 1, n, f) == n);
    fclose(f);
}

/* How a copy of an adapter directory is broken. */
typedef struct breakage {
    const char *label;
    const char *json_find, *json_put; /* replace the first occurrence in the config */
    size_t json_cut;                  /* keep only this many bytes of it (0: all) */
    const char *drop;                 /* tensor left out */
    const char *rename_from, *rename_to;
    const char *nan_in;               /* tensor given a NaN */
    int truncate_st;                  /* cut the safetensors file in half */
    const char *other_case;           /* load onto this case's model instead */
    const char *prefix;               /* tfm_lora_load's prefix (NULL: "transformer.") */
    int clash_at_second;              /* "default" already on the second module */
    tb_status want;
    const char *want_msg;             /* part of the message */
} breakage;

static void broken_copy(const char *src, const char *dst, const breakage *bk)
{
    char p[1200];
    size_t len;
    snprintf(p, sizeof p, "%s/adapter_config.json", src);
    char *js = slurp(p, &len);
    if (bk->json_find) {
        char *at = strstr(js, bk->json_find);
        ck_assert_msg(at != NULL, "%s: '%s' not in the config", bk->label, bk->json_find);
        const size_t a = (size_t)(at - js), fl = strlen(bk->json_find), pl = strlen(bk->json_put);
        char *nj = tbt_alloc(len - fl + pl + 1);
        memcpy(nj, js, a);
        memcpy(nj + a, bk->json_put, pl);
        memcpy(nj + a + pl, js + a + fl, len - a - fl);
        len = len - fl + pl;
        free(js);
        js = nj;
    }
    if (bk->json_cut)
        len = bk->json_cut;
    snprintf(p, sizeof p, "%s/adapter_config.json", dst);
    spit(p, js, len);
    free(js);
    tb_ctx ctx;
    tbt_ctx_init(&ctx, 1);
    tb_st_file f;
    snprintf(p, sizeof p, "%s/adapter_model.safetensors", src);
    CHECK_OK(ctx, tb_st_open(&ctx, p, &f));
    tb_st_entry *ent = tbt_alloc(f.count * sizeof *ent);
    float **vals = tbt_alloc(f.count * sizeof *vals);
    char **names = tbt_alloc(f.count * sizeof *names);
    size_t k = 0;
    for (size_t i = 0; i < f.count; i++) {
        const tb_st_tensor *t = &f.tensors[i];
        if (bk->drop && strcmp(t->name, bk->drop) == 0)
            continue;
        vals[k] = tbt_alloc(t->numel * sizeof(float));
        CHECK_OK(ctx, tb_st_read_f32(&ctx, t, vals[k], t->numel));
        if (bk->nan_in && strcmp(t->name, bk->nan_in) == 0)
            vals[k][t->numel / 2] = NAN;
        ent[k].name = t->name;
        const char *at = bk->rename_from ? strstr(t->name, bk->rename_from) : NULL;
        if (at) { /* every name holding rename_from, with it replaced */
            names[k] = tbt_alloc(strlen(t->name) + strlen(bk->rename_to) + 1);
            sprintf(names[k], "%.*s%s%s", (int)(at - t->name), t->name, bk->rename_to,
                    at + strlen(bk->rename_from));
            ent[k].name = names[k];
        }
        ent[k].data = vals[k], ent[k].ndim = t->ndim, ent[k].shape = t->shape;
        k++;
    }
    ck_assert_msg(!bk->drop || k + 1 == f.count, "%s: %s not in the file", bk->label, bk->drop);
    const tb_st_meta meta[1] = {{"format", "pt"}};
    snprintf(p, sizeof p, "%s/adapter_model.safetensors", dst);
    CHECK_OK(ctx, tb_st_save(&ctx, p, ent, k, meta, 1));
    for (size_t i = 0; i < k; i++)
        free(vals[i]), free(names[i]);
    free(vals);
    free(names);
    free(ent);
    tb_st_close(&f);
    if (bk->truncate_st) {
        struct stat sb;
        ck_assert(stat(p, &sb) == 0);
        ck_assert(truncate(p, sb.st_size / 2) == 0);
    }
}

#define K_ "base_model.model.transformer."
static const breakage breakages[] = {
    {"rank mismatch", "\"r\": 4", "\"r\": 3", 0, NULL, NULL, NULL, NULL, 0, NULL, NULL, 0,
     TB_ERR_FORMAT, K_ "h.0.attn.c_attn.lora_A.weight' has shape (4, 32): rank 4, but the "
                    "configuration gives r = 3"},
    {"shape mismatch", NULL, NULL, 0, NULL, NULL, NULL, NULL, 0, "peft_rslora", NULL, 0,
     TB_ERR_SHAPE, K_ "h.0.attn.c_attn.lora_A.weight' is (4, 32), but module "
                   "'transformer.h.0.attn.c_attn' has in_features 48"},
    {"unknown module (prefix)", NULL, NULL, 0, NULL, NULL, NULL, NULL, 0, NULL, "", 0,
     TB_ERR_NOT_FOUND, "module 'transformer.h.0.attn.c_attn' of the adapter file matches none"},
    {"unknown module (name)", NULL, NULL, 0, NULL, "h.1.attn", "h.7.attn", NULL, 0, NULL, NULL,
     0, TB_ERR_NOT_FOUND, "module 'transformer.h.7.attn.c_attn' of the adapter file matches none"},
    {"missing tensor", NULL, NULL, 0, K_ "h.1.attn.c_attn.lora_B.weight", NULL, NULL, NULL, 0,
     NULL, NULL, 0, TB_ERR_FORMAT, K_ "h.1.attn.c_attn.lora_B.weight' is missing"},
    {"wrong peft_type", "\"peft_type\": \"LORA\"", "\"peft_type\": \"IA3\"", 0, NULL, NULL, NULL,
     NULL, 0, NULL, NULL, 0, TB_ERR_FORMAT, "peft_type is \"IA3\", not \"LORA\""},
    {"malformed JSON", "\"lora_alpha\": 8,", "\"lora_alpha\": 8,,", 0, NULL, NULL, NULL, NULL, 0,
     NULL, NULL, 0, TB_ERR_FORMAT, "adapter_config.json: expected a key string at byte"},
    {"truncated JSON", NULL, NULL, 700, NULL, NULL, NULL, NULL, 0, NULL, NULL, 0, TB_ERR_FORMAT,
     "adapter_config.json"},
    {"truncated safetensors", NULL, NULL, 0, NULL, NULL, NULL, NULL, 1, NULL, NULL, 0,
     TB_ERR_FORMAT, "adapter_model.safetensors"},
    {"alpha not a number", "\"lora_alpha\": 8", "\"lora_alpha\": \"8\"", 0, NULL, NULL, NULL,
     NULL, 0, NULL, NULL, 0, TB_ERR_FORMAT, "\"lora_alpha\" must be a number"},
    {"dropout out of range", "\"lora_dropout\": 0.0", "\"lora_dropout\": 1.0", 0, NULL, NULL,
     NULL, NULL, 0, NULL, NULL, 0, TB_ERR_FORMAT, "\"lora_dropout\" 1 is not in [0, 1)"},
    {"bias all", "\"bias\": \"none\"", "\"bias\": \"all\"", 0, NULL, NULL, NULL, NULL, 0, NULL,
     NULL, 0, TB_ERR_UNSUPPORTED, "bias \"all\""},
    {"PiSSA init", "\"init_lora_weights\": false", "\"init_lora_weights\": \"pissa\"", 0, NULL,
     NULL, NULL, NULL, 0, NULL, NULL, 0, TB_ERR_UNSUPPORTED, "init_lora_weights \"pissa\""},
    {"regex rank_pattern", "\"rank_pattern\": {}", "\"rank_pattern\": {\"h\\\\.[01]\\\\.attn\": 4}",
     0, NULL, NULL, NULL, NULL, 0, NULL, NULL, 0, TB_ERR_UNSUPPORTED, "is a regular expression"},
    {"not an adapter tensor", NULL, NULL, 0, NULL, K_ "h.0.attn.c_attn.lora_A.weight",
     "transformer.h.0.attn.c_attn.weight", NULL, 0, NULL, NULL, 0, TB_ERR_FORMAT,
     "no \"base_model.model.\" prefix"},
    {"NaN", NULL, NULL, 0, NULL, NULL, NULL, K_ "h.1.attn.c_attn.lora_B.weight", 0, NULL, NULL, 0,
     TB_ERR_NON_FINITE, K_ "h.1.attn.c_attn.lora_B.weight' holds a NaN"},
    {"duplicate adapter half-way", NULL, NULL, 0, NULL, NULL, NULL, NULL, 0, NULL, NULL, 1,
     TB_ERR_DUPLICATE, "module 'transformer.h.1.attn.c_attn': tb_lora_add: adapter 'default' "
                       "already exists"},
};

START_TEST(test_broken_files_change_nothing)
{
    const breakage *bk = &breakages[_i];
    const char *name = bk->other_case ? bk->other_case : "peft_r4_c_attn";
    tbt_ref *ref = tbt_ref_load(name);
    tb_ctx ctx;
    tbt_ctx_init(&ctx, 2);
    gpt m;
    base_model(&ctx, ref, name, &m);
    /* Something already there that must stay: an adapter "keep" on c_proj
     * (and "default" on h.1's c_attn for the half-way clash). */
    tfm_lora tl;
    tfm_lora_init(&tl);
    const char *const keep_t[] = {"c_proj"}, *const clash_t[] = {"h.1.attn.c_attn"};
    tfm_lora_spec spec;
    memset(&spec, 0, sizeof spec);
    spec.targets = keep_t, spec.n_targets = 1;
    spec.config = tb_lora_config_default(2);
    spec.config.init = TB_LORA_INIT_RANDOM;
    tb_rng rng;
    tb_rng_init(&rng, 77);
    CHECK_OK(ctx, tfm_lora_add(&ctx, &tl, &m.t, "keep", &spec, &rng));
    if (bk->clash_at_second) {
        spec.targets = clash_t;
        CHECK_OK(ctx, tfm_lora_add(&ctx, &tl, &m.t, "default", &spec, &rng));
    }
    tbt_reft want = tbt_ref_get(ref, "logits");
    const size_t n = want.n;
    float *before = tbt_alloc(n * sizeof(float)), *after = tbt_alloc(n * sizeof(float));
    logits_of(&ctx, &m, ref, before);
    const size_t sites = tl.n_sites;
    size_t adapters = 0;
    for (size_t i = 0; i < tl.n_sites; i++)
        adapters += tl.sites[i].lora.n_adapters;
    char src[800];
    snprintf(src, sizeof src, "%s/peft_r4_c_attn/adapter", oracle_dir());
    char *dir = make_tmpdir();
    broken_copy(src, dir, bk);
    const tb_status s = tfm_lora_load(&ctx, &tl, &m.t, dir, "default",
                                      bk->prefix ? bk->prefix : "transformer.");
    ck_assert_msg(s == bk->want, "%s: %s (%s), want %s", bk->label, tb_strerror(s),
                  tb_ctx_error(&ctx), tb_strerror(bk->want));
    ck_assert_msg(strstr(tb_ctx_error(&ctx), bk->want_msg) != NULL,
                  "%s: message '%s' does not say '%s'", bk->label, tb_ctx_error(&ctx),
                  bk->want_msg);
    printf("  check   %-32s %s: %s\n", bk->label, tb_strerror(s), tb_ctx_error(&ctx));
    ck_assert_uint_eq(tl.n_sites, sites);
    size_t adapters_after = 0;
    for (size_t i = 0; i < tl.n_sites; i++)
        adapters_after += tl.sites[i].lora.n_adapters;
    ck_assert_uint_eq(adapters_after, adapters);
    logits_of(&ctx, &m, ref, after);
    ck_assert_msg(memcmp(before, after, n * sizeof(float)) == 0,
                  "%s: the model's logits changed after a failed load", bk->label);
    rm_rf(dir);
    free(dir);
    free(before);
    free(after);
    tfm_lora_free(&tl);
    gpt_free(&m);
    tbt_ref_free(ref);
}
END_TEST

/* The library alone: configurations in memory, the file's own checks. */
START_TEST(test_config_validation)
{
    tb_ctx ctx;
    tbt_ctx_init(&ctx, 1);
    /* An image with one module "m.a" (A (2, 6), B (5, 2)). */
    float a[12], b[10];
    for (int i = 0; i < 12; i++)
        a[i] = 0.1f * (float)i - 0.5f;
    for (int i = 0; i < 10; i++)
        b[i] = 0.05f * (float)i - 0.2f;
    const size_t sa[2] = {2, 6}, sb[2] = {5, 2};
    const tb_st_entry ent[2] = {{"base_model.model.m.a.lora_A.weight", a, 2, sa},
                                {"base_model.model.m.a.lora_B.weight", b, 2, sb}};
    char path[800];
    snprintf(path, sizeof path, "%s/tmp-lora-img-%ld.st", oracle_dir(), (long)getpid());
    CHECK_OK(ctx, tb_st_save(&ctx, path, ent, 2, NULL, 0));
    size_t wl;
    char *w = slurp(path, &wl);
    remove(path);
    static const struct {
        const char *json;
        tb_status want;
        const char *msg;
    } cases[] = {
        {"{\"peft_type\": \"LORA\", \"r\": 2, \"lora_alpha\": 4, \"future_field\": {\"x\": [1, "
         "2.5e3, null]}}",
         TB_OK, NULL},
        {"{\"peft_type\": \"LORA\", \"r\": 2.0, \"lora_alpha\": 1e1, \"alpha_pattern\": "
         "{\"a\": 0.25}, \"task_type\": null, \"target_modules\": \"a|b\"}",
         TB_OK, NULL},
        {"{\"r\": 2}", TB_ERR_FORMAT, "no \"peft_type\""},
        {"{\"peft_type\": \"LORA\"}", TB_ERR_FORMAT, "no \"r\""},
        {"{\"peft_type\": \"LORA\", \"r\": 0}", TB_ERR_FORMAT, "integer rank"},
        {"{\"peft_type\": \"LORA\", \"r\": 2.5}", TB_ERR_FORMAT, "integer rank"},
        {"{\"peft_type\": \"LORA\", \"r\": -2}", TB_ERR_FORMAT, "integer rank"},
        {"{\"peft_type\": \"LORA\", \"r\": 2, \"r\": 2}", TB_ERR_FORMAT, "appears twice"},
        {"{\"peft_type\": \"LORA\", \"r\": 2, \"lora_alpha\": 1e39}", TB_ERR_FORMAT,
         "finite float"},
        {"{\"peft_type\": \"LORA\", \"r\": 2, \"lora_alpha\": 1e999}", TB_ERR_FORMAT,
         "out of range"},
        {"{\"peft_type\": \"LORA\", \"r\": 2, \"use_dora\": 1}", TB_ERR_FORMAT,
         "must be true or false"},
        {"{\"peft_type\": \"LORA\", \"r\": 2, \"use_dora\": true}", TB_ERR_FORMAT,
         "lora_magnitude_vector' is missing"},
        {"{\"peft_type\": \"LORA\", \"r\": 3}", TB_ERR_FORMAT, "rank 2, but the configuration"},
        {"{\"peft_type\": \"LORA\", \"r\": 4, \"rank_pattern\": {\"m.a\": 2}}", TB_OK, NULL},
        {"{\"peft_type\": \"LORA\", \"r\": 4, \"rank_pattern\": {\"b\": 2}}", TB_ERR_FORMAT,
         "r = 4 here"},
        {"{\"peft_type\": \"LORA\", \"r\": 2, \"rank_pattern\": {\"a\": \"2\"}}", TB_ERR_FORMAT,
         "must be a number"},
        {"{\"peft_type\": \"LORA\", \"r\": 2, \"rank_pattern\": []}", TB_ERR_FORMAT,
         "must be an object"},
        {"{\"peft_type\": \"LORA\", \"r\": 2, \"target_modules\": [1]}", TB_ERR_FORMAT,
         "strings only"},
        {"{\"peft_type\": \"LORA\", \"r\": 2, \"modules_to_save\": [\"lm_head\"]}",
         TB_ERR_UNSUPPORTED, "modules_to_save"},
        {"{\"peft_type\": \"LORA\", \"r\": 2, \"modules_to_save\": []}", TB_OK, NULL},
        {"{\"peft_type\": \"LORA\", \"r\": 2, \"lora_bias\": true}", TB_ERR_UNSUPPORTED,
         "lora_bias"},
        {"{\"peft_type\": \"LORA\", \"r\": 2, \"layer_replication\": [[0, 1]]}",
         TB_ERR_UNSUPPORTED, "layer_replication"},
        {"{\"peft_type\": \"LORA\", \"r\": 2} x", TB_ERR_FORMAT, "text after"},
        {"[1]", TB_ERR_FORMAT, "not a JSON object"},
        {"", TB_ERR_FORMAT, "not a JSON object"},
        {"{\"peft_type\": \"LORA\", \"r\": 2, \"x\": \"\\ud800\"}", TB_ERR_FORMAT, "surrogate"},
        {"{\"peft_type\": \"LORA\", \"r\": 2, \"x\": 01}", TB_ERR_FORMAT, "expected ','"},
    };
    for (size_t i = 0; i < ARRAY_LEN(cases); i++) {
        tb_lora_file f;
        const tb_status s = tb_lora_file_parse(&ctx, cases[i].json, strlen(cases[i].json), w, wl,
                                               &f);
        ck_assert_msg(s == cases[i].want, "config %zu '%s': %s (%s)", i, cases[i].json,
                      tb_strerror(s), tb_ctx_error(&ctx));
        if (s == TB_OK) {
            ck_assert_uint_eq(f.n_modules, 1);
            ck_assert_str_eq(f.modules[0].name, "m.a");
            ck_assert_uint_eq(f.modules[0].config.rank, 2);
            ck_assert(tb_lora_file_find(&f, "m.a") == &f.modules[0]);
            tb_lora_file_close(&f);
        } else {
            ck_assert_msg(strstr(tb_ctx_error(&ctx), cases[i].msg) != NULL,
                          "config %zu: message '%s' does not say '%s'", i, tb_ctx_error(&ctx),
                          cases[i].msg);
            ck_assert(f.storage == NULL && f.n_modules == 0);
        }
    }
    /* alpha_pattern applied, and the locale-free number reader. */
    const char *js = "{\"peft_type\": \"LORA\", \"r\": 2, \"lora_alpha\": 8, "
                     "\"alpha_pattern\": {\"zz\": 1, \"a\": 0.1, \"m.a\": 3}}";
    tb_lora_file f;
    CHECK_OK(ctx, tb_lora_file_parse(&ctx, js, strlen(js), w, wl, &f));
    ck_assert(f.modules[0].config.alpha == 0.1f); /* the first key that matches wins */
    ck_assert(f.config.alpha == 8.0f);
    tb_lora_file_close(&f);
    free(w);
}
END_TEST

/* Save refusals, and what the configuration says. */
START_TEST(test_save_refusals_and_config_text)
{
    tb_ctx ctx;
    tbt_ctx_init(&ctx, 1);
    tb_rng rng;
    tb_rng_init(&rng, 3);
    tb_linear lin[2];
    tb_lora lora[2];
    for (int i = 0; i < 2; i++) {
        CHECK_OK(ctx, tb_linear_init(&ctx, &lin[i], 6, 4, 1, &rng));
        CHECK_OK(ctx, tb_lora_init(&ctx, &lora[i], &lin[i]));
    }
    tb_lora_config c = tb_lora_config_default(2);
    c.init = TB_LORA_INIT_GAUSSIAN;
    c.alpha = 0.1f;
    c.dropout = 0.05f;
    CHECK_OK(ctx, tb_lora_add(&ctx, &lora[0], "a", &c, &rng));
    CHECK_OK(ctx, tb_lora_add(&ctx, &lora[1], "a", &c, &rng));
    char *dir = make_tmpdir();
    char sub[900];
    snprintf(sub, sizeof sub, "%s/new", dir);
    tb_lora_module mods[2] = {{"x.q", &lora[0]}, {"x.k", &lora[1]}};
    ck_assert_int_eq(tb_lora_file_save(&ctx, sub, "b", mods, 2, NULL), TB_ERR_NOT_FOUND);
    tb_lora_module bad[2] = {{"x..q", &lora[0]}, {"x.k", &lora[1]}};
    ck_assert_int_eq(tb_lora_file_save(&ctx, sub, "a", bad, 2, NULL), TB_ERR_INVALID_ARG);
    bad[0].name = "x.k";
    ck_assert_int_eq(tb_lora_file_save(&ctx, sub, "a", bad, 2, NULL), TB_ERR_INVALID_ARG);
    bad[0].name = "x.q(1)";
    ck_assert_int_eq(tb_lora_file_save(&ctx, sub, "a", bad, 2, NULL), TB_ERR_INVALID_ARG);
    CHECK_OK(ctx, tb_lora_file_save(&ctx, sub, "a", mods, 2, NULL));
    char p[1000];
    size_t len;
    snprintf(p, sizeof p, "%s/adapter_config.json", sub);
    char *js = slurp(p, &len);
    ck_assert_msg(strstr(js, "\"lora_alpha\": 0.10000000149011612") &&
                      strstr(js, "\"lora_dropout\": 0.05000000074505806") &&
                      strstr(js, "\"init_lora_weights\": \"gaussian\"") &&
                      strstr(js, "\"target_modules\": [\n    \"q\",\n    \"k\"\n  ]") &&
                      strstr(js, "\"task_type\": null") && strstr(js, "\"fan_in_fan_out\": false"),
                  "%s", js);
    free(js);
    /* Read back: the float values exactly. */
    tb_lora_file f;
    CHECK_OK(ctx, tb_lora_file_open(&ctx, sub, &f));
    ck_assert(f.config.alpha == 0.1f && f.config.dropout == 0.05f);
    ck_assert_int_eq(f.config.init, TB_LORA_INIT_GAUSSIAN);
    ck_assert_uint_eq(f.n_modules, 2);
    tb_lora_file_close(&f);
    /* Holders that disagree on dropout cannot be one PEFT configuration. */
    c.dropout = 0.0f;
    CHECK_OK(ctx, tb_lora_add(&ctx, &lora[1], "d", &c, &rng));
    CHECK_OK(ctx, tb_lora_add(&ctx, &lora[0], "d", &c, &rng));
    lora[0].adapter[1].config.dropout = 0.5f; /* as a hand-edited layer would be */
    ck_assert_int_eq(tb_lora_file_save(&ctx, sub, "d", mods, 2, NULL), TB_ERR_INVALID_ARG);
    ck_assert_msg(strstr(tb_ctx_error(&ctx), "differ in dropout") != NULL, "%s",
                  tb_ctx_error(&ctx));
    /* Not a directory. */
    ck_assert_int_eq(tb_lora_file_save(&ctx, p, "a", mods, 2, NULL), TB_ERR_IO);
    ck_assert_int_eq(tb_lora_file_open(&ctx, dir, &f), TB_ERR_IO);
    for (int i = 0; i < 2; i++) {
        tb_lora_free(&lora[i]);
        tb_linear_free(&lin[i]);
    }
    rm_rf(dir);
    free(dir);
}
END_TEST

/* ---- fuzz seeds -------------------------------------------------------------------- */

static size_t replay_dir(const char *dir, int need_dir)
{
    DIR *d = opendir(dir);
    if (!d) {
        ck_assert_msg(!need_dir, "cannot open %s", dir);
        return 0;
    }
    size_t n = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.')
            continue;
        char p[1024];
        snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
        size_t len;
        char *bytes = slurp(p, &len);
        tb_status s;
        const int verdict = flf_run((const uint8_t *)bytes, len, &s);
        ck_assert_msg(verdict == FLF_FINE, "%s: fuzz property %d violated", p, verdict);
        if (need_dir)
            ck_assert_msg((s == TB_OK) == (strncmp(e->d_name, "ok-", 3) == 0),
                          "seed %s: %s, against what its name says", p, tb_strerror(s));
        free(bytes);
        n++;
    }
    closedir(d);
    return n;
}

START_TEST(test_fuzz_seeds_replay)
{
    const size_t seeds = replay_dir("test/fuzz/corpus_lora_file", 1);
    const size_t regressions = replay_dir("test/fuzz/regressions_lora_file", 0);
    ck_assert_uint_ge(seeds, 4);
    printf("  check   lora_file fuzz seeds replayed: %zu (outcomes as named), %zu regressions\n",
           seeds, regressions);
}
END_TEST

Suite *suite_lora_file(void)
{
    Suite *s = suite_create("lora_file");
    TCase *tc = tcase_create("peft");
    tcase_set_timeout(tc, 300);
    tcase_add_loop_test(tc, test_peft_adapter_gives_peft_logits, 0, (int)ARRAY_LEN(peft_cases));
    tcase_add_test(tc, test_peft_manifest);
    tcase_add_loop_test(tc, test_our_adapter_loads_in_peft, 0, (int)ARRAY_LEN(save_cases));
    tcase_add_loop_test(tc, test_broken_files_change_nothing, 0, (int)ARRAY_LEN(breakages));
    tcase_add_test(tc, test_config_validation);
    tcase_add_test(tc, test_save_refusals_and_config_text);
    tcase_add_test(tc, test_fuzz_seeds_replay);
    suite_add_tcase(s, tc);
    return s;
}
