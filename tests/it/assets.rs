//! The man page and completions come from the clap definition.

use crate::common;

#[test]
fn generate_assets_writes_a_man_page_and_completions_for_every_command() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(common::BIN)
        .args(["generate-assets", "--out"])
        .arg(dir.path())
        .env_remove("ROLLBACKD_CONFIG")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let man = common::read(&dir.path().join("rollbackd.1"));
    assert!(
        man.starts_with(".ie") && man.contains(".TH rollbackd 1"),
        "{man}"
    );
    for command in [
        "run",
        "check",
        "status",
        "deploy",
        "gate",
        "rollback",
        "pause",
        "resume",
        "incidents",
        "report",
        "samples",
        "demo",
    ] {
        assert!(
            man.contains(&format!("rollbackd\\-{command}")) || man.contains(command),
            "man page lacks {command}"
        );
        let bash = common::read(&dir.path().join("rollbackd.bash"));
        assert!(bash.contains(command), "bash completion lacks {command}");
    }
    assert!(common::read(&dir.path().join("_rollbackd")).contains("#compdef rollbackd"));
    assert!(common::read(&dir.path().join("rollbackd.fish")).contains("complete -c rollbackd"));
}
