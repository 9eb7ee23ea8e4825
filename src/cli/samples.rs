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
        let doc = super::with_rfc3339_times(serde_json::to_value(&list)?);
        println!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(());
    }
    use super::table::{Align, render};
    let rows: Vec<Vec<String>> = list.iter().map(row).collect();
    print!(
        "{}",
        render(
            &[
                "TIME", "PROBE", "COLOR", "STATUS", "LATENCY", "ERRORS", "DETAIL"
            ],
            &[
                Align::Left,
                Align::Left,
                Align::Left,
                Align::Left,
                Align::Right,
                Align::Right,
                Align::Left
            ],
            &rows,
        )
    );
    Ok(())
}

/// One table line. ERRORS is `errors/requests` for probes that count real
/// traffic (prometheus, log); the detail is kept on one line.
pub(super) fn row(s: &Sample) -> Vec<String> {
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
    vec![
        format_ms(s.at_ms),
        s.probe.clone(),
        s.color.map(Color::as_str).unwrap_or("shared").to_owned(),
        s.status.as_str().to_owned(),
        s.latency_ms
            .map(|l| format!("{l:.1}ms"))
            .unwrap_or_else(|| "-".into()),
        errors,
        detail,
    ]
}
