// convert.cu: f32 -> bf16 copies (round to nearest even, NaN kept): the weights' bf16 copy when
// bf16 storage starts (Adam keeps it after), and the operands of the first bf16 path
// (`NLI_BERT_BF16_GEMM=copies`). out (N,) u16, in (N,) f32. And bf16 -> f32 (exact).
#include "common.cuh"

extern "C" __global__ void convert_f32_to_bf16(unsigned short* __restrict__ out, const float* __restrict__ in,
                                               long long n) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    out[i] = nli_f32_to_bf16(in[i]);
}

// out (N,) f32 = in (N,) bf16, exact: bf16 activations for the f32 attention kernels (head sizes
// the flash kernels do not take).
extern "C" __global__ void convert_bf16_to_f32(float* __restrict__ out, const unsigned short* __restrict__ in,
                                               long long n) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    out[i] = nli_bf16_to_f32(in[i]);
}
