//! A fleet sharing one PostgreSQL (SPEC section 7, issue 14): real daemons
//! against a throwaway cluster (`pg.rs`): one switcher per service, the
//! takeover when the leader is killed (with and without a rollback in
//! flight), and the database lost and back with nothing lost.

use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use crate::common::{self, Color, Daemon, Env, wait_for};
use crate::pg::Cluster;

/// The migrations run on open, and rerunning them (a second host starting)
/// changes nothing.
#[tokio::test]
async fn the_shared_schema_is_made_once_whoever_starts_first() {
    let Some(pg) = Cluster::start() else { return };
    let url = pg.url();
    let secret = rollbackd::config::secret::Secret::resolve(&url).unwrap();
    let (a, b) = tokio::join!(
        rollbackd::store::shared::Shared::connect(&secret, "a", "svc"),
        rollbackd::store::shared::Shared::connect(&secret, "b", "svc"),
    );
    a.unwrap();
    b.unwrap();
    let shipped = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations-pg"))
        .unwrap()
        .count();
    assert_eq!(
        pg.psql("SELECT count(*) FROM _sqlx_migrations WHERE success"),
        shipped.to_string(),
        "each migration ran once"
    );
}

/// PostgreSQL's text cannot hold a NUL character, and a probe's output
/// can (an exec check printing binary, a log line, a switch command's
/// output in a timeline). The mirror writes such rows, with U+FFFD in the
/// NUL's place, instead of failing on them forever: it writes in order, so
/// one refused row would hold back every row behind it.
#[tokio::test]
async fn a_nul_character_is_written_not_refused_forever() {
    use rollbackd::model::{
        Color as Side, EventKind, IncidentState, Sample, Severity, Trigger, now_ms,
    };
    use rollbackd::store::{Incident, IncidentEvent};
    let Some(pg) = Cluster::start() else { return };
    let secret = rollbackd::config::secret::Secret::resolve(&pg.url()).unwrap();
    let db = rollbackd::store::shared::Shared::connect(&secret, "a", "svc")
        .await
        .unwrap();
    let now = now_ms();
    let sample = Sample {
        detail: "exit 1: bin\0ary".into(),
        ..Sample::answer(now, "check", Some(Side::Blue), false, 1.0)
    };
    db.put_samples(&[sample]).await.unwrap();
    let back = db.samples_all_hosts(None, None, 0).await.unwrap();
    assert_eq!(back[0].sample.detail, "exit 1: bin\u{fffd}ary");

    let incident = Incident {
        id: 1,
        opened_ms: now,
        closed_ms: Some(now + 1),
        trigger_kind: Trigger::Manual,
        severity: Severity::Critical,
        rule: None,
        reason: "nul\0here".into(),
        evidence: "{}".into(),
        from_color: Some(Side::Blue),
        to_color: Some(Side::Green),
        from_version: Some("v\u{0}2".into()),
        to_version: Some("v1".into()),
        state: IncidentState::Verified,
        outcome: Some("moved: exit 0: \0".into()),
        downtime_ms: Some(1),
        in_flight: false,
        holder: None,
        switch_pgid: None,
    };
    let event = IncidentEvent {
        at_ms: now,
        state: EventKind::from(IncidentState::Switched),
        message: "traffic moved: exit 0: \0".into(),
    };
    db.put_incident_with_timeline(&incident, &[(1, event)])
        .await
        .unwrap();
    let (shown, timeline) = db.incident_of("a", 1).await.unwrap().unwrap();
    assert_eq!(shown.reason, "nul\u{fffd}here");
    assert_eq!(shown.from_version.as_deref(), Some("v\u{fffd}2"));
    assert_eq!(timeline[0].message, "traffic moved: exit 0: \u{fffd}");
}

