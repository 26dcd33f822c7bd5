//! Training: the optimizer state ([`optim`]), the loop ([`trainer`]) and metrics ([`report`]).

pub mod optim;
pub mod report;
pub mod trainer;
