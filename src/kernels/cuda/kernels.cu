// The fast path's own CUDA kernels (everything but the convolutions, which cuDNN runs).
//
// Compiled at run time by NVRTC with --fmad=false: `host::HostKernels` is the reference, and
// without contraction the elementwise kernels (normalize, bias + ReLU, SGD) round exactly as its
// plain f32 loops do, so the two paths agree bit for bit there. They are memory-bound; the fused
// multiply-adds would buy nothing.
//
// Element counts are 32-bit (the Rust side checks they fit); indices into the mean table, which
// multiply a row by its length, are 64-bit.
//
// Activations (see `kernels` in Rust) are f32 or bf16: each kernel that reads or writes them is
// a template over their type `T`, instantiated twice under C names, `name` for f32 and
// `name_bf16` for bf16. Loads widen to f32 and all arithmetic is f32; a bf16 store rounds once,
// to nearest with ties to even, exactly as the host's `bf16::round` does.

// A bf16 value as its bits (NVRTC has no cuda_bf16.h without the toolkit's headers): the top
// half of an f32.
struct bf16 {
    unsigned short bits;
};

__device__ __forceinline__ bf16 to_bf16(float value)
{
    unsigned int u = __float_as_uint(value);
    // NaN stays NaN (made quiet, so that rounding cannot carry it into infinity).
    if ((u & 0x7fffffffu) > 0x7f800000u) return bf16{(unsigned short)((u >> 16) | 0x40u)};
    // Round to nearest, ties to even: add just under half a step, plus one for an odd result.
    u += 0x7fffu + ((u >> 16) & 1u);
    return bf16{(unsigned short)(u >> 16)};
}

__device__ __forceinline__ float load(const float *p, size_t i) { return p[i]; }
__device__ __forceinline__ float load(const bf16 *p, size_t i)
{
    return __uint_as_float((unsigned int)p[i].bits << 16);
}
__device__ __forceinline__ void store(float *p, size_t i, float value) { p[i] = value; }
__device__ __forceinline__ void store(bf16 *p, size_t i, float value) { p[i] = to_bf16(value); }

// Exports the template `name##_t` over activations as `name` (f32) and `name_bf16` (bf16): NVRTC
// finds only extern "C" names. PARAMS(T) is its parameter list for activations of type T, ARGS
// the same names as arguments.
#define F32_AND_BF16(name, PARAMS, ARGS)                                                       \
    extern "C" __global__ void name(PARAMS(float)) { name##_t(ARGS); }                          \
    extern "C" __global__ void name##_bf16(PARAMS(bf16)) { name##_t(ARGS); }

#define RELU_BIAS_THREADS 256
#define RELU_BIAS_CHUNK 8192

// x[b, c, y, x] = (pixel[b, y, x, c] - mean[row(b, y)][x*3 + c] + lighting[b, c]) * scale[c],
// one thread per output value so the f32 writes are coalesced (in NCHW the u8 reads stride by
// 3; with `channels_last` x is NHWC and its index is the pixel's).
template <typename T>
__device__ void normalize_t(
    T *x,
    const unsigned char *pixels,
    const float *mean,
    const unsigned int *mean_rows,
    const float *lighting,
    float scale0,
    float scale1,
    float scale2,
    unsigned int batch,
    unsigned int crop,
    unsigned int row_len,
    unsigned int channels_last)
{
    unsigned int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= batch * 3u * crop * crop) return;
    unsigned int xx, y, c, b;
    if (channels_last) {
        c = i % 3u;
        unsigned int t = i / 3u;
        xx = t % crop;
        t /= crop;
        y = t % crop;
        b = t / crop;
    } else {
        xx = i % crop;
        unsigned int t = i / crop;
        y = t % crop;
        t /= crop;
        c = t % 3u;
        b = t / 3u;
    }
    unsigned int r = b * crop + y;
    float pixel = (float)pixels[(r * crop + xx) * 3u + c];
    size_t at = (size_t)mean_rows[r] * row_len + xx * 3u + c;
    float scale = c == 0u ? scale0 : (c == 1u ? scale1 : scale2);
    float value = pixel - mean[at] + lighting[b * 3u + c];
    store(x, i, value * scale);
}

#define NORMALIZE_PARAMS(T)                                                                    \
    T *x, const unsigned char *pixels, const float *mean, const unsigned int *mean_rows,        \
        const float *lighting, float scale0, float scale1, float scale2, unsigned int batch,   \
        unsigned int crop, unsigned int row_len, unsigned int channels_last
#define NORMALIZE_ARGS                                                                         \
    x, pixels, mean, mean_rows, lighting, scale0, scale1, scale2, batch, crop, row_len,          \
        channels_last
