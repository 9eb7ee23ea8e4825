//! The recovery of a rollback its process left in flight: [`abandon`]
//! (this process's task stopped without an outcome) and [`reconcile`] (the
//! holder died: take the slot over, exactly once, then close or resume it,
//! never running the switch command again). The run itself is in
//! `rollback/mod.rs`.

use std::time::Duration;

use serde_json::json;

use super::{Context, Outcome, Request, RollbackError, Run, SWITCH_GROUP_PROSE, active, holder_id};
use crate::model::{Color, EventKind, IncidentState, now_ms};
use crate::process;
use crate::store::{Deployment, Incident, StoreError};

/// Whether the process named by a holder id is still running.
pub fn holder_alive(holder: &str) -> bool {
    let Some((pid, start)) = holder.split_once('/') else {
        return false;
    };
    let Ok(pid) = pid.parse::<u32>() else {
        return false;
    };
    match process::proc_stat(pid) {
        // A zombie has exited; only its exit status waits to be collected.
        Some(p) if p.zombie() => false,
        Some(p) => start
            .parse::<u64>()
            .is_ok_and(|s| s == 0 || s == p.start_time),
        // Not visible in /proc: gone, or hidden from us (another user's
        // process under `ProtectProc=invisible` or `hidepid`). Only the
        // kernel's "no such process" proves it is gone.
        None => {
            let Ok(raw) = i32::try_from(pid) else {
                return false;
            };
            !matches!(
                nix::sys::signal::kill(nix::unistd::Pid::from_raw(raw), None),
                Err(nix::errno::Errno::ESRCH)
            )
        }
    }
}

/// The switch command's process group as an older version recorded it:
/// only in the words of a timeline event.
fn legacy_switch_group(events: &[crate::store::IncidentEvent]) -> Option<u32> {
    events.iter().rev().find_map(|e| {
        e.message
            .strip_prefix(SWITCH_GROUP_PROSE)?
            .trim()
            .parse::<u32>()
            .ok()
    })
}

