//! # terrace-tools
//!
//! Terrace's command-line tools: [`bench`], the engine of `terrace-bench`, and [`backup`],
//! the engine of `backup-data`.

pub mod backup;
pub mod bench;
