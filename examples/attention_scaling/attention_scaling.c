/*
 * attention_scaling: how the cost of self-attention grows with the sequence
 * length T, and why a transformer layer has several heads -- both measured
 * by running libtblocks' attention core (include/tblocks/attention.h).
 *
 * Part 1 runs one causal attention forward (B = 1, H = 4 heads of D = 64)
 * at T = 64, 128, ..., --tmax three ways and prints time and memory:
 *
 *   full:      materialise the (H, T, T) probability matrix with
 *              tb_attention_probs(), then multiply it by V with plain loops.
 *              Time O(T^2), memory O(T^2) (the matrix a backward pass needs).
 *   streaming: tb_attention_forward(): an online softmax over the keys that
 *              never stores T x T; it keeps one log-sum-exp per head and
 *              query for backward. Time O(T^2), memory O(T).
 *   window:    tb_attention_forward() with a causal sliding window of 64
 *              keys: each query looks at the 64 latest keys only.
 *              Time O(T * 64), memory O(T).
 *
 * Memory is measured, not computed: every buffer of the run (q, k, v, the
 * output, the probabilities or the cache) and every allocation the library
 * makes (through the context's allocator hooks) is counted, and the peak is
 * reported per token.
 *
 * Part 2 builds a 16-token input whose query/key projections are designed by
 * hand so that each of four heads attends somewhere else (the previous
 * token, the first token, the tokens of the same parity, everything
 * equally), computes the probabilities with tb_attention_probs() and prints
 * one ASCII heat map per head. docs/attention_scaling.md explains the output.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ex_cli.h"
#include "tblocks.h"

#define HEADS 4
#define HEAD_DIM 64
#define EMBED (HEADS * HEAD_DIM) /* C */
#define WINDOW 64
#define T_MIN 64
#define MAX_REPS 200  /* timed runs per measurement at most ... */
#define MIN_TOTAL_S 0.2 /* ... until they add up to this (or one is slow) */
#define MAX_REPS 200    /* timed runs per measurement at most ... */
#define MIN_TOTAL_S 0.2 /* ... until they add up to this (or one is slow) */
#define MAX_ROWS 16 /* rows of the part 1 table (T_MIN * 2^15 is far beyond --tmax) */
#define PI 3.14159265358979323846

/* ---- memory accounting ---------------------------------------------------- */

/* Bytes currently allocated and the peak since the last reset. */
typedef struct counter {
    size_t cur, peak;
} counter;

/* Allocation that records its size in the 16 bytes in front of the block.
 * Used for the example's buffers and, as the context's allocator hooks, for
 * whatever the library allocates. */
static void *counted_alloc(void *user, size_t size, size_t alignment)
{
    counter *c = user;
    const size_t a = alignment < 16 ? 16 : alignment;
    unsigned char *base = aligned_alloc(a, (size + a + a - 1) / a * a);
    if (!base)
        return NULL;
    unsigned char *p = base + a;
    memcpy(p - 16, &size, sizeof size);
    memcpy(p - 8, &a, sizeof a);
    c->cur += size;
    if (c->cur > c->peak)
        c->peak = c->cur;
    return p;
}

static void counted_free(void *user, void *ptr)
{
    if (!ptr)
        return;
    counter *c = user;
    unsigned char *p = ptr;
    size_t size, a;
    memcpy(&size, p - 16, sizeof size);
    memcpy(&a, p - 8, sizeof a);
    c->cur -= size;
    free(p - a);
}

/* ---- part 1: three ways to compute the same attention --------------------- */

typedef enum method { M_FULL, M_STREAM, M_WINDOW, M_COUNT } method;

typedef struct run {
    tb_ctx *ctx;
    counter *mem;
    size_t t;
    float *qkv; /* (1, T, 3C): q | k | v, as a fused QKV projection writes it */
    tb_tensor x;
    tb_heads q, k, v;
} run;

/* out = P V with P (H, T, T) from tb_attention_probs (causal: P[i][j] = 0
 * for j > i, so those terms are skipped). */
static void probs_times_v(const tb_ctx *ctx, const float *p, const float *qkv, size_t t,
                          float *out)
{
    const long rows = (long)(HEADS * t);
#pragma omp parallel for num_threads(ctx->num_threads) schedule(dynamic, 16)
    for (long r = 0; r < rows; r++) {
        const size_t h = (size_t)r / t, i = (size_t)r % t;
        const float *pi = p + (size_t)r * t;
        float acc[HEAD_DIM] = {0};
        for (size_t j = 0; j <= i; j++) {
            const float *vj = qkv + j * 3 * EMBED + 2 * EMBED + h * HEAD_DIM;
            for (size_t d = 0; d < HEAD_DIM; d++)
                acc[d] += pi[j] * vj[d];
        }
        memcpy(out + i * EMBED + h * HEAD_DIM, acc, sizeof acc);
    }
}

