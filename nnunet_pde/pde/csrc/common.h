/* Shared by the kernels' translation units (aos.c, mlp.c, norm.c). */
#ifndef NNUNET_PDE_COMMON_H
#define NNUNET_PDE_COMMON_H

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* Denormal operands are flushed to zero inside the kernels (x86 MXCSR FTZ and DAZ bits, set
 * on entry and restored on exit): trained blocks can carry denormal-small values, and
 * arithmetic on them is tens of times slower on x86 CPUs. Results differ only where a value
 * below 1.2e-38 (float32) would have been kept. */
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define FTZ_BEGIN const unsigned int csr_saved_ = _mm_getcsr(); _mm_setcsr(csr_saved_ | 0x8040u);
#define FTZ_END _mm_setcsr(csr_saved_);
#else
#define FTZ_BEGIN
#define FTZ_END
#endif

/* Values processed at once: one GCC vector (an AVX-512 register of float32). */
#define LANES 16
#define CAT_(a, b) a##b
#define CAT(a, b) CAT_(a, b)

typedef float vf32 __attribute__((vector_size(LANES * sizeof(float))));
typedef int vi32 __attribute__((vector_size(LANES * sizeof(int))));
typedef double vf64 __attribute__((vector_size(LANES * sizeof(double))));

/* o = v (LANES values) as a non-temporal store where o is 64-byte aligned and AVX-512 is
 * there: the line goes to memory without being read first and without evicting cached
 * data. For outputs that are large and read back only by a later kernel (on an AVX-512
 * Xeon it saved a third of the reaction forward's time). NT_FENCE orders such stores
 * before the kernel returns. Elsewhere (and for float64, which only the tests use) an
 * ordinary store. */
#if defined(__AVX512F__) && LANES == 16
#define NT_FENCE _mm_sfence();
static inline void put_nt_f32(float *o, vf32 v) {
    if (((unsigned long)o & 63) == 0)
        _mm512_stream_ps(o, (__m512)v);
    else
        memcpy(o, &v, sizeof v);
}
#else
#define NT_FENCE
static inline void put_nt_f32(float *o, vf32 v) { memcpy(o, &v, sizeof v); }
#endif
static inline void put_nt_f64(double *o, vf64 v) { memcpy(o, &v, sizeof v); }

/* Lane-wise a where mask (all bits set) else b. */
static inline vf32 select_f32(vi32 mask, vf32 a, vf32 b) {
    return (vf32)(((vi32)a & mask) | ((vi32)b & ~mask));
}

/* Lane shuffles of two GCC vectors (GCC only; elsewhere the callers take scalar paths). Mask
 * LO_h takes, in every block of 2h lanes, the first h lanes of a then the first h of b; HI_h
 * the second halves. They serve a 16 x 16 transpose and a tree of lane sums. */
#if defined(__GNUC__) && !defined(__clang__) && LANES == 16
#define HAVE_SHUFFLE 1
#define LO8 ((vi32){0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23})
#define LO4 ((vi32){0, 1, 2, 3, 16, 17, 18, 19, 8, 9, 10, 11, 24, 25, 26, 27})
#define LO2 ((vi32){0, 1, 16, 17, 4, 5, 20, 21, 8, 9, 24, 25, 12, 13, 28, 29})
#define LO1 ((vi32){0, 16, 2, 18, 4, 20, 6, 22, 8, 24, 10, 26, 12, 28, 14, 30})

/* In-place transpose of 16 vectors of 16 floats (r[i][j] <-> r[j][i]): four stages that
 * swap the off-diagonal h x h blocks, h = 8, 4, 2, 1; written out so that the 16 rows stay
 * in registers. */
#define TSWAP_(x, y, lo, h)                                                                     \
    do {                                                                                        \
        vf32 t_ = __builtin_shuffle(x, y, lo);                                                  \
        y = __builtin_shuffle(x, y, lo + h);                                                    \
        x = t_;                                                                                 \
    } while (0)
static inline void transpose16_f32(vf32 *r) {
    vf32 a0 = r[0], a1 = r[1], a2 = r[2], a3 = r[3], a4 = r[4], a5 = r[5], a6 = r[6],
         a7 = r[7], a8 = r[8], a9 = r[9], a10 = r[10], a11 = r[11], a12 = r[12], a13 = r[13],
         a14 = r[14], a15 = r[15];
    TSWAP_(a0, a8, LO8, 8); TSWAP_(a1, a9, LO8, 8); TSWAP_(a2, a10, LO8, 8);
    TSWAP_(a3, a11, LO8, 8); TSWAP_(a4, a12, LO8, 8); TSWAP_(a5, a13, LO8, 8);
    TSWAP_(a6, a14, LO8, 8); TSWAP_(a7, a15, LO8, 8);
    TSWAP_(a0, a4, LO4, 4); TSWAP_(a1, a5, LO4, 4); TSWAP_(a2, a6, LO4, 4);
    TSWAP_(a3, a7, LO4, 4); TSWAP_(a8, a12, LO4, 4); TSWAP_(a9, a13, LO4, 4);
    TSWAP_(a10, a14, LO4, 4); TSWAP_(a11, a15, LO4, 4);
    TSWAP_(a0, a2, LO2, 2); TSWAP_(a1, a3, LO2, 2); TSWAP_(a4, a6, LO2, 2);
    TSWAP_(a5, a7, LO2, 2); TSWAP_(a8, a10, LO2, 2); TSWAP_(a9, a11, LO2, 2);
    TSWAP_(a12, a14, LO2, 2); TSWAP_(a13, a15, LO2, 2);
    TSWAP_(a0, a1, LO1, 1); TSWAP_(a2, a3, LO1, 1); TSWAP_(a4, a5, LO1, 1);
    TSWAP_(a6, a7, LO1, 1); TSWAP_(a8, a9, LO1, 1); TSWAP_(a10, a11, LO1, 1);
    TSWAP_(a12, a13, LO1, 1); TSWAP_(a14, a15, LO1, 1);
    r[0] = a0, r[1] = a1, r[2] = a2, r[3] = a3, r[4] = a4, r[5] = a5, r[6] = a6, r[7] = a7;
    r[8] = a8, r[9] = a9, r[10] = a10, r[11] = a11, r[12] = a12, r[13] = a13, r[14] = a14;
    r[15] = a15;
}
#endif

#endif
