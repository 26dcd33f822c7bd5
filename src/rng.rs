//! Counter-based random numbers (Philox4x32-10, Salmon et al. 2011) for dropout masks and
//! initialisation.
//!
//! A dropout decision is a pure function of (seed, step, site, element index), so the CPU and GPU
//! paths drop the same units, backward regenerates the mask instead of storing it, and a resumed
//! run continues bit for bit.

const M0: u32 = 0xD251_1F53;
const M1: u32 = 0xCD9E_8D57;
const W0: u32 = 0x9E37_79B9;
const W1: u32 = 0xBB67_AE85;

#[inline(always)]
fn mulhilo(a: u32, b: u32) -> (u32, u32) {
    let p = (a as u64) * (b as u64);
    ((p >> 32) as u32, p as u32)
}

/// Philox4x32 with 10 rounds: four 32-bit outputs for a 128-bit counter and a 64-bit key.
#[inline]
pub fn philox4x32_10(counter: [u32; 4], key: [u32; 2]) -> [u32; 4] {
    let mut c = counter;
    let mut k = key;
    for i in 0..10 {
        if i > 0 {
            k[0] = k[0].wrapping_add(W0);
            k[1] = k[1].wrapping_add(W1);
        }
        let (hi0, lo0) = mulhilo(M0, c[0]);
        let (hi1, lo1) = mulhilo(M1, c[2]);
        c = [hi1 ^ c[1] ^ k[0], lo1, hi0 ^ c[3] ^ k[1], lo0];
    }
    c
}

/// The random 32-bit word for element `idx` of dropout site `site` at training step `step`.
///
/// Elements are grouped by four: element `i` uses lane `i % 4` of the Philox block with counter
/// `(i / 4 low, i / 4 high, site, step)` and key `(seed low, seed high)`.
#[inline]
pub fn dropout_bits(seed: u64, step: u64, site: u32, idx: u64) -> u32 {
    let blk = idx / 4;
    let out = philox4x32_10(
        [blk as u32, (blk >> 32) as u32, site, step as u32],
        [seed as u32, (seed >> 32) as u32],
    );
    out[(idx % 4) as usize]
}

/// Integer threshold for drop probability `p`: an element is kept iff `(bits >> 8) >= threshold`,
/// i.e. iff its 24-bit uniform in [0, 1) is >= p.
#[inline]
pub fn dropout_threshold(p: f64) -> u32 {
    (p * 16_777_216.0).ceil().clamp(0.0, 16_777_216.0) as u32
}

/// One dropout site at one step: which elements are kept and the scale of kept ones.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Dropout {
    /// Drop probability in [0, 1). 0 disables dropout (evaluation, parity tests).
    pub p: f64,
    /// Run seed.
    pub seed: u64,
    /// Training step (global, from 0).
    pub step: u64,
    /// Dropout site id (see [`site`]).
    pub site: u32,
    /// Added to every element index: the position of this tensor's first element in the tensor
    /// of the whole batch, for a shard of a batch (data parallel), so that it drops the units the
    /// whole batch would (0 otherwise).
    pub offset: u64,
}

impl Dropout {
    /// No dropout.
    pub const OFF: Dropout = Dropout { p: 0.0, seed: 0, step: 0, site: 0, offset: 0 };

    /// A site's dropout at a step (offset 0).
    pub fn new(p: f64, seed: u64, step: u64, site: u32) -> Dropout {
        Dropout { p, seed, step, site, offset: 0 }
    }

    /// The same dropout with element indices shifted by `offset` (see [`Dropout::offset`]).
    pub fn shifted(self, offset: u64) -> Dropout {
        Dropout { offset: self.offset + offset, ..self }
    }

    /// Whether this dropout does anything.
    #[inline]
    pub fn active(&self) -> bool {
        self.p > 0.0
    }

    /// Whether element `idx` is kept.
    #[inline]
    pub fn keep(&self, idx: u64) -> bool {
        if self.p <= 0.0 {
            return true;
        }
        (dropout_bits(self.seed, self.step, self.site, idx + self.offset) >> 8) >= dropout_threshold(self.p)
    }

    /// The factor applied to element `idx`: 0 if dropped, 1/(1-p) if kept (PyTorch's inverted
    /// dropout).
    #[inline]
    pub fn factor(&self, idx: u64) -> f64 {
        if self.p <= 0.0 {
            1.0
        } else if self.keep(idx) {
            1.0 / (1.0 - self.p)
        } else {
            0.0
        }
    }
}

