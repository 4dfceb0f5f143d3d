//! Cross-core requests: an operation on a shard another executor owns is sent to it over a
//! glommio channel mesh and its reply comes back over a second mesh.
//!
//! Two meshes, not one, because of glommio issue #555 (NOTES.md): a task that awaits a send
//! while the peer awaits a send back deadlocks. Here the request receivers never send: they
//! spawn a task per request, which runs the operation, waits for durability and sends the
//! reply; the reply receivers only hand replies to the waiting connections. So no receive
//! loop ever waits on a send, and a full channel is plain backpressure.

use super::{Durable, LocalShards, Refusal};
use crate::protocol::{Command, Limits, Meta, Parsed, parse, reply};
use crate::stats::Snapshot;
use futures_lite::future::poll_fn;
use glommio::channels::channel_mesh::{Full, MeshBuilder, Receivers, Senders};
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::task::{Poll, Waker};
use terrace_wal::constants::KEY_LEN_MAX_BYTES;
use terrace_wal::store::{Delta, SetMode};

/// An operation sent to the executor that owns its shard(s). Owns its bytes.
#[derive(Debug)]
pub enum Op {
    /// `get`/`gets` of keys that executor owns.
    Get { keys: Vec<Vec<u8>>, with_cas: bool },
    /// `gat`/`gats`.
    GetAndTouch {
        keys: Vec<Vec<u8>>,
        exptime: i64,
        with_cas: bool,
    },
    /// The set family.
    Store {
        mode: SetMode,
        key: Vec<u8>,
        flags: u32,
        exptime: i64,
        data: Vec<u8>,
    },
    /// `delete` (`count`: a client's delete, not the one after a refused `set`).
    Delete { key: Vec<u8>, count: bool },
    /// `incr`/`decr`.
    Delta { key: Vec<u8>, delta: Delta },
    /// `touch`.
    Touch { key: Vec<u8>, exptime: i64 },
    /// A meta command (`mg`, `ms`, `md`, `ma`): the request's bytes as received, parsed
    /// again there.
    Meta { request: Vec<u8> },
    /// `flush_all` on all its shards.
    FlushAll { delay: i64 },
    /// Its numbers for `stats`.
    Stats,
    /// `stats reset`.
    ResetStats,
    /// Pin its shards for an online-backup cut.
    BackupCut { cut: u64 },
    /// Release a cut.
    BackupRelease { cut: u64 },
}

impl Op {
    /// Whether it is a client's operation on stored data (what only the active runs).
    fn touches_data(&self) -> bool {
        matches!(
            self,
            Self::Get { .. }
                | Self::GetAndTouch { .. }
                | Self::Store { .. }
                | Self::Delete { .. }
                | Self::Delta { .. }
                | Self::Touch { .. }
                | Self::Meta { .. }
                | Self::FlushAll { .. }
        )
    }
}

/// What comes back.
#[derive(Debug)]
pub enum Answer {
    /// Reply bytes.
    Bytes(Vec<u8>),
    /// Reply bytes per key of a multi-key get, in the order sent.
    Parts(Vec<Vec<u8>>),
    /// Numbers for `stats`.
    Stats(Snapshot),
    /// Its shards' parts of a backup cut (`None`: refused, too many cuts held).
    Cut(Option<Vec<super::ShardCut>>),
}

/// A request on the wire between executors.
#[derive(Debug)]
pub struct Request {
    from: usize,
    id: u64,
    op: Op,
}

/// A reply on the wire between executors.
#[derive(Debug)]
pub struct Reply {
    id: u64,
    answer: Answer,
}

/// Where a reply lands.
#[derive(Debug, Default)]
pub struct Slot {
    answer: RefCell<Option<Answer>>,
    waker: RefCell<Option<Waker>>,
}

impl Slot {
    fn fill(&self, answer: Answer) {
        *self.answer.borrow_mut() = Some(answer);
        if let Some(waker) = self.waker.borrow_mut().take() {
            waker.wake();
        }
    }

    /// Waits for the answer.
    pub async fn answer(&self) -> Answer {
        poll_fn(|cx| match self.answer.borrow_mut().take() {
            Some(answer) => Poll::Ready(answer),
            None => {
                *self.waker.borrow_mut() = Some(cx.waker().clone());
                Poll::Pending
            }
        })
        .await
    }
}

/// One executor's end of the meshes.
#[derive(Debug)]
pub struct Router {
    me: usize,
    requests: Option<Senders<Request>>,
    replies: Option<Senders<Reply>>,
    pending: RefCell<HashMap<u64, Rc<Slot>>>,
    next_id: Cell<u64>,
}

