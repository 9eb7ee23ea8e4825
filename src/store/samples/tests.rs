//! Tests of the sample verbs (`samples.rs`), in a file of their own so
//! that file stays under 1000 lines.

use super::*;

fn sample(at_ms: Millis, probe: &str, color: Option<Color>, status: SampleStatus) -> Sample {
    Sample {
        at_ms,
        probe: probe.into(),
        color,
        deployment: Some(3),
        ok: status == SampleStatus::Ok,
        latency_ms: Some(1.25 + (at_ms % 7) as f64),
        status,
        detail: if status == SampleStatus::Ok {
            String::new()
        } else {
            "HTTP 503".into()
        },
        requests: None,
        errors: None,
    }
}

#[tokio::test]
async fn samples_in_one_millisecond_are_all_kept_across_batches() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_dir(dir.path()).await.unwrap();
    let a = sample(1_000, "healthz", Some(Color::Blue), SampleStatus::Ok);
    let b = sample(1_000, "healthz", Some(Color::Blue), SampleStatus::Failed);
    let c = sample(1_000, "healthz", None, SampleStatus::Timeout);
    store.insert_samples(&[a.clone(), b.clone()]).await.unwrap();
    store.insert_samples(&[b.clone(), c.clone()]).await.unwrap();
    store
        .insert_samples(std::slice::from_ref(&a))
        .await
        .unwrap();
    assert_eq!(store.sample_count().await.unwrap(), 5);
    let blue = store
        .samples(Some("healthz"), Some(Color::Blue), 0)
        .await
        .unwrap();
    assert_eq!(blue, vec![a.clone(), b.clone(), b.clone(), a]);
    assert_eq!(
        store
            .first_failure_since(0, Some(Color::Green))
            .await
            .unwrap(),
        Some(c)
    );
}

#[tokio::test]
async fn pages_read_what_samples_reads_in_the_same_order() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_dir(dir.path()).await.unwrap();
    let statuses = [
        SampleStatus::Ok,
        SampleStatus::Failed,
        SampleStatus::Timeout,
        SampleStatus::Unreachable,
        SampleStatus::NoData,
    ];
    let all: Vec<Sample> = (0..(PAGE as i64 * 2 + 17))
        .map(|i| {
            let color = [Some(Color::Blue), Some(Color::Green), None][(i % 3) as usize];
            let mut s = sample(10_000 + i / 4, "p", color, statuses[(i % 5) as usize]);
            s.detail = format!("detail, {}; and more", i % 11);
            s.requests = (i % 2 == 0).then_some(i as f64 / 3.0);
            s.errors = (i % 4 == 0).then_some(0.001);
            s.latency_ms = (i % 6 != 0).then_some(i as f64 * 0.001);
            s
        })
        .collect();
    for batch in all.chunks(1000) {
        store.insert_samples(batch).await.unwrap();
    }
    let read = store.samples(None, None, 0).await.unwrap();
    assert_eq!(read.len(), all.len());
    let mut pages = store.sample_pages(10_000 + 3).await.unwrap();
    let mut paged = Vec::new();
    while let Some(page) = pages.next_page().await.unwrap() {
        assert!(page.len() <= PAGE);
        paged.extend(page);
    }
    let since: Vec<Sample> = read.into_iter().filter(|s| s.at_ms >= 10_003).collect();
    assert_eq!(paged.len(), since.len());
    if let Some(i) = (0..since.len()).find(|i| paged[*i] != since[*i]) {
        panic!("sample {i}: paged {:?}, read {:?}", paged[i], since[i]);
    }
}

#[tokio::test]
async fn rows_of_the_old_layout_are_migrated() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rollbackd.db");
    {
        let pool = sqlx::SqlitePool::connect_with(
            sqlx::sqlite::SqliteConnectOptions::new()
                .filename(&path)
                .create_if_missing(true),
        )
        .await
        .unwrap();
        let mut old = sqlx::migrate!("./migrations");
        old.migrations = old
            .migrations
            .iter()
            .filter(|m| m.version < 20261125450000)
            .cloned()
            .collect::<Vec<_>>()
            .into();
        old.run(&pool).await.unwrap();
        sqlx::query(
            "INSERT INTO samples (at_ms, probe, color, deployment_id, ok, latency_ms, status, detail, requests, errors) VALUES \
             (1000, 'healthz', 'blue', 1, 1, 2.5, 'ok', '', NULL, NULL), \
             (1000, 'healthz', 'blue', 1, 0, NULL, 'timeout', 'timed out', NULL, NULL), \
             (2000, 'users', NULL, NULL, 0, 3.0, 'failed', '5 of 10 failed', 10, 5), \
             (3000, 'healthz', 'green', 2, 1, NULL, 'no_data', '', NULL, NULL)",
        )
        .execute(&pool)
        .await
        .unwrap();
        pool.close().await;
    }
    let store = Store::open(&path).await.unwrap();
    let got = store.samples(None, None, 0).await.unwrap();
    let want =
        |at_ms, probe: &str, color, dep, ok, lat, status, detail: &str, re: Option<(f64, f64)>| {
            Sample {
                at_ms,
                probe: probe.into(),
                color,
                deployment: dep,
                ok,
                latency_ms: lat,
                status,
                detail: detail.into(),
                requests: re.map(|(r, _)| r),
                errors: re.map(|(_, e)| e),
            }
        };
    assert_eq!(
        got,
        vec![
            want(
                1000,
                "healthz",
                Some(Color::Blue),
                Some(1),
                true,
                Some(2.5),
                SampleStatus::Ok,
                "",
                None
            ),
            want(
                1000,
                "healthz",
                Some(Color::Blue),
                Some(1),
                false,
                None,
                SampleStatus::Timeout,
                "timed out",
                None
            ),
            want(
                2000,
                "users",
                None,
                None,
                false,
                Some(3.0),
                SampleStatus::Failed,
                "5 of 10 failed",
                Some((10.0, 5.0))
            ),
            want(
                3000,
                "healthz",
                Some(Color::Green),
                Some(2),
                true,
                None,
                SampleStatus::NoData,
                "",
                None
            ),
        ]
    );
}

#[tokio::test]
async fn a_raw_sample_takes_at_most_40_bytes_on_disk() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_dir(dir.path()).await.unwrap();
    let pages = |store: &Store| {
        let pool = store.pool.clone();
        async move {
            sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
                .execute(&pool)
                .await
                .unwrap();
            let n: i64 = sqlx::query_scalar("PRAGMA page_count")
                .fetch_one(&pool)
                .await
                .unwrap();
            let size: i64 = sqlx::query_scalar("PRAGMA page_size")
                .fetch_one(&pool)
                .await
                .unwrap();
            n * size
        }
    };
    let before = pages(&store).await;
    // A day's worth at 1 s on both colors would be 172,800: a tenth,
    // one probe on two colors, a failure in fifty, in daemon batches.
    let total = 17_280;
    let samples: Vec<Sample> = (0..total)
        .map(|i| {
            let color = if i % 2 == 0 {
                Color::Blue
            } else {
                Color::Green
            };
            let status = if i % 50 == 0 {
                SampleStatus::Failed
            } else {
                SampleStatus::Ok
            };
            let mut s = sample(1_790_000_000_000 + i * 500, "healthz", Some(color), status);
            s.latency_ms = Some(0.8 + (i % 13) as f64 * 0.37);
            s
        })
        .collect();
    for batch in samples.chunks(500) {
        store.insert_samples(batch).await.unwrap();
    }
    let per_sample = (pages(&store).await - before) as f64 / total as f64;
    assert!(per_sample <= 40.0, "{per_sample:.1} bytes per sample");
}
