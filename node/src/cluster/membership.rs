//! Membership and health of this server's mirror group.
//!
//! The servers of a group keep one TCP connection per pair on their group ports: the server
//! whose name sorts first dials, the other accepts, so a pair never holds two. A connection
//! starts with a handshake that carries the dialer's canonical cluster config; a server with
//! a different config is refused, and both sides log the first field that differs. Then both
//! sides send a heartbeat every `health_check_interval` and answer the other's; a peer not
//! heard from for `health_check_missed` intervals is declared gone and the connection
//! dropped; the dialer keeps redialing.
//!
//! This runs on plain threads, apart from the executors: a busy executor must not make its
//! server look dead to the group (glommio timers can fire late on a loaded core).
//!
//! Log lines, as Terracotta's: `NodeID[s2] joined the cluster`, `NodeID[s2] left the
//! cluster`.

use super::state::Status;
use super::wire::{self, Message, PROTOCOL_VERSION, ReplicateRequest};
use crate::config::ClusterSettings;
use std::collections::BTreeMap;
use std::io::{BufReader, ErrorKind};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs as _};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// How a peer of the group stands, as seen from here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    /// Not connected yet (or reconnecting).
    Connecting,
    /// Handshake done, heartbeats flowing.
    Joined,
    /// It was joined and went away; why.
    Gone(String),
    /// The handshake was refused (by either side); why.
    Refused(String),
}

impl Health {
    /// The word `stats cluster` shows.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Connecting => "connecting",
            Self::Joined => "joined",
            Self::Gone(_) => "gone",
            Self::Refused(_) => "refused",
        }
    }
}

/// A peer's state.
#[derive(Debug, Clone)]
pub struct PeerStatus {
    /// How it stands.
    pub health: Health,
    /// Since when.
    pub since: Instant,
    /// What it said in its last heartbeat (while joined).
    pub last: Option<Status>,
    /// What it said last, kept after it left (replaced by what it says next).
    last_word: Option<Status>,
    /// The connection that carries it (0: none).
    session: u64,
    /// That connection's sending side, shared by the heartbeats and [`Membership::send`].
    writer: Option<Arc<Mutex<TcpStream>>>,
}

/// Why membership could not start.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// The group's term could not be recorded.
    #[error("cannot record the mirror group term in the data dir: {source}")]
    Terms {
        /// Why.
        source: std::io::Error,
    },
    /// A membership thread could not be started.
    #[error("cannot start a mirror group thread: {source}")]
    Thread {
        /// Why.
        source: std::io::Error,
    },
    /// The group port could not be bound.
    #[error(
        "cannot listen on the group port {addr}: {source}; pick a free port \
         (servers[].group_port) or stop what uses it"
    )]
    Bind {
        /// The address.
        addr: String,
        /// Why.
        source: std::io::Error,
    },
}

/// What membership asks of, and hands to, the rest of the server (the group).
pub trait Hooks: Send + Sync {
    /// This server's status, for its heartbeats.
    fn status(&self) -> Status;
    /// A replication connection a passive opened on the group port (checked: a peer of the
    /// group with the same config).
    fn replicate(&self, request: ReplicateRequest, stream: TcpStream);
    /// The active `from` hands the group over to this server at `term`.
    fn take_over(&self, from: &str, term: u64);
    /// An operator (`terrace-ctl failover`) asks this server, the active, to hand the group
    /// over to `to` (or any PASSIVE-STANDBY). Blocks until done; says what happened.
    fn hand_over(&self, to: Option<&str>) -> Result<String, String>;
}

struct Inner {
    me: String,
    hooks: Arc<dyn Hooks>,
    cluster: ClusterSettings,
    peers: Mutex<BTreeMap<String, PeerStatus>>,
    next_session: AtomicU64,
    stopping: AtomicBool,
}

/// The membership of this server's mirror group. Dropping it does not stop the threads;
/// [`Membership::stop`] does (the process exiting does too).
#[derive(Clone)]
pub struct Membership {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Membership {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Membership")
            .field("me", &self.inner.me)
            .field("group", &self.inner.cluster.group)
            .finish_non_exhaustive()
    }
}

