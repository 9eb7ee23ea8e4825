//! The fleet's shared PostgreSQL (SPEC section 7): the second backend, and
//! with `store/*.rs` the only code that speaks SQL.
//!
//! Each daemon keeps its local SQLite file as its journal: every decision,
//! switch and crash recovery reads and writes there, so protection never
//! waits on a network database. With `[daemon] database`, the store also
//! mirrors what it writes (samples, incidents with their timelines,
//! deployments, quarantines, a heartbeat) into PostgreSQL, every row tagged with host and service,
//! through a bounded queue ([`ship`]) that survives the database's absence
//! and catches up when it returns. What only the shared database can say
//! (a version quarantined on another host, the fleet, incidents of every
//! host, who leads a service) is read from it here. [`leader`] holds the
//! one-switcher-per-service advisory lock on a connection of its own.
//!
//! Migrations live in `migrations-pg/`, embedded and run on open; sqlx
//! takes PostgreSQL's advisory lock around them, so hosts starting together
//! migrate once.

use std::str::FromStr;
use std::time::Duration;

use serde::Serialize;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};

use super::{Deployment, StoreError};
use crate::config::secret::Secret;
use crate::model::{Millis, Sample};

pub mod leader;
mod own;
pub mod ship;
pub use own::History;
mod timeline;

/// A sample's columns in the shared database, as [`SampleRow`].
const SAMPLE_COLUMNS: &str = "host, at_ms, probe, color, ok, latency_ms, status, detail, \
     requests, errors, deployment";

type SampleRow = (
    String,
    i64,
    String,
    Option<String>,
    bool,
    Option<f64>,
    String,
    String,
    Option<f64>,
    Option<f64>,
    Option<i64>,
);

/// A shared sample's row as the store's type (a word this build does not
/// know is an error naming it).
fn host_sample(r: SampleRow) -> Result<HostSample, StoreError> {
    let bad = |what: &'static str, why: String| StoreError::Unrecognised { what, why };
    Ok(HostSample {
        host: r.0,
        sample: Sample {
            at_ms: r.1,
            probe: r.2,
            color: r
                .3
                .as_deref()
                .map(str::parse)
                .transpose()
                .map_err(|e: String| bad("a color", e))?,
            deployment: r.10,
            ok: r.4,
            latency_ms: r.5,
            status: r.6.parse().map_err(|e: String| bad("a sample status", e))?,
            detail: r.7,
            requests: r.8,
            errors: r.9,
        },
    })
}

/// The most samples `--all-hosts` and another host's incident chart read.
const ALL_HOSTS_SAMPLES: i64 = 100_000;

/// How long one statement may take before the database counts as lost.
pub(crate) const STATEMENT_TIMEOUT: Duration = Duration::from_secs(3);

/// Old samples are deleted from the shared database this many at a time,
/// and at most [`PRUNE_ROWS`] in one maintenance pass.
pub const PRUNE_CHUNK: i64 = 10_000;
/// A pass's bound: 1,000 probes a second on both colors write 1.2 M rows
/// in the 10 minutes between passes, so a busy host keeps up, and a
/// backlog (retention shortened, a database moved in) goes over a few.
pub const PRUNE_ROWS: u64 = 2_000_000;

/// The advisory-lock class of rollbackd's per-service leader locks (the
/// other key is `hashtext(service)`).
const LEADER_LOCK_CLASS: i32 = 0x7262_6b64; // "rbkd"

/// A connection pool to the shared database, and who this daemon is in it.
#[derive(Clone)]
pub struct Shared {
    pool: PgPool,
    options: PgConnectOptions,
    host: String,
    service: String,
}

impl std::fmt::Debug for Shared {
    /// The URL (and its password) never leaves: host and service only.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("host", &self.host)
            .field("service", &self.service)
            .finish_non_exhaustive()
    }
}

