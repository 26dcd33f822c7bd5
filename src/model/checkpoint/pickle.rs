//! A restricted unpickler for `torch.save` files: a stack machine over a closed [`Value`] enum that
//! can build numbers, strings, tuples, lists, dicts, storages and tensors, and nothing else.
//!
//! It never executes anything. `GLOBAL` / `STACK_GLOBAL` only resolve names on a short allowlist
//! (the ones a plain `state_dict` needs, mirroring torch's own `weights_only` unpickler); any other
//! name (`os.system`, `builtins.eval`, `subprocess.Popen`, …) is an error naming it and the file.
//! `REDUCE` / `NEWOBJ` / `BUILD` are interpreted for those names only: `OrderedDict()` builds an
//! empty dict, `BUILD` on a dict drops the state (torch's `_metadata`), `_rebuild_tensor_v2` and
//! `_rebuild_parameter` build a [`TensorRef`]. A persistent id (`BINPERSID`) must be torch's
//! `('storage', torch.XStorage, key, location, numel[, view_metadata])` and becomes a
//! [`StorageRef`]; the caller reads the bytes.
//!
//! Every read is bounds-checked (a truncated file is an error, never a panic), and the stack, the
//! memo, strings, nesting depth and the amount of data copied by memo lookups are capped (see
//! [`Limits`]), so a hostile file cannot exhaust memory or the call stack.
//!
//! Opcodes: protocol 2 (`PROTO GLOBAL BINPUT LONG_BINPUT BINGET LONG_BINGET MARK STOP POP
//! EMPTY_TUPLE TUPLE TUPLE1-3 EMPTY_LIST APPEND APPENDS EMPTY_DICT DICT SETITEM SETITEMS BINUNICODE
//! SHORT_BINSTRING BINSTRING BININT BININT1 BININT2 LONG1 LONG4 BINFLOAT NEWTRUE NEWFALSE NONE
//! REDUCE BUILD NEWOBJ BINPERSID`), plus `SHORT_BINBYTES BINBYTES` (3) and `SHORT_BINUNICODE
//! BINUNICODE8 STACK_GLOBAL MEMOIZE FRAME` (4).

use super::torch::TorchDtype;
use crate::error::{Error, Result};
use std::collections::HashMap;
use std::path::Path;

/// Caps that bound the work and memory of one unpickling.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Items on the stack.
    pub max_stack: usize,
    /// Entries in the memo.
    pub max_memo: usize,
    /// Bytes in one string / bytes object.
    pub max_str: usize,
    /// Nesting depth of containers.
    pub max_depth: u32,
    /// Total weight (≈ nodes + bytes) that memo lookups may copy.
    pub max_copied: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_stack: 1 << 20, max_memo: 1 << 20, max_str: 1 << 20, max_depth: 64, max_copied: 1 << 26 }
    }
}

/// A name `GLOBAL` may resolve to: everything else is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Global {
    /// `collections.OrderedDict`.
    OrderedDict,
    /// `torch._utils._rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks[, meta])`.
    RebuildTensorV2,
    /// `torch._utils._rebuild_tensor(storage, offset, size, stride)` (torch < 1.0).
    RebuildTensor,
    /// `torch._utils._rebuild_parameter(tensor, requires_grad, hooks)`.
    RebuildParameter,
    /// `torch._utils._rebuild_parameter_with_state(tensor, requires_grad, hooks, state)`.
    RebuildParameterWithState,
    /// `torch.FloatStorage` etc. (only meaningful inside a persistent id).
    Storage(TorchDtype),
    /// `torch.float32` etc. (a dtype object, inert).
    Dtype(TorchDtype),
}

