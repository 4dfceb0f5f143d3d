//! `backup-data`: consistent snapshots of a Terrace data dir, verified and restored
//! atomically. See `backup-data --help` and the README's "Backups" section.

use clap::{Parser, Subcommand};
use serde_json::json;
use std::path::PathBuf;
use std::process::ExitCode;
use terrace_tools::backup::BackupError;
use terrace_tools::backup::create::{CreateOptions, CreateReport, create_offline};
use terrace_tools::backup::manifest::Manifest;
use terrace_tools::backup::online::create_online;
use terrace_tools::backup::reshard::{ReshardReport, reshard};
use terrace_tools::backup::restore::{RestoreReport, restore};
use terrace_tools::backup::verify::{VerifyReport, check_shape, read_manifest, verify};

/// Exit status when the work failed: a damaged snapshot, a refused operation, an I/O error.
const EXIT_FAILED: u8 = 1;

/// Consistent snapshots of a Terrace data dir: create, verify, restore, list, info.
///
/// A snapshot is a directory holding manifest.json (what it holds, with checksums) and the
/// shards' segment files up to their last valid record. Every byte is checked against its CRC
/// when a snapshot is made, verified and restored. Exit status: 0 done, 1 failed (the message
/// names the file and byte offset), 2 bad arguments.
#[derive(Debug, Parser)]
#[command(name = "backup-data", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// No progress bars.
    #[arg(long, global = true)]
    quiet: bool,
    /// Print the result as JSON on standard output (no progress bars).
    #[arg(long, global = true)]
    json: bool,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Take a snapshot: of a stopped server's data dir (--data-dir), or of a running server
    /// (--server) without stopping its clients.
    ///
    /// Offline, the data dir's lock proves no server runs on it and keeps one from starting
    /// meanwhile. A torn tail (records a crashed server never acknowledged) is left out and
    /// reported. Into a directory that holds an earlier snapshot of the same server, only
    /// segments that changed are written (incremental); the directory holds one complete
    /// snapshot, old or new, whenever the tool stops.
    Create {
        /// The data dir of a stopped server (servers[].data in its config, or --data).
        #[arg(
            long,
            value_name = "DIR",
            conflicts_with = "server",
            required_unless_present = "server"
        )]
        data_dir: Option<PathBuf>,
        /// A running server's client address: it pins a consistent cut of every shard (all
        /// writes acknowledged before the request), this tool copies the pinned segment files
        /// from the server's data dir, which must be readable here (same host), then the pin
        /// is released.
        #[arg(long, value_name = "HOST:PORT")]
        server: Option<String>,
        /// The snapshot directory: new, empty, or holding an earlier snapshot of the same
        /// server.
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// Hard-link sealed segments instead of copying them, when the snapshot is on the
        /// data dir's filesystem. Fast and small, but the link shares disk blocks with the
        /// data dir: it guards against deletion and mistakes, not against the disk failing.
        #[arg(long)]
        link: bool,
    },
    /// Check a snapshot completely: manifest, files, sizes, checksums, every record's CRC and
    /// structure, LSN order. Prints what it holds; exits 1 naming the first bad file and
    /// offset.
    Verify {
        /// The snapshot directory.
        snapshot: PathBuf,
    },
    /// Restore a snapshot into a data dir, verifying every byte as it is written. Writes a
    /// temporary directory and renames it into place: an interrupted restore leaves the data
    /// dir as it was.
    Restore {
        /// The snapshot directory.
        snapshot: PathBuf,
        /// The data dir to restore into: new or empty unless --force.
        #[arg(long, value_name = "DIR")]
        data_dir: PathBuf,
        /// Replace a data dir that holds data. Its old contents are moved to
        /// `<DIR>.before-restore-<time>`, not deleted. A data dir a running server holds is
        /// refused regardless.
        #[arg(long)]
        force: bool,
    },
    /// Change the shard count of a stopped server's permanent-store data dir (for a machine
    /// with more or fewer cores than the one it was created on).
    ///
    /// Every live item (key, value, client flags, expiry) is written into new shards in a
    /// temporary directory beside the data dir, synced, and swapped into place; the old
    /// contents are moved to `<DIR>.before-reshard-<time>`, not deleted. Each item gets a new
    /// CAS, above every old one. An interrupted reshard leaves the data dir as it was. Start
    /// the server with `storage.shards` set to the new count (or "auto", which keeps it).
    Reshard {
        /// The data dir of a stopped server.
        #[arg(long, value_name = "DIR")]
        data_dir: PathBuf,
        /// The new shard count.
        #[arg(long, value_name = "N")]
        shards: u32,
        /// Size of the new shards' segment files, as storage.segment_size (e.g. 64MiB; give
        /// the server's). Default: as large as the largest old segment file, so that every
        /// item fits as before. Each new shard preallocates a segment or two of this size.
        #[arg(long, value_name = "SIZE", value_parser = parse_size)]
        segment_size: Option<usize>,
    },
    /// List a snapshot's segment files: shard, segment, LSNs, records, bytes, checksum.
    List {
        /// The snapshot directory.
        snapshot: PathBuf,
    },
    /// Describe a snapshot: source, time, shards, last LSN per shard, totals.
    Info {
        /// The snapshot directory.
        snapshot: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let show_progress = !cli.quiet && !cli.json;
    let result = match cli.command {
        Command::Create {
            data_dir,
            server,
            out,
            link,
        } => {
            let options = CreateOptions {
                link,
                show_progress,
            };
            let report = match (&data_dir, &server) {
                (Some(dir), _) => create_offline(dir, &out, options),
                (None, Some(server)) => create_online(server, &out, options),
                (None, None) => unreachable!("clap requires one of them"),
            };
            report.map(|r| print_create(&r, &out, cli.json))
        }
        Command::Verify { snapshot } => match verify(&snapshot, show_progress) {
            Ok((manifest, report)) => {
                print_verify(&manifest, &report, &snapshot, cli.json);
                Ok(())
            }
            Err(e) => Err(e),
        },
        Command::Restore {
            snapshot,
            data_dir,
            force,
        } => restore(&snapshot, &data_dir, force, show_progress)
            .map(|r| print_restore(&r, &snapshot, cli.json)),
        Command::Reshard {
            data_dir,
            shards,
            segment_size,
        } => reshard(&data_dir, shards, segment_size, show_progress)
            .map(|r| print_reshard(&r, cli.json)),
        Command::List { snapshot } => {
            read_checked_manifest(&snapshot).map(|m| print_list(&m, cli.json))
        }
        Command::Info { snapshot } => {
            read_checked_manifest(&snapshot).map(|m| print_info(&m, &snapshot, cli.json))
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            if cli.json {
                println!("{}", json!({ "ok": false, "error": e.to_string() }));
            }
            eprintln!("backup-data: {e}");
            ExitCode::from(EXIT_FAILED)
        }
    }
}

