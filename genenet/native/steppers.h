/* The step methods of the whole-trajectory integrators and the loop over rows, generic over the
   model (common.h says what a model header provides):

   - an FSAL explicit Runge-Kutta pair (Dopri5, Tsit5) with its dense output, optionally carrying
     Q forward-sensitivity tangents beside the state (erk_solve);
   - a stiffly accurate Rosenbrock method (Rodas4, Rodas5P) in Hairer & Wanner's transformed form,
     W = I/(h gamma) - J from the model's analytic Jacobian, one LU with partial pivoting per step,
     its solves over the factors' nonzeros (a zero pivot or a non-finite W rejects the step: SINGULAR) (rodas_solve).

   Rows are spread over threads with OpenMP, one row per task. */

#ifndef GENENET_STEPPERS_H
#define GENENET_STEPPERS_H

#include "driver.h"
#include "linalg.h"

/* ------------------------------------------------------------------ explicit Runge-Kutta */

typedef struct {
    int64_t S, D, W;
    const real *a, *e, *P, *c; /* (S, S), (S,), (S, D), stage times (S,) */
    real *ks, *Ys, *tmp;       /* stages (S, W), stage inputs (S, W), (W) */
} ErkWork;

static int erk_step(Stepper *m, const Row *r, const real *y, const real *f0, real h, real *y1, real *err,
                    real *f1) {
    ErkWork *w = (ErkWork *)m->ws;
    const int64_t S = w->S, W = w->W;
    real *ks = w->ks;
    memcpy(ks, f0, sizeof(real) * W);
    memcpy(w->Ys, y, sizeof(real) * W);
    /* stages 1..S-1; the last (FSAL) one is f(t1, y1) with y1 = its stage value */
    for (int64_t s = 1; s < S; ++s) {
        real *Yi = w->Ys + s * W;
        weighted(w->a + s * S, s, ks, W, W, w->tmp);
        for (int64_t i = 0; i < W; ++i) Yi[i] = y[i] + h * w->tmp[i];
        if (s == S - 1) memcpy(y1, Yi, sizeof(real) * W);
        set_time(r, m->t + w->c[s] * h);
        rhs(r, Yi, ks + s * W);
    }
    const int64_t E = steer_width(r);
    weighted(w->e, S, ks, W, E, err);
    for (int64_t i = 0; i < E; ++i) err[i] = h * err[i];
    memcpy(f1, ks + (S - 1) * W, sizeof(real) * W);
    return 0;
}

/* Hairer's estimate from the last two stages, both at t + h (Dopri5, Tsit5): h |k_S - k_(S-1)| /
   |Y_S - Y_(S-1)|, as ExplicitRK.stiffness (the state columns only) */
static real erk_stiffness(Stepper *m, const Row *r, real h) {
    ErkWork *w = (ErkWork *)m->ws;
    const int64_t S = w->S, W = w->W, G = r->G;
    real diff[16];
    for (int64_t j = 0; j < S - 1; ++j) diff[j] = w->a[(S - 1) * S + j] - w->a[(S - 2) * S + j];
    weighted(diff, S - 1, w->ks, W, G, w->tmp);
    const real *kl = w->ks + (S - 1) * W, *kp = w->ks + (S - 2) * W;
    real num = 0, den = 0;
    for (int64_t i = 0; i < G; ++i) {
        real df = kl[i] - kp[i], dy = h * w->tmp[i];
        num += df * df;
        den += dy * dy;
    }
    return h * sqrt(num / (den > (real)1e-300 ? den : (real)1e-300));
}

/* b_j(th) = sum_d P[j, d] th^(d + 1): the dense output's stage weights (the forward's and the adjoint's) */
static void dense_weights(const real *P, int64_t S, int64_t D, real th, real *b) {
    for (int64_t j = 0; j < S; ++j) {
        real acc = 0, pw = th;
        for (int64_t d = 0; d < D; ++d) { acc += P[j * D + d] * pw; pw *= th; }
        b[j] = acc;
    }
}

static void erk_dense(Stepper *m, const real *y, const real *y1, real h, real th, real *dst) {
    (void)y1;
    ErkWork *w = (ErkWork *)m->ws;
    const int64_t S = w->S, W = w->W;
    real b[16];
    dense_weights(w->P, S, w->D, th, b);
    for (int64_t i = 0; i < W; ++i) {
        real acc = 0;
        for (int64_t j = 0; j < S; ++j) acc += b[j] * w->ks[j * W + i];
        dst[i] = y[i] + h * acc;
    }
}

