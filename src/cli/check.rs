//! `rollbackd check`: the effective configuration in an operator's words.

use crate::config::{Config, Detection, Scope, format_rate, how_often};
use std::time::Duration;

use crate::model::Color;

/// What `check` prints: the effective configuration in an operator's words.
pub fn report(config: &Config) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(out, "{}: ok", config.path.display());
    let url = |c: Color| {
        config
            .colors
            .get(c)
            .base_url
            .as_ref()
            .map(|u| u.to_string())
            .unwrap_or_else(|| "-".into())
    };
    let _ = writeln!(
        out,
        "service {}: blue {}, green {}",
        config.service,
        url(Color::Blue),
        url(Color::Green)
    );
    let _ = writeln!(
        out,
        "active color: {}",
        match &config.active_file {
            Some(f) => format!("read from {}", f.display()),
            None => "the last `rollbackd deploy`".into(),
        }
    );
    let _ = writeln!(
        out,
        "switch: {}",
        match &config.entry {
            Some(e) => format!(
                "confirmed by traffic: after the command, {} must name the target in its {} header within verify_after",
                e.url, e.color_header
            ),
            None => "not confirmed: without [entry], a switch command that exits 0 is taken as moving traffic".into(),
        }
    );
    let _ = writeln!(
        out,
        "state: {}{}",
        config.db_path().display(),
        if config.daemon.dry_run {
            " (dry run: never switches)"
        } else {
            ""
        }
    );
    let _ = writeln!(out, "\nprobes:");
    for p in &config.probes {
        let scope = match p.scope {
            Scope::PerColor => "per color",
            Scope::Shared => "shared",
        };
        let confirm = p
            .confirm_interval
            .map(|c| format!(", confirm {}", humantime::format_duration(c)))
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "  {:<16} {:<10} {:<9} every {}{confirm}, timeout {}{}",
            p.name,
            p.check.kind(),
            scope,
            humantime::format_duration(p.interval),
            humantime::format_duration(p.timeout),
            if p.health { ", health" } else { "" }
        );
    }
    let _ = writeln!(
        out,
        "\nmatrix ({}):",
        if config.default_rules {
            "the default of SPEC section 2"
        } else {
            "from the configuration"
        }
    );
    let _ = writeln!(
        out,
        "  {:<9} {:<46} {:<7} {:<9} {:<14} LIMIT",
        "SEVERITY", "RULE", "MIN", "ACTION", "DETECTS IN"
    );
    for r in &config.rules {
        let detects = match config.detection_time(r) {
            Detection::Within(d) => humantime::format_duration(d).to_string(),
            Detection::Never(_) | Detection::Unfed(_) => "never".into(),
        };
        let when = format!(
            "{} over {}",
            r.condition,
            humantime::format_duration(r.window)
        );
        let _ = writeln!(
            out,
            "  {:<9} {:<46} {:<7} {:<9} {:<14} {}",
            r.severity.as_str(),
            when,
            r.min_samples,
            config.actions.for_severity(r.severity).as_str(),
            detects,
            humantime::format_duration(r.severity.acted_on_within())
        );
    }
    traffic_figures(config, &mut out);
    let streaks: Vec<_> = config
        .rules
        .iter()
        .filter_map(|r| {
            Some((
                r,
                config.median_detection(r)?,
                config.noise_firings(r)?,
                config.detection_time(r),
            ))
        })
        .collect();
    if !streaks.is_empty() {
        let _ = writeln!(
            out,
            "\nconsecutive failures: detection of a hard-down color, and false firings at {} independent failures ([daemon] assumed_noise):",
            format_rate(config.daemon.assumed_noise)
        );
        for (r, median, per_year, worst) in streaks {
            let worst = match worst {
                Detection::Within(d) => humantime::format_duration(d).to_string(),
                Detection::Never(_) | Detection::Unfed(_) => "never".into(),
            };
            let hang = hang_median(config, r)
                .map(|d| format!(" and a hang in {}", humantime::format_duration(d)))
                .unwrap_or_default();
            let _ = writeln!(
                out,
                "  {:<46} detects a 503 in {}{hang} (medians), {worst} at worst; on noise fires {} ({per_year:.2} a year)",
                r.name,
                humantime::format_duration(median),
                how_often(per_year),
            );
        }
    }
    let _ = writeln!(
        out,
        "\ngate: {}",
        match config.gate_time() {
            Some(t) => format!(
                "`rollbackd gate --for {}` (or longer) judges every Critical/High rule",
                humantime::format_duration(t)
            ),
            None => "some Critical/High rule can never be judged by a gate".to_owned(),
        }
    );
    if !config.warnings.is_empty() {
        let _ = writeln!(out, "\nwarnings:");
        for w in &config.warnings {
            let _ = writeln!(out, "  - {w}");
        }
    }
    out
}

