// attention.cu: multi-head scaled dot-product attention over packed variable-length sequences,
// forward and backward (d2l semantics). CPU twin: src/backend/cpu/attention.rs.
//
// Shapes: qkv (T,3C) = [Q | K | V] per row, head h in columns h·hs..(h+1)·hs of each (hs = C/nh);
// out, dout (T,C); dqkv (T,3C); att (nh·Σ len²); cu_seqlens, att_offsets (B+1,). Sequence b is
// rows r0 = cu_seqlens[b] .. r0 + L; its head-h probabilities P (L,L), query-major, live at
// att[base ..], base = nh·att_offsets[b] + h·L².
//
// attention_forward: S = Q Kᵀ/√hs over the L keys of the sequence only (keys of other sequences
//   never enter its softmax: d2l's -1e6 mask underflows to exactly 0), P = softmax_rows(S) written
//   to att (pre-dropout, for backward), out = (f ⊙ P) V where f is the dropout factor of element
//   base + i·L + j (0 or 1/(1-p), Philox, the same units as the CPU). Fused: scores, softmax, the
//   att store, dropout and the P·V product, one pass per query row.
// attention_backward: dqkv overwritten (nothing accumulates):
//   dV = (f⊙P)ᵀ dO; dP = f ⊙ (dO Vᵀ); r_i = Σ_j P_ij dP_ij; dS = P ⊙ (dP − r)/√hs;
//   dQ = dS K; dK = dSᵀ Q.
//
// Grid (B, nh): one block per (sequence, head); any blockDim.x that is a multiple of 32 (the
// launcher allows up to 512: backward takes ~94 registers on sm_80). An empty sequence returns at
// once. Work is split by warps, lanes own the key columns
// j ≡ lane (mod 32) of a row, and values move between lanes only by shuffles; a product over j
// (or i) broadcasts 32 weights by __shfl_sync and each lane accumulates up to NLI_ATT_GROUP/32
// head columns. Every sum runs in a fixed order (j ascending, or the warp butterfly), so results
// do not depend on the schedule.
//
// Shared memory (dynamic, `smem_floats` floats as sized by the launcher):
//   forward: one row buffer of L floats per warp if nwarps·L <= smem_floats, else the warp uses
//     its row of att in global memory as the buffer (every lane only re-reads what it wrote).
//   backward: phase 1 (warp per query row i) computes dS_i and dQ_i; phase 2 (warp per key j)
//     computes dK_j and dV_j from the column j of dS. If L·(L|1) <= smem_floats, dS is kept in
//     shared memory (row stride L|1: odd, so a column read has no bank conflicts); otherwise only
//     r (L floats) and one dS row buffer per warp are kept, and phase 2 recomputes the column of
//     dS from att, dO·V_j and r (about twice the dot products, no extra global memory).
#include "common.cuh"

// Head columns one lane pass accumulates: 4 chunks of 32 (BERT-base hs = 64 takes one pass).
#define NLI_ATT_CHUNKS 4
#define NLI_ATT_GROUP (32 * NLI_ATT_CHUNKS)

__device__ __forceinline__ float nli_att_dot(const float* __restrict__ a, const float* __restrict__ b, int n) {
    float s = 0.0f;
    for (int x = 0; x < n; ++x) s += a[x] * b[x];
    return s;
}

extern "C" __global__ void attention_forward(float* __restrict__ out, float* __restrict__ att,
                                             const float* __restrict__ qkv, const int* __restrict__ cu_seqlens,
                                             const int* __restrict__ att_offsets, int nh, int c, int smem_floats,
                                             unsigned long long seed, unsigned int step, unsigned int site,
                                             unsigned int thr, float scale, unsigned long long doff) {
    NLI_DYNAMIC_SHARED(float, nli_att_smem);
    const int b = blockIdx.x, h = blockIdx.y;
    const int r0 = cu_seqlens[b];
    const int len = cu_seqlens[b + 1] - r0;
    if (len <= 0) return;
    const int hs = c / nh;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
    const long long ld = 3LL * c;
    const long long base = (long long)nh * att_offsets[b] + (long long)h * len * len;
    const float* q = qkv + (long long)r0 * ld + (long long)h * hs;
    const float* k = q + c;
    const float* v = q + 2LL * c;
    float* o = out + (long long)r0 * c + (long long)h * hs;
    const float sq = sqrtf((float)hs);
    const bool shared_rows = (long long)nwarps * len <= smem_floats;
    const nli_dropout d = nli_make_dropout(seed, step, site, thr, scale, doff);

    for (int i = warp; i < len; i += nwarps) {
        float* prow = att + base + (long long)i * len;
        float* row = shared_rows ? nli_att_smem + warp * len : prow;
        const float* qi = q + i * ld;
        // Scores and their maximum.
        float mx = -3.402823466e38f;
        for (int j = lane; j < len; j += 32) {
            float s = nli_att_dot(qi, k + j * ld, hs) / sq;
            row[j] = s;
            mx = fmaxf(mx, s);
        }
        mx = nli_warp_max(mx);
        float sum = 0.0f;
        for (int j = lane; j < len; j += 32) {
            float e = expf(row[j] - mx);
            row[j] = e;
            sum += e;
        }
        sum = nli_warp_sum(sum);
        for (int j = lane; j < len; j += 32) {
            float p = row[j] / sum;
            row[j] = p;
            prow[j] = p;  // the pre-dropout probabilities, for backward
        }
        // out_i = Σ_j f_ij P_ij V_j, j ascending.
        for (int d0 = 0; d0 < hs; d0 += NLI_ATT_GROUP) {
            float acc[NLI_ATT_CHUNKS];
            for (int ch = 0; ch < NLI_ATT_CHUNKS; ++ch) acc[ch] = 0.0f;
            for (int j0 = 0; j0 < len; j0 += 32) {
                const int j = j0 + lane;
                const unsigned long long e = (unsigned long long)(base + (long long)i * len + j);
                const float w = j < len ? row[j] * nli_dropout_factor(d, e) : 0.0f;
                const int n = len - j0 < 32 ? len - j0 : 32;
                for (int jj = 0; jj < n; ++jj) {
                    const float wj = __shfl_sync(NLI_FULL_MASK, w, jj);
                    const float* vj = v + (j0 + jj) * ld + d0 + lane;
                    for (int ch = 0; ch < NLI_ATT_CHUNKS; ++ch)
                        if (d0 + ch * 32 + lane < hs) acc[ch] += wj * vj[ch * 32];
                }
            }
            for (int ch = 0; ch < NLI_ATT_CHUNKS; ++ch)
                if (d0 + ch * 32 + lane < hs) o[(long long)i * c + d0 + ch * 32 + lane] = acc[ch];
        }
    }
}