impl Membership {
    /// Starts listening on this server's group port and dialing its peers. `None` if the
    /// group has no other server.
    pub fn start(
        me: &str,
        cluster: &ClusterSettings,
        hooks: Arc<dyn Hooks>,
    ) -> Result<Option<Self>, ClusterError> {
        let Some(self_member) = cluster.members.iter().find(|m| m.name == me) else {
            return Ok(None);
        };
        let (Some(group_port), true) = (self_member.group_port, cluster.peers(me).count() > 0)
        else {
            return Ok(None);
        };
        let addr = format!("{}:{group_port}", self_member.host);
        let listener = TcpListener::bind(&addr).map_err(|source| ClusterError::Bind {
            addr: addr.clone(),
            source,
        })?;
        let peers = cluster
            .peers(me)
            .map(|m| {
                (
                    m.name.clone(),
                    PeerStatus {
                        health: Health::Connecting,
                        since: Instant::now(),
                        last: None,
                        last_word: None,
                        session: 0,
                        writer: None,
                    },
                )
            })
            .collect();
        let membership = Self {
            inner: Arc::new(Inner {
                me: me.to_string(),
                hooks,
                cluster: cluster.clone(),
                peers: Mutex::new(peers),
                next_session: AtomicU64::new(1),
                stopping: AtomicBool::new(false),
            }),
        };
        tracing::info!(
            group = %cluster.group,
            listen = %addr,
            peers = ?cluster.peers(me).map(|m| m.name.as_str()).collect::<Vec<_>>(),
            fingerprint = %format!("{:08x}", cluster.fingerprint),
            "mirror group membership starting"
        );
        let inner = Arc::clone(&membership.inner);
        spawn("terrace-group-accept", move || {
            accept_loop(&inner, &listener)
        });
        for peer in cluster.peers(me).filter(|p| p.name.as_str() > me) {
            let inner = Arc::clone(&membership.inner);
            let peer = peer.name.clone();
            spawn(&format!("terrace-dial-{peer}"), move || {
                dial_loop(&inner, &peer)
            });
        }
        Ok(Some(membership))
    }

    /// Every peer's state, by name.
    pub fn peers(&self) -> Vec<(String, PeerStatus)> {
        self.inner
            .table()
            .iter()
            .map(|(name, status)| (name.clone(), status.clone()))
            .collect()
    }

    /// What every joined peer said in its last heartbeat.
    pub fn joined_statuses(&self) -> Vec<(String, Status)> {
        self.inner
            .table()
            .iter()
            .filter(|(_, s)| s.health == Health::Joined)
            .filter_map(|(name, s)| s.last.clone().map(|last| (name.clone(), last)))
            .collect()
    }

    /// What `peer` said last, even if it has left since.
    pub fn last_word(&self, peer: &str) -> Option<Status> {
        self.inner
            .table()
            .get(peer)
            .and_then(|s| s.last_word.clone())
    }

    /// Whether `peer` is joined (heartbeats flowing).
    pub fn is_joined(&self, peer: &str) -> bool {
        self.inner
            .table()
            .get(peer)
            .is_some_and(|s| s.health == Health::Joined)
    }

    /// Sends `message` to `peer` on its session now.
    pub fn send(&self, peer: &str, message: &Message) -> Result<(), String> {
        let writer = self
            .inner
            .table()
            .get(peer)
            .filter(|s| s.health == Health::Joined)
            .and_then(|s| s.writer.clone())
            .ok_or_else(|| format!("NodeID[{peer}] is not joined"))?;
        let mut stream = writer
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        message
            .write_to(&mut *stream)
            .map_err(|e| format!("sending to NodeID[{peer}] failed: {e}"))
    }

    /// Sends this server's status to every joined peer now, without waiting for the next
    /// heartbeat (a change its peers act on: the active's standbys).
    pub fn announce(&self) {
        let peers: Vec<String> = self
            .inner
            .table()
            .iter()
            .filter(|(_, s)| s.health == Health::Joined)
            .map(|(name, _)| name.clone())
            .collect();
        let ping = Message::Ping {
            seq: 0,
            status: self.inner.hooks.status(),
        };
        for peer in peers {
            if let Err(error) = self.send(&peer, &ping) {
                tracing::debug!(%error, "announcing this server's status failed");
            }
        }
    }

