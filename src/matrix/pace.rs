//! When to judge: the pace the daemon and `replay` share (a burst of
//! judgements as samples land, then one per [`EVAL_GAP`]), the idle
//! period, and how late a window's slide may be judged.

use std::time::Duration;

use crate::model::{Millis, duration_ms};

/// The pace of evaluation when no sample lands: the daemon judges as each
/// sample lands and, between samples, this long after its last judgement
/// (windows slide, `for` holds expire); `replay` follows the same schedule.
pub const EVAL_PERIOD: Duration = Duration::from_millis(250);

/// The least time between two judgements: samples landing faster (an
/// `access_log` probe under load lands one per request) are judged together,
/// at most this long after the previous judgement.
pub const EVAL_GAP: Duration = Duration::from_millis(25);

/// Judgements allowed back to back before [`EVAL_GAP`] spaces them.
pub const EVAL_BURST: u32 = 4;

/// The pace of judgements, shared by the daemon and `replay` so both judge
/// at the same moments: a judgement wanted at `now` (a sample landed, a
/// change fell due) runs at once while fewer than [`EVAL_BURST`] ran in the
/// last `EVAL_BURST x EVAL_GAP`, else as soon as that allows (a "leaky
/// bucket": one judgement per [`EVAL_GAP`] sustained). A health probe's
/// sample is judged the moment it lands; an access log landing a sample
/// per request cannot make the loop judge per request.
#[derive(Debug, Default, Clone, Copy)]
pub struct Pace {
    /// When the bucket is empty again (GCRA's theoretical arrival time).
    tat: Option<Millis>,
}

impl Pace {
    /// The soonest a judgement wanted at `now` may run (never before `now`).
    pub fn earliest(&self, now: Millis) -> Millis {
        let gap = duration_ms(EVAL_GAP);
        let tolerance = gap * Millis::from(EVAL_BURST - 1);
        self.tat.map_or(now, |tat| now.max(tat - tolerance))
    }

    /// A judgement ran at `at`.
    pub fn judged(&mut self, at: Millis) {
        let gap = duration_ms(EVAL_GAP);
        self.tat = Some(self.tat.map_or(at, |tat| tat.max(at)) + gap);
    }
}

/// How late a window's slide may be judged: a sixtieth of the window,
/// between [`EVAL_GAP`] and a second. Slides are judged on a grid of this
/// step ([`super::Engine::next_due`]), so the points of several probes, colors and
/// windows leaving within one step are judged together, once: the default
/// windows (1 to 15 minutes) slide once a second at most, while a 400 ms
/// window slides to within 25 ms.
pub fn slide_slack(window_ms: Millis) -> Millis {
    (window_ms / 60).clamp(duration_ms(EVAL_GAP), 1000)
}
