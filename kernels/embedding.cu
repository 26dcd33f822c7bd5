// embedding.cu: BERT's input embedding over a packed batch, forward and backward.
//
// forward:  out (T,C) = wte[tokens] (V,C) + wse[segments] (S,C) + wpe[positions] (P,C), one thread
//           per output element. Ids are checked on the host by the data pipeline.
// backward: dwte (V,C) += scatter of dout (T,C) by token id (float atomics: the order of the adds
//           between tokens sharing an id is not fixed on a GPU); dwpe (P,C) += sums over the
//           sequences in order (embedding_backward_positions); dwse (S,C) by reduce.cu's
//           rowsel_partial + colsum_finish (fixed order). All parameter gradients accumulate.
// Each kernel has a `_bf16` twin for bf16 activations (out, dout); the tables stay float.
#include "common.cuh"

template <typename A>
__device__ __forceinline__ void nli_embedding_forward(A* __restrict__ out, const int* __restrict__ tokens,
                                                      const int* __restrict__ segments,
                                                      const int* __restrict__ positions, const float* __restrict__ wte,
                                                      const float* __restrict__ wse, const float* __restrict__ wpe,
                                                      int t, int c) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (long long)t * c) return;
    int row = (int)(i / c), ch = (int)(i % c);
    long long tok = tokens[row], seg = segments[row], pos = positions[row];
    // the same association as the CPU twin: (wte + wse) + wpe
    nli_st(out + i, (wte[tok * c + ch] + wse[seg * c + ch]) + wpe[pos * c + ch]);
}

extern "C" __global__ void embedding_forward(float* __restrict__ out, const int* __restrict__ tokens,
                                             const int* __restrict__ segments,
                                             const int* __restrict__ positions,
                                             const float* __restrict__ wte, const float* __restrict__ wse,
                                             const float* __restrict__ wpe, int t, int c) {
    nli_embedding_forward(out, tokens, segments, positions, wte, wse, wpe, t, c);
}

extern "C" __global__ void embedding_forward_bf16(unsigned short* __restrict__ out, const int* __restrict__ tokens,
                                                  const int* __restrict__ segments,
                                                  const int* __restrict__ positions,
                                                  const float* __restrict__ wte, const float* __restrict__ wse,
                                                  const float* __restrict__ wpe, int t, int c) {
    nli_embedding_forward(out, tokens, segments, positions, wte, wse, wpe, t, c);
}

template <typename A>
__device__ __forceinline__ void nli_embedding_backward_tokens(float* __restrict__ dwte, const int* __restrict__ tokens,
                                                              const A* __restrict__ dout, int t, int c) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (long long)t * c) return;
    int row = (int)(i / c), ch = (int)(i % c);
    atomicAdd(&dwte[(long long)tokens[row] * c + ch], nli_ld(dout + i));
}

extern "C" __global__ void embedding_backward_tokens(float* __restrict__ dwte, const int* __restrict__ tokens,
                                                     const float* __restrict__ dout, int t, int c) {
    nli_embedding_backward_tokens(dwte, tokens, dout, t, c);
}

extern "C" __global__ void embedding_backward_tokens_bf16(float* __restrict__ dwte, const int* __restrict__ tokens,
                                                          const unsigned short* __restrict__ dout, int t, int c) {
    nli_embedding_backward_tokens(dwte, tokens, dout, t, c);
}

// dwpe (P,C) += Σ_b dout[cu_seqlens[b] + p] over the sequences longer than p, one thread per
// (p, ch), sequences in order (deterministic).
template <typename A>
__device__ __forceinline__ void nli_embedding_backward_positions(float* __restrict__ dwpe,
                                                                 const int* __restrict__ cu_seqlens,
                                                                 const A* __restrict__ dout, int b, int c, int rows) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (long long)rows * c) return;
    int pos = (int)(i / c), ch = (int)(i % c);
    float acc = 0.0f;
    bool any = false;
    for (int s = 0; s < b; ++s) {
        int start = cu_seqlens[s];
        if (cu_seqlens[s + 1] - start > pos) {
            acc += nli_ld(dout + ((long long)start + pos) * c + ch);
            any = true;
        }
    }
    if (any) dwpe[i] += acc;
}

extern "C" __global__ void embedding_backward_positions(float* __restrict__ dwpe, const int* __restrict__ cu_seqlens,
                                                        const float* __restrict__ dout, int b, int c, int rows) {
    nli_embedding_backward_positions(dwpe, cu_seqlens, dout, b, c, rows);
}

extern "C" __global__ void embedding_backward_positions_bf16(float* __restrict__ dwpe,
                                                             const int* __restrict__ cu_seqlens,
                                                             const unsigned short* __restrict__ dout, int b, int c,
                                                             int rows) {
    nli_embedding_backward_positions(dwpe, cu_seqlens, dout, b, c, rows);
}
