/* One row's whole adaptive step loop, generic over the step method (a Stepper): explicit
   Runge-Kutta and Rosenbrock share it, as genenet.solvers.integrate.integrate does in Python.

   It reproduces that loop for one row step for step: the same initial step (Hairer), PI
   controller, save window, landing on the final time, dense output, steady-state early stop,
   status codes and counters; with Q tangents (forward sensitivities) only the first G columns
   steer the step. The Python loop is the reference it is tested against. */

#ifndef GENENET_DRIVER_H
#define GENENET_DRIVER_H

#include <pthread.h>

#ifndef GENENET_MODEL_H
#define GENENET_MODEL_H "hill.h"
#endif
#include GENENET_MODEL_H

static void rhs(const Row *r, const real *x, real *dx) {
    if (r->system) {
        r->system(r, x, dx);
        return;
    }
    rhs_state(r, x, dx);
    if (r->Q) rhs_tangents(r, x, dx);
}

/* the columns that steer the step: the state's G, or all E of another system */
static inline int64_t steer_width(const Row *r) { return r->system ? r->E : r->G; }

/* the steering columns of the right-hand side (the state's without its tangents) */
static void rhs_steer(const Row *r, const real *x, real *dx) {
    if (r->system) r->system(r, x, dx);
    else rhs_state(r, x, dx);
}


/* The accepted steps of one row, for the discrete adjoint (backpropagation through the solver
   replayed in C): per step a record of TAPE_HEAD reals (t, t1, h, unused) and its first S - 1
   stage inputs (G each; no tangents; the last one is y1, FSAL: the next step's first, or y_end for
   the newest step), in blocks of TAPE_BLOCK steps chained backward (the reverse sweep's
   order). Blocks come from a pool that keeps the blocks of the last freed tape set: a screen that
   is differentiated again and again reuses memory that is already mapped instead of growing arrays
   by realloc (a copy) into fresh pages (a page fault each) on every call, which cost as much as a
   third of the forward solve. */
#define TAPE_BLOCK 16
#define TAPE_HEAD 4

typedef struct TapeBlock {
    struct TapeBlock *prev; /* the block before this one (older steps), or NULL */
    int64_t n;              /* steps recorded here */
    real data[];            /* TAPE_BLOCK records of TAPE_HEAD + (S - 1) G reals */
} TapeBlock;

typedef struct {
    int64_t n, S, G;     /* steps recorded, stages, genes */
    TapeBlock *last;     /* the newest block */
    int64_t steady_from; /* saves from here on copy the final state (steady stop); T if none */
    int64_t first_saved; /* 1 when out[0] is the initial state */
    int oom;             /* the tape could not grow: the caller raises MemoryError */
    real *y_end;         /* (G) the newest step's last stage input, its y1 */
} Tape;

static pthread_mutex_t tape_pool_lock = PTHREAD_MUTEX_INITIALIZER;
static TapeBlock *tape_pool;      /* free blocks, chained by prev */
static size_t tape_pool_size;     /* their size in bytes */
static int64_t tape_pool_count;
static int64_t tape_bytes_used, tape_bytes_peak; /* in blocks handed out; the peak since the last reset */
/* fresh allocations (not from the pool) since genenet_tape_budget, and their cap: a differentiable
   solve that would take more than the memory available at its start stops with `oom` (MemoryError)
   instead of meeting the operating system's out-of-memory kill */
static int64_t tape_fresh_bytes, tape_fresh_limit = INT64_MAX;

static size_t tape_block_bytes(int64_t S, int64_t G) {
    return sizeof(TapeBlock) + sizeof(real) * (size_t)(TAPE_BLOCK * (TAPE_HEAD + (S - 1) * G));
}

