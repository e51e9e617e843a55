/* RIDE's per-image reconstruction networks (Table 3's MNIST network: one image channel, hidden
 * width 16, 3x3 "same" convolutions, ReLU, inverted dropout at p = 1/2, sigmoid output): whole
 * training steps (forward, backward, Adam) and plain forward passes, one network per image.
 * Built and loaded by advrepair/engine/native.py; the Python side is
 * advrepair/defenses/ride/native_engine.py.
 *
 * Batched PyTorch runs these networks as grouped convolutions: every layer, every element-wise
 * pass and every Adam operation is one call over all networks, and the many small passes
 * between the convolutions cost as much as the convolutions. Here one thread takes a network
 * through its whole step while its activations (a few hundred KB) stay in its core's cache.
 *
 * Layouts (per network, contiguous):
 *   parameters: for each layer, weights [tap][in][out] (tap = 3 * dy + dx) then bias [out];
 *   Adam's first and second moments: the same layout;
 *   inputs, targets, outputs: (samples, H, W);
 *   dropout draws: one 16-bit word per (sample, dropout layer, row, column), bit c = keep unit
 *   c (the bits of RIDE's packed random words, in order).
 * Activations live on zero-padded planes ((H + 2) x (W + 2) pixels, 16 floats per pixel), so a
 * convolution reads its neighbours without bounds checks. A convolution is computed over the
 * plane's interior as one flat run of pixels, which passes over the border columns; the
 * activation pass after it writes zeros there again.
 *
 * Each network is computed alone, in a fixed order, by one thread: its result never depends
 * on the other networks in the call or on the thread count.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "team.h"

#define WIDTH 16
#define TAPS 9
#define MAX_DEPTH 32
#define BLOCK 6  /* pixels per register block: 12 accumulators + 2 weights + 1 broadcast of 16 registers */

typedef float v8 __attribute__((vector_size(32)));
typedef int32_t vi8 __attribute__((vector_size(32)));

static inline v8 load8(const float *p) { v8 v; memcpy(&v, p, sizeof(v)); return v; }
static inline void store8(float *p, v8 v) { memcpy(p, &v, sizeof(v)); }
static inline float sum8(v8 v) {
    float lanes[8];
    memcpy(lanes, &v, sizeof(lanes));
    return ((lanes[0] + lanes[1]) + (lanes[2] + lanes[3])) + ((lanes[4] + lanes[5]) + (lanes[6] + lanes[7]));
}

typedef struct {
    int depth, height, width, samples, dropout_layers;  /* dropout_layers: bit k = hidden layer k (1-based) */
    int64_t parameter_stride, draws_stride;
    float *parameters, *first_moments, *second_moments, *losses, *outputs;
    const float *inputs, *targets;
    const uint16_t *draws;
    /* Adam: the step size is lr / (1 - beta1^t); the moments' weights come computed, so they
     * round as torch.optim.Adam's do */
    float step_size, weight_decay, first_weight, beta2, second_weight, eps, bias_correction2_sqrt;
} job_t;

/* ------------------------------------------------------------------ geometry */

typedef struct {
    int H, W, PW, depth, layers_dropped;
    int winograd;                      /* even H and W: hidden layers by Winograd's F(2x2, 3x3) */
    int64_t tiles_across, tiles;       /* 2 x 2 output tiles */
    int64_t plane, start, end;         /* pixels of a padded plane; the flat interior run */
    int64_t offset[TAPS];              /* neighbour (dy - 1, dx - 1) in pixels */
    int64_t weights[MAX_DEPTH + 1], bias[MAX_DEPTH + 1];  /* parameter offsets per layer (1-based) */
} shape_t;

static int in_planes(int layer) { return layer == 1 ? 1 : WIDTH; }
static int out_planes(int layer, int depth) { return layer == depth ? 1 : WIDTH; }

static void make_shape(const job_t *job, shape_t *s) {
    s->H = job->height; s->W = job->width; s->PW = job->width + 2; s->depth = job->depth;
    s->plane = (int64_t)(job->height + 2) * s->PW;
    s->start = s->PW + 1;
    s->end = (int64_t)job->height * s->PW + job->width + 1;
    for (int t = 0; t < TAPS; t++) s->offset[t] = (int64_t)(t / 3 - 1) * s->PW + (t % 3 - 1);
    int64_t at = 0;
    for (int l = 1; l <= job->depth; l++) {
        s->weights[l] = at;
        at += (int64_t)TAPS * in_planes(l) * out_planes(l, job->depth);
        s->bias[l] = at;
        at += out_planes(l, job->depth);
    }
    s->layers_dropped = __builtin_popcount((unsigned)job->dropout_layers);
    s->winograd = job->height % 2 == 0 && job->width % 2 == 0;
    s->tiles_across = job->width / 2;
    s->tiles = s->tiles_across * (job->height / 2);
}

static int64_t parameter_count(int depth) {
    int64_t n = 0;
    for (int l = 1; l <= depth; l++) n += (int64_t)TAPS * in_planes(l) * out_planes(l, depth) + out_planes(l, depth);
    return n;
}

/* ------------------------------------------------------------------ convolutions */

/* out[p] = bias + sum over taps and 16 input planes of in[p + offset] * w[tap][plane][:], for
 * Q pixels from p; w is [tap][16][16]. */
