//! The daemon's own read-only HTTP listener (`[daemon] listen`):
//! `/healthz` (is the daemon itself healthy), `/metrics` (Prometheus text)
//! and `/status` (JSON). Only GET routes exist: nothing over TCP changes
//! anything.
//!
//! The server runs on its own thread with its own small runtime, so that
//! `/healthz` can still answer "the work loop is stuck" when the loop (or
//! the runtime it runs on) is wedged. It reads what the work loop publishes
//! ([`Snapshot`] through a `watch` channel) and what the writers report
//! ([`Health`], `health.rs`); it never touches the database beyond the
//! file's size, and it never sees a secret.
//!
//! The listener cannot starve the probes of descriptors: at most
//! [`MAX_CONNECTIONS`] are served at once (more are closed as they are
//! accepted), and a connection that sends nothing for [`IDLE_TIMEOUT`], or
//! is still sending after [`READ_DEADLINE`] (a slowloris trickling its
//! headers), is closed. The rest of the descriptor limit is the probes'.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use serde_json::json;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot, watch};

use crate::daemon::health::Health;
use crate::daemon::metrics::{self, Metrics};
use crate::matrix::{self, Verdict};
use crate::model::{Color, Millis, now_ms};

/// `/healthz` fails when the work loop has not published for this long. It
/// publishes on every evaluation, four times a second.
pub const STUCK_AFTER: Duration = Duration::from_secs(5);

/// What the work loop last saw, published after every evaluation.
#[derive(Clone, Debug)]
pub struct Snapshot {
    /// When the loop published this (monotonic): how `/healthz` tells a
    /// stuck loop.
    pub at: Instant,
    pub started_ms: Millis,
    pub service: String,
    pub config_path: PathBuf,
    pub dry_run: bool,
    pub active: Option<Color>,
    /// The systemd `STATUS=` line.
    pub status_line: String,
    pub verdicts: Vec<Verdict>,
    pub probes: Vec<ProbeInfo>,
    pub rollback_in_flight: bool,
    pub last_reload: Option<ReloadInfo>,
    /// SIGTERM received: the loop has stopped on purpose.
    pub stopping: bool,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct ProbeInfo {
    pub name: String,
    pub kind: &'static str,
    pub shared: bool,
    pub health: bool,
    pub interval_ms: u64,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct ReloadInfo {
    pub at_ms: Millis,
    pub ok: bool,
    /// What changed, or why the reload was refused (with file and line).
    pub message: String,
}

impl ReloadInfo {
    /// As `/status` shows it: its time as every time printed (`at`, RFC
    /// 3339 with milliseconds), by the one function that does that.
    fn document(&self) -> serde_json::Value {
        crate::model::with_rfc3339_times(serde_json::to_value(self).unwrap_or_default())
    }
}

/// What the handlers read.
#[derive(Clone)]
pub struct AppState {
    pub snapshot: watch::Receiver<Snapshot>,
    pub health: Arc<Health>,
    pub metrics: Arc<Metrics>,
    /// For the storage fault's state only (records kept in memory, failed
    /// writes, whether the file at the path is still the one open): no
    /// query is ever made from here.
    pub store: crate::store::Store,
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics_text))
        .route("/status", get(status))
        .with_state(state)
}