/* ------------------------------------------------------------------ Rosenbrock */

typedef struct {
    int64_t S, M, G;
    real gamma;
    const real *a, *C, *b, *e, *H, *c, *d; /* (S, S), (S, S), (S,), (S,), (M, S), stage times, f_t weights */
    real *ks, *U, *rhs, *Wm, *Dn, *ft;     /* (S, G), (G), (G), (G, G), (M, G), (G) */
    Lu lu;                                 /* W's factors (in Wm) */
} RodasWork;

/* acc = base + sum_j c_j k_j over the nonzero c_j, added in order as the torch step does */
static void add_weighted(const real *base, const real *c, int64_t n, const real *ks, int64_t G, real *acc) {
    if (base) memcpy(acc, base, sizeof(real) * (size_t)G);
    else memset(acc, 0, sizeof(real) * (size_t)G);
    for (int64_t j = 0; j < n; ++j) {
        if (c[j] == 0) continue;
        const real cj = c[j], *kj = ks + j * G;
        for (int64_t i = 0; i < G; ++i) acc[i] = acc[i] + cj * kj[i];
    }
}

static int rodas_step(Stepper *m, const Row *r, const real *y, const real *f0, real h, real *y1, real *err,
                      real *f1) {
    RodasWork *w = (RodasWork *)m->ws;
    const int64_t S = w->S, G = w->G;
    real *Wm = w->Wm, *ks = w->ks;
    set_time(r, m->t);
    jacobian(r, y, Wm);
    const int timed = !model_autonomous(r); /* + d_s h f_t in each stage (non-autonomous rates) */
    if (timed) time_derivative(r, y, w->ft);
    const real diag = (real)1 / (w->gamma * h);
    real total = 0;
    for (int64_t i = 0; i < G * G; ++i) { Wm[i] = -Wm[i]; total += Wm[i]; }
    for (int64_t i = 0; i < G; ++i) Wm[i * G + i] += diag;
    if (!isfinite(total + diag) || lu_factor_sparse(&w->lu)) return 1;
    for (int64_t s = 0; s < S; ++s) {
        const real *fi = f0;
        if (s > 0) {
            add_weighted(y, w->a + s * S, s, ks, G, w->U);
            set_time(r, m->t + w->c[s] * h);
            rhs(r, w->U, w->rhs);
            fi = w->rhs;
        }
        real *k = ks + s * G;
        if (fi != k) memcpy(k, fi, sizeof(real) * (size_t)G);
        for (int64_t j = 0; j < s; ++j) { /* + (C_sj / h) k_j */
            real cj = w->C[s * S + j];
            if (cj == 0) continue;
            real q = cj / h;
            const real *kj = ks + j * G;
            for (int64_t i = 0; i < G; ++i) k[i] = k[i] + q * kj[i];
        }
        if (timed && w->d[s] != 0) {
            const real q = w->d[s] * h;
            for (int64_t i = 0; i < G; ++i) k[i] = k[i] + q * w->ft[i];
        }
        lu_solve_sparse(&w->lu, k);
    }
    add_weighted(y, w->b, S, ks, G, y1);
    add_weighted(NULL, w->e, S, ks, G, err);
    for (int64_t q = 0; q < w->M; ++q) add_weighted(NULL, w->H + q * S, S, ks, G, w->Dn + q * G);
    set_time(r, m->t + h);
    rhs(r, y1, f1);
    return 0;
}

/* (1 - th) y + th (y1 + (1 - th) (D_1 + th (D_2 + th D_3 ...))) */
static void rodas_dense(Stepper *m, const real *y, const real *y1, real h, real th, real *dst) {
    (void)h;
    RodasWork *w = (RodasWork *)m->ws;
    const int64_t G = w->G, M = w->M;
    for (int64_t i = 0; i < G; ++i) {
        real acc = w->Dn[(M - 1) * G + i];
        for (int64_t q = M - 2; q >= 0; --q) acc = w->Dn[q * G + i] + th * acc;
        dst[i] = (1 - th) * y[i] + th * (y1[i] + (1 - th) * acc);
    }
}

