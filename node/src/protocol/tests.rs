#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

use super::*;
use crate::protocol::MetaKind;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use terrace_wal::store::{Delta, SetMode};

const LIMITS: Limits = Limits {
    item_size_max_bytes: 1024,
};

fn one(input: &[u8]) -> Parsed<'_> {
    parse(input, &LIMITS)
}

#[test]
fn storage_commands_borrow_key_and_data_and_accept_bare_newlines() {
    let input = b"set k 5 100 3\r\nabc\r\nrest";
    assert_eq!(
        one(input),
        Parsed::Request {
            command: Command::Store {
                mode: SetMode::Set,
                key: b"k",
                flags: 5,
                exptime: 100,
                data: b"abc",
                noreply: false,
            },
            len: 20,
        }
    );
    let Parsed::Request { command, .. } = one(b"cas  k 0 -1 0 77 noreply\n\r\n") else {
        panic!("cas with bare newline and double space");
    };
    assert_eq!(
        command,
        Command::Store {
            mode: SetMode::Cas(77),
            key: b"k",
            flags: 0,
            exptime: -1,
            data: b"",
            noreply: true,
        }
    );
    assert_eq!(one(b"set k 0 0 3\r\nab"), Parsed::Incomplete);
    assert_eq!(one(b"set k 0 0"), Parsed::Incomplete);
}

#[test]
fn bad_requests_get_memcached_errors() {
    let cases: &[(&[u8], ProtocolError)] = &[
        (b"bogus\r\n", ProtocolError::UnknownCommand),
        (b"\r\n", ProtocolError::UnknownCommand),
        (b"get\r\n", ProtocolError::UnknownCommand),
        (b"set k 0 0\r\n", ProtocolError::UnknownCommand),
        (b"cas k 0 0 1\r\n", ProtocolError::UnknownCommand),
        (b"set k 0 0 1 noreply x\r\n", ProtocolError::UnknownCommand),
        (b"delete\r\n", ProtocolError::UnknownCommand),
        (b"delete a b c d\r\n", ProtocolError::UnknownCommand),
        (b"incr k\r\n", ProtocolError::UnknownCommand),
        (b"touch k 1 2 3\r\n", ProtocolError::UnknownCommand),
        (b"flush_all 1 2 3\r\n", ProtocolError::UnknownCommand),
        (b"delete k foo\r\n", ProtocolError::DeleteUsage),
        (b"set k 0 0 -1\r\n", ProtocolError::BadCommandLine),
        (b"set k 0 0 x\r\n", ProtocolError::BadCommandLine),
        (b"set k 0 0 1\r\nabc", ProtocolError::BadDataChunk),
        (b"incr k x\r\n", ProtocolError::InvalidDelta),
        (b"incr k -1\r\n", ProtocolError::InvalidDelta),
        (b"touch k x\r\n", ProtocolError::InvalidExptime),
        (b"gat x k\r\n", ProtocolError::InvalidExptime),
        (b"delete k 5\r\n", ProtocolError::DeleteUsage),
        (b"delete k 0 foo\r\n", ProtocolError::DeleteUsage),
        (b"flush_all x\r\n", ProtocolError::InvalidExptime),
        (b"flush_all noreply 5\r\n", ProtocolError::InvalidExptime),
        // As memcached before 1.6, which is what memccapable expects of a server that reports
        // version 0.x (see parse.rs).
        (b"version x\r\n", ProtocolError::UnknownCommand),
        (b"quit x\r\n", ProtocolError::UnknownCommand),
        (b"verbosity\r\n", ProtocolError::UnknownCommand),
        (b"verbosity foo bar my\r\n", ProtocolError::UnknownCommand),
        (b"verbosity foo\r\n", ProtocolError::BadCommandLine),
    ];
    for (input, error) in cases {
        match one(input) {
            Parsed::Invalid {
                error: got,
                len,
                noreply,
            } => {
                assert_eq!(got, *error, "{}", String::from_utf8_lossy(input));
                assert!(!noreply, "{}", String::from_utf8_lossy(input));
                assert_eq!(len, input.len(), "{}", String::from_utf8_lossy(input));
            }
            other => panic!("{}: {other:?}", String::from_utf8_lossy(input)),
        }
    }
    let long_key = format!("get {}\r\n", "k".repeat(251));
    assert!(matches!(
        one(long_key.as_bytes()),
        Parsed::Invalid {
            error: ProtocolError::BadCommandLine,
            ..
        }
    ));
}

