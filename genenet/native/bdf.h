/* The variable-order, quasi-constant step BDF method (orders 1..5, the NDF variant of Shampine &
   Reichelt 1997, "The MATLAB ODE suite"), one row per task, as scipy.integrate.BDF steps it:

   The state is kept as backward differences D_0 = y_n, D_j = nabla^j y_n at the current step
   size h (D: (MAX_ORDER + 3, G)). A step of order k from t to t + h:

     predict    y_pred = sum_{j<=k} D_j,   psi = sum_{j=1..k} gamma_j D_j / alpha_k
     correct    (I - c J) dy = c f(t + h, y) - psi - d,   y += dy, d += dy,   c = h / alpha_k
                (simplified Newton, at most 4 iterations, stopped on the convergence-rate test
                rate / (1 - rate) |dy| < max(10 eps / rtol, 0.03) in the error norm)
     error      err = C_k d,   C_k = kappa_k gamma_k + 1 / (k + 1)
     accept     when ||err / (atol + rtol |y|)||_rms <= 1; then D_(k+2) = d - D_(k+1),
                D_(k+1) = d, D_j += D_(j+1) for j = k..0

   with gamma_k = sum_{j<=k} 1/j, alpha_k = (1 - kappa_k) gamma_k and the NDF constants kappa =
   (0, -0.1850, -1/9, -0.0823, -0.0415). After k + 1 steps of one size the order moves to whichever
   of k - 1, k, k + 1 allows the largest step (error estimates C_(k-1) D_k and C_(k+1) D_(k+2)),
   and the step grows by at most 10x; a rejected step shrinks by max(0.2, safety err^(-1/(k+1))),
   a Newton failure first refreshes the Jacobian (kept from step to step otherwise: J is
   evaluated only at the start and when Newton fails with a stale one) and then halves h. A change
   of step size rescales the differences (D <- (R U)^T D, the same interpolating polynomial at the
   new spacing). Two departures from scipy, both CVODE's: the LU of I - c' J is kept while c moves by
   less than 30 % from c' and for at most 20 steps (scipy refactors at every change of h), its Newton
   corrections scaled by 2 / (1 + c / c'); a new Jacobian or a Newton failure refactors. And the
   Newton iteration stops when its remaining error is below 3 % of the error tolerance at every rtol
   (scipy tightens that to sqrt(rtol): 0.1 % at rtol 1e-6, which costs a third iteration on most
   steps; CVODE's test is looser still). Measured on BIOMD0000000201 at rtol 1e-6: 11.97k RHS per
   row against 14.9k, 0.80 s against 1.16 s for 200 rows, the same error against libroadrunner at
   rtol 1e-12 (1.7e-3 vs 1.5e-3); on Robertson 10-30 % fewer RHS than scipy's BDF at errors 1.2-1.5x
   its own (tests/test_bdf.py). Dense output at the save times is that polynomial,

     y(t) = D_0 + sum_{j=1..k} D_j prod_{m<j} (t - (t_n - m h)) / ((m + 1) h).

   Why here: on a stiff model a BDF step costs about one RHS and one triangular solve per Newton
   iteration and an LU only when h or the order changes, where a Rosenbrock step costs an LU and
   a Jacobian every step and one RHS and solve per stage (BIOMD0000000201 at rtol 1e-6: 11.7k RHS,
   0.2k Jacobians and 0.8k LUs vs Rodas5P's 25.8k, 3.2k and 3.2k). No tangents and no adjoint:
   genenet.solvers.bdf says where it runs. */

#ifndef GENENET_BDF_H
#define GENENET_BDF_H

#include "steppers.h"

#define BDF_MAX_ORDER 5
#define BDF_NEWTON_MAXITER 4

typedef struct {
    int64_t G;
    real *D, *J, *LU, *yp, *psi, *yn, *d, *f, *dy, *iscale, *tmp; /* D: (MAX_ORDER + 3, G); J, LU: (G, G) */
    Lu lu; /* I - c J's factors (in LU) */
    real gamma[BDF_MAX_ORDER + 2], alpha[BDF_MAX_ORDER + 2], err_const[BDF_MAX_ORDER + 2];
} BdfWork;

