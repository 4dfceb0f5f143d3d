//! Mirror groups: the servers of a group, how they find and watch each other, and who is the
//! active. Replication, INITIALIZING sync, client forwarding, failover to a standby and the
//! dirty db are to come (issue 6).
//!
//! - [`wire`]: the group protocol's control messages.
//! - [`membership`]: connections between the servers of a group, the config handshake,
//!   heartbeats, and who is joined or gone.
//! - [`state`]: Terracotta's states, the persisted terms, a server's status.
//! - [`election`]: who is the active (a pure function of what the servers say).
//! - [`group`]: this server in its group: the coordinator applying elections, and whether
//!   clients are served here.

pub mod election;
pub mod group;
pub mod membership;
pub mod state;
pub mod wire;

pub use group::Group;
pub use membership::{ClusterError, Health, Membership};
pub use state::State;
