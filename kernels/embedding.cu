// embedding.cu: BERT's input embedding over a packed batch, forward and backward.
//
// forward:  out (T,C) = wte[tokens] (V,C) + wse[segments] (S,C) + wpe[positions] (P,C), one thread
//           per output element. Ids are checked on the host by the data pipeline.
// backward: dwte (V,C) += scatter of dout (T,C) by token id (float atomics: the order of the adds
//           between tokens sharing an id is not fixed on a GPU); dwse (S,C) and dwpe (P,C) += sums
//           in a fixed order (one thread per output element walks the tokens), so they are
//           deterministic. All parameter gradients accumulate.
#include "common.cuh"

extern "C" __global__ void embedding_forward(float* __restrict__ out, const int* __restrict__ tokens,
                                             const int* __restrict__ segments,
                                             const int* __restrict__ positions,
                                             const float* __restrict__ wte, const float* __restrict__ wse,
                                             const float* __restrict__ wpe, int t, int c) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (long long)t * c) return;
    int row = (int)(i / c), ch = (int)(i % c);
    long long tok = tokens[row], seg = segments[row], pos = positions[row];
    // the same association as the CPU twin: (wte + wse) + wpe
    out[i] = (wte[tok * c + ch] + wse[seg * c + ch]) + wpe[pos * c + ch];
}

extern "C" __global__ void embedding_backward_tokens(float* __restrict__ dwte, const int* __restrict__ tokens,
                                                     const float* __restrict__ dout, int t, int c) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (long long)t * c) return;
    int row = (int)(i / c), ch = (int)(i % c);
    atomicAdd(&dwte[(long long)tokens[row] * c + ch], dout[i]);
}

// dtable (R,C) += Σ_{i: ids[i] == r} dout[i], one thread per (r, ch), tokens in order.
extern "C" __global__ void embedding_backward_rows(float* __restrict__ dtable, const int* __restrict__ ids,
                                                   const float* __restrict__ dout, int t, int c, int rows) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (long long)rows * c) return;
    int r = (int)(i / c), ch = (int)(i % c);
    float acc = 0.0f;
    bool any = false;
    for (int j = 0; j < t; ++j) {
        if (ids[j] == r) {
            acc += dout[(long long)j * c + ch];
            any = true;
        }
    }
    if (any) dtable[i] += acc;
}
