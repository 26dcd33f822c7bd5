//! Device memory of the GPU backend: the pool that keeps blocks for reuse, owned buffers
//! ([`GBuf`]) and the views the ops take ([`GView`], [`GViewMut`]).

use super::device::{DevPtr, Device};
use crate::error::Result;
use std::marker::PhantomData;
use std::sync::{Arc, Mutex};

/// Bytes per element of f32 and i32 buffers.
pub(crate) const ELEM: u64 = 4;

/// How the elements of a float buffer are stored on the device. The backend's scalar is f32
/// everywhere; in bf16 storage ([`super::Gpu::new_bf16`]) the activations and their gradients
/// are kept as bf16 (half the bytes; the kernels widen on load and round on store, accumulating
/// in f32), while parameters, their gradients, Adam's moments and every statistic stay f32.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DType {
    /// 4-byte IEEE single precision (and i32 buffers).
    F32,
    /// 2-byte bfloat16 (`u16`, the high half of an f32), rounded to nearest even.
    Bf16,
}

impl DType {
    /// Bytes per element.
    pub fn size(self) -> u64 {
        match self {
            DType::F32 => 4,
            DType::Bf16 => 2,
        }
    }
}

/// Device memory blocks kept for reuse: freeing is slow on CUDA (it waits for the device) and
/// a training step would otherwise allocate and free its batch buffers every step. Blocks are
/// grouped by size class (powers of two from 256 bytes). [`Pool::get`] zeroes a reused block on
/// the stream (fresh blocks come zeroed from the device); [`Pool::get_uninit`] does not, for
/// scratch that a kernel overwrites whole before anything reads it.
///
/// Step graphs (see [`super::graph`]): the blocks a step takes while its graph is captured belong
/// to the graph from then on (its ops address them at every replay), so a buffer's drop does not
/// give them back; an update hands out the same blocks in the same order; dropping the graph
/// returns them. Buffers that outlive a step are made with [`Pool::get_persistent`] (or before
/// the capture).
pub(crate) struct Pool<D: Device> {
    pub(super) dev: Arc<D>,
    pub(super) free: Mutex<std::collections::HashMap<usize, Vec<DevPtr>>>,
    pub(super) graph: Mutex<PoolGraph>,
}

/// A block and its size class.
pub(crate) type Block = (DevPtr, usize);

/// The pool's part in step graphs.
#[derive(Default)]
pub(crate) struct PoolGraph {
    mode: PoolMode,
    /// Blocks owned by live graphs.
    owned: std::collections::HashSet<DevPtr>,
}

#[derive(Default)]
enum PoolMode {
    #[default]
    Normal,
    Capturing(Vec<Block>),
    Updating {
        blocks: Vec<Block>,
        cursor: usize,
        mismatch: bool,
    },
}

impl<D: Device> Pool<D> {
    /// An empty pool on `dev`.
    pub(super) fn new(dev: Arc<D>) -> Self {
        Pool { dev, free: Mutex::default(), graph: Mutex::default() }
    }

    fn class(bytes: usize) -> usize {
        bytes.max(256).next_power_of_two()
    }

    /// A block of at least `bytes` bytes, all zero.
    pub(super) fn get(&self, bytes: usize) -> Result<DevPtr> {
        match self.graph_block(bytes)? {
            Some(ptr) => {
                // SAFETY: a block of the graph's, at least `bytes` bytes; zeroed on the stream
                // (recorded: zeroed again at each replay).
                unsafe { self.dev.memset_zero(ptr, bytes)? };
                Ok(ptr)
            }
            None => match self.reuse(bytes) {
                Some(ptr) => {
                    // SAFETY: `ptr` is a pooled block of `class >= bytes` bytes that nothing uses.
                    unsafe { self.dev.memset_zero(ptr, bytes)? };
                    Ok(ptr)
                }
                None => self.dev.alloc(Self::class(bytes)),
            },
        }
    }

    /// A block of at least `bytes` bytes whose contents are whatever it held before: for scratch
    /// that a kernel overwrites whole before anything reads it.
    pub(super) fn get_uninit(&self, bytes: usize) -> Result<DevPtr> {
        let ptr = match self.graph_block(bytes)? {
            Some(ptr) => ptr,
            None => match self.reuse(bytes) {
                Some(ptr) => ptr,
                None => self.dev.alloc(Self::class(bytes))?,
            },
        };
        // SAFETY: `ptr` is a block of at least `bytes` bytes that nothing else uses.
        unsafe { self.dev.mark_uninit(ptr, bytes)? };
        Ok(ptr)
    }

