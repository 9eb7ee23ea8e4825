//! New evidence (issue 13) against real parts: the prometheus probe against
//! Python's official `prometheus_client`, the access_log probe against logs
//! written by a real nginx, the real binary rolling back on real-traffic
//! errors, and the unit probe on a real cgroup where the machine has one.

use std::io::Write;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rollbackd::config::Config;
use rollbackd::model::{Color, SampleStatus, now_ms};
use rollbackd::probe::{Outcome, Prober, access_log};
use tokio::io::AsyncBufReadExt;
use tokio::sync::{mpsc, watch};

use crate::common::{self, Setup};

/// A child process killed (and reaped) when the test ends, however it ends.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn config(dir: &Path, blue: &str, green: &str, probes: &str) -> Config {
    let text = format!(
        r#"
[daemon]
state_dir = "state"
listen = "off"
watch_config = false
[service]
name = "beluga"
[colors.blue]
base_url = "{blue}"
[colors.green]
base_url = "{green}"
[actions]
critical = "alert"
high = "alert"
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

/// A loopback port nothing listens on (bound, then released).
fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

// ---------------------------------------------------------------------------
// prometheus against the official Python client

const PY_SERVER: &str = r#"
import http.server, sys
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest, CONTENT_TYPE_LATEST
r = CollectorRegistry()
c = Counter('http_requests', 'Requests', ['code', 'path'], registry=r)
h = Histogram('http_request_duration_seconds', 'Latency', ['path'], registry=r)
P = '/a,b="c"\\d=e'
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == '/bump':
            c.labels('200', P).inc(7)
            c.labels('503', P).inc(3)
            c.labels('500', '/other').inc(100)
            for _ in range(10):
                h.labels(P).observe(0.2)
            h.labels('/other').observe(9.0)
            body = b'ok'
        else:
            body = generate_latest(r)
        self.send_response(200)
        self.send_header('Content-Type', CONTENT_TYPE_LATEST)
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
s = http.server.HTTPServer(('127.0.0.1', 0), H)
print(s.server_address[1], flush=True)
s.serve_forever()
"#;

#[tokio::test]
async fn prometheus_probe_reads_the_official_python_client_and_keeps_every_label_value() {
    if !common::have_tool("/usr/bin/python3", "python3-prometheus-client") {
        return;
    }
    let module = Command::new("/usr/bin/python3")
        .args(["-c", "import prometheus_client"])
        .status()
        .is_ok_and(|s| s.success());
    if !module {
        let why = "skipped: python3 cannot import prometheus_client (install the Debian package `python3-prometheus-client`)";
        assert!(
            std::env::var_os(common::REQUIRE_ALL).is_none_or(|v| v.is_empty() || v == "0"),
            "{why}, and {} is set",
            common::REQUIRE_ALL
        );
        eprintln!("{why}");
        return;
    }
    let mut child = tokio::process::Command::new("/usr/bin/python3")
        .args(["-c", PY_SERVER])
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let port = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
        .await
        .expect("the python server prints its port")
        .unwrap()
        .unwrap();
    let base = format!("http://127.0.0.1:{}", port.trim());
    let dir = tempfile::tempdir().unwrap();
    // Matching the exact label value proves it survived the parse: , = " \
    let c = config(
        dir.path(),
        &base,
        "http://127.0.0.1:9",
        r#"
[[probe]]
name = "traffic"
kind = "prometheus"
path = "/metrics"
requests = 'http_requests_total{path="/a,b=\"c\"\\d=e"}'
errors = 'http_requests_total{code=~"5..",path="/a,b=\"c\"\\d=e"}'
latency = 'http_request_duration_seconds{path="/a,b=\"c\"\\d=e"}'
"#,
    );
    let prober = Prober::new();
    let probe = c.probe("traffic").unwrap();
    // A labelled series exists once it has been touched.
    reqwest::get(format!("{base}/bump")).await.unwrap();
    let o = prober.run(&c, probe, Some(Color::Blue)).await;
    assert_eq!(o.status, SampleStatus::NoData, "first scrape: {o:?}");
    reqwest::get(format!("{base}/bump")).await.unwrap();
    let o = prober.run(&c, probe, Some(Color::Blue)).await;
    assert_eq!(o.status, SampleStatus::Failed, "{o:?}");
    assert_eq!(
        (o.requests, o.errors),
        (Some(10.0), Some(3.0)),
        "only the series whose path is exactly /a,b=\"c\"\\d=e: {o:?}"
    );
    let avg = o.latency_ms.unwrap();
    assert!(
        (avg - 200.0).abs() < 1e-6,
        "the other path's 9 s stays out: {o:?}"
    );
}

// ---------------------------------------------------------------------------
// access_log against a real nginx

struct Nginx {
    _child: Reaped,
    url: String,
}

/// nginx with its own config, pid and logs in `dir`, on a free loopback
/// port, proxying /blue/ and /green/ to the colors; it writes a JSON log
/// (both colors, by upstream) and a combined log per color.
async fn start_nginx(dir: &Path, blue: &str, green: &str) -> Nginx {
    let d = dir.display();
    for attempt in 0..5 {
        let port = free_port();
        let conf = format!(
            r#"
daemon off;
master_process off;
pid {d}/nginx.pid;
error_log {d}/error.log;
events {{ worker_connections 64; }}
http {{
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    log_format j escape=json '{{"status":"$status","request_time":"$request_time","upstream_addr":"$upstream_addr","uri":"$request_uri"}}';
    log_format c '$remote_addr - $remote_user [$time_local] "$request" $status $body_bytes_sent "$http_referer" "$http_user_agent" $request_time';
    server {{
        listen 127.0.0.1:{port};
        location /blue/ {{
            access_log {d}/access.json j;
            access_log {d}/blue.log c;
            proxy_pass {blue}/;
        }}
        location /green/ {{
            access_log {d}/access.json j;
            access_log {d}/green.log c;
            proxy_pass {green}/;
        }}
    }}
}}
"#
        );
        let path = dir.join("nginx.conf");
        std::fs::write(&path, conf).unwrap();
        let child = Command::new("/usr/sbin/nginx")
            .arg("-c")
            .arg(&path)
            .arg("-p")
            .arg(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut child = Reaped(child);
        let url = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(_)) = child.0.try_wait() {
                break; // the port was taken after all: try another
            }
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                return Nginx { _child: child, url };
            }
            assert!(
                Instant::now() < deadline,
                "nginx never listened: {}",
                common::read(&dir.join("error.log"))
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        eprintln!(
            "nginx attempt {attempt} failed: {}",
            common::read(&dir.join("error.log"))
        );
    }
    panic!("nginx did not start on any port");
}

type Seen = mpsc::Receiver<(Color, Outcome)>;

fn follow(config: &Config, probe: &str, fixed: Option<Color>) -> (Seen, watch::Sender<bool>) {
    let (tx, rx) = mpsc::channel(1000);
    let (stop, stop_rx) = watch::channel(false);
    let p = config.probe(probe).unwrap().clone();
    let colors = config.colors.clone();
    tokio::spawn(async move {
        let rollbackd::config::Check::AccessLog(check) = &p.check else {
            unreachable!()
        };
        access_log::follow(
            &p.name,
            check,
            &colors,
            fixed,
            Duration::from_secs(3600),
            move |c, o| {
                let tx = tx.clone();
                async move { tx.send((c, o)).await.is_ok() }
            },
            stop_rx,
        )
        .await
    });
    (rx, stop)
}

async fn next(rx: &mut Seen) -> (Color, SampleStatus, Option<f64>) {
    let (c, o) = tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("a sample within 10 s")
        .unwrap();
    (c, o.status, o.latency_ms)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_log_probe_reads_what_a_real_nginx_writes() {
    if !common::have_tool("/usr/sbin/nginx", "nginx") {
        return;
    }
    let blue = common::Color::start().await;
    // Green is down: nginx answers 502 itself, naming green's upstream.
    let green = format!("http://127.0.0.1:{}", free_port());
    let dir = tempfile::tempdir().unwrap();
    let nginx = start_nginx(dir.path(), &blue.url, &green).await;
    let d = dir.path().display();
    let c = config(
        dir.path(),
        &blue.url,
        &green,
        &format!(
            r#"
[[probe]]
name = "users"
kind = "access_log"
file = "{d}/access.json"
[[probe]]
name = "users-combined"
kind = "access_log"
file = "{d}/{{color}}.log"
format = "combined"
"#
        ),
    );
    let (mut json, _stop_json) = follow(&c, "users", None);
    let (mut combined, _stop_combined) = follow(&c, "users-combined", Some(Color::Blue));
    let client = reqwest::Client::new();
    let get = |path: &str| client.get(format!("{}{path}", nginx.url)).send();
    // The followers join the logs at their end: request until both have
    // seen a line, then drain.
    let deadline = Instant::now() + Duration::from_secs(20);
    let (mut j, mut k) = (false, false);
    while !(j && k) {
        assert!(Instant::now() < deadline, "the followers never saw a line");
        assert_eq!(get("/blue/healthz").await.unwrap().status(), 200);
        let wait = Duration::from_millis(300);
        j |= tokio::time::timeout(wait, json.recv()).await.is_ok();
        k |= tokio::time::timeout(wait, combined.recv()).await.is_ok();
    }
    while tokio::time::timeout(Duration::from_millis(300), json.recv())
        .await
        .is_ok()
    {}
    while tokio::time::timeout(Duration::from_millis(300), combined.recv())
        .await
        .is_ok()
    {}

    assert_eq!(get("/blue/healthz").await.unwrap().status(), 200);
    blue.set(500);
    assert_eq!(get("/blue/healthz").await.unwrap().status(), 500);
    assert_eq!(get("/green/healthz").await.unwrap().status(), 502);

    let (c1, s1, l1) = next(&mut json).await;
    assert_eq!((c1, s1), (Color::Blue, SampleStatus::Ok));
    assert!(l1.is_some_and(|ms| (0.0..5000.0).contains(&ms)), "{l1:?}");
    let (c2, s2, _) = next(&mut json).await;
    assert_eq!(
        (c2, s2),
        (Color::Blue, SampleStatus::Failed),
        "the upstream's 500"
    );
    let (c3, s3, _) = next(&mut json).await;
    assert_eq!(
        (c3, s3),
        (Color::Green, SampleStatus::Failed),
        "nginx's own 502 judges green"
    );

    let (c, s, _) = next(&mut combined).await;
    assert_eq!((c, s), (Color::Blue, SampleStatus::Ok));
    let (c, s, _) = next(&mut combined).await;
    assert_eq!((c, s), (Color::Blue, SampleStatus::Failed));
}

// ---------------------------------------------------------------------------
// the real binary: real-traffic errors roll back within a second

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_rolls_back_a_color_failing_every_request_from_the_access_log() {
    let setup = Setup::new().await;
    let log = setup.dir.path().join("access.json");
    std::fs::write(&log, "").unwrap();
    let extra = format!(
        "\n[[probe]]\nname = \"users\"\nkind = \"access_log\"\nfile = \"{}\"\n",
        log.display()
    );
    // The extra probe goes after [rollback]; a [[probe]] table is fine there.
    let service = setup
        .extra(&extra)
        .deploy("green", "v1")
        .deploy("blue", "v2")
        .configure();
    let (blue, green, env) = (&service.blue, &service.green, &service.env);
    let switch_log = service.switch_log();
    let check = env.cli_ok(&["check"]);
    assert!(
        check.contains("assuming 20 requests/s") && check.contains("error_rate >= 100% over 400ms"),
        "{check}"
    );

    let daemon = service.daemon().await;
    let store = env.store().await;
    // 20 requests/s per color, each a JSON line as nginx writes it.
    let (fail_tx, fail_rx) = watch::channel(false);
    let (blue_addr, green_addr) = (
        blue.url.trim_start_matches("http://").to_owned(),
        green.url.trim_start_matches("http://").to_owned(),
    );
    let writer_log = log.clone();
    let writer = tokio::spawn(async move {
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&writer_log)
            .unwrap();
        let mut tick = tokio::time::interval(Duration::from_millis(50));
        let mut first_failure: Option<Instant> = None;
        for _ in 0..1200 {
            tick.tick().await;
            let failing = *fail_rx.borrow();
            if failing && first_failure.is_none() {
                first_failure = Some(Instant::now());
            }
            let blue_status = if failing { 502 } else { 200 };
            let line = format!(
                "{{\"status\":\"{blue_status}\",\"request_time\":\"0.004\",\"upstream_addr\":\"{blue_addr}\"}}\n\
                 {{\"status\":\"200\",\"request_time\":\"0.003\",\"upstream_addr\":\"{green_addr}\"}}\n"
            );
            f.write_all(line.as_bytes()).unwrap();
        }
        first_failure
    });

    let started = now_ms();
    common::wait_for(
        "request samples of both colors",
        Duration::from_secs(20),
        || async {
            let s = store.samples(Some("users"), None, started).await.unwrap();
            s.iter().filter(|s| s.color == Some(Color::Blue)).count() >= 20
                && s.iter().filter(|s| s.color == Some(Color::Green)).count() >= 20
        },
    )
    .await;
    assert!(!switch_log.exists(), "no switch while healthy");

    let fault = Instant::now();
    fail_tx.send(true).unwrap();
    common::wait_for("the switch", Duration::from_secs(20), || async {
        common::switched(&switch_log)
    })
    .await;
    let took = fault.elapsed();
    eprintln!("rolled back {took:?} after the first failing request was due");
    writer.abort();
    let lines = common::read(&switch_log);
    assert!(lines.starts_with("blue green v1|"), "{lines}");
    // Loose under a loaded CI machine; the median is held to 0.5 s on the
    // pure engine (matrix::stream_tests).
    assert!(
        took < Duration::from_secs(5),
        "took {took:?}\n{}",
        common::read(&daemon.log)
    );
    let incidents = store.incidents().await.unwrap();
    assert_eq!(
        incidents[0].rule.as_deref(),
        Some("critical: error_rate >= 100% over 400ms"),
        "{incidents:?}"
    );
    // The healthz probe never failed: the access log alone decided.
    let health = store
        .samples(Some("healthz"), Some(Color::Blue), started)
        .await
        .unwrap();
    assert!(health.iter().all(|s| s.ok));
    daemon.stop().await;
}

/// The peers benchmark's burst (issue 18): a user requests a page on blue
/// every 20 ms through the proxy, one access-log line each (one write per
/// line, as nginx does); after 3 s of 200s the pages answer 500 (500 lines)
/// while `/healthz` stays 200. Under the rule the harness configures, the
/// switch command starts within a few hundred ms of the first failing line
/// (bound 1.5 s for a loaded CI machine; the figure is the benchmark's).
/// The harness's former rule, `error_rate > 50%` over 10 s, failed this: it
/// waits for the failures to outnumber the healthy requests in its window
/// (here about 3 s; 4.4 s in the benchmark).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_error_burst_in_the_access_log_starts_the_switch_within_a_few_hundred_ms() {
    let setup = Setup::new().await;
    let log = setup.dir.path().join("access.json");
    std::fs::write(&log, "").unwrap();
    // The fallback poll is an hour: only the watch can make it in time.
    let extra = format!(
        r#"
[[probe]]
name = "users"
kind = "access_log"
file = "{}"
interval = "1h"

[[rule]]
severity = "critical"
when = "error_rate >= 100%"
window = "200ms"
min_samples = 4
probes = ["users"]
"#,
        log.display()
    );
    let (service, daemon) = setup
        .extra(&extra)
        .deploy("green", "v1")
        .deploy("blue", "v2")
        .start()
        .await;
    let (blue, env, switch_log) = (&service.blue, &service.env, service.switch_log());
    let store = env.store().await;
    let started = now_ms();
    // Joined: the follower starts at the end, so wait until its samples
    // are stored before the 3 s of healthy traffic count.
    let (fail_tx, fail_rx) = watch::channel(false);
    let blue_addr = blue.url.trim_start_matches("http://").to_owned();
    let writer_log = log.clone();
    let first_failure = std::sync::Arc::new(std::sync::OnceLock::<Instant>::new());
    let first = first_failure.clone();
    let writer = tokio::spawn(async move {
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&writer_log)
            .unwrap();
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        let mut failed = 0;
        // Bounded: 60 s of healthy lines at most, then the 500 failing.
        for _ in 0..3000 {
            tick.tick().await;
            let status = if *fail_rx.borrow() { 500 } else { 200 };
            f.write_all(
                format!("{{\"status\":{status},\"upstream_addr\":\"{blue_addr}\",\"request_time\":0.002}}\n")
                    .as_bytes(),
            )
            .unwrap();
            if status == 500 {
                first.get_or_init(Instant::now);
                failed += 1;
                if failed == 500 {
                    break;
                }
            }
        }
    });
    common::wait_for("request samples", Duration::from_secs(20), || async {
        !store
            .samples(Some("users"), Some(Color::Blue), started)
            .await
            .unwrap()
            .is_empty()
    })
    .await;
    let healthy_from = Instant::now();
    common::wait_for(
        "3 s of healthy traffic",
        Duration::from_secs(10),
        || async { healthy_from.elapsed() >= Duration::from_secs(3) },
    )
    .await;
    assert!(!switch_log.exists(), "no switch while healthy");

    fail_tx.send(true).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !common::switched(&switch_log) {
        assert!(
            Instant::now() < deadline,
            "no switch\n{}",
            common::read(&daemon.log)
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let switched = Instant::now();
    writer.abort();
    let took = first_failure
        .get()
        .map(|t| switched.saturating_duration_since(*t));
    eprintln!("switch started {took:?} after the first failing line landed");
    assert!(common::read(&switch_log).starts_with("blue green v1|"));
    let took = took.unwrap_or_default();
    assert!(
        took < Duration::from_millis(1500),
        "took {took:?}\n{}",
        common::read(&daemon.log)
    );
    daemon.stop().await;
}

// ---------------------------------------------------------------------------
// unit: a real cgroup where the machine allows one

/// A cgroup v2 directory we may create children in, with the memory
/// controller: the unified root or its hybrid mount.
fn writable_memory_cgroup() -> Option<std::path::PathBuf> {
    for root in ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"] {
        let root = Path::new(root);
        let controllers = std::fs::read_to_string(root.join("cgroup.controllers")).ok()?;
        if !controllers.split_whitespace().any(|c| c == "memory") {
            continue;
        }
        let probe = root.join(format!("rollbackd-test-{}", std::process::id()));
        if std::fs::create_dir(&probe).is_ok() {
            let ok = probe.join("memory.max").exists();
            let _ = std::fs::remove_dir(&probe);
            if ok {
                // Children get the memory controller only when the root
                // hands it down.
                let _ = std::fs::write(root.join("cgroup.subtree_control"), "+memory");
                return Some(root.to_path_buf());
            }
        }
    }
    None
}

