//! `rollbackd gate --color C --for 2m [--summary FILE]`: the deploy
//! pipeline's check before a cutover. Live progress (a bar on a terminal,
//! plain lines otherwise), a Markdown summary, exit 0 on pass and 1 on fail.
//!
//! With `--version V`, the gate first asks whether V is quarantined for the
//! service (the fleet's shared database, then this host's journal): a
//! quarantined version fails at once, without probing, naming the host and
//! incident of the rollback. A shared database that does not answer is a
//! warning (stderr, JSON `warnings`, the summary), not a failure: the local
//! check still runs, and the gate goes on.

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
    /// The version about to be cut over: the gate fails at once when it is
    /// quarantined (rolled back on this or, with a shared database, any host)
    #[arg(long)]
    pub version: Option<String>,
    /// Write the Markdown summary here [default: $GITHUB_STEP_SUMMARY when set]
    #[arg(long, value_name = "FILE")]
    pub summary: Option<PathBuf>,
    /// Print the result as JSON instead of Markdown (the summary file, when
    /// written, stays Markdown)
    #[arg(long)]
    pub json: bool,
}

/// Append `markdown` to the summary file (`--summary`, else
/// `$GITHUB_STEP_SUMMARY`), when there is one.
fn write_summary(summary: Option<&PathBuf>, markdown: &str) -> anyhow::Result<()> {
    let target = summary
        .cloned()
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
    Ok(())
}

pub async fn run(config: Config, a: GateArgs) -> anyhow::Result<()> {
    let mut warnings = Vec::new();
    if let Some(version) = &a.version {
        let checked = super::fleet::check(&config, version).await;
        for w in &checked.warnings {
            eprintln!("warning: {w}");
        }
        warnings = checked.warnings;
        if let Some(found) = checked.found {
            return quarantined(&config, &a, &found, &warnings);
        }
    }
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
    let mut markdown = result.markdown();
    if let Some(version) = &a.version {
        use std::fmt::Write as _;
        let _ = writeln!(
            markdown,
            "\nVersion `{version}` is not quarantined for {}.",
            config.service
        );
        for w in &warnings {
            let _ = writeln!(markdown, "\n**Warning:** {w}");
        }
    }
    write_summary(a.summary.as_ref(), &markdown)?;
    if a.json {
        let mut doc = result_json(&result);
        doc["version"] = serde_json::json!(a.version);
        doc["quarantine"] = serde_json::Value::Null;
        doc["warnings"] = serde_json::json!(warnings);
        println!("{}", serde_json::to_string_pretty(&doc)?);
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

/// A quarantined version: the gate fails without probing; the summary,
/// `--json` and the error name the host and incident.
fn quarantined(
    config: &Config,
    a: &GateArgs,
    found: &super::fleet::Found,
    warnings: &[String],
) -> anyhow::Result<()> {
    let reason = found.words();
    let mut markdown = format!(
        "## rollbackd gate: {} {} — FAIL\n\n**Quarantined:** {reason}.\n\nNot probed: a version rolled back on one host fails the gate on every host until it is lifted.\n",
        config.service, a.color
    );
    for w in warnings {
        markdown.push_str(&format!("\n**Warning:** {w}\n"));
    }
    write_summary(a.summary.as_ref(), &markdown)?;
    if a.json {
        let doc = serde_json::json!({
            "service": config.service,
            "color": a.color,
            "version": found.version,
            "passed": false,
            "reasons": [reason],
            "quarantine": {
                "host": found.host,
                "incident": found.incident,
                "at": found.at_ms.map(crate::model::format_ms),
                "source": found.source,
            },
            "warnings": warnings,
            "probes": [],
            "verdicts": [],
            "fired": [],
        });
        println!("{}", serde_json::to_string_pretty(&doc)?);
    } else {
        print!("{markdown}");
    }
    Err(CheckFailed(format!("gate failed for {}: {reason}", a.color)).into())
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