static inline __attribute__((always_inline)) void conv16_block(
        const float *in, const float *w, const int64_t *offset, v8 b0, v8 b1, float *out, int64_t p, const int Q) {
    v8 acc[BLOCK][2];
    for (int q = 0; q < Q; q++) { acc[q][0] = b0; acc[q][1] = b1; }
    for (int t = 0; t < TAPS; t++) {
        const float *src = in + (p + offset[t]) * WIDTH;
        const float *wt = w + t * WIDTH * WIDTH;
        for (int ci = 0; ci < WIDTH; ci++) {
            const v8 w0 = load8(wt + ci * WIDTH), w1 = load8(wt + ci * WIDTH + 8);
            for (int q = 0; q < Q; q++) {
                const float v = src[q * WIDTH + ci];
                acc[q][0] += v * w0;
                acc[q][1] += v * w1;
            }
        }
    }
    for (int q = 0; q < Q; q++) {
        store8(out + (p + q) * WIDTH, acc[q][0]);
        store8(out + (p + q) * WIDTH + 8, acc[q][1]);
    }
}

static void conv16(const shape_t *s, const float *in, const float *w, const float *bias, float *out) {
    const v8 zero = {0};
    const v8 b0 = bias ? load8(bias) : zero, b1 = bias ? load8(bias + 8) : zero;
    int64_t p = s->start;
    for (; p + BLOCK <= s->end; p += BLOCK) conv16_block(in, w, s->offset, b0, b1, out, p, BLOCK);
    for (; p < s->end; p++) conv16_block(in, w, s->offset, b0, b1, out, p, 1);
}

/* dw[tap][plane][:] += sum over the run of act[p + offset[tap]][plane] * grad[p][:] (grad is
 * zero on the border columns, so the run's passes over them add nothing) */
static void weight_grad16(const shape_t *s, const float *act, const float *grad, float *dw) {
    for (int r0 = 0; r0 < TAPS * WIDTH; r0 += BLOCK) {
        int64_t at[BLOCK];
        v8 acc[BLOCK][2];
        for (int r = 0; r < BLOCK; r++) {
            at[r] = s->offset[(r0 + r) / WIDTH] * WIDTH + (r0 + r) % WIDTH;
            acc[r][0] = (v8){0};
            acc[r][1] = (v8){0};
        }
        for (int64_t p = s->start; p < s->end; p++) {
            const v8 g0 = load8(grad + p * WIDTH), g1 = load8(grad + p * WIDTH + 8);
            const float *a = act + p * WIDTH;
            for (int r = 0; r < BLOCK; r++) {
                const float v = a[at[r]];
                acc[r][0] += v * g0;
                acc[r][1] += v * g1;
            }
        }
        for (int r = 0; r < BLOCK; r++) {
            store8(dw + (r0 + r) * WIDTH, load8(dw + (r0 + r) * WIDTH) + acc[r][0]);
            store8(dw + (r0 + r) * WIDTH + 8, load8(dw + (r0 + r) * WIDTH + 8) + acc[r][1]);
        }
    }
}

/* ------------------------------------------------------------------ Winograd F(2x2, 3x3)
 *
 * A hidden layer on even-sized images as Lavin & Gray's minimal filtering: each 2 x 2 output
 * tile reads a 4 x 4 input tile, and per pair of planes the 36 multiplications of the direct
 * convolution become 16 (one per position xi of the 4 x 4 transformed tile):
 *   out = A^T [ (G w G^T) . (B^T d B) ] A     (. = element-wise, summed over input planes)
 * with B^T = [1 0 -1 0; 0 1 1 0; 0 -1 1 0; 0 1 0 -1], G = [1 0 0; .5 .5 .5; .5 -.5 .5; 0 0 1],
 * A^T = [1 1 1 0; 0 1 -1 -1]. The sum over input planes is, per xi, a (tiles x 16) by (16 x 16)
 * matrix product. Its adjoint gives the weights' gradient:
 *   grad w = G^T [ sum over tiles of (B^T d B) . (A grad_out A^T) ] G,
 * and the input gradient is the same convolution with the kernel reversed and its planes
 * swapped. The transforms' coefficients are 0, +-1 and +-1/2, so the result differs from the
 * direct convolution by float rounding only (tested against PyTorch). */

#define XI 16

/* V[xi][tile][c] = (B^T d B)[xi] of one tile of 16 planes whose top-left pixel is `corner` */
static inline void input_tile(const shape_t *s, const float *plane, int64_t corner, int64_t tile, float *V) {
    for (int half = 0; half < 2; half++) {
        v8 d[4][4], t[4][4];
        for (int i = 0; i < 4; i++) for (int j = 0; j < 4; j++)
            d[i][j] = load8(plane + (corner + i * s->PW + j) * WIDTH + half * 8);
        for (int j = 0; j < 4; j++) {
            t[0][j] = d[0][j] - d[2][j];
            t[1][j] = d[1][j] + d[2][j];
            t[2][j] = d[2][j] - d[1][j];
            t[3][j] = d[1][j] - d[3][j];
        }
        for (int i = 0; i < 4; i++) {
            float *v = V + (i * 4 * s->tiles + tile) * WIDTH + half * 8;
            const int64_t next = s->tiles * WIDTH;
            store8(v, t[i][0] - t[i][2]);
            store8(v + next, t[i][1] + t[i][2]);
            store8(v + 2 * next, t[i][2] - t[i][1]);
            store8(v + 3 * next, t[i][1] - t[i][3]);
        }
    }
}

