// The CUDA emulator's device-side header: what a kernel in kernels/*.cu needs from CUDA, as C++17
// over the fiber runtime in runtime.cpp. build.rs includes it (with NLI_EMU defined) before the
// kernel sources and compiles both with g++/clang++; __CUDA_ARCH__ stays undefined.
//
// Each CUDA thread of a block is a fiber on one OS thread; __syncthreads and the warp collectives
// yield to the block's scheduler, which resumes the threads in a random (seeded) order. Static
// __shared__ variables are `static thread_local` (shared by the fibers of the block on that OS
// thread) and, through the NLI_EMU_SHARED_POISON marks build.rs adds, filled with 0xFF bytes (NaN)
// when a block first reaches them; dynamic shared memory (NLI_DYNAMIC_SHARED) is filled likewise
// at every block start. A shuffle from an inactive lane returns all-ones bits (NaN) too.
#ifndef NLI_EMU_H
#define NLI_EMU_H

#ifndef NLI_EMU
#define NLI_EMU 1
#endif
#undef __CUDA_ARCH__

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <math.h>
#include <type_traits>
#include <utility>

// ---- Qualifiers ------------------------------------------------------------------------------
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))
#define __constant__
#define __managed__
#define __shared__ static thread_local

// ---- Vector types ----------------------------------------------------------------------------
struct uint3 { unsigned int x, y, z; };
struct int3 { int x, y, z; };
struct float3 { float x, y, z; };
struct dim3 {
  unsigned int x, y, z;
  constexpr dim3(unsigned int x_ = 1, unsigned int y_ = 1, unsigned int z_ = 1) : x(x_), y(y_), z(z_) {}
  constexpr dim3(uint3 v) : x(v.x), y(v.y), z(v.z) {}
  constexpr operator uint3() const { return uint3{x, y, z}; }
};
struct __align__(8) float2 { float x, y; };
struct __align__(16) float4 { float x, y, z, w; };
struct __align__(8) int2 { int x, y; };
struct __align__(16) int4 { int x, y, z, w; };
struct __align__(8) uint2 { unsigned int x, y; };
struct __align__(16) uint4 { unsigned int x, y, z, w; };
struct __align__(16) double2 { double x, y; };
struct __align__(4) ushort2 { unsigned short x, y; };
struct __align__(8) ushort4 { unsigned short x, y, z, w; };
inline float2 make_float2(float x, float y) { return float2{x, y}; }
inline float3 make_float3(float x, float y, float z) { return float3{x, y, z}; }
inline float4 make_float4(float x, float y, float z, float w) { return float4{x, y, z, w}; }
inline int2 make_int2(int x, int y) { return int2{x, y}; }
inline int3 make_int3(int x, int y, int z) { return int3{x, y, z}; }
inline int4 make_int4(int x, int y, int z, int w) { return int4{x, y, z, w}; }
inline uint2 make_uint2(unsigned x, unsigned y) { return uint2{x, y}; }
inline uint3 make_uint3(unsigned x, unsigned y, unsigned z) { return uint3{x, y, z}; }
inline uint4 make_uint4(unsigned x, unsigned y, unsigned z, unsigned w) { return uint4{x, y, z, w}; }
inline double2 make_double2(double x, double y) { return double2{x, y}; }
inline ushort2 make_ushort2(unsigned short x, unsigned short y) { return ushort2{x, y}; }
inline ushort4 make_ushort4(unsigned short x, unsigned short y, unsigned short z, unsigned short w) {
  return ushort4{x, y, z, w};
}

