/* One scalar type's instantiation of the fused pointwise reaction N(u) = W2 tanh(W1 u + b1)
 * + b2 (see mlp.c). Included with T, V, VI (same-size integer vector), SUF and TANH (the
 * vector tanh of this type) defined.
 *
 * Tensors are (B, C, P) or (B, H, P) row-major (P voxels). A tile is LANES consecutive
 * voxels of one sample: channel c of the tile is one vector. Tiles [t0, t1) are numbered
 * over (sample, tile) pairs.
 */

static void CAT(tile_load, SUF)(const T *src, V *dst, long rows, long P, long p0, int valid) {
    for (long r = 0; r < rows; ++r) {
        if (valid == LANES) {
            memcpy(&dst[r], src + r * P + p0, sizeof(V));
        } else {
            dst[r] = (V){};
            for (int l = 0; l < valid; ++l) dst[r][l] = src[r * P + p0 + l];
        }
    }
}

static void CAT(tile_store, SUF)(T *dst, const V *src, long rows, long P, long p0, int valid) {
    for (long r = 0; r < rows; ++r) {
        if (valid == LANES) {
            memcpy(dst + r * P + p0, &src[r], sizeof(V));
        } else {
            for (int l = 0; l < valid; ++l) dst[r * P + p0 + l] = src[r][l];
        }
    }
}

/* out[o] = bias[o] + sum_i W[o * ws_o + i * ws_i] x[i] for o < O (8 outputs at a time, so
 * eight independent accumulation chains). ws_o/ws_i: strides of W (transposes for free). */
static void CAT(matvec, SUF)(const T *W, long ws_o, long ws_i, const T *bias, const V *x,
                             long I, V *out, long O) {
    long o = 0;
    for (; o + 8 <= O; o += 8) {
        V a0 = (V){}, a1 = (V){}, a2 = (V){}, a3 = (V){}, a4 = (V){}, a5 = (V){}, a6 = (V){},
          a7 = (V){};
        if (bias) {
            a0 += bias[o], a1 += bias[o + 1], a2 += bias[o + 2], a3 += bias[o + 3];
            a4 += bias[o + 4], a5 += bias[o + 5], a6 += bias[o + 6], a7 += bias[o + 7];
        }
        const T *w = W + o * ws_o;
        for (long i = 0; i < I; ++i) {
            V xi = x[i];
            const T *wi = w + i * ws_i;
            a0 += wi[0] * xi;
            a1 += wi[ws_o] * xi;
            a2 += wi[2 * ws_o] * xi;
            a3 += wi[3 * ws_o] * xi;
            a4 += wi[4 * ws_o] * xi;
            a5 += wi[5 * ws_o] * xi;
            a6 += wi[6 * ws_o] * xi;
            a7 += wi[7 * ws_o] * xi;
        }
        out[o] = a0, out[o + 1] = a1, out[o + 2] = a2, out[o + 3] = a3;
        out[o + 4] = a4, out[o + 5] = a5, out[o + 6] = a6, out[o + 7] = a7;
    }
    for (; o < O; ++o) {
        V a = (V){};
        if (bias) a += bias[o];
        for (long i = 0; i < I; ++i) a += W[o * ws_o + i * ws_i] * x[i];
        out[o] = a;
    }
}

/* h = tanh(W1 u + b1), n = W2 h + b2; writes b = u + tau n, h and n where not NULL. */
int CAT(mlp_forward, SUF)(const T *u, const T *w1, const T *b1, const T *w2, const T *b2,
                          const T *tau, T *out_b, T *out_h, T *out_n, long C, long H, long P,
                          long t0, long t1) {
    long tiles = (P + LANES - 1) / LANES;
    V *buf = (V *)aligned_alloc(sizeof(V), sizeof(V) * (size_t)(2 * C + H));
    if (!buf) return 1;
    FTZ_BEGIN
    V *U = buf, *N = U + C, *Hh = N + C;
    for (long t = t0; t < t1; ++t) {
        long bi = t / tiles, p0 = (t % tiles) * LANES;
        int valid = P - p0 < LANES ? (int)(P - p0) : LANES;
        CAT(tile_load, SUF)(u + bi * C * P, U, C, P, p0, valid);
        CAT(matvec, SUF)(w1, C, 1, b1, U, C, Hh, H);
        for (long h = 0; h < H; ++h) Hh[h] = TANH(Hh[h]);
        CAT(matvec, SUF)(w2, H, 1, b2, Hh, H, N, C);
        if (out_h) CAT(tile_store, SUF)(out_h + bi * H * P, Hh, H, P, p0, valid);
        if (out_n) CAT(tile_store, SUF)(out_n + bi * C * P, N, C, P, p0, valid);
        if (out_b) {
            for (long c = 0; c < C; ++c) N[c] = U[c] + tau[c] * N[c];
            CAT(tile_store, SUF)(out_b + bi * C * P, N, C, P, p0, valid);
        }
    }
    FTZ_END
    free(buf);
    return 0;
}

/* Backward core for dL/db = gb: gN = tau gb, gpre = (W2^T gN) (1 - h^2), and
 * gu = gu_in + W1^T gpre. Writes gpre (B, H, P) and gu (B, C, P). */
int CAT(mlp_backward, SUF)(const T *h, const T *gb, const T *tau, const T *w1, const T *w2,
                           const T *gu_in, T *out_gpre, T *out_gu, long C, long H, long P,
                           long t0, long t1) {
    long tiles = (P + LANES - 1) / LANES;
    V *buf = (V *)aligned_alloc(sizeof(V), sizeof(V) * (size_t)(3 * C + 2 * H));
    if (!buf) return 1;
    FTZ_BEGIN
    V *G = buf, *GU = G + C, *Hh = GU + C, *GP = Hh + H, *GI = GP + H;
    const V one = (V){} + (T)1;
    for (long t = t0; t < t1; ++t) {
        long bi = t / tiles, p0 = (t % tiles) * LANES;
        int valid = P - p0 < LANES ? (int)(P - p0) : LANES;
        CAT(tile_load, SUF)(gb + bi * C * P, G, C, P, p0, valid);
        CAT(tile_load, SUF)(h + bi * H * P, Hh, H, P, p0, valid);
        for (long c = 0; c < C; ++c) G[c] *= tau[c];
        /* W2 is (C, H): (W2^T)[o = h][i = c] = W2[c * H + h] */
        CAT(matvec, SUF)(w2, 1, H, 0, G, C, GP, H);
        for (long k = 0; k < H; ++k) GP[k] *= one - Hh[k] * Hh[k];
        /* W1 is (H, C): (W1^T)[o = c][i = h] = W1[h * C + c] */
        CAT(matvec, SUF)(w1, 1, C, 0, GP, H, GU, C);
        CAT(tile_load, SUF)(gu_in + bi * C * P, GI, C, P, p0, valid);
        for (long c = 0; c < C; ++c) GU[c] += GI[c];
        CAT(tile_store, SUF)(out_gpre + bi * H * P, GP, H, P, p0, valid);
        CAT(tile_store, SUF)(out_gu + bi * C * P, GU, C, P, p0, valid);
    }
    FTZ_END
    free(buf);
    return 0;
}
