//! `rollbackd drill`: a rehearsal on a real (staging) host against the
//! running daemon. It records a drill marker, runs the operator's fault
//! command, watches what the daemon does — through the database only, like
//! every other command — times each stage (fault -> first failing sample ->
//! rule fired -> rollback started -> switched -> verified), judges the
//! outcome against the expectation, and runs the restore command.
//!
//! The marker (a `drills` row) is what the daemon sees: while it runs, its
//! notifications are withheld unless the drill asked for them, `report`
//! leaves its samples out of availability, and the incidents it caused are
//! marked as the drill's. A drill whose process dies stops counting at its
//! deadline (the timeout plus the commands' budgets).
//!
//! This file owns the watching and the report; `cli/drill.rs` owns the
//! arguments and the exit code. It never calls into the daemon.

use std::fmt::Write as _;
use std::time::Duration;

use serde::Serialize;

use crate::config::Config;
use crate::model::{Color, IncidentState, Millis, format_ms, now_ms};
use crate::process;
use crate::store::{Store, StoreError};

/// The budget of the fault and the restore command each.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(120);
/// How fresh the newest sample must be for the daemon to count as running.
pub const DAEMON_FRESH: Duration = Duration::from_secs(30);
/// How often the database is read while watching.
const POLL: Duration = Duration::from_millis(200);

/// What the operator expects the daemon to do about the fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Expect {
    /// A rollback that switches and is verified healthy.
    Rollback,
    /// A rule fires, and no rollback starts.
    Alert,
    /// No rule fires and no rollback starts within the timeout.
    Nothing,
}

impl Expect {
    pub fn as_str(self) -> &'static str {
        match self {
            Expect::Rollback => "rollback",
            Expect::Alert => "alert",
            Expect::Nothing => "nothing",
        }
    }
}

/// What the daemon did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Observed {
    /// Switched and verified.
    Rollback,
    /// A rollback started but ended otherwise (refused, failed, escalated,
    /// dry run), or had not ended when the drill stopped watching.
    RollbackNotVerified {
        state: String,
    },
    /// A rule fired; no rollback started.
    Alert,
    Nothing,
}

impl Observed {
    pub fn as_str(&self) -> String {
        match self {
            Observed::Rollback => "rollback".into(),
            Observed::RollbackNotVerified { state } => format!("rollback ({state}, not verified)"),
            Observed::Alert => "alert".into(),
            Observed::Nothing => "nothing".into(),
        }
    }

    fn word(&self) -> &'static str {
        match self {
            Observed::Rollback => "rollback",
            Observed::RollbackNotVerified { .. } => "rollback_not_verified",
            Observed::Alert => "alert",
            Observed::Nothing => "nothing",
        }
    }

    pub fn matches(&self, expect: Expect) -> bool {
        matches!(
            (self, expect),
            (Observed::Rollback, Expect::Rollback)
                | (Observed::Alert, Expect::Alert)
                | (Observed::Nothing, Expect::Nothing)
        )
    }
}

/// What the drill was asked to do.
#[derive(Clone, Debug)]
pub struct Plan {
    pub inject: Vec<String>,
    pub restore: Option<Vec<String>>,
    pub expect: Expect,
    pub timeout: Duration,
    pub notify: bool,
}

/// One stage reached, and when.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Stage {
    pub name: &'static str,
    pub at_ms: Millis,
    /// Since the fault command started.
    pub after_ms: Millis,
    pub detail: String,
}

/// The drill's record: the report the procedures ask to document.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub drill: i64,
    pub service: String,
    pub active: Option<Color>,
    pub active_version: Option<String>,
    pub inject: Vec<String>,
    pub inject_result: String,
    pub restore: Option<Vec<String>>,
    pub restore_result: Option<String>,
    pub restore_ok: bool,
    pub expect: Expect,
    pub observed: Observed,
    pub matched: bool,
    pub notify: bool,
    pub started_ms: Millis,
    pub ended_ms: Millis,
    pub stages: Vec<Stage>,
    pub incident: Option<i64>,
    /// Things an operator should know (a pause in force, an interruption).
    pub notes: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum DrillError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(
        "the daemon does not seem to be running: no sample stored in the last {0}s (start `rollbackd run` first)"
    )]
    DaemonNotRunning(u64),
}