F32_AND_BF16(normalize, NORMALIZE_PARAMS, NORMALIZE_ARGS)

// y <- max(y + bias[c], 0) in place. Value i's channel is (i / channel_stride) % channels:
// the stride is the plane's pixels in NCHW, 1 in NHWC.
template <typename T>
__device__ void bias_relu_t(
    T *y, const float *bias, unsigned int n, unsigned int channels, unsigned int channel_stride)
{
    unsigned int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    unsigned int c = (i / channel_stride) % channels;
    store(y, i, fmaxf(load(y, i) + bias[c], 0.0f));
}

#define BIAS_RELU_PARAMS(T) \
    T *y, const float *bias, unsigned int n, unsigned int channels, unsigned int channel_stride
#define BIAS_RELU_ARGS y, bias, n, channels, channel_stride
F32_AND_BF16(bias_relu, BIAS_RELU_PARAMS, BIAS_RELU_ARGS)

// Masks the gradient by the ReLU (dy <- 0 where y <= 0) and reduces each channel's share to
// partial sums: block (s, c) takes the channel's values [s * RELU_BIAS_CHUNK, (s + 1) *
// RELU_BIAS_CHUNK) in (image, pixel) order, each thread a fixed strided subset of them, then a
// fixed tree combines the threads' sums into partial[s * channels + c] (a splits × channels
// matrix, which `bias_backward` then sums down its rows). The split depends only on
// the shape, and there are no atomics, so the result does not depend on scheduling: a resumed
// run reproduces an uninterrupted one. Launched with exactly RELU_BIAS_THREADS threads; as many
// blocks per channel as the channel has chunks, so a large layer fills the GPU (one block per
// channel left conv1's 96 channels on 96 of the H200's 132 SMs).
template <typename T>
__device__ void relu_bias_partials_t(
    T *dy, const T *y, float *partial,
    unsigned int batch, unsigned int channels, unsigned int pixels, unsigned int splits)
{
    __shared__ float sums[RELU_BIAS_THREADS];
    unsigned int s = blockIdx.x;
    unsigned int c = blockIdx.y;
    unsigned int tid = threadIdx.x;
    unsigned int count = batch * pixels;
    unsigned int begin = s * RELU_BIAS_CHUNK;
    unsigned int end = min(count, begin + RELU_BIAS_CHUNK);
    float sum = 0.0f;
    for (unsigned int j = begin + tid; j < end; j += RELU_BIAS_THREADS) {
        unsigned int b = j / pixels;
        unsigned int p = j - b * pixels;
        unsigned int at = (b * channels + c) * pixels + p;
        float g = load(dy, at);
        if (load(y, at) <= 0.0f) {
            g = 0.0f;
            store(dy, at, 0.0f);
        }
        sum += g;
    }
    sums[tid] = sum;
    __syncthreads();
    for (unsigned int half = RELU_BIAS_THREADS / 2; half > 0; half >>= 1) {
        if (tid < half) sums[tid] += sums[tid + half];
        __syncthreads();
    }
    if (tid == 0) partial[s * channels + c] = sums[0];
}

#define RELU_BIAS_PARAMS(T)                                                                   \
    T *dy, const T *y, float *partial, unsigned int batch, unsigned int channels,              \
        unsigned int pixels, unsigned int splits
#define RELU_BIAS_ARGS dy, y, partial, batch, channels, pixels, splits
F32_AND_BF16(relu_bias_partials, RELU_BIAS_PARAMS, RELU_BIAS_ARGS)

// relu_bias_partials for NHWC, where the values are a (batch * pixels) x channels matrix. Block
// (g, s) takes rows [s * RELU_BIAS_ROWS, (s + 1) * RELU_BIAS_ROWS) of channels [g * 32, g * 32 +
// 32): lane tid % 32 is the channel, so a warp reads 32 neighbouring values of one row, and
// the RELU_BIAS_THREADS / 32 warps take every so-many'th row. A fixed tree over the warps then
// gives partial[s * channels + c], summed down by `bias_backward` as before: deterministic.
#define RELU_BIAS_ROWS 1024
#define RELU_BIAS_LANES 32
template <typename T>
__device__ void relu_bias_partials_nhwc_t(
    T *dy, const T *y, float *partial, unsigned int rows, unsigned int channels)
{
    __shared__ float sums[RELU_BIAS_THREADS];
    unsigned int tid = threadIdx.x;
    unsigned int lane = tid % RELU_BIAS_LANES;
    unsigned int warp = tid / RELU_BIAS_LANES;
    unsigned int c = blockIdx.x * RELU_BIAS_LANES + lane;
    unsigned int s = blockIdx.y;
    unsigned int begin = s * RELU_BIAS_ROWS;
    unsigned int end = min(rows, begin + RELU_BIAS_ROWS);
    float sum = 0.0f;
    if (c < channels) {
        for (unsigned int r = begin + warp; r < end; r += RELU_BIAS_THREADS / RELU_BIAS_LANES) {
            size_t at = (size_t)r * channels + c;
            float g = load(dy, at);
            if (load(y, at) <= 0.0f) {
                g = 0.0f;
                store(dy, at, 0.0f);
            }
            sum += g;
        }
    }
    sums[tid] = sum;
    __syncthreads();
    // Halving by whole warps keeps every lane's channel: the warps' sums meet in warp 0.
    for (unsigned int half = RELU_BIAS_THREADS / 2; half >= RELU_BIAS_LANES; half >>= 1) {
        if (tid < half) sums[tid] += sums[tid + half];
        __syncthreads();
    }
    if (tid < RELU_BIAS_LANES && c < channels) partial[s * channels + c] = sums[tid];
}

