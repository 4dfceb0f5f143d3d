//! Client connections: one task per connection on the executor that accepted it.

mod connection;
mod stop;

pub use connection::serve;
pub use stop::LocalStop;

use crate::config::Settings;
use crate::protocol::Limits;
use crate::shard::clock::ServerClock;
use crate::shard::route::Router;
use crate::shard::{LocalShards, Topology};
use std::rc::Rc;
use std::sync::Arc;
use std::time::SystemTime;

/// What every executor shares (read-only but for the clock shift).
#[derive(Debug)]
pub struct Shared {
    /// The settings.
    pub settings: Settings,
    /// The clock (shifted by `debugtime`).
    pub clock: ServerClock,
    /// Whether `debugtime` is allowed.
    pub debugtime_enabled: bool,
    /// When the server started.
    pub started: SystemTime,
    /// Executors.
    pub executors: usize,
    /// Shards of the data dir (what `storage.shards` gave when it was created).
    pub shards: u32,
    /// This server in its mirror group: state, term, membership, whether it serves clients.
    pub group: Arc<crate::cluster::Group>,
    /// The server's stop flag (what SIGTERM sets), when the `shutdown` command is enabled.
    pub shutdown: Option<Arc<std::sync::atomic::AtomicBool>>,
}

/// One executor's view of the server, shared by its connections.
#[derive(Debug)]
pub struct Executor {
    /// Shared settings.
    pub shared: Arc<Shared>,
    /// The shards it owns.
    pub shards: Rc<LocalShards>,
    /// Cross-core requests.
    pub router: Rc<Router>,
    /// Shards and executors.
    pub topology: Topology,
    /// Parser limits.
    pub limits: Limits,
    /// Shutdown, seen by every connection.
    pub stop: Rc<LocalStop>,
}
