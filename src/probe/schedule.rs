//! When a probe runs: its own interval, on a beat shared by every probe (it
//! first runs on the wall clock's next whole second, or next multiple of an
//! interval shorter than that, and then every interval), so one wake-up of
//! the daemon serves all the probes that fall due together,
//! as one cycle of monit's does (each wake-up costs more than the request
//! it sends: probes spread over the second took 2.5 times the CPU, see
//! docs/benchmarks.md); a run never overlaps the previous one (the next
//! tick waits for it); ticks missed while a slow run went on are skipped,
//! not bunched; and after a failure, with `confirm_interval`, the probe
//! re-runs at that pace until the failure is confirmed (enough consecutive
//! failures) or cleared (a success), then returns to its interval on the
//! beat.
//!
//! [`drive`] is the loop, generic over "run once" and "hand the result on",
//! so it is tested on tokio's paused clock. It knows nothing of samples'
//! stamping (the daemon's job) or of what a probe checks. Each (probe,
//! color) gets its own task, so a slow probe never delays another.

use std::future::Future;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::{Instant, MissedTickBehavior};

use super::Outcome;
use crate::config::Probe;
use crate::model::SampleStatus;

/// The beat probes share: their first runs fall on the wall clock's whole
/// seconds (intervals that divide a second, on its fractions).
pub const BEAT: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Cadence {
    pub interval: Duration,
    pub confirm_interval: Option<Duration>,
    /// Confirming runs after a first failure (the streak the health rules
    /// need, minus the failure that started it).
    pub confirms: u32,
    /// Delay of the first run: until the beat.
    pub offset: Duration,
}

impl Cadence {
    /// The probe's cadence, its first run on the next beat.
    pub fn for_probe(probe: &Probe, confirms: u32) -> Cadence {
        Cadence::on_beat(probe, confirms, std::time::SystemTime::now())
    }

    /// The probe's cadence at wall-clock time `now`: the first run on the
    /// beat, the next multiple since the epoch of the interval or of
    /// [`BEAT`], whichever is shorter (now, if `now` is one). A probe that
    /// runs every few minutes still first runs within a second of its start.
    pub fn on_beat(probe: &Probe, confirms: u32, now: std::time::SystemTime) -> Cadence {
        let period = probe
            .interval
            .min(BEAT)
            .max(Duration::from_millis(1))
            .as_nanos();
        let since = now
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        let wait = (period - since % period) % period;
        Cadence {
            interval: probe.interval,
            confirm_interval: probe.confirm_interval,
            confirms,
            // Below the interval, which fits a u64 of nanoseconds.
            offset: Duration::from_nanos(u64::try_from(wait).unwrap_or(0)),
        }
    }
}

/// The first beat at or after `at`, on the grid `first + k x period`.
fn beat_at_or_after(first: Instant, period: Duration, at: Instant) -> Instant {
    if at <= first {
        return first;
    }
    let period_ns = period.as_nanos().max(1);
    let behind = (at - first).as_nanos();
    let ahead = behind.div_ceil(period_ns) * period_ns;
    first + Duration::from_nanos(u64::try_from(ahead).unwrap_or(u64::MAX))
}

/// Whether an outcome starts (or continues) a confirmation: a failure or a
/// timeout. "No data" is not a failure and does not speed the probe up.
fn is_failure(o: &Outcome) -> bool {
    matches!(
        o.status,
        SampleStatus::Failed | SampleStatus::Timeout | SampleStatus::Unreachable
    )
}

/// The most runs of one probe on one color in flight at once (confirm runs
/// against a hung service overlap; each ends at its own timeout).
pub const MAX_IN_FLIGHT: usize = 8;

/// One run in flight, and its outcome once it has one.
struct Run<F> {
    started: Instant,
    /// A confirm run, or a run a suspicion already covered: its running
    /// long no longer starts one.
    confirm: bool,
    run: std::pin::Pin<Box<F>>,
    outcome: Option<Outcome>,
}