/// A row the shared database can never take (here a timeline event of a
/// kind this build cannot read, as a newer rollbackd may have written
/// before a downgrade) is set aside after a few tries while the database
/// answers, and counted; the deployment queued behind it still goes.
/// Before, the mirror retried it forever and wrote nothing more.
#[tokio::test]
async fn a_row_that_never_goes_is_set_aside_and_the_rows_behind_it_go() {
    use rollbackd::store::shared::ship::{Item, Mirror, Shipper};
    let Some(pg) = Cluster::start() else { return };
    let dir = tempfile::tempdir().unwrap();
    let store = rollbackd::store::Store::open_dir(dir.path()).await.unwrap();
    let raw = sqlx::sqlite::SqlitePool::connect(&format!(
        "sqlite://{}",
        dir.path().join("rollbackd.db").display()
    ))
    .await
    .unwrap();
    for sql in [
        "INSERT INTO incidents (id, opened_ms, trigger_kind, severity, reason, state) \
         VALUES (1, 1, 'manual', 'critical', 'r', 'verified')",
        "INSERT INTO incident_events (incident_id, at_ms, state, message) \
         VALUES (1, 1, 'from-the-future', 'm')",
    ] {
        sqlx::query(sql).execute(&raw).await.unwrap();
    }
    raw.close().await;
    let deployment = store
        .record_deployment(rollbackd::model::Color::Green, "v1", "test", 1)
        .await
        .unwrap();

    let secret = rollbackd::config::secret::Secret::resolve(&pg.url()).unwrap();
    let shared = rollbackd::store::shared::Shared::connect(&secret, "a", "svc")
        .await
        .unwrap();
    let mirror = Mirror::default();
    mirror.push(Item::Incident(1));
    mirror.push(Item::Deployment(deployment.id));
    let shipper = tokio::spawn(
        Shipper {
            mirror: mirror.clone(),
            shared,
            local: store.clone(),
            beats: true,
        }
        .run(),
    );
    wait_for(
        "the deployment behind the refused row",
        Duration::from_secs(30),
        || async { pg.psql("SELECT count(*) FROM deployments WHERE version = 'v1'") == "1" },
    )
    .await;
    assert_eq!(mirror.refused(), 1, "the one row, counted");
    assert_eq!(mirror.backlog(), 0);
    assert_eq!(pg.psql("SELECT count(*) FROM incidents"), "0");
    shipper.abort();
}

/// One host of a pair watching the same service: its own folder (config,
/// local journal), the shared `[active] file` and switch log in `shared`.
/// The switch command logs, waits `switch_secs`, then moves the active file.
fn host(
    name: &str,
    blue: &Color,
    green: &Color,
    shared: &Path,
    url: &str,
    switch_secs: u32,
    extra: &str,
) -> Env {
    let log = shared.join("switch.log");
    let active = shared.join("active");
    let mut text = common::fast_config(
        blue,
        green,
        shared,
        &format!("[active]\nfile = \"{}\"\n{extra}", active.display()),
    );
    let command = text
        .lines()
        .find(|l| l.starts_with("command = "))
        .unwrap()
        .to_owned();
    text = text.replace(
        &command,
        &format!(
            "command = [\"/bin/sh\", \"-c\", \"echo \\\"$1 $2 $3|$ROLLBACKD_INCIDENT|{name}\\\" >> {}; sleep {switch_secs}; echo $2 > {}\", \"switch\", \"{{from}}\", \"{{to}}\", \"{{version}}\"]",
            log.display(),
            active.display()
        ),
    );
    let env = Env::new("");
    let url_file = env.path("database-url");
    // A password the server (trust authentication) ignores, and which must
    // never be printed.
    let url = url.replace(
        "postgres://rollbackd@",
        &format!("postgres://rollbackd:{PASSWORD}@"),
    );
    std::fs::write(&url_file, format!("{url}\n")).unwrap();
    text = text.replacen(
        "[daemon]\n",
        &format!(
            "[daemon]\ndatabase = \"file:{}\"\nhost = \"{name}\"\n",
            url_file.display()
        ),
        1,
    );
    std::fs::write(&env.config, text).unwrap();
    env.cli_ok(&["deploy", "--color", "green", "--version", "v1"]);
    env.cli_ok(&["deploy", "--color", "blue", "--version", "v2"]);
    env
}

const PASSWORD: &str = "pw-never-printed-7f3a";

/// Each host's heartbeat: `host|leader` lines, by host.
fn leaders(pg: &Cluster) -> String {
    pg.try_psql(
        "SELECT host || '|' || CASE WHEN leader THEN 't' ELSE 'f' END FROM hosts ORDER BY host",
    )
    .unwrap_or_default()
}

