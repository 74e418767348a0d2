/* Dense linear algebra for one row: LU with partial pivoting and its solve, used by the Rosenbrock
   steps (kernels.c) and the steady-state iterations (roots.h). */

#ifndef GENENET_LINALG_H
#define GENENET_LINALG_H

#include "common.h"

/* LU with partial pivoting of the (G, G) row-major A in place (LAPACK getrf's algorithm, pivots as
   row swaps); 1 when a pivot is exactly zero (torch.linalg.lu_factor_ex's info != 0) */
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
    return 0;
}

/* sum_j a[j] b[j], j < n, in eight interleaved partial sums: the dot products of the triangular
   solves are otherwise one chain of dependent additions (latency-bound, ~4x slower) */
static inline real dot(const real *restrict a, const real *restrict b, int64_t n) {
    real s[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    int64_t j = 0;
    for (; j + 8 <= n; j += 8)
        for (int q = 0; q < 8; ++q) s[q] += a[j + q] * b[j + q];
    real acc = ((s[0] + s[4]) + (s[1] + s[5])) + ((s[2] + s[6]) + (s[3] + s[7]));
    for (; j < n; ++j) acc += a[j] * b[j];
    return acc;
}

static void lu_solve(const real *LU, int64_t G, const int64_t *piv, real *x) {
    for (int64_t k = 0; k < G; ++k)
        if (piv[k] != k) { real t = x[k]; x[k] = x[piv[k]]; x[piv[k]] = t; }
    for (int64_t i = 1; i < G; ++i) /* L y = P b, unit diagonal */
        x[i] -= dot(LU + i * G, x, i);
    for (int64_t i = G - 1; i >= 0; --i) { /* U x = y */
        const real *ri = LU + i * G;
        x[i] = (x[i] - dot(ri + i + 1, x + i + 1, G - i - 1)) / ri[i];
    }
}

#endif
