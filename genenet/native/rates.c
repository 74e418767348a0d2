/* One model structure's rate library: the generated header GM_HEADER (a path, -DGM_HEADER="...")
   behind the Rates interface of rates.h, for the integrators of compiled.c. Small: it compiles in
   a fraction of a second, once per model structure and precision (genenet/native/compiled.py). */

#include "rates.h"
#include GM_HEADER

#ifndef GENENET_SOURCE_HASH
#define GENENET_SOURCE_HASH ""
#endif

const char *genenet_source_hash(void) { return GENENET_SOURCE_HASH; }

static void rates_fn(real t, const real *x, const real *q, real *v) { gm_rates_q(t, x, q, v); }

static void prepare_fn(const real *p, real *q) { gm_prepare(p, q); }

static void rates_d_fn(real t, const real *x, const real *p, real *v, real *vx, real *vp) {
    gm_rates_d(t, x, p, v, vx, vp);
}

static void rates_t_fn(real t, const real *x, const real *p, real *vt) { gm_rates_t(t, x, p, vt); }

/* species, reactions, parameters, nonzeros of dv/dx and dv/dp */
void genenet_rates_sizes(int64_t *out) {
    out[0] = GM_S;
    out[1] = GM_R;
    out[2] = GM_P;
    out[3] = GM_NX;
    out[4] = GM_NP;
}

void genenet_rates_fill(Rates *out) {
    Rates m = {GM_R, GM_P, GM_NX, GM_NP, GM_NQ, gm_vx_r, gm_vx_s, gm_vp_r, gm_vp_p, rates_fn, rates_d_fn,
               prepare_fn, GM_NT, rates_t_fn};
    *out = m;
}

int64_t genenet_rates_bytes(void) { return (int64_t)sizeof(Rates); }
