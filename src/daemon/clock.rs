//! The daemon's clock for durations: monotonic, and aware of the gaps in
//! its own running.
//!
//! The matrix reads no clock: the daemon hands it times from this [`Clock`]
//! instead of the wall clock, so a wall-clock jump (NTP stepping, an
//! operator's `date -s`) moves no window and no `for` hold. Its
//! milliseconds start at the wall-clock time the daemon started (so the
//! windows rebuilt from stored samples line up), then advance with the
//! monotonic clock plus the time the host was suspended (CLOCK_BOOTTIME
//! counts it, CLOCK_MONOTONIC does not): samples taken before a suspend are
//! as old as they really are.
//!
//! [`Clock::wake`] is called on every turn of the work loop, which never
//! sleeps longer than its housekeeping period while it runs. A turn that
//! comes far later than that (more than [`gap_threshold`]) is a gap in the
//! daemon's own running: frozen (SIGSTOP), suspended, or starved of CPU.
//! What is stored and shown stays on the wall clock; this owns no IO.

use std::time::Duration;

use tokio::time::Instant;

use crate::model::Millis;

/// The least gap that counts, whatever the loop's period.
pub const MIN_GAP: Duration = Duration::from_secs(2);

/// A gap is a turn more than three periods late, and at least [`MIN_GAP`]:
/// a busy host delays a turn by milliseconds, not seconds.
pub fn gap_threshold(period: Duration) -> Duration {
    (period * 3).max(MIN_GAP)
}

/// CLOCK_BOOTTIME (monotonic, counting suspend), when the host has it.
pub fn boottime() -> Option<Duration> {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME)
        .ok()
        .map(Duration::from)
}

#[derive(Debug, Clone)]
pub struct Clock {
    start: Instant,
    start_ms: Millis,
    threshold: Duration,
    last: Instant,
    last_boot: Option<Duration>,
    /// Time suspended so far (boot time elapsed beyond monotonic time).
    suspended: Duration,
}

impl Clock {
    /// A clock starting at `start_ms` (the wall clock now) and `now`; the
    /// loop turns at least every `period`.
    pub fn new(start_ms: Millis, now: Instant, boot: Option<Duration>, period: Duration) -> Clock {
        Clock {
            start: now,
            start_ms,
            threshold: gap_threshold(period),
            last: now,
            last_boot: boot,
            suspended: Duration::ZERO,
        }
    }

    /// `at` on this clock, in milliseconds.
    pub fn ms(&self, at: Instant) -> Millis {
        let elapsed = at.saturating_duration_since(self.start) + self.suspended;
        self.start_ms + elapsed.as_millis() as Millis
    }

    /// The instant at which this clock reads `ms`, seen from `now` (never
    /// before `now`): when to wake for a change the matrix says is due.
    pub fn instant_of(&self, ms: Millis, now: Instant) -> Instant {
        let ahead = ms.saturating_sub(self.ms(now)).max(0);
        now + Duration::from_millis(ahead as u64)
    }

    /// Where a sample stamped `stamped_ms` on the wall clock, arriving at
    /// `arrived` when the wall clock reads `wall_now`, sits on this clock.
    /// Samples are stamped as they are handed on, so the age is the time
    /// they waited to be read (microseconds; a whole freeze if the daemon
    /// was stopped in between); it is bounded by the time since the start,
    /// and a wall clock that stepped back makes it zero, not negative.
    pub fn sample_ms(&self, stamped_ms: Millis, wall_now: Millis, arrived: Instant) -> Millis {
        let at = self.ms(arrived);
        let age = (wall_now - stamped_ms).clamp(0, (at - self.start_ms).max(0));
        at - age
    }

    /// The loop starts waiting at `now`: what it spent on its own work
    /// since the last turn (a slow database read, a full queue) is not a
    /// gap in its running. Time suspended meanwhile still counts.
    pub fn settle(&mut self, now: Instant, boot: Option<Duration>) {
        let _ = self.wake(now, boot);
    }

