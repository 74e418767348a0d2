/* Whole-trajectory adaptive integrators for the shifted-Hill model, one row per task.

   The CPU analogue of a per-trajectory GPU kernel (DiffEqGPU's EnsembleGPUKernel): each row
   runs its own step loop (driver.h) from its start to t_end with its own step size, so there is
   no per-step Python, no per-step tensor allocation and no lock-step with the other rows. Rows
   are spread over threads with OpenMP. Two step methods:

   - genenet_erk_hill: an FSAL explicit Runge-Kutta pair (Dopri5, Tsit5) with its dense output,
     optionally carrying Q forward-sensitivity tangents beside the state;
   - genenet_rodas_hill: a stiffly accurate Rosenbrock method (Rodas4, Rodas5P) in Hairer &
     Wanner's transformed form, W = I/(h gamma) - J from the analytic Jacobian, one LU with
     partial pivoting per step (a zero pivot or a non-finite W rejects the step: SINGULAR).

   Also the steady-state iterations of genenet.steady (roots.h: Newton, pseudo-transient
   continuation), one row per task.

   Model: hill.h. Compiled by genenet/native/build.py (at install time or first use) with REAL = float
   or double, GENENET_SOURCE_HASH the sources' hash and GENENET_ISA the instruction-set level. */

#include "driver.h"
#include "linalg.h"
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

/* ------------------------------------------------------------------ explicit Runge-Kutta */

