/* Per-volume kernels of the PDE block's standardisation and edge-energy regulariser (CPU):
 * each (sample, channel) volume is read a few times while it is in cache, instead of one
 * pass over the whole tensor per element-wise torch operation. float32 log1p is a vector
 * approximation (log(1 + x) = e ln 2 + 2 atanh((m - 1) / (m + 1)), relative error below
 * 1e-6, tested); float64 uses the C library's. Compiled at first use by native.py. */
#include "common.h"

/* log(1 + x) for x >= 0 (finite): y = 1 + x = 2^e m with m in [sqrt(1/2), sqrt(2)),
 * log(m) = 2 (t + t^3/3 + ... + t^9/9), t = (m - 1) / (m + 1), |t| <= 0.172; then the
 * rounding of 1 + x is undone by the factor x / (y - 1) (Kahan's log1p trick). */
static inline vf32 log1p_vf32(vf32 x) {
    vf32 y = 1.0f + x;
    vi32 bits = (vi32)y;
    vi32 e = ((bits >> 23) & 0xff) - 127;
    vf32 m = (vf32)((bits & 0x007fffff) | 0x3f800000); /* in [1, 2) */
    vi32 big = m > 1.41421356f;
    m = (vf32)(((vi32)(m * 0.5f) & big) | ((vi32)m & ~big));
    e = e - big; /* big is -1 where true */
    vf32 t = (m - 1.0f) / (m + 1.0f);
    vf32 t2 = t * t;
    vf32 p = 2.0f * t * (1.0f + t2 * (1.0f / 3 + t2 * (1.0f / 5 + t2 * (1.0f / 7 + t2 * (1.0f / 9)))));
    vf32 logy = __builtin_convertvector(e, vf32) * 0.6931471805599453f + p;
    vf32 d = y - 1.0f;
    vi32 exact = d == 0.0f; /* x below half an ulp of 1: log1p(x) = x */
    vf32 r = logy * (x / (d + (vf32)((vi32)((vf32){} + 1.0f) & exact)));
    return (vf32)(((vi32)x & exact) | ((vi32)r & ~exact));
}

static inline vf64 log1p_vf64(vf64 x) {
    for (int l = 0; l < LANES; ++l) x[l] = log1p(x[l]);
    return x;
}

#define T float
#define V vf32
#define SUF _f32
#define LOG1P log1p_vf32
#include "norm_impl.h"
#undef T
#undef V
#undef SUF
#undef LOG1P

#define T double
#define V vf64
#define SUF _f64
#define LOG1P log1p_vf64
#include "norm_impl.h"
#undef T
#undef V
#undef SUF
#undef LOG1P

/* For the tests: the float32 vector log1p on n values >= 0. */
void log1p_f32_array(const float *x, float *y, long n) {
    for (long i = 0; i < n; ++i) {
        vf32 v = (vf32){} + x[i];
        y[i] = log1p_vf32(v)[0];
    }
}