/* One forward of `m`; buffers are allocated by the caller. */
static tb_status forward(run *r, method m, float *out, float *probs, void *cache,
                         size_t cache_bytes)
{
    tb_attention_config cfg = tb_attention_default_config(HEADS, HEAD_DIM);
    cfg.causal = 1;
    tb_tensor o = tb_tensor_3d(out, 1, r->t, EMBED);
    if (m == M_FULL) {
        tb_tensor p = tb_tensor_4d(probs, 1, HEADS, r->t, r->t);
        tb_status s = tb_attention_probs(r->ctx, &cfg, NULL, &r->q, &r->k, &p);
        if (s == TB_OK)
            probs_times_v(r->ctx, probs, r->qkv, r->t, out);
        return s;
    }
    if (m == M_WINDOW)
        cfg.window = WINDOW;
    return tb_attention_forward(r->ctx, &cfg, TB_MODE_TRAINING, NULL, &r->q, &r->k, &r->v, &o,
                                cache, cache_bytes);
}

typedef struct measure {
    double ms;         /* best time of the runs, milliseconds */
    double per_token;  /* peak bytes / T */
} measure;

/*
 * Allocate what method m keeps for backward (output plus probabilities or
 * cache), run it (best of several runs), and measure the
 * peak memory of the whole run including q, k and v. The output is left in
 * `keep` (T * C floats).
 */
static tb_status measure_method(run *r, method m, float *keep, measure *res)
{
    counter *mem = r->mem;
    mem->peak = mem->cur; /* q, k, v are already allocated */
    const size_t out_bytes = r->t * EMBED * sizeof(float);
    size_t extra = 0;
    if (m == M_FULL) {
        extra = HEADS * r->t * r->t * sizeof(float);
    } else {
        tb_attention_config cfg = tb_attention_default_config(HEADS, HEAD_DIM);
        tb_status s = tb_attention_cache_size(&cfg, 1, r->t, &extra);
        if (s != TB_OK)
            return s;
    }
    float *out = counted_alloc(mem, out_bytes, 64);
    void *buf = counted_alloc(mem, extra, 64);
    tb_status s = out && buf ? TB_OK : TB_ERR_NO_MEMORY;
    /* Best of several runs: the minimum is the least disturbed by other
     * programs; runs longer than half a second are not repeated. */
    double best = 1e30, total = 0.0;
    for (int rep = 0; s == TB_OK && rep < MAX_REPS && (rep < 3 || total < MIN_TOTAL_S); rep++) {
        const double t0 = ex_seconds();
        s = forward(r, m, out, m == M_FULL ? buf : NULL, m == M_FULL ? NULL : buf,
                    m == M_FULL ? 0 : extra);
        const double dt = ex_seconds() - t0;
        total += dt;
        if (dt < best)
            best = dt;
        if (dt > 0.5)
            break;
    }
    if (s == TB_OK) {
        memcpy(keep, out, out_bytes);
        res->ms = best * 1e3;
        res->per_token = (double)mem->peak / (double)r->t;
    }
    counted_free(mem, out);
    counted_free(mem, buf);
    return s;
}

static double max_abs_diff(const float *a, const float *b, size_t n)
{
    double m = 0.0;
    for (size_t i = 0; i < n; i++) {
        const double d = fabs((double)a[i] - (double)b[i]);
        if (d > m)
            m = d;
    }
    return m;
}

static void print_growth(double now, double before)
{
    if (before > 0) {
        char g[16];
        snprintf(g, sizeof g, "x%.1f", now / before);
        printf(" %5s", g);
    } else {
        printf(" %5s", "-");
    }
}

