/* Whole-trajectory adaptive integrators for the shifted-Hill model, one row per task.

   The CPU analogue of a per-trajectory GPU kernel (DiffEqGPU's EnsembleGPUKernel): each row
   runs its own step loop (driver.h) from its start to t_end with its own step size, so there is
   no per-step Python, no per-step tensor allocation and no lock-step with the other rows. Rows
   are spread over threads with OpenMP. The step methods (steppers.h): genenet_erk_hill, an FSAL
   explicit Runge-Kutta pair with optional forward-sensitivity tangents; genenet_rodas_hill, a
   Rosenbrock method with the analytic Jacobian. The same steppers and loop run compiled symbolic
   models (compiled.c); what is here beyond the entry points is the Hill model's own adjoint.

   Also the steady-state iterations of genenet.steady (roots.h: Newton, pseudo-transient
   continuation), one row per task.

   Model: hill.h. Compiled by genenet/native/build.py (at install time or first use) with REAL = float
   or double, GENENET_SOURCE_HASH the sources' hash and GENENET_ISA the instruction-set level. */

#include "steppers.h"
#include "bdf.h"
#include "roots.h"

#ifndef GENENET_SOURCE_HASH
#define GENENET_SOURCE_HASH ""
#endif
#ifndef GENENET_ISA
#define GENENET_ISA ""
#endif

/* what the library was built from and for: the loader checks both before it uses a prebuilt library */
const char *genenet_source_hash(void) { return GENENET_SOURCE_HASH; }
const char *genenet_isa(void) { return GENENET_ISA; }

/* ------------------------------------------------------------------ entry points */

#define PROBLEM_ARGS                                                                                        \
    int64_t B, int64_t G, int64_t K, int64_t T, const real *t_save, const real *t_start, const real *x0,     \
        const int32_t *slot_src, const real *c0, const real *c1, const real *inv_thr, const real *hill,     \
        const real *prod, const real *deg, const real *mult, const real *add, const uint8_t *clamp,         \
        const real *rtol, const real *atol
#define LOOP_PASS                                                                                           \
    first_step, max_steps, steady_tol, window, safety, beta, factor_min, factor_max, stiff_after, check_every, \
        use_rho, out, status_out, counters, t_last, y_last, nthreads

/* tapes: NULL, or B zeroed Tape structs (genenet_tapes_new) that record every row's accepted steps */
int genenet_erk_hill(PROBLEM_ARGS, int64_t Q, const real *c0d, const real *c1d, const real *itd,
                     const real *hilld, const real *prodd, const real *degd,
                     int64_t S, const double *A, const double *E, int64_t D, const double *P, int64_t error_order,
                     LOOP_ARGS, Tape *tapes) {
    Problem p = {B, G, K, Q, slot_src, c0, c1, inv_thr, hill, prod, deg, mult, add, clamp,
                 c0d, c1d, itd, hilld, prodd, degd};
    return erk_solve(&p, T, t_save, t_start, x0, rtol, atol, S, A, E, D, P, error_order, LOOP_PASS, tapes);
}

int genenet_rodas_hill(PROBLEM_ARGS, int64_t S, double gamma, const double *A, const double *Cm, const double *Bv,
                       const double *E, int64_t M, const double *H, int64_t error_order, LOOP_ARGS) {
    Problem p = {B, G, K, 0, slot_src, c0, c1, inv_thr, hill, prod, deg, mult, add, clamp,
                 NULL, NULL, NULL, NULL, NULL, NULL};
    return rodas_solve(&p, T, t_save, t_start, x0, rtol, atol, S, gamma, A, Cm, Bv, E, M, H, error_order,
                       NULL, NULL, LOOP_PASS);
}

/* the variable-order BDF kernel (bdf.h) */
int genenet_bdf_hill(PROBLEM_ARGS, LOOP_ARGS) {
    Problem p = {B, G, K, 0, slot_src, c0, c1, inv_thr, hill, prod, deg, mult, add, clamp,
                 NULL, NULL, NULL, NULL, NULL, NULL};
    return bdf_solve(&p, T, t_save, t_start, x0, rtol, atol, LOOP_PASS);
}

/* ------------------------------------------------------------------ discrete adjoint of the explicit kernel */

/* the vectorized log of hill.h, for its test */
void genenet_log_pos(int64_t n, const real *x, real *out) { log_pos(n, x, out); }


