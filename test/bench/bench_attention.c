/*
 * Attention-core benchmark: tb_attention_forward and tb_attention_backward
 * at GPT-2-small's attention shape (B = 1, C = 768, H = 12 heads of D = 64,
 * causal) for T = 128 .. 8192, reading q, k and v in place from the packed
 * (B, T, 3C) output of a fused QKV projection and writing the gradients into
 * a packed (B, T, 3C) buffer, as a GPT block does. Timed by the shared
 * harness (harness.h); GFLOP/s are reported against the fp32 FMA peak
 * measured in the same run.
 *
 * Flops counted (what a dense attention must do, not what this code does):
 *   causal forward  4 * T*T * D * H / 2  (Q K^T and P V, 2*T*T*D each per
 *                                         head, half of the (i, j) pairs);
 *   backward        2.5 x the forward    (the usual convention: recompute
 *                                         Q K^T, then dV, dP, dQ, dK);
 *   fwd+bwd         3.5 x the forward.
 *
 * Memory counted (peak activation bytes of one call, exact): what the caller
 * must hold -- the packed qkv (B, T, 3C), out (B, T, C) and the core's cache
 * (tb_attention_cache_size) for a training forward; plus dout (B, T, C) and
 * the packed dqkv (B, T, 3C) for backward -- plus the peak of what the
 * library allocates during the call, measured through the context's
 * allocator hooks (backward's per-row scratch). "bytes/token" divides by B*T.
 * Weights and the input x of the QKV projection are not counted.
 *
 * Baseline ("materialise", T <= 2048): the same attention computed as a
 * plain implementation does it, by first building the whole (H, T, T)
 * probability matrix with tb_attention_probs() and then multiplying it by V
 * with plain loops (OpenMP over rows; the known-zero upper triangle is
 * skipped, so it does the same flops). Its memory: qkv, probs and out.
 * Its P V loop is compiled here (-O3 -march=native, as every benchmark);
 * tb_attention_probs() and the core are compiled with the library's flags.
 *
 * At T = 1024, the reference's T, forward and backward are also timed on
 * one thread (rows *_1thread, % of the one-thread peak).
 *
 * The fwd+bwd row is the sum of the fwd and bwd medians (backward is timed
 * on its own, from a cache filled by one forward). The run keeps to a time
 * budget (it matters for the materialising baseline and on slow machines):
 * a case predicted (from the previous T, scaled by (T/T_prev)^2 and a
 * margin) to take more than ~1 s per call runs 3 (or, above ~4 s, 1) timed
 * calls without warm-up instead of the harness's adaptive count; a case
 * that would overrun the budget is skipped. Every skipped case is listed at
 * the end.
 *
 * Environment (besides the harness's): BENCH_ATTN_BUDGET (s, default 175),
 * BENCH_ATTN_BWD_TMAX (largest T for backward, default 8192). BENCH_QUICK=1 runs T <= 1024;
 * BENCH_FILTER selects cases by name (e.g. attn_fwd, materialise, T1024).
 * One TSV line per case ("tsv\tattn\t...").
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"
#include "tblocks.h"

#define BATCH 1
#define EMBED 768
#define HEADS 12
#define HEAD_DIM 64
#define MAT_TMAX 2048   /* the materialising baseline runs up to here */
#define FEW_REPS_S 1.0  /* predicted seconds per call above which reps are few */
#define ONE_REP_S 4.0   /* ... and above which one call is timed */
#define GROWTH_MARGIN 1.25 /* prediction = last * (T/T_last)^2 * margin */

/* The reference figure, measured on another run (not re-run here). */
#define REF_T 1024
#define REF_FWD_S 0.23
#define REF_BWD_S 2.3

static void check(tb_ctx *ctx, tb_status s, const char *what)
{
    if (s != TB_OK) {
        fprintf(stderr, "bench_attention: %s: %s (%s)\n", what, tb_strerror(s),
                tb_ctx_error(ctx));
        exit(1);
    }
}

/* ---- allocator hooks that count the library's own allocations ----------- */

typedef struct mem_count {
    size_t cur, peak;
} mem_count;

