//! `rollbackd gate --color C --for 2m [--summary FILE]`: the deploy
//! pipeline's check before a cutover. Live progress (a bar on a terminal,
//! plain lines otherwise), a Markdown summary, exit 0 on pass and 1 on fail.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;

use super::CheckFailed;
use crate::config::Config;
use crate::model::Color;
use crate::tools::gate::{self, Progress};

#[derive(Args, Debug)]
pub struct GateArgs {
    /// The color to judge (normally the standby, before the cutover)
    #[arg(long, value_enum)]
    pub color: Color,
    /// How long to probe, e.g. 2m
    #[arg(long = "for", value_parser = humantime::parse_duration, default_value = "2m")]
    pub duration: Duration,
    /// Pass even when a Critical/High rule could not be judged (too few
    /// samples for its window); by default such a gate fails
    #[arg(long)]
    pub allow_unjudged: bool,
    /// Write the Markdown summary here [default: $GITHUB_STEP_SUMMARY when set]
    #[arg(long, value_name = "FILE")]
    pub summary: Option<PathBuf>,
    /// Print the result as JSON instead of Markdown (the summary file, when
    /// written, stays Markdown)
    #[arg(long)]
    pub json: bool,
}

pub async fn run(config: Config, a: GateArgs) -> anyhow::Result<()> {
    let config = Arc::new(config);
    let tty = std::io::stderr().is_terminal();
    let bar = tty.then(|| {
        let bar = indicatif::ProgressBar::new(a.duration.as_millis() as u64);
        bar.set_style(
            indicatif::ProgressStyle::with_template("{spinner} gate {prefix} [{bar:30}] {msg}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        bar.set_prefix(a.color.to_string());
        bar
    });
    let mut last_line = std::time::Instant::now();
    let describe = |p: &Progress| {
        let worst = p
            .worst
            .as_ref()
            .map(|v| format!("worst: {} {}", v.severity, v.rule))
            .unwrap_or_else(|| "no rule fired".into());
        format!("{} samples, {} failures, {worst}", p.samples, p.failures)
    };
    eprintln!(
        "gate: probing {} of {} for {}",
        a.color,
        config.service,
        humantime::format_duration(a.duration)
    );
    let result = gate::run(
        config.clone(),
        a.color,
        a.duration,
        a.allow_unjudged,
        |p| match &bar {
            Some(bar) => {
                bar.set_position(p.elapsed.as_millis() as u64);
                bar.set_message(format!(
                    "{}s/{}s {}",
                    p.elapsed.as_secs(),
                    p.total.as_secs(),
                    describe(p)
                ));
            }
            None if last_line.elapsed() >= Duration::from_secs(5) || p.elapsed >= p.total => {
                last_line = std::time::Instant::now();
                eprintln!(
                    "gate: {}s/{}s {}",
                    p.elapsed.as_secs(),
                    p.total.as_secs(),
                    describe(p)
                );
            }
            None => {}
        },
    )
    .await;
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    let markdown = result.markdown();
    let target = a
        .summary
        .or_else(|| std::env::var_os("GITHUB_STEP_SUMMARY").map(PathBuf::from));
    if let Some(path) = target {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .with_context(|| format!("cannot write the summary to {}", path.display()))?;
        f.write_all(markdown.as_bytes())
            .with_context(|| format!("cannot write the summary to {}", path.display()))?;
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&result_json(&result))?);
    } else {
        print!("{markdown}");
    }
    if result.passed() {
        Ok(())
    } else {
        Err(CheckFailed(format!(
            "gate failed for {}: {}",
            a.color,
            result.reasons.join("; ")
        ))
        .into())
    }
}

/// `gate --json`: the result as one document; times RFC 3339, durations
/// in milliseconds.
fn result_json(r: &gate::GateResult) -> serde_json::Value {
    let verdict = |v: &crate::matrix::Verdict| {
        serde_json::json!({
            "at": crate::model::format_ms(v.at_ms),
            "rule": v.rule,
            "severity": v.severity,
            "color": v.color,
            "state": v.state,
            "n": v.n,
            "value": v.value,
            "threshold": v.threshold,
            "window_ms": v.window_ms,
            "detail": v.detail,
        })
    };
    serde_json::json!({
        "service": r.service,
        "color": r.color,
        "passed": r.passed(),
        "reasons": r.reasons,
        "duration_ms": r.duration.as_millis() as u64,
        "probes": r.probes.iter().map(|(name, p)| serde_json::json!({
            "probe": name,
            "samples": p.samples,
            "failures": p.failures,
            "latency_avg_ms": p.avg_ms(),
        })).collect::<Vec<_>>(),
        "verdicts": r.verdicts.iter().map(verdict).collect::<Vec<_>>(),
        "fired": r.fired.iter().map(verdict).collect::<Vec<_>>(),
        "judges_all_in_ms": r.judges_all_in.map(|d| d.as_millis() as u64),
    })
}