#[test]
fn refused_data_blocks_are_swallowed_and_set_deletes_the_old_value() {
    assert_eq!(
        one(b"set k 0 0 2000\r\n"),
        Parsed::Swallow {
            error: ProtocolError::TooLarge,
            len: 16,
            skip_bytes: 2002,
            delete_key: Some(b"k"),
            noreply: false,
        }
    );
    assert!(matches!(
        one(b"add k 0 0 2000\r\n"),
        Parsed::Swallow {
            delete_key: None,
            ..
        }
    ));
    let long_key = format!("set {} 0 0 1\r\n", "k".repeat(251));
    assert!(matches!(
        one(long_key.as_bytes()),
        Parsed::Swallow {
            error: ProtocolError::BadCommandLine,
            skip_bytes: 3,
            ..
        }
    ));
}

/// memcached's `out_string` drops every reply of a request that ends in `noreply`, its errors
/// too (checked against 1.6.18): `set k 0 0 1 noreply` with a bad data chunk, an oversized
/// `set ... noreply`, a `delete k 5 noreply`, a non-numeric delta all answer nothing. Terrace
/// sent these errors, so a client that pipelines noreply requests saw replies it never
/// expected and paired later replies with the wrong requests.
#[test]
fn errors_of_noreply_requests_are_not_answered() {
    let silent = |input: &[u8]| match one(input) {
        Parsed::Invalid { noreply, .. } | Parsed::Swallow { noreply, .. } => {
            assert!(noreply, "{}", String::from_utf8_lossy(input));
        }
        other => panic!("{}: {other:?}", String::from_utf8_lossy(input)),
    };
    silent(b"set k 0 0 1 noreply\r\nAB\r\n");
    silent(b"set k 0 0 2000 noreply\r\n");
    silent(b"set k x 0 1 noreply\r\nA\r\n");
    silent(b"set k 0 0 -1 noreply\r\n");
    silent(b"delete k 5 noreply\r\n");
    silent(b"incr k x noreply\r\n");
    silent(b"touch k x noreply\r\n");
    // The refused oversized set still drops the old value.
    assert!(matches!(
        one(b"set k 0 0 2000 noreply\r\n"),
        Parsed::Swallow {
            error: ProtocolError::TooLarge,
            skip_bytes: 2002,
            delete_key: Some(b"k"),
            noreply: true,
            ..
        }
    ));
}

/// memcached reads numeric arguments with strtol/strtoul (a leading `+` is fine): `set e 0 0
/// +1` stores one byte. Terrace answered `CLIENT_ERROR` and then ran the data block `A` as a
/// command; a data block must never be run as a command.
#[test]
fn numbers_are_read_as_memcached_reads_them() {
    assert_eq!(
        one(b"set e +5 +100 +1\r\nA\r\n"),
        Parsed::Request {
            command: Command::Store {
                mode: SetMode::Set,
                key: b"e",
                flags: 5,
                exptime: 100,
                data: b"A",
                noreply: false,
            },
            len: 21,
        }
    );
    let Parsed::Request { command, .. } = one(b"cas e 0 0 1 +7\r\nA\r\n") else {
        panic!("cas +7");
    };
    assert!(matches!(
        command,
        Command::Store {
            mode: SetMode::Cas(7),
            ..
        }
    ));
    let Parsed::Request { command, .. } = one(b"incr n +3\r\n") else {
        panic!("incr +3");
    };
    assert!(matches!(
        command,
        Command::Delta {
            delta: Delta::Incr(3),
            ..
        }
    ));
    let Parsed::Request { command, .. } = one(b"touch n +10\r\n") else {
        panic!("touch +10");
    };
    assert!(matches!(command, Command::Touch { exptime: 10, .. }));
    for bad in [
        &b"incr n -1\r\n"[..],
        b"incr n 3abc\r\n",
        b"incr n 18446744073709551616\r\n",
    ] {
        assert!(
            matches!(
                one(bad),
                Parsed::Invalid {
                    error: ProtocolError::InvalidDelta,
                    ..
                }
            ),
            "{}",
            String::from_utf8_lossy(bad)
        );
    }
}

