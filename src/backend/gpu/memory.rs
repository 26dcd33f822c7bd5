//! Device memory of the GPU backend: the pool that keeps blocks for reuse, owned buffers
//! ([`GBuf`]) and the views the ops take ([`GView`], [`GViewMut`]).

use super::device::{DevPtr, Device};
use crate::error::Result;
use std::marker::PhantomData;
use std::sync::{Arc, Mutex};

/// Bytes per element of every buffer (f32 and i32).
pub(crate) const ELEM: u64 = 4;

/// Device memory blocks kept for reuse: freeing is slow on CUDA (it waits for the device) and
/// a training step would otherwise allocate and free its batch buffers every step. Blocks are
/// grouped by size class (powers of two from 256 bytes). [`Pool::get`] zeroes a reused block on
/// the stream (fresh blocks come zeroed from the device); [`Pool::get_uninit`] does not, for
/// scratch that a kernel overwrites whole before anything reads it.
pub(crate) struct Pool<D: Device> {
    pub(super) dev: Arc<D>,
    pub(super) free: Mutex<std::collections::HashMap<usize, Vec<DevPtr>>>,
}

impl<D: Device> Pool<D> {
    fn class(bytes: usize) -> usize {
        bytes.max(256).next_power_of_two()
    }

    /// A block of at least `bytes` bytes, all zero.
    pub(super) fn get(&self, bytes: usize) -> Result<DevPtr> {
        match self.reuse(bytes) {
            Some(ptr) => {
                // SAFETY: `ptr` is a pooled block of `class >= bytes` bytes that nothing uses.
                unsafe { self.dev.memset_zero(ptr, bytes)? };
                Ok(ptr)
            }
            None => self.dev.alloc(Self::class(bytes)),
        }
    }

    /// A block of at least `bytes` bytes whose contents are whatever it held before: for scratch
    /// that a kernel overwrites whole before anything reads it.
    pub(super) fn get_uninit(&self, bytes: usize) -> Result<DevPtr> {
        let ptr = match self.reuse(bytes) {
            Some(ptr) => ptr,
            None => self.dev.alloc(Self::class(bytes))?,
        };
        // SAFETY: `ptr` is a block of at least `bytes` bytes that nothing else uses.
        unsafe { self.dev.mark_uninit(ptr, bytes)? };
        Ok(ptr)
    }

    fn reuse(&self, bytes: usize) -> Option<DevPtr> {
        let class = Self::class(bytes);
        self.free.lock().unwrap_or_else(|p| p.into_inner()).get_mut(&class).and_then(Vec::pop)
    }

    fn put(&self, ptr: DevPtr, bytes: usize) {
        let class = Self::class(bytes);
        self.free.lock().unwrap_or_else(|p| p.into_inner()).entry(class).or_default().push(ptr);
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

/// An owned device buffer of `T` (f32 or i32), returned to the pool on drop.
pub struct GBuf<D: Device, T> {
    pub(super) pool: Arc<Pool<D>>,
    pub(super) ptr: DevPtr,
    pub(super) len: usize,
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
}

impl<D: Device, T> Drop for GBuf<D, T> {
    fn drop(&mut self) {
        if self.ptr != 0 {
            self.pool.put(self.ptr, self.len * ELEM as usize);
        }
    }
}

#[derive(Clone, Copy, Debug)]
pub struct GView<'a> {
    /// Device address of the first element.
    pub ptr: DevPtr,
    /// Number of elements.
    pub len: usize,
    _l: PhantomData<&'a ()>,
}

/// A mutable view of `len` f32 elements at `ptr`.
#[derive(Debug)]
pub struct GViewMut<'a> {
    /// Device address of the first element.
    pub ptr: DevPtr,
    /// Number of elements.
    pub len: usize,
    _l: PhantomData<&'a mut ()>,
}

impl GView<'_> {
    /// A view of `len` elements at `ptr`; the caller keeps it inside a live buffer.
    pub(super) fn new(ptr: DevPtr, len: usize) -> Self {
        GView { ptr, len, _l: PhantomData }
    }
}

impl<'a> GViewMut<'a> {
    /// A mutable view of `len` elements at `ptr`; the caller keeps it inside a live buffer and
    /// hands out no overlapping mutable views.
    pub(super) fn new(ptr: DevPtr, len: usize) -> Self {
        GViewMut { ptr, len, _l: PhantomData }
    }

    /// A shared view of the same elements.
    pub fn as_view(&self) -> GView<'_> {
        GView::new(self.ptr, self.len)
    }
}
