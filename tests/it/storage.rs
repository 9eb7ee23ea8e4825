//! Storage faults (issue 11): a database another process holds locked, a
//! file system that fills, the database file deleted or replaced. The
//! daemon still decides and switches, keeps its rollback's record in
//! memory until the database takes writes again, reports the fault on
//! `/healthz` and `/metrics` while it lasts, and read-only commands still
//! read. Real faults only: a real second connection holding `BEGIN
//! IMMEDIATE`, a real tmpfs in a private mount namespace, real renames.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rollbackd::model::Color;
use sqlx::{Connection, SqliteConnection};

use crate::common::{self, Setup};

/// The listener's base URL.
async fn http_base(daemon: &common::Daemon) -> String {
    format!("http://{}", daemon.http_addr().await)
}

/// A GET with a generous timeout (a loaded CI machine runs many daemons at
/// once); a request that fails is status 0 with the error as the body, so
/// the callers' `wait_for` polls again instead of panicking on one miss.
async fn get(url: &str) -> (u16, String) {
    let resp = reqwest::Client::new()
        .get(url)
        .timeout(Duration::from_secs(10))
        .send()
        .await;
    match resp {
        Ok(resp) => {
            let code = resp.status().as_u16();
            (code, resp.text().await.unwrap_or_default())
        }
        Err(e) => (0, format!("GET {url}: {e}")),
    }
}

async fn metric(base: &str, name: &str) -> f64 {
    let (code, body) = get(&format!("{base}/metrics")).await;
    assert_eq!(code, 200);
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in:\n{body}"))
}

