//! The database boundary: the only module that speaks SQL.
//!
//! SQLite in WAL mode under `state_dir`, migrations embedded with
//! `sqlx::migrate!` and run on open. Verbs are plain (`insert_samples`,
//! `open_incident`, ...) and errors carry what was being done. Times are
//! [`Millis`]. Callers never see a row type or a query string.

use std::path::{Path, PathBuf};
use std::time::Duration;

use sqlx::SqlitePool;
use sqlx::sqlite::{
    SqliteAutoVacuum, SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous,
};

use crate::model::Millis;

mod deployments;
mod incidents;
mod kept;
mod pauses;
mod reader;
mod restore;
mod retention;
mod samples;
pub mod shared;
mod verdicts;
pub use deployments::Deployment;
pub use incidents::{Incident, IncidentEvent, NewIncident};
pub use kept::KEPT_BUSY;
pub use pauses::{DRILL_AFTERMATH_MS, Drill, Pause};
pub use restore::Restored;
pub use retention::{CompactReport, RetentionReport, Rollup};
use retention::{MINUTE_MS, MinuteStats};
pub use samples::{PAGE, SamplePages};
pub use verdicts::StoredVerdict;

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
    /// The shared PostgreSQL (its URL is never part of the words).
    #[error("shared database: {doing}: {why}")]
    Shared { doing: &'static str, why: String },
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
    /// The fleet's shared PostgreSQL, when `[daemon] database` names one:
    /// what this store writes is mirrored there (`shared/ship.rs`).
    shared: Option<SharedLink>,
    /// Set for a read command with `[daemon] database`: the read verbs
    /// those commands call run on this host's rows in the shared database
    /// instead of the journal (SPEC section 7, `reader.rs`).
    reads: Option<shared::Shared>,
}

/// The shared database as a daemon's store holds it.
#[derive(Clone, Debug)]
struct SharedLink {
    db: shared::Shared,
    mirror: shared::ship::Mirror,
    leadership: tokio::sync::watch::Receiver<shared::leader::Leadership>,
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
    /// The write transaction, begun with `BEGIN IMMEDIATE`: the write lock
    /// is taken (or waited for, up to `busy`) before anything is read.
    async fn begin(
        &mut self,
        doing: &'static str,
    ) -> Result<sqlx::Transaction<'_, sqlx::Sqlite>, StoreError> {
        use sqlx::Connection as _;
        (*self.conn)
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(q(doing))
    }

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
/// How long a write waits for another connection's write lock.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

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
            shared: None,
            reads: None,
        })
    }

    /// The shared database the read verbs run on, when they do.
    pub fn reads_shared(&self) -> Option<&shared::Shared> {
        self.reads.as_ref()
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
            // No ping (a round trip to the connection's thread) per query.
            .test_before_acquire(false)
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
            shared: None,
            reads: None,
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

    /// A connection for one write transaction ([`Writing::begin`]), with
    /// `busy` as its busy timeout.
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
    /// Mirror everything this store writes into the fleet's shared
    /// database, and take part in its leader election; spawns the shipper
    /// and the lock's task (a daemon only). The database may be down: the
    /// mirror holds rows until it answers.
    pub fn attach_shared(&mut self, db: shared::Shared) {
        let mirror = shared::ship::Mirror::default();
        // Every deployment once, as the journal has it: rows an older
        // version shipped get their quarantine marks (a few rows).
        mirror.push(shared::ship::Item::DeploymentsOf(None));
        let (tx, leadership) = tokio::sync::watch::channel(shared::leader::Leadership::Follower);
        tokio::spawn(shared::leader::run(db.clone(), tx));
        let mut local = self.clone();
        local.shared = None;
        local.reads = None;
        tokio::spawn(
            shared::ship::Shipper {
                mirror: mirror.clone(),
                shared: db.clone(),
                local,
                beats: true,
            }
            .run(),
        );
        self.shared = Some(SharedLink {
            db,
            mirror,
            leadership,
        });
    }

    /// A command's store (`rollback`, `deploy`, `pause`): what it writes is
    /// mirrored into the fleet's shared database when the command ends
    /// (`shared::ship::drain_commands`), and it takes no part in leading.
    pub fn attach_shared_for_command(&mut self, db: shared::Shared) {
        let mirror = shared::ship::Mirror::default();
        let mut local = self.clone();
        local.shared = None;
        local.reads = None;
        shared::ship::register_command(shared::ship::Shipper {
            mirror: mirror.clone(),
            shared: db.clone(),
            local,
            beats: false,
        });
        let (_, leadership) = tokio::sync::watch::channel(shared::leader::Leadership::Alone);
        self.shared = Some(SharedLink {
            db,
            mirror,
            leadership,
        });
    }

    /// The shared database, when one is attached.
    pub fn shared(&self) -> Option<&shared::Shared> {
        self.shared.as_ref().map(|l| &l.db)
    }

    /// Who may switch this service: [`Leadership::Alone`] without a shared
    /// database.
    ///
    /// [`Leadership::Alone`]: shared::leader::Leadership::Alone
    pub fn leadership(&self) -> shared::leader::Leadership {
        self.shared
            .as_ref()
            .map_or(shared::leader::Leadership::Alone, |l| {
                *l.leadership.borrow()
            })
    }

    /// The mirror's state (backlog, drops, the database's health), when a
    /// shared database is attached.
    pub fn mirror(&self) -> Option<&shared::ship::Mirror> {
        self.shared.as_ref().map(|l| &l.mirror)
    }

    /// Queue a record for the shared database (nothing without one).
    fn mirror_item(&self, item: shared::ship::Item) {
        if let Some(l) = &self.shared {
            l.mirror.push(item);
        }
    }

    /// Write what the mirror holds, within `within` (a stopping daemon).
    /// Returns the rows left unwritten.
    pub async fn drain_shared(&self, within: Duration) -> usize {
        let Some(l) = &self.shared else {
            return 0;
        };
        let mut local = self.clone();
        local.shared = None;
        local.reads = None;
        shared::ship::Shipper {
            mirror: l.mirror.clone(),
            shared: l.db.clone(),
            local,
            beats: true,
        }
        .drain(within)
        .await
    }

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

/// (device, inode) of a file, `None` when it cannot be read.
fn file_identity(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Sample;
    use crate::model::{Color, EventKind, IncidentState, Severity, Trigger};

    fn sample(at_ms: Millis, probe: &str, color: Color, ok: bool) -> Sample {
        Sample {
            deployment: Some(1),
            detail: if ok { String::new() } else { "HTTP 503".into() },
            ..Sample::answer(at_ms, probe, Some(color), ok, 12.5)
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

    /// A daemon holds a pause for its length on the monotonic clock
    /// (`Guards::learn_pause`, reading every pause not resumed): after the
    /// wall clock stepped forward past the pause's end, the daemon still
    /// holds it, and `resume` must end it all the same, or nothing could.
    #[tokio::test]
    async fn resume_ends_a_pause_the_wall_clock_says_ran_out() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_dir(dir.path()).await.unwrap();
        store.pause(100, 200, "maintenance").await.unwrap();
        // What the daemon reads: still there, whatever the wall clock says.
        assert!(store.active_pause(Millis::MIN).await.unwrap().is_some());
        // The clock stepped: at 10_000 nothing is in force by it...
        assert_eq!(store.resume(10_000).await.unwrap(), 0);
        // ...and yet the hold the daemon keeps is ended.
        assert!(store.active_pause(Millis::MIN).await.unwrap().is_none());
    }
}