#define RELU_BIAS_NHWC_PARAMS(T) \
    T *dy, const T *y, float *partial, unsigned int rows, unsigned int channels
#define RELU_BIAS_NHWC_ARGS dy, y, partial, rows, channels
F32_AND_BF16(relu_bias_partials_nhwc, RELU_BIAS_NHWC_PARAMS, RELU_BIAS_NHWC_ARGS)

// LRN's window slides along the channels, so each thread keeps the terms of the channels in
// its window in a ring (indexed by channel mod LRN_RING) and computes every term once instead
// of once per window that holds it. Each window's sum is still taken afresh, in ascending
// channel order, from the same terms, so it rounds exactly like the reference's loop. Windows
// of up to LRN_RING channels (size / 2 <= 7); the Rust side refuses larger ones.
#define LRN_RING 16

// d_c = k + alpha * sum_{|c'-c| <= half} x_c'^2 and y_c = x_c * d_c^-beta. One thread per
// (image, pixel) walking the channels: neighbouring threads read neighbouring pixels of the
// same plane, so every access is coalesced.
template <typename T>
__device__ void lrn_forward_t(
    const T *x, T *y, float *d,
    unsigned int batch, unsigned int channels, unsigned int pixels,
    int half, float k, float alpha, float beta)
{
    unsigned int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= batch * pixels) return;
    unsigned int b = i / pixels;
    unsigned int p = i - b * pixels;
    const T *xs = x + (size_t)b * channels * pixels + p;
    T *ys = y + (size_t)b * channels * pixels + p;
    float *ds = d + (size_t)b * channels * pixels + p;
    int last = (int)channels - 1;
    float squares[LRN_RING];
    int next = 0; // the first channel not yet in the ring
    for (int c = 0; c <= last; ++c) {
        int lo = c - half < 0 ? 0 : c - half;
        int hi = c + half > last ? last : c + half;
        for (; next <= hi; ++next) {
            float v = load(xs, (size_t)next * pixels);
            squares[next & (LRN_RING - 1)] = v * v;
        }
        float sum = 0.0f;
        for (int j = lo; j <= hi; ++j) sum += squares[j & (LRN_RING - 1)];
        float denominator = k + alpha * sum;
        ds[(size_t)c * pixels] = denominator;
        store(ys, (size_t)c * pixels, load(xs, (size_t)c * pixels) * powf(denominator, -beta));
    }
}

#define LRN_FORWARD_PARAMS(T)                                                                 \
    const T *x, T *y, float *d, unsigned int batch, unsigned int channels, unsigned int pixels, \
        int half, float k, float alpha, float beta
#define LRN_FORWARD_ARGS x, y, d, batch, channels, pixels, half, k, alpha, beta
F32_AND_BF16(lrn_forward, LRN_FORWARD_PARAMS, LRN_FORWARD_ARGS)

// dx_c = dy_c * d_c^-beta - 2 alpha beta x_c * sum_{|c'-c| <= half} dy_c' x_c' d_c'^(-beta-1),
// laid out and ordered as lrn_forward, the cross terms kept in a ring as the squares there.
template <typename T>
__device__ void lrn_backward_t(
    const T *x, const float *d, const T *dy, T *dx,
    unsigned int batch, unsigned int channels, unsigned int pixels,
    int half, float alpha, float beta)
{
    unsigned int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= batch * pixels) return;
    unsigned int b = i / pixels;
    unsigned int p = i - b * pixels;
    size_t base = (size_t)b * channels * pixels + p;
    const T *xs = x + base;
    const float *ds = d + base;
    const T *gs = dy + base;
    T *out = dx + base;
    int last = (int)channels - 1;
    float exponent = -beta - 1.0f;
    float terms[LRN_RING];
    int next = 0;
    for (int c = 0; c <= last; ++c) {
        int lo = c - half < 0 ? 0 : c - half;
        int hi = c + half > last ? last : c + half;
        for (; next <= hi; ++next) {
            size_t at = (size_t)next * pixels;
            terms[next & (LRN_RING - 1)] = load(gs, at) * load(xs, at) * powf(ds[at], exponent);
        }
        float cross = 0.0f;
        for (int j = lo; j <= hi; ++j) cross += terms[j & (LRN_RING - 1)];
        size_t at = (size_t)c * pixels;
        store(out, at,
              load(gs, at) * powf(ds[at], -beta) - 2.0f * alpha * beta * load(xs, at) * cross);
    }
}