extern "C" __global__ void attention_backward(float* __restrict__ dqkv, const float* __restrict__ dout,
                                              const float* __restrict__ att, const float* __restrict__ qkv,
                                              const int* __restrict__ cu_seqlens,
                                              const int* __restrict__ att_offsets, int nh, int c, int smem_floats,
                                              unsigned long long seed, unsigned int step, unsigned int site,
                                              unsigned int thr, float scale, unsigned long long doff) {
    NLI_DYNAMIC_SHARED(float, nli_att_smem);
    const int b = blockIdx.x, h = blockIdx.y;
    const int r0 = cu_seqlens[b];
    const int len = cu_seqlens[b + 1] - r0;
    if (len <= 0) return;
    const int hs = c / nh;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
    const long long ld = 3LL * c;
    const long long base = (long long)nh * att_offsets[b] + (long long)h * len * len;
    const long long off = (long long)r0 * ld + (long long)h * hs;
    const float* q = qkv + off;
    const float* k = q + c;
    const float* v = q + 2LL * c;
    float* dq = dqkv + off;
    float* dk = dq + c;
    float* dv = dq + 2LL * c;
    const float* dO = dout + (long long)r0 * c + (long long)h * hs;
    const float* P = att + base;
    const float sq = sqrtf((float)hs);
    const int lds = len | 1;  // row stride of dS in shared memory (odd: no bank conflicts by column)
    const bool full = (long long)len * lds <= smem_floats;
    float* rsum = nli_att_smem;  // fallback: r_i (L floats), then one dS row of L floats per warp
    const nli_dropout d = nli_make_dropout(seed, step, site, thr, scale, doff);

    // Phase 1, warp per query row i: dS_i and dQ_i = Σ_j dS_ij K_j.
    for (int i = warp; i < len; i += nwarps) {
        const float* pi = P + (long long)i * len;
        const float* doi = dO + (long long)i * c;
        float* row = full ? nli_att_smem + i * lds : nli_att_smem + len + warp * len;
        float racc = 0.0f;
        for (int j = lane; j < len; j += 32) {
            float dp = nli_att_dot(doi, v + j * ld, hs) *
                       nli_dropout_factor(d, (unsigned long long)(base + (long long)i * len + j));
            row[j] = dp;
            racc += pi[j] * dp;
        }
        const float r = nli_warp_sum(racc);
        if (!full && lane == 0) rsum[i] = r;
        for (int j = lane; j < len; j += 32) row[j] = pi[j] * (row[j] - r) / sq;
        for (int d0 = 0; d0 < hs; d0 += NLI_ATT_GROUP) {
            float acc[NLI_ATT_CHUNKS];
            for (int ch = 0; ch < NLI_ATT_CHUNKS; ++ch) acc[ch] = 0.0f;
            for (int j0 = 0; j0 < len; j0 += 32) {
                const float w = j0 + lane < len ? row[j0 + lane] : 0.0f;
                const int n = len - j0 < 32 ? len - j0 : 32;
                for (int jj = 0; jj < n; ++jj) {
                    const float wj = __shfl_sync(NLI_FULL_MASK, w, jj);
                    const float* kj = k + (j0 + jj) * ld + d0 + lane;
                    for (int ch = 0; ch < NLI_ATT_CHUNKS; ++ch)
                        if (d0 + ch * 32 + lane < hs) acc[ch] += wj * kj[ch * 32];
                }
            }
            for (int ch = 0; ch < NLI_ATT_CHUNKS; ++ch)
                if (d0 + ch * 32 + lane < hs) dq[(long long)i * ld + d0 + ch * 32 + lane] = acc[ch];
        }
    }
    __syncthreads();  // dS (full) or r (fallback) complete

    // Phase 2, warp per key j: dK_j = Σ_i dS_ij Q_i and dV_j = Σ_i f_ij P_ij dO_i, i ascending.
    for (int j = warp; j < len; j += nwarps) {
        const float* vj = v + j * ld;
        for (int d0 = 0; d0 < hs; d0 += NLI_ATT_GROUP) {
            float ak[NLI_ATT_CHUNKS], av[NLI_ATT_CHUNKS];
            for (int ch = 0; ch < NLI_ATT_CHUNKS; ++ch) ak[ch] = av[ch] = 0.0f;
            for (int i0 = 0; i0 < len; i0 += 32) {
                const int i = i0 + lane;
                float wd = 0.0f, wv = 0.0f;
                if (i < len) {
                    const float p = P[(long long)i * len + j];
                    const float f = nli_dropout_factor(d, (unsigned long long)(base + (long long)i * len + j));
                    wv = p * f;
                    if (full) {
                        wd = nli_att_smem[i * lds + j];
                    } else {
                        const float dp = nli_att_dot(dO + (long long)i * c, vj, hs) * f;
                        wd = p * (dp - rsum[i]) / sq;
                    }
                }
                const int n = len - i0 < 32 ? len - i0 : 32;
                for (int ii = 0; ii < n; ++ii) {
                    const float wdi = __shfl_sync(NLI_FULL_MASK, wd, ii);
                    const float wvi = __shfl_sync(NLI_FULL_MASK, wv, ii);
                    const float* qi = q + (i0 + ii) * ld + d0 + lane;
                    const float* doi = dO + (long long)(i0 + ii) * c + d0 + lane;
                    for (int ch = 0; ch < NLI_ATT_CHUNKS; ++ch) {
                        if (d0 + ch * 32 + lane < hs) {
                            ak[ch] += wdi * qi[ch * 32];
                            av[ch] += wvi * doi[ch * 32];
                        }
                    }
                }
            }
            for (int ch = 0; ch < NLI_ATT_CHUNKS; ++ch) {
                if (d0 + ch * 32 + lane < hs) {
                    dk[(long long)j * ld + d0 + ch * 32 + lane] = ak[ch];
                    dv[(long long)j * ld + d0 + ch * 32 + lane] = av[ch];
                }
            }
        }
    }
}

// ============================================================================================
// Flash attention on bf16 tensor cores (`--precision bf16`, head size <= 64). CPU twin: the same
// src/backend/cpu/attention.rs (the same function: keys of other sequences excluded, dropout on
// the probabilities from the same Philox elements); launchers in src/backend/gpu/attention.rs.
//
// The packed rows are tiled as they lie, across sequence boundaries, so the tensor-core tiles
// stay full however short the sequences (SNLI's are ~25 tokens): a block takes 64 consecutive
// rows (4 warps x 16) and walks the keys of every sequence those rows touch in tiles of 64; an
// element (query i, key j) counts only when both belong to the same sequence (the others get
// probability exactly 0, as d2l's -1e6 mask gives). A warp skips a key tile that holds none of
// its sequences. Q, K and V tiles are converted to bf16 on the way into shared memory (padded
// with zeros from hs to D = 16, 32 or 64 columns); S = QKᵀ, O = PV, dP = dO·Vᵀ, dV = Pᵀ·dO,
// dK = dSᵀ·Q and dQ = dS·K run on `mma.sync` m16n8k16 with fp32 accumulation, everything else
// (scale, mask, softmax statistics, dropout, dS) in fp32 registers.
//
// attention_flash_forward_dD: out (T,C) and lse (nh,T) (the row log-sum-exp of the scaled scores,
//   saved for backward instead of the T x T probabilities); online softmax (FlashAttention-2).
// attention_flash_backward_prep: dd (nh,T) = Σ_d dO·O per row and head (r_i of the classic
//   backward: Σ_j P_ij dP_ij = dO_i·O_i, dropout included).
// attention_flash_backward_dkdv_dD: a block per 64 keys; walks the queries of their sequences in
//   chunks of 32, recomputes P from Q, K and lse, accumulates dK and dV in registers.
// attention_flash_backward_dq_dD: a block per 64 queries; walks the keys in tiles of 32,
//   accumulates dQ.
// dQ and dK/dV come from two kernels (each recomputes P) instead of atomics, so every sum runs in
// a fixed order and results do not depend on the schedule. Grids: (ceil(T/64), nh), 128 threads.

#define NLI_FA_BM 64  // query rows per block (4 warps x 16)
#define NLI_FA_BN 64  // keys per tile
#define NLI_FA_BQ 32  // queries per chunk of the dK/dV kernel
#define NLI_FA_BK 32  // keys per tile of the dQ kernel (64 spills registers at D = 64)

