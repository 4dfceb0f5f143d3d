//! The load: one glommio executor per thread, each driving its share of the connections in a
//! closed loop, each connection keeping `pipeline` requests in flight.

use super::keys::KeyChooser;
use super::options::{Plan, Stop};
use super::schedule::Schedule;
use super::tally::Tally;
use super::wire::{self, Op, Outcome};
use futures_lite::{AsyncReadExt as _, AsyncWriteExt as _};
use glommio::net::TcpStream;
use glommio::{LocalExecutorBuilder, Placement};
use rand::rngs::SmallRng;
use rand::{Rng as _, SeedableRng as _};
use std::cell::RefCell;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Locked memory each load executor registers with io_uring.
const EXECUTOR_IO_MEMORY_BYTES: usize = 1 << 20;
/// Bytes read from a socket at a time.
const READ_CHUNK_BYTES: usize = 64 << 10;
/// Pause before reconnecting after a connection failed.
const RECONNECT_PAUSE: Duration = Duration::from_millis(100);

/// What every connection of a run shares, across threads.
#[derive(Debug)]
pub struct Progress {
    /// Replies (and errors) so far, measured or not.
    pub done: AtomicU64,
    /// Set when a connection gave up: the run stops.
    pub failed: AtomicBool,
}

/// The time frame of one run.
#[derive(Debug, Clone, Copy)]
struct Window {
    /// When the run started (open-loop schedules count from here).
    start: Instant,
    /// Requests sent from here on are measured.
    measure_from: Instant,
    /// No batch is sent from here on (duration runs).
    stop_at: Option<Instant>,
}

/// One connection's part of the work.
#[derive(Debug, Clone)]
struct Connection {
    index: usize,
    addr: SocketAddr,
    /// Requests to send (request-count runs).
    quota: Option<u64>,
}

/// The result of one run against one server.
#[derive(Debug)]
pub struct RunResult {
    pub tally: Tally,
    /// Measured time: the duration, or start to last reply of a request-count run.
    pub elapsed: Duration,
    /// Why the run stopped early, if it did.
    pub failure: Option<String>,
}

/// Runs the plan's workload against `addr` and waits for it to finish.
pub fn run(plan: &Plan, addr: SocketAddr, progress: &Arc<Progress>) -> Result<RunResult, String> {
    let start = Instant::now();
    let window = match plan.stop {
        Stop::Duration { warmup, measure } => Window {
            start,
            measure_from: start + warmup,
            stop_at: Some(start + warmup + measure),
        },
        Stop::Requests(_) => Window {
            start,
            measure_from: start,
            stop_at: None,
        },
    };
    let connections: Vec<Connection> = (0..plan.connections)
        .map(|index| Connection {
            index,
            addr,
            quota: match plan.stop {
                Stop::Requests(n) => {
                    let share = n / plan.connections as u64;
                    Some(share + u64::from((index as u64) < n % plan.connections as u64))
                }
                Stop::Duration { .. } => None,
            },
        })
        .collect();
    let mut handles = Vec::new();
    for thread in 0..plan.threads {
        let mine: Vec<Connection> = connections
            .iter()
            .filter(|c| c.index % plan.threads == thread)
            .cloned()
            .collect();
        let placement = match &plan.cpus {
            Some(cpus) => Placement::Fixed(cpus[thread]),
            None => Placement::Unbound,
        };
        let plan = plan.clone();
        let progress = Arc::clone(progress);
        let handle = LocalExecutorBuilder::new(placement)
            .name(&format!("bench-{thread}"))
            .io_memory(EXECUTOR_IO_MEMORY_BYTES)
            .spawn(move || drive_all(plan, mine, window, progress))
            .map_err(|e| {
                format!(
                    "cannot start load thread {thread}: {e} (if it says memlock: raise `ulimit -l`)"
                )
            })?;
        handles.push(handle);
    }
    let mut tally = Tally::new();
    let mut failure = None;
    let mut last_reply = start;
    for handle in handles {
        let (thread_tally, thread_failure, thread_last) = handle
            .join()
            .map_err(|e| format!("a load thread failed: {e}"))?;
        tally.merge(&thread_tally);
        failure = failure.or(thread_failure);
        last_reply = last_reply.max(thread_last);
    }
    let elapsed = match plan.stop {
        Stop::Duration { measure, .. } => measure,
        Stop::Requests(_) => last_reply.duration_since(start),
    };
    Ok(RunResult {
        tally,
        elapsed,
        failure,
    })
}

type ThreadResult = (Tally, Option<String>, Instant);

