/* The discrete adjoint of the explicit kernel: backpropagation through a row's accepted steps,
   replayed from its tape (driver.h) in reverse, generic over the model. It gives the same gradient
   as backpropagation through the torch loop (exact for the computed solution, step sizes held
   constant). Per step, newest first: the saves' cotangents through the dense output
   (step_save_cotangents), then the stages in reverse, Y_s = y + h sum_l a_sl k_l, k_s = f(Y_s):
     Ybar_s = yb1 [s = S-1] + f_x(Y_s)^T kbar_s,   kbar_l += h a_sl Ybar_s,   yb += Ybar_s,
   the parameters' cotangents f_p(Y_s)^T kbar_s accumulated by the model.

   The model supplies a context type VjpCtx and four hooks, called in this order per step:
     vjp_prepare(ctx, r, NS, Y)           the step's first NS stage inputs Y (NS, G), before its stages
     vjp_stage(ctx, r, s, Y_s, kbar_s, Yb) stage s (newest first) with a nonzero cotangent: Yb += f_x^T
                                          kbar_s, parameters' cotangents += f_p^T kbar_s
     vjp_skip(ctx, r, s, NS)              stage s with a zero cotangent
     vjp_step_done(ctx, r, NS)            after the step's stages */

#ifndef GENENET_ADJOINT_H
#define GENENET_ADJOINT_H

#include "steppers.h"

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

/* Reverse sweep over one row's tape. ybar (T, G): the cotangent of the saved outputs; ylast_bar (G):
   of the final state; x0b (G): of the initial state (out). Work: SWEEP_WORK(S, G) reals. */
#define SWEEP_WORK(S, G) ((2 * (S) + 4) * (G) + (S) + 16)
static void erk_adjoint_sweep(const Row *r, const Tape *tp, const ErkMethod *e, const real *t_save, int64_t T,
                              const real *ybar, const real *ylast_bar, real *x0b, VjpCtx *ctx, real *work) {
    const int64_t G = r->G, S = e->S, D = e->D;
    real *kbar = work, *yb = kbar + S * G, *Yb = yb + G, *yb1 = Yb + G, *wd = yb1 + G,
         *Yw = wd + S; /* all S stage inputs of a step whose last stage's VJP is taken */
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
        vjp_prepare(ctx, r, NS, Y);
        /* stages in reverse: Y_s = y + h sum_l a_sl k_l, k_s = f(Y_s); y1 = Y_{S-1} */
        for (int64_t s = S - 1; s >= 0; --s) {
            if (s == S - 1) memcpy(Yb, yb1, sizeof(real) * (size_t)G);
            else memset(Yb, 0, sizeof(real) * (size_t)G);
            real *ks = kbar + s * G;
            int any = 0;
            for (int64_t i = 0; i < G; ++i) any |= ks[i] != 0;
            if (any) {
                set_time(r, t + e->c[s] * h);
                vjp_stage(ctx, r, s, Y + s * G, ks, Yb);
            }
            else vjp_skip(ctx, r, s, NS);
            for (int64_t i = 0; i < G; ++i) yb[i] += Yb[i];
            for (int64_t l = 0; l < s; ++l) {
                real qa = h * e->a[s * S + l];
                if (qa == 0) continue;
                for (int64_t i = 0; i < G; ++i) kbar[l * G + i] += qa * Yb[i];
            }
        }
        vjp_step_done(ctx, r, NS);
        y1 = Yrec;
    }
    for (int64_t i = 0; i < G; ++i) x0b[i] = yb[i] + (tp->first_saved ? ybar[i] : (real)0);
}

#endif
