// layernorm.cu: d2l's AddNorm, out = LayerNorm(dropout(sub) + res), fused into one row kernel,
// and its backward. Twin: src/backend/cpu/layernorm.rs.
//
// Shapes: out, sum, res, sub (T,C); mean, rstd (T,); weight, bias (C,). `sub` may be null (a
// plain LayerNorm of res: the Hugging Face embedding LayerNorm). Dropout element index = row*C +
// col. Biased variance in two passes (mean, then Σ(x-mean)²), rstd = 1/sqrt(var + eps).
//
// forward:  one warp per row; saves sum (the pre-norm input), mean and rstd for backward.
// backward: layernorm_backward_rows, one warp per row: dres = rstd*(g - mean(g) - x̂*mean(g*x̂)) with
//           g = dout*weight (overwritten), dsub = dres * dropout factor (overwritten, if not null);
//           dweight += Σ dout*x̂ and dbias += Σ dout (accumulate) by reduce.cu's lnparams_partial
//           + colsum_finish (fixed order).
// `_bf16` twins: the (T,C) tensors stored as bf16; mean, rstd and the parameters stay float.
#include "common.cuh"

// With bf16 storage the saved sum is rounded to bf16 and the statistics are those of the stored
// sum (read back), so that the backward's x̂ from sum, mean and rstd is the forward's.
template <typename A>
__device__ __forceinline__ void nli_layernorm_forward(A* __restrict__ out, A* __restrict__ sum,
                                                      float* __restrict__ mean, float* __restrict__ rstd,
                                                      const A* __restrict__ res, const A* __restrict__ sub,
                                                      const float* __restrict__ weight,
                                                      const float* __restrict__ bias, float eps, int t, int c,
                                                      unsigned long long seed, unsigned int step, unsigned int site,
                                                      unsigned int thr, float scale, unsigned long long doff) {
    const int lane = threadIdx.x & 31;
    const int row = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    if (row >= t) return;  // whole warps leave together
    const long long base = (long long)row * c;
    nli_dropout d = nli_make_dropout(seed, step, site, thr, scale, doff);
    float acc = 0.0f;
    for (int j = lane; j < c; j += 32) {
        float x = nli_ld(res + base + j);
        float s = sub ? nli_ld(sub + base + j) * nli_dropout_factor(d, (unsigned long long)(base + j)) + x : x;
        nli_st(sum + base + j, s);
        acc += nli_ld(sum + base + j);
    }
    const float inv_c = 1.0f / (float)c;
    const float m = nli_warp_sum(acc) * inv_c;
    float acc2 = 0.0f;
    for (int j = lane; j < c; j += 32) {
        float dx = nli_ld(sum + base + j) - m;
        acc2 += dx * dx;
    }
    const float var = nli_warp_sum(acc2) * inv_c;
    const float r = 1.0f / sqrtf(var + eps);
    for (int j = lane; j < c; j += 32) nli_st(out + base + j, (nli_ld(sum + base + j) - m) * r * weight[j] + bias[j]);
    if (lane == 0) {
        mean[row] = m;
        rstd[row] = r;
    }
}

extern "C" __global__ void layernorm_forward(float* __restrict__ out, float* __restrict__ sum,
                                           float* __restrict__ mean, float* __restrict__ rstd,
                                           const float* __restrict__ res, const float* __restrict__ sub,
                                           const float* __restrict__ weight, const float* __restrict__ bias,
                                           float eps, int t, int c, unsigned long long seed, unsigned int step,
                                           unsigned int site, unsigned int thr, float scale, unsigned long long doff) {
    nli_layernorm_forward(out, sum, mean, rstd, res, sub, weight, bias, eps, t, c, seed, step, site, thr, scale, doff);
}

extern "C" __global__ void layernorm_forward_bf16(unsigned short* __restrict__ out, unsigned short* __restrict__ sum,
                                                  float* __restrict__ mean, float* __restrict__ rstd,
                                                  const unsigned short* __restrict__ res,
                                                  const unsigned short* __restrict__ sub,
                                                  const float* __restrict__ weight, const float* __restrict__ bias,
                                                  float eps, int t, int c, unsigned long long seed, unsigned int step,
                                                  unsigned int site, unsigned int thr, float scale, unsigned long long doff) {
    nli_layernorm_forward(out, sum, mean, rstd, res, sub, weight, bias, eps, t, c, seed, step, site, thr, scale, doff);
}

template <typename A>
__device__ __forceinline__ void nli_layernorm_backward_rows(A* __restrict__ dres, A* __restrict__ dsub,
                                                            const A* __restrict__ dout, const A* __restrict__ sum,
                                                            const float* __restrict__ mean,
                                                            const float* __restrict__ rstd,
                                                            const float* __restrict__ weight, int t, int c,
                                                            unsigned long long seed, unsigned int step,
                                                            unsigned int site, unsigned int thr, float scale, unsigned long long doff) {
    const int lane = threadIdx.x & 31;
    const int row = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    if (row >= t) return;
    const long long base = (long long)row * c;
    const float mu = mean[row], rs = rstd[row];
    float sg = 0.0f, sgx = 0.0f;
    for (int j = lane; j < c; j += 32) {
        float g = nli_ld(dout + base + j) * weight[j];
        sg += g;
        sgx += g * ((nli_ld(sum + base + j) - mu) * rs);
    }
    const float inv_c = 1.0f / (float)c;
    const float mg = nli_warp_sum(sg) * inv_c, mgx = nli_warp_sum(sgx) * inv_c;
    nli_dropout d = nli_make_dropout(seed, step, site, thr, scale, doff);
    for (int j = lane; j < c; j += 32) {
        float v = rs * (nli_ld(dout + base + j) * weight[j] - mg - (nli_ld(sum + base + j) - mu) * rs * mgx);
        nli_st(dres + base + j, v);
        if (dsub) nli_st(dsub + base + j, v * nli_dropout_factor(d, (unsigned long long)(base + j)));
    }
}

extern "C" __global__ void layernorm_backward_rows(float* __restrict__ dres, float* __restrict__ dsub,
                                                 const float* __restrict__ dout, const float* __restrict__ sum,
                                                 const float* __restrict__ mean, const float* __restrict__ rstd,
                                                 const float* __restrict__ weight, int t, int c,
                                                 unsigned long long seed, unsigned int step, unsigned int site,
                                                 unsigned int thr, float scale, unsigned long long doff) {
    nli_layernorm_backward_rows(dres, dsub, dout, sum, mean, rstd, weight, t, c, seed, step, site, thr, scale, doff);
}

extern "C" __global__ void layernorm_backward_rows_bf16(unsigned short* __restrict__ dres,
                                                      unsigned short* __restrict__ dsub,
                                                      const unsigned short* __restrict__ dout,
                                                      const unsigned short* __restrict__ sum,
                                                      const float* __restrict__ mean, const float* __restrict__ rstd,
                                                      const float* __restrict__ weight, int t, int c,
                                                      unsigned long long seed, unsigned int step, unsigned int site,
                                                      unsigned int thr, float scale, unsigned long long doff) {
    nli_layernorm_backward_rows(dres, dsub, dout, sum, mean, rstd, weight, t, c, seed, step, site, thr, scale, doff);
}
