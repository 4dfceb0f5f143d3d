//! The config file (TOML), command-line overrides, and the settings the server runs with.
//!
//! Every server of a cluster reads the same file and is started with its name (`-n`). Servers
//! form mirror groups (`[[mirror_groups]]`); a file with one server and no group puts it in a
//! group of its own. With no file the server runs on the embedded development default, which
//! is `configs/dev.toml` itself.
//!
//! Errors name the file, the field and the fix ([`ConfigError`]).

use serde::Deserialize;
use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs as _};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::constants::{CONNECTIONS_MAX_DEFAULT, SHARDS_GROUP_DEFAULT, SHARDS_MAX};

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

/// `storage.shards`: how many shards a new data dir gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShardCount {
    /// This many.
    Fixed(u32),
    /// Chosen by the server when it creates the data dir, from its cores and, in
    /// permanent-store, the disk flush it measures there (`preflight::auto_shards`). A data
    /// dir that exists keeps the count it was created with.
    Auto,
}

impl fmt::Display for ShardCount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Fixed(n) => write!(f, "{n}"),
            Self::Auto => f.write_str("auto"),
        }
    }
}

impl<'de> Deserialize<'de> for ShardCount {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Number(i64),
            Text(String),
        }
        match Raw::deserialize(deserializer)? {
            Raw::Number(n) => u32::try_from(n).map(Self::Fixed).map_err(|_| {
                serde::de::Error::custom(format!(
                    "storage.shards: {n} is out of range: use 1 to {SHARDS_MAX}, or \"auto\""
                ))
            }),
            Raw::Text(text) if text == "auto" => Ok(Self::Auto),
            Raw::Text(text) => Err(serde::de::Error::custom(format!(
                "storage.shards: `{text}` is not a shard count: write a number (1 to \
                 {SHARDS_MAX}) or \"auto\""
            ))),
        }
    }
}

/// A duration written with a unit: `"500ms"`, `"5s"`, `"2m"`, `"1h"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Interval(pub Duration);

impl Interval {
    /// Parses `"5s"` and friends.
    pub fn parse(text: &str) -> Option<Self> {
        let text = text.trim();
        let split = text.find(|c: char| !c.is_ascii_digit())?;
        let (digits, unit) = text.split_at(split);
        let n: u64 = digits.parse().ok()?;
        let millis: u64 = match unit.trim() {
            "ms" => 1,
            "s" => 1000,
            "m" | "min" => 60_000,
            "h" => 3_600_000,
            _ => return None,
        };
        n.checked_mul(millis)
            .map(|ms| Self(Duration::from_millis(ms)))
    }
}

impl<'de> Deserialize<'de> for Interval {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Interval::parse(&text).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "`{text}` is not a duration: write a number with a unit (ms, s, m, h), e.g. \"5s\""
            ))
        })
    }
}

/// How a mirror group's active acknowledges writes (Tomcat's `channelSendOptions`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Replication {
    /// After the local fsync and the acknowledgment of every PASSIVE-STANDBY.
    Sync,
    /// After the local fsync only.
    Async,
}

impl Replication {
    /// The name used in configs and `stats`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Sync => "sync",
            Self::Async => "async",
        }
    }
}

/// `[cluster]`: what every server of the cluster shares.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ClusterSection {
    /// `temporary-swap-only` (default) or `permanent-store`.
    persistence: Option<Persistence>,
    /// With no active in a group, servers elect one within this (Terracotta's
    /// `<election-time>`).
    election_time: Option<Interval>,
    /// How long clients are held for a new active after a failover (Terracotta's
    /// `<client-reconnect-window>`).
    client_reconnect_window: Option<Interval>,
    /// `sync` (default) or `async`.
    replication: Option<Replication>,
    /// Dirty-db copies kept per server; 0 keeps every copy (Terracotta's
    /// `l2.nha.dirtydb.rolling`).
    dirtydb_rolling: Option<u32>,
    /// Heartbeat period between the servers of a group.
    health_check_interval: Option<Interval>,
    /// Heartbeats missed in a row before a peer is declared gone.
    health_check_missed: Option<u32>,
}

/// `[[mirror_groups]]`: one active and its passives.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MirrorGroupSection {
    name: String,
    servers: Vec<String>,
}

