//! `terrace-server`: a durable memcached on one machine (mirror groups come later).

use clap::{Parser, ValueEnum};
use std::path::PathBuf;
use std::process::ExitCode;
use terrace_node::config::{Overrides, Persistence, Settings};
use terrace_node::server::{RunOptions, run};

/// Terrace: a persistent, thread-per-core memcached server.
///
/// With no arguments it runs the embedded development default (configs/dev.toml): one
/// server, temporary-swap-only, on 127.0.0.1:11211, data under ./terrace-data. Flags
/// override the config file. Stop it with SIGTERM or Ctrl-C: it finishes in-flight
/// requests, syncs, and exits 0.
#[derive(Debug, Parser)]
#[command(version, about, long_about)]
struct Args {
    /// Config file (TOML). Without it: the embedded development default.
    #[arg(short = 'f', long = "config", value_name = "FILE")]
    config: Option<PathBuf>,
    /// This server's name in the config's [[servers]] (needed when it lists several).
    #[arg(short = 'n', long = "name", value_name = "NAME")]
    name: Option<String>,
    /// Executors to run, one pinned per core; 0 = every core this process may use.
    #[arg(long, value_name = "N")]
    cores: Option<usize>,
    /// Client address, host:port (overrides the server's host and client_port).
    #[arg(long, value_name = "HOST:PORT")]
    listen: Option<String>,
    /// Data directory (overrides the server's data).
    #[arg(long, value_name = "DIR")]
    data: Option<PathBuf>,
    /// Persistence mode (overrides [cluster] persistence).
    #[arg(long, value_enum)]
    persistence: Option<PersistenceArg>,
    /// Allow the `debugtime <seconds>` command, which shifts the server clock (for expiry
    /// tests; never in production).
    #[arg(long)]
    enable_debugtime: bool,
    /// Allow the `shutdown` command on the client port (memcached's -A): it stops this server
    /// as SIGTERM does. `terrace-ctl shutdown` uses it. Anyone who can reach the port can then
    /// stop the server.
    #[arg(long)]
    enable_shutdown: bool,
    /// Log format on stderr. The level comes from RUST_LOG (default: info).
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Check the config and print the settings it gives, then exit.
    #[arg(long)]
    check_config: bool,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum PersistenceArg {
    /// No fsync; the data dir is emptied at start.
    TemporarySwapOnly,
    /// fdatasync before every acknowledgment; data recovered at start.
    PermanentStore,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_thread_names(true);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// A panic anywhere is a bug: log it and abort the whole process (fail-stop) rather than
/// lose one executor's shards and listener while the others go on.
fn install_panic_hook() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let thread = std::thread::current();
        tracing::error!(
            thread = thread.name().unwrap_or("?"),
            panic = %info,
            "panic: aborting the process (fail-stop)"
        );
        default(info);
        std::process::abort();
    }));
}

fn main() -> ExitCode {
    let args = Args::parse();
    init_logging(args.log_format);
    install_panic_hook();
    let overrides = Overrides {
        cores: args.cores,
        listen: args.listen.clone(),
        data: args.data.clone(),
        persistence: args.persistence.map(|p| match p {
            PersistenceArg::TemporarySwapOnly => Persistence::TemporarySwapOnly,
            PersistenceArg::PermanentStore => Persistence::PermanentStore,
        }),
    };
    let settings = match Settings::load(args.config.as_deref(), args.name.as_deref(), &overrides) {
        Ok(settings) => settings,
        Err(error) => {
            eprintln!("terrace-server: config error: {error}");
            return ExitCode::from(2);
        }
    };
    if args.check_config {
        println!("{settings:#?}");
        return ExitCode::SUCCESS;
    }
    let options = RunOptions {
        enable_debugtime: args.enable_debugtime,
        enable_shutdown: args.enable_shutdown,
    };
    match run(settings, options) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(%error, "terrace-server cannot run");
            eprintln!("terrace-server: {error}");
            ExitCode::FAILURE
        }
    }
}
