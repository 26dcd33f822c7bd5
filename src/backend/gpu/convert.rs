//! Launchers of kernels/convert.cu: bf16 copies of f32 matrices (round to nearest even), the
//! operands of the bf16 matrix products.

use super::device::{DevPtr, Device, KArg};
use super::launch::l;
use super::memory::GBuf;
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
}
