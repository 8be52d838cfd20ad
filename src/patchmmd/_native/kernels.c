/* Fused CPU kernels (see patchmmd/_native/__init__.py, which compiles and loads this): the random-Fourier-feature
 * estimator's, then the shift-tolerant aligned terms' (the sub-pixel fit's inputs, the offset scan and its
 * gradient) and the SSIM term's (values and gradient).
 *
 * For one image x (C x Hp x Wp, reflect-padded, float32) and m random frequencies (W: m x K, K = C k^2, and
 * phases b), the angle of feature j at patch centre (y, x) is
 *
 *     z_j(y, x) = b_j + sum_{c, dy, dx} W[j, (c, dy, dx)] * img[c, y + dy, x + dx].
 *
 * rff_block_sums: sums of cos(z_j) and sin(z_j) over blocks of bh x bw patch centres (forward pass).
 * rff_grad_image: given G_c = dL/d(block sum of cos) and G_s = dL/d(block sum of sin), the gradient with
 *                 respect to the image: dL/dimg[c, y + dy, x + dx] += sum_j W[j, (c, dy, dx)] dz_j(y, x) with
 *                 dz_j = G_s cos z_j - G_c sin z_j = A cos(z_j + phi) (backward pass; angles are recomputed,
 *                 nothing is stored).
 *
 * Contrast-normalised patches (docs/method.md §3.3; floor2d = d ε² > 0, filters already projected by Π): the angle
 * is z_j = b_j + s(y, x) sum_{...} W[j, .] img[.] with s = 1 / sqrt(|Π p|² + d ε²) of the patch, computed here from
 * its per-channel sums and sums of squares. rff_grad_image adds the path through s: with
 * dL/ds = sum_j dz_j a_j (a_j = z_j without b_j, over s) and ds/dp = -s³ Π p, the gradient with respect to the
 * patch is s (sum_j W_j dz_j - (dL/ds) s Π p).
 *
 * The convolution, the sine/cosine and the block sums are done in registers, J frequencies x P vectors of V
 * patch centres at a time (each weight broadcast once for P vectors, each pixel loaded once for J
 * frequencies), so no (m x H x W) tensor is ever written. sin/cos(2 pi t) use a range reduction to
 * t in [-1/2, 1/2] turns and polynomials whose coefficients the loader passes in (fitted there); the maximal
 * absolute error in float32 is below 1e-6 (tests/test_native.py checks it against float64).
 *
 * Each kernel has a driver (the *_tasks functions at the end) that runs the tasks of one call on the threads of
 * the OpenMP runtime, when compiled with -fopenmp: the loader uses it only when that runtime is PyTorch's own
 * (one OpenMP library in the process), so the kernels run on PyTorch's intra-op threads instead of competing
 * with them. Without OpenMP the drivers run their tasks one after the other and the loader splits the tasks
 * over threads of its own.
 *
 * Plain C11 with GCC/Clang vector extensions: portable to any target those compilers vectorise for.
 */
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#define THREAD_SLOT() omp_get_thread_num()
#else
#define THREAD_SLOT() 0
#endif

#ifndef V
#define V 16 /* patch centres per vector */
#endif
#ifndef P
#define P 2 /* vectors per register block (along a row: P * V consecutive centres) */
#endif
#ifndef J
#define J 8 /* frequencies per register block */
#endif
#ifndef S
#define S 4 /* sines/cosines evaluated together (interleaved Horner chains) */
#endif
#define NCOEF 7

typedef float vf __attribute__((vector_size(V * sizeof(float))));

static inline vf loadu(const float *p) {
    vf v;
    memcpy(&v, p, sizeof v);
    return v;
}

static inline void storeu(float *p, vf v) { memcpy(p, &v, sizeof v); }

static inline vf splat(float a) { /* a broadcast (not 0 + a: that is an addition the compiler must keep) */
    vf v;
    for (int i = 0; i < V; ++i) v[i] = a;
    return v;
}

/* cos(z) and sin(z) of S vectors: z -> t = z / 2 pi, r = t - round(t) in [-1/2, 1/2]; cos = Pc(r^2),
 * sin = r Ps(r^2). The S Horner chains are interleaved (one alone is latency-bound). */
static inline void sincos_s(const vf *z, const float *cc, const float *sc, vf *c, vf *s) {
    const float magic = 12582912.0f; /* 1.5 * 2^23: adding and subtracting it rounds to an integer */
    vf r[S], u[S];
#pragma GCC unroll 16
    for (int i = 0; i < S; ++i) {
        vf t = z[i] * 0.15915494309189535f;
        r[i] = t - ((t + magic) - magic);
        u[i] = r[i] * r[i];
        c[i] = u[i] * cc[NCOEF - 1] + cc[NCOEF - 2];
        s[i] = u[i] * sc[NCOEF - 1] + sc[NCOEF - 2];
    }
#pragma GCC unroll 8
    for (int d = NCOEF - 3; d >= 0; --d) {
#pragma GCC unroll 16
        for (int i = 0; i < S; ++i) {
            c[i] = c[i] * u[i] + cc[d];
            s[i] = s[i] * u[i] + sc[d];
        }
    }
#pragma GCC unroll 16
    for (int i = 0; i < S; ++i) s[i] *= r[i];
}

/* cos(z) only, for S vectors (same reduction and polynomial as sincos_s). */
static inline void cos_s(const vf *z, const float *cc, vf *c) {
    const float magic = 12582912.0f;
    vf u[S];
#pragma GCC unroll 16
    for (int i = 0; i < S; ++i) {
        vf t = z[i] * 0.15915494309189535f;
        vf r = t - ((t + magic) - magic);
        u[i] = r * r;
        c[i] = u[i] * cc[NCOEF - 1] + cc[NCOEF - 2];
    }
#pragma GCC unroll 8
    for (int d = NCOEF - 3; d >= 0; --d) {
#pragma GCC unroll 16
        for (int i = 0; i < S; ++i) c[i] = c[i] * u[i] + cc[d];
    }
}

static inline void sincos_block(const vf z[J], const float *cc, const float *sc, vf c[J], vf s[J]) {
#pragma GCC unroll 16
    for (int jj = 0; jj < J; jj += S) sincos_s(z + jj, cc, sc, c + jj, s + jj);
}

/* Adds the angles of J frequencies (rows g .. g + J of W) at the P * V patch centres starting at (y, x0) to z
 * (which holds the phases). */
static inline void angles(const float *img, int C, int Hp, int Wp, int k, int K, const float *W, int g, int y,
                          int x0, vf z[P][J]) {
    int kk = 0;
    for (int c = 0; c < C; ++c) {
        for (int dy = 0; dy < k; ++dy) {
            const float *row = img + ((size_t)c * Hp + (size_t)(y + dy)) * Wp + x0;
            for (int dx = 0; dx < k; ++dx, ++kk) {
                vf v[P];
#pragma GCC unroll 4
                for (int q = 0; q < P; ++q) v[q] = loadu(row + dx + q * V);
                const float *w = W + (size_t)g * K + kk;
#pragma GCC unroll 16
                for (int jj = 0; jj < J; ++jj) {
                    const float wj = w[(size_t)jj * K];
#pragma GCC unroll 4
                    for (int q = 0; q < P; ++q) z[q][jj] += wj * v[q];
                }
            }
        }
    }
}

/* 1 / sqrt(t) for t > 0 to float32 precision, in vector arithmetic (a bit-level first guess, three Newton steps:
 * relative error below 1e-7 after them). */
static inline vf rsqrt_v(vf t) {
    typedef int vi __attribute__((vector_size(V * sizeof(int))));
    vi i;
    memcpy(&i, &t, sizeof i);
    i = 0x5f3759df - (i >> 1);
    vf r;
    memcpy(&r, &i, sizeof r);
#pragma GCC unroll 3
    for (int it = 0; it < 3; ++it) r = r * (1.5f - 0.5f * t * r * r);
    return r;
}

/* The contrast factor s = 1 / sqrt(|Π p|² + floor2d) of the P * V patches centred on row y, columns x0 .., and
 * (mean not NULL) their per-channel means, mean + (c * P + q) * V. |Π p|² = sum_c (sum u² - (sum u)² / k²) with
 * u = p_c - (the patch's centre pixel) (no cancellation on a flat patch far from 0), clamped at 0 against
 * rounding. */
static inline void patch_scale(const float *img, int C, int Hp, int Wp, int k, int y, int x0, float floor2d,
                               vf s[P], float *mean) {
    const float inv = 1.0f / (float)(k * k);
    vf e[P];
#pragma GCC unroll 4
    for (int q = 0; q < P; ++q) e[q] = splat(0.0f);
    for (int c = 0; c < C; ++c) {
        vf sum[P], sq[P], ref[P];
        const float *centre = img + ((size_t)c * Hp + (size_t)(y + k / 2)) * Wp + x0 + k / 2;
#pragma GCC unroll 4
        for (int q = 0; q < P; ++q) {
            sum[q] = sq[q] = splat(0.0f);
            ref[q] = loadu(centre + q * V);
        }
        for (int dy = 0; dy < k; ++dy) {
            const float *row = img + ((size_t)c * Hp + (size_t)(y + dy)) * Wp + x0;
            for (int dx = 0; dx < k; ++dx) {
#pragma GCC unroll 4
                for (int q = 0; q < P; ++q) {
                    const vf u = loadu(row + dx + q * V) - ref[q];
                    sum[q] += u;
                    sq[q] += u * u;
                }
            }
        }
#pragma GCC unroll 4
        for (int q = 0; q < P; ++q) {
            const vf m = sum[q] * inv;
            e[q] += sq[q] - sum[q] * m;
            if (mean) storeu(mean + ((size_t)c * P + q) * V, ref[q] + m);
        }
    }
#pragma GCC unroll 4
    for (int q = 0; q < P; ++q) {
        vf t = e[q];
        for (int i = 0; i < V; ++i) t[i] = (t[i] > 0.0f ? t[i] : 0.0f) + floor2d;
        s[q] = rsqrt_v(t);
    }
}

