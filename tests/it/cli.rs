//! The operator's CLI (issue 15): read-only commands that never create
//! anything, errors that name the path and the user, what `status` says
//! is in force.

use std::path::Path;
use std::process::{Command, Output};

use crate::common::{self, Env, Setup};

/// A config on a service nobody answers (read-only commands never probe).
fn offline_config(state_dir: &str, extra: &str) -> String {
    format!(
        r#"
[daemon]
state_dir = "{state_dir}"
listen = "off"

[service]
name = "beluga"

[colors.blue]
base_url = "http://127.0.0.1:9"
[colors.green]
base_url = "http://127.0.0.1:9"

[[probe]]
name = "healthz"
kind = "http"
path = "/healthz"
health = true

[rollback]
command = ["/bin/true", "{{to}}"]
{extra}
"#
    )
}

const READ_ONLY: &[&[&str]] = &[
    &["status"],
    &["status", "--json"],
    &["incidents"],
    &["incident", "show", "1"],
    &["samples"],
    &["report"],
    &["replay", "--since", "1h"],
];

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn read_only_commands_never_create_the_state_directory_or_a_database() {
    let env = Env::new(&offline_config("mistyped/state", ""));
    let dir = env.path("mistyped/state");
    for args in READ_ONLY {
        let out = env.cli(args);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(70), "{args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{args:?}: one line: {err}");
        assert!(
            err.contains(&format!(
                "no database at {}",
                dir.join("rollbackd.db").display()
            )) && (err.contains("does not exist") || args[0] == "replay"),
            "{args:?} names the path: {err}"
        );
        assert!(!env.path("mistyped").exists(), "{args:?} made a directory");
    }
    // A directory that exists but holds no database stays empty.
    std::fs::create_dir_all(&dir).unwrap();
    for args in READ_ONLY {
        let out = env.cli(args);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(70), "{args:?}: {err}");
        assert!(
            err.contains("holds no rollbackd.db") || args[0] == "replay",
            "{args:?}: {err}"
        );
        assert_eq!(
            std::fs::read_dir(&dir).unwrap().count(),
            0,
            "{args:?} left a file in {}",
            dir.display()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schema_older_than_the_binary_is_a_clear_error_and_is_not_migrated() {
    let env = Env::new(&offline_config("state", ""));
    let store = env.store().await;
    let db = store.path().to_path_buf();
    store.close().await;
    // Forget the newest migration, as a database last opened by an older
    // rollbackd would. (SQL in a test: the test stands in for that binary.)
    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", db.display()))
        .await
        .unwrap();
    let newest: i64 = sqlx::query_scalar("SELECT max(version) FROM _sqlx_migrations")
        .fetch_one(&pool)
        .await
        .unwrap();
    sqlx::query("DELETE FROM _sqlx_migrations WHERE version = ?")
        .bind(newest)
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
    let out = env.cli(&["incidents"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(70), "{err}");
    assert!(
        err.contains(&format!("database {} has schema version", db.display()))
            && err.contains(&format!("older than this rollbackd's {newest}")),
        "{err}"
    );
    // Still not migrated: a read-only command changed nothing.
    let out = env.cli(&["status"]);
    assert!(
        stderr(&out).contains("older than this rollbackd"),
        "{}",
        stderr(&out)
    );
}

/// Run the binary as `nobody` (when root) so that file modes apply.
fn as_nobody(env: &Env, args: &[&str]) -> Option<Output> {
    if !nix::unistd::geteuid().is_root() {
        return Some(env.cli(args));
    }
    if !common::have_tool("setpriv", "util-linux") {
        return None;
    }
    Some(
        Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
            .arg(common::BIN)
            .arg("--config")
            .arg(&env.config)
            .args(args)
            .env_remove("NOTIFY_SOCKET")
            .env_remove("JOURNAL_STREAM")
            .output()
            .unwrap(),
    )
}

fn chmod(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_permission_problem_names_the_path_and_the_user() {
    let env = Env::new(&offline_config("state", ""));
    let store = env.store().await;
    let db = store.path().to_path_buf();
    store.close().await;
    // The config and its folder readable by anyone; the database not.
    chmod(env.dir.path(), 0o755);
    chmod(&env.config, 0o644);
    chmod(&env.path("state"), 0o755);
    chmod(&db, 0o600);
    let Some(out) = as_nobody(&env, &["status"]) else {
        return;
    };
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(70), "{err}");
    assert!(
        err.contains(&format!("cannot read {} as user ", db.display()))
            && err.contains("permission denied"),
        "{err}"
    );
    if nix::unistd::geteuid().is_root() {
        assert!(err.contains("uid 65534"), "names the user: {err}");
    }
    assert!(!err.contains("code: 14"), "{err}");

    // Readable, in a folder this user may not write: read all the same.
    chmod(&db, 0o644);
    let Some(out) = as_nobody(&env, &["incidents"]) else {
        return;
    };
    assert!(out.status.success(), "{}", stderr(&out));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_says_what_protection_is_in_force() {
    let env = Env::new(&offline_config("state", "[actions]\nhigh = \"alert\"\n"));
    env.cli_ok(&["deploy", "--color", "blue", "--version", "v1"]);
    let text = env.cli_ok(&["status"]);
    assert!(
        text.contains("automatic rollbacks: none (no daemon running)"),
        "{text}"
    );
    let doc: serde_json::Value = serde_json::from_str(&env.cli_ok(&["status", "--json"])).unwrap();
    assert_eq!(doc["protection"]["state"], "none", "{doc:#}");
    assert_eq!(
        doc["protection"]["rolls_back_on"],
        serde_json::json!(["critical"]),
        "high alerts only here: {doc:#}"
    );
    env.cli_ok(&["pause", "--for", "1h", "--reason", "maintenance"]);
    let text = env.cli_ok(&["status"]);
    assert!(
        text.contains("automatic rollbacks: paused until ") && text.contains(": maintenance"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_run_and_alert_only_are_not_armed() {
    let env = Env::new(&offline_config(
        "state",
        "[actions]\ncritical = \"alert\"\nhigh = \"alert\"\n",
    ));
    env.cli_ok(&["deploy", "--color", "blue", "--version", "v1"]);
    let text = env.cli_ok(&["status"]);
    assert!(
        text.contains("automatic rollbacks: none (no severity's action is rollback: alerts only)"),
        "{text}"
    );
    assert!(!text.contains("armed"), "{text}");
}

/// The 1-based line of the first line of `text` that starts with `start`.
fn line_of(text: &str, start: &str) -> usize {
    text.lines().position(|l| l.starts_with(start)).unwrap() + 1
}

#[test]
fn check_refuses_a_rollback_command_that_does_not_exist() {
    let text = offline_config("state", "").replace(
        "command = [\"/bin/true\", \"{to}\"]",
        "prepare = [\"true\"]\ncommand = [\"/nonexistent/switch-color\", \"{to}\"]\nretire = [\"no-such-command-rollbackd-test\", \"{from}\"]",
    );
    let env = Env::new(&text);
    let out = env.cli(&["check"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(78), "{err}");
    let config = env.config.display().to_string();
    let command = format!(
        "{config}:{}:1: rollback.command: /nonexistent/switch-color does not exist",
        line_of(&text, "command =")
    );
    let retire = format!(
        "{config}:{}:1: rollback.retire: no-such-command-rollbackd-test is not found on PATH",
        line_of(&text, "retire =")
    );
    assert!(err.contains(&command), "{err}");
    assert!(err.contains(&retire), "{err}");
    // `true` is found on PATH, as the daemon's execvp finds it.
    assert!(!err.contains("rollback.prepare"), "{err}");
    assert!(out.stdout.is_empty(), "no report for a refused file");

    // The same as JSON: a stable document with each error's place.
    let out = env.cli(&["check", "--json"]);
    assert_eq!(out.status.code(), Some(78));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["ok"], false, "{doc:#}");
    let keys: Vec<&str> = doc["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["key"].as_str().unwrap())
        .collect();
    assert_eq!(keys, ["rollback.command", "rollback.retire"], "{doc:#}");
    assert_eq!(doc["errors"][0]["line"], line_of(&text, "command ="));
    assert_eq!(doc["errors"][0]["file"], config);
}

#[test]
fn check_refuses_an_exec_probe_its_user_may_not_run() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("check-gateway");
    std::fs::write(&script, "#!/bin/sh\nexit 0\n").unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o644)).unwrap();
    let extra = format!(
        "\n[[probe]]\nname = \"gateway\"\nkind = \"exec\"\ncommand = [\"{}\", \"--color\", \"{{color}}\"]\n",
        script.display()
    );
    let env = Env::new(&format!("{}{extra}", offline_config("state", "")));
    let out = env.cli(&["check"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(78), "{err}");
    assert!(
        err.contains(&format!(
            "probe[2].command: {} is not executable for user ",
            script.display()
        )),
        "{err}"
    );
    // Executable by its owner only: fine for root, refused for another
    // user when root checks for it by the mode bits.
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o700)).unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    assert_eq!(
        env.cli(&["check"]).status.code(),
        Some(0),
        "{}",
        stderr(&env.cli(&["check"]))
    );
    if nix::unistd::geteuid().is_root() {
        let out = env.cli(&["check", "--user", "nobody"]);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(78), "{err}");
        assert!(
            err.contains("is not executable for user nobody (mode 0700, owner uid 0"),
            "{err}"
        );
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(
            env.cli(&["check", "--user", "nobody"]).status.code(),
            Some(0)
        );
        // A folder on the way it may not enter.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        let err = stderr(&env.cli(&["check", "--user", "nobody"]));
        assert!(
            err.contains(&format!(
                "user nobody cannot enter {}",
                dir.path().display()
            )),
            "{err}"
        );
    }
}

#[test]
fn check_in_a_dry_run_warns_of_a_missing_switch_and_strict_makes_it_fatal() {
    let text = offline_config("state", "")
        .replace("listen = \"off\"", "listen = \"off\"\ndry_run = true")
        .replace("\"/bin/true\"", "\"/nonexistent/switch-color\"");
    let env = Env::new(&text);
    let out = env.cli(&["check"]);
    let report = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        report.contains(
            "rollback.command: /nonexistent/switch-color does not exist (a dry run never runs it"
        ),
        "{report}"
    );
    let out = env.cli(&["check", "--strict"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("--strict: a warning: "),
        "{}",
        stderr(&out)
    );
    let out = env.cli(&["check", "--json", "--strict"]);
    assert_eq!(out.status.code(), Some(1));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["ok"], false, "{doc:#}");
    assert_eq!(doc["errors"], serde_json::json!([]), "{doc:#}");
    assert_eq!(doc["warnings"].as_array().unwrap().len(), 1, "{doc:#}");
    // The detection figures: the default matrix's critical streak rule.
    let critical = doc["rules"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["when"] == "health_failures >= 5")
        .unwrap_or_else(|| panic!("{doc:#}"));
    assert!(
        critical["detects_within_ms"].as_u64().unwrap() > 0,
        "{doc:#}"
    );
    assert!(
        critical["noise_firings_per_year"].as_f64().unwrap() < 1.0,
        "{doc:#}"
    );
    assert_eq!(doc["probes"][0]["name"], "healthz");
}

#[test]
fn check_json_reports_a_config_error_with_its_place() {
    let env = Env::new(&offline_config("state", "").replace("[service]", "[service]\nnope = 1"));
    let out = env.cli(&["check", "--json"]);
    assert_eq!(out.status.code(), Some(78));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["ok"], false);
    assert_eq!(doc["errors"][0]["key"], "service.nope", "{doc:#}");
    assert!(doc["errors"][0]["line"].as_u64().unwrap() > 1, "{doc:#}");
}

