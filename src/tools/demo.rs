//! `rollbackd demo`: a self-contained rehearsal on one terminal. Two local
//! colors of a tiny built-in service, a deployment, an injected fault on the
//! active color, and the real daemon code path (`daemon::run`) detecting it,
//! verifying the standby, switching, verifying again and writing the
//! incident — narrated from what lands in the database. Needs no config,
//! no root and no network beyond loopback.
//!
//! Stdout carries the narration only, wrapped to 100 columns; the daemon
//! logs to a file beside the temporary folder, kept with the incident's
//! Markdown report (charts included) and named at the end. The folder is
//! removed at the end and on Ctrl-C or SIGTERM (exit 130).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;

use crate::config::Config;
use crate::daemon;
use crate::daemon::signals::Control;
use crate::model::{Color, now_ms};
use crate::store::Store;

/// One color of the built-in service. `broken` makes `/healthz` fail.
struct Service {
    url: String,
    broken: Arc<AtomicBool>,
}

async fn start_service(color: Color, version: &'static str) -> anyhow::Result<Service> {
    let broken = Arc::new(AtomicBool::new(false));
    let app = Router::new()
        .route(
            "/healthz",
            get(|State(b): State<Arc<AtomicBool>>| async move {
                if b.load(Ordering::SeqCst) {
                    (
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "database connection refused",
                    )
                } else {
                    (StatusCode::OK, "ok")
                }
            }),
        )
        .route(
            "/",
            get(move || async move { format!("beluga {version} on {color}\n") }),
        )
        .with_state(broken.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .context("cannot bind a loopback port")?;
    let url = format!("http://{}", listener.local_addr()?);
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            eprintln!("demo service stopped: {e}");
        }
    });
    Ok(Service { url, broken })
}

/// The narration: one line per step, stamped with the time since the
/// start, wrapped to [`WIDTH`] columns (continuation lines indented under
/// the text). The only thing the demo writes to stdout.
struct Narrator(Instant);

/// The narration fits a terminal this wide.
pub const WIDTH: usize = 100;

impl Narrator {
    fn say(&self, text: impl AsRef<str>) {
        let stamp = format!("[{:>5.1}s] ", self.0.elapsed().as_secs_f64());
        println!("{}", wrap(&stamp, text.as_ref(), WIDTH));
    }
}

/// `text` after `first` (a stamp or an indent), broken at spaces so no
/// line is wider than `width`; later lines are indented as wide as
/// `first`. Runs of spaces inside a line (aligned columns) are kept; a
/// word longer than a line (a path) is left whole.
fn wrap(first: &str, text: &str, width: usize) -> String {
    let indent = " ".repeat(first.chars().count());
    let mut out = String::new();
    let mut line = first.to_owned();
    let mut empty = true;
    for word in text.split(' ') {
        let wide = line.chars().count() + 1 + word.chars().count();
        if !empty && wide > width {
            out.push_str(line.trim_end());
            out.push('\n');
            line = indent.clone();
            empty = true;
        }
        if empty && word.is_empty() {
            // Spaces where a line breaks are the break.
            continue;
        }
        if !empty {
            line.push(' ');
        }
        line.push_str(word);
        empty = false;
    }
    out.push_str(line.trim_end());
    out
}

/// What the demo keeps after it ends: the daemon's log and the incident
/// report, beside (not in) its temporary folder, named after it.
struct Kept {
    log: PathBuf,
    report: PathBuf,
}

impl Kept {
    fn beside(dir: &Path) -> Kept {
        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| format!("rollbackd-demo-{}", std::process::id()));
        let parent = dir.parent().unwrap_or(Path::new("."));
        Kept {
            log: parent.join(format!("{name}.log")),
            report: parent.join(format!("{name}.md")),
        }
    }
}

