//! Replication frames: what flows on a shard's replication connection after the passive's
//! `REPLICATE` line. Binary, little-endian, a 32-byte header and a payload:
//!
//! ```text
//! offset size field
//!      0    1 kind      (below)
//!      1    1 flags     START: bit 0 = snapshot (the passive resets the shard first)
//!      2    2 zero
//!      4    4 len       payload bytes after the header (at most FRAME_PAYLOAD_MAX_BYTES)
//!      8    8 term      the active's term: a frame from another term is refused
//!     16    8 lsn       kind-specific LSN
//!     24    8 value     kind-specific number
//! ```
//!
//! Active to passive: `START` (lsn: the first record that follows; value: the snapshot's
//! bytes, for progress), `RECORDS` (lsn: the first record's; payload: whole log records with
//! consecutive LSNs, byte for byte as in the active's log, each with its own CRC), `SNAPSHOT_END`
//! (lsn: the snapshot's last), `IN_SYNC` (lsn: every record before it was sent; the passive is
//! in the active's sync set from it on), `KEEPALIVE`, `REFUSE` (payload: why, text).
//! Passive to active: `ACK` (lsn: every record up to it is in the passive's log, and durable
//! there in permanent-store).

use futures_lite::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use std::io;

/// Length of a frame header.
pub const FRAME_HEADER_LEN_BYTES: usize = 32;
/// Largest payload accepted (a batch of records, or one record of the largest size).
pub const FRAME_PAYLOAD_MAX_BYTES: usize = 64 << 20;

const KIND_OFFSET: usize = 0;
const FLAGS_OFFSET: usize = 1;
const ZERO_OFFSET: usize = 2;
const LEN_OFFSET: usize = 4;
const TERM_OFFSET: usize = 8;
const LSN_OFFSET: usize = 16;
const VALUE_OFFSET: usize = 24;

/// START flag: the stream begins with a snapshot.
pub const FLAG_SNAPSHOT: u8 = 1;

/// What a frame is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The stream begins.
    Start = 1,
    /// Log records.
    Records = 2,
    /// The snapshot's records are all sent.
    SnapshotEnd = 3,
    /// Caught up: the passive is in the sync set.
    InSync = 4,
    /// Nothing new (keeps an idle stream's read timeout from firing).
    Keepalive = 5,
    /// The request is refused.
    Refuse = 6,
    /// The passive's acknowledgment.
    Ack = 7,
}

impl Kind {
    fn from_byte(byte: u8) -> Option<Self> {
        Some(match byte {
            1 => Self::Start,
            2 => Self::Records,
            3 => Self::SnapshotEnd,
            4 => Self::InSync,
            5 => Self::Keepalive,
            6 => Self::Refuse,
            7 => Self::Ack,
            _ => return None,
        })
    }
}

/// A frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// What it is.
    pub kind: Kind,
    /// Kind-specific flags.
    pub flags: u8,
    /// Payload length.
    pub len: u32,
    /// The active's term.
    pub term: u64,
    /// Kind-specific LSN.
    pub lsn: u64,
    /// Kind-specific number.
    pub value: u64,
}

impl Header {
    /// A header without payload.
    pub fn new(kind: Kind, term: u64, lsn: u64) -> Self {
        Self {
            kind,
            flags: 0,
            len: 0,
            term,
            lsn,
            value: 0,
        }
    }

    /// The header's bytes.
    pub fn encode(&self) -> [u8; FRAME_HEADER_LEN_BYTES] {
        let mut bytes = [0u8; FRAME_HEADER_LEN_BYTES];
        bytes[KIND_OFFSET] = self.kind as u8;
        bytes[FLAGS_OFFSET] = self.flags;
        bytes[LEN_OFFSET..LEN_OFFSET + 4].copy_from_slice(&self.len.to_le_bytes());
        bytes[TERM_OFFSET..TERM_OFFSET + 8].copy_from_slice(&self.term.to_le_bytes());
        bytes[LSN_OFFSET..LSN_OFFSET + 8].copy_from_slice(&self.lsn.to_le_bytes());
        bytes[VALUE_OFFSET..VALUE_OFFSET + 8].copy_from_slice(&self.value.to_le_bytes());
        bytes
    }

