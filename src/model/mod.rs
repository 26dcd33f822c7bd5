//! The BERT classifier: configuration, parameters, forward/backward, checkpoints.

pub mod bert;
pub mod checkpoint;
pub mod config;
pub mod hf;
pub mod params;
