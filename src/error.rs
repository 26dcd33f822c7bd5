//! One error type for the whole crate. Every variant says *what* went wrong, *where* (file, line,
//! tensor name, shapes) and, where it helps, *what to do*.

use std::path::{Path, PathBuf};

/// The crate's error type.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An I/O failure on a named file or directory.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A malformed input file: `path:line: message`.
    #[error("{path}:{line}: {msg}")]
    Parse { path: PathBuf, line: usize, msg: String },
    /// A checkpoint that cannot be read or does not fit the model.
    #[error("checkpoint {path}: {msg}")]
    Checkpoint { path: PathBuf, msg: String },
    /// A download or cache failure.
    #[error("download {what}: {msg}")]
    Download { what: String, msg: String },
    /// Bad command-line usage or an inconsistent configuration (exit code 2).
    #[error("{0}")]
    Usage(String),
    /// Anything else, with its context already in the message.
    #[error("{0}")]
    Msg(String),
    /// Stopped by the user (Ctrl-C) after saving what could be saved (exit code 130).
    #[error("{0}")]
    Interrupted(String),
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// An I/O error on `path`.
    pub fn io(path: impl AsRef<Path>, source: std::io::Error) -> Self {
        Error::Io { path: path.as_ref().to_path_buf(), source }
    }
    /// A parse error at `path:line`.
    pub fn parse(path: impl AsRef<Path>, line: usize, msg: impl Into<String>) -> Self {
        Error::Parse { path: path.as_ref().to_path_buf(), line, msg: msg.into() }
    }
    /// A checkpoint error on `path`.
    pub fn checkpoint(path: impl AsRef<Path>, msg: impl Into<String>) -> Self {
        Error::Checkpoint { path: path.as_ref().to_path_buf(), msg: msg.into() }
    }
    /// A usage / configuration error.
    pub fn usage(msg: impl Into<String>) -> Self {
        Error::Usage(msg.into())
    }
    /// A generic error with its context in the message.
    pub fn msg(msg: impl Into<String>) -> Self {
        Error::Msg(msg.into())
    }
    /// The process exit code for this error: 2 for usage errors, 130 after Ctrl-C, 1 otherwise.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Usage(_) => 2,
            Error::Interrupted(_) => 130,
            _ => 1,
        }
    }
}
