//! The BERT classifier: configuration, parameters, forward/backward, and models on disk: the
//! checkpoint readers (`checkpoint`: d2l's `torch.save` files, safetensors, the name table),
//! Hugging Face directories (`hf`) and the saved-model reader/writer (`store`).

pub mod bert;
pub mod checkpoint;
pub mod config;
pub mod hf;
pub mod params;
pub mod store;
