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

/* z = max(x_src, 0) it per slot, log z (0 at z = 0) by the vectorized log of hill.h, and p = z^n:
   by repeated squaring for integer hill coefficients, else exp(n log z) (one libm call per slot
   instead of pow's two); into z, p, lz (K G). log z only enters through the hill coefficient's
   tangent and cotangent: without want_log and with integer coefficients it is left 0. */
static void stage_powers(const Row *r, const real *x, int want_log, real *restrict z, real *restrict p,
                         real *restrict lz) {
    const int64_t KG = r->K * r->G;
    for (int64_t s = 0; s < KG; ++s) {
        const real xs = x[r->slot_src[s]];
        z[s] = (xs > 0 ? xs : (real)0) * r->inv_thr[s];
    }
    if (want_log || !r->nint) log_pos(KG, z, lz);
    else memset(lz, 0, sizeof(real) * (size_t)KG); /* integer n, no hill tangent or cotangent: unused */
    if (r->nint) {
        for (int64_t s = 0; s < KG; ++s) p[s] = small_int_pow(z[s], r->nint[s]);
    } else {
        for (int64_t s = 0; s < KG; ++s)
            p[s] = z[s] > 0 ? exp(r->hill[s] * lz[s]) : (r->hill[s] == 0 ? (real)1 : (real)0);
    }
}

/* Per slot (K G each): H and its derivative Hd along (xd, v), s = 1 / (1 + p) (sg, sgd), w = dH/dp
   (w, wd), dp/dx, dp/dit, dp/dn (px, pt, pn) and their derivatives (pxd, ptd, pnd), Ex = the
   product of the gene's other slots' H (Ex, Exd); per gene P0 = prod H and P0d. From stage_powers'
   p and lz. At x_src <= 0 the right derivative of the first-order code holds (dp/dx = it for n = 1,
   else 0) and the second derivatives there are those of the constant branch. */
typedef struct {
    real *H, *Hd, *sg, *sgd, *w, *wd, *px, *pxd, *pt, *ptd, *pn, *pnd, *Ex, *Exd, *P0, *P0d, *acc, *accd;
} SlotDuals;

#define DUAL_WORK(G, KG) (14 * (KG) + 4 * (G))

static SlotDuals slot_duals_layout(real *work, int64_t G, int64_t KG) {
    SlotDuals d;
    d.H = work; d.Hd = d.H + KG; d.sg = d.Hd + KG; d.sgd = d.sg + KG; d.w = d.sgd + KG; d.wd = d.w + KG;
    d.px = d.wd + KG; d.pxd = d.px + KG; d.pt = d.pxd + KG; d.ptd = d.pt + KG; d.pn = d.ptd + KG;
    d.pnd = d.pn + KG; d.Ex = d.pnd + KG; d.Exd = d.Ex + KG; d.P0 = d.Exd + KG; d.P0d = d.P0 + G;
    d.acc = d.P0d + G; d.accd = d.acc + G;
    return d;
}

