//! Logging setup: native journald (with `ROLLBACKD_*` fields and
//! `MESSAGE_ID`), JSON lines, or human-readable text on stderr.
//!
//! Events name their structured fields `rollbackd.color`,
//! `rollbackd.probe`, `rollbackd.rule`, `rollbackd.severity`,
//! `rollbackd.incident`, which journald receives as `ROLLBACKD_COLOR` and so
//! on, and `message_id`, which it receives as `MESSAGE_ID`.

use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;

use tracing_journald::{Priority, PriorityMappings};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::prelude::*;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Auto,
    Journald,
    Text,
    Json,
}

/// Whether `JOURNAL_STREAM` names our stderr: then systemd connected it to
/// the journal and native logging is better.
pub fn stderr_is_journal() -> bool {
    let Some(value) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = value.to_str().and_then(|v| v.split_once(':')) else {
        return false;
    };
    let fd = std::io::stderr().as_raw_fd();
    let Ok(meta) = std::fs::metadata(format!("/proc/self/fd/{fd}")) else {
        return false;
    };
    dev.parse::<u64>().ok() == Some(meta.dev()) && ino.parse::<u64>().ok() == Some(meta.ino())
}

/// Install the global subscriber writing plain text (no color codes) to
/// `file`: `rollbackd demo` keeps the daemon's log out of its narration.
/// `RUST_LOG` refines the level (default `info`).
pub fn init_file(file: std::fs::File) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Already initialised (tests calling twice): keep the first.
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::sync::Mutex::new(file))
                .with_timer(RfcMillis)
                .with_ansi(false)
                .with_target(false),
        )
        .try_init();
}

/// Whether output to a stream may carry colour: only a terminal, and only
/// when `NO_COLOR` is unset or empty (https://no-color.org).
pub fn color_allowed(stream_is_terminal: bool) -> bool {
    color_allowed_with(stream_is_terminal, std::env::var_os("NO_COLOR"))
}

fn color_allowed_with(terminal: bool, no_color: Option<std::ffi::OsString>) -> bool {
    terminal && no_color.is_none_or(|v| v.is_empty())
}

/// Log times as every other time rollbackd prints: RFC 3339, milliseconds,
/// UTC (`2026-11-25T21:30:06.123Z`).
struct RfcMillis;

impl tracing_subscriber::fmt::time::FormatTime for RfcMillis {
    fn format_time(&self, w: &mut tracing_subscriber::fmt::format::Writer<'_>) -> std::fmt::Result {
        write!(
            w,
            "{}",
            humantime::format_rfc3339_millis(std::time::SystemTime::now())
        )
    }
}

/// Install the global subscriber. `RUST_LOG` refines the level (default
/// `info`). Returns the format in use.
pub fn init(format: Format) -> Format {
    let filter = || EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let format = match format {
        Format::Auto if stderr_is_journal() => Format::Journald,
        Format::Auto => Format::Text,
        f => f,
    };
    let result = match format {
        Format::Journald => match tracing_journald::layer() {
            Ok(layer) => {
                // INFO is "informational" (6), not tracing-journald's
                // default "notice" (5): `journalctl -p notice` then shows
                // warnings and worse only.
                let layer = layer
                    .with_field_prefix(None)
                    .with_syslog_identifier("rollbackd".into())
                    .with_priority_mappings(PriorityMappings {
                        info: Priority::Informational,
                        debug: Priority::Debug,
                        ..PriorityMappings::new()
                    });
                tracing_subscriber::registry()
                    .with(filter())
                    .with(layer)
                    .try_init()
            }
            Err(e) => {
                eprintln!("rollbackd: journald is not reachable ({e}); logging text to stderr");
                return init(Format::Text);
            }
        },
        Format::Json => tracing_subscriber::registry()
            .with(filter())
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .with_timer(RfcMillis)
                    .with_writer(std::io::stderr),
            )
            .try_init(),
        Format::Text | Format::Auto => tracing_subscriber::registry()
            .with(filter())
            .with(
                tracing_subscriber::fmt::layer()
                    .with_writer(std::io::stderr)
                    // Colors only for a person at a terminal who did not
                    // set NO_COLOR: a file or the journal would keep the
                    // escape codes.
                    .with_ansi(color_allowed(std::io::IsTerminal::is_terminal(
                        &std::io::stderr(),
                    )))
                    .with_timer(RfcMillis)
                    .with_target(false),
            )
            .try_init(),
    };
    // Already initialised (tests calling twice): keep the first.
    let _ = result;
    format
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_color_set_to_anything_turns_colour_off_and_a_pipe_never_has_it() {
        assert!(color_allowed_with(true, None));
        assert!(color_allowed_with(true, Some("".into())), "empty = unset");
        assert!(!color_allowed_with(true, Some("1".into())));
        assert!(!color_allowed_with(true, Some("0".into())), "any value");
        assert!(!color_allowed_with(false, None));
    }
}
