//! The daemon's side of rollbacks: its notices (alerts, recoveries, holds)
//! and the `[active] file` it watches.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
pub(super) async fn the_daemon_notifies_alerts_and_recoveries_and_logs_holds() {
    let blue = common::Color::start().await;
    let green = common::Color::start().await;
    let hook = Receiver::start().await;
    let env = Env::new("");
    std::fs::write(
        &env.config,
        config_text(
            env.dir.path(),
            &blue.url,
            &green.url,
            &hook.url,
            Parts::default(),
        ),
    )
    .unwrap();
    env.cli_ok(&["deploy", "--color", "green", "--version", "v1"]);
    env.cli_ok(&["deploy", "--color", "blue", "--version", "v2"]);
    let daemon = env.daemon();
    // The standby fails: alerts, never a rollback.
    green.set(503);
    wait_for(
        "an alert notice for green",
        Duration::from_secs(20),
        || async {
            hook.bodies("json")
                .iter()
                .any(|b| b["event"] == "alert" && b["color"] == "green")
        },
    )
    .await;
    green.set(200);
    wait_for(
        "a recovery notice for green",
        Duration::from_secs(20),
        || async {
            hook.bodies("json")
                .iter()
                .any(|b| b["event"] == "recovered" && b["color"] == "green")
        },
    )
    .await;
    env.cli_ok(&["pause", "--for", "1h", "--reason", "db migration"]);
    wait_for(
        "the hold in the daemon's log",
        Duration::from_secs(10),
        || async { common::read(&daemon.log).contains("automatic rollbacks are held until") },
    )
    .await;
    // The active color fails during the hold: announced once, not acted on.
    blue.set(503);
    wait_for(
        "a rollback_held notice",
        Duration::from_secs(20),
        || async {
            hook.bodies("json").iter().any(|b| {
                b["event"] == "rollback_held"
                    && b["summary"].as_str().unwrap_or("").contains("db migration")
            })
        },
    )
    .await;
    assert!(common::read(&env.path("switch.log")).is_empty());
    assert!(store_is_empty(&env).await);
    // Resume: the held rollback runs at once (not at the next retry).
    env.cli_ok(&["resume"]);
    wait_for(
        "the end of the hold in the log",
        Duration::from_secs(10),
        || async { common::read(&daemon.log).contains("hold on automatic rollbacks ended") },
    )
    .await;
    let store = env.store().await;
    wait_for(
        "the rollback after resume",
        Duration::from_secs(10),
        || async {
            store
                .incidents()
                .await
                .unwrap()
                .first()
                .is_some_and(|i| i.state == IncidentState::Verified)
        },
    )
    .await;
    assert_eq!(common::read(&env.path("switch.log")).trim(), "blue green");
    let held = hook
        .bodies("json")
        .iter()
        .filter(|b| b["event"] == "rollback_held")
        .count();
    assert_eq!(held, 1, "one notice per hold");
    assert!(daemon.stop().await.success());
}

pub(super) async fn store_is_empty(env: &Env) -> bool {
    env.store().await.incidents().await.unwrap().is_empty()
}

#[tokio::test]
pub(super) async fn the_active_file_is_watched_and_a_deploy_ahead_of_the_switch_is_no_cutover() {
    let w = World::new(Parts {
        top: "[active]\nfile = \"active\"",
        ..Parts::default()
    })
    .await;
    let file = w.env.path("active");
    std::fs::write(&file, "blue\n").unwrap();
    let mut watch = rollbackd::rollback::active::Watch::new(&w.config);
    w.deploy(Color::Blue, "v1").await;
    let current = || async {
        let (c, d) = rollbackd::rollback::active::current(&w.config, &w.store)
            .await
            .unwrap()
            .unwrap();
        (c, d.version)
    };
    assert_eq!(current().await, (Color::Blue, "v1".into()));

    // The pipeline records green v2 before it switches: blue still serves.
    w.deploy(Color::Green, "v2").await;
    assert_eq!(current().await, (Color::Blue, "v1".into()));
    assert_eq!(w.store.deployments().await.unwrap().len(), 2);

    // It switches by replacing the file: the watch wakes, green v2 serves.
    let tmp = w.env.path("active.tmp");
    std::fs::write(&tmp, "green\n").unwrap();
    std::fs::rename(&tmp, &file).unwrap();
    tokio::time::timeout(Duration::from_secs(5), watch.changed())
        .await
        .expect("notify reports the replaced file");
    assert_eq!(current().await, (Color::Green, "v2".into()));
    assert_eq!(w.store.deployments().await.unwrap().len(), 2);

    // Someone flips it back by hand: a cutover, recorded as a deployment.
    // File times are coarse (a kernel tick): date the write a second after
    // the deploy, as a hand edit would be.
    std::fs::write(&file, "blue\n").unwrap();
    let later = std::time::SystemTime::now() + Duration::from_secs(1);
    std::fs::File::options()
        .write(true)
        .open(&file)
        .unwrap()
        .set_modified(later)
        .unwrap();
    assert_eq!(current().await, (Color::Blue, "unknown".into()));
    let latest = w.store.latest_deployment().await.unwrap().unwrap();
    assert_eq!(
        (latest.color, latest.source.as_str()),
        (Color::Blue, "active-file")
    );
}
