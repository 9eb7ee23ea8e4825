//! rollbackd as a systemd citizen (SPEC section 5), tested with real parts:
//! the unit file through `systemd-analyze`, sd_notify through a real
//! datagram socket as `NOTIFY_SOCKET`, real signals to the real binary,
//! the read-only HTTP listener over TCP, and journald in a private mount
//! namespace.

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use rollbackd::model::now_ms;

use crate::common::{self, wait_for};

const UNIT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/systemd/rollbackd.service");
const SWITCH_UNIT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/systemd/rollbackd-switch@.service"
);

// ---------------------------------------------------------------------------
// Test parts.

/// A real `NOTIFY_SOCKET`: a datagram socket in a temp dir, read by a
/// thread that keeps every message with the time it arrived.
struct Notifications {
    path: PathBuf,
    messages: Arc<Mutex<Vec<(Instant, String)>>>,
    stop: Arc<AtomicBool>,
}

impl Notifications {
    fn bind(dir: &Path) -> Notifications {
        let path = dir.join("notify.sock");
        let socket = UnixDatagram::bind(&path).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let messages = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (m, s) = (messages.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 65536];
            while !s.load(Ordering::SeqCst) {
                if let Ok(n) = socket.recv(&mut buf) {
                    let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                    m.lock().unwrap().push((Instant::now(), text));
                }
            }
        });
        Notifications {
            path,
            messages,
            stop,
        }
    }

    fn all(&self) -> Vec<(Instant, String)> {
        self.messages.lock().unwrap().clone()
    }

    fn texts(&self) -> Vec<String> {
        self.all().into_iter().map(|(_, m)| m).collect()
    }

    fn count(&self, needle: &str) -> usize {
        self.texts()
            .iter()
            .filter(|m| m.lines().any(|l| l == needle))
            .count()
    }

    fn pings(&self) -> Vec<Instant> {
        self.all()
            .into_iter()
            .filter(|(_, m)| m.lines().any(|l| l == "WATCHDOG=1"))
            .map(|(t, _)| t)
            .collect()
    }
}

