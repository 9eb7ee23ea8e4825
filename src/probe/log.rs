//! `log`: count the lines that match `pattern` in what a log file (or a
//! systemd unit's journal) gained since the previous run of the same
//! (probe, color). The sample's `requests` is the number of new lines and
//! `errors` the number that matched; no new line is "no data".
//!
//! A file is followed, not re-read: following starts at its end, and a
//! `notify` watch on its folder reads new bytes as they land, so a rotation
//! (rename + create, even twice between two runs) or a truncation
//! (copytruncate) loses no line: the old file is drained through the handle
//! still open on it before the new one is read from its start. Every run also
//! reads whatever the watch has not, so a missed event costs nothing. A
//! journal is read with `journalctl -u UNIT -o json --after-cursor`.
//!
//! Only regular files are followed, opened `O_NONBLOCK` (`hostfile`): a
//! FIFO, device or socket at the path is a failed sample naming its type,
//! never a read that blocks (the watch's thread holds the follower's lock
//! while it reads) or never ends (`/dev/zero`). Each read is bounded by
//! [`READ_BUDGET`]; what is left waits for the next read.
//!
//! It owns the followers ([`Memory`], shared by every clone of the
//! `Prober`); it does not decide what an error rate means.

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use notify::{RecommendedWatcher, RecursiveMode, Watcher};
use regex::bytes::Regex;
use tokio::io::{AsyncBufReadExt, BufReader};

use super::Outcome;
use crate::config::{LogCheck, LogSource, render};
use crate::model::{Color, SampleStatus};

/// A line longer than this is counted in pieces of this size.
pub const LINE_CAP: usize = 64 * 1024;
/// Journal entries read per run; the rest waits for the next run.
pub const JOURNAL_BATCH: usize = 20_000;
/// Bytes read from one file per poll; the rest is read by the next one.
pub const READ_BUDGET: u64 = 16 * 1024 * 1024;
/// How much of the first matching line goes into the detail.
const EXCERPT: usize = 160;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A poisoned follower is still a consistent follower (every field is
    // updated before the next read); keep following rather than stop.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// What new lines held since the last take.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Tally {
    pub lines: u64,
    pub matches: u64,
    pub first_match: Option<String>,
    pub rotations: u32,
    pub truncations: u32,
}

/// Where a followed file's lines go: a [`Tally`] of matching lines for
/// `log`, parsed requests for `access_log`. Called under the follower's
/// lock, from the probe's run or the watch's thread.
pub trait Sink: Send + 'static {
    /// One complete line, without its `\n`.
    fn line(&mut self, line: &[u8]);
    fn rotated(&mut self) {}
    fn truncated(&mut self) {}
}

/// The `log` probe's sink: counts lines and the ones `pattern` matches.
pub struct Matcher {
    pattern: Regex,
    tally: Tally,
}

impl Sink for Matcher {
    fn line(&mut self, line: &[u8]) {
        self.tally.line(&self.pattern, line);
    }
    fn rotated(&mut self) {
        self.tally.rotations += 1;
    }
    fn truncated(&mut self) {
        self.tally.truncations += 1;
    }
}

impl Tally {
    fn line(&mut self, pattern: &Regex, line: &[u8]) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        self.lines += 1;
        if pattern.is_match(line) {
            self.matches += 1;
            if self.first_match.is_none() {
                let text = String::from_utf8_lossy(line);
                self.first_match = Some(text.chars().take(EXCERPT).collect());
            }
        }
    }

    fn outcome(self, what: &str, pattern: &str) -> Outcome {
        let mut notes = String::new();
        if self.rotations > 0 {
            notes.push_str(&format!("; rotated {}x", self.rotations));
        }
        if self.truncations > 0 {
            notes.push_str(&format!("; truncated {}x", self.truncations));
        }
        if self.lines == 0 {
            return Outcome::no_data(format!("no new lines in {what}{notes}"));
        }
        let mut detail = format!(
            "{} of {} new lines in {what} match /{pattern}/{notes}",
            self.matches, self.lines
        );
        if let Some(first) = &self.first_match {
            detail.push_str(&format!(": {first}"));
        }
        Outcome {
            status: if self.matches > 0 {
                SampleStatus::Failed
            } else {
                SampleStatus::Ok
            },
            latency_ms: None,
            detail,
            requests: Some(self.lines as f64),
            errors: Some(self.matches as f64),
        }
    }
}