// ---- Runtime interface (runtime.cpp) ---------------------------------------------------------
namespace nli_emu {

// What a running CUDA thread can see of itself and of its block.
struct ThreadRegs {
  uint3 tid;
  unsigned lane;
  unsigned warp;
};
struct BlockRegs {
  uint3 bid;
  dim3 bdim;
  dim3 gdim;
  unsigned char* dyn_shared;
  unsigned dyn_bytes;
  unsigned long long gen;  // unique per block run on this OS thread (shared-memory poisoning)
};

// One kernel of the registry build.rs generates: `fn` unpacks cuLaunchKernel-style arguments.
struct KernelEntry {
  const char* name;
  void (*fn)(void** args);
  int nargs;
};

enum WarpOp : int {
  kSyncwarp = 0,
  kShflIdx,
  kShflUp,
  kShflDown,
  kShflXor,
  kBallot,
  kAny,
  kAll,
  kReduceAdd,
  kReduceMin,
  kReduceMax,
  kReduceAnd,
  kReduceOr,
  kReduceXor,
  kMmaBf16,
};
enum BarrierOp : int { kBarSync = 0, kBarCount, kBarAnd, kBarOr };

// The operands of one lane in a warp-wide mma (see mma_m16n8k16_bf16 below).
struct MmaOperands {
  unsigned a[4];
  unsigned b[2];
  float c[4];
  float d[4];
};

// A block-wide barrier; returns the count/and/or of `pred` over the block for those ops.
int barrier(int op, int pred, const char* file, int line);
// A warp collective over the lanes in `mask`; `value` holds `size` bytes; `param` is the source
// lane, delta or xor mask (shuffles) or 1 for signed reductions.
unsigned long long warp_collective(int op, unsigned mask, unsigned long long value, int size, int param,
                                   int width, const char* file, int line);
// The non-exited lanes of the calling thread's warp.
unsigned activemask();
// Ends the kernel with an error (reported by nli_emu_launch), e.g. __trap() or a failed assert.
[[noreturn]] void fail(const char* what, const char* file, int line);
// A per-OS-thread counter standing in for the clock.
long long clock_tick();

// Bits of an arithmetic value in the low bytes of a u64, and back.
template <class T>
inline unsigned long long to_bits(T v) {
  unsigned long long b = 0;
  std::memcpy(&b, &v, sizeof(T));
  return b;
}
template <class T>
inline T from_bits(unsigned long long b) {
  T v;
  std::memcpy(&v, &b, sizeof(T));
  return v;
}

template <class T>
inline T shuffle(int op, unsigned mask, T var, int param, int width, const char* file, int line) {
  static_assert(std::is_arithmetic<T>::value && (sizeof(T) == 4 || sizeof(T) == 8),
                "warp shuffles take 4- or 8-byte arithmetic values (as in CUDA)");
  return from_bits<T>(warp_collective(op, mask, to_bits(var), (int)sizeof(T), param, width, file, line));
}

// Calls a kernel with cuLaunchKernel-style arguments: args[i] points to argument i's value.
template <class... A, std::size_t... I>
inline void invoke_impl(void (*f)(A...), void** args, std::index_sequence<I...>) {
  f(*static_cast<typename std::remove_cv<A>::type*>(args[I])...);
}
template <class... A>
inline void invoke(void (*f)(A...), void** args) {
  invoke_impl(f, args, std::index_sequence_for<A...>{});
}

// Kind codes of build.rs: p pointer, i int, u unsigned, l long long, m unsigned long long, f, d.
template <class T>
constexpr char kind_char() {
  return std::is_pointer<T>::value                            ? 'p'
         : std::is_same<T, int>::value                        ? 'i'
         : std::is_same<T, unsigned int>::value               ? 'u'
         : std::is_same<T, long long>::value                  ? 'l'
         : std::is_same<T, unsigned long long>::value         ? 'm'
         : std::is_same<T, float>::value                      ? 'f'
         : std::is_same<T, double>::value                     ? 'd'
                                                              : '?';
}
template <class F>
struct Signature;
template <class... A>
struct Signature<void (*)(A...)> {
  static constexpr bool is(const char* s) {
    const char k[] = {kind_char<A>()..., '\0'};
    for (std::size_t i = 0; i <= sizeof...(A); ++i)
      if (k[i] != s[i]) return false;
    return true;
  }
};
template <class F>
constexpr bool signature_is(const char* s) {
  return Signature<F>::is(s);
}

// ---- bf16 / f16 stored as 16-bit integers (what common.cuh does with inline PTX on CUDA) ----
inline unsigned short f32_to_bf16_rn(float f) {
  unsigned u = from_bits<unsigned>(to_bits(f));
  if ((u & 0x7fffffffu) > 0x7f800000u) return 0x7fff;  // canonical NaN, as cvt.rn.bf16.f32
  u += 0x7fffu + ((u >> 16) & 1u);
  return (unsigned short)(u >> 16);
}
inline float bf16_to_f32(unsigned short h) { return from_bits<float>((unsigned long long)h << 16); }
inline unsigned short f32_to_f16_rn(float f) {
  unsigned x = from_bits<unsigned>(to_bits(f));
  unsigned sign = (x >> 16) & 0x8000u, ax = x & 0x7fffffffu;
  if (ax > 0x7f800000u) return 0x7fff;                         // NaN
  if (ax >= 0x477ff000u) return (unsigned short)(sign | 0x7c00u);  // rounds to infinity
  if (ax < 0x38800000u) {                                      // f16 subnormal or zero
    if (ax <= 0x33000000u) return (unsigned short)sign;        // <= 2^-25 rounds to zero
    unsigned e = ax >> 23, m = (ax & 0x7fffffu) | 0x800000u, shift = 126 - e;
    unsigned q = m >> shift, rem = m & ((1u << shift) - 1), half = 1u << (shift - 1);
    if (rem > half || (rem == half && (q & 1u))) ++q;
    return (unsigned short)(sign | q);
  }
  unsigned h = (((ax >> 23) - 112) << 10) | ((ax & 0x7fffffu) >> 13), rem = ax & 0x1fffu;
  if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) ++h;
  return (unsigned short)(sign | h);
}
inline float f16_to_f32(unsigned short h) {
  unsigned sign = ((unsigned)h & 0x8000u) << 16, e = ((unsigned)h >> 10) & 0x1fu, m = (unsigned)h & 0x3ffu;
  if (e == 0) {
    float v = std::ldexp((float)m, -24);
    return sign ? -v : v;
  }
  if (e == 31) return from_bits<float>(sign | 0x7f800000u | (m << 13));
  return from_bits<float>(sign | ((e + 112) << 23) | (m << 13));
}

// mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {d}, {a}, {b}, {c}: a warp collective of all
// 32 lanes, each with its fragments in the PTX ISA's layout (runtime.cpp, Runner::mma_bf16).
inline void mma_m16n8k16_bf16(float d[4], const unsigned a[4], const unsigned b[2], const float c[4],
                              const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  MmaOperands o;
  for (int i = 0; i < 4; ++i) o.a[i] = a[i], o.c[i] = c[i], o.d[i] = 0.0f;
  o.b[0] = b[0];
  o.b[1] = b[1];
  warp_collective(kMmaBf16, 0xFFFFFFFFu, (unsigned long long)reinterpret_cast<std::uintptr_t>(&o), 8, 0, 32, file,
                  line);
  for (int i = 0; i < 4; ++i) d[i] = o.d[i];
}

}  // namespace nli_emu

extern __thread nli_emu::ThreadRegs* nli_emu_thread;
extern __thread nli_emu::BlockRegs* nli_emu_block;

// ---- Built-in variables ----------------------------------------------------------------------
#define threadIdx (static_cast<const uint3&>(nli_emu_thread->tid))
#define blockIdx (static_cast<const uint3&>(nli_emu_block->bid))
#define blockDim (static_cast<const dim3&>(nli_emu_block->bdim))
#define gridDim (static_cast<const dim3&>(nli_emu_block->gdim))
static constexpr int warpSize = 32;

// ---- Shared memory ---------------------------------------------------------------------------
// `NLI_DYNAMIC_SHARED(float, buf);` inside a kernel: the launch's dynamic shared memory (on CUDA,
// common.cuh defines it as `extern __shared__ float buf[]`). Filled with 0xFF at each block start.
#define NLI_DYNAMIC_SHARED(type, name) type* name = reinterpret_cast<type*>(nli_emu_block->dyn_shared)
// Added by build.rs after each `__shared__` declaration in a function body: the first thread of a
// block to reach it fills the variable with 0xFF bytes (NaN), so reads of unwritten shared memory
// show up instead of silently seeing another block's data.
#define NLI_EMU_SHARED_POISON(name)                                  \
  do {                                                               \
    static thread_local unsigned long long nli_emu_gen_ = 0;         \
    if (nli_emu_gen_ != nli_emu_block->gen) {                        \
      nli_emu_gen_ = nli_emu_block->gen;                             \
      std::memset((void*)&(name), 0xFF, sizeof(name));               \
    }                                                                \
  } while (0)