#[tokio::test]
async fn unit_probe_sees_an_oom_kill_in_a_real_cgroup_or_a_shaped_one() {
    let dir = tempfile::tempdir().unwrap();
    let (cgroup_dir, real) = match writable_memory_cgroup() {
        Some(root) => {
            let cg = root.join(format!("rollbackd-test-blue-{}", std::process::id()));
            std::fs::create_dir(&cg).unwrap();
            eprintln!("unit probe test: a real cgroup v2 at {}", cg.display());
            (cg, true)
        }
        None => {
            let cg = dir.path().join("rollbackd-test-blue");
            std::fs::create_dir(&cg).unwrap();
            std::fs::write(cg.join("memory.current"), "1048576\n").unwrap();
            std::fs::write(cg.join("memory.max"), "33554432\n").unwrap();
            std::fs::write(cg.join("memory.events"), "oom 0\noom_kill 0\n").unwrap();
            std::fs::write(cg.join("cpu.stat"), "usage_usec 10\n").unwrap();
            std::fs::write(cg.join("cgroup.events"), "populated 1\n").unwrap();
            eprintln!(
                "unit probe test: no writable cgroup v2 with the memory controller here; \
                 using a cgroup-shaped directory at {}",
                cg.display()
            );
            (cg, false)
        }
    };
    let template = cgroup_dir
        .display()
        .to_string()
        .replace("-blue", "-{color}");
    let c = config(
        dir.path(),
        "http://127.0.0.1:9",
        "http://127.0.0.1:9",
        &format!(
            "[[probe]]\nname = \"resources\"\nkind = \"unit\"\ncgroup = \"{template}\"\nmemory_max = \"90%\"\n"
        ),
    );
    let prober = Prober::new();
    let probe = c.probe("resources").unwrap();
    let mut sleeper = None;
    if real {
        std::fs::write(cgroup_dir.join("memory.max"), "33554432").unwrap();
        // Without swap to spill into, going past memory.max is an OOM kill.
        let _ = std::fs::write(cgroup_dir.join("memory.swap.max"), "0");
        // A long-lived process keeps the cgroup populated.
        let child = Command::new("/bin/sleep").arg("60").spawn().unwrap();
        std::fs::write(cgroup_dir.join("cgroup.procs"), child.id().to_string()).unwrap();
        sleeper = Some(Reaped(child));
    }
    let o = prober.run(&c, probe, Some(Color::Blue)).await;
    assert!(o.is_ok(), "{o:?}");
    assert!(o.detail.contains("of 32.0 MiB"), "{o:?}");

    if real {
        // A process that allocates past memory.max, moved into the cgroup
        // before it starts allocating: the kernel OOM-kills it.
        let mut hog = Command::new("/bin/sh")
            .args(["-c", "read _; exec /usr/bin/python3 -c 'x = b\"x\" * (256 * 1024 * 1024); print(len(x))'"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::fs::write(cgroup_dir.join("cgroup.procs"), hog.id().to_string()).unwrap();
        hog.stdin.take().unwrap().write_all(b"go\n").unwrap();
        let status = hog.wait().unwrap();
        assert!(!status.success(), "the hog was not killed: {status:?}");
    } else {
        std::fs::write(cgroup_dir.join("memory.events"), "oom 1\noom_kill 1\n").unwrap();
    }
    let o = prober.run(&c, probe, Some(Color::Blue)).await;
    assert_eq!(o.status, SampleStatus::Failed, "{o:?}");
    assert!(
        o.detail.contains("OOM-killed 1x since the previous run"),
        "{o:?}"
    );

    drop(sleeper);
    if real {
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::fs::remove_dir(&cgroup_dir).is_err() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}
