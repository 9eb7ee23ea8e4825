//! The operator's side of a fleet (issue 14 points 2, 3): `gate --version`
//! and `deploy` against the quarantine, `quarantine lift`, `fleet`,
//! `--all-hosts`; real daemons, a real PostgreSQL (`pg.rs`), the real CLI.

use std::time::Duration;

use rollbackd::model::{Color, Sample, now_ms};
use serde_json::Value;

use crate::common::{self, Env, Setup, wait_for};
use crate::pg::Cluster;

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn json(env: &Env, args: &[&str]) -> Value {
    let out = env.cli_ok(args);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?}: {e}\n{out}"))
}

/// Without a shared database, the fleet commands fail with one line and
/// exit 78; the quarantine of this host's own journal still fails the
/// gate, warns on deploy, and is lifted (once) by `quarantine lift`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_host_quarantine_gate_deploy_and_lift_without_a_shared_database() {
    let service = Setup::new()
        .await
        .daemon_keys("host = \"solo\"")
        .deploy("green", "v1")
        .deploy("blue", "v2")
        .configure();
    let env = &service.env;

    for args in [
        &["fleet"][..],
        &["incidents", "--all-hosts"],
        &["samples", "--all-hosts"],
        &["report", "--all-hosts"],
        &["incident", "show", "1", "--all-hosts"],
        &["status", "--all-hosts"],
    ] {
        let out = env.cli(args);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(78), "{args:?}: {stderr}");
        assert!(stderr.contains("needs a shared database"), "{stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
    }

    // Nothing quarantined yet: nothing to lift.
    let out = env.cli(&["quarantine", "lift", "--version", "v2", "--reason", "x"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));

    // A manual rollback moves traffic off v2 and quarantines it.
    env.cli_ok(&["rollback", "--reason", "v2 is broken"]);
    let out = env.cli(&["gate", "--color", "blue", "--version", "v2", "--for", "1s"]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("rolled back on host solo (incident #1 there)"),
        "{stdout}"
    );
    assert!(stdout.contains("— FAIL"), "{stdout}");
    let out = env.cli(&[
        "gate",
        "--color",
        "blue",
        "--version",
        "v2",
        "--for",
        "1s",
        "--json",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["passed"], false);
    assert_eq!(doc["quarantine"]["host"], "solo");
    assert_eq!(doc["quarantine"]["incident"], 1);
    assert_eq!(doc["quarantine"]["source"], "local");

    // The pipeline cut over to it anyway: recorded, with a warning.
    let out = env.cli(&["deploy", "--color", "blue", "--version", "v2"]);
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("warning: version v2 is quarantined")
            && stderr.contains("host solo (incident #1 there)"),
        "{stderr}"
    );

    let doc = json(
        env,
        &[
            "quarantine",
            "lift",
            "--version",
            "v2",
            "--reason",
            "fixed upstream",
            "--json",
        ],
    );
    assert_eq!(doc["local_deployments"], 1, "{doc}");
    assert_eq!(doc["shared_database"], false, "{doc}");
    assert!(
        doc["lifted_by"].as_str().unwrap().ends_with("@solo"),
        "{doc}"
    );
    let out = env.cli(&["quarantine", "lift", "--version", "v2", "--reason", "x"]);
    assert_eq!(out.status.code(), Some(1), "lifted once");
    assert!(
        text(&out.stderr).contains("version v2 was not quarantined on this host"),
        "{}",
        text(&out.stderr)
    );
    let out = env.cli(&[
        "gate",
        "--color",
        "blue",
        "--version",
        "v2",
        "--for",
        // Health is proven by 5 samples at 200ms: 1.5s leaves room for a
        // late beat on a loaded machine (1s once saw only 4).
        "1500ms",
        "--allow-unjudged",
    ]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(
        stdout.contains("Version `v2` is not quarantined"),
        "{stdout}"
    );
}

