//! From verdicts to decisions: what `[actions]` asks for each fired rule
//! (`decide`, the one mapping the daemon, `gate` and `replay` use), and
//! the worst verdict for `STATUS=` and `/status`.

use super::{State, Verdict};
use crate::config::Actions;
use crate::model::{Action, Color};

/// What a fired verdict asks for.
#[derive(Clone, Debug, PartialEq)]
pub enum Decision {
    /// Roll the active color back: the worst fired rule that asks for it.
    Rollback(Verdict),
    Alert(Verdict),
    Log(Verdict),
}

/// Map verdicts to decisions per `[actions]`. Critical/High on the active
/// color may request a rollback; on the standby every action is at most an
/// alert (rolling back would not help the color that is not serving).
pub fn decide(verdicts: &[Verdict], active: Color, actions: &Actions) -> Vec<Decision> {
    let mut out = Vec::new();
    let mut rollback: Option<&Verdict> = None;
    for v in verdicts.iter().filter(|v| v.state == State::Fired) {
        match actions.for_severity(v.severity) {
            Action::Rollback if v.color == active => {
                if rollback.is_none_or(|r| v.severity > r.severity) {
                    rollback = Some(v);
                }
            }
            Action::Rollback | Action::Alert => out.push(Decision::Alert(v.clone())),
            Action::Log => out.push(Decision::Log(v.clone())),
        }
    }
    if let Some(v) = rollback {
        out.insert(0, Decision::Rollback(v.clone()));
    }
    out
}

/// The worst state across verdicts, for `STATUS=` and `/status`.
pub fn worst(verdicts: &[Verdict]) -> Option<&Verdict> {
    verdicts
        .iter()
        .filter(|v| v.state == State::Fired)
        .max_by_key(|v| v.severity)
}
