//! The subcommands: argument shapes (clap) and what each one does. Every
//! command but `run` works whether or not the daemon is running: they meet
//! through the database.
//!
//! Exit codes (SPEC section 4): 0 ok; 1 the thing checked failed; 2 usage
//! (clap); 78 bad configuration (also: a fleet command without `[daemon]
//! database`); 70 any other runtime error.
//!
//! This file holds the argument shapes and the dispatch; each command's
//! work lives in its own file beside it.

mod all_hosts;
mod assets;
mod check;
mod control;
mod drill;
mod fleet;
mod gate;
mod incidents;
mod replay;
mod report;
mod samples;
mod status;
mod table;

pub use check::report as check_report;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};

use crate::config::{self, Config};
use crate::logging;
use crate::model::Color;
use crate::store::Store;

pub const EXIT_FAILED: i32 = 1;
pub const EXIT_USAGE: i32 = 2;
pub const EXIT_CONFIG: i32 = 78;
pub const EXIT_RUNTIME: i32 = 70;

#[derive(Parser, Debug)]
#[command(
    name = "rollbackd",
    version,
    about = "Watchdog for blue/green services: probe, decide, roll back safely",
    long_about = "Watchdog for blue/green services: probe, decide, roll back safely.\n\n\
        Every command that prints a result (all but run and demo) takes --json: one \
        JSON document on stdout instead of text. Points in time are RFC 3339 with \
        milliseconds in UTC (2026-11-25T17:20:00.123Z), in JSON and text alike; \
        durations are numbers with their unit in the key (window_ms, uptime_seconds)."
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
    Check(CheckArgs),
    /// Whether the daemon runs, what protection is in force, active color, verdicts, last incident
    Status(StatusArgs),
    /// Record a cutover made by a pipeline
    Deploy(DeployArgs),
    /// Before a cutover: probe a color for a while, judge it, exit 0 (pass) or 1 (fail)
    Gate(gate::GateArgs),
    /// Roll back now through the guarded path (works with the daemon stopped)
    Rollback(RollbackArgs),
    /// Hold automatic rollbacks for a while (a hold always expires)
    Pause(PauseArgs),
    /// End a hold
    Resume(JsonFlag),
    /// List incidents
    Incidents(IncidentsArgs),
    /// One incident with its timeline and evidence
    Incident(IncidentArgs),
    /// Raw samples
    Samples(SamplesArgs),
    /// Post-deploy summary: per color and probe, rules fired, availability
    Report(report::ReportArgs),
    /// A self-contained rehearsal: two local colors, a fault, the rollback (no config needed)
    Demo,
    /// Write the man page and shell completions (for packaging)
    #[command(hide = true)]
    GenerateAssets(assets::AssetsArgs),
    /// Run the rules over stored samples: what would have fired, and when
    Replay(ReplayArgs),
    /// Rehearse on a real (staging) host: inject a fault, time the daemon's response, restore
    Drill(drill::DrillArgs),
    /// Every host and service sharing the fleet's database: active color, version, worst verdict, leader
    Fleet(fleet::FleetArgs),
    /// A version rolled back is quarantined (on every host with a shared database): lift it
    Quarantine(fleet::QuarantineArgs),
}

#[derive(Args, Debug)]
pub struct CheckArgs {
    /// Make warnings fatal (exit 1), e.g. a Critical/High rule that would
    /// fire on noise more than once a year at [daemon] assumed_noise
    #[arg(long)]
    pub strict: bool,
    /// Print one JSON document: errors, warnings, probes, rules and their
    /// detection figures
    #[arg(long)]
    pub json: bool,
    /// Check the configured commands for this user (the daemon's, e.g.
    /// rollbackd) by their mode bits, when run as root [default: the user
    /// running check]
    #[arg(long, value_name = "USER")]
    pub user: Option<String>,
}

