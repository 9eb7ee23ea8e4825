//! `rollbackd check`: the effective configuration in an operator's words.

use crate::config::{Config, Detection, Scope};
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
    if !config.warnings.is_empty() {
        let _ = writeln!(out, "\nwarnings:");
        for w in &config.warnings {
            let _ = writeln!(out, "  - {w}");
        }
    }
    out
}