static void bdf_constants(BdfWork *w) {
    const double kappa[BDF_MAX_ORDER + 2] = {0, -0.1850, -1.0 / 9.0, -0.0823, -0.0415, 0, 0};
    double g = 0;
    for (int k = 0; k <= BDF_MAX_ORDER + 1; ++k) {
        if (k > 0) g += 1.0 / k;
        w->gamma[k] = (real)g;
        w->alpha[k] = (real)((1 - kappa[k]) * g);
        w->err_const[k] = (real)(kappa[k] * g + 1.0 / (k + 1));
    }
}

/* R(order, factor) (order + 1, order + 1): R_ij = prod_{l=1..i} (l - 1 - factor j) / l, R_0j = 1 */
static void bdf_R(int order, real factor, real R[BDF_MAX_ORDER + 1][BDF_MAX_ORDER + 1]) {
    for (int j = 0; j <= order; ++j) {
        real acc = 1;
        R[0][j] = 1;
        for (int i = 1; i <= order; ++i) {
            acc *= j == 0 ? 0 : ((real)(i - 1) - factor * (real)j) / (real)i;
            R[i][j] = acc;
        }
    }
}

/* D_0..D_order <- (R(factor) U)^T D: the differences of the same polynomial at step h factor */
static void bdf_change_D(BdfWork *w, int order, real factor) {
    real R[BDF_MAX_ORDER + 1][BDF_MAX_ORDER + 1], U[BDF_MAX_ORDER + 1][BDF_MAX_ORDER + 1];
    real RU[BDF_MAX_ORDER + 1][BDF_MAX_ORDER + 1];
    bdf_R(order, factor, R);
    bdf_R(order, 1, U);
    for (int i = 0; i <= order; ++i)
        for (int j = 0; j <= order; ++j) {
            real acc = 0;
            for (int l = 0; l <= order; ++l) acc += R[i][l] * U[l][j];
            RU[i][j] = acc;
        }
    const int64_t G = w->G;
    real *tmp = w->tmp; /* (order + 1, G) */
    for (int j = 0; j <= order; ++j) {
        real *o = tmp + j * G;
        for (int64_t q = 0; q < G; ++q) o[q] = 0;
        for (int i = 0; i <= order; ++i) {
            const real c = RU[i][j], *Di = w->D + i * G;
            for (int64_t q = 0; q < G; ++q) o[q] += c * Di[q];
        }
    }
    memcpy(w->D, tmp, sizeof(real) * (size_t)((order + 1) * G));
}

/* y(ts) from the differences of order `order` at (t, h) */
static void bdf_dense(const BdfWork *w, int order, real t, real h, real ts, real *dst) {
    const int64_t G = w->G;
    memcpy(dst, w->D, sizeof(real) * (size_t)G);
    real p = 1;
    for (int j = 1; j <= order; ++j) {
        p *= (ts - (t - (real)(j - 1) * h)) / ((real)j * h);
        const real *Dj = w->D + j * G;
        for (int64_t q = 0; q < G; ++q) dst[q] += p * Dj[q];
    }
}

/* y_pred = sum_{j<=k} D_j, its error scale, psi = sum_{j=1..k} gamma_j D_j / alpha_k (row by row of
   D, in scipy's order of the sums) */
static void bdf_predict(BdfWork *w, int order, const real *restrict rtol, const real *restrict atol) {
    const int64_t G = w->G;
    real *restrict yp = w->yp, *restrict psi = w->psi, *restrict is = w->iscale;
    const real *restrict D = w->D;
    for (int64_t i = 0; i < G; ++i) { yp[i] = D[i] + D[G + i]; psi[i] = D[G + i] * w->gamma[1]; }
    for (int j = 2; j <= order; ++j) {
        const real *restrict Dj = D + j * G, gj = w->gamma[j];
        for (int64_t i = 0; i < G; ++i) { yp[i] += Dj[i]; psi[i] += Dj[i] * gj; }
    }
    const real ia = w->alpha[order];
    for (int64_t i = 0; i < G; ++i) {
        psi[i] = psi[i] / ia;
        is[i] = 1 / (atol[i] + rtol[i] * fabs(yp[i]));
    }
}

/* sqrt(mean((v w)^2)) in four partial sums (they vectorize; the order of the sum is not scipy's) */
static real wrms(const real *restrict v, const real *restrict w, int64_t G) {
    real a[4] = {0, 0, 0, 0};
    int64_t i = 0;
    for (; i + 4 <= G; i += 4)
        for (int l = 0; l < 4; ++l) { const real q = v[i + l] * w[i + l]; a[l] += q * q; }
    for (; i < G; ++i) { const real q = v[i] * w[i]; a[0] += q * q; }
    return sqrt(((a[0] + a[1]) + (a[2] + a[3])) / (real)G);
}