// The sequence of packed row r (cu_seqlens[s] <= r < cu_seqlens[s+1]; empty sequences skipped).
__device__ __forceinline__ int nli_seq_of(const int* __restrict__ cu, int nb, int r) {
    int lo = 0, hi = nb - 1;
    while (lo < hi) {
        const int mid = (lo + hi + 1) >> 1;
        if (cu[mid] <= r) lo = mid;
        else hi = mid - 1;
    }
    return lo;
}

// Rows r0 .. r0+ROWS-1 (zero from `rend` on) and columns 0..D-1 (zero from `hs` on) of an f32
// matrix with row stride `lds` into shared memory as bf16: dst[i·ld + d], or transposed dst[d·ld + i].
// When the rows are 16-byte aligned (hs, lds and the address multiples of 4 floats) each thread
// moves 4 columns with one 16-byte load; consecutive threads take consecutive column groups of a
// row, so a warp's loads are coalesced either way.
template <int ROWS, int D>
__device__ __forceinline__ void nli_fa_load(unsigned short* dst, int ld, bool trans, const float* __restrict__ src,
                                            long long lds, int r0, int rend, int hs) {
    const bool vec = ((hs | (int)(lds & 3)) & 3) == 0 && ((unsigned long long)src & 15ull) == 0;
    if (vec) {
        for (int idx = threadIdx.x; idx < ROWS * (D / 4); idx += blockDim.x) {
            const int i = idx / (D / 4), d = (idx - i * (D / 4)) * 4;
            const int r = r0 + i;
            float4 v = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
            if (r < rend && d < hs) v = *reinterpret_cast<const float4*>(src + (long long)r * lds + d);
            const unsigned short b0 = nli_f32_to_bf16(v.x), b1 = nli_f32_to_bf16(v.y);
            const unsigned short b2 = nli_f32_to_bf16(v.z), b3 = nli_f32_to_bf16(v.w);
            if (trans) {
                dst[d * ld + i] = b0;
                dst[(d + 1) * ld + i] = b1;
                dst[(d + 2) * ld + i] = b2;
                dst[(d + 3) * ld + i] = b3;
            } else {
                unsigned* p = reinterpret_cast<unsigned*>(dst + i * ld + d);  // ld and d even
                p[0] = (unsigned)b0 | ((unsigned)b1 << 16);
                p[1] = (unsigned)b2 | ((unsigned)b3 << 16);
            }
        }
        return;
    }
    for (int idx = threadIdx.x; idx < ROWS * D; idx += blockDim.x) {
        const int i = idx / D, d = idx - (idx / D) * D;
        const int r = r0 + i;
        const float v = (r < rend && d < hs) ? src[(long long)r * lds + d] : 0.0f;
        const unsigned short b = nli_f32_to_bf16(v);
        if (trans) dst[d * ld + i] = b;
        else dst[i * ld + d] = b;
    }
}