#[test]
fn commands_that_change_state_print_json_on_request() {
    let env = Env::new(&offline_config("state", ""));
    let doc: serde_json::Value = serde_json::from_str(&env.cli_ok(&[
        "deploy",
        "--color",
        "blue",
        "--version",
        "v1",
        "--json",
    ]))
    .unwrap();
    assert_eq!(doc["deployment"], 1, "{doc:#}");
    assert_eq!(doc["color"], "blue", "{doc:#}");
    assert!(is_rfc3339_millis(doc["at"].as_str().unwrap()), "{doc:#}");
    let doc: serde_json::Value = serde_json::from_str(&env.cli_ok(&[
        "pause",
        "--for",
        "1h",
        "--reason",
        "maintenance",
        "--json",
    ]))
    .unwrap();
    assert_eq!(doc["reason"], "maintenance", "{doc:#}");
    assert!(is_rfc3339_millis(doc["until"].as_str().unwrap()), "{doc:#}");
    let doc: serde_json::Value = serde_json::from_str(&env.cli_ok(&["resume", "--json"])).unwrap();
    assert_eq!(doc["resumed"], true, "{doc:#}");
    // Nobody answers on green: the rollback is refused, exit 1, as JSON.
    let out = env.cli(&["rollback", "--reason", "test", "--json"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["outcome"], "refused", "{doc:#}");
    assert!(doc["incident"].as_i64().is_some(), "{doc:#}");
}

/// `2026-11-25T21:30:06.123Z`: RFC 3339, milliseconds, UTC.
pub fn is_rfc3339_millis(text: &str) -> bool {
    let b = text.as_bytes();
    b.len() == 24
        && b[4] == b'-'
        && b[10] == b'T'
        && b[19] == b'.'
        && b[23] == b'Z'
        && humantime::parse_rfc3339(text).is_ok()
}

/// Run `rollbackd ARGS` on a pseudo-terminal (`script`), with or without
/// NO_COLOR; what the terminal got.
fn on_a_terminal(env: &Env, args: &str, no_color: bool) -> Option<String> {
    if !common::have_tool("script", "bsdutils") {
        return None;
    }
    let command = format!("{} --config {} {args}", common::BIN, env.config.display());
    let mut cmd = Command::new("script");
    cmd.args(["-qec", &command, "/dev/null"])
        .env_remove("JOURNAL_STREAM")
        .env_remove("NOTIFY_SOCKET")
        .env_remove("NO_COLOR");
    if no_color {
        cmd.env("NO_COLOR", "1");
    }
    let out = cmd.output().unwrap();
    Some(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[test]
fn no_color_is_honoured_on_a_terminal_and_logs_show_milliseconds() {
    let env = Env::new(&offline_config("state", ""));
    // `pause` logs a warning (to stderr, the terminal here).
    let Some(coloured) = on_a_terminal(&env, "pause --for 1h --reason colour", false) else {
        return;
    };
    assert!(
        coloured.contains('\u{1b}'),
        "a terminal gets colour: {coloured:?}"
    );
    let plain = on_a_terminal(&env, "pause --for 1h --reason plain", true).unwrap();
    assert!(plain.contains("automatic rollbacks held"), "{plain:?}");
    assert!(!plain.contains('\u{1b}'), "NO_COLOR: {plain:?}");
    // The log line's time: RFC 3339 with milliseconds, as everywhere.
    let stamp = plain
        .split_whitespace()
        .find(|w| w.ends_with('Z') && w.contains('T'))
        .unwrap_or_else(|| panic!("{plain:?}"));
    assert!(is_rfc3339_millis(stamp), "{stamp}");
    // clap's help honours it too.
    let help = on_a_terminal(&env, "--help", true).unwrap();
    assert!(!help.contains('\u{1b}'), "{help:?}");
    // Not a terminal: never colour.
    let out = env.cli(&["pause", "--for", "1h", "--reason", "pipe"]);
    assert!(!stderr(&out).contains('\u{1b}'), "{}", stderr(&out));
}

/// The column each header word starts at, and each row's cells too:
/// every row's cell in a left-aligned column starts where its header does.
fn assert_aligned(text: &str, left_columns: &[&str]) {
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let header = lines.next().unwrap();
    let starts: Vec<usize> = left_columns
        .iter()
        .map(|c| header.find(c).unwrap_or_else(|| panic!("{c} in {header}")))
        .collect();
    let rows: Vec<&str> = lines.collect();
    assert!(rows.len() >= 2, "{text}");
    for row in rows {
        for (c, start) in left_columns.iter().zip(&starts) {
            let chars: Vec<char> = row.chars().collect();
            assert!(
                *start == 0
                    || (chars.get(start - 1) == Some(&' ') && chars.get(*start) != Some(&' ')),
                "column {c} is not aligned in:\n{text}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn samples_and_incidents_tables_align() {
    use rollbackd::model::{Color, Sample, SampleStatus, now_ms};
    let env = Env::new(&offline_config("state", ""));
    let store = env.store().await;
    let now = now_ms();
    let sample = |probe: &str, color: Option<Color>, latency: f64| Sample {
        at_ms: now - 1000,
        probe: probe.into(),
        color,
        deployment: None,
        ok: true,
        latency_ms: Some(latency),
        status: SampleStatus::Ok,
        detail: "HTTP 200".into(),
        requests: None,
        errors: None,
    };
    store
        .insert_samples(&[
            sample("healthz", Some(Color::Blue), 1.0),
            sample("a-much-longer-probe-name-than-sixteen", None, 12345.6),
            sample("p", Some(Color::Green), 3.25),
        ])
        .await
        .unwrap();
    for reason in ["short", "a longer reason than the others"] {
        store
            .open_incident(
                &rollbackd::store::NewIncident {
                    at_ms: now,
                    trigger_kind: rollbackd::model::Trigger::Manual,
                    severity: rollbackd::model::Severity::Critical,
                    rule: None,
                    reason: reason.into(),
                    evidence: "{}".into(),
                    from_color: Some(Color::Blue),
                    to_color: Some(Color::Green),
                    from_version: None,
                    to_version: None,
                    in_flight: false,
                    holder: None,
                },
                rollbackd::model::IncidentState::Refused,
                "test",
            )
            .await
            .unwrap();
    }
    store.close().await;
    let samples = env.cli_ok(&["samples"]);
    assert_aligned(&samples, &["TIME", "PROBE", "COLOR", "STATUS", "DETAIL"]);
    let incidents = env.cli_ok(&["incidents"]);
    assert_aligned(
        &incidents,
        &["ID", "OPENED", "SEVERITY", "SWITCH", "REASON"],
    );
}

/// Issue 15: `status --json` and the daemon's `/status` are one document
/// (the same keys at the top level and in `daemon`, `database`), the
/// evidence of an incident is JSON, and every time is RFC 3339 with
/// milliseconds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_json_and_the_daemons_status_are_one_document() {
    let service = Setup::new().await.listen().deploy("blue", "v1").configure();
    let env = &service.env;
    // An incident with evidence, through the real manual path.
    assert_eq!(
        env.cli(&["rollback", "--reason", "evidence test"])
            .status
            .code(),
        Some(1)
    );
    let daemon = service.daemon().await;
    let url = format!("http://{}/status", daemon.http_addr().await);
    let served = std::sync::Arc::new(std::sync::Mutex::new(serde_json::Value::Null));
    common::wait_for(
        "/status with verdicts",
        std::time::Duration::from_secs(30),
        || {
            let url = url.clone();
            let served = served.clone();
            async move {
                let Ok(resp) = reqwest::get(&url).await else {
                    return false;
                };
                let Ok(doc) = resp.json::<serde_json::Value>().await else {
                    return false;
                };
                let ready = doc["verdicts"].as_array().is_some_and(|v| !v.is_empty());
                *served.lock().unwrap() = doc;
                ready
            }
        },
    )
    .await;
    let served = served.lock().unwrap().clone();
    let printed: serde_json::Value =
        serde_json::from_str(&env.cli_ok(&["status", "--json"])).unwrap();
    let keys = |v: &serde_json::Value| -> Vec<String> {
        let mut k: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
        k.sort();
        k
    };
    assert_eq!(
        keys(&served),
        keys(&printed),
        "top level:\n{served:#}\n{printed:#}"
    );
    for part in ["daemon", "database"] {
        assert_eq!(keys(&served[part]), keys(&printed[part]), "{part}");
    }
    assert_eq!(keys(&served["verdicts"][0]), keys(&printed["verdicts"][0]));
    assert_eq!(served["daemon"]["pid"], printed["daemon"]["pid"]);
    assert_eq!(served["active"]["color"], printed["active"]["color"]);
    // Times: RFC 3339 with milliseconds.
    for t in [
        &served["daemon"]["since"],
        &printed["daemon"]["since"],
        &served["verdicts"][0]["at"],
        &printed["verdicts"][0]["at"],
        &printed["active"]["deployment"]["at"],
    ] {
        assert!(is_rfc3339_millis(t.as_str().unwrap_or("")), "{t}");
    }
    // Evidence is a JSON object, in status and in the incident list.
    assert!(
        printed["last_incident"]["evidence"].is_object(),
        "{printed:#}"
    );
    // The last incident's times too: `opened`, not Unix `opened_ms`.
    assert!(
        is_rfc3339_millis(printed["last_incident"]["opened"].as_str().unwrap_or("")),
        "{printed:#}"
    );
    assert!(!printed.to_string().contains("opened_ms"), "{printed:#}");
    let list: serde_json::Value =
        serde_json::from_str(&env.cli_ok(&["incidents", "--json"])).unwrap();
    assert_eq!(list[0]["evidence"]["reason"], "evidence test", "{list:#}");
    assert!(
        is_rfc3339_millis(list[0]["opened"].as_str().unwrap_or("")),
        "{list:#}"
    );
    let shown: serde_json::Value =
        serde_json::from_str(&env.cli_ok(&["incident", "show", "1", "--json"])).unwrap();
    assert!(
        is_rfc3339_millis(shown["timeline"][0]["at"].as_str().unwrap_or("")),
        "{shown:#}"
    );
    assert!(daemon.stop().await.success());
}

/// Issue 12: `status` reads without writing. The `[active] file` names a
/// color no deployment row made active (a pipeline's cutover the daemon has
/// not recorded yet): `status` says that color is active and writes nothing,
/// neither a deployment row nor a byte of the database's files.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_names_an_unrecorded_cutover_and_writes_nothing() {
    let env = Env::new(&offline_config(
        "state",
        "[active]\nfile = \"active-color\"\n",
    ));
    std::fs::write(env.path("active-color"), "blue\n").unwrap();
    env.cli_ok(&["deploy", "--color", "blue", "--version", "v1"]);
    // The pipeline switches after the deployment was recorded.
    let file = env.path("active-color");
    std::fs::write(&file, "green\n").unwrap();
    let later = std::time::SystemTime::now() + std::time::Duration::from_secs(5);
    std::fs::File::options()
        .write(true)
        .open(&file)
        .unwrap()
        .set_modified(later)
        .unwrap();
    // The database file, byte for byte and its time, and whatever WAL
    // frames sit beside it. A reader's SQLite may make an empty `-wal` and
    // its `-shm` index; a write would be frames in the `-wal` or a change
    // to the file.
    let db = env.path("state").join("rollbackd.db");
    let files = || {
        let wal = std::fs::metadata(env.path("state").join("rollbackd.db-wal"))
            .map(|m| m.len())
            .unwrap_or(0);
        (
            std::fs::read(&db).unwrap(),
            std::fs::metadata(&db).unwrap().modified().unwrap(),
            wal,
        )
    };
    let before = files();

    let text = env.cli_ok(&["status"]);
    assert!(
        text.contains(
            "active: green (the [active] file says so; no deployment recorded for it yet)"
        ),
        "{text}"
    );
    let doc: serde_json::Value = serde_json::from_str(&env.cli_ok(&["status", "--json"])).unwrap();
    assert_eq!(doc["active"]["color"], "green", "{doc:#}");
    assert!(doc["active"]["deployment"].is_null(), "{doc:#}");

    assert!(files() == before, "status wrote to the database");
    let store = rollbackd::store::Store::open_read_only(&env.path("state"))
        .await
        .unwrap();
    let deployments = store.deployments().await.unwrap();
    assert_eq!(deployments.len(), 1, "{deployments:?}");
    assert_eq!(deployments[0].color, rollbackd::model::Color::Blue);
}
