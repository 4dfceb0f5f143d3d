//! The 64-byte header at the start of every segment file.
//!
//! ```text
//! offset 0   magic       [u8; 8] "TRRCSEG\0"
//!        8   version     u32 LE  FORMAT_VERSION (1 is read too)
//!        12  header_len  u32 LE  64
//!        16  segment_id  u64 LE  same as in the file name
//!        24  size        u64 LE  file size in bytes
//!        32  first_lsn   u64 LE  LSN of the first record in the segment
//!        40  reserved    [u8; 20] zero
//!        60  crc32       u32 LE  over bytes [0, 60)
//! ```
//!
//! The header is written only once every earlier segment is durable (see `log::group_commit`):
//! a segment whose header is all zeros never held an acknowledged record.

use crate::constants::{
    FORMAT_VERSION, FORMAT_VERSION_OLDEST_READ, SEGMENT_HEADER_CRC_OFFSET,
    SEGMENT_HEADER_FIRST_LSN_OFFSET, SEGMENT_HEADER_ID_OFFSET, SEGMENT_HEADER_LEN_BYTES,
    SEGMENT_HEADER_LEN_OFFSET, SEGMENT_HEADER_MAGIC_OFFSET, SEGMENT_HEADER_RESERVED_OFFSET,
    SEGMENT_HEADER_SIZE_OFFSET, SEGMENT_HEADER_VERSION_OFFSET, SEGMENT_MAGIC,
};

/// The decoded fields of a segment header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentHeader {
    /// Segment id, as in the file name.
    pub segment_id: u64,
    /// Size of the segment file in bytes.
    pub size_bytes: u64,
    /// LSN of the first record written into the segment.
    pub first_lsn: u64,
    /// Format version the segment was written in (`FORMAT_VERSION` for new segments).
    pub version: u32,
}

/// What the first bytes of a segment file hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SegmentHeaderCheck {
    /// All zero: the segment was never activated.
    Zero,
    /// A valid header.
    Valid(SegmentHeader),
    /// Not a valid header; the string says why.
    Invalid(String),
}

impl SegmentHeader {
    /// Encodes the header.
    pub fn encode(&self) -> [u8; SEGMENT_HEADER_LEN_BYTES] {
        let mut out = [0u8; SEGMENT_HEADER_LEN_BYTES];
        out[SEGMENT_HEADER_MAGIC_OFFSET..SEGMENT_HEADER_VERSION_OFFSET]
            .copy_from_slice(&SEGMENT_MAGIC);
        out[SEGMENT_HEADER_VERSION_OFFSET..SEGMENT_HEADER_LEN_OFFSET]
            .copy_from_slice(&self.version.to_le_bytes());
        out[SEGMENT_HEADER_LEN_OFFSET..SEGMENT_HEADER_ID_OFFSET]
            .copy_from_slice(&(SEGMENT_HEADER_LEN_BYTES as u32).to_le_bytes());
        out[SEGMENT_HEADER_ID_OFFSET..SEGMENT_HEADER_SIZE_OFFSET]
            .copy_from_slice(&self.segment_id.to_le_bytes());
        out[SEGMENT_HEADER_SIZE_OFFSET..SEGMENT_HEADER_FIRST_LSN_OFFSET]
            .copy_from_slice(&self.size_bytes.to_le_bytes());
        out[SEGMENT_HEADER_FIRST_LSN_OFFSET..SEGMENT_HEADER_RESERVED_OFFSET]
            .copy_from_slice(&self.first_lsn.to_le_bytes());
        let crc = crc32fast::hash(&out[..SEGMENT_HEADER_CRC_OFFSET]);
        out[SEGMENT_HEADER_CRC_OFFSET..].copy_from_slice(&crc.to_le_bytes());
        out
    }

