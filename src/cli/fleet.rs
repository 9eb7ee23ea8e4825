//! The fleet's commands (SPEC section 7): `rollbackd fleet`, `quarantine
//! lift`, and the quarantine check `gate --version` and `deploy` make.
//! They read and write the shared PostgreSQL through `store::shared` (and
//! the local journal through `store`); nothing here speaks SQL.
//!
//! Without `[daemon] database`, `fleet` and every `--all-hosts` fail with
//! one line and exit 78 (EX_CONFIG: the configuration names no shared
//! database); a database configured but unreachable is a runtime error
//! (exit 70). `quarantine lift` works on the local journal alone when no
//! database is configured.

use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use serde_json::json;

use super::{CheckFailed, open};
use crate::config::Config;
use crate::model::{Millis, format_ms, now_ms};
use crate::store::shared::{FleetHost, Shared};

/// How long a command waits for the shared database to answer at all.
const CONNECT_WAIT: Duration = Duration::from_secs(5);

/// A fleet command asked of a configuration without `[daemon] database`:
/// exit 78.
#[derive(Debug, thiserror::Error)]
#[error(
    "{what} needs a shared database, and {path} names none (set [daemon] database, see docs/fleet.md)"
)]
pub struct NoSharedDatabase {
    pub what: &'static str,
    pub path: String,
}

/// The shared database `config` names, connected (never migrated: a
/// command does not change the schema); `Ok(None)` without one.
pub(crate) async fn connect(config: &Config) -> anyhow::Result<Option<Shared>> {
    let Some(url) = &config.daemon.database else {
        return Ok(None);
    };
    let db = tokio::time::timeout(
        CONNECT_WAIT,
        Shared::connect_only(url, &config.daemon.host, &config.service),
    )
    .await
    .map_err(|_| {
        anyhow::anyhow!(
            "shared database: connecting: no answer within {}",
            humantime::format_duration(CONNECT_WAIT)
        )
    })??;
    Ok(Some(db))
}

/// [`connect`], where a shared database is required (`what` names the
/// command for the error).
pub(crate) async fn require(config: &Config, what: &'static str) -> anyhow::Result<Shared> {
    connect(config).await?.ok_or_else(|| {
        NoSharedDatabase {
            what,
            path: config.path.display().to_string(),
        }
        .into()
    })
}

/// A shared query, bounded: an unanswered statement is an error.
pub(crate) async fn bounded<T>(
    work: impl std::future::Future<Output = Result<T, crate::store::StoreError>>,
) -> anyhow::Result<T> {
    Ok(tokio::time::timeout(CONNECT_WAIT, work)
        .await
        .map_err(|_| anyhow::anyhow!("shared database: no answer within 5s"))??)
}

// --- rollbackd fleet ---------------------------------------------------------

/// A host as `fleet --json` prints it.
fn host_json(h: &FleetHost, now: Millis) -> serde_json::Value {
    json!({
        "host": h.host,
        "service": h.service,
        "seen": format_ms(h.seen_ms),
        "silent": h.silent_at(now),
        "leader": h.leader,
        "active_color": h.active_color,
        "active_version": h.active_version,
        "worst_state": h.worst_state,
        "worst_rule": h.worst_rule,
        "open_incidents": h.open_incidents,
        "last_sample": h.last_sample_ms.map(format_ms),
        "last_sample_age_ms": h.last_sample_ms.map(|at| (now - at).max(0)),
        "interval_ms": h.interval_ms,
        "backlog": h.backlog,
        "dropped": h.dropped,
        "verdicts": h.verdicts,
    })
}

/// The leader of each service: the host whose last heartbeat holds the
/// lock and is not silent (a silent leader's session ends within seconds,
/// and the lock with it).
fn leaders(hosts: &[FleetHost], now: Millis) -> Vec<(String, Option<String>)> {
    let mut out: Vec<(String, Option<String>)> = Vec::new();
    for h in hosts {
        if out.last().map(|(s, _)| s) != Some(&h.service) {
            out.push((h.service.clone(), None));
        }
        if h.leader && !h.silent_at(now) {
            if let Some(last) = out.last_mut() {
                last.1.get_or_insert_with(|| h.host.clone());
            }
        }
    }
    out
}

#[derive(Args, Debug)]
pub struct FleetArgs {
    /// First bring the shared schema up to date (run it with the URL of
    /// the role that owns the schema; the daemons' role need not be able
    /// to create anything)
    #[arg(long)]
    pub migrate: bool,
    /// Print the hosts and each service's leader as one JSON document
    #[arg(long)]
    pub json: bool,
}

pub async fn run(config: &Config, a: FleetArgs) -> anyhow::Result<()> {
    let as_json = a.json;
    let db = require(config, "rollbackd fleet").await?;
    if a.migrate {
        tokio::time::timeout(Duration::from_secs(60), db.migrate())
            .await
            .map_err(|_| anyhow::anyhow!("shared database: migrating: no answer within 60s"))??;
        eprintln!("the shared schema is up to date");
    }
    let hosts = bounded(db.fleet()).await?;
    db.close().await;
    print(&hosts, as_json)
}

