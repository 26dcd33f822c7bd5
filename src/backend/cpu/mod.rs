//! The CPU backend `Cpu<F>`, generic over `f64` (the reference every gradient is checked
//! against) and `f32` (the fast multi-threaded CPU trainer).
//!
//! Buffers are plain `Vec<F>` / `Vec<i32>`, views are slices. Matrix products go through the
//! `gemm` crate (which picks AVX2 / AVX-512 kernels at run time); everything else is hand-written
//! here, parallelised with rayon on a private pool of `threads` threads. Work is split so that
//! every output element is written by exactly one task and our own reductions run in a fixed
//! order, so they do not depend on the number of threads (gemm's threaded path is checked to
//! match its single-threaded one bit for bit in a unit test).
//!
//! One file per op family, named as its kernels/<family>.cu: `embedding`, `matmul` (linear layers,
//! and the strided products attention uses), `attention` (packed multi-head attention),
//! `layernorm` (dropout + residual + LayerNorm), `activation` (nonlinearities, stand-alone
//! dropout), `classifier` (`<cls>` gather, softmax cross-entropy), `adam` (the optimizer step),
//! `reduce` (column sums), `convert` (bf16 rounding, the twin of the GPU's conversion); plus
//! `philox` (dropout factors, vectorised). This file holds [`Cpu`] and the [`Backend`] impl, which
//! delegates to them.
//!
//! Preconditions that only a programming error can break (buffer sizes, a consistent
//! [`BatchLayout`](super::BatchLayout), `c % nh == 0`, in-range token ids that the data pipeline
//! has already validated) are checked with `assert!` and panic with a message naming the op and
//! the sizes: an out-of-bounds view must never reach the `unsafe` code. An out-of-range label
//! gives a NaN loss instead (see `crossentropy_forward`).

mod activation;
mod adam;
mod attention;
pub mod classifier;
pub mod convert;
mod embedding;
mod layernorm;
mod matmul;
mod philox;
mod reduce;

use super::{Activation, AdamStep, Backend, DeviceBatch};
use crate::error::{Error, Result};
use crate::float::Float;
use crate::rng::Dropout;
pub(crate) use philox::dropout_factors;
use std::marker::PhantomData;
use std::ops::Range;

/// The CPU backend over scalar `F` (`f32` or `f64`).
pub struct Cpu<F> {
    threads: usize,
    pool: rayon::ThreadPool,
    _f: PhantomData<fn() -> F>,
}

impl<F: Float> Cpu<F> {
    /// A CPU backend running on `threads` threads (0 = one per logical core).
    pub fn new(threads: usize) -> Result<Self> {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("nli-bert-cpu-{i}"))
            .build()
            .map_err(|e| Error::msg(format!("cannot start a CPU thread pool of {threads} threads: {e}")))?;
        let threads = pool.current_num_threads();
        Ok(Cpu { threads, pool, _f: PhantomData })
    }

    /// Number of worker threads.
    pub fn threads(&self) -> usize {
        self.threads
    }
}

impl<F: Float> std::fmt::Debug for Cpu<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cpu").field("dtype", &F::NAME).field("threads", &self.threads).finish()
    }
}

/// `x` rounded to `F` (avoids the clash with `num_traits::FromPrimitive::from_f64`).
#[inline(always)]
pub(crate) fn cast<F: Float>(x: f64) -> F {
    <F as Float>::from_f64(x)
}

/// `x` widened to f64 (avoids the clash with `num_traits::ToPrimitive::to_f64`).
#[inline(always)]
pub(crate) fn wide<F: Float>(x: F) -> f64 {
    <F as Float>::to_f64(x)
}

/// Elements per rayon task for element-wise work.
pub(crate) const ELEMS_PER_TASK: usize = 1 << 14;

/// Rows per rayon task for row-wise work on rows of length `c`.
#[inline]
pub(crate) fn rows_per_task(c: usize) -> usize {
    (ELEMS_PER_TASK / c.max(1)).max(1)
}

