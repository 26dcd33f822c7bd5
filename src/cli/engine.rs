//! Choosing the engine, once: `--device`, `--precision` and `--threads` become a backend, and a
//! command's work runs on it through [`Engine::run`] (generic over the backend, so the work is
//! written once for the CPU, CUDA and the emulator).

use crate::backend::cpu::Cpu;
use crate::backend::gpu::cuda::{self, nccl, Cuda};
use crate::backend::gpu::emu::Emu;
use crate::backend::gpu::Gpu;
use crate::backend::Backend;
use crate::data::hub;
use crate::error::{Error, Result};
use crate::model::config::Precision;
use crate::train::dist::{DistEnv, Rendezvous};
use crate::train::parallel::{rank_timeout, run_local_ranks, AnyComm, Communicator};
use std::sync::Mutex;

/// Where computation runs (`--device`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum DeviceSel {
    /// Every CUDA GPU when one is usable (data parallel over them), else the CPU.
    #[default]
    Auto,
    /// The multi-threaded CPU engine.
    Cpu,
    /// CUDA GPUs (our kernels + cuBLAS): every visible one, or a list.
    Cuda(Gpus),
    /// N emulated GPUs (the CUDA emulator: our kernels on the CPU, one fiber per CUDA thread;
    /// slow, for checking), data parallel over them when N > 1.
    Emu(u8),
}

/// Which CUDA GPUs: every visible one, or those whose ordinals are set in a bit mask.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Gpus {
    /// Every visible GPU (`--device cuda`).
    All,
    /// `cuda:N` or `cuda:N,M,...` (bit N set; ordinals below 64).
    List(u64),
}

impl Gpus {
    /// The ordinals, ascending; `All` as `0..count`.
    pub fn ordinals(&self, count: usize) -> Vec<usize> {
        match self {
            Gpus::All => (0..count).collect(),
            Gpus::List(mask) => (0..64).filter(|i| mask >> i & 1 == 1).collect(),
        }
    }
}

impl std::str::FromStr for DeviceSel {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let bad = || {
            format!(
                "`{s}`: expected auto, cpu, cuda (every GPU), cuda:N, a list cuda:N,M,... (N = 0, 1, ...), emu or \
                 emu:N (N emulated GPUs)"
            )
        };
        match s {
            "auto" => Ok(DeviceSel::Auto),
            "cpu" => Ok(DeviceSel::Cpu),
            "emu" => Ok(DeviceSel::Emu(1)),
            "cuda" => Ok(DeviceSel::Cuda(Gpus::All)),
            _ => {
                if let Some(n) = s.strip_prefix("emu:") {
                    return n.parse::<u8>().ok().filter(|&n| n >= 1).map(DeviceSel::Emu).ok_or_else(bad);
                }
                let list = s.strip_prefix("cuda:").ok_or_else(bad)?;
                let mut mask = 0u64;
                for part in list.split(',') {
                    let n: u32 = part.trim().parse().map_err(|_| bad())?;
                    if n >= 64 || mask >> n & 1 == 1 {
                        return Err(format!("`{s}`: GPU {n} is listed twice or is beyond cuda:63"));
                    }
                    mask |= 1 << n;
                }
                Ok(DeviceSel::Cuda(Gpus::List(mask)))
            }
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

/// Work that runs on every rank of a data-parallel run (`finetune`): each rank calls
/// [`OnRanks::run_rank`] on its own backend with the group's communicator (none for one rank).
pub trait OnRanks: Sync {
    /// What the work returns (rank 0's is the run's).
    type Out: Send;
    /// What must agree between the processes of a multi-process run (the model, data and
    /// settings), hashed: a rank whose fingerprint differs is refused at the rendezvous.
    fn fingerprint(&self) -> u64;
    /// Runs rank `rank` of `world` on `be`.
    fn run_rank<B: Backend>(
        &self,
        be: &B,
        comm: Option<&AnyComm>,
        rank: usize,
        world: usize,
    ) -> Result<Self::Out>;
}

/// A backend, chosen at run time.
enum AnyBackend {
    CpuF32(Cpu<f32>),
    CpuF64(Cpu<f64>),
    Cuda(Gpu<Cuda>),
    Emu(Gpu<Emu>),
}

/// One rank's device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Slot {
    Cpu,
    Cuda(usize),
    Emu,
}

impl Engine {
    /// Opens the backend and runs `work` on it: the one place where the engine is chosen. With
    /// several devices selected, the first.
    pub fn run<W: OnBackend>(&self, work: W) -> Result<W::Out> {
        let slot = self.slots()?[0];
        match self.open(slot)? {
            AnyBackend::CpuF32(be) => work.run(&be),
            AnyBackend::CpuF64(be) => work.run(&be),
            AnyBackend::Cuda(be) => work.run(&be),
            AnyBackend::Emu(be) => work.run(&be),
        }
    }