async fn drive_all(
    plan: Plan,
    connections: Vec<Connection>,
    window: Window,
    progress: Arc<Progress>,
) -> ThreadResult {
    let tally = Rc::new(RefCell::new(Tally::new()));
    let plan = Rc::new(plan);
    let tasks: Vec<_> = connections
        .into_iter()
        .map(|connection| {
            glommio::spawn_local(drive(
                Rc::clone(&plan),
                connection,
                window,
                Rc::clone(&tally),
                Arc::clone(&progress),
            ))
        })
        .collect();
    let mut failure = None;
    let mut last_reply = Instant::now();
    for task in tasks {
        let (connection_failure, last) = task.await;
        failure = failure.or(connection_failure);
        last_reply = last_reply.max(last);
    }
    let tally = tally.borrow().clone();
    (tally, failure, last_reply)
}

/// Per-connection request generation: which op, which key, which value.
struct Generator {
    rng: SmallRng,
    keys: KeyChooser,
    value: Vec<u8>,
    key: Vec<u8>,
}

impl Generator {
    fn new(plan: &Plan, index: usize) -> Self {
        let (_, value_max) = plan.value_size;
        Self {
            rng: SmallRng::seed_from_u64(0x7e44ace ^ index as u64),
            keys: KeyChooser::new(plan.key_pattern, plan.keys, index, plan.connections),
            // Printable bytes, varied so that no layer can compress them away.
            value: (0..value_max).map(|i| b'a' + (i % 26) as u8).collect(),
            key: Vec::with_capacity(32),
        }
    }

    fn request(&mut self, plan: &Plan, out: &mut Vec<u8>) -> Op {
        let (sets, gets) = plan.ratio;
        let op = if self.rng.random_range(0..sets + gets) < sets {
            Op::Set
        } else {
            Op::Get
        };
        let key = self.keys.next(&mut self.rng);
        self.key.clear();
        super::keys::write_key(key, &mut self.key);
        let (low, high) = plan.value_size;
        let len = if low == high {
            low
        } else {
            self.rng.random_range(low..=high)
        };
        wire::encode(plan.protocol, op, &self.key, &self.value[..len], out);
        op
    }
}

/// How one batch ended.
enum BatchEnd {
    /// Every reply arrived.
    Answered,
    /// The connection broke; this many requests of the batch got no reply.
    Broken { unanswered: u64 },
}

/// Drives one connection until the run ends; returns why it gave up (if it did) and when its
/// last reply arrived.
async fn drive(
    plan: Rc<Plan>,
    connection: Connection,
    window: Window,
    tally: Rc<RefCell<Tally>>,
    progress: Arc<Progress>,
) -> (Option<String>, Instant) {
    if let Some(rate) = plan.rate {
        return drive_open(plan, connection, window, tally, progress, rate).await;
    }
    let mut generator = Generator::new(&plan, connection.index);
    let mut remaining = connection.quota;
    let mut last_reply = Instant::now();
    let mut ops: Vec<Op> = Vec::with_capacity(plan.pipeline);
    let mut out: Vec<u8> = Vec::new();
    let mut input: Vec<u8> = Vec::new();
    'connect: loop {
        let ended = || finished(&window, remaining, &progress);
        let mut stream = match connect(&plan, connection.addr, &tally, &progress, ended).await {
            Ok(stream) => stream,
            Err(why) => return (why, last_reply),
        };
        let _ = stream.set_read_timeout(Some(plan.timeout));
        input.clear();
        loop {
            if finished(&window, remaining, &progress) {
                return (None, last_reply);
            }
            let batch = remaining.map_or(plan.pipeline as u64, |r| r.min(plan.pipeline as u64));
            out.clear();
            ops.clear();
            for _ in 0..batch {
                ops.push(generator.request(&plan, &mut out));
            }
            if let Some(r) = remaining.as_mut() {
                *r -= batch;
            }
            let sent = Instant::now();
            let measured = sent >= window.measure_from;
            let end = exchange(&plan, &mut stream, &out, &ops, &mut input, |op, outcome| {
                let now = Instant::now();
                last_reply = now;
                if measured {
                    tally
                        .borrow_mut()
                        .record(op, outcome, now.duration_since(sent));
                }
            })
            .await;
            progress.done.fetch_add(batch, Ordering::Relaxed);
            if let Err((why, BatchEnd::Broken { unanswered })) = end {
                if measured {
                    let mut tally = tally.borrow_mut();
                    for _ in 0..unanswered {
                        tally.error(why.clone());
                    }
                }
                glommio::timer::sleep(RECONNECT_PAUSE).await;
                continue 'connect;
            }
        }
    }
}

