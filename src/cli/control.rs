//! `deploy`, `rollback`, `pause`, `resume`: the commands that change state.
//! They work with the daemon stopped; the database coordinates them with it.

use serde_json::json;

use super::{CheckFailed, DeployArgs, PauseArgs, RollbackArgs, open};
use crate::config::Config;
use crate::model::{duration_ms, format_ms, now_ms};
use crate::notifier;
use crate::probe::Prober;
use crate::rollback::{self, Outcome, Request, Trigger};

pub async fn deploy(config: &Config, a: DeployArgs) -> anyhow::Result<()> {
    let store = open(config).await?;
    let d = store
        .record_deployment(a.color, &a.version, &a.source, now_ms())
        .await?;
    tracing::info!(
        rollbackd.color = a.color.as_str(),
        "deployment #{} recorded: {} {}",
        d.id,
        a.color,
        a.version
    );
    // The pipeline already cut over: a quarantined version is recorded all
    // the same, with a warning naming where it was rolled back.
    let checked = super::fleet::check(config, &a.version).await;
    for w in &checked.warnings {
        eprintln!("warning: {w}");
    }
    if let Some(found) = &checked.found {
        eprintln!("warning: {}", found.words());
    }
    if a.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({
                "deployment": d.id,
                "color": d.color,
                "version": d.version,
                "source": d.source,
                "at": format_ms(d.at_ms),
                "quarantine": checked.found.as_ref().map(|f| json!({
                    "host": f.host,
                    "incident": f.incident,
                    "at": f.at_ms.map(format_ms),
                    "source": f.source,
                })),
            }))?
        );
    } else {
        println!(
            "deployment #{}: {} is active with version {}",
            d.id, d.color, d.version
        );
    }
    if let Some(file) = &config.active_file {
        if crate::rollback::active::read_file(file).ok() != Some(a.color) {
            eprintln!(
                "note: {} does not say {}; with [active] file set, that file decides the active color",
                file.display(),
                a.color
            );
        }
    }
    Ok(())
}

/// Records the database refused during the rollback (kept in memory so the
/// rollback went on): this process is about to exit, so it waits, bounded,
/// for the database to take them, and says so when it does not.
async fn store_kept(store: &crate::store::Store) -> anyhow::Result<()> {
    const WAIT: std::time::Duration = std::time::Duration::from_secs(30);
    if store.kept_len() == 0 {
        return Ok(());
    }
    eprintln!(
        "the database refuses writes: waiting up to {} to store this rollback's record",
        humantime::format_duration(WAIT)
    );
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match store.flush_kept().await {
            Ok(_) => return Ok(()),
            Err(e) if tokio::time::Instant::now() >= deadline => {
                anyhow::bail!(
                    "the rollback ran, but {} of its records could not be stored: {e}",
                    store.kept_len()
                )
            }
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(500)).await,
        }
    }
}

