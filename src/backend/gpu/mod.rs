//! The GPU backend `Gpu<D>`: the [`Backend`](super::Backend) ops as launches of our CUDA kernels
//! (kernels/*.cu) plus cuBLAS matrix products, over a [`Device`]: [`cuda::Cuda`] (a real GPU) or
//! [`emu::Emu`] (the CUDA execution model on the CPU, for tests without a GPU). The launch code
//! is the same for both.
//!
//! Storage is f32 (the parity precision), or in bf16 mode bf16 for the activations and their
//! gradients ([`DType`] on every buffer and view; each kernel that touches activations has a
//! `_bf16` twin) with f32 parameters, gradients and statistics. Grid math and precondition checks live in the
//! launchers: a buffer too small for the shapes is a programming error and panics with the op's
//! name before anything reaches the device. Device failures (a launch error, an out-of-memory)
//! cannot be returned by the trait's ops, so the first one is kept ("sticky", as CUDA does) and
//! returned by the next [`Backend::download`] or [`Gpu::check`]; later ops are skipped.
//!
//! Files: `device` (the `Device` trait), `cuda` (cudarc), `emu` (the emulator), `nvrtc` (run-time
//! compilation), `memory` (pool, buffers, views), `launch` (argument checks, the sticky error),
//! `graph` (step graphs: the protocol both devices follow and [`Gpu`]'s capture / update / replay),
//! and one file per op family, named as its kernels/<family>.cu: `embedding`, `matmul`,
//! `attention`, `layernorm`, `activation`, `classifier`, `adam`, `reduce`, `convert`. This file
//! holds [`Gpu`] and the [`Backend`] impl, which delegates to the family files.

mod activation;
mod adam;
pub mod attention;
mod classifier;
mod convert;
pub mod cuda;
pub mod device;
mod embedding;
pub mod emu;
pub mod graph;
mod launch;
mod layernorm;
mod matmul;
mod memory;
pub mod nvrtc;
mod reduce;

use super::{Activation, AdamStep, Backend, BatchLayout, DeviceBatch};
use crate::error::Result;
use crate::rng::Dropout;
use device::{ArgKind, Device};
use memory::Pool;
use std::marker::PhantomData;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

pub use graph::GpuGraph;
pub use memory::{DType, GBuf, GView, GViewMut};

include!(concat!(env!("OUT_DIR"), "/kernels.rs"));

pub struct Gpu<D: Device> {
    dev: Arc<D>,
    pool: Arc<Pool<D>>,
    sticky: Mutex<Option<String>>,
    /// Scratch for row lists (Adam's sparse rows): reused, grown when needed.
    rows: Mutex<Option<GBuf<D, i32>>>,
    /// Matrix products on bf16 copies of their operands (fp32 accumulation), see [`Gpu::new_bf16`].
    bf16: bool,
    /// In bf16 mode, convert both operands of each product into bf16 scratch first and multiply
    /// those (the engine's first bf16 path) instead of letting cuBLAS round inside the GEMM.
    bf16_copies: bool,
    /// Activations and their gradients stored as bf16 ([`Backend::alloc_act`]), the products
    /// reading bf16 copies of the weights that Adam keeps; on with bf16 unless
    /// `NLI_BERT_BF16_STORAGE=0`.
    bf16_storage: bool,
    /// Attention by the flash kernels on bf16 tensor cores where the head size allows (see
    /// [`attention::flash_dim`]); on with bf16.
    flash: bool,
    /// Matrix products through [`Device::gemm_lt`] (cuBLASLt) with the bias, bias + ReLU and
    /// bias-gradient epilogues fused, where the device offers them; on by default.
    fused: bool,
    /// The buffers that hold a ReLU bit mask written by a fused forward
    /// ([`Backend::matmul_act_forward`]) and the (rows, columns) of its product.
    relu_masks: Mutex<std::collections::HashMap<device::DevPtr, (usize, usize)>>,
    /// The non-finite-loss flag Adam checks while [`Backend::loss_guard`] is on (one i32).
    guard: Mutex<Option<GBuf<D, i32>>>,
    guard_on: AtomicBool,
    /// The ring of step metrics ([`Backend::metrics_push`]), made at the first push.
    metrics: Mutex<Option<GBuf<D, i32>>>,
    /// Whether ops are being timed ([`Backend::breakdown_start`]).
    profiling: AtomicBool,
    /// The marks recorded after each op while timing, with the op's family.
    marks: Mutex<Vec<(&'static str, D::Mark)>>,
}

impl<D: Device> Gpu<D> {
    /// A backend on `dev`.
    pub fn new(dev: D) -> Self {
        let dev = Arc::new(dev);
        let pool = Arc::new(Pool::new(dev.clone()));
        Gpu {
            dev,
            pool,
            sticky: Mutex::new(None),
            rows: Mutex::new(None),
            bf16: false,
            bf16_copies: false,
            bf16_storage: false,
            flash: false,
            fused: true,
            relu_masks: Mutex::default(),
            guard: Mutex::new(None),
            guard_on: AtomicBool::new(false),
            metrics: Mutex::new(None),
            profiling: AtomicBool::new(false),
            marks: Mutex::new(Vec::new()),
        }
    }