/// The heartbeat a daemon publishes about itself, once a second.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Beat {
    pub started_ms: Millis,
    pub interval_ms: Millis,
    pub active_color: Option<String>,
    pub active_version: Option<String>,
    /// The worst current verdict on the active color: its state word
    /// (`fired`, `inconclusive`, `clear`) and rule.
    pub worst_state: Option<String>,
    pub worst_rule: Option<String>,
    pub open_incidents: i64,
    pub last_sample_ms: Option<Millis>,
    pub leader: bool,
    /// Every rule's current verdict on the active color.
    pub verdicts: Vec<HostVerdict>,
}

/// One rule's current verdict as a host's heartbeat carries it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, serde::Deserialize)]
pub struct HostVerdict {
    pub rule: String,
    pub severity: String,
    /// `fired`, `inconclusive` or `clear`.
    pub state: String,
    pub value: Option<f64>,
    pub detail: String,
}

/// One daemon as `rollbackd fleet` shows it.
#[derive(Clone, Debug, Serialize)]
pub struct FleetHost {
    pub host: String,
    pub service: String,
    pub seen_ms: Millis,
    pub interval_ms: Millis,
    pub active_color: Option<String>,
    pub active_version: Option<String>,
    pub worst_state: Option<String>,
    pub worst_rule: Option<String>,
    pub open_incidents: i64,
    pub last_sample_ms: Option<Millis>,
    pub leader: bool,
    /// Rows this host holds for the database and has not written yet, and
    /// rows it had to drop (as its last heartbeat said).
    pub backlog: i64,
    pub dropped: i64,
    /// Its current verdicts on its active color, as its last heartbeat
    /// said (a follower decides too).
    pub verdicts: Vec<HostVerdict>,
}

impl FleetHost {
    /// Silent: no heartbeat for more than 3 of its probe intervals (and
    /// never less than 3 s, the heartbeat's own pace).
    pub fn silent_at(&self, now_ms: Millis) -> bool {
        now_ms - self.seen_ms > (3 * self.interval_ms).max(3_000)
    }
}

/// A version quarantined for a service, and where it was rolled back.
#[derive(Clone, Debug, Serialize)]
pub struct Quarantine {
    pub service: String,
    pub version: String,
    pub host: String,
    pub incident: Option<i64>,
    pub at_ms: Millis,
}

/// An incident as the shared database holds it, with its host.
#[derive(Clone, Debug, Serialize)]
pub struct HostIncident {
    pub host: String,
    pub service: String,
    pub id: i64,
    pub opened_ms: Millis,
    pub closed_ms: Option<Millis>,
    pub trigger_kind: String,
    pub severity: String,
    pub rule: Option<String>,
    pub reason: String,
    pub from_color: Option<String>,
    pub to_color: Option<String>,
    pub from_version: Option<String>,
    pub to_version: Option<String>,
    pub state: String,
    pub outcome: Option<String>,
    pub in_flight: bool,
}

/// A sample as the shared database holds it, with its host.
#[derive(Clone, Debug, Serialize)]
pub struct HostSample {
    pub host: String,
    #[serde(flatten)]
    pub sample: Sample,
}

/// Text as PostgreSQL can hold it: its `text` refuses a NUL character,
/// which a probe's output (an exec check printing binary, a log line) or
/// a switch command's can carry. The mirror writes in order, so one row
/// refused for it would hold back every row behind it, forever: the NUL
/// goes as U+FFFD instead. The local journal keeps the text as it was.
pub(super) fn pg_text(s: &str) -> std::borrow::Cow<'_, str> {
    if s.contains('\0') {
        std::borrow::Cow::Owned(s.replace('\0', "\u{fffd}"))
    } else {
        std::borrow::Cow::Borrowed(s)
    }
}

/// [`pg_text`] of an optional text.
pub(super) fn pg_opt(s: &Option<String>) -> Option<std::borrow::Cow<'_, str>> {
    s.as_deref().map(pg_text)
}

fn pq(doing: &'static str) -> impl FnOnce(sqlx::Error) -> StoreError {
    move |source| StoreError::Shared {
        doing,
        why: shared_words(&source),
    }
}

