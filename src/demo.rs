//! `rollbackd demo`: a self-contained rehearsal on one terminal. Two local
//! colors of a tiny built-in service, a deployment, an injected fault on the
//! active color, and the real daemon code path (`daemon::run`) detecting it,
//! verifying the standby, switching, verifying again and writing the
//! incident — narrated from what lands in the database. Needs no config,
//! no root and no network beyond loopback; leaves nothing behind.

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
use crate::model::{Color, now_ms};
use crate::signals::Control;
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

struct Clock(Instant);

impl Clock {
    fn say(&self, text: impl AsRef<str>) {
        println!(
            "[{:>5.1}s] {}",
            self.0.elapsed().as_secs_f64(),
            text.as_ref()
        );
    }
}

pub async fn run() -> anyhow::Result<()> {
    let clock = Clock(Instant::now());
    let dir = tempfile::Builder::new()
        .prefix("rollbackd-demo-")
        .tempdir()
        .context("cannot create a temp dir")?;
    let blue = start_service(Color::Blue, "v2").await?;
    let green = start_service(Color::Green, "v1").await?;
    let active_file = dir.path().join("active-color");
    std::fs::write(&active_file, "blue\n")?;
    let config_path = dir.path().join("rollbackd.toml");
    let config_text = include_str!("../config/demo.toml")
        .replace("@BLUE@", &blue.url)
        .replace("@GREEN@", &green.url)
        .replace("@ACTIVE@", &active_file.display().to_string());
    std::fs::write(&config_path, config_text)?;
    let config = Config::load(&config_path)?;
    println!("rollbackd demo — the real daemon against two local colors of a built-in service");
    println!(
        "  blue  {}   green  {}   state in {}",
        blue.url,
        green.url,
        dir.path().display()
    );
    println!();

    let store = Store::open_dir(&config.daemon.state_dir).await?;
    let now = now_ms();
    store
        .record_deployment(Color::Green, "v1", "demo", now - 60_000)
        .await?;
    store
        .record_deployment(Color::Blue, "v2", "demo", now)
        .await?;
    clock.say("deployed v1 on green earlier; v2 is now live on blue (green is the standby)");

    let (control, control_rx) = tokio::sync::mpsc::channel(4);
    let daemon_config = config.clone();
    let daemon = tokio::spawn(async move { daemon::run(daemon_config, control_rx).await });
    clock.say(watching(&config));

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
    clock.say("both colors healthy; no rule fired");

    blue.broken.store(true, Ordering::SeqCst);
    clock.say("FAULT INJECTED: blue's /healthz now answers 500 \"database connection refused\"");

    let mut shown = 0;
    let deadline = Instant::now() + Duration::from_secs(40);
    let incident_id = loop {
        if let Some(incident) = store.incidents().await?.into_iter().next() {
            let events = store.incident_events(incident.id).await?;
            for e in events.iter().skip(shown) {
                clock.say(format!(
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
    let serving = std::fs::read_to_string(&active_file).unwrap_or_default();
    clock.say(format!(
        "traffic is on {}; v2 is quarantined and will not be restored automatically",
        serving.trim()
    ));

    let _ = control.send(Control::Shutdown).await;
    match daemon.await {
        Ok(result) => result?,
        Err(e) => anyhow::bail!("the daemon task failed: {e}"),
    }
    println!();
    crate::cli::print_incident(&config, incident_id, false, true).await?;
    println!();
    println!(
        "done in {:.1}s. Try it for real: rollbackd --config config/rollbackd.toml check",
        clock.0.elapsed().as_secs_f64()
    );
    Ok(())
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
