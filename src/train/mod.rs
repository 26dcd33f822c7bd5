//! Training: the optimizer state ([`optim`]), one training step ([`step`]: `Model::train_step`),
//! the loop ([`trainer`]), metrics ([`report`]) and checkpoints to resume from ([`checkpoint`]).

pub mod checkpoint;
pub mod optim;
pub mod report;
pub mod step;
pub mod trainer;
