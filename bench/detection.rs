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

/// One color: `/healthz` answers 200 "ok", or 503 once `down`; `hits`
/// counts requests (to know the daemon is probing).
#[derive(Default)]
struct Health {
    down: AtomicBool,
    hits: AtomicU64,
}

async fn serve(health: Arc<Health>) -> String {
    let app = Router::new()
        .route(
            "/healthz",
            get(|State(h): State<Arc<Health>>| async move {
                h.hits.fetch_add(1, Ordering::SeqCst);
                if h.down.load(Ordering::SeqCst) {
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
command = ["/bin/sh", "-c", "echo \"$1\" >> {switched}", "switch", "{{to}}"]
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

/// One trial: a fresh daemon with blue active; the fault at a random
/// phase; the seconds until the rollback command ran.
async fn trial(probe_extra: &str, rules: &str) -> Option<f64> {
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
        .stderr(Stdio::null())
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
        blue.down.store(true, Ordering::SeqCst);
        let fault = Instant::now();
        detected = until(Duration::from_secs(30), || switched.exists())
            .await
            .map(|at| (at - fault).as_secs_f64());
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
    let configurations = [
        ("defaults (confirm 200ms, health_failures >= 5)", "", ""),
        (
            "previous defaults (no confirm, health_failures >= 3)",
            "confirm_interval = \"off\"",
            "[[rule]]\nseverity = \"critical\"\nwhen = \"health_failures >= 3\"\nwindow = \"10m\"\nmin_samples = 3\n",
        ),
    ];
    println!("one health probe at 1s, hard down (HTTP 503), {trials} trials at a random phase");
    for (name, probe_extra, rules) in configurations {
        let mut seen = Vec::new();
        let mut missed = 0;
        for _ in 0..trials {
            match trial(probe_extra, rules).await {
                Some(s) => seen.push(s),
                None => missed += 1,
            }
        }
        seen.sort_by(f64::total_cmp);
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