pub async fn run() -> anyhow::Result<()> {
    let stop = interrupted();
    let narrator = Narrator(Instant::now());
    let dir = tempfile::Builder::new()
        .prefix("rollbackd-demo-")
        .tempdir()
        .context("cannot create a temp dir")?;
    let kept = Kept::beside(dir.path());
    let log = std::fs::File::create(&kept.log)
        .with_context(|| format!("cannot create the log file {}", kept.log.display()))?;
    crate::logging::init_file(log);

    let (control, control_rx) = tokio::sync::mpsc::channel(4);
    let mut daemon = None;
    let ended = tokio::select! {
        result = rehearse(&narrator, dir.path(), control_rx, &mut daemon) => Ok(result),
        (why, code) = stop => {
            println!();
            narrator.say(why);
            Err(code)
        }
    };
    // Stop the daemon (bounded) before its folder goes: a database being
    // written while the folder is removed would leave files behind.
    drop(control);
    if let Some(task) = daemon.take() {
        match tokio::time::timeout(Duration::from_secs(10), task).await {
            Ok(Ok(result)) => result?,
            Ok(Err(e)) => anyhow::bail!("the daemon task failed: {e}"),
            Err(_) => anyhow::bail!("the daemon did not stop within 10s"),
        }
    }
    let result = match ended {
        Ok(result) => result,
        Err(code) => {
            let path = dir.path().display().to_string();
            dir.close()
                .with_context(|| format!("cannot remove the demo's folder {path}"))?;
            narrator.say(format!(
                "stopped the daemon and removed {path}; its log is in {}",
                kept.log.display()
            ));
            // Nothing is left to clean up: the folder is gone, the log
            // file is written unbuffered.
            std::process::exit(code);
        }
    };
    let (config, incident_id) = result?;

    let store = Store::open_dir(&config.daemon.state_dir).await?;
    let inc = store.incident(incident_id).await?;
    let events = store.incident_events(incident_id).await?;
    let chart = crate::report::incident::chart(&store, &inc, &events).await?;
    let report = crate::report::incident::markdown(&config.service, &inc, &events, &chart);
    std::fs::write(&kept.report, report)
        .with_context(|| format!("cannot write the report {}", kept.report.display()))?;
    store.close().await;
    let path = dir.path().display().to_string();
    dir.close()
        .with_context(|| format!("cannot remove the demo's folder {path}"))?;
    println!();
    println!(
        "{}",
        wrap(
            "",
            &crate::report::incident::summary(&config.service, &inc, &events),
            WIDTH
        )
    );
    println!();
    println!(
        "{}",
        wrap(
            "",
            &format!(
                "done in {:.1}s; removed {}. Kept: the incident report, in Markdown with charts of \
                 error rate and latency (paste it into an issue), in",
                narrator.0.elapsed().as_secs_f64(),
                path,
            ),
            WIDTH
        )
    );
    println!("  {}", kept.report.display());
    println!("and the daemon's log in");
    println!("  {}", kept.log.display());
    println!();
    println!("Try it for real with your own configuration:");
    println!("  {}", try_for_real());
    Ok(())
}

