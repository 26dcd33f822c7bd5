// Test kernels for the CUDA emulator itself (tests/emu_runtime.rs). Valid, self-contained CUDA;
// compiled into the emulator only, not into COMBINED / NVRTC. Some are wrong on purpose (a missing
// barrier, a deadlock) to show that the emulator catches them.

#ifndef NLI_DYNAMIC_SHARED
#define NLI_DYNAMIC_SHARED(type, name) extern __shared__ type name[]
#endif

// Tree sum of x[blockIdx.x*blockDim.x ..] in shared memory: out[blockIdx.x]. blockDim.x is a
// power of two <= 1024.
extern "C" __global__ void emu_test_block_sum(const float* __restrict__ x, float* __restrict__ out, int n) {
  __shared__ float buf[1024];
  const unsigned tid = threadIdx.x;
  const int i = blockIdx.x * blockDim.x + tid;
  buf[tid] = i < n ? x[i] : 0.0f;
  __syncthreads();
  for (unsigned s = blockDim.x / 2; s > 0; s >>= 1) {
    if (tid < s) buf[tid] += buf[tid + s];
    __syncthreads();
  }
  if (tid == 0) out[blockIdx.x] = buf[0];
}

// The same with the barrier after the loads missing: a thread may read buf[tid + s] before its
// owner wrote it.
extern "C" __global__ void emu_test_block_sum_racy(const float* __restrict__ x, float* __restrict__ out, int n) {
  __shared__ float buf[1024];
  const unsigned tid = threadIdx.x;
  const int i = blockIdx.x * blockDim.x + tid;
  buf[tid] = i < n ? x[i] : 0.0f;
  for (unsigned s = blockDim.x / 2; s > 0; s >>= 1) {
    if (tid < s) buf[tid] += buf[tid + s];
    __syncthreads();
  }
  if (tid == 0) out[blockIdx.x] = buf[0];
}

// The same with the barrier inside the loop missing: a level may read a partial sum the level
// before has not finished.
extern "C" __global__ void emu_test_block_sum_racy_loop(const float* __restrict__ x, float* __restrict__ out,
                                                        int n) {
  __shared__ float buf[1024];
  const unsigned tid = threadIdx.x;
  const int i = blockIdx.x * blockDim.x + tid;
  buf[tid] = i < n ? x[i] : 0.0f;
  __syncthreads();
  for (unsigned s = blockDim.x / 2; s > 0; s >>= 1) {
    if (tid < s) buf[tid] += buf[tid + s];
  }
  __syncthreads();
  if (tid == 0) out[blockIdx.x] = buf[0];
}

// Sum over a block of any size (partial last warp included) with warp shuffles: each warp reduces
// its existing lanes, then warp 0 reduces the warp sums. With `careless` the partial warp adds
// what it shuffles from lanes that do not exist (undefined on a GPU, NaN on the emulator).
extern "C" __global__ void emu_test_warp_block_sum(const float* __restrict__ x, float* __restrict__ out, int n,
                                                   int careless) {
  __shared__ float warp_sums[32];
  const unsigned tid = threadIdx.x, lane = tid & 31u, base = tid & ~31u;
  const int i = blockIdx.x * blockDim.x + tid;
  float v = i < n ? x[i] : 0.0f;
  unsigned k = min(32u, blockDim.x - base);
  unsigned mask = k == 32 ? 0xffffffffu : (1u << k) - 1u;
  for (unsigned off = 16; off > 0; off >>= 1) {
    float o = __shfl_down_sync(careless ? 0xffffffffu : mask, v, off);
    if (careless || lane + off < k) v += o;
  }
  if (lane == 0) warp_sums[tid / 32] = v;
  __syncthreads();
  if (tid < 32) {
    const unsigned nwarps = (blockDim.x + 31) / 32;
    k = min(32u, blockDim.x);
    mask = k == 32 ? 0xffffffffu : (1u << k) - 1u;
    v = lane < nwarps ? warp_sums[lane] : 0.0f;
    for (unsigned off = 16; off > 0; off >>= 1) {
      float o = __shfl_down_sync(mask, v, off);
      if (lane + off < k) v += o;
    }
    if (tid == 0) out[blockIdx.x] = v;
  }
}

// Every shuffle flavour with source offset `delta`; out is (6, blockDim.x), flags is (3, blockDim.x).
extern "C" __global__ void emu_test_shuffles(const float* __restrict__ x, float* __restrict__ out,
                                             unsigned* __restrict__ flags, int delta) {
  const int t = threadIdx.x, n = blockDim.x;
  const float v = x[t];
  out[0 * n + t] = __shfl_xor_sync(0xffffffffu, v, delta);
  out[1 * n + t] = __shfl_down_sync(0xffffffffu, v, delta);
  out[2 * n + t] = __shfl_up_sync(0xffffffffu, v, delta);
  out[3 * n + t] = __shfl_sync(0xffffffffu, v, (t * 7 + delta) & 31);
  out[4 * n + t] = __shfl_down_sync(0xffffffffu, v, delta, 8);
  out[5 * n + t] = __shfl_xor_sync(0xffffffffu, v, delta, 16);
  flags[0 * n + t] = __ballot_sync(0xffffffffu, v > 0.0f);
  flags[1 * n + t] = __any_sync(0xffffffffu, v > 100.0f);
  flags[2 * n + t] = __all_sync(0xffffffffu, v > -100.0f);
}

