//! `rollbackd samples`: raw samples, as a table or JSON.

use anyhow::bail;

use super::{CheckFailed, SamplesArgs, open};
use crate::config::Config;
use crate::model::{Color, duration_ms, format_ms, now_ms};

pub async fn run(config: &Config, a: SamplesArgs) -> anyhow::Result<()> {
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
