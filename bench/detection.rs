//! Benchmark of the defaults' two numbers (SPEC section 2, "fast and
//! quiet"): how fast a hard-down active color is rolled back, and how often
//! independent noise would roll it back.
//!
//! 1. Detection: the real `rollbackd run` (the binary this build made)
//!    watches two real HTTP servers on 127.0.0.1 with one health probe at
//!    1 s. Once it has seen blue healthy, after a random delay (so the fault
//!    lands at a random phase of the probe's interval), blue answers 503 to
//!    everything; the time until the daemon runs its rollback command is one
//!    trial. 20 trials per configuration, a fresh daemon and state each:
//!    the defaults, then the rule and cadence they replaced
//!    (`health_failures >= 3`, `confirm_interval = "off"`).
//! 2. Noise: `rollbackd replay --synthetic-noise 2% --for 7d` of the same
//!    configuration (no database), seeds 1 to 3: the rollbacks it would
//!    have requested.
//!
//! Run it in release mode (`cargo bench` uses the optimised profile):
//!
//! ```text
//! cargo bench --bench detection            # 20 trials per configuration
//! TRIALS=5 SEEDS=1 cargo bench --bench detection   # quicker
//! cargo test --bench detection              # the same on a debug build
//! ```
//!
//! Figures are written down in `docs/benchmarks.md`.

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use rand::Rng;

const BIN: &str = env!("CARGO_BIN_EXE_rollbackd");

/// One color: `/healthz` answers 200 "ok", or 503 once `down` (or never,
/// once `hung`); `hits` counts requests (to know the daemon is probing);
/// `failed_at` records when each 503 was answered (wall clock, to find the
/// sample that decided).
#[derive(Default)]
struct Health {
    down: AtomicBool,
    hung: AtomicBool,
    hits: AtomicU64,
    failed_at: std::sync::Mutex<Vec<f64>>,
}

/// The wall clock in seconds (the switch command writes `date +%s.%N`).
fn wall_s() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or_default()
}