    /// A backend on `dev` in bf16 (`--precision bf16`): activations and their gradients stored as
    /// bf16 ([`Gpu::with_bf16_storage`]), matrix products on bf16 operands with fp32 accumulation
    /// (tensor cores on a GPU), reading the bf16 copies of the weights that Adam writes in its
    /// pass; parameters, their gradients, Adam's state, LayerNorm's and softmax's statistics, the
    /// classifier head's (B, ·) tensors and the loss stay f32. Attention runs on the flash kernels
    /// (bf16 tensor cores, no T×T matrix in memory) for head sizes up to 64, the classic f32
    /// kernels above (on f32 copies of the activations).
    ///
    /// `NLI_BERT_BF16_STORAGE=0` keeps the activations in f32: the products then take f32
    /// operands and cuBLAS rounds them to bf16 inside the GEMM (`CUBLAS_COMPUTE_32F_FAST_16BF`);
    /// `NLI_BERT_BF16_GEMM=copies` brings back the first bf16 path (f32 storage, a conversion
    /// kernel per operand into pooled scratch, then a bf16 `GemmEx`), both for comparison.
    pub fn new_bf16(dev: D) -> Self {
        let copies = std::env::var("NLI_BERT_BF16_GEMM").is_ok_and(|v| v == "copies");
        // The first bf16 path (copies) is kept for comparison as it was: on f32 storage.
        let storage = !copies && !std::env::var("NLI_BERT_BF16_STORAGE").is_ok_and(|v| v == "0");
        Gpu { bf16: true, flash: true, ..Self::new(dev) }.with_bf16_copies(copies).with_bf16_storage(storage)
    }

    /// The same backend with activations and their gradients stored as bf16 (true, the default
    /// of [`Gpu::new_bf16`]) or as f32; no effect in f32 mode. With bf16 storage every element-wise
    /// kernel reads and writes bf16 (statistics, the loss and the classifier head's small tensors
    /// stay f32) and the products take bf16 operands: the activations, and the bf16 copies of the
    /// weights that Adam writes ([`Backend::keep_bf16_copy`]).
    pub fn with_bf16_storage(mut self, on: bool) -> Self {
        self.bf16_storage = on;
        self
    }

    /// Whether activations are stored as bf16.
    pub fn uses_bf16_storage(&self) -> bool {
        self.bf16 && self.bf16_storage
    }

    /// The same backend with the bf16 products on converted copies (true) or converted inside
    /// the GEMM (false, the default); no effect in f32 mode.
    pub fn with_bf16_copies(mut self, on: bool) -> Self {
        self.bf16_copies = on;
        self
    }

    /// The same backend with the matrix products through cuBLASLt with fused epilogues (true,
    /// the default) or through cuBLAS with separate bias, ReLU and bias-gradient kernels.
    pub fn with_fused_gemms(mut self, on: bool) -> Self {
        self.fused = on;
        self
    }

