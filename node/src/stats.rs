//! Counters, kept per executor without atomics (each executor counts its own work), summed
//! over executors when a client asks for `stats`.

use std::cell::Cell;

macro_rules! counters {
    ($($name:ident),* $(,)?) => {
        /// One counter of memcached's general stats block.
        #[allow(non_camel_case_types, reason = "the names are memcached's stat names")]
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum Stat { $($name),* }

        impl Stat {
            /// Every counter, in the order `stats` prints them.
            pub const ALL: &[Stat] = &[$(Stat::$name),*];

            /// memcached's name for it.
            pub fn name(self) -> &'static str {
                match self { $(Stat::$name => stringify!($name)),* }
            }
        }
    };
}

counters! {
    cmd_get, cmd_set, cmd_flush, cmd_touch,
    get_hits, get_misses, get_expired, get_flushed,
    delete_misses, delete_hits,
    incr_misses, incr_hits, decr_misses, decr_hits,
    cas_misses, cas_hits, cas_badval,
    touch_hits, touch_misses,
    bytes_read, bytes_written,
    total_connections, rejected_connections,
    // Terrace's own, printed with its other lines: requests a passive forwarded to its
    // active and had answered, and how many of them went ahead of their turn.
    terrace_forwarded, terrace_forwarded_ahead,
}

/// One executor's counters.
#[derive(Debug)]
pub struct Counters {
    values: Vec<Cell<u64>>,
    /// Open client connections (not reset by `stats reset`).
    pub curr_connections: Cell<u64>,
}

impl Default for Counters {
    fn default() -> Self {
        Self {
            values: Stat::ALL.iter().map(|_| Cell::new(0)).collect(),
            curr_connections: Cell::new(0),
        }
    }
}

impl Counters {
    /// Adds `n` to `stat`.
    pub fn add(&self, stat: Stat, n: u64) {
        let cell = &self.values[stat as usize];
        cell.set(cell.get().wrapping_add(n));
    }

    /// Adds one to `stat`.
    pub fn bump(&self, stat: Stat) {
        self.add(stat, 1);
    }

    /// `stats reset`.
    pub fn reset(&self) {
        for cell in &self.values {
            cell.set(0);
        }
    }

    /// The values, to send to another executor.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            counters: self.values.iter().map(Cell::get).collect(),
            curr_connections: self.curr_connections.get(),
            ..Snapshot::default()
        }
    }
}

/// One executor's numbers (counters and its shards' state); `Send`, summed by `add`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// By `Stat` index.
    pub counters: Vec<u64>,
    /// Open connections.
    pub curr_connections: u64,
    /// Live items (index entries) in its shards.
    pub curr_items: u64,
    /// Bytes of segment files its shards use.
    pub bytes: u64,
    /// Bytes of its shards' records that are still needed (see `Segment::live_bytes`).
    pub live_bytes: u64,
    /// Items evicted (temporary-swap-only when full).
    pub evictions: u64,
    /// Items written since start.
    pub total_items: u64,
    /// fdatasync calls.
    pub syncs: u64,
    /// Group-commit rounds that took 100 ms or longer.
    pub slow_sync_rounds: u64,
    /// Records appended.
    pub records_appended: u64,
    /// Shards that refuse writes after a disk error.
    pub failed_shards: u64,
    /// Segments in its shards' logs, the tail included.
    pub segments: u64,
    /// Segments compacted (rewritten and retired) since start.
    pub segments_compacted: u64,
    /// Segments a passive removed since start because nothing in them was needed any more.
    pub segments_reclaimed: u64,
    /// Bytes of records compaction rewrote since start.
    pub compaction_bytes_rewritten: u64,
    /// Expired or flushed items compaction dropped since start.
    pub items_reclaimed: u64,
    /// Tombstones compaction dropped since start (no older record of their key was left),
    /// or a passive with a segment it reclaimed.
    pub tombstones_dropped: u64,
    /// Tombstones whose reach a passive keeps in memory now (0 on the active).
    pub tombstone_covers: u64,
}