/* the error test's weights 1 / (atol + rtol |y_new|) and the estimate C_k d (into tmp) */
static void bdf_error_scale(BdfWork *w, int order, const real *restrict rtol, const real *restrict atol) {
    const int64_t G = w->G;
    real *restrict is = w->iscale, *restrict e = w->tmp;
    const real *restrict yn = w->yn, *restrict d = w->d, ck = w->err_const[order];
    for (int64_t i = 0; i < G; ++i) {
        is[i] = 1 / (atol[i] + rtol[i] * fabs(yn[i]));
        e[i] = ck * d[i];
    }
}

typedef struct {
    int converged, iters, nonfinite;
} Newton;

/* The simplified Newton iteration of one step (scipy's solve_bdf_system): y_new, d; RHS counted */
static Newton bdf_newton(BdfWork *w, const Row *r, real t_new, real c, real tol, real lu_scale, int64_t *nrhs) {
    const int64_t G = w->G;
    Newton n = {0, 0, 0};
    memcpy(w->yn, w->yp, sizeof(real) * (size_t)G);
    memset(w->d, 0, sizeof(real) * (size_t)G);
    real dy_old = -1;
    for (int k = 0; k < BDF_NEWTON_MAXITER; ++k) {
        n.iters = k + 1;
        set_time(r, t_new);
        rhs_state(r, w->yn, w->f);
        (*nrhs)++;
        for (int64_t i = 0; i < G; ++i) w->dy[i] = c * w->f[i] - w->psi[i] - w->d[i];
        lu_solve_sparse(&w->lu, w->dy);
        if (lu_scale != 1)
            for (int64_t i = 0; i < G; ++i) w->dy[i] *= lu_scale;
        const real dy_norm = wrms(w->dy, w->iscale, G);
        if (!isfinite(dy_norm)) { n.nonfinite = 1; break; } /* f not finite (or the solve overflowed) */
        real rate = -1;
        if (dy_old >= 0) {
            rate = dy_norm / dy_old;
            if (rate >= 1 || pow(rate, (real)(BDF_NEWTON_MAXITER - k)) / (1 - rate) * dy_norm > tol) break;
        }
        for (int64_t i = 0; i < G; ++i) { w->yn[i] += w->dy[i]; w->d[i] += w->dy[i]; }
        if (dy_norm == 0 || (rate >= 0 && rate / (1 - rate) * dy_norm < tol)) { n.converged = 1; break; }
        dy_old = dy_norm;
    }
    return n;
}

/* LU = I - c J; 1 when singular or not finite */
static int bdf_factor(BdfWork *w, real c) {
    const int64_t G = w->G;
    real total = 0;
    for (int64_t i = 0; i < G * G; ++i) { w->LU[i] = -c * w->J[i]; total += w->LU[i]; }
    for (int64_t i = 0; i < G; ++i) w->LU[i * G + i] += 1;
    return !isfinite(total) || lu_factor_sparse(&w->lu);
}

/* One row from (t_begin, y0) to t_save[T-1] (drive_row's contract: saves after t_begin, y_last,
   counters, steady-state early stop, status codes; `steps` counts every attempt, a Newton failure
   included). The PI controller's settings do not apply: the step and order control are the method's. */
