//! Training checkpoints: `DIR/checkpoint/` of a run's `--out DIR` holds the model as saved by
//! [`crate::model::store::save_model`], Adam's moments (`adam_m.safetensors`, `adam_v.safetensors`)
//! and `state.json` (where the run stands, Adam's step count, the embedding rows seen so far, and
//! the run's settings as a typed [`RunSettings`]). A checkpoint is written into a temporary folder
//! and swapped in; the previous one stays complete (`checkpoint.old`) until the new one is.

use crate::backend::Backend;
use crate::data::batch::Truncate;
use crate::data::vocab::Vocab;
use crate::error::{Error, Result};
use crate::model::bert::Model;
use crate::model::checkpoint::{names, safetensors as st};
use crate::model::config::Precision;
use crate::model::params::ParamLayout;
use crate::model::store::{load_saved, save_model, LoadedModel};
use crate::train::optim::Adam;
use crate::train::report;
use crate::train::trainer::TrainState;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The settings of a `finetune` run, stored in its checkpoints so that `--resume` continues the
/// same run (only `--max-steps`, `--threads` and `--quiet` may change on resuming).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunSettings {
    /// `--data`: `snli` or a file.
    pub data: String,
    /// `--test-data`.
    pub test_data: Option<PathBuf>,
    /// `--epochs`.
    pub epochs: usize,
    /// `--batch-size`.
    pub batch_size: usize,
    /// `--lr`.
    pub lr: f64,
    /// `--adamw WD`: AdamW's weight decay, or plain Adam.
    pub adamw: Option<f64>,
    /// `--max-len`.
    pub max_len: usize,
    /// `--dropout`.
    pub dropout: f64,
    /// `--seed`.
    pub seed: u64,
    /// `--no-shuffle`.
    pub no_shuffle: bool,
    /// `--truncate`.
    pub truncate: Truncate,
    /// `--precision`.
    pub precision: Precision,
    /// `--save-every`.
    pub save_every: Option<u64>,
}

/// A saved training state to continue from (`--resume`).
pub struct Resume {
    /// Where the run stood.
    pub state: TrainState,
    /// Adam first and second moments, step count and seen embedding rows.
    pub m: Vec<f64>,
    /// See `m`.
    pub v: Vec<f64>,
    /// Adam steps taken.
    pub t: u64,
    /// Token-embedding rows seen by the row-sparse optimizer.
    pub rows: Option<Vec<u32>>,
    /// The run's settings (none for a run started without them, such as the demo's).
    pub run: Option<RunSettings>,
}

/// The checkpoint directory of a run's `--out DIR`.
pub fn checkpoint_dir(out: &Path) -> PathBuf {
    out.join("checkpoint")
}

#[derive(Serialize, Deserialize)]
struct StateFile {
    format: String,
    train: TrainState,
    adam_t: u64,
    active_rows: Option<Vec<u32>>,
    run: Option<RunSettings>,
}

/// Reads a checkpoint written by `finetune --out DIR` (`DIR` or `DIR/checkpoint`): the model and
/// the state to continue from.
pub fn load_checkpoint(dir: &Path) -> Result<(LoadedModel, Resume)> {
    // `checkpoint.old` is the previous checkpoint, left alone if a save was killed mid-swap.
    let ck = [dir.to_path_buf(), checkpoint_dir(dir), dir.join("checkpoint.old")]
        .into_iter()
        .find(|d| d.join("state.json").is_file())
        .unwrap_or_else(|| checkpoint_dir(dir));
    let state_path = ck.join("state.json");
    if !state_path.is_file() {
        return Err(Error::usage(format!(
            "--resume {}: no checkpoint there (expected {}); checkpoints are written by `finetune --out DIR` \
             at each epoch end and every --save-every steps",
            dir.display(),
            state_path.display()
        )));
    }
    let text = std::fs::read_to_string(&state_path).map_err(|e| Error::io(&state_path, e))?;
    let sf: StateFile = serde_json::from_str(&text)
        .map_err(|e| Error::parse(&state_path, e.line(), format!("not an nli-bert state.json: {e}")))?;
    let m = load_saved(&ck)?;
    let layout = ParamLayout::new(&m.cfg);
    let moment = |name: &str| -> Result<Vec<f64>> {
        let p = ck.join(name);
        let t = st::load_safetensors(&p)?;
        names::check_layout_fits(&t, &layout, &m.cfg, &p)?;
        let mut out = vec![0.0; layout.total];
        names::load_into_params(&t, &layout, &mut out, &p)?.refuse_non_finite(&p)?;
        Ok(out)
    };
    let resume = Resume {
        state: sf.train,
        m: moment("adam_m.safetensors")?,
        v: moment("adam_v.safetensors")?,
        t: sf.adam_t,
        rows: sf.active_rows,
        run: sf.run,
    };
    Ok((m, resume))
}

