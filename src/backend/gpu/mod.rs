//! The GPU backend `Gpu<D>`: the [`Backend`](super::Backend) ops as launches of our CUDA kernels
//! (kernels/*.cu) plus f32 matrix products, over a [`Device`]: [`cuda::Cuda`] (a real GPU) or
//! [`emu::Emu`] (the CUDA execution model on the CPU, for tests without a GPU). The launch code
//! here is the same for both.
//!
//! Storage is f32 (the parity precision; bf16 is issue 5). Grid math and precondition checks
//! live in the launchers: a buffer too small for the shapes is a programming error and panics
//! with the op's name before anything reaches the device. Device failures (a launch error, an
//! out-of-memory) cannot be returned by the trait's ops, so the first one is kept ("sticky", as
//! CUDA does) and returned by the next [`Backend::download`] or [`Gpu::check`]; later ops are
//! skipped.
//!
//! Files: `device` (the `Device` trait), `cuda` (cudarc), `emu` (the emulator), `attention`,
//! `addnorm`, `loss` (the launchers of those kernel families); the simple element-wise
//! families and the matrix products are launched from this file.

pub mod addnorm;
pub mod attention;
pub mod cuda;
pub mod device;
pub mod emu;
pub mod loss;
pub mod nvrtc;

use super::{Activation, AdamStep, Backend, DeviceBatch};
use crate::error::{Error, Result};
use crate::rng::{dropout_threshold, Dropout};
use device::{check_args, ArgKind, DevPtr, Device, Gemm, KArg, LaunchCfg};
use std::marker::PhantomData;
use std::ops::Range;
use std::sync::{Arc, Mutex};

include!(concat!(env!("OUT_DIR"), "/kernels.rs"));

/// Threads per block of the element-wise kernels.
pub(crate) const THREADS: u32 = 256;

/// Device memory blocks kept for reuse: freeing is slow on CUDA (it waits for the device) and
/// a training step would otherwise allocate and free its batch buffers every step. Blocks are
/// grouped by size class (powers of two from 256 bytes); a reused block is zeroed on the stream.
pub(crate) struct Pool<D: Device> {
    dev: Arc<D>,
    free: Mutex<std::collections::HashMap<usize, Vec<DevPtr>>>,
}

impl<D: Device> Pool<D> {
    fn class(bytes: usize) -> usize {
        bytes.max(256).next_power_of_two()
    }

    fn get(&self, bytes: usize) -> Result<DevPtr> {
        let class = Self::class(bytes);
        let reused = self.free.lock().unwrap_or_else(|p| p.into_inner()).get_mut(&class).and_then(Vec::pop);
        match reused {
            Some(ptr) => {
                // SAFETY: `ptr` is a pooled block of `class >= bytes` bytes that nothing uses.
                unsafe { self.dev.memset_zero(ptr, bytes)? };
                Ok(ptr)
            }
            None => self.dev.alloc(class),
        }
    }

    fn put(&self, ptr: DevPtr, bytes: usize) {
        let class = Self::class(bytes);
        self.free.lock().unwrap_or_else(|p| p.into_inner()).entry(class).or_default().push(ptr);
    }
}

impl<D: Device> Drop for Pool<D> {
    fn drop(&mut self) {
        let free = std::mem::take(&mut *self.free.lock().unwrap_or_else(|p| p.into_inner()));
        for ptr in free.into_values().flatten() {
            // SAFETY: pooled blocks came from `alloc` on this device and are owned by the pool only.
            unsafe { self.dev.free(ptr) };
        }
    }
}

/// An owned device buffer of `T` (f32 or i32), returned to the pool on drop.
pub struct GBuf<D: Device, T> {
    pool: Arc<Pool<D>>,
    ptr: DevPtr,
    len: usize,
    _t: PhantomData<T>,
}

impl<D: Device, T> GBuf<D, T> {
    /// Device address of element 0.
    pub fn ptr(&self) -> DevPtr {
        self.ptr
    }
    /// Number of elements.
    pub fn len(&self) -> usize {
        self.len
    }
    /// Whether the buffer is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl<D: Device, T> Drop for GBuf<D, T> {
    fn drop(&mut self) {
        if self.ptr != 0 {
            self.pool.put(self.ptr, self.len * ELEM as usize);
        }
    }
}

/// A shared view of `len` f32 elements at `ptr`.
#[derive(Clone, Copy, Debug)]
pub struct GView<'a> {
    /// Device address of the first element.
    pub ptr: DevPtr,
    /// Number of elements.
    pub len: usize,
    _l: PhantomData<&'a ()>,
}