// ---------------------------------------------------------------------------
// Following a file.

type FileId = (u64, u64);

/// How long a rotated-away file is still read after the switch: a writer
/// that has not reopened its log yet still appends to it.
const KEEP_ROTATED: Duration = Duration::from_secs(30);

/// An open log file and the part of a line read from it so far.
struct Handle {
    file: File,
    id: FileId,
    partial: Vec<u8>,
    last_growth: Instant,
}

impl Handle {
    /// Read to the end (at most [`READ_BUDGET`]), counting complete lines.
    /// Returns the bytes read.
    fn drain<S: Sink>(&mut self, sink: &mut S) -> std::io::Result<u64> {
        let mut chunk = vec![0u8; 64 * 1024];
        let mut total = 0u64;
        while total < READ_BUDGET {
            let n = match self.file.read(&mut chunk) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            };
            total += n as u64;
            let mut rest = &chunk[..n];
            while let Some(end) = rest.iter().position(|b| *b == b'\n') {
                if self.partial.is_empty() {
                    sink.line(strip_cr(&rest[..end]));
                } else {
                    self.partial.extend_from_slice(&rest[..end]);
                    sink.line(strip_cr(&std::mem::take(&mut self.partial)));
                }
                rest = &rest[end + 1..];
            }
            self.partial.extend_from_slice(rest);
            while self.partial.len() >= LINE_CAP {
                let piece: Vec<u8> = self.partial.drain(..LINE_CAP).collect();
                sink.line(&piece);
            }
        }
        if total > 0 {
            self.last_growth = Instant::now();
        }
        Ok(total)
    }

    /// The file is done with: its unterminated last line is a line.
    fn finish<S: Sink>(self, sink: &mut S) {
        if !self.partial.is_empty() {
            sink.line(strip_cr(&self.partial));
        }
    }
}

/// Why a followed file cannot be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub detail: String,
    /// The path holds something that is not a regular file (a FIFO, a
    /// device): a failed sample, since a log probe pointed at it can
    /// never see the service's lines.
    pub not_regular: bool,
}

impl Problem {
    fn io(what: &str, path: &std::path::Path, e: &std::io::Error) -> Problem {
        match crate::hostfile::not_regular(e) {
            Some(kind) => Problem::not_regular(path, kind),
            None => Problem {
                detail: format!("cannot {what} {}: {e}", path.display()),
                not_regular: false,
            },
        }
    }

    fn not_regular(path: &std::path::Path, kind: &str) -> Problem {
        Problem {
            detail: format!(
                "{} is {kind}, not a regular file: a log is followed only in a regular file",
                path.display()
            ),
            not_regular: true,
        }
    }

    /// A sample: failed when the path holds the wrong kind of file, else
    /// no data (a missing log says nothing about the service).
    pub fn outcome(self) -> Outcome {
        if self.not_regular {
            Outcome::failed(None, self.detail)
        } else {
            Outcome::no_data(self.detail)
        }
    }
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.detail)
    }
}

fn strip_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// The reading side of a followed file. Guarded by a mutex: the watch's
/// thread and the probe's runs both read through it.
struct Reader<S> {
    path: PathBuf,
    current: Option<Handle>,
    /// The file before the last rotation, still read for a while.
    rotated: Option<Handle>,
    /// Until the first read, an existing file is joined at its end: what it
    /// held before following started is history, not this interval.
    joined: bool,
    sink: S,
    problem: Option<Problem>,
}

