//! `exec`: run an argv (never a shell) with `{color}` substituted; exit 0 is
//! ok. The verdict is the exit status; output is captured (capped, read until
//! exit plus a short grace) into the detail, and every descendant (its
//! process group and `setsid` escapees alike, see `process`) is killed when
//! the check ends or the timeout strikes.

use std::time::Duration;

use super::Outcome;
use crate::config::ExecCheck;
use crate::model::{Color, SampleStatus};
use crate::process::{self, Exit};

pub async fn run(check: &ExecCheck, color: Option<Color>, timeout: Duration) -> Outcome {
    let color_name = color.map(Color::as_str).unwrap_or("");
    let argv = check.command.render(&[("color", color_name)]);
    let env = [("ROLLBACKD_COLOR", color_name.to_owned())];
    let done = process::run(&argv, &env, timeout).await;
    let latency = Some(super::ms(done.elapsed));
    let status = match done.exit {
        Exit::Code(0) => SampleStatus::Ok,
        Exit::TimedOut => SampleStatus::Timeout,
        // The watchdog could not run its own check: no answer from anyone.
        Exit::SpawnFailed(_) => SampleStatus::Unreachable,
        _ => SampleStatus::Failed,
    };
    Outcome {
        status,
        latency_ms: latency,
        detail: done.describe(),
        requests: None,
        errors: None,
    }
}
