//! Backup runs: one directory per run under a backup root, named by its UTC
//! start time, finished by its manifest; listing and retention.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use time::macros::format_description;
use time::{OffsetDateTime, PrimitiveDateTime};

use crate::fsutil;
use crate::manifest::{Entry, EntryKind, Manifest, RetentionClass, MANIFEST_FORMAT};
use crate::{io_err, Error, Result};

/// Suffix of a run directory while the run is in progress.
pub const PARTIAL_SUFFIX: &str = ".partial";

/// The default retention: 30 days.
pub const DEFAULT_KEEP_DAYS: u32 = 30;

/// A backup run being written.
///
/// [`BackupRun::begin`] creates `<root>/<YYYYMMDDTHHMMSSZ>.partial/`; the
/// `backup_*` functions of this crate add entries to it (each file written
/// under a temporary name and renamed when complete); [`BackupRun::finish`]
/// writes `manifest.json` (last, atomically) and renames the directory to
/// `<root>/<YYYYMMDDTHHMMSSZ>/`. A run that is dropped unfinished (an error,
/// a crash) stays a `.partial` directory, which no listing, verify or
/// restore accepts as a backup, and which [`prune`] removes once it is
/// older than the retention period.
#[derive(Debug)]
pub struct BackupRun {
    root: PathBuf,
    name: String,
    dir: PathBuf,
    started_at: OffsetDateTime,
    entries: Vec<Entry>,
}

/// A finished run: where it is and what its manifest says.
#[derive(Debug, Clone)]
pub struct FinishedRun {
    /// The run directory.
    pub dir: PathBuf,
    /// Its manifest (as written).
    pub manifest: Manifest,
}

impl BackupRun {
    /// Starts a run under `root` (created if missing), named by the current
    /// UTC time.
    ///
    /// # Errors
    /// [`Error::Backend`] when the directories cannot be created.
    pub fn begin(root: impl AsRef<Path>) -> Result<BackupRun> {
        Self::begin_at(root, OffsetDateTime::now_utc())
    }

