//! Dropout factors from the counter-based Philox4x32-10 generator, eight Philox blocks (32
//! elements) at a time so that the 32×32→64-bit multiplies vectorise (AVX2 / AVX-512 when the
//! CPU has them, chosen at run time; plain code elsewhere).
//!
//! The decisions are bit-identical to [`Dropout::keep`]: element `i` uses lane `i % 4` of the
//! block with counter `(i/4 low, i/4 high, site, step)` and key `(seed low, seed high)`, and is
//! kept iff `(bits >> 8) >= dropout_threshold(p)`. A unit test checks the equality.

use super::{cast, Float};
use crate::rng::{dropout_threshold, philox4x32_10, Dropout};

// Philox4x32 round and key-schedule constants (Salmon et al. 2011), as in `crate::rng`.
const M0: u32 = 0xD251_1F53;
const M1: u32 = 0xCD9E_8D57;
const W0: u32 = 0x9E37_79B9;
const W1: u32 = 0xBB67_AE85;

/// Philox blocks computed together.
const LANES: usize = 8;

/// The four output words of blocks `blk0 .. blk0 + LANES`, as `[word][lane]`.
#[inline(always)]
fn philox_x8(blk0: u64, site: u32, step: u32, key: [u32; 2]) -> [[u32; LANES]; 4] {
    let (mut c0, mut c1) = ([0u32; LANES], [0u32; LANES]);
    for l in 0..LANES {
        let b = blk0.wrapping_add(l as u64);
        c0[l] = b as u32;
        c1[l] = (b >> 32) as u32;
    }
    let (mut c2, mut c3) = ([site; LANES], [step; LANES]);
    let (mut k0, mut k1) = (key[0], key[1]);
    for r in 0..10 {
        if r > 0 {
            k0 = k0.wrapping_add(W0);
            k1 = k1.wrapping_add(W1);
        }
        for l in 0..LANES {
            let p0 = (M0 as u64) * (c0[l] as u64);
            let p1 = (M1 as u64) * (c2[l] as u64);
            let n0 = ((p1 >> 32) as u32) ^ c1[l] ^ k0;
            let n2 = ((p0 >> 32) as u32) ^ c3[l] ^ k1;
            c1[l] = p1 as u32;
            c3[l] = p0 as u32;
            c0[l] = n0;
            c2[l] = n2;
        }
    }
    [c0, c1, c2, c3]
}

/// The parameters of one fill.
#[derive(Clone, Copy)]
struct Site {
    site: u32,
    step: u32,
    key: [u32; 2],
    thr: u32,
}

/// Factors of elements `idx .. idx + out.len()` one Philox call per element: for the unaligned
/// head and tail.
#[inline(always)]
fn fill_scalar<F: Float>(s: Site, idx: u64, out: &mut [F], scale: F) {
    for (i, o) in out.iter_mut().enumerate() {
        let e = idx + i as u64;
        let blk = e / 4;
        let bits = philox4x32_10([blk as u32, (blk >> 32) as u32, s.site, s.step], s.key)[(e % 4) as usize];
        *o = if (bits >> 8) >= s.thr { scale } else { F::zero() };
    }
}

/// Factors of elements `idx .. idx + out.len()`, `idx` a multiple of 4.
#[inline(always)]
fn fill_aligned<F: Float>(s: Site, idx: u64, out: &mut [F], scale: F) {
    const N: usize = 4 * LANES;
    let mut chunks = out.chunks_exact_mut(N);
    let mut blk = idx / 4;
    for chunk in &mut chunks {
        let w = philox_x8(blk, s.site, s.step, s.key);
        for l in 0..LANES {
            for (j, word) in w.iter().enumerate() {
                chunk[4 * l + j] = if (word[l] >> 8) >= s.thr { scale } else { F::zero() };
            }
        }
        blk += LANES as u64;
    }
    let rest = chunks.into_remainder();
    fill_scalar(s, blk * 4, rest, scale);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn fill_avx512<F: Float>(s: Site, idx: u64, out: &mut [F], scale: F) {
    fill_aligned(s, idx, out, scale)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn fill_avx2<F: Float>(s: Site, idx: u64, out: &mut [F], scale: F) {
    fill_aligned(s, idx, out, scale)
}

/// Writes the dropout factors of elements `start .. start + out.len()` into `out`: 0 for a
/// dropped element, `1/(1-p)` (rounded in `F` like PyTorch's `noise.div_(1-p)`) for a kept one;
/// all ones when dropout is off.
pub(crate) fn dropout_factors<F: Float>(d: &Dropout, start: u64, out: &mut [F]) {
    if !d.active() {
        out.fill(F::one());
        return;
    }
    let scale = F::one() / cast::<F>(1.0 - d.p);
    let start = start + d.offset;
    let s = Site {
        site: d.site,
        step: d.step as u32,
        key: [d.seed as u32, (d.seed >> 32) as u32],
        thr: dropout_threshold(d.p),
    };
    // Unaligned head, so that the bulk starts at a block boundary.
    let head = (((4 - start % 4) % 4) as usize).min(out.len());
    let (h, rest) = out.split_at_mut(head);
    fill_scalar(s, start, h, scale);
    let idx = start + head as u64;
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU supports AVX-512F (checked just above).
            return unsafe { fill_avx512(s, idx, rest, scale) };
        }
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU supports AVX2 (checked just above).
            return unsafe { fill_avx2(s, idx, rest, scale) };
        }
    }
    fill_aligned(s, idx, rest, scale)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dropout_factors_match_dropout_keep() {
        let d = Dropout::new(0.3, 0x1234_5678_9abc, 17, 5);
        for start in [0u64, 1, 2, 3, 5, 4093, (1 << 32) - 7, 1 << 33] {
            for n in [0, 1, 3, 37, 200] {
                let mut f = vec![0f64; n];
                dropout_factors(&d, start, &mut f);
                for (i, &x) in f.iter().enumerate() {
                    assert_eq!(x, d.factor(start + i as u64), "start {start} element {i}");
                }
            }
        }
        let mut f = vec![0f32; 5];
        dropout_factors(&Dropout::OFF, 0, &mut f);
        assert!(f.iter().all(|&x| x == 1.0));
    }

    #[test]
    fn dropout_factors_follow_the_offset() {
        let d = Dropout::new(0.25, 5, 9, 4);
        for (start, off) in [(0u64, 3u64), (7, 1000), (13, 2)] {
            let mut a = vec![0f64; 37];
            dropout_factors(&d.shifted(off), start, &mut a);
            let mut b = vec![0f64; 37];
            dropout_factors(&d, start + off, &mut b);
            assert_eq!(a, b, "start {start} offset {off}");
        }
    }

    #[test]
    fn portable_and_vector_paths_agree() {
        let d = Dropout::new(0.5, 99, 1, 2);
        let s = Site { site: 2, step: 1, key: [99, 0], thr: dropout_threshold(0.5) };
        let (mut a, mut b) = (vec![0f32; 1000], vec![0f32; 1000]);
        fill_aligned(s, 64, &mut a, 2.0);
        dropout_factors(&d, 64, &mut b);
        assert_eq!(a, b);
    }
}