/* The stage VJPs of one step, v^T df/dY at each stage input Y, in two parts. With u_i = v_i mult_i,
   Hbar = u_i g_i prod_(k' != k) H_k' (per slot), zbar = d/d(z^n) = -Hbar c1 s^2, m = zbar z^n:
     c0b += Hbar, c1b += Hbar s, nb += m log z, Ybar_src += m n / x_src,  gb_i += u_i prod_k H_k,
     kb_i -= v_i Y_i, Ybar_i -= v_i k_i;   clamped genes have f = 0 and pass nothing.
   Everything but u is known from the tape before the sweep reaches the step, so hill_vjp_prepare
   computes it for all the step's stages at once (long loops; one vectorized log for all stage
   inputs): per slot the product of the other slots Ex (prefix times suffix products, exact when an
   H is 0), s, and the weights wzn = -c1 s^2 z^n, wl = wzn log z, dxw = d(z^n)/dx / z^n * wzn; the
   sequential part, hill_vjp_apply, is then a few multiply-adds per slot. The threshold's cotangent
   m n / it is a constant times m per slot, so the sweep adds up m alone (into mb) and
   erk_adjoint_row scales it once at the end. Arrays are restrict arguments of non-inlined functions
   because GCC vectorizes none of these loops once they are inlined into the sweep. */

/* a[st, s] = x[st, src[s]] for NS stages ((NS, n) from (NS, G)): scalar loads, one index per slot
   for all stages (AVX gathers are slower on the CPUs measured) */
#if defined(__GNUC__) && !defined(__clang__)
__attribute__((optimize("no-tree-vectorize")))
#endif
static void gather_stages(int64_t NS, int64_t n, int64_t G, const int32_t *restrict src, const real *restrict x,
                          real *restrict a) {
    for (int64_t s = 0; s < n; ++s) {
        const real *xs = x + src[s];
        for (int64_t st = 0; st < NS; ++st) a[st * n + s] = xs[st * G];
    }
}

/* NS stage inputs Y (NS, G) -> Ex, sg, wzn, wl, dxw (NS, K G), P0 = prod_k H (NS, G); work: z, lz,
   zn, H (NS, K G). With integer hill coefficients d(z^n)/dx = n it z^(n-1) comes from the power
   itself (z^n = z^(n-1) z), which is also the right derivative at x <= 0 (it for n = 1, else 0);
   otherwise n z^n / x, and that right derivative by hand. */
__attribute__((noinline)) static void hill_vjp_prepare(
    int64_t NS, int64_t G, int64_t K, const int32_t *restrict src, const real *restrict Y,
    const real *restrict c0, const real *restrict c1, const real *restrict it, const real *restrict n,
    const int *restrict nint, int want_hill, real *restrict z, real *restrict lz, real *restrict zn, real *restrict H,
    real *restrict Ex, real *restrict sg, real *restrict wzn, real *restrict wl, real *restrict dxw,
    real *restrict P0) {
    const int64_t KG = K * G;
    gather_stages(NS, KG, G, src, Y, z);
    for (int64_t st = 0; st < NS; ++st) {
        const int64_t o = st * KG;
        for (int64_t s = 0; s < KG; ++s) z[o + s] = (z[o + s] > 0 ? z[o + s] : (real)0) * it[s];
    }
    if (want_hill) log_pos(NS * KG, z, lz); /* log z, 0 at z = 0 (where z^n log z -> 0) */
    else memset(lz, 0, sizeof(real) * (size_t)(NS * KG));
    for (int64_t st = 0; st < NS; ++st) {
        const int64_t o = st * KG;
        /* one pass per stage from z and log z to H, s and the weights (w = dH/d(z^n) = -c1 s^2) */
        if (nint) {
            for (int64_t s = 0; s < KG; ++s) {
                int k = nint[s];
                real zs = z[o + s], p1 = small_int_pow(zs, k > 0 ? k - 1 : 0);
                real p = k > 0 ? p1 * zs : (real)1, q = (real)1 / ((real)1 + p), w = -c1[s] * q * q, wz = w * p;
                sg[o + s] = q;
                H[o + s] = c0[s] + c1[s] * q;
                wzn[o + s] = wz;
                wl[o + s] = wz * lz[o + s];
                dxw[o + s] = (real)k * it[s] * p1 * w;
            }
        } else {
            for (int64_t s = 0; s < KG; ++s) {
                real zs = z[o + s], p = hill_pow(zs, n[s]);
                real q = (real)1 / ((real)1 + p), w = -c1[s] * q * q, wz = w * p;
                sg[o + s] = q;
                H[o + s] = c0[s] + c1[s] * q;
                wzn[o + s] = wz;
                wl[o + s] = wz * lz[o + s];
                /* n z^n / x = n it z^n / z; right derivative at x <= 0: it for n = 1, else 0 */
                dxw[o + s] = (zs > 0 ? n[s] * it[s] * p / zs : (n[s] == 1 ? it[s] : (real)0)) * w;
            }
        }
        real *restrict P = P0 + st * G, *restrict acc = zn + o; /* zn: free work */
        for (int64_t i = 0; i < G; ++i) P[i] = 1;
        for (int64_t k = 0; k < K; ++k) /* prefix products */
            for (int64_t i = 0; i < G; ++i) { Ex[o + k * G + i] = P[i]; P[i] *= H[o + k * G + i]; }
        if (K > 0) { /* times the suffix products */
            for (int64_t i = 0; i < G; ++i) acc[i] = 1;
            for (int64_t k = K - 1; k >= 0; --k)
                for (int64_t i = 0; i < G; ++i) { Ex[o + k * G + i] *= acc[i]; acc[i] *= H[o + k * G + i]; }
        }
    }
}

