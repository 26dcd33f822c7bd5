//! NLI datasets: SNLI's own `snli_1.0_*.txt`, SNLI's `.jsonl`, and the TSV of `../shared/data`.

/// Class names in label-id order: entailment 0, contradiction 1, neutral 2.
pub const LABELS: [&str; 3] = ["entailment", "contradiction", "neutral"];

/// The label id of a class name, if it is one of [`LABELS`].
pub fn label_id(s: &str) -> Option<u8> {
    LABELS.iter().position(|&l| l == s).map(|i| i as u8)
}

/// One premise/hypothesis pair with its gold label.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Example {
    /// Premise text, as read (d2l lower-cases later, at tokenisation).
    pub premise: String,
    /// Hypothesis text, as read.
    pub hypothesis: String,
    /// Label id (see [`LABELS`]).
    pub label: u8,
}

/// A dataset read from a file.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Dataset {
    /// The labelled examples, in file order.
    pub examples: Vec<Example>,
    /// Rows skipped because their gold label is `-` (no annotator consensus), as d2l does.
    pub skipped: usize,
    /// Where the data came from (a path or a built-in name), for messages.
    pub source: String,
}
