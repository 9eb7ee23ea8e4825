//! The post-deploy report after the bake: once the latest deployment has
//! been live for `[rollback] bake` with no Critical/High rule fired on its
//! color for that long and no incident since it went live, its report
//! (`rollbackd report`) is sent through the notifiers — once, across
//! restarts and processes (the database holds the claim).

use crate::config::Config;
use crate::matrix::State;
use crate::model::{Severity, duration_ms, now_ms};
use crate::notifier::{Event, Hub, Notice};
use crate::report::{self, ReportError};
use crate::store::Store;

/// What the check found; the daemon only logs it.
#[derive(Debug, PartialEq, Eq)]
pub enum Baked {
    /// Nothing to do: no deployment, still baking, unhealthy, or already sent.
    No,
    /// The report of this deployment was queued for the notifiers.
    Sent(i64),
}

pub async fn check(config: &Config, store: &Store, hub: &Hub) -> Result<Baked, ReportError> {
    let Some(d) = store.latest_deployment().await? else {
        return Ok(Baked::No);
    };
    let now = now_ms();
    let bake = duration_ms(config.rollback.bake);
    if now - d.at_ms < bake || store.report_sent(d.id).await? {
        return Ok(Baked::No);
    }
    let fired = store
        .verdicts_between(now - bake, now + 1)
        .await?
        .into_iter()
        .chain(store.latest_verdicts().await?)
        .any(|v| v.color == d.color && v.state == State::Fired && v.severity >= Severity::High);
    let incident = store
        .incidents()
        .await?
        .iter()
        .any(|i| i.opened_ms >= d.at_ms);
    if fired || incident {
        return Ok(Baked::No);
    }
    if !store.claim_report(d.id, now).await? {
        return Ok(Baked::No);
    }
    let r = report::build(config, store, Some(d.id)).await?;
    let availability = r
        .availability_pct
        .map(|a| format!("{a:.3}%"))
        .unwrap_or_else(|| "no samples".into());
    let mut notice = Notice::new(
        Event::DeployReport,
        Severity::Low,
        &config.service,
        format!(
            "{} {} on {} has been healthy for {}; availability {availability}",
            config.service,
            d.version,
            d.color,
            humantime::format_duration(config.rollback.bake)
        ),
    );
    notice.detail = r.markdown_for_notice();
    notice.color = Some(d.color);
    notice.version = Some(d.version.clone());
    hub.send(&config.notify, notice);
    tracing::info!(
        rollbackd.color = d.color.as_str(),
        "deployment #{} ({}) baked: post-deploy report sent",
        d.id,
        d.version
    );
    Ok(Baked::Sent(d.id))
}