/// Checks that a layout is internally consistent and covers `t` rows, so that the per-sequence
/// views built from it stay in bounds. Returns T.
pub(crate) fn check_layout(op: &str, layout: &super::BatchLayout) -> usize {
    let cu = &layout.cu_seqlens;
    let ao = &layout.att_offsets;
    assert!(
        !cu.is_empty() && cu[0] == 0 && ao.len() == cu.len() && ao[0] == 0,
        "{op}: malformed BatchLayout (cu_seqlens {} entries, att_offsets {} entries)",
        cu.len(),
        ao.len()
    );
    for b in 0..cu.len() - 1 {
        assert!(cu[b + 1] >= cu[b], "{op}: cu_seqlens not sorted at sequence {b}");
        let l = cu[b + 1] - cu[b];
        assert!(ao[b + 1] == ao[b] + l * l, "{op}: att_offsets[{}] != att_offsets[{b}] + len²", b + 1);
    }
    layout.t()
}

/// A raw pointer that may cross threads. Used where parallel tasks write provably disjoint,
/// non-contiguous parts of one buffer (see each use's `SAFETY` comment).
#[derive(Clone, Copy)]
pub(crate) struct SendPtr<T>(*mut T);
// SAFETY: the pointer is only dereferenced by tasks that write disjoint elements, while the owning
// `&mut [T]` borrow is held by the spawning function for the whole parallel region.
unsafe impl<T: Send> Send for SendPtr<T> {}
// SAFETY: as above; no element is accessed by two tasks.
unsafe impl<T: Send> Sync for SendPtr<T> {}
impl<T> SendPtr<T> {
    /// The pointer (a method, so closures capture the whole `Send` wrapper).
    #[inline(always)]
    pub(crate) fn get(self) -> *mut T {
        self.0
    }
}

impl<F: Float> Backend for Cpu<F> {
    type F = F;
    type Buf = Vec<F>;
    type IBuf = Vec<i32>;
    type Slice<'a>
        = &'a [F]
    where
        Self: 'a;
    type SliceMut<'a>
        = &'a mut [F]
    where
        Self: 'a;
    type Graph = ();

    fn name(&self) -> String {
        format!("cpu ({} thread{})", self.threads, if self.threads == 1 { "" } else { "s" })
    }

