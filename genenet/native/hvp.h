/* Second-order discrete adjoint of the explicit kernel: Hessian-vector products of a scalar function
   of the computed solution, forward over reverse, in C like the first-order sweep (kernels.c).

   The first-order sweep computes, for the cotangents ybar of the saved outputs (and ylast_bar of the
   final state), the gradient of Phi = <ybar, y(p, x0)> + <ylast_bar, y_last> with respect to the
   model arrays p and x0, step sizes held constant. Differentiating that sweep in a direction
   (pdot, x0dot) gives (H_Phi (pdot, x0dot)) with ybar held constant; with the tangent of the
   trajectory ydot, which this also returns, autograd assembles the full Hessian-vector product of
   any loss L(y, theta) (genenet.native._ErkHillAdjoint): the loss's own second derivative comes in
   through ybar's dependence on y.

   Per row: (1) the tangent of every step along the tape, Ydot_s = ydot + h sum_l a_sl kdot_l with
   kdot = df/dx Ydot + df/dp pdot (rhs_tangents of hill.h, the forward-sensitivity code), which also
   gives ydot at the save times (the dense output's tangent) and at the end; (2) the reverse sweep of
   the first-order adjoint carried with its tangent: per stage, with the stage cotangent kbar and its
   tangent kbard,
     Ybar  += f_x^T kbar,
     Ybard += f_x^T kbard + D(f_x^T kbar),    pbard += f_p^T kbard + D(f_p^T kbar),
   D the derivative along (Ydot_s, pdot) (hill_vjp_dual). The result is pbard, x0bard = ybard at the
   start: the Hessian of Phi times the direction. */

#ifndef GENENET_HVP_H
#define GENENET_HVP_H

#include "hill.h"

/* the direction's arrays of one row: slot arrays (K G), gene arrays (G); NULL for a zero tangent */
typedef struct {
    const real *c0, *c1, *it, *n, *g, *k;
} Direction;

#define DUAL_WORK(G, KG) (14 * (KG) + 6 * (G))

/* One stage's VJPs at the state x with cotangent a, and their derivatives along (xd, v):
     xb  += a^T f_x,   xbd += ad^T f_x + D(a^T f_x),   ph += ad^T f_p + D(a^T f_p)
   for the slot arrays (c0h, c1h, ith, nh) and gene arrays (gh, kh). With (see hill.h)
     f_i = g_i mult_i prod_k H_(k,i) + add_i - k_i x_i,  H = c0 + c1 s,  s = 1 / (1 + p),  p = z^n,
     z = max(x_src, 0) it,
   the first-order VJP per slot is Hb = u_i g_i prod_(k' != k) H_k' (u = a mult), c0b = Hb,
   c1b = Hb s, and (w = dH/dp = -c1 s^2) xbar_src += Hb w dp/dx, itb = Hb w dp/dit, nb = Hb w dp/dn;
   each term's derivative follows by the product rule from pdot, sdot = -s^2 pdot, Hdot, wdot and the
   derivatives of dp/dx = it n z^(n-1), dp/dit = max(x, 0) n z^(n-1), dp/dn = p log z. At x_src <= 0
   the right derivative of the first-order code holds (dp/dx = it for n = 1, else 0) and the second
   derivatives there are those of the constant branch. Clamped genes pass nothing. */