impl Snapshot {
    /// Adds `other` into `self`.
    pub fn add(&mut self, other: &Snapshot) {
        if self.counters.len() < other.counters.len() {
            self.counters.resize(other.counters.len(), 0);
        }
        for (a, b) in self.counters.iter_mut().zip(&other.counters) {
            *a = a.wrapping_add(*b);
        }
        self.curr_connections += other.curr_connections;
        self.curr_items += other.curr_items;
        self.bytes += other.bytes;
        self.live_bytes += other.live_bytes;
        self.evictions += other.evictions;
        self.total_items += other.total_items;
        self.syncs += other.syncs;
        self.slow_sync_rounds += other.slow_sync_rounds;
        self.records_appended += other.records_appended;
        self.failed_shards += other.failed_shards;
        self.segments += other.segments;
        self.segments_compacted += other.segments_compacted;
        self.segments_reclaimed += other.segments_reclaimed;
        self.compaction_bytes_rewritten += other.compaction_bytes_rewritten;
        self.items_reclaimed += other.items_reclaimed;
        self.tombstones_dropped += other.tombstones_dropped;
        self.tombstone_covers += other.tombstone_covers;
    }

    /// A counter's value.
    pub fn get(&self, stat: Stat) -> u64 {
        self.counters.get(stat as usize).copied().unwrap_or(0)
    }
}

/// memcached's general `stats` block, with Terrace's own numbers after it.
pub fn general(out: &mut Vec<u8>, shared: &crate::net::Shared, total: &Snapshot) {
    use crate::protocol::reply::stat;
    let now = std::time::SystemTime::now();
    let unix = |t: std::time::SystemTime| {
        t.duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    };
    let usage = ProcessUsage::read();
    let settings = &shared.settings;
    stat(out, "pid", std::process::id());
    stat(
        out,
        "uptime",
        now.duration_since(shared.started)
            .map_or(0, |d| d.as_secs()),
    );
    stat(
        out,
        "time",
        i64::try_from(unix(now)).unwrap_or(0) + shared.clock.shift_secs(),
    );
    stat(out, "version", env!("CARGO_PKG_VERSION"));
    stat(out, "pointer_size", usize::BITS);
    stat(out, "rusage_user", usage.user_secs());
    stat(out, "rusage_system", usage.system_secs());
    stat(out, "max_connections", settings.max_connections);
    stat(out, "curr_connections", total.curr_connections);
    for &counter in
        &Stat::ALL[Stat::total_connections as usize..=Stat::rejected_connections as usize]
    {
        stat(out, counter.name(), total.get(counter));
    }
    stat(out, "connection_structures", total.curr_connections);
    for &counter in &Stat::ALL[..Stat::bytes_read as usize] {
        stat(out, counter.name(), total.get(counter));
    }
    stat(out, "auth_cmds", 0);
    stat(out, "auth_errors", 0);
    stat(out, "bytes_read", total.get(Stat::bytes_read));
    stat(out, "bytes_written", total.get(Stat::bytes_written));
    stat(out, "limit_maxbytes", settings.capacity_bytes);
    stat(out, "accepting_conns", 1);
    stat(out, "threads", shared.executors);
    stat(out, "conn_yields", 0);
    stat(out, "curr_items", total.curr_items);
    stat(out, "total_items", total.total_items);
    stat(out, "evictions", total.evictions);
    stat(out, "bytes", total.bytes);
    stat(out, "terrace_live_bytes", total.live_bytes);
    stat(out, "terrace_persistence", settings.persistence);
    stat(out, "terrace_shards", shared.shards);
    stat(out, "terrace_syncs", total.syncs);
    stat(out, "terrace_slow_sync_rounds", total.slow_sync_rounds);
    stat(out, "terrace_records_appended", total.records_appended);
    stat(out, "terrace_failed_shards", total.failed_shards);
    stat(out, "terrace_segments", total.segments);
    stat(out, "terrace_segments_compacted", total.segments_compacted);
    stat(out, "terrace_segments_reclaimed", total.segments_reclaimed);
    stat(
        out,
        "terrace_compaction_bytes_rewritten",
        total.compaction_bytes_rewritten,
    );
    stat(out, "terrace_items_reclaimed", total.items_reclaimed);
    stat(out, "terrace_tombstones_dropped", total.tombstones_dropped);
    stat(out, "terrace_tombstone_covers", total.tombstone_covers);
    for counter in [Stat::terrace_forwarded, Stat::terrace_forwarded_ahead] {
        stat(out, counter.name(), total.get(counter));
    }
    stat(out, "terrace_major_faults", usage.major_faults);
    out.extend_from_slice(crate::protocol::reply::END);
}

