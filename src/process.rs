//! Running an argv (never a shell) with a timeout: its own process group,
//! output captured up to a cap, and the whole group killed on timeout so a
//! child that ignores SIGTERM or forks helpers cannot outlive its budget.
//! Used by exec probes and by the rollback commands.

use std::process::Stdio;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::Command;

/// How much of stdout + stderr is kept.
pub const OUTPUT_CAP: usize = 4096;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exit {
    Code(i32),
    Signal(i32),
    TimedOut,
    /// It could not be started (no such file, permission denied).
    SpawnFailed(String),
}

#[derive(Debug, Clone)]
pub struct Finished {
    pub exit: Exit,
    pub output: String,
    pub elapsed: Duration,
}

impl Finished {
    pub fn success(&self) -> bool {
        self.exit == Exit::Code(0)
    }

    /// One line for a sample detail or an incident event.
    pub fn describe(&self) -> String {
        let what = match &self.exit {
            Exit::Code(c) => format!("exit {c}"),
            Exit::Signal(s) => format!("killed by signal {s}"),
            Exit::TimedOut => format!(
                "timed out after {}",
                humantime::format_duration(Duration::from_millis(self.elapsed.as_millis() as u64))
            ),
            Exit::SpawnFailed(e) => format!("could not start: {e}"),
        };
        let out = self.output.trim();
        if out.is_empty() {
            what
        } else {
            format!("{what}: {out}")
        }
    }
}

/// Run `argv` with extra environment, killing its process group at `timeout`.
pub async fn run(argv: &[String], env: &[(&str, String)], timeout: Duration) -> Finished {
    run_reporting(argv, env, timeout, None).await
}

/// [`run`], telling `started` the process group id as soon as the command
/// runs (the rollback records it, so a restart can find a command that
/// outlived the daemon).
pub async fn run_reporting(
    argv: &[String],
    env: &[(&str, String)],
    timeout: Duration,
    started_tx: Option<tokio::sync::oneshot::Sender<u32>>,
) -> Finished {
    let started = Instant::now();
    let Some((program, args)) = argv.split_first() else {
        return Finished {
            exit: Exit::SpawnFailed("empty command".into()),
            output: String::new(),
            elapsed: Duration::ZERO,
        };
    };
    let mut cmd = Command::new(program);
    cmd.args(args)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            return Finished {
                exit: Exit::SpawnFailed(format!("{program}: {e}")),
                output: String::new(),
                elapsed: started.elapsed(),
            };
        }
    };
    let pgid = child.id().map(|id| Pid::from_raw(id as i32));
    if let (Some(tx), Some(id)) = (started_tx, child.id()) {
        let _ = tx.send(id);
    }
    // If this future is dropped mid-run (a probe stopped by a reload or
    // shutdown), `kill_on_drop` would kill only the child: the guard takes
    // the whole group with it.
    let _group = GroupGuard(pgid);
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let collect = async {
        let (a, b) = tokio::join!(read_capped(stdout), read_capped(stderr));
        let mut out = a;
        if !b.is_empty() {
            if !out.is_empty() {
                out.push('\n');
            }
            out.push_str(&b);
        }
        truncate(&mut out, OUTPUT_CAP);
        out
    };
    tokio::pin!(collect);
    let work = async { tokio::join!(child.wait(), &mut collect) };
    match tokio::time::timeout(timeout, work).await {
        Ok((status, output)) => {
            let exit = match status {
                Ok(s) => match (s.code(), std::os::unix::process::ExitStatusExt::signal(&s)) {
                    (Some(c), _) => Exit::Code(c),
                    (None, Some(sig)) => Exit::Signal(sig),
                    (None, None) => Exit::Code(-1),
                },
                Err(e) => Exit::SpawnFailed(e.to_string()),
            };
            kill_group(pgid);
            Finished {
                exit,
                output,
                elapsed: started.elapsed(),
            }
        }
        Err(_) => {
            kill_group(pgid);
            let elapsed = started.elapsed();
            // Reap it so no zombie is left; SIGKILL cannot be ignored.
            let _ = child.wait().await;
            // With the group dead its pipes close: what it printed before
            // the timeout is kept (bounded, in case something escaped the
            // group and holds a pipe open).
            let output = tokio::time::timeout(Duration::from_millis(500), &mut collect)
                .await
                .unwrap_or_default();
            Finished {
                exit: Exit::TimedOut,
                output,
                elapsed,
            }
        }
    }
}

