//! `unit`: each color's systemd unit and its cgroup (v2). Failed when the
//! unit is not active, restarted or was OOM-killed since the previous run,
//! or uses more memory than `memory_max`; the detail says which, with the
//! numbers (state, restarts, memory current/max, OOM kills, CPU time).
//!
//! With `unit = NAME` the state, restart count and cgroup come from
//! `systemctl show`; with `cgroup = PATH` only the cgroup is read (no
//! systemd needed): "not active" is then an empty cgroup (`cgroup.events`
//! `populated 0`) or a missing one. The first run of a (probe, color) has
//! nothing to compare restarts and OOM kills with: it judges state and
//! memory only. It owns that memory ([`Memory`]); it reads, never writes.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::Outcome;
use crate::config::{MemoryLimit, UnitCheck, render};
use crate::model::Color;

/// Found on `PATH`, as systemd installs it.
const SYSTEMCTL: &str = "systemctl";
/// Where the cgroup v2 hierarchy is mounted: `/sys/fs/cgroup`, or
/// `/sys/fs/cgroup/unified` on a hybrid host.
const CGROUP_ROOTS: [&str; 2] = ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"];

/// The counters seen at the previous run of each (probe, color).
#[derive(Default)]
pub struct Memory {
    seen: HashMap<(String, Option<Color>), Counters>,
}

impl Memory {
    pub fn retain_probes(&mut self, keep: &dyn Fn(&str) -> bool) {
        self.seen.retain(|(probe, _), _| keep(probe));
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq)]
struct Counters {
    restarts: Option<u64>,
    oom_kills: Option<u64>,
}

/// What one look at a unit and its cgroup found.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Reading {
    /// `ActiveState`/`SubState`, or from the cgroup: "running" / "empty".
    pub state: String,
    pub active: bool,
    pub restarts: Option<u64>,
    pub memory_current: Option<u64>,
    /// `None` when unlimited (`max`) or unknown.
    pub memory_max: Option<u64>,
    pub oom_kills: Option<u64>,
    pub cpu_usec: Option<u64>,
}