    /// The same backend with flash attention on or off (benchmarks and tests compare the two).
    pub fn with_flash_attention(mut self, on: bool) -> Self {
        self.flash = on;
        self
    }

    /// While timing ops, records a mark after the op just issued, labelled with its family.
    pub(crate) fn profile_mark(&self, family: &'static str) {
        if !self.profiling.load(Ordering::Relaxed) || self.failed() {
            return;
        }
        match self.dev.mark() {
            Ok(m) => self.marks.lock().unwrap_or_else(|p| p.into_inner()).push((family, m)),
            Err(e) => self.record(Err(e)),
        }
    }

    /// [`Gpu::profile_mark`] for kernel `name`: its family is its file's stem.
    pub(crate) fn profile_kernel(&self, name: &str) {
        if self.profiling.load(Ordering::Relaxed) {
            let family = KERNEL_FAMILIES.iter().find(|(k, _)| *k == name).map_or("other", |(_, f)| *f);
            self.profile_mark(family);
        }
    }

    /// Whether attention with `nh` heads over `c` columns runs on the flash kernels.
    pub fn uses_flash_attention(&self, nh: usize, c: usize) -> bool {
        self.flash && nh > 0 && c % nh == 0 && attention::flash_dim(c / nh).is_some()
    }

    /// Whether the matrix products go through cuBLASLt with fused epilogues (see
    /// [`Gpu::with_fused_gemms`]; not with the bf16 copies of `NLI_BERT_BF16_GEMM=copies`).
    pub fn uses_fused_gemms(&self) -> bool {
        self.fused && !(self.bf16 && self.bf16_copies) && self.dev.has_fused_gemms()
    }

    /// Whether the matrix products run in bf16.
    pub fn is_bf16(&self) -> bool {
        self.bf16
    }

    /// The device.
    pub fn device(&self) -> &D {
        &self.dev
    }

    /// Sets `bytes` bytes at `ptr` to zero.
    fn zero_bytes(&self, ptr: device::DevPtr, bytes: usize) {
        if self.failed() || bytes == 0 {
            return;
        }
        // SAFETY: callers pass a view's address and its size in bytes.
        let r = unsafe { self.dev.memset_zero(ptr, bytes) };
        self.record(r);
        self.profile_mark("memset");
    }

    fn make_buf<T>(&self, ptr: device::DevPtr, n: usize, dtype: DType) -> GBuf<D, T> {
        GBuf { pool: self.pool.clone(), ptr, len: n, dtype, shadow: None, _t: PhantomData }
    }

    /// A buffer of `n` zeroed elements.
    fn alloc_buf<T>(&self, n: usize) -> Result<GBuf<D, T>> {
        self.alloc_typed(n, DType::F32)
    }

    /// A buffer of `n` zeroed elements stored as `dtype`.
    fn alloc_typed<T>(&self, n: usize, dtype: DType) -> Result<GBuf<D, T>> {
        let ptr = if n == 0 { 0 } else { self.pool.get(n * dtype.size() as usize)? };
        Ok(self.make_buf(ptr, n, dtype))
    }

    /// A zeroed buffer of `n` elements that no step graph owns (for buffers that outlive a step).
    pub(super) fn alloc_persistent<T>(&self, n: usize) -> Result<GBuf<D, T>> {
        self.alloc_persistent_typed(n, DType::F32)
    }

    fn alloc_persistent_typed<T>(&self, n: usize, dtype: DType) -> Result<GBuf<D, T>> {
        let ptr = if n == 0 { 0 } else { self.pool.get_persistent(n * dtype.size() as usize)? };
        Ok(self.make_buf(ptr, n, dtype))
    }

    /// Records that `ptr` holds the ReLU mask of an (rows, cols) product, or (None) no mask.
    pub(super) fn set_relu_mask(&self, ptr: device::DevPtr, shape: Option<(usize, usize)>) {
        let mut m = self.relu_masks.lock().unwrap_or_else(|p| p.into_inner());
        match shape {
            Some(s) => {
                m.insert(ptr, s);
            }
            None => {
                m.remove(&ptr);
            }
        }
    }