#[test]
fn long_lines_close_the_connection_but_long_gets_do_not() {
    let line = vec![b'x'; 2049];
    assert_eq!(one(&line), Parsed::Close);
    assert_eq!(one(&line[..2000]), Parsed::Incomplete);
    // memcached runs a long line whose newline it has read (checked against 1.6.18: `set k
    // 0 0 1` padded to 3000 bytes stores; with a 2990-byte key it is `CLIENT_ERROR bad
    // command line format`); Terrace closed the connection.
    let mut padded = b"set k 0 0 1".to_vec();
    padded.extend(std::iter::repeat_n(b' ', 3000));
    padded.extend_from_slice(b"\r\nA\r\n");
    assert!(matches!(
        one(&padded),
        Parsed::Request {
            command: Command::Store { data: b"A", .. },
            ..
        }
    ));
    assert_eq!(one(&padded[..2100]), Parsed::Close);
    let long_key = format!("set {} 0 0 1\r\nA\r\n", "k".repeat(2990));
    assert!(matches!(
        one(long_key.as_bytes()),
        Parsed::Swallow {
            error: ProtocolError::BadCommandLine,
            ..
        }
    ));
    // A newline past memcached's 16 KiB read buffer is never seen there.
    let mut huge = b"set k 0 0 1".to_vec();
    huge.extend(std::iter::repeat_n(b' ', 16 << 10));
    huge.extend_from_slice(b"\r\nA\r\n");
    assert_eq!(one(&huge), Parsed::Close);
    // memcached skips up to 100 leading spaces before it looks for `get `.
    for (spaces, outcome) in [(100, Parsed::Incomplete), (101, Parsed::Close)] {
        let mut get = vec![b' '; spaces];
        get.extend_from_slice(b"get ");
        get.extend(std::iter::repeat_n(b"k ", 1500).flatten());
        assert_eq!(one(&get), outcome, "{spaces} spaces");
    }
    let mut get = b"get ".to_vec();
    while get.len() < 10_000 {
        get.extend_from_slice(b"key ");
    }
    assert_eq!(one(&get), Parsed::Incomplete);
    get.extend_from_slice(b"\r\n");
    let Parsed::Request {
        command: Command::Get { keys, with_cas },
        ..
    } = one(&get)
    else {
        panic!("long get");
    };
    assert!(!with_cas);
    assert_eq!(keys.iter().count(), 2499);
}

#[test]
fn other_commands() {
    let expect = |input: &[u8], command: Command<'_>| {
        assert_eq!(
            one(input),
            Parsed::Request {
                command,
                len: input.len()
            },
            "{}",
            String::from_utf8_lossy(input)
        );
    };
    expect(
        b"delete k 0 noreply\r\n",
        Command::Delete {
            key: b"k",
            noreply: true,
        },
    );
    expect(
        b"decr k 18446744073709551615\r\n",
        Command::Delta {
            key: b"k",
            delta: Delta::Decr(u64::MAX),
            noreply: false,
        },
    );
    expect(
        b"touch k -5 noreply\n",
        Command::Touch {
            key: b"k",
            exptime: -5,
            noreply: true,
        },
    );
    // memcached: `delete noreply` names the key "noreply"; an argument past the ones a
    // command needs is ignored unless it is `noreply`; `flush_all 0 2` ignores the 2.
    expect(
        b"delete noreply\r\n",
        Command::Delete {
            key: b"noreply",
            noreply: false,
        },
    );
    expect(
        b"incr k 1 x\r\n",
        Command::Delta {
            key: b"k",
            delta: Delta::Incr(1),
            noreply: false,
        },
    );
    expect(
        b"flush_all 0 2\r\n",
        Command::FlushAll {
            delay: 0,
            noreply: false,
        },
    );
    expect(
        b"flush_all noreply\r\n",
        Command::FlushAll {
            delay: 0,
            noreply: true,
        },
    );
    expect(
        b"flush_all 10 noreply\r\n",
        Command::FlushAll {
            delay: 10,
            noreply: true,
        },
    );
    expect(b"verbosity 1\r\n", Command::Verbosity { noreply: false });
    expect(b"verbosity 1 2\r\n", Command::Verbosity { noreply: false });
    // memcached stays silent on `verbosity noreply` even though it has no level (memcapable).
    expect(
        b"verbosity noreply\r\n",
        Command::Verbosity { noreply: true },
    );
    expect(
        b"stats  settings \r\n",
        Command::Stats { args: b"settings" },
    );
    // memcached runs stats by its first argument (checked against 1.6.18).
    expect(b"stats reset now\r\n", Command::Stats { args: b"reset" });
    expect(b"stats\r\n", Command::Stats { args: b"" });
    expect(b"debugtime 60\r\n", Command::DebugTime { shift_secs: 60 });
    let Parsed::Request {
        command:
            Command::GetAndTouch {
                exptime,
                keys,
                with_cas,
            },
        ..
    } = one(b"gats 100 a b\r\n")
    else {
        panic!("gats");
    };
    assert_eq!((exptime, with_cas), (100, true));
    assert_eq!(keys.iter().collect::<Vec<_>>(), vec![&b"a"[..], b"b"]);
    // memcached answers `gat 10` with no key `END`: a request with no keys, not an error.
    let Parsed::Request {
        command: Command::GetAndTouch { exptime, keys, .. },
        ..
    } = one(b"gat 10\r\n")
    else {
        panic!("gat without keys");
    };
    assert_eq!((exptime, keys.iter().count()), (10, 0));
}