// The same from bf16 activations (no rounding): 8 columns per thread with one 16-byte load when hs,
// lds and the address allow it.
template <int ROWS, int D>
__device__ __forceinline__ void nli_fa_load(unsigned short* dst, int ld, bool trans,
                                            const unsigned short* __restrict__ src, long long lds, int r0, int rend,
                                            int hs) {
    const bool vec = ((hs | (int)(lds & 7)) & 7) == 0 && ((unsigned long long)src & 15ull) == 0;
    if (vec) {
        for (int idx = threadIdx.x; idx < ROWS * (D / 8); idx += blockDim.x) {
            const int i = idx / (D / 8), d = (idx - i * (D / 8)) * 8;
            const int r = r0 + i;
            uint4 v = make_uint4(0u, 0u, 0u, 0u);
            if (r < rend && d < hs) v = *reinterpret_cast<const uint4*>(src + (long long)r * lds + d);
            if (trans) {
                const unsigned w[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
                for (int e = 0; e < 8; ++e)
                    dst[(d + e) * ld + i] = (unsigned short)(w[e >> 1] >> (16 * (e & 1)));
            } else {
                unsigned* p = reinterpret_cast<unsigned*>(dst + i * ld + d);  // ld and d even
                p[0] = v.x;
                p[1] = v.y;
                p[2] = v.z;
                p[3] = v.w;
            }
        }
        return;
    }
    for (int idx = threadIdx.x; idx < ROWS * D; idx += blockDim.x) {
        const int i = idx / D, d = idx - (idx / D) * D;
        const int r = r0 + i;
        const unsigned short b = (r < rend && d < hs) ? src[(long long)r * lds + d] : (unsigned short)0;
        if (trans) dst[d * ld + i] = b;
        else dst[i * ld + d] = b;
    }
}

__device__ __forceinline__ unsigned nli_ld_u32(const unsigned short* p) {
    return *reinterpret_cast<const unsigned*>(p);
}

// The A fragment (16x16) at (row0, col0) of a row-major bf16 tile with row stride ld.
__device__ __forceinline__ void nli_frag_a(unsigned a[4], const unsigned short* s, int ld, int row0, int col0,
                                           int lane) {
    const unsigned short* p = s + (row0 + (lane >> 2)) * ld + col0 + 2 * (lane & 3);
    a[0] = nli_ld_u32(p);
    a[1] = nli_ld_u32(p + 8 * ld);
    a[2] = nli_ld_u32(p + 8);
    a[3] = nli_ld_u32(p + 8 * ld + 8);
}

// The B fragment (16x8, k x n) at (k0, n0) of a tile stored n-major, s[n·ld + k].
__device__ __forceinline__ void nli_frag_b(unsigned b[2], const unsigned short* s, int ld, int n0, int k0,
                                           int lane) {
    const unsigned short* p = s + (n0 + (lane >> 2)) * ld + k0 + 2 * (lane & 3);
    b[0] = nli_ld_u32(p);
    b[1] = nli_ld_u32(p + 8);
}

// Two accumulator tiles (16x8 each, columns 16kc.. and 16kc+8..) as the A fragment of the next
// product, each element times its factor (the C and A layouts line up, FlashAttention-2's trick).
__device__ __forceinline__ void nli_acc_to_a(unsigned a[4], const float c0[4], const float c1[4]) {
    a[0] = nli_pack_bf16x2(c0[0], c0[1]);
    a[1] = nli_pack_bf16x2(c0[2], c0[3]);
    a[2] = nli_pack_bf16x2(c1[0], c1[1]);
    a[3] = nli_pack_bf16x2(c1[2], c1[3]);
}

// Where this thread's row `r` of a tile sits: its sequence (or -1 beyond T), the sequence's first
// row and length, and the Philox element of (r, first key of the sequence) for head h.
struct nli_fa_row {
    int seq, start, len;
    unsigned long long base;
};

__device__ __forceinline__ nli_fa_row nli_fa_locate(const int* __restrict__ cu, const int* __restrict__ att_off,
                                                    int nb, int t_rows, int nh, int h, int r) {
    nli_fa_row w;
    w.seq = -1;
    w.start = 0;
    w.len = 0;
    w.base = 0;
    if (r < t_rows) {
        w.seq = nli_seq_of(cu, nb, r);
        w.start = cu[w.seq];
        w.len = cu[w.seq + 1] - w.start;
        w.base = (unsigned long long)nh * att_off[w.seq] + (unsigned long long)h * w.len * w.len +
                 (unsigned long long)(r - w.start) * w.len;
    }
    return w;
}

// The first and last sequence of rows first..last (clamped to T); lo > hi when there is none.
__device__ __forceinline__ void nli_fa_seq_range(const int* __restrict__ cu, int nb, int t_rows, int first,
                                                 int count, int& lo, int& hi) {
    const int last = min(first + count, t_rows) - 1;
    if (first >= t_rows) {
        lo = 1;
        hi = 0;
        return;
    }
    lo = nli_seq_of(cu, nb, first);
    hi = nli_seq_of(cu, nb, last);
}

template <int D, typename A>
__device__ void nli_fa_forward(A* __restrict__ out, float* __restrict__ lse, const A* __restrict__ qkv,
                               const int* __restrict__ cu, const int* __restrict__ att_off, int nb, int t_rows,
                               int nh, int c, const nli_dropout& dr) {
    __shared__ __align__(16) unsigned short q_s[NLI_FA_BM * (D + 8)];
    __shared__ __align__(16) unsigned short k_s[NLI_FA_BN * (D + 8)];
    __shared__ __align__(16) unsigned short vt_s[D * (NLI_FA_BN + 8)];
    __shared__ int kseq_s[NLI_FA_BN];
    const int h = blockIdx.y, q0 = blockIdx.x * NLI_FA_BM;
    if (q0 >= t_rows) return;
    const int hs = c / nh;
    const long long ld = 3LL * c;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, tq = lane & 3;
    const float sq = sqrtf((float)hs);
    const int kbeg = cu[nli_seq_of(cu, nb, q0)];
    const int kend = cu[nli_seq_of(cu, nb, min(q0 + NLI_FA_BM, t_rows) - 1) + 1];
    const A* base = qkv + (long long)h * hs;
    nli_fa_load<NLI_FA_BM, D>(q_s, D + 8, false, base, ld, q0, t_rows, hs);
    __syncthreads();
    unsigned qa[D / 16][4];
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) nli_frag_a(qa[kk], q_s, D + 8, warp * 16, kk * 16, lane);
    nli_fa_row rw[2];
#pragma unroll
    for (int x = 0; x < 2; ++x)
        rw[x] = nli_fa_locate(cu, att_off, nb, t_rows, nh, h, q0 + warp * 16 + (lane >> 2) + 8 * x);
    int wlo, whi;
    nli_fa_seq_range(cu, nb, t_rows, q0 + warp * 16, 16, wlo, whi);
    float m[2] = {NLI_NEG_INF, NLI_NEG_INF}, l[2] = {0.0f, 0.0f};
    float o[D / 8][4];
#pragma unroll
    for (int nd = 0; nd < D / 8; ++nd) o[nd][0] = o[nd][1] = o[nd][2] = o[nd][3] = 0.0f;

    for (int k0 = kbeg; k0 < kend; k0 += NLI_FA_BN) {
        __syncthreads();  // the previous tile is no longer read
        nli_fa_load<NLI_FA_BN, D>(k_s, D + 8, false, base + c, ld, k0, kend, hs);
        nli_fa_load<NLI_FA_BN, D>(vt_s, NLI_FA_BN + 8, true, base + 2LL * c, ld, k0, kend, hs);
        for (int j = threadIdx.x; j < NLI_FA_BN; j += blockDim.x)
            kseq_s[j] = k0 + j < kend ? nli_seq_of(cu, nb, k0 + j) : -2;
        __syncthreads();
        const int klast = min(NLI_FA_BN, kend - k0) - 1;
        if (wlo > whi || kseq_s[klast] < wlo || kseq_s[0] > whi) continue;  // uniform in the warp

        float s[NLI_FA_BN / 8][4];
#pragma unroll
        for (int nt = 0; nt < NLI_FA_BN / 8; ++nt) s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0.0f;
#pragma unroll
        for (int kk = 0; kk < D / 16; ++kk) {
#pragma unroll
            for (int nt = 0; nt < NLI_FA_BN / 8; ++nt) {
                unsigned b[2];
                nli_frag_b(b, k_s, D + 8, nt * 8, kk * 16, lane);
                nli_mma_bf16(s[nt], qa[kk], b);
            }
        }
        // Scale and mask; the tile's row maxima (the 4 lanes of a row hold its 64 columns).
        float tmax[2] = {NLI_NEG_INF, NLI_NEG_INF};
#pragma unroll
        for (int nt = 0; nt < NLI_FA_BN / 8; ++nt) {
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const int x = e >> 1, j = nt * 8 + 2 * tq + (e & 1);
                const float v = kseq_s[j] == rw[x].seq ? s[nt][e] / sq : NLI_NEG_INF;
                s[nt][e] = v;
                tmax[x] = fmaxf(tmax[x], v);
            }
        }
        float mu[2], corr[2], rs[2] = {0.0f, 0.0f};
#pragma unroll
        for (int x = 0; x < 2; ++x) {
            tmax[x] = fmaxf(tmax[x], __shfl_xor_sync(NLI_FULL_MASK, tmax[x], 1));
            tmax[x] = fmaxf(tmax[x], __shfl_xor_sync(NLI_FULL_MASK, tmax[x], 2));
            const float mnew = fmaxf(m[x], tmax[x]);
            mu[x] = mnew == NLI_NEG_INF ? 0.0f : mnew;
            corr[x] = expf(m[x] - mu[x]);
            m[x] = mnew;
        }
#pragma unroll
        for (int nt = 0; nt < NLI_FA_BN / 8; ++nt) {
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const int x = e >> 1, j = nt * 8 + 2 * tq + (e & 1);
                float p = expf(s[nt][e] - mu[x]);
                rs[x] += p;
                if (dr.thr != 0u && p != 0.0f)
                    p *= nli_dropout_factor(dr, rw[x].base + (unsigned long long)(k0 + j - rw[x].start));
                s[nt][e] = p;
            }
        }
#pragma unroll
        for (int x = 0; x < 2; ++x) {
            rs[x] += __shfl_xor_sync(NLI_FULL_MASK, rs[x], 1);
            rs[x] += __shfl_xor_sync(NLI_FULL_MASK, rs[x], 2);
            l[x] = l[x] * corr[x] + rs[x];
        }
#pragma unroll
        for (int nd = 0; nd < D / 8; ++nd) {
#pragma unroll
            for (int e = 0; e < 4; ++e) o[nd][e] *= corr[e >> 1];
        }
        // O += (f ⊙ P) V.
#pragma unroll
        for (int kc = 0; kc < NLI_FA_BN / 16; ++kc) {
            unsigned pa[4];
            nli_acc_to_a(pa, s[2 * kc], s[2 * kc + 1]);
#pragma unroll
            for (int nd = 0; nd < D / 8; ++nd) {
                unsigned b[2];
                nli_frag_b(b, vt_s, NLI_FA_BN + 8, nd * 8, kc * 16, lane);
                nli_mma_bf16(o[nd], pa, b);
            }
        }
    }
#pragma unroll
    for (int x = 0; x < 2; ++x) {
        const int r = q0 + warp * 16 + (lane >> 2) + 8 * x;
        if (r >= t_rows) continue;
        const float inv = 1.0f / l[x];
#pragma unroll
        for (int nd = 0; nd < D / 8; ++nd) {
#pragma unroll
            for (int e = 0; e < 2; ++e) {
                const int col = nd * 8 + 2 * tq + e;
                if (col < hs) nli_st(out + (long long)r * c + (long long)h * hs + col, o[nd][2 * x + e] * inv);
            }
        }
        if (tq == 0) lse[(long long)h * t_rows + r] = m[x] + logf(l[x]);
    }
}

