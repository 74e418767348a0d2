/* Steady states f(x) = 0 of the Hill model, one row per task: the damped Newton iteration and the
   pseudo-transient continuation of genenet.steady (newton, pseudo_transient), which are the
   reference this reproduces iteration for iteration:

   Newton: J dx = -f (a singular J is shifted by 1e-10 max(max|J|, 1) I, as steady._solve), then
   backtracking on phi(a) = |f(max(0, x + a dx))|^2 (Dennis & Schnabel A6.3.1): the full step,
   else the minimiser of the quadratic through phi(0), phi'(0) = -2 phi(0) and phi(a), kept in
   [a/10, a/2], down to 2^-11 (taken without the test). A row stops when converged
   (max|f| <= tol (1 + max|x|)), when it cannot move (singular or non-finite), or, with give_up > 0,
   after give_up iterations in a row that did not halve |f|^2.

   Pseudo-transient continuation: (I/d - J) dx = f, x = max(0, x + dx), the pseudo time step d
   grown or shrunk by the ratio of successive residuals (clamped to [0.1, 10], at most 1e12) and
   cut by 4 after a failed step; a row stops when converged or d <= 1e-12.

   In the batched torch loop each iteration costs tens of tensor operations over the rows still
   iterating, and the rows that converge late (or never) iterate for hundreds of iterations: the
   Python and indexing overhead, not the LU, was most of a screen's steady-state time. */

#ifndef GENENET_ROOTS_H
#define GENENET_ROOTS_H

#include "driver.h"
#include "linalg.h"

#define ROOT_MIN_STEP ((real)1 / 2048) /* steady._MIN_STEP */

typedef struct {
    int64_t mode;     /* 0: Newton, 1: pseudo-transient continuation */
    real tol, dt0;    /* convergence tolerance; PTC's first pseudo time step */
    int64_t max_iter; /* iterations */
    int64_t give_up;  /* Newton: stop after this many iterations without halving |f|^2; <= 0: never */
} RootSettings;

typedef struct {
    real *F, *Fn, *xn, *dx; /* (G) each */
    real *J, *LU;           /* (G, G) each */
    int64_t *piv;           /* (G) */
} RootWork;

static real root_sumsq(const real *v, int64_t n) {
    real acc = 0;
    for (int64_t i = 0; i < n; ++i) acc += v[i] * v[i];
    return acc;
}

/* max |v_i|, NaN when any v_i is NaN (as torch's amax) */
static real root_max_abs(const real *v, int64_t n) {
    real m = 0;
    for (int64_t i = 0; i < n; ++i) {
        real a = fabs(v[i]);
        if (!(a <= m)) m = a;
    }
    return m;
}

static int root_finite(const real *v, int64_t n) {
    for (int64_t i = 0; i < n; ++i)
        if (!isfinite(v[i])) return 0;
    return 1;
}

static int root_converged(const real *F, const real *x, int64_t G, real tol) {
    return root_max_abs(F, G) <= tol * ((real)1 + root_max_abs(x, G));
}

/* z = A^-1 b (A (G, G) kept), with steady._solve's shift where A is singular; 0 (z = 0) when no
   finite solution is found */
static int root_solve(const real *A, int64_t G, const real *b, RootWork *w, real *z) {
    memcpy(w->LU, A, sizeof(real) * (size_t)(G * G));
    int bad = lu_factor(w->LU, G, w->piv);
    if (bad) {
        real scale = root_max_abs(A, G * G);
        scale = scale > 1 ? scale : (real)1;
        memcpy(w->LU, A, sizeof(real) * (size_t)(G * G));
        for (int64_t i = 0; i < G; ++i) w->LU[i * G + i] += (real)1e-10 * scale;
        bad = lu_factor(w->LU, G, w->piv);
    }
    if (!bad) {
        memcpy(z, b, sizeof(real) * (size_t)G);
        lu_solve(w->LU, G, w->piv, z);
        if (root_finite(z, G)) return 1;
    }
    memset(z, 0, sizeof(real) * (size_t)G);
    return 0;
}

/* xn = max(0, x + a dx) */
static void root_trial(const real *x, const real *dx, real a, int64_t G, real *xn) {
    for (int64_t i = 0; i < G; ++i) {
        real v = x[i] + a * dx[i];
        xn[i] = v > 0 ? v : (real)0;
    }
}

/* steady._line_search: the accepted trial state in w->xn, its f in w->Fn */
static void root_line_search(const Row *r, const real *x, RootWork *w) {
    const int64_t G = r->G;
    const real r0 = root_sumsq(w->F, G);
    real a = 1;
    root_trial(x, w->dx, a, G, w->xn);
    rhs_state(r, w->xn, w->Fn);
    for (;;) {
        real rr = root_sumsq(w->Fn, G);
        if ((rr <= ((real)1 - (real)2e-4 * a) * r0) && isfinite(rr)) break;
        if (!(a > ROOT_MIN_STEP)) break;
        real quad = r0 * a * a / (rr - r0 + (real)2 * r0 * a);
        a = isfinite(quad) ? fmin(fmax(quad, (real)0.1 * a), (real)0.5 * a) : (real)0.1 * a;
        a = a > ROOT_MIN_STEP ? a : ROOT_MIN_STEP;
        root_trial(x, w->dx, a, G, w->xn);
        rhs_state(r, w->xn, w->Fn);
    }
}

