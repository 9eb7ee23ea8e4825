//! `/metrics` as scrapers see it (SPEC: the HTTP listener): the real daemon
//! serves the classic Prometheus text format unless `Accept` asks for
//! OpenMetrics; `promtool check metrics` accepts the classic output; a real
//! Prometheus scrapes it and finds the target up.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::{self, Env, wait_for};

const OPENMETRICS_ACCEPT: &str = "application/openmetrics-text;version=1.0.0,\
     application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";

/// The secret part of the notifier's URL: it must never be in a scrape.
const HOOK_TOKEN: &str = "hook-token-8d1f0c";

/// A daemon with the HTTP listener on a free loopback port and one
/// notifier; returns it with the listener's base URL.
/// (The colors' servers run on the test's runtime until it ends.)
async fn daemon_with_listener() -> (tempfile::TempDir, Env, common::Daemon, String) {
    let blue = common::Color::start().await;
    let green = common::Color::start().await;
    let dir = tempfile::tempdir().unwrap();
    let extra = format!(
        "\n[[notify]]\nkind = \"webhook\"\nurl = \"{}/{HOOK_TOKEN}\"\nformat = \"json\"\n",
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
    (dir, env, daemon, format!("http://{addr}"))
}

async fn scrape(base: &str, accept: Option<&str>) -> (String, String) {
    let mut req = reqwest::Client::new()
        .get(format!("{base}/metrics"))
        .timeout(Duration::from_secs(5));
    if let Some(a) = accept {
        req = req.header(reqwest::header::ACCEPT, a);
    }
    let resp = req.send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let ct = resp.headers()[reqwest::header::CONTENT_TYPE]
        .to_str()
        .unwrap()
        .to_owned();
    (ct, resp.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_negotiate_the_format_and_start_known_series_at_zero() {
    let (_dir, _env, daemon, base) = daemon_with_listener().await;

    // No Accept (curl, a browser): the classic text format 0.0.4.
    let (ct, classic) = scrape(&base, None).await;
    assert_eq!(ct, "text/plain; version=0.0.4; charset=utf-8");
    assert!(!classic.contains("# EOF"), "{classic}");
    assert!(
        classic.contains("# TYPE rollbackd_rollbacks_total counter\n"),
        "{classic}"
    );
    // Known before anything happened, so `increase()` sees the first one.
    for outcome in rollbackd::daemon::metrics::ROLLBACK_OUTCOMES {
        assert!(
            classic.contains(&format!(
                "rollbackd_rollbacks_total{{outcome=\"{outcome}\"}} 0\n"
            )),
            "{outcome} in\n{classic}"
        );
    }
    for line in [
        "rollbackd_config_reloads_total{outcome=\"ok\"} 0\n",
        "rollbackd_config_reloads_total{outcome=\"failed\"} 0\n",
        "rollbackd_notifications_sent_total{notifier=\"1\",format=\"json\"} 0\n",
        "rollbackd_notifications_failed_total{notifier=\"1\",format=\"json\"} 0\n",
        "rollbackd_samples_total{probe=\"healthz\",color=\"green\",status=\"timeout\"} 0\n",
        "rollbackd_config_last_reload_successful 1\n",
    ] {
        assert!(classic.contains(line), "{line} in\n{classic}");
    }
    assert!(
        classic.contains(&format!(
            "rollbackd_build_info{{version=\"{}\"}} 1\n",
            env!("CARGO_PKG_VERSION")
        )),
        "{classic}"
    );
    let loaded: f64 = classic
        .lines()
        .find_map(|l| l.strip_prefix("rollbackd_config_last_reload_success_timestamp_seconds "))
        .unwrap()
        .parse()
        .unwrap();
    let now = rollbackd::model::now_ms() as f64 / 1000.0;
    assert!(loaded > now - 120.0 && loaded <= now, "{loaded} vs {now}");
    assert!(!classic.contains(HOOK_TOKEN), "the webhook URL leaked");

    // What Prometheus sends: OpenMetrics.
    let (ct, om) = scrape(&base, Some(OPENMETRICS_ACCEPT)).await;
    assert!(
        ct.starts_with("application/openmetrics-text; version=1.0.0"),
        "{ct}"
    );
    assert!(om.trim_end().ends_with("# EOF"), "{om}");
    assert!(om.contains("# TYPE rollbackd_rollbacks counter\n"), "{om}");
    assert!(om.contains("rollbackd_rollbacks_total{outcome=\"verified\"} 0\n"));
    assert!(!om.contains(HOOK_TOKEN), "the webhook URL leaked");

    assert!(daemon.stop().await.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn classic_metrics_pass_promtool_check_metrics() {
    if !common::have_tool("promtool", "prometheus") {
        return;
    }
    let (_dir, _env, daemon, base) = daemon_with_listener().await;
    // Wait for samples, so histograms and labelled families have series.
    wait_for("samples of blue", Duration::from_secs(30), || async {
        let (_, text) = scrape(&base, None).await;
        text.contains("rollbackd_probe_latency_seconds_count{probe=\"healthz\",color=\"blue\"}")
    })
    .await;
    let (_, classic) = scrape(&base, None).await;
    let out = pipe_through(&["promtool", "check", "metrics"], &classic);
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}\n--- input:\n{classic}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // Lint findings are printed too, with success: there must be none.
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(said.trim().is_empty(), "promtool says:\n{said}");
    assert!(daemon.stop().await.success());
}

fn pipe_through(argv: &[&str], input: &str) -> std::process::Output {
    use std::io::Write;
    let mut child = Command::new(argv[0])
        .args(&argv[1..])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

/// A Prometheus child, killed when dropped.
struct Prometheus(Child);

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    // Bound and let go: Prometheus binds it right after (a race another
    // process could only win by binding this very port in between).
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

fn start_prometheus(dir: &Path, target: &str) -> (Prometheus, String) {
    let config = dir.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n\
             scrape_configs:\n  - job_name: rollbackd\n    static_configs:\n      - targets: ['{target}']\n"
        ),
    )
    .unwrap();
    let port = free_port();
    let log = std::fs::File::create(dir.join("prometheus.log")).unwrap();
    let child = Command::new("prometheus")
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    (Prometheus(child), format!("http://127.0.0.1:{port}"))
}

/// The instant vector `query` returns, or nothing while Prometheus is not
/// answering yet.
async fn query(prom: &str, query: &str) -> Vec<serde_json::Value> {
    let resp = reqwest::Client::new()
        .get(format!("{prom}/api/v1/query"))
        .query(&[("query", query)])
        .timeout(Duration::from_secs(3))
        .send()
        .await;
    let Ok(resp) = resp else { return Vec::new() };
    let Ok(body) = resp.json::<serde_json::Value>().await else {
        return Vec::new();
    };
    body["data"]["result"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_prometheus_scrapes_the_daemon() {
    if !common::have_tool("prometheus", "prometheus") {
        return;
    }
    let (_dir, _env, daemon, base) = daemon_with_listener().await;
    let prom_dir = tempfile::tempdir().unwrap();
    let target = base.trim_start_matches("http://").to_owned();
    let (prometheus, prom) = start_prometheus(prom_dir.path(), &target);

    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let up = query(&prom, "up{job=\"rollbackd\"}").await;
        if up.first().and_then(|s| s["value"][1].as_str()) == Some("1") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "Prometheus never saw the daemon up: {up:?}\n{}",
            common::read(&prom_dir.path().join("prometheus.log"))
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let info = query(&prom, "rollbackd_build_info").await;
    assert_eq!(info.len(), 1, "{info:?}");
    assert_eq!(info[0]["metric"]["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(info[0]["value"][1], "1");
    // Counters known from the start are there at 0, one per outcome.
    let rollbacks = query(&prom, "rollbackd_rollbacks_total").await;
    assert_eq!(
        rollbacks.len(),
        rollbackd::daemon::metrics::ROLLBACK_OUTCOMES.len(),
        "{rollbacks:?}"
    );
    assert!(
        rollbacks.iter().all(|s| s["value"][1] == "0"),
        "{rollbacks:?}"
    );

    drop(prometheus);
    assert!(daemon.stop().await.success());
}

#[tokio::test]
async fn notifications_are_counted_per_notifier_without_its_url() {
    use rollbackd::config::NotifyFormat;
    use rollbackd::model::Severity;
    use rollbackd::notifier::{Event, Hub, Notice, Policy};

    let rx = crate::notify::Receiver::start().await;
    let mut good = rx.target("good", NotifyFormat::Json, Severity::Low);
    // Ids no other test uses: the totals are process-wide.
    good.id = 41;
    // A port nothing listens on: every attempt is refused.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_url = format!("http://{}/{HOOK_TOKEN}", closed.local_addr().unwrap());
    drop(closed);
    let mut dead = rollbackd::config::Notifier::webhook(
        rollbackd::config::secret::Secret::resolve(&dead_url).unwrap(),
        NotifyFormat::Discord,
        Severity::Low,
    );
    dead.id = 42;

    let (hub, worker) = Hub::start(Policy {
        attempts: 2,
        backoff: Duration::from_millis(50),
        timeout: Duration::from_millis(500),
    });
    hub.send(
        &[good, dead],
        Notice::new(
            Event::RollbackStarted,
            Severity::High,
            "beluga",
            "blue -> green".into(),
        ),
    );
    drop(hub);
    tokio::time::timeout(Duration::from_secs(10), worker)
        .await
        .unwrap()
        .unwrap();

    let text = rollbackd::daemon::metrics::Metrics::new()
        .encode(0, rollbackd::daemon::metrics::Format::Classic);
    for line in [
        "rollbackd_notifications_sent_total{notifier=\"41\",format=\"json\"} 1\n",
        "rollbackd_notifications_failed_total{notifier=\"41\",format=\"json\"} 0\n",
        "rollbackd_notifications_sent_total{notifier=\"42\",format=\"discord\"} 0\n",
        "rollbackd_notifications_failed_total{notifier=\"42\",format=\"discord\"} 1\n",
    ] {
        assert!(text.contains(line), "{line} in\n{text}");
    }
    assert!(
        !text.contains(HOOK_TOKEN) && !text.contains(&rx.url),
        "a URL leaked"
    );
}