    /// The shape of the ReLU mask `ptr` holds, if it holds one.
    pub(super) fn relu_mask(&self, ptr: device::DevPtr) -> Option<(usize, usize)> {
        self.relu_masks.lock().unwrap_or_else(|p| p.into_inner()).get(&ptr).copied()
    }

    /// The address of the non-finite-loss flag while the guard is on, else null.
    pub(super) fn guard_ptr(&self) -> device::DevPtr {
        if !self.guard_on.load(Ordering::Relaxed) {
            return 0;
        }
        self.guard.lock().unwrap_or_else(|p| p.into_inner()).as_ref().map_or(0, |b| b.ptr)
    }

    /// A buffer of `n` elements with unspecified contents, for scratch a kernel overwrites whole.
    pub(super) fn alloc_uninit<T>(&self, n: usize) -> Result<GBuf<D, T>> {
        self.alloc_uninit_typed(n, DType::F32)
    }

    /// [`Gpu::alloc_uninit`] stored as `dtype`.
    pub(super) fn alloc_uninit_typed<T>(&self, n: usize, dtype: DType) -> Result<GBuf<D, T>> {
        let ptr = if n == 0 { 0 } else { self.pool.get_uninit(n * dtype.size() as usize)? };
        Ok(self.make_buf(ptr, n, dtype))
    }
}

impl<D: Device> Backend for Gpu<D> {
    type F = f32;
    type Buf = GBuf<D, f32>;
    type IBuf = GBuf<D, i32>;
    type Slice<'a> = GView<'a>;
    type SliceMut<'a> = GViewMut<'a>;
    type Graph = GpuGraph<D>;

    fn name(&self) -> String {
        let mut name = self.dev.name();
        if self.uses_bf16_storage() {
            name.push_str(", bf16 activations and GEMMs");
        } else if self.bf16 {
            name.push_str(if self.bf16_copies { ", bf16 GEMMs on copies" } else { ", bf16 GEMMs" });
        } else {
            name.push_str(", f32");
        }
        if self.uses_fused_gemms() {
            name.push_str(", fused epilogues");
        }
        if self.flash {
            name.push_str(", flash attention");
        }
        name
    }

    fn alloc(&self, n: usize) -> Result<Self::Buf> {
        self.alloc_buf(n)
    }

    fn upload(&self, host: &[f32]) -> Result<Self::Buf> {
        let b = self.alloc_buf::<f32>(host.len())?;
        if !host.is_empty() {
            // SAFETY: the buffer was just allocated with host.len() elements.
            unsafe { self.dev.copy_htod(b.ptr, bytemuck::cast_slice(host))? };
            self.profile_mark("upload");
        }
        Ok(b)
    }

    fn alloc_act(&self, n: usize) -> Result<Self::Buf> {
        self.alloc_typed(n, if self.uses_bf16_storage() { DType::Bf16 } else { DType::F32 })
    }

    fn upload_act(&self, host: &[f32]) -> Result<Self::Buf> {
        if !self.uses_bf16_storage() {
            return self.upload(host);
        }
        let b = self.alloc_typed::<f32>(host.len(), DType::Bf16)?;
        if !host.is_empty() {
            let bits = bf16_bits(host);
            // SAFETY: the buffer was just allocated with host.len() bf16 elements.
            unsafe { self.dev.copy_htod(b.ptr, bytemuck::cast_slice(&bits))? };
            self.profile_mark("upload");
        }
        Ok(b)
    }

    fn act_bytes(&self) -> usize {
        if self.uses_bf16_storage() {
            2
        } else {
            4
        }
    }

    fn device_all_reduce(&self, buf: GViewMut<'_>, comm: &dyn std::any::Any) -> Result<bool> {
        if let Some(e) = self.sticky_error() {
            return Err(e);
        }
        // SAFETY: the view lies inside a live buffer.
        let done = unsafe { self.dev.all_reduce_nccl(comm, buf.ptr, buf.len, buf.is_bf16())? };
        if done {
            self.profile_mark("allreduce");
        }
        Ok(done)
    }