/// `[storage]`: how each server keeps its data.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct StorageSection {
    /// Shards per server; fixed when a data dir is created.
    shards: Option<ShardCount>,
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
    #[serde(default)]
    mirror_groups: Vec<MirrorGroupSection>,
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
    /// Shards of a new data dir (an existing one keeps its count).
    pub shards: ShardCount,
    /// Segment file size.
    pub segment_size_bytes: usize,
    /// Disk budget of the whole server.
    pub capacity_bytes: u64,
    /// Largest value.
    pub item_size_max_bytes: usize,
    /// Client connections at once.
    pub max_connections: usize,
    /// The cluster: this server's mirror group and what its servers must agree on.
    pub cluster: ClusterSettings,
}

/// A server of this server's mirror group, as the config file describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// Its name.
    pub name: String,
    /// Its host.
    pub host: String,
    /// Its client port.
    pub client_port: u16,
    /// Its group port (required when the group has several servers).
    pub group_port: Option<u16>,
}

/// The cluster part of the settings.
#[derive(Debug, Clone)]
pub struct ClusterSettings {
    /// This server's mirror group.
    pub group: String,
    /// The group's servers in config order, this one included.
    pub members: Vec<Member>,
    /// See the config field of the same name.
    pub election_time: Duration,
    /// See the config field of the same name.
    pub client_reconnect_window: Duration,
    /// See the config field of the same name.
    pub replication: Replication,
    /// See the config field of the same name.
    pub dirtydb_rolling: u32,
    /// See the config field of the same name.
    pub health_check_interval: Duration,
    /// See the config field of the same name.
    pub health_check_missed: u32,
    /// What servers of a cluster must agree on, field by field (`field`, value), in a fixed
    /// order: compared at every handshake, so that a difference is refused naming its field.
    pub canonical: Vec<(String, String)>,
    /// CRC-32 of `canonical`.
    pub fingerprint: u32,
}

impl ClusterSettings {
    /// The other servers of the group.
    pub fn peers<'a>(&'a self, me: &'a str) -> impl Iterator<Item = &'a Member> + 'a {
        self.members.iter().filter(move |m| m.name != me)
    }

    /// The first field where `theirs` differs from ours: (field, our value, their value).
    pub fn first_difference(
        &self,
        theirs: &[(String, String)],
    ) -> Option<(String, String, String)> {
        let absent = "(absent)".to_string();
        let fields = self.canonical.len().max(theirs.len());
        (0..fields).find_map(|i| {
            let ours = self.canonical.get(i);
            let other = theirs.get(i);
            if ours == other {
                return None;
            }
            // Name the field by whichever side has one at this place (ours first).
            let field = ours.or(other).map(|(f, _)| f.clone()).unwrap_or_default();
            let value = |side: Option<&(String, String)>| {
                side.filter(|(f, _)| *f == field)
                    .map_or_else(|| absent.clone(), |(_, v)| v.clone())
            };
            Some((field.clone(), value(ours), value(other)))
        })
    }
}

