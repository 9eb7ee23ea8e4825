//! The systemd side of the runtime contract (SPEC section 5): sd_notify
//! states and the watchdog period. Every call is a no-op when the daemon is
//! not run by systemd (no `NOTIFY_SOCKET`), and a failed notification is
//! logged, never fatal.

use std::time::Duration;

use sd_notify::NotifyState;

fn send(states: &[NotifyState]) {
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return;
    }
    if let Err(e) = sd_notify::notify(false, states) {
        tracing::warn!("sd_notify failed: {e}");
    }
}

pub fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

pub fn status(status: &str) {
    send(&[NotifyState::Status(status)]);
}

/// `RELOADING=1` with `MONOTONIC_USEC`, as systemd 253+ requires.
pub fn reloading() {
    match NotifyState::monotonic_usec_now() {
        Ok(now) => send(&[NotifyState::Reloading, now]),
        Err(_) => send(&[NotifyState::Reloading]),
    }
}

pub fn stopping() {
    send(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
}

pub fn watchdog() {
    send(&[NotifyState::Watchdog]);
}

/// How often to ping the watchdog: half of `WATCHDOG_USEC`, when systemd
/// asked for pings from this process (`WATCHDOG_PID` unset or ours, as
/// `sd_watchdog_enabled(3)` reads them).
pub fn watchdog_period() -> Option<Duration> {
    watchdog_period_from(
        std::env::var("WATCHDOG_USEC").ok().as_deref(),
        std::env::var("WATCHDOG_PID").ok().as_deref(),
        std::process::id(),
    )
}

fn watchdog_period_from(usec: Option<&str>, pid: Option<&str>, me: u32) -> Option<Duration> {
    let usec: u64 = usec?.trim().parse().ok()?;
    if let Some(pid) = pid {
        if pid.trim().parse::<u32>().ok()? != me {
            return None;
        }
    }
    Some(Duration::from_micros(usec / 2)).filter(|d| !d.is_zero())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watchdog_period_is_half_of_watchdog_usec_for_this_process_only() {
        let half = Some(Duration::from_secs(15));
        assert_eq!(watchdog_period_from(Some("30000000"), None, 7), half);
        assert_eq!(watchdog_period_from(Some("30000000"), Some("7"), 7), half);
        assert_eq!(watchdog_period_from(Some("30000000"), Some("8"), 7), None);
        assert_eq!(watchdog_period_from(Some("30000000"), Some("x"), 7), None);
        assert_eq!(watchdog_period_from(None, Some("7"), 7), None);
        assert_eq!(watchdog_period_from(Some("0"), None, 7), None);
        assert_eq!(watchdog_period_from(Some("soon"), None, 7), None);
    }
}
