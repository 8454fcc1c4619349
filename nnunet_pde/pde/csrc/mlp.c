/* Fused kernels of the PDE block's pointwise reaction N(u) = W2 tanh(W1 u + b1) + b2 and of
 * its backward (CPU). The 1x1 convolutions are small matrices (C, H <= a few hundred)
 * applied per voxel: done LANES voxels at a time (one GCC vector per channel), the whole
 * reaction of a tile in registers and L1 instead of three passes over memory.
 *
 * float32 tanh is a vector approximation (odd Taylor polynomial below |x| = 0.3, otherwise
 * 1 - 2 / (exp(2|x|) + 1) with a range-reduced polynomial exp): relative error below 1e-6
 * (tested against torch.tanh). float64 uses the C library's tanh lane by lane.
 * Compiled at first use by nnunet_pde/pde/native.py.
 */
#include "common.h"

/* exp(y) for 0 <= y <= 20: y = n ln2 + r, |r| <= ln2 / 2, exp(r) by its degree-7 Taylor
 * polynomial (remainder < 6e-9), times 2^n built in the exponent bits. */
static inline vf32 exp_f32(vf32 y) {
    const vf32 log2e = (vf32){} + 1.4426950408889634f;
    vi32 n = __builtin_convertvector(y * log2e + 0.5f, vi32);
    vf32 nf = __builtin_convertvector(n, vf32);
    vf32 r = y - nf * 0.693145751953125f - nf * 1.428606765330187e-06f;
    vf32 p = 1.0f + r * (1.0f + r * (0.5f + r * (1.0f / 6 + r * (1.0f / 24 + r * (1.0f / 120
               + r * (1.0f / 720 + r * (1.0f / 5040)))))));
    vi32 bits = (n + 127) << 23;
    return p * (vf32)bits;
}

static inline vf32 tanh_vf32(vf32 x) {
    const vi32 absmask = (vi32){} + 0x7fffffff;
    vf32 ax = (vf32)((vi32)x & absmask);
    vf32 x2 = x * x;
    vf32 small = x * (1.0f + x2 * (-1.0f / 3 + x2 * (2.0f / 15 + x2 * (-17.0f / 315
                   + x2 * (62.0f / 2835 + x2 * (-1382.0f / 155925))))));
    vf32 y = 2.0f * ax;
    y = select_f32(y > 20.0f, (vf32){} + 20.0f, y);
    vf32 big = 1.0f - 2.0f / (exp_f32(y) + 1.0f);
    big = (vf32)(((vi32)big & absmask) | ((vi32)x & ~absmask)); /* sign of x */
    return select_f32(ax < 0.3f, small, big);
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
#include "mlp_impl.h"
#undef T
#undef V
#undef SUF
#undef TANH

#define T double
#define V vf64
#define SUF _f64
#define TANH tanh_vf64
#include "mlp_impl.h"
#undef T
#undef V
#undef SUF
#undef TANH

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
