// adam.cu: one Adam / AdamW step over a flat parameter buffer (all tensors at once: the parameters
// live in one buffer, so one launch is the multi-tensor step), with PyTorch's `_single_tensor_adam`
// order of operations, as the CPU twin (src/backend/cpu/adam.rs):
//   Adam:  g <- g + wd*p;   AdamW: p <- p*decay (decay = 1 - lr*wd, computed in f64 on the host)
//   m <- small_w ? m + w*(g - m) : g - (g - m)*(1 - w)      (torch.lerp, w = 1 - beta1)
//   v <- v*beta2 + (1 - beta2)*g*g
//   p <- p + neg_step * m / (sqrt(v)/bc2 + eps)
// Host scalars are rounded once to float. adam_update_rows does the same for whole rows listed in
// `rows` of a (R, row_len) table; zero_rows zeroes such rows. A negative row is padding (a list
// rounded up to a fixed capacity, so that a step graph keeps its launch shape) and is skipped.
// `skip` (may be null): when it points at a non-zero flag the step does nothing (the loss of the
// batch was not finite, see classifier.cu's loss_nonfinite; the parameters stay as they were).
// `p16` (may be null): the parameters' bf16 copy (bf16 storage), written with each new value
// (round to nearest even) in the same pass, so that no product converts a weight.
#include "common.cuh"

__device__ __forceinline__ void nli_adam_one(float* p, unsigned short* p16, const float* g, float* m, float* v,
                                             long long i, float l2,
                                             float decay, float lerp_w, float lerp_w1, int small_w, float beta2,
                                             float one_minus_beta2, float neg_step, float bc2, float eps) {
    float gi = g[i];
    float pi = p[i];
    if (l2 != 0.0f) gi = gi + l2 * pi;
    if (decay != 1.0f) pi = pi * decay;
    float mi = m[i];
    mi = small_w ? mi + lerp_w * (gi - mi) : gi - (gi - mi) * lerp_w1;
    float vi = v[i] * beta2 + one_minus_beta2 * gi * gi;
    float denom = sqrtf(vi) / bc2 + eps;
    pi = pi + neg_step * mi / denom;
    p[i] = pi;
    if (p16 != nullptr) p16[i] = nli_f32_to_bf16(pi);
    m[i] = mi;
    v[i] = vi;
}

extern "C" __global__ void adam_update(float* __restrict__ p, unsigned short* __restrict__ p16,
                                       const float* __restrict__ g, float* __restrict__ m,
                                       float* __restrict__ v, long long n, float l2, float decay, float lerp_w,
                                       float lerp_w1, int small_w, float beta2, float one_minus_beta2,
                                       float neg_step, float bc2, float eps, const int* __restrict__ skip) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    if (skip != nullptr && *skip != 0) return;
    nli_adam_one(p, p16, g, m, v, i, l2, decay, lerp_w, lerp_w1, small_w, beta2, one_minus_beta2, neg_step, bc2, eps);
}

// grid: (ceil(row_len / blockDim.x), nrows)
extern "C" __global__ void adam_update_rows(float* __restrict__ p, unsigned short* __restrict__ p16,
                                            const float* __restrict__ g,
                                            float* __restrict__ m, float* __restrict__ v,
                                            const int* __restrict__ rows, int row_len, float l2, float decay,
                                            float lerp_w, float lerp_w1, int small_w, float beta2,
                                            float one_minus_beta2, float neg_step, float bc2, float eps,
                                            const int* __restrict__ skip) {
    int j = blockIdx.x * blockDim.x + threadIdx.x;
    int r = rows[blockIdx.y];
    if (j >= row_len || r < 0) return;
    if (skip != nullptr && *skip != 0) return;
    long long i = (long long)r * row_len + j;
    nli_adam_one(p, p16, g, m, v, i, l2, decay, lerp_w, lerp_w1, small_w, beta2, one_minus_beta2, neg_step, bc2, eps);
}

// grid: (ceil(row_len / blockDim.x), nrows)
extern "C" __global__ void zero_rows(float* __restrict__ buf, const int* __restrict__ rows, int row_len) {
    int j = blockIdx.x * blockDim.x + threadIdx.x;
    int r = rows[blockIdx.y];
    if (j >= row_len || r < 0) return;
    buf[(long long)r * row_len + j] = 0.0f;
}
