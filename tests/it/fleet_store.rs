//! Issue 14 point 1: one store, two backends. With `[daemon] database`,
//! the read commands run on this host's rows in PostgreSQL and answer what
//! the journal answers; they still answer when the journal is gone, and
//! fall back to it (saying why) when the shared database cannot answer
//! for this host. A new journal (a host rebuilt) takes the host's history
//! back from PostgreSQL, in a command and in the daemon, and numbers its
//! new rows after it. Real daemon, real PostgreSQL (`pg.rs`), the real CLI.

use std::time::Duration;

use serde_json::Value;

use crate::common::{self, Env, Setup, wait_for};
use crate::pg::Cluster;

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// What a command prints, and its stderr.
fn run(env: &Env, args: &[&str]) -> (String, String) {
    let out = env.cli(args);
    assert!(
        out.status.success(),
        "{args:?}: {}\n{}",
        out.status,
        text(&out.stderr)
    );
    (text(&out.stdout), text(&out.stderr))
}

fn json(out: &str) -> Value {
    serde_json::from_str(out).unwrap_or_else(|e| panic!("{e}\n{out}"))
}

/// `samples --json` with samples taken in the same millisecond in one
/// order (each backend orders those its own way).
fn sorted_samples(out: &str) -> Vec<Value> {
    let mut list = json(out).as_array().unwrap().clone();
    list.sort_by_key(|s| {
        (
            s["at_ms"].as_i64(),
            s["probe"].to_string(),
            s["color"].to_string(),
        )
    });
    list
}

/// `status --json` without what names the backend, the journal's file or
/// the config file.
fn status_doc(out: &str) -> Value {
    let mut doc = json(out);
    let map = doc.as_object_mut().unwrap();
    map.remove("fleet");
    map.remove("database");
    map.remove("config");
    doc
}

/// The read commands compared: each one's output, as the test compares it.
struct Reads {
    incidents: Value,
    incident: Value,
    markdown: String,
    samples: Vec<Value>,
    report: Value,
    status: Value,
    /// `replay`'s samples and rollbacks (its times are counted from now).
    replay: (Value, usize),
    replay_origin: String,
}

fn reads(env: &Env) -> (Reads, Vec<String>) {
    let mut notes = Vec::new();
    let mut take = |args: &[&str]| {
        let (out, err) = run(env, args);
        notes.push(err);
        out
    };
    let r = Reads {
        incidents: json(&take(&["incidents", "--json"])),
        incident: json(&take(&["incident", "show", "1", "--json"])),
        markdown: take(&["incident", "show", "1", "--markdown"]),
        samples: sorted_samples(&take(&["samples", "--since", "1h", "--json"])),
        report: json(&take(&["report", "--deployment", "2", "--json"])),
        status: status_doc(&take(&["status", "--json"])),
        replay: (Value::Null, 0),
        replay_origin: String::new(),
    };
    let replay = json(&take(&["replay", "--since", "10m", "--json"]));
    let r = Reads {
        replay: (
            replay["samples"].clone(),
            replay["rollbacks"].as_array().map_or(0, Vec::len),
        ),
        replay_origin: replay["origin"].as_str().unwrap_or_default().to_owned(),
        ..r
    };
    (r, notes)
}

