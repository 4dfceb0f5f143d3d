//! Every limit of the server, in one place. Units last in names.

/// memcached's limit on a request line that is not a multi-key get: more bytes than this
/// buffered without a newline close the connection. A line whose newline arrives with it
/// may be longer (up to [`LINE_WITH_NEWLINE_LEN_MAX_BYTES`]).
pub const LINE_LEN_MAX_BYTES: usize = 2048;

/// The longest request line (newline included) that is not a multi-key get and is run at all:
/// memcached runs a line whose newline is in its 16 KiB read buffer whatever its length
/// (`set k 0 0 1` padded to 3000 bytes stores), and never sees the newline of a longer one.
pub const LINE_WITH_NEWLINE_LEN_MAX_BYTES: usize = 16 << 10;

/// memcached looks for `get `/`gets ` after at most this many leading spaces when it decides
/// whether a line without a newline may grow past [`LINE_LEN_MAX_BYTES`].
pub const GET_LEADING_SPACES_MAX: usize = 100;

/// A `get`/`gets`/`gat`/`gats` line may carry many keys: it may be this long.
pub const GET_LINE_LEN_MAX_BYTES: usize = 256 << 10;

/// Keys per `get` line: a limit on the work one request line can ask for.
pub const GET_KEYS_MAX: usize = 8192;

/// Tokens in a request line that is not a multi-key get (memcached's MAX_TOKENS is 24).
pub const TOKENS_MAX: usize = 24;

/// Replies gathered for one connection before they are written even if more requests of
/// the same read burst wait: bounds a connection's memory under deep pipelining.
pub const REPLY_FLUSH_BYTES: usize = 1 << 20;

/// First size of a connection's receive buffer; it grows to hold one whole request (at most
/// a line plus the largest item) and shrinks back when idle.
pub const RECV_BUFFER_INITIAL_BYTES: usize = 16 << 10;

/// Bytes read from a socket per read call.
pub const RECV_CHUNK_BYTES: usize = 64 << 10;

/// Capacity of each cross-core request and reply channel (messages).
pub const MESH_CHANNEL_CAPACITY: usize = 1024;

/// Shard count of a new data dir when a config with a mirror group of several servers leaves
/// `storage.shards` out (its servers must agree, so none may choose).
pub const SHARDS_GROUP_DEFAULT: u32 = 8;

/// `storage.shards = "auto"`: shards per core of a new data dir, where a flush is cheap or
/// never made (temporary-swap-only). Several logs per core overlap their syncs in the disk.
pub const AUTO_SHARDS_PER_CORE: u32 = 4;

/// `storage.shards = "auto"`: at most this many shards (each preallocates two segments), unless
/// there are more cores.
pub const AUTO_SHARDS_MAX: u32 = 64;

/// Largest shard count accepted.
pub const SHARDS_MAX: u32 = 1024;

/// glommio's registered I/O memory per executor. We use no DMA buffers; keep it small so
/// that it fits a default memlock limit (8 MiB here).
pub const EXECUTOR_IO_MEMORY_BYTES: usize = 1 << 20;

/// glommio refuses to start with less locked memory than this.
pub const GLOMMIO_MEMLOCK_MIN_BYTES: u64 = 512 << 10;

/// How often stopping tasks look at the shutdown flag.
pub const SHUTDOWN_POLL_MILLIS: u64 = 20;

/// Connections accepted per executor before new ones are refused.
pub const CONNECTIONS_MAX_DEFAULT: usize = 4096;

const _: () = assert!(LINE_LEN_MAX_BYTES < LINE_WITH_NEWLINE_LEN_MAX_BYTES);
const _: () = assert!(LINE_WITH_NEWLINE_LEN_MAX_BYTES < GET_LINE_LEN_MAX_BYTES);
// A line of the longest length it may have arrives whole in the first read of a connection.
const _: () = assert!(LINE_WITH_NEWLINE_LEN_MAX_BYTES <= RECV_BUFFER_INITIAL_BYTES);
const _: () = assert!(SHARDS_GROUP_DEFAULT <= SHARDS_MAX);
const _: () = assert!(AUTO_SHARDS_MAX <= SHARDS_MAX);

/// Online-backup cuts an executor holds at once (each pins segments against removal until
/// it is released or its connection closes).
pub const BACKUP_CUTS_MAX: usize = 4;

/// The file a new permanent-store data dir's flush probe writes (and removes).
pub const FLUSH_PROBE_FILE: &str = "flush-probe.tmp";

/// 4 KiB write + fdatasync rounds of the flush probe; the median is reported.
pub const FLUSH_PROBE_ROUNDS: usize = 16;

/// A disk flush at least this slow (µs) makes many logs per core slower than few: every log
/// flushes on its own, and the device merges none of them (README, "Choosing
/// storage.shards"). Between the measured disks: on those of 60-87 µs 4 logs per core did
/// best, on those of 135-266 µs one.
pub const SLOW_FLUSH_MICROS: u64 = 100;

/// Logs per core above which start-up warns on a slow-flush disk (1 and 2 measured best).
pub const SLOW_FLUSH_LOGS_PER_CORE: usize = 2;