/* Block sums of cos(z_j) and sin(z_j), j in [j0, j1) (a multiple of J apart), for one image.
 * img: (C, Hp, Wp) with Hp >= hc + k - 1 and Wp >= wcp + k - 1; wcp: wc rounded up to a multiple of P * V.
 * floor2d: d ε² of the contrast-normalised patches, or 0 for the patches as they are.
 * out_c, out_s: (m, hc / bh, wc / bw) for this image (rows j0 .. j1 written).
 * work: 2 * J * wcp floats, and with floor2d > 0 bh * wcp more (the factors s of a band of rows, computed once for
 * all the frequencies). Each feature's sums are added in the same order whatever the loop nesting. */
void rff_block_sums(const float *img, int C, int Hp, int Wp, int k, int hc, int wc, int wcp, int bh, int bw,
                    const float *W, const float *b, float floor2d, int j0, int j1, const float *cc,
                    const float *sc, float *out_c, float *out_s, float *work) {
    const int K = C * k * k, hb = hc / bh, wb = wc / bw;
    float *acc_c = work, *acc_s = work + (size_t)J * wcp, *band = work + 2 * (size_t)J * wcp;
    for (int by = 0; by < hb; ++by) {
        if (floor2d > 0.0f) {
            for (int y = by * bh; y < (by + 1) * bh; ++y) {
                for (int x0 = 0; x0 < wcp; x0 += P * V) {
                    vf sv[P];
                    patch_scale(img, C, Hp, Wp, k, y, x0, floor2d, sv, NULL);
#pragma GCC unroll 4
                    for (int q = 0; q < P; ++q) storeu(band + (size_t)(y - by * bh) * wcp + x0 + q * V, sv[q]);
                }
            }
        }
        for (int g = j0; g < j1; g += J) {
            memset(work, 0, sizeof(float) * 2 * (size_t)J * wcp);
            for (int y = by * bh; y < (by + 1) * bh; ++y) {
                for (int x0 = 0; x0 < wcp; x0 += P * V) {
                    vf z[P][J];
#pragma GCC unroll 16
                    for (int jj = 0; jj < J; ++jj) {
                        const float bj = floor2d > 0.0f ? 0.0f : b[g + jj];
#pragma GCC unroll 4
                        for (int q = 0; q < P; ++q) z[q][jj] = splat(bj);
                    }
                    angles(img, C, Hp, Wp, k, K, W, g, y, x0, z);
                    if (floor2d > 0.0f) {
                        const float *sb = band + (size_t)(y - by * bh) * wcp + x0;
#pragma GCC unroll 4
                        for (int q = 0; q < P; ++q) {
                            const vf sv = loadu(sb + q * V);
#pragma GCC unroll 16
                            for (int jj = 0; jj < J; ++jj) z[q][jj] = z[q][jj] * sv + b[g + jj];
                        }
                    }
#pragma GCC unroll 4
                    for (int q = 0; q < P; ++q) {
                        vf c[J], s[J];
                        sincos_block(z[q], cc, sc, c, s);
#pragma GCC unroll 16
                        for (int jj = 0; jj < J; ++jj) {
                            float *pc = acc_c + (size_t)jj * wcp + x0 + q * V, *ps = acc_s + (size_t)jj * wcp + x0 + q * V;
                            storeu(pc, loadu(pc) + c[jj]);
                            storeu(ps, loadu(ps) + s[jj]);
                        }
                    }
                }
            }
            for (int jj = 0; jj < J; ++jj) {
                const float *rc = acc_c + (size_t)jj * wcp, *rs = acc_s + (size_t)jj * wcp;
                float *oc = out_c + ((size_t)(g + jj) * hb + by) * wb, *os = out_s + ((size_t)(g + jj) * hb + by) * wb;
                for (int bx = 0; bx < wb; ++bx) {
                    float sc_ = 0.0f, ss_ = 0.0f;
                    for (int x = bx * bw; x < (bx + 1) * bw; ++x) {
                        sc_ += rc[x];
                        ss_ += rs[x];
                    }
                    oc[bx] = sc_;
                    os[bx] = ss_;
                }
            }
        }
    }
}

/* Gradient with respect to the (padded) image of one image, from the patch centres of rows y in [y0, y1).
 * The gradients of the block sums, G_c = dL/d(sum of cos z_j) and G_s = dL/d(sum of sin z_j), enter in the
 * form amp = hypot(G_c, G_s), phs = atan2(G_c, G_s): then dz_j = G_s cos z_j - G_c sin z_j = amp cos(z_j + phs),
 * one cosine per angle. amp, phs: (m, hc / bh, wc / bw); m a multiple of J.
 * gimg: (C, Hg, Wg), Hg >= y1 - y0 + k - 1, Wg >= wcp + k - 1, zero on entry; row 0 is image row y0. Gradients are
 * added into it (the transposed convolution), so bands of rows may go to separate buffers.
 * floor2d: as for rff_block_sums.
 * work: 2 * m * wcp + (K + C) * P * V floats. */
void rff_grad_image(const float *img, int C, int Hp, int Wp, int k, int hc, int wc, int wcp, int bh, int bw,
                    const float *W, const float *b, float floor2d, int m, const float *cc, const float *amp,
                    const float *phs, int y0, int y1, float *gimg, int Hg, int Wg, float *work) {
    const int norm = floor2d > 0.0f;
    const int K = C * k * k, hb = hc / bh, wb = wc / bw;
    float *ea = work, *ep = work + (size_t)m * wcp, *gacc = work + 2 * (size_t)m * wcp;
    float *mean = gacc + (size_t)K * P * V; /* C * P vectors: the patches' channel means */
    int expanded = -1;
    for (int y = y0; y < y1; ++y) {
        const int by = y / bh;
        if (by != expanded) { /* per-centre copies of this block row's amplitudes (zero past wc) and phases + b */
            for (int j = 0; j < m; ++j) {
                const float *ra = amp + ((size_t)j * hb + by) * wb, *rp = phs + ((size_t)j * hb + by) * wb;
                float *pa = ea + (size_t)j * wcp, *pp = ep + (size_t)j * wcp;
                for (int x = 0; x < wcp; ++x) {
                    const int inside = x < wb * bw;
                    pa[x] = inside ? ra[x / bw] : 0.0f;
                    pp[x] = b[j] + (inside ? rp[x / bw] : 0.0f);
                }
            }
            expanded = by;
        }
        for (int x0 = 0; x0 < wcp; x0 += P * V) {
            memset(gacc, 0, sizeof(float) * (size_t)K * P * V);
            vf sv[P], gs[P];
#pragma GCC unroll 4
            for (int q = 0; q < P; ++q) {
                sv[q] = splat(1.0f);
                gs[q] = splat(0.0f);
            }
            if (norm) patch_scale(img, C, Hp, Wp, k, y, x0, floor2d, sv, mean);
            for (int g = 0; g < m; g += J) {
                vf z[P][J], dz[P][J];
                if (norm) {
#pragma GCC unroll 16
                    for (int jj = 0; jj < J; ++jj) {
#pragma GCC unroll 4
                        for (int q = 0; q < P; ++q) z[q][jj] = splat(0.0f);
                    }
                    angles(img, C, Hp, Wp, k, K, W, g, y, x0, z);
#pragma GCC unroll 16
                    for (int jj = 0; jj < J; ++jj) {
#pragma GCC unroll 4
                        for (int q = 0; q < P; ++q)
                            z[q][jj] = z[q][jj] * sv[q] + loadu(ep + (size_t)(g + jj) * wcp + x0 + q * V);
                    }
                } else {
#pragma GCC unroll 16
                    for (int jj = 0; jj < J; ++jj) {
#pragma GCC unroll 4
                        for (int q = 0; q < P; ++q) z[q][jj] = loadu(ep + (size_t)(g + jj) * wcp + x0 + q * V);
                    }
                    angles(img, C, Hp, Wp, k, K, W, g, y, x0, z);
                }
#pragma GCC unroll 4
                for (int q = 0; q < P; ++q) {
#pragma GCC unroll 16
                    for (int jj = 0; jj < J; jj += S) cos_s(z[q] + jj, cc, dz[q] + jj);
#pragma GCC unroll 16
                    for (int jj = 0; jj < J; ++jj) dz[q][jj] *= loadu(ea + (size_t)(g + jj) * wcp + x0 + q * V);
                    if (norm) { /* s dL/ds = sum_j dz_j s a_j, with s a_j = z_j - b_j - phs */
#pragma GCC unroll 16
                        for (int jj = 0; jj < J; ++jj)
                            gs[q] += dz[q][jj] * (z[q][jj] - loadu(ep + (size_t)(g + jj) * wcp + x0 + q * V));
                    }
                }
                for (int kk = 0; kk < K; ++kk) {
                    vf a[P];
#pragma GCC unroll 4
                    for (int q = 0; q < P; ++q) a[q] = loadu(gacc + ((size_t)kk * P + q) * V);
                    const float *w = W + (size_t)g * K + kk;
#pragma GCC unroll 16
                    for (int jj = 0; jj < J; ++jj) {
                        const float wj = w[(size_t)jj * K];
#pragma GCC unroll 4
                        for (int q = 0; q < P; ++q) a[q] += wj * dz[q][jj];
                    }
#pragma GCC unroll 4
                    for (int q = 0; q < P; ++q) storeu(gacc + ((size_t)kk * P + q) * V, a[q]);
                }
            }
            if (norm) { /* the path through s: gacc_kk -= (s dL/ds) s (p_kk - m_c), before the factor s below */
                vf t[P];
#pragma GCC unroll 4
                for (int q = 0; q < P; ++q) t[q] = gs[q] * sv[q];
                int kk = 0;
                for (int c = 0; c < C; ++c) {
                    vf mc[P];
#pragma GCC unroll 4
                    for (int q = 0; q < P; ++q) mc[q] = loadu(mean + ((size_t)c * P + q) * V);
                    for (int dy = 0; dy < k; ++dy) {
                        const float *row = img + ((size_t)c * Hp + (size_t)(y + dy)) * Wp + x0;
                        for (int dx = 0; dx < k; ++dx, ++kk) {
#pragma GCC unroll 4
                            for (int q = 0; q < P; ++q) {
                                float *a = gacc + ((size_t)kk * P + q) * V;
                                storeu(a, loadu(a) - t[q] * (loadu(row + dx + q * V) - mc[q]));
                            }
                        }
                    }
                }
            }
            int kk = 0;
            for (int c = 0; c < C; ++c) {
                for (int dy = 0; dy < k; ++dy) {
                    float *row = gimg + ((size_t)c * Hg + (size_t)(y - y0 + dy)) * Wg + x0;
                    for (int dx = 0; dx < k; ++dx, ++kk) {
#pragma GCC unroll 4
                        for (int q = 0; q < P; ++q)
                            storeu(row + dx + q * V,
                                   loadu(row + dx + q * V) + sv[q] * loadu(gacc + ((size_t)kk * P + q) * V));
                    }
                }
            }
        }
    }
}

