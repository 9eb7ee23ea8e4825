//! Probes against real local targets (HTTP servers that hang, reset, stream
//! or lie; processes that ignore SIGTERM; log files that rotate), the sample
//! writer against a locked database, retention over simulated days, and the
//! `samples` command.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use rollbackd::config::Config;
use rollbackd::daemon::writer::Writer;
use rollbackd::model::{Color, Sample, SampleStatus, now_ms};
use rollbackd::probe::{Outcome, Prober};
use rollbackd::store::Store;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use crate::common::{self, Setup};

// ---------------------------------------------------------------------------
// Parts.

async fn serve(app: Router) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    url
}

/// A raw TCP server: each connection gets its request read, then `answer`.
async fn raw_server<F, Fut>(answer: F) -> String
where
    F: Fn(tokio::net::TcpStream) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let answer = Arc::new(answer);
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            let answer = answer.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = stream.read(&mut buf).await;
                answer(stream).await;
            });
        }
    });
    url
}

/// A config whose blue color is `blue_url`, with `probes` appended.
fn config(dir: &Path, blue_url: &str, probes: &str) -> Config {
    let text = format!(
        r#"
[daemon]
state_dir = "state"
listen = "off"
watch_config = false

[service]
name = "beluga"

[colors.blue]
base_url = "{blue_url}"
[colors.green]
base_url = "http://127.0.0.1:9"

[actions]
critical = "alert"
high = "alert"

# One lenient rule instead of the default matrix, whose timing checks would
# reject the slow probes some of these tests need.
[[rule]]
severity = "low"
when = "error_rate > 50%"
window = "15m"
min_samples = 1

{probes}
"#
    );
    let path = dir.join("rollbackd.toml");
    std::fs::write(&path, &text).unwrap();
    Config::parse(&path, &text).unwrap_or_else(|e| panic!("{e}\n{text}"))
}

async fn run_blue(prober: &Prober, config: &Config, probe: &str) -> Outcome {
    let p = config.probe(probe).unwrap();
    prober.run(config, p, Some(Color::Blue)).await
}

fn assert_status(o: &Outcome, status: SampleStatus, needle: &str) {
    assert_eq!(o.status, status, "{o:?}");
    assert!(o.detail.contains(needle), "{needle:?} not in {o:?}");
}

// ---------------------------------------------------------------------------
// http

