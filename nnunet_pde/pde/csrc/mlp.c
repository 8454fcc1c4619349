/* Fused kernels of the PDE block's pointwise reaction N(u) = W2 tanh(W1 u + b1) + b2 and of
 * its backward (CPU). The 1x1 convolutions are small matrices (C, H <= a few hundred)
 * applied per voxel: done LANES voxels at a time (one GCC vector per channel), the whole
 * reaction of a tile in registers and L1 instead of three passes over memory.
 *
 * float32 tanh is a vector rational approximation (see tanh_vf32): relative error below
 * 1e-6 (tested against torch.tanh). float64 uses the C library's tanh lane by lane.
 * Compiled at first use by nnunet_pde/pde/native.py.
 */
#include "common.h"

/* tanh(x) = x P(x^2) / Q(x^2) for |x| <= 8 (degrees 4 and 4 in x^2; coefficients fitted
 * here by iteratively reweighted least squares for the relative error, 7e-9 in exact
 * arithmetic, 3.3e-7 evaluated in float32), +-1 beyond (|1 - tanh(8)| = 2.3e-7). One
 * division, no branches: about half the cost of the exp-based form. */
static inline vf32 tanh_vf32(vf32 x) {
    const vf32 lim = (vf32){} + 8.0f;
    vf32 xc = select_f32(x > lim, lim, x);
    xc = select_f32(xc < -lim, -lim, xc);
    vf32 z = xc * xc;
    vf32 p = 9.999999936e-01f + z * (1.344454449e-01f + z * (3.571653688e-03f
             + z * (2.189561131e-05f + z * 1.523181526e-08f)));
    vf32 q = 1.0f + z * (4.677787185e-01f + z * (2.616465338e-02f + z * (3.411384311e-04f
             + z * 8.523000622e-07f)));
    vf32 r = xc * p / q;
    r = select_f32(r > 1.0f, (vf32){} + 1.0f, r);
    return select_f32(r < -1.0f, (vf32){} - 1.0f, r);
}

static inline vf64 tanh_vf64(vf64 x) {
    for (int l = 0; l < LANES; ++l) x[l] = tanh(x[l]);
    return x;
}

/* Sum of the lanes of one vector (in float64). */
static inline double hsum_f32(vf32 x) {
    double s = 0;
    for (int l = 0; l < LANES; ++l) s += x[l];
    return s;
}

static inline double hsum_f64(vf64 x) {
    double s = 0;
    for (int l = 0; l < LANES; ++l) s += x[l];
    return s;
}

/* r[q] = sum of the lanes of s[q], q < 16 = LANES, as a tree of lane shuffles: 15 vector
 * additions instead of 16 separate reductions. Slot j of the tree takes s[bitrev4(j)],
 * because the tree leaves the sum of slot j in lane bitrev4(j). */
static inline vf32 hsum16_f32(const vf32 *s) {
#ifdef HAVE_SHUFFLE
    static const int rev[16] = {0, 8, 4, 12, 2, 10, 6, 14, 1, 9, 5, 13, 3, 11, 7, 15};
    vf32 z[8], w[4], q[2];
    for (int i = 0; i < 8; ++i) {
        vf32 x = s[rev[2 * i]], y = s[rev[2 * i + 1]];
        z[i] = __builtin_shuffle(x, y, LO8) + __builtin_shuffle(x, y, LO8 + 8);
    }
    for (int i = 0; i < 4; ++i)
        w[i] = __builtin_shuffle(z[2 * i], z[2 * i + 1], LO4)
               + __builtin_shuffle(z[2 * i], z[2 * i + 1], LO4 + 4);
    for (int i = 0; i < 2; ++i)
        q[i] = __builtin_shuffle(w[2 * i], w[2 * i + 1], LO2)
               + __builtin_shuffle(w[2 * i], w[2 * i + 1], LO2 + 2);
    return __builtin_shuffle(q[0], q[1], LO1) + __builtin_shuffle(q[0], q[1], LO1 + 1);
#else
    vf32 r;
    for (int i = 0; i < LANES; ++i) r[i] = (float)hsum_f32(s[i]);
    return r;
#endif
}

static inline vf64 hsum16_f64(const vf64 *s) {
    vf64 r;
    for (int i = 0; i < LANES; ++i) r[i] = hsum_f64(s[i]);
    return r;
}

#define T float
#define V vf32
#define SUF _f32
#define TANH tanh_vf32
#if defined(__AVX512F__) && LANES == 16
#define MV_PAIR 1 /* 16 accumulators of one AVX-512 register each: they fit (32 registers) */
#else
#define MV_PAIR 0
#endif
#include "mlp_impl.h"
#undef T
#undef V
#undef SUF
#undef TANH
#undef MV_PAIR

#define T double
#define MV_PAIR 0
#define V vf64
#define SUF _f64
#define TANH tanh_vf64
#include "mlp_impl.h"
#undef T
#undef V
#undef SUF
#undef TANH
#undef MV_PAIR

/* For the tests: the float32 vector tanh on n values. */
void tanh_f32_array(const float *x, float *y, long n) {
    long i = 0;
    for (; i + LANES <= n; i += LANES) {
        vf32 v;
        memcpy(&v, x + i, sizeof v);
        v = tanh_vf32(v);
        memcpy(y + i, &v, sizeof v);
    }
    for (; i < n; ++i) {
        vf32 v = (vf32){} + x[i];
        y[i] = tanh_vf32(v)[0];
    }
}
