//! Mirror groups: the servers of a group, how they find and watch each other, and (to come)
//! election, replication and failover.
//!
//! - [`wire`]: the group protocol's control messages.
//! - [`membership`]: connections between the servers of a group, the config handshake,
//!   heartbeats, and who is joined or gone.

pub mod membership;
pub mod wire;

pub use membership::{ClusterError, Health, Membership};