/// Resolves `module.name` against the allowlist.
pub fn resolve_global(module: &str, name: &str) -> Option<Global> {
    match (module, name) {
        ("collections", "OrderedDict") => Some(Global::OrderedDict),
        ("torch._utils", "_rebuild_tensor_v2") => Some(Global::RebuildTensorV2),
        ("torch._utils", "_rebuild_tensor") => Some(Global::RebuildTensor),
        ("torch._utils", "_rebuild_parameter") => Some(Global::RebuildParameter),
        ("torch._utils", "_rebuild_parameter_with_state") => Some(Global::RebuildParameterWithState),
        ("torch" | "torch.cuda", _) if name.ends_with("Storage") => {
            TorchDtype::from_storage_name(name).map(Global::Storage)
        }
        ("torch", _) => TorchDtype::from_name(name).map(Global::Dtype),
        _ => None,
    }
}

/// A storage named by a persistent id; its bytes live elsewhere in the container.
#[derive(Clone, Debug, PartialEq)]
pub struct StorageRef {
    /// Element type (from the storage class).
    pub dtype: TorchDtype,
    /// Key of the storage: the zip entry `data/<key>` or the legacy root key.
    pub key: String,
    /// Device it was saved from (`cpu`, `cuda:0`); ignored.
    pub location: String,
    /// Elements in the (root) storage.
    pub numel: u64,
    /// Legacy only: this storage is a view `(view_key, offset, numel)` of the root storage.
    pub view: Option<(String, u64, u64)>,
}

/// A tensor: a strided view of a storage.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorRef {
    /// The storage it views.
    pub storage: StorageRef,
    /// Offset of element 0, in elements.
    pub offset: u64,
    /// Sizes.
    pub shape: Vec<u64>,
    /// Strides, in elements.
    pub stride: Vec<u64>,
    /// Whether it was a parameter requiring gradients.
    pub requires_grad: bool,
}

/// An unpickled value. Closed: nothing here can run code.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    /// `None`.
    None,
    /// `True` / `False`.
    Bool(bool),
    /// An integer that fits i64.
    Int(i64),
    /// A larger integer: little-endian two's-complement bytes.
    BigInt(Vec<u8>),
    /// A float.
    Float(f64),
    /// A text string.
    Str(String),
    /// A bytes object (or a non-UTF-8 protocol-2 string).
    Bytes(Vec<u8>),
    /// A tuple.
    Tuple(Vec<Value>),
    /// A list.
    List(Vec<Value>),
    /// A dict or `OrderedDict`, in insertion order (duplicate keys: the last one wins on lookup).
    Dict(Vec<(Value, Value)>),
    /// An allowlisted global.
    Global(Global),
    /// A storage from a persistent id.
    Storage(Box<StorageRef>),
    /// A tensor.
    Tensor(Box<TensorRef>),
}

impl Value {
    /// A short description for error messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Value::None => "None",
            Value::Bool(_) => "bool",
            Value::Int(_) | Value::BigInt(_) => "int",
            Value::Float(_) => "float",
            Value::Str(_) => "str",
            Value::Bytes(_) => "bytes",
            Value::Tuple(_) => "tuple",
            Value::List(_) => "list",
            Value::Dict(_) => "dict",
            Value::Global(_) => "global",
            Value::Storage(_) => "storage",
            Value::Tensor(_) => "tensor",
        }
    }
}

/// A stack / memo entry: a value with its nesting depth and weight (nodes + bytes).
#[derive(Clone, Debug)]
struct Item {
    v: Value,
    depth: u32,
    weight: u64,
}

impl Item {
    fn leaf(v: Value) -> Item {
        let weight = match &v {
            Value::Str(s) => 1 + s.len() as u64,
            Value::Bytes(b) | Value::BigInt(b) => 1 + b.len() as u64,
            Value::Tensor(_) | Value::Storage(_) => 16,
            _ => 1,
        };
        Item { v, depth: 0, weight }
    }
}

/// Unpickles one pickle from the start of `data`; returns the value and the bytes consumed.
/// `path` and `what` (e.g. `archive/data.pkl`) only label error messages.
pub fn unpickle(data: &[u8], path: &Path, what: &str) -> Result<(Value, usize)> {
    unpickle_with(data, path, what, Limits::default())
}

