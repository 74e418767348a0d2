/* The interface between a compiled model's generated rate library (rates.c over the header of
   genenet.kinetics.codegen, one small library per model structure) and the integrators of
   compiled.c (one library for all models): sizes, sparsity and the two rate functions. */

#ifndef GENENET_RATES_H
#define GENENET_RATES_H

#include "common.h"

typedef void (*RatesFn)(real t, const real *x, const real *p, real *v);
typedef void (*RatesDFn)(real t, const real *x, const real *p, real *v, real *vx, real *vp);

/* the generated rate library of one model structure */
typedef struct {
    int64_t R, P, NX, NP;              /* reactions, parameters, nonzeros of dv/dx and of dv/dp */
    const int32_t *vx_r, *vx_s;        /* (NX) entry e of vx is dv[vx_r[e]] / dx[vx_s[e]] */
    const int32_t *vp_r, *vp_p;        /* (NP) entry e of vp is dv[vp_r[e]] / dp[vp_p[e]] */
    RatesFn rates;
    RatesDFn rates_d;
} Rates;

#endif