static void slot_duals(const Row *r, const Direction *v, const real *x, const real *xd, const real *pw,
                       const real *lzw, const real *zw, const SlotDuals *d) {
    const int64_t G = r->G, K = r->K, KG = K * G;
    for (int64_t s = 0; s < KG; ++s) {
        const real xj = x[r->slot_src[s]], xdj = xd[r->slot_src[s]];
        const int pos = xj > 0;
        const real xs = pos ? xj : (real)0, xsd = pos ? xdj : (real)0;
        const real it = r->inv_thr[s], n = r->hill[s], c1 = r->c1[s];
        const real itd = v->it ? v->it[s] : (real)0, nd = v->n ? v->n[s] : (real)0;
        const real c0d = v->c0 ? v->c0[s] : (real)0, c1d = v->c1 ? v->c1[s] : (real)0;
        const real z = zw[s], zd = xsd * it + xs * itd, p = pw[s], lz = lzw[s];
        real q1, q1d; /* dp/dz = n z^(n-1) and its derivative along the direction */
        if (z > 0) {
            const real pz = p / z;
            q1 = n * pz;
            q1d = pz * (nd + n * nd * lz) + n * (n - 1) * (pz / z) * zd;
        } else {
            q1 = n == 1 ? (real)1 : (real)0;
            q1d = 0;
        }
        d->px[s] = it * q1;
        d->pxd[s] = itd * q1 + it * q1d;
        d->pt[s] = xs * q1;
        d->ptd[s] = xsd * q1 + xs * q1d;
        const real pd = d->px[s] * xdj + d->pt[s] * itd + p * lz * nd; /* pdot */
        d->pn[s] = p * lz;
        d->pnd[s] = pd * lz + (z > 0 ? p * zd / z : (real)0);
        const real q = (real)1 / ((real)1 + p), qd = -q * q * pd;
        d->sg[s] = q;
        d->sgd[s] = qd;
        d->H[s] = r->c0[s] + c1 * q;
        d->Hd[s] = c0d + c1d * q + c1 * qd;
        d->w[s] = -c1 * q * q;
        d->wd[s] = -c1d * q * q - 2 * c1 * q * qd;
    }
    /* prefix times suffix products (exact when an H is 0) and their derivatives */
    real *P0 = d->P0, *P0d = d->P0d, *acc = d->acc, *accd = d->accd, *Ex = d->Ex, *Exd = d->Exd;
    const real *H = d->H, *Hd = d->Hd;
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
}

/* The right-hand side's tangent along (xd, v) from slot_duals: kd_i = (gd_i P0_i + g_i P0d_i) mult_i
   - kd'_i x_i - k_i xd_i, 0 for clamped genes (as rhs_tangents of hill.h) */
static void rhs_dual(const Row *r, const Direction *v, const real *x, const real *xd, const SlotDuals *d, real *kd) {
    for (int64_t i = 0; i < r->G; ++i) {
        real P = (v->g ? v->g[i] * d->P0[i] : (real)0) + r->prod[i] * d->P0d[i];
        if (r->mult) P *= r->mult[i];
        const real D = (v->k ? v->k[i] * x[i] : (real)0) + r->deg[i] * xd[i];
        kd[i] = (r->clamp && r->clamp[i]) ? (real)0 : P - D;
    }
}

/* One stage's VJPs at the state x with cotangent a, and their derivatives along (xd, v):
     xb  += a^T f_x,   xbd += ad^T f_x + D(a^T f_x),   ph += ad^T f_p + D(a^T f_p)
   for the slot arrays (c0h, c1h, ith, nh) and gene arrays (gh, kh), from slot_duals. With (see hill.h)
     f_i = g_i mult_i prod_k H_(k,i) + add_i - k_i x_i,  H = c0 + c1 s,  s = 1 / (1 + p),  p = z^n,
   the first-order VJP per slot is Hb = u_i g_i prod_(k' != k) H_k' (u = a mult), c0b = Hb,
   c1b = Hb s, and (w = dH/dp = -c1 s^2) xbar_src += Hb w dp/dx, itb = Hb w dp/dit, nb = Hb w dp/dn;
   each term's derivative follows by the product rule. Clamped genes pass nothing. u, ud: work (G). */