#define LRN_BACKWARD_PARAMS(T)                                                                \
    const T *x, const float *d, const T *dy, T *dx, unsigned int batch, unsigned int channels, \
        unsigned int pixels, int half, float alpha, float beta
#define LRN_BACKWARD_ARGS x, d, dy, dx, batch, channels, pixels, half, alpha, beta
F32_AND_BF16(lrn_backward, LRN_BACKWARD_PARAMS, LRN_BACKWARD_ARGS)

// LRN in NHWC, where each row (image, pixel) holds its channels together. A block takes
// `rows_per_block` whole rows, a contiguous span of memory: every thread first computes its
// share of the span's squares (each once) into shared memory, then its share of the outputs
// from them. Reads and writes are coalesced, and every value is computed as lrn_forward computes
// it (the window summed afresh in ascending channel order). Dynamic shared memory: rows_per_block
// * channels floats.
template <typename T>
__device__ void lrn_forward_nhwc_t(
    const T *x, T *y, float *d,
    unsigned int rows, unsigned int channels, unsigned int rows_per_block,
    int half, float k, float alpha, float beta)
{
    extern __shared__ float squares[];
    unsigned int first_row = blockIdx.x * rows_per_block;
    if (first_row >= rows) return;
    unsigned int n = min(rows_per_block, rows - first_row) * channels;
    size_t first = (size_t)first_row * channels;
    for (unsigned int e = threadIdx.x; e < n; e += blockDim.x) {
        float v = load(x, first + e);
        squares[e] = v * v;
    }
    __syncthreads();
    int last = (int)channels - 1;
    for (unsigned int e = threadIdx.x; e < n; e += blockDim.x) {
        unsigned int row = e / channels;
        int c = (int)(e - row * channels);
        int lo = c - half < 0 ? 0 : c - half;
        int hi = c + half > last ? last : c + half;
        const float *window = squares + row * channels;
        float sum = 0.0f;
        for (int j = lo; j <= hi; ++j) sum += window[j];
        float denominator = k + alpha * sum;
        d[first + e] = denominator;
        store(y, first + e, load(x, first + e) * powf(denominator, -beta));
    }
}

#define LRN_FORWARD_NHWC_PARAMS(T)                                                            \
    const T *x, T *y, float *d, unsigned int rows, unsigned int channels,                      \
        unsigned int rows_per_block, int half, float k, float alpha, float beta
#define LRN_FORWARD_NHWC_ARGS x, y, d, rows, channels, rows_per_block, half, k, alpha, beta
F32_AND_BF16(lrn_forward_nhwc, LRN_FORWARD_NHWC_PARAMS, LRN_FORWARD_NHWC_ARGS)

// lrn_backward in NHWC, organised as lrn_forward_nhwc: the cross terms dy x d^(-beta-1) of a
// block's rows once into shared memory, then every output from them.
template <typename T>
__device__ void lrn_backward_nhwc_t(
    const T *x, const float *d, const T *dy, T *dx,
    unsigned int rows, unsigned int channels, unsigned int rows_per_block,
    int half, float alpha, float beta)
{
    extern __shared__ float terms[];
    unsigned int first_row = blockIdx.x * rows_per_block;
    if (first_row >= rows) return;
    unsigned int n = min(rows_per_block, rows - first_row) * channels;
    size_t first = (size_t)first_row * channels;
    float exponent = -beta - 1.0f;
    for (unsigned int e = threadIdx.x; e < n; e += blockDim.x) {
        size_t at = first + e;
        terms[e] = load(dy, at) * load(x, at) * powf(d[at], exponent);
    }
    __syncthreads();
    int last = (int)channels - 1;
    for (unsigned int e = threadIdx.x; e < n; e += blockDim.x) {
        unsigned int row = e / channels;
        int c = (int)(e - row * channels);
        int lo = c - half < 0 ? 0 : c - half;
        int hi = c + half > last ? last : c + half;
        const float *window = terms + row * channels;
        float cross = 0.0f;
        for (int j = lo; j <= hi; ++j) cross += window[j];
        size_t at = first + e;
        float g = load(dy, at);
        store(dx, at, g * powf(d[at], -beta) - 2.0f * alpha * beta * load(x, at) * cross);
    }
}

