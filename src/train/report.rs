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
    let part = match m.partial {
        Some((done, of)) => format!(" (stopped by --max-steps after batch {done}/{of})"),
        None => String::new(),
    };
    format!(
        "epoch {}/{}{part}: loss {:.3}, train acc {:.3}, test acc {}, {:.1} examples/sec on {}",
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
/// `{"epoch", "loss", "train_acc", "test_acc", "examples_per_sec", "seconds", ...}`. If the write
/// fails (a full disk), the file is cut back to its previous length: no partial line is left.
pub fn append_metrics(path: &Path, m: &EpochMetrics) -> Result<()> {
    let line = serde_json::to_string(m).map_err(|e| Error::msg(format!("serialising metrics: {e}")))?;
    let mut f =
        std::fs::OpenOptions::new().create(true).append(true).open(path).map_err(|e| Error::io(path, e))?;
    let len = f.metadata().map_err(|e| Error::io(path, e))?.len();
    let res = f.write_all(format!("{line}\n").as_bytes()).and_then(|()| f.sync_data());
    res.map_err(|e| {
        // a full disk may have taken part of the line: cut it off so every line stays valid JSON
        let _ = f.set_len(len);
        Error::io(path, e)
    })
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

/// One plotted curve: name, colour, dash pattern, points.
type Series<'a> = (&'a str, &'a str, &'a str, Vec<(f64, f64)>);

/// d2l's animator as an SVG file: train loss and train accuracy at five points per epoch, test
/// accuracy per epoch; epoch on x (0 to `epochs`), [0, 1] on y as d2l's `ylim` unless a value
/// is above 1 (a loss above 1 early in training), then [0, that value rounded up to a tick];
/// a legend of the curves that have points; a title. Plain SVG text, no font libraries.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Curves {
    /// Title (model and data); none when empty.
    pub title: String,
    /// Total epochs (the x range).
    pub epochs: usize,
    /// (x, train loss, train acc) points.
    pub train: Vec<(f64, f64, f64)>,
    /// (x, test acc) points.
    pub test: Vec<(f64, f64)>,
}

impl Curves {
    /// The SVG document.
    pub fn svg(&self) -> String {
        let (w, h) = (640.0, 420.0);
        let (l, r, t, b) = (60.0, 20.0, 36.0, 50.0);
        let (pw, ph) = (w - l - r, h - t - b);
        let xmax = self.epochs.max(1) as f64;
        // y: [0, 1], or up to the largest finite value rounded up to a multiple of 0.2.
        let top = self
            .train
            .iter()
            .flat_map(|&(_, lo, a)| [lo, a])
            .chain(self.test.iter().map(|&(_, a)| a))
            .filter(|v| v.is_finite())
            .fold(1.0f64, f64::max);
        let ymax = if top > 1.0 { (top * 5.0 - 1e-9).ceil() / 5.0 } else { 1.0 };
        let px = |x: f64| l + pw * (x / xmax).clamp(0.0, 1.0);
        let py = |y: f64| t + ph * (1.0 - (y / ymax).clamp(0.0, 1.0));
        let mut s = format!(
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\" \
             font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"{w}\" height=\"{h}\" fill=\"white\"/>\n"
        );
        if !self.title.is_empty() {
            s += &format!(
                "<text id=\"title\" x=\"{0:.1}\" y=\"22\" text-anchor=\"middle\" font-size=\"14\">{1}</text>\n",
                l + pw / 2.0,
                xml_escape(&self.title)
            );
        }
        // Grid, ticks and labels.
        for i in 0..=5 {
            let y = ymax * i as f64 / 5.0;
            s += &format!(
                "<line x1=\"{l}\" y1=\"{0:.1}\" x2=\"{1:.1}\" y2=\"{0:.1}\" stroke=\"#ddd\"/>\
                 <text x=\"{2:.1}\" y=\"{3:.1}\" text-anchor=\"end\">{y:.1}</text>\n",
                py(y),
                l + pw,
                l - 6.0,
                py(y) + 4.0
            );
        }
        let step = (xmax / 10.0).ceil().max(1.0) as usize;
        for e in (0..=self.epochs.max(1)).step_by(step) {
            let x = px(e as f64);
            s += &format!(
                "<line x1=\"{x:.1}\" y1=\"{t}\" x2=\"{x:.1}\" y2=\"{0:.1}\" stroke=\"#eee\"/>\
                 <text x=\"{x:.1}\" y=\"{1:.1}\" text-anchor=\"middle\">{e}</text>\n",
                t + ph,
                t + ph + 16.0
            );
        }
        s += &format!(
            "<rect x=\"{l}\" y=\"{t}\" width=\"{pw}\" height=\"{ph}\" fill=\"none\" stroke=\"black\"/>\n\
             <text x=\"{0:.1}\" y=\"{1:.1}\" text-anchor=\"middle\">epoch</text>\n",
            l + pw / 2.0,
            h - 10.0
        );
        let poly = |pts: Vec<(f64, f64)>, color: &str, dash: &str, id: &str| -> String {
            let p: Vec<String> = pts.iter().map(|&(x, y)| format!("{:.1},{:.1}", px(x), py(y))).collect();
            format!(
                "<polyline id=\"{id}\" fill=\"none\" stroke=\"{color}\" stroke-width=\"2\" stroke-dasharray=\"{dash}\" points=\"{}\"/>\n",
                p.join(" ")
            )
        };
        let series: [Series; 3] = [
            ("train loss", "#1f77b4", "none", self.train.iter().map(|&(x, lo, _)| (x, lo)).collect()),
            ("train acc", "#bf00bf", "8,4", self.train.iter().map(|&(x, _, a)| (x, a)).collect()),
            ("test acc", "#008000", "8,3,2,3", self.test.clone()),
        ];
        let shown: Vec<Series> = series.into_iter().filter(|(.., pts)| !pts.is_empty()).collect();
        let n = shown.len();
        for (i, (name, color, dash, pts)) in shown.into_iter().enumerate() {
            s += &poly(pts, color, dash, &name.replace(' ', "-"));
            let ly = t + ph - 6.0 - 18.0 * (n - i) as f64 + 12.0;
            let lx = l + pw - 110.0;
            s += &format!(
                "<line x1=\"{lx:.1}\" y1=\"{ly:.1}\" x2=\"{0:.1}\" y2=\"{ly:.1}\" stroke=\"{color}\" stroke-width=\"2\" \
                 stroke-dasharray=\"{dash}\"/><text x=\"{1:.1}\" y=\"{2:.1}\">{name}</text>\n",
                lx + 24.0,
                lx + 30.0,
                ly + 4.0
            );
        }
        s += "</svg>\n";
        s
    }
}