    fn collectives_wait(&self) -> Result<()> {
        if let Some(e) = self.sticky_error() {
            return Err(e);
        }
        self.dev.collectives_wait()
    }

    fn upload_into(&self, dst: GViewMut<'_>, host: &[f32]) -> Result<()> {
        if let Some(e) = self.sticky_error() {
            return Err(e);
        }
        if dst.len != host.len() {
            return Err(crate::error::Error::msg(format!(
                "upload_into: {} host values into a view of {} elements",
                host.len(),
                dst.len
            )));
        }
        if host.is_empty() {
            return Ok(());
        }
        if dst.is_bf16() {
            let bits = bf16_bits(host);
            // SAFETY: the view lies inside a live buffer of `dst.len` bf16 elements.
            unsafe { self.dev.copy_htod(dst.ptr, bytemuck::cast_slice(&bits))? };
        } else {
            // SAFETY: the view lies inside a live buffer of `dst.len` f32 elements.
            unsafe { self.dev.copy_htod(dst.ptr, bytemuck::cast_slice(host))? };
            if dst.shadow != 0 {
                // Parameters keep their bf16 copy current.
                let bits = bf16_bits(host);
                // SAFETY: the copy holds `dst.len` bf16 elements at the view's place.
                unsafe { self.dev.copy_htod(dst.shadow, bytemuck::cast_slice(&bits))? };
            }
        }
        self.profile_mark("upload");
        Ok(())
    }

    fn keep_bf16_copy(&self, params: &mut Self::Buf) -> Result<()> {
        if !self.uses_bf16_storage() || params.dtype != DType::F32 {
            return Ok(());
        }
        // Outlives every step graph: persistent, like the parameters it copies.
        let copy = self.alloc_persistent_typed::<u16>(params.len, DType::Bf16)?;
        self.launch_n(
            "convert_f32_to_bf16",
            params.len,
            &[device::KArg::Ptr(copy.ptr), device::KArg::Ptr(params.ptr), launch::l(params.len)],
        );
        self.check()?;
        params.shadow = Some(Box::new(copy));
        Ok(())
    }

    fn upload_i32(&self, host: &[i32]) -> Result<Self::IBuf> {
        let b = self.alloc_buf::<i32>(host.len())?;
        if !host.is_empty() {
            // SAFETY: the buffer was just allocated with host.len() elements.
            unsafe { self.dev.copy_htod(b.ptr, bytemuck::cast_slice(host))? };
            self.profile_mark("upload");
        }
        Ok(b)
    }

    fn download(&self, s: GView<'_>) -> Result<Vec<f32>> {
        if let Some(e) = self.sticky_error() {
            return Err(e);
        }
        if s.is_bf16() {
            let mut bits = vec![0u16; s.len];
            if s.len > 0 {
                // SAFETY: the view lies inside a live buffer of bf16 elements.
                unsafe { self.dev.copy_dtoh(s.ptr, bytemuck::cast_slice_mut(&mut bits))? };
            }
            return Ok(bits.into_iter().map(crate::backend::cpu::convert::bf16_to_f32).collect());
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
        b.view_at(0, b.len)
    }

    fn slice<'a>(&self, b: &'a Self::Buf, r: Range<usize>) -> GView<'a> {
        assert!(r.start <= r.end && r.end <= b.len, "slice {r:?} of a buffer of {} elements", b.len);
        b.view_at(r.start, r.len())
    }