/* The block's size and alignment are kept in the 16 bytes before it. */
static void *count_alloc(void *user, size_t size, size_t alignment)
{
    mem_count *mc = user;
    const size_t a = alignment < 16 ? 16 : alignment;
    const size_t total = (size + a + a - 1) / a * a;
    unsigned char *base = aligned_alloc(a, total);
    if (!base)
        return NULL;
    unsigned char *p = base + a;
    memcpy(p - 16, &size, sizeof size);
    memcpy(p - 8, &a, sizeof a);
    mc->cur += size;
    if (mc->cur > mc->peak)
        mc->peak = mc->cur;
    return p;
}

static void count_free(void *user, void *ptr)
{
    mem_count *mc = user;
    unsigned char *p = ptr;
    size_t size, a;
    memcpy(&size, p - 16, sizeof size);
    memcpy(&a, p - 8, sizeof a);
    mc->cur -= size;
    free(p - a);
}

/* ---- the timed calls ------------------------------------------------------ */

typedef struct attn_run {
    tb_ctx *ctx;
    tb_attention_config cfg;
    size_t t;
    float *qkv;
    tb_heads q, k, v, dq, dk, dv;
    tb_tensor *out, *dout;
    void *cache;
    size_t cache_bytes;
    tb_tensor *probs; /* baseline: (B, H, T, T) */
    float *mat_out;   /* baseline output (B, T, C) */
} attn_run;

static void run_fwd(void *arg)
{
    attn_run *r = arg;
    check(r->ctx,
          tb_attention_forward(r->ctx, &r->cfg, TB_MODE_TRAINING, NULL, &r->q, &r->k, &r->v, r->out,
                               r->cache, r->cache_bytes),
          "forward");
}

static void run_bwd(void *arg)
{
    attn_run *r = arg;
    check(r->ctx,
          tb_attention_backward(r->ctx, &r->cfg, NULL, &r->q, &r->k, &r->v, r->out, r->dout,
                                r->cache, r->cache_bytes, &r->dq, &r->dk, &r->dv),
          "backward");
}

/* The materialising baseline: probabilities first, then P V. */
static void run_materialise(void *arg)
{
    attn_run *r = arg;
    check(r->ctx, tb_attention_probs(r->ctx, &r->cfg, NULL, &r->q, &r->k, r->probs), "probs");
    const size_t t = r->t, w = 3 * EMBED;
    const float *pd = r->probs->data, *vd = r->qkv + 2 * EMBED;
    float *od = r->mat_out;
    const long rows = (long)(BATCH * HEADS * t);
#pragma omp parallel for num_threads(r->ctx->num_threads) schedule(dynamic, 16)
    for (long rr = 0; rr < rows; rr++) {
        const size_t i = (size_t)rr % t, h = ((size_t)rr / t) % HEADS, b = (size_t)rr / (t * HEADS);
        const float *p = pd + (size_t)rr * t;
        float acc[HEAD_DIM] = {0};
        for (size_t j = 0; j <= i; j++) { /* p[j] = 0 for j > i (causal) */
            const float pj = p[j], *vj = vd + (b * t + j) * w + h * HEAD_DIM;
            for (size_t d = 0; d < HEAD_DIM; d++)
                acc[d] += pj * vj[d];
        }
        memcpy(od + (b * t + i) * EMBED + h * HEAD_DIM, acc, sizeof acc);
    }
}

/* ---- timing within the budget -------------------------------------------- */

/* `reps` calls without warm-up, as median and range. */
static bench_stats time_few(void (*fn)(void *), void *arg, int reps)
{
    double t[3];
    for (int n = 0; n < reps; n++) {
        const double t0 = bench_now();
        fn(arg);
        t[n] = bench_now() - t0;
    }
    for (int a = 0; a < reps; a++) /* sort (at most 3) */
        for (int b = a + 1; b < reps; b++)
            if (t[b] < t[a]) {
                const double x = t[a];
                t[a] = t[b];
                t[b] = x;
            }
    bench_stats s;
    s.reps = reps;
    s.min = t[0];
    s.max = t[reps - 1];
    s.median = t[reps / 2];
    return s;
}