static tb_status part1(tb_ctx *ctx, counter *mem, size_t tmax)
{
    static const char *const names[M_COUNT] = {"full", "streaming", "window"};
    printf("\n1. One causal attention forward, B=1, H=%d heads of D=%d, T positions\n", HEADS,
           HEAD_DIM);
    printf("   full:      tb_attention_probs() builds the (H, T, T) probabilities, then P V\n"
           "   streaming: tb_attention_forward(), online softmax, keeps H*T log-sum-exps\n"
           "   window:    tb_attention_forward() with a causal sliding window of %d keys\n",
           WINDOW);
    printf("   ms: best of several runs, (xN): growth since the previous T; bytes/tok: peak of\n"
           "   every byte allocated by the run (q, k, v, output, probabilities or cache,\n"
           "   library scratch) divided by T\n\n");
    printf("   %5s |%-28s|%-28s|%s\n", "", " full (materialised P)", " streaming",
           " window of 64");
    printf("   %5s | %9s %5s %10s | %9s %5s %10s | %9s %5s %10s\n", "T", "ms", "(xN)",
           "bytes/tok", "ms", "(xN)", "bytes/tok", "ms", "(xN)", "bytes/tok");

    measure rows[MAX_ROWS][M_COUNT];
    size_t ts[MAX_ROWS], nrows = 0;
    double agree = 0.0;
    tb_rng rng;
    tb_rng_init(&rng, 1);
    tb_status s = TB_OK;
    for (size_t t = T_MIN; t <= tmax && nrows < MAX_ROWS && s == TB_OK; t *= 2) {
        run r;
        memset(&r, 0, sizeof r);
        r.ctx = ctx;
        r.mem = mem;
        r.t = t;
        r.qkv = counted_alloc(mem, t * 3 * EMBED * sizeof(float), 64);
        float *outs = malloc(M_COUNT * t * EMBED * sizeof(float)); /* kept results: not counted */
        if (!r.qkv || !outs) {
            counted_free(mem, r.qkv);
            free(outs);
            return TB_ERR_NO_MEMORY;
        }
        r.x = tb_tensor_3d(r.qkv, 1, t, 3 * EMBED);
        r.q = (tb_heads){&r.x, 0};
        r.k = (tb_heads){&r.x, EMBED};
        r.v = (tb_heads){&r.x, 2 * EMBED};
        s = tb_rng_fill_normal(ctx, &rng, r.qkv, t * 3 * EMBED, 0.0f, 1.0f);
        for (int m = 0; m < M_COUNT && s == TB_OK; m++)
            s = measure_method(&r, (method)m, outs + (size_t)m * t * EMBED, &rows[nrows][m]);
        if (s == TB_OK) {
            const double d = max_abs_diff(outs, outs + t * EMBED, t * EMBED);
            if (d > agree)
                agree = d;
            printf("   %5zu |", t);
            for (int m = 0; m < M_COUNT; m++) {
                printf(" %9.2f", rows[nrows][m].ms);
                print_growth(rows[nrows][m].ms, nrows ? rows[nrows - 1][m].ms : 0.0);
                printf(" %10.0f%s", rows[nrows][m].per_token, m + 1 < M_COUNT ? " |" : "\n");
            }
            fflush(stdout);
            ts[nrows++] = t;
        }
        counted_free(mem, r.qkv);
        free(outs);
    }
    if (s != TB_OK)
        return s;
    printf("\n   full and streaming outputs agree to max |diff| %.2g at every T; the window\n"
           "   output differs once T > %d (each query then sees only its %d latest keys)\n",
           agree, WINDOW, WINDOW);
    if (nrows >= 2) {
        const size_t a = nrows - 2, b = nrows - 1;
        printf("   from T=%zu to T=%zu (x%.0f):\n", ts[a], ts[b], (double)ts[b] / (double)ts[a]);
        for (int m = 0; m < M_COUNT; m++) {
            const double tm = rows[b][m].ms / rows[a][m].ms;
            const double mb = rows[b][m].per_token * (double)ts[b] /
                              (rows[a][m].per_token * (double)ts[a]);
            printf("     %-9s time x%.1f, memory x%.2f, bytes per token x%.2f\n", names[m], tm,
                   mb, rows[b][m].per_token / rows[a][m].per_token);
        }
    }
    return TB_OK;
}

/* ---- part 2: heads that look at different positions ------------------------ */

#define P2_T 16
#define P2_HEADS 4
#define P2_D 2
#define P2_FEAT 4         /* positional features per token */
#define SHARP 400.0       /* sharpness of the designed projections */

static const char *const head_role[P2_HEADS] = {
    "previous token", "first token", "same parity", "all equally"};

/*
 * Token i carries the positional features
 *   f_i = (cos(a i), sin(a i), cos(pi i), 1),   a = pi / T
 * (a two-frequency sinusoidal position code plus a constant). Each head h
 * projects them with its own W_q^h, W_k^h (D x 4, D = 2):
 *   head 0: q_i = S R(-a) (f0, f1) = S (cos a(i-1), sin a(i-1)), k_j = (f0, f1)
 *           q_i . k_j = S cos(a (i - 1 - j)): largest at j = i - 1.
 *   head 1: q_i = (S, 0), k_j = (f0, f1)
 *           q_i . k_j = S cos(a j): largest at j = 0.
 *   head 2: q_i = (S cos(pi i), 0), k_j = (cos(pi j), 0)
 *           q_i . k_j = S (-1)^(i+j): the same parity scores S, the other -S.
 *   head 3: q_i = 0: every score is 0, so the head averages its keys.
 * With the causal mask query i sees keys 0..i only.
 */