/// The listener's thread. Dropping it without [`Server::stop`] leaves the
/// thread to end with the process.
pub struct Server {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Server {
    /// Bind now (so a bad address is an error here, not later) and serve on
    /// a thread of its own.
    pub fn start(addr: SocketAddr, state: AppState) -> std::io::Result<Server> {
        let listener = std::net::TcpListener::bind(addr)?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let (stop, stopped) = oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("http".into())
            .spawn(move || {
                runtime.block_on(async move {
                    let listener = match tokio::net::TcpListener::from_std(listener) {
                        Ok(l) => l,
                        Err(e) => {
                            tracing::error!("HTTP listener on {addr} failed: {e}");
                            return;
                        }
                    };
                    let listener = Capped::new(listener, Limits::default());
                    let serve =
                        axum::serve(listener, router(state)).with_graceful_shutdown(async move {
                            let _ = stopped.await;
                        });
                    if let Err(e) = serve.await {
                        tracing::error!("HTTP listener on {addr} failed: {e}");
                    }
                });
            })?;
        Ok(Server {
            addr,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stop accepting, let requests in progress finish, and wait (bounded)
    /// for the thread.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let joined = tokio::task::spawn_blocking(move || thread.join());
            match tokio::time::timeout(Duration::from_secs(5), joined).await {
                Ok(Ok(Ok(()))) => {}
                Ok(_) => tracing::error!("the HTTP listener thread panicked"),
                Err(_) => tracing::warn!("the HTTP listener did not stop within 5s; leaving it"),
            }
        }
    }
}

/// Why the daemon is unhealthy, if it is.
fn problems(state: &AppState) -> Vec<String> {
    let mut out = Vec::new();
    let (age, stopping) = {
        let snap = state.snapshot.borrow();
        (snap.at.elapsed(), snap.stopping)
    };
    if stopping {
        out.push("stopping".to_owned());
    } else if age > STUCK_AFTER {
        out.push(format!(
            "work loop stuck: no evaluation for {:.1}s",
            age.as_secs_f64()
        ));
    }
    out.extend(storage_problems(state));
    out.extend(shared_problem(state));
    out
}

/// What is wrong with the storage now: an unwritable database, rollback
/// records waiting in memory, a database file deleted or replaced.
fn storage_problems(state: &AppState) -> Vec<String> {
    let mut out = Vec::new();
    let db = state.health.db();
    if let Some(since) = db.failing_since {
        out.push(format!(
            "database unwritable for {:.1}s: {}",
            since.elapsed().as_secs_f64(),
            db.error.unwrap_or_default()
        ));
    }
    let kept = state.store.kept_len();
    if kept > 0 {
        out.push(format!(
            "{kept} rollback records kept in memory until the database takes writes again"
        ));
    }
    out.extend(state.store.file_problem());
    out
}

/// The shared database (SPEC section 7) lost, or never reached, with what
/// is held for it.
fn shared_problem(state: &AppState) -> Option<String> {
    let mirror = state.store.mirror()?;
    let health = mirror.health();
    let since = health.failing_since?;
    Some(format!(
        "shared database {} for {:.1}s: {}; {} rows held for it, {} samples dropped; protection goes on from this host's journal",
        if health.reached {
            "lost"
        } else {
            "not reached"
        },
        since.elapsed().as_secs_f64(),
        health.error.unwrap_or_default(),
        mirror.backlog(),
        mirror.dropped()
    ))
}

async fn healthz(State(state): State<AppState>) -> impl IntoResponse {
    let problems = problems(&state);
    if problems.is_empty() {
        (StatusCode::OK, "ok\n".to_owned())
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("unhealthy\n{}\n", problems.join("\n")),
        )
    }
}

/// OpenMetrics when the scraper's `Accept` asks for it (Prometheus does),
/// the classic text format otherwise.
async fn metrics_text(
    State(state): State<AppState>,
    headers: axum::http::HeaderMap,
) -> impl IntoResponse {
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
    let format = metrics::Format::negotiate(accept);
    // The one database size (`Store::size_bytes`), as `status` prints it.
    let size = state.store.size_bytes();
    state.metrics.set_storage(
        storage_problems(&state).is_empty(),
        state.store.failed_writes(),
        state.store.kept_len(),
    );
    match state.store.mirror() {
        Some(m) => state.metrics.set_shared(
            m.health().failing_since.is_none(),
            m.backlog(),
            m.dropped(),
            state.store.leadership().may_switch(),
        ),
        None => state.metrics.set_shared(true, 0, 0, true),
    }
    (
        [(header::CONTENT_TYPE, format.content_type())],
        state.metrics.encode(size, format),
    )
}

/// The same document as `status --json` (`status.rs`), from the loop's
/// snapshot: no query is made here.
async fn status(State(state): State<AppState>) -> impl IntoResponse {
    use crate::daemon::status::{ActiveDoc, DaemonDoc, DatabaseDoc, StatusDocument, VerdictDoc};
    let problems = problems(&state);
    let snap = state.snapshot.borrow().clone();
    let db = state.health.db();
    let now = now_ms();
    let doc = StatusDocument {
        service: snap.service.clone(),
        version: env!("CARGO_PKG_VERSION"),
        daemon: DaemonDoc::running(std::process::id(), snap.started_ms, now),
        active: snap.active.map(|color| ActiveDoc {
            color,
            deployment: None,
        }),
        verdicts: snap.verdicts.iter().map(VerdictDoc::from).collect(),
        database: DatabaseDoc {
            path: state.store.path().display().to_string(),
            size_bytes: state.store.size_bytes(),
            writable: Some(db.failing_since.is_none()),
            error: db.error,
            ok: Some(storage_problems(&state).is_empty()),
            kept_records: Some(state.store.kept_len()),
            failed_writes: Some(state.store.failed_writes()),
            file_problem: state.store.file_problem(),
        },
        fleet: state.store.shared().map(|db| {
            let mirror = state.store.mirror();
            json!({
                "host": db.host(),
                "leadership": state.store.leadership().as_str(),
                "database_ok": mirror.is_some_and(|m| m.health().failing_since.is_none()),
                "backlog_rows": mirror.map_or(0, |m| m.backlog()),
                "dropped_samples": mirror.map_or(0, |m| m.dropped()),
                "refused_rows": mirror.map_or(0, |m| m.refused()),
            })
        }),
        config: snap.config_path.display().to_string(),
        dry_run: snap.dry_run,
        healthy: Some(problems.is_empty()),
        problems: Some(problems),
        status: Some(snap.status_line.clone()),
        rollback_in_flight: Some(snap.rollback_in_flight),
        stopping: Some(snap.stopping),
        probes: serde_json::to_value(&snap.probes).ok(),
        last_reload: snap.last_reload.as_ref().map(ReloadInfo::document),
        work_loop: Some(json!({
            "last_evaluation_ms_ago": snap.at.elapsed().as_millis() as u64,
            "worst": matrix::worst(&snap.verdicts).map(
                |v| json!({ "rule": v.rule, "severity": v.severity.as_str(), "color": v.color.as_str() }),
            ),
        })),
        ..StatusDocument::default()
    };
    axum::Json(doc)
}

// ---------------------------------------------------------------------------
// The listener's limits.

/// Connections served at once; one more is closed as soon as it is
/// accepted. Small next to any descriptor limit (1024 at the least): the
/// rest is reserved for the probes.
pub const MAX_CONNECTIONS: usize = 64;
/// A connection that sends nothing (and is sent nothing) for this long is
/// closed: an idle keep-alive, or a client that stopped mid-request.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// Reading from a connection stops this long after it opened: a slowloris
/// sending a header byte every few seconds is closed; a keep-alive client
/// (Prometheus) simply reconnects.
pub const READ_DEADLINE: Duration = Duration::from_secs(30);

/// The listener's limits: [`MAX_CONNECTIONS`], [`IDLE_TIMEOUT`] and
/// [`READ_DEADLINE`] by default (tests shrink them).
#[derive(Clone, Copy, Debug)]
struct Limits {
    max_connections: usize,
    idle: Duration,
    read_deadline: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_connections: MAX_CONNECTIONS,
            idle: IDLE_TIMEOUT,
            read_deadline: READ_DEADLINE,
        }
    }
}

