/* The shifted-Hill model of genenet.Hill with its condition effects: right-hand side, forward
   tangents and Jacobian, for one row. Shared by the integrators in kernels.c.

     P_i  = g_i * prod_k H_(k,i)(x_src(k,i)) * mult_i + add_i
     H    = c0 + c1 / (1 + (max(x, 0) * it)^n)        (slot layout (K, G), dummy slots H = 1)
     dx_i = P_i - k_i x_i,   0 for clamped genes.

   Forward sensitivities: with Q > 0 the state is [x, xdot_1..xdot_Q] ((1 + Q) G columns). Per
   direction j
     Hdot  = c0dot + c1dot s + c1 ds,   ds = -s^2 d(z^n),   z = x_src it
     d(z^n) = n z^n (xdot_src / x_src + itdot / it) + z^n log(z) ndot      (x_src > 0)
     Pdot_i = (gdot_i prod H + g_i prod H sum_k Hdot_k / H_k) mult_i,   Ddot_i = kdot_i x_i + k_i xdot_i
   with the right derivative at x_src <= 0 (d(z^n)/dx = it for n = 1, else 0), as Hill.production_jvp.

   Jacobian: dP_i/dx_src = g_i mult_i prod H / H_s * dH_s/dx, dH/dx = -c1 s^2 n it z^(n-1), as
   Hill.production_jacobian; -k_i on the diagonal; clamped rows 0 (ConditionTerm.jacobian). */

#ifndef GENENET_HILL_H
#define GENENET_HILL_H

#include "common.h"