/* One row from x (updated in place); returns converged, the iterations in *iters */
static int root_row(const Row *r, const RootSettings *c, real *x, RootWork *w, int64_t *iters) {
    const int64_t G = r->G;
    rhs_state(r, x, w->F);
    *iters = 0;
    if (root_converged(w->F, x, G, c->tol)) return 1;
    real ref = root_sumsq(w->F, G), res = root_max_abs(w->F, G), d = c->dt0;
    const int64_t give_up = c->give_up > 0 ? c->give_up : c->max_iter + 1;
    int64_t stuck = 0;
    for (int64_t it = 0; it < c->max_iter; ++it) {
        jacobian(r, x, w->J);
        int move;
        if (c->mode == 0) { /* Newton: J dx = -f, then the line search */
            for (int64_t i = 0; i < G; ++i) w->Fn[i] = -w->F[i];
            int ok = root_solve(w->J, G, w->Fn, w, w->dx);
            root_line_search(r, x, w);
            move = ok && root_finite(w->Fn, G);
            real merit = root_sumsq(w->Fn, G);
            if (merit <= (real)0.5 * ref) {
                ref = merit;
                stuck = 0;
            } else {
                stuck++;
            }
        } else { /* continuation: (I/d - J) dx = f */
            for (int64_t q = 0; q < G * G; ++q) w->J[q] = -w->J[q];
            for (int64_t i = 0; i < G; ++i) w->J[i * G + i] += (real)1 / d;
            int ok = root_solve(w->J, G, w->F, w, w->dx);
            root_trial(x, w->dx, 1, G, w->xn);
            rhs_state(r, w->xn, w->Fn);
            real res_new = root_max_abs(w->Fn, G);
            move = ok && isfinite(res_new);
            real grow = res / (res_new > (real)1e-300 ? res_new : (real)1e-300);
            grow = grow < (real)0.1 ? (real)0.1 : (grow > 10 ? (real)10 : grow);
            if (move) {
                d = d * grow < (real)1e12 ? d * grow : (real)1e12;
                res = res_new;
            } else {
                d *= (real)0.25;
            }
        }
        if (move) {
            memcpy(x, w->xn, sizeof(real) * (size_t)G);
            memcpy(w->F, w->Fn, sizeof(real) * (size_t)G);
        }
        *iters = it + 1;
        if (root_converged(w->F, x, G, c->tol)) return 1;
        if (c->mode == 0 && (!move || stuck >= give_up)) return 0;
        if (c->mode == 1 && !(d > (real)1e-12)) return 0;
    }
    return 0;
}

/* Every active row's iteration from x (B, G), updated in place; converged (B), iters (B). Rows not
   active (active[b] == 0) only have their convergence checked. mode 0: Newton, 1: continuation. */
static int roots_solve(const Problem *p, real *x, const uint8_t *active, int64_t mode, double tol, int64_t max_iter,
                       int64_t give_up, double dt0, uint8_t *converged, int64_t *iters, int64_t nthreads) {
    if (mode != 0 && mode != 1) return -1;
    const RootSettings c = {mode, (real)tol, (real)dt0, max_iter, give_up};
    const int64_t B = p->B, G = p->G, MW = model_work(p);
#pragma omp parallel num_threads((int)nthreads)
    {
        real *work = (real *)malloc(sizeof(real) * (size_t)(2 * G * G + 4 * G + MW + 64));
        int64_t *piv = (int64_t *)malloc(sizeof(int64_t) * (size_t)G);
        int *iw = (int *)malloc(sizeof(int) * (size_t)(model_iwork(p) + 1));
        RootWork w = {work, work + G, work + 2 * G, work + 3 * G, work + 4 * G, work + 4 * G + G * G, piv};
        real *rw = work + 4 * G + 2 * G * G;
#pragma omp for schedule(dynamic, 1)
        for (int64_t b = 0; b < B; ++b) {
            Row r = model_row(p, b, rw, iw);
            real *xb = x + b * G;
            if (active && !active[b]) {
                rhs_state(&r, xb, w.F);
                converged[b] = (uint8_t)root_converged(w.F, xb, G, c.tol);
                iters[b] = 0;
                continue;
            }
            converged[b] = (uint8_t)root_row(&r, &c, xb, &w, iters + b);
        }
        free(work);
        free(piv);
        free(iw);
    }
    return 0;
}

#endif
