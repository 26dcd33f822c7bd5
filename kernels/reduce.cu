// reduce.cu: column sums over the rows of packed (T, C) tensors, in two deterministic stages, for
// the parameter gradients that sum over tokens (bias, LayerNorm weight/bias, segment embedding).
// One thread per column walking all T rows would leave most of the GPU idle and take T steps.
//
// Stage 1, grid (ceil(C/32), chunks, R), block (32, 8): block (x, chunk, r) sums rows
//   chunk*rows_per_chunk .. +rows_per_chunk of 32 columns, each of the 8 thread rows taking every
//   8th row, then the 8 partial sums are added in order through shared memory:
//   colsum_partial:   partial[chunk, col]    = Σ x[row, col]
//   rowsel_partial:   partial[r, chunk, col] = Σ_{ids[row] == r} x[row, col]   (r = blockIdx.z)
//   lnparams_partial: partial[0, chunk, col] = Σ dout·(sum − mean)·rstd, partial[1, chunk, col] = Σ dout
//   (each stage-1 kernel has a `_bf16` twin reading bf16 activations; the partial sums are float)
// Stage 2, colsum_finish: out[s, col] += Σ_chunk partial[s, chunk, col] (chunks in order), one
//   thread per (s, col). The result does not depend on the schedule: the same bits every run.
#include "common.cuh"

#define NLI_RED_Y 8

__device__ __forceinline__ void nli_red_store(float acc, float* dst) {
    __shared__ float part[NLI_RED_Y][33];
    part[threadIdx.y][threadIdx.x] = acc;
    __syncthreads();
    if (threadIdx.y == 0) {
        float s = 0.0f;
        for (int k = 0; k < NLI_RED_Y; ++k) s += part[k][threadIdx.x];
        if (dst) *dst = s;
    }
}

template <typename A>
__device__ __forceinline__ void nli_colsum_partial(float* __restrict__ partial, const A* __restrict__ x, int n, int c,
                                                   int rows_per_chunk) {
    const int col = blockIdx.x * 32 + threadIdx.x;
    const int r0 = blockIdx.y * rows_per_chunk;
    const int r1 = min(n, r0 + rows_per_chunk);
    float acc = 0.0f;
    if (col < c)
        for (int row = r0 + threadIdx.y; row < r1; row += NLI_RED_Y) acc += nli_ld(x + (long long)row * c + col);
    nli_red_store(acc, col < c ? &partial[(long long)blockIdx.y * c + col] : nullptr);
}

extern "C" __global__ void colsum_partial(float* __restrict__ partial, const float* __restrict__ x, int n, int c,
                                          int rows_per_chunk) {
    nli_colsum_partial(partial, x, n, c, rows_per_chunk);
}

extern "C" __global__ void colsum_partial_bf16(float* __restrict__ partial, const unsigned short* __restrict__ x,
                                               int n, int c, int rows_per_chunk) {
    nli_colsum_partial(partial, x, n, c, rows_per_chunk);
}

template <typename A>
__device__ __forceinline__ void nli_rowsel_partial(float* __restrict__ partial, const int* __restrict__ ids,
                                                   const A* __restrict__ x, int n, int c, int rows_per_chunk) {
    const int col = blockIdx.x * 32 + threadIdx.x;
    const int r0 = blockIdx.y * rows_per_chunk;
    const int r1 = min(n, r0 + rows_per_chunk);
    const int want = blockIdx.z;
    float acc = 0.0f;
    if (col < c)
        for (int row = r0 + threadIdx.y; row < r1; row += NLI_RED_Y)
            if (ids[row] == want) acc += nli_ld(x + (long long)row * c + col);
    nli_red_store(acc, col < c ? &partial[((long long)want * gridDim.y + blockIdx.y) * c + col] : nullptr);
}

extern "C" __global__ void rowsel_partial(float* __restrict__ partial, const int* __restrict__ ids,
                                          const float* __restrict__ x, int n, int c, int rows_per_chunk) {
    nli_rowsel_partial(partial, ids, x, n, c, rows_per_chunk);
}

extern "C" __global__ void rowsel_partial_bf16(float* __restrict__ partial, const int* __restrict__ ids,
                                               const unsigned short* __restrict__ x, int n, int c,
                                               int rows_per_chunk) {
    nli_rowsel_partial(partial, ids, x, n, c, rows_per_chunk);
}

template <typename A>
__device__ __forceinline__ void nli_lnparams_partial(float* __restrict__ partial, const A* __restrict__ dout,
                                                     const A* __restrict__ sum, const float* __restrict__ mean,
                                                     const float* __restrict__ rstd, int n, int c,
                                                     int rows_per_chunk) {
    const int col = blockIdx.x * 32 + threadIdx.x;
    const int r0 = blockIdx.y * rows_per_chunk;
    const int r1 = min(n, r0 + rows_per_chunk);
    float pw = 0.0f, pb = 0.0f;
    if (col < c)
        for (int row = r0 + threadIdx.y; row < r1; row += NLI_RED_Y) {
            const long long i = (long long)row * c + col;
            const float dy = nli_ld(dout + i);
            pw += dy * ((nli_ld(sum + i) - mean[row]) * rstd[row]);
            pb += dy;
        }
    const long long chunk_off = (long long)blockIdx.y * c + col;
    const long long plane = (long long)gridDim.y * c;
    nli_red_store(pw, col < c ? &partial[chunk_off] : nullptr);
    __syncthreads();  // the shared buffer is reused
    nli_red_store(pb, col < c ? &partial[plane + chunk_off] : nullptr);
}

extern "C" __global__ void lnparams_partial(float* __restrict__ partial, const float* __restrict__ dout,
                                            const float* __restrict__ sum, const float* __restrict__ mean,
                                            const float* __restrict__ rstd, int n, int c, int rows_per_chunk) {
    nli_lnparams_partial(partial, dout, sum, mean, rstd, n, c, rows_per_chunk);
}

extern "C" __global__ void lnparams_partial_bf16(float* __restrict__ partial, const unsigned short* __restrict__ dout,
                                                 const unsigned short* __restrict__ sum,
                                                 const float* __restrict__ mean, const float* __restrict__ rstd, int n,
                                                 int c, int rows_per_chunk) {
    nli_lnparams_partial(partial, dout, sum, mean, rstd, n, c, rows_per_chunk);
}

// out (S, C) += Σ_chunk partial (S, chunks, C); grid over S*C threads.
extern "C" __global__ void colsum_finish(float* __restrict__ out, const float* __restrict__ partial, int s,
                                         int chunks, int c) {
    const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (long long)s * c) return;
    const int plane = (int)(i / c), col = (int)(i % c);
    const float* p = partial + (long long)plane * chunks * c + col;
    float acc = 0.0f;
    for (int k = 0; k < chunks; ++k) acc += p[(long long)k * c];
    out[i] += acc;
}
