//! Reading `torch.save(state_dict)` files without Python and without executing anything.
//!
//! Two containers, told apart by their first bytes:
//! - **zip** (`PK\x03\x04`, torch ≥ 1.6's default): `<prefix>/data.pkl` (the pickled state dict),
//!   `<prefix>/byteorder` (`little` / `big`; absent → little), `<prefix>/data/<key>` (the raw bytes of
//!   storage `key`). The prefix varies (the file stem, `archive`): we take the entry ending in
//!   `/data.pkl`.
//! - **legacy** (`\x80`, `_use_new_zipfile_serialization=False` or torch < 1.6): five pickles in a
//!   row — the magic number `0x1950a86a20f9469cfc6c`, the protocol version `1001`, a sys-info dict
//!   (`little_endian`, `type_sizes`), the state dict, the list of storage keys — then, for each key
//!   of that list in order, an int64 element count (in the file's byte order) and the raw bytes.
//!   Verified against files written by torch 2.15 (`tests/fixtures/torch/*legacy*.pt`).
//!
//! Tensors are strided views (`storage_offset`, sizes, strides) of storages; several tensors may
//! share one storage, and non-contiguous views are gathered. Every view is bounds-checked against
//! its storage and every storage against the bytes actually present before anything is read or
//! allocated. Values of every dtype are widened to f64 (f16 and bf16 through the `half` crate);
//! integer tensors (buffers such as `position_ids`) are allowed and keep their dtype in
//! [`TensorData::dtype`].

use super::pickle::{unpickle, StorageRef, TensorRef, Value};
use crate::error::{Error, Result};
use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::Path;

/// Element type of a torch storage / tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TorchDtype {
    /// float64 (`DoubleStorage`).
    F64,
    /// float32 (`FloatStorage`).
    F32,
    /// float16 (`HalfStorage`).
    F16,
    /// bfloat16 (`BFloat16Storage`).
    BF16,
    /// int64 (`LongStorage`).
    I64,
    /// int32 (`IntStorage`).
    I32,
    /// int16 (`ShortStorage`).
    I16,
    /// int8 (`CharStorage`).
    I8,
    /// uint8 (`ByteStorage`, `UntypedStorage`).
    U8,
    /// bool (`BoolStorage`).
    Bool,
}

impl TorchDtype {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            TorchDtype::F64 | TorchDtype::I64 => 8,
            TorchDtype::F32 | TorchDtype::I32 => 4,
            TorchDtype::F16 | TorchDtype::BF16 | TorchDtype::I16 => 2,
            TorchDtype::I8 | TorchDtype::U8 | TorchDtype::Bool => 1,
        }
    }
    /// Whether it is a floating-point type (weights); false for integer buffers.
    pub fn is_float(self) -> bool {
        matches!(self, TorchDtype::F64 | TorchDtype::F32 | TorchDtype::F16 | TorchDtype::BF16)
    }
    /// torch's name: `float32`, `bfloat16`, `int64`, …
    pub fn name(self) -> &'static str {
        match self {
            TorchDtype::F64 => "float64",
            TorchDtype::F32 => "float32",
            TorchDtype::F16 => "float16",
            TorchDtype::BF16 => "bfloat16",
            TorchDtype::I64 => "int64",
            TorchDtype::I32 => "int32",
            TorchDtype::I16 => "int16",
            TorchDtype::I8 => "int8",
            TorchDtype::U8 => "uint8",
            TorchDtype::Bool => "bool",
        }
    }
    /// From a storage class name (`FloatStorage`, …).
    pub fn from_storage_name(s: &str) -> Option<Self> {
        Some(match s {
            "DoubleStorage" => TorchDtype::F64,
            "FloatStorage" => TorchDtype::F32,
            "HalfStorage" => TorchDtype::F16,
            "BFloat16Storage" => TorchDtype::BF16,
            "LongStorage" => TorchDtype::I64,
            "IntStorage" => TorchDtype::I32,
            "ShortStorage" => TorchDtype::I16,
            "CharStorage" => TorchDtype::I8,
            "ByteStorage" | "UntypedStorage" => TorchDtype::U8,
            "BoolStorage" => TorchDtype::Bool,
            _ => return None,
        })
    }
    /// From a dtype attribute name (`float32`, `float`, `half`, …).
    pub fn from_name(s: &str) -> Option<Self> {
        Some(match s {
            "float64" | "double" => TorchDtype::F64,
            "float32" | "float" => TorchDtype::F32,
            "float16" | "half" => TorchDtype::F16,
            "bfloat16" => TorchDtype::BF16,
            "int64" | "long" => TorchDtype::I64,
            "int32" | "int" => TorchDtype::I32,
            "int16" | "short" => TorchDtype::I16,
            "int8" => TorchDtype::I8,
            "uint8" => TorchDtype::U8,
            "bool" => TorchDtype::Bool,
            _ => return None,
        })
    }
    /// Decodes one element from exactly `self.size()` bytes.
    pub(crate) fn decode(self, b: &[u8], big_endian: bool) -> f64 {
        fn arr<const N: usize>(b: &[u8], big: bool) -> [u8; N] {
            let mut a = [0u8; N];
            for (i, x) in a.iter_mut().enumerate() {
                *x = b.get(if big { N - 1 - i } else { i }).copied().unwrap_or(0);
            }
            a
        }
        match self {
            TorchDtype::F64 => f64::from_le_bytes(arr(b, big_endian)),
            TorchDtype::F32 => f32::from_le_bytes(arr(b, big_endian)) as f64,
            TorchDtype::F16 => half::f16::from_le_bytes(arr(b, big_endian)).to_f64(),
            TorchDtype::BF16 => half::bf16::from_le_bytes(arr(b, big_endian)).to_f64(),
            TorchDtype::I64 => i64::from_le_bytes(arr(b, big_endian)) as f64,
            TorchDtype::I32 => i32::from_le_bytes(arr(b, big_endian)) as f64,
            TorchDtype::I16 => i16::from_le_bytes(arr(b, big_endian)) as f64,
            TorchDtype::I8 => i8::from_le_bytes(arr(b, false)) as f64,
            TorchDtype::U8 => b.first().copied().unwrap_or(0) as f64,
            TorchDtype::Bool => (b.first().copied().unwrap_or(0) != 0) as u8 as f64,
        }
    }
}