static void hill_vjp_dual(const Row *r, const Direction *v, const real *x, const real *xd, const real *a,
                          const real *ad, real *xb, real *xbd, real *c0h, real *c1h, real *ith, real *nh, real *gh,
                          real *kh, real *work) {
    const int64_t G = r->G, K = r->K, KG = K * G;
    real *H = work, *Hd = H + KG, *sg = Hd + KG, *sgd = sg + KG, *w = sgd + KG, *wd = w + KG, *px = wd + KG,
         *pxd = px + KG, *pt = pxd + KG, *ptd = pt + KG, *pn = ptd + KG, *pnd = pn + KG, *Ex = pnd + KG,
         *Exd = Ex + KG, *P0 = Exd + KG, *P0d = P0 + G, *acc = P0d + G, *accd = acc + G, *u = accd + G,
         *ud = u + G;
    for (int64_t s = 0; s < KG; ++s) {
        const real xj = x[r->slot_src[s]], xdj = xd[r->slot_src[s]];
        const int pos = xj > 0;
        const real xs = pos ? xj : (real)0, xsd = pos ? xdj : (real)0;
        const real it = r->inv_thr[s], n = r->hill[s], c1 = r->c1[s];
        const real itd = v->it ? v->it[s] : (real)0, nd = v->n ? v->n[s] : (real)0;
        const real c0d = v->c0 ? v->c0[s] : (real)0, c1d = v->c1 ? v->c1[s] : (real)0;
        const real z = xs * it, zd = xsd * it + xs * itd;
        real p, q1, q1d, lz;
        if (z > 0) { /* q1 = dp/dz = n z^(n-1) and its derivative along the direction */
            p = r->nint ? small_int_pow(z, r->nint[s]) : hill_pow(z, n);
            lz = log(z);
            const real pz = p / z;
            q1 = n * pz;
            q1d = pz * (nd + n * nd * lz) + n * (n - 1) * (pz / z) * zd;
        } else {
            p = n == 0 ? (real)1 : (real)0;
            lz = 0;
            q1 = n == 1 ? (real)1 : (real)0;
            q1d = 0;
        }
        px[s] = it * q1;
        pxd[s] = itd * q1 + it * q1d;
        pt[s] = xs * q1;
        ptd[s] = xsd * q1 + xs * q1d;
        const real pd = px[s] * xdj + pt[s] * itd + p * lz * nd; /* pdot */
        pn[s] = p * lz;
        pnd[s] = pd * lz + (z > 0 ? p * zd / z : (real)0);
        const real q = (real)1 / ((real)1 + p), qd = -q * q * pd;
        sg[s] = q;
        sgd[s] = qd;
        H[s] = r->c0[s] + c1 * q;
        Hd[s] = c0d + c1d * q + c1 * qd;
        w[s] = -c1 * q * q;
        wd[s] = -c1d * q * q - 2 * c1 * q * qd;
    }
    /* Ex = prod of the gene's other slots and its derivative (prefix times suffix products, exact
       when an H is 0); P0 = prod of all, P0d its derivative */
    for (int64_t i = 0; i < G; ++i) { P0[i] = 1; P0d[i] = 0; acc[i] = 1; accd[i] = 0; }
    for (int64_t k = 0; k < K; ++k)
        for (int64_t i = 0; i < G; ++i) {
            const int64_t s = k * G + i;
            Ex[s] = P0[i];
            Exd[s] = P0d[i];
            P0d[i] = P0d[i] * H[s] + P0[i] * Hd[s];
            P0[i] *= H[s];
        }
    for (int64_t k = K - 1; k >= 0; --k)
        for (int64_t i = 0; i < G; ++i) {
            const int64_t s = k * G + i;
            Exd[s] = Exd[s] * acc[i] + Ex[s] * accd[i];
            Ex[s] *= acc[i];
            accd[i] = accd[i] * H[s] + acc[i] * Hd[s];
            acc[i] *= H[s];
        }
    for (int64_t i = 0; i < G; ++i) {
        const int off = r->clamp && r->clamp[i];
        const real ai = off ? (real)0 : a[i], adi = off ? (real)0 : ad[i];
        const real m = r->mult ? r->mult[i] : (real)1;
        const real kdi = v->k ? v->k[i] : (real)0, gdi = v->g ? v->g[i] : (real)0;
        u[i] = ai * m;
        ud[i] = adi * m;
        xb[i] -= ai * r->deg[i];
        xbd[i] -= adi * r->deg[i] + ai * kdi;
        gh[i] += ud[i] * P0[i] + u[i] * P0d[i];
        kh[i] -= adi * x[i] + ai * xd[i];
        acc[i] = gdi; /* the production's tangent, for the slots below */
    }
    for (int64_t s = 0; s < KG; ++s) {
        const int64_t i = s % G, j = r->slot_src[s];
        const real g = r->prod[i];
        const real Hb = u[i] * g * Ex[s];
        /* the H cotangent's total second-order part: from ad (first order) and along the direction */
        const real T1 = ud[i] * g * Ex[s] + u[i] * (acc[i] * Ex[s] + g * Exd[s]);
        const real Tw = T1 * w[s] + Hb * wd[s], Hw = Hb * w[s];
        c0h[s] += T1;
        c1h[s] += T1 * sg[s] + Hb * sgd[s];
        xb[j] += Hw * px[s];
        xbd[j] += Tw * px[s] + Hw * pxd[s];
        ith[s] += Tw * pt[s] + Hw * ptd[s];
        nh[s] += Tw * pn[s] + Hw * pnd[s];
    }
}

