/*
 * Reference matrix product: straightforward, correct for every size, and
 * deterministic. Rows of C are distributed statically over threads; each
 * element's reduction over K runs in ascending order of k (NN/TN) or with a
 * fixed 8-lane split (NT/TT), independent of the thread count.
 */
#include "gemm.h"

#include <string.h>

#include "../core/internal.h"

/* Scale row c[0..n) by beta, treating beta == 0 as "overwrite". */
static void scale_row(float *c, size_t n, float beta)
{
    if (beta == 0.0f)
        memset(c, 0, n * sizeof(float));
    else if (beta != 1.0f)
        for (size_t j = 0; j < n; j++)
            c[j] *= beta;
}

/* Dot product with 8 independent partial sums (vectorisable, fixed order). */
static float dot_contig(const float *a, const float *b, size_t k)
{
    float acc[8] = {0};
    size_t p = 0;
    for (; p + 8 <= k; p += 8)
        for (int l = 0; l < 8; l++)
            acc[l] += a[p + l] * b[p + l];
    float s = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
    for (; p < k; p++)
        s += a[p] * b[p];
    return s;
}

void tb_gemm(const tb_ctx *ctx, int trans_a, int trans_b, size_t M, size_t N, size_t K,
             float alpha, const float *A, size_t lda, const float *B, size_t ldb, float beta,
             float *C, size_t ldc)
{
    if (M == 0 || N == 0)
        return;
    const long long m = (long long)M;
#pragma omp parallel for num_threads(tb_threads_for(ctx, (double)M * N * (K + 1))) schedule(static)
    for (long long ii = 0; ii < m; ii++) {
        const size_t i = (size_t)ii;
        float *c = C + i * ldc;
        scale_row(c, N, beta);
        if (K == 0 || alpha == 0.0f)
            continue;
        if (!trans_b) {
            /* C[i,:] += sum_k op(A)[i,k] * B[k,:] ; B rows contiguous. */
            for (size_t k = 0; k < K; k++) {
                float a = alpha * (trans_a ? A[k * lda + i] : A[i * lda + k]);
                const float *b = B + k * ldb;
                for (size_t j = 0; j < N; j++)
                    c[j] += a * b[j];
            }
        } else if (!trans_a) {
            /* C[i,j] += dot(A[i,:], B[j,:]) ; both rows contiguous. */
            const float *a = A + i * lda;
            for (size_t j = 0; j < N; j++)
                c[j] += alpha * dot_contig(a, B + j * ldb, K);
        } else {
            /* Rare form A^T B^T: strided access, plain loop. */
            for (size_t j = 0; j < N; j++) {
                float s = 0.0f;
                for (size_t k = 0; k < K; k++)
                    s += A[k * lda + i] * B[j * ldb + k];
                c[j] += alpha * s;
            }
        }
    }
}