template <int D, typename A>
__device__ void nli_fa_backward_dkdv(A* __restrict__ dqkv, const A* __restrict__ dout,
                                     const float* __restrict__ lse, const float* __restrict__ dd,
                                     const A* __restrict__ qkv, const int* __restrict__ cu,
                                     const int* __restrict__ att_off, int nb, int t_rows, int nh, int c,
                                     const nli_dropout& dr) {
    __shared__ __align__(16) unsigned short k_s[NLI_FA_BN * (D + 8)];
    __shared__ __align__(16) unsigned short v_s[NLI_FA_BN * (D + 8)];
    __shared__ __align__(16) unsigned short q_s[NLI_FA_BQ * (D + 8)];
    __shared__ __align__(16) unsigned short qt_s[D * (NLI_FA_BQ + 8)];
    __shared__ __align__(16) unsigned short do_s[NLI_FA_BQ * (D + 8)];
    __shared__ __align__(16) unsigned short dot_s[D * (NLI_FA_BQ + 8)];
    __shared__ float lse_s[NLI_FA_BQ], dd_s[NLI_FA_BQ];
    __shared__ int qseq_s[NLI_FA_BQ];
    const int h = blockIdx.y, k0 = blockIdx.x * NLI_FA_BN;
    if (k0 >= t_rows) return;
    const int hs = c / nh;
    const long long ld = 3LL * c;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, tq = lane & 3;
    const float sq = sqrtf((float)hs);
    const int qbeg = cu[nli_seq_of(cu, nb, k0)];
    const int qend = cu[nli_seq_of(cu, nb, min(k0 + NLI_FA_BN, t_rows) - 1) + 1];
    const A* base = qkv + (long long)h * hs;
    const A* dobase = dout + (long long)h * hs;
    nli_fa_load<NLI_FA_BN, D>(k_s, D + 8, false, base + c, ld, k0, t_rows, hs);
    nli_fa_load<NLI_FA_BN, D>(v_s, D + 8, false, base + 2LL * c, ld, k0, t_rows, hs);
    // This thread's two keys (rows of Sᵀ); the Philox element of (query i, key) is
    // base + (i - start)·len, with base here taken at query `start`.
    nli_fa_row kw[2];
#pragma unroll
    for (int x = 0; x < 2; ++x) {
        const int key = k0 + warp * 16 + (lane >> 2) + 8 * x;
        kw[x] = nli_fa_locate(cu, att_off, nb, t_rows, nh, h, key);
        // locate() gives (key - start)·len; the key is the column here: (key - start).
        if (kw[x].seq >= 0)
            kw[x].base = kw[x].base - (unsigned long long)(key - kw[x].start) * kw[x].len +
                         (unsigned long long)(key - kw[x].start);
    }
    int wlo, whi;
    nli_fa_seq_range(cu, nb, t_rows, k0 + warp * 16, 16, wlo, whi);
    float dk[D / 8][4], dv[D / 8][4];
#pragma unroll
    for (int nd = 0; nd < D / 8; ++nd)
#pragma unroll
        for (int e = 0; e < 4; ++e) dk[nd][e] = dv[nd][e] = 0.0f;

    for (int q0 = qbeg; q0 < qend; q0 += NLI_FA_BQ) {
        __syncthreads();  // k_s/v_s written (first pass) or the previous chunk no longer read
        nli_fa_load<NLI_FA_BQ, D>(q_s, D + 8, false, base, ld, q0, qend, hs);
        nli_fa_load<NLI_FA_BQ, D>(qt_s, NLI_FA_BQ + 8, true, base, ld, q0, qend, hs);
        nli_fa_load<NLI_FA_BQ, D>(do_s, D + 8, false, dobase, c, q0, qend, hs);
        nli_fa_load<NLI_FA_BQ, D>(dot_s, NLI_FA_BQ + 8, true, dobase, c, q0, qend, hs);
        for (int i = threadIdx.x; i < NLI_FA_BQ; i += blockDim.x) {
            const bool in = q0 + i < qend;
            lse_s[i] = in ? lse[(long long)h * t_rows + q0 + i] : 0.0f;
            dd_s[i] = in ? dd[(long long)h * t_rows + q0 + i] : 0.0f;
            qseq_s[i] = in ? nli_seq_of(cu, nb, q0 + i) : -2;
        }
        __syncthreads();
        const int qlast = min(NLI_FA_BQ, qend - q0) - 1;
        if (wlo > whi || qseq_s[qlast] < wlo || qseq_s[0] > whi) continue;  // uniform in the warp

        // Sᵀ = K Qᵀ (16 keys x 32 queries), then Pᵀ and the dropout factors.
        float st[NLI_FA_BQ / 8][4], fac[NLI_FA_BQ / 8][4], dpt[NLI_FA_BQ / 8][4];
#pragma unroll
        for (int nt = 0; nt < NLI_FA_BQ / 8; ++nt)
#pragma unroll
            for (int e = 0; e < 4; ++e) st[nt][e] = dpt[nt][e] = 0.0f;
#pragma unroll
        for (int kk = 0; kk < D / 16; ++kk) {
            unsigned ka[4], va[4];
            nli_frag_a(ka, k_s, D + 8, warp * 16, kk * 16, lane);
            nli_frag_a(va, v_s, D + 8, warp * 16, kk * 16, lane);
#pragma unroll
            for (int nt = 0; nt < NLI_FA_BQ / 8; ++nt) {
                unsigned bq[2], bo[2];
                nli_frag_b(bq, q_s, D + 8, nt * 8, kk * 16, lane);
                nli_mma_bf16(st[nt], ka, bq);
                nli_frag_b(bo, do_s, D + 8, nt * 8, kk * 16, lane);
                nli_mma_bf16(dpt[nt], va, bo);  // dPᵀ = V dOᵀ (before the dropout factor)
            }
        }
#pragma unroll
        for (int nt = 0; nt < NLI_FA_BQ / 8; ++nt) {
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const int x = e >> 1, i = nt * 8 + 2 * tq + (e & 1);
                const bool ok = qseq_s[i] == kw[x].seq;
                const float p = ok ? expf(st[nt][e] / sq - lse_s[i]) : 0.0f;
                float f = 1.0f;
                if (ok && dr.thr != 0u)
                    f = nli_dropout_factor(dr, kw[x].base + (unsigned long long)(q0 + i - kw[x].start) * kw[x].len);
                st[nt][e] = p;
                fac[nt][e] = f;
            }
        }
        // dV += (f ⊙ P)ᵀ dO.
#pragma unroll
        for (int kc = 0; kc < NLI_FA_BQ / 16; ++kc) {
            float p0[4], p1[4];
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                p0[e] = st[2 * kc][e] * fac[2 * kc][e];
                p1[e] = st[2 * kc + 1][e] * fac[2 * kc + 1][e];
            }
            unsigned pa[4];
            nli_acc_to_a(pa, p0, p1);
#pragma unroll
            for (int nd = 0; nd < D / 8; ++nd) {
                unsigned b[2];
                nli_frag_b(b, dot_s, NLI_FA_BQ + 8, nd * 8, kc * 16, lane);
                nli_mma_bf16(dv[nd], pa, b);
            }
        }
        // dSᵀ = Pᵀ ⊙ (f ⊙ dPᵀ − dd)/√hs, then dK += dSᵀ Q.
#pragma unroll
        for (int nt = 0; nt < NLI_FA_BQ / 8; ++nt) {
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const int i = nt * 8 + 2 * tq + (e & 1);
                st[nt][e] = st[nt][e] * (dpt[nt][e] * fac[nt][e] - dd_s[i]) / sq;
            }
        }