/* One kind of case (fwd, bwd, materialise): its last measurement. */
typedef struct series {
    size_t last_t;
    double last_s; /* median seconds at last_t; 0: none yet */
} series;

static double predict(const series *s, size_t t)
{
    if (s->last_s <= 0)
        return 0;
    const double f = (double)t / (double)s->last_t;
    return s->last_s * f * f * GROWTH_MARGIN;
}

typedef struct skip_list {
    char text[16][256];
    int n;
} skip_list;

static void skip(skip_list *sl, const char *name, const char *why)
{
    printf("  %-26s skipped: %s\n", name, why);
    bench_tsv("attn_skipped\t%s\t%s", name, why);
    if (sl->n < 16)
        snprintf(sl->text[sl->n++], sizeof sl->text[0], "%s: %s", name, why);
    fflush(stdout);
}

/*
 * Time one case unless the budget forbids it. Returns 1 and fills *st when
 * it ran. The number of calls depends on the predicted time (header).
 */
static int time_case(const char *name, void (*fn)(void *), void *arg, series *se, size_t t,
                     double t_start, double budget, skip_list *sl, bench_stats *st)
{
    const double pred = predict(se, t);
    const int reps = pred > ONE_REP_S ? 1 : pred > FEW_REPS_S ? 3 : 0; /* 0: harness */
    const double elapsed = bench_now() - t_start;
    const double cost = pred * (reps ? reps : 4);
    if (elapsed + cost > budget) {
        char why[128];
        snprintf(why, sizeof why, "predicted %.0f s would pass the %.0f s budget (%.0f s used)",
                 cost, budget, elapsed);
        skip(sl, name, why);
        return 0;
    }
    *st = reps ? time_few(fn, arg, reps) : bench_time(fn, arg);
    se->last_t = t;
    se->last_s = st->median;
    return 1;
}

/* ---- output --------------------------------------------------------------- */

static void print_row(const bench_machine *m, int threads, const char *name, size_t t,
                      const bench_stats *st, int derived, double flops, double bytes)
{
    const double peak = threads == 1 ? m->peak1 : m->peak;
    const double gflops = flops / st->median * 1e-9;
    const double per_token = bytes / (double)(BATCH * t);
    char range[48], reps[8];
    snprintf(range, sizeof range, "(%.2f..%.2f)", st->min * 1e3, st->max * 1e3);
    if (derived)
        snprintf(reps, sizeof reps, "sum");
    else
        snprintf(reps, sizeof reps, "%d", st->reps);
    printf("  %-26s %11.2f %23s %4s %8.2f %7.2f%% %9.1f %11.0f\n", name, st->median * 1e3,
           range, reps, gflops, bench_pct(gflops, peak), bytes / (1024.0 * 1024.0),
           per_token);
    bench_tsv("attn\t%s\t%zu\t%d\t%s\t%.4f\t%.4f\t%.4f\t%.0f\t%.3f\t%.5f\t%.0f\t%.1f", name, t,
              threads, reps, st->median * 1e3, st->min * 1e3, st->max * 1e3, flops, gflops,
              bench_pct(gflops, peak) / 100, bytes, per_token);
    fflush(stdout);
}

