//! The database boundary: the only module that speaks SQL.
//!
//! SQLite in WAL mode under `state_dir`, migrations embedded with
//! `sqlx::migrate!` and run on open. Verbs are plain (`insert_samples`,
//! `open_incident`, ...) and errors carry what was being done. Times are
//! [`Millis`]. Callers never see a row type or a query string.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;
use sqlx::sqlite::{
    SqliteAutoVacuum, SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{Connection, FromRow, Row, SqlitePool};

use crate::matrix::State;
use crate::model::{Color, EventKind, IncidentState, Millis, Severity, Trigger};

mod kept;
mod samples;
pub use kept::KEPT_BUSY;
pub use samples::{PAGE, SamplePages};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot create state directory {}: {source}", path.display())]
    StateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot open database {}: {source}", path.display())]
    Open { path: PathBuf, source: sqlx::Error },
    #[error("cannot migrate database {}: {source}", path.display())]
    Migrate {
        path: PathBuf,
        source: sqlx::migrate::MigrateError,
    },
    #[error("database error while {doing}: {source}")]
    Query {
        doing: &'static str,
        source: sqlx::Error,
    },
    #[error("a rollback is already in flight (incident #{0})")]
    RollbackInFlight(i64),
    #[error("no incident #{0}")]
    NoIncident(i64),
    /// The WAL's shared-memory file cannot be written: no query is made
    /// (see `Store::fence`).
    #[error("{0}")]
    Unwritable(String),
    /// A read-only command found no database to read (it never makes one).
    #[error("no database at {}: {why}", path.display())]
    Missing { path: PathBuf, why: String },
    /// The database (or its directory) is there but this user may not read it.
    #[error("cannot read {} as user {user}: {why}", path.display())]
    Permission {
        path: PathBuf,
        user: String,
        why: String,
    },
    /// A read-only command met a database the daemon has not migrated to
    /// this binary's schema yet (it never migrates).
    #[error(
        "database {} has schema version {have}, older than this rollbackd's {want}: start (or restart) the daemon once to upgrade it, then retry",
        path.display()
    )]
    OldSchema { path: PathBuf, have: i64, want: i64 },
    /// A stored value this rollbackd has no word for (a database written by
    /// a newer version, or edited by hand).
    #[error("database holds {what} this rollbackd does not know: {why}")]
    Unrecognised { what: &'static str, why: String },
}

impl StoreError {
    /// A locked or busy database: worth a retry, not a crash.
    pub fn is_busy(&self) -> bool {
        match self {
            StoreError::Query {
                source: sqlx::Error::Database(e),
                ..
            } => {
                let msg = e.message();
                msg.contains("locked") || msg.contains("busy")
            }
            StoreError::Query {
                source: sqlx::Error::PoolTimedOut,
                ..
            } => true,
            _ => false,
        }
    }
}

fn q(doing: &'static str) -> impl FnOnce(sqlx::Error) -> StoreError {
    move |source| StoreError::Query { doing, source }
}

#[derive(Clone, Debug)]
pub struct Store {
    pool: SqlitePool,
    path: PathBuf,
    /// (device, inode) of the file when it was opened: a file deleted or
    /// replaced under us is told by comparing the path with it.
    identity: Option<(u64, u64)>,
    /// Rollback records kept in memory while the database refuses them
    /// (`kept.rs`), and the count of failed write transactions.
    kept: std::sync::Arc<kept::Kept>,
    /// What the rollback's reads said last, answered again while the
    /// database cannot be touched (`fence`): nothing can change it then.
    last: std::sync::Arc<std::sync::Mutex<LastRead>>,
    /// Whether the `-shm` could be written when the store was opened. When
    /// it could not, SQLite mapped it read-only: reads are safe then (a
    /// `status` during the fault), only writes are fenced.
    mapped_writable: bool,
    /// The `sample_series` ids seen so far (`samples.rs`).
    series: std::sync::Arc<std::sync::Mutex<samples::Series>>,
}

#[derive(Debug, Default)]
struct LastRead {
    deployments: Option<Vec<Deployment>>,
    in_flight: Option<Option<Incident>>,
    pause: Option<Option<Pause>>,
    escalation: Option<Option<Incident>>,
    cooldown: [Option<Option<Millis>>; 2],
}

/// A pooled connection for one write transaction. Unless [`Writing::done`]
/// is called after its commit, the connection is closed instead of going
/// back to the pool: a failed COMMIT (disk full, read-only or immutable
/// file) can leave SQLite's transaction open, holding the write lock, with
/// sqlx's own count of open transactions off by one, so that every later
/// batch on that connection would be a savepoint inside a transaction that
/// never commits. Closing the connection rolls it back and frees the lock.
struct Writing {
    conn: sqlx::pool::PoolConnection<sqlx::Sqlite>,
    busy: Duration,
    done: bool,
    failures: std::sync::Arc<kept::Kept>,
}

impl Writing {
    /// After a successful commit: the connection may go back to the pool
    /// (with the pool's busy timeout again).
    async fn done(&mut self) {
        if self.busy != BUSY_TIMEOUT {
            let reset = format!("PRAGMA busy_timeout = {}", BUSY_TIMEOUT.as_millis());
            if sqlx::query(&reset).execute(&mut *self.conn).await.is_err() {
                // Closed on drop rather than pooled with a short timeout.
                return;
            }
        }
        self.done = true;
    }
}