/// [`unpickle`] with explicit [`Limits`].
pub fn unpickle_with(data: &[u8], path: &Path, what: &str, limits: Limits) -> Result<(Value, usize)> {
    let mut m = Machine {
        data,
        pos: 0,
        op_pos: 0,
        path,
        what,
        limits,
        stack: Vec::new(),
        marks: Vec::new(),
        memo: HashMap::new(),
        copied: 0,
        key: None,
    };
    let v = m.run()?;
    Ok((v, m.pos))
}

struct Machine<'a> {
    data: &'a [u8],
    pos: usize,
    op_pos: usize,
    path: &'a Path,
    what: &'a str,
    limits: Limits,
    stack: Vec<Item>,
    marks: Vec<usize>,
    memo: HashMap<u32, Item>,
    copied: u64,
    /// The state-dict key of the value a REDUCE is building, for error messages.
    key: Option<String>,
}

impl<'a> Machine<'a> {
    fn err(&self, msg: impl std::fmt::Display) -> Error {
        let key = match &self.key {
            Some(k) => format!("tensor `{k}`: "),
            None => String::new(),
        };
        Error::checkpoint(self.path, format!("{}: byte {}: {key}{msg}", self.what, self.op_pos))
    }

    // ---------------------------------------------------------------- bounds-checked reads
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.data.len());
        match end {
            Some(end) => {
                let s = &self.data[self.pos..end];
                self.pos = end;
                Ok(s)
            }
            None => Err(self.err(format!(
                "truncated pickle: needs {n} more bytes at offset {}, the data has {}",
                self.pos,
                self.data.len()
            ))),
        }
    }
    fn arr<const N: usize>(&mut self) -> Result<[u8; N]> {
        let s = self.take(N)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }
    fn u8(&mut self) -> Result<u8> {
        Ok(self.arr::<1>()?[0])
    }
    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.arr()?))
    }
    fn len_checked(&mut self, n: u64) -> Result<usize> {
        let max = self.limits.max_str as u64;
        if n > max {
            return Err(self.err(format!("string of {n} bytes exceeds the limit of {max}")));
        }
        Ok(n as usize)
    }
    fn line(&mut self) -> Result<&'a str> {
        let rest = &self.data[self.pos..];
        let n = rest.iter().take(512).position(|&b| b == b'\n').ok_or_else(|| {
            self.err("GLOBAL: missing newline within 512 bytes (truncated or not a pickle)")
        })?;
        let s = self.take(n + 1)?;
        std::str::from_utf8(&s[..n]).map_err(|_| self.err("GLOBAL: name is not UTF-8"))
    }
    fn string(&mut self, n: u64) -> Result<Value> {
        let n = self.len_checked(n)?;
        let b = self.take(n)?;
        match std::str::from_utf8(b) {
            Ok(s) => Ok(Value::Str(s.to_owned())),
            Err(_) => Err(self.err("string is not valid UTF-8")),
        }
    }
    fn bytes(&mut self, n: u64, utf8_if_possible: bool) -> Result<Value> {
        let n = self.len_checked(n)?;
        let b = self.take(n)?;
        Ok(match std::str::from_utf8(b) {
            Ok(s) if utf8_if_possible => Value::Str(s.to_owned()),
            _ => Value::Bytes(b.to_vec()),
        })
    }

    // ---------------------------------------------------------------- stack
    fn push(&mut self, item: Item) -> Result<()> {
        if self.stack.len() >= self.limits.max_stack {
            return Err(self.err(format!("stack exceeds {} items", self.limits.max_stack)));
        }
        if item.depth > self.limits.max_depth {
            return Err(self.err(format!("data nested deeper than {}", self.limits.max_depth)));
        }
        self.stack.push(item);
        Ok(())
    }
    fn push_leaf(&mut self, v: Value) -> Result<()> {
        self.push(Item::leaf(v))
    }
    fn pop(&mut self) -> Result<Item> {
        let floor = self.marks.last().copied().unwrap_or(0);
        if self.stack.len() <= floor {
            return Err(self.err("stack underflow (malformed pickle)"));
        }
        self.stack.pop().ok_or_else(|| self.err("stack underflow"))
    }
    /// Index of the top item (above the innermost MARK).
    fn top_index(&self) -> Result<usize> {
        let floor = self.marks.last().copied().unwrap_or(0);
        if self.stack.len() <= floor {
            return Err(self.err("stack underflow (malformed pickle)"));
        }
        Ok(self.stack.len() - 1)
    }
    fn pop_mark(&mut self) -> Result<Vec<Item>> {
        let m = self.marks.pop().ok_or_else(|| self.err("no MARK on the stack (malformed pickle)"))?;
        Ok(self.stack.split_off(m.min(self.stack.len())))
    }
    fn container(&mut self, items: Vec<Item>, make: fn(Vec<Value>) -> Value) -> Result<()> {
        let depth = items.iter().map(|i| i.depth + 1).max().unwrap_or(1);
        let weight = 1 + items.iter().map(|i| i.weight).sum::<u64>();
        self.push(Item { v: make(items.into_iter().map(|i| i.v).collect()), depth, weight })
    }
    /// Appends `items` to the list on top of the stack.
    fn extend_list(&mut self, items: Vec<Item>) -> Result<()> {
        let max_depth = self.limits.max_depth;
        let i = self.top_index()?;
        let top = &mut self.stack[i];
        let Value::List(list) = &mut top.v else {
            let kind = top.v.kind();
            return Err(self.err(format!("APPEND to a {kind}, not a list")));
        };
        for i in items {
            top.depth = top.depth.max(i.depth + 1);
            top.weight += i.weight;
            list.push(i.v);
        }
        if top.depth > max_depth {
            return Err(self.err(format!("data nested deeper than {max_depth}")));
        }
        Ok(())
    }
    /// Inserts `items` (key, value, key, value, …) into the dict on top of the stack.
    fn extend_dict(&mut self, items: Vec<Item>) -> Result<()> {
        if items.len() % 2 != 0 {
            return Err(self.err("SETITEMS with an odd number of items"));
        }
        let max_depth = self.limits.max_depth;
        let i = self.top_index()?;
        let top = &mut self.stack[i];
        let Value::Dict(dict) = &mut top.v else {
            let kind = top.v.kind();
            return Err(self.err(format!("SETITEM on a {kind}, not a dict")));
        };
        let mut it = items.into_iter();
        while let (Some(k), Some(v)) = (it.next(), it.next()) {
            top.depth = top.depth.max(k.depth + 1).max(v.depth + 1);
            top.weight += k.weight + v.weight;
            dict.push((k.v, v.v));
        }
        if top.depth > max_depth {
            return Err(self.err(format!("data nested deeper than {max_depth}")));
        }
        Ok(())
    }
    fn memo_put(&mut self, idx: u32) -> Result<()> {
        if self.memo.len() >= self.limits.max_memo && !self.memo.contains_key(&idx) {
            return Err(self.err(format!("memo exceeds {} entries", self.limits.max_memo)));
        }
        let item = self.stack[self.top_index()?].clone();
        self.copy_budget(item.weight)?;
        self.memo.insert(idx, item);
        Ok(())
    }
    fn memo_get(&mut self, idx: u32) -> Result<()> {
        let item = self.memo.get(&idx).ok_or_else(|| self.err(format!("memo key {idx} is undefined")))?;
        let item = item.clone();
        self.copy_budget(item.weight)?;
        self.push(item)
    }
    fn copy_budget(&mut self, w: u64) -> Result<()> {
        self.copied = self.copied.saturating_add(w);
        if self.copied > self.limits.max_copied {
            return Err(self.err(format!(
                "memo copies exceed {} units (a pickle that multiplies its data?)",
                self.limits.max_copied
            )));
        }
        Ok(())
    }

    // ---------------------------------------------------------------- the machine
    fn run(&mut self) -> Result<Value> {
        loop {
            self.op_pos = self.pos;
            let op = self.u8()?;
            match op {
                0x80 => {
                    let p = self.u8()?; // PROTO
                    if p > 5 {
                        return Err(self.err(format!("unsupported pickle protocol {p}")));
                    }
                }
                0x95 => {
                    self.take(8)?; // FRAME: a length hint only
                }
                b'.' => {
                    // STOP
                    let item = self.pop()?;
                    return Ok(item.v);
                }
                b'c' => {
                    // GLOBAL
                    let module = self.line()?;
                    let name = self.line()?;
                    let g = self.global(module, name)?;
                    self.push_leaf(Value::Global(g))?;
                }
                0x93 => {
                    // STACK_GLOBAL
                    let name = self.pop()?.v;
                    let module = self.pop()?.v;
                    let (Value::Str(module), Value::Str(name)) = (&module, &name) else {
                        return Err(self.err("STACK_GLOBAL needs two strings"));
                    };
                    let g = self.global(module, name)?;
                    self.push_leaf(Value::Global(g))?;
                }
                b'q' => {
                    let i = self.u8()? as u32; // BINPUT
                    self.memo_put(i)?;
                }
                b'r' => {
                    let i = self.u32()?; // LONG_BINPUT
                    self.memo_put(i)?;
                }
                0x94 => {
                    let i = u32::try_from(self.memo.len()).map_err(|_| self.err("memo overflow"))?;
                    self.memo_put(i)?; // MEMOIZE
                }
                b'h' => {
                    let i = self.u8()? as u32; // BINGET
                    self.memo_get(i)?;
                }
                b'j' => {
                    let i = self.u32()?; // LONG_BINGET
                    self.memo_get(i)?;
                }
                b'(' => {
                    if self.marks.len() >= self.limits.max_stack {
                        return Err(self.err("too many MARKs"));
                    }
                    self.marks.push(self.stack.len());
                }
                b'0' => {
                    self.pop()?; // POP
                }
                b')' => self.container(Vec::new(), Value::Tuple)?,
                b't' => {
                    let items = self.pop_mark()?;
                    self.container(items, Value::Tuple)?;
                }
                0x85..=0x87 => {
                    let n = (op - 0x84) as usize; // TUPLE1..3
                    let mut items = Vec::with_capacity(n);
                    for _ in 0..n {
                        items.push(self.pop()?);
                    }
                    items.reverse();
                    self.container(items, Value::Tuple)?;
                }
                b']' => self.container(Vec::new(), Value::List)?,
                b'a' => {
                    let item = self.pop()?;
                    self.extend_list(vec![item])?;
                }
                b'e' => {
                    let items = self.pop_mark()?;
                    self.extend_list(items)?;
                }
                b'}' => self.push(Item { v: Value::Dict(Vec::new()), depth: 1, weight: 1 })?,
                b'd' => {
                    let items = self.pop_mark()?;
                    self.push(Item { v: Value::Dict(Vec::new()), depth: 1, weight: 1 })?;
                    self.extend_dict(items)?;
                }
                b's' => {
                    let v = self.pop()?;
                    let k = self.pop()?;
                    self.extend_dict(vec![k, v])?;
                }
                b'u' => {
                    let items = self.pop_mark()?;
                    self.extend_dict(items)?;
                }
                b'X' => {
                    let n = self.u32()? as u64; // BINUNICODE
                    let v = self.string(n)?;
                    self.push_leaf(v)?;
                }
                0x8c => {
                    let n = self.u8()? as u64; // SHORT_BINUNICODE
                    let v = self.string(n)?;
                    self.push_leaf(v)?;
                }
                0x8d => {
                    let n = u64::from_le_bytes(self.arr()?); // BINUNICODE8
                    let v = self.string(n)?;
                    self.push_leaf(v)?;
                }
                b'U' | b'T' | b'C' | b'B' => {
                    let n = if matches!(op, b'U' | b'C') { self.u8()? as u64 } else { self.u32()? as u64 };
                    // protocol-2 strings (U, T) decode to str when they are UTF-8; bytes stay bytes
                    let v = self.bytes(n, matches!(op, b'U' | b'T'))?;
                    self.push_leaf(v)?;
                }
                b'J' => {
                    let v = i32::from_le_bytes(self.arr()?) as i64; // BININT
                    self.push_leaf(Value::Int(v))?;
                }
                b'K' => {
                    let v = self.u8()? as i64; // BININT1
                    self.push_leaf(Value::Int(v))?;
                }
                b'M' => {
                    let v = u16::from_le_bytes(self.arr()?) as i64; // BININT2
                    self.push_leaf(Value::Int(v))?;
                }
                0x8a | 0x8b => {
                    let n = if op == 0x8a { self.u8()? as u64 } else { self.u32()? as u64 }; // LONG1/4
                    let n = self.len_checked(n)?;
                    let b = self.take(n)?;
                    self.push_leaf(long_le(b))?;
                }
                b'G' => {
                    let v = f64::from_be_bytes(self.arr()?); // BINFLOAT (big-endian)
                    self.push_leaf(Value::Float(v))?;
                }
                0x88 => self.push_leaf(Value::Bool(true))?,
                0x89 => self.push_leaf(Value::Bool(false))?,
                b'N' => self.push_leaf(Value::None)?,
                b'R' | 0x81 => {
                    // REDUCE / NEWOBJ: callable(*args), for allowlisted callables only
                    let args = self.pop()?;
                    let callable = self.pop()?;
                    // in a state dict the key sits right below: name it in errors
                    self.key = match self.stack.last() {
                        Some(Item { v: Value::Str(k), .. }) => Some(k.chars().take(200).collect()),
                        _ => None,
                    };
                    let v = self.call(callable.v, args.v);
                    self.key = None;
                    self.push_leaf(v?)?;
                }
                b'b' => {
                    // BUILD: only `OrderedDict.__setstate__`-like state on a dict, which we drop
                    let _state = self.pop()?;
                    let top = &self.stack[self.top_index()?].v;
                    if !matches!(top, Value::Dict(_) | Value::Tensor(_)) {
                        let kind = top.kind();
                        return Err(self.err(format!("BUILD on a {kind}: only dicts may carry state")));
                    }
                }
                b'Q' => {
                    let pid = self.pop()?; // BINPERSID
                    let s = self.persistent_load(pid.v)?;
                    self.push_leaf(Value::Storage(Box::new(s)))?;
                }
                _ => return Err(self.err(format!("unsupported pickle opcode {}", opcode_name(op)))),
            }
        }
    }

    fn global(&self, module: &str, name: &str) -> Result<Global> {
        resolve_global(module, name).ok_or_else(|| {
            self.err(format!(
                "refused global `{module}.{name}`: a weights file may only contain tensors, storages \
                 and OrderedDicts (this file may be trying to run code; nothing was executed)"
            ))
        })
    }

    fn call(&self, callable: Value, args: Value) -> Result<Value> {
        let Value::Global(g) = callable else {
            return Err(self.err(format!("REDUCE on a {}, not an allowed callable", callable.kind())));
        };
        let Value::Tuple(args) = args else {
            return Err(self.err(format!("REDUCE arguments are a {}, not a tuple", args.kind())));
        };
        match g {
            Global::OrderedDict => {
                if !args.is_empty() {
                    return Err(self.err("OrderedDict(...) with arguments is not supported"));
                }
                Ok(Value::Dict(Vec::new()))
            }
            Global::RebuildTensorV2 | Global::RebuildTensor => {
                let ok_len =
                    if g == Global::RebuildTensor { args.len() == 4 } else { (6..=7).contains(&args.len()) };
                if !ok_len {
                    return Err(self.err(format!("_rebuild_tensor with {} arguments", args.len())));
                }
                let mut it = args.into_iter();
                let storage = it.next();
                let offset = self.ints(it.next().map(|v| Value::Tuple(vec![v])), "storage_offset")?;
                let shape = self.ints(it.next(), "size")?;
                let stride = self.ints(it.next(), "stride")?;
                let requires_grad = matches!(it.next(), Some(Value::Bool(true)));
                let offset = offset.first().copied().unwrap_or(0);
                let storage = match storage {
                    Some(Value::Storage(s)) => *s,
                    other => {
                        let kind = other.as_ref().map_or("nothing", Value::kind);
                        return Err(self.err(format!("_rebuild_tensor on a {kind}, not a storage")));
                    }
                };
                if shape.len() != stride.len() {
                    return Err(self.err(format!(
                        "tensor with {} sizes and {} strides",
                        shape.len(),
                        stride.len()
                    )));
                }
                Ok(Value::Tensor(Box::new(TensorRef { storage, offset, shape, stride, requires_grad })))
            }
            Global::RebuildParameter | Global::RebuildParameterWithState => match args.into_iter().next() {
                Some(t @ Value::Tensor(_)) => Ok(t),
                other => {
                    let kind = other.as_ref().map_or("nothing", Value::kind);
                    Err(self.err(format!("_rebuild_parameter on a {kind}, not a tensor")))
                }
            },
            Global::Storage(_) | Global::Dtype(_) => {
                Err(self.err("a torch storage type or dtype is not callable"))
            }
        }
    }

    /// A tuple of non-negative ints (sizes, strides, an offset).
    fn ints(&self, v: Option<Value>, what: &str) -> Result<Vec<u64>> {
        let Some(Value::Tuple(items)) = v else {
            return Err(self.err(format!("tensor {what} is not a tuple")));
        };
        items
            .iter()
            .map(|x| match x {
                Value::Int(i) if *i >= 0 => Ok(*i as u64),
                _ => Err(self.err(format!("tensor {what} holds {x:?}, not a non-negative int"))),
            })
            .collect()
    }

    /// torch's persistent id: `('storage', torch.XStorage, key, location, numel[, view_metadata])`.
    fn persistent_load(&self, pid: Value) -> Result<StorageRef> {
        let bad = |m: &str| self.err(format!("persistent id: {m}"));
        let Value::Tuple(t) = pid else { return Err(bad("not a tuple")) };
        if !(5..=6).contains(&t.len()) || t[0] != Value::Str("storage".into()) {
            return Err(bad("expected ('storage', type, key, location, numel[, view])"));
        }
        let Value::Global(Global::Storage(dtype)) = t[1] else {
            return Err(bad(&format!("storage type is {:?}, not a torch storage class", t[1])));
        };
        let key = match &t[2] {
            Value::Str(s) => s.clone(),
            Value::Int(i) => i.to_string(),
            _ => return Err(bad("storage key is not a string")),
        };
        let location = match &t[3] {
            Value::Str(s) => s.clone(),
            _ => String::new(),
        };
        let Value::Int(numel) = t[4] else { return Err(bad("numel is not an int")) };
        let numel = u64::try_from(numel).map_err(|_| bad("negative numel"))?;
        let view = match t.get(5) {
            None | Some(Value::None) => None,
            Some(Value::Tuple(v)) => match v.as_slice() {
                [Value::Str(k), Value::Int(o), Value::Int(n)] if *o >= 0 && *n >= 0 => {
                    Some((k.clone(), *o as u64, *n as u64))
                }
                _ => return Err(bad("view metadata is not (key, offset, size)")),
            },
            Some(_) => return Err(bad("view metadata is not a tuple")),
        };
        Ok(StorageRef { dtype, key, location, numel, view })
    }
}