#pragma unroll
        for (int kc = 0; kc < NLI_FA_BQ / 16; ++kc) {
            unsigned pa[4];
            nli_acc_to_a(pa, st[2 * kc], st[2 * kc + 1]);
#pragma unroll
            for (int nd = 0; nd < D / 8; ++nd) {
                unsigned b[2];
                nli_frag_b(b, qt_s, NLI_FA_BQ + 8, nd * 8, kc * 16, lane);
                nli_mma_bf16(dk[nd], pa, b);
            }
        }
    }
#pragma unroll
    for (int x = 0; x < 2; ++x) {
        const int key = k0 + warp * 16 + (lane >> 2) + 8 * x;
        if (key >= t_rows) continue;
#pragma unroll
        for (int nd = 0; nd < D / 8; ++nd) {
#pragma unroll
            for (int e = 0; e < 2; ++e) {
                const int col = nd * 8 + 2 * tq + e;
                if (col >= hs) continue;
                A* row = dqkv + (long long)key * ld + (long long)h * hs + col;
                nli_st(row + c, dk[nd][2 * x + e]);
                nli_st(row + 2LL * c, dv[nd][2 * x + e]);
            }
        }
    }
}

template <int D, typename A>
__device__ void nli_fa_backward_dq(A* __restrict__ dqkv, const A* __restrict__ dout,
                                   const float* __restrict__ lse, const float* __restrict__ dd,
                                   const A* __restrict__ qkv, const int* __restrict__ cu,
                                   const int* __restrict__ att_off, int nb, int t_rows, int nh, int c,
                                   const nli_dropout& dr) {
    __shared__ __align__(16) unsigned short q_s[NLI_FA_BM * (D + 8)];
    __shared__ __align__(16) unsigned short do_s[NLI_FA_BM * (D + 8)];
    __shared__ __align__(16) unsigned short k_s[NLI_FA_BK * (D + 8)];
    __shared__ __align__(16) unsigned short kt_s[D * (NLI_FA_BK + 8)];
    __shared__ __align__(16) unsigned short v_s[NLI_FA_BK * (D + 8)];
    __shared__ int kseq_s[NLI_FA_BK];
    const int h = blockIdx.y, q0 = blockIdx.x * NLI_FA_BM;
    if (q0 >= t_rows) return;
    const int hs = c / nh;
    const long long ld = 3LL * c;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, tq = lane & 3;
    const float sq = sqrtf((float)hs);
    const int kbeg = cu[nli_seq_of(cu, nb, q0)];
    const int kend = cu[nli_seq_of(cu, nb, min(q0 + NLI_FA_BM, t_rows) - 1) + 1];
    const A* base = qkv + (long long)h * hs;
    nli_fa_load<NLI_FA_BM, D>(q_s, D + 8, false, base, ld, q0, t_rows, hs);
    nli_fa_load<NLI_FA_BM, D>(do_s, D + 8, false, dout + (long long)h * hs, c, q0, t_rows, hs);
    __syncthreads();
    unsigned qa[D / 16][4], da[D / 16][4];
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
        nli_frag_a(qa[kk], q_s, D + 8, warp * 16, kk * 16, lane);
        nli_frag_a(da[kk], do_s, D + 8, warp * 16, kk * 16, lane);
    }
    nli_fa_row rw[2];
    float lr[2], dr_i[2];
#pragma unroll
    for (int x = 0; x < 2; ++x) {
        const int r = q0 + warp * 16 + (lane >> 2) + 8 * x;
        rw[x] = nli_fa_locate(cu, att_off, nb, t_rows, nh, h, r);
        lr[x] = r < t_rows ? lse[(long long)h * t_rows + r] : 0.0f;
        dr_i[x] = r < t_rows ? dd[(long long)h * t_rows + r] : 0.0f;
    }
    int wlo, whi;
    nli_fa_seq_range(cu, nb, t_rows, q0 + warp * 16, 16, wlo, whi);
    float dq[D / 8][4];
#pragma unroll
    for (int nd = 0; nd < D / 8; ++nd) dq[nd][0] = dq[nd][1] = dq[nd][2] = dq[nd][3] = 0.0f;

    for (int k0 = kbeg; k0 < kend; k0 += NLI_FA_BK) {
        __syncthreads();
        nli_fa_load<NLI_FA_BK, D>(k_s, D + 8, false, base + c, ld, k0, kend, hs);
        nli_fa_load<NLI_FA_BK, D>(kt_s, NLI_FA_BK + 8, true, base + c, ld, k0, kend, hs);
        nli_fa_load<NLI_FA_BK, D>(v_s, D + 8, false, base + 2LL * c, ld, k0, kend, hs);
        for (int j = threadIdx.x; j < NLI_FA_BK; j += blockDim.x)
            kseq_s[j] = k0 + j < kend ? nli_seq_of(cu, nb, k0 + j) : -2;
        __syncthreads();
        const int klast = min(NLI_FA_BK, kend - k0) - 1;
        if (wlo > whi || kseq_s[klast] < wlo || kseq_s[0] > whi) continue;  // uniform in the warp

        float s[NLI_FA_BK / 8][4], dp[NLI_FA_BK / 8][4];
#pragma unroll
        for (int nt = 0; nt < NLI_FA_BK / 8; ++nt)
#pragma unroll
            for (int e = 0; e < 4; ++e) s[nt][e] = dp[nt][e] = 0.0f;
#pragma unroll
        for (int kk = 0; kk < D / 16; ++kk) {
#pragma unroll
            for (int nt = 0; nt < NLI_FA_BK / 8; ++nt) {
                unsigned bk[2], bv[2];
                nli_frag_b(bk, k_s, D + 8, nt * 8, kk * 16, lane);
                nli_mma_bf16(s[nt], qa[kk], bk);
                nli_frag_b(bv, v_s, D + 8, nt * 8, kk * 16, lane);
                nli_mma_bf16(dp[nt], da[kk], bv);  // dP = dO Vᵀ (before the dropout factor)
            }
        }
        // dS = P ⊙ (f ⊙ dP − dd)/√hs with P = exp(S/√hs − lse).
#pragma unroll
        for (int nt = 0; nt < NLI_FA_BK / 8; ++nt) {
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const int x = e >> 1, j = nt * 8 + 2 * tq + (e & 1);
                const bool ok = kseq_s[j] == rw[x].seq;
                const float p = ok ? expf(s[nt][e] / sq - lr[x]) : 0.0f;
                float f = 1.0f;
                if (ok && dr.thr != 0u)
                    f = nli_dropout_factor(dr, rw[x].base + (unsigned long long)(k0 + j - rw[x].start));
                s[nt][e] = p * (dp[nt][e] * f - dr_i[x]) / sq;
            }
        }
        // dQ += dS K.
#pragma unroll
        for (int kc = 0; kc < NLI_FA_BK / 16; ++kc) {
            unsigned pa[4];
            nli_acc_to_a(pa, s[2 * kc], s[2 * kc + 1]);
#pragma unroll
            for (int nd = 0; nd < D / 8; ++nd) {
                unsigned b[2];
                nli_frag_b(b, kt_s, NLI_FA_BK + 8, nd * 8, kc * 16, lane);
                nli_mma_bf16(dq[nd], pa, b);
            }
        }
    }
#pragma unroll
    for (int x = 0; x < 2; ++x) {
        const int r = q0 + warp * 16 + (lane >> 2) + 8 * x;
        if (r >= t_rows) continue;
#pragma unroll
        for (int nd = 0; nd < D / 8; ++nd) {
#pragma unroll
            for (int e = 0; e < 2; ++e) {
                const int col = nd * 8 + 2 * tq + e;
                if (col < hs) nli_st(dqkv + (long long)r * ld + (long long)h * hs + col, dq[nd][2 * x + e]);
            }
        }
    }
}

