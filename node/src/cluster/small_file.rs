//! The group's small TOML state files in a data dir (terms, copied shards): read whole, and
//! replaced atomically and durably, so a crash leaves the old contents or the new, never a
//! mix, and nothing acts on a change before it is on disk.

use serde::de::DeserializeOwned;
use std::io::Write as _;
use std::path::Path;

/// Reads and parses `path`; the default if it does not exist. An unreadable file is an
/// error naming it, with `remedy` (what the operator can do).
pub fn load<T: DeserializeOwned + Default>(path: &Path, remedy: &str) -> Result<T, String> {
    match std::fs::read_to_string(path) {
        Ok(text) => toml::from_str::<T>(&text)
            .map_err(|e| format!("{}: unreadable: {}; {remedy}", path.display(), e.message())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(T::default()),
        Err(e) => Err(format!("{}: cannot read: {e}", path.display())),
    }
}

/// Replaces `path` with `text`: a temporary file, fsynced, renamed over, the directory
/// fsynced.
pub fn store(path: &Path, text: &str) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(text.as_bytes())?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}
