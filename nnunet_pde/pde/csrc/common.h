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
#include <xmmintrin.h>
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
 * swap the off-diagonal h x h blocks, h = 8, 4, 2, 1. */
static inline void transpose16_f32(vf32 *r) {
    const vi32 lo[4] = {LO8, LO4, LO2, LO1};
    for (int s = 0, h = 8; s < 4; ++s, h /= 2) {
        const vi32 l = lo[s], hm = lo[s] + h;
        for (int i = 0; i < 16; ++i) {
            if (i & h) continue;
            vf32 a = r[i], b = r[i + h];
            r[i] = __builtin_shuffle(a, b, l);
            r[i + h] = __builtin_shuffle(a, b, hm);
        }
    }
}
#endif

#endif