typedef struct {
    int64_t S, D;
    real a[16 * 16], e[16], P[16 * 8], c[16]; /* c_s = sum_l a_sl: stage s is at t + c_s h */
} ErkMethod;

/* the tableau in the kernel's precision (S <= 16, D <= 8; E may be NULL), stage times c_s = sum_l a_sl */
static ErkMethod erk_method(int64_t S, const double *A, const double *E, int64_t D, const double *P) {
    ErkMethod e = {S, D, {0}, {0}, {0}, {0}};
    for (int64_t i = 0; i < S; ++i) {
        double c = 0;
        for (int64_t j = 0; j < S; ++j) {
            e.a[i * S + j] = (real)A[i * S + j];
            c += A[i * S + j];
        }
        e.c[i] = (real)c;
        e.e[i] = E ? (real)E[i] : (real)0;
    }
    for (int64_t i = 0; i < S * D; ++i) e.P[i] = (real)P[i];
    return e;
}

static void make_erk(Stepper *m, const void *method, int64_t G, int64_t W, real *work) {
    (void)G;
    const ErkMethod *e = (const ErkMethod *)method;
    ErkWork *w = (ErkWork *)malloc(sizeof(ErkWork));
    *w = (ErkWork){e->S, e->D, W, e->a, e->e, e->P, e->c, work, work + e->S * W, work + 2 * e->S * W};
    m->ws = w;
    m->stage_inputs = w->Ys;
}

typedef struct {
    int64_t S, M;
    real gamma, a[16 * 16], C[16 * 16], b[16], e[16], H[8 * 16], c[16], d[16];
} RodasMethod;

static void make_rodas(Stepper *m, const void *method, int64_t G, int64_t W, real *work) {
    (void)W;
    const RodasMethod *d = (const RodasMethod *)method;
    RodasWork *w = (RodasWork *)malloc(sizeof(RodasWork) + lu_bytes(G));
    real *ks = work, *U = ks + d->S * G, *rh = U + G, *Wm = rh + G, *Dn = Wm + G * G, *ft = Dn + d->M * G;
    *w = (RodasWork){d->S, d->M, G, d->gamma, d->a, d->C, d->b, d->e, d->H, d->c, d->d, ks, U, rh, Wm, Dn, ft,
                     lu_place(G, Wm, w + 1)};
    m->ws = w;
}

/* every row: the model's row (model_row), the method's work (make_stepper), then drive_row */
typedef void (*MakeStepper)(Stepper *m, const void *method, int64_t G, int64_t W, real *work);
/* what runs one row: drive_row for the one-step methods, bdf_row (bdf.h) for the multistep one */
typedef RowResult (*RowDriver)(Stepper *m, const Row *r, int64_t W, const LoopSettings *c, real t_begin,
                               const real *y0, real *out, real *y_last, real *work, Tape *tape);

static void run_rows(const Problem *p, const LoopSettings *c, const real *t_start, const real *x0,
                     RowDriver drive, MakeStepper make, const void *method, int64_t method_work, Stepper proto,
                     real *out, int64_t *status_out, int64_t *counters, real *t_last, real *y_last, int64_t nthreads,
                     Tape *tapes) {
    const int64_t B = p->B, G = p->G, W = (1 + p->Q) * G, T = c->T, MW = model_work(p);
#pragma omp parallel num_threads((int)nthreads)
    {
        const int64_t stiff_work = c->stiff_after > 0 ? G * G + 2 * G : 0;
        real *work = (real *)malloc(sizeof(real) * (size_t)(4 * W + 2 * G + MW + method_work + stiff_work + 64));
        real *loop_work = work, *rw = loop_work + 4 * W + 2 * G, *mw = rw + MW;
        int *iw = (int *)malloc(sizeof(int) * (size_t)(model_iwork(p) + 1));
        Stepper m = proto;
        make(&m, method, G, W, mw);
        m.stiff_work = stiff_work ? mw + method_work : NULL;
#pragma omp for schedule(dynamic, 4)
        for (int64_t b = 0; b < B; ++b) {
            Row r = model_row(p, b, rw, iw);
            real tb = t_start ? t_start[b] : c->t_save[0];
            real *yb = out + b * T * W;
            RowResult res = drive(&m, &r, W, c, tb, x0 + b * W, yb, y_last + b * W, loop_work, tapes ? tapes + b : NULL);
            /* NaN where the row wrote nothing (out arrives uninitialized): before its start, after a failure */
            const int64_t from = tb <= c->t_save[0] ? 1 : 0, to = first_save_after(c->t_save, T, tb);
            for (int64_t q = from * W; q < to * W; ++q) yb[q] = (real)NAN;
            for (int64_t q = res.saved_to * W; q < T * W; ++q) yb[q] = (real)NAN;
            status_out[b] = res.status;
            counters[b] = res.steps;
            counters[B + b] = res.accepted;
            counters[2 * B + b] = res.steps - res.accepted;
            counters[3 * B + b] = res.rhs;
            t_last[b] = res.t_last;
        }
        free(m.ws);
        free(work);
        free(iw);
    }
}