    /// A turn of the loop at `now` (`boot`: CLOCK_BOOTTIME now). Returns
    /// how long the daemon was not running when this turn comes after a
    /// gap, else `None`.
    pub fn wake(&mut self, now: Instant, boot: Option<Duration>) -> Option<Duration> {
        let mono = now.saturating_duration_since(self.last);
        let real = match (self.last_boot, boot) {
            (Some(before), Some(after)) => after.saturating_sub(before).max(mono),
            _ => mono,
        };
        self.suspended += real - mono;
        self.last = now;
        self.last_boot = boot;
        (real > self.threshold).then_some(real)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PERIOD: Duration = Duration::from_millis(250);

    #[tokio::test(start_paused = true)]
    async fn turns_at_the_loops_pace_are_no_gap_and_a_freeze_is() {
        let t0 = Instant::now();
        let mut clock = Clock::new(1_000_000, t0, None, PERIOD);
        for _ in 0..20 {
            tokio::time::advance(PERIOD).await;
            assert_eq!(clock.wake(Instant::now(), None), None);
        }
        // A loaded host: late by a second, still no gap.
        tokio::time::advance(Duration::from_millis(1250)).await;
        assert_eq!(clock.wake(Instant::now(), None), None);
        // Frozen for 30 s.
        tokio::time::advance(Duration::from_secs(30)).await;
        assert_eq!(
            clock.wake(Instant::now(), None),
            Some(Duration::from_secs(30))
        );
        assert_eq!(clock.ms(Instant::now()), 1_000_000 + 5_000 + 1_250 + 30_000);
    }

    #[tokio::test(start_paused = true)]
    async fn the_loops_own_slow_work_is_no_gap() {
        let mut clock = Clock::new(0, Instant::now(), None, PERIOD);
        // A turn whose database read took 5 s, then the loop waits again.
        tokio::time::advance(Duration::from_secs(5)).await;
        clock.settle(Instant::now(), None);
        tokio::time::advance(PERIOD).await;
        assert_eq!(clock.wake(Instant::now(), None), None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_suspend_counts_as_a_gap_and_as_time_passed() {
        let t0 = Instant::now();
        let boot0 = Duration::from_secs(100);
        let mut clock = Clock::new(0, t0, Some(boot0), PERIOD);
        tokio::time::advance(PERIOD).await;
        // The monotonic clock saw 250 ms; the host was suspended an hour.
        let boot = boot0 + PERIOD + Duration::from_secs(3600);
        assert_eq!(
            clock.wake(Instant::now(), Some(boot)),
            Some(Duration::from_secs(3600) + PERIOD)
        );
        assert_eq!(clock.ms(Instant::now()), 3_600_250);
        tokio::time::advance(PERIOD).await;
        assert_eq!(clock.wake(Instant::now(), Some(boot + PERIOD)), None);
        assert_eq!(clock.ms(Instant::now()), 3_600_500);
    }

    #[tokio::test(start_paused = true)]
    async fn a_sample_keeps_its_age_and_a_wall_clock_step_moves_nothing() {
        let t0 = Instant::now();
        let clock = Clock::new(50_000, t0, None, PERIOD);
        tokio::time::advance(Duration::from_secs(10)).await;
        let now = Instant::now();
        // Stamped 3 ms ago (wall clock 1_000_000 then 1_000_003).
        assert_eq!(clock.sample_ms(1_000_000, 1_000_003, now), 59_997);
        // The wall clock stepped back an hour between stamp and read.
        assert_eq!(
            clock.sample_ms(1_000_000, 1_000_000 - 3_600_000, now),
            60_000
        );
        // ...or forward: no older than the clock's start.
        assert_eq!(
            clock.sample_ms(1_000_000, 1_000_000 + 3_600_000, now),
            50_000
        );
        assert_eq!(clock.instant_of(61_000, now), now + Duration::from_secs(1));
        assert_eq!(clock.instant_of(59_000, now), now);
    }

    #[test]
    fn the_threshold_is_three_periods_and_at_least_two_seconds() {
        assert_eq!(gap_threshold(PERIOD), MIN_GAP);
        assert_eq!(
            gap_threshold(Duration::from_secs(1)),
            Duration::from_secs(3)
        );
    }

    #[test]
    fn boottime_is_read_on_linux() {
        assert!(boottime().is_some());
    }
}