/// Opens a connection, retrying after a pause while it fails. `Err(None)`: the run ended
/// first (`ended()`); `Err(Some(why))`: connecting failed for longer than the timeout, and the
/// whole run stops.
async fn connect(
    plan: &Plan,
    addr: SocketAddr,
    tally: &RefCell<Tally>,
    progress: &Progress,
    ended: impl Fn() -> bool,
) -> Result<TcpStream, Option<String>> {
    let mut failing_since: Option<Instant> = None;
    loop {
        if ended() {
            return Err(None);
        }
        match TcpStream::connect(addr).await {
            Ok(stream) => {
                // A socket option that cannot be set only makes the numbers worse; go on.
                let _ = stream.set_nodelay(true);
                return Ok(stream);
            }
            Err(e) => {
                let since = *failing_since.get_or_insert_with(Instant::now);
                tally.borrow_mut().error(format!("connect: {e}"));
                if since.elapsed() > plan.timeout {
                    progress.failed.store(true, Ordering::Relaxed);
                    return Err(Some(format!(
                        "cannot connect to {addr} for {:?}: {e}",
                        plan.timeout
                    )));
                }
                glommio::timer::sleep(RECONNECT_PAUSE).await;
            }
        }
    }
}

/// Requests one open-loop connection may have in flight; past it, sending waits (and the
/// requests it holds back are measured from their intended times all the same).
const OPEN_LOOP_IN_FLIGHT_MAX: usize = 10_000;

/// Drives one connection open loop: sends each request at its intended time whatever the
/// replies do, and measures latency from the intended time.
async fn drive_open(
    plan: Rc<Plan>,
    connection: Connection,
    window: Window,
    tally: Rc<RefCell<Tally>>,
    progress: Arc<Progress>,
    rate: f64,
) -> (Option<String>, Instant) {
    let per_connection = rate / plan.connections as f64;
    let phase = connection.index as f64 / plan.connections as f64;
    let mut schedule = Schedule::new(window.start, per_connection, phase);
    let mut generator = Generator::new(&plan, connection.index);
    let mut remaining = connection.quota;
    let mut last_reply = Instant::now();
    // (operation, intended send time, actual send time)
    let mut in_flight: VecDeque<(Op, Instant, Instant)> = VecDeque::new();
    let mut out: Vec<u8> = Vec::new();
    let mut input: Vec<u8> = Vec::new();
    let sending_over = |schedule: &Schedule, remaining: Option<u64>| {
        progress.failed.load(Ordering::Relaxed)
            || remaining == Some(0)
            || window
                .stop_at
                .is_some_and(|stop| schedule.next_due() >= stop)
    };
    // Every request sent gets exactly one outcome: a reply, or an error when its connection
    // fails.
    let fail_all = |in_flight: &mut VecDeque<(Op, Instant, Instant)>, why: &str| {
        let mut tally = tally.borrow_mut();
        for (_, intended, _) in in_flight.drain(..) {
            if intended >= window.measure_from {
                tally.error(why.to_string());
            }
            progress.done.fetch_add(1, Ordering::Relaxed);
        }
    };
    'connect: loop {
        let ended = || sending_over(&schedule, remaining);
        let mut stream = match connect(&plan, connection.addr, &tally, &progress, ended).await {
            Ok(stream) => stream,
            Err(why) => return (why, last_reply),
        };
        input.clear();
        loop {
            let now = Instant::now();
            out.clear();
            while !sending_over(&schedule, remaining) && in_flight.len() < OPEN_LOOP_IN_FLIGHT_MAX {
                let Some(intended) = schedule.take_due(now) else {
                    break;
                };
                in_flight.push_back((generator.request(&plan, &mut out), intended, now));
                if let Some(r) = remaining.as_mut() {
                    *r -= 1;
                }
            }
            if !out.is_empty()
                && let Err(e) = stream.write_all(&out).await
            {
                fail_all(&mut in_flight, &describe("write", &e));
                glommio::timer::sleep(RECONNECT_PAUSE).await;
                continue 'connect;
            }
            // Every whole reply already here.
            let mut start = 0;
            loop {
                match wire::parse_reply(plan.protocol, &input[start..]) {
                    Ok(Some((len, outcome))) => {
                        let Some((op, intended, _)) = in_flight.pop_front() else {
                            fail_all(&mut in_flight, "a reply to no request");
                            continue 'connect;
                        };
                        let now = Instant::now();
                        last_reply = now;
                        if intended >= window.measure_from {
                            tally.borrow_mut().record(
                                op,
                                outcome,
                                now.saturating_duration_since(intended),
                            );
                        }
                        progress.done.fetch_add(1, Ordering::Relaxed);
                        start += len;
                    }
                    Ok(None) => break,
                    Err(wire::Garbage(what)) => {
                        fail_all(&mut in_flight, &format!("garbage reply: {what}"));
                        glommio::timer::sleep(RECONNECT_PAUSE).await;
                        continue 'connect;
                    }
                }
            }
            input.drain(..start);
            let over = sending_over(&schedule, remaining);
            if over && in_flight.is_empty() {
                return (None, last_reply);
            }
            // Wait for replies, until the next send is due or the oldest request times out.
            let now = Instant::now();
            // A reply is late after --timeout from when its request actually went out.
            let oldest_deadline = in_flight.front().map(|&(_, _, sent)| sent + plan.timeout);
            if oldest_deadline.is_some_and(|deadline| deadline <= now) {
                fail_all(
                    &mut in_flight,
                    &format!("no reply within {:?}", plan.timeout),
                );
                continue 'connect;
            }
            let next_send = (!over).then(|| schedule.next_due());
            let wake_at = match (next_send, oldest_deadline) {
                (Some(a), Some(b)) => a.min(b),
                (Some(a), None) => a,
                (None, Some(b)) => b,
                (None, None) => now,
            };
            if wake_at <= now {
                continue;
            }
            let filled = input.len();
            let read = futures_lite::future::or(
                async { Some(read_more(&mut stream, &mut input, plan.timeout).await) },
                async {
                    glommio::timer::sleep(wake_at - now).await;
                    None
                },
            )
            .await;
            match read {
                // Time to send: the read was abandoned before it took any bytes.
                None => input.truncate(filled),
                Some(Ok(())) => {}
                Some(Err(why)) => {
                    fail_all(&mut in_flight, &why);
                    glommio::timer::sleep(RECONNECT_PAUSE).await;
                    continue 'connect;
                }
            }
        }
    }
}