/// An error from PostgreSQL in words that never carry the URL.
fn shared_words(e: &sqlx::Error) -> String {
    match e {
        sqlx::Error::Database(d) => d.message().to_owned(),
        sqlx::Error::Io(io) => io.to_string(),
        sqlx::Error::PoolTimedOut => "timed out waiting for a connection".to_owned(),
        sqlx::Error::PoolClosed => "the connection pool is closed".to_owned(),
        sqlx::Error::Tls(_) => "TLS error".to_owned(),
        sqlx::Error::Configuration(_) => "the database URL is not valid".to_owned(),
        sqlx::Error::Protocol(p) => format!("protocol error: {p}"),
        other => {
            // sqlx's own words for the rest name no URL; cut to a line.
            let words = other.to_string();
            words.lines().next().unwrap_or_default().to_owned()
        }
    }
}

/// The URL's options (the secret is read here, and never printed), with
/// this host's name for `pg_stat_activity`.
fn connect_options(url: &Secret, host: &str) -> Result<PgConnectOptions, StoreError> {
    let raw = url.expose().map_err(|why| StoreError::Shared {
        doing: "reading the database URL",
        why: why.to_owned(),
    })?;
    Ok(PgConnectOptions::from_str(raw)
        .map_err(|_| StoreError::Shared {
            doing: "reading the database URL",
            why: format!("{url} does not hold a valid postgres:// URL"),
        })?
        .application_name(&format!("rollbackd {host}"))
        // The server drops a session whose host went silent within a few
        // seconds (not the kernel's two hours): what lets a leader's lock
        // go when its network does.
        .options([
            ("tcp_keepalives_idle", "1"),
            ("tcp_keepalives_interval", "1"),
            ("tcp_keepalives_count", "2"),
            ("statement_timeout", "5000"),
        ]))
}

fn pool_options() -> PgPoolOptions {
    PgPoolOptions::new()
        .max_connections(4)
        .min_connections(0)
        .acquire_timeout(STATEMENT_TIMEOUT)
        .idle_timeout(Duration::from_secs(60))
}

impl Shared {
    /// Connect to the database `url` names (a secret: its value is never
    /// printed) and bring its schema up to date.
    pub async fn connect(url: &Secret, host: &str, service: &str) -> Result<Shared, StoreError> {
        let shared = Shared::connect_only(url, host, service).await?;
        shared.migrate().await?;
        Ok(shared)
    }

    /// Connect without migrating (a read-only command: it never changes
    /// the schema).
    pub async fn connect_only(
        url: &Secret,
        host: &str,
        service: &str,
    ) -> Result<Shared, StoreError> {
        let options = connect_options(url, host)?;
        let pool = pool_options()
            .connect_with(options.clone())
            .await
            .map_err(pq("connecting to the shared database"))?;
        Ok(Shared {
            pool,
            options,
            host: pg_text(host).into_owned(),
            service: pg_text(service).into_owned(),
        })
    }

    /// A pool that connects when first used: the daemon starts, and
    /// protects, while the database is down.
    pub fn connect_lazy(url: &Secret, host: &str, service: &str) -> Result<Shared, StoreError> {
        let options = connect_options(url, host)?;
        Ok(Shared {
            pool: pool_options().connect_lazy_with(options.clone()),
            options,
            host: pg_text(host).into_owned(),
            service: pg_text(service).into_owned(),
        })
    }