    /// A fresh zeroed block that no step graph owns, for buffers that outlive a step.
    pub(super) fn get_persistent(&self, bytes: usize) -> Result<DevPtr> {
        self.dev.alloc(Self::class(bytes))
    }

    /// While capturing: a block (reused or new) that the graph will own; while updating: the
    /// graph's next block; otherwise `None` (the caller takes one as usual).
    fn graph_block(&self, bytes: usize) -> Result<Option<DevPtr>> {
        let class = Self::class(bytes);
        let mut g = self.graph.lock().unwrap_or_else(|p| p.into_inner());
        let g = &mut *g;
        match &mut g.mode {
            PoolMode::Normal => Ok(None),
            PoolMode::Capturing(list) => {
                let ptr = match self.reuse(bytes) {
                    Some(p) => p,
                    None => self.dev.alloc(class)?,
                };
                list.push((ptr, class));
                g.owned.insert(ptr);
                Ok(Some(ptr))
            }
            PoolMode::Updating { blocks, cursor, mismatch } => match blocks.get(*cursor) {
                Some(&(ptr, c)) if c == class && !*mismatch => {
                    *cursor += 1;
                    Ok(Some(ptr))
                }
                _ => {
                    *mismatch = true;
                    Ok(None)
                }
            },
        }
    }

    fn reuse(&self, bytes: usize) -> Option<DevPtr> {
        let class = Self::class(bytes);
        self.free.lock().unwrap_or_else(|p| p.into_inner()).get_mut(&class).and_then(Vec::pop)
    }

    fn put(&self, ptr: DevPtr, bytes: usize) {
        if self.graph.lock().unwrap_or_else(|p| p.into_inner()).owned.contains(&ptr) {
            return; // a step graph's block: returned when the graph is dropped
        }
        let class = Self::class(bytes);
        self.free.lock().unwrap_or_else(|p| p.into_inner()).entry(class).or_default().push(ptr);
    }

    /// Starts recording the blocks a captured step takes.
    pub(super) fn begin_capture(&self) {
        self.graph.lock().unwrap_or_else(|p| p.into_inner()).mode = PoolMode::Capturing(Vec::new());
    }

    /// Ends a capture: the blocks now owned by the new graph.
    pub(super) fn end_capture(&self) -> Vec<Block> {
        let mut g = self.graph.lock().unwrap_or_else(|p| p.into_inner());
        match std::mem::take(&mut g.mode) {
            PoolMode::Capturing(list) => list,
            _ => Vec::new(),
        }
    }

    /// Starts an update of the graph owning `blocks`.
    pub(super) fn begin_update(&self, blocks: &[Block]) {
        self.graph.lock().unwrap_or_else(|p| p.into_inner()).mode =
            PoolMode::Updating { blocks: blocks.to_vec(), cursor: 0, mismatch: false };
    }

    /// Ends an update: whether the step took exactly the graph's blocks, in order.
    pub(super) fn end_update(&self) -> bool {
        let mut g = self.graph.lock().unwrap_or_else(|p| p.into_inner());
        match std::mem::take(&mut g.mode) {
            PoolMode::Updating { blocks, cursor, mismatch } => !mismatch && cursor == blocks.len(),
            _ => false,
        }
    }

    /// Gives a dropped graph's blocks back.
    pub(super) fn release(&self, blocks: &[Block]) {
        let mut g = self.graph.lock().unwrap_or_else(|p| p.into_inner());
        let mut free = self.free.lock().unwrap_or_else(|p| p.into_inner());
        for &(ptr, class) in blocks {
            if g.owned.remove(&ptr) {
                free.entry(class).or_default().push(ptr);
            }
        }
    }
}

impl<D: Device> Drop for Pool<D> {
    fn drop(&mut self) {
        let free = std::mem::take(&mut *self.free.lock().unwrap_or_else(|p| p.into_inner()));
        for ptr in free.into_values().flatten() {
            // SAFETY: pooled blocks came from `alloc` on this device and are owned by the pool only.
            unsafe { self.dev.free(ptr) };
        }
    }
}

/// An owned device buffer of `T` (f32 or i32), returned to the pool on drop. A float buffer's
/// elements are stored as `dtype` says; a parameter buffer may carry a bf16 `shadow`, the copy of
/// its values the bf16 products read, which Adam rewrites in the same pass as the f32 values
/// ([`crate::backend::Backend::keep_bf16_copy`]).
pub struct GBuf<D: Device, T> {
    pub(super) pool: Arc<Pool<D>>,
    pub(super) ptr: DevPtr,
    pub(super) len: usize,
    pub(super) dtype: DType,
    pub(super) shadow: Option<Box<GBuf<D, u16>>>,
    pub(super) _t: PhantomData<T>,
}