impl<S: Sink> Reader<S> {
    /// Read everything new: the rotated-away file, the file we hold, then
    /// switch to whatever file is now at the path.
    fn poll(&mut self) {
        if let Some(h) = &mut self.rotated {
            let _ = h.drain(&mut self.sink);
            if h.last_growth.elapsed() > KEEP_ROTATED {
                if let Some(h) = self.rotated.take() {
                    h.finish(&mut self.sink);
                }
            }
        }
        if let Some(h) = &mut self.current {
            if let Err(e) = h.drain(&mut self.sink) {
                self.problem = Some(Problem::io("read", &self.path, &e));
            }
        }
        let at_path = match std::fs::metadata(&self.path) {
            Ok(m) => m,
            Err(e) => {
                // Rotated away and not yet recreated: keep the handle.
                if self.current.is_none() {
                    self.problem = Some(Problem::io("read", &self.path, &e));
                }
                self.joined = true;
                return;
            }
        };
        if !at_path.is_file() {
            // A FIFO or device where the log was: never opened (an open or
            // a read could block or never end). A handle still open on the
            // previous regular file keeps being read above.
            self.problem = Some(Problem::not_regular(
                &self.path,
                crate::hostfile::kind(&at_path.file_type()),
            ));
            self.joined = true;
            return;
        }
        let id = (at_path.dev(), at_path.ino());
        match &mut self.current {
            Some(h) if h.id == id => {
                let position = h.file.stream_position().unwrap_or(0);
                if at_path.len() < position {
                    // Truncated in place (copytruncate): start over.
                    self.sink.truncated();
                    h.partial.clear();
                    match h.file.seek(SeekFrom::Start(0)) {
                        Ok(_) => {
                            let _ = h.drain(&mut self.sink);
                        }
                        Err(e) => {
                            self.problem = Some(Problem::io("rewind", &self.path, &e));
                            self.current = None;
                        }
                    }
                }
            }
            _ => self.switch(),
        }
    }

    /// Open the file now at the path (the first one, or the next after a
    /// rotation) and read it.
    fn switch(&mut self) {
        let (mut file, meta) = match crate::hostfile::open_regular(&self.path) {
            Ok(opened) => opened,
            Err(e) => {
                self.problem = Some(Problem::io("open", &self.path, &e));
                self.joined = true;
                return;
            }
        };
        if !self.joined {
            let _ = file.seek(SeekFrom::End(0));
        }
        self.joined = true;
        self.problem = None;
        let new = Handle {
            file,
            id: (meta.dev(), meta.ino()),
            partial: Vec::new(),
            last_growth: Instant::now(),
        };
        if let Some(old) = self.current.replace(new) {
            self.sink.rotated();
            if let Some(older) = self.rotated.replace(old) {
                older.finish(&mut self.sink);
            }
        }
        if let Some(h) = &mut self.current {
            if let Err(e) = h.drain(&mut self.sink) {
                self.problem = Some(Problem::io("read", &self.path, &e));
            }
        }
    }
}

/// Called by the watch's thread after it has read new lines into the sink
/// (`access_log` wakes its task with it, so samples leave as lines land).
pub type OnRead = Arc<dyn Fn() + Send + Sync>;

/// A followed file: its reader and the watch that feeds it between runs.
/// Dropping it stops the watch (and its thread).
pub struct FollowedFile<S: Sink = Matcher> {
    /// Outside the reader's lock: the async side reads it without waiting
    /// on a read in progress.
    path: PathBuf,
    reader: Arc<Mutex<Reader<S>>>,
    watcher: Mutex<Option<RecommendedWatcher>>,
    on_read: Option<OnRead>,
}

impl FollowedFile<Matcher> {
    /// Start following `path` from its current end, counting the lines
    /// `pattern` matches.
    pub fn new(path: PathBuf, pattern: Regex) -> FollowedFile<Matcher> {
        FollowedFile::with_sink(
            path,
            Matcher {
                pattern,
                tally: Tally::default(),
            },
            None,
        )
    }