fn outcomes(stream: &[u8], splits: &[usize]) -> Vec<String> {
    replay::replay(stream, splits, &LIMITS)
}

/// A random stream of mostly plausible requests, some broken.
fn random_stream(rng: &mut SmallRng) -> Vec<u8> {
    const WORDS: &[&str] = &[
        "get",
        "gets",
        "gat",
        "set",
        "add",
        "cas",
        "append",
        "delete",
        "incr",
        "decr",
        "touch",
        "flush_all",
        "stats",
        "version",
        "mg",
        "ms",
        "md",
        "ma",
        "mn",
        "v",
        "q",
        "b",
        "T5",
        "C1",
        "MA",
        "O",
        "Zm9v",
        "noreply",
        "0",
        "-1",
        "5",
        "k",
        "key2",
        "\r",
        "\n",
        "\r\n",
        " ",
        "  ",
    ];
    let mut stream = Vec::new();
    for _ in 0..rng.random_range(1..40) {
        match rng.random_range(0..10) {
            0 => stream.extend((0..rng.random_range(0..64)).map(|_| rng.random::<u8>())),
            // A line longer than LINE_LEN_MAX_BYTES: run if its newline comes in the same
            // read, else the connection closes.
            9 if rng.random_bool(0.2) => {
                stream.extend_from_slice(b"set k 0 0 1");
                stream.extend(std::iter::repeat_n(b' ', rng.random_range(2000..2100)));
                stream.extend_from_slice(b"\r\nv\r\n");
            }
            1..=3 => {
                let len = rng.random_range(0..1100);
                let line = if rng.random_bool(0.7) {
                    format!("set k 1 0 {len}\r\n")
                } else {
                    format!("ms k {len} F1 q\r\n")
                };
                stream.extend_from_slice(line.as_bytes());
                stream.extend(std::iter::repeat_n(b'v', len));
                stream.extend_from_slice(if rng.random_bool(0.9) { b"\r\n" } else { b"xx" });
            }
            _ => {
                for _ in 0..rng.random_range(1..8) {
                    stream.extend_from_slice(WORDS[rng.random_range(0..WORDS.len())].as_bytes());
                    stream.push(b' ');
                }
                stream.extend_from_slice(b"\r\n");
            }
        }
    }
    stream
}