/// One named tensor read from a checkpoint, widened to f64, row-major.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorData {
    /// The key in the state dict / safetensors file.
    pub name: String,
    /// Sizes (PyTorch order; `[]` for a scalar).
    pub shape: Vec<usize>,
    /// Element type in the file.
    pub dtype: TorchDtype,
    /// The values, row-major (int64 values beyond 2^53 are rounded).
    pub values: Vec<f64>,
}

impl TensorData {
    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.values.len()
    }
    /// How many values are NaN or ±inf (allowed at load; the caller decides).
    pub fn non_finite_count(&self) -> usize {
        self.values.iter().filter(|v| !v.is_finite()).count()
    }
}

/// The largest pickle we read (the state dict's metadata, not its data).
const MAX_PICKLE_BYTES: u64 = 1 << 30;
/// Above this element count a tensor may not hold more elements than its storage (stride-0 views).
const MAX_BROADCAST_NUMEL: u64 = 1 << 24;
/// All tensors together may hold at most this many times the storage bytes they view, plus
/// [`MAX_BROADCAST_NUMEL`]: tied weights view one storage twice, while a hostile file could name
/// one large storage from millions of tensors and expand a small file into terabytes of values.
const MAX_VIEW_FACTOR: u64 = 4;

/// Counts the values produced against the storage bytes read (see [`MAX_VIEW_FACTOR`]). Charged
/// after each tensor is gathered: a single tensor is already bounded by its storage (or by
/// [`MAX_BROADCAST_NUMEL`]), so at most one tensor is read beyond the budget.
#[derive(Default)]
struct Expansion {
    storage_bytes: u64,
    values: u64,
}

impl Expansion {
    fn charge(&mut self, path: &Path, name: &str, t: &TensorRef) -> Result<()> {
        let numel = t.shape.iter().try_fold(1u64, |a, &d| a.checked_mul(d)).unwrap_or(u64::MAX);
        self.values = self.values.saturating_add(numel);
        let cap = self.storage_bytes.saturating_mul(MAX_VIEW_FACTOR).saturating_add(MAX_BROADCAST_NUMEL);
        if self.values > cap {
            return Err(Error::checkpoint(
                path,
                format!(
                    "tensor `{name}`: the tensors so far hold {} values but view only {} bytes of storage \
                     (more than {MAX_VIEW_FACTOR}x over): refusing to expand the file",
                    self.values, self.storage_bytes
                ),
            ));
        }
        Ok(())
    }
}