/* ------------------------------------------------------------------------------------------------------------
 * The offset scan of the shift-tolerant aligned terms (patchmmd/core/aligned.py, tolerant_aligned), no gradient.
 *
 * For one image pair and one integer offset (dy, dx) it computes the per-pixel map
 *
 *     w_l2 * mean_c e_c^2 + w_local * (1 - exp(-D / (2 s^2))),   D = sum of sum_c e_c^2 over the kloc x kloc
 *                                                               neighbourhood (zero padding), inv2s2 = 1 / (2 s^2)
 *
 * at every level f (e box-downsampled by f, trailing rows/columns dropped), where e = x - y read at the offset,
 * minus (if the gradients are given) the sub-pixel correction d . g of displacement_correction: per pixel, the
 * Lucas-Kanade fit over an lk_box x lk_box box (zero padding, the box mean) of the mean gradient g and the mean
 * structure tensor plus a ridge, d clipped to [-max_shift, max_shift], g the mean of the two images' gradients.
 *
 * Running box sums use double accumulators (a float running sum drifts over long rows).
 * --------------------------------------------------------------------------------------------------------- */

/* 1 - exp(-t) for t >= 0, to float32 precision relative to the result, in a form the compiler vectorises
 * (expm1f is a scalar library call: most of the scan's time). t < 1/2: its Taylor series to t^9 (remainder below
 * 3e-10 t); else 1 - 2^-k exp(-r), t = k ln 2 + r, |r| <= ln 2 / 2, exp(-r) to r^7 (remainder below 6e-9). */
static inline float one_minus_exp_neg(float t) {
    float small = 1.0f / 362880.0f;
    small = 1.0f / 40320.0f - t * small;
    small = 1.0f / 5040.0f - t * small;
    small = 1.0f / 720.0f - t * small;
    small = 1.0f / 120.0f - t * small;
    small = 1.0f / 24.0f - t * small;
    small = 1.0f / 6.0f - t * small;
    small = 0.5f - t * small;
    small = 1.0f - t * small;
    small = t * small;
    const float tc = t < 87.0f ? t : 87.0f;
    const float magic = 12582912.0f; /* 1.5 * 2^23: adding and subtracting it rounds to an integer */
    const float kf = (tc * 1.44269504088896341f + magic) - magic;
    const float r = (tc - kf * 0.693145751953125f) - kf * 1.428606765330187e-06f; /* ln 2 in two parts */
    float e = -1.0f / 5040.0f;
    e = 1.0f / 720.0f + r * e;
    e = -1.0f / 120.0f + r * e;
    e = 1.0f / 24.0f + r * e;
    e = -1.0f / 6.0f + r * e;
    e = 0.5f + r * e;
    e = -1.0f + r * e;
    e = 1.0f + r * e; /* exp(-r) */
    union { float f; int i; } scale;
    scale.i = (127 - (int)kf) << 23; /* 2^-k, k in [0, 126] */
    const float large = 1.0f - e * scale.f;
    return t < 0.5f ? small : large;
}

/* Widest box whose row sums box_row forms directly (b - 1 shifted additions); from the next width on it builds the
 * sums by doubling (log2 b additions), so a row costs O(log b) per pixel, not O(b). */
#define BOX_ROW_DIRECT 8

/* out[j] = sum_{t < b} row[j + t], j < W: the b-wide sums along a row that was zero-padded by b / 2 each side.
 * Widths up to BOX_ROW_DIRECT, boxes wider than the row plus one (b - 1 > W) and calls without scratch are b - 1
 * shifted additions. Other widths, with scratch (W + b - 1 floats, so 2 W always suffice), by doubling: s holds
 * the sums of w consecutive values (w = 1, 2, 4, ...), s[j] += s[j + w] doubles w, and every binary digit of b
 * adds the current sums at the position reached so far. The order of the additions depends on b only. */
static inline void box_row(const float *restrict row, float *restrict out, int W, int b, float *restrict scratch) {
    if (b <= BOX_ROW_DIRECT || b - 1 > W || !scratch) {
        for (int j = 0; j < W; ++j) out[j] = row[j];
        for (int t = 1; t < b; ++t)
            for (int j = 0; j < W; ++j) out[j] += row[j + t];
        return;
    }
    const int n = W + b - 1;
    float *restrict sv = scratch;
    for (int j = 0; j < n; ++j) sv[j] = row[j];
    int pos = 0, first = 1;
    for (int w = 1;; w <<= 1) {
        if (b & w) {
            if (first)
                for (int j = 0; j < W; ++j) out[j] = sv[j + pos];
            else
                for (int j = 0; j < W; ++j) out[j] += sv[j + pos];
            first = 0;
            pos += w;
        }
        if (2 * w > b) break;
        const int len = n - 2 * w + 1; /* s[j] (the sum of row[j .. j + 2w - 1]) stays inside the row */
#pragma GCC ivdep
        for (int j = 0; j < len; ++j) sv[j] += sv[j + w]; /* reads ahead of the writes: safe in place */
    }
}

/* Sum over a b x b box centred on each pixel (b odd, zero padding), H x W, in place in `a`. Along the rows:
 * box_row of a zero-padded row (vectorised; acc is its scratch); along the columns: running sums in double
 * (a float running sum drifts over long columns). tmp: H * W floats, acc: W doubles, row: W + b floats. */
static void box_sum(float *restrict a, float *restrict tmp, double *restrict acc, float *restrict row, int H, int W,
                    int b) {
    const int h = b / 2;
    for (int j = 0; j < h; ++j) row[j] = row[W + h + j] = 0.0f;
    for (int i = 0; i < H; ++i) {
        memcpy(row + h, a + (size_t)i * W, (size_t)W * sizeof(float));
        box_row(row, tmp + (size_t)i * W, W, b, (float *)acc); /* 2 W floats of scratch */
    }
    for (int j = 0; j < W; ++j) acc[j] = 0.0;
    for (int t = 0; t < h && t < H; ++t)
        for (int j = 0; j < W; ++j) acc[j] += tmp[(size_t)t * W + j];
    for (int i = 0; i < H; ++i) {
        if (i + h < H) {
            const float *add = tmp + (size_t)(i + h) * W;
            for (int j = 0; j < W; ++j) acc[j] += add[j];
        }
        float *out = a + (size_t)i * W;
        for (int j = 0; j < W; ++j) out[j] = (float)acc[j];
        if (i - h >= 0) {
            const float *sub = tmp + (size_t)(i - h) * W;
            for (int j = 0; j < W; ++j) acc[j] -= sub[j];
        }
    }
}

/* Copies the edge values of an H x W plane stored at (r, r) of a (H + 2r) x (W + 2r) one into its border. */
static void replicate_border(float *restrict p, int H, int W, int r) {
    const int Wp = W + 2 * r;
    for (int i = r; i < r + H; ++i) {
        float *q = p + (size_t)i * Wp;
        for (int j = 0; j < r; ++j) {
            q[j] = q[r];
            q[r + W + j] = q[r + W - 1];
        }
    }
    for (int i = 0; i < r; ++i) {
        memcpy(p + (size_t)i * Wp, p + (size_t)r * Wp, sizeof(float) * (size_t)Wp);
        memcpy(p + (size_t)(r + H + i) * Wp, p + (size_t)(r + H - 1) * Wp, sizeof(float) * (size_t)Wp);
    }
}

/* The sub-pixel fit's inputs of one image t (C x H x W), each replicate-padded by r (Hp = H + 2r, Wp = W + 2r):
 * gx, gy (C x Hp x Wp): central differences along the width and the height, (t[j + 1] - t[j - 1]) / 2 with the
 * neighbours clamped to the image (replicate padding); ten (3 x Hp x Wp): the b x b box means (b odd, zero
 * padding) of sum_c gx^2, sum_c gy^2 and sum_c gx gy (the structure tensor). One pass down the rows: row j's
 * differences, then its three channel-summed products, box-summed along the row (box_row), go to a ring of
 * min(b, H) rows; running column sums in double (as box_sum's, in the same order) give row j - b / 2 of the
 * tensor. No full-size temporary. work: fit_inputs_work floats (64-byte aligned: the first 3 W values are
 * doubles). */
