//! The Mermaid charts in the Markdown of `report` and `gate` (the demo's
//! test covers `incident show --markdown`): well-formed xycharts, a line
//! per color, and the fault and the decision marked.

use rollbackd::model::{Color, Sample, Severity, now_ms};
use rollbackd::report::chart::parse_charts;
use rollbackd::store::StoredVerdict;

use crate::common::{self, Env};

fn sample(at_ms: i64, color: Color, ok: bool, latency: f64) -> Sample {
    Sample {
        deployment: Some(2),
        ..Sample::answer(at_ms, "healthz", Some(color), ok, latency)
    }
}

/// Two charts, each a bar series of marks then one line per color, and
/// the labels naming the marks wanted.
fn assert_charts(md: &str, marks: &[&str]) {
    let charts = parse_charts(md).unwrap_or_else(|e| panic!("{e} in:\n{md}"));
    assert_eq!(charts.len(), 2, "{md}");
    assert_eq!(charts[0].title, "Error rate per color");
    assert_eq!(charts[1].title, "Latency per color");
    for c in &charts {
        let kinds: Vec<&str> = c.series.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(kinds, ["bar", "line", "line"], "{md}");
        for mark in marks {
            assert!(
                c.labels.iter().any(|l| l.contains(mark)),
                "no {mark} in {:?}",
                c.labels
            );
        }
    }
    assert!(
        md.contains("the blue line is blue; the green line is green"),
        "{md}"
    );
}

#[tokio::test]
async fn report_markdown_charts_both_colors_and_marks_the_decision() {
    let blue = common::Color::start().await;
    let green = common::Color::start().await;
    let dir = tempfile::tempdir().unwrap();
    let env = Env::new(&common::fast_config(&blue, &green, dir.path(), ""));
    let store = env.store().await;
    let t0 = now_ms() - 60_000;
    store
        .record_deployment(Color::Green, "v1", "cli", t0 - 10_000)
        .await
        .unwrap();
    store
        .record_deployment(Color::Blue, "v2", "cli", t0)
        .await
        .unwrap();
    let mut batch = Vec::new();
    for i in 0..55 {
        let at = t0 + 500 + i * 1000;
        // Blue fails from 30 s on, slowly; green stays fast and healthy.
        batch.push(sample(
            at,
            Color::Blue,
            i < 30,
            if i < 30 { 8.0 } else { 80.0 },
        ));
        batch.push(sample(at, Color::Green, true, 6.0));
    }
    store.insert_samples(&batch).await.unwrap();
    store
        .insert_verdict(&StoredVerdict {
            at_ms: t0 + 35_000,
            rule: "critical: health_failures >= 5 over 10m".into(),
            severity: Severity::Critical,
            color: Color::Blue,
            state: rollbackd::matrix::State::Fired,
            n: 35,
            value: Some(5.0),
            threshold: 5.0,
            window_ms: 600_000,
            baseline: None,
            detail: "health_failures = 5".into(),
        })
        .await
        .unwrap();

    let md = env.cli_ok(&["report", "--markdown"]);
    assert!(md.contains("### Error rate and latency"), "{md}");
    assert_charts(&md, &["decision"]);
    let charts = parse_charts(&md).unwrap();
    let blue_errors = &charts[0].series[1].1;
    let green_errors = &charts[0].series[2].1;
    assert_eq!(blue_errors[10], 0.0, "{md}");
    assert_eq!(blue_errors[40], 100.0, "{md}");
    assert!(green_errors.iter().all(|v| *v == 0.0), "{md}");
    // The JSON form carries numbers, not a picture.
    assert!(!env.cli_ok(&["report", "--json"]).contains("xychart"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gate_summary_charts_both_colors_and_marks_the_fault_and_the_decision() {
    let blue = common::Color::start().await;
    let green = common::Color::start().await;
    green.set(500);
    let dir = tempfile::tempdir().unwrap();
    let env = Env::new(&common::fast_config(&blue, &green, dir.path(), ""));
    let out = env.cli(&["gate", "--color", "green", "--for", "4s"]);
    assert_eq!(out.status.code(), Some(1), "broken green fails");
    let md = String::from_utf8_lossy(&out.stdout);
    assert_charts(&md, &["fault", "decision"]);
    let charts = parse_charts(&md).unwrap();
    // Green (the second line) failed throughout; blue answered.
    assert!(charts[0].series[2].1.contains(&100.0), "{md}");
    assert!(charts[0].series[1].1.iter().all(|v| *v == 0.0), "{md}");
}