    /// Run the embedded migrations (serialized across hosts by sqlx's
    /// advisory lock). A schema already up to date is left alone without
    /// asking for more than `SELECT` on `_sqlx_migrations`: the daemons'
    /// role needs no `CREATE` on the schema once the owner's role migrated
    /// it (docs/fleet.md).
    pub async fn migrate(&self) -> Result<(), StoreError> {
        let migrator = sqlx::migrate!("./migrations-pg");
        let applied: Result<Vec<i64>, sqlx::Error> =
            sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success")
                .fetch_all(&self.pool)
                .await;
        if let Ok(applied) = applied {
            if migrator.iter().all(|m| applied.contains(&m.version)) {
                return Ok(());
            }
        }
        // On a connection of its own: sqlx leaves its advisory lock held
        // when a migration fails (a role without CREATE, say), so a failed
        // run closes its session, letting the lock go for the role that
        // may migrate.
        let mut conn = self
            .pool
            .acquire()
            .await
            .map_err(pq("migrating the shared database"))?;
        match migrator.run_direct(&mut *conn).await {
            Ok(()) => Ok(()),
            Err(e) => {
                use sqlx::Connection;
                let _ = conn.detach().close().await;
                Err(StoreError::Shared {
                    doing: "migrating the shared database",
                    why: match &e {
                        sqlx::migrate::MigrateError::Execute(s) => shared_words(s),
                        other => other.to_string(),
                    },
                })
            }
        }
    }

    pub fn host(&self) -> &str {
        &self.host
    }