/* one stage's VJP from its prepared arrays (one stage's slice of each); work ug (G), dxs (K G).
   hbo (K G): the cotangent of each slot's H, for slot_cotangents; NULL: no slot parameter wants
   its cotangent */
__attribute__((noinline)) static void hill_vjp_apply(
    int64_t G, int64_t K, const int32_t *restrict src, const real *restrict Y, const real *restrict v,
    const real *restrict prod, const real *restrict deg, const real *restrict mult, const uint8_t *restrict clamp,
    const real *restrict Ex, const real *restrict dxw, const real *restrict P0, real *restrict Ybar, real *restrict hbo,
    real *restrict gb, real *restrict kb, real *restrict ug, real *restrict dxs) {
    for (int64_t i = 0; i < G; ++i) {
        real vi = (clamp && clamp[i]) ? (real)0 : v[i];
        real u = mult ? vi * mult[i] : vi;
        kb[i] -= vi * Y[i];
        Ybar[i] -= vi * deg[i];
        gb[i] += u * P0[i];
        ug[i] = u * prod[i];
    }
    if (hbo) {
        for (int64_t k = 0; k < K; ++k)
            for (int64_t i = 0; i < G; ++i) {
                const int64_t s = k * G + i;
                real hb = ug[i] * Ex[s];
                hbo[s] = hb;
                dxs[s] = hb * dxw[s];
            }
    } else { /* no slot parameter asks for its gradient: the state's cotangent alone */
        for (int64_t k = 0; k < K; ++k)
            for (int64_t i = 0; i < G; ++i) dxs[k * G + i] = ug[i] * Ex[k * G + i] * dxw[k * G + i];
    }
    for (int64_t s = 0; s < K * G; ++s) Ybar[src[s]] += dxs[s];
}

/* The slot parameters' cotangents from the NS stages' H cotangents hb (NS, K G), once per step
   rather than in each stage's apply: c0b += hb, c1b += hb s, mb += hb wzn, nb += hb wl, two stages
   per pass (half the read-modify-writes of the outputs; GCC vectorizes no loop over all stages) */
__attribute__((noinline)) static void slot_cotangents(int64_t NS, int64_t KG, const real *restrict hb,
                                                      const real *restrict sg, const real *restrict wzn,
                                                      const real *restrict wl, real *restrict c0b, real *restrict c1b,
                                                      real *restrict mb, real *restrict nb) {
    int64_t st = 0;
    for (; st + 1 < NS; st += 2) {
        const int64_t o = st * KG, p = o + KG;
        for (int64_t s = 0; s < KG; ++s) {
            real h0 = hb[o + s], h1 = hb[p + s];
            c0b[s] += h0 + h1;
            c1b[s] += h0 * sg[o + s] + h1 * sg[p + s];
            mb[s] += h0 * wzn[o + s] + h1 * wzn[p + s];
            nb[s] += h0 * wl[o + s] + h1 * wl[p + s];
        }
    }
    if (st < NS) {
        const int64_t o = st * KG;
        for (int64_t s = 0; s < KG; ++s) {
            real h = hb[o + s];
            c0b[s] += h;
            c1b[s] += h * sg[o + s];
            mb[s] += h * wzn[o + s];
            nb[s] += h * wl[o + s];
        }
    }
}