typedef struct Row {
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
    real *tw;                                /* tangent / Jacobian work (5 K*G + 2 G) */
    /* Another system built on the model (the continuous adjoint's augmented one, kernels.c): its
       right-hand side over the whole state, which then all steers the step (E columns); NULL: the
       model itself, steered by its G state columns */
    void (*system)(const struct Row *r, const real *y, real *dy);
    int64_t E;                               /* columns in the error norm when system is set */
    real *sw;                                /* the system's work */
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

typedef union { float f; uint32_t u; } F32Bits;
typedef union { double f; uint64_t u; } F64Bits;

/* bit ? a : 1 by masks on the bits: GCC if-converts no floating-point select while trapping math is
   on (the default), so a select would keep the slot loop scalar */
static inline real pick_or_one(uint32_t bit, real a) {
    if (sizeof(real) == 8) {
        F64Bits x = {(double)a}, one = {1.0}, out;
        const uint64_t m = (uint64_t)0 - (uint64_t)bit;
        out.u = (x.u & m) | (one.u & ~m);
        return (real)out.f;
    }
    F32Bits x = {(float)a}, one = {1.0f}, out;
    const uint32_t m = (uint32_t)0 - bit;
    out.u = (x.u & m) | (one.u & ~m);
    return (real)out.f;
}

/* z^n for a small integer n (0..15) without branches, so the slot loop vectorizes (products of
   z, z^2, z^4, z^8 by the bits of n, within an ulp or two of hill_pow) */
static inline real small_int_pow(real z, int n) {
    const uint32_t k = (uint32_t)n;
    real z2 = z * z, z4 = z2 * z2, z8 = z4 * z4;
    return ((pick_or_one(k & 1, z) * pick_or_one((k >> 1) & 1, z2)) * pick_or_one((k >> 2) & 1, z4))
           * pick_or_one((k >> 3) & 1, z8);
}

/* integer hill coefficients of a row (all in 0..15) into nint, for the vectorized power; else NULL.
   Within 8 ulp of an integer counts as that integer: a parameter that went through its constraint
   transform and back (exp of a log, float64) is off by a few ulp from the integer RACIPE drew, and
   z^(k + d) = z^k (1 + d log z) differs from z^k by rounding only. */
static inline const int *integer_hill(const real *hill, int64_t KG, int *nint) {
    const real eps = sizeof(real) == 4 ? (real)1.1920929e-07f : (real)2.220446049250313e-16;
    int all_int = 1;
    for (int64_t q = 0; q < KG; ++q) {
        real n = hill[q];
        int k = n >= 0 && n <= 15.5 ? (int)(n + (real)0.5) : -1;
        all_int &= k >= 0 && fabs(n - (real)k) <= 8 * eps * (k > 1 ? (real)k : (real)1);
        nint[q] = all_int ? k : 0;
    }
    return all_int ? nint : NULL;
}

/* log x for x > 0 (0 elsewhere), written so that it vectorizes (libm's log is a call per element):
   x = 2^e m with m in [sqrt(1/2), sqrt(2)) from the bits, log m = 2 atanh(s) = 2 (s + s^3/3 + ...),
   s = (m - 1) / (m + 1), |s| <= 0.172, the series cut where its tail is below the type's rounding
   (after s^9 / 9 for float, s^23 / 23 for double); within a few ulp of libm (tests/test_native.py).
   Subnormal x count as the smallest normal number (their log is off by at most 16 in float, 37 in
   double: it only multiplies terms of size x^n in the adjoint). Bits are read through unions and
   selects kept out of the log loop: GCC if-converts neither a memcpy nor a select feeding a union. */
static inline float log_f32(float x) {
    F32Bits a = {x};
    uint32_t mant = a.u & 0x007fffffu, big = mant > 0x003504f3u; /* m > sqrt(2): use m / 2 */
    int e = (int)(a.u >> 23) - 127 + (int)big;
    a.u = mant | (0x3f800000u - (big << 23));
    float f = a.f - 1.0f, sr = f / (2.0f + f), s2 = sr * sr;
    float p = 1.0f + s2 * (1.0f / 3 + s2 * (1.0f / 5 + s2 * (1.0f / 7 + s2 * (1.0f / 9))));
    return (float)e * 0.693147182f + 2.0f * sr * p;
}

static inline double log_f64(double x) {
    F64Bits a = {x};
    uint64_t mant = a.u & 0x000fffffffffffffull, big = mant > 0x0006a09e667f3bcdull;
    int64_t e = (int64_t)(a.u >> 52) - 1023 + (int64_t)big;
    a.u = mant | (0x3ff0000000000000ull - (big << 52));
    double f = a.f - 1.0, sr = f / (2.0 + f), s2 = sr * sr;
    double p = 1.0 / 19 + s2 * (1.0 / 21 + s2 * (1.0 / 23));
    p = 1.0 / 11 + s2 * (1.0 / 13 + s2 * (1.0 / 15 + s2 * (1.0 / 17 + s2 * p)));
    p = 1.0 + s2 * (1.0 / 3 + s2 * (1.0 / 5 + s2 * (1.0 / 7 + s2 * (1.0 / 9 + s2 * p))));
    double ed = (double)e; /* ln 2 in two parts: e ln2_hi is exact */
    return ed * 6.93147180369123816490e-01 + (ed * 1.90821492927058770002e-10 + 2.0 * sr * p);
}

__attribute__((noinline)) static void log_pos(int64_t n, const real *restrict x, real *restrict out) {
    const real tiny = sizeof(real) == 4 ? (real)1.17549435e-38f : (real)2.2250738585072014e-308;
    for (int64_t i = 0; i < n; ++i) out[i] = x[i] > tiny ? x[i] : tiny;
    for (int64_t i = 0; i < n; ++i) out[i] = _Generic(out[i], float: log_f32, default: log_f64)(out[i]);
    for (int64_t i = 0; i < n; ++i) out[i] = x[i] > 0 ? out[i] : (real)0;
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

/* Per slot: H, prod H per gene (P0), and the coefficients of xdot_src, itdot, ndot, c0dot, c1dot in
   Hdot / H (wx, wt, wn, w0, w1); the Jacobian needs wx and P0 only */
static void slot_derivatives(const Row *r, const real *x, int tangents) {
    const int64_t G = r->G, KG = r->K * G;
    real *wx = r->tw, *wt = wx + KG, *wn = wt + KG, *w0 = wn + KG, *w1 = w0 + KG, *P0 = w1 + KG;
    for (int64_t i = 0; i < G; ++i) P0[i] = 1;
    for (int64_t s = 0; s < KG; ++s) {
        real xsrc = x[r->slot_src[s]], xs = xsrc > 0 ? xsrc : (real)0;
        real c0 = r->c0[s], c1 = r->c1[s], it = r->inv_thr[s], n = r->hill[s];
        real z = xs * it, zn = r->nint ? small_int_pow(z, r->nint[s]) : hill_pow(z, n);
        real sg = (real)1 / ((real)1 + zn), H = c0 + c1 * sg, invH = (real)1 / H;
        real wz = -c1 * sg * sg * invH; /* (dH / d z^n) / H */
        P0[s % G] *= H;
        wx[s] = xsrc > 0 ? wz * n * zn / xs : (n == 1 ? -c1 * n * it / (c0 + c1) : (real)0);
        if (!tangents) continue;
        wt[s] = wz * n * zn / it;
        wn[s] = z > 0 ? wz * zn * log(z) : (real)0;
        w0[s] = invH;
        w1[s] = sg * invH;
    }
}

/* d/dtheta of the right-hand side along the Q tangent directions stored after x (see the header):
   the per-slot coefficients once, then a few fused multiply-adds per slot and direction */
static void rhs_tangents(const Row *r, const real *x, real *dx) {
    const int64_t G = r->G, K = r->K, KG = K * G, Q = r->Q;
    slot_derivatives(r, x, 1);
    real *wx = r->tw, *wt = wx + KG, *wn = wt + KG, *w0 = wn + KG, *w1 = w0 + KG, *P0 = w1 + KG, *acc = P0 + G;
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

/* J = d(dx)/dx, (G, G) row-major */
static void jacobian(const Row *r, const real *x, real *J) {
    const int64_t G = r->G, KG = r->K * G;
    memset(J, 0, sizeof(real) * (size_t)(G * G));
    slot_derivatives(r, x, 0);
    const real *wx = r->tw, *P0 = wx + 5 * KG;
    for (int64_t s = 0; s < KG; ++s) { /* (dH/dx) / H times g prod H: dummy slots add 0 */
        int64_t i = s % G;
        J[i * G + r->slot_src[s]] += r->prod[i] * P0[i] * wx[s];
    }
    for (int64_t i = 0; i < G; ++i) {
        real *Ji = J + i * G;
        if (r->clamp && r->clamp[i]) {
            memset(Ji, 0, sizeof(real) * (size_t)G);
            continue;
        }
        if (r->mult)
            for (int64_t j = 0; j < G; ++j) Ji[j] *= r->mult[i];
        Ji[i] -= r->deg[i];
    }
}

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

/* autonomous: no clock */
static inline void set_time(const Row *r, real t) { (void)r; (void)t; }
static inline int model_autonomous(const Row *r) { (void)r; return 1; }
static void time_derivative(const Row *r, const real *x, real *ft) {
    (void)x;
    memset(ft, 0, sizeof(real) * (size_t)r->G);
}

/* the model hooks of common.h: per thread H (K G) and the tangent work (5 K G + 2 G); the integer
   hill coefficients (K G) */
static int64_t model_work(const Problem *p) { return 6 * p->K * p->G + 2 * p->G; }
static int64_t model_iwork(const Problem *p) { return p->K * p->G + 1; }
static Row model_row(const Problem *p, int64_t b, real *work, int *iwork) {
    const int64_t KG = p->K * p->G;
    return row_of(p, b, work, integer_hill(p->hill + b * KG, KG, iwork), work + KG);
}

#endif