static void designed_projections(float wq[P2_HEADS][P2_D][P2_FEAT],
                                 float wk[P2_HEADS][P2_D][P2_FEAT])
{
    const double a = PI / P2_T, s = SHARP;
    memset(wq, 0, sizeof(float) * P2_HEADS * P2_D * P2_FEAT);
    memset(wk, 0, sizeof(float) * P2_HEADS * P2_D * P2_FEAT);
    /* head 0: rotate the (cos, sin) pair back by one position */
    wq[0][0][0] = (float)(s * cos(a));
    wq[0][0][1] = (float)(s * sin(a));
    wq[0][1][0] = (float)(-s * sin(a));
    wq[0][1][1] = (float)(s * cos(a));
    wk[0][0][0] = wk[0][1][1] = 1.0f;
    /* head 1: a constant query against the (cos, sin) pair */
    wq[1][0][3] = (float)s;
    wk[1][0][0] = wk[1][1][1] = 1.0f;
    /* head 2: parity against parity */
    wq[2][0][2] = (float)s;
    wk[2][0][2] = 1.0f;
    /* head 3: all zero */
}

/* " .:-=+*#%@" by probability: ' ' below 0.01, then nine equal steps. */
static char shade(float p)
{
    static const char ramp[] = " .:-=+*#%@";
    if (!(p >= 0.01f))
        return ' ';
    int level = 1 + (int)(p * 9.0f);
    return ramp[level > 9 ? 9 : level];
}

