//! The BERT classifier: configuration, parameters, forward/backward, and models on disk: the
//! checkpoint readers (`checkpoint`: d2l's `torch.save` files, safetensors, the name table),
//! Hugging Face directories (`hf`), the saved-model reader/writer (`store`) and the export to
//! Hugging Face's layout (`export`).

pub mod bert;
pub mod checkpoint;
pub mod config;
pub mod export;
pub mod hf;
pub mod params;
pub mod store;