#[derive(Args, Debug)]
pub struct JsonFlag {
    /// Print one JSON document instead of text
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct StatusArgs {
    /// Every host watching this service, from the shared database (what
    /// `fleet` shows, for this service)
    #[arg(long)]
    pub all_hosts: bool,
    /// Print one JSON document instead of text
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct IncidentsArgs {
    /// Every host's incidents of this service, from the shared database
    #[arg(long)]
    pub all_hosts: bool,
    /// Print the incidents as one JSON document
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct DeployArgs {
    /// The color that is active now (traffic was switched to it)
    #[arg(long, value_enum)]
    pub color: Color,
    /// Version being deployed (commit SHA)
    #[arg(long)]
    pub version: String,
    /// Who or what made the cutover
    #[arg(long, default_value = "cli")]
    pub source: String,
    /// Print the recorded deployment as JSON
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct RollbackArgs {
    /// Why (recorded in the incident and sent with its notifications)
    #[arg(long)]
    pub reason: String,
    /// Print the outcome as JSON
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct PauseArgs {
    /// How long, e.g. 1h
    #[arg(long = "for", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Why (shown by `status` while the hold lasts)
    #[arg(long)]
    pub reason: String,
    /// Print the hold as JSON
    #[arg(long)]
    pub json: bool,
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
        /// The incident's number (see `rollbackd incidents`)
        id: i64,
        /// Print the incident, its timeline, evidence and milestones as one
        /// JSON document
        #[arg(long)]
        json: bool,
        /// Markdown, for an issue or a postmortem
        #[arg(long, conflicts_with = "json")]
        markdown: bool,
        /// Another host's incident, from the shared database (its
        /// timeline, evidence and charts as that host's journal has them)
        #[arg(long)]
        all_hosts: bool,
        /// Whose incident N it is (with --all-hosts; needed when more than
        /// one host has an incident N)
        #[arg(long, requires = "all_hosts")]
        host: Option<String>,
    },
}

#[derive(Args, Debug)]
pub struct SamplesArgs {
    /// Only this probe's samples [default: every probe]
    #[arg(long)]
    pub probe: Option<String>,
    /// Only this color's samples (shared probes have none) [default: both and shared]
    #[arg(long, value_enum)]
    pub color: Option<Color>,
    /// How far back, e.g. 10m
    #[arg(long, value_parser = humantime::parse_duration, default_value = "10m")]
    pub since: Duration,
    /// Every host's samples of this service, from the shared database
    #[arg(long)]
    pub all_hosts: bool,
    /// Print the samples as one JSON document (a list, every field)
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct ReplayArgs {
    /// How far back, e.g. 7d
    #[arg(long, value_parser = humantime::parse_duration, default_value = "7d")]
    pub since: Duration,
    /// Take the rules and actions from this config file instead (samples
    /// still come from --config's state_dir)
    #[arg(long, value_name = "FILE")]
    pub rules: Option<PathBuf>,
    /// Evaluation pace (the daemon's is 250ms)
    #[arg(long, value_parser = humantime::parse_duration, default_value = "250ms")]
    pub step: Duration,
    /// Instead of stored samples, generate a healthy service whose probes
    /// fail independently at this rate, e.g. 2% (in memory; no database)
    #[arg(long, value_name = "RATE", value_parser = parse_rate)]
    pub synthetic_noise: Option<f64>,
    /// With --synthetic-noise: how long a period to generate
    #[arg(long = "for", value_name = "DURATION", value_parser = humantime::parse_duration,
          default_value = "7d", requires = "synthetic_noise")]
    pub period: Duration,
    /// With --synthetic-noise: the probes that fail (default: all); the
    /// others answer ok throughout
    #[arg(
        long,
        value_name = "NAMES",
        value_delimiter = ',',
        requires = "synthetic_noise"
    )]
    pub probes: Vec<String>,
    /// With --synthetic-noise: the random seed (default: a random one, printed)
    #[arg(long, requires = "synthetic_noise")]
    pub seed: Option<u64>,
    /// Print what would have fired as JSON
    #[arg(long)]
    pub json: bool,
}

fn parse_rate(text: &str) -> Result<f64, String> {
    config::parse_percent(text).ok_or_else(|| {
        format!("expected a percentage above 0 and below 100, like 2%, not {text:?}")
    })
}

/// Every point in time in a `--json` document as RFC 3339 with
/// milliseconds (see [`crate::model::with_rfc3339_times`]).
pub(crate) use crate::model::with_rfc3339_times;

/// A failure that is an answer, not an error: exit 1.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct CheckFailed(pub String);

/// An argument that names nothing (an unknown incident, probe or
/// deployment): a usage error, exit 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct NotFound(pub String);

/// The exit code for an error chain.
pub fn exit_code(err: &anyhow::Error) -> i32 {
    if err.downcast_ref::<config::ConfigError>().is_some()
        || err.downcast_ref::<fleet::NoSharedDatabase>().is_some()
    {
        EXIT_CONFIG
    } else if err.downcast_ref::<NotFound>().is_some()
        || matches!(
            err.downcast_ref::<crate::report::ReportError>(),
            Some(crate::report::ReportError::NoDeployment(_))
        )
    {
        EXIT_USAGE
    } else if err.downcast_ref::<CheckFailed>().is_some() {
        EXIT_FAILED
    } else {
        EXIT_RUNTIME
    }
}

pub async fn dispatch(cli: Cli) -> anyhow::Result<()> {
    // Commands that need no configuration.
    match cli.command {
        Command::Demo => return crate::tools::demo::run().await,
        Command::GenerateAssets(a) => return assets::run(a),
        _ => {}
    }
    let path = config::resolve_path(cli.config.as_deref());
    if let Command::Check(a) = &cli.command {
        return check::run(&path, a);
    }
    let config = Config::load(&path)?;
    match cli.command {
        Command::Run => run(config).await,
        Command::Check(_) => Ok(()),
        Command::Status(a) if a.all_hosts => fleet::status(&config, a.json).await,
        Command::Status(a) => status::run(&config, a.json).await,
        Command::Deploy(a) => control::deploy(&config, a).await,
        Command::Gate(a) => gate::run(config, a).await,
        Command::Rollback(a) => control::rollback(&config, a).await,
        Command::Pause(a) => control::pause(&config, a).await,
        Command::Resume(f) => control::resume(&config, f.json).await,
        Command::Incidents(a) if a.all_hosts => all_hosts::incidents(&config, a.json).await,
        Command::Incidents(a) => incidents::list(&config, a.json).await,
        Command::Incident(IncidentArgs {
            action:
                IncidentAction::Show {
                    id,
                    json,
                    markdown,
                    all_hosts: true,
                    host,
                },
        }) => all_hosts::incident(&config, id, host.as_deref(), json, markdown).await,
        Command::Incident(IncidentArgs {
            action: IncidentAction::Show {
                id, json, markdown, ..
            },
        }) => incidents::show(&config, id, json, markdown).await,
        Command::Samples(a) if a.all_hosts => all_hosts::samples(&config, &a).await,
        Command::Samples(a) => samples::run(&config, a).await,
        Command::Report(a) => report::run(&config, a).await,
        Command::Demo | Command::GenerateAssets(_) => Ok(()),
        Command::Replay(a) => replay::run(&config, a).await,
        Command::Drill(a) => drill::run(&config, a).await,
        Command::Fleet(a) => fleet::run(&config, a).await,
        Command::Quarantine(a) => fleet::lift(&config, a).await,
    }
}

/// How long a command that writes to a new journal waits for the shared
/// database to give this host's history back.
const RESTORE_WITHIN: std::time::Duration = std::time::Duration::from_secs(5);

/// The store for a command that writes. With a shared database, what it
/// writes is mirrored there when the command ends (`main` drains it).
pub(crate) async fn open(config: &Config) -> anyhow::Result<Store> {
    let mut store = Store::open_dir(&config.daemon.state_dir).await?;
    if let Some(url) = &config.daemon.database {
        let db =
            crate::store::shared::Shared::connect_lazy(url, &config.daemon.host, &config.service)?;
        // A new journal (a host rebuilt) first takes this host's history
        // back, as the daemon does: `deploy` then numbers after it.
        match store.restore_from(&db, RESTORE_WITHIN).await {
            Ok(Some(restored)) => eprintln!(
                "note: this journal was new: took back this host's history from the shared database ({restored})"
            ),
            Ok(None) => {}
            Err(e) => eprintln!(
                "warning: this journal is new and this host's history could not be taken back from the shared database: {e}"
            ),
        }
        store.attach_shared_for_command(db);
    }
    Ok(store)
}

/// The store for a command that only reads: never makes the state
/// directory or the database, never migrates. With `[daemon] database`,
/// its reads run on this host's rows there, or (saying why on stderr) on
/// the journal when the shared database cannot answer for this host
/// (`Store::open_reader`).
pub(crate) async fn open_read_only(config: &Config) -> anyhow::Result<Store> {
    let shared = match &config.daemon.database {
        Some(url) => Some(crate::store::shared::Shared::connect_lazy(
            url,
            &config.daemon.host,
            &config.service,
        )?),
        None => None,
    };
    let (store, note) = Store::open_reader(&config.daemon.state_dir, shared).await?;
    if let Some(note) = note {
        eprintln!("note: {note}");
    }
    Ok(store)
}

/// This host's journal alone, read-only (`Store::open_read_only`): for
/// what only the journal holds (the local quarantine).
pub(crate) async fn open_journal(config: &Config) -> anyhow::Result<Store> {
    Ok(Store::open_read_only(&config.daemon.state_dir).await?)
}

async fn run(config: Config) -> anyhow::Result<()> {
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    crate::daemon::signals::forward(tx).context("cannot install signal handlers")?;
    crate::process::become_subreaper();
    crate::process::raise_nofile_limit();
    let result = crate::daemon::run(config, rx).await;
    // Whatever a check or command left running goes with the daemon.
    let _ = tokio::task::spawn_blocking(crate::process::kill_all_runs).await;
    result?;
    Ok(())
}

/// `--color blue|green`: listed in `--help`, completed by the shells.
impl clap::ValueEnum for Color {
    fn value_variants<'a>() -> &'a [Self] {
        &Color::ALL
    }

