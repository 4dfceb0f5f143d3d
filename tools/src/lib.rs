//! # terrace-tools
//!
//! Terrace's command-line tools: [`bench`], the engine of `terrace-bench`; [`backup`], the
//! engine of `backup-data`; [`ctl`], the engine of `terrace-ctl`.

pub mod backup;
pub mod bench;
pub mod ctl;
