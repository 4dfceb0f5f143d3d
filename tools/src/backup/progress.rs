//! Progress bars for long copies and verifies: on standard error, only when it is a terminal
//! and the user did not ask for `--quiet` or `--json`.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// A byte-count progress bar, or nothing.
#[derive(Debug, Clone)]
pub struct Progress {
    bar: Option<ProgressBar>,
}

impl Progress {
    /// No bar.
    pub fn hidden() -> Self {
        Self { bar: None }
    }

    /// A bar for `total_bytes` of work described by `what`, if `show` (indicatif itself draws
    /// nothing when standard error is not a terminal).
    pub fn bytes(show: bool, what: &str, total_bytes: u64) -> Self {
        if !show {
            return Self::hidden();
        }
        let bar = ProgressBar::with_draw_target(Some(total_bytes), ProgressDrawTarget::stderr());
        let style = ProgressStyle::with_template(
            "{msg:>9} [{bar:40}] {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}",
        )
        .map(|s| s.progress_chars("=> "))
        .unwrap_or_else(|_| ProgressStyle::default_bar());
        bar.set_style(style);
        bar.set_message(what.to_string());
        Self { bar: Some(bar) }
    }

    /// `bytes` more are done.
    pub fn advance(&self, bytes: u64) {
        if let Some(bar) = &self.bar {
            bar.inc(bytes);
        }
    }

    /// Removes the bar.
    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