fn switches(dir: &Path) -> Vec<String> {
    common::read(&dir.join("switch.log"))
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Another process's connection holding the write lock until dropped.
async fn hold_write_lock(db: &Path) -> SqliteConnection {
    let mut other = SqliteConnection::connect(&format!("sqlite://{}", db.display()))
        .await
        .unwrap();
    sqlx::query("BEGIN IMMEDIATE")
        .execute(&mut other)
        .await
        .unwrap();
    other
}

/// The states of the one incident's timeline, after checking there is one.
async fn only_incident_timeline(db: &Path) -> (String, Vec<String>) {
    let store = rollbackd::store::Store::open(db).await.unwrap();
    let incidents = store.incidents().await.unwrap();
    assert_eq!(incidents.len(), 1, "{incidents:?}");
    let events = store.incident_events(incidents[0].id).await.unwrap();
    let states = events.into_iter().map(|e| e.state.to_string()).collect();
    (incidents[0].state.to_string(), states)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_lock_held_by_another_process_delays_no_rollback_and_no_read_command() {
    let (service, daemon) = Setup::new()
        .await
        .listen()
        .deploy("green", "v1")
        .deploy("blue", "v2")
        .start()
        .await;
    let (blue, dir, env) = (&service.blue, &service.dir, &service.env);
    let db = env.path("state").join("rollbackd.db");
    let base = http_base(&daemon).await;
    common::wait_for("/healthz ok", Duration::from_secs(20), || async {
        get(&format!("{base}/healthz")).await.0 == 200
    })
    .await;
    assert_eq!(metric(&base, "rollbackd_storage_ok").await, 1.0);

    let other = hold_write_lock(&db).await;
    // Commands that only read still read.
    for args in [
        &["status"][..],
        &["incidents"][..],
        &["samples", "--since", "1m"][..],
    ] {
        let started = Instant::now();
        env.cli_ok(args);
        assert!(
            started.elapsed() < Duration::from_secs(4),
            "{args:?} waited {:?} on the lock",
            started.elapsed()
        );
    }
    // The writer's next batch waits out its busy timeout, then the fault
    // is reported while it lasts.
    common::wait_for(
        "/healthz to report the locked database",
        Duration::from_secs(20),
        || async {
            let (code, body) = get(&format!("{base}/healthz")).await;
            code == 503
                && body.contains("database unwritable")
                && metric(&base, "rollbackd_storage_write_failures_total").await >= 1.0
        },
    )
    .await;
    assert_eq!(metric(&base, "rollbackd_storage_ok").await, 0.0);

    // A fault on the active color: the rollback does not wait for the lock.
    let fault = Instant::now();
    blue.set(503);
    common::wait_for(
        "the switch while the database is locked",
        Duration::from_secs(20),
        || async { !switches(dir.path()).is_empty() },
    )
    .await;
    let took = fault.elapsed();
    assert!(
        took < Duration::from_secs(15),
        "the switch came {took:?} after the fault"
    );
    common::wait_for(
        "the rollback to finish in memory",
        Duration::from_secs(20),
        || async { common::read(&daemon.log).contains("rollback completed") },
    )
    .await;
    assert!(
        common::read(&daemon.log).contains("kept in memory"),
        "{}",
        common::read(&daemon.log)
    );
    assert!(metric(&base, "rollbackd_storage_kept_records").await >= 1.0);

    // The lock goes: the record is written, the fault clears.
    drop(other);
    common::wait_for(
        "/healthz ok after the lock",
        Duration::from_secs(30),
        || async { get(&format!("{base}/healthz")).await.0 == 200 },
    )
    .await;
    assert_eq!(metric(&base, "rollbackd_storage_ok").await, 1.0);
    assert_eq!(metric(&base, "rollbackd_storage_kept_records").await, 0.0);
    let (state, timeline) = only_incident_timeline(&db).await;
    assert_eq!(state, "verified", "{timeline:?}");
    for step in [
        "requested",
        "target_verified",
        "switching",
        "switched",
        "verified",
    ] {
        assert!(timeline.iter().any(|s| s == step), "{step} in {timeline:?}");
    }
    let store = env.store().await;
    let latest = store.latest_deployment().await.unwrap().unwrap();
    assert_eq!(
        (latest.color, latest.source.as_str()),
        (Color::Green, "rollback")
    );
    assert_eq!(switches(dir.path()).len(), 1, "the switch ran once");
    let exit = daemon.stop().await;
    assert!(exit.success(), "{exit}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_or_replaced_database_file_is_reported_loudly() {
    let (service, daemon) = Setup::new()
        .await
        .listen()
        .deploy("blue", "v1")
        .start()
        .await;
    let env = &service.env;
    let db = env.path("state").join("rollbackd.db");
    let base = http_base(&daemon).await;
    common::wait_for("/healthz ok", Duration::from_secs(20), || async {
        get(&format!("{base}/healthz")).await.0 == 200
    })
    .await;

    // Replaced: another file now stands at the path.
    let aside = env.path("state").join("moved.db");
    std::fs::rename(&db, &aside).unwrap();
    std::fs::copy(&aside, &db).unwrap();
    common::wait_for(
        "/healthz to report the replaced file",
        Duration::from_secs(20),
        || async {
            let (code, body) = get(&format!("{base}/healthz")).await;
            code == 503 && body.contains("was replaced")
        },
    )
    .await;
    assert_eq!(metric(&base, "rollbackd_storage_ok").await, 0.0);
    common::wait_for("an error in the log", Duration::from_secs(20), || async {
        common::read(&daemon.log)
            .lines()
            .any(|l| l.contains("ERROR") && l.contains("was replaced"))
    })
    .await;

    // Deleted: nothing at the path.
    std::fs::remove_file(&db).unwrap();
    common::wait_for(
        "/healthz to report the deleted file",
        Duration::from_secs(20),
        || async {
            let (code, body) = get(&format!("{base}/healthz")).await;
            code == 503 && body.contains("was deleted")
        },
    )
    .await;
    common::wait_for("an error in the log", Duration::from_secs(20), || async {
        common::read(&daemon.log)
            .lines()
            .any(|l| l.contains("ERROR") && l.contains("was deleted"))
    })
    .await;

    // The file it opened is back at the path: the fault clears.
    std::fs::rename(&aside, &db).unwrap();
    common::wait_for(
        "/healthz ok with the file back",
        Duration::from_secs(20),
        || async { get(&format!("{base}/healthz")).await.0 == 200 },
    )
    .await;
    assert_eq!(metric(&base, "rollbackd_storage_ok").await, 1.0);
    drop(daemon);
}

/// Run Python's sqlite3 (`c`, a connection to `db`) in the mount namespace
/// of process `pid`: its output, or why it failed.
fn in_namespace(pid: u32, db: &Path, code: &str) -> Result<String, String> {
    let out = Command::new("nsenter")
        .args(["-t", &pid.to_string(), "-m", "--", "/usr/bin/python3", "-c"])
        .arg(format!(
            "import sqlite3, sys\nc = sqlite3.connect(sys.argv[1], timeout=2, isolation_level=None)\n{code}"
        ))
        .arg(db)
        .output()
        .unwrap();
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// Fill the file system holding `dir` until it refuses another byte.
fn fill(dir: &Path) -> std::path::PathBuf {
    use std::io::Write;
    let filler = dir.join("filler");
    let mut f = std::fs::File::create(&filler).unwrap();
    let chunk = vec![0u8; 64 * 1024];
    for _ in 0..100_000 {
        if f.write_all(&chunk).and_then(|()| f.flush()).is_err() {
            break;
        }
    }
    // Fill the last partial chunk too, a byte at a time (bounded).
    for _ in 0..(64 * 1024) {
        if f.write_all(&[0]).is_err() {
            break;
        }
    }
    filler
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_neither_wedges_the_database_nor_stops_a_rollback() {
    // A small tmpfs over state_dir, in the daemon's own mount namespace.
    if !common::have_tool("unshare", "util-linux")
        || !common::have_tool("nsenter", "util-linux")
        || !common::have_tool("mount", "mount")
        || !common::have_tool("/usr/bin/python3", "python3")
    {
        return;
    }
    let probe = Command::new("unshare")
        .args(["-m", "sh", "-c", "mount -t tmpfs -o size=1m tmpfs /mnt"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !probe {
        eprintln!("skipped: a tmpfs cannot be mounted in a private mount namespace here");
        return;
    }
    let service = Setup::new()
        .await
        .listen()
        .deploy("green", "v1")
        .deploy("blue", "v2")
        .configure();
    let (blue, dir, env) = (&service.blue, &service.dir, &service.env);
    // The database made above is the seed copied onto the tmpfs.
    let state = env.path("state");
    let seed = env.path("seed");
    std::fs::rename(&state, &seed).unwrap();
    std::fs::create_dir(&state).unwrap();
    // The daemon (killed, and its mount namespace with it, when the test
    // ends) runs with the tmpfs mounted over state_dir.
    let (state_arg, seed_arg) = (state.display().to_string(), seed.display().to_string());
    let daemon = env.daemon_under(&[
        "unshare",
        "-m",
        "sh",
        "-c",
        "mount -t tmpfs -o size=16m tmpfs \"$1\" && cp -a \"$2\"/. \"$1\"/ && shift 2 && exec \"$@\"",
        "sh",
        &state_arg,
        &seed_arg,
    ]);
    let (pid, log) = (daemon.pid() as u32, daemon.log.clone());
    let base = http_base(&daemon).await;
    // The state directory as the daemon sees it.
    let inside = Path::new("/proc")
        .join(pid.to_string())
        .join("root")
        .join(state.strip_prefix("/").unwrap());
    common::wait_for("/healthz ok", Duration::from_secs(20), || async {
        get(&format!("{base}/healthz")).await.0 == 200
    })
    .await;

    // The disk fills: commits fail, and it says so.
    let filler = fill(&inside);
    common::wait_for(
        "/healthz to report the full disk",
        Duration::from_secs(20),
        || async {
            let (code, body) = get(&format!("{base}/healthz")).await;
            code == 503 && body.contains("database unwritable")
        },
    )
    .await;
    assert_eq!(metric(&base, "rollbackd_storage_ok").await, 0.0);

    // A fault while it is full: still decides and switches.
    let fault = Instant::now();
    blue.set(503);
    common::wait_for(
        "the switch on a full disk",
        Duration::from_secs(20),
        || async { !switches(dir.path()).is_empty() },
    )
    .await;
    assert!(
        fault.elapsed() < Duration::from_secs(15),
        "{:?}",
        fault.elapsed()
    );
    common::wait_for(
        "the rollback to finish in memory",
        Duration::from_secs(20),
        || async { common::read(&log).contains("rollback completed") },
    )
    .await;

    // Space returns: no lock is left held, the fault clears, the record
    // and new samples are really in the file.
    std::fs::remove_file(&filler).unwrap();
    common::wait_for(
        "/healthz ok after the disk has room",
        Duration::from_secs(30),
        || async { get(&format!("{base}/healthz")).await.0 == 200 },
    )
    .await;
    assert_eq!(metric(&base, "rollbackd_storage_ok").await, 1.0);
    assert_eq!(metric(&base, "rollbackd_storage_kept_records").await, 0.0);
    // From inside the daemon's mount namespace (SQLite resolves the
    // /proc/PID/root link, so it cannot be opened from out here).
    let db = state.join("rollbackd.db");
    let mut locked = String::new();
    for _ in 0..5 {
        match in_namespace(
            pid,
            &db,
            "c.execute('BEGIN IMMEDIATE'); c.execute('ROLLBACK'); print('free')",
        ) {
            Ok(_) => {
                locked.clear();
                break;
            }
            Err(e) => locked = e,
        }
    }
    assert!(
        locked.is_empty(),
        "the daemon still holds the write lock: {locked}\n{}",
        common::read(&log)
    );
    let count = || {
        in_namespace(
            pid,
            &db,
            "print(c.execute('SELECT COUNT(*) FROM samples').fetchone()[0])",
        )
        .unwrap()
        .parse::<i64>()
        .unwrap()
    };
    let before = count();
    common::wait_for(
        "new samples committed to the file",
        Duration::from_secs(20),
        || async { count() >= before + 10 },
    )
    .await;
    let incidents = in_namespace(
        pid,
        &db,
        "print([(r[1], [e[0] for e in c.execute('SELECT state FROM incident_events WHERE incident_id = ? ORDER BY at_ms, id', (r[0],))]) \
         for r in c.execute('SELECT id, state FROM incidents').fetchall()])",
    )
    .unwrap();
    assert!(
        incidents.starts_with("[('verified', [")
            && !incidents.contains("]), (")
            && incidents.contains("'requested'")
            && incidents.contains("'switching'"),
        "one verified incident with its timeline: {incidents}"
    );
    assert_eq!(switches(dir.path()).len(), 1, "the switch ran once");
    drop(daemon);
}