// ---- Synchronisation -------------------------------------------------------------------------
#define NLI_EMU_SITE const char *file = __builtin_FILE(), int line = __builtin_LINE()
inline void __syncthreads(NLI_EMU_SITE) { nli_emu::barrier(nli_emu::kBarSync, 0, file, line); }
inline int __syncthreads_count(int pred, NLI_EMU_SITE) {
  return nli_emu::barrier(nli_emu::kBarCount, pred, file, line);
}
inline int __syncthreads_and(int pred, NLI_EMU_SITE) { return nli_emu::barrier(nli_emu::kBarAnd, pred, file, line); }
inline int __syncthreads_or(int pred, NLI_EMU_SITE) { return nli_emu::barrier(nli_emu::kBarOr, pred, file, line); }
inline void __syncwarp(unsigned mask = 0xffffffffu, NLI_EMU_SITE) {
  nli_emu::warp_collective(nli_emu::kSyncwarp, mask, 0, 4, 0, 32, file, line);
}
template <class T>
inline T __shfl_sync(unsigned mask, T var, int srcLane, int width = 32, NLI_EMU_SITE) {
  return nli_emu::shuffle(nli_emu::kShflIdx, mask, var, srcLane, width, file, line);
}
template <class T>
inline T __shfl_up_sync(unsigned mask, T var, unsigned delta, int width = 32, NLI_EMU_SITE) {
  return nli_emu::shuffle(nli_emu::kShflUp, mask, var, (int)delta, width, file, line);
}
template <class T>
inline T __shfl_down_sync(unsigned mask, T var, unsigned delta, int width = 32, NLI_EMU_SITE) {
  return nli_emu::shuffle(nli_emu::kShflDown, mask, var, (int)delta, width, file, line);
}
template <class T>
inline T __shfl_xor_sync(unsigned mask, T var, int laneMask, int width = 32, NLI_EMU_SITE) {
  return nli_emu::shuffle(nli_emu::kShflXor, mask, var, laneMask, width, file, line);
}
inline unsigned __ballot_sync(unsigned mask, int pred, NLI_EMU_SITE) {
  return (unsigned)nli_emu::warp_collective(nli_emu::kBallot, mask, pred != 0, 4, 0, 32, file, line);
}
inline int __any_sync(unsigned mask, int pred, NLI_EMU_SITE) {
  return (int)nli_emu::warp_collective(nli_emu::kAny, mask, pred != 0, 4, 0, 32, file, line);
}
inline int __all_sync(unsigned mask, int pred, NLI_EMU_SITE) {
  return (int)nli_emu::warp_collective(nli_emu::kAll, mask, pred != 0, 4, 0, 32, file, line);
}
inline unsigned __activemask() { return nli_emu::activemask(); }
#define NLI_EMU_REDUCE(NAME, OP)                                                                   \
  inline unsigned NAME(unsigned mask, unsigned v, NLI_EMU_SITE) {                                  \
    return (unsigned)nli_emu::warp_collective(nli_emu::OP, mask, v, 4, 0, 32, file, line);         \
  }                                                                                                \
  inline int NAME(unsigned mask, int v, NLI_EMU_SITE) {                                            \
    return (int)(unsigned)nli_emu::warp_collective(nli_emu::OP, mask, (unsigned)v, 4, 1, 32, file, line); \
  }
NLI_EMU_REDUCE(__reduce_add_sync, kReduceAdd)
NLI_EMU_REDUCE(__reduce_min_sync, kReduceMin)
NLI_EMU_REDUCE(__reduce_max_sync, kReduceMax)
inline unsigned __reduce_and_sync(unsigned mask, unsigned v, NLI_EMU_SITE) {
  return (unsigned)nli_emu::warp_collective(nli_emu::kReduceAnd, mask, v, 4, 0, 32, file, line);
}
inline unsigned __reduce_or_sync(unsigned mask, unsigned v, NLI_EMU_SITE) {
  return (unsigned)nli_emu::warp_collective(nli_emu::kReduceOr, mask, v, 4, 0, 32, file, line);
}
inline unsigned __reduce_xor_sync(unsigned mask, unsigned v, NLI_EMU_SITE) {
  return (unsigned)nli_emu::warp_collective(nli_emu::kReduceXor, mask, v, 4, 0, 32, file, line);
}
#undef NLI_EMU_REDUCE
inline void __threadfence() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
inline void __threadfence_block() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
inline void __threadfence_system() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
inline void __nanosleep(unsigned) {}
inline long long clock64() { return nli_emu::clock_tick(); }
[[noreturn]] inline void __trap(NLI_EMU_SITE) { nli_emu::fail("__trap()", file, line); }
#undef assert
#define assert(e) ((e) ? (void)0 : ::nli_emu::fail("assertion failed: " #e, __FILE__, __LINE__))

