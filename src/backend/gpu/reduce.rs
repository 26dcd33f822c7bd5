//! Launchers of kernels/reduce.cu: deterministic two-stage column sums (a fixed chunking of the
//! rows, then a fixed-order sum of the chunks) for the bias, segment-embedding and LayerNorm
//! parameter gradients. The other families call them; they are not Backend ops of their own.

use super::device::{DevPtr, Device, KArg, LaunchCfg};
use super::launch::{i, variant};
use super::memory::ELEM;
use super::Gpu;
use crate::error::Error;

impl<D: Device> Gpu<D> {
    /// Rows per chunk of the two-stage column sums (reduce.cu): at least 64, at most 1024 chunks.
    fn rows_per_chunk(n: usize) -> usize {
        n.div_ceil(1024).max(64)
    }

    /// Launches stage 2 of reduce.cu: out (S, C) += Σ_chunk partial (S, chunks, C).
    fn colsum_finish(&self, out: DevPtr, partial: DevPtr, s: usize, chunks: usize, c: usize) {
        self.launch_n("colsum_finish", s * c, &[KArg::Ptr(out), KArg::Ptr(partial), i(s), i(chunks), i(c)]);
    }

    /// out (C,) += x (C,) (stage 2 of the column sums with one chunk).
    pub(crate) fn add_vector(&self, out: DevPtr, x: DevPtr, c: usize) {
        if c > 0 && !self.failed() {
            self.colsum_finish(out, x, 1, 1, c);
        }
    }

    /// out (C,) += Σ_rows x (N, C), deterministic (two stages, fixed order); x stored as bf16
    /// when `bf16`.
    pub(crate) fn column_sums(&self, out: DevPtr, x: DevPtr, bf16: bool, n: usize, c: usize) {
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
        self.launch(
            variant("colsum_partial", bf16),
            cfg,
            &[KArg::Ptr(partial.ptr), KArg::Ptr(x), i(n), i(c), i(rpc)],
        );
        self.colsum_finish(out, partial.ptr, 1, chunks, c);
    }

    /// out (R, C) += Σ_{rows with ids == r} x (N, C) for every r < R, deterministic; x stored as
    /// bf16 when `bf16`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn selected_row_sums(
        &self,
        out: DevPtr,
        ids: DevPtr,
        x: DevPtr,
        bf16: bool,
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
        self.launch(variant("rowsel_partial", bf16), cfg, &args);
        self.colsum_finish(out, partial.ptr, r, chunks, c);
    }

    /// dweight (C,) += Σ_rows dout·x̂ and dbias (C,) += Σ_rows dout with x̂ = (sum − mean)·rstd;
    /// dout and sum stored as bf16 when `bf16`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn layernorm_param_sums(
        &self,
        dweight: DevPtr,
        dbias: DevPtr,
        dout: DevPtr,
        sum: DevPtr,
        mean: DevPtr,
        rstd: DevPtr,
        bf16: bool,
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
        self.launch(variant("lnparams_partial", bf16), cfg, &args);
        self.colsum_finish(dweight, partial.ptr, 1, chunks, c);
        self.colsum_finish(dbias, partial.ptr + (chunks * c) as u64 * ELEM, 1, chunks, c);
    }
}