impl Router {
    /// A router for a server with one executor: nothing is ever remote.
    pub fn single() -> Self {
        Self {
            me: 0,
            requests: None,
            replies: None,
            pending: RefCell::default(),
            next_id: Cell::new(0),
        }
    }

    /// This executor's index.
    pub fn me(&self) -> usize {
        self.me
    }

    /// Sends `op` to executor `to`; the slot gets the answer.
    pub async fn send(&self, to: usize, op: Op) -> Rc<Slot> {
        assert_ne!(to, self.me, "local operations are run inline");
        let slot = Rc::new(Slot::default());
        let id = self.next_id.get();
        self.next_id.set(id + 1);
        self.pending.borrow_mut().insert(id, Rc::clone(&slot));
        let sent = match &self.requests {
            Some(requests) => requests
                .send_to(
                    to,
                    Request {
                        from: self.me,
                        id,
                        op,
                    },
                )
                .await
                .is_ok(),
            None => false,
        };
        if !sent {
            self.pending.borrow_mut().remove(&id);
            let mut bytes = Vec::new();
            reply::server_error(&mut bytes, "the executor owning this key is gone");
            slot.fill(Answer::Bytes(bytes));
        }
        slot
    }

    /// Requests sent to other executors whose answer has not come back yet. An answer comes
    /// after its operation ran and became durable, `noreply` ones too.
    pub fn outstanding(&self) -> usize {
        self.pending.borrow().len()
    }

    fn deliver(&self, reply: Reply) {
        match self.pending.borrow_mut().remove(&reply.id) {
            Some(slot) => slot.fill(reply.answer),
            None => tracing::error!(id = reply.id, "reply for no pending request"),
        }
    }
}

/// This executor's ends of the two meshes, joined but not serving yet.
pub struct Joined {
    requests: (Senders<Request>, Receivers<Request>),
    replies: (Senders<Reply>, Receivers<Reply>),
}

impl std::fmt::Debug for Joined {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Joined").finish_non_exhaustive()
    }
}

/// Joins the meshes. Every executor must call this (it waits for all of them), before
/// anything that could fail and leave the others waiting.
pub async fn join(
    request_mesh: MeshBuilder<Request, Full>,
    reply_mesh: MeshBuilder<Reply, Full>,
) -> Result<Joined, String> {
    let requests = request_mesh
        .join()
        .await
        .map_err(|e| format!("joining the request mesh failed: {e}"))?;
    let replies = reply_mesh
        .join()
        .await
        .map_err(|e| format!("joining the reply mesh failed: {e}"))?;
    Ok(Joined { requests, replies })
}

impl Joined {
    /// Starts serving requests from, and replies of, every other executor.
    pub fn serve(self, shards: &Rc<LocalShards>) -> Rc<Router> {
        let (request_senders, request_receivers) = self.requests;
        let (reply_senders, reply_receivers) = self.replies;
        let router = Rc::new(Router {
            me: request_senders.peer_id(),
            requests: Some(request_senders),
            replies: Some(reply_senders),
            pending: RefCell::default(),
            next_id: Cell::new(0),
        });
        serve_requests(request_receivers, &router, shards);
        serve_replies(reply_receivers, &router);
        router
    }
}

fn serve_requests(
    mut receivers: Receivers<Request>,
    router: &Rc<Router>,
    shards: &Rc<LocalShards>,
) {
    for (_, receiver) in receivers.streams() {
        let (router, shards) = (Rc::clone(router), Rc::clone(shards));
        glommio::spawn_local(async move {
            while let Some(request) = receiver.recv().await {
                let (router, shards) = (Rc::clone(&router), Rc::clone(&shards));
                // A task per request: the receive loop never waits on durability or a send.
                glommio::spawn_local(async move {
                    let answer = execute(&shards, request.op).await;
                    if let Some(replies) = &router.replies {
                        let reply = Reply {
                            id: request.id,
                            answer,
                        };
                        if replies.send_to(request.from, reply).await.is_err() {
                            tracing::debug!(to = request.from, "reply channel closed");
                        }
                    }
                })
                .detach();
            }
        })
        .detach();
    }
}

fn serve_replies(mut receivers: Receivers<Reply>, router: &Rc<Router>) {
    for (_, receiver) in receivers.streams() {
        let router = Rc::clone(router);
        glommio::spawn_local(async move {
            while let Some(reply) = receiver.recv().await {
                router.deliver(reply);
            }
        })
        .detach();
    }
}

/// The reply to a client operation that reached a shard after this server stopped being
/// the active.
pub const NO_LONGER_ACTIVE: &str = "this server stopped being the active of its mirror group \
     before the request reached its shard; it was not run: retry on the new active";

