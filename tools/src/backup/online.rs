//! Online snapshots: a running server pins a consistent cut and this tool copies it.

use super::create::{CreateOptions, CreateReport};
use super::error::BackupError;
use std::path::Path;

/// `create --server`.
pub fn create_online(
    server: &str,
    _out: &Path,
    _options: CreateOptions,
) -> Result<CreateReport, BackupError> {
    Err(BackupError::Server {
        server: server.to_string(),
        problem: "online snapshots are not built yet".into(),
    })
}
