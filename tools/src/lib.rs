//! # terrace-tools
//!
//! Terrace's command-line tools. Today: [`bench`], the engine of `terrace-bench`.

pub mod bench;
