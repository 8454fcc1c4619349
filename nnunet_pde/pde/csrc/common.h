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

#endif
