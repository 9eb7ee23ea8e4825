//! The store of a command that only reads (`status`, `incidents`,
//! `incident show`, `samples`, `report`, `replay`): this host's journal, or, with
//! `[daemon] database`, this host's rows in the shared database, the
//! fleet's store of record (SPEC section 7, docs/fleet.md "One store, two
//! backends"). The read verbs choose their query by [`Store::reads_shared`];
//! the rest of the code calls the same verbs either way (`status` only
//! says which backend answered).

use std::path::Path;

use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions};

use super::{Store, StoreError, shared};

impl Store {
    /// The store of a command that only reads, with a shared database:
    /// its read verbs (what `status`, `incidents`, `incident show`,
    /// `samples`, `report` and `replay` call) run on this host's rows of this service
    /// in `db`, the fleet's store of record, so they answer when this
    /// host's journal is gone. The journal is opened read-only when it is
    /// there (its path and size are shown); when it is not, a verb that
    /// only the journal answers fails naming it.
    pub async fn open_shared_reads(state_dir: &Path, db: shared::Shared) -> Store {
        let mut store = match Store::open_read_only(state_dir).await {
            Ok(store) => store,
            Err(_) => {
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
            }
        };
        store.reads = Some(db);
        store
    }

    /// The store of a command that only reads (`status`, `incidents`,
    /// `incident show`, `samples`, `report`, `replay`). Without `shared`, this
    /// host's journal. With it, the shared database, the fleet's store of
    /// record ([`Store::open_shared_reads`]), unless it cannot answer for
    /// this host: unreachable, a schema older than this binary, or this
    /// host's journal holding rows it does not (its mirror's backlog, or
    /// rows dropped while it was away). Then the journal, with a note
    /// saying why for the operator.
    pub async fn open_reader(
        state_dir: &Path,
        shared: Option<shared::Shared>,
    ) -> Result<(Store, Option<String>), StoreError> {
        let Some(db) = shared else {
            return Ok((Store::open_read_only(state_dir).await?, None));
        };
        let why = match db.holds_whole_journals().await {
            Err(e) => format!("the shared database cannot be read ({e})"),
            Ok(false) => "the shared database's schema is older than this rollbackd (a daemon of this version migrates it)".to_owned(),
            Ok(true) => match db.own_gap().await {
                Err(e) => format!("the shared database cannot be read ({e})"),
                Ok((waiting, dropped)) if waiting > 0 || dropped > 0 => {
                    let gap = format!(
                        "this host's journal holds rows the shared database does not yet ({waiting} waiting, {dropped} dropped or set aside)"
                    );
                    if !state_dir.join("rollbackd.db").exists() {
                        let note = format!("{gap}, and it is not on this machine: reading the shared database as it is");
                        return Ok((Store::open_shared_reads(state_dir, db).await, Some(note)));
                    }
                    gap
                }
                Ok(_) => return Ok((Store::open_shared_reads(state_dir, db).await, None)),
            },
        };
        db.close().await;
        let store = Store::open_read_only(state_dir).await?;
        Ok((store, Some(format!("{why}: reading this host's journal"))))
    }
}
