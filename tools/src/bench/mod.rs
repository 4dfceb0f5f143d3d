//! `terrace-bench`: a closed-loop latency benchmark for memcached-protocol and RESP servers.
//!
//! - [`options`]: the command line, validated into a [`options::Plan`].
//! - [`wire`]: requests and incremental reply parsers (memcached text, RESP).
//! - [`keys`]: key patterns (uniform, zipf, sequential).
//! - [`run`]: load threads (glommio executors) and connections.
//! - [`tally`]: counts and HdrHistograms; [`report`]: text and JSON.

pub mod keys;
pub mod options;
pub mod report;
pub mod run;
pub mod tally;
pub mod wire;
