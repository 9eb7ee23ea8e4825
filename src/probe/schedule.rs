//! When a probe runs: its own interval, started at a small random offset so
//! probes do not fire together; a run never overlaps the previous one (the
//! next tick waits for it); ticks missed while a slow run went on are
//! skipped, not bunched; and after a failure, with `confirm_interval`, the
//! probe re-runs at that pace until the failure is confirmed (enough
//! consecutive failures) or cleared (a success), then returns to its
//! interval.
//!
//! [`drive`] is the loop, generic over "run once" and "hand the result on",
//! so it is tested on tokio's paused clock. It knows nothing of samples'
//! stamping (the daemon's job) or of what a probe checks. Each (probe,
//! color) gets its own task, so a slow probe never delays another.

use std::future::Future;
use std::time::Duration;

use rand::Rng;
use tokio::sync::watch;
use tokio::time::{Instant, MissedTickBehavior};

use super::Outcome;
use crate::config::Probe;
use crate::model::SampleStatus;

/// The most a probe's first run is delayed, so probes spread out.
pub const MAX_OFFSET: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Cadence {
    pub interval: Duration,
    pub confirm_interval: Option<Duration>,
    /// Confirming runs after a first failure (the streak the health rules
    /// need, minus the failure that started it).
    pub confirms: u32,
    /// Delay of the first run.
    pub offset: Duration,
}

impl Cadence {
    /// The probe's cadence with a random offset in `[0, min(interval, 1s)]`.
    pub fn for_probe(probe: &Probe, confirms: u32) -> Cadence {
        let cap = probe.interval.min(MAX_OFFSET);
        Cadence {
            interval: probe.interval,
            confirm_interval: probe.confirm_interval,
            confirms,
            offset: rand::thread_rng().gen_range(Duration::ZERO..=cap),
        }
    }
}

/// Whether an outcome starts (or continues) a confirmation: a failure or a
/// timeout. "No data" is not a failure and does not speed the probe up.
fn is_failure(o: &Outcome) -> bool {
    matches!(
        o.status,
        SampleStatus::Failed | SampleStatus::Timeout | SampleStatus::Unreachable
    )
}

/// Run a probe on its cadence until `stop` changes (or its sender is gone)
/// or `emit` returns false (nobody takes results any more).
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
    let mut ticker = tokio::time::interval_at(Instant::now() + cadence.offset, period);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Skip);
    loop {
        let due = tokio::select! {
            at = ticker.tick() => at,
            _ = stop.changed() => return,
        };
        // A tick that fell due while the previous run went on is skipped:
        // the next run starts on the next whole tick, not right away.
        if due.elapsed() > period / 2 {
            continue;
        }
        let mut confirming = 0;
        loop {
            let outcome = tokio::select! {
                o = probe_once() => o,
                _ = stop.changed() => return,
            };
            let failed = is_failure(&outcome);
            if !emit(outcome).await {
                return;
            }
            match cadence.confirm_interval {
                Some(pace) if failed && confirming < cadence.confirms => {
                    confirming += 1;
                    tokio::select! {
                        _ = tokio::time::sleep(pace) => {}
                        _ = stop.changed() => return,
                    }
                }
                _ => break,
            }
        }
        if confirming > 0 {
            // Back to the interval, counted from the end of the streak.
            ticker.reset();
        }
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
        assert_eq!(starts_ms(&runs), vec![0, 200, 400, 10_400, 20_400]);
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
        assert_eq!(starts_ms(&runs), vec![0, 200, 10_200, 20_200]);
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

    #[test]
    fn offsets_are_random_and_small() {
        let probe = crate::config::Probe {
            name: "p".into(),
            scope: crate::config::Scope::PerColor,
            interval: Duration::from_secs(5),
            timeout: Duration::from_secs(1),
            confirm_interval: None,
            health: false,
            check: crate::config::Check::Tcp(crate::config::TcpCheck { address: None }),
        };
        let offsets: Vec<Duration> = (0..50)
            .map(|_| Cadence::for_probe(&probe, 2).offset)
            .collect();
        assert!(offsets.iter().all(|o| *o <= MAX_OFFSET));
        assert!(offsets.iter().any(|o| *o != offsets[0]), "{offsets:?}");
    }
}
