//! What can go wrong in `backup-data`, each naming the file (and offset) and, where there is
//! one, the fix.

use std::path::PathBuf;

/// A `backup-data` failure.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// An I/O operation failed.
    #[error("{path}: cannot {op}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The data dir cannot be used (locked by a server, unreadable meta file, ...).
    #[error(transparent)]
    DataDir(#[from] terrace_node::data_dir::DataDirError),
    /// Bytes that must be valid are not: a damaged segment or snapshot file.
    #[error("{path} at byte {offset}: {reason}")]
    Damaged {
        /// The file.
        path: PathBuf,
        /// Where in it.
        offset: u64,
        /// What is wrong.
        reason: String,
    },
    /// A file the manifest lists is not there.
    #[error("{path}: missing: the snapshot's manifest lists it; the snapshot is incomplete")]
    Missing {
        /// The file.
        path: PathBuf,
    },
    /// The manifest cannot be read or does not describe a snapshot this tool can use.
    #[error("{path}: {problem}")]
    Manifest {
        /// The manifest file.
        path: PathBuf,
        /// What is wrong.
        problem: String,
    },
    /// The operation was refused to protect data; says why and what to do.
    #[error("{path}: {problem}; {fix}")]
    Refused {
        /// The directory or file concerned.
        path: PathBuf,
        /// Why.
        problem: String,
        /// What to do.
        fix: String,
    },
    /// A running server refused or failed an online backup request.
    #[error("server {server}: {problem}")]
    Server {
        /// The server's address.
        server: String,
        /// What it said or what went wrong.
        problem: String,
    },
}

impl BackupError {
    /// An I/O error on `path`.
    pub fn io(op: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| Self::Io { op, path, source }
    }
}
