//! The heartbeat a daemon publishes in a shared database (SPEC section 7):
//! once a second, what the work loop last published (active color, the
//! worst current verdict on it, a rollback in flight), the active version,
//! the newest sample and whether this daemon leads its service. A task of
//! its own: the loop never waits on it. Nothing runs without a shared
//! database.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::http::Snapshot;
use crate::config::Config;
use crate::matrix::{State, Verdict};
use crate::model::{Color, Millis};
use crate::store::Store;
use crate::store::shared::leader::Leadership;
use crate::store::shared::{Beat, HostVerdict};

/// The worst current verdict on `active`: a fired rule before an
/// inconclusive one before a clear one, the more severe first.
pub fn worst_on(verdicts: &[Verdict], active: Option<Color>) -> Option<&Verdict> {
    let rank = |v: &Verdict| {
        let state = match v.state {
            State::Fired => 2,
            State::Inconclusive => 1,
            State::Clear => 0,
        };
        (state, v.severity)
    };
    verdicts
        .iter()
        .filter(|v| Some(v.color) == active)
        .max_by_key(|v| rank(v))
}

/// Publish the heartbeat until the snapshot's sender goes away.
pub async fn run(config: Arc<Config>, store: Store, snapshot: watch::Receiver<Snapshot>) {
    let Some(mirror) = store.mirror().cloned() else {
        return;
    };
    let started_ms = crate::model::now_ms();
    let interval_ms = config
        .probes
        .iter()
        .map(|p| Millis::try_from(p.interval.as_millis()).unwrap_or(Millis::MAX))
        .min()
        .unwrap_or(1_000)
        .max(1_000);
    // The active version is read again when the active color changes, and
    // every ten beats (a new deployment of the same color).
    let mut version: (Option<Color>, Option<String>, u32) = (None, None, 0);
    loop {
        let snap = snapshot.borrow().clone();
        if snap.active != version.0 || version.2 >= 10 {
            let read = match snap.active {
                Some(c) => store
                    .latest_deployment_of(c)
                    .await
                    .ok()
                    .flatten()
                    .map(|d| d.version),
                None => None,
            };
            version = (snap.active, read, 0);
        }
        version.2 += 1;
        let worst = worst_on(&snap.verdicts, snap.active);
        mirror.set_beat(Beat {
            started_ms,
            interval_ms,
            active_color: snap.active.map(|c| c.as_str().to_owned()),
            active_version: version.1.clone(),
            worst_state: worst.map(|v| v.state.as_str().to_owned()),
            worst_rule: worst.map(|v| v.rule.clone()),
            open_incidents: i64::from(snap.rollback_in_flight),
            last_sample_ms: mirror.last_sample_ms(),
            leader: matches!(
                store.leadership(),
                Leadership::Leader | Leadership::LeaderOffline
            ),
            verdicts: snap
                .verdicts
                .iter()
                .filter(|v| Some(v.color) == snap.active)
                .map(|v| HostVerdict {
                    rule: v.rule.clone(),
                    severity: v.severity.as_str().to_owned(),
                    state: v.state.as_str().to_owned(),
                    value: v.value,
                    detail: v.detail.clone(),
                })
                .collect(),
        });
        if snap.stopping || snapshot.has_changed().is_err() {
            return;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}