fn finished(window: &Window, remaining: Option<u64>, progress: &Progress) -> bool {
    progress.failed.load(Ordering::Relaxed)
        || remaining == Some(0)
        || window.stop_at.is_some_and(|stop| Instant::now() >= stop)
}

/// Writes one batch and reads its replies, calling `record` for each in order.
async fn exchange(
    plan: &Plan,
    stream: &mut TcpStream,
    out: &[u8],
    ops: &[Op],
    input: &mut Vec<u8>,
    mut record: impl FnMut(Op, Outcome),
) -> Result<BatchEnd, (String, BatchEnd)> {
    let broken = |why: String, answered: usize| {
        Err((
            why,
            BatchEnd::Broken {
                unanswered: (ops.len() - answered) as u64,
            },
        ))
    };
    if let Err(e) = stream.write_all(out).await {
        return broken(describe("write", &e), 0);
    }
    let mut answered = 0;
    let mut start = 0;
    while answered < ops.len() {
        match wire::parse_reply(plan.protocol, &input[start..]) {
            Ok(Some((len, outcome))) => {
                record(ops[answered], outcome);
                answered += 1;
                start += len;
            }
            Ok(None) => {
                input.drain(..start);
                start = 0;
                if let Err(why) = read_more(stream, input, plan.timeout).await {
                    return broken(why, answered);
                }
            }
            Err(wire::Garbage(what)) => {
                input.clear();
                return broken(format!("garbage reply: {what}"), answered);
            }
        }
    }
    input.drain(..start);
    Ok(BatchEnd::Answered)
}

/// Reads what the socket holds onto the end of `input`. `Err` says why the connection cannot
/// be used any more: closed, reset, or silent for `timeout`.
async fn read_more(
    stream: &mut TcpStream,
    input: &mut Vec<u8>,
    timeout: Duration,
) -> Result<(), String> {
    let filled = input.len();
    input.resize(filled + READ_CHUNK_BYTES, 0);
    let read = stream.read(&mut input[filled..]).await;
    input.truncate(filled + read.as_ref().map_or(0, |&n| n));
    match read {
        Ok(0) => Err("connection closed by the server".into()),
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {
            Err(format!("no reply within {timeout:?}"))
        }
        Err(e) => Err(describe("read", &e)),
    }
}

/// What a failed socket operation means to the person reading the report: a reset or a broken
/// pipe is the server closing the connection, however the kernel learnt it.
fn describe(op: &str, error: &std::io::Error) -> String {
    use std::io::ErrorKind::{BrokenPipe, ConnectionAborted, ConnectionReset};
    match error.kind() {
        ConnectionReset | BrokenPipe | ConnectionAborted => {
            format!("connection closed by the server ({op}: {error})")
        }
        _ => format!("{op}: {error}"),
    }
}
