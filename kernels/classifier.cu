// classifier.cu: the classifier head's own kernels. Twin: src/backend/cpu/classifier.rs.
// (The pooler, Linear + tanh, and the output layer are matmul and activation launches.)
//
// cls_forward: out (B,C) = x (T,C) at row cu_seqlens[b] (zero row for an empty sequence).
// cls_backward: dx (T,C) rows cu_seqlens[b] = dout (B,C) rows (dx zeroed by the launcher first).
//   `_bf16` twins: x and dx stored as bf16 (the head's (B,C) tensors stay float).
// crossentropy_forward: one thread per example: probs (B,K) = softmax(logits (B,K)) (max-shifted),
//   losses (B,) = -(logit[y] - max - log Σ exp(logit - max)); a label outside 0..K gives NaN.
// crossentropy_backward: dlogits (B,K) = scale * (probs - onehot(label)), overwritten.
#include "common.cuh"

extern "C" __global__ void crossentropy_forward(float* __restrict__ losses, float* __restrict__ probs,
                                                const float* __restrict__ logits, const int* __restrict__ labels,
                                                int b, int k) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= b) return;
    const float* x = logits + (long long)i * k;
    float* p = probs + (long long)i * k;
    float mx = NLI_NEG_INF;
    for (int j = 0; j < k; ++j) mx = fmaxf(mx, x[j]);
    float s = 0.0f;
    for (int j = 0; j < k; ++j) {
        p[j] = expf(x[j] - mx);
        s += p[j];
    }
    for (int j = 0; j < k; ++j) p[j] /= s;
    const int y = labels[i];
    losses[i] = (y >= 0 && y < k) ? -(x[y] - mx - logf(s)) : NLI_NAN;
}

extern "C" __global__ void crossentropy_backward(float* __restrict__ dlogits, const float* __restrict__ probs,
                                                 const int* __restrict__ labels, int b, int k, float scale) {
    const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (long long)b * k) return;
    const int row = (int)(i / k), j = (int)(i % k);
    const float onehot = labels[row] == j ? 1.0f : 0.0f;
    dlogits[i] = scale * (probs[i] - onehot);
}

template <typename A>
__device__ __forceinline__ void nli_cls_forward(float* __restrict__ out, const A* __restrict__ x,
                                                const int* __restrict__ cu_seqlens, int b, int c) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (long long)b * c) return;
    int s = (int)(i / c), ch = (int)(i % c);
    int row = cu_seqlens[s];
    out[i] = cu_seqlens[s + 1] > row ? nli_ld(x + (long long)row * c + ch) : 0.0f;
}

extern "C" __global__ void cls_forward(float* __restrict__ out, const float* __restrict__ x,
                                       const int* __restrict__ cu_seqlens, int b, int c) {
    nli_cls_forward(out, x, cu_seqlens, b, c);
}

extern "C" __global__ void cls_forward_bf16(float* __restrict__ out, const unsigned short* __restrict__ x,
                                            const int* __restrict__ cu_seqlens, int b, int c) {
    nli_cls_forward(out, x, cu_seqlens, b, c);
}

template <typename A>
__device__ __forceinline__ void nli_cls_backward(A* __restrict__ dx, const float* __restrict__ dout,
                                                 const int* __restrict__ cu_seqlens, int b, int c) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (long long)b * c) return;
    int s = (int)(i / c), ch = (int)(i % c);
    int row = cu_seqlens[s];
    if (cu_seqlens[s + 1] > row) nli_st(dx + (long long)row * c + ch, dout[i]);
}

extern "C" __global__ void cls_backward(float* __restrict__ dx, const float* __restrict__ dout,
                                       const int* __restrict__ cu_seqlens, int b, int c) {
    nli_cls_backward(dx, dout, cu_seqlens, b, c);
}

extern "C" __global__ void cls_backward_bf16(unsigned short* __restrict__ dx, const float* __restrict__ dout,
                                            const int* __restrict__ cu_seqlens, int b, int c) {
    nli_cls_backward(dx, dout, cu_seqlens, b, c);
}

// *flag = 1 when any of losses[0..n) is not finite, else 0 (one block, any size). A step graph
// computes it after the loss so that Adam skips a bad batch on the device (adam.cu's `skip`),
// as the host does without graphs.
extern "C" __global__ void loss_nonfinite(const float* __restrict__ losses, int n, int* __restrict__ flag) {
    int bad = 0;
    for (int i = threadIdx.x; i < n; i += blockDim.x) bad |= !(fabsf(losses[i]) <= 3.402823466e38f);
    bad = __syncthreads_or(bad);
    if (threadIdx.x == 0) *flag = bad;
}

// The metrics of one step into slot `slot` of a ring (4 words per slot: the loss sum as a double
// in words 0-1, the correct count in word 2, the example count in word 3), so that a run can read
// many steps' metrics at once instead of waiting for each step. One thread, in example order:
// the loss sum is Σ (double)losses[i] in order, the argmax the first maximum with NaN below every
// number, as the host computes them (src/model/bert.rs: Model::output, argmax).
extern "C" __global__ void step_metrics(unsigned int* __restrict__ ring, int slot, const float* __restrict__ losses,
                                        const float* __restrict__ logits, const int* __restrict__ labels, int b,
                                        int k) {
    if (blockIdx.x != 0 || threadIdx.x != 0) return;
    double sum = 0.0;
    int correct = 0;
    for (int i = 0; i < b; ++i) {
        sum += (double)losses[i];
        const float* x = logits + (long long)i * k;
        int best = 0;
        for (int j = 1; j < k; ++j) {
            float xb = x[best], xj = x[j];
            if (xj > xb || (xb != xb && xj == xj)) best = j;
        }
        correct += best == labels[i] ? 1 : 0;
    }
    unsigned int* s = ring + 4ll * slot;
    unsigned long long bits = (unsigned long long)__double_as_longlong(sum);
    s[0] = (unsigned int)bits;
    s[1] = (unsigned int)(bits >> 32);
    s[2] = (unsigned int)correct;
    s[3] = (unsigned int)b;
}
