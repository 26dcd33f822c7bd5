//! The scalar types the CPU backend is generic over: `f64` (the reference) and `f32` (the trainer).

use std::fmt::{Debug, Display};
use std::iter::Sum;
use std::ops::{AddAssign, DivAssign, MulAssign, SubAssign};

/// A floating-point scalar usable by the CPU backend and the checkpoint code.
pub trait Float:
    num_traits::Float
    + num_traits::FromPrimitive
    + Copy
    + Send
    + Sync
    + Default
    + Debug
    + Display
    + bytemuck::Pod
    + Sum
    + AddAssign
    + SubAssign
    + MulAssign
    + DivAssign
    + 'static
{
    /// `"f32"` or `"f64"`.
    const NAME: &'static str;
    /// safetensors dtype name of this type.
    const ST_DTYPE: safetensors::Dtype;
    /// Conversion from f64 (rounding to nearest for f32).
    fn from_f64(x: f64) -> Self;
    /// Exact widening to f64.
    fn to_f64(self) -> f64;
}

impl Float for f32 {
    const NAME: &'static str = "f32";
    const ST_DTYPE: safetensors::Dtype = safetensors::Dtype::F32;
    #[inline(always)]
    fn from_f64(x: f64) -> Self {
        x as f32
    }
    #[inline(always)]
    fn to_f64(self) -> f64 {
        self as f64
    }
}

impl Float for f64 {
    const NAME: &'static str = "f64";
    const ST_DTYPE: safetensors::Dtype = safetensors::Dtype::F64;
    #[inline(always)]
    fn from_f64(x: f64) -> Self {
        x
    }
    #[inline(always)]
    fn to_f64(self) -> f64 {
        self
    }
}
