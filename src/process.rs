//! Running an argv (never a shell) with a timeout: its own process group,
//! output captured up to a cap, and the whole group killed on timeout so a
//! child that ignores SIGTERM or forks helpers cannot outlive its budget.
//! Used by exec probes and by the rollback commands.
//!
//! The verdict is the exit status: output is read until the command exits
//! plus [`OUTPUT_GRACE`], then dropped, so a background child holding the
//! pipe open (`sleep 300 & exit 0`) cannot turn an exit 0 into a timeout.
//! When a run ends (or its future is dropped) every descendant goes: the
//! process group, and every process carrying the run's `ROLLBACKD_RUN`
//! environment mark (which `setsid` does not shed) with its own
//! descendants. The daemon is a child subreaper ([`become_subreaper`]), so
//! such orphans are re-parented to it and reaped here, and
//! [`kill_all_runs`] takes whatever is left when it stops.

use std::collections::{HashMap, HashSet};
use std::process::Stdio;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill, killpg};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::Command;

/// How much of stdout + stderr is kept.
pub const OUTPUT_CAP: usize = 4096;
/// How long output is still read after the command exited.
pub const OUTPUT_GRACE: Duration = Duration::from_millis(100);
/// The environment variable that marks every process of one run.
const MARK: &str = "ROLLBACKD_RUN";

static NEXT_RUN: AtomicU64 = AtomicU64::new(1);

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
    let mark = format!(
        "{}-{}",
        std::process::id(),
        NEXT_RUN.fetch_add(1, Ordering::Relaxed)
    );
    let mut cmd = Command::new(program);
    cmd.args(args)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .env(MARK, &mark)
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
    // the whole group and every marked descendant with it.
    let mut guard = RunGuard {
        pgid,
        root: child.id(),
        mark: Some(mark),
    };
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let (out_buf, err_buf) = (Mutex::new(Vec::new()), Mutex::new(Vec::new()));
    let collect = async {
        tokio::join!(read_capped(stdout, &out_buf), read_capped(stderr, &err_buf));
    };
    tokio::pin!(collect);
    let mut collected = false;
    let work = async {
        let status = loop {
            tokio::select! {
                _ = &mut collect, if !collected => collected = true,
                s = child.wait() => break s,
            }
        };
        // Exited: what is still in the pipes gets a short grace, no more
        // (a background child may hold them open for ever).
        if !collected {
            let _ = tokio::time::timeout(OUTPUT_GRACE, &mut collect).await;
        }
        status
    };
    let result = tokio::time::timeout(timeout, work).await;
    let elapsed = started.elapsed();
    let exit = match result {
        Ok(status) => match status {
            Ok(s) => match (s.code(), std::os::unix::process::ExitStatusExt::signal(&s)) {
                (Some(c), _) => Exit::Code(c),
                (None, Some(sig)) => Exit::Signal(sig),
                (None, None) => Exit::Code(-1),
            },
            Err(e) => Exit::SpawnFailed(e.to_string()),
        },
        Err(_) => {
            kill_group(pgid);
            // Reap it so no zombie is left; SIGKILL cannot be ignored.
            let _ = child.wait().await;
            // With the group dead its pipes close: what it printed before
            // the timeout is kept (bounded, in case something escaped the
            // group and holds a pipe open).
            let _ = tokio::time::timeout(OUTPUT_GRACE, &mut collect).await;
            Exit::TimedOut
        }
    };
    guard.finish().await;
    let mut output = take_buf(&out_buf);
    let err = take_buf(&err_buf);
    if !err.is_empty() {
        if !output.is_empty() {
            output.push('\n');
        }
        output.push_str(&err);
    }
    truncate(&mut output, OUTPUT_CAP);
    Finished {
        exit,
        output,
        elapsed,
    }
}

fn take_buf(buf: &Mutex<Vec<u8>>) -> String {
    let kept = std::mem::take(&mut *buf.lock().unwrap_or_else(|p| p.into_inner()));
    String::from_utf8_lossy(&kept).into_owned()
}

/// Kills a run's group and marked descendants when the run ends or its
/// future is dropped.
struct RunGuard {
    pgid: Option<Pid>,
    root: Option<u32>,
    mark: Option<String>,
}

impl RunGuard {
    /// The run is over: kill what is left of it, off the async workers
    /// (it reads /proc).
    async fn finish(&mut self) {
        kill_group(self.pgid);
        if let Some(mark) = self.mark.take() {
            let root = self.root;
            let _ = tokio::task::spawn_blocking(move || kill_marked(&mark, root)).await;
        }
    }
}

impl Drop for RunGuard {
    fn drop(&mut self) {
        kill_group(self.pgid);
        if let Some(mark) = self.mark.take() {
            // Dropped mid-run: no await here. Reading /proc never blocks on
            // another process, so this is short.
            kill_marked(&mark, self.root);
        }
    }
}