void fit_inputs(const float *restrict t, int C, int H, int W, int r, int b, float *restrict gx, float *restrict gy,
                float *restrict ten, float *restrict work) {
    const int Hp = H + 2 * r, Wp = W + 2 * r, h = b / 2, B = (b + 1) & ~1, R = b < H ? b : H;
    const size_t HW = (size_t)H * W, HWp = (size_t)Hp * Wp;
    double *restrict acc = (double *)work;      /* 3 x W doubles: the column sums of the three products */
    float *restrict row = work + 6 * W;         /* W + B: a zero-padded row of one product */
    float *restrict scratch = row + W + B;      /* W + B: box_row's */
    float *restrict ring = scratch + W + B;     /* 3 x R x W: the products' row sums */
    const float inv = 1.0f / ((float)b * (float)b);
    for (int k = 0; k < 3 * W; ++k) acc[k] = 0.0;
    for (int k = 0; k < h; ++k) row[k] = row[W + h + k] = 0.0f;
    for (int j = 0; j < H + h; ++j) {
        if (j < H) {
            for (int c = 0; c < C; ++c) {
                const float *mid = t + c * HW + (size_t)j * W;
                const float *up = t + c * HW + (size_t)(j > 0 ? j - 1 : 0) * W;
                const float *dn = t + c * HW + (size_t)(j < H - 1 ? j + 1 : H - 1) * W;
                float *ox = gx + c * HWp + (size_t)(j + r) * Wp + r, *oy = gy + c * HWp + (size_t)(j + r) * Wp + r;
                for (int k = 0; k < W; ++k) {
                    const int kl = k > 0 ? k - 1 : 0, kr = k < W - 1 ? k + 1 : W - 1;
                    ox[k] = 0.5f * (mid[kr] - mid[kl]);
                    oy[k] = 0.5f * (dn[k] - up[k]);
                }
            }
            for (int q = 0; q < 3; ++q) {
                float *restrict m = row + h;
                for (int k = 0; k < W; ++k) m[k] = 0.0f;
                for (int c = 0; c < C; ++c) {
                    const float *ox = gx + c * HWp + (size_t)(j + r) * Wp + r;
                    const float *oy = gy + c * HWp + (size_t)(j + r) * Wp + r;
                    const float *u = q == 1 ? oy : ox, *v = q == 0 ? ox : oy; /* xx, yy, xy */
                    for (int k = 0; k < W; ++k) m[k] += u[k] * v[k];
                }
                float *restrict slot = ring + ((size_t)q * R + j % R) * W;
                box_row(row, slot, W, b, scratch);
                double *restrict a = acc + (size_t)q * W;
                for (int k = 0; k < W; ++k) a[k] += slot[k];
            }
        }
        const int i = j - h; /* the row whose box is complete */
        if (i < 0) continue;
        for (int q = 0; q < 3; ++q) {
            double *restrict a = acc + (size_t)q * W;
            float *restrict o = ten + q * HWp + (size_t)(i + r) * Wp + r;
            for (int k = 0; k < W; ++k) o[k] = (float)a[k] * inv;
            if (i - h >= 0) { /* row i - h leaves the box (its slot is overwritten by the next row) */
                const float *restrict old = ring + ((size_t)q * R + (i - h) % R) * W;
                for (int k = 0; k < W; ++k) a[k] -= old[k];
            }
        }
    }
    for (int q = 0; q < 3; ++q) replicate_border(ten + q * HWp, H, W, r);
    if (r)
        for (int c = 0; c < C; ++c) {
            replicate_border(gx + c * HWp, H, W, r);
            replicate_border(gy + c * HWp, H, W, r);
        }
}

/* The floats of work fit_inputs needs, a multiple of 16. */
int64_t fit_inputs_work(int H, int W, int b) {
    const int64_t R = b < H ? b : H;
    const int64_t n = 6 * (int64_t)W + 2 * ((int64_t)W + ((b + 1) & ~1)) + 3 * R * W;
    return (n + 15) & ~(int64_t)15;
}

/* The running column sums of aligned_difference: s1, s2 (W doubles each) += or -= ring row `slot` of ring1, ring2. */
static inline void add_row(double *restrict s1, double *restrict s2, const float *restrict ring1,
                           const float *restrict ring2, int slot, int W) {
    const float *t1 = ring1 + (size_t)slot * W, *t2 = ring2 + (size_t)slot * W;
    for (int k = 0; k < W; ++k) {
        s1[k] += t1[k];
        s2[k] += t2[k];
    }
}

static inline void drop_row(double *restrict s1, double *restrict s2, const float *restrict ring1,
                            const float *restrict ring2, int slot, int W) {
    const float *t1 = ring1 + (size_t)slot * W, *t2 = ring2 + (size_t)slot * W;
    for (int k = 0; k < W; ++k) {
        s1[k] -= t1[k];
        s2[k] -= t2[k];
    }
}

/* The difference e = x - y read at (dy, dx), minus the sub-pixel correction if gxx != NULL (arguments as for
 * aligned_scan below), for the rows i0 <= i < i1: into e, row i at e + (i - i0) W, channel c es floats on. One
 * pass down the rows: row j's difference and its two projections (1/2) sum_c g_c e_c on the mean gradient g
 * (along the width and the height), box-summed along the row, go to a ring of rows (ring1, ring2:
 * min(lk_box, H) x W each); once the ring holds the lk_box rows around row i = j - lk_box / 2, their column sums
 * give row i's box sums, its 2x2 solve and its correction. The column sums run in double down the range (colsum:
 * the first row's lk_box rows added up, then each row adds the row entering the box and drops the one leaving
 * it), so a row costs O(1) whatever lk_box. Rows j within lk_box / 2 of the range (outside it) are
 * read for their projections only, their difference going to halo (C x W). Each step is one loop along the row
 * over all channels (the difference with both projections; the solve with the correction), values kept in
 * registers between the channels. The body is inlined for the usual channel counts (C a constant there: the
 * channel loops unroll and the loops along the row vectorise); the sums are formed in the same order for every
 * C, and a row's values depend only on the range's first row (the callers' bands depend on the shapes only).
 * rowbuf1, rowbuf2: W + lk_box - 1 floats each; box_scratch: 2 W floats (box_row's); colsum: 2 W doubles. */
static inline __attribute__((always_inline)) void
aligned_difference_body(const float *restrict x, const float *restrict yp, const int C, int H, int W, int r, int dy,
                        int dx, const float *restrict gxx, const float *restrict gxy, const float *restrict gyx,
                        const float *restrict gyy, const float *restrict tx, const float *restrict typ, int lk_box,
                        float ridge, float max_shift, int i0, int i1, float *restrict e, size_t es,
                        float *restrict halo, float *restrict ring1, float *restrict ring2, float *restrict rowbuf1,
                        float *restrict rowbuf2, float *restrict box_scratch, double *restrict colsum) {
    const size_t HW = (size_t)H * W;
    const int Hp = H + 2 * r, Wp = W + 2 * r;
    const size_t HWp = (size_t)Hp * Wp;
    const int h = gxx ? lk_box / 2 : 0, R = lk_box < H ? lk_box : H;
    float *restrict mid1 = rowbuf1 + h, *restrict mid2 = rowbuf2 + h;
    for (int k = 0; k < h; ++k) rowbuf1[k] = mid1[W + k] = rowbuf2[k] = mid2[W + k] = 0.0f;
    double *restrict s1 = colsum, *restrict s2 = colsum + W; /* the column sums of the two projections' rows */
    for (int j = i0 - h < 0 ? 0 : i0 - h; j < i1 + h; ++j) {
        const int i = j - h; /* the row whose box is complete once row j is in */
        /* row i - h - 1 leaves the box, before row j takes its ring slot */
        if (gxx && i > i0 && i - h - 1 >= 0) drop_row(s1, s2, ring1, ring2, (i - h - 1) % R, W);
        if (j < H) {
            const int inside = j >= i0 && j < i1;
            float *restrict er = inside ? e + (size_t)(j - i0) * W : halo;
            const size_t cs = inside ? es : (size_t)W;
            const size_t o = (size_t)j * W, op = (size_t)(j + r + dy) * Wp + r + dx;
            if (!gxx) {
                for (int c = 0; c < C; ++c)
#pragma GCC ivdep
                    for (int k = 0; k < W; ++k) er[c * cs + k] = x[c * HW + o + k] - yp[c * HWp + op + k];
                continue;
            }
            /* the difference and its projections on the width (1) and height (2) gradient, then box-summed */
#pragma GCC ivdep
            for (int k = 0; k < W; ++k) {
                float m1 = 0.0f, m2 = 0.0f;
                for (int c = 0; c < C; ++c) {
                    const size_t u = c * HW + o + k, up = c * HWp + op + k;
                    const float d = x[u] - yp[up];
                    er[c * cs + k] = d;
                    m1 += (gxx[u] + gyx[up]) * d;
                    m2 += (gxy[u] + gyy[up]) * d;
                }
                mid1[k] = m1;
                mid2[k] = m2;
            }
            box_row(rowbuf1, ring1 + (size_t)(j % R) * W, W, lk_box, box_scratch);
            box_row(rowbuf2, ring2 + (size_t)(j % R) * W, W, lk_box, box_scratch);
            if (i > i0) add_row(s1, s2, ring1, ring2, j % R, W);
        }
        if (!gxx || i < i0) continue;
        /* row i: box means of the projections (zero padding), the displacement, the corrected difference */
        if (i == i0) { /* the range's first row: its lo .. hi rows, all in the ring now */
            const int lo = i - h < 0 ? 0 : i - h, hi = i + h < H - 1 ? i + h : H - 1;
            for (int k = 0; k < W; ++k) s1[k] = s2[k] = 0.0;
            for (int v = lo; v <= hi; ++v) add_row(s1, s2, ring1, ring2, v % R, W);
        }
        const float nb = 0.5f / ((float)lk_box * (float)lk_box);
        const size_t o = (size_t)i * W, op = (size_t)(i + r + dy) * Wp + r + dx;
        float *restrict er = e + (size_t)(i - i0) * W;
#pragma GCC ivdep
        for (int k = 0; k < W; ++k) {
            const float a11 = 0.5f * (tx[o + k] + typ[op + k]) + ridge;
            const float a22 = 0.5f * (tx[HW + o + k] + typ[HWp + op + k]) + ridge;
            const float a12 = 0.5f * (tx[2 * HW + o + k] + typ[2 * HWp + op + k]);
            const float c1 = (float)s1[k] * nb, c2 = (float)s2[k] * nb;
            const float inv_det = 1.0f / (a11 * a22 - a12 * a12); /* one division (the slowest instruction here) */
            const float hx = (a22 * c1 - a12 * c2) * inv_det, hy = (a11 * c2 - a12 * c1) * inv_det;
            const float d1 = 0.5f * (hx < -max_shift ? -max_shift : hx > max_shift ? max_shift : hx);
            const float d2 = 0.5f * (hy < -max_shift ? -max_shift : hy > max_shift ? max_shift : hy);
            for (int c = 0; c < C; ++c) {
                const size_t u = c * HW + o + k, up = c * HWp + op + k;
                er[c * es + k] -= (gxx[u] + gyx[up]) * d1 + (gxy[u] + gyy[up]) * d2;
            }
        }
    }
}

#define ALIGNED_DIFFERENCE_ARGS                                                                                     \
    const float *restrict x, const float *restrict yp, int C, int H, int W, int r, int dy, int dx,                 \
        const float *restrict gxx, const float *restrict gxy, const float *restrict gyx, const float *restrict gyy, \
        const float *restrict tx, const float *restrict typ, int lk_box, float ridge, float max_shift, int i0,     \
        int i1, float *restrict e, size_t es, float *restrict halo, float *restrict ring1, float *restrict ring2,  \
        float *restrict rowbuf1, float *restrict rowbuf2, float *restrict box_scratch, double *restrict colsum