/// What has been seen so far.
#[derive(Default)]
struct Watch {
    first_failure: Option<Stage>,
    fired: Option<Stage>,
    started: Option<Stage>,
    switched: Option<Stage>,
    verified: Option<Stage>,
    incident: Option<i64>,
    closed_state: Option<IncidentState>,
}

impl Watch {
    fn observed(&self) -> Observed {
        match (&self.incident, &self.closed_state) {
            (Some(_), Some(IncidentState::Verified)) => Observed::Rollback,
            (Some(_), Some(s)) => Observed::RollbackNotVerified {
                state: s.as_str().to_owned(),
            },
            (Some(_), None) => Observed::RollbackNotVerified {
                state: "still running".into(),
            },
            (None, _) if self.fired.is_some() => Observed::Alert,
            (None, _) => Observed::Nothing,
        }
    }

    fn stages(&self) -> Vec<Stage> {
        [
            &self.first_failure,
            &self.fired,
            &self.started,
            &self.switched,
            &self.verified,
        ]
        .into_iter()
        .flatten()
        .cloned()
        .collect()
    }
}

fn stage(name: &'static str, at_ms: Millis, fault_ms: Millis, detail: String) -> Stage {
    Stage {
        name,
        at_ms,
        after_ms: (at_ms - fault_ms).max(0),
        detail,
    }
}

/// Read the database once and note what is new since the fault. With the
/// active color known, failures and rules of the standby do not count (a
/// stopped standby on staging fails all the time).
async fn look(
    store: &Store,
    drill: i64,
    fault_ms: Millis,
    active: Option<Color>,
    w: &mut Watch,
) -> Result<(), StoreError> {
    if w.first_failure.is_none() {
        if let Some(s) = store.first_failure_since(fault_ms, active).await? {
            let detail = format!(
                "{} on {}: {}",
                s.probe,
                s.color.map(Color::as_str).unwrap_or("shared"),
                s.detail
            );
            w.first_failure = Some(stage("first failing sample", s.at_ms, fault_ms, detail));
        }
    }
    if w.fired.is_none() {
        let verdicts = store.verdicts_between(fault_ms, now_ms() + 1).await?;
        if let Some(v) = verdicts
            .into_iter()
            .find(|v| v.state == crate::matrix::State::Fired && active.is_none_or(|c| c == v.color))
        {
            let detail = format!("{} on {}", v.rule, v.color);
            w.fired = Some(stage("rule fired", v.at_ms, fault_ms, detail));
        }
    }
    if w.closed_state.is_none() {
        let incidents = store.incidents_since(fault_ms).await?;
        if let Some((inc, marked)) = incidents.into_iter().next() {
            if marked.is_none() {
                store.mark_drill_incident(drill, inc.id).await?;
            }
            if w.started.is_none() {
                let detail = format!(
                    "incident #{}: {} -> {} ({})",
                    inc.id,
                    inc.from_color.map(Color::as_str).unwrap_or("?"),
                    inc.to_color.map(Color::as_str).unwrap_or("?"),
                    inc.reason
                );
                w.started = Some(stage("rollback started", inc.opened_ms, fault_ms, detail));
            }
            w.incident = Some(inc.id);
            if w.switched.is_none() {
                let events = store.incident_events(inc.id).await?;
                if let Some(e) = events.iter().find(|e| e.state == IncidentState::Switched) {
                    w.switched = Some(stage("switched", e.at_ms, fault_ms, e.message.clone()));
                }
            }
            if let Some(closed) = inc.closed_ms {
                if inc.state == IncidentState::Verified {
                    let detail = inc.outcome.clone().unwrap_or_default();
                    w.verified = Some(stage("verified", closed, fault_ms, detail));
                }
                w.closed_state = Some(inc.state);
            }
        }
    }
    Ok(())
}