    /// Read what is new and hand over everything counted since the last take.
    pub fn take(&self) -> (Tally, Option<Problem>) {
        self.take_with(|m| std::mem::take(&mut m.tally))
    }

    /// Lines counted but not yet taken (tests use it to see the watch work).
    pub fn pending_lines(&self) -> u64 {
        lock(&self.reader).sink.tally.lines
    }
}

impl<S: Sink> FollowedFile<S> {
    /// Start following `path` from its current end into `sink`; `on_read`
    /// runs after the watch has read new bytes.
    pub fn with_sink(path: PathBuf, sink: S, on_read: Option<OnRead>) -> FollowedFile<S> {
        let reader = Arc::new(Mutex::new(Reader {
            path: path.clone(),
            current: None,
            rotated: None,
            joined: false,
            sink,
            problem: None,
        }));
        lock(&reader).poll();
        let followed = FollowedFile {
            path,
            reader,
            watcher: Mutex::new(None),
            on_read,
        };
        followed.ensure_watch();
        followed
    }

    /// Watch the file's folder (a watch on the file itself would be lost
    /// with the file at the first rotation). Retried on every run while the
    /// folder does not exist yet.
    fn ensure_watch(&self) {
        let mut slot = lock(&self.watcher);
        if slot.is_some() {
            return;
        }
        let path = self.path.clone();
        let Some(folder) = path.parent().filter(|p| p.is_dir()) else {
            return;
        };
        let reader = Arc::downgrade(&self.reader);
        let file_name = path.file_name().map(|n| n.to_owned());
        let on_read = self.on_read.clone();
        let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
            let relevant = match &event {
                // Our own reads wake nothing.
                Ok(e) if !crate::hostfile::may_change(e) => false,
                Ok(e) => e
                    .paths
                    .iter()
                    .any(|p| p.file_name().map(|n| n.to_owned()) == file_name),
                // An overflow or watch error: read anyway, it is cheap.
                Err(_) => true,
            };
            if let (true, Some(reader)) = (relevant, reader.upgrade()) {
                lock(&reader).poll();
                if let Some(wake) = &on_read {
                    wake();
                }
            }
        });
        match watcher {
            Ok(mut w) => match w.watch(folder, RecursiveMode::NonRecursive) {
                Ok(()) => *slot = Some(w),
                Err(e) => tracing::debug!("cannot watch {}: {e}", folder.display()),
            },
            Err(e) => tracing::debug!("cannot create a file watch: {e}"),
        }
    }

    pub fn is_watched(&self) -> bool {
        lock(&self.watcher).is_some()
    }

    /// Read what is new, then hand `take` the sink (under the lock); the
    /// problem is why the file cannot be read, if it cannot.
    pub fn take_with<T>(&self, take: impl FnOnce(&mut S) -> T) -> (T, Option<Problem>) {
        self.ensure_watch();
        let mut r = lock(&self.reader);
        r.poll();
        let problem = if r.current.is_none() {
            r.problem.clone()
        } else {
            None
        };
        (take(&mut r.sink), problem)
    }

    pub fn path(&self) -> PathBuf {
        self.path.clone()
    }
}

// ---------------------------------------------------------------------------
// Following a journal.

#[derive(Default)]
struct Journal {
    cursor: Option<String>,
    /// When following started, for a unit that had no entry yet.
    since_s: Option<u64>,
}

type Key = (String, Option<Color>);
/// Held across the `journalctl` run, so an async mutex.
type SharedJournal = Arc<tokio::sync::Mutex<Journal>>;

/// Where each (probe, color) has got to, with the fingerprint (source and
/// pattern) it was started with. Shared by the `Prober`'s clones.
#[derive(Default)]
pub struct Memory {
    files: HashMap<Key, (String, Arc<FollowedFile>)>,
    journals: HashMap<Key, (String, SharedJournal)>,
}

