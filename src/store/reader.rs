//! The store of a command that only reads (`status`, `incidents`,
//! `incident show`, `samples`, `report`, `replay`): this host's journal, or, with
//! `[daemon] database`, this host's rows in the shared database, the
//! fleet's store of record (SPEC section 7, docs/fleet.md "One store, two
//! backends"). The read verbs choose their query by [`Store::reads_shared`];
//! the rest of the code calls the same verbs either way (`status` only
//! says which backend answered).

use std::path::Path;

use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions};

use super::{Store, StoreError, q, shared};

impl Store {
    /// The store of a command that only reads, with a shared database:
    /// its read verbs (what `status`, `incidents`, `incident show`,
    /// `samples`, `report` and `replay` call) run on this host's rows of
    /// this service in `db`, the fleet's store of record, so they answer
    /// when this host's journal is gone. The journal is opened read-only
    /// when it is there (its path and size are shown); when it is not, a
    /// verb that only the journal answers fails naming it.
    pub async fn open_shared_reads(state_dir: &Path, db: shared::Shared) -> Store {
        let journal = Store::open_read_only(state_dir).await.ok();
        Store::with_shared_reads(journal, state_dir, db)
    }

    fn with_shared_reads(journal: Option<Store>, state_dir: &Path, db: shared::Shared) -> Store {
        let mut store = journal.unwrap_or_else(|| {
            let path = state_dir.join("rollbackd.db");
            let options = SqliteConnectOptions::new()
                .filename(&path)
                .read_only(true)
                .create_if_missing(false);
            Store {
                pool: SqlitePoolOptions::new()
                    .max_connections(1)
                    .connect_lazy_with(options),
                identity: None,
                path,
                kept: Default::default(),
                last: Default::default(),
                mapped_writable: false,
                series: Default::default(),
                shared: None,
                reads: None,
            }
        });
        store.reads = Some(db);
        store
    }

    /// The store of a command that only reads (`status`, `incidents`,
    /// `incident show`, `samples`, `report`, `replay`). Without `shared`,
    /// this host's journal. With it, the shared database, the fleet's store
    /// of record ([`Store::open_shared_reads`]), unless it cannot answer
    /// for this host: unreachable, a schema older than this binary, or
    /// this host's journal holding rows it does not (its newest records'
    /// ids are ahead, or its daemon's last heartbeat says rows wait in the
    /// mirror or were dropped). Then the journal, with a note saying why
    /// for the operator. Without a journal on this machine, the shared
    /// database as it is (with a note when its host says it is behind).
    pub async fn open_reader(
        state_dir: &Path,
        shared: Option<shared::Shared>,
    ) -> Result<(Store, Option<String>), StoreError> {
        let Some(db) = shared else {
            return Ok((Store::open_read_only(state_dir).await?, None));
        };
        let journal = Store::open_read_only(state_dir).await;
        let why = match db.holds_whole_journals().await {
            Err(e) => format!("the shared database cannot be read ({e})"),
            Ok(false) => "the shared database's schema is older than this rollbackd (a daemon of this version migrates it)".to_owned(),
            Ok(true) => {
                let Ok(local) = &journal else {
                    let note = match db.own_gap().await {
                        Ok((waiting, dropped)) if waiting > 0 || dropped > 0 => Some(format!(
                            "this host's last heartbeat says {waiting} rows wait for the shared database and {dropped} were dropped or set aside, and its journal is not on this machine: reading the shared database as it is"
                        )),
                        _ => None,
                    };
                    return Ok((Store::with_shared_reads(None, state_dir, db), note));
                };
                match local.ahead_of(&db).await {
                    Err(e) => format!(
                        "this host's journal and the shared database could not be compared ({e})"
                    ),
                    Ok(Some(why)) => why,
                    Ok(None) => {
                        return Ok((Store::with_shared_reads(journal.ok(), state_dir, db), None));
                    }
                }
            }
        };
        db.close().await;
        Ok((
            journal?,
            Some(format!("{why}: reading this host's journal")),
        ))
    }

    /// Why the shared database cannot answer for this host as its journal
    /// does, if it cannot: the journal's newest records are ahead of what
    /// it holds (a command's rows it could not take), or this host's daemon
    /// said in its last heartbeat that rows wait or were dropped.
    async fn ahead_of(&self, db: &shared::Shared) -> Result<Option<String>, StoreError> {
        let (waiting, dropped) = db.own_gap().await?;
        if waiting > 0 || dropped > 0 {
            return Ok(Some(format!(
                "this host's journal holds rows the shared database does not yet ({waiting} waiting, {dropped} dropped or set aside)"
            )));
        }
        let theirs = db.own_marks().await?;
        let mine = self.marks().await?;
        let ahead: Vec<String> = MARKED
            .iter()
            .zip(mine.iter().zip(theirs.iter()))
            .filter(|(_, (m, t))| m > t)
            .map(|(table, (m, t))| format!("{table} up to #{m}, it has #{t}"))
            .collect();
        Ok((!ahead.is_empty()).then(|| {
            format!(
                "this host's journal holds rows the shared database does not ({})",
                ahead.join("; ")
            )
        }))
    }

    /// The newest id of each of [`MARKED`] in the journal (0: none).
    async fn marks(&self) -> Result<Vec<i64>, StoreError> {
        let mut out = Vec::with_capacity(MARKED.len());
        for table in MARKED {
            out.push(
                sqlx::query_scalar(&format!("SELECT COALESCE(MAX(id), 0) FROM {table}"))
                    .fetch_one(self.db()?)
                    .await
                    .map_err(q("reading the journal's newest ids"))?,
            );
        }
        Ok(out)
    }
}

/// The record tables whose newest ids tell a journal ahead of the shared
/// database (named alike in both).
pub(super) const MARKED: [&str; 6] = [
    "deployments",
    "incidents",
    "incident_events",
    "pauses",
    "verdicts",
    "drills",
];