/// `stats cluster` (like Flare's `stats nodes`): this server's mirror group and, per server,
/// its state as this server knows it.
pub fn cluster(out: &mut Vec<u8>, shared: &crate::net::Shared) {
    use crate::protocol::reply::stat;
    let s = &shared.settings;
    let group = &shared.group;
    let c = group.cluster();
    let me = group.status();
    stat(out, "cluster:group", &c.group);
    stat(out, "cluster:fingerprint", format!("{:08x}", c.fingerprint));
    stat(out, "cluster:replication", c.replication.name());
    stat(out, "cluster:term", me.term);
    stat(out, "cluster:active", me.active.as_deref().unwrap_or("-"));
    if me.state == crate::cluster::State::ActiveCoordinator {
        let standbys = group.standbys();
        stat(
            out,
            "cluster:standbys",
            if standbys.is_empty() {
                "-".to_string()
            } else {
                standbys.join(",")
            },
        );
    }
    let peers = group
        .membership()
        .map(crate::cluster::Membership::peers)
        .unwrap_or_default();
    for member in &c.members {
        let name = &member.name;
        stat(
            out,
            &format!("{name}:client"),
            format!("{}:{}", member.host, member.client_port),
        );
        if member.name == s.name {
            stat(out, &format!("{name}:health"), "self");
            stat(out, &format!("{name}:state"), me.state.name());
            stat(out, &format!("{name}:term"), me.term);
            stat(out, &format!("{name}:lsn"), me.lsn);
            let shard_lsns: Vec<String> = group.shard_lsns().iter().map(u64::to_string).collect();
            stat(out, &format!("{name}:shard_lsns"), shard_lsns.join(","));
            if matches!(
                me.state,
                crate::cluster::State::Initializing
                    | crate::cluster::State::PassiveUninitialized
                    | crate::cluster::State::PassiveStandby
            ) {
                let progress = group.sync_progress();
                stat(out, &format!("{name}:sync_bytes"), progress.done);
                stat(out, &format!("{name}:sync_total_bytes"), progress.total);
                stat(
                    out,
                    &format!("{name}:sync_percent"),
                    (progress.done * 100)
                        .checked_div(progress.total)
                        .unwrap_or(100)
                        .min(100),
                );
                stat(
                    out,
                    &format!("{name}:shards_in_sync"),
                    format!("{}/{}", progress.shards_in_sync, s.shards),
                );
            }
            continue;
        }
        match peers.iter().find(|(peer, _)| peer == name) {
            Some((_, status)) => {
                stat(out, &format!("{name}:health"), status.health.name());
                stat(
                    out,
                    &format!("{name}:health_since_ms"),
                    status.since.elapsed().as_millis(),
                );
                if let Some(last) = &status.last {
                    stat(out, &format!("{name}:state"), last.state.name());
                    stat(out, &format!("{name}:term"), last.term);
                    stat(out, &format!("{name}:lsn"), last.lsn);
                    if me.state == crate::cluster::State::ActiveCoordinator {
                        // How many records it is behind this active, over all shards.
                        stat(out, &format!("{name}:lag"), me.lsn.saturating_sub(last.lsn));
                    }
                }
            }
            None => stat(out, &format!("{name}:health"), "unknown"),
        }
    }
    out.extend_from_slice(crate::protocol::reply::END);
}

/// `stats settings`.
pub fn settings(out: &mut Vec<u8>, shared: &crate::net::Shared) {
    use crate::protocol::reply::stat;
    let s = &shared.settings;
    stat(out, "maxbytes", s.capacity_bytes);
    stat(out, "maxconns", s.max_connections);
    stat(out, "tcpport", s.listen.port());
    stat(out, "interface", s.listen.ip());
    stat(out, "num_threads", shared.executors);
    stat(out, "item_size_max", s.item_size_max_bytes);
    stat(out, "cas_enabled", "yes");
    stat(
        out,
        "evictions",
        if s.persistence == crate::config::Persistence::TemporarySwapOnly {
            "on"
        } else {
            "off"
        },
    );
    stat(out, "terrace_name", &s.name);
    stat(out, "terrace_state", shared.group.state().name());
    stat(out, "terrace_persistence", s.persistence);
    stat(
        out,
        "terrace_data",
        one_token(&s.data_dir.display().to_string()),
    );
    stat(out, "terrace_shards", shared.shards);
    stat(out, "terrace_segment_size", s.segment_size_bytes);
    stat(
        out,
        "terrace_debugtime",
        if shared.debugtime_enabled {
            "on"
        } else {
            "off"
        },
    );
    out.extend_from_slice(crate::protocol::reply::END);
}