pub async fn rollback(config: &Config, a: RollbackArgs) -> anyhow::Result<()> {
    let store = open(config).await?;
    let prober = Prober::new();
    let policy = notifier::Policy::default();
    let (hub, sender) = notifier::Hub::start_with_drills(policy, store.clone());
    let request = Request {
        trigger: Trigger::Manual,
        severity: crate::model::Severity::Critical,
        rule: None,
        reason: a.reason.clone(),
        evidence: json!({ "manual": true, "reason": a.reason, "user": crate::rollback::operator().unwrap_or_default() }),
        since_ms: None,
    };
    let outcome = {
        let ctx = rollback::Context {
            config,
            store: &store,
            prober: &prober,
            notify: Some(&hub),
        };
        let work = rollback::execute(&ctx, request);
        tokio::pin!(work);
        // Never abandon a rollback half-way on a stray Ctrl-C: the first one
        // only says what is happening; a second one exits, and the next
        // rollbackd (daemon or CLI) reconciles what was left.
        let mut interrupts = 0;
        loop {
            tokio::select! {
                outcome = &mut work => break outcome?,
                _ = tokio::signal::ctrl_c() => {
                    interrupts += 1;
                    if interrupts >= 2 {
                        eprintln!("abandoning: the rollback will be reconciled by the next rollbackd; it never runs the switch twice");
                        std::process::exit(130);
                    }
                    eprintln!("a rollback is in progress and will finish (every step is bounded); press Ctrl-C again to abandon it");
                }
            }
        }
    };
    store_kept(&store).await?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&outcome_json(&outcome))?);
    }
    let quiet = a.json;
    let result = match outcome {
        _ if quiet && matches!(outcome, Outcome::Verified { .. } | Outcome::DryRun { .. }) => {
            Ok(())
        }
        Outcome::Verified { incident, to } => {
            println!("rolled back to {to}; verified healthy (incident #{incident})");
            Ok(())
        }
        Outcome::DryRun { incident, to } => {
            println!("dry run: would roll back to {to} (incident #{incident})");
            Ok(())
        }
        Outcome::Refused { incident, why } => {
            Err(CheckFailed(format!("refused (incident #{incident}): {why}")).into())
        }
        Outcome::Failed { incident, why } => {
            Err(CheckFailed(format!("failed (incident #{incident}): {why}")).into())
        }
        Outcome::Escalated { incident, why } => {
            Err(CheckFailed(format!("escalated (incident #{incident}): {why}")).into())
        }
        Outcome::Skipped { why, .. } => Err(CheckFailed(format!("not started: {why}")).into()),
    };
    // The rollback is done (and its outcome printed); deliver the notices
    // before exiting, bounded by their retry policy.
    drop(hub);
    if tokio::time::timeout(policy.worst_case(), sender)
        .await
        .is_err()
    {
        eprintln!("note: some notifications were still being retried at exit");
    }
    result
}

/// The longest hold `pause` accepts: a hold always expires, and one that
/// outlives a month is a forgotten one.
const MAX_HOLD: std::time::Duration = std::time::Duration::from_secs(30 * 24 * 3600);

pub async fn pause(config: &Config, a: PauseArgs) -> anyhow::Result<()> {
    if a.duration.is_zero() || a.duration > MAX_HOLD {
        clap::Error::raw(
            clap::error::ErrorKind::ValueValidation,
            format!(
                "--for must be more than 0 and at most {} (a hold always expires)\n",
                humantime::format_duration(MAX_HOLD)
            ),
        )
        .exit();
    }
    let store = open(config).await?;
    let now = now_ms();
    let until = now + duration_ms(a.duration);
    let id = store.pause(now, until, &a.reason).await?;
    tracing::warn!(
        "automatic rollbacks held for {} until {} (pause #{id}): {}",
        humantime::format_duration(a.duration),
        format_ms(until),
        a.reason
    );
    if a.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({
                "pause": id,
                "since": format_ms(now),
                "until": format_ms(until),
                "reason": a.reason,
            }))?
        );
    } else {
        println!(
            "automatic rollbacks paused until {}: {}",
            format_ms(until),
            a.reason
        );
    }
    Ok(())
}

pub async fn resume(config: &Config, as_json: bool) -> anyhow::Result<()> {
    let n = open(config).await?.resume(now_ms()).await?;
    if n > 0 {
        tracing::warn!("hold on automatic rollbacks ended by resume");
    }
    if as_json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({ "resumed": n > 0, "holds_ended": n }))?
        );
        return Ok(());
    }
    println!(
        "{}",
        if n > 0 {
            "automatic rollbacks resumed"
        } else {
            "no hold was in force"
        }
    );
    Ok(())
}

/// `rollback --json`: the outcome as one document (`outcome` is one word).
fn outcome_json(outcome: &Outcome) -> serde_json::Value {
    let (incident, to, why) = match outcome {
        Outcome::Verified { incident, to } | Outcome::DryRun { incident, to } => {
            (Some(*incident), Some(*to), None)
        }
        Outcome::Refused { incident, why }
        | Outcome::Failed { incident, why }
        | Outcome::Escalated { incident, why } => (Some(*incident), None, Some(why)),
        Outcome::Skipped { why, .. } => (None, None, Some(why)),
    };
    let word = outcome.word();
    json!({ "outcome": word, "incident": incident, "to": to, "why": why })
}