/// Reads a `torch.save` state dict (zip or legacy container): every tensor in file order.
///
/// Errors (all naming `path`): not a torch file, a refused pickle global, a truncated or
/// inconsistent file, a view outside its storage, a top-level object that is not a dict of
/// tensors (naming the offending key).
pub fn load_torch_state_dict(path: &Path) -> Result<Vec<TensorData>> {
    let mut f = File::open(path).map_err(|e| Error::io(path, e))?;
    let mut head = [0u8; 4];
    let n = read_up_to(&mut f, &mut head).map_err(|e| Error::io(path, e))?;
    if n == 4 && head == *b"PK\x03\x04" {
        let len = f.metadata().map_err(|e| Error::io(path, e))?.len();
        f.seek(SeekFrom::Start(0)).map_err(|e| Error::io(path, e))?;
        load_zip(path, BufReader::new(f), len)
    } else if n >= 1 && head[0] == 0x80 {
        drop(f);
        let data = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        load_legacy(path, &data)
    } else {
        Err(not_torch(path, &head[..n]))
    }
}

/// [`load_torch_state_dict`] on the bytes of a file already in memory; `path` labels errors.
pub fn parse_torch_state_dict(bytes: &[u8], path: &Path) -> Result<Vec<TensorData>> {
    if bytes.starts_with(b"PK\x03\x04") {
        load_zip(path, std::io::Cursor::new(bytes), bytes.len() as u64)
    } else if bytes.first() == Some(&0x80) {
        load_legacy(path, bytes)
    } else {
        Err(not_torch(path, &bytes[..bytes.len().min(4)]))
    }
}

/// The message of a checkpoint error without its `checkpoint PATH:` prefix.
fn checkpoint_msg(e: Error) -> String {
    match e {
        Error::Checkpoint { msg, .. } => msg,
        other => other.to_string(),
    }
}

fn not_torch(path: &Path, head: &[u8]) -> Error {
    Error::checkpoint(
        path,
        format!("not a torch.save file: starts with {head:02x?}, expected a zip (PK\\x03\\x04) or a pickle (\\x80)"),
    )
}