/// `value` as one token of a `STAT <name> <value>` line: spaces and control characters (and
/// `%`, the escape) become `%XX` for each of their bytes. A data dir's path may hold them, and
/// clients split stats lines on spaces (the Prometheus exporter's client, by its code, fails
/// its whole scrape on a settings line of more than four fields) and end them at `\n` (a
/// newline would have made a line of its own).
fn one_token(value: &str) -> String {
    let mut token = String::with_capacity(value.len());
    for c in value.chars() {
        if c.is_whitespace() || c.is_control() || c == '%' {
            let mut utf8 = [0u8; 4];
            for byte in c.encode_utf8(&mut utf8).bytes() {
                token.push_str(&format!("%{byte:02X}"));
            }
        } else {
            token.push(c);
        }
    }
    token
}

// `stats slabs`, `stats items` and `stats sizes` describe memcached's slab allocator, which
// Terrace does not have (items live in log segments, see `terrace_segments`). They answer
// what memcached answers when it has no slab class in use, instead of `ERROR`: monitoring
// clients send them on the connection they send `stats` on and read each reply to its `END`
// (the Prometheus memcached exporter's client sends `stats`, `stats slabs` and `stats
// items` in a row; `memcached-tool display` sends the last two), so an `ERROR` line left them
// waiting for an `END`: the tool hung, and the exporter's code would time out and count the
// server as down.

/// `stats slabs`: no slab classes, and no memory in slab pages (what an empty memcached
/// says; what the logs take is `bytes` in `stats`, and what of it is needed
/// `terrace_live_bytes`).
pub fn slabs(out: &mut Vec<u8>) {
    crate::protocol::reply::stat(out, "active_slabs", 0);
    crate::protocol::reply::stat(out, "total_malloced", 0);
    out.extend_from_slice(crate::protocol::reply::END);
}

/// `stats items`: no per-slab-class item counts (the item count is `curr_items` in `stats`).
pub fn items(out: &mut Vec<u8>) {
    out.extend_from_slice(crate::protocol::reply::END);
}

/// `stats sizes`: the item size histogram is not kept, as memcached says when it is off.
pub fn sizes(out: &mut Vec<u8>) {
    crate::protocol::reply::stat(out, "sizes_status", "disabled");
    out.extend_from_slice(crate::protocol::reply::END);
}

/// CPU time and major page faults of this process, from `/proc/self/stat`.
#[derive(Debug, Default, Clone, Copy)]
struct ProcessUsage {
    user_ticks: u64,
    system_ticks: u64,
    major_faults: u64,
}

impl ProcessUsage {
    /// Linux reports CPU time in clock ticks of USER_HZ, which is 100 on every architecture
    /// Linux supports in practice.
    const TICKS_PER_SEC: u64 = 100;

    fn read() -> Self {
        let Ok(text) = std::fs::read_to_string("/proc/self/stat") else {
            return Self::default();
        };
        // The command name (field 2) is in parentheses and may hold spaces: count fields
        // after its closing parenthesis, which is field 3 (state).
        let Some(after) = text.rfind(')').map(|i| &text[i + 1..]) else {
            return Self::default();
        };
        let fields: Vec<&str> = after.split_whitespace().collect();
        let field = |n: usize| fields.get(n - 3).and_then(|f| f.parse().ok()).unwrap_or(0);
        Self {
            major_faults: field(12),
            user_ticks: field(14),
            system_ticks: field(15),
        }
    }

    fn format(ticks: u64) -> String {
        let micros = ticks * 1_000_000 / Self::TICKS_PER_SEC;
        format!("{}.{:06}", micros / 1_000_000, micros % 1_000_000)
    }

    fn user_secs(&self) -> String {
        Self::format(self.user_ticks)
    }

    fn system_secs(&self) -> String {
        Self::format(self.system_ticks)
    }
}

#[cfg(test)]
mod tests {
    use super::one_token;

    #[test]
    fn a_stat_value_stays_one_token_on_one_line() {
        assert_eq!(one_token("/var/lib/terrace/s1"), "/var/lib/terrace/s1");
        assert_eq!(one_token("/data/my shard\ndir"), "/data/my%20shard%0Adir");
        assert_eq!(one_token("100%\r\t"), "100%25%0D%09");
        // Non-ASCII letters stay as they are; a non-ASCII space is escaped byte by byte.
        assert_eq!(one_token("/données\u{a0}x"), "/données%C2%A0x");
    }
}