fn assert_same(theirs: &Reads, journal: &Reads, what: &str) {
    assert_eq!(theirs.incidents, journal.incidents, "{what}: incidents");
    assert_eq!(theirs.incident, journal.incident, "{what}: incident show");
    assert_eq!(theirs.markdown, journal.markdown, "{what}: --markdown");
    assert_eq!(
        theirs.samples.len(),
        journal.samples.len(),
        "{what}: samples"
    );
    assert_eq!(theirs.samples, journal.samples, "{what}: samples");
    assert_eq!(theirs.report, journal.report, "{what}: report");
    assert_eq!(theirs.status, journal.status, "{what}: status");
    assert_eq!(theirs.replay, journal.replay, "{what}: replay");
    assert_eq!(
        theirs.replay_origin, "the shared database (host a)",
        "{what}: replay"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_read_commands_answer_alike_from_the_shared_database_and_the_journal() {
    let Some(pg) = Cluster::start() else { return };
    let a = Setup::new()
        .await
        .shared_database(&pg.url(), "a")
        .deploy("green", "v1")
        .deploy("blue", "v2")
        .configure();
    let daemon = a.daemon().await;

    // v2 fails on blue: a rollback, with its verdicts, timeline and samples.
    a.blue.set(500);
    wait_for(
        "the rollback closed in the shared database",
        Duration::from_secs(60),
        || async {
            pg.psql("SELECT count(*) FROM incidents WHERE host = 'a' AND closed_ms IS NOT NULL")
                == "1"
        },
    )
    .await;
    a.blue.set(200);
    a.env
        .cli_ok(&["pause", "--for", "1h", "--reason", "after the rollback"]);
    // Stopping drains the mirror: the shared database holds the journal.
    assert!(daemon.stop().await.success());
    assert_eq!(pg.psql("SELECT backlog FROM hosts WHERE host = 'a'"), "0");
    assert_ne!(
        pg.psql("SELECT count(*) FROM verdicts WHERE host = 'a'"),
        "0",
        "verdicts are shipped"
    );

    // The same host and state directory, without the shared database.
    let state = a.env.path("state");
    let config = std::fs::read_to_string(&a.env.config).unwrap();
    let journal_text = config
        .lines()
        .filter(|l| !l.starts_with("database = "))
        .collect::<Vec<_>>()
        .join("\n")
        .replace(
            "state_dir = \"state\"",
            &format!("state_dir = \"{}\"", state.display()),
        );
    let journal_env = Env::new(&journal_text);
    // An incident's chart runs to 30 s after it closed, or to now: past
    // that, it is the same whenever it is drawn.
    let closed_ms: i64 = pg
        .psql("SELECT closed_ms FROM incidents WHERE host = 'a'")
        .parse()
        .unwrap();
    wait_for(
        "the chart's span to end",
        Duration::from_secs(40),
        || async { rollbackd::model::now_ms() > closed_ms + 30_000 },
    )
    .await;

    let (journal, notes) = reads(&journal_env);
    assert!(notes.iter().all(String::is_empty), "{notes:?}");
    assert!(
        journal.incident["timeline"].as_array().unwrap().len() >= 3,
        "a rollback to compare: {}",
        journal.incident
    );
    assert!(!journal.status["verdicts"].as_array().unwrap().is_empty());
    assert!(!journal.status["pause"].is_null(), "{}", journal.status);
    assert!(
        journal.replay.0.as_u64().unwrap() > 0,
        "a replay of the samples: {:?}",
        journal.replay
    );
    assert!(journal.replay_origin.starts_with("database "));
    assert!(journal.samples.iter().any(|s| s["deployment"].is_i64()));
    assert!(
        !journal.report["fired"].as_array().unwrap().is_empty()
            && !journal.report["rows"].as_array().unwrap().is_empty(),
        "v2's report has its verdicts and samples: {}",
        journal.report
    );

    // With the shared database: read there, the same answers.
    let (shared, notes) = reads(&a.env);
    assert!(notes.iter().all(String::is_empty), "{notes:?}");
    assert_same(&shared, &journal, "shared");
    let status = json(&run(&a.env, &["status", "--json"]).0);
    assert_eq!(status["fleet"]["read_from"], "shared", "{status}");
    assert!(
        run(&a.env, &["status"])
            .0
            .contains("read from: the shared database (this host's rows, as a)")
    );

    // This host's disk lost: the shared database alone answers.
    std::fs::rename(&state, a.env.path("state.lost")).unwrap();
    let (alone, notes) = reads(&a.env);
    assert!(notes.iter().all(String::is_empty), "{notes:?}");
    assert_same(&alone, &journal, "without the journal");
    std::fs::rename(a.env.path("state.lost"), &state).unwrap();

    // Rows of this host not yet shipped: the journal answers, saying why.
    pg.psql("UPDATE hosts SET backlog = 7 WHERE host = 'a'");
    let (out, err) = run(&a.env, &["incidents", "--json"]);
    assert_eq!(json(&out), journal.incidents);
    assert!(
        err.contains(
            "note: this host's journal holds rows the shared database does not yet (7 waiting"
        ) && err.contains("reading this host's journal"),
        "{err}"
    );
    let status = json(&run(&a.env, &["status", "--json"]).0);
    assert_eq!(status["fleet"]["read_from"], "journal", "{status}");
    pg.psql("UPDATE hosts SET backlog = 0 WHERE host = 'a'");
    // A command's row the shared database did not take (it was away when
    // `pause` ended): the journal's newest ids are ahead, so it answers.
    pg.psql("UPDATE pauses SET host = 'elsewhere' WHERE host = 'a'");
    let (out, err) = run(&a.env, &["status", "--json"]);
    assert_eq!(status_doc(&out), journal.status);
    assert!(
        err.contains(
            "note: this host's journal holds rows the shared database does not (pauses up to #1, it has #0): reading this host's journal"
        ),
        "{err}"
    );
    pg.psql("UPDATE pauses SET host = 'a' WHERE host = 'elsewhere'");

    // A schema older than this binary (no `drills` yet): the journal.
    pg.psql("ALTER TABLE drills RENAME TO drills_later");
    let (out, err) = run(&a.env, &["incidents", "--json"]);
    assert_eq!(json(&out), journal.incidents);
    assert!(
        err.contains("note: the shared database's schema is older than this rollbackd"),
        "{err}"
    );
    pg.psql("ALTER TABLE drills_later RENAME TO drills");

    // The host rebuilt, its journal gone for good: the first command takes
    // this host's history back from the shared database, and numbers its
    // own rows after it (the old ones there are kept, not written over).
    std::fs::remove_dir_all(&state).unwrap();
    let (_, err) = run(&a.env, &["deploy", "--color", "blue", "--version", "v3"]);
    assert!(
        err.contains(
            "note: this journal was new: took back this host's history from the shared database (3 deployments, 1 incidents"
        ),
        "{err}"
    );
    let (out, _) = run(&journal_env, &["incidents", "--json"]);
    assert_eq!(json(&out), journal.incidents, "incidents taken back");
    let (out, _) = run(&journal_env, &["incident", "show", "1", "--json"]);
    assert_eq!(json(&out), journal.incident, "the timeline taken back");
    let status = json(&run(&journal_env, &["status", "--json"]).0);
    assert_eq!(status["pause"], journal.status["pause"], "{status}");
    assert_eq!(status["verdicts"], journal.status["verdicts"], "{status}");
    assert_eq!(status["active"]["deployment"]["id"], 4, "{status}");
    assert_eq!(
        pg.psql("SELECT string_agg(id || ' ' || version, ', ' ORDER BY id) FROM deployments WHERE host = 'a'"),
        "1 v1, 2 v2, 3 v1, 4 v3"
    );
    // Not new any more: nothing is taken back twice.
    let (_, err) = run(&a.env, &["deploy", "--color", "green", "--version", "v4"]);
    assert!(!err.contains("took back"), "{err}");
    // A daemon that starts on a new journal takes it back too, before it
    // reads the active deployment.
    std::fs::remove_dir_all(&state).unwrap();
    let daemon = a.daemon().await;
    let log = common::read(&daemon.log);
    assert!(
        log.contains("this journal was new: took back this host's history from the shared database (5 deployments, 1 incidents"),
        "{log}"
    );
    let status = json(&run(&journal_env, &["status", "--json"]).0);
    assert_eq!(
        (
            &status["active"]["deployment"]["id"],
            &status["active"]["deployment"]["version"]
        ),
        (&Value::from(5), &Value::from("v4")),
        "{status}"
    );
    assert!(daemon.stop().await.success());

    // The shared database down: the journal answers, saying why.
    pg.stop();
    let (out, err) = run(&a.env, &["incident", "show", "1", "--json"]);
    assert_eq!(json(&out), journal.incident);
    assert!(
        err.contains("note: the shared database cannot be read")
            && err.contains("reading this host's journal"),
        "{err}"
    );
}

/// `replay` streams this host's samples from the shared database in pages
/// (`store::PAGE` each), as it does from the journal: every sample once,
/// in time order, across page boundaries that fall between samples taken
/// in the same millisecond (two colors and a shared probe), and none of
/// another host's.
#[tokio::test]
async fn replay_pages_through_the_shared_database_without_losing_a_sample() {
    use rollbackd::model::{Color as Side, Sample};
    use rollbackd::store::{PAGE, Store};
    let Some(pg) = Cluster::start() else { return };
    let secret = rollbackd::config::secret::Secret::resolve(&pg.url()).unwrap();
    let mine = rollbackd::store::shared::Shared::connect(&secret, "a", "svc")
        .await
        .unwrap();
    let theirs = rollbackd::store::shared::Shared::connect(&secret, "b", "svc")
        .await
        .unwrap();
    // 3 samples per millisecond: more than two pages' worth.
    let per_ms = |at: i64| {
        [Some(Side::Blue), Some(Side::Green), None].map(|color| {
            let probe = if color.is_some() {
                "healthz"
            } else {
                "dependency"
            };
            Sample::answer(at, probe, color, at % 7 != 0, 1.0)
        })
    };
    let samples: Vec<Sample> = (1_000..1_000 + (PAGE as i64)).flat_map(per_ms).collect();
    for chunk in samples.chunks(5_000) {
        mine.put_samples(chunk).await.unwrap();
    }
    theirs.put_samples(&per_ms(5_000)).await.unwrap();

    let none = tempfile::tempdir().unwrap();
    let store = Store::open_shared_reads(none.path(), mine).await;
    let mut pages = store.sample_pages(1_500).await.unwrap();
    let mut read = Vec::new();
    let mut n = 0;
    while let Some(page) = pages.next_page().await.unwrap() {
        assert!(page.len() <= PAGE);
        read.extend(page);
        n += 1;
        assert!(n < 10, "the pages end");
    }
    let want: Vec<&Sample> = samples.iter().filter(|s| s.at_ms >= 1_500).collect();
    assert_eq!(read.len(), want.len(), "every sample once");
    assert!(n >= 3, "{n} pages");
    let key = |s: &Sample| (s.at_ms, s.probe.clone(), s.color.map(|c| c.as_str()));
    assert!(read.windows(2).all(|w| key(&w[0]) < key(&w[1])), "in order");
    let mut want: Vec<_> = want.into_iter().cloned().collect();
    want.sort_by_key(key);
    assert_eq!(read, want);
}
