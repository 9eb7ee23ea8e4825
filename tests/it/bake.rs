//! After `[rollback] bake`, a healthy deployment's post-deploy report goes
//! out through the notifiers, once.

use std::time::Duration;

use rollbackd::model::{Color, now_ms};

use crate::common::{self, Env};
use crate::notify::Receiver;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_baked_deployment_gets_its_report_sent_once() {
    let blue = common::Color::start().await;
    let green = common::Color::start().await;
    let hook = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let extra = format!(
        "bake = \"1s\"\n\n[[notify]]\nkind = \"webhook\"\nurl = \"{}/reports\"\nformat = \"json\"\nmin_severity = \"critical\"\n",
        hook.url
    );
    let env = Env::new(&common::fast_config(&blue, &green, dir.path(), &extra));
    env.cli_ok(&["deploy", "--color", "green", "--version", "v1"]);
    env.cli_ok(&["deploy", "--color", "blue", "--version", "v2"]);
    let daemon = env.daemon();

    common::wait_for(
        "the post-deploy report",
        Duration::from_secs(20),
        || async { !hook.bodies("reports").is_empty() },
    )
    .await;
    let bodies = hook.bodies("reports");
    let report = &bodies[0];
    assert_eq!(report["event"], "deploy_report", "{report}");
    assert_eq!(report["version"], "v2");
    let detail = report["detail"].as_str().unwrap();
    assert!(
        detail.contains("## Post-deploy report: beluga v2 on blue"),
        "{detail}"
    );
    assert!(detail.contains("| blue | healthz |"), "{detail}");

    // Sent once: more checks pass (samples keep arriving) and no second one.
    let store = env.store().await;
    let after = now_ms();
    common::wait_for("more samples", Duration::from_secs(20), || async {
        store
            .samples(Some("healthz"), Some(Color::Blue), after)
            .await
            .unwrap()
            .len()
            >= 10
    })
    .await;
    assert_eq!(hook.bodies("reports").len(), 1, "the report is sent once");
    assert!(daemon.stop().await.success());
}

/// The daemon stops checking a bake once its report is sent; a later
/// deployment is checked again and gets its own report.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_later_deployment_gets_its_own_report() {
    let blue = common::Color::start().await;
    let green = common::Color::start().await;
    let hook = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let extra = format!(
        "bake = \"1s\"\n\n[[notify]]\nkind = \"webhook\"\nurl = \"{}/reports\"\nformat = \"json\"\nmin_severity = \"critical\"\n",
        hook.url
    );
    let env = Env::new(&common::fast_config(&blue, &green, dir.path(), &extra));
    env.cli_ok(&["deploy", "--color", "green", "--version", "v1"]);
    env.cli_ok(&["deploy", "--color", "blue", "--version", "v2"]);
    let daemon = env.daemon();
    common::wait_for("the first report", Duration::from_secs(20), || async {
        !hook.bodies("reports").is_empty()
    })
    .await;

    env.cli_ok(&["deploy", "--color", "green", "--version", "v3"]);
    common::wait_for("the second report", Duration::from_secs(20), || async {
        hook.bodies("reports").len() >= 2
    })
    .await;
    let bodies = hook.bodies("reports");
    assert_eq!(bodies[0]["version"], "v2", "{}", bodies[0]);
    assert_eq!(bodies[1]["version"], "v3", "{}", bodies[1]);
    assert_eq!(bodies.len(), 2, "one report per deployment");
    assert!(daemon.stop().await.success());
}
