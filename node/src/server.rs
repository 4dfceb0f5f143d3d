//! Start-up and shutdown: one pinned glommio executor per core, each owning its shards,
//! listening on the client port (SO_REUSEPORT), and serving the other executors' requests.
//!
//! Shutdown (SIGTERM/SIGINT): every executor stops accepting and ends its connections after
//! their in-flight requests; once all executors are there (other executors' connections may
//! still route requests to this one's shards, so it keeps serving those until then), each
//! syncs its shards and exits. The process exits 0.

use crate::cluster::group::ShardSync;
use crate::config::{Persistence, Settings};
use crate::constants::{EXECUTOR_IO_MEMORY_BYTES, MESH_CHANNEL_CAPACITY, SHUTDOWN_POLL_MILLIS};
use crate::data_dir::DataDir;
use crate::net::{Executor, LocalStop, Shared};
use crate::protocol::Limits;
use crate::shard::clock::ServerClock;
use crate::shard::route::{self, Reply, Request, Router};
use crate::shard::{LocalShards, ShardStore, Topology};
use glommio::channels::channel_mesh::{Full, MeshBuilder};
use glommio::net::TcpListener;
use glommio::{LocalExecutorBuilder, Placement};
use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::path::Path;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, SystemTime};
use terrace_wal::log::{Durability, LogConfig, RecoveryPolicy};
use terrace_wal::storage::FsStorage;
use terrace_wal::store::{
    CompactionConfig, CompactionMode, StoreConfig, WhenFull, spawn_compactor,
};

/// Start-up options that are not in the config.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Allow the `debugtime` command (tests).
    pub enable_debugtime: bool,
    /// Allow the `shutdown` command.
    pub enable_shutdown: bool,
}

