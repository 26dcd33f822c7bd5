//! `nli-bert export --model DIR --to hf --out OUT`: a model (typically one `finetune --out` saved)
//! in Hugging Face's layout, which transformers loads as it is ([`crate::model::export`]).

use std::path::PathBuf;

use crate::error::Result;
use crate::model::export::export_hf;
use crate::model::store::load_model;
use clap::Args;

/// Formats `export` writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ExportFormat {
    /// A transformers `BertForSequenceClassification` directory: config.json, model.safetensors,
    /// vocab.txt, tokenizer_config.json.
    Hf,
}

/// `nli-bert export`.
#[derive(Args)]
pub struct ExportCmd {
    /// The model: a directory `finetune --out` saved, a Hugging Face directory or hf:ORG/NAME.
    #[arg(long)]
    pub model: String,
    /// Output format.
    #[arg(long, value_enum, default_value = "hf")]
    pub to: ExportFormat,
    /// Directory to write (created if needed; files of the same names are replaced).
    #[arg(long)]
    pub out: PathBuf,
}

impl ExportCmd {
    /// Runs `nli-bert export`.
    pub fn run(self) -> Result<()> {
        let m = load_model(&self.model, None, false, 0)?;
        match self.to {
            ExportFormat::Hf => export_hf(&m, &self.out)?,
        }
        eprintln!(
            "wrote {} (config.json, model.safetensors, vocab.txt, tokenizer_config.json): \
             AutoModelForSequenceClassification.from_pretrained and AutoTokenizer.from_pretrained load it",
            self.out.display()
        );
        Ok(())
    }
}