    /// [`BackupRun::begin`] with a given start time (tests, replays).
    ///
    /// # Errors
    /// As for [`BackupRun::begin`].
    pub fn begin_at(root: impl AsRef<Path>, started_at: OffsetDateTime) -> Result<BackupRun> {
        let root = root.as_ref().to_path_buf();
        fs::create_dir_all(&root).map_err(|e| io_err(format!("cannot create backup root {}", root.display()), e))?;
        let base = run_name(started_at);
        // Two runs in the same second get `-2`, `-3`, ...: never reuse a
        // directory, finished or not.
        let mut n = 1u32;
        loop {
            let name = if n == 1 { base.clone() } else { format!("{base}-{n}") };
            let dir = root.join(format!("{name}{PARTIAL_SUFFIX}"));
            if !root.join(&name).exists() {
                match fs::create_dir(&dir) {
                    Ok(()) => {
                        fsutil::fsync_dir(&root)?;
                        return Ok(BackupRun { root, name, dir, started_at, entries: Vec::new() });
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                    Err(e) => return Err(io_err(format!("cannot create {}", dir.display()), e)),
                }
            }
            n += 1;
        }
    }

    /// The run's name (its final directory name).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The directory files are written to while the run is in progress.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The backup root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The entries taken so far.
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// Checks that `name` is usable as an entry name and not taken yet.
    pub(crate) fn check_new_entry(&self, name: &str) -> Result<()> {
        let ok = !name.is_empty()
            && name.len() <= 100
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
            && !name.starts_with('.');
        if !ok {
            return Err(Error::invalid(
                "name",
                format!("`{name}` must be 1 to 100 of [A-Za-z0-9._-], not starting with `.`"),
            ));
        }
        if self.entries.iter().any(|e| e.name == name) {
            return Err(Error::Conflict { what: "backup entry", id: name.to_owned() });
        }
        Ok(())
    }

    pub(crate) fn push(&mut self, entry: Entry) -> &Entry {
        self.entries.push(entry);
        self.entries.last().expect("just pushed")
    }

    /// Writes the manifest and moves the run to its final name.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] (`entries`) for a run without entries (an
    /// empty run must not count as the newest successful backup);
    /// [`Error::Backend`] for I/O failures.
    pub fn finish(self) -> Result<FinishedRun> {
        if self.entries.is_empty() {
            return Err(Error::invalid("entries", "a backup run needs at least one entry before it is finished"));
        }
        let manifest = Manifest {
            format: MANIFEST_FORMAT,
            run: self.name.clone(),
            started_at: self.started_at,
            finished_at: OffsetDateTime::now_utc(),
            selfrag_version: env!("CARGO_PKG_VERSION").to_owned(),
            entries: self.entries,
        };
        manifest.write(&self.dir)?;
        fsutil::fsync_tree(&self.dir)?;
        let dir = self.root.join(&self.name);
        fsutil::commit(&self.dir, &dir)?;
        Ok(FinishedRun { dir, manifest })
    }
}

/// `YYYYMMDDTHHMMSSZ` of `t` in UTC.
pub fn run_name(t: OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    format!(
        "{:04}{:02}{:02}T{:02}{:02}{:02}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

/// The start time encoded in a run directory name (`YYYYMMDDTHHMMSSZ`,
/// optionally followed by `-N` and/or `.partial`), or `None` for a name that
/// is not a run's.
pub fn parse_run_name(name: &str) -> Option<OffsetDateTime> {
    let name = name.strip_suffix(PARTIAL_SUFFIX).unwrap_or(name);
    let stamp = match name.split_once('-') {
        Some((stamp, n)) if !n.is_empty() && n.chars().all(|c| c.is_ascii_digit()) => stamp,
        Some(_) => return None,
        None => name,
    };
    let format = format_description!("[year][month][day]T[hour][minute][second]Z");
    PrimitiveDateTime::parse(stamp, format).ok().map(PrimitiveDateTime::assume_utc)
}

/// A run directory found under a backup root.
#[derive(Debug, Clone)]
pub struct RunSummary {
    /// The directory.
    pub dir: PathBuf,
    /// Its name.
    pub name: String,
    /// The start time from its name.
    pub started_at: OffsetDateTime,
    /// Its manifest, when the run finished and the manifest reads; `None`
    /// for in-progress, crashed or damaged runs.
    pub manifest: Option<Manifest>,
}

impl RunSummary {
    /// Whether the run finished (it has a readable manifest and is not a
    /// `.partial` directory). Says nothing of its files' checksums: see
    /// [`crate::verify_run`].
    pub fn is_complete(&self) -> bool {
        self.manifest.is_some()
    }
}

/// The runs under `root`, oldest first. Entries whose names are not run
/// names are ignored (so a backup root can hold other files).
///
/// # Errors
/// [`Error::NotFound`] when `root` does not exist; [`Error::Backend`] for
/// other I/O failures.
pub fn list_runs(root: impl AsRef<Path>) -> Result<Vec<RunSummary>> {
    let root = root.as_ref();
    let entries = match fs::read_dir(root) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(Error::NotFound { what: "backup root", id: root.display().to_string() })
        }
        Err(e) => return Err(io_err(format!("cannot list {}", root.display()), e)),
    };
    let mut runs = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| io_err(format!("cannot list {}", root.display()), e))?;
        if !entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            continue;
        }
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(started_at) = parse_run_name(&name) else { continue };
        let manifest = if name.ends_with(PARTIAL_SUFFIX) { None } else { Manifest::read(&entry.path()).ok() };
        runs.push(RunSummary { dir: entry.path(), name, started_at, manifest });
    }
    runs.sort_by(|a, b| (a.started_at, &a.name).cmp(&(b.started_at, &b.name)));
    Ok(runs)
}

/// The newest complete run under `root`, whatever it holds. To pick a run
/// for a restore or a verify of one kind of backup, use
/// [`latest_run_with`]: the newest run may hold only something else.
///
/// # Errors
/// [`Error::NotFound`] when there is none; as [`list_runs`] otherwise.
pub fn latest_run(root: impl AsRef<Path>) -> Result<RunSummary> {
    let root = root.as_ref();
    list_runs(root)?
        .into_iter()
        .rev()
        .find(RunSummary::is_complete)
        .ok_or_else(|| Error::NotFound { what: "complete backup run", id: root.display().to_string() })
}

/// The newest complete run under `root` that holds an entry of `kind`
/// (e.g. the run `restore postgres` should use when no run is named).
///
/// # Errors
/// [`Error::NotFound`] when no complete run holds one; as [`list_runs`]
/// otherwise.
pub fn latest_run_with(root: impl AsRef<Path>, kind: EntryKind) -> Result<RunSummary> {
    latest_run_where(root, |e| e.kind == kind)
}

/// The newest complete run under `root` holding an entry for which `wanted`
/// is true (e.g. a full Postgres archive: `|e| e.retention_class() ==
/// Some(RetentionClass::PostgresFull)`).
///
/// # Errors
/// [`Error::NotFound`] when no complete run holds one; as [`list_runs`]
/// otherwise.
pub fn latest_run_where(root: impl AsRef<Path>, wanted: impl Fn(&Entry) -> bool) -> Result<RunSummary> {
    let root = root.as_ref();
    list_runs(root)?
        .into_iter()
        .rev()
        .find(|r| r.manifest.as_ref().is_some_and(|m| m.entries.iter().any(&wanted)))
        .ok_or_else(|| Error::NotFound {
            what: "complete backup run",
            id: format!("{} (none holds the requested kind of entry)", root.display()),
        })
}