/// Median detection of a hung color (no answer until the timeout) by a
/// `health_failures >= N` rule: half an interval (the fault's phase), the
/// first run's timeout, then `N-1` confirm runs started every
/// `confirm_interval` without waiting for the earlier ones (each ends at
/// its own timeout; a confirm interval no shorter than the timeout starts
/// them after the first failure), or `N-1` intervals without fast confirm;
/// the slowest probe of the rule, plus `for`. `bench/detection.rs`
/// measures it.
fn hang_median(config: &Config, rule: &crate::config::Rule) -> Option<std::time::Duration> {
    if rule.condition.signal != crate::model::Signal::HealthFailures {
        return None;
    }
    let needed = crate::config::consecutive_needed(&rule.condition).max(1);
    rule.probes
        .iter()
        .filter_map(|n| config.probe(n))
        .map(|p| {
            let phase = p.interval / 2 + p.timeout;
            match p.confirm_interval {
                Some(c) if c >= p.timeout && needed > 1 => phase + c * (needed - 1) + p.timeout,
                Some(c) => phase + c * (needed - 1),
                None => phase + p.interval * (needed - 1),
            }
        })
        .max()
        .map(|d| d + rule.hold_for)
}

/// Rules fed by real traffic: their detection and false firings depend on
/// the request rate, so say which rate (and which noise) the figures assume.
fn traffic_figures(config: &Config, out: &mut String) {
    use std::fmt::Write;
    let noise = crate::traffic::ASSUMED_TRAFFIC_NOISE;
    let rows: Vec<_> = config
        .rules
        .iter()
        .filter_map(|r| crate::traffic::figures(config, r, noise).map(|f| (r, f)))
        .collect();
    if rows.is_empty() {
        return;
    }
    let _ = writeln!(
        out,
        "\nreal traffic (access_log), assuming {} requests/s per color and {}% random errors:",
        crate::config::ASSUMED_REQUESTS_PER_S,
        noise * 100.0
    );
    for (rule, f) in rows {
        let _ = writeln!(
            out,
            "  {} ({}): every request failing is detected in ~{} (median; {} of {} requests at {:.0}/s); false firings: {}",
            rule.name,
            config.actions.for_severity(rule.severity).as_str(),
            humantime::format_duration(Duration::from_millis(
                f.median_detection.as_millis() as u64 / 10 * 10
            )),
            f.needed,
            f.per_window,
            f.requests_per_s,
            f.false_text()
        );
    }
}

/// `check --strict`: the Critical/High rules that would fire on noise more
/// than once a year (each a warning already), as one failure.
pub fn strict(config: &Config) -> Result<(), super::CheckFailed> {
    let noisy: Vec<String> = config
        .rules
        .iter()
        .filter(|r| config.noise_warning(r).is_some())
        .map(|r| r.name.clone())
        .collect();
    if noisy.is_empty() {
        return Ok(());
    }
    Err(super::CheckFailed(format!(
        "--strict: {} would fire on noise more than once a year at {} independent failures",
        noisy.join(", "),
        format_rate(config.daemon.assumed_noise)
    )))
}