static RowResult bdf_row(Stepper *m, const Row *r, int64_t W, const LoopSettings *c, real t_begin,
                         const real *y0, real *out, real *y_last, real *work, Tape *tape) {
    (void)tape;
    BdfWork *w = (BdfWork *)m->ws;
    const int64_t G = r->G, T = c->T;
    const real *t_save = c->t_save, *rtol = c->rtol, *atol = c->atol;
    const real t0 = t_save[0], t_end = t_save[T - 1];
    real rmin = rtol[0];
    for (int64_t i = 1; i < G; ++i) rmin = rtol[i] < rmin ? rtol[i] : rmin;
    const real eps = sizeof(real) == 4 ? (real)1.1920929e-07 : (real)2.220446049250313e-16;
    const real newton_tol = 10 * eps / rmin > (real)0.03 ? 10 * eps / rmin : (real)0.03;
    real *f0 = work, *s1 = f0 + W, *s2 = s1 + W, *scale = s2 + W;
    RowResult res = {RUNNING, 0, 0, 0, t_begin, 0};
    int64_t save_ptr = first_save_after(t_save, T, t_begin);
    real t = t_begin, h;
    if (t_begin <= t0) memcpy(out, y0, sizeof(real) * W);
    set_time(r, t);
    rhs_state(r, y0, f0);
    res.rhs++;
    h = initial_step(r, c, t, t_end, y0, f0, 1, G, s1, s2, scale, &res.rhs);
    real *D = w->D;
    memcpy(D, y0, sizeof(real) * (size_t)G);
    for (int64_t i = 0; i < G; ++i) D[G + i] = f0[i] * h;
    set_time(r, t);
    jacobian(r, y0, w->J);
    int order = 1, n_equal = 0, have_lu = 0, last_nonfinite = 0, last_singular = 0, lu_age = 0;
    real c_lu = 1;
    if (!(t < t_end)) res.status = SUCCESS;
    while (res.status == RUNNING) {
        /* attempts until one is accepted */
        int jac_current = 0, accepted = 0, rejected = 0;
        real t_new = t, err_norm = 0, safety = 1;
        Newton nt = {0, 0, 0};
        while (!accepted && res.status == RUNNING) {
            /* only a step cut by a failure gives up, below ten units of the resolution of t here (scipy's
               min_step: the one-step loop's global floor 16 eps max|t| is too coarse for float32 BDF, whose
               early steps on a stiff start are far below it) */
            if (rejected && h < 10 * eps * (fabs(t) > (real)1e-30 ? fabs(t) : (real)1e-30)) {
                res.status = last_singular ? SINGULAR : (last_nonfinite ? NONFINITE : STEP_UNDERFLOW);
                break;
            }
            if (res.steps >= c->max_steps) { res.status = MAX_STEPS; break; }
            res.steps++;
            t_new = t + h;
            if (t_new >= t_end) { /* land on t_end */
                t_new = t_end;
                bdf_change_D(w, order, (t_new - t) / h);
                n_equal = 0;
                h = t_new - t;
            }
            bdf_predict(w, order, rtol, atol);
            const real cc = h / w->alpha[order];
            int converged = 0;
            last_singular = last_nonfinite = 0;
            for (;;) {
                int singular = 0;
                /* CVODE's rule: a new LU when c moved by more than 30 % or 20 steps since the last */
                if (have_lu && (fabs(cc / c_lu - 1) > (real)0.3 || lu_age >= 20)) have_lu = 0;
                if (!have_lu) {
                    singular = bdf_factor(w, cc);
                    have_lu = !singular;
                    c_lu = cc;
                    lu_age = 0;
                }
                if (!singular) {
                    /* a factor of I - c' J solves for I - c J: CVODE's correction 2 / (1 + c / c') */
                    const real lu_scale = cc == c_lu ? (real)1 : 2 / (1 + cc / c_lu);
                    nt = bdf_newton(w, r, t_new, cc, newton_tol, lu_scale, &res.rhs);
                    converged = nt.converged;
                    last_nonfinite = nt.nonfinite;
                }
                last_singular = singular;
                if (converged || jac_current) break;
                set_time(r, t_new);
                jacobian(r, w->yp, w->J);
                have_lu = 0;
                jac_current = 1;
            }
            if (!converged) {
                rejected = 1;
                h *= (real)0.5;
                bdf_change_D(w, order, (real)0.5);
                n_equal = 0;
                have_lu = 0;
                continue;
            }
            safety = (real)0.9 * (2 * BDF_NEWTON_MAXITER + 1) / (real)(2 * BDF_NEWTON_MAXITER + nt.iters);
            bdf_error_scale(w, order, rtol, atol);
            err_norm = wrms(w->tmp, w->iscale, G);
            if (!(err_norm <= 1)) {
                rejected = 1;
                real factor = isfinite(err_norm) ? safety * pow(err_norm, (real)-1 / (real)(order + 1)) : 0;
                factor = factor > (real)0.2 ? factor : (real)0.2;
                h *= factor;
                bdf_change_D(w, order, factor);
                n_equal = 0;
                continue;
            }
            accepted = 1;
        }
        if (!accepted) break;
        res.accepted++;
        n_equal++;
        lu_age++;
        const real t_old = t;
        t = t_new;
        {
            real *Dk1 = D + (order + 1) * G, *Dk2 = D + (order + 2) * G;
            for (int64_t i = 0; i < G; ++i) { Dk2[i] = w->d[i] - Dk1[i]; Dk1[i] = w->d[i]; }
            for (int j = order; j >= 0; --j)
                for (int64_t i = 0; i < G; ++i) D[j * G + i] += D[(j + 1) * G + i];
        }
        if (n_equal >= order + 1) { /* order and step size for what follows */
            real em = (real)INFINITY, ep = (real)INFINITY;
            if (order > 1) {
                for (int64_t i = 0; i < G; ++i) w->tmp[i] = w->err_const[order - 1] * D[order * G + i];
                em = wrms(w->tmp, w->iscale, G);
            }
            if (order < BDF_MAX_ORDER) {
                for (int64_t i = 0; i < G; ++i) w->tmp[i] = w->err_const[order + 1] * D[(order + 2) * G + i];
                ep = wrms(w->tmp, w->iscale, G);
            }
            const real norms[3] = {em, err_norm, ep};
            real best = -1;
            int pick = 0;
            for (int q = 0; q < 3; ++q) { /* error^(-1/(order + q)); 0 -> inf; argmax takes the first */
                real fq = norms[q] > 0 ? pow(norms[q], (real)-1 / (real)(order + q)) : (real)INFINITY;
                if (fq > best) { best = fq; pick = q; }
            }
            order += pick - 1;
            real factor = safety * best;
            factor = factor < 10 ? factor : (real)10;
            h *= factor;
            bdf_change_D(w, order, factor);
            n_equal = 0;
        }
        /* saves in (t_old, t]: the interpolating polynomial of the differences now held */
        while (save_ptr < T && t_save[save_ptr] <= t) {
            const real ts = t_save[save_ptr];
            if (ts == t) memcpy(out + save_ptr * W, D, sizeof(real) * (size_t)G);
            else bdf_dense(w, order, t, h, ts > t_old ? ts : t_old, out + save_ptr * W);
            save_ptr++;
        }
        if (t >= t_end) { res.status = SUCCESS; break; }
        if (c->steady_tol >= 0) {
            set_time(r, t);
            rhs_state(r, D, f0);
            res.rhs++;
            if (is_steady(f0, D, G, c->steady_tol)) {
                for (int64_t si = save_ptr; si < T; ++si) memcpy(out + si * W, D, sizeof(real) * W);
                save_ptr = T;
                res.status = SUCCESS;
                t = t_end;
                break;
            }
        }
    }
    res.t_last = t;
    res.saved_to = save_ptr;
    memcpy(y_last, D, sizeof(real) * (size_t)G);
    return res;
}