struct GroupGuard(Option<Pid>);

impl Drop for GroupGuard {
    fn drop(&mut self) {
        kill_group(self.0);
    }
}

/// Whether a process group's leader still runs (a zombie does not count:
/// under a container init that does not reap, it lingers).
pub fn group_alive(pgid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pgid}/stat")) {
        Err(_) => false,
        Ok(stat) => !stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
    }
}

/// SIGKILL the whole group: grandchildren included. Errors mean the group
/// is already gone, which is what we wanted.
fn kill_group(pgid: Option<Pid>) {
    if let Some(pgid) = pgid {
        let _ = killpg(pgid, Signal::SIGKILL);
    }
}

async fn read_capped<R: AsyncRead + Unpin>(reader: Option<R>) -> String {
    let Some(mut reader) = reader else {
        return String::new();
    };
    let mut kept = Vec::new();
    let mut buf = [0u8; 4096];
    // Keep reading past the cap (and discard) so the child never blocks on a
    // full pipe.
    loop {
        match reader.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let room = OUTPUT_CAP.saturating_sub(kept.len());
                kept.extend_from_slice(&buf[..n.min(room)]);
            }
        }
    }
    String::from_utf8_lossy(&kept).into_owned()
}

fn truncate(s: &mut String, max: usize) {
    if s.len() > max {
        let mut cut = max;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[tokio::test]
    async fn captures_exit_code_output_and_env() {
        let f = run(
            &argv(&["/bin/sh", "-c", "echo out $X; echo err >&2; exit 3"]),
            &[("X", "x1".into())],
            Duration::from_secs(5),
        )
        .await;
        assert_eq!(f.exit, Exit::Code(3));
        assert!(
            f.output.contains("out x1") && f.output.contains("err"),
            "{}",
            f.output
        );
    }

    #[tokio::test]
    async fn timeout_kills_a_child_that_ignores_sigterm_and_its_group() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("grandchild-alive");
        // The grandchild would write the marker after 2 s if it survived.
        let script = format!(
            "trap '' TERM; (sleep 2; touch {}) & sleep 30",
            marker.display()
        );
        let f = run(
            &argv(&["/bin/sh", "-c", &script]),
            &[],
            Duration::from_millis(300),
        )
        .await;
        assert_eq!(f.exit, Exit::TimedOut);
        assert!(f.elapsed < Duration::from_secs(2), "took {:?}", f.elapsed);
        tokio::time::sleep(Duration::from_millis(2500)).await; // proving an absence needs the time to pass
        assert!(!marker.exists(), "grandchild outlived the timeout");
    }

    #[tokio::test]
    async fn missing_program_is_reported_not_a_panic() {
        let f = run(
            &argv(&["/nonexistent/rollbackd-check"]),
            &[],
            Duration::from_secs(1),
        )
        .await;
        assert!(matches!(f.exit, Exit::SpawnFailed(_)));
        assert!(f.describe().contains("could not start"));
    }

    #[tokio::test]
    async fn output_is_capped() {
        let f = run(
            &argv(&["/bin/sh", "-c", "head -c 1000000 /dev/zero | tr '\\0' a"]),
            &[],
            Duration::from_secs(5),
        )
        .await;
        assert!(f.success());
        assert_eq!(f.output.len(), OUTPUT_CAP);
    }
}