/// `&`, `<`, `>` and `"` as XML entities.
fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// Per-class precision, recall and F1 from `confusion[gold][pred]`.
pub fn per_class(confusion: &[Vec<usize>]) -> Vec<(f64, f64, f64)> {
    let k = confusion.len();
    (0..k)
        .map(|c| {
            let tp = confusion[c][c] as f64;
            let pred: f64 = (0..k).map(|g| confusion[g][c] as f64).sum();
            let gold: f64 = confusion[c].iter().map(|&x| x as f64).sum();
            let p = if pred > 0.0 { tp / pred } else { 0.0 };
            let r = if gold > 0.0 { tp / gold } else { 0.0 };
            let f = if p + r > 0.0 { 2.0 * p * r / (p + r) } else { 0.0 };
            (p, r, f)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_class_scores() {
        // gold rows, predicted columns
        let c = vec![vec![5, 1, 0], vec![0, 3, 1], vec![2, 0, 0]];
        let s = per_class(&c);
        assert!((s[0].0 - 5.0 / 7.0).abs() < 1e-12 && (s[0].1 - 5.0 / 6.0).abs() < 1e-12);
        assert!(
            (s[1].0 - 0.75).abs() < 1e-12 && (s[1].1 - 0.75).abs() < 1e-12 && (s[1].2 - 0.75).abs() < 1e-12
        );
        assert_eq!(s[2], (0.0, 0.0, 0.0));
    }

    #[test]
    fn svg_has_three_series_in_range() {
        let c = Curves {
            title: "bert.small on <snli> & co".into(),
            epochs: 2,
            train: vec![(0.5, 1.2, 0.4), (1.0, 0.9, 0.6)],
            test: vec![(1.0, 0.55)],
        };
        let s = c.svg();
        for id in ["train-loss", "train-acc", "test-acc"] {
            assert!(s.contains(&format!("id=\"{id}\"")), "{id}");
        }
        // A loss of 1.2 extends the y axis to 1.2: the point at x = 0.5 of 2 epochs is at the top
        // of the plot (60 + 560·0.25, 36), 0.6 halfway down (36 + 334/2 = 203), and 1.2 is a tick.
        assert!(s.contains("200.0,36.0") && s.contains("340.0,203.0"), "{s}");
        assert!(s.contains(">1.2</text>") && s.contains(">0.0</text>"), "{s}");
        assert!(s.contains(">bert.small on &lt;snli&gt; &amp; co</text>"), "{s}");
        // Within [0, 1] the axis stays d2l's.
        let c = Curves { train: vec![(0.5, 0.8, 0.4)], ..c };
        let s = c.svg();
        assert!(s.contains(">1.0</text>") && !s.contains(">1.2</text>"), "{s}");
        // No test set: no test curve and no legend entry for it.
        let c = Curves { test: vec![], ..c };
        let s = c.svg();
        assert!(!s.contains("test acc") && !s.contains("test-acc") && s.contains(">train acc</text>"), "{s}");
    }
}