/// `status --all-hosts`: `fleet`, for this configuration's service only.
pub async fn status(config: &Config, as_json: bool) -> anyhow::Result<()> {
    let db = require(config, "status --all-hosts").await?;
    let hosts: Vec<FleetHost> = bounded(db.fleet())
        .await?
        .into_iter()
        .filter(|h| h.service == config.service)
        .collect();
    db.close().await;
    print(&hosts, as_json)
}

/// The hosts as a table, or one JSON document (hosts, and each service's
/// leader).
fn print(hosts: &[FleetHost], as_json: bool) -> anyhow::Result<()> {
    let now = now_ms();
    let leaders = leaders(hosts, now);
    if as_json {
        let doc = json!({
            "hosts": hosts.iter().map(|h| host_json(h, now)).collect::<Vec<_>>(),
            "services": leaders.iter().map(|(service, leader)| json!({
                "service": service,
                "leader": leader,
                "hosts": hosts.iter().filter(|h| &h.service == service).count(),
            })).collect::<Vec<_>>(),
        });
        let doc = super::with_rfc3339_times(doc);
        println!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(());
    }
    if hosts.is_empty() {
        println!("no host has published a heartbeat to the shared database yet");
        return Ok(());
    }
    use super::table::{Align, render};
    let age = |ms: Millis| crate::report::incident::short_duration(ms.max(0));
    let rows: Vec<Vec<String>> = hosts
        .iter()
        .map(|h| {
            let silent = h.silent_at(now);
            vec![
                h.service.clone(),
                h.host.clone(),
                if silent {
                    format!("SILENT {}", age(now - h.seen_ms))
                } else {
                    "up".into()
                },
                if h.leader && !silent { "leader" } else { "-" }.into(),
                h.active_color.clone().unwrap_or_else(|| "-".into()),
                h.active_version.clone().unwrap_or_else(|| "-".into()),
                match (&h.worst_state, &h.worst_rule) {
                    (Some(state), Some(rule)) => format!("{state}: {rule}"),
                    (Some(state), None) => state.clone(),
                    _ => "-".into(),
                },
                h.open_incidents.to_string(),
                h.last_sample_ms
                    .map(|at| age(now - at))
                    .unwrap_or_else(|| "-".into()),
                if h.backlog > 0 || h.dropped > 0 {
                    format!("{}/{}", h.backlog, h.dropped)
                } else {
                    "-".into()
                },
            ]
        })
        .collect();
    print!(
        "{}",
        render(
            &[
                "SERVICE",
                "HOST",
                "STATE",
                "ROLE",
                "ACTIVE",
                "VERSION",
                "WORST",
                "OPEN",
                "LAST SAMPLE",
                "BACKLOG/DROPPED",
            ],
            &[
                Align::Left,
                Align::Left,
                Align::Left,
                Align::Left,
                Align::Left,
                Align::Left,
                Align::Left,
                Align::Right,
                Align::Right,
                Align::Left,
            ],
            &rows,
        )
    );
    for (service, leader) in &leaders {
        if leader.is_none() {
            println!("{service}: no leader (no daemon holds the switch lock)");
        }
    }
    Ok(())
}

// --- the quarantine ---------------------------------------------------------

#[derive(Args, Debug)]
pub struct QuarantineArgs {
    #[command(subcommand)]
    pub action: QuarantineAction,
}

#[derive(Subcommand, Debug)]
pub enum QuarantineAction {
    /// Lift a version's quarantine (on every host of the shared database,
    /// and in this host's journal): it may be deployed and restored again
    Lift {
        /// The version to lift (as `deploy --version` named it)
        #[arg(long)]
        version: String,
        /// Why it may run again (recorded with who lifted it and when)
        #[arg(long)]
        reason: String,
        /// Print what was lifted as JSON
        #[arg(long)]
        json: bool,
    },
}

/// A version's standing quarantine, and where it came from.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Found {
    pub version: String,
    /// The host whose rollback quarantined it.
    pub host: String,
    /// That host's incident (its own numbering), when known.
    pub incident: Option<i64>,
    pub at_ms: Option<Millis>,
    /// `shared` (the fleet's database) or `local` (this host's journal).
    pub source: &'static str,
}

impl Found {
    /// "rolled back on host a (incident #3 there) at ..."
    pub fn words(&self) -> String {
        let incident = self
            .incident
            .map(|id| format!(" (incident #{id} there)"))
            .unwrap_or_default();
        let at = self
            .at_ms
            .map(|at| format!(" at {}", format_ms(at)))
            .unwrap_or_default();
        format!(
            "version {} is quarantined: it was rolled back on host {}{incident}{at}; lift it with `rollbackd quarantine lift --version {} --reason TEXT`",
            self.version, self.host, self.version
        )
    }
}

/// What the quarantine check found, and what it could not ask.
#[derive(Debug, Default)]
pub struct Checked {
    pub found: Option<Found>,
    pub warnings: Vec<String>,
}