/// The TCP listener with a connection cap.
struct Capped {
    inner: tokio::net::TcpListener,
    permits: Arc<Semaphore>,
    limits: Limits,
    refused: u64,
}

impl Capped {
    fn new(inner: tokio::net::TcpListener, limits: Limits) -> Capped {
        Capped {
            inner,
            permits: Arc::new(Semaphore::new(limits.max_connections)),
            limits,
            refused: 0,
        }
    }
}

impl axum::serve::Listener for Capped {
    type Io = Guarded;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Guarded, SocketAddr) {
        loop {
            match self.inner.accept().await {
                Ok((stream, addr)) => match self.permits.clone().try_acquire_owned() {
                    Ok(permit) => return (Guarded::new(stream, permit, self.limits), addr),
                    Err(_) => {
                        // Over the cap: closed at once, its descriptor freed.
                        drop(stream);
                        self.refused += 1;
                        if self.refused.is_power_of_two() {
                            tracing::warn!(
                                "HTTP listener: {} connections refused over the cap of {}",
                                self.refused,
                                self.limits.max_connections
                            );
                        }
                    }
                },
                Err(e) => {
                    use std::io::ErrorKind::*;
                    if matches!(
                        e.kind(),
                        ConnectionRefused | ConnectionAborted | ConnectionReset
                    ) {
                        continue;
                    }
                    // Out of descriptors (EMFILE) or memory: the connection
                    // waits in the backlog; try again shortly.
                    tracing::warn!("HTTP listener: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.inner.local_addr()
    }
}

/// One accepted connection: its place under the cap, and the two timers
/// that close it.
struct Guarded {
    stream: tokio::net::TcpStream,
    _permit: OwnedSemaphorePermit,
    idle_for: Duration,
    idle: Pin<Box<tokio::time::Sleep>>,
    deadline: Pin<Box<tokio::time::Sleep>>,
}

impl Guarded {
    fn new(stream: tokio::net::TcpStream, permit: OwnedSemaphorePermit, limits: Limits) -> Guarded {
        Guarded {
            stream,
            _permit: permit,
            idle_for: limits.idle,
            idle: Box::pin(tokio::time::sleep(limits.idle)),
            deadline: Box::pin(tokio::time::sleep(limits.read_deadline)),
        }
    }

    fn active(&mut self) {
        let at = tokio::time::Instant::now() + self.idle_for;
        self.idle.as_mut().reset(at);
    }
}

impl AsyncRead for Guarded {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if self.deadline.is_elapsed() {
            // End of input: hyper closes the connection.
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        match Pin::new(&mut self.stream).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    self.active();
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                let idle = self.idle.as_mut().poll(cx).is_ready();
                let late = self.deadline.as_mut().poll(cx).is_ready();
                if idle || late {
                    Poll::Ready(Ok(()))
                } else {
                    Poll::Pending
                }
            }
        }
    }
}

impl AsyncWrite for Guarded {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.stream).poll_write(cx, data);
        if let Poll::Ready(Ok(n)) = r {
            if n > 0 {
                self.active();
            }
        } else if r.is_pending() && self.idle.as_mut().poll(cx).is_ready() {
            // A client that stopped reading its answer.
            return Poll::Ready(Err(std::io::ErrorKind::TimedOut.into()));
        }
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    /// A listener with small limits serving `/` -> "ok".
    async fn serve(limits: Limits) -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = Router::new().route("/", get(|| async { "ok" }));
        tokio::spawn(async move { axum::serve(Capped::new(listener, limits), app).await });
        addr
    }

    /// Whether the server closes `c` (EOF or reset) within `limit`.
    async fn closed_within(c: &mut TcpStream, limit: Duration) -> bool {
        let mut buf = [0u8; 64];
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            match tokio::time::timeout_at(deadline, c.read(&mut buf)).await {
                Err(_) => return false,
                Ok(Ok(0)) | Ok(Err(_)) => return true,
                Ok(Ok(_)) => continue,
            }
        }
    }

    async fn get_ok(addr: SocketAddr) -> bool {
        let Ok(mut c) = TcpStream::connect(addr).await else {
            return false;
        };
        let req = b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n";
        if c.write_all(req).await.is_err() {
            return false;
        }
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), c.read_to_end(&mut out)).await;
        String::from_utf8_lossy(&out).starts_with("HTTP/1.1 200")
    }

    #[test]
    fn the_last_reload_shows_its_time_as_every_time_is_shown() {
        let doc = ReloadInfo {
            at_ms: 1_764_115_200_123,
            ok: true,
            message: "2 probes changed".into(),
        }
        .document();
        assert_eq!(
            doc,
            json!({ "at": "2025-11-26T00:00:00.123Z", "ok": true, "message": "2 probes changed" })
        );
    }

    #[tokio::test]
    async fn connections_over_the_cap_are_closed_at_once_and_idle_ones_after_the_timeout() {
        let limits = Limits {
            max_connections: 4,
            idle: Duration::from_millis(500),
            read_deadline: Duration::from_secs(60),
        };
        let addr = serve(limits).await;
        let mut held = Vec::new();
        for _ in 0..4 {
            held.push(TcpStream::connect(addr).await.unwrap());
        }
        // The cap is full: the next one is closed long before any timeout.
        let mut extra = TcpStream::connect(addr).await.unwrap();
        assert!(closed_within(&mut extra, Duration::from_millis(400)).await);
        // The idle ones are closed by the server, then a request is served.
        for c in &mut held {
            assert!(closed_within(c, Duration::from_secs(10)).await, "idle kept");
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while !get_ok(addr).await {
            assert!(
                Instant::now() < deadline,
                "no request served after the idle ones closed"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    #[tokio::test]
    async fn a_slowloris_trickling_its_headers_is_closed_at_the_read_deadline() {
        let limits = Limits {
            max_connections: 4,
            idle: Duration::from_millis(500),
            read_deadline: Duration::from_secs(2),
        };
        let addr = serve(limits).await;
        let mut c = TcpStream::connect(addr).await.unwrap();
        let started = Instant::now();
        let header = b"GET / HTTP/1.1\r\nx-slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
        // One byte every 100 ms never lets the idle timer fire.
        for byte in header.iter().cycle().take(200) {
            if c.write_all(&[*byte]).await.is_err() {
                break;
            }
            let mut buf = [0u8; 16];
            match tokio::time::timeout(Duration::from_millis(100), c.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => break,
                _ => {}
            }
        }
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(1500) && took < Duration::from_secs(10),
            "closed after {took:?}"
        );
    }
}
