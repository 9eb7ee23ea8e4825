//! `rollbackd gate`: pass on a healthy color, fail on a broken one, and a
//! Markdown summary either way.

use crate::common::{self, Env};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gate_passes_a_healthy_color_and_fails_a_broken_one() {
    let blue = common::Color::start().await;
    let green = common::Color::start().await;
    let dir = tempfile::tempdir().unwrap();
    let env = Env::new(&common::fast_config(&blue, &green, dir.path(), ""));
    let summary = env.path("summary.md");
    let summary_arg = summary.to_str().unwrap();

    let out = env.cli(&[
        "gate",
        "--color",
        "green",
        "--for",
        "2s",
        "--summary",
        summary_arg,
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "healthy green passes:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let md = common::read(&summary);
    assert!(
        md.contains("## rollbackd gate: beluga green — PASS"),
        "{md}"
    );
    assert!(md.contains("| healthz |"), "per-probe row: {md}");
    assert!(md.contains("**Result: PASS**"));
    // Two seconds cannot fill the High rules' windows: said, not hidden.
    assert!(
        md.contains("**Not judged**") && md.contains("high: error_rate > 50% over 2m"),
        "{md}"
    );
    // Plain progress lines when stderr is not a terminal.
    assert!(String::from_utf8_lossy(&out.stderr).contains("gate: probing green of beluga"));

    green.set(500);
    std::fs::remove_file(&summary).unwrap();
    let out = env.cli(&[
        "gate",
        "--color",
        "green",
        "--for",
        "2s",
        "--summary",
        summary_arg,
    ]);
    assert_eq!(out.status.code(), Some(1), "broken green fails");
    let md = common::read(&summary);
    assert!(md.contains("— FAIL"), "{md}");
    assert!(
        md.contains("critical rule fired: critical: health_failures >= 3"),
        "{md}"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("gate failed for green"), "{stderr}");

    // Gating blue (healthy) is unaffected by green's failure.
    let out = env.cli(&["gate", "--color", "blue", "--for", "2s"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}