/// Whether `version` is quarantined for this service: in the shared
/// database first (when configured), then in this host's journal. A shared
/// database that does not answer is a warning, not a verdict: the local
/// check still runs (docs/fleet.md).
pub async fn check(config: &Config, version: &str) -> Checked {
    let mut out = Checked::default();
    match connect(config).await {
        Ok(Some(db)) => {
            match bounded(db.quarantined(version)).await {
                Ok(Some(q)) => {
                    out.found = Some(Found {
                        version: q.version,
                        host: q.host,
                        incident: q.incident,
                        at_ms: Some(q.at_ms),
                        source: "shared",
                    })
                }
                Ok(None) => {}
                Err(e) => out.warnings.push(format!(
                    "the fleet's quarantine was not checked ({e}); checked this host's only"
                )),
            }
            db.close().await;
        }
        Ok(None) => {}
        Err(e) => out.warnings.push(format!(
            "the fleet's quarantine was not checked ({e}); checked this host's only"
        )),
    }
    if out.found.is_some() {
        return out;
    }
    match local(config, version).await {
        Ok(found) => out.found = found,
        Err(e) => out
            .warnings
            .push(format!("this host's quarantine was not checked: {e:#}")),
    }
    out
}

/// The local journal's quarantine of `version`, with the newest incident
/// that moved traffic away from it. No journal yet: nothing quarantined.
async fn local(config: &Config, version: &str) -> anyhow::Result<Option<Found>> {
    if !config.daemon.state_dir.join("rollbackd.db").exists() {
        return Ok(None);
    }
    let store = super::open_journal(config).await?;
    if !store.version_quarantined(version).await? {
        return Ok(None);
    }
    let incident = store
        .incidents()
        .await?
        .into_iter()
        .filter(|i| i.from_version.as_deref() == Some(version))
        .max_by_key(|i| i.id);
    Ok(Some(Found {
        version: version.to_owned(),
        host: config.daemon.host.clone(),
        incident: incident.as_ref().map(|i| i.id),
        at_ms: incident.map(|i| i.opened_ms),
        source: "local",
    }))
}

pub async fn lift(config: &Config, a: QuarantineArgs) -> anyhow::Result<()> {
    let QuarantineAction::Lift {
        version,
        reason,
        json: as_json,
    } = a.action;
    let by = format!(
        "{}@{}",
        crate::rollback::operator().unwrap_or_else(|| "unknown".into()),
        config.daemon.host
    );
    let at = now_ms();
    // The shared one first: when the database is configured but away,
    // nothing is changed and the command can simply be run again.
    let shared = match connect(config).await? {
        Some(db) => {
            let lifted = bounded(db.lift_quarantine(&version, &by, &reason, at))
                .await
                .context("the quarantine was not lifted anywhere")?;
            db.close().await;
            Some(lifted)
        }
        None => None,
    };
    let local = open(config)
        .await?
        .lift_quarantine(&version, &by, &reason, at)
        .await?;
    let shared_lifted = shared.as_ref().and_then(|q| q.as_ref());
    if as_json {
        let doc = json!({
            "version": version,
            "lifted_by": by,
            "at_ms": at,
            "reason": reason,
            "shared": shared_lifted.map(|q| json!({
                "host": q.host,
                "incident": q.incident,
                "quarantined": format_ms(q.at_ms),
            })),
            "shared_database": shared.is_some(),
            "local_deployments": local,
        });
        println!(
            "{}",
            serde_json::to_string_pretty(&super::with_rfc3339_times(doc))?
        );
    } else {
        if let Some(q) = shared_lifted {
            println!(
                "lifted the fleet's quarantine of {version} for {} (rolled back on host {}{})",
                config.service,
                q.host,
                q.incident
                    .map(|id| format!(", incident #{id}"))
                    .unwrap_or_default()
            );
        }
        if local > 0 {
            println!(
                "lifted this host's quarantine of {version} ({local} deployment{})",
                if local == 1 { "" } else { "s" }
            );
        }
    }
    if shared_lifted.is_none() && local == 0 {
        return Err(CheckFailed(format!(
            "version {version} was not quarantined{}",
            if shared.is_some() {
                " (neither in the shared database nor on this host)"
            } else {
                " on this host"
            }
        ))
        .into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(service: &str, name: &str, seen_ms: Millis, leader: bool) -> FleetHost {
        FleetHost {
            host: name.into(),
            service: service.into(),
            seen_ms,
            interval_ms: 1_000,
            active_color: None,
            active_version: None,
            worst_state: None,
            worst_rule: None,
            open_incidents: 0,
            last_sample_ms: None,
            leader,
            backlog: 0,
            dropped: 0,
            verdicts: Vec::new(),
        }
    }

    #[test]
    fn a_silent_leader_leads_nothing() {
        let now = 100_000;
        let hosts = [
            host("a-svc", "a", now - 10_000, true),
            host("a-svc", "b", now, false),
            host("b-svc", "c", now - 500, true),
            host("b-svc", "d", now, false),
        ];
        assert_eq!(
            leaders(&hosts, now),
            [
                ("a-svc".to_owned(), None),
                ("b-svc".to_owned(), Some("c".to_owned()))
            ]
        );
    }
}