    pub fn service(&self) -> &str {
        &self.service
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// Publish this daemon's heartbeat (and what it holds unwritten).
    pub async fn beat(&self, b: &Beat, backlog: i64, dropped: i64) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO hosts (host, service, started_ms, seen_ms, interval_ms, active_color, \
             active_version, worst_state, worst_rule, open_incidents, last_sample_ms, leader, \
             backlog, dropped, verdicts) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15) \
             ON CONFLICT (service, host) DO UPDATE SET started_ms = $3, seen_ms = $4, \
             interval_ms = $5, active_color = $6, active_version = $7, worst_state = $8, \
             worst_rule = $9, open_incidents = $10, last_sample_ms = $11, leader = $12, \
             backlog = $13, dropped = $14, verdicts = $15",
        )
        .bind(&self.host)
        .bind(&self.service)
        .bind(b.started_ms)
        .bind(crate::model::now_ms())
        .bind(b.interval_ms)
        .bind(&b.active_color)
        .bind(pg_opt(&b.active_version))
        .bind(&b.worst_state)
        .bind(pg_opt(&b.worst_rule))
        .bind(i32::try_from(b.open_incidents).unwrap_or(i32::MAX))
        .bind(b.last_sample_ms)
        .bind(b.leader)
        .bind(backlog)
        .bind(dropped)
        .bind(serde_json::to_string(&b.verdicts).unwrap_or_else(|_| "[]".to_owned()))
        .execute(&self.pool)
        .await
        .map_err(pq("publishing the heartbeat"))?;
        if b.leader {
            // The lock is one holder's: a row left saying otherwise by a
            // leader whose session ended (killed, cut off) is out of date.
            sqlx::query(
                "UPDATE hosts SET leader = FALSE WHERE service = $1 AND host <> $2 AND leader",
            )
            .bind(&self.service)
            .bind(&self.host)
            .execute(&self.pool)
            .await
            .map_err(pq("publishing the heartbeat"))?;
        }
        Ok(())
    }

    /// Write samples in one statement (arrays unnested by the server).
    pub async fn put_samples(&self, samples: &[Sample]) -> Result<(), StoreError> {
        if samples.is_empty() {
            return Ok(());
        }
        let at: Vec<i64> = samples.iter().map(|s| s.at_ms).collect();
        let probe: Vec<_> = samples.iter().map(|s| pg_text(&s.probe)).collect();
        let color: Vec<Option<&str>> = samples
            .iter()
            .map(|s| s.color.map(|c| c.as_str()))
            .collect();
        let ok: Vec<bool> = samples.iter().map(|s| s.ok).collect();
        let latency: Vec<Option<f64>> = samples
            .iter()
            .map(|s| crate::store::samples::stored_latency(s.latency_ms))
            .collect();
        let status: Vec<&str> = samples.iter().map(|s| s.status.as_str()).collect();
        let detail: Vec<_> = samples.iter().map(|s| pg_text(&s.detail)).collect();
        let requests: Vec<Option<f64>> = samples.iter().map(|s| s.requests).collect();
        let errors: Vec<Option<f64>> = samples.iter().map(|s| s.errors).collect();
        let deployment: Vec<Option<i64>> = samples.iter().map(|s| s.deployment).collect();
        sqlx::query(
            "INSERT INTO samples (host, service, at_ms, probe, color, ok, latency_ms, status, \
             detail, requests, errors, deployment) \
             SELECT $1, $2, * FROM UNNEST($3::bigint[], $4::text[], $5::text[], $6::bool[], \
             $7::float8[], $8::text[], $9::text[], $10::float8[], $11::float8[], $12::bigint[])",
        )
        .bind(&self.host)
        .bind(&self.service)
        .bind(at)
        .bind(probe)
        .bind(color)
        .bind(ok)
        .bind(latency)
        .bind(status)
        .bind(detail)
        .bind(requests)
        .bind(errors)
        .bind(deployment)
        .execute(&self.pool)
        .await
        .map_err(pq("writing samples"))?;
        Ok(())
    }

    /// Delete this host's samples of its service taken before `before_ms`
    /// (`[daemon] retention`, as the local journal keeps them), at most
    /// [`PRUNE_ROWS`] in [`PRUNE_CHUNK`]s: a backlog of months goes over a
    /// few passes, no statement runs long, and other hosts' rows are theirs
    /// to prune. Roll-ups stay in each host's journal. Returns how many
    /// went; the daemons' role needs `DELETE` on `samples` (docs/fleet.md).
    pub async fn prune_samples(&self, before_ms: Millis) -> Result<u64, StoreError> {
        let mut deleted = 0;
        while deleted < PRUNE_ROWS {
            let done = sqlx::query(
                "DELETE FROM samples WHERE ctid = ANY(ARRAY(SELECT ctid FROM samples \
                 WHERE service = $1 AND host = $2 AND at_ms < $3 LIMIT $4))",
            )
            .bind(&self.service)
            .bind(&self.host)
            .bind(before_ms)
            .bind(PRUNE_CHUNK)
            .execute(&self.pool)
            .await
            .map_err(pq("deleting old samples"))?;
            deleted += done.rows_affected();
            if done.rows_affected() < PRUNE_CHUNK as u64 {
                break;
            }
        }
        Ok(deleted)
    }

    /// One deployment of this host's journal with its quarantine mark,
    /// keyed by its id there (written over one an earlier journal of this
    /// host gave the same id: the journal says).
    pub async fn put_deployment(&self, d: &Deployment) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO deployments (host, service, id, color, version, at_ms, source, quarantined) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (service, host, id) \
             DO UPDATE SET color = $4, version = $5, at_ms = $6, source = $7, quarantined = $8",
        )
        .bind(&self.host)
        .bind(&self.service)
        .bind(d.id)
        .bind(d.color.as_str())
        .bind(pg_text(&d.version))
        .bind(d.at_ms)
        .bind(pg_text(&d.source))
        .bind(d.quarantined)
        .execute(&self.pool)
        .await
        .map_err(pq("writing a deployment"))?;
        Ok(())
    }

    /// Quarantine `version` for this service on every host (a standing
    /// quarantine is kept as it was: the first rollback names it).
    pub async fn quarantine(
        &self,
        version: &str,
        incident: Option<i64>,
        at_ms: Millis,
    ) -> Result<(), StoreError> {
        if matches!(version, "" | "unknown") {
            return Ok(());
        }
        sqlx::query(
            "INSERT INTO quarantine (service, version, host, incident, at_ms) \
             VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (service, version) WHERE lifted_ms IS NULL DO NOTHING",
        )
        .bind(&self.service)
        .bind(pg_text(version))
        .bind(&self.host)
        .bind(incident)
        .bind(at_ms)
        .execute(&self.pool)
        .await
        .map_err(pq("quarantining a version"))?;
        Ok(())
    }

    /// The standing quarantine of `version` for this service, if any.
    pub async fn quarantined(&self, version: &str) -> Result<Option<Quarantine>, StoreError> {
        let row: Option<(String, String, String, Option<i64>, i64)> = sqlx::query_as(
            "SELECT service, version, host, incident, at_ms FROM quarantine \
             WHERE service = $1 AND version = $2 AND lifted_ms IS NULL",
        )
        .bind(&self.service)
        .bind(pg_text(version))
        .fetch_optional(&self.pool)
        .await
        .map_err(pq("reading the quarantine"))?;
        Ok(
            row.map(|(service, version, host, incident, at_ms)| Quarantine {
                service,
                version,
                host,
                incident,
                at_ms,
            }),
        )
    }

    /// Lift the standing quarantine of `version` (recorded with `by`, who
    /// lifted it: `user@host`, and the reason). `Ok(None)` when none stands.
    pub async fn lift_quarantine(
        &self,
        version: &str,
        by: &str,
        reason: &str,
        at_ms: Millis,
    ) -> Result<Option<Quarantine>, StoreError> {
        let row: Option<(String, String, String, Option<i64>, i64)> = sqlx::query_as(
            "UPDATE quarantine SET lifted_ms = $3, lifted_by = $4, lift_reason = $5 \
             WHERE service = $1 AND version = $2 AND lifted_ms IS NULL \
             RETURNING service, version, host, incident, at_ms",
        )
        .bind(&self.service)
        .bind(pg_text(version))
        .bind(at_ms)
        .bind(pg_text(by))
        .bind(pg_text(reason))
        .fetch_optional(&self.pool)
        .await
        .map_err(pq("lifting a quarantine"))?;
        Ok(
            row.map(|(service, version, host, incident, at_ms)| Quarantine {
                service,
                version,
                host,
                incident,
                at_ms,
            }),
        )
    }

    /// Every daemon of every service, by service then host.
    pub async fn fleet(&self) -> Result<Vec<FleetHost>, StoreError> {
        type Row = (
            String,
            String,
            i64,
            i64,
            Option<String>,
            Option<String>,
            Option<String>,
            Option<String>,
            i32,
            Option<i64>,
            bool,
            i64,
            i64,
            String,
        );
        let rows: Vec<Row> = sqlx::query_as(
            "SELECT host, service, seen_ms, interval_ms, active_color, active_version, \
             worst_state, worst_rule, open_incidents, last_sample_ms, leader, backlog, dropped, \
             verdicts FROM hosts ORDER BY service, host",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(pq("reading the fleet"))?;
        Ok(rows
            .into_iter()
            .map(|r| FleetHost {
                host: r.0,
                service: r.1,
                seen_ms: r.2,
                interval_ms: r.3,
                active_color: r.4,
                active_version: r.5,
                worst_state: r.6,
                worst_rule: r.7,
                open_incidents: i64::from(r.8),
                last_sample_ms: r.9,
                leader: r.10,
                backlog: r.11,
                dropped: r.12,
                // Written by rollbackd's own heartbeat; a row it cannot read
                // (a newer version's) shows no verdicts rather than failing.
                verdicts: serde_json::from_str(&r.13).unwrap_or_default(),
            })
            .collect())
    }

    /// Every host's incidents of this service, newest first.
    pub async fn incidents_all_hosts(&self) -> Result<Vec<HostIncident>, StoreError> {
        self.incidents_where("WHERE service = $1 ORDER BY opened_ms DESC, host, id DESC")
            .await
    }

    /// Another host's rollback of this service still in flight, if any.
    pub async fn in_flight_elsewhere(&self) -> Result<Option<HostIncident>, StoreError> {
        Ok(self
            .incidents_where(
                "WHERE service = $1 AND in_flight AND host <> $2 ORDER BY opened_ms DESC LIMIT 1",
            )
            .await?
            .into_iter()
            .next())
    }

    async fn incidents_where(&self, tail: &str) -> Result<Vec<HostIncident>, StoreError> {
        type Row = (
            String,
            String,
            i64,
            i64,
            Option<i64>,
            String,
            String,
            Option<String>,
            String,
            Option<String>,
            Option<String>,
            Option<String>,
            Option<String>,
            String,
            Option<String>,
            bool,
        );
        let sql = format!(
            "SELECT host, service, id, opened_ms, closed_ms, trigger_kind, severity, rule, \
             reason, from_color, to_color, from_version, to_version, state, outcome, in_flight \
             FROM incidents {tail}"
        );
        let mut query = sqlx::query_as::<_, Row>(&sql).bind(&self.service);
        if tail.contains("$2") {
            query = query.bind(&self.host);
        }
        let rows = query
            .fetch_all(&self.pool)
            .await
            .map_err(pq("reading incidents"))?;
        Ok(rows
            .into_iter()
            .map(|r| HostIncident {
                host: r.0,
                service: r.1,
                id: r.2,
                opened_ms: r.3,
                closed_ms: r.4,
                trigger_kind: r.5,
                severity: r.6,
                rule: r.7,
                reason: r.8,
                from_color: r.9,
                to_color: r.10,
                from_version: r.11,
                to_version: r.12,
                state: r.13,
                outcome: r.14,
                in_flight: r.15,
            })
            .collect())
    }

    /// Every host's samples of this service since `since_ms`, optionally of
    /// one probe and color, oldest first.
    pub async fn samples_all_hosts(
        &self,
        probe: Option<&str>,
        color: Option<crate::model::Color>,
        since_ms: Millis,
    ) -> Result<Vec<HostSample>, StoreError> {
        self.samples_where(None, probe, color, since_ms, Millis::MAX, ALL_HOSTS_SAMPLES)
            .await
    }

    /// This service's samples in `[from, until)`, of one host, probe and
    /// color when given; oldest first, at most `limit`.
    async fn samples_where(
        &self,
        host: Option<&str>,
        probe: Option<&str>,
        color: Option<crate::model::Color>,
        from_ms: Millis,
        until_ms: Millis,
        limit: i64,
    ) -> Result<Vec<HostSample>, StoreError> {
        let rows: Vec<SampleRow> = sqlx::query_as(&format!(
            "SELECT {SAMPLE_COLUMNS} FROM samples WHERE service = $1 AND at_ms >= $2 AND at_ms < $3 \
             AND ($4::text IS NULL OR probe = $4) AND ($5::text IS NULL OR color = $5) \
             AND ($6::text IS NULL OR host = $6) \
             ORDER BY at_ms, host, probe, color LIMIT $7"
        ))
        .bind(&self.service)
        .bind(from_ms)
        .bind(until_ms)
        .bind(probe)
        .bind(color.map(|c| c.as_str()))
        .bind(host)
        .bind(limit)
        .fetch_all(&self.pool)
        .await
        .map_err(pq("reading samples"))?;
        rows.into_iter().map(host_sample).collect()
    }

    /// A connection of its own for the leader lock (never pooled: a pooled
    /// connection could go back to the pool still holding the lock).
    pub(crate) async fn dedicated(&self) -> Result<sqlx::PgConnection, StoreError> {
        use sqlx::Connection;
        tokio::time::timeout(
            STATEMENT_TIMEOUT,
            sqlx::PgConnection::connect_with(&self.options),
        )
        .await
        .map_err(|_| StoreError::Shared {
            doing: "connecting for the leader lock",
            why: "timed out".to_owned(),
        })?
        .map_err(pq("connecting for the leader lock"))
    }

    pub(crate) fn leader_lock_keys(&self) -> (i32, &str) {
        (LEADER_LOCK_CLASS, &self.service)
    }
}