/// The demo itself: services, deployments, the daemon, the fault, and the
/// incident narrated until it closes. Returns the config and the incident.
/// The daemon task is left in `daemon` for the caller to stop, also when
/// this future is dropped (Ctrl-C).
async fn rehearse(
    narrator: &Narrator,
    dir: &Path,
    control_rx: tokio::sync::mpsc::Receiver<Control>,
    daemon: &mut Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
) -> anyhow::Result<(Config, i64)> {
    let blue = start_service(Color::Blue, "v2").await?;
    let green = start_service(Color::Green, "v1").await?;
    let active_file = dir.join("active-color");
    std::fs::write(&active_file, "blue\n")?;
    let config_path = dir.join("rollbackd.toml");
    let config_text = include_str!("../../config/demo.toml")
        .replace("@BLUE@", &blue.url)
        .replace("@GREEN@", &green.url)
        .replace("@ACTIVE@", &active_file.display().to_string());
    std::fs::write(&config_path, config_text)?;
    let config = Config::load(&config_path)?;
    println!("rollbackd demo: the real daemon against two local colors of a built-in service");
    println!("  blue  {}", blue.url);
    println!("  green {}", green.url);
    println!("  state in {}", dir.display());
    println!();

    let store = Store::open_dir(&config.daemon.state_dir).await?;
    let now = now_ms();
    store
        .record_deployment(Color::Green, "v1", "demo", now - 60_000)
        .await?;
    store
        .record_deployment(Color::Blue, "v2", "demo", now)
        .await?;
    narrator.say("deployed v1 on green earlier; v2 is now live on blue (green is the standby)");

    let daemon_config = config.clone();
    *daemon = Some(tokio::spawn(async move {
        Ok(daemon::run(daemon_config, control_rx).await?)
    }));
    narrator.say(watching(&config));

    let started = now_ms();
    wait(Duration::from_secs(15), || async {
        let n = store
            .samples(Some("healthz"), Some(Color::Blue), started)
            .await
            .map(|s| s.len())
            .unwrap_or(0);
        n >= 4
    })
    .await
    .context("no healthy samples arrived")?;
    narrator.say("both colors healthy; no rule fired");

    blue.broken.store(true, Ordering::SeqCst);
    narrator.say("FAULT INJECTED: blue's /healthz now answers 500 \"database connection refused\"");

    let mut shown = 0;
    let deadline = Instant::now() + Duration::from_secs(40);
    let incident_id = loop {
        if let Some(incident) = store.incidents().await?.into_iter().next() {
            let events = store.incident_events(incident.id).await?;
            for e in events.iter().skip(shown) {
                narrator.say(format!(
                    "incident #{}: {:<16} {}",
                    incident.id, e.state, e.message
                ));
            }
            shown = events.len();
            if incident.closed_ms.is_some() {
                break incident.id;
            }
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the rollback did not finish within 40s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let serving = crate::rollback::active::read_settled(&active_file).await?;
    narrator.say(format!(
        "traffic is on {serving}; v2 is quarantined and will not be restored automatically"
    ));
    store.close().await;
    Ok((config, incident_id))
}

/// Resolves on Ctrl-C (SIGINT) or SIGTERM, saying which, with the exit
/// code a shell reports for a command the signal stopped (128 + signal). The handlers are
/// installed at the call, not at the first poll, so a Ctrl-C that comes
/// while the demo starts is caught too.
fn interrupted() -> impl std::future::Future<Output = (&'static str, i32)> {
    use tokio::signal::unix::{SignalKind, signal};
    let handlers = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    );
    async move {
        let (Ok(mut int), Ok(mut term)) = handlers else {
            // Without handlers the default action (exit) stays.
            return std::future::pending().await;
        };
        tokio::select! {
            _ = int.recv() => ("interrupted (Ctrl-C): stopping", 130),
            _ = term.recv() => ("terminated: stopping", 143),
        }
    }
}

/// The command to try next, as the user can type it: `rollbackd` when it
/// is on PATH, else the path this demo was started by; with the installed
/// configuration, or the repository's example when run from a checkout.
fn try_for_real() -> String {
    let on_path = std::env::var_os("PATH").is_some_and(|paths| {
        std::env::split_paths(&paths).any(|dir| dir.join("rollbackd").is_file())
    });
    let command = if on_path {
        "rollbackd".to_owned()
    } else {
        std::env::args_os()
            .next()
            .map(|a| shell_word(&a.to_string_lossy()))
            .unwrap_or_else(|| "rollbackd".into())
    };
    let config = ["/etc/rollbackd/rollbackd.toml", "config/rollbackd.toml"]
        .into_iter()
        .find(|p| Path::new(p).is_file())
        .unwrap_or("/etc/rollbackd/rollbackd.toml");
    format!("{command} --config {config} check")
}

/// `word` quoted for a POSIX shell when it needs it.
fn shell_word(word: &str) -> String {
    let plain = !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-+=:,@".contains(c));
    if plain {
        word.to_owned()
    } else {
        format!("'{}'", word.replace('\'', "'\\''"))
    }
}

/// What the daemon watches, and the two numbers behind the default
/// Critical rule (SPEC section 2, "fast and quiet"), from the config.
fn watching(config: &Config) -> String {
    let probe = config.probes.first();
    let cadence = probe
        .map(|p| {
            format!(
                "probe every {}, confirm failures every {}",
                humantime::format_duration(p.interval),
                p.confirm_interval
                    .map(|c| humantime::format_duration(c).to_string())
                    .unwrap_or_else(|| "interval".into())
            )
        })
        .unwrap_or_default();
    let critical = config
        .rules
        .iter()
        .find(|r| r.condition.signal == crate::model::Signal::HealthFailures);
    let why = critical
        .and_then(|r| {
            let median = config.median_detection(r)?;
            let per_year = config.noise_firings(r)?;
            Some(format!(
                "; the Critical rule asks for {} in a row: a hard-down color is caught in about {} (median), \
                 while {} random failures would trip it {}",
                crate::config::consecutive_needed(&r.condition),
                humantime::format_duration(median),
                crate::config::format_rate(config.daemon.assumed_noise),
                crate::config::how_often(per_year)
            ))
        })
        .unwrap_or_default();
    format!("rollbackd is watching both colors ({cadence}){why}")
}

async fn wait<F, Fut>(limit: Duration, mut cond: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while !cond().await {
        anyhow::ensure!(Instant::now() < deadline, "timed out");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn narration_wraps_at_the_width_under_its_stamp() {
        let text = "rollbackd is watching both colors (probe every 500ms, confirm failures every \
                    200ms); the Critical rule asks for 5 in a row: a hard-down color is caught in \
                    about 1s 50ms (median), while 2% random failures would trip it about once \
                    every 5 years";
        let out = wrap("[  0.1s] ", text, 60);
        let lines: Vec<&str> = out.lines().collect();
        assert!(lines.len() > 3, "{out}");
        assert!(lines.iter().all(|l| l.chars().count() <= 60), "{out}");
        assert!(lines[0].starts_with("[  0.1s] rollbackd is watching"));
        assert!(
            lines[1..]
                .iter()
                .all(|l| l.starts_with("         ") && !l.starts_with("          "))
        );
        let words: Vec<&str> = out.split_whitespace().skip(2).collect();
        assert_eq!(words, text.split_whitespace().collect::<Vec<_>>());
        // A word longer than the line stays whole.
        let long = format!("see {}", "x".repeat(80));
        assert_eq!(wrap("", &long, 20), format!("see\n{}", "x".repeat(80)));
    }

    #[test]
    fn a_command_is_quoted_only_when_a_shell_needs_it() {
        assert_eq!(
            shell_word("target/debug/rollbackd"),
            "target/debug/rollbackd"
        );
        assert_eq!(
            shell_word("/opt/my tools/rollbackd"),
            "'/opt/my tools/rollbackd'"
        );
        assert_eq!(shell_word("it's"), "'it'\\''s'");
    }
}
