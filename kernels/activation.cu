// activation.cu: the element-wise kernels around the linear layers.
//
// activation_forward / activation_backward: out = act(inp); dinp = act'(inp)·dout (overwrites). act: 0 ReLU,
//   1 GELU (erf), 2 GELU (tanh approximation), 3 tanh. Same formulas as the CPU twin
//   (src/backend/cpu/activation.rs). ReLU's gradient uses the forward output (0 where out <= 0).
// bias_forward: out (N,OC) += bias (OC) per row (after the GEMM).
// (the bias gradient, Σ_rows dout, is reduce.cu's colsum_partial + colsum_finish)
// dropout_forward / dropout_backward: out = x · factor(idx) (0 or 1/(1-p)), idx = element index.
// Every kernel has a `_bf16` twin for bf16 activations (the bias stays float; bias_forward_bf16
// reads the product from f32 scratch and writes the biased sum rounded to bf16).
#include "common.cuh"

#define NLI_SQRT_2_OVER_PI 0.7978845608028654f
#define NLI_INV_SQRT_2PI 0.3989422804014327f
#define NLI_FRAC_1_SQRT_2 0.70710678118654752f

__device__ __forceinline__ float nli_gelu_cdf(float x) { return 0.5f * (1.0f + erff(x * NLI_FRAC_1_SQRT_2)); }

__device__ __forceinline__ float nli_gelu_tanh_u(float x) {
    return NLI_SQRT_2_OVER_PI * (x + 0.044715f * x * x * x);
}

template <typename A>
__device__ __forceinline__ void nli_activation_forward(A* __restrict__ out, const A* __restrict__ inp, long long n,
                                                       int act) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float x = nli_ld(inp + i);
    float y;
    if (act == 0) {
        y = x < 0.0f ? 0.0f : x;
    } else if (act == 1) {
        y = x * nli_gelu_cdf(x);
    } else if (act == 2) {
        y = 0.5f * x * (1.0f + tanhf(nli_gelu_tanh_u(x)));
    } else {
        y = tanhf(x);
    }
    nli_st(out + i, y);
}

extern "C" __global__ void activation_forward(float* __restrict__ out, const float* __restrict__ inp, long long n,
                                       int act) {
    nli_activation_forward(out, inp, n, act);
}

extern "C" __global__ void activation_forward_bf16(unsigned short* __restrict__ out,
                                                   const unsigned short* __restrict__ inp, long long n, int act) {
    nli_activation_forward(out, inp, n, act);
}

template <typename A>
__device__ __forceinline__ void nli_activation_backward(A* __restrict__ dinp, const A* __restrict__ dout,
                                                        const A* __restrict__ inp, const A* __restrict__ out,
                                                        long long n, int act) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float dy = nli_ld(dout + i);
    float d;
    if (act == 0) {
        d = nli_ld(out + i) > 0.0f ? dy : 0.0f;
    } else if (act == 1) {
        float x = nli_ld(inp + i);
        float pdf = NLI_INV_SQRT_2PI * expf(-0.5f * x * x);
        d = dy * (nli_gelu_cdf(x) + x * pdf);
    } else if (act == 2) {
        float x = nli_ld(inp + i);
        float th = tanhf(nli_gelu_tanh_u(x));
        float du = NLI_SQRT_2_OVER_PI * (1.0f + 3.0f * 0.044715f * x * x);
        d = dy * (0.5f * (1.0f + th) + 0.5f * x * (1.0f - th * th) * du);
    } else {
        float y = nli_ld(out + i);
        d = dy * (1.0f - y * y);
    }
    nli_st(dinp + i, d);
}

extern "C" __global__ void activation_backward(float* __restrict__ dinp, const float* __restrict__ dout,
                                        const float* __restrict__ inp, const float* __restrict__ out,
                                        long long n, int act) {
    nli_activation_backward(dinp, dout, inp, out, n, act);
}

extern "C" __global__ void activation_backward_bf16(unsigned short* __restrict__ dinp,
                                                    const unsigned short* __restrict__ dout,
                                                    const unsigned short* __restrict__ inp,
                                                    const unsigned short* __restrict__ out, long long n, int act) {
    nli_activation_backward(dinp, dout, inp, out, n, act);
}

extern "C" __global__ void bias_forward(float* __restrict__ out, const float* __restrict__ bias, int n, int oc) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (long long)n * oc) return;
    out[i] += bias[i % oc];
}

// bf16 activations: out (N,OC) bf16 = prod (N,OC) f32 + bias, rounded once (the product went to
// f32 scratch, so that the bias is added before the rounding, as a fused epilogue does).
extern "C" __global__ void bias_forward_bf16(unsigned short* __restrict__ out, const float* __restrict__ prod,
                                             const float* __restrict__ bias, int n, int oc) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (long long)n * oc) return;
    out[i] = nli_f32_to_bf16(prod[i] + bias[i % oc]);
}

template <typename A>
__device__ __forceinline__ void nli_dropout_apply(A* __restrict__ out, const A* __restrict__ x, long long n,
                                                  unsigned long long seed, unsigned int step, unsigned int site,
                                                  unsigned int thr, float scale, unsigned long long doff) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    nli_dropout d = nli_make_dropout(seed, step, site, thr, scale, doff);
    nli_st(out + i, nli_ld(x + i) * nli_dropout_factor(d, (unsigned long long)i));
}

extern "C" __global__ void dropout_forward(float* __restrict__ out, const float* __restrict__ x, long long n,
                                           unsigned long long seed, unsigned int step, unsigned int site,
                                           unsigned int thr, float scale, unsigned long long doff) {
    nli_dropout_apply(out, x, n, seed, step, site, thr, scale, doff);
}

extern "C" __global__ void dropout_forward_bf16(unsigned short* __restrict__ out, const unsigned short* __restrict__ x,
                                                long long n, unsigned long long seed, unsigned int step,
                                                unsigned int site, unsigned int thr, float scale, unsigned long long doff) {
    nli_dropout_apply(out, x, n, seed, step, site, thr, scale, doff);
}

extern "C" __global__ void dropout_backward(float* __restrict__ dinp, const float* __restrict__ dout,
                                            long long n, unsigned long long seed, unsigned int step,
                                            unsigned int site, unsigned int thr, float scale, unsigned long long doff) {
    nli_dropout_apply(dinp, dout, n, seed, step, site, thr, scale, doff);
}

extern "C" __global__ void dropout_backward_bf16(unsigned short* __restrict__ dinp,
                                                 const unsigned short* __restrict__ dout, long long n,
                                                 unsigned long long seed, unsigned int step, unsigned int site,
                                                 unsigned int thr, float scale, unsigned long long doff) {
    nli_dropout_apply(dinp, dout, n, seed, step, site, thr, scale, doff);
}