/// Waits for the hosts table to say `want`; on timeout, says what it said
/// last.
async fn wait_leaders(pg: &Cluster, want: &str, limit: Duration) {
    let deadline = Instant::now() + limit;
    loop {
        let seen = leaders(pg);
        if seen == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for hosts {want:?}; the last seen: {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Hosts `a` (the leader, whose switch command takes `a_switch_secs`) and
/// `b` (the follower), both running; their folders, kept while the test
/// runs.
async fn pair(
    pg: &Cluster,
    blue: &Color,
    green: &Color,
    shared: &Path,
    a_switch_secs: u32,
) -> (Daemon, Daemon, [Env; 2]) {
    let a = host("a", blue, green, shared, &pg.url(), a_switch_secs, "");
    let b = host("b", blue, green, shared, &pg.url(), 0, "");
    let (da, db) = start_pair(pg, &a, &b).await;
    (da, db, [a, b])
}

/// Starts `a`, waits for it to lead, then `b`, and waits for it to follow.
async fn start_pair(pg: &Cluster, a: &Env, b: &Env) -> (Daemon, Daemon) {
    let da = a.daemon();
    da.ready().await;
    wait_leaders(pg, "a|t", Duration::from_secs(20)).await;
    let db = b.daemon();
    db.ready().await;
    wait_leaders(pg, "a|t\nb|f", Duration::from_secs(20)).await;
    (da, db)
}

/// The follower either tried and held back, or saw a's switch land first
/// (then it had nothing to roll back); either way it must not switch,
/// which the callers assert by counting switches.
async fn follower_held_or_saw_the_switch(db: &Daemon) {
    wait_for(
        "the follower's hold or a's switch seen",
        Duration::from_secs(30),
        || async {
            let log = common::read(&db.log);
            log.contains("another daemon leads service beluga")
                || log.contains("active color is now green")
        },
    )
    .await;
}

/// How long after `killed` (the leader's SIGKILL) the follower took the
/// lead, by the time its own log line gives: what the daemon did, not how
/// soon this test's polling saw it on a loaded machine.
async fn takeover_after(follower: &Daemon, killed: SystemTime) -> Duration {
    let line = "this daemon now leads service";
    wait_for("the follower to lead", Duration::from_secs(30), || async {
        common::read(&follower.log).contains(line)
    })
    .await;
    let log = common::read(&follower.log);
    let stamp = log
        .lines()
        .find(|l| l.contains(line))
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or_default();
    let led = humantime::parse_rfc3339(stamp)
        .unwrap_or_else(|e| panic!("{e}: no time on the lead line of:\n{log}"));
    led.duration_since(killed).unwrap_or_default()
}

fn switches(shared: &Path) -> Vec<String> {
    common::read(&shared.join("switch.log"))
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Two daemons watch one service: only the leader switches, and the
/// follower probes, decides (its verdicts are in `fleet`) and says why it
/// does not switch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_leader_of_a_service_switches_it() {
    let Some(pg) = Cluster::start() else { return };
    let (blue, green) = (Color::start().await, Color::start().await);
    let shared = tempfile::tempdir().unwrap();
    std::fs::write(shared.path().join("active"), "blue\n").unwrap();
    // A's switch takes 6 s: blue stays active, and failing, that long.
    let (da, db, hosts) = pair(&pg, &blue, &green, shared.path(), 6).await;

    blue.set(503);
    wait_for(
        "the follower's fired verdict in `fleet`",
        Duration::from_secs(30),
        || async {
            let out = hosts[1].cli_ok(&["fleet", "--json"]);
            let fleet: serde_json::Value = serde_json::from_str(&out).unwrap();
            fleet["hosts"].as_array().unwrap().iter().any(|h| {
                h["host"] == "b"
                    && !h["leader"].as_bool().unwrap()
                    && h["verdicts"].as_array().unwrap().iter().any(|v| {
                        v["state"] == "fired"
                            && v["severity"] == "critical"
                            && v["rule"].as_str().is_some_and(|r| !r.is_empty())
                    })
            })
        },
    )
    .await;
    wait_for("a switch", Duration::from_secs(30), || async {
        !switches(shared.path()).is_empty()
    })
    .await;
    let switched = switches(shared.path());
    assert!(
        switched[0].ends_with("|a"),
        "the leader switched: {switched:?}"
    );
    follower_held_or_saw_the_switch(&db).await;
    // The traffic moved: nothing more happens.
    wait_for("green active", Duration::from_secs(20), || async {
        common::read(&shared.path().join("active")).trim() == "green"
    })
    .await;
    let pause = Instant::now();
    wait_for("2 s more", Duration::from_secs(5), || async {
        pause.elapsed() >= Duration::from_secs(2)
    })
    .await;
    assert_eq!(
        switches(shared.path()).len(),
        1,
        "{:?}",
        switches(shared.path())
    );
    // A's incident is in the shared database, tagged with its host.
    assert_eq!(
        pg.psql("SELECT host || '|' || service || '|' || from_version FROM incidents"),
        "a|beluga|v2"
    );
    da.stop().await;
    db.stop().await;
}

/// The leader is killed (-9) in the middle of its switch: the follower
/// leads within 5 s, and the rollback in flight is not run a second time
/// (the switch command, in its own process group, finishes on its own).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_follower_takes_over_a_killed_leader_and_never_runs_its_rollback_twice() {
    let Some(pg) = Cluster::start() else { return };
    let (blue, green) = (Color::start().await, Color::start().await);
    let shared = tempfile::tempdir().unwrap();
    std::fs::write(shared.path().join("active"), "blue\n").unwrap();
    let (da, db, _hosts) = pair(&pg, &blue, &green, shared.path(), 8).await;

    blue.set(503);
    wait_for("a's switch to start", Duration::from_secs(30), || async {
        !switches(shared.path()).is_empty()
    })
    .await;
    // A's incident reached the shared database, in flight (its switch
    // command takes 8 s: time enough on a loaded machine).
    let deadline = Instant::now() + Duration::from_secs(8);
    while pg.psql("SELECT count(*) FROM incidents WHERE host = 'a' AND in_flight") != "1" {
        assert!(
            Instant::now() < deadline,
            "a's rollback is not in flight in the shared database: {}\n{}",
            pg.psql("SELECT host || ' ' || id || ' ' || state || ' ' || in_flight FROM incidents"),
            common::read(&da.log)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    da.signal(nix::sys::signal::Signal::SIGKILL);
    let killed = SystemTime::now();
    let took = takeover_after(&db, killed).await;
    assert!(took < Duration::from_secs(5), "took over after {took:?}");
    wait_for(
        "b to lead in the fleet",
        Duration::from_secs(10),
        || async { pg.psql("SELECT leader FROM hosts WHERE host = 'b'") == "t" },
    )
    .await;
    // The killed leader's row no longer says it leads.
    wait_leaders(&pg, "a|f\nb|t", Duration::from_secs(5)).await;
    // B holds back while A's switch may still be running...
    wait_for("b's hold", Duration::from_secs(30), || async {
        common::read(&db.log).contains("host a's rollback #1 of service beluga is in flight")
    })
    .await;
    // ...which lands (the orphaned command finishes), and B sees it.
    wait_for("green active", Duration::from_secs(20), || async {
        common::read(&shared.path().join("active")).trim() == "green"
    })
    .await;
    let settle = Instant::now();
    wait_for("3 s more", Duration::from_secs(6), || async {
        settle.elapsed() >= Duration::from_secs(3)
    })
    .await;
    let switched = switches(shared.path());
    assert_eq!(switched.len(), 1, "exactly one switch: {switched:?}");
    assert!(switched[0].ends_with("|a"), "{switched:?}");
    db.stop().await;
    drop(da);
}

/// The leader is killed in a switch that never ends in time: once that
/// switch is older than it could still be running (`[rollback] timeout` +
/// `verify_after`; the hold before that is the previous test's), the new
/// leader closes the old leader's rollback as unknown, NOT run again, and,
/// the active color still failing, rolls back on its own account, as a
/// daemon restarted after a crash does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_leaders_rollback_is_closed_as_unknown_after_its_bound() {
    let Some(pg) = Cluster::start() else { return };
    let (blue, green) = (Color::start().await, Color::start().await);
    let shared = tempfile::tempdir().unwrap();
    std::fs::write(shared.path().join("active"), "blue\n").unwrap();
    // A's switch takes 60 s; the bound is 3 s + 1 s.
    let a = host("a", &blue, &green, shared.path(), &pg.url(), 60, "");
    let b = host("b", &blue, &green, shared.path(), &pg.url(), 0, "");
    for env in [&a, &b] {
        let text = common::read(&env.config).replacen(
            "verify_after = \"5s\"",
            "verify_after = \"1s\"\ntimeout = \"3s\"",
            1,
        );
        std::fs::write(&env.config, text).unwrap();
    }
    let (da, db) = start_pair(&pg, &a, &b).await;

    blue.set(503);
    // Killed in its switch: once the command runs (its line is first) and
    // the row in flight is shared. The row is shipped as the incident
    // opens, before the target is verified: killed then, A never switches.
    wait_for("a's switch to start", Duration::from_secs(30), || async {
        switches(shared.path()).iter().any(|l| l.ends_with("|a"))
    })
    .await;
    wait_for("a's row in flight", Duration::from_secs(30), || async {
        pg.psql("SELECT count(*) FROM incidents WHERE host = 'a' AND in_flight") == "1"
    })
    .await;
    da.signal(nix::sys::signal::Signal::SIGKILL);
    wait_for("b to lead", Duration::from_secs(30), || async {
        pg.psql("SELECT leader FROM hosts WHERE host = 'b'") == "t"
    })
    .await;
    wait_for("a's rollback closed", Duration::from_secs(30), || async {
        pg.psql("SELECT count(*) FROM incidents WHERE host = 'a' AND NOT in_flight") == "1"
    })
    .await;
    let closed = pg.psql("SELECT state || '|' || outcome FROM incidents WHERE host = 'a'");
    assert!(
        closed.starts_with("unknown|interrupted on host a")
            && closed.contains("NOT run again by b"),
        "{closed}"
    );
    // Then B rolled back on its own account: one switch each, a's never
    // run a second time under a's incident.
    wait_for("b's switch", Duration::from_secs(30), || async {
        switches(shared.path()).iter().any(|l| l.ends_with("|b"))
    })
    .await;
    let switched = switches(shared.path());
    assert_eq!(switched.len(), 2, "{switched:?}");
    assert!(
        switched[0].ends_with("|a") && switched[1].ends_with("|b"),
        "{switched:?}"
    );
    let b_incident = pg.psql("SELECT count(*) FROM incidents WHERE host = 'b'");
    assert_eq!(b_incident, "1", "b's rollback is its own incident");
    db.stop().await;
    drop(da);
}

/// Killed while all is well: the follower leads within 5 s, and then it is
/// the one that switches when the active color fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_takeover_the_new_leader_switches() {
    let Some(pg) = Cluster::start() else { return };
    let (blue, green) = (Color::start().await, Color::start().await);
    let shared = tempfile::tempdir().unwrap();
    std::fs::write(shared.path().join("active"), "blue\n").unwrap();
    let (da, db, _hosts) = pair(&pg, &blue, &green, shared.path(), 0).await;
    da.signal(nix::sys::signal::Signal::SIGKILL);
    let killed = SystemTime::now();
    let took = takeover_after(&db, killed).await;
    assert!(took < Duration::from_secs(5), "took over after {took:?}");
    wait_for(
        "b to lead in the fleet",
        Duration::from_secs(30),
        || async { pg.psql("SELECT leader FROM hosts WHERE host = 'b'") == "t" },
    )
    .await;
    blue.set(503);
    wait_for("b's switch", Duration::from_secs(30), || async {
        !switches(shared.path()).is_empty()
    })
    .await;
    assert!(switches(shared.path())[0].ends_with("|b"));
    db.stop().await;
    drop(da);
}

fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
}

async fn get(addr: &str, path: &str) -> (u16, String) {
    let r = reqwest::get(format!("http://{addr}{path}")).await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

/// PostgreSQL stopped mid-run: the daemon goes on probing and switches from
/// memory, says so on `/healthz` and `/metrics`, and when the database is
/// back it writes what it held: every sample its journal took reaches the
/// shared database, and the rollback made meanwhile too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_the_database_stops_no_protection_and_loses_no_sample() {
    let Some(pg) = Cluster::start() else { return };
    let (blue, green) = (Color::start().await, Color::start().await);
    let shared = tempfile::tempdir().unwrap();
    std::fs::write(shared.path().join("active"), "blue\n").unwrap();
    let a = host("a", &blue, &green, shared.path(), &pg.url(), 0, "");
    let text = std::fs::read_to_string(&a.config)
        .unwrap()
        .replace("listen = \"off\"", "listen = \"127.0.0.1:0\"");
    std::fs::write(&a.config, text).unwrap();
    let da = a.daemon();
    da.ready().await;
    let addr = da.http_addr().await;
    wait_leaders(&pg, "a|t", Duration::from_secs(20)).await;
    wait_for(
        "samples in the shared database",
        Duration::from_secs(20),
        || async { pg.psql("SELECT count(*) FROM samples WHERE host = 'a'") != "0" },
    )
    .await;

    pg.stop();
    wait_for("/healthz to say so", Duration::from_secs(20), || async {
        let (code, body) = get(&addr, "/healthz").await;
        code == 503 && body.contains("shared database lost")
    })
    .await;
    let (_, m) = get(&addr, "/metrics").await;
    assert_eq!(metric(&m, "rollbackd_shared_database_ok"), Some(0.0), "{m}");
    assert_eq!(
        metric(&m, "rollbackd_leader"),
        Some(1.0),
        "still the switcher"
    );
    wait_for("/status to say so", Duration::from_secs(10), || async {
        let (_, doc) = get(&addr, "/status").await;
        let doc: serde_json::Value = serde_json::from_str(&doc).unwrap();
        doc["fleet"]["host"] == "a"
            && doc["fleet"]["leadership"] == "leader (database lost)"
            && doc["fleet"]["database_ok"] == false
    })
    .await;
    // Protection goes on: the active color fails, and is switched.
    blue.set(503);
    wait_for(
        "the switch without the database",
        Duration::from_secs(30),
        || async { !switches(shared.path()).is_empty() },
    )
    .await;
    wait_for("a backlog", Duration::from_secs(10), || async {
        let (_, m) = get(&addr, "/metrics").await;
        metric(&m, "rollbackd_shared_backlog_rows").is_some_and(|n| n > 0.0)
    })
    .await;

    pg.restart();
    wait_for("the backlog written", Duration::from_secs(30), || async {
        let (code, m) = get(&addr, "/metrics").await;
        code == 200
            && metric(&m, "rollbackd_shared_database_ok") == Some(1.0)
            && metric(&m, "rollbackd_shared_backlog_rows") == Some(0.0)
    })
    .await;
    let (code, body) = get(&addr, "/healthz").await;
    assert_eq!(code, 200, "{body}");
    for path in ["/metrics", "/status"] {
        let (_, body) = get(&addr, path).await;
        assert!(
            !body.contains(PASSWORD),
            "{path} shows the database password"
        );
    }
    let log_path = da.log.clone();
    assert!(da.stop().await.success());
    let log = common::read(&log_path);
    assert!(log.contains("shared database is unreachable"), "{log}");
    assert!(
        !log.contains(PASSWORD),
        "the log shows the database password:\n{log}"
    );

    // Every sample the local journal holds is in the shared one, once.
    let local = a.store().await.sample_count().await.unwrap();
    let remote: i64 = pg
        .psql("SELECT count(*) FROM samples WHERE host = 'a'")
        .parse()
        .unwrap();
    assert_eq!(remote, local, "samples lost or doubled");
    assert_eq!(
        pg.psql("SELECT dropped FROM hosts WHERE host = 'a'"),
        "0",
        "nothing dropped"
    );
    assert_eq!(
        pg.psql("SELECT from_version || '|' || to_version FROM incidents WHERE host = 'a'"),
        "v2|v1",
        "the rollback made without the database"
    );
}

/// A manual rollback from the command line (no daemon running) reaches the
/// shared database when the command ends: its incident, and the version it
/// quarantined for the whole fleet.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_line_rollback_is_shared_with_the_fleet() {
    let Some(pg) = Cluster::start() else { return };
    let (blue, green) = (Color::start().await, Color::start().await);
    let shared = tempfile::tempdir().unwrap();
    std::fs::write(shared.path().join("active"), "blue\n").unwrap();
    let a = host("a", &blue, &green, shared.path(), &pg.url(), 0, "");
    a.cli_ok(&["rollback", "--reason", "bad release"]);
    assert_eq!(switches(shared.path()).len(), 1);
    assert_eq!(
        pg.psql("SELECT host || '|' || trigger_kind || '|' || from_version FROM incidents"),
        "a|manual|v2"
    );
    assert_eq!(
        pg.psql(
            "SELECT service || '|' || version || '|' || host || '|' || incident FROM quarantine"
        ),
        "beluga|v2|a|1"
    );
    // The deployment the switch recorded went too.
    assert!(
        pg.psql("SELECT count(*) FROM deployments WHERE host = 'a' AND source = 'rollback'") == "1"
    );
}