pub async fn run(
    memory: &Mutex<Memory>,
    probe: &str,
    check: &UnitCheck,
    color: Option<Color>,
) -> Outcome {
    let vars = [("color", color.map(Color::as_str).unwrap_or(""))];
    let reading = match (&check.unit, &check.cgroup) {
        (Some(unit), _) => read_unit(SYSTEMCTL, &CGROUP_ROOTS, &render(unit, &vars)).await,
        (None, Some(cgroup)) => {
            let path = PathBuf::from(render(cgroup, &vars));
            tokio::task::spawn_blocking(move || Ok(read_cgroup(&path)))
                .await
                .unwrap_or_else(|e| Err(format!("cgroup reader failed: {e}")))
        }
        (None, None) => Err("kind = \"unit\" needs `unit` or `cgroup`".into()),
    };
    let reading = match reading {
        Ok(r) => r,
        // systemctl missing or refusing: it says nothing about the service.
        Err(why) => return Outcome::no_data(why),
    };
    let key = (probe.to_owned(), color);
    let previous = {
        let mut m = memory.lock().unwrap_or_else(|p| p.into_inner());
        m.seen.insert(
            key,
            Counters {
                restarts: reading.restarts,
                oom_kills: reading.oom_kills,
            },
        )
    };
    judge(&reading, previous.unwrap_or_default(), check.memory_max)
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

/// The verdict on one reading, given the counters of the previous run.
fn judge(r: &Reading, before: Counters, limit: Option<MemoryLimit>) -> Outcome {
    let mut problems = Vec::new();
    if !r.active {
        problems.push(format!("not active ({})", r.state));
    }
    if let (Some(now), Some(then)) = (r.restarts, before.restarts) {
        if now > then {
            problems.push(format!(
                "restarted {}x since the previous run (NRestarts {then} -> {now})",
                now - then
            ));
        }
    }
    if let (Some(now), Some(then)) = (r.oom_kills, before.oom_kills) {
        if now > then {
            problems.push(format!(
                "OOM-killed {}x since the previous run (oom_kill {then} -> {now})",
                now - then
            ));
        }
    }
    let mut notes = Vec::new();
    if let Some(current) = r.memory_current {
        let over = match (limit, r.memory_max) {
            (Some(MemoryLimit::Bytes(b)), _) => Some((b, format!("memory_max {}", mib(b)))),
            (Some(MemoryLimit::Percent(p)), Some(max)) => Some((
                (max as f64 * p / 100.0) as u64,
                format!("memory_max {p}% of MemoryMax {}", mib(max)),
            )),
            (Some(MemoryLimit::Percent(_)), None) => {
                notes.push("memory_max is a % but the unit has no MemoryMax".to_owned());
                None
            }
            (None, _) => None,
        };
        match over {
            Some((threshold, what)) if current > threshold => {
                problems.push(format!("memory {} above {what}", mib(current)));
            }
            _ => {}
        }
    }
    let mut facts = vec![r.state.clone()];
    if let Some(n) = r.restarts {
        facts.push(format!("{n} restarts"));
    }
    match (r.memory_current, r.memory_max) {
        (Some(c), Some(m)) => facts.push(format!(
            "memory {} of {} ({:.0}%)",
            mib(c),
            mib(m),
            c as f64 * 100.0 / m.max(1) as f64
        )),
        (Some(c), None) => facts.push(format!("memory {} (no limit)", mib(c))),
        _ => {}
    }
    if let Some(n) = r.oom_kills {
        facts.push(format!("{n} OOM kills"));
    }
    if let Some(us) = r.cpu_usec {
        facts.push(format!("cpu {:.1} s", us as f64 / 1e6));
    }
    facts.extend(notes);
    let facts = facts.join(", ");
    if problems.is_empty() {
        Outcome::ok_without_latency(facts)
    } else {
        Outcome::failed(None, format!("{}: {facts}", problems.join("; ")))
    }
}

/// `systemctl show` for the unit, then its cgroup under the first root
/// that has it.
pub async fn read_unit(systemctl: &str, roots: &[&str], unit: &str) -> Result<Reading, String> {
    let output = tokio::process::Command::new(systemctl)
        .args([
            "show",
            "--property=ActiveState,SubState,NRestarts,ControlGroup",
            "--",
            unit,
        ])
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|e| format!("cannot run systemctl: {e}"))?;
    if !output.status.success() {
        return Err(format!("systemctl show {unit} failed ({})", output.status));
    }
    let text = String::from_utf8_lossy(&output.stdout);
    let props: HashMap<&str, &str> = text.lines().filter_map(|l| l.split_once('=')).collect();
    let active_state = props.get("ActiveState").copied().unwrap_or("unknown");
    let sub = props.get("SubState").copied().unwrap_or("");
    let mut reading = Reading {
        state: format!("{active_state}/{sub}"),
        active: active_state == "active",
        restarts: props.get("NRestarts").and_then(|v| v.trim().parse().ok()),
        ..Reading::default()
    };
    if let Some(cg) = props.get("ControlGroup").filter(|c| !c.is_empty()) {
        let roots: Vec<PathBuf> = roots
            .iter()
            .map(|r| Path::new(r).join(cg.trim_start_matches('/')))
            .collect();
        let found = tokio::task::spawn_blocking(move || {
            roots
                .into_iter()
                .find(|p| p.join("memory.current").exists() || p.join("cgroup.procs").exists())
                .map(|p| read_cgroup(&p))
        })
        .await
        .ok()
        .flatten();
        if let Some(cg) = found {
            reading.memory_current = cg.memory_current;
            reading.memory_max = cg.memory_max;
            reading.oom_kills = cg.oom_kills;
            reading.cpu_usec = cg.cpu_usec;
        }
    }
    Ok(reading)
}