/// A mutable view of `len` f32 elements at `ptr`.
#[derive(Debug)]
pub struct GViewMut<'a> {
    /// Device address of the first element.
    pub ptr: DevPtr,
    /// Number of elements.
    pub len: usize,
    _l: PhantomData<&'a mut ()>,
}

impl<'a> GViewMut<'a> {
    /// A shared view of the same elements.
    pub fn as_view(&self) -> GView<'_> {
        GView { ptr: self.ptr, len: self.len, _l: PhantomData }
    }
}

/// Bytes per element of every buffer (f32 and i32).
const ELEM: u64 = 4;

/// The GPU backend over a device `D`.
pub struct Gpu<D: Device> {
    dev: Arc<D>,
    pool: Arc<Pool<D>>,
    sticky: Mutex<Option<String>>,
    /// Scratch for row lists (Adam's sparse rows): reused, grown when needed.
    rows: Mutex<Option<GBuf<D, i32>>>,
    /// Matrix products on bf16 copies of their operands (fp32 accumulation), see [`Gpu::new_bf16`].
    bf16: bool,
}

impl<D: Device> Gpu<D> {
    /// A backend on `dev`.
    pub fn new(dev: D) -> Self {
        let dev = Arc::new(dev);
        let pool = Arc::new(Pool { dev: dev.clone(), free: Mutex::new(Default::default()) });
        Gpu { dev, pool, sticky: Mutex::new(None), rows: Mutex::new(None), bf16: false }
    }

    /// A backend on `dev` whose matrix products read bf16 copies of their operands and
    /// accumulate in fp32 (tensor cores on a GPU); parameters, Adam state, activations, LayerNorm,
    /// softmax and the loss stay f32 (`--precision bf16`).
    pub fn new_bf16(dev: D) -> Self {
        Gpu { bf16: true, ..Self::new(dev) }
    }

    /// Whether the matrix products run in bf16.
    pub fn is_bf16(&self) -> bool {
        self.bf16
    }

    /// The device.
    pub fn device(&self) -> &D {
        &self.dev
    }

    /// Waits for the device and returns the first error of any earlier op.
    pub fn check(&self) -> Result<()> {
        if let Some(e) = self.sticky_error() {
            return Err(e);
        }
        let r = self.dev.synchronize();
        self.record(r);
        self.sticky_error().map_or(Ok(()), Err)
    }

    fn sticky_error(&self) -> Option<Error> {
        let g = self.sticky.lock().unwrap_or_else(|p| p.into_inner());
        g.as_ref().map(|m| Error::msg(format!("{}: {m}", self.dev.name())))
    }

    fn failed(&self) -> bool {
        self.sticky.lock().unwrap_or_else(|p| p.into_inner()).is_some()
    }

    /// Keeps the first error.
    pub(crate) fn record(&self, r: Result<()>) {
        if let Err(e) = r {
            let mut g = self.sticky.lock().unwrap_or_else(|p| p.into_inner());
            if g.is_none() {
                *g = Some(e.to_string());
            }
        }
    }

    /// Launches kernel `name` after checking the arguments against its signature.
    pub(crate) fn launch(&self, name: &str, cfg: LaunchCfg, args: &[KArg]) {
        if self.failed() {
            return;
        }
        let r = check_args(name, &cfg, args).and_then(|()| {
            // SAFETY: every launcher checks the views it passes against the shapes it passes.
            unsafe { self.dev.launch(name, &cfg, args) }
        });
        self.record(r);
    }

    /// Launches an element-wise kernel over `n` items (one thread each).
    pub(crate) fn launch_n(&self, name: &str, n: usize, args: &[KArg]) {
        if n == 0 {
            return;
        }
        let blocks = n.div_ceil(THREADS as usize);
        if blocks > i32::MAX as usize {
            self.record(Err(Error::msg(format!("{name}: {n} elements exceed one launch"))));
            return;
        }
        self.launch(name, LaunchCfg::linear(blocks as u32, THREADS, 0), args);
    }

    pub(crate) fn sgemm(&self, g: Gemm) {
        if self.failed() || g.m == 0 || g.n == 0 {
            return;
        }
        if self.bf16 && g.k > 0 {
            return self.gemm_bf16(g);
        }
        // SAFETY: the launcher checked the matrices against the views.
        let r = unsafe { self.dev.sgemm(&g) };
        self.record(r);
    }