/// Why the server could not start or stopped abnormally.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// A start-up check failed.
    #[error(transparent)]
    Preflight(#[from] crate::preflight::PreflightError),
    /// The data dir cannot be used.
    #[error(transparent)]
    DataDir(#[from] crate::data_dir::DataDirError),
    /// The mirror group's recorded terms cannot be read.
    #[error("{0}")]
    Group(String),
    /// The mirror group's membership could not start.
    #[error(transparent)]
    Cluster(#[from] crate::cluster::ClusterError),
    /// Binding the client port failed.
    #[error("cannot listen on {addr}: {source}; pick a free port (--listen) or stop what uses it")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// An executor failed.
    #[error("executor {executor}: {message}")]
    Executor {
        /// Which.
        executor: usize,
        /// What happened.
        message: String,
    },
}

/// State every executor thread sees, for shutdown.
#[derive(Debug)]
struct Control {
    /// Set by SIGTERM/SIGINT, or by the `shutdown` command.
    stopping: Arc<AtomicBool>,
    /// Executors whose connections have ended.
    drained: AtomicUsize,
}

/// Measures a disk flush in `dir` (a data dir whose shard count this start fixes) and logs
/// it. Advisory: a failed probe is logged, not fatal (the logs' own fsyncs decide whether the
/// disk works).
fn probe_flush(dir: &Path) -> Option<Duration> {
    match crate::preflight::measure_flush(dir) {
        Ok(flush) => {
            tracing::info!(
                data = %dir.display(),
                fdatasync_us = flush.as_micros() as u64,
                "new data dir: a 4 KiB write + fdatasync there takes {} us (median of {})",
                flush.as_micros(),
                crate::constants::FLUSH_PROBE_ROUNDS
            );
            Some(flush)
        }
        Err(error) => {
            tracing::warn!(
                data = %dir.display(),
                %error,
                "cannot measure a disk flush in the new data dir"
            );
            None
        }
    }
}

/// Opens the data dir, choosing its shard count when `storage.shards = "auto"` fixes it now
/// (README, "Choosing storage.shards"), and says what an operator should know about the
/// count: its choice, a configured count that is a poor fit for the disk, cores left without
/// a shard.
fn open_data_dir(settings: &Settings, executors: usize) -> Result<DataDir, ServerError> {
    let durable = settings.persistence == Persistence::PermanentStore;
    // Measured once, when the count is chosen or fixed by this start.
    let mut flush = None;
    let data = DataDir::open(settings, |dir| {
        let measured = durable.then(|| probe_flush(dir));
        flush = measured;
        let few_logs = durable && crate::preflight::flush_is_slow(measured.flatten());
        let capacity_shards =
            settings.capacity_bytes / (4 * settings.segment_size_bytes as u64).max(1);
        let shards = crate::preflight::auto_shards(few_logs, executors, capacity_shards);
        let why = match (durable, few_logs) {
            (false, _) => "temporary-swap-only: nothing is synced",
            (true, true) => {
                "permanent-store on a disk whose flush is slow: each log syncs on its own"
            }
            (true, false) => {
                "permanent-store on a disk whose flush is fast: syncs of several logs overlap"
            }
        };
        tracing::info!(
            shards,
            cores = executors,
            "storage.shards = \"auto\" chose {shards} (cores: {executors}; {why}); the count \
             is fixed for this data dir"
        );
        shards
    })?;
    if durable && data.created() {
        let flush = flush.unwrap_or_else(|| probe_flush(data.path()));
        if let Some(advice) =
            flush.and_then(|f| crate::preflight::shards_advice(f, data.shards(), executors))
        {
            tracing::warn!(shards = data.shards(), cores = executors, "{advice}");
        }
    }
    // The config checked the capacity against a configured count; a chosen or kept one is
    // checked here. Each shard needs room for its tail, a spare, and a compaction target.
    let needed = u64::from(data.shards()) * 4 * settings.segment_size_bytes as u64;
    if settings.capacity_bytes < needed {
        return Err(crate::data_dir::DataDirError {
            path: data.path().to_path_buf(),
            problem: format!(
                "its {} shards need at least 4 segments each ({needed} bytes), and \
                 storage.capacity is {}",
                data.shards(),
                settings.capacity_bytes
            ),
            fix: "raise storage.capacity, or lower storage.segment_size".into(),
        }
        .into());
    }
    let idle = executors.saturating_sub(data.shards() as usize);
    if idle > 0 {
        tracing::warn!(
            shards = data.shards(),
            cores = executors,
            "{idle} of {executors} cores own no shard (the data dir has {} shards, fixed when it \
             was created): they serve connections and pass every request to the cores that own \
             one; fewer cores (--cores) use them better, or, with the server stopped, \
             `backup-data reshard --data-dir <data> --shards <n>` gives the data dir more shards",
            data.shards()
        );
    }
    Ok(data)
}

/// How long a client port that answers is probed again before start-up fails.
const LISTEN_PROBE_PATIENCE: Duration = Duration::from_secs(3);

/// Runs the server until SIGTERM/SIGINT. Returns after a clean shutdown.
pub fn run(settings: Settings, options: RunOptions) -> Result<(), ServerError> {
    crate::preflight::check_io_uring()?;
    let cpus = crate::preflight::pick_cpus(settings.cores)?;
    crate::preflight::raise_memlock(cpus.len())?;
    let executors = cpus.len();
    let data = open_data_dir(&settings, executors)?;

    let listen = resolve_listen(settings.listen)?;
    let topology = Topology {
        shards: data.shards(),
        executors,
    };
    tracing::info!(
        server = %settings.name,
        config = %settings.source,
        persistence = %settings.persistence,
        data = %data.path().display(),
        cores = executors,
        cpus = ?cpus,
        shards = topology.shards,
        segment_size = settings.segment_size_bytes,
        capacity = settings.capacity_bytes,
        item_size_max = settings.item_size_max_bytes,
        "Terrace server starting"
    );

    let group = crate::cluster::Group::new(
        &settings.name,
        &settings.cluster,
        data.path(),
        settings.persistence,
        (topology.shards, executors),
    )
    .map_err(ServerError::Group)?;
    let dirty_db = Arc::new(crate::cluster::dirty_db::DirtyDb::new(
        data.path(),
        settings.cluster.dirtydb_rolling,
    ));
    // Heard by its peers while it recovers: they wait for its data before electing.
    group.join()?;
    let control = Arc::new(Control {
        stopping: Arc::new(AtomicBool::new(false)),
        drained: AtomicUsize::new(0),
    });
    let shutdown = options
        .enable_shutdown
        .then(|| Arc::clone(&control.stopping));
    let shared = Arc::new(Shared {
        settings: settings.clone(),
        clock: ServerClock::default(),
        debugtime_enabled: options.enable_debugtime,
        started: SystemTime::now(),
        executors,
        shards: data.shards(),
        group: Arc::clone(&group),
        shutdown,
    });
    install_signal_handler(&control);

    let request_mesh: MeshBuilder<Request, Full> =
        MeshBuilder::full(executors, MESH_CHANNEL_CAPACITY);
    let reply_mesh: MeshBuilder<Reply, Full> = MeshBuilder::full(executors, MESH_CHANNEL_CAPACITY);
    let (ready_tx, ready_rx) = mpsc::channel::<Result<usize, String>>();
    let shard_dirs: Vec<_> = (0..topology.shards).map(|s| data.shard_dir(s)).collect();
    let mut handles = Vec::new();
    for (index, &cpu) in cpus.iter().enumerate() {
        let context = ExecutorStart {
            index,
            topology,
            listen,
            shared: Arc::clone(&shared),
            control: Arc::clone(&control),
            shard_dirs: shard_dirs.clone(),
            meshes: (executors > 1).then(|| (request_mesh.clone(), reply_mesh.clone())),
            ready: ready_tx.clone(),
            dirty_db: Arc::clone(&dirty_db),
        };
        let handle = LocalExecutorBuilder::new(Placement::Fixed(cpu))
            .name(&format!("terrace-{index}"))
            .io_memory(EXECUTOR_IO_MEMORY_BYTES)
            .spawn(move || run_executor(context))
            .map_err(|e| ServerError::Executor {
                executor: index,
                message: format!("cannot start on CPU {cpu}: {e}"),
            })?;
        handles.push(handle);
    }
    drop(ready_tx);

    let mut failure = None;
    for _ in 0..executors {
        match ready_rx.recv() {
            Ok(Ok(_)) => {}
            Ok(Err(message)) => {
                failure.get_or_insert(message);
                control.stopping.store(true, Ordering::SeqCst);
            }
            Err(_) => {
                failure.get_or_insert_with(|| "an executor exited during start-up".into());
                control.stopping.store(true, Ordering::SeqCst);
                break;
            }
        }
    }
    // Every shard is recovered: the group's election can compare data.
    if failure.is_none()
        && let Err(error) = group.data_ready()
    {
        failure = Some(error.to_string());
        control.stopping.store(true, Ordering::SeqCst);
    }
    if failure.is_none() {
        tracing::info!(
            listen = %listen,
            data = %data.path().display(),
            persistence = %settings.persistence,
            "Terrace server listening"
        );
        // Also on stdout, for people and scripts waiting for the server to be up.
        println!(
            "terrace-server {} listening on {listen} ({}, data in {})",
            settings.name,
            settings.persistence,
            data.path().display()
        );
    }
    let mut results = Vec::new();
    for handle in handles {
        results.push(handle.join());
    }
    group.stop();
    if let Some(message) = failure {
        return Err(ServerError::Executor {
            executor: 0,
            message,
        });
    }
    for (executor, result) in results.into_iter().enumerate() {
        match result {
            Ok(Ok(())) => {}
            Ok(Err(message)) => return Err(ServerError::Executor { executor, message }),
            Err(e) => {
                return Err(ServerError::Executor {
                    executor,
                    message: e.to_string(),
                });
            }
        }
    }
    tracing::info!(server = %settings.name, "Terrace server stopped cleanly");
    drop(data);
    Ok(())
}

/// Starts this executor's part of replication, if the server has peers: serving the
/// streams its shards' passives open (while active), and following the active for its shards
/// (while passive).
fn start_replication(
    executor: &Rc<Executor>,
    index: usize,
    shard_dirs: &[std::path::PathBuf],
    dirty_db: Arc<crate::cluster::dirty_db::DirtyDb>,
) {
    use crate::cluster::replication::{Context, receiver, sender};
    if executor.shared.group.membership().is_none() {
        return;
    }
    let ctx = Rc::new(Context {
        executor: index,
        shards: Rc::clone(&executor.shards),
        shared: Arc::clone(&executor.shared),
        shard_dirs: shard_dirs.to_vec(),
        stop: Rc::clone(&executor.stop),
        dirty_db,
    });
    let inbox = Rc::clone(&ctx);
    glommio::spawn_local(async move {
        while !inbox.stop.is_stopped() {
            for (request, stream) in inbox.shared.group.take_handed_off(inbox.executor) {
                glommio::spawn_local(sender::serve(Rc::clone(&inbox), request, stream)).detach();
            }
            glommio::timer::sleep(Duration::from_millis(REPLICATION_INBOX_POLL_MILLIS)).await;
        }
    })
    .detach();
    let owned: Vec<u32> = executor.shards.owned().map(|(shard, _)| shard).collect();
    for shard in owned {
        glommio::spawn_local(receiver::follow(Rc::clone(&ctx), shard)).detach();
    }
}

/// How often an executor picks up the replication connections its group port accepted.
const REPLICATION_INBOX_POLL_MILLIS: u64 = 5;

/// The address to listen on: port 0 becomes a free port. Executors bind with SO_REUSEPORT
/// (glommio always sets it), which would let this server silently share a port with another
/// process of the same user; so first check that nothing answers there. A plain bind is no
/// check: after kill -9, the old server's closed connections (FIN_WAIT) block it for a
/// minute, though a SO_REUSEPORT bind works.
fn resolve_listen(addr: SocketAddr) -> Result<SocketAddr, ServerError> {
    if addr.port() == 0 {
        return std::net::TcpListener::bind(addr)
            .and_then(|l| l.local_addr())
            .map_err(|source| ServerError::Listen { addr, source });
    }
    let probe = if addr.ip().is_unspecified() {
        SocketAddr::new(std::net::Ipv4Addr::LOCALHOST.into(), addr.port())
    } else {
        addr
    };
    // A server killed a moment ago can leave its listening socket open for a little while:
    // io_uring tears a dead process's ring down asynchronously, and a pending accept keeps the
    // socket alive meanwhile (seen here: restarts right after kill -9 found the port taken).
    // So a port that answers is probed again for a few seconds before giving up.
    let deadline = std::time::Instant::now() + LISTEN_PROBE_PATIENCE;
    while std::net::TcpStream::connect_timeout(&probe, Duration::from_millis(300)).is_ok() {
        if std::time::Instant::now() >= deadline {
            return Err(ServerError::Listen {
                addr,
                source: std::io::Error::new(
                    std::io::ErrorKind::AddrInUse,
                    "another process is already listening there",
                ),
            });
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(addr)
}

fn install_signal_handler(control: &Arc<Control>) {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let control = Arc::clone(control);
    match signal_hook::iterator::Signals::new([SIGTERM, SIGINT]) {
        Ok(mut signals) => {
            let spawned = std::thread::Builder::new()
                .name("terrace-signals".into())
                .spawn(move || {
                    if let Some(signal) = signals.forever().next() {
                        tracing::info!(
                            signal,
                            "stopping: finishing in-flight requests, then syncing"
                        );
                        control.stopping.store(true, Ordering::SeqCst);
                    }
                });
            if let Err(error) = spawned {
                tracing::error!(%error, "cannot watch for SIGTERM/SIGINT");
            }
        }
        Err(error) => tracing::error!(%error, "cannot watch for SIGTERM/SIGINT"),
    }
}

struct ExecutorStart {
    index: usize,
    topology: Topology,
    listen: SocketAddr,
    shared: Arc<Shared>,
    control: Arc<Control>,
    shard_dirs: Vec<std::path::PathBuf>,
    meshes: Option<(MeshBuilder<Request, Full>, MeshBuilder<Reply, Full>)>,
    ready: mpsc::Sender<Result<usize, String>>,
    dirty_db: Arc<crate::cluster::dirty_db::DirtyDb>,
}

fn store_config(settings: &Settings, shards: u32) -> StoreConfig {
    let permanent = settings.persistence == Persistence::PermanentStore;
    StoreConfig {
        log: LogConfig {
            segment_size_bytes: settings.segment_size_bytes,
            durability: if permanent {
                Durability::Fsync
            } else {
                Durability::None
            },
            capacity_bytes: settings.capacity_bytes / u64::from(shards),
        },
        when_full: if permanent {
            WhenFull::Refuse
        } else {
            WhenFull::EvictOldest
        },
        item_size_max_bytes: settings.item_size_max_bytes,
        compaction: CompactionConfig::default(),
    }
}

/// How often executors publish their shards' last LSNs for the group's elections.
const LSN_PUBLISH_MILLIS: u64 = 50;

/// Publishes the shards' last LSNs, and sets what compaction may do: compact while this
/// server is the active, only reclaim unneeded segments while it is a passive in sync with
/// it (a passive's log holds its active's records and none of its own; one that is behind
/// could drop an item that expired by its clock while the active's touch of it is still to
/// come), nothing otherwise.
fn publish_lsns(shards: &LocalShards, shared: &Shared) {
    let serving = shared.group.serving();
    for (shard, store) in shards.owned() {
        if serving {
            // Compaction's records too carry the active's term.
            shards.stamp(store);
        }
        let mut store = store.borrow_mut();
        let last = store.log().next_lsn().saturating_sub(1);
        shared.group.publish_lsn(shard, last);
        let mode = if serving {
            CompactionMode::Compact
        } else if shared.group.shard_sync(shard) == ShardSync::InSync {
            CompactionMode::ReclaimOnly
        } else {
            CompactionMode::Paused
        };
        if store.compaction_mode() != mode {
            store.set_compaction_mode(mode);
        }
        let Some(replicas) = shards.replicas(shard) else {
            continue;
        };
        match shared.group.handover_target() {
            // A planned failover waits until the target holds every record.
            Some(target) => shared
                .group
                .set_handover_ready(shard, replicas.peer_acked(&target) >= last),
            // Writes waiting for passives give up: this server is no longer the active.
            None if !serving => replicas.wake_writers(),
            None => {}
        }
    }
}

/// Opens (recovering) the store of `shard` in `dir`, compaction paused until this server
/// knows whether it is the active (see `publish_lsns`).
pub async fn open_store(
    shared: &Shared,
    shard: u32,
    dir: &std::path::Path,
) -> Result<ShardStore, String> {
    let config = store_config(&shared.settings, shared.shards);
    let storage = FsStorage::open(dir)
        .await
        .map_err(|e| format!("shard {shard}: {e}"))?;
    let clock: Rc<dyn terrace_wal::store::Clock> = Rc::new(shared.clock.clone());
    let (mut store, report) =
        ShardStore::open(storage, config, clock, RecoveryPolicy::TruncateTornTail)
            .await
            .map_err(|e| format!("shard {shard} ({}): {e}", dir.display()))?;
    // Paused until `publish_lsns` (within 50 ms) finds whether this server serves: if it does,
    // it stamps the store with its term before compaction starts (compaction tells the
    // tombstones this server wrote from copied ones by their term); if not, the store only
    // reclaims.
    store.set_compaction_mode(CompactionMode::Paused);
    if report.records > 0 || report.torn_tail.is_some() {
        tracing::info!(
            shard,
            segments = report.segments,
            records = report.records,
            bytes = report.record_bytes,
            last_lsn = report.last_lsn,
            truncated_bytes = report.truncated_bytes(),
            millis = report.duration.as_millis() as u64,
            items = store.index_len(),
            "shard recovered"
        );
    }
    if let Some(torn) = &report.torn_tail {
        tracing::warn!(
            shard,
            segment = torn.segment,
            offset = torn.offset,
            bytes = torn.garbage_bytes,
            "cut a torn tail (records that were never acknowledged)"
        );
    }
    Ok(store)
}

async fn run_executor(start: ExecutorStart) -> Result<(), String> {
    let ExecutorStart {
        index,
        topology,
        listen,
        shared,
        control,
        shard_dirs,
        meshes,
        ready,
        dirty_db,
    } = start;
    let started = async {
        // First, before anything that can fail: the other executors wait for this.
        let joined = match meshes {
            Some((requests, replies)) => Some(route::join(requests, replies).await?),
            None => None,
        };
        let mut stores: Vec<Option<Rc<RefCell<ShardStore>>>> = Vec::new();
        for (shard, dir) in shard_dirs.iter().enumerate() {
            let shard = shard as u32;
            if topology.owner_of(shard) != index {
                stores.push(None);
                continue;
            }
            let store = Rc::new(RefCell::new(open_store(&shared, shard, dir).await?));
            spawn_compactor(Rc::clone(&store), 10)
                .map_err(|e| format!("shard {shard}: cannot start compaction: {e}"))?
                .detach();
            stores.push(Some(store));
        }
        let sync_replication =
            shared.settings.cluster.replication == crate::config::Replication::Sync;
        let shards = Rc::new(LocalShards::new(
            topology,
            stores,
            (sync_replication, shared.group.flags()),
        ));
        publish_lsns(&shards, &shared);
        let router = match joined {
            Some(joined) => joined.serve(&shards),
            None => Rc::new(Router::single()),
        };
        let listener =
            TcpListener::bind(listen).map_err(|e| format!("cannot listen on {listen}: {e}"))?;
        let executor = Rc::new(Executor {
            shared: Arc::clone(&shared),
            shards,
            router,
            topology,
            limits: Limits {
                item_size_max_bytes: shared.settings.item_size_max_bytes,
            },
            stop: Rc::new(LocalStop::default()),
        });
        Ok::<_, String>((executor, listener))
    };
    let (executor, listener) = match started.await {
        Ok(started) => {
            let _ = ready.send(Ok(index));
            started
        }
        Err(message) => {
            let _ = ready.send(Err(message.clone()));
            control.drained.fetch_add(1, Ordering::SeqCst);
            return Err(message);
        }
    };

    // The group's elections compare data: keep this executor's shards' LSNs published.
    let (publisher, published) = (Rc::clone(&executor.shards), Arc::clone(&shared));
    glommio::spawn_local(async move {
        loop {
            // Often during a planned failover, which waits on it.
            let period = if published.group.handover_target().is_some() {
                crate::cluster::group::HANDOVER_POLL
            } else {
                Duration::from_millis(LSN_PUBLISH_MILLIS)
            };
            glommio::timer::sleep(period).await;
            publish_lsns(&publisher, &published);
        }
    })
    .detach();

    start_replication(&executor, index, &shard_dirs, dirty_db);

    // Watch the process-wide flag; tell this executor's tasks.
    let stop = Rc::clone(&executor.stop);
    let watcher_control = Arc::clone(&control);
    glommio::spawn_local(async move {
        while !watcher_control.stopping.load(Ordering::SeqCst) {
            glommio::timer::sleep(Duration::from_millis(SHUTDOWN_POLL_MILLIS)).await;
        }
        stop.stop();
    })
    .detach();

    let open = Rc::new(Cell::new(0usize));
    let mut next_id = 0u64;
    let max_per_executor = shared.settings.max_connections.div_ceil(shared.executors);
    loop {
        let accepted = futures_lite::future::or(async { Some(listener.accept().await) }, async {
            executor.stop.wait(u64::MAX).await;
            None
        })
        .await;
        let stream = match accepted {
            None => break,
            Some(Ok(stream)) => stream,
            Some(Err(error)) => {
                tracing::warn!(%error, "accept failed");
                glommio::timer::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        if open.get() >= max_per_executor {
            executor
                .shards
                .counters
                .bump(crate::stats::Stat::rejected_connections);
            tracing::warn!(
                max_connections = shared.settings.max_connections,
                "connection refused: too many connections"
            );
            drop(stream);
            continue;
        }
        if let Err(error) = stream.set_nodelay(true) {
            tracing::debug!(%error, "set_nodelay failed");
        }
        next_id += 1;
        open.set(open.get() + 1);
        let (executor, open) = (Rc::clone(&executor), Rc::clone(&open));
        let id = next_id;
        glommio::spawn_local(async move {
            crate::net::serve(stream, executor, id).await;
            open.set(open.get() - 1);
        })
        .detach();
    }
    drop(listener);

    // Connections end after their in-flight requests (they see the stop at their next read).
    // A `noreply` write for another executor's shard was only handed over: wait for its
    // answer too, so that no executor passes the barrier below (and syncs for the last time)
    // before every write read from a client has run where it belongs.
    while open.get() > 0 || executor.router.outstanding() > 0 {
        glommio::timer::sleep(Duration::from_millis(SHUTDOWN_POLL_MILLIS)).await;
    }
    control.drained.fetch_add(1, Ordering::SeqCst);
    // Other executors' connections may still route requests here: serve them until all
    // executors have drained.
    while control.drained.load(Ordering::SeqCst) < shared.executors {
        glommio::timer::sleep(Duration::from_millis(SHUTDOWN_POLL_MILLIS)).await;
    }
    for (shard, store) in executor.shards.owned() {
        let (commit, last) = {
            let store = store.borrow();
            (store.commit(), store.log().next_lsn().saturating_sub(1))
        };
        if last > 0
            && let Err(error) = commit.wait_durable(last).await
        {
            tracing::error!(shard, %error, "final sync failed");
            return Err(format!("shard {shard}: final sync failed: {error}"));
        }
    }
    Ok(())
}