// Shuffles of int, unsigned, double and long long; one warp.
extern "C" __global__ void emu_test_shuffle_types(int* oi, unsigned* ou, double* od, long long* ol) {
  const int t = threadIdx.x;
  oi[t] = __shfl_xor_sync(0xffffffffu, t * -3, 1);
  ou[t] = __shfl_down_sync(0xffffffffu, 0x80000000u + (unsigned)t, 1);
  od[t] = __shfl_up_sync(0xffffffffu, t * 0.5 + 1e10, 1);
  ol[t] = __shfl_sync(0xffffffffu, (long long)t << 40, 31 - t);
  __syncwarp();
}

// Atomics from every thread with i < n.
extern "C" __global__ void emu_test_atomics(int* count, float* fsum, unsigned long long* usum, double* dsum,
                                            int* imax, int* imin, unsigned* slots, int n) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= n) return;
  atomicAdd(count, 1);
  atomicAdd(fsum, 0.5f);
  atomicAdd(usum, (unsigned long long)i);
  atomicAdd(dsum, i * 0.25);
  atomicMax(imax, i * 7 % 1000);
  atomicMin(imin, 1000 - i);
  atomicCAS(&slots[i % 16], 0u, (unsigned)i + 1u);
}

// Dynamic shared memory (blockDim.x floats): `unwritten` gets what each thread reads before anyone
// wrote its slot (the emulator's poison), `out` the block's values reversed.
extern "C" __global__ void emu_test_dynamic_shared(const float* __restrict__ x, float* __restrict__ out,
                                                   float* __restrict__ unwritten) {
  NLI_DYNAMIC_SHARED(float, smem);
  const unsigned t = threadIdx.x, i = blockIdx.x * blockDim.x + t;
  unwritten[i] = smem[t];
  smem[t] = x[i];
  __syncthreads();
  out[i] = smem[blockDim.x - 1 - t];
}

// What each thread reads from a static __shared__ array before writing its own slot.
extern "C" __global__ void emu_test_static_shared(unsigned* out) {
  __shared__ unsigned s[64];
  const unsigned t = threadIdx.x;
  out[blockIdx.x * blockDim.x + t] = s[t];
  s[t] = 7u;
}

// Each thread writes its threadIdx, blockIdx, blockDim and gridDim (12 values) at its global
// linear index.
extern "C" __global__ void emu_test_indices(unsigned* out) {
  const unsigned block = (blockIdx.z * gridDim.y + blockIdx.y) * gridDim.x + blockIdx.x;
  const unsigned thread = (threadIdx.z * blockDim.y + threadIdx.y) * blockDim.x + threadIdx.x;
  unsigned* o = out + 12u * (block * blockDim.x * blockDim.y * blockDim.z + thread);
  o[0] = threadIdx.x, o[1] = threadIdx.y, o[2] = threadIdx.z;
  o[3] = blockIdx.x, o[4] = blockIdx.y, o[5] = blockIdx.z;
  o[6] = blockDim.x, o[7] = blockDim.y, o[8] = blockDim.z;
  o[9] = gridDim.x, o[10] = gridDim.y, o[11] = gridDim.z;
}

// __syncthreads_count / _and / _or; out is (3, blockDim.x).
extern "C" __global__ void emu_test_sync_count(int* out) {
  const int t = threadIdx.x, n = blockDim.x;
  out[t] = __syncthreads_count(t % 3 == 0);
  out[n + t] = __syncthreads_and(t < n);
  out[2 * n + t] = __syncthreads_or(t == n - 1);
}

// One value of every parameter kind, written back as doubles.
extern "C" __global__ void emu_test_arg_kinds(double* out, int a, unsigned int b, long long c,
                                              unsigned long long d, float e, double f) {
  out[0] = a, out[1] = b, out[2] = (double)c, out[3] = (double)d, out[4] = e, out[5] = f;
}

// Deadlock: lane 5 waits at a barrier while the rest of its warp waits for it in a shuffle.
extern "C" __global__ void emu_test_deadlock(float* out) {
  float v = (float)threadIdx.x;
  if (threadIdx.x == 5) __syncthreads();
  v = __shfl_xor_sync(0xffffffffu, v, 1);
  __syncthreads();
  out[threadIdx.x] = v;
}

// Threads of one block at two different barriers.
extern "C" __global__ void emu_test_divergent_barrier(float* out) {
  if (threadIdx.x < 32) {
    __syncthreads();
    out[threadIdx.x] = 1.0f;
  } else {
    __syncthreads();
    out[threadIdx.x] = 2.0f;
  }
}

