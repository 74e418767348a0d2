/* The interface between a compiled model's generated rate library (rates.c over the header of
   genenet.kinetics.codegen, one small library per model structure) and the integrators of
   compiled.c (one library for all models): sizes, sparsity and the rate functions. */

#ifndef GENENET_RATES_H
#define GENENET_RATES_H

#include "common.h"

typedef void (*RatesFn)(real t, const real *x, const real *p, real *v);
typedef void (*RatesDFn)(real t, const real *x, const real *p, real *v, real *vx, real *vp);
typedef void (*PrepareFn)(const real *p, real *q);
typedef void (*RatesTFn)(real t, const real *x, const real *p, real *vt);

/* the generated rate library of one model structure */
typedef struct {
    int64_t R, P, NX, NP, NQ;          /* reactions, parameters, nonzeros of dv/dx and of dv/dp, hoisted */
    const int32_t *vx_r, *vx_s;        /* (NX) entry e of vx is dv[vx_r[e]] / dx[vx_s[e]] */
    const int32_t *vp_r, *vp_p;        /* (NP) entry e of vp is dv[vp_r[e]] / dp[vp_p[e]] */
    RatesFn rates;          /* v from x and q: the rates with their parameter-only parts precomputed */
    RatesDFn rates_d;       /* v, dv/dx, dv/dp from x and p */
    PrepareFn prepare;      /* q (NQ) from p: once per row and solve */
    int64_t NT;             /* rates that read t; 0: an autonomous model */
    RatesTFn rates_t;       /* dv/dt (R) from x and p */
} Rates;

#endif