fn read_checked_manifest(dir: &std::path::Path) -> Result<Manifest, BackupError> {
    let manifest = read_manifest(dir)?;
    check_shape(dir, &manifest)?;
    Ok(manifest)
}

fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.2} {}", UNITS[unit])
    }
}

fn source_line(m: &Manifest) -> String {
    format!(
        "{} ({} snapshot of server {}, {}, {} shards{}), taken {}",
        m.source.data_dir,
        m.source.mode,
        m.source.server.as_deref().unwrap_or("(unnamed)"),
        m.source.persistence,
        m.source.shard_count,
        m.source
            .address
            .as_ref()
            .map(|a| format!(", at {a}"))
            .unwrap_or_default(),
        m.created_utc
    )
}

fn cut_json(m: &Manifest) -> serde_json::Value {
    m.shards
        .iter()
        .map(|s| {
            json!({
                "shard": s.shard,
                "last_lsn": s.last_lsn,
                "segments": s.segments.len(),
                "records": s.segments.iter().map(|e| e.records).sum::<u64>(),
                "stored_bytes": s.segments.iter().map(|e| e.stored_bytes).sum::<u64>(),
                "torn_tail_left_out": s.torn_tail_left_out,
            })
        })
        .collect()
}

fn print_create(r: &CreateReport, out: &std::path::Path, as_json: bool) {
    let (segments, records, stored) = r.manifest.totals();
    if as_json {
        println!(
            "{}",
            json!({
                "ok": true,
                "snapshot": out,
                "source": r.manifest.source,
                "created_utc": r.manifest.created_utc,
                "segments": segments,
                "records": records,
                "stored_bytes": stored,
                "written_files": r.written_files,
                "written_bytes": r.written_bytes,
                "reused_files": r.reused_files,
                "linked_files": r.linked_files,
                "removed_files": r.removed_files,
                "spare_segments_skipped": r.spare_segments,
                "seconds": r.duration.as_secs_f64(),
                "shards": cut_json(&r.manifest),
            })
        );
        return;
    }
    println!("snapshot {} of {}", out.display(), source_line(&r.manifest));
    println!(
        "  {segments} segments, {records} records, {} stored",
        bytes(stored)
    );
    println!(
        "  {} files written ({}), {} unchanged from the earlier snapshot, {} hard-linked, \
         {} old files removed",
        r.written_files,
        bytes(r.written_bytes),
        r.reused_files,
        r.linked_files,
        r.removed_files
    );
    for shard in &r.manifest.shards {
        if let Some(torn) = &shard.torn_tail_left_out {
            println!(
                "  shard {}: torn tail left out: segment {} from byte {} ({} bytes): {} \
                 (records a crashed server never acknowledged)",
                shard.shard, torn.segment, torn.offset, torn.bytes, torn.reason
            );
        }
    }
    println!("  took {:.2} s", r.duration.as_secs_f64());
}