#define ALIGNED_DIFFERENCE_BODY(channels)                                                                           \
    aligned_difference_body(x, yp, channels, H, W, r, dy, dx, gxx, gxy, gyx, gyy, tx, typ, lk_box, ridge,          \
                            max_shift, i0, i1, e, es, halo, ring1, ring2, rowbuf1, rowbuf2, box_scratch, colsum)

static void aligned_difference_c3(ALIGNED_DIFFERENCE_ARGS) { ALIGNED_DIFFERENCE_BODY(3); }
static void aligned_difference_c1(ALIGNED_DIFFERENCE_ARGS) { ALIGNED_DIFFERENCE_BODY(1); }
static void aligned_difference_any(ALIGNED_DIFFERENCE_ARGS) { ALIGNED_DIFFERENCE_BODY(C); }

static void aligned_difference(ALIGNED_DIFFERENCE_ARGS) {
    (C == 3 ? aligned_difference_c3 : C == 1 ? aligned_difference_c1 : aligned_difference_any)(
        x, yp, C, H, W, r, dy, dx, gxx, gxy, gyx, gyy, tx, typ, lk_box, ridge, max_shift, i0, i1, e, es, halo, ring1,
        ring2, rowbuf1, rowbuf2, box_scratch, colsum);
}

/* Level f's rows l0 <= il < l1 from a band of e (rows i0 .. of the image, row i at e + (i - i0) W, channel c at
 * e + c es): the f x f block means m_c (f rows summed, then f columns, times 1 / f^2; e itself at f = 1), trailing
 * columns dropped. squares: sq[il Wl + jl] += m_c^2 over the channels in order (the scan's sum); else m_c goes to
 * out + c * out_cs + il * Wl + jl (the gradient's store). rows: W floats of scratch. */
static inline __attribute__((always_inline)) void
level_rows(const float *restrict e, size_t es, int C, int W, int f, int i0, int l0, int l1, int squares,
           float *restrict out, size_t out_cs, float *restrict rows) {
    const int Wl = W / f, Wf = Wl * f;
    const float inv_ff = 1.0f / ((float)f * (float)f);
    for (int c = 0; c < C; ++c)
        for (int il = l0; il < l1; ++il) {
            const float *er = e + c * es + (size_t)(il * f - i0) * W;
            float *o = out + (squares ? 0 : c * out_cs) + (size_t)il * Wl;
            if (f == 1) {
                if (squares)
                    for (int j = 0; j < W; ++j) o[j] += er[j] * er[j];
                else
                    memcpy(o, er, sizeof(float) * (size_t)W);
                continue;
            }
            for (int j = 0; j < Wf; ++j) rows[j] = er[j];
            for (int a = 1; a < f; ++a)
                for (int j = 0; j < Wf; ++j) rows[j] += er[(size_t)a * W + j];
            if (f == 2) { /* the usual factors, with a constant stride the compiler vectorises (same sums) */
                for (int jl = 0; jl < Wl; ++jl) {
                    const float m = (rows[2 * jl] + rows[2 * jl + 1]) * inv_ff;
                    if (squares) o[jl] += m * m; else o[jl] = m;
                }
            } else if (f == 4) {
                for (int jl = 0; jl < Wl; ++jl) {
                    const float m =
                        (((rows[4 * jl] + rows[4 * jl + 1]) + rows[4 * jl + 2]) + rows[4 * jl + 3]) * inv_ff;
                    if (squares) o[jl] += m * m; else o[jl] = m;
                }
            } else {
                for (int jl = 0; jl < Wl; ++jl) {
                    float m = 0.0f;
                    for (int q = 0; q < f; ++q) m += rows[jl * f + q];
                    m *= inv_ff;
                    if (squares) o[jl] += m * m; else o[jl] = m;
                }
            }
        }
}

/* The floats of all the levels' maps of one offset, sum_l (H / f_l) (W / f_l). */
static size_t level_total(int H, int W, int nlev, const int *factors) {
    size_t total = 0;
    for (int l = 0; l < nlev; ++l) total += (size_t)(H / factors[l]) * (W / factors[l]);
    return total;
}

/* The widest box along a row (lk_box or kloc), rounded up to even: the zero padding a row buffer carries. */
static int row_pad(int lk_box, int kloc) { return ((lk_box > kloc ? lk_box : kloc) + 1) & ~1; }

/* Rows of a band of aligned_scan: a multiple of every level factor (so no level row straddles two bands), about
 * 8192 / W (the band's inputs, some 26 rows of W floats per band row, then stay in the L2 cache while every offset
 * reads them) but at least 2 lk_box (each band also reads lk_box - 1 rows around it for the fit, work that would
 * otherwise grow with the box, i.e. with the image); H (one band) when the factors' least common multiple exceeds
 * H. */
static int scan_band_rows(int H, int W, int nlev, const int *factors, int lk_box) {
    long step = 1;
    for (int l = 0; l < nlev && step <= H; ++l) {
        long a = step, b = factors[l];
        while (b) {
            const long t = a % b;
            a = b;
            b = t;
        }
        step = step / a * factors[l];
    }
    if (step > H) return H;
    long rows = 8192 / (W > 0 ? W : 1);
    if (rows < 2L * lk_box) rows = 2L * lk_box;
    rows = rows / step * step;
    if (rows < step) rows = step;
    return rows < H ? (int)rows : H;
}

/* The floats of work aligned_scan needs, a multiple of 16. */
int64_t aligned_scan_work(int C, int H, int W, int lk_box, int kloc, int nlev, const int *factors) {
    const int64_t B = row_pad(lk_box, kloc), R = lk_box < H ? lk_box : H;
    const int64_t BR = scan_band_rows(H, W, nlev, factors, lk_box);
    const int64_t n = 6 * (int64_t)W + 2 * (W + B) + 2 * R * W + (int64_t)C * W + (int64_t)C * BR * W +
                      2 * (int64_t)H * W;
    return (n + 15) & ~(int64_t)15; /* every thread's buffer 64-byte aligned (the first values are doubles) */
}

/* x: C x H x W; yp: C x (H + 2r) x (W + 2r) (y replicate-padded by r); read at the noff offsets (dys[o], dxs[o]),
 * |dy|, |dx| <= r. Sub-pixel fit if gxx != NULL: gxx, gxy (C x H x W: x's central differences along the width and
 * the height), gyx, gyy (C x Hp x Wp: y's, padded like yp), tx (3 x H x W: box means of gx^2, gy^2, gx gy of x,
 * summed over channels), typ (3 x Hp x Wp: y's, padded). Levels: nlev factors; out + o * off_stride receives
 * offset o's maps level after level, (H / f) x (W / f) each. The image is processed in bands of rows, every offset
 * within a band before the next band (the band's inputs are read from the cache by all offsets); each level
 * accumulates sum_c m_c^2 into out, and the box sums and the map follow once all bands are done.
 * work: aligned_scan_work floats, 8-byte aligned. */
void aligned_scan(const float *restrict x, const float *restrict yp, int C, int H, int W, int r, int noff,
                  const int *dys, const int *dxs, const float *restrict gxx, const float *restrict gxy,
                  const float *restrict gyx, const float *restrict gyy, const float *restrict tx,
                  const float *restrict typ, int lk_box, float ridge, float max_shift, int nlev, const int *factors,
                  int kloc, float w_l2, float w_local, float inv2s2, float *restrict out, int64_t off_stride,
                  float *restrict work) {
    const size_t HW = (size_t)H * W;
    const int B = row_pad(lk_box, kloc), R = lk_box < H ? lk_box : H;
    const int BR = scan_band_rows(H, W, nlev, factors, lk_box);
    double *acc = (double *)work;              /* W doubles (also box_row's scratch in the fit) */
    double *colsum = acc + W;                  /* 2 W doubles: the fit's column sums */
    float *row = work + 6 * W;                 /* W + B */
    float *row2 = row + W + B;                 /* W + B */
    float *ring1 = row2 + W + B;               /* R x W */
    float *ring2 = ring1 + (size_t)R * W;      /* R x W */
    float *halo = ring2 + (size_t)R * W;       /* C x W */
    float *restrict e = halo + (size_t)C * W;  /* C x BR x W */
    float *restrict d = e + (size_t)C * BR * W; /* H x W */
    float *restrict tmp = d + HW;              /* H x W */
    const size_t total = level_total(H, W, nlev, factors);
    for (int o = 0; o < noff; ++o)
        for (size_t u = 0; u < total; ++u) out[o * off_stride + u] = 0.0f;
    for (int i0 = 0; i0 < H; i0 += BR) {
        const int i1 = i0 + BR < H ? i0 + BR : H;
        const size_t es = (size_t)(i1 - i0) * W;
        for (int o = 0; o < noff; ++o) {
            aligned_difference(x, yp, C, H, W, r, dys[o], dxs[o], gxx, gxy, gyx, gyy, tx, typ, lk_box, ridge,
                               max_shift, i0, i1, e, es, halo, ring1, ring2, row, row2, (float *)acc, colsum);
            float *sq = out + o * off_stride; /* the level's map; sum_c m_c^2 for now */
            for (int l = 0; l < nlev; ++l) {
                const int f = factors[l], Hl = H / f;
                const int l1 = i1 / f < Hl ? i1 / f : Hl; /* level rows inside this band */
                level_rows(e, es, C, W, f, i0, i0 / f, l1, 1, sq, 0, tmp);
                sq += (size_t)Hl * (W / f);
            }
        }
    }
    const float w_mean = w_l2 / (float)C; /* a zero weight adds 0 (everything here is finite) */
    for (int o = 0; o < noff; ++o) {
        float *m = out + o * off_stride;
        for (int l = 0; l < nlev; ++l) {
            const int f = factors[l], Hl = H / f, Wl = W / f;
            const size_t HWl = (size_t)Hl * Wl;
            for (size_t u = 0; u < HWl; ++u) d[u] = m[u];
            if (w_local > 0.0f) box_sum(d, tmp, acc, row, Hl, Wl, kloc);
            for (size_t u = 0; u < HWl; ++u) m[u] = w_mean * m[u] + w_local * one_minus_exp_neg(d[u] * inv2s2);
            m += HWl;
        }
    }
}

/* Offsets whose level means the gradient keeps at once (it takes the image in bands for that many offsets, as
 * the scan does): as many as fit in H W floats a channel, at most the nine of a radius-1 scan (usually fewer
 * offsets win; a larger store would only hold more memory); and the floats of work aligned_grad needs, a multiple
 * of 16. */