    fn view_mut<'a>(&self, b: &'a mut Self::Buf) -> GViewMut<'a> {
        b.view_mut_at(0, b.len)
    }

    fn slice_mut<'a>(&self, b: &'a mut Self::Buf, r: Range<usize>) -> GViewMut<'a> {
        assert!(r.start <= r.end && r.end <= b.len, "slice_mut {r:?} of a buffer of {} elements", b.len);
        b.view_mut_at(r.start, r.len())
    }

    fn reborrow_mut<'a>(&self, s: &'a mut GViewMut<'_>) -> GViewMut<'a> {
        s.reborrow()
    }

    fn as_slice<'a>(&self, s: &'a GViewMut<'_>) -> GView<'a> {
        s.as_view()
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
        let b: &Self::Buf = b;
        ranges.iter().map(|r| b.view_mut_at(r.start, r.len())).collect()
    }

    fn graphs_supported(&self, nh: usize, c: usize) -> bool {
        self.uses_flash_attention(nh, c)
    }

    fn graph_capture(&self, f: &mut dyn FnMut() -> Result<()>) -> Result<GpuGraph<D>> {
        Gpu::graph_capture(self, f)
    }

    fn graph_update(&self, graph: &GpuGraph<D>, f: &mut dyn FnMut() -> Result<()>) -> Result<Option<String>> {
        Gpu::graph_update(self, graph, f)
    }

    fn graph_replay(&self, graph: &GpuGraph<D>) -> Result<()> {
        Gpu::graph_replay(self, graph)
    }

    fn loss_guard(&self, losses: GView<'_>) {
        classifier::loss_guard(self, losses);
    }

    fn loss_guard_clear(&self) {
        self.guard_on.store(false, Ordering::Relaxed);
    }

    fn fused_report(&self) -> Option<String> {
        self.dev.fused_report()
    }

    fn metrics_push(
        &self,
        slot: usize,
        losses: GView<'_>,
        logits: GView<'_>,
        batch: &DeviceBatch<Self>,
        k: usize,
    ) -> Result<bool> {
        classifier::metrics_push(self, slot, losses, logits, batch, k).map(|()| true)
    }

    fn metrics_read(&self, first: usize, count: usize) -> Result<Vec<(f64, usize, usize)>> {
        classifier::metrics_read(self, first, count)
    }

    fn synchronize(&self) -> Result<()> {
        self.check()
    }

    fn breakdown_start(&self) -> Result<bool> {
        self.check()?;
        let first = self.dev.mark()?;
        let mut marks = self.marks.lock().unwrap_or_else(|p| p.into_inner());
        marks.clear();
        marks.push(("", first));
        self.profiling.store(true, Ordering::Relaxed);
        Ok(true)
    }

    fn breakdown_take(&self) -> Result<Vec<(String, f64)>> {
        self.profiling.store(false, Ordering::Relaxed);
        let marks = std::mem::take(&mut *self.marks.lock().unwrap_or_else(|p| p.into_inner()));
        self.check()?;
        let mut out: Vec<(String, f64)> = Vec::new();
        for w in marks.windows(2) {
            let ms = self.dev.elapsed_ms(&w[0].1, &w[1].1)?;
            match out.iter_mut().find(|(f, _)| f == w[1].0) {
                Some((_, t)) => *t += ms,
                None => out.push((w[1].0.to_string(), ms)),
            }
        }
        Ok(out)
    }

    fn zero(&self, s: GViewMut<'_>) {
        self.zero_bytes(s.ptr, s.bytes());
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
        embedding::forward(self, out, batch, wte, wse, wpe, c);
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
        embedding::backward(self, dwte, dwse, dwpe, dout, batch, c);
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
        matmul::forward(self, out, inp, weight, bias, n, ic, oc);
    }

    fn matmul_act_forward(
        &self,
        pre: GViewMut<'_>,
        out: GViewMut<'_>,
        inp: GView<'_>,
        weight: GView<'_>,
        bias: Option<GView<'_>>,
        n: usize,
        ic: usize,
        oc: usize,
        act: Activation,
    ) {
        matmul::act_forward(self, pre, out, inp, weight, bias, n, ic, oc, act);
    }

    fn matmul_backward_act(
        &self,
        dinp: GViewMut<'_>,
        dact: GViewMut<'_>,
        dweight: GViewMut<'_>,
        dbias: Option<GViewMut<'_>>,
        dout: GView<'_>,
        act_out: GView<'_>,
        pre: GView<'_>,
        weight: GView<'_>,
        n: usize,
        ic: usize,
        oc: usize,
        act: Activation,
    ) {
        matmul::backward_act(self, dinp, dact, dweight, dbias, dout, act_out, pre, weight, n, ic, oc, act);
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
        matmul::backward(self, dinp, accumulate_dinp, dweight, dbias, dout, inp, weight, n, ic, oc);
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
        if self.uses_flash_attention(nh, c) {
            attention::flash_forward(self, out, att, qkv, batch, nh, c, dropout);
        } else {
            attention::forward(self, out, att, qkv, batch, nh, c, dropout);
        }
    }

    fn attention_saved_len(&self, layout: &BatchLayout, nh: usize, c: usize) -> usize {
        if self.uses_flash_attention(nh, c) {
            nh * layout.t()
        } else {
            layout.att_len(nh)
        }
    }

    fn attention_backward(
        &self,
        dqkv: GViewMut<'_>,
        dout: GView<'_>,
        out: GView<'_>,
        att: GView<'_>,
        qkv: GView<'_>,
        batch: &DeviceBatch<Self>,
        nh: usize,
        c: usize,
        dropout: Dropout,
    ) {
        if self.uses_flash_attention(nh, c) {
            attention::flash_backward(self, dqkv, dout, out, att, qkv, batch, nh, c, dropout);
        } else {
            attention::backward(self, dqkv, dout, att, qkv, batch, nh, c, dropout);
        }
    }

    fn layernorm_forward(
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
        layernorm::forward(self, out, sum, mean, rstd, res, sub, weight, bias, eps, dropout, t, c);
    }

    fn layernorm_backward(
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
        layernorm::backward(self, dres, dsub, dweight, dbias, dout, sum, mean, rstd, weight, dropout, t, c);
    }

    fn activation_forward(&self, out: GViewMut<'_>, inp: GView<'_>, act: Activation) {
        activation::forward(self, out, inp, act);
    }

    fn activation_backward(
        &self,
        dinp: GViewMut<'_>,
        dout: GView<'_>,
        inp: GView<'_>,
        out: GView<'_>,
        act: Activation,
    ) {
        activation::backward(self, dinp, dout, inp, out, act);
    }

    fn cls_forward(&self, out: GViewMut<'_>, x: GView<'_>, batch: &DeviceBatch<Self>, c: usize) {
        classifier::cls_forward(self, out, x, batch, c);
    }

    fn cls_backward(&self, dx: GViewMut<'_>, dout: GView<'_>, batch: &DeviceBatch<Self>, c: usize) {
        classifier::cls_backward(self, dx, dout, batch, c);
    }

    fn dropout_forward(&self, out: GViewMut<'_>, inp: GView<'_>, dropout: Dropout) {
        activation::dropout_forward(self, out, inp, dropout);
    }

    fn dropout_backward(&self, dinp: GViewMut<'_>, dout: GView<'_>, dropout: Dropout) {
        activation::dropout_backward(self, dinp, dout, dropout);
    }

    fn crossentropy_forward(
        &self,
        losses: GViewMut<'_>,
        probs: GViewMut<'_>,
        logits: GView<'_>,
        batch: &DeviceBatch<Self>,
        k: usize,
    ) {
        classifier::loss_forward(self, losses, probs, logits, batch, k);
    }

    fn crossentropy_backward(
        &self,
        dlogits: GViewMut<'_>,
        probs: GView<'_>,
        batch: &DeviceBatch<Self>,
        k: usize,
        scale: f64,
    ) {
        classifier::loss_backward(self, dlogits, probs, batch, k, scale);
    }

    fn adam_update(
        &self,
        params: GViewMut<'_>,
        grads: GView<'_>,
        m: GViewMut<'_>,
        v: GViewMut<'_>,
        step: &AdamStep,
    ) {
        adam::update(self, params, grads, m, v, step);
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
        adam::update_rows(self, params, grads, m, v, rows, row_len, step);
    }

    fn zero_rows(&self, buf: GViewMut<'_>, rows: &[u32], row_len: usize) {
        adam::zero_rows(self, buf, rows, row_len);
    }
}

/// `host` rounded to bf16 bits (nearest even), as bf16 buffers store them.
fn bf16_bits(host: &[f32]) -> Vec<u16> {
    host.iter().map(|&x| crate::backend::cpu::convert::f32_to_bf16(x)).collect()
}
