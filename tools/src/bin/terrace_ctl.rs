//! `terrace-ctl`: see `terrace-ctl --help` and the README's "Mirror groups" section.

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;
use terrace_tools::ctl::{Seen, failover, problems, shutdown, status};

/// Exit status when the cluster is not healthy: a server unreachable, a group without
/// exactly one active.
const EXIT_UNHEALTHY: u8 = 1;
/// Exit status when the config cannot be used.
const EXIT_USAGE: u8 = 2;

/// Operations on a Terrace cluster, from its config file.
///
/// Exit status: 0 healthy, 1 not (an unreachable server, a mirror group without exactly one
/// ACTIVE-COORDINATOR), 2 bad arguments or config.
#[derive(Debug, Parser)]
#[command(name = "terrace-ctl", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Every server of the cluster: reachable or not, state, term, LSN, lag behind its
    /// group's active, connected clients (asked on each client port with `stats cluster`).
    Status {
        /// The cluster's config file (the one every server was started with).
        #[arg(short = 'f', long = "config", value_name = "FILE")]
        config: PathBuf,
        /// How long to wait for each server, in milliseconds.
        #[arg(long, value_name = "MS", default_value_t = 2000)]
        timeout_ms: u64,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Planned failover: wait until the group has a PASSIVE-STANDBY, then have the active hand
    /// over to it. The active stops taking requests (they wait, then go to the new active),
    /// waits until the standby has acknowledged every record, and hands over at the next
    /// term; it then follows as a passive. No acknowledged write is lost; clients see a pause.
    Failover {
        /// The cluster's config file (the one every server was started with).
        #[arg(short = 'f', long = "config", value_name = "FILE")]
        config: PathBuf,
        /// The mirror group (needed when the config has several).
        #[arg(long, value_name = "NAME")]
        group: Option<String>,
        /// The server to hand over to (default: any PASSIVE-STANDBY).
        #[arg(long, value_name = "SERVER")]
        to: Option<String>,
        /// How long to wait for a PASSIVE-STANDBY, and for the new active, in milliseconds.
        #[arg(long, value_name = "MS", default_value_t = 30_000)]
        wait_ms: u64,
        /// How long to wait for each server to answer, in milliseconds.
        #[arg(long, value_name = "MS", default_value_t = 2000)]
        timeout_ms: u64,
    },
    /// Stop every server of the cluster, group by group: the passives first, then the active
    /// (each must run with --enable-shutdown). Waits for each to stop before the next.
    Shutdown {
        /// The cluster's config file (the one every server was started with).
        #[arg(short = 'f', long = "config", value_name = "FILE")]
        config: PathBuf,
        /// How long to wait for each server to answer, in milliseconds.
        #[arg(long, value_name = "MS", default_value_t = 2000)]
        timeout_ms: u64,
    },
}

fn main() -> ExitCode {
    let (config, timeout_ms, json) = match Cli::parse().command {
        Command::Status {
            config,
            timeout_ms,
            json,
        } => (config, timeout_ms, json),
        Command::Failover {
            config,
            group,
            to,
            wait_ms,
            timeout_ms,
        } => {
            let started = std::time::Instant::now();
            let result = failover(
                &config,
                (group.as_deref(), to.as_deref()),
                Duration::from_millis(wait_ms),
                Duration::from_millis(timeout_ms.max(1)),
            );
            return match result {
                Ok(done) => {
                    println!(
                        "mirror group {}: {} -> {} is ACTIVE-COORDINATOR ({}); {} ms in all",
                        done.group,
                        done.from,
                        done.to,
                        done.report,
                        started.elapsed().as_millis()
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("terrace-ctl failover: {e}");
                    ExitCode::from(EXIT_UNHEALTHY)
                }
            };
        }
        Command::Shutdown { config, timeout_ms } => {
            let timeout = Duration::from_millis(timeout_ms.max(1));
            let outcomes = shutdown(&config, timeout, |s| println!("{}: {}", s.name, s.outcome));
            return match outcomes {
                Ok(outcomes) => {
                    let all = outcomes
                        .iter()
                        .all(|o| o.outcome == "stopped" || o.outcome == "already down");
                    if all {
                        ExitCode::SUCCESS
                    } else {
                        ExitCode::from(EXIT_UNHEALTHY)
                    }
                }
                Err(e) => {
                    eprintln!("terrace-ctl: {e}");
                    ExitCode::from(EXIT_USAGE)
                }
            };
        }
    };
    let servers = match status(&config, Duration::from_millis(timeout_ms.max(1))) {
        Ok(servers) => servers,
        Err(e) => {
            eprintln!("terrace-ctl: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let problems = problems(&servers);
    if json {
        println!(
            "{}",
            serde_json::json!({ "healthy": problems.is_empty(), "problems": problems, "servers": servers })
        );
    } else {
        println!(
            "{:<10} {:<10} {:<22} {:<22} {:>5} {:>10} {:>8} {:>7}",
            "group", "server", "address", "state", "term", "lsn", "lag", "clients"
        );
        for s in &servers {
            let lag = s.lag.map_or("-".to_string(), |l| l.to_string());
            match &s.seen {
                Seen::Up {
                    state,
                    term,
                    lsn,
                    clients,
                    ..
                } => println!(
                    "{:<10} {:<10} {:<22} {:<22} {:>5} {:>10} {:>8} {:>7}",
                    s.group, s.name, s.address, state, term, lsn, lag, clients
                ),
                Seen::Down { unreachable } => println!(
                    "{:<10} {:<10} {:<22} unreachable: {unreachable}",
                    s.group, s.name, s.address
                ),
            }
        }
        for problem in &problems {
            println!("problem: {problem}");
        }
    }
    if problems.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_UNHEALTHY)
    }
}
