/*
 * attention_rank: the rank argument for decoder-only models, measured.
 *
 * The argument: an encoder's bidirectional attention matrix
 * P = softmax(Q K^T / sqrt(D)) (T x T, one head of width D) is built from
 * logits of rank at most D; when T >> D the softmax keeps it close to a
 * low-rank matrix, so its singular values fall off fast and it mixes the T
 * values through few effective directions. A decoder's causal attention
 * matrix is lower triangular with a positive diagonal (every query sees
 * itself with weight > 0), so its determinant is the product of the
 * diagonal: it has full rank T, whatever D is.
 *
 * The program draws the same Q and K (N(0, 1), B independent draws) for each
 * sequence length T and head width D, gets both matrices from the library's
 * attention core (tb_attention_probs, causal off and on), computes their
 * singular values in double precision (one-sided Jacobi, ex_svd.h), and
 * prints per (T, D), averaged over the draws:
 *   - rank(QK^T): the logits' numerical rank (at most D)
 *   - numerical rank: singular values above T * 2^-23 * the largest
 *     (numpy.linalg.matrix_rank's tolerance for float32 data)
 *   - effective rank: exp(entropy of sv / sum(sv)) (Roy & Vetterli 2007)
 *   - stable rank: sum sv^2 / max sv^2
 *   - sv_min / sv_max
 *
 * Every number printed is bitwise identical for any --threads value; only
 * the lines starting with "train:" and "done:" differ.
 * docs/attention_rank.md explains the output.
 */
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ex_cli.h"
#include "ex_svd.h"
#include "tblocks.h"

#define MAX_T 256

typedef struct stats {
    double logit_rank;
    ex_rank_stats bi, ca; /* means over the draws (rank as a mean too) */
    double bi_rank, ca_rank;
    size_t ca_rank_min;   /* the smallest causal rank of any draw */
    double ca_min_diag;   /* the smallest diagonal entry of any causal P */
    int ca_triangular;    /* every causal P had exact zeros above the diagonal */
} stats;

/* Accumulate one draw's rank measures into a mean. */
static void add_stats(ex_rank_stats *acc, double *rank_acc, const ex_rank_stats *r, double w)
{
    *rank_acc += w * (double)r->rank;
    acc->entropy += w * r->entropy;
    acc->stable += w * r->stable;
    acc->smallest += w * r->smallest;
}

/* One (T, D) cell: `draws` batches of Q, K from rng. */
static tb_status measure(tb_ctx *ctx, tb_rng *rng, size_t T, size_t D, size_t draws,
                         float *q, float *k, float *probs, double *mat, double *sv, stats *st)
{
    memset(st, 0, sizeof *st);
    st->ca_rank_min = T;
    st->ca_min_diag = 1.0;
    st->ca_triangular = 1;
    tb_status s = tb_rng_fill_normal(ctx, rng, q, draws * T * D, 0.0f, 1.0f);
    if (s == TB_OK)
        s = tb_rng_fill_normal(ctx, rng, k, draws * T * D, 0.0f, 1.0f);
    if (s != TB_OK)
        return s;
    tb_tensor qt = tb_tensor_3d(q, draws, T, D), kt = tb_tensor_3d(k, draws, T, D);
    tb_heads qh = {&qt, 0}, kh = {&kt, 0};
    const double tol = (double)T * (double)FLT_EPSILON;
    const double w = 1.0 / (double)draws;
    for (int causal = 0; causal < 2; causal++) {
        tb_attention_config cfg = tb_attention_default_config(1, D);
        cfg.causal = causal;
        tb_tensor pt = tb_tensor_4d(probs, draws, 1, T, T);
        if ((s = tb_attention_probs(ctx, &cfg, NULL, &qh, &kh, &pt)) != TB_OK)
            return s;
        for (size_t b = 0; b < draws; b++) {
            for (size_t i = 0; i < T * T; i++)
                mat[i] = probs[b * T * T + i];
            if (ex_singular_values(mat, T, T, sv) <= 0)
                return tb_ctx_set_error(ctx, TB_ERR_NON_FINITE,
                                        "the SVD of a %zu x %zu matrix did not converge", T, T);
            const ex_rank_stats r = ex_rank_of(sv, T, tol);
            if (causal) {
                for (size_t i = 0; i < T; i++) {
                    const double d = mat[i * T + i];
                    st->ca_min_diag = d < st->ca_min_diag ? d : st->ca_min_diag;
                    for (size_t j = i + 1; j < T; j++)
                        st->ca_triangular &= mat[i * T + j] == 0.0;
                }
                add_stats(&st->ca, &st->ca_rank, &r, w);
                if (r.rank < st->ca_rank_min)
                    st->ca_rank_min = r.rank;
            } else {
                add_stats(&st->bi, &st->bi_rank, &r, w);
            }
        }
    }
    /* The logits' rank, in double (at most D). */
    const double scale = 1.0 / sqrt((double)D);
    for (size_t b = 0; b < draws; b++) {
        for (size_t i = 0; i < T; i++)
            for (size_t j = 0; j < T; j++) {
                double acc = 0.0;
                for (size_t d = 0; d < D; d++)
                    acc += (double)q[(b * T + i) * D + d] * (double)k[(b * T + j) * D + d];
                mat[i * T + j] = scale * acc;
            }
        if (ex_singular_values(mat, T, T, sv) <= 0)
            return tb_ctx_set_error(ctx, TB_ERR_NON_FINITE, "the SVD of the logits did not converge");
        st->logit_rank += w * (double)ex_rank_of(sv, T, tol).rank;
    }
    return TB_OK;
}