/// Make this process the reaper of its orphaned descendants, so a check's
/// `setsid` child that outlives its parent is re-parented here (where
/// [`kill_marked`] finds and reaps it) instead of to init.
pub fn become_subreaper() {
    if let Err(e) = nix::sys::prctl::set_child_subreaper(true) {
        tracing::warn!(
            "cannot become a child subreaper ({e}); escaped check children are still killed but reaped by init"
        );
    }
}

/// Raise the soft descriptor limit to the hard one (systemd's default soft
/// limit is 1024): the probes, webhooks and listener share it. Returns the
/// soft limit now in force.
pub fn raise_nofile_limit() -> Option<u64> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).ok()?;
    if soft < hard {
        if let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            tracing::warn!("cannot raise the descriptor limit from {soft} to {hard}: {e}");
            return Some(soft);
        }
        tracing::debug!("descriptor limit raised from {soft} to {hard}");
    }
    Some(hard)
}

/// When the daemon stops: kill every process any of its runs left behind.
pub fn kill_all_runs() -> usize {
    kill_marked(&format!("{}-", std::process::id()), None)
}

/// What `/proc/PID/stat` says of one process: the fields rollbackd reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProcStat {
    pub pid: i32,
    /// The state letter (`R`, `S`, `Z`, ...).
    pub state: char,
    pub ppid: i32,
    pub session: i32,
    /// Field 22: clock ticks after boot when the process started, which
    /// tells a reused pid from the process that had it before.
    pub start_time: u64,
}

impl ProcStat {
    /// Exited, with only its exit status left to be collected.
    pub fn zombie(&self) -> bool {
        self.state == 'Z'
    }
}

/// The one reader of `/proc/PID/stat`: `None` when the process is not
/// there (or hidden from this user, or the text does not parse).
pub fn proc_stat(pid: u32) -> Option<ProcStat> {
    let pid = i32::try_from(pid).ok()?;
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(pid, &text)
}

fn parse_stat(pid: i32, text: &str) -> Option<ProcStat> {
    // The command name (field 2) may hold spaces and parentheses: count
    // fields after its last closing parenthesis, which start at field 3.
    let (_, rest) = text.rsplit_once(')')?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some(ProcStat {
        pid,
        state: f.first()?.chars().next()?,
        ppid: f.get(1)?.parse().ok()?,
        session: f.get(3)?.parse().ok()?,
        start_time: f.get(19)?.parse().ok()?,
    })
}

/// Every process visible in `/proc`.
fn proc_table() -> Vec<ProcStat> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut procs = Vec::new();
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        if let Some(stat) = proc_stat(pid) {
            procs.push(stat);
        }
    }
    procs
}

/// SIGKILL every process whose environment carries `ROLLBACKD_RUN=<mark>`
/// (a prefix when `mark` ends in `-`), and their descendants; reap those
/// re-parented to this process (never `root`, the child tokio waits for).
/// Returns how many were killed.
fn kill_marked(mark: &str, root: Option<u32>) -> usize {
    let me = std::process::id() as i32;
    let needle = if mark.ends_with('-') {
        format!("{MARK}={mark}").into_bytes()
    } else {
        format!("{MARK}={mark}\0").into_bytes()
    };
    let procs = proc_table();
    let mut doomed: HashSet<i32> = HashSet::new();
    for p in &procs {
        let pid = p.pid;
        if pid == me || p.zombie() {
            continue;
        }
        if let Ok(env) = std::fs::read(format!("/proc/{pid}/environ")) {
            if env.windows(needle.len()).any(|w| w == needle.as_slice()) {
                doomed.insert(pid);
            }
        }
    }
    // Their descendants too, even those that cleared their environment.
    let mut children: HashMap<i32, Vec<i32>> = HashMap::new();
    for p in &procs {
        children.entry(p.ppid).or_default().push(p.pid);
    }
    let mut stack: Vec<i32> = doomed.iter().copied().collect();
    while let Some(pid) = stack.pop() {
        for &c in children.get(&pid).map(Vec::as_slice).unwrap_or(&[]) {
            if c != me && doomed.insert(c) {
                stack.push(c);
            }
        }
    }
    for &pid in &doomed {
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
    }
    let root = root.map(|r| r as i32);
    let ours: Vec<i32> = procs
        .iter()
        .filter(|p| p.ppid == me && doomed.contains(&p.pid) && Some(p.pid) != root)
        .map(|p| p.pid)
        .collect();
    reap(&ours);
    reap_orphans(&procs);
    doomed.len()
}