static inline int64_t tile_corner(const shape_t *s, int64_t tile) {
    return 2 * (tile / s->tiles_across) * s->PW + 2 * (tile % s->tiles_across);
}

static void input_tiles(const shape_t *s, const float *plane, float *V) {
    for (int64_t tile = 0; tile < s->tiles; tile++) input_tile(s, plane, tile_corner(s, tile), tile, V);
}

/* M[xi][tile][:] = sum over c of V[xi][tile][c] * U[xi][c][:], for Q tiles from `tile` */
static inline __attribute__((always_inline)) void product_block(const float *V, const float *U, float *M, int64_t tile,
                                                                const int Q) {
    v8 acc[BLOCK][2];
    for (int q = 0; q < Q; q++) { acc[q][0] = (v8){0}; acc[q][1] = (v8){0}; }
    for (int c = 0; c < WIDTH; c++) {
        const v8 u0 = load8(U + c * WIDTH), u1 = load8(U + c * WIDTH + 8);
        for (int q = 0; q < Q; q++) {
            const float v = V[(tile + q) * WIDTH + c];
            acc[q][0] += v * u0;
            acc[q][1] += v * u1;
        }
    }
    for (int q = 0; q < Q; q++) {
        store8(M + (tile + q) * WIDTH, acc[q][0]);
        store8(M + (tile + q) * WIDTH + 8, acc[q][1]);
    }
}

/* out = the layer's output (bias added) on the plane's interior, from its input plane */
static void winograd_conv16(const shape_t *s, const float *in, const float *U, const float *bias, float *out,
                            float *V, float *M) {
    input_tiles(s, in, V);
    for (int xi = 0; xi < XI; xi++) {
        const float *v = V + xi * s->tiles * WIDTH, *u = U + xi * WIDTH * WIDTH;
        float *m = M + xi * s->tiles * WIDTH;
        int64_t tile = 0;
        for (; tile + BLOCK <= s->tiles; tile += BLOCK) product_block(v, u, m, tile, BLOCK);
        for (; tile < s->tiles; tile++) product_block(v, u, m, tile, 1);
    }
    const v8 zero = {0};
    const v8 b[2] = {bias ? load8(bias) : zero, bias ? load8(bias + 8) : zero};
    for (int64_t tile = 0; tile < s->tiles; tile++) {
        const int64_t corner = tile_corner(s, tile);
        for (int half = 0; half < 2; half++) {
            v8 m[4][4], r[2][4];
            for (int xi = 0; xi < XI; xi++) m[xi / 4][xi % 4] = load8(M + (xi * s->tiles + tile) * WIDTH + half * 8);
            for (int j = 0; j < 4; j++) {
                r[0][j] = m[0][j] + m[1][j] + m[2][j];
                r[1][j] = m[1][j] - m[2][j] - m[3][j];
            }
            for (int i = 0; i < 2; i++) {
                float *o = out + (corner + (i + 1) * s->PW + 1) * WIDTH + half * 8;
                store8(o, r[i][0] + r[i][1] + r[i][2] + b[half]);
                store8(o + WIDTH, r[i][1] - r[i][2] - r[i][3] + b[half]);
            }
        }
    }
}

/* M[xi][tile][:] = (A g A^T)[xi] of the output gradient g's 2 x 2 tiles (the output
 * transform's adjoint) */
static void gradient_tiles(const shape_t *s, const float *grad, float *M) {
    for (int64_t tile = 0; tile < s->tiles; tile++) {
        const int64_t corner = tile_corner(s, tile);
        for (int half = 0; half < 2; half++) {
            v8 g[2][2], e[4][2];
            for (int i = 0; i < 2; i++) for (int j = 0; j < 2; j++)
                g[i][j] = load8(grad + (corner + (i + 1) * s->PW + j + 1) * WIDTH + half * 8);
            for (int j = 0; j < 2; j++) {
                e[0][j] = g[0][j];
                e[1][j] = g[0][j] + g[1][j];
                e[2][j] = g[0][j] - g[1][j];
                e[3][j] = -g[1][j];
            }
            for (int i = 0; i < 4; i++) {
                const v8 row[4] = {e[i][0], e[i][0] + e[i][1], e[i][0] - e[i][1], -e[i][1]};
                for (int j = 0; j < 4; j++) store8(M + ((i * 4 + j) * s->tiles + tile) * WIDTH + half * 8, row[j]);
            }
        }
    }
}

