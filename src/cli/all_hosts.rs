//! `incidents`, `incident show`, `samples` and `report` with `--all-hosts`:
//! the same views over every host of the fleet, read from the shared PostgreSQL (SPEC
//! section 7), each row naming its host. Without `[daemon] database`:
//! one line and exit 78 (see `fleet.rs`).

use std::collections::BTreeMap;

use serde::Serialize;

use super::NotFound;
use super::fleet::{bounded, require};
use super::table::{Align, render};
use crate::config::Config;
use crate::model::{Color, LatencyMean, Millis, duration_ms, format_ms, now_ms};
use crate::report::incident;
use crate::store::shared::HostSample;

pub async fn incidents(config: &Config, as_json: bool) -> anyhow::Result<()> {
    let db = require(config, "incidents --all-hosts").await?;
    let list = bounded(db.incidents_all_hosts()).await?;
    db.close().await;
    if as_json {
        let doc = super::with_rfc3339_times(serde_json::to_value(&list)?);
        println!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(());
    }
    if list.is_empty() {
        println!("no incidents on any host");
        return Ok(());
    }
    let word = |c: &Option<String>| c.clone().unwrap_or_else(|| "-".into());
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|i| {
            vec![
                i.host.clone(),
                format!("#{}", i.id),
                format_ms(i.opened_ms),
                i.severity.clone(),
                i.trigger_kind.clone(),
                format!("{} -> {}", word(&i.from_color), word(&i.to_color)),
                word(&i.from_version),
                i.state.clone(),
                i.reason.clone(),
            ]
        })
        .collect();
    print!(
        "{}",
        render(
            &[
                "HOST", "ID", "OPENED", "SEVERITY", "TRIGGER", "SWITCH", "VERSION", "OUTCOME",
                "REASON",
            ],
            &[Align::Left; 9],
            &rows,
        )
    );
    Ok(())
}

/// `incident show N --all-hosts [--host H]`: H's incident N as H's own
/// `incident show N` prints it, from the shared database. Without
/// `--host`, the one host that has an incident N; more than one is a usage
/// error naming them.
pub async fn incident(
    config: &Config,
    id: i64,
    host: Option<&str>,
    as_json: bool,
    markdown: bool,
) -> anyhow::Result<()> {
    let db = require(config, "incident show --all-hosts").await?;
    let host = match host {
        Some(h) => h.to_owned(),
        None => {
            let hosts = bounded(db.hosts_with_incident(id)).await?;
            match hosts.as_slice() {
                [one] => one.clone(),
                [] => {
                    return Err(NotFound(format!(
                        "no incident #{id} on any host in the shared database (see `rollbackd incidents --all-hosts`)"
                    ))
                    .into());
                }
                many => {
                    return Err(NotFound(format!(
                        "hosts {} each have an incident #{id}: name one with --host",
                        many.join(", ")
                    ))
                    .into());
                }
            }
        }
    };
    let Some((inc, events)) = bounded(db.incident_of(&host, id)).await? else {
        return Err(NotFound(format!(
            "no incident #{id} of host {host} in the shared database (see `rollbackd incidents --all-hosts`)"
        ))
        .into());
    };
    if events.is_empty() {
        // Incidents shipped before the mirror carried timelines, or by a
        // host still on such a version, have none in the shared database.
        eprintln!(
            "note: the shared database has no timeline of host {host}'s incident #{id} \
             (shipped by an older rollbackd); `rollbackd incident show {id}` on {host} has it"
        );
    }
    let chart = if markdown {
        let (from, until) = incident::chart_span(&inc, &events);
        let samples = bounded(db.samples_of_host_between(&host, from, until)).await?;
        Some(incident::chart_of(&samples, &inc, &events))
    } else {
        None
    };
    db.close().await;
    super::incidents::print_incident(
        &config.service,
        Some(&host),
        &inc,
        &events,
        as_json,
        chart.as_deref(),
    )
}

