/* A compiled symbolic model (genenet.kinetics): the rates v(x, p) (R) of a generated rate library
   (genenet.kinetics.codegen: gm_rates, gm_rates_d and the sparsity of dv/dx, dv/dp, compiled on
   its own and handed over as function pointers and arrays, so the integrators here compile once
   for all models) and the stoichiometry, under the condition effects of one row:

     v_r   = scale_r * gm_rate_r(x, p)                     (scale: reaction_scale, or 1)
     P_i   = sum over synthesis reactions r of N_ir v_r     (production)
     D_i   = -sum over the other reactions r of N_ir v_r    (degradation)
     dx_i  = mult_i P_i + add_i - D_i,   0 for clamped species,

   genenet.kinetics.symbolic.SymbolicModel's equations. N arrives as data, by reaction (CSC), so
   models with the same rate laws share a library.

   Forward tangents (Q directions, state [x, xdot_1..xdot_Q]):
     vdot_r = scale_r (sum_s dv_r/dx_s xdot_s + sum_k dv_r/dp_k pdot_k) + scaledot_r gm_rate_r
     dxdot_i = mult_i Pdot_i - Ddot_i   (the condition effects are constants), 0 where clamped.
   Jacobian: J_is = sum_r M_ir scale_r dv_r/dx_s with M_ir = mult_i N_ir (synthesis) or N_ir.

   Rates that read t get it from the row's clock, which the steppers set to each stage's time
   (set_time); the Rosenbrock steps add d(dx)/dt = M scale dv/dt (time_derivative; the inputs `add`
   are constant between switching times). Everything here is plain arithmetic over arrays, as the
   generated code is. */

#ifndef GENENET_COMPILED_H
#define GENENET_COMPILED_H

#include "rates.h"

typedef struct Problem {
    int64_t B, G, Q;
    const Rates *m;
    const real *params;      /* (B, P) */
    const real *scale;       /* (B, R) reaction_scale, or NULL */
    const real *mult, *add;  /* (B, G) or NULL */
    const uint8_t *clamp;    /* (B, G) or NULL */
    const int32_t *n_ptr;    /* (R + 1) column starts of N */
    const int32_t *n_row;    /* (nnz) species of each entry */
    const real *n_val;       /* (nnz) N_ir */
    const uint8_t *syn;      /* (R) 1: a synthesis reaction */
    /* N by species: row i's synthesis entries are s_ptr[2i]..s_ptr[2i+1], the others up to
       s_ptr[2i+2]; s_col the reaction, s_val N_ir */
    const int32_t *s_ptr, *s_col;
    const real *s_val;
    const real *pd;          /* (B, Q, P) parameter tangents, or NULL */
    const real *scaled;      /* (B, Q, R) reaction_scale tangents, or NULL */
    /* conservation laws for the steady-state iterations (genenet.conservation): law k's pivot
       equation becomes T_k - L_k x where law_on; nlaw = 0 for the integrators */
    int64_t nlaw;
    const real *L;           /* (nlaw, G) */
    const int32_t *law_pivot; /* (nlaw) */
    const real *totals;      /* (B, nlaw) */
    const uint8_t *law_on;   /* (B, nlaw) */
} Problem;

typedef struct Row {
    int64_t G, Q;
    const Problem *pr;
    const Rates *m;
    const real *p, *scale, *mult, *add;
    const uint8_t *clamp;
    const real *pd, *scaled;
    const real *totals;
    const uint8_t *law_on;
    real *v, *vx, *vp, *vd, *P, *D; /* work: R, NX, NP, R, G, G */
    real *q;                        /* the row's hoisted parameter expressions (NQ) */
    real *clock;                    /* the time the rates are evaluated at (set_time) */
    /* the system hook of driver.h (unused by this model's kernels) */
    void (*system)(const struct Row *r, const real *y, real *dy);
    int64_t E;
    real *sw;
} Row;

static int64_t model_work(const Problem *p) {
    return 2 * p->m->R + p->m->NX + p->m->NP + p->m->NQ + 2 * p->G + 9;
}
static int64_t model_iwork(const Problem *p) { (void)p; return 0; }