#[tokio::test]
async fn http_hang_times_out_within_the_timeout() {
    // Accepts, reads the request, never answers.
    let url = raw_server(|s| async move {
        tokio::time::sleep(Duration::from_secs(30)).await;
        drop(s);
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let c = config(
        dir.path(),
        &url,
        "[[probe]]\nname = \"h\"\nkind = \"http\"\npath = \"/\"\ntimeout = \"300ms\"",
    );
    let started = Instant::now();
    let o = run_blue(&Prober::new(), &c, "h").await;
    assert_status(&o, SampleStatus::Timeout, "no answer within 300ms");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn http_dribbling_body_times_out() {
    let url = raw_server(|mut s| async move {
        let _ = s
            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n")
            .await;
        for _ in 0..1000 {
            if s.write_all(b"o").await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let c = config(
        dir.path(),
        &url,
        "[[probe]]\nname = \"h\"\nkind = \"http\"\npath = \"/\"\ntimeout = \"400ms\"",
    );
    let o = run_blue(&Prober::new(), &c, "h").await;
    assert_status(&o, SampleStatus::Timeout, "no answer");
}

#[tokio::test]
async fn http_latency_runs_to_the_last_body_byte() {
    // Headers at once, the body 300 ms later.
    let url = raw_server(|mut s| async move {
        let _ = s
            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n")
            .await;
        let _ = s.flush().await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let _ = s.write_all(b"ok").await;
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let c = config(
        dir.path(),
        &url,
        "[[probe]]\nname = \"h\"\nkind = \"http\"\npath = \"/\"\ntimeout = \"3s\"\nbody_contains = \"ok\"",
    );
    let o = run_blue(&Prober::new(), &c, "h").await;
    assert_status(&o, SampleStatus::Ok, "HTTP 200");
    assert!(o.latency_ms.unwrap() >= 300.0, "{o:?}");
}

#[tokio::test]
async fn http_reset_connection_is_a_failed_sample() {
    let url = raw_server(|s| async move {
        // SO_LINGER 0: close with a RST instead of a FIN (and no blocking
        // on drop, which is what the deprecation warns about).
        #[allow(deprecated)]
        let _ = s.set_linger(Some(Duration::ZERO));
        drop(s);
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let c = config(
        dir.path(),
        &url,
        "[[probe]]\nname = \"h\"\nkind = \"http\"\npath = \"/\"\ntimeout = \"2s\"",
    );
    let o = run_blue(&Prober::new(), &c, "h").await;
    assert_status(&o, SampleStatus::Failed, "request failed");
}

#[tokio::test]
async fn http_endless_body_is_read_only_up_to_the_cap() {
    // Announces 10 GB and streams as fast as it can: without the cap the
    // probe would read until its timeout.
    let url = raw_server(|mut s| async move {
        let _ = s
            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 10000000000\r\n\r\nok")
            .await;
        let chunk = vec![b'x'; 64 * 1024];
        while s.write_all(&chunk).await.is_ok() {}
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let c = config(
        dir.path(),
        &url,
        "[[probe]]\nname = \"h\"\nkind = \"http\"\npath = \"/\"\ntimeout = \"5s\"\nbody_contains = \"ok\"",
    );
    let started = Instant::now();
    let o = run_blue(&Prober::new(), &c, "h").await;
    assert_status(&o, SampleStatus::Ok, "HTTP 200");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn http_ten_megabyte_body_is_matched_only_in_its_first_64_kib() {
    let body = Arc::new(format!("{}NEEDLE", "x".repeat(10 << 20)));
    let url = serve(
        Router::new()
            .route(
                "/big",
                get(|State(b): State<Arc<String>>| async move { (*b).clone() }),
            )
            .with_state(body),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let c = config(
        dir.path(),
        &url,
        r#"
[[probe]]
name = "needle"
kind = "http"
path = "/big"
timeout = "5s"
body_contains = "NEEDLE"

[[probe]]
name = "start"
kind = "http"
path = "/big"
timeout = "5s"
body_regex = "^x+$"
"#,
    );
    let prober = Prober::new();
    let o = run_blue(&prober, &c, "needle").await;
    assert_status(
        &o,
        SampleStatus::Failed,
        "does not contain \"NEEDLE\" in the first 64 KiB",
    );
    let o = run_blue(&prober, &c, "start").await;
    assert_status(&o, SampleStatus::Ok, "HTTP 200");
}

fn statuses_app() -> Router {
    Router::new()
        .route(
            "/down",
            get(|| async { (StatusCode::SERVICE_UNAVAILABLE, "ok") }),
        )
        .route("/empty", get(|| async { StatusCode::NO_CONTENT }))
        .route("/hello", get(|| async { "hello world" }))
        .route(
            "/secure",
            get(|| async {
                (
                    [
                        ("x-content-type-options", "nosniff"),
                        ("strict-transport-security", "max-age=63072000"),
                    ],
                    "ok",
                )
            }),
        )
        .route(
            "/moved",
            get(|| async { (StatusCode::FOUND, [("location", "/hello")], "") }),
        )
        .route(
            "/private",
            get(|headers: HeaderMap| async move {
                match headers.get("authorization").and_then(|v| v.to_str().ok()) {
                    Some("Bearer s3cret") => (StatusCode::OK, "ok").into_response(),
                    _ => (StatusCode::UNAUTHORIZED, "who are you").into_response(),
                }
            }),
        )
}

#[tokio::test]
async fn http_checks_status_body_headers_redirects_and_secrets() {
    let url = serve(statuses_app()).await;
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "Bearer s3cret\n").unwrap();
    let c = config(
        dir.path(),
        &url,
        &format!(
            r#"
[[probe]]
name = "down"
kind = "http"
path = "/down"

[[probe]]
name = "empty"
kind = "http"
path = "/empty"
expect_status = ["2xx"]

[[probe]]
name = "missing-body"
kind = "http"
path = "/hello"
body_contains = "goodbye"

[[probe]]
name = "regex"
kind = "http"
path = "/hello"
body_regex = "^hello w.rld$"

[[probe]]
name = "secure"
kind = "http"
path = "/secure"
expect_headers = ["Strict-Transport-Security", "X-Content-Type-Options"]

[[probe]]
name = "insecure"
kind = "http"
path = "/hello"
expect_headers = ["Strict-Transport-Security", "X-Content-Type-Options"]

[[probe]]
name = "moved"
kind = "http"
path = "/moved"

[[probe]]
name = "private"
kind = "http"
path = "/private"
headers = {{ Authorization = "file:{token}" }}

[[probe]]
name = "private-no-token"
kind = "http"
path = "/private"
"#,
            token = token.display()
        ),
    );
    let prober = Prober::new();
    let o = run_blue(&prober, &c, "down").await;
    assert_status(&o, SampleStatus::Failed, "HTTP 503: unexpected status");
    assert!(o.latency_ms.is_some());
    assert_status(
        &run_blue(&prober, &c, "empty").await,
        SampleStatus::Ok,
        "HTTP 204",
    );
    assert_status(
        &run_blue(&prober, &c, "missing-body").await,
        SampleStatus::Failed,
        "does not contain \"goodbye\"",
    );
    assert_status(
        &run_blue(&prober, &c, "regex").await,
        SampleStatus::Ok,
        "HTTP 200",
    );
    assert_status(
        &run_blue(&prober, &c, "secure").await,
        SampleStatus::Ok,
        "HTTP 200",
    );
    assert_status(
        &run_blue(&prober, &c, "insecure").await,
        SampleStatus::Failed,
        "missing header(s) Strict-Transport-Security, X-Content-Type-Options",
    );
    // Redirects are not followed: a 302 is what the probe sees.
    assert_status(
        &run_blue(&prober, &c, "moved").await,
        SampleStatus::Failed,
        "HTTP 302",
    );
    assert_status(
        &run_blue(&prober, &c, "private").await,
        SampleStatus::Ok,
        "HTTP 200",
    );
    assert_status(
        &run_blue(&prober, &c, "private-no-token").await,
        SampleStatus::Failed,
        "HTTP 401",
    );
    // Relative paths go to each color's base_url: green's is dead.
    let p = c.probe("regex").unwrap();
    let o = prober.run(&c, p, Some(Color::Green)).await;
    assert_status(&o, SampleStatus::Failed, "connect");
}

// ---------------------------------------------------------------------------
// tcp and exec

#[tokio::test]
async fn tcp_connects_or_fails() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let closed = {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap()
    };
    let dir = tempfile::tempdir().unwrap();
    let c = config(
        dir.path(),
        &format!("http://{addr}"),
        &format!(
            "[[probe]]\nname = \"up\"\nkind = \"tcp\"\n\n[[probe]]\nname = \"down\"\nkind = \"tcp\"\naddress = \"{closed}\"\n"
        ),
    );
    let prober = Prober::new();
    assert_status(
        &run_blue(&prober, &c, "up").await,
        SampleStatus::Ok,
        "connected",
    );
    let p = c.probe("down").unwrap();
    let o = prober.run(&c, p, None).await;
    assert_status(&o, SampleStatus::Failed, "connect");
    drop(listener);
}

#[tokio::test]
async fn exec_substitutes_the_color_and_kills_a_process_that_ignores_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("survived");
    let c = config(
        dir.path(),
        "http://127.0.0.1:9",
        &format!(
            r#"
[[probe]]
name = "who"
kind = "exec"
command = ["/bin/sh", "-c", "echo checking $0; exit 3", "{{color}}"]

[[probe]]
name = "stubborn"
kind = "exec"
command = ["/bin/sh", "-c", "trap '' TERM; echo {{color}} started; (sleep 1; touch {marker}) & sleep 30"]
timeout = "300ms"
"#,
            marker = marker.display()
        ),
    );
    let prober = Prober::new();
    let o = run_blue(&prober, &c, "who").await;
    assert_status(&o, SampleStatus::Failed, "exit 3");
    assert!(o.detail.contains("checking blue"), "{o:?}");
    let started = Instant::now();
    let o = run_blue(&prober, &c, "stubborn").await;
    assert_status(&o, SampleStatus::Timeout, "timed out");
    assert!(o.detail.contains("blue started"), "output is kept: {o:?}");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    tokio::time::sleep(Duration::from_millis(1500)).await; // proving an absence needs the time to pass
    assert!(
        !marker.exists(),
        "a child of the probe outlived its timeout"
    );
}

// ---------------------------------------------------------------------------
// prometheus

#[tokio::test]
async fn prometheus_counts_requests_errors_and_latency_per_interval() {
    let page = Arc::new(Mutex::new(String::new()));
    let url = serve(
        Router::new()
            .route(
                "/metrics",
                get(|State(p): State<Arc<Mutex<String>>>| async move {
                    let text = p.lock().unwrap().clone();
                    if text.is_empty() {
                        (StatusCode::INTERNAL_SERVER_ERROR, text)
                    } else {
                        (StatusCode::OK, text)
                    }
                }),
            )
            .with_state(page.clone()),
    )
    .await;
    let metrics = |ok: u64, err: u64, fast: u64, slow: u64, sum: f64| {
        format!(
            r#"# HELP http_requests_total Requests.
# TYPE http_requests_total counter
http_requests_total{{code="200",path="/a"}} {ok}
http_requests_total{{code="503",path="/a"}} {err}
# TYPE http_request_duration_seconds histogram
http_request_duration_seconds_bucket{{le="0.05"}} {fast}
http_request_duration_seconds_bucket{{le="1"}} {total}
http_request_duration_seconds_bucket{{le="+Inf"}} {total}
http_request_duration_seconds_sum {sum}
http_request_duration_seconds_count {total}
"#,
            total = fast + slow
        )
    };
    let dir = tempfile::tempdir().unwrap();
    let c = config(
        dir.path(),
        &url,
        r#"
[[probe]]
name = "traffic"
kind = "prometheus"
path = "/metrics"
requests = "http_requests_total"
errors = 'http_requests_total{code=~"5.."}'
latency = "http_request_duration_seconds"
"#,
    );
    let prober = Prober::new();

    // A scrape that fails is a failed sample.
    let o = run_blue(&prober, &c, "traffic").await;
    assert_status(&o, SampleStatus::Failed, "scrape failed: HTTP 500");
    assert_eq!(
        o.latency_ms, None,
        "a scrape's own time is not the app's latency"
    );

    *page.lock().unwrap() = metrics(100, 0, 100, 0, 1.0);
    let o = run_blue(&prober, &c, "traffic").await;
    assert_status(&o, SampleStatus::NoData, "first scrape");

    // 100 more requests, 20 of them errors; 90 fast, 10 slow.
    *page.lock().unwrap() = metrics(180, 20, 190, 10, 1.0 + 0.9 + 5.0);
    let o = run_blue(&prober, &c, "traffic").await;
    assert_status(&o, SampleStatus::Failed, "100 requests, 20 errors (20.00%)");
    assert_eq!((o.requests, o.errors), (Some(100.0), Some(20.0)));
    let avg = o.latency_ms.unwrap();
    assert!((avg - 59.0).abs() < 1e-6, "avg {avg}");
    assert!(o.detail.contains("p95~"), "{o:?}");
    let sample = o.into_sample(now_ms(), "traffic", Some(Color::Blue), None);
    assert_eq!(sample.counts(), Some((100.0, 20.0)));

    // Nothing happened: no data, not an error rate of 0.
    let o = run_blue(&prober, &c, "traffic").await;
    assert_status(&o, SampleStatus::NoData, "no requests");
    assert_eq!(
        o.into_sample(0, "traffic", Some(Color::Blue), None)
            .counts(),
        None
    );

    // The app restarted: counters start again from zero.
    *page.lock().unwrap() = metrics(30, 0, 30, 0, 0.3);
    let o = run_blue(&prober, &c, "traffic").await;
    assert_status(&o, SampleStatus::Ok, "counter reset");
    assert_eq!((o.requests, o.errors), (Some(30.0), Some(0.0)));
    assert!((o.latency_ms.unwrap() - 10.0).abs() < 1e-6, "{o:?}");

    // A clone of the prober (as the daemon hands out) shares the memory.
    *page.lock().unwrap() = metrics(40, 0, 40, 0, 0.4);
    let o = run_blue(&prober.clone(), &c, "traffic").await;
    assert_eq!(o.requests, Some(10.0), "{o:?}");
}

// ---------------------------------------------------------------------------
// log

#[tokio::test]
async fn log_probe_counts_matching_lines_per_color_across_rotation_and_truncation() {
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("logs");
    std::fs::create_dir(&logs).unwrap();
    let blue = logs.join("blue.log");
    let green = logs.join("green.log");
    let append = |p: &Path, t: &str| {
        use std::io::Write;
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(p)
            .unwrap()
            .write_all(t.as_bytes())
            .unwrap();
    };
    append(&blue, "ERROR from before we started\n");
    append(&green, "");
    let c = config(
        dir.path(),
        "http://127.0.0.1:9",
        &format!(
            "[[probe]]\nname = \"errors\"\nkind = \"log\"\nfile = \"{}/{{color}}.log\"\npattern = \"ERROR|panicked\"\n",
            logs.display()
        ),
    );
    let p = c.probe("errors").unwrap();
    let prober = Prober::new();
    let run = |color| prober.run(&c, p, Some(color));

    assert_status(
        &run(Color::Blue).await,
        SampleStatus::NoData,
        "started following",
    );
    assert_status(
        &run(Color::Green).await,
        SampleStatus::NoData,
        "started following",
    );
    assert_status(
        &run(Color::Blue).await,
        SampleStatus::NoData,
        "no new lines",
    );

    append(&blue, "GET / 200\nERROR db down\nGET / 200\n");
    append(&green, "GET / 200\n");
    let o = run(Color::Blue).await;
    assert_status(&o, SampleStatus::Failed, "1 of 3 new lines");
    assert!(o.detail.contains("ERROR db down"), "{o:?}");
    assert_eq!((o.requests, o.errors), (Some(3.0), Some(1.0)));
    assert_status(
        &run(Color::Green).await,
        SampleStatus::Ok,
        "0 of 1 new lines",
    );

    // Rotation: renamed away, a late write to the old file, a new file.
    append(&blue, "ERROR just before rotation\n");
    std::fs::rename(&blue, logs.join("blue.log.1")).unwrap();
    append(&logs.join("blue.log.1"), "thread panicked late\n");
    append(&blue, "GET / 200\n");
    let o = run(Color::Blue).await;
    assert_status(&o, SampleStatus::Failed, "2 of 3 new lines");
    assert!(o.detail.contains("rotated 1x"), "{o:?}");

    // Truncation in place (copytruncate).
    append(&blue, "GET / 200\nGET / 200\nGET / 200\n");
    run(Color::Blue).await;
    std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(&blue)
        .unwrap();
    append(&blue, "ERROR x\n");
    let o = run(Color::Blue).await;
    assert_status(&o, SampleStatus::Failed, "1 of 1 new lines");
    assert!(o.detail.contains("truncated 1x"), "{o:?}");
}

mod store;
#[allow(unused_imports)]
use store::*;

// ---------------------------------------------------------------------------
// `rollbackd samples`

#[tokio::test]
async fn samples_command_prints_a_table_and_json() {
    let service = Setup::new().await.configure();
    let env = &service.env;
    let store = env.store().await;
    let now = now_ms();
    let mut traffic = sample(0);
    traffic.at_ms = now - 1000;
    traffic.probe = "healthz".into();
    traffic.requests = Some(120.0);
    traffic.errors = Some(3.0);
    traffic.ok = false;
    traffic.status = SampleStatus::Failed;
    traffic.detail = "line one\nline two".into();
    let mut old = sample(1);
    old.at_ms = now - 3_600_000;
    let mut green_sample = sample(2);
    green_sample.at_ms = now - 500;
    green_sample.color = Some(Color::Green);
    store
        .insert_samples(&[traffic.clone(), old, green_sample])
        .await
        .unwrap();

    let table = env.cli_ok(&[
        "samples", "--probe", "healthz", "--color", "blue", "--since", "10m",
    ]);
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 2, "a header and one sample:\n{table}");
    assert!(
        lines[0].contains("STATUS") && lines[0].contains("ERRORS"),
        "{table}"
    );
    assert!(
        lines[1].contains("failed") && lines[1].contains("3/120"),
        "{table}"
    );
    assert!(
        lines[1].contains("line one | line two"),
        "details stay on one line: {table}"
    );

    let json = env.cli_ok(&["samples", "--since", "10m", "--json"]);
    let parsed = samples_from_json(&json);
    assert_eq!(parsed.len(), 2, "{json}");
    assert_eq!(parsed[0], traffic);

    let out = env.cli(&["samples", "--probe", "nope"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no probe is named"));
}

/// `samples --json` read back into [`Sample`]s: every sample's time is
/// printed as `at`, RFC 3339 with milliseconds ending in `Z` (the one time
/// format), never as Unix milliseconds.
fn samples_from_json(json: &str) -> Vec<Sample> {
    let list: Vec<serde_json::Value> = serde_json::from_str(json).unwrap();
    list.into_iter()
        .map(|mut v| {
            let map = v.as_object_mut().unwrap();
            assert!(!map.contains_key("at_ms"), "{json}");
            let at = map.remove("at").unwrap();
            let at = at.as_str().unwrap();
            assert!(crate::cli::is_rfc3339_millis(at), "{at}");
            let t = humantime::parse_rfc3339(at).unwrap();
            let ms = t.duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64;
            map.insert("at_ms".into(), ms.into());
            serde_json::from_value(v).unwrap()
        })
        .collect()
}

#[tokio::test]
async fn a_reload_that_removes_a_probe_forgets_its_memory() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("blue.log");
    std::fs::write(&log, "").unwrap();
    let probe = format!(
        "[[probe]]\nname = \"errors\"\nkind = \"log\"\nfile = \"{}/{{color}}.log\"\npattern = \"ERROR\"\n",
        dir.path().display()
    );
    let with = config(dir.path(), "http://127.0.0.1:9", &probe);
    let without = config(
        dir.path(),
        "http://127.0.0.1:9",
        "[[probe]]\nname = \"h\"\nkind = \"tcp\"\n",
    );
    let prober = Prober::new();
    assert_status(
        &run_blue(&prober, &with, "errors").await,
        SampleStatus::NoData,
        "started following",
    );
    assert_status(
        &run_blue(&prober, &with, "errors").await,
        SampleStatus::NoData,
        "no new lines",
    );
    prober.forget_removed(&with);
    assert_status(
        &run_blue(&prober, &with, "errors").await,
        SampleStatus::NoData,
        "no new lines",
    );
    prober.forget_removed(&without);
    assert_status(
        &run_blue(&prober, &with, "errors").await,
        SampleStatus::NoData,
        "started following",
    );
}

#[tokio::test]
async fn details_are_capped() {
    let dir = tempfile::tempdir().unwrap();
    let c = config(
        dir.path(),
        "http://127.0.0.1:9",
        "[[probe]]\nname = \"loud\"\nkind = \"exec\"\ncommand = [\"/bin/sh\", \"-c\", \"head -c 3000 /dev/zero | tr '\\\\0' é; exit 1\"]\n",
    );
    let o = run_blue(&Prober::new(), &c, "loud").await;
    assert_eq!(o.status, SampleStatus::Failed);
    assert!(
        o.detail.len() <= rollbackd::probe::DETAIL_CAP + 6,
        "{}",
        o.detail.len()
    );
    assert!(o.detail.ends_with(" [...]"), "{}", o.detail);
}

/// The daemon end to end: a failing health probe on a 5 s interval with a
/// 200 ms confirm_interval has its three failures stored within about a
/// second, not ten.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemon_confirms_a_failure_at_the_confirm_interval() {
    let setup = Setup::new().await;
    setup.blue.set(503);
    let text = format!(
        r#"
[daemon]
state_dir = "state"
listen = "off"
watch_config = false

[service]
name = "beluga"

[colors.blue]
base_url = "{}"
[colors.green]
base_url = "{}"

[actions]
critical = "alert"
high = "alert"

[[probe]]
name = "healthz"
kind = "http"
path = "/healthz"
interval = "5s"
timeout = "1s"
confirm_interval = "200ms"
health = true
"#,
        setup.blue.url, setup.green.url
    );
    let (service, daemon) = setup.config(&text).start().await;
    let store = service.env.store().await;
    common::wait_for(
        "three failed blue samples",
        Duration::from_secs(15),
        || async {
            store
                .samples(Some("healthz"), Some(Color::Blue), 0)
                .await
                .unwrap()
                .len()
                >= 3
        },
    )
    .await;
    let blue_samples = store
        .samples(Some("healthz"), Some(Color::Blue), 0)
        .await
        .unwrap();
    assert!(blue_samples[..3].iter().all(|s| !s.ok), "{blue_samples:?}");
    let spread = blue_samples[2].at_ms - blue_samples[0].at_ms;
    assert!(
        (300..2000).contains(&spread),
        "three failures {spread} ms apart; the interval alone would take 10 s"
    );
    let green_samples = store
        .samples(Some("healthz"), Some(Color::Green), 0)
        .await
        .unwrap();
    assert!(
        green_samples.len() <= 2 && green_samples.iter().all(|s| s.ok),
        "a healthy color is not re-probed fast: {green_samples:?}"
    );
    assert!(daemon.stop().await.success());
}

/// TLS is rustls with verification on: a self-signed certificate is a failed
/// sample naming the certificate, not a silent pass.
#[tokio::test]
async fn https_with_an_untrusted_certificate_is_a_failed_sample() {
    use tokio_rustls::rustls;
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

    let dir = tempfile::tempdir().unwrap();
    let (key, cert) = (dir.path().join("key.pem"), dir.path().join("cert.pem"));
    let made = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
        ])
        .args(["-nodes", "-days", "1", "-subj", "/CN=localhost"])
        .args(["-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .unwrap();
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let certs = CertificateDer::pem_file_iter(&cert)
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_file(&key).unwrap();
    let server = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("https://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                if let Ok(mut tls) = acceptor.accept(stream).await {
                    let _ = tls
                        .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                        .await;
                }
            });
        }
    });
    let c = config(
        dir.path(),
        &url,
        "[[probe]]\nname = \"h\"\nkind = \"http\"\npath = \"/\"\ntimeout = \"3s\"",
    );
    let o = run_blue(&Prober::new(), &c, "h").await;
    assert_eq!(o.status, SampleStatus::Failed, "{o:?}");
    assert!(o.detail.to_lowercase().contains("certificate"), "{o:?}");
}

/// A probe stopped mid-run (reload, shutdown) takes its whole process group
/// with it, not only the direct child.
#[tokio::test]
async fn an_exec_probe_dropped_mid_run_leaves_no_process_behind() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("survived");
    let c = config(
        dir.path(),
        "http://127.0.0.1:9",
        &format!(
            "[[probe]]\nname = \"slow\"\nkind = \"exec\"\ncommand = [\"/bin/sh\", \"-c\", \"(sleep 1; touch {}) & sleep 30\", \"{{color}}\"]\ninterval = \"30s\"\ntimeout = \"20s\"\n",
            marker.display()
        ),
    );
    let prober = Prober::new();
    let run = run_blue(&prober, &c, "slow");
    assert!(
        tokio::time::timeout(Duration::from_millis(300), run)
            .await
            .is_err()
    );
    tokio::time::sleep(Duration::from_millis(1500)).await; // proving an absence needs the time to pass
    assert!(!marker.exists(), "a grandchild outlived the dropped probe");
}
