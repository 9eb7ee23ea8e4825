//! `deploy`, `rollback`, `pause`, `resume`: the commands that change state.
//! They work with the daemon stopped; the database coordinates them with it.

use serde_json::json;

use super::{CheckFailed, DeployArgs, PauseArgs, RollbackArgs, open};
use crate::config::Config;
use crate::model::{duration_ms, format_ms, now_ms};
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
    println!(
        "deployment #{}: {} is active with version {}",
        d.id, d.color, d.version
    );
    if let Some(file) = &config.active_file {
        if crate::active::read_file(file).ok() != Some(a.color) {
            eprintln!(
                "note: {} does not say {}; with [active] file set, that file decides the active color",
                file.display(),
                a.color
            );
        }
    }
    Ok(())
}

pub async fn rollback(config: &Config, a: RollbackArgs) -> anyhow::Result<()> {
    let store = open(config).await?;
    let prober = Prober::new();
    let ctx = rollback::Context {
        config,
        store: &store,
        prober: &prober,
    };
    let request = Request {
        trigger: Trigger::Manual,
        severity: crate::model::Severity::Critical,
        rule: None,
        reason: a.reason.clone(),
        evidence: json!({ "manual": true, "reason": a.reason, "user": std::env::var("USER").unwrap_or_default() }),
        since_ms: None,
    };
    match rollback::execute(&ctx, request).await? {
        Outcome::Verified { incident, to } => {
            println!("rolled back to {to}; verified healthy (incident #{incident})");
            Ok(())
        }
        Outcome::DryRun { incident, to } => {
            println!("dry run: would have switched to {to} (incident #{incident})");
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
        Outcome::Skipped { why } => Err(CheckFailed(format!("not started: {why}")).into()),
    }
}

pub async fn pause(config: &Config, a: PauseArgs) -> anyhow::Result<()> {
    let store = open(config).await?;
    let now = now_ms();
    let until = now + duration_ms(a.duration);
    store.pause(now, until, &a.reason).await?;
    tracing::info!(
        "automatic rollbacks paused for {}: {}",
        humantime::format_duration(a.duration),
        a.reason
    );
    println!(
        "automatic rollbacks paused until {}: {}",
        format_ms(until),
        a.reason
    );
    Ok(())
}

pub async fn resume(config: &Config) -> anyhow::Result<()> {
    let n = open(config).await?.resume(now_ms()).await?;
    tracing::info!("automatic rollbacks resumed");
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