    /// [`Gpu::sgemm`] on bf16 copies of A and B (pooled scratch, converted on the device).
    fn gemm_bf16(&self, g: Gemm) {
        let (ar, ac) = if g.trans_a { (g.k, g.m) } else { (g.m, g.k) };
        let (br, bc) = if g.trans_b { (g.n, g.k) } else { (g.k, g.n) };
        let span = |rows: usize, cols: usize, ld: usize| (rows - 1) * ld + cols;
        let (na, nb) = (span(ar, ac, g.lda), span(br, bc, g.ldb));
        let scratch = |n: usize| self.alloc_buf::<f32>(n.div_ceil(2));
        let (a16, b16) = match (scratch(na), scratch(nb)) {
            (Ok(a), Ok(b)) => (a, b),
            (Err(e), _) | (_, Err(e)) => return self.record(Err(e)),
        };
        self.launch_n("convert_f32_to_bf16", na, &[KArg::Ptr(a16.ptr), KArg::Ptr(g.a), l(na)]);
        self.launch_n("convert_f32_to_bf16", nb, &[KArg::Ptr(b16.ptr), KArg::Ptr(g.b), l(nb)]);
        if self.failed() {
            return;
        }
        // SAFETY: the copies hold the same (rows, cols, ld) matrices as A and B; C as checked by
        // the launcher.
        let r = unsafe { self.dev.gemm_bf16(&Gemm { a: a16.ptr, b: b16.ptr, ..g }) };
        self.record(r);
    }

    fn zero_bytes(&self, ptr: DevPtr, n: usize) {
        if self.failed() || n == 0 {
            return;
        }
        // SAFETY: callers pass a view's address and length.
        let r = unsafe { self.dev.memset_zero(ptr, n * ELEM as usize) };
        self.record(r);
    }

    fn alloc_buf<T>(&self, n: usize) -> Result<GBuf<D, T>> {
        let ptr = if n == 0 { 0 } else { self.pool.get(n * ELEM as usize)? };
        Ok(GBuf { pool: self.pool.clone(), ptr, len: n, _t: PhantomData })
    }

    /// Checks `rows` against a table of `n_rows` rows, uploads them, and calls `launch` with the
    /// address of each chunk of at most 65,535 rows (the grid's y limit) and its launch shape:
    /// grid (ceil(row_len / THREADS), rows in the chunk).
    fn row_launches(
        &self,
        op: &str,
        rows: &[u32],
        row_len: usize,
        n_rows: usize,
        launch: impl Fn(DevPtr, LaunchCfg),
    ) {
        if let Some(&r) = rows.iter().find(|&&r| r as usize >= n_rows) {
            panic!("{op}: row {r} outside the {n_rows}-row table");
        }
        if rows.is_empty() || row_len == 0 || self.failed() {
            return;
        }
        let ptr = match self.upload_rows(rows) {
            Ok(p) => p,
            Err(e) => return self.record(Err(e)),
        };
        for (ci, chunk) in rows.chunks(65_535).enumerate() {
            let cfg = LaunchCfg {
                grid: [row_len.div_ceil(THREADS as usize) as u32, chunk.len() as u32, 1],
                block: [THREADS, 1, 1],
                shared_bytes: 0,
            };
            launch(ptr + (ci * 65_535) as u64 * ELEM, cfg);
        }
    }

    /// Uploads `rows` into the reused scratch buffer and returns its address.
    fn upload_rows(&self, rows: &[u32]) -> Result<DevPtr> {
        let mut g = self.rows.lock().unwrap_or_else(|p| p.into_inner());
        if g.as_ref().is_none_or(|b| b.len < rows.len()) {
            *g = Some(self.alloc_buf::<i32>(rows.len().next_power_of_two().max(1024))?);
        }
        let buf = g.as_ref().ok_or_else(|| Error::msg("row scratch buffer missing"))?;
        let ints: Vec<i32> = rows.iter().map(|&r| r as i32).collect();
        // SAFETY: the scratch buffer holds at least rows.len() elements.
        unsafe { self.dev.copy_htod(buf.ptr, bytemuck::cast_slice(&ints))? };
        Ok(buf.ptr)
    }
}

impl<D: Device> Gpu<D> {
    /// Rows per chunk of the two-stage column sums (reduce.cu): at least 64, at most 1024 chunks.
    fn rows_per_chunk(n: usize) -> usize {
        n.div_ceil(1024).max(64)
    }

    /// Launches stage 2 of reduce.cu: out (S, C) += Σ_chunk partial (S, chunks, C).
    fn colsum_finish(&self, out: DevPtr, partial: DevPtr, s: usize, chunks: usize, c: usize) {
        self.launch_n("colsum_finish", s * c, &[KArg::Ptr(out), KArg::Ptr(partial), i(s), i(chunks), i(c)]);
    }