/// A pause made on one host holds every daemon of the service: the leader
/// of the pair does not switch while another host's pause stands.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pause_on_one_host_holds_the_service_everywhere() {
    let Some(pg) = Cluster::start() else { return };
    let (blue, green) = (Color::start().await, Color::start().await);
    let shared = tempfile::tempdir().unwrap();
    std::fs::write(shared.path().join("active"), "blue\n").unwrap();
    let a = host("a", &blue, &green, shared.path(), &pg.url(), 0, "");
    let b = host("b", &blue, &green, shared.path(), &pg.url(), 0, "");
    a.cli_ok(&["pause", "--for", "1h", "--reason", "database maintenance"]);
    assert_eq!(
        pg.psql("SELECT host || '|' || reason FROM pauses WHERE resumed_ms IS NULL"),
        "a|database maintenance"
    );
    let db = b.daemon();
    db.ready().await;
    wait_leaders(&pg, "b|t", Duration::from_secs(20)).await;
    blue.set(503);
    wait_for("b's hold", Duration::from_secs(30), || async {
        common::read(&db.log).contains("are paused until")
            && common::read(&db.log).contains("by host a: database maintenance")
    })
    .await;
    assert!(switches(shared.path()).is_empty(), "switched while paused");
    // `resume` where the pause was made ends it for the fleet.
    a.cli_ok(&["resume"]);
    assert_eq!(
        pg.psql("SELECT count(*) FROM pauses WHERE resumed_ms IS NULL"),
        "0"
    );
    db.stop().await;
}

