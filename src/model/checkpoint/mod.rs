//! Reading and writing weights: d2l's `torch.save` files through a restricted unpickler
//! ([`pickle`], [`torch`]), safetensors ([`safetensors`]), and the one name-mapping table
//! ([`names`]).

pub mod names;
pub mod pickle;
pub mod safetensors;
pub mod torch;
