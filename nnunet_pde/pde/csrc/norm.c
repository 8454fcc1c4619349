/* Per-volume kernels of the PDE block's standardisation and edge-energy regulariser (CPU):
 * each (sample, channel) volume is read a few times while it is in cache, instead of one
 * pass over the whole tensor per element-wise torch operation. float32 log1p is a vector
 * approximation (log1p_vf32: a polynomial, relative error below 1e-6, tested); float64 uses
 * the C library's. Compiled at first use by native.py. */
#include "common.h"

/* log(1 + x) for x >= 0 (finite), without a division: y = 1 + x = 2^e m with m in
 * [sqrt(1/2), sqrt(2)), log(m) = f P(f) with f = m - 1 and P of degree 8 (coefficients fitted
 * here for the relative error: 3e-8 in exact arithmetic, 1.7e-7 evaluated in float32). The
 * rounding of 1 + x is undone by adding (x - (y - 1)) / y, with 1 / y taken as max(2 - y,
 * 0): exact to second order near y = 1, where the correction matters (for x below half an
 * ulp of 1 it is all of the result), and below 1e-7 of the result elsewhere. */
static inline vf32 log1p_vf32(vf32 x) {
    vf32 y = 1.0f + x;
    vi32 bits = (vi32)y;
    vi32 e = ((bits >> 23) & 0xff) - 127;
    vf32 m = (vf32)((bits & 0x007fffff) | 0x3f800000); /* in [1, 2) */
    vi32 big = m > 1.41421356f;
    m = select_f32(big, m * 0.5f, m);
    e = e - big; /* big is -1 where true */
    vf32 f = m - 1.0f;
    vf32 p = 9.999999742e-01f + f * (-4.999998804e-01f + f * (3.333418437e-01f
             + f * (-2.500206691e-01f + f * (1.995687319e-01f + f * (-1.656258365e-01f
             + f * (1.495204065e-01f + f * (-1.436537110e-01f + f * 8.721174327e-02f)))))));
    vf32 r = 2.0f - y;
    r = select_f32(r > 0.0f, r, (vf32){});
    return __builtin_convertvector(e, vf32) * 0.6931471805599453f + f * p + (x - (y - 1.0f)) * r;
}

static inline vf64 log1p_vf64(vf64 x) {
    for (int l = 0; l < LANES; ++l) x[l] = log1p(x[l]);
    return x;
}

/* x with the lanes where mask is set (all bits) zeroed. */
static inline vf64 zero_where_f64(vf64 x, vi32 mask) {
    for (int l = 0; l < LANES; ++l)
        if (mask[l]) x[l] = 0;
    return x;
}

#define T float
#define V vf32
#define SUF _f32
#define LOG1P log1p_vf32
#define ZERO_WHERE(x, mask) select_f32(mask, (vf32){}, x)
#include "norm_impl.h"
#undef T
#undef V
#undef SUF
#undef LOG1P
#undef ZERO_WHERE

#define T double
#define V vf64
#define SUF _f64
#define LOG1P log1p_vf64
#define ZERO_WHERE zero_where_f64
#include "norm_impl.h"
#undef T
#undef V
#undef SUF
#undef LOG1P
#undef ZERO_WHERE

/* For the tests: the float32 vector log1p on n values >= 0. */
void log1p_f32_array(const float *x, float *y, long n) {
    for (long i = 0; i < n; ++i) {
        vf32 v = (vf32){} + x[i];
        y[i] = log1p_vf32(v)[0];
    }
}
