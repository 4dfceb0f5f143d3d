//! This server's side of its mirror group: its state, terms and status, the coordinator that
//! applies elections, and whether clients are served here.
//!
//! Built so far (issue 6 in progress): states, terms and elections; a passive forwards its
//! clients' data requests to the active (`net/connection/forward.rs`). Replication and the
//! INITIALIZING sync are not built yet, so a passive stays PASSIVE-UNINITIALIZED; with no
//! PASSIVE-STANDBY there is no failover, and the group says so when its active goes.
//!
//! Log lines, as Terracotta's: `Becoming State[ ACTIVE-COORDINATOR ]`, `Moved to State[
//! PASSIVE-UNINITIALIZED ]`, `Starting reconnect window: <ms> ms`.

use super::election::{self, Decision, View};
use super::membership::{ClusterError, Membership};
use super::state::{State, Status, Terms};
use crate::config::{ClusterSettings, Persistence};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

struct Inner {
    state: State,
    terms: Terms,
    /// The active this server knows of (itself when active).
    active: Option<String>,
    /// Since when no active is known (`None`: one is).
    no_active_since: Option<Instant>,
    /// The group's unavailability was logged (once per outage).
    told_unavailable: bool,
}

/// This server in its mirror group.
pub struct Group {
    me: String,
    cluster: ClusterSettings,
    inner: Mutex<Inner>,
    /// Whether this server serves clients (it is the active). Read by every request.
    serving: AtomicBool,
    /// Whether this server's data is recovered.
    ready: AtomicBool,
    /// Last LSN of every shard, published by the executors that own them.
    lsns: Vec<AtomicU64>,
    membership: OnceLock<Membership>,
    stopping: AtomicBool,
    /// The group's servers' client addresses, resolved once (forwarding asks per request).
    client_addrs: Vec<(String, Option<std::net::SocketAddr>)>,
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
        shards: u32,
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
            }),
            serving: AtomicBool::new(false),
            ready: AtomicBool::new(false),
            lsns: (0..shards).map(|_| AtomicU64::new(0)).collect(),
            membership: OnceLock::new(),
            stopping: AtomicBool::new(false),
            client_addrs: cluster
                .members
                .iter()
                .map(|m| {
                    use std::net::ToSocketAddrs as _;
                    let addr = (m.host.as_str(), m.client_port)
                        .to_socket_addrs()
                        .ok()
                        .and_then(|mut a| a.next());
                    (m.name.clone(), addr)
                })
                .collect(),
        }))
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

    /// Whether clients are served here.
    pub fn serving(&self) -> bool {
        self.serving.load(Ordering::Relaxed)
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
    pub fn active_client_address(&self) -> Option<(String, std::net::SocketAddr)> {
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
        let status_source = Arc::clone(self);
        let membership = Membership::start(
            &self.me,
            &self.cluster,
            Arc::new(move || status_source.status()),
        )?;
        let Some(membership) = membership else {
            return Ok(());
        };
        let _ = self.membership.set(membership);
        let group = Arc::clone(self);
        std::thread::Builder::new()
            .name("terrace-group-coordinator".into())
            .spawn(move || {
                let tick = (group.cluster.health_check_interval / 2)
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
        let decision = election::decide(
            View {
                name: &self.me,
                status: &me,
            },
            &views,
            due,
        );
        match decision {
            Decision::Stay => {
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
    }

    /// Records `term` durably, then serves as the active.
    fn become_active(&self, inner: &mut Inner, term: u64) -> std::io::Result<()> {
        inner.terms.store(term, term)?;
        let was_active = inner.state == State::ActiveCoordinator;
        inner.state = State::ActiveCoordinator;
        inner.active = Some(self.me.clone());
        inner.no_active_since = None;
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