static void make_bdf(Stepper *m, const void *method, int64_t G, int64_t W, real *work) {
    (void)method;
    (void)W;
    BdfWork *w = (BdfWork *)malloc(sizeof(BdfWork) + lu_bytes(G));
    w->G = G;
    w->D = work;
    w->J = w->D + (BDF_MAX_ORDER + 3) * G;
    w->LU = w->J + G * G;
    w->yp = w->LU + G * G;
    w->psi = w->yp + G;
    w->yn = w->psi + G;
    w->d = w->yn + G;
    w->f = w->d + G;
    w->dy = w->f + G;
    w->iscale = w->dy + G; /* 1 / (atol + rtol |y|) */
    w->tmp = w->iscale + G; /* (MAX_ORDER + 1) G */
    w->lu = lu_place(G, w->LU, w + 1);
    bdf_constants(w);
    m->ws = w;
}

/* The BDF kernel over every row (no tangents; the PI controller's settings and the save window
   are not used) */
static int bdf_solve(const Problem *p, SOLVE_ARGS, LOOP_ARGS) {
    if (p->Q || stiff_after > 0) return -1;
    LoopSettings c = {T, window, t_save, rtol, atol, first_step, steady_tol, safety, beta, factor_min,
                      factor_max, max_steps, 0, check_every, use_rho};
    Stepper proto = {NULL, NULL, 0, 1, NULL, NULL, NULL, NULL, 0};
    const int64_t G = p->G;
    run_rows(p, &c, t_start, x0, bdf_row, make_bdf, NULL, (BDF_MAX_ORDER + 3) * G + 2 * G * G + 14 * G, proto,
             out, status_out, counters, t_last, y_last, nthreads, NULL);
    return 0;
}

#endif
