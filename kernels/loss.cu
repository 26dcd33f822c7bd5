// loss.cu: softmax cross-entropy over the classifier's logits. Twin: src/backend/cpu/loss.rs.
//
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