static void hill_vjp_dual(const Row *r, const Direction *v, const real *x, const real *xd, const real *a,
                          const real *ad, const SlotDuals *d, real *xb, real *xbd, real *c0h, real *c1h, real *ith,
                          real *nh, real *gh, real *kh, real *u, real *ud) {
    const int64_t G = r->G, KG = r->K * G;
    real *gd = d->acc; /* free after slot_duals: the production's tangent per gene */
    for (int64_t i = 0; i < G; ++i) {
        const int off = r->clamp && r->clamp[i];
        const real ai = off ? (real)0 : a[i], adi = off ? (real)0 : ad[i];
        const real m = r->mult ? r->mult[i] : (real)1;
        const real kdi = v->k ? v->k[i] : (real)0;
        u[i] = ai * m;
        ud[i] = adi * m;
        xb[i] -= ai * r->deg[i];
        xbd[i] -= adi * r->deg[i] + ai * kdi;
        gh[i] += ud[i] * d->P0[i] + u[i] * d->P0d[i];
        kh[i] -= adi * x[i] + ai * xd[i];
        gd[i] = v->g ? v->g[i] : (real)0;
    }
    for (int64_t s = 0; s < KG; ++s) {
        const int64_t i = s % G, j = r->slot_src[s];
        const real g = r->prod[i], Ex = d->Ex[s];
        const real Hb = u[i] * g * Ex;
        /* the H cotangent's second-order part: from ad (first order) and along the direction */
        const real T1 = ud[i] * g * Ex + u[i] * (gd[i] * Ex + g * d->Exd[s]);
        const real Tw = T1 * d->w[s] + Hb * d->wd[s], Hw = Hb * d->w[s];
        c0h[s] += T1;
        c1h[s] += T1 * d->sg[s] + Hb * d->sgd[s];
        xb[j] += Hw * d->px[s];
        xbd[j] += Tw * d->px[s] + Hw * d->pxd[s];
        ith[s] += Tw * d->pt[s] + Hw * d->ptd[s];
        nh[s] += Tw * d->pn[s] + Hw * d->pnd[s];
    }
}

/* work of erk_hvp_row besides the per-row buffer of the step tangents: HVP_WORK(S, G, K G) reals */
#define HVP_WORK(S, G, KG) (3 * (S) * (G) + 11 * (G) + (S) + DUAL_WORK(G, KG) + 3 * (KG) + 2 * (G) + 64)

/* One row: the tangent along the tape (ydot (T, G) at the saves, 0 where the forward wrote none;
   ylast_dot (G)), then the sweep with its tangent (x0h (G), the slot arrays' c0h, c1h, ith, nh
   (K G) and gh, kh (G), each overwritten; without sweep only the tangent). x0d: the initial state's
   tangent (G); v the direction's arrays; want_log: the hill coefficients' tangent or cotangent is
   wanted. Returns 0, or -1 when out of memory. */
static int erk_hvp_row(const Row *r, const Direction *v, const Tape *tp, const ErkMethod *e, const real *t_save,
                       int64_t T, int sweep, int want_log, const real *ybar, const real *ylast_bar, const real *x0d, real *ydot,
                       real *ylast_dot, real *x0h, real *c0h, real *c1h, real *ith, real *nh, real *gh, real *kh,
                       real *work) {
    const int64_t G = r->G, S = e->S, D = e->D, KG = r->K * G, n = tp->n;
    const int64_t rec = TAPE_HEAD + (S - 1) * G;
    real *kd = work, *kbar = kd + S * G, *kbard = kbar + S * G, *yd = kbard + S * G,
         *out = yd + G, *yb = out + 2 * G, *ybd = yb + G, *yb1 = ybd + G, *ybd1 = yb1 + G, *Yb = ybd1 + G,
         *Ybd = Yb + G, *wd = Ybd + G, *dual = wd + S;
    /* after the slot duals: stage_powers' arrays and hill_vjp_dual's u, ud */
    real *zw = dual + DUAL_WORK(G, KG), *pw = zw + KG, *lzw = pw + KG, *uw = lzw + KG, *udw = uw + G;
    const SlotDuals sd = slot_duals_layout(dual, G, KG);
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
            stage_powers(r, Ys, want_log, zw, pw, lzw);
            slot_duals(r, v, Ys, Yds, pw, lzw, zw, &sd);
            rhs_dual(r, v, Ys, Yds, &sd, kd + s * G);
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
    if (!sweep) { /* the trajectory's tangent alone (a Jacobian-vector product) */
        free(recs);
        free(Yd);
        return 0;
    }
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
        step_save_cotangents(e, t_save, ybar, G, S, t, t1, h, &si_hi, yb, yb1, kbar, wd);
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
            if (any) {
                stage_powers(r, Ys, want_log, zw, pw, lzw);
                slot_duals(r, v, Ys, Ydq + s * G, pw, lzw, zw, &sd);
                hill_vjp_dual(r, v, Ys, Ydq + s * G, ks, ksd, &sd, Yb, Ybd, c0h, c1h, ith, nh, gh, kh, uw, udw);
            }
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