pub async fn samples(config: &Config, a: &super::SamplesArgs) -> anyhow::Result<()> {
    let db = require(config, "samples --all-hosts").await?;
    let list =
        bounded(db.samples_all_hosts(a.probe.as_deref(), a.color, now_ms() - duration_ms(a.since)))
            .await?;
    db.close().await;
    if a.json {
        let doc = super::with_rfc3339_times(serde_json::to_value(&list)?);
        println!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(());
    }
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|s| {
            let mut row = super::samples::row(&s.sample);
            row.insert(1, s.host.clone());
            row
        })
        .collect();
    print!(
        "{}",
        render(
            &[
                "TIME", "HOST", "PROBE", "COLOR", "STATUS", "LATENCY", "ERRORS", "DETAIL"
            ],
            &[
                Align::Left,
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

/// One host's view of one probe and color over the period.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Line {
    pub host: String,
    pub probe: String,
    /// `None` for a shared probe.
    pub color: Option<Color>,
    pub samples: u64,
    pub failures: u64,
    /// Failed samples over samples.
    pub error_rate: f64,
    pub latency_avg_ms: Option<f64>,
    pub latency_p95_ms: Option<f64>,
}

/// Per host, probe and color: counts, error rate, latency avg and p95.
pub fn summarize(samples: &[HostSample]) -> Vec<Line> {
    type Key = (String, String, Option<&'static str>);
    let mut groups: BTreeMap<Key, (Option<Color>, u64, u64, Vec<f64>)> = BTreeMap::new();
    for s in samples {
        let key = (
            s.host.clone(),
            s.sample.probe.clone(),
            s.sample.color.map(Color::as_str),
        );
        let g = groups
            .entry(key)
            .or_insert((s.sample.color, 0, 0, Vec::new()));
        g.1 += 1;
        if !s.sample.ok {
            g.2 += 1;
        }
        if let Some(l) = s.sample.latency_ms {
            g.3.push(l);
        }
    }
    groups
        .into_iter()
        .map(
            |((host, probe, _), (color, n, failed, mut latencies))| Line {
                host,
                probe,
                color,
                samples: n,
                failures: failed,
                error_rate: if n == 0 {
                    0.0
                } else {
                    failed as f64 / n as f64
                },
                latency_avg_ms: latencies.iter().copied().collect::<LatencyMean>().ms(),
                latency_p95_ms: crate::model::p95(&mut latencies),
            },
        )
        .collect()
}

pub async fn report(
    config: &Config,
    since: std::time::Duration,
    as_json: bool,
    markdown: bool,
) -> anyhow::Result<()> {
    let db = require(config, "report --all-hosts").await?;
    let now = now_ms();
    let from: Millis = now - duration_ms(since);
    let list = bounded(db.samples_all_hosts(None, None, from)).await?;
    db.close().await;
    let lines = summarize(&list);
    if as_json {
        let doc = serde_json::json!({
            "service": config.service,
            "from": format_ms(from),
            "until_ms": now,
            "hosts": lines,
        });
        let doc = super::with_rfc3339_times(doc);
        println!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(());
    }
    let ms = |v: Option<f64>| {
        v.map(|v| format!("{v:.1} ms"))
            .unwrap_or_else(|| "-".into())
    };
    let cells: Vec<Vec<String>> = lines
        .iter()
        .map(|l| {
            vec![
                l.host.clone(),
                l.probe.clone(),
                l.color.map(Color::as_str).unwrap_or("shared").to_owned(),
                l.samples.to_string(),
                l.failures.to_string(),
                format!("{:.2}%", l.error_rate * 100.0),
                ms(l.latency_avg_ms),
                ms(l.latency_p95_ms),
            ]
        })
        .collect();
    let header = [
        "HOST",
        "PROBE",
        "COLOR",
        "SAMPLES",
        "FAILURES",
        "ERROR RATE",
        "AVG",
        "P95",
    ];
    let title = format!(
        "{} on every host, {} to {}",
        config.service,
        format_ms(from),
        format_ms(now)
    );
    if markdown {
        println!("## rollbackd report: {title}\n");
        println!("| {} |", header.join(" | ").to_lowercase());
        println!("|---|---|---|---:|---:|---:|---:|---:|");
        for row in &cells {
            println!("| {} |", row.join(" | "));
        }
        if cells.is_empty() {
            println!("\nNo host stored samples in this period.");
        }
        return Ok(());
    }
    println!("{title}");
    if cells.is_empty() {
        println!("no host stored samples in this period");
        return Ok(());
    }
    let mut align = [Align::Right; 8];
    align[..3].fill(Align::Left);
    print!("{}", render(&header, &align, &cells));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Sample;

    fn sample(host: &str, ok: bool, latency: f64) -> HostSample {
        HostSample {
            host: host.into(),
            sample: Sample::answer(0, "healthz", Some(Color::Blue), ok, latency),
        }
    }

    #[test]
    fn each_host_is_summarized_on_its_own() {
        let mut all: Vec<HostSample> = (0..20).map(|i| sample("a", true, i as f64)).collect();
        all.push(sample("b", false, 100.0));
        all.push(sample("b", true, 300.0));
        let lines = summarize(&all);
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert_eq!((lines[0].host.as_str(), lines[0].samples), ("a", 20));
        assert_eq!(lines[0].error_rate, 0.0);
        assert_eq!(lines[0].latency_avg_ms, Some(9.5));
        assert_eq!(lines[0].latency_p95_ms, Some(18.0));
        assert_eq!((lines[1].host.as_str(), lines[1].failures), ("b", 1));
        assert_eq!(lines[1].error_rate, 0.5);
        assert_eq!(lines[1].latency_avg_ms, Some(200.0));
    }
}
