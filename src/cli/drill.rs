//! `rollbackd drill --inject CMD [--restore CMD] [--expect rollback|alert|nothing]
//! [--timeout 5m] [--markdown] [--notify]`: the rehearsal on a real host
//! (see `drill.rs`). Progress on stderr, the report on stdout (Markdown with
//! `--markdown`), exit 0 when the expectation held and the restore worked,
//! 1 otherwise.

use std::time::Duration;

use clap::Args;

use super::{CheckFailed, open};
use crate::config::Config;
use crate::tools::drill::{self, Expect, Plan};

#[derive(Args, Debug)]
pub struct DrillArgs {
    /// The fault: a command line, split into words but never run through a shell
    #[arg(long, value_name = "CMD", value_parser = argv)]
    pub inject: Argv,
    /// Put the host back afterwards (same form as --inject)
    #[arg(long, value_name = "CMD", value_parser = argv)]
    pub restore: Option<Argv>,
    /// What the daemon should do about the fault
    #[arg(long, value_enum, default_value = "rollback")]
    pub expect: Expect,
    /// How long to watch for it, e.g. 5m
    #[arg(long, value_parser = humantime::parse_duration, default_value = "5m")]
    pub timeout: Duration,
    /// Write the report as Markdown (for the drill log)
    #[arg(long)]
    pub markdown: bool,
    /// Let the daemon's notifications about the drill go out (marked as a drill)
    #[arg(long)]
    pub notify: bool,
    /// Print the report as JSON
    #[arg(long, conflicts_with = "markdown")]
    pub json: bool,
}

/// A command line split into words (see `drill::split_argv`).
#[derive(Clone, Debug)]
pub struct Argv(pub Vec<String>);

fn argv(line: &str) -> Result<Argv, String> {
    drill::split_argv(line).map(Argv)
}

pub async fn run(config: &Config, a: DrillArgs) -> anyhow::Result<()> {
    let store = open(config).await?;
    let plan = Plan {
        inject: a.inject.0,
        restore: a.restore.map(|r| r.0),
        expect: a.expect,
        timeout: a.timeout,
        notify: a.notify,
    };
    // Ctrl-C or SIGTERM stops the watching; the restore still runs.
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    let interrupted = async move {
        let term = async {
            match term.as_mut() {
                Some(t) => {
                    t.recv().await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        tokio::pin!(term);
        tokio::select! {
            r = tokio::signal::ctrl_c() => {
                if r.is_err() {
                    // No SIGINT handling: only SIGTERM interrupts.
                    term.await;
                }
            }
            () = &mut term => {}
        }
    };
    let report = drill::run(
        config,
        &store,
        &plan,
        |line| eprintln!("drill: {line}"),
        interrupted,
    )
    .await?;
    if a.json {
        let mut doc = super::with_rfc3339_times(serde_json::to_value(&report)?);
        doc["passed"] = serde_json::Value::Bool(report.passed());
        println!("{}", serde_json::to_string_pretty(&doc)?);
    } else if a.markdown {
        print!("{}", report.markdown());
    } else {
        print!("{}", report.text());
    }
    if report.passed() {
        Ok(())
    } else {
        Err(CheckFailed(format!(
            "drill #{}: expected {}, saw {}{}",
            report.drill,
            report.expect.as_str(),
            report.observed.as_str(),
            if report.restore_ok {
                ""
            } else {
                "; the restore failed"
            }
        ))
        .into())
    }
}