/// A switch command outlives the process that ran it (kill -9 of the
/// daemon leaves its process group running). Before judging whether the
/// switch landed, wait for it (bounded by `[rollback] timeout`, then kill the
/// group), so its outcome is seen rather than guessed.
async fn wait_for_orphaned_switch(ctx: &Context<'_>, inc: &Incident) -> Result<(), RollbackError> {
    let incident = inc.id;
    let pgid = match inc.switch_pgid {
        Some(pgid) => Some(pgid),
        // A rollback left by a version that kept the group only on the
        // timeline (a daemon upgraded mid-incident): read it from there.
        None => legacy_switch_group(&ctx.store.incident_events(incident).await?),
    };
    let Some(pgid) = pgid else {
        return Ok(());
    };
    if !process::group_alive(pgid) {
        return Ok(());
    }
    let timeout = ctx.config.rollback.timeout;
    ctx.store
        .add_incident_event(
            incident,
            now_ms(),
            IncidentState::Switching,
            &format!(
                "the switch command (process group {pgid}) is still running after the restart: waiting up to {} for it",
                humantime::format_duration(timeout)
            ),
        )
        .await?;
    let deadline = tokio::time::Instant::now() + timeout;
    while process::group_alive(pgid) {
        if tokio::time::Instant::now() >= deadline {
            process::kill_group(i32::try_from(pgid).ok().map(nix::unistd::Pid::from_raw));
            ctx.store
                .add_incident_event(
                    incident,
                    now_ms(),
                    IncidentState::Switching,
                    &format!("killed the switch command (process group {pgid}) at its timeout"),
                )
                .await?;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

/// Close the rollback this process left in flight when its task ended
/// without an outcome (it panicked, or stopped on an error): the incident
/// is closed as failed, saying whether the switch command may have run,
/// the failure is notified, and the in-flight slot is free for the next
/// attempt. `None` when this process holds no rollback.
pub async fn abandon(ctx: &Context<'_>, why: &str) -> Result<Option<Outcome>, RollbackError> {
    let Some(inc) = ctx.store.in_flight_incident().await? else {
        return Ok(None);
    };
    if inc.holder.as_deref() != Some(holder_id().as_str()) {
        // Another process's rollback (a CLI's): not ours to close.
        return Ok(None);
    }
    let run = resumed_run(ctx, &inc).await?;
    let why = match inc.state {
        IncidentState::Requested | IncidentState::TargetVerified => {
            format!(
                "the rollback task stopped ({why}) before the switch command ran; nothing was switched"
            )
        }
        IncidentState::Switching
            if ctx.config.active_file.is_none() && ctx.config.entry.is_none() =>
        {
            let why = format!(
                "the rollback task stopped while switching {} -> {} ({why}); the switch command may have run",
                run.from, run.to
            );
            return Ok(Some(run.unknown(why).await?));
        }
        state @ (IncidentState::Switching
        | IncidentState::Switched
        | IncidentState::Verified
        | IncidentState::Escalated
        | IncidentState::Refused
        | IncidentState::Failed
        | IncidentState::DryRun
        | IncidentState::Unknown) => format!(
            "the rollback task stopped in state {state} ({why}); the switch command may have run: check which color serves traffic"
        ),
    };
    Ok(Some(run.fail(why).await?))
}

/// Close or resume the rollback left in flight by a process that died (the
/// daemon after a kill -9, a CLI killed mid-rollback). Does nothing while
/// the holder lives. Never runs the switch command again: `switching`
/// resumes only when the `[active] file` proves the switch landed.
pub async fn reconcile(ctx: &Context<'_>) -> Result<Option<Outcome>, RollbackError> {
    let store = ctx.store;
    let Some(inc) = store.in_flight_incident().await? else {
        return Ok(None);
    };
    let me = holder_id();
    if let Some(holder) = inc.holder.as_deref() {
        if holder == me || holder_alive(holder) {
            return Ok(None);
        }
    }
    if !store
        .take_over_incident(inc.id, inc.holder.as_deref(), &me)
        .await?
    {
        // Another process took it over first.
        return Ok(None);
    }
    tracing::warn!(
        rollbackd.incident = inc.id,
        "rollback #{} was interrupted in state {} (its process {} is gone): reconciling",
        inc.id,
        inc.state,
        inc.holder.as_deref().unwrap_or("unknown")
    );
    let run = resumed_run(ctx, &inc).await?;
    match inc.state {
        IncidentState::Requested | IncidentState::TargetVerified => {
            let why = "interrupted before the switch command ran; nothing was switched".to_owned();
            Ok(Some(run.fail(why).await?))
        }
        IncidentState::Switching | IncidentState::Switched => {
            if inc.state == IncidentState::Switching {
                wait_for_orphaned_switch(ctx, &inc).await?;
            }
            // Did the switch happen? The active file says so when there is
            // one; otherwise only `switched` (recorded after exit 0) does.
            let landed = match (&ctx.config.active_file, &ctx.config.entry) {
                (Some(file), _) => active::read_file(file).ok() == Some(run.to),
                (None, _) if inc.state == IncidentState::Switched => true,
                // `[entry]` tells what the traffic does now (a proxy may
                // still be reloading: give it verify_after).
                (None, Some(entry)) => crate::rollback::entry::wait_serving(
                    entry,
                    run.to,
                    ctx.config.rollback.verify_after,
                )
                .await
                .is_ok(),
                (None, None) => false,
            };
            if !landed {
                let why = format!(
                    "interrupted while switching {} -> {}; the command's outcome is unknown and it was NOT run again: check which color serves traffic",
                    run.from, run.to
                );
                if ctx.config.active_file.is_none() && ctx.config.entry.is_none() {
                    // Nothing can say where traffic went: not a failure.
                    return Ok(Some(run.unknown(why).await?));
                }
                return Ok(Some(run.fail(why).await?));
            }
            let Some(target) = run.target_dep.clone() else {
                return Ok(Some(
                    run.fail("interrupted; the restored version is unknown".into())
                        .await?,
                ));
            };
            store
                .add_incident_event(
                    inc.id,
                    now_ms(),
                    inc.state,
                    "resumed after restart: the switch had landed",
                )
                .await?;
            let latest = store.latest_deployment().await?;
            let already_recorded = latest.is_some_and(|d| {
                d.color == run.to && d.source == "rollback" && d.at_ms >= inc.opened_ms
            });
            run.record_switch(&target, already_recorded).await?;
            if inc.state != IncidentState::Switched {
                run.event(
                    IncidentState::Switched,
                    &format!(
                        "traffic moved to {} ({}): confirmed after restart",
                        run.to, target.version
                    ),
                )
                .await?;
            }
            Ok(Some(run.verify_after().await?))
        }
        // Closed states never hold the slot; a row that says otherwise is
        // closed as failed rather than left blocking every rollback.
        other @ (IncidentState::Verified
        | IncidentState::Escalated
        | IncidentState::Refused
        | IncidentState::Failed
        | IncidentState::DryRun
        | IncidentState::Unknown) => {
            let why = format!("interrupted in unexpected state {other}");
            Ok(Some(run.fail(why).await?))
        }
    }
}

/// Rebuild a [`Run`] from a stored incident.
async fn resumed_run<'c, 'a>(
    ctx: &'c Context<'a>,
    inc: &Incident,
) -> Result<Run<'c, 'a>, StoreError> {
    let from = inc.from_color.unwrap_or(Color::Blue);
    let to = inc.to_color.unwrap_or(from.other());
    // The deployment rolled back: the latest of `from` opened before the
    // incident (the rollback records only deployments of `to`).
    let active_dep = match ctx.store.latest_deployment_of(from).await? {
        Some(d) if d.at_ms <= inc.opened_ms => d,
        _ => Deployment {
            id: 0,
            color: from,
            version: inc.from_version.clone().unwrap_or_default(),
            at_ms: inc.opened_ms,
            source: "unknown".into(),
            quarantined: false,
        },
    };
    let target_dep = inc.to_version.clone().map(|version| Deployment {
        id: 0,
        color: to,
        version,
        at_ms: now_ms(),
        source: "rollback".into(),
        quarantined: false,
    });
    let since_ms = ctx
        .store
        .incident_events(inc.id)
        .await?
        .into_iter()
        .find(|e| e.state == EventKind::Detected)
        .map(|e| e.at_ms);
    Ok(Run {
        ctx,
        id: inc.id,
        from,
        to,
        active_dep,
        target_dep,
        req: Request {
            trigger: inc.trigger_kind,
            severity: inc.severity,
            rule: inc.rule.clone(),
            reason: inc.reason.clone(),
            evidence: serde_json::from_str(&inc.evidence).unwrap_or_else(|_| json!({})),
            since_ms,
        },
        since_ms,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_holder_is_alive_while_its_process_runs_and_not_after() {
        let me = holder_id();
        let (_, start) = me.split_once('/').unwrap();
        assert_ne!(start, "0", "the start time is read from /proc: {me}");
        assert!(holder_alive(&me));
        // The same pid with another start time is a reused pid: not us.
        let pid = std::process::id();
        assert!(!holder_alive(&format!("{pid}/1")));
        let mut child = std::process::Command::new("/bin/true").spawn().unwrap();
        let child_pid = child.id();
        // Exited but not yet reaped (a zombie) already counts as gone.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while process::proc_stat(child_pid).is_some_and(|p| !p.zombie()) {
            assert!(std::time::Instant::now() < deadline);
            std::thread::yield_now();
        }
        assert!(!holder_alive(&format!("{child_pid}/0")));
        child.wait().unwrap();
        assert!(!holder_alive(&format!("{child_pid}/0")));
        assert!(!holder_alive("garbage"));
    }
}
