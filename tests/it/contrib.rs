//! What the package ships for Prometheus and Grafana
//! (`contrib/prometheus/rollbackd.rules.yml`, `contrib/grafana/rollbackd.json`):
//! the rules pass `promtool check rules` and their unit tests (each alert
//! fires on the series that mean it), and every metric the dashboard and
//! the rules query is one the real daemon's `/metrics` exports.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::common::{self, Env, wait_for};

const RULES: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/contrib/prometheus/rollbackd.rules.yml"
);
const RULE_TESTS: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/contrib/prometheus/rollbackd.rules.test.yml"
);
const DASHBOARD: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/contrib/grafana/rollbackd.json"
);

fn promtool(args: &[&str]) -> String {
    let out = Command::new("promtool").args(args).output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {args:?}:\n{text}");
    text
}

#[test]
fn alerting_rules_pass_promtool_and_their_unit_tests() {
    if !common::have_tool("promtool", "prometheus") {
        return;
    }
    let checked = promtool(&["check", "rules", RULES]);
    assert!(checked.contains("SUCCESS: 9 rules found"), "{checked}");
    let tested = promtool(&["test", "rules", RULE_TESTS]);
    assert!(tested.contains("SUCCESS"), "{tested}");
    // The unit tests cover every alert the file defines.
    let rules = std::fs::read_to_string(RULES).unwrap();
    let tests = std::fs::read_to_string(RULE_TESTS).unwrap();
    for alert in rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
    {
        assert!(
            tests.contains(&format!(
                "alertname: {alert}\n        exp_alerts:\n          - exp_labels"
            )),
            "no test shows {alert} firing"
        );
    }
    for wanted in [
        "RollbackdDown",
        "RollbackdAbsent",
        "RollbackdBlind",
        "RollbackdStorageFault",
        "RollbackdEscalated",
        "RollbackdReloadFailed",
    ] {
        assert!(rules.contains(&format!("- alert: {wanted}\n")), "{wanted}");
    }
}

/// Every `rollbackd_*` name in `text`.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("rollbackd_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        names.insert(tail[..end].to_owned());
        rest = &tail[end..];
    }
    names
}

/// Every `expr` in a Grafana dashboard, at any depth.
fn exprs(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(map) => {
            for (k, v) in map {
                match (k.as_str(), v) {
                    ("expr", serde_json::Value::String(e)) => out.push(e.clone()),
                    _ => exprs(v, out),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|v| exprs(v, out)),
        _ => {}
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_and_rules_query_only_metrics_the_daemon_exports() {
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(DASHBOARD).unwrap())
            .expect("the dashboard is valid JSON");
    assert_eq!(dashboard["uid"], "rollbackd");
    let panels = dashboard["panels"].as_array().unwrap();
    assert!(panels.len() >= 10, "{} panels", panels.len());
    let mut ids = BTreeSet::new();
    for p in panels {
        assert!(ids.insert(p["id"].as_i64().unwrap()), "duplicate panel id");
        assert!(p["gridPos"]["w"].as_i64().unwrap() > 0);
        assert!(!p["targets"].as_array().unwrap().is_empty(), "{p}");
    }
    let mut queries = Vec::new();
    exprs(&dashboard, &mut queries);
    let queried = metric_names(&queries.join("\n"));
    let ruled = metric_names(&std::fs::read_to_string(RULES).unwrap());
    assert!(queried.len() >= 15, "{queried:?}");

    // The real daemon, with a notifier so its series exist.
    let blue = common::Color::start().await;
    let green = common::Color::start().await;
    let dir = tempfile::tempdir().unwrap();
    let extra = format!(
        "\n[[notify]]\nkind = \"webhook\"\nurl = \"{}/hook\"\nformat = \"json\"\n",
        blue.url
    );
    let text = common::fast_config(&blue, &green, dir.path(), &extra)
        .replace("listen = \"off\"", "listen = \"127.0.0.1:0\"");
    let env = Env::new(&text);
    env.cli_ok(&["deploy", "--color", "blue", "--version", "v1"]);
    let daemon = env.daemon();
    let log = daemon.log.clone();
    let marker = "HTTP listener on http://";
    wait_for("the HTTP listener", Duration::from_secs(30), || {
        let log = log.clone();
        async move { common::read(&log).contains(marker) }
    })
    .await;
    let log = common::read(&daemon.log);
    let at = log.find(marker).unwrap() + marker.len();
    let addr = log[at..].split_whitespace().next().unwrap().to_owned();
    let url = format!("http://{addr}/metrics");
    // Wait for a sample, so the latency histogram has its buckets.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let scrape = loop {
        let text = match reqwest::get(&url).await {
            Ok(resp) => resp.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        };
        if text.contains("rollbackd_probe_latency_seconds_bucket{") {
            break text;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no latency sample in /metrics:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let exported: BTreeSet<String> = scrape
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_owned)
        .collect();
    for name in queried.iter().chain(&ruled) {
        assert!(
            exported.contains(name),
            "{name} is queried but /metrics has no such series:\n{exported:?}"
        );
    }
    let _ = daemon.stop().await;
    assert!(Path::new(RULES).is_file());
}
