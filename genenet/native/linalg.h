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

#endif
