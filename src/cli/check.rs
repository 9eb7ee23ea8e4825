//! `rollbackd check`: the effective configuration in an operator's words.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::config::{
    Check, Config, ConfigError, Detection, Scope, Template, format_rate, how_often,
};

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
    if let Some(db) = &config.daemon.database {
        // The reference, never its value (a URL with a password).
        let _ = writeln!(
            out,
            "fleet: shared database from {db}, as host {} (docs/fleet.md)",
            config.daemon.host
        );
    }
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
    let noise = crate::matrix::traffic::ASSUMED_TRAFFIC_NOISE;
    let rows: Vec<_> = config
        .rules
        .iter()
        .filter_map(|r| crate::matrix::traffic::figures(config, r, noise).map(|f| (r, f)))
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

/// `check --strict`: warnings are fatal. The Critical/High rules that
/// would fire on noise more than once a year are named as such; any other
/// warning fails it too.
pub fn strict(config: &Config, warnings: &[String]) -> Result<(), super::CheckFailed> {
    let noisy: Vec<String> = config
        .rules
        .iter()
        .filter(|r| config.noise_warning(r).is_some())
        .map(|r| r.name.clone())
        .collect();
    if !noisy.is_empty() {
        return Err(super::CheckFailed(format!(
            "--strict: {} would fire on noise more than once a year at {} independent failures",
            noisy.join(", "),
            format_rate(config.daemon.assumed_noise)
        )));
    }
    match warnings {
        [] => Ok(()),
        [one] => Err(super::CheckFailed(format!("--strict: a warning: {one}"))),
        [first, rest @ ..] => Err(super::CheckFailed(format!(
            "--strict: {} warnings, the first: {first}",
            rest.len() + 1
        ))),
    }
}

// --- configured commands: do they exist, may the daemon's user run them? --

/// Who the commands are checked for: the user `check` runs as, or (as
/// root, `--user`) the daemon's user by the mode bits.
pub struct Runner {
    pub name: String,
    uid: u32,
    /// Primary and supplementary groups.
    gids: Vec<u32>,
    /// True when checked by mode bits for another user (`--user` as root).
    by_mode: bool,
}

impl Runner {
    pub fn current() -> Runner {
        let uid = nix::unistd::geteuid();
        let user = nix::unistd::User::from_uid(uid).ok().flatten();
        Runner {
            name: user
                .as_ref()
                .map(|u| u.name.clone())
                .unwrap_or_else(|| format!("uid {uid}")),
            uid: uid.as_raw(),
            gids: Vec::new(),
            by_mode: false,
        }
    }

    /// `--user NAME`: the daemon's user, by its uid and groups.
    pub fn named(name: &str) -> anyhow::Result<Runner> {
        let user = nix::unistd::User::from_name(name)
            .ok()
            .flatten()
            .ok_or_else(|| super::NotFound(format!("--user {name}: no such user")))?;
        let mut gids = vec![user.gid.as_raw()];
        let cname = std::ffi::CString::new(name)?;
        if let Ok(groups) = nix::unistd::getgrouplist(&cname, user.gid) {
            gids.extend(groups.iter().map(|g| g.as_raw()));
        }
        Ok(Runner {
            name: user.name,
            uid: user.uid.as_raw(),
            gids,
            by_mode: true,
        })
    }

    /// Whether this user may search (`x`) a directory or run a file.
    fn may_execute(&self, path: &Path) -> Result<(), String> {
        use std::os::unix::fs::MetadataExt;
        if !self.by_mode {
            return nix::unistd::access(path, nix::unistd::AccessFlags::X_OK)
                .map_err(|e| e.desc().to_lowercase());
        }
        let m = std::fs::metadata(path).map_err(|e| e.kind().to_string())?;
        let mode = m.mode();
        let allowed = if self.uid == 0 {
            m.is_dir() || mode & 0o111 != 0
        } else if m.uid() == self.uid {
            mode & 0o100 != 0
        } else if self.gids.contains(&m.gid()) {
            mode & 0o010 != 0
        } else {
            mode & 0o001 != 0
        };
        if allowed {
            Ok(())
        } else {
            Err(format!(
                "mode {:04o}, owner uid {} gid {}",
                mode & 0o7777,
                m.uid(),
                m.gid()
            ))
        }
    }