/* work of erk_hvp_row besides the per-row buffer of the step tangents: HVP_WORK(S, G, K G) reals */
#define HVP_WORK(S, G, KG) (3 * (S) * (G) + 11 * (G) + (S) + DUAL_WORK(G, KG) + 64)

/* One row: the tangent along the tape (ydot (T, G) at the saves, 0 where the forward wrote none;
   ylast_dot (G)), then the sweep with its tangent (x0h (G), the slot arrays' c0h, c1h, ith, nh
   (K G) and gh, kh (G), each overwritten). x0d: the initial state's tangent (G). r->Q = 1 with the
   direction's arrays as its tangents (rhs_tangents). Returns 0, or -1 when out of memory. */
static int erk_hvp_row(const Row *r, const Direction *v, const Tape *tp, const ErkMethod *e, const real *t_save,
                       int64_t T, const real *ybar, const real *ylast_bar, const real *x0d, real *ydot,
                       real *ylast_dot, real *x0h, real *c0h, real *c1h, real *ith, real *nh, real *gh, real *kh,
                       real *work) {
    const int64_t G = r->G, S = e->S, D = e->D, KG = r->K * G, n = tp->n;
    const int64_t rec = TAPE_HEAD + (S - 1) * G;
    real *kd = work, *kbar = kd + S * G, *kbard = kbar + S * G, *yd = kbard + S * G, *xx = yd + G,
         *out = xx + 2 * G, *yb = out + 2 * G, *ybd = yb + G, *yb1 = ybd + G, *ybd1 = yb1 + G, *Yb = ybd1 + G,
         *Ybd = Yb + G, *wd = Ybd + G, *dual = wd + S;
    /* kbar and kbard sit in one (2 S G) block after kd (S G): the work's first 3 S G reals */
    const real **recs = (const real **)malloc(sizeof(real *) * (size_t)(n > 0 ? n : 1));
    real *Yd = (real *)malloc(sizeof(real) * (size_t)((n > 0 ? n : 1) * S * G)); /* every step's stage tangents */
    if (!recs || !Yd) {
        free(recs);
        free(Yd);
        return -1;
    }
    int64_t q = n;
    for (const TapeBlock *blk = tp->last; blk; blk = blk->prev)
        for (int64_t j = blk->n - 1; j >= 0; --j) recs[--q] = blk->data + j * rec;
    memset(ydot, 0, sizeof(real) * (size_t)(T * G));
    memcpy(yd, x0d, sizeof(real) * (size_t)G);
    if (tp->first_saved) memcpy(ydot, x0d, sizeof(real) * (size_t)G);
    /* (1) forward: the tangent of each step */
    int64_t si = 1;
    for (q = 0; q < n; ++q) {
        const real *stp = recs[q], t = stp[0], t1 = stp[1], h = stp[2];
        real *Ydq = Yd + q * S * G;
        for (int64_t s = 0; s < S; ++s) {
            const real *Ys = s < S - 1 ? stp + TAPE_HEAD + s * G : (q + 1 < n ? recs[q + 1] + TAPE_HEAD : tp->y_end);
            real *Yds = Ydq + s * G;
            if (s == 0) {
                memcpy(Yds, yd, sizeof(real) * (size_t)G);
            } else {
                weighted(e->a + s * S, s, kd, G, G, out);
                for (int64_t i = 0; i < G; ++i) Yds[i] = yd[i] + h * out[i];
            }
            memcpy(xx, Ys, sizeof(real) * (size_t)G);
            memcpy(xx + G, Yds, sizeof(real) * (size_t)G);
            rhs_tangents(r, xx, out);
            memcpy(kd + s * G, out + G, sizeof(real) * (size_t)G);
        }
        for (; si < tp->steady_from && t_save[si] <= t1; ++si) { /* the saves this step wrote: (t, t1] */
            if (!(t_save[si] > t)) continue;
            real *dst = ydot + si * G;
            if (t_save[si] == t1) {
                memcpy(dst, Ydq + (S - 1) * G, sizeof(real) * (size_t)G);
                continue;
            }
            real hd = h > 0 ? h : (real)1, th = (t_save[si] - t) / hd;
            th = th < 0 ? 0 : (th > 1 ? 1 : th);
            dense_weights(e->P, S, D, th, wd);
            for (int64_t i = 0; i < G; ++i) {
                real accum = 0;
                for (int64_t j = 0; j < S; ++j) accum += wd[j] * kd[j * G + i];
                dst[i] = yd[i] + h * accum;
            }
        }
        memcpy(yd, Ydq + (S - 1) * G, sizeof(real) * (size_t)G); /* y1 = the last stage's input */
    }
    for (int64_t sj = tp->steady_from; sj < T; ++sj) memcpy(ydot + sj * G, yd, sizeof(real) * (size_t)G);
    memcpy(ylast_dot, yd, sizeof(real) * (size_t)G);
    /* (2) the reverse sweep and its tangent */
    memset(c0h, 0, sizeof(real) * (size_t)KG);
    memset(c1h, 0, sizeof(real) * (size_t)KG);
    memset(ith, 0, sizeof(real) * (size_t)KG);
    memset(nh, 0, sizeof(real) * (size_t)KG);
    memset(gh, 0, sizeof(real) * (size_t)G);
    memset(kh, 0, sizeof(real) * (size_t)G);
    memcpy(yb, ylast_bar, sizeof(real) * (size_t)G);
    memset(ybd, 0, sizeof(real) * (size_t)G);
    for (int64_t sj = tp->steady_from; sj < T; ++sj)
        for (int64_t i = 0; i < G; ++i) yb[i] += ybar[sj * G + i];
    int64_t si_hi = tp->steady_from - 1;
    for (q = n - 1; q >= 0; --q) {
        const real *stp = recs[q], t = stp[0], t1 = stp[1], h = stp[2];
        const real *Ydq = Yd + q * S * G;
        memcpy(yb1, yb, sizeof(real) * (size_t)G);
        memcpy(ybd1, ybd, sizeof(real) * (size_t)G);
        memset(yb, 0, sizeof(real) * (size_t)G);
        memset(ybd, 0, sizeof(real) * (size_t)G);
        memset(kbar, 0, sizeof(real) * (size_t)(2 * S * G)); /* kbar and kbard */
        for (; si_hi >= 1 && t_save[si_hi] > t; --si_hi) {
            if (t_save[si_hi] > t1) continue; /* after a failure: never written */
            const real *ob = ybar + si_hi * G;
            if (t_save[si_hi] == t1) {
                for (int64_t i = 0; i < G; ++i) yb1[i] += ob[i];
                continue;
            }
            real hd = h > 0 ? h : (real)1, th = (t_save[si_hi] - t) / hd;
            th = th < 0 ? 0 : (th > 1 ? 1 : th);
            dense_weights(e->P, S, D, th, wd);
            for (int64_t i = 0; i < G; ++i) yb[i] += ob[i];
            for (int64_t j = 0; j < S; ++j) {
                if (wd[j] == 0) continue;
                const real c = h * wd[j];
                for (int64_t i = 0; i < G; ++i) kbar[j * G + i] += c * ob[i];
            }
        }
        for (int64_t s = S - 1; s >= 0; --s) {
            const real *Ys = s < S - 1 ? stp + TAPE_HEAD + s * G : (q + 1 < n ? recs[q + 1] + TAPE_HEAD : tp->y_end);
            if (s == S - 1) {
                memcpy(Yb, yb1, sizeof(real) * (size_t)G);
                memcpy(Ybd, ybd1, sizeof(real) * (size_t)G);
            } else {
                memset(Yb, 0, sizeof(real) * (size_t)G);
                memset(Ybd, 0, sizeof(real) * (size_t)G);
            }
            const real *ks = kbar + s * G, *ksd = kbard + s * G;
            int any = 0;
            for (int64_t i = 0; i < G; ++i) any |= ks[i] != 0 || ksd[i] != 0;
            if (any) hill_vjp_dual(r, v, Ys, Ydq + s * G, ks, ksd, Yb, Ybd, c0h, c1h, ith, nh, gh, kh, dual);
            for (int64_t i = 0; i < G; ++i) { yb[i] += Yb[i]; ybd[i] += Ybd[i]; }
            for (int64_t l = 0; l < s; ++l) {
                const real c = h * e->a[s * S + l];
                if (c == 0) continue;
                for (int64_t i = 0; i < G; ++i) { kbar[l * G + i] += c * Yb[i]; kbard[l * G + i] += c * Ybd[i]; }
            }
        }
    }
    memcpy(x0h, ybd, sizeof(real) * (size_t)G);
    free(recs);
    free(Yd);
    return 0;
}

#endif