/* dU[xi][c][:] += sum over tiles of V[xi][tile][c] * M[xi][tile][:], for R planes from c0 */
static inline __attribute__((always_inline)) void gradient_product_block(const shape_t *s, const float *V,
                                                                         const float *M, float *dU, int c0, const int R) {
    v8 acc[BLOCK][2];
    for (int r = 0; r < R; r++) { acc[r][0] = (v8){0}; acc[r][1] = (v8){0}; }
    for (int64_t tile = 0; tile < s->tiles; tile++) {
        const v8 g0 = load8(M + tile * WIDTH), g1 = load8(M + tile * WIDTH + 8);
        for (int r = 0; r < R; r++) {
            const float v = V[tile * WIDTH + c0 + r];
            acc[r][0] += v * g0;
            acc[r][1] += v * g1;
        }
    }
    for (int r = 0; r < R; r++) {
        store8(dU + (c0 + r) * WIDTH, load8(dU + (c0 + r) * WIDTH) + acc[r][0]);
        store8(dU + (c0 + r) * WIDTH + 8, load8(dU + (c0 + r) * WIDTH + 8) + acc[r][1]);
    }
}

/* dU += the transformed weights' gradient of one sample: V is the layer's transformed input
 * (kept from the forward pass), grad its output gradient */
static void winograd_weight_grad16(const shape_t *s, const float *grad, float *dU, const float *V, float *M) {
    gradient_tiles(s, grad, M);
    for (int xi = 0; xi < XI; xi++) {
        const float *v = V + xi * s->tiles * WIDTH, *m = M + xi * s->tiles * WIDTH;
        float *du = dU + xi * WIDTH * WIDTH;
        gradient_product_block(s, v, m, du, 0, 6);
        gradient_product_block(s, v, m, du, 6, 6);
        gradient_product_block(s, v, m, du, 12, 4);
    }
}

/* U[xi][c][:] = G w G^T for the weights w[tap][c][:] */
static void transform_weights(const float *w, float *U) {
    for (int c = 0; c < WIDTH; c++) for (int half = 0; half < 2; half++) {
        v8 g[3][3], t[4][3];
        for (int tap = 0; tap < TAPS; tap++) g[tap / 3][tap % 3] = load8(w + (tap * WIDTH + c) * WIDTH + half * 8);
        for (int j = 0; j < 3; j++) {
            t[0][j] = g[0][j];
            t[1][j] = 0.5f * (g[0][j] + g[1][j] + g[2][j]);
            t[2][j] = 0.5f * (g[0][j] - g[1][j] + g[2][j]);
            t[3][j] = g[2][j];
        }
        for (int i = 0; i < 4; i++) {
            const v8 row[4] = {t[i][0], 0.5f * (t[i][0] + t[i][1] + t[i][2]), 0.5f * (t[i][0] - t[i][1] + t[i][2]),
                               t[i][2]};
            for (int j = 0; j < 4; j++) store8(U + ((i * 4 + j) * WIDTH + c) * WIDTH + half * 8, row[j]);
        }
    }
}

/* the transform of the kernel reversed with its planes swapped (the input gradient's), from
 * U: reversing a kernel swaps the first and last rows of G w, so xi = (i, j) reads
 * (3 - i, 3 - j) for i, j in {0, 3} */
static void flip_transformed(const float *U, float *flipped) {
    static const int mirror[4] = {3, 1, 2, 0};
    for (int i = 0; i < 4; i++) for (int j = 0; j < 4; j++) {
        const float *src = U + (mirror[i] * 4 + mirror[j]) * WIDTH * WIDTH;
        float *dst = flipped + (i * 4 + j) * WIDTH * WIDTH;
        for (int o = 0; o < WIDTH; o++) for (int c = 0; c < WIDTH; c++) dst[o * WIDTH + c] = src[c * WIDTH + o];
    }
}

/* dw[tap][c][:] += G^T dU G */
static void untransform_weight_grad(const float *dU, float *dw) {
    for (int c = 0; c < WIDTH; c++) for (int o = 0; o < WIDTH; o++) {
        float u[4][4], t[3][4];
        for (int xi = 0; xi < XI; xi++) u[xi / 4][xi % 4] = dU[(xi * WIDTH + c) * WIDTH + o];
        for (int j = 0; j < 4; j++) {
            t[0][j] = u[0][j] + 0.5f * (u[1][j] + u[2][j]);
            t[1][j] = 0.5f * (u[1][j] - u[2][j]);
            t[2][j] = 0.5f * (u[1][j] + u[2][j]) + u[3][j];
        }
        for (int i = 0; i < 3; i++) {
            const float row[3] = {t[i][0] + 0.5f * (t[i][1] + t[i][2]), 0.5f * (t[i][1] - t[i][2]),
                                  0.5f * (t[i][1] + t[i][2]) + t[i][3]};
            for (int j = 0; j < 3; j++) dw[((i * 3 + j) * WIDTH + c) * WIDTH + o] += row[j];
        }
    }
}

/* the first layer: one input plane to 16 */
static void conv_first(const shape_t *s, const float *in, const float *w, const float *bias, float *out) {
    const v8 b0 = load8(bias), b1 = load8(bias + 8);
    for (int64_t p = s->start; p < s->end; p++) {
        v8 a0 = b0, a1 = b1;
        for (int t = 0; t < TAPS; t++) {
            const float v = in[p + s->offset[t]];
            a0 += v * load8(w + t * WIDTH);
            a1 += v * load8(w + t * WIDTH + 8);
        }
        store8(out + p * WIDTH, a0);
        store8(out + p * WIDTH + 8, a1);
    }
}