static TapeBlock *tape_block_get(size_t bytes) {
    TapeBlock *b = NULL;
    pthread_mutex_lock(&tape_pool_lock);
    if (tape_pool && tape_pool_size == bytes) {
        b = tape_pool;
        tape_pool = b->prev;
        tape_pool_count--;
    }
    int over = 0;
    if (!b) {
        over = tape_fresh_bytes + (int64_t)bytes > tape_fresh_limit;
        if (!over) tape_fresh_bytes += (int64_t)bytes;
    }
    if (!over) {
        tape_bytes_used += (int64_t)bytes;
        if (tape_bytes_used > tape_bytes_peak) tape_bytes_peak = tape_bytes_used;
    }
    pthread_mutex_unlock(&tape_pool_lock);
    if (over) return NULL;
    if (!b) b = (TapeBlock *)malloc(bytes);
    if (!b) { /* not handed out after all */
        pthread_mutex_lock(&tape_pool_lock);
        tape_bytes_used -= (int64_t)bytes;
        tape_fresh_bytes -= (int64_t)bytes;
        pthread_mutex_unlock(&tape_pool_lock);
    }
    return b;
}

/* Return the blocks of a chain to the pool; the pool then keeps at most `keep` blocks */
static void tape_blocks_put(TapeBlock *chain, size_t bytes, int64_t keep) {
    TapeBlock *drop = NULL;
    pthread_mutex_lock(&tape_pool_lock);
    if (tape_pool_size != bytes) { /* another block size: the old pool goes */
        drop = tape_pool;
        tape_pool = NULL;
        tape_pool_count = 0;
        tape_pool_size = bytes;
    }
    while (chain) {
        TapeBlock *prev = chain->prev;
        tape_bytes_used -= (int64_t)bytes;
        if (tape_pool_count < keep) {
            chain->prev = tape_pool;
            tape_pool = chain;
            tape_pool_count++;
        } else {
            free(chain);
        }
        chain = prev;
    }
    pthread_mutex_unlock(&tape_pool_lock);
    while (drop) {
        TapeBlock *prev = drop->prev;
        free(drop);
        drop = prev;
    }
}

static int tape_push(Tape *tp, real t, real t1, real h, const real *Y) {
    const int64_t rec = TAPE_HEAD + (tp->S - 1) * tp->G;
    TapeBlock *b = tp->last;
    if (!b || b->n == TAPE_BLOCK) {
        TapeBlock *fresh = tape_block_get(tape_block_bytes(tp->S, tp->G));
        if (!fresh) return 1;
        fresh->prev = b;
        fresh->n = 0;
        tp->last = b = fresh;
    }
    real *r = b->data + b->n * rec;
    r[0] = t; r[1] = t1; r[2] = h; r[3] = 0;
    memcpy(r + TAPE_HEAD, Y, sizeof(real) * (size_t)((tp->S - 1) * tp->G));
    memcpy(tp->y_end, Y + (tp->S - 1) * tp->G, sizeof(real) * (size_t)tp->G);
    b->n++;
    tp->n++;
    return 0;
}

typedef struct Stepper Stepper;
struct Stepper {
    /* Attempt a step of size h from (t, y) with f0 = f(t, y): write y1 (W), the error estimate
       err (the E = steer_width(r) steering columns) and f1 = f(t + h, y1) (W). Returns 1 when the
       step matrix is singular (the step is then rejected without using y1, err or f1). */
    int (*step)(Stepper *m, const Row *r, const real *y, const real *f0, real h, real *y1, real *err, real *f1);
    /* Dense output of the last attempted step at t + theta h, W columns. */
    void (*dense)(Stepper *m, const real *y, const real *y1, real h, real theta, real *dst);
    int64_t rhs_per_step;  /* RHS evaluations a step counts */
    int64_t error_order;
    void *ws;              /* the method's coefficients and work arrays */
    const real *stage_inputs; /* (S, G) the last step's stage inputs, for a Tape; NULL if not kept */
    /* Hairer's stiffness estimate h |f(y1) - f(Y)| / |y1 - Y| of the last attempted step, or NULL */
    real (*stiffness)(Stepper *m, const Row *r, real h);
    real *stiff_work;         /* G G + 2 G reals for the spectral radius, when stiffness is detected */
    real t;                   /* the start of the step being attempted (the stages' times follow from it) */
};