/// Run the drill. `say` gets one line per stage as it is seen (for a
/// terminal); `interrupted` resolving stops the watching early (Ctrl-C):
/// the restore still runs.
pub async fn run(
    config: &Config,
    store: &Store,
    plan: &Plan,
    mut say: impl FnMut(&str),
    interrupted: impl std::future::Future<Output = ()>,
) -> Result<Report, DrillError> {
    let now = now_ms();
    let fresh = store
        .samples(None, None, now - DAEMON_FRESH.as_millis() as Millis)
        .await?;
    if fresh.is_empty() {
        return Err(DrillError::DaemonNotRunning(DAEMON_FRESH.as_secs()));
    }
    let mut notes = Vec::new();
    if let Some(p) = store.active_pause(now).await? {
        notes.push(format!(
            "automatic rollbacks were paused until {} ({}): a rollback cannot be expected",
            format_ms(p.until_ms),
            p.reason
        ));
    }
    // A read only: recording a cutover the file shows is the daemon's.
    let active = crate::rollback::active::read(config, store)
        .await
        .ok()
        .flatten();
    let active_color = active.as_ref().map(|a| a.color());
    let budget = plan.timeout + COMMAND_TIMEOUT * 2;
    let drill = store
        .start_drill(
            now,
            now + budget.as_millis() as Millis,
            &serde_json::to_string(&plan.inject).unwrap_or_default(),
            plan.expect.as_str(),
            plan.notify,
        )
        .await?;
    say(&format!(
        "drill #{drill}: injecting the fault: {}",
        plan.inject.join(" ")
    ));
    let fault_ms = now_ms();
    let injected = process::run(&plan.inject, &[], COMMAND_TIMEOUT).await;
    say(&format!("fault command: {}", injected.describe()));
    if !injected.success() {
        notes.push(format!(
            "the fault command did not succeed ({}): the fault may not be in place",
            injected.describe()
        ));
    }

    let deadline = tokio::time::Instant::now() + plan.timeout;
    let mut w = Watch::default();
    let mut seen = 0;
    let mut ticker = tokio::time::interval(POLL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    tokio::pin!(interrupted);
    let mut cut_short = false;
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            () = &mut interrupted => {
                notes.push("interrupted: stopped watching before the outcome was known".into());
                cut_short = true;
                break;
            }
        }
        look(store, drill, fault_ms, active_color, &mut w).await?;
        for s in w.stages().iter().skip(seen) {
            say(&format!(
                "+{:>7}  {}: {}",
                secs(s.after_ms),
                s.name,
                s.detail
            ));
        }
        seen = w.stages().len();
        // A rollback's end settles every expectation; otherwise "alert"
        // and "nothing" are only known when the time is up.
        if w.closed_state.is_some() || tokio::time::Instant::now() >= deadline {
            break;
        }
    }
    if w.incident.is_some() && w.closed_state.is_none() {
        notes.push(format!(
            "the rollback had not ended after {}",
            humantime::format_duration(plan.timeout)
        ));
    }

    let (restore_result, restore_ok) = match &plan.restore {
        Some(argv) => {
            say(&format!("restoring: {}", argv.join(" ")));
            let done = process::run(argv, &[], COMMAND_TIMEOUT).await;
            say(&format!("restore command: {}", done.describe()));
            (Some(done.describe()), done.success())
        }
        None => (None, true),
    };
    if !restore_ok {
        notes.push("the restore command failed: put the host back by hand".into());
    }
    let observed = w.observed();
    // Cut short, only a rollback that ended settles anything: "alert" and
    // "nothing" need the whole timeout.
    let matched = observed.matches(plan.expect) && !(cut_short && w.closed_state.is_none());
    let ended_ms = now_ms();
    store
        .end_drill(drill, ended_ms, observed.word(), matched)
        .await?;
    Ok(Report {
        drill,
        service: config.service.clone(),
        active: active_color,
        // An unrecorded cutover is recorded by the daemon as "unknown".
        active_version: active.as_ref().map(|a| {
            a.deployment()
                .map_or_else(|| "unknown".to_owned(), |d| d.version.clone())
        }),
        inject: plan.inject.clone(),
        inject_result: injected.describe(),
        restore: plan.restore.clone(),
        restore_result,
        restore_ok,
        expect: plan.expect,
        observed,
        matched,
        notify: plan.notify,
        started_ms: fault_ms,
        ended_ms,
        stages: w.stages(),
        incident: w.incident,
        notes,
    })
}