/// Dropout site ids. Layer `l` uses `3l` (attention probabilities), `3l+1` (AddNorm 1) and
/// `3l+2` (AddNorm 2); the Hugging Face variant adds the embedding and classifier sites.
pub mod site {
    /// Attention-probability dropout in block `l`.
    pub fn attention(l: usize) -> u32 {
        3 * l as u32
    }
    /// Dropout on the attention sub-layer output in block `l` (AddNorm 1).
    pub fn addnorm1(l: usize) -> u32 {
        3 * l as u32 + 1
    }
    /// Dropout on the FFN sub-layer output in block `l` (AddNorm 2).
    pub fn addnorm2(l: usize) -> u32 {
        3 * l as u32 + 2
    }
    /// Dropout after the embedding LayerNorm (Hugging Face BERT).
    pub const EMBEDDING: u32 = 1_000_000;
    /// Dropout before the classifier (Hugging Face BERT).
    pub const CLASSIFIER: u32 = 1_000_001;
}

/// A small seeded generator for host-side randomness (initialisation, shuffling):
/// Philox in counter mode, so a stream is reproducible from (seed, stream id).
#[derive(Clone, Debug)]
pub struct HostRng {
    key: [u32; 2],
    stream: u32,
    counter: u64,
    buf: [u32; 4],
    pos: usize,
}

impl HostRng {
    /// A generator for `seed`, with an independent `stream` id per use (init, shuffle, …).
    pub fn new(seed: u64, stream: u32) -> Self {
        HostRng { key: [seed as u32, (seed >> 32) as u32], stream, counter: 0, buf: [0; 4], pos: 4 }
    }

    /// The next 32 random bits.
    pub fn next_u32(&mut self) -> u32 {
        if self.pos == 4 {
            self.buf = philox4x32_10(
                [self.counter as u32, (self.counter >> 32) as u32, self.stream, 0x5eed],
                self.key,
            );
            self.counter += 1;
            self.pos = 0;
        }
        let x = self.buf[self.pos];
        self.pos += 1;
        x
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        ((self.next_u32() as u64) << 32) | self.next_u32() as u64
    }

    /// Uniform in [0, 1) with 53 random bits.
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Standard normal (Box-Muller).
    pub fn normal(&mut self) -> f64 {
        let u1 = 1.0 - self.uniform(); // (0, 1]
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }

    /// Uniform integer in [0, n) without modulo bias (Lemire's method).
    pub fn below(&mut self, n: u64) -> u64 {
        assert!(n > 0);
        loop {
            let x = self.next_u64();
            let m = (x as u128) * (n as u128);
            let lo = m as u64;
            if lo >= n.wrapping_neg() % n {
                return (m >> 64) as u64;
            }
        }
    }

    /// Fisher-Yates shuffle.
    pub fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = self.below(i as u64 + 1) as usize;
            v.swap(i, j);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn philox_known_answer() {
        // Random123 kat_vectors: philox4x32 10 rounds.
        assert_eq!(philox4x32_10([0, 0, 0, 0], [0, 0]), [0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8]);
        assert_eq!(
            philox4x32_10([0xffffffff; 4], [0xffffffff; 2]),
            [0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd]
        );
        assert_eq!(
            philox4x32_10([0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344], [0xa4093822, 0x299f31d0]),
            [0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1]
        );
    }

    #[test]
    fn dropout_rate_is_p() {
        let d = Dropout::new(0.2, 7, 3, 1);
        let n = 200_000u64;
        let kept = (0..n).filter(|&i| d.keep(i)).count() as f64 / n as f64;
        assert!((kept - 0.8).abs() < 0.005, "kept fraction {kept}");
        let d2 = Dropout { step: 4, ..d };
        let same = (0..1000u64).filter(|&i| d.keep(i) == d2.keep(i)).count();
        assert!(same < 800, "steps must give different masks");
    }

    #[test]
    fn below_is_uniform_and_shuffle_is_permutation() {
        let mut r = HostRng::new(1, 2);
        let mut counts = [0usize; 5];
        for _ in 0..50_000 {
            counts[r.below(5) as usize] += 1;
        }
        for c in counts {
            assert!((c as f64 - 10_000.0).abs() < 400.0, "{counts:?}");
        }
        let mut v: Vec<usize> = (0..100).collect();
        r.shuffle(&mut v);
        let mut s = v.clone();
        s.sort();
        assert_eq!(s, (0..100).collect::<Vec<_>>());
        assert_ne!(v, s);
    }

    #[test]
    fn a_shifted_dropout_is_the_whole_tensors_dropout_further_on() {
        let d = Dropout::new(0.4, 11, 2, 3);
        let shard = d.shifted(1000);
        for i in 0..500u64 {
            assert_eq!(shard.keep(i), d.keep(1000 + i));
            assert_eq!(shard.factor(i), d.factor(1000 + i));
        }
        assert_eq!(d.shifted(5).shifted(7).offset, 12);
    }
}
