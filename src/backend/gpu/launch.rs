//! Launching kernels: argument checks against the kernels' signatures, the sticky error (the
//! first device failure is kept, later ops are skipped, and the next [`Gpu::check`] or download
//! returns it, as CUDA does), launch shapes of the element-wise and row-list kernels, and the
//! helpers that turn views and sizes into kernel arguments.

use super::device::{check_args, DevPtr, Device, KArg, LaunchCfg};
use super::memory::{GBuf, GView, GViewMut, ELEM};
use super::Gpu;
use crate::error::{Error, Result};
use crate::rng::{dropout_threshold, Dropout};

/// Threads per block of the element-wise kernels.
pub(crate) const THREADS: u32 = 256;

impl<D: Device> Gpu<D> {
    /// Waits for the device and returns the first error of any earlier op.
    pub fn check(&self) -> Result<()> {
        if let Some(e) = self.sticky_error() {
            return Err(e);
        }
        let r = self.dev.synchronize();
        self.record(r);
        self.sticky_error().map_or(Ok(()), Err)
    }

    pub(super) fn sticky_error(&self) -> Option<Error> {
        let g = self.sticky.lock().unwrap_or_else(|p| p.into_inner());
        g.as_ref().map(|m| Error::msg(format!("{}: {m}", self.dev.name())))
    }

    pub(super) fn failed(&self) -> bool {
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
        self.profile_kernel(name);
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

    /// Checks `rows` against a table of `n_rows` rows, uploads them (padded with -1 up to a power
    /// of four), and calls `launch` with the address of each chunk of at most 65,535 rows (the
    /// grid's y limit) and its launch shape: grid (ceil(row_len / THREADS), rows in the chunk).
    pub(super) fn row_launches(
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
        // Launched over the list rounded up to a power of four (the padding rows exit at once),
        // so that a step graph keeps its launch shape while the list grows (and is captured anew
        // only a few times over a run).
        let capacity = {
            let p = rows.len().next_power_of_two();
            if p.trailing_zeros() % 2 == 1 {
                p * 2
            } else {
                p
            }
        };
        let ptr = match self.upload_rows(rows, capacity) {
            Ok(p) => p,
            Err(e) => return self.record(Err(e)),
        };
        for start in (0..capacity).step_by(65_535) {
            let cfg = LaunchCfg {
                grid: [row_len.div_ceil(THREADS as usize) as u32, (capacity - start).min(65_535) as u32, 1],
                block: [THREADS, 1, 1],
                shared_bytes: 0,
            };
            launch(ptr + start as u64 * ELEM, cfg);
        }
    }

    /// Uploads `rows`, padded with -1 (rows the kernels skip) to `capacity`, into the reused
    /// scratch buffer and returns its address.
    fn upload_rows(&self, rows: &[u32], capacity: usize) -> Result<DevPtr> {
        let mut g = self.rows.lock().unwrap_or_else(|p| p.into_inner());
        if g.as_ref().is_none_or(|b| b.len < capacity) {
            // Outlives any step graph being captured: not owned by it.
            *g = Some(self.alloc_persistent::<i32>(capacity.max(1024))?);
        }
        let buf = g.as_ref().ok_or_else(|| Error::msg("row scratch buffer missing"))?;
        let mut ints: Vec<i32> = rows.iter().map(|&r| r as i32).collect();
        ints.resize(capacity, -1);
        // SAFETY: the scratch buffer holds at least `capacity` elements.
        unsafe { self.dev.copy_htod(buf.ptr, bytemuck::cast_slice(&ints))? };
        Ok(buf.ptr)
    }
}

/// Kernel arguments of a dropout site: seed, step, site, threshold, scale, index offset.
pub(crate) fn dropout_args(d: &Dropout) -> [KArg; 6] {
    let (thr, scale) =
        if d.active() { (dropout_threshold(d.p), (1.0 / (1.0 - d.p)) as f32) } else { (0, 1.0) };
    [
        KArg::U64(d.seed),
        KArg::U32(d.step as u32),
        KArg::U32(d.site),
        KArg::U32(thr),
        KArg::F32(scale),
        KArg::U64(d.offset),
    ]
}

/// Kernel `name`, or its `_bf16` twin (the same kernel on bf16 activations) when `bf16`.
#[track_caller]
pub(crate) fn variant(name: &'static str, bf16: bool) -> &'static str {
    if !bf16 {
        return name;
    }
    super::KERNELS
        .iter()
        .map(|(n, _)| *n)
        .find(|n| n.len() == name.len() + 5 && n.starts_with(name) && n.ends_with("_bf16"))
        .unwrap_or_else(|| panic!("kernel `{name}` has no bf16 twin in kernels/*.cu"))
}

/// Whether the activations an op takes are bf16: all of `views` ((name, is bf16)) must agree.
#[track_caller]
pub(crate) fn bf16_acts(op: &str, views: &[(&str, bool)]) -> bool {
    let first = views.first().is_some_and(|v| v.1);
    if let Some((what, _)) = views.iter().find(|v| v.1 != first) {
        panic!(
            "{op}: activations of mixed storage ({what} is {}, {} is {})",
            if first { "f32" } else { "bf16" },
            views[0].0,
            if first { "bf16" } else { "f32" }
        );
    }
    first
}

/// Asserts that a view is stored as f32 (parameters, statistics and the head's tensors).
#[track_caller]
pub(crate) fn need_f32(op: &str, what: &str, bf16: bool) {
    assert!(!bf16, "{op}: {what} must be f32");
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