static tb_status part2(tb_ctx *ctx)
{
    float feat[P2_T][P2_FEAT];
    for (size_t i = 0; i < P2_T; i++) {
        feat[i][0] = (float)cos(PI / P2_T * (double)i);
        feat[i][1] = (float)sin(PI / P2_T * (double)i);
        feat[i][2] = (float)cos(PI * (double)i);
        feat[i][3] = 1.0f;
    }
    float wq[P2_HEADS][P2_D][P2_FEAT], wk[P2_HEADS][P2_D][P2_FEAT];
    designed_projections(wq, wk);
    /* q, k: (1, T, H*D), head h in columns [h*D, h*D + D): q_i = W_q^h f_i */
    static float q[P2_T * P2_HEADS * P2_D], k[P2_T * P2_HEADS * P2_D];
    static float probs[P2_HEADS * P2_T * P2_T];
    for (size_t i = 0; i < P2_T; i++)
        for (size_t h = 0; h < P2_HEADS; h++)
            for (size_t d = 0; d < P2_D; d++) {
                float sq = 0.0f, sk = 0.0f;
                for (size_t f = 0; f < P2_FEAT; f++) {
                    sq += wq[h][d][f] * feat[i][f];
                    sk += wk[h][d][f] * feat[i][f];
                }
                q[(i * P2_HEADS + h) * P2_D + d] = sq;
                k[(i * P2_HEADS + h) * P2_D + d] = sk;
            }
    tb_tensor qt = tb_tensor_3d(q, 1, P2_T, P2_HEADS * P2_D);
    tb_tensor kt = tb_tensor_3d(k, 1, P2_T, P2_HEADS * P2_D);
    tb_tensor pt = tb_tensor_4d(probs, 1, P2_HEADS, P2_T, P2_T);
    tb_heads qh = {&qt, 0}, kh = {&kt, 0};
    tb_attention_config cfg = tb_attention_default_config(P2_HEADS, P2_D);
    cfg.causal = 1;
    tb_status s = tb_attention_probs(ctx, &cfg, NULL, &qh, &kh, &pt);
    if (s != TB_OK)
        return s;

    printf("\n2. Four heads, one input: attention heat maps\n");
    printf("   %d tokens; token i carries the position code (cos(pi i/%d), sin(pi i/%d), "
           "cos(pi i), 1).\n",
           P2_T, P2_T, P2_T);
    printf("   Every head reads the same code; only its query/key projections (%dx%d each,\n"
           "   set by hand) differ. Causal: query i sees keys 0..i.\n",
           P2_D, P2_FEAT);
    printf("   heat map rows: query i (top to bottom), columns: key j (left to right);\n"
           "   shade by probability: ' ' < 0.01, then . : - = + * # %% @ in steps of 1/9\n\n");
    printf("   %3s ", "");
    for (size_t h = 0; h < P2_HEADS; h++)
        printf(" head %zu %-*s", h, P2_T - 6, "");
    printf("\n   %3s ", "");
    for (size_t h = 0; h < P2_HEADS; h++)
        printf(" %-*.*s", P2_T + 1, P2_T, head_role[h]);
    printf("\n");
    for (size_t i = 0; i < P2_T; i++) {
        printf("   %3zu ", i);
        for (size_t h = 0; h < P2_HEADS; h++) {
            printf(" |");
            for (size_t j = 0; j < P2_T; j++)
                putchar(shade(probs[(h * P2_T + i) * P2_T + j]));
        }
        printf("|\n");
    }

    /* What each head does, read back from the probabilities. */
    printf("\n   per head, over the queries i = 1..%d (query 0 sees only key 0):\n", P2_T - 1);
    for (size_t h = 0; h < P2_HEADS; h++) {
        size_t hits = 0;
        double mass = 0.0, spread = 0.0;
        for (size_t i = 1; i < P2_T; i++) {
            const float *p = probs + (h * P2_T + i) * P2_T;
            size_t arg = 0;
            for (size_t j = 1; j <= i; j++)
                if (p[j] > p[arg])
                    arg = j;
            double target = 0.0; /* probability on the positions the head is designed for */
            double pmax = 0.0, pmin = 1.0;
            for (size_t j = 0; j <= i; j++) {
                const int want = h == 0   ? j + 1 == i
                                 : h == 1 ? j == 0
                                 : h == 2 ? (i + j) % 2 == 0
                                          : 1;
                if (want)
                    target += p[j];
                if (p[j] > pmax)
                    pmax = p[j];
                if (p[j] < pmin)
                    pmin = p[j];
            }
            mass += target;
            hits += h == 0 ? arg + 1 == i : h == 1 ? arg == 0 : 1;
            if (pmax - pmin > spread)
                spread = pmax - pmin;
        }
        const double n = P2_T - 1;
        if (h <= 1)
            printf("   head %zu (%s): largest weight on the %s in %zu of %d rows,\n"
                   "          mean weight there %.3f\n",
                   h, head_role[h], h == 0 ? "previous token" : "first token", hits, P2_T - 1,
                   mass / n);
        else if (h == 2)
            printf("   head %zu (%s): mean total weight on same-parity keys %.3f\n", h,
                   head_role[h], mass / n);
        else
            printf("   head %zu (%s): largest max - min weight within a row %.2g\n", h,
                   head_role[h], spread);
    }
    printf("   One head computes one weighted average per query; to gather from the previous\n"
           "   token, the first token and the same-parity tokens at once, a layer needs\n"
           "   several heads, each with its own projections.\n");
    return TB_OK;
}

/* ---- main ------------------------------------------------------------------- */

int main(int argc, char **argv)
{
    counter mem = {0, 0};
    tb_ctx ctx;
    int rc = ex_ctx_init(&ctx);
    if (rc >= 0)
        return rc;
    ctx.allocator.alloc = counted_alloc;
    ctx.allocator.free = counted_free;
    ctx.allocator.user = &mem;
    uint64_t tmax = 2048, threads = 0;
    const ex_opt opts[] = {
        {"tmax", "T", "longest sequence of part 1 (T = 64, 128, ... up to it)", T_MIN, 4096,
         &tmax},
        EX_OPT_THREADS(threads),
    };
    rc = ex_parse_args(argc, argv,
                           "How attention's time and memory grow with the sequence length\n"
                           "(materialised probabilities vs the streaming core vs a sliding\n"
                           "window), and heat maps of heads that attend to different positions.\n"
                           "It prints its measurements and writes no files.",
                           opts, sizeof opts / sizeof opts[0]);
    if (rc >= 0)
        return rc;
    ex_apply_threads(&ctx, threads);
    printf("attention_scaling: libtblocks %s, threads %d, kernels %s\n", tb_version_string(),
           ctx.num_threads, ex_kernel_name(&ctx));
    const double t0 = ex_seconds();
    if (ex_failed(&ctx, part1(&ctx, &mem, (size_t)tmax), "part 1 (scaling)") ||
        ex_failed(&ctx, part2(&ctx), "part 2 (heat maps)"))
        return EX_EXIT_FAILURE;
    printf("done: %.2f s\n", ex_seconds() - t0);
    return EX_EXIT_OK;
}
