//! The rollback among a fleet's daemons (SPEC section 7): with a shared
//! database, only the leader of a service switches it, and another host's
//! rollback in flight is neither doubled nor left open for good; a pause
//! made on one host holds them all.

use std::time::Duration;

use super::{Context, Hold};
use crate::model::{IncidentState, Millis};

/// With a shared database (SPEC section 7): only the service's leader
/// switches; and while another host's rollback of the service is in flight,
/// it is not run here too. A rollback left in flight by a host whose
/// session ended (kill -9, a lost network) is closed once it is older than
/// the time its switch command could still be running, exactly as
/// `reconcile` closes a local one: never run again, its outcome named.
///
/// Returns why it holds, and when the hold is known to end (another host's
/// rollback reaching its bound), how soon to ask again.
pub(super) async fn hold(ctx: &Context<'_>, now: Millis) -> Option<Hold> {
    let Context { config, store, .. } = *ctx;
    let lead = store.leadership();
    if !lead.may_switch() {
        return Some(Hold::new(format!(
            "another daemon leads service {}: only the leader switches (this one probes, decides and records)",
            config.service
        )));
    }
    if let Some((host, p)) = store.paused_elsewhere(now).await {
        return Some(Hold::new(format!(
            "automatic rollbacks of service {} are paused until {} by host {host}: {}",
            config.service,
            crate::model::format_ms(p.until_ms),
            p.reason
        )));
    }
    let inc = store.in_flight_elsewhere().await?;
    let bound = config.rollback.timeout + config.rollback.verify_after;
    let age = Duration::from_millis(u64::try_from(now - inc.opened_ms).unwrap_or(0));
    if age < bound {
        // Asked again as soon as that rollback is past its bound, not at
        // the usual retry a minute on: until then the service is held.
        return Some(Hold {
            why: format!(
                "host {}'s rollback #{} of service {} is in flight ({}): not run here too",
                inc.host, inc.id, config.service, inc.state
            ),
            retry_in: Some(bound - age),
        });
    }
    let why = format!(
        "interrupted on host {} in state {}; its outcome is unknown and it was NOT run again by {}: check which color serves traffic",
        inc.host,
        inc.state,
        store.shared().map_or("this host", |s| s.host())
    );
    if store
        .close_elsewhere(&inc, IncidentState::Unknown, &why)
        .await
    {
        tracing::warn!(
            rollbackd.incident = inc.id,
            "rollback #{} of host {} was left in flight: closed as unknown, not run again",
            inc.id,
            inc.host
        );
    }
    None
}