typedef struct {
    int64_t S, D, W;
    const real *a, *e, *P; /* (S, S), (S,), (S, D) */
    real *ks, *Ys, *tmp;   /* stages (S, W), stage inputs (S, W), (W) */
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
    const real *a, *C, *b, *e, *H; /* (S, S), (S, S), (S,), (S,), (M, S) */
    real *ks, *U, *rhs, *Wm, *Dn;  /* (S, G), (G), (G), (G, G), (M, G) */
    int64_t *piv;                  /* (G) */
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
    jacobian(r, y, Wm);
    const real diag = (real)1 / (w->gamma * h);
    real total = 0;
    for (int64_t i = 0; i < G * G; ++i) { Wm[i] = -Wm[i]; total += Wm[i]; }
    for (int64_t i = 0; i < G; ++i) Wm[i * G + i] += diag;
    if (!isfinite(total + diag) || lu_factor(Wm, G, w->piv)) return 1;
    for (int64_t s = 0; s < S; ++s) {
        const real *fi = f0;
        if (s > 0) {
            add_weighted(y, w->a + s * S, s, ks, G, w->U);
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
        lu_solve(Wm, G, w->piv, k);
    }
    add_weighted(y, w->b, S, ks, G, y1);
    add_weighted(NULL, w->e, S, ks, G, err);
    for (int64_t q = 0; q < w->M; ++q) add_weighted(NULL, w->H + q * S, S, ks, G, w->Dn + q * G);
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

/* ------------------------------------------------------------------ entry points */

typedef struct {
    int64_t B, G, K, Q;
    const int32_t *slot_src;
    const real *c0, *c1, *inv_thr, *hill, *prod, *deg, *mult, *add;
    const uint8_t *clamp;
    const real *c0d, *c1d, *itd, *hilld, *prodd, *degd;
} Problem;

static Row row_of(const Problem *p, int64_t b, real *H, const int *nint, real *tw) {
    const int64_t G = p->G, KG = p->K * G, Q = p->Q;
    Row r = {G, p->K, p->slot_src, p->c0 + b * KG, p->c1 + b * KG, p->inv_thr + b * KG, p->hill + b * KG,
             p->prod + b * G, p->deg + b * G, p->mult ? p->mult + b * G : NULL, p->add ? p->add + b * G : NULL,
             p->clamp ? p->clamp + b * G : NULL, H, nint, Q,
             p->c0d ? p->c0d + b * Q * KG : NULL, p->c1d ? p->c1d + b * Q * KG : NULL,
             p->itd ? p->itd + b * Q * KG : NULL, p->hilld ? p->hilld + b * Q * KG : NULL,
             p->prodd ? p->prodd + b * Q * G : NULL, p->degd ? p->degd + b * Q * G : NULL, tw, NULL, 0, NULL};
    return r;
}

/* every row: the model's work arrays, then the method's (make_stepper), then drive_row */
typedef void (*MakeStepper)(Stepper *m, const void *method, int64_t G, int64_t W, real *work);

static void run_rows(const Problem *p, const LoopSettings *c, const real *t_start, const real *x0,
                     MakeStepper make, const void *method, int64_t method_work, Stepper proto,
                     real *out, int64_t *status_out, int64_t *counters, real *t_last, real *y_last, int64_t nthreads,
                     Tape *tapes) {
    const int64_t B = p->B, G = p->G, KG = p->K * G, W = (1 + p->Q) * G, T = c->T;
#pragma omp parallel num_threads((int)nthreads)
    {
        const int64_t stiff_work = c->stiff_after > 0 ? G * G + 2 * G : 0;
        real *work = (real *)malloc(sizeof(real) * (size_t)(4 * W + 2 * G + 6 * KG + 2 * G + method_work +
                                                             stiff_work + 64));
        real *loop_work = work, *H = loop_work + 4 * W + 2 * G, *tw = H + KG, *mw = tw + 5 * KG + 2 * G;
        int *nint_w = (int *)malloc(sizeof(int) * (size_t)(KG + 1));
        Stepper m = proto;
        make(&m, method, G, W, mw);
        m.stiff_work = stiff_work ? mw + method_work : NULL;
#pragma omp for schedule(dynamic, 4)
        for (int64_t b = 0; b < B; ++b) {
            Row r = row_of(p, b, H, integer_hill(p->hill + b * KG, KG, nint_w), tw);
            real tb = t_start ? t_start[b] : c->t_save[0];
            RowResult res = drive_row(&m, &r, W, c, tb, x0 + b * W, out + b * T * W, y_last + b * W, loop_work,
                                      tapes ? tapes + b : NULL);
            status_out[b] = res.status;
            counters[b] = res.steps;
            counters[B + b] = res.accepted;
            counters[2 * B + b] = res.steps - res.accepted;
            counters[3 * B + b] = res.rhs;
            t_last[b] = res.t_last;
        }
        free(m.ws);
        free(work);
        free(nint_w);
    }
}

typedef struct {
    int64_t S, D;
    real a[16 * 16], e[16], P[16 * 8];
} ErkMethod;

static void make_erk(Stepper *m, const void *method, int64_t G, int64_t W, real *work) {
    (void)G;
    const ErkMethod *e = (const ErkMethod *)method;
    ErkWork *w = (ErkWork *)malloc(sizeof(ErkWork));
    *w = (ErkWork){e->S, e->D, W, e->a, e->e, e->P, work, work + e->S * W, work + 2 * e->S * W};
    m->ws = w;
    m->stage_inputs = w->Ys;
}

typedef struct {
    int64_t S, M;
    real gamma, a[16 * 16], C[16 * 16], b[16], e[16], H[8 * 16];
} RodasMethod;

static void make_rodas(Stepper *m, const void *method, int64_t G, int64_t W, real *work) {
    (void)W;
    const RodasMethod *d = (const RodasMethod *)method;
    RodasWork *w = (RodasWork *)malloc(sizeof(RodasWork) + sizeof(int64_t) * (size_t)G);
    real *ks = work, *U = ks + d->S * G, *rh = U + G, *Wm = rh + G, *Dn = Wm + G * G;
    *w = (RodasWork){d->S, d->M, G, d->gamma, d->a, d->C, d->b, d->e, d->H, ks, U, rh, Wm, Dn,
                     (int64_t *)(w + 1)};
    m->ws = w;
}

#define PROBLEM_ARGS                                                                                        \
    int64_t B, int64_t G, int64_t K, int64_t T, const real *t_save, const real *t_start, const real *x0,     \
        const int32_t *slot_src, const real *c0, const real *c1, const real *inv_thr, const real *hill,     \
        const real *prod, const real *deg, const real *mult, const real *add, const uint8_t *clamp,         \
        const real *rtol, const real *atol
#define LOOP_ARGS                                                                                           \
    double first_step, int64_t max_steps, double steady_tol, int64_t window, double safety, double beta,    \
        double factor_min, double factor_max, int64_t stiff_after, int64_t check_every, int64_t use_rho,    \
        real *out, int64_t *status_out, int64_t *counters, real *t_last, real *y_last, int64_t nthreads

/* tapes: NULL, or B zeroed Tape structs (genenet_tapes_new) that record every row's accepted steps */
int genenet_erk_hill(PROBLEM_ARGS, int64_t Q, const real *c0d, const real *c1d, const real *itd,
                     const real *hilld, const real *prodd, const real *degd,
                     int64_t S, const double *A, const double *E, int64_t D, const double *P, int64_t error_order,
                     LOOP_ARGS, Tape *tapes) {
    if (S > 16 || D > 8 || (tapes && Q)) return -1;
    ErkMethod e = {S, D, {0}, {0}, {0}};
    for (int64_t i = 0; i < S * S; ++i) e.a[i] = (real)A[i];
    for (int64_t i = 0; i < S; ++i) e.e[i] = (real)E[i];
    for (int64_t i = 0; i < S * D; ++i) e.P[i] = (real)P[i];
    Problem p = {B, G, K, Q, slot_src, c0, c1, inv_thr, hill, prod, deg, mult, add, clamp,
                 c0d, c1d, itd, hilld, prodd, degd};
    if (stiff_after > 0 && (S < 3 || check_every < 2 || Q)) return -2;
    LoopSettings c = {T, window, t_save, rtol, atol, first_step, steady_tol, safety, beta, factor_min,
                      factor_max, max_steps, stiff_after, check_every, use_rho};
    Stepper proto = {erk_step, erk_dense, S - 1, error_order, NULL, NULL, erk_stiffness, NULL};
    const int64_t W = (1 + Q) * G;
    run_rows(&p, &c, t_start, x0, make_erk, &e, (2 * S + 1) * W, proto, out, status_out, counters, t_last, y_last,
             nthreads, tapes);
    return 0;
}

int genenet_rodas_hill(PROBLEM_ARGS, int64_t S, double gamma, const double *A, const double *Cm, const double *Bv,
                       const double *E, int64_t M, const double *H, int64_t error_order, LOOP_ARGS) {
    if (S > 16 || M > 8) return -1;
    RodasMethod d = {S, M, (real)gamma, {0}, {0}, {0}, {0}, {0}};
    for (int64_t i = 0; i < S * S; ++i) { d.a[i] = (real)A[i]; d.C[i] = (real)Cm[i]; }
    for (int64_t i = 0; i < S; ++i) { d.b[i] = (real)Bv[i]; d.e[i] = (real)E[i]; }
    for (int64_t i = 0; i < M * S; ++i) d.H[i] = (real)H[i];
    Problem p = {B, G, K, 0, slot_src, c0, c1, inv_thr, hill, prod, deg, mult, add, clamp,
                 NULL, NULL, NULL, NULL, NULL, NULL};
    if (stiff_after > 0) return -2; /* stiffness detection is for the explicit methods */
    LoopSettings c = {T, window, t_save, rtol, atol, first_step, steady_tol, safety, beta, factor_min,
                      factor_max, max_steps, 0, check_every, use_rho};
    Stepper proto = {rodas_step, rodas_dense, S, error_order, NULL, NULL, NULL, NULL};
    run_rows(&p, &c, t_start, x0, make_rodas, &d, (S + 2 + M) * G + G * G, proto, out, status_out, counters,
             t_last, y_last, nthreads, NULL);
    return 0;
}

/* ------------------------------------------------------------------ discrete adjoint of the explicit kernel */

/* the vectorized log of hill.h, for its test */
void genenet_log_pos(int64_t n, const real *x, real *out) { log_pos(n, x, out); }

/* B empty tapes of an S-stage FSAL method (S >= 2) and G genes, their y_end in the same block */
Tape *genenet_tapes_new(int64_t B, int64_t S, int64_t G) {
    if (S < 2) return NULL;
    const size_t nb = (size_t)(B > 0 ? B : 1);
    Tape *tp = (Tape *)calloc(1, nb * sizeof(Tape) + nb * (size_t)G * sizeof(real));
    real *ends = tp ? (real *)(tp + nb) : NULL;
    for (int64_t b = 0; tp && b < B; ++b) { tp[b].S = S; tp[b].G = G; tp[b].y_end = ends + b * G; }
    return tp;
}

int64_t genenet_tapes_oom(const Tape *tp, int64_t B) {
    int64_t n = 0;
    for (int64_t b = 0; b < B; ++b) n += tp[b].oom;
    return n;
}

void genenet_tapes_free(Tape *tp, int64_t B) {
    if (!tp) return;
    int64_t blocks = 0;
    for (int64_t b = 0; b < B; ++b)
        for (const TapeBlock *k = tp[b].last; k; k = k->prev) blocks++;
    for (int64_t b = 0; b < B; ++b) /* the pool keeps this set's blocks for the next one */
        if (tp[b].last) tape_blocks_put(tp[b].last, tape_block_bytes(tp[b].S, tp[b].G), blocks);
    free(tp);
}

/* Cap the fresh tape memory of the solves that follow at `limit` bytes (< 0: no cap) */
void genenet_tape_budget(int64_t limit) {
    pthread_mutex_lock(&tape_pool_lock);
    tape_fresh_bytes = 0;
    tape_fresh_limit = limit < 0 ? INT64_MAX : limit;
    pthread_mutex_unlock(&tape_pool_lock);
}

/* Bytes of tape blocks in use now and at most since the last reset (reset: peak = now) */
void genenet_tape_bytes(int64_t *now, int64_t *peak, int reset) {
    pthread_mutex_lock(&tape_pool_lock);
    if (reset) tape_bytes_peak = tape_bytes_used;
    *now = tape_bytes_used;
    *peak = tape_bytes_peak;
    pthread_mutex_unlock(&tape_pool_lock);
}

/* Free the pooled tape blocks (genenet.native.release_memory) */
void genenet_tape_pool_release(void) {
    tape_blocks_put(NULL, 0, 0);
}

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

/* The cotangents ybar of the saves one step wrote, (t, t1], added as the sweeps need them: a save at
   t1 to yb1 (the state after the step), one inside through the dense output y + h sum_j w_j k_j to yb
   and to the first `stages` stage cotangents kbar (S, G). *si_hi walks down the save indices; saves
   after t1 (after a failure) were never written. wd: work (S). */
static void step_save_cotangents(const ErkMethod *e, const real *t_save, const real *ybar, int64_t G, int64_t stages,
                                 real t, real t1, real h, int64_t *si_hi, real *yb, real *yb1, real *kbar, real *wd) {
    for (; *si_hi >= 1 && t_save[*si_hi] > t; --*si_hi) {
        const int64_t si = *si_hi;
        if (t_save[si] > t1) continue;
        const real *ob = ybar + si * G;
        if (t_save[si] == t1) {
            for (int64_t i = 0; i < G; ++i) yb1[i] += ob[i];
            continue;
        }
        real hd = h > 0 ? h : (real)1, th = (t_save[si] - t) / hd;
        th = th < 0 ? 0 : (th > 1 ? 1 : th);
        dense_weights(e->P, e->S, e->D, th, wd);
        for (int64_t i = 0; i < G; ++i) yb[i] += ob[i];
        for (int64_t j = 0; j < stages; ++j) {
            if (wd[j] == 0) continue;
            const real q = h * wd[j];
            for (int64_t i = 0; i < G; ++i) kbar[j * G + i] += q * ob[i];
        }
    }
}

/* Reverse sweep over one row's tape. ybar (T, G): the cotangent of the saved outputs; x0b (G): of
   the initial state; ylast_bar (G): of the final state. Work: ADJOINT_WORK(S, G, K G) reals. */
#define ADJOINT_WORK(S, G, KG) ((S + 4) * (G) + (S) + 2 * (KG) + 10 * (S) * (KG) + 3 * (S) * (G) + 64)
static void erk_adjoint_row(const Row *r, const Tape *tp, const ErkMethod *e, const real *t_save, int64_t T,
                            const real *ybar, const real *ylast_bar, real *x0b, real *c0b, real *c1b, real *itb, real *nb, real *gb,
                            real *kb, real *work) {
    const int64_t G = r->G, S = e->S, D = e->D;
    const int64_t KG = r->K * G;
    real *kbar = work, *yb = kbar + S * G, *Yb = yb + G, *yb1 = Yb + G, *ug = yb1 + G, *wd = ug + G;
    real *P0 = wd + S, *xg = P0 + S * G, *lz = xg + S * KG, *zn = lz + S * KG,
         *H = zn + S * KG, *Ex = H + S * KG, *sg = Ex + S * KG, *wzn = sg + S * KG, *wl = wzn + S * KG,
         *dxw = wl + S * KG, *dxs = dxw + S * KG, *nb_sink = dxs + KG, /* nb_sink: hill's cotangent unwanted */
         *Yw = nb_sink + KG; /* all S stage inputs of a step whose last stage's VJP is taken */
    const int want_hill = nb != NULL;
    if (c0b && !nb) {
        memset(nb_sink, 0, sizeof(real) * (size_t)KG);
        nb = nb_sink;
    }
    memcpy(yb, ylast_bar, sizeof(real) * (size_t)G); /* the final state y_last */
    for (int64_t si = tp->steady_from; si < T; ++si) /* copies of the final state */
        for (int64_t i = 0; i < G; ++i) yb[i] += ybar[si * G + i];
    int64_t si_hi = tp->steady_from - 1; /* last save index written by a step */
    const int64_t rec = TAPE_HEAD + (S - 1) * G;
    int carried = 0; /* this step's last stage's cotangent went to the next step's first stage */
    const real *y1 = tp->y_end; /* the step's last stage input: the newer step's first (FSAL) */
    for (const TapeBlock *blk = tp->last; blk; blk = blk->prev)
    for (int64_t q = blk->n - 1; q >= 0; --q) {
        const real *stp = blk->data + q * rec, *Yrec = stp + TAPE_HEAD, *Y = Yrec; /* (S - 1, G) */
        const real t = stp[0], t1 = stp[1], h = stp[2];
        /* the step before this one (the sweep's next) */
        const real *prv = q > 0 ? stp - rec : (blk->prev ? blk->prev->data + (blk->prev->n - 1) * rec : NULL);
        /* the sweep reads the tape backward, which hardware prefetchers follow poorly: fetch the
           next (older) record while this one is worked on */
        if (prv)
            for (int64_t o = 0; o < rec; o += (int64_t)(64 / sizeof(real))) __builtin_prefetch(prv + o, 0, 3);
        memcpy(yb1, yb, sizeof(real) * (size_t)G); /* cotangent of y1, the state after the step */
        memset(yb, 0, sizeof(real) * (size_t)G);
        memset(kbar, 0, sizeof(real) * (size_t)(S * G));
        step_save_cotangents(e, t_save, ybar, G, S - carried, t, t1, h, &si_hi, yb, yb1, kbar, wd);
        /* FSAL: the step before ends at this one's start, its last stage is f(y) = this step's first,
           at the same state, so the cotangent its dense output gives that stage joins this step's
           first stage's (one VJP instead of two) */
        carried = prv != NULL && prv[1] == t;
        if (carried) {
            const real tp0 = prv[0], hp = prv[2], hd = hp > 0 ? hp : (real)1;
            for (int64_t sj = si_hi; sj >= 1 && t_save[sj] > tp0; --sj) {
                if (t_save[sj] >= t) continue; /* at the step's end: no stage */
                real th = (t_save[sj] - tp0) / hd;
                th = th < 0 ? 0 : (th > 1 ? 1 : th);
                dense_weights(e->P, S, D, th, wd);
                real qs = hp * wd[S - 1];
                if (qs == 0) continue;
                const real *ob = ybar + sj * G;
                for (int64_t i = 0; i < G; ++i) kbar[i] += qs * ob[i];
            }
        }
        /* the last stage (f(y1)) only matters when a save used it */
        int last = 0;
        for (int64_t i = 0; i < G; ++i) last |= kbar[(S - 1) * G + i] != 0;
        const int64_t NS = last ? S : S - 1;
        if (last) { /* the record holds the first S - 1 stage inputs */
            memcpy(Yw, Y, sizeof(real) * (size_t)((S - 1) * G));
            memcpy(Yw + (S - 1) * G, y1, sizeof(real) * (size_t)G);
            Y = Yw;
        }
        hill_vjp_prepare(NS, G, r->K, r->slot_src, Y, r->c0, r->c1, r->inv_thr, r->hill, r->nint, want_hill, xg,
                         lz, zn, H, Ex, sg, wzn, wl, dxw, P0);
        /* stages in reverse: Y_s = y + h sum_l a_sl k_l, k_s = f(Y_s); y1 = Y_{S-1} */
        for (int64_t s = S - 1; s >= 0; --s) {
            if (s == S - 1) memcpy(Yb, yb1, sizeof(real) * (size_t)G);
            else memset(Yb, 0, sizeof(real) * (size_t)G);
            real *ks = kbar + s * G;
            int any = 0;
            for (int64_t i = 0; i < G; ++i) any |= ks[i] != 0;
            /* H (prepare's work) holds each stage's H cotangents from here on */
            if (any) {
                const int64_t o = s * KG;
                hill_vjp_apply(G, r->K, r->slot_src, Y + s * G, ks, r->prod, r->deg, r->mult, r->clamp, Ex + o,
                               dxw + o, P0 + s * G, Yb, c0b ? H + o : NULL, gb, kb, ug, dxs);
            } else if (c0b && s < NS) {
                memset(H + s * KG, 0, sizeof(real) * (size_t)KG);
            }
            for (int64_t i = 0; i < G; ++i) yb[i] += Yb[i];
            for (int64_t l = 0; l < s; ++l) {
                real q = h * e->a[s * S + l];
                if (q == 0) continue;
                for (int64_t i = 0; i < G; ++i) kbar[l * G + i] += q * Yb[i];
            }
        }
        if (c0b) slot_cotangents(NS, KG, H, sg, wzn, wl, c0b, c1b, itb, nb);
        y1 = Yrec;
    }
    for (int64_t i = 0; i < G; ++i) x0b[i] = yb[i] + (tp->first_saved ? ybar[i] : (real)0);
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
    ErkMethod e = {S, D, {0}, {0}, {0}};
    for (int64_t i = 0; i < S * S; ++i) e.a[i] = (real)A[i];
    for (int64_t i = 0; i < S * D; ++i) e.P[i] = (real)P[i];
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
    ErkMethod e = {S, D, {0}, {0}, {0}};
    for (int64_t i = 0; i < S * S; ++i) e.a[i] = (real)A[i];
    for (int64_t i = 0; i < S * D; ++i) e.P[i] = (real)P[i];
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

/* Every active row's iteration from x (B, G), updated in place; converged (B), iters (B). Rows not
   active (active[b] == 0) only have their convergence checked. mode 0: Newton, 1: continuation. */
int genenet_roots_hill(int64_t B, int64_t G, int64_t K, const int32_t *slot_src, const real *c0, const real *c1,
                       const real *inv_thr, const real *hill, const real *prod, const real *deg, const real *mult,
                       const real *add, const uint8_t *clamp, real *x, const uint8_t *active, int64_t mode,
                       double tol, int64_t max_iter, int64_t give_up, double dt0, uint8_t *converged,
                       int64_t *iters, int64_t nthreads) {
    if (mode != 0 && mode != 1) return -1;
    Problem p = {B, G, K, 0, slot_src, c0, c1, inv_thr, hill, prod, deg, mult, add, clamp,
                 NULL, NULL, NULL, NULL, NULL, NULL};
    const RootSettings c = {mode, (real)tol, (real)dt0, max_iter, give_up};
    const int64_t KG = K * G;
#pragma omp parallel num_threads((int)nthreads)
    {
        real *work = (real *)malloc(sizeof(real) * (size_t)(2 * G * G + 6 * G + 6 * KG + 64));
        int64_t *piv = (int64_t *)malloc(sizeof(int64_t) * (size_t)G);
        int *nint_w = (int *)malloc(sizeof(int) * (size_t)(KG + 1));
        RootWork w = {work, work + G, work + 2 * G, work + 3 * G, work + 4 * G, work + 4 * G + G * G, piv};
        real *H = work + 4 * G + 2 * G * G, *tw = H + KG;
#pragma omp for schedule(dynamic, 1)
        for (int64_t b = 0; b < B; ++b) {
            Row r = row_of(&p, b, H, integer_hill(hill + b * KG, KG, nint_w), tw);
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
        free(nint_w);
    }
    return 0;
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
    ErkMethod e = {S, D, {0}, {0}, {0}};
    for (int64_t i = 0; i < S * S; ++i) e.a[i] = (real)A[i];
    for (int64_t i = 0; i < S; ++i) e.e[i] = (real)Ev[i];
    for (int64_t i = 0; i < S * D; ++i) e.P[i] = (real)P[i];
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
