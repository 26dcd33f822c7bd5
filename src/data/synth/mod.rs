//! Synthetic SNLI-format data for benchmarks and tests: `snli_1.0_*.txt` rows with all 14 columns
//! (binary parses, constituency parses, raw sentences, caption and pair ids, annotator labels),
//! SNLI-like sentence lengths (premise ≈ 14 tokens, hypothesis ≈ 8.3 with the final `.`), a
//! Zipf-distributed vocabulary of a few thousand words and about 0.15% `-` rows, as SNLI's train
//! file has. No network: `examples/gen_snli.rs` writes a file of SNLI train's size (550,152 rows,
//! about 440 MB).
//!
//! `awkward` adds what real files can hold and the readers must survive: `\r\n` and lone `\r`
//! line endings, blank lines, a byte-order mark, more `-` rows, accented, Greek (final sigma),
//! CJK and upper-case words, and runs of Unicode whitespace inside the parses.
//!
//! [`demo`] generates the small learnable NLI set of `nli-bert demo`.

pub mod demo;

use std::io::Write;

use crate::rng::HostRng;

/// SNLI 1.0's header line (without line ending).
pub const SNLI_HEADER: &str = "gold_label\tsentence1_binary_parse\tsentence2_binary_parse\tsentence1_parse\t\
sentence2_parse\tsentence1\tsentence2\tcaptionID\tpairID\tlabel1\tlabel2\tlabel3\tlabel4\tlabel5";

/// Rows in SNLI 1.0's train file (`-` rows included).
pub const SNLI_TRAIN_ROWS: usize = 550_152;

/// Real words for the frequent ranks (about 70% of the tokens), so WordPiece finds them whole.
const COMMON_WORDS: &str = "\
a the is are man woman in on of with and people two at his her dog playing to while an boy girl \
sitting wearing shirt standing walking street front young group white black blue red water outside \
some for by near child men women there down running holding looking person their one three four \
several little old large small big green yellow orange brown pink purple gray dressed jacket hat \
helmet dress pants jeans shorts shoes glasses coat uniform costume bag ball bike bicycle car truck \
bus boat train horse cat bird crowd team players player game soccer football basketball baseball \
tennis beach ocean lake river pool park field grass snow tree trees mountain hill rock sand sidewalk \
road building city store restaurant table chair bench stage room kitchen house window wall floor \
door camera phone guitar music drum picture book paper food pizza coffee sandwich cake ice cream \
fish sun sky day night air background area crowded busy empty happy sad tired asleep sleeping eating \
drinking cooking reading writing singing dancing jumping climbing riding swimming surfing skiing \
throwing catching kicking hitting carrying pushing pulling watching talking smiling laughing waiting \
working painting cleaning selling buying sits stands walks runs plays rides jumps holds looks wears \
eats drinks smiles waits works talks not no nobody someone something everyone other another each \
both many few all over under through across along around behind beside between into out up from \
about after before during together alone outdoors indoors inside top side edge middle end way home \
school work family friends couple baby kids children adults man's woman's girls boys guy lady \
gentleman worker workers musician artist students student teacher police officer doctor chef \
audience";

const SYLLABLES: &[&str] = &[
    "ba", "be", "bo", "ca", "co", "da", "de", "di", "fa", "fe", "ga", "go", "ha", "he", "ja", "ka", "la",
    "le", "li", "lo", "ma", "me", "mi", "mo", "na", "ne", "no", "pa", "pe", "pi", "ra", "re", "ri", "ro",
    "sa", "se", "si", "so", "ta", "te", "ti", "to", "va", "ve", "wa", "we", "ya", "za", "ter", "ing", "er",
    "an", "en", "on", "ly", "ness",
];

const AWKWARD_WORDS: &[&str] =
    &["café", "ÉLAN", "naïve", "ΣΟΦΙΑΣ", "Ὀδυσσεύς", "北京", "東京タワー", "straße", "İstanbul", "Ωmega"];

const AWKWARD_SPACES: &[&str] = &["  ", "\u{a0}", " \u{a0} ", "\u{3000}", "\u{1c}\u{1d}", "\u{2009} ", "\t "];

const TAGS: &[&str] = &["DT", "NN", "VBZ", "VBG", "IN", "JJ", "NNS", "CC", "PRP$", "RB"];

/// A generator of SNLI-like rows.
pub struct SnliGen {
    rng: HostRng,
    words: Vec<String>,
    /// Cumulative Zipf weights over `words`.
    cdf: Vec<f64>,
    awkward: bool,
}

impl SnliGen {
    /// A generator with a vocabulary of `vocab` words (at least the common real words).
    pub fn new(seed: u64, vocab: usize, awkward: bool) -> Self {
        let mut rng = HostRng::new(seed, 0x5a17);
        let mut words: Vec<String> = COMMON_WORDS.split_whitespace().map(String::from).collect();
        let mut seen: std::collections::HashSet<String> = words.iter().cloned().collect();
        while words.len() < vocab {
            let n = 1 + rng.below(3) as usize;
            let w: String = (0..n).map(|_| SYLLABLES[rng.below(SYLLABLES.len() as u64) as usize]).collect();
            if seen.insert(w.clone()) {
                words.push(w);
            }
        }
        let mut acc = 0.0;
        let cdf = (0..words.len())
            .map(|r| {
                acc += 1.0 / (r as f64 + 2.0);
                acc
            })
            .collect();
        SnliGen { rng, words, cdf, awkward }
    }