    /// Runs `work` data parallel: on every selected device (one thread each, in this process),
    /// or, when a launcher started several processes (torchrun, `srun`, `mpirun`: see
    /// [`DistEnv`]), as this process's rank on its device after the rendezvous. Returns rank 0's
    /// result (in a multi-process run, this process's).
    pub fn run_ranks<W: OnRanks>(&self, work: &W) -> Result<W::Out> {
        let nccl_ok = std::env::var("NLI_BERT_NCCL").map_or(true, |v| v != "0");
        if let Some(env) = DistEnv::from_env()? {
            let slot = self.process_slot(&env)?;
            // GPUs sum with NCCL (rank 0's unique id travels with the rendezvous), others through
            // rank 0; the kind of device is part of what the ranks must agree on.
            let nccl_rank = nccl_ok && matches!(slot, Slot::Cuda(_));
            let payload = if nccl_rank && env.rank == 0 { nccl::unique_id()? } else { Vec::new() };
            let fingerprint = work.fingerprint() ^ if nccl_rank { 0x6e63_636c } else { 0 };
            let rz = Rendezvous::meet(&env, fingerprint, &payload, rank_timeout())?;
            let id = rz.payload.clone();
            let host = AnyComm::Tcp(rz.into_comm());
            let aborts = Mutex::new(Vec::new());
            return self.rank(work, slot, host, (env.rank, env.world), nccl_rank.then_some(&id[..]), &aborts);
        }
        let slots = self.slots()?;
        if slots.len() == 1 {
            return on_slot(work, &self.open(slots[0])?, None, 0, 1);
        }
        let world = slots.len();
        // Several GPUs of this process: one thread and NCCL communicator each (ncclCommInitRank
        // from each rank's thread, its GPU current; the id never touches CUDA).
        let id = if nccl_ok && slots.iter().all(|s| matches!(s, Slot::Cuda(_))) {
            Some(nccl::unique_id()?)
        } else {
            None
        };
        let aborts = Mutex::new(Vec::new());
        let outs = run_local_ranks(world, rank_timeout(), |rank, comm| {
            self.rank(work, slots[rank], AnyComm::Local(comm), (rank, world), id.as_deref(), &aborts)
        })?;
        outs.into_iter().next().ok_or_else(|| Error::msg("internal: no rank returned"))
    }

    /// One rank: opens its device, confirms with the others (a host all-reduce) that every rank
    /// did, joins the NCCL communicator of unique id `nccl_id` on a GPU, and runs `work`. A rank
    /// that fails tells the others through `host` and aborts every NCCL communicator of the
    /// process (`aborts`), so that no rank waits in a collective of a rank that is gone.
    fn rank<W: OnRanks>(
        &self,
        work: &W,
        slot: Slot,
        host: AnyComm,
        (rank, world): (usize, usize),
        nccl_id: Option<&[u8]>,
        aborts: &Mutex<Vec<nccl::NcclAbort>>,
    ) -> Result<W::Out> {
        let abort_all = |why: &str, comm: &AnyComm| {
            <AnyComm as Communicator<Cpu<f64>>>::abort(comm, why);
            for a in aborts.lock().unwrap_or_else(|p| p.into_inner()).iter() {
                a.abort();
            }
        };
        let be = match self.open(slot) {
            Ok(be) => be,
            Err(e) => {
                abort_all(&e.to_string(), &host);
                return Err(e);
            }
        };
        // Everyone has its device before anyone blocks in NCCL's initialisation.
        <AnyComm as Communicator<Cpu<f64>>>::all_reduce_host(&host, &mut [1.0])?;
        let comm = match (&be, nccl_id) {
            (AnyBackend::Cuda(g), Some(id)) => match g.device().nccl_init_rank(world, rank, id) {
                Ok(c) => {
                    aborts.lock().unwrap_or_else(|p| p.into_inner()).push(c.abort_handle());
                    AnyComm::Nccl(c, Box::new(host))
                }
                Err(e) => {
                    abort_all(&e.to_string(), &host);
                    return Err(e);
                }
            },
            _ => host,
        };
        let r = on_slot(work, &be, Some(&comm), rank, world);
        if let Err(e) = &r {
            abort_all(&e.to_string(), &comm);
        }
        // `comm` (the NCCL communicator) goes before the device it was made on.
        drop(comm);
        drop(be);
        r
    }