    /// Why this user cannot run `program` (a path), if it cannot: every
    /// folder on the way must be searchable, the file a runnable file.
    fn cannot_run(&self, program: &Path) -> Option<String> {
        let meta = match std::fs::metadata(program) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Some(format!("{} does not exist", program.display()));
            }
            Err(e) => return Some(format!("{}: {}", program.display(), e.kind())),
            Ok(m) => m,
        };
        if !meta.is_file() {
            return Some(format!("{} is not a file", program.display()));
        }
        for dir in program.ancestors().skip(1) {
            if dir.as_os_str().is_empty() {
                continue;
            }
            if let Err(why) = self.may_execute(dir) {
                return Some(format!(
                    "user {} cannot enter {} ({why})",
                    self.name,
                    dir.display()
                ));
            }
        }
        self.may_execute(program).err().map(|why| {
            format!(
                "{} is not executable for user {} ({why})",
                program.display(),
                self.name
            )
        })
    }
}

/// The folders a bare command name is looked up in, as the daemon's
/// `execvp` would: `PATH`, or systemd's default when it is unset.
fn search_path() -> Vec<PathBuf> {
    let path = std::env::var_os("PATH")
        .unwrap_or_else(|| "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin".into());
    std::env::split_paths(&path).collect()
}

/// Why `program` (argv[0]) cannot be run by `runner`, if it cannot.
fn command_problem(program: &str, runner: &Runner) -> Option<String> {
    if program.contains('/') {
        return runner.cannot_run(Path::new(program));
    }
    let dirs = search_path();
    // execvp takes the first runnable one; remember why the others fail.
    let mut first_problem = None;
    for dir in &dirs {
        let candidate = dir.join(program);
        if !candidate.exists() {
            continue;
        }
        match runner.cannot_run(&candidate) {
            None => return None,
            Some(why) => {
                first_problem.get_or_insert(why);
            }
        }
    }
    Some(first_problem.unwrap_or_else(|| {
        let shown: Vec<String> = dirs.iter().map(|d| d.display().to_string()).collect();
        format!("{program} is not found on PATH ({})", shown.join(":"))
    }))
}

/// Every configured command the daemon would run that does not exist or
/// that its user may not run, as errors naming file, line and key. In a
/// dry run the `[rollback]` commands never run: their problems are
/// warnings then.
pub fn commands(config: &Config, runner: &Runner) -> (Vec<ConfigError>, Vec<String>) {
    let text = std::fs::read_to_string(&config.path).unwrap_or_default();
    let mut errors = Vec::new();
    let mut warnings = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    let mut check = |template: &Template, table: Table<'_>, key: &str, dry: bool| {
        // A placeholder in the program itself: each color's program.
        for color in Color::ALL {
            let vars = [
                ("color", color.as_str()),
                ("to", color.as_str()),
                ("from", color.other().as_str()),
            ];
            let argv = template.render(&vars);
            let Some(program) = argv.first() else {
                continue;
            };
            let Some(why) = command_problem(program, runner) else {
                continue;
            };
            let err = locate(&config.path, &text, table, key, &why);
            if !seen.insert(err.to_string()) {
                continue;
            }
            if dry {
                warnings.push(format!(
                    "{err} (a dry run never runs it; it must exist before dry_run = false)"
                ));
            } else {
                errors.push(err);
            }
        }
    };
    let dry = config.daemon.dry_run;
    for (key, template) in [
        ("prepare", &config.rollback.prepare),
        ("command", &config.rollback.command),
        ("retire", &config.rollback.retire),
    ] {
        if let Some(t) = template {
            check(t, Table::Named("rollback"), key, dry);
        }
    }
    for p in &config.probes {
        if let Check::Exec(e) = &p.check {
            check(&e.command, Table::Probe(&p.name), "command", false);
        }
    }
    (errors, warnings)
}

