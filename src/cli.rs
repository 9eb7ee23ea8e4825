//! The subcommands: argument shapes (clap) and what each one does. Every
//! command but `run` works whether or not the daemon is running: they meet
//! through the database.
//!
//! Exit codes (SPEC section 4): 0 ok; 1 the thing checked failed; 2 usage
//! (clap); 78 bad configuration; 70 any other runtime error.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::{Args, Parser, Subcommand};
use serde_json::json;

use crate::config::{self, Config, Detection, Scope};
use crate::logging;
use crate::model::{Color, duration_ms, format_ms, format_value, now_ms};
use crate::probe::Prober;
use crate::rollback::{self, Outcome, Request, Trigger};
use crate::store::Store;

pub const EXIT_FAILED: i32 = 1;
pub const EXIT_CONFIG: i32 = 78;
pub const EXIT_RUNTIME: i32 = 70;

#[derive(Parser, Debug)]
#[command(
    name = "rollbackd",
    version,
    about = "Watchdog for blue/green services: probe, decide, roll back safely"
)]
pub struct Cli {
    /// Configuration file [default: $ROLLBACKD_CONFIG, else /etc/rollbackd/rollbackd.toml]
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Log format: journald when JOURNAL_STREAM names stderr, else text
    #[arg(long, global = true, value_enum, default_value = "auto")]
    pub log_format: logging::Format,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the daemon (systemd Type=notify)
    Run,
    /// Validate the configuration; print probes, the matrix and detection times
    Check,
    /// Active color, deployment, latest verdicts, pause state, last incident
    Status(JsonFlag),
    /// Record a cutover made by a pipeline
    Deploy(DeployArgs),
    /// Roll back now through the guarded path (works with the daemon stopped)
    Rollback(RollbackArgs),
    /// Hold automatic rollbacks for a while (a hold always expires)
    Pause(PauseArgs),
    /// End a hold
    Resume,
    /// List incidents
    Incidents(JsonFlag),
    /// One incident with its timeline and evidence
    Incident(IncidentArgs),
    /// Raw samples
    Samples(SamplesArgs),
}

