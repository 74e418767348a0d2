/* What every native model and integrator shares: the real type, status codes and the small
   vector helpers of the step loop. A model header (hill.h, compiled.h) defines on top of it
   its Problem (all rows) and Row (one row) and

     model_work(p), model_iwork(p)     work per thread (reals, ints) for one row
     model_row(p, b, work, iwork)      row b
     rhs_state(r, x, dx)               the right-hand side (G)
     rhs_tangents(r, x, dx)            its Q tangent columns (state [x, xdot_1..xdot_Q])
     jacobian(r, x, J)                 d(dx)/dx, (G, G) row-major
     set_time(r, t)                    the time the next of those calls is at (the steppers set each
                                       stage's; a model that does not read t ignores it)
     model_autonomous(r)               1 when the right-hand side does not read t
     time_derivative(r, x, ft)         d(dx)/dt at the set time (G), for the Rosenbrock steps

   and the Row carries G, Q and the `system` hook of driver.h. */

#ifndef GENENET_COMMON_H
#define GENENET_COMMON_H

#include <tgmath.h> /* pow, sqrt, fabs, log of the argument's type: powf for float */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#ifndef REAL
#define REAL double
#endif
typedef REAL real;

enum { STIFF = -2, RUNNING = -1, SUCCESS = 0, MAX_STEPS = 1, STEP_UNDERFLOW = 2, NONFINITE = 3, SINGULAR = 4 };

/* acc = sum_j c_j k_j over the nonzero c_j, in order (the same sums as the torch path); the k_j
   are ``stride`` apart, the first G entries of each are summed */
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

#endif