/* The sweeps add up m = zbar z^n per slot into mb; the threshold's cotangent is m d(z^n)/d it / z^n
   = m n / it, scaled here once (0 where it = 0: no regulation) */
static void threshold_cotangent(int64_t KG, const real *it, const real *n, real *mb) {
    for (int64_t s = 0; s < KG; ++s) mb[s] = (mb[s] != 0 && it[s] != 0) ? mb[s] * n[s] / it[s] : (real)0;
}

/* every entry of a (n) is 0 (NULL: a zero array) */
static int all_zero(const real *a, int64_t n) {
    if (!a) return 1;
    for (int64_t i = 0; i < n; ++i)
        if (a[i] != 0) return 0;
    return 1;
}

/* The Hill model's hooks of adjoint.h: per step hill_vjp_prepare over its stages, per stage
   hill_vjp_apply (each stage's H cotangents kept in H), after the step the slot parameters'
   cotangents (slot_cotangents) */
typedef struct {
    real *P0, *xg, *lz, *zn, *H, *Ex, *sg, *wzn, *wl, *dxw, *dxs, *ug;
    real *c0b, *c1b, *itb, *nb, *gb, *kb;
    int want_hill;
} VjpCtx;

static void vjp_prepare(VjpCtx *c, const Row *r, int64_t NS, const real *Y) {
    hill_vjp_prepare(NS, r->G, r->K, r->slot_src, Y, r->c0, r->c1, r->inv_thr, r->hill, r->nint, c->want_hill, c->xg,
                     c->lz, c->zn, c->H, c->Ex, c->sg, c->wzn, c->wl, c->dxw, c->P0);
}

static void vjp_stage(VjpCtx *c, const Row *r, int64_t s, const real *Ys, const real *ks, real *Yb) {
    const int64_t o = s * r->K * r->G;
    /* H (prepare's work) holds each stage's H cotangents from here on */
    hill_vjp_apply(r->G, r->K, r->slot_src, Ys, ks, r->prod, r->deg, r->mult, r->clamp, c->Ex + o, c->dxw + o,
                   c->P0 + s * r->G, Yb, c->c0b ? c->H + o : NULL, c->gb, c->kb, c->ug, c->dxs);
}

static void vjp_skip(VjpCtx *c, const Row *r, int64_t s, int64_t NS) {
    const int64_t KG = r->K * r->G;
    if (c->c0b && s < NS) memset(c->H + s * KG, 0, sizeof(real) * (size_t)KG);
}

static void vjp_step_done(VjpCtx *c, const Row *r, int64_t NS) {
    if (c->c0b) slot_cotangents(NS, r->K * r->G, c->H, c->sg, c->wzn, c->wl, c->c0b, c->c1b, c->itb, c->nb);
}

#include "adjoint.h"

/* Reverse sweep over one row's tape (adjoint.h) with the Hill model's cotangents: the slot arrays'
   (c0b, c1b, itb, nb: K G each, NULL when not wanted) and gb, kb (G). Work: ADJOINT_WORK(S, G, K G). */
#define ADJOINT_WORK(S, G, KG) (SWEEP_WORK(S, G) + ((S) + 1) * (G) + 2 * (KG) + 10 * (S) * (KG) + 64)
static void erk_adjoint_row(const Row *r, const Tape *tp, const ErkMethod *e, const real *t_save, int64_t T,
                            const real *ybar, const real *ylast_bar, real *x0b, real *c0b, real *c1b, real *itb,
                            real *nb, real *gb, real *kb, real *work) {
    const int64_t G = r->G, S = e->S, KG = r->K * G;
    real *sweep = work, *P0 = sweep + SWEEP_WORK(S, G), *xg = P0 + S * G, *lz = xg + S * KG, *zn = lz + S * KG,
         *H = zn + S * KG, *Ex = H + S * KG, *sg = Ex + S * KG, *wzn = sg + S * KG, *wl = wzn + S * KG,
         *dxw = wl + S * KG, *dxs = dxw + S * KG, *nb_sink = dxs + KG, /* nb_sink: hill's cotangent unwanted */
         *ug = nb_sink + KG;
    const int want_hill = nb != NULL;
    if (c0b && !nb) {
        memset(nb_sink, 0, sizeof(real) * (size_t)KG);
        nb = nb_sink;
    }
    VjpCtx c = {P0, xg, lz, zn, H, Ex, sg, wzn, wl, dxw, dxs, ug, c0b, c1b, itb, nb, gb, kb, want_hill};
    erk_adjoint_sweep(r, tp, e, t_save, T, ybar, ylast_bar, x0b, &c, sweep);
    if (itb) threshold_cotangent(KG, r->inv_thr, r->hill, itb);
}

