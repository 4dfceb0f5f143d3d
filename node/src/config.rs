//! The config file (TOML), command-line overrides, and the settings the server runs with.
//!
//! Every server of a cluster reads the same file and is started with its name (`-n`). Until
//! mirror groups exist a config holds one server. With no file the server runs on the
//! embedded development default, which is `configs/dev.toml` itself.
//!
//! Errors name the file, the field and the fix ([`ConfigError`]).

use serde::Deserialize;
use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs as _};
use std::path::{Path, PathBuf};

use crate::constants::{CONNECTIONS_MAX_DEFAULT, SHARDS_DEFAULT, SHARDS_MAX};

/// The embedded development default (`configs/dev.toml`).
pub const DEV_CONFIG: &str = include_str!("../../configs/dev.toml");

/// Terracotta's persistence modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Persistence {
    /// No fsync; the data dir is emptied at start. The default.
    TemporarySwapOnly,
    /// A write is acknowledged after the group-committed fdatasync that covers it; data is
    /// recovered at start.
    PermanentStore,
}

impl Persistence {
    /// The name used in configs, flags and `stats`.
    pub fn name(self) -> &'static str {
        match self {
            Self::TemporarySwapOnly => "temporary-swap-only",
            Self::PermanentStore => "permanent-store",
        }
    }

    /// Parses a config/flag value.
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "temporary-swap-only" => Some(Self::TemporarySwapOnly),
            "permanent-store" => Some(Self::PermanentStore),
            _ => None,
        }
    }
}

