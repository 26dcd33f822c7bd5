//! Metrics output: the per-epoch line, d2l's two final lines, `metrics.jsonl`.

use crate::error::{Error, Result};
use crate::train::trainer::EpochMetrics;
use std::io::Write;
use std::path::Path;

/// `epoch 1/5: loss 0.520, train acc 0.790, test acc 0.779, 10442.5 examples/sec on cpu (2 threads)`.
pub fn epoch_line(m: &EpochMetrics, epochs: usize, device: &str) -> String {
    let test = match m.test_acc {
        Some(a) => format!("{a:.3}"),
        None => "n/a".to_string(),
    };
    format!(
        "epoch {}/{}: loss {:.3}, train acc {:.3}, test acc {}, {:.1} examples/sec on {}",
        m.epoch, epochs, m.loss, m.train_acc, test, m.examples_per_sec, device
    )
}

/// d2l's two closing lines: the last epoch's loss and accuracies, then
/// `#examples_last_epoch * epochs / Σ train seconds` examples/sec (d2l's formula).
pub fn final_lines(history: &[EpochMetrics], device: &str) -> Option<(String, String)> {
    let last = history.last()?;
    let secs: f64 = history.iter().map(|m| m.seconds).sum();
    let test = match last.test_acc {
        Some(a) => format!("{a:.3}"),
        None => "n/a".to_string(),
    };
    let speed = if secs > 0.0 { (last.examples * history.len()) as f64 / secs } else { 0.0 };
    Some((
        format!("loss {:.3}, train acc {:.3}, test acc {}", last.loss, last.train_acc, test),
        format!("{speed:.1} examples/sec on {device}"),
    ))
}

/// Appends one JSON object per epoch to `metrics.jsonl`:
/// `{"epoch", "loss", "train_acc", "test_acc", "examples_per_sec", "seconds", ...}`.
pub fn append_metrics(path: &Path, m: &EpochMetrics) -> Result<()> {
    let line = serde_json::to_string(m).map_err(|e| Error::msg(format!("serialising metrics: {e}")))?;
    let mut f =
        std::fs::OpenOptions::new().create(true).append(true).open(path).map_err(|e| Error::io(path, e))?;
    writeln!(f, "{line}").map_err(|e| Error::io(path, e))?;
    f.sync_data().map_err(|e| Error::io(path, e))
}

/// Writes `bytes` to `path` atomically: a temporary file in the same directory, fsync, rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let res = (|| {
        let mut f = std::fs::File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
        f.write_all(bytes).map_err(|e| Error::io(&tmp, e))?;
        f.sync_all().map_err(|e| Error::io(&tmp, e))?;
        std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
    })();
    if res.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    res
}