/// The cluster defaults (Terracotta's, where it has one).
const ELECTION_TIME_DEFAULT: Duration = Duration::from_secs(5);
const CLIENT_RECONNECT_WINDOW_DEFAULT: Duration = Duration::from_secs(120);
const HEALTH_CHECK_INTERVAL_DEFAULT: Duration = Duration::from_secs(1);
const HEALTH_CHECK_MISSED_DEFAULT: u32 = 3;
/// Longest server or group name.
const NAME_LEN_MAX: usize = 64;

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
        let (file, groups) = parse_cluster(text, &error)?;
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
        // Servers of a mirror group must agree on the count, so a group of several servers
        // cannot let each choose its own.
        let mirrored = groups.iter().any(|(_, members)| members.len() > 1);
        let shards = match (storage.shards, mirrored) {
            (None, false) => ShardCount::Auto,
            (None, true) => ShardCount::Fixed(SHARDS_GROUP_DEFAULT),
            (Some(ShardCount::Auto), true) => {
                return Err(error(
                    "storage.shards",
                    "\"auto\" lets each server choose its own count, and the servers of a \
                     mirror group must have the same one"
                        .into(),
                    &format!(
                        "set a number (leaving it out gives {SHARDS_GROUP_DEFAULT} for a config \
                         with mirror groups)"
                    ),
                ));
            }
            (Some(count), _) => count,
        };
        if let ShardCount::Fixed(n) = shards
            && (n == 0 || n > SHARDS_MAX)
        {
            return Err(error(
                "storage.shards",
                format!("{n} is out of range"),
                &format!("use 1 to {SHARDS_MAX}, or \"auto\" (the default for one server)"),
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
        // A mirror group replicates a record, and a compaction's tombstone with the item
        // after it, in one frame.
        let replicated = terrace_wal::format::record::put_record_len_max(
            terrace_wal::constants::KEY_LEN_MAX_BYTES,
            item_size_max_bytes,
        ) + terrace_wal::format::record::small_record_len_max(
            terrace_wal::constants::KEY_LEN_MAX_BYTES,
        );
        if mirrored && replicated > crate::cluster::replication::frame::FRAME_PAYLOAD_MAX_BYTES {
            return Err(error(
                "storage.item_size_max",
                format!("{item_size_max_bytes} bytes"),
                &format!(
                    "a mirror group sends the largest item and a tombstone in one replication \
                     frame of at most {} MiB: use 63MiB or less",
                    crate::cluster::replication::frame::FRAME_PAYLOAD_MAX_BYTES >> 20
                ),
            ));
        }
        // Each shard needs room for its tail, a spare, and one segment for compaction.
        // "auto" chooses within the capacity (at least one shard).
        let capacity_min = match shards {
            ShardCount::Fixed(n) => u64::from(n),
            ShardCount::Auto => 1,
        } * 4
            * segment_size;
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
        let cluster = cluster_settings(
            &file,
            &groups,
            index,
            persistence,
            (
                shards,
                segment_size_bytes,
                capacity_bytes,
                item_size_max_bytes,
            ),
            &error,
        )?;
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
            cluster,
        })
    }
}

/// Every mirror group of a cluster config, with its servers: what tools that look at the
/// whole cluster (`terrace-ctl`) need. The file is checked as a server checks it.
pub fn load_groups(path: &Path) -> Result<Vec<(String, Vec<Member>)>, ConfigError> {
    let source_name = path.display().to_string();
    let error = |field: &str, problem: String, fix: &str| ConfigError {
        source_name: source_name.clone(),
        field: field.to_string(),
        problem,
        fix: fix.to_string(),
    };
    let text = std::fs::read_to_string(path).map_err(|e| {
        error(
            "(file)",
            format!("cannot read it: {e}"),
            "give the path of the cluster's config file with -f",
        )
    })?;
    let (file, groups) = parse_cluster(&text, &error)?;
    Ok(groups
        .into_iter()
        .map(|(name, members)| {
            let members = members
                .into_iter()
                .map(|i| member(&file.servers[i]))
                .collect();
            (name, members)
        })
        .collect())
}

fn member(server: &ServerSection) -> Member {
    Member {
        name: server.name.clone(),
        host: server.host.clone(),
        client_port: server.client_port,
        group_port: server.group_port,
    }
}