int main(int argc, char **argv)
{
    tb_ctx ctx;
    int rc = ex_ctx_init(&ctx);
    if (rc >= 0)
        return rc;
    uint64_t max_len = 128, draws = 4, seed = 1, threads = 0;
    const ex_opt opts[] = {
        {"max-len", "T", "longest sequence: T = 8, 16, ... up to this", 8, MAX_T, &max_len},
        {"draws", "N", "independent Q, K draws averaged per cell", 1, 64, &draws},
        {"seed", "S", "seed for Q and K", 0, UINT64_MAX, &seed},
        EX_OPT_THREADS(threads),
    };
    rc = ex_parse_args(argc, argv,
                       "The rank of a bidirectional vs a causal softmax attention matrix on the\n"
                       "same queries and keys, for several sequence lengths and head widths:\n"
                       "numerical, effective and stable rank from the singular values. Writes\n"
                       "no files.",
                       opts, sizeof opts / sizeof opts[0]);
    if (rc >= 0)
        return rc;
    ex_apply_threads(&ctx, threads);
    static const size_t dims[] = {2, 8, 32};
    const size_t n_dims = sizeof dims / sizeof dims[0];
    const size_t T_max = (size_t)max_len, D_max = dims[n_dims - 1], B = (size_t)draws;
    printf("attention_rank: libtblocks %s, seed %llu, %zu draws per cell\n", tb_version_string(),
           (unsigned long long)seed, B);
    printf("train: nothing is trained; threads %d, kernels %s\n", ctx.num_threads,
           ex_kernel_name(&ctx));
    const double t0 = ex_seconds();
    float *q = malloc(B * T_max * D_max * sizeof(float));
    float *k = malloc(B * T_max * D_max * sizeof(float));
    float *probs = malloc(B * T_max * T_max * sizeof(float));
    double *mat = malloc(T_max * T_max * sizeof(double));
    double *sv = malloc(T_max * sizeof(double));
    if (!q || !k || !probs || !mat || !sv) {
        fprintf(stderr, "error: out of memory\n");
        rc = EX_EXIT_FAILURE;
        goto out;
    }
    printf("\nP = softmax(Q K^T / sqrt(D)), one head, Q and K ~ N(0, 1); the causal P is the same\n"
           "logits with keys j > i masked. Ranks are means over the draws; numerical rank: sv >\n"
           "T * 2^-23 * sv_max; effective rank exp(H(sv / sum sv)); stable rank sum sv^2 / "
           "sv_max^2\n\n");
    printf("   %4s %3s %7s | %-33s | %s\n", "", "", "", "        bidirectional",
           "           causal");
    printf("   %4s %3s %7s | %7s %8s %7s %8s | %7s %8s %7s %8s\n", "T", "D", "QK^T", "rank",
           "eff.rank", "stable", "sv_min", "rank", "eff.rank", "stable", "sv_min");
    int triangular = 1;
    double min_diag = 1.0;
    stats last[3]; /* the largest T's cells, per D */
    tb_rng rng;
    tb_rng_init(&rng, seed);
    for (size_t T = 8; T <= T_max; T *= 2) {
        for (size_t di = 0; di < n_dims; di++) {
            const size_t D = dims[di];
            stats st;
            tb_status s = measure(&ctx, &rng, T, D, B, q, k, probs, mat, sv, &st);
            if (ex_failed(&ctx, s, "measuring")) {
                rc = EX_EXIT_FAILURE;
                goto out;
            }
            printf("   %4zu %3zu %7.1f | %7.1f %8.2f %7.2f %8.1e | %7.1f %8.2f %7.2f %8.1e\n", T,
                   D, st.logit_rank, st.bi_rank, st.bi.entropy, st.bi.stable, st.bi.smallest,
                   st.ca_rank, st.ca.entropy, st.ca.stable, st.ca.smallest);
            triangular &= st.ca_triangular;
            min_diag = st.ca_min_diag < min_diag ? st.ca_min_diag : min_diag;
            last[di] = st;
        }
    }
    size_t T_last = 8;
    while (T_last * 2 <= T_max)
        T_last *= 2;
    printf("\n   causal P: exactly lower triangular in every draw: %s; smallest diagonal entry "
           "%.2e > 0,\n   so det P = product of the diagonal > 0 and rank P = T in exact "
           "arithmetic\n",
           triangular ? "yes" : "no", min_diag);
    printf("   at T = %zu, effective rank bidirectional / causal:", T_last);
    for (size_t di = 0; di < n_dims; di++)
        printf(" D=%zu %.2f%s", dims[di], last[di].bi.entropy / last[di].ca.entropy,
               di + 1 < n_dims ? "," : "\n");
    printf("done: %.2f s, threads %d\n", ex_seconds() - t0, ctx.num_threads);
    printf("final: causal_triangular=%d causal_min_diag=%.3e T=%zu", triangular, min_diag,
           T_last);
    for (size_t di = 0; di < n_dims; di++)
        printf(" d%zu_bi_rank=%.2f d%zu_ca_rank=%.2f d%zu_bi_eff=%.4f d%zu_ca_eff=%.4f", dims[di],
               last[di].bi_rank, dims[di], last[di].ca_rank, dims[di], last[di].bi.entropy,
               dims[di], last[di].ca.entropy);
    printf("\n");
    rc = EX_EXIT_OK;
out:
    free(q), free(k), free(probs), free(mat), free(sv);
    return rc;
}