    fn word(&mut self) -> String {
        if self.awkward && self.rng.below(40) == 0 {
            return AWKWARD_WORDS[self.rng.below(AWKWARD_WORDS.len() as u64) as usize].to_string();
        }
        let total = self.cdf.last().copied().unwrap_or(1.0);
        let u = self.rng.uniform() * total;
        let i = self.cdf.partition_point(|&c| c <= u).min(self.words.len() - 1);
        let w = self.words[i].clone();
        if self.awkward && self.rng.below(30) == 0 {
            w.to_uppercase()
        } else {
            w
        }
    }

    /// Words of one sentence (the final `.` included), about `mean` tokens long.
    fn sentence(&mut self, mean: f64) -> Vec<String> {
        // sum of uniforms: a bell around `mean` with a spread like SNLI's
        let u: f64 = (0..4).map(|_| self.rng.uniform()).sum::<f64>() / 4.0;
        let len = ((mean - 1.0) * (0.4 + 1.2 * u)).round().max(1.0) as usize;
        let mut s: Vec<String> = (0..len).map(|_| self.word()).collect();
        if let Some(first) = s.first_mut() {
            let mut c = first.chars();
            if let Some(f) = c.next() {
                *first = f.to_uppercase().chain(c).collect();
            }
        }
        s.push(".".into());
        s
    }

    fn space(&mut self) -> &'static str {
        if self.awkward && self.rng.below(25) == 0 {
            AWKWARD_SPACES[self.rng.below(AWKWARD_SPACES.len() as u64) as usize]
        } else {
            " "
        }
    }

    /// SNLI's binary parse of `w`: a random binary bracketing, `( ( A man ) ( is ( sleeping . ) ) )`.
    fn binary_parse(&mut self, w: &[String], out: &mut String) {
        match w.len() {
            0 => {}
            1 => out.push_str(&w[0]),
            n => {
                let cut = 1 + self.rng.below(n as u64 - 1) as usize;
                out.push('(');
                out.push_str(self.space());
                self.binary_parse(&w[..cut], out);
                out.push_str(self.space());
                self.binary_parse(&w[cut..], out);
                out.push_str(self.space());
                out.push(')');
            }
        }
    }

    /// A constituency parse of about SNLI's length: `(ROOT (S (NP (DT A) (NN man)) …))`.
    fn parse(&mut self, w: &[String]) -> String {
        let mut s = String::from("(ROOT (S");
        for chunk in w.chunks(2) {
            s.push_str(" (VP (NP (PP");
            for t in chunk {
                let tag = TAGS[self.rng.below(TAGS.len() as u64) as usize];
                s.push_str(&format!(" ({tag} {t})"));
            }
            s.push_str(")))");
        }
        s.push_str("))");
        s
    }

    fn label(&mut self) -> &'static str {
        let dash = if self.awkward { 20 } else { 700 };
        if self.rng.below(dash) == 0 {
            return "-";
        }
        ["entailment", "contradiction", "neutral"][self.rng.below(3) as usize]
    }

    /// One row (without line ending).
    pub fn row(&mut self, k: usize) -> String {
        let gold = self.label();
        let p = self.sentence(14.1);
        let h = self.sentence(8.3);
        let (mut bp, mut bh) = (String::new(), String::new());
        self.binary_parse(&p, &mut bp);
        self.binary_parse(&h, &mut bh);
        let (pp, ph) = (self.parse(&p), self.parse(&h));
        let raw = |w: &[String]| {
            let n = w.len().saturating_sub(1);
            format!("{}.", w[..n].join(" "))
        };
        let caption = format!("{}.jpg#{}", 1_000_000_000 + k / 5 * 7919 % 3_000_000_000, k % 5);
        let pair = format!("{caption}r1{}", gold.chars().next().unwrap_or('n'));
        let label1 = if gold == "-" { "neutral" } else { gold };
        let extra = if self.rng.below(10) == 0 {
            format!("{label1}\t{label1}\t{}\t{label1}", ["entailment", "neutral"][self.rng.below(2) as usize])
        } else {
            "\t\t\t".to_string()
        };
        format!(
            "{gold}\t{bp}\t{bh}\t{pp}\t{ph}\t{}\t{}\t{caption}\t{pair}\t{label1}\t{extra}",
            raw(&p),
            raw(&h)
        )
    }

    fn line_end(&mut self) -> &'static str {
        if !self.awkward {
            return "\n";
        }
        match self.rng.below(10) {
            0 => "\r\n",
            1 => "\r",
            2 => "\n\n",
            _ => "\n",
        }
    }

    /// Writes the header and `rows` rows in SNLI's `.txt` format; returns the bytes written.
    pub fn write_txt(&mut self, w: &mut impl Write, rows: usize) -> std::io::Result<u64> {
        let mut n = 0u64;
        let mut put = |w: &mut dyn Write, s: &str| -> std::io::Result<()> {
            n += s.len() as u64;
            w.write_all(s.as_bytes())
        };
        if self.awkward && self.rng.below(2) == 0 {
            put(w, "\u{feff}")?;
        }
        put(w, SNLI_HEADER)?;
        for k in 0..rows {
            let end = self.line_end();
            put(w, end)?;
            let row = self.row(k);
            put(w, &row)?;
        }
        if !self.awkward || self.rng.below(2) == 0 {
            put(w, "\n")?;
        }
        Ok(n)
    }
}

/// SNLI-format text with `rows` rows (see the module docs).
pub fn snli_txt(rows: usize, seed: u64, awkward: bool) -> String {
    let mut out = Vec::new();
    // writing to a Vec cannot fail
    let _ = SnliGen::new(seed, 4000, awkward).write_txt(&mut out, rows);
    String::from_utf8(out).unwrap_or_default()
}
