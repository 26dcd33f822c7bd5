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
                                             unsigned int thr, float scale) {
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
    const nli_dropout d = nli_make_dropout(seed, step, site, thr, scale);

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
                                              unsigned int thr, float scale) {
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
    const nli_dropout d = nli_make_dropout(seed, step, site, thr, scale);

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
