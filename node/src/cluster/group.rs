//! This server's side of its mirror group: its state, terms and status, the coordinator that
//! applies elections, and whether clients are served here.
//!
//! A passive forwards its clients' data requests to the active (`net/connection/forward.rs`)
//! and follows the active's log shard by shard (`cluster::replication`). Its state follows
//! its shards: PASSIVE-UNINITIALIZED until a stream starts, INITIALIZING while shards sync,
//! PASSIVE-STANDBY once every shard is in sync *and* the active says so (the active lists its
//! standbys in its heartbeats: a passive the active dropped from its sync set is no standby,
//! even if it has not noticed). Only a PASSIVE-STANDBY may take over.
//!
//! Log lines, as Terracotta's: `Becoming State[ ACTIVE-COORDINATOR ]`, `Moved to State[
//! PASSIVE-UNINITIALIZED ]`, `Moved to State[ INITIALIZING ]`, `Moved to State[
//! PASSIVE-STANDBY ]`, `Starting reconnect window: <ms> ms`.

use super::election::{self, Decision, View};
use super::membership::{ClusterError, Hooks, Membership};
use super::state::{State, Status, Terms};
use super::wire::ReplicateRequest;
use crate::config::{ClusterSettings, Persistence};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

/// Where a passive's shard stands in following the active.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShardSync {
    /// No stream.
    Idle = 0,
    /// Receiving the active's snapshot.
    Snapshot = 1,
    /// Receiving the records after the snapshot (or after its own data, a prefix).
    CatchingUp = 2,
    /// In the active's sync set.
    InSync = 3,
}

impl ShardSync {
    fn from_u8(value: u8) -> Self {
        match value {
            1 => Self::Snapshot,
            2 => Self::CatchingUp,
            3 => Self::InSync,
            _ => Self::Idle,
        }
    }
}

/// The active a passive follows, for its replication streams.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicationSource {
    /// The active's name.
    pub active: String,
    /// Its group port.
    pub addr: SocketAddr,
    /// The term it is active in.
    pub term: u64,
}

/// See [`Group::flags`].
#[derive(Debug, Clone)]
pub struct GroupFlags {
    /// This server is the active.
    pub serving: Arc<AtomicBool>,
    /// A planned failover is under way.
    pub handing_over: Arc<AtomicBool>,
    /// The term this server is (or was last) the active in.
    pub term: Arc<AtomicU64>,
}

impl Default for GroupFlags {
    /// A server that is the active, at term 0 (tests).
    fn default() -> Self {
        Self {
            serving: Arc::new(AtomicBool::new(true)),
            handing_over: Arc::new(AtomicBool::new(false)),
            term: Arc::new(AtomicU64::new(0)),
        }
    }
}

/// A replication connection the group port accepted, for the executor owning its shard.
pub type HandedOff = (ReplicateRequest, std::net::TcpStream);

/// A passive's INITIALIZING progress: snapshot bytes received and expected, over all shards.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SyncProgress {
    /// Bytes of snapshot records received.
    pub done: u64,
    /// Bytes the snapshots hold.
    pub total: u64,
    /// Shards in the active's sync set.
    pub shards_in_sync: u32,
}

struct Inner {
    state: State,
    terms: Terms,
    /// The active this server knows of (itself when active).
    active: Option<String>,
    /// Since when no active is known (`None`: one is).
    no_active_since: Option<Instant>,
    /// The group's unavailability was logged (once per outage).
    told_unavailable: bool,
    /// A planned failover to this passive is under way (this server is the active).
    handover: Option<String>,
    /// Passive: since when, while its active was heard from, not every shard was in sync.
    out_of_sync_since: Option<Instant>,
}

/// This server in its mirror group.
pub struct Group {
    me: String,
    cluster: ClusterSettings,
    inner: Mutex<Inner>,
    /// Whether this server serves clients (it is the active). Read by every request.
    serving: Arc<AtomicBool>,
    /// Whether this server's data is recovered.
    ready: AtomicBool,
    /// Last LSN of every shard, published by the executors that own them.
    lsns: Vec<AtomicU64>,
    membership: OnceLock<Membership>,
    stopping: AtomicBool,
    /// The group's servers' client addresses, resolved once (forwarding asks per request).
    client_addrs: Vec<(String, Option<SocketAddr>)>,
    /// The group's servers' group ports, resolved once.
    group_addrs: Vec<(String, Option<SocketAddr>)>,
    /// Passive: each shard's [`ShardSync`].
    shard_sync: Vec<AtomicU8>,
    /// Passive: each shard's snapshot bytes received and expected.
    sync_bytes: Vec<(AtomicU64, AtomicU64)>,
    /// Active: for each passive, which shards are in the sync set.
    replica_sync: Mutex<BTreeMap<String, Vec<bool>>>,
    /// Active: replication connections accepted on the group port, by owning executor.
    inbox: Vec<Mutex<Vec<HandedOff>>>,
    /// Active, during a planned failover: the passive it hands over to.
    handover_target: Mutex<Option<String>>,
    /// A planned failover is under way: this server does not serve new requests, but the
    /// writes it took still complete.
    handing_over: Arc<AtomicBool>,
    /// The term this server is (or was last) the active in: new records carry it.
    active_term: Arc<AtomicU64>,
    /// Active, during a planned failover: each shard's records are all acknowledged by the
    /// target (set by the executors).
    handover_ready: Vec<AtomicBool>,
}

