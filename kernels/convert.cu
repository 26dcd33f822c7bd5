// convert.cu: f32 -> bf16 copies (round to nearest even, NaN kept) of the GEMM operands in the
// bf16 mode (`--precision bf16` on a GPU): master weights and activations stay f32; each product
// reads bf16 copies and accumulates in fp32. out (N,) u16, in (N,) f32.
#include "common.cuh"

extern "C" __global__ void convert_f32_to_bf16(unsigned short* __restrict__ out, const float* __restrict__ in,
                                               long long n) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    out[i] = nli_f32_to_bf16(in[i]);
}