    /// out (C,) += Σ_rows x (N, C), deterministic (two stages, fixed order).
    pub(crate) fn column_sums(&self, out: DevPtr, x: DevPtr, n: usize, c: usize) {
        if n == 0 || c == 0 || self.failed() {
            return;
        }
        let rpc = Self::rows_per_chunk(n);
        let chunks = n.div_ceil(rpc);
        let partial = match self.alloc_buf::<f32>(chunks * c) {
            Ok(b) => b,
            Err(e) => return self.record(Err(e)),
        };
        let cfg =
            LaunchCfg { grid: [c.div_ceil(32) as u32, chunks as u32, 1], block: [32, 8, 1], shared_bytes: 0 };
        self.launch("colsum_partial", cfg, &[KArg::Ptr(partial.ptr), KArg::Ptr(x), i(n), i(c), i(rpc)]);
        self.colsum_finish(out, partial.ptr, 1, chunks, c);
    }

    /// out (R, C) += Σ_{rows with ids == r} x (N, C) for every r < R, deterministic.
    pub(crate) fn selected_row_sums(
        &self,
        out: DevPtr,
        ids: DevPtr,
        x: DevPtr,
        n: usize,
        c: usize,
        r: usize,
    ) {
        if n == 0 || c == 0 || r == 0 || self.failed() {
            return;
        }
        if r > 65_535 {
            return self
                .record(Err(Error::msg(format!("selected_row_sums: {r} rows exceed the grid's z limit"))));
        }
        let rpc = Self::rows_per_chunk(n);
        let chunks = n.div_ceil(rpc);
        let partial = match self.alloc_buf::<f32>(r * chunks * c) {
            Ok(b) => b,
            Err(e) => return self.record(Err(e)),
        };
        let cfg = LaunchCfg {
            grid: [c.div_ceil(32) as u32, chunks as u32, r as u32],
            block: [32, 8, 1],
            shared_bytes: 0,
        };
        let args = [KArg::Ptr(partial.ptr), KArg::Ptr(ids), KArg::Ptr(x), i(n), i(c), i(rpc)];
        self.launch("rowsel_partial", cfg, &args);
        self.colsum_finish(out, partial.ptr, r, chunks, c);
    }

    /// dweight (C,) += Σ_rows dout·x̂ and dbias (C,) += Σ_rows dout with x̂ = (sum − mean)·rstd.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn layernorm_param_sums(
        &self,
        dweight: DevPtr,
        dbias: DevPtr,
        dout: DevPtr,
        sum: DevPtr,
        mean: DevPtr,
        rstd: DevPtr,
        n: usize,
        c: usize,
    ) {
        if n == 0 || c == 0 || self.failed() {
            return;
        }
        let rpc = Self::rows_per_chunk(n);
        let chunks = n.div_ceil(rpc);
        let partial = match self.alloc_buf::<f32>(2 * chunks * c) {
            Ok(b) => b,
            Err(e) => return self.record(Err(e)),
        };
        let cfg =
            LaunchCfg { grid: [c.div_ceil(32) as u32, chunks as u32, 1], block: [32, 8, 1], shared_bytes: 0 };
        let args = [
            KArg::Ptr(partial.ptr),
            KArg::Ptr(dout),
            KArg::Ptr(sum),
            KArg::Ptr(mean),
            KArg::Ptr(rstd),
            i(n),
            i(c),
            i(rpc),
        ];
        self.launch("lnparams_partial", cfg, &args);
        self.colsum_finish(dweight, partial.ptr, 1, chunks, c);
        self.colsum_finish(dbias, partial.ptr + (chunks * c) as u64 * ELEM, 1, chunks, c);
    }
}

/// Kernel arguments of a dropout site: seed, step, site, threshold, scale.
pub(crate) fn dropout_args(d: &Dropout) -> [KArg; 5] {
    let (thr, scale) =
        if d.active() { (dropout_threshold(d.p), (1.0 / (1.0 - d.p)) as f32) } else { (0, 1.0) };
    [KArg::U64(d.seed), KArg::U32(d.step as u32), KArg::U32(d.site), KArg::U32(thr), KArg::F32(scale)]
}

/// Asserts that a view holds at least `need` elements.
#[track_caller]
pub(crate) fn need(op: &str, what: &str, len: usize, need: usize) {
    assert!(len >= need, "{op}: {what} has {len} elements, the shapes need {need}");
}