template <typename A>
__device__ __forceinline__ void nli_fa_backward_prep(float* __restrict__ dd, const A* __restrict__ dout,
                                                     const A* __restrict__ out, int t_rows, int nh, int c) {
    const int lane = threadIdx.x & 31;
    const int r = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    if (r >= t_rows) return;
    const int hs = c / nh;
    for (int h = 0; h < nh; ++h) {
        const A* a = dout + (long long)r * c + (long long)h * hs;
        const A* b = out + (long long)r * c + (long long)h * hs;
        float acc = 0.0f;
        for (int d = lane; d < hs; d += 32) acc += nli_ld(a + d) * nli_ld(b + d);
        acc = nli_warp_sum(acc);
        if (lane == 0) dd[(long long)h * t_rows + r] = acc;
    }
}

extern "C" __global__ void attention_flash_backward_prep(float* __restrict__ dd, const float* __restrict__ dout,
                                                         const float* __restrict__ out, int t_rows, int nh, int c) {
    nli_fa_backward_prep(dd, dout, out, t_rows, nh, c);
}

extern "C" __global__ void attention_flash_backward_prep_bf16(float* __restrict__ dd,
                                                              const unsigned short* __restrict__ dout,
                                                              const unsigned short* __restrict__ out, int t_rows,
                                                              int nh, int c) {
    nli_fa_backward_prep(dd, dout, out, t_rows, nh, c);
}

// The entry points, written out per D (build.rs finds kernels by their literal declarations).

extern "C" __global__ void __launch_bounds__(128)
attention_flash_forward_d16(float* __restrict__ out, float* __restrict__ lse, const float* __restrict__ qkv,
                            const int* __restrict__ cu_seqlens, const int* __restrict__ att_offsets, int nb,
                            int t_rows, int nh, int c, unsigned long long seed, unsigned int step,
                            unsigned int site, unsigned int thr, float scale, unsigned long long doff) {
    nli_fa_forward<16>(out, lse, qkv, cu_seqlens, att_offsets, nb, t_rows, nh, c,
                        nli_make_dropout(seed, step, site, thr, scale, doff));
}

extern "C" __global__ void __launch_bounds__(128)
attention_flash_backward_dkdv_d16(float* __restrict__ dqkv, const float* __restrict__ dout,
                                  const float* __restrict__ lse, const float* __restrict__ dd,
                                  const float* __restrict__ qkv, const int* __restrict__ cu_seqlens,
                                  const int* __restrict__ att_offsets, int nb, int t_rows, int nh, int c,
                                  unsigned long long seed, unsigned int step, unsigned int site,
                                  unsigned int thr, float scale, unsigned long long doff) {
    nli_fa_backward_dkdv<16>(dqkv, dout, lse, dd, qkv, cu_seqlens, att_offsets, nb, t_rows, nh, c,
                              nli_make_dropout(seed, step, site, thr, scale, doff));
}

extern "C" __global__ void __launch_bounds__(128)
attention_flash_backward_dq_d16(float* __restrict__ dqkv, const float* __restrict__ dout,
                                const float* __restrict__ lse, const float* __restrict__ dd,
                                const float* __restrict__ qkv, const int* __restrict__ cu_seqlens,
                                const int* __restrict__ att_offsets, int nb, int t_rows, int nh, int c,
                                unsigned long long seed, unsigned int step, unsigned int site,
                                unsigned int thr, float scale, unsigned long long doff) {
    nli_fa_backward_dq<16>(dqkv, dout, lse, dd, qkv, cu_seqlens, att_offsets, nb, t_rows, nh, c,
                            nli_make_dropout(seed, step, site, thr, scale, doff));
}

extern "C" __global__ void __launch_bounds__(128)
attention_flash_forward_d32(float* __restrict__ out, float* __restrict__ lse, const float* __restrict__ qkv,
                            const int* __restrict__ cu_seqlens, const int* __restrict__ att_offsets, int nb,
                            int t_rows, int nh, int c, unsigned long long seed, unsigned int step,
                            unsigned int site, unsigned int thr, float scale, unsigned long long doff) {
    nli_fa_forward<32>(out, lse, qkv, cu_seqlens, att_offsets, nb, t_rows, nh, c,
                        nli_make_dropout(seed, step, site, thr, scale, doff));
}

extern "C" __global__ void __launch_bounds__(128)
attention_flash_backward_dkdv_d32(float* __restrict__ dqkv, const float* __restrict__ dout,
                                  const float* __restrict__ lse, const float* __restrict__ dd,
                                  const float* __restrict__ qkv, const int* __restrict__ cu_seqlens,
                                  const int* __restrict__ att_offsets, int nb, int t_rows, int nh, int c,
                                  unsigned long long seed, unsigned int step, unsigned int site,
                                  unsigned int thr, float scale, unsigned long long doff) {
    nli_fa_backward_dkdv<32>(dqkv, dout, lse, dd, qkv, cu_seqlens, att_offsets, nb, t_rows, nh, c,
                              nli_make_dropout(seed, step, site, thr, scale, doff));
}

extern "C" __global__ void __launch_bounds__(128)
attention_flash_backward_dq_d32(float* __restrict__ dqkv, const float* __restrict__ dout,
                                const float* __restrict__ lse, const float* __restrict__ dd,
                                const float* __restrict__ qkv, const int* __restrict__ cu_seqlens,
                                const int* __restrict__ att_offsets, int nb, int t_rows, int nh, int c,
                                unsigned long long seed, unsigned int step, unsigned int site,
                                unsigned int thr, float scale, unsigned long long doff) {
    nli_fa_backward_dq<32>(dqkv, dout, lse, dd, qkv, cu_seqlens, att_offsets, nb, t_rows, nh, c,
                            nli_make_dropout(seed, step, site, thr, scale, doff));
}

extern "C" __global__ void __launch_bounds__(128)
attention_flash_forward_d64(float* __restrict__ out, float* __restrict__ lse, const float* __restrict__ qkv,
                            const int* __restrict__ cu_seqlens, const int* __restrict__ att_offsets, int nb,
                            int t_rows, int nh, int c, unsigned long long seed, unsigned int step,
                            unsigned int site, unsigned int thr, float scale, unsigned long long doff) {
    nli_fa_forward<64>(out, lse, qkv, cu_seqlens, att_offsets, nb, t_rows, nh, c,
                        nli_make_dropout(seed, step, site, thr, scale, doff));
}

extern "C" __global__ void __launch_bounds__(128)
attention_flash_backward_dkdv_d64(float* __restrict__ dqkv, const float* __restrict__ dout,
                                  const float* __restrict__ lse, const float* __restrict__ dd,
                                  const float* __restrict__ qkv, const int* __restrict__ cu_seqlens,
                                  const int* __restrict__ att_offsets, int nb, int t_rows, int nh, int c,
                                  unsigned long long seed, unsigned int step, unsigned int site,
                                  unsigned int thr, float scale, unsigned long long doff) {
    nli_fa_backward_dkdv<64>(dqkv, dout, lse, dd, qkv, cu_seqlens, att_offsets, nb, t_rows, nh, c,
                              nli_make_dropout(seed, step, site, thr, scale, doff));
}