pub async fn run(
    memory: &Mutex<Memory>,
    probe: &str,
    check: &LogCheck,
    color: Option<Color>,
) -> Outcome {
    let vars = [("color", color.map(Color::as_str).unwrap_or(""))];
    // Compiled (for bytes) when a follower starts or the journal is read,
    // not on every run of a followed file.
    let compile = || match Regex::new(check.pattern.as_str()) {
        Ok(p) => Ok(p),
        // Validated at load time; if it still fails, it says nothing about
        // the service.
        Err(e) => Err(Outcome::no_data(format!("cannot use `pattern`: {e}"))),
    };
    let pattern = check.pattern.as_str();
    match &check.source {
        LogSource::File(template) => {
            let path = PathBuf::from(render(template, &vars));
            let fingerprint = format!("{}\n{pattern}", path.display());
            let key = (probe.to_owned(), color);
            let existing = lock(memory)
                .files
                .get(&key)
                .filter(|(f, _)| *f == fingerprint)
                .map(|(_, followed)| followed.clone());
            let followed = match existing {
                Some(f) => f,
                None => {
                    // Joining a file reads nothing but its size; still off
                    // the async threads, as every file read here.
                    let pat = match compile() {
                        Ok(pat) => pat,
                        Err(outcome) => return outcome,
                    };
                    let p = path.clone();
                    let made = tokio::task::spawn_blocking(move || {
                        let f = FollowedFile::new(p, pat);
                        let (_, problem) = f.take();
                        (Arc::new(f), problem)
                    })
                    .await;
                    let (new, problem) = match made {
                        Ok(made) => made,
                        Err(e) => {
                            return Outcome::unreachable(None, format!("log follower failed: {e}"));
                        }
                    };
                    lock(memory).files.insert(key, (fingerprint, new));
                    return match problem {
                        Some(problem) => problem.outcome(),
                        None => Outcome::no_data(format!(
                            "started following {} at its end",
                            path.display()
                        )),
                    };
                }
            };
            let what = followed.path().display().to_string();
            match tokio::task::spawn_blocking(move || followed.take()).await {
                Ok((tally, Some(problem))) if tally.lines == 0 => problem.outcome(),
                Ok((tally, _)) => tally.outcome(&what, pattern),
                Err(e) => Outcome::unreachable(None, format!("log follower failed: {e}")),
            }
        }
        LogSource::Unit(template) => {
            let unit = render(template, &vars);
            let key = (probe.to_owned(), color);
            let fingerprint = format!("{unit}\n{pattern}");
            let journal = {
                let mut m = lock(memory);
                let entry = m
                    .journals
                    .entry(key)
                    .or_insert_with(|| (fingerprint.clone(), Default::default()));
                if entry.0 != fingerprint {
                    *entry = (fingerprint, Default::default());
                }
                entry.1.clone()
            };
            let pattern = match compile() {
                Ok(pat) => pat,
                Err(outcome) => return outcome,
            };
            let mut journal = journal.lock().await;
            read_journal(JOURNALCTL, &mut journal, &unit, &pattern).await
        }
    }
}

/// One journal entry of `journalctl -o json`: its cursor and message.
pub fn parse_journal_line(line: &str) -> Option<(String, Vec<u8>)> {
    let v: serde_json::Value = serde_json::from_str(line).ok()?;
    let cursor = v.get("__CURSOR")?.as_str()?.to_owned();
    let message = match v.get("MESSAGE") {
        Some(serde_json::Value::String(s)) => s.as_bytes().to_vec(),
        // Non-UTF-8 messages come as an array of bytes.
        Some(serde_json::Value::Array(bytes)) => bytes
            .iter()
            .filter_map(|b| b.as_u64().map(|b| b as u8))
            .collect(),
        _ => Vec::new(),
    };
    Some((cursor, message))
}

/// Found on `PATH`, as systemd installs it.
const JOURNALCTL: &str = "journalctl";