    /// The format version of a header written by a newer build than this one (magic and
    /// checksum valid, version above `FORMAT_VERSION`), if it is one: its segment is not
    /// damaged, only not readable by this build.
    pub fn newer_version(bytes: &[u8]) -> Option<u32> {
        let header = bytes.get(..SEGMENT_HEADER_LEN_BYTES)?;
        let mut word = [0u8; 4];
        word.copy_from_slice(&header[SEGMENT_HEADER_VERSION_OFFSET..SEGMENT_HEADER_LEN_OFFSET]);
        let version = u32::from_le_bytes(word);
        word.copy_from_slice(&header[SEGMENT_HEADER_CRC_OFFSET..]);
        let crc_ok =
            u32::from_le_bytes(word) == crc32fast::hash(&header[..SEGMENT_HEADER_CRC_OFFSET]);
        (header[SEGMENT_HEADER_MAGIC_OFFSET..SEGMENT_HEADER_VERSION_OFFSET] == SEGMENT_MAGIC
            && crc_ok
            && version > FORMAT_VERSION)
            .then_some(version)
    }

    /// Decodes and checks the header at the start of `bytes`.
    pub fn check(bytes: &[u8]) -> SegmentHeaderCheck {
        let Some(header) = bytes.get(..SEGMENT_HEADER_LEN_BYTES) else {
            // Empty (or short and zero): a spare whose allocation a crash cut short.
            if bytes.iter().all(|&b| b == 0) {
                return SegmentHeaderCheck::Zero;
            }
            return SegmentHeaderCheck::Invalid("file is shorter than a segment header".into());
        };
        if header.iter().all(|&b| b == 0) {
            return SegmentHeaderCheck::Zero;
        }
        let word32 = |at: usize| {
            let mut w = [0u8; 4];
            w.copy_from_slice(&header[at..at + 4]);
            u32::from_le_bytes(w)
        };
        let word64 = |at: usize| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&header[at..at + 8]);
            u64::from_le_bytes(w)
        };
        if header[SEGMENT_HEADER_MAGIC_OFFSET..SEGMENT_HEADER_VERSION_OFFSET] != SEGMENT_MAGIC {
            return SegmentHeaderCheck::Invalid("bad magic: not a Terrace segment".into());
        }
        let stored_crc = word32(SEGMENT_HEADER_CRC_OFFSET);
        let computed_crc = crc32fast::hash(&header[..SEGMENT_HEADER_CRC_OFFSET]);
        if stored_crc != computed_crc {
            return SegmentHeaderCheck::Invalid(format!(
                "header checksum mismatch (stored {stored_crc:#010x}, computed {computed_crc:#010x})"
            ));
        }
        let version = word32(SEGMENT_HEADER_VERSION_OFFSET);
        if !(FORMAT_VERSION_OLDEST_READ..=FORMAT_VERSION).contains(&version) {
            return SegmentHeaderCheck::Invalid(format!(
                "format version {version}, this build reads versions \
                 {FORMAT_VERSION_OLDEST_READ} to {FORMAT_VERSION}"
            ));
        }
        let header_len = word32(SEGMENT_HEADER_LEN_OFFSET);
        if header_len as usize != SEGMENT_HEADER_LEN_BYTES {
            return SegmentHeaderCheck::Invalid(format!("header length {header_len}"));
        }
        if header[SEGMENT_HEADER_RESERVED_OFFSET..SEGMENT_HEADER_CRC_OFFSET]
            .iter()
            .any(|&b| b != 0)
        {
            return SegmentHeaderCheck::Invalid("reserved header bytes are not zero".into());
        }
        let segment_id = word64(SEGMENT_HEADER_ID_OFFSET);
        // Ids and LSNs start at 1; the index holds a segment id in 32 bits.
        if segment_id == 0 || segment_id > u64::from(u32::MAX) {
            return SegmentHeaderCheck::Invalid(format!("segment id {segment_id} out of range"));
        }
        let first_lsn = word64(SEGMENT_HEADER_FIRST_LSN_OFFSET);
        if first_lsn == 0 {
            return SegmentHeaderCheck::Invalid("first LSN 0 (LSNs start at 1)".into());
        }
        // No log gets near 2^63 records; an LSN up there would overflow as it counts on.
        if first_lsn >= 1 << 63 {
            return SegmentHeaderCheck::Invalid(format!("first LSN {first_lsn} out of range"));
        }
        SegmentHeaderCheck::Valid(SegmentHeader {
            segment_id,
            size_bytes: word64(SEGMENT_HEADER_SIZE_OFFSET),
            first_lsn,
            version,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_every_flipped_bit_is_caught() {
        let header = SegmentHeader {
            segment_id: 7,
            size_bytes: 1 << 20,
            first_lsn: 12345,
            version: FORMAT_VERSION,
        };
        let bytes = header.encode();
        assert_eq!(
            SegmentHeader::check(&bytes),
            SegmentHeaderCheck::Valid(header)
        );
        for bit in 0..SEGMENT_HEADER_LEN_BYTES * 8 {
            let mut flipped = bytes;
            flipped[bit / 8] ^= 1 << (bit % 8);
            assert!(
                matches!(
                    SegmentHeader::check(&flipped),
                    SegmentHeaderCheck::Invalid(_)
                ),
                "bit {bit} flip not detected"
            );
        }
        assert_eq!(SegmentHeader::check(&[0u8; 64]), SegmentHeaderCheck::Zero);
    }

    #[test]
    fn ids_and_lsns_out_of_range_are_refused_even_with_a_good_checksum() {
        for (segment_id, first_lsn) in [
            (0, 1),
            (u64::from(u32::MAX) + 1, 1),
            (1, 0),
            (1, 1 << 63),
            (1, u64::MAX),
        ] {
            let header = SegmentHeader {
                segment_id,
                size_bytes: 1 << 20,
                first_lsn,
                version: FORMAT_VERSION,
            };
            assert!(
                matches!(
                    SegmentHeader::check(&header.encode()),
                    SegmentHeaderCheck::Invalid(_)
                ),
                "id {segment_id}, first LSN {first_lsn}"
            );
        }
    }

    #[test]
    fn versions_from_the_oldest_read_to_the_current_are_read_and_no_others() {
        let header = |version| SegmentHeader {
            segment_id: 3,
            size_bytes: 1 << 20,
            first_lsn: 9,
            version,
        };
        for version in FORMAT_VERSION_OLDEST_READ..=FORMAT_VERSION {
            assert_eq!(
                SegmentHeader::check(&header(version).encode()),
                SegmentHeaderCheck::Valid(header(version))
            );
        }
        for version in [0, FORMAT_VERSION + 1, u32::MAX] {
            assert!(
                matches!(
                    SegmentHeader::check(&header(version).encode()),
                    SegmentHeaderCheck::Invalid(_)
                ),
                "version {version}"
            );
        }
        // A newer one is told apart from damage.
        assert_eq!(
            SegmentHeader::newer_version(&header(FORMAT_VERSION + 1).encode()),
            Some(FORMAT_VERSION + 1)
        );
        assert_eq!(
            SegmentHeader::newer_version(&header(FORMAT_VERSION).encode()),
            None
        );
        let mut damaged = header(FORMAT_VERSION + 1).encode();
        damaged[20] ^= 1;
        assert_eq!(SegmentHeader::newer_version(&damaged), None);
    }

    #[test]
    fn a_short_file_is_a_cut_short_spare_only_if_it_is_all_zero() {
        // A spare is allocated in the background: a crash can leave it empty or short.
        assert_eq!(SegmentHeader::check(&[]), SegmentHeaderCheck::Zero);
        assert_eq!(SegmentHeader::check(&[0u8; 10]), SegmentHeaderCheck::Zero);
        let mut short = [0u8; 10];
        short[3] = 1;
        assert!(matches!(
            SegmentHeader::check(&short),
            SegmentHeaderCheck::Invalid(_)
        ));
    }
}