/// LONG1/LONG4 payload: little-endian two's complement.
fn long_le(b: &[u8]) -> Value {
    if b.len() <= 8 {
        let neg = b.last().is_some_and(|&x| x & 0x80 != 0);
        let mut a = if neg { [0xffu8; 8] } else { [0u8; 8] };
        a[..b.len()].copy_from_slice(b);
        Value::Int(i64::from_le_bytes(a))
    } else {
        Value::BigInt(b.to_vec())
    }
}

fn opcode_name(op: u8) -> String {
    let name = match op {
        b'i' => "INST",
        b'o' => "OBJ",
        b'P' => "PERSID",
        0x82..=0x84 => "EXT1/2/4",
        b'I' => "INT",
        b'L' => "LONG",
        b'F' => "FLOAT",
        b'S' => "STRING",
        b'V' => "UNICODE",
        b'p' => "PUT",
        b'g' => "GET",
        b'2' => "DUP",
        b'1' => "POP_MARK",
        0x8e => "BINBYTES8",
        0x8f => "EMPTY_SET",
        0x90 => "ADDITEMS",
        0x91 => "FROZENSET",
        0x92 => "NEWOBJ_EX",
        0x96 => "BYTEARRAY8",
        0x97 => "NEXT_BUFFER",
        0x98 => "READONLY_BUFFER",
        _ => "",
    };
    if name.is_empty() {
        format!("0x{op:02x} (not a pickle opcode, or not one a weights file uses)")
    } else {
        format!("0x{op:02x} {name}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(b: &[u8]) -> Result<Value> {
        unpickle(b, Path::new("t.pkl"), "test").map(|(v, _)| v)
    }

    #[test]
    fn small_values() {
        // (1, -2, 3.5, 'ab', True, None, [2**70])
        let v = run(b"\x80\x02(K\x01J\xfe\xff\xff\xffG@\x0c\x00\x00\x00\x00\x00\x00X\x02\x00\x00\x00ab\x88N]\x8a\x09\x00\x00\x00\x00\x00\x00\x00\x00\x40at.").unwrap();
        let Value::Tuple(t) = v else { panic!() };
        assert_eq!(t[0], Value::Int(1));
        assert_eq!(t[1], Value::Int(-2));
        assert_eq!(t[2], Value::Float(3.5));
        assert_eq!(t[3], Value::Str("ab".into()));
        assert_eq!(t[4], Value::Bool(true));
        assert_eq!(t[5], Value::None);
        assert!(matches!(&t[6], Value::List(l) if matches!(l[0], Value::BigInt(_))));
        assert_eq!(long_le(&[0xff]), Value::Int(-1));
        assert_eq!(long_le(&[]), Value::Int(0));
    }

    #[test]
    fn refuses_globals_and_never_panics_on_prefixes() {
        let e = run(b"\x80\x02cos\nsystem\nX\x01\x00\x00\x00x\x85R.").unwrap_err().to_string();
        assert!(e.contains("os.system") && e.contains("t.pkl"), "{e}");
        let good = b"\x80\x02ccollections\nOrderedDict\nq\x00)Rq\x01(X\x01\x00\x00\x00aK\x01u}b.";
        assert_eq!(run(good).unwrap(), Value::Dict(vec![(Value::Str("a".into()), Value::Int(1))]));
        for n in 0..good.len() {
            assert!(run(&good[..n]).is_err());
        }
    }

    #[test]
    fn caps_depth_and_memo_amplification() {
        let mut deep = b"\x80\x02".to_vec();
        deep.extend(std::iter::repeat_n(b']', 1));
        deep.extend(std::iter::repeat_n(0x85, 200));
        deep.push(b'.');
        let e = run(&deep).unwrap_err().to_string();
        assert!(e.contains("nested deeper"), "{e}");
        // x = [..]; repeat: x = (x, x) via memo → 2^k growth
        let mut bomb = b"\x80\x02X\x00\x01\x00\x00".to_vec();
        bomb.extend(vec![b'a'; 256]);
        for _ in 0..40 {
            bomb.extend(b"q\x00h\x00\x86");
        }
        bomb.push(b'.');
        let e = run(&bomb).unwrap_err().to_string();
        assert!(e.contains("memo copies exceed") || e.contains("nested deeper"), "{e}");
    }
}