/// Run a probe on its cadence until `stop` changes (or its sender is gone)
/// or `emit` returns false (nobody takes results any more).
///
/// Confirm runs do not queue: once a run failed, or a run has been in
/// flight longer than `confirm_interval` without an answer (a hang shows
/// itself that way long before its timeout), a new run starts every
/// `confirm_interval` without waiting for the earlier ones, up to
/// `confirms` of them and [`MAX_IN_FLIGHT`] at once. Each run still fails
/// only at its own timeout, so a service that answers within it never
/// fails by this. The suspicion ends with an answer that is not a failure
/// (late or not), or once `confirms` more failures confirmed it; then the
/// interval resumes, on the beat, at least half an interval from there. Outcomes are handed on in the
/// order their runs started (a later run's answer waits for the earlier
/// run's end), so the matrix sees the freshest run last.
pub async fn drive<P, PF, E, EF>(
    cadence: Cadence,
    mut probe_once: P,
    mut emit: E,
    mut stop: watch::Receiver<bool>,
) where
    P: FnMut() -> PF,
    PF: Future<Output = Outcome>,
    E: FnMut(Outcome) -> EF,
    EF: Future<Output = bool>,
{
    let period = cadence.interval.max(Duration::from_millis(1));
    let first = Instant::now() + cadence.offset;
    let mut ticker = tokio::time::interval_at(first, period);
    // After a suspicion, the interval resumes on the beat, at least half
    // an interval away.
    let rejoin = |ticker: &mut tokio::time::Interval| {
        ticker.reset_at(beat_at_or_after(first, period, Instant::now() + period / 2));
    };
    ticker.set_missed_tick_behavior(MissedTickBehavior::Skip);
    let mut runs: std::collections::VecDeque<Run<PF>> = std::collections::VecDeque::new();
    // While a failure is suspected: failures seen, confirm runs started,
    // and when the next one starts.
    let mut suspected = false;
    let mut failures = 0u32;
    let mut started = 0u32;
    let mut next_confirm: Option<Instant> = None;
    loop {
        // A run on the interval in flight longer than the confirm interval
        // is suspect.
        let overdue = match (cadence.confirm_interval, suspected) {
            (Some(pace), false) => runs
                .iter()
                .find(|r| r.outcome.is_none() && !r.confirm)
                .map(|r| r.started + pace),
            _ => None,
        };
        let wake = match (next_confirm, overdue) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let (idle, busy) = (runs.is_empty(), !runs.is_empty());
        tokio::select! {
            at = ticker.tick(), if idle && !suspected => {
                // A tick that fell due while the previous run went on is
                // skipped: the next run starts on the next whole tick.
                if at.elapsed() > period / 2 {
                    continue;
                }
                runs.push_back(Run { started: Instant::now(), confirm: false, run: Box::pin(probe_once()), outcome: None });
            }
            _ = any_done(&mut runs), if busy => {
                // An answer that is not a failure, late or not, clears the
                // suspicion at once (even before earlier runs end).
                let answered = runs
                    .iter()
                    .any(|r| r.outcome.as_ref().is_some_and(|o| !is_failure(o)));
                if suspected && answered {
                    suspected = false;
                    next_confirm = None;
                    rejoin(&mut ticker);
                }
                while runs.front().is_some_and(|r| r.outcome.is_some()) {
                    let Some(outcome) = runs.pop_front().and_then(|r| r.outcome) else { break };
                    let failed = is_failure(&outcome);
                    if !emit(outcome).await {
                        return;
                    }
                    // A failure suspects the service, unless a later run
                    // already answered.
                    let later_answered = runs
                        .iter()
                        .any(|r| r.outcome.as_ref().is_some_and(|o| !is_failure(o)));
                    let Some(pace) = cadence.confirm_interval else { continue };
                    if !failed || later_answered {
                        continue;
                    }
                    if !suspected {
                        suspected = true;
                        failures = 0;
                        started = 0;
                    }
                    failures += 1;
                    if failures > cadence.confirms {
                        // Confirmed: back to the interval.
                        suspected = false;
                        next_confirm = None;
                        rejoin(&mut ticker);
                    } else if next_confirm.is_none() && started < cadence.confirms {
                        next_confirm = Some(Instant::now() + pace);
                    }
                }
            }
            _ = sleep_until(wake), if wake.is_some() => {
                let Some(pace) = cadence.confirm_interval else { continue };
                if !suspected {
                    // A run has gone unanswered for a confirm interval.
                    suspected = true;
                    failures = 0;
                    started = 0;
                    for r in runs.iter_mut() {
                        r.confirm = true;
                    }
                }
                if started < cadence.confirms && runs.len() < MAX_IN_FLIGHT {
                    runs.push_back(Run { started: Instant::now(), confirm: true, run: Box::pin(probe_once()), outcome: None });
                    started += 1;
                }
                next_confirm = (started < cadence.confirms).then(|| Instant::now() + pace);
            }
            _ = stop.changed() => return,
        }
    }
}