/// `KArg::Ptr` of a view.
pub(crate) fn p(v: &GView<'_>) -> KArg {
    KArg::Ptr(v.ptr)
}

/// `KArg::Ptr` of a mutable view.
pub(crate) fn pm(v: &GViewMut<'_>) -> KArg {
    KArg::Ptr(v.ptr)
}

/// `KArg::Ptr` of an integer buffer.
pub(crate) fn pi<D: Device>(b: &GBuf<D, i32>) -> KArg {
    KArg::Ptr(b.ptr)
}

/// `KArg::I32` of a size, which the launcher has checked fits.
#[track_caller]
pub(crate) fn i(x: usize) -> KArg {
    KArg::I32(i32::try_from(x).unwrap_or_else(|_| panic!("size {x} exceeds the kernels' 32-bit indices")))
}

/// `KArg::I64` of a size.
pub(crate) fn l(x: usize) -> KArg {
    KArg::I64(x as i64)
}

fn act_code(a: Activation) -> i32 {
    match a {
        Activation::Relu => 0,
        Activation::Gelu => 1,
        Activation::GeluTanh => 2,
        Activation::Tanh => 3,
    }
}

/// Adam's per-step scalars as kernel arguments (rounded once to f32, as the CPU twin does).
fn adam_args(s: &AdamStep) -> [KArg; 10] {
    let wd = s.weight_decay;
    let w = 1.0 - s.beta1;
    let lerp_w = w as f32;
    let l2 = if wd != 0.0 && !s.decoupled { wd as f32 } else { 0.0 };
    let decay = if wd != 0.0 && s.decoupled { (1.0 - s.lr * wd) as f32 } else { 1.0 };
    [
        KArg::F32(l2),
        KArg::F32(decay),
        KArg::F32(lerp_w),
        KArg::F32(1.0 - lerp_w),
        KArg::I32((w.abs() < 0.5) as i32),
        KArg::F32(s.beta2 as f32),
        KArg::F32((1.0 - s.beta2) as f32),
        KArg::F32((-s.step_size()) as f32),
        KArg::F32(s.bias_correction2_sqrt() as f32),
        KArg::F32(s.eps as f32),
    ]
}

impl<D: Device> Backend for Gpu<D> {
    type F = f32;
    type Buf = GBuf<D, f32>;
    type IBuf = GBuf<D, i32>;
    type Slice<'a> = GView<'a>;
    type SliceMut<'a> = GViewMut<'a>;

    fn name(&self) -> String {
        if self.bf16 {
            format!("{}, bf16 GEMMs", self.dev.name())
        } else {
            self.dev.name()
        }
    }

    fn alloc(&self, n: usize) -> Result<Self::Buf> {
        self.alloc_buf(n)
    }

    fn upload(&self, host: &[f32]) -> Result<Self::Buf> {
        let b = self.alloc_buf::<f32>(host.len())?;
        if !host.is_empty() {
            // SAFETY: the buffer was just allocated with host.len() elements.
            unsafe { self.dev.copy_htod(b.ptr, bytemuck::cast_slice(host))? };
        }
        Ok(b)
    }

    fn upload_i32(&self, host: &[i32]) -> Result<Self::IBuf> {
        let b = self.alloc_buf::<i32>(host.len())?;
        if !host.is_empty() {
            // SAFETY: the buffer was just allocated with host.len() elements.
            unsafe { self.dev.copy_htod(b.ptr, bytemuck::cast_slice(host))? };
        }
        Ok(b)
    }

    fn download(&self, s: GView<'_>) -> Result<Vec<f32>> {
        if let Some(e) = self.sticky_error() {
            return Err(e);
        }
        let mut out = vec![0f32; s.len];
        if s.len > 0 {
            // SAFETY: the view lies inside a live buffer (views are only made from buffers).
            unsafe { self.dev.copy_dtoh(s.ptr, bytemuck::cast_slice_mut(&mut out))? };
        }
        Ok(out)
    }

    fn buf_len(&self, b: &Self::Buf) -> usize {
        b.len
    }

