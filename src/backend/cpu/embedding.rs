//! The embedding: `out = tok_emb[tokens] + seg_emb[segments] + pos_emb[positions]` over a packed
//! batch, and its backward (scatter-add into the token, segment and position tables).

use super::{check_layout, rows_per_task, Cpu, Float};
use crate::backend::DeviceBatch;
use rayon::prelude::*;

/// Row `id` of a table with rows of length `c`; panics with the op, table and id when the id is
/// out of range (ids are validated by the data pipeline, so that is a programming error).
#[inline]
fn row_index(op: &str, table: &str, id: i32, rows: usize, pos: usize) -> usize {
    match usize::try_from(id) {
        Ok(i) if i < rows => i,
        _ => panic!("{op}: {table} id {id} at token {pos} is outside the table's {rows} rows"),
    }
}

/// out (T,C) = wte (V,C)[tokens] + wse (S,C)[segments] + wpe (P,C)[positions], summed in that
/// order like d2l (`(tok + seg) + pos`).
pub(super) fn embedding_forward<F: Float>(
    out: &mut [F],
    batch: &DeviceBatch<Cpu<F>>,
    wte: &[F],
    wse: &[F],
    wpe: &[F],
    c: usize,
) {
    let t = check_layout("embedding_forward", &batch.layout);
    assert!(
        out.len() >= t * c
            && batch.tokens.len() >= t
            && batch.segments.len() >= t
            && batch.positions.len() >= t,
        "embedding_forward: out has {} elements, tokens/segments/positions {}/{}/{}; need T = {t} rows of C = {c}",
        out.len(),
        batch.tokens.len(),
        batch.segments.len(),
        batch.positions.len()
    );
    if c == 0 {
        return;
    }
    let (nv, ns, np) = (wte.len() / c, wse.len() / c, wpe.len() / c);
    let rows = rows_per_task(c);
    out[..t * c].par_chunks_mut(rows * c).enumerate().for_each(|(chunk, out)| {
        for (r, o) in out.chunks_exact_mut(c).enumerate() {
            let i = chunk * rows + r;
            let tk = row_index("embedding_forward", "token", batch.tokens[i], nv, i);
            let sg = row_index("embedding_forward", "segment", batch.segments[i], ns, i);
            let ps = row_index("embedding_forward", "position", batch.positions[i], np, i);
            let (a, b, p) = (&wte[tk * c..][..c], &wse[sg * c..][..c], &wpe[ps * c..][..c]);
            for (((o, &a), &b), &p) in o.iter_mut().zip(a).zip(b).zip(p) {
                *o = (a + b) + p;
            }
        }
    });
}

/// Scatter-adds dout (T,C) into dwte (V,C), dwse (S,C) and, unless `None` (frozen positional
/// table), dwpe (P,C). The three tables are updated in parallel, each in token order.
pub(super) fn embedding_backward<F: Float>(
    dwte: &mut [F],
    dwse: &mut [F],
    dwpe: Option<&mut [F]>,
    dout: &[F],
    batch: &DeviceBatch<Cpu<F>>,
    c: usize,
) {
    let t = check_layout("embedding_backward", &batch.layout);
    assert!(dout.len() >= t * c, "embedding_backward: dout has {} elements, need {t}×{c}", dout.len());
    if c == 0 {
        return;
    }
    let scatter = |table: &str, dw: &mut [F], ids: &[i32]| {
        assert!(ids.len() >= t, "embedding_backward: {} {table} ids for T = {t}", ids.len());
        let rows = dw.len() / c;
        for (i, (&id, d)) in ids[..t].iter().zip(dout.chunks_exact(c)).enumerate() {
            let r = row_index("embedding_backward", table, id, rows, i);
            for (w, &d) in dw[r * c..(r + 1) * c].iter_mut().zip(d) {
                *w += d;
            }
        }
    };
    rayon::join(
        || scatter("token", dwte, &batch.tokens),
        || {
            rayon::join(
                || scatter("segment", dwse, &batch.segments),
                || {
                    if let Some(dwpe) = dwpe {
                        scatter("position", dwpe, &batch.positions)
                    }
                },
            )
        },
    );
}
