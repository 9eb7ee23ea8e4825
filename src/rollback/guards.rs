//! The time guards on automatic rollbacks, on the monotonic clock: a pause
//! and the cooldown.
//!
//! Both are stored on the wall clock (`pauses.until_ms`, the incident's
//! `opened_ms`), written by other processes too (`rollbackd pause`). The
//! moment a value is first learned it becomes a monotonic deadline (its
//! remaining length, read off the wall clock once); from then on only the
//! monotonic clock counts, so a wall-clock step either way (NTP, `date -s`)
//! ends no pause or cooldown early and stretches none. A value already seen
//! keeps the deadline it got. This owns no IO: callers hand it what the
//! store said, the wall clock's reading and the instant.
//!
//! `status`, a process that learned nothing before, asks [`holds_at`]: the
//! same learning, judged at once, so it and the daemon cannot disagree on
//! what a stored pause or cooldown means.

use std::time::Duration;

use tokio::time::Instant;

use crate::model::{Millis, duration_ms, format_ms};
use crate::store::Pause;

#[derive(Clone, Debug, Default)]
pub struct Guards {
    /// The pause in force (the latest not resumed), with its deadline.
    pause: Option<(Pause, Instant)>,
    /// The pause in force at the last [`Guards::take_ended`].
    held: Option<i64>,
    /// The last automatic rollback's start (wall clock, as stored), how far
    /// into the cooldown it was when learned, and when that was.
    cooldown: Option<(Millis, Duration, Instant)>,
}

impl Guards {
    /// The store's latest pause not resumed (whatever its `until_ms`), read
    /// when the wall clock said `wall_now`, at `now`. `None`: no pause, or
    /// the pause was resumed.
    pub fn learn_pause(&mut self, pause: Option<Pause>, wall_now: Millis, now: Instant) {
        let Some(pause) = pause else {
            self.pause = None;
            return;
        };
        if self
            .pause
            .as_ref()
            .is_some_and(|(p, _)| p.id == pause.id && p.until_ms == pause.until_ms)
        {
            return;
        }
        let left = Duration::from_millis((pause.until_ms - wall_now).max(0) as u64);
        self.pause = Some((pause, now + left));
    }

    /// The last automatic rollback's start as stored (`None`: none yet),
    /// read when the wall clock said `wall_now`, at `now`. How long ago it
    /// was is read off the wall clock once, never less than zero.
    pub fn learn_cooldown(&mut self, start_ms: Option<Millis>, wall_now: Millis, now: Instant) {
        match (start_ms, self.cooldown) {
            (None, _) => self.cooldown = None,
            (Some(s), Some((known, _, _))) if s == known => {}
            (Some(s), _) => {
                let ago = Duration::from_millis((wall_now - s).max(0) as u64);
                self.cooldown = Some((s, ago, now));
            }
        }
    }

    /// The pause in force at `now`, if any.
    pub fn paused(&self, now: Instant) -> Option<&Pause> {
        self.pause
            .as_ref()
            .filter(|(_, deadline)| now < *deadline)
            .map(|(p, _)| p)
    }

    /// Why an automatic rollback may not start at `now` (a pause, or less
    /// than `cooldown` since the last one), if it may not.
    pub fn hold(&self, now: Instant, cooldown: Duration) -> Option<String> {
        if let Some(p) = self.paused(now) {
            return Some(format!(
                "automatic rollbacks are paused until {}: {}",
                format_ms(p.until_ms),
                p.reason
            ));
        }
        let (start, _, _) = self.cooldown?;
        self.cooldown_left(now, cooldown).map(|_| {
            format!(
                "in cooldown: the last automatic rollback was at {}, cooldown is {}",
                format_ms(start),
                humantime::format_duration(cooldown)
            )
        })
    }

    /// How much of a `cooldown` is left at `now`; `None` when none is.
    fn cooldown_left(&self, now: Instant, cooldown: Duration) -> Option<Duration> {
        let (_, ago, learned) = self.cooldown?;
        let since = ago + now.saturating_duration_since(learned);
        cooldown.checked_sub(since).filter(|left| !left.is_zero())
    }