impl Shared {
    pub async fn put_pause(&self, p: &crate::store::Pause) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO pauses (host, service, id, at_ms, until_ms, reason) \
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (service, host, id) DO NOTHING",
        )
        .bind(&self.host)
        .bind(&self.service)
        .bind(p.id)
        .bind(p.at_ms)
        .bind(p.until_ms)
        .bind(pg_text(&p.reason))
        .execute(&self.pool)
        .await
        .map_err(pq("sharing a pause"))?;
        Ok(())
    }

    /// End this host's holds still in force at `at_ms`.
    pub async fn resume(&self, at_ms: Millis) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE pauses SET resumed_ms = $3 WHERE service = $1 AND host = $2 \
             AND resumed_ms IS NULL AND until_ms > $3",
        )
        .bind(&self.service)
        .bind(&self.host)
        .bind(at_ms)
        .execute(&self.pool)
        .await
        .map_err(pq("sharing a resume"))?;
        Ok(())
    }

    /// Another host's hold on this service in force at `now_ms` (the one
    /// that lasts longest), with its host.
    pub async fn paused_elsewhere(
        &self,
        now_ms: Millis,
    ) -> Result<Option<(String, crate::store::Pause)>, StoreError> {
        let row: Option<(String, i64, i64, i64, String)> = sqlx::query_as(
            "SELECT host, id, at_ms, until_ms, reason FROM pauses WHERE service = $1 \
             AND host <> $2 AND resumed_ms IS NULL AND until_ms > $3 \
             ORDER BY until_ms DESC LIMIT 1",
        )
        .bind(&self.service)
        .bind(&self.host)
        .bind(now_ms)
        .fetch_optional(&self.pool)
        .await
        .map_err(pq("reading pauses"))?;
        Ok(row.map(|(host, id, at_ms, until_ms, reason)| {
            (
                host,
                crate::store::Pause {
                    id,
                    at_ms,
                    until_ms,
                    reason,
                },
            )
        }))
    }

    /// Close another host's incident that its host left in flight (its
    /// session ended mid-rollback), as the local recovery closes one.
    pub async fn close_elsewhere(
        &self,
        inc: &HostIncident,
        state: crate::model::IncidentState,
        outcome: &str,
        at_ms: Millis,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE incidents SET state = $4, outcome = $5, closed_ms = $6, in_flight = FALSE \
             WHERE service = $1 AND host = $2 AND id = $3 AND in_flight",
        )
        .bind(&inc.service)
        .bind(&inc.host)
        .bind(inc.id)
        .bind(state.as_str())
        .bind(pg_text(outcome))
        .bind(at_ms)
        .execute(&self.pool)
        .await
        .map_err(pq("closing another host's incident"))?;
        Ok(done.rows_affected() == 1)
    }
}