int genenet_erk_hill_adjoint(int64_t B, int64_t G, int64_t K, int64_t T, const real *t_save,
                             const int32_t *slot_src, const real *c0, const real *c1, const real *inv_thr,
                             const real *hill, const real *prod, const real *deg, const real *mult,
                             const real *add, const uint8_t *clamp, int64_t S, const double *A, int64_t D,
                             const double *P, const Tape *tapes, const real *ybar, const real *ylast_bar,
                             real *x0b, real *c0b, real *c1b, real *itb, real *nb, real *gb, real *kb,
                             int64_t wants, int64_t nthreads) {
    if (S > 16 || D > 8) return -1;
    ErkMethod e = erk_method(S, A, NULL, D, P);
    Problem p = {B, G, K, 0, slot_src, c0, c1, inv_thr, hill, prod, deg, mult, add, clamp,
                 NULL, NULL, NULL, NULL, NULL, NULL};
    const int64_t KG = K * G;
#pragma omp parallel num_threads((int)nthreads)
    {
        real *work = (real *)malloc(sizeof(real) * (size_t)ADJOINT_WORK(S, G, KG));
        int *nint_w = (int *)malloc(sizeof(int) * (size_t)(KG + 1));
#pragma omp for schedule(dynamic, 4)
        for (int64_t b = 0; b < B; ++b) {
            /* no cotangent on this row (a start that is not iterating): its gradient is 0 as given */
            if (all_zero(ybar + b * T * G, T * G) && all_zero(ylast_bar + b * G, G)) continue;
            Row r = row_of(&p, b, NULL, integer_hill(hill + b * KG, KG, nint_w), NULL);
            const int slot = (wants & 1) != 0, hl = (wants & 2) != 0;
            erk_adjoint_row(&r, tapes + b, &e, t_save, T, ybar + b * T * G, ylast_bar + b * G, x0b + b * G,
                            slot ? c0b + b * KG : NULL, slot ? c1b + b * KG : NULL, slot ? itb + b * KG : NULL,
                            slot && hl ? nb + b * KG : NULL, gb + b * G, kb + b * G, work);
        }
        free(work);
        free(nint_w);
    }
    return 0;
}

/* One row's VJPs of the Hill right-hand side at x with the cotangent a: xbar = a^T df/dx (G) and the
   spec arrays' cotangents a^T df/dspec: c0b, c1b, itb, nb (K G), gb, kb (G), each overwritten.
   Work: VJP_ROW_WORK(G, K G) reals. Shared by genenet_hill_vjp and the adjoint's augmented system. */
#define VJP_ROW_WORK(G, KG) (10 * (KG) + 2 * (G))
static void hill_vjp_row(const Row *r, const real *x, const real *a, real *work, real *xbar, real *c0b, real *c1b,
                         real *itb, real *nb, real *gb, real *kb) {
    const int64_t G = r->G, K = r->K, KG = K * G;
    real *z = work, *lz = z + KG, *zn = lz + KG, *Hs = zn + KG, *Ex = Hs + KG, *sg = Ex + KG, *wzn = sg + KG,
         *wl = wzn + KG, *dxw = wl + KG, *dxs = dxw + KG, *P0 = dxs + KG, *ug = P0 + G;
    memset(xbar, 0, sizeof(real) * (size_t)G);
    memset(c0b, 0, sizeof(real) * (size_t)KG);
    memset(c1b, 0, sizeof(real) * (size_t)KG);
    memset(itb, 0, sizeof(real) * (size_t)KG);
    memset(nb, 0, sizeof(real) * (size_t)KG);
    memset(gb, 0, sizeof(real) * (size_t)G);
    memset(kb, 0, sizeof(real) * (size_t)G);
    hill_vjp_prepare(1, G, K, r->slot_src, x, r->c0, r->c1, r->inv_thr, r->hill, r->nint, 1, z, lz, zn, Hs, Ex, sg,
                     wzn, wl, dxw, P0);
    hill_vjp_apply(G, K, r->slot_src, x, a, r->prod, r->deg, r->mult, r->clamp, Ex, dxw, P0, xbar, Hs, gb, kb, ug,
                   dxs);
    slot_cotangents(1, KG, Hs, sg, wzn, wl, c0b, c1b, itb, nb);
    threshold_cotangent(KG, r->inv_thr, r->hill, itb);
}

