//! Writes a synthetic file in SNLI 1.0's `.txt` format (see `nli_bert::data::synth`), by default
//! the size of SNLI's train file (550,152 rows, about 440 MB), for the data-pipeline benchmarks.
//!
//! ```sh
//! cargo run --release --example gen_snli -- OUT.txt [ROWS] [SEED] [--awkward]
//! ```

use std::io::{BufWriter, Write};

use nli_bert::data::synth::{SnliGen, SNLI_TRAIN_ROWS};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let awkward = args.iter().any(|a| a == "--awkward");
    let pos: Vec<&String> = args.iter().filter(|a| !a.starts_with("--")).collect();
    let Some(out) = pos.first() else {
        eprintln!(
            "usage: gen_snli OUT.txt [ROWS (default {SNLI_TRAIN_ROWS})] [SEED (default 0)] [--awkward]"
        );
        std::process::exit(2);
    };
    let parse = |i: usize, default: usize| -> usize {
        pos.get(i).map_or(default, |s| {
            s.parse().unwrap_or_else(|_| {
                eprintln!("gen_snli: `{s}` is not a number");
                std::process::exit(2)
            })
        })
    };
    let rows = parse(1, SNLI_TRAIN_ROWS);
    let seed = parse(2, 0) as u64;
    let res = std::fs::File::create(out).and_then(|f| {
        let mut w = BufWriter::with_capacity(1 << 20, f);
        let n = SnliGen::new(seed, 4000, awkward).write_txt(&mut w, rows)?;
        w.flush()?;
        Ok(n)
    });
    match res {
        Ok(n) => eprintln!("wrote {rows} rows, {:.1} MB, to {out}", n as f64 / 1e6),
        Err(e) => {
            eprintln!("gen_snli: {out}: {e}");
            std::process::exit(1);
        }
    }
}