// ---- Atomics (relaxed, as CUDA's) --------------------------------------------------------------
namespace nli_emu {
template <class T, class F>
inline T atomic_update(T* a, F f) {
  T old = __atomic_load_n(a, __ATOMIC_RELAXED);
  while (!__atomic_compare_exchange_n(a, &old, f(old), false, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) {
  }
  return old;
}
template <class T, class U>
inline T atomic_float_add(T* a, T v) {
  U old = atomic_update(reinterpret_cast<U*>(a), [v](U o) { return (U)to_bits(from_bits<T>(o) + v); });
  return from_bits<T>(old);
}
}  // namespace nli_emu
#define NLI_EMU_INT_ATOMICS(T)                                                                            \
  inline T atomicAdd(T* a, T v) { return __atomic_fetch_add(a, v, __ATOMIC_RELAXED); }                    \
  inline T atomicExch(T* a, T v) { return __atomic_exchange_n(a, v, __ATOMIC_RELAXED); }                  \
  inline T atomicAnd(T* a, T v) { return __atomic_fetch_and(a, v, __ATOMIC_RELAXED); }                    \
  inline T atomicOr(T* a, T v) { return __atomic_fetch_or(a, v, __ATOMIC_RELAXED); }                      \
  inline T atomicXor(T* a, T v) { return __atomic_fetch_xor(a, v, __ATOMIC_RELAXED); }                    \
  inline T atomicMin(T* a, T v) { return nli_emu::atomic_update(a, [v](T o) { return v < o ? v : o; }); } \
  inline T atomicMax(T* a, T v) { return nli_emu::atomic_update(a, [v](T o) { return v > o ? v : o; }); } \
  inline T atomicCAS(T* a, T cmp, T v) {                                                                  \
    __atomic_compare_exchange_n(a, &cmp, v, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED);                   \
    return cmp;                                                                                           \
  }
NLI_EMU_INT_ATOMICS(int)
NLI_EMU_INT_ATOMICS(unsigned int)
NLI_EMU_INT_ATOMICS(unsigned long long)
#undef NLI_EMU_INT_ATOMICS
inline long long atomicMin(long long* a, long long v) {
  return nli_emu::atomic_update(a, [v](long long o) { return v < o ? v : o; });
}
inline long long atomicMax(long long* a, long long v) {
  return nli_emu::atomic_update(a, [v](long long o) { return v > o ? v : o; });
}
inline int atomicSub(int* a, int v) { return __atomic_fetch_sub(a, v, __ATOMIC_RELAXED); }
inline unsigned atomicSub(unsigned* a, unsigned v) { return __atomic_fetch_sub(a, v, __ATOMIC_RELAXED); }
inline unsigned short atomicCAS(unsigned short* a, unsigned short cmp, unsigned short v) {
  __atomic_compare_exchange_n(a, &cmp, v, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED);
  return cmp;
}
inline unsigned atomicInc(unsigned* a, unsigned v) {
  return nli_emu::atomic_update(a, [v](unsigned o) { return o >= v ? 0u : o + 1; });
}
inline unsigned atomicDec(unsigned* a, unsigned v) {
  return nli_emu::atomic_update(a, [v](unsigned o) { return (o == 0 || o > v) ? v : o - 1; });
}
inline float atomicAdd(float* a, float v) { return nli_emu::atomic_float_add<float, unsigned>(a, v); }
inline double atomicAdd(double* a, double v) {
  return nli_emu::atomic_float_add<double, unsigned long long>(a, v);
}
inline float atomicExch(float* a, float v) {
  return nli_emu::from_bits<float>(atomicExch(reinterpret_cast<unsigned*>(a), (unsigned)nli_emu::to_bits(v)));
}

// ---- Loads and stores with cache hints --------------------------------------------------------
template <class T> inline T __ldg(const T* p) { return *p; }
template <class T> inline T __ldcg(const T* p) { return *p; }
template <class T> inline T __ldca(const T* p) { return *p; }
template <class T> inline T __ldcs(const T* p) { return *p; }
template <class T> inline T __ldlu(const T* p) { return *p; }
template <class T> inline T __ldcv(const T* p) { return *p; }
template <class T> inline void __stwb(T* p, T v) { *p = v; }
template <class T> inline void __stcg(T* p, T v) { *p = v; }
template <class T> inline void __stcs(T* p, T v) { *p = v; }
template <class T> inline void __stwt(T* p, T v) { *p = v; }

// ---- Bits and integer intrinsics ---------------------------------------------------------------
inline unsigned __float_as_uint(float x) { return nli_emu::from_bits<unsigned>(nli_emu::to_bits(x)); }
inline float __uint_as_float(unsigned x) { return nli_emu::from_bits<float>(x); }
inline int __float_as_int(float x) { return nli_emu::from_bits<int>(nli_emu::to_bits(x)); }
inline float __int_as_float(int x) { return nli_emu::from_bits<float>((unsigned)x); }
inline long long __double_as_longlong(double x) { return nli_emu::from_bits<long long>(nli_emu::to_bits(x)); }
inline double __longlong_as_double(long long x) { return nli_emu::from_bits<double>((unsigned long long)x); }
inline int __double2hiint(double x) { return (int)(nli_emu::to_bits(x) >> 32); }
inline int __double2loint(double x) { return (int)(unsigned)nli_emu::to_bits(x); }
inline double __hiloint2double(int hi, int lo) {
  return nli_emu::from_bits<double>(((unsigned long long)(unsigned)hi << 32) | (unsigned)lo);
}
inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline int __popcll(unsigned long long x) { return __builtin_popcountll(x); }
inline int __clz(int x) { return x == 0 ? 32 : __builtin_clz((unsigned)x); }
inline int __clzll(long long x) { return x == 0 ? 64 : __builtin_clzll((unsigned long long)x); }
inline int __ffs(int x) { return __builtin_ffs(x); }
inline int __ffsll(long long x) { return __builtin_ffsll(x); }
inline unsigned __brev(unsigned x) {
  unsigned r = 0;
  for (int i = 0; i < 32; ++i) r |= ((x >> i) & 1u) << (31 - i);
  return r;
}
inline unsigned long long __brevll(unsigned long long x) {
  return ((unsigned long long)__brev((unsigned)x) << 32) | __brev((unsigned)(x >> 32));
}
inline unsigned __umulhi(unsigned a, unsigned b) { return (unsigned)(((unsigned long long)a * b) >> 32); }
inline int __mulhi(int a, int b) { return (int)(((long long)a * b) >> 32); }
inline unsigned long long __umul64hi(unsigned long long a, unsigned long long b) {
  return (unsigned long long)(((unsigned __int128)a * b) >> 64);
}
inline long long __mul64hi(long long a, long long b) { return (long long)(((__int128)a * b) >> 64); }
inline int __mul24(int a, int b) { return (int)((long long)((a << 8) >> 8) * ((b << 8) >> 8)); }
inline unsigned __umul24(unsigned a, unsigned b) { return (a & 0xffffffu) * (b & 0xffffffu); }
inline unsigned __byte_perm(unsigned x, unsigned y, unsigned s) {
  unsigned long long v = ((unsigned long long)y << 32) | x;
  unsigned r = 0;
  for (int i = 0; i < 4; ++i) r |= (unsigned)((v >> (8 * ((s >> (4 * i)) & 7u))) & 0xffu) << (8 * i);
  return r;
}
inline unsigned __funnelshift_l(unsigned lo, unsigned hi, unsigned shift) {
  return (unsigned)((((unsigned long long)hi << 32) | lo) << (shift & 31u) >> 32);
}
inline unsigned __funnelshift_lc(unsigned lo, unsigned hi, unsigned shift) {
  return (unsigned)((((unsigned long long)hi << 32) | lo) << (shift < 32 ? shift : 32) >> 32);
}
inline unsigned __funnelshift_r(unsigned lo, unsigned hi, unsigned shift) {
  return (unsigned)((((unsigned long long)hi << 32) | lo) >> (shift & 31u));
}
inline unsigned __funnelshift_rc(unsigned lo, unsigned hi, unsigned shift) {
  return (unsigned)((((unsigned long long)hi << 32) | lo) >> (shift < 32 ? shift : 32));
}

// ---- min / max (CUDA's overload set) ------------------------------------------------------------
#define NLI_EMU_MINMAX(T)                                   \
  inline T min(T a, T b) { return a < b ? a : b; }          \
  inline T max(T a, T b) { return a > b ? a : b; }
NLI_EMU_MINMAX(int)
NLI_EMU_MINMAX(unsigned int)
NLI_EMU_MINMAX(long)
NLI_EMU_MINMAX(unsigned long)
NLI_EMU_MINMAX(long long)
NLI_EMU_MINMAX(unsigned long long)
#undef NLI_EMU_MINMAX
inline unsigned min(int a, unsigned b) { return min((unsigned)a, b); }
inline unsigned min(unsigned a, int b) { return min(a, (unsigned)b); }
inline unsigned max(int a, unsigned b) { return max((unsigned)a, b); }
inline unsigned max(unsigned a, int b) { return max(a, (unsigned)b); }
inline float min(float a, float b) { return fminf(a, b); }
inline float max(float a, float b) { return fmaxf(a, b); }
inline double min(double a, double b) { return fmin(a, b); }
inline double max(double a, double b) { return fmax(a, b); }
inline double min(float a, double b) { return fmin((double)a, b); }
inline double min(double a, float b) { return fmin(a, (double)b); }
inline double max(float a, double b) { return fmax((double)a, b); }
inline double max(double a, float b) { return fmax(a, (double)b); }

// ---- Float intrinsics (exact C library versions; CUDA's fast ones are approximations) ---------
inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
inline double rsqrt(double x) { return 1.0 / sqrt(x); }
inline float rcbrtf(float x) { return 1.0f / cbrtf(x); }
inline float normcdff(float x) { return 0.5f * erfcf(-x * 0.70710678118654752f); }
inline double normcdf(double x) { return 0.5 * erfc(-x * 0.70710678118654752440); }
inline float __expf(float x) { return expf(x); }
inline float __exp10f(float x) { return powf(10.0f, x); }
inline float __logf(float x) { return logf(x); }
inline float __log2f(float x) { return log2f(x); }
inline float __log10f(float x) { return log10f(x); }
inline float __powf(float x, float y) { return powf(x, y); }
inline float __sinf(float x) { return sinf(x); }
inline float __cosf(float x) { return cosf(x); }
inline float __tanf(float x) { return tanf(x); }
inline float __tanhf(float x) { return tanhf(x); }
inline float __fdividef(float a, float b) { return a / b; }
inline float __frcp_rn(float x) { return 1.0f / x; }
inline float __fsqrt_rn(float x) { return sqrtf(x); }
inline float __frsqrt_rn(float x) { return 1.0f / sqrtf(x); }
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline float __fmaf_rn(float a, float b, float c) { return fmaf(a, b, c); }
inline double __dadd_rn(double a, double b) { return a + b; }
inline double __dmul_rn(double a, double b) { return a * b; }
inline double __fma_rn(double a, double b, double c) { return fma(a, b, c); }
inline float __saturatef(float x) { return x > 0.0f ? (x < 1.0f ? x : 1.0f) : 0.0f; }

// ---- Conversions (saturating, NaN to 0, as on the GPU) ------------------------------------------
namespace nli_emu {
template <class I>
inline I to_int_sat(double r) {
  if (r != r) return 0;
  if (r <= (double)std::numeric_limits<I>::min()) return std::numeric_limits<I>::min();
  if (r >= (double)std::numeric_limits<I>::max()) return std::numeric_limits<I>::max();
  return (I)r;
}
}  // namespace nli_emu
inline int __float2int_rn(float x) { return nli_emu::to_int_sat<int>(nearbyint((double)x)); }
inline int __float2int_rz(float x) { return nli_emu::to_int_sat<int>(trunc((double)x)); }
inline int __float2int_rd(float x) { return nli_emu::to_int_sat<int>(floor((double)x)); }
inline int __float2int_ru(float x) { return nli_emu::to_int_sat<int>(ceil((double)x)); }
inline unsigned __float2uint_rn(float x) { return nli_emu::to_int_sat<unsigned>(nearbyint((double)x)); }
inline unsigned __float2uint_rz(float x) { return nli_emu::to_int_sat<unsigned>(trunc((double)x)); }
inline long long __float2ll_rn(float x) { return nli_emu::to_int_sat<long long>(nearbyint((double)x)); }
inline long long __float2ll_rz(float x) { return nli_emu::to_int_sat<long long>(trunc((double)x)); }
inline int __double2int_rn(double x) { return nli_emu::to_int_sat<int>(nearbyint(x)); }
inline int __double2int_rz(double x) { return nli_emu::to_int_sat<int>(trunc(x)); }
inline float __int2float_rn(int x) { return (float)x; }
inline float __uint2float_rn(unsigned x) { return (float)x; }
inline float __ll2float_rn(long long x) { return (float)x; }
inline double __int2double_rn(int x) { return (double)x; }
inline float __double2float_rn(double x) { return (float)x; }

#endif  // NLI_EMU_H
