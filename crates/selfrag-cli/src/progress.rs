//! Progress of long work (backup, verify, restore): bytes done, rate and
//! time left, on stderr.
//!
//! On a terminal one line is redrawn in place a few times a second; when
//! stderr is not a terminal (a log file, cron mail, a pipe) a plain line is
//! printed every few seconds; either way a last line says what was done in
//! how long. `--quiet` prints nothing; stdout is never written (so `--json`
//! output stays one document).
//!
//! What "done" counts comes from a [`Source`]: the bytes the backup library
//! has checksummed (copies, verification, the checks before a restore), or
//! the size of a directory being written (a dump, a download).

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::output::Out;
use crate::secrets::scrub;

/// How often a terminal line is redrawn.
const TERMINAL_TICK: Duration = Duration::from_millis(200);
/// How often a plain line is printed when stderr is not a terminal.
const PLAIN_TICK: Duration = Duration::from_secs(5);

/// Where the count of bytes done comes from.
#[derive(Debug, Clone)]
pub(crate) enum Source {
    /// Bytes checksummed by `selfrag-backup` since the start.
    Checksummed,
    /// Growth of the total size of the files under a directory.
    DirSize(PathBuf),
}

impl Source {
    fn read(&self) -> u64 {
        match self {
            Source::Checksummed => selfrag_backup::bytes_checksummed(),
            Source::DirSize(dir) => tree_size(dir),
        }
    }
}

/// The total length of the regular files under `path` (0 when missing).
pub(crate) fn tree_size(path: &Path) -> u64 {
    let Ok(meta) = std::fs::symlink_metadata(path) else { return 0 };
    if meta.is_file() {
        return meta.len();
    }
    if !meta.is_dir() {
        return 0;
    }
    let Ok(entries) = std::fs::read_dir(path) else { return 0 };
    entries.flatten().map(|e| tree_size(&e.path())).sum()
}

/// A running progress display; [`Progress::finish`] ends it.
#[derive(Debug)]
pub(crate) struct Progress {
    state: Option<(Arc<Notify>, JoinHandle<()>)>,
}

/// What one line shows.
#[derive(Debug, Clone, Copy)]
struct Reading {
    done: u64,
    total: Option<u64>,
    elapsed: Duration,
}

impl Reading {
    fn rate(&self) -> f64 {
        self.done as f64 / self.elapsed.as_secs_f64().max(1e-3)
    }

    /// `12.3 of 27.0 MiB (45%), 4.1 MiB/s, 3 s left`, or without a total
    /// `12.3 MiB, 4.1 MiB/s, 3 s`.
    fn line(&self, label: &str) -> String {
        let rate = self.rate();
        match self.total.filter(|&t| t > 0) {
            Some(total) => {
                let done = self.done.min(total);
                let percent = done.saturating_mul(100) / total;
                let left = if rate > 0.0 && done > 0 {
                    format!("{} left", seconds((total - done) as f64 / rate))
                } else {
                    "time left unknown".to_owned()
                };
                format!("{label}: {} of {} ({percent}%), {}/s, {left}", size(done), size(total), size(whole(rate)))
            }
            None => format!(
                "{label}: {}, {}/s, {} elapsed",
                size(self.done),
                size(whole(rate)),
                seconds(self.elapsed.as_secs_f64())
            ),
        }
    }

    fn summary(&self, label: &str) -> String {
        format!(
            "{label}: {} in {} ({}/s)",
            size(self.done),
            seconds(self.elapsed.as_secs_f64()),
            size(whole(self.rate()))
        )
    }
}

/// `x` rounded down to a whole number (negative and NaN as 0); rates and
/// times here are far below `u64::MAX`.
#[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
fn whole(x: f64) -> u64 {
    x as u64
}

fn seconds(s: f64) -> String {
    if s < 60.0 {
        format!("{s:.1} s")
    } else {
        let s = whole(s);
        format!("{}m{:02}s", s / 60, s % 60)
    }
}

pub(crate) fn size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

impl Progress {
    /// Starts showing the progress of `label` (what is being done), counted
    /// from `source`, of `total` bytes if known. Shows nothing with
    /// `--quiet`.
    pub(crate) fn start(out: Out, label: impl Into<String>, total: Option<u64>, source: Source) -> Self {
        if out.quiet {
            return Self { state: None };
        }
        let label = scrub(&label.into()).to_string();
        let terminal = std::io::stderr().is_terminal();
        let stop = Arc::new(Notify::new());
        let stopped = stop.clone();
        let task = tokio::spawn(async move {
            let base = source.read();
            let started = Instant::now();
            let tick = if terminal { TERMINAL_TICK } else { PLAIN_TICK };
            let read = || Reading { done: source.read().saturating_sub(base), total, elapsed: started.elapsed() };
            let mut last_plain = 0;
            loop {
                tokio::select! {
                    _ = stopped.notified() => break,
                    _ = tokio::time::sleep(tick) => {}
                }
                let r = read();
                if terminal {
                    let mut err = std::io::stderr().lock();
                    let _ = write!(err, "\r\x1b[2K... {}", r.line(&label));
                    let _ = err.flush();
                } else if r.done != last_plain {
                    last_plain = r.done;
                    eprintln!("... {}", r.line(&label));
                }
            }
            let r = read();
            if terminal {
                eprint!("\r\x1b[2K");
            }
            eprintln!("... {}", r.summary(&label));
        });
        Self { state: Some((stop, task)) }
    }

    /// Ends the display with a last line: the bytes done and the time taken.
    pub(crate) async fn finish(mut self) {
        if let Some((stop, task)) = self.state.take() {
            stop.notify_one();
            let _ = task.await;
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        // Not finished (an early return): stop redrawing, print nothing more.
        if let Some((_, task)) = self.state.take() {
            task.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_show_done_rate_and_time_left() {
        let r = Reading { done: 10 << 20, total: Some(40 << 20), elapsed: Duration::from_secs(2) };
        assert_eq!(r.line("verify"), "verify: 10.0 MiB of 40.0 MiB (25%), 5.0 MiB/s, 6.0 s left");
        let r = Reading { done: 3 << 20, total: None, elapsed: Duration::from_secs(3) };
        assert_eq!(r.line("dump"), "dump: 3.0 MiB, 1.0 MiB/s, 3.0 s elapsed");
        assert_eq!(r.summary("dump"), "dump: 3.0 MiB in 3.0 s (1.0 MiB/s)");
        let r = Reading { done: 0, total: Some(100), elapsed: Duration::from_secs(1) };
        assert_eq!(r.line("x"), "x: 0 B of 100 B (0%), 0 B/s, time left unknown");
        assert_eq!(seconds(125.0), "2m05s");
    }

    #[test]
    fn tree_size_sums_files() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("a")).unwrap();
        std::fs::write(dir.path().join("a/x"), [0u8; 10]).unwrap();
        std::fs::write(dir.path().join("y"), [0u8; 5]).unwrap();
        assert_eq!(tree_size(dir.path()), 15);
        assert_eq!(tree_size(&dir.path().join("missing")), 0);
    }
}