    /// True once when a pause that was in force has ended (run out on the
    /// monotonic clock, or resumed), so a rollback it held back can be
    /// tried at once. Logs when a hold starts and ends.
    pub fn take_ended(&mut self, now: Instant) -> bool {
        let held = self.paused(now).map(|p| p.id);
        if held == self.held {
            return false;
        }
        match self.paused(now) {
            Some(p) => tracing::warn!(
                "automatic rollbacks are held until {} (pause #{}): {}",
                format_ms(p.until_ms),
                p.id,
                p.reason
            ),
            None => tracing::warn!(
                "the hold on automatic rollbacks ended (pause #{} {}); automatic rollbacks are armed",
                self.held.unwrap_or(0),
                if self.pause.is_some() {
                    "expired"
                } else {
                    "was resumed"
                }
            ),
        }
        let ended = self.held.is_some() && held.is_none();
        self.held = held;
        ended
    }
}

/// What holds automatic rollbacks, as a process that learns the stored
/// values now sees it: the pause in force and when the cooldown ends.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Holds {
    pub pause: Option<Pause>,
    /// Wall clock.
    pub cooldown_until: Option<Millis>,
}

/// What holds automatic rollbacks at the wall clock's `wall_now`, from the
/// stored values alone (the latest pause not resumed, the last automatic
/// rollback's start): [`Guards`] learning them at this moment and asked at
/// once. Pure: the instant it uses is only an origin.
pub fn holds_at(
    pause: Option<Pause>,
    cooldown_start_ms: Option<Millis>,
    cooldown: Duration,
    wall_now: Millis,
) -> Holds {
    let origin = Instant::now();
    let mut guards = Guards::default();
    guards.learn_pause(pause, wall_now, origin);
    guards.learn_cooldown(cooldown_start_ms, wall_now, origin);
    Holds {
        pause: guards.paused(origin).cloned(),
        cooldown_until: guards
            .cooldown_left(origin, cooldown)
            .map(|left| wall_now + duration_ms(left)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: Millis = 3_600_000;
    const WALL: Millis = 1_800_000_000_000;

    fn pause(id: i64, until_ms: Millis) -> Pause {
        Pause {
            id,
            at_ms: WALL,
            until_ms,
            reason: "deploying".into(),
        }
    }

    /// The store reads each pass with the wall clock as it is then: the
    /// same rows, whatever the clock says.
    #[tokio::test(start_paused = true)]
    async fn a_wall_clock_step_either_way_ends_no_pause_early_and_stretches_none() {
        for step in [HOUR, -HOUR] {
            let t0 = Instant::now();
            let mut g = Guards::default();
            // Paused for 10 minutes.
            g.learn_pause(Some(pause(1, WALL + 600_000)), WALL, t0);
            assert!(g.paused(t0).is_some());
            assert!(!g.take_ended(t0));
            // One minute on, the wall clock steps; the store still holds
            // the same pause, read again with the stepped clock.
            tokio::time::advance(Duration::from_secs(60)).await;
            let wall = WALL + 60_000 + step;
            g.learn_pause(Some(pause(1, WALL + 600_000)), wall, Instant::now());
            assert!(
                g.hold(Instant::now(), Duration::ZERO).is_some(),
                "step {step}"
            );
            assert!(!g.take_ended(Instant::now()));
            // Held until 10 minutes from the start, not a moment longer.
            tokio::time::advance(Duration::from_secs(539)).await;
            assert!(g.paused(Instant::now()).is_some(), "step {step}");
            assert!(!g.take_ended(Instant::now()));
            tokio::time::advance(Duration::from_secs(1)).await;
            assert!(g.paused(Instant::now()).is_none(), "step {step}");
            assert!(g.take_ended(Instant::now()));
            assert!(!g.take_ended(Instant::now()), "ended is said once");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_wall_clock_step_either_way_ends_no_cooldown_early_and_stretches_none() {
        let cooldown = Duration::from_secs(30 * 60);
        for step in [HOUR, -HOUR] {
            let mut g = Guards::default();
            // The last automatic rollback ran 5 minutes ago.
            g.learn_cooldown(Some(WALL - 300_000), WALL, Instant::now());
            let why = g.hold(Instant::now(), cooldown).expect("in cooldown");
            assert!(why.contains("in cooldown"), "{why}");
            tokio::time::advance(Duration::from_secs(60)).await;
            g.learn_cooldown(Some(WALL - 300_000), WALL + 60_000 + step, Instant::now());
            assert!(g.hold(Instant::now(), cooldown).is_some(), "step {step}");
            // 25 minutes after the rollback: still in; at 30, out.
            tokio::time::advance(Duration::from_secs(19 * 60)).await;
            assert!(g.hold(Instant::now(), cooldown).is_some(), "step {step}");
            tokio::time::advance(Duration::from_secs(5 * 60)).await;
            assert_eq!(g.hold(Instant::now(), cooldown), None, "step {step}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_resume_ends_the_pause_and_a_new_pause_gets_its_own_deadline() {
        let t0 = Instant::now();
        let mut g = Guards::default();
        g.learn_pause(Some(pause(1, WALL + 600_000)), WALL, t0);
        assert!(!g.take_ended(t0));
        g.learn_pause(None, WALL, t0);
        assert!(g.paused(t0).is_none());
        assert!(g.take_ended(t0));
        // Extended: a new row, a deadline from its own length.
        g.learn_pause(Some(pause(2, WALL + 120_000)), WALL, t0);
        assert!(g.paused(t0 + Duration::from_secs(119)).is_some());
        assert!(g.paused(t0 + Duration::from_secs(120)).is_none());
        // A pause already past when learned holds nothing.
        let mut g = Guards::default();
        g.learn_pause(Some(pause(3, WALL - 1)), WALL, t0);
        assert_eq!(g.hold(t0, Duration::ZERO), None);
        assert!(!g.take_ended(t0));
    }

    /// `status`'s answer is the daemon's at the moment it learns the values.
    #[test]
    fn holds_at_is_what_guards_say_on_learning_the_stored_values() {
        let cooldown = Duration::from_secs(30 * 60);
        // A pause still running holds; one ended does not.
        let held = holds_at(Some(pause(1, WALL + 60_000)), None, cooldown, WALL);
        assert_eq!(held.pause.map(|p| p.id), Some(1));
        assert_eq!(held.cooldown_until, None);
        assert_eq!(
            holds_at(Some(pause(1, WALL)), None, cooldown, WALL),
            Holds::default()
        );
        // The cooldown ends 30 minutes after the stored start...
        let started = WALL - 300_000;
        let held = holds_at(None, Some(started), cooldown, WALL);
        assert_eq!(held.cooldown_until, Some(started + 1_800_000));
        assert_eq!(
            holds_at(None, Some(WALL - 1_800_000), cooldown, WALL),
            Holds::default()
        );
        // ...and a start stored by a clock ahead counts from now, as the
        // daemon counts it.
        let held = holds_at(None, Some(WALL + HOUR), cooldown, WALL);
        assert_eq!(held.cooldown_until, Some(WALL + 1_800_000));
        // The same answers as the daemon's guards, whatever the values.
        for (until, start) in [
            (WALL - 1, WALL - 1_800_001),
            (WALL + 1, WALL - 1_799_999),
            (WALL + HOUR, WALL + HOUR),
        ] {
            let now = Instant::now();
            let mut g = Guards::default();
            g.learn_pause(Some(pause(7, until)), WALL, now);
            let paused = g.hold(now, Duration::ZERO).is_some();
            let mut g = Guards::default();
            g.learn_cooldown(Some(start), WALL, now);
            let cooling = g.hold(now, cooldown).is_some();
            let held = holds_at(Some(pause(7, until)), Some(start), cooldown, WALL);
            assert_eq!(
                (held.pause.is_some(), held.cooldown_until.is_some()),
                (paused, cooling),
                "until {until}, start {start}"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_cooldown_learned_from_a_clock_behind_the_stored_start_is_full() {
        let mut g = Guards::default();
        let cooldown = Duration::from_secs(60);
        // Stored by a clock an hour ahead: counted from now, not negative.
        g.learn_cooldown(Some(WALL + HOUR), WALL, Instant::now());
        tokio::time::advance(Duration::from_secs(59)).await;
        assert!(g.hold(Instant::now(), cooldown).is_some());
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(g.hold(Instant::now(), cooldown), None);
        // No rollback yet: no cooldown.
        g.learn_cooldown(None, WALL, Instant::now());
        assert_eq!(g.hold(Instant::now(), cooldown), None);
    }
}