impl fmt::Display for Persistence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A byte size: an integer, or a string with a unit (`"64MiB"`, `"1 GiB"`, `"512KiB"`, `"100B"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Size(pub u64);

impl Size {
    /// Parses `"64MiB"` and friends.
    pub fn parse(text: &str) -> Option<Self> {
        let text = text.trim();
        let split = text
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len());
        let (digits, unit) = text.split_at(split);
        let n: u64 = digits.parse().ok()?;
        let scale: u64 = match unit.trim() {
            "" | "B" => 1,
            "KiB" | "K" => 1 << 10,
            "MiB" | "M" => 1 << 20,
            "GiB" | "G" => 1 << 30,
            "TiB" | "T" => 1 << 40,
            _ => return None,
        };
        n.checked_mul(scale).map(Size)
    }
}

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Number(u64),
            Text(String),
        }
        match Raw::deserialize(deserializer)? {
            Raw::Number(n) => Ok(Size(n)),
            Raw::Text(text) => Size::parse(&text).ok_or_else(|| {
                serde::de::Error::custom(format!(
                    "`{text}` is not a size: write a number of bytes or a number with a unit \
                     (B, KiB, MiB, GiB, TiB), e.g. \"64MiB\""
                ))
            }),
        }
    }
}

/// `[cluster]`: what every server of the cluster shares.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ClusterSection {
    /// `temporary-swap-only` (default) or `permanent-store`.
    persistence: Option<Persistence>,
}

/// `[storage]`: how each server keeps its data.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct StorageSection {
    /// Shards per server; fixed when a data dir is created.
    shards: Option<u32>,
    /// Size of each segment file.
    segment_size: Option<Size>,
    /// Disk budget of the whole server (all shards).
    capacity: Option<Size>,
    /// Largest value accepted.
    item_size_max: Option<Size>,
}

/// `[[servers]]`: one server.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ServerSection {
    name: String,
    host: String,
    client_port: u16,
    /// Server-to-server port (mirror groups; not used by a single server yet).
    group_port: Option<u16>,
    data: PathBuf,
    /// Executors (cores) to run; 0 or absent: every core the process may run on.
    cores: Option<usize>,
    /// Client connections accepted at once (the whole server).
    max_connections: Option<usize>,
}

/// The whole file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    #[serde(default)]
    cluster: ClusterSection,
    #[serde(default)]
    storage: StorageSection,
    #[serde(default)]
    servers: Vec<ServerSection>,
}

/// Command-line values that override the file.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// `--cores`.
    pub cores: Option<usize>,
    /// `--listen host:port`.
    pub listen: Option<String>,
    /// `--data`.
    pub data: Option<PathBuf>,
    /// `--persistence`.
    pub persistence: Option<Persistence>,
}

/// What the server runs with, checked.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Where the settings came from (a path, or "the embedded default").
    pub source: String,
    /// This server's name.
    pub name: String,
    /// Client address.
    pub listen: SocketAddr,
    /// Data directory.
    pub data_dir: PathBuf,
    /// Persistence mode.
    pub persistence: Persistence,
    /// Executors to run (0: every allowed core; resolved at start).
    pub cores: usize,
    /// Shards of a new data dir.
    pub shards: u32,
    /// Segment file size.
    pub segment_size_bytes: usize,
    /// Disk budget of the whole server.
    pub capacity_bytes: u64,
    /// Largest value.
    pub item_size_max_bytes: usize,
    /// Client connections at once.
    pub max_connections: usize,
}

/// A config that cannot be used: which file, which field, what is wrong, how to fix it.
#[derive(Debug, thiserror::Error)]
#[error("{source_name}: {field}: {problem}; {fix}")]
pub struct ConfigError {
    /// The file (or "the embedded default", "the command line").
    pub source_name: String,
    /// The field, e.g. `servers[0].client_port` or `--cores`.
    pub field: String,
    /// What is wrong.
    pub problem: String,
    /// What to do.
    pub fix: String,
}

impl Settings {
    /// Reads `path` (or the embedded default), picks the server `name`, applies `overrides`
    /// and checks the result.
    pub fn load(
        path: Option<&Path>,
        name: Option<&str>,
        overrides: &Overrides,
    ) -> Result<Self, ConfigError> {
        let (source_name, text) = match path {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
                    source_name: path.display().to_string(),
                    field: "(file)".into(),
                    problem: format!("cannot read it: {e}"),
                    fix: "give the path of a readable TOML file with -f".into(),
                })?;
                (path.display().to_string(), text)
            }
            None => (
                "the embedded default (configs/dev.toml)".to_string(),
                DEV_CONFIG.to_string(),
            ),
        };
        Self::from_toml(&source_name, &text, name, overrides)
    }

    /// Like [`Settings::load`], from the text of a config.
    pub fn from_toml(
        source_name: &str,
        text: &str,
        name: Option<&str>,
        overrides: &Overrides,
    ) -> Result<Self, ConfigError> {
        let error = |field: &str, problem: String, fix: &str| ConfigError {
            source_name: source_name.to_string(),
            field: field.to_string(),
            problem,
            fix: fix.to_string(),
        };
        let file: ConfigFile = toml::from_str(text).map_err(|e| {
            let line = e
                .span()
                .map(|span| text[..span.start.min(text.len())].lines().count().max(1));
            error(
                &line.map_or("(file)".to_string(), |l| format!("line {l}")),
                e.message().to_string(),
                "see configs/dev.toml for every field, with comments",
            )
        })?;

        if file.servers.is_empty() {
            return Err(error(
                "servers",
                "no [[servers]] entry".into(),
                "add one: [[servers]] name, host, client_port, data",
            ));
        }
        for (i, a) in file.servers.iter().enumerate() {
            if file.servers[..i].iter().any(|b| b.name == a.name) {
                return Err(error(
                    &format!("servers[{i}].name"),
                    format!("`{}` is used twice", a.name),
                    "give every server its own name",
                ));
            }
        }
        let index = match name {
            Some(name) => file
                .servers
                .iter()
                .position(|s| s.name == name)
                .ok_or_else(|| {
                    let names: Vec<&str> = file.servers.iter().map(|s| s.name.as_str()).collect();
                    error(
                        "-n",
                        format!("no server named `{name}`"),
                        &format!("pick one of: {}", names.join(", ")),
                    )
                })?,
            None if file.servers.len() == 1 => 0,
            None => {
                return Err(error(
                    "-n",
                    "the config has several servers and no -n says which one this is".into(),
                    "start with -n <name>",
                ));
            }
        };
        let server = &file.servers[index];
        let field = |name: &str| format!("servers[{index}].{name}");

        let listen_text = match &overrides.listen {
            Some(listen) => listen.clone(),
            None => format!("{}:{}", server.host, server.client_port),
        };
        let listen_field = if overrides.listen.is_some() {
            "--listen".to_string()
        } else {
            field("host")
        };
        let listen = listen_text
            .to_socket_addrs()
            .ok()
            .and_then(|mut addrs| addrs.next())
            .ok_or_else(|| {
                error(
                    &listen_field,
                    format!("`{listen_text}` is not an address this machine can listen on"),
                    "use host:port, e.g. 127.0.0.1:11211 or 0.0.0.0:11211",
                )
            })?;
        if server.group_port == Some(server.client_port) && overrides.listen.is_none() {
            return Err(error(
                &field("group_port"),
                "same as client_port".into(),
                "give the group port its own number",
            ));
        }

        let data_dir = overrides
            .data
            .clone()
            .unwrap_or_else(|| server.data.clone());
        if data_dir.as_os_str().is_empty() {
            return Err(error(
                &field("data"),
                "empty path".into(),
                "name a directory",
            ));
        }
        let persistence = overrides
            .persistence
            .or(file.cluster.persistence)
            .unwrap_or(Persistence::TemporarySwapOnly);
        let cores = overrides.cores.or(server.cores).unwrap_or(0);
        let max_connections = server.max_connections.unwrap_or(CONNECTIONS_MAX_DEFAULT);
        if max_connections == 0 {
            return Err(error(
                &field("max_connections"),
                "0 would refuse every client".into(),
                "set at least 1, or leave it out",
            ));
        }

        let storage = &file.storage;
        let shards = storage.shards.unwrap_or(SHARDS_DEFAULT);
        if shards == 0 || shards > SHARDS_MAX {
            return Err(error(
                "storage.shards",
                format!("{shards} is out of range"),
                &format!("use 1 to {SHARDS_MAX} (default {SHARDS_DEFAULT})"),
            ));
        }
        let segment_size = storage
            .segment_size
            .unwrap_or(Size(
                terrace_wal::constants::SEGMENT_SIZE_DEFAULT_BYTES as u64,
            ))
            .0;
        let segment_size_bytes = usize::try_from(segment_size)
            .ok()
            .filter(|&s| {
                s % terrace_wal::constants::PAGE_SIZE_BYTES == 0 && (1 << 20..=1 << 30).contains(&s)
            })
            .ok_or_else(|| {
                error(
                    "storage.segment_size",
                    format!("{segment_size} bytes"),
                    "use a multiple of 4 KiB from 1 MiB to 1 GiB, e.g. \"64MiB\"",
                )
            })?;
        let item_size_max_bytes = storage.item_size_max.map_or(
            terrace_wal::store::ITEM_SIZE_MAX_DEFAULT_BYTES as u64,
            |s| s.0,
        );
        let item_size_max_bytes = usize::try_from(item_size_max_bytes)
            .ok()
            .filter(|&s| s >= 1024 && s <= segment_size_bytes / 2)
            .ok_or_else(|| {
                error(
                    "storage.item_size_max",
                    format!("{item_size_max_bytes} bytes"),
                    "use at least 1 KiB and at most half of storage.segment_size",
                )
            })?;
        // Each shard needs room for its tail, a spare, and one segment for compaction.
        let capacity_min = u64::from(shards) * 4 * segment_size;
        let capacity_bytes = storage.capacity.map_or(u64::MAX, |s| s.0);
        if capacity_bytes < capacity_min {
            return Err(error(
                "storage.capacity",
                format!(
                    "{capacity_bytes} bytes is less than 4 segments per shard ({capacity_min})"
                ),
                "raise it, or lower storage.shards or storage.segment_size",
            ));
        }
        Ok(Self {
            source: source_name.to_string(),
            name: server.name.clone(),
            listen,
            data_dir,
            persistence,
            cores,
            shards,
            segment_size_bytes,
            capacity_bytes,
            item_size_max_bytes,
            max_connections,
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]
    use super::*;

    const TWO: &str = r#"
        [cluster]
        persistence = "permanent-store"
        [storage]
        shards = 4
        segment_size = "4MiB"
        [[servers]]
        name = "s1"
        host = "127.0.0.1"
        client_port = 11300
        data = "/tmp/s1"
        [[servers]]
        name = "s2"
        host = "127.0.0.1"
        client_port = 11301
        data = "/tmp/s2"
    "#;

    fn load(text: &str, name: Option<&str>) -> Result<Settings, ConfigError> {
        Settings::from_toml("test.toml", text, name, &Overrides::default())
    }

    #[test]
    fn the_embedded_default_is_a_temporary_swap_only_server_on_11211() {
        let s = Settings::load(None, None, &Overrides::default()).unwrap();
        assert_eq!(s.persistence, Persistence::TemporarySwapOnly);
        assert_eq!(s.listen.to_string(), "127.0.0.1:11211");
        assert_eq!(s.data_dir, PathBuf::from("./terrace-data"));
    }

    #[test]
    fn shipped_configs_load() {
        for file in ["dev.toml", "reliable.toml"] {
            let path = Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../configs")
                .join(file);
            Settings::load(Some(&path), None, &Overrides::default())
                .unwrap_or_else(|e| panic!("{file}: {e}"));
        }
    }

    #[test]
    fn name_picks_the_server_and_flags_override() {
        let s = load(TWO, Some("s2")).unwrap();
        assert_eq!((s.name.as_str(), s.listen.port()), ("s2", 11301));
        assert_eq!(s.persistence, Persistence::PermanentStore);
        assert_eq!((s.shards, s.segment_size_bytes), (4, 4 << 20));
        let overrides = Overrides {
            cores: Some(1),
            listen: Some("127.0.0.1:5000".into()),
            data: Some("/tmp/x".into()),
            persistence: Some(Persistence::TemporarySwapOnly),
        };
        let s = Settings::from_toml("t", TWO, Some("s1"), &overrides).unwrap();
        assert_eq!(s.listen.port(), 5000);
        assert_eq!(s.cores, 1);
        assert_eq!(s.data_dir, PathBuf::from("/tmp/x"));
        assert_eq!(s.persistence, Persistence::TemporarySwapOnly);
    }

    #[test]
    fn errors_name_the_field_and_the_fix() {
        let cases: &[(&str, Option<&str>, &str)] = &[
            (TWO, None, "-n"),
            (TWO, Some("s9"), "pick one of: s1, s2"),
            (
                &TWO.replace("shards = 4", "shards = 0"),
                Some("s1"),
                "storage.shards",
            ),
            (
                &TWO.replace("\"4MiB\"", "\"3 parsecs\""),
                Some("s1"),
                "not a size",
            ),
            (
                &TWO.replace("\"4MiB\"", "\"1000\""),
                Some("s1"),
                "storage.segment_size",
            ),
            (
                &TWO.replace(
                    "persistence = \"permanent-store\"",
                    "persistence = \"forever\"",
                ),
                Some("s1"),
                "line 3",
            ),
            (
                &TWO.replace("[storage]", "[storage]\nshard = 3"),
                Some("s1"),
                "unknown field `shard`",
            ),
            (
                &TWO.replace("name = \"s2\"", "name = \"s1\""),
                Some("s1"),
                "servers[1].name",
            ),
            ("", None, "servers"),
        ];
        for (text, name, needle) in cases {
            let error = load(text, *name).unwrap_err().to_string();
            assert!(error.contains(needle), "`{needle}` not in: {error}");
            assert!(error.starts_with("test.toml: "), "{error}");
        }
    }

    #[test]
    fn sizes() {
        assert_eq!(Size::parse("64MiB"), Some(Size(64 << 20)));
        assert_eq!(Size::parse("1 GiB"), Some(Size(1 << 30)));
        assert_eq!(Size::parse("100"), Some(Size(100)));
        assert_eq!(Size::parse("MiB"), None);
        assert_eq!(Size::parse("5 furlongs"), None);
    }
}