/// Polls every run in flight; resolves once one more has its outcome.
async fn any_done<F: Future<Output = Outcome>>(runs: &mut std::collections::VecDeque<Run<F>>) {
    std::future::poll_fn(|cx| {
        let mut done = false;
        for r in runs.iter_mut().filter(|r| r.outcome.is_none()) {
            if let std::task::Poll::Ready(o) = r.run.as_mut().poll(cx) {
                r.outcome = Some(o);
                done = true;
            }
        }
        if done {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await
}

/// Sleep until `at` (never, for `None`).
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    type Log = Arc<Mutex<Vec<(Duration, Duration)>>>;

    /// A probe that takes `takes` and answers with the next scripted status
    /// (the last one repeats); it logs (start, end) relative to `t0`.
    fn scripted(
        t0: Instant,
        takes: Duration,
        script: Vec<SampleStatus>,
        log: Log,
    ) -> impl FnMut() -> std::pin::Pin<Box<dyn Future<Output = Outcome> + Send>> {
        let mut n = 0;
        move || {
            let status = script[n.min(script.len() - 1)];
            n += 1;
            let log = log.clone();
            Box::pin(async move {
                let start = t0.elapsed();
                tokio::time::sleep(takes).await;
                log.lock().unwrap().push((start, t0.elapsed()));
                Outcome {
                    status,
                    latency_ms: None,
                    detail: String::new(),
                    requests: None,
                    errors: None,
                }
            })
        }
    }

    async fn run_for(
        cadence: Cadence,
        takes: Duration,
        script: Vec<SampleStatus>,
        for_: Duration,
    ) -> Vec<(Duration, Duration)> {
        let log: Log = Arc::default();
        let (stop_tx, stop) = watch::channel(false);
        let t0 = Instant::now();
        let task = tokio::spawn(drive(
            cadence,
            scripted(t0, takes, script, log.clone()),
            |_| async { true },
            stop,
        ));
        tokio::time::sleep(for_).await;
        stop_tx.send(true).unwrap();
        task.await.unwrap();
        log.lock().unwrap().clone()
    }

    fn cadence(interval_ms: u64, confirm_ms: Option<u64>) -> Cadence {
        Cadence {
            interval: Duration::from_millis(interval_ms),
            confirm_interval: confirm_ms.map(Duration::from_millis),
            confirms: 2,
            offset: Duration::ZERO,
        }
    }

    fn starts_ms(runs: &[(Duration, Duration)]) -> Vec<u128> {
        runs.iter().map(|r| r.0.as_millis()).collect()
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_probe_never_overlaps_itself_and_skips_missed_ticks() {
        // Every 1 s, but each run takes 2.5 s.
        let runs = run_for(
            cadence(1000, None),
            Duration::from_millis(2500),
            vec![SampleStatus::Ok],
            Duration::from_millis(11_900),
        )
        .await;
        for pair in runs.windows(2) {
            assert!(pair[1].0 >= pair[0].1, "overlap: {runs:?}");
        }
        // Missed ticks skipped: the next run waits for the next whole tick
        // (3 s later), not at once (2.5 s later) as bunched ticks would.
        assert_eq!(starts_ms(&runs), vec![0, 3000, 6000, 9000]);
    }

    #[tokio::test(start_paused = true)]
    async fn probes_keep_their_interval_and_a_slow_one_delays_no_other() {
        let log_fast: Log = Arc::default();
        let log_slow: Log = Arc::default();
        let (stop_tx, stop) = watch::channel(false);
        let t0 = Instant::now();
        let fast = tokio::spawn(drive(
            cadence(500, None),
            scripted(
                t0,
                Duration::from_millis(10),
                vec![SampleStatus::Ok],
                log_fast.clone(),
            ),
            |_| async { true },
            stop.clone(),
        ));
        let slow = tokio::spawn(drive(
            cadence(500, None),
            scripted(
                t0,
                Duration::from_secs(4),
                vec![SampleStatus::Ok],
                log_slow.clone(),
            ),
            |_| async { true },
            stop,
        ));
        tokio::time::sleep(Duration::from_millis(4900)).await;
        stop_tx.send(true).unwrap();
        fast.await.unwrap();
        slow.await.unwrap();
        let fast_starts = starts_ms(&log_fast.lock().unwrap());
        assert_eq!(fast_starts, (0..10).map(|i| i * 500).collect::<Vec<_>>());
        assert_eq!(log_slow.lock().unwrap().len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failure_is_confirmed_at_the_confirm_interval_then_the_interval_resumes() {
        use SampleStatus::*;
        // Interval 10 s, confirm every 200 ms: three failures, then fine.
        let runs = run_for(
            cadence(10_000, Some(200)),
            Duration::ZERO,
            vec![Failed, Timeout, Failed, Ok],
            Duration::from_millis(25_000),
        )
        .await;
        // The third failure lands 2 x 200 ms after the first, not 2 x 10 s.
        // Confirmed at 400 ms, the interval resumes on its beat (10 s).
        assert_eq!(starts_ms(&runs), vec![0, 200, 400, 10_000, 20_000]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_success_clears_the_confirmation_and_no_data_does_not_start_one() {
        use SampleStatus::*;
        let runs = run_for(
            cadence(10_000, Some(200)),
            Duration::ZERO,
            vec![Failed, Ok, NoData, NoData],
            Duration::from_millis(25_000),
        )
        .await;
        assert_eq!(starts_ms(&runs), vec![0, 200, 10_000, 20_000]);
    }

    #[tokio::test(start_paused = true)]
    async fn without_confirm_interval_a_failure_waits_for_the_interval() {
        let runs = run_for(
            cadence(1000, None),
            Duration::ZERO,
            vec![SampleStatus::Failed],
            Duration::from_millis(3500),
        )
        .await;
        assert_eq!(starts_ms(&runs), vec![0, 1000, 2000, 3000]);
    }

    #[tokio::test(start_paused = true)]
    async fn stop_ends_the_loop_even_mid_run() {
        let runs = run_for(
            cadence(1000, None),
            Duration::from_secs(60),
            vec![SampleStatus::Ok],
            Duration::from_millis(100),
        )
        .await;
        assert!(runs.is_empty(), "the run in flight was abandoned: {runs:?}");
    }

    /// Runs following `script` (status, how long the run takes; the last
    /// repeats) for `for_`: each run's start, and each outcome handed on
    /// with when, relative to the start.
    async fn run_script(
        cadence: Cadence,
        script: Vec<(SampleStatus, u64)>,
        for_: Duration,
    ) -> (Vec<u128>, Vec<(u128, SampleStatus)>) {
        let starts: Arc<Mutex<Vec<u128>>> = Arc::default();
        let emitted: Arc<Mutex<Vec<(u128, SampleStatus)>>> = Arc::default();
        let (stop_tx, stop) = watch::channel(false);
        let t0 = Instant::now();
        let mut n = 0;
        let probe = {
            let starts = starts.clone();
            move || {
                let (status, takes) = script[n.min(script.len() - 1)];
                n += 1;
                starts.lock().unwrap().push(t0.elapsed().as_millis());
                async move {
                    tokio::time::sleep(Duration::from_millis(takes)).await;
                    Outcome {
                        status,
                        latency_ms: None,
                        detail: String::new(),
                        requests: None,
                        errors: None,
                    }
                }
            }
        };
        let emit = {
            let emitted = emitted.clone();
            move |o: Outcome| {
                emitted
                    .lock()
                    .unwrap()
                    .push((t0.elapsed().as_millis(), o.status));
                async { true }
            }
        };
        let task = tokio::spawn(drive(cadence, probe, emit, stop));
        tokio::time::sleep(for_).await;
        stop_tx.send(true).unwrap();
        task.await.unwrap();
        let starts = starts.lock().unwrap().clone();
        let emitted = emitted.lock().unwrap().clone();
        (starts, emitted)
    }

    #[tokio::test(start_paused = true)]
    async fn against_a_hang_confirm_runs_start_without_waiting_and_each_fails_at_its_timeout() {
        use SampleStatus::*;
        // Interval 10 s, confirm 200 ms, a 1 s timeout: the service hangs.
        let (starts, emitted) = run_script(
            cadence(10_000, Some(200)),
            vec![(Timeout, 1000)],
            Duration::from_millis(11_500),
        )
        .await;
        // Suspect after 200 ms unanswered: confirm runs at 200 and 400,
        // then, confirmed (1.4 s), the interval on its beat (10 s), where
        // the hang is suspected again.
        assert_eq!(starts, vec![0, 200, 400, 10_000, 10_200, 10_400]);
        assert_eq!(
            emitted,
            vec![
                (1000, Timeout),
                (1200, Timeout),
                (1400, Timeout),
                (11_000, Timeout),
                (11_200, Timeout),
                (11_400, Timeout)
            ],
            "the third failure lands at timeout + 2 x confirm"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_service_that_answers_within_its_timeout_never_fails_by_this() {
        use SampleStatus::*;
        let (starts, emitted) = run_script(
            cadence(10_000, Some(200)),
            vec![(Ok, 500)],
            Duration::from_millis(10_100),
        )
        .await;
        // Suspected at 200 ms, cleared by the late answer at 500 ms; the
        // interval resumes on its beat.
        assert_eq!(starts, vec![0, 200, 400, 10_000]);
        assert_eq!(emitted, vec![(500, Ok), (700, Ok), (900, Ok)]);
    }

    #[tokio::test(start_paused = true)]
    async fn outcomes_are_handed_on_in_the_order_their_runs_started() {
        use SampleStatus::*;
        // The first run hangs to its timeout; the confirm run started
        // after it answers at once and clears the suspicion (no more
        // confirm runs), but its answer waits for the first run's end, so
        // the freshest run is seen last.
        let (starts, emitted) = run_script(
            cadence(10_000, Some(200)),
            vec![(Timeout, 1000), (Ok, 0)],
            Duration::from_millis(1_500),
        )
        .await;
        assert_eq!(starts, vec![0, 200]);
        assert_eq!(emitted, vec![(1000, Timeout), (1000, Ok)]);
    }

    #[tokio::test(start_paused = true)]
    async fn runs_in_flight_are_bounded() {
        use SampleStatus::*;
        let mut c = cadence(60_000, Some(200));
        c.confirms = 30;
        let (starts, _) =
            run_script(c, vec![(Timeout, 30_000)], Duration::from_millis(5_000)).await;
        assert_eq!(starts.len(), MAX_IN_FLIGHT, "{starts:?}");
    }

    #[test]
    fn probes_started_at_different_moments_share_the_beat() {
        use std::time::UNIX_EPOCH;
        let probe = |interval_ms| crate::config::Probe {
            name: "p".into(),
            scope: crate::config::Scope::PerColor,
            interval: Duration::from_millis(interval_ms),
            timeout: Duration::from_secs(1),
            confirm_interval: None,
            health: false,
            check: crate::config::Check::Tcp(crate::config::TcpCheck { address: None }),
        };
        // Started 1.25 s, 1.7 s and 2 s past a whole 10 s: the 1 s probes'
        // first runs land on whole seconds, and so does a 2 min one's; a
        // 250 ms one on a quarter second.
        let at = |ms: u64| UNIX_EPOCH + Duration::from_millis(1_700_000_000_000 + ms);
        let first = |interval_ms: u64, ms: u64| {
            let c = Cadence::on_beat(&probe(interval_ms), 2, at(ms));
            (at(ms) + c.offset)
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_millis()
                - 1_700_000_000_000
        };
        assert_eq!(first(1000, 1250), 2000);
        assert_eq!(first(1000, 1700), 2000);
        assert_eq!(first(1000, 2000), 2000, "on the beat: at once");
        assert_eq!(first(120_000, 1250), 2000);
        assert_eq!(first(250, 1260), 1500);
        assert!(Cadence::on_beat(&probe(1000), 2, at(1)).offset < Duration::from_secs(1));
    }

    #[test]
    fn a_probe_rejoins_the_beat_at_or_after_a_moment() {
        let t0 = Instant::now();
        let p = Duration::from_millis(1000);
        let ms = |d: u64| t0 + Duration::from_millis(d);
        assert_eq!(beat_at_or_after(t0, p, t0), t0);
        assert_eq!(beat_at_or_after(t0, p, ms(1)), ms(1000));
        assert_eq!(beat_at_or_after(t0, p, ms(2000)), ms(2000));
        assert_eq!(beat_at_or_after(t0, p, ms(2001)), ms(3000));
    }
}
