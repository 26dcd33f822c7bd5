//! Choosing the engine, once: `--device`, `--precision` and `--threads` become a backend, and a
//! command's work runs on it through [`Engine::run`] (generic over the backend, so the work is
//! written once for the CPU, CUDA and the emulator).

use crate::backend::cpu::Cpu;
use crate::backend::gpu::cuda::{self, Cuda};
use crate::backend::gpu::emu::Emu;
use crate::backend::gpu::Gpu;
use crate::backend::Backend;
use crate::data::hub;
use crate::error::{Error, Result};
use crate::model::config::Precision;

/// Where computation runs (`--device`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum DeviceSel {
    /// A CUDA GPU when one is usable, else the CPU.
    #[default]
    Auto,
    /// The multi-threaded CPU engine.
    Cpu,
    /// CUDA device N (our kernels + cuBLAS).
    Cuda(usize),
    /// The CUDA emulator: our kernels on the CPU, one fiber per CUDA thread (slow; for checking).
    Emu,
}

impl std::str::FromStr for DeviceSel {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "auto" => Ok(DeviceSel::Auto),
            "cpu" => Ok(DeviceSel::Cpu),
            "emu" => Ok(DeviceSel::Emu),
            "cuda" => Ok(DeviceSel::Cuda(0)),
            _ => s
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(DeviceSel::Cuda)
                .ok_or_else(|| format!("`{s}`: expected auto, cpu, cuda, cuda:N (N = 0, 1, ...) or emu")),
        }
    }
}

/// Which attention kernels a GPU runs (`--attention`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum AttentionSel {
    /// Flash attention on bf16 tensor cores with `--precision bf16`, the f32 kernels with f32.
    #[default]
    Auto,
    /// Flash attention (bf16 tensor cores, head size up to 64), whatever the GEMMs' precision.
    Flash,
    /// The f32 attention kernels (exact PyTorch parity), whatever the GEMMs' precision.
    Classic,
}

/// The engine a command runs on: device, precision, attention kernels and CPU threads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Engine {
    /// Where to compute.
    pub device: DeviceSel,
    /// CPU precision (the GPU computes in f32).
    pub precision: Precision,
    /// CPU worker threads (0 = all cores).
    pub threads: usize,
    /// Attention kernels on a GPU.
    pub attention: AttentionSel,
}

impl Engine {
    /// The CPU engine in f32 on `threads` threads.
    pub fn cpu(threads: usize) -> Self {
        Engine { device: DeviceSel::Cpu, precision: Precision::F32, threads, attention: AttentionSel::Auto }
    }
}

/// Work that runs on whichever backend the engine opens (a closure cannot be generic over the
/// backend, so commands implement this).
pub trait OnBackend {
    /// What the work returns.
    type Out;
    /// Runs the work on `be`.
    fn run<B: Backend>(self, be: &B) -> Result<Self::Out>;
}

/// A backend, chosen at run time.
enum AnyBackend {
    CpuF32(Cpu<f32>),
    CpuF64(Cpu<f64>),
    Cuda(Gpu<Cuda>),
    Emu(Gpu<Emu>),
}

impl Engine {
    /// Opens the backend and runs `work` on it: the one place where the engine is chosen.
    pub fn run<W: OnBackend>(&self, work: W) -> Result<W::Out> {
        match self.open()? {
            AnyBackend::CpuF32(be) => work.run(&be),
            AnyBackend::CpuF64(be) => work.run(&be),
            AnyBackend::Cuda(be) => work.run(&be),
            AnyBackend::Emu(be) => work.run(&be),
        }
    }
}

impl Engine {
    /// Opens the backend: `auto` takes CUDA device 0 when a driver and a GPU are present (and
    /// the precision is f32), else the CPU.
    fn open(&self) -> Result<AnyBackend> {
        let gpu_precision = |what: &str| -> Result<()> {
            if self.precision == Precision::F64 {
                return Err(Error::usage(format!(
                    "--precision f64 runs on the CPU only; use --device cpu, or --precision f32 on {what}"
                )));
            }
            Ok(())
        };
        let bf16 = self.precision == Precision::Bf16;
        let flash = match self.attention {
            AttentionSel::Auto => bf16,
            AttentionSel::Flash => true,
            AttentionSel::Classic => false,
        };
        match self.device {
            DeviceSel::Cpu => self.open_cpu(),
            DeviceSel::Auto => {
                if self.precision != Precision::F64 && cuda::device_count() > 0 {
                    match Cuda::new(0, &hub::cache_dir()) {
                        Ok(dev) => return Ok(AnyBackend::Cuda(gpu(dev, bf16, flash))),
                        Err(e) => {
                            eprintln!("warning: a CUDA device is present but unusable ({e}); using the CPU")
                        }
                    }
                }
                self.open_cpu()
            }
            DeviceSel::Cuda(n) => {
                gpu_precision("a GPU")?;
                Ok(AnyBackend::Cuda(gpu(Cuda::new(n, &hub::cache_dir())?, bf16, flash)))
            }
            DeviceSel::Emu => {
                gpu_precision("the emulator")?;
                Ok(AnyBackend::Emu(gpu(Emu::new()?, bf16, flash)))
            }
        }
    }

    fn open_cpu(&self) -> Result<AnyBackend> {
        if self.attention == AttentionSel::Flash {
            return Err(Error::usage(
                "--attention flash runs on a GPU (bf16 tensor cores): use --device cuda (or emu to check it \
                 on the CPU), or leave --attention at auto on the CPU",
            ));
        }
        Ok(match self.precision {
            Precision::F32 => AnyBackend::CpuF32(Cpu::new(self.threads)?),
            Precision::F64 => AnyBackend::CpuF64(Cpu::new(self.threads)?),
            Precision::Bf16 => {
                return Err(Error::usage(
                    "--precision bf16 needs a GPU: use --device cuda (or emu to check it on the CPU), or \
                     --precision f32 on the CPU",
                ))
            }
        })
    }
}

/// The GPU backend on `dev`, with bf16 matrix products and flash attention when asked.
fn gpu<D: crate::backend::gpu::device::Device>(dev: D, bf16: bool, flash: bool) -> Gpu<D> {
    let g = if bf16 { Gpu::new_bf16(dev) } else { Gpu::new(dev) };
    g.with_flash_attention(flash)
}