impl std::fmt::Debug for Group {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Group")
            .field("me", &self.me)
            .field("group", &self.cluster.group)
            .field("serving", &self.serving.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl Group {
    /// This server's group, STARTING, with the terms recorded in `data_dir`.
    pub fn new(
        me: &str,
        cluster: &ClusterSettings,
        data_dir: &Path,
        persistence: Persistence,
        (shards, executors): (u32, usize),
    ) -> Result<Arc<Self>, String> {
        let mut terms = Terms::load(data_dir)?;
        if persistence == Persistence::TemporarySwapOnly {
            // The data was emptied at start: it is nobody's newest.
            terms.data_term = 0;
        }
        Ok(Arc::new(Self {
            me: me.to_string(),
            cluster: cluster.clone(),
            inner: Mutex::new(Inner {
                state: State::Starting,
                terms,
                active: None,
                no_active_since: Some(Instant::now()),
                told_unavailable: false,
                handover: None,
                out_of_sync_since: None,
            }),
            serving: Arc::new(AtomicBool::new(false)),
            ready: AtomicBool::new(false),
            lsns: (0..shards).map(|_| AtomicU64::new(0)).collect(),
            membership: OnceLock::new(),
            stopping: AtomicBool::new(false),
            client_addrs: resolve(cluster, |m| Some(m.client_port)),
            group_addrs: resolve(cluster, |m| m.group_port),
            shard_sync: (0..shards).map(|_| AtomicU8::new(0)).collect(),
            sync_bytes: (0..shards)
                .map(|_| (AtomicU64::new(0), AtomicU64::new(0)))
                .collect(),
            replica_sync: Mutex::new(BTreeMap::new()),
            inbox: (0..executors.max(1))
                .map(|_| Mutex::new(Vec::new()))
                .collect(),
            handover_target: Mutex::new(None),
            handing_over: Arc::new(AtomicBool::new(false)),
            active_term: Arc::new(AtomicU64::new(0)),
            handover_ready: (0..shards).map(|_| AtomicBool::new(false)).collect(),
        }))
    }

    /// During a planned failover: the passive this server hands over to.
    pub fn handover_target(&self) -> Option<String> {
        self.handover_target
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// During a planned failover: whether every record of `shard` is acknowledged by the
    /// target.
    pub fn set_handover_ready(&self, shard: u32, ready: bool) {
        if let Some(flag) = self.handover_ready.get(shard as usize) {
            flag.store(ready, Ordering::SeqCst);
        }
    }

    /// Whether `peer` is joined (heartbeats flowing).
    pub fn is_joined(&self, peer: &str) -> bool {
        self.membership().is_some_and(|m| m.is_joined(peer))
    }

    /// This server's name.
    pub fn me(&self) -> &str {
        &self.me
    }

    /// The highest term this server has seen.
    pub fn term(&self) -> u64 {
        self.lock().terms.term
    }

    /// How long a peer may stay silent before it is gone (the health checks' limit); also how
    /// long a passive in the sync set may keep writes waiting.
    pub fn silence_limit(&self) -> Duration {
        self.cluster.health_check_interval * self.cluster.health_check_missed
    }

    /// The active to follow, while this server is a passive that knows one.
    pub fn replication_source(&self) -> Option<ReplicationSource> {
        let inner = self.lock();
        if !matches!(
            inner.state,
            State::PassiveUninitialized | State::Initializing | State::PassiveStandby
        ) {
            return None;
        }
        let active = inner.active.clone().filter(|a| *a != self.me)?;
        let addr = self
            .group_addrs
            .iter()
            .find(|(name, _)| *name == active)
            .and_then(|(_, addr)| *addr)?;
        Some(ReplicationSource {
            active,
            addr,
            term: inner.terms.term,
        })
    }

    /// Passive: where a shard stands.
    pub fn shard_sync(&self, shard: u32) -> ShardSync {
        self.shard_sync
            .get(shard as usize)
            .map_or(ShardSync::Idle, |slot| {
                ShardSync::from_u8(slot.load(Ordering::SeqCst))
            })
    }

    /// Passive: sets where a shard stands.
    pub fn set_shard_sync(&self, shard: u32, sync: ShardSync) {
        if let Some(slot) = self.shard_sync.get(shard as usize) {
            slot.store(sync as u8, Ordering::SeqCst);
        }
    }

    /// Passive: a stream of `term` is about to replace `shard`'s data with the active's
    /// snapshot. Under the group's lock, so that no election sees it in between: false if
    /// this server has moved on (it serves, or follows a newer term) and must not touch its
    /// data; otherwise the shard is marked [`ShardSync::Snapshot`] and a PASSIVE-STANDBY
    /// stops being one first, since with a shard emptied it can no longer take over.
    pub fn begin_snapshot(&self, shard: u32, term: u64) -> bool {
        let mut inner = self.lock();
        if self.serving() || inner.terms.term != term {
            return false;
        }
        self.set_shard_sync(shard, ShardSync::Snapshot);
        if inner.state == State::PassiveStandby {
            inner.state = State::PassiveUninitialized;
            tracing::warn!(
                shard,
                term,
                "shard {shard} takes a new snapshot from the ACTIVE-COORDINATOR of mirror group \
                 {}: this server is no longer a standby until it is in sync again. Moved to \
                 State[ {} ]",
                self.cluster.group,
                inner.state.name()
            );
        }
        true
    }

    /// Passive: a shard's snapshot progress (bytes received, bytes expected).
    pub fn set_sync_bytes(&self, shard: u32, done: u64, total: u64) {
        if let Some((d, t)) = self.sync_bytes.get(shard as usize) {
            d.store(done, Ordering::Relaxed);
            t.store(total, Ordering::Relaxed);
        }
    }

    /// Passive: INITIALIZING progress over all shards.
    pub fn sync_progress(&self) -> SyncProgress {
        let mut progress = SyncProgress::default();
        for ((done, total), sync) in self.sync_bytes.iter().zip(&self.shard_sync) {
            progress.done += done.load(Ordering::Relaxed);
            progress.total += total.load(Ordering::Relaxed);
            progress.shards_in_sync +=
                u32::from(ShardSync::from_u8(sync.load(Ordering::SeqCst)) == ShardSync::InSync);
        }
        progress
    }

    /// Active: whether `peer`'s stream of `shard` is in the sync set. When that makes it a
    /// standby or not, the peers hear it at once (a passive becomes PASSIVE-STANDBY, or stops
    /// being one, on the active's word).
    pub fn set_replica_in_sync(&self, peer: &str, shard: u32, in_sync: bool) {
        let before = self.standbys();
        {
            let shards = self.shard_sync.len();
            let mut table = self
                .replica_sync
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let flags = table
                .entry(peer.to_string())
                .or_insert_with(|| vec![false; shards]);
            if let Some(flag) = flags.get_mut(shard as usize) {
                *flag = in_sync;
            }
        }
        if self.standbys() != before
            && let Some(membership) = self.membership()
        {
            membership.announce();
        }
    }

    /// Active: the passives with every shard in the sync set.
    pub fn standbys(&self) -> Vec<String> {
        self.replica_sync
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .filter(|(_, flags)| flags.iter().all(|&f| f))
            .map(|(peer, _)| peer.clone())
            .collect()
    }

    /// The group port accepted a replication connection: queue it for the executor that
    /// owns its shard.
    pub fn hand_off(&self, request: ReplicateRequest, stream: std::net::TcpStream) {
        let executor = request.shard as usize % self.inbox.len();
        self.inbox[executor]
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push((request, stream));
    }

    /// Replication connections queued for `executor`.
    pub fn take_handed_off(&self, executor: usize) -> Vec<HandedOff> {
        self.inbox.get(executor).map_or_else(Vec::new, |inbox| {
            std::mem::take(
                &mut *inbox
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner),
            )
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding it aborts the process (fail-stop), so poison is not seen.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// An executor publishes the last LSN of a shard it owns.
    pub fn publish_lsn(&self, shard: u32, lsn: u64) {
        if let Some(slot) = self.lsns.get(shard as usize) {
            slot.store(lsn, Ordering::Relaxed);
        }
    }

    /// Each shard's last LSN (as published, at most 50 ms old).
    pub fn shard_lsns(&self) -> Vec<u64> {
        self.lsns
            .iter()
            .map(|l| l.load(Ordering::Relaxed))
            .collect()
    }

    /// Whether clients are served here.
    pub fn serving(&self) -> bool {
        self.serving.load(Ordering::Relaxed)
    }

    /// What the executors' writers read without the group's lock: whether this server is
    /// the active (a write waiting for its passives gives up when it stops being one), whether
    /// a planned failover is under way (which waits for those writes instead), and the term
    /// new records are stamped with.
    pub fn flags(&self) -> GroupFlags {
        GroupFlags {
            serving: Arc::clone(&self.serving),
            handing_over: Arc::clone(&self.handing_over),
            term: Arc::clone(&self.active_term),
        }
    }

    /// This server's state.
    pub fn state(&self) -> State {
        self.lock().state
    }

    /// What this server tells its peers.
    pub fn status(&self) -> Status {
        let inner = self.lock();
        self.status_of(&inner)
    }

    fn status_of(&self, inner: &Inner) -> Status {
        Status {
            state: inner.state,
            term: inner.terms.term,
            data_term: inner.terms.data_term,
            lsn: self.lsns.iter().map(|l| l.load(Ordering::Relaxed)).sum(),
            active: inner.active.clone(),
            ready: self.ready.load(Ordering::SeqCst),
            standbys: if inner.state == State::ActiveCoordinator {
                self.standbys()
            } else {
                Vec::new()
            },
        }
    }

    /// The membership, once started (`None` for a server alone in its group).
    pub fn membership(&self) -> Option<&Membership> {
        self.membership.get()
    }

    /// The group's settings.
    pub fn cluster(&self) -> &ClusterSettings {
        &self.cluster
    }

    /// The active's name and client address, when the active is another server.
    pub fn active_client_address(&self) -> Option<(String, SocketAddr)> {
        let active = self.lock().active.clone()?;
        if active == self.me {
            return None;
        }
        let addr = self
            .client_addrs
            .iter()
            .find(|(name, _)| *name == active)
            .and_then(|(_, addr)| *addr)?;
        Some((active, addr))
    }

    /// The reply to a client request this server does not serve.
    pub fn not_serving_reply(&self) -> String {
        let inner = self.lock();
        let group = &self.cluster.group;
        match &inner.active {
            Some(active) if *active != self.me => {
                let address = self
                    .cluster
                    .members
                    .iter()
                    .find(|m| &m.name == active)
                    .map(|m| format!(" at {}:{}", m.host, m.client_port))
                    .unwrap_or_default();
                format!(
                    "this server is {}; the active of mirror group {group} is {active}{address}",
                    inner.state.name()
                )
            }
            _ => format!(
                "this server is {}; mirror group {group} has no active yet; retry shortly",
                inner.state.name()
            ),
        }
    }

    /// Joins the group at start-up, before this server's data is recovered: membership (its
    /// heartbeats say it is recovering, so that no peer elects itself meanwhile) and the
    /// coordinator, which elects once the data is ready ([`Group::data_ready`]).
    pub fn join(self: &Arc<Self>) -> Result<(), ClusterError> {
        let hooks: Arc<dyn Hooks> = Arc::clone(self) as Arc<dyn Hooks>;
        let membership = Membership::start(&self.me, &self.cluster, hooks)?;
        let Some(membership) = membership else {
            return Ok(());
        };
        let _ = self.membership.set(membership);
        let group = Arc::clone(self);
        std::thread::Builder::new()
            .name("terrace-group-coordinator".into())
            .spawn(move || {
                // Often enough that a passive whose streams are down steps down well within
                // the active's grace (see `passive_progress`).
                let tick = (group.cluster.health_check_interval / 2)
                    .min(group.silence_limit() / 4)
                    .clamp(Duration::from_millis(5), Duration::from_millis(100));
                while !group.stopping.load(Ordering::SeqCst) {
                    group.tick();
                    std::thread::sleep(tick);
                }
            })
            .map_err(|source| ClusterError::Thread { source })?;
        Ok(())
    }

    /// This server's data is recovered: alone in its group, it becomes active at once;
    /// otherwise the election time starts now.
    pub fn data_ready(&self) -> Result<(), ClusterError> {
        let mut inner = self.lock();
        self.ready.store(true, Ordering::SeqCst);
        if self.membership().is_none() {
            let term = inner.terms.term.max(1);
            return self
                .become_active(&mut inner, term)
                .map_err(|source| ClusterError::Terms { source });
        }
        inner.no_active_since = Some(Instant::now());
        Ok(())
    }

    /// Stops the coordinator and the membership.
    pub fn stop(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        if let Some(membership) = self.membership() {
            membership.stop();
        }
    }

    /// One round of the coordinator: what the peers say, the election, its outcome.
    fn tick(&self) {
        if !self.ready.load(Ordering::SeqCst) {
            return;
        }
        let peers: Vec<(String, Status)> = self
            .membership()
            .map(Membership::joined_statuses)
            .unwrap_or_default();
        let mut inner = self.lock();
        if inner.handover.is_some() {
            // A planned failover decides who is active.
            return;
        }
        let active_known = inner.state == State::ActiveCoordinator
            || peers
                .iter()
                .any(|(_, s)| s.state == State::ActiveCoordinator);
        if active_known {
            inner.no_active_since = None;
            inner.told_unavailable = false;
        } else if inner.no_active_since.is_none() {
            if let Some(lost) = inner.active.take() {
                tracing::warn!(
                    "NodeID[{lost}], the ACTIVE-COORDINATOR of mirror group {}, is gone",
                    self.cluster.group
                );
                // Before any election: its last word decides whether this server may run.
                let last_word = self.membership().and_then(|m| m.last_word(&lost));
                self.heed_last_word(&mut inner, &lost, last_word.as_ref());
            }
            inner.no_active_since = Some(Instant::now());
        }
        let due = inner
            .no_active_since
            .is_some_and(|since| since.elapsed() >= self.cluster.election_time);
        let me = self.status_of(&inner);
        let views: Vec<View<'_>> = peers
            .iter()
            .map(|(name, status)| View { name, status })
            .collect();
        // Its newest data came from another active (it was a passive): another server may
        // hold newer data, so it does not elect itself alone.
        let own_data =
            inner.terms.data_term == 0 || inner.terms.data_term == inner.terms.active_term;
        let decision = election::decide(
            View {
                name: &self.me,
                status: &me,
            },
            &views,
            (due, own_data),
        );
        match decision {
            Decision::Stay => {
                if due && views.is_empty() && !own_data && !inner.told_unavailable {
                    inner.told_unavailable = true;
                    tracing::error!(
                        data_term = inner.terms.data_term,
                        "this server's newest data was replicated from another active (it was \
                         a passive): it does not elect itself alone, since a peer may hold \
                         newer data; start the group's last active (or every server of the \
                         group)"
                    );
                }
                if due && !inner.state.may_become_active() && !inner.told_unavailable {
                    inner.told_unavailable = true;
                    tracing::error!(
                        state = inner.state.name(),
                        "mirror group {} has no ACTIVE-COORDINATOR and no PASSIVE-STANDBY to \
                         take over: it is unavailable until a server with the group's data \
                         starts",
                        self.cluster.group
                    );
                }
            }
            Decision::BecomeActive { term } => {
                let failover = inner.state == State::PassiveStandby;
                if let Err(error) = self.become_active(&mut inner, term) {
                    tracing::error!(%error, term, "cannot record the new term: not becoming active");
                    return;
                }
                if failover {
                    tracing::info!(
                        "Starting reconnect window: {} ms",
                        self.cluster.client_reconnect_window.as_millis()
                    );
                }
            }
            Decision::RaiseTerm { term } => {
                tracing::info!(
                    from = inner.terms.term,
                    to = term,
                    "raising the term: a peer has seen a newer one"
                );
                if let Err(error) = self.become_active(&mut inner, term) {
                    tracing::error!(%error, term, "cannot record the new term");
                }
            }
            Decision::Follow { active, term } => self.follow(&mut inner, active, term),
            Decision::StepDown { active, term } => {
                tracing::error!(
                    my_term = inner.terms.term,
                    "split brain: NodeID[{active}] is ACTIVE-COORDINATOR of mirror group {} \
                     with term {term}; this server stops serving and follows it",
                    self.cluster.group
                );
                self.follow(&mut inner, active, term);
            }
        }
        self.passive_progress(&mut inner, &peers);
    }

    /// A passive's state follows its shards' replication and what the active says.
    fn passive_progress(&self, inner: &mut Inner, peers: &[(String, Status)]) {
        if !matches!(
            inner.state,
            State::PassiveUninitialized | State::Initializing | State::PassiveStandby
        ) {
            return;
        }
        let Some(active) = inner.active.clone() else {
            return;
        };
        // While the active is not heard from, the state stays: a PASSIVE-STANDBY whose
        // active died must stay one to take over (`tick` heeds the active's last word when
        // it is declared gone).
        let Some((_, active_status)) = peers.iter().find(|(name, _)| *name == active) else {
            return;
        };
        if active_status.state != State::ActiveCoordinator {
            return;
        }
        let syncs: Vec<ShardSync> = self
            .shard_sync
            .iter()
            .map(|s| ShardSync::from_u8(s.load(Ordering::SeqCst)))
            .collect();
        let all_in_sync = syncs.iter().all(|&s| s == ShardSync::InSync);
        let listed = active_status.standbys.contains(&self.me);
        let out_of_sync_for = if all_in_sync {
            inner.out_of_sync_since = None;
            Duration::ZERO
        } else {
            inner
                .out_of_sync_since
                .get_or_insert_with(Instant::now)
                .elapsed()
        };
        let started = syncs.iter().any(|&s| s != ShardSync::Idle);
        let next = if inner.state == State::PassiveUninitialized && started {
            // Through INITIALIZING always, however short the sync.
            State::Initializing
        } else if all_in_sync && listed {
            State::PassiveStandby
        } else if inner.state == State::PassiveStandby
            && (!listed || out_of_sync_for > self.silence_limit() / 2)
        {
            // Not a standby once the active says so, or once its streams have been down
            // for half the silence limit while the active is still heard from: the active
            // drops a passive from its sync set (and may then acknowledge writes without
            // it) no sooner than a whole silence limit after its stream ended, so this
            // server has stepped down before then. Not at once, though: a paused active's
            // streams time out about when the health checks declare it gone, and a standby
            // that stepped down in that moment would leave nobody to take over.
            State::PassiveUninitialized
        } else {
            inner.state
        };
        if next == inner.state {
            return;
        }
        if next == State::PassiveStandby {
            // The data is now the active's, of its term: what elections compare.
            let term = inner.terms.term;
            if let Err(error) = inner.terms.store(term, term) {
                tracing::error!(%error, term, "cannot record the data's term: staying {}", inner.state.name());
                return;
            }
        }
        if next == State::PassiveUninitialized {
            if listed {
                tracing::warn!(
                    out_of_sync_ms = out_of_sync_for.as_millis() as u64,
                    "the replication streams from NodeID[{active}] have been down too long \
                     while it is still heard from: this server stops being PASSIVE-STANDBY \
                     before the active drops it, and syncs again"
                );
            } else {
                tracing::warn!(
                    "NodeID[{active}] no longer counts this server as PASSIVE-STANDBY (it fell \
                     behind or lost its streams); syncing again"
                );
            }
        }
        inner.state = next;
        tracing::info!(
            term = inner.terms.term,
            group = %self.cluster.group,
            "Moved to State[ {} ]",
            next.name()
        );
    }

    /// The active `lost` is gone. If the last thing it said was that it no longer counts
    /// this server as a standby, it dropped this server and may have acknowledged writes
    /// without it: a PASSIVE-STANDBY must then not take over, since it would lose them.
    fn heed_last_word(&self, inner: &mut Inner, lost: &str, last_word: Option<&Status>) {
        let dropped = last_word
            .is_some_and(|s| s.state == State::ActiveCoordinator && !s.standbys.contains(&self.me));
        if !dropped || inner.state != State::PassiveStandby {
            return;
        }
        inner.state = State::PassiveUninitialized;
        tracing::warn!(
            term = inner.terms.term,
            "NodeID[{lost}] is gone, and its last word was that this server is no longer its \
             standby (it may have acknowledged writes without it): this server cannot take \
             over. Moved to State[ {} ]",
            inner.state.name()
        );
    }

    /// Records `term` durably, then serves as the active.
    fn become_active(&self, inner: &mut Inner, term: u64) -> std::io::Result<()> {
        inner.terms.store_all(term, term, term)?;
        let was_active = inner.state == State::ActiveCoordinator;
        inner.state = State::ActiveCoordinator;
        inner.active = Some(self.me.clone());
        inner.no_active_since = None;
        if !was_active {
            for sync in &self.shard_sync {
                sync.store(ShardSync::Idle as u8, Ordering::SeqCst);
            }
        }
        // Before serving: every record written from here on carries the new term.
        self.active_term.store(term, Ordering::SeqCst);
        self.serving.store(true, Ordering::SeqCst);
        if !was_active {
            tracing::info!(
                term,
                group = %self.cluster.group,
                "Becoming State[ {} ]",
                State::ActiveCoordinator.name()
            );
        }
        Ok(())
    }

    fn follow(&self, inner: &mut Inner, active: String, term: u64) {
        self.serving.store(false, Ordering::SeqCst);
        // Streams from a new active (or term) start afresh.
        inner.out_of_sync_since = None;
        self.replica_sync
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clear();
        if term != inner.terms.term {
            let data_term = inner.terms.data_term;
            if let Err(error) = inner.terms.store(term, data_term) {
                tracing::error!(%error, term, "cannot record the group's term");
                return;
            }
        }
        if !matches!(
            inner.state,
            State::PassiveUninitialized | State::Initializing | State::PassiveStandby
        ) {
            inner.state = State::PassiveUninitialized;
            tracing::info!(
                term,
                group = %self.cluster.group,
                "Moved to State[ {} ]",
                State::PassiveUninitialized.name()
            );
        }
        tracing::info!(
            term,
            "NodeID[{active}] is the ACTIVE-COORDINATOR of mirror group {}",
            self.cluster.group
        );
        inner.active = Some(active);
        inner.no_active_since = None;
    }
}

impl Hooks for Group {
    fn status(&self) -> Status {
        Group::status(self)
    }

    fn replicate(&self, request: ReplicateRequest, stream: std::net::TcpStream) {
        self.hand_off(request, stream);
    }

    fn take_over(&self, from: &str, term: u64) {
        let mut inner = self.lock();
        let expected = inner.state == State::PassiveStandby
            && inner.active.as_deref() == Some(from)
            && term > inner.terms.term;
        if !expected {
            tracing::warn!(
                state = inner.state.name(),
                term,
                "NodeID[{from}] handed the group over, but this server cannot take over: it is \
                 not a PASSIVE-STANDBY of that active, or the term is not new"
            );
            return;
        }
        tracing::info!(
            term,
            "planned failover: NodeID[{from}] hands the group over"
        );
        if let Err(error) = self.become_active(&mut inner, term) {
            tracing::error!(%error, term, "cannot record the new term: not becoming active");
            return;
        }
        drop(inner);
        // The old active waits for this to hand over (and its clients with it).
        if let Some(membership) = self.membership() {
            membership.announce();
        }
    }

    fn hand_over(&self, to: Option<&str>) -> Result<String, String> {
        let started = Instant::now();
        let (target, term) = {
            let mut inner = self.lock();
            if inner.state != State::ActiveCoordinator {
                return Err(format!(
                    "{} is {}, not the ACTIVE-COORDINATOR",
                    self.me,
                    inner.state.name()
                ));
            }
            if inner.handover.is_some() {
                return Err("a planned failover is already under way".into());
            }
            let standbys = self.standbys();
            let target = match to {
                Some(to) if standbys.iter().any(|s| s == to) => to.to_string(),
                Some(to) => {
                    return Err(format!(
                        "{to} is not a PASSIVE-STANDBY of {} (standbys: {})",
                        self.me,
                        if standbys.is_empty() {
                            "none".to_string()
                        } else {
                            standbys.join(", ")
                        }
                    ));
                }
                None => standbys.into_iter().next().ok_or_else(|| {
                    "no PASSIVE-STANDBY to hand over to: wait until a passive is in sync \
                     (terrace-ctl status)"
                        .to_string()
                })?,
            };
            for flag in &self.handover_ready {
                flag.store(false, Ordering::SeqCst);
            }
            *self
                .handover_target
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(target.clone());
            inner.handover = Some(target.clone());
            // New requests wait (they go to the new active once it is known).
            self.handing_over.store(true, Ordering::SeqCst);
            self.serving.store(false, Ordering::SeqCst);
            (target, inner.terms.term)
        };
        tracing::info!(
            "planned failover: handing mirror group {} over to NodeID[{target}]",
            self.cluster.group
        );
        let result = self.wait_handover_ready().and_then(|()| {
            let membership = self.membership().ok_or("no membership")?;
            membership.send(&target, &super::wire::Message::TakeOver { term: term + 1 })?;
            self.wait_taken_over(membership, &target, term + 1)
        });
        *self
            .handover_target
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = None;
        let mut inner = self.lock();
        inner.handover = None;
        self.handing_over.store(false, Ordering::SeqCst);
        match result {
            Ok(()) => {
                self.follow(&mut inner, target.clone(), term + 1);
                let millis = started.elapsed().as_millis();
                tracing::info!(millis, "planned failover done: NodeID[{target}] takes over");
                Ok(format!(
                    "{} handed mirror group {} over to {target} at term {} in {millis} ms",
                    self.me,
                    self.cluster.group,
                    term + 1
                ))
            }
            Err(error) => {
                tracing::warn!(%error, "planned failover abandoned: this server stays the active");
                self.serving.store(true, Ordering::SeqCst);
                Err(format!(
                    "planned failover abandoned, {} stays the active: {error}",
                    self.me
                ))
            }
        }
    }
}

impl Group {
    /// Waits until every shard's records are acknowledged by the hand-over target, twice in
    /// a row a few milliseconds apart (a request admitted just before serving stopped may
    /// still be on its way to its shard).
    fn wait_handover_ready(&self) -> Result<(), String> {
        let deadline = Instant::now() + HANDOVER_WAIT_MAX;
        let mut ready_in_a_row = 0;
        while ready_in_a_row < 2 {
            if Instant::now() > deadline {
                return Err(format!(
                    "the passive did not acknowledge every record within {} ms",
                    HANDOVER_WAIT_MAX.as_millis()
                ));
            }
            std::thread::sleep(HANDOVER_POLL);
            if self.handover_ready.iter().all(|f| f.load(Ordering::SeqCst)) {
                ready_in_a_row += 1;
            } else {
                ready_in_a_row = 0;
            }
        }
        Ok(())
    }
}

impl Group {
    /// Waits until `target` says it is the active at `term` (it announces it at once).
    fn wait_taken_over(
        &self,
        membership: &Membership,
        target: &str,
        term: u64,
    ) -> Result<(), String> {
        let deadline = Instant::now() + self.silence_limit().max(HANDOVER_CONFIRM_MIN);
        loop {
            let taken = membership.joined_statuses().iter().any(|(name, status)| {
                name == target && status.state == State::ActiveCoordinator && status.term >= term
            });
            if taken {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "NodeID[{target}] did not confirm it took over at term {term}"
                ));
            }
            std::thread::sleep(HANDOVER_POLL);
        }
    }
}

/// Shortest wait for the target of a planned failover to confirm it took over.
const HANDOVER_CONFIRM_MIN: Duration = Duration::from_secs(2);

/// Longest a planned failover waits for the target to acknowledge every record.
const HANDOVER_WAIT_MAX: Duration = Duration::from_secs(10);
/// How often a planned failover checks the target's acknowledgments.
pub const HANDOVER_POLL: Duration = Duration::from_millis(3);

/// Resolves every member's address for one of its ports, once.
fn resolve(
    cluster: &ClusterSettings,
    port: impl Fn(&crate::config::Member) -> Option<u16>,
) -> Vec<(String, Option<SocketAddr>)> {
    use std::net::ToSocketAddrs as _;
    cluster
        .members
        .iter()
        .map(|m| {
            let addr = port(m).and_then(|port| {
                (m.host.as_str(), port)
                    .to_socket_addrs()
                    .ok()
                    .and_then(|mut a| a.next())
            });
            (m.name.clone(), addr)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]
    use super::*;
    use crate::config::tests::TWO;
    use crate::config::{Overrides, Settings};

    /// s2, a PASSIVE-STANDBY of s1 in term 3 with both shards in sync.
    fn standby(dir: &Path) -> Arc<Group> {
        let settings =
            Settings::from_toml("pair.toml", TWO, Some("s2"), &Overrides::default()).unwrap();
        let group = Group::new(
            "s2",
            &settings.cluster,
            dir,
            Persistence::PermanentStore,
            (2, 1),
        )
        .unwrap();
        {
            let mut inner = group.lock();
            inner.terms.store(3, 3).unwrap();
            inner.state = State::PassiveStandby;
            inner.active = Some("s1".into());
        }
        for shard in 0..2 {
            group.set_shard_sync(shard, ShardSync::InSync);
        }
        group
    }

    fn active_listing(standbys: &[&str]) -> Vec<(String, Status)> {
        vec![(
            "s1".into(),
            Status {
                state: State::ActiveCoordinator,
                term: 3,
                data_term: 3,
                lsn: 10,
                active: Some("s1".into()),
                ready: true,
                standbys: standbys.iter().map(|s| (*s).to_string()).collect(),
            },
        )]
    }

    fn progress(group: &Group, peers: &[(String, Status)]) -> State {
        let mut inner = group.lock();
        group.passive_progress(&mut inner, peers);
        inner.state
    }

    /// The race CI once lost: a paused active's streams time out a little before the health
    /// checks declare it gone. The standby must stay one, or nobody takes over.
    #[test]
    fn a_standby_whose_streams_ended_stays_one_while_the_active_lists_it() {
        let dir = tempfile::tempdir().unwrap();
        let group = standby(dir.path());
        for shard in 0..2 {
            group.set_shard_sync(shard, ShardSync::Idle);
        }
        assert_eq!(
            progress(&group, &active_listing(&["s2"])),
            State::PassiveStandby
        );
    }

    /// The active is declared gone: a standby it still listed may take over; one it had
    /// dropped (and may have acknowledged writes without) must not.
    #[test]
    fn a_standby_heeds_the_last_word_of_an_active_that_is_gone() {
        let dir = tempfile::tempdir().unwrap();
        let group = standby(dir.path());
        let listing = active_listing(&["s2"]);
        let mut inner = group.lock();
        group.heed_last_word(&mut inner, "s1", Some(&listing[0].1));
        assert_eq!(inner.state, State::PassiveStandby);
        group.heed_last_word(&mut inner, "s1", None);
        assert_eq!(
            inner.state,
            State::PassiveStandby,
            "never heard: nothing to heed"
        );
        let dropped = active_listing(&[]);
        group.heed_last_word(&mut inner, "s1", Some(&dropped[0].1));
        assert_eq!(inner.state, State::PassiveUninitialized);
        assert!(!inner.state.may_become_active());
    }

    /// ... but not for long: the active drops a passive whose stream ended (and may then
    /// acknowledge writes without it) a silence limit later; the passive steps down first.
    #[test]
    fn a_standby_whose_streams_stay_down_while_the_active_is_heard_steps_down() {
        let dir = tempfile::tempdir().unwrap();
        let group = standby(dir.path());
        group.set_shard_sync(1, ShardSync::CatchingUp);
        let peers = active_listing(&["s2"]);
        assert_eq!(progress(&group, &peers), State::PassiveStandby);
        let almost = group.silence_limit() / 2 - Duration::from_millis(50);
        group.lock().out_of_sync_since = Some(Instant::now() - almost);
        assert_eq!(progress(&group, &peers), State::PassiveStandby);
        let over = group.silence_limit() / 2 + Duration::from_millis(1);
        group.lock().out_of_sync_since = Some(Instant::now() - over);
        assert_eq!(progress(&group, &peers), State::PassiveUninitialized);
        // Back in sync, and listed: a standby again (through INITIALIZING, as always).
        group.set_shard_sync(1, ShardSync::InSync);
        assert_eq!(progress(&group, &peers), State::Initializing);
        assert_eq!(progress(&group, &peers), State::PassiveStandby);
        assert_eq!(group.lock().out_of_sync_since, None);
    }

    #[test]
    fn a_standby_the_active_stops_listing_is_no_longer_one() {
        let dir = tempfile::tempdir().unwrap();
        let group = standby(dir.path());
        assert_eq!(
            progress(&group, &active_listing(&[])),
            State::PassiveUninitialized
        );
    }

    #[test]
    fn a_snapshot_demotes_a_standby_before_its_data_is_touched() {
        let dir = tempfile::tempdir().unwrap();
        let group = standby(dir.path());
        assert!(!group.begin_snapshot(0, 2), "a stream of an older term");
        assert_eq!(group.state(), State::PassiveStandby);
        assert!(group.begin_snapshot(0, 3));
        assert_eq!(group.state(), State::PassiveUninitialized);
        // Still listed by the active, but a shard is being replaced: not a standby again
        // until every shard is back in sync.
        assert_eq!(
            progress(&group, &active_listing(&["s2"])),
            State::Initializing
        );
        group.set_shard_sync(0, ShardSync::InSync);
        assert_eq!(
            progress(&group, &active_listing(&["s2"])),
            State::PassiveStandby
        );
    }
}
