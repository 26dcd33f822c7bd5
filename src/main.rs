//! `nli-bert`: fine-tune, evaluate and run BERT for natural-language inference. This file parses
//! the command line and dispatches; each command lives in `src/cli/<command>.rs`.
//!
//! Exit codes: 0 success, 1 runtime failure, 2 usage error.

use clap::{Parser, Subcommand};
use nli_bert::{cli, Error};

#[derive(Parser)]
#[command(
    name = "nli-bert",
    version,
    about = "Fine-tune BERT for natural-language inference (d2l's chapter, exactly, then faster)"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Fine-tune a pretrained (or fresh) BERT on an NLI dataset, as d2l's chapter does.
    ///
    /// Defaults are the seed's: bert.small, SNLI, 5 epochs, batch 512, Adam lr 1e-4, max_len 128,
    /// dropout 0.2. Example:
    ///   nli-bert finetune --model scratch --data ../shared/data/sick_train.tsv --test-data ../shared/data/sick_test.tsv
    Finetune(cli::finetune::FinetuneCmd),
    /// Accuracy, loss and confusion matrix of a saved model on a labelled file.
    ///
    /// Example: nli-bert eval --model out/ --data ../shared/data/sick_test.tsv --json
    Eval(cli::eval::EvalCmd),
    /// Predict labels for one pair or a file of pairs (one JSON object per pair).
    ///
    /// Example: nli-bert predict --model out/ --premise "a man plays a guitar" --hypothesis "a person plays music"
    Predict(cli::predict::PredictCmd),
    /// Download and unpack a catalog entry (bert.small, bert.base, SNLI) into the cache
    /// ($NLI_BERT_HOME, default ~/.cache/nli-bert); `--from FILE` imports an archive fetched
    /// elsewhere (checked by SHA-1, unpacked as a download would be); `--list` shows the catalog.
    ///
    /// Catalog (name, size, SHA-1, URL):
    ///   bert.small  about 130 MB  c72329e68a732bef0452e4b96a1c341c8910f81f
    ///               http://d2l-data.s3-accelerate.amazonaws.com/bert.small.torch.zip
    ///   bert.base   about 700 MB  225d66f04cae318b841a13d32af3acc165f253ac
    ///               http://d2l-data.s3-accelerate.amazonaws.com/bert.base.torch.zip
    ///   SNLI        about 95 MB   9fcde07509c7e87ec61c640c1b2753d9041758e4
    ///               https://nlp.stanford.edu/projects/snli/snli_1.0.zip
    ///
    /// Example (offline): nli-bert download bert.small --from ~/Downloads/bert.small.torch.zip
    #[command(verbatim_doc_comment)]
    Download {
        /// Catalog name (see --list).
        #[arg(required_unless_present = "list")]
        name: Option<String>,
        /// Print the catalog: name, size, SHA-1, URL and the folder it unpacks to.
        #[arg(long)]
        list: bool,
        /// Import this archive (fetched elsewhere) instead of downloading it.
        #[arg(long, value_name = "FILE", conflicts_with = "list")]
        from: Option<std::path::PathBuf>,
    },
    /// Write a model in Hugging Face's layout (transformers loads it as it is).
    ///
    /// For models of the Hugging Face architecture (loaded from a Hugging Face directory or
    /// hf:ORG/NAME, then fine-tuned); d2l's BERT has no Hugging Face equivalent. Example:
    ///   nli-bert export --model runs/minilm --to hf --out runs/minilm-hf
    Export(cli::export::ExportCmd),
    /// Generate a small NLI set, train a small BERT from scratch on it, evaluate on held-out pairs.
    Demo(cli::demo::DemoCmd),
    /// Time training steps of a model shape (random weights) and, with --data, the data pipeline.
    ///
    /// Prints ms/step, examples/s, tokens/s, TFLOP/s (6·N_mm·T + 12·C·L·T² per example, N_mm the
    /// matrix-product parameters a token touches), an estimate of GB/s and, on a CUDA card whose
    /// ceilings are known (H100, H200, A100), the fractions of them. Example:
    ///   nli-bert bench --shape bert.small --batch-size 512 --steps 20 --device cuda
    Bench(cli::bench::BenchCmd),
}

fn main() {
    let cli = Cli::parse();
    // Ctrl-C: the trainer stops after the current step and saves a checkpoint (with --out);
    // a second Ctrl-C exits at once.
    let _ = ctrlc::set_handler(|| {
        if nli_bert::train::trainer::INTERRUPTED.swap(true, std::sync::atomic::Ordering::SeqCst) {
            std::process::exit(130);
        }
        eprintln!("\ninterrupt: stopping after this step (Ctrl-C again to quit now)");
    });
    let res = match cli.cmd {
        Cmd::Finetune(a) => cli::finetune::run(a),
        Cmd::Eval(a) => cli::eval::run(a),
        Cmd::Predict(a) => cli::predict::run(a),
        Cmd::Download { name, list, from } => cli::download::run(name.as_deref(), list, from.as_deref()),
        Cmd::Export(a) => a.run(),
        Cmd::Demo(a) => cli::demo::run(a),
        Cmd::Bench(a) => a.run(),
    };
    if let Err(e) = res {
        match &e {
            Error::Interrupted(m) => eprintln!("{m}"),
            _ => eprintln!("error: {e}"),
        }
        std::process::exit(e.exit_code());
    }
}