/* dw[tap][:] += sum over the run of a one-plane value times a 16-plane vector, one of the two
 * read at the tap's neighbour: the first layer's weight gradient (its input plane shifted,
 * the gradient not) and the output layer's (the gradient not shifted, the activations
 * shifted). The three taps of a kernel row and two pixels at a time (12 independent sums). */
static inline __attribute__((always_inline)) void weight_grad_thin(const shape_t *s, const float *plane,
                                                                   const float *planes16, float *dw, const int shift_plane) {
    for (int t0 = 0; t0 < TAPS; t0 += 3) {
        v8 acc[2][3][2] = {{{{0}}}};
        int64_t p = s->start;
        for (; p < s->end; p += 2) for (int q = 0; q < 2 && p + q < s->end; q++) for (int k = 0; k < 3; k++) {
            const int64_t offset = s->offset[t0 + k];
            const float v = plane[p + q + (shift_plane ? offset : 0)];
            const float *vector = planes16 + (p + q + (shift_plane ? 0 : offset)) * WIDTH;
            acc[q][k][0] += v * load8(vector);
            acc[q][k][1] += v * load8(vector + 8);
        }
        for (int k = 0; k < 3; k++) for (int half = 0; half < 2; half++) {
            float *d = dw + (t0 + k) * WIDTH + half * 8;
            store8(d, load8(d) + (acc[0][k][half] + acc[1][k][half]));
        }
    }
}

static void weight_grad_first(const shape_t *s, const float *in, const float *grad, float *dw) {
    weight_grad_thin(s, in, grad, dw, 1);
}

static void weight_grad_last(const shape_t *s, const float *act, const float *grad, float *dw) {
    weight_grad_thin(s, grad, act, dw, 0);
}

/* the output layer: 16 planes to one; its pre-activation values on the interior of the plane
 * z. Q pixels at a time, so that 2Q independent sums hide the multiply-adds' latency. */
static inline __attribute__((always_inline)) void output_block(const shape_t *s, const float *act, const float *w,
                                                               float bias, float *z, int64_t p, const int Q) {
    v8 acc[4][2];
    for (int q = 0; q < Q; q++) { acc[q][0] = (v8){0}; acc[q][1] = (v8){0}; }
    for (int t = 0; t < TAPS; t++) {
        const v8 w0 = load8(w + t * WIDTH), w1 = load8(w + t * WIDTH + 8);
        for (int q = 0; q < Q; q++) {
            const float *a = act + (p + q + s->offset[t]) * WIDTH;
            acc[q][0] += load8(a) * w0;
            acc[q][1] += load8(a + 8) * w1;
        }
    }
    for (int q = 0; q < Q; q++) z[p + q] = sum8(acc[q][0] + acc[q][1]) + bias;
}

static void output_layer(const shape_t *s, const float *act, const float *w, float bias, float *z) {
    for (int y = 1; y <= s->H; y++) {
        const int64_t row = (int64_t)y * s->PW;
        int x = 1;
        for (; x + 4 <= s->W + 1; x += 4) output_block(s, act, w, bias, z, row + x, 4);
        for (; x <= s->W; x++) output_block(s, act, w, bias, z, row + x, 1);
    }
}

/* d act[p][:] = sum over taps of grad[p - offset[tap]] * w[tap][:] (grad: one padded plane) */
static void input_grad_last(const shape_t *s, const float *grad, const float *w, float *out) {
    for (int64_t p = s->start; p < s->end; p++) {
        v8 a0 = {0}, a1 = {0};
        for (int t = 0; t < TAPS; t++) {
            const float g = grad[p - s->offset[t]];
            a0 += g * load8(w + t * WIDTH);
            a1 += g * load8(w + t * WIDTH + 8);
        }
        store8(out + p * WIDTH, a0);
        store8(out + p * WIDTH + 8, a1);
    }
}

/* ------------------------------------------------------------------ element-wise passes */

static const vi8 LOW_BITS = {1, 2, 4, 8, 16, 32, 64, 128};

/* ReLU, then (keep == NULL: none) inverted dropout at p = 1/2, on the interior; zeros on the
 * border columns the flat run wrote */
static void activate(const shape_t *s, float *h, const uint16_t *keep) {
    const v8 zero = {0}, two = {2, 2, 2, 2, 2, 2, 2, 2};
    for (int y = 1; y <= s->H; y++) {
        float *row = h + (int64_t)y * s->PW * WIDTH;
        memset(row, 0, WIDTH * sizeof(float));
        memset(row + (int64_t)(s->W + 1) * WIDTH, 0, WIDTH * sizeof(float));
        for (int x = 1; x <= s->W; x++) {
            float *px = row + (int64_t)x * WIDTH;
            v8 a0 = load8(px), a1 = load8(px + 8);
            a0 = (v8)((vi8)a0 & (a0 > zero));
            a1 = (v8)((vi8)a1 & (a1 > zero));
            if (keep) {
                const int32_t bits = keep[(int64_t)(y - 1) * s->W + (x - 1)];
                const vi8 lo = (vi8){0} + (bits & 0xff), hi = (vi8){0} + (bits >> 8);
                a0 *= (v8)((vi8)two & ((lo & LOW_BITS) != 0));
                a1 *= (v8)((vi8)two & ((hi & LOW_BITS) != 0));
            }
            store8(px, a0);
            store8(px + 8, a1);
        }
    }
}