typedef struct {
    int64_t T, window;
    const real *t_save, *rtol, *atol;
    double first_step, steady_tol, safety, beta, factor_min, factor_max;
    int64_t max_steps;
    int64_t stiff_after; /* > 0: stop a row with status STIFF after this many steps on the stability edge */
    int64_t check_every; /* refresh the Jacobian's spectral radius at attempts 1, 1 + check_every, ... */
    int64_t use_rho;     /* 1: the spectral radius joins Hairer's estimate */
} LoopSettings;

/* |h lambda| past which the explicit step is limited by stability (genenet.solvers.integrate.STIFF_BOUND) */
#define STIFF_BOUND ((real)2.5)

/* Power-iteration estimate of the largest |eigenvalue| of the row's Jacobian at y, twelve iterations
   from the same start vector as genenet.solvers.integrate.spectral_radius; 0 if not finite. Work:
   G G + 2 G reals. */
static real spectral_radius(const Row *r, const real *y, real *work) {
    const int64_t G = r->G;
    real *J = work, *v = J + G * G, *w = v + G;
    jacobian(r, y, J);
    real nv = 0;
    for (int64_t i = 0; i < G; ++i) {
        v[i] = cos((real)i * (real)1.7 + (real)0.3);
        nv += v[i] * v[i];
    }
    nv = sqrt(nv);
    for (int64_t i = 0; i < G; ++i) v[i] /= nv;
    real norm = 0;
    for (int it = 0; it < 12; ++it) {
        norm = 0;
        for (int64_t i = 0; i < G; ++i) {
            real acc = 0;
            const real *Ji = J + i * G;
            for (int64_t j = 0; j < G; ++j) acc += Ji[j] * v[j];
            w[i] = acc;
            norm += acc * acc;
        }
        norm = sqrt(norm);
        const real d = norm > (real)1e-300 ? norm : (real)1e-300; /* 0 in float, as torch's clamp_min */
        for (int64_t i = 0; i < G; ++i) v[i] = w[i] / d;
    }
    return isfinite(norm) ? norm : (real)0;
}

typedef struct {
    int64_t status, steps, accepted, rhs;
    real t_last;
    int64_t saved_to; /* the save times before this index were written (from the first after t_begin) */
} RowResult;

/* The first step from (t, y) with f0 = f(t, y) towards t_end: c->first_step where given, else Hairer's
   starting step (as genenet.solvers.integrate.initial_step) for a method whose error estimate is of
   order `order`, one RHS evaluation (counted in *nrhs). Work: yi, tmp and scale (E each). */
static real initial_step(const Row *r, const LoopSettings *c, real t, real t_end, const real *y, const real *f0,
                         int64_t order, int64_t E, real *yi, real *tmp, real *scale, int64_t *nrhs) {
    if (c->first_step > 0) return (real)c->first_step;
    const real *rtol = c->rtol, *atol = c->atol;
    (*nrhs)++;
    for (int64_t i = 0; i < E; ++i) scale[i] = atol[i] + rtol[i] * fabs(y[i]);
    real d0 = rms(y, scale, E), d1 = rms(f0, scale, E);
    real span = t_end - t;
    real h0 = (d0 < (real)1e-5 || d1 < (real)1e-5) ? (real)1e-6
              : (real)0.01 * d0 / (d1 > (real)1e-300 ? d1 : (real)1e-300);
    h0 = h0 < span ? h0 : span;
    for (int64_t i = 0; i < E; ++i) yi[i] = y[i] + h0 * f0[i];
    set_time(r, t + h0);
    rhs_steer(r, yi, tmp); /* the tangents do not steer the step */
    for (int64_t i = 0; i < E; ++i) tmp[i] = tmp[i] - f0[i];
    real d2 = rms(tmp, scale, E) / h0;
    real dmax = d1 > d2 ? d1 : d2;
    real h1 = dmax <= (real)1e-15 ? ((real)1e-6 > h0 * (real)1e-3 ? (real)1e-6 : h0 * (real)1e-3)
              : (real)pow((real)0.01 / (dmax > (real)1e-300 ? dmax : (real)1e-300), (real)1 / (real)(order + 1));
    real h = 100 * h0 < h1 ? 100 * h0 : h1;
    if (!(isfinite(h) && h > 0)) h = (real)1e-6;
    return h < span ? h : span;
}

