//! `rollbackd report`: numbers computed from a real database.

use rollbackd::model::{Color, Sample, Severity, now_ms};
use rollbackd::store::StoredVerdict;

use crate::common::{self, Env};

fn sample(at_ms: i64, probe: &str, color: Option<Color>, ok: bool, latency: f64) -> Sample {
    Sample {
        deployment: Some(2),
        ..Sample::answer(at_ms, probe, color, ok, latency)
    }
}

#[tokio::test]
async fn report_counts_availability_error_rate_latency_and_fired_rules() {
    let blue = common::Color::start().await;
    let green = common::Color::start().await;
    let dir = tempfile::tempdir().unwrap();
    let extra =
        "[[probe]]\nname = \"lava\"\nkind = \"http\"\nurl = \"http://127.0.0.1:9/version\"\n";
    let env = Env::new(
        &common::fast_config(&blue, &green, dir.path(), "")
            .replace("[rollback]", &format!("{extra}\n[rollback]")),
    );
    let store = env.store().await;
    let t0 = now_ms() - 200_000;
    store
        .record_deployment(Color::Green, "v1", "cli", t0 - 10_000)
        .await
        .unwrap();
    store
        .record_deployment(Color::Blue, "v2", "cli", t0)
        .await
        .unwrap();
    let mut batch = Vec::new();
    for i in 0..1000 {
        // 1 failure in 1000 health samples: exactly the 99.9% target.
        batch.push(sample(
            t0 + 1 + i,
            "healthz",
            Some(Color::Blue),
            i != 500,
            if i < 950 { 10.0 } else { 100.0 },
        ));
    }
    for i in 0..10 {
        batch.push(sample(t0 + 1 + i, "healthz", Some(Color::Green), true, 5.0));
        batch.push(sample(t0 + 1 + i, "lava", None, i % 2 == 0, 1.0));
    }
    store.insert_samples(&batch).await.unwrap();
    store
        .insert_verdict(&StoredVerdict {
            at_ms: t0 + 600,
            rule: "medium: error_rate > 10% over 5m".into(),
            severity: Severity::Medium,
            color: Color::Blue,
            state: rollbackd::matrix::State::Fired,
            n: 20,
            value: Some(12.0),
            threshold: 10.0,
            window_ms: 300_000,
            baseline: None,
            detail: "error_rate = 12%".into(),
        })
        .await
        .unwrap();

    let json: serde_json::Value = serde_json::from_str(&env.cli_ok(&["report", "--json"])).unwrap();
    assert_eq!(json["deployment"]["version"], "v2");
    assert!(
        (json["availability_pct"].as_f64().unwrap() - 99.9).abs() < 1e-9,
        "{json}"
    );
    let rows = json["rows"].as_array().unwrap();
    let blue_row = rows
        .iter()
        .find(|r| r["probe"] == "healthz" && r["color"] == "blue")
        .unwrap();
    assert_eq!(blue_row["samples"], 1000);
    assert_eq!(blue_row["failures"], 1);
    assert!((blue_row["error_rate_pct"].as_f64().unwrap() - 0.1).abs() < 1e-9);
    assert_eq!(
        blue_row["latency_p95_ms"], 10.0,
        "nearest-rank p95 of 950 x 10ms + 50 x 100ms"
    );
    let lava = rows.iter().find(|r| r["probe"] == "lava").unwrap();
    assert!(
        lava["color"].is_null(),
        "shared probes are reported as shared"
    );
    assert_eq!(lava["failures"], 5);
    assert_eq!(json["fired"][0]["rule"], "medium: error_rate > 10% over 5m");
    // Points in time are RFC 3339 with milliseconds, never Unix milliseconds.
    for t in [
        &json["deployment"]["at"],
        &json["until"],
        &json["fired"][0]["at"],
    ] {
        assert!(
            crate::cli::is_rfc3339_millis(t.as_str().unwrap_or("")),
            "{t} in {json:#}"
        );
    }
    let text = json.to_string();
    assert!(
        !text.contains("\"at_ms\"") && !text.contains("\"until_ms\""),
        "{json:#}"
    );

    let md = env.cli_ok(&["report", "--markdown"]);
    assert!(
        md.contains("## Post-deploy report: beluga v2 on blue"),
        "{md}"
    );
    assert!(md.contains("99.900% (target 99.9%: met)"), "{md}");
    assert!(md.contains("| blue | healthz | 1000 | 1 | 0.10% |"), "{md}");

    let old = env.cli_ok(&["report", "--deployment", "1"]);
    assert!(old.contains("deployment #1: green v1"), "{old}");
    assert!(old.contains("availability: no samples"), "{old}");
    let out = env.cli(&["report", "--deployment", "9"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no deployment #9"));
}
