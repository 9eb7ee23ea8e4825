//! Secret references: `env:NAME` and `file:/path` stand for values that must
//! never be written in the config file, and never appear in logs, `status`,
//! reports or `Debug` output.
//!
//! A [`Secret`] owns the resolved value. Its `Debug` and `Display` print only
//! where the value came from; the one way to read the value is
//! [`Secret::expose`], which call sites use at the moment they put it on the
//! wire (an HTTP header, a webhook URL).

use std::fmt;

/// Where a secret value came from; safe to print.
#[derive(Clone, PartialEq, Eq)]
pub enum Source {
    Env(String),
    File(String),
    /// Written in the file itself: allowed for values that are not secret
    /// (an `Accept` header), still redacted in output to be safe.
    Inline,
}

/// A resolved (or unresolvable) secret. A reference that cannot be read
/// here is not a config error: `check` may run without the daemon's
/// environment or credentials. It is a warning at load time and a failed
/// sample (or failed notification) at use time.
#[derive(Clone)]
pub struct Secret {
    source: Source,
    value: Result<String, String>,
}

impl Secret {
    /// Resolve a reference as written in the config: `env:NAME`,
    /// `file:/path` (trailing newline trimmed, as systemd credentials and
    /// `echo` leave one) or a literal value. Errs only on a malformed
    /// reference; an unreadable one is kept with [`Secret::problem`].
    pub fn resolve(raw: &str) -> Result<Secret, String> {
        if let Some(name) = raw.strip_prefix("env:") {
            if name.is_empty() {
                return Err("`env:` needs a variable name, like \"env:SLACK_WEBHOOK_URL\"".into());
            }
            let value = std::env::var(name).map_err(|_| {
                format!("environment variable {name} is not set (from \"env:{name}\")")
            });
            return Ok(Secret {
                source: Source::Env(name.to_owned()),
                value,
            });
        }
        if let Some(path) = raw.strip_prefix("file:") {
            if path.is_empty() {
                return Err(
                    "`file:` needs a path, like \"file:/run/credentials/rollbackd.service/token\""
                        .into(),
                );
            }
            // Only a regular file, bounded: a FIFO or device here must not
            // hang the config loader.
            let value = crate::hostfile::read_capped(std::path::Path::new(path), 64 * 1024)
                .map(|v| v.trim_end_matches(['\n', '\r']).to_owned())
                .map_err(|e| format!("cannot read secret file {path}: {e}"));
            return Ok(Secret {
                source: Source::File(path.to_owned()),
                value,
            });
        }
        Ok(Secret {
            source: Source::Inline,
            value: Ok(raw.to_owned()),
        })
    }

    /// The value itself. Call only where it leaves the process to the
    /// system it is meant for. `Err` says why it is not available (with the
    /// reference, never a value).
    pub fn expose(&self) -> Result<&str, &str> {
        self.value.as_deref().map_err(String::as_str)
    }

    /// Why the value could not be read, if it could not.
    pub fn problem(&self) -> Option<&str> {
        self.value.as_ref().err().map(String::as_str)
    }

    pub fn source(&self) -> &Source {
        &self.source
    }
}

impl PartialEq for Secret {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source && self.value == other.value
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.source {
            Source::Env(name) => write!(f, "env:{name}"),
            Source::File(path) => write!(f, "file:{path}"),
            Source::Inline => f.write_str("<redacted>"),
        }
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_and_display_never_show_the_value() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "hunter2-file\n").unwrap();
        let from_file = Secret::resolve(&format!("file:{}", path.display())).unwrap();
        assert_eq!(from_file.expose(), Ok("hunter2-file"));
        let inline = Secret::resolve("hunter2-inline").unwrap();
        for s in [&from_file, &inline] {
            let shown = format!("{s:?} {s} {s:#?}");
            assert!(!shown.contains("hunter2"), "{shown}");
        }
    }

    #[test]
    fn missing_env_and_file_are_problems_not_errors() {
        let s = Secret::resolve("env:ROLLBACKD_TEST_SURELY_UNSET_VAR").unwrap();
        assert!(
            s.problem()
                .unwrap()
                .contains("ROLLBACKD_TEST_SURELY_UNSET_VAR is not set")
        );
        let s = Secret::resolve("file:/nonexistent/rollbackd/secret").unwrap();
        assert!(
            s.expose()
                .unwrap_err()
                .contains("/nonexistent/rollbackd/secret")
        );
        assert!(Secret::resolve("env:").is_err());
    }
}