/* the steady-state early stop's test: max|f| <= tol (1 + max|y|) over the G state columns */
static int is_steady(const real *f, const real *y, int64_t G, double tol) {
    real fmax = 0, ymax = 0;
    for (int64_t i = 0; i < G; ++i) {
        real af = fabs(f[i]), ay = fabs(y[i]);
        fmax = af > fmax ? af : fmax;
        ymax = ay > ymax ? ay : ymax;
    }
    return fmax <= (real)tol * (1 + ymax);
}

/* the step size below which a failing row gives up: 16 eps max(|t0|, |t_end|, 1) */
static real step_floor(real t0, real t_end) {
    const real eps = sizeof(real) == 4 ? (real)1.1920929e-07 : (real)2.220446049250313e-16;
    const real span_abs = fabs(t0) > fabs(t_end) ? fabs(t0) : fabs(t_end);
    return 16 * eps * (span_abs > 1 ? span_abs : (real)1);
}

/* the first save index after t_begin, at least 1 (searchsorted, right) */
static int64_t first_save_after(const real *t_save, int64_t T, real t_begin) {
    int64_t k = 1;
    while (k < T && t_save[k] <= t_begin) k++;
    return k;
}

/* Integrate one row from (t_begin, y0) to t_save[T-1]; writes out (T, W) at the save times after
   t_begin (earlier ones stay as they are), y_last (W). The first E = steer_width(r) columns steer
   the step (rtol, atol: E each). Work: 4 W + 2 E reals. */
