//! Fuzzes the memcached parser the way a connection drives it: any bytes, split into reads at
//! points taken from the input itself. Checks that nothing panics, that every parse claims
//! bytes it has (asserted inside `replay`), and that the split never changes the outcome but
//! to close early on a long line read in pieces, as memcached does (`replay::agrees`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use terrace_node::protocol::Limits;
use terrace_node::protocol::replay::{agrees, replay};

/// Small, so the fuzzer reaches the too-large path with short inputs.
const LIMITS: Limits = Limits {
    item_size_max_bytes: 64,
};

fuzz_target!(|data: &[u8]| {
    // The first byte picks how many split points follow, each one byte, scaled to the stream.
    let Some((&count, rest)) = data.split_first() else {
        return;
    };
    let count = usize::from(count % 8).min(rest.len());
    let (points, stream) = rest.split_at(count);
    let mut splits: Vec<usize> = points
        .iter()
        .map(|&p| usize::from(p) * stream.len() / 255)
        .collect();
    splits.sort_unstable();
    let whole = replay(stream, &[], &LIMITS);
    let split = replay(stream, &splits, &LIMITS);
    assert!(agrees(&whole, &split), "splits {splits:?}: {whole:?} vs {split:?}");
    if stream.len() <= 512 {
        let bytewise: Vec<usize> = (0..stream.len()).collect();
        assert_eq!(whole, replay(stream, &bytewise, &LIMITS), "byte by byte");
    }
});