/// Wait for killed children of ours (bounded: SIGKILL takes milliseconds).
fn reap(pids: &[i32]) {
    let deadline = Instant::now() + Duration::from_secs(1);
    for &pid in pids {
        loop {
            match waitpid(Pid::from_raw(pid), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(5));
                }
                _ => break,
            }
        }
    }
}

/// Orphans re-parented to us that died on their own: zombies whose session
/// is not ours (they called `setsid`; nothing this process spawns itself
/// does, so none is a child tokio waits for).
fn reap_orphans(procs: &[ProcStat]) {
    let me = std::process::id() as i32;
    let Some(my_session) = procs.iter().find(|p| p.pid == me).map(|p| p.session) else {
        return;
    };
    for p in procs {
        if p.zombie() && p.ppid == me && p.session != my_session {
            let _ = waitpid(Pid::from_raw(p.pid), Some(WaitPidFlag::WNOHANG));
        }
    }
}

/// Whether a process group's leader still runs (a zombie does not count:
/// under a container init that does not reap, it lingers).
pub fn group_alive(pgid: u32) -> bool {
    proc_stat(pgid).is_some_and(|p| !p.zombie())
}

/// SIGKILL the whole group: grandchildren included. Errors mean the group
/// is already gone, which is what we wanted.
pub fn kill_group(pgid: Option<Pid>) {
    if let Some(pgid) = pgid {
        let _ = killpg(pgid, Signal::SIGKILL);
    }
}

async fn read_capped<R: AsyncRead + Unpin>(reader: Option<R>, kept: &Mutex<Vec<u8>>) {
    let Some(mut reader) = reader else {
        return;
    };
    let mut buf = [0u8; 4096];
    // Keep reading past the cap (and discard) so the child never blocks on a
    // full pipe.
    loop {
        match reader.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let mut kept = kept.lock().unwrap_or_else(|p| p.into_inner());
                let room = OUTPUT_CAP.saturating_sub(kept.len());
                kept.extend_from_slice(&buf[..n.min(room)]);
            }
        }
    }
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

    /// Alive and not a zombie (an orphan killed under a non-reaping init
    /// lingers as one).
    fn running(pid: &str) -> bool {
        group_alive(pid.trim().parse().unwrap())
    }

    fn gone_within(pid: &str, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while running(pid) {
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        true
    }

    /// A child left behind (in the group, or escaped with `setsid`) is
    /// gone once its check ends, whether the check exited or timed out;
    /// an exit 0 is reported promptly although the child holds stdout.
    #[tokio::test]
    async fn no_child_outlives_its_check() {
        for (script, timeout, exit, prompt) in [
            (
                "sleep 300 & echo $!; exit 0",
                Duration::from_secs(10),
                Exit::Code(0),
                true,
            ),
            (
                "setsid sleep 300 & echo $!; exit 0",
                Duration::from_secs(10),
                Exit::Code(0),
                true,
            ),
            (
                "setsid sleep 300 & echo $!; sleep 30",
                Duration::from_millis(500),
                Exit::TimedOut,
                false,
            ),
        ] {
            let f = run(&argv(&["/bin/sh", "-c", script]), &[], timeout).await;
            assert_eq!(f.exit, exit, "{script}: {f:?}");
            if prompt {
                assert!(
                    f.elapsed < Duration::from_secs(2),
                    "{script}: took {:?}",
                    f.elapsed
                );
            }
            assert!(
                gone_within(&f.output, Duration::from_secs(5)),
                "{script}: the child outlived its check: {}",
                f.output
            );
        }
    }

    #[test]
    fn proc_stat_reads_past_a_command_name_with_spaces_and_parentheses() {
        let line =
            "4242 (a (b) c) S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 50";
        assert_eq!(
            parse_stat(4242, line),
            Some(ProcStat {
                pid: 4242,
                state: 'S',
                ppid: 1,
                session: 4242,
                start_time: 987654,
            })
        );
        assert!(parse_stat(1, "1 (init) Z 0").is_none(), "too short");
        let me = proc_stat(std::process::id()).expect("this process is in /proc");
        assert!(!me.zombie() && me.start_time > 0, "{me:?}");
        assert!(
            group_alive(std::process::id()),
            "a running process counts as alive"
        );
    }

    #[tokio::test]
    async fn a_dropped_run_leaves_no_setsid_child() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("pid");
        let script = format!(
            "setsid sleep 300 & echo $! > {}; sleep 30",
            pidfile.display()
        );
        let args = argv(&["/bin/sh", "-c", &script]);
        let run_it = run(&args, &[], Duration::from_secs(60));
        // Drop the run mid-way, as a reload or shutdown does.
        let _ = tokio::time::timeout(Duration::from_millis(800), run_it).await;
        let pid = std::fs::read_to_string(&pidfile).unwrap();
        assert!(
            gone_within(&pid, Duration::from_secs(5)),
            "a dropped run left its setsid child"
        );
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