fn secs(ms: Millis) -> String {
    format!("{:.1}s", ms as f64 / 1000.0)
}

/// The stages in their fixed order, with those not reached.
const STAGES: [&str; 5] = [
    "first failing sample",
    "rule fired",
    "rollback started",
    "switched",
    "verified",
];

impl Report {
    /// Whether the drill passed: the expectation held and the host was
    /// restored.
    pub fn passed(&self) -> bool {
        self.matched && self.restore_ok
    }

    fn verdict(&self) -> String {
        match (self.matched, self.restore_ok) {
            (true, true) => format!("PASSED: expected {}, saw it", self.expect.as_str()),
            (true, false) => format!(
                "FAILED: expected {} and saw it, but the restore failed",
                self.expect.as_str()
            ),
            (false, _) => format!(
                "FAILED: expected {}, saw {}",
                self.expect.as_str(),
                self.observed.as_str()
            ),
        }
    }

    fn rows(&self) -> Vec<(&'static str, String, String, String)> {
        let mut rows = vec![(
            "fault injected",
            "+0.0s".to_owned(),
            format_ms(self.started_ms),
            self.inject_result.clone(),
        )];
        for name in STAGES {
            match self.stages.iter().find(|s| s.name == name) {
                Some(s) => rows.push((
                    name,
                    format!("+{}", secs(s.after_ms)),
                    format_ms(s.at_ms),
                    s.detail.clone(),
                )),
                None => rows.push((name, "—".into(), "—".into(), "not reached".into())),
            }
        }
        rows
    }

    pub fn text(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "drill #{} on {}: {}",
            self.drill,
            self.service,
            self.verdict()
        );
        if let (Some(c), Some(v)) = (self.active, &self.active_version) {
            let _ = writeln!(out, "active before the fault: {c} ({v})");
        }
        let _ = writeln!(out, "fault: {}", self.inject.join(" "));
        for (name, after, _, detail) in self.rows() {
            let _ = writeln!(out, "  {after:>8}  {name:<21} {detail}");
        }
        if let Some(r) = &self.restore_result {
            let _ = writeln!(out, "restore: {r}");
        }
        if let Some(i) = self.incident {
            let _ = writeln!(
                out,
                "incident: #{i} (marked as a drill; `rollbackd incident show {i}`)"
            );
        }
        let _ = writeln!(
            out,
            "notifications: {}",
            if self.notify {
                "sent, marked as a drill"
            } else {
                "withheld (no --notify)"
            }
        );
        for n in &self.notes {
            let _ = writeln!(out, "note: {n}");
        }
        out
    }

    pub fn markdown(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "## Rollback drill #{} — {}\n",
            self.drill, self.service
        );
        let _ = writeln!(out, "**{}**\n", self.verdict());
        let _ = writeln!(out, "- **Date:** {}", format_ms(self.started_ms));
        if let (Some(c), Some(v)) = (self.active, &self.active_version) {
            let _ = writeln!(out, "- **Active before the fault:** {c} (`{v}`)");
        }
        let _ = writeln!(out, "- **Fault:** `{}`", self.inject.join(" "));
        let _ = writeln!(out, "- **Expected:** {}", self.expect.as_str());
        let _ = writeln!(out, "- **Observed:** {}", self.observed.as_str());
        if let Some(i) = self.incident {
            let _ = writeln!(out, "- **Incident:** #{i} (marked as a drill)");
        }
        if let Some(r) = &self.restore_result {
            let _ = writeln!(
                out,
                "- **Restore:** `{}` — {r}",
                self.restore.as_deref().unwrap_or_default().join(" ")
            );
        }
        let _ = writeln!(
            out,
            "- **Notifications:** {}",
            if self.notify {
                "sent, marked as a drill"
            } else {
                "withheld"
            }
        );
        let _ = writeln!(out, "\n| stage | after the fault | at | detail |");
        let _ = writeln!(out, "|---|---:|---|---|");
        for (name, after, at, detail) in self.rows() {
            let _ = writeln!(out, "| {name} | {after} | {at} | {} |", md_cell(&detail));
        }
        if !self.notes.is_empty() {
            let _ = writeln!(out, "\n### Notes\n");
            for n in &self.notes {
                let _ = writeln!(out, "- {n}");
            }
        }
        out
    }
}

