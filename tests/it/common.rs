//! Shared test parts: a two-color service whose health can be flipped, a
//! config writer, a daemon child process, and condition polling with a
//! deadline (never a sleep to "let it start").

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;

pub const BIN: &str = env!("CARGO_BIN_EXE_rollbackd");

/// One color of the service under watch: `/healthz` answers with the
/// status held in `status`; status 0 never answers (a hung service).
pub struct Color {
    pub url: String,
    pub status: Arc<AtomicU16>,
}

impl Color {
    pub async fn start() -> Color {
        let status = Arc::new(AtomicU16::new(200));
        let app = Router::new()
            .route(
                "/healthz",
                get(|State(s): State<Arc<AtomicU16>>| async move {
                    if s.load(Ordering::SeqCst) == 0 {
                        std::future::pending::<()>().await;
                    }
                    let code =
                        StatusCode::from_u16(s.load(Ordering::SeqCst)).unwrap_or(StatusCode::OK);
                    (code, if code.is_success() { "ok" } else { "down" })
                }),
            )
            .with_state(status.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Color { url, status }
    }

    /// A color at `url` served by something else (or nothing: a stopped
    /// service); `set` changes nothing there.
    #[allow(dead_code)] // used by some test modules only
    pub fn url_only(url: &str) -> Color {
        Color {
            url: url.to_owned(),
            status: Arc::new(AtomicU16::new(0)),
        }
    }

    pub fn set(&self, code: u16) {
        self.status.store(code, Ordering::SeqCst);
    }
}

/// Poll `cond` until it holds or `limit` passes.
pub async fn wait_for<F, Fut>(what: &str, limit: Duration, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while !cond().await {
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub struct Env {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
}

impl Env {
    pub fn new(config_text: &str) -> Env {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("rollbackd.toml");
        std::fs::write(&config, config_text).unwrap();
        Env { dir, config }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Run a command to completion.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(BIN)
            .arg("--config")
            .arg(&self.config)
            .args(args)
            .env_remove("NOTIFY_SOCKET")
            .env_remove("JOURNAL_STREAM")
            .output()
            .unwrap()
    }

    pub fn cli_ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "rollbackd {args:?} failed: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Start `rollbackd run`; its log goes to `daemon.log` in the temp dir.
    pub fn daemon(&self) -> Daemon {
        self.daemon_with_env(&[])
    }

    /// [`Env::daemon`], with these environment variables set.
    pub fn daemon_with_env(&self, vars: &[(&str, &str)]) -> Daemon {
        self.spawn_daemon(&[], vars)
    }

    /// [`Env::daemon`] started through `wrapper`, a program and its
    /// arguments that ends by `exec`ing the rest of its argv (the daemon's
    /// command line), so the process is the daemon's: `sh -c 'ulimit -n
    /// 1024 && exec "$0" "$@"'`, an `unshare` that mounts first.
    pub fn daemon_under(&self, wrapper: &[&str]) -> Daemon {
        self.spawn_daemon(wrapper, &[])
    }

    fn spawn_daemon(&self, wrapper: &[&str], vars: &[(&str, &str)]) -> Daemon {
        let log = std::fs::File::create(self.path("daemon.log")).unwrap();
        let mut command = match wrapper.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(BIN);
                c
            }
            None => Command::new(BIN),
        };
        let child = command
            .arg("--config")
            .arg(&self.config)
            .args(["--log-format", "text", "run"])
            .env_remove("NOTIFY_SOCKET")
            .env_remove("JOURNAL_STREAM")
            .envs(vars.iter().copied())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        Daemon {
            child: Some(child),
            log: self.path("daemon.log"),
        }
    }

    pub async fn store(&self) -> rollbackd::store::Store {
        rollbackd::store::Store::open_dir(&self.dir.path().join("state"))
            .await
            .unwrap()
    }
}

pub struct Daemon {
    child: Option<Child>,
    pub log: PathBuf,
}

impl Daemon {
    pub fn pid(&self) -> i32 {
        self.child.as_ref().map(|c| c.id() as i32).unwrap_or(0)
    }