impl Drop for Notifications {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// `rollbackd run` as a child, with the environment systemd would give it.
struct Proc {
    child: Option<Child>,
    log: PathBuf,
}

impl Proc {
    fn start(config: &Path, log: &Path, vars: &[(&str, String)]) -> Proc {
        // systemd gives WATCHDOG_PID with WATCHDOG_USEC, naming the daemon's
        // own PID: a shell that execs the binary knows it as `$$`.
        let mut cmd = if vars.iter().any(|(k, _)| *k == "WATCHDOG_USEC") {
            let mut sh = Command::new("/bin/sh");
            sh.args(["-c", "WATCHDOG_PID=$$ exec \"$0\" \"$@\"", common::BIN]);
            sh
        } else {
            Command::new(common::BIN)
        };
        cmd.arg("--config")
            .arg(config)
            .args(["--log-format", "text", "run"])
            .env_remove("NOTIFY_SOCKET")
            .env_remove("WATCHDOG_USEC")
            .env_remove("WATCHDOG_PID")
            .env_remove("JOURNAL_STREAM")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log).unwrap());
        for (k, v) in vars {
            cmd.env(k, v);
        }
        Proc {
            child: Some(cmd.spawn().unwrap()),
            log: log.to_path_buf(),
        }
    }

    fn log(&self) -> String {
        common::read(&self.log)
    }

    fn signal(&self, sig: Signal) {
        let pid = self.child.as_ref().unwrap().id() as i32;
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig).unwrap();
    }

    fn running(&mut self) -> bool {
        self.child.as_mut().unwrap().try_wait().unwrap().is_none()
    }

    /// Wait (bounded) for the exit status.
    async fn exit(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                self.child = None;
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "daemon did not exit within {limit:?}:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn wait_log(&self, what: &str, limit: Duration) {
        let deadline = Instant::now() + limit;
        while !self.log().contains(what) {
            assert!(
                Instant::now() < deadline,
                "timed out after {limit:?} waiting for {what:?} in the log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The HTTP listener's address, from its startup line.
    async fn http(&self) -> String {
        self.wait_log("HTTP listener on http://", Duration::from_secs(20))
            .await;
        let log = self.log();
        let at = log.find("HTTP listener on http://").unwrap();
        let rest = &log[at + "HTTP listener on http://".len()..];
        rest.split_whitespace().next().unwrap().to_owned()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// At most two of this module's daemons run at once: CI machines may have
/// two cores, and the rest of the suite's fast probes (150 ms timeouts)
/// must not time out because of this module's load.
static DAEMON_SLOTS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(2);

async fn daemon_slot() -> tokio::sync::SemaphorePermit<'static> {
    DAEMON_SLOTS.acquire().await.unwrap()
}

async fn get(url: &str) -> (u16, String) {
    let resp = reqwest::Client::new()
        .get(url)
        .timeout(Duration::from_secs(3))
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let code = resp.status().as_u16();
    (code, resp.text().await.unwrap())
}

async fn status_json(base: &str) -> serde_json::Value {
    let (code, body) = get(&format!("{base}/status")).await;
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

/// A counter or gauge from `/metrics`, summed over series whose labels
/// include `labels`.
async fn metric(base: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    let (code, body) = get(&format!("{base}/metrics")).await;
    assert_eq!(code, 200);
    let scrape = rollbackd::probe::exposition::parse(&body).unwrap();
    scrape
        .iter()
        .filter(|s| {
            s.metric == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|s| s.value)
        .sum()
}

/// A `/status` time (RFC 3339, milliseconds) as Unix milliseconds.
fn at_ms(at: &serde_json::Value) -> i64 {
    let t = humantime::parse_rfc3339(at.as_str().unwrap()).unwrap();
    t.duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64
}

/// `/status` once its verdicts were evaluated after `after_ms`.
async fn fresh_status(base: &str, after_ms: i64) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let status = status_json(base).await;
        let verdicts = status["verdicts"].as_array().unwrap();
        let fresh = !verdicts.is_empty() && verdicts.iter().all(|v| at_ms(&v["at"]) > after_ms);
        if fresh {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "verdicts never refreshed: {status}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The `n` (samples in the window) of one rule's latest verdict on blue;
/// 0 before the first evaluation.
fn verdict_n(status: &serde_json::Value, rule: &str) -> u64 {
    status["verdicts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["rule"] == rule && v["color"] == "blue")
        .map(|v| v["n"].as_u64().unwrap())
        .unwrap_or(0)
}

/// A config for two local colors with a fast health probe, the HTTP
/// listener on a free loopback port, and `rollback` as the switch command.
fn config(blue: &common::Color, green: &common::Color, rollback: &str, extra: &str) -> String {
    format!(
        r#"
[daemon]
state_dir = "state"
listen = "127.0.0.1:0"
watch_config = false

[service]
name = "beluga"

[colors.blue]
base_url = "{blue}"
[colors.green]
base_url = "{green}"

[[probe]]
name = "healthz"
kind = "http"
path = "/healthz"
interval = "200ms"
timeout = "200ms"
body_contains = "ok"
health = true

[rollback]
command = {rollback}
verify_after = "5s"
{extra}
"#,
        blue = blue.url,
        green = green.url,
    )
}

/// A switch command that records its start, waits for `gate` to exist,
/// then records the switch: a rollback held in flight for as long as the
/// test needs.
fn gated_switch(dir: &Path) -> String {
    let script = format!(
        "echo started >> {started}; while [ ! -e {gate} ]; do sleep 0.02; done; echo \"$1\" >> {log}",
        started = dir.join("started").display(),
        gate = dir.join("gate").display(),
        log = dir.join("switch.log").display(),
    );
    format!(r#"["/bin/sh", "-c", '{script}', "switch", "{{to}}"]"#)
}

fn write_config(path: &Path, text: &str) {
    // Write-then-rename, as editors and config management do.
    let tmp = path.with_extension("toml.tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn cli(config: &Path, args: &[&str]) -> std::process::Output {
    Command::new(common::BIN)
        .arg("--config")
        .arg(config)
        .args(args)
        .env_remove("NOTIFY_SOCKET")
        .env_remove("JOURNAL_STREAM")
        .output()
        .unwrap()
}

fn cli_ok(config: &Path, args: &[&str]) {
    let out = cli(config, args);
    assert!(
        out.status.success(),
        "rollbackd {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

mod unit;
#[allow(unused_imports)]
use unit::*;

// ---------------------------------------------------------------------------
// 2. sd_notify, 3. reload, 4. shutdown, through a real NOTIFY_SOCKET.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notify_ready_watchdog_reload_stopping_and_flush_on_sigterm() {
    let _slot = daemon_slot().await;
    let blue = common::Color::start().await;
    let green = common::Color::start().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("rollbackd.toml");
    write_config(&cfg, &config(&blue, &green, r#"["/bin/true"]"#, ""));
    cli_ok(&cfg, &["deploy", "--color", "blue", "--version", "v1"]);
    let notify = Notifications::bind(dir.path());
    let mut daemon = Proc::start(
        &cfg,
        &dir.path().join("daemon.log"),
        &[
            ("NOTIFY_SOCKET", notify.path.display().to_string()),
            ("WATCHDOG_USEC", "600000".into()),
        ],
    );

    // READY=1 once probes run, with a STATUS= naming the active color.
    wait_for("READY=1", Duration::from_secs(20), || async {
        notify.count("READY=1") >= 1
    })
    .await;
    let ready = notify
        .texts()
        .into_iter()
        .find(|m| m.contains("READY=1"))
        .unwrap();
    assert!(
        ready.contains("STATUS=active blue; no rule fired"),
        "{ready}"
    );

    // WATCHDOG=1 at half of WATCHDOG_USEC (300 ms), from the work loop.
    wait_for("6 watchdog pings", Duration::from_secs(10), || async {
        notify.pings().len() >= 6
    })
    .await;
    let pings = notify.pings();
    let gaps: Vec<Duration> = pings.windows(2).map(|w| w[1] - w[0]).collect();
    let mean = gaps.iter().sum::<Duration>() / gaps.len() as u32;
    assert!(
        mean >= Duration::from_millis(200) && mean <= Duration::from_millis(500),
        "pings every {mean:?}, expected about 300ms: {gaps:?}"
    );

    // SIGHUP: RELOADING=1 with MONOTONIC_USEC, then READY=1.
    daemon.signal(Signal::SIGHUP);
    wait_for(
        "READY=1 after the reload",
        Duration::from_secs(10),
        || async { notify.count("READY=1") >= 2 },
    )
    .await;
    let texts = notify.texts();
    let reloading = texts
        .iter()
        .position(|m| m.lines().any(|l| l == "RELOADING=1"))
        .expect("RELOADING=1 was sent");
    assert!(
        texts[reloading].lines().any(|l| l
            .strip_prefix("MONOTONIC_USEC=")
            .is_some_and(|v| v.parse::<u64>().is_ok_and(|us| us > 0))),
        "RELOADING=1 comes with MONOTONIC_USEC: {:?}",
        texts[reloading]
    );
    let second_ready = texts
        .iter()
        .enumerate()
        .filter(|(_, m)| m.lines().any(|l| l == "READY=1"))
        .nth(1)
        .unwrap()
        .0;
    assert!(second_ready > reloading, "READY=1 follows RELOADING=1");
    assert!(daemon.log().contains("configuration reloaded"));

    // Samples counted by the daemon before SIGTERM are all in the database
    // after it: nothing waiting in the writer's batch is lost.
    let base = format!("http://{}", daemon.http().await);
    let counted = metric(&base, "rollbackd_samples_total", &[]).await;
    assert!(counted > 0.0);
    daemon.signal(Signal::SIGTERM);
    let exit = daemon.exit(Duration::from_secs(10)).await;
    assert!(
        exit.success(),
        "SIGTERM exits 0, got {exit}\n{}",
        daemon.log()
    );
    // The datagram was sent before the exit; the reader thread may not
    // have taken it yet.
    wait_for("STOPPING=1", Duration::from_secs(5), || async {
        notify.count("STOPPING=1") >= 1
    })
    .await;
    assert_eq!(notify.count("STOPPING=1"), 1);
    let store = rollbackd::store::Store::open_dir(&dir.path().join("state"))
        .await
        .unwrap();
    let stored = store.sample_count().await.unwrap() as f64;
    assert!(
        stored >= counted,
        "{stored} samples stored, {counted} were counted before SIGTERM"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_work_loop_stops_pinging_and_fails_healthz() {
    let _slot = daemon_slot().await;
    let blue = common::Color::start().await;
    let green = common::Color::start().await;
    let dir = tempfile::tempdir().unwrap();
    let active = dir.path().join("active-color");
    std::fs::write(&active, "blue\n").unwrap();
    let cfg = dir.path().join("rollbackd.toml");
    write_config(
        &cfg,
        &config(
            &blue,
            &green,
            r#"["/bin/true"]"#,
            &format!("[active]\nfile = \"{}\"\n", active.display()),
        ),
    );
    // While this file exists, a debug build's work loop blocks its thread.
    let stall = dir.path().join("stall-the-loop");
    let notify = Notifications::bind(dir.path());
    let mut daemon = Proc::start(
        &cfg,
        &dir.path().join("daemon.log"),
        &[
            ("NOTIFY_SOCKET", notify.path.display().to_string()),
            ("WATCHDOG_USEC", "400000".into()),
            ("ROLLBACKD_DEBUG_STALL_LOOP", stall.display().to_string()),
        ],
    );
    let base = format!("http://{}", daemon.http().await);
    wait_for("3 watchdog pings", Duration::from_secs(20), || async {
        notify.pings().len() >= 3
    })
    .await;
    assert_eq!(get(&format!("{base}/healthz")).await, (200, "ok\n".into()));

    // A regular file or a FIFO at the active-color path can no longer
    // wedge the loop (it is opened O_NONBLOCK, regular files only): swap
    // in a FIFO with no writer and the daemon goes on pinging.
    let fifo = dir.path().join("stall.fifo");
    assert!(
        Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success()
    );
    let link = dir.path().join("active-color.fifo");
    std::fs::hard_link(&fifo, &link).unwrap();
    std::fs::rename(&link, &active).unwrap();
    let before = notify.pings().len();
    wait_for(
        "pings to go on with a FIFO at the active path",
        Duration::from_secs(10),
        || async { notify.pings().len() >= before + 5 },
    )
    .await;
    assert_eq!(get(&format!("{base}/healthz")).await.0, 200);

    // Wedge the loop for real through the debug builds' stall point.
    std::fs::write(dir.path().join("active-color.new"), "blue\n").unwrap();
    std::fs::rename(dir.path().join("active-color.new"), &active).unwrap();
    std::fs::write(&stall, "").unwrap();

    wait_for(
        "/healthz to report the stuck loop",
        Duration::from_secs(15),
        || async {
            let (code, body) = get(&format!("{base}/healthz")).await;
            code == 503 && body.contains("work loop stuck")
        },
    )
    .await;
    // Stuck for at least 5 s (healthz's threshold), and no ping in that
    // time, where an unstuck loop pings every 200 ms.
    let last = *notify.pings().last().unwrap();
    assert!(
        last.elapsed() >= Duration::from_secs(4),
        "the watchdog was pinged {:?} ago while the loop was stuck",
        last.elapsed()
    );
    assert!(daemon.running());

    // Unstick.
    std::fs::remove_file(&stall).unwrap();

    let before = notify.pings().len();
    wait_for("pings to resume", Duration::from_secs(10), || async {
        notify.pings().len() >= before + 2
    })
    .await;
    wait_for("/healthz to recover", Duration::from_secs(10), || async {
        get(&format!("{base}/healthz")).await.0 == 200
    })
    .await;
    daemon.signal(Signal::SIGTERM);
    assert!(daemon.exit(Duration::from_secs(10)).await.success());
}

mod reload;
#[allow(unused_imports)]
use reload::*;

// ---------------------------------------------------------------------------
// 6. The HTTP listener.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_listener_serves_healthz_metrics_status_read_only() {
    let _slot = daemon_slot().await;
    let blue = common::Color::start().await;
    let green = common::Color::start().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("rollbackd.toml");
    write_config(&cfg, &config(&blue, &green, r#"["/bin/true"]"#, ""));
    cli_ok(&cfg, &["deploy", "--color", "blue", "--version", "v1"]);
    let mut daemon = Proc::start(&cfg, &dir.path().join("daemon.log"), &[]);
    let addr = daemon.http().await;
    assert!(addr.starts_with("127.0.0.1:"), "{addr}");
    let base = format!("http://{addr}");

    assert_eq!(get(&format!("{base}/healthz")).await, (200, "ok\n".into()));

    // /metrics: Prometheus text with every family the daemon exports.
    wait_for(
        "samples of both colors",
        Duration::from_secs(20),
        || async {
            metric(&base, "rollbackd_samples_total", &[("color", "blue")]).await >= 3.0
                && metric(&base, "rollbackd_samples_total", &[("color", "green")]).await >= 3.0
        },
    )
    .await;
    // (No Accept header: the classic text format; tests/it/metrics.rs
    // covers the negotiation.)
    let resp = reqwest::get(format!("{base}/metrics")).await.unwrap();
    assert!(
        resp.headers()[reqwest::header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("text/plain; version=0.0.4")
    );
    let body = resp.text().await.unwrap();
    for family in [
        "# TYPE rollbackd_probe_latency_seconds histogram",
        "# TYPE rollbackd_samples_total counter",
        "# TYPE rollbackd_verdict_state gauge",
        "# TYPE rollbackd_rollbacks_total counter",
        "# TYPE rollbackd_database_size_bytes gauge",
        "# TYPE rollbackd_samples_dropped_total counter",
    ] {
        assert!(body.contains(family), "{family} in\n{body}");
    }
    assert!(metric(&base, "rollbackd_database_size_bytes", &[]).await > 0.0);
    assert!(
        metric(
            &base,
            "rollbackd_probe_latency_seconds_count",
            &[("probe", "healthz"), ("color", "blue")]
        )
        .await
            >= 3.0
    );
    assert_eq!(
        metric(&base, "rollbackd_active_color", &[("color", "blue")]).await,
        1.0
    );
    // (Matched as text: prometheus-parse cuts label values at '='.)
    wait_for(
        "blue's health rule to be clear",
        Duration::from_secs(10),
        || async {
            get(&format!("{base}/metrics")).await.1.contains(
                "rollbackd_verdict_state{rule=\"critical: health_failures >= 5 over 10m\",\
                 severity=\"critical\",color=\"blue\",state=\"clear\"} 1",
            )
        },
    )
    .await;

    // /status: JSON with the active color, verdicts and the loop's health.
    let status = status_json(&base).await;
    assert_eq!(status["active"]["color"], "blue");
    assert_eq!(status["service"], "beluga");
    assert_eq!(status["healthy"], true);
    assert_eq!(status["status"], "active blue; no rule fired");
    assert_eq!(status["database"]["writable"], true);
    assert!(status["verdicts"].as_array().unwrap().len() >= 2);
    assert!(
        status["work_loop"]["last_evaluation_ms_ago"]
            .as_u64()
            .unwrap()
            < 5000
    );

    // Read-only: nothing but GET, nothing but these paths.
    let client = reqwest::Client::new();
    for path in ["/healthz", "/status", "/metrics"] {
        let code = client
            .post(format!("{base}{path}"))
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(code, 405, "POST {path}");
    }
    assert_eq!(get(&format!("{base}/rollback")).await.0, 404);

    daemon.signal(Signal::SIGINT);
    assert!(daemon.exit(Duration::from_secs(10)).await.success());
}

#[test]
fn http_listener_defaults_to_loopback() {
    let config = rollbackd::config::Config::parse(
        Path::new("/etc/rollbackd/rollbackd.toml"),
        "[service]\nname = \"x\"\n[colors.blue]\nbase_url = \"http://127.0.0.1:1\"\n[colors.green]\nbase_url = \"http://127.0.0.1:2\"\n[rollback]\ncommand = [\"/bin/true\"]\n",
    )
    .unwrap();
    let listen = config.daemon.listen.unwrap();
    assert!(listen.ip().is_loopback(), "{listen}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_fails_while_the_database_is_unwritable() {
    let _slot = daemon_slot().await;
    let blue = common::Color::start().await;
    let green = common::Color::start().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("rollbackd.toml");
    write_config(&cfg, &config(&blue, &green, r#"["/bin/true"]"#, ""));
    let mut daemon = Proc::start(&cfg, &dir.path().join("daemon.log"), &[]);
    let base = format!("http://{}", daemon.http().await);
    assert_eq!(get(&format!("{base}/healthz")).await.0, 200);

    // Another process holds the write lock past the daemon's busy timeout.
    use sqlx::Connection;
    let db = dir.path().join("state/rollbackd.db");
    let mut conn = sqlx::SqliteConnection::connect(&format!("sqlite://{}", db.display()))
        .await
        .unwrap();
    sqlx::query("BEGIN EXCLUSIVE")
        .execute(&mut conn)
        .await
        .unwrap();
    let locked_at = now_ms();
    wait_for(
        "/healthz to report the database",
        Duration::from_secs(20),
        || async {
            let (code, body) = get(&format!("{base}/healthz")).await;
            code == 503 && body.contains("database unwritable")
        },
    )
    .await;
    assert_eq!(status_json(&base).await["database"]["writable"], false);

    let released_at = now_ms();
    sqlx::query("COMMIT").execute(&mut conn).await.unwrap();
    conn.close().await.unwrap();
    wait_for("/healthz to recover", Duration::from_secs(20), || async {
        get(&format!("{base}/healthz")).await.0 == 200
    })
    .await;
    // The samples taken while the database was locked were kept and
    // written afterwards.
    let store = rollbackd::store::Store::open_dir(&dir.path().join("state"))
        .await
        .unwrap();
    wait_for(
        "the samples of the locked time",
        Duration::from_secs(20),
        || async {
            store
                .samples(Some("healthz"), None, locked_at)
                .await
                .unwrap()
                .iter()
                .any(|s| s.at_ms < released_at)
        },
    )
    .await;
    daemon.signal(Signal::SIGTERM);
    assert!(daemon.exit(Duration::from_secs(20)).await.success());
}

// ---------------------------------------------------------------------------
// 5. journald, for real, in a private mount namespace.

#[test]
fn journald_receives_rollbackd_fields_and_message_ids() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("rollbackd.toml");
    std::fs::write(
        &cfg,
        "[daemon]\nstate_dir = \"state\"\nlisten = \"off\"\n[service]\nname = \"beluga\"\n\
         [colors.blue]\nbase_url = \"http://127.0.0.1:1\"\n[colors.green]\nbase_url = \"http://127.0.0.1:2\"\n\
         [[probe]]\nname = \"healthz\"\nkind = \"http\"\npath = \"/healthz\"\nhealth = true\n\
         [rollback]\ncommand = [\"/bin/true\"]\n",
    )
    .unwrap();
    let script = dir.path().join("journal.sh");
    std::fs::write(
        &script,
        format!(
            r#"#!/bin/sh
# Runs inside `unshare -m --propagation private`: a private /run with its
# own journald, so the host's journal is never touched.
set -eu
mount -t tmpfs tmpfs /run
[ -d /var/log/journal ] && mount -t tmpfs tmpfs /var/log/journal
mkdir -p /run/systemd/journal /run/log/journal
/lib/systemd/systemd-journald &
journald=$!
trap 'kill $journald' EXIT
i=0
while [ ! -S /run/systemd/journal/socket ]; do
  i=$((i+1)); [ $i -gt 200 ] && {{ echo "journald did not start" >&2; exit 1; }}
  sleep 0.05
done
{bin} --config {cfg} --log-format journald deploy --color blue --version v1 >/dev/null
# No previous deployment on green: the rollback is refused (exit 1).
{bin} --config {cfg} --log-format journald rollback --reason "operator test" >/dev/null 2>&1 || true
# Nothing listens on either color: the gate's probes fail (exit 1), and
# each probe's first failure is logged with its probe and color.
{bin} --config {cfg} --log-format journald gate --color blue --for 2s >/dev/null 2>&1 || true
# --log-format auto with stderr connected to the journal, as systemd does
# it: JOURNAL_STREAM names stderr's device and inode.
systemd-cat sh -c 'JOURNAL_STREAM=$(stat -L -c %d:%i /proc/self/fd/2) exec {bin} --config {cfg} deploy --color green --version v0 >/dev/null'
journalctl --sync
journalctl --directory=/run/log/journal -o json --no-pager SYSLOG_IDENTIFIER=rollbackd
"#,
            bin = common::BIN,
            cfg = cfg.display(),
        ),
    )
    .unwrap();
    // As root, a mount namespace is enough; otherwise map ourselves to
    // root in a user namespace first.
    let root = {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata("/proc/self")
            .map(|m| m.uid() == 0)
            .unwrap_or(false)
    };
    let mut unshare = Command::new("unshare");
    if !root {
        unshare.arg("-r");
    }
    let out = unshare
        .args(["-m", "--propagation", "private", "sh"])
        .arg(&script)
        .output()
        .expect("unshare (util-linux) is installed");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let entries: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();

    let deploy = entries
        .iter()
        .find(|e| {
            e["MESSAGE"]
                .as_str()
                .unwrap_or("")
                .contains("deployment #1")
        })
        .unwrap_or_else(|| panic!("no deploy entry in {stdout}"));
    assert_eq!(deploy["ROLLBACKD_COLOR"], "blue");
    assert_eq!(deploy["PRIORITY"], "6", "info");

    let refused = entries
        .iter()
        .find(|e| e["MESSAGE_ID"] == rollbackd::rollback::message_id::REFUSED)
        .unwrap_or_else(|| panic!("no REFUSED entry in {stdout}"));
    assert!(
        refused["MESSAGE"]
            .as_str()
            .unwrap()
            .starts_with("rollback refused: there is no previous deployment on green"),
        "{refused}"
    );
    assert_eq!(refused["ROLLBACKD_INCIDENT"], "1");
    assert_eq!(refused["ROLLBACKD_COLOR"], "blue");
    assert_eq!(refused["ROLLBACKD_SEVERITY"], "critical");
    assert_eq!(refused["PRIORITY"], "3", "error");
    assert_eq!(refused["SYSLOG_IDENTIFIER"], "rollbackd");

    // Auto mode chose native logging: structured fields, journal transport.
    let auto = entries
        .iter()
        .find(|e| {
            e["ROLLBACKD_COLOR"] == "green"
                && e["MESSAGE"]
                    .as_str()
                    .unwrap_or("")
                    .contains("deployment #2")
        })
        .unwrap_or_else(|| panic!("no native entry from --log-format auto in {stdout}"));
    assert_eq!(auto["_TRANSPORT"], "journal");

    let probe = entries
        .iter()
        .find(|e| e["ROLLBACKD_PROBE"] == "healthz" && e["ROLLBACKD_COLOR"] == "blue")
        .unwrap_or_else(|| panic!("no ROLLBACKD_PROBE entry in {stdout}"));
    assert!(
        probe["MESSAGE"]
            .as_str()
            .unwrap()
            .starts_with("probe healthz failing on blue"),
        "{probe}"
    );
    assert_eq!(probe["PRIORITY"], "4", "warning");

    let started = entries
        .iter()
        .find(|e| e["MESSAGE_ID"] == rollbackd::rollback::message_id::STARTED)
        .unwrap_or_else(|| panic!("no STARTED entry in {stdout}"));
    assert_eq!(started["ROLLBACKD_INCIDENT"], "1");
    assert_eq!(started["ROLLBACKD_SEVERITY"], "critical");
    // No field leaks under its Rust name.
    assert!(started.get("rollbackd.color").is_none());
    assert!(started.get("message_id").is_none());
}