int main(void)
{
    static const size_t all_t[] = {128, 512, 1024, 2048, 4096, 8192};
    const size_t nt = bench_quick() ? 3 : sizeof all_t / sizeof all_t[0];
    const double budget = bench_env_double("BENCH_ATTN_BUDGET", 175);
    const size_t bwd_tmax = (size_t)bench_env_double("BENCH_ATTN_BWD_TMAX", 8192);
    char name[64];
    int any = 0;
    for (size_t i = 0; i < nt; i++) {
        static const char *const kinds[] = {"attn_fwd", "attn_bwd", "attn_fwdbwd",
                                            "materialise_fwd"};
        for (int k = 0; k < 4; k++) {
            snprintf(name, sizeof name, "%s_T%zu", kinds[k], all_t[i]);
            any |= bench_selected(name);
        }
        snprintf(name, sizeof name, "attn_fwdbwd_T%zu_1thread", all_t[i]);
        any |= all_t[i] == REF_T && bench_selected(name);
    }
    if (!any) {
        printf("attention: no case matches BENCH_FILTER\n");
        return 0;
    }
    const double t_start = bench_now();
    mem_count mc = {0, 0};
    tb_ctx ctx;
    bench_ctx_init(&ctx);
    ctx.allocator.alloc = count_alloc;
    ctx.allocator.free = count_free;
    ctx.allocator.user = &mc;
    bench_machine m;
    bench_machine_measure(&m, &ctx);
    printf("attention: B=%d C=%d H=%d D=%d, causal, q/k/v read in place from a packed "
           "(B, T, 3C) buffer, dq/dk/dv written into one\n",
           BATCH, EMBED, HEADS, HEAD_DIM);
    printf("attention: flops counted: causal forward 4*T*T*D*H/2 (QK^T and PV over half the "
           "pairs), backward 2.5x that, fwd+bwd 3.5x; %% of the %.1f GFLOP/s FMA peak\n",
           m.peak);
    printf("attention: memory = peak activation bytes of the call: caller's qkv, out, cache "
           "(fwd); + dout, dqkv, library scratch (bwd);\n"
           "           materialise: qkv, the (H, T, T) probabilities, out. bytes/token = "
           "memory / (B*T)\n");
    printf("attention: fwd+bwd = sum of the fwd and bwd medians; budget %.0f s; backward up "
           "to T=%zu; materialising baseline up to T=%d\n",
           budget, bwd_tmax, MAT_TMAX);
    bench_tsv("#attn\tcase\tT\tthreads\treps\tmedian_ms\tmin_ms\tmax_ms\tflops\tgflops\t"
              "frac_of_peak\tpeak_bytes\tbytes_per_token");
    bench_tsv("#attn_skipped\tcase\treason");
    printf("  %-26s %11s %23s %4s %8s %8s %9s %11s\n", "case", "median ms", "(min..max)",
           "reps", "GFLOP/s", "% peak", "mem MiB", "bytes/token");
    fflush(stdout);

    tb_rng rng;
    tb_rng_init(&rng, 1);
    series s_fwd = {0, 0}, s_bwd = {0, 0}, s_mat = {0, 0};
    skip_list sl;
    memset(&sl, 0, sizeof sl);
    series s_fwd1 = {0, 0}, s_bwd1 = {0, 0}; /* one thread, at REF_T */
    double ref_fwd = 0, ref_bwd = 0, ref_fwd1 = 0, ref_bwd1 = 0, max_diff = 0;
    int compared = 0;
    for (size_t ti = 0; ti < nt; ti++) {
        const size_t t = all_t[ti], n = (size_t)BATCH * t;
        const double fwd_flops = 4.0 * (double)t * (double)t * HEAD_DIM * HEADS / 2;
        const size_t qkv_bytes = n * 3 * EMBED * sizeof(float), act = n * EMBED * sizeof(float);
        float *qkv = bench_alloc(qkv_bytes), *dqkv = bench_alloc(qkv_bytes);
        float *out = bench_alloc(act), *dout = bench_alloc(act);
        check(&ctx, tb_rng_fill_normal(&ctx, &rng, qkv, n * 3 * EMBED, 0.0f, 1.0f), "fill qkv");
        check(&ctx, tb_rng_fill_uniform(&ctx, &rng, dout, n * EMBED, -1.0f, 1.0f), "fill dout");
        memset(out, 0, act);
        memset(dqkv, 0, qkv_bytes);
        tb_tensor xt = tb_tensor_3d(qkv, BATCH, t, 3 * EMBED);
        tb_tensor gt = tb_tensor_3d(dqkv, BATCH, t, 3 * EMBED);
        tb_tensor ot = tb_tensor_3d(out, BATCH, t, EMBED);
        tb_tensor dot = tb_tensor_3d(dout, BATCH, t, EMBED);
        attn_run r;
        memset(&r, 0, sizeof r);
        r.ctx = &ctx;
        r.cfg = tb_attention_default_config(HEADS, HEAD_DIM);
        r.cfg.causal = 1;
        r.t = t;
        r.qkv = qkv;
        r.q = (tb_heads){&xt, 0};
        r.k = (tb_heads){&xt, EMBED};
        r.v = (tb_heads){&xt, 2 * EMBED};
        r.dq = (tb_heads){&gt, 0};
        r.dk = (tb_heads){&gt, EMBED};
        r.dv = (tb_heads){&gt, 2 * EMBED};
        r.out = &ot;
        r.dout = &dot;
        check(&ctx, tb_attention_cache_size(&r.cfg, BATCH, t, &r.cache_bytes), "cache size");
        r.cache = bench_alloc(r.cache_bytes);

        /* forward */
        bench_stats sf = {0, 0, 0, 0}, sb = {0, 0, 0, 0};
        int have_f = 0, have_b = 0;
        const double fwd_base = (double)(qkv_bytes + act + r.cache_bytes);
        snprintf(name, sizeof name, "attn_fwd_T%zu", t);
        if (bench_selected(name)) {
            mc.peak = mc.cur;
            have_f = time_case(name, run_fwd, &r, &s_fwd, t, t_start, budget, &sl, &sf);
            if (have_f)
                print_row(&m, m.threads, name, t, &sf, 0, fwd_flops, fwd_base + (double)mc.peak);
        }
        if (!have_f)
            run_fwd(&r); /* the output and the cache backward and the check need */

        /* backward (from the cache of the last forward) */
        snprintf(name, sizeof name, "attn_bwd_T%zu", t);
        const double bwd_base = fwd_base + (double)(act + qkv_bytes);
        if (bench_selected(name)) {
            if (t > bwd_tmax) {
                char why[128];
                snprintf(why, sizeof why,
                         "backward runs up to T=%zu (predicted %.0f s per call)", bwd_tmax,
                         predict(&s_bwd, t) / GROWTH_MARGIN);
                skip(&sl, name, why);
            } else {
                mc.peak = mc.cur;
                have_b = time_case(name, run_bwd, &r, &s_bwd, t, t_start, budget, &sl, &sb);
                if (have_b)
                    print_row(&m, m.threads, name, t, &sb, 0, 2.5 * fwd_flops,
                              bwd_base + (double)mc.peak);
            }
        }
        const double bwd_scratch = (double)mc.peak;
        snprintf(name, sizeof name, "attn_fwdbwd_T%zu", t);
        if (have_f && have_b && bench_selected(name)) {
            bench_stats fb;
            fb.median = sf.median + sb.median;
            fb.min = sf.min + sb.min;
            fb.max = sf.max + sb.max;
            fb.reps = 0;
            print_row(&m, m.threads, name, t, &fb, 1, 3.5 * fwd_flops, bwd_base + bwd_scratch);
            if (t == REF_T) {
                ref_fwd = sf.median;
                ref_bwd = sb.median;
            }
        }
        /* At the reference's T, also on one thread (the reference's figure
         * may be serial): fwd, bwd and their sum. */
        snprintf(name, sizeof name, "attn_fwdbwd_T%zu_1thread", t);
        if (t == REF_T && m.threads > 1 && bench_selected(name)) {
            const int saved = ctx.num_threads;
            ctx.num_threads = 1;
            bench_stats f1, b1, fb1;
            char n1[64];
            snprintf(n1, sizeof n1, "attn_fwd_T%zu_1thread", t);
            if (time_case(n1, run_fwd, &r, &s_fwd1, t, t_start, budget, &sl, &f1)) {
                print_row(&m, 1, n1, t, &f1, 0, fwd_flops, fwd_base);
                snprintf(n1, sizeof n1, "attn_bwd_T%zu_1thread", t);
                if (time_case(n1, run_bwd, &r, &s_bwd1, t, t_start, budget, &sl, &b1)) {
                    print_row(&m, 1, n1, t, &b1, 0, 2.5 * fwd_flops, bwd_base + bwd_scratch);
                    fb1.median = f1.median + b1.median;
                    fb1.min = f1.min + b1.min;
                    fb1.max = f1.max + b1.max;
                    fb1.reps = 0;
                    print_row(&m, 1, name, t, &fb1, 1, 3.5 * fwd_flops, bwd_base + bwd_scratch);
                    ref_fwd1 = f1.median;
                    ref_bwd1 = b1.median;
                }
            }
            ctx.num_threads = saved;
        }

        /* materialising baseline */
        snprintf(name, sizeof name, "materialise_fwd_T%zu", t);
        if (t <= MAT_TMAX && bench_selected(name)) {
            const size_t pbytes = (size_t)BATCH * HEADS * t * t * sizeof(float);
            float *probs = bench_alloc(pbytes);
            float *mat_out = bench_alloc(act);
            tb_tensor pt = tb_tensor_4d(probs, BATCH, HEADS, t, t);
            r.probs = &pt;
            r.mat_out = mat_out;
            bench_stats sm;
            mc.peak = mc.cur;
            if (time_case(name, run_materialise, &r, &s_mat, t, t_start, budget, &sl, &sm)) {
                print_row(&m, m.threads, name, t, &sm, 0, fwd_flops,
                          (double)(qkv_bytes + pbytes + act + mc.peak));
                run_fwd(&r);
                compared = 1;
                for (size_t i = 0; i < n * EMBED; i++) {
                    const double d = fabs((double)mat_out[i] - (double)out[i]);
                    if (d > max_diff)
                        max_diff = d;
                }
            }
            free(probs);
            free(mat_out);
        } else if (t > MAT_TMAX && bench_selected(name)) {
            char why[128];
            snprintf(why, sizeof why, "the materialising baseline runs up to T=%d (%.0f MiB of "
                     "probabilities here)", MAT_TMAX,
                     (double)HEADS * (double)t * (double)t * 4 / (1024.0 * 1024.0));
            skip(&sl, name, why);
        }
        free(r.cache);
        free(qkv), free(dqkv), free(out), free(dout);
    }

    if (compared)
        printf("\nattention: materialised and streaming outputs agree to max |diff| %.3g\n",
               max_diff);
    printf("attention: reference figure from the issue, measured on ANOTHER run (not re-run "
           "here): the best-known plain-C\n"
           "           trainer's serial O(T^3) attention backward takes %.2f s forward + %.1f s "
           "backward = %.2f s for one layer\n"
           "           at T=%d, B=1, C=768, H=12 on this kind of machine.\n",
           REF_FWD_S, REF_BWD_S, REF_FWD_S + REF_BWD_S, REF_T);
    if (ref_fwd > 0 && ref_bwd > 0)
        printf("attention: ours at T=%d, this run, %d threads: %.3f s forward + %.3f s backward "
               "= %.3f s -> %.2fx the fixed %.2f s figure\n"
               "           (forward alone %.2fx of %.2f s, backward alone %.2fx of %.1f s; "
               "ratios across runs, not a same-run comparison)\n",
               REF_T, m.threads, ref_fwd, ref_bwd, ref_fwd + ref_bwd,
               (REF_FWD_S + REF_BWD_S) / (ref_fwd + ref_bwd), REF_FWD_S + REF_BWD_S,
               REF_FWD_S / ref_fwd, REF_FWD_S, REF_BWD_S / ref_bwd, REF_BWD_S);
    else
        printf("attention: T=%d fwd+bwd not measured in this run: no ratio to the reference\n",
               REF_T);
    if (ref_fwd1 > 0 && ref_bwd1 > 0)
        printf("attention: ours at T=%d, this run, 1 thread: %.3f s forward + %.3f s backward "
               "= %.3f s -> %.2fx the fixed %.2f s figure\n",
               REF_T, ref_fwd1, ref_bwd1, ref_fwd1 + ref_bwd1,
               (REF_FWD_S + REF_BWD_S) / (ref_fwd1 + ref_bwd1), REF_FWD_S + REF_BWD_S);
    if (sl.n == 0)
        printf("attention: nothing skipped\n");
    for (int i = 0; i < sl.n; i++)
        printf("attention: skipped %s\n", sl.text[i]);
    printf("attention: total %.0f s\n", bench_now() - t_start);
    return 0;
}