    /// Wait (bounded) until the daemon says it runs: its work loop started,
    /// its listener (if any) bound.
    pub async fn ready(&self) {
        let log = self.log.clone();
        wait_for("the daemon to run", Duration::from_secs(30), || {
            let log = log.clone();
            async move { read(&log).contains("rollbackd running") }
        })
        .await;
    }

    /// The HTTP listener's address (`127.0.0.1:PORT`), from the daemon's
    /// startup line, waited for (bounded).
    pub async fn http_addr(&self) -> String {
        const LINE: &str = "HTTP listener on http://";
        let log = self.log.clone();
        wait_for("the HTTP listener", Duration::from_secs(30), || {
            let log = log.clone();
            async move { read(&log).contains(LINE) }
        })
        .await;
        let text = read(&self.log);
        let rest = &text[text.find(LINE).unwrap() + LINE.len()..];
        rest.split_whitespace()
            .next()
            .unwrap()
            .trim_end_matches('/')
            .to_owned()
    }

    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid()), sig).unwrap();
    }

    /// SIGTERM, then wait (bounded) for the exit status.
    pub async fn stop(mut self) -> std::process::ExitStatus {
        self.signal(nix::sys::signal::Signal::SIGTERM);
        let mut child = self.child.take().unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "daemon did not exit after SIGTERM:\n{}",
                read(&self.log)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

pub fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// Whether the test switch command (see [`fast_config`]) has written its
/// first whole line. The shell creates `switch.log` a moment before it
/// writes the line, so the file's existence alone is a race.
pub fn switched(switch_log: &Path) -> bool {
    read(switch_log).contains('\n')
}

/// A config with both colors' health probes at a fast interval and a
/// rollback command that appends its argv and environment to `switch.log`.
pub fn fast_config(blue: &Color, green: &Color, dir: &Path, extra: &str) -> String {
    include_str!("../../config/test-fast.toml")
        .replace("@BLUE@", &blue.url)
        .replace("@GREEN@", &green.url)
        .replace(
            "@SWITCH_LOG@",
            &dir.join("switch.log").display().to_string(),
        )
        .replace("@EXTRA@", extra)
}

/// The setup most daemon tests share: both colors serving, a folder for
/// the config's `switch.log` and the test's own files, the fast config
/// ([`fast_config`]) with `extra`, deployments recorded, and the daemon
/// started and waited for. [`Setup::new`] starts the colors and makes the
/// folder first, so that `extra` can name files in it.
pub struct Setup {
    pub blue: Color,
    pub green: Color,
    pub dir: tempfile::TempDir,
    extra: String,
    /// A whole config instead of the fast one.
    text: Option<String>,
    listen: bool,
    deploys: Vec<(&'static str, &'static str)>,
    daemon_keys: String,
}

/// A configured service: its colors, its folder and its [`Env`].
pub struct Service {
    pub blue: Color,
    pub green: Color,
    pub dir: tempfile::TempDir,
    pub env: Env,
}

impl Setup {
    pub async fn new() -> Setup {
        Setup {
            blue: Color::start().await,
            green: Color::start().await,
            dir: tempfile::tempdir().unwrap(),
            extra: String::new(),
            text: None,
            listen: false,
            deploys: Vec::new(),
            daemon_keys: String::new(),
        }
    }

    /// Keys added to the fast config's `[daemon]` table (`database`,
    /// `host`): one `key = value` per line.
    #[allow(dead_code)] // used by the fleet tests
    pub fn daemon_keys(mut self, toml: &str) -> Setup {
        self.daemon_keys.push_str(toml);
        if !toml.ends_with('\n') {
            self.daemon_keys.push('\n');
        }
        self
    }

    /// A shared database (SPEC section 7) for this daemon, named `host`:
    /// the URL goes in a file of the service's folder, read through a
    /// `file:` secret (an environment variable would be shared by every
    /// test of this process).
    #[allow(dead_code)] // used by the fleet tests
    pub fn shared_database(self, url: &str, host: &str) -> Setup {
        let file = self.dir.path().join("database-url");
        std::fs::write(&file, format!("{url}\n")).unwrap();
        let keys = format!(
            "database = \"file:{}\"\nhost = \"{host}\"\n",
            file.display()
        );
        self.daemon_keys(&keys)
    }

    /// TOML appended to the fast config (after its `[rollback]`).
    pub fn extra(mut self, toml: &str) -> Setup {
        self.extra.push_str(toml);
        self
    }

    /// This whole config instead of the fast one (and its `extra`), for a
    /// test that needs other probes or timings; it names the colors'
    /// `url`s itself.
    pub fn config(mut self, text: &str) -> Setup {
        self.text = Some(text.to_owned());
        self
    }

    /// The HTTP listener on a free port (`listen = "127.0.0.1:0"`).
    pub fn listen(mut self) -> Setup {
        self.listen = true;
        self
    }

    /// `rollbackd deploy --color COLOR --version VERSION` before the daemon
    /// starts, in the order given.
    pub fn deploy(mut self, color: &'static str, version: &'static str) -> Setup {
        self.deploys.push((color, version));
        self
    }

    /// The config written and the deployments recorded; no daemon yet.
    pub fn configure(self) -> Service {
        let mut text = match &self.text {
            Some(text) => text.clone(),
            None => fast_config(&self.blue, &self.green, self.dir.path(), &self.extra),
        };
        if self.listen {
            text = text.replace("listen = \"off\"", "listen = \"127.0.0.1:0\"");
        }
        if !self.daemon_keys.is_empty() {
            text = text.replacen("[daemon]\n", &format!("[daemon]\n{}", self.daemon_keys), 1);
        }
        let env = Env::new(&text);
        for (color, version) in &self.deploys {
            env.cli_ok(&["deploy", "--color", color, "--version", version]);
        }
        Service {
            blue: self.blue,
            green: self.green,
            dir: self.dir,
            env,
        }
    }

    /// [`Setup::configure`], then [`Service::daemon`].
    pub async fn start(self) -> (Service, Daemon) {
        let service = self.configure();
        let daemon = service.daemon().await;
        (service, daemon)
    }
}

impl Service {
    /// Where the config's rollback command appends each switch.
    pub fn switch_log(&self) -> PathBuf {
        self.dir.path().join("switch.log")
    }

    /// `rollbackd run`, once it runs.
    pub async fn daemon(&self) -> Daemon {
        let daemon = self.env.daemon();
        daemon.ready().await;
        daemon
    }
}

/// The variable `.ci/run` sets so that a test whose system package is
/// missing fails instead of skipping: in CI every such test must run.
#[allow(dead_code)] // read by have_tool; named for the tests that explain a skip
pub const REQUIRE_ALL: &str = "ROLLBACKD_TEST_REQUIRE_ALL";

/// Whether the program `tool` (from the Debian package `package`) can be
/// run. When it cannot, prints why the calling test is skipped and returns
/// false; under [`REQUIRE_ALL`] it panics instead.
#[allow(dead_code)] // until every system-package test uses it
pub fn have_tool(tool: &str, package: &str) -> bool {
    let found = Path::new(tool).is_absolute() && Path::new(tool).exists()
        || std::env::var_os("PATH")
            .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(tool).is_file()))
        || ["/usr/sbin", "/sbin", "/usr/lib/postgresql"]
            .iter()
            .any(|dir| Path::new(dir).join(tool).is_file());
    if found {
        return true;
    }
    let why = format!("skipped: `{tool}` not found (install the Debian package `{package}`)");
    if std::env::var_os(REQUIRE_ALL).is_some_and(|v| v != "0" && !v.is_empty()) {
        panic!("{why}, and {REQUIRE_ALL} is set");
    }
    eprintln!("{why}");
    false
}

/// Everything logged on one thread while [`CapturedLog::capture`]'s guard
/// lives (on tokio's current-thread runtime, the tasks it runs log there
/// too).
#[derive(Clone, Default)]
pub struct CapturedLog(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for CapturedLog {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl CapturedLog {
    /// Log this thread's events (plain text, no colors) into this capture
    /// until the guard is dropped.
    pub fn capture(&self) -> tracing::subscriber::DefaultGuard {
        let writer = self.clone();
        tracing::subscriber::set_default(
            tracing_subscriber::fmt()
                .with_writer(move || writer.clone())
                .with_ansi(false)
                .finish(),
        )
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}