/// What the shared database says to a daemon's rollback, asked with a
/// bound: an unreachable database answers nothing (protection goes on).
impl super::Store {
    /// Another host's rollback of this service in flight, if the shared
    /// database (when there is one, and it answers) says so.
    pub async fn in_flight_elsewhere(&self) -> Option<HostIncident> {
        let db = self.shared()?;
        match tokio::time::timeout(STATEMENT_TIMEOUT, db.in_flight_elsewhere()).await {
            Ok(Ok(found)) => found,
            Ok(Err(e)) => {
                tracing::warn!("cannot ask the shared database for other hosts' rollbacks: {e}");
                None
            }
            Err(_) => None,
        }
    }

    /// Another host's pause of this service in force at `now_ms`, if the
    /// shared database (when there is one, and it answers) says so.
    pub async fn paused_elsewhere(&self, now_ms: Millis) -> Option<(String, crate::store::Pause)> {
        let db = self.shared()?;
        match tokio::time::timeout(STATEMENT_TIMEOUT, db.paused_elsewhere(now_ms)).await {
            Ok(Ok(found)) => found,
            Ok(Err(e)) => {
                tracing::warn!("cannot ask the shared database for other hosts' pauses: {e}");
                None
            }
            Err(_) => None,
        }
    }

    /// Close another host's orphaned rollback (see [`Shared::close_elsewhere`]);
    /// false when the database did not take it (or another daemon did first).
    pub async fn close_elsewhere(
        &self,
        inc: &HostIncident,
        state: crate::model::IncidentState,
        outcome: &str,
    ) -> bool {
        let Some(db) = self.shared() else {
            return false;
        };
        matches!(
            tokio::time::timeout(
                STATEMENT_TIMEOUT,
                db.close_elsewhere(inc, state, outcome, crate::model::now_ms())
            )
            .await,
            Ok(Ok(true))
        )
    }
}