#define LRN_BACKWARD_NHWC_PARAMS(T)                                                           \
    const T *x, const float *d, const T *dy, T *dx, unsigned int rows, unsigned int channels,  \
        unsigned int rows_per_block, int half, float alpha, float beta
#define LRN_BACKWARD_NHWC_ARGS x, d, dy, dx, rows, channels, rows_per_block, half, alpha, beta
F32_AND_BF16(lrn_backward_nhwc, LRN_BACKWARD_NHWC_PARAMS, LRN_BACKWARD_NHWC_ARGS)

// Index within the plane of the first maximum of window (oy, ox), scanning row-major and
// replacing only on a strictly greater value (the reference's rule, NaN included). The plane's
// value `at` lies at plane[at * step]: step 1 in NCHW, the channel count in NHWC.
template <typename T>
__device__ __forceinline__ unsigned int window_argmax(
    const T *plane, size_t step, unsigned int size, unsigned int kernel,
    unsigned int stride, unsigned int oy, unsigned int ox)
{
    unsigned int best_at = (oy * stride) * size + ox * stride;
    float best = load(plane, best_at * step);
    for (unsigned int ky = 0; ky < kernel; ++ky) {
        for (unsigned int kx = 0; kx < kernel; ++kx) {
            unsigned int at = (oy * stride + ky) * size + ox * stride + kx;
            float v = load(plane, at * step);
            if (v > best) {
                best = v;
                best_at = at;
            }
        }
    }
    return best_at;
}

// One thread per output value. The choice is kept for pool_backward as its index within the
// plane, exact as a float: the launch refuses planes of more than 2^24 values.
template <typename T>
__device__ void pool_forward_t(
    const T *x, T *y, float *argmax,
    unsigned int planes, unsigned int size, unsigned int kernel, unsigned int stride,
    unsigned int out)
{
    unsigned int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= planes * out * out) return;
    unsigned int ox = i % out;
    unsigned int t = i / out;
    unsigned int oy = t % out;
    unsigned int plane = t / out;
    const T *xs = x + (size_t)plane * size * size;
    unsigned int at = window_argmax(xs, 1, size, kernel, stride, oy, ox);
    y[i] = xs[at];
    argmax[i] = (float)at;
}

#define POOL_FORWARD_PARAMS(T)                                                                \
    const T *x, T *y, float *argmax, unsigned int planes, unsigned int size, unsigned int kernel, \
        unsigned int stride, unsigned int out
#define POOL_FORWARD_ARGS x, y, argmax, planes, size, kernel, stride, out
F32_AND_BF16(pool_forward, POOL_FORWARD_PARAMS, POOL_FORWARD_ARGS)

// pool_forward in NHWC: one thread per output value (image, oy, ox, c), so neighbouring threads
// read neighbouring channels of each window position.
template <typename T>
__device__ void pool_forward_nhwc_t(
    const T *x, T *y, float *argmax,
    unsigned int images, unsigned int channels, unsigned int size, unsigned int kernel,
    unsigned int stride, unsigned int out)
{
    unsigned int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= images * out * out * channels) return;
    unsigned int c = i % channels;
    unsigned int t = i / channels;
    unsigned int ox = t % out;
    t /= out;
    unsigned int oy = t % out;
    unsigned int b = t / out;
    const T *xs = x + (size_t)b * size * size * channels + c;
    unsigned int at = window_argmax(xs, channels, size, kernel, stride, oy, ox);
    y[i] = xs[(size_t)at * channels];
    argmax[i] = (float)at;
}

// The NHWC pooling kernels' parameters after their three buffers.
#define POOL_NHWC_SHAPE                                                                         \
    unsigned int images, unsigned int channels, unsigned int size, unsigned int kernel,          \
        unsigned int stride, unsigned int out
#define POOL_FORWARD_NHWC_PARAMS(T) const T *x, T *y, float *argmax, POOL_NHWC_SHAPE
#define POOL_FORWARD_NHWC_ARGS x, y, argmax, images, channels, size, kernel, stride, out
F32_AND_BF16(pool_forward_nhwc, POOL_FORWARD_NHWC_PARAMS, POOL_FORWARD_NHWC_ARGS)