/// Refuses a run directory whose name ends in `.partial`: an unfinished or
/// crashed run is never a backup, even if a manifest was copied into it.
///
/// # Errors
/// [`Error::InvalidInput`] (`run`).
pub fn check_not_partial(run_dir: &Path) -> Result<()> {
    let name = match run_dir.file_name() {
        Some(n) => Some(n.to_string_lossy().into_owned()),
        // `.`, `..`, `/`: look at the real name.
        None => fs::canonicalize(run_dir).ok().and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned())),
    };
    match name {
        Some(n) if n.ends_with(PARTIAL_SUFFIX) => Err(Error::invalid(
            "run",
            format!("{} is an unfinished or crashed run (`{PARTIAL_SUFFIX}`), not a backup", run_dir.display()),
        )),
        _ => Ok(()),
    }
}

/// How long a `.partial` run is presumed to be in progress: [`prune`] never
/// deletes a younger one, whatever `keep_days` says.
pub const PARTIAL_GRACE: Duration = Duration::from_secs(24 * 3600);

/// What [`prune`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PruneReport {
    /// Run directories deleted (or that would be, in a dry run).
    pub deleted: Vec<PathBuf>,
    /// Run directories kept.
    pub kept: Vec<PathBuf>,
}

/// Retention: deletes the run directories under `root` that started more
/// than `keep_days` days before `now`, except:
///
/// - for each [`RetentionClass`] (a full Postgres archive, a table-only
///   Postgres archive of the same tables, a Qdrant snapshot of one
///   collection, an embedded index copy), the newest complete run holding
///   an entry of that class, however old it is: thirty days of failed full
///   Postgres backups next to successful Qdrant ones must not delete the last
///   full Postgres backup (a table-only archive does not stand in for it);
/// - the newest complete run, whatever it holds;
/// - `.partial` runs that started less than [`PARTIAL_GRACE`] (24 h) before
///   `now`, even with `keep_days` 0: one may be in progress.
///
/// Other incomplete runs (`.partial`, or no readable manifest) older than
/// the cutoff are deleted. Ages come from the directory names, not from file
/// times, which copies and restores change. With `dry_run`, nothing is
/// deleted and the report says what would be.
///
/// # Errors
/// As [`list_runs`]; [`Error::Backend`] when a deletion fails (runs deleted
/// before it stay deleted).
pub fn prune(root: impl AsRef<Path>, keep_days: u32, now: OffsetDateTime, dry_run: bool) -> Result<PruneReport> {
    let runs = list_runs(root)?;
    let cutoff = now - Duration::from_secs(u64::from(keep_days) * 86_400);
    let partial_cutoff = now - PARTIAL_GRACE;
    // Runs are oldest first: the last run seen for a class is its newest.
    let mut newest: BTreeMap<RetentionClass, &Path> = BTreeMap::new();
    let mut newest_complete = None;
    for run in &runs {
        if let Some(m) = &run.manifest {
            newest_complete = Some(run.dir.as_path());
            for class in m.entries.iter().filter_map(Entry::retention_class) {
                newest.insert(class, &run.dir);
            }
        }
    }
    let protected: Vec<PathBuf> = newest.values().copied().chain(newest_complete).map(Path::to_path_buf).collect();
    let mut report = PruneReport::default();
    for run in runs {
        let in_progress = run.name.ends_with(PARTIAL_SUFFIX) && run.started_at >= partial_cutoff;
        let keep = run.started_at >= cutoff || in_progress || protected.contains(&run.dir);
        if keep {
            report.kept.push(run.dir);
            continue;
        }
        if !dry_run {
            fs::remove_dir_all(&run.dir).map_err(|e| io_err(format!("cannot delete {}", run.dir.display()), e))?;
        }
        report.deleted.push(run.dir);
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn partial_run_directories_are_refused() {
        assert_eq!(check_not_partial(Path::new("/b/20250304T050607Z.partial")).unwrap_err().field(), Some("run"));
        assert_eq!(check_not_partial(Path::new("/b/20250304T050607Z.partial/")).unwrap_err().field(), Some("run"));
        assert!(check_not_partial(Path::new("/b/20250304T050607Z")).is_ok());
    }

    #[test]
    fn run_names_round_trip() {
        let t = datetime!(2025-03-04 05:06:07 UTC);
        assert_eq!(run_name(t), "20250304T050607Z");
        assert_eq!(parse_run_name("20250304T050607Z"), Some(t));
        assert_eq!(parse_run_name("20250304T050607Z-3"), Some(t));
        assert_eq!(parse_run_name("20250304T050607Z.partial"), Some(t));
        assert_eq!(parse_run_name("20250304T050607Z-x"), None);
        assert_eq!(parse_run_name("latest"), None);
        assert_eq!(parse_run_name("20251304T050607Z"), None);
    }
}