    /// Stops heartbeats and dialing (connections close within one heartbeat tick).
    pub fn stop(&self) {
        self.inner.stopping.store(true, Ordering::SeqCst);
    }
}

fn spawn(name: &str, run: impl FnOnce() + Send + 'static) {
    if let Err(error) = std::thread::Builder::new().name(name.into()).spawn(run) {
        tracing::error!(thread = name, %error, "cannot start a group thread");
    }
}

impl Inner {
    fn table(&self) -> MutexGuard<'_, BTreeMap<String, PeerStatus>> {
        // A panic while holding it aborts the process (fail-stop), so poison is not seen.
        self.peers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn interval(&self) -> Duration {
        self.cluster.health_check_interval
    }

    /// How long a peer may stay silent.
    fn silence_limit(&self) -> Duration {
        self.interval() * self.cluster.health_check_missed
    }

    /// Records a refusal; logs it when it is new.
    fn refused(&self, peer: &str, reason: String) {
        let mut table = self.table();
        let Some(status) = table.get_mut(peer) else {
            return;
        };
        if status.health != Health::Refused(reason.clone()) {
            tracing::error!("NodeID[{peer}] refused: {reason}");
            status.health = Health::Refused(reason);
            status.since = Instant::now();
        }
    }

    /// A handshake with `peer` succeeded: a new session replaces any older one.
    fn joined(&self, peer: &str, writer: Arc<Mutex<TcpStream>>) -> u64 {
        let session = self.next_session.fetch_add(1, Ordering::Relaxed);
        let mut table = self.table();
        if let Some(status) = table.get_mut(peer) {
            if status.health == Health::Joined {
                tracing::warn!(
                    "NodeID[{peer}] left the cluster (it connected again: it restarted or \
                     lost its connection)"
                );
            }
            status.health = Health::Joined;
            status.since = Instant::now();
            status.last = None;
            status.session = session;
            status.writer = Some(writer);
        }
        tracing::info!("NodeID[{peer}] joined the cluster");
        session
    }

    /// Session `session` with `peer` ended; if it is still the current one, the peer is gone.
    fn ended(&self, peer: &str, session: u64, reason: String) {
        let mut table = self.table();
        if let Some(status) = table.get_mut(peer)
            && status.session == session
        {
            tracing::warn!(reason = %reason, "NodeID[{peer}] left the cluster");
            status.health = Health::Gone(reason);
            status.since = Instant::now();
            status.last = None;
            status.session = 0;
            status.writer = None;
        }
    }

    /// A heartbeat of session `session` with `peer` said `status`.
    fn heard(&self, peer: &str, session: u64, status: Status) {
        if let Some(entry) = self.table().get_mut(peer)
            && entry.session == session
        {
            entry.last_word = Some(status.clone());
            entry.last = Some(status);
        }
    }

    fn is_current(&self, peer: &str, session: u64) -> bool {
        self.table().get(peer).is_some_and(|s| s.session == session)
    }

    fn hello(&self, to: &str) -> Message {
        Message::Hello {
            version: PROTOCOL_VERSION,
            from: self.me.clone(),
            to: to.to_string(),
            fingerprint: self.cluster.fingerprint,
            config: self.cluster.canonical.clone(),
        }
    }

    /// Why a replication request must be refused, if it must (whether this server is the
    /// active is its executor's call).
    fn check_replicate(&self, request: &ReplicateRequest) -> Result<(), String> {
        if request.version != PROTOCOL_VERSION {
            return Err(format!(
                "group protocol version {}, but {} speaks {PROTOCOL_VERSION}",
                request.version, self.me
            ));
        }
        if request.to != self.me {
            return Err(format!("this is {}, not {}", self.me, request.to));
        }
        if !self.cluster.peers(&self.me).any(|m| m.name == request.from) {
            return Err(format!(
                "{} is not in mirror group {}",
                request.from, self.cluster.group
            ));
        }
        if request.fingerprint != self.cluster.fingerprint {
            return Err(format!(
                "cluster config fingerprint {:08x} on {}, {:08x} on {}",
                request.fingerprint, request.from, self.cluster.fingerprint, self.me
            ));
        }
        Ok(())
    }