async fn read_journal(
    program: &str,
    journal: &mut Journal,
    unit: &str,
    pattern: &Regex,
) -> Outcome {
    let mut args: Vec<String> = vec![
        "--unit".into(),
        unit.into(),
        "--output=json".into(),
        "--no-pager".into(),
        "--quiet".into(),
    ];
    let first = journal.cursor.is_none() && journal.since_s.is_none();
    match (&journal.cursor, journal.since_s) {
        (Some(c), _) => args.push(format!("--after-cursor={c}")),
        (None, Some(s)) => args.push(format!("--since=@{s}")),
        // Joining: only the newest entry, for its cursor.
        (None, None) => args.push("--lines=1".into()),
    }
    let started_s = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let mut child = match tokio::process::Command::new(program)
        .args(&args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        // The probe's timeout drops this future; the child goes with it.
        .kill_on_drop(true)
        .spawn()
    {
        Ok(c) => c,
        Err(e) => return Outcome::unreachable(None, format!("cannot run journalctl: {e}")),
    };
    let Some(stdout) = child.stdout.take() else {
        return Outcome::unreachable(None, "journalctl gave no output pipe");
    };
    let mut lines = BufReader::new(stdout).lines();
    let mut tally = Tally::default();
    let mut entries = 0usize;
    let mut last_cursor = None;
    while entries < JOURNAL_BATCH {
        match lines.next_line().await {
            Ok(Some(line)) => {
                if let Some((cursor, message)) = parse_journal_line(&line) {
                    entries += 1;
                    if !first {
                        for l in message.split(|b| *b == b'\n') {
                            tally.line(pattern, l);
                        }
                    }
                    last_cursor = Some(cursor);
                }
            }
            Ok(None) => break,
            Err(e) => return Outcome::unreachable(None, format!("reading journalctl: {e}")),
        }
    }
    let _ = child.start_kill();
    let _ = child.wait().await;
    if let Some(c) = last_cursor {
        journal.cursor = Some(c);
    } else if first {
        journal.since_s = Some(started_s);
    }
    if first {
        return Outcome::no_data(format!("started following the journal of {unit}"));
    }
    tally.outcome(&format!("the journal of {unit}"), pattern.as_str())
}

impl Memory {
    /// Forget every follower whose probe is not in `keep` (a reload removed
    /// it): its file handle and watch go with it.
    pub fn retain_probes(&mut self, keep: &dyn Fn(&str) -> bool) {
        self.files.retain(|(probe, _), _| keep(probe));
        self.journals.retain(|(probe, _), _| keep(probe));
    }
}

/// For tests and `check`: where a file probe reads.
pub fn file_path(check: &LogCheck, color: Option<Color>) -> Option<PathBuf> {
    match &check.source {
        LogSource::File(t) => Some(PathBuf::from(render(
            t,
            &[("color", color.map(Color::as_str).unwrap_or(""))],
        ))),
        LogSource::Unit(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::path::Path;

    use super::*;

    fn append(path: &Path, text: &str) {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .unwrap();
        f.write_all(text.as_bytes()).unwrap();
    }

    fn follow(path: &Path) -> FollowedFile {
        FollowedFile::new(path.to_path_buf(), Regex::new("ERROR|panicked").unwrap())
    }

    #[test]
    fn joins_at_the_end_and_counts_only_new_complete_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("app.log");
        append(&path, "ERROR old news\nERROR old news\n");
        let f = follow(&path);
        assert_eq!(f.take().0.lines, 0, "history is not this interval");
        append(&path, "ok\nERROR boom\nthread panicked at x\nhalf a li");
        let (t, _) = f.take();
        assert_eq!((t.lines, t.matches), (3, 2));
        assert_eq!(t.first_match.as_deref(), Some("ERROR boom"));
        append(&path, "ne ERROR\n");
        let (t, _) = f.take();
        assert_eq!((t.lines, t.matches), (1, 1), "the split line is one line");
    }

    #[test]
    fn survives_rotation_and_truncation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("app.log");
        append(&path, "start\n");
        let f = follow(&path);
        f.take();
        // logrotate: rename, the app still writes to the old file, then a
        // new file appears.
        append(&path, "ERROR before rotation\n");
        std::fs::rename(&path, dir.path().join("app.log.1")).unwrap();
        append(
            &dir.path().join("app.log.1"),
            "ERROR late write to the old file\n",
        );
        append(&path, "fresh\nERROR in the new file\n");
        let (t, _) = f.take();
        assert_eq!((t.lines, t.matches, t.rotations), (4, 3, 1), "{t:?}");
        // copytruncate: the same file is cut to zero and written again.
        append(&path, "more\nmore\nmore\n");
        f.take();
        std::fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        append(&path, "ERROR x\n");
        let (t, _) = f.take();
        assert_eq!((t.lines, t.matches, t.truncations), (1, 1, 1), "{t:?}");
    }

    #[test]
    fn a_missing_file_is_read_from_its_start_once_it_appears() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("later.log");
        let f = follow(&path);
        let (t, problem) = f.take();
        assert_eq!(t.lines, 0);
        assert!(problem.unwrap().detail.contains("later.log"));
        append(&path, "ERROR first line\n");
        let (t, problem) = f.take();
        assert_eq!((t.lines, t.matches, problem), (1, 1, None));
    }

    #[test]
    fn the_watch_reads_between_runs_so_a_double_rotation_loses_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("app.log");
        append(&path, "");
        let f = follow(&path);
        assert!(f.is_watched());
        f.take();
        std::fs::rename(&path, dir.path().join("app.log.1")).unwrap();
        append(&path, "ERROR in the middle file\n");
        // Wait (with a deadline) for the watch to have read it, then rotate
        // again before the next run: only the watch can have seen the line.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while f.pending_lines() < 1 {
            assert!(
                std::time::Instant::now() < deadline,
                "the watch never read the new file"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        std::fs::rename(&path, dir.path().join("app.log.2")).unwrap();
        append(&path, "third\n");
        let (t, _) = f.take();
        assert_eq!((t.lines, t.matches), (2, 1), "{t:?}");
    }

    #[test]
    fn long_lines_are_counted_in_capped_pieces() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("app.log");
        append(&path, "");
        let f = follow(&path);
        append(&path, &format!("{}\n", "x".repeat(LINE_CAP * 2 + 10)));
        let (t, _) = f.take();
        assert_eq!(t.lines, 3);
    }

    /// Run `f` on a thread and fail (not hang) if it does not return in
    /// time: the bug this guards against is a read that never returns.
    fn promptly<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(f());
        });
        rx.recv_timeout(Duration::from_secs(10))
            .expect("following blocked instead of refusing the file")
    }

    #[test]
    fn a_fifo_at_the_path_is_refused_naming_its_type_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("app.log");
        nix::unistd::mkfifo(&path, nix::sys::stat::Mode::S_IRWXU).unwrap();
        let (t, problem) = promptly(move || follow(&path).take());
        let problem = problem.expect("a problem");
        assert_eq!(t.lines, 0);
        assert!(problem.not_regular, "{problem:?}");
        assert!(problem.detail.contains("is a FIFO"), "{problem:?}");
        assert_eq!(problem.outcome().status, SampleStatus::Failed);
    }

    #[test]
    fn a_symlink_to_dev_zero_is_refused_as_a_character_device() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("app.log");
        std::os::unix::fs::symlink("/dev/zero", &path).unwrap();
        let (_, problem) = promptly(move || follow(&path).take());
        let problem = problem.expect("a problem");
        assert!(problem.detail.contains("a character device"), "{problem:?}");
        assert!(problem.not_regular);
    }

    #[test]
    fn a_regular_log_replaced_by_a_fifo_then_restored_is_followed_again() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("app.log");
        append(&path, "");
        let f = Arc::new(follow(&path));
        std::fs::remove_file(&path).unwrap();
        nix::unistd::mkfifo(&path, nix::sys::stat::Mode::S_IRWXU).unwrap();
        let f2 = f.clone();
        promptly(move || f2.take());
        std::fs::remove_file(&path).unwrap();
        append(&path, "ERROR back\n");
        let f3 = f.clone();
        let (t, _) = promptly(move || f3.take());
        assert_eq!((t.lines, t.matches), (1, 1), "{t:?}");
    }

    #[tokio::test]
    async fn the_probe_gives_a_failed_sample_for_a_fifo_every_run() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("app.log");
        nix::unistd::mkfifo(&path, nix::sys::stat::Mode::S_IRWXU).unwrap();
        let check = LogCheck {
            source: LogSource::File(path.display().to_string()),
            pattern: regex::Regex::new("ERROR").unwrap(),
        };
        let memory = Mutex::new(Memory::default());
        for _ in 0..2 {
            let o = tokio::time::timeout(
                Duration::from_secs(10),
                run(&memory, "errors", &check, None),
            )
            .await
            .expect("the probe blocked on a FIFO");
            assert_eq!(o.status, SampleStatus::Failed, "{o:?}");
            assert!(o.detail.contains("is a FIFO"), "{o:?}");
        }
    }

    /// A stand-in for journalctl: it records its arguments and prints one
    /// entry when joining, three after the cursor.
    #[tokio::test]
    async fn journal_is_joined_at_its_newest_entry_then_read_after_the_cursor() {
        let dir = tempfile::tempdir().unwrap();
        let args_log = dir.path().join("args");
        let fake = dir.path().join("journalctl");
        std::fs::write(
            &fake,
            format!(
                r#"#!/bin/sh
echo "$@" >> {args}
case "$*" in
  *--after-cursor=c1*)
    echo '{{"__CURSOR":"c2","MESSAGE":"GET / 200"}}'
    echo 'not json'
    echo '{{"__CURSOR":"c3","MESSAGE":"ERROR db down"}}'
    echo '{{"__CURSOR":"c4","MESSAGE":[69,82,82,79,82,32,255]}}' ;;
  *--after-cursor=c4*) ;;
  *) echo '{{"__CURSOR":"c1","MESSAGE":"ERROR old news"}}' ;;