/// Writes the checkpoint of a run whose `--out` is `out`: the model (with its vocabulary, token
/// budget and truncation), Adam's state, `state` and the run's settings; swapped in atomically.
/// On failure the temporary folder is removed and the error says whether the previous
/// checkpoint is intact.
#[allow(clippy::too_many_arguments)]
pub fn save_checkpoint<B: Backend>(
    out: &Path,
    be: &B,
    model: &Model<B>,
    opt: &Adam<B>,
    vocab: &Vocab,
    state: &TrainState,
    max_len: usize,
    truncate: Truncate,
    run: Option<&RunSettings>,
) -> Result<()> {
    let tmp = out.join(format!(".checkpoint.tmp-{}", std::process::id()));
    let res = (|| -> Result<()> {
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
        }
        let params = model.params_host(be)?;
        save_model(&tmp, &model.cfg, vocab, &params, max_len, truncate)?;
        let meta = BTreeMap::new();
        let m = be.download(be.view(&opt.m))?;
        let v = be.download(be.view(&opt.v))?;
        st::save_params(&tmp.join("adam_m.safetensors"), &model.layout, &m, &meta)?;
        st::save_params(&tmp.join("adam_v.safetensors"), &model.layout, &v, &meta)?;
        let sf = StateFile {
            format: "nli-bert-checkpoint".into(),
            train: state.clone(),
            adam_t: opt.t,
            active_rows: opt.active_rows().map(|r| r.to_vec()),
            run: run.cloned(),
        };
        let json = serde_json::to_vec(&sf).map_err(|e| Error::msg(format!("serialising state: {e}")))?;
        report::write_atomic(&tmp.join("state.json"), &json)?;
        // Swap in: the previous checkpoint stays complete until the new one is.
        let dst = checkpoint_dir(out);
        let old = out.join("checkpoint.old");
        if dst.exists() {
            if old.exists() {
                std::fs::remove_dir_all(&old).map_err(|e| Error::io(&old, e))?;
            }
            std::fs::rename(&dst, &old).map_err(|e| Error::io(&dst, e))?;
        }
        std::fs::rename(&tmp, &dst).map_err(|e| Error::io(&dst, e))?;
        if old.exists() {
            std::fs::remove_dir_all(&old).map_err(|e| Error::io(&old, e))?;
        }
        Ok(())
    })();
    if res.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    res.map_err(|e| {
        let dst = checkpoint_dir(out);
        let kept = if dst.join("state.json").is_file() || out.join("checkpoint.old/state.json").is_file() {
            format!(
                "the previous checkpoint in {} is intact: continue with `nli-bert finetune --resume {}`",
                dst.display(),
                out.display()
            )
        } else {
            "no earlier checkpoint exists".to_string()
        };
        let full = match &e {
            Error::Io { source, .. } => matches!(source.raw_os_error(), Some(28 | 27 | 122)),
            _ => false,
        };
        Error::msg(format!(
            "saving the checkpoint of step {} failed: {e}{}; {kept}",
            state.step,
            if full { " (the disk, a quota or a file-size limit is full: free some space)" } else { "" }
        ))
    })
}

/// Removes what an interrupted run (killed, or out of disk) may have left in `dir`: checkpoint
/// folders being written (`.checkpoint.tmp-PID`) and this tool's files being written atomically
/// (`model.safetensors.tmp-PID`, `.config.json.tmp-PID`, …), whose process is gone. Returns how
/// many were removed.
pub fn remove_stale_temporaries(dir: &Path) -> Result<usize> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Ok(0) };
    let mut removed = 0;
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some((base, pid)) = name.rsplit_once(".tmp-") else { continue };
        // only the names this tool writes through a temporary (other files are the user's)
        const OURS: [&str; 6] =
            [".checkpoint", "model.safetensors", "vocab.json", "vocab.txt", ".config.json", ".curves.svg"];
        if !OURS.contains(&base) || pid.is_empty() || !pid.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        // a live process (ours, or another run writing here) keeps its temporaries
        if pid == std::process::id().to_string() || Path::new("/proc").join(pid).exists() {
            continue;
        }
        let p = e.path();
        let is_dir = e.file_type().map(|t| t.is_dir()).unwrap_or(false);
        let r = if is_dir { std::fs::remove_dir_all(&p) } else { std::fs::remove_file(&p) };
        r.map_err(|err| Error::io(&p, err))?;
        removed += 1;
    }
    Ok(removed)
}
