//! Training: the optimizer state ([`optim`]), one training step ([`step`]: `Model::train_step`),
//! the loop ([`trainer`]), metrics ([`report`]), checkpoints to resume from ([`checkpoint`]) and
//! data-parallel steps over several ranks ([`parallel`]; over processes and machines: [`dist`]).

pub mod checkpoint;
pub mod dist;
pub mod optim;
pub mod parallel;
pub mod report;
pub mod step;
pub mod trainer;
