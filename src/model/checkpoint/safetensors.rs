//! Our own checkpoints (and Hugging Face `model.safetensors`): safetensors files.
//!
//! [`save_params`] writes every entry of a [`ParamLayout`] under its d2l name with its PyTorch
//! shape, in the buffer's dtype (F32 or F64), atomically: `<path>.tmp-<pid>`, fsync, rename, fsync
//! of the directory. [`load_safetensors`] reads F64/F32/F16/BF16 and integer tensors into
//! [`TensorData`] (the same type the torch reader returns), so [`super::names::load_into_params`]
//! works on both formats. Headers that lie (offsets outside the file, overlapping or with gaps,
//! shape × dtype ≠ byte length) are refused by the `safetensors` crate; its errors are reported
//! with the file name.

use super::torch::{TensorData, TorchDtype};
use crate::error::{Error, Result};
use crate::float::Float;
use crate::model::params::ParamLayout;
use safetensors::tensor::{Metadata, TensorInfo};
use safetensors::{Dtype, SafeTensors};
use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};

/// Writes `params` (laid out by `layout`) to `path` as safetensors, with `metadata` in the
/// header's `__metadata__`. Atomic: a reader sees the old file or the complete new one.
pub fn save_params<F: Float>(
    path: &Path,
    layout: &ParamLayout,
    params: &[F],
    metadata: &BTreeMap<String, String>,
) -> Result<()> {
    if params.len() != layout.total {
        return Err(Error::checkpoint(
            path,
            format!("cannot save: the buffer has {} values, the layout {}", params.len(), layout.total),
        ));
    }
    let es = std::mem::size_of::<F>();
    let mut infos = Vec::with_capacity(layout.entries.len());
    for e in &layout.entries {
        let (s, n) = (e.offset * es, e.numel() * es);
        infos.push((
            e.name.clone(),
            TensorInfo { dtype: F::ST_DTYPE, shape: e.shape.clone(), data_offsets: (s, s + n) },
        ));
    }
    let meta: HashMap<String, String> = metadata.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    let header = Metadata::new(Some(meta), infos)
        .map_err(|e| Error::checkpoint(path, format!("cannot build the safetensors header: {e}")))?;
    let mut header = serde_json::to_vec(&header)
        .map_err(|e| Error::checkpoint(path, format!("cannot serialise the safetensors header: {e}")))?;
    header.resize(header.len().next_multiple_of(8), b' ');

    let tmp = tmp_path(path);
    let write = || -> std::io::Result<()> {
        let f = File::create(&tmp)?;
        let mut w = BufWriter::with_capacity(1 << 20, &f);
        w.write_all(&(header.len() as u64).to_le_bytes())?;
        w.write_all(&header)?;
        // the buffer is in layout order, which is the order of the data offsets above
        for chunk in params.chunks(1 << 16) {
            let bytes: &[u8] = bytemuck::cast_slice(chunk);
            if cfg!(target_endian = "little") {
                w.write_all(bytes)?;
            } else {
                let le: Vec<u8> = bytes.chunks_exact(es).flat_map(|c| c.iter().rev().copied()).collect();
                w.write_all(&le)?;
            }
        }
        w.flush()?;
        drop(w);
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        // fsync of the directory makes the rename durable (not possible on every platform)
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        Error::io(path, e)
    })
}

fn tmp_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(format!(".tmp-{}", std::process::id()));
    PathBuf::from(s)
}

/// Reads every tensor of a safetensors file, in the order of their data offsets.
pub fn load_safetensors(path: &Path) -> Result<Vec<TensorData>> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    parse_safetensors(&bytes, path)
}

/// [`load_safetensors`] on the bytes of a file already in memory; `path` labels errors.
pub fn parse_safetensors(bytes: &[u8], path: &Path) -> Result<Vec<TensorData>> {
    let bad = |e: safetensors::SafeTensorError| {
        Error::checkpoint(
            path,
            format!("not a valid safetensors file (header inconsistent with the data?): {e}"),
        )
    };
    let (_, meta) = SafeTensors::read_metadata(bytes).map_err(bad)?;
    let st = SafeTensors::deserialize(bytes).map_err(bad)?;
    let mut out = Vec::with_capacity(st.len());
    for name in meta.offset_keys() {
        let t = st.tensor(&name).map_err(bad)?;
        let dtype = match t.dtype() {
            Dtype::F64 => TorchDtype::F64,
            Dtype::F32 => TorchDtype::F32,
            Dtype::F16 => TorchDtype::F16,
            Dtype::BF16 => TorchDtype::BF16,
            Dtype::I64 => TorchDtype::I64,
            Dtype::I32 => TorchDtype::I32,
            Dtype::I16 => TorchDtype::I16,
            Dtype::I8 => TorchDtype::I8,
            Dtype::U8 => TorchDtype::U8,
            Dtype::BOOL => TorchDtype::Bool,
            other => {
                return Err(Error::checkpoint(
                    path,
                    format!("tensor `{name}` has unsupported dtype {other:?}"),
                ));
            }
        };
        let es = dtype.size();
        let data = t.data();
        let numel: usize = t.shape().iter().product();
        if data.len() != numel * es {
            return Err(Error::checkpoint(
                path,
                format!(
                    "tensor `{name}`: {} bytes for shape {:?} of {}",
                    data.len(),
                    t.shape(),
                    dtype.name()
                ),
            ));
        }
        let values = data.chunks_exact(es).map(|b| dtype.decode(b, false)).collect();
        out.push(TensorData { name, shape: t.shape().to_vec(), dtype, values });
    }
    Ok(out)
}

/// The `__metadata__` map of a safetensors file (empty if absent), reading only the header.
pub fn read_safetensors_metadata(path: &Path) -> Result<BTreeMap<String, String>> {
    let mut f = File::open(path).map_err(|e| Error::io(path, e))?;
    let mut n = [0u8; 8];
    f.read_exact(&mut n).map_err(|e| Error::io(path, e))?;
    let n = u64::from_le_bytes(n);
    if n > 100 << 20 {
        return Err(Error::checkpoint(path, format!("safetensors header of {n} bytes is too large")));
    }
    let mut header = Vec::new();
    f.take(n).read_to_end(&mut header).map_err(|e| Error::io(path, e))?;
    if header.len() as u64 != n {
        return Err(Error::checkpoint(path, "truncated safetensors header"));
    }
    let v: serde_json::Value = serde_json::from_slice(&header)
        .map_err(|e| Error::checkpoint(path, format!("safetensors header is not JSON: {e}")))?;
    let mut out = BTreeMap::new();
    if let Some(m) = v.get("__metadata__").and_then(|m| m.as_object()) {
        for (k, v) in m {
            let v = v
                .as_str()
                .ok_or_else(|| Error::checkpoint(path, format!("__metadata__.{k} is not a string")))?;
            out.insert(k.clone(), v.to_owned());
        }
    }
    Ok(out)
}