impl Drop for Writing {
    fn drop(&mut self) {
        if !self.done {
            self.conn.close_on_drop();
            self.failures.failed_write();
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Deployment {
    pub id: i64,
    pub color: Color,
    pub version: String,
    pub at_ms: Millis,
    pub source: String,
    pub quarantined: bool,
}

impl From<&Deployment> for crate::matrix::Cutover {
    /// A deployment as baseline selection sees it.
    fn from(d: &Deployment) -> Self {
        crate::matrix::Cutover {
            id: d.id,
            color: d.color,
            at_ms: d.at_ms,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct StoredVerdict {
    pub at_ms: Millis,
    pub rule: String,
    pub severity: Severity,
    pub color: Color,
    pub state: State,
    pub n: i64,
    pub value: Option<f64>,
    pub threshold: f64,
    pub window_ms: i64,
    pub baseline: Option<f64>,
    pub detail: String,
}

/// What a new incident starts with.
#[derive(Clone, Debug)]
pub struct NewIncident {
    pub at_ms: Millis,
    pub trigger_kind: Trigger,
    pub severity: Severity,
    pub rule: Option<String>,
    pub reason: String,
    pub evidence: String,
    pub from_color: Option<Color>,
    pub to_color: Option<Color>,
    pub from_version: Option<String>,
    pub to_version: Option<String>,
    /// Whether it holds the single in-flight rollback slot.
    pub in_flight: bool,
    /// The process running it (see `rollback::holder_alive`).
    pub holder: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Incident {
    pub id: i64,
    pub opened_ms: Millis,
    pub closed_ms: Option<Millis>,
    pub trigger_kind: Trigger,
    pub severity: Severity,
    pub rule: Option<String>,
    pub reason: String,
    /// JSON text; serialized as the JSON it holds (an object), not a string.
    #[serde(serialize_with = "evidence_as_json")]
    pub evidence: String,
    pub from_color: Option<Color>,
    pub to_color: Option<Color>,
    pub from_version: Option<String>,
    pub to_version: Option<String>,
    pub state: IncidentState,
    pub outcome: Option<String>,
    pub downtime_ms: Option<Millis>,
    pub in_flight: bool,
    pub holder: Option<String>,
    /// The switch command's process group, once it started (see
    /// `Store::record_switch_group`); `None` before, and for incidents
    /// written by a version that kept it only on the timeline. Not part
    /// of the printed record.
    #[serde(skip)]
    pub switch_pgid: Option<u32>,
}

/// Stored evidence is JSON text: out of the store it is that JSON (text
/// that does not parse stays a string).
fn evidence_as_json<S: serde::Serializer>(text: &str, s: S) -> Result<S::Ok, S::Error> {
    match serde_json::from_str::<serde_json::Value>(text) {
        Ok(v) => v.serialize(s),
        Err(_) => s.serialize_str(text),
    }
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct IncidentEvent {
    pub at_ms: Millis,
    pub state: EventKind,
    pub message: String,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Pause {
    pub id: i64,
    pub at_ms: Millis,
    pub until_ms: Millis,
    pub reason: String,
}

#[derive(FromRow)]
struct DeploymentRow {
    id: i64,
    color: String,
    version: String,
    at_ms: i64,
    source: String,
    quarantined: bool,
}

impl DeploymentRow {
    fn into_deployment(self) -> Deployment {
        Deployment {
            id: self.id,
            // The CHECK constraint in the schema admits only the two colors.
            color: self.color.parse().unwrap_or(Color::Blue),
            version: self.version,
            at_ms: self.at_ms,
            source: self.source,
            quarantined: self.quarantined,
        }
    }
}

#[derive(FromRow)]
struct IncidentRow {
    id: i64,
    opened_ms: i64,
    closed_ms: Option<i64>,
    trigger_kind: String,
    severity: String,
    rule: Option<String>,
    reason: String,
    evidence: String,
    from_color: Option<String>,
    to_color: Option<String>,
    from_version: Option<String>,
    to_version: Option<String>,
    state: String,
    outcome: Option<String>,
    downtime_ms: Option<i64>,
    in_flight: Option<i64>,
    holder: Option<String>,
    switch_pgid: Option<i64>,
}

/// A stored word parsed into its type, or [`StoreError::Unrecognised`]
/// naming the text (never a panic, never a silent default).
fn parsed<T: std::str::FromStr<Err = String>>(
    what: &'static str,
    text: &str,
) -> Result<T, StoreError> {
    text.parse()
        .map_err(|why| StoreError::Unrecognised { what, why })
}

impl TryFrom<IncidentRow> for Incident {
    type Error = StoreError;
    fn try_from(r: IncidentRow) -> Result<Incident, StoreError> {
        Ok(Incident {
            id: r.id,
            opened_ms: r.opened_ms,
            closed_ms: r.closed_ms,
            trigger_kind: parsed("a rollback trigger", &r.trigger_kind)?,
            severity: r.severity.parse().unwrap_or(Severity::Critical),
            rule: r.rule,
            reason: r.reason,
            evidence: r.evidence,
            from_color: r.from_color.and_then(|c| c.parse().ok()),
            to_color: r.to_color.and_then(|c| c.parse().ok()),
            from_version: r.from_version,
            to_version: r.to_version,
            state: parsed("an incident state", &r.state)?,
            outcome: r.outcome,
            downtime_ms: r.downtime_ms,
            in_flight: r.in_flight.is_some(),
            holder: r.holder,
            switch_pgid: r
                .switch_pgid
                .map(|p| {
                    u32::try_from(p).map_err(|_| StoreError::Unrecognised {
                        what: "a process group",
                        why: format!("{p} is not a process group id"),
                    })
                })
                .transpose()?,
        })
    }
}

// --- retention types ----------------------------------------------------

const MINUTE_MS: Millis = 60_000;

/// How long a write waits for another connection's write lock.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// What one retention pass did.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct RetentionReport {
    /// Raw samples deleted (after being rolled up, unless no-data).
    pub deleted_samples: u64,
    /// (probe, color, minute) rollup rows written or merged into.
    pub minutes: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CompactReport {
    pub freed_pages: u64,
    /// False when a reader kept the WAL from being truncated this time.
    pub checkpointed: bool,
    pub size_bytes: u64,
}

/// One probe's samples on one color over one minute, after the raw samples
/// are gone. `color` is `None` for a shared probe.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Rollup {
    pub probe: String,
    pub color: Option<Color>,
    pub minute_ms: Millis,
    pub count: i64,
    pub failures: i64,
    pub latency_avg: Option<f64>,
    pub latency_p95: Option<f64>,
    pub latency_max: Option<f64>,
}

#[derive(Default)]
struct MinuteStats {
    count: i64,
    failures: i64,
    latencies: Vec<f64>,
}

impl MinuteStats {
    /// Average, p95 (nearest rank) and maximum latency.
    fn latency(&self) -> (Option<f64>, Option<f64>, Option<f64>) {
        if self.latencies.is_empty() {
            return (None, None, None);
        }
        let mut all = self.latencies.clone();
        let p95 = crate::model::p95(&mut all);
        let avg = all.iter().sum::<f64>() / all.len() as f64;
        (Some(avg), p95, all.last().copied())
    }
}

const INCIDENT_COLUMNS: &str = "id, opened_ms, closed_ms, trigger_kind, severity, rule, reason, evidence, \
     from_color, to_color, from_version, to_version, state, outcome, downtime_ms, in_flight, holder, switch_pgid";

impl Store {
    /// Open (creating if needed) `state_dir/rollbackd.db` and migrate it.
    pub async fn open_dir(state_dir: &Path) -> Result<Store, StoreError> {
        std::fs::create_dir_all(state_dir).map_err(|source| StoreError::StateDir {
            path: state_dir.to_path_buf(),
            source,
        })?;
        Store::open(&state_dir.join("rollbackd.db")).await
    }

    /// Open `state_dir/rollbackd.db` for a command that only reads
    /// (`status`, `incidents`, `samples`, `report`, `replay`): SQLite
    /// `mode=ro`, never creating the directory or the file, never
    /// migrating. A missing database, a permission problem or a schema
    /// older than this binary is one error naming the path (and the user).
    pub async fn open_read_only(state_dir: &Path) -> Result<Store, StoreError> {
        let path = state_dir.join("rollbackd.db");
        let user = current_user();
        let denied = |on: &Path, e: &std::io::Error| StoreError::Permission {
            path: path.clone(),
            user: user.clone(),
            why: format!("{}: {}", on.display(), io_words(e)),
        };
        match std::fs::metadata(state_dir) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(StoreError::Missing {
                    path,
                    why: format!(
                        "the state directory {} does not exist (is state_dir right? the daemon makes it when it first runs)",
                        state_dir.display()
                    ),
                });
            }
            Err(e) => return Err(denied(state_dir, &e)),
            Ok(m) if !m.is_dir() => {
                return Err(StoreError::Missing {
                    path,
                    why: format!("{} is not a directory", state_dir.display()),
                });
            }
            Ok(_) => {}
        }
        // Opened (and closed) before SQLite sees it: the one way to tell a
        // missing file from a forbidden one, which SQLite reports alike.
        // No SQLite connection of this process is open on it yet, so the
        // close drops no lock.
        match std::fs::File::open(&path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(StoreError::Missing {
                    path,
                    why: format!(
                        "{} holds no rollbackd.db (the daemon makes it when it first runs)",
                        state_dir.display()
                    ),
                });
            }
            Err(e) => return Err(denied(&path, &e)),
            Ok(_) => {}
        }
        let options = SqliteConnectOptions::new()
            .filename(&path)
            .read_only(true)
            .create_if_missing(false)
            .busy_timeout(BUSY_TIMEOUT);
        // Connect and read the schema's version: the first query is when
        // SQLite opens the WAL's `-shm`, so a problem there shows here.
        async fn connect(
            options: SqliteConnectOptions,
        ) -> Result<(SqlitePool, Result<Option<i64>, sqlx::Error>), sqlx::Error> {
            let pool = SqlitePoolOptions::new()
                .max_connections(2)
                .idle_timeout(None)
                .max_lifetime(None)
                .acquire_timeout(Duration::from_secs(10))
                .connect_with(options)
                .await?;
            let version = sqlx::query_scalar::<_, Option<i64>>(
                "SELECT max(version) FROM _sqlx_migrations WHERE success",
            )
            .fetch_one(&pool)
            .await;
            match version {
                Err(sqlx::Error::Database(e)) if cannot_map(e.as_ref()) => {
                    pool.close().await;
                    Err(sqlx::Error::Database(e))
                }
                version => Ok((pool, version)),
            }
        }
        let wal = path.with_extension("db-wal");
        let (pool, version) = match connect(options.clone()).await {
            Ok(opened) => opened,
            // SQLITE_CANTOPEN on a readable file: a WAL database needs its
            // `-shm`, which this user cannot make in a directory it may not
            // write. With no `-wal` beside it, every commit is in the file
            // itself and no daemon is writing: read it as immutable.
            Err(sqlx::Error::Database(e)) if cannot_map(e.as_ref()) && !wal.exists() => {
                connect(options.immutable(true))
                    .await
                    .map_err(|source| StoreError::Open {
                        path: path.clone(),
                        source,
                    })?
            }
            Err(sqlx::Error::Database(e)) if cannot_map(e.as_ref()) => {
                return Err(StoreError::Permission {
                    path: path.clone(),
                    user,
                    why: format!(
                        "its shared-memory file {}-shm cannot be opened or made (the directory {} must be writable, or the file readable, by this user)",
                        path.display(),
                        state_dir.display()
                    ),
                });
            }
            Err(source) => return Err(StoreError::Open { path, source }),
        };
        // SQLite made the `-wal`/`-shm` if they were missing: when root
        // runs the command, they must stay the daemon's to write.
        give_files_to_dir_owner(&path);
        let want = sqlx::migrate!("./migrations")
            .iter()
            .map(|m| m.version)
            .max()
            .unwrap_or(0);
        let have = match version {
            Ok(v) => v,
            // No migrations table: a file no rollbackd ever migrated.
            Err(sqlx::Error::Database(e)) if e.message().contains("no such table") => None,
            Err(source) => return Err(StoreError::Open { path, source }),
        };
        let have = have.unwrap_or(0);
        if have < want {
            return Err(StoreError::OldSchema { path, have, want });
        }
        Ok(Store {
            pool,
            identity: file_identity(&path),
            path,
            kept: Default::default(),
            last: Default::default(),
            // Reads only: `fence` guards writes into the mapping, and a
            // reader's shared memory is SQLite's read-only kind when the
            // file is not writable.
            mapped_writable: false,
            series: Default::default(),
        })
    }

    pub async fn open(path: &Path) -> Result<Store, StoreError> {
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // WAL + NORMAL: a committed transaction survives a crash of this
            // process (kill -9); only a power loss may drop the last commits.
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(BUSY_TIMEOUT)
            .foreign_keys(true)
            .pragma("journal_size_limit", "67108864");
        // SQLite has no migration lock of its own: two processes opening a
        // new database at once (the daemon and a CLI command) would both try
        // to make the file (its WAL mode, `auto_vacuum`) and create the
        // tables. An exclusive flock beside the file, held from before the
        // first connection until the migrations ran, serialises them; the
        // later ones find the file made and the migrations applied.
        let lock = migration_lock(path).await?;
        // `auto_vacuum` is set when the file is made; setting it again takes
        // the write lock, so a command that only reads (or a connection the
        // pool opens to replace a failed one) could not connect while
        // another process holds the database locked.
        let new_file = std::fs::metadata(path)
            .map(|m| m.len() == 0)
            .unwrap_or(true);
        let first = if new_file {
            options.clone().auto_vacuum(SqliteAutoVacuum::Incremental)
        } else {
            options.clone()
        };
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            // Connections are never closed behind our back: a close may
            // checkpoint, which must not happen while the files are
            // immutable (see `fence`).
            .idle_timeout(None)
            .max_lifetime(None)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(first)
            .await
            .map_err(|source| StoreError::Open {
                path: path.to_path_buf(),
                source,
            })?;
        let migrated = sqlx::migrate!("./migrations").run(&pool).await;
        drop(lock);
        migrated.map_err(|source| StoreError::Migrate {
            path: path.to_path_buf(),
            source,
        })?;
        give_files_to_dir_owner(path);
        pool.set_connect_options(options);
        let store = Store {
            pool,
            path: path.to_path_buf(),
            identity: file_identity(path),
            kept: Default::default(),
            last: Default::default(),
            mapped_writable: true,
            series: Default::default(),
        };
        let store = Store {
            mapped_writable: store.fence("opening the database").is_ok(),
            ..store
        };
        store.remember_guards().await;
        Ok(store)
    }

    /// Read what a rollback's guards read, so that a storage fault from
    /// the start has answers to fall back on (see [`LastRead`]). Every
    /// later successful read refreshes them.
    async fn remember_guards(&self) {
        let now = crate::model::now_ms();
        let _ = self.deployments().await;
        let _ = self.stored_in_flight_incident().await;
        let _ = self.active_pause(now).await;
        let _ = self.unresolved_escalation().await;
        let _ = self.cooldown_start_ms(false).await;
        let _ = self.cooldown_start_ms(true).await;
    }

    /// A connection for one write transaction, begun with `BEGIN IMMEDIATE`
    /// (the write lock is taken, or waited for, up front) and with `busy`
    /// as its busy timeout.
    async fn writing(&self, doing: &'static str, busy: Duration) -> Result<Writing, StoreError> {
        if let Err(e) = self.fence(doing) {
            self.kept.failed_write();
            return Err(e);
        }
        let conn = self.pool.acquire().await.map_err(q(doing))?;
        let mut w = Writing {
            conn,
            busy,
            done: false,
            failures: self.kept.clone(),
        };
        if busy != BUSY_TIMEOUT {
            sqlx::query(&format!("PRAGMA busy_timeout = {}", busy.as_millis()))
                .execute(&mut *w.conn)
                .await
                .map_err(q(doing))?;
        }
        Ok(w)
    }

    /// Touch no connection while the WAL's shared-memory file cannot be
    /// written (made immutable, or on a file system remounted read-only).
    /// SQLite maps that file and writes into the mapping, readers too (their
    /// read marks): a write fault there is a SIGBUS that kills the daemon,
    /// not an error it could report. Checked before every query (one
    /// `access`). While it holds, the rollback works from what it read last
    /// (nothing can change the files meanwhile) and keeps what it writes.
    fn fence(&self, doing: &'static str) -> Result<(), StoreError> {
        let mut shm = self.path.as_os_str().to_owned();
        shm.push("-shm");
        // `access`, never `open`: closing any descriptor of the file would
        // drop every POSIX lock this process holds on it, SQLite's too.
        match nix::unistd::access(Path::new(&shm), nix::unistd::AccessFlags::W_OK) {
            // Only an immutable file (EPERM) or a read-only file system
            // (EROFS): a user without write permission (EACCES, a reader
            // in the group) gets SQLite's own read-only shared memory.
            Err(e @ (nix::errno::Errno::EPERM | nix::errno::Errno::EROFS)) => {
                Err(StoreError::Unwritable(format!(
                    "database error while {doing}: {} cannot be written ({e}): the database is left alone until it can",
                    Path::new(&shm).display()
                )))
            }
            Ok(()) | Err(_) => Ok(()),
        }
    }

    /// Whether the file at the path is no longer the one opened: `None`
    /// while it is, else what happened to it, for the log and `/healthz`.
    pub fn file_problem(&self) -> Option<String> {
        let opened = self.identity?;
        match std::fs::metadata(&self.path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Some(format!(
                "the database file {} was deleted while the daemon runs: it writes into the unlinked file, which is lost when it stops",
                self.path.display()
            )),
            Err(e) => Some(format!(
                "cannot check the database file {}: {e}",
                self.path.display()
            )),
            Ok(_) if file_identity(&self.path) != Some(opened) => Some(format!(
                "the database file {} was replaced while the daemon runs: it still writes into the file it opened, not the one at the path",
                self.path.display()
            )),
            Ok(_) => None,
        }
    }

    /// Write transactions that failed since the store was opened.
    pub fn failed_writes(&self) -> u64 {
        self.kept.failed_writes()
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Close the connections, unless the WAL's shared-memory file cannot
    /// be written: closing may checkpoint, which writes into its mapping
    /// (see [`Store::fence`]); the process's exit lets go of them instead.
    pub async fn close(&self) {
        if self.fence("closing the database").is_err() {
            tracing::warn!(
                "the database's files cannot be written: leaving its connections to the exit"
            );
            return;
        }
        self.pool.close().await;
    }

    fn last(&self) -> std::sync::MutexGuard<'_, LastRead> {
        // Each field is replaced whole: a poisoned lock still holds a
        // consistent value.
        self.last.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Remember a read's answer, or, while the fence holds, answer what
    /// was read last (an error when nothing was).
    fn remembered<T: Clone>(
        &self,
        read: Result<T, StoreError>,
        slot: impl FnOnce(&mut LastRead) -> &mut Option<T>,
    ) -> Result<T, StoreError> {
        let mut last = self.last();
        match read {
            Ok(v) => {
                *slot(&mut last) = Some(v.clone());
                Ok(v)
            }
            Err(StoreError::Unwritable(why)) => {
                slot(&mut last).clone().ok_or(StoreError::Unwritable(why))
            }
            Err(e) => Err(e),
        }
    }

    /// The pool, after [`Store::fence`]: no query touches a connection
    /// while the WAL's shared-memory file cannot be written.
    fn db(&self) -> Result<&SqlitePool, StoreError> {
        if self.mapped_writable {
            self.fence("reading the database")?;
        }
        Ok(&self.pool)
    }

    // --- samples: `store/samples.rs` --------------------------------------

    // --- retention: rollups, deletion, a bounded file ----------------------
    //
    // Raw samples older than the retention are rolled up per probe, color
    // and minute, then deleted; old rollups are deleted; freed pages go back
    // to the file system (incremental vacuum) and the WAL is truncated.

    /// Delete rollups of minutes before `before_ms`.
    pub async fn delete_rollups(&self, before_ms: Millis) -> Result<u64, StoreError> {
        self.fence("deleting old rollups")?;
        Ok(sqlx::query("DELETE FROM rollups WHERE minute_ms < ?")
            .bind(before_ms)
            .execute(self.db()?)
            .await
            .map_err(q("deleting old rollups"))?
            .rows_affected())
    }

    /// Give free pages back to the file system and truncate the WAL. The
    /// checkpoint is skipped (not an error) while a reader holds the WAL;
    /// `journal_size_limit` bounds it then.
    pub async fn compact(&self) -> Result<CompactReport, StoreError> {
        self.fence("compacting the database")?;
        let free_before: i64 = sqlx::query_scalar("PRAGMA freelist_count")
            .fetch_one(self.db()?)
            .await
            .map_err(q("reading the free page count"))?;
        sqlx::query("PRAGMA incremental_vacuum")
            .execute(self.db()?)
            .await
            .map_err(q("vacuuming"))?;
        let row = sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
            .fetch_one(self.db()?)
            .await
            .map_err(q("checkpointing the WAL"))?;
        let busy: i64 = row.get(0);
        Ok(CompactReport {
            freed_pages: free_before.max(0) as u64,
            checkpointed: busy == 0,
            size_bytes: self.size_bytes(),
        })
    }

    /// Rollups since a minute, oldest first, optionally for one probe and color.
    pub async fn rollups(
        &self,
        probe: Option<&str>,
        color: Option<Color>,
        since_ms: Millis,
    ) -> Result<Vec<Rollup>, StoreError> {
        let rows = sqlx::query(
            "SELECT probe, color, minute_ms, count, failures, latency_avg, latency_p95, latency_max \
             FROM rollups WHERE minute_ms >= ? AND (? IS NULL OR probe = ?) AND (? IS NULL OR color = ?) \
             ORDER BY minute_ms, probe, color",
        )
        .bind(since_ms)
        .bind(probe)
        .bind(probe)
        .bind(color.map(Color::as_str))
        .bind(color.map(Color::as_str))
        .fetch_all(self.db()?)
        .await
        .map_err(q("reading rollups"))?;
        Ok(rows
            .into_iter()
            .map(|r| Rollup {
                probe: r.get("probe"),
                color: r.get::<String, _>("color").parse().ok(),
                minute_ms: r.get("minute_ms"),
                count: r.get("count"),
                failures: r.get("failures"),
                latency_avg: r.get("latency_avg"),
                latency_p95: r.get("latency_p95"),
                latency_max: r.get("latency_max"),
            })
            .collect())
    }

    // --- end of retention ------------------------------------------------

    // --- deployments -----------------------------------------------------

    pub async fn record_deployment(
        &self,
        color: Color,
        version: &str,
        source: &str,
        at_ms: Millis,
    ) -> Result<Deployment, StoreError> {
        self.record_deployment_with(color, version, source, at_ms, BUSY_TIMEOUT)
            .await
    }

    async fn record_deployment_with(
        &self,
        color: Color,
        version: &str,
        source: &str,
        at_ms: Millis,
        busy: Duration,
    ) -> Result<Deployment, StoreError> {
        const DOING: &str = "recording a deployment";
        let mut w = self.writing(DOING, busy).await?;
        let mut tx = (*w.conn)
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(q(DOING))?;
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO deployments (color, version, at_ms, source) VALUES (?, ?, ?, ?) RETURNING id",
        )
        .bind(color.as_str())
        .bind(version)
        .bind(at_ms)
        .bind(source)
        .fetch_one(&mut *tx)
        .await
        .map_err(q(DOING))?;
        tx.commit().await.map_err(q(DOING))?;
        w.done().await;
        Ok(Deployment {
            id,
            color,
            version: version.to_owned(),
            at_ms,
            source: source.to_owned(),
            quarantined: false,
        })
    }

    /// The most recent deployment: the active color when there is no
    /// `[active] file`.
    pub async fn latest_deployment(&self) -> Result<Option<Deployment>, StoreError> {
        match self.latest_deployment_read().await {
            Err(StoreError::Unwritable(why)) => match &self.last().deployments {
                Some(all) => Ok(all.last().cloned()),
                None => Err(StoreError::Unwritable(why)),
            },
            r => r,
        }
    }

    async fn latest_deployment_read(&self) -> Result<Option<Deployment>, StoreError> {
        let row: Option<DeploymentRow> = sqlx::query_as(
            "SELECT id, color, version, at_ms, source, quarantined FROM deployments ORDER BY id DESC LIMIT 1",
        )
        .fetch_optional(self.db()?)
        .await
        .map_err(q("reading the latest deployment"))?;
        Ok(row.map(DeploymentRow::into_deployment))
    }

    /// The latest deployment of `color` before deployment `before_id`.
    pub async fn previous_deployment_of(
        &self,
        color: Color,
        before_id: i64,
    ) -> Result<Option<Deployment>, StoreError> {
        match self.previous_deployment_read(color, before_id).await {
            Err(StoreError::Unwritable(why)) => match &self.last().deployments {
                Some(all) => Ok(all
                    .iter()
                    .rev()
                    .find(|d| d.color == color && d.id < before_id)
                    .cloned()),
                None => Err(StoreError::Unwritable(why)),
            },
            r => r,
        }
    }

    async fn previous_deployment_read(
        &self,
        color: Color,
        before_id: i64,
    ) -> Result<Option<Deployment>, StoreError> {
        let row: Option<DeploymentRow> = sqlx::query_as(
            "SELECT id, color, version, at_ms, source, quarantined FROM deployments \
             WHERE color = ? AND id < ? ORDER BY id DESC LIMIT 1",
        )
        .bind(color.as_str())
        .bind(before_id)
        .fetch_optional(self.db()?)
        .await
        .map_err(q("reading the previous deployment"))?;
        Ok(row.map(DeploymentRow::into_deployment))
    }

    pub async fn deployments(&self) -> Result<Vec<Deployment>, StoreError> {
        let read = self.deployments_read().await;
        self.remembered(read, |l| &mut l.deployments)
    }

    async fn deployments_read(&self) -> Result<Vec<Deployment>, StoreError> {
        let rows: Vec<DeploymentRow> = sqlx::query_as(
            "SELECT id, color, version, at_ms, source, quarantined FROM deployments ORDER BY id",
        )
        .fetch_all(self.db()?)
        .await
        .map_err(q("listing deployments"))?;
        Ok(rows
            .into_iter()
            .map(DeploymentRow::into_deployment)
            .collect())
    }

    /// Claim the post-deploy report of a deployment: true for exactly one
    /// caller, the one that should send it.
    pub async fn claim_report(&self, deployment: i64, at_ms: Millis) -> Result<bool, StoreError> {
        self.fence("claiming a post-deploy report")?;
        let done = sqlx::query(
            "UPDATE deployments SET reported_ms = ? WHERE id = ? AND reported_ms IS NULL",
        )
        .bind(at_ms)
        .bind(deployment)
        .execute(self.db()?)
        .await
        .map_err(q("claiming a post-deploy report"))?;
        Ok(done.rows_affected() == 1)
    }

    pub async fn report_sent(&self, deployment: i64) -> Result<bool, StoreError> {
        let at: Option<Option<i64>> =
            sqlx::query_scalar("SELECT reported_ms FROM deployments WHERE id = ?")
                .bind(deployment)
                .fetch_optional(self.db()?)
                .await
                .map_err(q("reading a post-deploy report mark"))?;
        Ok(at.flatten().is_some())
    }

    // --- verdicts --------------------------------------------------------

    pub async fn insert_verdict(&self, v: &StoredVerdict) -> Result<(), StoreError> {
        const DOING: &str = "recording a verdict";
        let mut w = self.writing(DOING, BUSY_TIMEOUT).await?;
        let mut tx = (*w.conn)
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(q(DOING))?;
        sqlx::query(
            "INSERT INTO verdicts (at_ms, rule, severity, color, state, n, value, threshold, window_ms, baseline, detail) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(v.at_ms)
        .bind(&v.rule)
        .bind(v.severity.as_str())
        .bind(v.color.as_str())
        .bind(v.state.as_str())
        .bind(v.n)
        .bind(v.value)
        .bind(v.threshold)
        .bind(v.window_ms)
        .bind(v.baseline)
        .bind(&v.detail)
        .execute(&mut *tx)
        .await
        .map_err(q(DOING))?;
        tx.commit().await.map_err(q(DOING))?;
        w.done().await;
        Ok(())
    }

    /// The latest stored verdict of every (rule, color).
    pub async fn latest_verdicts(&self) -> Result<Vec<StoredVerdict>, StoreError> {
        let rows = sqlx::query(
            "SELECT v.at_ms, v.rule, v.severity, v.color, v.state, v.n, v.value, v.threshold, v.window_ms, \
             v.baseline, v.detail FROM verdicts v \
             JOIN (SELECT MAX(id) AS id FROM verdicts GROUP BY rule, color) last ON last.id = v.id \
             ORDER BY v.rule, v.color",
        )
        .fetch_all(self.db()?)
        .await
        .map_err(q("reading verdicts"))?;
        rows.into_iter().map(verdict_from_row).collect()
    }

    /// Stored verdicts in `[from, until)`, oldest first.
    pub async fn verdicts_between(
        &self,
        from_ms: Millis,
        until_ms: Millis,
    ) -> Result<Vec<StoredVerdict>, StoreError> {
        let rows = sqlx::query(
            "SELECT at_ms, rule, severity, color, state, n, value, threshold, window_ms, baseline, detail \
             FROM verdicts WHERE at_ms >= ? AND at_ms < ? ORDER BY id",
        )
        .bind(from_ms)
        .bind(until_ms)
        .fetch_all(self.db()?)
        .await
        .map_err(q("reading verdicts"))?;
        rows.into_iter().map(verdict_from_row).collect()
    }

    // --- incidents -------------------------------------------------------

    /// Open an incident and its first timeline event in one transaction.
    /// With `in_flight`, fails with [`StoreError::RollbackInFlight`] when
    /// another rollback holds the slot (in this process or any other).
    pub async fn open_incident(
        &self,
        new: &NewIncident,
        first_state: IncidentState,
        message: &str,
    ) -> Result<i64, StoreError> {
        self.open_incident_with(new, first_state, message, BUSY_TIMEOUT)
            .await
    }

    async fn open_incident_with(
        &self,
        new: &NewIncident,
        first_state: IncidentState,
        message: &str,
        busy: Duration,
    ) -> Result<i64, StoreError> {
        const DOING: &str = "opening an incident";
        let mut w = self.writing(DOING, busy).await?;
        let mut tx = (*w.conn)
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(q(DOING))?;
        let inserted = sqlx::query_scalar::<_, i64>(
            "INSERT INTO incidents (opened_ms, trigger_kind, severity, rule, reason, evidence, from_color, to_color, \
             from_version, to_version, state, in_flight, holder) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
        )
        .bind(new.at_ms)
        .bind(new.trigger_kind.as_str())
        .bind(new.severity.as_str())
        .bind(&new.rule)
        .bind(&new.reason)
        .bind(&new.evidence)
        .bind(new.from_color.map(Color::as_str))
        .bind(new.to_color.map(Color::as_str))
        .bind(&new.from_version)
        .bind(&new.to_version)
        .bind(first_state.as_str())
        .bind(new.in_flight.then_some(1i64))
        .bind(&new.holder)
        .fetch_one(&mut *tx)
        .await;
        let id = match inserted {
            Ok(id) => id,
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
                // Not a storage fault: roll back and hand the connection on.
                tx.rollback().await.map_err(q(DOING))?;
                w.done().await;
                drop(w);
                let holder = self.in_flight_incident().await?.map(|i| i.id).unwrap_or(0);
                return Err(StoreError::RollbackInFlight(holder));
            }
            Err(e) => return Err(q(DOING)(e)),
        };
        insert_event(&mut tx, id, new.at_ms, first_state.into(), message).await?;
        tx.commit().await.map_err(q(DOING))?;
        w.done().await;
        Ok(id)
    }

    /// Move an incident to a new state, with its timeline event, atomically.
    pub async fn advance_incident(
        &self,
        id: i64,
        at_ms: Millis,
        state: IncidentState,
        message: &str,
    ) -> Result<(), StoreError> {
        self.advance_incident_with(id, at_ms, state, message, BUSY_TIMEOUT)
            .await
    }

    async fn advance_incident_with(
        &self,
        id: i64,
        at_ms: Millis,
        state: IncidentState,
        message: &str,
        busy: Duration,
    ) -> Result<(), StoreError> {
        const DOING: &str = "advancing an incident";
        let mut w = self.writing(DOING, busy).await?;
        let mut tx = (*w.conn)
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(q(DOING))?;
        let changed = sqlx::query("UPDATE incidents SET state = ? WHERE id = ?")
            .bind(state.as_str())
            .bind(id)
            .execute(&mut *tx)
            .await
            .map_err(q(DOING))?
            .rows_affected();
        if changed == 0 {
            tx.rollback().await.map_err(q(DOING))?;
            w.done().await;
            return Err(StoreError::NoIncident(id));
        }
        insert_event(&mut tx, id, at_ms, state.into(), message).await?;
        tx.commit().await.map_err(q(DOING))?;
        w.done().await;
        Ok(())
    }

    /// Record a timeline event without changing the state.
    pub async fn add_incident_event(
        &self,
        id: i64,
        at_ms: Millis,
        kind: impl Into<EventKind>,
        message: &str,
    ) -> Result<(), StoreError> {
        self.add_incident_event_with(id, at_ms, kind.into(), message, BUSY_TIMEOUT)
            .await
    }

    async fn add_incident_event_with(
        &self,
        id: i64,
        at_ms: Millis,
        kind: EventKind,
        message: &str,
        busy: Duration,
    ) -> Result<(), StoreError> {
        const DOING: &str = "adding an incident event";
        let mut w = self.writing(DOING, busy).await?;
        let mut tx = (*w.conn)
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(q(DOING))?;
        insert_event(&mut tx, id, at_ms, kind, message).await?;
        tx.commit().await.map_err(q(DOING))?;
        w.done().await;
        Ok(())
    }

    /// The switch command of incident `id` runs as process group `pgid`:
    /// stored on the incident (what a restart reads) with its timeline
    /// event (what a person reads), atomically.
    pub async fn record_switch_group(
        &self,
        id: i64,
        at_ms: Millis,
        pgid: u32,
        message: &str,
    ) -> Result<(), StoreError> {
        self.record_switch_group_with(id, at_ms, pgid, message, BUSY_TIMEOUT)
            .await
    }

    async fn record_switch_group_with(
        &self,
        id: i64,
        at_ms: Millis,
        pgid: u32,
        message: &str,
        busy: Duration,
    ) -> Result<(), StoreError> {
        const DOING: &str = "recording the switch command's process group";
        let mut w = self.writing(DOING, busy).await?;
        let mut tx = (*w.conn)
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(q(DOING))?;
        let changed = sqlx::query("UPDATE incidents SET switch_pgid = ? WHERE id = ?")
            .bind(i64::from(pgid))
            .bind(id)
            .execute(&mut *tx)
            .await
            .map_err(q(DOING))?
            .rows_affected();
        if changed == 0 {
            tx.rollback().await.map_err(q(DOING))?;
            w.done().await;
            return Err(StoreError::NoIncident(id));
        }
        insert_event(&mut tx, id, at_ms, IncidentState::Switching.into(), message).await?;
        tx.commit().await.map_err(q(DOING))?;
        w.done().await;
        Ok(())
    }

    /// Close an incident: final state, outcome, downtime; frees the slot.
    pub async fn close_incident(
        &self,
        id: i64,
        at_ms: Millis,
        state: IncidentState,
        outcome: &str,
        downtime_ms: Option<Millis>,
    ) -> Result<(), StoreError> {
        self.close_incident_with(id, at_ms, state, outcome, downtime_ms, BUSY_TIMEOUT)
            .await
    }

    async fn close_incident_with(
        &self,
        id: i64,
        at_ms: Millis,
        state: IncidentState,
        outcome: &str,
        downtime_ms: Option<Millis>,
        busy: Duration,
    ) -> Result<(), StoreError> {
        const DOING: &str = "closing an incident";
        let mut w = self.writing(DOING, busy).await?;
        let mut tx = (*w.conn)
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(q(DOING))?;
        sqlx::query(
            "UPDATE incidents SET state = ?, outcome = ?, downtime_ms = ?, closed_ms = ?, in_flight = NULL WHERE id = ?",
        )
        .bind(state.as_str())
        .bind(outcome)
        .bind(downtime_ms)
        .bind(at_ms)
        .bind(id)
        .execute(&mut *tx)
        .await
        .map_err(q(DOING))?;
        insert_event(&mut tx, id, at_ms, state.into(), outcome).await?;
        tx.commit().await.map_err(q(DOING))?;
        w.done().await;
        Ok(())
    }

    pub async fn incident(&self, id: i64) -> Result<Incident, StoreError> {
        let row: Option<IncidentRow> = sqlx::query_as(&format!(
            "SELECT {INCIDENT_COLUMNS} FROM incidents WHERE id = ?"
        ))
        .bind(id)
        .fetch_optional(self.db()?)
        .await
        .map_err(q("reading an incident"))?;
        row.map(Incident::try_from)
            .transpose()?
            .ok_or(StoreError::NoIncident(id))
    }

    pub async fn incidents(&self) -> Result<Vec<Incident>, StoreError> {
        let rows: Vec<IncidentRow> = sqlx::query_as(&format!(
            "SELECT {INCIDENT_COLUMNS} FROM incidents ORDER BY id"
        ))
        .fetch_all(self.db()?)
        .await
        .map_err(q("listing incidents"))?;
        rows.into_iter().map(Incident::try_from).collect()
    }

    /// The rollback in flight: in the database, or (while the database
    /// refuses writes) one this process keeps in memory.
    pub async fn in_flight_incident(&self) -> Result<Option<Incident>, StoreError> {
        match self.stored_in_flight_incident().await {
            Ok(None) => Ok(self.kept_in_flight()),
            Err(e) => match self.kept_in_flight() {
                Some(kept) => Ok(Some(kept)),
                None => Err(e),
            },
            found => found,
        }
    }

    async fn max_incident_id(&self) -> Result<i64, StoreError> {
        sqlx::query_scalar("SELECT COALESCE(MAX(id), 0) FROM incidents")
            .fetch_one(self.db()?)
            .await
            .map_err(q("reading the last incident id"))
    }

    async fn stored_in_flight_incident(&self) -> Result<Option<Incident>, StoreError> {
        let read = self.stored_in_flight_read().await;
        self.remembered(read, |l| &mut l.in_flight)
    }

    async fn stored_in_flight_read(&self) -> Result<Option<Incident>, StoreError> {
        let row: Option<IncidentRow> = sqlx::query_as(&format!(
            "SELECT {INCIDENT_COLUMNS} FROM incidents WHERE in_flight IS NOT NULL"
        ))
        .fetch_optional(self.db()?)
        .await
        .map_err(q("reading the in-flight rollback"))?;
        row.map(Incident::try_from).transpose()
    }

    pub async fn incident_events(&self, id: i64) -> Result<Vec<IncidentEvent>, StoreError> {
        let rows = sqlx::query(
            "SELECT at_ms, state, message FROM incident_events WHERE incident_id = ? ORDER BY at_ms, id",
        )
        .bind(id)
        .fetch_all(self.db()?)
        .await
        .map_err(q("reading an incident timeline"))?;
        rows.into_iter()
            .map(|r| {
                Ok(IncidentEvent {
                    at_ms: r.get("at_ms"),
                    state: parsed("a timeline event kind", r.get("state"))?,
                    message: r.get("message"),
                })
            })
            .collect()
    }

    // --- guarded rollback (issue 5): quarantine, cooldown, holders -------

    /// Never restore deployment `id` automatically again, nor any earlier
    /// deployment of the same known version. A later `deploy` (a new row)
    /// starts clean.
    pub async fn quarantine_deployment(&self, id: i64, version: &str) -> Result<(), StoreError> {
        self.quarantine_deployment_with(id, version, BUSY_TIMEOUT)
            .await
    }

    async fn quarantine_deployment_with(
        &self,
        id: i64,
        version: &str,
        busy: Duration,
    ) -> Result<(), StoreError> {
        const DOING: &str = "quarantining a deployment";
        let mut w = self.writing(DOING, busy).await?;
        let mut tx = (*w.conn)
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(q(DOING))?;
        sqlx::query(
            "UPDATE deployments SET quarantined = 1 WHERE id = ? \
             OR (id < ? AND version = ? AND version NOT IN ('', 'unknown'))",
        )
        .bind(id)
        .bind(id)
        .bind(version)
        .execute(&mut *tx)
        .await
        .map_err(q(DOING))?;
        tx.commit().await.map_err(q(DOING))?;
        w.done().await;
        Ok(())
    }

    /// The most recent deployment of one color.
    pub async fn latest_deployment_of(
        &self,
        color: Color,
    ) -> Result<Option<Deployment>, StoreError> {
        self.previous_deployment_of(color, i64::MAX).await
    }

    /// When the cooldown started: the last automatic rollback whose switch
    /// command ran (it may have moved traffic even if it then failed), and
    /// with `dry_run` also the last one that would have run it.
    pub async fn cooldown_start_ms(&self, dry_run: bool) -> Result<Option<Millis>, StoreError> {
        let kept = self.kept_cooldown_start(dry_run);
        let read = self.cooldown_read(dry_run).await;
        let stored = self.remembered(read, |l| &mut l.cooldown[usize::from(dry_run)])?;
        Ok(stored.max(kept))
    }

    async fn cooldown_read(&self, dry_run: bool) -> Result<Option<Millis>, StoreError> {
        sqlx::query_scalar(
            "SELECT MAX(i.opened_ms) FROM incidents i WHERE i.trigger_kind = ? \
             AND (EXISTS (SELECT 1 FROM incident_events e WHERE e.incident_id = i.id AND e.state = ?) \
                  OR (? AND i.state = ?))",
        )
        .bind(Trigger::Automatic.as_str())
        .bind(IncidentState::Switching.as_str())
        .bind(dry_run)
        .bind(IncidentState::DryRun.as_str())
        .fetch_one(self.db()?)
        .await
        .map_err(q("reading the last rollback"))
    }

    /// The last escalated incident, unless a deployment was recorded after
    /// it closed (an operator or pipeline acted since).
    pub async fn unresolved_escalation(&self) -> Result<Option<Incident>, StoreError> {
        let read = self.unresolved_escalation_read().await;
        self.remembered(read, |l| &mut l.escalation)
    }

    async fn unresolved_escalation_read(&self) -> Result<Option<Incident>, StoreError> {
        let row: Option<IncidentRow> = sqlx::query_as(&format!(
            "SELECT {INCIDENT_COLUMNS} FROM incidents i WHERE i.state = ? \
             AND NOT EXISTS (SELECT 1 FROM deployments d WHERE d.at_ms > i.closed_ms) \
             ORDER BY i.id DESC LIMIT 1"
        ))
        .bind(IncidentState::Escalated.as_str())
        .fetch_optional(self.db()?)
        .await
        .map_err(q("reading escalations"))?;
        row.map(Incident::try_from).transpose()
    }

    /// Take over an in-flight incident from `old` (a process that died):
    /// true for exactly one caller.
    pub async fn take_over_incident(
        &self,
        id: i64,
        old: Option<&str>,
        new: &str,
    ) -> Result<bool, StoreError> {
        self.fence("taking over a rollback")?;
        let done = sqlx::query(
            "UPDATE incidents SET holder = ? WHERE id = ? AND in_flight IS NOT NULL AND holder IS ?",
        )
        .bind(new)
        .bind(id)
        .bind(old)
        .execute(self.db()?)
        .await
        .map_err(q("taking over a rollback"))?;
        Ok(done.rows_affected() == 1)
    }

    // --- pauses ----------------------------------------------------------

    pub async fn pause(
        &self,
        at_ms: Millis,
        until_ms: Millis,
        reason: &str,
    ) -> Result<i64, StoreError> {
        self.fence("recording a pause")?;
        sqlx::query_scalar(
            "INSERT INTO pauses (at_ms, until_ms, reason) VALUES (?, ?, ?) RETURNING id",
        )
        .bind(at_ms)
        .bind(until_ms)
        .bind(reason)
        .fetch_one(self.db()?)
        .await
        .map_err(q("recording a pause"))
    }

    /// End every hold now. Returns how many were active.
    pub async fn resume(&self, at_ms: Millis) -> Result<u64, StoreError> {
        self.fence("resuming")?;
        let done = sqlx::query(
            "UPDATE pauses SET resumed_ms = ? WHERE resumed_ms IS NULL AND until_ms > ?",
        )
        .bind(at_ms)
        .bind(at_ms)
        .execute(self.db()?)
        .await
        .map_err(q("resuming"))?;
        Ok(done.rows_affected())
    }

    /// The hold in force at `now`, if any (the one that lasts longest).
    pub async fn active_pause(&self, now_ms: Millis) -> Result<Option<Pause>, StoreError> {
        let read = self.active_pause_read(now_ms).await;
        let pause = self.remembered(read, |l| &mut l.pause)?;
        // A remembered pause may have run out since.
        Ok(pause.filter(|p| p.until_ms > now_ms))
    }

    async fn active_pause_read(&self, now_ms: Millis) -> Result<Option<Pause>, StoreError> {
        let row = sqlx::query(
            "SELECT id, at_ms, until_ms, reason FROM pauses WHERE resumed_ms IS NULL AND until_ms > ? \
             ORDER BY until_ms DESC LIMIT 1",
        )
        .bind(now_ms)
        .fetch_optional(self.db()?)
        .await
        .map_err(q("reading pauses"))?;
        Ok(row.map(|r| Pause {
            id: r.get("id"),
            at_ms: r.get("at_ms"),
            until_ms: r.get("until_ms"),
            reason: r.get("reason"),
        }))
    }

    /// The database file's size in bytes (main file plus WAL).
    pub fn size_bytes(&self) -> u64 {
        let wal = self.path.with_extension("db-wal");
        [self.path.as_path(), wal.as_path()]
            .iter()
            .filter_map(|p| std::fs::metadata(p).ok())
            .map(|m| m.len())
            .sum()
    }
}

/// When root runs a command (`sudo rollbackd status`) against a state
/// directory owned by the daemon's user, files it creates there would be
/// root's, and the daemon could no longer write its own database. Give them
/// to the directory's owner. (SQLite already does this for -wal and -shm
/// files when the database file has the right owner.)
/// SQLITE_CANTOPEN, or a SQLITE_READONLY kind (`_DIRECTORY`, ...): a read
/// connection could not open or make the WAL's files.
fn cannot_map(e: &dyn sqlx::error::DatabaseError) -> bool {
    e.code()
        .and_then(|c| c.parse::<i32>().ok())
        .is_some_and(|c| c & 0xff == 14 || c & 0xff == 8)
}

/// The user this process runs as, by name when it has one: for errors.
fn current_user() -> String {
    let uid = nix::unistd::geteuid();
    match nix::unistd::User::from_uid(uid) {
        Ok(Some(u)) => format!("{} (uid {uid})", u.name),
        _ => format!("uid {uid}"),
    }
}

/// An I/O error in words, without Rust's "(os error 13)".
fn io_words(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::PermissionDenied => "permission denied".to_owned(),
        _ => {
            let text = e.to_string();
            match text.find(" (os error") {
                Some(i) => text[..i].to_lowercase(),
                None => text,
            }
        }
    }
}

fn give_files_to_dir_owner(db: &Path) {
    use std::os::unix::fs::MetadataExt;
    if !nix::unistd::geteuid().is_root() {
        return;
    }
    let Some(dir) = db.parent().and_then(|d| {
        std::fs::metadata(if d.as_os_str().is_empty() {
            Path::new(".")
        } else {
            d
        })
        .ok()
    }) else {
        return;
    };
    if dir.uid() == 0 {
        return;
    }
    let owner = (
        Some(nix::unistd::Uid::from_raw(dir.uid())),
        Some(nix::unistd::Gid::from_raw(dir.gid())),
    );
    for file in [
        db.to_path_buf(),
        db.with_extension("db.lock"),
        db.with_extension("db-wal"),
        db.with_extension("db-shm"),
    ] {
        if std::fs::metadata(&file).is_ok_and(|m| m.uid() == 0) {
            if let Err(e) = nix::unistd::chown(&file, owner.0, owner.1) {
                tracing::warn!(
                    "cannot give {} to the state directory's owner: {e}",
                    file.display()
                );
            }
        }
    }
}

/// Hold `<db>.lock` exclusively (blocking in a worker thread).
async fn migration_lock(db: &Path) -> Result<nix::fcntl::Flock<std::fs::File>, StoreError> {
    let lock_path = db.with_extension("db.lock");
    let fail = |e: std::io::Error| StoreError::StateDir {
        path: lock_path.clone(),
        source: e,
    };
    // An existing lock file opened for reading holds a flock as well: so a
    // command that only reads works in a state directory made immutable.
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .or_else(|e| std::fs::File::open(&lock_path).map_err(|_| e))
        .map_err(fail)?;
    tokio::task::spawn_blocking(move || {
        nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
            .map_err(|(_, errno)| std::io::Error::from(errno))
    })
    .await
    .map_err(|e| fail(std::io::Error::other(e)))?
    .map_err(fail)
}

// --- drills (issue 16): `rollbackd drill` marks its rehearsal here ------

/// One `rollbackd drill`, as recorded.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Drill {
    pub id: i64,
    pub started_ms: Millis,
    pub deadline_ms: Millis,
    pub ended_ms: Option<Millis>,
    pub expect: String,
    pub notify: bool,
}

/// How long after a drill ends its aftermath (a recovery, a rollback that
/// closes late) still counts as the drill's.
pub const DRILL_AFTERMATH_MS: Millis = 120_000;

impl Store {
    /// Record the start of a drill: from now until it ends (or until
    /// `deadline_ms`, if its process dies first) notifications are withheld
    /// unless `notify`.
    pub async fn start_drill(
        &self,
        started_ms: Millis,
        deadline_ms: Millis,
        inject: &str,
        expect: &str,
        notify: bool,
    ) -> Result<i64, StoreError> {
        sqlx::query_scalar(
            "INSERT INTO drills (started_ms, deadline_ms, inject, expect, notify) VALUES (?, ?, ?, ?, ?) RETURNING id",
        )
        .bind(started_ms)
        .bind(deadline_ms)
        .bind(inject)
        .bind(expect)
        .bind(i64::from(notify))
        .fetch_one(self.db()?)
        .await
        .map_err(q("recording a drill"))
    }

    /// Record how a drill ended, and mark the incidents opened while it ran
    /// as the drill's.
    pub async fn end_drill(
        &self,
        id: i64,
        ended_ms: Millis,
        observed: &str,
        matched: bool,
    ) -> Result<(), StoreError> {
        let mut tx = self.db()?.begin().await.map_err(q("ending a drill"))?;
        sqlx::query("UPDATE drills SET ended_ms = ?, observed = ?, matched = ? WHERE id = ?")
            .bind(ended_ms)
            .bind(observed)
            .bind(i64::from(matched))
            .bind(id)
            .execute(&mut *tx)
            .await
            .map_err(q("ending a drill"))?;
        sqlx::query(
            "UPDATE incidents SET drill_id = ? WHERE drill_id IS NULL \
             AND opened_ms >= (SELECT started_ms FROM drills WHERE id = ?) AND opened_ms <= ?",
        )
        .bind(id)
        .bind(id)
        .bind(ended_ms)
        .execute(&mut *tx)
        .await
        .map_err(q("marking a drill's incidents"))?;
        tx.commit().await.map_err(q("ending a drill"))?;
        Ok(())
    }

    /// Mark one incident as a drill's (the drill does so as soon as it sees
    /// the incident open).
    pub async fn mark_drill_incident(&self, drill: i64, incident: i64) -> Result<(), StoreError> {
        sqlx::query("UPDATE incidents SET drill_id = ? WHERE id = ? AND drill_id IS NULL")
            .bind(drill)
            .bind(incident)
            .execute(self.db()?)
            .await
            .map_err(q("marking a drill's incident"))?;
        Ok(())
    }

    /// The drill a notice belongs to: one running at `at_ms` (or ended
    /// less than [`DRILL_AFTERMATH_MS`] before it), or the drill of
    /// `incident`.
    pub async fn drill_at(
        &self,
        at_ms: Millis,
        incident: Option<i64>,
    ) -> Result<Option<Drill>, StoreError> {
        let row = sqlx::query(
            "SELECT id, started_ms, deadline_ms, ended_ms, expect, notify FROM drills \
             WHERE (started_ms <= ?1 AND ?1 <= COALESCE(ended_ms, deadline_ms) + ?2) \
             OR id = (SELECT drill_id FROM incidents WHERE id = ?3) \
             ORDER BY id DESC LIMIT 1",
        )
        .bind(at_ms)
        .bind(DRILL_AFTERMATH_MS)
        .bind(incident)
        .fetch_optional(self.db()?)
        .await
        .map_err(q("reading drills"))?;
        Ok(row.map(drill_from_row))
    }

    /// Drills that overlap `[from, until)`, oldest first: their samples are
    /// not the service's availability.
    pub async fn drills_between(
        &self,
        from_ms: Millis,
        until_ms: Millis,
    ) -> Result<Vec<Drill>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, started_ms, deadline_ms, ended_ms, expect, notify FROM drills \
             WHERE started_ms < ? AND COALESCE(ended_ms, deadline_ms) >= ? ORDER BY id",
        )
        .bind(until_ms)
        .bind(from_ms)
        .fetch_all(self.db()?)
        .await
        .map_err(q("reading drills"))?;
        Ok(rows.into_iter().map(drill_from_row).collect())
    }

    /// Incidents opened at or after `since_ms`, oldest first, with the
    /// drill each belongs to.
    pub async fn incidents_since(
        &self,
        since_ms: Millis,
    ) -> Result<Vec<(Incident, Option<i64>)>, StoreError> {
        let rows: Vec<IncidentRow> = sqlx::query_as(&format!(
            "SELECT {INCIDENT_COLUMNS} FROM incidents WHERE opened_ms >= ? ORDER BY id"
        ))
        .bind(since_ms)
        .fetch_all(self.db()?)
        .await
        .map_err(q("listing incidents"))?;
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            let incident = Incident::try_from(row)?;
            let drill: Option<i64> =
                sqlx::query_scalar("SELECT drill_id FROM incidents WHERE id = ?")
                    .bind(incident.id)
                    .fetch_one(self.db()?)
                    .await
                    .map_err(q("listing incidents"))?;
            out.push((incident, drill));
        }
        Ok(out)
    }
}

