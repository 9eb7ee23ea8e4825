//! The host's own faults (issue 11): hostile files where a log or the
//! configuration should be, the listener's descriptors, exec children that
//! escape. The real binary against real FIFOs, `/dev/zero` and sockets.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use rollbackd::model::{Color, now_ms};

use crate::common::{self, Setup};

/// Run `rollbackd --config PATH check`, failing (not hanging) if it does
/// not finish within 20 s.
fn check_promptly(config: &Path) -> Output {
    let mut child = Command::new(common::BIN)
        .arg("--config")
        .arg(config)
        .arg("check")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("check on {} did not return", config.display());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

#[test]
fn check_refuses_a_fifo_dev_zero_or_huge_config_promptly_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("fifo.toml");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
    let zero = dir.path().join("zero.toml");
    std::os::unix::fs::symlink("/dev/zero", &zero).unwrap();
    let huge = dir.path().join("huge.toml");
    std::fs::write(&huge, format!("# {}\n", "x".repeat(2 * 1024 * 1024))).unwrap();
    for (path, says) in [
        (&fifo, "is a FIFO, not a regular file"),
        (&zero, "is a character device, not a regular file"),
        (&huge, "larger than the 1024 KiB limit"),
    ] {
        let out = check_promptly(path);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(78), "{}: {err}", path.display());
        assert!(
            err.contains(&path.display().to_string()) && err.contains(says),
            "{err}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_probe_on_a_fifo_or_dev_zero_fails_its_samples_and_the_daemon_still_rolls_back() {
    let setup = Setup::new().await;
    let dir = setup.dir.path().to_owned();
    nix::unistd::mkfifo(&dir.join("blue.log"), nix::sys::stat::Mode::S_IRWXU).unwrap();
    std::os::unix::fs::symlink("/dev/zero", dir.join("green.log")).unwrap();
    let extra = format!(
        r#"
[[probe]]
name = "errors"
kind = "log"
file = "{}/{{color}}.log"
pattern = "ERROR"
interval = "200ms"

[[rule]]
name = "health"
severity = "critical"
when = "health_failures >= 5"
window = "1m"
min_samples = 1
"#,
        dir.display()
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

    common::wait_for(
        "failed log samples naming the file type, and health samples",
        Duration::from_secs(30),
        || async {
            let logs = store.samples(Some("errors"), None, started).await.unwrap();
            let fifo = logs
                .iter()
                .any(|s| s.color == Some(Color::Blue) && !s.ok && s.detail.contains("is a FIFO"));
            let zero = logs.iter().any(|s| {
                s.color == Some(Color::Green) && !s.ok && s.detail.contains("a character device")
            });
            let health = store
                .samples(Some("healthz"), Some(Color::Blue), started)
                .await
                .unwrap()
                .len();
            fifo && zero && health >= 5
        },
    )
    .await;

    blue.set(503);
    common::wait_for(
        "the rollback to be verified",
        Duration::from_secs(30),
        || async {
            store
                .incidents()
                .await
                .unwrap()
                .first()
                .is_some_and(|i| i.state == rollbackd::model::IncidentState::Verified)
        },
    )
    .await;
    let lines = common::read(&switch_log);
    assert!(
        lines.starts_with("blue green v1"),
        "{lines}\n{}",
        common::read(&daemon.log)
    );
    let exit = daemon.stop().await;
    assert!(exit.success(), "SIGTERM is still obeyed, got {exit}");
}

/// `rollbackd run` under a soft and hard descriptor limit of 1024 (systemd's
/// default soft limit; `ulimit -n` sets both, so the daemon cannot raise it).
const ULIMIT_1024: &[&str] = &["/bin/sh", "-c", "ulimit -n 1024 && exec \"$0\" \"$@\""];

fn open_fds(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eleven_hundred_idle_clients_at_a_1024_limit_do_not_blind_the_probes() {
    let rule = r#"
[[rule]]
name = "health"
severity = "critical"
when = "health_failures >= 5"
window = "1m"
min_samples = 1
"#;
    let service = Setup::new()
        .await
        .extra(rule)
        .listen()
        .deploy("green", "v1")
        .deploy("blue", "v2")
        .configure();
    let (blue, env) = (&service.blue, &service.env);
    let daemon = env.daemon_under(ULIMIT_1024);
    let addr: std::net::SocketAddr = daemon.http_addr().await.parse().unwrap();
    daemon.ready().await;

    // 1100 idle clients, all at once; each connect bounded in time.
    let mut connects = tokio::task::JoinSet::new();
    for _ in 0..1100 {
        connects.spawn(async move {
            tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(addr))
                .await
                .ok()
                .and_then(Result::ok)
        });
    }
    let mut clients = Vec::new();
    while let Some(c) = connects.join_next().await {
        if let Some(c) = c.unwrap() {
            clients.push(c);
        }
    }
    assert!(
        clients.len() > 1000,
        "only {} clients connected",
        clients.len()
    );
    let fds = open_fds(daemon.pid());
    assert!(fds < 512, "the listener holds {fds} descriptors");

    // The probes still answer while the clients stay connected...
    let store = env.store().await;
    let since = now_ms();
    common::wait_for(
        "fresh ok health samples on both colors",
        Duration::from_secs(30),
        || async {
            let s = store.samples(Some("healthz"), None, since).await.unwrap();
            [Color::Blue, Color::Green]
                .iter()
                .all(|c| s.iter().filter(|x| x.color == Some(*c) && x.ok).count() >= 5)
        },
    )
    .await;
    let s = store.samples(Some("healthz"), None, since).await.unwrap();
    assert!(
        s.iter().all(|x| !x.detail.contains("Too many open files")),
        "{s:?}"
    );
    // ...and a fault on the active color is rolled back.
    blue.set(503);
    common::wait_for(
        "the rollback to be verified",
        Duration::from_secs(30),
        || async {
            store
                .incidents()
                .await
                .unwrap()
                .first()
                .is_some_and(|i| i.state == rollbackd::model::IncidentState::Verified)
        },
    )
    .await;
    let switched = common::read(&service.switch_log());
    assert!(
        switched.starts_with("blue green v1"),
        "{switched}\n{}",
        common::read(&daemon.log)
    );
    drop(clients);
}

/// A config whose blue color is `blue_url`, with `probes` appended (no
/// daemon: the probes are run directly).
fn probe_config(dir: &Path, blue_url: &str, probes: &str) -> rollbackd::config::Config {
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
    rollbackd::config::Config::parse(&path, &text).unwrap_or_else(|e| panic!("{e}\n{text}"))
}

async fn serve(app: axum::Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    url
}

#[tokio::test]
async fn a_redirect_to_another_origin_never_carries_the_configured_headers() {
    use axum::http::{HeaderMap, StatusCode, header};
    use axum::routing::get;
    use std::sync::{Arc, Mutex};

    // The other origin records every X-Api-Key it is sent.
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let other = serve(
        axum::Router::new()
            .route(
                "/landing",
                get(
                    |axum::extract::State(seen): axum::extract::State<Arc<Mutex<Vec<String>>>>,
                     headers: HeaderMap| async move {
                        if let Some(k) = headers.get("x-api-key") {
                            seen.lock()
                                .unwrap()
                                .push(k.to_str().unwrap_or("?").to_owned());
                        }
                        "ok"
                    },
                ),
            )
            .with_state(seen.clone()),
    )
    .await;
    let to_other = format!("{other}/landing");
    let home = serve(
        axum::Router::new()
            .route(
                "/away",
                get(move || {
                    let to = to_other.clone();
                    async move { (StatusCode::FOUND, [(header::LOCATION, to)]) }
                }),
            )
            .route(
                "/here",
                get(|| async { (StatusCode::FOUND, [(header::LOCATION, "/checked")]) }),
            )
            .route(
                "/checked",
                get(|headers: HeaderMap| async move {
                    if headers.get("x-api-key").is_some() {
                        (StatusCode::OK, "ok")
                    } else {
                        (StatusCode::UNAUTHORIZED, "no key")
                    }
                }),
            ),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("key");
    std::fs::write(&key, "s3cret-key\n").unwrap();
    let c = probe_config(
        dir.path(),
        &home,
        &format!(
            r#"
[[probe]]
name = "away"
kind = "http"
path = "/away"
follow_redirects = true
headers = {{ X-Api-Key = "file:{key}" }}

[[probe]]
name = "here"
kind = "http"
path = "/here"
follow_redirects = true
headers = {{ X-Api-Key = "file:{key}" }}
"#,
            key = key.display()
        ),
    );
    let prober = rollbackd::probe::Prober::new();
    let away = prober
        .run(&c, c.probe("away").unwrap(), Some(Color::Blue))
        .await;
    assert!(away.is_ok(), "the redirect is followed: {away:?}");
    assert!(
        seen.lock().unwrap().is_empty(),
        "the key reached another origin: {:?}",
        seen.lock().unwrap()
    );
    let here = prober
        .run(&c, c.probe("here").unwrap(), Some(Color::Blue))
        .await;
    assert!(
        here.is_ok(),
        "a same-origin redirect keeps the headers: {here:?}"
    );
}

#[tokio::test]
async fn metrics_pages_over_the_series_cap_or_with_nan_counters_are_failed_samples() {
    use axum::routing::get;
    use rollbackd::model::SampleStatus;
    use rollbackd::probe::prometheus::SERIES_CAP;

    let many: String = (0..SERIES_CAP + 1)
        .map(|i| format!("x{{i=\"{i}\"}} 1\n"))
        .collect::<String>()
        + "http_requests_total 10\n";
    let home = serve(
        axum::Router::new()
            .route(
                "/many",
                get(move || {
                    let m = many.clone();
                    async move { m }
                }),
            )
            .route(
                "/nan",
                get(|| async {
                    "http_requests_total{code=\"200\"} 10\nhttp_requests_total{code=\"500\"} NaN\n"
                }),
            )
            .route(
                "/inf",
                get(|| async { "http_requests_total{code=\"200\"} +Inf\n" }),
            ),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let mut probes = String::new();
    for name in ["many", "nan", "inf"] {
        probes.push_str(&format!(
            "[[probe]]\nname = \"{name}\"\nkind = \"prometheus\"\npath = \"/{name}\"\nrequests = \"http_requests_total\"\nerrors = 'http_requests_total{{code=~\"5..\"}}'\n\n"
        ));
    }
    let c = probe_config(dir.path(), &home, &probes);
    let prober = rollbackd::probe::Prober::new();
    for (name, says) in [
        ("many", format!("over the cap of {SERIES_CAP}")),
        ("nan", "is NaN, not a finite number".to_owned()),
        ("inf", "is inf, not a finite number".to_owned()),
    ] {
        // Twice: the second scrape is the one that would yield a delta.
        for _ in 0..2 {
            let o = prober
                .run(&c, c.probe(name).unwrap(), Some(Color::Blue))
                .await;
            assert_eq!(o.status, SampleStatus::Failed, "{name}: {o:?}");
            assert!(o.detail.contains(&says), "{name}: {o:?}");
        }
    }
}

/// Whether `/proc/PID` exists at all (a zombie counts: only its parent's
/// wait removes it).
fn exists(pid: i32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_checks_setsid_children_are_killed_and_reaped_by_the_daemon_and_gone_when_it_stops() {
    let setup = Setup::new().await;
    let pids = setup.dir.path().join("pids");
    let inflight = setup.dir.path().join("inflight");
    let extra = format!(
        r#"
[[probe]]
name = "escaper"
kind = "exec"
command = ["/bin/sh", "-c", "setsid sleep 300 & echo $! >> {pids}; exit 0", "{{color}}"]
interval = "500ms"
timeout = "500ms"

[[probe]]
name = "stopped-mid-run"
kind = "exec"
command = ["/bin/sh", "-c", "setsid sleep 300 & echo $! >> {inflight}; sleep 60", "{{color}}"]
interval = "2m"
timeout = "2m"
"#,
        pids = pids.display(),
        inflight = inflight.display()
    );
    let (service, daemon) = setup.extra(&extra).deploy("blue", "v1").start().await;
    let store = service.env.store().await;
    let since = now_ms();
    common::wait_for(
        "ok samples of the escaping check",
        Duration::from_secs(30),
        || async {
            let s = store.samples(Some("escaper"), None, since).await.unwrap();
            s.iter().filter(|x| x.ok).count() >= 4 && inflight.exists()
        },
    )
    .await;
    let samples = store.samples(Some("escaper"), None, since).await.unwrap();
    assert!(
        samples.iter().all(|s| s.ok),
        "exit 0 is ok, never a timeout: {samples:?}"
    );
    // Every setsid child of a finished check is gone: killed, and reaped
    // by the daemon (their subreaper), not left a zombie.
    let started: Vec<i32> = common::read(&pids)
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect();
    let finished = &started[..started.len() - 1];
    assert!(finished.len() >= 3, "{started:?}");
    common::wait_for(
        "the finished checks' setsid children to be gone",
        Duration::from_secs(10),
        || async { finished.iter().all(|p| !exists(*p)) },
    )
    .await;
    // A check in flight when the daemon stops takes its setsid child along.
    let running: Vec<i32> = common::read(&inflight)
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect();
    assert!(!running.is_empty());
    let exit = daemon.stop().await;
    assert!(exit.success(), "{exit}");
    common::wait_for(
        "the in-flight check's setsid child to be gone",
        Duration::from_secs(10),
        || async {
            running
                .iter()
                .all(|p| !exists(*p) || !rollbackd::process::group_alive(*p as u32))
        },
    )
    .await;
}