fn md_cell(s: &str) -> String {
    s.replace('|', "\\|").replace('\n', " ")
}

/// Split a command line into an argv the way a shell splits words (single
/// and double quotes, backslash escapes), without being one: no variables,
/// globs, pipes or redirections. Those are refused, so an operator never
/// believes a pipe ran.
pub fn split_argv(line: &str) -> Result<Vec<String>, String> {
    let mut args = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => cur.push(c),
                        None => return Err("unclosed ' quote".into()),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(c) => cur.push(c),
                            None => return Err("unclosed \" quote".into()),
                        },
                        Some(c) => cur.push(c),
                        None => return Err("unclosed \" quote".into()),
                    }
                }
            }
            '\\' => {
                in_word = true;
                match chars.next() {
                    Some(c) => cur.push(c),
                    None => return Err("a trailing backslash".into()),
                }
            }
            c if c.is_whitespace() => {
                if in_word {
                    args.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            '|' | ';' | '&' | '>' | '<' | '$' | '`' | '*' | '?' => {
                return Err(format!(
                    "`{c}` needs a shell, and drill commands never run through one: \
                     put the steps in a script and give its path"
                ));
            }
            c => {
                in_word = true;
                cur.push(c);
            }
        }
    }
    if in_word {
        args.push(cur);
    }
    if args.is_empty() {
        return Err("the command is empty".into());
    }
    Ok(args)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_argv_splits_like_a_shell_without_being_one() {
        assert_eq!(
            split_argv(r#"systemctl stop 'beluga@blue.service' "a b" c\ d"#).unwrap(),
            vec!["systemctl", "stop", "beluga@blue.service", "a b", "c d"]
        );
        assert_eq!(split_argv("''").unwrap(), vec![""]);
        for bad in [
            "kill $(pidof x)",
            "a | b",
            "a > f",
            "a; b",
            "rm *",
            "",
            "'open",
        ] {
            assert!(split_argv(bad).is_err(), "{bad:?} was accepted");
        }
        assert_eq!(
            split_argv("echo '$HOME|x'").unwrap(),
            vec!["echo", "$HOME|x"]
        );
    }

    #[test]
    fn outcomes_match_only_their_expectation() {
        let verified = Observed::Rollback;
        assert!(verified.matches(Expect::Rollback));
        assert!(!verified.matches(Expect::Alert));
        let refused = Observed::RollbackNotVerified {
            state: IncidentState::Refused.as_str().to_owned(),
        };
        for e in [Expect::Rollback, Expect::Alert, Expect::Nothing] {
            assert!(!refused.matches(e));
        }
        assert!(Observed::Alert.matches(Expect::Alert));
        assert!(Observed::Nothing.matches(Expect::Nothing));
        assert!(!Observed::Nothing.matches(Expect::Rollback));
    }

    #[test]
    fn the_observed_outcome_follows_the_watch() {
        let mut w = Watch::default();
        assert_eq!(w.observed(), Observed::Nothing);
        w.fired = Some(stage("rule fired", 10, 0, String::new()));
        assert_eq!(w.observed(), Observed::Alert);
        w.incident = Some(3);
        assert!(matches!(w.observed(), Observed::RollbackNotVerified { .. }));
        w.closed_state = Some(IncidentState::Verified);
        assert_eq!(w.observed(), Observed::Rollback);
        assert_eq!(stage("x", 5, 10, String::new()).after_ms, 0);
    }
}