/* The right-hand side and its VJP at one state per row, for the continuous adjoint's augmented
   system (genenet.fit.adjoint): f (B, G); xbar = a^T df/dx (B, G); the spec arrays' cotangents
   a^T df/dspec: c0b, c1b, itb, nb (B, K G), gb, kb (B, G). Model arrays per row (B rows). */
int genenet_hill_vjp(int64_t B, int64_t G, int64_t K, const int32_t *slot_src, const real *c0, const real *c1,
                     const real *inv_thr, const real *hill, const real *prod, const real *deg, const real *mult,
                     const real *add, const uint8_t *clamp, const real *x, const real *a, real *f, real *xbar,
                     real *c0b, real *c1b, real *itb, real *nb, real *gb, real *kb, int64_t nthreads) {
    Problem p = {B, G, K, 0, slot_src, c0, c1, inv_thr, hill, prod, deg, mult, add, clamp,
                 NULL, NULL, NULL, NULL, NULL, NULL};
    const int64_t KG = K * G;
#pragma omp parallel num_threads((int)nthreads)
    {
        real *work = (real *)malloc(sizeof(real) * (size_t)(KG + 5 * KG + 2 * G + VJP_ROW_WORK(G, KG) + 64));
        real *H = work, *tw = H + KG, *vw = tw + 5 * KG + 2 * G;
        int *nint_w = (int *)malloc(sizeof(int) * (size_t)(KG + 1));
#pragma omp for schedule(static)
        for (int64_t b = 0; b < B; ++b) {
            Row r = row_of(&p, b, H, integer_hill(hill + b * KG, KG, nint_w), tw);
            rhs_state(&r, x + b * G, f + b * G);
            hill_vjp_row(&r, x + b * G, a + b * G, vw, xbar + b * G, c0b + b * KG, c1b + b * KG, itb + b * KG,
                         nb + b * KG, gb + b * G, kb + b * G);
        }
        free(work);
        free(nint_w);
    }
    return 0;
}

/* ------------------------------------------------------------------ Hessian-vector products (hvp.h) */

#include "hvp.h"

/* The second-order discrete adjoint of every row (hvp.h) along the direction (x0d (B, G); c0d, c1d,
   itd, nd (B, K G), gd, kd (B, G), each NULL for zero): the trajectory's tangent ydot (B, T, G) and
   ylast_dot (B, G), and the derivative of genenet_erk_hill_adjoint's outputs along the direction
   with ybar, ylast_bar held fixed: x0h (B, G), c0h, c1h, ith, nh (B, K G), gh, kh (B, G). The tapes
   are those of the forward solve. wants: bit 0 the sweep (else only ydot, ylast_dot: a Jacobian-
   vector product), bit 1 hill's output. Returns 0, -1 for a tableau too large, -2 when out of memory. */