async fn serve(health: Arc<Health>) -> String {
    let app = Router::new()
        .route(
            "/healthz",
            get(|State(h): State<Arc<Health>>| async move {
                h.hits.fetch_add(1, Ordering::SeqCst);
                if h.hung.load(Ordering::SeqCst) {
                    std::future::pending::<()>().await;
                }
                if h.down.load(Ordering::SeqCst) {
                    if let Ok(mut at) = h.failed_at.lock() {
                        at.push(wall_s());
                    }
                    (StatusCode::SERVICE_UNAVAILABLE, "down")
                } else {
                    (StatusCode::OK, "ok")
                }
            }),
        )
        .with_state(health);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind a loopback port");
    let url = format!("http://{}", listener.local_addr().expect("local address"));
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

fn config(dir: &Path, blue: &str, green: &str, probe_extra: &str, rules: &str) -> String {
    format!(
        r#"[daemon]
state_dir = "{state}"
listen = "off"
watch_config = false

[service]
name = "bench"

[colors.blue]
base_url = "{blue}"
[colors.green]
base_url = "{green}"

[[probe]]
name = "healthz"
kind = "http"
path = "/healthz"
interval = "1s"
health = true
{probe_extra}
{rules}
[rollback]
command = ["/bin/sh", "-c", "date +%s.%N >> {switched}", "switch", "{{to}}"]
verify_after = "5s"
"#,
        state = dir.join("state").display(),
        switched = dir.join("switched").display(),
    )
}

/// Poll `cond` every 2 ms for at most `limit`.
async fn until(limit: Duration, cond: impl Fn() -> bool) -> Option<Instant> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if cond() {
            return Some(Instant::now());
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    None
}

/// What one trial measured.
struct Trial {
    /// Fault -> switch command started, seconds.
    detected: f64,
    /// The sample that decided (the `streak`-th 503 answered) -> switch
    /// command started, seconds (503 faults only).
    decided: Option<f64>,
}

/// One trial: a fresh daemon with blue active; the fault (503, or a hang
/// when `hang`) at a random phase; the seconds until the rollback command
/// ran. `streak`: the failures the rule needs (which 503 decides).
async fn trial(probe_extra: &str, rules: &str, hang: bool, streak: usize) -> Option<Trial> {
    let blue = Arc::new(Health::default());
    let green = Arc::new(Health::default());
    let (blue_url, green_url) = (serve(blue.clone()).await, serve(green.clone()).await);
    let dir = tempfile::tempdir().ok()?;
    let path = dir.path().join("rollbackd.toml");
    std::fs::write(
        &path,
        config(dir.path(), &blue_url, &green_url, probe_extra, rules),
    )
    .ok()?;
    // v0 on green earlier (the version to roll back to), v1 live on blue.
    for (color, version) in [("green", "v0"), ("blue", "v1")] {
        let deployed = Command::new(BIN)
            .arg("--config")
            .arg(&path)
            .args(["deploy", "--color", color, "--version", version])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .ok()?;
        assert!(deployed.success(), "rollbackd deploy failed");
    }
    let mut daemon = Command::new(BIN)
        .arg("--config")
        .arg(&path)
        .args(["--log-format", "text", "run"])
        .env_remove("NOTIFY_SOCKET")
        .env_remove("JOURNAL_STREAM")
        .stdout(Stdio::null())
        // DAEMON_LOG=path keeps the last trial's daemon log there.
        .stderr(
            std::env::var("DAEMON_LOG")
                .ok()
                .and_then(|p| std::fs::File::create(p).ok())
                .map_or_else(Stdio::null, Stdio::from),
        )
        .spawn()
        .ok()?;
    // Blue seen healthy three times, then the fault at a random phase.
    let probing = until(Duration::from_secs(20), || {
        blue.hits.load(Ordering::SeqCst) >= 3
    })
    .await;
    let mut detected = None;
    if probing.is_some() {
        let phase = rand::thread_rng().gen_range(0..1000);
        tokio::time::sleep(Duration::from_millis(phase)).await;
        let switched = dir.path().join("switched");
        let fault = Instant::now();
        let fault_wall = wall_s();
        if hang {
            blue.hung.store(true, Ordering::SeqCst);
        } else {
            blue.down.store(true, Ordering::SeqCst);
        }
        // The command writes its start time; read it once it is there.
        let started = until(Duration::from_secs(30), || {
            std::fs::read_to_string(&switched)
                .ok()
                .and_then(|t| t.lines().next()?.trim().parse::<f64>().ok())
                .is_some()
        })
        .await;
        if started.is_some() {
            let at: f64 = std::fs::read_to_string(&switched)
                .ok()
                .and_then(|t| t.lines().next()?.trim().parse().ok())?;
            let decided = if hang {
                None
            } else {
                let failed = blue.failed_at.lock().ok()?.clone();
                failed.get(streak - 1).map(|d| at - d)
            };
            detected = Some(Trial {
                detected: at - fault_wall,
                decided,
            });
        }
        let _ = fault;
    }
    let _ = daemon.kill();
    let _ = daemon.wait();
    detected
}

fn median(sorted: &[f64]) -> f64 {
    let n = sorted.len();
    if n % 2 == 1 {
        sorted[n / 2]
    } else {
        (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
    }
}

/// Rollbacks `replay --synthetic-noise 2% --for 7d` would have requested.
fn noisy_week(probe_extra: &str, rules: &str, seed: u64) -> Option<(u32, String)> {
    let dir = tempfile::tempdir().ok()?;
    let path = dir.path().join("rollbackd.toml");
    let url = "http://127.0.0.1:9";
    std::fs::write(&path, config(dir.path(), url, url, probe_extra, rules)).ok()?;
    let out = Command::new(BIN)
        .arg("--config")
        .arg(&path)
        .args(["replay", "--synthetic-noise", "2%", "--for", "7d", "--seed"])
        .arg(seed.to_string())
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let last = text
        .lines()
        .find(|l| l.starts_with("would have requested a rollback"))?
        .to_owned();
    let n = last
        .trim_start_matches("would have requested a rollback ")
        .split(' ')
        .next()?
        .parse()
        .ok()?;
    Some((n, last))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let trials: usize = std::env::var("TRIALS")
        .ok()
        .and_then(|t| t.parse().ok())
        .unwrap_or(20);
    const THREE: &str = "[[rule]]\nseverity = \"critical\"\nwhen = \"health_failures >= 3\"\nwindow = \"10m\"\nmin_samples = 3\n";
    let configurations = [
        ("defaults (confirm 200ms, health_failures >= 5)", "", ""),
        (
            "previous defaults (no confirm, health_failures >= 3)",
            "confirm_interval = \"off\"",
            THREE,
        ),
    ];
    // (name, probe settings, rules, hang, failures the rule needs)
    let mut runs: Vec<(&str, &str, &str, bool, usize)> = vec![
        (
            "503, defaults (confirm 200ms, health_failures >= 5)",
            "",
            "",
            false,
            5,
        ),
        (
            "503, no confirm, health_failures >= 3",
            "confirm_interval = \"off\"",
            THREE,
            false,
            3,
        ),
        (
            "503, timeout 1s, confirm 200ms, health_failures >= 3",
            "timeout = \"1s\"",
            THREE,
            false,
            3,
        ),
        (
            "hang, timeout 1s, confirm 200ms, health_failures >= 3",
            "timeout = \"1s\"",
            THREE,
            true,
            3,
        ),
    ];
    if let Ok(only) = std::env::var("ONLY") {
        runs.retain(|r| r.0.contains(only.as_str()));
    }
    println!("one health probe at 1s, {trials} trials at a random phase");
    for (name, probe_extra, rules, hang, streak) in runs {
        let mut seen = Vec::new();
        let mut decided = Vec::new();
        let mut missed = 0;
        for _ in 0..trials {
            match trial(probe_extra, rules, hang, streak).await {
                Some(t) => {
                    seen.push(t.detected);
                    decided.extend(t.decided);
                }
                None => missed += 1,
            }
        }
        seen.sort_by(f64::total_cmp);
        decided.sort_by(f64::total_cmp);
        if seen.is_empty() {
            println!("  {name}: no rollback in any trial");
            continue;
        }
        println!(
            "  {name}: rolled back after median {:.2}s, min {:.2}s, max {:.2}s ({} trials{})",
            median(&seen),
            seen[0],
            seen[seen.len() - 1],
            seen.len(),
            if missed > 0 {
                format!(", {missed} without a rollback within 30s")
            } else {
                String::new()
            }
        );
        if !decided.is_empty() {
            println!(
                "    deciding sample -> switch command started: median {:.1} ms, min {:.1} ms, max {:.1} ms",
                median(&decided) * 1000.0,
                decided[0] * 1000.0,
                decided[decided.len() - 1] * 1000.0
            );
        }
    }
    let seeds: u64 = std::env::var("SEEDS")
        .ok()
        .and_then(|t| t.parse().ok())
        .unwrap_or(3);
    println!(
        "\na week of 2% independent failures on both colors (replay --synthetic-noise 2% --for 7d):"
    );
    for (name, probe_extra, rules) in configurations {
        for seed in 1..=seeds {
            match noisy_week(probe_extra, rules, seed) {
                Some((_, line)) => println!("  {name}, seed {seed}: {line}"),
                None => println!("  {name}, seed {seed}: replay failed"),
            }
        }
    }
}
