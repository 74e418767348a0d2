/* Whole-trajectory adaptive explicit Runge-Kutta for the shifted-Hill model, one row per task.

   The CPU analogue of a per-trajectory GPU kernel (DiffEqGPU's EnsembleGPUKernel): each row
   runs its own step loop from t0 to t_end with its own step size, so there is no per-step
   Python, no per-step tensor allocation and no lock-step with the other rows. Rows are spread
   over threads with OpenMP.

   It reproduces genenet.solvers.integrate.integrate for an FSAL method (Dopri5, Tsit5) step
   for step: the same initial step (Hairer), PI controller, save window, landing on the final
   time, dense output, steady-state early stop, status codes and counters; the Python loop is
   the reference it is tested against (same steps, values equal to rounding).

   Model (genenet.Hill with its condition effects, see genenet/models/hill.py):
     P_i  = g_i * prod_k H_(k,i)(x_src(k,i)) * mult_i + add_i
     H    = c0 + c1 / (1 + (max(x, 0) / T)^n)          (slot layout (K, G), dummy slots H = 1)
     dx_i = P_i - k_i x_i,   0 for clamped genes.

   Forward sensitivities: with Q > 0 the state is [x, xdot_1..xdot_Q] ((1 + Q) G columns) and the
   tangents follow the same steps (error control, initial step and steady stop see only x), as
   genenet.sensitivity does on the torch loop with n_primal = G. Per direction j
     Hdot  = c0dot + c1dot s + c1 ds,   ds = -s^2 d(z^n),
     d(z^n) = n z^n (xdot_src / x_src + itdot / it) + z^n log(z) ndot      (x_src > 0)
     Pdot_i = (gdot_i prod H + g_i prod H sum_k Hdot_k / H_k) mult_i,   Ddot_i = kdot_i x_i + k_i xdot_i
   with the right derivative at x_src <= 0 (d(z^n)/dx = it for n = 1, else 0), as Hill.production_jvp.

   Compiled at first use by genenet/native/__init__.py with REAL = float or double. */

#include <tgmath.h> /* pow, sqrt, fabs of the argument's type: powf for float */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#ifndef REAL
#define REAL double
#endif
typedef REAL real;

enum { RUNNING = -1, SUCCESS = 0, MAX_STEPS = 1, STEP_UNDERFLOW = 2, NONFINITE = 3 };

typedef struct {
    int64_t G, K;
    const int32_t *slot_src;                 /* (K*G) */
    const real *c0, *c1, *inv_thr, *hill;    /* (K*G) for this row */
    const real *prod, *deg;                  /* (G) */
    const real *mult, *add;                  /* (G) or NULL */
    const uint8_t *clamp;                    /* (G) or NULL */
    real *H;                                 /* work (K*G) */
    const int *nint;                         /* (K*G) integer hill coefficients, or NULL */
    int64_t Q;                               /* tangent directions (0: state only) */
    const real *c0d, *c1d, *itd, *hilld;     /* (Q, K*G) parameter tangents for this row, or NULL */
    const real *prodd, *degd;                /* (Q, G), or NULL */
    real *tw;                                /* tangent work (6 K*G + 2 G) */
} Row;

/* z^n: by repeated squaring for the integer hill coefficients RACIPE draws (1..6), about five times
   cheaper than pow and equal to it within a few ulps; pow otherwise */
static inline real hill_pow(real z, real n) {
    if (n >= 0 && n <= 32 && n == (real)(int)n) {
        int k = (int)n;
        real acc = 1, base = z;
        while (k) {
            if (k & 1) acc *= base;
            base *= base;
            k >>= 1;
        }
        return acc;
    }
    return pow(z, n);
}

/* z^n for a small integer n (0..15) without branches, so the slot loop vectorizes (products of
   z, z^2, z^4, z^8 by the bits of n, within an ulp or two of hill_pow) */
static inline real small_int_pow(real z, int n) {
    real z2 = z * z, z4 = z2 * z2, z8 = z4 * z4;
    real f1 = (n & 1) ? z : (real)1;
    real f2 = (n & 2) ? z2 : (real)1;
    real f4 = (n & 4) ? z4 : (real)1;
    real f8 = (n & 8) ? z8 : (real)1;
    return ((f1 * f2) * f4) * f8;
}

