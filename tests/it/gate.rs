//! `rollbackd gate`: pass on a healthy color, fail on a broken one, fail
//! closed on a gate too short to judge, and a Markdown summary either way.

use crate::common::{self, Env};

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gate_passes_a_healthy_color_and_fails_a_broken_one() {
    let blue = common::Color::start().await;
    let green = common::Color::start().await;
    let dir = tempfile::tempdir().unwrap();
    let env = Env::new(&common::fast_config(&blue, &green, dir.path(), ""));
    let summary = env.path("summary.md");
    let summary_arg = summary.to_str().unwrap();

    // Long enough to judge every rule (`check` says 3s for this config).
    let out = env.cli(&[
        "gate",
        "--color",
        "green",
        "--for",
        "5s",
        "--summary",
        summary_arg,
    ]);
    let stdout = text(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "healthy green passes:\n{stdout}\n{}",
        text(&out.stderr)
    );
    let md = common::read(&summary);
    assert!(
        md.contains("## rollbackd gate: beluga green — PASS"),
        "{md}"
    );
    assert!(md.contains("| healthz |"), "per-probe row: {md}");
    assert!(md.contains("**Result: PASS**"));
    assert!(!md.contains("**Not judged**"), "{md}");
    // Degradation is judged against blue, probed over the same seconds.
    let degradation = md
        .lines()
        .find(|l| l.contains("high: degradation > 50%"))
        .unwrap_or_else(|| panic!("{md}"));
    assert!(degradation.contains("| clear |"), "{degradation}");
    // Plain progress lines when stderr is not a terminal.
    assert!(text(&out.stderr).contains("gate: probing green of beluga"));

    green.set(500);
    std::fs::remove_file(&summary).unwrap();
    let out = env.cli(&[
        "gate",
        "--color",
        "green",
        "--for",
        "4s",
        "--summary",
        summary_arg,
    ]);
    assert_eq!(out.status.code(), Some(1), "broken green fails");
    let md = common::read(&summary);
    assert!(md.contains("— FAIL"), "{md}");
    assert!(
        md.contains("critical rule fired: critical: health_failures >= 5"),
        "{md}"
    );
    let stderr = text(&out.stderr);
    assert!(stderr.contains("gate failed for green"), "{stderr}");

    // Gating blue (healthy) is unaffected by green's failure.
    let out = env.cli(&["gate", "--color", "blue", "--for", "4s"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stdout));
}

/// Issue 17: a gate too short to judge the Critical/High rules fails
/// closed, says how long it must run (as `check` does), and passes only
/// when unjudged rules are explicitly allowed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue17_a_gate_too_short_to_judge_fails_closed() {
    let blue = common::Color::start().await;
    let green = common::Color::start().await;
    let dir = tempfile::tempdir().unwrap();
    let env = Env::new(&common::fast_config(&blue, &green, dir.path(), ""));

    let check = env.cli_ok(&["check"]);
    assert!(
        check.contains(
            "gate: `rollbackd gate --for 3s` (or longer) judges every Critical/High rule"
        ),
        "{check}"
    );

    let out = env.cli(&["gate", "--color", "green", "--for", "1s"]);
    let md = text(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(1),
        "a 1s gate judges nothing:\n{md}"
    );
    assert!(md.contains("— FAIL"), "{md}");
    assert!(
        md.contains("**Not judged**") && md.contains("high: error_rate > 50% over 2m"),
        "{md}"
    );
    assert!(
        md.contains("A gate of `--for 3s` or longer judges every Critical/High rule"),
        "{md}"
    );
    assert!(
        md.contains("not judged (too little evidence)")
            && md.contains("run the gate for 3s or longer, or pass --allow-unjudged"),
        "{md}"
    );

    // Allowed explicitly: passes (health is proven in 1.5s at 200ms),
    // and still says what it did not judge.
    let out = env.cli(&[
        "gate",
        "--color",
        "green",
        "--for",
        "1500ms",
        "--allow-unjudged",
    ]);
    let md = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{md}\n{}", text(&out.stderr));
    assert!(md.contains("**Result: PASS**"), "{md}");
    assert!(md.contains("**Not judged**"), "{md}");
}

/// A color whose `/healthz` answers ok, but only after `delay`.
async fn slow_color(delay: std::time::Duration) -> common::Color {
    use axum::routing::get;
    let app = axum::Router::new().route(
        "/healthz",
        get(move || async move {
            tokio::time::sleep(delay).await;
            "ok"
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    common::Color {
        url,
        status: Default::default(),
    }
}

/// Issue 17: before a cutover there is no previous deployment of the
/// candidate to compare with, so the gate judges `degradation` against the
/// active color probed over the same seconds: a candidate answering in
/// 80 ms beside a fast active color fails the High rule.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue17_the_gate_judges_degradation_against_the_active_color() {
    let blue = common::Color::start().await;
    let green = slow_color(std::time::Duration::from_millis(80)).await;
    let dir = tempfile::tempdir().unwrap();
    let env = Env::new(&common::fast_config(&blue, &green, dir.path(), ""));
    let out = env.cli(&["gate", "--color", "green", "--for", "5s"]);
    let md = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{md}");
    assert!(
        md.contains("high rule fired: high: degradation > 50% over 5m"),
        "{md}"
    );
    assert!(md.contains("ms baseline"), "{md}");
    // The fast color beside it passes: the slow one is not its baseline
    // problem (a faster candidate is not degraded).
    let out = env.cli(&["gate", "--color", "blue", "--for", "5s"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stdout));
}