    fn alloc(&self, n: usize) -> Result<Vec<F>> {
        Ok(vec![F::zero(); n])
    }
    fn upload(&self, host: &[F]) -> Result<Vec<F>> {
        Ok(host.to_vec())
    }
    fn upload_into(&self, dst: &mut [F], host: &[F]) -> Result<()> {
        if dst.len() != host.len() {
            return Err(crate::error::Error::msg(format!(
                "upload_into: {} host values into a view of {} elements",
                host.len(),
                dst.len()
            )));
        }
        dst.copy_from_slice(host);
        Ok(())
    }
    fn upload_i32(&self, host: &[i32]) -> Result<Vec<i32>> {
        Ok(host.to_vec())
    }
    fn download(&self, s: &[F]) -> Result<Vec<F>> {
        Ok(s.to_vec())
    }
    fn buf_len(&self, b: &Vec<F>) -> usize {
        b.len()
    }
    fn view<'a>(&self, b: &'a Vec<F>) -> &'a [F] {
        b
    }
    fn slice<'a>(&self, b: &'a Vec<F>, r: Range<usize>) -> &'a [F] {
        &b[r]
    }
    fn view_mut<'a>(&self, b: &'a mut Vec<F>) -> &'a mut [F] {
        b
    }
    fn slice_mut<'a>(&self, b: &'a mut Vec<F>, r: Range<usize>) -> &'a mut [F] {
        &mut b[r]
    }
    fn reborrow_mut<'a>(&self, s: &'a mut &mut [F]) -> &'a mut [F] {
        s
    }
    fn as_slice<'a>(&self, s: &'a &mut [F]) -> &'a [F] {
        s
    }
    /// Disjoint mutable views. Panics (in every build: overlapping `&mut` would be unsound) if
    /// the ranges are unsorted, overlapping or out of bounds; that is a programming error.
    fn split_mut<'a>(&self, b: &'a mut Vec<F>, ranges: &[Range<usize>]) -> Vec<&'a mut [F]> {
        let mut out = Vec::with_capacity(ranges.len());
        let mut rest: &'a mut [F] = b.as_mut_slice();
        let mut pos = 0usize;
        for (i, r) in ranges.iter().enumerate() {
            assert!(
                r.start >= pos && r.start <= r.end && r.end <= pos + rest.len(),
                "split_mut: range {i} ({r:?}) is unsorted, overlaps the previous one or exceeds the \
                 buffer of {} elements",
                pos + rest.len()
            );
            let (_, tail) = std::mem::take(&mut rest).split_at_mut(r.start - pos);
            let (mid, tail) = tail.split_at_mut(r.end - r.start);
            out.push(mid);
            rest = tail;
            pos = r.end;
        }
        out
    }
    fn zero(&self, s: &mut [F]) {
        s.fill(F::zero());
    }

    fn embedding_forward(
        &self,
        out: &mut [F],
        batch: &DeviceBatch<Self>,
        wte: &[F],
        wse: &[F],
        wpe: &[F],
        c: usize,
    ) {
        self.pool.install(|| embedding::embedding_forward(out, batch, wte, wse, wpe, c))
    }
    fn embedding_backward(
        &self,
        dwte: &mut [F],
        dwse: &mut [F],
        dwpe: Option<&mut [F]>,
        dout: &[F],
        batch: &DeviceBatch<Self>,
        c: usize,
    ) {
        self.pool.install(|| embedding::embedding_backward(dwte, dwse, dwpe, dout, batch, c))
    }

    fn matmul_forward(
        &self,
        out: &mut [F],
        inp: &[F],
        weight: &[F],
        bias: Option<&[F]>,
        n: usize,
        ic: usize,
        oc: usize,
    ) {
        self.pool.install(|| matmul::matmul_forward(self.threads, out, inp, weight, bias, n, ic, oc))
    }
    fn matmul_backward(
        &self,
        dinp: Option<&mut [F]>,
        accumulate_dinp: bool,
        dweight: &mut [F],
        dbias: Option<&mut [F]>,
        dout: &[F],
        inp: &[F],
        weight: &[F],
        n: usize,
        ic: usize,
        oc: usize,
    ) {
        self.pool.install(|| {
            matmul::matmul_backward(
                self.threads,
                dinp,
                accumulate_dinp,
                dweight,
                dbias,
                dout,
                inp,
                weight,
                n,
                ic,
                oc,
            )
        })
    }

    fn attention_forward(
        &self,
        out: &mut [F],
        att: &mut [F],
        qkv: &[F],
        batch: &DeviceBatch<Self>,
        nh: usize,
        c: usize,
        dropout: Dropout,
    ) {
        self.pool.install(|| attention::attention_forward(out, att, qkv, &batch.layout, nh, c, &dropout))
    }
    fn attention_backward(
        &self,
        dqkv: &mut [F],
        dout: &[F],
        _out: &[F],
        att: &[F],
        qkv: &[F],
        batch: &DeviceBatch<Self>,
        nh: usize,
        c: usize,
        dropout: Dropout,
    ) {
        self.pool
            .install(|| attention::attention_backward(dqkv, dout, att, qkv, &batch.layout, nh, c, &dropout))
    }

    fn layernorm_forward(
        &self,
        out: &mut [F],
        sum: &mut [F],
        mean: &mut [F],
        rstd: &mut [F],
        res: &[F],
        sub: Option<&[F]>,
        weight: &[F],
        bias: &[F],
        eps: f64,
        dropout: Dropout,
        t: usize,
        c: usize,
    ) {
        self.pool.install(|| {
            layernorm::layernorm_forward(out, sum, mean, rstd, res, sub, weight, bias, eps, &dropout, t, c)
        })
    }
    fn layernorm_backward(
        &self,
        dres: &mut [F],
        dsub: Option<&mut [F]>,
        dweight: &mut [F],
        dbias: &mut [F],
        dout: &[F],
        sum: &[F],
        mean: &[F],
        rstd: &[F],
        weight: &[F],
        dropout: Dropout,
        t: usize,
        c: usize,
    ) {
        self.pool.install(|| {
            layernorm::layernorm_backward(
                dres, dsub, dweight, dbias, dout, sum, mean, rstd, weight, &dropout, t, c,
            )
        })
    }

    fn activation_forward(&self, out: &mut [F], inp: &[F], act: Activation) {
        self.pool.install(|| activation::activation_forward(out, inp, act))
    }
    fn activation_backward(&self, dinp: &mut [F], dout: &[F], inp: &[F], out: &[F], act: Activation) {
        self.pool.install(|| activation::activation_backward(dinp, dout, inp, out, act))
    }

    fn cls_forward(&self, out: &mut [F], x: &[F], batch: &DeviceBatch<Self>, c: usize) {
        classifier::cls_forward(out, x, &batch.layout, c)
    }
    fn cls_backward(&self, dx: &mut [F], dout: &[F], batch: &DeviceBatch<Self>, c: usize) {
        self.pool.install(|| classifier::cls_backward(dx, dout, &batch.layout, c))
    }

    fn dropout_forward(&self, out: &mut [F], inp: &[F], dropout: Dropout) {
        self.pool.install(|| activation::dropout_apply("dropout_forward", out, inp, &dropout))
    }
    fn dropout_backward(&self, dinp: &mut [F], dout: &[F], dropout: Dropout) {
        self.pool.install(|| activation::dropout_apply("dropout_backward", dinp, dout, &dropout))
    }

    fn crossentropy_forward(
        &self,
        losses: &mut [F],
        probs: &mut [F],
        logits: &[F],
        batch: &DeviceBatch<Self>,
        k: usize,
    ) {
        classifier::crossentropy_forward(losses, probs, logits, &batch.labels, k)
    }
    fn crossentropy_backward(
        &self,
        dlogits: &mut [F],
        probs: &[F],
        batch: &DeviceBatch<Self>,
        k: usize,
        scale: f64,
    ) {
        classifier::crossentropy_backward(dlogits, probs, &batch.labels, k, scale)
    }

    fn adam_update(&self, params: &mut [F], grads: &[F], m: &mut [F], v: &mut [F], step: &AdamStep) {
        self.pool.install(|| adam::adam_update(params, grads, m, v, step))
    }

    #[allow(clippy::too_many_arguments)]
    fn adam_update_rows(
        &self,
        params: &mut [F],
        grads: &[F],
        m: &mut [F],
        v: &mut [F],
        rows: &[u32],
        row_len: usize,
        step: &AdamStep,
    ) {
        self.pool.install(|| adam::adam_update_rows(params, grads, m, v, rows, row_len, step))
    }

    fn zero_rows(&self, buf: &mut [F], rows: &[u32], row_len: usize) {
        adam::zero_rows(buf, rows, row_len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_mut_gives_disjoint_views() {
        let cpu = Cpu::<f64>::new(1).unwrap();
        let mut b = (0..10).map(|x| x as f64).collect::<Vec<_>>();
        let v = cpu.split_mut(&mut b, &[1..3, 3..3, 5..10]);
        assert_eq!(v.len(), 3);
        assert_eq!(v[0], &[1.0, 2.0]);
        assert!(v[1].is_empty());
        assert_eq!(v[2][0], 5.0);
    }

    #[test]
    #[should_panic(expected = "split_mut")]
    fn split_mut_rejects_overlap() {
        let cpu = Cpu::<f64>::new(1).unwrap();
        let mut b = vec![0.0; 10];
        let _ = cpu.split_mut(&mut b, &[0..5, 4..6]);
    }

    #[test]
    fn name_mentions_threads() {
        let cpu = Cpu::<f32>::new(2).unwrap();
        assert_eq!(cpu.threads(), 2);
        assert_eq!(cpu.name(), "cpu (2 threads)");
    }
}