static void rhs_state(const Row *r, const real *x, real *dx) {
    const int64_t G = r->G, KG = r->K * r->G;
    real *restrict H = r->H;
    const real *restrict c0 = r->c0, *restrict c1 = r->c1, *restrict it = r->inv_thr;
    if (r->nint) { /* every hill coefficient of the row is an integer in 0..15 */
        const int *restrict nint = r->nint;
        for (int64_t s = 0; s < KG; ++s) H[s] = x[r->slot_src[s]]; /* gather first: the rest vectorizes */
        for (int64_t s = 0; s < KG; ++s) {
            real xs = H[s] > 0 ? H[s] : (real)0;
            real z = small_int_pow(xs * it[s], nint[s]);
            H[s] = c0[s] + c1[s] * ((real)1 / ((real)1 + z));
        }
    } else {
        for (int64_t s = 0; s < KG; ++s) {
            real xs = x[r->slot_src[s]];
            xs = xs > 0 ? xs : (real)0;
            real z = hill_pow(xs * it[s], r->hill[s]);
            H[s] = c0[s] + c1[s] * ((real)1 / ((real)1 + z));
        }
    }
    for (int64_t k = 1; k < r->K; ++k) /* product over the K slots of each gene, into slot row 0 */
        for (int64_t i = 0; i < G; ++i) H[i] *= H[k * G + i];
    for (int64_t i = 0; i < G; ++i) {
        real P = r->K > 0 ? r->prod[i] * H[i] : r->prod[i];
        if (r->mult) P = P * r->mult[i];
        if (r->add) P = P + r->add[i];
        real D = r->deg[i] * x[i];
        dx[i] = (r->clamp && r->clamp[i]) ? (real)0 : P - D;
    }
}

/* d/dtheta of the right-hand side along the Q tangent directions stored after x (see the header).
   Per slot first: the coefficients of xdot_src, itdot, ndot, c0dot, c1dot in Hdot / H; then each
   direction is a few fused multiply-adds per slot. */
static void rhs_tangents(const Row *r, const real *x, real *dx) {
    const int64_t G = r->G, K = r->K, KG = K * G, Q = r->Q;
    real *wx = r->tw, *wt = wx + KG, *wn = wt + KG, *w0 = wn + KG, *w1 = w0 + KG, *P0 = w1 + KG, *acc = P0 + G;
    for (int64_t i = 0; i < G; ++i) P0[i] = 1;
    for (int64_t s = 0; s < KG; ++s) {
        real xsrc = x[r->slot_src[s]], xs = xsrc > 0 ? xsrc : (real)0;
        real c0 = r->c0[s], c1 = r->c1[s], it = r->inv_thr[s], n = r->hill[s];
        real z = xs * it, zn = hill_pow(z, n), sg = (real)1 / ((real)1 + zn), H = c0 + c1 * sg;
        real wz = -c1 * sg * sg / H; /* (dH / d z^n) / H */
        P0[s % G] *= H;
        wx[s] = xsrc > 0 ? wz * n * zn / xs : (n == 1 ? -c1 * n * it / (c0 + c1) : (real)0);
        wt[s] = wz * n * zn / it;
        wn[s] = z > 0 ? wz * zn * log(z) : (real)0;
        w0[s] = (real)1 / H;
        w1[s] = sg / H;
    }
    for (int64_t j = 0; j < Q; ++j) {
        const real *xd = x + (1 + j) * G;
        real *out = dx + (1 + j) * G;
        const int64_t o = j * KG;
        for (int64_t i = 0; i < G; ++i) acc[i] = 0;
        for (int64_t k = 0; k < K; ++k) {
            const int64_t b0 = k * G;
            for (int64_t i = 0; i < G; ++i) acc[i] += wx[b0 + i] * xd[r->slot_src[b0 + i]];
            if (r->itd) for (int64_t i = 0; i < G; ++i) acc[i] += wt[b0 + i] * r->itd[o + b0 + i];
            if (r->hilld) for (int64_t i = 0; i < G; ++i) acc[i] += wn[b0 + i] * r->hilld[o + b0 + i];
            if (r->c0d) for (int64_t i = 0; i < G; ++i) acc[i] += w0[b0 + i] * r->c0d[o + b0 + i];
            if (r->c1d) for (int64_t i = 0; i < G; ++i) acc[i] += w1[b0 + i] * r->c1d[o + b0 + i];
        }
        for (int64_t i = 0; i < G; ++i) {
            real Pd = r->prod[i] * P0[i] * acc[i];
            if (r->prodd) Pd += r->prodd[j * G + i] * P0[i];
            if (r->mult) Pd *= r->mult[i];
            real Dd = r->deg[i] * xd[i];
            if (r->degd) Dd += r->degd[j * G + i] * x[i];
            out[i] = (r->clamp && r->clamp[i]) ? (real)0 : Pd - Dd;
        }
    }
}