    /// Why a hello must be refused, if it must.
    fn check_hello(&self, message: &Message) -> Result<String, String> {
        let Message::Hello {
            version,
            from,
            to,
            fingerprint,
            config,
        } = message
        else {
            return Err("expected a HELLO".into());
        };
        if *version != PROTOCOL_VERSION {
            return Err(format!(
                "group protocol version {version}, but {} speaks {PROTOCOL_VERSION}: run the \
                 same Terrace version on every server",
                self.me
            ));
        }
        if *to != self.me {
            return Err(format!(
                "this is {}, not {to}: check servers[].host and group_port",
                self.me
            ));
        }
        if !self.cluster.peers(&self.me).any(|m| &m.name == from) {
            return Err(format!(
                "{from} is not in mirror group {} of {}'s config",
                self.cluster.group, self.me
            ));
        }
        if let Some((field, ours, theirs)) = self.cluster.first_difference(config) {
            return Err(format!(
                "cluster config differs: {field} is {theirs} on {from} but {ours} on {}; start \
                 every server with the same config file",
                self.me
            ));
        }
        if *fingerprint != self.cluster.fingerprint {
            return Err(format!(
                "cluster config fingerprint {fingerprint:08x} on {from}, {:08x} on {}",
                self.cluster.fingerprint, self.me
            ));
        }
        if from.as_str() > self.me.as_str() {
            return Err(format!("{} dials {from}, not the other way", self.me));
        }
        Ok(from.clone())
    }
}