fn read_up_to(f: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

// -------------------------------------------------------------------- zip container

fn load_zip<R: Read + Seek>(path: &Path, reader: R, file_len: u64) -> Result<Vec<TensorData>> {
    let zerr = |what: &str, e: zip::result::ZipError| Error::checkpoint(path, format!("{what}: {e}"));
    let mut zip = zip::ZipArchive::new(reader).map_err(|e| zerr("not a readable zip", e))?;
    let pkl_name = zip
        .file_names()
        .filter(|n| n.ends_with("/data.pkl") || *n == "data.pkl")
        .min_by_key(|n| n.len())
        .map(str::to_owned)
        .ok_or_else(|| Error::checkpoint(path, "zip has no `*/data.pkl` entry: not a torch.save file"))?;
    let prefix = pkl_name[..pkl_name.len() - "data.pkl".len()].to_owned();
    // reads at most `max` bytes of an entry; None if it does not exist
    let read_entry = |zip: &mut zip::ZipArchive<R>, name: &str, max: u64| -> Result<Option<Vec<u8>>> {
        let mut e = match zip.by_name(name) {
            Ok(e) => e,
            Err(zip::result::ZipError::FileNotFound) => return Ok(None),
            Err(e) => return Err(zerr(name, e)),
        };
        if e.compressed_size() > file_len {
            return Err(Error::checkpoint(path, format!("{name}: entry larger than the file (truncated?)")));
        }
        let mut buf = Vec::new();
        e.by_ref().take(max).read_to_end(&mut buf).map_err(|err| {
            Error::checkpoint(path, format!("{name}: {err} (a corrupt or truncated zip entry)"))
        })?;
        Ok(Some(buf))
    };
    let pkl = read_entry(&mut zip, &pkl_name, MAX_PICKLE_BYTES + 1)?.unwrap_or_default();
    if pkl.len() as u64 > MAX_PICKLE_BYTES {
        return Err(Error::checkpoint(path, format!("{pkl_name} is over {MAX_PICKLE_BYTES} bytes")));
    }
    let big_endian = match read_entry(&mut zip, &format!("{prefix}byteorder"), 64)? {
        None => false,
        Some(b) => match String::from_utf8_lossy(&b).trim() {
            "little" => false,
            "big" => true,
            other => return Err(Error::checkpoint(path, format!("{prefix}byteorder is {other:?}"))),
        },
    };
    let (value, _) = unpickle(&pkl, path, &pkl_name)?;
    let tensors = state_dict_entries(path, value)?;

    let mut storages: HashMap<String, Vec<u8>> = HashMap::new();
    let mut expansion = Expansion::default();
    let mut out = Vec::with_capacity(tensors.len());
    for (name, t) in tensors {
        let s = &t.storage;
        if s.view.is_some() {
            return Err(Error::checkpoint(
                path,
                format!("tensor `{name}`: storage views exist only in legacy files"),
            ));
        }
        let need = storage_bytes(path, &name, s)?;
        if !storages.contains_key(&s.key) {
            let entry = format!("{prefix}data/{}", s.key);
            let (size, compressed, stored) = match zip.by_name(&entry) {
                Ok(e) => (e.size(), e.compressed_size(), e.compression() == zip::CompressionMethod::Stored),
                Err(e) => return Err(zerr(&format!("tensor `{name}`: storage entry {entry}"), e)),
            };
            // stored entries must lie inside the file; compressed ones cannot expand beyond deflate's ratio
            let present =
                if stored { compressed.min(file_len) } else { compressed.saturating_mul(1032) + 1024 };
            if size < need || present < need {
                return Err(Error::checkpoint(
                    path,
                    format!(
                        "tensor `{name}`: storage {entry} declares {} {} elements ({need} bytes) but the \
                         file holds {} bytes for it",
                        s.numel,
                        s.dtype.name(),
                        size.min(present)
                    ),
                ));
            }
            // one byte past `need`: an entry of exactly `need` bytes is then read to its end, where
            // the zip reader checks its CRC-32 (a corrupt storage is an error, not wrong weights)
            let mut bytes = read_entry(&mut zip, &entry, need.saturating_add(1))
                .map_err(|e| Error::checkpoint(path, format!("tensor `{name}`: {}", checkpoint_msg(e))))?
                .unwrap_or_default();
            bytes.truncate(need as usize);
            if (bytes.len() as u64) < need {
                return Err(Error::checkpoint(
                    path,
                    format!(
                        "tensor `{name}`: storage {entry} is truncated ({} of {need} bytes)",
                        bytes.len()
                    ),
                ));
            }
            expansion.storage_bytes += bytes.len() as u64;
            storages.insert(s.key.clone(), bytes);
        }
        let bytes = storages.get(&s.key).map(Vec::as_slice).unwrap_or_default();
        out.push(gather(path, name.clone(), &t, bytes, 0, s.numel, big_endian)?);
        expansion.charge(path, &name, &t)?;
    }
    Ok(out)
}

/// Bytes the storage declares (numel × element size), overflow-checked.
fn storage_bytes(path: &Path, name: &str, s: &StorageRef) -> Result<u64> {
    s.numel.checked_mul(s.dtype.size() as u64).filter(|&b| b < (1u64 << 48)).ok_or_else(|| {
        Error::checkpoint(
            path,
            format!("tensor `{name}`: storage `{}` declares an absurd {} elements", s.key, s.numel),
        )
    })
}

// -------------------------------------------------------------------- legacy container

/// The magic number torch's legacy format starts with.
const LEGACY_MAGIC: u128 = 0x1950a86a20f9469cfc6c;

fn load_legacy(path: &Path, data: &[u8]) -> Result<Vec<TensorData>> {
    let mut pos = 0usize;
    let mut next = |what: &str| -> Result<Value> {
        let (v, n) = unpickle(data.get(pos..).unwrap_or_default(), path, what)?;
        pos += n;
        Ok(v)
    };
    let magic = next("legacy header (magic number)")?;
    let magic_ok = match &magic {
        Value::BigInt(b) if b.len() <= 16 => {
            let mut a = [0u8; 16];
            a[..b.len()].copy_from_slice(b);
            u128::from_le_bytes(a) == LEGACY_MAGIC
        }
        _ => false,
    };
    if !magic_ok {
        return Err(Error::checkpoint(
            path,
            "a pickle, but not a torch.save file (legacy magic number missing; a plain pickle is not loaded)",
        ));
    }
    let proto = next("legacy header (protocol version)")?;
    if proto != Value::Int(1001) {
        return Err(Error::checkpoint(path, format!("legacy protocol version is {proto:?}, expected 1001")));
    }
    let sys_info = next("legacy header (sys_info)")?;
    let mut big_endian = false;
    if let Value::Dict(d) = &sys_info {
        for (k, v) in d {
            if *k == Value::Str("little_endian".into()) {
                big_endian = *v == Value::Bool(false);
            }
        }
    }
    let value = next("legacy state dict pickle")?;
    let keys = next("legacy storage-key list")?;
    let tensors = state_dict_entries(path, value)?;
    let Value::List(keys) = keys else {
        return Err(Error::checkpoint(path, "legacy storage-key list is not a list"));
    };

    // element size of each root storage, from the tensors that use it
    let mut elem: HashMap<&str, usize> = HashMap::new();
    for (_, t) in &tensors {
        elem.insert(t.storage.key.as_str(), t.storage.dtype.size());
    }
    // walk the storages: int64 element count, then the bytes
    let mut index: HashMap<String, (usize, u64)> = HashMap::new();
    for k in &keys {
        let Value::Str(k) = k else {
            return Err(Error::checkpoint(path, "legacy storage key is not a string"));
        };
        let size = *elem.get(k.as_str()).ok_or_else(|| {
            Error::checkpoint(path, format!("legacy storage `{k}` is listed but no tensor uses it"))
        })?;
        let count_bytes: [u8; 8] =
            data.get(pos..pos + 8).and_then(|s| s.try_into().ok()).ok_or_else(|| {
                Error::checkpoint(path, format!("legacy storage `{k}`: truncated before its size"))
            })?;
        let count =
            if big_endian { u64::from_be_bytes(count_bytes) } else { u64::from_le_bytes(count_bytes) };
        pos += 8;
        let len =
            count.checked_mul(size as u64).filter(|&l| l <= (data.len() - pos) as u64).ok_or_else(|| {
                Error::checkpoint(
                    path,
                    format!(
                    "legacy storage `{k}`: {count} elements of {size} bytes, only {} bytes left in the file",
                    data.len() - pos
                ),
                )
            })?;
        index.insert(k.clone(), (pos, count));
        pos += len as usize;
    }

    let mut expansion = Expansion { storage_bytes: data.len() as u64, values: 0 };
    let mut out = Vec::with_capacity(tensors.len());
    for (name, t) in tensors {
        let s = &t.storage;
        let &(start, count) = index.get(&s.key).ok_or_else(|| {
            Error::checkpoint(path, format!("tensor `{name}`: storage `{}` missing from the file", s.key))
        })?;
        if count != s.numel {
            return Err(Error::checkpoint(
                path,
                format!(
                    "tensor `{name}`: storage `{}` declares {} elements, the file holds {count}",
                    s.key, s.numel
                ),
            ));
        }
        let (view_off, view_numel) = match &s.view {
            None => (0, s.numel),
            Some((vk, off, n)) => {
                if off.checked_add(*n).is_none_or(|e| e > s.numel) {
                    return Err(Error::checkpoint(
                        path,
                        format!(
                            "tensor `{name}`: storage view `{vk}` [{off}, {off}+{n}) exceeds its root's {}",
                            s.numel
                        ),
                    ));
                }
                (*off, *n)
            }
        };
        let bytes = data.get(start..start + (count as usize) * s.dtype.size()).unwrap_or_default();
        out.push(gather(path, name.clone(), &t, bytes, view_off, view_numel, big_endian)?);
        expansion.charge(path, &name, &t)?;
    }
    Ok(out)
}

// -------------------------------------------------------------------- shared

/// Checks the top-level object is a dict of str → tensor; returns its entries in order.
fn state_dict_entries(path: &Path, value: Value) -> Result<Vec<(String, TensorRef)>> {
    let Value::Dict(items) = value else {
        return Err(Error::checkpoint(
            path,
            format!("the saved object is a {}, not a state dict (a dict of tensors)", value.kind()),
        ));
    };
    let mut out: Vec<(String, TensorRef)> = Vec::with_capacity(items.len());
    let mut seen = std::collections::HashSet::new();
    for (k, v) in items {
        let Value::Str(k) = k else {
            return Err(Error::checkpoint(path, format!("state dict key {k:?} is not a string")));
        };
        match v {
            Value::Tensor(t) => {
                if !seen.insert(k.clone()) {
                    return Err(Error::checkpoint(path, format!("state dict key `{k}` appears twice")));
                }
                out.push((k, *t));
            }
            Value::Dict(_) => {
                return Err(Error::checkpoint(
                    path,
                    format!(
                        "key `{k}` holds a dict, not a tensor: a training checkpoint? Save its state dict \
                         (e.g. torch.save(ckpt['{k}'], ...)) and load that"
                    ),
                ))
            }
            other => {
                return Err(Error::checkpoint(
                    path,
                    format!("key `{k}` holds a {}, not a tensor: expected a plain state dict", other.kind()),
                ))
            }
        }
    }
    Ok(out)
}

/// Reads tensor `t` out of its storage bytes (`bytes` = the root storage, little- or big-endian),
/// whose usable part is elements `[view_off, view_off + view_numel)`.
fn gather(
    path: &Path,
    name: String,
    t: &TensorRef,
    bytes: &[u8],
    view_off: u64,
    view_numel: u64,
    big_endian: bool,
) -> Result<TensorData> {
    let bad = |m: String| Error::checkpoint(path, format!("tensor `{name}`: {m}"));
    let numel = t
        .shape
        .iter()
        .try_fold(1u64, |a, &d| a.checked_mul(d))
        .ok_or_else(|| bad("size overflows".into()))?;
    if numel > view_numel.max(MAX_BROADCAST_NUMEL) {
        return Err(bad(format!("{numel} elements over a storage of {view_numel}")));
    }
    // last element reached: offset + Σ (size - 1) · stride, which must lie inside the storage
    if numel > 0 {
        let mut last = t.offset;
        for (&d, &s) in t.shape.iter().zip(&t.stride) {
            last = (d - 1)
                .checked_mul(s)
                .and_then(|x| x.checked_add(last))
                .ok_or_else(|| bad("stride overflow".into()))?;
        }
        if last >= view_numel {
            return Err(bad(format!(
                "view (offset {}, size {:?}, stride {:?}) reaches element {last} of a storage of {view_numel}",
                t.offset, t.shape, t.stride
            )));
        }
    } else if t.offset > view_numel {
        return Err(bad(format!("storage offset {} beyond a storage of {view_numel}", t.offset)));
    }
    let es = t.storage.dtype.size();
    let base = view_off as usize;
    let need = (base + view_numel as usize) * es;
    let bytes =
        bytes.get(..need).ok_or_else(|| bad(format!("storage holds {} bytes, needs {need}", bytes.len())))?;
    let dt = t.storage.dtype;
    let shape: Vec<usize> = t.shape.iter().map(|&d| d as usize).collect();
    let mut values = Vec::with_capacity(numel as usize);
    let contiguous = {
        let mut expect = 1u64;
        let mut ok = true;
        for (&d, &s) in t.shape.iter().zip(&t.stride).rev() {
            ok &= d == 1 || s == expect;
            expect *= d;
        }
        ok
    };
    let start = base + t.offset as usize;
    if contiguous {
        let chunk = &bytes[start * es..(start + numel as usize) * es];
        values.extend(chunk.chunks_exact(es).map(|b| dt.decode(b, big_endian)));
    } else {
        // odometer over the multi-index; `pos` is the element index in the storage
        let nd = shape.len();
        let stride: Vec<usize> = t.stride.iter().map(|&s| s as usize).collect();
        let mut idx = vec![0usize; nd];
        let mut pos = start;
        for _ in 0..numel {
            values.push(dt.decode(&bytes[pos * es..pos * es + es], big_endian));
            // wrapping: the step after the last element may leave the address range, unused
            for d in (0..nd).rev() {
                idx[d] += 1;
                pos = pos.wrapping_add(stride[d]);
                if idx[d] < shape[d] {
                    break;
                }
                pos = pos.wrapping_sub(stride[d].wrapping_mul(shape[d]));
                idx[d] = 0;
            }
        }
    }
    Ok(TensorData { name, shape, dtype: dt, values })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decode_dtypes() {
        assert_eq!(TorchDtype::F32.decode(&1.5f32.to_le_bytes(), false), 1.5);
        assert_eq!(TorchDtype::F32.decode(&1.5f32.to_be_bytes(), true), 1.5);
        assert_eq!(TorchDtype::F16.decode(&[0x00, 0x3e], false), 1.5);
        assert_eq!(TorchDtype::BF16.decode(&[0xc0, 0x3f], false), 1.5);
        assert_eq!(TorchDtype::I64.decode(&(-7i64).to_be_bytes(), true), -7.0);
        assert_eq!(TorchDtype::Bool.decode(&[2], false), 1.0);
        assert_eq!(TorchDtype::from_storage_name("BFloat16Storage"), Some(TorchDtype::BF16));
    }
}