int genenet_erk_hill_hvp(int64_t B, int64_t G, int64_t K, int64_t T, const real *t_save, const int32_t *slot_src,
                         const real *c0, const real *c1, const real *inv_thr, const real *hill, const real *prod,
                         const real *deg, const real *mult, const real *add, const uint8_t *clamp, int64_t S,
                         const double *A, int64_t D, const double *P, const Tape *tapes, const real *ybar,
                         const real *ylast_bar, const real *x0d, const real *c0d, const real *c1d, const real *itd,
                         const real *nd, const real *gd, const real *kd, real *ydot, real *ylast_dot, real *x0h,
                         real *c0h, real *c1h, real *ith, real *nh, real *gh, real *kh, int64_t wants,
                         int64_t nthreads) {
    if (S > 16 || D > 8) return -1;
    ErkMethod e = erk_method(S, A, NULL, D, P);
    Problem p = {B, G, K, 1, slot_src, c0, c1, inv_thr, hill, prod, deg, mult, add, clamp, c0d, c1d, itd, nd, gd, kd};
    const int64_t KG = K * G;
    int failed = 0;
#pragma omp parallel num_threads((int)nthreads) reduction(| : failed)
    {
        real *work = (real *)malloc(sizeof(real) * (size_t)(KG + 5 * KG + 2 * G + HVP_WORK(S, G, KG)));
        int *nint_w = (int *)malloc(sizeof(int) * (size_t)(KG + 1));
        real *H = work, *tw = H + KG, *hw = tw + 5 * KG + 2 * G;
#pragma omp for schedule(dynamic, 1)
        for (int64_t b = 0; b < B; ++b) {
            Row r = row_of(&p, b, H, integer_hill(hill + b * KG, KG, nint_w), tw);
            const Direction v = {r.c0d, r.c1d, r.itd, r.hilld, r.prodd, r.degd};
            if (all_zero(x0d + b * G, G) && all_zero(v.c0, KG) && all_zero(v.c1, KG) && all_zero(v.it, KG) &&
                all_zero(v.n, KG) && all_zero(v.g, G) && all_zero(v.k, G)) {
                /* a zero direction (a start whose CG is done): everything is 0, linear in it */
                memset(ydot + b * T * G, 0, sizeof(real) * (size_t)(T * G));
                memset(ylast_dot + b * G, 0, sizeof(real) * (size_t)G);
                memset(x0h + b * G, 0, sizeof(real) * (size_t)G);
                memset(gh + b * G, 0, sizeof(real) * (size_t)G);
                memset(kh + b * G, 0, sizeof(real) * (size_t)G);
                real *slots[4] = {c0h + b * KG, c1h + b * KG, ith + b * KG, nh + b * KG};
                for (int k = 0; k < 4; ++k) memset(slots[k], 0, sizeof(real) * (size_t)KG);
                continue;
            }
            failed |= erk_hvp_row(&r, &v, tapes + b, &e, t_save, T, (wants & 1) != 0, (wants & 2) != 0 || nd,
                                  ybar + b * T * G, ylast_bar + b * G, x0d + b * G,
                                  ydot + b * T * G, ylast_dot + b * G, x0h + b * G, c0h + b * KG, c1h + b * KG,
                                  ith + b * KG, nh + b * KG, gh + b * G, kh + b * G, hw) != 0;
        }
        free(work);
        free(nint_w);
    }
    return failed ? -2 : 0;
}

/* ------------------------------------------------------------------ steady states (roots.h) */

int genenet_roots_hill(int64_t B, int64_t G, int64_t K, const int32_t *slot_src, const real *c0, const real *c1,
                       const real *inv_thr, const real *hill, const real *prod, const real *deg, const real *mult,
                       const real *add, const uint8_t *clamp, real *x, const uint8_t *active, int64_t mode,
                       double tol, int64_t max_iter, int64_t give_up, double dt0, uint8_t *converged,
                       int64_t *iters, int64_t nthreads) {
    Problem p = {B, G, K, 0, slot_src, c0, c1, inv_thr, hill, prod, deg, mult, add, clamp,
                 NULL, NULL, NULL, NULL, NULL, NULL};
    return roots_solve(&p, x, active, mode, tol, max_iter, give_up, dt0, converged, iters, nthreads);
}

/* ------------------------------------------------------------------ continuous adjoint (genenet.fit.adjoint) */

/* The augmented system of the continuous adjoint in s = -t, state y = [x, a, g] (G, G, P) with
   P = 4 K G + 2 G in the spec arrays' order (c0, c1, inv_threshold, hill, production, degradation):
     dx/ds = -f(x),   da/ds = a^T df/dx,   dg/ds = a^T df/dspec,
   the VJPs as genenet_hill_vjp's. Work r->sw: VJP_ROW_WORK(G, K G) reals. */
static void adjoint_system(const Row *r, const real *y, real *dy) {
    const int64_t G = r->G, KG = r->K * G;
    real *c0b = dy + 2 * G, *c1b = c0b + KG, *itb = c1b + KG, *nb = itb + KG, *gb = nb + KG, *kb = gb + G;
    rhs_state(r, y, dy);
    for (int64_t i = 0; i < G; ++i) dy[i] = -dy[i];
    hill_vjp_row(r, y, y + G, r->sw, dy + G, c0b, c1b, itb, nb, gb, kb);
}

/* The adjoint's whole backward pass, per row: over the F - 1 intervals of t_fine from the last,
   a += dL (at the data times: data_at[i] >= 0 names dL's time index), the augmented system
   integrated from [xs_fine[i], a, g] at s = -t_fine[i] to s = -t_fine[i - 1] with the explicit
   pair and the torch loop's step control over all its columns (scalar rtol, atol); at the end
   a += dL[data_at[0]]. Out: a (B, G), g (B, P), status (B) (SUCCESS, or the failed interval's),
   steps (B) (accepted + rejected over all intervals). */