/// Two hosts watch one service through one PostgreSQL. A's rollback of v2
/// fails `gate --version v2` on B naming A and its incident; `deploy` of
/// it on B warns; `incidents --all-hosts` on B lists A's incident; `fleet`
/// shows both hosts and one leader; B's `quarantine lift` is recorded and
/// lets the gate pass; A killed (SIGKILL) is shown silent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_rolled_back_on_one_host_is_quarantined_on_the_other() {
    let Some(pg) = Cluster::start() else { return };
    let url = pg.url();
    let a = Setup::new()
        .await
        .shared_database(&url, "a")
        .deploy("green", "v1")
        .deploy("blue", "v2")
        .configure();
    let daemon_a = a.daemon().await;
    wait_for("a to lead", Duration::from_secs(30), || async {
        pg.psql("SELECT count(*) FROM pg_tables WHERE tablename = 'hosts'") == "1"
            && pg.psql("SELECT count(*) FROM hosts WHERE host = 'a' AND leader") == "1"
    })
    .await;

    // B: its own folder and journal, the same two colors.
    let dir_b = tempfile::tempdir().unwrap();
    let url_file = dir_b.path().join("database-url");
    std::fs::write(&url_file, format!("{url}\n")).unwrap();
    let text_b = common::fast_config(&a.blue, &a.green, dir_b.path(), "").replacen(
        "[daemon]\n",
        &format!(
            "[daemon]\ndatabase = \"file:{}\"\nhost = \"b\"\n",
            url_file.display()
        ),
        1,
    );
    let b = Env::new(&text_b);
    b.cli_ok(&["deploy", "--color", "green", "--version", "v1"]);
    b.cli_ok(&["deploy", "--color", "blue", "--version", "v2"]);
    let daemon_b = b.daemon();
    daemon_b.ready().await;

    // v2 fails on blue: the leader, A, rolls it back.
    a.blue.set(500);
    wait_for(
        "a's rollback to quarantine v2 in the shared database",
        Duration::from_secs(60),
        || async {
            pg.psql(
                "SELECT host || ' ' || coalesce(incident::text, '-') FROM quarantine \
                 WHERE service = 'beluga' AND version = 'v2' AND lifted_ms IS NULL",
            ) == "a 1"
        },
    )
    .await;
    assert!(common::switched(&a.switch_log()));
    assert!(
        !common::switched(&dir_b.path().join("switch.log")),
        "the follower never switches"
    );
    a.blue.set(200);

    // On B, the gate fails v2 at once, naming A and its incident.
    let out = b.cli(&["gate", "--color", "blue", "--version", "v2", "--for", "1s"]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}{}", text(&out.stderr));
    assert!(
        stdout.contains("rolled back on host a (incident #1 there)"),
        "{stdout}"
    );
    let out = b.cli(&[
        "gate",
        "--color",
        "blue",
        "--version",
        "v2",
        "--for",
        "1s",
        "--json",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (
            &doc["passed"],
            &doc["quarantine"]["host"],
            &doc["quarantine"]["incident"],
            &doc["quarantine"]["source"]
        ),
        (
            &Value::Bool(false),
            &Value::from("a"),
            &Value::from(1),
            &Value::from("shared")
        ),
        "{doc}"
    );

    // deploy of it on B is recorded, with a warning naming A.
    let out = b.cli(&["deploy", "--color", "blue", "--version", "v2"]);
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("warning: version v2 is quarantined")
            && stderr.contains("rolled back on host a (incident #1 there)"),
        "{stderr}"
    );

    // A's incident, seen from B.
    let incidents = json(&b, &["incidents", "--all-hosts", "--json"]);
    let theirs: Vec<&Value> = incidents
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["host"] == "a")
        .collect();
    assert_eq!(theirs.len(), 1, "{incidents}");
    assert_eq!(
        (&theirs[0]["id"], &theirs[0]["from_version"]),
        (&Value::from(1), &Value::from("v2"))
    );
    let table = b.cli_ok(&["incidents", "--all-hosts"]);
    assert!(
        table.starts_with("HOST") && table.contains("\na ") && table.contains("v2"),
        "{table}"
    );

    // ...with its whole record: once A closed it, B's `incident show 1
    // --all-hosts` says what A's own `incident show 1` says.
    let own = || json(&a.env, &["incident", "show", "1", "--json"]);
    let theirs = || json(&b, &["incident", "show", "1", "--all-hosts", "--json"]);
    wait_for(
        "a's closed incident and its timeline in the shared database",
        Duration::from_secs(30),
        || async {
            let (own, theirs) = (own(), theirs());
            !own["incident"]["closed"].is_null()
                && theirs["timeline"] == own["timeline"]
                && theirs["incident"]["state"] == own["incident"]["state"]
        },
    )
    .await;
    let (own, theirs) = (own(), theirs());
    assert_eq!(theirs["host"], "a", "{theirs}");
    for key in ["timeline", "evidence", "milestones"] {
        assert_eq!(theirs[key], own[key], "{key}: {theirs}\n{own}");
    }
    for key in ["outcome", "downtime_ms", "from_version", "closed"] {
        assert_eq!(theirs["incident"][key], own["incident"][key], "{key}");
    }
    assert!(
        own["timeline"].as_array().unwrap().len() >= 3,
        "a timeline of the rollback: {own}"
    );
    let shown = b.cli_ok(&["incident", "show", "1", "--all-hosts", "--host", "a"]);
    assert!(
        shown.starts_with("incident #1 on host a (") && shown.contains("timeline (UTC):"),
        "{shown}"
    );
    let report = b.cli_ok(&["incident", "show", "1", "--all-hosts", "--markdown"]);
    assert!(
        report.starts_with("# Incident #1: ") && report.contains("beluga on host a"),
        "{report}"
    );
    assert!(
        report.contains("xychart-beta"),
        "a's samples are charted: {report}"
    );
    // An incident no host has, and one B does not have: usage errors.
    for args in [
        &["incident", "show", "9", "--all-hosts"][..],
        &["incident", "show", "1", "--all-hosts", "--host", "b"],
    ] {
        let out = b.cli(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(
            text(&out.stderr).contains("no incident #"),
            "{}",
            text(&out.stderr)
        );
    }
    // An incident an older rollbackd shipped (no timeline in the shared
    // database) is shown, saying where its timeline is.
    pg.psql(
        "INSERT INTO incidents (host, service, id, opened_ms, trigger_kind, severity, reason, \
         state, in_flight) VALUES ('old', 'beluga', 5, 1, 'manual', 'high', 'by hand', \
         'verified', FALSE)",
    );
    let out = b.cli(&["incident", "show", "5", "--all-hosts"]);
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        text(&out.stdout).starts_with("incident #5 on host old (high, manual)"),
        "{}",
        text(&out.stdout)
    );
    assert!(
        stderr.contains("no timeline of host old's incident #5"),
        "{stderr}"
    );

    // The fleet: both hosts, one leader (A).
    let fleet = json(&b, &["fleet", "--json"]);
    let hosts: Vec<&str> = fleet["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["host"].as_str().unwrap())
        .collect();
    assert_eq!(hosts, ["a", "b"], "{fleet}");
    assert_eq!(fleet["services"][0]["leader"], "a", "{fleet}");
    // `status --all-hosts`: the same, for this service.
    let status = json(&b, &["status", "--all-hosts", "--json"]);
    let names: Vec<(&str, bool)> = status["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| (h["host"].as_str().unwrap(), h["leader"].as_bool().unwrap()))
        .collect();
    assert_eq!(names, [("a", true), ("b", false)], "{status}");
    assert_eq!(status["services"][0]["service"], "beluga", "{status}");
    assert_eq!(status["services"][0]["leader"], "a", "{status}");
    let table = b.cli_ok(&["status", "--all-hosts"]);
    assert!(
        table.starts_with("SERVICE") && table.contains("leader"),
        "{table}"
    );
    let leading = fleet["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|h| h["leader"] == true)
        .count();
    assert_eq!(leading, 1, "{fleet}");

    // B lifts it: recorded in the shared database, and the gate passes.
    let out = b.cli_ok(&[
        "quarantine",
        "lift",
        "--version",
        "v2",
        "--reason",
        "fixed by config",
    ]);
    assert!(
        out.contains(
            "lifted the fleet's quarantine of v2 for beluga (rolled back on host a, incident #1)"
        ),
        "{out}"
    );
    let record = pg.psql(
        "SELECT lifted_by || '|' || lift_reason FROM quarantine WHERE version = 'v2' \
         AND lifted_ms IS NOT NULL",
    );
    assert!(record.ends_with("@b|fixed by config"), "{record}");
    let out = b.cli(&[
        "gate",
        "--color",
        "blue",
        "--version",
        "v2",
        "--for",
        // Health is proven by 5 samples at 200ms: 1.5s leaves room for a
        // late beat on a loaded machine (1s once saw only 4).
        "1500ms",
        "--allow-unjudged",
    ]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );

    // A dies without a word: shown silent, and no longer the leader.
    daemon_a.signal(nix::sys::signal::Signal::SIGKILL);
    wait_for("a to be shown silent", Duration::from_secs(30), || async {
        let fleet = json(&b, &["fleet", "--json"]);
        fleet["hosts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|h| h["host"] == "a" && h["silent"] == true)
            && fleet["services"][0]["leader"] != "a"
    })
    .await;
    let table = b.cli_ok(&["fleet"]);
    assert!(table.contains("SILENT"), "{table}");
    drop(daemon_b);
}

/// Least privilege (docs/fleet.md): the role that owns the schema migrates
/// it with `fleet --migrate`; the daemons' role, without `CREATE` on the
/// schema, then opens it (its migration check asks only `SELECT`) and
/// writes, but could not have made it.
#[tokio::test]
async fn the_daemons_role_needs_no_create_once_the_owner_migrated() {
    let Some(pg) = Cluster::start() else { return };
    for sql in [
        "CREATE ROLE rbk_owner LOGIN",
        "CREATE ROLE rbk_daemon LOGIN",
        "REVOKE CREATE ON SCHEMA public FROM PUBLIC",
        "CREATE SCHEMA rollbackd AUTHORIZATION rbk_owner",
        "GRANT USAGE ON SCHEMA rollbackd TO rbk_daemon",
        "ALTER ROLE rbk_owner SET search_path = rollbackd",
        "ALTER ROLE rbk_daemon SET search_path = rollbackd",
        "ALTER DEFAULT PRIVILEGES FOR ROLE rbk_owner IN SCHEMA rollbackd \
         GRANT SELECT, INSERT, UPDATE ON TABLES TO rbk_daemon",
        "ALTER DEFAULT PRIVILEGES FOR ROLE rbk_owner IN SCHEMA rollbackd \
         GRANT USAGE ON SEQUENCES TO rbk_daemon",
    ] {
        pg.psql(sql);
    }
    let as_role = |role: &str| {
        rollbackd::config::secret::Secret::resolve(
            &pg.url().replace("rollbackd@", &format!("{role}@")),
        )
        .unwrap()
    };
    use rollbackd::store::shared::Shared;
    let early = Shared::connect(&as_role("rbk_daemon"), "d", "beluga").await;
    let why = early.unwrap_err().to_string();
    assert!(why.contains("permission denied for schema"), "{why}");

    let blue = common::Color::start().await;
    let green = common::Color::start().await;
    let dir = tempfile::tempdir().unwrap();
    let url_file = dir.path().join("owner-url");
    std::fs::write(
        &url_file,
        pg.url().replace("rollbackd@", "rbk_owner@") + "\n",
    )
    .unwrap();
    let env = Env::new(
        &common::fast_config(&blue, &green, dir.path(), "").replacen(
            "[daemon]\n",
            &format!("[daemon]\ndatabase = \"file:{}\"\n", url_file.display()),
            1,
        ),
    );
    let out = env.cli(&["fleet", "--migrate"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        pg.psql("SELECT tableowner FROM pg_tables WHERE tablename = 'hosts'"),
        "rbk_owner"
    );

    let db = Shared::connect(&as_role("rbk_daemon"), "d", "beluga")
        .await
        .unwrap();
    db.quarantine("v9", Some(4), 1).await.unwrap();
    assert_eq!(db.quarantined("v9").await.unwrap().unwrap().host, "d");
    let created = pg.psql("SELECT has_schema_privilege('rbk_daemon', 'rollbackd', 'CREATE')");
    assert_eq!(created, "f");

    // Pruning old samples needs the one `DELETE` docs/fleet.md grants.
    let why = db.prune_samples(now_ms()).await.unwrap_err().to_string();
    assert!(
        why.contains("deleting old samples") && why.contains("permission denied for table samples"),
        "{why}"
    );
    pg.psql("GRANT DELETE ON rollbackd.samples TO rbk_daemon");
    assert_eq!(db.prune_samples(now_ms()).await.unwrap(), 0);
}

fn sample(at_ms: i64) -> Sample {
    Sample::answer(at_ms, "healthz", Some(Color::Blue), true, 1.0)
}

/// A daemon's maintenance deletes its own samples older than the
/// retention from the shared database (or the table only grows), in
/// bounded chunks, and leaves other hosts' and other services' rows alone.
#[tokio::test]
async fn a_hosts_old_shared_samples_are_pruned_and_nobody_elses() {
    let Some(pg) = Cluster::start() else { return };
    let secret = rollbackd::config::secret::Secret::resolve(&pg.url()).unwrap();
    use rollbackd::store::shared::{PRUNE_CHUNK, Shared};
    let a = Shared::connect(&secret, "a", "svc").await.unwrap();
    let b = Shared::connect(&secret, "b", "svc").await.unwrap();
    let other = Shared::connect(&secret, "a", "other").await.unwrap();
    let cut = now_ms() - 3_600_000;
    // More old rows than one chunk, so the loop has to go round.
    let old: Vec<Sample> = (0..PRUNE_CHUNK + 5).map(|i| sample(cut - 1 - i)).collect();
    let new = [sample(cut), sample(cut + 1000)];
    for db in [&a, &b, &other] {
        db.put_samples(&old).await.unwrap();
    }
    a.put_samples(&new).await.unwrap();

    assert_eq!(a.prune_samples(cut).await.unwrap(), old.len() as u64);
    let left = |host: &str, service: &str| {
        pg.psql(&format!(
            "SELECT count(*) || ' ' || coalesce(min(at_ms) >= {cut}, true) FROM samples \
             WHERE host = '{host}' AND service = '{service}'"
        ))
    };
    assert_eq!(
        left("a", "svc"),
        "2 true",
        "only the old rows of a/svc went"
    );
    assert_eq!(left("b", "svc"), format!("{} false", old.len()));
    assert_eq!(left("a", "other"), format!("{} false", old.len()));
    assert_eq!(
        a.prune_samples(cut).await.unwrap(),
        0,
        "nothing left to prune"
    );
}