    fn view<'a>(&self, b: &'a Self::Buf) -> GView<'a> {
        GView { ptr: b.ptr, len: b.len, _l: PhantomData }
    }

    fn slice<'a>(&self, b: &'a Self::Buf, r: Range<usize>) -> GView<'a> {
        assert!(r.start <= r.end && r.end <= b.len, "slice {r:?} of a buffer of {} elements", b.len);
        GView { ptr: b.ptr + r.start as u64 * ELEM, len: r.len(), _l: PhantomData }
    }

    fn view_mut<'a>(&self, b: &'a mut Self::Buf) -> GViewMut<'a> {
        GViewMut { ptr: b.ptr, len: b.len, _l: PhantomData }
    }

    fn slice_mut<'a>(&self, b: &'a mut Self::Buf, r: Range<usize>) -> GViewMut<'a> {
        assert!(r.start <= r.end && r.end <= b.len, "slice_mut {r:?} of a buffer of {} elements", b.len);
        GViewMut { ptr: b.ptr + r.start as u64 * ELEM, len: r.len(), _l: PhantomData }
    }

    fn split_mut<'a>(&self, b: &'a mut Self::Buf, ranges: &[Range<usize>]) -> Vec<GViewMut<'a>> {
        let mut end = 0;
        for r in ranges {
            assert!(
                r.start >= end && r.start <= r.end && r.end <= b.len,
                "split_mut: ranges must be sorted, disjoint and inside the {}-element buffer ({r:?})",
                b.len
            );
            end = r.end;
        }
        ranges
            .iter()
            .map(|r| GViewMut { ptr: b.ptr + r.start as u64 * ELEM, len: r.len(), _l: PhantomData })
            .collect()
    }

    fn zero(&self, s: GViewMut<'_>) {
        self.zero_bytes(s.ptr, s.len);
    }

    fn embedding_forward(
        &self,
        out: GViewMut<'_>,
        batch: &DeviceBatch<Self>,
        wte: GView<'_>,
        wse: GView<'_>,
        wpe: GView<'_>,
        c: usize,
    ) {
        let t = batch.layout.t();
        need("embedding_forward", "out", out.len, t * c);
        need("embedding_forward", "tokens", batch.tokens.len, t);
        let args = [
            pm(&out),
            pi(&batch.tokens),
            pi(&batch.segments),
            pi(&batch.positions),
            p(&wte),
            p(&wse),
            p(&wpe),
            i(t),
            i(c),
        ];
        self.launch_n("embedding_forward", t * c, &args);
    }

    fn embedding_backward(
        &self,
        dwte: GViewMut<'_>,
        dwse: GViewMut<'_>,
        dwpe: Option<GViewMut<'_>>,
        dout: GView<'_>,
        batch: &DeviceBatch<Self>,
        c: usize,
    ) {
        let t = batch.layout.t();
        need("embedding_backward", "dout", dout.len, t * c);
        if c == 0 {
            return;
        }
        self.launch_n(
            "embedding_backward_tokens",
            t * c,
            &[pm(&dwte), pi(&batch.tokens), p(&dout), i(t), i(c)],
        );
        self.selected_row_sums(dwse.ptr, batch.segments.ptr, dout.ptr, t, c, dwse.len / c);
        if let Some(dwpe) = dwpe {
            // position p's gradient sums row cu_seqlens[b] + p of every sequence longer than p
            let (nb, rows) = (batch.layout.b(), dwpe.len / c);
            self.launch_n(
                "embedding_backward_positions",
                rows * c,
                &[pm(&dwpe), pi(&batch.cu_seqlens), p(&dout), i(nb), i(c), i(rows)],
            );
        }
    }

    fn matmul_forward(
        &self,
        out: GViewMut<'_>,
        inp: GView<'_>,
        weight: GView<'_>,
        bias: Option<GView<'_>>,
        n: usize,
        ic: usize,
        oc: usize,
    ) {
        need("matmul_forward", "out", out.len, n * oc);
        need("matmul_forward", "inp", inp.len, n * ic);
        need("matmul_forward", "weight", weight.len, oc * ic);
        // out (n,oc) = inp (n,ic) · weightᵀ
        self.sgemm(Gemm {
            trans_a: false,
            trans_b: true,
            m: n,
            n: oc,
            k: ic,
            alpha: 1.0,
            a: inp.ptr,
            lda: ic,
            b: weight.ptr,
            ldb: ic,
            beta: 0.0,
            c: out.ptr,
            ldc: oc,
        });
        if ic == 0 && n * oc > 0 {
            self.zero_bytes(out.ptr, n * oc);
        }
        if let Some(bias) = bias {
            need("matmul_forward", "bias", bias.len, oc);
            self.launch_n("bias_forward", n * oc, &[pm(&out), p(&bias), i(n), i(oc)]);
        }
    }

    fn matmul_backward(
        &self,
        dinp: Option<GViewMut<'_>>,
        accumulate_dinp: bool,
        dweight: GViewMut<'_>,
        dbias: Option<GViewMut<'_>>,
        dout: GView<'_>,
        inp: GView<'_>,
        weight: GView<'_>,
        n: usize,
        ic: usize,
        oc: usize,
    ) {
        need("matmul_backward", "dout", dout.len, n * oc);
        need("matmul_backward", "inp", inp.len, n * ic);
        need("matmul_backward", "weight", weight.len, oc * ic);
        need("matmul_backward", "dweight", dweight.len, oc * ic);
        if let Some(dinp) = dinp {
            need("matmul_backward", "dinp", dinp.len, n * ic);
            if oc == 0 && !accumulate_dinp {
                self.zero_bytes(dinp.ptr, n * ic);
            }
            // dinp (n,ic) = dout (n,oc) · weight (oc,ic)
            self.sgemm(Gemm {
                trans_a: false,
                trans_b: false,
                m: n,
                n: ic,
                k: oc,
                alpha: 1.0,
                a: dout.ptr,
                lda: oc,
                b: weight.ptr,
                ldb: ic,
                beta: if accumulate_dinp { 1.0 } else { 0.0 },
                c: dinp.ptr,
                ldc: ic,
            });
        }
        // dweight (oc,ic) += doutᵀ (oc,n) · inp (n,ic)
        if n > 0 {
            self.sgemm(Gemm {
                trans_a: true,
                trans_b: false,
                m: oc,
                n: ic,
                k: n,
                alpha: 1.0,
                a: dout.ptr,
                lda: oc,
                b: inp.ptr,
                ldb: ic,
                beta: 1.0,
                c: dweight.ptr,
                ldc: ic,
            });
        }
        if let Some(dbias) = dbias {
            need("matmul_backward", "dbias", dbias.len, oc);
            self.column_sums(dbias.ptr, dout.ptr, n, oc);
        }
    }

    fn attention_forward(
        &self,
        out: GViewMut<'_>,
        att: GViewMut<'_>,
        qkv: GView<'_>,
        batch: &DeviceBatch<Self>,
        nh: usize,
        c: usize,
        dropout: Dropout,
    ) {
        attention::forward(self, out, att, qkv, batch, nh, c, dropout);
    }

    fn attention_backward(
        &self,
        dqkv: GViewMut<'_>,
        dout: GView<'_>,
        att: GView<'_>,
        qkv: GView<'_>,
        batch: &DeviceBatch<Self>,
        nh: usize,
        c: usize,
        dropout: Dropout,
    ) {
        attention::backward(self, dqkv, dout, att, qkv, batch, nh, c, dropout);
    }

    fn addnorm_forward(
        &self,
        out: GViewMut<'_>,
        sum: GViewMut<'_>,
        mean: GViewMut<'_>,
        rstd: GViewMut<'_>,
        res: GView<'_>,
        sub: Option<GView<'_>>,
        weight: GView<'_>,
        bias: GView<'_>,
        eps: f64,
        dropout: Dropout,
        t: usize,
        c: usize,
    ) {
        addnorm::forward(self, out, sum, mean, rstd, res, sub, weight, bias, eps, dropout, t, c);
    }

    fn addnorm_backward(
        &self,
        dres: GViewMut<'_>,
        dsub: Option<GViewMut<'_>>,
        dweight: GViewMut<'_>,
        dbias: GViewMut<'_>,
        dout: GView<'_>,
        sum: GView<'_>,
        mean: GView<'_>,
        rstd: GView<'_>,
        weight: GView<'_>,
        dropout: Dropout,
        t: usize,
        c: usize,
    ) {
        addnorm::backward(self, dres, dsub, dweight, dbias, dout, sum, mean, rstd, weight, dropout, t, c);
    }

    fn act_forward(&self, out: GViewMut<'_>, inp: GView<'_>, act: Activation) {
        assert!(out.len == inp.len, "act_forward: out has {} elements, inp {}", out.len, inp.len);
        self.launch_n("act_forward", out.len, &[pm(&out), p(&inp), l(out.len), KArg::I32(act_code(act))]);
    }

    fn act_backward(
        &self,
        dinp: GViewMut<'_>,
        dout: GView<'_>,
        inp: GView<'_>,
        out: GView<'_>,
        act: Activation,
    ) {
        let n = dinp.len;
        assert!(
            dout.len == n && inp.len == n && out.len == n,
            "act_backward: dinp/dout/inp/out have {n}/{}/{}/{} elements",
            dout.len,
            inp.len,
            out.len
        );
        self.launch_n(
            "act_backward",
            n,
            &[pm(&dinp), p(&dout), p(&inp), p(&out), l(n), KArg::I32(act_code(act))],
        );
    }

    fn cls_forward(&self, out: GViewMut<'_>, x: GView<'_>, batch: &DeviceBatch<Self>, c: usize) {
        let (t, nb) = (batch.layout.t(), batch.layout.b());
        need("cls_forward", "out", out.len, nb * c);
        need("cls_forward", "x", x.len, t * c);
        self.launch_n("cls_forward", nb * c, &[pm(&out), p(&x), pi(&batch.cu_seqlens), i(nb), i(c)]);
    }

    fn cls_backward(&self, dx: GViewMut<'_>, dout: GView<'_>, batch: &DeviceBatch<Self>, c: usize) {
        let (t, nb) = (batch.layout.t(), batch.layout.b());
        need("cls_backward", "dx", dx.len, t * c);
        need("cls_backward", "dout", dout.len, nb * c);
        self.zero_bytes(dx.ptr, t * c);
        self.launch_n("cls_scatter", nb * c, &[pm(&dx), p(&dout), pi(&batch.cu_seqlens), i(nb), i(c)]);
    }

    fn dropout_forward(&self, out: GViewMut<'_>, inp: GView<'_>, dropout: Dropout) {
        assert!(out.len == inp.len, "dropout_forward: out has {} elements, inp {}", out.len, inp.len);
        let [a, b, c, d, e] = dropout_args(&dropout);
        self.launch_n("dropout_forward", out.len, &[pm(&out), p(&inp), l(out.len), a, b, c, d, e]);
    }

    fn dropout_backward(&self, dinp: GViewMut<'_>, dout: GView<'_>, dropout: Dropout) {
        assert!(dinp.len == dout.len, "dropout_backward: dinp has {} elements, dout {}", dinp.len, dout.len);
        let [a, b, c, d, e] = dropout_args(&dropout);
        self.launch_n("dropout_backward", dinp.len, &[pm(&dinp), p(&dout), l(dinp.len), a, b, c, d, e]);
    }

    fn crossentropy_forward(
        &self,
        losses: GViewMut<'_>,
        probs: GViewMut<'_>,
        logits: GView<'_>,
        batch: &DeviceBatch<Self>,
        k: usize,
    ) {
        loss::forward(self, losses, probs, logits, batch, k);
    }

    fn crossentropy_backward(
        &self,
        dlogits: GViewMut<'_>,
        probs: GView<'_>,
        batch: &DeviceBatch<Self>,
        k: usize,
        scale: f64,
    ) {
        loss::backward(self, dlogits, probs, batch, k, scale);
    }

    fn adam_update(
        &self,
        params: GViewMut<'_>,
        grads: GView<'_>,
        m: GViewMut<'_>,
        v: GViewMut<'_>,
        step: &AdamStep,
    ) {
        let n = params.len;
        assert!(
            grads.len == n && m.len == n && v.len == n,
            "adam_update: params/grads/m/v have {n}/{}/{}/{} elements",
            grads.len,
            m.len,
            v.len
        );
        let mut args = vec![pm(&params), p(&grads), pm(&m), pm(&v), l(n)];
        args.extend(adam_args(step));
        self.launch_n("adam_update", n, &args);
    }

    fn adam_update_rows(
        &self,
        params: GViewMut<'_>,
        grads: GView<'_>,
        m: GViewMut<'_>,
        v: GViewMut<'_>,
        rows: &[u32],
        row_len: usize,
        step: &AdamStep,
    ) {
        let n = params.len;
        assert!(
            grads.len == n && m.len == n && v.len == n,
            "adam_update_rows: params/grads/m/v have {n}/{}/{}/{} elements",
            grads.len,
            m.len,
            v.len
        );
        self.row_launches("adam_update_rows", rows, row_len, n / row_len.max(1), |rows_ptr, cfg| {
            let mut args = vec![pm(&params), p(&grads), pm(&m), pm(&v), KArg::Ptr(rows_ptr), i(row_len)];
            args.extend(adam_args(step));
            self.launch("adam_update_rows", cfg, &args);
        });
    }

    fn zero_rows(&self, buf: GViewMut<'_>, rows: &[u32], row_len: usize) {
        self.row_launches("zero_rows", rows, row_len, buf.len / row_len.max(1), |rows_ptr, cfg| {
            self.launch("zero_rows", cfg, &[pm(&buf), KArg::Ptr(rows_ptr), i(row_len)]);
        });
    }
}
