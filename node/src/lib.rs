//! # terrace-node
//!
//! The Terrace server, `terrace-server`: a thread-per-core, durable memcached.
//!
//! Module map:
//!
//! - [`constants`]: every limit.
//! - [`config`]: the TOML config, command-line overrides, validation.
//! - [`cluster`]: mirror groups: membership and health, elections, replication, the dirty db.
//! - [`preflight`]: checks before start-up (io_uring, memlock) and the data dir (lock,
//!   layout, emptying for temporary-swap-only).
//! - [`protocol`]: the memcached text protocol, parsed in place.
//! - [`shard`]: which executor owns which shard, operations on the stores, cross-core routing.
//! - [`net`]: listeners and connections.
//! - [`stats`]: counters and the `stats` reply.
//! - [`server`]: executors, start-up and shutdown.
//! - [`time`]: UTC strings.

pub mod cluster;
pub mod config;
pub mod constants;
pub mod data_dir;
pub mod net;
pub mod preflight;
pub mod protocol;
pub mod server;
pub mod shard;
pub mod stats;
pub mod time;