#[derive(Args, Debug)]
pub struct JsonFlag {
    /// Machine-readable output
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct DeployArgs {
    #[arg(long)]
    pub color: Color,
    /// Version being deployed (commit SHA)
    #[arg(long)]
    pub version: String,
    /// Who or what made the cutover
    #[arg(long, default_value = "cli")]
    pub source: String,
}

#[derive(Args, Debug)]
pub struct RollbackArgs {
    #[arg(long)]
    pub reason: String,
}

#[derive(Args, Debug)]
pub struct PauseArgs {
    /// How long, e.g. 1h
    #[arg(long = "for", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    #[arg(long)]
    pub reason: String,
}

#[derive(Args, Debug)]
pub struct IncidentArgs {
    #[command(subcommand)]
    pub action: IncidentAction,
}

#[derive(Subcommand, Debug)]
pub enum IncidentAction {
    /// Show one incident
    Show {
        id: i64,
        #[arg(long)]
        json: bool,
        #[arg(long, conflicts_with = "json")]
        markdown: bool,
    },
}

#[derive(Args, Debug)]
pub struct SamplesArgs {
    #[arg(long)]
    pub probe: Option<String>,
    #[arg(long)]
    pub color: Option<Color>,
    /// How far back, e.g. 10m
    #[arg(long, value_parser = humantime::parse_duration, default_value = "10m")]
    pub since: Duration,
    #[arg(long)]
    pub json: bool,
}

/// A failure that is an answer, not an error: exit 1.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct CheckFailed(pub String);

/// The exit code for an error chain.
pub fn exit_code(err: &anyhow::Error) -> i32 {
    if err.downcast_ref::<config::ConfigError>().is_some() {
        EXIT_CONFIG
    } else if err.downcast_ref::<CheckFailed>().is_some() {
        EXIT_FAILED
    } else {
        EXIT_RUNTIME
    }
}

pub async fn dispatch(cli: Cli) -> anyhow::Result<()> {
    let path = config::resolve_path(cli.config.as_deref());
    let config = Config::load(&path)?;
    match cli.command {
        Command::Run => run(config).await,
        Command::Check => {
            print!("{}", check_report(&config));
            Ok(())
        }
        Command::Status(f) => status(&config, f.json).await,
        Command::Deploy(a) => deploy(&config, a).await,
        Command::Rollback(a) => manual_rollback(&config, a).await,
        Command::Pause(a) => {
            let store = open(&config).await?;
            let now = now_ms();
            store
                .pause(now, now + duration_ms(a.duration), &a.reason)
                .await?;
            tracing::info!(
                "automatic rollbacks paused for {}: {}",
                humantime::format_duration(a.duration),
                a.reason
            );
            println!(
                "automatic rollbacks paused until {}: {}",
                format_ms(now + duration_ms(a.duration)),
                a.reason
            );
            Ok(())
        }
        Command::Resume => {
            let n = open(&config).await?.resume(now_ms()).await?;
            tracing::info!("automatic rollbacks resumed");
            println!(
                "{}",
                if n > 0 {
                    "automatic rollbacks resumed"
                } else {
                    "no hold was in force"
                }
            );
            Ok(())
        }
        Command::Incidents(f) => incidents(&config, f.json).await,
        Command::Incident(IncidentArgs {
            action: IncidentAction::Show { id, json, markdown },
        }) => incident_show(&config, id, json, markdown).await,
        Command::Samples(a) => samples(&config, a).await,
    }
}

async fn open(config: &Config) -> anyhow::Result<Store> {
    Ok(Store::open_dir(&config.daemon.state_dir).await?)
}

async fn run(config: Config) -> anyhow::Result<()> {
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    crate::signals::forward(tx).context("cannot install signal handlers")?;
    crate::daemon::run(config, rx).await?;
    Ok(())
}

/// What `check` prints: the effective configuration in an operator's words.
pub fn check_report(config: &Config) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(out, "{}: ok", config.path.display());
    let url = |c: Color| {
        config
            .colors
            .get(c)
            .base_url
            .as_ref()
            .map(|u| u.to_string())
            .unwrap_or_else(|| "-".into())
    };
    let _ = writeln!(
        out,
        "service {}: blue {}, green {}",
        config.service,
        url(Color::Blue),
        url(Color::Green)
    );
    let _ = writeln!(
        out,
        "active color: {}",
        match &config.active_file {
            Some(f) => format!("read from {}", f.display()),
            None => "the last `rollbackd deploy`".into(),
        }
    );
    let _ = writeln!(
        out,
        "state: {}{}",
        config.db_path().display(),
        if config.daemon.dry_run {
            " (dry run: never switches)"
        } else {
            ""
        }
    );
    let _ = writeln!(out, "\nprobes:");
    for p in &config.probes {
        let scope = match p.scope {
            Scope::PerColor => "per color",
            Scope::Shared => "shared",
        };
        let confirm = p
            .confirm_interval
            .map(|c| format!(", confirm {}", humantime::format_duration(c)))
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "  {:<16} {:<10} {:<9} every {}{confirm}, timeout {}{}",
            p.name,
            p.check.kind(),
            scope,
            humantime::format_duration(p.interval),
            humantime::format_duration(p.timeout),
            if p.health { ", health" } else { "" }
        );
    }
    let _ = writeln!(
        out,
        "\nmatrix ({}):",
        if config.default_rules {
            "the default of SPEC section 2"
        } else {
            "from the configuration"
        }
    );
    let _ = writeln!(
        out,
        "  {:<9} {:<46} {:<7} {:<9} {:<14} LIMIT",
        "SEVERITY", "RULE", "MIN", "ACTION", "DETECTS IN"
    );
    for r in &config.rules {
        let detects = match config.detection_time(r) {
            Detection::Within(d) => humantime::format_duration(d).to_string(),
            Detection::Never(_) => "never".into(),
        };
        let when = format!(
            "{} over {}",
            r.condition,
            humantime::format_duration(r.window)
        );
        let _ = writeln!(
            out,
            "  {:<9} {:<46} {:<7} {:<9} {:<14} {}",
            r.severity.as_str(),
            when,
            r.min_samples,
            config.actions.for_severity(r.severity).as_str(),
            detects,
            humantime::format_duration(r.severity.acted_on_within())
        );
    }
    if !config.warnings.is_empty() {
        let _ = writeln!(out, "\nwarnings:");
        for w in &config.warnings {
            let _ = writeln!(out, "  - {w}");
        }
    }
    out
}