// The windows o along one axis that cover input position i: o * stride <= i < o * stride + kernel.
__device__ __forceinline__ void covering_windows(
    unsigned int i, unsigned int kernel, unsigned int stride, unsigned int out,
    unsigned int *lo, unsigned int *hi)
{
    *lo = i >= kernel ? (i - kernel) / stride + 1u : 0u;
    *hi = min(i / stride, out - 1u);
}

// Gather form, one thread per input value: it sums the gradients of the windows whose stored
// choice is this value. Every value is written by one thread and the windows are visited in
// the reference's order (rows, then columns), so there are no atomics and the sums round
// identically. Values no window chose get 0.
template <typename T>
__device__ void pool_backward_t(
    const float *argmax, const T *dy, T *dx,
    unsigned int planes, unsigned int size, unsigned int kernel, unsigned int stride,
    unsigned int out)
{
    unsigned int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= planes * size * size) return;
    unsigned int ix = i % size;
    unsigned int t = i / size;
    unsigned int iy = t % size;
    unsigned int plane = t / size;
    const float *chosen = argmax + (size_t)plane * out * out;
    const T *gs = dy + (size_t)plane * out * out;
    unsigned int self_at = iy * size + ix;
    unsigned int oy_lo, oy_hi, ox_lo, ox_hi;
    covering_windows(iy, kernel, stride, out, &oy_lo, &oy_hi);
    covering_windows(ix, kernel, stride, out, &ox_lo, &ox_hi);
    float sum = 0.0f;
    for (unsigned int oy = oy_lo; oy <= oy_hi; ++oy) {
        for (unsigned int ox = ox_lo; ox <= ox_hi; ++ox) {
            unsigned int w = oy * out + ox;
            if ((unsigned int)chosen[w] == self_at) {
                sum += load(gs, w);
            }
        }
    }
    store(dx, i, sum);
}

#define POOL_BACKWARD_PARAMS(T)                                                               \
    const float *argmax, const T *dy, T *dx, unsigned int planes, unsigned int size,           \
        unsigned int kernel, unsigned int stride, unsigned int out
#define POOL_BACKWARD_ARGS argmax, dy, dx, planes, size, kernel, stride, out
F32_AND_BF16(pool_backward, POOL_BACKWARD_PARAMS, POOL_BACKWARD_ARGS)

// pool_backward in NHWC: one thread per input value (image, iy, ix, c), visiting the windows
// that cover it in the same order.
template <typename T>
__device__ void pool_backward_nhwc_t(
    const float *argmax, const T *dy, T *dx,
    unsigned int images, unsigned int channels, unsigned int size, unsigned int kernel,
    unsigned int stride, unsigned int out)
{
    unsigned int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= images * size * size * channels) return;
    unsigned int c = i % channels;
    unsigned int t = i / channels;
    unsigned int ix = t % size;
    t /= size;
    unsigned int iy = t % size;
    unsigned int b = t / size;
    size_t base = (size_t)b * out * out * channels + c;
    const float *chosen = argmax + base;
    const T *gs = dy + base;
    unsigned int self_at = iy * size + ix;
    unsigned int oy_lo, oy_hi, ox_lo, ox_hi;
    covering_windows(iy, kernel, stride, out, &oy_lo, &oy_hi);
    covering_windows(ix, kernel, stride, out, &ox_lo, &ox_hi);
    float sum = 0.0f;
    for (unsigned int oy = oy_lo; oy <= oy_hi; ++oy) {
        for (unsigned int ox = ox_lo; ox <= ox_hi; ++ox) {
            size_t w = (size_t)(oy * out + ox) * channels;
            if ((unsigned int)chosen[w] == self_at) {
                sum += load(gs, w);
            }
        }
    }
    store(dx, i, sum);
}

#define POOL_BACKWARD_NHWC_PARAMS(T) const float *argmax, const T *dy, T *dx, POOL_NHWC_SHAPE
#define POOL_BACKWARD_NHWC_ARGS argmax, dy, dx, images, channels, size, kernel, stride, out
F32_AND_BF16(pool_backward_nhwc, POOL_BACKWARD_NHWC_PARAMS, POOL_BACKWARD_NHWC_ARGS)

// The layout and type conversions: each between any two of f32 and bf16 (`In` -> `Out`), one
// template per permutation. Instantiated as `name` (f32 -> f32), `name_widen` (bf16 -> f32:
// bf16 activations into the f32 features, a bf16 convolution's filter gradient into f32) and
// `name_narrow` (f32 -> bf16: the features' gradient into bf16 activations, f32 filters into a
// bf16 convolution's).