static Row model_row(const Problem *p, int64_t b, real *work, int *iwork) {
    (void)iwork;
    const int64_t G = p->G, Q = p->Q;
    Row r;
    r.G = G;
    r.Q = Q;
    const int64_t R = p->m->R, P = p->m->P;
    r.pr = p;
    r.m = p->m;
    r.p = p->params + b * P;
    r.scale = p->scale ? p->scale + b * R : NULL;
    r.mult = p->mult ? p->mult + b * G : NULL;
    r.add = p->add ? p->add + b * G : NULL;
    r.clamp = p->clamp ? p->clamp + b * G : NULL;
    r.pd = p->pd ? p->pd + b * Q * P : NULL;
    r.scaled = p->scaled ? p->scaled + b * Q * R : NULL;
    r.totals = p->nlaw ? p->totals + b * p->nlaw : NULL;
    r.law_on = p->nlaw ? p->law_on + b * p->nlaw : NULL;
    r.v = work;
    r.vx = r.v + R;
    r.vp = r.vx + p->m->NX + 1;
    r.vd = r.vp + p->m->NP + 1;
    r.P = r.vd + R;
    r.D = r.P + G;
    r.q = r.D + G;
    r.clock = r.q + p->m->NQ;
    *r.clock = 0;
    p->m->prepare(r.p, r.q);
    r.system = NULL;
    r.E = 0;
    r.sw = NULL;
    return r;
}

/* out = mult P(w) + add - D(w) for the rates w (R), 0 where clamped; with_add: add the inputs.
   By species (N's CSR, each row's synthesis entries first): two short sums per species */
static void stoich_apply(const Row *r, const real *restrict w, int with_add, real *restrict out) {
    const Problem *p = r->pr;
    const int64_t G = r->G;
    const int32_t *restrict ptr = p->s_ptr, *restrict col = p->s_col;
    const real *restrict val = p->s_val;
    for (int64_t i = 0; i < G; ++i) {
        real P = 0, D = 0;
        int32_t e = ptr[2 * i];
        for (; e < ptr[2 * i + 1]; ++e) P += val[e] * w[col[e]];
        for (; e < ptr[2 * i + 2]; ++e) D -= val[e] * w[col[e]];
        if (r->mult) P = P * r->mult[i];
        if (with_add && r->add) P = P + r->add[i];
        out[i] = (r->clamp && r->clamp[i]) ? (real)0 : P - D;
    }
}

static void rhs_state(const Row *r, const real *x, real *dx) {
    r->m->rates(*r->clock, x, r->q, r->v);
    if (r->scale)
        for (int64_t k = 0; k < r->m->R; ++k) r->v[k] *= r->scale[k];
    stoich_apply(r, r->v, 1, dx);
    const Problem *p = r->pr;
    for (int64_t k = 0; k < p->nlaw; ++k) { /* the moiety-reduced system: T_k - L_k x */
        if (!r->law_on[k]) continue;
        real acc = r->totals[k];
        for (int64_t j = 0; j < r->G; ++j) acc -= p->L[k * r->G + j] * x[j];
        dx[p->law_pivot[k]] = acc;
    }
}

static inline void set_time(const Row *r, real t) { *r->clock = t; }
static inline int model_autonomous(const Row *r) { return r->m->NT == 0; }

/* d(dx)/dt = mult P(scale dv/dt) - D(scale dv/dt), 0 where clamped */
static void time_derivative(const Row *r, const real *x, real *ft) {
    real *vt = r->vd;
    r->m->rates_t(*r->clock, x, r->p, vt);
    if (r->scale)
        for (int64_t k = 0; k < r->m->R; ++k) vt[k] *= r->scale[k];
    stoich_apply(r, vt, 0, ft);
}