static RowResult drive_row(Stepper *m, const Row *r, int64_t W, const LoopSettings *c, real t_begin,
                           const real *y0, real *out, real *y_last, real *work, Tape *tape) {
    const int64_t G = r->G, T = c->T, E = steer_width(r);
    const real *t_save = c->t_save, *rtol = c->rtol, *atol = c->atol;
    const real t0 = t_save[0], t_end = t_save[T - 1];
    const int64_t Kw = c->window < T - 1 ? (c->window > 1 ? c->window : 1) : (T - 1 > 1 ? T - 1 : 1);
    const real tiny = step_floor(t0, t_end);
    const real alpha = (real)(1.0 / (m->error_order + 1) - 0.75 * c->beta);
    real *y = work, *y1 = y + W, *f0 = y1 + W, *f1 = f0 + W, *err = f1 + W, *scale = err + E;
    RowResult res = {RUNNING, 0, 0, 0, t_begin, 0};
    int64_t save_ptr = first_save_after(t_save, T, t_begin);
    real t = t_begin, h, prev_err = 1;
    int rejected_before = 0, last_nonfinite = 0, last_singular = 0;
    int64_t stiff_count = 0, calm_count = 0;
    real rho = 0;
    int have_rho = 0;
    memcpy(y, y0, sizeof(real) * W);
    if (t_begin <= t0) memcpy(out, y, sizeof(real) * W);
    if (tape) { tape->steady_from = T; tape->first_saved = t_begin <= t0; }
    set_time(r, t);
    rhs(r, y, f0);
    res.rhs++;
    h = initial_step(r, c, t, t_end, y, f0, m->error_order, E, y1, f1, scale, &res.rhs);
    while (res.status == RUNNING) {
        int64_t wi = save_ptr + Kw - 1;
        real window_end = t_save[wi < T - 1 ? wi : T - 1];
        real target = t_end < window_end ? t_end : window_end;
        int land = h * (real)(1 + 1e-6) >= target - t;
        real h_try = land ? target - t : h;
        real t1 = land ? target : t + h_try;
        m->t = t;
        int singular = m->step(m, r, y, f0, h_try, y1, err, f1);
        res.rhs += m->rhs_per_step;
        real err_norm = (real)INFINITY;
        if (!singular) {
            for (int64_t i = 0; i < E; ++i) {
                real ay = fabs(y[i]), ay1 = fabs(y1[i]);
                scale[i] = atol[i] + rtol[i] * (ay > ay1 ? ay : ay1);
            }
            err_norm = rms(err, scale, E);
        }
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
                real *dst = out + si * W;
                if (ts == t1) {
                    memcpy(dst, y1, sizeof(real) * W);
                } else {
                    real hd = h_try > 0 ? h_try : (real)1;
                    real th = (ts - t) / hd;
                    th = th < 0 ? 0 : (th > 1 ? 1 : th);
                    m->dense(m, y, y1, h_try, th, dst);
                }
                saved++;
            }
            save_ptr += saved;
            if (tape && tape_push(tape, t, t1, h_try, m->stage_inputs)) { /* out of memory */
                tape->oom = 1;
                res.status = MAX_STEPS;
                break;
            }
            t = t1;
            memcpy(y, y1, sizeof(real) * W);
            memcpy(f0, f1, sizeof(real) * W);
        }
        res.steps++;
        res.accepted += accept;
        if (c->stiff_after > 0 && m->stiffness) { /* as the torch loop's stiff_after */
            real hl = m->stiffness(m, r, h_try);
            if (c->use_rho) {
                if (res.steps % c->check_every == 1 || !have_rho) {
                    set_time(r, t);
                    rho = spectral_radius(r, y, m->stiff_work);
                    have_rho = 1;
                }
                real hr = h_try * rho;
                hl = (hl != hl || hr != hr) ? (real)NAN : (hl > hr ? hl : hr); /* torch.maximum: NaN wins */
            }
            int on_edge = accept && hl > STIFF_BOUND, calm = accept && !on_edge;
            calm_count = on_edge ? 0 : calm_count + calm;
            stiff_count = on_edge ? stiff_count + 1 : (calm_count >= 6 ? 0 : stiff_count);
            if (res.status == RUNNING && stiff_count >= c->stiff_after && t < t_end) res.status = STIFF;
        }
        if (c->steady_tol >= 0 && accept && t < t_end) {
            if (is_steady(f0, y, G, c->steady_tol)) {
                for (int64_t si = save_ptr; si < T; ++si) memcpy(out + si * W, y, sizeof(real) * W);
                if (tape) tape->steady_from = save_ptr;
                save_ptr = T;
                res.status = SUCCESS;
                t = t_end;
            }
        }
        /* PI step control, as genenet.solvers.controller.PIController */
        real safe_err = err_norm > (real)1e-10 ? err_norm : (real)1e-10;
        real raw = (real)pow(safe_err, alpha);
        real h_new;
        if (accept) {
            real grow = raw / (real)pow(prev_err, (real)c->beta) / (real)c->safety;
            real lo = (real)(1.0 / c->factor_max), hi = (real)(1.0 / c->factor_min);
            grow = grow < lo ? lo : (grow > hi ? hi : grow);
            h_new = h_try / grow;
            if (rejected_before) h_new = h_new < h_try ? h_new : h_try;
            prev_err = err_norm > (real)1e-4 ? err_norm : (real)1e-4;
            if (land) h_new = h_new > h ? h_new : h;
        } else {
            real q = raw / (real)c->safety;
            real hi = (real)(1.0 / c->factor_min);
            q = q > hi ? hi : q;
            q = q < 1 ? 1 : q;
            h_new = h_try / q;
        }
        if (res.status == RUNNING) {
            rejected_before = !accept;
            last_nonfinite = !finite;
            last_singular = singular;
            h = h_new;
            if (!accept && h < tiny)
                res.status = last_singular ? SINGULAR : (last_nonfinite ? NONFINITE : STEP_UNDERFLOW);
            if (accept && t >= t_end) res.status = SUCCESS;
            if (res.status == RUNNING && res.steps >= c->max_steps) res.status = MAX_STEPS;
        }
    }
    res.t_last = t;
    res.saved_to = save_ptr;
    memcpy(y_last, y, sizeof(real) * W);
    return res;
}

/* ------------------------------------------------------------------ the tapes' exported API */

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

#endif
