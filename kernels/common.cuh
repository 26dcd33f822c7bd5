// common.cuh: what every kernel file shares. Self-contained (no CUDA headers), so the same text
// compiles with NVRTC (no include path), with nvcc, and as C++ for the CPU emulator (build.rs
// includes kernels/emu/emu.h first and defines NLI_EMU).
//
// - NLI_DYNAMIC_SHARED(type, name): the block's dynamic shared memory as `type name[]`.
// - Philox4x32-10 and the dropout decision, bit-identical to src/rng.rs: element `idx` of site
//   `site` at step `step` uses lane idx % 4 of the block with counter (idx/4 lo, idx/4 hi, site,
//   step) and key (seed lo, seed hi); kept iff (bits >> 8) >= thr, thr = ceil(p * 2^24).
// - Warp reductions (sum, max) in a fixed order: the result does not depend on the schedule, so a
//   kernel is deterministic run to run.
// - f32 -> bf16 (stored as unsigned short), written in plain integer code; nli_ld / nli_st, the
//   loads and stores of kernels templated over the activations' storage type (float or bf16).
#ifndef NLI_COMMON_CUH
#define NLI_COMMON_CUH

#ifndef NLI_EMU
#define NLI_DYNAMIC_SHARED(type, name) extern __shared__ type name[]
#endif

#define NLI_FULL_MASK 0xffffffffu
// No <math.h> under NVRTC: infinities and NaN from their bit patterns.
#define NLI_NEG_INF __uint_as_float(0xff800000u)
#define NLI_NAN __uint_as_float(0x7fc00000u)

// ---- Philox4x32-10 -------------------------------------------------------------------------
struct nli_u32x4 {
    unsigned int x, y, z, w;
};

__device__ __forceinline__ nli_u32x4 nli_philox(unsigned int c0, unsigned int c1, unsigned int c2,
                                                 unsigned int c3, unsigned int k0, unsigned int k1) {
    for (int r = 0; r < 10; ++r) {
        if (r > 0) {
            k0 += 0x9E3779B9u;
            k1 += 0xBB67AE85u;
        }
        unsigned long long p0 = (unsigned long long)0xD2511F53u * c0;
        unsigned long long p1 = (unsigned long long)0xCD9E8D57u * c2;
        unsigned int n0 = (unsigned int)(p1 >> 32) ^ c1 ^ k0;
        unsigned int n2 = (unsigned int)(p0 >> 32) ^ c3 ^ k1;
        c1 = (unsigned int)p1;
        c3 = (unsigned int)p0;
        c0 = n0;
        c2 = n2;
    }
    nli_u32x4 o;
    o.x = c0;
    o.y = c1;
    o.z = c2;
    o.w = c3;
    return o;
}

// The 32 random bits of element `idx` (see the file header).
__device__ __forceinline__ unsigned int nli_dropout_bits(unsigned long long seed, unsigned int step,
                                                         unsigned int site, unsigned long long idx) {
    unsigned long long blk = idx >> 2;
    nli_u32x4 o = nli_philox((unsigned int)blk, (unsigned int)(blk >> 32), site, step, (unsigned int)seed,
                             (unsigned int)(seed >> 32));
    unsigned int lane = (unsigned int)(idx & 3);
    return lane == 0 ? o.x : lane == 1 ? o.y : lane == 2 ? o.z : o.w;
}

// Dropout parameters as passed to kernels: thr = ceil(p * 2^24) (0 = dropout off), scale =
// 1/(1-p) rounded to float on the host, doff = the offset added to every element index (the
// position of a data-parallel shard's tensor in the whole batch's; 0 otherwise).
struct nli_dropout {
    unsigned long long seed;
    unsigned int step, site, thr;
    float scale;
    unsigned long long base;  // added to every element index (a shard's place in the whole batch)
};

__device__ __forceinline__ nli_dropout nli_make_dropout(unsigned long long seed, unsigned int step,
                                                        unsigned int site, unsigned int thr, float scale, unsigned long long doff) {
    nli_dropout d;
    d.seed = seed;
    d.step = step;
    d.site = site;
    d.thr = thr;
    d.scale = scale;
    d.base = doff;
    return d;
}

// The factor of element `idx`: 1 when dropout is off, else 0 (dropped) or scale (kept).
__device__ __forceinline__ float nli_dropout_factor(const nli_dropout& d, unsigned long long idx) {
    if (d.thr == 0u) return 1.0f;
    return (nli_dropout_bits(d.seed, d.step, d.site, idx + d.base) >> 8) >= d.thr ? d.scale : 0.0f;
}

// ---- reductions ----------------------------------------------------------------------------
// Butterfly sum over the 32 lanes of a full warp; every lane gets the same total.
__device__ __forceinline__ float nli_warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(NLI_FULL_MASK, v, o);
    return v;
}

__device__ __forceinline__ float nli_warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(NLI_FULL_MASK, v, o));
    return v;
}

// ---- bf16 -------------------------------------------------------------------------
// Round to nearest even; NaN stays a (quiet) NaN.
__device__ __forceinline__ unsigned short nli_f32_to_bf16(float f) {
    unsigned int u = __float_as_uint(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (unsigned short)((u >> 16) | 0x40u);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (unsigned short)(u >> 16);
}

// ---- storage types ----------------------------------------------------------------------------
// Activations are stored as float or, with bf16 storage (`--precision bf16`), as bf16 bits
// (unsigned short). A kernel that reads or writes them is a template over the storage type with one
// extern "C" wrapper per type (`name` for float, `name_bf16` for bf16); it computes in float:
// nli_ld widens (exact), nli_st rounds to nearest even. Parameters and statistics are always float.
__device__ __forceinline__ float nli_bf16_to_f32(unsigned short h) { return __uint_as_float((unsigned)h << 16); }
__device__ __forceinline__ float nli_ld(const float* p) { return *p; }
__device__ __forceinline__ float nli_ld(const unsigned short* p) { return nli_bf16_to_f32(*p); }
__device__ __forceinline__ void nli_st(float* p, float v) { *p = v; }
__device__ __forceinline__ void nli_st(unsigned short* p, float v) { *p = nli_f32_to_bf16(v); }

// ---- tensor cores ---------------------------------------------------------------------------
// Two floats as a bf16x2 register (round to nearest even): `lo` in the low half, as the mma
// fragments hold consecutive elements.
__device__ __forceinline__ unsigned nli_pack_bf16x2(float lo, float hi) {
    return (unsigned)nli_f32_to_bf16(lo) | ((unsigned)nli_f32_to_bf16(hi) << 16);
}

// d += a·b for one warp: mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32, fragments in the
// PTX ISA's per-lane layout (g = lane / 4, t = lane % 4): a[r] holds A[g + 8(r&1)][2t + 8(r>>1)
// + {0,1}] (16x16), b[r] holds B[2t + 8r + {0,1}][g] (16x8), d[e] holds D[g + 8(e>>1)][2t + (e&1)].
// The emulator runs it as a warp collective (kernels/emu/runtime.cpp); sm_80 and newer only.
__device__ __forceinline__ void nli_mma_bf16(float d[4], const unsigned a[4], const unsigned b[2]) {
#if defined(NLI_EMU)
    nli_emu::mma_m16n8k16_bf16(d, a, b, d);
#elif defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#else
    __trap();  // bf16 tensor cores need sm_80 (the launchers never choose these kernels below it)
#endif
}

#endif  // NLI_COMMON_CUH
