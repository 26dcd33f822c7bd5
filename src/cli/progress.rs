//! What a user sees and gets while `finetune` runs: the progress bar (a terminal) or a plain line
//! every 10 s, d2l's epoch lines, `metrics.jsonl`, `curves.svg` rewritten at each point, and the
//! checkpoints.

use super::finetune::FinetuneArgs;
use crate::backend::Backend;
use crate::data::vocab::Vocab;
use crate::error::Result;
use crate::model::bert::Model;
use crate::train::checkpoint::save_checkpoint;
use crate::train::optim::Adam;
use crate::train::report;
use crate::train::trainer::{self, EpochMetrics, TrainState};

/// Prints, plots and saves as training goes.
pub(crate) struct RunHooks<'a, B: Backend> {
    pub(crate) device: String,
    pub(crate) epochs: usize,
    pub(crate) a: &'a FinetuneArgs,
    pub(crate) vocab: &'a Vocab,
    pub(crate) be: &'a B,
    pub(crate) curves: report::Curves,
    pub(crate) tty: bool,
    pub(crate) last_print: std::time::Instant,
    pub(crate) progress_shown: bool,
}

impl<B: Backend> RunHooks<'_, B> {
    pub(crate) fn clear_progress(&mut self) {
        if self.progress_shown && self.tty {
            eprint!("\r{:79}\r", "");
        }
        self.progress_shown = false;
    }

    fn write_curves(&self) -> Result<()> {
        match &self.a.out {
            Some(dir) => report::write_atomic(&dir.join("curves.svg"), self.curves.svg().as_bytes()),
            None => Ok(()),
        }
    }
}

impl<B: Backend> trainer::Hooks<B> for RunHooks<'_, B> {
    fn on_step(&mut self, p: &trainer::Progress) -> Result<()> {
        if self.a.quiet {
            return Ok(());
        }
        let every = if self.tty { 0.2 } else { 10.0 };
        if self.last_print.elapsed().as_secs_f64() < every && p.batch < p.batches {
            return Ok(());
        }
        // The epoch line (stdout) follows the last batch: a plain progress line for it would
        // only repeat it in another format where stdout and stderr share a log.
        if !self.tty && p.batch == p.batches {
            return Ok(());
        }
        self.last_print = std::time::Instant::now();
        let eta = if p.examples_per_sec > 0.0 {
            let secs = (p.batches - p.batch) as f64 * self.a.train.batch_size as f64 / p.examples_per_sec;
            format!("{secs:.0}s")
        } else {
            "?".into()
        };
        let line = format!(
            "epoch {}/{} {:>5}/{} loss {:.3} acc {:.3} {:.1} examples/sec ETA {eta}",
            p.epoch + 1,
            self.epochs,
            p.batch,
            p.batches,
            p.loss,
            p.acc,
            p.examples_per_sec
        );
        if self.tty {
            let filled = 20 * p.batch / p.batches.max(1);
            eprint!("\r[{}{}] {line}", "#".repeat(filled), " ".repeat(20 - filled));
            self.progress_shown = true;
        } else {
            eprintln!("{line}");
        }
        Ok(())
    }

    fn on_point(&mut self, p: &trainer::Progress) -> Result<()> {
        let x = p.epoch as f64 + p.batch as f64 / p.batches.max(1) as f64;
        self.curves.train.push((x, p.loss, p.acc));
        self.write_curves()
    }

    fn on_epoch(&mut self, m: &EpochMetrics) -> Result<()> {
        self.clear_progress();
        println!("{}", report::epoch_line(m, self.epochs, &self.device));
        if let Some(acc) = m.test_acc {
            self.curves.test.push((m.epoch as f64, acc));
        }
        if let Some(dir) = &self.a.out {
            report::append_metrics(&dir.join("metrics.jsonl"), m)?;
        }
        self.write_curves()
    }

    fn on_checkpoint(&mut self, state: &TrainState, model: &Model<B>, opt: &Adam<B>) -> Result<()> {
        let Some(out) = &self.a.out else { return Ok(()) };
        let a = self.a;
        save_checkpoint(out, self.be, model, opt, self.vocab, state, a.max_len, a.truncate, a.run.as_ref())
    }
}