esac
"#,
                args = args_log.display()
            ),
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
        let program = fake.to_str().unwrap();
        let pattern = Regex::new("ERROR").unwrap();
        let mut journal = Journal::default();

        let o = read_journal(program, &mut journal, "beluga@blue.service", &pattern).await;
        assert_eq!(o.status, SampleStatus::NoData, "{o:?}");
        let o = read_journal(program, &mut journal, "beluga@blue.service", &pattern).await;
        assert_eq!(o.status, SampleStatus::Failed, "{o:?}");
        assert_eq!((o.requests, o.errors), (Some(3.0), Some(2.0)));
        assert!(o.detail.contains("ERROR db down"), "{o:?}");
        let o = read_journal(program, &mut journal, "beluga@blue.service", &pattern).await;
        assert_eq!(o.status, SampleStatus::NoData, "{o:?}");

        let args = std::fs::read_to_string(&args_log).unwrap();
        let calls: Vec<&str> = args.lines().collect();
        assert_eq!(calls.len(), 3);
        assert!(calls[0].contains("--unit beluga@blue.service") && calls[0].contains("--lines=1"));
        assert!(calls[1].contains("--after-cursor=c1"), "{args}");
        assert!(calls[2].contains("--after-cursor=c4"), "{args}");
    }

    #[test]
    fn journal_entries_parse_with_text_or_byte_messages() {
        let (c, m) = parse_journal_line(r#"{"__CURSOR":"s=1;i=2","MESSAGE":"ERROR x"}"#).unwrap();
        assert_eq!(
            (c.as_str(), m.as_slice()),
            ("s=1;i=2", b"ERROR x".as_slice())
        );
        let (_, m) = parse_journal_line(r#"{"__CURSOR":"c","MESSAGE":[69,82,255]}"#).unwrap();
        assert_eq!(m, vec![69, 82, 255]);
        assert!(parse_journal_line("not json").is_none());
    }
}
