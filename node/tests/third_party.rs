//! Third-party client suites against the real binary, in both persistence modes:
//! pymemcache 4.0.0's own integration tests, meta-memcache 4.3.0 (a client of the meta
//! protocol) through an application's calls, `memccapable -a` (the ASCII protocol checks of
//! libmemcached-tools), and memcached's `memcached-tool`. The test installs what it needs (pip
//! into the target dir, apt-get for libmemcached-tools and memcached), so a clean clone needs
//! nothing installed by hand; an install that fails fails the test with the command that
//! failed.
#![allow(clippy::expect_used, clippy::unwrap_used, reason = "tests")]

mod common;

use common::{INSTALL_LIMIT, Server, debian_package, on_path, output_within, write_config};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

/// Bound on one client suite run.
const SUITE_LIMIT: Duration = Duration::from_secs(300);

const PYMEMCACHE: &str = "pymemcache==4.0.0";
const PYTEST: &str = "pytest==8.3.4";
/// RevenueCat's client, which speaks only the meta protocol.
const META_MEMCACHE: &str = "meta-memcache==4.3.0";
const MODES: [&str; 2] = ["temporary-swap-only", "permanent-store"];
const MEMCACHED_TOOL: &str = "/usr/share/memcached/scripts/memcached-tool";

/// Runs `command` within `limit`; it must succeed.
fn run(command: &mut Command, limit: Duration) -> Output {
    let output = output_within(command, limit);
    if !output.status.success() {
        panic!(
            "{command:?} failed ({}):\n{}\n{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    output
}

/// pymemcache, pytest and meta-memcache in a directory of their own under the target dir
/// (kept between runs), installed once however many tests ask at the same time.
fn python_packages() -> PathBuf {
    static INSTALLED: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    INSTALLED
        .get_or_init(|| {
            let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("third-party-python");
            let marker = dir.join(".installed-pymemcache-4.0.0-meta-memcache-4.3.0");
            if !marker.exists() {
                run(
                    Command::new("python3").args([
                        "-m",
                        "pip",
                        "install",
                        "--quiet",
                        "--disable-pip-version-check",
                        "--no-warn-script-location",
                        "--upgrade",
                        "--target",
                        dir.to_str().unwrap(),
                        PYMEMCACHE,
                        PYTEST,
                        META_MEMCACHE,
                    ]),
                    INSTALL_LIMIT,
                );
                std::fs::write(&marker, b"").unwrap();
            }
            dir
        })
        .clone()
}

/// `memccapable`, installed from Debian's libmemcached-tools when it is missing.
fn memccapable() -> &'static str {
    debian_package("libmemcached-tools", || on_path("memccapable"));
    "memccapable"
}

/// memcached's own `memcached-tool` (a Perl script that operators use to look at a server),
/// installed with Debian's memcached package when it is missing.
fn memcached_tool() -> &'static Path {
    let tool = Path::new(MEMCACHED_TOOL);
    debian_package("memcached", || tool.exists());
    tool
}

#[test]
fn pymemcache_integration_suite_passes() {
    let packages = python_packages();
    let suite = packages.join("pymemcache/test/test_integration.py");
    for mode in MODES {
        let dir = tempfile::tempdir().unwrap();
        let server = Server::start(&write_config(dir.path(), mode), &["--cores", "2"]);
        let mut pytest = Command::new("python3");
        pytest
            .current_dir(&packages)
            .env("PYTHONPATH", &packages)
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .args(["-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider"])
            .arg(&suite)
            .args(["-m", "integration", "--server", "127.0.0.1", "--port"])
            .arg(server.port.to_string())
            // test_misc asks for `stats cachedump` and `cache_memlimit`: memcached's slab
            // allocator internals, which Terrace does not have.
            .args(["-k", "not test_misc"]);
        let out = output_within(&mut pytest, SUITE_LIMIT);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "pymemcache suite failed in {mode}:\n{stdout}\n{}\nserver log:\n{}",
            String::from_utf8_lossy(&out.stderr),
            server.log()
        );
        // The run must have exercised the suite, not skipped it.
        let summary = stdout.lines().last().unwrap_or_default();
        let passed: u32 = summary
            .split(" passed")
            .next()
            .and_then(|s| s.rsplit(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        assert!(passed >= 90, "too few tests ran in {mode}: {summary}");
    }
}

/// An application's calls through a client that speaks only meta commands
/// (`tests/clients/meta_memcache_check.py`): get, set with and without CAS, multi-get,
/// touch, counters, add, delete, base64 keys, a value large enough to be sent from the
/// mapping; in both modes, on two cores.
#[test]
fn meta_memcache_client_works() {
    let packages = python_packages();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients/meta_memcache_check.py");
    for mode in MODES {
        let dir = tempfile::tempdir().unwrap();
        let server = Server::start(&write_config(dir.path(), mode), &["--cores", "2"]);
        let mut check = Command::new("python3");
        check
            .env("PYTHONPATH", &packages)
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .arg(&script)
            .arg(server.port.to_string());
        let out = output_within(&mut check, SUITE_LIMIT);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains("all checks passed"),
            "meta-memcache checks failed in {mode}:\n{stdout}\n{}\nserver log:\n{}",
            String::from_utf8_lossy(&out.stderr),
            server.log()
        );
    }
}

#[test]
fn memccapable_ascii_passes() {
    let program = memccapable();
    for mode in MODES {
        let dir = tempfile::tempdir().unwrap();
        let server = Server::start(&write_config(dir.path(), mode), &["--cores", "2"]);
        // memccapable exits 0 even when a test fails: read its report.
        let out = run(
            Command::new(program).args([
                "-a",
                "-t",
                "10",
                "-h",
                "127.0.0.1",
                "-p",
                &server.port.to_string(),
            ]),
            SUITE_LIMIT,
        );
        let report = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let passes = report.matches("[pass]").count();
        assert!(
            !report.contains("FAIL") && passes >= 27,
            "memccapable -a in {mode}: {passes} passed\n{report}\nserver log:\n{}",
            server.log()
        );
    }
}

/// `memcached-tool HOST:PORT display` asks for `stats slabs` and `stats items` and reads each
/// reply to its `END`; before Terrace answered them (with no slab classes, as an empty
/// memcached does) it waited forever. `stats` and `settings` show the general block.
#[test]
fn memcached_tool_shows_the_server() {
    let tool = memcached_tool();
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(
        &write_config(dir.path(), "temporary-swap-only"),
        &["--cores", "2"],
    );
    let mut client = server.connect();
    assert_eq!(client.set("k", "v"), "STORED\r\n");
    let address = format!("127.0.0.1:{}", server.port);
    let tool_run = |mode: &str| {
        let out = run(
            Command::new("perl")
                .arg(tool)
                .args([address.as_str(), mode]),
            Duration::from_secs(30),
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let display = tool_run("display");
    assert!(display.contains("Item_Size"), "display:\n{display}");
    let stats = tool_run("stats");
    let items = stats
        .lines()
        .find(|l| l.split_whitespace().next() == Some("curr_items"))
        .unwrap_or_else(|| panic!("no curr_items in\n{stats}"));
    assert_eq!(items.split_whitespace().nth(1), Some("1"), "{items}");
    let settings = tool_run("settings");
    assert!(settings.contains("item_size_max"), "settings:\n{settings}");
}