static void rhs(const Row *r, const real *x, real *dx) {
    rhs_state(r, x, dx);
    if (r->Q) rhs_tangents(r, x, dx);
}

/* acc = sum_j c_j k_j over the nonzero c_j, in order (the same sums as the torch path) */
static void weighted(const real *c, int64_t n, const real *restrict ks, int64_t stride, int64_t G,
                     real *restrict acc) {
    int first = 1;
    for (int64_t j = 0; j < n; ++j) {
        const real cj = c[j], *restrict kj = ks + j * stride;
        if (cj == 0) continue;
        if (first) {
            for (int64_t i = 0; i < G; ++i) acc[i] = kj[i] * cj;
        } else {
            for (int64_t i = 0; i < G; ++i) acc[i] = acc[i] + cj * kj[i];
        }
        first = 0;
    }
    if (first) memset(acc, 0, sizeof(real) * (size_t)G);
}

static real rms(const real *v, const real *scale, int64_t G) {
    real acc = 0;
    for (int64_t i = 0; i < G; ++i) {
        real q = v[i] / scale[i];
        acc += q * q;
    }
    return sqrt(acc / (real)G);
}

int genenet_erk_hill(
    int64_t B, int64_t G, int64_t K, int64_t T, const real *t_save, const real *x0,
    const int32_t *slot_src, const real *c0, const real *c1, const real *inv_thr, const real *hill,
    const real *prod, const real *deg, const real *mult, const real *add, const uint8_t *clamp,
    int64_t Q, const real *c0d, const real *c1d, const real *itd, const real *hilld, const real *prodd,
    const real *degd, const real *rtol, const real *atol,
    int64_t S, const double *A, const double *E, int64_t D, const double *P, int64_t error_order,
    double first_step, int64_t max_steps, double steady_tol, int64_t window,
    double safety, double beta, double factor_min, double factor_max,
    real *out, int64_t *status_out, int64_t *counters, real *t_last, real *y_last, int64_t nthreads)
{
    const real t0 = t_save[0], t_end = t_save[T - 1];
    const int64_t W = (1 + Q) * G; /* state width: x and its Q tangents */
    const int64_t Kw = window < T - 1 ? (window > 1 ? window : 1) : (T - 1 > 1 ? T - 1 : 1);
    const real eps = sizeof(real) == 4 ? (real)1.1920929e-07 : (real)2.220446049250313e-16;
    real span_abs = fabs(t0) > fabs(t_end) ? fabs(t0) : fabs(t_end);
    const real tiny = 16 * eps * (span_abs > 1 ? span_abs : (real)1);
    const real alpha = (real)(1.0 / (error_order + 1) - 0.75 * beta);
    real a[16 * 16], e[16], Pd[16 * 8];
    if (S > 16 || D > 8) return -1;
    for (int64_t i = 0; i < S * S; ++i) a[i] = (real)A[i];
    for (int64_t i = 0; i < S; ++i) e[i] = (real)E[i];
    for (int64_t i = 0; i < S * D; ++i) Pd[i] = (real)P[i];

#pragma omp parallel num_threads((int)nthreads)
    {
        real *work = (real *)malloc(sizeof(real) * (size_t)((S + 4) * W + 4 * G + 7 * K * G + 64));
        real *ks = work;                 /* S x W stages */
        real *y = ks + S * W, *y1 = y + W, *yi = y1 + W, *tmp = yi + W, *err = tmp + W, *scale = err + G;
        real *Hw = scale + G, *tw = Hw + K * G;
        int *nint_w = (int *)malloc(sizeof(int) * (size_t)(K * G + 1));
#pragma omp for schedule(dynamic, 4)
        for (int64_t b = 0; b < B; ++b) {
            Row r = {G, K, slot_src, c0 + b * K * G, c1 + b * K * G, inv_thr + b * K * G, hill + b * K * G,
                     prod + b * G, deg + b * G, mult ? mult + b * G : NULL, add ? add + b * G : NULL,
                     clamp ? clamp + b * G : NULL, Hw, NULL, Q,
                     c0d ? c0d + b * Q * K * G : NULL, c1d ? c1d + b * Q * K * G : NULL,
                     itd ? itd + b * Q * K * G : NULL, hilld ? hilld + b * Q * K * G : NULL,
                     prodd ? prodd + b * Q * G : NULL, degd ? degd + b * Q * G : NULL, tw};
            int all_int = 1;
            for (int64_t q = 0; q < K * G; ++q) {
                real n = r.hill[q];
                all_int &= n >= 0 && n <= 15 && n == (real)(int)n;
                nint_w[q] = all_int ? (int)n : 0;
            }
            if (all_int) r.nint = nint_w;
            real *ob = out + b * T * W;
            int64_t n_steps = 0, n_acc = 0, n_rhs = 0, save_ptr = 1, st = RUNNING;
            real t = t0, h, prev_err = 1;
            int rejected_before = 0, last_nonfinite = 0;
            memcpy(y, x0 + b * W, sizeof(real) * W);
            memcpy(ob, y, sizeof(real) * W);
            real *f0 = ks; /* FSAL: stage 0 of the next step */
            rhs(&r, y, f0);
            n_rhs++;
            if (first_step > 0) {
                h = (real)first_step;
            } else { /* Hairer's starting step, as genenet.solvers.integrate.initial_step */
                for (int64_t i = 0; i < G; ++i) scale[i] = atol[i] + rtol[i] * fabs(y[i]);
                real d0 = rms(y, scale, G), d1 = rms(f0, scale, G);
                real span = t_end - t;
                real h0 = (d0 < (real)1e-5 || d1 < (real)1e-5) ? (real)1e-6
                          : (real)0.01 * d0 / (d1 > (real)1e-300 ? d1 : (real)1e-300);
                h0 = h0 < span ? h0 : span;
                for (int64_t i = 0; i < G; ++i) yi[i] = y[i] + h0 * f0[i];
                rhs_state(&r, yi, tmp); /* the tangents do not steer the step */
                for (int64_t i = 0; i < G; ++i) tmp[i] = tmp[i] - f0[i];
                real d2 = rms(tmp, scale, G) / h0;
                real dmax = d1 > d2 ? d1 : d2;
                real h1 = dmax <= (real)1e-15 ? ((real)1e-6 > h0 * (real)1e-3 ? (real)1e-6 : h0 * (real)1e-3)
                          : (real)pow((real)0.01 / (dmax > (real)1e-300 ? dmax : (real)1e-300),
                                      (real)1 / (real)(error_order + 1));
                h = 100 * h0 < h1 ? 100 * h0 : h1;
                if (!(isfinite(h) && h > 0)) h = (real)1e-6;
                h = h < span ? h : span;
                n_rhs++;
            }
            while (st == RUNNING) {
                int64_t wi = save_ptr + Kw - 1;
                real window_end = t_save[wi < T - 1 ? wi : T - 1];
                real target = t_end < window_end ? t_end : window_end;
                int land = h * (real)(1 + 1e-6) >= target - t;
                real h_try = land ? target - t : h;
                real t1 = land ? target : t + h_try;
                /* stages 1..S-1; the last (FSAL) one is f(t1, y1) with y1 = its stage value */
                for (int64_t s = 1; s < S; ++s) {
                    weighted(a + s * S, s, ks, W, W, tmp);
                    for (int64_t i = 0; i < W; ++i) yi[i] = y[i] + h_try * tmp[i];
                    if (s == S - 1) memcpy(y1, yi, sizeof(real) * W);
                    rhs(&r, yi, ks + s * W);
                }
                n_rhs += S - 1;
                weighted(e, S, ks, W, G, err);
                for (int64_t i = 0; i < G; ++i) {
                    err[i] = h_try * err[i];
                    real ay = fabs(y[i]), ay1 = fabs(y1[i]);
                    scale[i] = atol[i] + rtol[i] * (ay > ay1 ? ay : ay1);
                }
                real err_norm = rms(err, scale, G);
                int finite = isfinite(err_norm);
                if (!finite) err_norm = (real)INFINITY;
                int accept = err_norm <= 1;
                if (accept) { /* dense output at the save times in (t, t1] of the window */
                    int64_t saved = 0;
                    for (int64_t q = 0; q < Kw; ++q) {
                        int64_t si = save_ptr + q;
                        if (si >= T) break;
                        real ts = t_save[si];
                        if (!(ts <= t1)) continue;
                        real *dst = ob + si * W;
                        if (ts == t1) {
                            memcpy(dst, y1, sizeof(real) * W);
                        } else {
                            real hd = h_try > 0 ? h_try : (real)1;
                            real th = (ts - t) / hd;
                            th = th < 0 ? 0 : (th > 1 ? 1 : th);
                            real w[16];
                            for (int64_t j = 0; j < S; ++j) {
                                real acc = 0, pw = th;
                                for (int64_t d = 0; d < D; ++d) { acc += Pd[j * D + d] * pw; pw *= th; }
                                w[j] = acc;
                            }
                            for (int64_t i = 0; i < W; ++i) {
                                real acc = 0;
                                for (int64_t j = 0; j < S; ++j) acc += w[j] * ks[j * W + i];
                                dst[i] = y[i] + h_try * acc;
                            }
                        }
                        saved++;
                    }
                    save_ptr += saved;
                    t = t1;
                    memcpy(y, y1, sizeof(real) * W);
                    memcpy(ks, ks + (S - 1) * W, sizeof(real) * W); /* FSAL */
                }
                n_steps++;
                n_acc += accept;
                if (steady_tol >= 0 && accept && t < t_end) {
                    real fmax = 0, ymax = 0;
                    for (int64_t i = 0; i < G; ++i) {
                        real af = fabs(f0[i]), ay = fabs(y[i]);
                        fmax = af > fmax ? af : fmax;
                        ymax = ay > ymax ? ay : ymax;
                    }
                    if (fmax <= (real)steady_tol * (1 + ymax)) {
                        for (int64_t si = save_ptr; si < T; ++si) memcpy(ob + si * W, y, sizeof(real) * W);
                        save_ptr = T;
                        st = SUCCESS;
                        t = t_end;
                    }
                }
                /* PI step control, as genenet.solvers.controller.PIController */
                real safe_err = err_norm > (real)1e-10 ? err_norm : (real)1e-10;
                real raw = (real)pow(safe_err, alpha);
                real h_new;
                if (accept) {
                    real grow = raw / (real)pow(prev_err, (real)beta) / (real)safety;
                    real lo = (real)(1.0 / factor_max), hi = (real)(1.0 / factor_min);
                    grow = grow < lo ? lo : (grow > hi ? hi : grow);
                    h_new = h_try / grow;
                    if (rejected_before) h_new = h_new < h_try ? h_new : h_try;
                    prev_err = err_norm > (real)1e-4 ? err_norm : (real)1e-4;
                    if (land) h_new = h_new > h ? h_new : h;
                } else {
                    real q = raw / (real)safety;
                    real hi = (real)(1.0 / factor_min);
                    q = q > hi ? hi : q;
                    q = q < 1 ? 1 : q;
                    h_new = h_try / q;
                }
                if (st == RUNNING) {
                    rejected_before = !accept;
                    last_nonfinite = !finite;
                    h = h_new;
                    if (!accept && h < tiny) st = last_nonfinite ? NONFINITE : STEP_UNDERFLOW;
                    if (accept && t >= t_end) st = SUCCESS;
                    if (st == RUNNING && n_steps >= max_steps) st = MAX_STEPS;
                }
            }
            status_out[b] = st;
            counters[b] = n_steps;
            counters[B + b] = n_acc;
            counters[2 * B + b] = n_steps - n_acc;
            counters[3 * B + b] = n_rhs;
            t_last[b] = t;
            memcpy(y_last + b * W, y, sizeof(real) * W);
        }
        free(work);
        free(nint_w);
    }
    return 0;
}