/// Read a cgroup v2 directory. A missing directory is a unit that is not
/// running; a missing file is a number not known.
pub fn read_cgroup(path: &Path) -> Reading {
    let read = |name: &str| std::fs::read_to_string(path.join(name)).ok();
    let keyed = |text: &str, key: &str| -> Option<u64> {
        text.lines().find_map(|l| {
            let (k, v) = l.split_once(' ')?;
            (k == key).then(|| v.trim().parse().ok()).flatten()
        })
    };
    if !path.is_dir() {
        return Reading {
            state: format!("no cgroup at {}", path.display()),
            ..Reading::default()
        };
    }
    let populated = match read("cgroup.events") {
        Some(t) => keyed(&t, "populated").map(|p| p > 0),
        None => read("cgroup.procs").map(|t| !t.trim().is_empty()),
    };
    let active = populated.unwrap_or(true);
    Reading {
        state: if active {
            "running"
        } else {
            "empty (no process)"
        }
        .to_owned(),
        active,
        restarts: None,
        memory_current: read("memory.current").and_then(|t| t.trim().parse().ok()),
        memory_max: read("memory.max").and_then(|t| t.trim().parse().ok()),
        oom_kills: read("memory.events").and_then(|t| keyed(&t, "oom_kill")),
        cpu_usec: read("cpu.stat").and_then(|t| keyed(&t, "usage_usec")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::SampleStatus;

    fn shaped(dir: &Path, current: u64, max: &str, oom: u64, populated: u8) {
        std::fs::write(dir.join("memory.current"), format!("{current}\n")).unwrap();
        std::fs::write(dir.join("memory.max"), format!("{max}\n")).unwrap();
        std::fs::write(
            dir.join("memory.events"),
            format!("low 0\nhigh 0\nmax 3\noom 1\noom_kill {oom}\noom_group_kill 0\n"),
        )
        .unwrap();
        std::fs::write(
            dir.join("cpu.stat"),
            "usage_usec 1500000\nuser_usec 1000000\n",
        )
        .unwrap();
        std::fs::write(
            dir.join("cgroup.events"),
            format!("populated {populated}\nfrozen 0\n"),
        )
        .unwrap();
    }

    #[tokio::test]
    async fn cgroup_shaped_directory_judges_memory_oom_and_emptiness() {
        let dir = tempfile::tempdir().unwrap();
        let blue = dir.path().join("beluga@blue.service");
        std::fs::create_dir(&blue).unwrap();
        shaped(&blue, 100 << 20, &(200u64 << 20).to_string(), 0, 1);
        let check = UnitCheck {
            unit: None,
            cgroup: Some(
                dir.path()
                    .join("beluga@{color}.service")
                    .display()
                    .to_string(),
            ),
            memory_max: Some(MemoryLimit::Percent(90.0)),
        };
        let memory = Mutex::new(Memory::default());
        let o = run(&memory, "resources", &check, Some(Color::Blue)).await;
        assert!(o.is_ok(), "{o:?}");
        assert!(
            o.detail.contains("memory 100.0 MiB of 200.0 MiB (50%)"),
            "{}",
            o.detail
        );
        assert!(o.detail.contains("cpu 1.5 s"), "{}", o.detail);

        shaped(&blue, 190 << 20, &(200u64 << 20).to_string(), 0, 1);
        let o = run(&memory, "resources", &check, Some(Color::Blue)).await;
        assert_eq!(o.status, SampleStatus::Failed);
        assert!(
            o.detail
                .contains("memory 190.0 MiB above memory_max 90% of MemoryMax 200.0 MiB"),
            "{}",
            o.detail
        );

        shaped(&blue, 10 << 20, "max", 1, 1);
        let o = run(&memory, "resources", &check, Some(Color::Blue)).await;
        assert_eq!(o.status, SampleStatus::Failed);
        assert!(
            o.detail
                .contains("OOM-killed 1x since the previous run (oom_kill 0 -> 1)"),
            "{}",
            o.detail
        );
        assert!(o.detail.contains("no MemoryMax"), "{}", o.detail);
        let o = run(&memory, "resources", &check, Some(Color::Blue)).await;
        assert!(o.is_ok(), "the same OOM kill counts once: {o:?}");

        shaped(&blue, 0, "max", 1, 0);
        let o = run(&memory, "resources", &check, Some(Color::Blue)).await;
        assert_eq!(o.status, SampleStatus::Failed);
        assert!(
            o.detail.contains("not active (empty (no process))"),
            "{}",
            o.detail
        );

        let o = run(&memory, "resources", &check, Some(Color::Green)).await;
        assert_eq!(o.status, SampleStatus::Failed, "no cgroup at all: {o:?}");
        assert!(o.detail.contains("no cgroup at"), "{}", o.detail);
    }

    #[tokio::test]
    async fn systemd_unit_state_restarts_and_its_cgroup() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        std::fs::write(&state, "ActiveState=active\nSubState=running\nNRestarts=2\nControlGroup=/system.slice/beluga@blue.service\n").unwrap();
        let fake = dir.path().join("systemctl");
        std::fs::write(
            &fake,
            format!(
                "#!/bin/sh\n[ \"$1\" = show ] || exit 9\ncat {}\n",
                state.display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
        let root = dir.path().join("cgroup");
        let cg = root.join("system.slice/beluga@blue.service");
        std::fs::create_dir_all(&cg).unwrap();
        shaped(&cg, 1 << 20, "max", 0, 1);
        let roots = [root.to_str().unwrap()];
        let r = read_unit(fake.to_str().unwrap(), &roots, "beluga@blue.service")
            .await
            .unwrap();
        assert_eq!(
            (r.active, r.restarts, r.memory_current, r.oom_kills),
            (true, Some(2), Some(1 << 20), Some(0))
        );
        let o = judge(
            &r,
            Counters {
                restarts: Some(1),
                oom_kills: Some(0),
            },
            Some(MemoryLimit::Bytes(512 << 20)),
        );
        assert_eq!(o.status, SampleStatus::Failed);
        assert!(
            o.detail
                .contains("restarted 1x since the previous run (NRestarts 1 -> 2)"),
            "{}",
            o.detail
        );
        std::fs::write(
            &state,
            "ActiveState=failed\nSubState=failed\nNRestarts=2\nControlGroup=\n",
        )
        .unwrap();
        let r = read_unit(fake.to_str().unwrap(), &roots, "beluga@blue.service")
            .await
            .unwrap();
        let o = judge(
            &r,
            Counters {
                restarts: Some(2),
                oom_kills: None,
            },
            None,
        );
        assert!(
            o.detail.starts_with("not active (failed/failed)"),
            "{}",
            o.detail
        );
    }
}