fn print_verify(m: &Manifest, r: &VerifyReport, dir: &std::path::Path, as_json: bool) {
    if as_json {
        println!(
            "{}",
            json!({ "ok": true, "snapshot": dir, "contents": r, "seconds": r.duration.as_secs_f64() })
        );
        return;
    }
    println!("snapshot {} is sound", dir.display());
    println!("  of {}", source_line(m));
    println!(
        "  {} shards, {} segments, {} records ({} puts, {} deletes, {} touches, {} flushes), \
         {} keys, {}",
        r.shards,
        r.segments,
        r.records,
        r.puts,
        r.deletes,
        r.touches,
        r.flushes,
        r.keys,
        bytes(r.bytes)
    );
    for file in &r.unlisted_files {
        println!("  note: {file} is not in the manifest (left by an interrupted create)");
    }
    println!("  took {:.2} s", r.duration.as_secs_f64());
}

/// A size as the config takes it: `64MiB`, `4096`, ...
fn parse_size(text: &str) -> Result<usize, String> {
    terrace_node::config::Size::parse(text)
        .and_then(|size| usize::try_from(size.0).ok())
        .filter(|&size| size > 0)
        .ok_or_else(|| format!("{text:?} is not a size (examples: 64MiB, 2MiB, 1048576)"))
}

fn print_reshard(r: &ReshardReport, as_json: bool) {
    if as_json {
        println!(
            "{}",
            json!({
                "ok": true,
                "data_dir": r.data_dir,
                "from_shards": r.from_shards,
                "to_shards": r.to_shards,
                "items": r.items,
                "bytes": r.bytes,
                "items_per_shard": r.items_per_shard,
                "pending_flush_at": r.pending_flush_at,
                "segment_size_bytes": r.segment_size_bytes,
                "bytes_on_disk": r.bytes_on_disk,
                "previous_contents_moved_to": r.previous_contents,
                "old_dirty_db": r.old_dirty_db,
                "removed_interrupted_reshards": r.removed_leftovers,
                "recovered_contents_moved_to": r.recovered_contents,
                "seconds": r.duration.as_secs_f64(),
            })
        );
        return;
    }
    for path in &r.removed_leftovers {
        println!(
            "removed {} (a copy left by an interrupted reshard)",
            path.display()
        );
    }
    for path in &r.recovered_contents {
        println!(
            "moved {} aside: the data dir's contents before an interrupted reshard",
            path.display()
        );
    }
    println!(
        "resharded {}: {} shards -> {}",
        r.data_dir.display(),
        r.from_shards,
        r.to_shards
    );
    println!(
        "  {} items ({} bytes of keys and values), per new shard: {}",
        r.items,
        r.bytes,
        r.items_per_shard
            .iter()
            .map(u64::to_string)
            .collect::<Vec<_>>()
            .join(" ")
    );
    println!(
        "  {} on disk in segments of {} bytes",
        bytes(r.bytes_on_disk),
        r.segment_size_bytes
    );
    if let Some(at) = r.pending_flush_at {
        println!("  a delayed flush_all pending for unix time {at} was carried over");
    }
    if let Some(previous) = &r.previous_contents {
        println!(
            "  the old contents are in {} (remove it once the server runs on the new data)",
            previous.display()
        );
    }
    if let Some(dirty) = &r.old_dirty_db {
        println!(
            "  {} stays there: data a passive set aside, not copied; keep it as long as you \
             may need it",
            dirty.display()
        );
    }
    println!(
        "  in {:.1} s; start the server with storage.shards = {} (or \"auto\", which keeps it)",
        r.duration.as_secs_f64(),
        r.to_shards
    );
}

