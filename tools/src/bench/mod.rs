//! `terrace-bench`: a closed- or open-loop latency benchmark for memcached-protocol and RESP servers.
//!
//! - [`options`]: the command line, validated into a [`options::Plan`].
//! - [`wire`]: requests and incremental reply parsers (memcached text, RESP).
//! - [`keys`]: key patterns (uniform, zipf, sequential).
//! - [`run`]: load threads (glommio executors) and connections, closed or open loop
//!   ([`schedule`]: intended send times).
//! - [`tally`]: counts and HdrHistograms; [`report`]: text and JSON; [`output`]: `.hgrm`
//!   files and SVG plots.

pub mod keys;
pub mod options;
pub mod output;
pub mod report;
pub mod run;
pub mod schedule;
pub mod tally;
pub mod wire;