// (B, C, P) -> (B, P*C), one thread per output value (coalesced writes).
template <typename In, typename Out>
__device__ void to_channels_last_t(
    const In *x, Out *y, unsigned int batch, unsigned int channels, unsigned int pixels)
{
    unsigned int j = blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= batch * channels * pixels) return;
    unsigned int c = j % channels;
    unsigned int t = j / channels;
    unsigned int p = t % pixels;
    unsigned int b = t / pixels;
    store(y, j, load(x, (b * channels + c) * pixels + p));
}

// (B, P*C) -> (B, C, P), one thread per output value.
template <typename In, typename Out>
__device__ void from_channels_last_t(
    const In *y, Out *x, unsigned int batch, unsigned int channels, unsigned int pixels)
{
    unsigned int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= batch * channels * pixels) return;
    unsigned int p = i % pixels;
    unsigned int t = i / pixels;
    unsigned int c = t % channels;
    unsigned int b = t / channels;
    store(x, i, load(y, (b * pixels + p) * channels + c));
}

// y = x over n values (flattening NHWC activations, which are channels-last already).
template <typename In, typename Out>
__device__ void copy_t(const In *x, Out *y, unsigned int n)
{
    unsigned int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    store(y, i, load(x, i));
}

#define PERMUTE_PARAMS(In, Out) \
    const In *src, Out *dst, unsigned int batch, unsigned int channels, unsigned int pixels
#define PERMUTE_ARGS src, dst, batch, channels, pixels
#define CONVERSIONS(In, Out, suffix)                                                           \
    extern "C" __global__ void to_channels_last##suffix(PERMUTE_PARAMS(In, Out))               \
    {                                                                                          \
        to_channels_last_t(PERMUTE_ARGS);                                                      \
    }                                                                                          \
    extern "C" __global__ void from_channels_last##suffix(PERMUTE_PARAMS(In, Out))             \
    {                                                                                          \
        from_channels_last_t(PERMUTE_ARGS);                                                    \
    }                                                                                          \
    extern "C" __global__ void copy##suffix(const In *src, Out *dst, unsigned int n)           \
    {                                                                                          \
        copy_t(src, dst, n);                                                                   \
    }
CONVERSIONS(float, float, )
CONVERSIONS(bf16, float, _widen)
CONVERSIONS(float, bf16, _narrow)

// g' = g + wd*w; v <- mom*v + g'; w <- w - lr*v (PyTorch's momentum SGD).
extern "C" __global__ void sgd(
    float *w, float *v, const float *g, unsigned int n,
    float learning_rate, float momentum, float weight_decay)
{
    unsigned int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float weight = w[i];
    float grad = g[i] + weight_decay * weight;
    float velocity = momentum * v[i] + grad;
    v[i] = velocity;
    w[i] = weight - learning_rate * velocity;
}

// One tensor of sgd_all: its three buffers and the running count of values up to and including
// it (the Rust side writes the table as four 64-bit words per tensor).
struct SgdTensor {
    float *w;
    float *v;
    const float *g;
    unsigned long long end;
};
#define SGD_MAX_TENSORS 32

// `sgd` over every tensor of the model in one launch: value i of the concatenation belongs to
// the first tensor whose running count exceeds i. Each thread walks the concatenation with the
// grid's stride, so its tensor index only grows. The arithmetic is sgd's, value for value.
extern "C" __global__ void sgd_all(
    const SgdTensor *tensors, unsigned int count, unsigned long long total,
    float learning_rate, float momentum, float weight_decay)
{
    __shared__ SgdTensor table[SGD_MAX_TENSORS];
    for (unsigned int t = threadIdx.x; t < count; t += blockDim.x) table[t] = tensors[t];
    __syncthreads();
    unsigned long long stride = (unsigned long long)gridDim.x * blockDim.x;
    unsigned int t = 0;
    for (unsigned long long i = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
         i < total; i += stride) {
        while (table[t].end <= i) ++t;
        size_t j = i - (t == 0 ? 0ull : table[t - 1].end);
        float weight = table[t].w[j];
        float grad = table[t].g[j] + weight_decay * weight;
        float velocity = momentum * table[t].v[j] + grad;
        table[t].v[j] = velocity;
        table[t].w[j] = weight - learning_rate * velocity;
    }
}

// One SplitMix64 step (`seed::splitmix64`).
__device__ unsigned long long splitmix64(unsigned long long x)
{
    unsigned long long z = x + 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

// out[image, unit] = keep if the unit's 32-bit draw is at least `threshold`, else 0: the draw
// of `seed::dropout_draw`, so the host and the device draw the same masks.
extern "C" __global__ void dropout_mask(
    float *out, unsigned long long key, unsigned long long first_image,
    unsigned long long threshold, float keep, unsigned int images, unsigned int units)
{
    unsigned int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= images * units) return;
    unsigned long long image = first_image + i / units, unit = i % units;
    unsigned long long draw = splitmix64(splitmix64(key ^ splitmix64(image)) + unit) >> 32;
    out[i] = draw >= threshold ? keep : 0.0f;
}