extern "C" __global__ void __launch_bounds__(128)
attention_flash_backward_dq_d64(float* __restrict__ dqkv, const float* __restrict__ dout,
                                const float* __restrict__ lse, const float* __restrict__ dd,
                                const float* __restrict__ qkv, const int* __restrict__ cu_seqlens,
                                const int* __restrict__ att_offsets, int nb, int t_rows, int nh, int c,
                                unsigned long long seed, unsigned int step, unsigned int site,
                                unsigned int thr, float scale, unsigned long long doff) {
    nli_fa_backward_dq<64>(dqkv, dout, lse, dd, qkv, cu_seqlens, att_offsets, nb, t_rows, nh, c,
                            nli_make_dropout(seed, step, site, thr, scale, doff));
}

// The same on bf16 activations (qkv, out, dout, dqkv stored as bf16; lse and dd stay float).

extern "C" __global__ void __launch_bounds__(128)
attention_flash_forward_d16_bf16(unsigned short* __restrict__ out, float* __restrict__ lse, const unsigned short* __restrict__ qkv,
                            const int* __restrict__ cu_seqlens, const int* __restrict__ att_offsets, int nb,
                            int t_rows, int nh, int c, unsigned long long seed, unsigned int step,
                            unsigned int site, unsigned int thr, float scale, unsigned long long doff) {
    nli_fa_forward<16>(out, lse, qkv, cu_seqlens, att_offsets, nb, t_rows, nh, c,
                        nli_make_dropout(seed, step, site, thr, scale, doff));
}

extern "C" __global__ void __launch_bounds__(128)
attention_flash_backward_dkdv_d16_bf16(unsigned short* __restrict__ dqkv, const unsigned short* __restrict__ dout,
                                  const float* __restrict__ lse, const float* __restrict__ dd,
                                  const unsigned short* __restrict__ qkv, const int* __restrict__ cu_seqlens,
                                  const int* __restrict__ att_offsets, int nb, int t_rows, int nh, int c,
                                  unsigned long long seed, unsigned int step, unsigned int site,
                                  unsigned int thr, float scale, unsigned long long doff) {
    nli_fa_backward_dkdv<16>(dqkv, dout, lse, dd, qkv, cu_seqlens, att_offsets, nb, t_rows, nh, c,
                              nli_make_dropout(seed, step, site, thr, scale, doff));
}

extern "C" __global__ void __launch_bounds__(128)
attention_flash_backward_dq_d16_bf16(unsigned short* __restrict__ dqkv, const unsigned short* __restrict__ dout,
                                const float* __restrict__ lse, const float* __restrict__ dd,
                                const unsigned short* __restrict__ qkv, const int* __restrict__ cu_seqlens,
                                const int* __restrict__ att_offsets, int nb, int t_rows, int nh, int c,
                                unsigned long long seed, unsigned int step, unsigned int site,
                                unsigned int thr, float scale, unsigned long long doff) {
    nli_fa_backward_dq<16>(dqkv, dout, lse, dd, qkv, cu_seqlens, att_offsets, nb, t_rows, nh, c,
                            nli_make_dropout(seed, step, site, thr, scale, doff));
}

extern "C" __global__ void __launch_bounds__(128)
attention_flash_forward_d32_bf16(unsigned short* __restrict__ out, float* __restrict__ lse, const unsigned short* __restrict__ qkv,
                            const int* __restrict__ cu_seqlens, const int* __restrict__ att_offsets, int nb,
                            int t_rows, int nh, int c, unsigned long long seed, unsigned int step,
                            unsigned int site, unsigned int thr, float scale, unsigned long long doff) {
    nli_fa_forward<32>(out, lse, qkv, cu_seqlens, att_offsets, nb, t_rows, nh, c,
                        nli_make_dropout(seed, step, site, thr, scale, doff));
}

extern "C" __global__ void __launch_bounds__(128)
attention_flash_backward_dkdv_d32_bf16(unsigned short* __restrict__ dqkv, const unsigned short* __restrict__ dout,
                                  const float* __restrict__ lse, const float* __restrict__ dd,
                                  const unsigned short* __restrict__ qkv, const int* __restrict__ cu_seqlens,
                                  const int* __restrict__ att_offsets, int nb, int t_rows, int nh, int c,
                                  unsigned long long seed, unsigned int step, unsigned int site,
                                  unsigned int thr, float scale, unsigned long long doff) {
    nli_fa_backward_dkdv<32>(dqkv, dout, lse, dd, qkv, cu_seqlens, att_offsets, nb, t_rows, nh, c,
                              nli_make_dropout(seed, step, site, thr, scale, doff));
}

extern "C" __global__ void __launch_bounds__(128)
attention_flash_backward_dq_d32_bf16(unsigned short* __restrict__ dqkv, const unsigned short* __restrict__ dout,
                                const float* __restrict__ lse, const float* __restrict__ dd,
                                const unsigned short* __restrict__ qkv, const int* __restrict__ cu_seqlens,
                                const int* __restrict__ att_offsets, int nb, int t_rows, int nh, int c,
                                unsigned long long seed, unsigned int step, unsigned int site,
                                unsigned int thr, float scale, unsigned long long doff) {
    nli_fa_backward_dq<32>(dqkv, dout, lse, dd, qkv, cu_seqlens, att_offsets, nb, t_rows, nh, c,
                            nli_make_dropout(seed, step, site, thr, scale, doff));
}

extern "C" __global__ void __launch_bounds__(128)
attention_flash_forward_d64_bf16(unsigned short* __restrict__ out, float* __restrict__ lse, const unsigned short* __restrict__ qkv,
                            const int* __restrict__ cu_seqlens, const int* __restrict__ att_offsets, int nb,
                            int t_rows, int nh, int c, unsigned long long seed, unsigned int step,
                            unsigned int site, unsigned int thr, float scale, unsigned long long doff) {
    nli_fa_forward<64>(out, lse, qkv, cu_seqlens, att_offsets, nb, t_rows, nh, c,
                        nli_make_dropout(seed, step, site, thr, scale, doff));
}

extern "C" __global__ void __launch_bounds__(128)
attention_flash_backward_dkdv_d64_bf16(unsigned short* __restrict__ dqkv, const unsigned short* __restrict__ dout,
                                  const float* __restrict__ lse, const float* __restrict__ dd,
                                  const unsigned short* __restrict__ qkv, const int* __restrict__ cu_seqlens,
                                  const int* __restrict__ att_offsets, int nb, int t_rows, int nh, int c,
                                  unsigned long long seed, unsigned int step, unsigned int site,
                                  unsigned int thr, float scale, unsigned long long doff) {
    nli_fa_backward_dkdv<64>(dqkv, dout, lse, dd, qkv, cu_seqlens, att_offsets, nb, t_rows, nh, c,
                              nli_make_dropout(seed, step, site, thr, scale, doff));
}

extern "C" __global__ void __launch_bounds__(128)
attention_flash_backward_dq_d64_bf16(unsigned short* __restrict__ dqkv, const unsigned short* __restrict__ dout,
                                const float* __restrict__ lse, const float* __restrict__ dd,
                                const unsigned short* __restrict__ qkv, const int* __restrict__ cu_seqlens,
                                const int* __restrict__ att_offsets, int nb, int t_rows, int nh, int c,
                                unsigned long long seed, unsigned int step, unsigned int site,
                                unsigned int thr, float scale, unsigned long long doff) {
    nli_fa_backward_dq<64>(dqkv, dout, lse, dd, qkv, cu_seqlens, att_offsets, nb, t_rows, nh, c,
                            nli_make_dropout(seed, step, site, thr, scale, doff));
}