static int grad_offsets_at_once(int H, int W, int nlev, const int *factors) {
    const size_t g = (size_t)H * W / level_total(H, W, nlev, factors);
    return g < 1 ? 1 : g > 9 ? 9 : (int)g;
}

int64_t aligned_grad_work(int C, int H, int W, int lk_box, int kloc, int nlev, const int *factors) {
    const int64_t B = row_pad(lk_box, kloc);
    const int64_t BR = scan_band_rows(H, W, nlev, factors, lk_box);
    const int64_t total = (int64_t)level_total(H, W, nlev, factors);
    const int64_t n = 6 * (int64_t)W + 2 * (W + B) + (int64_t)C * (BR + 1) * W +
                      (int64_t)C * total * grad_offsets_at_once(H, W, nlev, factors) + 3 * (int64_t)H * W;
    return (n + 15) & ~(int64_t)15; /* every thread's buffer 64-byte aligned (the first values are doubles) */
}

/* The gradient of aligned_scan's maps with respect to x, for one image and the offsets (dys[o], dxs[o]),
 * o < noff, given G = dL/d(map) at every level (gmap: noff x sum_l (H / f) (W / f), the levels one after the
 * other as aligned_scan writes them). The sub-pixel correction is a constant (a stop-gradient, as in the PyTorch
 * path), so d e / d x = 1. Per level, with m_c the f x f block means of e (m = e at f = 1), sq = sum_c m_c^2 and
 * D = the kloc x kloc box sum of sq (zero padding; the box sum is its own adjoint):
 *     dL/dm_c = 2 m_c (G w_l2 / C + w_local inv2s2 box(G exp(-D inv2s2))),
 * spread over each block with weight 1 / f^2 (rows and columns that no level pixel covers get nothing).
 * A few offsets at a time (grad_offsets_at_once), the image band by band as in aligned_scan: their level means
 * m go to a store, then each offset's gradient is formed from its store. grad: C x H x W, overwritten. Other
 * arguments as for aligned_scan; work: aligned_grad_work floats. */
void aligned_grad(const float *restrict x, const float *restrict yp, int C, int H, int W, int r, int noff,
                  const int *dys, const int *dxs, const float *restrict gxx, const float *restrict gxy,
                  const float *restrict gyx, const float *restrict gyy, const float *restrict tx,
                  const float *restrict typ, int lk_box, float ridge, float max_shift, int nlev, const int *factors,
                  int kloc, float w_l2, float w_local, float inv2s2, const float *restrict gmap,
                  float *restrict grad, float *restrict work) {
    const size_t HW = (size_t)H * W;
    const int B = row_pad(lk_box, kloc);
    const int BR = scan_band_rows(H, W, nlev, factors, lk_box), G = grad_offsets_at_once(H, W, nlev, factors);
    const size_t total = level_total(H, W, nlev, factors);
    double *acc = (double *)work;                 /* W doubles (also box_row's scratch in the fit) */
    double *colsum = acc + W;                     /* 2 W doubles: the fit's column sums */
    float *row = work + 6 * W;                    /* W + B */
    float *row2 = row + W + B;                    /* W + B */
    float *restrict halo = row2 + W + B;          /* C x W */
    float *restrict e = halo + (size_t)C * W;     /* C x BR x W: a band */
    float *restrict store = e + (size_t)C * BR * W; /* G x C x total: the level means of G offsets */
    float *restrict p1 = store + (size_t)G * C * total; /* H x W (a ring of rows while the bands run) */
    float *restrict p2 = p1 + HW;                 /* H x W (the other ring) */
    float *restrict tmp = p2 + HW;                /* H x W */
    for (size_t u = 0; u < C * HW; ++u) grad[u] = 0.0f;
    for (int og = 0; og < noff; og += G) {
        const int n = og + G < noff ? G : noff - og;
        for (int i0 = 0; i0 < H; i0 += BR) {
            const int i1 = i0 + BR < H ? i0 + BR : H;
            const size_t es = (size_t)(i1 - i0) * W;
            for (int q = 0; q < n; ++q) {
                aligned_difference(x, yp, C, H, W, r, dys[og + q], dxs[og + q], gxx, gxy, gyx, gyy, tx, typ, lk_box,
                                   ridge, max_shift, i0, i1, e, es, halo, p1, p2, row, row2, (float *)acc, colsum);
                float *m = store + (size_t)q * C * total;
                for (int l = 0; l < nlev; ++l) {
                    const int f = factors[l], Hl = H / f, Wl = W / f;
                    const int l1 = i1 / f < Hl ? i1 / f : Hl;
                    level_rows(e, es, C, W, f, i0, i0 / f, l1, 0, m, (size_t)Hl * Wl, tmp);
                    m += (size_t)C * Hl * Wl;
                }
            }
        }
        for (int q = 0; q < n; ++q) {
            const float *g = gmap + (size_t)(og + q) * total;
            const float *mlev = store + (size_t)q * C * total;
            for (int l = 0; l < nlev; ++l) {
                const int f = factors[l], Hl = H / f, Wl = W / f;
                const size_t HWl = (size_t)Hl * Wl;
                const float inv_ff = 1.0f / ((float)f * (float)f);
                const float *m = mlev; /* C x Hl x Wl */
                float *sq = p1, *k = p2;
                for (size_t u = 0; u < HWl; ++u) sq[u] = 0.0f;
                for (int c = 0; c < C; ++c) {
                    const float *mc = m + c * HWl;
                    for (size_t u = 0; u < HWl; ++u) sq[u] += mc[u] * mc[u];
                }
                if (w_local > 0.0f) {
                    for (size_t u = 0; u < HWl; ++u) k[u] = sq[u];
                    box_sum(k, tmp, acc, row, Hl, Wl, kloc);
                    for (size_t u = 0; u < HWl; ++u) k[u] = g[u] * (1.0f - one_minus_exp_neg(k[u] * inv2s2));
                    box_sum(k, tmp, acc, row, Hl, Wl, kloc);
                } else {
                    for (size_t u = 0; u < HWl; ++u) k[u] = 0.0f;
                }
                const float a_l2 = 2.0f * w_l2 / (float)C, a_loc = 2.0f * w_local * inv2s2;
                for (size_t u = 0; u < HWl; ++u) k[u] = (a_l2 * g[u] + a_loc * k[u]) * inv_ff;
                /* dL/dx over each block: k m / f^2 (k already holds the 1 / f^2 of the mean) */
                for (int c = 0; c < C; ++c)
                    for (int il = 0; il < Hl; ++il) {
                        const float *mr = m + c * HWl + (size_t)il * Wl, *kr = k + (size_t)il * Wl;
                        float *v = row; /* Wl <= W floats */
                        for (int jl = 0; jl < Wl; ++jl) v[jl] = kr[jl] * mr[jl];
                        for (int a = 0; a < f; ++a) {
                            float *gr = grad + c * HW + (size_t)(il * f + a) * W;
                            if (f == 1) {
                                for (int jl = 0; jl < Wl; ++jl) gr[jl] += v[jl];
                            } else if (f == 2) {
                                for (int jl = 0; jl < Wl; ++jl) {
                                    gr[2 * jl] += v[jl];
                                    gr[2 * jl + 1] += v[jl];
                                }
                            } else {
                                for (int jl = 0; jl < Wl; ++jl)
                                    for (int b = 0; b < f; ++b) gr[jl * f + b] += v[jl];
                            }
                        }
                    }
                g += HWl;
                mlev += (size_t)C * HWl;
            }
        }
    }
}

/* ------------------------------------------------------------------------------------------------------------
 * Drivers: tasks t0 <= t < t1 of one call, on nthreads threads (OpenMP; one thread without it). Each thread takes
 * the next task from a shared counter and uses its own work buffer (work + slot * work_stride floats, slot the
 * thread's number, below nthreads). The split into tasks is the caller's and depends on the shapes only, and every
 * task writes its own outputs, so results do not depend on nthreads. Strides are in floats.
 * --------------------------------------------------------------------------------------------------------- */

/* 1 if the drivers run their tasks on OpenMP threads (compiled with -fopenmp), else 0. */
/* ------------------------------------------------------------------------------------------------------ SSIM
 * The SSIM term of the training preset (docs/method.md §3.3; core/ssim.py holds the same formulas in PyTorch).
 * For one channel of one image: x and y (H x W, the internal [-1, 1] scale, mapped to [0, 1] here), their local
 * moments under the separable Gaussian window g (k taps, valid positions only: Ho = H - k + 1, Wo = W - k + 1)
 * and SSIM_u = A B / (P Q) with A = 2 mx my + C1, B = 2 (E[xy] - mx my) + C2, P = mx² + my² + C1,
 * Q = (E[x²] - mx²) + (E[y²] - my²) + C2. A fixed target's moments (my, E[y²]) may be given instead of filtered.
 * The rows are filtered first, then the columns, each a loop the compiler vectorises. */
#define SSIM_C1 1e-4f
#define SSIM_C2 9e-4f

/* Row stride of the SSIM kernels' row-filtered rows: Wo rounded up to a multiple of V. */
static inline int ssim_stride(int Wo) { return (Wo + V - 1) / V * V; }

/* Both kernels stream down the rows of one channel plane: row r of x and y, row-filtered into the five moment
 * rows (mx, my, E[x²], E[y²], E[xy] before the column filter), goes to slot r % k of a ring of k rows; once the
 * ring holds rows i .. i + k - 1, the column filter gives output row i. Every sum is formed in the order of a
 * whole-plane version (the column filter's taps in increasing order; the backward pass's transposed column filter
 * adds the output rows' contributions to each input row in increasing order), so the values do not depend on the
 * streaming. Work per plane (ssim_work): O(k W), not O(H W). */
struct ssim_buffers {
    float *ring; /* 5 x k x Wop: the row-filtered rows */
    float *xr, *yr; /* Wop + k each: one row of x and y on [0, 1], zero tail */
    float *mom;  /* 5 x Wop: the moments of one output row (columns from Wo on: padding, never stored) */
    float *acc;  /* 3 x k x Wo (backward): the transposed column filter's rows, a ring */
    float *rows; /* 3 Wr + 3 (Wr + k - 1) (backward): the transposed row filter's rows */
};

