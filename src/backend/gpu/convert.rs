//! Launchers of kernels/convert.cu: bf16 copies of f32 matrices (round to nearest even), the
//! operands of the bf16 matrix products.

use super::device::{DevPtr, Device, KArg};
use super::launch::l;
use super::memory::{GBuf, GView, GViewMut};
use super::Gpu;
use crate::error::Result;

impl<D: Device> Gpu<D> {
    /// A bf16 copy of the `n` f32 elements at `src`, in pooled scratch of `ceil(n / 2)` words.
    /// The kernel writes every element the copy holds, so the scratch is not zeroed first.
    pub(super) fn to_bf16(&self, src: DevPtr, n: usize) -> Result<GBuf<D, f32>> {
        let out = self.alloc_uninit::<f32>(n.div_ceil(2))?;
        self.launch_n("convert_f32_to_bf16", n, &[KArg::Ptr(out.ptr), KArg::Ptr(src), l(n)]);
        Ok(out)
    }

    /// An f32 copy (pooled scratch) of the bf16 elements of `v`; None after recording an error.
    pub(super) fn widened(&self, v: &GView<'_>) -> Option<GBuf<D, f32>> {
        let out = self.scratch_f32(v.len)?;
        self.launch_n("convert_bf16_to_f32", v.len, &[KArg::Ptr(out.ptr), KArg::Ptr(v.ptr), l(v.len)]);
        Some(out)
    }

    /// `n` f32 elements of pooled scratch a kernel overwrites; None after recording an error.
    pub(super) fn scratch_f32(&self, n: usize) -> Option<GBuf<D, f32>> {
        match self.alloc_uninit::<f32>(n) {
            Ok(b) => Some(b),
            Err(e) => {
                self.record(Err(e));
                None
            }
        }
    }

    /// Rounds the f32 elements at `src` into the bf16 view `dst` (same length).
    pub(super) fn narrow_into(&self, dst: &GViewMut<'_>, src: DevPtr) {
        self.launch_n("convert_f32_to_bf16", dst.len, &[KArg::Ptr(dst.ptr), KArg::Ptr(src), l(dst.len)]);
    }
}
