//! The memcached text protocol: requests parsed in place from the receive buffer
//! ([`parse()`]), replies written into the connection's send buffer ([`reply`]).
//!
//! Protocol errors become memcached's exact strings here and nowhere else
//! ([`ProtocolError::reply`]).

mod parse;
pub mod replay;
pub mod reply;

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
        }
    }
}

#[cfg(test)]
mod tests;