/* The buffers in work, with the rows' zero tails set (read by the row filter's last vector, never used). */
static struct ssim_buffers ssim_layout(int W, int k, float *work) {
    const int Wo = W - k + 1, Wop = ssim_stride(Wo);
    struct ssim_buffers b;
    b.ring = work;
    b.xr = b.ring + 5 * (size_t)k * Wop;
    b.yr = b.xr + Wop + k;
    b.mom = b.yr + Wop + k;
    b.acc = b.mom + 5 * (size_t)Wop;
    b.rows = b.acc + 3 * (size_t)k * Wo;
    memset(b.xr + W, 0, sizeof(float) * (size_t)(Wop + k - W));
    memset(b.yr + W, 0, sizeof(float) * (size_t)(Wop + k - W));
    return b;
}

/* Work of the SSIM kernels for one plane, in floats (ssim_layout). */
int64_t ssim_work(int W, int k) {
    const int Wo = W - k + 1, Wop = ssim_stride(Wo), Wr = ssim_stride(W);
    return 5 * (int64_t)k * Wop + 2 * (int64_t)(Wop + k) + 5 * (int64_t)Wop + 3 * (int64_t)k * Wo + 3 * (int64_t)Wr
           + 3 * (int64_t)(Wr + k - 1);
}

/* Row r of x and y (H x W, internal scale) row-filtered into ring slot r % k: the five moments at once in
 * registers. */
static void ssim_row_filter(const float *restrict x, const float *restrict y, int r, int W, const float *restrict g,
                            int k, const struct ssim_buffers *b) {
    const int Wop = ssim_stride(W - k + 1);
    const size_t plane = (size_t)k * Wop;
    float *restrict xr = b->xr, *restrict yr = b->yr;
    for (int j = 0; j < W; ++j) {
        xr[j] = (x[(size_t)r * W + j] + 1.0f) * 0.5f;
        yr[j] = (y[(size_t)r * W + j] + 1.0f) * 0.5f;
    }
    float *h0 = b->ring + (size_t)(r % k) * Wop;
    for (int j0 = 0; j0 < Wop; j0 += V) {
        vf s0 = splat(0.0f), s1 = s0, s2 = s0, s3 = s0, s4 = s0;
        for (int t = 0; t < k; ++t) {
            const vf gt = splat(g[t]), a = loadu(xr + j0 + t), c = loadu(yr + j0 + t);
            s0 += gt * a;
            s1 += gt * c;
            s2 += gt * (a * a);
            s3 += gt * (c * c);
            s4 += gt * (a * c);
        }
        storeu(h0 + j0, s0);
        storeu(h0 + plane + j0, s1);
        storeu(h0 + 2 * plane + j0, s2);
        storeu(h0 + 3 * plane + j0, s3);
        storeu(h0 + 4 * plane + j0, s4);
    }
}

/* The moments of output row i into b->mom (5 rows of Wop; the columns from Wo on are the row filter's padding,
 * computed along so that the loops have no remainder, never stored), from the ring (rows i .. i + k - 1); my and
 * E[y²] read from ymy, yey (Ho x Wo) when those are not NULL (their padding columns set to 0). */
static void ssim_moment_row(int i, int W, const float *restrict g, int k, const float *ymy, const float *yey,
                            const struct ssim_buffers *b) {
    const int Wo = W - k + 1, Wop = ssim_stride(Wo);
    const size_t plane = (size_t)k * Wop;
    for (int m = 0; m < 5; ++m) {
        float *restrict o = b->mom + (size_t)m * Wop;
        if (ymy && (m == 1 || m == 3)) {
            memcpy(o, (m == 1 ? ymy : yey) + (size_t)i * Wo, sizeof(float) * (size_t)Wo);
            for (int j = Wo; j < Wop; ++j) o[j] = 0.0f;
            continue;
        }
        for (int j = 0; j < Wop; ++j) o[j] = 0.0f;
        for (int t = 0; t < k; ++t) {
            const float gt = g[t];
            const float *restrict hr = b->ring + m * plane + (size_t)((i + t) % k) * Wop;
            for (int j = 0; j < Wop; ++j) o[j] += gt * hr[j];
        }
    }
}

/* The four factors of SSIM_u at one position (as core/ssim.py's _ssim_parts). */
static inline void ssim_parts(float mx, float my, float exx, float eyy, float exy, float *a, float *b, float *p,
                              float *q) {
    /* P = A + (mx - my)^2, Q = B + E[(x - y)^2] - (mx - my)^2: x = y gives P = A and Q = B exactly, fused or not */
    const float mxy = mx * my, d = mx - my, dd = d * d;
    *a = 2.0f * mxy + SSIM_C1;
    *b = 2.0f * (exy - mxy) + SSIM_C2;
    *p = *a + dd;
    *q = (*b + ((exx + eyy) - 2.0f * exy)) - dd;
}

/* SSIM_u of one channel plane into s (Ho x Wo). work: ssim_work(W, k) floats. */
static void ssim_plane(const float *x, const float *y, const float *ymy, const float *yey, int H, int W,
                       const float *g, int k, float *restrict s, float *work) {
    const int Wo = W - k + 1, Wop = ssim_stride(Wo);
    const struct ssim_buffers b = ssim_layout(W, k, work);
    for (int r = 0; r < H; ++r) {
        ssim_row_filter(x, y, r, W, g, k, &b);
        const int i = r - k + 1;
        if (i < 0) continue;
        ssim_moment_row(i, W, g, k, ymy, yey, &b);
        const float *m = b.mom;
        float *restrict o = b.rows; /* Wop floats */
        for (int j = 0; j < Wop; ++j) {
            float a, bb, p, q;
            ssim_parts(m[j], m[Wop + j], m[2 * Wop + j], m[3 * Wop + j], m[4 * Wop + j], &a, &bb, &p, &q);
            o[j] = (a * bb) / (p * q);
        }
        memcpy(s + (size_t)i * Wo, o, sizeof(float) * (size_t)Wo);
    }
}

/* The three derivative rows of ssim_grad_plane, in place of mx, my, E[x²] in mom (5 rows of n), given gs's row. */
static void ssim_derivatives(float *restrict mom, const float *restrict gs, size_t n) {
    for (size_t j = 0; j < n; ++j) {
        const float mx = mom[j], my = mom[n + j];
        float a, b, p, q;
        ssim_parts(mx, my, mom[2 * n + j], mom[3 * n + j], mom[4 * n + j], &a, &b, &p, &q);
        const float sv = (a * b) / (p * q), gsi = gs[j], inv = gsi / (p * q), u = b * inv, v = a * inv;
        const float sq = (gsi * sv) * (1.0f / q - 1.0f / p);
        mom[j] = 2.0f * (my * (u - v) + mx * sq);
        mom[n + j] = -(gsi * sv) / q;
        mom[2 * n + j] = 2.0f * v;
    }
}

/* Row R of the gradient (its transposed column filter complete in the acc ring): the transposed row filter, Wo ->
 * W, as a correlation with the reversed taps over the row zero-padded by k - 1 on both sides
 * (G[c] = sum_t g[t] T[c - t] = sum_u g[k - 1 - u] Tpad[c + u]), then the combination; its acc slot is cleared
 * for row R + k. */
static void ssim_grad_row(const float *x, const float *y, int R, int W, const float *g, int k, float *restrict gx,
                          const struct ssim_buffers *b) {
    const int Wo = W - k + 1, Wr = ssim_stride(W), Wpad = Wr + k - 1;
    float *restrict g0 = b->rows, *restrict g1 = g0 + Wr, *restrict g2 = g1 + Wr, *pad = g2 + Wr;
    for (int m = 0; m < 3; ++m) {
        float *slot = b->acc + ((size_t)m * k + R % k) * Wo;
        memcpy(pad + (size_t)m * Wpad + k - 1, slot, sizeof(float) * (size_t)Wo);
        memset(slot, 0, sizeof(float) * (size_t)Wo);
    }
    for (int c0 = 0; c0 < Wr; c0 += V) {
        vf s0 = splat(0.0f), s1 = s0, s2 = s0;
        for (int u = 0; u < k; ++u) {
            const vf gu = splat(g[k - 1 - u]);
            s0 += gu * loadu(pad + c0 + u);
            s1 += gu * loadu(pad + Wpad + c0 + u);
            s2 += gu * loadu(pad + 2 * Wpad + c0 + u);
        }
        storeu(g0 + c0, s0);
        storeu(g1 + c0, s1);
        storeu(g2 + c0, s2);
    }
    const float *xrow = x + (size_t)R * W, *yrow = y + (size_t)R * W;
    float *restrict out = gx + (size_t)R * W;
    for (int j = 0; j < W; ++j) {
        const float xv = (xrow[j] + 1.0f) * 0.5f, yv = (yrow[j] + 1.0f) * 0.5f;
        out[j] = 0.5f * (g0[j] + 2.0f * xv * g1[j] + yv * g2[j]);
    }
}

/* Gradient with respect to x (H x W, internal scale) of sum(gs * SSIM_u) of one channel plane, gs (Ho x Wo) the
 * gradient of SSIM_u. With u = B / (P Q), v = A / (P Q) (times gs):
 *     dL/dmx = 2 (my (u - v) + mx s gs (1/Q - 1/P)),  dL/dE[x²] = -s gs / Q,  dL/dE[xy] = 2 v,
 * spread back over the pixels by the transposed filter (columns, then rows) and combined as
 * dL/dx = 0.5 (G dmx + 2 x G dE[x²] + y G dE[xy]) (x, y on [0, 1]; 0.5 the scale map's derivative).
 * Output row i's three derivative rows go to the acc ring's rows i .. i + k - 1 (the transposed column filter);
 * input row i has all its contributions then, and its gradient row follows. work: as ssim_plane. */