async fn deploy(config: &Config, a: DeployArgs) -> anyhow::Result<()> {
    let store = open(config).await?;
    let d = store
        .record_deployment(a.color, &a.version, &a.source, now_ms())
        .await?;
    tracing::info!(
        rollbackd.color = a.color.as_str(),
        "deployment #{} recorded: {} {}",
        d.id,
        a.color,
        a.version
    );
    println!(
        "deployment #{}: {} is active with version {}",
        d.id, d.color, d.version
    );
    if let Some(file) = &config.active_file {
        if crate::active::read_file(file).ok() != Some(a.color) {
            eprintln!(
                "note: {} does not say {}; with [active] file set, that file decides the active color",
                file.display(),
                a.color
            );
        }
    }
    Ok(())
}

async fn manual_rollback(config: &Config, a: RollbackArgs) -> anyhow::Result<()> {
    let store = open(config).await?;
    let prober = Prober::new();
    let ctx = rollback::Context {
        config,
        store: &store,
        prober: &prober,
    };
    let request = Request {
        trigger: Trigger::Manual,
        severity: crate::model::Severity::Critical,
        rule: None,
        reason: a.reason.clone(),
        evidence: json!({ "manual": true, "reason": a.reason, "user": std::env::var("USER").unwrap_or_default() }),
        since_ms: None,
    };
    match rollback::execute(&ctx, request).await? {
        Outcome::Verified { incident, to } => {
            println!("rolled back to {to}; verified healthy (incident #{incident})");
            Ok(())
        }
        Outcome::DryRun { incident, to } => {
            println!("dry run: would have switched to {to} (incident #{incident})");
            Ok(())
        }
        Outcome::Refused { incident, why } => {
            Err(CheckFailed(format!("refused (incident #{incident}): {why}")).into())
        }
        Outcome::Failed { incident, why } => {
            Err(CheckFailed(format!("failed (incident #{incident}): {why}")).into())
        }
        Outcome::Escalated { incident, why } => {
            Err(CheckFailed(format!("escalated (incident #{incident}): {why}")).into())
        }
        Outcome::Skipped { why } => Err(CheckFailed(format!("not started: {why}")).into()),
    }
}

async fn status(config: &Config, as_json: bool) -> anyhow::Result<()> {
    let store = open(config).await?;
    let now = now_ms();
    let active = crate::active::current(config, &store).await.ok().flatten();
    let verdicts = store.latest_verdicts().await?;
    let pause = store.active_pause(now).await?;
    let last_incident = store.incidents().await?.pop();
    if as_json {
        let doc = json!({
            "service": config.service,
            "active": active.as_ref().map(|(c, d)| json!({ "color": c, "deployment": d })),
            "verdicts": verdicts,
            "pause": pause,
            "last_incident": last_incident,
            "database_bytes": store.size_bytes(),
        });
        println!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(());
    }
    match &active {
        Some((c, d)) => println!(
            "active: {c} version {} since {} (deployment #{})",
            d.version,
            format_ms(d.at_ms),
            d.id
        ),
        None => println!("active: unknown (no deployment recorded)"),
    }
    match &pause {
        Some(p) => println!("paused until {}: {}", format_ms(p.until_ms), p.reason),
        None => println!(
            "automatic rollbacks: armed{}",
            if config.daemon.dry_run {
                " (dry run)"
            } else {
                ""
            }
        ),
    }
    println!("verdicts:");
    if verdicts.is_empty() {
        println!("  none yet");
    }
    for v in &verdicts {
        let value = match (v.value, config.rules.iter().find(|r| r.name == v.rule)) {
            (Some(x), Some(r)) => format_value(r.condition.signal, x),
            (Some(x), None) => format!("{x:.2}"),
            _ => "-".into(),
        };
        println!(
            "  {:<6} {:<13} {:<46} n={:<4} value={value:<10} {}",
            v.color.as_str(),
            v.state,
            v.rule,
            v.n,
            format_ms(v.at_ms)
        );
    }
    match &last_incident {
        Some(i) => println!(
            "last incident: #{} {} {} -> {} {} ({})",
            i.id,
            i.severity,
            i.from_color.map(Color::as_str).unwrap_or("?"),
            i.to_color.map(Color::as_str).unwrap_or("?"),
            i.state,
            format_ms(i.opened_ms)
        ),
        None => println!("last incident: none"),
    }
    println!(
        "database: {} ({} bytes)",
        store.path().display(),
        store.size_bytes()
    );
    Ok(())
}