    /// The devices of this process's ranks, in rank order.
    fn slots(&self) -> Result<Vec<Slot>> {
        Ok(match self.device {
            DeviceSel::Cpu => vec![Slot::Cpu],
            DeviceSel::Emu(n) => vec![Slot::Emu; n as usize],
            DeviceSel::Auto => {
                let n = if self.precision == Precision::F64 { 0 } else { cuda::device_count() };
                if n == 0 {
                    vec![Slot::Cpu]
                } else {
                    (0..n).map(Slot::Cuda).collect()
                }
            }
            DeviceSel::Cuda(g) => {
                let count = match g {
                    Gpus::All => Cuda::device_count()?,
                    Gpus::List(_) => 0,
                };
                let v: Vec<Slot> = g.ordinals(count).into_iter().map(Slot::Cuda).collect();
                if v.is_empty() {
                    return Err(Error::msg(
                        "--device cuda: no CUDA GPU is visible (check nvidia-smi and CUDA_VISIBLE_DEVICES)",
                    ));
                }
                v
            }
        })
    }

    /// The one device of this process in a multi-process run: its LOCAL_RANK-th GPU with
    /// `cuda` / `auto`, the one given with `cuda:N`, the CPU, or one emulated GPU.
    fn process_slot(&self, env: &DistEnv) -> Result<Slot> {
        let slots = self.slots()?;
        let many = || {
            Error::usage(format!(
                "{} started one process per rank: give each one device (--device cuda takes the GPU of \
                 the process's local rank {}, or --device cuda:N), not a list",
                env.launcher, env.local_rank
            ))
        };
        match self.device {
            DeviceSel::Auto | DeviceSel::Cuda(Gpus::All) if matches!(slots[0], Slot::Cuda(_)) => {
                slots.get(env.local_rank % slots.len()).copied().ok_or_else(many)
            }
            _ if slots.len() == 1 => Ok(slots[0]),
            _ => Err(many()),
        }
    }

    /// Opens one device.
    fn open(&self, slot: Slot) -> Result<AnyBackend> {
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
        match (slot, self.device) {
            (Slot::Cpu, _) => self.open_cpu(),
            (Slot::Cuda(n), DeviceSel::Auto) => match Cuda::new(n, &hub::cache_dir()) {
                Ok(dev) => Ok(AnyBackend::Cuda(gpu(dev, bf16, flash))),
                Err(e) if n == 0 => {
                    eprintln!("warning: a CUDA device is present but unusable ({e}); using the CPU");
                    self.open_cpu()
                }
                Err(e) => Err(e),
            },
            (Slot::Cuda(n), _) => {
                gpu_precision("a GPU")?;
                Ok(AnyBackend::Cuda(gpu(Cuda::new(n, &hub::cache_dir())?, bf16, flash)))
            }
            (Slot::Emu, _) => {
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

/// Runs rank `rank` of `work` on an opened backend.
fn on_slot<W: OnRanks>(
    work: &W,
    be: &AnyBackend,
    comm: Option<&AnyComm>,
    rank: usize,
    world: usize,
) -> Result<W::Out> {
    match be {
        AnyBackend::CpuF32(be) => work.run_rank(be, comm, rank, world),
        AnyBackend::CpuF64(be) => work.run_rank(be, comm, rank, world),
        AnyBackend::Cuda(be) => work.run_rank(be, comm, rank, world),
        AnyBackend::Emu(be) => work.run_rank(be, comm, rank, world),
    }
}

/// The GPU backend on `dev`, with bf16 matrix products and flash attention when asked.
fn gpu<D: crate::backend::gpu::device::Device>(dev: D, bf16: bool, flash: bool) -> Gpu<D> {
    let g = if bf16 { Gpu::new_bf16(dev) } else { Gpu::new(dev) };
    g.with_flash_attention(flash)
}
