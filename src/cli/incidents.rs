//! `rollbackd incidents` and `incident show N [--json|--markdown]`.

use std::time::Duration;

use serde_json::json;

use super::open;
use crate::config::Config;
use crate::model::{Color, format_ms};

pub async fn list(config: &Config, as_json: bool) -> anyhow::Result<()> {
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

pub async fn show(config: &Config, id: i64, as_json: bool, markdown: bool) -> anyhow::Result<()> {
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
