/* Dense linear algebra for one row: LU with partial pivoting and its solve, used by the Rosenbrock
   steps (kernels.c) and the steady-state iterations (roots.h). */

#ifndef GENENET_LINALG_H
#define GENENET_LINALG_H

#include "common.h"

/* LU with partial pivoting of the (G, G) row-major A in place (LAPACK getrf's algorithm, pivots as
   row swaps); 1 when a pivot is exactly zero (torch.linalg.lu_factor_ex's info != 0). On success
   the factors are left for lu_solve: transposed (column j of L and U is row j of A, so the
   substitutions run down contiguous columns) with U's diagonal replaced by its inverse. */
static int lu_factor(real *A, int64_t G, int64_t *piv) {
    for (int64_t k = 0; k < G; ++k) {
        int64_t p = k;
        real best = fabs(A[k * G + k]);
        for (int64_t i = k + 1; i < G; ++i) {
            real v = fabs(A[i * G + k]);
            if (v > best) { best = v; p = i; }
        }
        piv[k] = p;
        if (best == 0) return 1;
        if (p != k) {
            real *rk = A + k * G, *rp = A + p * G;
            for (int64_t j = 0; j < G; ++j) { real t = rk[j]; rk[j] = rp[j]; rp[j] = t; }
        }
        const real *restrict rk = A + k * G;
        const real inv = (real)1 / rk[k];
        for (int64_t i = k + 1; i < G; ++i) {
            real *restrict ri = A + i * G;
            real l = ri[k] * inv;
            ri[k] = l;
            if (l == 0) continue;
            for (int64_t j = k + 1; j < G; ++j) ri[j] -= l * rk[j];
        }
    }
    for (int64_t i = 0; i < G; ++i) {
        for (int64_t j = i + 1; j < G; ++j) { real t = A[i * G + j]; A[i * G + j] = A[j * G + i]; A[j * G + i] = t; }
        A[i * G + i] = (real)1 / A[i * G + i];
    }
    return 0;
}

/* x <- A^-1 x from lu_factor's factors F. Column-oriented substitutions (x_i -= F_ji x_j down column
   j): the updates of one column are independent and vectorise, where the row-oriented dot products
   are a latency-bound chain per row (2x slower at G = 22, the Rosenbrock steps' main cost). */
static void lu_solve(const real *restrict F, int64_t G, const int64_t *piv, real *restrict x) {
    for (int64_t k = 0; k < G; ++k)
        if (piv[k] != k) { real t = x[k]; x[k] = x[piv[k]]; x[piv[k]] = t; }
    for (int64_t j = 0; j < G; ++j) { /* L y = P b, unit diagonal */
        const real xj = x[j], *restrict c = F + j * G;
        for (int64_t i = j + 1; i < G; ++i) x[i] -= c[i] * xj;
    }
    for (int64_t j = G - 1; j >= 0; --j) { /* U x = y */
        const real *restrict c = F + j * G;
        const real xj = x[j] * c[j];
        x[j] = xj;
        for (int64_t i = 0; i < j; ++i) x[i] -= c[i] * xj;
    }
}

/* An LU of a (G, G) matrix for repeated solves: lu_factor's factors F and pivots, and the nonzero
   entries of F by column (L's below the diagonal of column j at idx/val[ptr[j]..ptr[j + 1]), U's
   above it at [ptr[G + j]..ptr[G + j + 1])). The Jacobians of reaction networks are sparse
   (BIOMD0000000201: 47 of 484 entries; its factors hold 71 off-diagonal nonzeros), so a solve
   that visits only those is several times cheaper than the dense one, with the same sums in the
   same order (a skipped term is an exact zero). */
typedef struct {
    int64_t G;
    real *F, *val;       /* (G, G) each */
    int64_t *piv;        /* (G) */
    int32_t *ptr, *idx;  /* (2 G + 1), (G G) */
} Lu;

/* bytes of an Lu's arrays besides F, for lu_place */
static size_t lu_bytes(int64_t G) {
    return sizeof(int64_t) * (size_t)G + sizeof(real) * (size_t)(G * G) + sizeof(int32_t) * (size_t)(2 * G + 1 + G * G);
}

/* an Lu over F and `mem` (lu_bytes(G), 8-byte aligned) */
static Lu lu_place(int64_t G, real *F, void *mem) {
    Lu lu;
    lu.G = G;
    lu.F = F;
    lu.piv = (int64_t *)mem;
    lu.val = (real *)(lu.piv + G);
    lu.ptr = (int32_t *)(lu.val + G * G);
    lu.idx = lu.ptr + 2 * G + 1;
    return lu;
}

/* factor lu->F in place (lu_factor) and index its nonzeros; 1 when singular */
static int lu_factor_sparse(Lu *lu) {
    const int64_t G = lu->G;
    if (lu_factor(lu->F, G, lu->piv)) return 1;
    int32_t n = 0;
    for (int64_t j = 0; j < G; ++j) {
        lu->ptr[j] = n;
        const real *c = lu->F + j * G;
        for (int64_t i = j + 1; i < G; ++i)
            if (c[i] != 0) { lu->idx[n] = (int32_t)i; lu->val[n++] = c[i]; }
    }
    for (int64_t j = 0; j < G; ++j) {
        lu->ptr[G + j] = n;
        const real *c = lu->F + j * G;
        for (int64_t i = 0; i < j; ++i)
            if (c[i] != 0) { lu->idx[n] = (int32_t)i; lu->val[n++] = c[i]; }
    }
    lu->ptr[2 * G] = n;
    return 0;
}

/* x <- A^-1 x over the indexed nonzeros (lu_solve's substitutions) */
static void lu_solve_sparse(const Lu *lu, real *restrict x) {
    const int64_t G = lu->G;
    const int32_t *restrict ptr = lu->ptr, *restrict idx = lu->idx;
    const real *restrict val = lu->val;
    for (int64_t k = 0; k < G; ++k)
        if (lu->piv[k] != k) { real t = x[k]; x[k] = x[lu->piv[k]]; x[lu->piv[k]] = t; }
    for (int64_t j = 0; j < G; ++j) {
        const real xj = x[j];
        for (int32_t e = ptr[j]; e < ptr[j + 1]; ++e) x[idx[e]] -= val[e] * xj;
    }
    for (int64_t j = G - 1; j >= 0; --j) {
        const real xj = x[j] * lu->F[j * G + j];
        x[j] = xj;
        for (int32_t e = ptr[G + j]; e < ptr[G + j + 1]; ++e) x[idx[e]] -= val[e] * xj;
    }
}

#endif