fn accept_loop(inner: &Arc<Inner>, listener: &TcpListener) {
    for stream in listener.incoming() {
        if inner.stopping.load(Ordering::SeqCst) {
            return;
        }
        match stream {
            Ok(stream) => {
                let inner = Arc::clone(inner);
                spawn("terrace-group-peer", move || accepted(&inner, stream));
            }
            Err(error) => {
                tracing::warn!(%error, "accepting a group connection failed");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

/// Reads one message, with the connection's read timeout.
fn read_message(reader: &mut BufReader<TcpStream>) -> std::io::Result<Message> {
    let mut line = Vec::new();
    if !wire::read_line(reader, &mut line)? {
        return Err(std::io::Error::new(
            ErrorKind::UnexpectedEof,
            "the peer closed the connection",
        ));
    }
    let mut more = || {
        let mut next = Vec::new();
        if wire::read_line(reader, &mut next)? {
            Ok(next)
        } else {
            Err(std::io::Error::new(
                ErrorKind::UnexpectedEof,
                "the peer closed the connection",
            ))
        }
    };
    wire::parse(&line, &mut more)
}

fn prepare(stream: &TcpStream, timeout: Duration) -> std::io::Result<BufReader<TcpStream>> {
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    Ok(BufReader::new(stream.try_clone()?))
}

/// An incoming connection: its hello, then a session.
fn accepted(inner: &Arc<Inner>, mut stream: TcpStream) {
    let timeout = inner.silence_limit();
    let Ok(mut reader) = prepare(&stream, timeout) else {
        return;
    };
    let hello = match read_message(&mut reader) {
        Ok(hello) => hello,
        Err(error) => {
            tracing::debug!(%error, "a group connection sent no valid hello");
            return;
        }
    };
    if let Message::HandOver {
        version,
        fingerprint,
        to,
    } = &hello
    {
        let answer = if *version != PROTOCOL_VERSION || *fingerprint != inner.cluster.fingerprint {
            Err(format!(
                "this server runs group protocol {PROTOCOL_VERSION} with config fingerprint \
                 {:08x}: give terrace-ctl the config file the servers run",
                inner.cluster.fingerprint
            ))
        } else {
            // Long enough for the hand-over to finish.
            let _ = stream.set_write_timeout(Some(Duration::from_secs(60)));
            inner.hooks.hand_over(to.as_deref())
        };
        let reply = match answer {
            Ok(text) => Message::Done { text },
            Err(reason) => Message::Refuse { reason },
        };
        let _ = reply.write_to(&mut stream);
        return;
    }
    if let Message::Replicate(request) = hello {
        match inner.check_replicate(&request) {
            Ok(()) => {
                // The stream belongs to the shard's executor from here on; its reader holds
                // no buffered bytes (the passive sends nothing more before the first frame).
                drop(reader);
                let ready = stream
                    .set_read_timeout(None)
                    .and_then(|()| stream.set_write_timeout(None));
                match ready {
                    Ok(()) => inner.hooks.replicate(request, stream),
                    Err(error) => tracing::debug!(%error, "a replication connection failed"),
                }
            }
            Err(reason) => {
                tracing::warn!(peer = %request.from, shard = request.shard, %reason, "refused a replication stream");
                let refusal = super::replication::frame::refusal(&reason);
                let _ = std::io::Write::write_all(&mut stream, &refusal);
            }
        }
        return;
    }
    match inner.check_hello(&hello) {
        Ok(peer) => {
            let welcome = Message::Welcome {
                from: inner.me.clone(),
            };
            if welcome.write_to(&mut stream).is_ok() {
                session(inner, &peer, stream, reader);
            }
        }
        Err(reason) => {
            if let Message::Hello { from, .. } = &hello {
                inner.refused(from, reason.clone());
            } else {
                tracing::warn!(%reason, "refused a group connection");
            }
            let _ = Message::Refuse { reason }.write_to(&mut stream);
        }
    }
}

/// Dials `peer` until this server stops: handshake, session, and again after it ends.
fn dial_loop(inner: &Arc<Inner>, peer: &str) {
    let Some(member) = inner.cluster.members.iter().find(|m| m.name == peer) else {
        return;
    };
    let Some(group_port) = member.group_port else {
        return;
    };
    // Soon, not a heartbeat interval later: a peer that just started must hear from this
    // server well within its election time, or it elects itself while this one is active.
    let redial = inner.interval().min(REDIAL_MAX);
    while !inner.stopping.load(Ordering::SeqCst) {
        let addr: Option<SocketAddr> = (member.host.as_str(), group_port)
            .to_socket_addrs()
            .ok()
            .and_then(|mut addrs| addrs.next());
        let result = match addr {
            Some(addr) => dial(inner, peer, addr),
            None => Err(format!("{}:{group_port} does not resolve", member.host)),
        };
        if let Err(reason) = result {
            tracing::debug!(peer, %reason, "dialing a peer failed; retrying");
        }
        std::thread::sleep(redial);
    }
}

/// The statuses in whole lines `peer` sent that are already read in (no I/O): its last words
/// on a connection that just failed.
fn hear_buffered(inner: &Inner, peer: &str, id: u64, reader: &mut BufReader<TcpStream>) {
    let mut line = Vec::new();
    while reader.buffer().contains(&b'\n') {
        line.clear();
        if !matches!(wire::read_line(reader, &mut line), Ok(true)) {
            return;
        }
        let mut none = || Err(std::io::Error::new(ErrorKind::InvalidData, "one line"));
        if let Ok(Message::Ping { status, .. } | Message::Pong { status, .. }) =
            wire::parse(&line, &mut none)
        {
            inner.heard(peer, id, status);
        }
    }
}

/// Longest pause before a peer is dialed again.
const REDIAL_MAX: Duration = Duration::from_millis(50);

fn dial(inner: &Arc<Inner>, peer: &str, addr: SocketAddr) -> Result<(), String> {
    let timeout = inner.silence_limit();
    let mut stream = TcpStream::connect_timeout(&addr, timeout).map_err(|e| e.to_string())?;
    let mut reader = prepare(&stream, timeout).map_err(|e| e.to_string())?;
    inner
        .hello(peer)
        .write_to(&mut stream)
        .map_err(|e| e.to_string())?;
    match read_message(&mut reader).map_err(|e| e.to_string())? {
        Message::Welcome { from } if from == peer => {
            session(inner, peer, stream, reader);
            Ok(())
        }
        Message::Refuse { reason } => {
            inner.refused(peer, reason.clone());
            Err(reason)
        }
        other => Err(format!("unexpected answer to a hello: {other:?}")),
    }
}

/// Heartbeats with `peer` until it goes silent, the connection fails, a newer session
/// replaces this one, or the server stops.
fn session(inner: &Arc<Inner>, peer: &str, stream: TcpStream, mut reader: BufReader<TcpStream>) {
    let interval = inner.interval();
    let limit = inner.silence_limit();
    // Reads wake up often enough to send heartbeats on time.
    let tick = (interval / 4).max(Duration::from_millis(5));
    if let Err(error) = stream.set_read_timeout(Some(tick)) {
        tracing::debug!(peer, %error, "a group connection failed");
        return;
    }
    let writer = Arc::new(Mutex::new(stream));
    let id = inner.joined(peer, Arc::clone(&writer));
    let reason = heartbeat(inner, peer, id, (interval, limit), &writer, &mut reader);
    let _ = reader.get_ref().shutdown(std::net::Shutdown::Both);
    if !reason.is_empty() {
        inner.ended(peer, id, reason);
    }
}

/// The heartbeat loop; returns why it ended ("" when replaced or stopping, which is not a
/// departure).
fn heartbeat(
    inner: &Inner,
    peer: &str,
    id: u64,
    (interval, limit): (Duration, Duration),
    writer: &Mutex<TcpStream>,
    reader: &mut BufReader<TcpStream>,
) -> String {
    let send = |message: &Message| {
        let mut stream = writer
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        message.write_to(&mut *stream)
    };
    let mut last_heard = Instant::now();
    let mut next_ping = Instant::now();
    let mut seq = 0u64;
    let mut line = Vec::new();
    loop {
        if inner.stopping.load(Ordering::SeqCst) || !inner.is_current(peer, id) {
            return String::new();
        }
        let now = Instant::now();
        if now >= next_ping {
            let ping = Message::Ping {
                seq,
                status: inner.hooks.status(),
            };
            if let Err(error) = send(&ping) {
                hear_buffered(inner, peer, id, reader);
                return format!("connection failed: {error}");
            }
            seq += 1;
            next_ping = now + interval;
        }
        match wire::read_line(reader, &mut line) {
            Ok(true) => {
                let mut none = || {
                    Err(std::io::Error::new(
                        ErrorKind::InvalidData,
                        "a HELLO inside a session",
                    ))
                };
                match wire::parse(&line, &mut none) {
                    Ok(Message::Ping { seq, status }) => {
                        inner.heard(peer, id, status);
                        if reader.buffer().contains(&b'\n') {
                            // More came meanwhile (this process was paused): hear it all
                            // before answering; the connection may be dead, and its last
                            // words matter (an active's word that this server is no longer
                            // its standby).
                            line.clear();
                            last_heard = Instant::now();
                            continue;
                        }
                        let pong = Message::Pong {
                            seq,
                            status: inner.hooks.status(),
                        };
                        if let Err(error) = send(&pong) {
                            hear_buffered(inner, peer, id, reader);
                            return format!("connection failed: {error}");
                        }
                    }
                    Ok(Message::Pong { status, .. }) => inner.heard(peer, id, status),
                    Ok(Message::TakeOver { term }) => inner.hooks.take_over(peer, term),
                    Ok(other) => return format!("unexpected message {other:?}"),
                    Err(error) => return format!("protocol error: {error}"),
                }
                line.clear();
                last_heard = Instant::now();
            }
            Ok(false) => return "it closed the connection".into(),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(error) => return format!("connection failed: {error}"),
        }
        let silent = last_heard.elapsed();
        if silent > limit {
            return format!(
                "missed {} health checks: nothing heard for {} ms",
                inner.cluster.health_check_missed,
                silent.as_millis()
            );
        }
    }
}