/* grad <- grad * scale where the layer's output is positive, else 0 (ReLU's and dropout's
 * backward: a dropped unit's output is 0); the bias gradient gets the sum */
static void deactivate(const shape_t *s, const float *h, float *grad, float scale, float *db) {
    const v8 zero = {0};
    v8 s0 = {0}, s1 = {0};
    for (int y = 1; y <= s->H; y++) {
        float *row = grad + (int64_t)y * s->PW * WIDTH;
        const float *out = h + (int64_t)y * s->PW * WIDTH;
        memset(row, 0, WIDTH * sizeof(float));
        memset(row + (int64_t)(s->W + 1) * WIDTH, 0, WIDTH * sizeof(float));
        for (int x = 1; x <= s->W; x++) {
            float *g = row + (int64_t)x * WIDTH;
            const v8 g0 = (v8)((vi8)(load8(g) * scale) & (load8(out + x * WIDTH) > zero));
            const v8 g1 = (v8)((vi8)(load8(g + 8) * scale) & (load8(out + x * WIDTH + 8) > zero));
            store8(g, g0);
            store8(g + 8, g1);
            s0 += g0;
            s1 += g1;
        }
    }
    store8(db, load8(db) + s0);
    store8(db + 8, load8(db + 8) + s1);
}

static void load_plane(const shape_t *s, const float *image, float *plane) {
    for (int y = 0; y < s->H; y++) memcpy(plane + (int64_t)(y + 1) * s->PW + 1, image + (int64_t)y * s->W, s->W * sizeof(float));
}

/* ------------------------------------------------------------------ one network */

typedef struct {
    float *input, *grad_out;     /* one padded plane each */
    float *act[MAX_DEPTH];       /* act[l]: layer l's output (l = 1 .. depth - 1), 16 planes */
    float *grad[2];              /* 16 planes each */
    float *grads;                /* the parameters' gradient */
    /* per hidden layer l (index l - 2): the kernel reversed with its planes swapped (the input
     * gradient's convolution), and with Winograd both kernels transformed and the transformed
     * weights' gradient */
    float *flipped, *transformed, *transformed_flipped, *transformed_grad;
    /* Winograd, [xi][tile][16]: each hidden layer's transformed input (the forward pass's,
     * kept for the weights' gradient), the input gradient's, and the products */
    float *layer_tiles[MAX_DEPTH], *tiles_in, *tiles_out;
} workspace_t;

static float *workspace_memory(size_t floats) {
    /* kept per thread across calls: a fresh allocation this large would be mapped and faulted
     * in again every step */
    static __thread float *memory = 0;
    static __thread size_t size = 0;
    if (floats > size) {
        free(memory);
        memory = aligned_alloc(64, (floats * sizeof(float) + 63) / 64 * 64);
        size = memory ? floats : 0;
    }
    return memory;
}

static inline int64_t round16(int64_t n) { return (n + 15) / 16 * 16; }

static int make_workspace(const job_t *job, const shape_t *s, workspace_t *ws) {
    const int64_t plane = round16(s->plane), planes16 = plane * WIDTH, params = round16(parameter_count(job->depth));
    const int64_t kernel = TAPS * WIDTH * WIDTH, transformed = XI * WIDTH * WIDTH, hidden = job->depth - 2;
    const int64_t tiles = s->winograd ? XI * s->tiles * WIDTH : 0;
    const size_t total = 2 * plane + (size_t)(job->depth - 1 + 2) * planes16 + params
        + hidden * (s->winograd ? 3 * transformed : kernel) + (hidden + 2) * tiles;
    const size_t planes = 2 * plane + (size_t)(job->depth - 1 + 2) * planes16;
    float *m = workspace_memory(total);
    if (!m) return -1;
    /* the planes' borders stay zero from here on; everything after them is written before it
     * is read (the gradients and transformed gradients are cleared per network) */
    memset(m, 0, planes * sizeof(float));
    ws->input = m; m += plane;
    ws->grad_out = m; m += plane;
    for (int l = 1; l < job->depth; l++) { ws->act[l] = m; m += planes16; }
    ws->grad[0] = m; m += planes16;
    ws->grad[1] = m; m += planes16;
    ws->grads = m; m += params;
    if (s->winograd) {
        ws->transformed = m; m += hidden * transformed;
        ws->transformed_flipped = m; m += hidden * transformed;
        ws->transformed_grad = m; m += hidden * transformed;
    } else {
        ws->flipped = m; m += hidden * kernel;
    }
    for (int l = 2; l < job->depth; l++) { ws->layer_tiles[l] = m; m += tiles; }
    ws->tiles_in = m; m += tiles;
    ws->tiles_out = m;
    return 0;
}