/// The database lost under a pair: the leader goes on switching from
/// memory, and the follower, which cannot know the leader is gone, does not
/// take the lead. One switch, by the leader.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_database_the_leader_still_switches_and_the_follower_never_does() {
    let Some(pg) = Cluster::start() else { return };
    let (blue, green) = (Color::start().await, Color::start().await);
    let shared = tempfile::tempdir().unwrap();
    std::fs::write(shared.path().join("active"), "blue\n").unwrap();
    let (da, db, _hosts) = pair(&pg, &blue, &green, shared.path(), 0).await;

    pg.stop();
    wait_for("a to lead from memory", Duration::from_secs(20), || async {
        common::read(&da.log).contains("still leading service beluga from memory")
    })
    .await;
    blue.set(503);
    wait_for("a switch", Duration::from_secs(30), || async {
        !switches(shared.path()).is_empty()
    })
    .await;
    follower_held_or_saw_the_switch(&db).await;
    let settle = Instant::now();
    wait_for("2 s more", Duration::from_secs(5), || async {
        settle.elapsed() >= Duration::from_secs(2)
    })
    .await;
    let switched = switches(shared.path());
    assert_eq!(switched.len(), 1, "{switched:?}");
    assert!(switched[0].ends_with("|a"), "{switched:?}");
    assert!(
        !common::read(&db.log).contains("now leads"),
        "the follower took the lead"
    );
    da.stop().await;
    db.stop().await;
}
