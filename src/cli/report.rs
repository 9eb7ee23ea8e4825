//! `rollbackd report [--deployment N] [--markdown|--json]`: the post-deploy
//! summary.

use clap::Args;

use super::open_read_only;
use crate::config::Config;
use crate::report;

#[derive(Args, Debug)]
pub struct ReportArgs {
    /// Which deployment [default: the latest]
    #[arg(long)]
    pub deployment: Option<i64>,
    /// Markdown, for a step summary or an issue
    #[arg(long)]
    pub markdown: bool,
    /// Print the report as one JSON document
    #[arg(long, conflicts_with = "markdown")]
    pub json: bool,
    /// Every host of the fleet over --since, from the shared database: per
    /// host, probe and color, samples, error rate and latency
    #[arg(long, conflicts_with = "deployment")]
    pub all_hosts: bool,
    /// With --all-hosts: how far back, e.g. 1h
    #[arg(long, value_parser = humantime::parse_duration, default_value = "1h",
          requires = "all_hosts")]
    pub since: std::time::Duration,
}

pub async fn run(config: &Config, a: ReportArgs) -> anyhow::Result<()> {
    if a.all_hosts {
        return super::all_hosts::report(config, a.since, a.json, a.markdown).await;
    }
    let store = open_read_only(config).await?;
    let r = report::build(config, &store, a.deployment).await?;
    if a.json {
        let doc = super::with_rfc3339_times(serde_json::to_value(&r)?);
        println!("{}", serde_json::to_string_pretty(&doc)?);
    } else if a.markdown {
        print!("{}", r.markdown());
    } else {
        print!("{}", r.text());
    }
    Ok(())
}