impl<D: Device, T> GBuf<D, T> {
    /// Device address of element 0.
    pub fn ptr(&self) -> DevPtr {
        self.ptr
    }
    /// Number of elements.
    pub fn len(&self) -> usize {
        self.len
    }
    /// Whether the buffer is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// How the elements are stored.
    pub fn dtype(&self) -> DType {
        self.dtype
    }
    /// Device address of element 0 of the bf16 copy, or 0 when there is none.
    pub fn shadow_ptr(&self) -> DevPtr {
        self.shadow.as_ref().map_or(0, |s| s.ptr)
    }
    /// Bytes of the elements.
    pub(super) fn bytes(&self) -> usize {
        self.len * self.dtype.size() as usize
    }
    /// A view of elements `start .. start + len` (checked by the caller).
    pub(super) fn view_at(&self, start: usize, len: usize) -> GView<'_> {
        let (ptr, shadow) = self.addresses(start);
        GView { ptr, len, dtype: self.dtype, shadow, _l: PhantomData }
    }
    /// A mutable view of elements `start .. start + len` (checked by the caller; it hands out no
    /// overlapping mutable views).
    pub(super) fn view_mut_at(&self, start: usize, len: usize) -> GViewMut<'_> {
        let (ptr, shadow) = self.addresses(start);
        GViewMut { ptr, len, dtype: self.dtype, shadow, _l: PhantomData }
    }
    fn addresses(&self, start: usize) -> (DevPtr, DevPtr) {
        let ptr = self.ptr + start as u64 * self.dtype.size();
        let shadow = self.shadow.as_ref().map_or(0, |s| s.ptr + start as u64 * 2);
        (ptr, shadow)
    }
}

impl<D: Device, T> Drop for GBuf<D, T> {
    fn drop(&mut self) {
        if self.ptr != 0 {
            self.pool.put(self.ptr, self.bytes());
        }
    }
}

/// A shared view of `len` elements at `ptr`, stored as `dtype`.
#[derive(Clone, Copy, Debug)]
pub struct GView<'a> {
    /// Device address of the first element.
    pub ptr: DevPtr,
    /// Number of elements.
    pub len: usize,
    /// How the elements are stored.
    pub dtype: DType,
    /// The same elements in the buffer's bf16 copy (see [`GBuf`]), or 0.
    pub shadow: DevPtr,
    _l: PhantomData<&'a ()>,
}

/// A mutable view of `len` elements at `ptr`, stored as `dtype`.
#[derive(Debug)]
pub struct GViewMut<'a> {
    /// Device address of the first element.
    pub ptr: DevPtr,
    /// Number of elements.
    pub len: usize,
    /// How the elements are stored.
    pub dtype: DType,
    /// The same elements in the buffer's bf16 copy (see [`GBuf`]), or 0.
    pub shadow: DevPtr,
    _l: PhantomData<&'a mut ()>,
}

impl GView<'_> {
    /// A view of `len` f32 elements at `ptr`; the caller keeps it inside a live buffer.
    pub(super) fn new(ptr: DevPtr, len: usize) -> Self {
        GView { ptr, len, dtype: DType::F32, shadow: 0, _l: PhantomData }
    }

    /// Whether the elements are stored as bf16.
    pub fn is_bf16(&self) -> bool {
        self.dtype == DType::Bf16
    }

    /// Bytes of the elements.
    pub fn bytes(&self) -> usize {
        self.len * self.dtype.size() as usize
    }
}

impl<'a> GViewMut<'a> {
    /// A shared view of the same elements.
    pub fn as_view(&self) -> GView<'_> {
        GView { ptr: self.ptr, len: self.len, dtype: self.dtype, shadow: self.shadow, _l: PhantomData }
    }

    /// A shorter-lived mutable view of the same elements.
    pub fn reborrow(&mut self) -> GViewMut<'_> {
        GViewMut { ptr: self.ptr, len: self.len, dtype: self.dtype, shadow: self.shadow, _l: PhantomData }
    }

    /// Whether the elements are stored as bf16.
    pub fn is_bf16(&self) -> bool {
        self.dtype == DType::Bf16
    }

    /// Bytes of the elements.
    pub fn bytes(&self) -> usize {
        self.len * self.dtype.size() as usize
    }
}