/// Runs `op` on this executor's shards and waits until its effects are durable.
pub(super) async fn execute(shards: &LocalShards, op: Op) -> Answer {
    // The sender checked that this server is the active, but the request may have waited
    // (a full channel) while it stepped down: a passive's log must stay a copy of its
    // active's, so a client operation arriving now is not run.
    if op.touches_data() && !shards.serving() {
        let mut bytes = Vec::new();
        reply::server_error(&mut bytes, NO_LONGER_ACTIVE);
        return Answer::Bytes(bytes);
    }
    let mut waits: Vec<Durable> = Vec::new();
    let answer = match op {
        Op::Get { keys, with_cas } => Answer::Parts(
            keys.iter()
                .map(|key| {
                    let mut out = Vec::new();
                    // Copied: the answer crosses to another thread.
                    waits.extend(shards.get(key, with_cas, &mut out, None));
                    out
                })
                .collect(),
        ),
        Op::GetAndTouch {
            keys,
            exptime,
            with_cas,
        } => Answer::Parts(
            keys.iter()
                .map(|key| {
                    let mut out = Vec::new();
                    match shards.get_and_touch(key, exptime, with_cas, &mut out, None) {
                        Ok(wait) => waits.extend(wait),
                        Err(mut refusal) => {
                            waits.extend(refusal.wait.take());
                            out = refusal_bytes(refusal);
                        }
                    }
                    out
                })
                .collect(),
        ),
        Op::Store {
            mode,
            key,
            flags,
            exptime,
            data,
        } => one(&mut waits, |out| {
            shards.store(mode, &key, flags, exptime, &data, out)
        }),
        Op::Delete { key, count } => one(&mut waits, |out| shards.delete(&key, count, out)),
        Op::Delta { key, delta } => one(&mut waits, |out| shards.delta(&key, delta, out)),
        Op::Touch { key, exptime } => one(&mut waits, |out| shards.touch(&key, exptime, out)),
        Op::Meta { request } => match parse_meta(&request) {
            Some(meta) => {
                let mut key_buf = [0u8; KEY_LEN_MAX_BYTES];
                let key = meta.key(&mut key_buf);
                one(&mut waits, |out| shards.meta(&meta, key, out, None))
            }
            None => {
                let mut bytes = Vec::new();
                reply::server_error(&mut bytes, "a forwarded meta request did not parse");
                Answer::Bytes(bytes)
            }
        },
        Op::FlushAll { delay } => match shards.flush_all(delay) {
            Ok(flushed) => {
                waits = flushed;
                Answer::Bytes(reply::OK.to_vec())
            }
            Err(refusal) => Answer::Bytes(refusal_bytes(refusal)),
        },
        Op::Stats => Answer::Stats(shards.snapshot()),
        Op::ResetStats => {
            shards.counters.reset();
            Answer::Bytes(reply::RESET.to_vec())
        }
        Op::BackupCut { cut } => match shards.pin_for_backup(cut) {
            Some(durable) => {
                for wait in &durable {
                    if let Err(error) = wait.wait().await {
                        let mut bytes = Vec::new();
                        reply::server_error(
                            &mut bytes,
                            &format!("backup cut not durable: {error}"),
                        );
                        return Answer::Bytes(bytes);
                    }
                }
                Answer::Cut(Some(shards.describe_cut(cut)))
            }
            None => Answer::Cut(None),
        },
        Op::BackupRelease { cut } => {
            shards.release_backup(cut);
            Answer::Bytes(Vec::new())
        }
    };
    for wait in &waits {
        if let Err(error) = wait.wait().await {
            let mut bytes = Vec::new();
            reply::server_error(&mut bytes, &format!("data not durable: {error}"));
            return Answer::Bytes(bytes);
        }
    }
    answer
}

/// The meta request in `request`, as the executor that sent it parsed it (its value size
/// was checked there).
fn parse_meta(request: &[u8]) -> Option<Meta<'_>> {
    let limits = Limits {
        item_size_max_bytes: usize::MAX,
    };
    match parse(request, &limits) {
        Parsed::Request {
            command: Command::Meta(meta),
            ..
        } => Some(meta),
        _ => None,
    }
}

fn one(
    waits: &mut Vec<Durable>,
    run: impl FnOnce(&mut Vec<u8>) -> Result<Option<Durable>, Refusal>,
) -> Answer {
    let mut out = Vec::new();
    match run(&mut out) {
        Ok(wait) => waits.extend(wait),
        Err(mut refusal) => {
            waits.extend(refusal.wait.take());
            out = refusal_bytes(refusal);
        }
    }
    Answer::Bytes(out)
}

/// The reply of a refusal, logging a failed shard.
pub fn refusal_bytes(refusal: Refusal) -> Vec<u8> {
    if refusal.failed {
        tracing::error!(reply = %String::from_utf8_lossy(&refusal.reply).trim_end(), "write refused");
    }
    refusal.reply
}
