//! `backup`: Terrace's admin command for online snapshots (`backup-data create --server`).
//!
//! ```text
//! backup cut             -> CUT <id> <shards>
//!                           DATA_DIR <absolute path of the data dir>
//!                           SERVER <this server's name>
//!                           SHARD <shard> <last_lsn> <segments>      (every shard, in order)
//!                           SEGMENT <id> <cut_bytes> <file_bytes>    (its segments, in order)
//!                           END
//! backup release <id>    -> RELEASED | NOT_FOUND
//! ```
//!
//! A cut pins every shard's segments as they are when the request runs on the shard's
//! executor, up to its last appended record, and answers only once those records are durable:
//! every write acknowledged before `backup cut` was sent is in it. Pinned segments are not
//! removed (compaction, eviction) until the cut is released, explicitly or by closing the
//! connection. The bytes of a cut never change, so the tool copies them from the segment
//! files while the server goes on appending after them.

use super::{Connection, Replies};
use crate::protocol::reply;
use crate::shard::ShardCut;
use crate::shard::route::{Answer, Op};
use std::io::Write as _;

impl Connection {
    pub(super) async fn backup(&mut self, args: &[u8], replies: &mut Replies) {
        if !self.flush_earlier(replies).await {
            return;
        }
        let mut tokens = args.split(|&b| b == b' ').filter(|t| !t.is_empty());
        match (tokens.next(), tokens.next(), tokens.next()) {
            (Some(b"cut"), None, None) => self.cut(&mut replies.out).await,
            (Some(b"release"), Some(id), None) => {
                let id = std::str::from_utf8(id).ok().and_then(|s| s.parse().ok());
                match id {
                    Some(id) if self.cuts.contains(&id) => {
                        self.release(id).await;
                        replies.out.extend_from_slice(b"RELEASED\r\n");
                    }
                    _ => replies.out.extend_from_slice(reply::NOT_FOUND),
                }
            }
            _ => replies.out.extend_from_slice(reply::ERROR),
        }
    }

    async fn cut(&mut self, out: &mut Vec<u8>) {
        let shards = &self.executor.shards;
        let id = shards.next_cut_id(self.me());
        let mut all: Vec<ShardCut> = Vec::new();
        let mut refused = false;
        match shards.pin_for_backup(id) {
            Some(waits) => {
                for wait in waits {
                    if let Err(error) = wait.wait().await {
                        self.release(id).await;
                        reply::server_error(out, &format!("backup cut not durable: {error}"));
                        return;
                    }
                }
                all.extend(self.executor.shards.describe_cut(id));
            }
            None => refused = true,
        }
        for answer in self.everywhere(|| Op::BackupCut { cut: id }).await {
            match answer {
                Answer::Cut(Some(cuts)) => all.extend(cuts),
                Answer::Cut(None) => refused = true,
                // A remote executor failed to make its part durable.
                Answer::Bytes(bytes) => {
                    self.release(id).await;
                    out.extend_from_slice(&bytes);
                    return;
                }
                Answer::Parts(_) | Answer::Stats(_) => {}
            }
        }
        // Held from here on, so that any return below releases it with the connection.
        self.cuts.push(id);
        if refused {
            self.release(id).await;
            reply::server_error(
                out,
                &format!(
                    "too many backup cuts held (at most {} per executor); release one",
                    crate::constants::BACKUP_CUTS_MAX
                ),
            );
            return;
        }
        all.sort_by_key(|cut| cut.shard);
        let data_dir = std::path::absolute(&self.executor.shared.settings.data_dir)
            .unwrap_or_else(|_| self.executor.shared.settings.data_dir.clone());
        tracing::info!(cut = id, data_dir = %data_dir.display(), "backup cut pinned");
        // Writing into a Vec cannot fail.
        let _ = write!(out, "CUT {id} {}\r\nDATA_DIR ", all.len());
        out.extend_from_slice(data_dir.as_os_str().as_encoded_bytes());
        let _ = write!(out, "\r\nSERVER {}\r\n", self.executor.shared.settings.name);
        for cut in &all {
            let _ = write!(
                out,
                "SHARD {} {} {}\r\n",
                cut.shard,
                cut.last_lsn,
                cut.segments.len()
            );
            for (segment, cut_bytes, file_bytes) in &cut.segments {
                let _ = write!(out, "SEGMENT {segment} {cut_bytes} {file_bytes}\r\n");
            }
        }
        out.extend_from_slice(reply::END);
    }

    /// Releases cut `id` everywhere.
    async fn release(&mut self, id: u64) {
        self.executor.shards.release_backup(id);
        let _ = self.everywhere(|| Op::BackupRelease { cut: id }).await;
        self.cuts.retain(|&c| c != id);
        tracing::info!(cut = id, "backup cut released");
    }

    /// Releases every cut this connection holds.
    pub(super) async fn release_cuts(&mut self) {
        while let Some(&id) = self.cuts.first() {
            self.release(id).await;
        }
    }
}