#[derive(Clone, Copy)]
enum Table<'a> {
    /// `[name]`
    Named(&'a str),
    /// The `[[probe]]` whose `name` is this.
    Probe(&'a str),
}

/// A `ConfigError` at `key` of `table` in the file's text: its line when
/// it is found there, else the table's, else the first.
fn locate(path: &Path, text: &str, table: Table<'_>, key: &str, message: &str) -> ConfigError {
    let lines: Vec<&str> = text.lines().collect();
    let header = |l: &str| l.trim_start().starts_with('[');
    let key_of = |l: &str| {
        let l = l.trim_start();
        let eq = l.find('=')?;
        Some(l[..eq].trim().trim_matches('"').to_owned())
    };
    // The table's first line (its header) and its name in the key path.
    let (start, name) = match table {
        Table::Named(n) => (
            lines
                .iter()
                .position(|l| l.trim() == format!("[{n}]"))
                .map(|i| i + 1),
            n.to_owned(),
        ),
        Table::Probe(probe) => {
            let mut found = (None, "probe".to_owned());
            let mut nth = 0;
            for (i, l) in lines.iter().enumerate() {
                if l.trim() == "[[probe]]" {
                    nth += 1;
                    let body = lines[i + 1..].iter().take_while(|l| !header(l));
                    let named = body
                        .filter(|l| key_of(l).as_deref() == Some("name"))
                        .any(|l| {
                            l.split('=')
                                .nth(1)
                                .is_some_and(|v| v.trim().trim_matches('"') == probe)
                        });
                    if named {
                        found = (Some(i + 1), format!("probe[{nth}]"));
                        break;
                    }
                }
            }
            found
        }
    };
    let line = start
        .and_then(|s| {
            lines[s..]
                .iter()
                .take_while(|l| !header(l))
                .position(|l| key_of(l).as_deref() == Some(key))
                .map(|i| s + i + 1)
        })
        .or(start)
        .unwrap_or(1);
    let column = lines
        .get(line - 1)
        .map(|l| l.len() - l.trim_start().len() + 1)
        .unwrap_or(1);
    ConfigError::Invalid {
        path: path.to_path_buf(),
        line,
        column,
        key: format!("{name}.{key}"),
        message: message.to_owned(),
    }
}

/// `rollbackd check [--strict] [--json] [--user NAME]`: load, validate,
/// check the commands, then print the report (or the JSON document).
pub fn run(path: &Path, a: &super::CheckArgs) -> anyhow::Result<()> {
    let config = match Config::load(path) {
        Ok(c) => c,
        Err(e) => {
            if a.json {
                let doc = Document::failed(path, std::slice::from_ref(&e));
                println!("{}", serde_json::to_string_pretty(&doc)?);
            }
            return Err(e.into());
        }
    };
    let runner = match &a.user {
        Some(name) => Runner::named(name)?,
        None => Runner::current(),
    };
    let (errors, command_warnings) = commands(&config, &runner);
    let mut warnings = config.warnings.clone();
    warnings.extend(command_warnings.iter().cloned());
    let strict = if a.strict {
        strict(&config, &warnings).err()
    } else {
        None
    };
    if a.json {
        let doc = if errors.is_empty() {
            Document::new(&config, warnings, strict.is_none())
        } else {
            Document::failed(path, &errors)
        };
        println!("{}", serde_json::to_string_pretty(&doc)?);
    } else if errors.is_empty() {
        print!("{}", report(&config));
        if !command_warnings.is_empty() {
            if config.warnings.is_empty() {
                println!("\nwarnings:");
            }
            for w in &command_warnings {
                println!("  - {w}");
            }
        }
    }
    let mut errors = errors.into_iter();
    if let Some(first) = errors.next() {
        // Every refused command on stderr; the first is the error (and the
        // exit code) `main` reports.
        for more in errors {
            eprintln!("rollbackd: {more}");
        }
        return Err(first.into());
    }
    match strict {
        Some(failed) => Err(failed.into()),
        None => Ok(()),
    }
}

/// `check --json`: a stable document. Durations in milliseconds; `null`
/// where a rule can never fire (or a figure does not apply).
#[derive(serde::Serialize)]
struct Document {
    config: String,
    /// No error (and, with `--strict`, no warning).
    ok: bool,
    errors: Vec<ErrorDoc>,
    warnings: Vec<String>,
    service: Option<String>,
    dry_run: Option<bool>,
    assumed_noise: Option<f64>,
    probes: Vec<serde_json::Value>,
    rules: Vec<serde_json::Value>,
    /// The shortest `gate --for` that judges every Critical/High rule.
    gate_for_ms: Option<u64>,
}

#[derive(serde::Serialize)]
struct ErrorDoc {
    file: String,
    line: Option<usize>,
    column: Option<usize>,
    key: Option<String>,
    message: String,
}

fn ms(d: Duration) -> u64 {
    d.as_millis().min(u64::MAX as u128) as u64
}

impl Document {
    fn failed(path: &Path, errors: &[ConfigError]) -> Document {
        Document {
            config: path.display().to_string(),
            ok: false,
            errors: errors
                .iter()
                .map(|e| match e {
                    ConfigError::Invalid {
                        path,
                        line,
                        column,
                        key,
                        message,
                    } => ErrorDoc {
                        file: path.display().to_string(),
                        line: Some(*line),
                        column: Some(*column),
                        key: Some(key.clone()),
                        message: message.clone(),
                    },
                    ConfigError::Read { path, source } => ErrorDoc {
                        file: path.display().to_string(),
                        line: None,
                        column: None,
                        key: None,
                        message: format!("cannot read the configuration: {source}"),
                    },
                })
                .collect(),
            warnings: Vec::new(),
            service: None,
            dry_run: None,
            assumed_noise: None,
            probes: Vec::new(),
            rules: Vec::new(),
            gate_for_ms: None,
        }
    }

    fn new(config: &Config, warnings: Vec<String>, ok: bool) -> Document {
        use serde_json::json;
        let within = |d: Detection| match d {
            Detection::Within(d) => Some(ms(d)),
            Detection::Never(_) | Detection::Unfed(_) => None,
        };
        Document {
            config: config.path.display().to_string(),
            ok,
            errors: Vec::new(),
            warnings,
            service: Some(config.service.clone()),
            dry_run: Some(config.daemon.dry_run),
            assumed_noise: Some(config.daemon.assumed_noise),
            probes: config
                .probes
                .iter()
                .map(|p| {
                    json!({
                        "name": p.name,
                        "kind": p.check.kind(),
                        "shared": p.scope == Scope::Shared,
                        "health": p.health,
                        "interval_ms": ms(p.interval),
                        "timeout_ms": ms(p.timeout),
                        "confirm_interval_ms": p.confirm_interval.map(ms),
                    })
                })
                .collect(),
            rules: config
                .rules
                .iter()
                .map(|r| {
                    json!({
                        "name": r.name,
                        "severity": r.severity.as_str(),
                        "when": r.condition.to_string(),
                        "window_ms": ms(r.window),
                        "min_samples": r.min_samples,
                        "action": config.actions.for_severity(r.severity).as_str(),
                        "detects_within_ms": within(config.detection_time(r)),
                        "acted_on_within_ms": ms(r.severity.acted_on_within()),
                        "median_detection_ms": config.median_detection(r).map(ms),
                        "noise_firings_per_year": config.noise_firings(r),
                    })
                })
                .collect(),
            gate_for_ms: config.gate_time().map(ms),
        }
    }
}