async fn incidents(config: &Config, as_json: bool) -> anyhow::Result<()> {
    let list = open(config).await?.incidents().await?;
    if as_json {
        println!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(());
    }
    if list.is_empty() {
        println!("no incidents");
    }
    for i in &list {
        println!(
            "#{:<4} {}  {:<8} {:<9} {} -> {}  {:<10} {}",
            i.id,
            format_ms(i.opened_ms),
            i.severity.as_str(),
            i.trigger_kind,
            i.from_color.map(Color::as_str).unwrap_or("?"),
            i.to_color.map(Color::as_str).unwrap_or("?"),
            i.state,
            i.reason
        );
    }
    Ok(())
}

async fn incident_show(
    config: &Config,
    id: i64,
    as_json: bool,
    markdown: bool,
) -> anyhow::Result<()> {
    let store = open(config).await?;
    let inc = store.incident(id).await?;
    let events = store.incident_events(id).await?;
    if as_json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({ "incident": inc, "timeline": events }))?
        );
        return Ok(());
    }
    let color = |c: Option<Color>| c.map(Color::as_str).unwrap_or("?");
    let version = |v: &Option<String>| v.clone().unwrap_or_else(|| "?".into());
    if markdown {
        println!(
            "# Incident #{}: {} rollback of {}",
            inc.id, inc.severity, config.service
        );
        println!();
        println!("## Summary\n");
        println!("- **Severity:** {}", inc.severity);
        println!("- **Trigger:** {} — {}", inc.trigger_kind, inc.reason);
        println!(
            "- **From:** {} ({})",
            color(inc.from_color),
            version(&inc.from_version)
        );
        println!(
            "- **To:** {} ({})",
            color(inc.to_color),
            version(&inc.to_version)
        );
        println!(
            "- **Outcome:** {} — {}",
            inc.state,
            inc.outcome.clone().unwrap_or_else(|| "in progress".into())
        );
        if let Some(d) = inc.downtime_ms {
            println!(
                "- **Measured downtime:** {}",
                humantime::format_duration(Duration::from_millis(d as u64))
            );
        }
        println!("\n## Timeline (UTC)\n");
        println!("| time | state | event |\n|---|---|---|");
        for e in &events {
            println!(
                "| {} | {} | {} |",
                format_ms(e.at_ms),
                e.state,
                e.message.replace('|', "\\|")
            );
        }
        println!("\n## Evidence\n\n```json\n{}\n```", inc.evidence);
        println!("\n## Root cause\n\n_To be filled in by the on-call engineer._");
        println!(
            "\n## Resolution\n\n{}",
            inc.outcome
                .clone()
                .unwrap_or_else(|| "_Rollback still in progress._".into())
        );
        return Ok(());
    }
    println!(
        "incident #{} ({}, {})",
        inc.id, inc.severity, inc.trigger_kind
    );
    println!("  reason:   {}", inc.reason);
    println!(
        "  from:     {} ({})",
        color(inc.from_color),
        version(&inc.from_version)
    );
    println!(
        "  to:       {} ({})",
        color(inc.to_color),
        version(&inc.to_version)
    );
    println!("  state:    {}", inc.state);
    println!(
        "  outcome:  {}",
        inc.outcome.clone().unwrap_or_else(|| "in progress".into())
    );
    if let Some(d) = inc.downtime_ms {
        println!(
            "  downtime: {}",
            humantime::format_duration(Duration::from_millis(d as u64))
        );
    }
    println!("  evidence: {}", inc.evidence);
    println!("timeline:");
    for e in &events {
        println!("  {}  {:<16} {}", format_ms(e.at_ms), e.state, e.message);
    }
    Ok(())
}

async fn samples(config: &Config, a: SamplesArgs) -> anyhow::Result<()> {
    if let Some(p) = &a.probe {
        if config.probe(p).is_none() {
            bail!(CheckFailed(format!(
                "no probe is named {p:?} in {}",
                config.path.display()
            )));
        }
    }
    let store = open(config).await?;
    let list = store
        .samples(a.probe.as_deref(), a.color, now_ms() - duration_ms(a.since))
        .await?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(());
    }
    println!(
        "{:<20} {:<16} {:<6} {:<8} {:>10}  DETAIL",
        "TIME", "PROBE", "COLOR", "STATUS", "LATENCY"
    );
    for s in &list {
        println!(
            "{:<20} {:<16} {:<6} {:<8} {:>10}  {}",
            format_ms(s.at_ms),
            s.probe,
            s.color.map(Color::as_str).unwrap_or("shared"),
            s.status.as_str(),
            s.latency_ms
                .map(|l| format!("{l:.1}ms"))
                .unwrap_or_else(|| "-".into()),
            s.detail
        );
    }
    Ok(())
}