static void rhs_tangents(const Row *r, const real *x, real *dx) {
    const int64_t G = r->G;
    const Rates *m = r->m;
    m->rates_d(*r->clock, x, r->p, r->v, r->vx, r->vp);
    for (int64_t j = 0; j < r->Q; ++j) {
        const real *xd = x + (1 + j) * G;
        real *vd = r->vd;
        memset(vd, 0, sizeof(real) * (size_t)m->R);
        for (int64_t e = 0; e < m->NX; ++e) vd[m->vx_r[e]] += r->vx[e] * xd[m->vx_s[e]];
        if (r->pd) {
            const real *pd = r->pd + j * m->P;
            for (int64_t e = 0; e < m->NP; ++e) vd[m->vp_r[e]] += r->vp[e] * pd[m->vp_p[e]];
        }
        if (r->scale)
            for (int64_t k = 0; k < m->R; ++k)
                vd[k] = vd[k] * r->scale[k] + (r->scaled ? r->scaled[j * m->R + k] * r->v[k] : (real)0);
        stoich_apply(r, vd, 0, dx + (1 + j) * G);
    }
}

/* J = d(dx)/dx, (G, G) row-major */
static void jacobian(const Row *r, const real *x, real *J) {
    const Problem *p = r->pr;
    const int64_t G = r->G;
    const Rates *m = r->m;
    memset(J, 0, sizeof(real) * (size_t)(G * G));
    m->rates_d(*r->clock, x, r->p, r->v, r->vx, r->vp);
    for (int64_t e = 0; e < m->NX; ++e) {
        const int64_t k = m->vx_r[e], s = m->vx_s[e];
        const real w = r->scale ? r->vx[e] * r->scale[k] : r->vx[e];
        for (int32_t q = p->n_ptr[k]; q < p->n_ptr[k + 1]; ++q) {
            const int64_t i = p->n_row[q];
            const real m = (p->syn[k] && r->mult) ? p->n_val[q] * r->mult[i] : p->n_val[q];
            J[i * G + s] += m * w;
        }
    }
    if (r->clamp)
        for (int64_t i = 0; i < G; ++i)
            if (r->clamp[i]) memset(J + i * G, 0, sizeof(real) * (size_t)G);
    for (int64_t k = 0; k < p->nlaw; ++k)
        if (r->law_on[k])
            for (int64_t j = 0; j < G; ++j) J[p->law_pivot[k] * G + j] = -p->L[k * G + j];
}

/* The hooks of adjoint.h: per stage, with the stage cotangent a (clamped species pass nothing),
     u_r = sum_i a_i M_ir,   w_r = scale_r u_r,
     Ybar_s += w_r dv_r/dx_s,   pbar_k += w_r dv_r/dp_k,   scalebar_r += u_r gm_rate_r,
   from one rates_d call at the stage input. pb (P), sb (R, or NULL) accumulate. */
typedef struct {
    real *pb, *sb;
} VjpCtx;

static void vjp_prepare(VjpCtx *c, const Row *r, int64_t NS, const real *Y) { (void)c; (void)r; (void)NS; (void)Y; }
static void vjp_skip(VjpCtx *c, const Row *r, int64_t s, int64_t NS) { (void)c; (void)r; (void)s; (void)NS; }
static void vjp_step_done(VjpCtx *c, const Row *r, int64_t NS) { (void)c; (void)r; (void)NS; }

static void vjp_stage(VjpCtx *c, const Row *r, int64_t s, const real *Ys, const real *a, real *Yb) {
    (void)s;
    const Problem *p = r->pr;
    const Rates *m = r->m;
    real *u = r->vd;
    m->rates_d(*r->clock, Ys, r->p, r->v, r->vx, r->vp);
    for (int64_t k = 0; k < m->R; ++k) {
        real acc = 0;
        for (int32_t q = p->n_ptr[k]; q < p->n_ptr[k + 1]; ++q) {
            const int64_t i = p->n_row[q];
            if (r->clamp && r->clamp[i]) continue;
            const real m = (p->syn[k] && r->mult) ? p->n_val[q] * r->mult[i] : p->n_val[q];
            acc += m * a[i];
        }
        if (c->sb) c->sb[k] += acc * r->v[k];
        u[k] = r->scale ? acc * r->scale[k] : acc;
    }
    for (int64_t e = 0; e < m->NX; ++e) Yb[m->vx_s[e]] += u[m->vx_r[e]] * r->vx[e];
    if (c->pb)
        for (int64_t e = 0; e < m->NP; ++e) c->pb[m->vp_p[e]] += u[m->vp_r[e]] * r->vp[e];
}

#endif
