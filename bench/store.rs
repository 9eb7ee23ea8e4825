//! Benchmark of the sample store at scale (issue 18, point 4):
//!
//! 1. Writer: the daemon's batching writer (`writer::Writer`, its default
//!    batch window and size) takes samples of 10 probes on two colors from
//!    its channel as fast as it commits them (at most 50,000 ahead: its
//!    buffer drops beyond 100,000 by design); samples per second until all
//!    are committed, none dropped.
//! 2. Size: a day of one probe at 1 s on both colors (172,800 samples, one
//!    failure in 200) in the daemon's batches: bytes per raw sample on
//!    disk (file growth after a WAL checkpoint, indexes included), then
//!    the same day after roll-up (`retention::run_once`): bytes per probe
//!    per day.
//! 3. Replay: 1,000,000 samples (100 probes on two colors at 1 s, about
//!    83 minutes) stored, then the real `rollbackd replay` over them with
//!    the default rules: samples per second (wall time of the command,
//!    start-up included) and the command's peak RSS.
//!
//! ```text
//! cargo bench --bench store                  # the figures in docs/benchmarks.md
//! REPLAY_SAMPLES=200000 cargo bench --bench store   # quicker
//! ```

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rollbackd::daemon::writer::Writer;
use rollbackd::model::{Color, Millis, Sample, SampleStatus};
use rollbackd::store::Store;

const BIN: &str = env!("CARGO_BIN_EXE_rollbackd");

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Sample `i` of `probes` probes on two colors at 1 s from `start`: the
/// samples of one second land within 20 ms of each other, one in `fail_every`
/// fails with a short detail text.
fn sample(i: usize, probes: usize, start: Millis, fail_every: usize) -> Sample {
    let series = i % (probes * 2);
    let second = (i / (probes * 2)) as Millis;
    let failed = i % fail_every == fail_every - 1;
    Sample {
        at_ms: start + second * 1000 + (series as Millis * 20) / (probes as Millis * 2),
        probe: format!("probe{}", series / 2),
        color: Some(if series % 2 == 0 {
            Color::Blue
        } else {
            Color::Green
        }),
        deployment: Some(if series % 2 == 0 { 2 } else { 1 }),
        ok: !failed,
        latency_ms: Some(0.4 + (i % 97) as f64 * 0.031),
        status: if failed {
            SampleStatus::Failed
        } else {
            SampleStatus::Ok
        },
        detail: if failed {
            "HTTP 503 (wanted 200)".into()
        } else {
            String::new()
        },
        requests: None,
        errors: None,
    }
}

