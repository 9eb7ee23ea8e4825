//! `rollbackd samples`: raw samples of one probe and/or color since a time,
//! as a table (one line per sample) or as JSON (every field). It reads the
//! database only; it works whether or not the daemon runs.

use anyhow::bail;

use super::{NotFound, SamplesArgs, open_read_only};
use crate::config::Config;
use crate::model::{Color, Sample, duration_ms, format_ms, now_ms};

pub async fn run(config: &Config, a: SamplesArgs) -> anyhow::Result<()> {
    if let Some(p) = &a.probe {
        if config.probe(p).is_none() {
            bail!(NotFound(format!(
                "no probe is named {p:?} in {}",
                config.path.display()
            )));
        }
    }
    let store = open_read_only(config).await?;
    let list = store
        .samples(a.probe.as_deref(), a.color, now_ms() - duration_ms(a.since))
        .await?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(());
    }
    println!(
        "{:<20} {:<16} {:<6} {:<8} {:>10} {:>12}  DETAIL",
        "TIME", "PROBE", "COLOR", "STATUS", "LATENCY", "ERRORS"
    );
    for s in &list {
        println!("{}", row(s));
    }
    Ok(())
}

/// One table line. ERRORS is `errors/requests` for probes that count real
/// traffic (prometheus, log); the detail is kept on one line.
fn row(s: &Sample) -> String {
    let errors = match (s.errors, s.requests) {
        (Some(e), Some(r)) => format!("{e:.0}/{r:.0}"),
        _ => "-".into(),
    };
    let detail = s
        .detail
        .lines()
        .map(str::trim_end)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" | ");
    format!(
        "{:<20} {:<16} {:<6} {:<8} {:>10} {:>12}  {}",
        format_ms(s.at_ms),
        s.probe,
        s.color.map(Color::as_str).unwrap_or("shared"),
        s.status.as_str(),
        s.latency_ms
            .map(|l| format!("{l:.1}ms"))
            .unwrap_or_else(|| "-".into()),
        errors,
        detail
    )
}
