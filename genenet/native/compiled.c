/* The native integrators, adjoint and steady-state iterations for compiled symbolic models: the
   same steppers, step loop, sweep and Newton/continuation as the Hill kernels (steppers.h,
   driver.h, adjoint.h, roots.h) over the model of compiled.h, whose rates come from a model's own
   small rate library (rates.c) through the Rates interface. Compiled once per precision, like
   kernels.c (genenet/native/build.py); genenet/native/compiled.py builds the rate libraries. */

#define GENENET_MODEL_H "compiled.h"
#include "steppers.h"
#include "bdf.h"
#include "roots.h"
#include "adjoint.h"

#ifndef GENENET_SOURCE_HASH
#define GENENET_SOURCE_HASH ""
#endif

const char *genenet_source_hash(void) { return GENENET_SOURCE_HASH; }

#define MODEL_ARGS                                                                                          \
    const Rates *m, int64_t B, int64_t G, const real *params, const real *scale, const real *mult, const real *add,          \
        const uint8_t *clamp, const int32_t *n_ptr, const int32_t *n_row, const real *n_val, const uint8_t *syn, \
        const int32_t *s_ptr, const int32_t *s_col, const real *s_val
#define MODEL_PASS params, scale, mult, add, clamp, n_ptr, n_row, n_val, syn, s_ptr, s_col, s_val
#define LOOP_PASS                                                                                           \
    first_step, max_steps, steady_tol, window, safety, beta, factor_min, factor_max, stiff_after, check_every, \
        use_rho, out, status_out, counters, t_last, y_last, nthreads

int genenet_model_erk(MODEL_ARGS, int64_t Q, const real *pd, const real *scaled, SOLVE_ARGS, int64_t S,
                      const double *A, const double *E, int64_t D, const double *P, int64_t error_order, LOOP_ARGS,
                      Tape *tapes) {
    Problem p = {B, G, Q, m, MODEL_PASS, pd, scaled, 0, NULL, NULL, NULL, NULL};
    return erk_solve(&p, T, t_save, t_start, x0, rtol, atol, S, A, E, D, P, error_order, LOOP_PASS, tapes);
}

int genenet_model_rodas(MODEL_ARGS, SOLVE_ARGS, int64_t S, double gamma, const double *A, const double *Cm,
                        const double *Bv, const double *E, int64_t M, const double *H, int64_t error_order,
                        const double *Cv, const double *Dv, LOOP_ARGS) {
    Problem p = {B, G, 0, m, MODEL_PASS, NULL, NULL, 0, NULL, NULL, NULL, NULL};
    return rodas_solve(&p, T, t_save, t_start, x0, rtol, atol, S, gamma, A, Cm, Bv, E, M, H, error_order, Cv, Dv,
                       LOOP_PASS);
}

int genenet_model_bdf(MODEL_ARGS, SOLVE_ARGS, LOOP_ARGS) {
    Problem p = {B, G, 0, m, MODEL_PASS, NULL, NULL, 0, NULL, NULL, NULL, NULL};
    return bdf_solve(&p, T, t_save, t_start, x0, rtol, atol, LOOP_PASS);
}

int genenet_model_roots(MODEL_ARGS, int64_t nlaw, const real *L, const int32_t *law_pivot, const real *totals,
                        const uint8_t *law_on, real *x, const uint8_t *active, int64_t mode, double tol, int64_t max_iter,
                        int64_t give_up, double dt0, uint8_t *converged, int64_t *iters, int64_t nthreads) {
    Problem p = {B, G, 0, m, MODEL_PASS, NULL, NULL, nlaw, L, law_pivot, totals, law_on};
    return roots_solve(&p, x, active, mode, tol, max_iter, give_up, dt0, converged, iters, nthreads);
}

/* f (B, G) and, when J is not NULL, the Jacobian (B, G, G) at x (B, G), of the reduced system where
   nlaw > 0: for the tests */
int genenet_model_rhs(MODEL_ARGS, int64_t nlaw, const real *L, const int32_t *law_pivot, const real *totals,
                      const uint8_t *law_on, const real *x, real *f, real *J) {
    Problem p = {B, G, 0, m, MODEL_PASS, NULL, NULL, nlaw, L, law_pivot, totals, law_on};
    real *work = (real *)malloc(sizeof(real) * (size_t)(model_work(&p) + 1));
    for (int64_t b = 0; b < B; ++b) {
        Row r = model_row(&p, b, work, NULL);
        rhs_state(&r, x + b * G, f + b * G);
        if (J) jacobian(&r, x + b * G, J + b * G * G);
    }
    free(work);
    return 0;
}

/* The discrete adjoint over the tapes of a differentiable genenet_model_erk solve (adjoint.h): the
   cotangents of x0 (B, G), of the parameters pb (B, max(P, 1)) and of reaction_scale sb (B, R, or
   NULL), each overwritten, from those of the saves ybar (B, T, G) and of the final state (B, G). */
int genenet_model_erk_adjoint(MODEL_ARGS, int64_t T, const real *t_save, int64_t S, const double *A, int64_t D,
                              const double *P, const Tape *tapes, const real *ybar, const real *ylast_bar, real *x0b,
                              real *pb, real *sb, int64_t nthreads) {
    if (S > 16 || D > 8) return -1;
    ErkMethod e = erk_method(S, A, NULL, D, P);
    Problem p = {B, G, 0, m, MODEL_PASS, NULL, NULL, 0, NULL, NULL, NULL, NULL};
    memset(pb, 0, sizeof(real) * (size_t)(B * (m->P > 0 ? m->P : 1)));
    if (sb) memset(sb, 0, sizeof(real) * (size_t)(B * m->R));
#pragma omp parallel num_threads((int)nthreads)
    {
        real *work = (real *)malloc(sizeof(real) * (size_t)(SWEEP_WORK(S, G) + model_work(&p) + 64));
#pragma omp for schedule(dynamic, 4)
        for (int64_t b = 0; b < B; ++b) {
            Row r = model_row(&p, b, work + SWEEP_WORK(S, G), NULL);
            VjpCtx c = {pb + b * (m->P > 0 ? m->P : 1), sb ? sb + b * m->R : NULL};
            erk_adjoint_sweep(&r, tapes + b, &e, t_save, T, ybar + b * T * G, ylast_bar + b * G, x0b + b * G, &c,
                              work);
        }
        free(work);
    }
    return 0;
}
