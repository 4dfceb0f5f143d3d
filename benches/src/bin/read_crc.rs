//! `read-crc DIR...`: reads every file under the directories sequentially and computes the
//! CRC-32 of each, as fast as one thread can. The baseline `benches/backup` holds
//! `backup-data verify` against: the least work a verifier of the same bytes must do.

use std::io::Read as _;
use std::path::Path;

fn walk(path: &Path, buffer: &mut [u8], total: &mut u64) -> std::io::Result<()> {
    if path.is_dir() {
        let mut entries: Vec<_> = std::fs::read_dir(path)?
            .map(|e| e.map(|e| e.path()))
            .collect::<Result<_, _>>()?;
        entries.sort();
        for entry in entries {
            walk(&entry, buffer, total)?;
        }
        return Ok(());
    }
    let mut file = std::fs::File::open(path)?;
    let mut hasher = crc32fast::Hasher::new();
    loop {
        let n = file.read(buffer)?;
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
        *total += n as u64;
    }
    std::hint::black_box(hasher.finalize());
    Ok(())
}

fn main() -> std::process::ExitCode {
    let mut buffer = vec![0u8; 1 << 20];
    let mut total = 0u64;
    let started = std::time::Instant::now();
    for dir in std::env::args().skip(1) {
        if let Err(e) = walk(Path::new(&dir), &mut buffer, &mut total) {
            eprintln!("read-crc: {dir}: {e}");
            return std::process::ExitCode::FAILURE;
        }
    }
    println!("{total} bytes in {:.3} s", started.elapsed().as_secs_f64());
    std::process::ExitCode::SUCCESS
}
