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

/// Issue 15: one page that stands alone (every command, FILES,
/// ENVIRONMENT, EXIT STATUS, EXAMPLES, SEE ALSO; no sub-page it does not
/// ship), completions that offer `blue green` for `--color` and never the
/// hidden `generate-assets`.
#[test]
fn issue15_the_man_page_stands_alone_and_completions_hide_hidden_commands() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(common::BIN)
        .args(["generate-assets", "--out"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success());
    let man = common::read(&dir.path().join("rollbackd.1"));
    for section in [
        ".SH NAME",
        ".SH SYNOPSIS",
        ".SH COMMANDS",
        ".SH FILES",
        ".SH ENVIRONMENT",
        ".SH \"EXIT STATUS\"",
        ".SH EXAMPLES",
        ".SH \"SEE ALSO\"",
    ] {
        let plain = section.replace('"', "");
        assert!(
            man.contains(section) || man.contains(&plain),
            "man page lacks {section}"
        );
    }
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
        "incident show",
        "samples",
        "report",
        "demo",
        "replay",
        "drill",
    ] {
        assert!(
            man.contains(&format!(".SS \"rollbackd {command}\"")),
            "no section for {command}"
        );
    }
    // Exit codes and the files an operator looks for.
    for needle in [
        "78",
        "70",
        "/etc/rollbackd/rollbackd.toml",
        "ROLLBACKD_CONFIG",
        "NO_COLOR",
    ] {
        assert!(man.contains(needle), "man page lacks {needle}");
    }
    // No reference to a page that is not shipped (only rollbackd.1 is).
    assert!(!man.contains("rollbackd\\-"), "names a sub-page");
    assert!(
        !man.contains("generate\\-assets"),
        "the hidden command is documented"
    );
    // Every page named in SEE ALSO comes from systemd, which the unit needs.
    let see_also = man.split(".SH \"SEE ALSO\"").nth(1).unwrap();
    assert!(!see_also.contains("rollbackd\\fR("), "{see_also}");

    for file in ["rollbackd.bash", "_rollbackd", "rollbackd.fish"] {
        let text = common::read(&dir.path().join(file));
        assert!(
            !text.contains("generate-assets"),
            "{file} offers the hidden command"
        );
    }
    let bash = common::read(&dir.path().join("rollbackd.bash"));
    assert!(
        bash.contains("--color)\n                    COMPREPLY=($(compgen -W \"blue green\""),
        "bash completes --color with the colors"
    );
    assert!(common::read(&dir.path().join("_rollbackd")).contains(":COLOR:(blue green)"));

    // And the page renders without a warning where man is installed.
    if common::have_tool("man", "man-db") {
        let out = std::process::Command::new("man")
            .args(["--warnings", "-l"])
            .arg(dir.path().join("rollbackd.1"))
            .env("MANPAGER", "cat")
            .env("MANWIDTH", "100")
            .output()
            .unwrap();
        assert!(out.status.success());
        let warnings = String::from_utf8_lossy(&out.stderr);
        assert!(warnings.trim().is_empty(), "{warnings}");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("EXIT STATUS"), "{text}");
    }
}