#define LOOP_ARGS                                                                                           \
    double first_step, int64_t max_steps, double steady_tol, int64_t window, double safety, double beta,    \
        double factor_min, double factor_max, int64_t stiff_after, int64_t check_every, int64_t use_rho,    \
        real *out, int64_t *status_out, int64_t *counters, real *t_last, real *y_last, int64_t nthreads

#define SOLVE_ARGS                                                                                          \
    int64_t T, const real *t_save, const real *t_start, const real *x0, const real *rtol, const real *atol

/* The explicit kernel over every row of a model's Problem (p->Q tangents ride along; tapes: NULL, or
   B zeroed Tape structs that record every row's accepted steps). -1: a tableau too large; -2:
   stiffness detection asked for where it cannot run. */
static int erk_solve(const Problem *p, SOLVE_ARGS, int64_t S, const double *A, const double *E, int64_t D,
                     const double *P, int64_t error_order, LOOP_ARGS, Tape *tapes) {
    if (S > 16 || D > 8 || (tapes && p->Q)) return -1;
    ErkMethod e = erk_method(S, A, E, D, P);
    if (stiff_after > 0 && (S < 3 || check_every < 2 || p->Q)) return -2;
    LoopSettings c = {T, window, t_save, rtol, atol, first_step, steady_tol, safety, beta, factor_min,
                      factor_max, max_steps, stiff_after, check_every, use_rho};
    Stepper proto = {erk_step, erk_dense, S - 1, error_order, NULL, NULL, erk_stiffness, NULL};
    const int64_t W = (1 + p->Q) * p->G;
    run_rows(p, &c, t_start, x0, drive_row, make_erk, &e, (2 * S + 1) * W, proto, out, status_out, counters, t_last,
             y_last, nthreads, tapes);
    return 0;
}

/* The Rosenbrock kernel over every row (no tangents). Cv, Dv: the stages' times and weights of f_t
   (RosenbrockTableau.c, .d), NULL for a model that does not read t. */
static int rodas_solve(const Problem *p, SOLVE_ARGS, int64_t S, double gamma, const double *A, const double *Cm,
                       const double *Bv, const double *E, int64_t M, const double *H, int64_t error_order,
                       const double *Cv, const double *Dv, LOOP_ARGS) {
    if (S > 16 || M > 8 || p->Q) return -1;
    RodasMethod d = {S, M, (real)gamma, {0}, {0}, {0}, {0}, {0}, {0}, {0}};
    for (int64_t i = 0; i < S * S; ++i) { d.a[i] = (real)A[i]; d.C[i] = (real)Cm[i]; }
    for (int64_t i = 0; i < S; ++i) {
        d.b[i] = (real)Bv[i];
        d.e[i] = (real)E[i];
        d.c[i] = Cv ? (real)Cv[i] : (real)0;
        d.d[i] = Dv ? (real)Dv[i] : (real)0;
    }
    for (int64_t i = 0; i < M * S; ++i) d.H[i] = (real)H[i];
    if (stiff_after > 0) return -2; /* stiffness detection is for the explicit methods */
    LoopSettings c = {T, window, t_save, rtol, atol, first_step, steady_tol, safety, beta, factor_min,
                      factor_max, max_steps, 0, check_every, use_rho};
    Stepper proto = {rodas_step, rodas_dense, S, error_order, NULL, NULL, NULL, NULL};
    const int64_t G = p->G;
    run_rows(p, &c, t_start, x0, drive_row, make_rodas, &d, (S + 3 + M) * G + G * G, proto, out, status_out, counters,
             t_last, y_last, nthreads, NULL);
    return 0;
}

#endif
