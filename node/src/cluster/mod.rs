//! Mirror groups: the servers of a group, how they find and watch each other, who is the
//! active, and how the passives follow it.
//!
//! - [`wire`]: the group protocol's control messages.
//! - [`membership`]: connections between the servers of a group, the config handshake,
//!   heartbeats, and who is joined or gone.
//! - [`state`]: Terracotta's states, the persisted terms, a server's status.
//! - [`election`]: who is the active (a pure function of what the servers say).
//! - [`group`]: this server in its group: the coordinator applying elections, and whether
//!   clients are served here.
//! - [`replication`]: the active's log streamed to its passives, shard by shard.
//! - [`dirty_db`]: where a passive's own data goes when it is not a prefix of the active's.

pub mod dirty_db;
pub mod election;
pub mod group;
pub mod membership;
pub mod replication;
pub mod state;
pub mod wire;

pub use group::Group;
pub use membership::{ClusterError, Health, Membership};
pub use state::State;