fn print_restore(r: &RestoreReport, snapshot: &std::path::Path, as_json: bool) {
    if as_json {
        println!(
            "{}",
            json!({
                "ok": true,
                "snapshot": snapshot,
                "data_dir": r.data_dir,
                "segments": r.contents.segments,
                "records": r.contents.records,
                "bytes": r.contents.bytes,
                "previous_contents_moved_to": r.previous_contents,
                "removed_interrupted_restores": r.removed_leftovers,
                "recovered_contents_moved_to": r.recovered_contents,
                "seconds": r.duration.as_secs_f64(),
            })
        );
        return;
    }
    for path in &r.removed_leftovers {
        println!(
            "removed {} (a copy left by an interrupted restore)",
            path.display()
        );
    }
    for path in &r.recovered_contents {
        println!(
            "moved {} aside: the data dir's contents before an interrupted restore",
            path.display()
        );
    }
    println!(
        "restored {} into {}",
        snapshot.display(),
        r.data_dir.display()
    );
    println!("  of {}", source_line(&r.manifest));
    println!(
        "  {} segments, {} records, {}, every record checked",
        r.contents.segments,
        r.contents.records,
        bytes(r.contents.bytes)
    );
    if let Some(previous) = &r.previous_contents {
        println!(
            "  its previous contents are in {}: remove them once you are sure",
            previous.display()
        );
    }
    println!("  took {:.2} s", r.duration.as_secs_f64());
}

fn print_list(m: &Manifest, as_json: bool) {
    if as_json {
        let rows: Vec<_> = m
            .shards
            .iter()
            .flat_map(|s| s.segments.iter().map(move |e| (s.shard, e)))
            .map(|(shard, e)| json!({ "shard": shard, "segment": e }))
            .collect();
        println!("{}", serde_json::Value::Array(rows));
        return;
    }
    println!(
        "{:>5} {:>8} {:>12} {:>12} {:>9} {:>12} {:>8}  file",
        "shard", "segment", "first_lsn", "last_lsn", "records", "bytes", "crc32"
    );
    for shard in &m.shards {
        for e in &shard.segments {
            println!(
                "{:>5} {:>8} {:>12} {:>12} {:>9} {:>12} {:>8}  {}{}",
                shard.shard,
                e.id,
                e.first_lsn,
                e.last_lsn,
                e.records,
                e.stored_bytes,
                e.crc32,
                e.file,
                if e.linked { " (hard link)" } else { "" }
            );
        }
    }
}

fn print_info(m: &Manifest, dir: &std::path::Path, as_json: bool) {
    let (segments, records, stored) = m.totals();
    if as_json {
        println!(
            "{}",
            json!({
                "snapshot": dir,
                "format": m.format,
                "created_by": m.created_by,
                "created_utc": m.created_utc,
                "created_unix_secs": m.created_unix_secs,
                "source": m.source,
                "segments": segments,
                "records": records,
                "stored_bytes": stored,
                "shards": cut_json(m),
            })
        );
        return;
    }
    println!("snapshot {} (format {})", dir.display(), m.format);
    println!("  of {}", source_line(m));
    println!("  written by {}", m.created_by);
    println!(
        "  {segments} segments, {records} records, {}",
        bytes(stored)
    );
    println!("  shard  last_lsn  segments  records");
    for s in &m.shards {
        println!(
            "  {:>5} {:>9} {:>9} {:>8}{}",
            s.shard,
            s.last_lsn,
            s.segments.len(),
            s.segments.iter().map(|e| e.records).sum::<u64>(),
            s.torn_tail_left_out
                .as_ref()
                .map(|t| format!("  (torn tail of {} bytes left out)", t.bytes))
                .unwrap_or_default()
        );
    }
}