// y[r, c] += bias[c] over rows x columns (a fully connected layer without ReLU).
extern "C" __global__ void bias_add(
    float *y, const float *bias, unsigned int n, unsigned int columns)
{
    unsigned int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    y[i] += bias[i % columns];
}

// db[c] = dy[0, c] + dy[1, c] + ... in row order, one thread per column: the reference's order,
// so the sums round identically, and neighbouring threads read neighbouring values of a row.
// A fully connected layer has batch-many rows, too few to be worth splitting into partial sums;
// it also adds up `relu_bias_partials`'s partial sums (one row per split).
extern "C" __global__ void bias_backward(
    const float *dy, float *db, unsigned int rows, unsigned int columns)
{
    unsigned int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= columns) return;
    float sum = 0.0f;
    for (unsigned int r = 0; r < rows; ++r) sum += dy[r * columns + c];
    db[c] = sum;
}

// y = x * m (dropout's mask, forward and backward).
extern "C" __global__ void multiply(const float *x, const float *m, float *y, unsigned int n)
{
    unsigned int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    y[i] = x[i] * m[i];
}

#define SOFTMAX_THREADS 256

// The block's values combined by a fixed tree (deterministic); every thread gets the result.
// Launched with exactly SOFTMAX_THREADS threads. `op` 0: maximum, 1: sum.
__device__ __forceinline__ float softmax_block_reduce(float *tree, float value, int op)
{
    unsigned int tid = threadIdx.x;
    tree[tid] = value;
    __syncthreads();
    for (unsigned int half = SOFTMAX_THREADS / 2; half > 0; half >>= 1) {
        if (tid < half) {
            float other = tree[tid + half];
            tree[tid] = op == 0 ? fmaxf(tree[tid], other) : tree[tid] + other;
        }
        __syncthreads();
    }
    float result = tree[0];
    // The tree is reused by the next reduction: everyone reads the result first.
    __syncthreads();
    return result;
}

// One block per row of `classes` logits z: loss = ln sum exp(z - max) - (z[label] - max) into
// row_stats[r]; into row_stats[rows + r] how many other classes score at least as high as the
// label (a NaN score counts as higher; infinity when the label's score is NaN), from which the
// host counts top-1 and top-5 hits without downloading the logits; and dlogits = (softmax(z) -
// onehot(label)) * scale, scale = 1 / mean_over. Each thread walks the row
// with the block's stride, so every pass is coalesced and rows of any width fit one block. The
// maximum starts from z[0] as the reference's does (fmaxf, like f32::max, passes over NaN), so
// it is the reference's value exactly; the sum differs from its sequential one by rounding
// only. The exponentials are kept in dlogits between the passes, each read back by the thread
// that wrote it. Labels are checked on the host (below `classes`).
extern "C" __global__ void softmax_cross_entropy(
    const float *logits, const unsigned int *labels, float *row_stats, float *dlogits,
    unsigned int classes, float scale)
{
    __shared__ float tree[SOFTMAX_THREADS];
    unsigned int r = blockIdx.x;
    unsigned int tid = threadIdx.x;
    const float *z = logits + (size_t)r * classes;
    float *g = dlogits + (size_t)r * classes;

    float zmax = z[0];
    for (unsigned int c = tid; c < classes; c += SOFTMAX_THREADS) zmax = fmaxf(zmax, z[c]);
    zmax = softmax_block_reduce(tree, zmax, 0);

    float sum = 0.0f;
    for (unsigned int c = tid; c < classes; c += SOFTMAX_THREADS) {
        float e = expf(z[c] - zmax);
        g[c] = e;
        sum += e;
    }
    sum = softmax_block_reduce(tree, sum, 1);

    unsigned int label = labels[r];
    float target = z[label];
    // Counts below 2^24 add exactly in floats, in any order.
    float above = 0.0f;
    for (unsigned int c = tid; c < classes; c += SOFTMAX_THREADS) {
        if (c != label && !(z[c] < target)) above += 1.0f;
    }
    above = softmax_block_reduce(tree, above, 1);
    if (tid == 0) {
        row_stats[r] = logf(sum) - (target - zmax);
        // NVRTC has no INFINITY (no host headers): the bits of +inf.
        row_stats[gridDim.x + r] = isnan(target) ? __int_as_float(0x7f800000) : above;
    }
    for (unsigned int c = tid; c < classes; c += SOFTMAX_THREADS) {
        float p = g[c] / sum;
        g[c] = (c == label ? p - 1.0f : p) * scale;
    }
}