/* per step: what the hidden layers' convolutions need from their weights */
static void prepare_kernels(const shape_t *s, const float *w, workspace_t *ws, int backward) {
    const int64_t kernel = TAPS * WIDTH * WIDTH, transformed = XI * WIDTH * WIDTH;
    for (int l = 2; l < s->depth; l++) {
        const float *src = w + s->weights[l];
        if (s->winograd) {
            transform_weights(src, ws->transformed + (l - 2) * transformed);
            if (!backward) continue;
            flip_transformed(ws->transformed + (l - 2) * transformed, ws->transformed_flipped + (l - 2) * transformed);
            memset(ws->transformed_grad + (l - 2) * transformed, 0, transformed * sizeof(float));
        } else if (backward) {
            float *flipped = ws->flipped + (l - 2) * kernel;
            for (int t = 0; t < TAPS; t++) for (int i = 0; i < WIDTH; i++) for (int o = 0; o < WIDTH; o++)
                flipped[((TAPS - 1 - t) * WIDTH + o) * WIDTH + i] = src[(t * WIDTH + i) * WIDTH + o];
        }
    }
}

/* hidden layer l's convolution of `in` into `out`: forward (bias) or its input gradient */
static void hidden_conv(const shape_t *s, workspace_t *ws, int l, const float *w, const float *in, float *out,
                        int input_gradient) {
    const int64_t k = (l - 2) * TAPS * WIDTH * WIDTH, t = (l - 2) * XI * WIDTH * WIDTH;
    const float *bias = input_gradient ? 0 : w + s->bias[l];
    if (s->winograd)
        winograd_conv16(s, in, (input_gradient ? ws->transformed_flipped : ws->transformed) + t, bias, out,
                        input_gradient ? ws->tiles_in : ws->layer_tiles[l], ws->tiles_out);
    else conv16(s, in, input_gradient ? ws->flipped + k : w + s->weights[l], bias, out);
}

static int dropout_rank(const job_t *job, int layer) {
    if (!(job->dropout_layers >> layer & 1)) return -1;
    return __builtin_popcount((unsigned)job->dropout_layers & ((1u << layer) - 1));
}

/* layers 1 .. depth - 1 of one sample; keep == NULL: no dropout */
static void forward_hidden(const job_t *job, const shape_t *s, const float *w, workspace_t *ws,
                           const uint16_t *keep) {
    const int64_t layer_words = (int64_t)s->H * s->W;
    for (int l = 1; l < s->depth; l++) {
        if (l == 1) conv_first(s, ws->input, w + s->weights[1], w + s->bias[1], ws->act[1]);
        else hidden_conv(s, ws, l, w, ws->act[l - 1], ws->act[l], 0);
        const int rank = keep ? dropout_rank(job, l) : -1;
        activate(s, ws->act[l], rank >= 0 ? keep + rank * layer_words : 0);
    }
}

/* a thread's geometry and workspace for the job; nonzero when memory ran out */
static int start_networks(const job_t *job, shape_t *s, workspace_t *ws) {
    make_shape(job, s);
    return make_workspace(job, s, ws);
}

static int train_networks(const void *arg, int64_t first, int64_t last) {
    const job_t *job = (const job_t *)arg;
    shape_t s;
    workspace_t ws;
    if (start_networks(job, &s, &ws)) return -1;
    const int depth = job->depth, n = job->samples;
    const int64_t pixels = (int64_t)s.H * s.W, count = parameter_count(depth);
    const float per_value = 1.0f / (float)(n * pixels);
    for (int64_t g = first; g < last; g++) {
        float *w = job->parameters + g * job->parameter_stride;
        memset(ws.grads, 0, count * sizeof(float));
        prepare_kernels(&s, w, &ws, 1);
        float loss = 0.0f;
        for (int i = 0; i < n; i++) {
            const float *image = job->inputs + (g * n + i) * pixels;
            const float *target = job->targets + (g * n + i) * pixels;
            const uint16_t *keep = job->dropout_layers
                ? job->draws + g * job->draws_stride + (int64_t)i * s.layers_dropped * pixels : 0;
            load_plane(&s, image, ws.input);
            forward_hidden(job, &s, w, &ws, keep);
            /* output, loss and the output layer's gradient: mean squared error of the sigmoid */
            const float *top = ws.act[depth - 1], *w_last = w + s.weights[depth];
            const float b_last = w[s.bias[depth]];
            float bias_grad = 0.0f;
            output_layer(&s, top, w_last, b_last, ws.grad_out);
            for (int y = 0; y < s.H; y++) for (int x = 0; x < s.W; x++) {
                const int64_t p = (int64_t)(y + 1) * s.PW + x + 1;
                const float out = 1.0f / (1.0f + expf(-ws.grad_out[p]));
                const float diff = out - target[(int64_t)y * s.W + x];
                loss += diff * diff;
                const float grad = per_value * (2.0f * diff) * (1.0f - out) * out;
                ws.grad_out[p] = grad;
                bias_grad += grad;
            }
            ws.grads[s.bias[depth]] += bias_grad;
            weight_grad_last(&s, top, ws.grad_out, ws.grads + s.weights[depth]);
            float *grad = ws.grad[0], *spare = ws.grad[1];
            input_grad_last(&s, ws.grad_out, w_last, grad);
            for (int l = depth - 1; l >= 1; l--) {
                deactivate(&s, ws.act[l], grad, dropout_rank(job, l) >= 0 ? 2.0f : 1.0f, ws.grads + s.bias[l]);
                if (l == 1) {
                    weight_grad_first(&s, ws.input, grad, ws.grads + s.weights[1]);
                    break;
                }
                if (s.winograd)
                    winograd_weight_grad16(&s, grad, ws.transformed_grad + (l - 2) * XI * WIDTH * WIDTH,
                                           ws.layer_tiles[l], ws.tiles_out);
                else weight_grad16(&s, ws.act[l - 1], grad, ws.grads + s.weights[l]);
                hidden_conv(&s, &ws, l, w, grad, spare, 1);
                float *swap = grad; grad = spare; spare = swap;
            }
        }
        if (s.winograd)
            for (int l = 2; l < depth; l++)
                untransform_weight_grad(ws.transformed_grad + (l - 2) * XI * WIDTH * WIDTH, ws.grads + s.weights[l]);
        job->losses[g] = loss * per_value;
        /* Adam with L2 weight decay, in torch.optim.Adam's order of operations */
        float *m = job->first_moments + g * job->parameter_stride, *v = job->second_moments + g * job->parameter_stride;
        for (int64_t k = 0; k < count; k++) {
            const float grad = ws.grads[k] + job->weight_decay * w[k];
            m[k] += job->first_weight * (grad - m[k]);
            v[k] = v[k] * job->beta2 + job->second_weight * grad * grad;
            w[k] -= job->step_size * (m[k] / (sqrtf(v[k]) / job->bias_correction2_sqrt + job->eps));
        }
    }
    return 0;
}

