//! `[entry]`: the service as its users reach it (through the proxy), and
//! the response header naming the color that answered.
//!
//! A switch command that exits 0 has not necessarily moved traffic (a proxy
//! reload can reject its new config and keep the old one while `-s reload`
//! exits 0): [`wait_serving`] requests the entry until it names the target
//! color, which `rollback` uses to confirm a switch. [`served`] is one such
//! look, which the daemon repeats to notice drift (the entry serving
//! another color than the active one). Owns no state and decides nothing.

use std::time::Duration;

use crate::config::Entry;
use crate::model::Color;

/// How long one request to the entry may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// The pace of requests while waiting for the entry to name a color.
const PACE: Duration = Duration::from_millis(200);

/// What one request to the entry saw.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Seen {
    /// The header named this color.
    Color(Color),
    /// An answer without a usable header, or no answer: why, in words.
    Unknown(String),
}

fn client() -> reqwest::Client {
    // Building fails only when the TLS backend cannot initialise, which with
    // rustls and bundled roots does not happen at run time; fall back to the
    // default client rather than fail the check.
    reqwest::Client::builder()
        .user_agent(concat!("rollbackd/", env!("CARGO_PKG_VERSION")))
        .timeout(REQUEST_TIMEOUT)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap_or_default()
}

/// Request the entry once and read the color it names.
pub async fn served(entry: &Entry) -> Seen {
    served_with(&client(), entry).await
}

async fn served_with(client: &reqwest::Client, entry: &Entry) -> Seen {
    let response = match client.get(entry.url.clone()).send().await {
        Ok(r) => r,
        Err(e) => {
            return Seen::Unknown(format!(
                "the entry {} did not answer: {}",
                entry.url,
                e.without_url()
            ));
        }
    };
    let Some(value) = response.headers().get(&entry.color_header) else {
        return Seen::Unknown(format!(
            "the entry answered {} without a {} header",
            response.status(),
            entry.color_header
        ));
    };
    let text = value
        .to_str()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    match Color::ALL.into_iter().find(|c| c.as_str() == text) {
        Some(c) => Seen::Color(c),
        None => Seen::Unknown(format!(
            "the entry's {} header says {text:?}, not blue or green",
            entry.color_header
        )),
    }
}

/// Request the entry until it names `target`, for up to `budget` (at least
/// one request). The error says what it served instead, in the words an
/// incident uses: "the entry still serves green".
pub async fn wait_serving(entry: &Entry, target: Color, budget: Duration) -> Result<(), String> {
    let client = client();
    let started = tokio::time::Instant::now();
    loop {
        let why = match served_with(&client, entry).await {
            Seen::Color(c) if c == target => return Ok(()),
            Seen::Color(c) => format!("the entry still serves {c}"),
            Seen::Unknown(why) => why,
        };
        if started.elapsed() + PACE > budget {
            return Err(why);
        }
        tokio::time::sleep(PACE).await;
    }
}

/// Drift: the entry serving another color than the active one, reported
/// once per change. Fed every look at the entry and the active color;
/// returns what to alert about (or say) now.
#[derive(Debug, Default)]
pub struct Drift {
    /// The (served, active) pair last reported as drift.
    reported: Option<(Color, Color)>,
    /// A mismatch seen once: drift is reported on the second look in a
    /// row, so a cutover in progress (file switched, proxy reloading) is
    /// not an alert.
    pending: Option<(Color, Color)>,
}

/// What [`Drift::look`] asks the daemon to say.
#[derive(Debug, PartialEq, Eq)]
pub enum DriftChange {
    /// The entry serves `served` while `active` is active.
    Started { served: Color, active: Color },
    /// The entry serves the active color again.
    Ended { active: Color },
}

impl Drift {
    pub fn look(&mut self, served: Color, active: Color) -> Option<DriftChange> {
        if served == active {
            self.pending = None;
            return self.reported.take().map(|_| DriftChange::Ended { active });
        }
        let pair = (served, active);
        if self.reported == Some(pair) {
            return None;
        }
        if self.pending != Some(pair) {
            self.pending = Some(pair);
            return None;
        }
        self.pending = None;
        self.reported = Some(pair);
        Some(DriftChange::Started { served, active })
    }

    /// Forget a pending mismatch (a rollback in flight moves traffic on
    /// purpose).
    pub fn hold(&mut self) {
        self.pending = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drift_is_reported_once_per_change_after_two_looks() {
        use Color::{Blue, Green};
        let mut d = Drift::default();
        assert_eq!(d.look(Blue, Blue), None);
        // One look at a mismatch is a cutover in progress, not drift.
        assert_eq!(d.look(Green, Blue), None);
        assert_eq!(d.look(Blue, Blue), None);
        assert_eq!(d.look(Green, Blue), None);
        assert_eq!(
            d.look(Green, Blue),
            Some(DriftChange::Started {
                served: Green,
                active: Blue
            })
        );
        // Once per change: no repeat while it lasts.
        for _ in 0..5 {
            assert_eq!(d.look(Green, Blue), None);
        }
        assert_eq!(
            d.look(Blue, Blue),
            Some(DriftChange::Ended { active: Blue })
        );
        assert_eq!(d.look(Blue, Blue), None);
        // A new change is a new alert.
        assert_eq!(d.look(Blue, Green), None);
        assert_eq!(
            d.look(Blue, Green),
            Some(DriftChange::Started {
                served: Blue,
                active: Green
            })
        );
    }
}
