//! The vendored glommio's reactor keeps its preemption timers armed across passes instead of
//! re-arming them every time (third_party/glommio.patch). Whatever it keeps, an executor must
//! never sleep through a timer: the server's replication inbox, health checks and flush_all
//! delays all wait on timers while the executor is otherwise idle.
//!
//! The patch also replaced the `membarrier` an executor issued before every sleep by a pair of
//! fences (one there, one in every remote notifier), and submits the request that links its
//! rings and waits in one system call: an executor must still wake for work that another
//! thread hands it just as it goes to sleep.
#![allow(clippy::expect_used, clippy::unwrap_used, reason = "tests")]

use glommio::channels::shared_channel;
use glommio::{LocalExecutorBuilder, Placement};
use std::future::poll_fn;
use std::sync::{Arc, Mutex, mpsc};
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

/// Runs `rounds` idle sleeps on one executor, each sleep's length taken from `pattern`, in a
/// thread; returns how long they took, or `None` if they did not end within `limit`.
fn timed_sleeps(rounds: u32, pattern: fn(u32) -> Duration, limit: Duration) -> Option<Duration> {
    let (done_tx, done_rx) = mpsc::channel();
    let executor = LocalExecutorBuilder::new(Placement::Unbound)
        .name("timer-test")
        .spawn(move || async move {
            let start = Instant::now();
            for round in 0..rounds {
                // A little work between sleeps, so that a task queue ran and the reactor
                // armed a preemption timer before the executor goes idle.
                let busy_until = Instant::now() + Duration::from_micros(20);
                while Instant::now() < busy_until {
                    std::hint::spin_loop();
                }
                glommio::yield_if_needed().await;
                glommio::timer::sleep(pattern(round)).await;
            }
            let _ = done_tx.send(start.elapsed());
        })
        .expect("start an executor");
    let took = done_rx.recv_timeout(limit).ok();
    if took.is_some() {
        executor.join().expect("executor thread");
    }
    // A hung executor is left behind: the test fails and the process ends with it.
    took
}

#[test]
fn short_timers_wake_an_idle_executor() {
    // Timers shorter than a system call: they fire while the reactor is still preparing to
    // sleep, or just after it last looked, which is where a lost wake-up would hide. Four
    // executors at once, so that the host's scheduling widens those windows. (The lost
    // wake-up fixed in glommio's `run_task_queues` showed in about one in nine of these
    // tests run as four processes at once, and not at all alone: so this can pass with a
    // bug of that kind; stress it with `for i in $(seq 20); do ... & done`.)
    let runs: Vec<_> = (0..4)
        .map(|_| {
            std::thread::spawn(|| {
                timed_sleeps(
                    5_000,
                    |round| Duration::from_micros(u64::from(round % 20)),
                    Duration::from_secs(60),
                )
            })
        })
        .collect();
    for run in runs {
        assert!(
            run.join().expect("test thread").is_some(),
            "an executor slept through a short timer (5000 sleeps of 0-19 µs did not end in 60 s)"
        );
    }
}

#[test]
fn timers_of_mixed_lengths_all_fire() {
    // Lengths on both sides of the 100 ms preemption slice, so that a kept preemption timer
    // both serves (it fires sooner) and must be replaced (it fires later).
    let pattern = |round: u32| match round % 4 {
        0 => Duration::from_millis(1),
        1 => Duration::from_micros(300),
        2 => Duration::from_millis(5),
        _ => Duration::from_millis(120),
    };
    let took = timed_sleeps(40, pattern, Duration::from_secs(60))
        .expect("an executor slept through a timer (40 sleeps did not end in 60 s)");
    // Their sum is a lower bound: no timer fires early.
    let least: Duration = (0..40).map(pattern).sum();
    assert!(
        took >= least,
        "40 sleeps took {took:?}, less than their {least:?}"
    );
}

/// Round trips of the wake-up tests: each one puts both sides to sleep and wakes them from
/// the other thread, which is where a lost wake-up would hang.
const ROUND_TRIPS: u64 = 20_000;

#[test]
fn executors_wake_each_other_through_shared_channels() {
    // Two executors play ping-pong over bounded shared channels (the server's cores talk over
    // such channels): each waits for the other's message with nothing else to do, so it goes
    // to sleep and must be woken by the other core's send. Nothing else (no timer) would wake
    // it: a lost wake-up hangs the game.
    let (ping_tx, ping_rx) = shared_channel::new_bounded::<u64>(1);
    let (pong_tx, pong_rx) = shared_channel::new_bounded::<u64>(1);
    let (done_tx, done_rx) = mpsc::channel();
    let server = LocalExecutorBuilder::new(Placement::Unbound)
        .name("pong")
        .spawn(move || async move {
            let ping_rx = ping_rx.connect().await;
            let pong_tx = pong_tx.connect().await;
            while let Some(n) = ping_rx.recv().await {
                if pong_tx.send(n + 1).await.is_err() {
                    break;
                }
            }
        })
        .expect("start an executor");
    let client = LocalExecutorBuilder::new(Placement::Unbound)
        .name("ping")
        .spawn(move || async move {
            let ping_tx = ping_tx.connect().await;
            let pong_rx = pong_rx.connect().await;
            for n in 0..ROUND_TRIPS {
                ping_tx.send(n).await.expect("pong is there");
                assert_eq!(pong_rx.recv().await, Some(n + 1));
            }
            let _ = done_tx.send(());
        })
        .expect("start an executor");
    assert!(
        done_rx.recv_timeout(Duration::from_secs(120)).is_ok(),
        "an executor slept through a message from the other ({ROUND_TRIPS} round trips did \
         not end in 120 s)"
    );
    client.join().expect("ping executor");
    server.join().expect("pong executor");
}

/// A one-value mailbox between a plain thread and a task: the thread's `put` wakes the task
/// through its waker, from outside the executor (glommio's foreign wake-up path).
#[derive(Default)]
struct Mailbox {
    slot: Mutex<(Option<u64>, Option<Waker>)>,
}

impl Mailbox {
    fn put(&self, value: u64) {
        let waker = {
            let mut slot = self.slot.lock().expect("mailbox lock");
            slot.0 = Some(value);
            slot.1.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    async fn take(&self) -> u64 {
        poll_fn(|cx| {
            let mut slot = self.slot.lock().expect("mailbox lock");
            match slot.0.take() {
                Some(value) => Poll::Ready(value),
                None => {
                    slot.1 = Some(cx.waker().clone());
                    Poll::Pending
                }
            }
        })
        .await
    }
}

#[test]
fn a_plain_thread_wakes_a_sleeping_executor() {
    let to_executor = Arc::new(Mailbox::default());
    let (reply_tx, reply_rx) = mpsc::channel::<u64>();
    let inbox = Arc::clone(&to_executor);
    let executor = LocalExecutorBuilder::new(Placement::Unbound)
        .name("foreign-wake")
        .spawn(move || async move {
            for _ in 0..ROUND_TRIPS {
                let n = inbox.take().await;
                if reply_tx.send(n + 1).is_err() {
                    break;
                }
            }
        })
        .expect("start an executor");
    for n in 0..ROUND_TRIPS {
        to_executor.put(n);
        let reply = reply_rx.recv_timeout(Duration::from_secs(60));
        assert_eq!(
            reply,
            Ok(n + 1),
            "round trip {n}: the executor slept through a wake-up from another thread"
        );
    }
    executor.join().expect("executor thread");
}