// Half a warp shuffles with xor, the other half with down.
extern "C" __global__ void emu_test_mismatched_shuffle(float* out) {
  float v = (float)threadIdx.x;
  if (threadIdx.x < 16) v = __shfl_xor_sync(0xffffffffu, v, 1);
  else v = __shfl_down_sync(0xffffffffu, v, 1);
  out[threadIdx.x] = v;
}

// Thread `at` traps.
extern "C" __global__ void emu_test_trap(float* out, int at) {
  if ((int)threadIdx.x == at) __trap();
  out[threadIdx.x] = 1.0f;
}

// Threads past `live` return at once; the rest sum their thread ids through shared memory across
// two barriers, which must not wait for the exited threads. out[blockIdx.x] = Σ_{t<live} t.
extern "C" __global__ void emu_test_early_exit(int* out, int live) {
  __shared__ int partial[1024];
  const int t = threadIdx.x;
  if (t >= live) return;
  partial[t] = t;
  __syncthreads();
  if (t == 0) {
    int s = 0;
    for (int i = 0; i < live; ++i) s += partial[i];
    partial[0] = s;
  }
  __syncthreads();
  if (t == live - 1) out[blockIdx.x] = partial[0];
}

// Float, double and integer intrinsics of the emulator's math layer, one thread.
extern "C" __global__ void emu_test_math(float* of, double* od, unsigned* ou, float x, double y) {
  of[0] = expf(x), of[1] = logf(x), of[2] = tanhf(x), of[3] = erff(x), of[4] = sqrtf(x);
  of[5] = fabsf(-x), of[6] = fmaxf(x, 2.0f), of[7] = rsqrtf(x), of[8] = __expf(x), of[9] = __fdividef(x, 3.0f);
  of[10] = fmaf(x, 2.0f, 1.0f), of[11] = max(x, 0.25f), of[12] = exp(x), of[13] = tanh(x), of[14] = __logf(x);
  od[0] = exp(y), od[1] = tanh(y), od[2] = sqrt(y), od[3] = erf(y), od[4] = max(y, 2.0), od[5] = fma(y, y, y);
  ou[0] = (unsigned)max(-3, 4), ou[1] = min(7u, 5u), ou[2] = __popc(0xF0F0u), ou[3] = (unsigned)__clz(1);
  ou[4] = (unsigned)__ffs(8), ou[5] = __umulhi(0x80000000u, 6u), ou[6] = __float_as_uint(x);
  ou[7] = __brev(1u), ou[8] = (unsigned)__float2int_rn(2.5f), ou[9] = (unsigned)__float2int_rn(-1e20f);
}

// One m16n8k16 bf16 tensor-core product per warp, operands loaded by the PTX ISA's per-lane
// fragment layout (g = lane / 4, t = lane % 4): warp w of block b multiplies matrix set
// s = b * (blockDim.x / 32) + w: d[s] (16x8) = a[s] (16x16, row-major bf16) · bm[s] (16x8,
// row-major bf16) + c[s] (16x8). `reps` > 1 accumulates the same product again.
#ifdef NLI_EMU
#define EMU_TEST_MMA(d, a, b) nli_emu::mma_m16n8k16_bf16(d, a, b, d)
#else
#define EMU_TEST_MMA(d, a, b)                                                                          \
  asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "   \
               "{%8,%9}, {%0,%1,%2,%3};"                                                             \
               : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])                                      \
               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]))
#endif
extern "C" __global__ void emu_test_mma_bf16(float* __restrict__ d_out, const unsigned short* __restrict__ a,
                                             const unsigned short* __restrict__ bm, const float* __restrict__ c,
                                             int reps) {
  const int lane = threadIdx.x & 31;
  const int s = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
  const int g = lane >> 2, t = lane & 3;
  const unsigned short* as = a + s * 256;
  const unsigned short* bs = bm + s * 128;
  unsigned af[4], bf[2];
  float d[4];
  for (int r = 0; r < 4; ++r) {
    const int row = g + 8 * (r & 1), col = 2 * t + 8 * (r >> 1);
    af[r] = (unsigned)as[row * 16 + col] | ((unsigned)as[row * 16 + col + 1] << 16);
  }
  for (int r = 0; r < 2; ++r) {
    const int k = 2 * t + 8 * r;
    bf[r] = (unsigned)bs[k * 8 + g] | ((unsigned)bs[(k + 1) * 8 + g] << 16);
  }
  for (int e = 0; e < 4; ++e) d[e] = c[s * 128 + (g + 8 * (e >> 1)) * 8 + 2 * t + (e & 1)];
  for (int r = 0; r < reps; ++r) EMU_TEST_MMA(d, af, bf);
  for (int e = 0; e < 4; ++e) d_out[s * 128 + (g + 8 * (e >> 1)) * 8 + 2 * t + (e & 1)] = d[e];
}