int genenet_hill_adjoint_sweep(int64_t B, int64_t G, int64_t K, const int32_t *slot_src, const real *c0,
                               const real *c1, const real *inv_thr, const real *hill, const real *prod,
                               const real *deg, const real *mult, const real *add, const uint8_t *clamp,
                               int64_t F, const real *t_fine, const real *xs_fine, int64_t T, const real *dL,
                               const int64_t *data_at, int64_t S, const double *A, const double *Ev, int64_t D,
                               const double *P, int64_t error_order, double rtol, double atol, double safety,
                               double beta, double factor_min, double factor_max, int64_t window,
                               int64_t max_steps, real *a_out, real *g_out, int64_t *status, int64_t *steps,
                               int64_t nthreads) {
    if (S > 16 || D > 8 || F < 1) return -1;
    ErkMethod e = erk_method(S, A, Ev, D, P);
    Problem p = {B, G, K, 0, slot_src, c0, c1, inv_thr, hill, prod, deg, mult, add, clamp,
                 NULL, NULL, NULL, NULL, NULL, NULL};
    const int64_t KG = K * G, NP = 4 * KG + 2 * G, W = 2 * G + NP;
    Stepper proto = {erk_step, erk_dense, S - 1, error_order, NULL, NULL, NULL, NULL};
#pragma omp parallel num_threads((int)nthreads)
    {
        const size_t n = (size_t)(2 * W /* tolerances */ + 6 * W /* loop */ + 3 * W /* z0, out (2 W) */ +
                                  (2 * S + 1) * W /* method */ + KG + 5 * KG + 2 * G /* model */ +
                                  VJP_ROW_WORK(G, KG) + 64);
        real *work = (real *)malloc(sizeof(real) * n);
        real *rt = work, *at = rt + W, *loop = at + W, *z0 = loop + 6 * W, *out = z0 + W, *mw = out + 2 * W,
             *H = mw + (2 * S + 1) * W, *tw = H + KG, *sw = tw + 5 * KG + 2 * G;
        for (int64_t i = 0; i < W; ++i) { rt[i] = (real)rtol; at[i] = (real)atol; }
        int *nint_w = (int *)malloc(sizeof(int) * (size_t)(KG + 1));
        Stepper m = proto;
        make_erk(&m, &e, G, W, mw);
#pragma omp for schedule(dynamic, 1)
        for (int64_t b = 0; b < B; ++b) {
            Row r = row_of(&p, b, H, integer_hill(hill + b * KG, KG, nint_w), tw);
            r.system = adjoint_system;
            r.E = W;
            r.sw = sw;
            real *a = z0 + G, *g = a + G;
            memset(z0, 0, sizeof(real) * (size_t)W);
            int64_t st = SUCCESS, nsteps = 0;
            for (int64_t i = F - 1; i >= 1 && st == SUCCESS; --i) {
                if (data_at[i] >= 0)
                    for (int64_t j = 0; j < G; ++j) a[j] += dL[(b * T + data_at[i]) * G + j];
                memcpy(z0, xs_fine + (b * F + i) * G, sizeof(real) * (size_t)G);
                real ts[2] = {-t_fine[i], -t_fine[i - 1]};
                LoopSettings c = {2, window, ts, rt, at, -1.0, -1.0, safety, beta, factor_min, factor_max,
                                  max_steps, 0, 8, 0};
                RowResult res = drive_row(&m, &r, W, &c, ts[0], z0, out, out + W, loop, NULL);
                nsteps += res.steps;
                st = res.status;
                memcpy(z0 + G, out + W + G, sizeof(real) * (size_t)(W - G)); /* a, g at the interval's start */
            }
            if (st == SUCCESS && data_at[0] >= 0)
                for (int64_t j = 0; j < G; ++j) a[j] += dL[(b * T + data_at[0]) * G + j];
            if (st != SUCCESS)
                for (int64_t j = G; j < W; ++j) z0[j] = (real)NAN;
            memcpy(a_out + b * G, a, sizeof(real) * (size_t)G);
            memcpy(g_out + b * NP, g, sizeof(real) * (size_t)NP);
            status[b] = st;
            steps[b] = nsteps;
        }
        free(m.ws);
        free(work);
        free(nint_w);
    }
    return 0;
}