/// Property: however a stream is split into reads, the parser sees the same requests (or
/// closes early on a long line read in pieces, as memcached), and no input makes it panic or
/// claim bytes it does not have.
#[test]
fn any_split_of_any_stream_parses_the_same() {
    let seeds: u64 = std::env::var("TERRACE_PARSER_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(300);
    for seed in 0..seeds {
        let mut rng = SmallRng::seed_from_u64(seed);
        let stream = random_stream(&mut rng);
        let whole = outcomes(&stream, &[]);
        let mut splits: Vec<usize> = (0..rng.random_range(1..20))
            .map(|_| rng.random_range(0..=stream.len()))
            .collect();
        splits.sort_unstable();
        let split = outcomes(&stream, &splits);
        assert!(
            replay::agrees(&whole, &split),
            "seed {seed}: splits {splits:?}: {whole:?} vs {split:?}"
        );
        let bytewise: Vec<usize> = (0..stream.len()).collect();
        assert!(
            replay::agrees(&whole, &outcomes(&stream, &bytewise)),
            "seed {seed}: byte by byte"
        );
    }
}

#[test]
fn first_key_is_the_key_a_request_looks_up_first() {
    // What the connection prefetches for the next request of a burst: it must name the key
    // `parse` would give for the one-key commands and `get`, and nothing for the others.
    let requests: [&[u8]; 16] = [
        b"mg m1 v\r\n",
        b"ms m2 1 T0\r\nv\r\n",
        b"md  m3 q\r\n",
        b"ma m4\n",
        b"set k1 0 0 1\r\nv\r\n",
        b"add k2 0 0 1\r\nv\r\n",
        b"replace k3 0 0 1\r\nv\r\n",
        b"append k4 0 0 1\r\nv\r\n",
        b"prepend k5 0 0 1\r\nv\r\n",
        b"cas k6 0 0 1 7\r\nv\r\n",
        b"delete k7\r\n",
        b"incr k8 1\r\n",
        b"decr k9 1\n",
        b"touch k10 5\r\n",
        b"get  k11 other\r\n",
        b"gets k12\n",
    ];
    for request in requests {
        let key = match one(request) {
            Parsed::Request { command, .. } => match command {
                Command::Store { key, .. }
                | Command::Delete { key, .. }
                | Command::Delta { key, .. }
                | Command::Touch { key, .. } => key.to_vec(),
                Command::Get { keys, .. } => keys.iter().next().unwrap().to_vec(),
                Command::Meta(meta) => meta.key_token.to_vec(),
                other => panic!("{other:?}"),
            },
            other => panic!("{other:?}"),
        };
        assert_eq!(first_key(request), Some(&key[..]), "{request:?}");
    }
    for no_key in [
        &b"version\r\n"[..],
        b"gat 10 k\r\n",
        b"stats items\r\n",
        b"flush_all 10\r\n",
        b"set k",
        b"get ",
        b"set  \r\n",
        b"",
    ] {
        assert_eq!(first_key(no_key), None, "{no_key:?}");
    }
}

#[test]
fn request_len_is_where_parse_ends_the_request() {
    // How the connection finds the request after the next one, to warm its lookup two
    // requests ahead: for every command `first_key` reads it must end the request where
    // `parse` does, and say nothing while the request is incomplete.
    let requests: [&[u8]; 18] = [
        b"mg m1 v\r\n",
        b"ms m2 3 T0 q\r\nabc\r\n",
        b"ms  m3 0\r\n\r\n",
        b"md m4 q\r\n",
        b"ma m5 D2\n",
        b"set k1 0 0 1\r\nv\r\n",
        b"add k2 5 10 3\r\nabc\r\n",
        b"replace k3 0 0 0\r\n\r\n",
        b"append k4 0 0 1\r\nv\r\n",
        b"prepend k5 0 0 1\r\nv\r\n",
        b"cas k6 0 0 1 7\r\nv\r\n",
        b"set  k7  0 0 2 noreply\r\nab\r\n",
        b"delete k8\r\n",
        b"incr k9 1\r\n",
        b"decr k10 1\n",
        b"touch k11 5\r\n",
        b"get  k12 other\r\n",
        b"gets k13\n",
    ];
    for request in requests {
        let Parsed::Request { len, .. } = one(request) else {
            panic!("{request:?} does not parse");
        };
        assert_eq!(len, request.len());
        assert_eq!(request_len(request), Some(len), "{request:?}");
        let mut two = request.to_vec();
        two.extend_from_slice(b"get next\r\n");
        assert_eq!(request_len(&two), Some(len), "{request:?} and another");
        assert_eq!(first_key(&two[len..]), Some(&b"next"[..]));
        for cut in 0..len {
            assert_eq!(
                request_len(&request[..cut]),
                None,
                "{request:?} cut at {cut}"
            );
        }
    }
    for other in [
        &b"version\r\n"[..],
        b"gat 10 k\r\n",
        b"flush_all 10\r\n",
        b"set k 0 0 -1\r\n\r\n",
        b"set k 0 0\r\n",
        b"set k 0 0 99999999999999999999\r\n",
        b"ms k x\r\n",
        b"ms k\r\n",
        b"mn\r\n",
        b"",
    ] {
        assert_eq!(request_len(other), None, "{other:?}");
    }
}

/// 20,000 inputs of up to `len_max` bytes drawn from `alphabet`, from `seed`.
fn random_lines(seed: u64, alphabet: &[u8], len_max: usize) -> impl Iterator<Item = Vec<u8>> {
    let mut rng = SmallRng::seed_from_u64(seed);
    (0..20_000).map(move |_| {
        let len = rng.random_range(0..len_max);
        (0..len)
            .map(|_| alphabet[rng.random_range(0..alphabet.len())])
            .collect()
    })
}

#[test]
fn request_len_never_panics_and_stays_within_the_buffer() {
    for input in random_lines(11, b"setgadlc k\r\n 0123", 48) {
        if let Some(n) = request_len(&input) {
            assert!(n > 0 && n <= input.len(), "{input:?}: {n}");
            if let Parsed::Request { len, .. } = one(&input) {
                assert_eq!(n, len, "{input:?}");
            }
        }
    }
}

#[test]
fn first_key_never_panics_and_names_only_bytes_of_the_line() {
    for input in random_lines(7, b"getsadlcr k\r\n 0123", 40) {
        if let Some(key) = first_key(&input) {
            assert!(!key.is_empty());
            assert!(!key.iter().any(|b| matches!(b, b' ' | b'\r' | b'\n')));
            let at = key.as_ptr() as usize - input.as_ptr() as usize;
            assert!(at + key.len() <= input.len());
        }
    }
}

#[test]
fn meta_requests_borrow_their_key_and_data_and_read_every_flag() {
    let Parsed::Request { command, len } = one(b"ms Zm9v 2 b q T-1 F7 C9 MA O42 k c\r\nhi\r\nmn")
    else {
        panic!("ms");
    };
    assert_eq!(len, 40);
    let Command::Meta(meta) = command else {
        panic!("not meta");
    };
    assert_eq!(meta.kind, MetaKind::Set);
    assert_eq!((meta.key_token, meta.data), (&b"Zm9v"[..], &b"hi"[..]));
    assert!(meta.base64 && meta.quiet && !meta.value);
    assert_eq!(
        (meta.ttl, meta.client_flags, meta.compare_cas),
        (Some(-1), 7, Some(9))
    );
    assert_eq!(
        (meta.set_mode, meta.opaque),
        (SetMode::Append, Some(&b"42"[..]))
    );
    assert_eq!(meta.returns.iter().collect::<Vec<_>>(), b"Okc");
    let mut buf = [0u8; 250];
    assert_eq!(meta.key(&mut buf), b"foo");

    let Parsed::Request {
        command: Command::Meta(meta),
        ..
    } = one(b"ma n N30 J5 D2 MD v\n")
    else {
        panic!("ma");
    };
    assert_eq!(
        (meta.vivify, meta.initial, meta.delta, meta.incr),
        (Some(30), 5, 2, false)
    );
    let Parsed::Request {
        command: Command::Meta(meta),
        ..
    } = one(b"mg k N30 R-5 v\r\n")
    else {
        panic!("mg with N and R");
    };
    assert_eq!((meta.vivify, meta.recache), (Some(30), Some(-5)));
    assert_eq!(
        one(b"mn\r\n"),
        Parsed::Request {
            command: Command::MetaNoop,
            len: 4
        }
    );
    assert_eq!(one(b"ms k 3\r\nab"), Parsed::Incomplete);
}

#[test]
fn a_refused_meta_set_skips_its_data_block() {
    let bad_flag = one(b"ms k 3 Z\r\nabc\r\n");
    assert_eq!(
        bad_flag,
        Parsed::Swallow {
            error: ProtocolError::InvalidFlag,
            len: 10,
            skip_bytes: 5,
            delete_key: None,
            noreply: false,
        }
    );
    // Too large: skipped, and the old value dropped.
    let Parsed::Swallow {
        error, delete_key, ..
    } = one(b"ms k 2000 T0\r\n")
    else {
        panic!("too large");
    };
    assert_eq!(
        (error, delete_key),
        (ProtocolError::TooLarge, Some(&b"k"[..]))
    );
    // In every mode, as memcached's meta path does; not for a base64 key.
    let Parsed::Swallow { delete_key, .. } = one(b"ms k 2000 ME\r\n") else {
        panic!("too large add");
    };
    assert_eq!(delete_key, Some(&b"k"[..]));
    let Parsed::Swallow { delete_key, .. } = one(b"ms Zm9v 2000 b\r\n") else {
        panic!("too large, base64 key");
    };
    assert_eq!(delete_key, None);
    // Without a length there is no block to skip.
    assert_eq!(
        one(b"ms k x\r\n"),
        Parsed::Invalid {
            error: ProtocolError::BadCommandLine,
            len: 8,
            noreply: false,
        }
    );
}