static void ssim_grad_plane(const float *x, const float *y, const float *ymy, const float *yey, int H, int W,
                            const float *g, int k, const float *restrict gs, float *restrict gx, float *work) {
    const int Wo = W - k + 1, Wop = ssim_stride(Wo), Wr = ssim_stride(W);
    const struct ssim_buffers b = ssim_layout(W, k, work);
    memset(b.acc, 0, sizeof(float) * 3 * (size_t)k * Wo);
    memset(b.rows + 3 * (size_t)Wr, 0, sizeof(float) * 3 * (size_t)(Wr + k - 1)); /* the padded rows' zeros */
    for (int r = 0; r < H; ++r) {
        ssim_row_filter(x, y, r, W, g, k, &b);
        const int i = r - k + 1;
        if (i < 0) continue;
        ssim_moment_row(i, W, g, k, ymy, yey, &b);
        float *gsr = b.rows; /* gs's row i, zero-padded to Wop (the rows buffer is free until below) */
        memcpy(gsr, gs + (size_t)i * Wo, sizeof(float) * (size_t)Wo);
        for (int j = Wo; j < Wop; ++j) gsr[j] = 0.0f;
        ssim_derivatives(b.mom, gsr, (size_t)Wop);
        for (int q = 0; q < 3; ++q) { /* transposed column filter: output row i to input rows i .. i + k - 1 */
            const float *restrict d = b.mom + (size_t)q * Wop;
            for (int t = 0; t < k; ++t) {
                const float gt = g[t];
                float *restrict o = b.acc + ((size_t)q * k + (i + t) % k) * Wo;
                for (int j = 0; j < Wo; ++j) o[j] += gt * d[j];
            }
        }
        ssim_grad_row(x, y, i, W, g, k, gx, &b); /* input row i: no later output row reaches it */
    }
    for (int R = H - k + 1; R < H; ++R) ssim_grad_row(x, y, R, W, g, k, gx, &b);
}

int patchmmd_openmp(void) {
#ifdef _OPENMP
    return 1;
#else
    return 0;
#endif
}

/* rff_block_sums of images i, frequency groups [g0, g1): task t is image t / T, groups from (t % T) * per, with
 * T = ceil(groups / per) tasks an image (a group is J frequencies). */
void rff_block_sums_tasks(const float *img, int64_t img_stride, int C, int Hp, int Wp, int k, int hc, int wc, int wcp,
                          int bh, int bw, const float *W, const float *b, float floor2d, int groups, int per,
                          const float *cc,
                          const float *sc, float *out_c, float *out_s, int64_t out_stride, float *work,
                          int64_t work_stride, int t0, int t1, int nthreads) {
    const int T = (groups + per - 1) / per;
    int next = t0;
#pragma omp parallel num_threads(nthreads) if (nthreads > 1)
    {
        float *wk = work + (size_t)THREAD_SLOT() * work_stride;
        for (int t; (t = __atomic_fetch_add(&next, 1, __ATOMIC_RELAXED)) < t1;) {
            const int i = t / T, g0 = (t % T) * per, g1 = g0 + per < groups ? g0 + per : groups;
            rff_block_sums(img + i * img_stride, C, Hp, Wp, k, hc, wc, wcp, bh, bw, W, b,
                           floor2d, g0 * J, g1 * J, cc, sc, out_c + i * out_stride, out_s + i * out_stride, wk);
        }
    }
}

/* rff_grad_image of images i, bands of rows: task t is image t / bands, rows from (t % bands) * rows, written to
 * gimg + i * gimg_stride + (t % bands) * band_stride (C x Hg x Wg contiguous, Hg = rows + k - 1; zeroed here). */
void rff_grad_image_tasks(const float *img, int64_t img_stride, int C, int Hp, int Wp, int k, int hc, int wc, int wcp,
                          int bh, int bw, const float *W, const float *b, float floor2d, int m, const float *cc,
                          const float *amp, const float *phs, int64_t g_stride, int rows, int bands, float *gimg,
                          int64_t gimg_stride, int64_t band_stride, int Wg, float *work, int64_t work_stride, int t0,
                          int t1, int nthreads) {
    int next = t0;
#pragma omp parallel num_threads(nthreads) if (nthreads > 1)
    {
        float *wk = work + (size_t)THREAD_SLOT() * work_stride;
        for (int t; (t = __atomic_fetch_add(&next, 1, __ATOMIC_RELAXED)) < t1;) {
            const int i = t / bands, band = t % bands, y0 = band * rows, y1 = y0 + rows < hc ? y0 + rows : hc;
            float *g = gimg + i * gimg_stride + band * band_stride;
            memset(g, 0, sizeof(float) * (size_t)C * (rows + k - 1) * Wg);
            rff_grad_image(img + i * img_stride, C, Hp, Wp, k, hc, wc, wcp, bh, bw, W, b, floor2d, m, cc,
                           amp + i * g_stride, phs + i * g_stride, y0, y1, g, rows + k - 1, Wg, wk);
        }
    }
}

/* The eight inputs of image i (x, yp and the six fit inputs, NULL where absent). */
static inline void image_inputs(const float *const *in, const int64_t *in_stride, int i, const float *a[8]) {
    for (int q = 0; q < 8; ++q) a[q] = in[q] ? in[q] + i * in_stride[q] : NULL;
}

/* aligned_scan of images i and runs of offsets: task t is image t / T, offsets o0 <= o < o0 + per with
 * o0 = (t % T) per, T = ceil(noff / per) tasks an image. in[0..7] are x, yp and the six fit inputs (in[2] NULL: no
 * fit), each advancing by in_stride[.] an image; offset o's maps go to out + i * out_stride + o * off_stride. */
void aligned_scan_tasks(const float *const *in, const int64_t *in_stride, int C, int H, int W, int r, int noff,
                        int per, const int *dys, const int *dxs, int lk_box, float ridge, float max_shift, int nlev,
                        const int *factors, int kloc, float w_l2, float w_local, float inv2s2, float *out,
                        int64_t out_stride, int64_t off_stride, float *work, int64_t work_stride, int t0, int t1,
                        int nthreads) {
    const int T = (noff + per - 1) / per;
    int next = t0;
#pragma omp parallel num_threads(nthreads) if (nthreads > 1)
    {
        float *wk = work + (size_t)THREAD_SLOT() * work_stride;
        for (int t; (t = __atomic_fetch_add(&next, 1, __ATOMIC_RELAXED)) < t1;) {
            const int i = t / T, o0 = (t % T) * per, n = o0 + per < noff ? per : noff - o0;
            const float *a[8];
            image_inputs(in, in_stride, i, a);
            aligned_scan(a[0], a[1], C, H, W, r, n, dys + o0, dxs + o0, a[2], a[3], a[4], a[5], a[6], a[7], lk_box,
                         ridge, max_shift, nlev, factors, kloc, w_l2, w_local, inv2s2,
                         out + i * out_stride + o0 * off_stride, off_stride, wk);
        }
    }
}

/* aligned_grad of images i (task t: image t) at the same noff offsets: in, in_stride as for aligned_scan_tasks;
 * gmap + i * gmap_stride, grad + i * grad_stride. */
void aligned_grad_tasks(const float *const *in, const int64_t *in_stride, int C, int H, int W, int r, int noff,
                        const int *dys, const int *dxs, int lk_box, float ridge, float max_shift, int nlev,
                        const int *factors, int kloc, float w_l2, float w_local, float inv2s2, const float *gmap,
                        int64_t gmap_stride, float *grad, int64_t grad_stride, float *work, int64_t work_stride,
                        int t0, int t1, int nthreads) {
    int next = t0;
#pragma omp parallel num_threads(nthreads) if (nthreads > 1)
    {
        float *wk = work + (size_t)THREAD_SLOT() * work_stride;
        for (int i; (i = __atomic_fetch_add(&next, 1, __ATOMIC_RELAXED)) < t1;) {
            const float *a[8];
            image_inputs(in, in_stride, i, a);
            aligned_grad(a[0], a[1], C, H, W, r, noff, dys, dxs, a[2], a[3], a[4], a[5], a[6], a[7], lk_box, ridge,
                         max_shift, nlev, factors, kloc, w_l2, w_local, inv2s2, gmap + i * gmap_stride,
                         grad + i * grad_stride, wk);
        }
    }
}

/* fit_inputs of images i (task t: image t): t + i * t_stride; outputs + i * (C, C, 3) Hp Wp. */
void fit_inputs_tasks(const float *t, int64_t t_stride, int C, int H, int W, int r, int b, float *gx, float *gy,
                      float *ten, float *work, int64_t work_stride, int t0, int t1, int nthreads) {
    const int64_t HWp = (int64_t)(H + 2 * r) * (W + 2 * r);
    int next = t0;
#pragma omp parallel num_threads(nthreads) if (nthreads > 1)
    {
        float *wk = work + (size_t)THREAD_SLOT() * work_stride;
        for (int i; (i = __atomic_fetch_add(&next, 1, __ATOMIC_RELAXED)) < t1;)
            fit_inputs(t + i * t_stride, C, H, W, r, b, gx + i * C * HWp, gy + i * C * HWp, ten + i * 3 * HWp, wk);
    }
}

/* SSIM_u (gs NULL) or its gradient with respect to x (gs the gradient of SSIM_u) of the channel planes t0 <= t < t1
 * of N images of C channels (plane t: image t / C, channel t % C). x, y: (N, C, H, W); ym: the target's moments
 * (N, 2 C, Ho, Wo: my of every channel, then E[y²]) or NULL; gs: (N, C, Ho, Wo). out: (N, C, Ho, Wo) values or
 * (N, C, H, W) gradients. work: ssim_work(W, k) floats a thread. */
void ssim_tasks(const float *x, const float *y, const float *ym, int C, int H, int W, const float *g, int k,
                const float *gs, float *out, float *work, int64_t work_stride, int t0, int t1, int nthreads) {
    const int64_t hw = (int64_t)H * W, ohw = (int64_t)(H - k + 1) * (W - k + 1);
    int next = t0;
#pragma omp parallel num_threads(nthreads) if (nthreads > 1)
    {
        float *wk = work + (size_t)THREAD_SLOT() * work_stride;
        for (int t; (t = __atomic_fetch_add(&next, 1, __ATOMIC_RELAXED)) < t1;) {
            const int n = t / C, c = t % C;
            const float *ymy = ym ? ym + ((int64_t)n * 2 * C + c) * ohw : NULL;
            const float *yey = ym ? ym + ((int64_t)n * 2 * C + C + c) * ohw : NULL;
            if (gs)
                ssim_grad_plane(x + t * hw, y + t * hw, ymy, yey, H, W, g, k, gs + t * ohw, out + t * hw, wk);
            else
                ssim_plane(x + t * hw, y + t * hw, ymy, yey, H, W, g, k, out + t * ohw, wk);
        }
    }
}
