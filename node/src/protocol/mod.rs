//! The memcached text protocol: requests parsed in place from the receive buffer
//! ([`parse()`]), replies written into the connection's send buffer ([`reply`]).
//!
//! Protocol errors become memcached's exact strings here and nowhere else
//! ([`ProtocolError::reply`]).

mod meta;
mod parse;
pub mod replay;
pub mod reply;

pub use meta::{Meta, MetaKind};
pub use parse::{Command, Keys, Limits, Parsed, first_key, parse, request_len};

/// A request the server answers with an error, keeping the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProtocolError {
    /// Not a command we know, or a command without its arguments.
    UnknownCommand,
    /// Arguments of the wrong number or form, or a bad key.
    BadCommandLine,
    /// `delete` with arguments memcached does not accept.
    DeleteUsage,
    /// A data block not followed by `\r\n`.
    BadDataChunk,
    /// A `touch`/`gat` expiry that is not a number.
    InvalidExptime,
    /// An `incr`/`decr` amount that is not a 64-bit unsigned number.
    InvalidDelta,
    /// A value larger than the item size limit.
    TooLarge,
    /// A meta flag the command does not have.
    InvalidFlag,
    /// A meta flag given twice (`mg`, `ms`).
    DuplicateFlag,
    /// A bad, repeated or unknown meta flag of `md` or `ma` (memcached's one error for all).
    InvalidOrDuplicateFlag,
    /// A meta flag's number that is not one.
    BadToken,
    /// A `b` key that is not base64 of 1 to 250 bytes.
    KeyDecode,
    /// An `O` token over 32 bytes.
    OpaqueTooLong,
    /// An `ms` mode other than E, A, P, R, S.
    InvalidSetMode,
    /// An `ma` mode other than I, +, D, -.
    InvalidArithmeticMode,
    /// An `ms` mode of other than one letter.
    ModeLength,
    /// More meta flags than memcached accepts.
    FlagsTooLong,
    /// Too many flags on `ms`, `md` or `ma` (memcached words it without "are").
    OptionsTooLong,
    /// A meta flag memcached has and Terrace does not implement.
    FlagNotSupported,
}

impl ProtocolError {
    /// memcached's reply line, with its `\r\n`.
    pub fn reply(self) -> &'static [u8] {
        match self {
            Self::UnknownCommand => b"ERROR\r\n",
            Self::BadCommandLine => b"CLIENT_ERROR bad command line format\r\n",
            Self::DeleteUsage => {
                b"CLIENT_ERROR bad command line format.  Usage: delete <key> [noreply]\r\n"
            }
            Self::BadDataChunk => b"CLIENT_ERROR bad data chunk\r\n",
            Self::InvalidExptime => b"CLIENT_ERROR invalid exptime argument\r\n",
            Self::InvalidDelta => b"CLIENT_ERROR invalid numeric delta argument\r\n",
            Self::TooLarge => b"SERVER_ERROR object too large for cache\r\n",
            Self::InvalidFlag => b"CLIENT_ERROR invalid flag\r\n",
            Self::DuplicateFlag => b"CLIENT_ERROR duplicate flag\r\n",
            Self::InvalidOrDuplicateFlag => b"CLIENT_ERROR invalid or duplicate flag\r\n",
            Self::BadToken => b"CLIENT_ERROR bad token in command line format\r\n",
            Self::KeyDecode => b"CLIENT_ERROR error decoding key\r\n",
            Self::OpaqueTooLong => b"CLIENT_ERROR opaque token too long\r\n",
            Self::InvalidSetMode => b"CLIENT_ERROR invalid mode for ms M token\r\n",
            Self::InvalidArithmeticMode => b"CLIENT_ERROR invalid mode for ma M token\r\n",
            Self::ModeLength => b"CLIENT_ERROR incorrect length for M token\r\n",
            Self::FlagsTooLong => b"CLIENT_ERROR options flags are too long\r\n",
            Self::OptionsTooLong => b"CLIENT_ERROR options flags too long\r\n",
            Self::FlagNotSupported => {
                b"CLIENT_ERROR flag not supported by this server (Terrace)\r\n"
            }
        }
    }
}

#[cfg(test)]
mod tests;