/// Parses a config's text and checks what holds for the whole cluster: servers there, named
/// once and plainly, ports and data dirs distinct per host, every server in one group.
/// Returns the file and its groups (names and server indexes).
fn parse_cluster(text: &str, error: &ErrorFn<'_>) -> Result<(ConfigFile, Groups), ConfigError> {
    let file: ConfigFile = toml::from_str(text).map_err(|e| {
        let line = e
            .span()
            .map(|span| text[..span.start.min(text.len())].lines().count().max(1));
        error(
            &line.map_or("(file)".to_string(), |l| format!("line {l}")),
            e.message().to_string(),
            "see configs/dev.toml and configs/ha-pair.toml for every field, with comments",
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
    check_names(&file, error)?;
    check_addresses(&file, error)?;
    let groups = resolve_groups(&file, error)?;
    Ok((file, groups))
}

type ErrorFn<'a> = dyn Fn(&str, String, &str) -> ConfigError + 'a;

/// Mirror groups as (name, indexes of their servers in the file).
type Groups = Vec<(String, Vec<usize>)>;

/// Server and group names: unique, and made of characters that are safe in logs, file names
/// and the group protocol.
fn check_names(file: &ConfigFile, error: &ErrorFn<'_>) -> Result<(), ConfigError> {
    let valid = |name: &str| {
        !name.is_empty()
            && name.len() <= NAME_LEN_MAX
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    };
    let fix = "use 1 to 64 letters, digits, '-', '_' or '.'";
    for (i, server) in file.servers.iter().enumerate() {
        if !valid(&server.name) {
            return Err(error(
                &format!("servers[{i}].name"),
                format!("`{}` is not a valid name", server.name),
                fix,
            ));
        }
    }
    for (i, group) in file.mirror_groups.iter().enumerate() {
        if !valid(&group.name) {
            return Err(error(
                &format!("mirror_groups[{i}].name"),
                format!("`{}` is not a valid name", group.name),
                fix,
            ));
        }
        if file.mirror_groups[..i].iter().any(|g| g.name == group.name) {
            return Err(error(
                &format!("mirror_groups[{i}].name"),
                format!("`{}` is used twice", group.name),
                "give every mirror group its own name",
            ));
        }
    }
    Ok(())
}

/// On each host, every port (client or group) belongs to one server, and so does every data
/// dir.
fn check_addresses(file: &ConfigFile, error: &ErrorFn<'_>) -> Result<(), ConfigError> {
    let mut ports: Vec<(&str, u16, String)> = Vec::new();
    let mut dirs: Vec<(&str, &Path, String)> = Vec::new();
    for (i, server) in file.servers.iter().enumerate() {
        let mut mine = vec![(server.client_port, format!("servers[{i}].client_port"))];
        if let Some(group_port) = server.group_port {
            mine.push((group_port, format!("servers[{i}].group_port")));
        }
        for (port, field) in mine {
            if let Some((_, _, other)) = ports
                .iter()
                .find(|(host, p, _)| *host == server.host && *p == port)
            {
                return Err(error(
                    &field,
                    format!("port {port} on {} is also {other}", server.host),
                    "give every server on a host its own client and group ports",
                ));
            }
            ports.push((&server.host, port, field));
        }
        let field = format!("servers[{i}].data");
        if let Some((_, _, other)) = dirs
            .iter()
            .find(|(host, dir, _)| *host == server.host && *dir == server.data.as_path())
        {
            return Err(error(
                &field,
                format!(
                    "{} on {} is also {other}",
                    server.data.display(),
                    server.host
                ),
                "give every server on a host its own data dir",
            ));
        }
        dirs.push((&server.host, &server.data, field));
    }
    Ok(())
}

/// The mirror groups as (name, server indexes). Every server is in exactly one; a file with
/// one server and no group gets a group of its own named `default`.
fn resolve_groups(file: &ConfigFile, error: &ErrorFn<'_>) -> Result<Groups, ConfigError> {
    if file.mirror_groups.is_empty() {
        if file.servers.len() == 1 {
            return Ok(vec![("default".to_string(), vec![0])]);
        }
        return Err(error(
            "mirror_groups",
            format!(
                "{} servers and no [[mirror_groups]] saying which serve the same data",
                file.servers.len()
            ),
            "add [[mirror_groups]] name = \"g1\", servers = [\"s1\", \"s2\"] (every server \
             in exactly one group)",
        ));
    }
    let mut groups = Vec::new();
    let mut group_of: Vec<Option<usize>> = vec![None; file.servers.len()];
    for (g, group) in file.mirror_groups.iter().enumerate() {
        if group.servers.is_empty() {
            return Err(error(
                &format!("mirror_groups[{g}].servers"),
                "empty".into(),
                "list the names of the group's servers",
            ));
        }
        let mut members = Vec::new();
        for name in &group.servers {
            let Some(index) = file.servers.iter().position(|s| &s.name == name) else {
                return Err(error(
                    &format!("mirror_groups[{g}].servers"),
                    format!("no server named `{name}`"),
                    "list names from [[servers]]",
                ));
            };
            if let Some(other) = group_of[index] {
                return Err(error(
                    &format!("mirror_groups[{g}].servers"),
                    format!(
                        "`{name}` is already in mirror group `{}`",
                        file.mirror_groups[other].name
                    ),
                    "put every server in exactly one group",
                ));
            }
            group_of[index] = Some(g);
            members.push(index);
        }
        if members.len() > 1
            && let Some(&index) = members
                .iter()
                .find(|&&i| file.servers[i].group_port.is_none())
        {
            return Err(error(
                &format!("servers[{index}].group_port"),
                format!(
                    "missing: `{}` is in mirror group `{}` with other servers",
                    file.servers[index].name, group.name
                ),
                "give it a group_port: the servers of a group talk over it",
            ));
        }
        groups.push((group.name.clone(), members));
    }
    if let Some(index) = group_of.iter().position(Option::is_none) {
        return Err(error(
            &format!("servers[{index}]"),
            format!("`{}` is in no mirror group", file.servers[index].name),
            "add it to the servers of one [[mirror_groups]]",
        ));
    }
    Ok(groups)
}

fn check_interval(
    value: Option<Interval>,
    default: Duration,
    range: std::ops::RangeInclusive<Duration>,
    field: &str,
    error: &ErrorFn<'_>,
) -> Result<Duration, ConfigError> {
    let value = value.map_or(default, |i| i.0);
    if !range.contains(&value) {
        return Err(error(
            field,
            format!("{value:?} is out of range"),
            &format!("use {:?} to {:?}", range.start(), range.end()),
        ));
    }
    Ok(value)
}

/// The cluster settings of server `index`: its group, the cluster fields, and the canonical
/// description every server of the cluster must share.
fn cluster_settings(
    file: &ConfigFile,
    groups: &Groups,
    index: usize,
    persistence: Persistence,
    (shards, segment_size, capacity, item_size_max): (ShardCount, usize, u64, usize),
    error: &ErrorFn<'_>,
) -> Result<ClusterSettings, ConfigError> {
    let c = &file.cluster;
    let ms = Duration::from_millis;
    let election_time = check_interval(
        c.election_time,
        ELECTION_TIME_DEFAULT,
        ms(100)..=Duration::from_secs(600),
        "cluster.election_time",
        error,
    )?;
    let client_reconnect_window = check_interval(
        c.client_reconnect_window,
        CLIENT_RECONNECT_WINDOW_DEFAULT,
        ms(0)..=Duration::from_secs(3600),
        "cluster.client_reconnect_window",
        error,
    )?;
    let health_check_interval = check_interval(
        c.health_check_interval,
        HEALTH_CHECK_INTERVAL_DEFAULT,
        ms(10)..=Duration::from_secs(60),
        "cluster.health_check_interval",
        error,
    )?;
    let health_check_missed = c.health_check_missed.unwrap_or(HEALTH_CHECK_MISSED_DEFAULT);
    if !(1..=100).contains(&health_check_missed) {
        return Err(error(
            "cluster.health_check_missed",
            format!("{health_check_missed} is out of range"),
            "use 1 to 100",
        ));
    }
    let replication = c.replication.unwrap_or(Replication::Sync);
    // A standby whose streams are down steps down after half the silence limit plus at most
    // two coordinator ticks (a quarter of an interval each, at most); the active drops it from
    // the sync set no sooner than a whole silence limit. With fewer than 3 missed intervals
    // that margin is gone: the active could acknowledge writes without a server that still
    // calls itself a standby.
    if replication == Replication::Sync && health_check_missed < 3 {
        return Err(error(
            "cluster.health_check_missed",
            format!("{health_check_missed} is too few with replication = \"sync\""),
            "use 3 or more (shorten health_check_interval to detect failures sooner)",
        ));
    }
    let dirtydb_rolling = c.dirtydb_rolling.unwrap_or(0);

    let mut canonical: Vec<(String, String)> = vec![
        ("cluster.persistence".into(), persistence.name().into()),
        (
            "cluster.election_time".into(),
            format!("{}ms", election_time.as_millis()),
        ),
        (
            "cluster.client_reconnect_window".into(),
            format!("{}ms", client_reconnect_window.as_millis()),
        ),
        ("cluster.replication".into(), replication.name().into()),
        (
            "cluster.dirtydb_rolling".into(),
            dirtydb_rolling.to_string(),
        ),
        (
            "cluster.health_check_interval".into(),
            format!("{}ms", health_check_interval.as_millis()),
        ),
        (
            "cluster.health_check_missed".into(),
            health_check_missed.to_string(),
        ),
        ("storage.shards".into(), shards.to_string()),
        ("storage.segment_size".into(), segment_size.to_string()),
        ("storage.capacity".into(), capacity.to_string()),
        ("storage.item_size_max".into(), item_size_max.to_string()),
    ];
    for server in &file.servers {
        let field = |f: &str| format!("servers[{}].{f}", server.name);
        canonical.push((field("host"), server.host.clone()));
        canonical.push((field("client_port"), server.client_port.to_string()));
        canonical.push((
            field("group_port"),
            server.group_port.map_or("(none)".into(), |p| p.to_string()),
        ));
        canonical.push((field("data"), server.data.display().to_string()));
    }
    for (name, members) in groups {
        let names: Vec<&str> = members
            .iter()
            .map(|&i| file.servers[i].name.as_str())
            .collect();
        canonical.push((format!("mirror_groups[{name}].servers"), names.join(",")));
    }
    let mut hasher = crc32fast::Hasher::new();
    for (field, value) in &canonical {
        hasher.update(field.as_bytes());
        hasher.update(b"=");
        hasher.update(value.as_bytes());
        hasher.update(b"\n");
    }
    let (group, members) = groups
        .iter()
        .find(|(_, members)| members.contains(&index))
        .map(|(name, members)| {
            let members = members.iter().map(|&i| member(&file.servers[i])).collect();
            (name.clone(), members)
        })
        .unwrap_or_default();
    Ok(ClusterSettings {
        group,
        members,
        election_time,
        client_reconnect_window,
        replication,
        dirtydb_rolling,
        health_check_interval,
        health_check_missed,
        canonical,
        fingerprint: hasher.finalize(),
    })
}

#[cfg(test)]
pub(crate) mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]
    use super::*;

    /// A pair of servers, s1 and s2, in mirror group g1 (permanent-store, 4 shards).
    pub(crate) const TWO: &str = r#"
        [cluster]
        persistence = "permanent-store"
        [storage]
        shards = 4
        segment_size = "4MiB"
        [[servers]]
        name = "s1"
        host = "127.0.0.1"
        client_port = 11300
        group_port = 9300
        data = "/tmp/s1"
        [[servers]]
        name = "s2"
        host = "127.0.0.1"
        client_port = 11301
        group_port = 9301
        data = "/tmp/s2"
        [[mirror_groups]]
        name = "g1"
        servers = ["s1", "s2"]
    "#;

    fn load(text: &str, name: Option<&str>) -> Result<Settings, ConfigError> {
        Settings::from_toml("test.toml", text, name, &Overrides::default())
    }

    /// The largest item a mirror group takes fits a replication frame with a tombstone
    /// before it; one server alone may take larger ones. (Found by a review: a group took
    /// 512 MiB items that could never be replicated.)
    #[test]
    fn a_mirror_groups_largest_item_fits_a_replication_frame() {
        let large = |item: &str| {
            format!("segment_size = \"1GiB\"\nitem_size_max = \"{item}\"\ncapacity = \"16GiB\"")
        };
        let group = TWO.replace("segment_size = \"4MiB\"", &large("512MiB"));
        let refused = load(&group, Some("s1")).expect_err("too large for a frame");
        assert!(
            refused.to_string().contains("storage.item_size_max"),
            "{refused}"
        );
        let group = TWO.replace("segment_size = \"4MiB\"", &large("63MiB"));
        let settings = load(&group, Some("s1")).expect("fits a frame");
        let pair =
            terrace_wal::format::record::put_record_len_max(250, settings.item_size_max_bytes)
                + terrace_wal::format::record::small_record_len_max(250);
        assert!(pair <= crate::cluster::replication::frame::FRAME_PAYLOAD_MAX_BYTES);
        let alone = format!(
            "[storage]\n{}\n[[servers]]\nname = \"s1\"\nhost = \"127.0.0.1\"\n\
             client_port = 11300\ndata = \"/tmp/s1\"\n",
            large("512MiB")
        );
        load(&alone, None).expect("one server alone may take it");
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
        for (file, names) in [
            ("dev.toml", &[None][..]),
            ("reliable.toml", &[None]),
            ("ha-pair.toml", &[Some("s1"), Some("s2")]),
            ("ha-three.toml", &[Some("s1"), Some("s2"), Some("s3")]),
        ] {
            let path = Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../configs")
                .join(file);
            for name in names {
                let s = Settings::load(Some(&path), *name, &Overrides::default())
                    .unwrap_or_else(|e| panic!("{file}: {e}"));
                assert!(s.cluster.members.iter().any(|m| m.name == s.name));
            }
        }
    }

    #[test]
    fn mirror_groups_and_what_servers_must_agree_on() {
        let s1 = load(TWO, Some("s1")).unwrap();
        let s2 = load(TWO, Some("s2")).unwrap();
        assert_eq!(s1.cluster.group, "g1");
        assert_eq!(
            s1.cluster
                .peers("s1")
                .map(|m| m.name.as_str())
                .collect::<Vec<_>>(),
            ["s2"]
        );
        assert_eq!(s1.cluster.election_time, Duration::from_secs(5));
        assert_eq!(s1.cluster.replication, Replication::Sync);
        // The same file: the same fingerprint, whichever server reads it.
        assert_eq!(s1.cluster.fingerprint, s2.cluster.fingerprint);
        assert_eq!(s1.cluster.first_difference(&s2.cluster.canonical), None);
        // Comments and layout do not matter; a value does, and is named.
        let relaid = load(
            &TWO.replace("[cluster]", "# a comment\n[cluster]\n"),
            Some("s2"),
        );
        assert_eq!(relaid.unwrap().cluster.fingerprint, s1.cluster.fingerprint);
        let other = load(
            &TWO.replace("[cluster]", "[cluster]\nelection_time = \"3s\""),
            Some("s2"),
        )
        .unwrap();
        assert_ne!(other.cluster.fingerprint, s1.cluster.fingerprint);
        assert_eq!(
            s1.cluster.first_difference(&other.cluster.canonical),
            Some((
                "cluster.election_time".to_string(),
                "5000ms".to_string(),
                "3000ms".to_string()
            ))
        );
        // A --persistence override on one server is a difference too.
        let overrides = Overrides {
            persistence: Some(Persistence::TemporarySwapOnly),
            ..Overrides::default()
        };
        let temp = Settings::from_toml("t", TWO, Some("s2"), &overrides).unwrap();
        assert_eq!(
            s1.cluster
                .first_difference(&temp.cluster.canonical)
                .map(|d| d.0),
            Some("cluster.persistence".to_string())
        );
        assert_eq!(
            Interval::parse("500ms"),
            Some(Interval(Duration::from_millis(500)))
        );
        assert_eq!(
            Interval::parse("2m"),
            Some(Interval(Duration::from_secs(120)))
        );
        assert_eq!(Interval::parse("5"), None);
        assert_eq!(Interval::parse("5 fortnights"), None);
    }

    #[test]
    fn shards_auto_for_one_server_and_agreed_in_a_group() {
        let one = |storage: &str| {
            load(
                &format!(
                    "[storage]\n{storage}\n[[servers]]\nname = \"a\"\nhost = \"127.0.0.1\"\n\
                     client_port = 11211\ndata = \"/tmp/a\"\n"
                ),
                None,
            )
        };
        assert_eq!(one("").unwrap().shards, ShardCount::Auto);
        assert_eq!(one("shards = \"auto\"").unwrap().shards, ShardCount::Auto);
        assert_eq!(one("shards = 3").unwrap().shards, ShardCount::Fixed(3));
        for (bad, says) in [
            ("shards = \"many\"", "not a shard count"),
            ("shards = -1", "out of range"),
            ("shards = 5000", "out of range"),
        ] {
            let error = one(bad).unwrap_err().to_string();
            assert!(error.contains(says), "{bad}: {error}");
        }
        // Auto checks the capacity against one shard; the count chosen fits what is left.
        assert!(
            one("segment_size = \"1MiB\"\ncapacity = \"4MiB\"\nitem_size_max = \"1KiB\"").is_ok()
        );
        let error = one("segment_size = \"1MiB\"\ncapacity = \"3MiB\"\nitem_size_max = \"1KiB\"")
            .unwrap_err()
            .to_string();
        assert!(error.contains("storage.capacity"), "{error}");

        // The servers of a mirror group must agree: left out is 8, "auto" is refused.
        let group = TWO.replace("shards = 4\n", "");
        assert_eq!(
            load(&group, Some("s1")).unwrap().shards,
            ShardCount::Fixed(8)
        );
        let error = load(&TWO.replace("shards = 4", "shards = \"auto\""), Some("s1"))
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("storage.shards") && error.contains("same one"),
            "{error}"
        );
    }

    #[test]
    fn name_picks_the_server_and_flags_override() {
        let s = load(TWO, Some("s2")).unwrap();
        assert_eq!((s.name.as_str(), s.listen.port()), ("s2", 11301));
        assert_eq!(s.persistence, Persistence::PermanentStore);
        assert_eq!(
            (s.shards, s.segment_size_bytes),
            (ShardCount::Fixed(4), 4 << 20)
        );
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
            (
                &TWO.replace("client_port = 11301", "client_port = 11300"),
                Some("s1"),
                "servers[1].client_port: port 11300 on 127.0.0.1 is also servers[0].client_port",
            ),
            (
                &TWO.replace("group_port = 9301", "group_port = 11300"),
                Some("s1"),
                "servers[1].group_port",
            ),
            (
                &TWO.replace("\"/tmp/s2\"", "\"/tmp/s1\""),
                Some("s1"),
                "servers[1].data",
            ),
            (
                &TWO.replace("servers = [\"s1\", \"s2\"]", "servers = [\"s1\"]"),
                Some("s1"),
                "`s2` is in no mirror group",
            ),
            (
                &TWO.replace("servers = [\"s1\", \"s2\"]", "servers = [\"s1\", \"s3\"]"),
                Some("s1"),
                "mirror_groups[0].servers: no server named `s3`",
            ),
            (
                &format!("{TWO}\n[[mirror_groups]]\nname = \"g2\"\nservers = [\"s2\"]\n"),
                Some("s1"),
                "already in mirror group `g1`",
            ),
            (
                &TWO.replace("group_port = 9301\n", ""),
                Some("s1"),
                "servers[1].group_port: missing",
            ),
            (
                &TWO.replace("name = \"g1\"\n", ""),
                Some("s1"),
                "missing field `name`",
            ),
            (
                &TWO.replace("name = \"s2\"", "name = \"s 2\""),
                Some("s1"),
                "servers[1].name",
            ),
            (
                &TWO.replace("[cluster]", "[cluster]\nelection_time = \"5\""),
                Some("s1"),
                "not a duration",
            ),
            (
                &TWO.replace("[cluster]", "[cluster]\nhealth_check_interval = \"1ms\""),
                Some("s1"),
                "cluster.health_check_interval",
            ),
            (
                &TWO.replace("[cluster]", "[cluster]\nhealth_check_missed = 2"),
                Some("s1"),
                "cluster.health_check_missed: 2 is too few with replication = \"sync\"",
            ),
            (
                &TWO.replace("[cluster]", "[cluster]\nreplication = \"eventually\""),
                Some("s1"),
                "line",
            ),
            (
                &TWO.replace("[[mirror_groups]]\n        name = \"g1\"\n        servers = [\"s1\", \"s2\"]\n", ""),
                Some("s1"),
                "no [[mirror_groups]]",
            ),
        ];
        for (text, name, needle) in cases {
            let error = load(text, *name).unwrap_err().to_string();
            assert!(error.contains(needle), "`{needle}` not in: {error}");
            assert!(error.starts_with("test.toml: "), "{error}");
        }
    }

    #[test]
    fn async_replication_may_declare_a_peer_gone_after_one_missed_heartbeat() {
        let text = TWO.replace(
            "[cluster]",
            "[cluster]\nreplication = \"async\"\nhealth_check_missed = 1",
        );
        let settings = load(&text, Some("s1")).unwrap();
        assert_eq!(settings.cluster.health_check_missed, 1);
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