async fn writer_throughput(dir: &Path, n: usize) -> f64 {
    let store = Store::open_dir(dir).await.expect("open the store");
    let (tx, rx) = tokio::sync::mpsc::channel(10_000);
    let writer = Writer::default();
    let stats = writer.stats();
    let start_ms = 1_790_000_000_000;
    let samples: Vec<Sample> = (0..n).map(|i| sample(i, 10, start_ms, 200)).collect();
    let started = Instant::now();
    let task = tokio::spawn(writer.run(store.clone(), rx));
    // Offered as fast as the writer takes them, never more than its
    // buffer holds (beyond it the writer drops by design): the sustained
    // rate, not a burst into memory.
    let ahead = 50_000u64;
    for (i, s) in samples.into_iter().enumerate() {
        while i as u64 >= stats.written.load(std::sync::atomic::Ordering::Relaxed) + ahead {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        tx.send(s).await.expect("the writer runs");
    }
    drop(tx);
    let dropped = task.await.expect("the writer ends");
    let secs = started.elapsed().as_secs_f64();
    assert_eq!(dropped, 0, "the writer dropped samples");
    assert_eq!(
        stats.written.load(std::sync::atomic::Ordering::Relaxed),
        n as u64
    );
    store.close().await;
    n as f64 / secs
}

/// (bytes per raw sample, bytes of the day after roll-up)
async fn size_per_day(dir: &Path) -> (f64, f64) {
    let store = Store::open_dir(dir).await.expect("open the store");
    store.compact().await.expect("compact");
    let empty = store.size_bytes();
    let day = 86_400 * 2;
    let start_ms = 1_790_000_000_000;
    let samples: Vec<Sample> = (0..day).map(|i| sample(i, 1, start_ms, 200)).collect();
    for batch in samples.chunks(500) {
        store.insert_samples(batch).await.expect("insert");
    }
    store.compact().await.expect("compact");
    let raw = (store.size_bytes() - empty) as f64 / day as f64;
    rollbackd::daemon::retention::run_once(
        &store,
        start_ms + 86_400_000 + 60_000,
        Duration::ZERO,
        Duration::from_secs(365 * 86_400),
    )
    .await
    .expect("roll up");
    let report = store.compact().await.expect("compact");
    let rolled = report.size_bytes.saturating_sub(empty) as f64;
    store.close().await;
    (raw, rolled)
}

fn config(dir: &Path) -> String {
    format!(
        r#"[daemon]
state_dir = "{state}"
listen = "off"
watch_config = false

[service]
name = "bench"

[colors.blue]
base_url = "http://127.0.0.1:9"
[colors.green]
base_url = "http://127.0.0.1:9"

[[probe]]
name = "probe0"
kind = "http"
path = "/healthz"
interval = "1s"
health = true

[rollback]
command = ["/bin/true"]
"#,
        state = dir.join("state").display(),
    )
}

/// (samples per second, peak RSS in MiB) of `rollbackd replay` over `n`
/// stored samples.
async fn replay_throughput(dir: &Path, n: usize) -> (f64, f64) {
    std::fs::create_dir_all(dir).expect("make the bench directory");
    let path = dir.join("rollbackd.toml");
    std::fs::write(&path, config(dir)).expect("write the config");
    let store = Store::open_dir(&dir.join("state"))
        .await
        .expect("open the store");
    let probes = 100;
    let seconds = n / (probes * 2);
    let start_ms = rollbackd::model::now_ms() - seconds as Millis * 1000 - 60_000;
    let mut batch = Vec::with_capacity(20_000);
    for i in 0..n {
        batch.push(sample(i, probes, start_ms, 500));
        if batch.len() == 20_000 {
            store.insert_samples(&batch).await.expect("insert");
            batch.clear();
        }
    }
    store.insert_samples(&batch).await.expect("insert");
    store.compact().await.expect("compact");
    // The database's part alone: every sample streamed and decoded.
    let started = Instant::now();
    let mut pages = store.sample_pages(0).await.expect("read");
    let mut streamed = 0usize;
    while let Some(page) = pages.next_page().await.expect("a page") {
        streamed += page.len();
    }
    assert_eq!(streamed, n);
    println!(
        "store: {n} samples streamed from the database at {:.0} samples/s",
        n as f64 / started.elapsed().as_secs_f64()
    );
    store.close().await;
    let since = format!("{}s", seconds + 120);
    let started = Instant::now();
    let out = Command::new(BIN)
        .arg("--config")
        .arg(&path)
        .args(["replay", "--since", &since])
        .stderr(Stdio::inherit())
        .output()
        .expect("run rollbackd replay");
    let secs = started.elapsed().as_secs_f64();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "replay failed: {text}");
    let header = text.lines().next().unwrap_or_default();
    assert!(
        header.contains(&format!("({n} samples)")),
        "replay saw other samples than stored: {header}"
    );
    let usage = nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_CHILDREN)
        .expect("getrusage");
    (n as f64 / secs, usage.max_rss() as f64 / 1024.0)
}

#[tokio::main]
async fn main() {
    // `cargo test --bench store` runs it on a debug build: smaller.
    let quick = cfg!(debug_assertions);
    let write_n = env_or("WRITE_SAMPLES", if quick { 20_000 } else { 500_000 });
    let replay_n = env_or("REPLAY_SAMPLES", if quick { 20_000 } else { 1_000_000 });

    let dir = tempfile::tempdir().expect("temp dir");
    let w = writer_throughput(&dir.path().join("writer"), write_n).await;
    println!("writer: {write_n} samples, {w:.0} samples/s");

    let (raw, rolled) = size_per_day(&dir.path().join("size")).await;
    println!(
        "size: {raw:.1} bytes per raw sample (one probe, both colors at 1 s: {:.1} MB per day); {:.2} MB per probe per day after roll-up",
        raw * 172_800.0 / 1e6,
        rolled / 1e6
    );

    let (r, rss) = replay_throughput(&dir.path().join("replay"), replay_n).await;
    println!("replay: {replay_n} samples, {r:.0} samples/s, peak RSS {rss:.1} MiB");
}