fn drill_from_row(r: sqlx::sqlite::SqliteRow) -> Drill {
    Drill {
        id: r.get("id"),
        started_ms: r.get("started_ms"),
        deadline_ms: r.get("deadline_ms"),
        ended_ms: r.get("ended_ms"),
        expect: r.get("expect"),
        notify: r.get::<i64, _>("notify") != 0,
    }
}

/// (device, inode) of a file, `None` when it cannot be read.
fn file_identity(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

fn verdict_from_row(r: sqlx::sqlite::SqliteRow) -> Result<StoredVerdict, StoreError> {
    let state: String = r.get("state");
    let state = [State::Fired, State::Clear, State::Inconclusive]
        .into_iter()
        .find(|s| s.as_str() == state)
        .ok_or_else(|| StoreError::Unrecognised {
            what: "a verdict state",
            why: format!("unknown verdict state {state:?}"),
        })?;
    Ok(StoredVerdict {
        at_ms: r.get("at_ms"),
        rule: r.get("rule"),
        severity: r
            .get::<String, _>("severity")
            .parse()
            .unwrap_or(Severity::Low),
        color: r.get::<String, _>("color").parse().unwrap_or(Color::Blue),
        state,
        n: r.get("n"),
        value: r.get("value"),
        threshold: r.get("threshold"),
        window_ms: r.get("window_ms"),
        baseline: r.get("baseline"),
        detail: r.get("detail"),
    })
}

async fn insert_event(
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    id: i64,
    at_ms: Millis,
    kind: EventKind,
    message: &str,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO incident_events (incident_id, at_ms, state, message) VALUES (?, ?, ?, ?)",
    )
    .bind(id)
    .bind(at_ms)
    .bind(kind.as_str())
    .bind(message)
    .execute(&mut **tx)
    .await
    .map_err(q("recording an incident event"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Sample, SampleStatus};

    fn sample(at_ms: Millis, probe: &str, color: Color, ok: bool) -> Sample {
        Sample {
            at_ms,
            probe: probe.into(),
            color: Some(color),
            deployment: Some(1),
            ok,
            latency_ms: Some(12.5),
            status: if ok {
                SampleStatus::Ok
            } else {
                SampleStatus::Failed
            },
            detail: if ok { String::new() } else { "HTTP 503".into() },
            requests: None,
            errors: None,
        }
    }

    #[tokio::test]
    async fn samples_round_trip_in_wal_mode() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_dir(dir.path()).await.unwrap();
        let batch = vec![
            sample(1000, "healthz", Color::Blue, true),
            sample(2000, "healthz", Color::Green, false),
        ];
        store.insert_samples(&batch).await.unwrap();
        assert_eq!(store.samples(None, None, 0).await.unwrap(), batch);
        assert_eq!(
            store
                .samples(Some("healthz"), Some(Color::Green), 0)
                .await
                .unwrap(),
            vec![batch[1].clone()]
        );
        assert!(store.samples(None, None, 2001).await.unwrap().is_empty());
        let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
            .fetch_one(&store.pool)
            .await
            .unwrap();
        assert_eq!(mode, "wal");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_opens_of_a_new_database_all_succeed() {
        let dir = tempfile::tempdir().unwrap();
        let opens = (0..8).map(|_| {
            let path = dir.path().to_path_buf();
            tokio::spawn(async move { Store::open_dir(&path).await.map(|_| ()) })
        });
        for open in opens.collect::<Vec<_>>() {
            open.await
                .unwrap()
                .expect("every concurrent open migrates or finds it migrated");
        }
    }

    #[tokio::test]
    async fn files_root_creates_belong_to_the_state_dir_owner() {
        use std::os::unix::fs::MetadataExt;
        if !nix::unistd::geteuid().is_root() {
            // Only root can create files for someone else (a user namespace
            // maps one uid, so `unshare -r` cannot chown to 65534 either).
            // CI runs as root with ROLLBACKD_TEST_REQUIRE_ALL set: there a
            // skip is a failure, as for a missing system tool.
            let why = "skipped files_root_creates_belong_to_the_state_dir_owner: needs root";
            if std::env::var_os("ROLLBACKD_TEST_REQUIRE_ALL")
                .is_some_and(|v| v != "0" && !v.is_empty())
            {
                panic!("{why}, and ROLLBACKD_TEST_REQUIRE_ALL is set");
            }
            eprintln!("{why}");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        std::fs::create_dir(&state).unwrap();
        let nobody = (
            nix::unistd::Uid::from_raw(65534),
            nix::unistd::Gid::from_raw(65534),
        );
        nix::unistd::chown(&state, Some(nobody.0), Some(nobody.1)).unwrap();
        let store = Store::open_dir(&state).await.unwrap();
        for name in ["rollbackd.db", "rollbackd.db.lock"] {
            let m = std::fs::metadata(state.join(name)).unwrap();
            assert_eq!((m.uid(), m.gid()), (65534, 65534), "{name}");
        }
        store.close().await;
    }

    #[tokio::test]
    async fn only_one_rollback_can_be_in_flight() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_dir(dir.path()).await.unwrap();
        let new = NewIncident {
            at_ms: 1,
            trigger_kind: Trigger::Automatic,
            severity: Severity::Critical,
            rule: None,
            reason: "test".into(),
            evidence: "{}".into(),
            from_color: Some(Color::Blue),
            to_color: Some(Color::Green),
            from_version: None,
            to_version: None,
            in_flight: true,
            holder: None,
        };
        let first = store
            .open_incident(&new, IncidentState::Requested, "detected")
            .await
            .unwrap();
        // A second store on the same file stands for another process (the CLI).
        let other = Store::open_dir(dir.path()).await.unwrap();
        match other
            .open_incident(&new, IncidentState::Requested, "detected")
            .await
        {
            Err(StoreError::RollbackInFlight(id)) => assert_eq!(id, first),
            other => panic!("expected RollbackInFlight, got {other:?}"),
        }
        store
            .close_incident(first, 5, IncidentState::Verified, "rolled back", Some(4))
            .await
            .unwrap();
        let second = other
            .open_incident(&new, IncidentState::Requested, "detected")
            .await
            .unwrap();
        assert!(second > first);
        let events = store.incident_events(first).await.unwrap();
        assert_eq!(
            events.iter().map(|e| e.state).collect::<Vec<_>>(),
            [IncidentState::Requested, IncidentState::Verified].map(EventKind::from)
        );
    }

    #[tokio::test]
    async fn pauses_expire_and_resume() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_dir(dir.path()).await.unwrap();
        store.pause(100, 200, "maintenance").await.unwrap();
        assert_eq!(
            store.active_pause(150).await.unwrap().unwrap().reason,
            "maintenance"
        );
        assert!(
            store.active_pause(200).await.unwrap().is_none(),
            "a hold always expires"
        );
        assert_eq!(store.resume(150).await.unwrap(), 1);
        assert!(store.active_pause(160).await.unwrap().is_none());
    }
}
