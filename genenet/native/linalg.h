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
   entries of the factors: L's (i > j) as one flat list in column order, U's (i < j) by column
   (uptr), and the row swaps that happened. The Jacobians of reaction networks are sparse
   (BIOMD0000000201: 47 of 484 entries; its factors hold 71 off-diagonal nonzeros), so a solve that
   visits only those is several times cheaper than the dense one, and it does lu_solve's operations
   in lu_solve's order (a skipped term is an exact zero): the same bits, so a clamped species' zero
   row stays exactly zero. */
typedef struct {
    int64_t G;
    real *F, *val;          /* (G, G) each */
    int64_t *piv;           /* (G) */
    int32_t *row, *col;     /* (G G) each: entry e updates x[row[e]] from x[col[e]] (col: L's only) */
    int32_t *uptr;          /* (G + 1): U's entries of column j at [nl + uptr[j], nl + uptr[j + 1]) */
    int32_t nl, nswap;
    int32_t *swap;          /* (G) the k with piv[k] != k, in order */
} Lu;

/* bytes of an Lu's arrays besides F, for lu_place */
static size_t lu_bytes(int64_t G) {
    return sizeof(int64_t) * (size_t)G + sizeof(real) * (size_t)(G * G)
           + sizeof(int32_t) * (size_t)(2 * G * G + 2 * G + 1);
}

/* an Lu over F and `mem` (lu_bytes(G), 8-byte aligned) */
static Lu lu_place(int64_t G, real *F, void *mem) {
    Lu lu;
    lu.G = G;
    lu.F = F;
    lu.piv = (int64_t *)mem;
    lu.val = (real *)(lu.piv + G);
    lu.row = (int32_t *)(lu.val + G * G);
    lu.col = lu.row + G * G;
    lu.uptr = lu.col + G * G;
    lu.swap = lu.uptr + G + 1;
    lu.nl = lu.nswap = 0;
    return lu;
}

/* factor lu->F in place (lu_factor) and list its nonzeros; 1 when singular */
static int lu_factor_sparse(Lu *lu) {
    const int64_t G = lu->G;
    if (lu_factor(lu->F, G, lu->piv)) return 1;
    int32_t n = 0;
    for (int64_t j = 0; j < G; ++j) { /* F's row j is column j of L (below) and U (above, diagonal 1/U_jj) */
        const real *c = lu->F + j * G;
        for (int64_t i = j + 1; i < G; ++i)
            if (c[i] != 0) { lu->row[n] = (int32_t)i; lu->col[n] = (int32_t)j; lu->val[n++] = c[i]; }
    }
    lu->nl = n;
    for (int64_t j = 0; j < G; ++j) {
        lu->uptr[j] = n - lu->nl;
        const real *c = lu->F + j * G;
        for (int64_t i = 0; i < j; ++i)
            if (c[i] != 0) { lu->row[n] = (int32_t)i; lu->val[n++] = c[i]; }
    }
    lu->uptr[G] = n - lu->nl;
    lu->nswap = 0;
    for (int64_t k = 0; k < G; ++k)
        if (lu->piv[k] != k) lu->swap[lu->nswap++] = (int32_t)k;
    return 0;
}

/* x <- A^-1 x over the listed nonzeros (lu_solve's substitutions) */
static void lu_solve_sparse(const Lu *lu, real *restrict x) {
    const int64_t G = lu->G;
    const int32_t *restrict row = lu->row, *restrict col = lu->col;
    const real *restrict val = lu->val;
    for (int32_t s = 0; s < lu->nswap; ++s) {
        const int64_t k = lu->swap[s], q = lu->piv[k];
        const real t = x[k];
        x[k] = x[q];
        x[q] = t;
    }
    for (int32_t e = 0; e < lu->nl; ++e) x[row[e]] -= val[e] * x[col[e]]; /* L y = P b, by column */
    const int32_t *restrict urow = row + lu->nl, *restrict uptr = lu->uptr;
    const real *restrict uval = val + lu->nl;
    for (int64_t j = G - 1; j >= 0; --j) { /* U x = y */
        const real xj = x[j] * lu->F[j * G + j];
        x[j] = xj;
        for (int32_t e = uptr[j]; e < uptr[j + 1]; ++e) x[urow[e]] -= uval[e] * xj;
    }
}

#endif
