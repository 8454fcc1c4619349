/* Fused kernels of one AOS theta-step of the PDE block along one grid axis (CPU).
 *
 * Layout: a contiguous tensor viewed as (outer, n, inner); the solve runs along n, the
 * outer * inner "lines" are independent. The channel of line q is
 * ((q / inner) / per_ch) % C. Per channel: cA = m theta tau alpha / h^2 (implicit face
 * coefficient), ce = m (1 - theta) tau alpha / h^2 (explicit half, NULL for theta = 1),
 * k = 1 / (h kappa) (edge stopping, 0 for the linear Laplacian).
 *
 * Forward, per line: phi_f = 1 / (1 + (k d_f)^2), d_f = u_{f+1} - u_f;
 *   r = b + ce A_phi u;  v = T^{-1} r with T = I + sum_f cA phi_f (e_f - e_{f+1})(...)^T;
 *   out (+)= scale * v.
 * Nothing is stored for backward: the backward kernel recomputes phi, the elimination and
 * v, and solves the adjoint system with the same multipliers (T is symmetric).
 *
 * Lines are processed LANES at a time in lane-interleaved scratch (GCC vector types), so
 * every step of a recurrence is one vector operation; each (b, c) volume is finished (all
 * axes) before the next, so it stays in cache between the axes. Compiled at first use by nnunet_pde/pde/native.py.
 */
#include "common.h"

#define T float
#define V vf32
#define SUF _f32
#ifdef HAVE_SHUFFLE
#define TRANSPOSE16 transpose16_f32 /* float32 only: float64 serves the tests */
#endif
#include "aos_impl.h"
#undef TRANSPOSE16
#undef T
#undef V
#undef SUF

#define T double
#define V vf64
#define SUF _f64
#include "aos_impl.h"
#undef T
#undef V
#undef SUF

int aos_lanes(void) { return LANES; }