    fn to_possible_value(&self) -> Option<clap::builder::PossibleValue> {
        Some(clap::builder::PossibleValue::new(self.as_str()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    /// Every argument of every command, with the path to it.
    fn all_args(cmd: &clap::Command, path: &str, out: &mut Vec<(String, clap::Arg)>) {
        for arg in cmd.get_arguments() {
            out.push((format!("{path} {}", arg.get_id()), arg.clone()));
        }
        for sub in cmd.get_subcommands() {
            all_args(sub, &format!("{path} {}", sub.get_name()), out);
        }
    }

    #[test]
    fn every_flag_and_argument_has_help_text() {
        let mut cmd = Cli::command();
        cmd.build();
        let mut args = Vec::new();
        all_args(&cmd, "rollbackd", &mut args);
        let missing: Vec<&str> = args
            .iter()
            .filter(|(_, a)| a.get_help().is_none() && a.get_long_help().is_none())
            .map(|(path, _)| path.as_str())
            .collect();
        assert!(missing.is_empty(), "no help text: {missing:?}");
        assert!(
            args.len() > 30,
            "the walk found the arguments: {}",
            args.len()
        );
        fn abouts(cmd: &clap::Command, missing: &mut Vec<String>) {
            for sub in cmd.get_subcommands() {
                if sub.get_about().is_none() {
                    missing.push(sub.get_name().to_owned());
                }
                abouts(sub, missing);
            }
        }
        let mut no_about = Vec::new();
        abouts(&cmd, &mut no_about);
        assert!(
            no_about.is_empty(),
            "commands without a summary: {no_about:?}"
        );
    }

    #[test]
    fn every_command_that_prints_takes_json_and_says_so_alike() {
        let mut cmd = Cli::command();
        cmd.build();
        // `run` logs, `demo` narrates, `help` is clap's, and the hidden one
        // writes files: every other command (leaf) prints a result.
        let mut leaves = Vec::new();
        fn walk<'a>(
            cmd: &'a clap::Command,
            path: String,
            out: &mut Vec<(String, &'a clap::Command)>,
        ) {
            if cmd.has_subcommands() {
                for sub in cmd.get_subcommands() {
                    walk(sub, format!("{path} {}", sub.get_name()), out);
                }
            } else {
                out.push((path, cmd));
            }
        }
        walk(&cmd, "rollbackd".into(), &mut leaves);
        let skip = ["run", "demo", "help", "generate-assets"];
        let mut checked = 0;
        for (path, sub) in leaves {
            if path.split(' ').any(|word| skip.contains(&word)) {
                continue;
            }
            let json = sub
                .get_arguments()
                .find(|a| a.get_long() == Some("json"))
                .unwrap_or_else(|| panic!("{path} has no --json"));
            let help = json.get_help().map(|h| h.to_string()).unwrap_or_default();
            assert!(
                help.starts_with("Print") && help.contains("JSON"),
                "{path} --json: {help:?}"
            );
            checked += 1;
        }
        assert!(checked >= 12, "the walk found the commands: {checked}");
        // The one place that says what every document shares: long help and
        // the man page's DESCRIPTION.
        let long = cmd.render_long_help().to_string();
        assert!(
            long.contains("--json") && long.contains("RFC 3339 with milliseconds"),
            "{long}"
        );
        let page = String::from_utf8(assets::man_page().unwrap()).unwrap();
        let description = &page[page.find(".SH DESCRIPTION").expect("a DESCRIPTION")..];
        assert!(description.contains("RFC 3339 with milliseconds"), "{page}");
    }

    #[test]
    fn every_color_argument_lists_blue_and_green() {
        let mut cmd = Cli::command();
        cmd.build();
        let mut args = Vec::new();
        all_args(&cmd, "rollbackd", &mut args);
        let colors: Vec<&(String, clap::Arg)> =
            args.iter().filter(|(_, a)| a.get_id() == "color").collect();
        assert!(colors.len() >= 3, "deploy, gate, samples: {}", colors.len());
        for (path, arg) in colors {
            let values: Vec<String> = arg
                .get_possible_values()
                .iter()
                .map(|v| v.get_name().to_owned())
                .collect();
            assert_eq!(values, ["blue", "green"], "{path}");
        }
    }

    #[test]
    fn json_times_become_rfc3339_with_milliseconds() {
        let doc = with_rfc3339_times(serde_json::json!({
            "opened_ms": 1_764_106_206_123_i64,
            "closed_ms": null,
            "window_ms": 60_000,
            "timeline": [{ "at_ms": 0 }],
        }));
        assert_eq!(
            doc,
            serde_json::json!({
                "opened": "2025-11-25T21:30:06.123Z",
                "closed": null,
                "window_ms": 60_000,
                "timeline": [{ "at": "1970-01-01T00:00:00.000Z" }],
            })
        );
    }

    #[test]
    fn only_the_top_level_hides_commands() {
        let cmd = Cli::command();
        for sub in cmd.get_subcommands() {
            assert!(
                sub.get_subcommands().all(|s| !s.is_hide_set()),
                "{} hides a subcommand: assets::visible would keep it",
                sub.get_name()
            );
        }
    }
}