    /// Parses a header; an error says what is wrong with it.
    pub fn decode(bytes: &[u8; FRAME_HEADER_LEN_BYTES]) -> Result<Self, String> {
        let kind = Kind::from_byte(bytes[KIND_OFFSET])
            .ok_or_else(|| format!("unknown frame kind {}", bytes[KIND_OFFSET]))?;
        if bytes[ZERO_OFFSET..LEN_OFFSET] != [0, 0] {
            return Err("non-zero reserved bytes in a frame header".into());
        }
        let u64_at = |at: usize| {
            let mut word = [0u8; 8];
            word.copy_from_slice(&bytes[at..at + 8]);
            u64::from_le_bytes(word)
        };
        let mut len = [0u8; 4];
        len.copy_from_slice(&bytes[LEN_OFFSET..LEN_OFFSET + 4]);
        let len = u32::from_le_bytes(len);
        if len as usize > FRAME_PAYLOAD_MAX_BYTES {
            return Err(format!("a frame payload of {len} bytes"));
        }
        Ok(Self {
            kind,
            flags: bytes[FLAGS_OFFSET],
            len,
            term: u64_at(TERM_OFFSET),
            lsn: u64_at(LSN_OFFSET),
            value: u64_at(VALUE_OFFSET),
        })
    }
}

/// A `REFUSE` frame's bytes, whole: sent instead of a stream.
pub fn refusal(reason: &str) -> Vec<u8> {
    let mut header = Header::new(Kind::Refuse, 0, 0);
    let reason = &reason.as_bytes()[..reason.len().min(4096)];
    header.len = reason.len() as u32;
    let mut bytes = header.encode().to_vec();
    bytes.extend_from_slice(reason);
    bytes
}

/// Reads one frame; its payload replaces `payload`'s contents.
pub async fn read(
    stream: &mut (impl AsyncRead + Unpin),
    payload: &mut Vec<u8>,
) -> io::Result<Header> {
    let mut bytes = [0u8; FRAME_HEADER_LEN_BYTES];
    stream.read_exact(&mut bytes).await?;
    let header =
        Header::decode(&bytes).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    payload.clear();
    payload.resize(header.len as usize, 0);
    stream.read_exact(payload).await?;
    Ok(header)
}

/// Writes one frame (`header.len` is set from the payload), in one write when small.
pub async fn write(
    stream: &mut (impl AsyncWrite + Unpin),
    mut header: Header,
    payload: &[u8],
) -> io::Result<()> {
    header.len = u32::try_from(payload.len())
        .ok()
        .filter(|&len| len as usize <= FRAME_PAYLOAD_MAX_BYTES)
        .ok_or_else(|| io::Error::other(format!("a frame of {} bytes", payload.len())))?;
    if payload.len() <= 4096 {
        let mut bytes = Vec::with_capacity(FRAME_HEADER_LEN_BYTES + payload.len());
        bytes.extend_from_slice(&header.encode());
        bytes.extend_from_slice(payload);
        stream.write_all(&bytes).await?;
    } else {
        stream.write_all(&header.encode()).await?;
        stream.write_all(payload).await?;
    }
    stream.flush().await
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]
    use super::*;

    #[test]
    fn headers_round_trip_and_bad_ones_are_refused() {
        let header = Header {
            kind: Kind::Start,
            flags: FLAG_SNAPSHOT,
            len: 17,
            term: 3,
            lsn: u64::MAX,
            value: 1 << 40,
        };
        assert_eq!(Header::decode(&header.encode()).unwrap(), header);
        let mut unknown = header.encode();
        unknown[KIND_OFFSET] = 99;
        assert!(Header::decode(&unknown).is_err());
        let mut reserved = header.encode();
        reserved[ZERO_OFFSET] = 1;
        assert!(Header::decode(&reserved).is_err());
        let mut huge = header.encode();
        huge[LEN_OFFSET..LEN_OFFSET + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(Header::decode(&huge).is_err());
    }

    #[test]
    fn frames_round_trip_through_a_stream() {
        futures_lite::future::block_on(async {
            let mut bytes = Vec::new();
            let big = vec![7u8; 10_000];
            write(&mut bytes, Header::new(Kind::Ack, 2, 99), &[])
                .await
                .unwrap();
            write(&mut bytes, Header::new(Kind::Records, 2, 5), &big)
                .await
                .unwrap();
            let mut reader = &bytes[..];
            let mut payload = Vec::new();
            let ack = read(&mut reader, &mut payload).await.unwrap();
            assert_eq!((ack.kind, ack.lsn, payload.len()), (Kind::Ack, 99, 0));
            let records = read(&mut reader, &mut payload).await.unwrap();
            assert_eq!(
                (records.kind, records.len as usize),
                (Kind::Records, big.len())
            );
            assert_eq!(payload, big);
            assert!(
                read(&mut reader, &mut payload).await.is_err(),
                "end of stream"
            );
        });
    }
}
