//! The sample writer and retention against real SQLite files: a locked
//! database loses nothing, an overflow drops the oldest, the file stays
//! bounded over many days.

use super::*;

// ---------------------------------------------------------------------------
// the writer

pub(super) fn sample(i: i64) -> Sample {
    Sample::answer(1_000_000 + i, "healthz", Some(Color::Blue), true, 1.0)
}

/// Another connection holding the write lock, as a CLI command or a
/// backup might.
pub(super) async fn lock_database(path: &Path) -> sqlx::SqliteConnection {
    use sqlx::Connection;
    let options = sqlx::sqlite::SqliteConnectOptions::new().filename(path);
    let mut conn = sqlx::SqliteConnection::connect_with(&options)
        .await
        .unwrap();
    sqlx::query("BEGIN EXCLUSIVE")
        .execute(&mut conn)
        .await
        .unwrap();
    conn
}

pub(super) async fn unlock_database(mut conn: sqlx::SqliteConnection) {
    sqlx::query("COMMIT").execute(&mut conn).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
pub(super) async fn writer_loses_nothing_while_the_database_is_locked() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_dir(dir.path()).await.unwrap();
    let lock = lock_database(store.path()).await;
    let writer = Writer::default();
    let stats = writer.stats();
    let (tx, rx) = mpsc::channel(64);
    let task = tokio::spawn(writer.run(store.clone(), rx));
    // More samples than the channel holds: the writer must keep taking
    // them in while it cannot write, or this send would block forever.
    for i in 0..300 {
        tokio::time::timeout(Duration::from_secs(20), tx.send(sample(i)))
            .await
            .expect("the writer stopped taking samples while the database was locked")
            .unwrap();
    }
    common::wait_for("a refused write", Duration::from_secs(20), || async {
        stats.retries.load(std::sync::atomic::Ordering::Relaxed) >= 1
    })
    .await;
    assert_eq!(store.sample_count().await.unwrap(), 0);
    unlock_database(lock).await;
    common::wait_for("every sample stored", Duration::from_secs(20), || async {
        store.sample_count().await.unwrap() == 300
    })
    .await;
    drop(tx);
    assert_eq!(task.await.unwrap(), 0, "nothing dropped");
    let stored = store.samples(None, None, 0).await.unwrap();
    assert_eq!(
        stored.iter().map(|s| s.at_ms).collect::<Vec<_>>(),
        (0..300).map(|i| 1_000_000 + i).collect::<Vec<_>>()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
pub(super) async fn writer_overflow_drops_the_oldest_and_counts_them() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_dir(dir.path()).await.unwrap();
    let lock = lock_database(store.path()).await;
    let writer = Writer {
        buffer_cap: 50,
        ..Writer::default()
    };
    let stats = writer.stats();
    let (tx, rx) = mpsc::channel(16);
    let task = tokio::spawn(writer.run(store.clone(), rx));
    for i in 0..200 {
        tx.send(sample(i)).await.unwrap();
    }
    common::wait_for("150 counted drops", Duration::from_secs(30), || async {
        stats.dropped.load(std::sync::atomic::Ordering::Relaxed) == 150
    })
    .await;
    unlock_database(lock).await;
    drop(tx);
    assert_eq!(task.await.unwrap(), 150);
    let stored = store.samples(None, None, 0).await.unwrap();
    assert_eq!(
        stored.iter().map(|s| s.at_ms).collect::<Vec<_>>(),
        (150..200).map(|i| 1_000_000 + i).collect::<Vec<_>>(),
        "the newest samples are kept"
    );
}

// ---------------------------------------------------------------------------
// retention

pub(super) const MINUTE: i64 = 60_000;
pub(super) const DAY: i64 = 24 * 60 * MINUTE;

#[tokio::test]
pub(super) async fn retention_rolls_up_per_minute_then_deletes() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_dir(dir.path()).await.unwrap();
    let base = 1_700_000_000_000 / MINUTE * MINUTE;
    let mk = |at: i64, ok: bool, status: SampleStatus, latency: Option<f64>| Sample {
        at_ms: at,
        ok,
        status,
        latency_ms: latency,
        ..sample(0)
    };
    let batch = vec![
        mk(base + 1_000, true, SampleStatus::Ok, Some(10.0)),
        mk(base + 2_000, false, SampleStatus::Timeout, Some(30.0)),
        mk(base + 3_000, true, SampleStatus::Ok, Some(20.0)),
        mk(base + 4_000, false, SampleStatus::NoData, None),
        mk(base + MINUTE + 1, true, SampleStatus::Ok, Some(5.0)),
        // Younger than the cut-off: stays raw.
        mk(base + 2 * MINUTE + 1, true, SampleStatus::Ok, Some(7.0)),
    ];
    store.insert_samples(&batch).await.unwrap();
    // The cut-off falls inside the third minute: it is rounded down.
    let (report, _, compact) = rollbackd::daemon::retention::run_once(
        &store,
        base + 2 * MINUTE + 30_000 + DAY,
        Duration::from_secs(24 * 3600),
        Duration::from_secs(7 * 24 * 3600),
    )
    .await
    .unwrap();
    assert_eq!(report.deleted_samples, 5);
    assert!(compact.checkpointed);
    let left = store.samples(None, None, 0).await.unwrap();
    assert_eq!(left, vec![batch[5].clone()]);
    let rollups = store.rollups(None, None, 0).await.unwrap();
    assert_eq!(rollups.len(), 2, "{rollups:?}");
    let first = &rollups[0];
    assert_eq!(
        (first.minute_ms, first.count, first.failures, first.color),
        (base, 3, 1, Some(Color::Blue)),
        "no-data samples are not counted"
    );
    assert_eq!(
        (first.latency_avg, first.latency_p95, first.latency_max),
        (Some(20.0), Some(30.0), Some(30.0))
    );
    assert_eq!((rollups[1].minute_ms, rollups[1].count), (base + MINUTE, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
pub(super) async fn retention_keeps_the_database_file_bounded_over_many_days() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_dir(dir.path()).await.unwrap();
    let start = 1_700_000_000_000 / DAY * DAY;
    let days = 30;
    // Every 2 minutes, 4 probes on 2 colors: 5760 samples a day.
    let per_day: Vec<(i64, &str, Color)> = (0..720)
        .flat_map(|slot| {
            ["healthz", "traffic", "gateway", "errors"]
                .into_iter()
                .flat_map(move |p| Color::ALL.map(|c| (slot * 2 * MINUTE, p, c)))
        })
        .collect();
    let mut sizes = Vec::new();
    for day in 0..days {
        let day_start = start + day * DAY;
        let samples: Vec<Sample> = per_day
            .iter()
            .enumerate()
            .map(|(i, (offset, probe, color))| Sample {
                at_ms: day_start + offset + (i % 1000) as i64,
                probe: (*probe).into(),
                color: Some(*color),
                deployment: Some(1),
                ok: i % 17 != 0,
                latency_ms: Some((i % 250) as f64),
                status: if i % 17 != 0 {
                    SampleStatus::Ok
                } else {
                    SampleStatus::Failed
                },
                detail: "HTTP 200 with a little detail text".into(),
                requests: None,
                errors: None,
            })
            .collect();
        for chunk in samples.chunks(500) {
            store.insert_samples(chunk).await.unwrap();
        }
        rollbackd::daemon::retention::run_once(
            &store,
            day_start + DAY,
            Duration::from_secs(2 * 24 * 3600),
            Duration::from_secs(7 * 24 * 3600),
        )
        .await
        .unwrap();
        sizes.push(store.size_bytes());
    }
    let raw_left = store.sample_count().await.unwrap();
    assert!(raw_left <= 2 * 5760 + 1, "{raw_left} raw samples left");
    let rollups = store.rollups(None, None, 0).await.unwrap();
    assert!(rollups.len() <= 8 * 5760, "{} rollups left", rollups.len());
    // Once retention is in force (day 10), the file stops growing.
    let settled = sizes[10];
    let worst = *sizes[10..].iter().max().unwrap();
    eprintln!(
        "database size by day (KiB): {:?}",
        sizes.iter().map(|s| s / 1024).collect::<Vec<_>>()
    );
    assert!(
        worst <= settled + settled / 4,
        "the file kept growing: {} KiB at day 10, {} KiB at worst",
        settled / 1024,
        worst / 1024
    );
    assert!(worst < 16 << 20, "{} KiB", worst / 1024);
}