static int forward_networks(const void *arg, int64_t first, int64_t last) {
    const job_t *job = (const job_t *)arg;
    shape_t s;
    workspace_t ws;
    if (start_networks(job, &s, &ws)) return -1;
    const int depth = job->depth, n = job->samples;
    const int64_t pixels = (int64_t)s.H * s.W;
    for (int64_t g = first; g < last; g++) {
        const float *w = job->parameters + g * job->parameter_stride;
        prepare_kernels(&s, w, &ws, 0);
        for (int i = 0; i < n; i++) {
            load_plane(&s, job->inputs + (g * n + i) * pixels, ws.input);
            forward_hidden(job, &s, w, &ws, 0);
            float *out = job->outputs + (g * n + i) * pixels;
            output_layer(&s, ws.act[depth - 1], w + s.weights[depth], w[s.bias[depth]], ws.grad_out);
            for (int y = 0; y < s.H; y++) for (int x = 0; x < s.W; x++)
                out[(int64_t)y * s.W + x] = 1.0f / (1.0f + expf(-ws.grad_out[(int64_t)(y + 1) * s.PW + x + 1]));
        }
    }
    return 0;
}

/* ------------------------------------------------------------------ entry points */

void ride_use_openmp(void *parallel, void *thread_num, void *num_threads) {
    team_use_openmp(parallel, thread_num, num_threads);
}

int64_t ride_parameter_count(int depth) { return depth < 2 || depth > MAX_DEPTH ? -1 : parameter_count(depth); }

static int bad_shape(int64_t networks, int depth, int height, int width, int samples, int64_t parameter_stride) {
    return networks < 0 || depth < 2 || depth > MAX_DEPTH || height < 1 || width < 1 || samples < 1
        || parameter_stride < parameter_count(depth);
}

/* One training step of each network: forward, mean squared error against its targets,
 * backward, Adam (first_weight = 1 - beta1, second_weight = 1 - beta2). dropout_layers == 0: no dropout (draws unused). Returns 0, or -1 on a bad
 * shape or when memory ran out. */
int ride_train_step(float *parameters, float *first_moments, float *second_moments, int64_t parameter_stride,
                    const float *inputs, const float *targets, const uint16_t *draws, int64_t draws_stride,
                    float *losses, int64_t networks, int depth, int height, int width, int samples,
                    int dropout_layers, float step_size, float weight_decay, float first_weight, float beta2,
                    float second_weight, float eps, float bias_correction2_sqrt, int threads) {
    if (bad_shape(networks, depth, height, width, samples, parameter_stride)
        || dropout_layers < 0 || dropout_layers & 1 || dropout_layers >> depth) return -1;
    if (networks == 0) return 0;
    job_t job = {0};
    job.depth = depth; job.height = height; job.width = width; job.samples = samples;
    job.dropout_layers = dropout_layers;
    job.parameters = parameters; job.first_moments = first_moments; job.second_moments = second_moments;
    job.parameter_stride = parameter_stride;
    job.inputs = inputs; job.targets = targets; job.draws = draws; job.draws_stride = draws_stride;
    job.losses = losses;
    job.step_size = step_size; job.weight_decay = weight_decay; job.first_weight = first_weight;
    job.beta2 = beta2; job.second_weight = second_weight; job.eps = eps;
    job.bias_correction2_sqrt = bias_correction2_sqrt;
    return team_run(&job, networks, threads, train_networks);
}

/* Each network's output (without dropout) for its `samples` inputs. */
int ride_forward(const float *parameters, int64_t parameter_stride, const float *inputs, float *outputs,
                 int64_t networks, int depth, int height, int width, int samples, int threads) {
    if (bad_shape(networks, depth, height, width, samples, parameter_stride)) return -1;
    if (networks == 0) return 0;
    job_t job = {0};
    job.depth = depth; job.height = height; job.width = width; job.samples = samples;
    job.parameters = (float *)parameters; job.parameter_stride = parameter_stride;
    job.inputs = inputs; job.outputs = outputs;
    return team_run(&job, networks, threads, forward_networks);
}
